//! Records: batched upserts and deletes with a change sequence, and keyset reads.
//!
//! One `WriteRecords` message is one transaction: it takes the entity's next change sequence
//! (which also serialises writers of that entity), upserts and tombstones its rows with that
//! sequence, removes deleted keys from the entity's segments, and adjusts the counts.
//!
//! On PostgreSQL the upserts of a message first go in by one COPY, which holds as long as none
//! of their keys is stored yet; otherwise they are upserted (see `copy_new_records`).

use std::collections::{HashMap, HashSet};

use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Statement};
use serde_json::{Map, Value};

use super::Store;
use super::models::record::{Column, Entity as Table};
use super::models::{segment, segment_member};
use super::tuning::pg_copy::{Copied, CopyTxn};
use crate::copy_text::push_copy_text;
use crate::domain::catalog::ValidRecord;
use crate::domain::names::EntityName;
use crate::error::{Error, Result};

/// Rows per PostgreSQL upsert statement.
const INSERT_CHUNK: usize = 5000;
/// Keys per `IN (…)` list.
const KEY_CHUNK: usize = 5000;
/// Rows per piece of a COPY's data.
const COPY_SLICE: usize = 500;

/// What one message changes.
#[derive(Debug, Default)]
pub struct RecordBatch {
    pub upserts: Vec<ValidRecord>,
    pub deletes: Vec<String>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchOutcome {
    pub upserted: i64,
    /// Keys that existed and were deleted.
    pub deleted: i64,
    pub change_seq: i64,
}

/// One stored record as the pipeline reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRecord {
    pub key: String,
    pub data: Map<String, Value>,
    pub seq: i64,
    pub deleted: bool,
}

impl Store {
    /// Applies one batch atomically.
    pub async fn write_records(&self, entity: &EntityName, mut batch: RecordBatch) -> Result<BatchOutcome> {
        // The last upsert of a key in a batch wins.
        let mut positions: HashMap<String, usize> = HashMap::with_capacity(batch.upserts.len());
        for (i, record) in batch.upserts.iter().enumerate() {
            positions.insert(record.key.clone(), i);
        }
        if positions.len() < batch.upserts.len() {
            let keep: HashSet<usize> = positions.values().copied().collect();
            let mut i = 0;
            batch.upserts.retain(|_| {
                i += 1;
                keep.contains(&(i - 1))
            });
        }
        let outcome = if self.is_postgres() {
            let pool = self.primary().get_postgres_connection_pool();
            // First bet that every key is new, for one COPY (see `copy_new_records`); if one is
            // stored already, that transaction ends and the batch is upserted in another.
            let txn = CopyTxn::begin(pool).await?;
            match apply_batch(&txn, Some(&txn), entity, &mut batch).await? {
                Some(outcome) => {
                    txn.commit().await?;
                    outcome
                }
                None => {
                    txn.rollback().await?;
                    let txn = CopyTxn::begin(pool).await?;
                    let outcome = upsert_batch(&txn, entity, &mut batch).await?;
                    txn.commit().await?;
                    outcome
                }
            }
        } else {
            // Upserts change only records and their entity, which no cached read uses: a
            // backend publishing records all day leaves exports cached. Deletes also take keys
            // out of segments, whose member counts cached export reads show.
            let writer = if batch.deletes.is_empty() {
                self.untracked_writer()
            } else {
                self.writer()
            };
            let txn = writer.begin().await?;
            let outcome = upsert_batch(&txn, entity, &mut batch).await?;
            txn.commit().await?;
            outcome
        };
        self.wrote_rows("records", batch.upserts.len() as u64);
        Ok(outcome)
    }

