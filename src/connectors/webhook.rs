//! `webhook`: signed JSON batches POSTed to the connection's `url` (CONNECTORS.md, "Wire
//! details": `webhook`; PRODUCT.md §11 and §12).
//!
//! References followed: CONNECTORS.md's body and headers (the contract); RFC 2104 (HMAC) with
//! SHA-256 from FIPS 180-4, hex-encoded after `sha256=` as GitHub's `X-Hub-Signature-256` and
//! Stripe's webhook signatures do; the IETF draft "The Idempotency-Key HTTP Header Field"
//! (draft-ietf-httpapi-idempotency-key-header) for a key that stays the same on every retry of
//! one request; RFC 9110 §10.2.3 (`Retry-After`) and §15 (status classes) for what is retried.
//!
//! One batch is one POST of at most `batch_size` records + removals. The sink holds the rows
//! of the batch being filled back until it knows whether it is the source's `last`; a 2xx
//! answer's `rejected` entries and a 4xx answer (the whole batch) become rejected records.

use std::collections::BTreeSet;

use async_trait::async_trait;
use hmac::{Hmac, Mac};
use serde_json::{Map, Value, json};
use sha2::Sha256;

use super::http::{self, Answer};
use super::registry::{ALL_SEGMENTS, BOTH_KINDS, FILE_MODES, HTTP_URL, key, optional};
use super::retry::Failure;
use super::{
    Check, Connector, Delivery, MAX_REASON_BYTES, PartSchema, Rejection, RunTarget, Sink, SinkSummary, Target,
    TestReport, network_step,
};
use crate::domain::catalog::FieldType;
use crate::domain::connection_type::{Category, ConnectionTypeSpec, ValueKind};

const TYPE_ID: &str = "webhook";
/// Records + removals per POST when `batch_size` is not set.
pub const DEFAULT_BATCH_SIZE: usize = 500;

/// The connection type this file implements (CONNECTORS.md): ids and keys are part of the API.
pub const SPEC: ConnectionTypeSpec = ConnectionTypeSpec {
    id: TYPE_ID,
    display_name: "Webhook",
    category: Category::Webhook,
    export_kinds: BOTH_KINDS,
    segment_types: ALL_SEGMENTS,
    sync_modes: FILE_MODES,
    required_fields: &[],
    identifier_fields: &[],
    profile_limit: 0,
    minimum_segment_size: 0,
    config: &[
        key("url", "endpoint receiving JSON batches by POST", HTTP_URL),
        optional(
            "batch_size",
            "records + removals per POST, 1 to 10,000 (default 500)",
            ValueKind::Integer { min: 1, max: 10_000 },
        ),
    ],
    secrets: &[optional(
        "signing_secret",
        "HMAC-SHA256 key for the X-Exportd-Signature header",
        ValueKind::Text,
    )],
    one_of_secrets: &[],
    settings: &[],
    target_options: &[],
};

pub struct Webhook;

/// Where and how a connection's batches are sent.
#[derive(Clone)]
struct Endpoint {
    url: String,
    signing_secret: Option<String>,
    /// Taken out of every message.
    secrets: Vec<String>,
}

impl Endpoint {
    fn of(target: &Target<'_>) -> Endpoint {
        let signing_secret = target.secrets.get("signing_secret").filter(|s| !s.is_empty()).cloned();
        Endpoint {
            url: target.config("url").to_string(),
            secrets: signing_secret.iter().cloned().collect(),
            signing_secret,
        }
    }

    /// POSTs a JSON body, signed when the connection has a signing secret; every retry sends
    /// the same bytes and headers.
    async fn post(&self, body: Vec<u8>, idempotency_key: Option<&str>) -> Result<Answer, Failure> {
        let signature = self.signing_secret.as_deref().map(|secret| signature(secret, &body));
        let body = bytes::Bytes::from(body);
        http::send(TYPE_ID, &self.secrets, || {
            let mut request = http::client()
                .post(&self.url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone());
            if let Some(key) = idempotency_key {
                request = request.header("Idempotency-Key", key);
            }
            if let Some(signature) = &signature {
                request = request.header("X-Exportd-Signature", signature);
            }
            request
        })
        .await
    }
}

