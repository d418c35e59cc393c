//! The `linkedin-ads` target through the gRPC API, against a local double of the DMP segment
//! API that enforces its versioned headers and request shapes (CONNECTORS.md "Wire details":
//! `linkedin-ads`; PRODUCT.md §6, §11, §12; issue 16).

use exportd::auth::Role;
use exportd::pb;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::common::linkedin_double::{ACCOUNT, LinkedInDouble};
use crate::common::*;

const TOKEN: &str = "AQV-linkedin-access-token";

fn sha(value: &str) -> String {
    hex::encode(Sha256::digest(value.as_bytes()))
}

#[tokio::test]
async fn a_segment_is_created_filled_in_batch_creates_and_mirrored_with_per_element_statuses() {
    let double = LinkedInDouble::start(TOKEN).await;
    let t = setup(Options::default()).await;
    t.connections("acme", Role::Admin)
        .await
        .create_connection(connection(
            "acme",
            "li",
            "LinkedIn",
            "linkedin-ads",
            &[("ad_account_id", ACCOUNT), ("base_url", &double.url)],
            &[("access_token", TOKEN)],
            true,
        ))
        .await
        .unwrap();
    let mut catalog = t.catalog("acme", Role::Admin).await;
    let people: Vec<serde_json::Value> = (0..320)
        .map(|i| json!({"id": format!("p{i:03}"), "email": format!("p{i:03}@example.com"), "country": "SG"}))
        .collect();
    write_all(&mut catalog, vec![write(CUSTOMERS, people, &[])])
        .await
        .unwrap();
    create_pushed_segment(&mut catalog, "acme", "pros", "customers", "Pros").await;
    let pros = "environments/acme/segments/pros";
    let keys = |range: std::ops::Range<usize>| vec![range.map(|i| format!("p{i:03}")).collect::<Vec<_>>()];
    set_members(&mut catalog, pros, keys(0..320)).await.unwrap();
    double.refuse(&sha("p007@example.com"));

    let mut exports = t.exports("acme", Role::Admin).await;
    let mut request = segment_export("acme", "pros", "Pros", "li", &[pros], &[("email", "email")]);
    request.export.as_mut().unwrap().sync_mode = pb::SyncMode::Mirror as i32;
    create_export(&mut exports, request).await;
    let export = export_name("acme", "pros");
    let run = run_export(&mut exports, &export).await;
    let first = wait_for_end(&mut exports, &run.name).await;
    assert_eq!(run_state(&first), pb::RunState::Succeeded, "{:?}", first.error);
    assert_eq!((first.records_exported, first.records_rejected), (319, 1));
    let segments = double.segments();
    let (id, (name, kind)) = segments.iter().next().expect("created");
    assert_eq!((name.as_str(), kind.as_str()), ("Pros", "USER"));
    assert_eq!(double.members(*id).len(), 319);
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
    assert_eq!(
        (rejected[0].key.as_str(), rejected[0].code.as_str()),
        ("p007", "HTTP_400")
    );

    // Ten leave: REMOVE elements for exactly them; the refused one is sent again.
    set_members(&mut catalog, pros, keys(10..320)).await.unwrap();
    double.clear_calls();
    let run = run_export(&mut exports, &export).await;
    let second = wait_for_end(&mut exports, &run.name).await;
    assert_eq!(run_state(&second), pb::RunState::Succeeded, "{:?}", second.error);
    assert_eq!(
        second.records_removed, 9,
        "p007 was never delivered, so it did not leave"
    );
    let calls = double.calls();
    assert!(
        calls.iter().all(|c| c.path.ends_with("/users")),
        "the segment is remembered: {calls:?}"
    );
    let removes: Vec<&serde_json::Value> = calls
        .iter()
        .flat_map(|c| c.body["elements"].as_array().unwrap())
        .filter(|e| e["action"] == "REMOVE")
        .collect();
    assert_eq!(removes.len(), 9);
    assert_eq!(double.members(*id).len(), 310);
    assert!(!double.members(*id).contains(&sha("p000@example.com")));
    t.stop().await;
}
