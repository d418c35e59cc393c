//! Runs: the durable queue of the executor pool.
//!
//! A run is a row before anything happens. Workers claim queued runs (and runs whose worker's
//! lease expired) with a lease they renew; every state change is written the moment it happens
//! and mirrored on the export (`last_run_*`), so that lists can sort and filter by status. At
//! most one run per export is active, enforced by a partial unique index.

use std::collections::BTreeMap;
use std::time::Duration;

use sea_orm::sea_query::{Expr, ExprTrait, LockBehavior, LockType};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, DbBackend, EntityTrait, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect,
};
use serde::{Deserialize, Serialize};

use super::Store;
use super::list::{SortColumn, apply_order, compare, page_of, to_condition};
use super::models::export as export_model;
use super::models::run::{ActiveModel, Column, Entity as Table, Model};
use super::request_ids::{self, Outcome, RequestKey};
use crate::domain::list_query::{CompareOp, Filter, OrderKey, Value};
use crate::domain::names::{ExportName, RunName, generate_id};
use crate::domain::paging::Page;
use crate::domain::run::{Counts, Run, RunError, RunState, RunTrigger, Task, Warning};
use crate::domain::time::{Micros, now_micros};
use crate::error::{Error, Result};

#[derive(Serialize, Deserialize)]
struct StoredWarning {
    code: String,
    message: String,
    #[serde(default)]
    subject: String,
}

fn warnings_json(warnings: &[Warning]) -> String {
    let stored: Vec<StoredWarning> = warnings
        .iter()
        .map(|w| StoredWarning {
            code: w.code.clone(),
            message: w.message.clone(),
            subject: w.subject.clone(),
        })
        .collect();
    serde_json::to_string(&stored).expect("warnings serialize")
}

fn json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("run fields serialize")
}

fn to_domain(model: Model) -> Result<Run> {
    let corrupt = |what: &str| Error::internal(format!("run '{}' has a corrupt {what}", model.id));
    let warnings: Vec<StoredWarning> = serde_json::from_str(&model.warnings).map_err(|_| corrupt("warning list"))?;
    Ok(Run {
        name: RunName {
            env: model.env.clone(),
            export: model.export.clone(),
            id: model.id.clone(),
        },
        trigger: RunTrigger::from_number(model.trigger).ok_or_else(|| corrupt("trigger"))?,
        state: RunState::from_number(model.state).ok_or_else(|| corrupt("state"))?,
        tasks: serde_json::from_str(&model.tasks).map_err(|_| corrupt("task list"))?,
        counts: Counts {
            total: model.records_total,
            exported: model.records_exported,
            rejected: model.records_rejected,
            removed: model.records_removed,
            retried: model.records_retried,
            bytes: model.bytes_written,
        },
        warnings: warnings
            .into_iter()
            .map(|w| Warning {
                code: w.code,
                message: w.message,
                subject: w.subject,
            })
            .collect(),
        error: match &model.error {
            Some(text) => Some(serde_json::from_str(text).map_err(|_| corrupt("error"))?),
            None => None,
        },
        skip_reason: model.skip_reason,
        attempt: model.attempt,
        waiting_for: serde_json::from_str(&model.waiting_for).map_err(|_| corrupt("dependency list"))?,
        create_time: model.create_time,
        start_time: model.start_time,
        end_time: model.end_time,
        cancel_requested: model.cancel_requested,
        revision: model.revision,
    })
}

fn pk(name: &RunName) -> Condition {
    Condition::all()
        .add(Column::Env.eq(&name.env))
        .add(Column::Export.eq(&name.export))
        .add(Column::Id.eq(&name.id))
}

/// The outcome a worker records when a run ends.
#[derive(Debug, Clone)]
pub struct Finish {
    pub state: RunState,
    pub tasks: Vec<Task>,
    pub counts: Counts,
    pub warnings: Vec<Warning>,
    pub error: Option<RunError>,
    pub skip_reason: Option<String>,
    /// Incremental exports: the change sequence each entity is now delivered up to.
    pub sync_state: Option<BTreeMap<String, i64>>,
}

/// A run a worker claimed; `takeover` when its previous worker's lease had expired.
pub struct Claimed {
    pub run: Run,
    pub takeover: bool,
}

/// What recording a run's end did: `recorded` is false when the worker had lost the run
/// (another took it over); `catch_up` is the pending catch-up run it started.
pub struct Finished {
    pub recorded: bool,
    pub catch_up: Option<Run>,
}

