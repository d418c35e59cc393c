//! The audit log (PRODUCT.md §15) through AuditService: every mutating RPC writes exactly one
//! event with its change (walked from the policy table), refused attempts are recorded with
//! code 7, failed changes leave nothing, no secret value is ever in an event, and the list is
//! admin-only, newest first, filtered and paged.

use std::collections::BTreeSet;

use exportd::auth::Role;
use exportd::auth::policy::TABLE;
use exportd::pb;
use tonic::Code;
use tonic_types::StatusExt;

use crate::common::*;

const SECRET: &str = "sk-very-secret-value-0042";
const OTHER_SECRET: &str = "sk-another-secret-value-0043";

/// Every event of acme, newest first.
async fn all_events(t: &TestServer) -> Vec<pb::AuditEvent> {
    list(t, "", "").await
}

async fn list(t: &TestServer, filter: &str, order_by: &str) -> Vec<pb::AuditEvent> {
    t.audit("acme", Role::Admin)
        .await
        .list_audit_events(pb::ListAuditEventsRequest {
            parent: ACME.into(),
            filter: filter.into(),
            order_by: order_by.into(),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|s| panic!("ListAuditEvents {filter:?}: {s:?}"))
        .into_inner()
        .audit_events
}

/// A token of `sub` with `role` in acme.
fn token_of(sub: &str, role: Role) -> String {
    let roles = [("acme".to_string(), role)].into_iter().collect();
    exportd::auth::jwt::sign_hs256(HS_SECRET.as_bytes(), sub, &roles, std::time::Duration::from_secs(600)).unwrap()
}

async fn exports_as(t: &TestServer, sub: &str, role: Role) -> Exports {
    pb::export_service_client::ExportServiceClient::new(tonic::service::interceptor::InterceptedService::new(
        t.channel().await,
        Bearer(Some(token_of(sub, role))),
    ))
}

/// Counts the events before and after each step: each step is one call of one mutating RPC and
/// must add exactly one event, for that method and resource, with code 0.
struct Walk<'a> {
    t: &'a TestServer,
    seen: usize,
    covered: BTreeSet<String>,
}

impl Walk<'_> {
    async fn step<T: std::fmt::Debug>(
        &mut self,
        method: &str,
        resource: &str,
        result: Result<tonic::Response<T>, tonic::Status>,
    ) -> pb::AuditEvent {
        let full = format!("/exportd.v1.{method}");
        if let Err(status) = &result {
            panic!("{method}: {status:?}");
        }
        let events = all_events(self.t).await;
        assert_eq!(events.len(), self.seen + 1, "{method} wrote one event: {events:#?}");
        self.seen += 1;
        let event = events[0].clone();
        assert_eq!(event.method, full);
        assert_eq!(event.resource, resource, "{method}");
        assert_eq!(event.code, 0, "{method}");
        assert_eq!(event.actor, "tester");
        assert!(!event.request_id.is_empty(), "{method}");
        assert!(
            event.name.starts_with("environments/acme/auditEvents/"),
            "{}",
            event.name
        );
        self.covered.insert(full);
        event
    }
}

