//! Segments and their members.
//!
//! Members are stored by generation: a refresh or a SetSegmentMembers stream writes the next
//! generation in small transactions, then one short transaction switches the segment to it
//! and drops the old one. Readers always see a complete member list, and no long write
//! transaction holds the database while millions of records are evaluated.

use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect,
};

use super::Store;
use super::list::page_of;
use super::models::segment::{ActiveModel, Column, Entity as Table, Model};
use super::models::segment_member;
use crate::domain::catalog::{Segment, SegmentDefinition};
use crate::domain::connection_type::SegmentType;
use crate::domain::names::{EntityName, SegmentName};
use crate::domain::paging::Page;
use crate::domain::time::now_micros;
use crate::error::{Error, Result};

const INSERT_CHUNK: usize = 5000;

pub(crate) fn to_domain(model: Model) -> Result<Segment> {
    Ok(Segment {
        name: SegmentName::new(&model.env, &model.id),
        entity: EntityName::new(&model.env, &model.entity),
        segment_type: SegmentType::parse(&model.segment_type)
            .ok_or_else(|| Error::internal(format!("segment '{}' is corrupt", model.id)))?,
        definition: match model.rule {
            Some(rule) => SegmentDefinition::Rule(rule),
            None => SegmentDefinition::Pushed,
        },
        display_name: model.display_name,
        member_count: model.member_count,
        generation: model.generation,
        refreshing: model.refreshing,
        last_refresh_time: model.last_refresh_time,
        create_time: model.create_time,
        update_time: model.update_time,
        revision: model.revision,
    })
}

/// A generation of members being written; switched in by [`Store::commit_members`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Generation(pub i64);

impl Generation {
    /// A generation for a segment that does not exist yet: random, so that the rows of two
    /// attempts at creating the same segment (an abandoned one, another process's) never mix.
    /// Later generations count up from it.
    pub fn unique() -> Generation {
        use rand::Rng;
        Generation(rand::thread_rng().gen_range(1..(1i64 << 40)))
    }
}

fn stored_rule(definition: &SegmentDefinition) -> Option<String> {
    match definition {
        SegmentDefinition::Rule(rule) => Some(rule.clone()),
        SegmentDefinition::Pushed => None,
    }
}

fn concurrent_change(name: &SegmentName) -> Error {
    Error::precondition(
        "CONCURRENT_CHANGE",
        format!("segment '{name}' changed while it was being updated; retry"),
    )
}

async fn count_generation(db: &impl ConnectionTrait, name: &SegmentName, generation: Generation) -> Result<i64> {
    Ok(segment_member::Entity::find()
        .filter(segment_member::Column::Env.eq(&name.env))
        .filter(segment_member::Column::Segment.eq(&name.id))
        .filter(segment_member::Column::Generation.eq(generation.0))
        .count(db)
        .await? as i64)
}

async fn insert_segment(
    db: &impl ConnectionTrait,
    segment: &Segment,
    generation: Generation,
    member_count: i64,
) -> Result<()> {
    let now = now_micros();
    let model = ActiveModel {
        env: Set(segment.name.env.clone()),
        id: Set(segment.name.id.clone()),
        display_name: Set(segment.display_name.clone()),
        entity: Set(segment.entity.id.clone()),
        segment_type: Set(segment.segment_type.as_str().to_string()),
        rule: Set(stored_rule(&segment.definition)),
        member_count: Set(member_count),
        generation: Set(generation.0),
        refreshing: Set(false),
        last_refresh_time: Set(None),
        create_time: Set(now),
        update_time: Set(now),
        revision: Set(1),
    };
    Table::insert(model).exec(db).await.map_err(|e| {
        if super::is_unique_violation(&e) {
            Error::already_exists("segment", segment.name.to_string())
        } else {
            e.into()
        }
    })?;
    Ok(())
}

impl Store {
    /// Creates a segment without members (pushed members arrive later).
    pub async fn create_segment(&self, segment: &Segment) -> Result<Segment> {
        // A transaction, for the audit event that goes with it (`audit::scope`).
        let txn = self.writer().begin().await?;
        insert_segment(&txn, segment, Generation(0), 0).await?;
        txn.commit().await?;
        self.segment_or_not_found(&segment.name).await
    }

    /// Creates a segment whose members were already written as `generation`, in one
    /// transaction: the segment appears with its members or not at all.
    pub async fn create_segment_with_members(&self, segment: &Segment, generation: Generation) -> Result<Segment> {
        let txn = self.writer().begin().await?;
        let count = count_generation(&txn, &segment.name, generation).await?;
        if let Err(e) = insert_segment(&txn, segment, generation, count).await {
            drop(txn);
            self.drop_generation(&segment.name, generation).await?;
            return Err(e);
        }
        txn.commit().await?;
        self.segment_or_not_found(&segment.name).await
    }

    pub async fn get_segment(&self, name: &SegmentName) -> Result<Option<Segment>> {
        get_segment_on(self.reader(), name).await
    }

