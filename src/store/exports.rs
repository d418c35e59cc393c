//! Exports and what they read (`export_sources`).
//!
//! An export row carries its whole definition (field mappings, settings, schedule, and the ids
//! of its entities and segments, as JSON) beside the columns that lists filter and sort on, so
//! that reading an export is one row. Its entities and segments are also rows of
//! `export_sources`, written in the same transaction: the index behind "which exports read
//! this?" (DeleteEntity, DeleteSegment). Connections are read in one batched query per page.

use std::collections::{BTreeMap, HashMap, HashSet};

use sea_orm::sea_query::{Expr, ExprTrait, Func};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, EntityTrait, JoinType, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect, QueryTrait, RelationTrait,
};

use super::Store;
use super::list::{SortColumn, apply_order, compare, contains_ci, to_condition};
use super::models::export::{ActiveModel, Column, Entity as Table, Model, Relation};
use super::models::{connection, entity, export_source, segment};
use super::placement::{self, Change, Placement};
use super::request_ids::{self, Outcome, RequestKey};
use crate::domain::connection::Connection;
use crate::domain::connection_type::{ExportKind, SyncMode};
use crate::domain::export::{CatalogFacts, Export, ExportState, FieldMapping, ScheduleTimes};
use crate::domain::list_query::{CompareOp, Filter, OrderKey, Value};
use crate::domain::names::{ConnectionName, EntityName, ExportName, SegmentName};
use crate::domain::paging::Page;
use crate::domain::run::{LastRun, RunState};
use crate::domain::schedule::Schedule;
use crate::domain::time::{Micros, now_micros};
use crate::error::{Error, Result};

const ENTITY: &str = "entity";
const SEGMENT: &str = "segment";

/// An export with its connection as it is now (None when detached).
#[derive(Debug, Clone)]
pub struct StoredExport {
    pub export: Export,
    pub connection: Option<Connection>,
}

impl StoredExport {
    /// Whether contributors may edit it: only attached exports whose connection is shared with
    /// them; the flag is read from the connection as it is now.
    pub fn editable_by_contributors(&self) -> bool {
        let shared = self.connection.as_ref().is_some_and(|c| c.contributors_can_use);
        self.export.editable_by_contributors(shared)
    }
}

/// What a list of exports asks for.
pub struct ExportQuery<'a> {
    pub env: &'a str,
    pub filter: Option<&'a Filter>,
    pub order: &'a [OrderKey],
    pub page: Page,
}

fn to_domain(model: Model) -> Result<Export> {
    let corrupt = |what: &str| Error::internal(format!("export '{}' has a corrupt {what}", model.id));
    let entities = serde_json::from_str::<Vec<String>>(&model.entities)
        .map_err(|_| corrupt("entity list"))?
        .into_iter()
        .map(|id| EntityName::new(&model.env, id))
        .collect();
    let segments = serde_json::from_str::<Vec<String>>(&model.segments)
        .map_err(|_| corrupt("segment list"))?
        .into_iter()
        .map(|id| SegmentName::new(&model.env, id))
        .collect();
    let last_run = match (&model.last_run_id, model.last_run_state) {
        (Some(id), Some(state)) => Some(LastRun {
            id: id.clone(),
            state: RunState::from_number(state).ok_or_else(|| corrupt("last run state"))?,
            end_time: model.last_run_end,
            error: model
                .last_run_error
                .as_deref()
                .and_then(|e| serde_json::from_str(e).ok()),
        }),
        _ => None,
    };
    Ok(Export {
        name: ExportName::new(&model.env, &model.id),
        connection: model.connection_id.as_ref().map(|c| ConnectionName::new(&model.env, c)),
        kind: ExportKind::parse(&model.kind).ok_or_else(|| corrupt("kind"))?,
        entities,
        segments,
        field_mappings: serde_json::from_str::<Vec<FieldMapping>>(&model.field_mappings)
            .map_err(|_| corrupt("field mapping"))?,
        settings: serde_json::from_str::<BTreeMap<String, String>>(&model.settings).map_err(|_| corrupt("settings"))?,
        sync_mode: SyncMode::parse(&model.sync_mode).ok_or_else(|| corrupt("sync mode"))?,
        schedule: serde_json::from_str::<Schedule>(&model.schedule).map_err(|_| corrupt("schedule"))?,
        next_run_at: model.next_run_at,
        state: ExportState::parse(&model.state).ok_or_else(|| corrupt("state"))?,
        last_refreshed_time: model.last_refreshed_time,
        last_run,
        display_name: model.display_name,
        description: model.description,
        creator: model.creator,
        create_time: model.create_time,
        update_time: model.update_time,
        revision: model.revision,
    })
}

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("maps, lists and schedules serialize")
}

