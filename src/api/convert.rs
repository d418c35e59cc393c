//! proto ⇄ domain conversions shared by the services.

use prost_types::Timestamp;

use crate::domain::connection::Connection;
use crate::domain::connection_type::{Category, ConnectionTypeSpec, ExportKind, KeySpec, SegmentType, SyncMode};
use crate::domain::environment::{Environment, EnvironmentKind};
use crate::domain::schedule::{CronSchedule, Frequency, Recurrence, Schedule, Trigger};
use crate::domain::time::{Micros, from_datetime};
use crate::domain::{etag, names};
use crate::error::{Error, Result};
use crate::pb;

pub fn timestamp(micros: Micros) -> Timestamp {
    Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1000) as i32,
    }
}

pub fn opt_timestamp(micros: Option<Micros>) -> Option<Timestamp> {
    micros.map(timestamp)
}

pub fn category(c: Category) -> pb::ConnectionCategory {
    match c {
        Category::Storage => pb::ConnectionCategory::Storage,
        Category::Database => pb::ConnectionCategory::Database,
        Category::Advertising => pb::ConnectionCategory::Advertising,
        Category::EmailMarketing => pb::ConnectionCategory::EmailMarketing,
        Category::Webhook => pb::ConnectionCategory::Webhook,
    }
}

pub fn export_kind(k: ExportKind) -> pb::ExportKind {
    match k {
        ExportKind::DataOut => pb::ExportKind::DataOut,
        ExportKind::Segment => pb::ExportKind::Segment,
    }
}

pub fn segment_type(t: SegmentType) -> pb::SegmentType {
    match t {
        SegmentType::Profile => pb::SegmentType::Profile,
        SegmentType::Account => pb::SegmentType::Account,
        SegmentType::Contact => pb::SegmentType::Contact,
    }
}

pub fn sync_mode(m: SyncMode) -> pb::SyncMode {
    match m {
        SyncMode::Full => pb::SyncMode::Full,
        SyncMode::Incremental => pb::SyncMode::Incremental,
        SyncMode::Mirror => pb::SyncMode::Mirror,
    }
}

