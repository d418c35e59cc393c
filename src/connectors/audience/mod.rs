//! What the four audience targets (Mailchimp, Meta custom audiences, Google Data Manager,
//! LinkedIn DMP segments) share: members read from a part's rows, identifier hygiene before
//! anything is sent, one audience per segment, and one [`Sink`] that sends the batches the
//! pipeline cut to the vendor's limits — concurrently, through the connection's
//! [`Gate`](super::http::gate::Gate), stopping when the run is cancelled. A vendor supplies
//! only what differs ([`Vendor`]): its limits, what a member becomes on the wire, how its
//! audience is found or created, and its add and remove requests.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use serde_json::{Map, Value};

use super::retry::Failure;
use super::{
    Audience, BatchRequest, Cancellation, Delivery, PartSchema, Rejection, RunTarget, Sink, SinkLimits, SinkSummary,
};

pub mod identifiers;

pub use identifiers::{INVALID_IDENTIFIER, NO_IDENTIFIER};

/// One member as an audience target sees it: its record key and the mapped target fields that
/// have a value, in field-name order. A list, not a map: a mapping has a handful of fields, and
/// a map's node per member was a large allocation for two or three of them.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub key: String,
    pub values: Vec<(String, Value)>,
}

impl Member {
    /// A target field's value, if it has one.
    pub fn value(&self, field: &str) -> Option<&Value> {
        self.values
            .iter()
            .find(|(name, _)| name == field)
            .map(|(_, value)| value)
    }

    /// A target field's value as text (numbers and booleans written out), if it has one.
    pub fn text(&self, field: &str) -> Option<String> {
        match self.value(field)? {
            Value::Null => None,
            Value::String(s) if s.trim().is_empty() => None,
            Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        }
    }

    pub fn reject(&self, reason: &str, code: &str) -> Rejection {
        Rejection::new(self.key.clone(), reason, code)
    }
}

/// A member `c1` with these target fields (for the vendors' unit tests).
#[cfg(test)]
pub fn member_of(values: &[(&str, &str)]) -> Member {
    Member {
        key: "c1".into(),
        values: values.iter().map(|(k, v)| (k.to_string(), Value::from(*v))).collect(),
    }
}

/// Where a part's columns are: its key, its `_deleted` flag, and the mapped fields.
#[derive(Debug, Clone)]
pub struct Layout {
    key: Option<usize>,
    deleted: Option<usize>,
    /// (column, target field) of the mapped columns (not a key column the pipeline added).
    fields: Vec<(usize, String)>,
}

impl Layout {
    pub fn of(part: &PartSchema) -> Layout {
        let key = part.columns.iter().position(|c| c.name == part.primary_key);
        let mut fields = part
            .columns
            .iter()
            .enumerate()
            .filter(|(i, _)| !(part.added_key && Some(*i) == key))
            .map(|(i, c)| (i, c.name.clone()))
            .collect::<Vec<_>>();
        // Members list their fields in name order (`Member::values`).
        fields.sort_by(|(_, a), (_, b)| a.cmp(b));
        Layout {
            key,
            deleted: part.incremental.then_some(part.columns.len()),
            fields,
        }
    }

    /// The rows as members to add or update, and members to remove.
    pub fn members(&self, rows: Vec<Vec<Value>>) -> (Vec<Member>, Vec<Member>) {
        let (mut upserts, mut removals) = (Vec::new(), Vec::new());
        // The rows are ours: their values move into the members (a key column that is also
        // mapped is the one value copied).
        for mut row in rows {
            let key = match self.key.and_then(|i| row.get(i)) {
                Some(Value::String(key)) => key.clone(),
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            };
            let removed = self.deleted.and_then(|i| row.get(i)) == Some(&Value::Bool(true));
            let values = self
                .fields
                .iter()
                .filter_map(|(i, name)| match row.get_mut(*i).map(std::mem::take) {
                    Some(Value::Null) | None => None,
                    Some(value) => Some((name.clone(), value)),
                })
                .collect();
            let member = Member { key, values };
            if removed {
                removals.push(member);
            } else {
                upserts.push(member);
            }
        }
        (upserts, removals)
    }
}

