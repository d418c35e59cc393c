//! Every input is bounded (PRODUCT.md §3): the size limits of request fields, in one table, and
//! the one checker that applies them.
//!
//! A bound is an upper limit on a string's length or a list's (or map's) number of items. It
//! says nothing about what a value means (an id's alphabet, a required field, a known key):
//! those rules stay with the resource they belong to. Every bounded string is also refused
//! when it carries a NUL character, which PostgreSQL cannot store in text, so that both
//! databases take exactly the same inputs.
//!
//! The bounds are chosen so that no single resource can outgrow an answer (4 MiB, see
//! `api::pages`): the largest export, connection or entity these limits allow (an entity of
//! 1,000 fields with descriptions and mapping details of four-byte characters at their bounds
//! is the largest, about 3.2 MB) encodes to less than 4 MiB, so a list page always holds at
//! least one item.

use crate::error::{Error, FieldViolation};

/// Ids, as the id rule `[a-z][a-z0-9-]{0,62}` says.
pub const ID: Text = Text::chars(63);
/// Resource names (`environments/{e}/exports/{x}/runs/{r}` is at most 217 characters).
pub const NAME: Text = Text::chars(256);
pub const DISPLAY_NAME: Text = Text::chars(200);
pub const DESCRIPTION: Text = Text::chars(5_000);
/// Values of `config`, `settings` (and the settings of ListEligibleSegments).
pub const CONFIG_VALUE: Text = Text::chars(4_096);
/// Secret values: longer than config values, since a PEM private key or a service-account
/// JSON document is a few KiB.
pub const SECRET_VALUE: Text = Text::chars(16_384);
/// Keys of every string map (`config`, `secrets`, `settings`).
pub const MAP_KEY: Text = Text::chars(128);
/// Entries of every string map; connection types declare far fewer keys than this.
pub const MAP_ENTRIES: usize = 64;
/// Entities or segments one export reads.
pub const SOURCES_PER_EXPORT: usize = 1_000;
pub const FIELD_MAPPINGS: usize = 500;
/// Either side of a field mapping.
pub const MAPPED_FIELD: Text = Text::chars(200);
/// `filter` and `order_by` of list requests.
pub const LIST_QUERY: Text = Text::chars(super::list_query::MAX_INPUT_CHARS);
/// Page tokens are ours and short; anything longer is not one.
pub const PAGE_TOKEN: Text = Text::chars(512);
pub const REQUEST_ID: Text = Text::chars(128);
pub const ETAG: Text = Text::chars(128);
pub const MASK_PATHS: usize = 100;
pub const MASK_PATH: Text = Text::chars(256);
pub const CRON_EXPRESSION: Text = Text::chars(256);
pub const TIME_ZONE: Text = Text::chars(64);
pub const TIME_OF_DAY: Text = Text::chars(16);
pub const DAYS_OF_WEEK: usize = 7;
/// Exports named by one UpdateExportSchedules request (one transaction).
pub const EXPORTS_PER_BATCH: usize = 1_000;
/// Exports one alert policy watches.
pub const EXPORTS_PER_ALERT_POLICY: usize = 1_000;
/// Conditions of one alert policy: each AlertCondition once, with room to spare.
pub const ALERT_CONDITIONS: usize = 16;
/// Fields of an entity's schema.
pub const ENTITY_FIELDS: usize = super::catalog::MAX_FIELDS;
/// A schema field's name and the primary key (the name rule allows 128 characters).
pub const FIELD_NAME: Text = Text::chars(128);
/// A schema field's description and mapping details: with [`ENTITY_FIELDS`] fields, an entity
/// stays under an answer's 4 MiB.
pub const FIELD_DESCRIPTION: Text = Text::chars(500);
pub const FIELD_MAPPING_DETAILS: Text = Text::chars(256);
pub const RULE: Text = Text::chars(super::rule::MAX_RULE_CHARS);
/// Record keys (primary-key values, deletes, segment members).
pub const RECORD_KEY: Text = Text::bytes(super::catalog::MAX_KEY_LEN);
/// Upserts plus deletes in one WriteRecords message (one transaction).
pub const RECORDS_PER_MESSAGE: usize = 50_000;
/// Keys in one SetSegmentMembers message.
pub const MEMBER_KEYS_PER_MESSAGE: usize = 100_000;

/// How a length is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Unicode characters, as people count them (display names, descriptions).
    Chars,
    /// UTF-8 bytes, as storage counts them (record keys).
    Bytes,
}

/// The largest length of a string field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Text {
    pub max: usize,
    pub unit: Unit,
}

impl Text {
    pub const fn chars(max: usize) -> Text {
        Text { max, unit: Unit::Chars }
    }

    pub const fn bytes(max: usize) -> Text {
        Text { max, unit: Unit::Bytes }
    }

    /// What is wrong with `value` under this bound, if anything.
    pub fn problem(self, value: &str) -> Option<String> {
        // A string has at least as many bytes as characters: most need no count at all.
        if value.len() > self.max {
            let (length, unit) = match self.unit {
                Unit::Bytes => (value.len(), "bytes"),
                Unit::Chars => (value.chars().count(), "characters"),
            };
            if length > self.max {
                return Some(format!("at most {} {unit} (got {length})", self.max));
            }
        }
        if value.contains('\0') {
            return Some("must not contain NUL (U+0000) characters".into());
        }
        None
    }
}

