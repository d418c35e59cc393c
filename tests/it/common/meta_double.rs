//! A local Graph API (the custom-audience parts exportd uses), answering as Meta does and
//! refusing what its reference does not allow:
//! - `access_token` as a query parameter (GET) or in the JSON body (POST/DELETE), else error
//!   190 (`OAuthException`, HTTP 400);
//! - `GET /v25.0/me`, `GET /v25.0/act_{id}` (error 100 for another account);
//! - `GET /v25.0/act_{id}/customaudiences?fields=id,name` (paged: 2 a page, `paging.next`),
//!   `POST` with `name`, `subtype=CUSTOM`, `customer_file_source=USER_PROVIDED_ONLY`;
//! - `POST` / `DELETE /v25.0/{audience_id}/users` with `payload` (`schema` of known keys,
//!   `data` rows as long as the schema, every value SHA-256 hex or "" but EXTERN_ID, 1 to
//!   10,000 rows) and `session` (`session_id`, `batch_seq` from 1, `last_batch_flag`,
//!   `estimated_num_total`); answers `num_received`, `num_invalid_entries`,
//!   `invalid_entry_samples` for values it was told are invalid (on cue, samples of a few of
//!   them only, as Meta does for many);
//! - on cue: an error code (e.g. 17, "User request limit reached") for the next requests.

use super::json_reply::reply;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

pub const AD_ACCOUNT: &str = "1234567890";
const KEYS: [&str; 11] = [
    "EMAIL",
    "PHONE",
    "FN",
    "LN",
    "CT",
    "ST",
    "ZIP",
    "COUNTRY",
    "GEN",
    "DOBY",
    "EXTERN_ID",
];

#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub query: String,
    pub body: Value,
}

#[derive(Default)]
struct State {
    /// How long every answer takes (the benchmark's slower vendor; none by default).
    delay: std::time::Duration,
    token: String,
    /// `http://127.0.0.1:<port>`, for absolute `paging.next` links as Meta gives them.
    origin: String,
    /// id → name.
    audiences: BTreeMap<String, String>,
    /// audience id → the rows it holds (as sent).
    users: BTreeMap<String, BTreeSet<Vec<String>>>,
    calls: Vec<Call>,
    /// Values answered as invalid entries, with the reason.
    invalid: BTreeMap<String, String>,
    /// At most this many `invalid_entry_samples` an answer (all when unset).
    samples_at_most: Option<usize>,
    /// Error codes for the next requests.
    errors: VecDeque<i64>,
    /// (session_id, operation) → the batch_seq values seen (each once; batches of a session
    /// may arrive in any order).
    sessions: BTreeMap<(u64, String), BTreeSet<u64>>,
    next_id: u64,
}

pub struct MetaDouble {
    /// The API root (`base_url`): `http://127.0.0.1:<port>/v25.0`.
    pub url: String,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl MetaDouble {
    pub async fn start(token: &str) -> MetaDouble {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = format!("http://{}", listener.local_addr().unwrap());
        let url = format!("{origin}/v25.0");
        let state = Arc::new(Mutex::new(State {
            token: token.into(),
            origin,
            next_id: 23850000000000000,
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
        MetaDouble { url, state, task }
    }

    /// An audience that exists already.
    pub fn add_audience(&self, id: &str, name: &str) {
        self.state.lock().unwrap().audiences.insert(id.into(), name.into());
    }

    pub fn audiences(&self) -> BTreeMap<String, String> {
        self.state.lock().unwrap().audiences.clone()
    }

    /// The rows an audience holds.
    pub fn users(&self, audience: &str) -> BTreeSet<Vec<String>> {
        self.state
            .lock()
            .unwrap()
            .users
            .get(audience)
            .cloned()
            .unwrap_or_default()
    }

    /// A sent value Meta reports as an invalid entry.
    pub fn invalid(&self, value: &str, reason: &str) {
        self.state.lock().unwrap().invalid.insert(value.into(), reason.into());
    }

    /// Answers name at most `samples` of their invalid entries (`num_invalid_entries` counts
    /// them all).
    pub fn sample_at_most(&self, samples: usize) {
        self.state.lock().unwrap().samples_at_most = Some(samples);
    }

    pub fn accept_all(&self) {
        self.state.lock().unwrap().invalid.clear();
    }

    /// The next requests are answered with these Graph error codes.
    pub fn fail_with(&self, codes: &[i64]) {
        self.state.lock().unwrap().errors.extend(codes);
    }

    /// Every later answer takes `delay` (as a real vendor's round trip does).
    pub fn answer_after(&self, delay: std::time::Duration) {
        self.state.lock().unwrap().delay = delay;
    }

    pub fn calls(&self) -> Vec<Call> {
        self.state.lock().unwrap().calls.clone()
    }

    pub fn user_calls(&self) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.path.ends_with("/users"))
            .collect()
    }

    pub fn clear_calls(&self) {
        self.state.lock().unwrap().calls.clear();
    }
}

impl Drop for MetaDouble {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Graph API errors: HTTP 400 with the error object (as Meta answers them).
fn error(code: i64, message: &str) -> Response<Full<Bytes>> {
    let kind = if code == 190 {
        "OAuthException"
    } else {
        "GraphMethodException"
    };
    reply(
        400,
        json!({"error": {"message": message, "type": kind, "code": code, "error_subcode": 0, "fbtrace_id": "AbCdEf123"}}),
    )
}

async fn serve(request: Request<Incoming>, shared: Arc<Mutex<State>>) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = request.method().to_string();
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or_default().to_string();
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
        query: query.clone(),
        body: body.clone(),
    });
    Ok(answer(&mut state, &method, &path, &query, &body))
}

