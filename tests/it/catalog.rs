//! CatalogService through the API: entities, records, segments, eligibility, refresh state.

use exportd::auth::Role;
use exportd::pb;
use serde_json::json;
use tonic::Code;

use crate::common::*;

async fn get_entity(catalog: &mut Catalog, name: &str) -> pb::Entity {
    catalog
        .get_entity(pb::GetEntityRequest { name: name.into() })
        .await
        .unwrap()
        .into_inner()
}

/// A test server whose environment `acme` has the PROFILE entity `customers`, and an admin's
/// catalog client.
async fn server_with_customers() -> (TestServer, Catalog) {
    let t = TestServer::start().await;
    let mut admin = t.catalog("acme", Role::Admin).await;
    admin
        .create_entity(customers_entity("acme", "customers", pb::EntityKind::Profile))
        .await
        .unwrap();
    (t, admin)
}

#[tokio::test]
async fn entities_are_created_listed_and_validated() {
    let t = TestServer::start().await;
    let mut admin = t.catalog("acme", Role::Admin).await;
    let created = admin
        .create_entity(customers_entity("acme", "customers", pb::EntityKind::Profile))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.name, CUSTOMERS);
    assert_eq!(created.fields.len(), 6);
    assert_eq!(created.fields[3].r#type, pb::FieldType::Double as i32);
    assert_eq!(created.fields[1].mapping, "crm.email");
    assert_eq!(created.record_count, 0);

    let status = expect_code(
        admin
            .create_entity(customers_entity("acme", "customers", pb::EntityKind::Profile))
            .await,
        Code::AlreadyExists,
    );
    assert_eq!(reason(&status), "RESOURCE_ALREADY_EXISTS");

    let mut bad = customers_entity("acme", "bad", pb::EntityKind::Unspecified);
    let e = bad.entity.as_mut().unwrap();
    e.fields.push(field("Email", pb::FieldType::String));
    e.fields.push(field("1st", pb::FieldType::Unspecified));
    e.primary_key = "ltv".into();
    let status = expect_code(admin.create_entity(bad).await, Code::InvalidArgument);
    let mut fields = bad_fields(&status);
    fields.sort();
    assert_eq!(
        fields,
        vec![
            "entity.fields[6].name",
            "entity.fields[7].name",
            "entity.fields[7].type",
            "entity.kind",
            "entity.primary_key"
        ]
    );
    let list = admin
        .list_entities(pb::ListEntitiesRequest {
            parent: "environments/acme".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.entities.len(), 1);

    let mut viewer = t.catalog("acme", Role::Viewer).await;
    assert_eq!(
        get_entity(&mut viewer, CUSTOMERS).await.display_name,
        "Entity customers"
    );
    expect_code(
        viewer
            .create_entity(customers_entity("acme", "x", pb::EntityKind::Profile))
            .await,
        Code::PermissionDenied,
    );
    t.stop().await;
}

#[tokio::test]
async fn records_upsert_delete_and_count_with_a_rising_change_sequence() {
    let (t, mut admin) = server_with_customers().await;
    let totals = write_all(
        &mut admin,
        vec![
            write(CUSTOMERS, ten_customers()[..6].to_vec(), &[]),
            write(CUSTOMERS, ten_customers()[4..].to_vec(), &[]),
        ],
    )
    .await
    .unwrap();
    assert_eq!(totals.upserted, 12);
    assert_eq!(totals.deleted, 0);
    let entity = get_entity(&mut admin, CUSTOMERS).await;
    assert_eq!(entity.record_count, 10);
    let seq_after_insert = entity.change_sequence;
    assert_eq!(totals.change_sequence, seq_after_insert);

    // Update one, delete two (one of them twice, one unknown), nulls and absent fields are fine.
    let totals = write_all(
        &mut admin,
        vec![write(
            CUSTOMERS,
            vec![json!({"id": "c01", "email": null, "ltv": 5})],
            &["c02", "c03", "c03", "nope"],
        )],
    )
    .await
    .unwrap();
    assert_eq!((totals.upserted, totals.deleted), (1, 2));
    let entity = get_entity(&mut admin, CUSTOMERS).await;
    assert_eq!(entity.record_count, 8);
    assert!(entity.change_sequence > seq_after_insert);

    // The store keeps tombstones with the later sequence, for incremental exports.
    let name = exportd::domain::names::EntityName::new("acme", "customers");
    let changes = t
        .state
        .store
        .read_changes(&name, seq_after_insert, i64::MAX, None, 100)
        .await
        .unwrap();
    let summary: Vec<(String, bool)> = changes.iter().map(|r| (r.key.clone(), r.deleted)).collect();
    assert_eq!(
        summary,
        vec![("c01".into(), false), ("c02".into(), true), ("c03".into(), true)]
    );
    assert!(changes.iter().all(|r| r.seq == entity.change_sequence));
    let c01 = &changes[0].data;
    assert_eq!(c01["ltv"], json!(5.0));
    assert!(c01.get("country").is_none(), "an upsert replaces the whole record");

    // Re-inserting a deleted key brings the record back.
    write_all(&mut admin, vec![write(CUSTOMERS, vec![json!({"id": "c02"})], &[])])
        .await
        .unwrap();
    assert_eq!(get_entity(&mut admin, CUSTOMERS).await.record_count, 9);
    t.stop().await;
}

/// Large messages are written in several statements (and on PostgreSQL first tried as one
/// COPY); the counts must come out exact whichever way a message went in: all new, all stored,
/// or mixed with tombstones.
#[tokio::test]
async fn large_messages_count_new_replaced_and_revived_records_exactly() {
    let (t, mut admin) = server_with_customers().await;
    let customers = |range: std::ops::Range<usize>, country: &str| -> Vec<serde_json::Value> {
        range
            .map(|i| json!({"id": format!("k{i:05}"), "country": country}))
            .collect()
    };
    let keys = |range: std::ops::Range<usize>| -> Vec<String> { range.map(|i| format!("k{i:05}")).collect() };
    // 2,500 new records in one message.
    write_all(&mut admin, vec![write(CUSTOMERS, customers(0..2500, "ID"), &[])])
        .await
        .unwrap();
    assert_eq!(get_entity(&mut admin, CUSTOMERS).await.record_count, 2500);
    // 300 deleted: tombstones.
    let deletes = keys(0..300);
    let deletes: Vec<&str> = deletes.iter().map(String::as_str).collect();
    let totals = write_all(&mut admin, vec![write(CUSTOMERS, vec![], &deletes)])
        .await
        .unwrap();
    assert_eq!(totals.deleted, 300);
    assert_eq!(get_entity(&mut admin, CUSTOMERS).await.record_count, 2200);
    // One message: 200 tombstones revived, 1,800 live records replaced, 700 new ones.
    let totals = write_all(&mut admin, vec![write(CUSTOMERS, customers(100..2800, "SG"), &[])])
        .await
        .unwrap();
    assert_eq!(totals.upserted, 2700);
    let entity = get_entity(&mut admin, CUSTOMERS).await;
    assert_eq!(entity.record_count, 2200 + 200 + 300);
    // Every record written last carries the last sequence and its new values.
    let name = exportd::domain::names::EntityName::new("acme", "customers");
    let changed = t
        .state
        .store
        .read_changes(&name, entity.change_sequence - 1, entity.change_sequence, None, 10_000)
        .await
        .unwrap();
    assert_eq!(changed.len(), 2700);
    assert!(changed.iter().all(|r| !r.deleted && r.data["country"] == json!("SG")));
    t.stop().await;
}

/// Keys and values keep every character, whether a message inserts new records (on
/// PostgreSQL one COPY, whose text format gives tab, newline and backslash a meaning) or
/// replaces stored ones (an upsert).
#[tokio::test]
async fn records_keep_every_character_when_inserted_and_when_replaced() {
    let (t, mut admin) = server_with_customers().await;
    let awkward = ["tab\there", "new\nline\r\n", "back\\slash\\N", "quote\"d ü 😀", "plain"];
    let records = |suffix: &str| -> Vec<serde_json::Value> {
        awkward
            .iter()
            .map(|key| json!({"id": key, "email": format!("{key}{suffix}"), "country": "\\t"}))
            .collect()
    };
    let name = exportd::domain::names::EntityName::new("acme", "customers");
    for (round, suffix) in [(1, "@new"), (2, "@replaced")] {
        let totals = write_all(&mut admin, vec![write(CUSTOMERS, records(suffix), &[])])
            .await
            .unwrap();
        assert_eq!(totals.upserted, awkward.len() as i64, "round {round}");
        assert_eq!(get_entity(&mut admin, CUSTOMERS).await.record_count, 5, "round {round}");
        let stored = t.state.store.read_records(&name, None, 100).await.unwrap();
        let mut expected: Vec<&str> = awkward.to_vec();
        expected.sort();
        assert_eq!(stored.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(), expected);
        for record in &stored {
            assert_eq!(record.data["id"], json!(record.key), "round {round}");
            assert_eq!(
                record.data["email"],
                json!(format!("{}{suffix}", record.key)),
                "round {round}"
            );
            assert_eq!(record.data["country"], json!("\\t"), "round {round}");
        }
    }
    t.stop().await;
}

#[tokio::test]
async fn a_bad_message_ends_the_stream_and_earlier_messages_stay_committed() {
    let (t, mut admin) = server_with_customers().await;
    let cases: Vec<(serde_json::Value, &str)> = vec![
        (json!({"email": "x@y"}), "upserts[1].id"),
        (json!({"id": "z1", "ltv": "lots"}), "upserts[1].ltv"),
        (json!({"id": "z1", "vip": 1}), "upserts[1].vip"),
        (json!({"id": "z1", "shoe_size": 42}), "upserts[1].shoe_size"),
        (json!({"id": true}), "upserts[1].id"),
    ];
    for (n, (bad, field)) in cases.into_iter().enumerate() {
        let before = get_entity(&mut admin, CUSTOMERS).await;
        let status = write_all(
            &mut admin,
            vec![
                write(CUSTOMERS, vec![json!({"id": format!("ok-{n}")})], &[]),
                write(CUSTOMERS, vec![json!({"id": "fine"}), bad.clone()], &[]),
                write(CUSTOMERS, vec![json!({"id": "never"})], &[]),
            ],
        )
        .await
        .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{bad}");
        assert_eq!(bad_fields(&status), vec![field]);
        use tonic_types::StatusExt;
        let info = status.get_error_details().error_info().cloned().unwrap();
        assert_eq!(info.metadata["committed_messages"], "1");
        // Only the first message was applied: nothing of the bad one, nothing after it.
        let after = get_entity(&mut admin, CUSTOMERS).await;
        assert_eq!(after.record_count, before.record_count + 1, "{bad}");
    }
    let status = write_all(
        &mut admin,
        vec![write(
            "environments/acme/entities/missing",
            vec![json!({"id": "a"})],
            &[],
        )],
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = write_all(&mut admin, vec![write("not-a-name", vec![], &[])])
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&status), vec!["entity"]);
    let mut contributor = t.catalog("acme", Role::Contributor).await;
    let status = write_all(&mut contributor, vec![write(CUSTOMERS, vec![json!({"id": "a"})], &[])])
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    t.stop().await;
}

