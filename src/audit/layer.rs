//! The tower layer that opens an audit scope around every call of a mutating RPC that passed
//! authentication (it sits inside the auth layer), and records a refused attempt — answered
//! PERMISSION_DENIED — in its own write once the handler answered.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tonic_types::StatusExt;
use tower::{Layer, Service};

use super::scope::{self, Scope};
use crate::auth::Principal;
use crate::auth::policy;
use crate::store::Store;

/// The request id the edge layer chose for a call (from `x-request-id`, or generated).
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Full gRPC methods (`/exportd.v1.ExportService/UpdateExport`) of the audited RPCs.
fn audited_methods() -> &'static HashMap<String, &'static policy::PolicyRow> {
    static METHODS: OnceLock<HashMap<String, &'static policy::PolicyRow>> = OnceLock::new();
    METHODS.get_or_init(|| {
        policy::TABLE
            .iter()
            .filter(|row| row.audited())
            .map(|row| (row.full_method(), row))
            .collect()
    })
}

#[derive(Clone)]
pub struct AuditLayer {
    store: Arc<Store>,
}

impl AuditLayer {
    pub fn new(store: Arc<Store>) -> Self {
        AuditLayer { store }
    }
}

impl<S> Layer<S> for AuditLayer {
    type Service = AuditService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuditService {
            inner,
            store: self.store.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuditService<S> {
    inner: S,
    store: Arc<Store>,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for AuditService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let method = request.uri().path();
        let (true, Some(principal)) = (
            audited_methods().contains_key(method),
            request.extensions().get::<Principal>(),
        ) else {
            return Box::pin(self.inner.call(request));
        };
        let request_id = request
            .extensions()
            .get::<RequestId>()
            .map(|id| id.0.clone())
            .unwrap_or_default();
        let scope = Arc::new(Scope::new(principal.subject.clone(), method.to_string(), request_id));
        let call = scope::run(scope.clone(), self.inner.call(request));
        let store = self.store.clone();
        Box::pin(async move {
            let response = call.await?;
            // A refusal is answered before anything streams: trailers-only, status in headers.
            if let Some(status) = tonic::Status::from_header_map(response.headers())
                && status.code() == tonic::Code::PermissionDenied
                && !scope.recorded()
            {
                record_refused(&store, &scope, &status).await;
            }
            Ok(response)
        })
    }
}

/// Writes the event of a refused attempt. A stream refused before its first message was read
/// is recorded against the environment the refusal names.
async fn record_refused(store: &Store, scope: &Scope, status: &tonic::Status) {
    if scope.subject().resource.is_empty()
        && let Some(env) = status
            .get_details_error_info()
            .and_then(|info| info.metadata.get("environment").cloned())
    {
        scope.note_resource(&format!("environments/{env}"));
    }
    let Some(event) = scope.event(tonic::Code::PermissionDenied as i32) else {
        return;
    };
    match store.record_audit_event(&event).await {
        Ok(()) => scope::written(scope),
        Err(e) => {
            tracing::error!(error = %e.message, method = %scope.method, "cannot record a refused attempt in the audit log")
        }
    }
}
