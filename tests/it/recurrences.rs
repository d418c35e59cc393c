//! Recurrence intervals count from when the schedule was set (its anchor), through the API:
//! the first run of an "every N" recurrence is the first matching time after the anchor, an
//! unchanged recurrence keeps its anchor, a changed one is anchored anew, and recurrences
//! stored before anchors existed keep their next run.

use chrono::{DateTime, Datelike, Duration, TimeZone, Timelike, Utc};
use exportd::auth::Role;
use exportd::pb;
use pb::google::r#type::DayOfWeek;
use sea_orm::{ColumnTrait, ConnectionTrait, Database, EntityTrait, QueryFilter};

use crate::common::*;

fn time_of(timestamp: &Option<prost_types::Timestamp>) -> DateTime<Utc> {
    let t = timestamp.as_ref().expect("a timestamp");
    Utc.timestamp_opt(t.seconds, t.nanos as u32).unwrap()
}

fn recurrence_of(schedule: &Option<pb::Schedule>) -> &pb::Recurrence {
    match schedule.as_ref().and_then(|s| s.trigger.as_ref()) {
        Some(pb::schedule::Trigger::Recurrence(r)) => r,
        other => panic!("not a recurrence: {other:?}"),
    }
}

fn recurring(recurrence: pb::Recurrence) -> pb::Schedule {
    pb::Schedule {
        enabled: true,
        trigger: Some(pb::schedule::Trigger::Recurrence(recurrence)),
        next_run_time: None,
    }
}

/// The first UTC time after `anchor` at `hour:minute` whose date `fits`, searched day by day.
fn first_after(anchor: DateTime<Utc>, hour: u32, minute: u32, fits: impl Fn(DateTime<Utc>) -> bool) -> DateTime<Utc> {
    (0..40)
        .map(|days| {
            let day = anchor.date_naive() + Duration::days(days);
            day.and_hms_opt(hour, minute, 0).unwrap().and_utc()
        })
        .find(|t| *t > anchor && fits(*t))
        .expect("a matching day within 40 days")
}

fn day_of_week(weekday: chrono::Weekday) -> DayOfWeek {
    match weekday {
        chrono::Weekday::Mon => DayOfWeek::Monday,
        chrono::Weekday::Tue => DayOfWeek::Tuesday,
        chrono::Weekday::Wed => DayOfWeek::Wednesday,
        chrono::Weekday::Thu => DayOfWeek::Thursday,
        chrono::Weekday::Fri => DayOfWeek::Friday,
        chrono::Weekday::Sat => DayOfWeek::Saturday,
        chrono::Weekday::Sun => DayOfWeek::Sunday,
    }
}

/// An "every N" recurrence runs first at the first matching time after it was set, whatever
/// N is: counted from 1970, most of these would skip to a later week, day, hour or month.
#[tokio::test]
async fn an_interval_counts_from_when_the_recurrence_was_set() {
    let t = setup(api_only()).await;
    let mut admin = t.exports("acme", Role::Admin).await;
    let tomorrow = (Utc::now() + Duration::days(1)).weekday();
    let cases: Vec<(&str, pb::Recurrence)> = vec![
        (
            "weekly",
            pb::Recurrence {
                frequency: pb::Frequency::Weekly as i32,
                interval: 2,
                days_of_week: vec![day_of_week(tomorrow) as i32],
                time_of_day: "12:00".into(),
                ..Default::default()
            },
        ),
        (
            "daily",
            pb::Recurrence {
                frequency: pb::Frequency::Daily as i32,
                interval: 7,
                time_of_day: "12:00".into(),
                ..Default::default()
            },
        ),
        (
            "monthly",
            pb::Recurrence {
                frequency: pb::Frequency::Monthly as i32,
                interval: 5,
                day_of_month: 28,
                time_of_day: "06:00".into(),
                ..Default::default()
            },
        ),
        (
            "hourly",
            pb::Recurrence {
                frequency: pb::Frequency::Hourly as i32,
                interval: 5,
                time_of_day: "00:15".into(),
                ..Default::default()
            },
        ),
    ];
    for (id, recurrence) in cases {
        let before = Utc::now();
        let created = create_export(
            &mut admin,
            with_schedule(data_out("acme", id, id, "files", &[CUSTOMERS]), recurring(recurrence)),
        )
        .await;
        let anchor = time_of(&recurrence_of(&created.schedule).anchor_time);
        assert!(
            before - Duration::seconds(1) <= anchor && anchor <= Utc::now(),
            "{id}: anchored when set: {anchor}"
        );
        let next = time_of(&created.schedule.as_ref().unwrap().next_run_time);
        let expected = match id {
            "weekly" => first_after(anchor, 12, 0, |t| t.weekday() == tomorrow),
            "daily" => first_after(anchor, 12, 0, |_| true),
            "monthly" => first_after(anchor, 6, 0, |t| t.day() == 28),
            _ => {
                let hour = anchor
                    .with_minute(15)
                    .unwrap()
                    .with_second(0)
                    .unwrap()
                    .with_nanosecond(0)
                    .unwrap();
                if hour > anchor { hour } else { hour + Duration::hours(1) }
            }
        };
        assert_eq!(next, expected, "{id}: the first matching time after {anchor}");
    }
    t.stop().await;
}