    pub async fn segment_or_not_found(&self, name: &SegmentName) -> Result<Segment> {
        get_segment_on(self.primary(), name)
            .await?
            .ok_or_else(|| Error::not_found("segment", name.to_string()))
    }

    pub async fn list_segments(&self, env: &str, offset: u64, limit: u64) -> Result<(Vec<Segment>, u64)> {
        page_of(
            self.reader(),
            Table::find().filter(Column::Env.eq(env)),
            |select| select.order_by_asc(Column::Id),
            Page { offset, limit },
            to_domain,
        )
        .await
    }

    /// Segments built on one entity.
    pub async fn segments_of_entity(&self, entity: &EntityName) -> Result<Vec<Segment>> {
        let models = Table::find()
            .filter(Column::Env.eq(&entity.env))
            .filter(Column::Entity.eq(&entity.id))
            .order_by_asc(Column::Id)
            .all(self.reader())
            .await?;
        models.into_iter().map(to_domain).collect()
    }

    /// Writes a segment's display name and definition if its revision is unchanged.
    pub async fn update_segment(&self, segment: &Segment) -> Result<Segment> {
        let txn = self.writer().begin().await?;
        let result = Table::update_many()
            .col_expr(Column::DisplayName, Expr::val(segment.display_name.clone()))
            .col_expr(Column::Rule, Expr::val(stored_rule(&segment.definition)))
            .col_expr(Column::UpdateTime, Expr::val(now_micros()))
            .col_expr(Column::Revision, Expr::val(segment.revision + 1))
            .filter(Column::Env.eq(&segment.name.env))
            .filter(Column::Id.eq(&segment.name.id))
            .filter(Column::Revision.eq(segment.revision))
            .exec(&txn)
            .await?;
        if result.rows_affected == 0 {
            return Err(concurrent_change(&segment.name));
        }
        txn.commit().await?;
        self.segment_or_not_found(&segment.name).await
    }

    /// Deletes a segment and its members, unless exports use it.
    pub async fn delete_segment(&self, name: &SegmentName) -> Result<()> {
        let txn = self.writer().begin().await?;
        let users = super::exports_using(&txn, &name.env, super::ExportSource::Segment(&name.id)).await?;
        if !users.is_empty() {
            let remedy = "change or delete them first";
            return Err(Error::in_use(
                "SEGMENT_IN_USE",
                "segment",
                &name.to_string(),
                &users,
                "exports",
                remedy,
            ));
        }
        segment_member::Entity::delete_many()
            .filter(segment_member::Column::Env.eq(&name.env))
            .filter(segment_member::Column::Segment.eq(&name.id))
            .exec(&txn)
            .await?;
        let deleted = Table::delete_many()
            .filter(Column::Env.eq(&name.env))
            .filter(Column::Id.eq(&name.id))
            .exec(&txn)
            .await?;
        if deleted.rows_affected == 0 {
            return Err(Error::not_found("segment", name.to_string()));
        }
        txn.commit().await?;
        Ok(())
    }

    /// Starts a new member generation (clearing leftovers of an abandoned one).
    pub async fn begin_members(&self, segment: &Segment) -> Result<Generation> {
        let next = Generation(segment.generation + 1);
        self.drop_generation(&segment.name, next).await?;
        Ok(next)
    }

