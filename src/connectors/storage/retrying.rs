//! Retries of a store's requests, as PRODUCT.md §11 says (at most 6 attempts within 120 s, a
//! transient failure only), for the stores whose library does not retry itself: local files and
//! SFTP. (`object_store` retries its S3 and Azure requests with the same bound; wrapping them
//! here too would multiply the attempts.)
//!
//! Every request of the [`ByteStore`] interface may be tried again: `put` writes a fresh
//! temporary file, `upload` opens one, `get` and `list` read, `delete` accepts a missing object.
//! The writes of a streamed upload are the store's own to retry (only it knows how to go on
//! where the failed write left off).

use async_trait::async_trait;
use bytes::Bytes;

use super::{ByteStore, Upload};
use crate::connectors::retry::{Failure, retried};

pub struct Retrying<S> {
    inner: S,
    /// Retries are counted under it (`exportd_target_retries_total`).
    connection_type: &'static str,
}

impl<S: ByteStore> Retrying<S> {
    pub fn new(connection_type: &'static str, inner: S) -> Retrying<S> {
        Retrying { inner, connection_type }
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }
}

#[async_trait]
impl<S: ByteStore> ByteStore for Retrying<S> {
    async fn put(&self, path: &str, bytes: Bytes) -> Result<(), Failure> {
        retried(self.connection_type, |_| self.inner.put(path, bytes.clone())).await
    }

    async fn upload(&self, path: &str) -> Result<Box<dyn Upload>, Failure> {
        retried(self.connection_type, |_| self.inner.upload(path)).await
    }

    async fn get(&self, path: &str) -> Result<Option<Bytes>, Failure> {
        retried(self.connection_type, |_| self.inner.get(path)).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, Failure> {
        retried(self.connection_type, |_| self.inner.list(prefix)).await
    }

    async fn delete(&self, path: &str) -> Result<(), Failure> {
        retried(self.connection_type, |_| self.inner.delete(path)).await
    }

    fn url(&self, path: &str) -> String {
        self.inner.url(path)
    }
}
