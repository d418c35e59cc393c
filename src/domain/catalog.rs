//! The catalog that exports read: entities (schema + records) and segments. Schema and record
//! validation live here as pure functions.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::connection_type::SegmentType;
use super::names::{EntityName, SegmentName};
use super::time::Micros;
use crate::error::FieldViolation;

named_enum! {
    /// The schema types of entity fields; shared with the rule language, so that rules type-check
    /// against schemas. Stored and sent by name.
    pub enum FieldType {
        String,
        Int64,
        Double,
        Bool,
        Timestamp,
        Date,
        Json,
    }
}

named_enum! {
    pub enum EntityKind {
        Profile,
        Account,
        Contact,
        Other,
    }
}

impl EntityKind {
    /// The type of the segments built on an entity of this kind; OTHER entities carry none.
    pub fn segment_type(self) -> Option<SegmentType> {
        match self {
            EntityKind::Profile => Some(SegmentType::Profile),
            EntityKind::Account => Some(SegmentType::Account),
            EntityKind::Contact => Some(SegmentType::Contact),
            EntityKind::Other => None,
        }
    }
}

/// One field of a schema, as stored (JSON) and as the domain uses it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntityField {
    pub name: String,
    #[serde(rename = "type")]
    pub type_name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub mapping: String,
}

