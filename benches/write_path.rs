//! The write path with and without the audit log and alert policies (issue 17: "must not slow
//! the write path measurably", target within 10%): CreateExport, UpdateExport and WriteRecords
//! throughput of this build ("after") against a build of the commit before the audit log
//! ("before", `BENCH_BEFORE_EXE`), side by side in one run, on SQLite and PostgreSQL.
//!
//! Each round starts a fresh server of each build on a fresh database, in alternating order
//! (before/after, then after/before), so a machine that slows down during the run weighs on
//! both alike. Rounds drift by a quarter and more on a shared 2-core machine (page cache, WAL
//! size, neighbours), so besides the ratio of the medians the table shows the median of the
//! per-round ratios: each round's pair ran back to back, on the same state of the machine.
//! The "after" server has an enabled alert policy watching every export, so alert
//! evaluation is on its path too.
//!
//! Build the baseline once (the commit before the audit log was merged):
//! `git worktree add /tmp/exportd-before 3968b79 && (cd /tmp/exportd-before && cargo build --release --bin exportd)`
//! then `BENCH_BEFORE_EXE=<its target>/release/exportd cargo bench --bench write_path`.
//! Knobs: BENCH_EXPORTS (2,000), BENCH_CLIENTS (8), BENCH_RECORDS (200,000), BENCH_ROUNDS (7),
//! BENCH_BACKENDS (sqlite,postgres).

mod support;

use std::path::{Path, PathBuf};
use std::time::Instant;

use exportd::pb;
use support::*;

