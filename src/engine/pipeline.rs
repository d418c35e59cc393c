//! One run, from checks to commit:
//!
//! 1. **validate** — the export, its connection, its sources; dependencies being refreshed send
//!    the run back to wait; eligibility and limits are checked *before the target is contacted*
//!    (a segment over the limit or under the minimum skips the run, nothing is sent).
//! 2. **extract** → **write** — records are read in key order in batches by one task and
//!    written by another, through a bounded channel: memory does not grow with the data.
//! 3. **finalize** — the sink commits (a CDM folder's model.json is written last), the export
//!    remembers the run, and incremental exports the change sequences they delivered.
//!
//! Tasks are stored the moment they change; counts at most every half second.
//!
//! Step 1 writes nothing, and the rows are read by one reader: a preview (`super::preview`)
//! checks and reads an export exactly as a run starting now would, and stops before the sink.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::{mpsc, watch};

use super::Engine;
use super::batching::Cutter;
use super::in_flight::InFlight;
use crate::connectors::retry::Failure;
use crate::connectors::{self, Column, Delivery, PartSchema, RunTarget, Sink, Target, registry};
use crate::domain::catalog::{Entity, Segment};
use crate::domain::connection::Connection;
use crate::domain::connection_type::{ExportKind, SyncMode};
use crate::domain::eligibility::{SEGMENT_OVER_LIMIT, SEGMENT_UNDER_MINIMUM};
use crate::domain::export::{self, Export, ExportState};
use crate::domain::names::ExportName;
use crate::domain::run::{ConnectionDetail, Counts, Run, RunError, RunState, Task, Warning};
use crate::domain::time::{now_micros, to_datetime};
use crate::error::{Error, ErrorCode};
use crate::store::Store;
use crate::store::delivered::{self, Members};
use crate::store::record_rows::DocumentBatch;
use crate::store::records::StoredRecord;
use crate::store::rejects::NewReject;
use crate::store::runs::Finish;

/// Records per read (and per write to the sink).
const BATCH: u64 = 10_000;
/// Warning of a run that committed but could not remove what `keep_runs` lets go.
const OLD_RUNS_NOT_REMOVED: &str = "OLD_RUNS_NOT_REMOVED";
/// Warning of a run in which the target rejected some records (PRODUCT.md §12).
const RECORDS_REJECTED: &str = "RECORDS_REJECTED";
/// Error reason of a run in which the target rejected every record it was sent.
const ALL_RECORDS_REJECTED: &str = "ALL_RECORDS_REJECTED";
/// Counts are stored at least this often while a run works (and on every task change).
const PROGRESS_EVERY: Duration = Duration::from_millis(500);

/// What the worker tells the pipeline while it runs.
pub struct Control {
    pub owner: String,
    /// A user cancelled the run.
    pub cancel: watch::Receiver<bool>,
    /// Another worker took the run over: stop at once, touch nothing.
    pub lost: watch::Receiver<bool>,
}

pub enum Outcome {
    /// The run ended (succeeded, failed, skipped or cancelled).
    Finished(Box<Finish>),
    /// The run went back to the queue (waiting for dependencies, or the process is stopping).
    Requeued,
    /// The run belongs to another worker now.
    Abandoned,
}

/// Where a part's records come from.
pub(super) enum Source {
    Entity {
        entity: Entity,
        since: Option<i64>,
        until: i64,
        /// Whose outstanding rejects an incremental run sends again.
        export: ExportName,
    },
    /// Every member of the segment.
    Segment { segment: Segment },
    /// Incremental: members who joined or whose records changed after `since`, then those who
    /// left, against `members` (the snapshot taken at run start).
    SegmentChanges {
        segment: Segment,
        export: ExportName,
        since: i64,
        members: Members,
    },
    /// MIRROR (audience targets): members (of the run-start snapshot) not delivered yet, then
    /// those delivered who are no longer members.
    SegmentMirror {
        segment: Segment,
        export: ExportName,
        members: Members,
    },
}

impl Source {
    /// Records (entities) or members (segments) the source has now.
    pub(super) fn records_total(&self) -> i64 {
        match self {
            Source::Entity { entity, .. } => entity.record_count,
            Source::Segment { segment }
            | Source::SegmentChanges { segment, .. }
            | Source::SegmentMirror { segment, .. } => segment.member_count,
        }
    }
}

pub(super) struct Part {
    pub(super) schema: PartSchema,
    /// For each column, the record field it is read from.
    pub(super) fields: Vec<String>,
    /// The record field holding the key (filled in for deletions and departures).
    pub(super) key_field: String,
    pub(super) source: Source,
    /// Audience targets: the members each answer confirmed are recorded as delivered (and
    /// confirmed removals as no longer), batch by batch.
    remember_members: bool,
}

pub(super) struct Plan {
    pub(super) export: Export,
    pub(super) connection: Connection,
    pub(super) parts: Vec<Part>,
    pub(super) warnings: Vec<Warning>,
    /// Incremental exports: what the delivered change sequences become on success.
    sync_state: Option<BTreeMap<String, i64>>,
    /// Dependencies being refreshed, when the check was told not to wait for them.
    pub(super) refreshing: Vec<String>,
}

pub(super) enum Checked {
    Go(Box<Plan>),
    Skip { reason: String, warnings: Vec<Warning> },
    Wait(Vec<String>),
}

impl Part {
    /// The column holding the record's key, if the part carries one.
    pub(super) fn key_column(&self) -> Option<usize> {
        self.fields.iter().position(|f| *f == self.key_field)
    }
}

/// The run as it is being executed: tasks, counts and warnings, flushed to its row.
struct Progress {
    tasks: Vec<Task>,
    counts: Counts,
    warnings: Vec<Warning>,
    flushed: Instant,
    /// The counts as last stored (nothing to store while they have not moved).
    flushed_counts: Counts,
    /// Of `counts.rejected`, those the target did not name (not in ListRejectedRecords).
    unlisted_rejects: i64,
}

impl Progress {
    fn task(&mut self, name: &str) -> &mut Task {
        self.tasks
            .iter_mut()
            .find(|t| t.name == name)
            .expect("every run has the standard tasks")
    }

    fn start(&mut self, name: &str, message: &str) {
        let task = self.task(name);
        task.state = RunState::Running.number();
        task.start_time = Some(now_micros());
        task.message = message.to_string();
        task.detail = None;
    }

    fn end(&mut self, name: &str, state: RunState, message: impl Into<String>) {
        self.end_with_detail(name, state, message, None);
    }

