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
                    .table(Alias::new("environments"))
                    .col(id("id").primary_key())
                    .col(text("display_name"))
                    .col(id("kind"))
                    .col(text_null("system_refresh_schedule"))
                    .col(int_null("next_system_refresh_at"))
                    .col(int("create_time"))
                    .col(int("update_time"))
                    .col(int("revision"))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Alias::new("connections"))
                    .col(id("env"))
                    .col(id("id"))
                    .col(text("display_name"))
                    .col(text("description"))
                    .col(id("type_id"))
                    .col(text("config"))
                    .col(text_null("sealed_secrets"))
                    .col(ColumnDef::new(Alias::new("secret_key_id")).string().null())
                    .col(text("secret_keys"))
                    .col(boolean("contributors_can_use"))
                    .col(int("profile_limit"))
                    .col(text("creator"))
                    .col(int("create_time"))
                    .col(int("update_time"))
                    .col(int("revision"))
                    .primary_key(Index::create().col(Alias::new("env")).col(Alias::new("id")))
                    .foreign_key(
                        ForeignKey::create()
                            .from(Alias::new("connections"), Alias::new("env"))
                            .to(Alias::new("environments"), Alias::new("id"))
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;

        // Idempotent creates: (environment, method, request id) → the resource it produced.
        manager
            .create_table(
                Table::create()
                    .table(Alias::new("request_ids"))
                    .col(id("env"))
                    .col(id("method"))
                    .col(id("request_id"))
                    .col(text("request_hash"))
                    .col(text("resource_name"))
                    .col(int("create_time"))
                    .primary_key(
                        Index::create()
                            .col(Alias::new("env"))
                            .col(Alias::new("method"))
                            .col(Alias::new("request_id")),
                    )
                    .to_owned(),
            )
            .await?;
        Ok(())
    }
}