/// One bad field, or nothing; for rules outside requests (the CLI) that share a bound.
pub fn check_text(field: &str, value: &str, bound: Text) -> Option<FieldViolation> {
    bound.problem(value).map(|description| FieldViolation {
        field: field.to_string(),
        description,
    })
}

/// `prefix.field`, or `field` at the top of a request.
pub fn path(prefix: &str, field: &str) -> String {
    if prefix.is_empty() {
        field.to_string()
    } else {
        format!("{prefix}.{field}")
    }
}

/// Collects every bound a request breaks, so that a client can fix them all at once.
#[derive(Debug, Default)]
pub struct Bounds {
    violations: Vec<FieldViolation>,
}

impl Bounds {
    pub fn new() -> Bounds {
        Bounds::default()
    }

    /// A violation that no bound below describes.
    pub fn violation(&mut self, field: String, description: String) {
        self.violations.push(FieldViolation { field, description });
    }

    /// A string field `field` of the message at `prefix`.
    pub fn text(&mut self, prefix: &str, field: &str, value: &str, bound: Text) {
        if let Some(description) = bound.problem(value) {
            self.violation(path(prefix, field), description);
        }
    }

    /// The number of items of a repeated field; false when there are too many (the items are
    /// then not worth looking at one by one).
    pub fn count(&mut self, prefix: &str, field: &str, len: usize, max: usize) -> bool {
        if len > max {
            self.violation(path(prefix, field), format!("at most {max} items (got {len})"));
            return false;
        }
        true
    }

    /// A repeated string field: the number of items and each item (`field[i]`).
    pub fn texts<S: AsRef<str>>(&mut self, prefix: &str, field: &str, values: &[S], max: usize, each: Text) {
        if !self.count(prefix, field, values.len(), max) {
            return;
        }
        for (i, value) in values.iter().enumerate() {
            if let Some(description) = each.problem(value.as_ref()) {
                self.violation(format!("{}[{i}]", path(prefix, field)), description);
            }
        }
    }

    /// A string map: the number of entries, each key, and each value (`field.KEY`). A bad key
    /// is reported on the map itself, so that the path never carries the bad key.
    pub fn map<'a>(
        &mut self,
        prefix: &str,
        field: &str,
        entries: impl ExactSizeIterator<Item = (&'a String, &'a String)>,
        key: Text,
        value: Text,
    ) {
        let at = path(prefix, field);
        if entries.len() > MAP_ENTRIES {
            self.violation(at, format!("at most {MAP_ENTRIES} entries (got {})", entries.len()));
            return;
        }
        for (k, v) in entries {
            if let Some(problem) = key.problem(k) {
                self.violation(at.clone(), format!("keys: {problem}"));
            } else if let Some(problem) = value.problem(v) {
                self.violation(format!("{at}.{k}"), problem);
            }
        }
    }

    /// A message that can be checked on its own, at `prefix`.
    pub fn nested<T: Bounded + ?Sized>(&mut self, prefix: &str, field: &str, message: &T) {
        message.bounds(self, &path(prefix, field));
    }

    /// INVALID_ARGUMENT with every violation, or nothing.
    pub fn finish(self) -> Result<(), Error> {
        if self.violations.is_empty() {
            Ok(())
        } else {
            Err(Error::invalid_fields(self.violations))
        }
    }
}

/// A message whose fields have bounds; `prefix` is its path in the request (empty at the top).
pub trait Bounded {
    fn bounds(&self, b: &mut Bounds, prefix: &str);

    /// Checks a whole request.
    fn check_bounds(&self) -> Result<(), Error> {
        let mut b = Bounds::new();
        self.bounds(&mut b, "");
        b.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_are_counted_in_their_unit_and_nul_is_refused() {
        assert_eq!(Text::chars(3).problem("ééé"), None);
        assert_eq!(
            Text::chars(3).problem("éééé").as_deref(),
            Some("at most 3 characters (got 4)")
        );
        assert_eq!(
            Text::bytes(4).problem("ééé").as_deref(),
            Some("at most 4 bytes (got 6)")
        );
        assert!(Text::chars(10).problem("a\0b").unwrap().contains("NUL"));
    }

    #[test]
    fn maps_report_bad_keys_on_the_map_and_bad_values_on_the_key() {
        let long_key = "k".repeat(200);
        let entries: std::collections::BTreeMap<String, String> =
            [(long_key, "v".into()), ("folder".into(), "x".repeat(5000))].into();
        let mut b = Bounds::new();
        b.map("export", "settings", entries.iter(), MAP_KEY, CONFIG_VALUE);
        let err = b.finish().unwrap_err();
        let fields: Vec<&str> = err.field_violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["export.settings.folder", "export.settings"]);
        assert!(err.message.contains("4096"), "{}", err.message);
    }

    #[test]
    fn too_many_items_are_reported_once() {
        let names = vec!["x"; 1001];
        let mut b = Bounds::new();
        b.texts("export", "segments", &names, SOURCES_PER_EXPORT, NAME);
        let err = b.finish().unwrap_err();
        assert_eq!(err.field_violations.len(), 1);
        assert_eq!(err.field_violations[0].description, "at most 1000 items (got 1001)");
    }
}
