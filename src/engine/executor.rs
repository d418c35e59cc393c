//! The executor pool: workers claim runs from the durable queue with a lease, renew it while
//! the pipeline works, and record the outcome. A worker that dies stops renewing; once its
//! lease expires another worker (in this process or another) takes the same run over as its
//! next attempt.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::Instrument;

use super::Engine;
use super::pipeline::{Control, Outcome};
use crate::domain::run::Run;
use crate::store::runs::LeaseStatus;

/// How often idle workers look for runs that other processes queued or whose leases expired.
const IDLE_POLL: Duration = Duration::from_millis(1000);

impl Engine {
    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.settings.run_lease_seconds)
    }

    pub(crate) async fn worker_loop(self: Arc<Self>, number: usize) {
        let owner = format!("{}-w{number}", self.instance);
        while !self.is_stopping() {
            // Register interest before looking, so that a run queued meanwhile wakes us.
            let notified = self.work.notified();
            match self.store.claim_run(&owner, self.lease()).await {
                Ok(Some(claimed)) => {
                    if claimed.takeover {
                        crate::metrics::lease_takeover();
                    }
                    self.run_changed(&claimed.run.name.to_string());
                    // A trace of its own per attempt: every log line of the run names it.
                    let span = tracing::info_span!(
                        "run",
                        run = %claimed.run.name,
                        attempt = claimed.run.attempt,
                        trace_id = tracing::field::Empty
                    );
                    crate::telemetry::link(&span, &http::HeaderMap::new());
                    self.execute(&owner, claimed.run).instrument(span).await;
                    continue;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e.message, "cannot claim a run"),
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(IDLE_POLL) => {}
                _ = self.stopping() => {}
            }
        }
    }

    /// Executes one claimed run: a heartbeat keeps the lease (and notices cancellation and
    /// takeover) while the pipeline works; then the outcome is recorded.
    async fn execute(self: &Arc<Self>, owner: &str, run: Run) {
        let key = run.name.to_string();
        let (cancel_tx, cancel_rx) = watch::channel(false);
        let (lost_tx, lost_rx) = watch::channel(false);
        self.running
            .lock()
            .expect("running table")
            .insert(key.clone(), cancel_tx.clone());
        if run.cancel_requested {
            let _ = cancel_tx.send(true);
        }

        let heartbeat = {
            let engine = self.clone();
            let name = run.name.clone();
            let owner = owner.to_string();
            let interval = (self.lease() / 3).max(Duration::from_millis(500));
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(interval).await;
                    match engine.store.renew_lease(&name, &owner, engine.lease()).await {
                        Ok(LeaseStatus::Held { cancel_requested }) => {
                            if cancel_requested {
                                let _ = cancel_tx.send(true);
                            }
                        }
                        Ok(LeaseStatus::Lost) => {
                            tracing::warn!(run = %name, "lost the run's lease; stopping");
                            let _ = lost_tx.send(true);
                            return;
                        }
                        Err(e) => tracing::warn!(run = %name, error = %e.message, "cannot renew the run's lease"),
                    }
                }
            })
        };

        let control = Control {
            owner: owner.to_string(),
            cancel: cancel_rx,
            lost: lost_rx,
        };
        let outcome = self.run_pipeline(&run, &control).await;
        heartbeat.abort();
        self.running.lock().expect("running table").remove(&key);

        match outcome {
            Outcome::Finished(finish) => {
                let state = finish.state;
                let counts = finish.counts;
                match self.store.finish_run(&run.name, owner, *finish).await {
                    Ok(finished) if !finished.recorded => {
                        tracing::info!(run = %run.name, "the run was taken over before its end was recorded");
                    }
                    Ok(finished) => {
                        tracing::info!(run = %run.name, state = state.as_str(), attempt = run.attempt, "run ended");
                        self.count_run_end(&run, state, counts).await;
                        if let Some(catch_up) = finished.catch_up {
                            tracing::info!(run = %catch_up.name, "started the pending catch-up run");
                            self.wake_workers();
                        }
                    }
                    Err(e) => tracing::error!(run = %run.name, error = %e.message, "cannot record the end of a run"),
                }
            }
            Outcome::Requeued => {}
            Outcome::Abandoned => {
                tracing::info!(run = %run.name, "left the run for another worker");
            }
        }
        self.run_changed(&key);
    }
}
