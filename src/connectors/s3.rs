//! `s3`: CDM folders in an S3 bucket (or any S3-compatible server: MinIO, moto, Ceph) under the
//! connection's `prefix`; an export lives at exactly `<prefix>/<export folder>/`.
//!
//! References followed: Amazon S3 API reference (PutObject, CreateMultipartUpload /
//! UploadPart / CompleteMultipartUpload / AbortMultipartUpload, ListObjectsV2, DeleteObject; the
//! error codes `NoSuchBucket`, `InvalidAccessKeyId`, `SignatureDoesNotMatch`, `AccessDenied`),
//! and `object_store::aws::AmazonS3Builder` (path-style requests to a custom endpoint).

use std::sync::Arc;

use async_trait::async_trait;

use super::registry::{ALL_SEGMENTS, BOTH_KINDS, FILE_MODES, HTTP_URL, STORAGE_SETTINGS, TEXT, key, optional};
use crate::domain::connection_type::{Category, ConnectionTypeSpec, ValueKind};
use object_store::aws::AmazonS3Builder;

use super::storage::object::{ObjectBytes, retry_config};
use super::storage::{ByteStore, encode_url_path};
use super::storage_connector::StorageKind;
use super::{Target, network_step};
use crate::connectors::retry::Failure;

pub struct S3;

/// The connection type this file implements (CONNECTORS.md): ids and keys are part of the API.
pub const SPEC: ConnectionTypeSpec = ConnectionTypeSpec {
    id: "s3",
    display_name: "Amazon S3",
    category: Category::Storage,
    export_kinds: BOTH_KINDS,
    segment_types: ALL_SEGMENTS,
    sync_modes: FILE_MODES,
    required_fields: &[],
    identifier_fields: &[],
    profile_limit: 0,
    minimum_segment_size: 0,
    config: &[
        key("bucket", "bucket name", ValueKind::BucketName),
        key("region", "AWS region, e.g. eu-west-1", TEXT),
        optional("endpoint", "S3-compatible endpoint URL", HTTP_URL),
        optional("prefix", "key prefix for every object", ValueKind::RelativePath),
    ],
    secrets: &[
        key("access_key_id", "access key id", TEXT),
        key("secret_access_key", "secret access key", TEXT),
    ],
    one_of_secrets: &[],
    settings: STORAGE_SETTINGS,
    target_options: &[],
};

fn config<'a>(target: &'a Target<'_>, key: &str) -> &'a str {
    target
        .connection
        .config
        .get(key)
        .map(String::as_str)
        .unwrap_or_default()
}

/// `s3://bucket/prefix`.
fn url_root(target: &Target<'_>) -> String {
    let prefix = config(target, "prefix").trim_matches('/');
    let bucket = config(target, "bucket");
    if prefix.is_empty() {
        format!("s3://{bucket}")
    } else {
        format!("s3://{bucket}/{}", encode_url_path(prefix))
    }
}

#[async_trait]
impl StorageKind for S3 {
    async fn open(&self, target: &Target<'_>) -> Result<Arc<dyn ByteStore>, Failure> {
        super::ensure_tls_provider();
        let secret = |key: &str| target.secrets.get(key).cloned().unwrap_or_default();
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(config(target, "bucket"))
            .with_region(config(target, "region"))
            .with_access_key_id(secret("access_key_id"))
            .with_secret_access_key(secret("secret_access_key"))
            .with_retry(retry_config());
        let endpoint = config(target, "endpoint");
        if !endpoint.is_empty() {
            // Path-style (the builder's default with an endpoint) and plain HTTP for local
            // servers.
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        let store = builder.build().map_err(|e| Failure::Permanent {
            message: format!("the S3 configuration cannot be used: {e}"),
        })?;
        let secrets = target.secrets.values().cloned().collect();
        Ok(Arc::new(ObjectBytes::new(
            Arc::new(store),
            config(target, "prefix"),
            url_root(target),
            secrets,
        )))
    }

    fn reach_steps(&self) -> &'static [&'static str] {
        &["dns", "tcp_connect", "tls", "authentication", "bucket_exists"]
    }

    fn failed_step(&self, failure: &Failure) -> &'static str {
        let message = failure.message();
        network_step(message).unwrap_or_else(|| {
            if message.contains("NoSuchBucket") {
                "bucket_exists"
            } else {
                // InvalidAccessKeyId, SignatureDoesNotMatch, AccessDenied, 403s.
                "authentication"
            }
        })
    }

    fn private_locations(&self, target: &Target<'_>) -> Vec<String> {
        vec![url_root(target)]
    }
}
