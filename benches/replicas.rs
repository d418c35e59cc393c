//! Scale-out benchmark (issue 18): N small DATA_OUT exports (default 300, 100 records each)
//! queued at once by one RunAllExports, executed by 1, 2 and 3 `exportd serve` processes on one
//! PostgreSQL database (each with `BENCH_WORKERS` workers, default 2). Reports runs/s (first
//! run created to last run ended), the queue wait of each run (start − create) at p50/p99, and
//! where the machine's time went: the CPU seconds of the exportd processes and of PostgreSQL
//! (all its processes), against the two cores' wall time.
//!
//! Run: `cargo bench --bench replicas` (BENCH_EXPORTS, BENCH_WORKERS, BENCH_REPLICAS="1,2,3").

mod support;

use std::time::{Duration, Instant};

use exportd::pb;
use support::*;

fn env_text(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// CPU seconds (user + system) of every process whose command is `name`.
fn cpu_of_processes(name: &str) -> f64 {
    let mut total = 0.0;
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        if !head.ends_with(&format!("({name}")) {
            continue;
        }
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = fields[11].parse::<f64>().unwrap_or(0.0) + fields[12].parse::<f64>().unwrap_or(0.0);
        total += ticks / 100.0;
    }
    total
}

fn micros(t: &Option<prost_types::Timestamp>) -> i64 {
    let t = t.as_ref().expect("a timestamp");
    t.seconds * 1_000_000 + i64::from(t.nanos) / 1000
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn all_runs(exports: &mut pb::export_service_client::ExportServiceClient<Authed>) -> Vec<pb::ExportRun> {
    let mut runs = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = exports
            .list_export_runs(pb::ListExportRunsRequest {
                parent: "environments/bench/exports/-".into(),
                page_size: 1000,
                page_token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        runs.extend(page.runs);
        if page.next_page_token.is_empty() {
            return runs;
        }
        page_token = page.next_page_token;
    }
}

fn measure(runtime: &tokio::runtime::Runtime, replicas: usize, exports_count: usize, workers: &str) {
    let database_url = fresh_postgres(&format!("exportd_replicas{replicas}"));
    let shared = tempfile::tempdir().unwrap();
    let allowed = shared.path().display().to_string();
    let env = [
        ("EXPORTD_WORKERS", workers),
        ("EXPORTD_ALLOWED_ROOTS", allowed.as_str()),
    ];
    let servers: Vec<Server> = (0..replicas)
        .map(|_| Server::start_on(tempfile::tempdir().unwrap(), database_url.clone(), &env))
        .collect();
    servers[0].create_environment("bench", "b2c");
    let first = &servers[0];
    runtime.block_on(async {
        write_records(first, 100).await;
        let mut connections = pb::connection_service_client::ConnectionServiceClient::new(first.authed("bench").await);
        connections
            .create_connection(pb::CreateConnectionRequest {
                parent: "environments/bench".into(),
                connection_id: "files".into(),
                connection: Some(pb::Connection {
                    display_name: "Files".into(),
                    r#type: "local-files".into(),
                    config: [("root".to_string(), allowed.clone())].into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap();
        let mut exports = pb::export_service_client::ExportServiceClient::new(first.authed("bench").await);
        for i in 0..exports_count {
            exports
                .create_export(pb::CreateExportRequest {
                    parent: "environments/bench".into(),
                    export_id: format!("x{i:04}"),
                    export: Some(pb::Export {
                        display_name: format!("Export {i}"),
                        connection: "environments/bench/connections/files".into(),
                        kind: pb::ExportKind::DataOut as i32,
                        entities: vec!["environments/bench/entities/customers".into()],
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .await
                .unwrap();
        }
        checkpoint_postgres();
        let exportd_cpu: f64 = servers.iter().map(Server::cpu_seconds).sum();
        let postgres_cpu = cpu_of_processes("postgres");
        let started = Instant::now();
        let queued = exports
            .run_all_exports(pb::RunAllExportsRequest {
                parent: "environments/bench".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(queued.started_count as usize, exports_count);
        let runs = loop {
            let runs = all_runs(&mut exports).await;
            let ended = runs.iter().filter(|r| r.end_time.is_some()).count();
            if ended >= exports_count {
                break runs;
            }
            assert!(
                started.elapsed() < Duration::from_secs(600),
                "runs did not end in 10 minutes"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let wall = started.elapsed().as_secs_f64();
        let exportd_cpu = servers.iter().map(Server::cpu_seconds).sum::<f64>() - exportd_cpu;
        let postgres_cpu = cpu_of_processes("postgres") - postgres_cpu;
        let succeeded = runs
            .iter()
            .filter(|r| r.state == pb::RunState::Succeeded as i32)
            .count();
        let first_create = runs.iter().map(|r| micros(&r.create_time)).min().unwrap();
        let last_end = runs.iter().map(|r| micros(&r.end_time)).max().unwrap();
        let span = (last_end - first_create) as f64 / 1e6;
        let mut waits: Vec<f64> = runs
            .iter()
            .map(|r| (micros(&r.start_time) - micros(&r.create_time)) as f64 / 1e6)
            .collect();
        waits.sort_by(f64::total_cmp);
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2) as f64;
        println!(
            "{}",
            table_row(&[
                format!("{replicas}"),
                format!("{}", replicas * workers.parse::<usize>().unwrap()),
                format!("{span:.2}"),
                format!("{:.1}", exports_count as f64 / span),
                format!("{:.2} / {:.2}", percentile(&waits, 0.5), percentile(&waits, 0.99)),
                format!("{exportd_cpu:.1} / {postgres_cpu:.1}"),
                format!("{:.0}%", 100.0 * (exportd_cpu + postgres_cpu) / (wall * cores)),
                format!("{succeeded} of {exports_count} succeeded"),
            ])
        );
    });
    drop(servers);
}

fn main() {
    let exports_count: usize = env_text("BENCH_EXPORTS", "300").parse().unwrap();
    let workers = env_text("BENCH_WORKERS", "2");
    let replicas: Vec<usize> = env_text("BENCH_REPLICAS", "1,2,3")
        .split(',')
        .map(|n| n.trim().parse().unwrap())
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "| replicas | workers | seconds | runs/s | queue wait p50 / p99 (s) | CPU s exportd / PostgreSQL | CPU busy | result |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for n in replicas {
        measure(&runtime, n, exports_count, &workers);
    }
}
