//! Retries of transient target errors with exponential backoff and full jitter, honouring a
//! target's `Retry-After`; permanent errors end at once. Shared by every connector.

use std::future::Future;
use std::time::Duration;

use rand::Rng;

/// How a target error should be treated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Timeouts, HTTP 429/5xx, connection resets: worth another try, after `retry_after` when
    /// the target said so.
    Transient {
        message: String,
        retry_after: Option<Duration>,
    },
    /// Anything else: bad credentials, missing bucket, refused payload.
    Permanent { message: String },
    /// The connection type has no connector in this version (never retried).
    Unsupported { message: String },
}

impl Failure {
    pub fn message(&self) -> &str {
        match self {
            Failure::Transient { message, .. } | Failure::Permanent { message } | Failure::Unsupported { message } => {
                message
            }
        }
    }
}

/// PRODUCT.md §11: at most 6 attempts within 120 s per request.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// No retry starts later than this after the first attempt.
    pub within: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(30),
            within: Duration::from_secs(120),
        }
    }
}

impl RetryPolicy {
    /// The pause before retry number `retry` (1-based): a random duration up to the exponential
    /// bound ("full jitter"), but never shorter than what the target asked for.
    pub fn delay(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        let exponential = self.base_delay.saturating_mul(1u32 << retry.saturating_sub(1).min(16));
        let bound = exponential.min(self.max_delay);
        let jittered = Duration::from_secs_f64(rand::thread_rng().gen_range(0.0..=bound.as_secs_f64()));
        match retry_after {
            Some(asked) => jittered.max(asked.min(Duration::from_secs(300))),
            None => jittered,
        }
    }
}

/// Where a retry loop stands: the attempts made and the time spent, so that the loop stays
/// within its policy. Callers that cannot pass a closure to [`retry`] (an operation on
/// `&mut self`) drive one of these themselves.
pub struct Attempts {
    policy: RetryPolicy,
    /// The connection type whose retries are counted (`exportd_target_retries_total`).
    connection_type: Option<&'static str>,
    made: u32,
    started: std::time::Instant,
    /// Time spent waiting, counted even when `wait` does not really sleep (tests).
    waited: Duration,
}

impl Attempts {
    pub fn new(policy: RetryPolicy) -> Attempts {
        Attempts {
            policy,
            connection_type: None,
            made: 1,
            started: std::time::Instant::now(),
            waited: Duration::ZERO,
        }
    }

    /// Counts each retry in the metrics under `connection_type`.
    pub fn of_target(mut self, connection_type: &'static str) -> Attempts {
        self.connection_type = Some(connection_type);
        self
    }

    /// The attempts made so far (1 while the first runs).
    pub fn made(&self) -> u32 {
        self.made
    }

    /// After a failed attempt: how long to wait before the next, or `None` when the failure is
    /// final (permanent, unsupported, or the attempts or the time are used up).
    pub fn next(&mut self, failure: &Failure) -> Option<Duration> {
        let Failure::Transient { retry_after, message } = failure else {
            return None;
        };
        if self.made >= self.policy.max_attempts {
            return None;
        }
        let wait = self.policy.delay(self.made, *retry_after);
        let spent = self.started.elapsed().max(self.waited);
        if spent + wait > self.policy.within {
            return None;
        }
        tracing::debug!(attempt = self.made, %message, "transient target error; retrying");
        if let Some(connection_type) = self.connection_type {
            let reason = if retry_after.is_some() {
                "throttled"
            } else {
                "connection"
            };
            crate::metrics::target_retry(connection_type, reason);
        }
        self.made += 1;
        self.waited += wait;
        Some(wait)
    }
}

/// Runs `operation` until it succeeds, fails permanently, or the attempts or the time are used
/// up. `wait` sleeps (tests pass a recorder instead of real time). Returns the last failure
/// with the number of attempts made.
pub async fn retry<T, Op, Fut, Wait, WaitFut>(
    policy: RetryPolicy,
    operation: Op,
    wait: Wait,
) -> Result<T, (Failure, u32)>
where
    Op: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, Failure>>,
    Wait: FnMut(Duration) -> WaitFut,
    WaitFut: Future<Output = ()>,
{
    retry_with(Attempts::new(policy), operation, wait).await
}

