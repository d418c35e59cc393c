//! ExportService management through the API: validation with its fields, eligibility and
//! limits, roles and `your_permission`, list order/filter/paging, update/delete/duplicate/
//! detach, DeleteConnection/DeleteEntity/DeleteSegment while exports use them, and batch
//! schedules.

use chrono::{Datelike, TimeZone, Timelike, Utc};
use exportd::auth::Role;
use exportd::domain::names::ExportName;
use exportd::domain::run::RunState;
use exportd::pb;
use tonic::Code;
use tonic_types::StatusExt;

use crate::common::*;

async fn get(exports: &mut Exports, name: &str) -> pb::Export {
    exports
        .get_export(pb::GetExportRequest { name: name.into() })
        .await
        .unwrap()
        .into_inner()
}

async fn create(exports: &mut Exports, request: pb::CreateExportRequest) -> pb::Export {
    exports.create_export(request).await.unwrap().into_inner()
}

async fn list(exports: &mut Exports, filter: &str, order_by: &str) -> Vec<String> {
    exports
        .list_exports(pb::ListExportsRequest {
            parent: ACME.into(),
            filter: filter.into(),
            order_by: order_by.into(),
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|s| panic!("list {filter:?} {order_by:?}: {s:?}"))
        .into_inner()
        .exports
        .into_iter()
        .map(|e| e.display_name)
        .collect()
}

#[tokio::test]
async fn a_new_export_has_the_defaults_and_reads_back() {
    let t = acme().await;
    let mut admin = t.exports("acme", Role::Admin).await;
    let created = create(
        &mut admin,
        data_out("acme", "nightly", "Nightly", "files", &[CUSTOMERS]),
    )
    .await;
    assert_eq!(created.name, export_name("acme", "nightly"));
    assert_eq!(created.connection, conn_name("acme", "files"));
    assert_eq!(created.connection_type, "local-files");
    assert_eq!(created.connection_display_name, "Files");
    assert_eq!(created.kind, pb::ExportKind::DataOut as i32);
    assert_eq!(created.entities, vec![CUSTOMERS]);
    assert_eq!(created.sync_mode, pb::SyncMode::Full as i32);
    assert_eq!(created.state, pb::ExportState::Active as i32);
    assert_eq!(created.your_permission, pb::Permission::Edit as i32);
    assert_eq!(created.creator, "tester");
    assert!(!created.etag.is_empty());
    assert!(created.last_run.is_none() && created.last_refreshed_time.is_none());
    let schedule = created.schedule.clone().unwrap();
    assert!(schedule.enabled, "a new export's schedule is on");
    assert!(matches!(
        schedule.trigger,
        Some(pb::schedule::Trigger::SystemRefresh(_))
    ));
    assert!(schedule.next_run_time.is_none(), "system refresh has no clock time");
    assert_eq!(get(&mut admin, &created.name).await, created);

    // A generated id, and a segment export with its member counts.
    let segment = create(
        &mut admin,
        segment_export("acme", "", "Audience", "mc", &[VIP, FRANCE], &[("email", "email")]),
    )
    .await;
    assert!(
        segment.name.starts_with("environments/acme/exports/export-"),
        "{}",
        segment.name
    );
    assert_eq!(segment.segments, vec![VIP, FRANCE]);
    assert_eq!(segment.segment_member_counts[VIP], 5);
    assert_eq!(segment.segment_member_counts[FRANCE], 3);
    assert!(segment.warnings.is_empty());
    assert_eq!(segment.connection_type, "mailchimp");

    let status = expect_code(
        admin
            .create_export(data_out("acme", "nightly", "Again", "files", &[CUSTOMERS]))
            .await,
        Code::AlreadyExists,
    );
    assert_eq!(reason(&status), "RESOURCE_ALREADY_EXISTS");
    expect_code(
        admin
            .get_export(pb::GetExportRequest {
                name: export_name("acme", "missing"),
            })
            .await,
        Code::NotFound,
    );
    // No role in the environment: the export does not exist for the caller.
    let mut stranger = t.exports("globex", Role::Admin).await;
    expect_code(
        stranger.get_export(pb::GetExportRequest { name: created.name }).await,
        Code::NotFound,
    );
    t.stop().await;
}

#[tokio::test]
async fn every_validation_rule_names_its_field() {
    let t = acme().await;
    let mut connections = t.connections("acme", Role::Admin).await;
    connections
        .create_connection(connection(
            "acme",
            "fb",
            "Facebook",
            "facebook-ads",
            &[("ad_account_id", "1")],
            &[("access_token", "t")],
            true,
        ))
        .await
        .unwrap();
    connections
        .create_connection(connection(
            "acme",
            "li",
            "LinkedIn",
            "linkedin-ads",
            &[("ad_account_id", "1")],
            &[("access_token", "t")],
            true,
        ))
        .await
        .unwrap();
    t.catalog("globex", Role::Admin)
        .await
        .create_entity(customers_entity("globex", "accounts", pb::EntityKind::Account))
        .await
        .unwrap();
    let mut admin = t.exports("acme", Role::Admin).await;

    type Edit = fn(&mut pb::CreateExportRequest);
    fn export_of(r: &mut pb::CreateExportRequest) -> &mut pb::Export {
        r.export.as_mut().unwrap()
    }
    let files_out = || data_out("acme", "x", "X", "files", &[CUSTOMERS]);
    let files_segment = || segment_export("acme", "x", "X", "files", &[VIP], &[]);
    let cases: Vec<(&str, pb::CreateExportRequest, Edit, &[&str])> = vec![
        ("no kind", files_out(), |r| export_of(r).kind = 0, &["export.kind"]),
        (
            "mailchimp takes no DATA_OUT",
            data_out("acme", "x", "X", "mc", &[CUSTOMERS]),
            |_| {},
            &["export.kind"],
        ),
        (
            "DATA_OUT without entities",
            files_out(),
            |r| export_of(r).entities.clear(),
            &["export.entities"],
        ),
        (
            "DATA_OUT with segments",
            files_out(),
            |r| export_of(r).segments = vec![VIP.into()],
            &["export.segments"],
        ),
        (
            "DATA_OUT with mappings",
            files_out(),
            |r| {
                export_of(r).field_mappings = vec![pb::FieldMapping {
                    source_field: "email".into(),
                    target_field: "email".into(),
                }]
            },
            &["export.field_mappings"],
        ),
        (
            "SEGMENT without segments",
            files_segment(),
            |r| export_of(r).segments.clear(),
            &["export.segments"],
        ),
        (
            "SEGMENT with entities",
            files_segment(),
            |r| export_of(r).entities = vec![CUSTOMERS.into()],
            &["export.entities"],
        ),
        (
            "an entity of another environment",
            files_out(),
            |r| export_of(r).entities = vec!["environments/globex/entities/accounts".into()],
            &["export.entities[0]"],
        ),
        (
            "a malformed entity name",
            files_out(),
            |r| export_of(r).entities = vec!["customers".into()],
            &["export.entities[0]"],
        ),
        (
            "a missing entity",
            files_out(),
            |r| export_of(r).entities.push("environments/acme/entities/nope".into()),
            &["export.entities[1]"],
        ),
        (
            "an entity named twice",
            files_out(),
            |r| export_of(r).entities.push(CUSTOMERS.into()),
            &["export.entities[1]"],
        ),
        (
            "a missing segment",
            files_segment(),
            |r| export_of(r).segments = vec!["environments/acme/segments/nope".into()],
            &["export.segments[0]"],
        ),
        (
            "a source field the entity lacks",
            segment_export("acme", "x", "X", "files", &[VIP], &[("shoe_size", "size")]),
            |_| {},
            &["export.field_mappings[0].source_field"],
        ),
        (
            "an empty target field",
            segment_export("acme", "x", "X", "files", &[VIP], &[("email", "")]),
            |_| {},
            &["export.field_mappings[0].target_field"],
        ),
        (
            "a target field mapped twice",
            segment_export(
                "acme",
                "x",
                "X",
                "files",
                &[VIP],
                &[("email", "contact"), ("id", "contact")],
            ),
            |_| {},
            &["export.field_mappings[1].target_field"],
        ),
        (
            "an unknown setting",
            files_out(),
            |r| {
                export_of(r).settings.insert("bogus".into(), "1".into());
            },
            &["export.settings.bogus"],
        ),
        (
            "a bad setting value",
            files_out(),
            |r| {
                export_of(r).settings.insert("format".into(), "xml".into());
            },
            &["export.settings.format"],
        ),
        (
            "a sync mode the type lacks",
            files_out(),
            |r| export_of(r).sync_mode = pb::SyncMode::Mirror as i32,
            &["export.sync_mode"],
        ),
        (
            "an unknown sync mode",
            files_out(),
            |r| export_of(r).sync_mode = 99,
            &["export.sync_mode"],
        ),
        (
            "no display name",
            files_out(),
            |r| export_of(r).display_name = " ".into(),
            &["export.display_name"],
        ),
        (
            "no connection",
            files_out(),
            |r| export_of(r).connection.clear(),
            &["export.connection"],
        ),
        (
            "a missing connection",
            files_out(),
            |r| export_of(r).connection = conn_name("acme", "nope"),
            &["export.connection"],
        ),
        (
            "a connection of another environment",
            files_out(),
            |r| export_of(r).connection = conn_name("globex", "files"),
            &["export.connection"],
        ),
        (
            "a bad cron expression",
            files_out(),
            |r| {
                export_of(r).schedule = Some(pb::Schedule {
                    enabled: true,
                    trigger: Some(pb::schedule::Trigger::Cron(pb::CronSchedule {
                        expression: "61 * * * *".into(),
                        time_zone: String::new(),
                    })),
                    next_run_time: None,
                })
            },
            &["export.schedule.cron.expression"],
        ),
        (
            "an unknown time zone",
            files_out(),
            |r| {
                export_of(r).schedule = Some(pb::Schedule {
                    enabled: true,
                    trigger: Some(pb::schedule::Trigger::Cron(pb::CronSchedule {
                        expression: "0 6 * * *".into(),
                        time_zone: "Mars/Olympus".into(),
                    })),
                    next_run_time: None,
                })
            },
            &["export.schedule.cron.time_zone"],
        ),
        (
            "an impossible day of month",
            files_out(),
            |r| {
                export_of(r).schedule = Some(pb::Schedule {
                    enabled: true,
                    trigger: Some(pb::schedule::Trigger::Recurrence(pb::Recurrence {
                        frequency: pb::Frequency::Monthly as i32,
                        day_of_month: 32,
                        time_of_day: "06:00".into(),
                        ..Default::default()
                    })),
                    next_run_time: None,
                })
            },
            &["export.schedule.recurrence.day_of_month"],
        ),
        (
            "no identifier field for Facebook",
            segment_export("acme", "x", "X", "fb", &[VIP], &[("country", "country")]),
            |_| {},
            &["export.field_mappings"],
        ),
        (
            "LinkedIn companies are matched on company fields",
            segment_export("acme", "x", "X", "li", &[VIP], &[("email", "email")]),
            |r| {
                export_of(r).settings.insert("target".into(), "COMPANY".into());
            },
            &["export.field_mappings"],
        ),
        (
            "a bad export id",
            files_out(),
            |r| r.export_id = "Bad_Id".into(),
            &["export_id"],
        ),
        (
            "several problems at once",
            files_out(),
            |r| {
                let e = export_of(r);
                e.display_name.clear();
                e.settings.insert("bogus".into(), "1".into());
                e.entities.push("environments/acme/entities/nope".into());
            },
            &["export.display_name", "export.entities[1]", "export.settings.bogus"],
        ),
    ];
    for (what, mut request, edit, fields) in cases {
        edit(&mut request);
        let status = expect_code(admin.create_export(request).await, Code::InvalidArgument);
        assert_eq!(reason(&status), "INVALID_ARGUMENT", "{what}");
        let mut got = bad_fields(&status);
        got.sort();
        let mut want: Vec<String> = strings(fields);
        want.sort();
        assert_eq!(got, want, "{what}: {}", status.message());
    }
    // Nothing was stored by any of them.
    let listed = admin
        .list_exports(pb::ListExportsRequest {
            parent: ACME.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.total_size, 0);
    t.stop().await;
}

#[tokio::test]
async fn a_required_target_field_must_be_mapped() {
    let t = acme().await;
    let mut admin = t.exports("acme", Role::Admin).await;
    let status = expect_code(
        admin
            .create_export(segment_export(
                "acme",
                "x",
                "X",
                "mc",
                &[VIP],
                &[("country", "country")],
            ))
            .await,
        Code::InvalidArgument,
    );
    assert_eq!(bad_fields(&status), vec!["export.field_mappings"]);
    assert!(
        status.message().contains("required target field 'email' is not mapped"),
        "{}",
        status.message()
    );
    create(
        &mut admin,
        segment_export(
            "acme",
            "x",
            "X",
            "mc",
            &[VIP],
            &[("email", "email"), ("country", "country")],
        ),
    )
    .await;
    t.stop().await;
}

#[tokio::test]
async fn account_segments_to_a_contact_target_fail_with_the_exact_message() {
    let t = TestServer::start().await;
    let mut catalog = t.catalog("globex", Role::Admin).await;
    for (id, kind) in [
        ("accounts", pb::EntityKind::Account),
        ("contacts", pb::EntityKind::Contact),
    ] {
        catalog
            .create_entity(customers_entity("globex", id, kind))
            .await
            .unwrap();
    }
    create_pushed_segment(&mut catalog, "globex", "big", "accounts", "Big accounts").await;
    create_pushed_segment(&mut catalog, "globex", "key", "accounts", "Key accounts").await;
    create_pushed_segment(&mut catalog, "globex", "buyers", "contacts", "Buyers").await;
    let mut connections = t.connections("globex", Role::Admin).await;
    connections
        .create_connection(mailchimp("globex", "mc", "Mailchimp", true))
        .await
        .unwrap();
    connections
        .create_connection(local_files("globex", "files", "Files", true))
        .await
        .unwrap();
    connections
        .create_connection(connection(
            "globex",
            "li",
            "LinkedIn",
            "linkedin-ads",
            &[("ad_account_id", "1")],
            &[("access_token", "t")],
            true,
        ))
        .await
        .unwrap();
    let big = "environments/globex/segments/big";
    let key = "environments/globex/segments/key";
    let buyers = "environments/globex/segments/buyers";
    let mut admin = t.exports("globex", Role::Admin).await;

    let status = expect_code(
        admin
            .create_export(segment_export("globex", "x", "X", "mc", &[big], &[("email", "email")]))
            .await,
        Code::FailedPrecondition,
    );
    assert_eq!(reason(&status), "SEGMENT_NOT_ELIGIBLE");
    assert_eq!(
        status.message(),
        "The following segment is not eligible for this export destination: 'Big accounts'. \
         Please choose only segments of type ContactProfile and try again."
    );
    assert_eq!(precondition_subjects(&status), vec![big]);

    let status = expect_code(
        admin
            .create_export(segment_export(
                "globex",
                "x",
                "X",
                "mc",
                &[big, buyers, key],
                &[("email", "email")],
            ))
            .await,
        Code::FailedPrecondition,
    );
    assert_eq!(
        status.message(),
        "The following segments are not eligible for this export destination: 'Big accounts', 'Key accounts'. \
         Please choose only segments of type ContactProfile and try again."
    );
    assert_eq!(precondition_subjects(&status), vec![big, key]);
    let details = status.get_error_details();
    let violation = &details.precondition_failure().unwrap().violations[0];
    assert_eq!(violation.r#type, "SEGMENT_NOT_ELIGIBLE");

    // validate_only applies the same rule.
    let mut check = segment_export("globex", "x", "X", "mc", &[key], &[("email", "email")]);
    check.validate_only = true;
    expect_code(admin.create_export(check).await, Code::FailedPrecondition);

    // Contacts are eligible; storage takes accounts as they are; LinkedIn takes accounts only
    // when its target is COMPANY.
    let ok = create(
        &mut admin,
        segment_export("globex", "buyers-mc", "Buyers", "mc", &[buyers], &[("email", "email")]),
    )
    .await;
    create(
        &mut admin,
        segment_export("globex", "big-files", "Big", "files", &[big], &[]),
    )
    .await;
    expect_code(
        admin
            .create_export(segment_export(
                "globex",
                "li-x",
                "X",
                "li",
                &[big],
                &[("email", "email")],
            ))
            .await,
        Code::FailedPrecondition,
    );
    let mut company = segment_export("globex", "li-company", "X", "li", &[big], &[("id", "company_name")]);
    company
        .export
        .as_mut()
        .unwrap()
        .settings
        .insert("target".into(), "COMPANY".into());
    create(&mut admin, company).await;

    // Update applies it too, and changes nothing when it fails.
    let status = expect_code(
        admin
            .update_export(pb::UpdateExportRequest {
                export: Some(pb::Export {
                    name: ok.name.clone(),
                    segments: strings(&[buyers, big]),
                    ..Default::default()
                }),
                update_mask: mask(&["segments"]),
                validate_only: false,
            })
            .await,
        Code::FailedPrecondition,
    );
    assert!(status.message().contains("'Big accounts'"), "{}", status.message());
    assert_eq!(get(&mut admin, &ok.name).await, ok);
    t.stop().await;
}

#[tokio::test]
async fn validate_only_stores_nothing_but_shows_counts_and_warnings() {
    let t = acme().await;
    let mut connections = t.connections("acme", Role::Admin).await;
    connections
        .create_connection(connection(
            "acme",
            "li",
            "LinkedIn",
            "linkedin-ads",
            &[("ad_account_id", "1")],
            &[("access_token", "t")],
            true,
        ))
        .await
        .unwrap();
    let mut tiny = local_files("acme", "tiny", "Tiny", true);
    tiny.connection.as_mut().unwrap().profile_limit = 4;
    connections.create_connection(tiny).await.unwrap();
    let mut admin = t.exports("acme", Role::Admin).await;

    let mut request = segment_export("acme", "li-vip", "VIP on LinkedIn", "li", &[VIP], &[("email", "email")]);
    request.validate_only = true;
    let shown = create(&mut admin, request).await;
    assert_eq!(shown.name, export_name("acme", "li-vip"));
    assert!(shown.etag.is_empty(), "nothing stored, nothing to match");
    assert_eq!(shown.segment_member_counts[VIP], 5);
    assert_eq!(shown.warnings.len(), 1);
    assert_eq!(shown.warnings[0].code, "SEGMENT_UNDER_MINIMUM");
    assert_eq!(shown.warnings[0].subject, VIP);
    assert!(
        shown.warnings[0].message.contains("300"),
        "{}",
        shown.warnings[0].message
    );

    let mut request = segment_export("acme", "tiny-vip", "VIP", "tiny", &[VIP, FRANCE], &[]);
    request.validate_only = true;
    let shown = create(&mut admin, request).await;
    assert_eq!(shown.segment_member_counts.len(), 2);
    let codes: Vec<(&str, &str)> = shown
        .warnings
        .iter()
        .map(|w| (w.code.as_str(), w.subject.as_str()))
        .collect();
    assert_eq!(
        codes,
        vec![("SEGMENT_OVER_LIMIT", VIP)],
        "France (3) is within the limit of 4"
    );

    for name in [export_name("acme", "li-vip"), export_name("acme", "tiny-vip")] {
        expect_code(admin.get_export(pb::GetExportRequest { name }).await, Code::NotFound);
    }
    let listed = admin
        .list_exports(pb::ListExportsRequest {
            parent: ACME.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.total_size, 0);

    // Stored, the same export keeps its counts and warnings on every read.
    let created = create(
        &mut admin,
        segment_export("acme", "tiny-vip", "VIP", "tiny", &[VIP, FRANCE], &[]),
    )
    .await;
    assert_eq!(created.warnings.len(), 1);
    assert_eq!(get(&mut admin, &created.name).await.warnings, created.warnings);
    let listed = admin
        .list_exports(pb::ListExportsRequest {
            parent: ACME.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.exports[0].segment_member_counts[FRANCE], 3);
    assert_eq!(listed.exports[0].warnings, created.warnings);
    t.stop().await;
}

#[tokio::test]
async fn a_request_id_returns_the_first_export() {
    let t = acme().await;
    let mut admin = t.exports("acme", Role::Admin).await;
    let mut request = data_out("acme", "", "Nightly", "files", &[CUSTOMERS]);
    request.request_id = "7c1e9f0a-req".into();
    let first = create(&mut admin, request.clone()).await;
    let again = create(&mut admin, request.clone()).await;
    assert_eq!(first.name, again.name, "a generated id is not generated twice");
    let mut other = request.clone();
    other.export.as_mut().unwrap().display_name = "Other".into();
    let status = expect_code(admin.create_export(other).await, Code::InvalidArgument);
    assert_eq!(bad_fields(&status), vec!["request_id"]);
    let listed = admin
        .list_exports(pb::ListExportsRequest {
            parent: ACME.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.total_size, 1);
    t.stop().await;
}

#[tokio::test]
async fn your_permission_follows_the_role_and_the_connection() {
    let t = acme().await;
    let mut admin = t.exports("acme", Role::Admin).await;
    let shared = create(&mut admin, data_out("acme", "shared", "Shared", "files", &[CUSTOMERS])).await;
    let private = create(
        &mut admin,
        data_out("acme", "private", "Private", "private", &[CUSTOMERS]),
    )
    .await;
    let detached = create(
        &mut admin,
        data_out("acme", "detached", "Detached", "files", &[CUSTOMERS]),
    )
    .await;
    admin
        .detach_connection(pb::DetachConnectionRequest {
            name: detached.name.clone(),
        })
        .await
        .unwrap();
    let edit = pb::Permission::Edit as i32;
    let view = pb::Permission::View as i32;
    for (role, expected) in [
        (Role::Admin, [edit, edit, edit]),
        (Role::Contributor, [view, view, edit]),
        (Role::Viewer, [view, view, view]),
    ] {
        let mut client = t.exports("acme", role).await;
        let listed = client
            .list_exports(pb::ListExportsRequest {
                parent: ACME.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let names: Vec<&str> = listed.exports.iter().map(|e| e.display_name.as_str()).collect();
        assert_eq!(names, vec!["Detached", "Private", "Shared"], "{role} sees every export");
        let permissions: Vec<i32> = listed.exports.iter().map(|e| e.your_permission).collect();
        assert_eq!(permissions, expected, "{role}");
        for export in &listed.exports {
            assert_eq!(
                get(&mut client, &export.name).await.your_permission,
                export.your_permission
            );
        }
        // A non-shared connection shows its name, display name and type, nothing more.
        let seen = get(&mut client, &private.name).await;
        assert_eq!(seen.connection, conn_name("acme", "private"));
        assert_eq!(seen.connection_display_name, "Private files");
        assert_eq!(seen.connection_type, "local-files");
    }
    assert_eq!(
        get(&mut admin, &shared.name).await.your_permission,
        edit,
        "admins edit everything"
    );
    t.stop().await;
}

/// A status's ErrorInfo metadata, less the connection the request named itself.
fn error_details_without_connection(status: &tonic::Status) -> Vec<(String, String)> {
    use tonic_types::StatusExt;
    let details = status.get_error_details();
    let info = details.error_info().expect("an ErrorInfo");
    let mut metadata: Vec<(String, String)> = info
        .metadata
        .iter()
        .filter(|(k, _)| k.as_str() != "connection")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    metadata.sort();
    metadata.push(("reason".into(), info.reason.clone()));
    metadata
}

#[tokio::test]
async fn contributors_use_only_shared_connections() {
    let t = acme().await;
    let mut admin = t.exports("acme", Role::Admin).await;
    let mut contributor = t.exports("acme", Role::Contributor).await;
    let status = expect_code(
        contributor
            .create_export(data_out("acme", "x", "X", "private", &[CUSTOMERS]))
            .await,
        Code::PermissionDenied,
    );
    assert_eq!(reason(&status), "PERMISSION_DENIED");
    assert!(
        status.message().contains("connection is not shared with contributors"),
        "{}",
        status.message()
    );
    // A connection that does not exist is denied the same way, word for word: the answer
    // does not tell a contributor which connections exist.
    let missing = expect_code(
        contributor
            .create_export(data_out("acme", "x", "X", "nope", &[CUSTOMERS]))
            .await,
        Code::PermissionDenied,
    );
    assert!(
        status
            .message()
            .contains("is not shared with contributors or does not exist"),
        "{}",
        status.message()
    );
    assert_eq!(missing.message(), status.message());
    assert_eq!(
        error_details_without_connection(&missing),
        error_details_without_connection(&status)
    );
    // Admins see every connection: to them a missing one is a bad argument.
    let status = expect_code(
        admin
            .create_export(data_out("acme", "x", "X", "nope", &[CUSTOMERS]))
            .await,
        Code::InvalidArgument,
    );
    assert_eq!(bad_fields(&status), vec!["export.connection"]);
    let mine = create(
        &mut contributor,
        data_out("acme", "mine", "Mine", "files", &[CUSTOMERS]),
    )
    .await;
    assert_eq!(mine.your_permission, pb::Permission::Edit as i32);

    // Moving it onto a non-shared connection is denied the same way, and changes nothing.
    let status = expect_code(
        contributor
            .update_export(pb::UpdateExportRequest {
                export: Some(pb::Export {
                    name: mine.name.clone(),
                    connection: conn_name("acme", "private"),
                    ..Default::default()
                }),
                update_mask: mask(&["connection"]),
                validate_only: false,
            })
            .await,
        Code::PermissionDenied,
    );
    assert!(
        status.message().contains("connection is not shared with contributors"),
        "{}",
        status.message()
    );
    let onto_missing = expect_code(
        contributor
            .update_export(pb::UpdateExportRequest {
                export: Some(pb::Export {
                    name: mine.name.clone(),
                    connection: conn_name("acme", "nope"),
                    ..Default::default()
                }),
                update_mask: mask(&["connection"]),
                validate_only: false,
            })
            .await,
        Code::PermissionDenied,
    );
    assert_eq!(onto_missing.message(), status.message());
    assert_eq!(get(&mut admin, &mine.name).await, mine);

    // An export over a non-shared connection is read-only for contributors.
    let theirs = create(
        &mut admin,
        data_out("acme", "theirs", "Theirs", "private", &[CUSTOMERS]),
    )
    .await;
    let status = expect_code(
        contributor
            .update_export(pb::UpdateExportRequest {
                export: Some(pb::Export {
                    name: theirs.name.clone(),
                    display_name: "Mine now".into(),
                    ..Default::default()
                }),
                update_mask: mask(&["display_name"]),
                validate_only: false,
            })
            .await,
        Code::PermissionDenied,
    );
    assert!(status.message().contains("exports.update"), "{}", status.message());
    let mut viewer = t.exports("acme", Role::Viewer).await;
    expect_code(
        viewer
            .create_export(data_out("acme", "v", "V", "files", &[CUSTOMERS]))
            .await,
        Code::PermissionDenied,
    );

    // Un-sharing a connection keeps its exports; contributors can only read them then.
    t.connections("acme", Role::Admin)
        .await
        .update_connection(pb::UpdateConnectionRequest {
            connection: Some(pb::Connection {
                name: conn_name("acme", "files"),
                contributors_can_use: false,
                ..Default::default()
            }),
            update_mask: mask(&["contributors_can_use"]),
        })
        .await
        .unwrap();
    let after = get(&mut contributor, &mine.name).await;
    assert_eq!(after.your_permission, pb::Permission::View as i32);
    assert_eq!(after.connection, mine.connection);
    expect_code(
        contributor
            .delete_export(pb::DeleteExportRequest {
                name: mine.name.clone(),
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
    );
    t.stop().await;
}

/// Five exports with distinct values in every sortable column (see each comment), created in
/// the order charlie, alpha, echo, Delta, Bravo and last updated in the order charlie, echo,
/// Delta, Bravo, alpha.
async fn five_exports(t: &TestServer) {
    let mut connections = t.connections("acme", Role::Admin).await;
    connections
        .create_connection(connection(
            "acme",
            "hook",
            "Hooks",
            "webhook",
            &[("url", "https://example.com/hook")],
            &[],
            true,
        ))
        .await
        .unwrap();
    connections
        .create_connection(connection(
            "acme",
            "lake",
            "Amazon lake",
            "s3",
            &[("bucket", "bucket-b"), ("region", "eu-west-1")],
            &[("access_key_id", "a"), ("secret_access_key", "s")],
            true,
        ))
        .await
        .unwrap();
    let mut admin = t.exports("acme", Role::Admin).await;
    let cron = |expression: &str| pb::Schedule {
        enabled: true,
        trigger: Some(pb::schedule::Trigger::Cron(pb::CronSchedule {
            expression: expression.into(),
            time_zone: String::new(),
        })),
        next_run_time: None,
    };
    // charlie: webhook "Hooks", schedule off.
    let mut charlie = data_out("acme", "charlie", "charlie", "hook", &[CUSTOMERS]);
    charlie.export.as_mut().unwrap().schedule = Some(pb::Schedule {
        enabled: false,
        ..cron("0 0 1 1 *")
    });
    create(&mut admin, charlie).await;
    // alpha: local files "Files", every minute (the soonest).
    let mut alpha = data_out("acme", "alpha", "alpha", "files", &[CUSTOMERS]);
    alpha.export.as_mut().unwrap().schedule = Some(cron("* * * * *"));
    create(&mut admin, alpha).await;
    // echo: S3 "Amazon lake", daily about three hours from now.
    let mut echo = segment_export("acme", "echo", "echo", "lake", &[VIP], &[]);
    let later = (Utc::now() + chrono::Duration::hours(3)).format("%H:%M").to_string();
    echo.export.as_mut().unwrap().schedule = Some(pb::Schedule {
        enabled: true,
        trigger: Some(pb::schedule::Trigger::Recurrence(pb::Recurrence {
            frequency: pb::Frequency::Daily as i32,
            time_of_day: later,
            ..Default::default()
        })),
        next_run_time: None,
    });
    create(&mut admin, echo).await;
    // Delta: detached (was on local files), every minute but cannot run.
    let mut delta = data_out("acme", "delta", "Delta", "files", &[CUSTOMERS]);
    delta.export.as_mut().unwrap().schedule = Some(cron("* * * * *"));
    create(&mut admin, delta).await;
    // Bravo: Mailchimp "Mailchimp list", with system refresh (the default).
    create(
        &mut admin,
        segment_export("acme", "bravo", "Bravo", "mc", &[VIP], &[("email", "email")]),
    )
    .await;
    admin
        .detach_connection(pb::DetachConnectionRequest {
            name: export_name("acme", "delta"),
        })
        .await
        .unwrap();
    for id in ["bravo", "alpha"] {
        admin
            .update_export(pb::UpdateExportRequest {
                export: Some(pb::Export {
                    name: export_name("acme", id),
                    description: "touched".into(),
                    ..Default::default()
                }),
                update_mask: mask(&["description"]),
                validate_only: false,
            })
            .await
            .unwrap();
    }
    // Runs, as the run engine records them: status QUEUED < RUNNING < SUCCEEDED < FAILED,
    // Delta never ran; last refreshed alpha < echo < charlie, the others never.
    let store = &t.state.store;
    let name = |id: &str| ExportName::new("acme", id);
    store
        .record_last_run(&name("alpha"), "r1", RunState::Succeeded, Some(1_000_000))
        .await
        .unwrap();
    store
        .record_last_run(&name("echo"), "r1", RunState::Succeeded, Some(2_000_000))
        .await
        .unwrap();
    store
        .record_last_run(&name("echo"), "r2", RunState::Running, None)
        .await
        .unwrap();
    store
        .record_last_run(&name("charlie"), "r1", RunState::Succeeded, Some(3_000_000))
        .await
        .unwrap();
    store
        .record_last_run(&name("charlie"), "r2", RunState::Queued, None)
        .await
        .unwrap();
    store
        .record_last_run(&name("bravo"), "r1", RunState::Failed, Some(5_000_000))
        .await
        .unwrap();
}

#[tokio::test]
async fn lists_sort_by_every_key_both_ways() {
    let t = acme().await;
    five_exports(&t).await;
    let mut viewer = t.exports("acme", Role::Viewer).await;
    let cases: &[(&str, [&str; 5])] = &[
        ("", ["alpha", "Bravo", "charlie", "Delta", "echo"]),
        ("display_name", ["alpha", "Bravo", "charlie", "Delta", "echo"]),
        ("display_name desc", ["echo", "Delta", "charlie", "Bravo", "alpha"]),
        // Connection display names: Amazon lake, Files, Hooks, Mailchimp list; detached last.
        ("connection", ["echo", "alpha", "charlie", "Bravo", "Delta"]),
        ("connection desc", ["Bravo", "charlie", "alpha", "echo", "Delta"]),
        // local-files, mailchimp, s3, webhook; detached last.
        ("connection_type", ["alpha", "Bravo", "echo", "charlie", "Delta"]),
        ("connection_type desc", ["charlie", "echo", "Bravo", "alpha", "Delta"]),
        // QUEUED, RUNNING, SUCCEEDED, FAILED; never run last.
        ("status", ["charlie", "echo", "alpha", "Bravo", "Delta"]),
        ("status desc", ["Bravo", "alpha", "echo", "charlie", "Delta"]),
        // Next run time, then with system refresh; off and detached last (ties by name).
        ("schedule", ["alpha", "echo", "Bravo", "charlie", "Delta"]),
        ("schedule desc", ["Bravo", "echo", "alpha", "charlie", "Delta"]),
        // Never refreshed last (ties by name).
        ("last_refreshed_time", ["alpha", "echo", "charlie", "Bravo", "Delta"]),
        (
            "last_refreshed_time desc",
            ["charlie", "echo", "alpha", "Bravo", "Delta"],
        ),
        ("create_time", ["charlie", "alpha", "echo", "Delta", "Bravo"]),
        ("create_time desc", ["Bravo", "Delta", "echo", "alpha", "charlie"]),
        ("update_time", ["charlie", "echo", "Delta", "Bravo", "alpha"]),
        ("update_time DESC", ["alpha", "Bravo", "Delta", "echo", "charlie"]),
        // A second key orders the ties of the first (off and detached here).
        (
            "schedule, display_name desc",
            ["alpha", "echo", "Bravo", "Delta", "charlie"],
        ),
    ];
    for (order_by, expected) in cases {
        assert_eq!(
            list(&mut viewer, "", order_by).await,
            expected.to_vec(),
            "order_by {order_by:?}"
        );
    }
    for bad in [
        "name",
        "display_name sideways",
        "status, status",
        "schedule desc desc",
        "kind, display_name",
    ] {
        let status = expect_code(
            viewer
                .list_exports(pb::ListExportsRequest {
                    parent: ACME.into(),
                    order_by: bad.into(),
                    ..Default::default()
                })
                .await,
            Code::InvalidArgument,
        );
        assert_eq!(bad_fields(&status), vec!["order_by"], "{bad}");
    }
    t.stop().await;
}

#[tokio::test]
async fn lists_filter_and_page() {
    let t = acme().await;
    five_exports(&t).await;
    let mut contributor = t.exports("acme", Role::Contributor).await;
    let cases: &[(&str, &[&str])] = &[
        ("status = FAILED", &["Bravo"]),
        ("status = RUN_STATE_QUEUED OR status = RUNNING", &["charlie", "echo"]),
        ("status != FAILED", &["alpha", "charlie", "Delta", "echo"]),
        ("state = DETACHED", &["Delta"]),
        ("state = EXPORT_STATE_ACTIVE", &["alpha", "Bravo", "charlie", "echo"]),
        ("kind = SEGMENT", &["Bravo", "echo"]),
        ("kind = EXPORT_KIND_DATA_OUT", &["alpha", "charlie", "Delta"]),
        ("connection_type = \"s3\"", &["echo"]),
        ("connection_type = webhook", &["charlie"]),
        ("connection_type != \"s3\"", &["alpha", "Bravo", "charlie", "Delta"]),
        ("connection = \"environments/acme/connections/lake\"", &["echo"]),
        (
            "connection = \"environments/acme/connections/hook\" OR connection = \"environments/acme/connections/lake\"",
            &["charlie", "echo"],
        ),
        (
            "connection != \"environments/acme/connections/lake\"",
            &["alpha", "Bravo", "charlie", "Delta"],
        ),
        ("connection = \"environments/acme/connections/none\"", &[]),
        ("display_name:\"ALP\"", &["alpha"]),
        ("display_name = \"Bravo\"", &["Bravo"]),
        ("display_name:\"a\" AND kind = SEGMENT", &["Bravo"]),
        (
            "(kind = SEGMENT OR state = DETACHED) AND NOT display_name:\"echo\"",
            &["Bravo", "Delta"],
        ),
        ("NOT status = SUCCEEDED", &["Bravo", "charlie", "Delta", "echo"]),
        ("display_name:\"zzz\"", &[]),
    ];
    for (filter, expected) in cases {
        assert_eq!(
            list(&mut contributor, filter, "").await,
            expected.to_vec(),
            "filter {filter:?}"
        );
    }
    for bad in [
        "display_name = ",
        "state = BROKEN",
        "status = UNSPECIFIED",
        "unknown = 1",
        "(kind = SEGMENT",
        "display_name:alpha",
        "kind = SEGMENT AND",
        "kind > SEGMENT",
        "connection = \"lake\"",
        "connection = \"environments/globex/connections/lake\"",
        "connection:\"lake\"",
    ] {
        let status = expect_code(
            contributor
                .list_exports(pb::ListExportsRequest {
                    parent: ACME.into(),
                    filter: bad.into(),
                    ..Default::default()
                })
                .await,
            Code::InvalidArgument,
        );
        assert_eq!(bad_fields(&status), vec!["filter"], "{bad}: {}", status.message());
    }

    // Pages of two, with tokens bound to the query.
    let request = |token: &str| pb::ListExportsRequest {
        parent: ACME.into(),
        page_size: 2,
        page_token: token.into(),
        order_by: "create_time".into(),
        ..Default::default()
    };
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = contributor.list_exports(request(&token)).await.unwrap().into_inner();
        assert_eq!(page.total_size, 5);
        seen.extend(page.exports.into_iter().map(|e| e.display_name));
        pages += 1;
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
        if pages == 1 {
            let mut other = request(&token);
            other.order_by = "create_time desc".into();
            let status = expect_code(contributor.list_exports(other).await, Code::InvalidArgument);
            assert_eq!(bad_fields(&status), vec!["page_token"]);
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, vec!["charlie", "alpha", "echo", "Delta", "Bravo"]);
    let filtered = contributor
        .list_exports(pb::ListExportsRequest {
            parent: ACME.into(),
            page_size: 1,
            filter: "kind = SEGMENT".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(filtered.total_size, 2, "total_size counts the matches");
    assert!(!filtered.next_page_token.is_empty());
    let status = expect_code(
        contributor
            .list_exports(pb::ListExportsRequest {
                parent: ACME.into(),
                page_size: -1,
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
    );
    assert_eq!(bad_fields(&status), vec!["page_size"]);
    let mut stranger = t.exports("globex", Role::Admin).await;
    expect_code(
        stranger
            .list_exports(pb::ListExportsRequest {
                parent: ACME.into(),
                ..Default::default()
            })
            .await,
        Code::NotFound,
    );
    t.stop().await;
}

#[tokio::test]
async fn updates_follow_the_mask_and_the_etag() {
    let t = acme().await;
    let mut admin = t.exports("acme", Role::Admin).await;
    let created = create(
        &mut admin,
        segment_export("acme", "aud", "Audience", "mc", &[VIP], &[("email", "email")]),
    )
    .await;
    let update = |export: pb::Export, paths: &[&str]| pb::UpdateExportRequest {
        export: Some(export),
        update_mask: mask(paths),
        validate_only: false,
    };

    let renamed = admin
        .update_export(update(
            pb::Export {
                name: created.name.clone(),
                display_name: "Renamed".into(),
                description: "ignored: not in the mask".into(),
                etag: created.etag.clone(),
                ..Default::default()
            },
            &["display_name"],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(renamed.display_name, "Renamed");
    assert_eq!(renamed.description, "");
    assert_ne!(renamed.etag, created.etag);
    assert_eq!(renamed.create_time, created.create_time);

    // A stale etag is ABORTED and changes nothing.
    let status = expect_code(
        admin
            .update_export(update(
                pb::Export {
                    name: created.name.clone(),
                    display_name: "Stale".into(),
                    etag: created.etag.clone(),
                    ..Default::default()
                },
                &["display_name"],
            ))
            .await,
        Code::Aborted,
    );
    assert_eq!(reason(&status), "ETAG_MISMATCH");
    assert_eq!(get(&mut admin, &created.name).await.display_name, "Renamed");

    for (paths, field) in [
        (&["name"][..], "update_mask"),
        (&["kind"][..], "update_mask"),
        (&["display_name", "bogus"][..], "update_mask"),
    ] {
        let status = expect_code(
            admin
                .update_export(update(
                    pb::Export {
                        name: created.name.clone(),
                        ..Default::default()
                    },
                    paths,
                ))
                .await,
            Code::InvalidArgument,
        );
        assert_eq!(bad_fields(&status), vec![field], "{paths:?}");
    }

    // The whole export is validated as it would be stored.
    let status = expect_code(
        admin
            .update_export(update(
                pb::Export {
                    name: created.name.clone(),
                    segments: strings(&[VIP, "environments/acme/segments/nope"]),
                    field_mappings: vec![],
                    ..Default::default()
                },
                &["segments", "field_mappings"],
            ))
            .await,
        Code::InvalidArgument,
    );
    let mut fields = bad_fields(&status);
    fields.sort();
    assert_eq!(fields, vec!["export.field_mappings", "export.segments[1]"]);

    let updated = admin
        .update_export(update(
            pb::Export {
                name: created.name.clone(),
                segments: strings(&[FRANCE, VIP]),
                sync_mode: pb::SyncMode::Mirror as i32,
                settings: pairs(&[("tag_with_segment", "true")]),
                ..Default::default()
            },
            &["segments", "sync_mode", "settings.tag_with_segment"],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.segments, vec![FRANCE, VIP]);
    assert_eq!(updated.segment_member_counts[FRANCE], 3);
    assert_eq!(updated.sync_mode, pb::SyncMode::Mirror as i32);
    assert_eq!(updated.settings["tag_with_segment"], "true");
    let status = expect_code(
        admin
            .update_export(update(
                pb::Export {
                    name: created.name.clone(),
                    settings: pairs(&[("tag_with_segment", "maybe")]),
                    ..Default::default()
                },
                &["settings.tag_with_segment"],
            ))
            .await,
        Code::InvalidArgument,
    );
    assert_eq!(bad_fields(&status), vec!["export.settings.tag_with_segment"]);

    // Schedules: a cron gets its next run time; `schedule.enabled` switches it and keeps it.
    let scheduled = admin
        .update_export(update(
            pb::Export {
                name: created.name.clone(),
                schedule: Some(pb::Schedule {
                    enabled: true,
                    trigger: Some(pb::schedule::Trigger::Cron(pb::CronSchedule {
                        expression: "0 6 * * *".into(),
                        time_zone: "Europe/Paris".into(),
                    })),
                    next_run_time: None,
                }),
                ..Default::default()
            },
            &["schedule"],
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(scheduled.schedule.as_ref().unwrap().next_run_time.is_some());
    let off = admin
        .update_export(update(
            pb::Export {
                name: created.name.clone(),
                schedule: Some(pb::Schedule {
                    enabled: false,
                    ..Default::default()
                }),
                ..Default::default()
            },
            &["schedule.enabled"],
        ))
        .await
        .unwrap()
        .into_inner();
    let schedule = off.schedule.unwrap();
    assert!(!schedule.enabled);
    assert!(schedule.next_run_time.is_none());
    assert!(
        matches!(schedule.trigger, Some(pb::schedule::Trigger::Cron(_))),
        "the trigger is kept"
    );

    // validate_only shows the result and stores nothing.
    let before = get(&mut admin, &created.name).await;
    let mut dry = update(
        pb::Export {
            name: created.name.clone(),
            display_name: "Dry run".into(),
            ..Default::default()
        },
        &["display_name"],
    );
    dry.validate_only = true;
    let shown = admin.update_export(dry).await.unwrap().into_inner();
    assert_eq!(shown.display_name, "Dry run");
    assert_eq!(get(&mut admin, &created.name).await, before);

    // Without a mask, the fields that are set are updated.
    let implied = admin
        .update_export(pb::UpdateExportRequest {
            export: Some(pb::Export {
                name: created.name.clone(),
                description: "Weekly newsletter audience".into(),
                ..Default::default()
            }),
            update_mask: None,
            validate_only: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(implied.description, "Weekly newsletter audience");
    assert_eq!(implied.display_name, "Renamed");
    assert_eq!(implied.segments, vec![FRANCE, VIP]);
    expect_code(
        admin
            .update_export(update(
                pb::Export {
                    name: export_name("acme", "missing"),
                    display_name: "X".into(),
                    ..Default::default()
                },
                &["display_name"],
            ))
            .await,
        Code::NotFound,
    );
    t.stop().await;
}

#[tokio::test]
async fn delete_checks_the_etag_and_the_role() {
    let t = acme().await;
    let mut admin = t.exports("acme", Role::Admin).await;
    let created = create(&mut admin, data_out("acme", "gone", "Gone", "files", &[CUSTOMERS])).await;
    let mut viewer = t.exports("acme", Role::Viewer).await;
    expect_code(
        viewer
            .delete_export(pb::DeleteExportRequest {
                name: created.name.clone(),
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
    );
    let status = expect_code(
        admin
            .delete_export(pb::DeleteExportRequest {
                name: created.name.clone(),
                etag: "1-deadbeef".into(),
            })
            .await,
        Code::Aborted,
    );
    assert_eq!(reason(&status), "ETAG_MISMATCH");
    let deleted = admin
        .delete_export(pb::DeleteExportRequest {
            name: created.name.clone(),
            etag: created.etag.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.name, created.name);
    expect_code(
        admin
            .get_export(pb::GetExportRequest {
                name: created.name.clone(),
            })
            .await,
        Code::NotFound,
    );
    expect_code(
        admin
            .delete_export(pb::DeleteExportRequest {
                name: created.name.clone(),
                ..Default::default()
            })
            .await,
        Code::NotFound,
    );
    // The id is free again.
    create(&mut admin, data_out("acme", "gone", "Back", "files", &[CUSTOMERS])).await;
    t.stop().await;
}

#[tokio::test]
async fn duplicates_copy_settings_and_schedule() {
    let t = acme().await;
    let mut admin = t.exports("acme", Role::Admin).await;
    let mut request = segment_export("acme", "orig", "Original", "mc", &[VIP], &[("email", "email")]);
    {
        let export = request.export.as_mut().unwrap();
        export.description = "the original".into();
        export.sync_mode = pb::SyncMode::Mirror as i32;
        export.settings = pairs(&[("tag_with_segment", "true")]);
        export.schedule = Some(pb::Schedule {
            enabled: true,
            trigger: Some(pb::schedule::Trigger::Recurrence(pb::Recurrence {
                frequency: pb::Frequency::Weekly as i32,
                days_of_week: vec![pb::google::r#type::DayOfWeek::Monday as i32],
                time_of_day: "07:30".into(),
                time_zone: "Europe/Berlin".into(),
                ..Default::default()
            })),
            next_run_time: None,
        });
    }
    let original = create(&mut admin, request).await;
    let copy = admin
        .duplicate_export(pb::DuplicateExportRequest {
            name: original.name.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_ne!(copy.name, original.name);
    assert!(
        copy.name.starts_with("environments/acme/exports/export-"),
        "{}",
        copy.name
    );
    assert_eq!(copy.display_name, "Copy of Original");
    assert_eq!(copy.schedule, original.schedule);
    let comparable = |e: &pb::Export| {
        (
            e.description.clone(),
            e.connection.clone(),
            e.kind,
            e.segments.clone(),
            e.field_mappings.clone(),
            e.settings.clone(),
            e.sync_mode,
            e.state,
            e.segment_member_counts.clone(),
        )
    };
    assert_eq!(comparable(&copy), comparable(&original));
    assert_ne!(copy.etag, original.etag);

    let named = admin
        .duplicate_export(pb::DuplicateExportRequest {
            name: original.name.clone(),
            export_id: "second".into(),
            display_name: "Second".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(named.name, export_name("acme", "second"));
    assert_eq!(named.display_name, "Second");
    expect_code(
        admin
            .duplicate_export(pb::DuplicateExportRequest {
                name: original.name.clone(),
                export_id: "second".into(),
                display_name: String::new(),
            })
            .await,
        Code::AlreadyExists,
    );
    let status = expect_code(
        admin
            .duplicate_export(pb::DuplicateExportRequest {
                name: original.name.clone(),
                export_id: "Bad Id".into(),
                display_name: String::new(),
            })
            .await,
        Code::InvalidArgument,
    );
    assert_eq!(bad_fields(&status), vec!["export_id"]);

    // A detached export's copy is detached.
    admin
        .detach_connection(pb::DetachConnectionRequest {
            name: named.name.clone(),
        })
        .await
        .unwrap();
    let detached_copy = admin
        .duplicate_export(pb::DuplicateExportRequest {
            name: named.name.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(detached_copy.state, pb::ExportState::Detached as i32);
    assert_eq!(detached_copy.connection, "");

    // Contributors duplicate what they may edit, and nothing else.
    let private = create(&mut admin, data_out("acme", "p", "P", "private", &[CUSTOMERS])).await;
    let mut contributor = t.exports("acme", Role::Contributor).await;
    expect_code(
        contributor
            .duplicate_export(pb::DuplicateExportRequest {
                name: private.name,
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
    );
    let theirs = contributor
        .duplicate_export(pb::DuplicateExportRequest {
            name: original.name.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(theirs.your_permission, pb::Permission::Edit as i32);
    t.stop().await;
}

#[tokio::test]
async fn detaching_keeps_the_connection_and_leaves_the_export_to_admins() {
    let t = acme().await;
    let mut admin = t.exports("acme", Role::Admin).await;
    let mut contributor = t.exports("acme", Role::Contributor).await;
    let mut request = data_out("acme", "out", "Out", "files", &[CUSTOMERS]);
    request.export.as_mut().unwrap().schedule = Some(pb::Schedule {
        enabled: true,
        trigger: Some(pb::schedule::Trigger::Cron(pb::CronSchedule {
            expression: "0 * * * *".into(),
            time_zone: String::new(),
        })),
        next_run_time: None,
    });
    let created = create(&mut contributor, request).await;
    assert!(created.schedule.as_ref().unwrap().next_run_time.is_some());
    let detached = contributor
        .detach_connection(pb::DetachConnectionRequest {
            name: created.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(detached.state, pb::ExportState::Detached as i32);
    assert_eq!(detached.connection, "");
    assert_eq!(detached.connection_type, "");
    assert_eq!(detached.connection_display_name, "");
    assert_eq!(detached.your_permission, pb::Permission::View as i32);
    let schedule = detached.schedule.as_ref().unwrap();
    assert!(schedule.enabled, "the schedule is kept for when it is attached again");
    assert!(schedule.next_run_time.is_none(), "a detached export does not run");
    // The connection itself stays.
    t.connections("acme", Role::Admin)
        .await
        .get_connection(pb::GetConnectionRequest {
            name: conn_name("acme", "files"),
        })
        .await
        .unwrap();

    // Detached: editable by admins only.
    assert_eq!(
        get(&mut admin, &created.name).await.your_permission,
        pb::Permission::Edit as i32
    );
    for result in [
        contributor
            .update_export(pb::UpdateExportRequest {
                export: Some(pb::Export {
                    name: created.name.clone(),
                    display_name: "Mine".into(),
                    ..Default::default()
                }),
                update_mask: mask(&["display_name"]),
                validate_only: false,
            })
            .await
            .map(|_| ()),
        contributor
            .detach_connection(pb::DetachConnectionRequest {
                name: created.name.clone(),
            })
            .await
            .map(|_| ()),
        contributor
            .delete_export(pb::DeleteExportRequest {
                name: created.name.clone(),
                ..Default::default()
            })
            .await
            .map(|_| ()),
    ] {
        assert_eq!(result.unwrap_err().code(), Code::PermissionDenied);
    }
    let renamed = admin
        .update_export(pb::UpdateExportRequest {
            export: Some(pb::Export {
                name: created.name.clone(),
                display_name: "Parked".into(),
                ..Default::default()
            }),
            update_mask: mask(&["display_name"]),
            validate_only: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(renamed.state, pb::ExportState::Detached as i32);
    // Detaching again is a no-op.
    let again = admin
        .detach_connection(pb::DetachConnectionRequest {
            name: created.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.etag, renamed.etag);

    // An admin attaches a connection again: ACTIVE, running on its schedule.
    let attached = admin
        .update_export(pb::UpdateExportRequest {
            export: Some(pb::Export {
                name: created.name.clone(),
                connection: conn_name("acme", "private"),
                ..Default::default()
            }),
            update_mask: mask(&["connection"]),
            validate_only: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(attached.state, pb::ExportState::Active as i32);
    assert_eq!(attached.connection_display_name, "Private files");
    assert!(attached.schedule.unwrap().next_run_time.is_some());
    t.stop().await;
}

#[tokio::test]
async fn a_used_connection_is_deleted_only_with_force_which_detaches_its_exports() {
    let t = acme().await;
    let mut admin = t.exports("acme", Role::Admin).await;
    let a = create(&mut admin, data_out("acme", "a", "A", "files", &[CUSTOMERS])).await;
    let b = create(
        &mut admin,
        segment_export("acme", "b", "B", "files", &[VIP], &[("email", "email")]),
    )
    .await;
    create(&mut admin, data_out("acme", "other", "Other", "private", &[CUSTOMERS])).await;
    let mut connections = t.connections("acme", Role::Admin).await;
    let status = expect_code(
        connections
            .delete_connection(pb::DeleteConnectionRequest {
                name: conn_name("acme", "files"),
                ..Default::default()
            })
            .await,
        Code::FailedPrecondition,
    );
    assert_eq!(reason(&status), "CONNECTION_IN_USE");
    assert_eq!(precondition_subjects(&status), vec![a.name.clone(), b.name.clone()]);
    assert_eq!(get(&mut admin, &a.name).await, a, "a refused delete changes nothing");

    let deleted = connections
        .delete_connection(pb::DeleteConnectionRequest {
            name: conn_name("acme", "files"),
            force: true,
            etag: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.detached_exports, vec![a.name.clone(), b.name.clone()]);
    for before in [&a, &b] {
        let export = get(&mut admin, &before.name).await;
        assert_eq!(export.state, pb::ExportState::Detached as i32);
        assert_eq!(export.connection, "");
        assert_ne!(export.etag, before.etag, "detaching is a change");
    }
    expect_code(
        connections
            .get_connection(pb::GetConnectionRequest {
                name: conn_name("acme", "files"),
            })
            .await,
        Code::NotFound,
    );
    // The other connection's export is untouched, and an unused connection goes at once.
    let listed = list(&mut admin, "state = ACTIVE", "").await;
    assert_eq!(listed, vec!["Other"]);
    connections
        .delete_connection(pb::DeleteConnectionRequest {
            name: conn_name("acme", "mc"),
            ..Default::default()
        })
        .await
        .unwrap();
    t.stop().await;
}

#[tokio::test]
async fn entities_and_segments_are_not_deleted_while_exports_read_them() {
    let t = acme().await;
    let mut catalog = t.catalog("acme", Role::Admin).await;
    catalog
        .create_entity(customers_entity("acme", "orders", pb::EntityKind::Other))
        .await
        .unwrap();
    let orders = "environments/acme/entities/orders";
    let mut admin = t.exports("acme", Role::Admin).await;
    let out = create(&mut admin, data_out("acme", "orders-out", "Orders", "files", &[orders])).await;
    let aud = create(
        &mut admin,
        segment_export("acme", "france-out", "France", "files", &[FRANCE], &[]),
    )
    .await;

    let status = expect_code(
        catalog
            .delete_entity(pb::DeleteEntityRequest { name: orders.into() })
            .await,
        Code::FailedPrecondition,
    );
    assert_eq!(reason(&status), "ENTITY_IN_USE");
    assert_eq!(precondition_subjects(&status), vec![out.name.clone()]);
    let status = expect_code(
        catalog
            .delete_segment(pb::DeleteSegmentRequest { name: FRANCE.into() })
            .await,
        Code::FailedPrecondition,
    );
    assert_eq!(reason(&status), "SEGMENT_IN_USE");
    assert_eq!(precondition_subjects(&status), vec![aud.name.clone()]);

    // Once the exports stop reading them, they go.
    admin
        .update_export(pb::UpdateExportRequest {
            export: Some(pb::Export {
                name: aud.name.clone(),
                segments: strings(&[VIP]),
                ..Default::default()
            }),
            update_mask: mask(&["segments"]),
            validate_only: false,
        })
        .await
        .unwrap();
    catalog
        .delete_segment(pb::DeleteSegmentRequest { name: FRANCE.into() })
        .await
        .unwrap();
    admin
        .delete_export(pb::DeleteExportRequest {
            name: out.name.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    catalog
        .delete_entity(pb::DeleteEntityRequest { name: orders.into() })
        .await
        .unwrap();
    t.stop().await;
}

fn cron_schedule(expression: &str, time_zone: &str, enabled: bool) -> pb::Schedule {
    pb::Schedule {
        enabled,
        trigger: Some(pb::schedule::Trigger::Cron(pb::CronSchedule {
            expression: expression.into(),
            time_zone: time_zone.into(),
        })),
        next_run_time: None,
    }
}

#[tokio::test]
async fn batch_schedules_keep_or_replace_all_or_nothing() {
    let t = acme().await;
    let mut admin = t.exports("acme", Role::Admin).await;
    let s1 = create(&mut admin, data_out("acme", "s1", "S1", "files", &[CUSTOMERS])).await;
    let s2 = create(&mut admin, data_out("acme", "s2", "S2", "files", &[CUSTOMERS])).await;
    let p1 = create(&mut admin, data_out("acme", "p1", "P1", "private", &[CUSTOMERS])).await;
    let batch = |names: &[&str], mode: pb::ScheduleUpdateMode, schedule: Option<pb::Schedule>, enabled: bool| {
        pb::UpdateExportSchedulesRequest {
            parent: ACME.into(),
            names: strings(names),
            mode: mode as i32,
            schedule,
            enabled,
        }
    };
    use pb::ScheduleUpdateMode::{KeepIndividualSchedules as Keep, ReplaceSchedules as Replace};

    // Keep: only switches on or off.
    let off = admin
        .update_export_schedules(batch(&[&s2.name, &s1.name], Keep, None, false))
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = off.exports.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, vec![s2.name.as_str(), s1.name.as_str()], "in the order named");
    for export in &off.exports {
        let schedule = export.schedule.as_ref().unwrap();
        assert!(!schedule.enabled);
        assert!(matches!(
            schedule.trigger,
            Some(pb::schedule::Trigger::SystemRefresh(_))
        ));
    }

    // Replace: every export gets the schedule, with its own `enabled`.
    let replaced = admin
        .update_export_schedules(batch(
            &[&s1.name, &p1.name],
            Replace,
            Some(cron_schedule("0 6 * * *", "Europe/Paris", true)),
            false,
        ))
        .await
        .unwrap()
        .into_inner();
    for export in &replaced.exports {
        let schedule = export.schedule.as_ref().unwrap();
        assert!(schedule.enabled, "the top-level `enabled` is ignored when replacing");
        assert!(schedule.next_run_time.is_some());
    }
    let before: Vec<pb::Export> = {
        let mut all = Vec::new();
        for name in [&s1.name, &s2.name, &p1.name] {
            all.push(get(&mut admin, name).await);
        }
        all
    };

    // All or nothing.
    let mut contributor = t.exports("acme", Role::Contributor).await;
    let status = expect_code(
        contributor
            .update_export_schedules(batch(&[&s2.name, &p1.name], Keep, None, true))
            .await,
        Code::PermissionDenied,
    );
    assert!(status.message().contains("exports.schedule"), "{}", status.message());
    // Of the exports named, the message says which one was refused.
    assert!(
        status.message().starts_with(&format!("export '{}': ", p1.name)),
        "{}",
        status.message()
    );
    let status = expect_code(
        admin
            .update_export_schedules(batch(
                &[&s1.name, &s2.name],
                Replace,
                Some(cron_schedule("0 25 * * *", "", true)),
                false,
            ))
            .await,
        Code::InvalidArgument,
    );
    assert_eq!(bad_fields(&status), vec!["schedule.cron.expression"]);
    let missing = export_name("acme", "missing");
    expect_code(
        admin
            .update_export_schedules(batch(&[&s2.name, &missing], Keep, None, true))
            .await,
        Code::NotFound,
    );
    for (request, field) in [
        (batch(&[&s2.name, &s2.name], Keep, None, true), "names[1]"),
        (batch(&[], Keep, None, true), "names"),
        (batch(&["environments/globex/exports/x"], Keep, None, true), "names[0]"),
        (
            batch(&[&s2.name], pb::ScheduleUpdateMode::Unspecified, None, true),
            "mode",
        ),
        (batch(&[&s2.name], Replace, None, true), "schedule"),
    ] {
        let status = expect_code(admin.update_export_schedules(request).await, Code::InvalidArgument);
        assert_eq!(bad_fields(&status), vec![field]);
    }
    let mut viewer = t.exports("acme", Role::Viewer).await;
    expect_code(
        viewer
            .update_export_schedules(batch(&[&s2.name], Keep, None, true))
            .await,
        Code::PermissionDenied,
    );
    for export in &before {
        assert_eq!(&get(&mut admin, &export.name).await, export, "nothing changed");
    }

    // A contributor schedules what it may edit.
    let on = contributor
        .update_export_schedules(batch(&[&s1.name, &s2.name], Keep, None, true))
        .await
        .unwrap()
        .into_inner();
    assert!(on.exports.iter().all(|e| e.schedule.as_ref().unwrap().enabled));
    assert!(matches!(
        on.exports[0].schedule.as_ref().unwrap().trigger,
        Some(pb::schedule::Trigger::Cron(_))
    ));
    assert_eq!(on.exports[0].etag, before[0].etag, "already on: unchanged");
    assert_ne!(on.exports[1].etag, before[1].etag);
    t.stop().await;
}

#[tokio::test]
async fn next_run_times_are_local_clock_times() {
    let t = acme().await;
    let mut admin = t.exports("acme", Role::Admin).await;
    let cases: Vec<(pb::Schedule, &str)> = vec![
        (cron_schedule("0 6 * * *", "Europe/Paris", true), "Europe/Paris"),
        (
            pb::Schedule {
                enabled: true,
                trigger: Some(pb::schedule::Trigger::Recurrence(pb::Recurrence {
                    frequency: pb::Frequency::Daily as i32,
                    time_of_day: "06:00".into(),
                    time_zone: "America/New_York".into(),
                    ..Default::default()
                })),
                next_run_time: None,
            },
            "America/New_York",
        ),
        (
            pb::Schedule {
                enabled: true,
                trigger: Some(pb::schedule::Trigger::Recurrence(pb::Recurrence {
                    frequency: pb::Frequency::Weekly as i32,
                    days_of_week: vec![
                        pb::google::r#type::DayOfWeek::Monday as i32,
                        pb::google::r#type::DayOfWeek::Thursday as i32,
                    ],
                    time_of_day: "06:00".into(),
                    time_zone: "Australia/Sydney".into(),
                    ..Default::default()
                })),
                next_run_time: None,
            },
            "Australia/Sydney",
        ),
        (
            pb::Schedule {
                enabled: true,
                trigger: Some(pb::schedule::Trigger::Recurrence(pb::Recurrence {
                    frequency: pb::Frequency::Monthly as i32,
                    day_of_month: 31,
                    time_of_day: "06:00".into(),
                    time_zone: "Europe/London".into(),
                    ..Default::default()
                })),
                next_run_time: None,
            },
            "Europe/London",
        ),
    ];
    let now = Utc::now();
    for (i, (schedule, zone)) in cases.into_iter().enumerate() {
        let mut request = data_out("acme", &format!("s{i}"), "S", "files", &[CUSTOMERS]);
        request.export.as_mut().unwrap().schedule = Some(schedule);
        let created = create(&mut admin, request).await;
        let next = created
            .schedule
            .unwrap()
            .next_run_time
            .expect("a timed schedule has a next run");
        assert_eq!((next.seconds % 60, next.nanos), (0, 0), "{zone}: whole minutes");
        let next = Utc.timestamp_opt(next.seconds, next.nanos as u32).unwrap();
        assert!(next > now, "{zone}: {next} is in the future");
        assert!(next - now <= chrono::Duration::days(32), "{zone}: {next}");
        // 06:00 exists every day in these zones (their DST changes are at night), so the next
        // run is at 06:00 local whatever the offset of that day.
        let local = next.with_timezone(&zone.parse::<chrono_tz::Tz>().unwrap());
        assert_eq!((local.hour(), local.minute()), (6, 0), "{zone}: {local}");
        match i {
            2 => assert!(
                matches!(local.weekday(), chrono::Weekday::Mon | chrono::Weekday::Thu),
                "{local}"
            ),
            3 => {
                let last_day = (local.date_naive() + chrono::Duration::days(1)).day() == 1;
                assert!(
                    local.day() == 31 || last_day,
                    "a short month runs on its last day: {local}"
                );
            }
            _ => {}
        }
    }
    // Hourly: quarter past every hour, within the hour.
    let mut request = data_out("acme", "hourly", "Hourly", "files", &[CUSTOMERS]);
    request.export.as_mut().unwrap().schedule = Some(pb::Schedule {
        enabled: true,
        trigger: Some(pb::schedule::Trigger::Recurrence(pb::Recurrence {
            frequency: pb::Frequency::Hourly as i32,
            time_of_day: "00:15".into(),
            ..Default::default()
        })),
        next_run_time: None,
    });
    let next = create(&mut admin, request)
        .await
        .schedule
        .unwrap()
        .next_run_time
        .unwrap();
    let next = Utc.timestamp_opt(next.seconds, 0).unwrap();
    assert_eq!(next.minute(), 15);
    assert!(next - Utc::now() <= chrono::Duration::hours(1));
    t.stop().await;
}

#[tokio::test]
async fn formats_other_than_csv_and_parquet_are_refused_when_saved() {
    let t = acme().await;
    let mut admin = t.exports("acme", Role::Admin).await;
    let mut request = data_out("acme", "avro", "Avro", "files", &[CUSTOMERS]);
    request
        .export
        .as_mut()
        .unwrap()
        .settings
        .insert("format".into(), "avro".into());
    let status = expect_code(admin.create_export(request).await, Code::InvalidArgument);
    assert_eq!(bad_fields(&status), vec!["export.settings.format"]);
    t.stop().await;
}

/// Reads are served from a cache on SQLite; every kind of write an export's view depends on
/// must show in the very next read (each read below is repeated first, so it was cached).
#[tokio::test]
async fn reads_show_every_change_at_once() {
    let t = acme().await;
    let mut admin = t.exports("acme", Role::Admin).await;
    let mut contributor = t.exports("acme", Role::Contributor).await;
    let export = create(
        &mut admin,
        segment_export("acme", "vips", "VIPs", "files", &[VIP], &[("email", "email")]),
    )
    .await;
    let read_twice = |client: &mut Exports| {
        let mut client = client.clone();
        let name = export.name.clone();
        async move {
            let first = get(&mut client, &name).await;
            let listed = list_exports(&mut client).await;
            assert_eq!(get(&mut client, &name).await, first);
            assert_eq!(list_exports(&mut client).await, listed);
            (first, listed)
        }
    };
    let (before, _) = read_twice(&mut admin).await;
    assert_eq!(before.segment_member_counts[VIP], 5);
    let (seen, _) = read_twice(&mut contributor).await;
    assert_eq!(seen.your_permission, pb::Permission::Edit as i32);

    // The connection is renamed and no longer shared with contributors.
    let mut connections = t.connections("acme", Role::Admin).await;
    connections
        .update_connection(pb::UpdateConnectionRequest {
            connection: Some(pb::Connection {
                name: conn_name("acme", "files"),
                display_name: "Lake".into(),
                contributors_can_use: false,
                ..Default::default()
            }),
            update_mask: mask(&["display_name", "contributors_can_use"]),
        })
        .await
        .unwrap();
    let (after, listed) = read_twice(&mut admin).await;
    assert_eq!(after.connection_display_name, "Lake");
    assert_eq!(listed[0].connection_display_name, "Lake");
    let (seen, listed) = read_twice(&mut contributor).await;
    assert_eq!(seen.your_permission, pb::Permission::View as i32);
    assert_eq!(listed[0].your_permission, pb::Permission::View as i32);

    // Records leave the catalog, and with them the segment's members.
    let mut catalog = t.catalog("acme", Role::Admin).await;
    catalog
        .write_records(tokio_stream::iter(vec![write(CUSTOMERS, vec![], &["c00", "c02"])]))
        .await
        .unwrap();
    let (after, listed) = read_twice(&mut admin).await;
    assert_eq!(after.segment_member_counts[VIP], 3);
    assert_eq!(listed[0].segment_member_counts[VIP], 3);

    // A detach changes the export itself.
    admin
        .detach_connection(pb::DetachConnectionRequest {
            name: export.name.clone(),
        })
        .await
        .unwrap();
    let (after, listed) = read_twice(&mut admin).await;
    assert_eq!(after.state, pb::ExportState::Detached as i32);
    assert_eq!(listed[0].state, pb::ExportState::Detached as i32);
    t.stop().await;
}

async fn list_exports(exports: &mut Exports) -> Vec<pb::Export> {
    exports
        .list_exports(pb::ListExportsRequest {
            parent: ACME.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .exports
}
