//! The CDM writer is synchronous (it encodes CSV and Parquet, CPU work that runs on a blocking
//! thread); this adapter lets it write through any async [`ByteStore`] from that thread.
//!
//! Every call blocks its (blocking-pool) thread on the store's future. Bytes of a streamed file
//! are handed to the store in chunks of [`CHUNK_BYTES`], so memory stays bounded.

use std::io::{self, Read, Write};
use std::sync::Arc;

use bytes::Bytes;
use tokio::runtime::Handle;

use super::{ByteStore, Upload};
use crate::connectors::cdm::{CdmStorage, StorageEntry, StorageFile};
use crate::connectors::retry::Failure;

/// Bytes gathered before they are handed to the store.
const CHUNK_BYTES: usize = 1 << 20;

pub struct BlockingStorage {
    store: Arc<dyn ByteStore>,
    runtime: Handle,
}

impl BlockingStorage {
    /// `runtime` runs the store's futures; call the storage's methods only from threads that
    /// are not driving that runtime (`spawn_blocking` threads).
    pub fn new(store: Arc<dyn ByteStore>, runtime: Handle) -> Self {
        BlockingStorage { store, runtime }
    }
}

fn to_io(failure: Failure) -> io::Error {
    io::Error::other(failure.message().to_string())
}

impl CdmStorage for BlockingStorage {
    fn create_file(&mut self, relative_path: &str) -> io::Result<Box<dyn StorageFile>> {
        let upload = self.runtime.block_on(self.store.upload(relative_path)).map_err(to_io)?;
        Ok(Box::new(BlockingFile {
            upload: Some(upload),
            runtime: self.runtime.clone(),
            pending: Vec::with_capacity(CHUNK_BYTES),
        }))
    }

    fn write_file(&mut self, relative_path: &str, source: &mut dyn Read) -> io::Result<u64> {
        let mut bytes = Vec::new();
        source.read_to_end(&mut bytes)?;
        let size = bytes.len() as u64;
        self.runtime
            .block_on(self.store.put(relative_path, Bytes::from(bytes)))
            .map_err(to_io)?;
        Ok(size)
    }

    fn read_file(&self, relative_path: &str) -> io::Result<Option<Vec<u8>>> {
        self.runtime
            .block_on(self.store.get(relative_path))
            .map(|bytes| bytes.map(|b| b.to_vec()))
            .map_err(to_io)
    }

    fn remove_file(&mut self, relative_path: &str) -> io::Result<()> {
        self.runtime.block_on(self.store.delete(relative_path)).map_err(to_io)
    }

    fn location(&self, relative_path: &str) -> String {
        self.store.url(relative_path)
    }

    /// The names directly under a folder, from the store's (recursive) listing.
    fn list(&self, relative_path: &str) -> io::Result<Vec<StorageEntry>> {
        let paths = self.runtime.block_on(self.store.list(relative_path)).map_err(to_io)?;
        let prefix = if relative_path.is_empty() {
            String::new()
        } else {
            format!("{}/", relative_path.trim_end_matches('/'))
        };
        let mut entries: Vec<StorageEntry> = Vec::new();
        for path in paths {
            let Some(rest) = path.strip_prefix(&prefix) else {
                continue;
            };
            let (name, is_folder) = match rest.split_once('/') {
                Some((folder, _)) => (folder, true),
                None => (rest, false),
            };
            if !entries.iter().any(|e| e.name == name) {
                entries.push(StorageEntry {
                    name: name.to_string(),
                    is_folder,
                });
            }
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }
}

struct BlockingFile {
    /// `None` once finished or discarded.
    upload: Option<Box<dyn Upload>>,
    runtime: Handle,
    pending: Vec<u8>,
}

impl BlockingFile {
    fn hand_over(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let upload = self
            .upload
            .as_mut()
            .ok_or_else(|| io::Error::other("the file is closed"))?;
        let chunk = Bytes::from(std::mem::replace(&mut self.pending, Vec::with_capacity(CHUNK_BYTES)));
        self.runtime.block_on(upload.write(chunk)).map_err(to_io)
    }
}

impl Write for BlockingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.pending.extend_from_slice(buf);
        if self.pending.len() >= CHUNK_BYTES {
            self.hand_over()?;
        }
        Ok(buf.len())
    }

    /// Bytes are handed over in chunks; a flush does not force a (small) part out.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl StorageFile for BlockingFile {
    fn finish(mut self: Box<Self>) -> io::Result<u64> {
        self.hand_over()?;
        let upload = self
            .upload
            .take()
            .ok_or_else(|| io::Error::other("the file is closed"))?;
        self.runtime.block_on(upload.finish()).map_err(to_io)
    }

    fn discard(mut self: Box<Self>) -> io::Result<()> {
        if let Some(upload) = self.upload.take() {
            self.runtime.block_on(upload.abort());
        }
        Ok(())
    }
}

impl Drop for BlockingFile {
    /// Dropped unfinished (the writer failed or was dropped): the upload is aborted without
    /// blocking whoever drops it.
    fn drop(&mut self) {
        if let Some(upload) = self.upload.take() {
            self.runtime.spawn(upload.abort());
        }
    }
}
