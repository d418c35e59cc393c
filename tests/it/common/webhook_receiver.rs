//! A webhook receiver on loopback, as a customer's endpoint would be: it verifies
//! `X-Exportd-Signature` (answering 401 to a POST whose signature does not match), records
//! every request (headers and raw body), and answers on cue — scripted answers for the next
//! POSTs (503 + `Retry-After`, 422, …), and a 2xx `rejected` list for records whose key it
//! was told to refuse.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use sha2::Sha256;

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub headers: BTreeMap<String, String>,
    pub raw: Bytes,
    /// The body as JSON (Null when it is not JSON).
    pub body: Value,
    /// Whether `X-Exportd-Signature` matched the receiver's secret (false without one).
    pub signature_ok: bool,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or_default()
    }
}

/// A scripted answer: status, `Retry-After`, body.
#[derive(Debug, Clone)]
pub struct Cue {
    pub status: u16,
    pub retry_after: Option<String>,
    pub body: String,
}

impl Cue {
    pub fn unavailable(retry_after: &str) -> Cue {
        Cue {
            status: 503,
            retry_after: Some(retry_after.into()),
            body: "busy".into(),
        }
    }

    pub fn status(status: u16, body: &str) -> Cue {
        Cue {
            status,
            retry_after: None,
            body: body.into(),
        }
    }
}

#[derive(Default)]
struct State {
    secret: Option<String>,
    received: Vec<Received>,
    /// Answers for the next POSTs, in order.
    cues: VecDeque<Cue>,
    /// Records whose `id` is here are rejected in a 2xx answer, with (reason, code).
    refuse: BTreeMap<String, (String, Option<String>)>,
    /// Every POST is answered with this (after the cues).
    always: Option<Cue>,
    refuse_options: bool,
    /// While set, POSTs wait for a permit before they are answered.
    hold: Option<Arc<tokio::sync::Semaphore>>,
    /// POSTs answered before `hold` applies (None: from the next one).
    hold_after: Option<usize>,
}

pub struct WebhookReceiver {
    pub url: String,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl WebhookReceiver {
    /// A receiver that checks signatures made with `secret` (none: it checks nothing).
    pub async fn start(secret: Option<&str>) -> WebhookReceiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks/exportd", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State {
            secret: secret.map(str::to_string),
            ..State::default()
        }));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| answer(request, state.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(socket), service)
                        .await;
                });
            }
        });
        WebhookReceiver { url, state, task }
    }

    /// The next POSTs are answered with these, in order.
    pub fn cue(&self, cues: impl IntoIterator<Item = Cue>) {
        self.state.lock().unwrap().cues.extend(cues);
    }

    /// Every POST (after the cues) is answered with this.
    pub fn always(&self, cue: Cue) {
        self.state.lock().unwrap().always = Some(cue);
    }

    /// Records with this `id` are rejected in the 2xx answer.
    pub fn refuse(&self, id: &str, reason: &str, code: Option<&str>) {
        self.state
            .lock()
            .unwrap()
            .refuse
            .insert(id.into(), (reason.into(), code.map(str::to_string)));
    }

    /// Accept every record again.
    pub fn accept_all(&self) {
        let mut state = self.state.lock().unwrap();
        state.refuse.clear();
        state.always = None;
    }

    /// From now on every POST waits (after it is recorded) until [`release`](Self::release).
    pub fn hold(&self) {
        self.state.lock().unwrap().hold = Some(Arc::new(tokio::sync::Semaphore::new(0)));
    }

    /// Answers the next `posts` POSTs, then holds every later one until [`release`](Self::release).
    pub fn hold_after(&self, posts: usize) {
        let mut state = self.state.lock().unwrap();
        let already = state.received.iter().filter(|r| r.method == "POST").count();
        state.hold_after = Some(already + posts);
        state.hold = Some(Arc::new(tokio::sync::Semaphore::new(0)));
    }

    /// Answers every held POST and stops holding.
    pub fn release(&self) {
        let mut state = self.state.lock().unwrap();
        state.hold_after = None;
        if let Some(hold) = state.hold.take() {
            hold.close();
        }
    }

    /// `OPTIONS` is answered 405 (as many frameworks do).
    pub fn refuse_options(&self) {
        self.state.lock().unwrap().refuse_options = true;
    }

    /// Every request so far.
    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    /// The POSTs so far.
    pub fn posts(&self) -> Vec<Received> {
        self.received().into_iter().filter(|r| r.method == "POST").collect()
    }

    pub fn clear(&self) {
        self.state.lock().unwrap().received.clear();
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn respond(status: u16, retry_after: Option<&str>, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = StatusCode::from_u16(status).unwrap();
    if let Some(after) = retry_after {
        response
            .headers_mut()
            .insert(hyper::header::RETRY_AFTER, after.parse().unwrap());
    }
    response
}

async fn answer(request: Request<Incoming>, shared: Arc<Mutex<State>>) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = request.method().clone();
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
    let (received, hold) = record(&shared, method, headers, raw);
    if let Some(hold) = hold {
        // Closed by `release`: the wait ends for every held request.
        let _ = hold.acquire().await;
    }
    Ok(reply(&mut shared.lock().unwrap(), &received))
}

/// Keeps the request; says whether its answer is held.
fn record(
    shared: &Mutex<State>,
    method: Method,
    headers: BTreeMap<String, String>,
    raw: Bytes,
) -> (Received, Option<Arc<tokio::sync::Semaphore>>) {
    let mut state = shared.lock().unwrap();
    let signature_ok = match &state.secret {
        Some(secret) => headers.get("x-exportd-signature") == Some(&sign(secret, &raw)),
        None => false,
    };
    let body = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    let received = Received {
        method: method.to_string(),
        headers,
        raw,
        body,
        signature_ok,
    };
    state.received.push(received.clone());
    let posts = state.received.iter().filter(|r| r.method == "POST").count();
    let held = method == Method::POST && state.hold_after.is_none_or(|after| posts > after);
    let hold = if held { state.hold.clone() } else { None };
    (received, hold)
}

fn reply(state: &mut State, received: &Received) -> Response<Full<Bytes>> {
    if received.method == "OPTIONS" {
        return if state.refuse_options {
            respond(405, None, String::new())
        } else {
            respond(204, None, String::new())
        };
    }
    if state.secret.is_some() && !received.signature_ok {
        return respond(401, None, "signature mismatch".into());
    }
    if let Some(cue) = state.cues.pop_front().or_else(|| state.always.clone()) {
        return respond(cue.status, cue.retry_after.as_deref(), cue.body);
    }
    let rejected: Vec<Value> = received.body["records"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|record| {
            let id = record["id"].as_str()?;
            let (reason, code) = state.refuse.get(id)?;
            let mut entry = json!({"key": id, "reason": reason});
            if let Some(code) = code {
                entry["code"] = json!(code);
            }
            Some(entry)
        })
        .collect();
    respond(200, None, json!({ "rejected": rejected }).to_string())
}
