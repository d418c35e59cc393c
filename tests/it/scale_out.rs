//! Scale-out on PostgreSQL (PRODUCT.md §16), with real processes: three servers started at the
//! same moment on an empty database share 30 runs; the one that runs the scheduler is
//! SIGKILLed while it executes runs; every run ends SUCCEEDED exactly once with a complete CDM
//! folder, the scheduler moves to a survivor and due schedules fire once; an API-only process
//! watches runs that others execute to their end and cancels one that another executes.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use exportd::pb;
use serde_json::json;

use crate::common::*;

const EXPORTS: usize = 30;
const RECORDS: usize = 20_000;
const SCHEDULER_LINE: &str = "this process now runs the scheduler";

fn export(id: &str, schedule: Option<pb::Schedule>) -> pb::CreateExportRequest {
    export_with_files_of(id, schedule, 100)
}

fn export_with_files_of(id: &str, schedule: Option<pb::Schedule>, rows_per_file: u32) -> pb::CreateExportRequest {
    let mut request = files_export(id);
    let export = request.export.as_mut().unwrap();
    // Many small partitions, each synced to disk: runs long enough to be killed mid-way.
    export
        .settings
        .insert("max_rows_per_file".into(), rows_per_file.to_string());
    export.schedule = schedule;
    request
}

fn every_minute() -> pb::Schedule {
    pb::Schedule {
        enabled: true,
        trigger: Some(pb::schedule::Trigger::Cron(pb::CronSchedule {
            expression: "* * * * *".into(),
            time_zone: "UTC".into(),
        })),
        next_run_time: None,
    }
}

async fn runs_of(exports: &mut Exports, parent: &str, filter: &str) -> Vec<pb::ExportRun> {
    let mut runs = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = exports
            .list_export_runs(pb::ListExportRunsRequest {
                parent: parent.into(),
                page_size: 1000,
                page_token,
                filter: filter.into(),
                order_by: "create_time".into(),
            })
            .await
            .unwrap()
            .into_inner();
        runs.extend(page.runs);
        if page.next_page_token.is_empty() {
            return runs;
        }
        page_token = page.next_page_token;
    }
}

/// Polls until `done` holds for the runs `filter` selects (bounded: 180 s).
async fn wait_runs(
    exports: &mut Exports,
    filter: &str,
    what: &str,
    done: impl Fn(&[pb::ExportRun]) -> bool,
) -> Vec<pb::ExportRun> {
    eventually(Duration::from_secs(180), what, async || {
        let runs = runs_of(exports, "environments/acme/exports/-", filter).await;
        if done(&runs) {
            Ok(runs)
        } else {
            Err(format!("runs: {runs:#?}"))
        }
    })
    .await
}

