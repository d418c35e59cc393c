//! A local LinkedIn Marketing API (DMP segments), answering as LinkedIn does and refusing what
//! its reference does not allow: `Authorization: Bearer`, `LinkedIn-Version: YYYYMM` and
//! `X-Restli-Protocol-Version: 2.0.0` on every request (else 401 / 400); the finder
//! `GET /rest/dmpSegments?q=account&account=urn:li:sponsoredAccount:<id>`; `POST
//! /rest/dmpSegments` (201, id in `x-restli-id`); `POST /rest/dmpSegments/{id}/users` with
//! `X-RestLi-Method: BATCH_CREATE`, 1 to 5,000 `elements` each with `action` ADD/REMOVE and
//! `userIds: [{idType: SHA256_EMAIL, idValue: <hex>}]`, and `POST
//! /rest/dmpSegments/{id}/companies` (COMPANY segments only, users to USER segments only) with
//! the same method header and elements carrying `action` and at least one of `companyName`,
//! `companyEmailDomain`, `companyWebsiteDomain` (non-empty strings, nothing else); answered
//! with one status per element (400 for a hash or company identifier it was told to refuse).

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

pub const ACCOUNT: &str = "507404993";

#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub body: Value,
}

#[derive(Default)]
struct State {
    /// How long every answer takes (the benchmark's slower vendor; none by default).
    delay: std::time::Duration,
    token: String,
    /// id → (name, type).
    segments: BTreeMap<u64, (String, String)>,
    /// Users by hashed email; companies by their identifiers as a JSON object.
    members: BTreeMap<u64, BTreeSet<String>>,
    refuse: BTreeSet<String>,
    calls: Vec<Call>,
}

pub struct LinkedInDouble {
    pub url: String,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl LinkedInDouble {
    pub async fn start(token: &str) -> LinkedInDouble {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/rest", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State {
            token: token.into(),
            ..State::default()
        }));
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
        LinkedInDouble { url, state, task }
    }

    /// Elements with this hashed email, or this company identifier, are answered 400.
    pub fn refuse(&self, hash: &str) {
        self.state.lock().unwrap().refuse.insert(hash.into());
    }

    pub fn segments(&self) -> BTreeMap<u64, (String, String)> {
        self.state.lock().unwrap().segments.clone()
    }

    pub fn members(&self, id: u64) -> BTreeSet<String> {
        self.state.lock().unwrap().members.get(&id).cloned().unwrap_or_default()
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
}

