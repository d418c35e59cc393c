//! Shared run watches: however many clients watch a run, one task per run reads it (when this
//! process changes it, and every half second for changes made by other processes) and
//! publishes each new revision; watchers only subscribe.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::Engine;
use crate::domain::names::RunName;
use crate::domain::run::Run;
use crate::error::Result;

/// How often a watched run is re-read (it may be executed by another process).
const POLL: Duration = Duration::from_millis(500);

impl Engine {
    /// A subscription to a run's revisions: the current run first, then every change; the
    /// sender goes away after the terminal state.
    pub async fn watch_run(self: &Arc<Self>, name: &RunName) -> Result<watch::Receiver<Run>> {
        let key = name.to_string();
        if let Some(existing) = self.watches.lock().expect("watch table").get(&key)
            && existing.has_changed().is_ok()
        {
            return Ok(existing.clone());
        }
        let first = self.store.run_or_not_found(name).await?;
        let terminal = first.state.is_terminal();
        let (tx, rx) = watch::channel(first);
        if terminal {
            return Ok(rx);
        }
        {
            // Another watcher may have started the run's reader meanwhile: one reader per run
            // (a reader whose table entry was replaced would think nobody watches any more).
            let mut table = self.watches.lock().expect("watch table");
            if let Some(existing) = table.get(&key)
                && existing.has_changed().is_ok()
            {
                return Ok(existing.clone());
            }
            table.insert(key.clone(), rx.clone());
        }
        let engine = self.clone();
        let name = name.clone();
        tokio::spawn(async move {
            let mut changes = engine.subscribe_run_changes();
            let mut tick = tokio::time::interval(POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    changed = changes.recv() => match changed {
                        Ok(changed) if changed != key => continue,
                        // Ours, or lagged behind: read the run.
                        _ => {}
                    },
                    _ = tick.tick() => {}
                    _ = engine.stopping() => break,
                }
                // Only the table's own receiver is left: nobody watches any more. Checked again
                // under the table's lock, through which new watchers subscribe.
                if tx.receiver_count() <= 1 {
                    let mut table = engine.watches.lock().expect("watch table");
                    if tx.receiver_count() <= 1 {
                        table.remove(&key);
                        return;
                    }
                }
                let run = match engine.store.get_run(&name).await {
                    Ok(Some(run)) => run,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(run = %name, error = %e.message, "cannot read a watched run");
                        continue;
                    }
                };
                let terminal = run.state.is_terminal();
                if run.revision != tx.borrow().revision {
                    let _ = tx.send(run);
                }
                if terminal {
                    break;
                }
            }
            engine.watches.lock().expect("watch table").remove(&key);
        });
        Ok(rx)
    }
}
