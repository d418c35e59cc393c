//! WriteRecords: a stream of record upserts and deletes, one transaction per message.

use std::collections::HashMap;

use tonic::{Response, Streaming};

use super::{CatalogApi, Reply, stream_error};
use crate::api::status::to_status;
use crate::api::{State, convert};
use crate::auth::Principal;
use crate::auth::policy::{self, Action, Facts};
use crate::domain::catalog::{Entity, MAX_KEY_LEN, validate_record};
use crate::domain::names::EntityName;
use crate::error::{Error, FieldViolation, Result};
use crate::pb;
use crate::store::records::RecordBatch;

/// Bad fields of a refused WriteRecords message listed in its error: with the note of how many
/// more there are, as many as a status shows (`api::status` keeps the first 20 violations).
const MAX_REPORTED_VIOLATIONS: usize = 19;

/// A WriteRecords message that passed validation, waiting for its transaction.
struct PreparedMessage {
    name: EntityName,
    batch: RecordBatch,
}

impl CatalogApi {
    /// Each message is its own transaction; a bad one ends the stream with an error whose
    /// details say how many earlier messages were committed. Messages are read and validated
    /// one step ahead of the database writes (a bounded pipeline), so that decoding and
    /// validation overlap with the database's work; they are still applied strictly in order.
    pub(super) async fn write_records_(
        &self,
        principal: Principal,
        mut stream: Streaming<pb::WriteRecordsRequest>,
    ) -> Reply<pb::WriteRecordsResponse> {
        let (prepared_tx, mut prepared) = tokio::sync::mpsc::channel::<Result<PreparedMessage>>(2);
        let state = self.state.clone();
        let reader = tokio::spawn(async move {
            let mut entities = HashMap::new();
            loop {
                let item = match stream.message().await {
                    Ok(Some(message)) => CatalogApi::prepare_message(&state, &principal, message, &mut entities).await,
                    Ok(None) => return,
                    Err(status) => Err(stream_error(status)),
                };
                let failed = item.is_err();
                if prepared_tx.send(item).await.is_err() || failed {
                    return;
                }
            }
        });
        let mut totals = pb::WriteRecordsResponse::default();
        let mut committed = 0u64;
        let mut resource = String::new();
        while let Some(item) = prepared.recv().await {
            if let (true, Ok(message)) = (resource.is_empty(), &item) {
                resource = message.name.to_string();
                crate::audit::scope::stream_resource(&resource);
            }
            let outcome = match item {
                Ok(message) if message.batch.upserts.is_empty() && message.batch.deletes.is_empty() => Ok(None),
                Ok(message) => self
                    .state
                    .store
                    .write_records(&message.name, message.batch)
                    .await
                    .map(Some),
                Err(e) => Err(e),
            };
            match outcome {
                Ok(Some(outcome)) => {
                    totals.upserted += outcome.upserted;
                    totals.deleted += outcome.deleted;
                    totals.change_sequence = totals.change_sequence.max(outcome.change_seq);
                    committed += 1;
                }
                Ok(None) => committed += 1,
                Err(mut err) => {
                    reader.abort();
                    // What the stream committed before it was refused is a change: recorded.
                    if committed > 0 {
                        let summary = format!(
                            "{}; then refused at message {committed}",
                            records_summary(&totals, committed)
                        );
                        crate::audit::scope::record_stream(&self.state.store, &resource, summary).await;
                    }
                    err.message = format!(
                        "message {committed} of the stream was refused ({committed} earlier messages were committed): {}",
                        err.message
                    );
                    let err = err
                        .with_meta("committed_messages", committed.to_string())
                        .with_meta("message_index", committed.to_string());
                    return Err(to_status(err));
                }
            }
        }
        crate::audit::scope::record_stream(&self.state.store, &resource, records_summary(&totals, committed)).await;
        Ok(Response::new(totals))
    }

    /// Checks one WriteRecords message: name, permission, size, every record against the schema.
    async fn prepare_message(
        state: &State,
        principal: &Principal,
        message: pb::WriteRecordsRequest,
        entities: &mut HashMap<String, Entity>,
    ) -> Result<PreparedMessage> {
        let name = EntityName::parse("entity", &message.entity)?;
        policy::authorize(principal, &name.env, Action::WriteRecords, Facts::default())?;
        // How many records a message carries and how long keys are: the request's bounds
        // (api::bounds), checked as it was decoded.
        if !entities.contains_key(&message.entity) {
            let entity = state.store.entity_or_not_found(&name).await?;
            entities.insert(message.entity.clone(), entity);
        }
        let entity = &entities[&message.entity];
        let mut upserts = Vec::with_capacity(message.upserts.len());
        let mut problems = Vec::new();
        let mut unreported = 0usize;
        for (i, record) in message.upserts.into_iter().enumerate() {
            // A number JSON cannot hold stops the conversion and is reported as such (it would
            // otherwise have been stored as null).
            let mut non_finite = None;
            let fields = record
                .fields
                .into_iter()
                .map_while(|(k, v)| match convert::value_to_json(v) {
                    Ok(json) => Some((k, json)),
                    Err(convert::NonFiniteNumber) => {
                        non_finite = Some(k);
                        None
                    }
                });
            let validated = validate_record(entity, || format!("upserts[{i}]"), fields);
            let violations = match (non_finite, validated) {
                (Some(field), _) => vec![FieldViolation {
                    field: format!("upserts[{i}].{field}"),
                    description: "NaN and ±Infinity are not numbers a record can hold (JSON has none); send a \
                                  finite number or null"
                        .into(),
                }],
                (None, Ok(record)) => {
                    upserts.push(record);
                    continue;
                }
                (None, Err(violations)) => violations,
            };
            let room = MAX_REPORTED_VIOLATIONS.saturating_sub(problems.len());
            unreported += violations.len().saturating_sub(room);
            problems.extend(violations.into_iter().take(room));
        }
        if !problems.is_empty() {
            if unreported > 0 {
                problems.push(FieldViolation {
                    field: "upserts".into(),
                    description: format!(
                        "{unreported} more bad fields in this message are not listed (at most {MAX_REPORTED_VIOLATIONS} are)"
                    ),
                });
            }
            return Err(Error::invalid_fields(problems));
        }
        for (i, key) in message.deletes.iter().enumerate() {
            if key.is_empty() {
                return Err(Error::invalid(
                    format!("deletes[{i}]"),
                    format!("a key of 1 to {MAX_KEY_LEN} bytes"),
                ));
            }
        }
        Ok(PreparedMessage {
            name,
            batch: RecordBatch {
                upserts,
                deletes: message.deletes,
            },
        })
    }
}

/// The counts of a WriteRecords call, for its audit event.
fn records_summary(totals: &pb::WriteRecordsResponse, messages: u64) -> String {
    format!(
        "upserted {}, deleted {} in {messages} messages",
        totals.upserted, totals.deleted
    )
}