fn config_fields(keys: &[KeySpec]) -> Vec<pb::ConfigField> {
    keys.iter()
        .map(|k| pb::ConfigField {
            key: k.key.to_string(),
            description: k.description.to_string(),
            required: k.required,
        })
        .collect()
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

pub fn connection_type(spec: &ConnectionTypeSpec) -> pb::ConnectionType {
    pb::ConnectionType {
        name: names::connection_type_name(spec.id),
        id: spec.id.to_string(),
        display_name: spec.display_name.to_string(),
        category: category(spec.category) as i32,
        export_kinds: spec.export_kinds.iter().map(|k| export_kind(*k) as i32).collect(),
        segment_types: spec.segment_types.iter().map(|t| segment_type(*t) as i32).collect(),
        sync_modes: spec.sync_modes.iter().map(|m| sync_mode(*m) as i32).collect(),
        required_fields: strings(spec.required_fields),
        identifier_fields: strings(spec.identifier_fields),
        profile_limit: spec.profile_limit,
        minimum_segment_size: spec.minimum_segment_size,
        config_fields: config_fields(spec.config),
        secret_fields: config_fields(spec.secrets),
        target_options: spec
            .target_options
            .iter()
            .map(|o| pb::TargetOption {
                value: o.value.to_string(),
                description: o.description.to_string(),
                identifier_fields: strings(o.identifier_fields),
                segment_types: o.segment_types.iter().map(|t| segment_type(*t) as i32).collect(),
            })
            .collect(),
        settings_fields: config_fields(spec.settings),
        one_of_secrets: strings(spec.one_of_secrets),
    }
}

/// A connection as clients see it: never its secrets, only which keys are set.
pub fn connection(connection: &Connection, spec: Option<&ConnectionTypeSpec>) -> pb::Connection {
    pb::Connection {
        name: connection.name.to_string(),
        display_name: connection.display_name.clone(),
        description: connection.description.clone(),
        r#type: connection.type_id.clone(),
        config: connection.config.clone().into_iter().collect(),
        secrets: Default::default(),
        secret_keys: connection.secret_keys.clone(),
        contributors_can_use: connection.contributors_can_use,
        profile_limit: connection.profile_limit,
        create_time: Some(timestamp(connection.create_time)),
        update_time: Some(timestamp(connection.update_time)),
        creator: connection.creator.clone(),
        etag: etag::etag(connection.create_time, connection.revision),
        effective_profile_limit: spec
            .map(|s| connection.effective_profile_limit(s))
            .unwrap_or(connection.profile_limit),
    }
}

pub fn environment_kind(kind: EnvironmentKind) -> pb::EnvironmentKind {
    match kind {
        EnvironmentKind::IndividualCustomers => pb::EnvironmentKind::IndividualCustomers,
        EnvironmentKind::BusinessAccounts => pb::EnvironmentKind::BusinessAccounts,
    }
}

pub fn environment(env: &Environment, your_role: &str) -> pb::Environment {
    pb::Environment {
        name: names::EnvironmentName::new(&env.id).to_string(),
        display_name: env.display_name.clone(),
        kind: environment_kind(env.kind) as i32,
        system_refresh_schedule: Some(match &env.system_refresh_schedule {
            Some(schedule) => schedule_to_pb(schedule, env.next_system_refresh_at),
            None => pb::Schedule {
                enabled: false,
                trigger: None,
                next_run_time: None,
            },
        }),
        create_time: Some(timestamp(env.create_time)),
        your_role: your_role.to_string(),
    }
}

fn weekday_to_pb(day: chrono::Weekday) -> pb::google::r#type::DayOfWeek {
    use pb::google::r#type::DayOfWeek as D;
    match day {
        chrono::Weekday::Mon => D::Monday,
        chrono::Weekday::Tue => D::Tuesday,
        chrono::Weekday::Wed => D::Wednesday,
        chrono::Weekday::Thu => D::Thursday,
        chrono::Weekday::Fri => D::Friday,
        chrono::Weekday::Sat => D::Saturday,
        chrono::Weekday::Sun => D::Sunday,
    }
}

fn weekday_from_pb(field: &str, value: i32) -> Result<chrono::Weekday> {
    use pb::google::r#type::DayOfWeek as D;
    Ok(match D::try_from(value) {
        Ok(D::Monday) => chrono::Weekday::Mon,
        Ok(D::Tuesday) => chrono::Weekday::Tue,
        Ok(D::Wednesday) => chrono::Weekday::Wed,
        Ok(D::Thursday) => chrono::Weekday::Thu,
        Ok(D::Friday) => chrono::Weekday::Fri,
        Ok(D::Saturday) => chrono::Weekday::Sat,
        Ok(D::Sunday) => chrono::Weekday::Sun,
        _ => {
            return Err(Error::invalid(
                field,
                format!("{value} is not a day of the week (MONDAY … SUNDAY)"),
            ));
        }
    })
}

