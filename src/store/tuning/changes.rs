//! Write tracking and the read cache it makes safe.
//!
//! Every write of this process goes through a [`Writer`] (a statement) or a [`WriteTxn`] (a
//! transaction). Each holds a [`WriteGuard`]: while one exists the data may be changing, and
//! when it goes away (after the commit) the store's *generation* moves on. A cached read is
//! tagged with the generation it was read at and is served only while the generation is still
//! the same — so any write, of anything, makes every cached read stale, and a read that overlapped
//! a write is never cached at all.
//!
//! Cached reads read only exports, connections and segments (`get_export`, `list_exports`,
//! `segments_by_ids`). Writes to tables none of them reads — the scheduler's lease, a running
//! export's progress in the runs table (written every half second), and batches of records
//! that delete nothing (records and entities only) — go through the *untracked* writer and
//! leave the cache alone; a cached read of any other table must not be added without tracking
//! its writes.
//!
//! The cache is used only where this process sees every write: SQLite, whose database file
//! belongs to one server. (The `environment` CLI commands write only environments, which are not
//! cached.) With PostgreSQL other replicas write too, so reads always go to the database.

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, ExecResult, QueryResult,
    SqliteTransactionMode, Statement, TransactionOptions, TransactionTrait,
};

/// The store's write counters.
#[derive(Default)]
pub(crate) struct Changes {
    /// Moves on when a write ends.
    generation: AtomicU64,
    /// Writes in progress.
    writing: AtomicU64,
}

impl Changes {
    /// The generation, if no write is in progress.
    fn quiet_generation(&self) -> Option<u64> {
        let generation = self.generation.load(SeqCst);
        (self.writing.load(SeqCst) == 0).then_some(generation)
    }

    fn guard(self: &Arc<Self>) -> WriteGuard {
        self.writing.fetch_add(1, SeqCst);
        WriteGuard {
            changes: self.clone(),
            changed: true,
        }
    }
}

/// Marks a write in progress; its end moves the generation on (unless it changed nothing).
pub(crate) struct WriteGuard {
    changes: Arc<Changes>,
    changed: bool,
}

impl Drop for WriteGuard {
    fn drop(&mut self) {
        // Generation first: a reader that then sees no write in progress also sees the new one.
        if self.changed {
            self.changes.generation.fetch_add(1, SeqCst);
        }
        self.changes.writing.fetch_sub(1, SeqCst);
    }
}

/// The write connection for one statement (or a transaction, with [`Writer::begin`]).
pub struct Writer<'a> {
    db: &'a DatabaseConnection,
    /// None for writes to tables that no cached read depends on (leases, run progress, records).
    guard: Option<WriteGuard>,
}

impl<'a> Writer<'a> {
    pub(crate) fn new(db: &'a DatabaseConnection, changes: &Arc<Changes>) -> Self {
        Writer {
            db,
            guard: Some(changes.guard()),
        }
    }

    pub(crate) fn untracked(db: &'a DatabaseConnection) -> Self {
        Writer { db, guard: None }
    }

    /// On SQLite the transaction takes the write lock at once (`BEGIN IMMEDIATE`). A deferred
    /// one reads first and asks for the lock at its first write; if another process (the
    /// `exportd environment` CLI, an operator's `sqlite3`) wrote in between, SQLite cannot
    /// upgrade it and fails with "database is locked" without waiting. An immediate one waits
    /// for the lock like any statement does.
    pub async fn begin(self) -> Result<WriteTxn, DbErr> {
        let options = TransactionOptions {
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..Default::default()
        };
        Ok(WriteTxn {
            txn: self.db.begin_with_options(options).await?,
            guard: self.guard,
            audited: Default::default(),
        })
    }
}

/// A write transaction: the guard is released only when it ends (commit, or the rollback of
/// a dropped transaction).
pub struct WriteTxn {
    txn: DatabaseTransaction,
    guard: Option<WriteGuard>,
    /// The call's audit event went with a statement of this transaction ([`Self::exec_last`]).
    /// A lock only so that closures holding `&WriteTxn` can call it: statements of one
    /// transaction run one after another.
    audited: std::sync::Mutex<Option<Arc<crate::audit::scope::Scope>>>,
}

