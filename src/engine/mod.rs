//! The engine: everything that happens after a request has been accepted — segment
//! recomputation, system refreshes, the scheduler, the durable run queue and the executor pool.
//!
//! ```text
//! scheduler ─(due schedules, completed system refreshes)─▶ runs table (the durable queue)
//! executor pool ─(claim with lease + heartbeat)─▶ pipeline: source → mapping → connector sink
//!    ─▶ progress written to the run row ─▶ WatchExportRun streams it
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, broadcast, watch};

use crate::config::Settings;
use crate::domain::names::generate_id;
use crate::store::Store;

mod alert_delivery;
mod audit_retention;
pub mod batching;
pub mod dependencies;
pub mod executor;
mod in_flight;
pub mod pipeline;
pub mod preview;
pub mod run_metrics;
pub mod run_watch;
pub mod scheduler;
pub mod segments;
pub mod system_refresh;

pub struct Engine {
    pub store: Arc<Store>,
    pub settings: Arc<Settings>,
    /// This process, as lease owner (workers append their number).
    pub instance: String,
    /// Batches of rule evaluation running at once on the blocking pool (segments.rs).
    rule_permits: tokio::sync::Semaphore,
    /// One recomputation of a segment at a time (per process).
    segment_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Flips to true when the process is shutting down; background work stops at a safe point.
    shutdown: watch::Sender<bool>,
    /// Wakes idle workers when a run is queued.
    work: Notify,
    /// Wakes the scheduler when a schedule changes.
    schedules_changed: Notify,
    /// Names of runs that just changed, for watchers in this process.
    run_changes: broadcast::Sender<String>,
    /// Cancellation signals of the runs this process is executing.
    running: Mutex<HashMap<String, watch::Sender<bool>>>,
    /// Runs being watched, by name (one reader per run, however many watchers).
    watches: Mutex<HashMap<String, watch::Receiver<crate::domain::run::Run>>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Engine {
    pub fn new(store: Arc<Store>, settings: Arc<Settings>) -> Arc<Engine> {
        let (shutdown, _) = watch::channel(false);
        let (run_changes, _) = broadcast::channel(1024);
        Arc::new(Engine {
            rule_permits: tokio::sync::Semaphore::new(settings.rule_evaluation_threads.max(1)),
            store,
            settings,
            instance: generate_id("exportd"),
            segment_locks: Mutex::new(HashMap::new()),
            shutdown,
            work: Notify::new(),
            schedules_changed: Notify::new(),
            run_changes,
            running: Mutex::new(HashMap::new()),
            watches: Mutex::new(HashMap::new()),
            tasks: Mutex::new(Vec::new()),
        })
    }

    /// Starts background work: resumes system refreshes a previous process left running,
    /// starts catch-up runs a crash left pending, and starts the workers and the scheduler.
    pub async fn start(self: &Arc<Self>) -> crate::error::Result<()> {
        for refresh in self.store.running_system_refreshes().await? {
            tracing::info!(refresh = %refresh.name, "resuming a system refresh left running");
            self.spawn_system_refresh(refresh.name);
        }
        for run in self.store.start_pending_catch_ups().await? {
            tracing::info!(run = %run.name, "started a catch-up run left pending");
        }
        let mut tasks = self.tasks.lock().expect("task list");
        for worker in 0..self.settings.workers {
            tasks.push(tokio::spawn(self.clone().worker_loop(worker)));
        }
        tasks.push(tokio::spawn(self.clone().scheduler_loop()));
        tasks.push(tokio::spawn(self.clone().audit_retention_loop()));
        tasks.push(tokio::spawn(self.clone().alert_delivery_loop()));
        Ok(())
    }

    /// Asks background work to stop and waits (bounded) for running pipelines to reach a safe
    /// point. Runs that do not finish keep their rows; their leases expire and another process
    /// (or this one, restarted) takes them over.
    pub async fn stop(&self, grace: Duration) {
        let _ = self.shutdown.send(true);
        self.work.notify_waiters();
        self.schedules_changed.notify_waiters();
        let tasks: Vec<_> = self.tasks.lock().expect("task list").drain(..).collect();
        let all = futures::future::join_all(tasks);
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!("background work did not stop within the grace period");
        }
    }

    pub fn is_stopping(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Resolves when shutdown begins.
    pub async fn stopping(&self) {
        let mut receiver = self.shutdown.subscribe();
        let _ = receiver.wait_for(|s| *s).await;
    }

    fn segment_lock(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.segment_locks.lock().expect("segment lock table");
        locks.entry(key.to_string()).or_default().clone()
    }

    /// A run was queued: idle workers look for it.
    pub fn wake_workers(&self) {
        self.work.notify_waiters();
    }

    /// A schedule changed: the scheduler recomputes when to wake.
    pub fn schedules_changed(&self) {
        self.schedules_changed.notify_waiters();
    }

    /// Tells watchers in this process that a run changed.
    pub fn run_changed(&self, run: &str) {
        let _ = self.run_changes.send(run.to_string());
    }

    pub fn subscribe_run_changes(&self) -> broadcast::Receiver<String> {
        self.run_changes.subscribe()
    }

    /// Signals the pipeline of a run executing in this process to stop (cancellation).
    pub fn signal_cancel(&self, run: &str) {
        if let Some(signal) = self.running.lock().expect("running table").get(run) {
            let _ = signal.send(true);
        }
    }
}
