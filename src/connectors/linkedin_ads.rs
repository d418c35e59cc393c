//! `linkedin-ads`: segments as LinkedIn DMP segments (matched audiences) through the versioned
//! Marketing API (CONNECTORS.md, "Wire details": `linkedin-ads`; PRODUCT.md §5, §6, §11, §12).
//!
//! References followed (LinkedIn Marketing API, "Matched Audiences"):
//! - versioned headers: `Authorization: Bearer`, `LinkedIn-Version: YYYYMM`,
//!   `X-Restli-Protocol-Version: 2.0.0`;
//! - "DMP Segments": the finder `GET /rest/dmpSegments?q=account&account=<sponsoredAccount
//!   URN>` to find a segment by name, `POST /rest/dmpSegments` (`name`, `sourcePlatform`,
//!   `account`, `accessPolicy`, `type` USER or COMPANY, `destinations`) to create one, its id in
//!   the `x-restli-id` header;
//! - "DMP Segment Users" / "DMP Segment Companies": `POST /rest/dmpSegments/{id}/users` or
//!   `/companies` with `X-RestLi-Method: BATCH_CREATE` and `elements[]` (`action` ADD or
//!   REMOVE; users `userIds` `[{idType: SHA256_EMAIL, idValue}]`, `firstName`, `lastName`,
//!   `title`, `company`, `country`; companies `companyName`, `companyEmailDomain`,
//!   `companyWebsiteDomain`), answered with one `status` per element in order (non-2xx: that
//!   member is rejected); at most 5,000 elements a call;
//! - audiences need at least 300 members (checked at run start, before any request).

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Map, Value, json};

use super::audience::identifiers::linkedin_email;
use super::audience::{
    self, AudienceSink, INVALID_IDENTIFIER, Member, NO_IDENTIFIER, Operation, Prepared, Sequence, Vendor, setting,
};
use super::http::gate::{Gate, gate_for};
use super::http::{self, Answer};
use super::registry::{ALL_SEGMENTS, AUDIENCE_MODES, BASE_URL, PEOPLE_SEGMENTS, TEXT, key, optional};
use super::retry::Failure;
use super::{
    Audience, Check, Connector, Delivery, PartSchema, Rejection, RunTarget, Sink, SinkLimits, Target, TestReport,
    network_step,
};
use crate::domain::connection_type::{
    Category, ConnectionTypeSpec, ExportKind, SegmentType, TargetOptionSpec, ValueKind,
};

const TYPE_ID: &str = "linkedin-ads";
pub const DEFAULT_ROOT: &str = "https://api.linkedin.com/rest";
/// A supported Marketing API version (versions are supported for about a year).
pub const DEFAULT_API_VERSION: &str = "202604";
pub const ELEMENTS_PER_CALL: usize = 5_000;
/// LinkedIn limits the streaming users/companies APIs per member and minute: few requests in
/// flight per connection.
pub const CONCURRENCY: usize = 2;

pub const SPEC: ConnectionTypeSpec = ConnectionTypeSpec {
    id: TYPE_ID,
    display_name: "LinkedIn Ads",
    category: Category::Advertising,
    export_kinds: &[ExportKind::Segment],
    segment_types: ALL_SEGMENTS,
    sync_modes: AUDIENCE_MODES,
    required_fields: &[],
    identifier_fields: &["email"],
    profile_limit: 100_000,
    minimum_segment_size: 300,
    config: &[
        key("ad_account_id", "sponsored account id", TEXT),
        optional(
            "api_version",
            "LinkedIn-Version header, YYYYMM (default: a current version)",
            TEXT,
        ),
        optional(
            "source_platform",
            "sourcePlatform of segments created (default LIST_UPLOAD)",
            TEXT,
        ),
        BASE_URL,
    ],
    secrets: &[key("access_token", "OAuth access token", TEXT)],
    one_of_secrets: &[],
    settings: &[
        optional(
            "audience_name",
            "audience name (default: the segment's display name); created if absent",
            TEXT,
        ),
        optional("audience_id", "an existing audience to fill instead", TEXT),
        optional(
            "target",
            "`CONTACT` (default) or `COMPANY`",
            ValueKind::OneOf(&["CONTACT", "COMPANY"]),
        ),
    ],
    target_options: &[
        TargetOptionSpec {
            value: "CONTACT",
            description: "people, matched by email (default)",
            identifier_fields: &["email"],
            segment_types: PEOPLE_SEGMENTS,
        },
        TargetOptionSpec {
            value: "COMPANY",
            description: "companies, matched by name, email domain or website",
            identifier_fields: &["company_name", "email_domain", "company_website"],
            segment_types: &[SegmentType::Account],
        },
    ],
};

