//! Common Data Model (CDM) folders: the data-out format of storage targets (PRODUCT.md §8).
//!
//! One [`CdmFolderWriter`] per export run writes, under the export's folder:
//!
//! ```text
//! model.json
//! <entity_id>/<yyyy>/<MM>/<dd>/<HHmm>-<run id>/<entity_id>_<n>.csv      (.csv.gz with gzip)
//! ```
//!
//! Partition files are streamed: rows go through the csv writer (and gzip) straight into a
//! [`StorageFile`], which becomes visible at its final path only when closed, so memory stays
//! bounded whatever the row count. `model.json` is written last and atomically and lists only
//! this run's partitions; until then readers see the previous run's `model.json` (or none), never
//! a half-written export. The run id in every partition path keeps two runs in one minute apart,
//! and the writer also refuses to create, or to remove, a file the existing `model.json` points to.
//!
//! Storage is behind [`CdmStorage`] so object stores (S3 multipart uploads, Azure staged blocks)
//! can reuse the writer; [`LocalStorage`] is the `local-files` implementation. Everything here is
//! blocking `std` I/O: async callers run the writer in `spawn_blocking`.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, SecondsFormat, Utc};
use flate2::Compression;
use flate2::write::GzEncoder;
use serde::Serialize;
use serde_json::Value;

pub use super::parquet_partition::ParquetCompression;
use super::parquet_partition::{ParquetColumn, ParquetPartition};
use crate::domain::catalog::FieldType;

/// The metadata file of a CDM folder.
pub const MODEL_JSON: &str = "model.json";
/// The last column (and attribute) of incremental exports: `true` marks a deleted record.
pub const DELETED_ATTRIBUTE: &str = crate::domain::export::DELETED_COLUMN;
/// Annotation of `model.json` naming the run that committed it.
const RUN_ID_ANNOTATION: &str = "runId";
/// Annotation of `model.json`: the bytes of the partitions it lists.
const PARTITION_BYTES_ANNOTATION: &str = "partitionBytes";
/// Annotation naming the entity's primary key.
pub const PRIMARY_KEY_ANNOTATION: &str = "primaryKey";
/// Annotation carrying an attribute's mapping details.
pub const MAPPING_ANNOTATION: &str = "mapping";

/// Longest name the CDM schema accepts (entities, attributes, partitions, the model).
const MAX_NAME_CHARS: usize = 256;
/// Longest description the CDM schema accepts.
const MAX_DESCRIPTION_CHARS: usize = 4000;
/// Write buffer of local partition files.
const LOCAL_BUFFER_BYTES: usize = 64 * 1024;

// ---------------------------------------------------------------------------------------------
// What the caller describes
// ---------------------------------------------------------------------------------------------

/// CDM data types of the catalog's field types; the names are the `dataType` strings of
/// `model.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, strum::IntoStaticStr)]
#[strum(serialize_all = "camelCase")]
pub enum CdmType {
    String,
    Int64,
    Double,
    Boolean,
    DateTimeOffset,
    Date,
    Json,
}

impl CdmType {
    /// The `dataType` string of `model.json`.
    pub fn data_type(self) -> &'static str {
        self.into()
    }

    /// The CDM type of a catalog field type.
    pub fn of(field_type: FieldType) -> CdmType {
        match field_type {
            FieldType::String => CdmType::String,
            FieldType::Int64 => CdmType::Int64,
            FieldType::Double => CdmType::Double,
            FieldType::Bool => CdmType::Boolean,
            FieldType::Timestamp => CdmType::DateTimeOffset,
            FieldType::Date => CdmType::Date,
            FieldType::Json => CdmType::Json,
        }
    }
}

/// One column of an entity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CdmAttribute {
    pub name: String,
    pub data_type: CdmType,
    pub description: String,
    /// Mapping details (source field, transformation, …); written as the `mapping` annotation
    /// when not empty.
    pub mapping: String,
}

/// One entity of the export, described before its rows are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CdmEntity {
    /// The entity's id (not its display name): names the CDM entity and its folder.
    pub id: String,
    pub description: String,
    /// Written as the entity's `primaryKey` annotation when not empty.
    pub primary_key: String,
    pub attributes: Vec<CdmAttribute>,
    /// Adds the boolean `_deleted` attribute as the last column; every row then ends with it.
    pub incremental: bool,
}

/// How partition files are written (the storage `settings` of the export).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CsvOptions {
    /// Field delimiter: a printable ASCII character other than `"`, or tab.
    pub delimiter: u8,
    /// Gzip each partition (`.csv.gz`).
    pub gzip: bool,
    /// Rows per partition file before rolling to the next one; 0 means no limit.
    pub max_rows_per_file: u64,
    /// Parquet partitions (with this compression) instead of CSV; the CSV options then do not
    /// apply.
    pub parquet: Option<ParquetCompression>,
}

impl CsvOptions {
    /// Used when the export's settings do not say.
    pub const DEFAULT_MAX_ROWS_PER_FILE: u64 = 1_000_000;

    fn extension(&self) -> &'static str {
        match (self.parquet, self.gzip) {
            (Some(_), _) => "parquet",
            (None, true) => "csv.gz",
            (None, false) => "csv",
        }
    }
}

impl Default for CsvOptions {
    fn default() -> Self {
        CsvOptions {
            delimiter: b',',
            gzip: false,
            max_rows_per_file: CsvOptions::DEFAULT_MAX_ROWS_PER_FILE,
            parquet: None,
        }
    }
}

/// What a committed run wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CdmSummary {
    /// Partition files, as paths relative to the storage root, in the order they were written.
    pub files: Vec<String>,
    /// Bytes written to storage: every partition file plus `model.json`.
    pub bytes: u64,
    /// Data rows written (header rows not counted).
    pub rows: u64,
    /// `model.json`, relative to the storage root.
    pub model_json_path: String,
    /// `model.json` as an absolute URL of the target.
    pub model_json_location: String,
    /// What `keep_runs` removed after the commit (see [`CdmFolderWriter::keep_only_runs`]).
    pub pruned: Pruned,
}

/// The partition folders of older runs removed after a commit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Run folders removed (one per entity and run).
    pub folders: usize,
    /// Why some could not be removed; the commit stands all the same.
    pub error: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Storage
// ---------------------------------------------------------------------------------------------

/// Where the files of CDM folders go and how their locations are written in `model.json`.
///
/// Paths are relative to the storage root, `/`-separated, without `.`/`..` segments. An object
/// store implements [`CdmStorage::create_file`] as a multipart upload (S3) or staged blocks
/// (Azure) completed in [`StorageFile::finish`], and [`CdmStorage::write_file`] as one PUT.
pub trait CdmStorage: Send {
    /// Opens a file to be written incrementally. Nothing appears at `relative_path` until
    /// [`StorageFile::finish`]; an existing file there is replaced at that moment.
    fn create_file(&mut self, relative_path: &str) -> io::Result<Box<dyn StorageFile>>;

    /// Writes a whole file from `source` atomically, replacing any existing one: readers see
    /// the old file or the new one, never a part. Returns the bytes written.
    fn write_file(&mut self, relative_path: &str, source: &mut dyn Read) -> io::Result<u64>;

    /// A whole (small) file, or `None` when there is none.
    fn read_file(&self, relative_path: &str) -> io::Result<Option<Vec<u8>>>;

    /// Removes a file; a missing file is not an error. Storage with real directories may also
    /// remove the directories this leaves empty.
    fn remove_file(&mut self, relative_path: &str) -> io::Result<()>;

    /// The absolute URL of a path as written in `model.json` (`file:///…`, `s3://…`, `https://…`).
    fn location(&self, relative_path: &str) -> String;

    /// What lies directly under a folder (nothing when it does not exist). An object store
    /// lists the common prefixes as folders.
    fn list(&self, relative_path: &str) -> io::Result<Vec<StorageEntry>>;
}

/// One name in a storage folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageEntry {
    pub name: String,
    pub is_folder: bool,
}

/// A file being streamed to storage. Dropping it without [`StorageFile::finish`] must leave
/// nothing at its path (implementations clean up on drop where they can).
pub trait StorageFile: Write + Send {
    /// Flushes and publishes the file at its path; returns its size in bytes.
    fn finish(self: Box<Self>) -> io::Result<u64>;
    /// Abandons the file and removes whatever was written of it.
    fn discard(self: Box<Self>) -> io::Result<()>;
}

/// `local-files`: a folder on this machine.
#[derive(Debug, Clone)]
pub struct LocalStorage {
    root: PathBuf,
    /// Mode of the files written (folders get `x` where it has `r`).
    file_mode: u32,
}

impl LocalStorage {
    /// Uses `root` (created if missing) as the storage root; it is made absolute and
    /// canonical so that `file://` locations are absolute.
    pub fn new(root: impl AsRef<Path>) -> io::Result<LocalStorage> {
        let root = root.as_ref();
        fs::create_dir_all(root)?;
        Ok(LocalStorage {
            root: fs::canonicalize(root)?,
            file_mode: crate::file_modes::PRIVATE_FILE,
        })
    }

