//! Export management benchmark (issue 4): GetExport and ListExports (pages of 100 out of
//! 10,000 exports, sorted and filtered) on SQLite under a concurrent load generator — requests/s
//! and p50/p99 — side by side, in the same run, with a bare tonic unary echo server (the gRPC
//! health check of a process that serves nothing else). Every row is measured twice on the same
//! database: by a server whose reads all go to the database (`read_cache_entries = 0`, as right
//! after a write), then by a server with the read cache (nothing written meanwhile).
//!
//! Run: `cargo bench --bench exports` (BENCH_EXPORTS, BENCH_SECONDS, BENCH_CONCURRENCY;
//! BENCH_LISTS=all for more list orders and filters).

mod support;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use exportd::pb;
use support::*;

/// In the child process: a tonic server with only the health service, until killed.
fn serve_echo() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("echo listening on {}", listener.local_addr().unwrap());
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
}

struct Load {
    requests: usize,
    seconds: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// Runs `concurrency` clients (over 4 connections) calling `call` for `seconds`.
async fn load<F, Fut>(concurrency: usize, seconds: u64, call: F) -> Load
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let call = Arc::new(call);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..concurrency {
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut i = 0;
            while Instant::now() < deadline {
                let t = Instant::now();
                call(client * 1_000_000 + i).await;
                latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                i += 1;
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    let seconds = started.elapsed().as_secs_f64();
    all.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pick = |p: f64| all[((all.len() as f64 - 1.0) * p).round() as usize];
    Load {
        requests: all.len(),
        seconds,
        p50_ms: pick(0.5),
        p99_ms: pick(0.99),
    }
}

fn print(what: &str, load: &Load, note: String) {
    println!(
        "{}",
        table_row(&[
            what.into(),
            format!("{:.0}", load.requests as f64 / load.seconds),
            format!("{:.2}", load.p50_ms),
            format!("{:.2}", load.p99_ms),
            note,
        ])
    );
}

const LISTS: [(&str, &str); 3] = [
    ("", "display_name"),
    ("state = ACTIVE AND kind = DATA_OUT", "create_time desc"),
    ("display_name:\"export 1\"", "connection, display_name desc"),
];

/// More orders and filters, measured with `BENCH_LISTS=all` (the development smoke test that
/// used to live in the integration tests): sorts no index serves, nullable keys, joins.
const MORE_LISTS: [(&str, &str); 5] = [
    ("state = ACTIVE AND status != FAILED", "create_time desc"),
    ("display_name:\"12\"", "update_time"),
    ("", "status"),
    ("", "connection"),
    ("connection_type = \"local-files\"", "connection_type, create_time desc"),
];

/// The list rows this run measures.
fn lists() -> Vec<(&'static str, &'static str)> {
    let mut lists = LISTS.to_vec();
    if std::env::var("BENCH_LISTS").as_deref() == Ok("all") {
        lists.extend(MORE_LISTS);
    }
    lists
}

fn list_request(filter: &str, order: &str) -> pb::ListExportsRequest {
    pb::ListExportsRequest {
        parent: "environments/bench".into(),
        page_size: 100,
        filter: filter.to_string(),
        order_by: order.to_string(),
        ..Default::default()
    }
}

/// GetExport and the ListExports rows against `server`. Each client walks its own stretch of
/// the exports, so concurrent clients read different ones. Against a server with the read
/// cache (`cached`), every export and list is read once first, so the timed reads are repeats.
async fn measure_reads(
    server: &Server,
    exports: usize,
    concurrency: usize,
    seconds: u64,
    cached: bool,
    ratio_to_echo: &dyn Fn(&Load) -> f64,
) {
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(pb::export_service_client::ExportServiceClient::new(
            server.authed("bench").await,
        ));
    }
    let export_name = move |i: usize| {
        let (client, n) = (i / 1_000_000, i % 1_000_000);
        format!(
            "environments/bench/exports/x{:05}",
            (client * exports / concurrency + n) % exports
        )
    };
    let source = if cached { "read cache" } else { "database" };
    if cached {
        let mut client = clients[0].clone();
        for i in 0..exports {
            let name = format!("environments/bench/exports/x{i:05}");
            client.get_export(pb::GetExportRequest { name }).await.unwrap();
        }
        for (filter, order) in lists() {
            client.list_exports(list_request(filter, order)).await.unwrap();
        }
    }
    let get_clients = clients.clone();
    let get_load = load(concurrency, seconds, move |i| {
        let mut client = get_clients[i % 4].clone();
        let name = export_name(i);
        async move {
            client.get_export(pb::GetExportRequest { name }).await.unwrap();
        }
    })
    .await;
    print(
        &format!("GetExport ({source})"),
        &get_load,
        format!("{:.0}% of the echo server's throughput", ratio_to_echo(&get_load)),
    );
    for (filter, order) in lists() {
        let list_clients = clients.clone();
        let list_load = load(concurrency, seconds, move |i| {
            let mut client = list_clients[i % 4].clone();
            async move {
                let page = client
                    .list_exports(list_request(filter, order))
                    .await
                    .unwrap()
                    .into_inner();
                assert!(!page.exports.is_empty());
            }
        })
        .await;
        print(
            &format!("ListExports ({source}) page of 100, filter `{filter}`, order `{order}`"),
            &list_load,
            String::new(),
        );
    }
}

fn main() {
    if std::env::var("BENCH_ROLE").as_deref() == Ok("echo") {
        return serve_echo();
    }
    let exports = env_number("BENCH_EXPORTS", 10_000);
    let seconds = env_number("BENCH_SECONDS", 10) as u64;
    let concurrency = env_number("BENCH_CONCURRENCY", 16);
    let runtime = tokio::runtime::Runtime::new().unwrap();

    // The echo server: this same benchmark binary in its echo role, in its own process.
    let mut echo = Command::new(std::env::current_exe().unwrap())
        .env("BENCH_ROLE", "echo")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let echo_addr = {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(echo.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        line.trim().strip_prefix("echo listening on ").unwrap().to_string()
    };

    // First a server whose every read goes to the database; later the same database under a
    // server with the read cache.
    let server = Server::start(
        "sqlite",
        &[("EXPORTD_WORKERS", "0"), ("EXPORTD_READ_CACHE_ENTRIES", "0")],
    );
    server.create_environment("bench", "b2c");
    runtime.block_on(async {
        let mut connections = pb::connection_service_client::ConnectionServiceClient::new(server.authed("bench").await);
        for (id, shared) in [("files", true), ("private", false)] {
            connections
                .create_connection(pb::CreateConnectionRequest {
                    parent: "environments/bench".into(),
                    connection_id: id.into(),
                    connection: Some(pb::Connection {
                        display_name: format!("{id} connection"),
                        r#type: "local-files".into(),
                        contributors_can_use: shared,
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .await
                .unwrap();
        }
        server
            .catalog("bench")
            .await
            .create_entity(entity_request())
            .await
            .unwrap();
        let mut client = pb::export_service_client::ExportServiceClient::new(server.authed("bench").await);
        for i in 0..exports {
            client
                .create_export(pb::CreateExportRequest {
                    parent: "environments/bench".into(),
                    export_id: format!("x{i:05}"),
                    export: Some(pb::Export {
                        display_name: format!("Export {}", (i * 7919) % exports),
                        connection: format!(
                            "environments/bench/connections/{}",
                            if i % 2 == 0 { "files" } else { "private" }
                        ),
                        kind: pb::ExportKind::DataOut as i32,
                        entities: vec!["environments/bench/entities/customers".into()],
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .await
                .unwrap();
        }
    });

    println!("{exports} exports on SQLite; {concurrency} concurrent clients over 4 connections; {seconds} s per row\n");
    println!(
        "{}",
        table_row(&[
            "what".into(),
            "requests/s".into(),
            "p50 ms".into(),
            "p99 ms".into(),
            "notes".into()
        ])
    );
    println!("|---|---|---|---|---|");
    runtime.block_on(async {
        let mut channels = Vec::new();
        for _ in 0..4 {
            channels.push(
                tonic::transport::Endpoint::from_shared(format!("http://{echo_addr}"))
                    .unwrap()
                    .connect()
                    .await
                    .unwrap(),
            );
        }
        let echo_load = load(concurrency, seconds, move |i| {
            let mut client = tonic_health::pb::health_client::HealthClient::new(channels[i % 4].clone());
            async move {
                client
                    .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
                    .await
                    .unwrap();
            }
        })
        .await;
        print("bare tonic unary echo (health check)", &echo_load, "baseline".into());

        let ratio_to_echo = |load: &Load| {
            (load.requests as f64 / load.seconds) / (echo_load.requests as f64 / echo_load.seconds) * 100.0
        };
        measure_reads(&server, exports, concurrency, seconds, false, &ratio_to_echo).await;
        let (data_dir, database_url) = server.stop();
        let server = Server::start_on(data_dir, database_url, &[("EXPORTD_WORKERS", "0")]);
        measure_reads(&server, exports, concurrency, seconds, true, &ratio_to_echo).await;
    });
    let _ = echo.kill();
    let _ = echo.wait();
}
