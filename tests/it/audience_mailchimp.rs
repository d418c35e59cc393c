//! The `mailchimp` target through the gRPC API, against a local double of the Marketing API
//! that enforces its request shapes (CONNECTORS.md "Wire details": `mailchimp`; PRODUCT.md
//! §11, §12; issue 16).

use std::time::Duration;

use exportd::auth::Role;
use exportd::pb;
use serde_json::json;

use crate::common::mailchimp_double::{LIST, MailchimpDouble};
use crate::common::*;

const KEY: &str = "0123456789abcdef0123456789abcdef-us21";
const VIP_EMAILS: [&str; 5] = [
    "user0@example.com",
    "user2@example.com",
    "user4@example.com",
    "user6@example.com",
    "user8@example.com",
];

fn mailchimp_at(id: &str, double: &MailchimpDouble, key: &str, list: &str) -> pb::CreateConnectionRequest {
    connection(
        "acme",
        id,
        "Mailchimp",
        "mailchimp",
        &[
            ("server_prefix", "us21"),
            ("audience_id", list),
            ("base_url", &double.url),
        ],
        &[("api_key", key)],
        true,
    )
}

/// acme (ten customers, `vip` with five) and a connection `mc` to the double.
async fn server_with(double: &MailchimpDouble) -> TestServer {
    let t = setup(Options::default()).await;
    t.connections("acme", Role::Admin)
        .await
        .create_connection(mailchimp_at("mc", double, KEY, LIST))
        .await
        .unwrap();
    t
}

fn audience_export(id: &str, segment: &str, mode: pb::SyncMode, settings: &[(&str, &str)]) -> pb::CreateExportRequest {
    let mut request = segment_export(
        "acme",
        id,
        id,
        "mc",
        &[segment],
        &[("email", "email"), ("country", "country")],
    );
    let export = request.export.as_mut().unwrap();
    export.sync_mode = mode as i32;
    export.settings = pairs(settings);
    request
}

async fn run_to_end(exports: &mut Exports, export: &str) -> pb::ExportRun {
    let run = run_export(exports, export).await;
    wait_for_end(exports, &run.name).await
}

fn subscribed(double: &MailchimpDouble) -> Vec<String> {
    double
        .members()
        .into_values()
        .filter(|m| m.status == "subscribed")
        .map(|m| m.email)
        .collect()
}

