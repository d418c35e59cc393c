//! Tracing (PRODUCT.md §16): every log line of an RPC names its trace (the caller's W3C
//! `traceparent` trace id); with the cargo feature `otlp` and `otlp_endpoint` set, spans of
//! RPCs (children of the caller's span), runs and target requests reach an OTLP collector.

use crate::common::*;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN_ID: &str = "00f067aa0ba902b7";

/// A CreateConnection carrying a `traceparent`.
async fn traced_call(addr: &str) {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = exportd::pb::connection_service_client::ConnectionServiceClient::new(channel);
    let mut request = tonic::Request::new(local_files("acme", "files", "Files", true));
    let metadata = request.metadata_mut();
    metadata.insert("authorization", format!("Bearer {}", token("acme")).parse().unwrap());
    metadata.insert(
        "traceparent",
        format!("00-{TRACE_ID}-{PARENT_SPAN_ID}-01").parse().unwrap(),
    );
    client.create_connection(request).await.unwrap();
}

#[tokio::test]
async fn the_log_lines_of_an_rpc_name_the_callers_trace() {
    let dir = tempfile::tempdir().unwrap();
    let database_url = fresh_database_url(dir.path()).await;
    let envs = server_env(&database_url, &[]);
    create_environment(dir.path(), &envs, "acme");
    let server = ServeProcess::start(dir.path(), &[], &borrowed(&envs));
    traced_call(&server.addr).await;
    let logs = server.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("CreateConnection") && l.contains(" rpc"))
        .unwrap_or_else(|| panic!("no log line of the RPC:\n{logs}"));
    assert!(line.contains(&format!("trace_id={TRACE_ID}")), "{line}");
}

#[cfg(feature = "otlp")]
mod otlp {
    use std::sync::{Arc, Mutex};

    use exportd::pb;
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
    use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
    use opentelemetry_proto::tonic::trace::v1::Span;

    use super::*;

    /// An OTLP collector that keeps every span it is sent.
    #[derive(Clone, Default)]
    struct Collector(Arc<Mutex<Vec<Span>>>);

    #[tonic::async_trait]
    impl TraceService for Collector {
        async fn export(
            &self,
            request: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            let spans = request
                .into_inner()
                .resource_spans
                .into_iter()
                .flat_map(|r| r.scope_spans)
                .flat_map(|s| s.spans);
            self.0.lock().unwrap().extend(spans);
            Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
        }
    }

    // The collector answers on its own threads while the test waits for the server to exit.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn spans_of_rpcs_runs_and_target_requests_reach_the_collector() {
        let collector = Collector::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let server = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
        let collector_task = tokio::spawn(server);

        let dir = tempfile::tempdir().unwrap();
        let database_url = fresh_database_url(dir.path()).await;
        let mut envs = server_env(&database_url, &[("EXPORTD_WORKERS", "1")]);
        envs.push(("EXPORTD_OTLP_ENDPOINT", endpoint));
        create_environment(dir.path(), &envs, "acme");
        let server = ServeProcess::start(dir.path(), &[], &borrowed(&envs));
        traced_call(&server.addr).await;
        let (mut catalog, _, mut exports) = clients(&server.addr, "acme").await;
        catalog
            .create_entity(crate::common::customers_entity(
                "acme",
                "customers",
                pb::EntityKind::Profile,
            ))
            .await
            .unwrap();
        exports.create_export(files_export("traced")).await.unwrap();
        let run = run_export(&mut exports, "environments/acme/exports/traced").await;
        let run = wait_for_end(&mut exports, &run.name).await;
        assert_eq!(run_state(&run), pb::RunState::Succeeded);
        // A graceful stop sends what is still buffered.
        server.signal("TERM");
        let logs = server.logs();
        let code = tokio::task::spawn_blocking(move || server.wait()).await.unwrap();
        assert_eq!(code, Some(0), "{logs}");
        collector_task.abort();

        let spans = collector.0.lock().unwrap().clone();
        let hex = hex::encode;
        let rpc = spans
            .iter()
            .find(|s| s.name == "rpc" && hex(&s.trace_id) == TRACE_ID)
            .unwrap_or_else(|| panic!("no rpc span in the caller's trace: {spans:#?}\n{logs}"));
        assert_eq!(hex(&rpc.parent_span_id), PARENT_SPAN_ID, "a child of the caller's span");
        let run_span = spans
            .iter()
            .find(|s| s.name == "run")
            .unwrap_or_else(|| panic!("no run span: {spans:#?}"));
        let requests: Vec<_> = spans.iter().filter(|s| s.name == "target_request").collect();
        assert!(!requests.is_empty(), "no target_request span: {spans:#?}");
        assert!(
            requests.iter().all(|s| s.trace_id == run_span.trace_id),
            "target requests belong to their run's trace"
        );
    }
}