impl Drop for LinkedInDouble {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn error(status: u16, message: &str) -> Response<Full<Bytes>> {
    reply(
        status,
        json!({"status": status, "message": message, "serviceErrorCode": 100}),
    )
}

async fn serve(request: Request<Incoming>, shared: Arc<Mutex<State>>) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = request.method().to_string();
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or_default().to_string();
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let (auth, version, protocol, restli) = (
        header("authorization"),
        header("linkedin-version"),
        header("x-restli-protocol-version"),
        header("x-restli-method"),
    );
    let raw = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    let delay = shared.lock().unwrap().delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut state = shared.lock().unwrap();
    state.calls.push(Call {
        method: method.clone(),
        path: path.clone(),
        body: body.clone(),
    });
    if auth != format!("Bearer {}", state.token) {
        return Ok(error(401, "Invalid access token"));
    }
    if version.len() != 6 || !version.chars().all(|c| c.is_ascii_digit()) || protocol != "2.0.0" {
        return Ok(error(
            400,
            "LinkedIn-Version (YYYYMM) and X-Restli-Protocol-Version 2.0.0 are required",
        ));
    }
    let account = format!("urn:li:sponsoredAccount:{ACCOUNT}");
    let parts: Vec<&str> = path.trim_start_matches("/rest/").split('/').collect();
    Ok(match (method.as_str(), parts.as_slice()) {
        ("GET", ["dmpSegments"]) => {
            let params: BTreeMap<String, String> = url::form_urlencoded::parse(query.as_bytes()).into_owned().collect();
            if params.get("q").map(String::as_str) != Some("account") || params.get("account") != Some(&account) {
                return Ok(error(400, "the finder needs q=account and the account URN"));
            }
            let elements: Vec<Value> = state
                .segments
                .iter()
                .map(|(id, (name, kind))| json!({"id": id, "name": name, "type": kind, "account": account}))
                .collect();
            reply(
                200,
                json!({"elements": elements, "paging": {"start": 0, "count": 100, "total": elements.len()}}),
            )
        }
        ("POST", ["dmpSegments"]) => {
            let fine = body["name"].is_string()
                && body["sourcePlatform"] == "LIST_UPLOAD"
                && body["account"] == account.as_str()
                && body["accessPolicy"] == "PRIVATE"
                && (body["type"] == "USER" || body["type"] == "COMPANY")
                && body["destinations"] == json!([{"destination": "LINKEDIN"}]);
            if !fine {
                return Ok(error(400, &format!("invalid DMP segment {body}")));
            }
            let id = 9000 + state.segments.len() as u64;
            let name = body["name"].as_str().unwrap().to_string();
            state
                .segments
                .insert(id, (name, body["type"].as_str().unwrap().to_string()));
            let mut response = reply(201, json!({}));
            response
                .headers_mut()
                .insert("x-restli-id", id.to_string().parse().unwrap());
            response
        }
        ("POST", ["dmpSegments", id, resource @ ("users" | "companies")]) => {
            let Some(id) = id.parse::<u64>().ok().filter(|id| state.segments.contains_key(id)) else {
                return Ok(error(404, "DMP segment not found"));
            };
            let kind = if *resource == "users" { "USER" } else { "COMPANY" };
            if state.segments[&id].1 != kind {
                return Ok(error(400, &format!("DMP segment {id} is not a {kind} segment")));
            }
            if restli != "BATCH_CREATE" {
                return Ok(error(400, "X-RestLi-Method: BATCH_CREATE is required"));
            }
            let Some(elements) = body["elements"]
                .as_array()
                .filter(|e| !e.is_empty() && e.len() <= 5_000)
            else {
                return Ok(error(400, "1 to 5000 elements"));
            };
            let mut statuses = Vec::new();
            for element in elements {
                let identity = if kind == "USER" {
                    user_identity(element)
                } else {
                    company_identity(element)
                };
                let action = element["action"].as_str().unwrap_or_default();
                let (Some((identity, identifiers)), "ADD" | "REMOVE") = (identity, action) else {
                    return Ok(error(400, &format!("invalid element {element}")));
                };
                if identifiers.iter().any(|i| state.refuse.contains(i)) {
                    let message = format!("The {} identifier is invalid", kind.to_lowercase());
                    statuses.push(json!({"status": 400, "message": message}));
                    continue;
                }
                let members = state.members.entry(id).or_default();
                if action == "ADD" {
                    members.insert(identity);
                } else {
                    members.remove(&identity);
                }
                statuses.push(json!({"status": 201}));
            }
            reply(200, json!({"elements": statuses}))
        }
        _ => error(404, "Not found"),
    })
}

/// A user element's hashed email (its identity and only identifier), if well formed.
fn user_identity(element: &Value) -> Option<(String, Vec<String>)> {
    let ids = element["userIds"].as_array()?;
    let hash = ids
        .iter()
        .find(|i| i["idType"] == "SHA256_EMAIL")
        .and_then(|i| i["idValue"].as_str())
        .filter(|h| h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()))?;
    Some((hash.to_string(), vec![hash.to_string()]))
}

/// A company element's identifiers (as a JSON object, its identity) if well formed: at least
/// one of the company fields, each a non-empty string, and no user or unknown fields.
fn company_identity(element: &Value) -> Option<(String, Vec<String>)> {
    const FIELDS: [&str; 3] = ["companyName", "companyEmailDomain", "companyWebsiteDomain"];
    let object = element.as_object()?;
    let mut identity = serde_json::Map::new();
    for (key, value) in object {
        match (key.as_str(), value.as_str()) {
            ("action", _) => {}
            (field, Some(text)) if FIELDS.contains(&field) && !text.trim().is_empty() => {
                identity.insert(field.to_string(), value.clone());
            }
            _ => return None,
        }
    }
    if identity.is_empty() {
        return None;
    }
    let identifiers = identity
        .values()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect();
    Some((Value::Object(identity).to_string(), identifiers))
}
