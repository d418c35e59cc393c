//! AlertService: in the protos, not built yet. Every RPC authenticates, parses its names and
//! asks the permission table like any other, then answers UNIMPLEMENTED.

use tonic::{Request, Response, Status};

use super::{not_built, principal, required, respond};
use crate::auth::Principal;
use crate::auth::policy::{self, Action, Facts};
use crate::domain::names::{AlertEventParent, AlertPolicyName, EnvironmentName};
use crate::error::Result;
use crate::pb;
use crate::pb::alert_service_server::AlertService;

const WHY: &str = "alert policies and alert events are not built";

/// Holds nothing yet: nothing is stored until the service is built.
#[derive(Debug, Default, Clone, Copy)]
pub struct AlertApi;

/// The policy's answer for `env`, then UNIMPLEMENTED for `method`.
fn refuse<T>(principal: &Principal, env: &str, action: Action, method: &str) -> Result<T> {
    policy::authorize(principal, env, action, Facts::default())?;
    Err(not_built(&format!("AlertService/{method}"), WHY))
}

fn create(principal: Principal, request: pb::CreateAlertPolicyRequest) -> Result<pb::AlertPolicy> {
    let parent = EnvironmentName::parse("parent", &request.parent)?;
    refuse(&principal, &parent.env, Action::CreateAlertPolicy, "CreateAlertPolicy")
}

fn get(principal: Principal, request: pb::GetAlertPolicyRequest) -> Result<pb::AlertPolicy> {
    let name = AlertPolicyName::parse("name", &request.name)?;
    refuse(&principal, &name.env, Action::GetAlertPolicy, "GetAlertPolicy")
}

fn list(principal: Principal, request: pb::ListAlertPoliciesRequest) -> Result<pb::ListAlertPoliciesResponse> {
    let parent = EnvironmentName::parse("parent", &request.parent)?;
    refuse(&principal, &parent.env, Action::ListAlertPolicies, "ListAlertPolicies")
}

fn update(principal: Principal, request: pb::UpdateAlertPolicyRequest) -> Result<pb::AlertPolicy> {
    let input = required("alert_policy", &request.alert_policy)?;
    let name = AlertPolicyName::parse("alert_policy.name", &input.name)?;
    refuse(&principal, &name.env, Action::UpdateAlertPolicy, "UpdateAlertPolicy")
}

fn delete(principal: Principal, request: pb::DeleteAlertPolicyRequest) -> Result<pb::DeleteAlertPolicyResponse> {
    let name = AlertPolicyName::parse("name", &request.name)?;
    refuse(&principal, &name.env, Action::DeleteAlertPolicy, "DeleteAlertPolicy")
}

fn list_events(principal: Principal, request: pb::ListAlertEventsRequest) -> Result<pb::ListAlertEventsResponse> {
    let parent = AlertEventParent::parse("parent", &request.parent)?;
    refuse(&principal, &parent.env, Action::ListAlertEvents, "ListAlertEvents")
}

type Reply<T> = std::result::Result<Response<T>, Status>;

#[tonic::async_trait]
impl AlertService for AlertApi {
    async fn create_alert_policy(&self, request: Request<pb::CreateAlertPolicyRequest>) -> Reply<pb::AlertPolicy> {
        let principal = principal(&request)?;
        respond(std::future::ready(create(principal, request.into_inner()))).await
    }
    async fn get_alert_policy(&self, request: Request<pb::GetAlertPolicyRequest>) -> Reply<pb::AlertPolicy> {
        let principal = principal(&request)?;
        respond(std::future::ready(get(principal, request.into_inner()))).await
    }
    async fn list_alert_policies(
        &self,
        request: Request<pb::ListAlertPoliciesRequest>,
    ) -> Reply<pb::ListAlertPoliciesResponse> {
        let principal = principal(&request)?;
        respond(std::future::ready(list(principal, request.into_inner()))).await
    }
    async fn update_alert_policy(&self, request: Request<pb::UpdateAlertPolicyRequest>) -> Reply<pb::AlertPolicy> {
        let principal = principal(&request)?;
        respond(std::future::ready(update(principal, request.into_inner()))).await
    }
    async fn delete_alert_policy(
        &self,
        request: Request<pb::DeleteAlertPolicyRequest>,
    ) -> Reply<pb::DeleteAlertPolicyResponse> {
        let principal = principal(&request)?;
        respond(std::future::ready(delete(principal, request.into_inner()))).await
    }
    async fn list_alert_events(
        &self,
        request: Request<pb::ListAlertEventsRequest>,
    ) -> Reply<pb::ListAlertEventsResponse> {
        let principal = principal(&request)?;
        respond(std::future::ready(list_events(principal, request.into_inner()))).await
    }
}
