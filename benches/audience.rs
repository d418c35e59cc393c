//! Audience targets benchmark (issue 16): one segment of N members (default 100,000) exported
//! (FULL) to each of the four vendors' local doubles — the same doubles the gRPC tests use,
//! which check every request's shape and answer at once — against the ideal of the same
//! requests: batch count × the median round trip of one batch ÷ the connector's concurrency.
//!
//! The round trip is measured in the same run: requests exportd sent (kept by the double) are
//! sent again, one after another, from a bare client (exportd's HTTP client settings, the
//! vendor's auth headers) to the same double, so that the double's own parsing and checking
//! of a full batch is in the round trip as it is in the run. Each run is timed by the client,
//! from `RunExport` to the end of `WatchExportRun`, in a fresh server process, so that its
//! peak RSS (`VmHWM`) and CPU time (identifier normalisation and hashing included) are the
//! run's own. Beside them, the floor: the same segment to local CSV files (reading the
//! members and writing them, no network, no hashing).
//!
//! Besides doubles that answer at once (the case), the same runs against doubles that
//! take a fixed time to answer, as a real vendor's round trip does, where the round trips are
//! the work.
//!
//! Run: `cargo bench --bench audience` (BENCH_MEMBERS, default 100000; BENCH_ROUNDS, default
//! 30, the baseline's round trips per vendor; BENCH_DELAYS_MS, default `0,20`, how long the
//! doubles take to answer; BENCH_VENDORS, default all four, comma-separated type ids).

mod support;

// The vendor doubles of the gRPC tests, compiled into the bench as they are.
#[allow(dead_code)]
#[path = "../tests/it/common/google_double.rs"]
mod google_double;
#[allow(dead_code)]
#[path = "../tests/it/common/json_reply.rs"]
mod json_reply;
#[allow(dead_code)]
#[path = "../tests/it/common/linkedin_double.rs"]
mod linkedin_double;
#[allow(dead_code)]
#[path = "../tests/it/common/mailchimp_double.rs"]
mod mailchimp_double;
#[allow(dead_code)]
#[path = "../tests/it/common/meta_double.rs"]
mod meta_double;

use std::time::Instant;

use exportd::connectors::{facebook_ads, google_ads, linkedin_ads, mailchimp};
use exportd::pb;
use google_double::GoogleDouble;
use linkedin_double::LinkedInDouble;
use mailchimp_double::MailchimpDouble;
use meta_double::MetaDouble;
use serde_json::Value;
use support::*;

const MAILCHIMP_KEY: &str = "0123456789abcdef0123456789abcdef-us21";
const META_TOKEN: &str = "EAAB-bench-meta-token";
const LINKEDIN_TOKEN: &str = "AQV-bench-linkedin-token";
const SEGMENT: &str = "environments/bench/segments/everyone";

/// One request as the bare client sends it again.
struct Replay {
    method: reqwest::Method,
    url: String,
    headers: Vec<(String, String)>,
    body: Value,
}

/// A started double: where the connection points, and the member requests it got.
enum Double {
    Mailchimp(MailchimpDouble),
    Meta(MetaDouble),
    Google(GoogleDouble),
    LinkedIn(LinkedInDouble),
}

fn origin(url: &str) -> String {
    url::Url::parse(url).unwrap().origin().ascii_serialization()
}

impl Double {
    /// A double of `vendor` whose answers take `delay`.
    async fn start(vendor: &str, delay: std::time::Duration) -> Double {
        match vendor {
            "mailchimp" => {
                let double = MailchimpDouble::start(MAILCHIMP_KEY).await;
                double.answer_after(delay);
                Double::Mailchimp(double)
            }
            "facebook-ads" => {
                let double = MetaDouble::start(META_TOKEN).await;
                double.answer_after(delay);
                Double::Meta(double)
            }
            "google-ads" => {
                let double = GoogleDouble::start().await;
                double.answer_after(delay);
                Double::Google(double)
            }
            _ => {
                let double = LinkedInDouble::start(LINKEDIN_TOKEN).await;
                double.answer_after(delay);
                Double::LinkedIn(double)
            }
        }
    }

