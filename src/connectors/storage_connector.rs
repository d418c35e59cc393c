//! One connector for every storage type (`local-files`, `s3`, `azure-blob`, `sftp`): each type
//! only says how its configuration becomes a [`ByteStore`] (a [`StorageKind`]); everything
//! else is here, once — export settings, the CDM folder written through the store, cleanup of a
//! failed or cancelled run, the "already committed by this run" check of a taken-over attempt,
//! and the probe-based connection test (list, write, read back, delete).

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;

use super::cdm::{CdmAttribute, CdmEntity, CdmFolderWriter, CdmType, CsvOptions, MODEL_JSON, ParquetCompression};
use super::metered::MeteredStorage;
use super::storage::ByteStore;
use super::storage::blocking::BlockingStorage;
use super::{Check, Connector, Delivery, PartSchema, RunTarget, Sink, SinkSummary, Target, TestReport, io_failure};
use crate::connectors::retry::Failure;
use crate::domain::output_area::export_folder;
use crate::error::FieldViolation;

/// What one storage type contributes.
#[async_trait]
pub trait StorageKind: Send + Sync + 'static {
    /// Checks made before the store is opened (e.g. that a local root is allowed and exists).
    /// A failed one ends the connection test.
    async fn preflight(&self, _target: &Target<'_>) -> Vec<Check> {
        Vec::new()
    }

    /// The store rooted at the connection's folder, bucket prefix or container prefix.
    async fn open(&self, target: &Target<'_>) -> Result<Arc<dyn ByteStore>, Failure>;

    /// The steps of reaching the target, in order, as the connection test reports them
    /// (`dns`, `tcp_connect`, `tls`, `authentication`, `bucket_exists`, …); empty for a local
    /// folder.
    fn reach_steps(&self) -> &'static [&'static str] {
        &[]
    }

    /// Which of [`reach_steps`](Self::reach_steps) a failure to list the root means.
    fn failed_step(&self, _failure: &Failure) -> &'static str {
        "reach"
    }

    /// Where the connection writes, as message prefixes to hide from callers who may not see
    /// the connection.
    fn private_locations(&self, _target: &Target<'_>) -> Vec<String> {
        Vec::new()
    }

    /// A connection test of the type's own (its steps say more than list-write-delete);
    /// `None` uses the generic probe.
    async fn probe(&self, _target: &Target<'_>) -> Option<Vec<Check>> {
        None
    }

    /// Checks of configuration and secrets beyond their value kinds (a key that must parse).
    fn check_config(
        &self,
        _config: &BTreeMap<String, String>,
        _secrets: &BTreeMap<String, String>,
    ) -> Vec<FieldViolation> {
        Vec::new()
    }
}

/// The connector of a storage type.
pub struct StorageConnector<K>(pub K);

/// The probe object a connection test writes and removes.
fn probe_path() -> String {
    format!(".exportd-probe-{}", crate::domain::names::generate_id("p"))
}

#[async_trait]
impl<K: StorageKind> Connector for StorageConnector<K> {
    async fn test(&self, target: &Target<'_>) -> TestReport {
        if let Some(checks) = self.0.probe(target).await {
            return TestReport { checks };
        }
        let mut checks = self.0.preflight(target).await;
        if checks.iter().any(|c| !c.ok) {
            return TestReport { checks };
        }
        let store = match self.0.open(target).await {
            Ok(store) => store,
            Err(failure) => {
                checks.push(Check::fail("configuration", failure.message()));
                return TestReport { checks };
            }
        };
        let steps = self.0.reach_steps();
        // An `endpoint` of plain http (a local S3 or Azure emulator) has no TLS to pass.
        let plain_http = target.config("endpoint").starts_with("http://");
        let passed = |step: &str| match step {
            "tls" if plain_http => Check::pass(step, "tls: not used (the endpoint is plain http)"),
            _ => Check::pass(step, format!("{step}: ok")),
        };
        match store.list("").await {
            Ok(_) => checks.extend(steps.iter().map(|step| passed(step))),
            Err(failure) => {
                let failed = self.0.failed_step(&failure);
                for step in steps.iter().take_while(|s| **s != failed) {
                    checks.push(passed(step));
                }
                checks.push(Check::fail(failed, failure.message()));
                return TestReport { checks };
            }
        }
        let probe = probe_path();
        let written = async {
            store
                .put(&probe, bytes::Bytes::from_static(b"exportd connection test"))
                .await?;
            let read = store.get(&probe).await?;
            store.delete(&probe).await?;
            match read {
                Some(bytes) if &bytes[..] == b"exportd connection test" => Ok(()),
                _ => Err(Failure::Permanent {
                    message: "the probe object read back differs from what was written".into(),
                }),
            }
        }
        .await;
        match written {
            Ok(()) => checks.push(Check::pass(
                "folder_writable",
                format!("wrote, read back and removed a probe object in {}", store.url("")),
            )),
            Err(failure) => {
                let _ = store.delete(&probe).await;
                checks.push(Check::fail("folder_writable", failure.message()));
            }
        }
        TestReport { checks }
    }

