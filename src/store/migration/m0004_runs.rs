use sea_orm_migration::prelude::*;

use super::cols::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // A run is a row before anything happens: the durable queue of the executor pool.
        manager
            .create_table(
                Table::create()
                    .table(Alias::new("runs"))
                    .col(id("env"))
                    .col(id("export"))
                    .col(id("id"))
                    .col(ColumnDef::new(Alias::new("trigger")).integer().not_null())
                    .col(ColumnDef::new(Alias::new("state")).integer().not_null())
                    .col(text("tasks"))
                    .col(int("records_total"))
                    .col(int("records_exported"))
                    .col(int("records_rejected"))
                    .col(int("bytes_written"))
                    .col(text("warnings"))
                    .col(text_null("error"))
                    .col(text_null("skip_reason"))
                    .col(ColumnDef::new(Alias::new("attempt")).integer().not_null())
                    .col(text("waiting_for"))
                    .col(int("create_time"))
                    .col(int_null("start_time"))
                    .col(int_null("end_time"))
                    .col(ColumnDef::new(Alias::new("lease_owner")).string().null())
                    .col(int_null("lease_expires_at"))
                    .col(boolean("cancel_requested"))
                    // Bumped by every change, so that watchers can tell whether there is news.
                    .col(int("revision"))
                    .primary_key(
                        Index::create()
                            .col(Alias::new("env"))
                            .col(Alias::new("export"))
                            .col(Alias::new("id")),
                    )
                    .to_owned(),
            )
            .await?;
        for (name, columns) in [
            ("runs_by_state", &["state", "lease_expires_at"][..]),
            ("runs_by_env_time", &["env", "create_time"][..]),
            ("runs_by_export_time", &["env", "export", "create_time"][..]),
        ] {
            let mut index = Index::create();
            index.name(name).table(Alias::new("runs"));
            for column in columns {
                index.col(Alias::new(*column));
            }
            manager.create_index(index.to_owned()).await?;
        }
        // At most one queued, waiting or running run per export, enforced by the database so
        // that two concurrent RunExport calls (or two replicas' schedulers) cannot both win.
        manager
            .get_connection()
            .execute_unprepared("CREATE UNIQUE INDEX runs_one_active ON runs (env, export) WHERE state IN (1, 2, 3)")
            .await?;

        // What the run engine remembers per export: the change sequence each entity was
        // delivered up to (incremental exports), and a pending catch-up run's trigger.
        manager
            .alter_table(
                Table::alter()
                    .table(Alias::new("exports"))
                    .add_column(ColumnDef::new(Alias::new("sync_state")).text().null())
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Alias::new("exports"))
                    .add_column(ColumnDef::new(Alias::new("catch_up_trigger")).integer().null())
                    .to_owned(),
            )
            .await?;
        // Why the latest run failed (JSON), shown on the export's `last_run`.
        manager
            .alter_table(
                Table::alter()
                    .table(Alias::new("exports"))
                    .add_column(ColumnDef::new(Alias::new("last_run_error")).text().null())
                    .to_owned(),
            )
            .await?;

        // The members an incremental segment export has delivered (state 0), and the snapshot
        // a running run compares them with (state 1), so that members who joined, changed or
        // left are sent — and only those.
        manager
            .create_table(
                Table::create()
                    .table(Alias::new("delivered_members"))
                    .col(id("env"))
                    .col(id("export"))
                    .col(id("segment"))
                    .col(ColumnDef::new(Alias::new("state")).small_integer().not_null())
                    .col(id("key"))
                    .primary_key(
                        Index::create()
                            .col(Alias::new("env"))
                            .col(Alias::new("export"))
                            .col(Alias::new("segment"))
                            .col(Alias::new("state"))
                            .col(Alias::new("key")),
                    )
                    .to_owned(),
            )
            .await?;

        // Named leases: the one active scheduler among replicas.
        manager
            .create_table(
                Table::create()
                    .table(Alias::new("leases"))
                    .col(id("name").primary_key())
                    .col(id("owner"))
                    .col(int("expires_at"))
                    .to_owned(),
            )
            .await?;
        Ok(())
    }
}
