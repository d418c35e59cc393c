//! AlertService (PRODUCT.md §14): alert policies (admins write them, every role reads them) and
//! the events they produced. Events are stored by the run engine and the scheduler and
//! delivered by the outbox worker (`engine::alert_delivery`); this file only validates,
//! stores and lists.

use prost::Message;
use tonic::{Request, Response, Status};

use super::{State, convert, mask, pages, principal, required, respond};
use crate::auth::Principal;
use crate::auth::policy::{self, Action, Facts};
use crate::domain::alert::{AlertEvent, AlertPolicy, Condition, EventState};
use crate::domain::list_query::{CompareOp, FieldKind, Filter, FilterField, Value, parse_filter};
use crate::domain::names::{
    AlertEventParent, AlertPolicyName, ConnectionName, EnvironmentName, ExportName, id_or_generate,
};
use crate::domain::time::now_micros;
use crate::domain::{etag, paging};
use crate::error::{Error, FieldViolation, Result};
use crate::pb;
use crate::pb::alert_service_server::AlertService;
use crate::store::alerts::AlertEventQuery;
use crate::store::request_ids::{self, RequestKey};

const UPDATABLE: &[&str] = &[
    "display_name",
    "connection",
    "conditions",
    "rejected_percent_threshold",
    "schedule_missed_after_seconds",
    "exports",
    "notify_recovery",
    "enabled",
];

const EVENT_FILTER: &[FilterField] = &[
    FilterField {
        name: "export",
        kind: FieldKind::Text,
        allowed: &[],
    },
    FilterField {
        name: "condition",
        kind: FieldKind::Keyword,
        allowed: &["RUN_FAILED", "RUN_SKIPPED", "RECORDS_REJECTED", "SCHEDULE_MISSED"],
    },
    FilterField {
        name: "state",
        kind: FieldKind::Keyword,
        allowed: &["FIRING", "RESOLVED"],
    },
];
const EVENT_ENUM_PREFIXES: &[(&str, &str)] = &[("condition", "ALERT_CONDITION_"), ("state", "ALERT_EVENT_STATE_")];

pub struct AlertApi {
    state: State,
}

fn to_pb(policy: &AlertPolicy) -> pb::AlertPolicy {
    pb::AlertPolicy {
        name: policy.name.to_string(),
        display_name: policy.display_name.clone(),
        connection: ConnectionName::new(&policy.name.env, &policy.connection).to_string(),
        conditions: policy.conditions.iter().map(|c| c.number()).collect(),
        rejected_percent_threshold: policy.rejected_percent_threshold,
        schedule_missed_after_seconds: policy.schedule_missed_after_seconds,
        exports: policy
            .exports
            .iter()
            .map(|id| ExportName::new(&policy.name.env, id).to_string())
            .collect(),
        notify_recovery: policy.notify_recovery,
        enabled: policy.enabled,
        create_time: Some(convert::timestamp(policy.create_time)),
        update_time: Some(convert::timestamp(policy.update_time)),
        etag: etag::etag(policy.create_time, policy.revision),
    }
}

fn event_to_pb(event: &AlertEvent) -> pb::AlertEvent {
    pb::AlertEvent {
        name: event.name(),
        policy: event.policy_name(),
        export: event.export.clone(),
        run: event.run.clone(),
        condition: event.condition.number(),
        state: event.state.number(),
        message: event.message.clone(),
        create_time: Some(convert::timestamp(event.create_time)),
        delivery_state: event.delivery_state.number(),
        delivery_attempts: event.delivery_attempts as i32,
        last_delivery_error: event.last_delivery_error.clone(),
    }
}

/// The fields of a policy that a create sets, or an update's mask names.
fn apply(policy: &mut AlertPolicy, input: &pb::AlertPolicy, paths: &[String]) {
    for path in paths {
        match path.as_str() {
            "display_name" => policy.display_name = input.display_name.trim().to_string(),
            "connection" => {
                policy.connection = input.connection.rsplit('/').next().unwrap_or_default().to_string();
            }
            "conditions" => {
                let mut conditions: Vec<Condition> = input
                    .conditions
                    .iter()
                    .filter_map(|n| Condition::from_number(*n))
                    .collect();
                conditions.sort();
                conditions.dedup();
                policy.conditions = conditions;
            }
            "rejected_percent_threshold" => policy.rejected_percent_threshold = input.rejected_percent_threshold,
            "schedule_missed_after_seconds" => {
                policy.schedule_missed_after_seconds = input.schedule_missed_after_seconds
            }
            "exports" => {
                policy.exports = input
                    .exports
                    .iter()
                    .map(|e| e.rsplit('/').next().unwrap_or_default().to_string())
                    .collect();
            }
            "notify_recovery" => policy.notify_recovery = input.notify_recovery,
            "enabled" => policy.enabled = input.enabled,
            _ => {}
        }
    }
}

