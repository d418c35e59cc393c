//! [`ByteStore`] over the `object_store` crate: S3 (and S3-compatible servers) and Azure Blob
//! Storage / ADLS Gen2.
//!
//! References followed: the `object_store` 0.14 builders (`AmazonS3Builder`,
//! `MicrosoftAzureBuilder`, `WriteMultipart`) from the Apache Arrow project, and for the wire
//! protocols the S3 API reference (path-style requests to a custom endpoint, multipart upload
//! with `AbortMultipartUpload`) and Azure's Blob service REST reference (Put Block / Put Block
//! List; uncommitted blocks are discarded by the service after seven days, so an abort has
//! nothing to send).
//!
//! Retries: `object_store` retries transient failures itself (timeouts, connection errors, 5xx,
//! 429) with backoff; it is configured for at most 6 attempts within 120 s per request
//! (PRODUCT.md §11), so an error that reaches this module is final for its request.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, RetryConfig, WriteMultipart};

use super::{ByteStore, PART_BYTES, Upload, check_path, join};
use crate::connectors::retry::Failure;

/// Parts of one upload in flight at once (bounded memory: this many parts of [`PART_BYTES`]).
const PARTS_IN_FLIGHT: usize = 4;

/// The retry settings every object store is built with.
pub fn retry_config() -> RetryConfig {
    RetryConfig {
        max_retries: 5,
        retry_timeout: Duration::from_secs(120),
        ..RetryConfig::default()
    }
}

/// One bucket or container, under a prefix.
pub struct ObjectBytes {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    /// The URL of the root, without a trailing slash (`s3://bucket/prefix`).
    url_root: String,
    /// Secret values that must never appear in a message (keys, SAS signature parts).
    secrets: Vec<String>,
}

impl ObjectBytes {
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str, url_root: String, secrets: Vec<String>) -> Self {
        ObjectBytes {
            store,
            prefix: prefix.trim_matches('/').to_string(),
            url_root: url_root.trim_end_matches('/').to_string(),
            secrets: secrets.into_iter().filter(|s| s.len() >= 4).collect(),
        }
    }

    fn location(&self, path: &str) -> Result<ObjectPath, Failure> {
        check_path(path)?;
        Ok(ObjectPath::from(join(&self.prefix, path)))
    }

    fn failure(&self, what: &str, error: object_store::Error) -> Failure {
        Failure::Permanent {
            message: redact(&format!("{what}: {}", chain(&error)), &self.secrets),
        }
    }
}

/// An error with its causes, each said once: the cause is what tells a refused connection
/// from a missing bucket.
fn chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

/// A message with every secret value (and any URL query string, where signatures travel)
/// taken out.
pub fn redact(message: &str, secrets: &[String]) -> String {
    let mut out = message.to_string();
    for secret in secrets {
        out = out.replace(secret.as_str(), "<redacted>");
    }
    // `…?sv=…&sig=…` in a URL: keep the URL, drop its query.
    let mut cleaned = String::with_capacity(out.len());
    let mut in_query = false;
    for c in out.chars() {
        if in_query {
            if c.is_whitespace() || c == '"' || c == '\'' || c == ')' {
                in_query = false;
                cleaned.push(c);
            }
            continue;
        }
        if c == '?'
            && cleaned
                .rsplit(char::is_whitespace)
                .next()
                .is_some_and(|w| w.contains("://"))
        {
            cleaned.push_str("?<redacted>");
            in_query = true;
            continue;
        }
        cleaned.push(c);
    }
    cleaned
}

#[async_trait]
impl ByteStore for ObjectBytes {
    async fn put(&self, path: &str, bytes: Bytes) -> Result<(), Failure> {
        let location = self.location(path)?;
        self.store
            .put(&location, PutPayload::from(bytes))
            .await
            .map_err(|e| self.failure(&format!("cannot write {}", self.url(path)), e))?;
        Ok(())
    }

    async fn upload(&self, path: &str) -> Result<Box<dyn Upload>, Failure> {
        Ok(Box::new(ObjectUpload {
            store: self.store.clone(),
            location: self.location(path)?,
            url: self.url(path),
            secrets: self.secrets.clone(),
            pending: Vec::new(),
            multipart: None,
            size: 0,
        }))
    }

