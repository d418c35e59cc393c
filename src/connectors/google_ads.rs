//! `google-ads`: segments as Customer Match user lists through Google's Data Manager API
//! (CONNECTORS.md, "Wire details": `google-ads`; PRODUCT.md §11, §12). Customer Match through
//! the Google Ads API is closed to new adopters since April 2026.
//!
//! References followed (Google Data Manager API):
//! - "Send audience members": `POST /v1/audienceMembers:ingest` with `destinations`
//!   (`operatingAccount`/`loginAccount` `{accountType: GOOGLE_ADS, accountId}`,
//!   `productDestinationId`: the user list), `audienceMembers[].userData.userIdentifiers[]`
//!   (`emailAddress`, `phoneNumber`), `encoding: HEX`, `termsOfService` and `consent`;
//!   `POST /v1/audienceMembers:remove` with the same but terms and consent; at most 10,000
//!   members a request;
//! - "Format user data" (normalisation and SHA-256 hex: see `audience::identifiers`);
//! - "Understand API errors": the fast-fail model — a request with an invalid member fails as a
//!   whole with `INVALID_ARGUMENT` and `google.rpc.BadRequest` field violations naming
//!   `audience_members[i]`; exportd rejects those members and sends the others again;
//! - OAuth 2.0 for web server apps, "Refreshing an access token": `POST` the token endpoint
//!   with `grant_type=refresh_token`, `refresh_token`, `client_id`, `client_secret`; the
//!   answer's `access_token` is used until `expires_in` runs out (a 401 refreshes it once).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::{Value, json};

use super::audience::identifiers::{google_email, google_phone};
use super::audience::{
    self, AudienceSink, INVALID_IDENTIFIER, Member, NO_IDENTIFIER, Operation, Prepared, Sequence, Vendor, setting,
};
use super::http::gate::{Gate, gate_for};
use super::http::{self, Answer};
use super::registry::{
    ADVERTISING_SETTINGS, AUDIENCE_MODES, BASE_URL, CONTACT_TARGET, HTTP_URL, PEOPLE_SEGMENTS, TEXT, key, optional,
};
use super::retry::Failure;
use super::{
    Audience, Check, Connector, Delivery, PartSchema, Rejection, RunTarget, Sink, SinkLimits, Target, TestReport,
    network_step,
};
use crate::domain::connection_type::{Category, ConnectionTypeSpec, ExportKind};

const TYPE_ID: &str = "google-ads";
pub const DEFAULT_ROOT: &str = "https://datamanager.googleapis.com/v1";
pub const DEFAULT_TOKEN_URL: &str = "https://oauth2.googleapis.com/token";
/// "Send audience members": at most 10,000 members a request.
pub const MEMBERS_PER_REQUEST: usize = 10_000;
/// Data Manager quotas are per project; a few requests in flight per connection.
pub const CONCURRENCY: usize = 4;
/// Rounds of sending a batch again without the members a fast-failed request named.
const RESEND_ROUNDS: usize = 3;

pub const SPEC: ConnectionTypeSpec = ConnectionTypeSpec {
    id: TYPE_ID,
    display_name: "Google Ads",
    category: Category::Advertising,
    export_kinds: &[ExportKind::Segment],
    segment_types: PEOPLE_SEGMENTS,
    sync_modes: AUDIENCE_MODES,
    required_fields: &[],
    identifier_fields: &["email", "phone"],
    profile_limit: 1_000_000,
    minimum_segment_size: 0,
    config: &[
        key("customer_id", "the operating Google Ads account, digits only", TEXT),
        optional("login_customer_id", "manager account, digits only", TEXT),
        BASE_URL,
        optional(
            "token_url",
            "OAuth token endpoint (default https://oauth2.googleapis.com/token)",
            HTTP_URL,
        ),
    ],
    secrets: &[
        key("oauth_refresh_token", "OAuth refresh token", TEXT),
        key("oauth_client_id", "OAuth client id", TEXT),
        key("oauth_client_secret", "OAuth client secret", TEXT),
    ],
    one_of_secrets: &[],
    settings: ADVERTISING_SETTINGS,
    target_options: &[CONTACT_TARGET],
};

pub struct GoogleAds;

fn limits() -> SinkLimits {
    SinkLimits {
        records_per_batch: MEMBERS_PER_REQUEST,
        bytes_per_batch: None,
        requests_per_second: None,
        concurrency: CONCURRENCY,
    }
}