    /// Ends a task whose message has a fuller form for callers who may see the connection.
    fn end_with_detail(
        &mut self,
        name: &str,
        state: RunState,
        message: impl Into<String>,
        detail: Option<ConnectionDetail>,
    ) {
        let task = self.task(name);
        task.state = state.number();
        task.start_time.get_or_insert_with(now_micros);
        task.end_time = Some(now_micros());
        task.message = message.into();
        task.detail = detail;
    }

    /// Counts what the target made of a batch.
    fn account(&mut self, delivery: Delivery) {
        self.counts.exported += delivery.accepted as i64;
        self.counts.rejected += (delivery.rejected.len() as u64 + delivery.unlisted_rejects) as i64;
        self.unlisted_rejects += delivery.unlisted_rejects as i64;
        self.counts.removed += delivery.removed as i64;
        if let Some(bytes) = delivery.bytes {
            self.counts.bytes = bytes as i64;
        }
    }

    /// Tasks that never started end with the run (cancelled or skipped).
    fn close_open_tasks(&mut self, state: RunState) {
        for task in &mut self.tasks {
            if task.state == RunState::Queued.number() {
                task.state = state.number();
            } else if task.state == RunState::Running.number() {
                task.state = state.number();
                task.end_time = Some(now_micros());
            }
        }
    }
}

fn failure_error(task: &str, part: &str, failure: &Failure) -> RunError {
    let (code, reason) = match failure {
        Failure::Transient { .. } => (ErrorCode::Unavailable, "TARGET_UNAVAILABLE"),
        Failure::Unsupported { .. } => (ErrorCode::Unimplemented, "CONNECTOR_NOT_SUPPORTED"),
        Failure::Permanent { .. } => (ErrorCode::FailedPrecondition, "TARGET_ERROR"),
    };
    RunError {
        code: code.rpc_number(),
        reason: reason.into(),
        message: failure.message().to_string(),
        task: task.into(),
        part: part.into(),
        detail: None,
    }
}

/// A run whose output area the save rules would refuse fails before it writes anything.
fn area_refused(err: Error) -> Error {
    if err.code == ErrorCode::InvalidArgument {
        Error::precondition(
            "OUTPUT_AREA_REFUSED",
            format!("the export cannot write where it is set to: {}", err.message),
        )
    } else {
        err
    }
}

fn error_of(task: &str, err: &Error) -> RunError {
    RunError {
        code: err.code.rpc_number(),
        reason: err.reason.to_string(),
        message: err.message.clone(),
        task: task.to_string(),
        part: String::new(),
        detail: None,
    }
}

impl Engine {
    pub(crate) async fn run_pipeline(self: &Arc<Self>, run: &Run, control: &Control) -> Outcome {
        let mut progress = Progress {
            tasks: run.tasks.clone(),
            counts: Counts::default(),
            warnings: Vec::new(),
            flushed: Instant::now(),
            flushed_counts: Counts::default(),
            unlisted_rejects: 0,
        };
        progress.start("validate", "checking the export, its connection and its sources");
        self.flush(run, control, &mut progress).await;

        let checked = match self.check(&run.name.export_name(), true).await {
            Ok(checked) => checked,
            Err(err) => {
                return self
                    .fail(run, control, progress, "validate", error_of("validate", &err))
                    .await;
            }
        };
        let plan = match checked {
            Checked::Go(plan) => {
                let mut plan = *plan;
                if let Err(err) = self.take_snapshots(&mut plan).await {
                    return self
                        .fail(run, control, progress, "validate", error_of("validate", &err))
                        .await;
                }
                plan
            }
            Checked::Wait(waiting_for) => {
                tracing::info!(run = %run.name, ?waiting_for, "waiting for dependencies being refreshed");
                return match self.store.set_waiting(&run.name, RunState::Running, &waiting_for).await {
                    Ok(_) => Outcome::Requeued,
                    Err(e) => {
                        self.fail(run, control, progress, "validate", error_of("validate", &e))
                            .await
                    }
                };
            }
            Checked::Skip { reason, warnings } => {
                progress.warnings = warnings;
                progress.end("validate", RunState::Skipped, reason.clone());
                progress.close_open_tasks(RunState::Skipped);
                return Outcome::Finished(Box::new(Finish {
                    state: RunState::Skipped,
                    tasks: progress.tasks,
                    counts: progress.counts,
                    warnings: progress.warnings,
                    error: None,
                    skip_reason: Some(reason),
                    sync_state: None,
                }));
            }
        };
        progress.warnings = plan.warnings.clone();
        let parts: Vec<&str> = plan.parts.iter().map(|p| p.schema.id.as_str()).collect();
        progress.end(
            "validate",
            RunState::Succeeded,
            format!("ready to export {}", parts.join(", ")),
        );
        self.flush(run, control, &mut progress).await;

        self.transfer(run, control, progress, plan).await
    }

