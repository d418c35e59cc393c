//! Authentication at the edge: every RPC but health and reflection needs a valid token.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use exportd::auth::Role;
use exportd::pb;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use tonic::Code;

use crate::common::*;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keys");

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn claims(extra: serde_json::Value) -> serde_json::Value {
    let mut base = json!({"sub": "alice", "exp": now() + 600, "roles": {"acme": "admin"}});
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            base.as_object_mut().unwrap().remove(k);
        } else {
            base[k] = v.clone();
        }
    }
    base
}

fn hs256(secret: &str, claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()).unwrap(),
    )
    .unwrap()
}

fn signed(algorithm: Algorithm, key_file: &str, kid: Option<&str>, claims: &serde_json::Value) -> String {
    let pem = std::fs::read(format!("{FIXTURES}/{key_file}")).unwrap();
    let key = match algorithm {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem).unwrap(),
        _ => unreachable!(),
    };
    let mut header = Header::new(algorithm);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

async fn list_with(
    t: &TestServer,
    token: Option<String>,
) -> Result<tonic::Response<pb::ListConnectionTypesResponse>, tonic::Status> {
    t.connections_with(token)
        .await
        .list_connection_types(pb::ListConnectionTypesRequest {})
        .await
}

#[tokio::test]
async fn bad_tokens_are_unauthenticated_with_a_reason() {
    let t = TestServer::start().await;
    let unsigned_header = B64.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = B64.encode(claims(json!({})).to_string());
    let cases: Vec<(Option<String>, &str)> = vec![
        (None, "MISSING_TOKEN"),
        (Some("not-a-jwt".into()), "INVALID_TOKEN"),
        (Some(format!("{unsigned_header}.{payload}.")), "INVALID_TOKEN"),
        (
            Some(hs256("another-secret-another-secret-0123456789", &claims(json!({})))),
            "INVALID_TOKEN_SIGNATURE",
        ),
        (
            Some(hs256(HS_SECRET, &claims(json!({"exp": now() - 3600})))),
            "TOKEN_EXPIRED",
        ),
        (
            Some(hs256(HS_SECRET, &claims(json!({"exp": null})))),
            "INVALID_TOKEN_CLAIMS",
        ),
        (
            Some(hs256(HS_SECRET, &claims(json!({"nbf": now() + 3600})))),
            "TOKEN_NOT_YET_VALID",
        ),
        (
            Some(hs256(HS_SECRET, &claims(json!({"roles": {"acme": "owner"}})))),
            "INVALID_TOKEN_CLAIMS",
        ),
        // An RS256 token when no RSA key is configured.
        (
            Some(signed(Algorithm::RS256, "rsa-test.key", None, &claims(json!({})))),
            "UNKNOWN_SIGNING_KEY",
        ),
    ];
    for (token, expected) in cases {
        let status = expect_code(list_with(&t, token.clone()).await, Code::Unauthenticated);
        assert_eq!(reason(&status), expected, "{token:?}");
        if let Some(token) = token {
            assert!(!status.message().contains(&token));
        }
    }
    assert!(list_with(&t, Some(hs256(HS_SECRET, &claims(json!({}))))).await.is_ok());
    t.stop().await;
}

#[tokio::test]
async fn issuer_and_audience_are_enforced_when_configured() {
    let t = TestServer::start_with(
        Options::default()
            .var("EXPORTD_JWT_ISSUER", "https://idp.example")
            .var("EXPORTD_JWT_AUDIENCE", "exportd"),
    )
    .await;
    let good = claims(json!({"iss": "https://idp.example", "aud": "exportd"}));
    assert!(list_with(&t, Some(hs256(HS_SECRET, &good))).await.is_ok());
    for (bad, expected) in [
        (
            claims(json!({"iss": "https://evil.example", "aud": "exportd"})),
            "INVALID_TOKEN_ISSUER",
        ),
        (
            claims(json!({"iss": "https://idp.example", "aud": "other"})),
            "INVALID_TOKEN_AUDIENCE",
        ),
        (claims(json!({"aud": "exportd"})), "INVALID_TOKEN_CLAIMS"),
    ] {
        let status = expect_code(list_with(&t, Some(hs256(HS_SECRET, &bad))).await, Code::Unauthenticated);
        assert_eq!(reason(&status), expected);
    }
    t.stop().await;
}

#[tokio::test]
async fn public_keys_from_pem_files_and_jwks_are_chosen_by_kid() {
    // The JWKS holds the RSA key under kid "rsa-jwks"; PEM files name their kid by file stem.
    let rsa_private = std::fs::read(format!("{FIXTURES}/rsa-test.key")).unwrap();
    let mut jwk =
        jsonwebtoken::jwk::Jwk::from_encoding_key(&EncodingKey::from_rsa_pem(&rsa_private).unwrap(), Algorithm::RS256)
            .unwrap();
    jwk.common.key_id = Some("rsa-jwks".into());
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, serde_json::to_string(&json!({"keys": [jwk]})).unwrap()).unwrap();
    let options = Options::default()
        .var(
            "EXPORTD_JWT_PUBLIC_KEY_FILES",
            format!("{FIXTURES}/ec-test.pem,{FIXTURES}/ed-test.pem"),
        )
        .var("EXPORTD_JWT_JWKS_FILE", jwks.display().to_string());
    let t = TestServer::start_with(options).await;
    let c = claims(json!({}));
    for token in [
        signed(Algorithm::RS256, "rsa-test.key", Some("rsa-jwks"), &c),
        signed(Algorithm::ES256, "ec-test.key", Some("ec-test"), &c),
        signed(Algorithm::EdDSA, "ed-test.key", Some("ed-test"), &c),
    ] {
        assert!(list_with(&t, Some(token)).await.is_ok());
    }
    // The right key under the wrong kid, and an unknown kid, are refused.
    for token in [
        signed(Algorithm::ES256, "ec-test.key", Some("ed-test"), &c),
        signed(Algorithm::RS256, "rsa-test.key", Some("nope"), &c),
    ] {
        let status = expect_code(list_with(&t, Some(token)).await, Code::Unauthenticated);
        assert_eq!(reason(&status), "UNKNOWN_SIGNING_KEY");
    }
    t.stop().await;
}