fn query_param(query: &str, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn answer(state: &mut State, method: &str, path: &str, query: &str, body: &Value) -> Response<Full<Bytes>> {
    if let Some(code) = state.errors.pop_front() {
        return error(code, "User request limit reached");
    }
    let token = if method == "GET" {
        query_param(query, "access_token")
    } else {
        body["access_token"].as_str().map(str::to_string)
    };
    if token.as_deref() != Some(state.token.as_str()) {
        return error(190, "Invalid OAuth access token - Cannot parse access token");
    }
    let parts: Vec<&str> = path.trim_start_matches("/v25.0/").split('/').collect();
    let account = format!("act_{AD_ACCOUNT}");
    match (method, parts.as_slice()) {
        ("GET", ["me"]) => reply(200, json!({"id": "100200300", "name": "exportd system user"})),
        ("GET", [act]) if *act == account => {
            reply(200, json!({"id": account, "name": "Acme ads", "account_status": 1}))
        }
        ("GET", [act, "customaudiences"]) if *act == account => {
            if query_param(query, "fields").as_deref() != Some("id,name") {
                return error(100, "fields must be id,name");
            }
            let after: usize = query_param(query, "after").and_then(|a| a.parse().ok()).unwrap_or(0);
            let all: Vec<Value> = state
                .audiences
                .iter()
                .map(|(id, name)| json!({"id": id, "name": name}))
                .collect();
            let page: Vec<Value> = all.iter().skip(after).take(2).cloned().collect();
            let mut answer = json!({"data": page, "paging": {"cursors": {}}});
            if after + 2 < all.len() {
                answer["paging"]["next"] = json!(format!(
                    "{}{}?fields=id,name&after={}&access_token={}",
                    state.origin,
                    path,
                    after + 2,
                    state.token
                ));
            }
            reply(200, answer)
        }
        ("POST", [act, "customaudiences"]) if *act == account => {
            let name = body["name"].as_str().unwrap_or_default();
            if name.is_empty() || body["subtype"] != "CUSTOM" || body["customer_file_source"] != "USER_PROVIDED_ONLY" {
                return error(
                    100,
                    "name, subtype=CUSTOM and customer_file_source=USER_PROVIDED_ONLY are required",
                );
            }
            state.next_id += 1;
            let id = state.next_id.to_string();
            state.audiences.insert(id.clone(), name.to_string());
            reply(200, json!({"id": id}))
        }
        (method @ ("POST" | "DELETE"), [audience, "users"]) if state.audiences.contains_key(*audience) => {
            users(state, method, audience, body)
        }
        _ => error(100, "Unsupported request - method type or path not found"),
    }
}

fn users(state: &mut State, method: &str, audience: &str, body: &Value) -> Response<Full<Bytes>> {
    let payload = &body["payload"];
    let Some(schema) = payload["schema"].as_array() else {
        return error(100, "payload.schema is required");
    };
    let schema: Vec<&str> = schema.iter().filter_map(Value::as_str).collect();
    if schema.is_empty() || !schema.iter().all(|k| KEYS.contains(k)) {
        return error(100, &format!("unknown schema {schema:?}"));
    }
    let Some(data) = payload["data"].as_array() else {
        return error(100, "payload.data is required");
    };
    if data.is_empty() || data.len() > 10_000 {
        return error(100, &format!("1 to 10000 rows per request ({} sent)", data.len()));
    }
    let mut rows = Vec::new();
    for row in data {
        let Some(values) = row.as_array().filter(|r| r.len() == schema.len()) else {
            return error(100, "every row has one value per schema key");
        };
        let values: Vec<String> = values.iter().map(|v| v.as_str().unwrap_or("?").to_string()).collect();
        for (key, value) in schema.iter().zip(&values) {
            let hashed = value.len() == 64 && value.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase());
            if *key != "EXTERN_ID" && !value.is_empty() && !hashed {
                return error(100, &format!("{key} values must be SHA-256 hex ({value} is not)"));
            }
        }
        rows.push(values);
    }
    let session = &body["session"];
    let (Some(id), Some(seq), Some(_last), Some(_total)) = (
        session["session_id"].as_u64(),
        session["batch_seq"].as_u64(),
        session["last_batch_flag"].as_bool(),
        session["estimated_num_total"].as_u64(),
    ) else {
        return error(
            100,
            "session needs session_id, batch_seq, last_batch_flag, estimated_num_total",
        );
    };
    let fresh = state.sessions.entry((id, method.to_string())).or_default().insert(seq);
    if seq == 0 || !fresh {
        return error(100, &format!("batch_seq {seq} repeated (or 0) in session {id}"));
    }
    let mut samples = serde_json::Map::new();
    let held = state.users.entry(audience.to_string()).or_default();
    let mut invalid = 0;
    for row in rows {
        if let Some((value, reason)) = row
            .iter()
            .find_map(|v| state.invalid.get(v).map(|r| (v.clone(), r.clone())))
        {
            invalid += 1;
            if state.samples_at_most.is_none_or(|most| samples.len() < most) {
                samples.insert(value, json!(reason));
            }
            continue;
        }
        if method == "POST" {
            held.insert(row);
        } else {
            held.remove(&row);
        }
    }
    reply(
        200,
        json!({
            "audience_id": audience,
            "session_id": id.to_string(),
            "num_received": data.len(),
            "num_invalid_entries": invalid,
            "invalid_entry_samples": samples,
        }),
    )
}
