//! Segment rules cannot freeze the server: ruinous rules are refused when saved, evaluation runs
//! off the threads that answer RPCs, and an evaluation over its time budget fails cleanly,
//! leaving nothing behind.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use exportd::auth::Role;
use exportd::pb;
use serde_json::json;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::common::{Catalog, Options, TestServer, bad_fields, expect_code, reason};

use crate::common::*;

/// A literal list of `n` numbers.
fn list(n: usize) -> String {
    let items: Vec<String> = (0..n).map(|i| i.to_string()).collect();
    format!("[{}]", items.join(","))
}

/// Allowed (two loops over 60 elements, a few thousand steps a record) and never true, so it
/// never stops early: slow over thousands of records in a debug build.
fn heavy_rule() -> String {
    let l = list(60);
    format!("{l}.exists(a, {l}.exists(b, a * b == -1 && ltv < 0.0))")
}

/// A server whose environment `acme` has `customers` with `records` records.
async fn server_with_records(budget_seconds: u64, records: usize) -> (TestServer, Catalog) {
    let t = TestServer::start_with(
        Options::default().var("EXPORTD_RULE_EVALUATION_BUDGET_SECONDS", budget_seconds.to_string()),
    )
    .await;
    let mut admin = t.catalog("acme", Role::Admin).await;
    admin
        .create_entity(customers_entity("acme", "customers", pb::EntityKind::Profile))
        .await
        .unwrap();
    let rows: Vec<_> = (0..records)
        .map(|i| json!({"id": format!("c{i:05}"), "ltv": i as f64, "country": "ID"}))
        .collect();
    write_all(&mut admin, vec![write(CUSTOMERS, rows, &[])]).await.unwrap();
    (t, admin)
}

async fn segment_exists(catalog: &mut Catalog, id: &str) -> bool {
    match catalog
        .get_segment(pb::GetSegmentRequest {
            name: format!("environments/acme/segments/{id}"),
        })
        .await
    {
        Ok(_) => true,
        Err(status) if status.code() == Code::NotFound => false,
        Err(status) => panic!("GetSegment: {status:?}"),
    }
}

#[tokio::test]
async fn a_rule_whose_loops_multiply_is_refused_naming_its_cost() {
    let (t, mut admin) = server_with_records(600, 10).await;
    let l = list(60);
    let rule = format!("{l}.exists(a, {l}.exists(b, {l}.exists(c, {l}.exists(d, ltv < 0.0))))");
    assert!(rule.len() < 1000, "the repro is a short rule");
    let status = expect_code(
        create_rule_segment(&mut admin, "acme", "ruinous", "customers", &rule)
            .await
            .map(tonic::Response::new),
        Code::InvalidArgument,
    );
    assert_eq!(bad_fields(&status), vec!["segment.rule".to_string()]);
    assert!(
        status.message().contains("evaluation steps per record") && status.message().contains("100,000"),
        "{}",
        status.message()
    );
    assert!(!segment_exists(&mut admin, "ruinous").await);

    // The same bound holds when a rule is changed.
    create_rule_segment(&mut admin, "acme", "fine", "customers", "ltv > 5.0")
        .await
        .unwrap();
    let status = expect_code(
        admin
            .update_segment(pb::UpdateSegmentRequest {
                segment: Some(pb::Segment {
                    name: "environments/acme/segments/fine".into(),
                    definition: Some(pb::segment::Definition::Rule(rule.clone())),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["rule".into()],
                }),
            })
            .await,
        Code::InvalidArgument,
    );
    assert!(status.message().contains("per record"), "{}", status.message());

    // Too many macros is refused too.
    let many = (0..9)
        .map(|i| format!("[{i}].exists(x, x == ltv)"))
        .collect::<Vec<_>>()
        .join(" || ");
    let status = expect_code(
        create_rule_segment(&mut admin, "acme", "many", "customers", &many)
            .await
            .map(tonic::Response::new),
        Code::InvalidArgument,
    );
    assert!(status.message().contains("9 macros"), "{}", status.message());
    t.stop().await;
}

/// Adds `n` records after the ones [`server_with_records`] wrote.
async fn grow(catalog: &mut Catalog, n: usize) {
    let rows: Vec<_> = (0..n)
        .map(|i| json!({"id": format!("g{i:05}"), "ltv": i as f64, "country": "SG"}))
        .collect();
    write_all(catalog, vec![write(CUSTOMERS, rows, &[])]).await.unwrap();
}

/// Asks for health every 50 ms from a thread and runtime of its own (a server frozen by
/// evaluation would freeze a probe on its own runtime too, and with it any timer) until
/// `stop`; gives the slowest answer and how many answers came.
fn probe_health(addr: std::net::SocketAddr, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<(Duration, usize)> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
                .unwrap();
            let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
            let (mut slowest, mut answers) = (Duration::ZERO, 0);
            while !stop.load(Ordering::Relaxed) {
                let asked = std::time::Instant::now();
                // A frozen server fails the test here instead of holding it forever.
                let reply = tokio::time::timeout(
                    Duration::from_secs(30),
                    health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }),
                )
                .await
                .expect("health answers within 30 s")
                .expect("health answers")
                .into_inner();
                assert_eq!(reply.status, ServingStatus::Serving as i32);
                slowest = slowest.max(asked.elapsed());
                answers += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (slowest, answers)
        })
    })
}

