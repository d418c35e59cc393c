//! What incremental segment exports have delivered. At run start the segment's current
//! members are snapshotted (state 1, "pending"); the run sends the members who joined or whose
//! records changed, then those who left (delivered but no longer in the snapshot); on success
//! the snapshot becomes the delivered set (state 0), in the transaction that ends the run.
//!
//! Audience targets (FULL and MIRROR, issue 16) keep the same delivered set, but per batch:
//! each member the target confirmed is added as its answer arrives, each removal it confirmed
//! taken out — so a failed or cancelled run keeps what was confirmed before it stopped and
//! nothing else. A MIRROR run compares the delivered set with its own snapshot (state 2, never
//! promoted): members who joined are those of the snapshot not delivered, members who left
//! those delivered and not in the snapshot.
//!
//! A preview (PRODUCT.md §13) asks the same questions without writing: it compares with the
//! segment's current members read in place ([`Members::Current`]) instead of a snapshot.

use sea_orm::{ConnectionTrait, Statement};

use super::Store;
use super::records::StoredRecord;
use crate::domain::catalog::Segment;
use crate::domain::names::ExportName;
use crate::error::Result;

const DELIVERED: i32 = 0;
/// The snapshot of an incremental run, promoted to the delivered set on success.
pub const PENDING: i32 = 1;
/// The snapshot of a MIRROR run (the delivered set changes per confirmed batch instead).
pub const MIRROR_SNAPSHOT: i32 = 2;
/// Keys per statement when confirmed members are recorded (bound values stay well below
/// SQLite's and PostgreSQL's limits).
const KEYS_PER_STATEMENT: usize = 500;

/// Whom the joiners/leavers queries compare with what an export delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Members {
    /// A snapshot taken at run start (`PENDING` or `MIRROR_SNAPSHOT`): fixed while the run
    /// reads, whatever replaces the segment's members meanwhile.
    Snapshot(i32),
    /// The segment's members of this generation, read in place: a preview, which must not
    /// write a snapshot.
    Current(i64),
}

impl Members {
    /// The table holding the members (aliased `p` by the caller) and the condition (with its
    /// values, in order) that picks the export's segment out of it; `p.env` and `p.key` are
    /// joined by the caller.
    pub(crate) fn table(
        &self,
        export: &ExportName,
        segment: &Segment,
    ) -> (&'static str, &'static str, Vec<sea_orm::Value>) {
        match *self {
            Members::Snapshot(state) => (
                "delivered_members",
                "p.export = ? AND p.segment = ? AND p.state = ?",
                vec![export.id.clone().into(), segment.name.id.clone().into(), state.into()],
            ),
            Members::Current(generation) => (
                "segment_members",
                "p.segment = ? AND p.generation = ?",
                vec![segment.name.id.clone().into(), generation.into()],
            ),
        }
    }
}

impl Store {
    /// Takes the snapshot of the segment's current members for an incremental run of `export`.
    pub async fn snapshot_members(&self, export: &ExportName, segment: &Segment) -> Result<()> {
        self.snapshot(export, segment, PENDING).await
    }

    /// Takes the snapshot of the segment's current members for a MIRROR run of `export`.
    pub async fn snapshot_mirror_members(&self, export: &ExportName, segment: &Segment) -> Result<()> {
        self.snapshot(export, segment, MIRROR_SNAPSHOT).await
    }

    async fn snapshot(&self, export: &ExportName, segment: &Segment, state: i32) -> Result<()> {
        let backend = self.backend();
        let db = &self.writer();
        let values = |extra: Vec<sea_orm::Value>| {
            let mut v: Vec<sea_orm::Value> = vec![
                export.env.clone().into(),
                export.id.clone().into(),
                segment.name.id.clone().into(),
            ];
            v.extend(extra);
            v
        };
        db.execute_raw(Statement::from_sql_and_values(
            backend,
            super::placeholders(
                backend,
                "DELETE FROM delivered_members WHERE env = ? AND export = ? AND segment = ? AND state = ?",
            ),
            values(vec![state.into()]),
        ))
        .await?;
        db.execute_raw(Statement::from_sql_and_values(
            backend,
            super::placeholders(
                backend,
                "INSERT INTO delivered_members (env, export, segment, state, key) \
                 SELECT ?, ?, ?, ?, m.key FROM segment_members m \
                 WHERE m.env = ? AND m.segment = ? AND m.generation = ?",
            ),
            values(vec![
                state.into(),
                segment.name.env.clone().into(),
                segment.name.id.clone().into(),
                segment.generation.into(),
            ]),
        ))
        .await?;
        Ok(())
    }

