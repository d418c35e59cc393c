//! Builds and runs the tonic server: edge and auth layers, the five services, health,
//! reflection (v1 and v1alpha, so that both grpcurl and buf curl work), message size limits,
//! and graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;

use crate::api::alerts::AlertApi;
use crate::api::audit::AuditApi;
use crate::api::catalog::CatalogApi;
use crate::api::connections::ConnectionApi;
use crate::api::exports::ExportApi;
use crate::api::{AppState, State};
use crate::auth::jwt::Verifier;
use crate::auth::layer::AuthLayer;
use crate::config::Settings;
use crate::pb;
use crate::pb::alert_service_server::AlertServiceServer;
use crate::pb::audit_service_server::AuditServiceServer;
use crate::pb::catalog_service_server::CatalogServiceServer;
use crate::pb::connection_service_server::ConnectionServiceServer;
use crate::pb::export_service_server::ExportServiceServer;
use crate::store::{Sealer, Store};

pub mod edge;
mod metrics_http;
mod rpc_metrics;

/// The largest HTTP/2 header block (all of a request's metadata) the server reads. Metadata up
/// to this size gets a gRPC answer on its own stream (the edge and auth layers refuse what is
/// too large with RESOURCE_EXHAUSTED or UNAUTHENTICATED); beyond it, HTTP/2 refuses the stream
/// itself (HTTP 431), or for a block too large to even buffer, closes the connection. hyper's
/// default of 16 KiB would make that happen to any token a little over 16 KiB.
pub const MAX_HEADER_LIST_BYTES: u32 = 1024 * 1024;

/// A server that is running; dropping it does not stop it, [`RunningServer::shutdown`] does.
pub struct RunningServer {
    pub addr: SocketAddr,
    /// Where `/metrics` is served, when `metrics_listen` is set.
    pub metrics_addr: Option<SocketAddr>,
    pub state: State,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), String>>,
}

impl RunningServer {
    /// Stops accepting, lets in-flight RPCs finish (within the grace period) and waits.
    pub async fn shutdown(self) -> Result<(), String> {
        let _ = self.stop.send(true);
        self.task.await.map_err(|e| e.to_string())?
    }

    /// Waits until the server ends (after a shutdown signal).
    pub async fn wait(self) -> Result<(), String> {
        self.task.await.map_err(|e| e.to_string())?
    }

    /// A handle that asks the server to stop.
    pub fn stopper(&self) -> watch::Sender<bool> {
        self.stop.clone()
    }
}

/// Opens the store (migrating it) and builds the shared state.
pub async fn open_state(settings: Settings) -> Result<State, String> {
    settings.check_can_serve()?;
    let sealer = Sealer::new(settings.sealing_keys.clone(), settings.sealing_key_id.clone())?;
    let store = Store::open(&settings.database_url, sealer, settings.read_cache_entries).await?;
    let applied = store.migrate().await?;
    if applied > 0 {
        tracing::info!(applied, "applied database migrations");
    }
    // Default areas are created below the exports root, never above it: it exists first.
    if let Err(e) =
        crate::connectors::local_files::prepare_exports_root(&settings.exports_root, settings.export_file_mode)
    {
        tracing::warn!(exports_root = %settings.exports_root.display(), error = %e, "cannot create the exports root; local-files runs will fail until it exists");
    }
    let store = Arc::new(store);
    let settings = Arc::new(settings);
    let engine = crate::engine::Engine::new(store.clone(), settings.clone());
    Ok(Arc::new(AppState {
        store,
        settings,
        engine,
    }))
}