    /// The connection's config and secrets, and the export's settings and mappings.
    #[allow(clippy::type_complexity)]
    fn connection(
        &self,
    ) -> (
        Vec<(&'static str, String)>,
        Vec<(&'static str, &'static str)>,
        Vec<(&'static str, &'static str)>,
    ) {
        match self {
            Double::Mailchimp(d) => (
                vec![
                    ("server_prefix", "us21".into()),
                    ("audience_id", mailchimp_double::LIST.into()),
                    ("base_url", d.url.clone()),
                ],
                vec![("api_key", MAILCHIMP_KEY)],
                vec![],
            ),
            Double::Meta(d) => (
                vec![
                    ("ad_account_id", meta_double::AD_ACCOUNT.into()),
                    ("base_url", d.url.clone()),
                ],
                vec![("access_token", META_TOKEN)],
                vec![],
            ),
            Double::Google(d) => (
                vec![
                    ("customer_id", google_double::CUSTOMER.into()),
                    ("base_url", d.url.clone()),
                    ("token_url", d.token_url.clone()),
                ],
                vec![
                    ("oauth_refresh_token", google_double::REFRESH_TOKEN),
                    ("oauth_client_id", google_double::CLIENT_ID),
                    ("oauth_client_secret", google_double::CLIENT_SECRET),
                ],
                vec![("audience_id", google_double::USER_LIST)],
            ),
            Double::LinkedIn(d) => (
                vec![
                    ("ad_account_id", linkedin_double::ACCOUNT.into()),
                    ("base_url", d.url.clone()),
                ],
                vec![("access_token", LINKEDIN_TOKEN)],
                vec![],
            ),
        }
    }

    /// Requests in flight the connector allows.
    fn concurrency(&self) -> usize {
        match self {
            Double::Mailchimp(_) => mailchimp::CONNECTIONS,
            Double::Meta(_) => facebook_ads::CONCURRENCY,
            Double::Google(_) => google_ads::CONCURRENCY,
            Double::LinkedIn(_) => linkedin_ads::CONCURRENCY,
        }
    }

    /// The member-carrying requests the double got, as the bare client sends them again.
    fn member_requests(&self) -> Vec<Replay> {
        let json = ("content-type".to_string(), "application/json".to_string());
        match self {
            Double::Mailchimp(d) => {
                let basic = base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    format!("exportd:{MAILCHIMP_KEY}"),
                );
                d.subscribes()
                    .into_iter()
                    .map(|c| Replay {
                        method: reqwest::Method::POST,
                        url: format!("{}{}", origin(&d.url), c.path),
                        headers: vec![json.clone(), ("authorization".into(), format!("Basic {basic}"))],
                        body: c.body,
                    })
                    .collect()
            }
            // The access token is in the body, as exportd sent it.
            Double::Meta(d) => d
                .user_calls()
                .into_iter()
                .map(|c| Replay {
                    method: c.method.parse().unwrap(),
                    url: format!("{}{}", origin(&d.url), c.path),
                    headers: vec![json.clone()],
                    body: c.body,
                })
                .collect(),
            Double::Google(d) => d
                .calls()
                .into_iter()
                .filter(|c| c.path.contains("audienceMembers"))
                .map(|c| Replay {
                    method: reqwest::Method::POST,
                    url: format!("{}{}", origin(&d.url), c.path),
                    headers: vec![json.clone(), ("authorization".into(), c.authorization)],
                    body: c.body,
                })
                .collect(),
            Double::LinkedIn(d) => d
                .calls()
                .into_iter()
                .filter(|c| c.path.ends_with("/users"))
                .map(|c| Replay {
                    method: reqwest::Method::POST,
                    url: format!("{}{}", origin(&d.url), c.path),
                    headers: vec![
                        json.clone(),
                        ("authorization".into(), format!("Bearer {LINKEDIN_TOKEN}")),
                        ("linkedin-version".into(), linkedin_ads::DEFAULT_API_VERSION.into()),
                        ("x-restli-protocol-version".into(), "2.0.0".into()),
                        ("x-restli-method".into(), "BATCH_CREATE".into()),
                    ],
                    body: c.body,
                })
                .collect(),
        }
    }
}

