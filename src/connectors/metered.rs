//! Counts the requests a CDM folder makes of its storage (`exportd_target_requests_total`):
//! each file published, written whole, read or removed is one request, `ok` or `error`.
//! Wraps any [`CdmStorage`]; connectors with their own client (HTTP, SFTP) count in that client
//! with `metrics::target_request` / `metrics::target_retry` instead.

use std::io::{self, Read, Write};

use super::cdm::{CdmStorage, StorageFile};

pub struct MeteredStorage<S> {
    inner: S,
    connection_type: &'static str,
}

impl<S: CdmStorage> MeteredStorage<S> {
    pub fn new(inner: S, connection_type: &'static str) -> Self {
        MeteredStorage { inner, connection_type }
    }
}

fn counted<T>(connection_type: &str, result: io::Result<T>) -> io::Result<T> {
    let outcome = if result.is_ok() { "ok" } else { "error" };
    crate::metrics::target_request(connection_type, outcome);
    result
}

impl<S: CdmStorage> CdmStorage for MeteredStorage<S> {
    /// Opening a file is not a request yet: publishing it ([`StorageFile::finish`]) is.
    fn create_file(&mut self, relative_path: &str) -> io::Result<Box<dyn StorageFile>> {
        let file = self.inner.create_file(relative_path)?;
        Ok(Box::new(MeteredFile {
            inner: file,
            connection_type: self.connection_type,
        }))
    }

    fn write_file(&mut self, relative_path: &str, source: &mut dyn Read) -> io::Result<u64> {
        let result = self.inner.write_file(relative_path, source);
        counted(self.connection_type, result)
    }

    fn read_file(&self, relative_path: &str) -> io::Result<Option<Vec<u8>>> {
        counted(self.connection_type, self.inner.read_file(relative_path))
    }

    fn remove_file(&mut self, relative_path: &str) -> io::Result<()> {
        let result = self.inner.remove_file(relative_path);
        counted(self.connection_type, result)
    }

    fn location(&self, relative_path: &str) -> String {
        self.inner.location(relative_path)
    }
}

struct MeteredFile {
    inner: Box<dyn StorageFile>,
    connection_type: &'static str,
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
        counted(self.connection_type, self.inner.finish())
    }

    fn discard(self: Box<Self>) -> io::Result<()> {
        self.inner.discard()
    }
}