/// What a lease renewal learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseStatus {
    Held {
        cancel_requested: bool,
    },
    /// Another worker took the run over, or it ended: this worker must stop at once.
    Lost,
}

/// What a list of runs asks for.
pub struct RunQuery<'a> {
    pub env: &'a str,
    /// None for every export of the environment.
    pub export: Option<&'a str>,
    pub filter: Option<&'a Filter>,
    pub order: &'a [OrderKey],
    pub page: Page,
}

impl Store {
    /// Records a new run (QUEUED, or WAITING_FOR_DEPENDENCIES when `waiting_for` is not empty)
    /// unless the export already has an active run, which the error names.
    pub async fn create_run(
        &self,
        export: &ExportName,
        trigger: RunTrigger,
        waiting_for: &[String],
        request: Option<RequestKey<'_>>,
    ) -> Result<Run> {
        let outcome = request_ids::create_once(self, &export.env, request.as_ref(), async |txn| {
            if let Some(active) = active_run_on(txn, export).await? {
                return Err(run_active(export, &active));
            }
            let run = insert_run(txn, export, trigger, waiting_for).await?;
            let name = run.name.to_string();
            Ok((run, name))
        })
        .await?;
        match outcome {
            Outcome::Created(run) => Ok(run),
            Outcome::Existing(existing) => {
                let name = RunName::parse("request_id", &existing)?;
                self.get_run(&name)
                    .await?
                    .ok_or_else(|| Error::not_found("export run", existing))
            }
        }
    }

    /// For runs the system starts (schedules, system refreshes): a new run, or — when the
    /// export has an active run — one pending catch-up that starts when it ends. Never a pile-up.
    pub async fn create_or_catch_up(
        &self,
        export: &ExportName,
        trigger: RunTrigger,
        waiting_for: &[String],
    ) -> Result<Option<Run>> {
        let txn = self.writer().begin().await?;
        if active_run_on(&txn, export).await?.is_some() {
            export_model::Entity::update_many()
                .col_expr(export_model::Column::CatchUpTrigger, Expr::val(trigger.number()))
                .filter(export_model::Column::Env.eq(&export.env))
                .filter(export_model::Column::Id.eq(&export.id))
                .exec(&txn)
                .await?;
            txn.commit().await?;
            return Ok(None);
        }
        let run = insert_run(&txn, export, trigger, waiting_for).await?;
        txn.commit().await?;
        Ok(Some(run))
    }

    pub async fn get_run(&self, name: &RunName) -> Result<Option<Run>> {
        Table::find()
            .filter(pk(name))
            .one(self.primary())
            .await?
            .map(to_domain)
            .transpose()
    }

    pub async fn run_or_not_found(&self, name: &RunName) -> Result<Run> {
        self.get_run(name)
            .await?
            .ok_or_else(|| Error::not_found("export run", name.to_string()))
    }

    /// The queued, waiting or running run of an export, if any.
    pub async fn active_run(&self, export: &ExportName) -> Result<Option<Run>> {
        active_run_on(self.primary(), export).await
    }

    pub async fn list_runs(&self, query: &RunQuery<'_>) -> Result<(Vec<Run>, u64)> {
        let mut condition = Condition::all().add(Column::Env.eq(query.env));
        if let Some(export) = query.export {
            condition = condition.add(Column::Export.eq(export));
        }
        if let Some(filter) = query.filter {
            condition = condition.add(to_condition(filter, &run_filter_leaf));
        }
        // Runs sort by one key only: their create time.
        let by_create_time = |_: &str| SortColumn {
            expr: Expr::col(Column::CreateTime),
            nulls_last: false,
        };
        page_of(
            self.reader(),
            Table::find().filter(condition),
            |select| {
                apply_order(
                    select,
                    query.order,
                    &by_create_time,
                    vec![Expr::col(Column::Export), Expr::col(Column::Id)],
                )
            },
            query.page,
            to_domain,
        )
        .await
    }

    /// How many runs are in `state` (all environments).
    pub async fn count_runs_in(&self, state: RunState) -> Result<u64> {
        Ok(Table::find()
            .filter(Column::State.eq(state.number()))
            .count(self.reader())
            .await?)
    }

