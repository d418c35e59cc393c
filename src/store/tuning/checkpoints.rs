//! SQLite WAL checkpoints off the writer's path.
//!
//! By default SQLite checkpoints after the commit that takes the WAL past 1,000 pages, on the
//! committing connection: it copies the WAL's pages back into the database file and syncs both
//! files, and meanwhile that connection — the store's one writer — runs nothing else. Under a
//! stream of small write transactions every request queued behind the writer waited for it,
//! every few hundred commits; and each page a commit adds brings the next stall nearer (an
//! audit row is three: its table and two indexes; benches/write_path.rs).
//!
//! So a connection of its own checkpoints passively every [`EVERY`], beside the writer (WAL lets
//! a checkpoint copy what is committed while the writer appends more). The writer checkpoints
//! itself only as a backstop, once the WAL has grown past [`BACKSTOP_PAGES`] — when this task
//! cannot keep up (a passive checkpoint copies only what was committed when it began).
//! Durability is unchanged: a commit is in the WAL either way, and `synchronous = NORMAL`
//! syncs at checkpoints, wherever they run.

use std::time::Duration;

use sea_orm::{ConnectionTrait, DatabaseConnection};

/// How often the checkpointer looks for committed pages to copy. A checkpoint with nothing to
/// copy reads the WAL's header and returns.
pub(crate) const EVERY: Duration = Duration::from_millis(100);

/// WAL pages (4 KiB each) after which the writer checkpoints itself (`wal_autocheckpoint`).
pub(crate) const BACKSTOP_PAGES: u32 = 8_192;

/// The WAL file is cut back to this size when it starts over after a checkpoint
/// (`journal_size_limit`), so that one burst of writes does not leave a large file behind.
pub(crate) const WAL_KEPT_BYTES: u64 = 4 << 20;

/// The background checkpointer of one SQLite database; stops when dropped.
pub(crate) struct Checkpointer {
    task: tokio::task::JoinHandle<()>,
}

impl Checkpointer {
    /// Starts checkpointing through `connection`, a connection of its own.
    pub(crate) fn start(connection: DatabaseConnection) -> Self {
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(EVERY);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                // PASSIVE never waits for readers or the writer: it copies what it can now and
                // leaves the rest for the next tick (or the writer's backstop).
                if let Err(error) = connection.execute_unprepared("PRAGMA wal_checkpoint(PASSIVE)").await {
                    tracing::debug!(%error, "background WAL checkpoint failed; the writer's backstop remains");
                }
            }
        });
        Checkpointer { task }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Committed pages reach the database file without the writer checkpointing: a write far
    /// below the writer's backstop is copied out of the WAL by the checkpointer.
    #[tokio::test]
    async fn committed_pages_reach_the_database_file_without_the_writer_checkpointing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("exportd.db");
        let url = format!("sqlite://{}", path.display());
        let writer = crate::store::connect(&url, 1).await.unwrap();
        writer
            .execute_unprepared("CREATE TABLE t (v TEXT NOT NULL)")
            .await
            .unwrap();
        let before = std::fs::metadata(&path).unwrap().len();
        let _checkpointer = Checkpointer::start(crate::store::connect(&url, 1).await.unwrap());
        // About 250 pages: a tenth of the default threshold, a thirtieth of the backstop.
        writer
            .execute_unprepared(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000) \
                 INSERT INTO t SELECT printf('%.1000c', 'x') FROM n",
            )
            .await
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::fs::metadata(&path).unwrap().len() < before + 1_000_000 {
            assert!(
                std::time::Instant::now() < deadline,
                "the database file did not grow: nothing was checkpointed"
            );
            tokio::time::sleep(EVERY).await;
        }
    }

    #[tokio::test]
    async fn the_writer_checkpoints_itself_only_past_the_backstop() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("exportd.db").display());
        let writer = crate::store::connect(&url, 1).await.unwrap();
        let row = writer
            .query_one_raw(sea_orm::Statement::from_string(
                writer.get_database_backend(),
                "PRAGMA wal_autocheckpoint",
            ))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.try_get_by_index::<i64>(0).unwrap(), i64::from(BACKSTOP_PAGES));
    }
}