/// Seconds to create `exports` exports over `clients` concurrent clients (each its own
/// HTTP/2 connection), then to rename each once (UpdateExport with a mask).
async fn create_then_update(server: &Server, exports: usize, clients: usize) -> (f64, f64) {
    let mut handles = Vec::new();
    let mut pool = Vec::new();
    for _ in 0..clients {
        pool.push(exports_client(server).await);
    }
    let started = Instant::now();
    for (c, client) in pool.iter().enumerate() {
        let mut client = client.clone();
        handles.push(tokio::spawn(async move {
            for i in (c..exports).step_by(clients) {
                client.create_export(export_request(i)).await.unwrap();
            }
        }));
    }
    for h in handles.drain(..) {
        h.await.unwrap();
    }
    let create = started.elapsed().as_secs_f64();
    let started = Instant::now();
    for (c, client) in pool.iter().enumerate() {
        let mut client = client.clone();
        handles.push(tokio::spawn(async move {
            for i in (c..exports).step_by(clients) {
                client
                    .update_export(pb::UpdateExportRequest {
                        export: Some(pb::Export {
                            name: format!("environments/bench/exports/e{i}"),
                            display_name: format!("renamed {i}"),
                            ..Default::default()
                        }),
                        update_mask: Some(prost_types::FieldMask {
                            paths: vec!["display_name".into()],
                        }),
                        ..Default::default()
                    })
                    .await
                    .unwrap();
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    (create, started.elapsed().as_secs_f64())
}

fn export_request(i: usize) -> pb::CreateExportRequest {
    pb::CreateExportRequest {
        parent: "environments/bench".into(),
        export_id: format!("e{i}"),
        export: Some(pb::Export {
            display_name: format!("export {i}"),
            connection: "environments/bench/connections/files".into(),
            kind: pb::ExportKind::DataOut as i32,
            entities: vec!["environments/bench/entities/customers".into()],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A webhook connection and an enabled policy watching every export for every condition a
/// run can enter (nothing runs here, so it only costs what it costs to be there).
async fn alert_policy(server: &Server) {
    create_connection(server, "hook", "webhook", &[("url", "http://127.0.0.1:9/hook")], &[]).await;
    pb::alert_service_client::AlertServiceClient::new(server.authed("bench").await)
        .create_alert_policy(pb::CreateAlertPolicyRequest {
            parent: "environments/bench".into(),
            alert_policy_id: "all".into(),
            alert_policy: Some(pb::AlertPolicy {
                display_name: "All".into(),
                connection: "environments/bench/connections/hook".into(),
                conditions: vec![
                    pb::AlertCondition::RunFailed as i32,
                    pb::AlertCondition::RunSkipped as i32,
                    pb::AlertCondition::RecordsRejected as i32,
                    pb::AlertCondition::ScheduleMissed as i32,
                ],
                enabled: true,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
}

/// One figure of a measurement (a row of the table).
type Figure = fn(&Figures) -> f64;

struct Figures {
    create_per_s: f64,
    update_per_s: f64,
    records_per_s: f64,
}

fn measure(exe: &Path, with_policy: bool, backend: &str, runtime: &tokio::runtime::Runtime) -> Figures {
    let (exports, clients, records) = (
        env_number("BENCH_EXPORTS", 2_000),
        env_number("BENCH_CLIENTS", 8),
        env_number("BENCH_RECORDS", 200_000),
    );
    // No runs execute meanwhile: the write path alone.
    let server = Server::start_exe(exe, backend, &[("EXPORTD_WORKERS", "0")]);
    server.create_environment("bench", "b2c");
    let root = server.data_dir.path().join("exports").join("bench").join("out");
    std::fs::create_dir_all(&root).unwrap();
    runtime.block_on(async {
        let record_seconds = write_records(&server, records).await;
        create_connection(
            &server,
            "files",
            "local-files",
            &[("root", root.to_str().unwrap())],
            &[],
        )
        .await;
        if with_policy {
            alert_policy(&server).await;
        }
        checkpoint_postgres();
        let (create, update) = create_then_update(&server, exports, clients).await;
        Figures {
            create_per_s: exports as f64 / create,
            update_per_s: exports as f64 / update,
            records_per_s: records as f64 / record_seconds,
        }
    })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn main() {
    let before = PathBuf::from(
        std::env::var("BENCH_BEFORE_EXE")
            .expect("BENCH_BEFORE_EXE: an exportd built from the commit before the audit log (see the header)"),
    );
    let after = PathBuf::from(EXE);
    let rounds = env_number("BENCH_ROUNDS", 7);
    let backends = std::env::var("BENCH_BACKENDS").unwrap_or_else(|_| "sqlite,postgres".into());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    println!(
        "exports: {}, clients: {}, records: {}, rounds: {rounds} (medians)\n",
        env_number("BENCH_EXPORTS", 2_000),
        env_number("BENCH_CLIENTS", 8),
        env_number("BENCH_RECORDS", 200_000)
    );
    println!(
        "{}",
        table_row(&[
            "what".into(),
            "backend".into(),
            "before /s".into(),
            "after /s".into(),
            "after ÷ before (medians)".into(),
            "median of per-round after ÷ before".into(),
            "every round (before → after)".into(),
        ])
    );
    println!("|---|---|---|---|---|---|---|");
    for backend in backends.split(',') {
        let (mut b, mut a) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            if round % 2 == 0 {
                b.push(measure(&before, false, backend, &runtime));
                a.push(measure(&after, true, backend, &runtime));
            } else {
                a.push(measure(&after, true, backend, &runtime));
                b.push(measure(&before, false, backend, &runtime));
            }
        }
        let rows: [(&str, Figure); 3] = [
            ("CreateExport", |f| f.create_per_s),
            ("UpdateExport", |f| f.update_per_s),
            ("WriteRecords (records)", |f| f.records_per_s),
        ];
        for (what, figure) in rows {
            let (before_all, after_all): (Vec<f64>, Vec<f64>) =
                (b.iter().map(figure).collect(), a.iter().map(figure).collect());
            let (mb, ma) = (median(before_all.clone()), median(after_all.clone()));
            let paired = median(before_all.iter().zip(&after_all).map(|(x, y)| y / x).collect());
            let rounds_shown: Vec<String> = before_all
                .iter()
                .zip(&after_all)
                .map(|(x, y)| format!("{x:.0} → {y:.0}"))
                .collect();
            println!(
                "{}",
                table_row(&[
                    what.into(),
                    backend.into(),
                    format!("{mb:.0}"),
                    format!("{ma:.0}"),
                    format!("{:.2}", ma / mb),
                    format!("{paired:.2}"),
                    rounds_shown.join("; "),
                ])
            );
        }
    }
}
