//! Targets. Every connection type implements one [`Connector`] trait; what is common to all of
//! them (batching, retries, progress, cancellation) lives in shared machinery, not in the
//! connectors. `registry` holds the catalogue of types.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde_json::Value;

use crate::connectors::retry::Failure;
use crate::domain::catalog::FieldType;
use crate::domain::connection::Connection;
use crate::domain::output_area::LocalRoots;

pub mod audience;
pub mod azure_blob;
pub mod cdm;
pub mod facebook_ads;
pub mod google_ads;
pub mod http;
pub mod linkedin_ads;
pub mod local_files;
pub mod mailchimp;
pub mod metered;
pub mod parquet_partition;
pub mod postgres;
pub mod registry;
pub mod retry;
pub mod s3;
pub mod sftp;
pub mod storage;
pub mod storage_connector;
pub mod webhook;

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

impl Target<'_> {
    /// A configuration value, empty when not set.
    pub fn config(&self, key: &str) -> &str {
        self.connection.config.get(key).map(String::as_str).unwrap_or_default()
    }
}

/// Which step of reaching an object store failed, when listing its root did: a network step,
/// else the missing bucket or container (its error code in the message), else the credentials.
pub fn object_store_step(message: &str, missing_code: &str, missing_step: &'static str) -> &'static str {
    network_step(message).unwrap_or(if message.contains(missing_code) {
        missing_step
    } else {
        // InvalidAccessKeyId, SignatureDoesNotMatch, AuthenticationFailed, 403s.
        "authentication"
    })
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

    /// Rows of `part` to add or update (in column order, then `_deleted` for incremental
    /// parts) as this target would receive them, for a preview (PRODUCT.md §13): one flat
    /// object per row, keyed by the mapped target fields. Makes no request; rows the connector
    /// refuses before sending are left out. By default the columns as they are, which is what
    /// file and table targets write.
    fn sample(
        &self,
        _run: &RunTarget<'_>,
        part: &PartSchema,
        rows: Vec<Vec<Value>>,
    ) -> Vec<serde_json::Map<String, Value>> {
        rows.into_iter()
            .map(|row| part.columns.iter().map(|c| c.name.clone()).zip(row).collect())
            .collect()
    }

    /// Checks of a connection's configuration and secrets beyond their value kinds (a private
    /// key must parse), for CreateConnection and UpdateConnection; `secrets` are those the
    /// request gives.
    fn check_config(
        &self,
        _config: &BTreeMap<String, String>,
        _secrets: &BTreeMap<String, String>,
    ) -> Vec<crate::error::FieldViolation> {
        Vec::new()
    }
}

/// Tells a sink that its run was cancelled or taken over by another worker, so that it stops
/// between requests (and in a request or a retry's wait) instead of at the end of a batch.
#[derive(Clone, Default)]
pub struct Cancellation {
    signals: Vec<tokio::sync::watch::Receiver<bool>>,
}

impl Cancellation {
    /// Cancelled when any of `signals` turns true.
    pub fn of(signals: Vec<tokio::sync::watch::Receiver<bool>>) -> Cancellation {
        Cancellation { signals }
    }

    pub fn is_cancelled(&self) -> bool {
        self.signals.iter().any(|s| *s.borrow())
    }

    /// Resolves once the run is cancelled (never, without signals).
    pub async fn cancelled(&self) {
        let waits = self.signals.iter().cloned().map(|mut signal| {
            Box::pin(async move {
                // A closed channel (the run's owner is gone) counts as cancelled too.
                let _ = signal.wait_for(|cancelled| *cancelled).await;
            })
        });
        let waits: Vec<_> = waits.collect();
        if waits.is_empty() {
            return std::future::pending().await;
        }
        futures::future::select_all(waits).await;
    }

    /// Runs `work` unless the run is cancelled first: then a permanent failure saying so (the
    /// pipeline reports the run as cancelled, not failed).
    pub async fn unless_cancelled<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, crate::connectors::retry::Failure>>,
    ) -> Result<T, crate::connectors::retry::Failure> {
        let stopped = || crate::connectors::retry::Failure::Permanent {
            message: "the run was cancelled".into(),
        };
        if self.is_cancelled() {
            return Err(stopped());
        }
        tokio::select! {
            result = work => result,
            _ = self.cancelled() => Err(stopped()),
        }
    }
}

