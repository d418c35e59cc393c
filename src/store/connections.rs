//! Connections and their sealed secrets.

use std::collections::BTreeMap;

use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, EntityTrait, QueryFilter, QuerySelect};

use super::list::{SortColumn, apply_order, compare, contains_ci, page_of, to_condition};
use super::models::connection::{ActiveModel, Column, Entity, Model};
use super::request_ids::{self, Outcome, RequestKey};
use super::secrets::Sealed;
use super::{Store, placement};
use crate::domain::connection::Connection;
use crate::domain::list_query::{CompareOp, Filter, OrderKey, Value};
use crate::domain::names::ConnectionName;
use crate::domain::output_area::LocalRoots;
use crate::domain::paging::Page;
use crate::domain::time::now_micros;
use crate::error::{Error, Result};

/// What a list of connections asks for.
pub struct ConnectionQuery<'a> {
    pub env: &'a str,
    pub filter: Option<&'a Filter>,
    pub order: &'a [OrderKey],
    /// Contributors and viewers see only connections shared with contributors.
    pub shared_only: bool,
    pub page: Page,
}

pub(crate) fn to_domain(model: Model) -> Result<Connection> {
    let corrupt = |what: &str| Error::internal(format!("connection '{}' has corrupt {what}", model.id));
    Ok(Connection {
        name: ConnectionName::new(&model.env, &model.id),
        config: serde_json::from_str(&model.config).map_err(|_| corrupt("config"))?,
        secret_keys: serde_json::from_str(&model.secret_keys).map_err(|_| corrupt("secret keys"))?,
        display_name: model.display_name,
        description: model.description,
        type_id: model.type_id,
        contributors_can_use: model.contributors_can_use,
        profile_limit: model.profile_limit,
        creator: model.creator,
        create_time: model.create_time,
        update_time: model.update_time,
        revision: model.revision,
    })
}

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("maps and lists serialize")
}

impl Store {
    fn seal_for(&self, name: &ConnectionName, secrets: &BTreeMap<String, String>) -> Result<Option<Sealed>> {
        if secrets.is_empty() {
            return Ok(None);
        }
        self.sealer.seal(&name.to_string(), secrets).map(Some)
    }

    /// Inserts a connection (secrets sealed), recording the request id in the same transaction.
    /// A repeated request id returns the connection it created first.
    /// A `local-files` root that is not allowed, or meets another environment's area, is
    /// refused (see `placement`).
    pub async fn create_connection(
        &self,
        connection: &Connection,
        secrets: &BTreeMap<String, String>,
        request: Option<RequestKey<'_>>,
        roots: &LocalRoots<'_>,
    ) -> Result<Connection> {
        let env = connection.name.env.clone();
        let sealed = self.seal_for(&connection.name, secrets)?;
        let now = now_micros();
        let model = ActiveModel {
            env: Set(env.clone()),
            id: Set(connection.name.id.clone()),
            display_name: Set(connection.display_name.clone()),
            description: Set(connection.description.clone()),
            type_id: Set(connection.type_id.clone()),
            config: Set(json(&connection.config)),
            sealed_secrets: Set(sealed.as_ref().map(|s| s.blob.clone())),
            secret_key_id: Set(sealed.as_ref().map(|s| s.key_id.clone())),
            secret_keys: Set(json(&secrets.keys().collect::<Vec<_>>())),
            contributors_can_use: Set(connection.contributors_can_use),
            profile_limit: Set(connection.profile_limit),
            creator: Set(connection.creator.clone()),
            create_time: Set(now),
            update_time: Set(now),
            revision: Set(1),
        };
        let name = connection.name.to_string();
        let outcome = request_ids::create_once(self, &env, request.as_ref(), async |txn| {
            placement::lock(txn).await?;
            placement::check_root_of(txn, connection, roots).await?;
            Entity::insert(model).exec(txn).await.map_err(|e| {
                if super::is_unique_violation(&e) {
                    Error::already_exists("connection", name.clone())
                } else {
                    e.into()
                }
            })?;
            Ok(((), name.clone()))
        })
        .await?;
        let name = match outcome {
            Outcome::Existing(existing) => ConnectionName::parse("request_id", &existing)?,
            Outcome::Created(()) => connection.name.clone(),
        };
        self.get_connection(&name)
            .await?
            .ok_or_else(|| Error::not_found("connection", name.to_string()))
    }