/// Access tokens by token endpoint, client and refresh token (hashed), until they expire.
fn token_cache() -> &'static Mutex<HashMap<String, (String, Instant)>> {
    static CACHE: OnceLock<Mutex<HashMap<String, (String, Instant)>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

struct Api {
    root: String,
    token_url: String,
    customer: String,
    login_customer: String,
    refresh_token: String,
    client_id: String,
    client_secret: String,
    cache_key: String,
    secrets: Vec<String>,
    gate: Arc<Gate>,
}

impl Api {
    fn of(target: &Target<'_>) -> Api {
        let config = |k: &str| target.config(k).trim().to_string();
        let secret = |k: &str| target.secrets.get(k).cloned().unwrap_or_default();
        let or = |value: String, default: &str| if value.is_empty() { default.to_string() } else { value };
        let refresh_token = secret("oauth_refresh_token");
        let client_secret = secret("oauth_client_secret");
        Api {
            root: or(config("base_url").trim_end_matches('/').to_string(), DEFAULT_ROOT),
            token_url: or(config("token_url"), DEFAULT_TOKEN_URL),
            customer: config("customer_id").replace('-', ""),
            login_customer: config("login_customer_id").replace('-', ""),
            // A token belongs to the endpoint that issued it and the grant it was issued for.
            cache_key: super::audience::identifiers::sha256_hex(&format!(
                "{}\n{}\n{}",
                or(config("token_url"), DEFAULT_TOKEN_URL),
                secret("oauth_client_id"),
                refresh_token
            )),
            secrets: vec![refresh_token.clone(), client_secret.clone()],
            refresh_token,
            client_id: secret("oauth_client_id"),
            client_secret,
            gate: gate_for(&target.connection.name.to_string(), limits().pace()),
        }
    }

    /// A cached access token, or a new one from the refresh token.
    async fn access_token(&self, fresh: bool) -> Result<String, Failure> {
        if !fresh
            && let Some((token, until)) = token_cache().lock().expect("never poisoned").get(&self.cache_key)
            && *until > Instant::now()
        {
            return Ok(token.clone());
        }
        let form = [
            ("grant_type", "refresh_token"),
            ("refresh_token", self.refresh_token.as_str()),
            ("client_id", self.client_id.as_str()),
            ("client_secret", self.client_secret.as_str()),
        ];
        let form: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let answer = http::send_paced(&self.gate, TYPE_ID, &self.secrets, || {
            http::client()
                .post(&self.token_url)
                .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(form.clone())
        })
        .await?;
        let value: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
        let token = value["access_token"].as_str().filter(|_| answer.status.is_success());
        let Some(token) = token else {
            let reason = [value["error"].as_str(), value["error_description"].as_str()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(": ");
            return Err(Failure::Permanent {
                message: format!("the OAuth token endpoint answered {}: {reason}", answer.status),
            });
        };
        // A minute early, so that a token does not expire on its way.
        let lifetime = Duration::from_secs(value["expires_in"].as_u64().unwrap_or(3600).saturating_sub(60));
        token_cache()
            .lock()
            .expect("never poisoned")
            .insert(self.cache_key.clone(), (token.to_string(), Instant::now() + lifetime));
        Ok(token.to_string())
    }

    /// A POST with a bearer token; a 401 refreshes the token once and sends it again.
    async fn post<B: serde::Serialize + ?Sized>(&self, path: &str, body: &B) -> Result<(Answer, Value), Failure> {
        let bytes = bytes::Bytes::from(serde_json::to_vec(body).expect("request bodies serialize"));
        let url = format!("{}{path}", self.root);
        let mut fresh = false;
        loop {
            let token = self.access_token(fresh).await?;
            let mut secrets = self.secrets.clone();
            secrets.push(token.clone());
            let answer = http::send_paced(&self.gate, TYPE_ID, &secrets, || {
                http::client()
                    .post(&url)
                    .bearer_auth(&token)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(bytes.clone())
            })
            .await?;
            if answer.status.as_u16() == 401 && !fresh {
                fresh = true;
                continue;
            }
            let value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
            return Ok((answer, value));
        }
    }

    fn destination(&self, user_list: &str) -> Value {
        let mut destination = json!({
            "operatingAccount": {"accountType": "GOOGLE_ADS", "accountId": self.customer},
            "productDestinationId": user_list,
        });
        if !self.login_customer.is_empty() {
            destination["loginAccount"] = json!({"accountType": "GOOGLE_ADS", "accountId": self.login_customer});
        }
        destination
    }
}

/// An `audienceMembers:ingest` or `:remove` body, serialized straight from the prepared members
/// (a JSON tree of 10,000 members beside them would double a request's memory).
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct MembersRequest<'a> {
    destinations: [Value; 1],
    audience_members: Vec<AudienceMember<'a>>,
    encoding: &'static str,
    /// Ingest only.
    #[serde(skip_serializing_if = "Option::is_none")]
    terms_of_service: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    consent: Option<Value>,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct AudienceMember<'a> {
    user_data: UserData<'a>,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct UserData<'a> {
    user_identifiers: &'a [Value],
}

/// `google.rpc.Status` of an error answer: its message, and the members its field violations
/// name (`audience_members[i]…`) with their description and reason.
fn violations(value: &Value) -> (String, Vec<(usize, String, String)>) {
    let error = &value["error"];
    let message = error["message"].as_str().unwrap_or_default().to_string();
    let mut named = Vec::new();
    let reason_of_info = error["details"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|d| d["reason"].as_str())
        .unwrap_or("INVALID_ARGUMENT")
        .to_string();
    for detail in error["details"].as_array().into_iter().flatten() {
        for violation in detail["fieldViolations"].as_array().into_iter().flatten() {
            let field = violation["field"].as_str().unwrap_or_default();
            let index = field
                .strip_prefix("audience_members[")
                .or_else(|| field.strip_prefix("audienceMembers["))
                .and_then(|rest| rest.split(']').next())
                .and_then(|i| i.parse::<usize>().ok());
            if let Some(index) = index {
                let reason = violation["reason"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| reason_of_info.clone());
                let description = violation["description"].as_str().unwrap_or(&message).to_string();
                named.push((index, description, reason));
            }
        }
    }
    (message, named)
}

/// A member's identifiers as Google receives them: `[{"emailAddress": hex}, {"phoneNumber": hex}]`.
pub fn user_identifiers(member: &Member) -> Result<Vec<Value>, Rejection> {
    let (email, phone) = (member.text("email"), member.text("phone"));
    if email.is_none() && phone.is_none() {
        return Err(member.reject("the member has neither an email nor a phone", NO_IDENTIFIER));
    }
    let mut identifiers = Vec::new();
    if let Some(raw) = email {
        let hash = google_email(&raw).map_err(|r| member.reject(&r, INVALID_IDENTIFIER))?;
        identifiers.push(json!({"emailAddress": hash}));
    }
    if let Some(raw) = phone {
        let hash = google_phone(&raw).map_err(|r| member.reject(&r, INVALID_IDENTIFIER))?;
        identifiers.push(json!({"phoneNumber": hash}));
    }
    Ok(identifiers)
}

struct GoogleVendor {
    api: Api,
    user_list: String,
}

#[async_trait]
impl Vendor for GoogleVendor {
    type Wire = Vec<Value>;