pub fn schedule_to_pb(schedule: &Schedule, next_run: Option<Micros>) -> pb::Schedule {
    use pb::schedule::Trigger as T;
    let trigger = match &schedule.trigger {
        Trigger::SystemRefresh => T::SystemRefresh(pb::SystemRefreshTrigger {}),
        Trigger::Recurrence(r) => T::Recurrence(pb::Recurrence {
            frequency: match r.frequency {
                Some(Frequency::Hourly) => pb::Frequency::Hourly,
                Some(Frequency::Daily) => pb::Frequency::Daily,
                Some(Frequency::Weekly) => pb::Frequency::Weekly,
                Some(Frequency::Monthly) => pb::Frequency::Monthly,
                None => pb::Frequency::Unspecified,
            } as i32,
            interval: r.interval,
            time_of_day: r.time_of_day.clone(),
            days_of_week: r.days_of_week.iter().map(|d| weekday_to_pb(*d) as i32).collect(),
            day_of_month: r.day_of_month,
            time_zone: r.time_zone.clone(),
            anchor_time: opt_timestamp(r.anchor.map(from_datetime)),
        }),
        Trigger::Cron(c) => T::Cron(pb::CronSchedule {
            expression: c.expression.clone(),
            time_zone: c.time_zone.clone(),
        }),
    };
    pb::Schedule {
        enabled: schedule.enabled,
        trigger: Some(trigger),
        next_run_time: if schedule.enabled {
            opt_timestamp(next_run)
        } else {
            None
        },
    }
}

/// Reads a schedule; `field` is its request path. A schedule without a trigger gets
/// `default_trigger` (None = the trigger is required). Validation errors name their fields.
pub fn schedule_from_pb(field: &str, schedule: &pb::Schedule, default_trigger: Option<Trigger>) -> Result<Schedule> {
    use pb::schedule::Trigger as T;
    let trigger = match &schedule.trigger {
        None => default_trigger.ok_or_else(|| {
            Error::invalid(
                format!("{field}.trigger"),
                "a trigger is required: `recurrence` or `cron`",
            )
        })?,
        Some(T::SystemRefresh(_)) => Trigger::SystemRefresh,
        Some(T::Recurrence(r)) => {
            let frequency = match pb::Frequency::try_from(r.frequency) {
                Ok(pb::Frequency::Hourly) => Some(Frequency::Hourly),
                Ok(pb::Frequency::Daily) => Some(Frequency::Daily),
                Ok(pb::Frequency::Weekly) => Some(Frequency::Weekly),
                Ok(pb::Frequency::Monthly) => Some(Frequency::Monthly),
                Ok(pb::Frequency::Unspecified) => None,
                Err(_) => {
                    return Err(Error::invalid(
                        format!("{field}.recurrence.frequency"),
                        format!("unknown frequency {}", r.frequency),
                    ));
                }
            };
            let days = r
                .days_of_week
                .iter()
                .map(|d| weekday_from_pb(&format!("{field}.recurrence.days_of_week"), *d))
                .collect::<Result<Vec<_>>>()?;
            Trigger::Recurrence(Recurrence {
                frequency,
                interval: r.interval,
                time_of_day: r.time_of_day.clone(),
                days_of_week: days,
                day_of_month: r.day_of_month,
                time_zone: r.time_zone.clone(),
                // Output only: the handler anchors the schedule when it sets it.
                anchor: None,
            })
        }
        Some(T::Cron(c)) => Trigger::Cron(CronSchedule {
            expression: c.expression.clone(),
            time_zone: c.time_zone.clone(),
        }),
    };
    let schedule = Schedule {
        enabled: schedule.enabled,
        trigger,
    };
    let violations = schedule.validate();
    if !violations.is_empty() {
        return Err(Error::invalid_fields(
            violations
                .into_iter()
                .map(|v| crate::error::FieldViolation {
                    field: format!("{field}.{}", v.field),
                    description: v.description,
                })
                .collect(),
        ));
    }
    Ok(schedule)
}

pub fn entity_kind_to_pb(kind: crate::domain::catalog::EntityKind) -> pb::EntityKind {
    use crate::domain::catalog::EntityKind as K;
    match kind {
        K::Profile => pb::EntityKind::Profile,
        K::Account => pb::EntityKind::Account,
        K::Contact => pb::EntityKind::Contact,
        K::Other => pb::EntityKind::Other,
    }
}

