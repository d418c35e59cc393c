//! The byte-sink layer under every storage target: one async interface — whole objects,
//! streaming uploads that appear only when finished, reads of small objects, listing, deletion
//! and the absolute URL of a path — implemented by `object_store` for S3 and Azure
//! ([`object`]), by the local file system with fsync-and-rename ([`local`]) and by SFTP
//! ([`sftp`]); [`retrying`] retries the requests of the stores whose library does not.
//!
//! Paths are relative to the store's root (a connection's folder, bucket prefix or container
//! prefix), `/`-separated, and never contain `.` or `..` segments (checked by [`check_path`]).

use async_trait::async_trait;
use bytes::Bytes;

use crate::connectors::retry::Failure;

pub mod blocking;
pub mod local;
pub mod object;
pub mod retrying;
pub mod sftp;

/// Large uploads go up in parts of this size (S3 multipart, Azure blocks); smaller objects in
/// one request.
pub const PART_BYTES: usize = 8 << 20;

/// A store of objects under one root.
#[async_trait]
pub trait ByteStore: Send + Sync {
    /// Writes a whole object at once, replacing any: readers see the old one or the new one.
    async fn put(&self, path: &str, bytes: Bytes) -> Result<(), Failure>;

    /// Starts a streamed object; nothing is visible at `path` until [`Upload::finish`].
    async fn upload(&self, path: &str) -> Result<Box<dyn Upload>, Failure>;

    /// A whole (small) object, or `None` when there is none.
    async fn get(&self, path: &str) -> Result<Option<Bytes>, Failure>;

    /// The paths of every object under `prefix` (a folder path; empty for the whole root).
    async fn list(&self, prefix: &str) -> Result<Vec<String>, Failure>;

    /// Removes an object; a missing object is not an error.
    async fn delete(&self, path: &str) -> Result<(), Failure>;

    /// The absolute URL of a path (`file:///…`, `s3://…`, `https://…`, `sftp://…`).
    fn url(&self, path: &str) -> String;
}

/// An object being streamed to a store.
#[async_trait]
pub trait Upload: Send {
    /// Appends bytes; large uploads send a part whenever [`PART_BYTES`] have gathered.
    async fn write(&mut self, bytes: Bytes) -> Result<(), Failure>;
    /// Publishes the object at its path; returns its size.
    async fn finish(self: Box<Self>) -> Result<u64, Failure>;
    /// Abandons the object and removes what was sent of it (best effort).
    async fn abort(self: Box<Self>);
}

/// Refuses a relative store path that could leave its root or name something twice.
pub fn check_path(path: &str) -> Result<(), Failure> {
    let bad = path.is_empty()
        || path
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == ".." || s.contains(['\\', '\0', '\n', '\r']));
    if bad {
        return Err(Failure::Permanent {
            message: format!("'{path}' is not a valid storage path"),
        });
    }
    Ok(())
}

/// `prefix/path` with the prefix's slashes trimmed (an empty prefix adds nothing).
pub fn join(prefix: &str, path: &str) -> String {
    let prefix = prefix.trim_matches('/');
    match (prefix.is_empty(), path.is_empty()) {
        (true, _) => path.to_string(),
        (false, true) => prefix.to_string(),
        (false, false) => format!("{prefix}/{path}"),
    }
}

/// Percent-encodes everything but unreserved characters and `/` (an RFC 3986 path).
pub fn encode_url_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for &byte in path.as_bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~/".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_under_their_root() {
        for good in ["a", "a/b.csv", "x/2026/01/02/0000-run-1/x_1.csv"] {
            assert!(check_path(good).is_ok(), "{good}");
        }
        for bad in ["", "/a", "a//b", "a/./b", "../a", "a/..", "a\\b", "a\nb"] {
            assert!(check_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn joins_and_encodes() {
        assert_eq!(join("", "a/b"), "a/b");
        assert_eq!(join("/p/q/", "a"), "p/q/a");
        assert_eq!(join("p", ""), "p");
        assert_eq!(encode_url_path("a b/ü.csv"), "a%20b/%C3%BC.csv");
    }
}
