//! Rejected records (PRODUCT.md §12): one row per export, source and key, written with each
//! batch's result before the run moves on, so that nothing is lost across a crash. A key stays
//! *outstanding* until a later successful run has sent it again without a reject (or it no
//! longer exists); delivered rows are kept, so that a run's rejects can still be listed.
//!
//! A taken-over attempt writes under the same run: a key it rejects again is the same reject
//! (its `attempts` is not counted twice).

use std::collections::{BTreeMap, HashSet};

use sea_orm::ConnectionTrait;
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set, Statement,
};

use super::Store;
use super::list::{compare, page_of, to_condition};
use super::models::rejected_record::{ActiveModel, Column, Entity as Table, Model};
use super::records::StoredRecord;
use crate::domain::catalog::Segment;
use crate::domain::list_query::{CompareOp, Filter, Value};
use crate::domain::names::{EntityName, ExportName};
use crate::domain::paging::Page;
use crate::domain::time::now_micros;
use crate::error::Result;

/// Keys per `IN (…)` list.
const KEY_CHUNK: usize = 500;

/// A reject of a batch, as the pipeline hands it over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewReject {
    pub key: String,
    pub reason: String,
    pub code: String,
}

/// One stored reject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredReject {
    pub export: ExportName,
    pub key: String,
    pub source: String,
    pub reason: String,
    pub code: String,
    pub run_id: String,
    pub attempts: i64,
    pub first_reject_time: i64,
    pub last_reject_time: i64,
    pub outstanding: bool,
}

/// Which rejects a list shows.
pub struct RejectQuery<'a> {
    pub export: &'a ExportName,
    /// The rejects of this run; None: those outstanding for the export.
    pub run_id: Option<&'a str>,
    pub filter: Option<&'a Filter>,
    pub page: Page,
}

fn to_domain(model: Model) -> Result<StoredReject> {
    Ok(StoredReject {
        export: ExportName::new(&model.env, &model.export),
        key: model.key,
        source: model.source,
        reason: model.reason,
        code: model.code,
        run_id: model.run,
        attempts: model.attempts,
        first_reject_time: model.first_reject_time,
        last_reject_time: model.last_reject_time,
        outstanding: model.outstanding,
    })
}

fn reject_filter_leaf(field: &str, op: CompareOp, value: &Value) -> Expr {
    match (field, value) {
        ("source", Value::String(text)) if op == CompareOp::Has => {
            super::list::contains_ci(Expr::col(Column::Source), text)
        }
        ("source", Value::String(text)) => compare(Expr::col(Column::Source), op, text.clone()),
        ("code", Value::String(text) | Value::Word(text)) => compare(Expr::col(Column::Code), op, text.clone()),
        _ => Expr::val(false).eq(true),
    }
}

fn of_export(export: &ExportName) -> Condition {
    Condition::all()
        .add(Column::Env.eq(&export.env))
        .add(Column::Export.eq(&export.id))
}

impl Store {
    /// Stores one batch's rejects as `run_id`'s, in one transaction.
    pub async fn record_rejects(
        &self,
        export: &ExportName,
        run_id: &str,
        source: &str,
        rejects: &[NewReject],
    ) -> Result<()> {
        if rejects.is_empty() {
            return Ok(());
        }
        // The last reject of a key in a batch wins.
        let by_key: BTreeMap<&str, &NewReject> = rejects.iter().map(|r| (r.key.as_str(), r)).collect();
        let keys: Vec<&str> = by_key.keys().copied().collect();
        let now = now_micros();
        let txn = self.writer().begin().await?;
        for chunk in keys.chunks(KEY_CHUNK) {
            let stored: Vec<Model> = Table::find()
                .filter(of_export(export))
                .filter(Column::Source.eq(source))
                .filter(Column::Key.is_in(chunk.iter().copied()))
                .all(&txn)
                .await?;
            let stored: BTreeMap<String, Model> = stored.into_iter().map(|m| (m.key.clone(), m)).collect();
            let mut new = Vec::new();
            for key in chunk {
                let reject = by_key[key];
                match stored.get(*key) {
                    Some(model) => {
                        let same_run = model.run == run_id;
                        // Runs in a row: a key delivered in between starts again at 1.
                        let (attempts, first) = match (same_run, model.outstanding) {
                            (true, _) => (model.attempts, model.first_reject_time),
                            (false, true) => (model.attempts + 1, model.first_reject_time),
                            (false, false) => (1, now),
                        };
                        let mut active: ActiveModel = model.clone().into();
                        active.reason = Set(reject.reason.clone());
                        active.code = Set(reject.code.clone());
                        active.run = Set(run_id.to_string());
                        active.attempts = Set(attempts);
                        active.first_reject_time = Set(first);
                        active.last_reject_time = Set(now);
                        active.outstanding = Set(true);
                        active.update(&txn).await?;
                    }
                    None => new.push(ActiveModel {
                        env: Set(export.env.clone()),
                        export: Set(export.id.clone()),
                        source: Set(source.to_string()),
                        key: Set(key.to_string()),
                        reason: Set(reject.reason.clone()),
                        code: Set(reject.code.clone()),
                        run: Set(run_id.to_string()),
                        attempts: Set(1),
                        first_reject_time: Set(now),
                        last_reject_time: Set(now),
                        outstanding: Set(true),
                    }),
                }
            }
            if !new.is_empty() {
                Table::insert_many(new).exec(&txn).await?;
            }
        }
        txn.commit().await?;
        Ok(())
    }

