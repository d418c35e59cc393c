//! The tower layer that turns `authorization: Bearer <JWT>` into a [`Principal`] in the
//! request's extensions, or answers UNAUTHENTICATED before any handler runs. Health and
//! reflection are open.
//!
//! The layer does not know how errors become statuses (that is the API's one conversion): the
//! server hands it that function.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tower::{Layer, Service};

use super::jwt::Verifier;
use crate::error::Error;

/// gRPC paths that need no token.
const OPEN_PREFIXES: &[&str] = &[
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.",
    "/grpc.reflection.v1alpha.",
];

/// The largest `authorization` value read: a JWT is a few hundred bytes to a few KiB; a
/// longer one is refused before it is parsed.
pub const MAX_AUTHORIZATION_BYTES: usize = 16 * 1024;

/// How an authentication failure is answered.
pub type Respond = fn(Error) -> tonic::Status;

#[derive(Clone)]
pub struct AuthLayer {
    verifier: Arc<Verifier>,
    respond: Respond,
}

impl AuthLayer {
    pub fn new(verifier: Arc<Verifier>, respond: Respond) -> Self {
        AuthLayer { verifier, respond }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            verifier: self.verifier.clone(),
            respond: self.respond,
        }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    verifier: Arc<Verifier>,
    respond: Respond,
}

impl<S, ReqBody> Service<http::Request<ReqBody>> for AuthService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        let path = request.uri().path();
        if OPEN_PREFIXES.iter().any(|prefix| path.starts_with(prefix)) {
            return Box::pin(self.inner.call(request));
        }
        match authenticate(&self.verifier, request.headers()) {
            Ok(principal) => {
                tracing::Span::current().record("sub", principal.subject.as_str());
                request.extensions_mut().insert(principal);
                Box::pin(self.inner.call(request))
            }
            Err(err) => {
                let response = (self.respond)(err).into_http();
                Box::pin(async move { Ok(response) })
            }
        }
    }
}

fn authenticate(verifier: &Verifier, headers: &http::HeaderMap) -> Result<super::Principal, Error> {
    let value = headers.get(http::header::AUTHORIZATION).ok_or_else(|| {
        Error::unauthenticated("MISSING_TOKEN", "this RPC needs `authorization: Bearer <JWT>` metadata")
    })?;
    if value.len() > MAX_AUTHORIZATION_BYTES {
        return Err(Error::unauthenticated(
            "TOKEN_TOO_LARGE",
            format!(
                "the authorization metadata is {} bytes; at most {MAX_AUTHORIZATION_BYTES} are accepted",
                value.len()
            ),
        )
        .with_meta("limit_bytes", MAX_AUTHORIZATION_BYTES.to_string()));
    }
    let text = value
        .to_str()
        .map_err(|_| Error::unauthenticated("INVALID_TOKEN", "the authorization metadata is not text"))?;
    let token = text
        .strip_prefix("Bearer ")
        .or_else(|| text.strip_prefix("bearer "))
        .ok_or_else(|| Error::unauthenticated("INVALID_TOKEN", "the authorization metadata must be `Bearer <JWT>`"))?;
    verifier.verify(token.trim())
}