/// A run as a connector sees it.
pub struct RunTarget<'a> {
    pub target: Target<'a>,
    pub export_id: &'a str,
    pub run_id: &'a str,
    /// Resource names, for targets that tell their receiver what it is being sent.
    pub export_name: &'a str,
    pub run_name: &'a str,
    /// The attempt of the run (a taken-over run continues as its next attempt).
    pub attempt: i32,
    /// Set when the run is cancelled or lost: sinks that make many requests stop between them.
    pub cancellation: Cancellation,
    /// Stable across attempts of the run, so that a retried attempt writes to the same place.
    pub run_time: chrono::DateTime<chrono::Utc>,
    pub settings: &'a BTreeMap<String, String>,
    /// Every part the run will write, in order: a sink that must refuse before writing
    /// anything (a table that does not fit) looks at all of them when it opens.
    pub parts: &'a [PartSchema],
    /// `keep_runs`: the earlier runs whose files stay at the target; older ones are removed
    /// after the commit. None keeps everything.
    pub keep_runs: Option<&'a [String]>,
    /// Audience targets: the audience each segment (by id) filled in earlier runs of the export,
    /// so that a run reuses it instead of finding or creating one again.
    pub audiences: &'a BTreeMap<String, Audience>,
}

/// The audience (list, custom audience, user list) at the target that one segment fills.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audience {
    pub id: String,
    pub name: String,
}

/// What a sink that sends records in API requests of bounded size declares (PRODUCT.md §11):
/// the pipeline cuts the rows to these limits and hands a sink up to `concurrency` batches at
/// once, so that no connector re-batches and every answer is for one known batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SinkLimits {
    /// Records + removals in one request.
    pub records_per_batch: usize,
    /// The rows' JSON size in one request (a bound on the body), if the vendor limits it.
    pub bytes_per_batch: Option<usize>,
    /// Requests per second for the connection (the vendor's published rate), if limited.
    pub requests_per_second: Option<f64>,
    /// Requests in flight at once for the connection.
    pub concurrency: usize,
}

impl SinkLimits {
    /// The pacing of the connection's requests these limits ask for.
    pub fn pace(&self) -> http::gate::Pace {
        http::gate::Pace {
            requests_per_second: self.requests_per_second,
            concurrency: self.concurrency,
        }
    }
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
    /// The entity's or segment's resource name.
    pub source: String,
    pub description: String,
    pub primary_key: String,
    pub columns: Vec<Column>,
    /// Rows then end with the `_deleted` boolean.
    pub incremental: bool,
    /// The key column is not one of the mapped fields: the pipeline added it so that removals
    /// and rejects can name their record (targets that map columns to vendor fields skip it).
    pub added_key: bool,
    /// How many records or members the source has (segments: the member count at run start).
    pub estimated_records: u64,
    /// The rows are every record or member of the source (a full run, or an incremental
    /// export's first delivery), not only the changes since the last delivery: a target that
    /// rebuilds what it holds (a `postgres` table in `replace` mode) starts from nothing.
    pub complete: bool,
}

/// What a committed run left at the target.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SinkSummary {
    pub files: Vec<String>,
    pub bytes: u64,
    /// Where to look, e.g. the URL of model.json.
    pub location: String,
    /// `keep_runs`: folders of older runs removed after the commit.
    pub removed_run_folders: usize,
    /// Why removing older runs' files failed, if it did (the commit stands).
    pub cleanup_error: Option<String>,
}

/// Reasons of rejected records are cut to this many bytes (PRODUCT.md §12).
pub const MAX_REASON_BYTES: usize = 1024;

/// A record the target refused (PRODUCT.md §12): its key, the target's reason and code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub key: String,
    /// At most [`MAX_REASON_BYTES`] (cut at a character boundary).
    pub reason: String,
    pub code: String,
}

impl Rejection {
    pub fn new(key: impl Into<String>, reason: &str, code: impl Into<String>) -> Rejection {
        Rejection {
            key: key.into(),
            reason: truncate_bytes(reason, MAX_REASON_BYTES).to_string(),
            code: code.into(),
        }
    }
}

