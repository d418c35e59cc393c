//! The gRPC services: decode the request, ask the policy, call domain and store, encode the
//! response. tonic stays here; errors become statuses in one place (`status`).

use std::sync::Arc;

use tonic::{Request, Status};

use crate::auth::Principal;
use crate::config::Settings;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::store::Store;

pub mod alerts;
pub mod audit;
pub mod bounds;
pub mod catalog;
pub mod codec;
pub mod connections;
pub mod convert;
pub mod exports;
pub mod mask;
pub mod pages;
pub mod runs;
pub mod status;

/// What every service shares.
pub struct AppState {
    pub store: Arc<Store>,
    pub settings: Arc<Settings>,
    pub engine: Arc<Engine>,
}

pub type State = Arc<AppState>;

/// The verified caller that the auth layer put on the request. Every unary RPC asks for it
/// first; a mutating one's request is handed to its audit scope here (`audit::describe`).
pub fn principal<T: prost::Message>(request: &Request<T>) -> std::result::Result<Principal, Status> {
    crate::audit::scope::request(|| request.get_ref().encode_to_vec());
    caller(request)
}

/// The verified caller of a client stream: its messages say what it changes (see
/// `audit::scope::stream_subject`).
pub fn stream_principal<T>(request: &Request<T>) -> std::result::Result<Principal, Status> {
    caller(request)
}

fn caller<T>(request: &Request<T>) -> std::result::Result<Principal, Status> {
    request.extensions().get::<Principal>().cloned().ok_or_else(|| {
        status::to_status(Error::unauthenticated(
            "MISSING_TOKEN",
            "this RPC needs `authorization: Bearer <JWT>` metadata",
        ))
    })
}

/// Runs a handler body and converts its error, the one exit of every unary RPC.
pub async fn respond<T>(result: impl Future<Output = Result<T>>) -> std::result::Result<tonic::Response<T>, Status> {
    result.await.map(tonic::Response::new).map_err(status::to_status)
}

/// A required sub-message of a request, or INVALID_ARGUMENT naming it.
pub fn required<'a, T>(field: &str, value: &'a Option<T>) -> Result<&'a T> {
    value
        .as_ref()
        .ok_or_else(|| Error::invalid(field, format!("{field} is required")))
}
