//! Alerts (PRODUCT.md §14) through AlertService: policies, events that fire once per entry into
//! a condition and resolve once on recovery, delivered as signed POSTs to a webhook receiver on
//! loopback — later when it is down, once per event id, also across a restart — and bad input.

use std::time::Duration;

use exportd::auth::Role;
use exportd::pb;
use tonic::Code;

use crate::common::webhook_receiver::{Cue, WebhookReceiver};
use crate::common::*;

const SIGNING_SECRET: &str = "whsec-alerts-signing-secret";
const EXPORT: &str = "environments/acme/exports/nightly";
const POLICY: &str = "environments/acme/alertPolicies/failures";

/// acme (ten customers), the webhook connection `hook` to `receiver`, a `postgres` connection
/// `pg` (its runs fail: the connector is not built) and the export `nightly` on it.
async fn server_with_failing_export(receiver: &WebhookReceiver) -> TestServer {
    let t = setup(Options::default()).await;
    let mut connections = t.connections("acme", Role::Admin).await;
    connections
        .create_connection(connection(
            "acme",
            "hook",
            "Alerts",
            "webhook",
            &[("url", &receiver.url)],
            &[("signing_secret", SIGNING_SECRET)],
            true,
        ))
        .await
        .unwrap();
    connections
        .create_connection(connection(
            "acme",
            "pg",
            "Warehouse",
            "postgres",
            &[],
            &[("url", "postgres://user:pw@127.0.0.1:9/db")],
            true,
        ))
        .await
        .unwrap();
    t.exports("acme", Role::Admin)
        .await
        .create_export(data_out("acme", "nightly", "Nightly", "pg", &[CUSTOMERS]))
        .await
        .unwrap();
    t
}

fn failures_policy(conditions: &[pb::AlertCondition]) -> pb::AlertPolicy {
    pb::AlertPolicy {
        display_name: "Failures".into(),
        connection: conn_name("acme", "hook"),
        conditions: conditions.iter().map(|c| *c as i32).collect(),
        exports: vec![EXPORT.into()],
        notify_recovery: true,
        enabled: true,
        ..Default::default()
    }
}

