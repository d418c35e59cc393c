//! The run RPCs of ExportService: RunExport, RunAllExports, ListExportRuns, GetExportRun,
//! WatchExportRun and CancelExportRun. A run is recorded (a row) before this returns; workers
//! execute it.

use prost::Message;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use std::collections::HashSet;

use super::{State, convert, pages};
use crate::auth::policy::{self, Action, Facts};
use crate::auth::{Principal, Role};
use crate::domain::export::ExportState;
use crate::domain::list_query::{FieldKind, FilterField, OrderKey, parse_filter, parse_order_by};
use crate::domain::names::{ConnectionName, EnvironmentName, ExportName, RunName, RunParent};
use crate::domain::paging;
use crate::domain::run::{Run, RunState, RunTrigger};
use crate::error::{Error, Result};
use crate::pb;
use crate::store::Store;
use crate::store::exports::StoredExport;
use crate::store::request_ids::{self, RequestKey};
use crate::store::runs::RunQuery;

const FILTER_FIELDS: &[FilterField] = &[
    FilterField {
        name: "state",
        kind: FieldKind::Keyword,
        allowed: RunState::NAMES,
    },
    FilterField {
        name: "trigger",
        kind: FieldKind::Keyword,
        allowed: RunTrigger::NAMES,
    },
    FilterField {
        name: "create_time",
        kind: FieldKind::Time,
        allowed: &[],
    },
];
const ENUM_PREFIXES: &[(&str, &str)] = &[("state", "RUN_STATE_"), ("trigger", "RUN_TRIGGER_")];

pub struct Runs {
    state: State,
}

impl Runs {
    pub fn new(state: State) -> Self {
        Runs { state }
    }

    /// Loads an export for a run action, with the policy's verdict for this caller.
    async fn export_for(&self, principal: &Principal, name: &ExportName, action: Action) -> Result<StoredExport> {
        policy::role_in(principal, &name.env)?;
        let stored = self.state.store.export_or_not_found(name).await?;
        policy::authorize(
            principal,
            &name.env,
            action,
            Facts::export(stored.editable_by_contributors()),
        )
        .map_err(|e| e.with_meta("export", name.to_string()))?;
        Ok(stored)
    }

    pub async fn run_export(&self, principal: Principal, request: pb::RunExportRequest) -> Result<pb::ExportRun> {
        let name = ExportName::parse("name", &request.name)?;
        request_ids::check_format(&request.request_id)?;
        let stored = self.export_for(&principal, &name, Action::RunExport).await?;
        if stored.export.state == ExportState::Detached || stored.connection.is_none() {
            return Err(Error::precondition(
                "EXPORT_DETACHED",
                format!("export '{name}' has no connection (detached); attach one before running it"),
            )
            .with_meta("export", name.to_string())
            .with_precondition("EXPORT_DETACHED", name.to_string(), "the export has no connection"));
        }
        let waiting = self.state.engine.refreshing_dependencies(&stored.export).await?;
        let hash = request_ids::request_hash(&request.encode_to_vec());
        let key = RequestKey::given("RunExport", &request.request_id, &hash);
        let run = self
            .state
            .store
            .create_run(&name, RunTrigger::Manual, &waiting, key)
            .await?;
        tracing::info!(run = %run.name, state = run.state.as_str(), "run requested");
        self.state.engine.wake_workers();
        let role = policy::role_in(&principal, &name.env)?;
        show_one(&self.state.store, role, &run).await
    }

    /// Runs every export whose schedule is on and that has no active run; contributors only
    /// those they may edit. Exports with schedule off are left out.
    pub async fn run_all(
        &self,
        principal: Principal,
        request: pb::RunAllExportsRequest,
    ) -> Result<pb::RunAllExportsResponse> {
        let parent = EnvironmentName::parse("parent", &request.parent)?;
        let role = policy::authorize(&principal, &parent.env, Action::RunAllExports, Facts::default())?;
        let mut created = Vec::new();
        if self.state.store.get_environment(&parent.env).await?.is_none() {
            return Err(Error::not_found("environment", parent.to_string()));
        }
        for stored in self.state.store.all_exports(&parent.env).await? {
            let export = &stored.export;
            if !export.schedule.enabled || export.state != ExportState::Active || stored.connection.is_none() {
                continue;
            }
            if !policy::may_edit_export(role, stored.editable_by_contributors()) {
                continue;
            }
            if self.state.store.active_run(&export.name).await?.is_some() {
                continue;
            }
            let waiting = self.state.engine.refreshing_dependencies(export).await?;
            match self
                .state
                .store
                .create_run(&export.name, RunTrigger::RunAll, &waiting, None)
                .await
            {
                Ok(run) => created.push(run),
                // A run started meanwhile (another caller, a schedule): leave this one out.
                Err(e) if e.reason == "RUN_ACTIVE" => {}
                Err(e) => return Err(e),
            }
        }
        tracing::info!(env = %parent.env, runs = created.len(), "run all");
        self.state.engine.wake_workers();
        let started_count = created.len().min(i32::MAX as usize) as i32;
        let mut runs = show(&self.state.store, role, &created).await?;
        pages::fit(&mut runs);
        Ok(pb::RunAllExportsResponse { runs, started_count })
    }

