//! `facebook-ads`: segments as Meta customer-list custom audiences through the Graph API
//! (CONNECTORS.md, "Wire details": `facebook-ads`; PRODUCT.md §11, §12).
//!
//! References followed (Meta Marketing API reference):
//! - "Ad Account Custom Audiences" `GET /act_{ad_account_id}/customaudiences?fields=id,name`
//!   (paged by `paging.next`) to find an audience by name, and `POST` with `name`,
//!   `subtype=CUSTOM`, `customer_file_source=USER_PROVIDED_ONLY` to create one;
//! - "Custom Audience Users" `POST` / `DELETE /{custom_audience_id}/users` with
//!   `payload={"schema": [...], "data": [[...]]}` (multi-key), at most 10,000 rows a request,
//!   and `session={"session_id", "batch_seq", "last_batch_flag", "estimated_num_total"}`;
//!   answers `num_received`, `num_invalid_entries`, `invalid_entry_samples`;
//! - "Custom Audiences from CRM data — hashing and normalization" and the business SDK's
//!   `CustomAudience.normalize_key` (see `audience::identifiers`);
//! - "Graph API — handling errors": `{"error": {"message", "type", "code", "error_subcode",
//!   "fbtrace_id"}}`; "Rate limiting": codes 4, 17, 613 and 80003 mean throttled (retried).

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde_json::{Value, json};

use super::audience::identifiers::{META_KEYS, meta_value};
use super::audience::{
    self, AudienceSink, INVALID_IDENTIFIER, Member, NO_IDENTIFIER, Operation, Prepared, Sequence, Vendor, setting,
};
use super::http::gate::{Gate, gate_for};
use super::http::{self, Answer};
use super::registry::{
    ADVERTISING_SETTINGS, AUDIENCE_MODES, BASE_URL, CONTACT_TARGET, PEOPLE_SEGMENTS, TEXT, key, optional,
};
use super::retry::Failure;
use super::{
    Audience, Check, Connector, Delivery, PartSchema, Rejection, RunTarget, Sink, SinkLimits, Target, TestReport,
    network_step,
};
use crate::domain::connection_type::{Category, ConnectionTypeSpec, ExportKind};

const TYPE_ID: &str = "facebook-ads";
pub const DEFAULT_API_VERSION: &str = "v25.0";
/// "Custom Audience Users": at most 10,000 records at a time.
pub const ROWS_PER_REQUEST: usize = 10_000;
/// Meta publishes no fixed request rate for audience uploads (its limits are per app and
/// account, signalled by codes 4/17/613/80003): a few requests in flight per connection.
pub const CONCURRENCY: usize = 4;
/// Rejection code of the entries Meta reports invalid (PRODUCT.md §12).
pub const INVALID_ENTRY: &str = "INVALID_ENTRY";

pub const SPEC: ConnectionTypeSpec = ConnectionTypeSpec {
    id: TYPE_ID,
    display_name: "Facebook Ads",
    category: Category::Advertising,
    export_kinds: &[ExportKind::Segment],
    segment_types: PEOPLE_SEGMENTS,
    sync_modes: AUDIENCE_MODES,
    required_fields: &[],
    identifier_fields: &["email", "phone"],
    profile_limit: 10_000_000,
    minimum_segment_size: 0,
    config: &[
        key("ad_account_id", "ad account id (without act_)", TEXT),
        optional("api_version", "Graph API version (default v25.0)", TEXT),
        BASE_URL,
    ],
    secrets: &[key("access_token", "system-user access token", TEXT)],
    one_of_secrets: &[],
    settings: ADVERTISING_SETTINGS,
    target_options: &[CONTACT_TARGET],
};

pub struct FacebookAds;

fn limits() -> SinkLimits {
    SinkLimits {
        records_per_batch: ROWS_PER_REQUEST,
        bytes_per_batch: None,
        requests_per_second: None,
        concurrency: CONCURRENCY,
    }
}

