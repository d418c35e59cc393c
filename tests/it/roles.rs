//! The role × RPC table, walked from the policy table itself: every row of a service under test
//! is called as every role, on shared and unshared resources, and the outcome must be what the
//! row says. A new RPC gets a row (a unit test checks rows against the protos) and a new
//! `Action` does not compile here until it is given a call.

use exportd::auth::Role;
use exportd::auth::policy::{self, Action, Rule, TABLE};
use exportd::pb;
use tonic::Code;

use crate::common::*;

/// What an allowed call answers (every RPC of the protos is built).
fn allowed(_action: Action) -> Code {
    Code::Ok
}

/// The outcome the table promises.
fn expected(action: Action, role: Role, shared: Option<bool>) -> Code {
    if let Some(shared) = shared
        && !policy::can_see_connection(role, shared)
    {
        return Code::NotFound;
    }
    match policy::row(action).rule_for(role) {
        Rule::Allow => allowed(action),
        Rule::Deny => Code::PermissionDenied,
        Rule::IfConnectionShared => {
            if shared == Some(true) {
                allowed(action)
            } else {
                Code::PermissionDenied
            }
        }
        Rule::IfExportEditable => unreachable!("no connection RPC is export-scoped"),
    }
}

fn code<T>(result: Result<tonic::Response<T>, tonic::Status>) -> Code {
    match result {
        Ok(_) => Code::Ok,
        Err(status) => {
            reason(&status);
            status.code()
        }
    }
}

/// Creates, as an admin, what one call of `action` needs and returns its name: a fresh
/// resource for RPCs that change or delete it.
async fn prepare(t: &TestServer, action: Action, n: usize) -> String {
    let mut catalog = t.catalog("acme", Role::Admin).await;
    match action {
        Action::DeleteEntity | Action::UpdateEntity | Action::StartRefresh | Action::CompleteRefresh => {
            let id = format!("entity-{n}");
            catalog
                .create_entity(customers_entity("acme", &id, pb::EntityKind::Profile))
                .await
                .unwrap();
            let name = format!("environments/acme/entities/{id}");
            if action == Action::CompleteRefresh {
                catalog
                    .start_refresh(pb::StartRefreshRequest { name: name.clone() })
                    .await
                    .unwrap();
            }
            name
        }
        Action::UpdateSegment | Action::DeleteSegment | Action::SetSegmentMembers | Action::GetSegment => {
            create_pushed_segment(&mut catalog, "acme", &format!("segment-{n}"), "customers", "Segment")
                .await
                .name
        }
        Action::GetSystemRefresh => {
            let refresh = catalog
                .run_system_refresh(pb::RunSystemRefreshRequest {
                    parent: "environments/acme".into(),
                })
                .await
                .unwrap()
                .into_inner();
            wait_for_system_refresh(&mut catalog, &refresh.name).await;
            refresh.name
        }
        _ => String::new(),
    }
}