    /// Step 1: everything that can be decided without contacting the target, and without
    /// writing anything (a preview calls it too). `wait`: dependencies being refreshed send the
    /// run back to wait; otherwise they are listed in the plan.
    pub(super) async fn check(&self, name: &ExportName, wait: bool) -> crate::error::Result<Checked> {
        let stored = self
            .store
            .get_export(name)
            .await?
            .ok_or_else(|| Error::precondition("EXPORT_DELETED", format!("export '{name}' was deleted")))?;
        let export = stored.export;
        let connection = match (export.state, stored.connection) {
            (ExportState::Active, Some(connection)) => connection,
            _ => {
                return Err(Error::precondition(
                    "EXPORT_DETACHED",
                    format!(
                        "export '{}' has no connection (detached); attach one to run it",
                        export.name
                    ),
                ));
            }
        };
        let waiting_for = self.refreshing_dependencies(&export).await?;
        if wait && !waiting_for.is_empty() {
            return Ok(Checked::Wait(waiting_for));
        }
        // Saves refuse overlapping output areas; exports and roots saved before those rules
        // (or before the operator changed allowed_roots) are refused here, before anything is
        // written.
        let roots = self.settings.local_roots();
        self.store
            .check_connection_root(&connection, &roots)
            .await
            .map_err(area_refused)?;
        self.store
            .check_export_placement(&export, roots.exports_root, "export.settings.folder")
            .await
            .map_err(area_refused)?;
        let spec = registry::type_of(&connection)?;
        let environment = self
            .store
            .get_environment(&export.name.env)
            .await?
            .ok_or_else(|| Error::not_found("environment", format!("environments/{}", export.name.env)))?;

        let catalog = self.store.catalog_facts(&export).await?;
        let destination = export::destination(environment.kind, spec, &connection, &export);
        let warnings = match export::validate_all("export", &export, &catalog, Some(&destination)) {
            Ok(warnings) => warnings,
            // Eligibility may change after an export was saved: such a run is skipped, with
            // the same message the API gives at save time.
            Err(err) if err.reason == crate::domain::eligibility::SEGMENT_NOT_ELIGIBLE => {
                return Ok(Checked::Skip {
                    reason: err.message,
                    warnings: Vec::new(),
                });
            }
            Err(err) if err.code == ErrorCode::InvalidArgument => {
                return Err(Error::precondition(
                    "EXPORT_INVALID",
                    format!("the export no longer fits its sources or connection: {}", err.message),
                ));
            }
            Err(err) => return Err(err),
        };
        let blocking: Vec<&Warning> = warnings
            .iter()
            .filter(|w| w.code == SEGMENT_OVER_LIMIT || w.code == SEGMENT_UNDER_MINIMUM)
            .collect();
        if !blocking.is_empty() {
            let reason = blocking
                .iter()
                .map(|w| crate::domain::eligibility::skip_reason_of(&w.message))
                .collect::<Vec<_>>()
                .join("; ");
            return Ok(Checked::Skip { reason, warnings });
        }

        let incremental = export.sync_mode == SyncMode::Incremental;
        let delivered = if incremental {
            self.store.export_sync_state(&export.name).await?
        } else {
            BTreeMap::new()
        };
        let mut sync_state = BTreeMap::new();
        let mut parts = Vec::new();
        match export.kind {
            ExportKind::DataOut => {
                for name in &export.entities {
                    let entity = catalog
                        .entities
                        .get(name)
                        .cloned()
                        .ok_or_else(|| missing("entity", name))?;
                    let until = entity.change_seq;
                    let since = if incremental {
                        delivered.get(&entity.name.id).copied()
                    } else {
                        None
                    };
                    sync_state.insert(entity.name.id.clone(), until);
                    parts.push(entity_part(&export.name, entity, since, until, incremental));
                }
            }
            ExportKind::Segment => {
                for name in &export.segments {
                    let segment = catalog
                        .segments
                        .get(name)
                        .cloned()
                        .ok_or_else(|| missing("segment", name))?;
                    let entity = catalog
                        .entities
                        .get(&segment.entity)
                        .cloned()
                        .ok_or_else(|| missing("entity", &segment.entity))?;
                    let key = format!("segment:{}", segment.name.id);
                    sync_state.insert(key.clone(), entity.change_seq);
                    // Compared with the current members here; a run then takes its snapshot
                    // (`take_snapshots`).
                    let members = Members::Current(segment.generation);
                    let source = if export.sync_mode == SyncMode::Mirror {
                        Source::SegmentMirror {
                            segment: segment.clone(),
                            export: export.name.clone(),
                            members,
                        }
                    } else if incremental {
                        let since = delivered.get(&key).copied().unwrap_or(0);
                        Source::SegmentChanges {
                            segment: segment.clone(),
                            export: export.name.clone(),
                            since,
                            members,
                        }
                    } else {
                        Source::Segment {
                            segment: segment.clone(),
                        }
                    };
                    // Audience types (those that offer MIRROR) remember what they delivered in
                    // every mode: a MIRROR run after a FULL one sends only the difference.
                    let remember = spec.sync_modes.contains(&SyncMode::Mirror);
                    parts.push(segment_part(&export, segment, entity, source, remember));
                }
            }
        }
        Ok(Checked::Go(Box::new(Plan {
            export,
            connection,
            parts,
            warnings,
            sync_state: incremental.then_some(sync_state),
            refreshing: waiting_for,
        })))
    }

    /// A run's segment parts compare with a snapshot of the members taken now, so that
    /// membership stays fixed while the run reads (the one write of the run's start).
    async fn take_snapshots(&self, plan: &mut Plan) -> crate::error::Result<()> {
        for part in &mut plan.parts {
            match &mut part.source {
                Source::SegmentMirror {
                    segment,
                    export,
                    members,
                } => {
                    self.store.snapshot_mirror_members(export, segment).await?;
                    *members = Members::Snapshot(delivered::MIRROR_SNAPSHOT);
                }
                Source::SegmentChanges {
                    segment,
                    export,
                    members,
                    ..
                } => {
                    self.store.snapshot_members(export, segment).await?;
                    *members = Members::Snapshot(delivered::PENDING);
                }
                Source::Entity { .. } | Source::Segment { .. } => {}
            }
        }
        Ok(())
    }