#[tokio::test]
async fn three_servers_share_the_runs_survive_a_kill_and_hand_the_scheduler_over() {
    if backend() != "postgres" {
        // Several servers share one database only on PostgreSQL.
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let database_url = fresh_database_url(dir.path()).await;
    let envs = server_env(
        &database_url,
        &[
            ("EXPORTD_WORKERS", "2"),
            ("EXPORTD_RUN_LEASE_SECONDS", "2"),
            ("EXPORTD_METRICS_LISTEN", "127.0.0.1:0"),
        ],
    );
    let envs = borrowed(&envs);
    // Three at the same moment, on an empty database.
    let starting: Vec<_> = (0..3).map(|_| ServeProcess::spawn(dir.path(), &[], &envs)).collect();
    let mut servers: Vec<ServeProcess> = starting.into_iter().map(|s| s.ready()).collect();
    let api_only_envs = server_env(&database_url, &[("EXPORTD_WORKERS", "0")]);
    create_environment(dir.path(), &api_only_envs, "acme");
    let api_only = ServeProcess::start(dir.path(), &[], &borrowed(&api_only_envs));

    let (mut catalog, mut connections, mut exports) = clients(&servers[0].addr, "acme").await;
    catalog
        .create_entity(customers_entity("acme", "customers", pb::EntityKind::Profile))
        .await
        .unwrap();
    let messages: Vec<_> = (0..RECORDS / 5_000)
        .map(|m| {
            let records = (m * 5_000..(m + 1) * 5_000)
                .map(|i| json!({"id": format!("k{i:06}"), "ltv": i as f64}))
                .collect();
            write("environments/acme/entities/customers", records, &[])
        })
        .collect();
    catalog.write_records(tokio_stream::iter(messages)).await.unwrap();
    connections
        .create_connection(local_files("acme", "files", "Files", true))
        .await
        .unwrap();
    for n in 0..EXPORTS {
        exports.create_export(export(&format!("e{n:02}"), None)).await.unwrap();
    }
    for n in 0..3 {
        exports
            .create_export(export(&format!("cron{n}"), Some(every_minute())))
            .await
            .unwrap();
    }

    // 30 runs at once, spread over the servers' clients; each is watched on the API-only
    // process, which executes nothing: every watch is of a run another process executes.
    let (_, _, mut watcher) = clients(&api_only.addr, "acme").await;
    let mut started = Vec::new();
    for n in 0..EXPORTS {
        let (_, _, mut client) = clients(&servers[n % 3].addr, "acme").await;
        started.push(run_export(&mut client, &format!("environments/acme/exports/e{n:02}")).await);
    }
    let watches: Vec<_> = started
        .iter()
        .map(|run| {
            let mut watcher = watcher.clone();
            let name = run.name.clone();
            tokio::spawn(async move { watch_to_end(&mut watcher, &name).await })
        })
        .collect();

    // Every worker busy (3 servers × 2): the scheduler's process then executes two runs.
    wait_runs(&mut watcher, "state = RUNNING", "six runs RUNNING", |runs| {
        runs.len() >= 6
    })
    .await;
    let holders: Vec<usize> = (0..3).filter(|i| servers[*i].logs().contains(SCHEDULER_LINE)).collect();
    assert_eq!(holders.len(), 1, "exactly one process runs the scheduler");
    let victim = servers.remove(holders[0]);
    let killed_at = std::time::SystemTime::now();
    victim.signal("KILL");
    assert_eq!(victim.wait(), None, "killed by a signal");

    // Every run ends SUCCEEDED, once, with every row in its folder.
    for watch in watches {
        let messages = watch.await.unwrap();
        let last = messages.last().unwrap();
        assert_eq!(run_state(last), pb::RunState::Succeeded, "{last:#?}");
        assert_eq!(last.records_exported, RECORDS as i64);
    }
    let runs = wait_runs(&mut watcher, "", "the 30 runs", |runs| runs.len() >= EXPORTS).await;
    let ours: Vec<_> = runs.iter().filter(|r| r.name.contains("/exports/e")).collect();
    assert_eq!(ours.len(), EXPORTS, "exactly one run per export");
    assert!(ours.iter().all(|r| run_state(r) == pb::RunState::Succeeded));
    let taken_over = ours.iter().filter(|r| r.attempt > 1).count();
    assert!(taken_over >= 1, "the killed process's runs were taken over");
    let root = dir.path().join("exports/acme/files");
    for n in 0..EXPORTS {
        let keys = exported_keys(&root, &format!("e{n:02}"));
        let unique: HashSet<&String> = keys.iter().collect();
        assert_eq!(
            (keys.len(), unique.len()),
            (RECORDS, RECORDS),
            "e{n:02}: every row exactly once"
        );
    }
    let takeovers: f64 = servers
        .iter()
        .map(|s| sample(&scrape(s), "exportd_run_lease_takeovers_total").unwrap())
        .sum();
    assert_eq!(takeovers as usize, taken_over, "each takeover is counted once");

    // The scheduler moves to a survivor, which fires the due schedules, each occurrence once.
    let (_, _, mut exports) = clients(&servers[0].addr, "acme").await;
    let killed_micros = killed_at.duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as i64;
    let scheduled = wait_runs(
        &mut exports,
        "trigger = SCHEDULE",
        "a scheduled run of each cron export after the kill",
        |runs| {
            (0..3).all(|n| {
                runs.iter()
                    .any(|r| r.name.contains(&format!("/exports/cron{n}/")) && micros(&r.create_time) > killed_micros)
            })
        },
    )
    .await;
    let holders: Vec<usize> = (0..2).filter(|i| servers[*i].logs().contains(SCHEDULER_LINE)).collect();
    assert_eq!(holders.len(), 1, "one survivor took the scheduler over");
    let mut per_minute: BTreeMap<(String, i64), usize> = BTreeMap::new();
    for run in &scheduled {
        let export = run.name.split("/runs/").next().unwrap().to_string();
        *per_minute
            .entry((export, micros(&run.create_time) / 60_000_000))
            .or_default() += 1;
    }
    assert!(
        per_minute.values().all(|n| *n == 1),
        "an occurrence fired twice: {per_minute:?}"
    );

    // Cancelling on the API-only process reaches the worker that executes the run elsewhere
    // (a run of 2,000 files: long enough to be cancelled half-way).
    exports
        .create_export(export_with_files_of("slow", None, 10))
        .await
        .unwrap();
    let run = run_export(&mut exports, "environments/acme/exports/slow").await;
    wait_for_run(&mut watcher, &run.name, |r| r.records_exported > 0).await;
    watcher
        .cancel_export_run(pb::CancelExportRunRequest { name: run.name.clone() })
        .await
        .unwrap();
    let ended = wait_for_end(&mut watcher, &run.name).await;
    assert_eq!(run_state(&ended), pb::RunState::Cancelled, "{ended:#?}");
    assert!(
        !root.join("slow/model.json").exists(),
        "a cancelled run commits nothing"
    );
}
