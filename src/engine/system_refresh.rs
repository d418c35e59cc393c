//! System refreshes: the environment's whole catalog, in dependency order (each entity, then
//! the segments built on it), then the exports that run "with system refresh".

use std::sync::Arc;

use super::Engine;
use crate::domain::names::{EnvironmentName, SystemRefreshName, generate_id};
use crate::domain::run::RunTrigger;
use crate::error::Result;
use crate::store::system_refreshes::{SystemRefresh, SystemRefreshState};

impl Engine {
    /// Records a RUNNING system refresh and carries it out in the background.
    pub async fn run_system_refresh(self: &Arc<Self>, env: &EnvironmentName) -> Result<SystemRefresh> {
        let name = SystemRefreshName::new(&env.env, generate_id("refresh"));
        let refresh = self.store.start_system_refresh(&name).await?;
        self.spawn_system_refresh(name);
        Ok(refresh)
    }

    pub(crate) fn spawn_system_refresh(self: &Arc<Self>, name: SystemRefreshName) {
        let engine = self.clone();
        tokio::spawn(async move {
            let outcome = engine.refresh_catalog(&name).await;
            if engine.is_stopping() {
                // Left RUNNING on purpose: the next start resumes it.
                return;
            }
            let (state, error, runs) = match outcome {
                // Only the completion of a system refresh starts the exports that follow it.
                Ok(()) => match engine.start_system_refresh_exports(&name.env).await {
                    Ok(runs) => (SystemRefreshState::Succeeded, None, runs),
                    Err(e) => (SystemRefreshState::Failed, Some(e.message), Vec::new()),
                },
                Err(e) => {
                    tracing::warn!(refresh = %name, error = %e.message, "system refresh failed");
                    (SystemRefreshState::Failed, Some(e.message), Vec::new())
                }
            };
            if let Err(e) = engine.store.finish_system_refresh(&name, state, error, &runs).await {
                tracing::error!(refresh = %name, error = %e.message, "cannot record the end of a system refresh");
            }
            if let Err(e) = engine.release_waiting_runs(&name.env).await {
                tracing::warn!(refresh = %name, error = %e.message, "cannot release waiting runs");
            }
        });
    }

    /// Runs every "with system refresh" export of the environment (or leaves one catch-up run
    /// where a run is active); returns the names of the runs started.
    async fn start_system_refresh_exports(self: &Arc<Self>, env: &str) -> Result<Vec<String>> {
        let mut runs = Vec::new();
        for export in self.store.system_refresh_exports(env).await? {
            let Some(stored) = self.store.get_export(&export).await? else {
                continue;
            };
            let waiting = self.refreshing_dependencies(&stored.export).await?;
            if let Some(run) = self
                .store
                .create_or_catch_up(&export, RunTrigger::SystemRefresh, &waiting)
                .await?
            {
                runs.push(run.name.to_string());
            }
        }
        if !runs.is_empty() {
            self.wake_workers();
        }
        Ok(runs)
    }

    async fn refresh_catalog(&self, name: &SystemRefreshName) -> Result<()> {
        let (entities, _) = self.store.list_entities(&name.env, 0, u64::MAX >> 1).await?;
        let mut refreshed = 0;
        for entity in entities {
            self.store.set_entity_refreshing(&entity.name, true).await?;
            let segments = self.store.segments_of_entity(&entity.name).await?;
            for segment in &segments {
                self.store.set_segment_refreshing(&segment.name, true).await?;
            }
            for segment in &segments {
                if let Err(e) = self.recompute_segment(segment, true).await {
                    // A shutdown leaves the refresh to be resumed; any other failure ends it,
                    // and nothing may go on waiting for what it did not finish.
                    if !self.is_stopping() {
                        self.store.abandon_entity_refresh(&entity.name).await?;
                    }
                    return Err(e);
                }
                refreshed += 1;
                self.store.system_refresh_progress(name, refreshed).await?;
            }
            self.store.set_entity_refreshing(&entity.name, false).await?;
        }
        Ok(())
    }
}
