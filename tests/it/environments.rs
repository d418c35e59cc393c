//! Environments through CatalogService: read by members, updated by admins.

use exportd::auth::Role;
use exportd::pb;
use tonic::Code;

use crate::common::*;

#[tokio::test]
async fn members_read_their_environment_and_nobody_else_sees_it() {
    let t = TestServer::start().await;
    let mut viewer = t.catalog("globex", Role::Viewer).await;
    let env = viewer
        .get_environment(pb::GetEnvironmentRequest {
            name: "environments/globex".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(env.kind, pb::EnvironmentKind::BusinessAccounts as i32);
    assert_eq!(env.your_role, "viewer");
    assert!(!env.system_refresh_schedule.unwrap().enabled);
    let status = expect_code(
        viewer
            .get_environment(pb::GetEnvironmentRequest {
                name: "environments/acme".into(),
            })
            .await,
        Code::NotFound,
    );
    assert_eq!(reason(&status), "RESOURCE_NOT_FOUND");
    let list = viewer
        .list_environments(pb::ListEnvironmentsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        list.environments.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(),
        vec!["environments/globex"]
    );
    t.stop().await;
}

#[tokio::test]
async fn admins_set_the_system_refresh_schedule() {
    let t = TestServer::start().await;
    let mut admin = t.catalog("acme", Role::Admin).await;
    let schedule = pb::Schedule {
        enabled: true,
        trigger: Some(pb::schedule::Trigger::Cron(pb::CronSchedule {
            expression: "0 2,14 * * *".into(),
            time_zone: "Europe/Paris".into(),
        })),
        next_run_time: None,
    };
    let request = |schedule: pb::Schedule| pb::UpdateEnvironmentRequest {
        environment: Some(pb::Environment {
            name: "environments/acme".into(),
            system_refresh_schedule: Some(schedule),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["system_refresh_schedule".into()],
        }),
    };
    let env = admin
        .update_environment(request(schedule.clone()))
        .await
        .unwrap()
        .into_inner();
    let stored = env.system_refresh_schedule.unwrap();
    assert!(stored.enabled);
    let next = stored.next_run_time.expect("next run time");
    assert!(next.seconds > chrono::Utc::now().timestamp());

    // Bad cron and zones name the field; a system_refresh trigger makes no sense here.
    let mut bad = schedule.clone();
    bad.trigger = Some(pb::schedule::Trigger::Cron(pb::CronSchedule {
        expression: "61 * * * *".into(),
        time_zone: "Mars/Olympus".into(),
    }));
    let status = expect_code(admin.update_environment(request(bad)).await, Code::InvalidArgument);
    let mut fields = bad_fields(&status);
    fields.sort();
    assert_eq!(
        fields,
        vec![
            "environment.system_refresh_schedule.cron.expression",
            "environment.system_refresh_schedule.cron.time_zone"
        ]
    );
    let mut refresh = schedule.clone();
    refresh.trigger = Some(pb::schedule::Trigger::SystemRefresh(pb::SystemRefreshTrigger {}));
    expect_code(admin.update_environment(request(refresh)).await, Code::InvalidArgument);

    let mut contributor = t.catalog("acme", Role::Contributor).await;
    let status = expect_code(
        contributor.update_environment(request(schedule)).await,
        Code::PermissionDenied,
    );
    assert!(status.message().contains("environments.update"), "{}", status.message());
    t.stop().await;
}