    fn type_id(&self) -> &'static str {
        TYPE_ID
    }

    fn limits(&self) -> SinkLimits {
        limits()
    }

    fn prepare(&self, member: &Member) -> Result<Vec<Value>, Rejection> {
        user_identifiers(member)
    }

    /// Each identifier's hash under its target field.
    fn sample(&self, _member: &Member, wire: &Vec<Value>) -> serde_json::Map<String, Value> {
        let fields = [("emailAddress", "email"), ("phoneNumber", "phone")];
        wire.iter()
            .filter_map(Value::as_object)
            .flat_map(|identifier| identifier.iter())
            .filter_map(|(name, value)| {
                let (_, field) = fields.iter().find(|(wire_name, _)| wire_name == name)?;
                Some((field.to_string(), value.clone()))
            })
            .collect()
    }

    /// CONNECTORS.md: the user list is the export's `audience_id` (an existing Customer Match
    /// list; the Data Manager API does not create lists).
    async fn open_audience(&self, part: &PartSchema, _remembered: Option<&Audience>) -> Result<Audience, Failure> {
        if self.user_list.is_empty() {
            return Err(Failure::Permanent {
                message:
                    "google-ads exports need the setting audience_id: the id of an existing Customer Match user list"
                        .into(),
            });
        }
        Ok(Audience {
            id: self.user_list.clone(),
            name: part.description.clone(),
        })
    }

