//! The `linkedin-ads` target through the gRPC API, against a local double of the DMP segment
//! API that enforces its versioned headers and request shapes (CONNECTORS.md "Wire details":
//! `linkedin-ads`; PRODUCT.md §6, §11, §12; issue 16).

use exportd::auth::Role;
use exportd::pb;
use serde_json::json;
use sha2::{Digest, Sha256};
use tonic::Code;

use crate::common::linkedin_double::{ACCOUNT, LinkedInDouble};
use crate::common::*;

const TOKEN: &str = "AQV-linkedin-access-token";

fn sha(value: &str) -> String {
    hex::encode(Sha256::digest(value.as_bytes()))
}

fn linkedin(env: &str, double: &LinkedInDouble) -> pb::CreateConnectionRequest {
    connection(
        env,
        "li",
        "LinkedIn",
        "linkedin-ads",
        &[("ad_account_id", ACCOUNT), ("base_url", &double.url)],
        &[("access_token", TOKEN)],
        true,
    )
}

#[tokio::test]
async fn a_segment_is_created_filled_in_batch_creates_and_mirrored_with_per_element_statuses() {
    let double = LinkedInDouble::start(TOKEN).await;
    let t = setup(Options::default()).await;
    t.connections("acme", Role::Admin)
        .await
        .create_connection(linkedin("acme", &double))
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

/// The company a B-to-B account `a<i>` stands for: its record and the element LinkedIn gets.
fn account(i: usize) -> (serde_json::Value, serde_json::Value) {
    let (name, domain) = (format!("a{i:03}"), format!("a{i:03}.example"));
    (
        json!({"id": name, "email": domain, "country": "DE"}),
        json!({"companyName": name, "companyEmailDomain": domain}),
    )
}

#[tokio::test]
async fn account_segments_fill_a_company_segment_and_contact_segments_are_refused_for_it() {
    let double = LinkedInDouble::start(TOKEN).await;
    let t = TestServer::start().await;
    t.connections("globex", Role::Admin)
        .await
        .create_connection(linkedin("globex", &double))
        .await
        .unwrap();
    let mut catalog = t.catalog("globex", Role::Admin).await;
    for (entity, kind) in [
        ("accounts", pb::EntityKind::Account),
        ("contacts", pb::EntityKind::Contact),
    ] {
        catalog
            .create_entity(customers_entity("globex", entity, kind))
            .await
            .unwrap();
    }
    let accounts: Vec<serde_json::Value> = (0..320).map(|i| account(i).0).collect();
    write_all(
        &mut catalog,
        vec![write("environments/globex/entities/accounts", accounts, &[])],
    )
    .await
    .unwrap();
    let key = create_pushed_segment(&mut catalog, "globex", "key", "accounts", "Key accounts").await;
    let keys = |range: std::ops::Range<usize>| vec![range.map(|i| format!("a{i:03}")).collect::<Vec<_>>()];
    set_members(&mut catalog, &key.name, keys(0..320)).await.unwrap();
    let buyers = create_pushed_segment(&mut catalog, "globex", "buyers", "contacts", "Buyers").await;
    double.refuse("a007.example");

    // Only account segments go to a COMPANY audience; a contact segment is refused as it is
    // saved, with PRODUCT.md §5's message, and nothing is sent.
    let mut exports = t.exports("globex", Role::Admin).await;
    let company_export = |id: &str, segment: &str| {
        let mut request = segment_export(
            "globex",
            id,
            id,
            "li",
            &[segment],
            &[("id", "company_name"), ("email", "email_domain")],
        );
        let export = request.export.as_mut().unwrap();
        export.sync_mode = pb::SyncMode::Mirror as i32;
        export.settings.insert("target".into(), "COMPANY".into());
        request
    };
    let status = expect_code(
        exports.create_export(company_export("people", &buyers.name)).await,
        Code::FailedPrecondition,
    );
    assert_eq!(reason(&status), "SEGMENT_NOT_ELIGIBLE");
    assert!(status.message().contains("'Buyers'"), "{}", status.message());
    assert!(
        status.message().contains("segments of type Account"),
        "{}",
        status.message()
    );
    assert!(double.calls().is_empty(), "{:?}", double.calls());

    create_export(&mut exports, company_export("key", &key.name)).await;
    let export = export_name("globex", "key");
    let run = run_export(&mut exports, &export).await;
    let first = wait_for_end(&mut exports, &run.name).await;
    assert_eq!(run_state(&first), pb::RunState::Succeeded, "{:?}", first.error);
    assert_eq!((first.records_exported, first.records_rejected), (319, 1));
    let segments = double.segments();
    let (id, (name, kind)) = segments.iter().next().expect("created");
    assert_eq!((name.as_str(), kind.as_str()), ("Key accounts", "COMPANY"));
    let members = double.members(*id);
    assert_eq!(members.len(), 319);
    assert!(members.contains(&account(0).1.to_string()), "{members:?}");
    let adds: Vec<serde_json::Value> = double
        .calls()
        .iter()
        .filter(|c| c.path.ends_with("/companies"))
        .flat_map(|c| c.body["elements"].as_array().unwrap().clone())
        .collect();
    assert_eq!(adds.len(), 320);
    let mut expected = account(5).1;
    expected["action"] = json!("ADD");
    assert!(
        adds.contains(&expected),
        "name and email domain, nothing else: {:?}",
        adds[0]
    );
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
        ("a007", "HTTP_400")
    );
    assert!(rejected[0].reason.contains("company identifier"), "{:?}", rejected[0]);

    // Ten accounts leave: REMOVE elements for the nine delivered, through /companies.
    set_members(&mut catalog, &key.name, keys(10..320)).await.unwrap();
    double.clear_calls();
    let run = run_export(&mut exports, &export).await;
    let second = wait_for_end(&mut exports, &run.name).await;
    assert_eq!(run_state(&second), pb::RunState::Succeeded, "{:?}", second.error);
    assert_eq!(second.records_removed, 9);
    let calls = double.calls();
    assert!(
        calls
            .iter()
            .all(|c| c.path == format!("/rest/dmpSegments/{id}/companies")),
        "{calls:?}"
    );
    let removes: Vec<&serde_json::Value> = calls
        .iter()
        .flat_map(|c| c.body["elements"].as_array().unwrap())
        .filter(|e| e["action"] == "REMOVE")
        .collect();
    assert_eq!(removes.len(), 9);
    assert_eq!(double.members(*id).len(), 310);
    assert!(!double.members(*id).contains(&account(0).1.to_string()));
    t.stop().await;
}