/// POSTs one alert event (PRODUCT.md §14) to a webhook connection: the same endpoint, signature
/// and retries as its batches, `Idempotency-Key` the event id. Ok once the receiver answered
/// 2xx; otherwise why not (secrets taken out).
pub async fn post_alert(target: &Target<'_>, body: Vec<u8>, idempotency_key: &str) -> Result<(), String> {
    let endpoint = Endpoint::of(target);
    match endpoint.post(body, Some(idempotency_key)).await {
        Ok(answer) if answer.status.is_success() => Ok(()),
        Ok(answer) => Err(format!(
            "the receiver answered {}: {}",
            answer.status,
            answer.body_text(256)
        )),
        Err(failure) => Err(failure.message().to_string()),
    }
}

/// `sha256=<hex HMAC-SHA256 of the raw body>`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn batch_size(target: &Target<'_>) -> usize {
    target
        .config("batch_size")
        .trim()
        .parse::<usize>()
        .ok()
        .filter(|n| (1..=10_000).contains(n))
        .unwrap_or(DEFAULT_BATCH_SIZE)
}

#[async_trait]
impl Connector for Webhook {
    /// CONNECTORS.md: an `OPTIONS` request, or, if the receiver refuses it, a signed `POST` of
    /// `{"ping": true}`; the status is reported.
    async fn test(&self, target: &Target<'_>) -> TestReport {
        let endpoint = Endpoint::of(target);
        let options = http::send(TYPE_ID, &endpoint.secrets, || {
            http::client().request(reqwest::Method::OPTIONS, &endpoint.url)
        })
        .await;
        let check = match options {
            Ok(answer) if answer.status.is_success() => {
                Check::pass("request", format!("OPTIONS answered {}", answer.status))
            }
            Ok(refused) => match endpoint.post(br#"{"ping":true}"#.to_vec(), None).await {
                Ok(answer) if answer.status.is_success() => Check::pass(
                    "request",
                    format!(
                        "OPTIONS answered {}; a ping POST answered {}",
                        refused.status, answer.status
                    ),
                ),
                Ok(answer) => Check::fail(
                    "request",
                    format!(
                        "OPTIONS answered {}; a ping POST answered {}: {}",
                        refused.status,
                        answer.status,
                        answer.body_text(256)
                    ),
                ),
                Err(failure) => unreachable_check(&failure),
            },
            Err(failure) => unreachable_check(&failure),
        };
        TestReport { checks: vec![check] }
    }

    async fn open_sink(&self, run: &RunTarget<'_>) -> Result<Box<dyn Sink>, Failure> {
        Ok(Box::new(WebhookSink {
            endpoint: Endpoint::of(&run.target),
            batch_size: batch_size(&run.target),
            export: run.export_name.to_string(),
            run: run.run_name.to_string(),
            idempotency_prefix: format!("{}.{}", run.run_id, run.attempt),
            part: None,
            posts: 0,
            bytes_sent: 0,
            cancellation: run.cancellation.clone(),
            in_flight: None,
        }))
    }

    /// Each row as the `records` of a batch carry it.
    fn sample(&self, _run: &RunTarget<'_>, part: &PartSchema, rows: Vec<Vec<Value>>) -> Vec<Map<String, Value>> {
        rows.into_iter().map(|row| record_of(&part.columns, row)).collect()
    }
}

/// A row as a batch's `records` carry it: each column under its name, typed by its field.
fn record_of(columns: &[super::Column], row: Vec<Value>) -> Map<String, Value> {
    columns
        .iter()
        .zip(row)
        .map(|(column, value)| (column.name.clone(), typed(column.field_type, value)))
        .collect()
}

/// A test that got no answer names the network step that failed.
fn unreachable_check(failure: &Failure) -> Check {
    Check::fail(network_step(failure.message()).unwrap_or("request"), failure.message())
}

