//! A local Mailchimp Marketing API 3.0 (the parts exportd uses), answering as Mailchimp does and
//! refusing what Mailchimp's reference does not allow:
//! - HTTP Basic auth with any user name and the API key as password (else 401 "API Key
//!   Invalid"); errors as `application/problem+json` (`type`, `title`, `status`, `detail`);
//! - `GET /3.0/ping`, `GET /3.0/lists/{id}` (404 for an unknown list);
//! - `POST /3.0/lists/{id}` (batch subscribe): `members` (1 to 500, each with
//!   `email_address`, `status_if_new` and `status` `subscribed`, `merge_fields` with upper-case
//!   tags), `update_existing: true`; a 200 answer with `errors[]` for refused addresses;
//! - `DELETE /3.0/lists/{id}/members/{subscriber_hash}` (archive; 404 when not a member);
//! - `POST /3.0/lists/{id}/members/{subscriber_hash}/tags` (`tags: [{name, status}]`);
//! - on cue: 429 with `Retry-After` for the next requests, holding batch POSTs (to cancel a
//!   run while one is in flight), an outage (batch subscribes answered 503 after the first
//!   few, each answer naming the attempt of its batch); it counts the requests it serves at
//!   once.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

/// One request the double got.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub headers: BTreeMap<String, String>,
    pub body: Value,
    pub at: Instant,
}

impl Call {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or_default()
    }
}

/// A list member as the double keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct ListMember {
    pub email: String,
    pub status: String,
    pub merge_fields: Value,
    pub tags: BTreeSet<String>,
}

#[derive(Default)]
struct State {
    /// How long every answer takes (the benchmark's slower vendor; none by default).
    delay: std::time::Duration,
    api_key: String,
    lists: BTreeMap<String, String>,
    /// list id → lower-cased email → member.
    members: BTreeMap<String, BTreeMap<String, ListMember>>,
    calls: Vec<Call>,
    /// Addresses refused in batch subscribes: (error, error_code).
    refuse: BTreeMap<String, (String, String)>,
    /// The next requests are answered 429 with this Retry-After.
    throttle: VecDeque<String>,
    hold: Option<Arc<tokio::sync::Semaphore>>,
    /// Only the first batch subscribe after `hold_first` waits.
    hold_first: bool,
    /// Batch subscribes that were made to wait.
    held: usize,
    /// During an outage: how many batch subscribes are still served before it begins.
    outage: Option<usize>,
    /// Attempts of each batch subscribe body the outage refused.
    refused_attempts: BTreeMap<String, usize>,
    in_flight: usize,
    most_in_flight: usize,
}

pub struct MailchimpDouble {
    /// The API root (`base_url`): `http://127.0.0.1:<port>/3.0`.
    pub url: String,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

pub const LIST: &str = "a1b2c3";

impl MailchimpDouble {
    /// A double of an account with API key `api_key` and one list, [`LIST`].
    pub async fn start(api_key: &str) -> MailchimpDouble {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/3.0", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State {
            api_key: api_key.into(),
            lists: BTreeMap::from([(LIST.to_string(), "Newsletter".to_string())]),
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
        MailchimpDouble { url, state, task }
    }

    /// Batch subscribes refuse this address with `error` and `error_code`.
    pub fn refuse(&self, email: &str, error: &str, code: &str) {
        self.state
            .lock()
            .unwrap()
            .refuse
            .insert(email.to_lowercase(), (error.into(), code.into()));
    }

    pub fn accept_all(&self) {
        self.state.lock().unwrap().refuse.clear();
    }

    /// The next `times` requests are answered 429 with `Retry-After: <retry_after>`.
    pub fn throttle(&self, times: usize, retry_after: &str) {
        let mut state = self.state.lock().unwrap();
        state
            .throttle
            .extend(std::iter::repeat_n(retry_after.to_string(), times));
    }

    /// Batch subscribe POSTs wait (after they are recorded) until [`release`](Self::release).
    pub fn hold(&self) {
        self.state.lock().unwrap().hold = Some(Arc::new(tokio::sync::Semaphore::new(0)));
    }

    /// The next `served` batch subscribes are answered as usual, every later one 503 until
    /// [`recover`](Self::recover).
    pub fn fail_after(&self, served: usize) {
        self.state.lock().unwrap().outage = Some(served);
    }

    pub fn recover(&self) {
        self.state.lock().unwrap().outage = None;
    }

    /// For each batch subscribe body the outage refused: how many times it was sent.
    pub fn refused_attempts(&self) -> Vec<usize> {
        self.state.lock().unwrap().refused_attempts.values().copied().collect()
    }