/// The columns a client's edits change (not the run outcome, which the run engine writes).
fn definition(export: &Export) -> ActiveModel {
    ActiveModel {
        display_name: Set(export.display_name.clone()),
        description: Set(export.description.clone()),
        connection_id: Set(export.connection.as_ref().map(|c| c.id.clone())),
        kind: Set(export.kind.as_str().to_string()),
        entities: Set(json(&export.entities.iter().map(|e| &e.id).collect::<Vec<_>>())),
        segments: Set(json(&export.segments.iter().map(|s| &s.id).collect::<Vec<_>>())),
        field_mappings: Set(json(&export.field_mappings)),
        settings: Set(json(&export.settings)),
        sync_mode: Set(export.sync_mode.as_str().to_string()),
        schedule: Set(json(&export.schedule)),
        schedule_sort: Set(ScheduleTimes::sort_key_of(export)),
        next_run_at: Set(export.next_run_at),
        state: Set(export.state.as_str().to_string()),
        ..Default::default()
    }
}

fn source_rows(export: &Export) -> Vec<export_source::ActiveModel> {
    let row = |kind: &str, id: &str| export_source::ActiveModel {
        env: Set(export.name.env.clone()),
        export: Set(export.name.id.clone()),
        source_kind: Set(kind.to_string()),
        source_id: Set(id.to_string()),
    };
    let entities = export.entities.iter().map(|e| row(ENTITY, &e.id));
    let segments = export.segments.iter().map(|s| row(SEGMENT, &s.id));
    entities.chain(segments).collect()
}

/// A write named a connection that no longer exists (deleted after the request read it).
fn map_write_error(err: sea_orm::DbErr, export: &Export) -> Error {
    if super::is_unique_violation(&err) {
        return Error::already_exists("export", export.name.to_string());
    }
    if matches!(err.sql_err(), Some(sea_orm::SqlErr::ForeignKeyConstraintViolation(_))) {
        let connection = export.connection.as_ref().map(|c| c.to_string()).unwrap_or_default();
        return Error::invalid("export.connection", format!("connection '{connection}' does not exist"));
    }
    err.into()
}

impl Store {
    /// Inserts an export and its sources, recording the request id in the same transaction.
    /// A repeated request id returns the export it created first. An export that would write
    /// where another one does is refused (see `placement`).
    pub async fn create_export(
        &self,
        export: &Export,
        request: Option<RequestKey<'_>>,
        placement: &Placement<'_>,
    ) -> Result<StoredExport> {
        let env = export.name.env.clone();
        let name = export.name.to_string();
        let outcome = request_ids::create_once(self, &env, request.as_ref(), async |txn| {
            hold_sources(txn, export).await?;
            placement::lock(txn).await?;
            placement::check_exports(
                txn,
                Change::Export(export),
                placement.roots.exports_root,
                placement.field,
            )
            .await?;
            let mut model = definition(export);
            model.env = Set(env.clone());
            model.id = Set(export.name.id.clone());
            model.last_refreshed_time = Set(None);
            model.last_run_id = Set(None);
            model.last_run_state = Set(None);
            model.last_run_end = Set(None);
            model.last_run_error = Set(None);
            model.creator = Set(export.creator.clone());
            model.create_time = Set(export.create_time);
            model.update_time = Set(export.update_time);
            model.revision = Set(1);
            Table::insert(model)
                .exec(txn)
                .await
                .map_err(|e| map_write_error(e, export))?;
            let rows = source_rows(export);
            if !rows.is_empty() {
                // The export's last insert: on SQLite its audit event goes in the same round
                // trip (the event names the export, so the name is set first).
                crate::audit::scope::created(&name);
                let insert = export_source::Entity::insert_many(rows).build(txn.get_database_backend());
                txn.exec_last(insert).await?;
            }
            Ok(((), name.clone()))
        })
        .await?;
        let name = match outcome {
            Outcome::Existing(existing) => ExportName::parse("request_id", &existing)?,
            Outcome::Created(()) => export.name.clone(),
        };
        self.export_or_not_found(&name).await
    }