    /// Each row as a partition holds it: the columns, then `_deleted` for incremental parts.
    fn sample(
        &self,
        _run: &RunTarget<'_>,
        part: &PartSchema,
        rows: Vec<Vec<Value>>,
    ) -> Vec<serde_json::Map<String, Value>> {
        let mut names: Vec<String> = part.columns.iter().map(|c| c.name.clone()).collect();
        if part.incremental {
            names.push("_deleted".into());
        }
        rows.into_iter()
            .map(|row| names.iter().cloned().zip(row).collect())
            .collect()
    }

    async fn open_sink(&self, run: &RunTarget<'_>) -> Result<Box<dyn Sink>, Failure> {
        let options = file_options(run.settings);
        let store = self.0.open(&run.target).await?;
        let folder = export_folder(run.export_id, run.settings);
        let runtime = tokio::runtime::Handle::current();
        let export_id = run.export_id.to_string();
        let run_id = run.run_id.to_string();
        let run_time = run.run_time;
        let keep_runs: Option<Vec<String>> = run.keep_runs.map(<[String]>::to_vec);
        // Metrics label the type by its id from the catalogue (a bounded set).
        let connection_type = super::registry::find(&run.target.connection.type_id).map_or("unknown", |spec| spec.id);
        // The run's span, so that the storage's request spans are its children on the
        // blocking thread too.
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            let _run = span.enter();
            let storage = BlockingStorage::new(store, runtime);
            // An earlier attempt of this very run may have committed before its process died
            // (between the commit and recording the outcome): its files are complete and must
            // not be rewritten; this attempt reads its records again (for its counts) and
            // keeps them.
            if let Some(summary) = CdmFolderWriter::committed_by_run(&storage, &folder, &run_id) {
                return Ok(Box::new(AlreadyCommitted {
                    summary: SinkSummary {
                        files: summary.files,
                        bytes: summary.bytes,
                        location: summary.model_json_location,
                        ..SinkSummary::default()
                    },
                }) as Box<dyn Sink>);
            }
            let metered = MeteredStorage::new(storage, connection_type);
            let mut writer = CdmFolderWriter::new(Box::new(metered), &folder, &export_id, &run_id, run_time, options);
            if let Some(keep) = keep_runs {
                writer.keep_only_runs(keep);
            }
            Ok(Box::new(CdmSink::new(writer)) as Box<dyn Sink>)
        })
        .await
        .map_err(|e| Failure::Permanent { message: e.to_string() })?
    }

    fn private_locations(&self, target: &Target<'_>) -> Vec<String> {
        self.0.private_locations(target)
    }

    fn check_config(
        &self,
        config: &BTreeMap<String, String>,
        secrets: &BTreeMap<String, String>,
    ) -> Vec<FieldViolation> {
        self.0.check_config(config, secrets)
    }
}

/// File options from the export's settings (validated when the export was saved).
pub fn file_options(settings: &BTreeMap<String, String>) -> CsvOptions {
    let mut options = CsvOptions::default();
    if let Some(d) = settings.get("delimiter").and_then(|d| d.bytes().next()) {
        options.delimiter = d;
    }
    let compression = settings.get("compression").map(String::as_str).unwrap_or("none");
    if settings.get("format").is_some_and(|f| f == "parquet") {
        options.parquet = Some(match compression {
            "zstd" => ParquetCompression::Zstd,
            "none" => ParquetCompression::None,
            _ => ParquetCompression::Snappy,
        });
    } else {
        options.gzip = compression == "gzip";
    }
    if let Some(n) = settings.get("max_rows_per_file").and_then(|n| n.parse().ok()) {
        options.max_rows_per_file = n;
    }
    options
}

/// Drives the (blocking) CDM writer from async code, one blocking call at a time. A batch is
/// encoded on a blocking thread while the pipeline reads and parses the next one: what
/// `write_rows` answers is the delivery of the batch before (the last one's comes with
/// `end_part`), as the contract allows.
struct CdmSink {
    /// The writer, while no batch is being encoded.
    writer: Option<CdmFolderWriter>,
    /// The batch being encoded (its row count); the writer comes back with its result.
    in_flight: Option<(u64, Encoding)>,
}

type Encoding = tokio::task::JoinHandle<(CdmFolderWriter, std::io::Result<u64>)>;

impl CdmSink {
    fn new(writer: CdmFolderWriter) -> CdmSink {
        CdmSink {
            writer: Some(writer),
            in_flight: None,
        }
    }

    /// Waits for the batch being encoded, if any, and says what became of it.
    async fn settle(&mut self) -> Result<Delivery, Failure> {
        let Some((accepted, encoding)) = self.in_flight.take() else {
            return Ok(Delivery::default());
        };
        let (writer, result) = encoding
            .await
            .map_err(|e| Failure::Permanent { message: e.to_string() })?;
        self.writer = Some(writer);
        let bytes = result.map_err(|e| io_failure("cannot write rows", e))?;
        Ok(Delivery {
            accepted,
            bytes: Some(bytes),
            ..Delivery::default()
        })
    }