    pub async fn get_connection(&self, name: &ConnectionName) -> Result<Option<Connection>> {
        get_connection_on(self.reader(), name).await
    }

    /// Opens the secrets of a connection, for the connector that needs them.
    pub async fn connection_secrets(&self, name: &ConnectionName) -> Result<BTreeMap<String, String>> {
        let model = Entity::find_by_id((name.env.clone(), name.id.clone()))
            .one(self.reader())
            .await?
            .ok_or_else(|| Error::not_found("connection", name.to_string()))?;
        match (model.sealed_secrets, model.secret_key_id) {
            (Some(blob), Some(key_id)) => self.sealer.open(&name.to_string(), &Sealed { key_id, blob }),
            _ => Ok(BTreeMap::new()),
        }
    }

    pub async fn list_connections(&self, query: &ConnectionQuery<'_>) -> Result<(Vec<Connection>, u64)> {
        let mut condition = Condition::all().add(Column::Env.eq(query.env));
        if query.shared_only {
            condition = condition.add(Column::ContributorsCanUse.eq(true));
        }
        if let Some(filter) = query.filter {
            condition = condition.add(to_condition(filter, &filter_leaf));
        }
        page_of(
            self.reader(),
            Entity::find().filter(condition),
            |select| apply_order(select, query.order, &sort_column, vec![Expr::col(Column::Id)]),
            query.page,
            to_domain,
        )
        .await
    }

    /// Writes a changed connection if its revision is still `connection.revision`; `secrets`
    /// replaces the sealed secrets when given. `roots` is given when its configuration
    /// changed: a `root` that is not allowed or meets another environment's area is refused,
    /// and so is a change that makes two of the environment's exports write to one place.
    pub async fn update_connection(
        &self,
        connection: &Connection,
        secrets: Option<&BTreeMap<String, String>>,
        roots: Option<&LocalRoots<'_>>,
    ) -> Result<Connection> {
        let mut model = ActiveModel {
            display_name: Set(connection.display_name.clone()),
            description: Set(connection.description.clone()),
            config: Set(json(&connection.config)),
            contributors_can_use: Set(connection.contributors_can_use),
            profile_limit: Set(connection.profile_limit),
            update_time: Set(now_micros()),
            revision: Set(connection.revision + 1),
            ..Default::default()
        };
        if let Some(secrets) = secrets {
            let sealed = self.seal_for(&connection.name, secrets)?;
            model.sealed_secrets = Set(sealed.as_ref().map(|s| s.blob.clone()));
            model.secret_key_id = Set(sealed.as_ref().map(|s| s.key_id.clone()));
            model.secret_keys = Set(json(&secrets.keys().collect::<Vec<_>>()));
        }
        let txn = self.writer().begin().await?;
        if let Some(roots) = roots {
            placement::lock(&txn).await?;
            placement::check_root_of(&txn, connection, roots).await?;
            placement::check_exports(
                &txn,
                placement::Change::Connection(connection),
                roots.exports_root,
                placement::location_field(connection),
            )
            .await?;
        }
        let result = Entity::update_many()
            .set(model)
            .filter(Column::Env.eq(&connection.name.env))
            .filter(Column::Id.eq(&connection.name.id))
            .filter(Column::Revision.eq(connection.revision))
            .exec(&txn)
            .await?;
        // A lost race is rolled back, not committed: no change, and no audit event.
        if result.rows_affected > 0 {
            txn.commit().await?;
        } else {
            drop(txn);
        }
        let current = get_connection_on(self.primary(), &connection.name)
            .await?
            .ok_or_else(|| Error::not_found("connection", connection.name.to_string()))?;
        if result.rows_affected == 0 {
            return Err(Error::etag_mismatch(
                connection.name.to_string(),
                &crate::domain::etag::etag(connection.create_time, connection.revision),
                &crate::domain::etag::etag(current.create_time, current.revision),
            ));
        }
        Ok(current)
    }

