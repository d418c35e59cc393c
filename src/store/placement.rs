//! Output areas (PRODUCT.md §3; the rules are `domain::output_area`): the reads behind "two
//! exports of an environment never write to the same or nested folders" and "a `root` never
//! reaches into another environment's area". The writes that change where something writes
//! run these checks inside their transaction after taking one lock, so that two concurrent
//! saves cannot both pass; `validate_only`, and the run engine at run start, run them as reads.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use sea_orm::{ColumnTrait, Condition, ConnectionTrait, DbBackend, EntityTrait, QueryFilter, QuerySelect};

use super::Store;
use super::models::{connection, export};
use crate::domain::connection::Connection;
use crate::domain::export::{Export, ExportState};
use crate::domain::names::ExportName;
use crate::domain::output_area::{
    LocalRoots, Location, check_root, connection_location, export_folder, export_location, first_overlap, normalize,
    overlap_violation,
};
use crate::error::{Error, Result};

/// Key of the PostgreSQL advisory lock that serialises those writes (any fixed number that no
/// other lock of the database uses: "exportd" in ASCII).
const OUTPUT_AREAS_LOCK: i64 = i64::from_be_bytes(*b"\0exportd");

/// Takes the output-area lock for the rest of the transaction. PostgreSQL: a
/// transaction-scoped advisory lock, released at commit or rollback; SQLite has a single
/// writer, which already serialises the transactions that write.
pub(crate) async fn lock(txn: &impl ConnectionTrait) -> Result<()> {
    if txn.get_database_backend() == DbBackend::Postgres {
        txn.execute_unprepared(&format!("SELECT pg_advisory_xact_lock({OUTPUT_AREAS_LOCK})"))
            .await?;
    }
    Ok(())
}

/// The operator's roots, and the request field an overlap is reported on, for the checks a
/// write makes in its transaction.
#[derive(Debug, Clone, Copy)]
pub struct Placement<'a> {
    pub roots: LocalRoots<'a>,
    pub field: &'a str,
}