struct Api {
    root: String,
    ad_account: String,
    token: String,
    secrets: Vec<String>,
    gate: Arc<Gate>,
}

/// Meta's throttling codes (in answers of any status).
fn throttled(answer: &Answer) -> bool {
    matches!(error_of(&answer.body).map(|e| e.code), Some(4 | 17 | 613 | 80003))
}

struct GraphError {
    message: String,
    code: i64,
    subcode: i64,
}

fn error_of(body: &[u8]) -> Option<GraphError> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let error = value.get("error")?;
    Some(GraphError {
        message: error
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        code: error.get("code").and_then(Value::as_i64).unwrap_or_default(),
        subcode: error.get("error_subcode").and_then(Value::as_i64).unwrap_or_default(),
    })
}

/// "the Graph API answered 400: <message> (code 100, subcode 1713230)".
fn refusal(answer: &Answer) -> String {
    match error_of(&answer.body) {
        Some(e) if e.subcode != 0 => format!("{} (code {}, subcode {})", e.message, e.code, e.subcode),
        Some(e) => format!("{} (code {})", e.message, e.code),
        None => answer.body_text(256),
    }
}

impl Api {
    fn of(target: &Target<'_>) -> Api {
        let base = target.config("base_url").trim().trim_end_matches('/');
        let version = match target.config("api_version").trim() {
            "" => DEFAULT_API_VERSION,
            v => v,
        };
        let root = if base.is_empty() {
            format!("https://graph.facebook.com/{version}")
        } else {
            base.to_string()
        };
        let token = target.secrets.get("access_token").cloned().unwrap_or_default();
        Api {
            root,
            ad_account: target
                .config("ad_account_id")
                .trim()
                .trim_start_matches("act_")
                .to_string(),
            secrets: vec![token.clone()],
            token,
            gate: gate_for(&target.connection.name.to_string(), limits().pace()),
        }
    }

    /// A GET with `access_token` (and `query`) as query parameters; `path` may be a full
    /// `paging.next` link, which carries its own.
    async fn get(&self, path: &str, query: &[(&str, &str)]) -> Result<(Answer, Value), Failure> {
        let base = if path.starts_with("http") {
            path.to_string()
        } else {
            format!("{}{path}", self.root)
        };
        let mut url = url::Url::parse(&base).map_err(|e| Failure::Permanent {
            message: format!(
                "'{}' is not a URL: {e}",
                super::storage::object::redact(&base, &self.secrets)
            ),
        })?;
        {
            let has_token = url.query_pairs().any(|(k, _)| k == "access_token");
            let mut pairs = url.query_pairs_mut();
            pairs.extend_pairs(query);
            if !has_token {
                pairs.append_pair("access_token", &self.token);
            }
        }
        let url = url.to_string();
        let answer = http::send_paced_with(&self.gate, TYPE_ID, &self.secrets, throttled, || {
            http::client().get(&url)
        })
        .await?;
        let value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
        Ok((answer, value))
    }

    /// A POST or DELETE with a JSON body carrying `access_token`.
    async fn send<B: serde::Serialize>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: B,
    ) -> Result<(Answer, Value), Failure> {
        let body = WithToken {
            body,
            access_token: &self.token,
        };
        let bytes = bytes::Bytes::from(serde_json::to_vec(&body).expect("request bodies serialize"));
        let url = format!("{}{path}", self.root);
        let answer = http::send_paced_with(&self.gate, TYPE_ID, &self.secrets, throttled, || {
            http::client()
                .request(method.clone(), &url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(bytes.clone())
        })
        .await?;
        let value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
        Ok((answer, value))
    }
}

/// A request body with the access token beside its fields (Graph API takes it in the body).
#[derive(serde::Serialize)]
struct WithToken<'a, B> {
    #[serde(flatten)]
    body: B,
    access_token: &'a str,
}

/// An add or remove users body.
#[derive(serde::Serialize)]
struct UsersRequest<'a> {
    payload: Payload<'a>,
    session: Session,
}