    /// Files written get `mode` (default 0600), the folders made for them `x` where it has `r`.
    pub fn with_file_mode(mut self, mode: u32) -> LocalStorage {
        self.file_mode = mode;
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file system path of a storage path.
    pub fn path_of(&self, relative_path: &str) -> io::Result<PathBuf> {
        let mut path = self.root.clone();
        for segment in relative_path.split('/') {
            check_path_segment("storage path segment", segment).map_err(invalid_input)?;
            path.push(segment);
        }
        Ok(path)
    }

    fn prepare_parent(&self, path: &Path) -> io::Result<()> {
        match path.parent() {
            Some(parent) => crate::file_modes::create_folders_below(
                &self.root,
                parent,
                crate::file_modes::folder_mode(self.file_mode),
            ),
            None => Ok(()),
        }
    }
}

impl CdmStorage for LocalStorage {
    fn create_file(&mut self, relative_path: &str) -> io::Result<Box<dyn StorageFile>> {
        let dest = self.path_of(relative_path)?;
        self.prepare_parent(&dest)?;
        let tmp = tmp_path(&dest);
        let file = crate::file_modes::create_file(&tmp, self.file_mode)?;
        Ok(Box::new(LocalFile {
            out: Some(BufWriter::with_capacity(LOCAL_BUFFER_BYTES, file)),
            tmp,
            dest,
            written: 0,
        }))
    }

    fn write_file(&mut self, relative_path: &str, source: &mut dyn Read) -> io::Result<u64> {
        let dest = self.path_of(relative_path)?;
        self.prepare_parent(&dest)?;
        let tmp = tmp_path(&dest);
        let result = write_and_publish(&tmp, &dest, source, self.file_mode);
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    fn read_file(&self, relative_path: &str) -> io::Result<Option<Vec<u8>>> {
        match fs::read(self.path_of(relative_path)?) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err),
        }
    }

    fn remove_file(&mut self, relative_path: &str) -> io::Result<()> {
        let path = self.path_of(relative_path)?;
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        }
        // Prune the run's now empty folders (never the root); remove_dir fails on a non-empty one.
        let mut dir = path.parent();
        while let Some(current) = dir {
            if current == self.root || !current.starts_with(&self.root) || fs::remove_dir(current).is_err() {
                break;
            }
            dir = current.parent();
        }
        Ok(())
    }

    fn list(&self, relative_path: &str) -> io::Result<Vec<StorageEntry>> {
        let path = if relative_path.is_empty() {
            self.root.clone()
        } else {
            self.path_of(relative_path)?
        };
        let entries = match fs::read_dir(&path) {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(err),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry?;
            // Names that are not UTF-8 are no partitions of ours.
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            out.push(StorageEntry {
                name,
                is_folder: entry.file_type()?.is_dir(),
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn location(&self, relative_path: &str) -> String {
        let path = relative_path
            .split('/')
            .filter(|s| !s.is_empty())
            .fold(self.root.clone(), |path, segment| path.join(segment));
        file_url(&path)
    }
}

/// The `file://` URL of an absolute path, as partition locations are written: percent-encoded
/// by the `url` crate, whose `Url::to_file_path` gives the path back (a reader of `model.json`
/// decodes it the same way). A relative path has no file URL; the local stores only have
/// absolute roots, so it is shown as it is.
pub fn file_url(path: &Path) -> String {
    url::Url::from_file_path(path).map_or_else(|()| path.display().to_string(), String::from)
}

/// A local file written to `<name>.tmp` and renamed to `<name>` when finished.
struct LocalFile {
    /// `None` once finished or discarded.
    out: Option<BufWriter<File>>,
    tmp: PathBuf,
    dest: PathBuf,
    written: u64,
}

impl Write for LocalFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let out = self.out.as_mut().ok_or_else(file_closed)?;
        let n = out.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.out.as_mut() {
            Some(out) => out.flush(),
            None => Ok(()),
        }
    }
}

impl StorageFile for LocalFile {
    fn finish(mut self: Box<Self>) -> io::Result<u64> {
        let out = self.out.take().ok_or_else(file_closed)?;
        let result = publish(out, &self.tmp, &self.dest);
        if result.is_err() {
            let _ = fs::remove_file(&self.tmp);
        }
        result.map(|()| self.written)
    }

    fn discard(mut self: Box<Self>) -> io::Result<()> {
        drop(self.out.take());
        match fs::remove_file(&self.tmp) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
            _ => Ok(()),
        }
    }
}

impl Drop for LocalFile {
    fn drop(&mut self) {
        if self.out.take().is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Makes a written temp file durable and moves it to its final name.
fn publish(out: BufWriter<File>, tmp: &Path, dest: &Path) -> io::Result<()> {
    let file = out.into_inner().map_err(|err| err.into_error())?;
    file.sync_all()?;
    drop(file);
    fs::rename(tmp, dest)?;
    sync_parent(dest)
}

fn write_and_publish(tmp: &Path, dest: &Path, source: &mut dyn Read, mode: u32) -> io::Result<u64> {
    let mut out = BufWriter::new(crate::file_modes::create_file(tmp, mode)?);
    let written = io::copy(source, &mut out)?;
    publish(out, tmp, dest)?;
    Ok(written)
}

fn tmp_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    dest.with_file_name(name)
}

/// Makes a rename durable: the directory entry is flushed too.
#[cfg(unix)]
fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(parent) => File::open(parent)?.sync_all(),
        None => Ok(()),
    }
}