/// The part being sent: its schema, the rows of the batch being filled, the batches sent.
struct OpenPart {
    schema: PartSchema,
    key_column: Option<usize>,
    held: Vec<Vec<Value>>,
    sequence: u64,
}

struct WebhookSink {
    endpoint: Endpoint,
    batch_size: usize,
    export: String,
    run: String,
    /// `<run id>.<attempt>`: a taken-over attempt sends under new keys.
    idempotency_prefix: String,
    part: Option<OpenPart>,
    posts: u64,
    /// Body bytes of the batches delivered (`bytes_written`).
    bytes_sent: u64,
    /// Stops between POSTs, and in one or its retries' waits, once the run is cancelled.
    cancellation: super::Cancellation,
    /// The batch whose POST is under way while the next one is encoded: batches still go out
    /// one at a time, in sequence order, but building a body overlaps sending the one before.
    in_flight: Option<InFlight>,
}

/// One batch as it goes out: the body, and the keys it carries (to reject them).
struct Batch {
    body: Vec<u8>,
    record_keys: Vec<String>,
    removed_keys: Vec<String>,
}

/// A batch being POSTed (its retries included) on a task of its own.
struct InFlight {
    answer: tokio::task::JoinHandle<Result<Answer, Failure>>,
    record_keys: Vec<String>,
    removed_keys: Vec<String>,
    size: u64,
    idempotency_key: String,
}

impl OpenPart {
    fn key_of(&self, row: &[Value]) -> String {
        match self.key_column.and_then(|i| row.get(i)) {
            Some(Value::String(key)) => key.clone(),
            Some(Value::Null) | None => String::new(),
            Some(other) => other.to_string(),
        }
    }

    /// The body of the next batch (CONNECTORS.md: exactly seven keys; deletions only in
    /// `removed`).
    fn batch(&self, export: &str, run: &str, rows: Vec<Vec<Value>>, sequence: u64, last: bool) -> Batch {
        let columns = &self.schema.columns;
        let mut records = Vec::new();
        let mut record_keys = Vec::new();
        let mut removed_keys = Vec::new();
        for row in rows {
            let deleted = self.schema.incremental && row.get(columns.len()) == Some(&Value::Bool(true));
            let key = self.key_of(&row);
            if deleted {
                removed_keys.push(key);
                continue;
            }
            records.push(Value::Object(record_of(columns, row)));
            record_keys.push(key);
        }
        let body = json!({
            "export": export,
            "run": run,
            "source": self.schema.source,
            "sequence": sequence,
            "last": last,
            "records": records,
            "removed": removed_keys,
        });
        Batch {
            body: serde_json::to_vec(&body).expect("JSON values serialize"),
            record_keys,
            removed_keys,
        }
    }
}

/// A value with the JSON type its field's type calls for (numbers and booleans stored as
/// text become numbers and booleans; anything else is sent as it is).
fn typed(field_type: FieldType, value: Value) -> Value {
    let Value::String(text) = &value else {
        return value;
    };
    let parsed = match field_type {
        FieldType::Int64 => text.trim().parse::<i64>().ok().map(Value::from),
        FieldType::Double => text
            .trim()
            .parse::<f64>()
            .ok()
            .and_then(|f| serde_json::Number::from_f64(f).map(Value::Number)),
        FieldType::Bool => text.trim().parse::<bool>().ok().map(Value::Bool),
        FieldType::Json => serde_json::from_str(text).ok(),
        _ => None,
    };
    parsed.unwrap_or(value)
}

/// The `rejected` entries of a 2xx answer (`{"rejected": [{"key", "reason", "code"?}]}`);
/// any other body rejects nothing.
fn rejected_entries(body: &[u8]) -> Vec<Rejection> {
    let Ok(Value::Object(answer)) = serde_json::from_slice::<Value>(body) else {
        return Vec::new();
    };
    let Some(Value::Array(entries)) = answer.get("rejected") else {
        return Vec::new();
    };
    entries
        .iter()
        .filter_map(|entry| {
            let key = match entry.get("key")? {
                Value::String(key) => key.clone(),
                Value::Null => return None,
                other => other.to_string(),
            };
            let text = |field: &str| entry.get(field).and_then(Value::as_str).unwrap_or_default();
            let code = Some(text("code")).filter(|c| !c.is_empty()).unwrap_or("REJECTED");
            Some(Rejection::new(key, text("reason"), code))
        })
        .collect()
}