    pub async fn list(
        &self,
        principal: Principal,
        request: pb::ListExportRunsRequest,
    ) -> Result<pb::ListExportRunsResponse> {
        let parent = RunParent::parse("parent", &request.parent)?;
        let role = policy::authorize(&principal, &parent.env, Action::ListExportRuns, Facts::default())?;
        let filter = parse_filter(&request.filter, FILTER_FIELDS, ENUM_PREFIXES)
            .map_err(|e| Error::invalid("filter", e.to_string()))?;
        // Newest first unless asked otherwise.
        let order = if request.order_by.trim().is_empty() {
            vec![OrderKey {
                field: "create_time".into(),
                desc: true,
            }]
        } else {
            parse_order_by(&request.order_by, &["create_time"], "create_time")
                .map_err(|e| Error::invalid("order_by", e.to_string()))?
        };
        let fingerprint = paging::fingerprint(&[&request.parent, &request.filter, &request.order_by]);
        let page = paging::parse(request.page_size, &request.page_token, &fingerprint)?;
        if let Some(export) = &parent.export {
            self.state
                .store
                .export_or_not_found(&ExportName::new(&parent.env, export))
                .await?;
        } else if self.state.store.get_environment(&parent.env).await?.is_none() {
            return Err(Error::not_found("environment", format!("environments/{}", parent.env)));
        }
        let query = RunQuery {
            env: &parent.env,
            export: parent.export.as_deref(),
            filter: filter.as_ref(),
            order: &order,
            page,
        };
        let (runs, total) = self.state.store.list_runs(&query).await?;
        let mut runs = show(&self.state.store, role, &runs).await?;
        pages::fit(&mut runs);
        Ok(pb::ListExportRunsResponse {
            next_page_token: paging::next_token(page, runs.len(), total, &fingerprint),
            runs,
        })
    }

    pub async fn get(&self, principal: Principal, request: pb::GetExportRunRequest) -> Result<pb::ExportRun> {
        let name = RunName::parse("name", &request.name)?;
        let role = policy::authorize(&principal, &name.env, Action::GetExportRun, Facts::default())?;
        let run = self.state.store.run_or_not_found(&name).await?;
        show_one(&self.state.store, role, &run).await
    }

    pub async fn cancel(&self, principal: Principal, request: pb::CancelExportRunRequest) -> Result<pb::ExportRun> {
        let name = RunName::parse("name", &request.name)?;
        self.state.store.run_or_not_found(&name).await.or_else(|e| {
            // Without a role, even the run's existence is not told.
            policy::role_in(&principal, &name.env)?;
            Err(e)
        })?;
        self.export_for(&principal, &name.export_name(), Action::CancelExportRun)
            .await?;
        let run = self.state.engine.cancel_run(&name).await?;
        tracing::info!(run = %name, state = run.state.as_str(), "run cancellation requested");
        let role = policy::role_in(&principal, &name.env)?;
        show_one(&self.state.store, role, &run).await
    }

    /// The run as it is now, then each change; the stream ends after the terminal state.
    pub async fn watch(
        &self,
        principal: Principal,
        request: pb::WatchExportRunRequest,
    ) -> Result<ReceiverStream<std::result::Result<pb::ExportRun, Status>>> {
        let name = RunName::parse("name", &request.name)?;
        let role = policy::authorize(&principal, &name.env, Action::WatchExportRun, Facts::default())?;
        let mut subscription = self.state.engine.watch_run(&name).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let engine = self.state.engine.clone();
        let store = self.state.store.clone();
        tokio::spawn(async move {
            loop {
                let run = subscription.borrow_and_update().clone();
                let terminal = run.state.is_terminal();
                let shown = show_one(&store, role, &run).await.map_err(super::status::to_status);
                if tx.send(shown).await.is_err() || terminal {
                    return;
                }
                tokio::select! {
                    changed = subscription.changed() => {
                        if changed.is_err() {
                            // The reader stopped (the server is stopping, or the run vanished).
                            let _ = tx.send(Err(super::status::to_status(Error::unavailable("WATCH_ENDED", "the run can no longer be watched here; watch again")))).await;
                            return;
                        }
                    }
                    _ = engine.stopping() => {
                        let _ = tx.send(Err(super::status::to_status(Error::unavailable("SHUTTING_DOWN", "the server is shutting down; watch again")))).await;
                        return;
                    }
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(ReceiverStream::new(rx))
    }
}

/// Which connections a caller may see, among those that run messages name.
enum SeenConnections {
    All,
    Shared(HashSet<String>),
}

impl SeenConnections {
    /// Admins see every connection; others those shared with contributors (read as they are
    /// now, so un-sharing a connection hides what its runs said about it).
    async fn of(store: &Store, role: Role, runs: &[Run]) -> Result<SeenConnections> {
        if policy::can_see_connection(role, false) {
            return Ok(SeenConnections::All);
        }
        let named: HashSet<&str> = runs
            .iter()
            .flat_map(|run| run.tasks.iter())
            .filter_map(|task| task.detail.as_ref().map(|d| d.connection.as_str()))
            .collect();
        let mut shared = HashSet::new();
        for text in named {
            let Ok(name) = ConnectionName::parse("connection", text) else {
                continue;
            };
            if let Some(connection) = store.get_connection(&name).await?
                && policy::can_see_connection(role, connection.contributors_can_use)
            {
                shared.insert(text.to_string());
            }
        }
        Ok(SeenConnections::Shared(shared))
    }

    fn may_see(&self, connection: &str) -> bool {
        match self {
            SeenConnections::All => true,
            SeenConnections::Shared(names) => names.contains(connection),
        }
    }
}

/// Runs as `role` may read them: what a message says about where a connection wrote, only to
/// callers who may see that connection.
async fn show(store: &Store, role: Role, runs: &[Run]) -> Result<Vec<pb::ExportRun>> {
    let seen = SeenConnections::of(store, role, runs).await?;
    Ok(runs.iter().map(|run| convert::run(run, &|c| seen.may_see(c))).collect())
}

async fn show_one(store: &Store, role: Role, run: &Run) -> Result<pb::ExportRun> {
    let seen = SeenConnections::of(store, role, std::slice::from_ref(run)).await?;
    Ok(convert::run(run, &|c| seen.may_see(c)))
}
