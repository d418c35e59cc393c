//! Runs through the API: lifecycle and progress, watch, list, run all, skips on limits,
//! dependency waits, system refreshes, cancellation in every state, RunExport's rules and
//! catch-up runs. The CDM files themselves are read back in `cdm_output`.

use std::time::Duration;

use exportd::auth::Role;
use exportd::pb;
use tonic::Code;

use crate::common::*;

fn names(runs: &[pb::ExportRun]) -> Vec<String> {
    runs.iter().map(|r| r.name.clone()).collect()
}

async fn cancel(client: &mut Exports, name: &str) -> pb::ExportRun {
    client
        .cancel_export_run(pb::CancelExportRunRequest { name: name.into() })
        .await
        .unwrap_or_else(|s| panic!("CancelExportRun {name}: {s:?}"))
        .into_inner()
}

async fn system_refresh(catalog: &mut Catalog) -> pb::SystemRefresh {
    let refresh = catalog
        .run_system_refresh(pb::RunSystemRefreshRequest { parent: ACME.into() })
        .await
        .unwrap()
        .into_inner();
    let done = wait_for_system_refresh(catalog, &refresh.name).await;
    assert_eq!(done.state, pb::SystemRefreshState::Succeeded as i32, "{done:#?}");
    done
}

fn task<'a>(run: &'a pb::ExportRun, name: &str) -> &'a pb::RunTask {
    run.tasks
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no task {name} in {run:#?}"))
}

fn task_state(run: &pb::ExportRun, name: &str) -> pb::RunState {
    pb::RunState::try_from(task(run, name).state).unwrap()
}

