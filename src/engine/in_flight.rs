//! The batches of a part whose requests are out: at most the sink's `concurrency` at once, each
//! its own task (so it makes progress while the pipeline reads, prepares the next batch or
//! stores an earlier answer), answered in the order they come back — a sliding window, not
//! lock-step groups, so that one slow request holds only its own slot. Dropping the window
//! stops whatever is still out.

use std::collections::HashMap;

use tokio::task::{Id, JoinError, JoinSet};

use crate::connectors::retry::Failure;
use crate::connectors::{BatchRequest, Delivery};

/// A batch's answer, with what the pipeline kept of the batch to settle it (`T`).
pub type Answer<T> = (Result<Delivery, Failure>, T);

pub struct InFlight<T> {
    width: usize,
    requests: JoinSet<Result<Delivery, Failure>>,
    /// Kept here rather than in the task, so that a request that panicked still gives it back.
    kept: HashMap<Id, T>,
}

impl<T: Send + 'static> InFlight<T> {
    pub fn new(width: usize) -> InFlight<T> {
        InFlight {
            width: width.max(1),
            requests: JoinSet::new(),
            kept: HashMap::new(),
        }
    }

    /// Room for `more` requests without going over the width (a part's final batches, started
    /// together, may need more than is left: then the window empties first).
    pub fn has_room_for(&self, more: usize) -> bool {
        self.requests.is_empty() || self.requests.len() + more <= self.width
    }

    pub fn start(&mut self, request: BatchRequest, kept: T) {
        let id = self.requests.spawn(request).id();
        self.kept.insert(id, kept);
    }

    /// The next answer to come back; `None` when nothing is out.
    pub async fn next(&mut self) -> Option<Answer<T>> {
        let joined = self.requests.join_next_with_id().await?;
        Some(self.settled(joined))
    }

    /// An answer that is already back, without waiting.
    pub fn ready(&mut self) -> Option<Answer<T>> {
        let joined = self.requests.try_join_next_with_id()?;
        Some(self.settled(joined))
    }

    /// A request task that panicked is a failed batch (never a lost one: its members were not
    /// confirmed, so they count as not delivered).
    fn settled(&mut self, joined: Result<(Id, Result<Delivery, Failure>), JoinError>) -> Answer<T> {
        let (id, answer) = match joined {
            Ok((id, answer)) => (id, answer),
            Err(e) => (
                e.id(),
                Err(Failure::Permanent {
                    message: format!("the request for a batch stopped unexpectedly ({e})"),
                }),
            ),
        };
        let kept = self.kept.remove(&id).expect("every request started is kept");
        (answer, kept)
    }
}