#[cfg(not(unix))]
fn sync_parent(_path: &Path) -> io::Result<()> {
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The writer
// ---------------------------------------------------------------------------------------------

/// Writes one export run as a CDM folder. Call [`begin_entity`](Self::begin_entity),
/// [`write_rows`](Self::write_rows) any number of times and [`end_entity`](Self::end_entity) per
/// entity, then [`commit`](Self::commit) — or [`abort`](Self::abort) on cancel or failure.
/// Dropping the writer without either aborts it (best effort).
pub struct CdmFolderWriter {
    storage: Box<dyn CdmStorage>,
    /// The export's folder, normalised (no leading, trailing or doubled `/`).
    folder: String,
    export_id: String,
    run_id: String,
    run_time: DateTime<Utc>,
    options: CsvOptions,
    /// Why the arguments of `new` are unusable; reported by every call.
    invalid: Option<String>,
    /// Locations the `model.json` found at the start points to; loaded by the first entity.
    referenced: Option<HashSet<String>>,
    entities: Vec<ModelEntity>,
    current: Option<OpenEntity>,
    /// Finished partition files of this run (storage paths).
    files: Vec<String>,
    /// Bytes of the finished partition files.
    bytes: u64,
    rows: u64,
    /// A write failed: the files are in an unknown state and the run can only be aborted.
    failed: bool,
    /// Committed or aborted: nothing left for `Drop` to do.
    done: bool,
    /// `keep_runs`: the runs whose partition folders stay after the commit (None: all).
    keep_runs: Option<HashSet<String>>,
}

struct OpenEntity {
    entity: CdmEntity,
    /// The run's folder of this entity.
    dir: String,
    header: Vec<String>,
    partitions: Vec<ModelPartition>,
    open: Option<OpenPartition>,
    next_number: u64,
}

struct OpenPartition {
    encoder: PartitionEncoder,
    relative_path: String,
    name: String,
    rows: u64,
}

/// How a partition's rows become bytes.
enum PartitionEncoder {
    Csv(Box<csv::Writer<Encoded>>),
    Parquet(Box<ParquetPartition<Counting>>),
}

impl PartitionEncoder {
    fn bytes(&self) -> u64 {
        match self {
            PartitionEncoder::Csv(csv) => csv.get_ref().counting().bytes,
            PartitionEncoder::Parquet(parquet) => parquet.output().bytes,
        }
    }

    /// Writes what the encoders still hold (a CSV buffer and gzip trailer, a Parquet row group
    /// and footer) and gives back the file.
    fn finish(self) -> io::Result<Box<dyn StorageFile>> {
        let counting = match self {
            PartitionEncoder::Csv(csv) => csv.into_inner().map_err(|err| err.into_error())?.finish()?,
            PartitionEncoder::Parquet(parquet) => parquet.finish()?,
        };
        counting.file.ok_or_else(file_closed)
    }
}

impl OpenPartition {
    /// Abandons the file. Only the csv writer's buffer still reaches it: the gzip stream is not
    /// finished. If even that fails, dropping the file cleans it up.
    fn discard(self) -> io::Result<()> {
        let file = match self.encoder {
            PartitionEncoder::Csv(csv) => {
                let Ok(mut encoded) = csv.into_inner() else {
                    return Ok(());
                };
                encoded.counting_mut().file.take()
            }
            // Dropping the Parquet writer writes nothing more; its file is abandoned below.
            PartitionEncoder::Parquet(parquet) => {
                let mut parquet = parquet;
                parquet.output_mut().file.take()
            }
        };
        match file {
            Some(file) => file.discard(),
            None => Ok(()),
        }
    }
}

impl CdmFolderWriter {
    /// `folder` = the export's folder (relative to the storage root); `run_id` and `run_time`
    /// (UTC) name the per-run folders. Bad arguments are reported by the first call that uses
    /// them ([`begin_entity`](Self::begin_entity) or [`commit`](Self::commit)).
    pub fn new(
        storage: Box<dyn CdmStorage>,
        folder: &str,
        export_id: &str,
        run_id: &str,
        run_time: DateTime<Utc>,
        options: CsvOptions,
    ) -> Self {
        let (folder, folder_error) = match normalize_folder(folder) {
            Ok(folder) => (folder, None),
            Err(err) => (String::new(), Some(err)),
        };
        let invalid = folder_error
            .or_else(|| check_cdm_name("export id", export_id, false).err())
            .or_else(|| check_path_segment("run id", run_id).err())
            .or_else(|| check_delimiter(options.delimiter).err());
        CdmFolderWriter {
            storage,
            folder,
            export_id: export_id.to_string(),
            run_id: run_id.to_string(),
            run_time,
            options,
            invalid,
            referenced: None,
            entities: Vec::new(),
            current: None,
            files: Vec::new(),
            bytes: 0,
            rows: 0,
            failed: false,
            done: false,
            keep_runs: None,
        }
    }

    /// After the commit, removes the partition folders of every run not in `runs` (this run
    /// is always kept): `keep_runs`, given the last successful runs. Only folders laid out as
    /// this writer lays them out are touched, and never a file the new `model.json` lists.
    pub fn keep_only_runs(&mut self, runs: impl IntoIterator<Item = String>) {
        let mut keep: HashSet<String> = runs.into_iter().collect();
        keep.insert(self.run_id.clone());
        self.keep_runs = Some(keep);
    }

    /// Bytes handed to storage so far (closed files exactly; the open one up to its buffers).
    pub fn bytes_written(&self) -> u64 {
        let open = self
            .current
            .as_ref()
            .and_then(|entity| entity.open.as_ref())
            .map_or(0, |partition| partition.encoder.bytes());
        self.bytes + open
    }

    /// Data rows written so far.
    pub fn rows_written(&self) -> u64 {
        self.rows
    }

    /// The storage path of `model.json`.
    pub fn model_json_path(&self) -> String {
        join_path(&[&self.folder, MODEL_JSON])
    }

    /// Starts an entity; its files go to `<entity_id>/<yyyy>/<MM>/<dd>/<HHmm>-<run id>/`.
    pub fn begin_entity(&mut self, entity: CdmEntity) -> io::Result<()> {
        self.check_usable()?;
        if let Some(open) = &self.current {
            return Err(invalid_input(format!(
                "entity `{}` is still open: end it before beginning `{}`",
                open.entity.id, entity.id
            )));
        }
        check_entity(&entity).map_err(invalid_input)?;
        if self.entities.iter().any(|done| done.name == entity.id) {
            return Err(invalid_input(format!(
                "entity `{}` was already written in this run",
                entity.id
            )));
        }
        if self.referenced.is_none() {
            self.referenced = Some(referenced_locations(self.storage.as_ref(), &self.model_json_path())?);
        }
        let dir = join_path(&[
            &self.folder,
            &entity.id,
            &self.run_time.format("%Y/%m/%d").to_string(),
            &format!("{}-{}", self.run_time.format("%H%M"), self.run_id),
        ]);
        let mut header: Vec<String> = entity.attributes.iter().map(|a| a.name.clone()).collect();
        if entity.incremental {
            header.push(DELETED_ATTRIBUTE.to_string());
        }
        self.current = Some(OpenEntity {
            entity,
            dir,
            header,
            partitions: Vec::new(),
            open: None,
            next_number: 1,
        });
        Ok(())
    }

    /// Appends rows to the open entity: values in attribute order (then `_deleted` as a JSON
    /// boolean for incremental entities). null → empty field, strings raw, numbers and booleans
    /// as JSON text, arrays and objects as compact JSON. Rolls to a new partition file after
    /// `max_rows_per_file` rows. A batch with a malformed row is rejected before anything of it
    /// is written. Returns the bytes written so far (for progress).
    pub fn write_rows(&mut self, rows: &[Vec<Value>]) -> io::Result<u64> {
        self.check_usable()?;
        let entity = self
            .current
            .as_ref()
            .ok_or_else(|| invalid_input("no entity is open: call begin_entity first".to_string()))?;
        check_rows(entity, rows).map_err(invalid_input)?;
        let result = self.write_checked_rows(rows);
        self.fail_on_error(result)?;
        Ok(self.bytes_written())
    }

    /// Closes the open entity's last partition (an entity without rows gets one file with just
    /// the header) and records the entity for `model.json`.
    pub fn end_entity(&mut self) -> io::Result<()> {
        self.check_usable()?;
        if self.current.is_none() {
            return Err(invalid_input("no entity is open".to_string()));
        }
        let result = self.close_entity();
        self.fail_on_error(result)
    }

    /// Ends the open entity if any, then writes `model.json` last and atomically, listing every
    /// entity and partition of this run (an earlier run's `model.json` is replaced). On error the
    /// run's partition files are removed as by [`abort`](Self::abort) and the error returned.
    pub fn commit(mut self) -> io::Result<CdmSummary> {
        let result = self.commit_inner();
        if result.is_err() {
            let _ = self.abort_inner();
        }
        self.done = true;
        result
    }

    /// Removes this run's partition files (finished and open ones); files the `model.json` on
    /// storage points to are never touched. Errors are reported after trying every file.
    pub fn abort(mut self) -> io::Result<()> {
        self.done = true;
        self.abort_inner()
    }

    /// What the `model.json` in `folder` shows, if run `run_id` committed it: an earlier
    /// attempt of the run got that far before its process died, and its files stand.
    pub fn committed_by_run(storage: &dyn CdmStorage, folder: &str, run_id: &str) -> Option<CdmSummary> {
        let model_json_path = join_path(&[&normalize_folder(folder).ok()?, MODEL_JSON]);
        let bytes = storage.read_file(&model_json_path).ok()??;
        let model: Value = serde_json::from_slice(&bytes).ok()?;
        let annotation = |name: &str| {
            model["annotations"]
                .as_array()?
                .iter()
                .find(|a| a["name"] == name)
                .and_then(|a| a["value"].as_str())
        };
        if annotation(RUN_ID_ANNOTATION)? != run_id {
            return None;
        }
        let files = model["entities"]
            .as_array()?
            .iter()
            .flat_map(|entity| entity["partitions"].as_array().into_iter().flatten())
            .filter_map(|partition| partition["location"].as_str().map(str::to_string))
            .collect();
        let partition_bytes: u64 = annotation(PARTITION_BYTES_ANNOTATION)
            .and_then(|b| b.parse().ok())
            .unwrap_or(0);
        Some(CdmSummary {
            files,
            bytes: partition_bytes + bytes.len() as u64,
            rows: 0,
            model_json_location: storage.location(&model_json_path),
            model_json_path,
            pruned: Pruned::default(),
        })
    }

    /// Walks away without touching anything: for a worker that lost its run to another, whose
    /// attempt now writes the same run folder. Files this writer left are that attempt's to
    /// overwrite.
    pub fn abandon(mut self) {
        self.done = true;
    }

    fn check_usable(&self) -> io::Result<()> {
        if let Some(reason) = &self.invalid {
            return Err(invalid_input(reason.clone()));
        }
        if self.failed {
            return Err(io::Error::other(
                "an earlier write of this run failed; the run can only be aborted",
            ));
        }
        Ok(())
    }

    fn fail_on_error<T>(&mut self, result: io::Result<T>) -> io::Result<T> {
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    fn write_checked_rows(&mut self, rows: &[Vec<Value>]) -> io::Result<()> {
        let max_rows = self.options.max_rows_per_file;
        let mut scratch = Vec::new();
        // JSON columns hold JSON text: the string "true" must not read back as the boolean.
        let json_columns: Vec<bool> = self
            .current
            .as_ref()
            .map(|c| {
                c.entity
                    .attributes
                    .iter()
                    .map(|a| a.data_type == CdmType::Json)
                    .collect()
            })
            .unwrap_or_default();
        for row in rows {
            if self.current.as_ref().is_some_and(|entity| entity.open.is_none()) {
                self.open_partition()?;
            }
            let partition = self.open_partition_mut()?;
            match &mut partition.encoder {
                PartitionEncoder::Csv(csv) => {
                    for (i, value) in row.iter().enumerate() {
                        let as_json = json_columns.get(i).copied().unwrap_or(false);
                        write_value(csv, value, as_json, &mut scratch).map_err(csv_error)?;
                    }
                    csv.write_record(None::<&[u8]>).map_err(csv_error)?;
                }
                PartitionEncoder::Parquet(parquet) => parquet.write_row(row)?,
            }
            partition.rows += 1;
            let full = max_rows > 0 && partition.rows >= max_rows;
            self.rows += 1;
            if full {
                self.close_partition()?;
            }
        }
        Ok(())
    }

    fn open_partition_mut(&mut self) -> io::Result<&mut OpenPartition> {
        self.current
            .as_mut()
            .and_then(|entity| entity.open.as_mut())
            .ok_or_else(|| io::Error::other("no partition is open"))
    }

    fn open_partition(&mut self) -> io::Result<()> {
        let Self {
            storage,
            current,
            referenced,
            options,
            ..
        } = self;
        let entity = current.as_mut().ok_or_else(|| io::Error::other("no entity is open"))?;
        let name = format!("{}_{}", entity.entity.id, entity.next_number);
        let relative_path = format!("{}/{}.{}", entity.dir, name, options.extension());
        let location = storage.location(&relative_path);
        if referenced.as_ref().is_some_and(|set| set.contains(&location)) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{relative_path} is part of the existing model.json and is never overwritten; use a new run id"
                ),
            ));
        }
        let file = storage.create_file(&relative_path)?;
        let counting = Counting {
            file: Some(file),
            bytes: 0,
        };
        let encoder = match options.parquet {
            Some(compression) => {
                let mut columns: Vec<ParquetColumn> = entity
                    .entity
                    .attributes
                    .iter()
                    .map(|a| ParquetColumn {
                        name: a.name.clone(),
                        data_type: Some(a.data_type),
                    })
                    .collect();
                if entity.entity.incremental {
                    columns.push(ParquetColumn {
                        name: DELETED_ATTRIBUTE.to_string(),
                        data_type: None,
                    });
                }
                PartitionEncoder::Parquet(Box::new(ParquetPartition::new(counting, &columns, compression)?))
            }
            None => {
                let encoded = if options.gzip {
                    Encoded::Gzip(GzEncoder::new(counting, Compression::default()))
                } else {
                    Encoded::Plain(counting)
                };
                let mut csv = csv::WriterBuilder::new()
                    .delimiter(options.delimiter)
                    .quote_style(csv::QuoteStyle::Necessary)
                    .terminator(csv::Terminator::CRLF)
                    .has_headers(false)
                    .from_writer(encoded);
                csv.write_record(&entity.header).map_err(csv_error)?;
                PartitionEncoder::Csv(Box::new(csv))
            }
        };
        entity.next_number += 1;
        entity.open = Some(OpenPartition {
            encoder,
            relative_path,
            name,
            rows: 0,
        });
        Ok(())
    }

    fn close_partition(&mut self) -> io::Result<()> {
        let Some(entity) = self.current.as_mut() else {
            return Ok(());
        };
        let Some(partition) = entity.open.take() else {
            return Ok(());
        };
        let file = partition.encoder.finish()?;
        let bytes = file.finish()?;
        let mut annotations = Vec::new();
        match self.options.parquet {
            Some(_) => annotations.push(Annotation::new("format", "parquet")),
            None if self.options.gzip => annotations.push(Annotation::new("compression", "gzip")),
            None => {}
        }
        entity.partitions.push(ModelPartition {
            name: partition.name,
            refresh_time: Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
            location: self.storage.location(&partition.relative_path),
            // The CDM schema defines format settings for CSV only.
            file_format_settings: self
                .options
                .parquet
                .is_none()
                .then(|| CsvFormatSettings::new(self.options.delimiter)),
            annotations,
        });
        self.files.push(partition.relative_path);
        self.bytes += bytes;
        Ok(())
    }

    fn close_entity(&mut self) -> io::Result<()> {
        self.close_partition()?;
        if self.current.as_ref().is_some_and(|entity| entity.partitions.is_empty()) {
            // No rows: one header-only file still tells readers the columns.
            self.open_partition()?;
            self.close_partition()?;
        }
        if let Some(open) = self.current.take() {
            self.entities.push(ModelEntity::new(open.entity, open.partitions));
        }
        Ok(())
    }

    fn commit_inner(&mut self) -> io::Result<CdmSummary> {
        self.check_usable()?;
        if self.current.is_some() {
            let result = self.close_entity();
            self.fail_on_error(result)?;
        }
        let model = ModelJson {
            name: &self.export_id,
            version: "1.0",
            application: "exportd",
            modified_time: Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
            annotations: vec![
                Annotation::new(RUN_ID_ANNOTATION, &self.run_id),
                Annotation::new(PARTITION_BYTES_ANNOTATION, &self.bytes.to_string()),
                Annotation::new("runTime", &self.run_time.to_rfc3339_opts(SecondsFormat::Secs, true)),
            ],
            entities: &self.entities,
        };
        let json = serde_json::to_vec_pretty(&model).map_err(io::Error::other)?;
        let model_json_path = self.model_json_path();
        let model_bytes = self.storage.write_file(&model_json_path, &mut json.as_slice())?;
        let pruned = match self.keep_runs.take() {
            Some(keep) => self.prune_runs(&keep),
            None => Pruned::default(),
        };
        Ok(CdmSummary {
            files: self.files.clone(),
            bytes: self.bytes + model_bytes,
            rows: self.rows,
            model_json_location: self.storage.location(&model_json_path),
            model_json_path,
            pruned,
        })
    }

    /// Removes the run folders (`<entity>/<yyyy>/<MM>/<dd>/<HHmm>-<run id>/`) of runs not in
    /// `keep`. Best effort: the commit is done, so a failure is reported, not raised.
    fn prune_runs(&mut self, keep: &HashSet<String>) -> Pruned {
        let listed: HashSet<String> = self.files.iter().map(|f| self.storage.location(f)).collect();
        let mut pruned = Pruned::default();
        let folders = match older_run_folders(self.storage.as_ref(), &self.folder, keep) {
            Ok(folders) => folders,
            Err(err) => {
                pruned.error = Some(err.to_string());
                return pruned;
            }
        };
        for folder in folders {
            match remove_run_folder(self.storage.as_mut(), &folder, &listed) {
                Ok(()) => pruned.folders += 1,
                Err(err) => {
                    pruned.error.get_or_insert_with(|| format!("{folder}: {err}"));
                }
            }
        }
        pruned
    }

    fn abort_inner(&mut self) -> io::Result<()> {
        let mut first_error = None;
        if let Some(partition) = self.current.take().and_then(|entity| entity.open)
            && let Err(err) = partition.discard()
        {
            first_error.get_or_insert(err);
        }
        // Read model.json again: a failed commit may still have published it.
        let referenced = match referenced_locations(self.storage.as_ref(), &self.model_json_path()) {
            Ok(referenced) => referenced,
            Err(err) => return Err(first_error.unwrap_or(err)),
        };
        for path in std::mem::take(&mut self.files) {
            if referenced.contains(&self.storage.location(&path)) {
                continue;
            }
            if let Err(err) = self.storage.remove_file(&path) {
                first_error.get_or_insert(err);
            }
        }
        match first_error {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }
}

