//! Refresh dependencies: an export depends on the entities it exports, or on its segments and
//! the entities they are built on. A run whose dependencies are being refreshed waits
//! (WAITING_FOR_DEPENDENCIES) and is released when the last of them completes.

use std::sync::Arc;

use super::Engine;
use crate::domain::export::Export;
use crate::domain::run::RunState;
use crate::error::Result;

/// What is being refreshed in one environment, as read at one moment.
pub(crate) struct Refreshing {
    entities: Vec<String>,
    segments: Vec<String>,
}

impl Refreshing {
    pub(crate) fn is_empty(&self) -> bool {
        self.entities.is_empty() && self.segments.is_empty()
    }
}

impl Engine {
    /// Names of the export's dependencies that are being refreshed now.
    pub async fn refreshing_dependencies(&self, export: &Export) -> Result<Vec<String>> {
        let refreshing = self.refreshing_in(&export.name.env).await?;
        self.dependencies_among(&refreshing, export).await
    }

    /// The entities and segments of `env` being refreshed now.
    pub(crate) async fn refreshing_in(&self, env: &str) -> Result<Refreshing> {
        Ok(Refreshing {
            entities: self.store.refreshing_entities(env).await?,
            segments: self.store.refreshing_segments(env).await?,
        })
    }

    /// Names of the export's dependencies among what `refreshing` lists.
    pub(crate) async fn dependencies_among(&self, refreshing: &Refreshing, export: &Export) -> Result<Vec<String>> {
        let Refreshing { entities, segments } = refreshing;
        if refreshing.is_empty() {
            return Ok(Vec::new());
        }
        let env = &export.name.env;
        let mut waiting = Vec::new();
        for entity in &export.entities {
            if entities.contains(&entity.id) {
                waiting.push(entity.to_string());
            }
        }
        if !export.segments.is_empty() {
            let ids: Vec<String> = export.segments.iter().map(|s| s.id.clone()).collect();
            for segment in self.store.segments_by_ids(env, &ids).await? {
                if segments.contains(&segment.name.id) {
                    waiting.push(segment.name.to_string());
                }
                let entity = &segment.entity;
                if entities.contains(&entity.id) && !waiting.contains(&entity.to_string()) {
                    waiting.push(entity.to_string());
                }
            }
        }
        Ok(waiting)
    }

    /// Re-examines waiting runs of an environment after a refresh completed: those with no
    /// dependency left refreshing are queued. Completing a refresh starts nothing else.
    pub async fn release_waiting_runs(self: &Arc<Self>, env: &str) -> Result<()> {
        let mut released = 0;
        for run in self.store.waiting_runs(Some(env)).await? {
            let Some(stored) = self.store.get_export(&run.name.export_name()).await? else {
                continue;
            };
            let waiting = self.refreshing_dependencies(&stored.export).await?;
            if waiting != run.waiting_for
                && self
                    .store
                    .set_waiting(&run.name, RunState::WaitingForDependencies, &waiting)
                    .await?
            {
                self.run_changed(&run.name.to_string());
                if waiting.is_empty() {
                    released += 1;
                }
            }
        }
        if released > 0 {
            tracing::info!(env, released, "released runs that were waiting for dependencies");
            self.wake_workers();
        }
        Ok(())
    }
}
