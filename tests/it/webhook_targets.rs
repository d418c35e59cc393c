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

    let posts = receiver.posts();
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