impl Drop for CdmFolderWriter {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.abort_inner();
        }
    }
}

/// The run folders under an export's folder whose run is not in `keep`: exactly the paths
/// `<entity>/<yyyy>/<MM>/<dd>/<HHmm>-<run id>` this writer creates, nothing else.
fn older_run_folders(storage: &dyn CdmStorage, folder: &str, keep: &HashSet<String>) -> io::Result<Vec<String>> {
    let digits = |name: &str, n: usize| name.len() == n && name.bytes().all(|b| b.is_ascii_digit());
    let folders_in = |path: &str, shape: &dyn Fn(&str) -> bool| -> io::Result<Vec<String>> {
        Ok(storage
            .list(path)?
            .into_iter()
            .filter(|entry| entry.is_folder && shape(&entry.name))
            .map(|entry| join_path(&[path, &entry.name]))
            .collect())
    };
    let mut older = Vec::new();
    for entity in folders_in(folder, &|name| check_path_segment("entity", name).is_ok())? {
        for year in folders_in(&entity, &|name| digits(name, 4))? {
            for month in folders_in(&year, &|name| digits(name, 2))? {
                for day in folders_in(&month, &|name| digits(name, 2))? {
                    for run in storage.list(&day)?.into_iter().filter(|entry| entry.is_folder) {
                        let Some((time, run_id)) = run.name.split_once('-') else {
                            continue;
                        };
                        if digits(time, 4) && !run_id.is_empty() && !keep.contains(run_id) {
                            older.push(join_path(&[&day, &run.name]));
                        }
                    }
                }
            }
        }
    }
    Ok(older)
}

/// Removes the files of one run folder (storage removes the folders they leave empty). A
/// file `listed` in the new `model.json` stays, and so does anything in a sub-folder.
fn remove_run_folder(storage: &mut dyn CdmStorage, folder: &str, listed: &HashSet<String>) -> io::Result<()> {
    for entry in storage.list(folder)? {
        let path = join_path(&[folder, &entry.name]);
        if entry.is_folder || listed.contains(&storage.location(&path)) {
            continue;
        }
        storage.remove_file(&path)?;
    }
    Ok(())
}

/// The partition locations an existing `model.json` points to. One that is not valid JSON
/// points to nothing (no reader can follow it either).
fn referenced_locations(storage: &dyn CdmStorage, model_json_path: &str) -> io::Result<HashSet<String>> {
    let Some(bytes) = storage.read_file(model_json_path)? else {
        return Ok(HashSet::new());
    };
    let Ok(model) = serde_json::from_slice::<Value>(&bytes) else {
        return Ok(HashSet::new());
    };
    let partitions = model["entities"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|entity| entity["partitions"].as_array().into_iter().flatten());
    Ok(partitions
        .filter_map(|partition| partition["location"].as_str().map(str::to_string))
        .collect())
}

// ---------------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------------

/// Counts the bytes that reach storage. The file is an `Option` so it can be taken out (to
/// discard it) without finishing the encoders above it.
struct Counting {
    file: Option<Box<dyn StorageFile>>,
    bytes: u64,
}

impl Write for Counting {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let file = self.file.as_mut().ok_or_else(file_closed)?;
        let n = file.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.file.as_mut() {
            Some(file) => file.flush(),
            None => Ok(()),
        }
    }
}

enum Encoded {
    Plain(Counting),
    Gzip(GzEncoder<Counting>),
}

impl Encoded {
    fn counting(&self) -> &Counting {
        match self {
            Encoded::Plain(counting) => counting,
            Encoded::Gzip(gzip) => gzip.get_ref(),
        }
    }

    fn counting_mut(&mut self) -> &mut Counting {
        match self {
            Encoded::Plain(counting) => counting,
            Encoded::Gzip(gzip) => gzip.get_mut(),
        }
    }

    /// Writes what the encoder still holds (the gzip trailer).
    fn finish(self) -> io::Result<Counting> {
        match self {
            Encoded::Plain(counting) => Ok(counting),
            Encoded::Gzip(gzip) => gzip.finish(),
        }
    }
}

impl Write for Encoded {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoded::Plain(counting) => counting.write(buf),
            Encoded::Gzip(gzip) => gzip.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoded::Plain(counting) => counting.flush(),
            Encoded::Gzip(gzip) => gzip.flush(),
        }
    }
}

fn write_value<W: Write>(
    csv: &mut csv::Writer<W>,
    value: &Value,
    as_json: bool,
    scratch: &mut Vec<u8>,
) -> csv::Result<()> {
    match value {
        Value::Null => csv.write_field(b""),
        Value::String(text) if !as_json => csv.write_field(text.as_bytes()),
        Value::Bool(true) => csv.write_field(b"true"),
        Value::Bool(false) => csv.write_field(b"false"),
        Value::String(_) | Value::Number(_) | Value::Array(_) | Value::Object(_) => {
            scratch.clear();
            serde_json::to_writer(&mut *scratch, value).map_err(io::Error::from)?;
            csv.write_field(&scratch[..])
        }
    }
}

