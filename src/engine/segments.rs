//! Rule segments: members are the records for which the rule holds, computed by streaming the
//! entity's records in key order (memory does not grow with the entity) into a new member
//! generation, then switching to it in one transaction.
//!
//! Evaluation is CPU work of a size chosen by whoever wrote the rule, so it never runs on the
//! async runtime's workers (which answer every RPC, health included): each batch of records is
//! evaluated on Tokio's blocking pool, at most `rule_evaluation_threads` batches at once, taken
//! in turn (the semaphore is fair, so one environment's large refresh cannot starve another's).
//! Every evaluation has a time budget (`rule_evaluation_budget_seconds`) and stops between
//! records when its budget is spent, when the server shuts down, or when the request that
//! started it goes away.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::Engine;
use crate::domain::catalog::{Entity, Segment, SegmentDefinition};
use crate::domain::names::SegmentName;
use crate::domain::rule::{self, CompiledRule};
use crate::error::{Error, ErrorCode, Result};
use crate::store::records::StoredRecord;
use crate::store::segments::Generation;

/// Records read per batch while evaluating a rule.
const BATCH: u64 = 5000;

/// How often (in records) a running evaluation looks at its budget and stop signals. A record
/// costs at most the rule's static bound, so this keeps a stop within milliseconds.
const CHECK_EVERY: usize = 64;

