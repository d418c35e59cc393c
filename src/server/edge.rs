//! The outermost layer: a request id per RPC (taken from `x-request-id` or generated), a
//! tracing span around the call, one log line per RPC with its outcome, an `ErrorInfo` on
//! error statuses that tonic itself produced (decode errors, oversize messages), the request
//! metadata limit, and the RPC metrics (`rpc_metrics`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tower::{Layer, Service};
use tracing::Instrument;

use super::rpc_metrics::{MeteredBody, RpcRecord, method_label};

/// Counts the RPCs being handled, so that shutdown can wait for exactly those (and not for
/// idle client connections, which may stay open indefinitely).
#[derive(Clone, Default)]
pub struct InFlight {
    count: Arc<AtomicUsize>,
    idle: Arc<tokio::sync::Notify>,
}

impl InFlight {
    fn enter(&self) -> InFlightGuard {
        self.count.fetch_add(1, Ordering::SeqCst);
        InFlightGuard { owner: self.clone() }
    }

    pub fn current(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Resolves when no RPC is being handled, or after `grace`; says which.
    pub async fn wait_idle(&self, grace: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let notified = self.idle.notified();
            if self.current() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.current() == 0;
            }
        }
    }
}

struct InFlightGuard {
    owner: InFlight,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if self.owner.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.owner.idle.notify_waiters();
        }
    }
}

/// Milliseconds to two decimals (10 µs): precise enough for latencies, without the float
/// noise (`0.30000000000000004`) of an unrounded conversion.
fn rounded_millis(elapsed: Duration) -> f64 {
    (elapsed.as_secs_f64() * 100_000.0).round() / 100.0
}

#[derive(Clone, Default)]
pub struct EdgeLayer {
    pub in_flight: InFlight,
}

impl<S> Layer<S> for EdgeLayer {
    type Service = EdgeService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        EdgeService {
            inner,
            in_flight: self.in_flight.clone(),
        }
    }
}

#[derive(Clone)]
pub struct EdgeService<S> {
    inner: S,
    in_flight: InFlight,
}

const REQUEST_ID: &str = "x-request-id";

/// The most request metadata (header names and values) an RPC may carry. HTTP/2 itself reads
/// header blocks up to [`super::MAX_HEADER_LIST_BYTES`], so that up to there a request gets a
/// gRPC answer on its own stream rather than a broken connection.
pub const MAX_METADATA_BYTES: usize = 64 * 1024;

fn metadata_bytes(headers: &http::HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum()
}

fn metadata_too_large(size: usize) -> tonic::Status {
    crate::api::status::to_status(
        crate::error::Error::new(
            crate::error::ErrorCode::ResourceExhausted,
            "METADATA_TOO_LARGE",
            format!("the request metadata is {size} bytes; at most {MAX_METADATA_BYTES} are accepted"),
        )
        .with_meta("limit_bytes", MAX_METADATA_BYTES.to_string()),
    )
}

fn request_id_of(headers: &http::HeaderMap) -> String {
    headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty() && v.len() <= 64 && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
        .map(str::to_string)
        .unwrap_or_else(|| crate::domain::names::generate_id("req"))
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for EdgeService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<MeteredBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        let request_id = request_id_of(request.headers());
        request
            .extensions_mut()
            .insert(crate::audit::layer::RequestId(request_id.clone()));
        let method = request.uri().path().to_string();
        let method_label = method_label(&method);
        let started = Instant::now();
        let span = tracing::info_span!(
            "rpc",
            method = %method,
            request_id = %request_id,
            sub = tracing::field::Empty,
            trace_id = tracing::field::Empty
        );
        crate::telemetry::link(&span, request.headers());
        let metadata_size = metadata_bytes(request.headers());
        if metadata_size > MAX_METADATA_BYTES {
            let _entered = span.enter();
            tracing::info!(grpc_code = ?tonic::Code::ResourceExhausted, metadata_size, "rpc");
            let mut response = metadata_too_large(metadata_size).into_http::<ResBody>();
            if let Ok(value) = http::HeaderValue::from_str(&request_id) {
                response.headers_mut().insert(REQUEST_ID, value);
            }
            let record = RpcRecord::new(method_label, started, Some(tonic::Code::ResourceExhausted));
            return Box::pin(async move { Ok(response.map(|body| MeteredBody::new(body, record))) });
        }
        let future = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        let quiet = method.starts_with("/grpc.health.") || method.starts_with("/grpc.reflection.");
        let guard = self.in_flight.enter();
        Box::pin(
            async move {
                let _guard = guard;
                let mut response = future.await?;
                let status = tonic::Status::from_header_map(response.headers());
                if let Some(status) = &status
                    && status.code() != tonic::Code::Ok
                    && status.details().is_empty()
                {
                    let enriched = crate::api::status::ensure_error_info(status.clone());
                    let _ = enriched.add_header(response.headers_mut());
                }
                if let Ok(value) = http::HeaderValue::from_str(&request_id) {
                    response.headers_mut().insert(REQUEST_ID, value);
                }
                let elapsed_ms = rounded_millis(started.elapsed());
                // Trailers-only responses are errors; streamed and unary successes end later.
                // A status message names what was wrong with the request, never a secret
                // (secrets are write-only and no error echoes them).
                if !quiet {
                    match &status {
                        Some(status) if status.code() != tonic::Code::Ok => tracing::info!(
                            grpc_code = ?status.code(),
                            elapsed_ms,
                            error = status.message(),
                            "rpc"
                        ),
                        _ => tracing::info!(grpc_code = ?tonic::Code::Ok, elapsed_ms, "rpc"),
                    }
                }
                let record = RpcRecord::new(method_label, started, status.as_ref().map(|s| s.code()));
                Ok(response.map(|body| MeteredBody::new(body, record)))
            }
            .instrument(span),
        )
    }
}
