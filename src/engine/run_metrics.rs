//! The run series of the metrics (`exportd_runs_total`, records and bytes by connection
//! type), counted by the process that records a run's end: a worker that finished it, or the
//! cancellation of a run that no worker held.

use super::Engine;
use crate::domain::run::{Counts, Run, RunState};
use crate::error::Result;
use crate::metrics::{RunEnded, run_ended};

impl Engine {
    /// Counts a run that just ended with `state` and `counts`.
    pub(crate) async fn count_run_end(&self, run: &Run, state: RunState, counts: Counts) {
        // The export's connection, read now: runs do not store it. A detached or deleted
        // export has none.
        let connection_type = match self.store.get_export(&run.name.export_name()).await {
            Ok(Some(stored)) => stored.connection.map(|c| c.type_id).unwrap_or_default(),
            Ok(None) => String::new(),
            Err(e) => {
                tracing::warn!(run = %run.name, error = %e.message, "cannot read the run's connection type for the metrics");
                String::new()
            }
        };
        let non_negative = |n: i64| u64::try_from(n).unwrap_or(0);
        run_ended(&RunEnded {
            state: state.as_str(),
            trigger: run.trigger.as_str(),
            connection_type: &connection_type,
            records_exported: non_negative(counts.exported),
            records_rejected: non_negative(counts.rejected),
            bytes_written: non_negative(counts.bytes),
        });
    }

    /// Cancels a run (see `Store::cancel_run`) and tells its worker, if this process runs it.
    /// A queued or waiting run ends here, and is counted; a running one ends in its worker.
    pub async fn cancel_run(&self, name: &crate::domain::names::RunName) -> Result<Run> {
        let run = self.store.cancel_run(name).await?;
        self.signal_cancel(&name.to_string());
        self.run_changed(&name.to_string());
        if run.state == RunState::Cancelled {
            self.count_run_end(&run, run.state, run.counts).await;
        }
        Ok(run)
    }
}