/// Calls the RPC of `action` as `role`; `target` is a connection prepared for connection RPCs
/// and whatever [`prepare`] made for the others.
async fn call(t: &TestServer, action: Action, role: Role, target: &str, n: usize) -> Option<Code> {
    let mut client = t.connections("acme", role).await;
    let mut catalog = t.catalog("acme", role).await;
    let name = target.to_string();
    let env = "environments/acme".to_string();
    Some(match action {
        Action::ListConnectionTypes => code(client.list_connection_types(pb::ListConnectionTypesRequest {}).await),
        Action::CreateConnection => code(
            client
                .create_connection(local_files("acme", &format!("new-{n}"), "New", false))
                .await,
        ),
        Action::GetConnection => code(client.get_connection(pb::GetConnectionRequest { name }).await),
        Action::ListConnections => code(
            client
                .list_connections(pb::ListConnectionsRequest {
                    parent: env,
                    ..Default::default()
                })
                .await,
        ),
        Action::UpdateConnection => code(
            client
                .update_connection(pb::UpdateConnectionRequest {
                    connection: Some(pb::Connection {
                        name,
                        display_name: "Renamed".into(),
                        ..Default::default()
                    }),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["display_name".into()],
                    }),
                })
                .await,
        ),
        Action::DeleteConnection => code(
            client
                .delete_connection(pb::DeleteConnectionRequest {
                    name,
                    ..Default::default()
                })
                .await,
        ),
        Action::TestConnection => code(client.test_connection(pb::TestConnectionRequest { name }).await),
        Action::GetEnvironment => code(catalog.get_environment(pb::GetEnvironmentRequest { name: env }).await),
        Action::UpdateEnvironment => code(
            catalog
                .update_environment(pb::UpdateEnvironmentRequest {
                    environment: Some(pb::Environment {
                        name: env,
                        display_name: format!("Acme {n}"),
                        ..Default::default()
                    }),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["display_name".into()],
                    }),
                })
                .await,
        ),
        Action::ListEnvironments => code(catalog.list_environments(pb::ListEnvironmentsRequest::default()).await),
        Action::CreateEntity => code(
            catalog
                .create_entity(customers_entity("acme", &format!("new-{n}"), pb::EntityKind::Profile))
                .await,
        ),
        Action::GetEntity => code(
            catalog
                .get_entity(pb::GetEntityRequest { name: CUSTOMERS.into() })
                .await,
        ),
        Action::ListEntities => code(
            catalog
                .list_entities(pb::ListEntitiesRequest {
                    parent: env,
                    ..Default::default()
                })
                .await,
        ),
        Action::UpdateEntity => code(
            catalog
                .update_entity(pb::UpdateEntityRequest {
                    entity: Some(pb::Entity {
                        name,
                        display_name: format!("Renamed {n}"),
                        ..Default::default()
                    }),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["display_name".into()],
                    }),
                    validate_only: false,
                })
                .await,
        ),
        Action::DeleteEntity => code(catalog.delete_entity(pb::DeleteEntityRequest { name }).await),
        Action::WriteRecords => code(
            catalog
                .write_records(tokio_stream::iter(vec![write(
                    CUSTOMERS,
                    vec![serde_json::json!({"id": format!("r{n}")})],
                    &[],
                )]))
                .await,
        ),
        Action::CreateSegment => code(
            catalog
                .create_segment(pb::CreateSegmentRequest {
                    parent: env,
                    segment_id: format!("new-{n}"),
                    segment: Some(pb::Segment {
                        display_name: "New".into(),
                        entity: CUSTOMERS.into(),
                        definition: Some(pb::segment::Definition::Members(pb::PushedMembers {})),
                        ..Default::default()
                    }),
                })
                .await,
        ),
        Action::GetSegment => code(catalog.get_segment(pb::GetSegmentRequest { name }).await),
        Action::ListSegments => code(
            catalog
                .list_segments(pb::ListSegmentsRequest {
                    parent: env,
                    ..Default::default()
                })
                .await,
        ),
        Action::UpdateSegment => code(
            catalog
                .update_segment(pb::UpdateSegmentRequest {
                    segment: Some(pb::Segment {
                        name,
                        display_name: "Renamed".into(),
                        ..Default::default()
                    }),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["display_name".into()],
                    }),
                })
                .await,
        ),
        Action::DeleteSegment => code(catalog.delete_segment(pb::DeleteSegmentRequest { name }).await),
        Action::SetSegmentMembers => code(
            catalog
                .set_segment_members(tokio_stream::iter(vec![pb::SetSegmentMembersRequest {
                    segment: name,
                    keys: vec!["c01".into()],
                }]))
                .await,
        ),
        Action::ListEligibleSegments => code(
            catalog
                .list_eligible_segments(pb::ListEligibleSegmentsRequest {
                    connection: "environments/acme/connections/shared".into(),
                    ..Default::default()
                })
                .await,
        ),
        Action::StartRefresh => code(catalog.start_refresh(pb::StartRefreshRequest { name }).await),
        Action::CompleteRefresh => code(catalog.complete_refresh(pb::CompleteRefreshRequest { name }).await),
        Action::RunSystemRefresh => {
            let result = catalog
                .run_system_refresh(pb::RunSystemRefreshRequest { parent: env })
                .await;
            if let Ok(refresh) = &result {
                wait_for_system_refresh(&mut catalog, &refresh.get_ref().name).await;
            }
            code(result)
        }
        Action::GetSystemRefresh => code(catalog.get_system_refresh(pb::GetSystemRefreshRequest { name }).await),
        Action::CreateExport
        | Action::GetExport
        | Action::ListExports
        | Action::UpdateExport
        | Action::DeleteExport
        | Action::DuplicateExport
        | Action::DetachConnection
        | Action::RunExport
        | Action::RunAllExports
        | Action::UpdateExportSchedules
        | Action::ListExportRuns
        | Action::GetExportRun
        | Action::WatchExportRun
        | Action::CancelExportRun
        | Action::PreviewExport
        | Action::ListRejectedRecords => return call_export(t, action, role, target, n).await,
        Action::CreateAlertPolicy
        | Action::GetAlertPolicy
        | Action::ListAlertPolicies
        | Action::UpdateAlertPolicy
        | Action::DeleteAlertPolicy
        | Action::ListAlertEvents
        | Action::ListAuditEvents => call_alert_or_audit(t, action, role).await,
    })
}