    /// Members (`members`) who were not delivered or whose records changed after `since`,
    /// joined to their records, in key order after `after`.
    pub async fn joined_or_changed_members(
        &self,
        export: &ExportName,
        segment: &Segment,
        members: Members,
        since: i64,
        after: Option<&str>,
        limit: u64,
    ) -> Result<Vec<StoredRecord>> {
        let backend = self.backend();
        let (table, picked, picked_values) = members.table(export, segment);
        let text = super::placeholders(
            backend,
            &format!(
                "SELECT r.key, r.data, r.seq FROM {table} p \
                 JOIN records r ON r.env = p.env AND r.entity = ? AND r.key = p.key \
                 LEFT JOIN delivered_members d ON d.env = p.env AND d.export = ? AND d.segment = ? \
                   AND d.state = 0 AND d.key = p.key \
                 WHERE p.env = ? AND {picked} AND p.key > ? \
                   AND NOT r.deleted AND (d.key IS NULL OR r.seq > ?) \
                 ORDER BY p.key LIMIT ?"
            ),
        );
        let mut values: Vec<sea_orm::Value> = vec![
            segment.entity.id.clone().into(),
            export.id.clone().into(),
            segment.name.id.clone().into(),
            export.env.clone().into(),
        ];
        values.extend(picked_values);
        values.extend([after.unwrap_or("").into(), since.into(), (limit as i64).into()]);
        let rows = self
            .reader()
            .query_all_raw(Statement::from_sql_and_values(backend, text, values))
            .await?;
        rows.iter().map(super::records::live_record_of).collect()
    }

    /// Keys delivered before but absent from `members` (members who left, or whose records
    /// were deleted), with the fields they were delivered with (audience targets, which remove
    /// people by the identifiers they were sent), in key order after `after`.
    pub async fn left_members(
        &self,
        export: &ExportName,
        segment: &Segment,
        members: Members,
        after: Option<&str>,
        limit: u64,
    ) -> Result<Vec<(String, Option<String>)>> {
        let backend = self.backend();
        let (table, picked, mut values) = members.table(export, segment);
        let text = super::placeholders(
            backend,
            &format!(
                "SELECT d.key, d.sent FROM delivered_members d \
                 LEFT JOIN {table} p ON p.env = d.env AND p.key = d.key AND {picked} \
                 WHERE d.env = ? AND d.export = ? AND d.segment = ? AND d.state = 0 AND d.key > ? AND p.key IS NULL \
                 ORDER BY d.key LIMIT ?"
            ),
        );
        values.extend([
            export.env.clone().into(),
            export.id.clone().into(),
            segment.name.id.clone().into(),
            after.unwrap_or("").into(),
            (limit as i64).into(),
        ]);
        let rows = self
            .reader()
            .query_all_raw(Statement::from_sql_and_values(backend, text, values))
            .await?;
        rows.into_iter()
            .map(|row| Ok((row.try_get_by_index::<String>(0)?, row.try_get_by_index(1)?)))
            .collect()
    }
}

impl Store {
    /// MIRROR: members (`members`) not delivered yet (those who joined, and those whose
    /// earlier delivery was refused), joined to their records, in key order after `after`.
    pub async fn joined_members(
        &self,
        export: &ExportName,
        segment: &Segment,
        members: Members,
        after: Option<&str>,
        limit: u64,
    ) -> Result<Vec<StoredRecord>> {
        // No delivered member's record changes "after the end of time".
        self.joined_or_changed_members(export, segment, members, i64::MAX, after, limit)
            .await
    }