impl WebhookSink {
    /// Encodes the next batch, waits for the answer to the batch before it, then starts its
    /// POST; says what the receiver made of the batch before (nothing, for the first).
    async fn send(&mut self, rows: Vec<Vec<Value>>, last: bool) -> Result<Delivery, Failure> {
        let part = self.part.as_mut().ok_or_else(|| Failure::Permanent {
            message: "no part is open".into(),
        })?;
        part.sequence += 1;
        let batch = part.batch(&self.export, &self.run, rows, part.sequence, last);
        let idempotency_key = format!("{}.{}.{}", self.idempotency_prefix, part.schema.id, part.sequence);
        let delivered = self.settle().await?;
        let (endpoint, cancellation, key) = (
            self.endpoint.clone(),
            self.cancellation.clone(),
            idempotency_key.clone(),
        );
        let size = batch.body.len() as u64;
        let body = batch.body;
        let answer = tokio::spawn(async move { cancellation.unless_cancelled(endpoint.post(body, Some(&key))).await });
        self.in_flight = Some(InFlight {
            answer,
            record_keys: batch.record_keys,
            removed_keys: batch.removed_keys,
            size,
            idempotency_key,
        });
        Ok(delivered)
    }

    /// Waits for the batch in flight, if any, and says what the receiver made of it.
    async fn settle(&mut self) -> Result<Delivery, Failure> {
        let Some(sent) = self.in_flight.take() else {
            return Ok(Delivery::default());
        };
        let answer = sent.answer.await.map_err(|e| Failure::Permanent {
            message: format!(
                "sending the batch with Idempotency-Key {} failed: {e}",
                sent.idempotency_key
            ),
        })??;
        self.posts += 1;
        self.bytes_sent += sent.size;
        let (records, removals) = (sent.record_keys.len() as u64, sent.removed_keys.len() as u64);
        if answer.status.is_success() {
            // Only keys of this batch count, each once: a receiver cannot reject what it was
            // not sent.
            let removed: BTreeSet<&String> = sent.removed_keys.iter().collect();
            let all: BTreeSet<&String> = sent.record_keys.iter().chain(&sent.removed_keys).collect();
            let mut seen = BTreeSet::new();
            let rejected: Vec<Rejection> = rejected_entries(&answer.body)
                .into_iter()
                .filter(|r| all.contains(&r.key) && seen.insert(r.key.clone()))
                .collect();
            let rejected_removals = rejected.iter().filter(|r| removed.contains(&r.key)).count() as u64;
            let rejected_records = rejected.len() as u64 - rejected_removals;
            return Ok(Delivery {
                accepted: records - rejected_records,
                removed: removals - rejected_removals,
                rejected,
                bytes: Some(self.bytes_sent),
                ..Delivery::default()
            });
        }
        if answer.status.is_client_error() {
            // CONNECTORS.md: a 4xx (not 408/429, which are retried) rejects the whole batch.
            let code = format!("HTTP_{}", answer.status.as_u16());
            let mut reason = answer.body_text(MAX_REASON_BYTES);
            if reason.trim().is_empty() {
                reason = format!("the receiver answered {}", answer.status);
            }
            let rejected = sent
                .record_keys
                .into_iter()
                .chain(sent.removed_keys)
                .map(|key| Rejection::new(key, &reason, code.clone()))
                .collect();
            return Ok(Delivery {
                rejected,
                bytes: Some(self.bytes_sent),
                ..Delivery::default()
            });
        }
        // 1xx/3xx: redirects are not followed (a POST must not turn into a GET elsewhere).
        Err(Failure::Permanent {
            message: format!(
                "the receiver answered {} to the batch with Idempotency-Key {}",
                answer.status, sent.idempotency_key
            ),
        })
    }

