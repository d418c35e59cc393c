//! The batches of a part whose requests are out: at most the sink's `concurrency` at once, each
//! its own task (so it makes progress while the pipeline reads, prepares the next batch or
//! takes an earlier answer), answered in the order they come back — a sliding window, not
//! lock-step groups, so that one slow request holds only its own slot. Dropping the window
//! stops whatever is still out.

use std::future::Future;

use tokio::task::JoinSet;

pub struct InFlight<O> {
    width: usize,
    requests: JoinSet<O>,
}

impl<O: Send + 'static> InFlight<O> {
    pub fn new(width: usize) -> InFlight<O> {
        InFlight {
            width: width.max(1),
            requests: JoinSet::new(),
        }
    }

    /// Room for `more` requests without going over the width (a part's final batches, started
    /// together, may need more than is left: then the window empties first).
    pub fn has_room_for(&self, more: usize) -> bool {
        self.requests.is_empty() || self.requests.len() + more <= self.width
    }

    pub fn start(&mut self, request: impl Future<Output = O> + Send + 'static) {
        self.requests.spawn(request);
    }

    /// The next answer to come back; `None` when nothing is out. `Err`: the request's task
    /// panicked (what it had not recorded counts as not delivered), with what it said.
    pub async fn next(&mut self) -> Option<Result<O, String>> {
        self.requests.join_next().await.map(settled)
    }

    /// An answer that is already back, without waiting.
    pub fn ready(&mut self) -> Option<Result<O, String>> {
        self.requests.try_join_next().map(settled)
    }
}

fn settled<O>(joined: Result<O, tokio::task::JoinError>) -> Result<O, String> {
    joined.map_err(|e| format!("the request for a batch stopped unexpectedly ({e})"))
}
