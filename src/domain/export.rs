//! Exports: what is sent (entities or segments), where (a connection), how (field mappings,
//! settings, sync mode) and when (a schedule).
//!
//! The rules that decide whether an export is valid live here once, as pure functions over
//! facts the caller has already read, so that create, update, `validate_only` and the run
//! engine's run start all apply exactly the same ones:
//! - [`parse_sources`]: the entity and segment names of a request, typed (what to load);
//! - [`validate`]: everything that is INVALID_ARGUMENT, all problems at once;
//! - [`check_segments`]: eligibility (FAILED_PRECONDITION, PRODUCT.md §5) and the limit
//!   warnings (§6).

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::catalog::{Entity, Segment};
use super::connection::{Connection, check_display_name};
use super::connection_type::{ConnectionTypeSpec, ExportKind, SyncMode, check_map};
use super::eligibility::{self, Destination, SegmentFacts};
use super::environment::EnvironmentKind;
use super::names::{ConnectionName, EntityName, ExportName, SegmentName};
use super::run::{LastRun, Warning};
use super::schedule::{Schedule, Trigger};
use super::time::{Micros, from_datetime};
use crate::error::{Error, FieldViolation, Result};

/// At most this many entities or segments per export (PRODUCT.md §3); the numbers are the
/// request bounds' (`domain::bounds`).
pub const MAX_SOURCES: usize = super::bounds::SOURCES_PER_EXPORT;
pub const MAX_FIELD_MAPPINGS: usize = super::bounds::FIELD_MAPPINGS;
pub const MAX_DESCRIPTION_CHARS: usize = super::bounds::DESCRIPTION.max;
/// The last column of every incremental part: `true` marks a deleted record or a member who
/// left.
pub const DELETED_COLUMN: &str = "_deleted";

/// `schedule_sort` of an enabled export that follows system refreshes: after every timed one
/// (it has no clock time), before those that are off (NULL).
pub const SYSTEM_REFRESH_SORT: i64 = i64::MAX - 1;
/// `schedule_sort` of an enabled timed schedule that never fires again (e.g. a cron date that
/// does not occur): after system-refresh schedules, still before the ones that are off.
pub const NEVER_SORT: i64 = i64::MAX;

named_enum! {
    /// Whether an export can run; stored by name.
    pub enum ExportState {
        Active,
        /// The connection was detached: no connection, cannot run until an admin sets one.
        Detached,
    }
}

/// Maps one field of a segment's entity to one field of the target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldMapping {
    pub source_field: String,
    pub target_field: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Export {
    pub name: ExportName,
    pub display_name: String,
    pub description: String,
    /// None when detached.
    pub connection: Option<ConnectionName>,
    pub kind: ExportKind,
    /// DATA_OUT: the entities, in the order given.
    pub entities: Vec<EntityName>,
    /// SEGMENT: the segments, in the order given.
    pub segments: Vec<SegmentName>,
    pub field_mappings: Vec<FieldMapping>,
    pub settings: BTreeMap<String, String>,
    pub sync_mode: SyncMode,
    pub schedule: Schedule,
    /// When the schedule fires next (see [`ScheduleTimes`]); None when off, detached, or with
    /// system refresh.
    pub next_run_at: Option<Micros>,
    pub state: ExportState,
    /// End of the last successful run.
    pub last_refreshed_time: Option<Micros>,
    pub last_run: Option<LastRun>,
    pub creator: String,
    pub create_time: Micros,
    pub update_time: Micros,
    pub revision: i64,
}

impl Export {
    /// Whether contributors may edit it: attached, over a connection shared with contributors.
    /// `connection_shared` is the connection's current flag, so un-sharing a connection keeps
    /// its exports but takes them out of contributors' hands.
    pub fn editable_by_contributors(&self, connection_shared: bool) -> bool {
        self.state == ExportState::Active && self.connection.is_some() && connection_shared
    }

