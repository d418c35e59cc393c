//! The scheduler, as the clock moves on: schedules that come due fire once (one catch-up after
//! downtime, none piled up behind an active run), and an environment's system refresh schedule
//! starts a system refresh whose completion runs the exports that follow it. "The clock moved
//! on" is an update of the stored next time, as after downtime; the scheduler is then woken.

use std::time::Duration;

use exportd::auth::Role;
use exportd::pb;
use sea_orm::{ConnectionTrait, Database};

use crate::common::*;

/// Makes every timed schedule (exports and environments) due as of a minute ago.
async fn time_passes(t: &TestServer) {
    let db = Database::connect(&t.database_url).await.unwrap();
    let past = chrono::Utc::now().timestamp_micros() - 60_000_000;
    db.execute_unprepared(&format!(
        "UPDATE exports SET next_run_at = {past} WHERE next_run_at IS NOT NULL"
    ))
    .await
    .unwrap();
    db.execute_unprepared(&format!(
        "UPDATE environments SET next_system_refresh_at = {past} WHERE next_system_refresh_at IS NOT NULL"
    ))
    .await
    .unwrap();
    db.close().await.unwrap();
    t.state.engine.schedules_changed();
}

/// Polls until `count` runs of the environment satisfy `filter` (bounded).
async fn wait_for_runs(exports: &mut Exports, filter: &str, count: usize) -> Vec<pb::ExportRun> {
    eventually(
        Duration::from_secs(30),
        format_args!("{count} runs with `{filter}` appearing"),
        async || {
            let runs = list_runs(exports, "environments/acme/exports/-", filter, "").await;
            if runs.len() >= count {
                Ok(runs)
            } else {
                Err(format!("{runs:?}"))
            }
        },
    )
    .await
}

#[tokio::test]
async fn a_due_schedule_fires_once_and_never_piles_up_behind_an_active_run() {
    // No workers: the scheduled run stays QUEUED, so the second occurrence finds it active.
    let t = setup(api_only()).await;
    let mut exports = t.exports("acme", Role::Admin).await;
    let created = create_export(
        &mut exports,
        with_schedule(
            data_out("acme", "nightly", "Nightly", "files", &[CUSTOMERS]),
            yearly_cron(),
        ),
    )
    .await;
    let next = created
        .schedule
        .as_ref()
        .and_then(|s| s.next_run_time)
        .expect("a cron schedule has a next time");

    // Downtime: many occurrences missed; one run comes of them, and the next time moves on.
    time_passes(&t).await;
    let runs = wait_for_runs(&mut exports, "trigger = SCHEDULE", 1).await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].state, pb::RunState::Queued as i32);
    let export = exports
        .get_export(pb::GetExportRequest {
            name: created.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let moved = export.schedule.unwrap().next_run_time.unwrap();
    assert!(
        moved.seconds >= next.seconds && moved.seconds > chrono::Utc::now().timestamp(),
        "the next time is in the future"
    );

    // Due again while the first run is still active: one pending catch-up, no second run.
    time_passes(&t).await;
    time_passes(&t).await;
    // The stored next time moves past now once the occurrence was handled.
    eventually(
        Duration::from_secs(30),
        "the next run time moving past now",
        async || {
            let export = exports
                .get_export(pb::GetExportRequest {
                    name: created.name.clone(),
                })
                .await
                .unwrap()
                .into_inner();
            let next = export.schedule.unwrap().next_run_time.unwrap();
            if next.seconds > chrono::Utc::now().timestamp() {
                Ok(())
            } else {
                Err(format!("next run time {next:?}"))
            }
        },
    )
    .await;
    let runs = list_runs(&mut exports, &created.name, "", "").await;
    assert_eq!(runs.len(), 1, "never two active runs of one export");

    // When the active run ends, exactly one catch-up run starts.
    exports
        .cancel_export_run(pb::CancelExportRunRequest {
            name: runs[0].name.clone(),
        })
        .await
        .unwrap();
    let runs = list_runs(&mut exports, &created.name, "", "").await;
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0].state, pb::RunState::Queued as i32);
    assert_eq!(runs[0].trigger, pb::RunTrigger::Schedule as i32);
    assert_eq!(runs[1].state, pb::RunState::Cancelled as i32);
    t.stop().await;
}

