//! `local-files`: exports written as a CDM folder on the server's file system, under the
//! connection's area (its `root`, else `<exports_root>/<environment>/<connection>`; see
//! `domain::output_area`). Folders are created only below the allowed root (or the exports
//! root) that contains the area, never above it, with the operator's `export_file_mode`.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde_json::Value;

use super::cdm::{CdmAttribute, CdmEntity, CdmFolderWriter, CdmType, CsvOptions, LocalStorage, file_url};
use super::{Check, Connector, PartSchema, RunTarget, Sink, SinkSummary, Target, TestReport, io_failure};
use crate::domain::catalog::field_type_str;
use crate::domain::output_area::{area_base, export_folder, local_area};
use crate::engine::retry::Failure;
use crate::file_modes::{create_file, create_folders_below, folder_mode};

pub struct LocalFiles;

/// Creates the exports root (owner only, its missing parents too) at start, so that default
/// areas are always created below an existing folder. Folders that exist are left alone.
pub fn prepare_exports_root(exports_root: &Path, file_mode: u32) -> std::io::Result<()> {
    if exports_root.is_dir() {
        return Ok(());
    }
    crate::file_modes::create_private_folder(exports_root)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(exports_root, std::fs::Permissions::from_mode(folder_mode(file_mode)))?;
    }
    Ok(())
}

/// Where a connection writes: its area, and the existing folder the area is created in. None
/// when its `root` is no longer inside the operator's allowed roots.
fn area_of(target: &Target<'_>) -> Option<(PathBuf, PathBuf)> {
    let area = local_area(target.connection, target.local_roots.exports_root);
    let base = area_base(target.connection, &target.local_roots)?.to_path_buf();
    Some((area, base))
}

#[async_trait]
impl Connector for LocalFiles {
    /// The root must be allowed, its folder exist or be creatable (below the allowed root),
    /// and be writable (proved by writing, syncing and removing a probe file).
    async fn test(&self, target: &Target<'_>) -> TestReport {
        let mut checks = Vec::new();
        let shown = local_area(target.connection, target.local_roots.exports_root)
            .display()
            .to_string();
        let Some((area, base)) = area_of(target) else {
            let allowed: Vec<String> = target
                .local_roots
                .allowed
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            checks.push(Check::fail(
                "root_allowed",
                format!(
                    "{shown} is not inside the server's allowed_roots ({}); nothing was created",
                    allowed.join(", ")
                ),
            ));
            return TestReport { checks };
        };
        checks.push(Check::pass(
            "root_allowed",
            format!("{shown} lies inside {}", base.display()),
        ));
        let mode = target.export_file_mode;
        let folder = area.clone();
        let created =
            tokio::task::spawn_blocking(move || create_folders_below(&base, &folder, folder_mode(mode))).await;
        match created {
            Ok(Ok(())) => checks.push(Check::pass("folder_exists", format!("folder {shown} exists"))),
            Ok(Err(e)) => {
                checks.push(Check::fail(
                    "folder_exists",
                    format!("cannot create folder {shown}: {e}"),
                ));
                return TestReport { checks };
            }
            Err(e) => {
                checks.push(Check::fail("folder_exists", e.to_string()));
                return TestReport { checks };
            }
        }
        let probe = area.join(format!(".exportd-probe-{}", std::process::id()));
        let written = tokio::task::spawn_blocking(move || write_probe(&probe, mode)).await;
        match written {
            Ok(Ok(())) => checks.push(Check::pass(
                "folder_writable",
                format!("wrote and removed a probe file in {shown}"),
            )),
            Ok(Err(e)) => checks.push(Check::fail("folder_writable", format!("cannot write in {shown}: {e}"))),
            Err(e) => checks.push(Check::fail("folder_writable", e.to_string())),
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
        let (area, base) = area_of(&run.target).ok_or_else(|| Failure::Permanent {
            message: "the connection's root is not inside the server's allowed_roots (they changed since it was \
                      saved); an admin must set another root"
                .into(),
        })?;
        let folder = export_folder(run.export_id, settings);
        let mode = run.target.export_file_mode;
        let shown = area.display().to_string();
        let storage = tokio::task::spawn_blocking(move || {
            create_folders_below(&base, &area, folder_mode(mode))?;
            LocalStorage::new(area).map(|storage| storage.with_file_mode(mode))
        })
        .await
        .map_err(|e| Failure::Permanent { message: e.to_string() })?
        .map_err(|e| io_failure(&format!("cannot create {shown}"), e))?;
        // An earlier attempt of this very run may have committed before its process died
        // (between the commit and recording the outcome): its files are complete and must not
        // be rewritten; this attempt reads its records again (for its counts) and keeps them.
        if let Some(summary) = committed_by_this_run(&storage, &folder, run.run_id) {
            return Ok(Box::new(AlreadyCommitted { summary }));
        }
        let writer = CdmFolderWriter::new(
            Box::new(super::metered::MeteredStorage::new(storage, "local-files")),
            &folder,
            run.export_id,
            run.run_id,
            run.run_time,
            options,
        );
        Ok(Box::new(CdmSink { writer: Some(writer) }))
    }

    fn private_locations(&self, target: &Target<'_>) -> Vec<String> {
        locations_of(&local_area(target.connection, target.local_roots.exports_root))
    }
}

/// The area as configured and as the file system resolves it, as paths and as `file://` URLs
/// (partition locations and model.json's URL use the resolved one).
fn locations_of(area: &Path) -> Vec<String> {
    let mut paths = vec![area.to_path_buf()];
    if let Ok(resolved) = std::fs::canonicalize(area) {
        paths.push(resolved);
    }
    paths
        .iter()
        .flat_map(|path| [path.display().to_string(), file_url(path)])
        .collect()
}

/// Writes, reads back and removes a small file: the folder takes files of the export mode.
fn write_probe(probe: &Path, mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = create_file(probe, mode)?;
    file.write_all(b"exportd connection test")?;
    file.sync_all()?;
    drop(file);
    let written = std::fs::read(probe)?;
    std::fs::remove_file(probe)?;
    if written.len() != b"exportd connection test".len() {
        return Err(std::io::Error::other(
            "the probe file read back differs from what was written",
        ));
    }
    Ok(())
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