#[derive(serde::Serialize)]
struct Payload<'a> {
    schema: Vec<&'a str>,
    data: Vec<&'a [String]>,
}

#[derive(serde::Serialize)]
struct Session {
    session_id: u64,
    batch_seq: u64,
    last_batch_flag: bool,
    estimated_num_total: u64,
}

/// The schema keys a part's mapping fills (CONNECTORS.md's order), with their target fields.
pub fn schema_of(part: &PartSchema) -> Vec<(&'static str, &'static str)> {
    META_KEYS
        .iter()
        .filter(|(field, _)| part.columns.iter().any(|c| c.name == *field))
        .copied()
        .collect()
}

/// One member as Meta receives it: a `data` row in `schema` order ("" for a missing value),
/// or why it is refused before Meta sees it.
pub fn meta_row(schema: &[(&str, &str)], member: &Member) -> Result<Vec<String>, Rejection> {
    let identifiers = ["email", "phone"];
    if !identifiers.iter().any(|f| member.text(f).is_some()) {
        return Err(member.reject("the member has neither an email nor a phone", NO_IDENTIFIER));
    }
    let mut row = Vec::with_capacity(schema.len());
    for (field, key) in schema {
        let value = match member.text(field) {
            Some(raw) => meta_value(key, &raw).map_err(|reason| member.reject(&reason, INVALID_IDENTIFIER))?,
            None => None,
        };
        row.push(value.unwrap_or_default());
    }
    Ok(row)
}

struct MetaVendor {
    api: Api,
    /// `audience_id` / `audience_name` settings.
    audience_id: String,
    audience_name: String,
    /// Set when a part opens: the keys its rows carry.
    schema: Mutex<Vec<(&'static str, &'static str)>>,
}

#[async_trait]
impl Vendor for MetaVendor {
    type Wire = Vec<String>;

    fn type_id(&self) -> &'static str {
        TYPE_ID
    }

    fn limits(&self) -> SinkLimits {
        limits()
    }

    fn begin_part(&self, part: &PartSchema) {
        *self.schema.lock().expect("never poisoned") = schema_of(part);
    }

    fn prepare(&self, member: &Member) -> Result<Vec<String>, Rejection> {
        meta_row(&self.schema.lock().expect("never poisoned"), member)
    }

    /// The row's values under the target fields of the schema (a missing value is left out).
    fn sample(&self, _member: &Member, wire: &Vec<String>) -> serde_json::Map<String, Value> {
        let schema = self.schema.lock().expect("never poisoned");
        schema
            .iter()
            .zip(wire)
            .filter(|(_, value)| !value.is_empty())
            .map(|((field, _), value)| (field.to_string(), json!(value)))
            .collect()
    }

    async fn open_audience(&self, part: &PartSchema, remembered: Option<&Audience>) -> Result<Audience, Failure> {
        if !self.audience_id.is_empty() {
            return Ok(Audience {
                id: self.audience_id.clone(),
                name: self.audience_name.clone(),
            });
        }
        let name = if self.audience_name.is_empty() {
            part.description.clone()
        } else {
            self.audience_name.clone()
        };
        if let Some(audience) = remembered.filter(|a| a.name == name) {
            return Ok(audience.clone());
        }
        if let Some(found) = self.find(&name).await? {
            return Ok(found);
        }
        let (answer, value) = self
            .api
            .send(
                reqwest::Method::POST,
                &format!("/act_{}/customaudiences", self.api.ad_account),
                json!({
                    "name": name,
                    "subtype": "CUSTOM",
                    "customer_file_source": "USER_PROVIDED_ONLY",
                    "description": format!("exportd: segment {}", part.source),
                }),
            )
            .await?;
        match value.get("id").and_then(Value::as_str) {
            Some(id) if answer.status.is_success() => Ok(Audience {
                id: id.to_string(),
                name,
            }),
            _ => Err(Failure::Permanent {
                message: format!("creating custom audience '{name}': {}", refusal(&answer)),
            }),
        }
    }

    async fn send(
        &self,
        audience: &Audience,
        operation: Operation,
        members: Vec<Prepared<Vec<String>>>,
        sequence: Sequence,
    ) -> Result<Delivery, Failure> {
        let schema: Vec<&str> = self
            .schema
            .lock()
            .expect("never poisoned")
            .iter()
            .map(|(_, k)| *k)
            .collect();
        let data: Vec<&[String]> = members.iter().map(|m| m.wire.as_slice()).collect();
        // Serialized straight from the prepared rows (no JSON tree of 10,000 rows beside them).
        let body = UsersRequest {
            payload: Payload { schema, data },
            session: Session {
                session_id: sequence.session,
                batch_seq: sequence.number,
                last_batch_flag: sequence.last,
                estimated_num_total: sequence.estimated_total,
            },
        };
        let method = match operation {
            Operation::Add => reqwest::Method::POST,
            Operation::Remove => reqwest::Method::DELETE,
        };
        let (answer, value) = self.api.send(method, &format!("/{}/users", audience.id), body).await?;
        if !answer.status.is_success() {
            return Err(Failure::Permanent {
                message: format!(
                    "custom audience '{}' refused the members ({}): {}",
                    audience.id,
                    answer.status,
                    refusal(&answer)
                ),
            });
        }
        let rejected = invalid_entries(&value, &members);
        let sent = members.len() as u64;
        // Meta counts every invalid entry but names only samples of them: those beyond the
        // samples are rejected records no one can list (nor retry), not members taken.
        let invalid = value
            .get("num_invalid_entries")
            .and_then(Value::as_u64)
            .unwrap_or(0)
            .max(rejected.len() as u64)
            .min(sent);
        let unlisted_rejects = invalid - rejected.len() as u64;
        let taken = sent - invalid;
        let mut delivery = Delivery {
            rejected,
            unlisted_rejects,
            ..Delivery::default()
        };
        match operation {
            Operation::Add => delivery.accepted = taken,
            Operation::Remove => delivery.removed = taken,
        }
        Ok(delivery)
    }
}