    /// Claims the oldest queued run, or a running run whose lease has expired (its worker died:
    /// the same run continues as its next attempt, with fresh counts). Never hands one run to
    /// two workers: on PostgreSQL the row is locked `FOR UPDATE SKIP LOCKED`; on SQLite the one
    /// writer connection serialises claims.
    pub async fn claim_run(&self, owner: &str, lease: Duration) -> Result<Option<Claimed>> {
        let now = now_micros();
        let txn = self.writer().begin().await?;
        let claimable = Condition::any().add(Column::State.eq(RunState::Queued.number())).add(
            Condition::all()
                .add(Column::State.eq(RunState::Running.number()))
                .add(Column::LeaseExpiresAt.lt(now)),
        );
        let mut select = Table::find()
            .filter(claimable)
            .order_by_asc(Column::CreateTime)
            .limit(1);
        if self.backend() == DbBackend::Postgres {
            select = select.lock_with_behavior(LockType::Update, LockBehavior::SkipLocked);
        }
        let Some(model) = select.one(&txn).await? else {
            txn.commit_unchanged().await?;
            return Ok(None);
        };
        let takeover = model.state == RunState::Running.number();
        let name = RunName {
            env: model.env.clone(),
            export: model.export.clone(),
            id: model.id.clone(),
        };
        let mut update = Table::update_many()
            .col_expr(Column::State, Expr::val(RunState::Running.number()))
            .col_expr(Column::LeaseOwner, Expr::val(owner))
            .col_expr(Column::LeaseExpiresAt, Expr::val(now + lease.as_micros() as i64))
            .col_expr(
                Column::Attempt,
                Expr::val(if takeover { model.attempt + 1 } else { model.attempt }),
            )
            .col_expr(Column::Tasks, Expr::val(json(&Task::fresh_list())))
            .col_expr(Column::RecordsTotal, Expr::val(0i64))
            .col_expr(Column::RecordsExported, Expr::val(0i64))
            .col_expr(Column::RecordsRejected, Expr::val(0i64))
            .col_expr(Column::RecordsRemoved, Expr::val(0i64))
            .col_expr(Column::RecordsRetried, Expr::val(0i64))
            .col_expr(Column::BytesWritten, Expr::val(0i64))
            .col_expr(Column::WaitingFor, Expr::val("[]"))
            .col_expr(Column::Revision, Expr::val(model.revision + 1))
            .filter(pk(&name))
            .filter(Column::Revision.eq(model.revision));
        if model.start_time.is_none() {
            update = update.col_expr(Column::StartTime, Expr::val(now));
        }
        let result = update.exec(&txn).await?;
        if result.rows_affected == 0 {
            txn.commit().await?;
            return Ok(None);
        }
        mirror_on_export(&txn, &name, RunState::Running, None).await?;
        txn.commit().await?;
        if takeover {
            tracing::warn!(run = %name, attempt = model.attempt + 1, "took over a run whose worker stopped renewing its lease");
        }
        Ok(self.get_run(&name).await?.map(|run| Claimed { run, takeover }))
    }

    /// Extends a worker's lease; says whether the worker still holds the run and whether a
    /// cancellation was asked for.
    pub async fn renew_lease(&self, name: &RunName, owner: &str, lease: Duration) -> Result<LeaseStatus> {
        let result = Table::update_many()
            .col_expr(
                Column::LeaseExpiresAt,
                Expr::val(now_micros() + lease.as_micros() as i64),
            )
            .filter(pk(name))
            .filter(Column::LeaseOwner.eq(owner))
            .filter(Column::State.eq(RunState::Running.number()))
            .exec(&self.writer())
            .await?;
        if result.rows_affected == 0 {
            return Ok(LeaseStatus::Lost);
        }
        let cancel_requested = Table::find()
            .select_only()
            .column(Column::CancelRequested)
            .filter(pk(name))
            .into_tuple::<bool>()
            .one(self.primary())
            .await?
            .unwrap_or(false);
        Ok(LeaseStatus::Held { cancel_requested })
    }