    /// The keys of `source` that earlier runs of `export` rejected and that are still
    /// outstanding as run `run_id` starts (or continues as a taken-over attempt: what its
    /// earlier attempt rejected for the first time is not an earlier run's reject).
    pub async fn outstanding_keys(&self, export: &ExportName, source: &str, run_id: &str) -> Result<HashSet<String>> {
        let keys: Vec<String> = Table::find()
            .select_only()
            .column(Column::Key)
            .filter(of_export(export))
            .filter(Column::Source.eq(source))
            .filter(Column::Outstanding.eq(true))
            .filter(Condition::any().add(Column::Run.ne(run_id)).add(Column::Attempts.gt(1)))
            .into_tuple()
            .all(self.reader())
            .await?;
        Ok(keys.into_iter().collect())
    }

    /// After a successful run of `export` that sent every outstanding key of `sources` that
    /// still exists: what it did not reject again is no longer outstanding (delivered, or gone).
    pub async fn settle_rejects(&self, export: &ExportName, run_id: &str, sources: &[String]) -> Result<u64> {
        let result = Table::update_many()
            .col_expr(Column::Outstanding, Expr::val(false))
            .filter(of_export(export))
            .filter(Column::Outstanding.eq(true))
            .filter(Column::Run.ne(run_id))
            .filter(Column::Source.is_in(sources.iter().map(String::as_str)))
            .exec(&self.untracked_writer())
            .await?;
        Ok(result.rows_affected)
    }

    /// One page of an export's outstanding rejects, or of one run's, in source and key order.
    pub async fn list_rejects(&self, query: &RejectQuery<'_>) -> Result<(Vec<StoredReject>, u64)> {
        let mut condition = of_export(query.export);
        condition = match query.run_id {
            Some(run) => condition.add(Column::Run.eq(run)),
            None => condition.add(Column::Outstanding.eq(true)),
        };
        if let Some(filter) = query.filter {
            condition = condition.add(to_condition(filter, &reject_filter_leaf));
        }
        page_of(
            self.reader(),
            Table::find().filter(condition),
            |select| select.order_by_asc(Column::Source).order_by_asc(Column::Key),
            query.page,
            to_domain,
        )
        .await
    }

    /// Outstanding rejects of an entity that an incremental run would not send otherwise (not
    /// changed since `since`), joined to their live records, in key order after `after`.
    pub async fn outstanding_unchanged_records(
        &self,
        export: &ExportName,
        entity: &EntityName,
        since: i64,
        after: Option<&str>,
        limit: u64,
    ) -> Result<Vec<StoredRecord>> {
        let backend = self.backend();
        let text = super::placeholders(
            backend,
            "SELECT r.key, r.data, r.seq FROM rejected_records x \
             JOIN records r ON r.env = x.env AND r.entity = ? AND r.key = x.key \
             WHERE x.env = ? AND x.export = ? AND x.source = ? AND x.outstanding = ? AND x.key > ? \
               AND NOT r.deleted AND r.seq <= ? \
             ORDER BY x.key LIMIT ?",
        );
        let values: Vec<sea_orm::Value> = vec![
            entity.id.clone().into(),
            export.env.clone().into(),
            export.id.clone().into(),
            entity.to_string().into(),
            true.into(),
            after.unwrap_or("").into(),
            since.into(),
            (limit as i64).into(),
        ];
        self.query_records(text, values).await
    }

    /// Outstanding rejects of an incremental or MIRROR segment export that its run would not
    /// send otherwise: members (`members`: the run's snapshot, or a preview's current members)
    /// who were delivered before and whose records did not change since `since`, in key order
    /// after `after`.
    pub async fn outstanding_unchanged_members(
        &self,
        export: &ExportName,
        segment: &Segment,
        members: super::delivered::Members,
        since: i64,
        after: Option<&str>,
        limit: u64,
    ) -> Result<Vec<StoredRecord>> {
        let backend = self.backend();
        let (table, picked, mut values) = members.table(export, segment);
        let text = super::placeholders(
            backend,
            &format!(
                "SELECT r.key, r.data, r.seq FROM rejected_records x \
                 JOIN {table} p ON p.env = x.env AND p.key = x.key AND {picked} \
                 JOIN delivered_members d ON d.env = x.env AND d.export = x.export AND d.segment = ? \
                   AND d.state = 0 AND d.key = x.key \
                 JOIN records r ON r.env = x.env AND r.entity = ? AND r.key = x.key \
                 WHERE x.env = ? AND x.export = ? AND x.source = ? AND x.outstanding = ? AND x.key > ? \
                   AND NOT r.deleted AND r.seq <= ? \
                 ORDER BY x.key LIMIT ?"
            ),
        );
        values.extend([
            segment.name.id.clone().into(),
            segment.entity.id.clone().into(),
            export.env.clone().into(),
            export.id.clone().into(),
            segment.name.to_string().into(),
            true.into(),
            after.unwrap_or("").into(),
            since.into(),
            (limit as i64).into(),
        ]);
        self.query_records(text, values).await
    }

    async fn query_records(&self, text: String, values: Vec<sea_orm::Value>) -> Result<Vec<StoredRecord>> {
        let rows = self
            .reader()
            .query_all_raw(Statement::from_sql_and_values(self.backend(), text, values))
            .await?;
        rows.iter().map(super::records::live_record_of).collect()
    }
}

/// Deletes an export's rejects inside the transaction that deletes the export.
pub(crate) async fn delete_rejects_of(db: &impl sea_orm::ConnectionTrait, export: &ExportName) -> Result<()> {
    Table::delete_many().filter(of_export(export)).exec(db).await?;
    Ok(())
}
