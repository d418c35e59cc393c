//! Refresh states of entities and segments, and the environment's system refreshes.

use super::CatalogApi;
use crate::api::convert;
use crate::auth::Principal;
use crate::auth::policy::{self, Action, Facts};
use crate::domain::names::{EntityName, EnvironmentName, SegmentName, SystemRefreshName};
use crate::error::{Error, Result};
use crate::pb;

/// An entity or a segment, the two things a refresh can be about.
enum Refreshable {
    Entity(EntityName),
    Segment(SegmentName),
}

impl Refreshable {
    fn parse(field: &str, name: &str) -> Result<Refreshable> {
        if name.contains("/segments/") {
            SegmentName::parse(field, name).map(Refreshable::Segment)
        } else if name.contains("/entities/") {
            EntityName::parse(field, name).map(Refreshable::Entity)
        } else {
            Err(Error::invalid(
                field,
                format!("'{name}' is neither an entity nor a segment name"),
            ))
        }
    }

    fn env(&self) -> &str {
        match self {
            Refreshable::Entity(n) => &n.env,
            Refreshable::Segment(n) => &n.env,
        }
    }
}

fn refresh_state(name: String, refreshing: bool, last: Option<i64>) -> pb::RefreshState {
    pb::RefreshState {
        name,
        refreshing,
        last_refresh_time: convert::opt_timestamp(last),
    }
}

impl CatalogApi {
    pub(super) async fn start_refresh_(
        &self,
        principal: Principal,
        request: pb::StartRefreshRequest,
    ) -> Result<pb::RefreshState> {
        let target = Refreshable::parse("name", &request.name)?;
        policy::authorize(&principal, target.env(), Action::StartRefresh, Facts::default())?;
        Ok(match target {
            Refreshable::Entity(name) => {
                let e = self.state.store.set_entity_refreshing(&name, true).await?;
                refresh_state(name.to_string(), e.refreshing, e.last_refresh_time)
            }
            Refreshable::Segment(name) => {
                let s = self.state.store.set_segment_refreshing(&name, true).await?;
                refresh_state(name.to_string(), s.refreshing, s.last_refresh_time)
            }
        })
    }

    pub(super) async fn complete_refresh_(
        &self,
        principal: Principal,
        request: pb::CompleteRefreshRequest,
    ) -> Result<pb::RefreshState> {
        let target = Refreshable::parse("name", &request.name)?;
        policy::authorize(&principal, target.env(), Action::CompleteRefresh, Facts::default())?;
        let env = target.env().to_string();
        let state = match target {
            Refreshable::Entity(name) => {
                let e = self.state.store.set_entity_refreshing(&name, false).await?;
                refresh_state(name.to_string(), e.refreshing, e.last_refresh_time)
            }
            Refreshable::Segment(name) => {
                let segment = self.state.store.segment_or_not_found(&name).await?;
                if !segment.refreshing {
                    return Err(crate::store::entities::not_refreshing(&name.to_string()));
                }
                // A rule segment's refresh is its recomputation.
                let s = self.state.engine.recompute_segment(&segment, true).await?;
                refresh_state(name.to_string(), s.refreshing, s.last_refresh_time)
            }
        };
        // Completing one refresh only releases runs that were waiting for it; it starts none.
        self.state.engine.release_waiting_runs(&env).await?;
        Ok(state)
    }

    pub(super) async fn run_system_refresh_(
        &self,
        principal: Principal,
        request: pb::RunSystemRefreshRequest,
    ) -> Result<pb::SystemRefresh> {
        let parent = EnvironmentName::parse("parent", &request.parent)?;
        policy::authorize(&principal, &parent.env, Action::RunSystemRefresh, Facts::default())?;
        self.environment_or_not_found(&parent.env).await?;
        let refresh = self.state.engine.run_system_refresh(&parent).await?;
        tracing::info!(refresh = %refresh.name, "system refresh started");
        Ok(convert::system_refresh(&refresh))
    }

    pub(super) async fn get_system_refresh_(
        &self,
        principal: Principal,
        request: pb::GetSystemRefreshRequest,
    ) -> Result<pb::SystemRefresh> {
        let name = SystemRefreshName::parse("name", &request.name)?;
        policy::authorize(&principal, &name.env, Action::GetSystemRefresh, Facts::default())?;
        Ok(convert::system_refresh(
            &self.state.store.system_refresh_or_not_found(&name).await?,
        ))
    }
}