    /// Stores a running run's tasks, counts and warnings (only while this worker holds it).
    pub async fn save_progress(
        &self,
        name: &RunName,
        owner: &str,
        tasks: &[Task],
        counts: Counts,
        warnings: &[Warning],
    ) -> Result<bool> {
        let result = Table::update_many()
            .col_expr(Column::Tasks, Expr::val(json(&tasks)))
            .col_expr(Column::RecordsTotal, Expr::val(counts.total))
            .col_expr(Column::RecordsExported, Expr::val(counts.exported))
            .col_expr(Column::RecordsRejected, Expr::val(counts.rejected))
            .col_expr(Column::RecordsRemoved, Expr::val(counts.removed))
            .col_expr(Column::RecordsRetried, Expr::val(counts.retried))
            .col_expr(Column::BytesWritten, Expr::val(counts.bytes))
            .col_expr(Column::Warnings, Expr::val(warnings_json(warnings)))
            .col_expr(Column::Revision, Expr::col(Column::Revision).add(1))
            .filter(pk(name))
            .filter(Column::LeaseOwner.eq(owner))
            .filter(Column::State.eq(RunState::Running.number()))
            // Only the runs table changes, which no cached read uses: progress written twice a
            // second must not empty the read cache for exports while runs execute.
            .exec(&self.untracked_writer())
            .await?;
        Ok(result.rows_affected > 0)
    }

    /// Ends a running run that this worker holds: the outcome, the export's last run (and, on
    /// success, its last refreshed time and delivered change sequences), then any pending
    /// catch-up run — all in one transaction. Returns the catch-up run, if one was started.
    pub async fn finish_run(&self, name: &RunName, owner: &str, finish: Finish) -> Result<Finished> {
        let txn = self.writer().begin().await?;
        let end = now_micros();
        let result = Table::update_many()
            .col_expr(Column::State, Expr::val(finish.state.number()))
            .col_expr(Column::Tasks, Expr::val(json(&finish.tasks)))
            .col_expr(Column::RecordsTotal, Expr::val(finish.counts.total))
            .col_expr(Column::RecordsExported, Expr::val(finish.counts.exported))
            .col_expr(Column::RecordsRejected, Expr::val(finish.counts.rejected))
            .col_expr(Column::RecordsRemoved, Expr::val(finish.counts.removed))
            .col_expr(Column::RecordsRetried, Expr::val(finish.counts.retried))
            .col_expr(Column::BytesWritten, Expr::val(finish.counts.bytes))
            .col_expr(Column::Warnings, Expr::val(warnings_json(&finish.warnings)))
            .col_expr(Column::Error, Expr::val(finish.error.as_ref().map(json)))
            .col_expr(Column::SkipReason, Expr::val(finish.skip_reason.clone()))
            .col_expr(Column::EndTime, Expr::val(end))
            .col_expr(Column::LeaseOwner, Expr::val(Option::<String>::None))
            .col_expr(Column::LeaseExpiresAt, Expr::val(Option::<i64>::None))
            .col_expr(Column::Revision, Expr::col(Column::Revision).add(1))
            .filter(pk(name))
            .filter(Column::LeaseOwner.eq(owner))
            .filter(Column::State.eq(RunState::Running.number()))
            .exec(&txn)
            .await?;
        if result.rows_affected == 0 {
            // Lost the lease meanwhile: the run belongs to another worker now.
            txn.commit().await?;
            return Ok(Finished {
                recorded: false,
                catch_up: None,
            });
        }
        mirror_on_export(&txn, name, finish.state, Some(end)).await?;
        // Alerts the outcome fires or resolves, stored with it (delivered later from the outbox).
        super::alerts::on_run_finished(
            &txn,
            &name.export_name(),
            &name.to_string(),
            &crate::domain::alert::RunOutcome {
                state: finish.state,
                exported: finish.counts.exported,
                rejected: finish.counts.rejected,
            },
        )
        .await?;
        if let Some(error) = &finish.error {
            export_model::Entity::update_many()
                .col_expr(export_model::Column::LastRunError, Expr::val(json(error)))
                .filter(export_model::Column::Env.eq(&name.env))
                .filter(export_model::Column::Id.eq(&name.export))
                .exec(&txn)
                .await?;
        }
        if let Some(sync_state) = &finish.sync_state {
            export_model::Entity::update_many()
                .col_expr(export_model::Column::SyncState, Expr::val(json(sync_state)))
                .filter(export_model::Column::Env.eq(&name.env))
                .filter(export_model::Column::Id.eq(&name.export))
                .exec(&txn)
                .await?;
        }
        if finish.state == RunState::Succeeded {
            super::delivered::promote_snapshots(&txn, &name.export_name()).await?;
        }
        let catch_up = start_catch_up(&txn, &name.export_name()).await?;
        txn.commit().await?;
        Ok(Finished {
            recorded: true,
            catch_up,
        })
    }

