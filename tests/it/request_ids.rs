//! Identical retries with a `request_id` return the first result, however the client orders
//! the entries of map fields on the wire (each retry here sends them in another order).

use exportd::auth::Role;
use exportd::pb;
use prost::Message;

use crate::common::raw;
use crate::common::*;

const RETRIES: usize = 50;

/// The `i`-th order of `entries`: rotated by `i`, and reversed for odd `i`.
fn order<T: Clone>(entries: &[T], i: usize) -> Vec<T> {
    let mut ordered = entries.to_vec();
    ordered.rotate_left(i % entries.len());
    if i % 2 == 1 {
        ordered.reverse();
    }
    ordered
}

/// `base` followed by one message per map entry: protobuf merges repeated sub-messages, so
/// the server decodes the same request, with the entries arriving in the order given.
fn encode_in_order<M: Message>(base: &M, entries: impl IntoIterator<Item = M>) -> Vec<u8> {
    let mut bytes = base.encode_to_vec();
    for entry in entries {
        bytes.extend(entry.encode_to_vec());
    }
    bytes
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[tokio::test]
async fn fifty_identical_create_connection_retries_return_the_first_connection() {
    let t = TestServer::start().await;
    let token = t.token(&[("acme", Role::Admin)]);
    let base = pb::CreateConnectionRequest {
        parent: ACME.into(),
        request_id: "0f3e8d2a-5b1c-4e7f-9a6d-3c2b1a0f9e8d".into(),
        connection: Some(pb::Connection {
            display_name: "Data lake".into(),
            r#type: "s3".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let config = pairs(&[
        ("bucket", "exports"),
        ("region", "eu-west-1"),
        ("endpoint", "https://s3.example.com"),
        ("prefix", "cdp/out"),
    ]);
    let secrets = pairs(&[("access_key_id", "AKIAEXAMPLE"), ("secret_access_key", "s3cr3t")]);
    let entry = |config: Option<&(String, String)>, secret: Option<&(String, String)>| pb::CreateConnectionRequest {
        connection: Some(pb::Connection {
            config: config.cloned().into_iter().collect(),
            secrets: secret.cloned().into_iter().collect(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut names = Vec::new();
    for i in 0..RETRIES {
        let entries = order(&config, i)
            .iter()
            .map(|c| entry(Some(c), None))
            .chain(order(&secrets, i).iter().map(|s| entry(None, Some(s))))
            .collect::<Vec<_>>();
        let body = encode_in_order(&base, entries);
        let answer = raw::unary(
            t.channel().await,
            Some(&token),
            "/exportd.v1.ConnectionService/CreateConnection",
            body,
        )
        .await
        .unwrap_or_else(|s| panic!("retry {i}: {s:?}"));
        let connection = pb::Connection::decode(answer.as_slice()).unwrap();
        assert_eq!(connection.config.len(), 4, "retry {i}: {connection:?}");
        names.push(connection.name);
    }
    assert!(names.iter().all(|n| n == &names[0]), "{names:?}");
    let mut admin = t.connections("acme", Role::Admin).await;
    let listed = admin
        .list_connections(pb::ListConnectionsRequest {
            parent: ACME.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.connections.len(), 1);
    t.stop().await;
}

#[tokio::test]
async fn fifty_identical_create_export_retries_return_the_first_export() {
    let t = acme().await;
    let token = t.token(&[("acme", Role::Admin)]);
    let mut base = data_out("acme", "", "Nightly", "files", &[CUSTOMERS]);
    base.request_id = "4b7a1c9e-2d3f-4a5b-8c6d-7e8f9a0b1c2d".into();
    let settings = pairs(&[
        ("folder", "nightly"),
        ("delimiter", ";"),
        ("compression", "gzip"),
        ("max_rows_per_file", "5000"),
    ]);
    let mut names = Vec::new();
    for i in 0..RETRIES {
        let entries = order(&settings, i).into_iter().map(|setting| pb::CreateExportRequest {
            export: Some(pb::Export {
                settings: [setting].into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        let body = encode_in_order(&base, entries);
        let answer = raw::unary(
            t.channel().await,
            Some(&token),
            "/exportd.v1.ExportService/CreateExport",
            body,
        )
        .await
        .unwrap_or_else(|s| panic!("retry {i}: {s:?}"));
        let export = pb::Export::decode(answer.as_slice()).unwrap();
        assert_eq!(export.settings.len(), 4, "retry {i}: {export:?}");
        names.push(export.name);
    }
    assert!(names.iter().all(|n| n == &names[0]), "{names:?}");
    let mut exports = t.exports("acme", Role::Admin).await;
    let listed = exports
        .list_exports(pb::ListExportsRequest {
            parent: ACME.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.exports.len(), 1);
    t.stop().await;
}

#[tokio::test]
async fn fifty_identical_run_export_retries_return_the_first_run() {
    let t = acme().await;
    let mut exports = t.exports("acme", Role::Admin).await;
    let export = exports
        .create_export(data_out("acme", "nightly", "Nightly", "files", &[CUSTOMERS]))
        .await
        .unwrap()
        .into_inner();
    let request = pb::RunExportRequest {
        name: export.name.clone(),
        request_id: "9c8b7a6f-5e4d-4c3b-2a1f-0e9d8c7b6a5f".into(),
    };
    let mut names = Vec::new();
    for i in 0..RETRIES {
        let run = exports
            .run_export(request.clone())
            .await
            .unwrap_or_else(|s| panic!("retry {i}: {s:?}"))
            .into_inner();
        names.push(run.name);
    }
    assert!(names.iter().all(|n| n == &names[0]), "{names:?}");
    let runs = exports
        .list_export_runs(pb::ListExportRunsRequest {
            parent: export.name.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(runs.runs.len(), 1, "{:?}", runs.runs);
    wait_for_end(&mut exports, &names[0]).await;
    t.stop().await;
}