    /// Up to `limit` live records after `after_key`, in key order (keyset paging: memory does
    /// not grow with the entity).
    pub async fn read_records(
        &self,
        entity: &EntityName,
        after_key: Option<&str>,
        limit: u64,
    ) -> Result<Vec<StoredRecord>> {
        let mut query = Table::find()
            .filter(Column::Env.eq(&entity.env))
            .filter(Column::Entity.eq(&entity.id))
            .filter(Column::Deleted.eq(false));
        if let Some(after) = after_key {
            query = query.filter(Column::Key.gt(after));
        }
        let rows: Vec<(String, String, i64, bool)> = query
            .select_only()
            .columns([Column::Key, Column::Data, Column::Seq, Column::Deleted])
            .order_by_asc(Column::Key)
            .limit(limit)
            .into_tuple()
            .all(self.reader())
            .await?;
        rows.into_iter().map(to_stored).collect()
    }

    /// Records written (upserted or deleted) after change sequence `since`, up to `until`, in
    /// key order after `after_key`.
    pub async fn read_changes(
        &self,
        entity: &EntityName,
        since: i64,
        until: i64,
        after_key: Option<&str>,
        limit: u64,
    ) -> Result<Vec<StoredRecord>> {
        let mut query = Table::find()
            .filter(Column::Env.eq(&entity.env))
            .filter(Column::Entity.eq(&entity.id))
            .filter(Column::Seq.gt(since))
            .filter(Column::Seq.lte(until));
        if let Some(after) = after_key {
            query = query.filter(Column::Key.gt(after));
        }
        let rows: Vec<(String, String, i64, bool)> = query
            .select_only()
            .columns([Column::Key, Column::Data, Column::Seq, Column::Deleted])
            .order_by_asc(Column::Key)
            .limit(limit)
            .into_tuple()
            .all(self.reader())
            .await?;
        rows.into_iter().map(to_stored).collect()
    }

    /// Which of `keys` are live records of the entity.
    pub async fn live_keys(&self, entity: &EntityName, keys: &[String]) -> Result<HashSet<String>> {
        let mut found = HashSet::new();
        let backend = self.backend();
        for chunk in keys.chunks(KEY_CHUNK) {
            let chunk: Vec<&str> = chunk.iter().map(String::as_str).collect();
            let rows: Vec<String> = Table::find()
                .select_only()
                .column(Column::Key)
                .filter(Column::Env.eq(&entity.env))
                .filter(Column::Entity.eq(&entity.id))
                .filter(Column::Deleted.eq(false))
                .filter(super::key_in(backend, "records", &chunk))
                .into_tuple()
                .all(self.reader())
                .await?;
            found.extend(rows);
        }
        Ok(found)
    }

    pub fn backend_name(&self) -> &'static str {
        match self.backend() {
            DbBackend::Postgres => "postgres",
            DbBackend::Sqlite => "sqlite",
            _ => "other",
        }
    }
}

/// One batch inside `txn`, its upserts by upsert statements.
async fn upsert_batch(
    txn: &impl ConnectionTrait,
    entity: &EntityName,
    batch: &mut RecordBatch,
) -> Result<BatchOutcome> {
    apply_batch(txn, None, entity, batch)
        .await?
        .ok_or_else(|| Error::internal("an upsert reported a conflict"))
}

