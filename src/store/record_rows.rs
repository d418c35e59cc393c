//! Whole batches of live records as rows, for full exports.
//!
//! A full export reads every live record of an entity in key order. Reading them row by row
//! costs a hand-off per row (sqlx's SQLite worker thread sends each row over a channel) and a
//! JSON map per record. Here the database joins a batch's stored JSON documents into one text,
//! one per line (stored documents are compact JSON, which never holds a raw line break), and
//! each document is parsed straight into the row's cells: no map, no per-row hand-off.

use std::fmt;

use sea_orm::{ConnectionTrait, DbBackend, Statement};
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;

use super::Store;
use crate::domain::catalog::Segment;
use crate::domain::names::EntityName;
use crate::error::{Error, Result};

/// One batch of live records as their stored JSON documents, one per line, and the last key
/// (where the next batch starts). Parsing waits for [`DocumentBatch::rows`], so that whoever
/// reads batches can already fetch the next one while this one is parsed and written.
#[derive(Debug, Default)]
pub struct DocumentBatch {
    documents: String,
    pub count: usize,
    pub last_key: Option<String>,
}

impl DocumentBatch {
    /// The batch as rows of `fields` (absent fields are null), in the order the database
    /// joined the documents.
    pub fn rows(&self, fields: &[String]) -> Result<Vec<Vec<Value>>> {
        if self.count == 0 {
            return Ok(Vec::new());
        }
        let columns = ColumnIndex::new(fields);
        let rows = self
            .documents
            .split('\n')
            .map(|document| columns.row(document))
            .collect::<Result<Vec<_>>>()?;
        if rows.len() != self.count {
            return Err(Error::internal(format!(
                "a batch of {} stored records split into {} documents",
                self.count,
                rows.len()
            )));
        }
        Ok(rows)
    }
}

impl Store {
    /// Up to `limit` live records after `after_key`, in key order, as one text.
    pub async fn read_record_documents(
        &self,
        entity: &EntityName,
        after_key: Option<&str>,
        limit: u64,
    ) -> Result<DocumentBatch> {
        let batch = "SELECT key, data FROM records \
             WHERE env = ? AND entity = ? AND deleted = ? AND key > ? ORDER BY key LIMIT ?";
        let values: Vec<sea_orm::Value> = vec![
            entity.env.clone().into(),
            entity.id.clone().into(),
            false.into(),
            after_key.unwrap_or("").to_string().into(),
            (limit as i64).into(),
        ];
        self.documents_of(batch, values).await
    }

    /// Up to `limit` members of the segment's current generation after `after_key`, joined to
    /// their live records, in key order, as one text (a FULL segment export reads its members
    /// as a full entity export reads its records).
    pub async fn read_member_documents(
        &self,
        segment: &Segment,
        after_key: Option<&str>,
        limit: u64,
    ) -> Result<DocumentBatch> {
        // The members' primary key gives them in key order; each joins its record by its own
        // primary key.
        let batch = "SELECT r.key AS key, r.data AS data FROM segment_members m \
             JOIN records r ON r.env = m.env AND r.entity = ? AND r.key = m.key \
             WHERE m.env = ? AND m.segment = ? AND m.generation = ? AND m.key > ? AND r.deleted = ? \
             ORDER BY m.key LIMIT ?";
        let values: Vec<sea_orm::Value> = vec![
            segment.entity.id.clone().into(),
            segment.name.env.clone().into(),
            segment.name.id.clone().into(),
            segment.generation.into(),
            after_key.unwrap_or("").to_string().into(),
            false.into(),
            (limit as i64).into(),
        ];
        self.documents_of(batch, values).await
    }

    /// The documents of the rows `batch` selects (columns `key` and `data`, in key order)
    /// joined into one text.
    async fn documents_of(&self, batch: &str, values: Vec<sea_orm::Value>) -> Result<DocumentBatch> {
        let backend = self.backend();
        // No ORDER BY inside the aggregate: the subquery already yields the batch in key order
        // (an index scan), and both engines aggregate a sorted subquery in its order. An ordered
        // aggregate would sort the batch again (SQLite builds an ephemeral index for it), which
        // cost a third of the database's time. Were an engine ever to join in another order,
        // a batch would still hold exactly its records: `max(key)` bounds it, not the text.
        let joined = match backend {
            DbBackend::Postgres => "string_agg(data, E'\\n')",
            _ => "group_concat(data, char(10))",
        };
        let sql = format!("SELECT {joined}, max(key), count(*) FROM ({batch}) AS batch");
        let row = self
            .reader()
            .query_one_raw(Statement::from_sql_and_values(
                backend,
                super::placeholders(backend, &sql),
                values,
            ))
            .await?;
        let Some(row) = row else {
            return Ok(DocumentBatch::default());
        };
        let documents: Option<String> = row.try_get_by_index(0)?;
        let last_key: Option<String> = row.try_get_by_index(1)?;
        let count: i64 = row.try_get_by_index(2)?;
        Ok(DocumentBatch {
            documents: documents.unwrap_or_default(),
            count: count as usize,
            last_key,
        })
    }
}