/// The longest prefix of `text` of at most `max` bytes that ends at a character boundary.
pub fn truncate_bytes(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// What a target made of the rows handed to it: records accepted, removals done, records
/// rejected (the rest of a batch is still delivered).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delivery {
    pub accepted: u64,
    pub removed: u64,
    pub rejected: Vec<Rejection>,
    /// Records the target refused without saying which (Meta reports a count of invalid
    /// entries and names only samples of them): counted as rejected, not listed.
    pub unlisted_rejects: u64,
    /// Bytes written so far, for sinks that count them.
    pub bytes: Option<u64>,
}

/// One batch's request (see [`Sink::start_batches`]): it owns what it sends, so that it runs
/// beside the pipeline's reading and the other requests in flight.
pub type BatchRequest = futures::future::BoxFuture<'static, Result<Delivery, Failure>>;

/// Where one run's rows go. Parts are written one after another; `commit` makes the whole run
/// visible at once (commit last), `abort` removes what the run wrote.
///
/// A sink may hold rows back (to fill a batch, or to know which batch is a source's last): it
/// answers for the rows it actually delivered, in `write_rows` or at the latest in `end_part`.
#[async_trait]
pub trait Sink: Send {
    async fn begin_part(&mut self, part: &PartSchema) -> Result<(), Failure>;
    /// Rows in column order (then `_deleted` for incremental parts).
    async fn write_rows(&mut self, rows: Vec<Vec<Value>>) -> Result<Delivery, Failure>;
    async fn end_part(&mut self) -> Result<Delivery, Failure>;
    /// Sinks that send records in requests of bounded size declare their limits: the pipeline
    /// then calls [`start_batches`](Sink::start_batches) instead of `write_rows`, with rows
    /// cut to them, and each batch is answered for on its own (nothing held back).
    fn limits(&self) -> Option<SinkLimits> {
        None
    }

    /// Batches within the limits, prepared and numbered now, in order (`last`: these are the
    /// part's final batches), each as the request that sends it. The pipeline runs up to
    /// [`SinkLimits::concurrency`] of them at once — a sliding window: the next batch starts
    /// as soon as any answer is in — and takes each answer as it comes. A batch that failed
    /// does not undo the others' answers: what they confirmed is kept. Only sinks that declare
    /// limits are asked.
    fn start_batches(&mut self, batches: Vec<Vec<Vec<Value>>>, last: bool) -> Vec<BatchRequest> {
        let _ = last;
        batches
            .into_iter()
            .map(|_| -> BatchRequest {
                Box::pin(async {
                    Err(Failure::Permanent {
                        message: "this target declares request limits but sends no batches".into(),
                    })
                })
            })
            .collect()
    }

    /// The audience the open part fills (after `begin_part`), for targets that have one: the
    /// pipeline remembers it for the export's later runs.
    fn audience(&self) -> Option<Audience> {
        None
    }

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
        Err(Failure::Unsupported {
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

/// Which step of reaching a server over the network an error message shows failed, if any
/// (the messages of reqwest/hyper/rustls and of the operating system).
pub fn network_step(message: &str) -> Option<&'static str> {
    let lower = message.to_ascii_lowercase();
    if lower.contains("dns error")
        || lower.contains("failed to lookup address")
        || lower.contains("name or service not known")
    {
        Some("dns")
    } else if lower.contains("connection refused")
        || lower.contains("tcp connect error")
        || lower.contains("connection reset")
        || lower.contains("timed out")
        || lower.contains("network is unreachable")
    {
        Some("tcp_connect")
    } else if lower.contains("certificate") || lower.contains("tls") || lower.contains("handshake") {
        Some("tls")
    } else {
        None
    }
}

/// rustls needs one process-wide crypto provider; ring is the one exportd builds (no
/// aws-lc-rs). Installing it twice is harmless.
pub fn ensure_tls_provider() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The connector of a type id (the registry's list of built connectors; a type of the
/// catalogue without one says so plainly).
pub fn connector_for(type_id: &str) -> &'static dyn Connector {
    registry::connector(type_id).unwrap_or(&NotYetSupported)
}