/// One batch inside `txn`. With a `copier` (on PostgreSQL, that same transaction) the upserts
/// are inserted by COPY; None means that one of their keys was stored already, and `txn` is
/// aborted.
async fn apply_batch(
    txn: &impl ConnectionTrait,
    copier: Option<&CopyTxn>,
    entity: &EntityName,
    batch: &mut RecordBatch,
) -> Result<Option<BatchOutcome>> {
    let backend = txn.get_database_backend();
    let seq = super::entities::next_change_seq(txn, entity).await?;

    // How many upserted keys became live records that were not before.
    let added = match copier {
        Some(copier) => match copy_new_records(copier, entity, seq, &batch.upserts).await? {
            Copied::Rows(rows) => rows as i64,
            Copied::Conflict => return Ok(None),
        },
        None => upsert_all(txn, backend, entity, seq, &batch.upserts).await?,
    };

    let mut deleted = 0;
    if !batch.deletes.is_empty() {
        batch.deletes.sort();
        batch.deletes.dedup();
        for chunk in batch.deletes.chunks(KEY_CHUNK) {
            let result = Table::update_many()
                .col_expr(Column::Deleted, Expr::val(true))
                .col_expr(Column::Data, Expr::val("{}"))
                .col_expr(Column::Seq, Expr::val(seq))
                .filter(Column::Env.eq(&entity.env))
                .filter(Column::Entity.eq(&entity.id))
                .filter(Column::Deleted.eq(false))
                .filter(super::key_in(
                    backend,
                    "records",
                    &chunk.iter().map(String::as_str).collect::<Vec<_>>(),
                ))
                .exec(txn)
                .await?;
            deleted += result.rows_affected as i64;
        }
        remove_from_segments(txn, backend, entity, &batch.deletes).await?;
    }
    super::entities::record_write(txn, entity, added - deleted, seq).await?;
    Ok(Some(BatchOutcome {
        upserted: batch.upserts.len() as i64,
        deleted,
        change_seq: seq,
    }))
}

/// Inserts the records with one COPY, betting that none of their keys is stored yet (the
/// common case of a backend publishing new records): COPY inserts a page at a time, several
/// times faster than an upsert. Writers of an entity take turns (its change sequence row is
/// locked), so a key can only collide with a committed record; then the COPY fails as a whole
/// (`Copied::Conflict`), which costs at most the part of one COPY before the first stored key.
async fn copy_new_records(txn: &CopyTxn, entity: &EntityName, seq: i64, records: &[ValidRecord]) -> Result<Copied> {
    if records.is_empty() {
        return Ok(Copied::Rows(0));
    }
    let mut prefix = String::new();
    push_copy_text(&mut prefix, &entity.env);
    prefix.push('\t');
    push_copy_text(&mut prefix, &entity.id);
    prefix.push('\t');
    let suffix = format!("\t{seq}\tf\t0\n");
    // Made slice by slice while the server reads the one before.
    let slices = records.chunks(COPY_SLICE).map(move |slice| {
        let mut rows = String::with_capacity(slice.len() * 200);
        for record in slice {
            rows.push_str(&prefix);
            push_copy_text(&mut rows, &record.key);
            rows.push('\t');
            push_copy_text(&mut rows, &record.json);
            rows.push_str(&suffix);
        }
        rows
    });
    Ok(txn
        .copy_in(
            "COPY records (env, entity, key, data, seq, deleted, prev_state) FROM STDIN",
            slices,
        )
        .await?)
}

/// Upserts in chunks; returns how many rows became live records that were not before. Each
/// row notes what it replaced (`prev_state`: 0 nothing, 1 a tombstone, 2 a live record).
async fn upsert_all(
    txn: &impl ConnectionTrait,
    backend: DbBackend,
    entity: &EntityName,
    seq: i64,
    records: &[ValidRecord],
) -> Result<i64> {
    if backend == DbBackend::Postgres {
        let mut added = 0;
        for chunk in records.chunks(INSERT_CHUNK) {
            added += upsert_chunk_postgres(txn, entity, seq, chunk).await?;
        }
        return Ok(added);
    }
    for chunk in sqlite_chunks(records) {
        upsert_chunk_sqlite(txn, entity, seq, chunk).await?;
    }
    // Every row this batch wrote has its sequence; counted in the database, not row by row
    // through a RETURNING clause (each returned row would cross from sqlx's SQLite thread).
    let sql = "SELECT count(*) FROM records WHERE env = ? AND entity = ? AND seq = ? AND prev_state < 2";
    let values: Vec<sea_orm::Value> = vec![entity.env.clone().into(), entity.id.clone().into(), seq.into()];
    let row = txn
        .query_one_raw(Statement::from_sql_and_values(backend, sql, values))
        .await?;
    Ok(row.map(|r| r.try_get_by_index::<i64>(0)).transpose()?.unwrap_or(0))
}

