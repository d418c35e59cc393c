//! A local Google OAuth token endpoint and Data Manager API (`audienceMembers:ingest` and
//! `:remove`), answering as Google does and refusing what its reference does not allow:
//! - `POST /token` (form: `grant_type=refresh_token`, `refresh_token`, `client_id`,
//!   `client_secret`) → `{"access_token", "expires_in", "token_type"}`, else 400
//!   `invalid_grant`;
//! - `POST /v1/audienceMembers:ingest|remove` with `Authorization: Bearer <a token it issued>`
//!   (else 401 UNAUTHENTICATED); `destinations[0]` with `operatingAccount` `{accountType:
//!   GOOGLE_ADS, accountId}`, `productDestinationId` of a list it knows; `encoding: HEX`;
//!   ingest also `termsOfService` and `consent` as CONNECTORS.md gives them, remove neither;
//!   1 to 10,000 `audienceMembers`, each `userData.userIdentifiers[]` with exactly one of
//!   `emailAddress` / `phoneNumber`, lower-case SHA-256 hex;
//! - the fast-fail model: a request with a member it was told is invalid fails as a whole (400
//!   INVALID_ARGUMENT, `google.rpc.BadRequest` field violations naming `audience_members[i]`).

use super::json_reply::reply;
use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

pub const CUSTOMER: &str = "1234567890";
pub const USER_LIST: &str = "9876543210";
pub const REFRESH_TOKEN: &str = "1//refresh-token-for-tests";
pub const CLIENT_ID: &str = "client-id.apps.googleusercontent.com";
pub const CLIENT_SECRET: &str = "GOCSPX-client-secret";

#[derive(Debug, Clone)]
pub struct Call {
    pub path: String,
    pub authorization: String,
    pub body: Value,
}

#[derive(Default)]
struct State {
    /// How long every answer takes (the benchmark's slower vendor; none by default).
    delay: std::time::Duration,
    issued: BTreeSet<String>,
    token_requests: usize,
    calls: Vec<Call>,
    /// The identifiers (hashes) the list holds.
    list: BTreeSet<String>,
    invalid: BTreeSet<String>,
}

pub struct GoogleDouble {
    /// `base_url`: `http://127.0.0.1:<port>/v1`.
    pub url: String,
    /// `token_url`.
    pub token_url: String,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl GoogleDouble {
    pub async fn start() -> GoogleDouble {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| serve(request, state.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(socket), service)
                        .await;
                });
            }
        });
        GoogleDouble {
            url: format!("{origin}/v1"),
            token_url: format!("{origin}/token"),
            state,
            task,
        }
    }

    /// Every access token issued so far stops working (as when they expire).
    pub fn expire_tokens(&self) {
        self.state.lock().unwrap().issued.clear();
    }

    pub fn token_requests(&self) -> usize {
        self.state.lock().unwrap().token_requests
    }

    /// A hashed identifier the API refuses.
    pub fn invalid(&self, hash: &str) {
        self.state.lock().unwrap().invalid.insert(hash.into());
    }

    /// Every later answer takes `delay` (as a real vendor's round trip does).
    pub fn answer_after(&self, delay: std::time::Duration) {
        self.state.lock().unwrap().delay = delay;
    }

    pub fn calls(&self) -> Vec<Call> {
        self.state.lock().unwrap().calls.clone()
    }

    pub fn clear_calls(&self) {
        self.state.lock().unwrap().calls.clear();
    }

    /// The hashed identifiers the user list holds.
    pub fn list(&self) -> BTreeSet<String> {
        self.state.lock().unwrap().list.clone()
    }
}