    pub async fn get_export(&self, name: &ExportName) -> Result<Option<StoredExport>> {
        self.cache
            .get_or_fetch(format!("export {name}"), || self.read_export(name))
            .await
    }

    async fn read_export(&self, name: &ExportName) -> Result<Option<StoredExport>> {
        // One export: its connection comes in the same query.
        let row = Table::find_by_id((name.env.clone(), name.id.clone()))
            .find_also_related(connection::Entity)
            .one(self.reader())
            .await?;
        let Some((model, connection)) = row else {
            return Ok(None);
        };
        Ok(Some(StoredExport {
            export: to_domain(model)?,
            connection: connection.map(super::connections::to_domain).transpose()?,
        }))
    }

    pub async fn export_or_not_found(&self, name: &ExportName) -> Result<StoredExport> {
        self.get_export(name)
            .await?
            .ok_or_else(|| Error::not_found("export", name.to_string()))
    }

    /// Exports of one environment by id, in no particular order; missing ones are left out.
    pub async fn exports_by_ids(&self, env: &str, ids: &[String]) -> Result<Vec<StoredExport>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows = Table::find()
            .filter(Column::Env.eq(env))
            .filter(Column::Id.is_in(ids.iter().cloned()))
            .all(self.reader())
            .await?;
        with_connections(self.reader(), env, rows).await
    }

    /// One page of exports matching the filter, in the requested order, and the number of all
    /// matches.
    ///
    /// The page is read in two steps: the ids of the page in order, then their rows by primary
    /// key. A sort that no index serves (e.g. by connection display name) then moves narrow
    /// records, not whole exports; and a query planner cannot pick the sort's index to fetch
    /// the page's rows (a scan of every export) over 100 key lookups. Connections are joined
    /// only when the filter or the order reads them.
    pub async fn list_exports(&self, query: &ExportQuery<'_>) -> Result<(Vec<StoredExport>, u64)> {
        let key = format!(
            "exports {} {:?} {:?} {:?}",
            query.env, query.filter, query.order, query.page
        );
        self.cache.get_or_fetch(key, || self.read_exports(query)).await
    }

    async fn read_exports(&self, query: &ExportQuery<'_>) -> Result<(Vec<StoredExport>, u64)> {
        let mut condition = Condition::all().add(export_col(Column::Env).eq(query.env));
        if let Some(filter) = query.filter {
            condition = condition.add(to_condition(filter, &filter_leaf));
        }
        let filter_joins = query.filter.is_some_and(reads_connection);
        let order_joins = query
            .order
            .iter()
            .any(|k| matches!(k.field.as_str(), "connection" | "connection_type"));
        let ids_of = |join: bool| {
            let select = Table::find().select_only().column(Column::Id).filter(condition.clone());
            if join {
                select.join(JoinType::LeftJoin, Relation::Connection.def())
            } else {
                select
            }
        };
        let total = ids_of(filter_joins).count(self.reader()).await?;
        let ids: Vec<String> = apply_order(
            ids_of(filter_joins || order_joins),
            query.order,
            &sort_column,
            vec![export_col(Column::Id)],
        )
        .offset(query.page.offset)
        .limit(query.page.limit)
        .into_tuple()
        .all(self.reader())
        .await?;
        let mut rows: HashMap<String, StoredExport> = self
            .exports_by_ids(query.env, &ids)
            .await?
            .into_iter()
            .map(|s| (s.export.name.id.clone(), s))
            .collect();
        // An export deleted between the two reads is left out of the page.
        let page = ids.iter().filter_map(|id| rows.remove(id)).collect();
        Ok((page, total))
    }

    /// Every export of an environment in display-name order, with its connection (for
    /// RunAllExports).
    pub async fn all_exports(&self, env: &str) -> Result<Vec<StoredExport>> {
        let order = [OrderKey {
            field: "display_name".into(),
            desc: false,
        }];
        let query = ExportQuery {
            env,
            filter: None,
            order: &order,
            page: Page {
                offset: 0,
                limit: u64::MAX >> 1,
            },
        };
        Ok(self.list_exports(&query).await?.0)
    }

    /// Writes a changed export if its revision is still `export.revision` (else ABORTED, as an
    /// etag mismatch). `sources_changed` rewrites its entities and segments. `placement` is
    /// given when the edit may change where the export writes (its connection or settings):
    /// it is then refused if that is where another export writes.
    pub async fn update_export(
        &self,
        export: &Export,
        sources_changed: bool,
        placement: Option<&Placement<'_>>,
    ) -> Result<StoredExport> {
        let txn = self.writer().begin().await?;
        if let Some(placement) = placement {
            placement::lock(&txn).await?;
            placement::check_exports(
                &txn,
                Change::Export(export),
                placement.roots.exports_root,
                placement.field,
            )
            .await?;
        }
        let mut model = definition(export);
        model.update_time = Set(now_micros());
        model.revision = Set(export.revision + 1);
        let update = Table::update_many()
            .set(model)
            .filter(Column::Env.eq(&export.name.env))
            .filter(Column::Id.eq(&export.name.id))
            .filter(Column::Revision.eq(export.revision));
        let changed = if sources_changed {
            update.exec(&txn).await.map(|r| r.rows_affected)
        } else {
            txn.exec_last(update.build(self.backend())).await
        }
        .map_err(|e| map_write_error(e, export))?;
        if changed == 0 {
            drop(txn);
            return Err(self.concurrent_change(export).await);
        }
        if sources_changed {
            hold_sources(&txn, export).await?;
            export_source::Entity::delete_many()
                .filter(export_source::Column::Env.eq(&export.name.env))
                .filter(export_source::Column::Export.eq(&export.name.id))
                .exec(&txn)
                .await?;
            let rows = source_rows(export);
            if !rows.is_empty() {
                export_source::Entity::insert_many(rows)
                    .exec_without_returning(&txn)
                    .await?;
            }
        }
        txn.commit().await?;
        self.export_or_not_found(&export.name).await
    }

    /// The error for a write whose revision check failed: NOT_FOUND if the export is gone,
    /// else ABORTED with the current etag.
    async fn concurrent_change(&self, export: &Export) -> Error {
        match self.get_export(&export.name).await {
            Ok(Some(current)) => Error::etag_mismatch(
                export.name.to_string(),
                &crate::domain::etag::etag(export.create_time, export.revision),
                &crate::domain::etag::etag(current.export.create_time, current.export.revision),
            ),
            Ok(None) => Error::not_found("export", export.name.to_string()),
            Err(e) => e,
        }
    }

    /// Writes the new schedules of several exports in one transaction: all of them, or none
    /// when any changed since it was read.
    pub async fn update_export_schedules(&self, exports: &[Export]) -> Result<Vec<StoredExport>> {
        let txn = self.writer().begin().await?;
        let now = now_micros();
        for export in exports {
            let result = Table::update_many()
                .col_expr(Column::Schedule, Expr::val(json(&export.schedule)))
                .col_expr(Column::NextRunAt, Expr::val(export.next_run_at))
                .col_expr(Column::ScheduleSort, Expr::val(ScheduleTimes::sort_key_of(export)))
                .col_expr(Column::UpdateTime, Expr::val(now))
                .col_expr(Column::Revision, Expr::val(export.revision + 1))
                .filter(Column::Env.eq(&export.name.env))
                .filter(Column::Id.eq(&export.name.id))
                .filter(Column::Revision.eq(export.revision))
                .exec(&txn)
                .await?;
            if result.rows_affected == 0 {
                drop(txn);
                return Err(self.concurrent_change(export).await);
            }
        }
        txn.commit().await?;
        let ids: Vec<String> = exports.iter().map(|e| e.name.id.clone()).collect();
        let env = exports.first().map(|e| e.name.env.clone()).unwrap_or_default();
        let mut by_id: HashMap<String, StoredExport> = self
            .exports_by_ids(&env, &ids)
            .await?
            .into_iter()
            .map(|s| (s.export.name.id.clone(), s))
            .collect();
        exports
            .iter()
            .map(|e| {
                by_id
                    .remove(&e.name.id)
                    .ok_or_else(|| Error::not_found("export", e.name.to_string()))
            })
            .collect()
    }

    /// Deletes an export (and its sources) if its revision is still `revision`.
    pub async fn delete_export(&self, export: &Export) -> Result<()> {
        let txn = self.writer().begin().await?;
        // The run history goes with the export; a running run must be cancelled first.
        super::runs::delete_runs_of(&txn, &export.name).await?;
        super::rejects::delete_rejects_of(&txn, &export.name).await?;
        export_source::Entity::delete_many()
            .filter(export_source::Column::Env.eq(&export.name.env))
            .filter(export_source::Column::Export.eq(&export.name.id))
            .exec(&txn)
            .await?;
        let result = Table::delete_many()
            .filter(Column::Env.eq(&export.name.env))
            .filter(Column::Id.eq(&export.name.id))
            .filter(Column::Revision.eq(export.revision))
            .exec(&txn)
            .await?;
        if result.rows_affected == 0 {
            drop(txn);
            return Err(self.concurrent_change(export).await);
        }
        txn.commit().await?;
        Ok(())
    }

    /// Records the latest run of an export (the run engine calls this as runs end). A
    /// successful run also moves `last_refreshed_time`. The revision is left alone: a run is not
    /// an edit, and must not make a client's pending update fail on its etag.
    pub async fn record_last_run(
        &self,
        name: &ExportName,
        run_id: &str,
        state: RunState,
        end_time: Option<Micros>,
    ) -> Result<()> {
        let mut update = Table::update_many()
            .col_expr(Column::LastRunId, Expr::val(run_id))
            .col_expr(Column::LastRunState, Expr::val(state.number()))
            .col_expr(Column::LastRunEnd, Expr::val(end_time))
            .filter(Column::Env.eq(&name.env))
            .filter(Column::Id.eq(&name.id));
        if state == RunState::Succeeded {
            update = update.col_expr(Column::LastRefreshedTime, Expr::val(end_time));
        }
        let result = update.exec(&self.writer()).await?;
        if result.rows_affected == 0 {
            return Err(Error::not_found("export", name.to_string()));
        }
        Ok(())
    }

    /// Every entity the export names or its segments are built on, and its segments: what
    /// validating it needs, in two queries.
    pub async fn catalog_facts(&self, export: &Export) -> Result<CatalogFacts> {
        let env = &export.name.env;
        let segment_ids: Vec<String> = export.segments.iter().map(|s| s.id.clone()).collect();
        let segments: HashMap<SegmentName, crate::domain::catalog::Segment> = self
            .segments_by_ids(env, &segment_ids)
            .await?
            .into_iter()
            .map(|s| (s.name.clone(), s))
            .collect();
        let mut entity_ids: Vec<String> = export.entities.iter().map(|e| e.id.clone()).collect();
        entity_ids.extend(segments.values().map(|s| s.entity.id.clone()));
        entity_ids.sort();
        entity_ids.dedup();
        let entities = self
            .entities_by_ids(env, &entity_ids)
            .await?
            .into_iter()
            .map(|e| (e.name.clone(), e))
            .collect();
        Ok(CatalogFacts { entities, segments })
    }

    /// Entities of one environment by id (missing ones are left out).
    pub async fn entities_by_ids(&self, env: &str, ids: &[String]) -> Result<Vec<crate::domain::catalog::Entity>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let models = entity::Entity::find()
            .filter(entity::Column::Env.eq(env))
            .filter(entity::Column::Id.is_in(ids.iter().cloned()))
            .all(self.reader())
            .await?;
        models.into_iter().map(super::entities::to_domain).collect()
    }

    /// Segments of one environment by id (missing ones are left out).
    pub async fn segments_by_ids(&self, env: &str, ids: &[String]) -> Result<Vec<crate::domain::catalog::Segment>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        self.cache
            .get_or_fetch(format!("segments {env} {ids:?}"), || self.read_segments(env, ids))
            .await
    }

    async fn read_segments(&self, env: &str, ids: &[String]) -> Result<Vec<crate::domain::catalog::Segment>> {
        let models = segment::Entity::find()
            .filter(segment::Column::Env.eq(env))
            .filter(segment::Column::Id.is_in(ids.iter().cloned()))
            .all(self.reader())
            .await?;
        models.into_iter().map(super::segments::to_domain).collect()
    }
}

