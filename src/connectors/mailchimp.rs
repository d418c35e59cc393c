//! `mailchimp`: members of a segment upserted into a Mailchimp audience (list) with the
//! Marketing API 3.0 (CONNECTORS.md, "Wire details": `mailchimp`; PRODUCT.md §11, §12).
//!
//! References followed (Mailchimp Marketing API reference, "Lists/Audiences"):
//! - authentication: HTTP Basic, any user name, the API key as password; the root
//!   `https://<dc>.api.mailchimp.com/3.0` with the account's data center (`server_prefix`);
//! - "Batch subscribe or unsubscribe" `POST /lists/{list_id}` with `members[]` (at most 500 a
//!   call) and `update_existing`; its 200 answer lists members it refused in `errors[]`
//!   (`email_address`, `error`, `error_code`), which become those members' rejected records;
//! - "Archive list member" `DELETE /lists/{list_id}/members/{subscriber_hash}` (MIRROR leavers;
//!   the hash is the MD5 hex of the lower-cased address; 404 means already gone);
//! - "Add or remove member tags" `POST /lists/{list_id}/members/{subscriber_hash}/tags`;
//! - "Ping" `GET /ping` and "Get list info" `GET /lists/{list_id}` (TestConnection);
//! - "Errors": `application/problem+json` bodies with `title`, `detail`; "API limits": at most
//!   10 simultaneous connections per account (429 beyond).

use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;
use serde_json::{Map, Value, json};

use super::audience::identifiers::{plain_email, subscriber_hash};
use super::audience::{
    self, AudienceSink, INVALID_IDENTIFIER, Member, NO_IDENTIFIER, Operation, Prepared, Sequence, Vendor, setting,
};
use super::http::gate::{Gate, gate_for};
use super::http::{self, Answer};
use super::registry::{AUDIENCE_MODES, BASE_URL, PEOPLE_SEGMENTS, TEXT, key, optional};
use super::retry::Failure;
use super::{
    Audience, Check, Connector, Delivery, PartSchema, Rejection, RunTarget, Sink, SinkLimits, Target, TestReport,
    network_step,
};
use crate::domain::connection_type::{Category, ConnectionTypeSpec, ExportKind, ValueKind};

const TYPE_ID: &str = "mailchimp";
/// "Batch subscribe or unsubscribe": up to 500 members a call.
pub const MEMBERS_PER_CALL: usize = 500;
/// "API limits": 10 simultaneous connections.
pub const CONNECTIONS: usize = 10;

pub const SPEC: ConnectionTypeSpec = ConnectionTypeSpec {
    id: TYPE_ID,
    display_name: "Mailchimp",
    category: Category::EmailMarketing,
    export_kinds: &[ExportKind::Segment],
    segment_types: PEOPLE_SEGMENTS,
    sync_modes: AUDIENCE_MODES,
    required_fields: &["email"],
    identifier_fields: &[],
    profile_limit: 1_000_000,
    minimum_segment_size: 0,
    config: &[
        key("server_prefix", "data center of the account, e.g. us21", TEXT),
        key("audience_id", "the audience (list) members go to", TEXT),
        BASE_URL,
    ],
    secrets: &[key("api_key", "Mailchimp API key", TEXT)],
    one_of_secrets: &[],
    settings: &[
        optional("audience_id", "overrides the connection's audience", TEXT),
        optional(
            "tag_with_segment",
            "`true` tags each member with the segment's display name (default false)",
            ValueKind::Bool,
        ),
    ],
    target_options: &[],
};

pub struct Mailchimp;

/// The account's API: its root, the key, the connection's pacing.
struct Api {
    root: String,
    api_key: String,
    secrets: Vec<String>,
    gate: Arc<Gate>,
}

fn limits() -> SinkLimits {
    SinkLimits {
        records_per_batch: MEMBERS_PER_CALL,
        bytes_per_batch: None,
        requests_per_second: None,
        concurrency: CONNECTIONS,
    }
}