    /// Records what the target confirmed for one batch of an audience export: `added` members
    /// (key, the fields sent as a JSON object) are delivered now, `removed` ones no longer.
    /// Called after each answer, so that what was confirmed stays recorded whatever happens to
    /// the run later.
    pub async fn confirm_delivered(
        &self,
        export: &ExportName,
        segment: &str,
        added: Vec<(String, String)>,
        removed: Vec<String>,
    ) -> Result<()> {
        let backend = self.backend();
        let db = &self.untracked_writer();
        let head =
            || -> Vec<sea_orm::Value> { vec![export.env.clone().into(), export.id.clone().into(), segment.into()] };
        let mut added = added.into_iter().peekable();
        while added.peek().is_some() {
            let keys: Vec<(String, String)> = added.by_ref().take(KEYS_PER_STATEMENT).collect();
            let rows = vec!["(?, ?, ?, 0, ?, ?)"; keys.len()].join(", ");
            let mut values = Vec::with_capacity(keys.len() * 5);
            for (key, sent) in keys {
                values.extend(head());
                values.push(key.into());
                values.push(sent.into());
            }
            db.execute_raw(Statement::from_sql_and_values(
                backend,
                super::placeholders(
                    backend,
                    &format!(
                        "INSERT INTO delivered_members (env, export, segment, state, key, sent) VALUES {rows} \
                         ON CONFLICT (env, export, segment, state, key) DO UPDATE SET sent = excluded.sent"
                    ),
                ),
                values,
            ))
            .await?;
        }
        for keys in removed.chunks(KEYS_PER_STATEMENT) {
            let marks = vec!["?"; keys.len()].join(", ");
            let mut values = head();
            values.extend(keys.iter().map(|k| sea_orm::Value::from(k.as_str())));
            db.execute_raw(Statement::from_sql_and_values(
                backend,
                super::placeholders(
                    backend,
                    &format!(
                        "DELETE FROM delivered_members WHERE env = ? AND export = ? AND segment = ? \
                         AND state = 0 AND key IN ({marks})"
                    ),
                ),
                values,
            ))
            .await?;
        }
        Ok(())
    }
}

/// The snapshots of a run become what the export has delivered (inside the transaction that
/// ends the run successfully).
pub(crate) async fn promote_snapshots(db: &impl ConnectionTrait, export: &ExportName) -> Result<()> {
    let backend = db.get_database_backend();
    let values = || -> Vec<sea_orm::Value> { vec![export.env.clone().into(), export.id.clone().into()] };
    let pending: Vec<sea_orm::Value> = {
        let mut v = values();
        v.push(PENDING.into());
        v
    };
    // Only segments with a snapshot are replaced.
    db.execute_raw(Statement::from_sql_and_values(
        backend,
        super::placeholders(
            backend,
            "DELETE FROM delivered_members WHERE env = ? AND export = ? AND state = 0 AND segment IN \
             (SELECT DISTINCT segment FROM delivered_members WHERE env = ? AND export = ? AND state = ?)",
        ),
        {
            let mut v = values();
            v.extend(pending.clone());
            v
        },
    ))
    .await?;
    db.execute_raw(Statement::from_sql_and_values(
        backend,
        super::placeholders(
            backend,
            "UPDATE delivered_members SET state = 0 WHERE env = ? AND export = ? AND state = ?",
        ),
        pending,
    ))
    .await?;
    let _ = DELIVERED;
    Ok(())
}

/// Forgets everything an export delivered, and the audiences it filled (when it is deleted).
pub(crate) async fn forget(db: &impl ConnectionTrait, export: &ExportName) -> Result<()> {
    let backend = db.get_database_backend();
    db.execute_raw(Statement::from_sql_and_values(
        backend,
        super::placeholders(backend, "DELETE FROM delivered_members WHERE env = ? AND export = ?"),
        vec![export.env.clone().into(), export.id.clone().into()],
    ))
    .await?;
    super::audiences::forget(db, export).await
}