pub struct LinkedInAds;

fn limits() -> SinkLimits {
    SinkLimits {
        records_per_batch: ELEMENTS_PER_CALL,
        bytes_per_batch: None,
        requests_per_second: None,
        concurrency: CONCURRENCY,
    }
}

struct Api {
    root: String,
    version: String,
    account: String,
    token: String,
    secrets: Vec<String>,
    gate: Arc<Gate>,
}

/// LinkedIn's error document (`{"status", "message", "serviceErrorCode"}`), or the body.
fn refusal(answer: &Answer) -> String {
    let value: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
    match value["message"].as_str() {
        Some(message) => format!("{message} (status {})", answer.status.as_u16()),
        None => answer.body_text(256),
    }
}

impl Api {
    fn of(target: &Target<'_>) -> Api {
        let config = |k: &str| target.config(k).trim().to_string();
        let or = |value: String, default: &str| if value.is_empty() { default.to_string() } else { value };
        let token = target.secrets.get("access_token").cloned().unwrap_or_default();
        Api {
            root: or(config("base_url").trim_end_matches('/').to_string(), DEFAULT_ROOT),
            version: or(config("api_version"), DEFAULT_API_VERSION),
            account: format!("urn:li:sponsoredAccount:{}", config("ad_account_id")),
            secrets: vec![token.clone()],
            token,
            gate: gate_for(&target.connection.name.to_string(), limits().pace()),
        }
    }

    async fn call<B: serde::Serialize + ?Sized>(
        &self,
        method: reqwest::Method,
        url: &str,
        restli_method: Option<&str>,
        body: Option<&B>,
    ) -> Result<(Answer, Value), Failure> {
        let body = body.map(|b| bytes::Bytes::from(serde_json::to_vec(b).expect("request bodies serialize")));
        let answer = http::send_paced(&self.gate, TYPE_ID, &self.secrets, || {
            let mut request = http::client()
                .request(method.clone(), url)
                .bearer_auth(&self.token)
                .header("LinkedIn-Version", &self.version)
                .header("X-Restli-Protocol-Version", "2.0.0");
            if let Some(restli) = restli_method {
                request = request.header("X-RestLi-Method", restli);
            }
            if let Some(body) = &body {
                request = request
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.clone());
            }
            request
        })
        .await?;
        let value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
        Ok((answer, value))
    }

    /// The finder of the account's DMP segments (its URN encoded as Rest.li 2.0 wants).
    fn finder_url(&self, start: usize) -> String {
        let mut url = url::Url::parse(&format!("{}/dmpSegments", self.root)).expect("the root is a URL");
        url.query_pairs_mut()
            .append_pair("q", "account")
            .append_pair("account", &self.account)
            .append_pair("start", &start.to_string())
            .append_pair("count", "100");
        url.to_string()
    }
}

/// Which kind of DMP segment a part fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    User,
    Company,
}

/// The target fields of a company element and LinkedIn's names for them.
const COMPANY_FIELDS: [(&str, &str); 3] = [
    ("company_name", "companyName"),
    ("email_domain", "companyEmailDomain"),
    ("company_website", "companyWebsiteDomain"),
];
/// The target fields of a user element (besides the hashed email) and LinkedIn's names.
const USER_FIELDS: [(&str, &str); 5] = [
    ("first_name", "firstName"),
    ("last_name", "lastName"),
    ("title", "title"),
    ("company", "company"),
    ("country", "country"),
];

/// An element as a preview shows it: its values under their target fields (the hashed email
/// under `email`).
fn element_sample(element: &Map<String, Value>) -> Map<String, Value> {
    let mut row: Map<String, Value> = COMPANY_FIELDS
        .iter()
        .chain(USER_FIELDS.iter())
        .filter_map(|(field, name)| Some((field.to_string(), element.get(*name)?.clone())))
        .collect();
    if let Some(hash) = element
        .get("userIds")
        .and_then(|ids| ids.get(0))
        .and_then(|id| id.get("idValue"))
    {
        row.insert("email".into(), hash.clone());
    }
    row
}