/// Rows per SQLite upsert statement (a power of two).
const SQLITE_UPSERT_ROWS: usize = 2048;

/// The records in pieces whose sizes are powers of two up to `SQLITE_UPSERT_ROWS`. Each size is
/// its own statement text, which sqlx keeps prepared per connection: this way at most twelve of
/// them ever exist, whatever sizes the batches come in.
fn sqlite_chunks(records: &[ValidRecord]) -> impl Iterator<Item = &[ValidRecord]> {
    let mut rest = records;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let size = SQLITE_UPSERT_ROWS.min(1 << rest.len().ilog2());
        let (chunk, tail) = rest.split_at(size);
        rest = tail;
        Some(chunk)
    })
}

/// What an upsert sets `prev_state` to for a row that existed.
const PREVIOUS_STATE: &str = "CASE WHEN records.deleted THEN 1 ELSE 2 END";

/// The upsert of one chunk on PostgreSQL, with the rows passed as ONE JSON parameter: the
/// database parses it natively, so a chunk costs one bind instead of one per value. Returns
/// how many rows became live records that were not before.
async fn upsert_chunk_postgres(
    db: &impl ConnectionTrait,
    entity: &EntityName,
    seq: i64,
    chunk: &[ValidRecord],
) -> Result<i64> {
    let mut rows = String::with_capacity(chunk.len() * 160);
    rows.push('[');
    for (i, record) in chunk.iter().enumerate() {
        if i > 0 {
            rows.push(',');
        }
        rows.push_str("{\"k\":");
        rows.push_str(&serde_json::to_string(&record.key).expect("strings serialize"));
        rows.push_str(",\"d\":");
        rows.push_str(&record.json);
        rows.push('}');
    }
    rows.push(']');
    let values: Vec<sea_orm::Value> = vec![
        entity.env.clone().into(),
        entity.id.clone().into(),
        seq.into(),
        rows.into(),
    ];
    let sql = format!(
        "WITH up AS (INSERT INTO records (env, entity, key, data, seq, deleted, prev_state) \
         SELECT $1, $2, x.k, x.d::text, $3, false, 0 FROM json_to_recordset($4::json) AS x(k text, d json) \
         ON CONFLICT (env, entity, key) DO UPDATE SET data = excluded.data, seq = excluded.seq, \
         deleted = false, prev_state = {PREVIOUS_STATE} RETURNING prev_state) \
         SELECT count(*) FILTER (WHERE prev_state < 2) AS added FROM up"
    );
    let row = db
        .query_one_raw(Statement::from_sql_and_values(DbBackend::Postgres, sql, values))
        .await?;
    Ok(row.map(|r| r.try_get_by_index::<i64>(0)).transpose()?.unwrap_or(0))
}

/// The upsert of one chunk on SQLite: one multi-row VALUES with each key and record bound as it
/// is (SQLite takes bound text without parsing it, where JSON passed whole would be parsed and
/// each record re-serialised). Parameters are anonymous (`?`): sqlx looks a numbered one (`?7`) up by
/// name, which SQLite finds by a linear search, so thousands of them would cost quadratic time.
async fn upsert_chunk_sqlite(
    db: &impl ConnectionTrait,
    entity: &EntityName,
    seq: i64,
    chunk: &[ValidRecord],
) -> Result<()> {
    let mut sql = String::with_capacity(400 + chunk.len() * 8);
    // `WHERE true` keeps SQLite's parser from reading ON CONFLICT as part of the join.
    sql.push_str(
        "WITH batch (env, entity, seq) AS (SELECT ?, ?, ?) \
         INSERT INTO records (env, entity, key, data, seq, deleted, prev_state) \
         SELECT batch.env, batch.entity, row.column1, row.column2, batch.seq, 0, 0 FROM batch, (VALUES ",
    );
    let mut values: Vec<sea_orm::Value> = Vec::with_capacity(3 + 2 * chunk.len());
    values.extend([entity.env.clone().into(), entity.id.clone().into(), seq.into()]);
    for (i, record) in chunk.iter().enumerate() {
        sql.push_str(if i == 0 { "(?, ?)" } else { ",(?, ?)" });
        values.push(record.key.clone().into());
        values.push(record.json.clone().into());
    }
    sql.push_str(") AS row WHERE true ON CONFLICT (env, entity, key) DO UPDATE SET data = excluded.data, seq = excluded.seq, deleted = 0, prev_state = ");
    sql.push_str(PREVIOUS_STATE);
    db.execute_raw(Statement::from_sql_and_values(DbBackend::Sqlite, sql, values))
        .await?;
    Ok(())
}