impl Api {
    fn of(target: &Target<'_>) -> Api {
        let base = target.config("base_url").trim().trim_end_matches('/');
        let root = if base.is_empty() {
            format!(
                "https://{}.api.mailchimp.com/3.0",
                target.config("server_prefix").trim()
            )
        } else {
            base.to_string()
        };
        let api_key = target.secrets.get("api_key").cloned().unwrap_or_default();
        Api {
            root,
            secrets: vec![api_key.clone()],
            api_key,
            gate: gate_for(&target.connection.name.to_string(), limits().pace()),
        }
    }

    async fn call<B: serde::Serialize + ?Sized>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<Answer, Failure> {
        let url = format!("{}{path}", self.root);
        let body = body.map(|b| bytes::Bytes::from(serde_json::to_vec(b).expect("request bodies serialize")));
        http::send_paced(&self.gate, TYPE_ID, &self.secrets, || {
            let mut request = http::client()
                .request(method.clone(), &url)
                .basic_auth("exportd", Some(&self.api_key));
            if let Some(body) = &body {
                request = request
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.clone());
            }
            request
        })
        .await
    }
}

/// `title: detail` of a problem+json body, else the body's start.
fn problem(answer: &Answer) -> String {
    let parsed: Option<Value> = serde_json::from_slice(&answer.body).ok();
    let text = |field: &str| {
        parsed
            .as_ref()
            .and_then(|p| p.get(field))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    match (text("title"), text("detail")) {
        (title, detail) if !title.is_empty() && !detail.is_empty() => format!("{title}: {detail}"),
        (title, _) if !title.is_empty() => title,
        _ => answer.body_text(256),
    }
}

/// A refusal of the account or the list as a whole (not of members): the run cannot go on.
fn account_refusal(answer: &Answer, what: &str) -> Failure {
    Failure::Permanent {
        message: format!("Mailchimp answered {} to {what}: {}", answer.status, problem(answer)),
    }
}

/// A member as it is sent: the address, and its merge fields.
#[derive(Debug, Clone)]
struct Wire {
    email: String,
    merge_fields: MergeFields,
}

/// Merge fields by upper-cased tag, sent as a JSON object: a short list rather than a map per
/// member (a mapping has a handful of fields).
#[derive(Debug, Clone, Default, PartialEq)]
struct MergeFields(Vec<(String, Value)>);

impl MergeFields {
    /// Sets `tag` (a later value of the same tag replaces the earlier, as in a JSON object).
    fn set(&mut self, tag: String, value: Value) {
        match self.0.iter_mut().find(|(t, _)| *t == tag) {
            Some((_, old)) => *old = value,
            None => self.0.push((tag, value)),
        }
    }

    fn get(&self, tag: &str) -> Option<&Value> {
        self.0.iter().find(|(t, _)| t == tag).map(|(_, value)| value)
    }
}

impl serde::Serialize for MergeFields {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(tag, value)| (tag, value)))
    }
}

/// A batch subscribe body, serialized straight from the prepared members (no JSON tree of 500
/// members beside them).
#[derive(serde::Serialize)]
struct BatchSubscribe<'a> {
    members: Vec<Subscriber<'a>>,
    update_existing: bool,
}

#[derive(serde::Serialize)]
struct Subscriber<'a> {
    email_address: &'a str,
    status_if_new: &'static str,
    status: &'static str,
    merge_fields: &'a MergeFields,
}

struct MailchimpVendor {
    api: Api,
    list: String,
    tag_with_segment: bool,
}

#[async_trait]
impl Vendor for MailchimpVendor {
    type Wire = Wire;

