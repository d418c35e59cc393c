//! The audit log (PRODUCT.md §15): one row per audited call. `seq` is the write order, which
//! breaks ties between events of the same microsecond and keeps pages stable.

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
                    .table(Alias::new("audit_events"))
                    .col(
                        ColumnDef::new(Alias::new("seq"))
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(id("env"))
                    .col(id("id"))
                    .col(int("time"))
                    .col(text("actor"))
                    .col(text("method"))
                    .col(text("resource"))
                    .col(text("request_id"))
                    // JSON array of field paths (never values).
                    .col(text("changed_fields"))
                    .col(text("summary"))
                    .col(int("code"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("audit_events_by_time")
                    .table(Alias::new("audit_events"))
                    .col(Alias::new("env"))
                    .col(Alias::new("time"))
                    .col(Alias::new("seq"))
                    .to_owned(),
            )
            .await?;
        // The purge deletes by time across environments.
        manager
            .create_index(
                Index::create()
                    .name("audit_events_by_age")
                    .table(Alias::new("audit_events"))
                    .col(Alias::new("time"))
                    .to_owned(),
            )
            .await?;
        Ok(())
    }
}
