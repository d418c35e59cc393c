//! Entities (schemas) and their refresh state.

use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect,
};

use super::Store;
use super::models::entity::{ActiveModel, Column, Entity as Table, Model};
use crate::domain::catalog::{Entity, EntityField, EntityKind};
use crate::domain::names::EntityName;
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
        Table::insert(model).exec(&self.writer()).await.map_err(|e| {
            if super::is_unique_violation(&e) {
                Error::already_exists("entity", entity.name.to_string())
            } else {
                e.into()
            }
        })?;
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
        let query = Table::find().filter(Column::Env.eq(env));
        let total = query.clone().count(self.reader()).await?;
        let models = query
            .order_by_asc(Column::Id)
            .offset(offset)
            .limit(limit)
            .all(self.reader())
            .await?;
        Ok((models.into_iter().map(to_domain).collect::<Result<_>>()?, total))
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
        let result = update.exec(&self.writer()).await?;
        let entity = get_entity_on(self.primary(), name)
            .await?
            .ok_or_else(|| Error::not_found("entity", name.to_string()))?;
        if result.rows_affected == 0 && !refreshing {
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
