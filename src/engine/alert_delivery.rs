//! The alert outbox worker (PRODUCT.md §14): claims a stored event under a lease (so that with
//! several replicas each event is sent by one worker at a time), POSTs it to its policy's
//! webhook connection, and marks it delivered — or schedules the next attempt with backoff,
//! giving up 24 hours after the event was stored. Events are rows, so a restart loses none;
//! delivery is at least once, and `Idempotency-Key` (the event id) lets receivers dedupe.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::Engine;
use crate::connectors::{Target, webhook};
use crate::domain::alert::AlertEvent;
use crate::domain::names::ConnectionName;
use crate::domain::time::{Micros, now_micros, to_datetime};
use crate::store::alerts::ClaimedDelivery;

/// How long a claimed event is this worker's; an attempt (with its own quick retries) ends well
/// within it, and a worker that died lets another take the event after it.
const LEASE: Duration = Duration::from_secs(120);
/// How long events are retried.
const GIVE_UP_AFTER: Micros = 24 * 3600 * 1_000_000;
/// How often the outbox is looked at when it had nothing due.
const IDLE: Duration = Duration::from_secs(1);

/// The wait before attempt `attempts + 1`: 1 s, 2 s, 4 s … at most 10 minutes.
pub fn backoff(attempts: i64) -> Duration {
    let exponent = attempts.clamp(0, 10) as u32;
    Duration::from_secs((1u64 << exponent).min(600))
}

/// The event as proto3 JSON (field names in lowerCamelCase, enums by name, times RFC 3339).
pub fn event_json(event: &AlertEvent) -> serde_json::Value {
    json!({
        "name": event.name(),
        "policy": event.policy_name(),
        "export": event.export,
        "run": event.run,
        "condition": format!("ALERT_CONDITION_{}", event.condition.as_str()),
        "state": format!("ALERT_EVENT_STATE_{}", event.state.as_str()),
        "message": event.message,
        "createTime": to_datetime(event.create_time).to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "deliveryState": format!("ALERT_DELIVERY_STATE_{}", event.delivery_state.as_str()),
        "deliveryAttempts": event.delivery_attempts,
        "lastDeliveryError": event.last_delivery_error,
    })
}

impl Engine {
    pub(super) async fn alert_delivery_loop(self: Arc<Self>) {
        let owner = format!("{}-alerts", self.instance);
        while !self.is_stopping() {
            let lease_until = now_micros() + LEASE.as_micros() as i64;
            let claimed = match self.store.claim_alert_delivery(&owner, lease_until).await {
                Ok(claimed) => claimed,
                Err(e) => {
                    tracing::warn!(error = %e.message, "cannot read the alert outbox");
                    None
                }
            };
            match claimed {
                Some(delivery) => self.deliver(&owner, delivery).await,
                None => {
                    tokio::select! {
                        _ = tokio::time::sleep(IDLE) => {}
                        _ = self.stopping() => return,
                    }
                }
            }
        }
    }

    async fn deliver(&self, owner: &str, delivery: ClaimedDelivery) {
        let event = &delivery.event;
        let outcome = self.post(&delivery).await;
        let (delivered, error, retry_at) = match outcome {
            Ok(()) => (true, String::new(), None),
            Err(error) => {
                let next = now_micros() + backoff(event.delivery_attempts).as_micros() as i64;
                let retry_at = (next - event.create_time < GIVE_UP_AFTER).then_some(next);
                (false, error, retry_at)
            }
        };
        if !delivered {
            tracing::warn!(event = %event.name(), attempts = event.delivery_attempts + 1, error = %error, "alert not delivered");
        }
        if let Err(e) = self
            .store
            .record_alert_delivery(delivery.seq, owner, delivered, &error, retry_at)
            .await
        {
            tracing::warn!(event = %event.name(), error = %e.message, "cannot record an alert delivery");
        }
    }

    async fn post(&self, delivery: &ClaimedDelivery) -> Result<(), String> {
        let event = &delivery.event;
        let name = ConnectionName::new(&event.env, &delivery.connection);
        let connection = self
            .store
            .get_connection(&name)
            .await
            .map_err(|e| e.message)?
            .ok_or_else(|| format!("connection {name} does not exist"))?;
        let secrets = self.store.connection_secrets(&name).await.map_err(|e| e.message)?;
        let target = Target {
            connection: &connection,
            secrets: &secrets,
            local_roots: self.settings.local_roots(),
            export_file_mode: self.settings.export_file_mode,
        };
        let body = json!({ "text": event.text(), "event": event_json(event) });
        let bytes = serde_json::to_vec(&body).expect("JSON serializes");
        webhook::post_alert(&target, bytes, &event.id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_ten_minutes() {
        assert_eq!(backoff(0), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(8));
        assert_eq!(backoff(40), Duration::from_secs(600));
    }
}
