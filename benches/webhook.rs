//! Webhook target benchmark (issue 15): a DATA_OUT of N six-field records (default 1,000,000)
//! to a local receiver that answers every POST at once, `batch_size` 500, against the ideal of
//! the same batches: batch count × the median round trip of one batch ÷ concurrency (1: the
//! webhook sends one batch at a time, in sequence order). The round trip is measured in the
//! same run by POSTing the bodies exportd sent (kept by the receiver) to the same receiver with
//! the same HTTP client settings, one after another. The run is timed by the client, from
//! `RunExport` to the end of `WatchExportRun`, in a fresh server process, so that its peak RSS
//! (`VmHWM`) and CPU time are the run's own.
//!
//! Beside it, two references from the same run: the floor (the same export to local CSV files:
//! reading and encoding the records, no network), and a receiver that takes 5 ms to answer, as
//! a real endpoint does, where the round trips are the slow part.
//!
//! Run: `cargo bench --bench webhook` (BENCH_RECORDS, default 1000000; BENCH_BATCH, default 500;
//! BENCH_DELAYS_MS, default `0,5`, the receiver's answer delays; BENCH_SIGNED=1 signs every body
//! as a connection with a `signing_secret` would).

mod support;

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use exportd::pb;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use support::*;

/// Bodies the receiver keeps, to time the same requests again for the baseline.
const SAMPLE_BODIES: usize = 200;

/// Counts POSTs and body bytes, keeps the first bodies, and answers `200 {}` after its delay.
#[derive(Default)]
struct Receiver {
    /// How long the receiver takes to answer (0: at once).
    delay: std::time::Duration,
    posts: AtomicU64,
    bytes: AtomicU64,
    sample: Mutex<Vec<Bytes>>,
}

impl Receiver {
    async fn answer(self: Arc<Self>, request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
        let body = request
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        self.posts.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
        {
            let mut sample = self.sample.lock().unwrap();
            if sample.len() < SAMPLE_BODIES {
                sample.push(body);
            }
        }
        Ok(Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap())
    }

    /// Serves on a loopback port (on the runtime's threads, as a receiver process would on its
    /// own); returns the URL.
    async fn serve(self: &Arc<Self>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let receiver = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                let receiver = Arc::clone(&receiver);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |r| Arc::clone(&receiver).answer(r));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(socket), service)
                        .await;
                });
            }
        });
        format!("http://{addr}/hooks/exportd")
    }
}

/// The median of `rounds` sequential POSTs of the sampled bodies through exportd's own HTTP
/// client (same settings, kept-alive connection), in seconds.
async fn median_round_trip(url: &str, bodies: &[Bytes], rounds: usize) -> f64 {
    let client = exportd::connectors::http::client();
    let mut times = Vec::with_capacity(rounds);
    for i in 0..rounds {
        let body = bodies[i % bodies.len()].clone();
        let started = Instant::now();
        let answer = client
            .post(url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        answer.bytes().await.unwrap();
        times.push(started.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// One run in a fresh server process (so that its peak RSS and CPU time are its own):
/// (seconds, CPU seconds, peak RSS MiB) and the server, to go on with.
fn measure(runtime: &tokio::runtime::Runtime, server: Server, export: &str, n: usize) -> (Server, f64, f64, f64) {
    let (data_dir, database_url) = server.stop();
    let server = Server::start_on(data_dir, database_url, &[]);
    let cpu_before = server.cpu_seconds();
    let (seconds, run) = runtime.block_on(run_and_wait(&server, export));
    let cpu = server.cpu_seconds() - cpu_before;
    assert_eq!(run.state, pb::RunState::Succeeded as i32, "{run:?}");
    assert_eq!(run.records_exported as usize, n);
    let rss = server.peak_rss_mib();
    (server, seconds, cpu, rss)
}

fn main() {
    let n = env_number("BENCH_RECORDS", 1_000_000);
    let batch = env_number("BENCH_BATCH", 500);
    let signed = std::env::var("BENCH_SIGNED").is_ok_and(|v| v == "1");
    let delays: Vec<u64> = std::env::var("BENCH_DELAYS_MS")
        .unwrap_or_else(|_| "0,5".into())
        .split(',')
        .map(|d| d.trim().parse().expect("milliseconds"))
        .collect();
    let runtime = tokio::runtime::Runtime::new().unwrap();

    let mut server = Server::start("sqlite", &[]);
    server.create_environment("bench", "b2c");
    runtime.block_on(write_records(&server, n));
    println!(
        "{}",
        table_row(&[
            "records".into(),
            "receiver answers after ms".into(),
            "POSTs".into(),
            "MiB sent".into(),
            "median round trip ms".into(),
            "ideal s".into(),
            "exportd run s".into(),
            "ratio".into(),
            "exportd CPU µs/record".into(),
            "server peak RSS MiB".into(),
        ])
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");

    // The floor: the same records read and written as local CSV files (no network at all).
    let root = server.data_dir.path().join("exports/bench/floor");
    std::fs::create_dir_all(&root).unwrap();
    let root = std::fs::canonicalize(&root).unwrap();
    runtime.block_on(create_connection(
        &server,
        "floor",
        "local-files",
        &[("root", root.to_str().unwrap())],
        &[],
    ));
    runtime.block_on(create_data_out_export(&server, "to-floor", "floor", &[]));
    let (next, seconds, cpu, rss) = measure(&runtime, server, "to-floor", n);
    server = next;
    let dash = || "—".to_string();
    println!(
        "{}",
        table_row(&[
            n.to_string(),
            "local-files CSV (floor)".into(),
            dash(),
            dash(),
            dash(),
            dash(),
            format!("{seconds:.2}"),
            dash(),
            format!("{:.2}", cpu * 1e6 / n as f64),
            format!("{rss:.0}"),
        ])
    );

    for delay in delays {
        let receiver = Arc::new(Receiver {
            delay: std::time::Duration::from_millis(delay),
            ..Receiver::default()
        });
        let url = runtime.block_on(receiver.serve());
        let batch_size = batch.to_string();
        let config = [("url", url.as_str()), ("batch_size", batch_size.as_str())];
        let secrets: &[(&str, &str)] = if signed {
            &[("signing_secret", "bench-signing-secret")]
        } else {
            &[]
        };
        let (connection, export) = (format!("hook{delay}"), format!("to-hook{delay}"));
        runtime.block_on(create_connection(&server, &connection, "webhook", &config, secrets));
        runtime.block_on(create_data_out_export(&server, &export, &connection, &[]));
        let (next, seconds, cpu, rss) = measure(&runtime, server, &export, n);
        server = next;
        let posts = receiver.posts.load(Ordering::Relaxed);
        let mib = receiver.bytes.load(Ordering::Relaxed) as f64 / (1 << 20) as f64;
        let bodies = receiver.sample.lock().unwrap().clone();
        let rounds = if delay == 0 { 1000 } else { 200 };
        let round_trip = runtime.block_on(median_round_trip(&url, &bodies, rounds));
        let ideal = posts as f64 * round_trip;
        println!(
            "{}",
            table_row(&[
                n.to_string(),
                delay.to_string(),
                posts.to_string(),
                format!("{mib:.1}"),
                format!("{:.3}", round_trip * 1000.0),
                format!("{ideal:.2}"),
                format!("{seconds:.2}"),
                format!("**{:.2}×**", seconds / ideal),
                format!("{:.2}", cpu * 1e6 / n as f64),
                format!("{rss:.0}"),
            ])
        );
    }
    let _ = server.stop();
}