impl EntityField {
    pub fn field_type(&self) -> FieldType {
        FieldType::parse(&self.type_name).unwrap_or(FieldType::Json)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Entity {
    pub name: EntityName,
    pub display_name: String,
    pub kind: EntityKind,
    pub fields: Vec<EntityField>,
    pub primary_key: String,
    pub record_count: i64,
    pub change_seq: i64,
    pub refreshing: bool,
    pub last_refresh_time: Option<Micros>,
    pub create_time: Micros,
    pub update_time: Micros,
}

impl Entity {
    pub fn field(&self, name: &str) -> Option<&EntityField> {
        self.fields.iter().find(|f| f.name == name)
    }

    pub fn rule_fields(&self) -> Vec<super::rule::FieldDef> {
        self.fields
            .iter()
            .map(|f| super::rule::FieldDef::new(f.name.clone(), f.field_type()))
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SegmentDefinition {
    /// Members arrive through SetSegmentMembers.
    Pushed,
    /// A CEL rule evaluated per record at creation and each refresh.
    Rule(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    pub name: SegmentName,
    pub display_name: String,
    pub entity: EntityName,
    pub segment_type: SegmentType,
    pub definition: SegmentDefinition,
    pub member_count: i64,
    pub generation: i64,
    pub refreshing: bool,
    pub last_refresh_time: Option<Micros>,
    pub create_time: Micros,
    pub update_time: Micros,
    pub revision: i64,
}

pub const MAX_FIELDS: usize = 1000;
pub const MAX_KEY_LEN: usize = 512;

fn valid_field_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && name.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Checks a schema: at least one field, valid unique names (case-insensitively, since files and
/// tables downstream are often case-insensitive), every type set, and a primary key that names
/// a STRING or INT64 field.
pub fn validate_schema(prefix: &str, fields: &[(String, Option<FieldType>)], primary_key: &str) -> Vec<FieldViolation> {
    let mut violations = Vec::new();
    let mut push = |field: String, description: String| violations.push(FieldViolation { field, description });
    if fields.is_empty() {
        push(format!("{prefix}.fields"), "at least one field is required".into());
    }
    if fields.len() > MAX_FIELDS {
        push(format!("{prefix}.fields"), format!("at most {MAX_FIELDS} fields"));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, (name, ty)) in fields.iter().enumerate() {
        if !valid_field_name(name) {
            push(
                format!("{prefix}.fields[{i}].name"),
                format!("'{name}' is not a field name: use [A-Za-z][A-Za-z0-9_]{{0,127}}"),
            );
        } else if !seen.insert(name.to_ascii_lowercase()) {
            push(
                format!("{prefix}.fields[{i}].name"),
                format!("'{name}' is defined twice"),
            );
        }
        if ty.is_none() {
            push(format!("{prefix}.fields[{i}].type"), "a field type is required".into());
        }
    }
    match fields.iter().find(|(name, _)| name == primary_key) {
        None if primary_key.is_empty() => push(
            format!("{prefix}.primary_key"),
            "a primary key field is required".into(),
        ),
        None => push(
            format!("{prefix}.primary_key"),
            format!("'{primary_key}' is not a field of the entity"),
        ),
        Some((_, Some(FieldType::String | FieldType::Int64))) | Some((_, None)) => {}
        Some((_, Some(other))) => push(
            format!("{prefix}.primary_key"),
            format!(
                "the primary key must be a STRING or INT64 field, not {}",
                other.as_str()
            ),
        ),
    }
    violations
}

/// A record that passed validation: its key and its normalised JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidRecord {
    pub key: String,
    /// The record as a JSON object, its fields in the order they were given (a Struct gives
    /// them sorted by name). Written once here, stored as it is.
    pub json: String,
}

/// Validates one record against the schema. `path` names the record in errors (e.g.
/// `upserts[3]`; built only for an error). Absent and null fields are fine; present ones must
/// match their type; unknown fields are errors; the primary key is required. Numbers are
/// normalised to the field's type. `fields` are distinct names, as in a map. Every bad field
/// is reported, so that one round trip fixes them all.
pub fn validate_record(
    entity: &Entity,
    path: impl Fn() -> String,
    fields: impl IntoIterator<Item = (String, Value)>,
) -> Result<ValidRecord, Vec<FieldViolation>> {
    let bad = |field: &str, description: String| FieldViolation {
        field: format!("{}.{field}", path()),
        description,
    };
    let mut problems = Vec::new();
    // Serialised as it goes: no map is built just to be written out.
    let mut json = Vec::with_capacity(192);
    json.push(b'{');
    let mut key = None;
    for (name, value) in fields {
        let Some(field) = entity.field(&name) else {
            problems.push(bad(
                &name,
                format!(
                    "unknown field '{name}' (not in the schema of entity '{}')",
                    entity.name.id
                ),
            ));
            continue;
        };
        let ty = field.field_type();
        let value = if value.is_null() {
            Value::Null
        } else {
            match normalise(ty, value) {
                Ok(value) => value,
                Err(description) => {
                    problems.push(bad(&name, description));
                    continue;
                }
            }
        };
        if name == entity.primary_key {
            key = Some(match &value {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => String::new(),
            });
        }
        if !problems.is_empty() {
            // The record is refused: only the checks go on.
            continue;
        }
        if json.len() > 1 {
            json.push(b',');
        }
        serde_json::to_writer(&mut json, &name).expect("strings serialize");
        json.push(b':');
        serde_json::to_writer(&mut json, &value).expect("JSON values serialize");
    }
    json.push(b'}');
    let key_is_bad = problems
        .iter()
        .any(|p| p.field.ends_with(&format!(".{}", entity.primary_key)));
    let key = key.filter(|k| !k.is_empty());
    match &key {
        None if !key_is_bad => problems.push(bad(
            &entity.primary_key,
            format!(
                "the primary key '{}' is required (a string or a number)",
                entity.primary_key
            ),
        )),
        Some(k) => {
            if let Some(problem) = super::bounds::RECORD_KEY.problem(k) {
                problems.push(bad(&entity.primary_key, format!("keys: {problem}")));
            }
        }
        None => {}
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let key = key.unwrap_or_default();
    let json = String::from_utf8(json).expect("serde_json writes UTF-8");
    Ok(ValidRecord { key, json })
}

/// The bounds of INT64, as people write them.
const INT64_RANGE: &str = "-9223372036854775808 to 9223372036854775807";

/// Converts a value to its field's type, or says what is wrong with it.
fn normalise(ty: FieldType, value: Value) -> Result<Value, String> {
    let expected = |what: &str| Err(format!("expected {what}"));
    match ty {
        FieldType::String => match value {
            Value::String(_) => Ok(value),
            // A numeric key of a STRING field is accepted as its decimal text.
            Value::Number(n) => Ok(Value::String(n.to_string())),
            _ => expected("a string"),
        },
        FieldType::Int64 => {
            let out_of_range = |text: &str| Err(format!("{text} is out of range for INT64 ({INT64_RANGE})"));
            match &value {
                Value::Number(n) => match (n.as_i64(), n.as_f64()) {
                    (Some(i), _) => Ok(Value::from(i)),
                    (None, Some(f)) if f.fract() != 0.0 || !f.is_finite() => expected("a whole number (INT64)"),
                    // 2^63 is the first double beyond i64.
                    (None, Some(f)) if (-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0).contains(&f) => {
                        Ok(Value::from(f as i64))
                    }
                    // Whole, beyond i64: shown as the digits, not in exponent form.
                    (None, Some(f)) => out_of_range(&format!("{f:.0}")),
                    (None, None) => out_of_range(&n.to_string()),
                },
                // Digits as text carry integers beyond what a double (and so a Struct) holds.
                Value::String(s) => match s.trim().parse::<i64>() {
                    Ok(i) => Ok(Value::from(i)),
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::num::IntErrorKind::PosOverflow | std::num::IntErrorKind::NegOverflow
                        ) =>
                    {
                        out_of_range(s.trim())
                    }
                    Err(_) => expected("a whole number (INT64)"),
                },
                _ => expected("a whole number (INT64)"),
            }
        }
        FieldType::Double => match &value {
            Value::Number(n) => match n.as_f64() {
                Some(f) => Ok(Value::from(f)),
                None => expected("a number"),
            },
            _ => expected("a number"),
        },
        FieldType::Bool => match value {
            Value::Bool(_) => Ok(value),
            _ => expected("true or false"),
        },
        FieldType::Timestamp => match &value {
            Value::String(s) if chrono::DateTime::parse_from_rfc3339(s).is_ok() => Ok(value),
            _ => expected("an RFC 3339 timestamp such as 2026-01-31T12:00:00Z"),
        },
        FieldType::Date => match &value {
            Value::String(s) if chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok() && s.len() == 10 => Ok(value),
            _ => expected("a date YYYY-MM-DD"),
        },
        FieldType::Json => Ok(value),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Map, json};

    use super::*;

    fn entity() -> Entity {
        let field = |name: &str, ty: &str| EntityField {
            name: name.into(),
            type_name: ty.into(),
            description: String::new(),
            mapping: String::new(),
        };
        Entity {
            name: EntityName::new("e", "customers"),
            display_name: "Customers".into(),
            kind: EntityKind::Profile,
            fields: vec![
                field("id", "INT64"),
                field("email", "STRING"),
                field("ltv", "DOUBLE"),
                field("vip", "BOOL"),
                field("seen", "TIMESTAMP"),
                field("born", "DATE"),
                field("props", "JSON"),
            ],
            primary_key: "id".into(),
            record_count: 0,
            change_seq: 0,
            refreshing: false,
            last_refresh_time: None,
            create_time: 0,
            update_time: 0,
        }
    }

    fn record(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn valid_records_are_normalised() {
        let r = validate_record(
            &entity(),
            || "upserts[0]".into(),
            record(json!({"id": 42.0, "ltv": 500, "email": null, "props": {"a": [1]}})),
        )
        .unwrap();
        assert_eq!(r.key, "42");
        let data: Value = serde_json::from_str(&r.json).unwrap();
        assert_eq!(
            data,
            json!({"id": 42, "ltv": 500.0, "email": null, "props": {"a": [1]}})
        );
        let big = validate_record(&entity(), || "u".into(), record(json!({"id": "9007199254740993"}))).unwrap();
        assert_eq!(big.key, "9007199254740993");
    }

    #[test]
    fn invalid_records_name_the_field() {
        let cases = [
            (json!({"email": "a@b"}), "upserts[1].id"),
            (json!({"id": 1.5}), "upserts[1].id"),
            (json!({"id": 1, "ltv": "high"}), "upserts[1].ltv"),
            (json!({"id": 1, "vip": "yes"}), "upserts[1].vip"),
            (json!({"id": 1, "seen": "yesterday"}), "upserts[1].seen"),
            (json!({"id": 1, "born": "2026-13-01"}), "upserts[1].born"),
            (json!({"id": 1, "colour": "red"}), "upserts[1].colour"),
        ];
        for (value, field) in cases {
            let err = validate_record(&entity(), || "upserts[1]".into(), record(value.clone())).unwrap_err();
            let fields: Vec<&str> = err.iter().map(|v| v.field.as_str()).collect();
            assert_eq!(fields, [field], "{value}");
        }
    }

    #[test]
    fn every_bad_field_of_a_record_is_reported() {
        let err = validate_record(
            &entity(),
            || "upserts[0]".into(),
            record(json!({"id": 1, "ltv": "high", "vip": "yes", "colour": "red"})),
        )
        .unwrap_err();
        let mut fields: Vec<&str> = err.iter().map(|v| v.field.as_str()).collect();
        fields.sort();
        assert_eq!(fields, ["upserts[0].colour", "upserts[0].ltv", "upserts[0].vip"]);
    }

    #[test]
    fn int64_overflow_is_out_of_range_not_a_bad_whole_number() {
        for (value, shown) in [
            (json!("9223372036854775808"), "9223372036854775808"),
            (json!("-9223372036854775809"), "-9223372036854775809"),
            (json!(1e19), "10000000000000000000"),
        ] {
            let err = validate_record(&entity(), || "u".into(), record(json!({"id": value}))).unwrap_err();
            assert_eq!(err.len(), 1, "{err:?}");
            assert_eq!(
                err[0].description,
                format!("{shown} is out of range for INT64 (-9223372036854775808 to 9223372036854775807)")
            );
        }
        let err = validate_record(&entity(), || "u".into(), record(json!({"id": 2.5}))).unwrap_err();
        assert_eq!(err[0].description, "expected a whole number (INT64)");
        let max = validate_record(&entity(), || "u".into(), record(json!({"id": "9223372036854775807"}))).unwrap();
        assert_eq!(max.key, "9223372036854775807");
    }

    #[test]
    fn schemas_are_checked() {
        let ok = vec![
            ("id".to_string(), Some(FieldType::String)),
            ("n".to_string(), Some(FieldType::Double)),
        ];
        assert!(validate_schema("entity", &ok, "id").is_empty());
        let bad = vec![
            ("id".to_string(), Some(FieldType::Double)),
            ("ID".to_string(), Some(FieldType::String)),
            ("_x".to_string(), None),
        ];
        let fields: Vec<String> = validate_schema("entity", &bad, "id")
            .into_iter()
            .map(|v| v.field)
            .collect();
        assert_eq!(
            fields,
            vec![
                "entity.fields[1].name",
                "entity.fields[2].name",
                "entity.fields[2].type",
                "entity.primary_key"
            ]
        );
        assert_eq!(validate_schema("entity", &ok, "nope")[0].field, "entity.primary_key");
    }
}
