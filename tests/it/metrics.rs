//! Prometheus metrics on `metrics_listen` (PRODUCT.md §16): after a known workload a scrape of
//! `/metrics` shows exactly the series the product names, with the exact counts.

use exportd::pb;
use serde_json::json;
use tonic::Code;

use crate::common::*;

/// Every series of PRODUCT.md §16 with its type, in the order the endpoint lists them.
const SERIES: [(&str, &str); 11] = [
    ("exportd_rpc_requests_total", "counter"),
    ("exportd_rpc_duration_seconds", "histogram"),
    ("exportd_runs_total", "counter"),
    ("exportd_run_queue_depth", "gauge"),
    ("exportd_run_lease_takeovers_total", "counter"),
    ("exportd_scheduler_lag_seconds", "histogram"),
    ("exportd_records_exported_total", "counter"),
    ("exportd_records_rejected_total", "counter"),
    ("exportd_bytes_written_total", "counter"),
    ("exportd_target_requests_total", "counter"),
    ("exportd_target_retries_total", "counter"),
];

#[tokio::test]
async fn a_scrape_after_a_known_workload_shows_every_series_with_exact_counts() {
    let dir = tempfile::tempdir().unwrap();
    let database_url = fresh_database_url(dir.path()).await;
    let api_only = server_env(
        &database_url,
        &[("EXPORTD_METRICS_LISTEN", "127.0.0.1:0"), ("EXPORTD_WORKERS", "0")],
    );
    create_environment(dir.path(), &api_only, "acme");

    // An API-only process: a run stays queued until it is cancelled.
    let server = ServeProcess::start(dir.path(), &[], &borrowed(&api_only));
    let first = scrape(&server);
    let mut at = 0;
    for (name, kind) in SERIES {
        let described = format!("# TYPE {name} {kind}\n");
        let found = first[at..]
            .find(&described)
            .unwrap_or_else(|| panic!("{name} ({kind}) missing or out of order:\n{first}"));
        at += found + described.len();
    }
    let described = first.lines().filter(|l| l.starts_with("# TYPE ")).count();
    assert_eq!(
        described,
        SERIES.len(),
        "exactly the series of PRODUCT.md §16:\n{first}"
    );
    assert_eq!(sample(&first, "exportd_run_queue_depth"), Some(0.0));
    assert_eq!(sample(&first, "exportd_run_lease_takeovers_total"), Some(0.0));
    assert_eq!(sample(&first, "exportd_scheduler_lag_seconds_count"), Some(0.0));

    let (mut catalog, mut connections, mut exports) = clients(&server.addr, "acme").await;
    connections
        .create_connection(local_files("acme", "files", "Files", true))
        .await
        .unwrap();
    expect_code(
        connections
            .get_connection(pb::GetConnectionRequest {
                name: "environments/acme/connections/nope".into(),
            })
            .await,
        Code::NotFound,
    );
    catalog
        .create_entity(customers_entity("acme", "customers", pb::EntityKind::Profile))
        .await
        .unwrap();
    let records = (0..3).map(|i| json!({"id": format!("c{i}"), "ltv": 1.5})).collect();
    catalog
        .write_records(tokio_stream::iter(vec![write(
            "environments/acme/entities/customers",
            records,
            &[],
        )]))
        .await
        .unwrap();
    exports.create_export(files_export("queued")).await.unwrap();
    let queued = run_export(&mut exports, "environments/acme/exports/queued").await;
    // A method the server does not have: counted, but not as a label of its own.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let token = crate::common::token("acme");
    let made_up = crate::common::raw::unary(
        channel,
        Some(&token),
        "/exportd.v1.ExportService/NoSuchMethod-42",
        vec![],
    )
    .await;
    assert_eq!(made_up.unwrap_err().code(), Code::Unimplemented);

    let during = scrape(&server);
    assert_eq!(sample(&during, "exportd_run_queue_depth"), Some(1.0), "{during}");
    exports
        .cancel_export_run(pb::CancelExportRunRequest {
            name: queued.name.clone(),
        })
        .await
        .unwrap();

    let after = scrape(&server);
    let rpc = |method: &str, code: &str| {
        sample(
            &after,
            &format!("exportd_rpc_requests_total{{method=\"/exportd.v1.{method}\",code=\"{code}\"}}"),
        )
    };
    assert_eq!(rpc("ConnectionService/CreateConnection", "OK"), Some(1.0), "{after}");
    assert_eq!(rpc("ConnectionService/GetConnection", "NOT_FOUND"), Some(1.0));
    assert_eq!(rpc("CatalogService/WriteRecords", "OK"), Some(1.0));
    assert_eq!(rpc("ExportService/RunExport", "OK"), Some(1.0));
    assert_eq!(rpc("ExportService/CancelExportRun", "OK"), Some(1.0));
    assert_eq!(
        sample(
            &after,
            "exportd_rpc_requests_total{method=\"other\",code=\"UNIMPLEMENTED\"}"
        ),
        Some(1.0)
    );
    assert!(!after.contains("NoSuchMethod"), "made-up methods are no label values");
    // The histogram of one method: every bucket cumulative, +Inf and _count equal to the calls.
    let duration =
        "exportd_rpc_duration_seconds_bucket{method=\"/exportd.v1.ConnectionService/CreateConnection\",le=\"+Inf\"}";
    assert_eq!(sample(&after, duration), Some(1.0));
    assert_eq!(
        sample(
            &after,
            "exportd_rpc_duration_seconds_count{method=\"/exportd.v1.ConnectionService/CreateConnection\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &after,
            "exportd_runs_total{state=\"CANCELLED\",trigger=\"MANUAL\",connection_type=\"local-files\"}"
        ),
        Some(1.0),
        "{after}"
    );
    assert_eq!(sample(&after, "exportd_run_queue_depth"), Some(0.0));
    // No resource names, keys or run ids anywhere in the labels.
    for private in ["acme", "customers", "queued", "run-", "c0", "\"files\""] {
        assert!(!after.contains(private), "{private} appears in the metrics:\n{after}");
    }

    // Only GET /metrics is served.
    let url = server.metrics_url.clone().unwrap();
    assert_eq!(http_get(&url.replace("/metrics", "/other"), "GET").0, 404);
    assert_eq!(http_get(&url, "POST").0, 405);
    drop(server);

    // A process with a worker: one run to its end; records and bytes as the run reports them.
    let working = server_env(
        &database_url,
        &[("EXPORTD_METRICS_LISTEN", "127.0.0.1:0"), ("EXPORTD_WORKERS", "1")],
    );
    let server = ServeProcess::start(dir.path(), &[], &borrowed(&working));
    let (_, _, mut exports) = clients(&server.addr, "acme").await;
    exports.create_export(files_export("nightly")).await.unwrap();
    let run = run_export(&mut exports, "environments/acme/exports/nightly").await;
    let run = wait_for_end(&mut exports, &run.name).await;
    assert_eq!(run_state(&run), pb::RunState::Succeeded, "{run:?}");
    assert_eq!(run.records_exported, 3);
    assert!(run.bytes_written > 0);

    let done = scrape(&server);
    assert_eq!(
        sample(
            &done,
            "exportd_runs_total{state=\"SUCCEEDED\",trigger=\"MANUAL\",connection_type=\"local-files\"}"
        ),
        Some(1.0),
        "{done}"
    );
    // A new process counts from zero: the cancellation was the other process's.
    assert!(!done.contains("state=\"CANCELLED\""), "{done}");
    assert_eq!(
        sample(&done, "exportd_records_exported_total{connection_type=\"local-files\"}"),
        Some(3.0)
    );
    assert_eq!(
        sample(&done, "exportd_records_rejected_total{connection_type=\"local-files\"}"),
        Some(0.0)
    );
    assert_eq!(
        sample(&done, "exportd_bytes_written_total{connection_type=\"local-files\"}"),
        Some(run.bytes_written as f64)
    );
    // The CDM folder: one partition and model.json published (and an earlier model.json read).
    let published = sample(
        &done,
        "exportd_target_requests_total{connection_type=\"local-files\",outcome=\"ok\"}",
    )
    .unwrap_or_else(|| panic!("no target requests counted:\n{done}"));
    assert!(published >= 2.0, "{done}");
    assert_eq!(
        sample(
            &done,
            "exportd_target_requests_total{connection_type=\"local-files\",outcome=\"error\"}"
        ),
        None
    );
}
