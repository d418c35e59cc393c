//! The audit log's table: events are inserted inside the transaction of the change they record
//! (`audit::scope`), or in their own write for refused attempts and streams; listed newest
//! first with ties in write order (`seq`); purged after the retention period.

use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, EntityTrait, Order, QueryFilter, QueryOrder};

use super::Store;
use super::list::{compare, contains_ci, page_of, to_condition};
use super::models::audit_event::{ActiveModel, Column, Entity, Model};
use crate::domain::audit::AuditEvent;
use crate::domain::list_query::{CompareOp, Filter, Value};
use crate::domain::names::generate_id;
use crate::domain::paging::Page;
use crate::domain::time::{Micros, from_datetime, now_micros};
use crate::error::Result;

/// An event to write; its id and time are given when it is written.
#[derive(Debug, Clone)]
pub struct NewAuditEvent {
    pub env: String,
    pub actor: String,
    pub method: String,
    pub resource: String,
    pub request_id: String,
    pub changed_fields: Vec<String>,
    pub summary: String,
    pub code: i32,
}

/// Inserts `event` on `db` (a write transaction or the writer).
pub(crate) async fn insert(
    db: &impl ConnectionTrait,
    event: &NewAuditEvent,
) -> std::result::Result<(), sea_orm::DbErr> {
    // Without RETURNING: nothing needs the new row's `seq`, and on SQLite a statement that
    // returns rows costs the writer more round trips to its worker thread (benches/write_path.rs).
    Entity::insert(new_row(event)).exec_without_returning(db).await?;
    Ok(())
}

/// The INSERT of `event` as a statement, to send together with another (`WriteTxn::exec_last`).
pub(crate) fn insert_statement(backend: sea_orm::DbBackend, event: &NewAuditEvent) -> sea_orm::Statement {
    use sea_orm::QueryTrait;
    Entity::insert(new_row(event)).build(backend)
}

fn new_row(event: &NewAuditEvent) -> ActiveModel {
    ActiveModel {
        env: Set(event.env.clone()),
        id: Set(generate_id("ae")),
        time: Set(now_micros()),
        actor: Set(event.actor.clone()),
        method: Set(event.method.clone()),
        resource: Set(event.resource.clone()),
        request_id: Set(event.request_id.clone()),
        changed_fields: Set(serde_json::to_string(&event.changed_fields).expect("strings serialize")),
        summary: Set(event.summary.clone()),
        code: Set(i64::from(event.code)),
        ..Default::default()
    }
}

/// One ListAuditEvents query.
pub struct AuditQuery<'a> {
    pub env: &'a str,
    pub filter: Option<&'a Filter>,
    /// Oldest first instead of newest first.
    pub ascending: bool,
    pub page: Page,
}

fn to_domain(model: Model) -> Result<AuditEvent> {
    Ok(AuditEvent {
        changed_fields: serde_json::from_str(&model.changed_fields).unwrap_or_default(),
        env: model.env,
        id: model.id,
        time: model.time,
        actor: model.actor,
        method: model.method,
        resource: model.resource,
        request_id: model.request_id,
        summary: model.summary,
        code: model.code as i32,
    })
}

fn filter_leaf(field: &str, op: CompareOp, value: &Value) -> Expr {
    let column = match field {
        "actor" => Column::Actor,
        "method" => Column::Method,
        "resource" => Column::Resource,
        "time" => {
            // The parser admits only valid RFC 3339 text for `time`.
            return match value {
                Value::String(text) => match chrono::DateTime::parse_from_rfc3339(text) {
                    Ok(time) => compare(Expr::col(Column::Time), op, from_datetime(time.to_utc())),
                    Err(_) => Expr::val(false).eq(true),
                },
                _ => Expr::val(false).eq(true),
            };
        }
        _ => return Expr::val(false).eq(true),
    };
    match value {
        Value::String(text) if op == CompareOp::Has => contains_ci(Expr::col(column), text),
        Value::String(text) | Value::Word(text) => compare(Expr::col(column), op, text.clone()),
        _ => Expr::val(false).eq(true),
    }
}

impl Store {
    /// Writes an event on its own (a refused attempt, a stream's summary). The audit table is
    /// read by no cached read.
    pub async fn record_audit_event(&self, event: &NewAuditEvent) -> Result<()> {
        insert(&self.untracked_writer(), event).await?;
        Ok(())
    }

    pub async fn list_audit_events(&self, query: &AuditQuery<'_>) -> Result<(Vec<AuditEvent>, u64)> {
        let mut condition = Condition::all().add(Column::Env.eq(query.env));
        if let Some(filter) = query.filter {
            condition = condition.add(to_condition(filter, &filter_leaf));
        }
        let order = if query.ascending { Order::Asc } else { Order::Desc };
        page_of(
            self.reader(),
            Entity::find().filter(condition),
            |select| {
                select
                    .order_by(Column::Time, order.clone())
                    .order_by(Column::Seq, order)
            },
            query.page,
            to_domain,
        )
        .await
    }

    /// Deletes the events written before `cutoff`; returns how many. Events are written in
    /// `seq` order with their time, so the expired ones are the oldest: the purge deletes those
    /// before the first event still kept, found by walking the primary key from the start (as
    /// many steps as events expire; no index on time is kept up by every audited call). An
    /// event whose clock ran behind an earlier one's waits for the next purge.
    pub async fn purge_audit_events(&self, cutoff: Micros) -> Result<u64> {
        let backend = self.backend();
        let sql = super::placeholders(
            backend,
            "DELETE FROM audit_events WHERE time < ? AND seq < coalesce(\
               (SELECT seq FROM audit_events WHERE time >= ? ORDER BY seq LIMIT 1), \
               (SELECT max(seq) + 1 FROM audit_events))",
        );
        let result = self
            .untracked_writer()
            .execute_raw(sea_orm::Statement::from_sql_and_values(
                backend,
                sql,
                [cutoff.into(), cutoff.into()],
            ))
            .await?;
        Ok(result.rows_affected())
    }
}