impl WriteTxn {
    /// Commits; inside an audited call whose event is armed, the event is written in this
    /// transaction first (see `audit::scope`), so that it stands or falls with the change.
    pub async fn commit(mut self) -> Result<(), DbErr> {
        let audited = match self.audited.get_mut().ok().and_then(Option::take) {
            Some(scope) => Some(scope),
            None => crate::audit::scope::write_pending(&self.txn).await?,
        };
        self.txn.commit().await?;
        crate::audit::scope::committed(audited);
        Ok(())
    }

    /// Executes the transaction's last change (after it, the call's audit event is complete:
    /// only the commit, or bookkeeping such as a request id, follows) and says how many rows
    /// it changed. The call's armed audit event goes in the same round trip: each statement of
    /// a write transaction is one (to SQLite's worker thread, holding its one writer; to
    /// PostgreSQL over the network), and the audit row was the fourth of an UpdateExport
    /// (BEGIN, UPDATE, INSERT, COMMIT; benches/write_path.rs). SQLite runs both statements in
    /// one execution; PostgreSQL takes the INSERT as a data-modifying `WITH` of the statement
    /// (it runs once, whatever the statement changes). Without an armed event, the event is
    /// written at commit as always.
    pub async fn exec_last(&self, statement: Statement) -> Result<u64, DbErr> {
        let backend = self.txn.get_database_backend();
        let armed = match backend {
            DbBackend::Sqlite | DbBackend::Postgres if self.audited.lock().is_ok_and(|a| a.is_none()) => {
                crate::audit::scope::pending()
            }
            _ => None,
        };
        let Some((scope, event)) = armed else {
            return Ok(self.txn.execute_raw(statement).await?.rows_affected());
        };
        let insert = crate::store::audit::insert_statement(backend, &event);
        let insert_values = insert.values.map(|v| v.0).unwrap_or_default();
        let mut values = statement.values.map(|v| v.0).unwrap_or_default();
        let (sql, audit_rows) = if backend == DbBackend::Sqlite {
            // `?` placeholders bind in text order: the INSERT's values first.
            values.splice(0..0, insert_values);
            (format!("{}; {}", insert.sql, statement.sql), 1)
        } else {
            // `$n` placeholders: the INSERT's are numbered after the statement's. The command
            // tag (the row count) is the statement's own.
            let sql = format!(
                "WITH exportd_audit AS ({}) {}",
                shift_placeholders(&insert.sql, values.len()),
                statement.sql
            );
            values.extend(insert_values);
            (sql, 0)
        };
        let changed = self
            .txn
            .execute_raw(Statement::from_sql_and_values(backend, sql, values))
            .await?
            .rows_affected();
        if let Ok(mut audited) = self.audited.lock() {
            *audited = Some(scope);
        }
        Ok(changed.saturating_sub(audit_rows))
    }

    /// Commits a transaction that only read (it looked for work and found none): cached reads
    /// stay valid.
    pub async fn commit_unchanged(mut self) -> Result<(), DbErr> {
        if let Some(guard) = self.guard.as_mut() {
            guard.changed = false;
        }
        self.txn.commit().await
    }
}

