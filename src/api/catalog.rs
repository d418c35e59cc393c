//! CatalogService: environments, entities and records, segments, refresh state.

use tonic::{Request, Response, Status, Streaming};

use super::{State, convert, mask, principal, required, respond};
use crate::api::status::to_status;
use crate::auth::Principal;
use crate::auth::policy::{self, Action, Facts};
use crate::domain::names::EnvironmentName;
use crate::domain::paging;
use crate::domain::schedule::Trigger;
use crate::domain::time::{from_datetime, now_micros, to_datetime};
use crate::error::{Error, Result};
use crate::pb;
use crate::pb::catalog_service_server::CatalogService;

pub struct CatalogApi {
    state: State,
}

impl CatalogApi {
    pub fn new(state: State) -> Self {
        CatalogApi { state }
    }

    async fn get_environment_(
        &self,
        principal: Principal,
        request: pb::GetEnvironmentRequest,
    ) -> Result<pb::Environment> {
        let name = EnvironmentName::parse("name", &request.name)?;
        let role = policy::authorize(&principal, &name.env, Action::GetEnvironment, Facts::default())?;
        let env = self
            .state
            .store
            .get_environment(&name.env)
            .await?
            .ok_or_else(|| Error::not_found("environment", name.to_string()))?;
        Ok(convert::environment(&env, role.as_str()))
    }

    async fn list_environments_(
        &self,
        principal: Principal,
        request: pb::ListEnvironmentsRequest,
    ) -> Result<pb::ListEnvironmentsResponse> {
        let fingerprint = paging::fingerprint(&["environments"]);
        let page = paging::parse(request.page_size, &request.page_token, &fingerprint)?;
        let ids: Option<Vec<String>> = (!principal.has_wildcard()).then(|| principal.roles.keys().cloned().collect());
        let (items, total) = self
            .state
            .store
            .list_environments(ids.as_deref(), page.offset, page.limit)
            .await?;
        Ok(pb::ListEnvironmentsResponse {
            next_page_token: paging::next_token(page, items.len(), total, &fingerprint),
            environments: items
                .iter()
                .map(|env| {
                    let role = principal.role_in(&env.id).map(|r| r.as_str()).unwrap_or_default();
                    convert::environment(env, role)
                })
                .collect(),
        })
    }

    async fn update_environment_(
        &self,
        principal: Principal,
        request: pb::UpdateEnvironmentRequest,
    ) -> Result<pb::Environment> {
        let input = required("environment", &request.environment)?;
        let name = EnvironmentName::parse("environment.name", &input.name)?;
        let role = policy::authorize(&principal, &name.env, Action::UpdateEnvironment, Facts::default())?;
        let paths = mask::paths(
            &request.update_mask,
            &["display_name", "system_refresh_schedule"],
            &[],
            || {
                let mut implied = Vec::new();
                if !input.display_name.is_empty() {
                    implied.push("display_name".to_string());
                }
                if input.system_refresh_schedule.is_some() {
                    implied.push("system_refresh_schedule".to_string());
                }
                implied
            },
        )?;
        let mut env = self
            .state
            .store
            .get_environment(&name.env)
            .await?
            .ok_or_else(|| Error::not_found("environment", name.to_string()))?;
        for path in &paths {
            match path.as_str() {
                "display_name" => {
                    if let Some(v) =
                        crate::domain::connection::check_display_name("environment.display_name", &input.display_name)
                    {
                        return Err(Error::invalid_fields(vec![v]));
                    }
                    env.display_name = input.display_name.trim().to_string();
                }
                "system_refresh_schedule" => {
                    let field = "environment.system_refresh_schedule";
                    env.system_refresh_schedule = match &input.system_refresh_schedule {
                        None => None,
                        Some(pb_schedule) if !pb_schedule.enabled && pb_schedule.trigger.is_none() => None,
                        Some(pb_schedule) => {
                            let schedule = convert::schedule_from_pb(field, pb_schedule, None)?;
                            if schedule.trigger == Trigger::SystemRefresh {
                                return Err(Error::invalid(
                                    format!("{field}.system_refresh"),
                                    "the system refresh itself runs on a `recurrence` or a `cron` trigger",
                                ));
                            }
                            Some(schedule)
                        }
                    };
                    env.next_system_refresh_at = env
                        .system_refresh_schedule
                        .as_ref()
                        .and_then(|s| s.next_run_time(to_datetime(now_micros())))
                        .map(from_datetime);
                }
                _ => unreachable!("mask::paths admits only the listed paths"),
            }
        }
        let updated = self.state.store.update_environment(&env).await?;
        Ok(convert::environment(&updated, role.as_str()))
    }
}