async fn retry_with<T, Op, Fut, Wait, WaitFut>(
    mut attempts: Attempts,
    mut operation: Op,
    mut wait: Wait,
) -> Result<T, (Failure, u32)>
where
    Op: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, Failure>>,
    Wait: FnMut(Duration) -> WaitFut,
    WaitFut: Future<Output = ()>,
{
    loop {
        match operation(attempts.made()).await {
            Ok(value) => return Ok(value),
            Err(failure) => match attempts.next(&failure) {
                Some(pause) => wait(pause).await,
                None => return Err((failure, attempts.made())),
            },
        }
    }
}

/// A target's request with real sleeps and the default policy, each retry counted under the
/// connection type: the value, or the last failure.
pub async fn retried<T, Op, Fut>(connection_type: &'static str, operation: Op) -> Result<T, Failure>
where
    Op: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, Failure>>,
{
    let attempts = Attempts::new(RetryPolicy::default()).of_target(connection_type);
    retry_with(attempts, operation, tokio::time::sleep)
        .await
        .map_err(|(failure, _)| failure)
}

/// Reads an HTTP `Retry-After` value: seconds, or an HTTP date.
pub fn parse_retry_after(value: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    if let Ok(seconds) = value.trim().parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = chrono::DateTime::parse_from_rfc2822(value.trim()).ok()?;
    (date.with_timezone(&chrono::Utc) - now).to_std().ok()
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    fn transient(after: Option<u64>) -> Failure {
        Failure::Transient {
            message: "503".into(),
            retry_after: after.map(Duration::from_secs),
        }
    }

    #[tokio::test]
    async fn transient_errors_are_retried_until_success() {
        let waits = RefCell::new(Vec::new());
        let result = retry(
            RetryPolicy::default(),
            |attempt| async move { if attempt < 3 { Err(transient(None)) } else { Ok(attempt) } },
            |d| {
                waits.borrow_mut().push(d);
                async {}
            },
        )
        .await;
        assert_eq!(result, Ok(3));
        assert_eq!(waits.borrow().len(), 2);
        assert!(
            waits.borrow()[1] <= Duration::from_millis(400),
            "full jitter stays under the bound"
        );
    }

    #[tokio::test]
    async fn permanent_errors_stop_at_once_and_attempts_are_bounded() {
        let permanent = retry(
            RetryPolicy::default(),
            |_| async { Err::<(), _>(Failure::Permanent { message: "401".into() }) },
            |_| async {},
        )
        .await;
        assert_eq!(permanent.unwrap_err().1, 1);
        let policy = RetryPolicy {
            max_attempts: 4,
            ..RetryPolicy::default()
        };
        let exhausted = retry(policy, |_| async { Err::<(), _>(transient(None)) }, |_| async {}).await;
        assert_eq!(exhausted.unwrap_err().1, 4);
    }

    #[tokio::test]
    async fn retry_after_is_honoured() {
        let waits = RefCell::new(Vec::new());
        let _ = retry(
            RetryPolicy {
                max_attempts: 2,
                ..RetryPolicy::default()
            },
            |_| async { Err::<(), _>(transient(Some(7))) },
            |d| {
                waits.borrow_mut().push(d);
                async {}
            },
        )
        .await;
        assert_eq!(waits.borrow()[0], Duration::from_secs(7));
    }

    #[tokio::test]
    async fn no_retry_starts_after_the_time_bound() {
        let waits = RefCell::new(Vec::new());
        // The target asks for 100 s each time: the second wait would pass 120 s.
        let result = retry(
            RetryPolicy::default(),
            |_| async { Err::<(), _>(transient(Some(100))) },
            |d| {
                waits.borrow_mut().push(d);
                async {}
            },
        )
        .await;
        assert_eq!(result.unwrap_err().1, 2, "two attempts fit in 120 s");
        assert_eq!(*waits.borrow(), vec![Duration::from_secs(100)]);
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(
            parse_retry_after("Thu, 01 Jan 2026 00:00:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn delays_grow_and_are_capped() {
        let policy = RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            within: Duration::from_secs(120),
        };
        for retry in 1..10 {
            assert!(policy.delay(retry, None) <= Duration::from_secs(1));
        }
    }
}