pub fn entity_kind_from_pb(value: i32) -> Option<crate::domain::catalog::EntityKind> {
    use crate::domain::catalog::EntityKind as K;
    match pb::EntityKind::try_from(value) {
        Ok(pb::EntityKind::Profile) => Some(K::Profile),
        Ok(pb::EntityKind::Account) => Some(K::Account),
        Ok(pb::EntityKind::Contact) => Some(K::Contact),
        Ok(pb::EntityKind::Other) => Some(K::Other),
        _ => None,
    }
}

pub fn field_type_to_pb(t: crate::domain::catalog::FieldType) -> pb::FieldType {
    use crate::domain::catalog::FieldType as F;
    match t {
        F::String => pb::FieldType::String,
        F::Int64 => pb::FieldType::Int64,
        F::Double => pb::FieldType::Double,
        F::Bool => pb::FieldType::Bool,
        F::Timestamp => pb::FieldType::Timestamp,
        F::Date => pb::FieldType::Date,
        F::Json => pb::FieldType::Json,
    }
}

pub fn field_type_from_pb(value: i32) -> Option<crate::domain::catalog::FieldType> {
    use crate::domain::catalog::FieldType as F;
    match pb::FieldType::try_from(value) {
        Ok(pb::FieldType::String) => Some(F::String),
        Ok(pb::FieldType::Int64) => Some(F::Int64),
        Ok(pb::FieldType::Double) => Some(F::Double),
        Ok(pb::FieldType::Bool) => Some(F::Bool),
        Ok(pb::FieldType::Timestamp) => Some(F::Timestamp),
        Ok(pb::FieldType::Date) => Some(F::Date),
        Ok(pb::FieldType::Json) => Some(F::Json),
        _ => None,
    }
}

pub fn entity(entity: &crate::domain::catalog::Entity) -> pb::Entity {
    pb::Entity {
        name: entity.name.to_string(),
        display_name: entity.display_name.clone(),
        kind: entity_kind_to_pb(entity.kind) as i32,
        fields: entity
            .fields
            .iter()
            .map(|f| pb::EntityField {
                name: f.name.clone(),
                r#type: field_type_to_pb(f.field_type()) as i32,
                description: f.description.clone(),
                mapping: f.mapping.clone(),
            })
            .collect(),
        primary_key: entity.primary_key.clone(),
        record_count: entity.record_count,
        refreshing: entity.refreshing,
        last_refresh_time: opt_timestamp(entity.last_refresh_time),
        create_time: Some(timestamp(entity.create_time)),
        change_sequence: entity.change_seq,
    }
}

pub fn segment(segment: &crate::domain::catalog::Segment) -> pb::Segment {
    use crate::domain::catalog::SegmentDefinition;
    pb::Segment {
        name: segment.name.to_string(),
        display_name: segment.display_name.clone(),
        entity: segment.entity.to_string(),
        r#type: segment_type(segment.segment_type) as i32,
        definition: Some(match &segment.definition {
            SegmentDefinition::Pushed => pb::segment::Definition::Members(pb::PushedMembers {}),
            SegmentDefinition::Rule(rule) => pb::segment::Definition::Rule(rule.clone()),
        }),
        member_count: segment.member_count,
        refreshing: segment.refreshing,
        last_refresh_time: opt_timestamp(segment.last_refresh_time),
        create_time: Some(timestamp(segment.create_time)),
    }
}

/// A number JSON cannot carry (NaN, ±Infinity): refused rather than stored as null.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NonFiniteNumber;

/// A protobuf Struct as a JSON object (numbers are doubles, as in JSON).
fn struct_to_json(value: prost_types::Struct) -> Result<serde_json::Map<String, serde_json::Value>, NonFiniteNumber> {
    value
        .fields
        .into_iter()
        .map(|(k, v)| Ok((k, value_to_json(v)?)))
        .collect()
}

/// A JSON object as a protobuf Struct (the rows of a preview's sample).
pub fn json_to_struct(object: serde_json::Map<String, serde_json::Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: object.into_iter().map(|(k, v)| (k, json_to_value(v))).collect(),
    }
}

