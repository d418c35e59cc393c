//! AuditService: in the protos, not built yet. ListAuditEvents authenticates, parses its parent
//! and asks the permission table like any other RPC, then answers UNIMPLEMENTED.

use tonic::{Request, Response, Status};

use super::{not_built, principal, respond};
use crate::auth::Principal;
use crate::auth::policy::{self, Action, Facts};
use crate::domain::names::EnvironmentName;
use crate::error::Result;
use crate::pb;
use crate::pb::audit_service_server::AuditService;

/// Holds nothing yet: no audit trail is recorded until the service is built.
#[derive(Debug, Default, Clone, Copy)]
pub struct AuditApi;

fn list(principal: Principal, request: pb::ListAuditEventsRequest) -> Result<pb::ListAuditEventsResponse> {
    let parent = EnvironmentName::parse("parent", &request.parent)?;
    policy::authorize(&principal, &parent.env, Action::ListAuditEvents, Facts::default())?;
    Err(not_built(
        "AuditService/ListAuditEvents",
        "the audit trail is not recorded yet",
    ))
}

#[tonic::async_trait]
impl AuditService for AuditApi {
    async fn list_audit_events(
        &self,
        request: Request<pb::ListAuditEventsRequest>,
    ) -> std::result::Result<Response<pb::ListAuditEventsResponse>, Status> {
        let principal = principal(&request)?;
        respond(std::future::ready(list(principal, request.into_inner()))).await
    }
}