/// Calls an AlertService or AuditService RPC as `role` with a valid request.
async fn call_alert_or_audit(t: &TestServer, action: Action, role: Role) -> Code {
    let mut alerts = t.alerts("acme", role).await;
    let env = "environments/acme".to_string();
    let policy = "environments/acme/alertPolicies/failures".to_string();
    match action {
        Action::CreateAlertPolicy => code(
            alerts
                .create_alert_policy(pb::CreateAlertPolicyRequest {
                    parent: env,
                    alert_policy_id: "failures".into(),
                    alert_policy: Some(pb::AlertPolicy {
                        display_name: "Failures".into(),
                        connection: "environments/acme/connections/hook".into(),
                        conditions: vec![pb::AlertCondition::RunFailed as i32],
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .await,
        ),
        Action::GetAlertPolicy => code(
            alerts
                .get_alert_policy(pb::GetAlertPolicyRequest { name: policy })
                .await,
        ),
        Action::ListAlertPolicies => code(
            alerts
                .list_alert_policies(pb::ListAlertPoliciesRequest {
                    parent: env,
                    ..Default::default()
                })
                .await,
        ),
        Action::UpdateAlertPolicy => code(
            alerts
                .update_alert_policy(pb::UpdateAlertPolicyRequest {
                    alert_policy: Some(pb::AlertPolicy {
                        name: policy,
                        enabled: true,
                        ..Default::default()
                    }),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["enabled".into()],
                    }),
                })
                .await,
        ),
        Action::DeleteAlertPolicy => code(
            alerts
                .delete_alert_policy(pb::DeleteAlertPolicyRequest {
                    name: policy,
                    ..Default::default()
                })
                .await,
        ),
        Action::ListAlertEvents => code(
            alerts
                .list_alert_events(pb::ListAlertEventsRequest {
                    parent: "environments/acme/alertPolicies/-".into(),
                    ..Default::default()
                })
                .await,
        ),
        Action::ListAuditEvents => code(
            t.audit("acme", role)
                .await
                .list_audit_events(pb::ListAuditEventsRequest {
                    parent: env,
                    ..Default::default()
                })
                .await,
        ),
        other => unreachable!("{other:?} is not an AlertService or AuditService RPC"),
    }
}

/// Calls an ExportService RPC as `role` on the export `target`, which an admin prepared on a
/// shared or a non-shared connection (for run RPCs: what [`prepare_run`] made of it).
async fn call_export(t: &TestServer, action: Action, role: Role, target: &str, n: usize) -> Option<Code> {
    let mut exports = t.exports("acme", role).await;
    let name = target.to_string();
    let env = "environments/acme".to_string();
    Some(match action {
        Action::CreateExport => {
            // A new export on the prepared export's connection.
            let connection = t
                .exports("acme", Role::Admin)
                .await
                .get_export(pb::GetExportRequest { name })
                .await
                .unwrap()
                .into_inner()
                .connection;
            let mut request = data_out("acme", &format!("new-{n}"), "New", "unused", &[CUSTOMERS]);
            request.export.as_mut().unwrap().connection = connection;
            code(exports.create_export(request).await)
        }
        Action::GetExport => code(exports.get_export(pb::GetExportRequest { name }).await),
        Action::ListExports => code(
            exports
                .list_exports(pb::ListExportsRequest {
                    parent: env,
                    ..Default::default()
                })
                .await,
        ),
        Action::UpdateExport => code(
            exports
                .update_export(pb::UpdateExportRequest {
                    export: Some(pb::Export {
                        name,
                        display_name: "Renamed".into(),
                        ..Default::default()
                    }),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["display_name".into()],
                    }),
                    validate_only: false,
                })
                .await,
        ),
        Action::DeleteExport => code(
            exports
                .delete_export(pb::DeleteExportRequest {
                    name,
                    ..Default::default()
                })
                .await,
        ),
        Action::DuplicateExport => code(
            exports
                .duplicate_export(pb::DuplicateExportRequest {
                    name,
                    ..Default::default()
                })
                .await,
        ),
        Action::DetachConnection => code(exports.detach_connection(pb::DetachConnectionRequest { name }).await),
        Action::UpdateExportSchedules => code(
            exports
                .update_export_schedules(pb::UpdateExportSchedulesRequest {
                    parent: env,
                    names: vec![name],
                    mode: pb::ScheduleUpdateMode::KeepIndividualSchedules as i32,
                    schedule: None,
                    enabled: false,
                })
                .await,
        ),
        Action::RunExport => code(
            exports
                .run_export(pb::RunExportRequest {
                    name,
                    request_id: format!("walk-{n}"),
                })
                .await,
        ),
        Action::RunAllExports => code(exports.run_all_exports(pb::RunAllExportsRequest { parent: env }).await),
        Action::ListExportRuns => code(
            exports
                .list_export_runs(pb::ListExportRunsRequest {
                    parent: name,
                    ..Default::default()
                })
                .await,
        ),
        Action::GetExportRun => code(exports.get_export_run(pb::GetExportRunRequest { name }).await),
        Action::WatchExportRun => {
            let result = exports.watch_export_run(pb::WatchExportRunRequest { name }).await;
            match result {
                Ok(response) => {
                    // A finished run: one message, then the end.
                    let mut stream = response.into_inner();
                    assert!(stream.message().await.unwrap().is_some());
                    assert!(stream.message().await.unwrap().is_none());
                    Code::Ok
                }
                Err(status) => code::<()>(Err(status)),
            }
        }
        Action::CancelExportRun => code(exports.cancel_export_run(pb::CancelExportRunRequest { name }).await),
        Action::PreviewExport => code(
            exports
                .preview_export(pb::PreviewExportRequest { name, sample_size: 0 })
                .await,
        ),
        Action::ListRejectedRecords => code(
            exports
                .list_rejected_records(pb::ListRejectedRecordsRequest {
                    parent: name,
                    ..Default::default()
                })
                .await,
        ),
        other => unreachable!("{other:?} is not an ExportService RPC"),
    })
}

