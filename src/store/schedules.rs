//! What the scheduler reads and advances: exports' and environments' next run times.
//!
//! Advancing is a compare-and-set on the stored next time, so that an occurrence fires once
//! even if two schedulers (an old leader that has not noticed losing its lease, and a new
//! one) look at it at the same moment.

use sea_orm::sea_query::{Expr, Func};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use super::Store;
use super::models::{environment, export};
use crate::domain::export::{ExportState, ScheduleTimes};
use crate::domain::names::ExportName;
use crate::domain::schedule::{Schedule, Trigger};
use crate::domain::time::{Micros, to_datetime};
use crate::error::Result;

/// An export whose schedule has come due.
#[derive(Debug, Clone)]
pub struct DueExport {
    pub name: ExportName,
    pub schedule: Schedule,
    pub due_at: Micros,
}

/// An environment whose system refresh has come due.
#[derive(Debug, Clone)]
pub struct DueEnvironment {
    pub id: String,
    pub schedule: Schedule,
    pub due_at: Micros,
}

impl Store {
    /// The earliest next run time of any timed export schedule or environment system refresh.
    pub async fn next_due_time(&self) -> Result<Option<Micros>> {
        let exports: Option<Option<i64>> = export::Entity::find()
            .select_only()
            .column_as(Expr::expr(Func::min(Expr::col(export::Column::NextRunAt))), "next")
            .filter(export::Column::NextRunAt.is_not_null())
            .into_tuple()
            .one(self.reader())
            .await?;
        let environments: Option<Option<i64>> = environment::Entity::find()
            .select_only()
            .column_as(
                Expr::expr(Func::min(Expr::col(environment::Column::NextSystemRefreshAt))),
                "next",
            )
            .filter(environment::Column::NextSystemRefreshAt.is_not_null())
            .into_tuple()
            .one(self.reader())
            .await?;
        Ok([exports.flatten(), environments.flatten()].into_iter().flatten().min())
    }

    /// Exports due at `now` (oldest first), at most `limit`.
    pub async fn due_exports(&self, now: Micros, limit: u64) -> Result<Vec<DueExport>> {
        let models = export::Entity::find()
            .filter(export::Column::NextRunAt.lte(now))
            .filter(export::Column::State.eq(ExportState::Active.as_str()))
            .order_by_asc(export::Column::NextRunAt)
            .limit(limit)
            .all(self.primary())
            .await?;
        Ok(models
            .into_iter()
            .filter_map(|m| {
                let schedule: Schedule = serde_json::from_str(&m.schedule).ok()?;
                Some(DueExport {
                    name: ExportName::new(&m.env, &m.id),
                    schedule,
                    due_at: m.next_run_at?,
                })
            })
            .collect())
    }

    /// Moves an export's next run time past `now`, if it is still `due_at`. Returns whether
    /// this caller advanced it (and so owns this occurrence). Missed occurrences collapse into
    /// the one being fired: the next time is computed from now, not from the missed one.
    pub async fn advance_export_schedule(&self, due: &DueExport, now: Micros) -> Result<bool> {
        let times = ScheduleTimes::of(&due.schedule, ExportState::Active, to_datetime(now));
        let result = export::Entity::update_many()
            .col_expr(export::Column::NextRunAt, Expr::val(times.next_run_at))
            .col_expr(export::Column::ScheduleSort, Expr::val(times.sort_key))
            .filter(export::Column::Env.eq(&due.name.env))
            .filter(export::Column::Id.eq(&due.name.id))
            .filter(export::Column::NextRunAt.eq(due.due_at))
            .exec(&self.writer())
            .await?;
        Ok(result.rows_affected == 1)
    }

    pub async fn due_environments(&self, now: Micros) -> Result<Vec<DueEnvironment>> {
        let models = environment::Entity::find()
            .filter(environment::Column::NextSystemRefreshAt.lte(now))
            .all(self.primary())
            .await?;
        Ok(models
            .into_iter()
            .filter_map(|m| {
                let schedule: Schedule = serde_json::from_str(m.system_refresh_schedule.as_deref()?).ok()?;
                Some(DueEnvironment {
                    id: m.id,
                    schedule,
                    due_at: m.next_system_refresh_at?,
                })
            })
            .collect())
    }

    /// Like [`Store::advance_export_schedule`], for an environment's system refresh.
    pub async fn advance_environment_schedule(&self, due: &DueEnvironment, now: Micros) -> Result<bool> {
        let next = due
            .schedule
            .next_run_time(to_datetime(now))
            .map(crate::domain::time::from_datetime);
        let result = environment::Entity::update_many()
            .col_expr(environment::Column::NextSystemRefreshAt, Expr::val(next))
            .filter(environment::Column::Id.eq(&due.id))
            .filter(environment::Column::NextSystemRefreshAt.eq(due.due_at))
            .exec(&self.writer())
            .await?;
        Ok(result.rows_affected == 1)
    }

    /// Active exports of an environment whose schedule is on and follows the system refresh.
    pub async fn system_refresh_exports(&self, env: &str) -> Result<Vec<ExportName>> {
        let models = export::Entity::find()
            .filter(export::Column::Env.eq(env))
            .filter(export::Column::State.eq(ExportState::Active.as_str()))
            .all(self.primary())
            .await?;
        Ok(models
            .into_iter()
            .filter(|m| {
                serde_json::from_str::<Schedule>(&m.schedule)
                    .is_ok_and(|s| s.enabled && s.trigger == Trigger::SystemRefresh)
            })
            .map(|m| ExportName::new(&m.env, &m.id))
            .collect())
    }
}