/// Makes domain exports of `rows`, in row order, with their connections (one query for all).
async fn with_connections(db: &impl ConnectionTrait, env: &str, rows: Vec<Model>) -> Result<Vec<StoredExport>> {
    let mut ids: Vec<&String> = rows.iter().filter_map(|m| m.connection_id.as_ref()).collect();
    ids.sort();
    ids.dedup();
    let connections: HashMap<String, Connection> = if ids.is_empty() {
        HashMap::new()
    } else {
        connection::Entity::find()
            .filter(connection::Column::Env.eq(env))
            .filter(connection::Column::Id.is_in(ids.into_iter().cloned()))
            .all(db)
            .await?
            .into_iter()
            .map(|m| super::connections::to_domain(m).map(|c| (c.name.id.clone(), c)))
            .collect::<Result<_>>()?
    };
    rows.into_iter()
        .map(|model| {
            let connection = model.connection_id.as_ref().and_then(|id| connections.get(id)).cloned();
            Ok(StoredExport {
                export: to_domain(model)?,
                connection,
            })
        })
        .collect()
}

/// Checks, inside the transaction that writes an export, that its sources still exist. On
/// PostgreSQL it also share-locks them until commit: DeleteEntity / DeleteSegment lock the row
/// before looking for users (see `store::exports_using`), so either the delete sees this export
/// or it commits first and this check fails. (SQLite has one writer: nothing can interleave.)
async fn hold_sources(txn: &impl ConnectionTrait, export: &Export) -> Result<()> {
    let env = &export.name.env;
    if !export.entities.is_empty() {
        let found: HashSet<String> = entity::Entity::find()
            .select_only()
            .column(entity::Column::Id)
            .filter(entity::Column::Env.eq(env))
            .filter(entity::Column::Id.is_in(export.entities.iter().map(|e| e.id.clone())))
            .lock_shared()
            .into_tuple::<String>()
            .all(txn)
            .await?
            .into_iter()
            .collect();
        if let Some((i, missing)) = export.entities.iter().enumerate().find(|(_, e)| !found.contains(&e.id)) {
            return Err(Error::invalid(
                format!("export.entities[{i}]"),
                format!("entity '{missing}' does not exist"),
            ));
        }
    }
    if !export.segments.is_empty() {
        let found: HashSet<String> = segment::Entity::find()
            .select_only()
            .column(segment::Column::Id)
            .filter(segment::Column::Env.eq(env))
            .filter(segment::Column::Id.is_in(export.segments.iter().map(|s| s.id.clone())))
            .lock_shared()
            .into_tuple::<String>()
            .all(txn)
            .await?
            .into_iter()
            .collect();
        if let Some((i, missing)) = export.segments.iter().enumerate().find(|(_, s)| !found.contains(&s.id)) {
            return Err(Error::invalid(
                format!("export.segments[{i}]"),
                format!("segment '{missing}' does not exist"),
            ));
        }
    }
    Ok(())
}

