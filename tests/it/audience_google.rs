//! The `google-ads` target (Data Manager API) through the gRPC API, against local doubles of
//! Google's token endpoint and of `audienceMembers:ingest` / `:remove` that enforce their
//! request shapes (CONNECTORS.md "Wire details": `google-ads`; PRODUCT.md §11, §12; issue 16).

use exportd::auth::Role;
use exportd::pb;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::common::google_double::{CLIENT_ID, CLIENT_SECRET, CUSTOMER, GoogleDouble, REFRESH_TOKEN, USER_LIST};
use crate::common::*;

fn sha(value: &str) -> String {
    hex::encode(Sha256::digest(value.as_bytes()))
}

fn google_at(id: &str, double: &GoogleDouble, refresh_token: &str) -> pb::CreateConnectionRequest {
    connection(
        "acme",
        id,
        "Google",
        "google-ads",
        &[
            ("customer_id", CUSTOMER),
            ("base_url", &double.url),
            ("token_url", &double.token_url),
        ],
        &[
            ("oauth_refresh_token", refresh_token),
            ("oauth_client_id", CLIENT_ID),
            ("oauth_client_secret", CLIENT_SECRET),
        ],
        true,
    )
}

async fn server_with(double: &GoogleDouble) -> TestServer {
    let t = setup(Options::default()).await;
    t.connections("acme", Role::Admin)
        .await
        .create_connection(google_at("google", double, REFRESH_TOKEN))
        .await
        .unwrap();
    t
}

fn audience_export(id: &str, segment: &str, mode: pb::SyncMode, settings: &[(&str, &str)]) -> pb::CreateExportRequest {
    let mut request = segment_export("acme", id, id, "google", &[segment], &[("email", "email")]);
    let export = request.export.as_mut().unwrap();
    export.sync_mode = mode as i32;
    export.settings = pairs(settings);
    request
}

async fn run_to_end(exports: &mut Exports, export: &str) -> pb::ExportRun {
    let run = run_export(exports, export).await;
    wait_for_end(exports, &run.name).await
}

fn emails(indices: &[usize]) -> std::collections::BTreeSet<String> {
    indices.iter().map(|i| sha(&format!("user{i}@example.com"))).collect()
}

#[tokio::test]
async fn members_are_ingested_with_google_s_normalisation_and_the_token_is_cached() {
    let double = GoogleDouble::start().await;
    let t = server_with(&double).await;
    let mut catalog = t.catalog("acme", Role::Admin).await;
    let mut c00 = ten_customers()[0].clone();
    c00["email"] = json!(" User.Zero+Promo@GMail.com ");
    write_all(&mut catalog, vec![write(CUSTOMERS, vec![c00], &[])])
        .await
        .unwrap();
    let mut exports = t.exports("acme", Role::Admin).await;
    create_export(
        &mut exports,
        audience_export("match", VIP, pb::SyncMode::Full, &[("audience_id", USER_LIST)]),
    )
    .await;
    let export = export_name("acme", "match");
    let run = run_to_end(&mut exports, &export).await;
    assert_eq!(run_state(&run), pb::RunState::Succeeded, "{:?}", run.error);
    assert_eq!(run.records_exported, 5);
    let mut expected = emails(&[2, 4, 6, 8]);
    expected.insert(sha("userzero@gmail.com"));
    assert_eq!(double.list(), expected, "gmail: dots and +suffix removed, lower-cased");
    let calls = double.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].path, "/v1/audienceMembers:ingest");
    assert!(calls[0].authorization.starts_with("Bearer ya29."));

    // The access token is reused by the next run.
    let again = run_to_end(&mut exports, &export).await;
    assert_eq!(run_state(&again), pb::RunState::Succeeded, "{:?}", again.error);
    assert_eq!(double.token_requests(), 1);

    // An expired token (401) is refreshed once and the request sent again.
    double.expire_tokens();
    double.clear_calls();
    let third = run_to_end(&mut exports, &export).await;
    assert_eq!(run_state(&third), pb::RunState::Succeeded, "{:?}", third.error);
    assert_eq!(double.token_requests(), 2);
    let auths: Vec<String> = double.calls().iter().map(|c| c.authorization.clone()).collect();
    assert_eq!(auths.len(), 2);
    assert_ne!(auths[0], auths[1], "sent again with the new token");
    t.stop().await;
}