/// The median of `rounds` sequential sends of the replayed requests through exportd's own HTTP
/// client (same settings, kept-alive connection), in seconds. Meta refuses a `batch_seq` seen
/// before in a session, so each replay of a Meta request gets a session of its own.
async fn median_round_trip(requests: &[Replay], rounds: usize) -> f64 {
    let client = exportd::connectors::http::client();
    let mut times = Vec::with_capacity(rounds);
    for i in 0..rounds {
        let request = &requests[i % requests.len()];
        let mut body = request.body.clone();
        if let Some(session) = body.get_mut("session") {
            session["session_id"] = Value::from(1_000_000 + i as u64);
        }
        let body = bytes::Bytes::from(serde_json::to_vec(&body).unwrap());
        let mut builder = client.request(request.method.clone(), &request.url).body(body);
        for (name, value) in &request.headers {
            builder = builder.header(name, value);
        }
        let started = Instant::now();
        let answer = builder.send().await.unwrap();
        let status = answer.status();
        let text = answer.bytes().await.unwrap();
        times.push(started.elapsed().as_secs_f64());
        assert!(
            status.is_success(),
            "the replay was answered {status}: {}",
            String::from_utf8_lossy(&text)
        );
    }
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// One run in a fresh server process: (seconds, CPU seconds, peak RSS MiB) and the server.
fn measure(runtime: &tokio::runtime::Runtime, server: Server, export: &str, n: usize) -> (Server, f64, f64, f64) {
    let (data_dir, database_url) = server.stop();
    let server = Server::start_on(data_dir, database_url, &[]);
    let cpu_before = server.cpu_seconds();
    let (seconds, run) = runtime.block_on(run_and_wait(&server, export));
    let cpu = server.cpu_seconds() - cpu_before;
    assert_eq!(run.state, pb::RunState::Succeeded as i32, "{run:?}");
    assert_eq!(run.records_exported as usize, n, "{run:?}");
    let rss = server.peak_rss_mib();
    (server, seconds, cpu, rss)
}

/// A FULL segment export of the bench segment over `connection`.
async fn create_segment_export(
    server: &Server,
    id: &str,
    connection: &str,
    settings: &[(&str, &str)],
    mappings: &[(&str, &str)],
) {
    exports_client(server)
        .await
        .create_export(pb::CreateExportRequest {
            parent: "environments/bench".into(),
            export_id: id.into(),
            export: Some(pb::Export {
                display_name: id.into(),
                connection: format!("environments/bench/connections/{connection}"),
                kind: pb::ExportKind::Segment as i32,
                segments: vec![SEGMENT.into()],
                settings: string_map(settings),
                field_mappings: mappings
                    .iter()
                    .map(|(s, t)| pb::FieldMapping {
                        source_field: s.to_string(),
                        target_field: t.to_string(),
                    })
                    .collect(),
                sync_mode: pb::SyncMode::Full as i32,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
}

/// The bench segment: every record written.
async fn create_segment(server: &Server, n: usize) {
    let mut catalog = server.catalog("bench").await;
    catalog
        .create_segment(pb::CreateSegmentRequest {
            parent: "environments/bench".into(),
            segment_id: "everyone".into(),
            segment: Some(pb::Segment {
                display_name: "Everyone".into(),
                entity: "environments/bench/entities/customers".into(),
                definition: Some(pb::segment::Definition::Members(pb::PushedMembers {})),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let messages: Vec<pb::SetSegmentMembersRequest> = (0..n)
        .step_by(BATCH)
        .map(|start| pb::SetSegmentMembersRequest {
            segment: SEGMENT.into(),
            keys: (start..(start + BATCH).min(n)).map(|i| customer(i).0).collect(),
        })
        .collect();
    catalog.set_segment_members(tokio_stream::iter(messages)).await.unwrap();
}

fn main() {
    let n = env_number("BENCH_MEMBERS", 100_000);
    let rounds = env_number("BENCH_ROUNDS", 30);
    let delays: Vec<u64> = std::env::var("BENCH_DELAYS_MS")
        .unwrap_or_else(|_| "0,20".into())
        .split(',')
        .map(|d| d.trim().parse().expect("milliseconds"))
        .collect();
    let vendors =
        std::env::var("BENCH_VENDORS").unwrap_or_else(|_| "mailchimp,facebook-ads,google-ads,linkedin-ads".into());
    let runtime = tokio::runtime::Runtime::new().unwrap();

    let mut server = Server::start("sqlite", &[]);
    server.create_environment("bench", "b2c");
    runtime.block_on(write_records(&server, n));
    runtime.block_on(create_segment(&server, n));
    println!(
        "{}",
        table_row(&[
            "target".into(),
            "double answers after ms".into(),
            "members".into(),
            "requests".into(),
            "concurrency".into(),
            "median round trip ms".into(),
            "ideal s".into(),
            "exportd run s".into(),
            "ratio".into(),
            "ideal in whole rounds s".into(),
            "ratio to whole rounds".into(),
            "members/s".into(),
            "exportd CPU µs/member".into(),
            "server peak RSS MiB".into(),
        ])
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let dash = || "—".to_string();

    // The floor: the same members read and written as local CSV files.
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
    let mappings = [("email", "email"), ("country", "country")];
    runtime.block_on(create_segment_export(&server, "to-floor", "floor", &[], &mappings));
    let (next, seconds, cpu, rss) = measure(&runtime, server, "to-floor", n);
    server = next;
    println!(
        "{}",
        table_row(&[
            "local-files CSV (floor)".into(),
            dash(),
            n.to_string(),
            dash(),
            dash(),
            dash(),
            dash(),
            format!("{seconds:.2}"),
            dash(),
            dash(),
            dash(),
            format!("{:.0}", n as f64 / seconds),
            format!("{:.2}", cpu * 1e6 / n as f64),
            format!("{rss:.0}"),
        ])
    );

    for delay in delays {
        for vendor in vendors.split(',').map(str::trim) {
            let double = runtime.block_on(Double::start(vendor, std::time::Duration::from_millis(delay)));
            let (config, secrets, settings) = double.connection();
            let config: Vec<(&str, &str)> = config.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let connection = format!("{}{delay}", vendor.replace('-', ""));
            runtime.block_on(create_connection(&server, &connection, vendor, &config, &secrets));
            let export = format!("to-{connection}");
            runtime.block_on(create_segment_export(
                &server,
                &export,
                &connection,
                &settings,
                &mappings,
            ));
            let (next, seconds, cpu, rss) = measure(&runtime, server, &export, n);
            server = next;
            let requests = double.member_requests();
            let round_trip = runtime.block_on(median_round_trip(&requests, rounds));
            let concurrency = double.concurrency();
            // The ideal, and the one of whole rounds of `concurrency` requests (a
            // request cannot take a fraction of a round trip).
            let ideal = requests.len() as f64 * round_trip / concurrency as f64;
            let rounds_ideal = requests.len().div_ceil(concurrency) as f64 * round_trip;
            println!(
                "{}",
                table_row(&[
                    vendor.into(),
                    delay.to_string(),
                    n.to_string(),
                    requests.len().to_string(),
                    concurrency.to_string(),
                    format!("{:.2}", round_trip * 1000.0),
                    format!("{ideal:.2}"),
                    format!("{seconds:.2}"),
                    format!("**{:.2}×**", seconds / ideal),
                    format!("{rounds_ideal:.2}"),
                    format!("{:.2}×", seconds / rounds_ideal),
                    format!("{:.0}", n as f64 / seconds),
                    format!("{:.2}", cpu * 1e6 / n as f64),
                    format!("{rss:.0}"),
                ])
            );
        }
    }
    let _ = server.stop();
}