/// Adding members or removing them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Add,
    Remove,
}

/// Where one request stands in the part's requests of its operation (Meta's `session`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sequence {
    /// From 1, per part and operation.
    pub number: u64,
    /// The part's last request of this operation.
    pub last: bool,
    /// The members the part is expected to send in all (the segment's member count).
    pub estimated_total: u64,
    /// Stable for one attempt of a run and part (Meta's `session_id`).
    pub session: u64,
}

/// A member ready for the vendor: its key, and what the vendor receives for it.
pub struct Prepared<P> {
    pub key: String,
    pub member: Member,
    pub wire: P,
}

/// What one vendor adds to the shared machinery.
#[async_trait]
pub trait Vendor: Send + Sync + 'static {
    /// A member as the wire carries it (identifiers normalised and hashed).
    type Wire: Send + Sync + Clone + 'static;

    fn type_id(&self) -> &'static str;

    /// Records per request, requests per second and in flight (the vendor's published limits).
    fn limits(&self) -> SinkLimits;

    /// A part opens: a vendor whose wire depends on the part's columns (Meta's schema) takes
    /// them here, before any member is prepared. Pure: a preview calls it too.
    fn begin_part(&self, _part: &PartSchema) {}

    /// What the vendor receives for a member, or why it is refused before the vendor sees it
    /// (`NO_IDENTIFIER`, `INVALID_IDENTIFIER`). Pure: a preview calls it too.
    fn prepare(&self, member: &Member) -> Result<Self::Wire, Rejection>;

    /// A prepared member as a preview shows it (PRODUCT.md §13): one flat object keyed by the
    /// mapped target fields, each with the value the wire carries for it (normalised, hashed).
    fn sample(&self, member: &Member, wire: &Self::Wire) -> Map<String, Value>;

    /// The audience the part fills: the one remembered from earlier runs, else the one the
    /// settings name, else found by name or created.
    async fn open_audience(&self, part: &PartSchema, remembered: Option<&Audience>) -> Result<Audience, Failure>;

    /// One request (or the requests one batch needs): the vendor's answer as accepted
    /// members (or removals) and rejected ones.
    async fn send(
        &self,
        audience: &Audience,
        operation: Operation,
        members: Vec<Prepared<Self::Wire>>,
        sequence: Sequence,
    ) -> Result<Delivery, Failure>;
}

/// One batch as it will go out: members to add, members to remove, members refused before
/// sending, and each operation's place in the part's requests.
type Planned<W> = (
    Vec<Prepared<W>>,
    Vec<Prepared<W>>,
    Vec<Rejection>,
    [Option<Sequence>; 2],
);

/// The sink of every audience target.
pub struct AudienceSink<V: Vendor> {
    vendor: std::sync::Arc<V>,
    remembered: BTreeMap<String, Audience>,
    cancellation: Cancellation,
    part: Option<OpenPart>,
    /// Session ids differ per run attempt and part.
    session_base: u64,
    parts_opened: u64,
    /// Counted by the requests as they are answered (they run beside the sink).
    sent: std::sync::Arc<Sent>,
}

/// What the run's requests sent, for the run's summary.
#[derive(Default)]
struct Sent {
    requests: AtomicU64,
    members: AtomicU64,
}

struct OpenPart {
    layout: Layout,
    audience: Audience,
    estimated_total: u64,
    session: u64,
    sent: [u64; 2],
}

impl<V: Vendor> AudienceSink<V> {
    pub fn new(vendor: V, run: &RunTarget<'_>) -> AudienceSink<V> {
        // A run id and attempt give a stable number per attempt (Meta wants a 64-bit id).
        let digest = identifiers::sha256_hex(&format!("{}.{}", run.run_id, run.attempt));
        let session_base = u64::from_str_radix(&digest[..12], 16).unwrap_or(1);
        AudienceSink {
            vendor: std::sync::Arc::new(vendor),
            remembered: run.audiences.clone(),
            cancellation: run.cancellation.clone(),
            part: None,
            session_base,
            parts_opened: 0,
            sent: Default::default(),
        }
    }

