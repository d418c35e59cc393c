//! Per-connection pacing of API requests (PRODUCT.md §11: "a per-connection rate limit, the
//! vendor's published limits as defaults"): a token bucket for requests per second and a cap on
//! requests in flight, shared by every run of one connection in this process — two exports over
//! one Mailchimp key still open at most ten connections between them.
//!
//! A small bucket of our own rather than `governor`: one `Mutex<Instant>` schedule (the time
//! the next request may start, GCRA-style) is all that is needed, and waits are plain Tokio
//! sleeps, so a cancelled run stops waiting at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How fast and how wide one connection may talk to its vendor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pace {
    /// Requests started per second, on average (None: unlimited).
    pub requests_per_second: Option<f64>,
    /// Requests in flight at once.
    pub concurrency: usize,
}

/// The pacing of one connection: share it through [`gate_for`].
pub struct Gate {
    pace: Pace,
    in_flight: Arc<Semaphore>,
    /// The theoretical arrival time of the next request.
    next_start: Mutex<Instant>,
}

/// Held while a request is in flight.
pub struct Pass {
    _permit: OwnedSemaphorePermit,
}

impl Gate {
    pub fn new(pace: Pace) -> Gate {
        let concurrency = pace.concurrency.max(1);
        Gate {
            pace: Pace { concurrency, ..pace },
            in_flight: Arc::new(Semaphore::new(concurrency)),
            next_start: Mutex::new(Instant::now()),
        }
    }

    pub fn pace(&self) -> Pace {
        self.pace
    }

    /// Waits for a free slot and for the rate to allow another request.
    pub async fn pass(&self) -> Pass {
        let permit = self
            .in_flight
            .clone()
            .acquire_owned()
            .await
            .expect("the gate's semaphore is never closed");
        if let Some(wait) = self.reserve(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
        Pass { _permit: permit }
    }

    /// Takes the next start time (GCRA: a theoretical arrival time that each request moves on
    /// by one interval, and that may run ahead of the clock by up to the burst); how long to
    /// wait for it, if at all.
    fn reserve(&self, now: Instant) -> Option<Duration> {
        let rate = self.pace.requests_per_second.filter(|r| *r > 0.0)?;
        let interval = Duration::from_secs_f64(1.0 / rate);
        // A connection idle for a while may start a second's worth of requests at once.
        let tolerance = Duration::from_secs(1).saturating_sub(interval);
        let mut arrival = self.next_start.lock().expect("the gate's clock is never poisoned");
        let due = (*arrival).max(now);
        *arrival = due + interval;
        (due.checked_sub(tolerance).unwrap_or(now))
            .checked_duration_since(now)
            .filter(|d| !d.is_zero())
    }
}

/// The gate of a connection (by its resource name), made with `pace` the first time and kept
/// for the process; a changed pace (the connection was updated) makes a new one.
pub fn gate_for(connection: &str, pace: Pace) -> Arc<Gate> {
    static GATES: OnceLock<Mutex<HashMap<String, Arc<Gate>>>> = OnceLock::new();
    let mut gates = GATES
        .get_or_init(Default::default)
        .lock()
        .expect("the gates map is never poisoned");
    match gates.get(connection) {
        Some(gate) if gate.pace == pace => gate.clone(),
        _ => {
            let gate = Arc::new(Gate::new(pace));
            gates.insert(connection.to_string(), gate.clone());
            gate
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_spaces_requests_after_a_one_second_burst() {
        let gate = Gate::new(Pace {
            requests_per_second: Some(10.0),
            concurrency: 1,
        });
        let now = Instant::now();
        // The bucket starts full: ten requests at once, then one each 100 ms.
        let waits: Vec<Option<Duration>> = (0..12).map(|_| gate.reserve(now)).collect();
        assert!(waits[..10].iter().all(Option::is_none), "{waits:?}");
        assert_eq!(waits[10], Some(Duration::from_millis(100)));
        assert_eq!(waits[11], Some(Duration::from_millis(200)));
    }

    #[test]
    fn without_a_rate_nothing_waits() {
        let gate = Gate::new(Pace {
            requests_per_second: None,
            concurrency: 3,
        });
        assert!((0..100).all(|_| gate.reserve(Instant::now()).is_none()));
    }

    #[tokio::test]
    async fn at_most_concurrency_requests_are_in_flight() {
        let gate = Gate::new(Pace {
            requests_per_second: None,
            concurrency: 2,
        });
        let a = gate.pass().await;
        let _b = gate.pass().await;
        assert!(
            tokio::time::timeout(Duration::from_millis(50), gate.pass())
                .await
                .is_err(),
            "a third waits"
        );
        drop(a);
        let _c = tokio::time::timeout(Duration::from_secs(5), gate.pass())
            .await
            .expect("a slot came free");
    }

    #[test]
    fn one_gate_per_connection_and_pace() {
        let pace = Pace {
            requests_per_second: Some(5.0),
            concurrency: 4,
        };
        let a = gate_for("environments/x/connections/a", pace);
        assert!(Arc::ptr_eq(&a, &gate_for("environments/x/connections/a", pace)));
        assert!(!Arc::ptr_eq(&a, &gate_for("environments/x/connections/b", pace)));
        let wider = Pace { concurrency: 8, ..pace };
        assert_eq!(gate_for("environments/x/connections/a", wider).pace(), wider);
    }
}
