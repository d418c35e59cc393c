//! Rows in COPY's text format (through the encoder the store uses too,
//! [`crate::copy_text`]): one line per row, kept in one buffer with the line boundaries, so
//! that any run of rows (half a batch, one row) is a slice to send as it is.

use std::ops::Range;

use serde_json::Value;

use crate::connectors::PartSchema;
use crate::copy_text::{NULL, push_copy_text};
use crate::domain::catalog::FieldType;

/// A batch of encoded rows and what the sink needs to know of each.
pub struct Lines {
    text: String,
    /// Where each row's line ends in `text`.
    ends: Vec<usize>,
    pub keys: Vec<String>,
    pub deleted: Vec<bool>,
}

impl Lines {
    /// Encodes `rows` (columns in order, then `_deleted` for incremental parts). `with_flag`
    /// adds the deletion flag as a last column (rows merged through the changes table); without
    /// it, deletions are left out (a complete load has none).
    pub fn encode(part: &PartSchema, rows: Vec<Vec<Value>>, with_flag: bool) -> Lines {
        let key_column = part.columns.iter().position(|c| c.name == part.primary_key);
        let mut lines = Lines {
            text: String::with_capacity(rows.len() * 64),
            ends: Vec::with_capacity(rows.len()),
            keys: Vec::with_capacity(rows.len()),
            deleted: Vec::with_capacity(rows.len()),
        };
        for row in rows {
            let deleted = part.incremental && row.get(part.columns.len()) == Some(&Value::Bool(true));
            if deleted && !with_flag {
                continue;
            }
            for (i, column) in part.columns.iter().enumerate() {
                if i > 0 {
                    lines.text.push('\t');
                }
                push_value(&mut lines.text, column.field_type, row.get(i).unwrap_or(&Value::Null));
            }
            if with_flag {
                lines.text.push_str(if deleted { "\tt" } else { "\tf" });
            }
            lines.text.push('\n');
            lines.ends.push(lines.text.len());
            lines.keys.push(key_text(key_column.and_then(|i| row.get(i))));
            lines.deleted.push(deleted);
        }
        lines
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// The COPY data of rows `range`.
    pub fn slice(&self, range: Range<usize>) -> &[u8] {
        let start = if range.start == 0 {
            0
        } else {
            self.ends[range.start - 1]
        };
        let end = if range.end == 0 { 0 } else { self.ends[range.end - 1] };
        &self.text.as_bytes()[start..end]
    }
}

/// A key as the pipeline names records (a string as it is, a number as its digits).
fn key_text(value: Option<&Value>) -> String {
    match value {
        Some(Value::String(key)) => key.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

/// One value in the text form PostgreSQL reads for its column type: JSON columns take the
/// value's JSON text, booleans `t`/`f`, numbers their digits, text as it is; NULL is `\N`.
fn push_value(out: &mut String, field_type: FieldType, value: &Value) {
    match (field_type, value) {
        (_, Value::Null) => out.push_str(NULL),
        (FieldType::Json, value) => push_copy_text(out, &value.to_string()),
        (_, Value::String(text)) => push_copy_text(out, text),
        (FieldType::Bool, Value::Bool(b)) => out.push(if *b { 't' } else { 'f' }),
        (_, Value::Number(n)) => out.push_str(&n.to_string()),
        (_, other) => push_copy_text(out, &other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::connectors::Column;

    fn part(incremental: bool) -> PartSchema {
        let column = |name: &str, field_type| Column {
            name: name.into(),
            field_type,
            description: String::new(),
            mapping: String::new(),
        };
        PartSchema {
            id: "customers".into(),
            source: "environments/acme/entities/customers".into(),
            description: String::new(),
            primary_key: "id".into(),
            columns: vec![
                column("id", FieldType::String),
                column("n", FieldType::Int64),
                column("ok", FieldType::Bool),
                column("doc", FieldType::Json),
            ],
            incremental,
            complete: !incremental,
            added_key: false,
            estimated_records: 0,
        }
    }

    #[test]
    fn rows_become_copy_lines_that_slice_by_row() {
        let rows = vec![
            vec![json!("a\tb"), json!(7), json!(true), json!({"x": "y\\z"})],
            vec![json!("c"), Value::Null, json!(false), json!(["\n"])],
        ];
        let lines = Lines::encode(&part(false), rows, false);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines.keys, ["a\tb", "c"]);
        assert_eq!(lines.slice(0..1), b"a\\tb\t7\tt\t{\"x\":\"y\\\\\\\\z\"}\n");
        assert_eq!(lines.slice(1..2), b"c\t\\N\tf\t[\"\\\\n\"]\n");
        assert_eq!(
            lines.slice(0..2).len(),
            lines.slice(0..1).len() + lines.slice(1..2).len()
        );
    }

    #[test]
    fn deletions_carry_the_flag_or_are_left_out() {
        let rows = || {
            vec![
                vec![json!("a"), json!(1), json!(true), json!(null), json!(false)],
                vec![json!("b"), Value::Null, Value::Null, Value::Null, json!(true)],
            ]
        };
        let merged = Lines::encode(&part(true), rows(), true);
        assert_eq!(merged.deleted, [false, true]);
        assert_eq!(merged.slice(1..2), b"b\t\\N\t\\N\t\\N\tt\n");
        let loaded = Lines::encode(&part(true), rows(), false);
        assert_eq!(loaded.keys, ["a"]);
    }
}
