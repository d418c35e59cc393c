//! Alert policies, the conditions each (policy, export) is in, and alert events — which are
//! also the delivery outbox: an event is stored in the transaction of the run state that caused
//! it (`on_run_finished`, called by `finish_run`), then claimed under a lease by one worker at a
//! time, delivered, and marked (`engine::alert_delivery`).

use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition as Where, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect,
};

use super::Store;
use super::list::page_of;
use super::models::{alert_condition, alert_event, alert_policy, run};
use super::request_ids::{self, Outcome, RequestKey};
use crate::domain::alert::{
    AlertEvent, AlertPolicy, Condition, DeliveryState, EventState, RunOutcome, Transition, holds, transition,
};
use crate::domain::names::{AlertPolicyName, ExportName, RunName, generate_id};
use crate::domain::paging::Page;
use crate::domain::run::{RunState, RunTrigger};
use crate::domain::time::{Micros, now_micros};
use crate::error::{Error, Result};

/// A scheduled run not yet RUNNING (`Store::scheduled_runs_not_started`).
pub struct UnstartedRun {
    pub export: ExportName,
    pub run: String,
    pub due_at: Micros,
}

/// How a scheduled occurrence came to be late (only the event's message differs).
#[derive(Clone, Copy, Debug)]
pub enum Lateness {
    FiredLate,
    NotStarted,
}

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("serializes")
}

fn policy_of(model: alert_policy::Model) -> Result<AlertPolicy> {
    let conditions: Vec<String> = serde_json::from_str(&model.conditions).unwrap_or_default();
    Ok(AlertPolicy {
        name: AlertPolicyName::new(&model.env, &model.id),
        display_name: model.display_name,
        connection: model.connection,
        conditions: conditions.iter().filter_map(|c| Condition::parse(c)).collect(),
        rejected_percent_threshold: model.rejected_percent_threshold,
        schedule_missed_after_seconds: model.schedule_missed_after_seconds,
        exports: serde_json::from_str(&model.exports).unwrap_or_default(),
        notify_recovery: model.notify_recovery,
        enabled: model.enabled,
        create_time: model.create_time,
        update_time: model.update_time,
        revision: model.revision,
    })
}

fn event_of(model: alert_event::Model) -> Result<AlertEvent> {
    Ok(AlertEvent {
        env: model.env,
        policy: model.policy,
        id: model.id,
        export: model.export,
        run: model.run,
        condition: Condition::parse(&model.condition).unwrap_or(Condition::RunFailed),
        state: EventState::parse(&model.state).unwrap_or(EventState::Firing),
        message: model.message,
        create_time: model.create_time,
        delivery_state: DeliveryState::parse(&model.delivery_state).unwrap_or(DeliveryState::Pending),
        delivery_attempts: model.delivery_attempts,
        last_delivery_error: model.last_delivery_error,
    })
}

fn definition(policy: &AlertPolicy) -> alert_policy::ActiveModel {
    let conditions: Vec<&str> = policy.conditions.iter().map(|c| c.as_str()).collect();
    alert_policy::ActiveModel {
        display_name: Set(policy.display_name.clone()),
        connection: Set(policy.connection.clone()),
        conditions: Set(json(&conditions)),
        rejected_percent_threshold: Set(policy.rejected_percent_threshold),
        schedule_missed_after_seconds: Set(policy.schedule_missed_after_seconds),
        exports: Set(json(&policy.exports)),
        notify_recovery: Set(policy.notify_recovery),
        enabled: Set(policy.enabled),
        ..Default::default()
    }
}

/// One event to store (FIRING or RESOLVED), pending delivery.
struct NewEvent<'a> {
    policy: &'a AlertPolicy,
    export: &'a ExportName,
    run: String,
    condition: Condition,
    state: EventState,
    message: String,
}

async fn insert_event(db: &impl ConnectionTrait, event: NewEvent<'_>) -> Result<()> {
    let now = now_micros();
    let model = alert_event::ActiveModel {
        env: Set(event.policy.name.env.clone()),
        policy: Set(event.policy.name.id.clone()),
        id: Set(generate_id("alert")),
        export: Set(event.export.to_string()),
        run: Set(event.run),
        condition: Set(event.condition.as_str().to_string()),
        state: Set(event.state.as_str().to_string()),
        message: Set(event.message),
        create_time: Set(now),
        delivery_state: Set(DeliveryState::Pending.as_str().to_string()),
        delivery_attempts: Set(0),
        last_delivery_error: Set(String::new()),
        next_attempt_at: Set(now),
        lease_owner: Set(None),
        lease_expires_at: Set(None),
        ..Default::default()
    };
    alert_event::Entity::insert(model).exec_without_returning(db).await?;
    Ok(())
}