async fn create_policy(t: &TestServer, policy: pb::AlertPolicy) -> Result<pb::AlertPolicy, tonic::Status> {
    t.alerts("acme", Role::Admin)
        .await
        .create_alert_policy(pb::CreateAlertPolicyRequest {
            parent: ACME.into(),
            alert_policy_id: "failures".into(),
            alert_policy: Some(policy),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

async fn events(t: &TestServer, filter: &str) -> Vec<pb::AlertEvent> {
    t.alerts("acme", Role::Viewer)
        .await
        .list_alert_events(pb::ListAlertEventsRequest {
            parent: "environments/acme/alertPolicies/-".into(),
            filter: filter.into(),
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .alert_events
}

async fn run_to_end(t: &TestServer) -> pb::ExportRun {
    let mut exports = t.exports("acme", Role::Admin).await;
    let run = run_export(&mut exports, EXPORT).await;
    wait_for_end(&mut exports, &run.name).await
}

/// Waits until the receiver got `n` POSTs (bounded), and returns them.
async fn posts(receiver: &WebhookReceiver, n: usize) -> Vec<crate::common::webhook_receiver::Received> {
    eventually(Duration::from_secs(60), format!("{n} POSTs"), async || {
        let posts = receiver.posts();
        let got = posts.len();
        (got >= n).then_some(posts).ok_or(format!("{got} POSTs"))
    })
    .await
}

fn event_id(event: &pb::AlertEvent) -> &str {
    event.name.rsplit('/').next().unwrap()
}

#[tokio::test]
async fn a_failing_export_fires_once_and_its_recovery_resolves_once() {
    let receiver = WebhookReceiver::start(Some(SIGNING_SECRET)).await;
    let t = server_with_failing_export(&receiver).await;
    create_policy(&t, failures_policy(&[pb::AlertCondition::RunFailed]))
        .await
        .unwrap();

    let first = run_to_end(&t).await;
    assert_eq!(run_state(&first), pb::RunState::Failed);
    let second = run_to_end(&t).await;
    assert_eq!(run_state(&second), pb::RunState::Failed);
    let firing = events(&t, "").await;
    assert_eq!(firing.len(), 1, "two failing runs in a row fire once: {firing:#?}");
    let event = &firing[0];
    assert_eq!(event.state, pb::AlertEventState::Firing as i32);
    assert_eq!(event.condition, pb::AlertCondition::RunFailed as i32);
    assert_eq!(event.export, EXPORT);
    assert_eq!(event.run, first.name);
    assert_eq!(event.policy, POLICY);

    let post = &posts(&receiver, 1).await[0];
    assert!(post.signature_ok, "signed with the connection's signing secret");
    assert_eq!(post.header("idempotency-key"), event_id(event));
    assert_eq!(post.body["event"]["name"], event.name.as_str());
    assert_eq!(post.body["event"]["condition"], "ALERT_CONDITION_RUN_FAILED");
    assert_eq!(post.body["event"]["state"], "ALERT_EVENT_STATE_FIRING");
    let text = post.body["text"].as_str().unwrap();
    assert!(
        text.contains("RUN_FAILED") && text.contains(EXPORT) && !text.contains('\n'),
        "{text}"
    );
    let delivered = eventually(Duration::from_secs(30), "the event is DELIVERED", async || {
        let listed = events(&t, "").await;
        let shown = format!("{listed:?}");
        (listed[0].delivery_state == pb::AlertDeliveryState::Delivered as i32)
            .then_some(listed)
            .ok_or(shown)
    })
    .await;
    assert_eq!(delivered[0].delivery_attempts, 1);

    // Recovery: the export moves to a target that works; its next run resolves the alert, once.
    t.exports("acme", Role::Admin)
        .await
        .update_export(pb::UpdateExportRequest {
            export: Some(pb::Export {
                name: EXPORT.into(),
                connection: conn_name("acme", "files"),
                ..Default::default()
            }),
            update_mask: mask(&["connection"]),
            ..Default::default()
        })
        .await
        .unwrap();
    for _ in 0..2 {
        assert_eq!(run_state(&run_to_end(&t).await), pb::RunState::Succeeded);
    }
    let resolved = events(&t, "state = RESOLVED").await;
    assert_eq!(resolved.len(), 1, "{resolved:#?}");
    assert_eq!(events(&t, "").await.len(), 2);
    assert_eq!(
        events(
            &t,
            &format!(r#"export = "{EXPORT}" AND condition = RUN_FAILED AND state = FIRING"#)
        )
        .await
        .len(),
        1
    );
    let posts = posts(&receiver, 2).await;
    assert_eq!(posts[1].header("idempotency-key"), event_id(&resolved[0]));
    assert_eq!(posts[1].body["event"]["state"], "ALERT_EVENT_STATE_RESOLVED");
}

#[tokio::test]
async fn a_receiver_that_is_down_gets_each_event_later_once_also_across_a_restart() {
    let receiver = WebhookReceiver::start(Some(SIGNING_SECRET)).await;
    receiver.always(Cue::status(503, "down for maintenance"));
    let t = server_with_failing_export(&receiver).await;
    create_policy(&t, failures_policy(&[pb::AlertCondition::RunFailed]))
        .await
        .unwrap();
    run_to_end(&t).await;
    // Refused a few times: still pending, attempts counted, the error kept.
    let pending = eventually(Duration::from_secs(60), "a refused delivery attempt", async || {
        let listed = events(&t, "").await;
        let shown = format!("{listed:?}");
        (listed.len() == 1 && listed[0].delivery_attempts >= 1)
            .then_some(listed)
            .ok_or(shown)
    })
    .await;
    assert_eq!(pending[0].delivery_state, pb::AlertDeliveryState::Pending as i32);
    assert!(pending[0].last_delivery_error.contains("503"), "{:?}", pending[0]);

    // exportd restarts while the receiver is still down; then the receiver comes back.
    let t = t.restart(Options::default()).await;
    receiver.accept_all();
    receiver.clear();
    let delivered = eventually(Duration::from_secs(60), "the event is DELIVERED", async || {
        let listed = events(&t, "").await;
        let shown = format!("{listed:?}");
        (listed[0].delivery_state == pb::AlertDeliveryState::Delivered as i32)
            .then_some(listed)
            .ok_or(shown)
    })
    .await;
    let id = event_id(&delivered[0]).to_string();
    let accepted: Vec<_> = receiver
        .posts()
        .into_iter()
        .filter(|p| p.header("idempotency-key") == id)
        .collect();
    assert_eq!(accepted.len(), 1, "delivered once after the receiver came back");
    assert!(accepted[0].signature_ok);
}

#[tokio::test]
async fn bad_policies_are_refused_naming_the_field_and_nothing_is_stored() {
    let receiver = WebhookReceiver::start(None).await;
    let t = server_with_failing_export(&receiver).await;
    let cases: Vec<(&str, pb::AlertPolicy)> = vec![
        (
            "alert_policy.connection",
            pb::AlertPolicy {
                connection: conn_name("acme", "files"),
                ..failures_policy(&[pb::AlertCondition::RunFailed])
            },
        ),
        ("alert_policy.conditions", failures_policy(&[])),
        (
            "alert_policy.rejected_percent_threshold",
            pb::AlertPolicy {
                rejected_percent_threshold: 100.5,
                ..failures_policy(&[pb::AlertCondition::RecordsRejected])
            },
        ),
        (
            "alert_policy.rejected_percent_threshold",
            pb::AlertPolicy {
                rejected_percent_threshold: -1.0,
                ..failures_policy(&[pb::AlertCondition::RecordsRejected])
            },
        ),
        (
            "alert_policy.exports[1]",
            pb::AlertPolicy {
                exports: vec![EXPORT.into(), export_name("acme", "nope")],
                ..failures_policy(&[pb::AlertCondition::RunFailed])
            },
        ),
    ];
    for (field, policy) in cases {
        let status = expect_code(
            t.alerts("acme", Role::Admin)
                .await
                .create_alert_policy(pb::CreateAlertPolicyRequest {
                    parent: ACME.into(),
                    alert_policy_id: "failures".into(),
                    alert_policy: Some(policy),
                    ..Default::default()
                })
                .await,
            Code::InvalidArgument,
        );
        assert_eq!(bad_fields(&status), vec![field], "{status:?}");
    }
    let listed = t
        .alerts("acme", Role::Admin)
        .await
        .list_alert_policies(pb::ListAlertPoliciesRequest {
            parent: ACME.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(listed.alert_policies.is_empty());
    // Viewers read policies but do not write them.
    create_policy(&t, failures_policy(&[pb::AlertCondition::RunFailed]))
        .await
        .unwrap();
    let mut viewer = t.alerts("acme", Role::Viewer).await;
    let got = viewer
        .get_alert_policy(pb::GetAlertPolicyRequest { name: POLICY.into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.connection, conn_name("acme", "hook"));
    expect_code(
        viewer
            .delete_alert_policy(pb::DeleteAlertPolicyRequest {
                name: POLICY.into(),
                etag: got.etag.clone(),
            })
            .await,
        Code::PermissionDenied,
    );
    // A stale etag is refused; the current one deletes.
    let mut admin = t.alerts("acme", Role::Admin).await;
    admin
        .update_alert_policy(pb::UpdateAlertPolicyRequest {
            alert_policy: Some(pb::AlertPolicy {
                name: POLICY.into(),
                notify_recovery: false,
                ..Default::default()
            }),
            update_mask: mask(&["notify_recovery"]),
        })
        .await
        .unwrap();
    expect_code(
        admin
            .delete_alert_policy(pb::DeleteAlertPolicyRequest {
                name: POLICY.into(),
                etag: got.etag,
            })
            .await,
        Code::Aborted,
    );
}

/// Puts `nightly` on a target that works (`files`) with a schedule every minute, and a
/// SCHEDULE_MISSED policy with a 1 s threshold; returns the next due time.
async fn schedule_every_minute_with_missed_policy(t: &TestServer) -> prost_types::Timestamp {
    let every_minute = pb::Schedule {
        enabled: true,
        trigger: Some(pb::schedule::Trigger::Cron(pb::CronSchedule {
            expression: "* * * * *".into(),
            time_zone: String::new(),
        })),
        next_run_time: None,
    };
    let export = t
        .exports("acme", Role::Admin)
        .await
        .update_export(pb::UpdateExportRequest {
            export: Some(pb::Export {
                name: EXPORT.into(),
                connection: conn_name("acme", "files"),
                schedule: Some(every_minute),
                ..Default::default()
            }),
            update_mask: mask(&["connection", "schedule"]),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    create_policy(
        t,
        pb::AlertPolicy {
            schedule_missed_after_seconds: 1,
            ..failures_policy(&[pb::AlertCondition::ScheduleMissed])
        },
    )
    .await
    .unwrap();
    export.schedule.unwrap().next_run_time.expect("a next run time")
}

#[tokio::test]
async fn a_schedule_missed_while_the_server_was_stopped_fires_at_restart() {
    let receiver = WebhookReceiver::start(Some(SIGNING_SECRET)).await;
    let mut t = server_with_failing_export(&receiver).await;
    let due = schedule_every_minute_with_missed_policy(&t).await;
    // The server is down across the due time and the threshold after it.
    t.server.take().unwrap().shutdown().await.unwrap();
    let due = chrono::DateTime::from_timestamp(due.seconds, due.nanos as u32).unwrap();
    let wait = (due - chrono::Utc::now()).to_std().unwrap_or_default() + Duration::from_secs(3);
    tokio::time::sleep(wait).await;
    let t = t.restart(Options::default()).await;

    let missed = eventually(Duration::from_secs(30), "a SCHEDULE_MISSED event", async || {
        let listed = events(&t, "condition = SCHEDULE_MISSED AND state = FIRING").await;
        let shown = format!("{listed:?}");
        (listed.len() == 1).then_some(listed).ok_or(shown)
    })
    .await;
    assert_eq!(missed[0].export, EXPORT);
    assert!(missed[0].run.starts_with(&format!("{EXPORT}/runs/")), "{:?}", missed[0]);
    let post = posts(&receiver, 1).await;
    assert_eq!(post[0].body["event"]["condition"], "ALERT_CONDITION_SCHEDULE_MISSED");
    assert_eq!(post[0].header("idempotency-key"), event_id(&missed[0]));
}

#[tokio::test]
async fn a_scheduled_run_still_waiting_past_the_threshold_fires_schedule_missed_once() {
    let receiver = WebhookReceiver::start(Some(SIGNING_SECRET)).await;
    let t = server_with_failing_export(&receiver).await;
    // While customers refresh, the run the schedule fires on time waits for the refresh.
    start_refresh(&mut t.catalog("acme", Role::Admin).await, CUSTOMERS).await;
    schedule_every_minute_with_missed_policy(&t).await;
    let mut exports = t.exports("acme", Role::Admin).await;
    let waiting = eventually(Duration::from_secs(90), "the scheduled run", async || {
        let runs = list_runs(&mut exports, EXPORT, "", "").await;
        let shown = format!("{runs:?}");
        runs.into_iter().next().ok_or(shown)
    })
    .await;
    assert_eq!(waiting.trigger, pb::RunTrigger::Schedule as i32, "{waiting:?}");
    assert_eq!(
        waiting.state,
        pb::RunState::WaitingForDependencies as i32,
        "{waiting:?}"
    );

    let missed = eventually(Duration::from_secs(30), "a SCHEDULE_MISSED event", async || {
        let listed = events(&t, "condition = SCHEDULE_MISSED AND state = FIRING").await;
        let shown = format!("{listed:?}");
        (!listed.is_empty()).then_some(listed).ok_or(shown)
    })
    .await;
    assert_eq!(missed.len(), 1, "{missed:?}");
    assert_eq!(missed[0].run, waiting.name);
    assert!(missed[0].message.contains("still not running"), "{:?}", missed[0]);
    let post = posts(&receiver, 1).await;
    assert_eq!(post[0].body["event"]["condition"], "ALERT_CONDITION_SCHEDULE_MISSED");
    assert_eq!(post[0].header("idempotency-key"), event_id(&missed[0]));

    // The run stays waiting over several scheduler passes: still one event. Then the refresh
    // ends, the run succeeds, and the policy resolves once.
    let still = exports
        .get_export_run(pb::GetExportRunRequest {
            name: waiting.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(still.state, pb::RunState::WaitingForDependencies as i32);
    complete_refresh(&mut t.catalog("acme", Role::Admin).await, CUSTOMERS).await;
    let done = wait_for_end(&mut exports, &waiting.name).await;
    assert_eq!(done.state, pb::RunState::Succeeded as i32, "{done:?}");
    let resolved = eventually(Duration::from_secs(30), "a RESOLVED event", async || {
        let listed = events(&t, "condition = SCHEDULE_MISSED AND state = RESOLVED").await;
        let shown = format!("{listed:?}");
        (!listed.is_empty()).then_some(listed).ok_or(shown)
    })
    .await;
    assert_eq!(resolved.len(), 1, "{resolved:?}");
    assert_eq!(
        events(&t, "condition = SCHEDULE_MISSED AND state = FIRING").await.len(),
        1
    );
}