/// What is being saved: an export as it will be stored, or a connection's new configuration.
pub enum Change<'a> {
    Export(&'a Export),
    Connection(&'a Connection),
}

/// Refuses `change` when an export it affects would write where another export of the
/// environment writes (INVALID_ARGUMENT on `field`, naming the other export).
pub(crate) async fn check_exports(
    db: &impl ConnectionTrait,
    change: Change<'_>,
    exports_root: &Path,
    field: &str,
) -> Result<()> {
    let env = match &change {
        Change::Export(export) => export.name.env.as_str(),
        Change::Connection(connection) => connection.name.env.as_str(),
    };
    let mut connections: HashMap<String, Connection> = connection::Entity::find()
        .filter(connection::Column::Env.eq(env))
        .all(db)
        .await?
        .into_iter()
        .map(|model| super::connections::to_domain(model).map(|c| (c.name.id.clone(), c)))
        .collect::<Result<_>>()?;
    let mut query = export::Entity::find()
        .select_only()
        .column(export::Column::Id)
        .column(export::Column::ConnectionId)
        .column(export::Column::Settings)
        .filter(export::Column::Env.eq(env))
        .filter(export::Column::State.eq(ExportState::Active.as_str()))
        .filter(export::Column::ConnectionId.is_not_null());
    // The export being saved, as it will be stored; or the connection whose exports move.
    let mut saved: Option<(ExportName, String, BTreeMap<String, String>)> = None;
    match &change {
        Change::Export(export) => {
            let (Some(name), ExportState::Active) = (&export.connection, export.state) else {
                return Ok(());
            };
            // A connection gone meanwhile is reported by the write itself.
            let Some(area) = connections
                .get(&name.id)
                .and_then(|c| connection_location(c, exports_root))
            else {
                return Ok(());
            };
            query = query
                .filter(export::Column::Id.ne(export.name.id.as_str()))
                .filter(candidates(export, &name.id, &area, &connections, exports_root));
            saved = Some((export.name.clone(), name.id.clone(), export.settings.clone()));
        }
        Change::Connection(connection) => {
            connections.insert(connection.name.id.clone(), (*connection).clone());
        }
    }
    let rows: Vec<(String, String, String)> = query.into_tuple().all(db).await?;
    let mut exports = Vec::with_capacity(rows.len() + 1);
    for (id, connection_id, settings) in rows {
        let settings: BTreeMap<String, String> = serde_json::from_str(&settings)
            .map_err(|_| Error::internal(format!("export '{id}' has corrupt settings")))?;
        exports.push((ExportName::new(env, id), connection_id, settings));
    }
    let changed: Vec<ExportName> = match (&change, saved) {
        (Change::Export(_), Some(saved)) => {
            let name = saved.0.clone();
            exports.push(saved);
            vec![name]
        }
        (Change::Connection(connection), _) => exports
            .iter()
            .filter(|(_, connection_id, _)| *connection_id == connection.name.id)
            .map(|(name, _, _)| name.clone())
            .collect(),
        _ => Vec::new(),
    };
    if changed.is_empty() {
        return Ok(());
    }
    let placed: Vec<(ExportName, Location)> = exports
        .into_iter()
        .filter_map(|(name, connection_id, settings)| {
            let location = export_location(connections.get(&connection_id)?, &name.id, &settings, exports_root)?;
            Some((name, location))
        })
        .collect();
    let changed: Vec<&ExportName> = changed.iter().collect();
    match first_overlap(&placed, &changed) {
        Some((name, other, how)) => Err(Error::invalid_fields(vec![overlap_violation(field, name, other, how)])),
        None => Ok(()),
    }
}

/// The exports that can meet `export` (on the connection `own`, whose exports go to `area`),
/// so that a save reads a few rows, not the whole environment: every export on a connection
/// whose area meets this one's, and on its own connection those with a `folder` setting or
/// whose id is the first folder of this export's (a default folder is the export id, and ids
/// are unique).
fn candidates(
    export: &Export,
    own: &str,
    area: &Location,
    connections: &HashMap<String, Connection>,
    exports_root: &Path,
) -> Condition {
    let meeting: Vec<&str> = connections
        .values()
        .filter(|c| c.name.id != own)
        .filter(|c| connection_location(c, exports_root).is_some_and(|l| l.overlap(area).is_some()))
        .map(|c| c.name.id.as_str())
        .collect();
    let folder = export_folder(&export.name.id, &export.settings);
    let first = folder.split('/').next().unwrap_or_default().to_string();
    let same_connection = Condition::all().add(export::Column::ConnectionId.eq(own)).add(
        Condition::any()
            // Settings are a JSON object of strings, written by serde_json: `"folder":` only
            // appears for that key (a quote inside a value is escaped).
            .add(export::Column::Settings.like("%\"folder\":%"))
            .add(export::Column::Id.eq(first)),
    );
    let mut any = Condition::any().add(same_connection);
    if !meeting.is_empty() {
        any = any.add(export::Column::ConnectionId.is_in(meeting));
    }
    any
}

/// Refuses a `local-files` connection's `root` that is not under the operator's allowed
/// roots, or reaches into another environment's area (INVALID_ARGUMENT on
/// `connection.config.root`, naming nothing of the other environment).
pub(crate) async fn check_root_of(
    db: &impl ConnectionTrait,
    connection: &Connection,
    roots: &LocalRoots<'_>,
) -> Result<()> {
    let Some(root) = connection
        .config
        .get("root")
        .filter(|_| connection.type_id == "local-files")
    else {
        return Ok(());
    };
    let configs: Vec<String> = connection::Entity::find()
        .select_only()
        .column(connection::Column::Config)
        .filter(connection::Column::Env.ne(connection.name.env.as_str()))
        .filter(connection::Column::TypeId.eq("local-files"))
        .into_tuple()
        .all(db)
        .await?;
    let foreign: Vec<PathBuf> = configs
        .iter()
        .filter_map(|config| serde_json::from_str::<BTreeMap<String, String>>(config).ok())
        .filter_map(|config| config.get("root").map(|r| normalize(Path::new(r), Path::new("/"))))
        .collect();
    check_root(&connection.name.env, root, roots, &foreign)
        .map_err(|description| Error::invalid("connection.config.root", description))
}

/// The config key that decides where a storage connection's exports go (the field an
/// overlap caused by a connection change is reported on).
pub fn location_field(connection: &Connection) -> &'static str {
    match connection.type_id.as_str() {
        "local-files" => "connection.config.root",
        "sftp" => "connection.config.folder",
        _ => "connection.config.prefix",
    }
}

impl Store {
    /// Whether `export` would write where another export of its environment writes, as a
    /// read: for `validate_only`, and for the run engine at run start (exports saved before
    /// these rules existed).
    pub async fn check_export_placement(&self, export: &Export, exports_root: &Path, field: &str) -> Result<()> {
        check_exports(self.reader(), Change::Export(export), exports_root, field).await
    }

    /// Whether a `local-files` connection's `root` is allowed, as a read (the run engine checks
    /// roots saved before the rules or the operator's roots changed).
    pub async fn check_connection_root(&self, connection: &Connection, roots: &LocalRoots<'_>) -> Result<()> {
        check_root_of(self.reader(), connection, roots).await
    }

    /// The checks a save of `connection` makes, as reads (for `validate_only`).
    pub async fn check_connection_placement(&self, connection: &Connection, roots: &LocalRoots<'_>) -> Result<()> {
        check_root_of(self.reader(), connection, roots).await?;
        check_exports(
            self.reader(),
            Change::Connection(connection),
            roots.exports_root,
            location_field(connection),
        )
        .await
    }
}