    /// Steps 2 and 3.
    async fn transfer(self: &Arc<Self>, run: &Run, control: &Control, mut progress: Progress, plan: Plan) -> Outcome {
        let secrets = match self.store.connection_secrets(&plan.connection.name).await {
            Ok(secrets) => secrets,
            Err(e) => return self.fail(run, control, progress, "write", error_of("write", &e)).await,
        };
        let connector = connectors::connector_for(&plan.connection.type_id);
        let run_id = run.name.id.clone();
        let export_name = plan.export.name.to_string();
        let run_name = run.name.to_string();
        // `keep_runs` = N keeps this run and the N - 1 latest successful ones before it.
        let keep_runs = match plan
            .export
            .settings
            .get("keep_runs")
            .and_then(|n| n.parse::<u64>().ok())
        {
            Some(n) => match self
                .store
                .latest_succeeded_run_ids(&plan.export.name, n.saturating_sub(1))
                .await
            {
                Ok(ids) => Some(ids),
                Err(e) => return self.fail(run, control, progress, "write", error_of("write", &e)).await,
            },
            None => None,
        };
        let audiences = match self.store.export_audiences(&plan.export.name).await {
            Ok(audiences) => audiences,
            Err(e) => return self.fail(run, control, progress, "write", error_of("write", &e)).await,
        };
        let schemas: Vec<PartSchema> = plan.parts.iter().map(|p| p.schema.clone()).collect();
        let run_target = RunTarget {
            target: Target {
                connection: &plan.connection,
                secrets: &secrets,
                local_roots: self.settings.local_roots(),
                export_file_mode: self.settings.export_file_mode,
            },
            export_id: &plan.export.name.id,
            run_id: &run_id,
            export_name: &export_name,
            run_name: &run_name,
            attempt: run.attempt,
            cancellation: connectors::Cancellation::of(vec![control.cancel.clone(), control.lost.clone()]),
            run_time: to_datetime(run.create_time),
            settings: &plan.export.settings,
            parts: &schemas,
            keep_runs: keep_runs.as_deref(),
            audiences: &audiences,
        };
        progress.start("write", &format!("opening the {} target", plan.connection.type_id));
        // Not retried here: every request a store makes is retried where it is made (by
        // object_store, by the SFTP store), and a second loop around them would multiply the
        // attempts past PRODUCT.md §11's six.
        let opened = connector.open_sink(&run_target).await;
        // What the target says may name where the connection writes: callers who may not see
        // the connection read it with folders relative to it (asked after opening, when the
        // folders exist and resolve).
        let locations = connector.private_locations(&run_target.target);
        let connection_name = plan.connection.name.to_string();
        let target_error = |task: &str, part: &str, failure: &Failure| {
            failure_error(task, part, failure).concealing(&connection_name, &locations)
        };
        let mut sink = match opened {
            Ok(sink) => sink,
            Err(failure) => {
                return self
                    .fail(run, control, progress, "write", target_error("write", "", &failure))
                    .await;
            }
        };

        progress.start("extract", "reading records");
        self.flush(run, control, &mut progress).await;
        let sources: Vec<String> = plan.parts.iter().map(|p| p.schema.source.clone()).collect();
        for part in plan.parts {
            let id = part.schema.id.clone();
            match self
                .transfer_part(run, control, &mut progress, sink.as_mut(), &plan.export.name, part)
                .await
            {
                Ok(()) => {}
                Err(Stop::Failed(failure)) => {
                    sink.abort().await;
                    return self
                        .fail(run, control, progress, "write", target_error("write", &id, &failure))
                        .await;
                }
                Err(Stop::Store(err)) => {
                    sink.abort().await;
                    return self
                        .fail(run, control, progress, "extract", error_of("extract", &err))
                        .await;
                }
                Err(Stop::Cancelled) => {
                    sink.abort().await;
                    return self.cancelled(progress);
                }
                Err(Stop::ShuttingDown) => {
                    sink.abort().await;
                    return match self.store.set_waiting(&run.name, RunState::Running, &[]).await {
                        Ok(_) => Outcome::Requeued,
                        Err(_) => Outcome::Abandoned,
                    };
                }
                Err(Stop::Lost) => {
                    sink.abandon().await;
                    return Outcome::Abandoned;
                }
            }
        }
        let read = progress.counts.total;
        progress.end("extract", RunState::Succeeded, format!("read {read} records"));
        let exported = progress.counts.exported;
        let rejected = progress.counts.rejected;
        // PRODUCT.md §12: a target that refused every record it was sent fails the run; one
        // that refused some lets it succeed with a warning (a removal it confirmed was a
        // record it took).
        if rejected > 0 && exported == 0 && progress.counts.removed == 0 {
            sink.abort().await;
            let error = RunError {
                code: ErrorCode::FailedPrecondition.rpc_number(),
                reason: ALL_RECORDS_REJECTED.into(),
                message: format!("the target rejected every record it was sent ({rejected})"),
                task: "write".into(),
                part: String::new(),
                detail: None,
            };
            return self.fail(run, control, progress, "write", error).await;
        }
        if rejected > 0 {
            let listed = match progress.unlisted_rejects {
                0 => "ListRejectedRecords shows them".to_string(),
                unlisted => format!(
                    "ListRejectedRecords shows the {} the target named ({unlisted} it did not name)",
                    rejected - unlisted
                ),
            };
            progress.warnings.push(Warning {
                code: RECORDS_REJECTED.into(),
                message: format!(
                    "the target rejected {rejected} {}; {listed}",
                    if rejected == 1 { "record" } else { "records" }
                ),
                subject: plan.export.name.to_string(),
            });
        }
        let rejected_note = match rejected {
            0 => String::new(),
            n => format!(" ({n} rejected)"),
        };
        progress.end(
            "write",
            RunState::Succeeded,
            format!("wrote {exported} records{rejected_note}"),
        );
        progress.start("finalize", "committing");
        self.flush(run, control, &mut progress).await;
        if let Some(stop) = interrupted(self, control) {
            if let Stop::Lost = stop {
                sink.abandon().await;
                return Outcome::Abandoned;
            }
            sink.abort().await;
            return match stop {
                Stop::Cancelled => self.cancelled(progress),
                _ => match self.store.set_waiting(&run.name, RunState::Running, &[]).await {
                    Ok(_) => Outcome::Requeued,
                    Err(_) => Outcome::Abandoned,
                },
            };
        }
        let summary = match sink.commit().await {
            Ok(summary) => summary,
            Err(failure) => {
                return self
                    .fail(
                        run,
                        control,
                        progress,
                        "finalize",
                        target_error("finalize", "", &failure),
                    )
                    .await;
            }
        };
        // Outstanding rejects this run sent (or that no longer exist) and did not reject again
        // are delivered. Should this fail, they stay outstanding and are sent once more.
        if let Err(e) = self
            .store
            .settle_rejects(&plan.export.name, &run.name.id, &sources)
            .await
        {
            tracing::warn!(run = %run.name, error = %e.message, "cannot mark delivered rejects");
        }
        progress.counts.bytes = summary.bytes as i64;
        let files = summary.files.len();
        let removed = match summary.removed_run_folders {
            0 => String::new(),
            1 => "; removed 1 folder of an older run (keep_runs)".to_string(),
            n => format!("; removed {n} folders of older runs (keep_runs)"),
        };
        if let Some(error) = &summary.cleanup_error {
            tracing::warn!(run = %run.name, error = %error, "cannot remove older runs' files");
            progress.warnings.push(Warning {
                code: OLD_RUNS_NOT_REMOVED.into(),
                message: format!("the run committed, but older runs' files could not all be removed: {error}"),
                subject: plan.export.name.to_string(),
            });
        }
        // Record-level targets write no files: their summary says what was delivered.
        let committed = if files == 0 && !summary.location.is_empty() {
            format!("delivered {}", summary.location)
        } else {
            format!(
                "committed {files} {}{removed}; see {}",
                if files == 1 { "file" } else { "files" },
                summary.location
            )
        };
        let (message, detail) = ConnectionDetail::split(committed, &connection_name, &locations);
        progress.end_with_detail("finalize", RunState::Succeeded, message, detail);
        Outcome::Finished(Box::new(Finish {
            state: RunState::Succeeded,
            tasks: progress.tasks,
            counts: progress.counts,
            warnings: progress.warnings,
            error: None,
            skip_reason: None,
            sync_state: plan.sync_state,
        }))
    }

