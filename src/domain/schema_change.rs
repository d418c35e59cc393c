//! How an entity's schema may evolve (UpdateEntity): fields may be added, and their
//! descriptions and mappings changed, at any time. Removing or retyping a field is refused
//! while a segment rule reads it or an export maps it, since those would break; the primary
//! key field, by which records are stored, stays as it is.

use super::catalog::{Entity, EntityField, Segment, SegmentDefinition};
use super::export::FieldMapping;
use super::names::ExportName;
use super::rule;
use crate::error::{Error, FieldViolation};

/// What a new field list changes about existing fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchemaChange {
    /// Fields of the old schema that the new one lacks.
    pub removed: Vec<String>,
    /// Fields whose type changes: (name, old type, new type).
    pub retyped: Vec<(String, String, String)>,
}

impl SchemaChange {
    /// Compares `entity`'s fields with `fields` (names are compared exactly: a field renamed,
    /// even in case only, is one removed and one added).
    pub fn between(entity: &Entity, fields: &[EntityField]) -> SchemaChange {
        let mut change = SchemaChange::default();
        for old in &entity.fields {
            match fields.iter().find(|f| f.name == old.name) {
                None => change.removed.push(old.name.clone()),
                Some(new) if new.type_name != old.type_name => {
                    change
                        .retyped
                        .push((old.name.clone(), old.type_name.clone(), new.type_name.clone()))
                }
                Some(_) => {}
            }
        }
        change
    }

    pub fn is_empty(&self) -> bool {
        self.removed.is_empty() && self.retyped.is_empty()
    }

    /// The fields removed or retyped.
    pub fn touched(&self) -> impl Iterator<Item = &str> {
        self.removed
            .iter()
            .map(String::as_str)
            .chain(self.retyped.iter().map(|(name, _, _)| name.as_str()))
    }

    /// INVALID_ARGUMENT on `entity.fields` when the change removes or retypes the primary key.
    pub fn check_primary_key(&self, entity: &Entity) -> Result<(), Error> {
        let key = &entity.primary_key;
        let problem = if self.removed.contains(key) {
            Some("removed")
        } else if self.retyped.iter().any(|(name, _, _)| name == key) {
            Some("retyped")
        } else {
            None
        };
        match problem {
            None => Ok(()),
            Some(how) => {
                let kind = entity.field(key).map(|f| f.type_name.as_str()).unwrap_or_default();
                Err(Error::invalid_fields(vec![FieldViolation {
                    field: "entity.fields".into(),
                    description: format!(
                        "the primary key field '{key}' cannot be {how}: records are stored by it (keep it as {kind})"
                    ),
                }]))
            }
        }
    }

    /// Who would break: each rule segment of the entity whose rule reads a removed or retyped
    /// field, and each export whose field mappings read one, as (user name, what it does).
    pub fn users(
        &self,
        entity: &Entity,
        segments: &[Segment],
        exports: &[(ExportName, Vec<FieldMapping>)],
    ) -> Vec<(String, String)> {
        let touched: Vec<&str> = self.touched().collect();
        let mut users = Vec::new();
        let fields = entity.rule_fields();
        for segment in segments.iter().filter(|s| s.entity == entity.name) {
            let SegmentDefinition::Rule(text) = &segment.definition else {
                continue;
            };
            let read: Vec<String> = match rule::compile(text, &fields) {
                Ok(compiled) => compiled.referenced_fields().to_vec(),
                // A rule that does not compile against the current schema cannot be checked:
                // it counts as reading every field it names.
                Err(_) => touched
                    .iter()
                    .filter(|f| names_identifier(text, f))
                    .map(|f| f.to_string())
                    .collect(),
            };
            let used: Vec<&str> = touched
                .iter()
                .copied()
                .filter(|f| read.iter().any(|r| r == f))
                .collect();
            if !used.is_empty() {
                users.push((segment.name.to_string(), format!("its rule reads {}", quoted(&used))));
            }
        }
        for (export, mappings) in exports {
            let used: Vec<&str> = touched
                .iter()
                .copied()
                .filter(|f| mappings.iter().any(|m| m.source_field == *f))
                .collect();
            if !used.is_empty() {
                users.push((export.to_string(), format!("its field mappings read {}", quoted(&used))));
            }
        }
        users
    }

    /// FAILED_PRECONDITION FIELD_IN_USE naming every user and what it reads.
    pub fn in_use_error(&self, entity: &Entity, users: &[(String, String)]) -> Error {
        let what: Vec<String> = self
            .removed
            .iter()
            .map(|f| format!("remove '{f}'"))
            .chain(
                self.retyped
                    .iter()
                    .map(|(f, old, new)| format!("change '{f}' from {old} to {new}")),
            )
            .collect();
        let names: Vec<&str> = users.iter().map(|(name, _)| name.as_str()).collect();
        let mut err = Error::precondition(
            "FIELD_IN_USE",
            format!(
                "cannot {} of entity '{}': used by {}; change or delete them first",
                what.join(" and "),
                entity.name,
                names.join(", ")
            ),
        )
        .with_meta("entity", entity.name.to_string())
        .with_meta("used_by", names.join(","));
        for (name, how) in users {
            err = err.with_precondition("FIELD_IN_USE", name.clone(), how.clone());
        }
        err
    }
}

