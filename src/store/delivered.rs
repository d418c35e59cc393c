//! What incremental segment exports have delivered. At run start the segment's current
//! members are snapshotted (state 1, "pending"); the run sends the members who joined or whose
//! records changed, then those who left (delivered but no longer in the snapshot); on success
//! the snapshot becomes the delivered set (state 0), in the transaction that ends the run.

use sea_orm::{ConnectionTrait, Statement};

use super::Store;
use super::records::StoredRecord;
use crate::domain::catalog::Segment;
use crate::domain::names::ExportName;
use crate::error::Result;

const DELIVERED: i32 = 0;
const PENDING: i32 = 1;

impl Store {
    /// Takes the snapshot of the segment's current members for a run of `export`.
    pub async fn snapshot_members(&self, export: &ExportName, segment: &Segment) -> Result<()> {
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
            values(vec![PENDING.into()]),
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
                PENDING.into(),
                segment.name.env.clone().into(),
                segment.name.id.clone().into(),
                segment.generation.into(),
            ]),
        ))
        .await?;
        Ok(())
    }

    /// Members of the snapshot who were not delivered or whose records changed after `since`,
    /// joined to their records, in key order after `after`.
    pub async fn joined_or_changed_members(
        &self,
        export: &ExportName,
        segment: &Segment,
        since: i64,
        after: Option<&str>,
        limit: u64,
    ) -> Result<Vec<StoredRecord>> {
        let backend = self.backend();
        let text = super::placeholders(
            backend,
            "SELECT r.key, r.data, r.seq FROM delivered_members p \
             JOIN records r ON r.env = p.env AND r.entity = ? AND r.key = p.key \
             LEFT JOIN delivered_members d ON d.env = p.env AND d.export = p.export AND d.segment = p.segment \
               AND d.state = 0 AND d.key = p.key \
             WHERE p.env = ? AND p.export = ? AND p.segment = ? AND p.state = 1 AND p.key > ? \
               AND NOT r.deleted AND (d.key IS NULL OR r.seq > ?) \
             ORDER BY p.key LIMIT ?",
        );
        let values: Vec<sea_orm::Value> = vec![
            segment.entity.id.clone().into(),
            export.env.clone().into(),
            export.id.clone().into(),
            segment.name.id.clone().into(),
            after.unwrap_or("").into(),
            since.into(),
            (limit as i64).into(),
        ];
        let rows = self
            .reader()
            .query_all_raw(Statement::from_sql_and_values(backend, text, values))
            .await?;
        rows.iter().map(super::records::live_record_of).collect()
    }

    /// Keys delivered before but absent from the snapshot (members who left, or whose records
    /// were deleted), in key order after `after`.
    pub async fn left_members(
        &self,
        export: &ExportName,
        segment: &Segment,
        after: Option<&str>,
        limit: u64,
    ) -> Result<Vec<String>> {
        let backend = self.backend();
        let text = super::placeholders(
            backend,
            "SELECT d.key FROM delivered_members d \
             LEFT JOIN delivered_members p ON p.env = d.env AND p.export = d.export AND p.segment = d.segment \
               AND p.state = 1 AND p.key = d.key \
             WHERE d.env = ? AND d.export = ? AND d.segment = ? AND d.state = 0 AND d.key > ? AND p.key IS NULL \
             ORDER BY d.key LIMIT ?",
        );
        let values: Vec<sea_orm::Value> = vec![
            export.env.clone().into(),
            export.id.clone().into(),
            segment.name.id.clone().into(),
            after.unwrap_or("").into(),
            (limit as i64).into(),
        ];
        let rows = self
            .reader()
            .query_all_raw(Statement::from_sql_and_values(backend, text, values))
            .await?;
        rows.into_iter()
            .map(|row| Ok(row.try_get_by_index::<String>(0)?))
            .collect()
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

/// Forgets everything an export delivered (when it is deleted).
pub(crate) async fn forget(db: &impl ConnectionTrait, export: &ExportName) -> Result<()> {
    let backend = db.get_database_backend();
    db.execute_raw(Statement::from_sql_and_values(
        backend,
        super::placeholders(backend, "DELETE FROM delivered_members WHERE env = ? AND export = ?"),
        vec![export.env.clone().into(), export.id.clone().into()],
    ))
    .await?;
    Ok(())
}