/// Both wrappers are connections, delegating to what they wrap.
macro_rules! delegate_connection {
    ($type:ty, $field:ident) => {
        #[async_trait::async_trait]
        impl ConnectionTrait for $type {
            fn get_database_backend(&self) -> DbBackend {
                self.$field.get_database_backend()
            }
            async fn execute_raw(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
                self.$field.execute_raw(stmt).await
            }
            async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
                self.$field.execute_unprepared(sql).await
            }
            async fn query_one_raw(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
                self.$field.query_one_raw(stmt).await
            }
            async fn query_all_raw(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
                self.$field.query_all_raw(stmt).await
            }
            fn support_returning(&self) -> bool {
                self.$field.support_returning()
            }
        }
    };
}
delegate_connection!(Writer<'_>, db);
delegate_connection!(WriteTxn, txn);

type Cached = Arc<dyn Any + Send + Sync>;

/// Reads tagged with the generation they were read at.
pub(crate) struct ReadCache {
    changes: Arc<Changes>,
    /// 0 disables the cache.
    capacity: usize,
    entries: Mutex<HashMap<String, (u64, Cached)>>,
}

impl ReadCache {
    pub(crate) fn new(changes: Arc<Changes>, capacity: usize) -> Self {
        ReadCache {
            changes,
            capacity,
            entries: Mutex::default(),
        }
    }

    /// The value of `key` as of the current generation: from the cache if it was read since the
    /// last write, else from `fetch` (and kept if no write overlapped the read).
    pub(crate) async fn get_or_fetch<T, E, F, Fut>(&self, key: String, fetch: F) -> Result<T, E>
    where
        T: Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        if self.capacity == 0 {
            return fetch().await;
        }
        let before = self.changes.quiet_generation();
        if let Some(generation) = before
            && let Some(value) = self.lookup::<T>(&key, generation)
        {
            return Ok(value);
        }
        let value = fetch().await?;
        if let Some(generation) = before
            && self.changes.quiet_generation() == Some(generation)
        {
            self.keep(key, generation, Arc::new(value.clone()));
        }
        Ok(value)
    }

    fn lookup<T: Clone + 'static>(&self, key: &str, generation: u64) -> Option<T> {
        let entries = self.entries.lock().expect("read cache lock");
        let (tag, value) = entries.get(key)?;
        if *tag != generation {
            return None;
        }
        value.downcast_ref::<T>().cloned()
    }

    fn keep(&self, key: String, generation: u64, value: Cached) {
        let mut entries = self.entries.lock().expect("read cache lock");
        if entries.len() >= self.capacity {
            // Stale entries go first. If the cache is full of current ones, half of them go
            // (whichever the map yields first): a working set larger than the cache then keeps
            // finding half of the cache, where starting over would empty it time and again.
            entries.retain(|_, (tag, _)| *tag == generation);
            if entries.len() >= self.capacity {
                let mut to_drop = (entries.len() / 2).max(1);
                entries.retain(|_, _| {
                    let keep = to_drop == 0;
                    to_drop = to_drop.saturating_sub(1);
                    keep
                });
            }
        }
        entries.insert(key, (generation, value));
    }
}