    /// Streams one part: a reader task fills a bounded channel with batches of rows; this task
    /// writes them to the sink.
    async fn transfer_part(
        self: &Arc<Self>,
        run: &Run,
        control: &Control,
        progress: &mut Progress,
        sink: &mut dyn Sink,
        export: &ExportName,
        part: Part,
    ) -> Result<(), Stop> {
        // Rejects of earlier runs still outstanding: sending one again counts as a retry.
        let mut outstanding = self
            .store
            .outstanding_keys(export, &part.schema.source, &run.name.id)
            .await
            .map_err(Stop::Store)?;
        let rejects = PartRejects {
            export: export.clone(),
            run_id: run.name.id.clone(),
            source: part.schema.source.clone(),
        };
        sink.begin_part(&part.schema)
            .await
            .map_err(|f| stopped_or_failed(self, control, f))?;
        if let Some(audience) = sink.audience() {
            self.store
                .remember_audience(export, &part.schema.id, &audience)
                .await
                .map_err(Stop::Store)?;
        }
        let settle = Arc::new(Settle {
            store: self.store.clone(),
            rejects: rejects.clone(),
            memory: part.remember_members.then(|| Memory::new(export, &part)),
        });
        let mut batched = sink
            .limits()
            .map(|limits| (Cutter::new(limits), InFlight::new(limits.concurrency)));
        let columns = part.fields.clone();
        let key_column = part.key_column();
        let incremental = part.schema.incremental;
        let (reader, mut rx) = spawn_reader(self.store.clone(), part);
        let result = async {
            while let Some(batch) = rx.recv().await {
                let (read, batch) = batch.map_err(Stop::Store)?;
                if let Some(stop) = interrupted(self, control) {
                    return Err(stop);
                }
                let rows = batch.into_rows(&columns, incremental).map_err(Stop::Store)?;
                progress.counts.total += read as i64;
                progress.counts.retried += retried_in(&rows, key_column, &mut outstanding);
                if let Some((cutter, window)) = batched.as_mut() {
                    cutter.push(rows);
                    while let Some(batch) = cutter.next_batch() {
                        self.send_batches(run, control, progress, sink, window, &settle, vec![batch], false)
                            .await?;
                    }
                    continue;
                }
                let delivery = sink
                    .write_rows(rows)
                    .await
                    .map_err(|f| stopped_or_failed(self, control, f))?;
                rejects.store(&self.store, &delivery).await?;
                progress.account(delivery);
                if progress.flushed.elapsed() >= PROGRESS_EVERY {
                    self.flush(run, control, progress).await;
                }
            }
            if let Some((cutter, window)) = batched.as_mut() {
                let rest = cutter.finish();
                if !rest.is_empty() {
                    self.send_batches(run, control, progress, sink, window, &settle, rest, true)
                        .await?;
                }
                self.settle_all(run, control, progress, window).await?;
            }
            Ok(())
        }
        .await;
        reader.abort();
        result?;
        let delivery = sink.end_part().await.map_err(|f| stopped_or_failed(self, control, f))?;
        rejects.store(&self.store, &delivery).await?;
        progress.account(delivery);
        Ok(())
    }

    /// Starts the requests of batches cut to the sink's limits once the window has room for
    /// them, settling the answers already back (and, when it is full, the next to come).
    #[allow(clippy::too_many_arguments)]
    async fn send_batches(
        &self,
        run: &Run,
        control: &Control,
        progress: &mut Progress,
        sink: &mut dyn Sink,
        window: &mut InFlight<Settled>,
        settle: &Arc<Settle>,
        batches: Vec<Vec<Vec<Value>>>,
        last: bool,
    ) -> Result<(), Stop> {
        while let Some(answer) = window.ready() {
            self.settle_answer(control, progress, window, recorded(answer)).await?;
        }
        while !window.has_room_for(batches.len()) {
            let Some(answer) = self.next_answer(run, control, progress, window).await else {
                break;
            };
            self.settle_answer(control, progress, window, answer).await?;
        }
        if let Some(stop) = interrupted(self, control) {
            self.settle_all(run, control, progress, window).await?;
            return Err(stop);
        }
        let keys: Vec<BatchKeys> = batches
            .iter()
            .map(|batch| {
                settle
                    .memory
                    .as_ref()
                    .map(|memory| memory.keys_of(batch))
                    .unwrap_or_default()
            })
            .collect();
        for (request, keys) in sink.start_batches(batches, last).into_iter().zip(keys) {
            let settle = settle.clone();
            // The answer is recorded by the request's own task, beside the pipeline's reading
            // and preparing of the next batches.
            window.start(async move {
                let delivery = request.await.map_err(Stop::Failed)?;
                settle.delivered(&delivery, keys).await?;
                Ok(delivery)
            });
        }
        if progress.flushed.elapsed() >= PROGRESS_EVERY {
            self.flush(run, control, progress).await;
        }
        Ok(())
    }

    /// Waits for every request still out and settles each answer.
    async fn settle_all(
        &self,
        run: &Run,
        control: &Control,
        progress: &mut Progress,
        window: &mut InFlight<Settled>,
    ) -> Result<(), Stop> {
        while let Some(answer) = self.next_answer(run, control, progress, window).await {
            self.settle_answer(control, progress, window, answer).await?;
        }
        Ok(())
    }

    /// The next answer to come back; while it is awaited, what the answers before it counted
    /// is stored every [`PROGRESS_EVERY`] (one slow request does not hide the others).
    async fn next_answer(
        &self,
        run: &Run,
        control: &Control,
        progress: &mut Progress,
        window: &mut InFlight<Settled>,
    ) -> Option<Settled> {
        loop {
            let due = tokio::time::Instant::from_std(progress.flushed + PROGRESS_EVERY);
            let moved = progress.counts != progress.flushed_counts;
            tokio::select! {
                answer = window.next() => return answer.map(recorded),
                _ = tokio::time::sleep_until(due), if moved => self.flush(run, control, progress).await,
            }
        }
    }

    /// One batch's answer, recorded by its task (its rejects stored and, for audience targets,
    /// what it confirmed as delivered): its counts are taken. A failed batch ends the part,
    /// but only after the requests still out are answered and recorded: what they confirmed
    /// is kept.
    async fn settle_answer(
        &self,
        control: &Control,
        progress: &mut Progress,
        window: &mut InFlight<Settled>,
        answer: Settled,
    ) -> Result<(), Stop> {
        match answer {
            Ok(delivery) => {
                progress.account(delivery);
                Ok(())
            }
            Err(stop) => {
                while let Some(answer) = window.next().await {
                    if let Ok(delivery) = recorded(answer) {
                        progress.account(delivery);
                    }
                }
                Err(match stop {
                    Stop::Failed(failure) => stopped_or_failed(self, control, failure),
                    other => other,
                })
            }
        }
    }