    /// Members → what goes out, and the members refused locally.
    fn prepare(&self, members: Vec<Member>) -> (Vec<Prepared<V::Wire>>, Vec<Rejection>) {
        let mut ready = Vec::with_capacity(members.len());
        let mut refused = Vec::new();
        for member in members {
            match self.vendor.prepare(&member) {
                Ok(wire) => ready.push(Prepared {
                    key: member.key.clone(),
                    member,
                    wire,
                }),
                Err(rejection) => refused.push(rejection),
            }
        }
        (ready, refused)
    }
}

/// A preview's rows as the vendor would receive them, through the sink's own steps (the part
/// opens, rows become members, each member is prepared) without a request; members refused
/// before sending are left out, as a run sends them nowhere. Rows are members to add.
pub fn sample<V: Vendor>(vendor: &V, part: &PartSchema, rows: Vec<Vec<Value>>) -> Vec<Map<String, Value>> {
    vendor.begin_part(part);
    let (upserts, _) = Layout::of(part).members(rows);
    upserts
        .iter()
        .filter_map(|member| vendor.prepare(member).ok().map(|wire| vendor.sample(member, &wire)))
        .collect()
}

fn add(total: &mut Delivery, more: Delivery) {
    total.accepted += more.accepted;
    total.removed += more.removed;
    total.rejected.extend(more.rejected);
    total.unlisted_rejects += more.unlisted_rejects;
}

#[async_trait]
impl<V: Vendor> Sink for AudienceSink<V> {
    async fn begin_part(&mut self, part: &PartSchema) -> Result<(), Failure> {
        let vendor = self.vendor.clone();
        vendor.begin_part(part);
        let remembered = self.remembered.get(&part.id).cloned();
        let audience = self
            .cancellation
            .unless_cancelled(vendor.open_audience(part, remembered.as_ref()))
            .await?;
        self.parts_opened += 1;
        self.part = Some(OpenPart {
            layout: Layout::of(part),
            audience,
            estimated_total: part.estimated_records,
            // Two sessions a part (adds and removals).
            session: self.session_base.wrapping_add(self.parts_opened * 2).max(1),
            sent: [0, 0],
        });
        Ok(())
    }

    fn limits(&self) -> Option<SinkLimits> {
        Some(self.vendor.limits())
    }

    fn audience(&self) -> Option<Audience> {
        self.part.as_ref().map(|p| p.audience.clone())
    }

    async fn write_rows(&mut self, rows: Vec<Vec<Value>>) -> Result<Delivery, Failure> {
        match self.start_batches(vec![rows], false).into_iter().next() {
            Some(request) => request.await,
            None => Ok(Delivery::default()),
        }
    }

