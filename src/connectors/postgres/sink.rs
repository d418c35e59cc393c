//! One run's writes to PostgreSQL.
//!
//! - `replace`: each part is loaded into a staging table with `COPY … FROM STDIN` (an
//!   incremental part's changes are merged into a staging copy of the current table); at commit
//!   one transaction drops every old table and renames every staging table into its place, so
//!   readers see the old tables or the new, never a partial one.
//! - `upsert`: each batch is copied into a temporary table and merged with `INSERT … ON
//!   CONFLICT (key) DO UPDATE` and a `DELETE` of the removed keys, in one transaction per batch.
//!
//! A batch that fails with a data or constraint error (SQLSTATE classes 22, 23) is split in
//! halves until the rows at fault are alone: those are rejected with their SQLSTATE and the
//! server's message, the others delivered. Lost connections and serialization failures are
//! retried (a new connection, the same rows) through the shared retry policy. A cancelled run
//! stops at once, also in the middle of a statement (its connection is dropped).

use async_trait::async_trait;
use sea_orm::sqlx::{self, Connection, PgConnection};
use serde_json::Value;

use super::TYPE_ID;
use super::address::Address;
use super::errors::{self, is_row_fault};
use super::names::{qualified, quote, with_suffix};
use super::rows::Lines;
use super::table::{self, DELETED};
use crate::connectors::retry::{Attempts, Failure, RetryPolicy};
use crate::connectors::{Cancellation, Delivery, PartSchema, Rejection, Sink, SinkSummary};

/// A server that does not answer the connection within this long is unreachable.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Replace,
    Upsert,
}

/// One connection, opened again after it was lost.
pub struct Session {
    pub address: Address,
    conn: Option<PgConnection>,
}

impl Session {
    pub fn new(address: Address) -> Session {
        Session { address, conn: None }
    }

    /// A connection whose socket sends at once (`TCP_NODELAY`): without it every COPY's short
    /// CopyDone waited for a delayed ACK, and a COPY of 10,000 rows took 65 ms instead of 20
    /// (benches/postgres_target.rs).
    pub async fn connect(address: &Address) -> Result<PgConnection, sqlx::Error> {
        crate::connectors::ensure_tls_provider();
        let connecting = async {
            let mut connection = PgConnection::connect_with(&address.options).await?;
            crate::pg_nodelay::enable_nodelay(&mut connection).await?;
            Ok(connection)
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(result) => result,
            Err(_) => Err(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("connecting to {}:{} timed out", address.host, address.port),
            ))),
        }
    }

    pub async fn conn(&mut self) -> Result<&mut PgConnection, Failure> {
        if self.conn.is_none() {
            let conn = Self::connect(&self.address)
                .await
                .map_err(|e| self.failure(&format!("cannot connect to {}", self.address.shown()), &e))?;
            self.conn = Some(conn);
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }

    /// After a failure the connection may be mid-transaction or gone: the next step opens a
    /// new one.
    pub fn reset(&mut self) {
        self.conn = None;
    }

    pub fn failure(&self, context: &str, err: &sqlx::Error) -> Failure {
        errors::failure(context, err, &self.address.secrets)
    }

    pub async fn execute(&mut self, sql: &str) -> Result<(), Failure> {
        let conn = self.conn().await?;
        let result = sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
            .execute(&mut *conn)
            .await;
        result
            .map(|_| ())
            .map_err(|e| self.failure("PostgreSQL refused a statement", &e))
    }
}

/// Where one part's rows go.
pub struct PartTarget {
    pub schema: PartSchema,
    /// `"schema"."table"` readers use.
    pub table: String,
    pub table_name: String,
    /// The table the batches write: the staging table (replace) or the table itself (upsert).
    pub destination: String,
    /// Replace mode: the staging table's bare name.
    pub staging: Option<String>,
    /// Batches go through the changes table and are merged (upsert, or the changes of an
    /// incremental part in replace mode); otherwise they are copied straight in.
    pub merge: bool,
    /// Replace mode, changes of an incremental part: the staging table starts as a copy of the
    /// current table (which exists and fits).
    pub copy_current: bool,
}