fn json_to_value(value: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match value {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.into_iter().map(json_to_value).collect(),
        }),
        serde_json::Value::Object(object) => Kind::StructValue(json_to_struct(object)),
    };
    prost_types::Value { kind: Some(kind) }
}

/// What a run started now would do (PreviewExport).
pub fn export_preview(name: &str, preview: crate::engine::preview::Preview) -> pb::ExportPreview {
    pb::ExportPreview {
        export: name.to_string(),
        sources: preview
            .sources
            .into_iter()
            .map(|s| pb::SourcePreview {
                source: s.source,
                records_total: s.records_total,
                to_send: s.to_send,
                to_remove: s.to_remove,
                to_retry: s.to_retry,
                over_limit: s.over_limit,
                under_minimum: s.under_minimum,
            })
            .collect(),
        sample: preview.sample.into_iter().map(json_to_struct).collect(),
        warnings: preview.warnings.iter().map(export_warning).collect(),
        skip_reason: preview.skip_reason.unwrap_or_default(),
    }
}

pub fn value_to_json(value: prost_types::Value) -> Result<serde_json::Value, NonFiniteNumber> {
    use prost_types::value::Kind;
    Ok(match value.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::NumberValue(n)) if !n.is_finite() => return Err(NonFiniteNumber),
        Some(Kind::NumberValue(n)) => {
            // Integral doubles become JSON integers, so that INT64 fields keep their exact form.
            if n.fract() == 0.0 && n.abs() < 9.0e15 {
                serde_json::Value::from(n as i64)
            } else {
                serde_json::Value::from(n)
            }
        }
        Some(Kind::StringValue(s)) => serde_json::Value::String(s),
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(b),
        Some(Kind::StructValue(s)) => serde_json::Value::Object(struct_to_json(s)?),
        Some(Kind::ListValue(l)) => {
            serde_json::Value::Array(l.values.into_iter().map(value_to_json).collect::<Result<_, _>>()?)
        }
    })
}

pub fn system_refresh(refresh: &crate::store::system_refreshes::SystemRefresh) -> pb::SystemRefresh {
    use crate::store::system_refreshes::SystemRefreshState as S;
    pb::SystemRefresh {
        name: refresh.name.to_string(),
        state: match refresh.state {
            S::Running => pb::SystemRefreshState::Running,
            S::Succeeded => pb::SystemRefreshState::Succeeded,
            S::Failed => pb::SystemRefreshState::Failed,
        } as i32,
        start_time: Some(timestamp(refresh.start_time)),
        end_time: opt_timestamp(refresh.end_time),
        error: refresh.error.as_ref().map(|message| tonic_types::pb::Status {
            code: tonic::Code::Internal as i32,
            message: message.clone(),
            details: vec![],
        }),
        segments_refreshed: refresh.segments_refreshed as i32,
        runs: refresh.runs.clone(),
    }
}

pub fn export_kind_from_pb(value: i32) -> Option<ExportKind> {
    match pb::ExportKind::try_from(value) {
        Ok(pb::ExportKind::DataOut) => Some(ExportKind::DataOut),
        Ok(pb::ExportKind::Segment) => Some(ExportKind::Segment),
        _ => None,
    }
}

/// Unspecified means FULL (API.md).
pub fn sync_mode_from_pb(field: &str, value: i32) -> Result<SyncMode> {
    match pb::SyncMode::try_from(value) {
        Ok(pb::SyncMode::Unspecified | pb::SyncMode::Full) => Ok(SyncMode::Full),
        Ok(pb::SyncMode::Incremental) => Ok(SyncMode::Incremental),
        Ok(pb::SyncMode::Mirror) => Ok(SyncMode::Mirror),
        Err(_) => Err(Error::invalid(
            field,
            format!("unknown sync mode {value}: FULL, INCREMENTAL or MIRROR"),
        )),
    }
}

