use sea_orm_migration::prelude::*;

use super::cols::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Indexes for the list orders and lookups of exports. Each sort index ends with `id`, the
/// tie-breaker, so that a page in that order is read straight from the index. The display
/// name is sorted case-insensitively, hence an expression index (raw SQL: both SQLite and
/// PostgreSQL accept it, sea-query's index builder does not take expressions).
const INDEXES: &[&str] = &[
    "CREATE INDEX exports_by_display_name ON exports (env, lower(display_name), id)",
    "CREATE INDEX exports_by_create_time ON exports (env, create_time, id)",
    "CREATE INDEX exports_by_update_time ON exports (env, update_time, id)",
    "CREATE INDEX exports_by_schedule ON exports (env, schedule_sort, id)",
    "CREATE INDEX exports_by_status ON exports (env, last_run_state, id)",
    "CREATE INDEX exports_by_last_refreshed ON exports (env, last_refreshed_time, id)",
    // The list filters (kind, state, status, connection, display name) read from one index,
    // so that counting the matches of a filter does not read every export row.
    "CREATE INDEX exports_by_filter ON exports (env, kind, state, last_run_state, connection_id, display_name)",
    // Exports of a connection (DeleteConnection, the foreign key) and the join for sorting by
    // connection.
    "CREATE INDEX exports_by_connection ON exports (env, connection_id)",
    // The scheduler's "what is due?" across environments.
    "CREATE INDEX exports_due ON exports (next_run_at)",
    // "Which exports read this entity or segment?" (DeleteEntity, DeleteSegment).
    "CREATE INDEX export_sources_by_source ON export_sources (env, source_kind, source_id)",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Alias::new("exports"))
                    .col(id("env"))
                    .col(id("id"))
                    .col(text("display_name"))
                    .col(text("description"))
                    .col(ColumnDef::new(Alias::new("connection_id")).string().null())
                    .col(id("kind"))
                    .col(text("entities"))
                    .col(text("segments"))
                    .col(text("field_mappings"))
                    .col(text("settings"))
                    .col(id("sync_mode"))
                    .col(text("schedule"))
                    .col(int_null("schedule_sort"))
                    .col(int_null("next_run_at"))
                    .col(id("state"))
                    .col(int_null("last_refreshed_time"))
                    .col(ColumnDef::new(Alias::new("last_run_id")).string().null())
                    .col(ColumnDef::new(Alias::new("last_run_state")).integer().null())
                    .col(int_null("last_run_end"))
                    .col(text("creator"))
                    .col(int("create_time"))
                    .col(int("update_time"))
                    .col(int("revision"))
                    .primary_key(Index::create().col(Alias::new("env")).col(Alias::new("id")))
                    .foreign_key(
                        ForeignKey::create()
                            .from(Alias::new("exports"), Alias::new("env"))
                            .to(Alias::new("environments"), Alias::new("id"))
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    // No action on delete: a connection is deleted only after its exports were
                    // detached (connection_id NULL, which the key does not check), so the key
                    // only catches a create that raced a delete.
                    .foreign_key(
                        ForeignKey::create()
                            .from(Alias::new("exports"), (Alias::new("env"), Alias::new("connection_id")))
                            .to(Alias::new("connections"), (Alias::new("env"), Alias::new("id"))),
                    )
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Alias::new("export_sources"))
                    .col(id("env"))
                    .col(id("export"))
                    .col(id("source_kind"))
                    .col(id("source_id"))
                    .primary_key(
                        Index::create()
                            .col(Alias::new("env"))
                            .col(Alias::new("export"))
                            .col(Alias::new("source_kind"))
                            .col(Alias::new("source_id")),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(Alias::new("export_sources"), (Alias::new("env"), Alias::new("export")))
                            .to(Alias::new("exports"), (Alias::new("env"), Alias::new("id")))
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;

        let db = manager.get_connection();
        for sql in INDEXES {
            db.execute_unprepared(sql).await?;
        }
        Ok(())
    }
}