    /// Sets the schedule-derived columns for `now` (call after changing the schedule or state).
    pub fn refresh_schedule_times(&mut self, now: DateTime<Utc>) {
        self.next_run_at = ScheduleTimes::of(&self.schedule, self.state, now).next_run_at;
    }

    /// The `target` export setting (people or companies), for eligibility.
    pub fn target_setting(&self) -> Option<&str> {
        self.settings.get("target").map(String::as_str)
    }
}

/// The default schedule of a new export: on, with every system refresh (PRODUCT.md §7).
pub fn default_schedule() -> Schedule {
    Schedule {
        enabled: true,
        trigger: Trigger::SystemRefresh,
    }
}

/// What a schedule means for storage: when it fires next, and where it sorts in a list
/// ordered by `schedule` (timed ones by next time, then "with system refresh", off last).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScheduleTimes {
    pub next_run_at: Option<Micros>,
    pub sort_key: Option<i64>,
}

impl ScheduleTimes {
    /// A detached export cannot run, so its schedule is kept (for when it is attached again)
    /// but has no next time and sorts as off.
    pub fn of(schedule: &Schedule, state: ExportState, now: DateTime<Utc>) -> ScheduleTimes {
        if !schedule.enabled || state == ExportState::Detached {
            return ScheduleTimes {
                next_run_at: None,
                sort_key: None,
            };
        }
        match schedule.trigger {
            Trigger::SystemRefresh => ScheduleTimes {
                next_run_at: None,
                sort_key: Some(SYSTEM_REFRESH_SORT),
            },
            Trigger::Recurrence(_) | Trigger::Cron(_) => {
                let next = schedule.next_run_time(now).map(from_datetime);
                ScheduleTimes {
                    next_run_at: next,
                    sort_key: Some(next.unwrap_or(NEVER_SORT)),
                }
            }
        }
    }

    /// The sort key of a stored export (its `next_run_at` is already computed).
    pub fn sort_key_of(export: &Export) -> Option<i64> {
        if !export.schedule.enabled || export.state == ExportState::Detached {
            return None;
        }
        Some(match export.schedule.trigger {
            Trigger::SystemRefresh => SYSTEM_REFRESH_SORT,
            _ => export.next_run_at.unwrap_or(NEVER_SORT),
        })
    }
}

/// The entity and segment names of a request, typed. Problems are violations on
/// `<prefix>.entities[i]` / `<prefix>.segments[i]`: a malformed name, one of another
/// environment, one named twice, too many.
pub fn parse_sources(
    prefix: &str,
    env: &str,
    entities: &[String],
    segments: &[String],
) -> (Vec<EntityName>, Vec<SegmentName>, Vec<FieldViolation>) {
    let mut violations = Vec::new();
    let entities = parse_names(&format!("{prefix}.entities"), env, entities, &mut violations, |f, n| {
        EntityName::parse(f, n).map(|name| (name.env.clone(), name))
    });
    let segments = parse_names(&format!("{prefix}.segments"), env, segments, &mut violations, |f, n| {
        SegmentName::parse(f, n).map(|name| (name.env.clone(), name))
    });
    (entities, segments, violations)
}

fn parse_names<N: Clone + Eq + std::hash::Hash>(
    field: &str,
    env: &str,
    raw: &[String],
    violations: &mut Vec<FieldViolation>,
    parse: impl Fn(&str, &str) -> Result<(String, N)>,
) -> Vec<N> {
    if raw.len() > MAX_SOURCES {
        violations.push(FieldViolation {
            field: field.to_string(),
            description: format!("at most {MAX_SOURCES} per export (got {})", raw.len()),
        });
        return Vec::new();
    }
    let mut seen = HashSet::new();
    let mut names = Vec::with_capacity(raw.len());
    for (i, text) in raw.iter().enumerate() {
        let item = format!("{field}[{i}]");
        match parse(&item, text) {
            Err(err) => violations.extend(err.field_violations),
            Ok((name_env, _)) if name_env != env => violations.push(FieldViolation {
                field: item,
                description: format!("'{text}' is not in environments/{env}; an export reads its own environment"),
            }),
            Ok((_, name)) => {
                if seen.insert(name.clone()) {
                    names.push(name);
                } else {
                    violations.push(FieldViolation {
                        field: item,
                        description: format!("'{text}' is named more than once"),
                    });
                }
            }
        }
    }
    names
}