    fn type_id(&self) -> &'static str {
        TYPE_ID
    }

    fn limits(&self) -> SinkLimits {
        limits()
    }

    /// CONNECTORS.md: `email` is the address; every other mapped target field is a merge field
    /// under its upper-cased name.
    fn prepare(&self, member: &Member) -> Result<Wire, Rejection> {
        let Some(raw) = member.text("email") else {
            return Err(member.reject("the member has no email address", NO_IDENTIFIER));
        };
        let email = plain_email(&raw).map_err(|reason| member.reject(&reason, INVALID_IDENTIFIER))?;
        let mut merge_fields = MergeFields::default();
        for (field, value) in member.values.iter().filter(|(field, _)| field.as_str() != "email") {
            merge_fields.set(field.to_uppercase(), value.clone());
        }
        Ok(Wire { email, merge_fields })
    }

    /// The address, and each merge field under its target field.
    fn sample(&self, member: &Member, wire: &Wire) -> Map<String, Value> {
        let mut row: Map<String, Value> = member
            .values
            .iter()
            .map(|(field, _)| field)
            .filter(|field| field.as_str() != "email")
            .filter_map(|field| Some((field.clone(), wire.merge_fields.get(&field.to_uppercase())?.clone())))
            .collect();
        row.insert("email".into(), Value::String(wire.email.clone()));
        row
    }

    /// The list is the connection's (or the export's `audience_id`); it is named after the
    /// segment only for the tag.
    async fn open_audience(&self, part: &PartSchema, _remembered: Option<&Audience>) -> Result<Audience, Failure> {
        Ok(Audience {
            id: self.list.clone(),
            name: part.description.clone(),
        })
    }

    async fn send(
        &self,
        audience: &Audience,
        operation: Operation,
        members: Vec<Prepared<Wire>>,
        _sequence: Sequence,
    ) -> Result<Delivery, Failure> {
        match operation {
            Operation::Add => self.subscribe(audience, members).await,
            Operation::Remove => self.archive(audience, members).await,
        }
    }
}

impl MailchimpVendor {
    fn list_path(&self, audience: &Audience) -> String {
        format!("/lists/{}", urlencode(&audience.id))
    }

    /// One "batch subscribe" call, then (with `tag_with_segment`) the tags of those it took.
    async fn subscribe(&self, audience: &Audience, members: Vec<Prepared<Wire>>) -> Result<Delivery, Failure> {
        let body = BatchSubscribe {
            members: members
                .iter()
                .map(|m| Subscriber {
                    email_address: &m.wire.email,
                    status_if_new: "subscribed",
                    status: "subscribed",
                    merge_fields: &m.wire.merge_fields,
                })
                .collect(),
            update_existing: true,
        };
        let answer = self
            .api
            .call(reqwest::Method::POST, &self.list_path(audience), Some(&body))
            .await?;
        let sent = members.len() as u64;
        if matches!(answer.status.as_u16(), 401 | 403 | 404) {
            return Err(account_refusal(
                &answer,
                &format!("the members of list '{}'", audience.id),
            ));
        }
        if !answer.status.is_success() {
            // Any other refusal of the call (400: a malformed batch) refuses its members.
            let reason = problem(&answer);
            let code = format!("HTTP_{}", answer.status.as_u16());
            return Ok(Delivery {
                rejected: members
                    .iter()
                    .map(|m| Rejection::new(m.key.clone(), &reason, code.clone()))
                    .collect(),
                ..Delivery::default()
            });
        }
        let rejected = member_errors(&answer.body, &members);
        let refused: std::collections::HashSet<&str> = rejected.iter().map(|r| r.key.as_str()).collect();
        let mut delivery = Delivery {
            accepted: sent - rejected.len() as u64,
            rejected: rejected.clone(),
            ..Delivery::default()
        };
        if self.tag_with_segment {
            let taken: Vec<&Prepared<Wire>> = members.iter().filter(|m| !refused.contains(m.key.as_str())).collect();
            let tagged = self.tag(audience, taken).await?;
            delivery.accepted -= tagged.len() as u64;
            delivery.rejected.extend(tagged);
        }
        Ok(delivery)
    }

    /// Tags each member with the segment's name; those Mailchimp refuses are rejected.
    async fn tag(&self, audience: &Audience, members: Vec<&Prepared<Wire>>) -> Result<Vec<Rejection>, Failure> {
        let body = json!({"tags": [{"name": audience.name, "status": "active"}]});
        let jobs: Vec<(String, String)> = members
            .into_iter()
            .map(|m| {
                let path = format!(
                    "{}/members/{}/tags",
                    self.list_path(audience),
                    subscriber_hash(&m.wire.email)
                );
                (path, m.key.clone())
            })
            .collect();
        let (api, body) = (&self.api, &body);
        let calls = jobs.into_iter().map(|(path, key)| async move {
            let answer = api.call(reqwest::Method::POST, &path, Some(body)).await?;
            Ok::<_, Failure>(refusal_of(&answer, &key))
        });
        let answers: Vec<Result<Option<Rejection>, Failure>> = futures::stream::iter(calls)
            .buffer_unordered(CONNECTIONS)
            .collect()
            .await;
        let mut rejected = Vec::new();
        for answer in answers {
            rejected.extend(answer?);
        }
        Ok(rejected)
    }