    /// The next batch subscribe POST waits (after it is recorded) until
    /// [`release`](Self::release); the others are answered as usual.
    pub fn hold_first(&self) {
        let mut state = self.state.lock().unwrap();
        state.hold = Some(Arc::new(tokio::sync::Semaphore::new(0)));
        state.hold_first = true;
        state.held = 0;
    }

    pub fn release(&self) {
        if let Some(hold) = self.state.lock().unwrap().hold.take() {
            hold.close();
        }
    }

    /// Every later answer takes `delay` (as a real vendor's round trip does).
    pub fn answer_after(&self, delay: std::time::Duration) {
        self.state.lock().unwrap().delay = delay;
    }

    pub fn calls(&self) -> Vec<Call> {
        self.state.lock().unwrap().calls.clone()
    }

    /// The batch subscribe calls so far.
    pub fn subscribes(&self) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.method == "POST" && c.path == format!("/3.0/lists/{LIST}"))
            .collect()
    }

    /// The archive calls so far.
    pub fn archives(&self) -> Vec<Call> {
        self.calls().into_iter().filter(|c| c.method == "DELETE").collect()
    }

    pub fn clear_calls(&self) {
        self.state.lock().unwrap().calls.clear();
    }

    /// The subscribed members of the list, by lower-cased address.
    pub fn members(&self) -> BTreeMap<String, ListMember> {
        self.state
            .lock()
            .unwrap()
            .members
            .get(LIST)
            .cloned()
            .unwrap_or_default()
    }

    /// The most requests it served at the same moment.
    pub fn most_in_flight(&self) -> usize {
        self.state.lock().unwrap().most_in_flight
    }
}

impl Drop for MailchimpDouble {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn reply(status: u16, body: Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    let content_type = if status >= 400 {
        "application/problem+json"
    } else {
        "application/json"
    };
    response
        .headers_mut()
        .insert(hyper::header::CONTENT_TYPE, content_type.parse().unwrap());
    response
}

fn empty(status: u16) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    response
}

/// Mailchimp's error document.
fn problem(status: u16, title: &str, detail: &str) -> Response<Full<Bytes>> {
    reply(
        status,
        json!({
            "type": "https://mailchimp.com/developer/marketing/docs/errors/",
            "title": title,
            "status": status,
            "detail": detail,
            "instance": "5b2f4d8e-0000-4000-8000-000000000000",
        }),
    )
}

fn subscriber_hash(email: &str) -> String {
    format!("{:x}", md5::compute(email.to_lowercase().as_bytes()))
}

struct InFlight(Arc<Mutex<State>>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.lock().unwrap().in_flight -= 1;
    }
}

async fn serve(request: Request<Incoming>, shared: Arc<Mutex<State>>) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = request.method().to_string();
    let path = request.uri().path().to_string();
    let headers: BTreeMap<String, String> = request
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or_default().to_string()))
        .collect();
    let raw = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    let hold = {
        let mut state = shared.lock().unwrap();
        state.in_flight += 1;
        state.most_in_flight = state.most_in_flight.max(state.in_flight);
        state.calls.push(Call {
            method: method.clone(),
            path: path.clone(),
            headers: headers.clone(),
            body: body.clone(),
            at: Instant::now(),
        });
        let subscribe = method == "POST" && path.starts_with("/3.0/lists/") && path.matches('/').count() == 3;
        let waits = subscribe && !(state.hold_first && state.held > 0);
        let hold = if waits { state.hold.clone() } else { None };
        state.held += usize::from(hold.is_some());
        hold
    };
    let _in_flight = InFlight(shared.clone());
    let delay = shared.lock().unwrap().delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if let Some(hold) = hold {
        let _ = hold.acquire().await;
    }
    let mut state = shared.lock().unwrap();
    Ok(answer(&mut state, &method, &path, &headers, &body))
}

fn authorized(state: &State, headers: &BTreeMap<String, String>) -> bool {
    let Some(encoded) = headers.get("authorization").and_then(|v| v.strip_prefix("Basic ")) else {
        return false;
    };
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded) else {
        return false;
    };
    let text = String::from_utf8_lossy(&decoded);
    // Any user name; the key is the password.
    text.split_once(':').is_some_and(|(_, key)| key == state.api_key)
}