/// Names of the exports that read an entity or a segment, in id order. On PostgreSQL the
/// source row is locked first (see [`hold_sources`]), so that the caller's delete cannot miss
/// an export created concurrently.
pub(crate) async fn exports_using(
    db: &impl ConnectionTrait,
    env: &str,
    source: super::ExportSource<'_>,
) -> Result<Vec<String>> {
    let (kind, id) = match source {
        super::ExportSource::Entity(id) => {
            entity::Entity::find_by_id((env.to_string(), id.to_string()))
                .lock_exclusive()
                .one(db)
                .await?;
            (ENTITY, id)
        }
        super::ExportSource::Segment(id) => {
            segment::Entity::find_by_id((env.to_string(), id.to_string()))
                .lock_exclusive()
                .one(db)
                .await?;
            (SEGMENT, id)
        }
    };
    let ids: Vec<String> = export_source::Entity::find()
        .select_only()
        .column(export_source::Column::Export)
        .filter(export_source::Column::Env.eq(env))
        .filter(export_source::Column::SourceKind.eq(kind))
        .filter(export_source::Column::SourceId.eq(id))
        .order_by_asc(export_source::Column::Export)
        .into_tuple()
        .all(db)
        .await?;
    Ok(ids
        .into_iter()
        .map(|export| ExportName::new(env, export).to_string())
        .collect())
}