/// Binds the listen address and serves until [`RunningServer::shutdown`].
pub async fn start(state: State) -> Result<RunningServer, String> {
    state.engine.start().await.map_err(|e| e.message)?;
    let listener = TcpListener::bind(state.settings.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", state.settings.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let verifier = Arc::new(Verifier::from_settings(&state.settings.jwt)?);
    let limit = state.settings.max_message_bytes;
    let grace = Duration::from_secs(state.settings.shutdown_grace_seconds);

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| format!("reflection: {e}"))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| format!("reflection: {e}"))?;
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<ConnectionServiceServer<ConnectionApi>>().await;
    health.set_serving::<ExportServiceServer<ExportApi>>().await;
    health.set_serving::<CatalogServiceServer<CatalogApi>>().await;
    health.set_serving::<AlertServiceServer<AlertApi>>().await;
    health.set_serving::<AuditServiceServer<AuditApi>>().await;

    let connections = ConnectionServiceServer::new(ConnectionApi::new(state.clone()))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    let exports = ExportServiceServer::new(ExportApi::new(state.clone()))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    let catalog = CatalogServiceServer::new(CatalogApi::new(state.clone()))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    let alerts = AlertServiceServer::new(AlertApi::new(state.clone()))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    let audit = AuditServiceServer::new(AuditApi::new(state.clone()))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);

    let edge = edge::EdgeLayer::default();
    let in_flight = edge.in_flight.clone();
    let layers = tower::ServiceBuilder::new()
        .layer(edge)
        .layer(AuthLayer::new(verifier, crate::api::status::to_status))
        .layer(crate::audit::layer::AuditLayer::new(state.store.clone()))
        .into_inner();
    let router = tonic::transport::Server::builder()
        .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
        .layer(layers)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(connections)
        .add_service(exports)
        .add_service(catalog)
        .add_service(alerts)
        .add_service(audit);

    let (stop, mut stopped) = watch::channel(false);
    let metrics = match state.settings.metrics_listen {
        Some(addr) => Some(metrics_http::start(addr, state.store.clone(), stopped.clone()).await?),
        None => None,
    };
    let metrics_addr = metrics.as_ref().map(|(addr, _)| *addr);
    let engine = state.engine.clone();
    // Small gRPC frames must not wait for the peer's delayed ACK (Nagle): tonic sets
    // TCP_NODELAY only on listeners it binds itself, not on an incoming stream.
    let incoming = TcpListenerStream::new(listener).map(|accepted| {
        if let Ok(stream) = &accepted {
            let _ = stream.set_nodelay(true);
        }
        accepted
    });
    let task = tokio::spawn(async move {
        let signal = {
            let mut stopped = stopped.clone();
            let health = health.clone();
            async move {
                let _ = stopped.wait_for(|s| *s).await;
                tracing::info!("shutting down: no new connections; finishing in-flight RPCs");
                health.set_not_serving::<ConnectionServiceServer<ConnectionApi>>().await;
                health.set_not_serving::<ExportServiceServer<ExportApi>>().await;
                health.set_not_serving::<CatalogServiceServer<CatalogApi>>().await;
                health.set_not_serving::<AlertServiceServer<AlertApi>>().await;
                health.set_not_serving::<AuditServiceServer<AuditApi>>().await;
            }
        };
        let serve = router.serve_with_incoming_shutdown(incoming, signal);
        tokio::pin!(serve);
        let outcome = tokio::select! {
            result = &mut serve => result.map_err(|e| format!("server error: {e}")),
            // Idle connections do not hold shutdown up: once no RPC is in flight (or the
            // grace period is over) the server stops and its connections close.
            finished = async {
                let _ = stopped.wait_for(|s| *s).await;
                in_flight.wait_idle(grace).await
            } => {
                if !finished {
                    tracing::warn!(grace_seconds = grace.as_secs(), "in-flight RPCs did not finish within the grace period; closing");
                }
                Ok(())
            }
        };
        // Running exports stop at a safe point and go back to the queue (or, if they cannot,
        // keep their rows; their leases expire and they are taken over).
        engine.stop(grace).await;
        if let Some((_, task)) = metrics {
            let _ = task.await;
        }
        outcome
    });
    Ok(RunningServer {
        addr,
        metrics_addr,
        state,
        stop,
        task,
    })
}

/// Resolves on SIGINT or SIGTERM.
pub async fn termination_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