/// Everything a batch's COPY needs: the connection and the parts' targets. It is lent to the
/// task copying a batch and comes back with the batch's delivery.
pub struct Loader {
    pub session: Session,
    pub mode: Mode,
    pub schema: String,
    pub cancellation: Cancellation,
    /// The parts' targets, in run order; the current part is the first not yet begun.
    pub targets: Vec<PartTarget>,
    pub next: usize,
    pub current: Option<usize>,
    pub bytes: u64,
    pub rows: u64,
}

/// One step that is retried as a whole on a new connection.
enum Step {
    /// Statements (a transaction of them, when they say so).
    Script(String),
    /// A run of rows of part `index`.
    Rows { index: usize, data: Vec<u8> },
}

/// What one try of a run of rows came to.
enum Tried {
    Done,
    /// A row of the run is at fault (SQLSTATE, message).
    RowFault(String, String),
}

impl Loader {
    fn changes_table(index: usize) -> String {
        format!("_exportd_changes_{index}")
    }

    fn current(&self) -> Result<usize, Failure> {
        self.current.ok_or_else(|| Failure::Permanent {
            message: "no part is open".into(),
        })
    }

    /// Runs `step` until it is done, retrying transient failures on a new connection, and
    /// stopping (in a wait, too) once the run is cancelled.
    async fn retrying(&mut self, step: Step) -> Result<Tried, Failure> {
        let mut attempts = Attempts::new(RetryPolicy::default()).of_target(TYPE_ID);
        loop {
            // A statement in flight is given up too (PRODUCT.md §11: a cancel takes effect
            // within a second): the connection is dropped below, which ends it at the server.
            let cancellation = self.cancellation.clone();
            let tried = cancellation
                .unless_cancelled(async {
                    match &step {
                        Step::Script(sql) => self.session.execute(sql).await.map(|()| Tried::Done),
                        Step::Rows { index, data } => self.try_rows(*index, data).await,
                    }
                })
                .await;
            let failure = match tried {
                Ok(tried) => return Ok(tried),
                Err(failure) => failure,
            };
            self.session.reset();
            match attempts.next(&failure) {
                Some(wait) => {
                    let cancellation = self.cancellation.clone();
                    cancellation
                        .unless_cancelled(async {
                            tokio::time::sleep(wait).await;
                            Ok(())
                        })
                        .await?;
                }
                None => return Err(failure),
            }
        }
    }

    /// Starts a part: replace mode makes its staging table (from the current table, for the
    /// changes of an incremental part), upsert mode its table if missing.
    async fn prepare(&mut self, index: usize) -> Result<(), Failure> {
        let target = &self.targets[index];
        let mut statements = Vec::new();
        match &target.staging {
            Some(staging) => {
                statements.push(format!("DROP TABLE IF EXISTS {}", qualified(&self.schema, staging)));
                // Its key is named after the staging table: the current table's key index
                // keeps its name until the swap drops it.
                statements.push(table::create_table(&self.schema, staging, staging, &target.schema));
                if target.copy_current {
                    let columns = column_list(&target.schema);
                    statements.push(format!(
                        "INSERT INTO {} ({columns}) SELECT {columns} FROM {}",
                        target.destination, target.table
                    ));
                }
            }
            None => statements.push(table::create_table(
                &self.schema,
                &target.table_name,
                &target.table_name,
                &target.schema,
            )),
        }
        let script = format!("BEGIN; {}; COMMIT", statements.join("; "));
        self.retrying(Step::Script(script)).await.map(|_| ())
    }

