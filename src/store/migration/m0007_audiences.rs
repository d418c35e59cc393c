//! Audience targets (issue 16): the audience each segment of an export fills at its target
//! (found by name or created by the first run), so that later runs reuse it; and, for each
//! member delivered, the fields it was sent with, so that a MIRROR run removes a member who
//! left by the identifiers the target knows (also when its record was deleted since).

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
                    .table(Alias::new("export_audiences"))
                    .col(id("env"))
                    .col(id("export"))
                    // The segment's id.
                    .col(id("segment"))
                    // The vendor's id of the audience (list, custom audience, DMP segment).
                    .col(id("audience_id"))
                    .col(text("audience_name"))
                    .col(int("update_time"))
                    .primary_key(
                        Index::create()
                            .col(Alias::new("env"))
                            .col(Alias::new("export"))
                            .col(Alias::new("segment")),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Alias::new("delivered_members"))
                    .add_column(ColumnDef::new(Alias::new("sent")).text().null())
                    .to_owned(),
            )
            .await?;
        Ok(())
    }
}