#[tokio::test]
async fn every_mutating_rpc_writes_exactly_one_event() {
    let t = setup(api_only()).await;
    let mut walk = Walk {
        seen: all_events(&t).await.len(),
        t: &t,
        covered: BTreeSet::new(),
    };
    let mut connections = t.connections("acme", Role::Admin).await;
    let mut exports = t.exports("acme", Role::Admin).await;
    let mut catalog = t.catalog("acme", Role::Admin).await;
    let c2 = conn_name("acme", "c2");

    let r = connections
        .create_connection(local_files_at("acme", "c2", "C2", true, &t.data_dir.path().join("c2")))
        .await;
    let e = walk.step("ConnectionService/CreateConnection", &c2, r).await;
    assert!(e.changed_fields.contains(&"display_name".to_string()), "{e:?}");
    let r = connections
        .update_connection(pb::UpdateConnectionRequest {
            connection: Some(pb::Connection {
                name: c2.clone(),
                display_name: "C two".into(),
                ..Default::default()
            }),
            update_mask: mask(&["display_name"]),
        })
        .await;
    let e = walk.step("ConnectionService/UpdateConnection", &c2, r).await;
    assert_eq!(e.changed_fields, vec!["display_name"]);

    let e1 = export_name("acme", "e1");
    let e2 = export_name("acme", "e2");
    let r = exports.create_export(files_export("e1")).await;
    walk.step("ExportService/CreateExport", &e1, r).await;
    let r = exports
        .update_export(pb::UpdateExportRequest {
            export: Some(pb::Export {
                name: e1.clone(),
                display_name: "E one".into(),
                ..Default::default()
            }),
            update_mask: mask(&["display_name"]),
            ..Default::default()
        })
        .await;
    let e = walk.step("ExportService/UpdateExport", &e1, r).await;
    assert_eq!(e.changed_fields, vec!["display_name"]);
    let r = exports
        .duplicate_export(pb::DuplicateExportRequest {
            name: e1.clone(),
            export_id: "e2".into(),
            display_name: "E two".into(),
        })
        .await;
    walk.step("ExportService/DuplicateExport", &e2, r).await;
    let run = exports
        .run_export(pb::RunExportRequest {
            name: e1.clone(),
            request_id: String::new(),
        })
        .await;
    let run_name = run.as_ref().map(|r| r.get_ref().name.clone()).unwrap_or_default();
    let e = walk.step("ExportService/RunExport", &e1, run).await;
    assert_eq!(e.summary, format!("started run {run_name}"));
    let r = exports
        .cancel_export_run(pb::CancelExportRunRequest { name: run_name.clone() })
        .await;
    let e = walk.step("ExportService/CancelExportRun", &e1, r).await;
    assert_eq!(e.summary, format!("cancelled run {run_name}"));
    let r = exports
        .run_all_exports(pb::RunAllExportsRequest { parent: ACME.into() })
        .await;
    walk.step("ExportService/RunAllExports", ACME, r).await;
    let r = exports
        .update_export_schedules(pb::UpdateExportSchedulesRequest {
            parent: ACME.into(),
            names: vec![e1.clone()],
            mode: pb::ScheduleUpdateMode::ReplaceSchedules as i32,
            schedule: Some(yearly_cron()),
            enabled: true,
        })
        .await;
    walk.step("ExportService/UpdateExportSchedules", ACME, r).await;
    let r = exports
        .detach_connection(pb::DetachConnectionRequest { name: e2.clone() })
        .await;
    walk.step("ExportService/DetachConnection", &e2, r).await;
    let r = exports
        .delete_export(pb::DeleteExportRequest {
            name: e2.clone(),
            etag: String::new(),
        })
        .await;
    walk.step("ExportService/DeleteExport", &e2, r).await;
    let r = connections
        .delete_connection(pb::DeleteConnectionRequest {
            name: c2.clone(),
            ..Default::default()
        })
        .await;
    walk.step("ConnectionService/DeleteConnection", &c2, r).await;

    let r = catalog
        .update_environment(pb::UpdateEnvironmentRequest {
            environment: Some(pb::Environment {
                name: ACME.into(),
                display_name: "Acme Inc".into(),
                ..Default::default()
            }),
            update_mask: mask(&["display_name"]),
        })
        .await;
    walk.step("CatalogService/UpdateEnvironment", ACME, r).await;
    let people = "environments/acme/entities/people";
    let r = catalog
        .create_entity(customers_entity("acme", "people", pb::EntityKind::Contact))
        .await;
    walk.step("CatalogService/CreateEntity", people, r).await;
    let r = catalog
        .update_entity(pb::UpdateEntityRequest {
            entity: Some(pb::Entity {
                name: people.into(),
                display_name: "People".into(),
                ..Default::default()
            }),
            update_mask: mask(&["display_name"]),
            ..Default::default()
        })
        .await;
    walk.step("CatalogService/UpdateEntity", people, r).await;
    let r = catalog
        .write_records(tokio_stream::iter(vec![
            write(people, ten_customers(), &[]),
            write(people, vec![], &["c09"]),
        ]))
        .await;
    let e = walk.step("CatalogService/WriteRecords", people, r).await;
    assert_eq!(e.summary, "upserted 10, deleted 1 in 2 messages");
    let pushed = "environments/acme/segments/pushed";
    let r = catalog
        .create_segment(pb::CreateSegmentRequest {
            parent: ACME.into(),
            segment_id: "pushed".into(),
            segment: Some(pb::Segment {
                display_name: "Pushed".into(),
                entity: people.into(),
                definition: Some(pb::segment::Definition::Members(pb::PushedMembers {})),
                ..Default::default()
            }),
        })
        .await;
    walk.step("CatalogService/CreateSegment", pushed, r).await;
    let r = catalog
        .set_segment_members(tokio_stream::iter(vec![
            pb::SetSegmentMembersRequest {
                segment: pushed.into(),
                keys: strings(&["c00", "c01"]),
            },
            pb::SetSegmentMembersRequest {
                segment: pushed.into(),
                keys: strings(&["c02"]),
            },
        ]))
        .await;
    let e = walk.step("CatalogService/SetSegmentMembers", pushed, r).await;
    assert_eq!(e.summary, "set 3 member keys in 2 messages");
    let r = catalog
        .update_segment(pb::UpdateSegmentRequest {
            segment: Some(pb::Segment {
                name: pushed.into(),
                display_name: "Pushed members".into(),
                ..Default::default()
            }),
            update_mask: mask(&["display_name"]),
        })
        .await;
    walk.step("CatalogService/UpdateSegment", pushed, r).await;
    let r = catalog
        .start_refresh(pb::StartRefreshRequest { name: people.into() })
        .await;
    walk.step("CatalogService/StartRefresh", people, r).await;
    let r = catalog
        .complete_refresh(pb::CompleteRefreshRequest { name: people.into() })
        .await;
    walk.step("CatalogService/CompleteRefresh", people, r).await;
    let r = catalog
        .delete_segment(pb::DeleteSegmentRequest { name: pushed.into() })
        .await;
    walk.step("CatalogService/DeleteSegment", pushed, r).await;
    let r = catalog
        .delete_entity(pb::DeleteEntityRequest { name: people.into() })
        .await;
    walk.step("CatalogService/DeleteEntity", people, r).await;
    let r = catalog
        .run_system_refresh(pb::RunSystemRefreshRequest { parent: ACME.into() })
        .await;
    walk.step("CatalogService/RunSystemRefresh", ACME, r).await;

    let hook = conn_name("acme", "hook");
    let r = connections
        .create_connection(connection(
            "acme",
            "hook",
            "Alerts",
            "webhook",
            &[("url", "http://127.0.0.1:9/hooks")],
            &[],
            true,
        ))
        .await;
    walk.step("ConnectionService/CreateConnection", &hook, r).await;
    let mut alerts = t.alerts("acme", Role::Admin).await;
    let policy = "environments/acme/alertPolicies/p";
    let r = alerts
        .create_alert_policy(pb::CreateAlertPolicyRequest {
            parent: ACME.into(),
            alert_policy_id: "p".into(),
            alert_policy: Some(pb::AlertPolicy {
                display_name: "P".into(),
                connection: hook.clone(),
                conditions: vec![pb::AlertCondition::RunFailed as i32],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;
    walk.step("AlertService/CreateAlertPolicy", policy, r).await;
    let r = alerts
        .update_alert_policy(pb::UpdateAlertPolicyRequest {
            alert_policy: Some(pb::AlertPolicy {
                name: policy.into(),
                enabled: true,
                ..Default::default()
            }),
            update_mask: mask(&["enabled"]),
        })
        .await;
    let e = walk.step("AlertService/UpdateAlertPolicy", policy, r).await;
    assert_eq!(e.changed_fields, vec!["enabled"]);
    let r = alerts
        .delete_alert_policy(pb::DeleteAlertPolicyRequest {
            name: policy.into(),
            etag: String::new(),
        })
        .await;
    walk.step("AlertService/DeleteAlertPolicy", policy, r).await;

    let audited: BTreeSet<String> = TABLE
        .iter()
        .filter(|row| row.audited())
        .map(|row| row.full_method())
        .collect();
    assert_eq!(
        walk.covered, audited,
        "every audited RPC of the policy table was walked"
    );
    // And the reads among them wrote nothing: the walk's reads (ListAuditEvents itself,
    // GetExportRun…) are not in the log.
    let methods: BTreeSet<String> = all_events(&t).await.into_iter().map(|e| e.method).collect();
    assert!(methods.iter().all(|m| audited.contains(m)), "{methods:?}");
}

#[tokio::test]
async fn secrets_appear_as_keys_never_as_values() {
    let t = TestServer::start().await;
    let mut connections = t.connections("acme", Role::Admin).await;
    let name = conn_name("acme", "mc");
    connections
        .create_connection(connection(
            "acme",
            "mc",
            "Mailchimp",
            "mailchimp",
            &[("server_prefix", "us1"), ("audience_id", "list1")],
            &[("api_key", SECRET)],
            true,
        ))
        .await
        .unwrap();
    for paths in [vec!["secrets.api_key"], vec!["secrets"]] {
        connections
            .update_connection(pb::UpdateConnectionRequest {
                connection: Some(pb::Connection {
                    name: name.clone(),
                    secrets: pairs(&[("api_key", OTHER_SECRET)]),
                    ..Default::default()
                }),
                update_mask: mask(&paths),
            })
            .await
            .unwrap();
    }
    let events = all_events(&t).await;
    assert_eq!(events.len(), 3, "{events:#?}");
    for event in &events {
        assert!(
            event.changed_fields.contains(&"secrets.api_key".to_string()),
            "{event:?}"
        );
        let shown = format!("{event:?}");
        assert!(!shown.contains(SECRET) && !shown.contains(OTHER_SECRET), "{shown}");
    }
    assert_eq!(
        events[2].changed_fields,
        vec![
            "display_name",
            "type",
            "config",
            "secrets.api_key",
            "contributors_can_use"
        ]
    );
}

#[tokio::test]
async fn refused_attempts_are_recorded_with_code_7() {
    let t = acme().await;
    let before = all_events(&t).await.len();
    let mut viewer = exports_as(&t, "vera", Role::Viewer).await;
    expect_code(viewer.create_export(files_export("nope")).await, Code::PermissionDenied);
    let contributor_token = token_of("carl", Role::Contributor);
    let mut catalog = t.catalog_with(Some(contributor_token)).await;
    expect_code(
        write_all(&mut catalog, vec![write(CUSTOMERS, ten_customers(), &[])])
            .await
            .map(tonic::Response::new),
        Code::PermissionDenied,
    );
    let events = all_events(&t).await;
    assert_eq!(events.len(), before + 2, "{events:#?}");
    let write = &events[0];
    assert_eq!(write.method, "/exportd.v1.CatalogService/WriteRecords");
    assert_eq!(write.actor, "carl");
    assert_eq!(write.code, 7);
    assert_eq!(
        write.resource, ACME,
        "refused before any message was read: the environment"
    );
    let create = &events[1];
    assert_eq!(create.method, "/exportd.v1.ExportService/CreateExport");
    assert_eq!(create.actor, "vera");
    assert_eq!(create.code, 7);
    assert_eq!(create.resource, export_name("acme", "nope"));
    // Nothing was created.
    let mut admin = t.exports("acme", Role::Admin).await;
    expect_code(
        admin
            .get_export(pb::GetExportRequest {
                name: export_name("acme", "nope"),
            })
            .await,
        Code::NotFound,
    );
}

/// Updates racing with one etag: the writes that lose find the revision moved on inside their
/// transaction (or before it) and are refused; only the one that changed the export is in the
/// log — its event went in the same statement batch as its UPDATE on SQLite, and a loser's went
/// with its rolled-back transaction.
#[tokio::test]
async fn racing_updates_with_one_etag_log_only_the_one_that_changed() {
    let t = acme().await;
    let mut exports = t.exports("acme", Role::Admin).await;
    let export = exports.create_export(files_export("e1")).await.unwrap().into_inner();
    let before = all_events(&t).await.len();
    let mut racers = Vec::new();
    for i in 0..8 {
        let mut client = exports.clone();
        let (name, etag) = (export.name.clone(), export.etag.clone());
        racers.push(tokio::spawn(async move {
            client
                .update_export(pb::UpdateExportRequest {
                    export: Some(pb::Export {
                        name,
                        display_name: format!("Racer {i}"),
                        etag,
                        ..Default::default()
                    }),
                    update_mask: mask(&["display_name"]),
                    ..Default::default()
                })
                .await
        }));
    }
    let mut won = Vec::new();
    for racer in racers {
        match racer.await.unwrap() {
            Ok(updated) => won.push(updated.into_inner()),
            Err(status) => assert_eq!(status.code(), Code::Aborted, "{status:?}"),
        }
    }
    assert_eq!(won.len(), 1, "exactly one update wins: {won:?}");
    let events = all_events(&t).await;
    let updates: Vec<_> = events
        .iter()
        .filter(|e| e.method == "/exportd.v1.ExportService/UpdateExport" && e.code == 0)
        .collect();
    assert_eq!(events.len(), before + 1, "{events:#?}");
    assert_eq!(updates.len(), 1, "{events:#?}");
    assert_eq!(updates[0].resource, export.name);
    assert_eq!(updates[0].changed_fields, ["display_name"]);
}

#[tokio::test]
async fn failed_changes_validations_and_retries_leave_no_event() {
    let t = acme().await;
    let mut exports = t.exports("acme", Role::Admin).await;
    let mut connections = t.connections("acme", Role::Admin).await;
    let export = exports
        .create_export(pb::CreateExportRequest {
            request_id: "req-once".into(),
            ..files_export("e1")
        })
        .await
        .unwrap()
        .into_inner();
    let before = all_events(&t).await;

    // A retry of the same request id answers the first result and changes nothing.
    exports
        .create_export(pb::CreateExportRequest {
            request_id: "req-once".into(),
            ..files_export("e1")
        })
        .await
        .unwrap();
    // Refused inside the transaction: the connection is in use (FAILED_PRECONDITION), an id
    // that exists (ALREADY_EXISTS).
    expect_code(
        connections
            .delete_connection(pb::DeleteConnectionRequest {
                name: conn_name("acme", "files"),
                ..Default::default()
            })
            .await,
        Code::FailedPrecondition,
    );
    expect_code(
        connections
            .create_connection(local_files("acme", "files", "Again", true))
            .await,
        Code::AlreadyExists,
    );
    // A stale etag, and a validation only.
    expect_code(
        exports
            .update_export(pb::UpdateExportRequest {
                export: Some(pb::Export {
                    name: export.name.clone(),
                    display_name: "X".into(),
                    etag: "\"stale\"".into(),
                    ..Default::default()
                }),
                update_mask: mask(&["display_name"]),
                ..Default::default()
            })
            .await,
        Code::Aborted,
    );
    exports
        .create_export(pb::CreateExportRequest {
            validate_only: true,
            ..files_export("e2")
        })
        .await
        .unwrap();
    // Completing a refresh that was not started.
    let mut catalog = t.catalog("acme", Role::Admin).await;
    expect_code(
        catalog
            .complete_refresh(pb::CompleteRefreshRequest { name: CUSTOMERS.into() })
            .await,
        Code::FailedPrecondition,
    );
    assert_eq!(all_events(&t).await, before);
}

#[tokio::test]
async fn only_admins_list_the_log() {
    let t = TestServer::start().await;
    for role in [Role::Viewer, Role::Contributor] {
        let status = expect_code(
            t.audit("acme", role)
                .await
                .list_audit_events(pb::ListAuditEventsRequest {
                    parent: ACME.into(),
                    ..Default::default()
                })
                .await,
            Code::PermissionDenied,
        );
        assert!(status.message().contains("auditEvents.list"), "{status:?}");
    }
    // Another tenant's log does not exist for acme's admin.
    expect_code(
        t.audit("acme", Role::Admin)
            .await
            .list_audit_events(pb::ListAuditEventsRequest {
                parent: "environments/globex".into(),
                ..Default::default()
            })
            .await,
        Code::NotFound,
    );
}

#[tokio::test]
async fn filters_order_and_pages() {
    let t = TestServer::start().await;
    let mut alice = pb::connection_service_client::ConnectionServiceClient::new(
        tonic::service::interceptor::InterceptedService::new(
            t.channel().await,
            Bearer(Some(token_of("alice", Role::Admin))),
        ),
    );
    let mut bob = t.connections_with(Some(token_of("bob", Role::Admin))).await;
    for i in 0..3 {
        alice
            .create_connection(local_files("acme", &format!("a{i}"), "A", true))
            .await
            .unwrap();
    }
    let midpoint = all_events(&t).await[0].time.unwrap();
    for i in 0..2 {
        bob.create_connection(local_files("acme", &format!("b{i}"), "B", true))
            .await
            .unwrap();
    }
    bob.delete_connection(pb::DeleteConnectionRequest {
        name: conn_name("acme", "a0"),
        ..Default::default()
    })
    .await
    .unwrap();

    let all = all_events(&t).await;
    assert_eq!(all.len(), 6);
    let resources: Vec<&str> = all.iter().map(|e| e.resource.as_str()).collect();
    assert_eq!(
        resources,
        vec![
            "environments/acme/connections/a0",
            "environments/acme/connections/b1",
            "environments/acme/connections/b0",
            "environments/acme/connections/a2",
            "environments/acme/connections/a1",
            "environments/acme/connections/a0",
        ],
        "newest first"
    );
    let oldest_first: Vec<String> = list(&t, "", "time").await.into_iter().map(|e| e.name).collect();
    let mut reversed: Vec<String> = all.iter().map(|e| e.name.clone()).collect();
    reversed.reverse();
    assert_eq!(oldest_first, reversed);

    assert_eq!(list(&t, r#"actor = "alice""#, "").await.len(), 3);
    let bobs = list(
        &t,
        r#"actor = "bob" AND method = "/exportd.v1.ConnectionService/CreateConnection""#,
        "",
    )
    .await;
    assert_eq!(bobs.len(), 2);
    assert!(bobs.iter().all(|e| e.actor == "bob"));
    let a0 = list(&t, r#"resource = "environments/acme/connections/a0""#, "").await;
    assert_eq!(a0.len(), 2);
    assert_eq!(a0[0].method, "/exportd.v1.ConnectionService/DeleteConnection");
    let stamp = chrono::DateTime::from_timestamp(midpoint.seconds, midpoint.nanos as u32)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let later = list(&t, &format!(r#"time > "{stamp}""#), "").await;
    assert_eq!(later.len(), 3, "bob's three calls came after alice's last");
    let earlier = list(&t, &format!(r#"time <= "{stamp}" AND actor = "alice""#), "").await;
    assert_eq!(earlier.len(), 3);

    // Pages of two walk the same list.
    let mut audit = t.audit("acme", Role::Admin).await;
    let mut token = String::new();
    let mut paged = Vec::new();
    loop {
        let page = audit
            .list_audit_events(pb::ListAuditEventsRequest {
                parent: ACME.into(),
                page_size: 2,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.audit_events.len() <= 2);
        paged.extend(page.audit_events);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(paged, all);

    // A filter that does not parse: INVALID_ARGUMENT naming `filter` and the position.
    for (filter, position) in [
        (r#"actor = "alice" AND"#, 16),
        (r#"colour = "red""#, 0),
        ("time >= 5", 8),
    ] {
        let status = expect_code(
            audit
                .list_audit_events(pb::ListAuditEventsRequest {
                    parent: ACME.into(),
                    filter: filter.into(),
                    ..Default::default()
                })
                .await,
            Code::InvalidArgument,
        );
        assert_eq!(bad_fields(&status), vec!["filter"], "{filter}");
        let info = status.get_details_error_info().unwrap();
        assert_eq!(
            info.metadata.get("position").map(String::as_str),
            Some(position.to_string().as_str()),
            "{filter}: {status:?}"
        );
        assert!(
            status.message().contains(&format!("at character {position}")),
            "{status:?}"
        );
    }
    expect_code(
        audit
            .list_audit_events(pb::ListAuditEventsRequest {
                parent: ACME.into(),
                order_by: "actor".into(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
    );
}

/// Moves `event` and every event written before it `days` into the past, behind the API's back,
/// as time passing does (an event is never younger than one written after it).
async fn age_events_through(t: &TestServer, event: &pb::AuditEvent, days: i64) {
    use sea_orm::{ConnectionTrait, Database};
    let id = event.name.rsplit('/').next().unwrap();
    let db = Database::connect(&t.database_url).await.unwrap();
    db.execute_unprepared(&format!(
        "UPDATE audit_events SET time = time - {} \
         WHERE seq <= (SELECT seq FROM audit_events WHERE env = 'acme' AND id = '{id}')",
        days * 86_400 * 1_000_000
    ))
    .await
    .unwrap();
    db.close().await.unwrap();
}

#[tokio::test]
async fn events_past_the_retention_are_purged_and_the_rest_kept() {
    let t = setup(Options::default()).await;
    let mut exports = t.exports("acme", Role::Admin).await;
    for id in ["one", "two", "three"] {
        exports
            .create_export(data_out("acme", id, "Export", "files", &[CUSTOMERS]))
            .await
            .unwrap();
    }
    let before = all_events(&t).await;
    let created = |id: &str| {
        before
            .iter()
            .find(|e| e.resource == export_name("acme", id))
            .unwrap_or_else(|| panic!("the event of creating {id}: {before:?}"))
            .clone()
    };
    let (old, recent) = (created("one"), created("two"));
    // Creating "one" and everything before it: 40 days ago; creating "two": 10 days ago.
    age_events_through(&t, &old, 30).await;
    age_events_through(&t, &recent, 10).await;

    // A restart with the default retention (400 days) keeps both.
    let t = t.restart(Options::default()).await;
    let kept = all_events(&t).await;
    assert!(kept.iter().any(|e| e.name == old.name), "{kept:?}");

    // With 30 days, the purge (at start, then hourly) removes exactly the events up to "one".
    let t = t
        .restart(Options::default().var("EXPORTD_AUDIT_RETENTION_DAYS", "30"))
        .await;
    let after = eventually(std::time::Duration::from_secs(30), "the purge", async || {
        let listed = all_events(&t).await;
        let shown = format!("{listed:?}");
        (!listed.iter().any(|e| e.name == old.name))
            .then_some(listed)
            .ok_or(shown)
    })
    .await;
    let names: BTreeSet<&str> = after.iter().map(|e| e.name.as_str()).collect();
    // `before` is newest first: the events written after "one" are those listed before it.
    let expected: BTreeSet<&str> = before
        .iter()
        .map(|e| e.name.as_str())
        .take_while(|n| *n != old.name)
        .collect();
    assert!(
        expected.len() < before.len() - 1,
        "events older than one are there to purge: {before:?}"
    );
    assert_eq!(names, expected);
    assert!(names.contains(recent.name.as_str()));
    assert!(names.contains(created("three").name.as_str()));
}