    /// Delivers a batch, splitting runs of rows that fail with a row fault until the rows at
    /// fault are alone.
    async fn deliver(&mut self, lines: Lines) -> Result<Delivery, Failure> {
        let index = self.current()?;
        let mut delivery = Delivery::default();
        // Runs of rows still to deliver, the next on top.
        let mut pending: Vec<std::ops::Range<usize>> = Vec::new();
        pending.push(0..lines.len());
        while let Some(range) = pending.pop() {
            if range.is_empty() {
                continue;
            }
            let data = lines.slice(range.clone()).to_vec();
            let size = data.len() as u64;
            match self.retrying(Step::Rows { index, data }).await? {
                Tried::Done => {
                    let removed = lines.deleted[range.clone()].iter().filter(|d| **d).count() as u64;
                    delivery.removed += removed;
                    delivery.accepted += range.len() as u64 - removed;
                    self.bytes += size;
                    self.rows += range.len() as u64 - removed;
                }
                Tried::RowFault(code, message) if range.len() == 1 => {
                    let message = crate::connectors::storage::object::redact(&message, &self.session.address.secrets);
                    delivery
                        .rejected
                        .push(Rejection::new(lines.keys[range.start].clone(), &message, code));
                }
                Tried::RowFault(..) => {
                    let middle = range.start + range.len() / 2;
                    // Popped first half first, so rows keep their order.
                    pending.push(middle..range.end);
                    pending.push(range.start..middle);
                }
            }
        }
        delivery.bytes = Some(self.bytes);
        Ok(delivery)
    }

    /// One try of a run of rows: copied straight in, or copied into the changes table and
    /// merged, in one transaction.
    async fn try_rows(&mut self, index: usize, data: &[u8]) -> Result<Tried, Failure> {
        let target = &self.targets[index];
        let columns = column_list(&target.schema);
        let destination = target.destination.clone();
        let merge = target.merge.then(|| {
            let changes = quote(&Self::changes_table(index));
            (
                table::create_changes_table(&Self::changes_table(index), &target.schema),
                format!("COPY {changes} ({columns}, {}) FROM STDIN", quote(DELETED)),
                merge_statements(&target.schema, &destination, &changes),
            )
        });
        let secrets = self.session.address.secrets.clone();
        let conn = self.session.conn().await?;
        let outcome = match merge {
            None => copy(&mut *conn, &format!("COPY {destination} ({columns}) FROM STDIN"), data).await,
            Some((create, copy_statement, merge)) => {
                let result = async {
                    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("BEGIN; {create}")))
                        .execute(&mut *conn)
                        .await?;
                    copy(&mut *conn, &copy_statement, data).await?;
                    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("{merge}; COMMIT")))
                        .execute(&mut *conn)
                        .await?;
                    Ok::<_, sqlx::Error>(0u64)
                }
                .await;
                if result.is_err() {
                    // Nothing of the batch stays; the connection is ready for the next try.
                    let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
                }
                result
            }
        };
        match outcome {
            Ok(_) => Ok(Tried::Done),
            Err(err) => match errors::sqlstate(&err) {
                Some(code) if is_row_fault(&code) => {
                    let message = err
                        .as_database_error()
                        .map(|d| d.message().to_string())
                        .unwrap_or_default();
                    Ok(Tried::RowFault(code, message))
                }
                _ => Err(errors::failure("writing rows", &err, &secrets)),
            },
        }
    }

    /// Replace mode: every staging table takes its table's place, in one transaction.
    async fn swap(&mut self) -> Result<(), Failure> {
        let mut statements = vec!["BEGIN".to_string()];
        for target in &self.targets {
            let Some(staging) = &target.staging else { continue };
            statements.push(format!("DROP TABLE IF EXISTS {}", target.table));
            statements.push(format!(
                "ALTER TABLE {} RENAME TO {}",
                qualified(&self.schema, staging),
                quote(&target.table_name)
            ));
            if !target.schema.primary_key.is_empty() {
                statements.push(format!(
                    "ALTER TABLE {} RENAME CONSTRAINT {} TO {}",
                    target.table,
                    quote(&with_suffix(staging, "_pkey")),
                    quote(&with_suffix(&target.table_name, "_pkey"))
                ));
            }
        }
        statements.push("COMMIT".into());
        self.retrying(Step::Script(statements.join("; "))).await.map(|_| ())
    }

    /// What dropping this run's staging tables needs, also when the loader is lost with a
    /// batch that had to be stopped.
    pub fn cleanup(&self) -> Cleanup {
        Cleanup {
            address: self.session.address.clone(),
            drops: self
                .targets
                .iter()
                .filter_map(|t| t.staging.as_ref())
                .map(|staging| format!("DROP TABLE IF EXISTS {}", qualified(&self.schema, staging)))
                .collect(),
        }
    }
}

