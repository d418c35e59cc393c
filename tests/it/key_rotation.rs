//! Sealing-key rotation as an operator does it (PRODUCT.md §16, README "Operations"): add a new
//! key and make it current, run `exportd secrets reseal` (while a server runs), then remove
//! the old key. Secrets open before and after; without the reseal the old key is still needed.

use std::collections::BTreeMap;

use base64::Engine as _;
use exportd::pb;
use tonic::Code;

use crate::common::*;

const K1: [u8; 32] = [1u8; 32];
const K2: [u8; 32] = [2u8; 32];

fn key(kid: &str, bytes: [u8; 32]) -> String {
    format!("{kid}:{}", base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// Server and CLI settings with these sealing keys (the first one current).
fn envs(database_url: &str, keys: &[(&str, [u8; 32])]) -> Vec<(&'static str, String)> {
    vec![
        ("EXPORTD_DATABASE_URL", database_url.to_string()),
        ("EXPORTD_JWT_HS256_SECRET", HS_SECRET.to_string()),
        (
            "EXPORTD_SEALING_KEYS",
            keys.iter().map(|(kid, k)| key(kid, *k)).collect::<Vec<_>>().join(","),
        ),
        ("EXPORTD_SEALING_KEY_ID", keys[0].0.to_string()),
    ]
}

fn secrets_of(n: u32) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("access_key_id".to_string(), format!("AKIA-ROTATION-{n}")),
        (
            "secret_access_key".to_string(),
            format!("very-secret-rotation-value-{n}"),
        ),
    ])
}

fn s3(id: &str, n: u32) -> pb::CreateConnectionRequest {
    pb::CreateConnectionRequest {
        parent: "environments/acme".into(),
        connection_id: id.into(),
        connection: Some(pb::Connection {
            display_name: id.into(),
            r#type: "s3".into(),
            config: [("bucket", "exports"), ("region", "eu-west-1")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            secrets: secrets_of(n).into_iter().collect(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Changes one secret of a connection: the server opens the others to keep them.
fn change_one_secret(id: &str) -> pb::UpdateConnectionRequest {
    pb::UpdateConnectionRequest {
        connection: Some(pb::Connection {
            name: format!("environments/acme/connections/{id}"),
            secrets: [("access_key_id".to_string(), format!("AKIA-CHANGED-{id}"))].into(),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["secrets.access_key_id".into()],
        }),
    }
}

fn reseal(dir: &std::path::Path, envs: &[(&'static str, String)]) -> (i32, String, String) {
    run(
        &["secrets", "reseal", "--data-dir", dir.to_str().unwrap()],
        &borrowed(envs),
    )
}

fn assert_no_secret_values(text: &str) {
    assert!(
        !text.contains("very-secret-rotation-value") && !text.contains("AKIA-ROTATION"),
        "a secret value leaked: {text}"
    );
}

#[tokio::test]
async fn secrets_open_before_and_after_a_reseal_and_the_old_key_can_then_be_removed() {
    let dir = tempfile::tempdir().unwrap();
    let database_url = fresh_database_url(dir.path()).await;
    let old_only = envs(&database_url, &[("k1", K1)]);
    let both = envs(&database_url, &[("k2", K2), ("k1", K1)]);
    let new_only = envs(&database_url, &[("k2", K2)]);
    create_environment(dir.path(), &old_only, "acme");

    // Secrets sealed with k1.
    let server = ServeProcess::start(dir.path(), &[], &borrowed(&old_only));
    let (_, mut connections, _) = clients(&server.addr, "acme").await;
    connections.create_connection(s3("a", 1)).await.unwrap();
    connections.create_connection(s3("b", 2)).await.unwrap();
    connections
        .create_connection(local_files("acme", "files", "Files", false))
        .await
        .unwrap();
    drop(server);

    // Without k1 they cannot be opened, and the reseal says which and why.
    let (code, out, err) = reseal(dir.path(), &new_only);
    assert_ne!(code, 0, "{out}");
    assert!(
        err.contains("environments/acme/connections/a: sealed with key 'k1', which is not configured"),
        "{err}"
    );
    assert!(out.contains("resealed 0 connection secrets"), "{out}");
    assert_no_secret_values(&format!("{out}{err}"));
    let server = ServeProcess::start(dir.path(), &[], &borrowed(&new_only));
    let (_, mut connections, _) = clients(&server.addr, "acme").await;
    let status = expect_code(
        connections.update_connection(change_one_secret("a")).await,
        Code::FailedPrecondition,
    );
    assert_eq!(reason(&status), "SEALING_KEY_MISSING");
    drop(server);

    // k2 added and made current; a new connection is sealed with it; reseal while serving.
    let server = ServeProcess::start(dir.path(), &[], &borrowed(&both));
    let (_, mut connections, _) = clients(&server.addr, "acme").await;
    connections.create_connection(s3("d", 4)).await.unwrap();
    let (code, out, err) = reseal(dir.path(), &both);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.trim(),
        "resealed 2 connection secrets with key 'k2'; 1 already used it"
    );
    // Idempotent.
    let (code, out, err) = reseal(dir.path(), &both);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.trim(),
        "resealed 0 connection secrets with key 'k2'; 3 already used it"
    );
    // The server that ran during the reseal still opens them.
    connections.update_connection(change_one_secret("d")).await.unwrap();
    assert_no_secret_values(&server.logs());
    drop(server);

    // k1 removed: every secret still opens, with its value.
    let server = ServeProcess::start(dir.path(), &[], &borrowed(&new_only));
    let (_, mut connections, _) = clients(&server.addr, "acme").await;
    for id in ["a", "b", "d"] {
        connections
            .update_connection(change_one_secret(id))
            .await
            .unwrap_or_else(|s| panic!("{id}: {s:?}"));
    }
    drop(server);
    // What a connector is handed: the values as they were given, with the one changed.
    let sealer = exportd::store::Sealer::new(BTreeMap::from([("k2".to_string(), K2)]), "k2".into()).unwrap();
    let store = exportd::store::Store::open(&database_url, sealer, 0).await.unwrap();
    let name = exportd::domain::names::ConnectionName::new("acme", "b");
    let mut expected = secrets_of(2);
    expected.insert("access_key_id".into(), "AKIA-CHANGED-b".into());
    assert_eq!(store.connection_secrets(&name).await.unwrap(), expected);
    store.close().await;
}
