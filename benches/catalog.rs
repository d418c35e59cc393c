//! Catalog benchmark (issue 3):
//! - WriteRecords of N six-field records (default 1,000,000) on SQLite and PostgreSQL, side by
//!   side with PostgreSQL's own `COPY … FROM STDIN` of the same rows (median of three); each
//!   measurement starts after a CHECKPOINT;
//! - a rule-segment refresh over the same records: seconds and the server's peak RSS.
//!
//! Run: `cargo bench --bench catalog` (BENCH_RECORDS=100000 for a quick run; BENCH_BACKENDS=sqlite).

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use exportd::pb;
use support::*;

/// The same rows through PostgreSQL's own COPY FROM STDIN into a table of the same shape.
fn copy_baseline(n: usize) -> f64 {
    let url = fresh_postgres("exportd_bench_copy");
    psql(
        &url,
        "CREATE TABLE customers (id text PRIMARY KEY, email text, country text, ltv double precision, vip boolean, signup timestamptz)",
    );
    let mut csv = String::with_capacity(n * 80);
    for i in 0..n {
        let (id, email, country, ltv, vip, signup) = customer(i);
        csv.push_str(&format!("{id},{email},{country},{ltv},{vip},{signup}\n"));
    }
    checkpoint_postgres();
    let started = Instant::now();
    let mut child = Command::new("psql")
        .args([url.as_str(), "-qc", "\\copy customers FROM STDIN WITH (FORMAT csv)"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(csv.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success());
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(psql(&url, "SELECT count(*) FROM customers").trim(), n.to_string());
    seconds
}

/// Evaluates a rule over every record (CreateSegment computes the first members) in a fresh
/// server process; returns (seconds, members, peak RSS MiB of that process).
async fn refresh_rule(server: &Server) -> (f64, i64, f64) {
    let mut catalog = server.catalog("bench").await;
    let started = Instant::now();
    let segment = catalog
        .create_segment(pb::CreateSegmentRequest {
            parent: "environments/bench".into(),
            segment_id: "valuable".into(),
            segment: Some(pb::Segment {
                display_name: "Valuable".into(),
                entity: "environments/bench/entities/customers".into(),
                definition: Some(pb::segment::Definition::Rule(
                    "ltv > 5000.0 && country in [\"ID\", \"SG\"]".into(),
                )),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    (
        started.elapsed().as_secs_f64(),
        segment.member_count,
        server.peak_rss_mib(),
    )
}

fn main() {
    let n: usize = std::env::var("BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let backends = std::env::var("BENCH_BACKENDS").unwrap_or_else(|_| "sqlite,postgres".into());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    println!("records: {n}, batch: {BATCH} records per message\n");
    println!(
        "{}",
        table_row(&[
            "what".into(),
            "backend".into(),
            "seconds".into(),
            "records/s".into(),
            "notes".into()
        ])
    );
    println!("|---|---|---|---|---|");
    // The baseline varies by a fifth between runs: its median of three is what ratios use.
    let mut copies: Vec<f64> = (0..3).map(|_| copy_baseline(n)).collect();
    copies.sort_by(f64::total_cmp);
    let copy = copies[1];
    println!(
        "{}",
        table_row(&[
            "COPY FROM STDIN (psql)".into(),
            "postgres".into(),
            format!("{copy:.2}"),
            format!("{:.0}", n as f64 / copy),
            format!("baseline: median of 3 runs ({:.2}–{:.2} s)", copies[0], copies[2]),
        ])
    );
    for backend in backends.split(',') {
        let server = Server::start(backend, &[]);
        server.create_environment("bench", "b2c");
        checkpoint_postgres();
        let cpu_before = server.cpu_seconds();
        let seconds = runtime.block_on(write_records(&server, n));
        let server_cpu = server.cpu_seconds() - cpu_before;
        let rss = server.peak_rss_mib();
        println!(
            "{}",
            table_row(&[
                "WriteRecords".into(),
                backend.into(),
                format!("{seconds:.2}"),
                format!("{:.0}", n as f64 / seconds),
                format!(
                    "{:.2}× COPY; exportd CPU {server_cpu:.1} s; peak RSS {rss:.0} MiB",
                    seconds / copy
                ),
            ])
        );
        // A fresh process, so that the peak RSS is the refresh's own.
        let (data_dir, url) = server.stop();
        let server = Server::start_on(data_dir, url, &[]);
        std::thread::sleep(Duration::from_millis(200));
        let (seconds, members, rss) = runtime.block_on(refresh_rule(&server));
        println!(
            "{}",
            table_row(&[
                "rule segment refresh".into(),
                backend.into(),
                format!("{seconds:.2}"),
                format!("{:.0}", n as f64 / seconds),
                format!("{members} members; server peak RSS {rss:.0} MiB"),
            ])
        );
        server.stop();
    }
}
