//! Persistence: sea-orm models, migrations and repositories. The only code that speaks SQL.
//!
//! SQLite (the embedded default) gets one writer connection and a small pool of readers: WAL
//! lets readers run beside the single writer, and one writer means our own transactions never
//! fail with SQLITE_BUSY. PostgreSQL uses one pool for both.

use std::time::Duration;

use sea_orm::{ConnectOptions, Database, DatabaseConnection, DbBackend};
use sea_orm_migration::MigratorTrait;

pub mod alerts;
pub mod audiences;
pub mod audit;
pub mod connections;
pub mod delivered;
pub mod entities;
pub mod environments;
pub mod exports;
pub mod leases;
pub mod list;
pub mod migration;
pub mod models;
pub mod placement;
pub mod record_rows;
pub mod records;
pub mod rejects;
pub mod request_ids;
pub mod reseal;
pub mod runs;
pub mod schedules;
pub mod secrets;
pub mod segments;
pub mod system_refreshes;
mod tuning;

use crate::pg_nodelay;
use tuning::{changes, checkpoints, sqlite_plans, statistics};

pub use changes::{WriteTxn, Writer};
pub use secrets::Sealer;

pub struct Store {
    writer: DatabaseConnection,
    reader: DatabaseConnection,
    pub sealer: Sealer,
    statistics: statistics::Statistics,
    changes: std::sync::Arc<changes::Changes>,
    /// Reads served without the database while nothing was written since (SQLite only).
    cache: changes::ReadCache,
    /// Environment kinds, which never change once an environment exists: read on every export
    /// request, so kept after the first read.
    environment_kinds:
        std::sync::RwLock<std::collections::HashMap<String, crate::domain::environment::EnvironmentKind>>,
    /// Checkpoints the WAL beside the writer (SQLite files only; `tuning::checkpoints`).
    checkpointer: Option<checkpoints::Checkpointer>,
}