fn quoted(fields: &[&str]) -> String {
    fields.iter().map(|f| format!("'{f}'")).collect::<Vec<_>>().join(", ")
}

/// Whether `text` has `name` as a whole identifier (not inside a longer one).
fn names_identifier(text: &str, name: &str) -> bool {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    text.match_indices(name).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + name.len()..].chars().next();
        !before.is_some_and(is_ident) && !after.is_some_and(is_ident)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::catalog::EntityKind;
    use crate::domain::connection_type::SegmentType;
    use crate::domain::names::{EntityName, SegmentName};

    fn field(name: &str, ty: &str) -> EntityField {
        EntityField {
            name: name.into(),
            type_name: ty.into(),
            description: String::new(),
            mapping: String::new(),
        }
    }

    fn customers() -> Entity {
        Entity {
            name: EntityName::new("e", "customers"),
            display_name: "Customers".into(),
            kind: EntityKind::Profile,
            fields: vec![field("id", "STRING"), field("ltv", "DOUBLE"), field("email", "STRING")],
            primary_key: "id".into(),
            record_count: 0,
            change_seq: 0,
            refreshing: false,
            last_refresh_time: None,
            create_time: 0,
            update_time: 0,
        }
    }

    fn rule_segment(id: &str, rule: &str) -> Segment {
        Segment {
            name: SegmentName::new("e", id),
            display_name: id.into(),
            entity: EntityName::new("e", "customers"),
            segment_type: SegmentType::Profile,
            definition: SegmentDefinition::Rule(rule.into()),
            member_count: 0,
            generation: 0,
            refreshing: false,
            last_refresh_time: None,
            create_time: 0,
            update_time: 0,
            revision: 1,
        }
    }

    #[test]
    fn changes_are_removals_and_retypes_of_existing_fields() {
        let entity = customers();
        let added = vec![
            field("id", "STRING"),
            field("ltv", "DOUBLE"),
            field("email", "STRING"),
            field("country", "STRING"),
        ];
        assert!(SchemaChange::between(&entity, &added).is_empty());
        let change = SchemaChange::between(&entity, &[field("id", "STRING"), field("ltv", "INT64")]);
        assert_eq!(change.removed, ["email"]);
        assert_eq!(
            change.retyped,
            [("ltv".to_string(), "DOUBLE".to_string(), "INT64".to_string())]
        );
        assert!(change.check_primary_key(&entity).is_ok());
        let keyless = SchemaChange::between(&entity, &[field("ID", "STRING")]);
        assert_eq!(
            keyless.check_primary_key(&entity).unwrap_err().field_violations[0].field,
            "entity.fields"
        );
    }

    #[test]
    fn users_are_the_rules_and_mappings_that_read_a_touched_field() {
        let entity = customers();
        let change = SchemaChange::between(&entity, &[field("id", "STRING"), field("email", "STRING")]);
        let segments = vec![
            rule_segment("rich", "ltv > 100.0"),
            rule_segment("mail", "email != \"\""),
        ];
        let exports = vec![
            (
                ExportName::new("e", "crm"),
                vec![FieldMapping {
                    source_field: "ltv".into(),
                    target_field: "value".into(),
                }],
            ),
            (
                ExportName::new("e", "news"),
                vec![FieldMapping {
                    source_field: "email".into(),
                    target_field: "email".into(),
                }],
            ),
        ];
        let users = change.users(&entity, &segments, &exports);
        assert_eq!(
            users,
            [
                (
                    "environments/e/segments/rich".to_string(),
                    "its rule reads 'ltv'".to_string()
                ),
                (
                    "environments/e/exports/crm".to_string(),
                    "its field mappings read 'ltv'".to_string()
                ),
            ]
        );
        let err = change.in_use_error(&entity, &users);
        assert_eq!(err.reason, "FIELD_IN_USE");
        assert!(
            err.message
                .starts_with("cannot remove 'ltv' of entity 'environments/e/entities/customers'"),
            "{}",
            err.message
        );
        assert_eq!(err.precondition_violations.len(), 2);
    }

    #[test]
    fn identifiers_are_matched_whole() {
        assert!(names_identifier("ltv > 1.0", "ltv"));
        assert!(!names_identifier("ltv_total > 1.0", "ltv"));
        assert!(!names_identifier("my_ltv > 1.0", "ltv"));
    }
}