/// `$1, $2, …` of a PostgreSQL statement as `$(1 + by), …` (the audit INSERT's: its SQL holds
/// no literals, every value is bound).
fn shift_placeholders(sql: &str, by: usize) -> String {
    let mut shifted = String::with_capacity(sql.len() + 16);
    let mut rest = sql;
    while let Some(at) = rest.find('$') {
        shifted.push_str(&rest[..=at]);
        rest = &rest[at + 1..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        match rest[..digits].parse::<usize>() {
            Ok(n) => shifted.push_str(&(n + by).to_string()),
            Err(_) => shifted.push_str(&rest[..digits]),
        }
        rest = &rest[digits..];
    }
    shifted.push_str(rest);
    shifted
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn the_audit_inserts_placeholders_follow_the_statements() {
        assert_eq!(
            shift_placeholders(r#"INSERT INTO "a" ("x", "y") VALUES ($1, $12)"#, 3),
            r#"INSERT INTO "a" ("x", "y") VALUES ($4, $15)"#
        );
        assert_eq!(shift_placeholders("no $ here", 2), "no $ here");
    }

    /// A transaction that read first and writes later must not fail because another process
    /// wrote in between (it would with SQLite's default deferred transactions): it holds the
    /// write lock from its start, and the other writer waits for it instead.
    #[tokio::test]
    async fn a_sqlite_write_transaction_is_not_broken_by_another_process_writing() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("locks.db").display());
        let ours = crate::store::connect(&url, 1).await.unwrap();
        ours.execute_unprepared("CREATE TABLE t (v INTEGER)").await.unwrap();
        // The other process: another connection that does not wait for locks at all.
        let theirs = crate::store::connect(&url, 1).await.unwrap();
        theirs.execute_unprepared("PRAGMA busy_timeout = 0").await.unwrap();

        let txn = Writer::untracked(&ours).begin().await.unwrap();
        txn.execute_unprepared("SELECT count(*) FROM t").await.unwrap();
        let their_write = theirs.execute_unprepared("INSERT INTO t VALUES (2)").await;
        assert!(their_write.is_err(), "the other writer has to wait for our transaction");
        txn.execute_unprepared("INSERT INTO t VALUES (1)").await.unwrap();
        txn.commit().await.unwrap();
        theirs.execute_unprepared("INSERT INTO t VALUES (2)").await.unwrap();
        let rows = ours
            .query_all_raw(Statement::from_string(DbBackend::Sqlite, "SELECT v FROM t ORDER BY v"))
            .await
            .unwrap();
        let values: Vec<i32> = rows.iter().map(|r| r.try_get_by_index(0).unwrap()).collect();
        assert_eq!(values, [1, 2]);
    }

    fn cache() -> (Arc<Changes>, ReadCache) {
        let changes = Arc::new(Changes::default());
        (changes.clone(), ReadCache::new(changes, 4))
    }

    async fn read(cache: &ReadCache, key: &str, fetches: &AtomicUsize, value: u32) -> u32 {
        cache
            .get_or_fetch(key.to_string(), || async {
                fetches.fetch_add(1, SeqCst);
                Ok::<_, ()>(value)
            })
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_read_is_served_from_the_cache_until_a_write_ends() {
        let (changes, cache) = cache();
        let fetches = AtomicUsize::new(0);
        assert_eq!(read(&cache, "a", &fetches, 1).await, 1);
        assert_eq!(read(&cache, "a", &fetches, 2).await, 1, "served from the cache");
        assert_eq!(fetches.load(SeqCst), 1);
        drop(changes.guard());
        assert_eq!(read(&cache, "a", &fetches, 3).await, 3, "a write made it stale");
        assert_eq!(fetches.load(SeqCst), 2);
    }

    #[tokio::test]
    async fn a_write_that_changed_nothing_keeps_cached_reads() {
        let (changes, cache) = cache();
        let fetches = AtomicUsize::new(0);
        read(&cache, "a", &fetches, 1).await;
        let mut looked_for_work = changes.guard();
        looked_for_work.changed = false;
        drop(looked_for_work);
        assert_eq!(read(&cache, "a", &fetches, 2).await, 1);
        assert_eq!(fetches.load(SeqCst), 1);
    }

    #[tokio::test]
    async fn reads_during_a_write_are_not_kept() {
        let (changes, cache) = cache();
        let fetches = AtomicUsize::new(0);
        let write = changes.guard();
        assert_eq!(read(&cache, "a", &fetches, 1).await, 1);
        assert_eq!(read(&cache, "a", &fetches, 2).await, 2);
        drop(write);
        assert_eq!(read(&cache, "a", &fetches, 3).await, 3);
        assert_eq!(read(&cache, "a", &fetches, 4).await, 3);
        assert_eq!(fetches.load(SeqCst), 3);
    }

    #[tokio::test]
    async fn a_read_that_a_write_overlapped_is_not_kept() {
        let (changes, cache) = cache();
        let value = cache
            .get_or_fetch("a".to_string(), || async {
                drop(changes.guard()); // a write starts and ends while the database is read
                Ok::<_, ()>(1)
            })
            .await
            .unwrap();
        assert_eq!(value, 1);
        let fetches = AtomicUsize::new(0);
        assert_eq!(read(&cache, "a", &fetches, 2).await, 2);
        assert_eq!(fetches.load(SeqCst), 1);
    }

    #[tokio::test]
    async fn a_full_cache_drops_stale_entries_then_half_of_the_current_ones() {
        let (changes, cache) = cache();
        let fetches = AtomicUsize::new(0);
        for key in ["a", "b", "c", "d"] {
            read(&cache, key, &fetches, 1).await;
        }
        assert_eq!(cache.entries.lock().unwrap().len(), 4);
        drop(changes.guard());
        read(&cache, "e", &fetches, 1).await;
        assert_eq!(cache.entries.lock().unwrap().len(), 1, "the stale entries made room");
        for key in ["f", "g", "h", "i"] {
            read(&cache, key, &fetches, 1).await;
        }
        assert_eq!(
            cache.entries.lock().unwrap().len(),
            3,
            "full of current entries: half of them made room"
        );
        let before = fetches.load(SeqCst);
        for key in ["e", "f", "g", "h", "i"] {
            read(&cache, key, &fetches, 1).await;
        }
        assert!(
            fetches.load(SeqCst) - before < 5,
            "some of the entries kept were served from the cache"
        );
    }

    #[tokio::test]
    async fn capacity_zero_always_reads() {
        let cache = ReadCache::new(Arc::new(Changes::default()), 0);
        let fetches = AtomicUsize::new(0);
        read(&cache, "a", &fetches, 1).await;
        read(&cache, "a", &fetches, 1).await;
        assert_eq!(fetches.load(SeqCst), 2);
    }
}