/// The staging tables of a run, to drop when it ends without its swap.
pub struct Cleanup {
    address: Address,
    drops: Vec<String>,
}

impl Cleanup {
    /// Drops them on a new connection (best effort, bounded).
    async fn drop_staging(self) {
        if self.drops.is_empty() {
            return;
        }
        let mut session = Session::new(self.address);
        let script = self.drops.join("; ");
        let dropped = tokio::time::timeout(std::time::Duration::from_secs(60), session.execute(&script)).await;
        if !matches!(dropped, Ok(Ok(()))) {
            tracing::warn!("cannot drop the staging tables of an aborted postgres run");
        }
    }
}

fn column_list(part: &PartSchema) -> String {
    part.columns
        .iter()
        .map(|c| quote(&c.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Upserts of the rows that are not deletions, then deletions of the keys removed.
fn merge_statements(part: &PartSchema, destination: &str, changes: &str) -> String {
    let columns = column_list(part);
    let key = quote(&part.primary_key);
    let updates: Vec<String> = part
        .columns
        .iter()
        .filter(|c| c.name != part.primary_key)
        .map(|c| format!("{0} = EXCLUDED.{0}", quote(&c.name)))
        .collect();
    let on_conflict = if updates.is_empty() {
        "DO NOTHING".to_string()
    } else {
        format!("DO UPDATE SET {}", updates.join(", "))
    };
    let deleted = quote(DELETED);
    format!(
        "INSERT INTO {destination} AS t ({columns}) SELECT {columns} FROM {changes} WHERE NOT {deleted} \
         ON CONFLICT ({key}) {on_conflict}; \
         DELETE FROM {destination} AS t USING {changes} AS c WHERE c.{deleted} AND t.{key} = c.{key}"
    )
}

/// `COPY … FROM STDIN` of `data`, in slices of at most 1 MiB.
async fn copy(conn: &mut PgConnection, statement: &str, data: &[u8]) -> Result<u64, sqlx::Error> {
    let mut copy = conn.copy_in_raw(statement).await?;
    for slice in data.chunks(1 << 20) {
        copy.send(slice).await?;
    }
    copy.finish().await
}

/// The sink: batches are encoded while the batch before is being copied. Batches still go to
/// the server one at a time, in order, on one connection; what `write_rows` answers is the
/// delivery of the batch before (the last one's comes with `end_part`).
pub struct PostgresSink {
    /// The loader, while no batch is being copied.
    loader: Option<Loader>,
    /// The batch being copied (its retries and splits included) on a task of its own.
    in_flight: Option<tokio::task::JoinHandle<(Loader, Result<Delivery, Failure>)>>,
    /// How the open part's batches are encoded: its schema, and whether with the deletion flag.
    encoding: Option<(PartSchema, bool)>,
    cleanup: Option<Cleanup>,
}

impl PostgresSink {
    pub fn new(loader: Loader) -> PostgresSink {
        PostgresSink {
            cleanup: Some(loader.cleanup()),
            loader: Some(loader),
            in_flight: None,
            encoding: None,
        }
    }

    /// Waits for the batch being copied, if any, and says what became of it.
    async fn settle(&mut self) -> Result<Delivery, Failure> {
        let Some(copying) = self.in_flight.take() else {
            return Ok(Delivery::default());
        };
        let (loader, delivered) = copying.await.map_err(|e| Failure::Permanent {
            message: format!("copying a batch into PostgreSQL stopped: {e}"),
        })?;
        self.loader = Some(loader);
        delivered
    }

    /// The loader, once nothing is in flight.
    async fn settled(&mut self) -> Result<(Delivery, &mut Loader), Failure> {
        let delivered = self.settle().await?;
        let loader = self.loader.as_mut().ok_or_else(|| Failure::Permanent {
            message: "the PostgreSQL connection was lost with a stopped batch".into(),
        })?;
        Ok((delivered, loader))
    }

    /// Stops the batch being copied, if any (the run ends without it).
    fn stop_in_flight(&mut self) {
        if let Some(copying) = self.in_flight.take() {
            copying.abort();
        }
    }
}

impl Drop for PostgresSink {
    fn drop(&mut self) {
        self.stop_in_flight();
    }
}

#[async_trait]
impl Sink for PostgresSink {
    async fn begin_part(&mut self, part: &PartSchema) -> Result<(), Failure> {
        let (_, loader) = self.settled().await?;
        let index = loader.next;
        let merge = match loader.targets.get(index) {
            Some(target) if target.schema.id == part.id => target.merge,
            _ => {
                return Err(Failure::Permanent {
                    message: format!("the part '{}' was not announced when the run opened", part.id),
                });
            }
        };
        loader.next += 1;
        loader.prepare(index).await?;
        loader.current = Some(index);
        let encoding = (loader.targets[index].schema.clone(), merge);
        self.encoding = Some(encoding);
        Ok(())
    }

    async fn write_rows(&mut self, rows: Vec<Vec<Value>>) -> Result<Delivery, Failure> {
        let (schema, merge) = self.encoding.as_ref().ok_or_else(|| Failure::Permanent {
            message: "no part is open".into(),
        })?;
        // Encoding this batch overlaps copying the one before.
        let lines = Lines::encode(schema, rows, *merge);
        let delivered = self.settle().await?;
        let mut loader = self.loader.take().ok_or_else(|| Failure::Permanent {
            message: "the PostgreSQL connection was lost with a stopped batch".into(),
        })?;
        self.in_flight = Some(tokio::spawn(async move {
            let delivered = loader.deliver(lines).await;
            (loader, delivered)
        }));
        Ok(delivered)
    }

    async fn end_part(&mut self) -> Result<Delivery, Failure> {
        self.encoding = None;
        let (mut delivered, loader) = self.settled().await?;
        loader.current = None;
        delivered.bytes = Some(loader.bytes);
        Ok(delivered)
    }

    async fn commit(mut self: Box<Self>) -> Result<SinkSummary, Failure> {
        let (_, loader) = self.settled().await?;
        if loader.mode == Mode::Replace {
            loader.swap().await?;
        }
        if let Some(conn) = loader.session.conn.take() {
            let _ = conn.close().await;
        }
        let tables: Vec<String> = loader.targets.iter().map(|t| t.table.replace('"', "")).collect();
        Ok(SinkSummary {
            files: Vec::new(),
            bytes: loader.bytes,
            location: format!(
                "{} {} to {}",
                loader.rows,
                if loader.rows == 1 { "row" } else { "rows" },
                tables.join(", ")
            ),
            removed_run_folders: 0,
            cleanup_error: None,
        })
    }

    /// Replace mode: the staging tables go; the tables readers use were never touched. Upsert
    /// batches already committed stay (each was whole). A batch being copied is stopped.
    async fn abort(mut self: Box<Self>) {
        self.stop_in_flight();
        if let Some(cleanup) = self.cleanup.take() {
            cleanup.drop_staging().await;
        }
    }

    /// The run's next attempt drops and rebuilds the same staging tables (their names come from
    /// the run id).
    async fn abandon(mut self: Box<Self>) {
        self.stop_in_flight();
    }
}

/// The staging table of `table` for a run: stable across the run's attempts, distinct per run.
pub fn staging_name(run_id: &str, table: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("{run_id}\0{table}").as_bytes());
    with_suffix("_exportd_staging_", &hex::encode(&digest[..6]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_target_connection_sends_without_delay() {
        let Some(url) = crate::pg_nodelay::suite_url() else {
            return;
        };
        let address = super::super::address::parse(&url).unwrap();
        let mut connection = Session::connect(&address).await.unwrap();
        assert_eq!(crate::pg_nodelay::nodelay(&mut connection).await.unwrap(), Some(true));
    }
}