impl AlertApi {
    pub fn new(state: State) -> Self {
        AlertApi { state }
    }

    /// The policy as it would be stored, checked: its fields, its connection (a webhook one of
    /// the environment) and its exports (existing ones). Every problem is named.
    async fn check(&self, input: &pb::AlertPolicy, policy: &AlertPolicy) -> Result<()> {
        let env = &policy.name.env;
        let mut violations = Vec::new();
        let mut bad = |field: &str, description: String| {
            violations.push(FieldViolation {
                field: format!("alert_policy.{field}"),
                description,
            })
        };
        if policy.display_name.chars().count() > crate::domain::bounds::DISPLAY_NAME.max {
            bad("display_name", "at most 200 characters".into());
        }
        if input.conditions.iter().any(|n| Condition::from_number(*n).is_none()) {
            bad(
                "conditions",
                "a condition is RUN_FAILED, RUN_SKIPPED, RECORDS_REJECTED or SCHEDULE_MISSED".into(),
            );
        } else if policy.conditions.is_empty() {
            bad("conditions", "at least one condition is required".into());
        }
        let threshold = policy.rejected_percent_threshold;
        if !(0.0..=100.0).contains(&threshold) || threshold.is_nan() {
            bad(
                "rejected_percent_threshold",
                format!("a percentage from 0 to 100 (got {threshold})"),
            );
        }
        if policy.schedule_missed_after_seconds < 0 {
            bad(
                "schedule_missed_after_seconds",
                "must not be negative (0 means 900)".into(),
            );
        }
        match ConnectionName::parse("alert_policy.connection", &input.connection) {
            Err(_) if policy.connection.is_empty() || input.connection.is_empty() => {
                bad("connection", "the name of a webhook connection is required".into())
            }
            Err(e) => bad("connection", e.message),
            Ok(name) if name.env != *env => bad("connection", "a connection of the policy's environment".into()),
            Ok(name) => match self.state.store.get_connection(&name).await? {
                None => bad("connection", format!("connection '{name}' does not exist")),
                Some(c) if c.type_id != "webhook" => bad(
                    "connection",
                    format!(
                        "alerts are delivered to `webhook` connections; '{name}' is `{}`",
                        c.type_id
                    ),
                ),
                Some(_) => {}
            },
        }
        for (i, export) in input.exports.iter().enumerate() {
            let field = format!("exports[{i}]");
            match ExportName::parse(&field, export) {
                Ok(name) if name.env == *env => {
                    if self.state.store.get_export(&name).await?.is_none() {
                        bad(&field, format!("export '{name}' does not exist"));
                    }
                }
                Ok(_) => bad(&field, "an export of the policy's environment".into()),
                Err(e) => bad(&field, e.message),
            }
        }
        if violations.is_empty() {
            Ok(())
        } else {
            Err(Error::invalid_fields(violations))
        }
    }

    async fn create(&self, principal: Principal, request: pb::CreateAlertPolicyRequest) -> Result<pb::AlertPolicy> {
        let parent = EnvironmentName::parse("parent", &request.parent)?;
        policy::authorize(&principal, &parent.env, Action::CreateAlertPolicy, Facts::default())?;
        if self.state.store.get_environment(&parent.env).await?.is_none() {
            return Err(Error::not_found("environment", parent.to_string()));
        }
        request_ids::check_format(&request.request_id)?;
        let input = required("alert_policy", &request.alert_policy)?;
        let id = id_or_generate("alert_policy_id", &request.alert_policy_id, "policy")?;
        let now = now_micros();
        let mut draft = AlertPolicy {
            name: AlertPolicyName::new(&parent.env, &id),
            display_name: String::new(),
            connection: String::new(),
            conditions: Vec::new(),
            rejected_percent_threshold: 0.0,
            schedule_missed_after_seconds: 0,
            exports: Vec::new(),
            notify_recovery: false,
            enabled: false,
            create_time: now,
            update_time: now,
            revision: 0,
        };
        let all: Vec<String> = UPDATABLE.iter().map(|s| s.to_string()).collect();
        apply(&mut draft, input, &all);
        self.check(input, &draft).await?;
        if request.validate_only {
            let mut shown = to_pb(&draft);
            shown.etag.clear();
            return Ok(shown);
        }
        let mut hashable = request.clone();
        hashable.validate_only = false;
        let hash = request_ids::request_hash(&hashable.encode_to_vec());
        let key = RequestKey::given("CreateAlertPolicy", &request.request_id, &hash);
        let created = self.state.store.create_alert_policy(&draft, key).await?;
        Ok(to_pb(&created))
    }