fn condition_key(policy: &AlertPolicy, export: &ExportName, condition: Condition) -> Where {
    Where::all()
        .add(alert_condition::Column::Env.eq(&policy.name.env))
        .add(alert_condition::Column::Policy.eq(&policy.name.id))
        .add(alert_condition::Column::Export.eq(&export.id))
        .add(alert_condition::Column::Condition.eq(condition.as_str()))
}

async fn is_firing(
    db: &impl ConnectionTrait,
    policy: &AlertPolicy,
    export: &ExportName,
    condition: Condition,
) -> Result<bool> {
    Ok(alert_condition::Entity::find()
        .filter(condition_key(policy, export, condition))
        .one(db)
        .await?
        .is_some())
}

async fn enter(
    db: &impl ConnectionTrait,
    policy: &AlertPolicy,
    export: &ExportName,
    condition: Condition,
) -> Result<()> {
    let row = alert_condition::ActiveModel {
        env: Set(policy.name.env.clone()),
        policy: Set(policy.name.id.clone()),
        export: Set(export.id.clone()),
        condition: Set(condition.as_str().to_string()),
        since: Set(now_micros()),
    };
    alert_condition::Entity::insert(row).exec(db).await?;
    Ok(())
}

async fn leave(
    db: &impl ConnectionTrait,
    policy: &AlertPolicy,
    export: &ExportName,
    condition: Condition,
) -> Result<()> {
    alert_condition::Entity::delete_many()
        .filter(condition_key(policy, export, condition))
        .exec(db)
        .await?;
    Ok(())
}

async fn policies_watching(db: &impl ConnectionTrait, export: &ExportName) -> Result<Vec<AlertPolicy>> {
    let models = alert_policy::Entity::find()
        .filter(alert_policy::Column::Env.eq(&export.env))
        .filter(alert_policy::Column::Enabled.eq(true))
        .all(db)
        .await?;
    Ok(models
        .into_iter()
        .filter_map(|m| policy_of(m).ok())
        .filter(|p| p.watches(&export.id))
        .collect())
}

fn describe(condition: Condition, outcome: &RunOutcome, run: &str) -> String {
    match condition {
        Condition::RunFailed => format!("run {run} failed"),
        Condition::RunSkipped => format!("run {run} was skipped"),
        Condition::RecordsRejected => format!(
            "run {run}: the target rejected {} of {} records sent",
            outcome.rejected,
            outcome.exported + outcome.rejected
        ),
        Condition::ScheduleMissed => format!("run {run}: the schedule was missed"),
    }
}

/// Inside the transaction that ends a run: fires the conditions the run entered, resolves those
/// it recovered from (SUCCEEDED without them), for every enabled policy watching its export.
pub(crate) async fn on_run_finished(
    db: &impl ConnectionTrait,
    export: &ExportName,
    run: &str,
    outcome: &RunOutcome,
) -> Result<()> {
    for policy in policies_watching(db, export).await? {
        for &condition in &policy.conditions {
            let firing = is_firing(db, &policy, export, condition).await?;
            let now_holds = holds(&policy, condition, outcome);
            match transition(firing, now_holds, outcome.state) {
                Transition::Fire => {
                    enter(db, &policy, export, condition).await?;
                    let message = describe(condition, outcome, run);
                    insert_event(
                        db,
                        NewEvent {
                            policy: &policy,
                            export,
                            run: run.to_string(),
                            condition,
                            state: EventState::Firing,
                            message,
                        },
                    )
                    .await?;
                }
                Transition::Resolve => {
                    leave(db, &policy, export, condition).await?;
                    if policy.notify_recovery {
                        insert_event(
                            db,
                            NewEvent {
                                policy: &policy,
                                export,
                                run: run.to_string(),
                                condition,
                                state: EventState::Resolved,
                                message: format!("run {run} succeeded"),
                            },
                        )
                        .await?;
                    }
                }
                Transition::Keep => {}
            }
        }
    }
    Ok(())
}