    /// Archives each member who left (404: not in the list, which is what was wanted).
    async fn archive(&self, audience: &Audience, members: Vec<Prepared<Wire>>) -> Result<Delivery, Failure> {
        let jobs: Vec<(String, String)> = members
            .iter()
            .map(|m| {
                (
                    format!(
                        "{}/members/{}",
                        self.list_path(audience),
                        subscriber_hash(&m.wire.email)
                    ),
                    m.key.clone(),
                )
            })
            .collect();
        let api = &self.api;
        let list = audience.id.clone();
        let list = &list;
        let calls = jobs.into_iter().map(|(path, key)| async move {
            let answer = api.call(reqwest::Method::DELETE, &path, None::<&Value>).await?;
            if answer.status.as_u16() == 404 {
                return Ok(None);
            }
            if matches!(answer.status.as_u16(), 401 | 403) {
                return Err(account_refusal(
                    &answer,
                    &format!("archiving a member of list '{list}'"),
                ));
            }
            Ok::<_, Failure>(refusal_of(&answer, &key))
        });
        let answers: Vec<Result<Option<Rejection>, Failure>> = futures::stream::iter(calls)
            .buffer_unordered(CONNECTIONS)
            .collect()
            .await;
        let mut delivery = Delivery::default();
        for answer in answers {
            match answer? {
                None => delivery.removed += 1,
                Some(rejection) => delivery.rejected.push(rejection),
            }
        }
        Ok(delivery)
    }
}

/// A member-level call's refusal (None when it succeeded).
fn refusal_of(answer: &Answer, key: &str) -> Option<Rejection> {
    (!answer.status.is_success())
        .then(|| Rejection::new(key, &problem(answer), format!("HTTP_{}", answer.status.as_u16())))
}

/// The `errors[]` of a batch subscribe answer, each mapped back to the members with that
/// address (Mailchimp compares addresses without case); code: the entry's `error_code`.
fn member_errors(body: &[u8], members: &[Prepared<Wire>]) -> Vec<Rejection> {
    let Ok(answer) = serde_json::from_slice::<Value>(body) else {
        return Vec::new();
    };
    let Some(errors) = answer.get("errors").and_then(Value::as_array) else {
        return Vec::new();
    };
    let mut rejected = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for error in errors {
        let text = |field: &str| error.get(field).and_then(Value::as_str).unwrap_or_default();
        let email = text("email_address").trim().to_lowercase();
        let code = Some(text("error_code")).filter(|c| !c.is_empty()).unwrap_or("REJECTED");
        for member in members.iter().filter(|m| m.wire.email.to_lowercase() == email) {
            if seen.insert(member.key.clone()) {
                rejected.push(Rejection::new(member.key.clone(), text("error"), code));
            }
        }
    }
    rejected
}

/// A path segment (list ids are plain, but a setting could hold anything).
fn urlencode(segment: &str) -> String {
    url::form_urlencoded::byte_serialize(segment.as_bytes()).collect()
}