/// What validation knows of the catalog: every entity the export names or its segments are
/// built on, and every segment it names (missing ones are simply absent). The store reads it
/// (`Store::catalog_facts`) for the API's checks and the run engine's alike.
#[derive(Debug, Clone, Default)]
pub struct CatalogFacts {
    pub entities: HashMap<EntityName, Entity>,
    pub segments: HashMap<SegmentName, Segment>,
}

/// Where an export goes: the destination of eligibility, built from the export's connection,
/// its type and the environment.
pub fn destination<'a>(
    environment_kind: EnvironmentKind,
    spec: &'a ConnectionTypeSpec,
    connection: &Connection,
    export: &'a Export,
) -> Destination<'a> {
    Destination {
        environment_kind,
        spec,
        target: export.target_setting(),
        profile_limit: connection.effective_profile_limit(spec),
    }
}

/// Every INVALID_ARGUMENT problem of an export, as field violations under `prefix` (the request
/// path of the export message, e.g. `export`). `destination` is None for a detached export:
/// only what does not depend on a connection type is checked then.
pub fn validate(
    prefix: &str,
    export: &Export,
    catalog: &CatalogFacts,
    destination: Option<&Destination>,
) -> Vec<FieldViolation> {
    let mut violations = Vec::new();
    let mut push = |field: String, description: String| violations.push(FieldViolation { field, description });

    if let Some(v) = check_display_name(&format!("{prefix}.display_name"), &export.display_name) {
        push(v.field, v.description);
    }
    if export.description.chars().count() > MAX_DESCRIPTION_CHARS {
        push(
            format!("{prefix}.description"),
            format!("at most {MAX_DESCRIPTION_CHARS} characters"),
        );
    }

    // What each kind reads.
    match export.kind {
        ExportKind::DataOut => {
            if export.entities.is_empty() {
                push(
                    format!("{prefix}.entities"),
                    "a DATA_OUT export needs at least one entity".into(),
                );
            }
            if !export.segments.is_empty() {
                push(
                    format!("{prefix}.segments"),
                    "a DATA_OUT export reads entities, not segments (use a SEGMENT export)".into(),
                );
            }
            if !export.field_mappings.is_empty() {
                push(
                    format!("{prefix}.field_mappings"),
                    "a DATA_OUT export writes every field as it is; field mappings are for SEGMENT exports".into(),
                );
            }
        }
        ExportKind::Segment => {
            if export.segments.is_empty() {
                push(
                    format!("{prefix}.segments"),
                    "a SEGMENT export needs at least one segment".into(),
                );
            }
            if !export.entities.is_empty() {
                push(
                    format!("{prefix}.entities"),
                    "a SEGMENT export reads segments, not entities (use a DATA_OUT export)".into(),
                );
            }
        }
    }
    for (i, entity) in export.entities.iter().enumerate() {
        if !catalog.entities.contains_key(entity) {
            push(
                format!("{prefix}.entities[{i}]"),
                format!("entity '{entity}' does not exist"),
            );
        }
    }
    for (i, segment) in export.segments.iter().enumerate() {
        if !catalog.segments.contains_key(segment) {
            push(
                format!("{prefix}.segments[{i}]"),
                format!("segment '{segment}' does not exist"),
            );
        }
    }

    // Field mappings: from a field every selected segment's entity has, to distinct targets.
    if export.field_mappings.len() > MAX_FIELD_MAPPINGS {
        push(
            format!("{prefix}.field_mappings"),
            format!("at most {MAX_FIELD_MAPPINGS} field mappings"),
        );
    }
    let mut targets = HashSet::new();
    for (i, mapping) in export.field_mappings.iter().enumerate() {
        let at = format!("{prefix}.field_mappings[{i}]");
        if mapping.source_field.trim().is_empty() {
            push(format!("{at}.source_field"), "a source field is required".into());
        } else {
            for segment in &export.segments {
                let Some(segment) = catalog.segments.get(segment) else {
                    continue;
                };
                let Some(entity) = catalog.entities.get(&segment.entity) else {
                    continue;
                };
                if entity.field(&mapping.source_field).is_none() {
                    push(
                        format!("{at}.source_field"),
                        format!(
                            "'{}' is not a field of entity '{}', on which segment '{}' is built",
                            mapping.source_field, entity.name, segment.name
                        ),
                    );
                }
            }
        }
        if mapping.target_field.trim().is_empty() {
            push(format!("{at}.target_field"), "a target field is required".into());
        } else if mapping.target_field.chars().count() > 200 || mapping.target_field.chars().any(char::is_control) {
            push(
                format!("{at}.target_field"),
                "at most 200 characters, without control characters".into(),
            );
        } else if !targets.insert(mapping.target_field.as_str()) {
            push(
                format!("{at}.target_field"),
                format!("target field '{}' is mapped more than once", mapping.target_field),
            );
        }
    }

    for (field, description) in incremental_column_clashes(export, catalog) {
        push(format!("{prefix}.{field}"), description);
    }

    // What the connection type accepts.
    if let Some(destination) = destination {
        let spec = destination.spec;
        if !spec.export_kinds.contains(&export.kind) {
            let kinds: Vec<&str> = spec.export_kinds.iter().map(|k| k.as_str()).collect();
            push(
                format!("{prefix}.kind"),
                format!(
                    "{} accepts only {} exports, not {}",
                    spec.display_name,
                    kinds.join(" and "),
                    export.kind.as_str()
                ),
            );
        }
        for v in check_map(&format!("{prefix}.settings"), spec.settings, &export.settings) {
            push(v.field, v.description);
        }
        if let Some(problem) = file_settings_conflict(&export.settings) {
            push(format!("{prefix}.settings.compression"), problem);
        }
        if !spec.sync_modes.contains(&export.sync_mode) {
            let modes: Vec<&str> = spec.sync_modes.iter().map(|m| m.as_str()).collect();
            push(
                format!("{prefix}.sync_mode"),
                format!(
                    "{} supports the sync modes {}, not {}",
                    spec.display_name,
                    modes.join(", "),
                    export.sync_mode.as_str()
                ),
            );
        }
        if export.kind == ExportKind::Segment {
            for required in spec.required_fields {
                if !targets.contains(required) {
                    push(
                        format!("{prefix}.field_mappings"),
                        format!(
                            "required target field '{required}' is not mapped ({} needs it)",
                            spec.display_name
                        ),
                    );
                }
            }
            let identifiers = destination.identifier_fields();
            if !identifiers.is_empty() && !identifiers.iter().any(|f| targets.contains(f)) {
                push(
                    format!("{prefix}.field_mappings"),
                    format!(
                        "map at least one identifier field: {} ({} matches people or companies on them)",
                        identifiers.join(", "),
                        spec.display_name
                    ),
                );
            }
        }
    }
    violations
}

