//! A leaner audit log row: each mutating call inserts one inside its own transaction, on the
//! write path (benches/write_path.rs), so the row touches as few B-trees as it can.
//!
//! - The retention purge no longer needs an index of its own (`audit_events_by_age`): it walks
//!   the table in write order (`seq`) from the oldest event, which is where expired events are.
//! - On SQLite, `seq` becomes a plain `INTEGER PRIMARY KEY` (the rowid) instead of
//!   `AUTOINCREMENT`, which also reads and rewrites the `sqlite_sequence` table on every insert.
//!   A new rowid is one more than the largest, so write order is kept; a number is reused only
//!   after the purge removed every event, when no page token can point at one. SQLite cannot
//!   change a column's key in place: the table is rebuilt, its rows and `seq` values copied.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("audit_events_by_age")
                    .table(Alias::new("audit_events"))
                    .to_owned(),
            )
            .await?;
        if manager.get_database_backend() != DbBackend::Sqlite {
            return Ok(());
        }
        let db = manager.get_connection();
        for statement in [
            "CREATE TABLE audit_events_lean (\
               seq integer NOT NULL PRIMARY KEY, env varchar NOT NULL, id varchar NOT NULL, \
               time bigint NOT NULL, actor text NOT NULL, method text NOT NULL, resource text NOT NULL, \
               request_id text NOT NULL, changed_fields text NOT NULL, summary text NOT NULL, \
               code bigint NOT NULL)",
            "INSERT INTO audit_events_lean (seq, env, id, time, actor, method, resource, request_id, \
               changed_fields, summary, code) \
             SELECT seq, env, id, time, actor, method, resource, request_id, changed_fields, summary, code \
             FROM audit_events",
            "DROP TABLE audit_events",
            "ALTER TABLE audit_events_lean RENAME TO audit_events",
            "CREATE INDEX audit_events_by_time ON audit_events (env, time, seq)",
        ] {
            db.execute_unprepared(statement).await?;
        }
        Ok(())
    }
}