/// Each `invalid_entry_samples` entry (a value sent → Meta's reason) as the rejected record of
/// the member it came from.
fn invalid_entries(answer: &Value, members: &[Prepared<Vec<String>>]) -> Vec<Rejection> {
    let samples: Vec<(String, String)> = match answer.get("invalid_entry_samples") {
        Some(Value::Object(map)) => map
            .iter()
            .map(|(value, reason)| (value.clone(), reason.as_str().unwrap_or("invalid entry").to_string()))
            .collect(),
        Some(Value::Array(values)) => values
            .iter()
            .filter_map(Value::as_str)
            .map(|v| (v.to_string(), "invalid entry".to_string()))
            .collect(),
        _ => Vec::new(),
    };
    let mut seen = std::collections::HashSet::new();
    let mut rejected = Vec::new();
    for (value, reason) in samples {
        if value.is_empty() {
            continue;
        }
        for member in members.iter().filter(|m| m.wire.contains(&value)) {
            if seen.insert(member.key.clone()) {
                rejected.push(Rejection::new(member.key.clone(), &reason, INVALID_ENTRY));
            }
        }
    }
    rejected
}

impl MetaVendor {
    /// The ad account's custom audience with this name, if there is one (every page).
    async fn find(&self, name: &str) -> Result<Option<Audience>, Failure> {
        let mut next = format!("/act_{}/customaudiences", self.api.ad_account);
        let mut query: Vec<(&str, &str)> = vec![("fields", "id,name"), ("limit", "500")];
        for _ in 0..1000 {
            let (answer, value) = self.api.get(&next, &query).await?;
            if !answer.status.is_success() {
                return Err(Failure::Permanent {
                    message: format!(
                        "listing the custom audiences of act_{}: {}",
                        self.api.ad_account,
                        refusal(&answer)
                    ),
                });
            }
            let found = value["data"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|a| a["name"] == name);
            if let Some(id) = found.and_then(|a| a["id"].as_str()) {
                return Ok(Some(Audience {
                    id: id.to_string(),
                    name: name.to_string(),
                }));
            }
            match value["paging"]["next"].as_str() {
                Some(url) if !url.is_empty() => {
                    next = url.to_string();
                    query = Vec::new();
                }
                _ => return Ok(None),
            }
        }
        Ok(None)
    }
}