    /// Stores the run's progress and tells watchers.
    async fn flush(&self, run: &Run, control: &Control, progress: &mut Progress) {
        progress.flushed = Instant::now();
        progress.flushed_counts = progress.counts;
        match self
            .store
            .save_progress(
                &run.name,
                &control.owner,
                &progress.tasks,
                progress.counts,
                &progress.warnings,
            )
            .await
        {
            Ok(_) => self.run_changed(&run.name.to_string()),
            Err(e) => tracing::warn!(run = %run.name, error = %e.message, "cannot store run progress"),
        }
    }

    async fn fail(
        &self,
        run: &Run,
        _control: &Control,
        mut progress: Progress,
        task: &str,
        error: RunError,
    ) -> Outcome {
        // The operator's log gets the full message.
        let logged = error.detail.as_ref().map_or(&error.message, |d| &d.message);
        tracing::warn!(run = %run.name, task, reason = %error.reason, message = %logged, "run failed");
        progress.end_with_detail(task, RunState::Failed, error.message.clone(), error.detail.clone());
        // Tasks that ran beside the failing one were stopped; those that never started stay
        // QUEUED (they did not run).
        for other in &mut progress.tasks {
            if other.state == RunState::Running.number() {
                other.state = RunState::Cancelled.number();
                other.end_time = Some(now_micros());
            }
        }
        Outcome::Finished(Box::new(Finish {
            state: RunState::Failed,
            tasks: progress.tasks,
            counts: progress.counts,
            warnings: progress.warnings,
            error: Some(error),
            skip_reason: None,
            sync_state: None,
        }))
    }

    fn cancelled(&self, mut progress: Progress) -> Outcome {
        progress.close_open_tasks(RunState::Cancelled);
        Outcome::Finished(Box::new(Finish {
            state: RunState::Cancelled,
            tasks: progress.tasks,
            counts: progress.counts,
            warnings: progress.warnings,
            error: None,
            skip_reason: None,
            sync_state: None,
        }))
    }
}

/// The keys a batch adds (each with the fields it was sent with, as JSON) and removes.
type BatchKeys = (Vec<(String, String)>, Vec<String>);

/// What an audience part has delivered: the keys of its rows (and the fields they were sent
/// with), recorded per confirmed batch.
struct Memory {
    export: ExportName,
    segment: String,
    /// What a member's delivered fields are written from: for each record field in name order
    /// (as a JSON object's keys sort), its `"name":` and its column.
    sent_fields: Vec<(String, usize)>,
    key_column: Option<usize>,
    /// Incremental and MIRROR rows end with `_deleted` (a removal).
    deleted_column: Option<usize>,
}

impl Memory {
    fn new(export: &ExportName, part: &Part) -> Memory {
        Memory {
            export: export.clone(),
            segment: part.schema.id.clone(),
            sent_fields: sent_fields(&part.fields),
            key_column: part.fields.iter().position(|f| *f == part.key_field),
            deleted_column: part.schema.incremental.then_some(part.fields.len()),
        }
    }

    /// A member's fields as the JSON object that is stored as sent (keys in order), written
    /// straight from the row: no object is built per member.
    fn sent_of(&self, row: &[Value]) -> String {
        let mut sent = Vec::with_capacity(16 * self.sent_fields.len() + 2);
        sent.push(b'{');
        for (field, column) in &self.sent_fields {
            let Some(value) = row.get(*column) else { continue };
            if sent.len() > 1 {
                sent.push(b',');
            }
            sent.extend_from_slice(field.as_bytes());
            serde_json::to_writer(&mut sent, value).expect("JSON values serialize");
        }
        sent.push(b'}');
        String::from_utf8(sent).expect("JSON is UTF-8")
    }

    /// The keys a batch adds (with its fields as a JSON object) and those it removes.
    fn keys_of(&self, batch: &[Vec<Value>]) -> BatchKeys {
        let (mut added, mut removed) = (Vec::new(), Vec::new());
        let Some(column) = self.key_column else {
            return (added, removed);
        };
        for row in batch {
            let key = match row.get(column) {
                Some(Value::String(key)) => key.clone(),
                Some(Value::Null) | None => continue,
                Some(other) => other.to_string(),
            };
            let deleted = self.deleted_column.and_then(|i| row.get(i)) == Some(&Value::Bool(true));
            if deleted {
                removed.push(key);
            } else {
                added.push((key, self.sent_of(row)));
            }
        }
        (added, removed)
    }

    /// Records what the answer confirmed: the batch's keys but those it rejected.
    async fn confirm(
        &self,
        store: &Store,
        (mut added, mut removed): BatchKeys,
        delivery: &Delivery,
    ) -> Result<(), Stop> {
        if !delivery.rejected.is_empty() {
            let refused: HashSet<&str> = delivery.rejected.iter().map(|r| r.key.as_str()).collect();
            added.retain(|(k, _)| !refused.contains(k.as_str()));
            removed.retain(|k| !refused.contains(k.as_str()));
        }
        store
            .confirm_delivered(&self.export, &self.segment, added, removed)
            .await
            .map_err(Stop::Store)
    }
}

/// For each field in name order, its `"name":` and its column. A field named twice keeps its
/// last column, as a JSON object built from the row would.
fn sent_fields(fields: &[String]) -> Vec<(String, usize)> {
    let columns: BTreeMap<&str, usize> = fields.iter().enumerate().map(|(i, f)| (f.as_str(), i)).collect();
    columns
        .into_iter()
        .map(|(field, column)| (format!("{}:", Value::from(field)), column))
        .collect()
}

/// A batch's answer once recorded, or why the part stops.
type Settled = Result<Delivery, Stop>;

/// A request task that panicked fails its batch.
fn recorded(answer: Result<Settled, String>) -> Settled {
    answer.unwrap_or_else(|message| Err(Stop::Failed(Failure::Permanent { message })))
}

/// What recording a part's answers needs: where its rejects go, and (audience targets) the
/// memory of its delivered members.
struct Settle {
    store: Arc<Store>,
    rejects: PartRejects,
    memory: Option<Memory>,
}

impl Settle {
    async fn delivered(&self, delivery: &Delivery, keys: BatchKeys) -> Result<(), Stop> {
        self.rejects.store(&self.store, delivery).await?;
        if let Some(memory) = &self.memory {
            memory.confirm(&self.store, keys, delivery).await?;
        }
        Ok(())
    }
}

/// Where a part's rejects are kept.
#[derive(Clone)]
struct PartRejects {
    export: ExportName,
    run_id: String,
    source: String,
}

impl PartRejects {
    /// Stores a batch's rejects before the run moves on (nothing is lost across a crash).
    async fn store(&self, store: &Store, delivery: &Delivery) -> Result<(), Stop> {
        if delivery.rejected.is_empty() {
            return Ok(());
        }
        let rejects: Vec<NewReject> = delivery
            .rejected
            .iter()
            .map(|r| NewReject {
                key: r.key.clone(),
                reason: r.reason.clone(),
                code: r.code.clone(),
            })
            .collect();
        store
            .record_rejects(&self.export, &self.run_id, &self.source, &rejects)
            .await
            .map_err(Stop::Store)
    }
}