/// Where each field goes in a row: field names sorted, for a binary search per key (cheaper
/// than hashing every key of every record).
struct ColumnIndex<'a> {
    positions: Vec<(&'a str, usize)>,
    width: usize,
}

impl<'a> ColumnIndex<'a> {
    fn new(fields: &'a [String]) -> Self {
        let mut positions: Vec<(&str, usize)> = fields.iter().enumerate().map(|(i, f)| (f.as_str(), i)).collect();
        positions.sort_unstable();
        ColumnIndex {
            positions,
            width: fields.len(),
        }
    }

    fn position(&self, key: &str) -> Option<usize> {
        self.positions
            .binary_search_by(|(name, _)| (*name).cmp(key))
            .ok()
            .map(|found| self.positions[found].1)
    }

    fn row(&self, document: &str) -> Result<Vec<Value>> {
        let mut deserializer = serde_json::Deserializer::from_str(document);
        let row = RowSeed(self)
            .deserialize(&mut deserializer)
            .and_then(|row| deserializer.end().map(|()| row))
            .map_err(|e| Error::internal(format!("a stored record is corrupt: {e}")))?;
        Ok(row)
    }
}

/// Deserializes a JSON object into a row: known fields into their cells, others skipped.
struct RowSeed<'c, 'a>(&'c ColumnIndex<'a>);

impl<'de> DeserializeSeed<'de> for RowSeed<'_, '_> {
    type Value = Vec<Value>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> std::result::Result<Vec<Value>, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RowSeed<'_, '_> {
    type Value = Vec<Value>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a record object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Vec<Value>, A::Error> {
        let mut row = vec![Value::Null; self.0.width];
        while let Some(position) = map.next_key_seed(KeySeed(self.0))? {
            match position {
                Some(i) => row[i] = map.next_value()?,
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(row)
    }
}

/// A key as its column position, without allocating it.
struct KeySeed<'c, 'a>(&'c ColumnIndex<'a>);

impl<'de> DeserializeSeed<'de> for KeySeed<'_, '_> {
    type Value = Option<usize>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> std::result::Result<Option<usize>, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_, '_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E>(self, key: &str) -> std::result::Result<Option<usize>, E> {
        Ok(self.0.position(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_document_becomes_its_row_in_field_order() {
        let fields: Vec<String> = ["id", "ltv", "tags", "missing"].map(String::from).to_vec();
        let columns = ColumnIndex::new(&fields);
        let row = columns
            .row(r#"{"tags":["a\nb"],"id":"c\"1","other":{"x":1},"ltv":12.5}"#)
            .unwrap();
        assert_eq!(row, vec![json!("c\"1"), json!(12.5), json!(["a\nb"]), Value::Null]);
    }

    #[test]
    fn escaped_field_names_are_matched() {
        let fields = vec!["é".to_string()];
        let row = ColumnIndex::new(&fields).row(r#"{"\u00e9":true}"#).unwrap();
        assert_eq!(row, vec![json!(true)]);
    }

    #[test]
    fn a_batch_splits_into_one_row_per_record_or_fails() {
        let fields = vec!["id".to_string()];
        let batch = |count| DocumentBatch {
            documents: "{\"id\":\"a\"}\n{\"id\":\"b\"}".to_string(),
            count,
            last_key: Some("b".into()),
        };
        assert_eq!(
            batch(2).rows(&fields).unwrap(),
            vec![vec![json!("a")], vec![json!("b")]]
        );
        assert!(batch(3).rows(&fields).is_err());
        assert!(DocumentBatch::default().rows(&fields).unwrap().is_empty());
    }

    #[test]
    fn a_corrupt_document_is_an_error_not_a_short_row() {
        let fields = vec!["id".to_string()];
        let columns = ColumnIndex::new(&fields);
        assert!(columns.row(r#"{"id":"x"} trailing"#).is_err());
        assert!(columns.row(r#"["id"]"#).is_err());
    }
}