/// A refused message names every bad field of every record in it (up to a bound, saying how
/// many more there are), and an INT64 beyond its range says so.
#[tokio::test]
async fn a_refused_message_lists_every_bad_field() {
    let (t, mut admin) = server_with_customers().await;
    let mut entity = customers_entity("acme", "visits", pb::EntityKind::Other);
    entity
        .entity
        .as_mut()
        .unwrap()
        .fields
        .push(field("count", pb::FieldType::Int64));
    admin.create_entity(entity).await.unwrap();
    let visits = "environments/acme/entities/visits";
    let status = write_all(
        &mut admin,
        vec![write(
            visits,
            vec![
                json!({"id": "a", "ltv": "lots", "vip": 1}),
                json!({"id": "b"}),
                json!({"id": "c", "count": "9223372036854775808", "shoe_size": 42}),
            ],
            &[],
        )],
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let mut fields = bad_fields(&status);
    fields.sort();
    assert_eq!(
        fields,
        [
            "upserts[0].ltv",
            "upserts[0].vip",
            "upserts[2].count",
            "upserts[2].shoe_size"
        ]
    );
    use tonic_types::StatusExt;
    let details = status.get_error_details();
    let overflow = details
        .bad_request()
        .unwrap()
        .field_violations
        .iter()
        .find(|v| v.field == "upserts[2].count")
        .unwrap()
        .description
        .clone();
    assert!(overflow.contains("out of range"), "{overflow}");
    assert!(!overflow.contains("whole number"), "{overflow}");
    assert_eq!(
        get_entity(&mut admin, visits).await.record_count,
        0,
        "nothing was written"
    );

    // Many bad records: the first ones are listed, and how many more there are.
    let many: Vec<serde_json::Value> = (0..80).map(|i| json!({"id": format!("r{i}"), "vip": "no"})).collect();
    let status = write_all(&mut admin, vec![write(visits, many, &[])]).await.unwrap_err();
    let fields = bad_fields(&status);
    assert_eq!(fields.len(), 20, "{fields:?}");
    assert_eq!(fields[0], "upserts[0].vip");
    assert_eq!(fields[19], "upserts");
    let details = status.get_error_details();
    let note = &details.bad_request().unwrap().field_violations[19].description;
    assert!(note.contains("61 more bad fields"), "{note}");
    t.stop().await;
}

#[tokio::test]
async fn rules_give_exact_member_counts() {
    let (t, mut admin) = server_with_customers().await;
    let mut customers = ten_customers();
    customers.push(json!({"id": "n1"})); // every other field null
    write_all(&mut admin, vec![write(CUSTOMERS, customers, &[])])
        .await
        .unwrap();
    // ltv = i*100; countries cycle ID, SG, FR; vip on even i; tags "new" for i < 3.
    let cases = [
        ("ltv > 500.0", 4),
        ("ltv >= 500", 5),
        ("ltv > 200.0 && country == \"ID\"", 3),
        ("country in [\"ID\", \"SG\"]", 7),
        ("vip", 5),
        ("!vip && ltv < 500.0", 2),
        ("\"new\" in tags", 3),
        ("email.endsWith(\"@example.com\")", 10),
        ("country != \"FR\"", 7),
        ("email == null", 1),
        ("email != null", 10),
    ];
    for (i, (rule, expected)) in cases.iter().enumerate() {
        let segment = create_rule_segment(&mut admin, "acme", &format!("s{i}"), "customers", rule)
            .await
            .unwrap();
        assert_eq!(segment.member_count, *expected, "{rule}");
        assert_eq!(segment.r#type, pb::SegmentType::Profile as i32);
    }
    t.stop().await;
}

#[tokio::test]
async fn bad_rules_say_where_and_create_nothing() {
    let (t, mut admin) = server_with_customers().await;
    for (rule, fragment) in [
        ("ltv > ", "line 1"),
        ("shoe_size > 40", "unknown field 'shoe_size'"),
        ("country > 5", "column"),
        ("", ""),
    ] {
        let status = expect_code(
            create_rule_segment(&mut admin, "acme", "bad", "customers", rule)
                .await
                .map(tonic::Response::new),
            Code::InvalidArgument,
        );
        assert_eq!(bad_fields(&status), vec!["segment.rule"], "{rule}");
        assert!(status.message().contains(fragment), "{rule}: {}", status.message());
    }
    admin
        .create_entity(customers_entity("acme", "orders", pb::EntityKind::Other))
        .await
        .unwrap();
    let status = expect_code(
        create_rule_segment(&mut admin, "acme", "bad", "orders", "vip")
            .await
            .map(tonic::Response::new),
        Code::InvalidArgument,
    );
    assert_eq!(bad_fields(&status), vec!["segment.entity"]);
    let list = admin
        .list_segments(pb::ListSegmentsRequest {
            parent: "environments/acme".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(list.segments.is_empty());
    t.stop().await;
}

#[tokio::test]
async fn pushed_members_are_replaced_as_a_whole_and_unknown_keys_change_nothing() {
    let (t, mut admin) = server_with_customers().await;
    write_all(&mut admin, vec![write(CUSTOMERS, ten_customers(), &[])])
        .await
        .unwrap();
    let segment = create_pushed_segment(&mut admin, "acme", "vip", "customers", "VIP").await;
    assert_eq!(segment.member_count, 0);
    let keys = |ks: &[&str]| ks.iter().map(|k| k.to_string()).collect::<Vec<_>>();

    let s = set_members(
        &mut admin,
        &segment.name,
        vec![keys(&["c01", "c02"]), keys(&["c03", "c01"])],
    )
    .await
    .unwrap();
    assert_eq!(s.member_count, 3);
    let s = set_members(&mut admin, &segment.name, vec![keys(&["c09"])])
        .await
        .unwrap();
    assert_eq!(s.member_count, 1, "the stream replaces the list");

    let status = set_members(&mut admin, &segment.name, vec![keys(&["c01"]), keys(&["c02", "ghost"])])
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(bad_fields(&status), vec!["keys[1]"]);
    let now = admin
        .get_segment(pb::GetSegmentRequest {
            name: segment.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(now.member_count, 1);
    let members = t
        .state
        .store
        .member_keys(
            &t.state
                .store
                .segment_or_not_found(&exportd::domain::names::SegmentName::new("acme", "vip"))
                .await
                .unwrap(),
            None,
            10,
        )
        .await
        .unwrap();
    assert_eq!(members, vec!["c09"]);

    // Deleting a member's record removes it from the segment.
    set_members(&mut admin, &segment.name, vec![keys(&["c04", "c05"])])
        .await
        .unwrap();
    write_all(&mut admin, vec![write(CUSTOMERS, vec![], &["c05"])])
        .await
        .unwrap();
    let now = admin
        .get_segment(pb::GetSegmentRequest {
            name: segment.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(now.member_count, 1);

    // Rule segments do not take pushed members; an empty stream names no segment.
    create_rule_segment(&mut admin, "acme", "rich", "customers", "ltv > 100.0")
        .await
        .unwrap();
    let status = set_members(&mut admin, "environments/acme/segments/rich", vec![keys(&["c01"])])
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    let status = set_members(&mut admin, "environments/acme/segments/rich", vec![])
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    // The entity cannot go while segments use it.
    let status = expect_code(
        admin
            .delete_entity(pb::DeleteEntityRequest { name: CUSTOMERS.into() })
            .await,
        Code::FailedPrecondition,
    );
    assert_eq!(reason(&status), "ENTITY_IN_USE");
    for s in ["vip", "rich"] {
        admin
            .delete_segment(pb::DeleteSegmentRequest {
                name: format!("environments/acme/segments/{s}"),
            })
            .await
            .unwrap();
    }
    admin
        .delete_entity(pb::DeleteEntityRequest { name: CUSTOMERS.into() })
        .await
        .unwrap();
    expect_code(
        admin.get_entity(pb::GetEntityRequest { name: CUSTOMERS.into() }).await,
        Code::NotFound,
    );
    t.stop().await;
}

#[tokio::test]
async fn refresh_state_moves_through_start_and_complete() {
    let (t, mut admin) = server_with_customers().await;
    write_all(&mut admin, vec![write(CUSTOMERS, ten_customers()[..5].to_vec(), &[])])
        .await
        .unwrap();
    let segment = create_rule_segment(&mut admin, "acme", "rich", "customers", "ltv >= 300.0")
        .await
        .unwrap();
    assert_eq!(segment.member_count, 2);

    let status = expect_code(
        admin
            .complete_refresh(pb::CompleteRefreshRequest { name: CUSTOMERS.into() })
            .await,
        Code::FailedPrecondition,
    );
    assert_eq!(reason(&status), "REFRESH_NOT_STARTED");
    let started = admin
        .start_refresh(pb::StartRefreshRequest { name: CUSTOMERS.into() })
        .await
        .unwrap()
        .into_inner();
    assert!(started.refreshing && started.last_refresh_time.is_none());
    assert!(get_entity(&mut admin, CUSTOMERS).await.refreshing);
    let done = admin
        .complete_refresh(pb::CompleteRefreshRequest { name: CUSTOMERS.into() })
        .await
        .unwrap()
        .into_inner();
    assert!(!done.refreshing && done.last_refresh_time.is_some());

    // Completing a rule segment's refresh recomputes it.
    write_all(&mut admin, vec![write(CUSTOMERS, ten_customers()[5..].to_vec(), &[])])
        .await
        .unwrap();
    admin
        .start_refresh(pb::StartRefreshRequest {
            name: segment.name.clone(),
        })
        .await
        .unwrap();
    let done = admin
        .complete_refresh(pb::CompleteRefreshRequest {
            name: segment.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!done.refreshing);
    let now = admin
        .get_segment(pb::GetSegmentRequest {
            name: segment.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(now.member_count, 7);

    for bad in ["environments/acme/connections/x", "nonsense"] {
        let status = expect_code(
            admin.start_refresh(pb::StartRefreshRequest { name: bad.into() }).await,
            Code::InvalidArgument,
        );
        assert_eq!(bad_fields(&status), vec!["name"]);
    }
    t.stop().await;
}

#[tokio::test]
async fn a_system_refresh_recomputes_rule_segments() {
    let (t, mut admin) = server_with_customers().await;
    let segment = create_rule_segment(&mut admin, "acme", "fr", "customers", "country == \"FR\"")
        .await
        .unwrap();
    assert_eq!(segment.member_count, 0);
    write_all(&mut admin, vec![write(CUSTOMERS, ten_customers(), &[])])
        .await
        .unwrap();

    let refresh = admin
        .run_system_refresh(pb::RunSystemRefreshRequest {
            parent: "environments/acme".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(refresh.name.starts_with("environments/acme/systemRefreshes/"));
    let finished = wait_for_system_refresh(&mut admin, &refresh.name).await;
    assert_eq!(finished.state, pb::SystemRefreshState::Succeeded as i32);
    assert_eq!(finished.segments_refreshed, 1);
    assert!(finished.end_time.is_some());
    let now = admin
        .get_segment(pb::GetSegmentRequest {
            name: segment.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(now.member_count, 3);
    assert!(now.last_refresh_time.is_some());
    let entity = get_entity(&mut admin, CUSTOMERS).await;
    assert!(entity.last_refresh_time.is_some() && !entity.refreshing);

    let mut viewer = t.catalog("acme", Role::Viewer).await;
    viewer
        .get_system_refresh(pb::GetSystemRefreshRequest {
            name: refresh.name.clone(),
        })
        .await
        .unwrap();
    expect_code(
        viewer
            .run_system_refresh(pb::RunSystemRefreshRequest {
                parent: "environments/acme".into(),
            })
            .await,
        Code::PermissionDenied,
    );
    t.stop().await;
}

/// UpdateEntity: a schema evolves without deleting what reads it. Fields are added and their
/// descriptions changed; a field that a rule or a mapping reads cannot be removed or retyped,
/// a field with stored values cannot be retyped, and a removed field takes its values along.
#[tokio::test]
async fn entities_evolve_without_deleting_what_reads_them() {
    use tonic_types::StatusExt;

    let t = setup(Options::default()).await;
    let mut admin = t.catalog("acme", Role::Admin).await;
    let mut exports = t.exports("acme", Role::Admin).await;
    create_export(
        &mut exports,
        segment_export(
            "acme",
            "mailing",
            "Mailing",
            "files",
            &[VIP],
            &[("email", "email_address")],
        ),
    )
    .await;
    let original = get_entity(&mut admin, CUSTOMERS).await;
    let update = |fields: Vec<pb::EntityField>| pb::UpdateEntityRequest {
        entity: Some(pb::Entity {
            name: CUSTOMERS.into(),
            fields,
            ..Default::default()
        }),
        update_mask: mask(&["fields"]),
        validate_only: false,
    };
    let without = |names: &[&str]| -> Vec<pb::EntityField> {
        original
            .fields
            .iter()
            .filter(|f| !names.contains(&f.name.as_str()))
            .cloned()
            .collect()
    };
    let retyped = |name: &str, ty: pb::FieldType| -> Vec<pb::EntityField> {
        original
            .fields
            .iter()
            .map(|f| if f.name == name { field(name, ty) } else { f.clone() })
            .collect()
    };

    // What a rule or a mapping reads stays, with its type; the status names every reader.
    for (fields, readers) in [
        (without(&["vip"]), vec![VIP.to_string()]),
        (without(&["email"]), vec![export_name("acme", "mailing")]),
        (
            without(&["vip", "email"]),
            vec![VIP.to_string(), export_name("acme", "mailing")],
        ),
        (retyped("vip", pb::FieldType::String), vec![VIP.to_string()]),
    ] {
        let status = expect_code(admin.update_entity(update(fields)).await, Code::FailedPrecondition);
        assert_eq!(reason(&status), "FIELD_IN_USE");
        let subjects: Vec<String> = status
            .get_error_details()
            .precondition_failure()
            .unwrap()
            .violations
            .iter()
            .map(|v| v.subject.clone())
            .collect();
        assert_eq!(subjects, readers, "{}", status.message());
        for reader in &readers {
            assert!(status.message().contains(reader.as_str()), "{}", status.message());
        }
    }
    // Stored values would not fit a new type.
    let status = expect_code(
        admin.update_entity(update(retyped("ltv", pb::FieldType::String))).await,
        Code::FailedPrecondition,
    );
    assert_eq!(reason(&status), "FIELD_HAS_VALUES");
    assert!(status.message().contains("10 stored records"), "{}", status.message());
    // The key, the kind and the key's name do not change; unknown paths are refused.
    let status = expect_code(
        admin.update_entity(update(without(&["id"]))).await,
        Code::InvalidArgument,
    );
    assert_eq!(bad_fields(&status), ["entity.fields"]);
    let mut kind = update(original.fields.clone());
    kind.entity.as_mut().unwrap().kind = pb::EntityKind::Account as i32;
    let status = expect_code(admin.update_entity(kind).await, Code::InvalidArgument);
    assert_eq!(bad_fields(&status), ["entity.kind"]);
    let mut key = update(original.fields.clone());
    key.update_mask = mask(&["primary_key"]);
    let status = expect_code(admin.update_entity(key).await, Code::InvalidArgument);
    assert_eq!(bad_fields(&status), ["update_mask"]);
    let mut twice = original.fields.clone();
    twice.push(field("EMAIL", pb::FieldType::String));
    let status = expect_code(admin.update_entity(update(twice)).await, Code::InvalidArgument);
    assert_eq!(bad_fields(&status), ["entity.fields[6].name"]);
    assert_eq!(get_entity(&mut admin, CUSTOMERS).await, original, "nothing changed");

    // validate_only shows the result and stores nothing.
    let mut added = original.fields.clone();
    added.push(field("score", pb::FieldType::Int64));
    let mut check = update(added.clone());
    check.validate_only = true;
    let shown = admin.update_entity(check).await.unwrap().into_inner();
    assert_eq!(shown.fields, added);
    assert_eq!(get_entity(&mut admin, CUSTOMERS).await, original);
    // … and runs every check of a real update.
    let mut check = update(without(&["vip"]));
    check.validate_only = true;
    let status = expect_code(admin.update_entity(check).await, Code::FailedPrecondition);
    assert_eq!(reason(&status), "FIELD_IN_USE");

    // Added fields, a new description and display name; records use the new field at once.
    let mut described = added.clone();
    described[2].description = "where they live".into();
    described[2].mapping = "crm.address.country".into();
    let updated = admin
        .update_entity(pb::UpdateEntityRequest {
            entity: Some(pb::Entity {
                name: CUSTOMERS.into(),
                display_name: "Customers (v2)".into(),
                fields: described.clone(),
                ..Default::default()
            }),
            update_mask: None,
            validate_only: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.display_name, "Customers (v2)");
    assert_eq!(updated.fields, described);
    assert_eq!(updated.record_count, 10);
    assert_eq!(get_entity(&mut admin, CUSTOMERS).await, updated);
    write_all(
        &mut admin,
        vec![write(CUSTOMERS, vec![json!({"id": "c00", "score": 7})], &[])],
    )
    .await
    .unwrap();

    // A field nothing reads goes, with its values: added again, it starts empty.
    let without_tags: Vec<pb::EntityField> = described.iter().filter(|f| f.name != "tags").cloned().collect();
    admin.update_entity(update(without_tags.clone())).await.unwrap();
    let mut tags_again = without_tags.clone();
    tags_again.push(field("tags", pb::FieldType::String));
    let last = admin.update_entity(update(tags_again)).await.unwrap().into_inner();
    assert_eq!(last.fields.last().unwrap().r#type, pb::FieldType::String as i32);
    create_export(&mut exports, data_out("acme", "dump", "Dump", "files", &[CUSTOMERS])).await;
    let run = run_export(&mut exports, &export_name("acme", "dump")).await;
    let done = wait_for_end(&mut exports, &run.name).await;
    assert_eq!(run_state(&done), pb::RunState::Succeeded, "{done:#?}");
    let files: Vec<String> = files_under(&out(&t).join("dump"))
        .into_iter()
        .filter(|f| f.ends_with(".csv"))
        .collect();
    let text = std::fs::read_to_string(out(&t).join("dump").join(&files[0])).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("id,email,country,ltv,vip,score,tags"));
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 10);
    assert!(rows.iter().all(|row| row.ends_with(',')), "tags are empty: {rows:#?}");
    assert!(rows[0].starts_with("c00,") && rows[0].ends_with(",7,"), "{}", rows[0]);

    // Only admins change schemas.
    let mut contributor = t.catalog("acme", Role::Contributor).await;
    expect_code(
        contributor.update_entity(update(original.fields.clone())).await,
        Code::PermissionDenied,
    );
    t.stop().await;
}