/// How many of `rows` are outstanding rejects being sent again (each counted once).
pub(super) fn retried_in(rows: &[Vec<Value>], key_column: Option<usize>, outstanding: &mut HashSet<String>) -> i64 {
    let Some(column) = key_column else {
        return 0;
    };
    if outstanding.is_empty() {
        return 0;
    }
    rows.iter()
        .filter(|row| match row.get(column) {
            Some(Value::String(key)) => outstanding.remove(key),
            Some(Value::Null) | None => false,
            Some(other) => outstanding.remove(&other.to_string()),
        })
        .count() as i64
}

/// Why a transfer stopped early.
enum Stop {
    Failed(Failure),
    Store(Error),
    Cancelled,
    ShuttingDown,
    Lost,
}

fn interrupted(engine: &Engine, control: &Control) -> Option<Stop> {
    if *control.lost.borrow() {
        Some(Stop::Lost)
    } else if *control.cancel.borrow() {
        Some(Stop::Cancelled)
    } else if engine.is_stopping() {
        Some(Stop::ShuttingDown)
    } else {
        None
    }
}

/// A sink that failed because its run was cancelled or lost stopped; any other failure is one.
fn stopped_or_failed(engine: &Engine, control: &Control, failure: Failure) -> Stop {
    interrupted(engine, control).unwrap_or(Stop::Failed(failure))
}

fn missing(what: &str, name: &dyn std::fmt::Display) -> Error {
    Error::precondition(
        "SOURCE_MISSING",
        format!("the export's {what} '{name}' no longer exists"),
    )
}

fn column_of(entity: &Entity, field: &str, name: &str) -> Column {
    let source = entity.field(field);
    Column {
        name: name.to_string(),
        field_type: source
            .map(|f| f.field_type())
            .unwrap_or(crate::domain::catalog::FieldType::String),
        description: source.map(|f| f.description.clone()).unwrap_or_default(),
        mapping: match source {
            Some(f) if name != field => format!("{} (from {field})", f.mapping).trim().to_string(),
            Some(f) => f.mapping.clone(),
            None => String::new(),
        },
    }
}

/// A data-out part: every field of the entity, named by the entity's id.
fn entity_part(export: &ExportName, entity: Entity, since: Option<i64>, until: i64, incremental: bool) -> Part {
    let fields: Vec<String> = entity.fields.iter().map(|f| f.name.clone()).collect();
    Part {
        schema: PartSchema {
            id: entity.name.id.clone(),
            source: entity.name.to_string(),
            description: entity.display_name.clone(),
            primary_key: entity.primary_key.clone(),
            columns: fields.iter().map(|f| column_of(&entity, f, f)).collect(),
            incremental,
            added_key: false,
            estimated_records: 0,
            complete: since.is_none(),
        },
        fields,
        key_field: entity.primary_key.clone(),
        remember_members: false,
        source: Source::Entity {
            entity,
            since,
            until,
            export: export.clone(),
        },
    }
}

/// A segment part: the mapped target fields (or, without mappings, every field of the entity).
/// An incremental or MIRROR part, and any part whose delivered members are remembered, always
/// carries the record's key, so that a receiver can tell whose row changed or left: when the
/// mapping leaves the primary key out, it comes first under its own name (`added_key`).
fn segment_part(export: &Export, segment: Segment, entity: Entity, source: Source, remember_members: bool) -> Part {
    let incremental = matches!(source, Source::SegmentChanges { .. } | Source::SegmentMirror { .. });
    let mut pairs: Vec<(String, String)> = if export.field_mappings.is_empty() {
        entity.fields.iter().map(|f| (f.name.clone(), f.name.clone())).collect()
    } else {
        export
            .field_mappings
            .iter()
            .map(|m| (m.source_field.clone(), m.target_field.clone()))
            .collect()
    };
    let added_key = !pairs.iter().any(|(source, _)| *source == entity.primary_key)
        && (incremental || remember_members || !export::added_key_columns(export, std::iter::once(&entity)).is_empty());
    if added_key {
        pairs.insert(0, (entity.primary_key.clone(), entity.primary_key.clone()));
    }
    let complete = match &source {
        Source::SegmentChanges { since, .. } => *since == 0,
        _ => true,
    };
    let primary_key = pairs
        .iter()
        .find(|(source, _)| *source == entity.primary_key)
        .map(|(_, target)| target.clone())
        .unwrap_or_default();
    Part {
        schema: PartSchema {
            id: segment.name.id.clone(),
            source: segment.name.to_string(),
            description: segment.display_name.clone(),
            primary_key,
            columns: pairs
                .iter()
                .map(|(source, target)| column_of(&entity, source, target))
                .collect(),
            incremental,
            added_key,
            estimated_records: segment.member_count.max(0) as u64,
            complete,
        },
        fields: pairs.into_iter().map(|(source, _)| source).collect(),
        key_field: entity.primary_key.clone(),
        source,
        remember_members,
    }
}

/// Batches of a part's rows (with how many records each read), or why reading stopped.
pub(super) type Batches = mpsc::Receiver<crate::error::Result<(usize, Batch)>>;