    async fn get(&self, path: &str) -> Result<Option<Bytes>, Failure> {
        let location = self.location(path)?;
        match self.store.get(&location).await {
            Ok(result) => {
                Ok(Some(result.bytes().await.map_err(|e| {
                    self.failure(&format!("cannot read {}", self.url(path)), e)
                })?))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.failure(&format!("cannot read {}", self.url(path)), e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, Failure> {
        let root = join(&self.prefix, prefix);
        let location = (!root.is_empty()).then(|| ObjectPath::from(root.as_str()));
        let objects: Vec<_> = self
            .store
            .list(location.as_ref())
            .try_collect()
            .await
            .map_err(|e| self.failure(&format!("cannot list {}", self.url(prefix)), e))?;
        let strip = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        Ok(objects
            .into_iter()
            .filter_map(|o| o.location.as_ref().strip_prefix(strip.as_str()).map(str::to_string))
            .collect())
    }

    async fn delete(&self, path: &str) -> Result<(), Failure> {
        let location = self.location(path)?;
        match self.store.delete(&location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.failure(&format!("cannot delete {}", self.url(path)), e)),
        }
    }

    fn url(&self, path: &str) -> String {
        if path.is_empty() {
            self.url_root.clone()
        } else {
            format!("{}/{}", self.url_root, super::encode_url_path(path))
        }
    }
}

/// Gathers bytes; below [`PART_BYTES`] in all, the object goes up in one PUT at the end,
/// above it as a multipart upload (S3) or staged blocks (Azure).
struct ObjectUpload {
    store: Arc<dyn ObjectStore>,
    location: ObjectPath,
    url: String,
    secrets: Vec<String>,
    pending: Vec<u8>,
    multipart: Option<WriteMultipart>,
    size: u64,
}

impl ObjectUpload {
    fn failure(&self, what: &str, error: object_store::Error) -> Failure {
        Failure::Permanent {
            message: redact(&format!("{what} {}: {}", self.url, chain(&error)), &self.secrets),
        }
    }
}

#[async_trait]
impl Upload for ObjectUpload {
    async fn write(&mut self, bytes: Bytes) -> Result<(), Failure> {
        self.size += bytes.len() as u64;
        if self.multipart.is_none() {
            self.pending.extend_from_slice(&bytes);
            if self.pending.len() < PART_BYTES {
                return Ok(());
            }
            let upload = self
                .store
                .put_multipart(&self.location)
                .await
                .map_err(|e| self.failure("cannot start the upload of", e))?;
            let mut multipart = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
            multipart.write(&std::mem::take(&mut self.pending));
            self.multipart = Some(multipart);
        } else if let Some(multipart) = self.multipart.as_mut() {
            multipart.put(bytes);
        }
        let multipart = self.multipart.as_mut().expect("started above");
        if let Err(e) = multipart.wait_for_capacity(PARTS_IN_FLIGHT).await {
            return Err(self.failure("cannot upload a part of", e));
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<u64, Failure> {
        match self.multipart.take() {
            None => {
                let payload = PutPayload::from(std::mem::take(&mut self.pending));
                self.store
                    .put(&self.location, payload)
                    .await
                    .map_err(|e| self.failure("cannot write", e))?;
            }
            Some(multipart) => {
                multipart
                    .finish()
                    .await
                    .map_err(|e| self.failure("cannot complete the upload of", e))?;
            }
        }
        Ok(self.size)
    }

    async fn abort(mut self: Box<Self>) {
        if let Some(multipart) = self.multipart.take()
            && let Err(e) = multipart.abort().await
        {
            tracing::warn!(error = %redact(&chain(&e), &self.secrets), "cannot abort an upload");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_lose_secrets_and_url_queries() {
        let message = "Error at https://acct.blob.core.windows.net/c/x?sv=2022&sig=abc%3D: AuthFailed key s3cr3t-key";
        let redacted = redact(message, &["s3cr3t-key".to_string()]);
        assert_eq!(
            redacted,
            "Error at https://acct.blob.core.windows.net/c/x?<redacted> AuthFailed key <redacted>"
        );
        // A question mark outside a URL stays.
        assert_eq!(redact("why? because", &[]), "why? because");
    }
}
