//! Export fixtures: names, connection and export requests, and the `acme` environment with its
//! entity, segments and connections.

use exportd::auth::Role;
use exportd::pb;
use tonic_types::StatusExt;

use super::*;

pub fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

pub fn pairs(items: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    items.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

pub const ACME: &str = "environments/acme";

pub const VIP: &str = "environments/acme/segments/vip";

pub const FRANCE: &str = "environments/acme/segments/france";

pub fn mask(paths: &[&str]) -> Option<prost_types::FieldMask> {
    Some(prost_types::FieldMask {
        paths: paths.iter().map(|p| p.to_string()).collect(),
    })
}

/// A connection of any type.
pub fn connection(
    env: &str,
    id: &str,
    display_name: &str,
    r#type: &str,
    config: &[(&str, &str)],
    secrets: &[(&str, &str)],
    shared: bool,
) -> pb::CreateConnectionRequest {
    pb::CreateConnectionRequest {
        parent: format!("environments/{env}"),
        connection_id: id.into(),
        connection: Some(pb::Connection {
            display_name: display_name.into(),
            r#type: r#type.into(),
            config: pairs(config),
            secrets: pairs(secrets),
            contributors_can_use: shared,
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn mailchimp(env: &str, id: &str, display_name: &str, shared: bool) -> pb::CreateConnectionRequest {
    connection(
        env,
        id,
        display_name,
        "mailchimp",
        &[("server_prefix", "us1"), ("audience_id", "list1")],
        &[("api_key", "key-us1")],
        shared,
    )
}

pub fn conn_name(env: &str, id: &str) -> String {
    format!("environments/{env}/connections/{id}")
}

/// A DATA_OUT export of entities (full names) over a connection (its id).
pub fn data_out(
    env: &str,
    id: &str,
    display_name: &str,
    connection: &str,
    entities: &[&str],
) -> pb::CreateExportRequest {
    pb::CreateExportRequest {
        parent: format!("environments/{env}"),
        export_id: id.into(),
        export: Some(pb::Export {
            display_name: display_name.into(),
            connection: conn_name(env, connection),
            kind: pb::ExportKind::DataOut as i32,
            entities: strings(entities),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A SEGMENT export of segments (full names) with `source → target` mappings.
pub fn segment_export(
    env: &str,
    id: &str,
    display_name: &str,
    connection: &str,
    segments: &[&str],
    mappings: &[(&str, &str)],
) -> pb::CreateExportRequest {
    pb::CreateExportRequest {
        parent: format!("environments/{env}"),
        export_id: id.into(),
        export: Some(pb::Export {
            display_name: display_name.into(),
            connection: conn_name(env, connection),
            kind: pb::ExportKind::Segment as i32,
            segments: strings(segments),
            field_mappings: mappings
                .iter()
                .map(|(s, t)| pb::FieldMapping {
                    source_field: s.to_string(),
                    target_field: t.to_string(),
                })
                .collect(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn export_name(env: &str, id: &str) -> String {
    format!("environments/{env}/exports/{id}")
}

/// acme (B-to-C): the customers entity with ten records, the rule segments `vip` (5 members)
/// and `france` (3 members), and connections: `files` (local files, shared), `private`
/// (local files, not shared), `mc` (Mailchimp, shared).
pub async fn acme() -> TestServer {
    let t = TestServer::start().await;
    let mut catalog = t.catalog("acme", Role::Admin).await;
    catalog
        .create_entity(customers_entity("acme", "customers", pb::EntityKind::Profile))
        .await
        .unwrap();
    catalog
        .write_records(tokio_stream::iter(vec![write(CUSTOMERS, ten_customers(), &[])]))
        .await
        .unwrap();
    let vip = create_rule_segment(&mut catalog, "acme", "vip", "customers", "vip == true")
        .await
        .unwrap();
    assert_eq!(vip.member_count, 5);
    let france = create_rule_segment(&mut catalog, "acme", "france", "customers", "country == \"FR\"")
        .await
        .unwrap();
    assert_eq!(france.member_count, 3);
    let mut connections = t.connections("acme", Role::Admin).await;
    connections
        .create_connection(local_files("acme", "files", "Files", true))
        .await
        .unwrap();
    connections
        .create_connection(local_files("acme", "private", "Private files", false))
        .await
        .unwrap();
    connections
        .create_connection(mailchimp("acme", "mc", "Mailchimp list", true))
        .await
        .unwrap();
    t
}

pub fn precondition_subjects(status: &tonic::Status) -> Vec<String> {
    status
        .get_error_details()
        .precondition_failure()
        .map(|p| p.violations.iter().map(|v| v.subject.clone()).collect())
        .unwrap_or_default()
}
