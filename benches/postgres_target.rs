//! PostgreSQL target benchmark (issue 15), side by side in one run: a DATA_OUT of N six-field
//! records (default 1,000,000) to the `postgres` target in `replace` mode, against `psql \copy`
//! of the same rows as CSV (the very CSV a `local-files` export of the same server writes) into
//! a table of the same shape (the same typed columns and primary key), on the same PostgreSQL
//! server. exportd's run reads the records from its own store (SQLite), encodes them and COPYs
//! them into a staging table that it then swaps in; `psql` only streams a ready file. Each
//! exportd run starts in a fresh server process, so that its peak RSS (`VmHWM`) is that run's
//! own; a CHECKPOINT precedes every measurement.
//!
//! Run: `cargo bench --bench postgres_target` (BENCH_RECORDS, default 1000000; BENCH_REPEATS,
//! default 3: the two are measured alternately and the medians compared).

mod support;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Instant;

use exportd::pb;
use support::*;

const TABLE_SHAPE: &str = "(id text NOT NULL, email text, country text, ltv double precision, vip boolean, \
                           signup timestamp with time zone, CONSTRAINT baseline_pkey PRIMARY KEY (id))";

async fn create_connection(server: &Server, id: &str, kind: &str, config: &[(&str, &str)], secrets: &[(&str, &str)]) {
    let map = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    };
    connections_client(server)
        .await
        .create_connection(pb::CreateConnectionRequest {
            parent: "environments/bench".into(),
            connection_id: id.into(),
            connection: Some(pb::Connection {
                display_name: id.into(),
                r#type: kind.into(),
                config: map(config).into_iter().collect(),
                secrets: map(secrets).into_iter().collect(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
}

async fn create_export(server: &Server, id: &str, connection: &str) {
    exports_client(server)
        .await
        .create_export(pb::CreateExportRequest {
            parent: "environments/bench".into(),
            export_id: id.into(),
            export: Some(pb::Export {
                display_name: id.into(),
                connection: format!("environments/bench/connections/{connection}"),
                kind: pb::ExportKind::DataOut as i32,
                entities: vec!["environments/bench/entities/customers".into()],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
}

/// Every `.csv` file under `dir`.
fn csv_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(csv_files(&path));
        } else if path.extension().is_some_and(|e| e == "csv") {
            found.push(path);
        }
    }
    found.sort();
    found
}

/// `psql \copy` of the CSV files into a new table of the target's shape: seconds.
fn psql_copy(url: &str, files: &[std::path::PathBuf]) -> f64 {
    psql(url, "DROP TABLE IF EXISTS baseline");
    checkpoint_postgres();
    let mut script = format!("CREATE TABLE baseline {TABLE_SHAPE};\n");
    for file in files {
        script.push_str(&format!(
            "\\copy baseline FROM '{}' WITH (FORMAT csv, HEADER true)\n",
            file.display()
        ));
    }
    let script_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(script_file.path(), script).unwrap();
    let started = Instant::now();
    let status = Command::new("psql")
        .args([url, "-q", "-v", "ON_ERROR_STOP=1", "-f"])
        .arg(script_file.path())
        .status()
        .expect("psql");
    let seconds = started.elapsed().as_secs_f64();
    assert!(status.success(), "psql \\copy failed");
    seconds
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    values[values.len() / 2]
}

fn main() {
    let n = env_number("BENCH_RECORDS", 1_000_000);
    let repeats = env_number("BENCH_REPEATS", 3).max(1);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let target_url = fresh_postgres("exportd_test_bench_target");

    let mut server = Server::start("sqlite", &[]);
    server.create_environment("bench", "b2c");
    let write_seconds = runtime.block_on(write_records(&server, n));
    eprintln!("wrote {n} records in {write_seconds:.1} s");
    // The CSV the baseline loads: what a local-files export of the same records writes.
    let lake = server.data_dir.path().join("exports/bench/lake");
    std::fs::create_dir_all(&lake).unwrap();
    let lake = std::fs::canonicalize(&lake).unwrap();
    runtime.block_on(async {
        create_connection(&server, "lake", "local-files", &[("root", lake.to_str().unwrap())], &[]).await;
        create_export(&server, "csv", "lake").await;
        create_connection(&server, "pg", "postgres", &[], &[("url", &target_url)]).await;
        create_export(&server, "load", "pg").await;
    });
    let (_, run) = runtime.block_on(run_and_wait(&server, "csv"));
    assert_eq!(run.state, pb::RunState::Succeeded as i32, "{run:?}");
    let files = csv_files(&lake);
    let csv_mib = files.iter().map(|f| f.metadata().unwrap().len()).sum::<u64>() as f64 / (1 << 20) as f64;

    println!(
        "{}",
        table_row(&[
            "records".into(),
            "CSV MiB".into(),
            "psql \\copy s".into(),
            "exportd run s".into(),
            "ratio".into(),
            "exportd CPU s".into(),
            "server peak RSS MiB".into(),
        ])
    );
    println!("|---|---|---|---|---|---|---|");
    let (mut baselines, mut runs, mut rss, mut cpu) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..repeats {
        baselines.push(psql_copy(&target_url, &files));
        // A fresh process, so that the peak RSS is this run's own.
        let (data_dir, url) = server.stop();
        server = Server::start_on(data_dir, url, &[]);
        checkpoint_postgres();
        let (seconds, run) = runtime.block_on(run_and_wait(&server, "load"));
        assert_eq!(run.state, pb::RunState::Succeeded as i32, "{run:?}");
        assert_eq!(run.records_exported as usize, n);
        runs.push(seconds);
        rss.push(server.peak_rss_mib());
        cpu.push(server.cpu_seconds());
        let rows = psql(&target_url, "SELECT count(*) FROM customers");
        assert_eq!(rows.trim(), n.to_string(), "every record is in the table");
        println!(
            "{}",
            table_row(&[
                n.to_string(),
                format!("{csv_mib:.1}"),
                format!("{:.2}", baselines.last().unwrap()),
                format!("{seconds:.2}"),
                format!("{:.2}×", seconds / baselines.last().unwrap()),
                format!("{:.1}", cpu.last().unwrap()),
                format!("{:.0}", rss.last().unwrap()),
            ])
        );
    }
    let (baseline, exportd) = (median(&mut baselines), median(&mut runs));
    println!(
        "{}",
        table_row(&[
            format!("**median of {repeats}**"),
            format!("{csv_mib:.1}"),
            format!("{baseline:.2}"),
            format!("{exportd:.2}"),
            format!("**{:.2}×**", exportd / baseline),
            format!("{:.1}", median(&mut cpu)),
            format!("{:.0}", rss.iter().cloned().fold(0.0, f64::max)),
        ])
    );
    let _ = server.stop();
    psql(
        PG_ADMIN,
        &format!("DROP DATABASE IF EXISTS \"{}\"", target_url.rsplit('/').next().unwrap()),
    );
}