#[async_trait]
impl Connector for FacebookAds {
    /// The token (`GET /me`), then the ad account (`GET /act_{id}`), each with Meta's message.
    async fn test(&self, target: &Target<'_>) -> TestReport {
        let api = Api::of(target);
        let mut checks = Vec::new();
        let steps = [
            ("credentials", "/me".to_string(), "id,name"),
            (
                "ad_account",
                format!("/act_{}", api.ad_account),
                "id,name,account_status",
            ),
        ];
        for (name, path, fields) in steps {
            let check = match api.get(&path, &[("fields", fields)]).await {
                Ok((answer, value)) if answer.status.is_success() => Check::pass(
                    name,
                    format!(
                        "GET {path} answered {} ({})",
                        answer.status,
                        value["name"].as_str().unwrap_or_default()
                    ),
                ),
                Ok((answer, _)) => Check::fail(
                    name,
                    format!("GET {path} answered {}: {}", answer.status, refusal(&answer)),
                ),
                Err(failure) => Check::fail(network_step(failure.message()).unwrap_or(name), failure.message()),
            };
            let ok = check.ok;
            checks.push(check);
            if !ok {
                break;
            }
        }
        TestReport { checks }
    }

    async fn open_sink(&self, run: &RunTarget<'_>) -> Result<Box<dyn Sink>, Failure> {
        Ok(Box::new(AudienceSink::new(vendor(run), run)))
    }

    fn sample(
        &self,
        run: &RunTarget<'_>,
        part: &PartSchema,
        rows: Vec<Vec<Value>>,
    ) -> Vec<serde_json::Map<String, Value>> {
        audience::sample(&vendor(run), part, rows)
    }
}

/// The vendor a run's sink (or a preview) works with.
fn vendor(run: &RunTarget<'_>) -> MetaVendor {
    MetaVendor {
        api: Api::of(&run.target),
        audience_id: setting(run, "audience_id").to_string(),
        audience_name: setting(run, "audience_name").to_string(),
        schema: Mutex::new(Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connectors::audience::identifiers::sha256_hex;
    use crate::connectors::audience::member_of as member;

    #[test]
    fn rows_follow_the_schema_with_empty_strings_for_missing_values() {
        let schema = [
            ("email", "EMAIL"),
            ("phone", "PHONE"),
            ("first_name", "FN"),
            ("external_id", "EXTERN_ID"),
        ];
        let row = meta_row(
            &schema,
            &member(&[("email", " Ann@Example.com"), ("external_id", "A-1")]),
        )
        .unwrap();
        assert_eq!(
            row,
            vec![
                sha256_hex("ann@example.com"),
                String::new(),
                String::new(),
                "A-1".into()
            ]
        );
        assert_eq!(
            meta_row(&schema, &member(&[("first_name", "Ann")])).unwrap_err().code,
            NO_IDENTIFIER
        );
        assert_eq!(
            meta_row(&schema, &member(&[("phone", "ask me")])).unwrap_err().code,
            INVALID_IDENTIFIER
        );
    }

    #[test]
    fn throttling_codes_are_transient_whatever_the_status() {
        let answer = |code: i64| Answer {
            headers: Default::default(),
            status: reqwest::StatusCode::BAD_REQUEST,
            body: bytes::Bytes::from(
                json!({"error": {"message": "x", "type": "OAuthException", "code": code, "fbtrace_id": "A"}})
                    .to_string(),
            ),
        };
        for code in [4, 17, 613, 80003] {
            assert!(throttled(&answer(code)), "{code}");
        }
        assert!(!throttled(&answer(100)));
        assert!(!throttled(&answer(190)));
    }
}