    /// Cancels a run: a queued or waiting one at once; a running one is flagged, and its worker
    /// stops promptly and cleans up. A finished run cannot be cancelled.
    pub async fn cancel_run(&self, name: &RunName) -> Result<Run> {
        let txn = self.writer().begin().await?;
        let run = Table::find()
            .filter(pk(name))
            .one(&txn)
            .await?
            .map(to_domain)
            .transpose()?
            .ok_or_else(|| Error::not_found("export run", name.to_string()))?;
        match run.state {
            RunState::Queued | RunState::WaitingForDependencies => {
                let end = now_micros();
                let mut tasks = run.tasks.clone();
                let waiting = [RunState::Queued.number(), RunState::WaitingForDependencies.number()];
                for task in tasks.iter_mut().filter(|t| waiting.contains(&t.state)) {
                    task.state = RunState::Cancelled.number();
                }
                let cancelled = Table::update_many()
                    .col_expr(Column::State, Expr::val(RunState::Cancelled.number()))
                    .col_expr(Column::Tasks, Expr::val(json(&tasks)))
                    .col_expr(Column::EndTime, Expr::val(end))
                    .col_expr(Column::CancelRequested, Expr::val(true))
                    .col_expr(Column::Revision, Expr::col(Column::Revision).add(1))
                    .filter(pk(name))
                    .filter(Column::Revision.eq(run.revision))
                    .exec(&txn)
                    .await?;
                if cancelled.rows_affected == 0 {
                    // A worker claimed it meanwhile: flag it for that worker instead.
                    drop(txn);
                    return Box::pin(self.cancel_run(name)).await;
                }
                mirror_on_export(&txn, name, RunState::Cancelled, Some(end)).await?;
                start_catch_up(&txn, &name.export_name()).await?;
            }
            RunState::Running => {
                Table::update_many()
                    .col_expr(Column::CancelRequested, Expr::val(true))
                    .col_expr(Column::Revision, Expr::col(Column::Revision).add(1))
                    .filter(pk(name))
                    .exec(&txn)
                    .await?;
            }
            finished => {
                return Err(Error::precondition(
                    "RUN_FINISHED",
                    format!(
                        "run '{name}' already ended ({}); only queued, waiting or running runs can be cancelled",
                        finished.as_str()
                    ),
                )
                .with_meta("run", name.to_string())
                .with_meta("state", finished.as_str())
                .with_precondition(
                    "RUN_FINISHED",
                    name.to_string(),
                    format!("the run is {}", finished.as_str()),
                ));
            }
        }
        txn.commit().await?;
        self.run_or_not_found(name).await
    }