#[async_trait]
impl Connector for Mailchimp {
    /// CONNECTORS.md: `GET /ping` (the key), then `GET /lists/{audience_id}` (the list).
    async fn test(&self, target: &Target<'_>) -> TestReport {
        let api = Api::of(target);
        let mut checks = Vec::new();
        match api.call(reqwest::Method::GET, "/ping", None::<&Value>).await {
            Ok(answer) if answer.status.is_success() => {
                checks.push(Check::pass("credentials", "the API key is valid (GET /ping)"));
            }
            Ok(answer) => {
                checks.push(Check::fail(
                    "credentials",
                    format!("GET /ping answered {}: {}", answer.status, problem(&answer)),
                ));
                return TestReport { checks };
            }
            Err(failure) => {
                checks.push(Check::fail(
                    network_step(failure.message()).unwrap_or("credentials"),
                    failure.message(),
                ));
                return TestReport { checks };
            }
        }
        let list = target.config("audience_id").trim().to_string();
        let check = match api
            .call(
                reqwest::Method::GET,
                &format!("/lists/{}", urlencode(&list)),
                None::<&Value>,
            )
            .await
        {
            Ok(answer) if answer.status.is_success() => {
                let name = serde_json::from_slice::<Value>(&answer.body)
                    .ok()
                    .and_then(|v| v.get("name").and_then(Value::as_str).map(str::to_string))
                    .unwrap_or_default();
                Check::pass("audience", format!("audience '{list}' ({name}) is reachable"))
            }
            Ok(answer) => Check::fail(
                "audience",
                format!("GET /lists/{list} answered {}: {}", answer.status, problem(&answer)),
            ),
            Err(failure) => Check::fail("audience", failure.message()),
        };
        checks.push(check);
        TestReport { checks }
    }

    async fn open_sink(&self, run: &RunTarget<'_>) -> Result<Box<dyn Sink>, Failure> {
        Ok(Box::new(AudienceSink::new(vendor(run), run)))
    }

    fn sample(&self, run: &RunTarget<'_>, part: &PartSchema, rows: Vec<Vec<Value>>) -> Vec<Map<String, Value>> {
        audience::sample(&vendor(run), part, rows)
    }
}

/// The vendor a run's sink (or a preview) works with.
fn vendor(run: &RunTarget<'_>) -> MailchimpVendor {
    let list = match setting(run, "audience_id") {
        "" => run.target.config("audience_id").trim().to_string(),
        list => list.to_string(),
    };
    MailchimpVendor {
        api: Api::of(&run.target),
        list,
        tag_with_segment: setting(run, "tag_with_segment").eq_ignore_ascii_case("true"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn member(key: &str, values: &[(&str, Value)]) -> Member {
        Member {
            key: key.into(),
            values: values
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect::<BTreeMap<_, _>>()
                .into_iter()
                .collect(),
        }
    }

    fn vendor() -> MailchimpVendor {
        MailchimpVendor {
            api: Api {
                root: String::new(),
                api_key: String::new(),
                secrets: Vec::new(),
                gate: Arc::new(Gate::new(limits().pace())),
            },
            list: "l1".into(),
            tag_with_segment: false,
        }
    }

    #[test]
    fn members_become_an_address_and_upper_cased_merge_fields() {
        let wire = vendor()
            .prepare(&member(
                "c1",
                &[
                    ("email", json!(" Ann@Example.com ")),
                    ("first_name", json!("Ann")),
                    ("ltv", json!(3.5)),
                ],
            ))
            .unwrap();
        assert_eq!(wire.email, "Ann@Example.com");
        assert_eq!(
            serde_json::to_value(&wire.merge_fields).unwrap(),
            json!({"FIRST_NAME": "Ann", "LTV": 3.5})
        );
        let none = vendor()
            .prepare(&member("c2", &[("first_name", json!("Bo"))]))
            .unwrap_err();
        assert_eq!(none.code, NO_IDENTIFIER);
        let bad = vendor()
            .prepare(&member("c3", &[("email", json!("bo at example"))]))
            .unwrap_err();
        assert_eq!(bad.code, INVALID_IDENTIFIER);
        assert!(bad.reason.contains("bo at example"), "{}", bad.reason);
    }

    #[test]
    fn errors_are_mapped_back_to_members_by_address() {
        let members: Vec<Prepared<Wire>> = ["a@x.io", "B@x.io"]
            .iter()
            .enumerate()
            .map(|(i, email)| Prepared {
                key: format!("k{i}"),
                member: member("", &[]),
                wire: Wire {
                    email: email.to_string(),
                    merge_fields: MergeFields::default(),
                },
            })
            .collect();
        let body = br#"{"errors": [{"email_address": "b@x.io", "error": "looks fake", "error_code": "ERROR_CONTACT_EXISTS"}, {"email_address": "z@x.io", "error": "?"}]}"#;
        assert_eq!(
            member_errors(body, &members),
            vec![Rejection::new("k1", "looks fake", "ERROR_CONTACT_EXISTS")]
        );
    }
}