fn answer(
    state: &mut State,
    method: &str,
    path: &str,
    headers: &BTreeMap<String, String>,
    body: &Value,
) -> Response<Full<Bytes>> {
    if let Some(after) = state.throttle.pop_front() {
        let mut response = problem(
            429,
            "Too Many Requests",
            "You have exceeded the limit of 10 simultaneous connections.",
        );
        response
            .headers_mut()
            .insert(hyper::header::RETRY_AFTER, after.parse().unwrap());
        return response;
    }
    if !authorized(state, headers) {
        return problem(
            401,
            "API Key Invalid",
            "Your API key may be invalid, or you've attempted to access the wrong datacenter.",
        );
    }
    let parts: Vec<&str> = path.trim_start_matches("/3.0/").split('/').collect();
    match (method, parts.as_slice()) {
        ("GET", ["ping"]) => reply(200, json!({"health_status": "Everything's Chimpy!"})),
        ("GET", ["lists", id]) => match state.lists.get(*id) {
            Some(name) => reply(200, json!({"id": id, "name": name})),
            None => not_found(),
        },
        ("POST", ["lists", id]) if state.lists.contains_key(*id) => match state.outage {
            Some(0) => {
                let attempt = state.refused_attempts.entry(body.to_string()).or_default();
                *attempt += 1;
                problem(
                    503,
                    "Service Unavailable",
                    &format!("Mailchimp is down for maintenance (attempt {attempt} of this batch)"),
                )
            }
            Some(served) => {
                state.outage = Some(served - 1);
                subscribe(state, id, body)
            }
            None => subscribe(state, id, body),
        },
        ("DELETE", ["lists", id, "members", hash]) if state.lists.contains_key(*id) => {
            let members = state.members.entry(id.to_string()).or_default();
            let email = members.keys().find(|e| subscriber_hash(e) == *hash).cloned();
            match email.and_then(|e| members.get_mut(&e)) {
                Some(member) if member.status != "archived" => {
                    member.status = "archived".into();
                    empty(204)
                }
                _ => not_found(),
            }
        }
        ("POST", ["lists", id, "members", hash, "tags"]) if state.lists.contains_key(*id) => {
            let Some(tags) = body["tags"]
                .as_array()
                .filter(|t| !t.is_empty() && t.iter().all(|t| t["name"].is_string() && t["status"] == "active"))
            else {
                return problem(400, "Invalid Resource", "tags must be [{name, status: active}]");
            };
            let members = state.members.entry(id.to_string()).or_default();
            let Some(member) = members.values_mut().find(|m| subscriber_hash(&m.email) == *hash) else {
                return not_found();
            };
            for tag in tags {
                member.tags.insert(tag["name"].as_str().unwrap().to_string());
            }
            empty(204)
        }
        _ => not_found(),
    }
}

fn not_found() -> Response<Full<Bytes>> {
    problem(404, "Resource Not Found", "The requested resource could not be found.")
}

/// "Batch subscribe or unsubscribe" as its reference describes it.
fn subscribe(state: &mut State, id: &str, body: &Value) -> Response<Full<Bytes>> {
    let Some(members) = body["members"].as_array() else {
        return problem(400, "Invalid Resource", "members: required");
    };
    if members.is_empty() || members.len() > 500 {
        return problem(
            400,
            "Invalid Resource",
            &format!("members: up to 500 members per call ({} sent)", members.len()),
        );
    }
    if body["update_existing"] != json!(true) || body.as_object().map(|o| o.len()) != Some(2) {
        return problem(400, "Invalid Resource", "the body is {members, update_existing: true}");
    }
    let mut errors = Vec::new();
    let (mut created, mut updated) = (0, 0);
    for member in members {
        let well_formed = member["email_address"].is_string()
            && member["status_if_new"] == "subscribed"
            && member["status"] == "subscribed"
            && member["merge_fields"]
                .as_object()
                .is_some_and(|m| m.keys().all(|k| *k == k.to_uppercase()));
        if !well_formed {
            return problem(400, "Invalid Resource", &format!("malformed member {member}"));
        }
        let email = member["email_address"].as_str().unwrap().to_string();
        let lower = email.to_lowercase();
        if let Some((error, code)) = state.refuse.get(&lower) {
            errors.push(
                json!({"email_address": email, "error": error, "error_code": code, "field": "", "field_message": ""}),
            );
            continue;
        }
        let list = state.members.entry(id.to_string()).or_default();
        match list.get_mut(&lower) {
            Some(existing) => {
                existing.status = "subscribed".into();
                existing.merge_fields = member["merge_fields"].clone();
                updated += 1;
            }
            None => {
                list.insert(
                    lower,
                    ListMember {
                        email,
                        status: "subscribed".into(),
                        merge_fields: member["merge_fields"].clone(),
                        tags: BTreeSet::new(),
                    },
                );
                created += 1;
            }
        }
    }
    reply(
        200,
        json!({
            "new_members": [],
            "updated_members": [],
            "errors": errors,
            "total_created": created,
            "total_updated": updated,
            "error_count": errors.len(),
        }),
    )
}