/// What a run RPC addresses on the freshly made `export`: a finished run (get, watch), an
/// active one (cancel: it waits for an entity being refreshed) or the export itself.
async fn prepare_run(t: &TestServer, action: Action, export: &str, n: usize) -> String {
    let mut admin = t.exports("acme", Role::Admin).await;
    match action {
        Action::GetExportRun | Action::WatchExportRun => {
            let run = run_export(&mut admin, export).await;
            wait_for_end(&mut admin, &run.name).await.name
        }
        Action::CancelExportRun => {
            let mut catalog = t.catalog("acme", Role::Admin).await;
            let id = format!("held-{n}");
            catalog
                .create_entity(customers_entity("acme", &id, pb::EntityKind::Other))
                .await
                .unwrap();
            let entity = format!("environments/acme/entities/{id}");
            admin
                .update_export(pb::UpdateExportRequest {
                    export: Some(pb::Export {
                        name: export.to_string(),
                        entities: vec![entity.clone()],
                        ..Default::default()
                    }),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["entities".into()],
                    }),
                    validate_only: false,
                })
                .await
                .unwrap();
            catalog
                .start_refresh(pb::StartRefreshRequest { name: entity })
                .await
                .unwrap();
            let run = run_export(&mut admin, export).await;
            assert_eq!(run.state, pb::RunState::WaitingForDependencies as i32, "{run:#?}");
            run.name
        }
        _ => export.to_string(),
    }
}