fn emails_of(call: &crate::common::mailchimp_double::Call) -> Vec<String> {
    call.body["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["email_address"].as_str().unwrap().to_string())
        .collect()
}

async fn list_rejected(exports: &mut Exports, parent: &str) -> Vec<pb::RejectedRecord> {
    exports
        .list_rejected_records(pb::ListRejectedRecordsRequest {
            parent: parent.into(),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .rejected_records
}

#[tokio::test]
async fn a_full_export_subscribes_every_member_with_merge_fields_and_the_segment_tag() {
    let double = MailchimpDouble::start(KEY).await;
    let t = server_with(&double).await;
    let mut exports = t.exports("acme", Role::Admin).await;
    create_export(
        &mut exports,
        audience_export("news", VIP, pb::SyncMode::Full, &[("tag_with_segment", "true")]),
    )
    .await;
    let run = run_to_end(&mut exports, &export_name("acme", "news")).await;
    assert_eq!(run_state(&run), pb::RunState::Succeeded, "{:?}", run.error);
    assert_eq!((run.records_exported, run.records_rejected), (5, 0));

    assert_eq!(subscribed(&double), VIP_EMAILS);
    let member = &double.members()["user2@example.com"];
    assert_eq!(
        member.merge_fields,
        json!({"COUNTRY": "FR"}),
        "mapped fields are upper-case merge tags"
    );
    assert_eq!(member.tags.iter().collect::<Vec<_>>(), ["Segment vip"]);
    let subscribes = double.subscribes();
    assert_eq!(subscribes.len(), 1, "five members fit one call");
    for call in double.calls() {
        assert!(call.header("authorization").starts_with("Basic "), "{call:?}");
        assert!(call.header("user-agent").starts_with("exportd/"), "{call:?}");
    }
    assert_eq!(subscribes[0].header("content-type"), "application/json");
    let finalize = run.tasks.iter().find(|t| t.name == "finalize").unwrap();
    assert!(finalize.message.contains("5 members"), "{}", finalize.message);

    // A second FULL run sends every member again (updates, nothing new).
    double.clear_calls();
    let again = run_to_end(&mut exports, &export_name("acme", "news")).await;
    assert_eq!(again.records_exported, 5);
    assert_eq!(emails_of(&double.subscribes()[0]).len(), 5);
    assert_eq!(subscribed(&double), VIP_EMAILS);
    t.stop().await;
}

/// Members of [`segment_of_many`]: three batch subscribes (500, 500, 234).
const MANY: usize = 1_234;

/// A segment `many` of `count` customers `m0000…` with addresses `m0000@example.com…`.
async fn segment_of_many(t: &TestServer, count: usize) -> String {
    let mut catalog = t.catalog("acme", Role::Admin).await;
    let many: Vec<serde_json::Value> = (0..count)
        .map(|i| json!({"id": format!("m{i:04}"), "email": format!("m{i:04}@example.com"), "country": "SG"}))
        .collect();
    write_all(&mut catalog, vec![write(CUSTOMERS, many, &[])])
        .await
        .unwrap();
    let segment = create_pushed_segment(&mut catalog, "acme", "many", "customers", "Many").await;
    let keys: Vec<String> = (0..count).map(|i| format!("m{i:04}")).collect();
    set_members(&mut catalog, &segment.name, vec![keys]).await.unwrap();
    segment.name
}

#[tokio::test]
async fn calls_carry_at_most_500_members_over_at_most_10_connections() {
    let double = MailchimpDouble::start(KEY).await;
    let t = server_with(&double).await;
    let many = segment_of_many(&t, MANY).await;
    let mut exports = t.exports("acme", Role::Admin).await;
    create_export(&mut exports, audience_export("many", &many, pb::SyncMode::Full, &[])).await;
    let run = run_to_end(&mut exports, &export_name("acme", "many")).await;
    assert_eq!(run_state(&run), pb::RunState::Succeeded, "{:?}", run.error);
    assert_eq!(run.records_exported, 1_234);
    let mut sizes: Vec<usize> = double.subscribes().iter().map(|c| emails_of(c).len()).collect();
    sizes.sort();
    assert_eq!(sizes, [234, 500, 500]);
    assert_eq!(double.members().len(), 1_234);
    assert!(double.most_in_flight() <= 10, "{}", double.most_in_flight());
    t.stop().await;
}

#[tokio::test]
async fn a_slow_call_holds_only_its_own_connection() {
    // 15 calls of 500 at up to 10 at once: while the first is unanswered, the other 14 go out
    // as connections free up (lock-step groups of 10 would stop at 10).
    let double = MailchimpDouble::start(KEY).await;
    double.hold_first();
    let t = server_with(&double).await;
    let many = segment_of_many(&t, 7_500).await;
    let mut exports = t.exports("acme", Role::Admin).await;
    create_export(&mut exports, audience_export("many", &many, pb::SyncMode::Full, &[])).await;
    let export = export_name("acme", "many");
    let run = run_export(&mut exports, &export).await;
    eventually(
        Duration::from_secs(30),
        "every batch subscribe while the first waits",
        async || match double.subscribes().len() {
            15 => Ok(()),
            n => Err(format!("{n} calls")),
        },
    )
    .await;
    // The run shows what the 14 answered calls delivered while it waits for the first.
    eventually(Duration::from_secs(10), "the answered calls counted", async || {
        let waiting = get_run(&mut exports, &run.name).await;
        match (run_state(&waiting), waiting.records_exported) {
            (pb::RunState::Running, 7_000) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    double.release();
    let ended = wait_for_end(&mut exports, &run.name).await;
    assert_eq!(run_state(&ended), pb::RunState::Succeeded, "{:?}", ended.error);
    assert_eq!(ended.records_exported, 7_500);
    assert_eq!(double.members().len(), 7_500);
    assert!(double.most_in_flight() <= 10, "{}", double.most_in_flight());
    t.stop().await;
}

#[tokio::test]
async fn a_mirror_run_subscribes_exactly_who_joined_and_archives_who_left() {
    let double = MailchimpDouble::start(KEY).await;
    let t = server_with(&double).await;
    let mut catalog = t.catalog("acme", Role::Admin).await;
    create_pushed_segment(&mut catalog, "acme", "club", "customers", "Club").await;
    let club = "environments/acme/segments/club";
    let members = |keys: &[&str]| vec![keys.iter().map(|k| k.to_string()).collect::<Vec<_>>()];
    set_members(&mut catalog, club, members(&["c01", "c02", "c03"]))
        .await
        .unwrap();
    let mut exports = t.exports("acme", Role::Admin).await;
    create_export(&mut exports, audience_export("club", club, pb::SyncMode::Mirror, &[])).await;
    let export = export_name("acme", "club");

    let first = run_to_end(&mut exports, &export).await;
    assert_eq!(run_state(&first), pb::RunState::Succeeded, "{:?}", first.error);
    assert_eq!((first.records_exported, first.records_removed), (3, 0));
    assert_eq!(
        subscribed(&double),
        ["user1@example.com", "user2@example.com", "user3@example.com"]
    );

    // c01 leaves, c04 and c05 join.
    set_members(&mut catalog, club, members(&["c02", "c03", "c04", "c05"]))
        .await
        .unwrap();
    double.clear_calls();
    let second = run_to_end(&mut exports, &export).await;
    assert_eq!(run_state(&second), pb::RunState::Succeeded, "{:?}", second.error);
    assert_eq!((second.records_exported, second.records_removed), (2, 1));
    let subscribes = double.subscribes();
    assert_eq!(subscribes.len(), 1);
    assert_eq!(emails_of(&subscribes[0]), ["user4@example.com", "user5@example.com"]);
    let archives = double.archives();
    assert_eq!(archives.len(), 1);
    let hash = format!("{:x}", md5::compute(b"user1@example.com"));
    assert_eq!(archives[0].path, format!("/3.0/lists/{LIST}/members/{hash}"));
    assert_eq!(double.members()["user1@example.com"].status, "archived");
    assert_eq!(
        subscribed(&double),
        [
            "user2@example.com",
            "user3@example.com",
            "user4@example.com",
            "user5@example.com"
        ]
    );

    // Nothing changed: nothing is sent.
    double.clear_calls();
    let third = run_to_end(&mut exports, &export).await;
    assert_eq!(run_state(&third), pb::RunState::Succeeded, "{:?}", third.error);
    assert_eq!((third.records_exported, third.records_removed), (0, 0));
    assert!(double.calls().is_empty(), "{:?}", double.calls());

    // A member who left after its record was deleted is archived by the address it was sent with.
    write_all(&mut catalog, vec![write(CUSTOMERS, vec![], &["c05"])])
        .await
        .unwrap();
    let fourth = run_to_end(&mut exports, &export).await;
    assert_eq!(run_state(&fourth), pb::RunState::Succeeded, "{:?}", fourth.error);
    assert_eq!(fourth.records_removed, 1);
    assert_eq!(double.members()["user5@example.com"].status, "archived");
    t.stop().await;
}

#[tokio::test]
async fn a_429_with_retry_after_is_waited_out_and_the_call_sent_again() {
    let double = MailchimpDouble::start(KEY).await;
    double.throttle(1, "1");
    let t = server_with(&double).await;
    let mut exports = t.exports("acme", Role::Admin).await;
    create_export(&mut exports, audience_export("news", VIP, pb::SyncMode::Full, &[])).await;
    let run = run_to_end(&mut exports, &export_name("acme", "news")).await;
    assert_eq!(run_state(&run), pb::RunState::Succeeded, "{:?}", run.error);
    assert_eq!(run.records_exported, 5);
    let subscribes = double.subscribes();
    assert_eq!(subscribes.len(), 2, "the throttled call and its retry");
    assert_eq!(subscribes[0].body, subscribes[1].body);
    assert!(
        subscribes[1].at.duration_since(subscribes[0].at) >= Duration::from_secs(1),
        "the retry waited for Retry-After"
    );
    assert_eq!(subscribed(&double), VIP_EMAILS);
    t.stop().await;
}

#[tokio::test]
async fn an_outage_fails_the_run_with_mailchimp_s_last_error_and_what_was_confirmed_stays_delivered() {
    let double = MailchimpDouble::start(KEY).await;
    // The first batch subscribe is served; then Mailchimp answers 503 to every batch.
    double.fail_after(1);
    let t = server_with(&double).await;
    let many = segment_of_many(&t, MANY).await;
    let mut exports = t.exports("acme", Role::Admin).await;
    create_export(&mut exports, audience_export("many", &many, pb::SyncMode::Mirror, &[])).await;
    let export = export_name("acme", "many");

    let failed = run_to_end(&mut exports, &export).await;
    assert_eq!(run_state(&failed), pb::RunState::Failed, "{failed:#?}");
    let error = failed.error.as_ref().expect("a failed run says why");
    assert_eq!(run_error_reason(error), "TARGET_UNAVAILABLE", "{error:#?}");
    // The error is Mailchimp's answer to the batch's last attempt: PRODUCT.md §11 allows 6.
    assert!(error.message.contains("503"), "{}", error.message);
    assert!(
        error
            .message
            .contains("Mailchimp is down for maintenance (attempt 6 of this batch)"),
        "{}",
        error.message
    );
    let attempts = double.refused_attempts();
    assert_eq!(attempts.len(), 2, "the two batches after the first: {attempts:?}");
    assert!(
        attempts.iter().all(|&a| a == 6),
        "each retried up to 6 attempts, no more: {attempts:?}"
    );
    // The batch Mailchimp confirmed counts, and is remembered as delivered.
    let confirmed: Vec<String> = subscribed(&double);
    assert!([500, MANY - 1_000].contains(&confirmed.len()), "{}", confirmed.len());
    assert_eq!(failed.records_exported, confirmed.len() as i64);

    // Mailchimp is back: the next MIRROR run sends exactly the members not confirmed before.
    double.recover();
    double.clear_calls();
    let next = run_to_end(&mut exports, &export).await;
    assert_eq!(run_state(&next), pb::RunState::Succeeded, "{:?}", next.error);
    assert_eq!(next.records_exported, (MANY - confirmed.len()) as i64);
    let mut sent: Vec<String> = double.subscribes().iter().flat_map(emails_of).collect();
    sent.sort();
    let expected: Vec<String> = (0..MANY)
        .map(|i| format!("m{i:04}@example.com"))
        .filter(|email| !confirmed.contains(email))
        .collect();
    assert_eq!(sent, expected);
    assert_eq!(double.members().len(), MANY);
    t.stop().await;
}

#[tokio::test]
async fn refused_and_unidentifiable_members_are_rejected_and_retried_by_the_next_run() {
    let double = MailchimpDouble::start(KEY).await;
    double.refuse(
        "user4@example.com",
        "user4@example.com looks fake or invalid",
        "ERROR_GENERIC",
    );
    let t = server_with(&double).await;
    let mut catalog = t.catalog("acme", Role::Admin).await;
    // c06 has no email, c08 one that cannot be an address: refused before Mailchimp sees them.
    let mut c06 = ten_customers()[6].clone();
    c06["email"] = serde_json::Value::Null;
    let mut c08 = ten_customers()[8].clone();
    c08["email"] = json!("user8 at example");
    write_all(&mut catalog, vec![write(CUSTOMERS, vec![c06, c08], &[])])
        .await
        .unwrap();
    let mut exports = t.exports("acme", Role::Admin).await;
    create_export(&mut exports, audience_export("news", VIP, pb::SyncMode::Mirror, &[])).await;
    let export = export_name("acme", "news");
    let first = run_to_end(&mut exports, &export).await;
    assert_eq!(run_state(&first), pb::RunState::Succeeded, "{:?}", first.error);
    assert_eq!((first.records_exported, first.records_rejected), (2, 3));
    assert!(
        first.warnings.iter().any(|w| w.code == "RECORDS_REJECTED"),
        "{:?}",
        first.warnings
    );
    let rejected = list_rejected(&mut exports, &export).await;
    let summary: Vec<(&str, &str)> = rejected.iter().map(|r| (r.key.as_str(), r.code.as_str())).collect();
    assert_eq!(
        summary,
        [
            ("c04", "ERROR_GENERIC"),
            ("c06", "NO_IDENTIFIER"),
            ("c08", "INVALID_IDENTIFIER")
        ]
    );
    assert!(rejected[0].reason.contains("looks fake"), "{:?}", rejected[0]);
    assert!(rejected[2].reason.contains("user8 at example"), "{:?}", rejected[2]);
    let sent: Vec<String> = double.subscribes().iter().flat_map(emails_of).collect();
    assert_eq!(sent, ["user0@example.com", "user2@example.com", "user4@example.com"]);

    // Mailchimp takes user4 now and c06 got an address: the next MIRROR run sends exactly the
    // outstanding rejects (c08 is refused again).
    double.accept_all();
    let mut c06 = ten_customers()[6].clone();
    c06["email"] = json!("  User6@Example.com ");
    write_all(&mut catalog, vec![write(CUSTOMERS, vec![c06], &[])])
        .await
        .unwrap();
    double.clear_calls();
    let second = run_to_end(&mut exports, &export).await;
    assert_eq!(run_state(&second), pb::RunState::Succeeded, "{:?}", second.error);
    assert_eq!(
        (second.records_exported, second.records_rejected, second.records_retried),
        (2, 1, 3)
    );
    let sent: Vec<String> = double.subscribes().iter().flat_map(emails_of).collect();
    assert_eq!(sent, ["user4@example.com", "User6@Example.com"], "trimmed, as given");
    let outstanding = list_rejected(&mut exports, &export).await;
    assert_eq!(outstanding.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(), ["c08"]);
    t.stop().await;
}

#[tokio::test]
async fn a_cancelled_run_keeps_what_mailchimp_confirmed_and_sends_nothing_more() {
    let double = MailchimpDouble::start(KEY).await;
    double.hold();
    let t = server_with(&double).await;
    let mut exports = t.exports("acme", Role::Admin).await;
    create_export(&mut exports, audience_export("news", VIP, pb::SyncMode::Mirror, &[])).await;
    let export = export_name("acme", "news");
    let run = run_export(&mut exports, &export).await;
    eventually(
        Duration::from_secs(20),
        "the batch subscribe call",
        async || match double.subscribes().len() {
            0 => Err("no call yet".to_string()),
            _ => Ok(()),
        },
    )
    .await;
    exports
        .cancel_export_run(pb::CancelExportRunRequest { name: run.name.clone() })
        .await
        .unwrap();
    let ended = wait_for_end(&mut exports, &run.name).await;
    double.release();
    assert_eq!(run_state(&ended), pb::RunState::Cancelled, "{:?}", ended.error);
    assert_eq!(ended.records_exported, 0, "no answer was confirmed");

    // Nothing was recorded as delivered: the next MIRROR run sends all five again.
    double.clear_calls();
    let next = run_to_end(&mut exports, &export).await;
    assert_eq!(run_state(&next), pb::RunState::Succeeded, "{:?}", next.error);
    assert_eq!(next.records_exported, 5);
    assert_eq!(subscribed(&double), VIP_EMAILS);
    t.stop().await;
}

#[tokio::test]
async fn a_segment_over_the_profile_limit_is_skipped_without_a_request() {
    let double = MailchimpDouble::start(KEY).await;
    let t = setup(Options::default()).await;
    let mut limited = mailchimp_at("mc", &double, KEY, LIST);
    limited.connection.as_mut().unwrap().profile_limit = 3;
    t.connections("acme", Role::Admin)
        .await
        .create_connection(limited)
        .await
        .unwrap();
    let mut exports = t.exports("acme", Role::Admin).await;
    create_export(&mut exports, audience_export("news", VIP, pb::SyncMode::Full, &[])).await;
    let run = run_to_end(&mut exports, &export_name("acme", "news")).await;
    assert_eq!(run_state(&run), pb::RunState::Skipped, "{run:#?}");
    assert!(run.skip_reason.contains("5 members"), "{}", run.skip_reason);
    assert!(double.calls().is_empty(), "{:?}", double.calls());
    t.stop().await;
}

#[tokio::test]
async fn test_connection_checks_the_key_then_the_audience_with_mailchimp_s_messages() {
    let double = MailchimpDouble::start(KEY).await;
    let t = setup(Options::default()).await;
    let mut connections = t.connections("acme", Role::Admin).await;
    for request in [
        mailchimp_at("good", &double, KEY, LIST),
        mailchimp_at("badkey", &double, "wrong-key-us21", LIST),
        mailchimp_at("nolist", &double, KEY, "missing"),
    ] {
        connections.create_connection(request).await.unwrap();
    }
    let test = async |connections: &mut Connections, id: &str| {
        connections
            .test_connection(pb::TestConnectionRequest {
                name: conn_name("acme", id),
            })
            .await
            .unwrap()
            .into_inner()
    };
    let good = test(&mut connections, "good").await;
    assert!(good.ok, "{good:?}");
    let names: Vec<&str> = good.checks.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["credentials", "audience"]);
    assert!(good.checks[1].message.contains("Newsletter"), "{good:?}");

    let bad = test(&mut connections, "badkey").await;
    assert!(!bad.ok);
    assert_eq!(bad.checks.len(), 1, "{bad:?}");
    assert!(bad.checks[0].message.contains("API Key Invalid"), "{bad:?}");
    assert!(!format!("{bad:?}").contains("wrong-key-us21"), "the key is never shown");

    let missing = test(&mut connections, "nolist").await;
    assert!(!missing.ok);
    assert_eq!(
        (missing.checks[0].ok, missing.checks[1].ok),
        (true, false),
        "{missing:?}"
    );
    assert!(missing.checks[1].message.contains("Resource Not Found"), "{missing:?}");
    t.stop().await;
}

#[tokio::test]
async fn a_refused_key_fails_the_run_with_mailchimp_s_message_and_never_shows_the_key() {
    let double = MailchimpDouble::start(KEY).await;
    let t = setup(Options::default()).await;
    t.connections("acme", Role::Admin)
        .await
        .create_connection(mailchimp_at("mc", &double, "stale-key-us21", LIST))
        .await
        .unwrap();
    let mut exports = t.exports("acme", Role::Admin).await;
    create_export(&mut exports, audience_export("news", VIP, pb::SyncMode::Full, &[])).await;
    let run = run_to_end(&mut exports, &export_name("acme", "news")).await;
    assert_eq!(run_state(&run), pb::RunState::Failed, "{run:#?}");
    let error = run.error.as_ref().unwrap();
    assert!(error.message.contains("API Key Invalid"), "{}", error.message);
    assert!(!format!("{run:?}").contains("stale-key-us21"));
    assert_eq!(double.subscribes().len(), 1, "a 401 is not retried");
    t.stop().await;
}

// Several threads: the double answers while this test waits for the server process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_api_key_reaches_the_server_logs_even_at_debug_level() {
    let double = MailchimpDouble::start(KEY).await;
    // One throttled call (a retry, logged at debug) and a refused key (a failed run, logged).
    double.throttle(1, "1");
    let dir = tempfile::tempdir().unwrap();
    let database_url = fresh_database_url(dir.path()).await;
    let envs = server_env(
        &database_url,
        &[(
            "EXPORTD_LOG_FILTER",
            "debug,sqlx=warn,sea_orm=warn,h2=info,hyper=info,tower=info",
        )],
    );
    create_environment(dir.path(), &envs, "acme");
    let server = start(dir.path(), &envs);
    let (mut catalog, mut connections, mut exports) = clients(&server.addr, "acme").await;
    catalog
        .create_entity(customers_entity("acme", "customers", pb::EntityKind::Profile))
        .await
        .unwrap();
    write_all(&mut catalog, vec![write(CUSTOMERS, ten_customers(), &[])])
        .await
        .unwrap();
    create_pushed_segment(&mut catalog, "acme", "club", "customers", "Club").await;
    let club = "environments/acme/segments/club";
    set_members(&mut catalog, club, vec![vec!["c01".into(), "c02".into()]])
        .await
        .unwrap();
    const WRONG: &str = "ffffffffffffffffffffffffffffffff-us21";
    connections
        .create_connection(mailchimp_at("mc", &double, KEY, LIST))
        .await
        .unwrap();
    connections
        .create_connection(mailchimp_at("stale", &double, WRONG, LIST))
        .await
        .unwrap();
    for (id, connection) in [("good", "mc"), ("bad", "stale")] {
        let mut request = segment_export("acme", id, id, connection, &[club], &[("email", "email")]);
        request.export.as_mut().unwrap().sync_mode = pb::SyncMode::Mirror as i32;
        create_export(&mut exports, request).await;
    }
    let good = run_to_end(&mut exports, &export_name("acme", "good")).await;
    assert_eq!(run_state(&good), pb::RunState::Succeeded, "{:?}", good.error);
    let bad = run_to_end(&mut exports, &export_name("acme", "bad")).await;
    assert_eq!(run_state(&bad), pb::RunState::Failed);
    for id in ["mc", "stale"] {
        connections
            .test_connection(pb::TestConnectionRequest {
                name: conn_name("acme", id),
            })
            .await
            .unwrap();
    }
    let logs = server.logs();
    assert!(
        logs.contains("retrying"),
        "the throttled call was retried (and logged): {logs}"
    );
    assert!(logs.contains("API Key Invalid"), "the refusal was logged: {logs}");
    assert!(
        !logs.contains(KEY) && !logs.contains(WRONG),
        "an API key reached the logs: {logs}"
    );
    drop(server);
}
