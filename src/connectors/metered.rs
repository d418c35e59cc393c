//! Counts the requests a CDM folder makes of its storage (`exportd_target_requests_total`):
//! each file published, written whole, read or removed is one request, `ok` or `error`, in a
//! `target_request` span (a child of the run's span, though the writer runs on another thread).
//! Wraps any [`CdmStorage`]; connectors with their own client (HTTP, SFTP) count in that client
//! with `metrics::target_request` / `metrics::target_retry` instead.

use std::io::{self, Read, Write};

use super::cdm::{CdmStorage, StorageEntry, StorageFile};

pub struct MeteredStorage<S> {
    inner: S,
    target: Target,
}

/// What each request is recorded under.
#[derive(Clone)]
struct Target {
    connection_type: &'static str,
    /// The span that was current when the storage was opened (the run's).
    parent: tracing::Span,
}

impl<S: CdmStorage> MeteredStorage<S> {
    pub fn new(inner: S, connection_type: &'static str) -> Self {
        MeteredStorage {
            inner,
            target: Target {
                connection_type,
                parent: tracing::Span::current(),
            },
        }
    }
}

impl Target {
    fn request<T>(&self, operation: &'static str, request: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
        let span = tracing::info_span!(
            parent: &self.parent,
            "target_request",
            connection_type = self.connection_type,
            operation
        );
        let result = span.in_scope(request);
        let outcome = if result.is_ok() { "ok" } else { "error" };
        crate::metrics::target_request(self.connection_type, outcome);
        result
    }
}

impl<S: CdmStorage> CdmStorage for MeteredStorage<S> {
    /// Opening a file is not a request yet: publishing it ([`StorageFile::finish`]) is.
    fn create_file(&mut self, relative_path: &str) -> io::Result<Box<dyn StorageFile>> {
        let file = self.inner.create_file(relative_path)?;
        Ok(Box::new(MeteredFile {
            inner: file,
            target: self.target.clone(),
        }))
    }

    fn write_file(&mut self, relative_path: &str, source: &mut dyn Read) -> io::Result<u64> {
        let inner = &mut self.inner;
        self.target.request("write", || inner.write_file(relative_path, source))
    }

    fn read_file(&self, relative_path: &str) -> io::Result<Option<Vec<u8>>> {
        self.target.request("read", || self.inner.read_file(relative_path))
    }

    fn remove_file(&mut self, relative_path: &str) -> io::Result<()> {
        let inner = &mut self.inner;
        self.target.request("remove", || inner.remove_file(relative_path))
    }

    fn location(&self, relative_path: &str) -> String {
        self.inner.location(relative_path)
    }

    fn list(&self, relative_path: &str) -> io::Result<Vec<StorageEntry>> {
        self.target.request("list", || self.inner.list(relative_path))
    }
}

struct MeteredFile {
    inner: Box<dyn StorageFile>,
    target: Target,
}

impl Write for MeteredFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl StorageFile for MeteredFile {
    fn finish(self: Box<Self>) -> io::Result<u64> {
        let (inner, target) = (self.inner, self.target);
        target.request("publish", || inner.finish())
    }

    fn discard(self: Box<Self>) -> io::Result<()> {
        self.inner.discard()
    }
}