    /// The ids of an export's latest `limit` successful runs, newest first.
    pub async fn latest_succeeded_run_ids(&self, export: &ExportName, limit: u64) -> Result<Vec<String>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        Ok(Table::find()
            .select_only()
            .column(Column::Id)
            .filter(Column::Env.eq(&export.env))
            .filter(Column::Export.eq(&export.id))
            .filter(Column::State.eq(RunState::Succeeded.number()))
            .order_by_desc(Column::CreateTime)
            .order_by_desc(Column::Id)
            .limit(limit)
            .into_tuple()
            .all(self.primary())
            .await?)
    }

    /// Runs waiting for dependencies (in one environment, or everywhere).
    pub async fn waiting_runs(&self, env: Option<&str>) -> Result<Vec<Run>> {
        let mut select = Table::find().filter(Column::State.eq(RunState::WaitingForDependencies.number()));
        if let Some(env) = env {
            select = select.filter(Column::Env.eq(env));
        }
        select
            .order_by_asc(Column::CreateTime)
            .all(self.primary())
            .await?
            .into_iter()
            .map(to_domain)
            .collect()
    }

    /// Sends a run back to the queue: WAITING_FOR_DEPENDENCIES when `waiting_for` is not
    /// empty, else QUEUED, with fresh tasks. Only a run still in state `from` is changed (a
    /// worker passes RUNNING, the release of waiting runs passes WAITING_FOR_DEPENDENCIES), so
    /// a run claimed meanwhile is never pulled back from under its worker.
    pub async fn set_waiting(&self, name: &RunName, from: RunState, waiting_for: &[String]) -> Result<bool> {
        let state = if waiting_for.is_empty() {
            RunState::Queued
        } else {
            RunState::WaitingForDependencies
        };
        let txn = self.writer().begin().await?;
        let result = Table::update_many()
            .col_expr(Column::State, Expr::val(state.number()))
            .col_expr(Column::WaitingFor, Expr::val(json(&waiting_for)))
            .col_expr(Column::Tasks, Expr::val(json(&Task::waiting_list(waiting_for))))
            .col_expr(Column::LeaseOwner, Expr::val(Option::<String>::None))
            .col_expr(Column::LeaseExpiresAt, Expr::val(Option::<i64>::None))
            .col_expr(Column::Revision, Expr::col(Column::Revision).add(1))
            .filter(pk(name))
            .filter(Column::State.eq(from.number()))
            .exec(&txn)
            .await?;
        if result.rows_affected > 0 {
            mirror_on_export(&txn, name, state, None).await?;
        }
        txn.commit().await?;
        Ok(result.rows_affected > 0)
    }

    /// The change sequences an incremental export has delivered, by entity id.
    pub async fn export_sync_state(&self, export: &ExportName) -> Result<BTreeMap<String, i64>> {
        let text: Option<Option<String>> = export_model::Entity::find()
            .select_only()
            .column(export_model::Column::SyncState)
            .filter(export_model::Column::Env.eq(&export.env))
            .filter(export_model::Column::Id.eq(&export.id))
            .into_tuple()
            .one(self.reader())
            .await?;
        Ok(text
            .flatten()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default())
    }

    /// Ids of exports with a pending catch-up and no active run (left over by a crash between
    /// a run's end and its catch-up's start): they get their run now.
    pub async fn start_pending_catch_ups(&self) -> Result<Vec<Run>> {
        let pending: Vec<(String, String)> = export_model::Entity::find()
            .select_only()
            .column(export_model::Column::Env)
            .column(export_model::Column::Id)
            .filter(export_model::Column::CatchUpTrigger.is_not_null())
            .into_tuple()
            .all(self.primary())
            .await?;
        let mut started = Vec::new();
        for (env, id) in pending {
            let txn = self.writer().begin().await?;
            let export = ExportName::new(&env, &id);
            if active_run_on(&txn, &export).await?.is_none()
                && let Some(run) = start_catch_up(&txn, &export).await?
            {
                started.push(run);
            }
            txn.commit().await?;
        }
        Ok(started)
    }
}

fn run_active(export: &ExportName, active: &Run) -> Error {
    Error::precondition(
        "RUN_ACTIVE",
        format!(
            "export '{export}' already has an active run: {} ({}); wait for it to end or cancel it",
            active.name,
            active.state.as_str()
        ),
    )
    .with_meta("export", export.to_string())
    .with_meta("active_run", active.name.to_string())
    .with_precondition(
        "RUN_ACTIVE",
        active.name.to_string(),
        format!("the run is {}", active.state.as_str()),
    )
}

async fn active_run_on(db: &impl ConnectionTrait, export: &ExportName) -> Result<Option<Run>> {
    Table::find()
        .filter(Column::Env.eq(&export.env))
        .filter(Column::Export.eq(&export.id))
        .filter(Column::State.is_in([
            RunState::Queued.number(),
            RunState::WaitingForDependencies.number(),
            RunState::Running.number(),
        ]))
        .one(db)
        .await?
        .map(to_domain)
        .transpose()
}

async fn insert_run(
    db: &impl ConnectionTrait,
    export: &ExportName,
    trigger: RunTrigger,
    waiting_for: &[String],
) -> Result<Run> {
    let state = if waiting_for.is_empty() {
        RunState::Queued
    } else {
        RunState::WaitingForDependencies
    };
    let name = RunName {
        env: export.env.clone(),
        export: export.id.clone(),
        id: generate_id("run"),
    };
    let model = ActiveModel {
        env: Set(name.env.clone()),
        export: Set(name.export.clone()),
        id: Set(name.id.clone()),
        trigger: Set(trigger.number()),
        state: Set(state.number()),
        tasks: Set(json(&Task::waiting_list(waiting_for))),
        records_total: Set(0),
        records_exported: Set(0),
        records_rejected: Set(0),
        records_removed: Set(0),
        records_retried: Set(0),
        bytes_written: Set(0),
        warnings: Set("[]".into()),
        error: Set(None),
        skip_reason: Set(None),
        attempt: Set(1),
        waiting_for: Set(json(&waiting_for)),
        create_time: Set(now_micros()),
        start_time: Set(None),
        end_time: Set(None),
        lease_owner: Set(None),
        lease_expires_at: Set(None),
        cancel_requested: Set(false),
        revision: Set(1),
    };
    Table::insert(model).exec(db).await.map_err(|e| {
        if super::is_unique_violation(&e) {
            Error::precondition("RUN_ACTIVE", format!("export '{export}' already has an active run"))
                .with_meta("export", export.to_string())
        } else {
            e.into()
        }
    })?;
    mirror_on_export(db, &name, state, None).await?;
    Table::find()
        .filter(pk(&name))
        .one(db)
        .await?
        .map(to_domain)
        .transpose()?
        .ok_or_else(|| Error::internal("run vanished"))
}