    async fn readable(&self, principal: &Principal, name: &AlertPolicyName, action: Action) -> Result<AlertPolicy> {
        policy::authorize(principal, &name.env, action, Facts::default())?;
        self.state.store.alert_policy_or_not_found(name).await
    }

    async fn get(&self, principal: Principal, request: pb::GetAlertPolicyRequest) -> Result<pb::AlertPolicy> {
        let name = AlertPolicyName::parse("name", &request.name)?;
        Ok(to_pb(&self.readable(&principal, &name, Action::GetAlertPolicy).await?))
    }

    async fn list(
        &self,
        principal: Principal,
        request: pb::ListAlertPoliciesRequest,
    ) -> Result<pb::ListAlertPoliciesResponse> {
        let parent = EnvironmentName::parse("parent", &request.parent)?;
        policy::authorize(&principal, &parent.env, Action::ListAlertPolicies, Facts::default())?;
        let fingerprint = paging::fingerprint(&[&request.parent]);
        let page = paging::parse(request.page_size, &request.page_token, &fingerprint)?;
        if self.state.store.get_environment(&parent.env).await?.is_none() {
            return Err(Error::not_found("environment", parent.to_string()));
        }
        let (items, total) = self.state.store.list_alert_policies(&parent.env, page).await?;
        let mut alert_policies: Vec<pb::AlertPolicy> = items.iter().map(to_pb).collect();
        pages::fit(&mut alert_policies);
        Ok(pb::ListAlertPoliciesResponse {
            next_page_token: paging::next_token(page, alert_policies.len(), total, &fingerprint),
            alert_policies,
        })
    }

    async fn update(&self, principal: Principal, request: pb::UpdateAlertPolicyRequest) -> Result<pb::AlertPolicy> {
        let input = required("alert_policy", &request.alert_policy)?;
        let name = AlertPolicyName::parse("alert_policy.name", &input.name)?;
        let paths = mask::paths(&request.update_mask, UPDATABLE, &[], || implied_paths(input))?;
        let mut current = self.readable(&principal, &name, Action::UpdateAlertPolicy).await?;
        let current_etag = etag::etag(current.create_time, current.revision);
        if !input.etag.is_empty() && input.etag != current_etag {
            return Err(Error::etag_mismatch(name.to_string(), &input.etag, &current_etag));
        }
        apply(&mut current, input, &paths);
        // Checked as it would be stored: the unchanged fields as they are.
        let mut shown = to_pb(&current);
        shown.conditions = if paths.iter().any(|p| p == "conditions") {
            input.conditions.clone()
        } else {
            shown.conditions
        };
        self.check(&shown, &current).await?;
        Ok(to_pb(&self.state.store.update_alert_policy(&current).await?))
    }

    async fn delete(
        &self,
        principal: Principal,
        request: pb::DeleteAlertPolicyRequest,
    ) -> Result<pb::DeleteAlertPolicyResponse> {
        let name = AlertPolicyName::parse("name", &request.name)?;
        let current = self.readable(&principal, &name, Action::DeleteAlertPolicy).await?;
        let current_etag = etag::etag(current.create_time, current.revision);
        if !request.etag.is_empty() && request.etag != current_etag {
            return Err(Error::etag_mismatch(name.to_string(), &request.etag, &current_etag));
        }
        self.state.store.delete_alert_policy(&current).await?;
        Ok(pb::DeleteAlertPolicyResponse {})
    }

