//! Waiting for something the server does in the background (a run ending, a schedule firing)
//! without guessing how long it takes: ask again until the answer is there or a deadline passes.

use std::fmt::Display;
use std::time::Duration;

/// Asks `probe` until it answers `Ok`, and returns that. `Err` says what it found instead; if
/// that is still the answer after `deadline`, the test fails saying that `what` never happened
/// and what the last answer was. It asks again after 10 ms, then waits twice as long each
/// time up to 200 ms, so that a quick change is seen at once and a slow one costs few requests.
pub async fn eventually<T>(
    deadline: Duration,
    what: impl Display,
    mut probe: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let give_up = tokio::time::Instant::now() + deadline;
    let mut pause = Duration::from_millis(10);
    loop {
        let last = match probe().await {
            Ok(found) => return found,
            Err(last) => last,
        };
        assert!(
            tokio::time::Instant::now() < give_up,
            "{what} did not happen within {deadline:?}; last seen: {last}"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}
