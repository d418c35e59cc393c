//! The `facebook-ads` target through the gRPC API, against a local double of the Graph API
//! that enforces the custom-audience request shapes (CONNECTORS.md "Wire details":
//! `facebook-ads`; PRODUCT.md §11, §12; issue 16).

use exportd::auth::Role;
use exportd::pb;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::common::meta_double::{AD_ACCOUNT, MetaDouble};
use crate::common::*;

const TOKEN: &str = "EAAB-system-user-token-0123456789";

fn sha(value: &str) -> String {
    hex::encode(Sha256::digest(value.as_bytes()))
}

fn meta_at(id: &str, double: &MetaDouble, token: &str) -> pb::CreateConnectionRequest {
    connection(
        "acme",
        id,
        "Meta",
        "facebook-ads",
        &[("ad_account_id", AD_ACCOUNT), ("base_url", &double.url)],
        &[("access_token", token)],
        true,
    )
}

async fn server_with(double: &MetaDouble) -> TestServer {
    let t = setup(Options::default()).await;
    t.connections("acme", Role::Admin)
        .await
        .create_connection(meta_at("meta", double, TOKEN))
        .await
        .unwrap();
    t
}

fn audience_export(id: &str, segment: &str, mode: pb::SyncMode, settings: &[(&str, &str)]) -> pb::CreateExportRequest {
    let mut request = segment_export(
        "acme",
        id,
        id,
        "meta",
        &[segment],
        &[("email", "email"), ("country", "country"), ("id", "external_id")],
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

/// The row Meta holds for customer `i` of `ten_customers` (EMAIL, COUNTRY, EXTERN_ID).
fn row(i: usize) -> Vec<String> {
    let country = ["id", "sg", "fr"][i % 3];
    vec![sha(&format!("user{i}@example.com")), sha(country), format!("c{i:02}")]
}

#[tokio::test]
async fn a_full_export_creates_the_audience_and_adds_hashed_members_in_one_session() {
    let double = MetaDouble::start(TOKEN).await;
    double.add_audience("111", "Someone else's audience");
    let t = server_with(&double).await;
    let mut exports = t.exports("acme", Role::Admin).await;
    create_export(&mut exports, audience_export("ads", VIP, pb::SyncMode::Full, &[])).await;
    let export = export_name("acme", "ads");
    let run = run_to_end(&mut exports, &export).await;
    assert_eq!(run_state(&run), pb::RunState::Succeeded, "{:?}", run.error);
    assert_eq!((run.records_exported, run.records_rejected), (5, 0));

    // Not found by name on any page: created, named after the segment.
    let audiences = double.audiences();
    let (id, _) = audiences
        .iter()
        .find(|(_, name)| *name == "Segment vip")
        .expect("created");
    let calls = double.user_calls();
    assert_eq!(calls.len(), 1);
    let body = &calls[0].body;
    assert_eq!(calls[0].method, "POST");
    assert_eq!(calls[0].path, format!("/v25.0/{id}/users"));
    assert_eq!(body["payload"]["schema"], json!(["EMAIL", "COUNTRY", "EXTERN_ID"]));
    assert_eq!(body["session"]["batch_seq"], json!(1));
    assert_eq!(body["session"]["last_batch_flag"], json!(true));
    assert_eq!(body["session"]["estimated_num_total"], json!(5));
    assert_eq!(double.users(id), [0, 2, 4, 6, 8].map(row).into_iter().collect());
    assert!(
        double
            .users(id)
            .iter()
            .any(|r| r[0] == "9551f6ff6935f400d1422e75827ee012baad045daa3b733e3369fef22b0c9b4e"),
        "sha256(user0@example.com) is held"
    );

    // The next run reuses the audience it remembered, without looking it up.
    double.clear_calls();
    let again = run_to_end(&mut exports, &export).await;
    assert_eq!(run_state(&again), pb::RunState::Succeeded, "{:?}", again.error);
    assert!(
        double.calls().iter().all(|c| c.path.ends_with("/users")),
        "{:?}",
        double.calls()
    );
    assert_eq!(double.audiences().len(), 2);
    t.stop().await;
}

#[tokio::test]
async fn an_audience_of_the_same_name_is_found_and_filled_and_mirror_removes_leavers() {
    let double = MetaDouble::start(TOKEN).await;
    for (id, name) in [("101", "A"), ("102", "B"), ("103", "C"), ("104", "Club audience")] {
        double.add_audience(id, name);
    }
    let t = server_with(&double).await;
    let mut catalog = t.catalog("acme", Role::Admin).await;
    create_pushed_segment(&mut catalog, "acme", "club", "customers", "Club").await;
    let club = "environments/acme/segments/club";
    let members = |keys: &[&str]| vec![keys.iter().map(|k| k.to_string()).collect::<Vec<_>>()];
    set_members(&mut catalog, club, members(&["c01", "c02"])).await.unwrap();
    let mut exports = t.exports("acme", Role::Admin).await;
    create_export(
        &mut exports,
        audience_export(
            "club",
            club,
            pb::SyncMode::Mirror,
            &[("audience_name", "Club audience")],
        ),
    )
    .await;
    let export = export_name("acme", "club");
    let first = run_to_end(&mut exports, &export).await;
    assert_eq!(run_state(&first), pb::RunState::Succeeded, "{:?}", first.error);
    assert_eq!(double.audiences().len(), 4, "found on the second page, not created");
    assert_eq!(double.users("104"), [row(1), row(2)].into_iter().collect());

    set_members(&mut catalog, club, members(&["c02", "c03"])).await.unwrap();
    double.clear_calls();
    let second = run_to_end(&mut exports, &export).await;
    assert_eq!(run_state(&second), pb::RunState::Succeeded, "{:?}", second.error);
    assert_eq!((second.records_exported, second.records_removed), (1, 1));
    let calls = double.user_calls();
    let methods: Vec<&str> = calls.iter().map(|c| c.method.as_str()).collect();
    assert_eq!(methods, ["POST", "DELETE"]);
    assert_eq!(calls[0].body["payload"]["data"], json!([row(3)]));
    assert_eq!(
        calls[1].body["payload"]["data"],
        json!([row(1)]),
        "removed by what it was sent"
    );
    assert_eq!(double.users("104"), [row(2), row(3)].into_iter().collect());
    t.stop().await;
}

#[tokio::test]
async fn invalid_entries_are_rejected_then_retried_and_rate_limit_codes_are_retried() {
    let double = MetaDouble::start(TOKEN).await;
    double.invalid(&row(4)[0], "Invalid email format");
    let t = server_with(&double).await;
    let mut exports = t.exports("acme", Role::Admin).await;
    create_export(&mut exports, audience_export("ads", VIP, pb::SyncMode::Mirror, &[])).await;
    let export = export_name("acme", "ads");
    let first = run_to_end(&mut exports, &export).await;
    assert_eq!(run_state(&first), pb::RunState::Succeeded, "{:?}", first.error);
    assert_eq!((first.records_exported, first.records_rejected), (4, 1));
    assert!(first.warnings.iter().any(|w| w.code == "RECORDS_REJECTED"));
    let rejected = list_rejected(&mut exports, &export).await;
    assert_eq!(rejected.len(), 1);
    assert_eq!(
        (rejected[0].key.as_str(), rejected[0].code.as_str()),
        ("c04", "INVALID_ENTRY")
    );
    assert_eq!(rejected[0].reason, "Invalid email format");

    // Meta takes it now, but throttles the run's first request (code 17): it is sent again.
    double.accept_all();
    double.clear_calls();
    double.fail_with(&[17]);
    let second = run_to_end(&mut exports, &export).await;
    assert_eq!(run_state(&second), pb::RunState::Succeeded, "{:?}", second.error);
    assert_eq!(
        (second.records_exported, second.records_rejected, second.records_retried),
        (1, 0, 1)
    );
    let calls = double.user_calls();
    assert_eq!(calls.len(), 2, "the throttled call and its retry");
    assert_eq!(calls[0].body, calls[1].body);
    assert_eq!(calls[1].body["payload"]["data"], json!([row(4)]));
    assert!(list_rejected(&mut exports, &export).await.is_empty());
    t.stop().await;
}

#[tokio::test]
async fn invalid_entries_meta_counts_but_does_not_name_are_counted_as_rejected() {
    let double = MetaDouble::start(TOKEN).await;
    for i in [2, 4, 8] {
        double.invalid(&row(i)[0], "Invalid email format");
    }
    double.sample_at_most(1);
    let t = server_with(&double).await;
    let mut exports = t.exports("acme", Role::Admin).await;
    create_export(&mut exports, audience_export("ads", VIP, pb::SyncMode::Full, &[])).await;
    let export = export_name("acme", "ads");
    let run = run_to_end(&mut exports, &export).await;
    assert_eq!(run_state(&run), pb::RunState::Succeeded, "{:?}", run.error);
    assert_eq!(
        (run.records_exported, run.records_rejected),
        (2, 3),
        "num_invalid_entries, not the samples"
    );
    let warning = run
        .warnings
        .iter()
        .find(|w| w.code == "RECORDS_REJECTED")
        .expect("a warning");
    assert_eq!(
        warning.message,
        "the target rejected 3 records; ListRejectedRecords shows the 1 the target named (2 it did not name)"
    );
    let rejected = list_rejected(&mut exports, &export).await;
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(
        (rejected[0].key.as_str(), rejected[0].code.as_str()),
        ("c02", "INVALID_ENTRY")
    );
    assert_eq!(double.users(&double.audiences().into_keys().next().unwrap()).len(), 2);
    t.stop().await;
}

#[tokio::test]
async fn members_without_email_or_phone_or_with_a_malformed_one_never_reach_meta() {
    let double = MetaDouble::start(TOKEN).await;
    let t = server_with(&double).await;
    let mut catalog = t.catalog("acme", Role::Admin).await;
    let mut c06 = ten_customers()[6].clone();
    c06["email"] = serde_json::Value::Null;
    let mut c08 = ten_customers()[8].clone();
    c08["email"] = json!("user8(at)example.com");
    // Case and surrounding whitespace are Meta's normalisation, not a fault.
    let mut c02 = ten_customers()[2].clone();
    c02["email"] = json!("  USER2@Example.COM ");
    write_all(&mut catalog, vec![write(CUSTOMERS, vec![c02, c06, c08], &[])])
        .await
        .unwrap();
    let mut exports = t.exports("acme", Role::Admin).await;
    create_export(&mut exports, audience_export("ads", VIP, pb::SyncMode::Full, &[])).await;
    let export = export_name("acme", "ads");
    let run = run_to_end(&mut exports, &export).await;
    assert_eq!(run_state(&run), pb::RunState::Succeeded, "{:?}", run.error);
    assert_eq!((run.records_exported, run.records_rejected), (3, 2));
    let codes: Vec<(String, String)> = list_rejected(&mut exports, &export)
        .await
        .into_iter()
        .map(|r| (r.key, r.code))
        .collect();
    assert_eq!(
        codes,
        [
            ("c06".to_string(), "NO_IDENTIFIER".to_string()),
            ("c08".into(), "INVALID_IDENTIFIER".into())
        ]
    );
    let sent = &double.user_calls()[0].body["payload"]["data"];
    assert_eq!(sent, &json!([row(0), row(2), row(4)]));
    t.stop().await;
}

async fn list_rejected(exports: &mut Exports, parent: &str) -> Vec<pb::RejectedRecord> {
    exports
        .list_rejected_records(pb::ListRejectedRecordsRequest {
            parent: parent.into(),
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .rejected_records
}

#[tokio::test]
async fn test_connection_checks_the_token_then_the_ad_account() {
    let double = MetaDouble::start(TOKEN).await;
    let t = setup(Options::default()).await;
    let mut connections = t.connections("acme", Role::Admin).await;
    connections
        .create_connection(meta_at("good", &double, TOKEN))
        .await
        .unwrap();
    connections
        .create_connection(meta_at("bad", &double, "EAAB-expired"))
        .await
        .unwrap();
    let good = connections
        .test_connection(pb::TestConnectionRequest {
            name: conn_name("acme", "good"),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(good.ok, "{good:?}");
    assert_eq!(
        good.checks.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
        ["credentials", "ad_account"]
    );
    let bad = connections
        .test_connection(pb::TestConnectionRequest {
            name: conn_name("acme", "bad"),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!bad.ok);
    assert!(bad.checks[0].message.contains("Invalid OAuth access token"), "{bad:?}");
    assert!(bad.checks[0].message.contains("code 190"), "{bad:?}");
    assert!(!format!("{bad:?}").contains("EAAB-expired"), "the token is never shown");
    t.stop().await;
}
