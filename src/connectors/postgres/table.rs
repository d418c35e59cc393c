//! A part's table: its typed columns (CONNECTORS.md: STRING `text`, INT64 `bigint`, DOUBLE
//! `double precision`, BOOL `boolean`, TIMESTAMP `timestamptz`, DATE `date`, JSON `jsonb`; the
//! primary key column is the table's primary key), the DDL that creates it, and whether an
//! existing table fits what an upsert writes into it.

use sea_orm::sqlx::{self, PgConnection};

use super::names::{qualified, quote, with_suffix};
use crate::connectors::PartSchema;
use crate::domain::catalog::FieldType;

/// The column type of a field type, as `format_type` names it (what the fit check compares).
pub fn sql_type(field_type: FieldType) -> &'static str {
    match field_type {
        FieldType::String => "text",
        FieldType::Int64 => "bigint",
        FieldType::Double => "double precision",
        FieldType::Bool => "boolean",
        FieldType::Timestamp => "timestamp with time zone",
        FieldType::Date => "date",
        FieldType::Json => "jsonb",
    }
}

/// The column list of `CREATE TABLE`: the part's columns, typed, the key not null.
fn column_definitions(part: &PartSchema) -> Vec<String> {
    part.columns
        .iter()
        .map(|c| {
            let not_null = if c.name == part.primary_key { " NOT NULL" } else { "" };
            format!("{} {}{not_null}", quote(&c.name), sql_type(c.field_type))
        })
        .collect()
}

/// `CREATE TABLE` for `table` in `schema`, its primary key named after `key_owner` (the table
/// the constraint belongs to once a staging table is renamed into place).
pub fn create_table(schema: &str, table: &str, key_owner: &str, part: &PartSchema) -> String {
    let mut definitions = column_definitions(part);
    if !part.primary_key.is_empty() {
        definitions.push(format!(
            "CONSTRAINT {} PRIMARY KEY ({})",
            quote(&with_suffix(key_owner, "_pkey")),
            quote(&part.primary_key)
        ));
    }
    format!(
        "CREATE TABLE IF NOT EXISTS {} ({})",
        qualified(schema, table),
        definitions.join(", ")
    )
}

/// The session's temporary table an upsert batch is copied into: the part's columns, typed as
/// the target's (so that bad values fail in the COPY), no constraints, and the deletion flag.
/// Its rows go at each commit or rollback.
pub fn create_changes_table(name: &str, part: &PartSchema) -> String {
    let mut definitions: Vec<String> = part
        .columns
        .iter()
        .map(|c| format!("{} {}", quote(&c.name), sql_type(c.field_type)))
        .collect();
    definitions.push(format!("{} boolean NOT NULL", quote(DELETED)));
    format!(
        "CREATE TEMPORARY TABLE IF NOT EXISTS {} ({}) ON COMMIT DELETE ROWS",
        quote(name),
        definitions.join(", ")
    )
}

/// The deletion flag of the changes table (not a column of the target).
pub const DELETED: &str = "_exportd_deleted";

/// How an existing table compares with a part.
pub enum Fit {
    Missing,
    Fits,
    /// What does not fit, one phrase per column (or the key).
    Misfit(Vec<String>),
}

/// Reads the table's columns and unique indexes from the catalogue (pg_catalog rather than
/// information_schema, which hides columns the user has no privilege on).
pub async fn fit(conn: &mut PgConnection, schema: &str, table: &str, part: &PartSchema) -> Result<Fit, sqlx::Error> {
    let relation: Option<(i64, String)> = sqlx::query_as(
        "SELECT c.oid::int8, c.relkind::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND c.relname = $2",
    )
    .bind(schema)
    .bind(table)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((oid, kind)) = relation else {
        return Ok(Fit::Missing);
    };
    if !matches!(kind.as_str(), "r" | "p") {
        return Ok(Fit::Misfit(vec![format!(
            "{} is not a table (relkind '{kind}')",
            qualified(schema, table)
        )]));
    }
    // name, type, not null, filled by the server (default, identity or generated), generated
    let columns: Vec<(String, String, bool, bool, bool)> = sqlx::query_as(
        "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull, \
         (a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> ''), a.attgenerated <> '' \
         FROM pg_attribute a WHERE a.attrelid = $1::int8::oid AND a.attnum > 0 AND NOT a.attisdropped \
         ORDER BY a.attnum",
    )
    .bind(oid)
    .fetch_all(&mut *conn)
    .await?;
    let mut problems = Vec::new();
    for column in &part.columns {
        let expected = sql_type(column.field_type);
        match columns.iter().find(|(name, ..)| *name == column.name) {
            None => problems.push(format!(
                "column {} is missing ({expected} expected)",
                quote(&column.name)
            )),
            Some((_, actual, ..)) if actual != expected => problems.push(format!(
                "column {} is {actual}, {expected} expected",
                quote(&column.name)
            )),
            Some((.., true)) => problems.push(format!(
                "column {} is generated, so it cannot be written",
                quote(&column.name)
            )),
            Some(_) => {}
        }
    }
    for (name, _, not_null, filled, _) in &columns {
        if *not_null && !*filled && !part.columns.iter().any(|c| c.name == *name) {
            problems.push(format!(
                "column {} is NOT NULL without a default and the export has no such field",
                quote(name)
            ));
        }
    }
    let unique_key: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid \
         AND a.attnum = i.indkey[0] WHERE i.indrelid = $1::int8::oid AND i.indisunique AND i.indnatts = 1 \
         AND i.indpred IS NULL AND i.indexprs IS NULL AND a.attname = $2)",
    )
    .bind(oid)
    .bind(&part.primary_key)
    .fetch_one(&mut *conn)
    .await?;
    if !unique_key && columns.iter().any(|(name, ..)| *name == part.primary_key) {
        problems.push(format!(
            "column {} (the key) has no primary key or unique index of its own, which ON CONFLICT needs",
            quote(&part.primary_key)
        ));
    }
    Ok(if problems.is_empty() {
        Fit::Fits
    } else {
        Fit::Misfit(problems)
    })
}