/// The field mappings of the exports that read any of `segments` (ids), in export id order.
pub(crate) async fn segment_export_mappings(
    db: &impl ConnectionTrait,
    env: &str,
    segments: &[String],
) -> Result<Vec<(ExportName, Vec<FieldMapping>)>> {
    if segments.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<String> = export_source::Entity::find()
        .select_only()
        .column(export_source::Column::Export)
        .distinct()
        .filter(export_source::Column::Env.eq(env))
        .filter(export_source::Column::SourceKind.eq(SEGMENT))
        .filter(export_source::Column::SourceId.is_in(segments.iter().cloned()))
        .into_tuple()
        .all(db)
        .await?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    Table::find()
        .filter(Column::Env.eq(env))
        .filter(Column::Id.is_in(ids))
        .order_by_asc(Column::Id)
        .all(db)
        .await?
        .into_iter()
        .map(|model| {
            let mappings = serde_json::from_str::<Vec<FieldMapping>>(&model.field_mappings)
                .map_err(|_| Error::internal(format!("export '{}' is corrupt", model.id)))?;
            Ok((ExportName::new(env, &model.id), mappings))
        })
        .collect()
}

/// Ids of the exports attached to a connection, in id order.
pub(crate) async fn connection_exports(db: &impl ConnectionTrait, connection: &ConnectionName) -> Result<Vec<String>> {
    Ok(Table::find()
        .select_only()
        .column(Column::Id)
        .filter(Column::Env.eq(&connection.env))
        .filter(Column::ConnectionId.eq(&connection.id))
        .order_by_asc(Column::Id)
        .into_tuple()
        .all(db)
        .await?)
}

