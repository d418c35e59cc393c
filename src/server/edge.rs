//! The outermost layer: a request id per RPC (taken from `x-request-id` or generated), a
//! tracing span around the call, one log line per RPC with its outcome, and an `ErrorInfo` on
//! error statuses that tonic itself produced (decode errors, oversize messages).

use std::task::{Context, Poll};
use std::time::Instant;

use futures::future::BoxFuture;
use tower::{Layer, Service};
use tracing::Instrument;

#[derive(Clone, Default)]
pub struct EdgeLayer;

impl<S> Layer<S> for EdgeLayer {
    type Service = EdgeService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        EdgeService { inner }
    }
}

#[derive(Clone)]
pub struct EdgeService<S> {
    inner: S,
}

const REQUEST_ID: &str = "x-request-id";

fn request_id_of(headers: &http::HeaderMap) -> String {
    headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
        .map(str::to_string)
        .unwrap_or_else(|| crate::domain::names::generate_id("req"))
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for EdgeService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let request_id = request_id_of(request.headers());
        let method = request.uri().path().to_string();
        let span = tracing::info_span!("rpc", method = %method, request_id = %request_id, sub = tracing::field::Empty);
        let future = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        let quiet = method.starts_with("/grpc.health.") || method.starts_with("/grpc.reflection.");
        Box::pin(
            async move {
                let started = Instant::now();
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
                let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
                // Trailers-only responses are errors; streamed and unary successes end later.
                let code = status.map(|s| s.code()).unwrap_or(tonic::Code::Ok);
                if !quiet {
                    tracing::info!(grpc_code = ?code, elapsed_ms, "rpc");
                }
                Ok(response)
            }
            .instrument(span),
        )
    }
}
