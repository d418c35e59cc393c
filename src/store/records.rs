//! Records: batched upserts and deletes with a change sequence, and keyset reads.
//!
//! One `WriteRecords` message is one transaction: it takes the entity's next change sequence
//! (which also serialises writers of that entity), upserts and tombstones its rows with that
//! sequence, removes deleted keys from the entity's segments, and adjusts the counts.

use std::collections::{HashMap, HashSet};

use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    TransactionTrait,
};
use serde_json::{Map, Value};

use super::Store;
use super::models::record::{ActiveModel, Column, Entity as Table};
use super::models::{segment, segment_member};
use crate::domain::catalog::ValidRecord;
use crate::domain::names::EntityName;
use crate::error::{Error, Result};

/// Rows per INSERT statement: well under SQLite's and PostgreSQL's bind-parameter limits.
const INSERT_CHUNK: usize = 2000;
/// Keys per `IN (…)` list.
const KEY_CHUNK: usize = 5000;

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
        let txn = self.writer().begin().await?;
        let seq = super::entities::next_change_seq(&txn, entity).await?;

        // Keys that are live now: upserting them does not add a record.
        let mut live = HashSet::new();
        for chunk in batch.upserts.chunks(KEY_CHUNK) {
            let keys: Vec<String> = chunk.iter().map(|r| r.key.clone()).collect();
            let found: Vec<String> = Table::find()
                .select_only()
                .column(Column::Key)
                .filter(Column::Env.eq(&entity.env))
                .filter(Column::Entity.eq(&entity.id))
                .filter(Column::Deleted.eq(false))
                .filter(Column::Key.is_in(keys))
                .into_tuple()
                .all(&txn)
                .await?;
            live.extend(found);
        }
        let added = batch.upserts.iter().filter(|r| !live.contains(&r.key)).count() as i64;

        for chunk in batch.upserts.chunks(INSERT_CHUNK) {
            let rows = chunk.iter().map(|r| ActiveModel {
                env: Set(entity.env.clone()),
                entity: Set(entity.id.clone()),
                key: Set(r.key.clone()),
                data: Set(Value::Object(r.data.clone()).to_string()),
                seq: Set(seq),
                deleted: Set(false),
            });
            Table::insert_many(rows)
                .on_conflict(
                    OnConflict::columns([Column::Env, Column::Entity, Column::Key])
                        .update_columns([Column::Data, Column::Seq, Column::Deleted])
                        .to_owned(),
                )
                .exec_without_returning(&txn)
                .await?;
        }

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
                    .filter(Column::Key.is_in(chunk.to_vec()))
                    .exec(&txn)
                    .await?;
                deleted += result.rows_affected as i64;
            }
            remove_from_segments(&txn, entity, &batch.deletes).await?;
        }
        super::entities::record_write(&txn, entity, added - deleted, seq).await?;
        txn.commit().await?;
        Ok(BatchOutcome {
            upserted: batch.upserts.len() as i64,
            deleted,
            change_seq: seq,
        })
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
        let models = query.order_by_asc(Column::Key).limit(limit).all(self.reader()).await?;
        models.into_iter().map(to_stored).collect()
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
        let models = query.order_by_asc(Column::Key).limit(limit).all(self.reader()).await?;
        models.into_iter().map(to_stored).collect()
    }

    /// Which of `keys` are live records of the entity.
    pub async fn live_keys(&self, entity: &EntityName, keys: &[String]) -> Result<HashSet<String>> {
        let mut found = HashSet::new();
        for chunk in keys.chunks(KEY_CHUNK) {
            let rows: Vec<String> = Table::find()
                .select_only()
                .column(Column::Key)
                .filter(Column::Env.eq(&entity.env))
                .filter(Column::Entity.eq(&entity.id))
                .filter(Column::Deleted.eq(false))
                .filter(Column::Key.is_in(chunk.to_vec()))
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

fn to_stored(model: super::models::record::Model) -> Result<StoredRecord> {
    let data = match serde_json::from_str::<Value>(&model.data) {
        Ok(Value::Object(map)) => map,
        _ => {
            return Err(Error::internal(format!(
                "record '{}' of '{}' is corrupt",
                model.key, model.entity
            )));
        }
    };
    Ok(StoredRecord {
        key: model.key,
        data,
        seq: model.seq,
        deleted: model.deleted,
    })
}

/// A deleted record leaves every segment of its entity.
async fn remove_from_segments(db: &impl ConnectionTrait, entity: &EntityName, keys: &[String]) -> Result<()> {
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
                .filter(segment_member::Column::Key.is_in(chunk.to_vec()))
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
