//! Recurrence anchors: an `interval` > 1 now counts from the time the recurrence was set (its
//! anchor), not from the Unix epoch. Recurrences stored before carry no anchor; each gets the
//! one that keeps it working as it did: just before its stored next run, so that run stays
//! the next one and the interval counts on from it. A recurrence without a next run (off, or
//! its export detached) is anchored at its last update.
//!
//! Written against the stored JSON, not the domain types, so that later changes to those
//! cannot change what this migration does.

use chrono::{DateTime, SecondsFormat};
use sea_orm::{ConnectionTrait, FromQueryResult};
use sea_orm_migration::prelude::*;
use serde_json::Value;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// One stored schedule: where it lives and what anchors it.
#[derive(Debug, FromQueryResult)]
struct StoredSchedule {
    /// The environment (and, for exports, the export id in `id`).
    env: String,
    id: String,
    schedule: Option<String>,
    next_run: Option<i64>,
    update_time: i64,
}

/// Which table, and its columns.
struct Place {
    table: &'static str,
    /// The primary key columns, read as `env` and `id`: an environment's key is one column,
    /// named twice.
    keys: [&'static str; 2],
    schedule: &'static str,
    next_run: &'static str,
}

const EXPORTS: Place = Place {
    table: "exports",
    keys: ["env", "id"],
    schedule: "schedule",
    next_run: "next_run_at",
};

const ENVIRONMENTS: Place = Place {
    table: "environments",
    keys: ["id", "id"],
    schedule: "system_refresh_schedule",
    next_run: "next_system_refresh_at",
};

/// The schedule JSON with an anchor, or None when it needs none (not a recurrence, or
/// anchored already).
fn with_anchor(schedule: &str, next_run: Option<i64>, update_time: i64) -> Option<String> {
    let mut value: Value = serde_json::from_str(schedule).ok()?;
    let trigger = value.get_mut("trigger")?.as_object_mut()?;
    if trigger.get("type")?.as_str()? != "recurrence" || trigger.contains_key("anchor") {
        return None;
    }
    let micros = next_run.map_or(update_time, |next| next - 1);
    let anchor = DateTime::from_timestamp_micros(micros)?.to_rfc3339_opts(SecondsFormat::AutoSi, true);
    trigger.insert("anchor".into(), Value::String(anchor));
    serde_json::to_string(&value).ok()
}

async fn anchor_all(manager: &SchemaManager<'_>, place: &Place) -> Result<(), DbErr> {
    let db = manager.get_connection();
    let select = Query::select()
        .expr_as(Expr::col(Alias::new(place.keys[0])), Alias::new("env"))
        .expr_as(Expr::col(Alias::new(place.keys[1])), Alias::new("id"))
        .expr_as(Expr::col(Alias::new(place.schedule)), Alias::new("schedule"))
        .expr_as(Expr::col(Alias::new(place.next_run)), Alias::new("next_run"))
        .column(Alias::new("update_time"))
        .from(Alias::new(place.table))
        .to_owned();
    let rows = db.query_all(&select).await?;
    for row in rows {
        let stored = StoredSchedule::from_query_result(&row, "")?;
        let Some(schedule) = stored
            .schedule
            .as_deref()
            .and_then(|s| with_anchor(s, stored.next_run, stored.update_time))
        else {
            continue;
        };
        let mut update = Query::update();
        update
            .table(Alias::new(place.table))
            .value(Alias::new(place.schedule), schedule)
            .and_where(Expr::col(Alias::new(place.keys[0])).eq(stored.env.clone()));
        if place.keys[1] != place.keys[0] {
            update.and_where(Expr::col(Alias::new(place.keys[1])).eq(stored.id.clone()));
        }
        db.execute(&update).await?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        anchor_all(manager, &EXPORTS).await?;
        anchor_all(manager, &ENVIRONMENTS).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recurrences_are_anchored_just_before_their_next_run_or_at_their_last_update() {
        let weekly = r#"{"enabled":true,"trigger":{"type":"recurrence","frequency":"weekly","interval":2,"days_of_week":["Mon"]}}"#;
        let anchored: Value =
            serde_json::from_str(&with_anchor(weekly, Some(1_768_212_000_000_000), 5).unwrap()).unwrap();
        assert_eq!(anchored["trigger"]["anchor"], "2026-01-12T09:59:59.999999Z");
        assert_eq!(anchored["trigger"]["interval"], 2);
        let off: Value = serde_json::from_str(&with_anchor(weekly, None, 1_768_212_000_000_000).unwrap()).unwrap();
        assert_eq!(off["trigger"]["anchor"], "2026-01-12T10:00:00Z");
        // Nothing to do for other triggers, for anchored recurrences and for bad documents.
        let cron = r#"{"enabled":true,"trigger":{"type":"cron","expression":"0 6 * * *"}}"#;
        assert_eq!(with_anchor(cron, Some(1), 1), None);
        assert_eq!(with_anchor(&anchored.to_string(), Some(1), 1), None);
        assert_eq!(with_anchor("not json", Some(1), 1), None);
    }
}