    /// Adds keys to a generation being written (duplicates are ignored).
    pub async fn add_members(&self, name: &SegmentName, generation: Generation, keys: &[String]) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        // The keys travel as one JSON parameter (one bind per chunk, not one per key).
        let backend = self.backend();
        let source = match backend {
            sea_orm::DbBackend::Postgres => "SELECT ?, ?, ?, k FROM json_array_elements_text(CAST(? AS json)) AS k",
            _ => "SELECT ?, ?, ?, value FROM json_each(?) WHERE true",
        };
        let sql = super::placeholders(
            backend,
            &format!("INSERT INTO segment_members (env, segment, generation, key) {source} ON CONFLICT DO NOTHING"),
        );
        // Members of a generation not yet switched to are no change of their own: the audit
        // event of the call goes with the switch (or the segment's creation).
        let _aside = crate::audit::scope::aside();
        let txn = self.writer().begin().await?;
        for chunk in keys.chunks(INSERT_CHUNK) {
            let values: Vec<sea_orm::Value> = vec![
                name.env.clone().into(),
                name.id.clone().into(),
                generation.0.into(),
                serde_json::to_string(chunk).expect("keys serialize").into(),
            ];
            txn.execute_raw(sea_orm::Statement::from_sql_and_values(backend, sql.clone(), values))
                .await?;
        }
        txn.commit().await?;
        self.wrote_rows("segment_members", keys.len() as u64);
        Ok(())
    }

    /// Switches a segment to a fully written generation and drops the previous one. With
    /// `complete_refresh`, also ends the segment's refresh.
    /// Switches a segment to `generation`. With `changed`, the segment's display name and rule
    /// are stored in the same transaction (checked against the revision it was read at), so a
    /// new rule and its members are seen together.
    pub async fn commit_members(
        &self,
        name: &SegmentName,
        generation: Generation,
        complete_refresh: bool,
        changed: Option<&Segment>,
    ) -> Result<Segment> {
        let txn = self.writer().begin().await?;
        let count = count_generation(&txn, name, generation).await?;
        let now = now_micros();
        let mut update = Table::update_many()
            .col_expr(Column::Generation, Expr::val(generation.0))
            .col_expr(Column::MemberCount, Expr::val(count))
            .col_expr(Column::UpdateTime, Expr::val(now))
            .filter(Column::Env.eq(&name.env))
            .filter(Column::Id.eq(&name.id));
        if complete_refresh {
            update = update
                .col_expr(Column::Refreshing, Expr::val(false))
                .col_expr(Column::LastRefreshTime, Expr::val(now));
        }
        if let Some(segment) = changed {
            update = update
                .col_expr(Column::DisplayName, Expr::val(segment.display_name.clone()))
                .col_expr(Column::Rule, Expr::val(stored_rule(&segment.definition)))
                .col_expr(Column::Revision, Expr::val(segment.revision + 1))
                .filter(Column::Revision.eq(segment.revision));
        }
        let result = update.exec(&txn).await?;
        if result.rows_affected == 0 {
            drop(txn);
            self.drop_generation(name, generation).await?;
            return Err(match (changed, self.get_segment(name).await?) {
                (Some(_), Some(_)) => concurrent_change(name),
                _ => Error::not_found("segment", name.to_string()),
            });
        }
        segment_member::Entity::delete_many()
            .filter(segment_member::Column::Env.eq(&name.env))
            .filter(segment_member::Column::Segment.eq(&name.id))
            .filter(segment_member::Column::Generation.ne(generation.0))
            .exec(&txn)
            .await?;
        txn.commit().await?;
        self.segment_or_not_found(name).await
    }

    pub async fn drop_generation(&self, name: &SegmentName, generation: Generation) -> Result<()> {
        segment_member::Entity::delete_many()
            .filter(segment_member::Column::Env.eq(&name.env))
            .filter(segment_member::Column::Segment.eq(&name.id))
            .filter(segment_member::Column::Generation.eq(generation.0))
            .exec(&self.writer())
            .await?;
        Ok(())
    }

    /// Member keys of the current generation (for tests and small segments).
    pub async fn member_keys(&self, segment: &Segment, after_key: Option<&str>, limit: u64) -> Result<Vec<String>> {
        let mut query = segment_member::Entity::find()
            .select_only()
            .column(segment_member::Column::Key)
            .filter(segment_member::Column::Env.eq(&segment.name.env))
            .filter(segment_member::Column::Segment.eq(&segment.name.id))
            .filter(segment_member::Column::Generation.eq(segment.generation));
        if let Some(after) = after_key {
            query = query.filter(segment_member::Column::Key.gt(after));
        }
        Ok(query
            .order_by_asc(segment_member::Column::Key)
            .limit(limit)
            .into_tuple()
            .all(self.reader())
            .await?)
    }

    /// Marks a segment's refresh started (idempotent) or completed.
    pub async fn set_segment_refreshing(&self, name: &SegmentName, refreshing: bool) -> Result<Segment> {
        let now = now_micros();
        let mut update = Table::update_many()
            .col_expr(Column::Refreshing, Expr::val(refreshing))
            .col_expr(Column::UpdateTime, Expr::val(now))
            .filter(Column::Env.eq(&name.env))
            .filter(Column::Id.eq(&name.id));
        if !refreshing {
            update = update
                .col_expr(Column::LastRefreshTime, Expr::val(now))
                .filter(Column::Refreshing.eq(true));
        }
        let txn = self.writer().begin().await?;
        let result = update.exec(&txn).await?;
        let changed = result.rows_affected > 0;
        if changed {
            txn.commit().await?;
        } else {
            drop(txn);
        }
        let segment = self.segment_or_not_found(name).await?;
        if !changed && !refreshing {
            return Err(super::entities::not_refreshing(&name.to_string()));
        }
        Ok(segment)
    }

    /// Segments of an environment that are being refreshed, by id.
    pub async fn refreshing_segments(&self, env: &str) -> Result<Vec<String>> {
        Ok(Table::find()
            .filter(Column::Env.eq(env))
            .filter(Column::Refreshing.eq(true))
            .all(self.reader())
            .await?
            .into_iter()
            .map(|m| m.id)
            .collect())
    }
}

pub(crate) async fn get_segment_on(db: &impl ConnectionTrait, name: &SegmentName) -> Result<Option<Segment>> {
    Table::find_by_id((name.env.clone(), name.id.clone()))
        .one(db)
        .await?
        .map(to_domain)
        .transpose()
}
