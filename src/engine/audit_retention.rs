//! Retention of the audit log: events older than `audit_retention_days` are deleted at start
//! and then every hour. Every replica purges; the delete is idempotent, so that needs no lease.

use std::sync::Arc;
use std::time::Duration;

use super::Engine;
use crate::domain::time::{Micros, now_micros};

const PURGE_EVERY: Duration = Duration::from_secs(3600);
const MICROS_PER_DAY: Micros = 86_400 * 1_000_000;

/// The oldest time an event may have to be kept at `now`.
pub fn cutoff(now: Micros, retention_days: u64) -> Micros {
    let days = Micros::try_from(retention_days).unwrap_or(Micros::MAX / MICROS_PER_DAY);
    now.saturating_sub(days.saturating_mul(MICROS_PER_DAY))
}

impl Engine {
    pub(super) async fn audit_retention_loop(self: Arc<Self>) {
        loop {
            match self
                .store
                .purge_audit_events(cutoff(now_micros(), self.settings.audit_retention_days))
                .await
            {
                Ok(0) => {}
                Ok(purged) => tracing::info!(purged, "purged audit events past their retention"),
                Err(e) => tracing::warn!(error = %e.message, "cannot purge old audit events; trying again later"),
            }
            tokio::select! {
                _ = tokio::time::sleep(PURGE_EVERY) => {}
                _ = self.stopping() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cutoff_is_the_retention_before_now() {
        let now = 1_000 * MICROS_PER_DAY;
        assert_eq!(cutoff(now, 400), 600 * MICROS_PER_DAY);
        assert_eq!(cutoff(now, 1), 999 * MICROS_PER_DAY);
        assert!(cutoff(now, u64::MAX) < 0);
    }
}