impl Store {
    /// Connects to `url` (`sqlite://…` or `postgres://…`). Does not migrate. On SQLite, up to
    /// `read_cache_entries` reads are served from memory until the next write (see `changes`);
    /// PostgreSQL is shared by replicas, so it is always read.
    pub async fn open(url: &str, sealer: Sealer, read_cache_entries: usize) -> Result<Store, String> {
        let shown = crate::config::redact_url(url);
        if let Some(path) = sqlite_path(url)
            && let Some(parent) = std::path::Path::new(&path).parent()
            && !parent.as_os_str().is_empty()
        {
            crate::file_modes::create_private_folder(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        // The database holds every tenant's data: readable by the server's user only.
        if let Some(path) = sqlite_path(url) {
            crate::file_modes::ensure_private_file(std::path::Path::new(&path))
                .map_err(|e| format!("cannot create {path}: {e}"))?;
        }
        let is_sqlite = url.starts_with("sqlite:");
        let writer = connect(url, if is_sqlite { 1 } else { 16 })
            .await
            .map_err(|e| format!("cannot open database {shown}: {e}"))?;
        let reader = if is_sqlite {
            connect(url, 4)
                .await
                .map_err(|e| format!("cannot open database {shown}: {e}"))?
        } else {
            writer.clone()
        };
        let checkpointer = match sqlite_path(url) {
            Some(_) => Some(checkpoints::Checkpointer::start(
                connect(url, 1)
                    .await
                    .map_err(|e| format!("cannot open database {shown}: {e}"))?,
            )),
            None => None,
        };
        let changes = std::sync::Arc::new(changes::Changes::default());
        let cache = changes::ReadCache::new(changes.clone(), if is_sqlite { read_cache_entries } else { 0 });
        Ok(Store {
            writer,
            reader,
            sealer,
            statistics: statistics::Statistics::default(),
            changes,
            cache,
            environment_kinds: Default::default(),
            checkpointer,
        })
    }

    /// Applies the pending migrations; returns how many it applied (0: the schema was up to
    /// date). On PostgreSQL, several processes may start at once on one database: the whole
    /// migration runs in one transaction holding an advisory lock, so that one process
    /// migrates while the others wait for it, then find nothing pending. (Without the lock
    /// they would race on `CREATE TABLE` and all but one fail.) On SQLite the transaction's
    /// write lock does the same. DDL is transactional in both databases, so a migration that
    /// fails leaves the schema as it was.
    pub async fn migrate(&self) -> Result<usize, String> {
        use sea_orm::{ConnectionTrait, SqliteTransactionMode, TransactionOptions, TransactionTrait};
        let failed = |e: sea_orm::DbErr| format!("database migration failed: {e}");
        // The usual case (an operator command beside a running server, a restart) has nothing
        // to apply: a plain read says so without the write lock, which a busy server holds often.
        if self.schema_is_current().await {
            return Ok(0);
        }
        // SQLite: the write lock from the start, so that a second process waits for it rather
        // than read the pending migrations and then fail to upgrade to a writer.
        let options = TransactionOptions {
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..Default::default()
        };
        let txn = self.writer.begin_with_options(options).await.map_err(failed)?;
        if self.is_postgres() {
            txn.execute_unprepared(&format!("SELECT pg_advisory_xact_lock({MIGRATION_LOCK})"))
                .await
                .map_err(failed)?;
        }
        // Creates sea-orm's migrations table first if needed (under the lock).
        let pending = migration::Migrator::get_pending_migrations(&txn)
            .await
            .map_err(failed)?
            .len();
        migration::Migrator::up(&txn, None).await.map_err(failed)?;
        txn.commit().await.map_err(failed)?;
        Ok(pending)
    }

    /// True when exactly the migrations this build knows are recorded as applied (read-only;
    /// false when the migrations table does not exist yet).
    async fn schema_is_current(&self) -> bool {
        use sea_orm::{ConnectionTrait, Statement};
        let Ok(rows) = self
            .reader
            .query_all_raw(Statement::from_string(
                self.backend(),
                "SELECT version FROM seaql_migrations",
            ))
            .await
        else {
            return false;
        };
        let applied: std::collections::BTreeSet<String> = rows
            .iter()
            .filter_map(|row| row.try_get::<String>("", "version").ok())
            .collect();
        // Equal, not a superset: a database migrated by a newer build takes the locked path,
        // whose `up` refuses it naming the migration this build lacks.
        let known: std::collections::BTreeSet<String> = migration::Migrator::migrations()
            .iter()
            .map(|m| m.name().to_string())
            .collect();
        applied == known
    }

    /// The connection for writes (one writer on SQLite). Every write goes through it: the
    /// read cache learns from it that data changed.
    pub fn writer(&self) -> Writer<'_> {
        Writer::new(&self.writer, &self.changes)
    }

    /// The write connection for writes to tables that no cached read depends on (leases, run
    /// progress, record upserts): they leave the read cache alone.
    pub(crate) fn untracked_writer(&self) -> Writer<'_> {
        Writer::untracked(&self.writer)
    }

    /// The write connection for reads that must see the latest writes.
    pub fn primary(&self) -> &DatabaseConnection {
        &self.writer
    }

    /// The connection for plain reads.
    pub fn reader(&self) -> &DatabaseConnection {
        &self.reader
    }

    pub fn backend(&self) -> DbBackend {
        self.writer.get_database_backend()
    }

    pub fn is_postgres(&self) -> bool {
        self.backend() == DbBackend::Postgres
    }

    pub async fn close(self) {
        drop(self.checkpointer);
        let _ = self.reader.close().await;
        let _ = self.writer.close().await;
    }
}

/// Key of the PostgreSQL advisory lock held while migrating ("migrate" in ASCII); the
/// output-area lock (`placement.rs`) uses another.
const MIGRATION_LOCK: i64 = i64::from_be_bytes(*b"\0migrate");