/// The primary keys an incremental segment part adds as columns because the mapping leaves
/// them out (the part then starts with the key under its own name), by entity.
pub fn added_key_columns<'a>(export: &Export, entities: impl Iterator<Item = &'a Entity>) -> Vec<&'a Entity> {
    if export.sync_mode != SyncMode::Incremental
        || export.kind != ExportKind::Segment
        || export.field_mappings.is_empty()
    {
        return Vec::new();
    }
    entities
        .filter(|entity| {
            !export
                .field_mappings
                .iter()
                .any(|m| m.source_field == entity.primary_key)
        })
        .collect()
}

/// Incremental parts add columns of their own: `_deleted`, and the record's key when the
/// mapping leaves it out. A mapped target field may take neither name, or a receiver could not
/// tell the columns apart. Violations as (field path under the export, description).
fn incremental_column_clashes(export: &Export, catalog: &CatalogFacts) -> Vec<(String, String)> {
    if export.sync_mode != SyncMode::Incremental {
        return Vec::new();
    }
    let entities = export
        .segments
        .iter()
        .filter_map(|s| catalog.segments.get(s))
        .filter_map(|s| catalog.entities.get(&s.entity));
    let added = added_key_columns(export, entities);
    let mut clashes = Vec::new();
    for (i, mapping) in export.field_mappings.iter().enumerate() {
        let field = format!("field_mappings[{i}].target_field");
        if mapping.target_field == DELETED_COLUMN {
            clashes.push((
                field,
                format!("'{DELETED_COLUMN}' is the column that marks deletions in INCREMENTAL exports"),
            ));
        } else if let Some(entity) = added.iter().find(|e| e.primary_key == mapping.target_field) {
            clashes.push((
                field,
                format!(
                    "'{}' is the column that carries the key of entity '{}' in INCREMENTAL exports (its \
                     primary key is not mapped): map the primary key, or choose another target name",
                    mapping.target_field, entity.name
                ),
            ));
        }
    }
    clashes
}

