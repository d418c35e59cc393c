//! Entities (schemas) and their refresh state.

use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect,
};

use super::Store;
use super::list::page_of;
use super::models::entity::{ActiveModel, Column, Entity as Table, Model};
use crate::domain::catalog::{Entity, EntityField, EntityKind};
use crate::domain::names::EntityName;
use crate::domain::paging::Page;
use crate::domain::schema_change::SchemaChange;
use crate::domain::time::now_micros;
use crate::error::{Error, Result};

pub(crate) fn to_domain(model: Model) -> Result<Entity> {
    let corrupt = || Error::internal(format!("entity '{}' is corrupt", model.id));
    Ok(Entity {
        name: EntityName::new(&model.env, &model.id),
        kind: EntityKind::parse(&model.kind).ok_or_else(corrupt)?,
        fields: serde_json::from_str::<Vec<EntityField>>(&model.fields).map_err(|_| corrupt())?,
        display_name: model.display_name,
        primary_key: model.primary_key,
        record_count: model.record_count,
        change_seq: model.change_seq,
        refreshing: model.refreshing,
        last_refresh_time: model.last_refresh_time,
        create_time: model.create_time,
        update_time: model.update_time,
    })
}

impl Store {
    pub async fn create_entity(&self, entity: &Entity) -> Result<Entity> {
        let now = now_micros();
        let model = ActiveModel {
            env: Set(entity.name.env.clone()),
            id: Set(entity.name.id.clone()),
            display_name: Set(entity.display_name.clone()),
            kind: Set(entity.kind.as_str().to_string()),
            fields: Set(serde_json::to_string(&entity.fields).expect("fields serialize")),
            primary_key: Set(entity.primary_key.clone()),
            record_count: Set(0),
            change_seq: Set(0),
            refreshing: Set(false),
            last_refresh_time: Set(None),
            create_time: Set(now),
            update_time: Set(now),
        };
        // A transaction, for the audit event that goes with it (`audit::scope`).
        let txn = self.writer().begin().await?;
        Table::insert(model).exec(&txn).await.map_err(|e| {
            if super::is_unique_violation(&e) {
                Error::already_exists("entity", entity.name.to_string())
            } else {
                e.into()
            }
        })?;
        txn.commit().await?;
        self.entity_or_not_found(&entity.name).await
    }

    pub async fn get_entity(&self, name: &EntityName) -> Result<Option<Entity>> {
        get_entity_on(self.reader(), name).await
    }

    pub async fn entity_or_not_found(&self, name: &EntityName) -> Result<Entity> {
        self.get_entity(name)
            .await?
            .ok_or_else(|| Error::not_found("entity", name.to_string()))
    }

    pub async fn list_entities(&self, env: &str, offset: u64, limit: u64) -> Result<(Vec<Entity>, u64)> {
        page_of(
            self.reader(),
            Table::find().filter(Column::Env.eq(env)),
            |select| select.order_by_asc(Column::Id),
            Page { offset, limit },
            to_domain,
        )
        .await
    }

    /// Stores a new display name and field list of `current`, in one transaction. Refused when
    /// the entity changed since `current` was read (ABORTED), when a segment rule or an
    /// export's field mapping reads a field the change removes or retypes (FIELD_IN_USE), or
    /// when live records hold values of a retyped field (FIELD_HAS_VALUES: they would not fit
    /// the new type). A removed field's values are removed from the stored records, so that a
    /// field added later under that name starts empty. With `validate_only`, everything is
    /// checked and nothing written: the entity is returned as it would be.
    pub async fn update_entity(&self, current: &Entity, updated: &Entity, validate_only: bool) -> Result<Entity> {
        use super::models::record;
        let name = &current.name;
        let change = SchemaChange::between(current, &updated.fields);
        let fields = serde_json::to_string(&updated.fields).expect("fields serialize");
        let txn = self.writer().begin().await?;
        // The row lock (PostgreSQL) makes exports being saved over the entity wait for this.
        let stored = Table::find_by_id((name.env.clone(), name.id.clone()))
            .lock_exclusive()
            .one(&txn)
            .await?
            .ok_or_else(|| Error::not_found("entity", name.to_string()))?;
        if to_domain(stored)?.fields != current.fields {
            return Err(Error::new(
                crate::error::ErrorCode::Aborted,
                "CONCURRENT_UPDATE",
                format!("entity '{name}' changed while it was being updated; read it again and retry"),
            )
            .with_meta("name", name.to_string()));
        }
        let backend = self.backend();
        if !change.is_empty() {
            check_schema_change(&txn, backend, current, &change).await?;
        }
        if validate_only {
            txn.commit_unchanged().await?;
            return Ok(updated.clone());
        }
        for field in &change.removed {
            record::Entity::update_many()
                .col_expr(record::Column::Data, json_without(backend, field))
                .filter(record::Column::Env.eq(&name.env))
                .filter(record::Column::Entity.eq(&name.id))
                .filter(json_has_key(backend, field))
                .exec(&txn)
                .await?;
        }
        Table::update_many()
            .col_expr(Column::DisplayName, Expr::val(updated.display_name.clone()))
            .col_expr(Column::Fields, Expr::val(fields))
            .col_expr(Column::UpdateTime, Expr::val(now_micros()))
            .filter(Column::Env.eq(&name.env))
            .filter(Column::Id.eq(&name.id))
            .exec(&txn)
            .await?;
        let entity = get_entity_on(&txn, name)
            .await?
            .ok_or_else(|| Error::not_found("entity", name.to_string()))?;
        txn.commit().await?;
        Ok(entity)
    }

