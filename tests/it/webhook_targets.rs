//! The `webhook` target through the gRPC API, against a receiver on loopback that verifies
//! signatures and answers on cue (CONNECTORS.md "Wire details": `webhook`; PRODUCT.md §12).

use exportd::auth::Role;
use exportd::pb;
use serde_json::json;
use tonic::Code;

use crate::common::webhook_receiver::{Cue, WebhookReceiver};
use crate::common::*;

const SECRET: &str = "whsec-test-signing-secret";

fn webhook(id: &str, url: &str, batch_size: Option<&str>, secret: Option<&str>) -> pb::CreateConnectionRequest {
    let mut config = vec![("url", url)];
    if let Some(size) = batch_size {
        config.push(("batch_size", size));
    }
    let secrets: Vec<(&str, &str)> = secret.map(|s| ("signing_secret", s)).into_iter().collect();
    connection("acme", id, "Hook", "webhook", &config, &secrets, true)
}

/// acme (ten customers, segment `vip`) and a webhook connection `hook` to `receiver`.
async fn server_with_hook(receiver: &WebhookReceiver, batch_size: Option<&str>) -> TestServer {
    let t = setup(Options::default()).await;
    t.connections("acme", Role::Admin)
        .await
        .create_connection(webhook("hook", &receiver.url, batch_size, Some(SECRET)))
        .await
        .unwrap();
    t
}

async fn run_to_end(exports: &mut Exports, export: &str) -> pb::ExportRun {
    let run = run_export(exports, export).await;
    wait_for_end(exports, &run.name).await
}