/// A segment as eligibility sees it.
pub fn segment_facts(segment: &Segment) -> SegmentFacts {
    SegmentFacts {
        name: segment.name.to_string(),
        display_name: segment.display_name.clone(),
        segment_type: segment.segment_type,
        member_count: segment.member_count,
    }
}

/// Eligibility and limits of the chosen segments, in the order chosen: FAILED_PRECONDITION
/// with exactly the PRODUCT.md §5 message when any is not eligible, else the warnings of those
/// over the limit or under the minimum. The run engine calls this at run start.
pub fn check_segments(destination: &Destination, segments: &[SegmentFacts]) -> Result<Vec<Warning>> {
    let ineligible: Vec<&SegmentFacts> = segments
        .iter()
        .filter(|s| !destination.accepted_types().contains(&s.segment_type))
        .collect();
    if !ineligible.is_empty() {
        return Err(eligibility::not_eligible_error(destination, &ineligible));
    }
    Ok(segment_warnings(destination, segments))
}

/// The limit warnings alone, for reading an export that was valid when saved.
pub fn segment_warnings(destination: &Destination, segments: &[SegmentFacts]) -> Vec<Warning> {
    segments
        .iter()
        .flat_map(|s| eligibility::warnings(destination, s))
        .map(|(code, message, subject)| Warning { code, message, subject })
        .collect()
}

/// Validation as one result: INVALID_ARGUMENT with every violation, else eligibility.
pub fn validate_all(
    prefix: &str,
    export: &Export,
    catalog: &CatalogFacts,
    destination: Option<&Destination>,
) -> Result<Vec<Warning>> {
    let violations = validate(prefix, export, catalog, destination);
    if !violations.is_empty() {
        return Err(Error::invalid_fields(violations));
    }
    let Some(destination) = destination else {
        return Ok(Vec::new());
    };
    let facts: Vec<SegmentFacts> = export
        .segments
        .iter()
        .filter_map(|s| catalog.segments.get(s))
        .map(segment_facts)
        .collect();
    check_segments(destination, &facts)
}