#[tokio::test]
async fn an_unchanged_recurrence_keeps_its_anchor_and_a_changed_one_is_set_anew() {
    let t = setup(api_only()).await;
    let mut admin = t.exports("acme", Role::Admin).await;
    let weekly = pb::Recurrence {
        frequency: pb::Frequency::Weekly as i32,
        interval: 3,
        days_of_week: vec![DayOfWeek::Monday as i32, DayOfWeek::Thursday as i32],
        time_of_day: "06:30".into(),
        time_zone: "Europe/Paris".into(),
        ..Default::default()
    };
    let created = create_export(
        &mut admin,
        with_schedule(
            data_out("acme", "weekly", "Weekly", "files", &[CUSTOMERS]),
            recurring(weekly.clone()),
        ),
    )
    .await;
    let name = export_name("acme", "weekly");
    let anchor = recurrence_of(&created.schedule).anchor_time;
    let next = created.schedule.as_ref().unwrap().next_run_time;
    let update = |schedule: pb::Schedule, paths: &[&str]| pb::UpdateExportRequest {
        export: Some(pb::Export {
            name: name.clone(),
            schedule: Some(schedule),
            ..Default::default()
        }),
        update_mask: mask(paths),
        validate_only: false,
    };

    // Saved again as read (anchor_time included, which is output only), or without it.
    for schedule in [created.schedule.clone().unwrap(), recurring(weekly.clone())] {
        let updated = admin
            .update_export(update(schedule, &["schedule"]))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(recurrence_of(&updated.schedule).anchor_time, anchor);
        assert_eq!(updated.schedule.unwrap().next_run_time, next);
    }
    // Off and on again, alone or in a batch: the same runs.
    let off = pb::Schedule {
        enabled: false,
        ..recurring(weekly.clone())
    };
    admin.update_export(update(off, &["schedule.enabled"])).await.unwrap();
    let batch = admin
        .update_export_schedules(pb::UpdateExportSchedulesRequest {
            parent: "environments/acme".into(),
            names: vec![name.clone()],
            mode: pb::ScheduleUpdateMode::KeepIndividualSchedules as i32,
            enabled: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(recurrence_of(&batch.exports[0].schedule).anchor_time, anchor);
    assert_eq!(batch.exports[0].schedule.as_ref().unwrap().next_run_time, next);
    let replaced = admin
        .update_export_schedules(pb::UpdateExportSchedulesRequest {
            parent: "environments/acme".into(),
            names: vec![name.clone()],
            mode: pb::ScheduleUpdateMode::ReplaceSchedules as i32,
            schedule: Some(recurring(weekly.clone())),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(recurrence_of(&replaced.exports[0].schedule).anchor_time, anchor);

    // A changed recurrence counts from its change.
    let before = Utc::now();
    let every_two = pb::Recurrence {
        interval: 2,
        ..weekly.clone()
    };
    let changed = admin
        .update_export(update(recurring(every_two), &["schedule"]))
        .await
        .unwrap()
        .into_inner();
    let new_anchor = time_of(&recurrence_of(&changed.schedule).anchor_time);
    assert!(
        new_anchor >= before - Duration::seconds(1),
        "{new_anchor} is the time of the change"
    );
    assert!(new_anchor > time_of(&anchor));

    // The environment's system refresh recurrence is anchored the same way.
    let mut catalog = t.catalog("acme", Role::Admin).await;
    let env = catalog
        .update_environment(pb::UpdateEnvironmentRequest {
            environment: Some(pb::Environment {
                name: "environments/acme".into(),
                system_refresh_schedule: Some(recurring(weekly)),
                ..Default::default()
            }),
            update_mask: mask(&["system_refresh_schedule"]),
        })
        .await
        .unwrap()
        .into_inner();
    let env_anchor = time_of(&recurrence_of(&env.system_refresh_schedule).anchor_time);
    assert!(env_anchor >= before - Duration::seconds(1), "{env_anchor}");
    t.stop().await;
}

/// A database from before anchors existed: its recurrences get the anchor that keeps their
/// next run where it was, and count on from there.
#[tokio::test]
async fn recurrences_stored_before_anchors_keep_their_next_run() {
    use exportd::store::models::{environment, export};

    let t = setup(api_only()).await;
    let mut admin = t.exports("acme", Role::Admin).await;
    let weekly = pb::Recurrence {
        frequency: pb::Frequency::Weekly as i32,
        interval: 2,
        days_of_week: vec![DayOfWeek::Monday as i32],
        time_of_day: "06:00".into(),
        ..Default::default()
    };
    create_export(
        &mut admin,
        with_schedule(
            data_out("acme", "old", "Old", "files", &[CUSTOMERS]),
            recurring(weekly.clone()),
        ),
    )
    .await;
    let mut catalog = t.catalog("acme", Role::Admin).await;
    catalog
        .update_environment(pb::UpdateEnvironmentRequest {
            environment: Some(pb::Environment {
                name: "environments/acme".into(),
                system_refresh_schedule: Some(recurring(weekly)),
                ..Default::default()
            }),
            update_mask: mask(&["system_refresh_schedule"]),
        })
        .await
        .unwrap();

    // Rewrite the rows as the previous version stored them: no anchor, and a next run that
    // version computed (a Monday 06:00, some weeks ahead).
    let legacy = r#"{"enabled":true,"trigger":{"type":"recurrence","frequency":"weekly","interval":2,"time_of_day":"06:00","days_of_week":["Mon"],"day_of_month":0,"time_zone":""}}"#;
    let monday = first_after(Utc::now() + Duration::days(21), 6, 0, |t| {
        t.weekday() == chrono::Weekday::Mon
    });
    let db = Database::connect(&t.database_url).await.unwrap();
    export::Entity::update_many()
        .col_expr(export::Column::Schedule, sea_orm::sea_query::Expr::val(legacy))
        .col_expr(
            export::Column::NextRunAt,
            sea_orm::sea_query::Expr::val(monday.timestamp_micros()),
        )
        .filter(export::Column::Id.eq("old"))
        .exec(&db)
        .await
        .unwrap();
    environment::Entity::update_many()
        .col_expr(
            environment::Column::SystemRefreshSchedule,
            sea_orm::sea_query::Expr::val(legacy),
        )
        .col_expr(
            environment::Column::NextSystemRefreshAt,
            sea_orm::sea_query::Expr::val(monday.timestamp_micros()),
        )
        .filter(environment::Column::Id.eq("acme"))
        .exec(&db)
        .await
        .unwrap();
    db.execute_unprepared("DELETE FROM seaql_migrations WHERE version = 'm0005_recurrence_anchors'")
        .await
        .unwrap();
    db.close().await.unwrap();

    let t = t.restart(Options::default()).await;
    let mut admin = t.exports("acme", Role::Admin).await;
    let export = admin
        .get_export(pb::GetExportRequest {
            name: export_name("acme", "old"),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(time_of(&export.schedule.as_ref().unwrap().next_run_time), monday);
    let anchor = time_of(&recurrence_of(&export.schedule).anchor_time);
    assert_eq!(anchor, monday - Duration::microseconds(1));
    let env = t
        .catalog("acme", Role::Admin)
        .await
        .get_environment(pb::GetEnvironmentRequest {
            name: "environments/acme".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        time_of(&env.system_refresh_schedule.as_ref().unwrap().next_run_time),
        monday
    );
    assert_eq!(
        time_of(&recurrence_of(&env.system_refresh_schedule).anchor_time),
        monday - Duration::microseconds(1)
    );
    t.stop().await;
}