fn record_ids(post: &crate::common::webhook_receiver::Received) -> Vec<String> {
    post.body["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

fn warning_codes(run: &pb::ExportRun) -> Vec<&str> {
    run.warnings.iter().map(|w| w.code.as_str()).collect()
}

#[tokio::test]
async fn batches_have_the_documented_body_headers_and_sizes_and_are_signed() {
    let receiver = WebhookReceiver::start(Some(SECRET)).await;
    let t = server_with_hook(&receiver, Some("4")).await;
    let mut exports = t.exports("acme", Role::Admin).await;
    create_export(&mut exports, data_out("acme", "push", "Push", "hook", &[CUSTOMERS])).await;
    let export = export_name("acme", "push");
    let run = run_to_end(&mut exports, &export).await;
    assert_eq!(run_state(&run), pb::RunState::Succeeded, "{:?}", run.error);
    assert_eq!((run.records_exported, run.records_rejected), (10, 0));
    assert!(!warning_codes(&run).contains(&"RECORDS_REJECTED"));
    let finalize = run.tasks.iter().find(|t| t.name == "finalize").unwrap();
    assert_eq!(finalize.message, "delivered 3 batches to the webhook");

    let posts = receiver.posts();
    assert_eq!(
        run.bytes_written as usize,
        posts.iter().map(|p| p.raw.len()).sum::<usize>(),
        "bytes_written counts the bodies delivered"
    );
    // 10 records in batches of at most 4.
    assert_eq!(posts.iter().map(|p| record_ids(p).len()).collect::<Vec<_>>(), [4, 4, 2]);
    let mut ids: Vec<String> = posts.iter().flat_map(record_ids).collect();
    ids.sort();
    assert_eq!(ids, (0..10).map(|i| format!("c{i:02}")).collect::<Vec<_>>());
    let run_id = run.name.rsplit('/').next().unwrap();
    for (i, post) in posts.iter().enumerate() {
        let sequence = i as u64 + 1;
        assert!(post.signature_ok, "the receiver verifies the HMAC of batch {sequence}");
        assert!(post.header("x-exportd-signature").starts_with("sha256="));
        assert_eq!(post.header("content-type"), "application/json");
        assert!(post.header("user-agent").starts_with("exportd/"), "{:?}", post.headers);
        assert_eq!(
            post.header("idempotency-key"),
            format!("{run_id}.1.customers.{sequence}")
        );
        let body = post.body.as_object().unwrap();
        let mut keys: Vec<&str> = body.keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(
            keys,
            ["export", "last", "records", "removed", "run", "sequence", "source"]
        );
        assert_eq!(body["export"], json!(export));
        assert_eq!(body["run"], json!(run.name));
        assert_eq!(body["source"], json!(CUSTOMERS));
        assert_eq!(body["sequence"], json!(sequence));
        assert_eq!(body["last"], json!(sequence == 3));
        assert_eq!(body["removed"], json!([]));
    }
    // Records carry the entity's fields with their JSON types, and nothing else.
    let c02 = posts
        .iter()
        .flat_map(|p| p.body["records"].as_array().unwrap().clone())
        .find(|r| r["id"] == "c02")
        .unwrap();
    assert_eq!(
        c02,
        json!({"id": "c02", "email": "user2@example.com", "country": "FR", "ltv": 200.0, "vip": true, "tags": ["new"]})
    );
    t.stop().await;
}

#[tokio::test]
async fn a_batch_answered_503_with_retry_after_is_sent_again_under_the_same_idempotency_key() {
    let receiver = WebhookReceiver::start(Some(SECRET)).await;
    receiver.cue([Cue::status(200, "{}"), Cue::unavailable("1")]);
    let t = server_with_hook(&receiver, Some("4")).await;
    let mut exports = t.exports("acme", Role::Admin).await;
    create_export(&mut exports, data_out("acme", "push", "Push", "hook", &[CUSTOMERS])).await;
    let run = run_to_end(&mut exports, &export_name("acme", "push")).await;
    assert_eq!(run_state(&run), pb::RunState::Succeeded, "{:?}", run.error);
    assert_eq!(run.records_exported, 10);

    let posts = receiver.posts();
    assert_eq!(posts.len(), 4, "three batches, the second twice");
    let keys: Vec<&str> = posts.iter().map(|p| p.header("idempotency-key")).collect();
    assert_eq!(keys[1], keys[2], "the retry carries the same Idempotency-Key");
    assert_eq!(posts[1].raw, posts[2].raw, "and the same body");
    assert_ne!(keys[0], keys[1]);
    assert_ne!(keys[2], keys[3]);
    assert!(posts.iter().all(|p| p.signature_ok));
    t.stop().await;
}

#[tokio::test]
async fn a_batch_answered_422_is_rejected_and_the_rest_delivered() {
    let receiver = WebhookReceiver::start(Some(SECRET)).await;
    receiver.cue([
        Cue::status(200, "{}"),
        Cue::status(422, r#"{"error": "schema mismatch"}"#),
    ]);
    let t = server_with_hook(&receiver, Some("4")).await;
    let mut exports = t.exports("acme", Role::Admin).await;
    create_export(&mut exports, data_out("acme", "push", "Push", "hook", &[CUSTOMERS])).await;
    let run = run_to_end(&mut exports, &export_name("acme", "push")).await;
    assert_eq!(run_state(&run), pb::RunState::Succeeded, "{:?}", run.error);
    assert_eq!((run.records_exported, run.records_rejected), (6, 4));
    let warning = run
        .warnings
        .iter()
        .find(|w| w.code == "RECORDS_REJECTED")
        .expect("warned");
    assert!(warning.message.contains('4'), "{}", warning.message);
    assert_eq!(receiver.posts().len(), 3, "a 4xx is not retried");
    t.stop().await;
}

#[tokio::test]
async fn a_rejected_list_in_a_2xx_answer_rejects_those_records_only() {
    let receiver = WebhookReceiver::start(Some(SECRET)).await;
    receiver.refuse("c01", "email bounced", Some("BOUNCED"));
    receiver.refuse("c07", "unknown customer", None);
    let t = server_with_hook(&receiver, None).await;
    let mut exports = t.exports("acme", Role::Admin).await;
    create_export(&mut exports, data_out("acme", "push", "Push", "hook", &[CUSTOMERS])).await;
    let run = run_to_end(&mut exports, &export_name("acme", "push")).await;
    assert_eq!(run_state(&run), pb::RunState::Succeeded, "{:?}", run.error);
    assert_eq!((run.records_exported, run.records_rejected), (8, 2));
    assert!(warning_codes(&run).contains(&"RECORDS_REJECTED"));
    // The default batch size (500) takes all ten records in one POST.
    let posts = receiver.posts();
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0].body["last"], json!(true));
    t.stop().await;
}

#[tokio::test]
async fn a_run_whose_every_record_is_rejected_fails() {
    let receiver = WebhookReceiver::start(Some(SECRET)).await;
    receiver.always(Cue::status(400, "no thanks"));
    let t = server_with_hook(&receiver, Some("3")).await;
    let mut exports = t.exports("acme", Role::Admin).await;
    create_export(&mut exports, data_out("acme", "push", "Push", "hook", &[CUSTOMERS])).await;
    let run = run_to_end(&mut exports, &export_name("acme", "push")).await;
    assert_eq!(run_state(&run), pb::RunState::Failed);
    assert_eq!((run.records_exported, run.records_rejected), (0, 10));
    let error = run.error.as_ref().unwrap();
    assert_eq!(run_error_reason(error), "ALL_RECORDS_REJECTED");
    assert!(error.message.contains("10"), "{}", error.message);
    t.stop().await;
}

#[tokio::test]
async fn a_wrong_signing_secret_is_refused_by_the_receiver() {
    // The receiver answers 401 to a signature it cannot verify: every batch is rejected.
    let receiver = WebhookReceiver::start(Some("the receiver's own secret")).await;
    let t = server_with_hook(&receiver, None).await;
    let mut exports = t.exports("acme", Role::Admin).await;
    create_export(&mut exports, data_out("acme", "push", "Push", "hook", &[CUSTOMERS])).await;
    let run = run_to_end(&mut exports, &export_name("acme", "push")).await;
    assert_eq!(run_state(&run), pb::RunState::Failed);
    assert_eq!(run.records_rejected, 10);
    assert!(receiver.posts().iter().all(|p| !p.signature_ok));
    t.stop().await;
}

#[tokio::test]
async fn incremental_deletions_are_sent_only_as_removed_keys() {
    let receiver = WebhookReceiver::start(Some(SECRET)).await;
    let t = server_with_hook(&receiver, None).await;
    let mut exports = t.exports("acme", Role::Admin).await;
    let mut request = data_out("acme", "changes", "Changes", "hook", &[CUSTOMERS]);
    request.export.as_mut().unwrap().sync_mode = pb::SyncMode::Incremental as i32;
    create_export(&mut exports, request).await;
    let export = export_name("acme", "changes");
    let first = run_to_end(&mut exports, &export).await;
    assert_eq!(run_state(&first), pb::RunState::Succeeded, "{:?}", first.error);
    assert_eq!(first.records_exported, 10);
    receiver.clear();

    let mut catalog = t.catalog("acme", Role::Admin).await;
    let mut changed = ten_customers()[4].clone();
    changed["country"] = json!("DE");
    write_all(&mut catalog, vec![write(CUSTOMERS, vec![changed], &["c05"])])
        .await
        .unwrap();
    let second = run_to_end(&mut exports, &export).await;
    assert_eq!(run_state(&second), pb::RunState::Succeeded, "{:?}", second.error);
    let posts = receiver.posts();
    assert_eq!(posts.len(), 1);
    let body = &posts[0].body;
    assert_eq!(record_ids(&posts[0]), ["c04"]);
    assert_eq!(body["records"][0]["country"], json!("DE"));
    assert!(body["records"][0].get("_deleted").is_none(), "{body}");
    assert_eq!(body["removed"], json!(["c05"]));
    t.stop().await;
}

#[tokio::test]
async fn test_connection_sends_options_or_else_a_signed_ping() {
    let receiver = WebhookReceiver::start(Some(SECRET)).await;
    let t = server_with_hook(&receiver, None).await;
    let mut connections = t.connections("acme", Role::Admin).await;
    let name = conn_name("acme", "hook");
    let test = |name: String| pb::TestConnectionRequest { name };
    let report = connections
        .test_connection(test(name.clone()))
        .await
        .unwrap()
        .into_inner();
    assert!(report.ok, "{report:?}");
    assert!(report.checks[0].message.contains("204"), "{report:?}");
    assert_eq!(receiver.received().last().unwrap().method, "OPTIONS");

    receiver.refuse_options();
    receiver.clear();
    let report = connections
        .test_connection(test(name.clone()))
        .await
        .unwrap()
        .into_inner();
    assert!(report.ok, "{report:?}");
    let received = receiver.received();
    assert_eq!(
        received.iter().map(|r| r.method.as_str()).collect::<Vec<_>>(),
        ["OPTIONS", "POST"]
    );
    assert_eq!(received[1].body, json!({"ping": true}));
    assert!(received[1].signature_ok);

    // Nothing listening: the report says which step failed.
    connections
        .create_connection(webhook("gone", "http://127.0.0.1:9/hook", None, None))
        .await
        .unwrap();
    let report = connections
        .test_connection(test(conn_name("acme", "gone")))
        .await
        .unwrap()
        .into_inner();
    assert!(!report.ok);
    assert_eq!(report.checks[0].name, "tcp_connect", "{report:?}");
    t.stop().await;
}

#[tokio::test]
async fn bad_webhook_settings_are_invalid_argument_naming_the_key_and_nothing_is_stored() {
    let t = TestServer::start().await;
    let mut connections = t.connections("acme", Role::Admin).await;
    let cases = [
        ("ftp://example.com/hook", None, "connection.config.url"),
        ("not a url", None, "connection.config.url"),
        ("https://example.com/hook", Some("0"), "connection.config.batch_size"),
        (
            "https://example.com/hook",
            Some("10001"),
            "connection.config.batch_size",
        ),
        ("https://example.com/hook", Some("many"), "connection.config.batch_size"),
    ];
    for (i, (url, size, field)) in cases.iter().enumerate() {
        let status = expect_code(
            connections
                .create_connection(webhook(&format!("bad{i}"), url, *size, None))
                .await,
            Code::InvalidArgument,
        );
        assert_eq!(bad_fields(&status), [field.to_string()], "{url} {size:?}");
    }
    let listed = connections
        .list_connections(pb::ListConnectionsRequest {
            parent: ACME.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        listed.connections.iter().all(|c| !c.name.contains("/bad")),
        "{listed:?}"
    );

    // UpdateConnection checks the same way and keeps what was stored.
    connections
        .create_connection(webhook("ok", "https://example.com/hook", Some("10000"), None))
        .await
        .unwrap();
    let mut update = pb::Connection {
        name: conn_name("acme", "ok"),
        ..Default::default()
    };
    update.config = pairs(&[("url", "https://example.com/hook"), ("batch_size", "0")]);
    let status = expect_code(
        connections
            .update_connection(pb::UpdateConnectionRequest {
                connection: Some(update),
                update_mask: mask(&["config"]),
            })
            .await,
        Code::InvalidArgument,
    );
    assert_eq!(bad_fields(&status), ["connection.config.batch_size"]);
    let stored = connections
        .get_connection(pb::GetConnectionRequest {
            name: conn_name("acme", "ok"),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stored.config.get("batch_size").map(String::as_str), Some("10000"));
    t.stop().await;
}

async fn list_rejected(exports: &mut Exports, parent: &str, filter: &str) -> Vec<pb::RejectedRecord> {
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = exports
            .list_rejected_records(pb::ListRejectedRecordsRequest {
                parent: parent.into(),
                page_size: 1,
                page_token: page_token.clone(),
                filter: filter.into(),
            })
            .await
            .unwrap()
            .into_inner();
        all.extend(page.rejected_records);
        if page.next_page_token.is_empty() {
            assert_eq!(page.total_size as usize, all.len());
            return all;
        }
        page_token = page.next_page_token;
    }
}

fn keys(rejects: &[pb::RejectedRecord]) -> Vec<&str> {
    rejects.iter().map(|r| r.key.as_str()).collect()
}

#[tokio::test]
async fn rejects_are_listed_by_run_and_outstanding_and_sent_again_by_the_next_run() {
    let receiver = WebhookReceiver::start(Some(SECRET)).await;
    receiver.refuse("c01", "email bounced", Some("BOUNCED"));
    receiver.refuse("c07", "unknown customer", None);
    let t = server_with_hook(&receiver, None).await;
    let mut exports = t.exports("acme", Role::Admin).await;
    create_export(&mut exports, data_out("acme", "push", "Push", "hook", &[CUSTOMERS])).await;
    let export = export_name("acme", "push");
    let first = run_to_end(&mut exports, &export).await;
    assert_eq!((first.records_rejected, first.records_retried), (2, 0));

    // One page at a time, in key order; the run's rejects are the export's outstanding ones.
    let of_run = list_rejected(&mut exports, &first.name, "").await;
    assert_eq!(keys(&of_run), ["c01", "c07"]);
    assert_eq!(of_run, list_rejected(&mut exports, &export, "").await);
    let c01 = &of_run[0];
    assert_eq!(c01.name, format!("{export}/rejectedRecords/c01"));
    assert_eq!((c01.source.as_str(), c01.code.as_str()), (CUSTOMERS, "BOUNCED"));
    assert_eq!(c01.reason, "email bounced");
    assert_eq!(c01.run, first.name);
    assert_eq!(c01.attempts, 1);
    assert_eq!(of_run[1].code, "REJECTED", "a rejected entry without a code");
    assert!(c01.first_reject_time.is_some() && c01.last_reject_time == c01.first_reject_time);
    assert_eq!(
        keys(&list_rejected(&mut exports, &export, "code = \"BOUNCED\"").await),
        ["c01"]
    );
    let by_source = format!("source = \"{CUSTOMERS}\"");
    assert_eq!(list_rejected(&mut exports, &export, &by_source).await.len(), 2);
    assert!(
        list_rejected(&mut exports, &export, "source = \"elsewhere\"")
            .await
            .is_empty()
    );

    // The next run sends both again; c07 now gets through, c01 is refused a second time.
    receiver.accept_all();
    receiver.refuse("c01", "still bounced", Some("BOUNCED"));
    let second = run_to_end(&mut exports, &export).await;
    assert_eq!(run_state(&second), pb::RunState::Succeeded, "{:?}", second.error);
    assert_eq!(
        (second.records_exported, second.records_rejected, second.records_retried),
        (9, 1, 2)
    );
    let outstanding = list_rejected(&mut exports, &export, "").await;
    assert_eq!(keys(&outstanding), ["c01"]);
    assert_eq!(
        (outstanding[0].attempts, outstanding[0].run.as_str()),
        (2, second.name.as_str())
    );
    assert_eq!(outstanding[0].reason, "still bounced");
    assert_eq!(outstanding[0].first_reject_time, c01.first_reject_time);
    assert_eq!(keys(&list_rejected(&mut exports, &second.name, "").await), ["c01"]);

    // Delivered at last: nothing is outstanding.
    receiver.accept_all();
    let third = run_to_end(&mut exports, &export).await;
    assert_eq!((third.records_rejected, third.records_retried), (0, 1));
    assert!(list_rejected(&mut exports, &export, "").await.is_empty());

    // Bad filters and unknown runs.
    let bad = exports
        .list_rejected_records(pb::ListRejectedRecordsRequest {
            parent: export.clone(),
            filter: "reason = \"x\"".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(bad_fields(&expect_code(bad, Code::InvalidArgument)), ["filter"]);
    let missing = exports
        .list_rejected_records(pb::ListRejectedRecordsRequest {
            parent: format!("{export}/runs/run-missing"),
            ..Default::default()
        })
        .await;
    expect_code(missing, Code::NotFound);
    t.stop().await;
}

#[tokio::test]
async fn a_refused_batch_keeps_every_key_with_the_first_kib_of_the_answer() {
    let receiver = WebhookReceiver::start(Some(SECRET)).await;
    let long = "é".repeat(3000);
    receiver.cue([Cue::status(422, &long)]);
    let t = server_with_hook(&receiver, Some("4")).await;
    let mut exports = t.exports("acme", Role::Admin).await;
    create_export(&mut exports, data_out("acme", "push", "Push", "hook", &[CUSTOMERS])).await;
    let run = run_to_end(&mut exports, &export_name("acme", "push")).await;
    assert_eq!(run.records_rejected, 4);
    let rejects = list_rejected(&mut exports, &run.name, "").await;
    assert_eq!(keys(&rejects), ["c00", "c01", "c02", "c03"]);
    for reject in &rejects {
        assert_eq!(reject.code, "HTTP_422");
        assert!(
            reject.reason.len() <= 1024 && reject.reason.len() >= 1022,
            "{}",
            reject.reason.len()
        );
        assert!(long.starts_with(&reject.reason));
    }
    t.stop().await;
}

#[tokio::test]
async fn incremental_runs_send_outstanding_rejects_again_even_when_unchanged() {
    let receiver = WebhookReceiver::start(Some(SECRET)).await;
    receiver.refuse("c03", "try later", None);
    receiver.refuse("c02", "try later", None);
    let t = server_with_hook(&receiver, None).await;
    let mut exports = t.exports("acme", Role::Admin).await;
    let mut data = data_out("acme", "changes", "Changes", "hook", &[CUSTOMERS]);
    data.export.as_mut().unwrap().sync_mode = pb::SyncMode::Incremental as i32;
    create_export(&mut exports, data).await;
    let mut members = segment_export(
        "acme",
        "vips",
        "VIPs",
        "hook",
        &[VIP],
        &[("id", "id"), ("email", "email")],
    );
    members.export.as_mut().unwrap().sync_mode = pb::SyncMode::Incremental as i32;
    create_export(&mut exports, members).await;
    for (export, rejected) in [("changes", 2), ("vips", 1)] {
        let run = run_to_end(&mut exports, &export_name("acme", export)).await;
        assert_eq!(run.records_rejected, rejected, "{export}");
    }

    // Nothing changed: each run sends only its outstanding rejects.
    receiver.accept_all();
    receiver.clear();
    for (export, retried) in [("changes", vec!["c02", "c03"]), ("vips", vec!["c02"])] {
        let name = export_name("acme", export);
        let run = run_to_end(&mut exports, &name).await;
        assert_eq!(run_state(&run), pb::RunState::Succeeded, "{:?}", run.error);
        assert_eq!(run.records_retried, retried.len() as i64, "{export}");
        assert_eq!(run.records_exported, retried.len() as i64, "{export}");
        let posts: Vec<_> = receiver
            .posts()
            .into_iter()
            .filter(|p| p.body["export"] == json!(name))
            .collect();
        assert_eq!(
            posts.iter().flat_map(record_ids).collect::<Vec<_>>(),
            retried,
            "{export}"
        );
        assert!(list_rejected(&mut exports, &name, "").await.is_empty(), "{export}");
    }
    t.stop().await;
}

#[tokio::test]
async fn a_cancelled_run_stops_between_requests_without_finishing_its_batch() {
    let receiver = WebhookReceiver::start(Some(SECRET)).await;
    receiver.hold();
    // One record per POST: the pipeline's batch of ten is ten requests.
    let t = server_with_hook(&receiver, Some("1")).await;
    let mut exports = t.exports("acme", Role::Admin).await;
    create_export(&mut exports, data_out("acme", "push", "Push", "hook", &[CUSTOMERS])).await;
    let run = run_export(&mut exports, &export_name("acme", "push")).await;
    eventually(
        std::time::Duration::from_secs(20),
        "the first POST",
        async || match receiver.posts().len() {
            0 => Err("no POST yet".to_string()),
            _ => Ok(()),
        },
    )
    .await;
    exports
        .cancel_export_run(pb::CancelExportRunRequest { name: run.name.clone() })
        .await
        .unwrap();
    let ended = wait_for_end(&mut exports, &run.name).await;
    receiver.release();
    assert_eq!(run_state(&ended), pb::RunState::Cancelled, "{:?}", ended.error);
    assert_eq!(receiver.posts().len(), 1, "nothing is sent after the cancel");
    t.stop().await;
}

// Several threads: the receiver answers while this test waits for the server processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_run_killed_mid_way_is_taken_over_and_every_record_and_reject_survives() {
    const RECORDS: usize = 1000;
    let receiver = WebhookReceiver::start(Some(SECRET)).await;
    // Every key ending in 7 is refused: 100 rejects, 10 in each batch of 100.
    for i in (7..RECORDS).step_by(10) {
        receiver.refuse(&format!("k{i:04}"), "refused", Some("NOPE"));
    }
    // Three batches are answered, the fourth hangs until the server is killed.
    receiver.hold_after(3);
    let dir = tempfile::tempdir().unwrap();
    let database_url = fresh_database_url(dir.path()).await;
    let envs = server_env(
        &database_url,
        &[("EXPORTD_RUN_LEASE_SECONDS", "2"), ("EXPORTD_WORKERS", "1")],
    );
    create_environment(dir.path(), &envs, "acme");
    let first = start(dir.path(), &envs);
    let (mut catalog, mut connections, mut exports) = clients(&first.addr, "acme").await;
    catalog
        .create_entity(customers_entity("acme", "customers", pb::EntityKind::Profile))
        .await
        .unwrap();
    let records = (0..RECORDS)
        .map(|i| json!({"id": format!("k{i:04}"), "email": format!("u{i}@x.io")}))
        .collect();
    write_all(&mut catalog, vec![write(CUSTOMERS, records, &[])])
        .await
        .unwrap();
    connections
        .create_connection(webhook("hook", &receiver.url, Some("100"), Some(SECRET)))
        .await
        .unwrap();
    create_export(&mut exports, data_out("acme", "push", "Push", "hook", &[CUSTOMERS])).await;
    let export = export_name("acme", "push");
    let run = run_export(&mut exports, &export).await;
    eventually(
        std::time::Duration::from_secs(60),
        "the fourth POST",
        async || match receiver.posts().len() {
            n if n >= 4 => Ok(()),
            n => Err(format!("{n} POSTs")),
        },
    )
    .await;
    first.signal("KILL");
    assert_eq!(first.wait(), None, "killed by a signal");
    receiver.release();

    let second = start(dir.path(), &envs);
    let (_, _, mut exports) = clients(&second.addr, "acme").await;
    let done = wait_run(&mut exports, &run.name, "a terminal state", |r| {
        !matches!(
            pb::RunState::try_from(r.state),
            Ok(pb::RunState::Queued | pb::RunState::Running | pb::RunState::WaitingForDependencies)
        )
    })
    .await;
    assert_eq!(done.state, pb::RunState::Succeeded as i32, "{done:?}");
    assert_eq!(done.attempt, 2);
    assert_eq!(
        (done.records_exported, done.records_rejected, done.records_retried),
        (900, 100, 0),
        "the first attempt's rejects are neither lost nor counted as retries"
    );

    // The new attempt sends every record again, under new idempotency keys.
    let run_id = run.name.rsplit('/').next().unwrap();
    let posts = receiver.posts();
    let first_attempt = posts
        .iter()
        .filter(|p| p.header("idempotency-key").starts_with(&format!("{run_id}.1.")))
        .count();
    assert_eq!(first_attempt, 4);
    let mut resent: Vec<String> = posts
        .iter()
        .filter(|p| p.header("idempotency-key").starts_with(&format!("{run_id}.2.")))
        .flat_map(record_ids)
        .collect();
    resent.sort();
    assert_eq!(resent, (0..RECORDS).map(|i| format!("k{i:04}")).collect::<Vec<_>>());

    let rejects = list_rejected(&mut exports, &export, "").await;
    assert_eq!(rejects.len(), 100);
    assert!(
        rejects
            .iter()
            .all(|r| r.attempts == 1 && r.run == run.name && r.code == "NOPE")
    );
    second.signal("TERM");
    assert_eq!(second.wait(), Some(0));
}
