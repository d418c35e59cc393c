//! `s3`: CDM folders in an S3 bucket (or any S3-compatible server: MinIO, moto, Ceph) under the
//! connection's `prefix`; an export lives at exactly `<prefix>/<export folder>/`.
//!
//! References followed: Amazon S3 API reference (PutObject, CreateMultipartUpload /
//! UploadPart / CompleteMultipartUpload / AbortMultipartUpload, ListObjectsV2, DeleteObject; the
//! error codes `NoSuchBucket`, `InvalidAccessKeyId`, `SignatureDoesNotMatch`, `AccessDenied`),
//! and `object_store::aws::AmazonS3Builder` (path-style requests to a custom endpoint).

use std::sync::Arc;

use async_trait::async_trait;

use super::registry::{HTTP_URL, TEXT, key, optional, storage_type};
use crate::domain::connection_type::{ConnectionTypeSpec, ValueKind};
use object_store::aws::AmazonS3Builder;

use super::storage::object::{ObjectBytes, retry_config};
use super::storage::{ByteStore, encode_url_path};
use super::storage_connector::StorageKind;
use super::{Target, object_store_step};
use crate::connectors::retry::Failure;

pub struct S3;

/// The connection type this file implements (CONNECTORS.md): ids and keys are part of the API.
pub const SPEC: ConnectionTypeSpec = storage_type(
    "s3",
    "Amazon S3",
    &[
        key("bucket", "bucket name", ValueKind::BucketName),
        key("region", "AWS region, e.g. eu-west-1", TEXT),
        optional("endpoint", "S3-compatible endpoint URL", HTTP_URL),
        optional("prefix", "key prefix for every object", ValueKind::RelativePath),
    ],
    &[
        key("access_key_id", "access key id", TEXT),
        key("secret_access_key", "secret access key", TEXT),
    ],
    &[],
);

/// `s3://bucket/prefix`.
fn url_root(target: &Target<'_>) -> String {
    let prefix = target.config("prefix").trim_matches('/');
    let bucket = target.config("bucket");
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
            .with_bucket_name(target.config("bucket"))
            .with_region(target.config("region"))
            .with_access_key_id(secret("access_key_id"))
            .with_secret_access_key(secret("secret_access_key"))
            .with_retry(retry_config());
        let endpoint = target.config("endpoint");
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
            target.config("prefix"),
            url_root(target),
            secrets,
        )))
    }

    fn reach_steps(&self) -> &'static [&'static str] {
        &["dns", "tcp_connect", "tls", "authentication", "bucket_exists"]
    }

    fn failed_step(&self, failure: &Failure) -> &'static str {
        object_store_step(failure.message(), "NoSuchBucket", "bucket_exists")
    }

    fn private_locations(&self, target: &Target<'_>) -> Vec<String> {
        vec![url_root(target)]
    }
}