    /// Each batch's adds and removals go out as one request each (the vendor may split a
    /// removal into the requests its API needs). Members are prepared here, in order, so that
    /// each operation's requests are numbered as they were cut (Meta's `batch_seq`).
    fn start_batches(&mut self, batches: Vec<Vec<Vec<Value>>>, last: bool) -> Vec<BatchRequest> {
        let Some(part) = self.part.as_mut() else {
            return vec![Box::pin(async {
                Err(Failure::Permanent {
                    message: "no part is open".into(),
                })
            })];
        };
        let layout = part.layout.clone();
        // Which requests the group makes, numbered in order per operation.
        let mut plans = Vec::with_capacity(batches.len());
        for rows in batches {
            let (upserts, removals) = layout.members(rows);
            plans.push((upserts, removals));
        }
        let count_of = |op: usize| {
            plans
                .iter()
                .filter(|(u, r)| !(if op == 0 { u } else { r }).is_empty())
                .count()
        };
        let (adds_in_group, removes_in_group) = (count_of(0), count_of(1));
        let mut planned: Vec<Planned<V::Wire>> = Vec::new();
        let (mut adds_seen, mut removes_seen) = (0, 0);
        let (estimated_total, session) = (part.estimated_total, part.session);
        let mut sent = part.sent;
        let audience = part.audience.clone();
        for (upserts, removals) in plans {
            let (ready_up, mut refused) = self.prepare(upserts);
            let (ready_rm, refused_rm) = self.prepare(removals);
            refused.extend(refused_rm);
            let mut sequences = [None, None];
            for (op, ready, seen, in_group) in [
                (0, &ready_up, &mut adds_seen, adds_in_group),
                (1, &ready_rm, &mut removes_seen, removes_in_group),
            ] {
                if ready.is_empty() {
                    continue;
                }
                *seen += 1;
                sent[op] += 1;
                sequences[op] = Some(Sequence {
                    number: sent[op],
                    last: last && *seen == in_group,
                    estimated_total,
                    session: session.wrapping_add(op as u64),
                });
            }
            planned.push((ready_up, ready_rm, refused, sequences));
        }
        if let Some(part) = self.part.as_mut() {
            part.sent = sent;
        }
        let vendor = self.vendor.clone();
        let cancellation = self.cancellation.clone();
        planned
            .into_iter()
            .map(|(ready_up, ready_rm, refused, sequences)| -> BatchRequest {
                let (vendor, audience) = (vendor.clone(), audience.clone());
                let (cancellation, counted) = (cancellation.clone(), self.sent.clone());
                Box::pin(async move {
                    let mut delivery = Delivery {
                        rejected: refused,
                        ..Delivery::default()
                    };
                    for (operation, ready, sequence) in [
                        (Operation::Add, ready_up, sequences[0]),
                        (Operation::Remove, ready_rm, sequences[1]),
                    ] {
                        let Some(sequence) = sequence else { continue };
                        let answer = cancellation
                            .unless_cancelled(vendor.send(&audience, operation, ready, sequence))
                            .await?;
                        counted.requests.fetch_add(1, Ordering::Relaxed);
                        counted
                            .members
                            .fetch_add(answer.accepted + answer.removed, Ordering::Relaxed);
                        add(&mut delivery, answer);
                    }
                    Ok(delivery)
                })
            })
            .collect()
    }

    async fn end_part(&mut self) -> Result<Delivery, Failure> {
        self.part = None;
        Ok(Delivery::default())
    }

    async fn commit(self: Box<Self>) -> Result<SinkSummary, Failure> {
        let requests = self.sent.requests.load(Ordering::Relaxed);
        let members = self.sent.members.load(Ordering::Relaxed);
        Ok(SinkSummary {
            location: format!(
                "{} {} in {} {} to {}",
                members,
                if members == 1 { "member" } else { "members" },
                requests,
                if requests == 1 { "request" } else { "requests" },
                self.vendor.type_id()
            ),
            ..SinkSummary::default()
        })
    }

    /// What the vendor confirmed stays: audiences have no transaction to roll back.
    async fn abort(self: Box<Self>) {}
}

/// A vendor id setting or config value, trimmed; empty when unset.
pub fn setting<'a>(run: &'a RunTarget<'_>, key: &str) -> &'a str {
    run.settings.get(key).map(|v| v.trim()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::connectors::Column;
    use crate::domain::catalog::FieldType;

    fn column(name: &str) -> Column {
        Column {
            name: name.into(),
            field_type: FieldType::String,
            description: String::new(),
            mapping: String::new(),
        }
    }

    #[test]
    fn rows_become_members_without_the_added_key_and_removals_by_their_flag() {
        let part = PartSchema {
            id: "vip".into(),
            source: "environments/acme/segments/vip".into(),
            description: "VIP".into(),
            primary_key: "id".into(),
            columns: vec![column("id"), column("email"), column("first_name")],
            incremental: true,
            added_key: true,
            estimated_records: 2,
            complete: false,
        };
        let layout = Layout::of(&part);
        let (upserts, removals) = layout.members(vec![
            vec![json!("c1"), json!("a@example.com"), Value::Null, json!(false)],
            vec![json!("c2"), json!("b@example.com"), json!("Bo"), json!(true)],
        ]);
        assert_eq!(upserts.len(), 1);
        assert_eq!(upserts[0].key, "c1");
        assert_eq!(
            upserts[0].values.iter().map(|(field, _)| field).collect::<Vec<_>>(),
            ["email"],
            "no key, no nulls"
        );
        assert_eq!(removals[0].key, "c2");
        assert_eq!(removals[0].text("first_name").as_deref(), Some("Bo"));
    }
}
