//! Row-level results (PRODUCT.md §12): the records a target rejected, per export and source
//! (one row per key, kept until the key is delivered — then no longer outstanding — or its
//! export is deleted), and the runs' counts of removals and retried rejects.

use sea_orm_migration::prelude::*;

use super::cols::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Alias::new("rejected_records"))
                    .col(id("env"))
                    .col(id("export"))
                    // The entity or segment resource name.
                    .col(id("source"))
                    .col(id("key"))
                    // At most 1 KiB.
                    .col(text("reason"))
                    .col(id("code"))
                    // The run (id) that rejected it last.
                    .col(id("run"))
                    // Runs in a row that rejected it.
                    .col(int("attempts"))
                    .col(int("first_reject_time"))
                    .col(int("last_reject_time"))
                    // Not delivered since; the next run sends it again.
                    .col(boolean("outstanding"))
                    .primary_key(
                        Index::create()
                            .col(Alias::new("env"))
                            .col(Alias::new("export"))
                            .col(Alias::new("source"))
                            .col(Alias::new("key")),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("rejected_records_by_run")
                    .table(Alias::new("rejected_records"))
                    .col(Alias::new("env"))
                    .col(Alias::new("export"))
                    .col(Alias::new("run"))
                    .to_owned(),
            )
            .await?;
        for column in ["records_removed", "records_retried"] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Alias::new("runs"))
                        .add_column(ColumnDef::new(Alias::new(column)).big_integer().not_null().default(0))
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}
