//! Catalog fixtures: the `customers` entity, its ten records, segments and their members.

use std::time::Duration;

use exportd::pb;
use prost_types::value::Kind;
use serde_json::json;

use super::*;

/// A protobuf Struct from a JSON object.
pub fn record(value: serde_json::Value) -> prost_types::Struct {
    fn convert(value: serde_json::Value) -> prost_types::Value {
        let kind = match value {
            serde_json::Value::Null => Kind::NullValue(0),
            serde_json::Value::Bool(b) => Kind::BoolValue(b),
            serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap()),
            serde_json::Value::String(s) => Kind::StringValue(s),
            serde_json::Value::Array(a) => Kind::ListValue(prost_types::ListValue {
                values: a.into_iter().map(convert).collect(),
            }),
            serde_json::Value::Object(o) => Kind::StructValue(prost_types::Struct {
                fields: o.into_iter().map(|(k, v)| (k, convert(v))).collect(),
            }),
        };
        prost_types::Value { kind: Some(kind) }
    }
    match convert(value) {
        prost_types::Value {
            kind: Some(Kind::StructValue(s)),
        } => s,
        _ => panic!("records are objects"),
    }
}

pub fn field(name: &str, ty: pb::FieldType) -> pb::EntityField {
    pb::EntityField {
        name: name.into(),
        r#type: ty as i32,
        description: format!("the {name}"),
        mapping: format!("crm.{name}"),
    }
}

/// A customers entity: id (STRING key), email, country, ltv, vip, tags (JSON).
pub fn customers_entity(env: &str, id: &str, kind: pb::EntityKind) -> pb::CreateEntityRequest {
    pb::CreateEntityRequest {
        parent: format!("environments/{env}"),
        entity_id: id.into(),
        entity: Some(pb::Entity {
            display_name: format!("Entity {id}"),
            kind: kind as i32,
            fields: vec![
                field("id", pb::FieldType::String),
                field("email", pb::FieldType::String),
                field("country", pb::FieldType::String),
                field("ltv", pb::FieldType::Double),
                field("vip", pb::FieldType::Bool),
                field("tags", pb::FieldType::Json),
            ],
            primary_key: "id".into(),
            ..Default::default()
        }),
    }
}

pub fn write(entity: &str, upserts: Vec<serde_json::Value>, deletes: &[&str]) -> pb::WriteRecordsRequest {
    pb::WriteRecordsRequest {
        entity: entity.into(),
        upserts: upserts.into_iter().map(record).collect(),
        deletes: deletes.iter().map(|s| s.to_string()).collect(),
    }
}

pub async fn write_all(
    catalog: &mut Catalog,
    messages: Vec<pb::WriteRecordsRequest>,
) -> Result<pb::WriteRecordsResponse, tonic::Status> {
    catalog
        .write_records(tokio_stream::iter(messages))
        .await
        .map(|r| r.into_inner())
}

/// Ten customers c00…c09 with varied fields.
pub fn ten_customers() -> Vec<serde_json::Value> {
    (0..10)
        .map(|i| {
            let country = ["ID", "SG", "FR"][i % 3];
            json!({
                "id": format!("c{i:02}"),
                "email": format!("user{i}@example.com"),
                "country": country,
                "ltv": (i * 100) as f64,
                "vip": i % 2 == 0,
                "tags": if i < 3 { json!(["new"]) } else { json!(["loyal"]) },
            })
        })
        .collect()
}

pub async fn create_rule_segment(
    catalog: &mut Catalog,
    env: &str,
    id: &str,
    entity: &str,
    rule: &str,
) -> Result<pb::Segment, tonic::Status> {
    catalog
        .create_segment(pb::CreateSegmentRequest {
            parent: format!("environments/{env}"),
            segment_id: id.into(),
            segment: Some(pb::Segment {
                display_name: format!("Segment {id}"),
                entity: format!("environments/{env}/entities/{entity}"),
                definition: Some(pb::segment::Definition::Rule(rule.into())),
                ..Default::default()
            }),
        })
        .await
        .map(|r| r.into_inner())
}

pub async fn create_pushed_segment(
    catalog: &mut Catalog,
    env: &str,
    id: &str,
    entity: &str,
    display_name: &str,
) -> pb::Segment {
    catalog
        .create_segment(pb::CreateSegmentRequest {
            parent: format!("environments/{env}"),
            segment_id: id.into(),
            segment: Some(pb::Segment {
                display_name: display_name.into(),
                entity: format!("environments/{env}/entities/{entity}"),
                definition: Some(pb::segment::Definition::Members(pb::PushedMembers {})),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
}

pub async fn set_members(
    catalog: &mut Catalog,
    segment: &str,
    batches: Vec<Vec<String>>,
) -> Result<pb::Segment, tonic::Status> {
    let messages: Vec<pb::SetSegmentMembersRequest> = batches
        .into_iter()
        .map(|keys| pb::SetSegmentMembersRequest {
            segment: segment.into(),
            keys,
        })
        .collect();
    catalog
        .set_segment_members(tokio_stream::iter(messages))
        .await
        .map(|r| r.into_inner())
}

pub const CUSTOMERS: &str = "environments/acme/entities/customers";

/// Observes a system refresh until it leaves RUNNING (bounded; the refresh itself is quick).
pub async fn wait_for_system_refresh(catalog: &mut Catalog, name: &str) -> pb::SystemRefresh {
    eventually(
        Duration::from_secs(30),
        format_args!("system refresh {name} finishing"),
        async || {
            let refresh = catalog
                .get_system_refresh(pb::GetSystemRefreshRequest { name: name.into() })
                .await
                .unwrap()
                .into_inner();
            if refresh.state != pb::SystemRefreshState::Running as i32 {
                Ok(refresh)
            } else {
                Err("RUNNING".to_string())
            }
        },
    )
    .await
}