/// Whether the action addresses one existing connection (so visibility applies).
fn addresses_a_connection(action: Action) -> bool {
    matches!(
        action,
        Action::GetConnection | Action::UpdateConnection | Action::DeleteConnection | Action::TestConnection
    )
}

#[tokio::test]
async fn connection_service_follows_the_policy_table() {
    let t = TestServer::start().await;
    let mut admin = t.connections("acme", Role::Admin).await;
    let mut n = 0;
    let mut walked = 0;
    for row in TABLE.iter().filter(|r| r.service == "exportd.v1.ConnectionService") {
        for role in Role::ALL {
            let shares: &[Option<bool>] = if addresses_a_connection(row.action) {
                &[Some(true), Some(false)]
            } else {
                &[None]
            };
            for shared in shares {
                n += 1;
                let id = format!("target-{n}");
                admin
                    .create_connection(local_files(
                        "acme",
                        &id,
                        &format!("Target {n}"),
                        shared.unwrap_or(false),
                    ))
                    .await
                    .unwrap();
                let target = format!("environments/acme/connections/{id}");
                let got = call(&t, row.action, role, &target, n)
                    .await
                    .expect("connection RPCs are covered");
                assert_eq!(
                    got,
                    expected(row.action, role, *shared),
                    "{} as {role} (shared: {shared:?})",
                    row.method
                );
                walked += 1;
            }
        }
    }
    assert_eq!(walked, 3 * (3 + 4 * 2));
    t.stop().await;
}