/// One ListAlertEvents query.
pub struct AlertEventQuery<'a> {
    pub env: &'a str,
    pub policy: Option<&'a str>,
    pub export: Option<&'a str>,
    pub condition: Option<Condition>,
    pub state: Option<EventState>,
    pub page: Page,
}

/// An event claimed for delivery, with where it goes.
pub struct ClaimedDelivery {
    pub event: AlertEvent,
    pub seq: i64,
    pub connection: String,
}

impl Store {
    /// Inserts a policy, recording the request id in the same transaction.
    pub async fn create_alert_policy(
        &self,
        policy: &AlertPolicy,
        request: Option<RequestKey<'_>>,
    ) -> Result<AlertPolicy> {
        let now = now_micros();
        let mut model = definition(policy);
        model.env = Set(policy.name.env.clone());
        model.id = Set(policy.name.id.clone());
        model.create_time = Set(now);
        model.update_time = Set(now);
        model.revision = Set(1);
        let name = policy.name.to_string();
        let outcome = request_ids::create_once(self, &policy.name.env, request.as_ref(), async |txn| {
            alert_policy::Entity::insert(model).exec(txn).await.map_err(|e| {
                if super::is_unique_violation(&e) {
                    Error::already_exists("alert policy", name.clone())
                } else {
                    e.into()
                }
            })?;
            Ok(((), name.clone()))
        })
        .await?;
        let name = match outcome {
            Outcome::Existing(existing) => AlertPolicyName::parse("request_id", &existing)?,
            Outcome::Created(()) => policy.name.clone(),
        };
        self.alert_policy_or_not_found(&name).await
    }

    pub async fn get_alert_policy(&self, name: &AlertPolicyName) -> Result<Option<AlertPolicy>> {
        alert_policy::Entity::find_by_id((name.env.clone(), name.id.clone()))
            .one(self.primary())
            .await?
            .map(policy_of)
            .transpose()
    }

    pub async fn alert_policy_or_not_found(&self, name: &AlertPolicyName) -> Result<AlertPolicy> {
        self.get_alert_policy(name)
            .await?
            .ok_or_else(|| Error::not_found("alert policy", name.to_string()))
    }

    pub async fn list_alert_policies(&self, env: &str, page: Page) -> Result<(Vec<AlertPolicy>, u64)> {
        page_of(
            self.reader(),
            alert_policy::Entity::find().filter(alert_policy::Column::Env.eq(env)),
            |select| select.order_by_asc(alert_policy::Column::Id),
            page,
            policy_of,
        )
        .await
    }

    /// Writes a changed policy if its revision is still `policy.revision`.
    pub async fn update_alert_policy(&self, policy: &AlertPolicy) -> Result<AlertPolicy> {
        let mut model = definition(policy);
        model.update_time = Set(now_micros());
        model.revision = Set(policy.revision + 1);
        let txn = self.writer().begin().await?;
        let result = alert_policy::Entity::update_many()
            .set(model)
            .filter(alert_policy::Column::Env.eq(&policy.name.env))
            .filter(alert_policy::Column::Id.eq(&policy.name.id))
            .filter(alert_policy::Column::Revision.eq(policy.revision))
            .exec(&txn)
            .await?;
        if result.rows_affected == 0 {
            drop(txn);
            return Err(self.concurrent_policy_change(policy).await);
        }
        txn.commit().await?;
        self.alert_policy_or_not_found(&policy.name).await
    }

    async fn concurrent_policy_change(&self, policy: &AlertPolicy) -> Error {
        match self.get_alert_policy(&policy.name).await {
            Ok(Some(current)) => Error::etag_mismatch(
                policy.name.to_string(),
                &crate::domain::etag::etag(policy.create_time, policy.revision),
                &crate::domain::etag::etag(current.create_time, current.revision),
            ),
            Ok(None) => Error::not_found("alert policy", policy.name.to_string()),
            Err(e) => e,
        }
    }