/// Reads a part's rows in the order a run sends them, in a task of its own, through a bounded
/// channel. Phase 0 reads the records; incremental segment parts then (phase 1) the members
/// who left; incremental parts last (phase 2) the outstanding rejects that did not change
/// (PRODUCT.md §12: they are sent again in every sync mode).
pub(super) fn spawn_reader(store: Arc<crate::store::Store>, part: Part) -> (tokio::task::JoinHandle<()>, Batches) {
    let (tx, rx) = mpsc::channel::<crate::error::Result<(usize, Batch)>>(2);
    let key_column = part.key_column();
    let incremental = part.schema.incremental;
    let reader = tokio::spawn(async move {
        for phase in 0..3 {
            let mut after: Option<String> = None;
            loop {
                let batch = read_rows(
                    &store,
                    &part.source,
                    phase,
                    after.as_deref(),
                    &part.fields,
                    key_column,
                    incremental,
                );
                let (read, rows, last_key) = match batch.await {
                    Ok(batch) => batch,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                if read == 0 {
                    break;
                }
                after = last_key;
                if tx.send(Ok((read, rows))).await.is_err() {
                    return;
                }
            }
        }
    });
    (reader, rx)
}

/// A batch on its way from the reader to the sink: rows, or a full export's stored documents,
/// which the writing side parses so that the reader is already fetching the next batch.
pub(super) enum Batch {
    Rows(Vec<Vec<Value>>),
    Documents(DocumentBatch),
}

impl Batch {
    pub(super) fn into_rows(self, fields: &[String], incremental: bool) -> crate::error::Result<Vec<Vec<Value>>> {
        match self {
            Batch::Rows(rows) => Ok(rows),
            Batch::Documents(documents) => {
                let mut rows = documents.rows(fields)?;
                if incremental {
                    // The first delivery of an incremental export: every record, none deleted.
                    for row in &mut rows {
                        row.push(Value::Bool(false));
                    }
                }
                Ok(rows)
            }
        }
    }
}

/// The next batch of a part's rows after `after` (keyset order): how many records were read,
/// the batch, and the last key. Full exports of an entity read stored documents directly (no
/// record maps).
async fn read_rows(
    store: &crate::store::Store,
    source: &Source,
    phase: u8,
    after: Option<&str>,
    fields: &[String],
    key_column: Option<usize>,
    incremental: bool,
) -> crate::error::Result<(usize, Batch, Option<String>)> {
    if let (
        Source::Entity {
            entity, since: None, ..
        },
        0,
    ) = (source, phase)
    {
        let mut batch = store.read_record_documents(&entity.name, after, BATCH).await?;
        let last_key = batch.last_key.take();
        return Ok((batch.count, Batch::Documents(batch), last_key));
    }
    if let (Source::Segment { segment }, 0) = (source, phase) {
        let mut batch = store.read_member_documents(segment, after, BATCH).await?;
        let last_key = batch.last_key.take();
        return Ok((batch.count, Batch::Documents(batch), last_key));
    }
    let records = read_batch(store, source, phase, after).await?;
    let last_key = records.last().map(|r| r.key.clone());
    Ok((
        records.len(),
        Batch::Rows(rows_of(records, fields, key_column, incremental)),
        last_key,
    ))
}

/// The next batch of a part's source after `after` (keyset order). Phase 1 exists only for
/// incremental segment parts: the members who left, as key-only deletions.
async fn read_batch(
    store: &crate::store::Store,
    source: &Source,
    phase: u8,
    after: Option<&str>,
) -> crate::error::Result<Vec<StoredRecord>> {
    match (source, phase) {
        // (Full exports of an entity or a segment are read as documents by `read_rows`.)
        // Incremental: everything written since the last delivery, tombstones included.
        (
            Source::Entity {
                entity,
                since: Some(since),
                until,
                ..
            },
            0,
        ) => store.read_changes(&entity.name, *since, *until, after, BATCH).await,
        (
            Source::SegmentChanges {
                segment,
                export,
                since,
                members,
            },
            0,
        ) => {
            store
                .joined_or_changed_members(export, segment, *members, *since, after, BATCH)
                .await
        }
        (
            Source::SegmentChanges {
                segment,
                export,
                members,
                ..
            },
            1,
        )
        | (
            Source::SegmentMirror {
                segment,
                export,
                members,
            },
            1,
        ) => left(store.left_members(export, segment, *members, after, BATCH).await?),
        (
            Source::SegmentMirror {
                segment,
                export,
                members,
            },
            0,
        ) => store.joined_members(export, segment, *members, after, BATCH).await,
        // MIRROR: outstanding rejects of members delivered before (a refused update of a FULL
        // run); refused joiners and leavers are joiners and leavers again.
        (
            Source::SegmentMirror {
                segment,
                export,
                members,
            },
            2,
        ) => {
            store
                .outstanding_unchanged_members(export, segment, *members, i64::MAX, after, BATCH)
                .await
        }
        // Incremental: outstanding rejects the changes above did not include.
        (
            Source::Entity {
                entity,
                since: Some(since),
                export,
                ..
            },
            2,
        ) => {
            store
                .outstanding_unchanged_records(export, &entity.name, *since, after, BATCH)
                .await
        }
        (
            Source::SegmentChanges {
                segment,
                export,
                since,
                members,
            },
            2,
        ) => {
            store
                .outstanding_unchanged_members(export, segment, *members, *since, after, BATCH)
                .await
        }
        _ => Ok(Vec::new()),
    }
}

/// Members who left, as deletions carrying the fields they were delivered with, if known.
fn left(keys: Vec<(String, Option<String>)>) -> crate::error::Result<Vec<StoredRecord>> {
    Ok(keys
        .into_iter()
        .map(|(key, sent)| StoredRecord {
            data: match sent.as_deref().map(serde_json::from_str::<Value>) {
                Some(Ok(Value::Object(fields))) => fields,
                _ => Default::default(),
            },
            key,
            seq: 0,
            deleted: true,
        })
        .collect())
}

/// Rows in column order (then `_deleted` for incremental parts). A deletion keeps only its key.
fn rows_of(
    records: Vec<StoredRecord>,
    fields: &[String],
    key_column: Option<usize>,
    incremental: bool,
) -> Vec<Vec<Value>> {
    records
        .into_iter()
        .map(|mut r| {
            let mut row: Vec<Value> = if r.deleted {
                // A deletion carries its key, and the fields it was delivered with where they
                // were kept (members who left an audience).
                let mut row: Vec<Value> = fields.iter().map(|f| r.data.remove(f).unwrap_or(Value::Null)).collect();
                if let Some(i) = key_column {
                    row[i] = Value::String(std::mem::take(&mut r.key));
                }
                row
            } else {
                fields.iter().map(|f| r.data.remove(f).unwrap_or(Value::Null)).collect()
            };
            if incremental {
                row.push(Value::Bool(r.deleted));
            }
            row
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_members_sent_fields_are_the_json_object_of_its_row() {
        let fields: Vec<String> = ["id", "email", "Zone", "ltv", "tags", "note\"q"]
            .map(String::from)
            .into();
        let memory = Memory {
            export: ExportName::parse("export", "environments/acme/exports/news").unwrap(),
            segment: "vip".into(),
            sent_fields: sent_fields(&fields),
            key_column: Some(0),
            deleted_column: Some(fields.len()),
        };
        let row = vec![
            json!("c1"),
            json!("Ann@Example.com"),
            Value::Null,
            json!(3.5),
            json!(["a", {"b": 1}]),
            json!("say \"hi\"\n"),
            json!(false),
        ];
        let (added, removed) = memory.keys_of(std::slice::from_ref(&row));
        let object: serde_json::Map<String, Value> = fields.iter().cloned().zip(row.iter().cloned()).collect();
        assert_eq!(added, [("c1".to_string(), Value::Object(object).to_string())]);
        assert!(removed.is_empty());
    }
}