/// Detaches every export of a connection: no connection, DETACHED, no next run (it cannot run),
/// a new revision. The schedule itself is kept for when an admin attaches a connection again.
pub(crate) async fn detach_all(db: &impl ConnectionTrait, connection: &ConnectionName) -> Result<()> {
    Table::update_many()
        .col_expr(Column::ConnectionId, Expr::val(Option::<String>::None))
        .col_expr(Column::State, Expr::val(ExportState::Detached.as_str()))
        .col_expr(Column::NextRunAt, Expr::val(Option::<i64>::None))
        .col_expr(Column::ScheduleSort, Expr::val(Option::<i64>::None))
        .col_expr(Column::UpdateTime, Expr::val(now_micros()))
        .col_expr(Column::Revision, Expr::col(Column::Revision).add(1))
        .filter(Column::Env.eq(&connection.env))
        .filter(Column::ConnectionId.eq(&connection.id))
        .exec(db)
        .await?;
    Ok(())
}

/// Whether a filter compares a column of the connection (so the query must join it).
fn reads_connection(filter: &Filter) -> bool {
    match filter {
        Filter::And(a, b) | Filter::Or(a, b) => reads_connection(a) || reads_connection(b),
        Filter::Not(inner) => reads_connection(inner),
        Filter::Compare { field, .. } => field == "connection_type",
    }
}

