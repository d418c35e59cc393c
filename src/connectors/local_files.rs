//! `local-files`: exports written as a CDM folder under a folder of the server's file system.

use async_trait::async_trait;
use serde_json::Value;

use super::cdm::{CdmAttribute, CdmEntity, CdmFolderWriter, CdmType, CsvOptions, LocalStorage};
use super::{Check, Connector, PartSchema, RunTarget, Sink, SinkSummary, Target, TestReport, io_failure, local_root};
use crate::domain::catalog::field_type_str;
use crate::engine::retry::Failure;

pub struct LocalFiles;

#[async_trait]
impl Connector for LocalFiles {
    /// The folder must exist or be creatable, and be writable (proved by writing, syncing and
    /// removing a probe file).
    async fn test(&self, target: &Target<'_>) -> TestReport {
        let root = local_root(target.connection, target.exports_root);
        let mut checks = Vec::new();
        let shown = root.display().to_string();
        match tokio::fs::create_dir_all(&root).await {
            Ok(()) => checks.push(Check::pass("folder_exists", format!("folder {shown} exists"))),
            Err(e) => {
                checks.push(Check::fail(
                    "folder_exists",
                    format!("cannot create folder {shown}: {e}"),
                ));
                return TestReport { checks };
            }
        }
        let probe = root.join(format!(".exportd-probe-{}", std::process::id()));
        let write = async {
            tokio::fs::write(&probe, b"exportd connection test").await?;
            let written = tokio::fs::read(&probe).await?;
            tokio::fs::remove_file(&probe).await?;
            Ok::<_, std::io::Error>(written.len())
        };
        match write.await {
            Ok(_) => checks.push(Check::pass(
                "folder_writable",
                format!("wrote and removed a probe file in {shown}"),
            )),
            Err(e) => checks.push(Check::fail("folder_writable", format!("cannot write in {shown}: {e}"))),
        }
        TestReport { checks }
    }

    async fn open_sink(&self, run: &RunTarget<'_>) -> Result<Box<dyn Sink>, Failure> {
        let settings = run.settings;
        if let Some(format) = settings.get("format").filter(|f| *f != "csv") {
            return Err(Failure::Permanent {
                message: format!("format '{format}' is not supported by this version of exportd yet; use csv"),
            });
        }
        let options = csv_options(settings);
        let root = local_root(run.target.connection, run.target.exports_root);
        let folder = settings
            .get("folder")
            .cloned()
            .unwrap_or_else(|| run.export_id.to_string());
        let shown = root.display().to_string();
        let storage = tokio::task::spawn_blocking(move || LocalStorage::new(root))
            .await
            .map_err(|e| Failure::Permanent { message: e.to_string() })?
            .map_err(|e| io_failure(&format!("cannot open the export folder {shown}"), e))?;
        // An earlier attempt of this very run may have committed before its process died
        // (between the commit and recording the outcome): its files are complete and must not
        // be rewritten; this attempt reads its records again (for its counts) and keeps them.
        if let Some(summary) = committed_by_this_run(&storage, &folder, run.run_id) {
            return Ok(Box::new(AlreadyCommitted { summary }));
        }
        let mut writer = CdmFolderWriter::new(
            Box::new(storage),
            &folder,
            run.export_id,
            run.run_id,
            run.run_time,
            options,
        );
        if let Some(keep) = run.keep_runs {
            writer.keep_only_runs(keep.iter().cloned());
        }
        Ok(Box::new(CdmSink { writer: Some(writer) }))
    }
}

/// CSV options from the export's settings (validated when the export was saved).
pub fn csv_options(settings: &std::collections::BTreeMap<String, String>) -> CsvOptions {
    let mut options = CsvOptions::default();
    if let Some(d) = settings.get("delimiter").and_then(|d| d.bytes().next()) {
        options.delimiter = d;
    }
    options.gzip = settings.get("compression").is_some_and(|c| c == "gzip");
    if let Some(n) = settings.get("max_rows_per_file").and_then(|n| n.parse().ok()) {
        options.max_rows_per_file = n;
    }
    options
}

/// Drives the (blocking) CDM writer from async code, one blocking call at a time.
struct CdmSink {
    writer: Option<CdmFolderWriter>,
}

impl CdmSink {
    async fn with_writer<T: Send + 'static>(
        &mut self,
        context: &'static str,
        op: impl FnOnce(&mut CdmFolderWriter) -> std::io::Result<T> + Send + 'static,
    ) -> Result<T, Failure> {
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
                data_type: CdmType::from_field_type(field_type_str(c.field_type)).unwrap_or(CdmType::String),
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

    async fn write_rows(&mut self, rows: Vec<Vec<Value>>) -> Result<u64, Failure> {
        self.with_writer("cannot write rows", move |w| w.write_rows(&rows))
            .await
    }

    async fn end_part(&mut self) -> Result<(), Failure> {
        self.with_writer("cannot close a partition", |w| w.end_entity()).await
    }

    async fn commit(mut self: Box<Self>) -> Result<SinkSummary, Failure> {
        let writer = self.writer.take().ok_or_else(|| Failure::Permanent {
            message: "the sink is closed".into(),
        })?;
        let summary = tokio::task::spawn_blocking(move || writer.commit())
            .await
            .map_err(|e| Failure::Permanent { message: e.to_string() })?
            .map_err(|e| io_failure("cannot write model.json", e))?;
        Ok(SinkSummary {
            files: summary.files,
            bytes: summary.bytes,
            location: summary.model_json_location,
            removed_run_folders: summary.pruned.folders,
            cleanup_error: summary.pruned.error,
        })
    }

    async fn abort(mut self: Box<Self>) {
        if let Some(writer) = self.writer.take() {
            let _ = tokio::task::spawn_blocking(move || writer.abort()).await;
        }
    }

    async fn abandon(mut self: Box<Self>) {
        if let Some(writer) = self.writer.take() {
            writer.abandon();
        }
    }
}

/// What an existing model.json shows of a run that committed it, if `run_id` did.
fn committed_by_this_run(storage: &LocalStorage, folder: &str, run_id: &str) -> Option<SinkSummary> {
    use super::cdm::{CdmStorage, MODEL_JSON};
    let model_path = format!("{folder}/{MODEL_JSON}");
    let bytes = storage.read_file(&model_path).ok()??;
    let model: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let committed_by = model["annotations"]
        .as_array()?
        .iter()
        .find(|a| a["name"] == "runId")
        .and_then(|a| a["value"].as_str())?;
    if committed_by != run_id {
        return None;
    }
    let mut files = Vec::new();
    let mut bytes_total = 0;
    for entity in model["entities"].as_array()? {
        for partition in entity["partitions"].as_array()? {
            let location = partition["location"].as_str()?;
            let path = location.strip_prefix("file://").unwrap_or(location);
            bytes_total += std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
            files.push(location.to_string());
        }
    }
    Some(SinkSummary {
        files,
        bytes: bytes_total,
        location: storage.location(&model_path),
        ..SinkSummary::default()
    })
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

    async fn write_rows(&mut self, _: Vec<Vec<Value>>) -> Result<u64, Failure> {
        Ok(self.summary.bytes)
    }

    async fn end_part(&mut self) -> Result<(), Failure> {
        Ok(())
    }

    async fn commit(self: Box<Self>) -> Result<SinkSummary, Failure> {
        Ok(self.summary)
    }

    async fn abort(self: Box<Self>) {}
}
