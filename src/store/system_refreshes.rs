//! System refreshes: one row per refresh of an environment's whole catalog.

use sea_orm::sea_query::Expr;
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter};

use super::Store;
use super::models::system_refresh::{ActiveModel, Column, Entity as Table, Model};
use crate::domain::names::SystemRefreshName;
use crate::domain::time::{Micros, now_micros};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SystemRefreshState {
    Running,
    Succeeded,
    Failed,
}

impl SystemRefreshState {
    pub fn as_str(self) -> &'static str {
        match self {
            SystemRefreshState::Running => "RUNNING",
            SystemRefreshState::Succeeded => "SUCCEEDED",
            SystemRefreshState::Failed => "FAILED",
        }
    }

    fn parse(text: &str) -> Self {
        match text {
            "SUCCEEDED" => SystemRefreshState::Succeeded,
            "FAILED" => SystemRefreshState::Failed,
            _ => SystemRefreshState::Running,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SystemRefresh {
    pub name: SystemRefreshName,
    pub state: SystemRefreshState,
    pub start_time: Micros,
    pub end_time: Option<Micros>,
    pub error: Option<String>,
    pub segments_refreshed: i64,
    pub runs: Vec<String>,
}

fn to_domain(model: Model) -> SystemRefresh {
    SystemRefresh {
        name: SystemRefreshName::new(&model.env, &model.id),
        state: SystemRefreshState::parse(&model.state),
        start_time: model.start_time,
        end_time: model.end_time,
        error: model.error,
        segments_refreshed: model.segments_refreshed,
        runs: serde_json::from_str(&model.runs).unwrap_or_default(),
    }
}

impl Store {
    /// Records a new RUNNING system refresh, unless one is already running in the environment.
    pub async fn start_system_refresh(&self, name: &SystemRefreshName) -> Result<SystemRefresh> {
        let txn = self.writer().begin().await?;
        let running = Table::find()
            .filter(Column::Env.eq(&name.env))
            .filter(Column::State.eq(SystemRefreshState::Running.as_str()))
            .one(&txn)
            .await?;
        if let Some(running) = running {
            let running = SystemRefreshName::new(&running.env, &running.id).to_string();
            return Err(Error::precondition(
                "SYSTEM_REFRESH_RUNNING",
                format!(
                    "a system refresh is already running in environments/{}: {running}",
                    name.env
                ),
            )
            .with_meta("running", running.clone())
            .with_precondition("SYSTEM_REFRESH_RUNNING", running, "wait for it to finish"));
        }
        let model = ActiveModel {
            env: Set(name.env.clone()),
            id: Set(name.id.clone()),
            state: Set(SystemRefreshState::Running.as_str().to_string()),
            start_time: Set(now_micros()),
            end_time: Set(None),
            error: Set(None),
            segments_refreshed: Set(0),
            runs: Set("[]".to_string()),
        };
        Table::insert(model).exec(&txn).await?;
        txn.commit().await?;
        self.system_refresh_or_not_found(name).await
    }

    pub async fn get_system_refresh(&self, name: &SystemRefreshName) -> Result<Option<SystemRefresh>> {
        Ok(Table::find_by_id((name.env.clone(), name.id.clone()))
            .one(self.primary())
            .await?
            .map(to_domain))
    }

    pub async fn system_refresh_or_not_found(&self, name: &SystemRefreshName) -> Result<SystemRefresh> {
        self.get_system_refresh(name)
            .await?
            .ok_or_else(|| Error::not_found("system refresh", name.to_string()))
    }

    pub async fn system_refresh_progress(&self, name: &SystemRefreshName, segments_refreshed: i64) -> Result<()> {
        Table::update_many()
            .col_expr(Column::SegmentsRefreshed, Expr::val(segments_refreshed))
            .filter(Column::Env.eq(&name.env))
            .filter(Column::Id.eq(&name.id))
            .exec(&self.writer())
            .await?;
        Ok(())
    }

    pub async fn finish_system_refresh(
        &self,
        name: &SystemRefreshName,
        state: SystemRefreshState,
        error: Option<String>,
        runs: &[String],
    ) -> Result<SystemRefresh> {
        Table::update_many()
            .col_expr(Column::State, Expr::val(state.as_str()))
            .col_expr(Column::EndTime, Expr::val(now_micros()))
            .col_expr(Column::Error, Expr::val(error))
            .col_expr(
                Column::Runs,
                Expr::val(serde_json::to_string(runs).expect("names serialize")),
            )
            .filter(Column::Env.eq(&name.env))
            .filter(Column::Id.eq(&name.id))
            .exec(&self.writer())
            .await?;
        self.system_refresh_or_not_found(name).await
    }

    /// System refreshes left RUNNING by a process that stopped; they are resumed at start.
    pub async fn running_system_refreshes(&self) -> Result<Vec<SystemRefresh>> {
        Ok(Table::find()
            .filter(Column::State.eq(SystemRefreshState::Running.as_str()))
            .all(self.primary())
            .await?
            .into_iter()
            .map(to_domain)
            .collect())
    }
}