    /// Deletes a policy (its conditions and events with it) if its revision is unchanged.
    pub async fn delete_alert_policy(&self, policy: &AlertPolicy) -> Result<()> {
        let txn = self.writer().begin().await?;
        let result = alert_policy::Entity::delete_many()
            .filter(alert_policy::Column::Env.eq(&policy.name.env))
            .filter(alert_policy::Column::Id.eq(&policy.name.id))
            .filter(alert_policy::Column::Revision.eq(policy.revision))
            .exec(&txn)
            .await?;
        if result.rows_affected == 0 {
            drop(txn);
            return Err(self.concurrent_policy_change(policy).await);
        }
        alert_condition::Entity::delete_many()
            .filter(alert_condition::Column::Env.eq(&policy.name.env))
            .filter(alert_condition::Column::Policy.eq(&policy.name.id))
            .exec(&txn)
            .await?;
        alert_event::Entity::delete_many()
            .filter(alert_event::Column::Env.eq(&policy.name.env))
            .filter(alert_event::Column::Policy.eq(&policy.name.id))
            .exec(&txn)
            .await?;
        txn.commit().await?;
        Ok(())
    }

    pub async fn list_alert_events(&self, query: &AlertEventQuery<'_>) -> Result<(Vec<AlertEvent>, u64)> {
        let mut condition = Where::all().add(alert_event::Column::Env.eq(query.env));
        if let Some(policy) = query.policy {
            condition = condition.add(alert_event::Column::Policy.eq(policy));
        }
        if let Some(export) = query.export {
            condition = condition.add(alert_event::Column::Export.eq(export));
        }
        if let Some(c) = query.condition {
            condition = condition.add(alert_event::Column::Condition.eq(c.as_str()));
        }
        if let Some(state) = query.state {
            condition = condition.add(alert_event::Column::State.eq(state.as_str()));
        }
        page_of(
            self.reader(),
            alert_event::Entity::find().filter(condition),
            |select| select.order_by_desc(alert_event::Column::Seq),
            query.page,
            event_of,
        )
        .await
    }

    /// The shortest SCHEDULE_MISSED threshold among enabled policies (any environment), or
    /// `None` when no policy watches for it — then nothing needs checking.
    pub async fn shortest_schedule_missed_threshold(&self) -> Result<Option<Micros>> {
        let models = alert_policy::Entity::find()
            .filter(alert_policy::Column::Enabled.eq(true))
            .all(self.reader())
            .await?;
        Ok(models
            .into_iter()
            .filter_map(|m| policy_of(m).ok())
            .filter(|p| p.conditions.contains(&Condition::ScheduleMissed))
            .map(|p| p.schedule_missed_after_micros())
            .min())
    }

    /// Scheduled runs that have not started RUNNING (still queued, or waiting for
    /// dependencies) and were created — fired at their due time — before `created_before`,
    /// oldest first, at most `limit`.
    pub async fn scheduled_runs_not_started(&self, created_before: Micros, limit: u64) -> Result<Vec<UnstartedRun>> {
        let models = run::Entity::find()
            .filter(run::Column::Trigger.eq(RunTrigger::Schedule.number()))
            .filter(run::Column::State.is_in([RunState::Queued.number(), RunState::WaitingForDependencies.number()]))
            .filter(run::Column::CreateTime.lt(created_before))
            .order_by_asc(run::Column::CreateTime)
            .limit(limit)
            .all(self.reader())
            .await?;
        Ok(models
            .into_iter()
            .map(|m| UnstartedRun {
                export: ExportName::new(&m.env, &m.export),
                run: RunName {
                    env: m.env,
                    export: m.export,
                    id: m.id,
                }
                .to_string(),
                due_at: m.create_time,
            })
            .collect())
    }