/// API.md: list settings are comma-separated strings, and a TOML array also works — in the
/// config file as in `EXPORTD_*` variables.
#[tokio::test]
async fn list_settings_in_the_config_file_take_both_forms() {
    let key = |byte: u8| base64::engine::general_purpose::STANDARD.encode([byte; 32]);
    let dir = tempfile::tempdir().unwrap();
    let forms = [
        format!(
            "sealing_keys = \"k1:{},k2:{}\"\njwt_public_key_files = \"{FIXTURES}/ec-test.pem, {FIXTURES}/ed-test.pem\"\n",
            key(1),
            key(2)
        ),
        format!(
            "sealing_keys = [\"k1:{}\", \"k2:{}\"]\njwt_public_key_files = [\"{FIXTURES}/ec-test.pem\", \"{FIXTURES}/ed-test.pem\"]\n",
            key(1),
            key(2)
        ),
    ];
    for (i, form) in forms.iter().enumerate() {
        let file = dir.path().join(format!("exportd-{i}.toml"));
        // `sealing_key_id` names the second key: the list must have been read as two keys.
        std::fs::write(&file, format!("{form}sealing_key_id = \"k2\"\n")).unwrap();
        let options = Options::default()
            .without("EXPORTD_SEALING_KEYS")
            .var("EXPORTD_CONFIG", file.display().to_string());
        let t = TestServer::start_with(options).await;
        let c = claims(json!({}));
        for token in [
            signed(Algorithm::ES256, "ec-test.key", Some("ec-test"), &c),
            signed(Algorithm::EdDSA, "ed-test.key", Some("ed-test"), &c),
        ] {
            assert!(list_with(&t, Some(token)).await.is_ok(), "{form}");
        }
        // Secrets are sealed with the configured key.
        let mut connections = t.connections("acme", Role::Admin).await;
        let lake = crate::common::connection(
            "acme",
            "lake",
            "Lake",
            "s3",
            &[("bucket", "bucket-b"), ("region", "eu-west-1")],
            &[("access_key_id", "AKIA1"), ("secret_access_key", "s3cr3t")],
            false,
        );
        let created = connections.create_connection(lake).await.unwrap().into_inner();
        assert_eq!(created.secret_keys, ["access_key_id", "secret_access_key"]);
        t.stop().await;
    }
}

#[tokio::test]
async fn a_jwt_key_rotates_by_listing_both_keys_then_removing_the_old_one() {
    let c = claims(json!({}));
    let old = signed(Algorithm::ES256, "ec-test.key", Some("ec-test"), &c);
    let new = signed(Algorithm::EdDSA, "ed-test.key", Some("ed-test"), &c);
    // While both are listed, tokens signed with either are accepted.
    let both = Options::default().var(
        "EXPORTD_JWT_PUBLIC_KEY_FILES",
        format!("{FIXTURES}/ec-test.pem,{FIXTURES}/ed-test.pem"),
    );
    let t = TestServer::start_with(both).await;
    assert!(list_with(&t, Some(old.clone())).await.is_ok());
    assert!(list_with(&t, Some(new.clone())).await.is_ok());
    t.stop().await;
    // Once the old key is removed, its tokens are refused and the new ones still work.
    let new_only = Options::default().var("EXPORTD_JWT_PUBLIC_KEY_FILES", format!("{FIXTURES}/ed-test.pem"));
    let t = TestServer::start_with(new_only).await;
    let status = expect_code(list_with(&t, Some(old)).await, Code::Unauthenticated);
    assert_eq!(reason(&status), "UNKNOWN_SIGNING_KEY");
    assert!(list_with(&t, Some(new)).await.is_ok());
    t.stop().await;
}

#[tokio::test]
async fn health_and_reflection_need_no_token() {
    let t = TestServer::start().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(t.channel().await);
    let reply = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "exportd.v1.ConnectionService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        reply.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    // An unknown service is NOT_FOUND, and says so in its reason.
    let status = expect_code(
        health
            .check(tonic_health::pb::HealthCheckRequest {
                service: "exportd.v1.NoSuchService".into(),
            })
            .await,
        Code::NotFound,
    );
    assert_eq!(reason(&status), "SERVICE_NOT_FOUND");

    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut reflection = ServerReflectionClient::new(t.channel().await);
    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let response = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected {response:?}")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "exportd.v1.ConnectionService",
        "exportd.v1.ExportService",
        "exportd.v1.CatalogService",
        "exportd.v1.AlertService",
        "exportd.v1.AuditService",
        "grpc.health.v1.Health",
    ] {
        assert!(names.iter().any(|n| n == expected), "{names:?}");
    }
    t.stop().await;
}

#[tokio::test]
async fn roles_claim_wildcard_covers_every_environment() {
    let t = TestServer::start().await;
    let token = t.token(&[("*", Role::Viewer)]);
    let mut catalog = t.catalog_with(Some(token)).await;
    let list = catalog
        .list_environments(pb::ListEnvironmentsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let names: BTreeMap<String, String> = list.environments.into_iter().map(|e| (e.name, e.your_role)).collect();
    assert_eq!(names.get("environments/acme").map(String::as_str), Some("viewer"));
    assert_eq!(names.get("environments/globex").map(String::as_str), Some("viewer"));
    t.stop().await;
}
