//! The scheduler: fires recurrence and cron schedules at their next run time and the
//! environments' system refreshes. One instance is active among replicas (a lease row); it
//! sleeps until the earliest due time (waking early when a schedule changes), never polls busily.
//! A due export that has a run active gets one pending catch-up instead of a second run; after
//! downtime every missed occurrence of an export collapses into one run.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::Engine;
use super::dependencies::Refreshing;
use crate::domain::run::RunTrigger;
use crate::domain::time::{Micros, now_micros};
use crate::error::Result;
use crate::store::alerts::Lateness;

const LEASE_NAME: &str = "scheduler";
/// The scheduler lease; the holder renews it at a third of this.
const LEASE: Duration = Duration::from_secs(15);
/// Due exports handled per pass.
const PASS: u64 = 500;

impl Engine {
    pub(crate) async fn scheduler_loop(self: Arc<Self>) {
        let owner = format!("{}-scheduler", self.instance);
        let mut held = false;
        while !self.is_stopping() {
            let changed = self.schedules_changed.notified();
            let sleep = match self.scheduler_pass(&owner, &mut held).await {
                Ok(sleep) => sleep,
                Err(e) => {
                    tracing::warn!(error = %e.message, "scheduler pass failed");
                    Duration::from_secs(1)
                }
            };
            tokio::select! {
                _ = changed => {}
                _ = tokio::time::sleep(sleep) => {}
                _ = self.stopping() => {}
            }
        }
    }

    /// Fires what is due if this process holds the scheduler lease; returns how long to sleep.
    /// `held` is whether it held the lease at the last pass: operators see in the logs which
    /// process schedules, and when that moves.
    async fn scheduler_pass(self: &Arc<Self>, owner: &str, held: &mut bool) -> Result<Duration> {
        let holds = self.store.acquire_lease(LEASE_NAME, owner, LEASE).await?;
        if holds != *held {
            *held = holds;
            match holds {
                true => tracing::info!(instance = %self.instance, "this process now runs the scheduler"),
                false => tracing::info!(instance = %self.instance, "another process runs the scheduler now"),
            }
        }
        if !holds {
            return Ok(LEASE / 3);
        }
        let now = now_micros();
        loop {
            let due = self.store.due_exports(now, PASS).await?;
            let count = due.len();
            // What is refreshing, read once per environment for a batch of due exports; an
            // export is read only when something in its environment is refreshing (rarely).
            let mut refreshing: HashMap<String, Refreshing> = HashMap::new();
            for export in due {
                // Whoever advances the stored next time owns this occurrence.
                if !self.store.advance_export_schedule(&export, now).await? {
                    continue;
                }
                crate::metrics::scheduler_lag(lag(export.due_at));
                let env = &export.name.env;
                if !refreshing.contains_key(env) {
                    refreshing.insert(env.clone(), self.refreshing_in(env).await?);
                }
                let waiting = if refreshing[env].is_empty() {
                    Vec::new()
                } else {
                    let Some(stored) = self.store.get_export(&export.name).await? else {
                        continue;
                    };
                    self.dependencies_among(&refreshing[env], &stored.export).await?
                };
                let run = self
                    .store
                    .create_or_catch_up(&export.name, RunTrigger::Schedule, &waiting)
                    .await?;
                match &run {
                    Some(run) => tracing::info!(run = %run.name, "schedule fired"),
                    None => {
                        tracing::info!(export = %export.name, "schedule fired during an active run: one catch-up run pending")
                    }
                }
                // Fired this late (the service was down, or the scheduler behind), the run cannot
                // have been RUNNING within a policy's SCHEDULE_MISSED threshold of its due time.
                let run_name = run.as_ref().map(|r| r.name.to_string());
                self.store
                    .schedule_missed(
                        &export.name,
                        now - export.due_at,
                        run_name.as_deref(),
                        Lateness::FiredLate,
                    )
                    .await?;
            }
            if count > 0 {
                self.wake_workers();
            }
            if (count as u64) < PASS {
                break;
            }
        }
        self.detect_unstarted_scheduled_runs(now).await?;
        for env in self.store.due_environments(now).await? {
            if !self.store.advance_environment_schedule(&env, now).await? {
                continue;
            }
            crate::metrics::scheduler_lag(lag(env.due_at));
            match self
                .run_system_refresh(&crate::domain::names::EnvironmentName::new(&env.id))
                .await
            {
                Ok(refresh) => tracing::info!(refresh = %refresh.name, "scheduled system refresh started"),
                Err(e) => {
                    tracing::info!(env = %env.id, reason = e.reason, "scheduled system refresh not started: {}", e.message)
                }
            }
        }
        let until_next = match self.store.next_due_time().await? {
            Some(next) => Duration::from_micros((next - now_micros()).max(0) as u64),
            None => LEASE / 3,
        };
        // Wake at least often enough to keep the lease.
        Ok(until_next.min(LEASE / 3))
    }
}

impl Engine {
    /// SCHEDULE_MISSED for occurrences that fired on time but whose run is still not RUNNING
    /// (queued behind busy workers, or waiting for dependencies) past a policy's threshold.
    /// Checked on every pass — at most `LEASE / 3` apart — so a run is caught within seconds
    /// of crossing it; a policy already firing for the export makes the check a no-op.
    async fn detect_unstarted_scheduled_runs(&self, now: Micros) -> Result<()> {
        let Some(threshold) = self.store.shortest_schedule_missed_threshold().await? else {
            return Ok(());
        };
        for unstarted in self.store.scheduled_runs_not_started(now - threshold, PASS).await? {
            self.store
                .schedule_missed(
                    &unstarted.export,
                    now - unstarted.due_at,
                    Some(&unstarted.run),
                    Lateness::NotStarted,
                )
                .await?;
        }
        Ok(())
    }
}

/// How late an occurrence due at `due_at` fires now.
fn lag(due_at: crate::domain::time::Micros) -> Duration {
    Duration::from_micros(u64::try_from(now_micros() - due_at).unwrap_or(0))
}