fn not_yet(method: &str) -> Status {
    to_status(Error::unimplemented(
        method,
        format!("{method} is not implemented in this version of exportd yet"),
    ))
}

type Reply<T> = std::result::Result<Response<T>, Status>;

#[tonic::async_trait]
impl CatalogService for CatalogApi {
    async fn get_environment(&self, request: Request<pb::GetEnvironmentRequest>) -> Reply<pb::Environment> {
        let principal = principal(&request)?;
        respond(self.get_environment_(principal, request.into_inner())).await
    }
    async fn update_environment(&self, request: Request<pb::UpdateEnvironmentRequest>) -> Reply<pb::Environment> {
        let principal = principal(&request)?;
        respond(self.update_environment_(principal, request.into_inner())).await
    }
    async fn list_environments(
        &self,
        request: Request<pb::ListEnvironmentsRequest>,
    ) -> Reply<pb::ListEnvironmentsResponse> {
        let principal = principal(&request)?;
        respond(self.list_environments_(principal, request.into_inner())).await
    }
    async fn create_entity(&self, _: Request<pb::CreateEntityRequest>) -> Reply<pb::Entity> {
        Err(not_yet("CreateEntity"))
    }
    async fn get_entity(&self, _: Request<pb::GetEntityRequest>) -> Reply<pb::Entity> {
        Err(not_yet("GetEntity"))
    }
    async fn list_entities(&self, _: Request<pb::ListEntitiesRequest>) -> Reply<pb::ListEntitiesResponse> {
        Err(not_yet("ListEntities"))
    }
    async fn delete_entity(&self, _: Request<pb::DeleteEntityRequest>) -> Reply<pb::DeleteEntityResponse> {
        Err(not_yet("DeleteEntity"))
    }
    async fn write_records(&self, _: Request<Streaming<pb::WriteRecordsRequest>>) -> Reply<pb::WriteRecordsResponse> {
        Err(not_yet("WriteRecords"))
    }
    async fn create_segment(&self, _: Request<pb::CreateSegmentRequest>) -> Reply<pb::Segment> {
        Err(not_yet("CreateSegment"))
    }
    async fn get_segment(&self, _: Request<pb::GetSegmentRequest>) -> Reply<pb::Segment> {
        Err(not_yet("GetSegment"))
    }
    async fn list_segments(&self, _: Request<pb::ListSegmentsRequest>) -> Reply<pb::ListSegmentsResponse> {
        Err(not_yet("ListSegments"))
    }
    async fn update_segment(&self, _: Request<pb::UpdateSegmentRequest>) -> Reply<pb::Segment> {
        Err(not_yet("UpdateSegment"))
    }
    async fn delete_segment(&self, _: Request<pb::DeleteSegmentRequest>) -> Reply<pb::DeleteSegmentResponse> {
        Err(not_yet("DeleteSegment"))
    }
    async fn set_segment_members(&self, _: Request<Streaming<pb::SetSegmentMembersRequest>>) -> Reply<pb::Segment> {
        Err(not_yet("SetSegmentMembers"))
    }
    async fn list_eligible_segments(
        &self,
        _: Request<pb::ListEligibleSegmentsRequest>,
    ) -> Reply<pb::ListEligibleSegmentsResponse> {
        Err(not_yet("ListEligibleSegments"))
    }
    async fn start_refresh(&self, _: Request<pb::StartRefreshRequest>) -> Reply<pb::RefreshState> {
        Err(not_yet("StartRefresh"))
    }
    async fn complete_refresh(&self, _: Request<pb::CompleteRefreshRequest>) -> Reply<pb::RefreshState> {
        Err(not_yet("CompleteRefresh"))
    }
    async fn run_system_refresh(&self, _: Request<pb::RunSystemRefreshRequest>) -> Reply<pb::SystemRefresh> {
        Err(not_yet("RunSystemRefresh"))
    }
    async fn get_system_refresh(&self, _: Request<pb::GetSystemRefreshRequest>) -> Reply<pb::SystemRefresh> {
        Err(not_yet("GetSystemRefresh"))
    }
}