    /// An occurrence of the export's schedule was not RUNNING `late_by` after it was due: it
    /// fired that late (`Lateness::FiredLate`, e.g. after downtime) or its run is still waiting
    /// (`Lateness::NotStarted`). Every policy watching the export for SCHEDULE_MISSED whose
    /// threshold that exceeds enters the condition (once).
    pub async fn schedule_missed(
        &self,
        export: &ExportName,
        late_by: Micros,
        run: Option<&str>,
        lateness: Lateness,
    ) -> Result<()> {
        let txn = self.untracked_writer().begin().await?;
        for policy in policies_watching(&txn, export).await? {
            if !policy.conditions.contains(&Condition::ScheduleMissed)
                || late_by <= policy.schedule_missed_after_micros()
                || is_firing(&txn, &policy, export, Condition::ScheduleMissed).await?
            {
                continue;
            }
            enter(&txn, &policy, export, Condition::ScheduleMissed).await?;
            insert_event(
                &txn,
                NewEvent {
                    policy: &policy,
                    export,
                    run: run.unwrap_or_default().to_string(),
                    condition: Condition::ScheduleMissed,
                    state: EventState::Firing,
                    message: format!(
                        "the scheduled run did not start within {} s of its due time ({} {} s late)",
                        policy.schedule_missed_after_micros() / 1_000_000,
                        match lateness {
                            Lateness::FiredLate => "fired",
                            Lateness::NotStarted => "still not running",
                        },
                        late_by / 1_000_000
                    ),
                },
            )
            .await?;
        }
        txn.commit().await?;
        Ok(())
    }

    /// Claims the oldest event due for delivery for `owner` until `lease_until`: one worker at
    /// a time per event, among all processes (a compare-and-set on its lease).
    pub async fn claim_alert_delivery(&self, owner: &str, lease_until: Micros) -> Result<Option<ClaimedDelivery>> {
        let now = now_micros();
        let candidates = alert_event::Entity::find()
            .filter(alert_event::Column::DeliveryState.eq(DeliveryState::Pending.as_str()))
            .filter(alert_event::Column::NextAttemptAt.lte(now))
            .filter(
                Where::any()
                    .add(alert_event::Column::LeaseExpiresAt.is_null())
                    .add(alert_event::Column::LeaseExpiresAt.lt(now)),
            )
            .order_by_asc(alert_event::Column::Seq)
            .limit(8)
            .all(self.primary())
            .await?;
        for model in candidates {
            let claimed = alert_event::Entity::update_many()
                .col_expr(alert_event::Column::LeaseOwner, Expr::val(owner))
                .col_expr(alert_event::Column::LeaseExpiresAt, Expr::val(lease_until))
                .filter(alert_event::Column::Seq.eq(model.seq))
                .filter(alert_event::Column::DeliveryState.eq(DeliveryState::Pending.as_str()))
                .filter(match model.lease_expires_at {
                    Some(expires) => Expr::col(alert_event::Column::LeaseExpiresAt).eq(expires),
                    None => Expr::col(alert_event::Column::LeaseExpiresAt).is_null(),
                })
                .exec(&self.untracked_writer())
                .await?;
            if claimed.rows_affected == 0 {
                continue;
            }
            let Some(policy) = self
                .get_alert_policy(&AlertPolicyName::new(&model.env, &model.policy))
                .await?
            else {
                continue;
            };
            let seq = model.seq;
            return Ok(Some(ClaimedDelivery {
                event: event_of(model)?,
                seq,
                connection: policy.connection,
            }));
        }
        Ok(None)
    }

    /// Records the outcome of one delivery attempt by `owner`: delivered; or failed, retried at
    /// `retry_at` (None: given up, FAILED).
    pub async fn record_alert_delivery(
        &self,
        seq: i64,
        owner: &str,
        delivered: bool,
        error: &str,
        retry_at: Option<Micros>,
    ) -> Result<()> {
        let state = match (delivered, retry_at) {
            (true, _) => DeliveryState::Delivered,
            (false, Some(_)) => DeliveryState::Pending,
            (false, None) => DeliveryState::Failed,
        };
        alert_event::Entity::update_many()
            .col_expr(alert_event::Column::DeliveryState, Expr::val(state.as_str()))
            .col_expr(
                alert_event::Column::DeliveryAttempts,
                Expr::col(alert_event::Column::DeliveryAttempts).add(1),
            )
            .col_expr(alert_event::Column::LastDeliveryError, Expr::val(error))
            .col_expr(alert_event::Column::NextAttemptAt, Expr::val(retry_at.unwrap_or(0)))
            .col_expr(alert_event::Column::LeaseOwner, Expr::val(Option::<String>::None))
            .col_expr(alert_event::Column::LeaseExpiresAt, Expr::val(Option::<i64>::None))
            .filter(alert_event::Column::Seq.eq(seq))
            .filter(alert_event::Column::LeaseOwner.eq(owner))
            .exec(&self.untracked_writer())
            .await?;
        Ok(())
    }
}