/// Compression that the file format cannot have: CSV takes `gzip`, Parquet `snappy` or `zstd`
/// (both take `none`).
fn file_settings_conflict(settings: &BTreeMap<String, String>) -> Option<String> {
    let compression = settings.get("compression")?.as_str();
    let parquet = settings.get("format").is_some_and(|f| f == "parquet");
    match (parquet, compression) {
        (true, "gzip") => Some("Parquet partitions are compressed with `snappy`, `zstd` or `none`, not `gzip`".into()),
        (false, "snappy" | "zstd") => Some(format!(
            "CSV partitions are compressed with `gzip` or `none`; `{compression}` is for `format` = `parquet`"
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connectors::registry::find;
    use crate::domain::catalog::{EntityField, EntityKind, SegmentDefinition};
    use crate::domain::connection_type::SegmentType;
    use crate::domain::schedule::CronSchedule;
    use crate::error::ErrorCode;

    fn entity(id: &str, kind: EntityKind, fields: &[&str]) -> Entity {
        Entity {
            name: EntityName::new("e", id),
            display_name: id.to_string(),
            kind,
            fields: fields
                .iter()
                .map(|f| EntityField {
                    name: f.to_string(),
                    type_name: "STRING".into(),
                    description: String::new(),
                    mapping: String::new(),
                })
                .collect(),
            primary_key: fields[0].to_string(),
            record_count: 0,
            change_seq: 0,
            refreshing: false,
            last_refresh_time: None,
            create_time: 0,
            update_time: 0,
        }
    }

    fn segment(id: &str, display: &str, entity: &str, t: SegmentType, members: i64) -> Segment {
        Segment {
            name: SegmentName::new("e", id),
            display_name: display.to_string(),
            entity: EntityName::new("e", entity),
            segment_type: t,
            definition: SegmentDefinition::Pushed,
            member_count: members,
            generation: 0,
            refreshing: false,
            last_refresh_time: None,
            create_time: 0,
            update_time: 0,
            revision: 1,
        }
    }

    fn export(kind: ExportKind) -> Export {
        Export {
            name: ExportName::new("e", "x"),
            display_name: "X".into(),
            description: String::new(),
            connection: Some(ConnectionName::new("e", "c")),
            kind,
            entities: Vec::new(),
            segments: Vec::new(),
            field_mappings: Vec::new(),
            settings: BTreeMap::new(),
            sync_mode: SyncMode::Full,
            schedule: default_schedule(),
            next_run_at: None,
            state: ExportState::Active,
            last_refreshed_time: None,
            last_run: None,
            creator: "u".into(),
            create_time: 0,
            update_time: 0,
            revision: 1,
        }
    }

    fn map(source: &str, target: &str) -> FieldMapping {
        FieldMapping {
            source_field: source.into(),
            target_field: target.into(),
        }
    }

    struct World {
        entities: HashMap<EntityName, Entity>,
        segments: HashMap<SegmentName, Segment>,
    }

    impl World {
        fn new() -> World {
            let entities = [
                entity("people", EntityKind::Profile, &["id", "email", "phone"]),
                entity("accounts", EntityKind::Account, &["id", "company_name"]),
                entity("contacts", EntityKind::Contact, &["id", "email"]),
            ];
            let segments = [
                segment("vip", "VIP", "people", SegmentType::Profile, 10),
                segment("big", "Big", "accounts", SegmentType::Account, 10),
                segment("huge", "Huge", "accounts", SegmentType::Account, 10),
                segment("buyers", "Buyers", "contacts", SegmentType::Contact, 2_000_000),
            ];
            World {
                entities: entities.into_iter().map(|e| (e.name.clone(), e)).collect(),
                segments: segments.into_iter().map(|s| (s.name.clone(), s)).collect(),
            }
        }

        fn facts(&self) -> CatalogFacts {
            CatalogFacts {
                entities: self.entities.clone(),
                segments: self.segments.clone(),
            }
        }
    }

    fn to(kind: EnvironmentKind, type_id: &str, target: Option<&'static str>) -> Destination<'static> {
        let spec = find(type_id).unwrap();
        Destination {
            environment_kind: kind,
            spec,
            target,
            profile_limit: spec.profile_limit,
        }
    }

    fn fields(violations: &[FieldViolation]) -> Vec<&str> {
        violations.iter().map(|v| v.field.as_str()).collect()
    }

    #[test]
    fn sources_are_parsed_with_their_index() {
        let (entities, segments, violations) = parse_sources(
            "export",
            "e",
            &[
                "environments/e/entities/a".into(),
                "environments/other/entities/b".into(),
                "environments/e/entities/a".into(),
                "nonsense".into(),
            ],
            &["environments/e/segments/s".into()],
        );
        assert_eq!(entities, vec![EntityName::new("e", "a")]);
        assert_eq!(segments, vec![SegmentName::new("e", "s")]);
        assert_eq!(
            fields(&violations),
            vec!["export.entities[1]", "export.entities[2]", "export.entities[3]"]
        );
        let too_many: Vec<String> = (0..=MAX_SOURCES)
            .map(|i| format!("environments/e/segments/s{i}"))
            .collect();
        let (_, _, violations) = parse_sources("export", "e", &[], &too_many);
        assert_eq!(fields(&violations), vec!["export.segments"]);
    }

    #[test]
    fn kinds_read_what_they_should() {
        let world = World::new();
        let mut data_out = export(ExportKind::DataOut);
        data_out.segments = vec![SegmentName::new("e", "vip")];
        data_out.field_mappings = vec![map("email", "email")];
        let v = validate("export", &data_out, &world.facts(), None);
        assert_eq!(
            fields(&v),
            vec!["export.entities", "export.segments", "export.field_mappings"]
        );
        let mut segment_export = export(ExportKind::Segment);
        segment_export.entities = vec![EntityName::new("e", "people"), EntityName::new("e", "gone")];
        let v = validate("export", &segment_export, &world.facts(), None);
        assert_eq!(
            fields(&v),
            vec!["export.segments", "export.entities", "export.entities[1]"]
        );
    }

    #[test]
    fn mappings_need_existing_sources_and_distinct_targets() {
        let world = World::new();
        let mut e = export(ExportKind::Segment);
        e.segments = vec![SegmentName::new("e", "vip"), SegmentName::new("e", "buyers")];
        e.field_mappings = vec![
            map("phone", "phone"),
            map("email", "email"),
            map("email", "email"),
            map("", " "),
        ];
        let v = validate("export", &e, &world.facts(), None);
        assert_eq!(
            fields(&v),
            vec![
                "export.field_mappings[0].source_field",
                "export.field_mappings[2].target_field",
                "export.field_mappings[3].source_field",
                "export.field_mappings[3].target_field",
            ]
        );
        assert!(
            v[0].description.contains("environments/e/entities/contacts"),
            "{}",
            v[0].description
        );
    }

    #[test]
    fn the_connection_type_decides_kind_settings_sync_mode_and_required_fields() {
        let world = World::new();
        let mut e = export(ExportKind::DataOut);
        e.entities = vec![EntityName::new("e", "people")];
        e.sync_mode = SyncMode::Mirror;
        e.settings.insert("format".into(), "xml".into());
        e.settings.insert("bogus".into(), "1".into());
        let d = to(EnvironmentKind::IndividualCustomers, "mailchimp", None);
        let v = validate("export", &e, &world.facts(), Some(&d));
        assert_eq!(
            fields(&v),
            vec!["export.kind", "export.settings.bogus", "export.settings.format"]
        );
        let local = to(EnvironmentKind::IndividualCustomers, "local-files", None);
        let v = validate("export", &e, &world.facts(), Some(&local));
        assert_eq!(
            fields(&v),
            vec!["export.settings.bogus", "export.settings.format", "export.sync_mode"]
        );

        let mut s = export(ExportKind::Segment);
        s.segments = vec![SegmentName::new("e", "vip")];
        let v = validate("export", &s, &world.facts(), Some(&d));
        assert_eq!(fields(&v), vec!["export.field_mappings"]);
        assert_eq!(
            v[0].description,
            "required target field 'email' is not mapped (Mailchimp needs it)"
        );
        s.field_mappings = vec![map("email", "email")];
        assert!(validate("export", &s, &world.facts(), Some(&d)).is_empty());
    }

    #[test]
    fn identifier_fields_follow_the_target_option() {
        let world = World::new();
        let mut s = export(ExportKind::Segment);
        s.segments = vec![SegmentName::new("e", "vip")];
        let facebook = to(EnvironmentKind::IndividualCustomers, "facebook-ads", None);
        let v = validate("export", &s, &world.facts(), Some(&facebook));
        assert_eq!(fields(&v), vec!["export.field_mappings"]);
        assert!(v[0].description.contains("email, phone"), "{}", v[0].description);
        s.field_mappings = vec![map("phone", "phone")];
        assert!(validate("export", &s, &world.facts(), Some(&facebook)).is_empty());

        let mut company = export(ExportKind::Segment);
        company.segments = vec![SegmentName::new("e", "big")];
        company.settings.insert("target".into(), "COMPANY".into());
        company.field_mappings = vec![map("id", "email")];
        let linkedin = to(EnvironmentKind::BusinessAccounts, "linkedin-ads", Some("COMPANY"));
        let v = validate("export", &company, &world.facts(), Some(&linkedin));
        assert!(v[0].description.contains("company_name"), "{}", v[0].description);
        company.field_mappings = vec![map("company_name", "company_name")];
        assert!(validate("export", &company, &world.facts(), Some(&linkedin)).is_empty());
    }

    #[test]
    fn ineligible_segments_fail_with_the_product_message_and_limits_warn() {
        let world = World::new();
        let facts = |ids: &[&str]| -> Vec<SegmentFacts> {
            ids.iter()
                .map(|id| segment_facts(&world.segments[&SegmentName::new("e", *id)]))
                .collect()
        };
        let mailchimp = to(EnvironmentKind::BusinessAccounts, "mailchimp", None);
        let err = check_segments(&mailchimp, &facts(&["big", "buyers", "huge"])).unwrap_err();
        assert_eq!(err.code, ErrorCode::FailedPrecondition);
        assert_eq!(
            err.message,
            "The following segments are not eligible for this export destination: 'Big', 'Huge'. \
             Please choose only segments of type ContactProfile and try again."
        );
        assert_eq!(err.precondition_violations.len(), 2);
        let warnings = check_segments(&mailchimp, &facts(&["buyers"])).unwrap();
        assert_eq!(warnings.len(), 1);
        assert_eq!(warnings[0].code, "SEGMENT_OVER_LIMIT");
        assert_eq!(warnings[0].subject, "environments/e/segments/buyers");
    }

    #[test]
    fn schedule_times_sort_timed_then_system_refresh_then_off() {
        let now = DateTime::parse_from_rfc3339("2025-03-01T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let cron = Schedule {
            enabled: true,
            trigger: Trigger::Cron(CronSchedule {
                expression: "0 12 * * *".into(),
                time_zone: String::new(),
            }),
        };
        let timed = ScheduleTimes::of(&cron, ExportState::Active, now);
        let noon = DateTime::parse_from_rfc3339("2025-03-01T12:00:00Z")
            .unwrap()
            .timestamp_micros();
        assert_eq!(timed.next_run_at, Some(noon));
        assert_eq!(timed.sort_key, Some(noon));
        let system = ScheduleTimes::of(&default_schedule(), ExportState::Active, now);
        assert_eq!(
            system,
            ScheduleTimes {
                next_run_at: None,
                sort_key: Some(SYSTEM_REFRESH_SORT)
            }
        );
        let off = Schedule {
            enabled: false,
            ..cron.clone()
        };
        assert_eq!(ScheduleTimes::of(&off, ExportState::Active, now).sort_key, None);
        assert_eq!(ScheduleTimes::of(&cron, ExportState::Detached, now).next_run_at, None);
    }
}