/// Position of a state in a successful run's life, to check that watches only move forward.
fn rank(state: pb::RunState) -> u8 {
    match state {
        pb::RunState::Queued => 0,
        pb::RunState::WaitingForDependencies => 1,
        pb::RunState::Running => 2,
        pb::RunState::Succeeded | pb::RunState::Failed | pb::RunState::Skipped | pb::RunState::Cancelled => 3,
        pb::RunState::Unspecified => panic!("a run without a state"),
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Lifecycle and progress
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_run_goes_from_queued_to_succeeded_with_its_progress() {
    let t = setup(Options::default()).await;
    let mut admin = t.exports("acme", Role::Admin).await;
    let mut viewer = t.exports("acme", Role::Viewer).await;
    create_export(&mut admin, data_out("acme", "out", "Out", "files", &[CUSTOMERS])).await;
    let export = export_name("acme", "out");

    let started = run_export(&mut admin, &export).await;
    assert!(started.name.starts_with(&format!("{export}/runs/")), "{}", started.name);
    assert_eq!(started.export, export);
    assert_eq!(started.trigger, pb::RunTrigger::Manual as i32);
    assert!(
        matches!(
            run_state(&started),
            pb::RunState::Queued | pb::RunState::Running | pb::RunState::Succeeded
        ),
        "{started:#?}"
    );
    assert!(started.create_time.is_some());

    // Two watchers at once see the same run to its end.
    let (by_admin, by_viewer) = tokio::join!(
        watch_to_end(&mut admin, &started.name),
        watch_to_end(&mut viewer, &started.name)
    );
    for messages in [&by_admin, &by_viewer] {
        let ranks: Vec<u8> = messages.iter().map(|m| rank(run_state(m))).collect();
        assert!(
            ranks.windows(2).all(|w| w[0] <= w[1]),
            "states only move forward: {ranks:?}"
        );
        assert!(
            messages[..messages.len() - 1].iter().all(|m| !is_terminal(m)),
            "only the last message is terminal"
        );
        assert!(
            messages.windows(2).all(|w| w[0] != w[1]),
            "every message after the first is a change"
        );
    }
    let last = by_admin.last().unwrap().clone();
    assert_eq!(by_viewer.last().unwrap(), &last);
    assert_eq!(run_state(&last), pb::RunState::Succeeded, "{last:#?}");

    let run = get_run(&mut admin, &started.name).await;
    assert_eq!(run, last, "GetExportRun equals the watch's last message");
    assert_eq!(run.trigger, pb::RunTrigger::Manual as i32);
    assert_eq!(
        run.tasks.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
        ["validate", "extract", "write", "finalize"]
    );
    for task in &run.tasks {
        assert_eq!(task.state, pb::RunState::Succeeded as i32, "{task:#?}");
        assert!(micros(&task.start_time) <= micros(&task.end_time), "{task:#?}");
        assert!(!task.message.is_empty(), "{task:#?}");
    }
    assert!(micros(&task(&run, "validate").end_time) <= micros(&task(&run, "extract").start_time));
    assert!(micros(&task(&run, "extract").end_time) <= micros(&task(&run, "finalize").start_time));
    assert!(micros(&task(&run, "write").end_time) <= micros(&task(&run, "finalize").start_time));
    // One entity, one partition: counted in words that fit.
    let finalized = &task(&run, "finalize").message;
    assert!(finalized.starts_with("committed 1 file; see "), "{finalized}");
    assert_eq!(run.records_total, 10);
    assert_eq!(run.records_exported, 10);
    assert_eq!(run.records_rejected, 0);
    assert!(run.bytes_written > 0);
    assert_eq!(run.attempt, 1);
    assert!(run.error.is_none(), "{run:#?}");
    assert_eq!(run.skip_reason, "");
    assert!(run.waiting_for.is_empty());
    assert!(micros(&run.create_time) <= micros(&run.start_time));
    assert!(micros(&run.start_time) <= micros(&run.end_time));

    // The bytes are those of the files the run wrote (partitions and model.json).
    let folder = out(&t).join("out");
    let files = files_under(&folder);
    assert!(files.contains(&"model.json".to_string()), "{files:?}");
    let size: u64 = files
        .iter()
        .map(|f| std::fs::metadata(folder.join(f)).unwrap().len())
        .sum();
    assert_eq!(run.bytes_written as u64, size, "{files:?}");

    // The export remembers its last run.
    let export = admin
        .get_export(pb::GetExportRequest { name: export.clone() })
        .await
        .unwrap()
        .into_inner();
    let last_run = export.last_run.expect("last_run");
    assert_eq!(last_run.name, run.name);
    assert_eq!(last_run.state, pb::RunState::Succeeded as i32);
    assert_eq!(last_run.end_time, run.end_time);
    assert_eq!(export.last_refreshed_time, run.end_time);
    t.stop().await;
}

/// A root whose path has a space in it: its `file://` URL is percent-encoded, and the run still
/// reports the bytes of the files it wrote there.
#[tokio::test]
async fn a_run_under_a_root_with_a_space_reports_the_bytes_it_committed() {
    let t = setup(Options::default()).await;
    let root = t.data_dir.path().join("out with space");
    std::fs::create_dir_all(&root).unwrap();
    let mut connections = t.connections("acme", Role::Admin).await;
    connections
        .create_connection(local_files_at("acme", "spaced", "Spaced", true, &root))
        .await
        .unwrap();
    let mut admin = t.exports("acme", Role::Admin).await;
    create_export(&mut admin, data_out("acme", "out", "Out", "spaced", &[CUSTOMERS])).await;

    let started = run_export(&mut admin, &export_name("acme", "out")).await;
    let run = wait_for_end(&mut admin, &started.name).await;
    assert_eq!(run_state(&run), pb::RunState::Succeeded, "{run:#?}");
    let finalized = &task(&run, "finalize").message;
    assert!(finalized.contains("%20"), "the location is a URL: {finalized}");
    let folder = root.join("out");
    let files = files_under(&folder);
    assert!(files.contains(&"model.json".to_string()), "{files:?}");
    let size: u64 = files
        .iter()
        .map(|f| std::fs::metadata(folder.join(f)).unwrap().len())
        .sum();
    assert!(size > 0);
    assert_eq!(run.bytes_written as u64, size, "{files:?}");
    t.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 2. Watch
// ---------------------------------------------------------------------------------------------

async fn next(stream: &mut tonic::codec::Streaming<pb::ExportRun>) -> Option<pb::ExportRun> {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("the watch answers within 10 s")
        .expect("the watch does not fail")
}

#[tokio::test]
async fn a_watch_sends_the_snapshot_then_each_change_and_ends() {
    let t = setup(api_only()).await;
    let mut admin = t.exports("acme", Role::Admin).await;
    let mut viewer = t.exports("acme", Role::Viewer).await;
    create_export(&mut admin, data_out("acme", "out", "Out", "files", &[CUSTOMERS])).await;
    let export = export_name("acme", "out");
    let run = run_export(&mut admin, &export).await;
    assert_eq!(run_state(&run), pb::RunState::Queued);

    let mut stream = viewer
        .watch_export_run(pb::WatchExportRunRequest { name: run.name.clone() })
        .await
        .unwrap()
        .into_inner();
    let first = next(&mut stream).await.expect("a first message");
    assert_eq!(
        first,
        get_run(&mut admin, &run.name).await,
        "the first message is the run as it is"
    );
    assert_eq!(run_state(&first), pb::RunState::Queued);

    let cancelled = cancel(&mut admin, &run.name).await;
    let second = next(&mut stream).await.expect("the change");
    assert_eq!(run_state(&second), pb::RunState::Cancelled);
    assert!(second.end_time.is_some());
    assert_eq!(second, cancelled);
    assert!(
        next(&mut stream).await.is_none(),
        "the stream ends after the terminal state"
    );

    // A finished run: one message, then the end.
    let again = watch_to_end(&mut viewer, &run.name).await;
    assert_eq!(again, vec![second]);

    let status = expect_code(
        viewer
            .watch_export_run(pb::WatchExportRunRequest {
                name: format!("{export}/runs/nope"),
            })
            .await,
        Code::NotFound,
    );
    assert!(status.message().contains("nope"), "{status:?}");
    let status = expect_code(
        viewer
            .watch_export_run(pb::WatchExportRunRequest {
                name: "nonsense".into(),
            })
            .await,
        Code::InvalidArgument,
    );
    assert_eq!(bad_fields(&status), ["name"]);
    // No role in the environment: not found.
    let mut stranger = t.exports("globex", Role::Admin).await;
    expect_code(
        stranger
            .watch_export_run(pb::WatchExportRunRequest { name: run.name.clone() })
            .await,
        Code::NotFound,
    );
    t.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 3. ListExportRuns
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn runs_are_listed_newest_first_filtered_and_paged() {
    let t = setup(Options::default()).await;
    let mut admin = t.exports("acme", Role::Admin).await;
    let mut catalog = t.catalog("acme", Role::Admin).await;
    create_export(&mut admin, data_out("acme", "a", "A", "files", &[CUSTOMERS])).await;
    create_export(&mut admin, data_out("acme", "b", "B", "files", &[ORDERS])).await;
    create_export(&mut admin, data_out("acme", "c", "C", "files", &[ORDERS])).await;
    let (a, b, c) = (
        export_name("acme", "a"),
        export_name("acme", "b"),
        export_name("acme", "c"),
    );
    let mut a_runs = Vec::new();
    for _ in 0..3 {
        let run = run_export(&mut admin, &a).await;
        let done = wait_for_end(&mut admin, &run.name).await;
        assert_eq!(run_state(&done), pb::RunState::Succeeded, "{done:#?}");
        a_runs.push(run.name);
    }
    start_refresh(&mut catalog, ORDERS).await;
    let b_run = run_export(&mut admin, &b).await;
    assert_eq!(run_state(&b_run), pb::RunState::WaitingForDependencies);
    cancel(&mut admin, &b_run.name).await;
    let c_run = run_export(&mut admin, &c).await;
    assert_eq!(run_state(&c_run), pb::RunState::WaitingForDependencies);

    let newest_first: Vec<String> = a_runs.iter().rev().cloned().collect();
    assert_eq!(names(&list_runs(&mut admin, &a, "", "").await), newest_first);
    assert_eq!(
        names(&list_runs(&mut admin, &a, "", "create_time desc").await),
        newest_first
    );
    assert_eq!(names(&list_runs(&mut admin, &a, "", "create_time").await), a_runs);
    let everything = names(&list_runs(&mut admin, "environments/acme/exports/-", "", "").await);
    let mut expected = vec![c_run.name.clone(), b_run.name.clone()];
    expected.extend(newest_first.iter().cloned());
    assert_eq!(everything, expected);

    let all = "environments/acme/exports/-";
    for (filter, expected) in [
        ("state = SUCCEEDED", newest_first.clone()),
        ("state = RUN_STATE_SUCCEEDED", newest_first.clone()),
        ("state = CANCELLED", vec![b_run.name.clone()]),
        ("state = WAITING_FOR_DEPENDENCIES", vec![c_run.name.clone()]),
        (
            "state = CANCELLED OR state = WAITING_FOR_DEPENDENCIES",
            vec![c_run.name.clone(), b_run.name.clone()],
        ),
        ("trigger = MANUAL AND state = SUCCEEDED", newest_first.clone()),
        ("trigger = RUN_ALL", vec![]),
    ] {
        assert_eq!(
            names(&list_runs(&mut admin, all, filter, "").await),
            expected,
            "{filter}"
        );
    }
    assert_eq!(
        names(&list_runs(&mut admin, &a, "state = CANCELLED", "").await),
        Vec::<String>::new()
    );
    // By create time (RFC 3339): the runs after the first one of `a`.
    let first = get_run(&mut admin, &a_runs[0]).await;
    let time = first.create_time.as_ref().unwrap();
    let text = chrono::DateTime::from_timestamp(time.seconds, time.nanos as u32)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    assert_eq!(
        names(&list_runs(&mut admin, &a, &format!("create_time > \"{text}\""), "create_time").await),
        a_runs[1..].to_vec()
    );
    assert_eq!(
        names(&list_runs(&mut admin, &a, &format!("create_time <= \"{text}\""), "").await),
        a_runs[..1].to_vec()
    );
    expect_code(
        admin
            .get_export_run(pb::GetExportRunRequest {
                name: format!("{a}/runs/nope"),
            })
            .await,
        Code::NotFound,
    );
    let status = expect_code(
        admin.get_export_run(pb::GetExportRunRequest { name: a.clone() }).await,
        Code::InvalidArgument,
    );
    assert_eq!(bad_fields(&status), ["name"]);

    // Pages of two, in the same order as the whole list.
    let mut paged = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = admin
            .list_export_runs(pb::ListExportRunsRequest {
                parent: all.into(),
                page_size: 2,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.runs.len() <= 2);
        paged.extend(names(&page.runs));
        pages += 1;
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
        // A token is only valid with the same parameters.
        let status = expect_code(
            admin
                .list_export_runs(pb::ListExportRunsRequest {
                    parent: all.into(),
                    page_size: 2,
                    page_token: token.clone(),
                    filter: "state = SUCCEEDED".into(),
                    ..Default::default()
                })
                .await,
            Code::InvalidArgument,
        );
        assert_eq!(bad_fields(&status), ["page_token"]);
    }
    assert_eq!(pages, 3);
    assert_eq!(paged, everything);

    // Every role may list.
    let mut viewer = t.exports("acme", Role::Viewer).await;
    assert_eq!(names(&list_runs(&mut viewer, all, "", "").await), everything);

    for (request, field) in [
        (
            pb::ListExportRunsRequest {
                filter: "state = DONE".into(),
                ..Default::default()
            },
            "filter",
        ),
        (
            pb::ListExportRunsRequest {
                filter: "colour = RED".into(),
                ..Default::default()
            },
            "filter",
        ),
        (
            pb::ListExportRunsRequest {
                filter: "state = ".into(),
                ..Default::default()
            },
            "filter",
        ),
        (
            pb::ListExportRunsRequest {
                order_by: "display_name".into(),
                ..Default::default()
            },
            "order_by",
        ),
        (
            pb::ListExportRunsRequest {
                order_by: "create_time sideways".into(),
                ..Default::default()
            },
            "order_by",
        ),
        (
            pb::ListExportRunsRequest {
                page_size: -1,
                ..Default::default()
            },
            "page_size",
        ),
        (
            pb::ListExportRunsRequest {
                page_token: "garbage".into(),
                ..Default::default()
            },
            "page_token",
        ),
        (
            pb::ListExportRunsRequest {
                parent: "environments/acme/exports".into(),
                ..Default::default()
            },
            "parent",
        ),
    ] {
        let request = pb::ListExportRunsRequest {
            parent: if request.parent.is_empty() {
                all.to_string()
            } else {
                request.parent.clone()
            },
            ..request
        };
        let status = expect_code(admin.list_export_runs(request.clone()).await, Code::InvalidArgument);
        assert_eq!(bad_fields(&status), [field], "{request:?}");
    }
    expect_code(
        admin
            .list_export_runs(pb::ListExportRunsRequest {
                parent: export_name("acme", "nope"),
                ..Default::default()
            })
            .await,
        Code::NotFound,
    );
    t.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 6. Run all
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn run_all_runs_scheduled_exports_without_an_active_run_that_the_caller_may_edit() {
    let t = setup(api_only()).await;
    let mut admin = t.exports("acme", Role::Admin).await;
    let mut contributor = t.exports("acme", Role::Contributor).await;
    create_export(
        &mut admin,
        data_out("acme", "on-shared", "On shared", "files", &[CUSTOMERS]),
    )
    .await;
    create_export(
        &mut admin,
        with_schedule(
            data_out("acme", "cron-shared", "Cron shared", "files", &[CUSTOMERS]),
            yearly_cron(),
        ),
    )
    .await;
    create_export(
        &mut admin,
        with_schedule(
            data_out("acme", "off-shared", "Off shared", "files", &[CUSTOMERS]),
            schedule_off(),
        ),
    )
    .await;
    create_export(
        &mut admin,
        data_out("acme", "on-private", "On private", "private", &[CUSTOMERS]),
    )
    .await;
    create_export(&mut admin, data_out("acme", "busy", "Busy", "files", &[CUSTOMERS])).await;
    create_export(&mut admin, data_out("acme", "parked", "Parked", "files", &[CUSTOMERS])).await;
    admin
        .detach_connection(pb::DetachConnectionRequest {
            name: export_name("acme", "parked"),
        })
        .await
        .unwrap();
    let busy = run_export(&mut admin, &export_name("acme", "busy")).await;
    assert_eq!(run_state(&busy), pb::RunState::Queued);

    let exports_of = |runs: &[pb::ExportRun]| {
        let mut exports: Vec<String> = runs.iter().map(|r| r.export.clone()).collect();
        exports.sort();
        exports
    };
    let run_all = pb::RunAllExportsRequest { parent: ACME.into() };
    // A contributor runs only what it may edit: exports on the shared connection.
    let by_contributor = contributor
        .run_all_exports(run_all.clone())
        .await
        .unwrap()
        .into_inner()
        .runs;
    assert_eq!(
        exports_of(&by_contributor),
        [export_name("acme", "cron-shared"), export_name("acme", "on-shared")]
    );
    for run in &by_contributor {
        assert_eq!(run.trigger, pb::RunTrigger::RunAll as i32, "{run:#?}");
        assert_eq!(run_state(run), pb::RunState::Queued);
        assert_eq!(&get_run(&mut admin, &run.name).await, run);
    }
    // An admin: the rest that is on and idle.
    let by_admin = admin.run_all_exports(run_all.clone()).await.unwrap().into_inner().runs;
    assert_eq!(exports_of(&by_admin), [export_name("acme", "on-private")]);
    assert_eq!(by_admin[0].trigger, pb::RunTrigger::RunAll as i32);
    // Everything that may run has an active run now.
    assert!(
        admin
            .run_all_exports(run_all.clone())
            .await
            .unwrap()
            .into_inner()
            .runs
            .is_empty()
    );

    assert!(
        list_runs(&mut admin, &export_name("acme", "off-shared"), "", "")
            .await
            .is_empty()
    );
    assert!(
        list_runs(&mut admin, &export_name("acme", "parked"), "", "")
            .await
            .is_empty()
    );
    assert_eq!(
        names(&list_runs(&mut admin, &export_name("acme", "busy"), "", "").await),
        std::slice::from_ref(&busy.name),
        "an export with an active run is left out"
    );
    assert_eq!(
        list_runs(&mut admin, "environments/acme/exports/-", "", "").await.len(),
        4
    );

    let mut viewer = t.exports("acme", Role::Viewer).await;
    expect_code(viewer.run_all_exports(run_all.clone()).await, Code::PermissionDenied);
    expect_code(
        admin
            .run_all_exports(pb::RunAllExportsRequest {
                parent: "environments/nowhere".into(),
            })
            .await,
        Code::NotFound,
    );
    expect_code(
        admin
            .run_all_exports(pb::RunAllExportsRequest { parent: "acme".into() })
            .await,
        Code::InvalidArgument,
    );
    t.stop().await;
}

#[tokio::test]
async fn run_all_runs_execute() {
    let t = setup(Options::default()).await;
    let mut admin = t.exports("acme", Role::Admin).await;
    create_export(&mut admin, data_out("acme", "one", "One", "files", &[CUSTOMERS])).await;
    create_export(&mut admin, data_out("acme", "two", "Two", "private", &[CUSTOMERS])).await;
    let runs = admin
        .run_all_exports(pb::RunAllExportsRequest { parent: ACME.into() })
        .await
        .unwrap()
        .into_inner()
        .runs;
    assert_eq!(runs.len(), 2);
    for run in runs {
        let done = wait_for_end(&mut admin, &run.name).await;
        assert_eq!(run_state(&done), pb::RunState::Succeeded, "{done:#?}");
        assert_eq!(done.trigger, pb::RunTrigger::RunAll as i32);
        assert_eq!(done.records_exported, 10);
    }
    t.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 7. Skips on limits, before the target is contacted
// ---------------------------------------------------------------------------------------------

fn with_limit(mut request: pb::CreateConnectionRequest, limit: i64) -> pb::CreateConnectionRequest {
    request.connection.as_mut().unwrap().profile_limit = limit;
    request
}

/// Runs an export to its end.
async fn run_to_end(client: &mut Exports, export: &str) -> pb::ExportRun {
    let run = run_export(client, export).await;
    wait_for_end(client, &run.name).await
}

fn assert_skipped_over_limit(run: &pb::ExportRun) {
    assert_eq!(run_state(run), pb::RunState::Skipped, "{run:#?}");
    // A reason, not the warning shown when the export was saved.
    assert_eq!(
        run.skip_reason,
        "segment 'Segment vip' has 5 members, over the limit of 3 profiles per segment of this connection"
    );
    assert!(run.error.is_none());
    assert!(run.end_time.is_some());
    assert_eq!(run.records_exported, 0);
    assert_eq!(run.bytes_written, 0);
    assert_eq!(task_state(run, "validate"), pb::RunState::Skipped);
    assert_eq!(task(run, "validate").message, run.skip_reason);
    for name in ["extract", "write", "finalize"] {
        assert_eq!(task_state(run, name), pb::RunState::Skipped, "{name}: {run:#?}");
    }
    assert!(
        run.warnings.iter().any(|w| w.code == "SEGMENT_OVER_LIMIT"),
        "{:#?}",
        run.warnings
    );
}

fn error_info(status: &tonic_types::pb::Status) -> tonic_types::pb::ErrorInfo {
    use prost::Message;
    let any = status
        .details
        .iter()
        .find(|any| any.type_url.ends_with("google.rpc.ErrorInfo"))
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
    tonic_types::pb::ErrorInfo::decode(any.value.as_slice()).unwrap()
}

#[tokio::test]
async fn over_limit_segments_skip_the_run_before_the_target_is_contacted() {
    let t = setup(Options::default()).await;
    let mut connections = t.connections("acme", Role::Admin).await;
    let small_root = t.data_dir.path().join("small");
    connections
        .create_connection(with_limit(
            local_files_at("acme", "small", "Small", true, &small_root),
            3,
        ))
        .await
        .unwrap();
    // Over the limit, the target is never contacted: nothing listens at the webhook's address.
    connections
        .create_connection(with_limit(
            connection(
                "acme",
                "hook",
                "Hook",
                "webhook",
                &[("url", "http://127.0.0.1:9/hook")],
                &[],
                true,
            ),
            3,
        ))
        .await
        .unwrap();
    connections
        .create_connection(connection(
            "acme",
            "open-pg",
            "Open database",
            "postgres",
            &[],
            &[("url", "postgres://user:pw@127.0.0.1:9/db")],
            true,
        ))
        .await
        .unwrap();
    connections
        .create_connection(with_limit(mailchimp("acme", "mc", "Mailchimp", true), 3))
        .await
        .unwrap();
    connections
        .create_connection(connection(
            "acme",
            "li",
            "LinkedIn",
            "linkedin-ads",
            &[("ad_account_id", "123")],
            &[("access_token", "token")],
            true,
        ))
        .await
        .unwrap();
    let mut admin = t.exports("acme", Role::Admin).await;
    let mappings = [("id", "customer_id"), ("email", "email")];
    for (id, connection) in [("small", "small"), ("hook", "hook"), ("mc", "mc")] {
        let created = create_export(
            &mut admin,
            segment_export("acme", id, id, connection, &[VIP], &mappings),
        )
        .await;
        assert!(
            created.warnings.iter().any(|w| w.code == "SEGMENT_OVER_LIMIT"),
            "{created:#?}"
        );
        let run = run_to_end(&mut admin, &export_name("acme", id)).await;
        assert_skipped_over_limit(&run);
        let export = admin
            .get_export(pb::GetExportRequest {
                name: export_name("acme", id),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(export.last_run.unwrap().state, pb::RunState::Skipped as i32);
        assert!(export.last_refreshed_time.is_none());
    }
    assert!(files_under(&small_root).is_empty(), "{:?}", files_under(&small_root));

    // Under the target's minimum audience size (LinkedIn: 300): skipped the same way.
    create_export(
        &mut admin,
        segment_export("acme", "li", "LinkedIn", "li", &[VIP], &[("email", "email")]),
    )
    .await;
    let run = run_to_end(&mut admin, &export_name("acme", "li")).await;
    assert_eq!(run_state(&run), pb::RunState::Skipped, "{run:#?}");
    for part in ["'Segment vip'", "5 members", "minimum of 300 profiles"] {
        assert!(run.skip_reason.contains(part), "{part} in {:?}", run.skip_reason);
    }
    assert!(
        run.warnings.iter().any(|w| w.code == "SEGMENT_UNDER_MINIMUM"),
        "{run:#?}"
    );
    assert!(run.error.is_none());

    // Within the limits, the target is contacted: nothing listens at the database's port, so
    // the run fails in its write task once the retries are used up.
    create_export(
        &mut admin,
        segment_export("acme", "open-pg", "Open database", "open-pg", &[VIP], &mappings),
    )
    .await;
    let run = run_to_end(&mut admin, &export_name("acme", "open-pg")).await;
    assert_eq!(run_state(&run), pb::RunState::Failed, "{run:#?}");
    let error = run.error.as_ref().expect("a failed run says why");
    assert_eq!(run_error_reason(error), "TARGET_UNAVAILABLE", "{error:#?}");
    assert!(error.message.contains("cannot connect"), "{}", error.message);
    assert_eq!(task_state(&run, "write"), pb::RunState::Failed);
    t.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 8. Dependency waits and system refreshes
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_run_waits_for_its_refreshing_dependencies() {
    let t = setup(Options::default()).await;
    let mut admin = t.exports("acme", Role::Admin).await;
    let mut catalog = t.catalog("acme", Role::Admin).await;
    create_export(&mut admin, data_out("acme", "out", "Out", "files", &[CUSTOMERS])).await;

    start_refresh(&mut catalog, CUSTOMERS).await;
    start_refresh(&mut catalog, ORDERS).await;
    let run = run_export(&mut admin, &export_name("acme", "out")).await;
    assert_eq!(run_state(&run), pb::RunState::WaitingForDependencies, "{run:#?}");
    assert_eq!(run.waiting_for, [CUSTOMERS]);
    assert_eq!(get_run(&mut admin, &run.name).await.waiting_for, [CUSTOMERS]);
    // Its task says what it waits for.
    assert_eq!(task_state(&run, "validate"), pb::RunState::WaitingForDependencies);
    assert_eq!(
        task(&run, "validate").message,
        format!("waiting for the refresh of {CUSTOMERS} to complete")
    );

    // Another entity's refresh completing releases nothing.
    complete_refresh(&mut catalog, ORDERS).await;
    let still = get_run(&mut admin, &run.name).await;
    assert_eq!(run_state(&still), pb::RunState::WaitingForDependencies, "{still:#?}");
    assert_eq!(still.waiting_for, [CUSTOMERS]);

    complete_refresh(&mut catalog, CUSTOMERS).await;
    let done = wait_for_end(&mut admin, &run.name).await;
    assert_eq!(run_state(&done), pb::RunState::Succeeded, "{done:#?}");
    assert_eq!(done.records_exported, 10);
    assert!(done.waiting_for.is_empty());
    assert_eq!(done.trigger, pb::RunTrigger::Manual as i32);

    // A segment export waits for its segment and for the segment's entity.
    create_export(
        &mut admin,
        segment_export("acme", "seg", "Seg", "files", &[VIP], &[("id", "customer_id")]),
    )
    .await;
    start_refresh(&mut catalog, VIP).await;
    let run = run_export(&mut admin, &export_name("acme", "seg")).await;
    assert_eq!(run_state(&run), pb::RunState::WaitingForDependencies, "{run:#?}");
    assert_eq!(run.waiting_for, [VIP]);
    start_refresh(&mut catalog, CUSTOMERS).await;
    complete_refresh(&mut catalog, VIP).await;
    let still = get_run(&mut admin, &run.name).await;
    assert_eq!(run_state(&still), pb::RunState::WaitingForDependencies, "{still:#?}");
    assert_eq!(still.waiting_for, [CUSTOMERS], "now only the entity is refreshing");
    assert_eq!(
        task(&still, "validate").message,
        format!("waiting for the refresh of {CUSTOMERS} to complete")
    );
    complete_refresh(&mut catalog, CUSTOMERS).await;
    let done = wait_for_end(&mut admin, &run.name).await;
    assert_eq!(run_state(&done), pb::RunState::Succeeded, "{done:#?}");
    assert_eq!(done.records_exported, 5);
    t.stop().await;
}

#[tokio::test]
async fn a_system_refresh_runs_the_exports_that_follow_it() {
    let t = setup(Options::default()).await;
    let mut admin = t.exports("acme", Role::Admin).await;
    let mut catalog = t.catalog("acme", Role::Admin).await;
    create_export(
        &mut admin,
        data_out("acme", "follows", "Follows", "files", &[CUSTOMERS]),
    )
    .await;
    create_export(
        &mut admin,
        with_schedule(data_out("acme", "off", "Off", "files", &[CUSTOMERS]), schedule_off()),
    )
    .await;
    create_export(
        &mut admin,
        with_schedule(data_out("acme", "cron", "Cron", "files", &[CUSTOMERS]), yearly_cron()),
    )
    .await;
    let refresh = system_refresh(&mut catalog).await;
    assert_eq!(refresh.runs.len(), 1, "{refresh:#?}");
    let follows = export_name("acme", "follows");
    assert!(refresh.runs[0].starts_with(&format!("{follows}/runs/")), "{refresh:#?}");
    let done = wait_for_end(&mut admin, &refresh.runs[0]).await;
    assert_eq!(done.trigger, pb::RunTrigger::SystemRefresh as i32);
    assert_eq!(run_state(&done), pb::RunState::Succeeded, "{done:#?}");
    assert_eq!(done.records_exported, 10);
    assert_eq!(
        names(&list_runs(&mut admin, "environments/acme/exports/-", "", "").await),
        refresh.runs,
        "exports with schedule off or on a cron are not run"
    );
    t.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 9. Cancel in each state
// ---------------------------------------------------------------------------------------------

fn assert_cancelled(run: &pb::ExportRun) {
    assert_eq!(run_state(run), pb::RunState::Cancelled, "{run:#?}");
    assert!(run.end_time.is_some(), "{run:#?}");
    assert!(micros(&run.create_time) <= micros(&run.end_time));
    for task in &run.tasks {
        assert_eq!(task.state, pb::RunState::Cancelled as i32, "{task:#?}");
    }
}

#[tokio::test]
async fn queued_and_waiting_runs_are_cancelled_at_once() {
    let t = setup(api_only()).await;
    let mut admin = t.exports("acme", Role::Admin).await;
    let mut catalog = t.catalog("acme", Role::Admin).await;
    create_export(&mut admin, data_out("acme", "out", "Out", "files", &[CUSTOMERS])).await;
    create_export(&mut admin, data_out("acme", "later", "Later", "files", &[ORDERS])).await;
    create_export(&mut admin, data_out("acme", "mine", "Mine", "private", &[CUSTOMERS])).await;
    let export = export_name("acme", "out");

    let queued = run_export(&mut admin, &export).await;
    assert_eq!(run_state(&queued), pb::RunState::Queued);
    let cancelled = cancel(&mut admin, &queued.name).await;
    assert_cancelled(&cancelled);
    assert_eq!(get_run(&mut admin, &queued.name).await, cancelled);
    let got = admin
        .get_export(pb::GetExportRequest { name: export.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.last_run.as_ref().unwrap().state, pb::RunState::Cancelled as i32);
    assert_eq!(got.last_run.unwrap().end_time, cancelled.end_time);
    assert!(got.last_refreshed_time.is_none());

    start_refresh(&mut catalog, ORDERS).await;
    let waiting = run_export(&mut admin, &export_name("acme", "later")).await;
    assert_eq!(run_state(&waiting), pb::RunState::WaitingForDependencies);
    let mut contributor = t.exports("acme", Role::Contributor).await;
    let cancelled = cancel(&mut contributor, &waiting.name).await;
    assert_cancelled(&cancelled);
    // Completing the refresh now starts nothing.
    complete_refresh(&mut catalog, ORDERS).await;
    assert_eq!(get_run(&mut admin, &waiting.name).await, cancelled);

    // A finished run cannot be cancelled.
    let status = expect_code(
        admin
            .cancel_export_run(pb::CancelExportRunRequest {
                name: queued.name.clone(),
            })
            .await,
        Code::FailedPrecondition,
    );
    assert_eq!(reason(&status), "RUN_FINISHED");
    assert_eq!(precondition_subjects(&status), std::slice::from_ref(&queued.name));
    assert!(status.message().contains("CANCELLED"), "{status:?}");

    // Viewers may not cancel; contributors not on an export they may not edit.
    let active = run_export(&mut admin, &export).await;
    let mut viewer = t.exports("acme", Role::Viewer).await;
    let status = expect_code(
        viewer
            .cancel_export_run(pb::CancelExportRunRequest {
                name: active.name.clone(),
            })
            .await,
        Code::PermissionDenied,
    );
    assert_eq!(reason(&status), "PERMISSION_DENIED");
    let private = run_export(&mut admin, &export_name("acme", "mine")).await;
    expect_code(
        contributor
            .cancel_export_run(pb::CancelExportRunRequest {
                name: private.name.clone(),
            })
            .await,
        Code::PermissionDenied,
    );
    assert_eq!(
        run_state(&get_run(&mut admin, &active.name).await),
        pb::RunState::Queued
    );
    assert_eq!(
        run_state(&get_run(&mut admin, &private.name).await),
        pb::RunState::Queued
    );
    expect_code(
        admin
            .cancel_export_run(pb::CancelExportRunRequest {
                name: format!("{export}/runs/nope"),
            })
            .await,
        Code::NotFound,
    );
    let status = expect_code(
        admin
            .cancel_export_run(pb::CancelExportRunRequest { name: export.clone() })
            .await,
        Code::InvalidArgument,
    );
    assert_eq!(bad_fields(&status), ["name"]);
    t.stop().await;
}

#[tokio::test]
async fn a_running_run_is_cancelled_promptly_and_its_files_removed() {
    let t = setup(Options::default()).await;
    let big = big_entity(&t, 100_000).await;
    let mut admin = t.exports("acme", Role::Admin).await;
    let mut request = data_out("acme", "big", "Big", "files", &[&big]);
    request
        .export
        .as_mut()
        .unwrap()
        .settings
        .insert("max_rows_per_file".into(), "100".into());
    create_export(&mut admin, request).await;
    let export = export_name("acme", "big");

    let run = run_export(&mut admin, &export).await;
    let mut stream = admin
        .watch_export_run(pb::WatchExportRunRequest { name: run.name.clone() })
        .await
        .unwrap()
        .into_inner();
    let running = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(message) = stream.message().await.unwrap() {
            if run_state(&message) != pb::RunState::Queued {
                return message;
            }
        }
        panic!("the watch ended before the run ran")
    })
    .await
    .expect("the run starts");
    assert_eq!(run_state(&running), pb::RunState::Running, "{running:#?}");
    // Progress shows while it runs (counts are stored at least every second).
    let progress = tokio::time::timeout(Duration::from_secs(30), async {
        let mut message = running;
        loop {
            assert_eq!(run_state(&message), pb::RunState::Running, "{message:#?}");
            if message.records_exported > 0 {
                return message;
            }
            message = stream.message().await.unwrap().expect("the run goes on");
        }
    })
    .await
    .expect("progress while running");
    assert!(progress.records_total >= progress.records_exported);
    assert!(progress.bytes_written > 0, "{progress:#?}");
    assert_eq!(task_state(&progress, "validate"), pb::RunState::Succeeded);
    assert_eq!(task_state(&progress, "extract"), pb::RunState::Running);
    let folder = out(&t).join("big");
    assert!(!files_under(&folder).is_empty(), "partitions are being written");
    let asked = cancel(&mut admin, &run.name).await;
    assert!(
        matches!(run_state(&asked), pb::RunState::Running | pb::RunState::Cancelled),
        "{asked:#?}"
    );
    let done = wait_for_end(&mut admin, &run.name).await;
    assert_eq!(run_state(&done), pb::RunState::Cancelled, "{done:#?}");
    assert!(done.end_time.is_some());
    assert!(done.records_exported < 100_000, "{done:#?}");
    assert!(done.error.is_none());
    for task in &done.tasks {
        assert!(
            matches!(
                pb::RunState::try_from(task.state).unwrap(),
                pb::RunState::Succeeded | pb::RunState::Cancelled
            ),
            "{task:#?}"
        );
        assert!(task.end_time.is_some() || task.start_time.is_none(), "{task:#?}");
    }
    assert_eq!(task_state(&done, "finalize"), pb::RunState::Cancelled);
    // No model.json, no partition file (nor temp file) of the run is left.
    assert_eq!(files_under(&folder), Vec::<String>::new());
    let got = admin
        .get_export(pb::GetExportRequest { name: export.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.last_run.unwrap().state, pb::RunState::Cancelled as i32);
    assert!(got.last_refreshed_time.is_none());
    t.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 10. RunExport's rules
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn run_export_is_idempotent_never_overlaps_and_checks_the_export() {
    let t = setup(api_only()).await;
    let mut admin = t.exports("acme", Role::Admin).await;
    let mut contributor = t.exports("acme", Role::Contributor).await;
    let mut viewer = t.exports("acme", Role::Viewer).await;
    create_export(&mut admin, data_out("acme", "out", "Out", "files", &[CUSTOMERS])).await;
    create_export(
        &mut admin,
        with_schedule(data_out("acme", "off", "Off", "files", &[CUSTOMERS]), schedule_off()),
    )
    .await;
    create_export(&mut admin, data_out("acme", "mine", "Mine", "private", &[CUSTOMERS])).await;
    create_export(&mut admin, data_out("acme", "parked", "Parked", "files", &[CUSTOMERS])).await;
    admin
        .detach_connection(pb::DetachConnectionRequest {
            name: export_name("acme", "parked"),
        })
        .await
        .unwrap();
    let export = export_name("acme", "out");

    let with_id = |name: &str, id: &str| pb::RunExportRequest {
        name: name.into(),
        request_id: id.into(),
    };
    let first = admin.run_export(with_id(&export, "req-1")).await.unwrap().into_inner();
    let again = admin.run_export(with_id(&export, "req-1")).await.unwrap().into_inner();
    assert_eq!(again.name, first.name, "the same request id returns the first run");
    assert_eq!(
        names(&list_runs(&mut admin, &export, "", "").await),
        std::slice::from_ref(&first.name)
    );
    // The same id for another request is refused.
    let status = expect_code(
        admin.run_export(with_id(&export_name("acme", "off"), "req-1")).await,
        Code::InvalidArgument,
    );
    assert_eq!(bad_fields(&status), ["request_id"]);
    let status = expect_code(
        admin.run_export(with_id(&export, "bad id")).await,
        Code::InvalidArgument,
    );
    assert_eq!(bad_fields(&status), ["request_id"]);

    // While a run is active, another is refused, naming it.
    for id in ["", "req-2"] {
        let status = expect_code(admin.run_export(with_id(&export, id)).await, Code::FailedPrecondition);
        assert_eq!(reason(&status), "RUN_ACTIVE");
        assert!(status.message().contains(&first.name), "{status:?}");
        assert_eq!(precondition_subjects(&status), std::slice::from_ref(&first.name));
    }
    assert_eq!(list_runs(&mut admin, &export, "", "").await.len(), 1);

    // Schedule off: manual runs are still allowed.
    let off = run_export(&mut contributor, &export_name("acme", "off")).await;
    assert_eq!(run_state(&off), pb::RunState::Queued);
    assert_eq!(off.trigger, pb::RunTrigger::Manual as i32);

    // Detached: nothing to run.
    let parked = export_name("acme", "parked");
    let status = expect_code(admin.run_export(with_id(&parked, "")).await, Code::FailedPrecondition);
    assert_eq!(reason(&status), "EXPORT_DETACHED");
    assert!(list_runs(&mut admin, &parked, "", "").await.is_empty());

    // Roles.
    let mine = export_name("acme", "mine");
    let status = expect_code(contributor.run_export(with_id(&mine, "")).await, Code::PermissionDenied);
    assert_eq!(reason(&status), "PERMISSION_DENIED");
    expect_code(viewer.run_export(with_id(&mine, "")).await, Code::PermissionDenied);
    assert!(list_runs(&mut admin, &mine, "", "").await.is_empty());
    run_export(&mut admin, &mine).await;

    // Names.
    expect_code(
        admin.run_export(with_id(&export_name("acme", "nope"), "")).await,
        Code::NotFound,
    );
    let status = expect_code(
        admin
            .run_export(with_id("environments/acme/exports/Not_An_Id", ""))
            .await,
        Code::InvalidArgument,
    );
    assert_eq!(bad_fields(&status), ["name"]);
    let status = expect_code(admin.run_export(with_id("acme/out", "")).await, Code::InvalidArgument);
    assert_eq!(bad_fields(&status), ["name"]);
    let mut stranger = t.exports("globex", Role::Admin).await;
    expect_code(stranger.run_export(with_id(&export, "")).await, Code::NotFound);
    t.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 11. Catch-up, never a pile-up
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn system_refreshes_during_an_active_run_leave_one_catch_up_run() {
    let t = setup(api_only()).await;
    let mut admin = t.exports("acme", Role::Admin).await;
    let mut catalog = t.catalog("acme", Role::Admin).await;
    create_export(&mut admin, data_out("acme", "out", "Out", "files", &[CUSTOMERS])).await;
    let export = export_name("acme", "out");
    let first = run_export(&mut admin, &export).await;
    assert_eq!(run_state(&first), pb::RunState::Queued);

    for _ in 0..2 {
        let refresh = system_refresh(&mut catalog).await;
        assert!(
            refresh.runs.is_empty(),
            "no second run while one is active: {refresh:#?}"
        );
    }
    assert_eq!(
        names(&list_runs(&mut admin, &export, "", "").await),
        std::slice::from_ref(&first.name)
    );

    cancel(&mut admin, &first.name).await;
    let runs = list_runs(&mut admin, &export, "", "").await;
    assert_eq!(runs.len(), 2, "exactly one catch-up run: {runs:#?}");
    let catch_up = &runs[0];
    assert_ne!(catch_up.name, first.name);
    assert_eq!(catch_up.trigger, pb::RunTrigger::SystemRefresh as i32);
    assert_eq!(run_state(catch_up), pb::RunState::Queued);
    assert_eq!(run_state(&runs[1]), pb::RunState::Cancelled);
    t.stop().await;
}

#[tokio::test]
async fn a_catch_up_run_starts_when_the_active_run_ends() {
    let t = setup(Options::default()).await;
    let mut admin = t.exports("acme", Role::Admin).await;
    let mut catalog = t.catalog("acme", Role::Admin).await;
    create_export(&mut admin, data_out("acme", "out", "Out", "files", &[CUSTOMERS])).await;
    let export = export_name("acme", "out");
    // The first run waits for the entity, so it is still active when the refresh ends.
    start_refresh(&mut catalog, CUSTOMERS).await;
    let first = run_export(&mut admin, &export).await;
    assert_eq!(run_state(&first), pb::RunState::WaitingForDependencies);
    let refresh = system_refresh(&mut catalog).await;
    assert!(refresh.runs.is_empty(), "{refresh:#?}");
    // The system refresh refreshed the entity too: the first run goes on, then the catch-up.
    let done = wait_for_end(&mut admin, &first.name).await;
    assert_eq!(run_state(&done), pb::RunState::Succeeded, "{done:#?}");
    let catch_up = eventually(Duration::from_secs(30), "a catch-up run", async || {
        let runs = list_runs(&mut admin, &export, "", "").await;
        assert!(runs.len() <= 2, "{runs:#?}");
        if runs.len() == 2 {
            Ok(runs[0].clone())
        } else {
            Err(format!("{runs:#?}"))
        }
    })
    .await;
    assert_eq!(catch_up.trigger, pb::RunTrigger::SystemRefresh as i32);
    let done = wait_for_end(&mut admin, &catch_up.name).await;
    assert_eq!(run_state(&done), pb::RunState::Succeeded, "{done:#?}");
    assert_eq!(list_runs(&mut admin, &export, "", "").await.len(), 2);
    t.stop().await;
}

#[tokio::test]
async fn a_failed_run_is_the_exports_last_run_with_its_error() {
    let t = setup(Options::default()).await;
    t.connections("acme", Role::Admin)
        .await
        .create_connection(connection(
            "acme",
            "hook",
            "Database",
            "postgres",
            &[],
            &[("url", "postgres://user:pw@127.0.0.1:9/db")],
            true,
        ))
        .await
        .unwrap();
    let mut admin = t.exports("acme", Role::Admin).await;
    create_export(&mut admin, data_out("acme", "hook", "Hook", "hook", &[CUSTOMERS])).await;
    let export = export_name("acme", "hook");
    let run = run_to_end(&mut admin, &export).await;
    // Nothing listens at the database's port.
    assert_eq!(run_state(&run), pb::RunState::Failed, "{run:#?}");
    assert!(run.error.is_some());
    let got = admin
        .get_export(pb::GetExportRequest { name: export.clone() })
        .await
        .unwrap()
        .into_inner();
    let failed = admin
        .list_exports(pb::ListExportsRequest {
            parent: ACME.into(),
            filter: "status = FAILED".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .exports;
    assert_eq!(
        failed.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(),
        [export.as_str()]
    );
    let last_run = got.last_run.expect("last_run");
    assert_eq!(last_run.name, run.name);
    assert_eq!(last_run.state, pb::RunState::Failed as i32);
    assert_eq!(last_run.end_time, run.end_time);
    // API.md: last_run carries at least name, state, end_time and error.
    assert_eq!(last_run.error, run.error, "the export's last_run says why it failed");
    t.stop().await;
}

#[tokio::test]
async fn a_deleted_exports_runs_do_not_block_a_new_export_with_its_id() {
    let t = setup(api_only()).await;
    let mut admin = t.exports("acme", Role::Admin).await;
    create_export(&mut admin, data_out("acme", "again", "Again", "files", &[CUSTOMERS])).await;
    let export = export_name("acme", "again");
    let old = run_export(&mut admin, &export).await;
    let deleted = admin
        .delete_export(pb::DeleteExportRequest {
            name: export.clone(),
            ..Default::default()
        })
        .await;
    match deleted {
        // Refusing to delete an export with an active run is fine too.
        Err(status) => assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}"),
        Ok(_) => {
            // A new export with the same id can run at once.
            create_export(&mut admin, data_out("acme", "again", "Again", "files", &[CUSTOMERS])).await;
            let new = admin
                .run_export(pb::RunExportRequest {
                    name: export.clone(),
                    request_id: String::new(),
                })
                .await
                .unwrap_or_else(|s| panic!("the new export runs: {s:?}"))
                .into_inner();
            assert_ne!(new.name, old.name);
            // The old run did not stay active for an export that was gone.
            if let Ok(old) = admin
                .get_export_run(pb::GetExportRunRequest { name: old.name.clone() })
                .await
            {
                assert!(is_terminal(old.get_ref()), "{:#?}", old.get_ref());
            }
        }
    }
    t.stop().await;
}

#[tokio::test]
async fn a_target_error_fails_the_run_saying_what_and_where() {
    let t = setup(Options::default()).await;
    // The connection's folder cannot be made: a file is in the way.
    let blocker = t.data_dir.path().join("blocker");
    std::fs::write(&blocker, b"not a folder").unwrap();
    let root = blocker.join("exports");
    t.connections("acme", Role::Admin)
        .await
        .create_connection(local_files_at("acme", "blocked", "Blocked", true, &root))
        .await
        .unwrap();
    let mut admin = t.exports("acme", Role::Admin).await;
    create_export(
        &mut admin,
        data_out("acme", "blocked", "Blocked", "blocked", &[CUSTOMERS]),
    )
    .await;
    let run = run_to_end(&mut admin, &export_name("acme", "blocked")).await;
    assert_eq!(run_state(&run), pb::RunState::Failed, "{run:#?}");
    let error = run.error.as_ref().expect("a failed run says why");
    assert_eq!(error.code, Code::FailedPrecondition as i32, "{error:#?}");
    assert_eq!(run_error_reason(error), "TARGET_ERROR");
    assert_eq!(
        error_info(error).metadata.get("task").map(String::as_str),
        Some("write")
    );
    assert_eq!(task_state(&run, "write"), pb::RunState::Failed);
    assert_eq!(task(&run, "write").message, error.message);
    assert!(run.end_time.is_some());
    assert_eq!(std::fs::read(&blocker).unwrap(), b"not a folder");
    // What failed, and where: the folder is named.
    assert!(error.message.contains(&root.display().to_string()), "{}", error.message);
    t.stop().await;
}

#[tokio::test]
async fn many_watchers_of_one_run_all_see_it_end() {
    let t = setup(api_only()).await;
    let mut admin = t.exports("acme", Role::Admin).await;
    create_export(&mut admin, data_out("acme", "out", "Out", "files", &[CUSTOMERS])).await;
    let run = run_export(&mut admin, &export_name("acme", "out")).await;
    let mut watchers = Vec::new();
    for _ in 0..50 {
        let mut client = t.exports("acme", Role::Viewer).await;
        let name = run.name.clone();
        watchers.push(tokio::spawn(async move { watch_to_end(&mut client, &name).await }));
    }
    // Every watcher has its first message (QUEUED) before the run is cancelled.
    wait_for_run(&mut admin, &run.name, |r| r.state == pb::RunState::Queued as i32).await;
    admin
        .cancel_export_run(pb::CancelExportRunRequest { name: run.name.clone() })
        .await
        .unwrap();
    for watcher in watchers {
        let messages = watcher.await.unwrap();
        assert_eq!(messages.last().unwrap().state, pb::RunState::Cancelled as i32);
    }
    t.stop().await;
}