fn connection_col(column: connection::Column) -> Expr {
    Expr::col((connection::Entity, column))
}

fn export_col(column: Column) -> Expr {
    Expr::col((Table, column))
}

/// Nullable columns compare through COALESCE, so that `!=` and `NOT` also match the rows
/// without a value (a detached export is not of type "s3"; a never-run export is not FAILED).
fn filter_leaf(field: &str, op: CompareOp, value: &Value) -> Expr {
    match (field, value) {
        ("display_name", Value::String(text)) if op == CompareOp::Has => {
            contains_ci(export_col(Column::DisplayName), text)
        }
        ("display_name", Value::String(text)) => compare(export_col(Column::DisplayName), op, text.clone()),
        ("connection_type", Value::String(text) | Value::Word(text)) => compare(
            Func::coalesce([connection_col(connection::Column::TypeId), Expr::val("")]).into(),
            op,
            text.clone(),
        ),
        // A connection name (checked by the API): its last segment is the connection id.
        ("connection", Value::String(text) | Value::Word(text)) => compare(
            Func::coalesce([export_col(Column::ConnectionId), Expr::val("")]).into(),
            op,
            text.rsplit('/').next().unwrap_or_default().to_string(),
        ),
        ("state", Value::String(text) | Value::Word(text)) => compare(export_col(Column::State), op, text.clone()),
        ("kind", Value::String(text) | Value::Word(text)) => compare(export_col(Column::Kind), op, text.clone()),
        ("status", Value::String(text) | Value::Word(text)) => match RunState::parse(text) {
            Some(state) => compare(
                Func::coalesce([export_col(Column::LastRunState), Expr::val(0)]).into(),
                op,
                state.number(),
            ),
            None => Expr::val(false).eq(true),
        },
        // The parser admits only the fields and kinds above.
        _ => Expr::val(false).eq(true),
    }
}

/// Every order key; the empty values of the nullable ones (never run, off, detached, never
/// refreshed) come last in both directions.
fn sort_column(field: &str) -> SortColumn {
    let (expr, nulls_last) = match field {
        "connection" => (
            Func::lower(connection_col(connection::Column::DisplayName)).into(),
            true,
        ),
        "connection_type" => (connection_col(connection::Column::TypeId), true),
        "status" => (export_col(Column::LastRunState), true),
        "schedule" => (export_col(Column::ScheduleSort), true),
        "last_refreshed_time" => (export_col(Column::LastRefreshedTime), true),
        "create_time" => (export_col(Column::CreateTime), false),
        "update_time" => (export_col(Column::UpdateTime), false),
        _ => (Func::lower(export_col(Column::DisplayName)).into(), false),
    };
    SortColumn { expr, nulls_last }
}
