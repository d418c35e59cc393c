//! The one HTTP client of every API target (CONNECTORS.md, "Wire details"): one process-wide
//! `reqwest` client over rustls (the ring provider), `User-Agent: exportd/<version>`, a 60 s
//! request timeout, no redirects followed (a POST must not silently turn into a GET elsewhere),
//! and one classification of answers — connection errors, 408, 429 and 5xx are transient
//! (retried through [`retry::retried`](super::retry::retried), `Retry-After` honoured), other
//! answers are handed back for the connector to read. No secret reaches a message: every
//! error text goes through [`redact`] with the connection's secrets.

pub mod gate;

use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;

use super::retry::{Failure, parse_retry_after, retried};
use super::storage::object::redact;

/// What every request says it comes from.
pub const USER_AGENT: &str = concat!("exportd/", env!("CARGO_PKG_VERSION"));
/// A request that has not been answered by then is a transient failure.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The process's HTTP client: connection pools are shared by every connection and run.
pub fn client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        super::ensure_tls_provider();
        reqwest::Client::builder()
            .tls_backend_rustls()
            .user_agent(USER_AGENT)
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("the HTTP client's settings are static")
    })
}

/// An answer that is not transient: a success, or a refusal the connector interprets.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
    /// The answer's headers (LinkedIn names a created resource in `x-restli-id`).
    pub headers: HeaderMap,
}

impl Answer {
    /// The first `max` bytes of the body as text (for reasons and messages).
    pub fn body_text(&self, max: usize) -> String {
        let text = String::from_utf8_lossy(&self.body);
        super::truncate_bytes(&text, max).to_string()
    }
}

/// Whether an answer with this status is worth another try (CONNECTORS.md: 408, 429, 5xx).
pub fn is_transient(status: StatusCode) -> bool {
    status == StatusCode::REQUEST_TIMEOUT || status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
}

/// Sends one request (as many attempts as the retry policy allows): the first answer that is
/// not transient, or the last failure. `build` makes each attempt's request afresh, so that
/// every attempt carries the same headers and body. `secrets` are taken out of every message.
pub async fn send<B>(connection_type: &'static str, secrets: &[String], build: B) -> Result<Answer, Failure>
where
    B: Fn() -> reqwest::RequestBuilder,
{
    retried(connection_type, |_| {
        let request = build();
        async move { attempt(request, secrets).await }
    })
    .await
}

/// [`send`], each attempt waiting for the connection's [`gate::Gate`] first (its rate and its
/// cap on requests in flight), so that retries are paced like first attempts.
pub async fn send_paced<B>(
    gate: &gate::Gate,
    connection_type: &'static str,
    secrets: &[String],
    build: B,
) -> Result<Answer, Failure>
where
    B: Fn() -> reqwest::RequestBuilder,
{
    send_paced_with(gate, connection_type, secrets, |_| false, build).await
}

/// [`send_paced`] for a vendor that also signals throttling in answers of other statuses (Meta's
/// rate-limit error codes come with 400): `throttled` says which answers are transient too.
pub async fn send_paced_with<B, T>(
    gate: &gate::Gate,
    connection_type: &'static str,
    secrets: &[String],
    throttled: T,
    build: B,
) -> Result<Answer, Failure>
where
    B: Fn() -> reqwest::RequestBuilder,
    T: Fn(&Answer) -> bool,
{
    retried(connection_type, |_| {
        let request = build();
        let throttled = &throttled;
        async move {
            let _pass = gate.pass().await;
            let answer = attempt(request, secrets).await?;
            if throttled(&answer) {
                return Err(Failure::Transient {
                    message: redact(
                        &format!("the target answered {}: {}", answer.status, answer.body_text(256)),
                        secrets,
                    ),
                    retry_after: None,
                });
            }
            Ok(answer)
        }
    })
    .await
}

/// One attempt of a request.
async fn attempt(request: reqwest::RequestBuilder, secrets: &[String]) -> Result<Answer, Failure> {
    let response = request.send().await.map_err(|e| request_failure(&e, secrets))?;
    let status = response.status();
    let retry_after = retry_after(response.headers());
    let headers = response.headers().clone();
    let body = response.bytes().await.map_err(|e| request_failure(&e, secrets))?;
    if is_transient(status) {
        let excerpt = String::from_utf8_lossy(&body[..body.len().min(256)]).into_owned();
        return Err(Failure::Transient {
            message: redact(&format!("the target answered {status}: {excerpt}"), secrets),
            retry_after,
        });
    }
    Ok(Answer { status, body, headers })
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, chrono::Utc::now()))
}

/// A request that got no answer: connecting, TLS, timeouts and broken connections are
/// transient; a request that could not even be built is not.
fn request_failure(err: &reqwest::Error, secrets: &[String]) -> Failure {
    // The error's source chain says what happened (DNS, refused, certificate).
    let mut message = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    let message = redact(&message, secrets);
    if err.is_builder() {
        Failure::Permanent { message }
    } else {
        Failure::Transient {
            message,
            retry_after: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_throttling_and_server_errors_are_transient() {
        for code in [408, 429, 500, 502, 503, 504] {
            assert!(is_transient(StatusCode::from_u16(code).unwrap()), "{code}");
        }
        for code in [200, 204, 301, 400, 401, 403, 404, 409, 422] {
            assert!(!is_transient(StatusCode::from_u16(code).unwrap()), "{code}");
        }
    }

    #[test]
    fn the_user_agent_names_exportd_and_its_version() {
        assert_eq!(USER_AGENT, format!("exportd/{}", env!("CARGO_PKG_VERSION")));
    }
}
