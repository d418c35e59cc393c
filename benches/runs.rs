//! Run engine benchmark (issue 5), side by side in one run:
//! - DATA_OUT of N six-field records (default 1,000,000) to a local CSV (CDM folder): seconds
//!   and the server's peak RSS, on SQLite and PostgreSQL, against the database's own export of
//!   the same stored rows (`COPY (SELECT …) TO STDOUT WITH CSV`, `sqlite3 -csv`);
//! - scheduler: 10,000 enabled schedules — fire lag p50/p99 and idle CPU;
//! - executor: 500 runs queued at once — all complete, concurrency cap honoured, throughput.
//!
//! Run: `cargo bench --bench runs` (BENCH_RECORDS, BENCH_BACKENDS, BENCH_SCHEDULES, BENCH_RUNS).

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use exportd::pb;
use support::*;

async fn create_files_connection(server: &Server, root: &std::path::Path) {
    connections_client(server)
        .await
        .create_connection(pb::CreateConnectionRequest {
            parent: "environments/bench".into(),
            connection_id: "files".into(),
            connection: Some(pb::Connection {
                display_name: "Files".into(),
                r#type: "local-files".into(),
                config: [("root".to_string(), root.display().to_string())].into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
}

fn data_out(id: &str, schedule: Option<pb::Schedule>) -> pb::CreateExportRequest {
    pb::CreateExportRequest {
        parent: "environments/bench".into(),
        export_id: id.into(),
        export: Some(pb::Export {
            display_name: format!("Export {id}"),
            connection: "environments/bench/connections/files".into(),
            kind: pb::ExportKind::DataOut as i32,
            entities: vec!["environments/bench/entities/customers".into()],
            schedule,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The database's own CSV export of the same stored rows.
fn database_export(backend: &str, server: &Server, out: &std::path::Path) -> f64 {
    let query =
        "SELECT key, data FROM records WHERE env = 'bench' AND entity = 'customers' AND NOT deleted ORDER BY key";
    let started = Instant::now();
    let file = std::fs::File::create(out).unwrap();
    let status = match backend {
        "postgres" => Command::new("psql")
            .args([
                server.database_url.as_str(),
                "-qc",
                &format!("\\copy ({query}) TO STDOUT WITH CSV HEADER"),
            ])
            .stdout(Stdio::from(file))
            .status()
            .unwrap(),
        _ => {
            let path = server.data_dir.path().join("exportd.db");
            Command::new("sqlite3")
                .args([
                    "-csv",
                    "-header",
                    path.to_str().unwrap(),
                    &query.replace("NOT deleted", "deleted = 0"),
                ])
                .stdout(Stdio::from(file))
                .status()
                .expect("sqlite3 (apt-get install sqlite3)")
        }
    };
    assert!(status.success());
    started.elapsed().as_secs_f64()
}

fn data_out_benchmark(runtime: &tokio::runtime::Runtime, backend: &str, n: usize) {
    let server = Server::start(backend, &[]);
    server.create_environment("bench", "b2c");
    runtime.block_on(write_records(&server, n));
    let root = server.data_dir.path().join("out");
    runtime.block_on(create_files_connection(&server, &root));
    runtime.block_on(async {
        exports_client(&server)
            .await
            .create_export(data_out("lake", None))
            .await
            .unwrap()
    });
    // A fresh process, so that the peak RSS is the export's own.
    let (data_dir, url) = server.stop();
    let server = Server::start_on(data_dir, url, &[]);
    let (seconds, run) = runtime.block_on(run_and_wait(&server, "lake"));
    assert_eq!(run.state, pb::RunState::Succeeded as i32, "{run:?}");
    assert_eq!(run.records_exported as usize, n);
    let rss = server.peak_rss_mib();
    let baseline = database_export(backend, &server, &server.data_dir.path().join("baseline.csv"));
    let tool = if backend == "postgres" {
        "COPY (SELECT …) TO STDOUT WITH CSV"
    } else {
        "sqlite3 -csv"
    };
    println!(
        "{}",
        table_row(&[
            tool.to_string(),
            backend.into(),
            format!("{baseline:.2}"),
            format!("{:.0}", n as f64 / baseline),
            "baseline".into()
        ])
    );
    println!(
        "{}",
        table_row(&[
            "DATA_OUT run to local CSV (CDM)".into(),
            backend.into(),
            format!("{seconds:.2}"),
            format!("{:.0}", n as f64 / seconds),
            format!(
                "{:.2}× baseline; {} bytes; server peak RSS {rss:.0} MiB",
                seconds / baseline,
                run.bytes_written
            ),
        ])
    );
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// 10,000 enabled cron schedules, all due within a window: how late each fires (run create
/// time − due time), and the CPU the server uses while nothing is due.
fn scheduler_benchmark(runtime: &tokio::runtime::Runtime, schedules: usize) {
    // No workers: the runs stay queued, so only the scheduler is measured.
    let server = Server::start("sqlite", &[("EXPORTD_WORKERS", "0")]);
    server.create_environment("bench", "b2c");
    runtime.block_on(async {
        let mut catalog = server.catalog("bench").await;
        catalog.create_entity(entity_request()).await.unwrap();
        create_files_connection(&server, &server.data_dir.path().join("out")).await;
        let mut exports = exports_client(&server).await;
        let schedule = pb::Schedule {
            enabled: true,
            trigger: Some(pb::schedule::Trigger::Cron(pb::CronSchedule {
                expression: "0 3 * * *".into(),
                time_zone: "Europe/Paris".into(),
            })),
            next_run_time: None,
        };
        for i in 0..schedules {
            exports
                .create_export(data_out(&format!("s{i:05}"), Some(schedule.clone())))
                .await
                .unwrap();
        }
    });
    // Idle: every schedule is hours away.
    let cpu_before = server.cpu_seconds();
    std::thread::sleep(Duration::from_secs(20));
    let idle_cpu = (server.cpu_seconds() - cpu_before) / 20.0 * 100.0;

    // Make them due over 10 seconds (as a clock would), spread evenly. This change goes around
    // the API, which would wake the scheduler, so the scheduler finds it at its next wake-up
    // (at most 5 s away): the first is due 7 s from now, so that the lag measured is the
    // scheduler's own, not how late it learnt of a change made behind its back.
    let start = chrono::Utc::now().timestamp_micros() + 7_000_000;
    let db = server.data_dir.path().join("exportd.db");
    let sql = format!(
        "UPDATE exports SET next_run_at = {start} + (CAST(substr(id, 2) AS INTEGER) * 10000000 / {schedules});"
    );
    assert!(
        Command::new("sqlite3")
            .args([db.to_str().unwrap(), &sql])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let lags = loop {
        let out = Command::new("sqlite3")
            .args([
                db.to_str().unwrap(),
                "SELECT r.create_time, e.id FROM runs r JOIN exports e ON e.id = r.export",
            ])
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let rows: Vec<(i64, i64)> = text
            .lines()
            .filter_map(|l| {
                let (created, id) = l.split_once('|')?;
                let due = start + id[1..].parse::<i64>().ok()? * 10_000_000 / schedules as i64;
                Some((created.parse().ok()?, due))
            })
            .collect();
        if rows.len() >= schedules || Instant::now() > deadline {
            break rows
                .into_iter()
                .map(|(created, due)| (created - due) as f64 / 1000.0)
                .collect::<Vec<f64>>();
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let mut sorted = lags.clone();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "{}",
        table_row(&[
            format!("scheduler: {schedules} cron schedules due over 10 s"),
            "sqlite".into(),
            format!("fired {}", lags.len()),
            format!("lag p50 {:.0} ms", percentile(&sorted, 0.5)),
            format!(
                "lag p99 {:.0} ms, max {:.0} ms; idle CPU {idle_cpu:.2}% of one core",
                percentile(&sorted, 0.99),
                sorted.last().copied().unwrap_or(f64::NAN)
            ),
        ])
    );
}

/// 500 runs queued at once (RunAllExports) on `workers` workers.
fn executor_benchmark(runtime: &tokio::runtime::Runtime, runs: usize) {
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let server = Server::start("sqlite", &[]);
    server.create_environment("bench", "b2c");
    let (seconds, max_running, succeeded) = runtime.block_on(async {
        write_records(&server, 100).await;
        create_files_connection(&server, &server.data_dir.path().join("out")).await;
        let mut exports = exports_client(&server).await;
        for i in 0..runs {
            exports
                .create_export(data_out(&format!("x{i:04}"), None))
                .await
                .unwrap();
        }
        let started = Instant::now();
        let queued = exports
            .run_all_exports(pb::RunAllExportsRequest {
                parent: "environments/bench".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(queued.runs.len(), runs);
        let mut max_running = 0;
        loop {
            let running = exports
                .list_export_runs(pb::ListExportRunsRequest {
                    parent: "environments/bench/exports/-".into(),
                    filter: "state = RUNNING".into(),
                    page_size: 1000,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .runs
                .len();
            max_running = max_running.max(running);
            let done = exports
                .list_export_runs(pb::ListExportRunsRequest {
                    parent: "environments/bench/exports/-".into(),
                    filter: "state = SUCCEEDED".into(),
                    page_size: 1000,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .runs
                .len();
            if done >= runs {
                break (started.elapsed().as_secs_f64(), max_running, done);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    println!(
        "{}",
        table_row(&[
            format!("executor: {runs} runs queued at once, {workers} workers"),
            "sqlite".into(),
            format!("{seconds:.2}"),
            format!("{:.0} runs/s", runs as f64 / seconds),
            format!("{succeeded} succeeded; most RUNNING at once: {max_running} (cap {workers})"),
        ])
    );
}

fn main() {
    let n = env_number("BENCH_RECORDS", 1_000_000);
    let schedules = env_number("BENCH_SCHEDULES", 10_000);
    let runs = env_number("BENCH_RUNS", 500);
    let backends = std::env::var("BENCH_BACKENDS").unwrap_or_else(|_| "sqlite,postgres".into());
    let parts = std::env::var("BENCH_PARTS").unwrap_or_else(|_| "data_out,scheduler,executor".into());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    println!(
        "{}",
        table_row(&[
            "what".into(),
            "backend".into(),
            "seconds".into(),
            "rate".into(),
            "notes".into()
        ])
    );
    println!("|---|---|---|---|---|");
    if parts.contains("data_out") {
        for backend in backends.split(',') {
            data_out_benchmark(&runtime, backend, n);
        }
    }
    if parts.contains("scheduler") {
        scheduler_benchmark(&runtime, schedules);
    }
    if parts.contains("executor") {
        executor_benchmark(&runtime, runs);
    }
}