/// One element as LinkedIn receives it (without its `action`), or why it is refused first.
pub fn element(company: bool, member: &Member) -> Result<Map<String, Value>, Rejection> {
    let mut element = Map::new();
    let put = |field: &str, name: &str, element: &mut Map<String, Value>| {
        if let Some(value) = member.text(field) {
            element.insert(name.to_string(), json!(value.trim()));
        }
    };
    if company {
        for (field, name) in COMPANY_FIELDS {
            put(field, name, &mut element);
        }
        if element.is_empty() {
            return Err(member.reject("the company has no name, email domain or website", NO_IDENTIFIER));
        }
        return Ok(element);
    }
    let Some(raw) = member.text("email") else {
        return Err(member.reject("the member has no email address", NO_IDENTIFIER));
    };
    let hash = linkedin_email(&raw).map_err(|reason| member.reject(&reason, INVALID_IDENTIFIER))?;
    element.insert("userIds".into(), json!([{"idType": "SHA256_EMAIL", "idValue": hash}]));
    for (field, name) in USER_FIELDS {
        put(field, name, &mut element);
    }
    Ok(element)
}

/// A BATCH_CREATE body, serialized straight from the prepared elements (none is copied to
/// add its `action`).
#[derive(serde::Serialize)]
struct Elements<'a> {
    elements: Vec<Element<'a>>,
}

#[derive(serde::Serialize)]
struct Element<'a> {
    #[serde(flatten)]
    fields: &'a Map<String, Value>,
    action: &'static str,
}

struct LinkedInVendor {
    api: Api,
    kind: Kind,
    audience_id: String,
    audience_name: String,
    source_platform: String,
}

#[async_trait]
impl Vendor for LinkedInVendor {
    type Wire = Map<String, Value>;

    fn type_id(&self) -> &'static str {
        TYPE_ID
    }

    fn limits(&self) -> SinkLimits {
        limits()
    }

    fn prepare(&self, member: &Member) -> Result<Map<String, Value>, Rejection> {
        element(self.kind == Kind::Company, member)
    }

    fn sample(&self, _member: &Member, wire: &Map<String, Value>) -> Map<String, Value> {
        element_sample(wire)
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
        let mut start = 0;
        for _ in 0..1000 {
            let (answer, value) = self
                .api
                .call(reqwest::Method::GET, &self.api.finder_url(start), None, None::<&Value>)
                .await?;
            if !answer.status.is_success() {
                return Err(Failure::Permanent {
                    message: format!("finding the DMP segments of {}: {}", self.api.account, refusal(&answer)),
                });
            }
            let elements = value["elements"].as_array().cloned().unwrap_or_default();
            if let Some(found) = elements.iter().find(|e| e["name"] == name.as_str()) {
                let id = match &found["id"] {
                    Value::String(id) => id.clone(),
                    other => other.to_string(),
                };
                return Ok(Audience { id, name });
            }
            let total = value["paging"]["total"].as_u64().unwrap_or(0) as usize;
            start += elements.len();
            if elements.is_empty() || start >= total {
                break;
            }
        }
        let body = json!({
            "name": name,
            "sourcePlatform": self.source_platform,
            "account": self.api.account,
            "accessPolicy": "PRIVATE",
            "type": if self.kind == Kind::Company { "COMPANY" } else { "USER" },
            "destinations": [{"destination": "LINKEDIN"}],
        });
        let url = format!("{}/dmpSegments", self.api.root);
        let (answer, _) = self.api.call(reqwest::Method::POST, &url, None, Some(&body)).await?;
        let id = answer
            .headers
            .get("x-restli-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        match id {
            Some(id) if answer.status.is_success() => Ok(Audience { id, name }),
            _ => Err(Failure::Permanent {
                message: format!("creating DMP segment '{name}': {}", refusal(&answer)),
            }),
        }
    }

    async fn send(
        &self,
        audience: &Audience,
        operation: Operation,
        members: Vec<Prepared<Map<String, Value>>>,
        _sequence: Sequence,
    ) -> Result<Delivery, Failure> {
        let action = if operation == Operation::Add { "ADD" } else { "REMOVE" };
        let elements: Vec<Element<'_>> = members
            .iter()
            .map(|m| Element {
                fields: &m.wire,
                action,
            })
            .collect();
        let resource = if self.kind == Kind::Company {
            "companies"
        } else {
            "users"
        };
        let url = format!("{}/dmpSegments/{}/{resource}", self.api.root, audience.id);
        let body = Elements { elements };
        let (answer, value) = self
            .api
            .call(reqwest::Method::POST, &url, Some("BATCH_CREATE"), Some(&body))
            .await?;
        if !answer.status.is_success() {
            return Err(Failure::Permanent {
                message: format!(
                    "DMP segment {} refused the {resource} ({})",
                    audience.id,
                    refusal(&answer)
                ),
            });
        }
        // One status per element, in order.
        let statuses: &[Value] = value["elements"].as_array().map(Vec::as_slice).unwrap_or_default();
        let mut delivery = Delivery::default();
        for (i, member) in members.iter().enumerate() {
            let status = statuses.get(i).and_then(|s| s["status"].as_u64()).unwrap_or(0);
            if (200..300).contains(&status) {
                match operation {
                    Operation::Add => delivery.accepted += 1,
                    Operation::Remove => delivery.removed += 1,
                }
            } else {
                let message = statuses
                    .get(i)
                    .and_then(|s| s["message"].as_str().or(s["error"]["message"].as_str()))
                    .unwrap_or("LinkedIn refused the element")
                    .to_string();
                delivery
                    .rejected
                    .push(Rejection::new(member.key.clone(), &message, format!("HTTP_{status}")));
            }
        }
        Ok(delivery)
    }
}