    /// Deletes a connection if its revision is still `revision`. While exports use it, it is
    /// refused (FAILED_PRECONDITION `CONNECTION_IN_USE`, one violation per export) unless
    /// `force`, which detaches them in the same transaction; returns the detached exports.
    pub async fn delete_connection(
        &self,
        name: &ConnectionName,
        revision: i64,
        force: bool,
    ) -> Result<Vec<crate::domain::names::ExportName>> {
        use crate::domain::names::ExportName;
        let txn = self.writer().begin().await?;
        // On PostgreSQL, lock the row first: a concurrent CreateExport on this connection then
        // waits (its foreign key check) and fails once the connection is gone, or commits first
        // and is found below. SQLite has one writer.
        Entity::find_by_id((name.env.clone(), name.id.clone()))
            .lock_exclusive()
            .one(&txn)
            .await?;
        let users: Vec<ExportName> = super::exports::connection_exports(&txn, name)
            .await?
            .into_iter()
            .map(|id| ExportName::new(&name.env, id))
            .collect();
        if !users.is_empty() {
            if !force {
                let list: Vec<String> = users.iter().map(|u| u.to_string()).collect();
                let remedy = "delete or detach them first, or delete with `force` to detach them";
                return Err(Error::in_use(
                    "CONNECTION_IN_USE",
                    "connection",
                    &name.to_string(),
                    &list,
                    "exports to",
                    remedy,
                ));
            }
            super::exports::detach_all(&txn, name).await?;
        }
        let result = Entity::delete_many()
            .filter(Column::Env.eq(&name.env))
            .filter(Column::Id.eq(&name.id))
            .filter(Column::Revision.eq(revision))
            .exec(&txn)
            .await;
        let concurrent = || {
            Error::precondition(
                "CONCURRENT_CHANGE",
                format!("connection '{name}' changed while it was being deleted; retry"),
            )
        };
        match result {
            Ok(r) if r.rows_affected == 0 => return Err(concurrent()),
            Ok(_) => {}
            // An export was attached in between (PostgreSQL): the caller retries and sees it.
            Err(e) if matches!(e.sql_err(), Some(sea_orm::SqlErr::ForeignKeyConstraintViolation(_))) => {
                return Err(concurrent());
            }
            Err(e) => return Err(e.into()),
        }
        txn.commit().await?;
        Ok(users)
    }
}

pub(crate) async fn get_connection_on(db: &impl ConnectionTrait, name: &ConnectionName) -> Result<Option<Connection>> {
    Entity::find_by_id((name.env.clone(), name.id.clone()))
        .one(db)
        .await?
        .map(to_domain)
        .transpose()
}

fn filter_leaf(field: &str, op: CompareOp, value: &Value) -> Expr {
    match (field, value) {
        ("display_name", Value::String(text)) if op == CompareOp::Has => {
            contains_ci(Expr::col(Column::DisplayName), text)
        }
        ("display_name", Value::String(text)) => compare(Expr::col(Column::DisplayName), op, text.clone()),
        ("type", Value::String(text) | Value::Word(text)) => compare(Expr::col(Column::TypeId), op, text.clone()),
        ("contributors_can_use", Value::Bool(b)) => compare(Expr::col(Column::ContributorsCanUse), op, *b),
        // The parser admits only the fields and kinds above.
        _ => Expr::val(false).eq(true),
    }
}

fn sort_column(field: &str) -> SortColumn {
    let column = match field {
        "type" => Column::TypeId,
        "create_time" => Column::CreateTime,
        "update_time" => Column::UpdateTime,
        _ => {
            return SortColumn {
                expr: sea_orm::sea_query::Func::lower(Expr::col(Column::DisplayName)).into(),
                nulls_last: false,
            };
        }
    };
    SortColumn {
        expr: Expr::col(column),
        nulls_last: false,
    }
}