    async fn list_events(
        &self,
        principal: Principal,
        request: pb::ListAlertEventsRequest,
    ) -> Result<pb::ListAlertEventsResponse> {
        let parent = AlertEventParent::parse("parent", &request.parent)?;
        policy::authorize(&principal, &parent.env, Action::ListAlertEvents, Facts::default())?;
        let filter = parse_filter(&request.filter, EVENT_FILTER, EVENT_ENUM_PREFIXES)
            .map_err(|e| Error::invalid("filter", e.to_string()).with_meta("position", e.position.to_string()))?;
        let fingerprint = paging::fingerprint(&[&request.parent, &request.filter]);
        let page = paging::parse(request.page_size, &request.page_token, &fingerprint)?;
        if let Some(policy) = &parent.policy {
            self.state
                .store
                .alert_policy_or_not_found(&AlertPolicyName::new(&parent.env, policy))
                .await?;
        } else if self.state.store.get_environment(&parent.env).await?.is_none() {
            return Err(Error::not_found("environment", format!("environments/{}", parent.env)));
        }
        let mut query = AlertEventQuery {
            env: &parent.env,
            policy: parent.policy.as_deref(),
            export: None,
            condition: None,
            state: None,
            page,
        };
        let mut export = None;
        if let Some(filter) = &filter {
            narrow(filter, &mut export, &mut query)?;
        }
        query.export = export.as_deref();
        let (items, total) = self.state.store.list_alert_events(&query).await?;
        let mut alert_events: Vec<pb::AlertEvent> = items.iter().map(event_to_pb).collect();
        pages::fit(&mut alert_events);
        Ok(pb::ListAlertEventsResponse {
            next_page_token: paging::next_token(page, alert_events.len(), total, &fingerprint),
            alert_events,
        })
    }
}

/// ListAlertEvents filters are equalities combined with AND.
fn narrow(filter: &Filter, export: &mut Option<String>, query: &mut AlertEventQuery<'_>) -> Result<()> {
    let unsupported = || {
        Error::invalid(
            "filter",
            "ListAlertEvents filters are `field = value` terms combined with AND",
        )
    };
    match filter {
        Filter::And(a, b) => {
            narrow(a, export, query)?;
            narrow(b, export, query)
        }
        Filter::Compare {
            field,
            op: CompareOp::Eq,
            value: Value::String(text) | Value::Word(text),
        } => {
            match field.as_str() {
                "export" => *export = Some(text.clone()),
                "condition" => query.condition = Condition::parse(text),
                "state" => query.state = EventState::parse(text),
                _ => return Err(unsupported()),
            }
            Ok(())
        }
        _ => Err(unsupported()),
    }
}

/// Without an update mask, every field the client set is updated (AIP-134).
fn implied_paths(input: &pb::AlertPolicy) -> Vec<String> {
    let set = [
        ("display_name", !input.display_name.is_empty()),
        ("connection", !input.connection.is_empty()),
        ("conditions", !input.conditions.is_empty()),
        ("rejected_percent_threshold", input.rejected_percent_threshold != 0.0),
        (
            "schedule_missed_after_seconds",
            input.schedule_missed_after_seconds != 0,
        ),
        ("exports", !input.exports.is_empty()),
        ("notify_recovery", input.notify_recovery),
        ("enabled", input.enabled),
    ];
    set.iter().filter(|(_, s)| *s).map(|(p, _)| p.to_string()).collect()
}

type Reply<T> = std::result::Result<Response<T>, Status>;

#[tonic::async_trait]
impl AlertService for AlertApi {
    async fn create_alert_policy(&self, request: Request<pb::CreateAlertPolicyRequest>) -> Reply<pb::AlertPolicy> {
        let principal = principal(&request)?;
        respond(self.create(principal, request.into_inner())).await
    }
    async fn get_alert_policy(&self, request: Request<pb::GetAlertPolicyRequest>) -> Reply<pb::AlertPolicy> {
        let principal = principal(&request)?;
        respond(self.get(principal, request.into_inner())).await
    }
    async fn list_alert_policies(
        &self,
        request: Request<pb::ListAlertPoliciesRequest>,
    ) -> Reply<pb::ListAlertPoliciesResponse> {
        let principal = principal(&request)?;
        respond(self.list(principal, request.into_inner())).await
    }
    async fn update_alert_policy(&self, request: Request<pb::UpdateAlertPolicyRequest>) -> Reply<pb::AlertPolicy> {
        let principal = principal(&request)?;
        respond(self.update(principal, request.into_inner())).await
    }
    async fn delete_alert_policy(
        &self,
        request: Request<pb::DeleteAlertPolicyRequest>,
    ) -> Reply<pb::DeleteAlertPolicyResponse> {
        let principal = principal(&request)?;
        respond(self.delete(principal, request.into_inner())).await
    }
    async fn list_alert_events(
        &self,
        request: Request<pb::ListAlertEventsRequest>,
    ) -> Reply<pb::ListAlertEventsResponse> {
        let principal = principal(&request)?;
        respond(self.list_events(principal, request.into_inner())).await
    }
}
