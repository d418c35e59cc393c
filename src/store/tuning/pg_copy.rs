//! A PostgreSQL transaction that can also `COPY … FROM STDIN`.
//!
//! COPY is how PostgreSQL takes rows fastest: it fills a page at a time, where an `INSERT`
//! (with or without `ON CONFLICT`) inserts and logs row by row. sea-orm's own transactions do
//! not hand out their connection, so this one holds a connection of the same pool through sqlx,
//! speaks sea-orm's `ConnectionTrait` (every usual query runs in it unchanged) and adds
//! [`CopyTxn::copy_in`].

use std::sync::Arc;

use sea_orm::sqlx::{self, PgPool, Postgres};
use sea_orm::{ConnectionTrait, DbBackend, DbErr, ExecResult, QueryResult, RuntimeErr, Statement};
use sea_query_sqlx::SqlxValues;
use tokio::sync::Mutex;

pub(crate) struct CopyTxn {
    /// sea-orm's `ConnectionTrait` takes `&self`; statements of one transaction run one at a
    /// time anyway.
    conn: Mutex<sqlx::Transaction<'static, Postgres>>,
}

/// How a COPY ended.
pub(crate) enum Copied {
    Rows(u64),
    /// A row broke a unique constraint. Nothing of the COPY was kept, and the transaction is
    /// aborted: the caller rolls it back.
    Conflict,
}

impl CopyTxn {
    pub(crate) async fn begin(pool: &PgPool) -> Result<CopyTxn, DbErr> {
        let txn = pool.begin().await.map_err(conn_err)?;
        Ok(CopyTxn { conn: Mutex::new(txn) })
    }

    pub(crate) async fn commit(self) -> Result<(), DbErr> {
        self.conn.into_inner().commit().await.map_err(exec_err)
    }

    pub(crate) async fn rollback(self) -> Result<(), DbErr> {
        self.conn.into_inner().rollback().await.map_err(exec_err)
    }

    /// Runs `statement` (a `COPY … FROM STDIN`) with `slices` of data in COPY's text format.
    /// Each slice is sent as soon as it is made, so the server reads one slice while the next
    /// is being made.
    pub(crate) async fn copy_in(&self, statement: &str, slices: impl Iterator<Item = String>) -> Result<Copied, DbErr> {
        let mut txn = self.conn.lock().await;
        let copied = async {
            let mut copy = txn.copy_in_raw(statement).await?;
            for slice in slices {
                copy.send(slice.into_bytes()).await?;
            }
            copy.finish().await
        }
        .await;
        match copied {
            Ok(rows) => Ok(Copied::Rows(rows)),
            Err(err) if is_unique_violation(&err) => Ok(Copied::Conflict),
            Err(err) => Err(exec_err(err)),
        }
    }
}

fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(e) if e.kind() == sqlx::error::ErrorKind::UniqueViolation)
}

fn exec_err(err: sqlx::Error) -> DbErr {
    DbErr::Exec(RuntimeErr::SqlxError(Arc::new(err)))
}

fn query_err(err: sqlx::Error) -> DbErr {
    DbErr::Query(RuntimeErr::SqlxError(Arc::new(err)))
}

fn conn_err(err: sqlx::Error) -> DbErr {
    DbErr::Conn(RuntimeErr::SqlxError(Arc::new(err)))
}

/// The statement's SQL with its values bound, as sea-orm's own PostgreSQL driver does it.
fn bind(stmt: &Statement) -> sqlx::query::Query<'_, Postgres, SqlxValues> {
    let values = stmt.values.clone().unwrap_or(sea_orm::sea_query::Values(Vec::new()));
    sqlx::query_with(sqlx::AssertSqlSafe(stmt.sql.as_str()), SqlxValues(values))
}

#[async_trait::async_trait]
impl ConnectionTrait for CopyTxn {
    fn get_database_backend(&self) -> DbBackend {
        DbBackend::Postgres
    }

    async fn execute_raw(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
        let mut txn = self.conn.lock().await;
        bind(&stmt).execute(&mut **txn).await.map(Into::into).map_err(exec_err)
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        let mut txn = self.conn.lock().await;
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
            .execute(&mut **txn)
            .await
            .map(Into::into)
            .map_err(exec_err)
    }

    async fn query_one_raw(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
        let mut txn = self.conn.lock().await;
        bind(&stmt)
            .fetch_optional(&mut **txn)
            .await
            .map(|row| row.map(Into::into))
            .map_err(query_err)
    }

    async fn query_all_raw(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        let mut txn = self.conn.lock().await;
        bind(&stmt)
            .fetch_all(&mut **txn)
            .await
            .map(|rows| rows.into_iter().map(Into::into).collect())
            .map_err(query_err)
    }
}