    /// Stops the POST under way, if any (the run ends without it).
    fn stop_in_flight(&mut self) {
        if let Some(sent) = self.in_flight.take() {
            sent.answer.abort();
        }
    }
}

impl Drop for WebhookSink {
    fn drop(&mut self) {
        self.stop_in_flight();
    }
}

fn add(total: &mut Delivery, more: Delivery) {
    total.accepted += more.accepted;
    total.removed += more.removed;
    total.rejected.extend(more.rejected);
    total.bytes = more.bytes.or(total.bytes);
}

#[async_trait]
impl Sink for WebhookSink {
    async fn begin_part(&mut self, part: &PartSchema) -> Result<(), Failure> {
        let key_column = part.columns.iter().position(|c| c.name == part.primary_key);
        self.part = Some(OpenPart {
            schema: part.clone(),
            key_column,
            held: Vec::new(),
            sequence: 0,
        });
        Ok(())
    }

    /// Sends every full batch but the newest, which is held until the next rows or the end of
    /// the part say whether it is the last.
    async fn write_rows(&mut self, rows: Vec<Vec<Value>>) -> Result<Delivery, Failure> {
        let mut delivery = Delivery {
            bytes: Some(self.bytes_sent),
            ..Delivery::default()
        };
        let Some(part) = self.part.as_mut() else {
            return Err(Failure::Permanent {
                message: "no part is open".into(),
            });
        };
        part.held.extend(rows);
        while self.part.as_ref().is_some_and(|p| p.held.len() > self.batch_size) {
            let part = self.part.as_mut().expect("checked above");
            let rest = part.held.split_off(self.batch_size);
            let batch = std::mem::replace(&mut part.held, rest);
            add(&mut delivery, self.send(batch, false).await?);
        }
        Ok(delivery)
    }

    /// The held rows go out as the source's last batch (an empty one for a source without
    /// records, so that the receiver learns it ended); the part ends once it is answered.
    async fn end_part(&mut self) -> Result<Delivery, Failure> {
        let held = match self.part.as_mut() {
            Some(part) => std::mem::take(&mut part.held),
            None => return Ok(Delivery::default()),
        };
        let mut delivery = self.send(held, true).await?;
        add(&mut delivery, self.settle().await?);
        self.part = None;
        Ok(delivery)
    }

    async fn commit(self: Box<Self>) -> Result<SinkSummary, Failure> {
        Ok(SinkSummary {
            files: Vec::new(),
            bytes: self.bytes_sent,
            location: format!(
                "{} {} to the webhook",
                self.posts,
                if self.posts == 1 { "batch" } else { "batches" }
            ),
            removed_run_folders: 0,
            cleanup_error: None,
        })
    }

    /// What was POSTed cannot be taken back: receivers dedupe with the idempotency keys. A POST
    /// still under way is stopped.
    async fn abort(mut self: Box<Self>) {
        self.stop_in_flight();
    }

    async fn abandon(mut self: Box<Self>) {
        self.stop_in_flight();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_the_hex_hmac_sha256_of_the_body() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn rejected_entries_default_their_code_and_skip_entries_without_a_key() {
        let body = br#"{"rejected": [{"key": "a", "reason": "bad email", "code": "E1"}, {"key": 7, "reason": "x"}, {"reason": "no key"}]}"#;
        assert_eq!(
            rejected_entries(body),
            vec![
                Rejection::new("a", "bad email", "E1"),
                Rejection::new("7", "x", "REJECTED")
            ]
        );
        assert!(rejected_entries(b"ok").is_empty());
        assert!(rejected_entries(br#"{"accepted": 3}"#).is_empty());
    }

    #[test]
    fn values_get_the_json_types_of_their_fields() {
        assert_eq!(typed(FieldType::Int64, json!("42")), json!(42));
        assert_eq!(typed(FieldType::Double, json!("1.5")), json!(1.5));
        assert_eq!(typed(FieldType::Bool, json!("true")), json!(true));
        assert_eq!(typed(FieldType::String, json!("42")), json!("42"));
        assert_eq!(typed(FieldType::Int64, Value::Null), Value::Null);
    }
}