    async fn send(
        &self,
        audience: &Audience,
        operation: Operation,
        members: Vec<Prepared<Vec<Value>>>,
        _sequence: Sequence,
    ) -> Result<Delivery, Failure> {
        let path = match operation {
            Operation::Add => "/audienceMembers:ingest",
            Operation::Remove => "/audienceMembers:remove",
        };
        let mut pending: Vec<&Prepared<Vec<Value>>> = members.iter().collect();
        let mut rejected = Vec::new();
        for _ in 0..=RESEND_ROUNDS {
            if pending.is_empty() {
                break;
            }
            let add = operation == Operation::Add;
            let body = MembersRequest {
                destinations: [self.api.destination(&audience.id)],
                audience_members: pending
                    .iter()
                    .map(|m| AudienceMember {
                        user_data: UserData {
                            user_identifiers: &m.wire,
                        },
                    })
                    .collect(),
                encoding: "HEX",
                terms_of_service: add.then(|| json!({"customerMatchTermsOfServiceStatus": "ACCEPTED"})),
                consent: add.then(|| json!({"adUserData": "CONSENT_GRANTED", "adPersonalization": "CONSENT_GRANTED"})),
            };
            let (answer, value) = self.api.post(path, &body).await?;
            if answer.status.is_success() {
                let taken = pending.len() as u64;
                return Ok(match operation {
                    Operation::Add => Delivery {
                        accepted: taken,
                        rejected,
                        ..Delivery::default()
                    },
                    Operation::Remove => Delivery {
                        removed: taken,
                        rejected,
                        ..Delivery::default()
                    },
                });
            }
            let (message, named) = violations(&value);
            if answer.status.as_u16() != 400 || named.is_empty() {
                return Err(Failure::Permanent {
                    message: format!("the Data Manager API answered {} to {path}: {message}", answer.status),
                });
            }
            // Fast fail: nothing was taken; the members named are refused, the others go again.
            let mut refused = std::collections::BTreeSet::new();
            for (index, description, reason) in named {
                if let Some(member) = pending.get(index)
                    && refused.insert(index)
                {
                    rejected.push(Rejection::new(member.key.clone(), &description, reason));
                }
            }
            pending = pending
                .into_iter()
                .enumerate()
                .filter(|(i, _)| !refused.contains(i))
                .map(|(_, m)| m)
                .collect();
        }
        // Still refusing after the rounds: what is left is not taken.
        for member in pending {
            rejected.push(Rejection::new(
                member.key.clone(),
                "refused with the request's other members",
                "REQUEST_REFUSED",
            ));
        }
        Ok(Delivery {
            rejected,
            ..Delivery::default()
        })
    }
}

#[async_trait]
impl Connector for GoogleAds {
    /// The OAuth exchange (check `credentials`); the Data Manager API has no read of accounts
    /// or lists, so the account and list are checked by the first run.
    async fn test(&self, target: &Target<'_>) -> TestReport {
        let api = Api::of(target);
        let check = match api.access_token(true).await {
            Ok(_) => Check::pass("credentials", "the refresh token was exchanged for an access token"),
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
fn vendor(run: &RunTarget<'_>) -> GoogleVendor {
    GoogleVendor {
        api: Api::of(&run.target),
        user_list: setting(run, "audience_id").to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connectors::audience::identifiers::sha256_hex;
    use crate::connectors::audience::member_of as member;

    #[test]
    fn identifiers_are_google_normalised_hashes() {
        let ids = user_identifiers(&member(&[
            ("email", "Cloudy.SanFrancisco+shop@gmail.com"),
            ("phone", "+1 (800) 555-0100"),
        ]))
        .unwrap();
        assert_eq!(
            ids,
            vec![
                json!({"emailAddress": sha256_hex("cloudysanfrancisco@gmail.com")}),
                json!({"phoneNumber": sha256_hex("+18005550100")}),
            ]
        );
        assert_eq!(user_identifiers(&member(&[])).unwrap_err().code, NO_IDENTIFIER);
        assert_eq!(
            user_identifiers(&member(&[("phone", "555-0100")])).unwrap_err().code,
            INVALID_IDENTIFIER
        );
    }

    #[test]
    fn field_violations_name_members_by_index() {
        let body = json!({"error": {"code": 400, "message": "Request contains an invalid argument.", "status": "INVALID_ARGUMENT",
        "details": [
            {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "INVALID_ARGUMENT", "domain": "datamanager.googleapis.com"},
            {"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": [
                {"field": "audience_members[2].user_data.user_identifiers[0]", "description": "Invalid hashed email", "reason": "INVALID_HEX_ENCODING"}
            ]}
        ]}});
        let (message, named) = violations(&body);
        assert_eq!(message, "Request contains an invalid argument.");
        assert_eq!(
            named,
            vec![(
                2,
                "Invalid hashed email".to_string(),
                "INVALID_HEX_ENCODING".to_string()
            )]
        );
    }
}