pub fn run_state(state: crate::domain::run::RunState) -> pb::RunState {
    use crate::domain::run::RunState as R;
    match state {
        R::Queued => pb::RunState::Queued,
        R::WaitingForDependencies => pb::RunState::WaitingForDependencies,
        R::Running => pb::RunState::Running,
        R::Succeeded => pb::RunState::Succeeded,
        R::Failed => pb::RunState::Failed,
        R::Skipped => pb::RunState::Skipped,
        R::Cancelled => pb::RunState::Cancelled,
    }
}

pub fn export_state(state: crate::domain::export::ExportState) -> pb::ExportState {
    use crate::domain::export::ExportState as S;
    match state {
        S::Active => pb::ExportState::Active,
        S::Detached => pb::ExportState::Detached,
    }
}

pub fn export_warning(warning: &crate::domain::run::Warning) -> pb::ExportWarning {
    pb::ExportWarning {
        code: warning.code.clone(),
        message: warning.message.clone(),
        subject: warning.subject.clone(),
    }
}

/// What an export looks like to one caller, beyond the export itself.
pub struct ExportView<'a> {
    /// The export's connection; only its name, display name and type are shown.
    pub connection: Option<&'a Connection>,
    /// Whether the caller may see the connection's details (admins, or shared connections).
    pub may_see_connection: bool,
    pub may_edit: bool,
    /// Segment name → member count, for the segments that exist.
    pub member_counts: std::collections::HashMap<String, i64>,
    pub warnings: Vec<crate::domain::run::Warning>,
}

pub fn export(export: &crate::domain::export::Export, view: &ExportView) -> pb::Export {
    let name = export.name.to_string();
    pb::Export {
        display_name: export.display_name.clone(),
        description: export.description.clone(),
        connection: export.connection.as_ref().map(|c| c.to_string()).unwrap_or_default(),
        connection_type: view.connection.map(|c| c.type_id.clone()).unwrap_or_default(),
        connection_display_name: view.connection.map(|c| c.display_name.clone()).unwrap_or_default(),
        kind: export_kind(export.kind) as i32,
        entities: export.entities.iter().map(|e| e.to_string()).collect(),
        segments: export.segments.iter().map(|s| s.to_string()).collect(),
        field_mappings: export
            .field_mappings
            .iter()
            .map(|m| pb::FieldMapping {
                source_field: m.source_field.clone(),
                target_field: m.target_field.clone(),
            })
            .collect(),
        settings: export.settings.clone().into_iter().collect(),
        sync_mode: sync_mode(export.sync_mode) as i32,
        schedule: Some(schedule_to_pb(&export.schedule, export.next_run_at)),
        state: export_state(export.state) as i32,
        last_refreshed_time: opt_timestamp(export.last_refreshed_time),
        last_run: export.last_run.as_ref().map(|run| pb::ExportRun {
            name: format!("{name}/runs/{}", run.id),
            export: name.clone(),
            state: run_state(run.state) as i32,
            end_time: opt_timestamp(run.end_time),
            error: run.error.as_ref().map(|e| {
                // The run wrote through the connection it named; callers see it in full only
                // when they may see that connection now.
                let current = export.connection.as_ref().map(|c| c.to_string()).unwrap_or_default();
                run_error(e, &|c| view.may_see_connection && c == current)
            }),
            ..Default::default()
        }),
        your_permission: if view.may_edit {
            pb::Permission::Edit
        } else {
            pb::Permission::View
        } as i32,
        segment_member_counts: view.member_counts.clone().into_iter().collect(),
        warnings: view.warnings.iter().map(export_warning).collect(),
        create_time: Some(timestamp(export.create_time)),
        update_time: Some(timestamp(export.update_time)),
        creator: export.creator.clone(),
        etag: etag::etag(export.create_time, export.revision),
        name,
    }
}