#[async_trait]
impl Connector for LinkedInAds {
    /// The token and the account together: the account's DMP segment finder.
    async fn test(&self, target: &Target<'_>) -> TestReport {
        let api = Api::of(target);
        let check = match api
            .call(reqwest::Method::GET, &api.finder_url(0), None, None::<&Value>)
            .await
        {
            Ok((answer, _)) if answer.status.is_success() => {
                Check::pass("ad_account", format!("the DMP segments of {} can be read", api.account))
            }
            Ok((answer, _)) => {
                let step = if answer.status.as_u16() == 401 {
                    "credentials"
                } else {
                    "ad_account"
                };
                Check::fail(
                    step,
                    format!("GET /dmpSegments answered {}: {}", answer.status, refusal(&answer)),
                )
            }
            Err(failure) => Check::fail(
                network_step(failure.message()).unwrap_or("credentials"),
                failure.message(),
            ),
        };
        TestReport { checks: vec![check] }
    }

    async fn open_sink(&self, run: &RunTarget<'_>) -> Result<Box<dyn Sink>, Failure> {
        Ok(Box::new(AudienceSink::new(vendor(run), run)))
    }

    fn sample(&self, run: &RunTarget<'_>, part: &PartSchema, rows: Vec<Vec<Value>>) -> Vec<Map<String, Value>> {
        audience::sample(&vendor(run), part, rows)
    }
}

/// The vendor a run's sink (or a preview) works with.
fn vendor(run: &RunTarget<'_>) -> LinkedInVendor {
    let platform = run.target.config("source_platform").trim();
    LinkedInVendor {
        api: Api::of(&run.target),
        kind: if setting(run, "target").eq_ignore_ascii_case("COMPANY") {
            Kind::Company
        } else {
            Kind::User
        },
        audience_id: setting(run, "audience_id").to_string(),
        audience_name: setting(run, "audience_name").to_string(),
        source_platform: if platform.is_empty() {
            "LIST_UPLOAD".into()
        } else {
            platform.to_string()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connectors::audience::identifiers::sha256_hex;
    use crate::connectors::audience::member_of as member;

    #[test]
    fn users_carry_the_hashed_email_and_companies_their_names() {
        let user = element(false, &member(&[("email", " Ann@Example.com "), ("first_name", "Ann")])).unwrap();
        assert_eq!(
            Value::Object(user),
            json!({"userIds": [{"idType": "SHA256_EMAIL", "idValue": sha256_hex("ann@example.com")}], "firstName": "Ann"})
        );
        let company = element(true, &member(&[("company_name", "Acme"), ("email_domain", "acme.io")])).unwrap();
        assert_eq!(
            Value::Object(company),
            json!({"companyName": "Acme", "companyEmailDomain": "acme.io"})
        );
        assert_eq!(element(false, &member(&[])).unwrap_err().code, NO_IDENTIFIER);
        assert_eq!(
            element(true, &member(&[("email", "a@b.io")])).unwrap_err().code,
            NO_IDENTIFIER
        );
        assert_eq!(
            element(false, &member(&[("email", "nope")])).unwrap_err().code,
            INVALID_IDENTIFIER
        );
    }
}