fn csv_error(err: csv::Error) -> io::Error {
    if !err.is_io_error() {
        return io::Error::other(err);
    }
    match err.into_kind() {
        csv::ErrorKind::Io(err) => err,
        other => io::Error::other(format!("{other:?}")),
    }
}

// ---------------------------------------------------------------------------------------------
// model.json
// ---------------------------------------------------------------------------------------------

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ModelJson<'a> {
    name: &'a str,
    version: &'static str,
    application: &'static str,
    modified_time: String,
    annotations: Vec<Annotation>,
    entities: &'a [ModelEntity],
}

#[derive(Debug, Clone, Serialize)]
struct Annotation {
    name: String,
    value: String,
}

impl Annotation {
    fn new(name: &str, value: &str) -> Annotation {
        Annotation {
            name: name.to_string(),
            value: value.to_string(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct ModelEntity {
    #[serde(rename = "$type")]
    kind: &'static str,
    name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    description: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    annotations: Vec<Annotation>,
    attributes: Vec<ModelAttribute>,
    partitions: Vec<ModelPartition>,
}

impl ModelEntity {
    fn new(entity: CdmEntity, partitions: Vec<ModelPartition>) -> ModelEntity {
        let mut annotations = Vec::new();
        if !entity.primary_key.is_empty() {
            annotations.push(Annotation::new(PRIMARY_KEY_ANNOTATION, &entity.primary_key));
        }
        let mut attributes: Vec<ModelAttribute> = entity
            .attributes
            .into_iter()
            .map(|attribute| ModelAttribute {
                annotations: if attribute.mapping.is_empty() {
                    Vec::new()
                } else {
                    vec![Annotation::new(MAPPING_ANNOTATION, &attribute.mapping)]
                },
                name: attribute.name,
                description: truncate_chars(attribute.description, MAX_DESCRIPTION_CHARS),
                data_type: attribute.data_type.data_type(),
            })
            .collect();
        if entity.incremental {
            attributes.push(ModelAttribute {
                name: DELETED_ATTRIBUTE.to_string(),
                description: "True when the record was deleted since the previous successful run.".to_string(),
                data_type: CdmType::Boolean.data_type(),
                annotations: Vec::new(),
            });
        }
        ModelEntity {
            kind: "LocalEntity",
            name: entity.id,
            description: truncate_chars(entity.description, MAX_DESCRIPTION_CHARS),
            annotations,
            attributes,
            partitions,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct ModelAttribute {
    name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    description: String,
    data_type: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    annotations: Vec<Annotation>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct ModelPartition {
    name: String,
    refresh_time: String,
    location: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    file_format_settings: Option<CsvFormatSettings>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    annotations: Vec<Annotation>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct CsvFormatSettings {
    #[serde(rename = "$type")]
    kind: &'static str,
    column_headers: bool,
    delimiter: String,
    /// Quoted fields may hold delimiters, quotes (doubled) and line breaks (RFC 4180).
    quote_style: &'static str,
    csv_style: &'static str,
    encoding: &'static str,
}

impl CsvFormatSettings {
    fn new(delimiter: u8) -> CsvFormatSettings {
        CsvFormatSettings {
            kind: "CsvFormatSettings",
            column_headers: true,
            delimiter: char::from(delimiter).to_string(),
            quote_style: "QuoteStyle.Csv",
            csv_style: "CsvStyle.QuoteAlways",
            encoding: "UTF-8",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------------------------

fn invalid_input(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

fn file_closed() -> io::Error {
    io::Error::other("the file is already closed")
}

fn join_path(parts: &[&str]) -> String {
    parts
        .iter()
        .filter(|part| !part.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join("/")
}

fn truncate_chars(text: String, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => text[..end].to_string(),
        None => text,
    }
}

fn normalize_folder(folder: &str) -> Result<String, String> {
    let segments: Vec<&str> = folder.split('/').filter(|segment| !segment.is_empty()).collect();
    for segment in &segments {
        check_path_segment("folder", segment)?;
    }
    Ok(segments.join("/"))
}

/// One segment of a storage path: no separators, no `.`/`..`, no control characters.
fn check_path_segment(what: &str, segment: &str) -> Result<(), String> {
    if segment.is_empty() || segment == "." || segment == ".." {
        return Err(format!("{what} `{segment}` is not a usable path segment"));
    }
    if segment.chars().any(|c| c == '/' || c == '\\' || c.is_control()) {
        return Err(format!(
            "{what} `{}` must not contain `/`, `\\` or control characters",
            segment.escape_debug()
        ));
    }
    Ok(())
}

/// The CDM schema's name rules: 1–256 characters, no leading or trailing white space, no line
/// breaks; entity names also exclude `.` and `"`.
fn check_cdm_name(what: &str, name: &str, entity: bool) -> Result<(), String> {
    let count = name.chars().count();
    if count == 0 || count > MAX_NAME_CHARS {
        return Err(format!("{what} must have 1 to {MAX_NAME_CHARS} characters"));
    }
    let blank = |c: char| c.is_whitespace() || c == '\u{feff}';
    if name.starts_with(blank) || name.ends_with(blank) {
        return Err(format!("{what} `{name}` must not start or end with white space"));
    }
    if name
        .chars()
        .any(|c| c.is_control() || c == '\u{2028}' || c == '\u{2029}')
    {
        return Err(format!(
            "{what} `{}` must not contain control characters",
            name.escape_debug()
        ));
    }
    if entity && name.contains(['.', '"']) {
        return Err(format!(
            "{what} `{name}` must not contain `.` or `\"` (CDM entity names)"
        ));
    }
    Ok(())
}

fn check_delimiter(delimiter: u8) -> Result<(), String> {
    if crate::domain::connection_type::is_csv_delimiter(delimiter) {
        Ok(())
    } else {
        Err(format!(
            "delimiter {:?} must be a printable ASCII character other than `\"`, or a tab",
            char::from(delimiter)
        ))
    }
}

fn check_entity(entity: &CdmEntity) -> Result<(), String> {
    check_path_segment("entity id", &entity.id)?;
    check_cdm_name("entity id", &entity.id, true)?;
    if entity.attributes.is_empty() {
        return Err(format!("entity `{}` has no attributes", entity.id));
    }
    let mut seen = HashSet::new();
    for attribute in &entity.attributes {
        check_cdm_name("attribute name", &attribute.name, false)?;
        if !seen.insert(attribute.name.as_str()) {
            return Err(format!(
                "entity `{}` has attribute `{}` twice",
                entity.id, attribute.name
            ));
        }
        if entity.incremental && attribute.name == DELETED_ATTRIBUTE {
            return Err(format!(
                "entity `{}` is incremental: `{DELETED_ATTRIBUTE}` is added by the writer and cannot be an attribute",
                entity.id
            ));
        }
    }
    Ok(())
}

fn check_rows(entity: &OpenEntity, rows: &[Vec<Value>]) -> Result<(), String> {
    let columns = entity.header.len();
    for (index, row) in rows.iter().enumerate() {
        if row.len() != columns {
            return Err(format!(
                "row {index} of entity `{}` has {} values; expected {columns} ({})",
                entity.entity.id,
                row.len(),
                entity.header.join(", ")
            ));
        }
        if entity.entity.incremental && !row[columns - 1].is_boolean() {
            return Err(format!(
                "row {index} of entity `{}`: `{DELETED_ATTRIBUTE}` must be true or false, not {}",
                entity.entity.id,
                row[columns - 1]
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::io::Read;
    use std::path::{Path, PathBuf};

    use chrono::{DateTime, TimeZone, Utc};
    use flate2::read::GzDecoder;
    use serde_json::{Value, json};

    use super::*;

    const SCHEMA_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/cdm-model.schema.json");
    const FOLDER: &str = "team a/exports";
    const EXPORT_ID: &str = "weekly-customers";

    fn run_time() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 5, 1, 9, 30, 15).unwrap()
    }

    fn attribute(name: &str, data_type: CdmType, mapping: &str) -> CdmAttribute {
        CdmAttribute {
            name: name.to_string(),
            data_type,
            description: format!("The {name}."),
            mapping: mapping.to_string(),
        }
    }

    fn customers() -> CdmEntity {
        CdmEntity {
            id: "customers".to_string(),
            description: "Unified customer profiles".to_string(),
            primary_key: "id".to_string(),
            attributes: vec![
                attribute("id", CdmType::String, "crm.customer_id"),
                attribute("name", CdmType::String, "crm.full_name"),
                attribute("age", CdmType::Int64, ""),
                attribute("score", CdmType::Double, ""),
                attribute("active", CdmType::Boolean, ""),
                attribute("signed_up", CdmType::DateTimeOffset, ""),
                attribute("birthday", CdmType::Date, ""),
                attribute("profile", CdmType::Json, ""),
            ],
            incremental: false,
        }
    }

    fn customer_rows() -> Vec<Vec<Value>> {
        vec![
            vec![
                json!("c1"),
                json!("Ann, Smith"),
                json!(41),
                json!(3.5),
                json!(true),
                json!("2024-05-01T10:00:00Z"),
                json!("1983-02-01"),
                json!({"tags": ["a", "b"]}),
            ],
            vec![
                json!("c2"),
                json!("say \"hi\""),
                Value::Null,
                Value::Null,
                json!(false),
                Value::Null,
                Value::Null,
                Value::Null,
            ],
            vec![
                json!("c3"),
                json!("line1\nline2"),
                json!(-7),
                json!(-0.25),
                json!(true),
                json!("2023-12-31T23:59:59+01:00"),
                json!("2000-01-01"),
                json!([1, 2]),
            ],
            vec![
                json!("c4"),
                json!("semi;colon"),
                json!(9007199254740993_i64),
                json!(1e21),
                Value::Null,
                Value::Null,
                Value::Null,
                json!("plain string in a json column"),
            ],
            vec![
                json!("c5"),
                json!("crlf\r\nend and ünïcödé"),
                json!(0),
                json!(0.1),
                json!(false),
                Value::Null,
                Value::Null,
                json!({}),
            ],
        ]
    }

    /// What reading the customer rows back must give, field for field.
    fn expected_customer_fields() -> Vec<Vec<&'static str>> {
        vec![
            vec![
                "c1",
                "Ann, Smith",
                "41",
                "3.5",
                "true",
                "2024-05-01T10:00:00Z",
                "1983-02-01",
                r#"{"tags":["a","b"]}"#,
            ],
            vec!["c2", "say \"hi\"", "", "", "false", "", "", ""],
            vec![
                "c3",
                "line1\nline2",
                "-7",
                "-0.25",
                "true",
                "2023-12-31T23:59:59+01:00",
                "2000-01-01",
                "[1,2]",
            ],
            vec![
                "c4",
                "semi;colon",
                "9007199254740993",
                "1e+21",
                "",
                "",
                "",
                "\"plain string in a json column\"",
            ],
            vec!["c5", "crlf\r\nend and ünïcödé", "0", "0.1", "false", "", "", "{}"],
        ]
    }

    fn orders() -> CdmEntity {
        CdmEntity {
            id: "orders".to_string(),
            description: String::new(),
            primary_key: "order_id".to_string(),
            attributes: vec![
                attribute("order_id", CdmType::String, ""),
                attribute("amount", CdmType::Double, "sum(lines.amount)"),
            ],
            incremental: true,
        }
    }

    fn order_rows() -> Vec<Vec<Value>> {
        vec![
            vec![json!("o1"), json!(9.99), json!(false)],
            vec![json!("o2"), Value::Null, json!(true)],
        ]
    }

    fn options(delimiter: u8, gzip: bool) -> CsvOptions {
        CsvOptions {
            delimiter,
            gzip,
            max_rows_per_file: 2,
            parquet: None,
        }
    }

    fn writer(root: &Path, run_id: &str, options: CsvOptions) -> CdmFolderWriter {
        let storage = LocalStorage::new(root).unwrap();
        CdmFolderWriter::new(Box::new(storage), FOLDER, EXPORT_ID, run_id, run_time(), options)
    }

    /// Writes both entities (customers in two batches, so rolling crosses a batch boundary).
    fn write_both(writer: &mut CdmFolderWriter) {
        let rows = customer_rows();
        writer.begin_entity(customers()).unwrap();
        let first = writer.write_rows(&rows[..3]).unwrap();
        let second = writer.write_rows(&rows[3..]).unwrap();
        assert!(first > 0 && second > first, "progress grows: {first} then {second}");
        writer.end_entity().unwrap();
        writer.begin_entity(orders()).unwrap();
        writer.write_rows(&order_rows()).unwrap();
        writer.end_entity().unwrap();
    }

    fn export_run(root: &Path, run_id: &str, options: CsvOptions) -> CdmSummary {
        let mut writer = writer(root, run_id, options);
        write_both(&mut writer);
        writer.commit().unwrap()
    }

    /// Every file under `dir`, relative and `/`-separated, with its bytes.
    fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
        fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
            for entry in fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(base, &path, out);
                } else {
                    let relative = path.strip_prefix(base).unwrap().to_string_lossy().replace('\\', "/");
                    out.insert(relative, fs::read(&path).unwrap());
                }
            }
        }
        let mut out = BTreeMap::new();
        if dir.exists() {
            walk(dir, dir, &mut out);
        }
        out
    }

    fn read_text(path: &Path, gzip: bool) -> String {
        let bytes = fs::read(path).unwrap();
        if gzip {
            let mut text = String::new();
            GzDecoder::new(bytes.as_slice()).read_to_string(&mut text).unwrap();
            text
        } else {
            String::from_utf8(bytes).unwrap()
        }
    }

    fn read_records(path: &Path, options: CsvOptions) -> Vec<Vec<String>> {
        let text = read_text(path, options.gzip);
        csv::ReaderBuilder::new()
            .has_headers(false)
            .delimiter(options.delimiter)
            .from_reader(text.as_bytes())
            .records()
            .map(|record| record.unwrap().iter().map(str::to_string).collect())
            .collect()
    }

    fn model_json(root: &Path) -> Value {
        serde_json::from_slice(&fs::read(root.join(FOLDER).join(MODEL_JSON)).unwrap()).unwrap()
    }

    fn schema_errors(model: &Value) -> Vec<String> {
        let text = fs::read_to_string(SCHEMA_PATH)
            .unwrap_or_else(|err| panic!("the CDM model.json schema must be readable at {SCHEMA_PATH}: {err}"));
        let schema: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(schema["$schema"], "http://json-schema.org/draft-07/schema#");
        // The draft comes from `$schema`; formats (`uri`) are asserted explicitly.
        let validator = jsonschema::options()
            .should_validate_formats(true)
            .build(&schema)
            .unwrap();
        validator
            .iter_errors(model)
            .map(|err| format!("{} at {}", err, err.instance_path()))
            .collect()
    }

    fn assert_valid(model: &Value) {
        let errors = schema_errors(model);
        assert!(
            errors.is_empty(),
            "model.json does not validate: {errors:#?}\n{model:#}"
        );
    }

    fn path_of_location(location: &str) -> PathBuf {
        url::Url::parse(location)
            .ok()
            .and_then(|url| url.to_file_path().ok())
            .unwrap_or_else(|| panic!("an absolute file:// URL: {location}"))
    }

    fn expected_files(run_id: &str, extension: &str) -> Vec<String> {
        let run = format!("{FOLDER}/customers/2024/05/01/0930-{run_id}");
        let orders = format!("{FOLDER}/orders/2024/05/01/0930-{run_id}");
        vec![
            format!("{run}/customers_1.{extension}"),
            format!("{run}/customers_2.{extension}"),
            format!("{run}/customers_3.{extension}"),
            format!("{orders}/orders_1.{extension}"),
        ]
    }

    fn partition_locations(model: &Value) -> Vec<String> {
        model["entities"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|entity| entity["partitions"].as_array().unwrap().iter())
            .map(|partition| partition["location"].as_str().unwrap().to_string())
            .collect()
    }

    /// Writes a full export with the given options and checks everything about it.
    fn check_full_export(delimiter: u8, gzip: bool) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let options = options(delimiter, gzip);
        let summary = export_run(root, "run1", options);
        let extension = if gzip { "csv.gz" } else { "csv" };

        // Exact layout: the partitions and model.json, nothing else (no temp files).
        let files = expected_files("run1", extension);
        let mut all: Vec<String> = files.clone();
        all.push(format!("{FOLDER}/{MODEL_JSON}"));
        all.sort();
        let snapshot = snapshot(root);
        assert_eq!(snapshot.keys().cloned().collect::<Vec<_>>(), all);
        assert_eq!(summary.files, files);
        assert_eq!(summary.rows, 7);
        assert_eq!(summary.model_json_path, format!("{FOLDER}/{MODEL_JSON}"));
        let total: u64 = snapshot.values().map(|bytes| bytes.len() as u64).sum();
        assert_eq!(summary.bytes, total, "summary bytes = every file written");

        // Customers: 5 rows over 3 partitions of at most 2 rows, each with the header.
        let header: Vec<String> = customers().attributes.iter().map(|a| a.name.clone()).collect();
        let expected = expected_customer_fields();
        for (index, chunk) in expected.chunks(2).enumerate() {
            let records = read_records(&root.join(&files[index]), options);
            assert_eq!(records[0], header, "header of partition {}", index + 1);
            assert_eq!(records[1..].len(), chunk.len());
            for (got, want) in records[1..].iter().zip(chunk) {
                assert_eq!(got, want);
            }
        }
        // Quoting exactly as RFC 4180 needs it, with CRLF line ends.
        let first = read_text(&root.join(&files[0]), gzip);
        let d = char::from(delimiter);
        let name = if delimiter == b',' {
            "\"Ann, Smith\""
        } else {
            "Ann, Smith"
        };
        assert_eq!(
            first,
            format!(
                "id{d}name{d}age{d}score{d}active{d}signed_up{d}birthday{d}profile\r\n\
                 c1{d}{name}{d}41{d}3.5{d}true{d}2024-05-01T10:00:00Z{d}1983-02-01{d}\"{{\"\"tags\"\":[\"\"a\"\",\"\"b\"\"]}}\"\r\n\
                 c2{d}\"say \"\"hi\"\"\"{d}{d}{d}false{d}{d}{d}\r\n"
            )
        );
        let second = read_text(&root.join(&files[1]), gzip);
        let semi = if delimiter == b';' {
            "\"semi;colon\""
        } else {
            "semi;colon"
        };
        assert!(second.contains("c3") && second.contains("\"line1\nline2\""), "{second}");
        assert!(second.contains(&format!("c4{d}{semi}{d}")), "{second}");
        assert!(read_text(&root.join(&files[2]), gzip).contains("\"crlf\r\nend and ünïcödé\""));

        // Orders (incremental): `_deleted` is the last column.
        let records = read_records(&root.join(&files[3]), options);
        assert_eq!(
            records,
            vec![
                vec!["order_id", "amount", "_deleted"],
                vec!["o1", "9.99", "false"],
                vec!["o2", "", "true"],
            ]
        );

        // model.json: valid against the CDM schema, and saying what was written.
        let model = model_json(root);
        assert_valid(&model);
        assert_eq!(model["name"], EXPORT_ID);
        assert_eq!(model["version"], "1.0");
        assert!(DateTime::parse_from_rfc3339(model["modifiedTime"].as_str().unwrap()).is_ok());
        let entities = model["entities"].as_array().unwrap();
        assert_eq!(entities.len(), 2);
        let customers_model = &entities[0];
        assert_eq!(customers_model["$type"], "LocalEntity");
        assert_eq!(customers_model["name"], "customers");
        assert_eq!(customers_model["description"], "Unified customer profiles");
        assert_eq!(
            customers_model["annotations"],
            json!([{"name": "primaryKey", "value": "id"}])
        );
        let types: Vec<&str> = customers_model["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["dataType"].as_str().unwrap())
            .collect();
        assert_eq!(
            types,
            [
                "string",
                "string",
                "int64",
                "double",
                "boolean",
                "dateTimeOffset",
                "date",
                "json"
            ]
        );
        assert_eq!(
            customers_model["attributes"][0],
            json!({"name": "id", "description": "The id.", "dataType": "string",
                   "annotations": [{"name": "mapping", "value": "crm.customer_id"}]})
        );
        let partitions = customers_model["partitions"].as_array().unwrap();
        assert_eq!(partitions.len(), 3);
        for (index, partition) in partitions.iter().enumerate() {
            assert_eq!(partition["name"], format!("customers_{}", index + 1));
            assert!(DateTime::parse_from_rfc3339(partition["refreshTime"].as_str().unwrap()).is_ok());
            assert_eq!(
                partition["fileFormatSettings"],
                json!({"$type": "CsvFormatSettings", "columnHeaders": true, "delimiter": d.to_string(),
                       "quoteStyle": "QuoteStyle.Csv", "csvStyle": "CsvStyle.QuoteAlways", "encoding": "UTF-8"})
            );
        }
        let orders_model = &entities[1];
        let attributes = orders_model["attributes"].as_array().unwrap();
        assert_eq!(attributes.len(), 3);
        assert_eq!(attributes[2]["name"], "_deleted");
        assert_eq!(attributes[2]["dataType"], "boolean");
        assert_eq!(attributes[1]["annotations"][0]["value"], "sum(lines.amount)");

        // Locations: absolute file:// URLs of exactly the written files.
        let canonical_root = fs::canonicalize(root).unwrap();
        let locations = partition_locations(&model);
        let expected_paths: Vec<PathBuf> = files.iter().map(|file| canonical_root.join(file)).collect();
        let located: Vec<PathBuf> = locations.iter().map(|location| path_of_location(location)).collect();
        assert_eq!(located, expected_paths);
        for location in &locations {
            assert!(location.starts_with("file:///"), "{location}");
            assert!(
                location.contains("/team%20a/exports/"),
                "spaces are percent-encoded: {location}"
            );
        }
        assert_eq!(
            path_of_location(&summary.model_json_location),
            canonical_root.join(FOLDER).join(MODEL_JSON)
        );
    }

    #[test]
    fn writes_cdm_folder_with_commas() {
        check_full_export(b',', false);
    }

    #[test]
    fn writes_cdm_folder_gzipped_with_semicolons() {
        check_full_export(b';', true);
    }

    #[test]
    fn schema_check_is_not_vacuous() {
        let dir = tempfile::tempdir().unwrap();
        export_run(dir.path(), "run1", options(b',', false));
        let model = model_json(dir.path());
        let mut bad_location = model.clone();
        bad_location["entities"][0]["partitions"][0]["location"] = json!("not a uri");
        assert!(!schema_errors(&bad_location).is_empty(), "format: uri is checked");
        let mut bad_type = model.clone();
        bad_type["entities"][0]["$type"] = json!("Entity");
        assert!(!schema_errors(&bad_type).is_empty());
        let mut bad_data_type = model.clone();
        bad_data_type["entities"][0]["attributes"][0]["dataType"] = json!("text");
        assert!(!schema_errors(&bad_data_type).is_empty());
        let mut no_version = model;
        no_version.as_object_mut().unwrap().remove("version");
        assert!(!schema_errors(&no_version).is_empty());
    }

    #[test]
    fn model_json_is_absent_until_commit() {
        let dir = tempfile::tempdir().unwrap();
        let model_path = dir.path().join(FOLDER).join(MODEL_JSON);
        let mut writer = writer(dir.path(), "run1", options(b',', false));
        write_both(&mut writer);
        assert!(!model_path.exists(), "no model.json before commit");
        assert_eq!(snapshot(dir.path()).len(), 4, "the partitions are there already");
        writer.commit().unwrap();
        assert!(model_path.exists());
        assert!(!dir.path().join(FOLDER).join("model.json.tmp").exists());
    }

    #[test]
    fn second_run_in_the_same_minute_keeps_the_first_runs_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let first = export_run(root, "run1", options(b',', false));
        let before = snapshot(root);

        let second = export_run(root, "run2", options(b',', false));
        let after = snapshot(root);
        for file in &first.files {
            assert_eq!(after[file], before[file], "{file} is untouched");
        }
        assert_eq!(second.files, expected_files("run2", "csv"));
        assert!(second.files.iter().all(|file| !first.files.contains(file)));
        assert_eq!(after.len(), 9, "both runs' partitions and one model.json");

        let model = model_json(root);
        assert_valid(&model);
        let located: Vec<PathBuf> = partition_locations(&model)
            .iter()
            .map(|l| path_of_location(l))
            .collect();
        let canonical_root = fs::canonicalize(root).unwrap();
        let expected: Vec<PathBuf> = second.files.iter().map(|file| canonical_root.join(file)).collect();
        assert_eq!(located, expected, "model.json points only to the second run's files");
    }

    #[test]
    fn abort_removes_only_this_runs_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        export_run(root, "run1", options(b',', true));
        let committed = snapshot(root);

        let mut writer = writer(root, "run2", options(b',', true));
        writer.begin_entity(orders()).unwrap();
        writer.write_rows(&order_rows()).unwrap();
        writer.end_entity().unwrap();
        writer.begin_entity(customers()).unwrap();
        writer.write_rows(&customer_rows()).unwrap();
        let during = snapshot(root);
        let run2: Vec<&String> = during.keys().filter(|path| path.contains("-run2/")).collect();
        assert!(
            run2.iter().any(|path| path.ends_with(".csv.gz.tmp")),
            "an open partition: {run2:?}"
        );
        assert_eq!(
            run2.len(),
            4,
            "orders_1, customers_1, customers_2 and the open customers_3"
        );
        assert_eq!(
            during[&format!("{FOLDER}/{MODEL_JSON}")],
            committed[&format!("{FOLDER}/{MODEL_JSON}")]
        );

        writer.abort().unwrap();
        assert_eq!(snapshot(root), committed, "exactly the first run is left");
        assert!(
            !root.join(FOLDER).join("orders/2024/05/01/0930-run2").exists(),
            "empty run folders go too"
        );
    }

    #[test]
    fn abort_without_an_earlier_run_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = writer(dir.path(), "run1", options(b',', false));
        write_both(&mut writer);
        writer.abort().unwrap();
        assert!(snapshot(dir.path()).is_empty());
    }

    #[test]
    fn dropping_an_uncommitted_writer_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut writer = writer(dir.path(), "run1", options(b',', false));
            writer.begin_entity(customers()).unwrap();
            writer.write_rows(&customer_rows()).unwrap();
        }
        assert!(snapshot(dir.path()).is_empty());
    }

    #[test]
    fn never_overwrites_files_the_existing_model_json_points_to() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        export_run(root, "run1", options(b',', false));
        let committed = snapshot(root);

        // The same run id and minute again (e.g. a retried attempt after its commit).
        let mut writer = writer(root, "run1", options(b',', false));
        writer.begin_entity(customers()).unwrap();
        let err = writer.write_rows(&customer_rows()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists, "{err}");
        assert!(
            writer.write_rows(&customer_rows()).is_err(),
            "a failed writer stays failed"
        );
        writer.abort().unwrap();
        assert_eq!(snapshot(root), committed);
    }

    /// Storage whose model.json write fails after the partitions were written.
    struct FailingModelJson(LocalStorage);

    impl CdmStorage for FailingModelJson {
        fn create_file(&mut self, relative_path: &str) -> io::Result<Box<dyn StorageFile>> {
            self.0.create_file(relative_path)
        }
        fn write_file(&mut self, _relative_path: &str, _source: &mut dyn Read) -> io::Result<u64> {
            Err(io::Error::other("disk full"))
        }
        fn read_file(&self, relative_path: &str) -> io::Result<Option<Vec<u8>>> {
            self.0.read_file(relative_path)
        }
        fn remove_file(&mut self, relative_path: &str) -> io::Result<()> {
            self.0.remove_file(relative_path)
        }
        fn location(&self, relative_path: &str) -> String {
            self.0.location(relative_path)
        }
        fn list(&self, relative_path: &str) -> io::Result<Vec<StorageEntry>> {
            self.0.list(relative_path)
        }
    }

    #[test]
    fn failed_commit_removes_the_runs_files() {
        let dir = tempfile::tempdir().unwrap();
        let storage = FailingModelJson(LocalStorage::new(dir.path()).unwrap());
        let mut writer = CdmFolderWriter::new(
            Box::new(storage),
            FOLDER,
            EXPORT_ID,
            "run1",
            run_time(),
            options(b',', false),
        );
        write_both(&mut writer);
        let err = writer.commit().unwrap_err();
        assert_eq!(err.to_string(), "disk full");
        assert!(snapshot(dir.path()).is_empty());
    }

    #[test]
    fn partitions_are_streamed_to_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let options = CsvOptions {
            delimiter: b',',
            gzip: false,
            max_rows_per_file: 0,
            parquet: None,
        };
        let mut writer = writer(dir.path(), "run1", options);
        writer.begin_entity(orders()).unwrap();
        let batch: Vec<Vec<Value>> = (0..1000)
            .map(|i| vec![json!(format!("order-{i:06}")), json!(i as f64 / 4.0), json!(i % 7 == 0)])
            .collect();
        let mut progress = 0;
        for _ in 0..20 {
            let bytes = writer.write_rows(&batch).unwrap();
            assert!(bytes >= progress);
            progress = bytes;
        }
        let final_path = dir.path().join(FOLDER).join("orders/2024/05/01/0930-run1/orders_1.csv");
        let tmp = tmp_path(&final_path);
        let on_disk = fs::metadata(&tmp).unwrap().len();
        assert!(
            on_disk > 200_000,
            "rows reach the file while they are written ({on_disk} bytes)"
        );
        assert!(!final_path.exists(), "the file is published only when closed");
        assert_eq!(progress, writer.bytes_written());
        writer.end_entity().unwrap();
        assert!(!tmp.exists());
        let summary = writer.commit().unwrap();
        assert_eq!(summary.rows, 20_000);
        assert_eq!(read_records(&final_path, options).len(), 20_001);
        assert_eq!(summary.files.len(), 1, "0 means no limit");
    }

    #[test]
    fn an_entity_without_rows_gets_a_header_only_partition() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = writer(dir.path(), "run1", options(b',', false));
        writer.begin_entity(orders()).unwrap();
        writer.end_entity().unwrap();
        let summary = writer.commit().unwrap();
        assert_eq!(summary.rows, 0);
        assert_eq!(
            fs::read_to_string(dir.path().join(&summary.files[0])).unwrap(),
            "order_id,amount,_deleted\r\n"
        );
        let model = model_json(dir.path());
        assert_valid(&model);
        assert_eq!(model["entities"][0]["partitions"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn rolls_exactly_at_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = writer(dir.path(), "run1", options(b',', false));
        writer.begin_entity(customers()).unwrap();
        writer.write_rows(&customer_rows()[..4]).unwrap();
        let summary = writer.commit().unwrap();
        assert_eq!(summary.files.len(), 2, "4 rows at 2 per file: no empty third file");
    }

    #[test]
    fn a_single_null_column_survives() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = writer(dir.path(), "run1", CsvOptions::default());
        let entity = CdmEntity {
            id: "tags".to_string(),
            description: String::new(),
            primary_key: String::new(),
            attributes: vec![attribute("tag", CdmType::String, "")],
            incremental: false,
        };
        writer.begin_entity(entity).unwrap();
        writer
            .write_rows(&[vec![Value::Null], vec![json!("x")], vec![json!("")]])
            .unwrap();
        let summary = writer.commit().unwrap();
        let records = read_records(&dir.path().join(&summary.files[0]), CsvOptions::default());
        assert_eq!(records, vec![vec!["tag"], vec![""], vec!["x"], vec![""]]);
        assert_valid(&model_json(dir.path()));
    }

    #[test]
    fn rejects_bad_input_without_writing_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = writer(dir.path(), "run1", options(b',', false));
        let kind = |result: io::Result<()>| result.unwrap_err().kind();

        assert_eq!(
            writer.write_rows(&order_rows()).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        for id in ["", "a.b", "a/b", "..", " padded", "say\"", "x\ny"] {
            let entity = CdmEntity {
                id: id.to_string(),
                ..orders()
            };
            assert_eq!(
                kind(writer.begin_entity(entity)),
                io::ErrorKind::InvalidInput,
                "entity id {id:?}"
            );
        }
        let mut twice = orders();
        twice.attributes.push(attribute("amount", CdmType::Int64, ""));
        assert_eq!(kind(writer.begin_entity(twice)), io::ErrorKind::InvalidInput);
        let mut deleted = orders();
        deleted.attributes.push(attribute("_deleted", CdmType::Boolean, ""));
        assert_eq!(kind(writer.begin_entity(deleted)), io::ErrorKind::InvalidInput);
        let no_attributes = CdmEntity {
            attributes: Vec::new(),
            ..orders()
        };
        assert_eq!(kind(writer.begin_entity(no_attributes)), io::ErrorKind::InvalidInput);

        writer.begin_entity(orders()).unwrap();
        assert_eq!(
            kind(writer.begin_entity(customers())),
            io::ErrorKind::InvalidInput,
            "one entity at a time"
        );
        let short = vec![
            vec![json!("o1"), json!(1.0), json!(false)],
            vec![json!("o2"), json!(2.0)],
        ];
        assert_eq!(
            writer.write_rows(&short).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        let not_bool = vec![vec![json!("o1"), json!(1.0), json!("false")]];
        assert_eq!(
            writer.write_rows(&not_bool).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        writer.write_rows(&order_rows()).unwrap();
        writer.end_entity().unwrap();
        assert_eq!(
            kind(writer.begin_entity(orders())),
            io::ErrorKind::InvalidInput,
            "same entity twice"
        );
        let summary = writer.commit().unwrap();
        assert_eq!(summary.rows, 2, "rejected batches wrote nothing");
        assert_eq!(
            read_records(&dir.path().join(&summary.files[0]), options(b',', false)).len(),
            3
        );

        for (folder, export_id, run_id, delimiter) in [
            ("../up", EXPORT_ID, "r", b','),
            ("ok", " ", "r", b','),
            ("ok", EXPORT_ID, "a/b", b','),
            ("ok", EXPORT_ID, "r", b'"'),
            ("ok", EXPORT_ID, "r", b'\n'),
        ] {
            let storage = LocalStorage::new(dir.path()).unwrap();
            let options = CsvOptions {
                delimiter,
                ..CsvOptions::default()
            };
            let mut writer = CdmFolderWriter::new(Box::new(storage), folder, export_id, run_id, run_time(), options);
            assert_eq!(
                kind(writer.begin_entity(orders())),
                io::ErrorKind::InvalidInput,
                "{folder} {export_id} {run_id}"
            );
            assert_eq!(writer.commit().unwrap_err().kind(), io::ErrorKind::InvalidInput);
        }
    }

    #[test]
    fn local_locations_are_absolute_percent_encoded_file_urls() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("with space#and%percent");
        let storage = LocalStorage::new(&root).unwrap();
        let location = storage.location("a b/ü.csv");
        let canonical = fs::canonicalize(&root).unwrap();
        assert!(location.starts_with("file:///"), "{location}");
        assert!(
            location.ends_with("/with%20space%23and%25percent/a%20b/%C3%BC.csv"),
            "{location}"
        );
        assert_eq!(path_of_location(&location), canonical.join("a b").join("ü.csv"));
        assert!(storage.path_of("../escape").is_err());
        assert!(storage.path_of("a//b").is_err());
    }

    #[test]
    fn folder_is_normalised() {
        let dir = tempfile::tempdir().unwrap();
        let storage = LocalStorage::new(dir.path()).unwrap();
        let mut writer = CdmFolderWriter::new(
            Box::new(storage),
            "/x//y/",
            EXPORT_ID,
            "r1",
            run_time(),
            CsvOptions::default(),
        );
        writer.begin_entity(orders()).unwrap();
        writer.end_entity().unwrap();
        let summary = writer.commit().unwrap();
        assert_eq!(summary.model_json_path, "x/y/model.json");
        assert_eq!(summary.files, ["x/y/orders/2024/05/01/0930-r1/orders_1.csv"]);
    }

    #[test]
    fn types_map_from_catalog_field_types() {
        let pairs = [
            ("STRING", "string"),
            ("INT64", "int64"),
            ("DOUBLE", "double"),
            ("BOOL", "boolean"),
            ("TIMESTAMP", "dateTimeOffset"),
            ("DATE", "date"),
            ("JSON", "json"),
        ];
        for (field_type, data_type) in pairs {
            assert_eq!(
                CdmType::of(FieldType::parse(field_type).unwrap()).data_type(),
                data_type
            );
        }
        assert_eq!(FieldType::parse("BLOB"), None);
    }

    #[test]
    fn keep_runs_removes_the_folders_of_older_runs_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let first = export_run(root, "run1", options(b',', false));
        let second = export_run(root, "run2", options(b',', false));
        // Beside the runs: a file of someone else's, and a folder that only looks like a run's.
        let stray = root.join(FOLDER).join("notes.txt");
        fs::write(&stray, "keep me").unwrap();
        let lookalike = root.join(FOLDER).join("customers/2024/05/01/not-a-run");
        fs::create_dir_all(&lookalike).unwrap();
        fs::write(lookalike.join("x.csv"), "x").unwrap();

        let mut third = writer(root, "run3", options(b',', false));
        third.keep_only_runs(["run2".to_string()]);
        write_both(&mut third);
        let third = third.commit().unwrap();
        assert_eq!(
            third.pruned,
            Pruned {
                folders: 2,
                error: None
            },
            "run1's customers and orders folders"
        );
        let left = snapshot(root);
        for file in &first.files {
            assert!(!left.contains_key(file), "{file} is gone");
        }
        for file in second.files.iter().chain(&third.files) {
            assert!(left.contains_key(file), "{file} stays");
        }
        assert!(stray.is_file() && lookalike.join("x.csv").is_file());
        assert!(!root.join(FOLDER).join("orders/2024/05/01/0930-run1").exists());
        let model = model_json(root);
        assert_valid(&model);
        assert_eq!(partition_locations(&model).len(), third.files.len());

        // Without keep_runs, nothing goes.
        let fourth = export_run(root, "run4", options(b',', false));
        assert_eq!(fourth.pruned, Pruned::default());
        assert!(snapshot(root).contains_key(&second.files[0]));
    }

    #[test]
    fn writer_can_move_to_a_blocking_thread() {
        fn assert_send<T: Send>() {}
        assert_send::<CdmFolderWriter>();
    }
}
