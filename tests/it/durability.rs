//! Durability with real processes: a server killed with SIGKILL mid-run leaves the run to be
//! taken over, and it completes exactly once with every row; two servers on one PostgreSQL
//! execute each due run exactly once.

use std::collections::HashSet;
use std::time::Duration;

use exportd::auth::Role;
use exportd::pb;
use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn a_run_killed_mid_way_is_taken_over_and_completes_exactly_once() {
    killed_mid_run_then_taken_over(None).await;
}

#[tokio::test]
async fn a_run_killed_mid_upload_to_s3_is_taken_over_and_completes_exactly_once() {
    if let Some(storage) = Storage::s3().await {
        killed_mid_run_then_taken_over(Some(storage)).await;
    }
}

/// Kills the server while a run writes to `storage` (local files when None), starts another
/// on the same database, and checks that the same run completes with every row exactly once.
async fn killed_mid_run_then_taken_over(storage: Option<Storage>) {
    const RECORDS: usize = 150_000;
    let dir = tempfile::tempdir().unwrap();
    let database_url = fresh_database_url(dir.path()).await;
    let envs = server_env(
        &database_url,
        &[("EXPORTD_RUN_LEASE_SECONDS", "2"), ("EXPORTD_WORKERS", "1")],
    );
    create_environment(dir.path(), &envs, "acme");
    // The `files` connection has no root: it writes in its own folder of the exports root.
    let root = dir.path().join("exports/acme/files");

    let first = start(dir.path(), &envs);
    let (mut catalog, mut connections, mut exports) = clients(&first.addr, "acme").await;
    catalog
        .create_entity(customers_entity("acme", "customers", pb::EntityKind::Profile))
        .await
        .unwrap();
    let messages: Vec<pb::WriteRecordsRequest> = (0..RECORDS / 10_000)
        .map(|m| {
            let records = (m * 10_000..(m + 1) * 10_000)
                .map(|i| json!({"id": format!("k{i:07}"), "email": format!("u{i}@x.io"), "ltv": i as f64, "country": "ID"}))
                .collect();
            write("environments/acme/entities/customers", records, &[])
        })
        .collect();
    catalog.write_records(tokio_stream::iter(messages)).await.unwrap();
    let connection = match &storage {
        Some(storage) => storage.connection("files"),
        None => local_files("acme", "files", "Files", true),
    };
    connections.create_connection(connection).await.unwrap();
    exports
        .create_export(pb::CreateExportRequest {
            parent: "environments/acme".into(),
            export_id: "lake".into(),
            export: Some(pb::Export {
                display_name: "Lake".into(),
                connection: "environments/acme/connections/files".into(),
                kind: pb::ExportKind::DataOut as i32,
                entities: vec!["environments/acme/entities/customers".into()],
                // Many small partitions (each synced to disk when it closes) make a run long
                // enough to be killed half-way on any backend.
                settings: [("max_rows_per_file".to_string(), "200".to_string())].into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let started = exports
        .run_export(pb::RunExportRequest {
            name: "environments/acme/exports/lake".into(),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();

    // Kill the server while the run is visibly under way (the watch shows progress as soon as
    // it is stored).
    let mut watch = exports
        .watch_export_run(pb::WatchExportRunRequest {
            name: started.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut running = started.clone();
    while let Some(update) = watch.message().await.unwrap() {
        running = update;
        if running.state != pb::RunState::Queued as i32
            && (running.records_exported > 0 || running.state != pb::RunState::Running as i32)
        {
            break;
        }
    }
    assert_eq!(
        running.state,
        pb::RunState::Running as i32,
        "the run finished before the kill; make it longer"
    );
    first.signal("KILL");
    assert_eq!(first.wait(), None, "killed by a signal");

    // Another process on the same database takes the same run over once its lease expires.
    let mut with_metrics = envs.clone();
    with_metrics.push(("EXPORTD_METRICS_LISTEN", "127.0.0.1:0".to_string()));
    let second = start(dir.path(), &with_metrics);
    let (_, _, mut exports) = clients(&second.addr, "acme").await;
    let done = wait_run(&mut exports, &started.name, "a terminal state", |r| {
        !matches!(
            pb::RunState::try_from(r.state),
            Ok(pb::RunState::Queued | pb::RunState::Running | pb::RunState::WaitingForDependencies)
        )
    })
    .await;
    assert_eq!(done.state, pb::RunState::Succeeded as i32, "{done:?}");
    assert_eq!(done.attempt, 2, "the same run continued as its second attempt");
    assert_eq!(done.records_exported, RECORDS as i64);
    let runs = exports
        .list_export_runs(pb::ListExportRunsRequest {
            parent: "environments/acme/exports/lake".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .runs;
    assert_eq!(runs.len(), 1, "exactly one run");
    let keys = match &storage {
        Some(storage) => storage.read_folder("lake").await.1["customers"]
            .iter()
            .map(|row| row["id"].clone())
            .collect(),
        None => exported_keys(&root, "lake"),
    };
    let unique: HashSet<&String> = keys.iter().collect();
    assert_eq!(keys.len(), RECORDS, "every row exactly once");
    assert_eq!(unique.len(), RECORDS);
    let metrics = crate::common::scrape(&second);
    assert_eq!(
        crate::common::sample(&metrics, "exportd_run_lease_takeovers_total"),
        Some(1.0),
        "{metrics}"
    );
    second.signal("TERM");
    assert_eq!(second.wait(), Some(0));
}

#[tokio::test]
async fn two_servers_on_one_postgres_execute_each_due_run_exactly_once() {
    if backend() != "postgres" {
        // Several servers share one database only on PostgreSQL; SQLite is the embedded,
        // single-process default.
        return;
    }
    const EXPORTS: usize = 200;
    let dir = tempfile::tempdir().unwrap();
    let database_url = fresh_database_url(dir.path()).await;
    let envs = server_env(&database_url, &[("EXPORTD_WORKERS", "2")]);
    create_environment(dir.path(), &envs, "acme");
    let one = start(dir.path(), &envs);
    let two = start(dir.path(), &envs);
    let (mut catalog, mut connections, mut exports) = clients(&one.addr, "acme").await;
    catalog
        .create_entity(customers_entity("acme", "customers", pb::EntityKind::Profile))
        .await
        .unwrap();
    let records = (0..10).map(|i| json!({"id": format!("k{i}")})).collect();
    catalog
        .write_records(tokio_stream::iter(vec![write(
            "environments/acme/entities/customers",
            records,
            &[],
        )]))
        .await
        .unwrap();
    connections
        .create_connection(local_files("acme", "files", "Files", true))
        .await
        .unwrap();
    for i in 0..EXPORTS {
        exports
            .create_export(pb::CreateExportRequest {
                parent: "environments/acme".into(),
                export_id: format!("e{i:03}"),
                export: Some(pb::Export {
                    display_name: format!("Export {i}"),
                    connection: "environments/acme/connections/files".into(),
                    kind: pb::ExportKind::DataOut as i32,
                    entities: vec!["environments/acme/entities/customers".into()],
                    schedule: Some(pb::Schedule {
                        enabled: true,
                        trigger: Some(pb::schedule::Trigger::Cron(pb::CronSchedule {
                            expression: "0 3 * * *".into(),
                            time_zone: String::new(),
                        })),
                        next_run_time: None,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    // As after downtime: every schedule's occurrence is due now.
    {
        use sea_orm::{ConnectionTrait, Database};
        let db = Database::connect(&database_url).await.unwrap();
        let now = chrono::Utc::now().timestamp_micros() - 1_000_000;
        db.execute_unprepared(&format!("UPDATE exports SET next_run_at = {now}"))
            .await
            .unwrap();
        db.close().await.unwrap();
    }
    let runs = eventually(
        Duration::from_secs(120),
        format_args!("{EXPORTS} runs succeeding"),
        async || {
            let runs = exports
                .list_export_runs(pb::ListExportRunsRequest {
                    parent: "environments/acme/exports/-".into(),
                    page_size: 1000,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .runs;
            let done = runs
                .iter()
                .filter(|r| r.state == pb::RunState::Succeeded as i32)
                .count();
            if done >= EXPORTS {
                Ok(runs)
            } else {
                Err(format!("only {done} of {EXPORTS} runs succeeded"))
            }
        },
    )
    .await;
    assert_eq!(runs.len(), EXPORTS, "one run per due export, never two");
    let per_export: HashSet<&String> = runs.iter().map(|r| &r.export).collect();
    assert_eq!(per_export.len(), EXPORTS);
    assert!(
        runs.iter()
            .all(|r| r.attempt == 1 && r.trigger == pb::RunTrigger::Schedule as i32)
    );
    one.signal("TERM");
    two.signal("TERM");
    let (logs_one, logs_two) = (one.logs(), two.logs());
    let ended = |logs: &str| logs.matches("run ended").count();
    assert_eq!(
        ended(&logs_one) + ended(&logs_two),
        EXPORTS,
        "each run executed exactly once"
    );
    assert!(
        ended(&logs_one) > 0 && ended(&logs_two) > 0,
        "both servers executed runs"
    );
    assert_eq!(one.wait(), Some(0));
    assert_eq!(two.wait(), Some(0));
}

#[tokio::test]
async fn a_run_whose_process_died_after_committing_is_not_written_twice() {
    use sea_orm::{ConnectionTrait, Database};
    let t = crate::common::setup(Options::default().var("EXPORTD_RUN_LEASE_SECONDS", "2")).await;
    let mut exports = t.exports("acme", Role::Admin).await;
    let export = crate::common::create_export(
        &mut exports,
        crate::common::data_out("acme", "lake", "Lake", "files", &[crate::common::CUSTOMERS]),
    )
    .await;
    let first = run_export(&mut exports, &export.name).await;
    let done = wait_for_end(&mut exports, &first.name).await;
    assert_eq!(done.state, pb::RunState::Succeeded as i32);
    let root = crate::common::out(&t);
    let model = std::fs::read(root.join("lake/model.json")).unwrap();

    // As if the process had died between the commit and recording it: the run is RUNNING
    // under a lease nobody renews.
    let db = Database::connect(&t.database_url).await.unwrap();
    db.execute_unprepared(&format!(
        "UPDATE runs SET state = 3, end_time = NULL, lease_owner = 'dead', lease_expires_at = 0 WHERE id = '{}'",
        first.name.rsplit('/').next().unwrap()
    ))
    .await
    .unwrap();
    db.close().await.unwrap();
    t.state.engine.wake_workers();

    let retried = wait_for_run(&mut exports, &first.name, |r| r.attempt == 2 && is_terminal(r)).await;
    assert_eq!(retried.state, pb::RunState::Succeeded as i32, "{retried:?}");
    assert_eq!(retried.records_exported, 10);
    assert_eq!(
        std::fs::read(root.join("lake/model.json")).unwrap(),
        model,
        "the committed export is left as it was"
    );
    t.stop().await;
}
