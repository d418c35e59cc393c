//! The bad-input corpus: one table of requests that must be refused, each with the status it
//! must get (code, ErrorInfo reason, the field a BadRequest names, words of the message),
//! run against every RPC of every service. Every answer must also carry an ErrorInfo, fit in
//! the trailers a C-core client accepts, and change nothing. Add a row for every bad input
//! found to be mishandled.

use std::time::Duration;

use exportd::auth::Role;
use exportd::pb;
use prost::Message;
use prost_types::value::Kind;
use serde_json::json;
use tonic::Code;
use tonic_types::StatusExt;

use crate::common::raw;
use crate::common::*;

const FILES: &str = "environments/acme/connections/files";
const NIGHTLY: &str = "environments/acme/exports/nightly";
const RUN: &str = "environments/acme/exports/nightly/runs/run-1";
const POLICY: &str = "environments/acme/alertPolicies/failures";

/// C-core clients (Python, C++) accept at most 16 KiB of trailers and may refuse more than
/// 8 KiB; an error status must stay under the lower.
const C_CORE_SOFT_LIMIT: usize = 8 * 1024;

/// Who sends a request.
enum Caller {
    Admin,
    Token(String),
}

/// One bad request and what it must get back.
struct Case {
    /// `Service/Rpc` of package `exportd.v1`.
    method: &'static str,
    what: &'static str,
    /// One message, or the messages of a client stream, as sent.
    messages: Vec<Vec<u8>>,
    caller: Caller,
    code: Code,
    reason: &'static str,
    field: Option<&'static str>,
    says: &'static str,
}

/// A request refused with INVALID_ARGUMENT (reason INVALID_ARGUMENT).
fn bad(method: &'static str, what: &'static str, request: impl Message) -> Case {
    Case {
        method,
        what,
        messages: vec![request.encode_to_vec()],
        caller: Caller::Admin,
        code: Code::InvalidArgument,
        reason: "INVALID_ARGUMENT",
        field: None,
        says: "",
    }
}

/// Bytes that are not a valid message: INVALID_ARGUMENT, reason MALFORMED_MESSAGE.
fn malformed(method: &'static str, what: &'static str, bytes: Vec<u8>) -> Case {
    Case {
        messages: vec![bytes],
        reason: "MALFORMED_MESSAGE",
        ..bad(method, what, pb::GetExportRequest::default())
    }
}

impl Case {
    /// The field the BadRequest must name.
    fn field(mut self, field: &'static str) -> Self {
        self.field = Some(field);
        self
    }

    /// Words the message must contain (the bound, the reason).
    fn says(mut self, words: &'static str) -> Self {
        self.says = words;
        self
    }

    fn status(mut self, code: Code, reason: &'static str) -> Self {
        self.code = code;
        self.reason = reason;
        self
    }

    fn by(mut self, token: String) -> Self {
        self.caller = Caller::Token(token);
        self
    }
}

fn long(n: usize) -> String {
    "x".repeat(n)
}

fn name_over_256() -> String {
    format!("environments/acme/exports/{}", long(240))
}

/// A Struct nested `depth` levels deep.
fn nested_struct(depth: usize) -> prost_types::Struct {
    let mut inner = prost_types::Struct::default();
    for _ in 0..depth {
        inner = prost_types::Struct {
            fields: [(
                "a".to_string(),
                prost_types::Value {
                    kind: Some(Kind::StructValue(inner)),
                },
            )]
            .into(),
        };
    }
    inner
}

fn number(n: f64) -> prost_types::Value {
    prost_types::Value {
        kind: Some(Kind::NumberValue(n)),
    }
}

fn customer_with(field: &str, value: prost_types::Value) -> pb::WriteRecordsRequest {
    let mut request = write(CUSTOMERS, vec![json!({"id": "c99"})], &[]);
    request.upserts[0].fields.insert(field.into(), value);
    request
}

fn cron_schedule(expression: &str, time_zone: &str) -> pb::Schedule {
    pb::Schedule {
        enabled: true,
        trigger: Some(pb::schedule::Trigger::Cron(pb::CronSchedule {
            expression: expression.into(),
            time_zone: time_zone.into(),
        })),
        ..Default::default()
    }
}

fn connection_with(edit: impl FnOnce(&mut pb::Connection)) -> pb::CreateConnectionRequest {
    let mut request = local_files("acme", "new", "New", false);
    edit(request.connection.as_mut().unwrap());
    request
}

fn export_with(edit: impl FnOnce(&mut pb::Export)) -> pb::CreateExportRequest {
    let mut request = data_out("acme", "new", "New", "files", &[CUSTOMERS]);
    edit(request.export.as_mut().unwrap());
    request
}

fn update_export(edit: impl FnOnce(&mut pb::Export), paths: &[&str]) -> pb::UpdateExportRequest {
    let mut export = pb::Export {
        name: NIGHTLY.into(),
        ..Default::default()
    };
    edit(&mut export);
    pb::UpdateExportRequest {
        export: Some(export),
        update_mask: mask(paths),
        validate_only: false,
    }
}

fn entity_with(edit: impl FnOnce(&mut pb::Entity)) -> pb::CreateEntityRequest {
    let mut request = crate::common::customers_entity("acme", "new", pb::EntityKind::Profile);
    edit(request.entity.as_mut().unwrap());
    request
}

fn entries<M: FromIterator<(String, String)>>(n: usize) -> M {
    (0..n).map(|i| (format!("k{i}"), "v".to_string())).collect()
}