    /// Once nothing is being encoded, runs `op` on the writer on a blocking thread.
    async fn with_writer<T: Send + 'static>(
        &mut self,
        context: &'static str,
        op: impl FnOnce(&mut CdmFolderWriter) -> std::io::Result<T> + Send + 'static,
    ) -> Result<T, Failure> {
        debug_assert!(self.in_flight.is_none(), "settle the batch being encoded first");
        let mut writer = self.writer.take().ok_or_else(|| Failure::Permanent {
            message: "the sink is closed".into(),
        })?;
        let (writer, result) = tokio::task::spawn_blocking(move || {
            let result = op(&mut writer);
            (writer, result)
        })
        .await
        .map_err(|e| Failure::Permanent { message: e.to_string() })?;
        self.writer = Some(writer);
        result.map_err(|e| io_failure(context, e))
    }
}

impl Drop for CdmSink {
    /// A sink dropped mid-run (its run was cancelled or its future dropped) cleans up on a
    /// blocking thread: the writer's cleanup talks to the store synchronously.
    fn drop(&mut self) {
        if let Some(writer) = self.writer.take() {
            tokio::task::spawn_blocking(move || drop(writer));
        }
        // A batch being encoded drops its writer on its blocking thread when it is done.
    }
}

fn cdm_entity(part: &PartSchema) -> CdmEntity {
    CdmEntity {
        id: part.id.clone(),
        description: part.description.clone(),
        primary_key: part.primary_key.clone(),
        attributes: part
            .columns
            .iter()
            .map(|c| CdmAttribute {
                name: c.name.clone(),
                data_type: CdmType::of(c.field_type),
                description: c.description.clone(),
                mapping: c.mapping.clone(),
            })
            .collect(),
        incremental: part.incremental,
    }
}

#[async_trait]
impl Sink for CdmSink {
    async fn begin_part(&mut self, part: &PartSchema) -> Result<(), Failure> {
        let entity = cdm_entity(part);
        self.with_writer("cannot start a partition", move |w| w.begin_entity(entity))
            .await
    }

    /// Files take every row: storage targets reject nothing. Encoding this batch overlaps
    /// reading the next.
    async fn write_rows(&mut self, rows: Vec<Vec<Value>>) -> Result<Delivery, Failure> {
        let delivered = self.settle().await?;
        let mut writer = self.writer.take().ok_or_else(|| Failure::Permanent {
            message: "the sink is closed".into(),
        })?;
        let accepted = rows.len() as u64;
        let encoding = tokio::task::spawn_blocking(move || {
            let result = writer.write_rows(&rows);
            (writer, result)
        });
        self.in_flight = Some((accepted, encoding));
        Ok(delivered)
    }

    async fn end_part(&mut self) -> Result<Delivery, Failure> {
        let delivered = self.settle().await?;
        self.with_writer("cannot close a partition", |w| w.end_entity()).await?;
        Ok(delivered)
    }

    async fn commit(mut self: Box<Self>) -> Result<SinkSummary, Failure> {
        self.settle().await?;
        let writer = self.writer.take().ok_or_else(|| Failure::Permanent {
            message: "the sink is closed".into(),
        })?;
        let summary = tokio::task::spawn_blocking(move || writer.commit())
            .await
            .map_err(|e| Failure::Permanent { message: e.to_string() })?
            .map_err(|e| io_failure(&format!("cannot commit {MODEL_JSON}"), e))?;
        Ok(SinkSummary {
            files: summary.files,
            bytes: summary.bytes,
            location: summary.model_json_location,
            removed_run_folders: summary.pruned.folders,
            cleanup_error: summary.pruned.error,
        })
    }

    async fn abort(mut self: Box<Self>) {
        let _ = self.settle().await;
        if let Some(writer) = self.writer.take() {
            let _ = tokio::task::spawn_blocking(move || writer.abort()).await;
        }
    }

    async fn abandon(mut self: Box<Self>) {
        let _ = self.settle().await;
        if let Some(writer) = self.writer.take() {
            writer.abandon();
        }
    }
}

/// The sink of an attempt whose run was already committed by an earlier attempt.
struct AlreadyCommitted {
    summary: SinkSummary,
}

#[async_trait]
impl Sink for AlreadyCommitted {
    async fn begin_part(&mut self, _: &PartSchema) -> Result<(), Failure> {
        Ok(())
    }

    async fn write_rows(&mut self, rows: Vec<Vec<Value>>) -> Result<Delivery, Failure> {
        Ok(Delivery {
            accepted: rows.len() as u64,
            bytes: Some(self.summary.bytes),
            ..Delivery::default()
        })
    }

    async fn end_part(&mut self) -> Result<Delivery, Failure> {
        Ok(Delivery::default())
    }

    async fn commit(self: Box<Self>) -> Result<SinkSummary, Failure> {
        Ok(self.summary)
    }

    async fn abort(self: Box<Self>) {}
}
