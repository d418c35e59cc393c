//! The tower layer that turns `authorization: Bearer <JWT>` into a [`Principal`] in the
//! request's extensions, or answers UNAUTHENTICATED before any handler runs. Health and
//! reflection are open.

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

#[derive(Clone)]
pub struct AuthLayer {
    verifier: Arc<Verifier>,
}

impl AuthLayer {
    pub fn new(verifier: Arc<Verifier>) -> Self {
        AuthLayer { verifier }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            verifier: self.verifier.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    verifier: Arc<Verifier>,
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
                let response = crate::api::status::to_status(err).into_http();
                Box::pin(async move { Ok(response) })
            }
        }
    }
}

fn authenticate(verifier: &Verifier, headers: &http::HeaderMap) -> Result<super::Principal, Error> {
    let value = headers.get(http::header::AUTHORIZATION).ok_or_else(|| {
        Error::unauthenticated("MISSING_TOKEN", "this RPC needs `authorization: Bearer <JWT>` metadata")
    })?;
    let text = value
        .to_str()
        .map_err(|_| Error::unauthenticated("INVALID_TOKEN", "the authorization metadata is not text"))?;
    let token = text
        .strip_prefix("Bearer ")
        .or_else(|| text.strip_prefix("bearer "))
        .ok_or_else(|| Error::unauthenticated("INVALID_TOKEN", "the authorization metadata must be `Bearer <JWT>`"))?;
    verifier.verify(token.trim())
}