fn corpus(t: &TestServer) -> Vec<Case> {
    let empty_sub = exportd::auth::jwt::sign_hs256(
        HS_SECRET.as_bytes(),
        "",
        &[("acme".to_string(), Role::Admin)].into(),
        Duration::from_secs(600),
    )
    .unwrap();
    let admin = t.token(&[("acme", Role::Admin)]);
    let oversized_token = format!("{admin}{}", long(20 * 1024));
    let huge_token = format!("{admin}{}", long(100 * 1024));
    vec![
        // ConnectionService
        malformed("ConnectionService/ListConnectionTypes", "garbage bytes", vec![0xff; 8]),
        bad(
            "ConnectionService/CreateConnection",
            "a display name over 200 characters",
            connection_with(|c| c.display_name = "é".repeat(201)),
        )
        .field("connection.display_name")
        .says("at most 200 characters"),
        bad(
            "ConnectionService/CreateConnection",
            "a description over 5,000 characters",
            connection_with(|c| c.description = long(5_001)),
        )
        .field("connection.description")
        .says("at most 5000 characters"),
        bad(
            "ConnectionService/CreateConnection",
            "a config value over 4,096 characters",
            connection_with(|c| {
                c.config.insert("root".into(), format!("/{}", long(4_096)));
            }),
        )
        .field("connection.config.root")
        .says("at most 4096 characters"),
        bad(
            "ConnectionService/CreateConnection",
            "65 config entries",
            connection_with(|c| c.config = entries(65)),
        )
        .field("connection.config")
        .says("at most 64 entries"),
        bad(
            "ConnectionService/CreateConnection",
            "a config key over 128 characters",
            connection_with(|c| {
                c.config.insert(long(129), "v".into());
            }),
        )
        .field("connection.config")
        .says("keys: at most 128 characters"),
        bad(
            "ConnectionService/CreateConnection",
            "a secret over 16,384 characters",
            connection_with(|c| {
                c.r#type = "s3".into();
                c.secrets.insert("secret_access_key".into(), long(16_385));
            }),
        )
        .field("connection.secrets.secret_access_key")
        .says("at most 16384 characters"),
        bad(
            "ConnectionService/CreateConnection",
            "a connection id over 63 characters",
            pb::CreateConnectionRequest {
                connection_id: long(64),
                ..local_files("acme", "", "New", false)
            },
        )
        .field("connection_id")
        .says("at most 63 characters"),
        bad(
            "ConnectionService/CreateConnection",
            "a request id over 128 characters",
            pb::CreateConnectionRequest {
                request_id: long(129),
                ..local_files("acme", "new", "New", false)
            },
        )
        .field("request_id")
        .says("at most 128 characters"),
        bad(
            "ConnectionService/CreateConnection",
            "a NUL in a display name",
            connection_with(|c| c.display_name = "Fi\0les".into()),
        )
        .field("connection.display_name")
        .says("NUL"),
        bad(
            "ConnectionService/CreateConnection",
            "a NUL in a config value",
            connection_with(|c| {
                c.config.insert("root".into(), "/tmp/a\0b".into());
            }),
        )
        .field("connection.config.root")
        .says("NUL"),
        // Field 2 (connection_id), length 2, bytes that are not UTF-8.
        malformed(
            "ConnectionService/CreateConnection",
            "invalid UTF-8 in a string",
            vec![0x12, 0x02, 0xff, 0xfe],
        )
        .says("UTF-8"),
        // Field 1 (parent) claims 16 bytes and has one.
        malformed(
            "ConnectionService/CreateConnection",
            "a truncated message",
            vec![0x0a, 0x10, b'e'],
        ),
        bad(
            "ConnectionService/GetConnection",
            "a name over 256 characters",
            pb::GetConnectionRequest { name: name_over_256() },
        )
        .field("name")
        .says("at most 256 characters"),
        bad(
            "ConnectionService/GetConnection",
            "not a connection name",
            pb::GetConnectionRequest {
                name: "connections/files".into(),
            },
        )
        .field("name"),
        bad(
            "ConnectionService/ListConnections",
            "a negative page size",
            pb::ListConnectionsRequest {
                parent: ACME.into(),
                page_size: -1,
                ..Default::default()
            },
        )
        .field("page_size"),
        bad(
            "ConnectionService/ListConnections",
            "a filter over 2,000 characters",
            pb::ListConnectionsRequest {
                parent: ACME.into(),
                filter: format!("display_name:\"{}\"", long(2_000)),
                ..Default::default()
            },
        )
        .field("filter")
        .says("at most 2000 characters"),
        bad(
            "ConnectionService/ListConnections",
            "an order_by over 2,000 characters",
            pb::ListConnectionsRequest {
                parent: ACME.into(),
                order_by: long(2_001),
                ..Default::default()
            },
        )
        .field("order_by"),
        bad(
            "ConnectionService/ListConnections",
            "a page token over 512 characters",
            pb::ListConnectionsRequest {
                parent: ACME.into(),
                page_token: long(513),
                ..Default::default()
            },
        )
        .field("page_token")
        .says("at most 512 characters"),
        bad(
            "ConnectionService/ListConnections",
            "a forged page token",
            pb::ListConnectionsRequest {
                parent: ACME.into(),
                page_token: "bm90LWEtdG9rZW4".into(),
                ..Default::default()
            },
        )
        .field("page_token"),
        bad(
            "ConnectionService/UpdateConnection",
            "101 update mask paths",
            pb::UpdateConnectionRequest {
                connection: Some(pb::Connection {
                    name: FILES.into(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["description".to_string(); 101],
                }),
            },
        )
        .field("update_mask.paths")
        .says("at most 100 items"),
        bad(
            "ConnectionService/UpdateConnection",
            "a description over 5,000 characters",
            pb::UpdateConnectionRequest {
                connection: Some(pb::Connection {
                    name: FILES.into(),
                    description: long(5_001),
                    ..Default::default()
                }),
                update_mask: mask(&["description"]),
            },
        )
        .field("connection.description"),
        bad(
            "ConnectionService/UpdateConnection",
            "an etag over 128 characters",
            pb::UpdateConnectionRequest {
                connection: Some(pb::Connection {
                    name: FILES.into(),
                    display_name: "Files".into(),
                    etag: long(129),
                    ..Default::default()
                }),
                update_mask: mask(&["display_name"]),
            },
        )
        .field("connection.etag"),
        bad(
            "ConnectionService/DeleteConnection",
            "an etag over 128 characters",
            pb::DeleteConnectionRequest {
                name: FILES.into(),
                force: true,
                etag: long(129),
            },
        )
        .field("etag"),
        bad(
            "ConnectionService/DeleteConnection",
            "a NUL in a name",
            pb::DeleteConnectionRequest {
                name: format!("{FILES}\0"),
                force: true,
                etag: String::new(),
            },
        )
        .field("name")
        .says("NUL"),
        bad(
            "ConnectionService/TestConnection",
            "a name over 256 characters",
            pb::TestConnectionRequest { name: name_over_256() },
        )
        .field("name"),
        // ExportService
        bad(
            "ExportService/CreateExport",
            "a 6 MiB folder setting",
            export_with(|e| {
                e.settings.insert("folder".into(), long(6 << 20));
            }),
        )
        .field("export.settings.folder")
        .says("at most 4096 characters"),
        bad(
            "ExportService/CreateExport",
            "65 settings",
            export_with(|e| e.settings = entries(65)),
        )
        .field("export.settings")
        .says("at most 64 entries"),
        bad(
            "ExportService/CreateExport",
            "a NUL in a setting",
            export_with(|e| {
                e.settings.insert("folder".into(), "out\0".into());
            }),
        )
        .field("export.settings.folder")
        .says("NUL"),
        bad(
            "ExportService/CreateExport",
            "1,001 segments",
            export_with(|e| {
                e.kind = pb::ExportKind::Segment as i32;
                e.entities.clear();
                e.segments = (0..1_001).map(|i| format!("environments/acme/segments/s{i}")).collect();
            }),
        )
        .field("export.segments")
        .says("at most 1000 items"),
        bad(
            "ExportService/CreateExport",
            "1,001 entities",
            export_with(|e| e.entities = vec![CUSTOMERS.to_string(); 1_001]),
        )
        .field("export.entities")
        .says("at most 1000 items"),
        bad(
            "ExportService/CreateExport",
            "501 field mappings",
            export_with(|e| {
                e.field_mappings = vec![
                    pb::FieldMapping {
                        source_field: "email".into(),
                        target_field: "email".into()
                    };
                    501
                ]
            }),
        )
        .field("export.field_mappings")
        .says("at most 500 items"),
        bad(
            "ExportService/CreateExport",
            "a target field over 200 characters",
            export_with(|e| {
                e.field_mappings = vec![pb::FieldMapping {
                    source_field: "email".into(),
                    target_field: long(201),
                }]
            }),
        )
        .field("export.field_mappings[0].target_field"),
        bad(
            "ExportService/CreateExport",
            "a display name over 200 characters",
            export_with(|e| e.display_name = long(201)),
        )
        .field("export.display_name"),
        bad(
            "ExportService/CreateExport",
            "a cron that never matches (31 February)",
            export_with(|e| e.schedule = Some(cron_schedule("0 0 31 2 *", "UTC"))),
        )
        .field("export.schedule.cron.expression")
        .says("never matches"),
        bad(
            "ExportService/CreateExport",
            "a cron expression over 256 characters",
            export_with(|e| e.schedule = Some(cron_schedule(&long(257), "UTC"))),
        )
        .field("export.schedule.cron.expression")
        .says("at most 256 characters"),
        bad(
            "ExportService/CreateExport",
            "a time zone over 64 characters",
            export_with(|e| e.schedule = Some(cron_schedule("0 6 * * *", &long(65)))),
        )
        .field("export.schedule.cron.time_zone"),
        bad(
            "ExportService/CreateExport",
            "eight days of the week",
            export_with(|e| {
                e.schedule = Some(pb::Schedule {
                    enabled: true,
                    trigger: Some(pb::schedule::Trigger::Recurrence(pb::Recurrence {
                        frequency: pb::Frequency::Weekly as i32,
                        days_of_week: vec![1; 8],
                        ..Default::default()
                    })),
                    ..Default::default()
                })
            }),
        )
        .field("export.schedule.recurrence.days_of_week"),
        bad(
            "ExportService/GetExport",
            "a name over 256 characters",
            pb::GetExportRequest { name: name_over_256() },
        )
        .field("name"),
        bad(
            "ExportService/ListExports",
            "a filter over 2,000 characters",
            pb::ListExportsRequest {
                parent: ACME.into(),
                filter: long(2_001),
                ..Default::default()
            },
        )
        .field("filter"),
        bad(
            "ExportService/ListExports",
            "AND and OR mixed without parentheses",
            pb::ListExportsRequest {
                parent: ACME.into(),
                filter: "kind = SEGMENT OR status = FAILED AND state = DETACHED".into(),
                ..Default::default()
            },
        )
        .field("filter")
        .says("ambiguous"),
        bad(
            "ExportService/ListExports",
            "a negative page size",
            pb::ListExportsRequest {
                parent: ACME.into(),
                page_size: -5,
                ..Default::default()
            },
        )
        .field("page_size"),
        bad(
            "ExportService/UpdateExport",
            "a setting over 4,096 characters",
            update_export(
                |e| {
                    e.settings.insert("folder".into(), long(4_097));
                },
                &["settings"],
            ),
        )
        .field("export.settings.folder"),
        bad(
            "ExportService/UpdateExport",
            "a cron that never matches (30 February)",
            update_export(|e| e.schedule = Some(cron_schedule("0 0 30 2 *", "UTC")), &["schedule"]),
        )
        .field("export.schedule.cron.expression")
        .says("never matches"),
        bad(
            "ExportService/DeleteExport",
            "an etag over 128 characters",
            pb::DeleteExportRequest {
                name: NIGHTLY.into(),
                etag: long(129),
            },
        )
        .field("etag"),
        bad(
            "ExportService/DuplicateExport",
            "a display name over 200 characters",
            pb::DuplicateExportRequest {
                name: NIGHTLY.into(),
                export_id: "copy".into(),
                display_name: long(201),
            },
        )
        .field("display_name"),
        bad(
            "ExportService/DuplicateExport",
            "an export id over 63 characters",
            pb::DuplicateExportRequest {
                name: NIGHTLY.into(),
                export_id: long(64),
                display_name: String::new(),
            },
        )
        .field("export_id"),
        bad(
            "ExportService/DetachConnection",
            "a NUL in a name",
            pb::DetachConnectionRequest {
                name: format!("{NIGHTLY}\0"),
            },
        )
        .field("name"),
        bad(
            "ExportService/RunExport",
            "a request id over 128 characters",
            pb::RunExportRequest {
                name: NIGHTLY.into(),
                request_id: long(129),
            },
        )
        .field("request_id"),
        bad(
            "ExportService/RunExport",
            "a name over 256 characters",
            pb::RunExportRequest {
                name: name_over_256(),
                request_id: String::new(),
            },
        )
        .field("name"),
        bad(
            "ExportService/RunAllExports",
            "a parent over 256 characters",
            pb::RunAllExportsRequest {
                parent: name_over_256(),
            },
        )
        .field("parent"),
        bad(
            "ExportService/UpdateExportSchedules",
            "1,001 export names",
            pb::UpdateExportSchedulesRequest {
                parent: ACME.into(),
                names: vec![NIGHTLY.to_string(); 1_001],
                mode: pb::ScheduleUpdateMode::KeepIndividualSchedules as i32,
                ..Default::default()
            },
        )
        .field("names")
        .says("at most 1000 items"),
        bad(
            "ExportService/UpdateExportSchedules",
            "a replacement cron that never matches",
            pb::UpdateExportSchedulesRequest {
                parent: ACME.into(),
                names: vec![NIGHTLY.to_string()],
                mode: pb::ScheduleUpdateMode::ReplaceSchedules as i32,
                schedule: Some(cron_schedule("0 12 31 4 *", "Europe/Paris")),
                enabled: true,
            },
        )
        .field("schedule.cron.expression"),
        bad(
            "ExportService/ListExportRuns",
            "a page token over 512 characters",
            pb::ListExportRunsRequest {
                parent: NIGHTLY.into(),
                page_token: long(513),
                ..Default::default()
            },
        )
        .field("page_token"),
        bad(
            "ExportService/GetExportRun",
            "a name over 256 characters",
            pb::GetExportRunRequest {
                name: format!("{RUN}{}", long(256)),
            },
        )
        .field("name"),
        bad(
            "ExportService/WatchExportRun",
            "a name over 256 characters",
            pb::WatchExportRunRequest {
                name: format!("{RUN}{}", long(256)),
            },
        )
        .field("name"),
        bad(
            "ExportService/CancelExportRun",
            "a NUL in a name",
            pb::CancelExportRunRequest {
                name: format!("{RUN}\0"),
            },
        )
        .field("name"),
        bad(
            "ExportService/PreviewExport",
            "a name over 256 characters",
            pb::PreviewExportRequest {
                name: name_over_256(),
                sample_size: 0,
            },
        )
        .field("name"),
        bad(
            "ExportService/ListRejectedRecords",
            "a parent over 256 characters",
            pb::ListRejectedRecordsRequest {
                parent: format!("{RUN}{}", long(240)),
                ..Default::default()
            },
        )
        .field("parent"),
        bad(
            "ExportService/ListRejectedRecords",
            "a filter over 2,000 characters",
            pb::ListRejectedRecordsRequest {
                parent: NIGHTLY.into(),
                filter: format!("source = \"{}\"", long(2_000)),
                ..Default::default()
            },
        )
        .field("filter"),
        // CatalogService
        bad(
            "CatalogService/GetEnvironment",
            "a name over 256 characters",
            pb::GetEnvironmentRequest { name: name_over_256() },
        )
        .field("name"),
        bad(
            "CatalogService/UpdateEnvironment",
            "a display name over 200 characters",
            pb::UpdateEnvironmentRequest {
                environment: Some(pb::Environment {
                    name: ACME.into(),
                    display_name: long(201),
                    ..Default::default()
                }),
                update_mask: mask(&["display_name"]),
            },
        )
        .field("environment.display_name"),
        bad(
            "CatalogService/UpdateEnvironment",
            "a system refresh cron that never matches",
            pb::UpdateEnvironmentRequest {
                environment: Some(pb::Environment {
                    name: ACME.into(),
                    system_refresh_schedule: Some(cron_schedule("0 0 31 2 *", "UTC")),
                    ..Default::default()
                }),
                update_mask: mask(&["system_refresh_schedule"]),
            },
        )
        .field("environment.system_refresh_schedule.cron.expression")
        .says("never matches"),
        bad(
            "CatalogService/ListEnvironments",
            "a negative page size",
            pb::ListEnvironmentsRequest {
                page_size: -1,
                page_token: String::new(),
            },
        )
        .field("page_size"),
        bad(
            "CatalogService/ListEnvironments",
            "a page token over 512 characters",
            pb::ListEnvironmentsRequest {
                page_size: 0,
                page_token: long(513),
            },
        )
        .field("page_token"),
        bad(
            "CatalogService/CreateEntity",
            "1,001 fields",
            entity_with(|e| e.fields = vec![crate::common::field("f", pb::FieldType::String); 1_001]),
        )
        .field("entity.fields")
        .says("at most 1000 items"),
        bad(
            "CatalogService/CreateEntity",
            "a field description over 500 characters",
            entity_with(|e| e.fields[0].description = long(501)),
        )
        .field("entity.fields[0].description"),
        bad(
            "CatalogService/CreateEntity",
            "a display name over 200 characters",
            entity_with(|e| e.display_name = long(201)),
        )
        .field("entity.display_name"),
        bad(
            "CatalogService/GetEntity",
            "a name over 256 characters",
            pb::GetEntityRequest { name: name_over_256() },
        )
        .field("name"),
        bad(
            "CatalogService/ListEntities",
            "a page token over 512 characters",
            pb::ListEntitiesRequest {
                parent: ACME.into(),
                page_size: 0,
                page_token: long(513),
            },
        )
        .field("page_token"),
        bad(
            "CatalogService/DeleteEntity",
            "a NUL in a name",
            pb::DeleteEntityRequest {
                name: format!("{CUSTOMERS}\0"),
            },
        )
        .field("name"),
        bad(
            "CatalogService/WriteRecords",
            "NaN in a DOUBLE field",
            customer_with("ltv", number(f64::NAN)),
        )
        .field("upserts[0].ltv")
        .says("NaN"),
        bad(
            "CatalogService/WriteRecords",
            "+Infinity in a DOUBLE field",
            customer_with("ltv", number(f64::INFINITY)),
        )
        .field("upserts[0].ltv"),
        bad(
            "CatalogService/WriteRecords",
            "-Infinity inside a JSON field",
            customer_with(
                "tags",
                prost_types::Value {
                    kind: Some(Kind::ListValue(prost_types::ListValue {
                        values: vec![number(f64::NEG_INFINITY)],
                    })),
                },
            ),
        )
        .field("upserts[0].tags"),
        bad(
            "CatalogService/WriteRecords",
            "a NUL in a primary key",
            write(CUSTOMERS, vec![json!({"id": "c\u{0}1"})], &[]),
        )
        .field("upserts[0].id")
        .says("NUL"),
        bad(
            "CatalogService/WriteRecords",
            "a delete key over 512 bytes",
            write(CUSTOMERS, vec![], &[&"é".repeat(257)]),
        )
        .field("deletes[0]")
        .says("at most 512 bytes"),
        bad(
            "CatalogService/WriteRecords",
            "a NUL in a delete key",
            write(CUSTOMERS, vec![], &["c\u{0}"]),
        )
        .field("deletes[0]")
        .says("NUL"),
        bad(
            "CatalogService/WriteRecords",
            "50,001 upserts and deletes",
            pb::WriteRecordsRequest {
                entity: CUSTOMERS.into(),
                upserts: vec![],
                deletes: vec!["c".to_string(); 50_001],
            },
        )
        .field("upserts")
        .says("at most 50000"),
        malformed("CatalogService/WriteRecords", "garbage bytes", vec![0xff; 16]),
        malformed(
            "CatalogService/WriteRecords",
            "a Struct nested 200 levels deep",
            pb::WriteRecordsRequest {
                entity: CUSTOMERS.into(),
                upserts: vec![nested_struct(200)],
                deletes: vec![],
            }
            .encode_to_vec(),
        )
        .says("recursion limit"),
        bad(
            "CatalogService/WriteRecords",
            "a message over the 16 MiB limit",
            pb::WriteRecordsRequest {
                entity: CUSTOMERS.into(),
                upserts: vec![],
                deletes: vec![long(17 << 20)],
            },
        )
        .status(Code::ResourceExhausted, "MESSAGE_TOO_LARGE")
        .says("too large"),
        bad(
            "CatalogService/CreateSegment",
            "a rule over 4,096 characters",
            pb::CreateSegmentRequest {
                parent: ACME.into(),
                segment_id: "new".into(),
                segment: Some(pb::Segment {
                    display_name: "New".into(),
                    entity: CUSTOMERS.into(),
                    definition: Some(pb::segment::Definition::Rule(format!("email == '{}'", long(4_096)))),
                    ..Default::default()
                }),
            },
        )
        .field("segment.rule")
        .says("at most 4096 characters"),
        bad(
            "CatalogService/CreateSegment",
            "a segment id over 63 characters",
            pb::CreateSegmentRequest {
                parent: ACME.into(),
                segment_id: long(64),
                segment: None,
            },
        )
        .field("segment_id"),
        bad(
            "CatalogService/GetSegment",
            "a name over 256 characters",
            pb::GetSegmentRequest { name: name_over_256() },
        )
        .field("name"),
        bad(
            "CatalogService/ListSegments",
            "a negative page size",
            pb::ListSegmentsRequest {
                parent: ACME.into(),
                page_size: -1,
                page_token: String::new(),
            },
        )
        .field("page_size"),
        bad(
            "CatalogService/UpdateSegment",
            "a display name over 200 characters",
            pb::UpdateSegmentRequest {
                segment: Some(pb::Segment {
                    name: VIP.into(),
                    display_name: long(201),
                    ..Default::default()
                }),
                update_mask: mask(&["display_name"]),
            },
        )
        .field("segment.display_name"),
        bad(
            "CatalogService/UpdateEntity",
            "a display name over 200 characters",
            pb::UpdateEntityRequest {
                entity: Some(pb::Entity {
                    name: "environments/acme/entities/customers".into(),
                    display_name: long(201),
                    ..Default::default()
                }),
                update_mask: mask(&["display_name"]),
                validate_only: false,
            },
        )
        .field("entity.display_name"),
        bad(
            "CatalogService/DeleteSegment",
            "a NUL in a name",
            pb::DeleteSegmentRequest {
                name: format!("{VIP}\0"),
            },
        )
        .field("name"),
        bad(
            "CatalogService/SetSegmentMembers",
            "a key over 512 bytes",
            pb::SetSegmentMembersRequest {
                segment: VIP.into(),
                keys: vec![long(513)],
            },
        )
        .field("keys[0]"),
        bad(
            "CatalogService/SetSegmentMembers",
            "a NUL in a key",
            pb::SetSegmentMembersRequest {
                segment: VIP.into(),
                keys: vec!["c0\u{0}".into()],
            },
        )
        .field("keys[0]")
        .says("NUL"),
        bad(
            "CatalogService/SetSegmentMembers",
            "100,001 keys in one message",
            pb::SetSegmentMembersRequest {
                segment: VIP.into(),
                keys: vec!["c0".to_string(); 100_001],
            },
        )
        .field("keys")
        .says("at most 100000 items"),
        malformed("CatalogService/SetSegmentMembers", "garbage bytes", vec![0x0a, 0xff]),
        bad(
            "CatalogService/SetSegmentMembers",
            "a message over the 16 MiB limit",
            pb::SetSegmentMembersRequest {
                segment: VIP.into(),
                keys: vec![long(17 << 20)],
            },
        )
        .status(Code::ResourceExhausted, "MESSAGE_TOO_LARGE"),
        bad(
            "CatalogService/ListEligibleSegments",
            "a setting over 4,096 characters",
            pb::ListEligibleSegmentsRequest {
                connection: FILES.into(),
                settings: [("target".to_string(), long(4_097))].into(),
                ..Default::default()
            },
        )
        .field("settings.target"),
        bad(
            "CatalogService/ListEligibleSegments",
            "65 settings",
            pb::ListEligibleSegmentsRequest {
                connection: FILES.into(),
                settings: entries(65),
                ..Default::default()
            },
        )
        .field("settings"),
        bad(
            "CatalogService/StartRefresh",
            "a name over 256 characters",
            pb::StartRefreshRequest { name: name_over_256() },
        )
        .field("name"),
        bad(
            "CatalogService/CompleteRefresh",
            "a NUL in a name",
            pb::CompleteRefreshRequest {
                name: format!("{CUSTOMERS}\0"),
            },
        )
        .field("name"),
        bad(
            "CatalogService/RunSystemRefresh",
            "a parent over 256 characters",
            pb::RunSystemRefreshRequest {
                parent: name_over_256(),
            },
        )
        .field("parent"),
        bad(
            "CatalogService/GetSystemRefresh",
            "a name over 256 characters",
            pb::GetSystemRefreshRequest { name: name_over_256() },
        )
        .field("name"),
        // AlertService and AuditService (not built: the bounds refuse before any handler)
        bad(
            "AlertService/CreateAlertPolicy",
            "a parent over 256 characters",
            pb::CreateAlertPolicyRequest {
                parent: format!("environments/{}", long(250)),
                ..Default::default()
            },
        )
        .field("parent"),
        bad(
            "AlertService/CreateAlertPolicy",
            "1,001 exports",
            pb::CreateAlertPolicyRequest {
                parent: ACME.into(),
                alert_policy: Some(pb::AlertPolicy {
                    exports: vec![NIGHTLY.to_string(); 1_001],
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .field("alert_policy.exports"),
        bad(
            "AlertService/GetAlertPolicy",
            "a name over 256 characters",
            pb::GetAlertPolicyRequest {
                name: format!("{POLICY}{}", long(240)),
            },
        )
        .field("name"),
        bad(
            "AlertService/ListAlertPolicies",
            "a page token over 512 characters",
            pb::ListAlertPoliciesRequest {
                parent: ACME.into(),
                page_token: long(513),
                ..Default::default()
            },
        )
        .field("page_token"),
        bad(
            "AlertService/UpdateAlertPolicy",
            "a name over 256 characters",
            pb::UpdateAlertPolicyRequest {
                alert_policy: Some(pb::AlertPolicy {
                    name: format!("{POLICY}{}", long(240)),
                    ..Default::default()
                }),
                update_mask: mask(&["enabled"]),
            },
        )
        .field("alert_policy.name"),
        bad(
            "AlertService/DeleteAlertPolicy",
            "an etag over 128 characters",
            pb::DeleteAlertPolicyRequest {
                name: POLICY.into(),
                etag: long(129),
            },
        )
        .field("etag"),
        bad(
            "AlertService/ListAlertEvents",
            "a parent over 256 characters",
            pb::ListAlertEventsRequest {
                parent: format!("{POLICY}{}", long(240)),
                ..Default::default()
            },
        )
        .field("parent"),
        bad(
            "AuditService/ListAuditEvents",
            "an order_by over 2,000 characters",
            pb::ListAuditEventsRequest {
                parent: ACME.into(),
                order_by: long(2_001),
                ..Default::default()
            },
        )
        .field("order_by"),
        // Authentication and metadata
        bad(
            "ConnectionService/GetConnection",
            "a token with an empty `sub`",
            pb::GetConnectionRequest { name: FILES.into() },
        )
        .by(empty_sub)
        .status(Code::Unauthenticated, "INVALID_TOKEN_CLAIMS")
        .says("`sub`"),
        bad(
            "ExportService/ListExports",
            "an authorization header over 16 KiB",
            pb::ListExportsRequest {
                parent: ACME.into(),
                ..Default::default()
            },
        )
        .by(oversized_token)
        .status(Code::Unauthenticated, "TOKEN_TOO_LARGE")
        .says("at most 16384"),
        bad(
            "CatalogService/GetEntity",
            "request metadata over 64 KiB",
            pb::GetEntityRequest { name: CUSTOMERS.into() },
        )
        .by(huge_token)
        .status(Code::ResourceExhausted, "METADATA_TOO_LARGE")
        .says("at most 65536"),
    ]
}

/// Every RPC of exportd's services, as `Service/Rpc`, with whether it streams requests or
/// answers.
fn rpcs() -> Vec<(String, bool, bool)> {
    let set = prost_types::FileDescriptorSet::decode(pb::FILE_DESCRIPTOR_SET).unwrap();
    set.file
        .iter()
        .filter(|f| f.package() == "exportd.v1")
        .flat_map(|f| &f.service)
        .flat_map(|s| {
            s.method.iter().map(move |m| {
                (
                    format!("{}/{}", s.name(), m.name()),
                    m.client_streaming(),
                    m.server_streaming(),
                )
            })
        })
        .collect()
}

/// What the suite can see of the environment, to show that no bad request changed it.
async fn snapshot(t: &TestServer) -> String {
    let mut connections = t.connections("acme", Role::Admin).await;
    let mut exports = t.exports("acme", Role::Admin).await;
    let mut catalog = t.catalog("acme", Role::Admin).await;
    let connections = connections
        .list_connections(pb::ListConnectionsRequest {
            parent: ACME.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let exports_list = exports
        .list_exports(pb::ListExportsRequest {
            parent: ACME.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let runs = exports
        .list_export_runs(pb::ListExportRunsRequest {
            parent: "environments/acme/exports/-".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let entities = catalog
        .list_entities(pb::ListEntitiesRequest {
            parent: ACME.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let segments = catalog
        .list_segments(pb::ListSegmentsRequest {
            parent: ACME.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let environment = catalog
        .get_environment(pb::GetEnvironmentRequest { name: ACME.into() })
        .await
        .unwrap()
        .into_inner();
    let connections: Vec<String> = connections
        .connections
        .iter()
        .map(|c| format!("{} {}", c.name, c.etag))
        .collect();
    let exports: Vec<String> = exports_list
        .exports
        .iter()
        .map(|e| format!("{} {}", e.name, e.etag))
        .collect();
    let entities: Vec<String> = entities
        .entities
        .iter()
        .map(|e| format!("{} {} {}", e.name, e.record_count, e.change_sequence))
        .collect();
    let segments: Vec<String> = segments
        .segments
        .iter()
        .map(|s| format!("{} {} {}", s.name, s.display_name, s.member_count))
        .collect();
    format!(
        "connections {connections:?}\nexports {exports:?}\nruns {}\nentities {entities:?}\nsegments {segments:?}\n\
         environment {} {:?}",
        runs.runs.len(),
        environment.display_name,
        environment.system_refresh_schedule
    )
}

/// The bytes a status takes in trailers.
fn trailer_bytes(status: &tonic::Status) -> usize {
    let mut headers = http::HeaderMap::new();
    status.add_header(&mut headers).unwrap();
    headers.iter().map(|(k, v)| k.as_str().len() + v.len()).sum()
}

async fn send(t: &TestServer, case: &Case, streaming: (bool, bool)) -> Result<(), tonic::Status> {
    let admin = t.token(&[("acme", Role::Admin)]);
    let token = match &case.caller {
        Caller::Admin => admin.as_str(),
        Caller::Token(token) => token.as_str(),
    };
    let method = format!("/exportd.v1.{}", case.method);
    let channel = t.channel().await;
    match streaming {
        (true, _) => raw::client_streaming(channel, Some(token), &method, case.messages.clone())
            .await
            .map(drop),
        (false, true) => raw::server_streaming(channel, Some(token), &method, case.messages[0].clone())
            .await
            .map(drop),
        (false, false) => raw::unary(channel, Some(token), &method, case.messages[0].clone())
            .await
            .map(drop),
    }
}

#[tokio::test]
async fn every_bad_input_gets_its_precise_status_and_changes_nothing() {
    let t = acme().await;
    let mut exports = t.exports("acme", Role::Admin).await;
    exports
        .create_export(data_out("acme", "nightly", "Nightly", "files", &[CUSTOMERS]))
        .await
        .unwrap();
    let before = snapshot(&t).await;
    let rpcs = rpcs();
    let cases = corpus(&t);

    let untested: Vec<&String> = rpcs
        .iter()
        .map(|(rpc, _, _)| rpc)
        .filter(|rpc| !cases.iter().any(|c| c.method == rpc.as_str()))
        .collect();
    assert!(untested.is_empty(), "RPCs without a bad-input case: {untested:?}");

    let mut failures = Vec::new();
    for case in &cases {
        let (_, client_streaming, server_streaming) = rpcs
            .iter()
            .find(|(rpc, _, _)| rpc == case.method)
            .unwrap_or_else(|| panic!("{} is not an RPC", case.method));
        let label = format!("{} with {}", case.method, case.what);
        let status = match send(&t, case, (*client_streaming, *server_streaming)).await {
            Ok(()) => {
                failures.push(format!("{label}: accepted"));
                continue;
            }
            Err(status) => status,
        };
        let details = status.get_error_details();
        let mut problems = Vec::new();
        if status.code() != case.code {
            problems.push(format!("code {:?}, expected {:?}", status.code(), case.code));
        }
        match details.error_info() {
            None => problems.push("no ErrorInfo".to_string()),
            Some(info) => {
                if info.reason != case.reason || info.domain != "exportd.v1" {
                    problems.push(format!(
                        "reason {} ({}), expected {}",
                        info.reason, info.domain, case.reason
                    ));
                }
            }
        }
        if let Some(field) = case.field
            && !bad_fields(&status).iter().any(|f| f == field)
        {
            problems.push(format!("fields {:?}, expected {field}", bad_fields(&status)));
        }
        if !status.message().contains(case.says) {
            problems.push(format!("message does not say {:?}", case.says));
        }
        if trailer_bytes(&status) > C_CORE_SOFT_LIMIT {
            problems.push(format!("{} bytes of trailers", trailer_bytes(&status)));
        }
        if !problems.is_empty() {
            failures.push(format!(
                "{label}: {} — got {:?}: {}",
                problems.join("; "),
                status.code(),
                status.message()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );

    assert_eq!(snapshot(&t).await, before, "a refused request changed something");
    t.stop().await;
}

/// A refused request must not break the connection it came on: the next call on the same
/// channel works (an oversized header used to end the whole HTTP/2 connection).
#[tokio::test]
async fn refused_requests_leave_the_connection_usable() {
    let t = TestServer::start().await;
    let token = t.token(&[("acme", Role::Admin)]);
    let channel = t.channel().await;
    let list = pb::ListConnectionsRequest {
        parent: ACME.into(),
        ..Default::default()
    }
    .encode_to_vec();
    let method = "/exportd.v1.ConnectionService/ListConnections";
    for bad_token in [
        format!("{token}{}", long(20 << 10)),
        format!("{token}{}", long(500 << 10)),
    ] {
        let status = raw::unary(channel.clone(), Some(&bad_token), method, list.clone())
            .await
            .unwrap_err();
        assert!(
            matches!(status.code(), Code::Unauthenticated | Code::ResourceExhausted),
            "{status:?}"
        );
        reason(&status);
        raw::unary(channel.clone(), Some(&token), method, list.clone())
            .await
            .expect("the same connection still answers");
    }
    let status = raw::unary(channel.clone(), Some(&token), method, vec![0xff; 4])
        .await
        .unwrap_err();
    assert_eq!(reason(&status), "MALFORMED_MESSAGE");
    raw::unary(channel, Some(&token), method, list)
        .await
        .expect("the same connection still answers");
    t.stop().await;
}

/// The operator's way to set a system refresh schedule refuses what the API refuses.
#[tokio::test]
async fn the_cli_refuses_a_system_refresh_cron_that_never_matches() {
    let t = TestServer::start().await;
    let mut catalog = t.catalog("acme", Role::Admin).await;
    let get = pb::GetEnvironmentRequest { name: ACME.into() };
    let before = catalog.get_environment(get.clone()).await.unwrap().into_inner();
    let data_dir = t.data_dir.path().to_str().unwrap().to_string();
    let envs = [("EXPORTD_DATABASE_URL", t.database_url.as_str())];
    let (code, _, err) = crate::common::run(
        &[
            "environment",
            "update",
            "acme",
            "--system-refresh-cron",
            "0 0 31 2 *",
            "--time-zone",
            "UTC",
            "--data-dir",
            &data_dir,
        ],
        &envs,
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("cron.expression") && err.contains("never matches"),
        "{err}"
    );
    let after = catalog.get_environment(get).await.unwrap().into_inner();
    assert_eq!(after, before, "nothing was stored");
    t.stop().await;
}

/// A stream message over the size limit ends the stream with RESOURCE_EXHAUSTED (it used to be
/// CANCELLED), saying how many earlier messages were committed; those stay.
#[tokio::test]
async fn a_stream_message_over_the_limit_ends_the_stream_saying_what_was_committed() {
    let t = acme().await;
    let token = t.token(&[("acme", Role::Admin)]);
    let messages = vec![
        write(CUSTOMERS, vec![json!({"id": "c42", "email": "new@example.com"})], &[]).encode_to_vec(),
        write(CUSTOMERS, vec![], &[&long(17 << 20)]).encode_to_vec(),
    ];
    let status = raw::client_streaming(
        t.channel().await,
        Some(&token),
        "/exportd.v1.CatalogService/WriteRecords",
        messages,
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(reason(&status), "MESSAGE_TOO_LARGE");
    let details = status.get_error_details();
    assert_eq!(details.error_info().unwrap().metadata["committed_messages"], "1");
    let mut catalog = t.catalog("acme", Role::Admin).await;
    let entity = catalog
        .get_entity(pb::GetEntityRequest { name: CUSTOMERS.into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(entity.record_count, 11, "the first message was committed");
    t.stop().await;
}

/// A token whose `roles` name something that is no environment id (here with a NUL, which
/// PostgreSQL cannot compare) lists the environments it does name, alike on both databases.
#[tokio::test]
async fn roles_that_are_not_environment_ids_are_ignored() {
    let t = TestServer::start().await;
    let roles = [
        ("acme".to_string(), Role::Viewer),
        ("glo\0bex".to_string(), Role::Admin),
    ]
    .into();
    let token =
        exportd::auth::jwt::sign_hs256(HS_SECRET.as_bytes(), "tester", &roles, Duration::from_secs(600)).unwrap();
    let mut catalog = t.catalog_with(Some(token)).await;
    let listed = catalog
        .list_environments(pb::ListEnvironmentsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let names: Vec<String> = listed.environments.into_iter().map(|e| e.name).collect();
    assert_eq!(names, ["environments/acme"]);
    t.stop().await;
}
