//! AuditService: lists the audit log (PRODUCT.md §15), which the request path writes
//! (`crate::audit`). Admins only.

use tonic::{Request, Response, Status};

use super::{State, convert, pages, principal, respond};
use crate::auth::Principal;
use crate::auth::policy::{self, Action, Facts};
use crate::domain::audit::AuditEvent;
use crate::domain::list_query::{FieldKind, FilterField, QueryError, parse_filter, parse_order_by};
use crate::domain::names::EnvironmentName;
use crate::domain::paging;
use crate::error::{Error, Result};
use crate::pb;
use crate::pb::audit_service_server::AuditService;
use crate::store::audit::AuditQuery;

const FILTER_FIELDS: &[FilterField] = &[
    FilterField {
        name: "actor",
        kind: FieldKind::Text,
        allowed: &[],
    },
    FilterField {
        name: "method",
        kind: FieldKind::Text,
        allowed: &[],
    },
    FilterField {
        name: "resource",
        kind: FieldKind::Text,
        allowed: &[],
    },
    FilterField {
        name: "time",
        kind: FieldKind::Time,
        allowed: &[],
    },
];

pub struct AuditApi {
    state: State,
}

impl AuditApi {
    pub fn new(state: State) -> Self {
        AuditApi { state }
    }

    async fn list(
        &self,
        principal: Principal,
        request: pb::ListAuditEventsRequest,
    ) -> Result<pb::ListAuditEventsResponse> {
        let parent = EnvironmentName::parse("parent", &request.parent)?;
        policy::authorize(&principal, &parent.env, Action::ListAuditEvents, Facts::default())?;
        let filter = parse_filter(&request.filter, FILTER_FIELDS, &[]).map_err(|e| unparsable("filter", e))?;
        // Newest first unless asked otherwise; `time` alone is oldest first.
        let ascending = if request.order_by.trim().is_empty() {
            false
        } else {
            let keys = parse_order_by(&request.order_by, &["time"], "time").map_err(|e| unparsable("order_by", e))?;
            keys.first().is_some_and(|key| !key.desc)
        };
        let fingerprint = paging::fingerprint(&[&request.parent, &request.filter, &request.order_by]);
        let page = paging::parse(request.page_size, &request.page_token, &fingerprint)?;
        if self.state.store.get_environment(&parent.env).await?.is_none() {
            return Err(Error::not_found("environment", parent.to_string()));
        }
        let query = AuditQuery {
            env: &parent.env,
            filter: filter.as_ref(),
            ascending,
            page,
        };
        let (items, total) = self.state.store.list_audit_events(&query).await?;
        let mut audit_events: Vec<pb::AuditEvent> = items.iter().map(to_pb).collect();
        pages::fit(&mut audit_events);
        Ok(pb::ListAuditEventsResponse {
            next_page_token: paging::next_token(page, audit_events.len(), total, &fingerprint),
            audit_events,
        })
    }
}

/// INVALID_ARGUMENT naming the field, with the character position in the metadata too.
fn unparsable(field: &str, error: QueryError) -> Error {
    Error::invalid(field, error.to_string()).with_meta("position", error.position.to_string())
}

fn to_pb(event: &AuditEvent) -> pb::AuditEvent {
    pb::AuditEvent {
        name: event.name(),
        time: Some(convert::timestamp(event.time)),
        actor: event.actor.clone(),
        method: event.method.clone(),
        resource: event.resource.clone(),
        request_id: event.request_id.clone(),
        changed_fields: event.changed_fields.clone(),
        summary: event.summary.clone(),
        code: event.code,
    }
}

#[tonic::async_trait]
impl AuditService for AuditApi {
    async fn list_audit_events(
        &self,
        request: Request<pb::ListAuditEventsRequest>,
    ) -> std::result::Result<Response<pb::ListAuditEventsResponse>, Status> {
        let principal = principal(&request)?;
        respond(self.list(principal, request.into_inner())).await
    }
}