    /// Deletes an entity with its records, unless segments (or, through `users`, exports) use it.
    pub async fn delete_entity(&self, name: &EntityName) -> Result<()> {
        use super::models::{record, segment};
        let txn = self.writer().begin().await?;
        let users: Vec<String> = segment::Entity::find()
            .filter(segment::Column::Env.eq(&name.env))
            .filter(segment::Column::Entity.eq(&name.id))
            .all(&txn)
            .await?
            .into_iter()
            .map(|s| format!("environments/{}/segments/{}", s.env, s.id))
            .collect();
        let mut users = users;
        users.extend(super::exports_using(&txn, &name.env, super::ExportSource::Entity(&name.id)).await?);
        if !users.is_empty() {
            let remedy = "delete or change them first";
            return Err(Error::in_use(
                "ENTITY_IN_USE",
                "entity",
                &name.to_string(),
                &users,
                "uses",
                remedy,
            ));
        }
        record::Entity::delete_many()
            .filter(record::Column::Env.eq(&name.env))
            .filter(record::Column::Entity.eq(&name.id))
            .exec(&txn)
            .await?;
        let deleted = Table::delete_many()
            .filter(Column::Env.eq(&name.env))
            .filter(Column::Id.eq(&name.id))
            .exec(&txn)
            .await?;
        if deleted.rows_affected == 0 {
            return Err(Error::not_found("entity", name.to_string()));
        }
        txn.commit().await?;
        Ok(())
    }

    /// Marks an entity's refresh started (idempotent) or completed. Completing a refresh that
    /// was not started is FAILED_PRECONDITION.
    pub async fn set_entity_refreshing(&self, name: &EntityName, refreshing: bool) -> Result<Entity> {
        let mut update = Table::update_many()
            .col_expr(Column::Refreshing, Expr::val(refreshing))
            .col_expr(Column::UpdateTime, Expr::val(now_micros()))
            .filter(Column::Env.eq(&name.env))
            .filter(Column::Id.eq(&name.id));
        if !refreshing {
            update = update
                .col_expr(Column::LastRefreshTime, Expr::val(now_micros()))
                .filter(Column::Refreshing.eq(true));
        }
        // A change that did not happen is rolled back before it is committed, and so is the
        // audit event that would have gone with it.
        let txn = self.writer().begin().await?;
        let result = update.exec(&txn).await?;
        let changed = result.rows_affected > 0;
        if changed {
            txn.commit().await?;
        } else {
            drop(txn);
        }
        let entity = get_entity_on(self.primary(), name)
            .await?
            .ok_or_else(|| Error::not_found("entity", name.to_string()))?;
        if !changed && !refreshing {
            return Err(not_refreshing(&name.to_string()));
        }
        Ok(entity)
    }

    /// Ends the refresh of an entity and its segments without completing it (their last
    /// refresh time stays), as a failed system refresh leaves them: nothing waits on them any
    /// more, and they keep the members of their last completed refresh.
    pub async fn abandon_entity_refresh(&self, name: &EntityName) -> Result<()> {
        use super::models::segment;
        let txn = self.writer().begin().await?;
        let now = now_micros();
        Table::update_many()
            .col_expr(Column::Refreshing, Expr::val(false))
            .col_expr(Column::UpdateTime, Expr::val(now))
            .filter(Column::Env.eq(&name.env))
            .filter(Column::Id.eq(&name.id))
            .filter(Column::Refreshing.eq(true))
            .exec(&txn)
            .await?;
        segment::Entity::update_many()
            .col_expr(segment::Column::Refreshing, Expr::val(false))
            .col_expr(segment::Column::UpdateTime, Expr::val(now))
            .filter(segment::Column::Env.eq(&name.env))
            .filter(segment::Column::Entity.eq(&name.id))
            .filter(segment::Column::Refreshing.eq(true))
            .exec(&txn)
            .await?;
        txn.commit().await?;
        Ok(())
    }