#[tokio::test]
async fn contributors_and_viewers_list_only_shared_connections() {
    let t = TestServer::start().await;
    let mut admin = t.connections("acme", Role::Admin).await;
    admin
        .create_connection(local_files("acme", "shared", "Shared", true))
        .await
        .unwrap();
    admin
        .create_connection(local_files("acme", "private", "Private", false))
        .await
        .unwrap();
    for (role, expected) in [
        (Role::Admin, vec!["Private", "Shared"]),
        (Role::Contributor, vec!["Shared"]),
        (Role::Viewer, vec!["Shared"]),
    ] {
        let mut client = t.connections("acme", role).await;
        let list = client
            .list_connections(pb::ListConnectionsRequest {
                parent: "environments/acme".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            list.connections
                .iter()
                .map(|c| c.display_name.as_str())
                .collect::<Vec<_>>(),
            expected,
            "{role}"
        );
        assert_eq!(list.total_size as usize, expected.len());
    }
    t.stop().await;
}

#[tokio::test]
async fn denials_name_the_missing_permission() {
    let t = TestServer::start().await;
    let mut admin = t.connections("acme", Role::Admin).await;
    admin
        .create_connection(local_files("acme", "shared", "Shared", true))
        .await
        .unwrap();
    let mut viewer = t.connections("acme", Role::Viewer).await;
    let status = viewer
        .test_connection(pb::TestConnectionRequest {
            name: "environments/acme/connections/shared".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(reason(&status), "PERMISSION_DENIED");
    assert!(status.message().contains("connections.test"), "{}", status.message());
    t.stop().await;
}

#[tokio::test]
async fn catalog_service_follows_the_policy_table() {
    let t = TestServer::start().await;
    let mut catalog = t.catalog("acme", Role::Admin).await;
    catalog
        .create_entity(customers_entity("acme", "customers", pb::EntityKind::Profile))
        .await
        .unwrap();
    catalog
        .write_records(tokio_stream::iter(vec![write(CUSTOMERS, ten_customers(), &[])]))
        .await
        .unwrap();
    t.connections("acme", Role::Admin)
        .await
        .create_connection(local_files("acme", "shared", "Shared", true))
        .await
        .unwrap();
    let mut walked = 0;
    for (n, row) in TABLE
        .iter()
        .filter(|r| r.service == "exportd.v1.CatalogService")
        .enumerate()
    {
        for role in Role::ALL {
            let n = n * 10 + role as usize;
            let target = prepare(&t, row.action, n).await;
            let got = call(&t, row.action, role, &target, n)
                .await
                .expect("catalog RPCs are covered");
            assert_eq!(got, expected(row.action, role, None), "{} as {role}", row.method);
            walked += 1;
        }
    }
    assert_eq!(walked, 3 * 20);
    t.stop().await;
}

/// The outcome the table promises for an export on a shared or a non-shared connection:
/// exports are visible to every role, so the conditions decide alone.
fn expected_for_export(action: Action, role: Role, shared: bool) -> Code {
    match policy::row(action).rule_for(role) {
        Rule::Allow => allowed(action),
        Rule::Deny => Code::PermissionDenied,
        Rule::IfConnectionShared | Rule::IfExportEditable => {
            if shared {
                allowed(action)
            } else {
                Code::PermissionDenied
            }
        }
    }
}

#[tokio::test]
async fn export_service_follows_the_policy_table() {
    let t = TestServer::start().await;
    t.catalog("acme", Role::Admin)
        .await
        .create_entity(customers_entity("acme", "customers", pb::EntityKind::Profile))
        .await
        .unwrap();
    let mut connections = t.connections("acme", Role::Admin).await;
    connections
        .create_connection(local_files("acme", "shared", "Shared", true))
        .await
        .unwrap();
    connections
        .create_connection(local_files("acme", "private", "Private", false))
        .await
        .unwrap();
    let mut admin = t.exports("acme", Role::Admin).await;
    let (mut n, mut walked, mut runs) = (0, 0, 0);
    for row in TABLE.iter().filter(|r| r.service == "exportd.v1.ExportService") {
        for role in Role::ALL {
            for shared in [true, false] {
                n += 1;
                let id = format!("target-{n}");
                let connection = if shared { "shared" } else { "private" };
                admin
                    .create_export(data_out("acme", &id, &format!("Target {n}"), connection, &[CUSTOMERS]))
                    .await
                    .unwrap();
                let target = prepare_run(&t, row.action, &format!("environments/acme/exports/{id}"), n).await;
                match call(&t, row.action, role, &target, n).await {
                    None => runs += 1,
                    Some(got) => {
                        assert_eq!(
                            got,
                            expected_for_export(row.action, role, shared),
                            "{} as {role} (shared: {shared})",
                            row.method
                        );
                        walked += 1;
                    }
                }
            }
        }
    }
    assert_eq!(
        walked,
        3 * 2 * 16,
        "every management and run RPC, as every role, on both connections"
    );
    assert_eq!(runs, 0, "every run RPC is covered");
    t.stop().await;
}

#[tokio::test]
async fn alert_and_audit_services_follow_the_policy_table() {
    let t = TestServer::start().await;
    // The webhook connection alert policies are delivered to (admins create the policy first,
    // then every role reads it; admins update and delete it before the others try).
    t.connections("acme", Role::Admin)
        .await
        .create_connection(connection(
            "acme",
            "hook",
            "Alerts",
            "webhook",
            &[("url", "http://127.0.0.1:9/hooks")],
            &[],
            true,
        ))
        .await
        .unwrap();
    let mut walked = 0;
    for row in TABLE
        .iter()
        .filter(|r| r.service == "exportd.v1.AlertService" || r.service == "exportd.v1.AuditService")
    {
        for role in Role::ALL {
            let got = call(&t, row.action, role, "", 0)
                .await
                .expect("alert and audit RPCs are covered");
            assert_eq!(got, expected(row.action, role, None), "{} as {role}", row.method);
            walked += 1;
        }
    }
    assert_eq!(walked, 3 * 7);
    t.stop().await;
}