/// A record that is not deleted, from a row whose first columns are its key, data and seq (the
/// readers of segment members and of incremental deliveries select them so).
pub(crate) fn live_record_of(row: &sea_orm::QueryResult) -> Result<StoredRecord> {
    to_stored((
        row.try_get_by_index(0)?,
        row.try_get_by_index(1)?,
        row.try_get_by_index(2)?,
        false,
    ))
}

fn to_stored((key, data, seq, deleted): (String, String, i64, bool)) -> Result<StoredRecord> {
    let data = match serde_json::from_str::<Value>(&data) {
        Ok(Value::Object(map)) => map,
        _ => return Err(Error::internal(format!("record '{key}' is corrupt"))),
    };
    Ok(StoredRecord {
        key,
        data,
        seq,
        deleted,
    })
}

/// A deleted record leaves every segment of its entity.
async fn remove_from_segments(
    db: &impl ConnectionTrait,
    backend: DbBackend,
    entity: &EntityName,
    keys: &[String],
) -> Result<()> {
    let segments = segment::Entity::find()
        .filter(segment::Column::Env.eq(&entity.env))
        .filter(segment::Column::Entity.eq(&entity.id))
        .all(db)
        .await?;
    for s in segments {
        let mut removed = 0i64;
        for chunk in keys.chunks(KEY_CHUNK) {
            let result = segment_member::Entity::delete_many()
                .filter(segment_member::Column::Env.eq(&s.env))
                .filter(segment_member::Column::Segment.eq(&s.id))
                .filter(segment_member::Column::Generation.eq(s.generation))
                .filter(super::key_in(
                    backend,
                    "segment_members",
                    &chunk.iter().map(String::as_str).collect::<Vec<_>>(),
                ))
                .exec(db)
                .await?;
            removed += result.rows_affected as i64;
        }
        if removed > 0 {
            segment::Entity::update_many()
                .col_expr(
                    segment::Column::MemberCount,
                    Expr::col(segment::Column::MemberCount).sub(removed),
                )
                .filter(segment::Column::Env.eq(&s.env))
                .filter(segment::Column::Id.eq(&s.id))
                .exec(db)
                .await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_upserts_come_in_few_distinct_sizes() {
        let record = |i: usize| ValidRecord {
            key: format!("k{i}"),
            json: "{}".into(),
        };
        for n in [0, 1, 3, 511, 512, 513, 5000] {
            let records: Vec<ValidRecord> = (0..n).map(record).collect();
            let sizes: Vec<usize> = sqlite_chunks(&records).map(<[ValidRecord]>::len).collect();
            assert_eq!(sizes.iter().sum::<usize>(), n);
            assert!(
                sizes.iter().all(|s| s.is_power_of_two() && *s <= SQLITE_UPSERT_ROWS),
                "{n}: {sizes:?}"
            );
            let full = n / SQLITE_UPSERT_ROWS;
            assert_eq!(
                sizes.len(),
                full + (n % SQLITE_UPSERT_ROWS).count_ones() as usize,
                "{n}: {sizes:?}"
            );
        }
        let keys: Vec<String> = sqlite_chunks(&(0..5).map(record).collect::<Vec<_>>())
            .flatten()
            .map(|r| r.key.clone())
            .collect();
        assert_eq!(keys, ["k0", "k1", "k2", "k3", "k4"], "in order, each once");
    }
}