/// The file of a `sqlite:` URL (None for other databases and in-memory SQLite).
pub fn sqlite_path(url: &str) -> Option<String> {
    let rest = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty() && path != ":memory:").then(|| path.to_string())
}

pub(crate) async fn connect(url: &str, max_connections: u32) -> Result<DatabaseConnection, sea_orm::DbErr> {
    let mut options = ConnectOptions::new(url.to_string());
    options
        .max_connections(max_connections)
        .min_connections(1)
        .connect_timeout(Duration::from_secs(10))
        .acquire_timeout(Duration::from_secs(30))
        .sqlx_logging(false)
        .map_sqlx_sqlite_opts(|opts| {
            opts.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                .synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(30))
                .pragma("wal_autocheckpoint", checkpoints::BACKSTOP_PAGES.to_string())
                .pragma("journal_size_limit", checkpoints::WAL_KEPT_BYTES.to_string())
                .foreign_keys(true)
                .create_if_missing(true)
        })
        .map_sqlx_sqlite_pool_opts(|pool| {
            pool.after_connect(|connection, _| Box::pin(sqlite_plans::enable_stable_plans(connection)))
        })
        .map_sqlx_postgres_pool_opts(|pool| {
            pool.after_connect(|connection, _| Box::pin(pg_nodelay::enable_nodelay(connection)))
        });
    Database::connect(options).await
}

/// True when a database error is a unique-constraint violation (a concurrent insert won).
pub fn is_unique_violation(err: &sea_orm::DbErr) -> bool {
    matches!(err.sql_err(), Some(sea_orm::SqlErr::UniqueConstraintViolation(_)))
}

/// What an export reads, for "who uses this?" checks.
pub enum ExportSource<'a> {
    Entity(&'a str),
    Segment(&'a str),
}

/// Names of the exports that read an entity or segment; call inside the transaction that
/// deletes it (see `exports::exports_using`).
pub(crate) use exports::exports_using;

/// `<table>.key IN (…)` with the keys as ONE JSON parameter. A list of thousands of bind
/// parameters makes PostgreSQL's generic plan fall back to a sequential scan once prepared
/// statements are reused; a single array parameter keeps the primary-key index in use (and
/// stays far below SQLite's parameter limit).
pub(crate) fn key_in(backend: DbBackend, table: &str, keys: &[&str]) -> sea_orm::sea_query::Expr {
    let keys = serde_json::to_string(keys).expect("strings serialize");
    let sql = match backend {
        DbBackend::Postgres => format!("\"{table}\".\"key\" IN (SELECT json_array_elements_text(CAST($1 AS json)))"),
        _ => format!("\"{table}\".\"key\" IN (SELECT value FROM json_each(?))"),
    };
    sea_orm::sea_query::Expr::cust_with_values(sql, [keys])
}

/// `?` placeholders for SQLite, `$n` for PostgreSQL.
pub(crate) fn placeholders(backend: DbBackend, text: &str) -> String {
    if backend != DbBackend::Postgres {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 16);
    let mut n = 0;
    for c in text.chars() {
        if c == '?' {
            n += 1;
            out.push_str(&format!("${n}"));
        } else {
            out.push(c);
        }
    }
    out
}

/// A database failure is logged here, where it happens, and reaches callers as a plain internal
/// error: SQL and connection details are no business of an API client (and domain code never
/// sees sea-orm).
impl From<sea_orm::DbErr> for crate::error::Error {
    fn from(err: sea_orm::DbErr) -> Self {
        tracing::error!(error = %err, "database error");
        crate::error::Error::internal("internal storage error")
    }
}

impl From<sea_orm::TransactionError<crate::error::Error>> for crate::error::Error {
    fn from(err: sea_orm::TransactionError<crate::error::Error>) -> Self {
        match err {
            sea_orm::TransactionError::Connection(db) => db.into(),
            sea_orm::TransactionError::Transaction(e) => e,
        }
    }
}
