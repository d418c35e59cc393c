//! Rule segments: members are the records for which the rule holds, computed by streaming the
//! entity's records in key order (memory does not grow with the entity) into the next member
//! generation, then switching to it.

use super::Engine;
use crate::domain::catalog::{Segment, SegmentDefinition};
use crate::domain::rule;
use crate::error::{Error, Result};

/// Records read per batch while evaluating a rule.
const BATCH: u64 = 5000;

impl Engine {
    /// Recomputes a rule segment's members; with `complete_refresh`, also ends its refresh.
    /// Pushed segments are left as they are (their refresh, if any, is completed).
    pub async fn recompute_segment(&self, segment: &Segment, complete_refresh: bool) -> Result<Segment> {
        let SegmentDefinition::Rule(source) = &segment.definition else {
            return if complete_refresh {
                self.store.set_segment_refreshing(&segment.name, false).await
            } else {
                Ok(segment.clone())
            };
        };
        let lock = self.segment_lock(&segment.name.to_string());
        let _guard = lock.lock().await;
        // Re-read under the lock: another recomputation may have switched generations.
        let segment = self.store.segment_or_not_found(&segment.name).await?;
        let entity = self.store.entity_or_not_found(&segment.entity).await?;
        let compiled = rule::compile(source, &entity.rule_fields()).map_err(|e| {
            Error::precondition(
                "RULE_INVALID",
                format!(
                    "the rule of segment '{}' no longer fits its entity's schema: {e}",
                    segment.name
                ),
            )
        })?;
        let generation = self.store.begin_members(&segment).await?;
        let mut after: Option<String> = None;
        loop {
            if self.is_stopping() {
                self.store.drop_generation(&segment.name, generation).await?;
                return Err(Error::unavailable("SHUTTING_DOWN", "the server is shutting down"));
            }
            let records = self.store.read_records(&entity.name, after.as_deref(), BATCH).await?;
            let Some(last) = records.last() else { break };
            after = Some(last.key.clone());
            let members: Vec<String> = records
                .iter()
                .filter(|r| compiled.matches(&r.data))
                .map(|r| r.key.clone())
                .collect();
            self.store.add_members(&segment.name, generation, &members).await?;
        }
        self.store
            .commit_members(&segment.name, generation, complete_refresh)
            .await
    }
}
