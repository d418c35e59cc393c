//! Targets. Every connection type implements one [`Connector`] trait; what is common to all of
//! them (batching, retries, progress, cancellation) lives in shared machinery, not in the
//! connectors. `registry` holds the catalogue of types.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde_json::Value;

use crate::domain::catalog::FieldType;
use crate::domain::connection::Connection;
use crate::domain::output_area::LocalRoots;
use crate::engine::retry::Failure;

pub mod cdm;
pub mod local_files;
pub mod metered;
pub mod parquet_partition;
pub mod registry;
pub mod storage;

/// Everything a connector may know about its connection.
pub struct Target<'a> {
    pub connection: &'a Connection,
    /// Opened secrets; never logged.
    pub secrets: &'a BTreeMap<String, String>,
    /// Where `local-files` connections may write (the operator's exports root and allowed roots).
    pub local_roots: LocalRoots<'a>,
    /// The mode of files written to the server's file system.
    pub export_file_mode: u32,
}

/// One step of a connection test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub message: String,
}

impl Check {
    pub fn pass(name: &str, message: impl Into<String>) -> Check {
        Check {
            name: name.to_string(),
            ok: true,
            message: message.into(),
        }
    }

    pub fn fail(name: &str, message: impl Into<String>) -> Check {
        Check {
            name: name.to_string(),
            ok: false,
            message: message.into(),
        }
    }
}

/// The result of `TestConnection`: the checks made, in order. A failed check ends the test.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TestReport {
    pub checks: Vec<Check>,
}

impl TestReport {
    pub fn ok(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(|c| c.ok)
    }

    /// One sentence: what failed (the first failing check), or that everything passed.
    pub fn summary(&self) -> String {
        match self.checks.iter().find(|c| !c.ok) {
            Some(check) => format!("{} failed: {}", check.name, check.message),
            None if self.checks.is_empty() => "no checks were made".to_string(),
            None => format!("all {} checks passed", self.checks.len()),
        }
    }
}

#[async_trait]
pub trait Connector: Send + Sync {
    /// Reaches the target with the stored credentials and reports each step.
    async fn test(&self, target: &Target<'_>) -> TestReport;

    /// Opens what one run writes through. Nothing is visible at the target until
    /// [`Sink::commit`].
    async fn open_sink(&self, run: &RunTarget<'_>) -> Result<Box<dyn Sink>, Failure>;

    /// The beginnings of the paths and URLs that name where this connection writes (its
    /// root, prefix, bucket): run messages read by callers who may not see the connection
    /// name folders relative to them instead.
    fn private_locations(&self, _target: &Target<'_>) -> Vec<String> {
        Vec::new()
    }
}

/// A run as a connector sees it.
pub struct RunTarget<'a> {
    pub target: Target<'a>,
    pub export_id: &'a str,
    pub run_id: &'a str,
    /// Stable across attempts of the run, so that a retried attempt writes to the same place.
    pub run_time: chrono::DateTime<chrono::Utc>,
    pub settings: &'a BTreeMap<String, String>,
}

/// One column of a part.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub name: String,
    pub field_type: FieldType,
    pub description: String,
    pub mapping: String,
}

/// One part of a run: an entity (data-out) or a segment, with its columns.
#[derive(Debug, Clone, PartialEq)]
pub struct PartSchema {
    pub id: String,
    pub description: String,
    pub primary_key: String,
    pub columns: Vec<Column>,
    /// Rows then end with the `_deleted` boolean.
    pub incremental: bool,
}

/// What a committed run left at the target.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SinkSummary {
    pub files: Vec<String>,
    pub bytes: u64,
    /// Where to look, e.g. the URL of model.json.
    pub location: String,
}

/// Where one run's rows go. Parts are written one after another; `commit` makes the whole run
/// visible at once (commit last), `abort` removes what the run wrote.
#[async_trait]
pub trait Sink: Send {
    async fn begin_part(&mut self, part: &PartSchema) -> Result<(), Failure>;
    /// Rows in column order (then `_deleted` for incremental parts). Returns the bytes written
    /// so far.
    async fn write_rows(&mut self, rows: Vec<Vec<Value>>) -> Result<u64, Failure>;
    async fn end_part(&mut self) -> Result<(), Failure>;
    async fn commit(self: Box<Self>) -> Result<SinkSummary, Failure>;
    async fn abort(self: Box<Self>);
    /// Stops without cleaning up: the run now belongs to another worker, which writes to the
    /// same place.
    async fn abandon(self: Box<Self>) {}
}

/// A type from the catalogue whose connector has not been built yet: it says so plainly
/// instead of pretending.
struct NotYetSupported;

#[async_trait]
impl Connector for NotYetSupported {
    async fn test(&self, target: &Target<'_>) -> TestReport {
        TestReport {
            checks: vec![Check::fail(
                "connector_available",
                format!(
                    "connections of type '{}' cannot be reached by this version of exportd yet",
                    target.connection.type_id
                ),
            )],
        }
    }

    async fn open_sink(&self, run: &RunTarget<'_>) -> Result<Box<dyn Sink>, Failure> {
        Err(Failure::Permanent {
            message: format!(
                "exports to '{}' connections are not yet supported by this version of exportd",
                run.target.connection.type_id
            ),
        })
    }
}

/// How an I/O error at a target is treated: interruptions and timeouts are worth retrying,
/// the rest (permissions, missing folders, full disks) is not.
pub fn io_failure(context: &str, err: std::io::Error) -> Failure {
    use std::io::ErrorKind::*;
    let message = format!("{context}: {err}");
    match err.kind() {
        Interrupted | TimedOut | WouldBlock | ConnectionReset | ConnectionAborted | BrokenPipe => Failure::Transient {
            message,
            retry_after: None,
        },
        _ => Failure::Permanent { message },
    }
}

/// The connector of a type id.
pub fn connector_for(type_id: &str) -> &'static dyn Connector {
    match type_id {
        "local-files" => &local_files::LocalFiles,
        _ => &NotYetSupported,
    }
}