impl Drop for GoogleDouble {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn rpc_error(status: u16, code: &str, message: &str, violations: Vec<Value>) -> Response<Full<Bytes>> {
    let mut details = vec![
        json!({"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": code, "domain": "datamanager.googleapis.com"}),
    ];
    if !violations.is_empty() {
        details.push(json!({"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": violations}));
    }
    reply(
        status,
        json!({"error": {"code": status, "message": message, "status": code, "details": details}}),
    )
}

async fn serve(request: Request<Incoming>, shared: Arc<Mutex<State>>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = request.uri().path().to_string();
    let authorization = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let raw = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let delay = shared.lock().unwrap().delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut state = shared.lock().unwrap();
    if path == "/token" {
        return Ok(token(&mut state, &raw));
    }
    let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    state.calls.push(Call {
        path: path.clone(),
        authorization: authorization.clone(),
        body: body.clone(),
    });
    let bearer = authorization.strip_prefix("Bearer ").unwrap_or_default();
    if !state.issued.contains(bearer) {
        return Ok(rpc_error(
            401,
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials.",
            vec![],
        ));
    }
    Ok(match path.as_str() {
        "/v1/audienceMembers:ingest" => members(&mut state, &body, true),
        "/v1/audienceMembers:remove" => members(&mut state, &body, false),
        _ => rpc_error(404, "NOT_FOUND", "not found", vec![]),
    })
}

fn token(state: &mut State, raw: &[u8]) -> Response<Full<Bytes>> {
    state.token_requests += 1;
    let form: BTreeMap<String, String> = url::form_urlencoded::parse(raw).into_owned().collect();
    let expected = [
        ("grant_type", "refresh_token"),
        ("refresh_token", REFRESH_TOKEN),
        ("client_id", CLIENT_ID),
        ("client_secret", CLIENT_SECRET),
    ];
    if expected
        .iter()
        .any(|(k, v)| form.get(*k).map(String::as_str) != Some(*v))
    {
        return reply(
            400,
            json!({"error": "invalid_grant", "error_description": "Token has been expired or revoked."}),
        );
    }
    let token = format!("ya29.issued-{}", state.token_requests);
    state.issued.insert(token.clone());
    reply(
        200,
        json!({"access_token": token, "expires_in": 3599, "token_type": "Bearer", "scope": "https://www.googleapis.com/auth/datamanager"}),
    )
}

fn is_hash(value: &Value) -> bool {
    value
        .as_str()
        .is_some_and(|v| v.len() == 64 && v.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)))
}

fn members(state: &mut State, body: &Value, ingest: bool) -> Response<Full<Bytes>> {
    let invalid = |message: &str| rpc_error(400, "INVALID_ARGUMENT", message, vec![]);
    let destination = &body["destinations"][0];
    if body["destinations"].as_array().map(Vec::len) != Some(1)
        || destination["operatingAccount"] != json!({"accountType": "GOOGLE_ADS", "accountId": CUSTOMER})
    {
        return invalid("destinations[0].operatingAccount must be the GOOGLE_ADS customer");
    }
    if destination["productDestinationId"] != USER_LIST {
        return rpc_error(404, "NOT_FOUND", "The user list was not found.", vec![]);
    }
    if body["encoding"] != "HEX" {
        return invalid("encoding must be HEX");
    }
    let terms = json!({"customerMatchTermsOfServiceStatus": "ACCEPTED"});
    let consent = json!({"adUserData": "CONSENT_GRANTED", "adPersonalization": "CONSENT_GRANTED"});
    if ingest && (body["termsOfService"] != terms || body["consent"] != consent) {
        return invalid("ingest needs termsOfService and consent");
    }
    if !ingest && (body.get("termsOfService").is_some() || body.get("consent").is_some()) {
        return invalid("remove takes neither termsOfService nor consent");
    }
    let Some(list) = body["audienceMembers"]
        .as_array()
        .filter(|m| !m.is_empty() && m.len() <= 10_000)
    else {
        return invalid("1 to 10000 audienceMembers per request");
    };
    let mut hashes = Vec::new();
    let mut violations = Vec::new();
    for (i, member) in list.iter().enumerate() {
        let Some(ids) = member["userData"]["userIdentifiers"]
            .as_array()
            .filter(|ids| !ids.is_empty())
        else {
            return invalid(&format!("audience_members[{i}] has no userIdentifiers"));
        };
        for (j, id) in ids.iter().enumerate() {
            let Some(object) = id.as_object().filter(|o| o.len() == 1) else {
                return invalid("each userIdentifier has exactly one attribute");
            };
            let (kind, value) = object.iter().next().unwrap();
            if (kind != "emailAddress" && kind != "phoneNumber") || !is_hash(value) {
                return invalid(&format!(
                    "audience_members[{i}].user_data.user_identifiers[{j}] is not a HEX SHA-256 hash"
                ));
            }
            let hash = value.as_str().unwrap().to_string();
            if state.invalid.contains(&hash) {
                violations.push(json!({
                    "field": format!("audience_members[{i}].user_data.user_identifiers[{j}]"),
                    "description": "The identifier is not a valid hashed value.",
                    "reason": "INVALID_USER_IDENTIFIER",
                }));
            }
            hashes.push(hash);
        }
    }
    if !violations.is_empty() {
        // Fast fail: nothing of the request is processed.
        return rpc_error(
            400,
            "INVALID_ARGUMENT",
            "Request contains an invalid argument.",
            violations,
        );
    }
    for hash in hashes {
        if ingest {
            state.list.insert(hash);
        } else {
            state.list.remove(&hash);
        }
    }
    reply(200, json!({"requestId": format!("req-{}", state.calls.len())}))
}