#[tokio::test]
async fn mirror_removes_leavers_and_fast_failed_members_are_rejected_the_rest_sent_again() {
    let double = GoogleDouble::start().await;
    double.invalid(&sha("user4@example.com"));
    let t = server_with(&double).await;
    let mut catalog = t.catalog("acme", Role::Admin).await;
    create_pushed_segment(&mut catalog, "acme", "club", "customers", "Club").await;
    let club = "environments/acme/segments/club";
    let members = |keys: &[&str]| vec![keys.iter().map(|k| k.to_string()).collect::<Vec<_>>()];
    set_members(&mut catalog, club, members(&["c00", "c02", "c04", "c06", "c08"]))
        .await
        .unwrap();
    let mut exports = t.exports("acme", Role::Admin).await;
    create_export(
        &mut exports,
        audience_export("match", club, pb::SyncMode::Mirror, &[("audience_id", USER_LIST)]),
    )
    .await;
    let export = export_name("acme", "match");
    let first = run_to_end(&mut exports, &export).await;
    assert_eq!(run_state(&first), pb::RunState::Succeeded, "{:?}", first.error);
    assert_eq!((first.records_exported, first.records_rejected), (4, 1));
    assert_eq!(double.list(), emails(&[0, 2, 6, 8]));
    let calls = double.calls();
    assert_eq!(calls.len(), 2, "the refused request, then the others alone");
    assert_eq!(calls[1].body["audienceMembers"].as_array().unwrap().len(), 4);
    let rejected = exports
        .list_rejected_records(pb::ListRejectedRecordsRequest {
            parent: export.clone(),
            page_size: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .rejected_records;
    assert_eq!(rejected.len(), 1);
    assert_eq!(
        (rejected[0].key.as_str(), rejected[0].code.as_str()),
        ("c04", "INVALID_USER_IDENTIFIER")
    );

    // c02 leaves the segment: removed, without terms or consent.
    set_members(&mut catalog, club, members(&["c00", "c04", "c06", "c08"]))
        .await
        .unwrap();
    double.clear_calls();
    let second = run_to_end(&mut exports, &export).await;
    assert_eq!(run_state(&second), pb::RunState::Succeeded, "{:?}", second.error);
    assert_eq!(second.records_removed, 1);
    let remove = double
        .calls()
        .into_iter()
        .find(|c| c.path == "/v1/audienceMembers:remove")
        .expect("a remove");
    assert_eq!(
        remove.body["audienceMembers"],
        json!([{"userData": {"userIdentifiers": [{"emailAddress": sha("user2@example.com")}]}}])
    );
    assert!(double.list().contains(&sha("user0@example.com")));
    assert!(!double.list().contains(&sha("user2@example.com")));
    t.stop().await;
}

#[tokio::test]
async fn without_a_user_list_the_run_fails_and_test_connection_checks_the_token_exchange() {
    let double = GoogleDouble::start().await;
    let t = server_with(&double).await;
    let mut exports = t.exports("acme", Role::Admin).await;
    create_export(&mut exports, audience_export("match", VIP, pb::SyncMode::Full, &[])).await;
    let run = run_to_end(&mut exports, &export_name("acme", "match")).await;
    assert_eq!(run_state(&run), pb::RunState::Failed);
    assert!(
        run.error.as_ref().unwrap().message.contains("audience_id"),
        "{:?}",
        run.error
    );
    assert!(double.calls().is_empty());

    let mut connections = t.connections("acme", Role::Admin).await;
    connections
        .create_connection(google_at("revoked", &double, "1//revoked-refresh-token"))
        .await
        .unwrap();
    let test = async |connections: &mut Connections, id: &str| {
        connections
            .test_connection(pb::TestConnectionRequest {
                name: conn_name("acme", id),
            })
            .await
            .unwrap()
            .into_inner()
    };
    let good = test(&mut connections, "google").await;
    assert!(good.ok, "{good:?}");
    let revoked = test(&mut connections, "revoked").await;
    assert!(!revoked.ok);
    assert!(revoked.checks[0].message.contains("invalid_grant"), "{revoked:?}");
    let shown = format!("{revoked:?}");
    assert!(
        !shown.contains("1//revoked-refresh-token") && !shown.contains(CLIENT_SECRET),
        "{shown}"
    );
    t.stop().await;
}