/// Keeps the export's view of its latest run (status, end, last refreshed) in step.
async fn mirror_on_export(
    db: &impl ConnectionTrait,
    run: &RunName,
    state: RunState,
    end: Option<Micros>,
) -> Result<()> {
    let mut update = export_model::Entity::update_many()
        .col_expr(export_model::Column::LastRunId, Expr::val(run.id.clone()))
        .col_expr(export_model::Column::LastRunState, Expr::val(state.number()))
        .col_expr(export_model::Column::LastRunEnd, Expr::val(end))
        .col_expr(export_model::Column::LastRunError, Expr::val(Option::<String>::None))
        .filter(export_model::Column::Env.eq(&run.env))
        .filter(export_model::Column::Id.eq(&run.export));
    if state == RunState::Succeeded {
        update = update.col_expr(export_model::Column::LastRefreshedTime, Expr::val(end));
    }
    update.exec(db).await?;
    Ok(())
}

/// Starts the export's pending catch-up run, if it has one (call inside the transaction that
/// ended its active run).
async fn start_catch_up(db: &impl ConnectionTrait, export: &ExportName) -> Result<Option<Run>> {
    let trigger: Option<Option<i32>> = export_model::Entity::find()
        .select_only()
        .column(export_model::Column::CatchUpTrigger)
        .filter(export_model::Column::Env.eq(&export.env))
        .filter(export_model::Column::Id.eq(&export.id))
        .into_tuple()
        .one(db)
        .await?;
    let Some(trigger) = trigger.flatten().and_then(RunTrigger::from_number) else {
        return Ok(None);
    };
    export_model::Entity::update_many()
        .col_expr(export_model::Column::CatchUpTrigger, Expr::val(Option::<i32>::None))
        .filter(export_model::Column::Env.eq(&export.env))
        .filter(export_model::Column::Id.eq(&export.id))
        .exec(db)
        .await?;
    // The catch-up's dependencies are checked when a worker picks it up.
    insert_run(db, export, trigger, &[]).await.map(Some)
}

fn run_filter_leaf(field: &str, op: CompareOp, value: &Value) -> Expr {
    match (field, value) {
        ("state", Value::Word(word)) => match RunState::parse(word) {
            Some(state) => compare(Expr::col(Column::State), op, state.number()),
            None => Expr::val(false).eq(true),
        },
        ("trigger", Value::Word(word)) => match RunTrigger::parse(word) {
            Some(trigger) => compare(Expr::col(Column::Trigger), op, trigger.number()),
            None => Expr::val(false).eq(true),
        },
        ("create_time", Value::String(text)) => match chrono::DateTime::parse_from_rfc3339(text) {
            Ok(time) => compare(Expr::col(Column::CreateTime), op, time.timestamp_micros()),
            Err(_) => Expr::val(false).eq(true),
        },
        _ => Expr::val(false).eq(true),
    }
}

/// Deletes an export's runs (its history) inside the transaction that deletes the export.
/// Refused while one is running: its worker would go on writing to the target.
pub(crate) async fn delete_runs_of(db: &impl ConnectionTrait, export: &ExportName) -> Result<()> {
    if let Some(active) = active_run_on(db, export).await?
        && active.state == RunState::Running
    {
        return Err(Error::precondition(
            "RUN_ACTIVE",
            format!("export '{export}' has a running run ({}); cancel it, or wait for it to end, before deleting the export", active.name),
        )
        .with_meta("export", export.to_string())
        .with_meta("active_run", active.name.to_string())
        .with_precondition("RUN_ACTIVE", active.name.to_string(), "the run is RUNNING"));
    }
    Table::delete_many()
        .filter(Column::Env.eq(&export.env))
        .filter(Column::Export.eq(&export.id))
        .exec(db)
        .await?;
    super::delivered::forget(db, export).await
}