/// A schedule that comes due while what the export reads is being refreshed fires a run that
/// waits for the refresh; an export over an entity that is not refreshing runs at once.
#[tokio::test]
async fn a_due_schedule_waits_for_its_refreshing_dependencies() {
    let t = setup(api_only()).await;
    let mut exports = t.exports("acme", Role::Admin).await;
    let mut catalog = t.catalog("acme", Role::Admin).await;
    for (id, entity) in [("customers-nightly", CUSTOMERS), ("orders-nightly", ORDERS)] {
        create_export(
            &mut exports,
            with_schedule(data_out("acme", id, id, "files", &[entity]), yearly_cron()),
        )
        .await;
    }
    start_refresh(&mut catalog, CUSTOMERS).await;
    time_passes(&t).await;
    let runs = wait_for_runs(&mut exports, "trigger = SCHEDULE", 2).await;
    let state_of = |export: &str| {
        let run = runs
            .iter()
            .find(|r| r.name.contains(&format!("/exports/{export}/")))
            .unwrap();
        (run_state(run), run.waiting_for.clone())
    };
    assert_eq!(
        state_of("customers-nightly"),
        (pb::RunState::WaitingForDependencies, vec![CUSTOMERS.to_string()])
    );
    assert_eq!(state_of("orders-nightly"), (pb::RunState::Queued, vec![]));

    // The refresh completes: the waiting run is released.
    complete_refresh(&mut catalog, CUSTOMERS).await;
    let runs = wait_for_runs(&mut exports, "state = QUEUED", 2).await;
    assert_eq!(runs.len(), 2);
    t.stop().await;
}

#[tokio::test]
async fn the_environments_system_refresh_schedule_starts_refreshes_that_run_exports() {
    let t = setup(Options::default()).await;
    let mut exports = t.exports("acme", Role::Admin).await;
    // Follows the system refresh (the default schedule), and one that does not.
    create_export(
        &mut exports,
        data_out("acme", "follows", "Follows", "files", &[CUSTOMERS]),
    )
    .await;
    create_export(
        &mut exports,
        with_schedule(
            data_out("acme", "yearly", "Yearly", "files", &[CUSTOMERS]),
            yearly_cron(),
        ),
    )
    .await;
    let mut catalog = t.catalog("acme", Role::Admin).await;
    catalog
        .update_environment(pb::UpdateEnvironmentRequest {
            environment: Some(pb::Environment {
                name: "environments/acme".into(),
                system_refresh_schedule: Some(pb::Schedule {
                    enabled: true,
                    trigger: Some(pb::schedule::Trigger::Cron(pb::CronSchedule {
                        expression: "30 4 * * *".into(),
                        time_zone: "Asia/Jakarta".into(),
                    })),
                    next_run_time: None,
                }),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["system_refresh_schedule".into()],
            }),
        })
        .await
        .unwrap();

    time_passes(&t).await;
    let runs = wait_for_runs(&mut exports, "trigger = SYSTEM_REFRESH AND state = SUCCEEDED", 1).await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].export, "environments/acme/exports/follows");
    // (The yearly export came due too and ran on its own schedule, not with the refresh.)
    let all = list_runs(
        &mut exports,
        "environments/acme/exports/-",
        "trigger = SYSTEM_REFRESH",
        "",
    )
    .await;
    assert!(
        all.iter().all(|r| r.export != "environments/acme/exports/yearly"),
        "only exports that follow the refresh run"
    );
    let env = catalog
        .get_environment(pb::GetEnvironmentRequest {
            name: "environments/acme".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let next = env.system_refresh_schedule.unwrap().next_run_time.unwrap();
    assert!(
        next.seconds > chrono::Utc::now().timestamp(),
        "the environment's next refresh moved on"
    );
    t.stop().await;
}