pub fn run_trigger(trigger: crate::domain::run::RunTrigger) -> pb::RunTrigger {
    use crate::domain::run::RunTrigger as T;
    match trigger {
        T::Manual => pb::RunTrigger::Manual,
        T::RunAll => pb::RunTrigger::RunAll,
        T::Schedule => pb::RunTrigger::Schedule,
        T::SystemRefresh => pb::RunTrigger::SystemRefresh,
    }
}

/// A run as clients see it; a failure is a `google.rpc.Status` with an ErrorInfo saying where.
/// `may_see` says whether the caller may see a connection (by name): messages that name where
/// a connection wrote are shown in full only then.
pub fn run(run: &crate::domain::run::Run, may_see: &dyn Fn(&str) -> bool) -> pb::ExportRun {
    pb::ExportRun {
        name: run.name.to_string(),
        export: run.name.export_name().to_string(),
        trigger: run_trigger(run.trigger) as i32,
        state: run_state(run.state) as i32,
        tasks: run
            .tasks
            .iter()
            .map(|t| pb::RunTask {
                name: t.name.clone(),
                state: crate::domain::run::RunState::from_number(t.state)
                    .map(|s| run_state(s) as i32)
                    .unwrap_or(0),
                start_time: opt_timestamp(t.start_time),
                end_time: opt_timestamp(t.end_time),
                message: t.message_for(may_see).to_string(),
            })
            .collect(),
        records_total: run.counts.total,
        records_exported: run.counts.exported,
        records_rejected: run.counts.rejected,
        bytes_written: run.counts.bytes,
        warnings: run.warnings.iter().map(export_warning).collect(),
        error: run.error.as_ref().map(|e| run_error(e, may_see)),
        attempt: run.attempt,
        create_time: Some(timestamp(run.create_time)),
        start_time: opt_timestamp(run.start_time),
        end_time: opt_timestamp(run.end_time),
        skip_reason: run.skip_reason.clone().unwrap_or_default(),
        waiting_for: run.waiting_for.clone(),
        records_removed: run.counts.removed,
        records_retried: run.counts.retried,
    }
}

fn run_error(error: &crate::domain::run::RunError, may_see: &dyn Fn(&str) -> bool) -> tonic_types::pb::Status {
    use prost::Message;
    let mut metadata = std::collections::HashMap::new();
    if !error.task.is_empty() {
        metadata.insert("task".to_string(), error.task.clone());
    }
    if !error.part.is_empty() {
        metadata.insert("part".to_string(), error.part.clone());
    }
    let info = tonic_types::pb::ErrorInfo {
        reason: error.reason.clone(),
        domain: super::status::DOMAIN.into(),
        metadata,
    };
    tonic_types::pb::Status {
        code: error.code,
        message: error.message_for(may_see).to_string(),
        details: vec![prost_types::Any {
            type_url: "type.googleapis.com/google.rpc.ErrorInfo".into(),
            value: info.encode_to_vec(),
        }],
    }
}

/// A rejected record (PRODUCT.md §12) as the API shows it.
pub fn rejected_record(reject: &crate::store::rejects::StoredReject) -> pb::RejectedRecord {
    pb::RejectedRecord {
        name: format!("{}/rejectedRecords/{}", reject.export, escape_name_segment(&reject.key)),
        key: reject.key.clone(),
        source: reject.source.clone(),
        reason: reject.reason.clone(),
        code: reject.code.clone(),
        run: format!("{}/runs/{}", reject.export, reject.run_id),
        attempts: i32::try_from(reject.attempts).unwrap_or(i32::MAX),
        first_reject_time: Some(timestamp(reject.first_reject_time)),
        last_reject_time: Some(timestamp(reject.last_reject_time)),
    }
}

/// A key as one segment of a resource name: every byte but the URL-unreserved ones
/// (`A-Z a-z 0-9 - . _ ~`) percent-encoded, so that a `/` in a key cannot split the name.
pub fn escape_name_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}
