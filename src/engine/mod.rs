//! The engine: everything that happens after a request has been accepted — segment
//! recomputation, system refreshes, and (with the run engine) the scheduler, the durable run
//! queue and the executor pool.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::config::Settings;
use crate::store::Store;

pub mod retry;
pub mod segments;
pub mod system_refresh;

pub struct Engine {
    pub store: Arc<Store>,
    pub settings: Arc<Settings>,
    /// One recomputation of a segment at a time (per process).
    segment_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Flips to true when the process is shutting down; background work stops at a safe point.
    shutdown: watch::Sender<bool>,
}

impl Engine {
    pub fn new(store: Arc<Store>, settings: Arc<Settings>) -> Arc<Engine> {
        let (shutdown, _) = watch::channel(false);
        Arc::new(Engine {
            store,
            settings,
            segment_locks: Mutex::new(HashMap::new()),
            shutdown,
        })
    }

    /// Starts background work: resumes system refreshes a previous process left running.
    pub async fn start(self: &Arc<Self>) -> crate::error::Result<()> {
        for refresh in self.store.running_system_refreshes().await? {
            tracing::info!(refresh = %refresh.name, "resuming a system refresh left running");
            self.spawn_system_refresh(refresh.name);
        }
        Ok(())
    }

    pub fn stop(&self) {
        let _ = self.shutdown.send(true);
    }

    pub fn is_stopping(&self) -> bool {
        *self.shutdown.borrow()
    }

    fn segment_lock(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.segment_locks.lock().expect("segment lock table");
        locks.entry(key.to_string()).or_default().clone()
    }
}
