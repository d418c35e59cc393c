//! Alerts (PRODUCT.md §14): policies; the condition each (policy, export) is in, so that an
//! alert fires once on entry and resolves once on recovery; and the events, which are also the
//! delivery outbox (state, attempts, next attempt, and the lease of the worker sending one).

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
                    .table(Alias::new("alert_policies"))
                    .col(id("env"))
                    .col(id("id"))
                    .col(text("display_name"))
                    // The webhook connection's id.
                    .col(id("connection"))
                    // JSON arrays: condition names, export ids.
                    .col(text("conditions"))
                    .col(
                        ColumnDef::new(Alias::new("rejected_percent_threshold"))
                            .double()
                            .not_null(),
                    )
                    .col(int("schedule_missed_after_seconds"))
                    .col(text("exports"))
                    .col(boolean("notify_recovery"))
                    .col(boolean("enabled"))
                    .col(int("create_time"))
                    .col(int("update_time"))
                    .col(int("revision"))
                    .primary_key(Index::create().col(Alias::new("env")).col(Alias::new("id")))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Alias::new("alert_conditions"))
                    .col(id("env"))
                    .col(id("policy"))
                    .col(id("export"))
                    .col(id("condition"))
                    .col(int("since"))
                    .primary_key(
                        Index::create()
                            .col(Alias::new("env"))
                            .col(Alias::new("policy"))
                            .col(Alias::new("export"))
                            .col(Alias::new("condition")),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Alias::new("alert_events"))
                    .col(
                        ColumnDef::new(Alias::new("seq"))
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(id("env"))
                    .col(id("policy"))
                    .col(id("id"))
                    .col(id("export"))
                    .col(id("run"))
                    .col(id("condition"))
                    .col(id("state"))
                    .col(text("message"))
                    .col(int("create_time"))
                    .col(id("delivery_state"))
                    .col(int("delivery_attempts"))
                    .col(text("last_delivery_error"))
                    .col(int("next_attempt_at"))
                    .col(ColumnDef::new(Alias::new("lease_owner")).string().null())
                    .col(int_null("lease_expires_at"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("alert_events_by_policy")
                    .table(Alias::new("alert_events"))
                    .col(Alias::new("env"))
                    .col(Alias::new("policy"))
                    .col(Alias::new("seq"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("alert_events_outbox")
                    .table(Alias::new("alert_events"))
                    .col(Alias::new("delivery_state"))
                    .col(Alias::new("next_attempt_at"))
                    .to_owned(),
            )
            .await?;
        Ok(())
    }
}