    /// Entities of an environment that are being refreshed, by id.
    pub async fn refreshing_entities(&self, env: &str) -> Result<Vec<String>> {
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

/// Whether `change` may be made to `entity`: no segment rule or export mapping reads a field it
/// removes or retypes (FIELD_IN_USE), and no live record holds a value of a retyped field
/// (FIELD_HAS_VALUES).
async fn check_schema_change(
    db: &impl ConnectionTrait,
    backend: DbBackend,
    entity: &Entity,
    change: &SchemaChange,
) -> Result<()> {
    use super::models::{record, segment};
    let name = &entity.name;
    let segments: Vec<_> = segment::Entity::find()
        .filter(segment::Column::Env.eq(&name.env))
        .filter(segment::Column::Entity.eq(&name.id))
        .all(db)
        .await?
        .into_iter()
        .map(super::segments::to_domain)
        .collect::<Result<_>>()?;
    let ids: Vec<String> = segments.iter().map(|s| s.name.id.clone()).collect();
    let exports = super::exports::segment_export_mappings(db, &name.env, &ids).await?;
    let users = change.users(entity, &segments, &exports);
    if !users.is_empty() {
        return Err(change.in_use_error(entity, &users));
    }
    for (field, old, new) in &change.retyped {
        let holding = record::Entity::find()
            .filter(record::Column::Env.eq(&name.env))
            .filter(record::Column::Entity.eq(&name.id))
            .filter(record::Column::Deleted.eq(false))
            .filter(json_has_value(backend, field))
            .count(db)
            .await?;
        if holding > 0 {
            return Err(Error::precondition(
                "FIELD_HAS_VALUES",
                format!(
                    "cannot change '{field}' of entity '{name}' from {old} to {new}: {holding} stored records \
                     hold values of it that would not fit; remove the field (which removes its values) and \
                     add it again, or write those records without it first"
                ),
            )
            .with_meta("entity", name.to_string())
            .with_meta("field", field.clone())
            .with_precondition(
                "FIELD_HAS_VALUES",
                name.to_string(),
                format!("{holding} records hold values of '{field}'"),
            ));
        }
    }
    Ok(())
}

/// Records whose stored JSON has a non-null value of `field` (a schema field name:
/// `[A-Za-z][A-Za-z0-9_]*`, so it needs no quoting in a JSON path).
fn json_has_value(backend: DbBackend, field: &str) -> Expr {
    match backend {
        DbBackend::Postgres => Expr::cust_with_values(
            "(data::jsonb -> $1) IS NOT NULL AND (data::jsonb -> $2) <> 'null'::jsonb",
            [field, field],
        ),
        _ => Expr::cust_with_values("json_extract(data, ?) IS NOT NULL", [format!("$.{field}")]),
    }
}

/// Records whose stored JSON has the key `field`, null or not.
fn json_has_key(backend: DbBackend, field: &str) -> Expr {
    match backend {
        DbBackend::Postgres => Expr::cust_with_values("(data::jsonb -> $1) IS NOT NULL", [field]),
        _ => Expr::cust_with_values("json_type(data, ?) IS NOT NULL", [format!("$.{field}")]),
    }
}

/// The stored JSON without the key `field`.
fn json_without(backend: DbBackend, field: &str) -> Expr {
    match backend {
        DbBackend::Postgres => Expr::cust_with_values("(data::jsonb - $1)::text", [field]),
        _ => Expr::cust_with_values("json_remove(data, ?)", [format!("$.{field}")]),
    }
}

pub(crate) fn not_refreshing(name: &str) -> Error {
    Error::precondition(
        "REFRESH_NOT_STARTED",
        format!("'{name}' is not being refreshed: call StartRefresh first"),
    )
    .with_meta("name", name)
    .with_precondition("REFRESH_NOT_STARTED", name, "no refresh was started")
}

pub(crate) async fn get_entity_on(db: &impl ConnectionTrait, name: &EntityName) -> Result<Option<Entity>> {
    Table::find_by_id((name.env.clone(), name.id.clone()))
        .one(db)
        .await?
        .map(to_domain)
        .transpose()
}

/// Adds `delta` records and moves the change sequence to `seq` (inside a write transaction).
pub(crate) async fn record_write(db: &impl ConnectionTrait, name: &EntityName, delta: i64, seq: i64) -> Result<()> {
    Table::update_many()
        .col_expr(Column::RecordCount, Expr::col(Column::RecordCount).add(delta))
        .col_expr(Column::ChangeSeq, Expr::val(seq))
        .col_expr(Column::UpdateTime, Expr::val(now_micros()))
        .filter(Column::Env.eq(&name.env))
        .filter(Column::Id.eq(&name.id))
        .exec(db)
        .await?;
    Ok(())
}

/// Takes the next change sequence of an entity. The row update also locks the entity until the
/// transaction ends, so sequences commit in order: a reader that has seen sequence N will never
/// later find a commit with a smaller one.
pub(crate) async fn next_change_seq(db: &impl ConnectionTrait, name: &EntityName) -> Result<i64> {
    let result = Table::update_many()
        .col_expr(Column::ChangeSeq, Expr::col(Column::ChangeSeq).add(1))
        .filter(Column::Env.eq(&name.env))
        .filter(Column::Id.eq(&name.id))
        .exec(db)
        .await?;
    if result.rows_affected == 0 {
        return Err(Error::not_found("entity", name.to_string()));
    }
    let model = Table::find_by_id((name.env.clone(), name.id.clone()))
        .select_only()
        .column(Column::ChangeSeq)
        .into_tuple::<i64>()
        .one(db)
        .await?
        .ok_or_else(|| Error::not_found("entity", name.to_string()))?;
    Ok(model)
}
