use sea_orm_migration::prelude::*;

use super::cols::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

fn env_fk(table: &'static str) -> ForeignKeyCreateStatement {
    ForeignKey::create()
        .from(Alias::new(table), Alias::new("env"))
        .to(Alias::new("environments"), Alias::new("id"))
        .on_delete(ForeignKeyAction::Cascade)
        .to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Alias::new("entities"))
                    .col(id("env"))
                    .col(id("id"))
                    .col(text("display_name"))
                    .col(id("kind"))
                    .col(text("fields"))
                    .col(id("primary_key"))
                    .col(int("record_count"))
                    // The latest change sequence handed out for this entity's records.
                    .col(int("change_seq"))
                    .col(boolean("refreshing"))
                    .col(int_null("last_refresh_time"))
                    .col(int("create_time"))
                    .col(int("update_time"))
                    .primary_key(Index::create().col(Alias::new("env")).col(Alias::new("id")))
                    .foreign_key(&mut env_fk("entities"))
                    .to_owned(),
            )
            .await?;

        // One row per record; deletes are kept as tombstones so that incremental exports can
        // send them. `seq` is the change sequence of the record's last write.
        manager
            .create_table(
                Table::create()
                    .table(Alias::new("records"))
                    .col(id("env"))
                    .col(id("entity"))
                    .col(id("key"))
                    .col(text("data"))
                    .col(int("seq"))
                    .col(boolean("deleted"))
                    // What the last upsert found (0 new, 1 a tombstone, 2 a live record), returned
                    // by the upsert itself so that counting needs no lookup beforehand.
                    .col(
                        ColumnDef::new(Alias::new("prev_state"))
                            .small_integer()
                            .not_null()
                            .default(0),
                    )
                    .primary_key(
                        Index::create()
                            .col(Alias::new("env"))
                            .col(Alias::new("entity"))
                            .col(Alias::new("key")),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("records_by_seq")
                    .table(Alias::new("records"))
                    .col(Alias::new("env"))
                    .col(Alias::new("entity"))
                    .col(Alias::new("seq"))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Alias::new("segments"))
                    .col(id("env"))
                    .col(id("id"))
                    .col(text("display_name"))
                    .col(id("entity"))
                    .col(id("segment_type"))
                    .col(text_null("rule"))
                    .col(int("member_count"))
                    // Members of the current generation are the segment's members; a refresh
                    // or a SetSegmentMembers stream fills the next one and then switches.
                    .col(int("generation"))
                    .col(boolean("refreshing"))
                    .col(int_null("last_refresh_time"))
                    .col(int("create_time"))
                    .col(int("update_time"))
                    .col(int("revision"))
                    .primary_key(Index::create().col(Alias::new("env")).col(Alias::new("id")))
                    .foreign_key(&mut env_fk("segments"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Alias::new("segment_members"))
                    .col(id("env"))
                    .col(id("segment"))
                    .col(int("generation"))
                    .col(id("key"))
                    .primary_key(
                        Index::create()
                            .col(Alias::new("env"))
                            .col(Alias::new("segment"))
                            .col(Alias::new("generation"))
                            .col(Alias::new("key")),
                    )
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Alias::new("system_refreshes"))
                    .col(id("env"))
                    .col(id("id"))
                    .col(id("state"))
                    .col(int("start_time"))
                    .col(int_null("end_time"))
                    .col(text_null("error"))
                    .col(int("segments_refreshed"))
                    .col(text("runs"))
                    .primary_key(Index::create().col(Alias::new("env")).col(Alias::new("id")))
                    .foreign_key(&mut env_fk("system_refreshes"))
                    .to_owned(),
            )
            .await?;
        Ok(())
    }
}