#[tokio::test]
async fn health_answers_while_a_heavy_refresh_runs_and_its_budget_fails_it_cleanly() {
    let (t, mut admin) = server_with_records(6, 5).await;
    // Quick while the entity is small; the refresh after it has grown is not.
    let segment = create_rule_segment(&mut admin, "acme", "heavy", "customers", &heavy_rule())
        .await
        .unwrap();
    assert_eq!(segment.member_count, 0);
    let cheap = create_rule_segment(&mut admin, "acme", "cheap", "customers", "ltv < 3.0")
        .await
        .unwrap();
    assert_eq!(cheap.member_count, 3);
    grow(&mut admin, 50_000).await;

    let refresh = admin
        .run_system_refresh(pb::RunSystemRefreshRequest {
            parent: "environments/acme".into(),
        })
        .await
        .unwrap()
        .into_inner();
    // While it evaluates, the server answers at once, every time it is asked. (Evaluated on
    // the runtime's threads, one batch held them until the budget ran out.)
    let stop = Arc::new(AtomicBool::new(false));
    let prober = probe_health(t.addr, stop.clone());
    let finished = tokio::time::timeout(
        Duration::from_secs(60),
        wait_for_system_refresh(&mut admin, &refresh.name),
    )
    .await
    .expect("GetSystemRefresh answers while the refresh runs");
    stop.store(true, Ordering::Relaxed);
    let (slowest, answers) = tokio::task::spawn_blocking(move || prober.join())
        .await
        .unwrap()
        .expect("the prober got every answer");
    // Generous for a server that answers in milliseconds; a frozen one answered after minutes.
    assert!(slowest < Duration::from_secs(2), "health took {slowest:?}");
    assert!(
        answers >= 10,
        "the server was probed while the refresh ran ({answers} answers)"
    );
    assert_eq!(finished.state, pb::SystemRefreshState::Failed as i32);
    let error = finished.error.expect("a failed refresh says why").message;
    assert!(error.contains("budget of 6 s"), "{error}");
    // Nothing waits on a refresh that failed, and the segment keeps its last members.
    for id in ["heavy", "cheap"] {
        let now = admin
            .get_segment(pb::GetSegmentRequest {
                name: format!("environments/acme/segments/{id}"),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(!now.refreshing, "{id} is still refreshing");
    }
    let entity = admin
        .get_entity(pb::GetEntityRequest { name: CUSTOMERS.into() })
        .await
        .unwrap()
        .into_inner();
    assert!(!entity.refreshing);
    t.stop().await;
}

#[tokio::test]
async fn a_create_over_budget_or_abandoned_stores_nothing() {
    let (t, mut admin) = server_with_records(2, 50_000).await;
    let status = expect_code(
        create_rule_segment(&mut admin, "acme", "heavy", "customers", &heavy_rule())
            .await
            .map(tonic::Response::new),
        Code::DeadlineExceeded,
    );
    assert_eq!(reason(&status), "RULE_EVALUATION_BUDGET_EXCEEDED");
    assert!(!segment_exists(&mut admin, "heavy").await);
    t.stop().await;

    let (t, mut admin) = server_with_records(600, 50_000).await;
    let mut request = tonic::Request::new(pb::CreateSegmentRequest {
        parent: "environments/acme".into(),
        segment_id: "heavy".into(),
        segment: Some(pb::Segment {
            display_name: "Heavy".into(),
            entity: CUSTOMERS.into(),
            definition: Some(pb::segment::Definition::Rule(heavy_rule())),
            ..Default::default()
        }),
    });
    request.set_timeout(Duration::from_millis(500));
    let abandoned = admin.create_segment(request).await;
    assert!(abandoned.is_err(), "the client gave up first");
    assert!(!segment_exists(&mut admin, "heavy").await);
    // The abandoned evaluation holds nothing: the same id is free, and a cheap rule over the
    // same records is evaluated at once.
    let created = create_rule_segment(&mut admin, "acme", "heavy", "customers", "ltv < 3.0")
        .await
        .unwrap();
    assert_eq!(created.member_count, 3);
    t.stop().await;
}

#[tokio::test]
async fn shutdown_stops_an_evaluation_within_the_grace() {
    let (t, mut admin) = server_with_records(600, 5).await;
    create_rule_segment(&mut admin, "acme", "heavy", "customers", &heavy_rule())
        .await
        .unwrap();
    grow(&mut admin, 50_000).await;
    let refresh = admin
        .run_system_refresh(pb::RunSystemRefreshRequest {
            parent: "environments/acme".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(refresh.state, pb::SystemRefreshState::Running as i32);
    // The test server's grace is 5 s; the evaluation alone would take minutes.
    tokio::time::timeout(Duration::from_secs(15), t.stop())
        .await
        .expect("shutdown finished within the grace");
}
