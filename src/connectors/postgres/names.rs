//! Names at the target: the table of each part (CONNECTORS.md: export setting `table`, else the
//! entity or segment id with `-` replaced by `_`, prefixed by `table_prefix`, in `schema`) and
//! identifiers quoted as PostgreSQL's "Identifiers and Key Words" says (double quotes, a quote
//! inside doubled), so that no name is ever read as SQL.

use crate::connectors::retry::Failure;
use crate::domain::connection_type::{MAX_SQL_IDENTIFIER_BYTES, check_sql_identifier};

pub const DEFAULT_SCHEMA: &str = "public";

/// `"name"`, with any `"` doubled.
pub fn quote(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

/// `"schema"."table"`.
pub fn qualified(schema: &str, table: &str) -> String {
    format!("{}.{}", quote(schema), quote(table))
}

/// The table a part is written to. Settings were checked when saved; a name made from an id
/// and a prefix may still be too long, which PostgreSQL would cut silently.
pub fn table_name(prefix: &str, table_setting: Option<&str>, part_id: &str) -> Result<String, Failure> {
    let base = match table_setting.filter(|t| !t.is_empty()) {
        Some(table) => table.to_string(),
        None => part_id.replace('-', "_"),
    };
    let name = format!("{prefix}{base}");
    check_sql_identifier(&name).map_err(|problem| Failure::Permanent {
        message: format!("the table name '{name}' (table_prefix + table) {problem}"),
    })?;
    Ok(name)
}

/// A column name PostgreSQL keeps as it is (quoted, any text of at most 63 bytes).
pub fn check_column(name: &str) -> Result<(), Failure> {
    if name.is_empty() || name.len() > MAX_SQL_IDENTIFIER_BYTES || name.contains('\0') {
        return Err(Failure::Permanent {
            message: format!(
                "the column name '{name}' cannot be a PostgreSQL column: at most {MAX_SQL_IDENTIFIER_BYTES} bytes"
            ),
        });
    }
    Ok(())
}

/// A derived name (`<table>_pkey`) cut to fit, at a character boundary, so that PostgreSQL
/// does not cut it (and a cut name never equals the table's own).
pub fn with_suffix(base: &str, suffix: &str) -> String {
    let room = MAX_SQL_IDENTIFIER_BYTES - suffix.len();
    format!("{}{suffix}", crate::connectors::truncate_bytes(base, room))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted_with_inner_quotes_doubled() {
        assert_eq!(quote("a\"b"), "\"a\"\"b\"");
        assert_eq!(qualified("public", "t"), "\"public\".\"t\"");
    }

    #[test]
    fn table_names_come_from_the_setting_or_the_id_with_the_prefix() {
        assert_eq!(table_name("crm_", None, "web-visits").unwrap(), "crm_web_visits");
        assert_eq!(table_name("crm_", Some("people"), "customers").unwrap(), "crm_people");
        assert_eq!(table_name("", None, "customers").unwrap(), "customers");
        let long = "x".repeat(60);
        assert!(table_name("prefix_", None, &long).is_err());
        assert_eq!(with_suffix(&"t".repeat(63), "_pkey").len(), 63);
    }
}
