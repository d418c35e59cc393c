//! CatalogService: what exports read. One file per thing it serves: `environments`,
//! `entities`, `records` (WriteRecords), `segments` (with their members), `eligibility`
//! (ListEligibleSegments) and `refresh` (refresh states and system refreshes); this file holds
//! the service itself, which hands each RPC to its file.

mod eligibility;
mod entities;
mod environments;
mod records;
mod refresh;
mod segments;

use tonic::{Request, Response, Status, Streaming};

use crate::api::{State, principal, respond, stream_principal};
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

    pub(super) async fn environment_or_not_found(&self, env: &str) -> Result<crate::domain::environment::Environment> {
        self.state
            .store
            .get_environment(env)
            .await?
            .ok_or_else(|| Error::not_found("environment", format!("environments/{env}")))
    }
}

/// A failure while reading a client stream: a message the codec refused (malformed, out of
/// bounds), one over the size limit, or the client going away; reported with its own code and
/// details.
fn stream_error(status: Status) -> Error {
    crate::api::status::error_from_status(&status)
}

pub(super) type Reply<T> = std::result::Result<Response<T>, Status>;

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
    async fn create_entity(&self, request: Request<pb::CreateEntityRequest>) -> Reply<pb::Entity> {
        let principal = principal(&request)?;
        respond(self.create_entity_(principal, request.into_inner())).await
    }
    async fn get_entity(&self, request: Request<pb::GetEntityRequest>) -> Reply<pb::Entity> {
        let principal = principal(&request)?;
        respond(self.get_entity_(principal, request.into_inner())).await
    }
    async fn list_entities(&self, request: Request<pb::ListEntitiesRequest>) -> Reply<pb::ListEntitiesResponse> {
        let principal = principal(&request)?;
        respond(self.list_entities_(principal, request.into_inner())).await
    }
    async fn update_entity(&self, request: Request<pb::UpdateEntityRequest>) -> Reply<pb::Entity> {
        let principal = principal(&request)?;
        respond(self.update_entity_(principal, request.into_inner())).await
    }
    async fn delete_entity(&self, request: Request<pb::DeleteEntityRequest>) -> Reply<pb::DeleteEntityResponse> {
        let principal = principal(&request)?;
        respond(self.delete_entity_(principal, request.into_inner())).await
    }

    async fn write_records(
        &self,
        request: Request<Streaming<pb::WriteRecordsRequest>>,
    ) -> Reply<pb::WriteRecordsResponse> {
        let principal = stream_principal(&request)?;
        self.write_records_(principal, request.into_inner()).await
    }

    async fn create_segment(&self, request: Request<pb::CreateSegmentRequest>) -> Reply<pb::Segment> {
        let principal = principal(&request)?;
        respond(self.create_segment_(principal, request.into_inner())).await
    }
    async fn get_segment(&self, request: Request<pb::GetSegmentRequest>) -> Reply<pb::Segment> {
        let principal = principal(&request)?;
        respond(self.get_segment_(principal, request.into_inner())).await
    }
    async fn list_segments(&self, request: Request<pb::ListSegmentsRequest>) -> Reply<pb::ListSegmentsResponse> {
        let principal = principal(&request)?;
        respond(self.list_segments_(principal, request.into_inner())).await
    }
    async fn update_segment(&self, request: Request<pb::UpdateSegmentRequest>) -> Reply<pb::Segment> {
        let principal = principal(&request)?;
        respond(self.update_segment_(principal, request.into_inner())).await
    }
    async fn delete_segment(&self, request: Request<pb::DeleteSegmentRequest>) -> Reply<pb::DeleteSegmentResponse> {
        let principal = principal(&request)?;
        respond(self.delete_segment_(principal, request.into_inner())).await
    }
    async fn set_segment_members(
        &self,
        request: Request<Streaming<pb::SetSegmentMembersRequest>>,
    ) -> Reply<pb::Segment> {
        let principal = stream_principal(&request)?;
        respond(self.set_members(principal, request.into_inner())).await
    }
    async fn list_eligible_segments(
        &self,
        request: Request<pb::ListEligibleSegmentsRequest>,
    ) -> Reply<pb::ListEligibleSegmentsResponse> {
        let principal = principal(&request)?;
        respond(self.list_eligible_(principal, request.into_inner())).await
    }
    async fn start_refresh(&self, request: Request<pb::StartRefreshRequest>) -> Reply<pb::RefreshState> {
        let principal = principal(&request)?;
        respond(self.start_refresh_(principal, request.into_inner())).await
    }
    async fn complete_refresh(&self, request: Request<pb::CompleteRefreshRequest>) -> Reply<pb::RefreshState> {
        let principal = principal(&request)?;
        respond(self.complete_refresh_(principal, request.into_inner())).await
    }
    async fn run_system_refresh(&self, request: Request<pb::RunSystemRefreshRequest>) -> Reply<pb::SystemRefresh> {
        let principal = principal(&request)?;
        respond(self.run_system_refresh_(principal, request.into_inner())).await
    }
    async fn get_system_refresh(&self, request: Request<pb::GetSystemRefreshRequest>) -> Reply<pb::SystemRefresh> {
        let principal = principal(&request)?;
        respond(self.get_system_refresh_(principal, request.into_inner())).await
    }
}