impl Engine {
    /// Recomputes a rule segment's members; with `complete_refresh`, also ends its refresh.
    /// Pushed segments are left as they are (their refresh, if any, is completed).
    pub async fn recompute_segment(&self, segment: &Segment, complete_refresh: bool) -> Result<Segment> {
        let SegmentDefinition::Rule(_) = &segment.definition else {
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
        let SegmentDefinition::Rule(source) = &segment.definition else {
            return Ok(segment);
        };
        let compiled = compile_stored(&segment, source, &entity)?;
        let generation = self.store.begin_members(&segment).await?;
        self.evaluate_into(&segment.name, &entity, compiled, generation).await?;
        self.store
            .commit_members(&segment.name, generation, complete_refresh, None)
            .await
    }

    /// Creates a segment. A rule segment is evaluated before anything is stored, so a create
    /// whose evaluation fails, runs out of budget or is abandoned by its caller leaves nothing.
    pub async fn create_segment(&self, segment: &Segment, entity: &Entity) -> Result<Segment> {
        let SegmentDefinition::Rule(source) = &segment.definition else {
            return self.store.create_segment(segment).await;
        };
        let lock = self.segment_lock(&segment.name.to_string());
        let _guard = lock.lock().await;
        if self.store.get_segment(&segment.name).await?.is_some() {
            return Err(Error::already_exists("segment", segment.name.to_string()));
        }
        let compiled = compile_stored(segment, source, entity)?;
        // A generation no other attempt uses: an abandoned attempt's rows, or another
        // process's concurrent create of the same id, can never mix with these.
        let generation = Generation::unique();
        self.evaluate_into(&segment.name, entity, compiled, generation).await?;
        self.store.create_segment_with_members(segment, generation).await
    }

    /// Stores a changed segment. A changed rule is evaluated first; the new rule and its
    /// members are stored in one transaction, so a failed evaluation changes nothing.
    pub async fn update_segment(&self, segment: &Segment, rule_changed: bool) -> Result<Segment> {
        let SegmentDefinition::Rule(source) = &segment.definition else {
            return self.store.update_segment(segment).await;
        };
        if !rule_changed {
            return self.store.update_segment(segment).await;
        }
        let lock = self.segment_lock(&segment.name.to_string());
        let _guard = lock.lock().await;
        let stored = self.store.segment_or_not_found(&segment.name).await?;
        let entity = self.store.entity_or_not_found(&segment.entity).await?;
        let compiled = compile_stored(segment, source, &entity)?;
        let generation = self.store.begin_members(&stored).await?;
        self.evaluate_into(&segment.name, &entity, compiled, generation).await?;
        self.store
            .commit_members(&segment.name, generation, false, Some(segment))
            .await
    }

    /// Streams the entity's records through the rule into `generation`. On failure, and when
    /// the caller drops this future, the generation's rows are removed again.
    async fn evaluate_into(
        &self,
        segment: &SegmentName,
        entity: &Entity,
        compiled: CompiledRule,
        generation: Generation,
    ) -> Result<()> {
        let budget = Duration::from_secs(self.settings.rule_evaluation_budget_seconds);
        let mut guard = Abandoned::new(self, segment, generation);
        let interrupt = Interrupt {
            abandoned: guard.flag.clone(),
            deadline: Instant::now() + budget,
            budget,
            shutdown: self.shutdown.subscribe(),
            segment: segment.to_string(),
        };
        let compiled = Arc::new(compiled);
        let outcome = async {
            let mut after: Option<String> = None;
            loop {
                interrupt.check()?;
                let records = self.store.read_records(&entity.name, after.as_deref(), BATCH).await?;
                let Some(last) = records.last() else { break };
                after = Some(last.key.clone());
                let members = self.evaluate_batch(&compiled, records, &interrupt).await?;
                self.store.add_members(segment, generation, &members).await?;
            }
            Ok(())
        }
        .await;
        guard.disarm();
        if outcome.is_err() {
            self.store.drop_generation(segment, generation).await?;
        }
        outcome
    }

    /// The keys of the records of one batch that match, evaluated on the blocking pool.
    async fn evaluate_batch(
        &self,
        compiled: &Arc<CompiledRule>,
        records: Vec<StoredRecord>,
        interrupt: &Interrupt,
    ) -> Result<Vec<String>> {
        let _permit = self
            .rule_permits
            .acquire()
            .await
            .map_err(|_| Error::unavailable("SHUTTING_DOWN", "the server is shutting down"))?;
        let compiled = compiled.clone();
        let interrupt = interrupt.clone();
        tokio::task::spawn_blocking(move || {
            let mut members = Vec::new();
            for (i, record) in records.into_iter().enumerate() {
                if i % CHECK_EVERY == 0 {
                    interrupt.check()?;
                }
                if compiled.matches(&record.data) {
                    members.push(record.key);
                }
            }
            Ok(members)
        })
        .await
        .map_err(|e| Error::internal(format!("rule evaluation stopped: {e}")))?
    }
}

/// A stored rule no longer compiling means the schema changed under it.
fn compile_stored(segment: &Segment, source: &str, entity: &Entity) -> Result<CompiledRule> {
    rule::compile(source, &entity.rule_fields()).map_err(|e| {
        Error::precondition(
            "RULE_INVALID",
            format!(
                "the rule of segment '{}' no longer fits its entity's schema: {e}",
                segment.name
            ),
        )
    })
}

/// What can stop an evaluation between two records.
#[derive(Clone)]
struct Interrupt {
    abandoned: Arc<AtomicBool>,
    deadline: Instant,
    budget: Duration,
    shutdown: watch::Receiver<bool>,
    segment: String,
}

impl Interrupt {
    fn check(&self) -> Result<()> {
        if *self.shutdown.borrow() {
            return Err(Error::unavailable("SHUTTING_DOWN", "the server is shutting down"));
        }
        if self.abandoned.load(Ordering::Relaxed) {
            return Err(Error::new(
                ErrorCode::Cancelled,
                "REQUEST_ABANDONED",
                "the request that started this evaluation went away",
            ));
        }
        if Instant::now() >= self.deadline {
            return Err(Error::new(
                ErrorCode::DeadlineExceeded,
                "RULE_EVALUATION_BUDGET_EXCEEDED",
                format!(
                    "evaluating the rule of segment '{}' took longer than its budget of {} s \
                     (rule_evaluation_budget_seconds); simplify the rule",
                    self.segment,
                    self.budget.as_secs()
                ),
            )
            .with_meta("segment", self.segment.clone())
            .with_meta("budget_seconds", self.budget.as_secs().to_string()));
        }
        Ok(())
    }
}

/// Armed while an evaluation runs: if the future is dropped (the client's deadline passed, the
/// stream was reset), it stops the blocking work and removes the partial generation.
struct Abandoned {
    flag: Arc<AtomicBool>,
    cleanup: Option<(Arc<crate::store::Store>, SegmentName, Generation)>,
}

impl Abandoned {
    fn new(engine: &Engine, segment: &SegmentName, generation: Generation) -> Self {
        Abandoned {
            flag: Arc::new(AtomicBool::new(false)),
            cleanup: Some((engine.store.clone(), segment.clone(), generation)),
        }
    }

    fn disarm(&mut self) {
        self.cleanup = None;
    }
}

impl Drop for Abandoned {
    fn drop(&mut self) {
        let Some((store, segment, generation)) = self.cleanup.take() else {
            return;
        };
        self.flag.store(true, Ordering::Relaxed);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = store.drop_generation(&segment, generation).await {
                    tracing::warn!(segment = %segment, error = %e.message, "cannot remove an abandoned evaluation's rows");
                }
            });
        }
    }
}
