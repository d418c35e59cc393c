//! `postgres`: a typed table per entity or segment, bulk-loaded with `COPY` (CONNECTORS.md,
//! "Wire details": `postgres`; PRODUCT.md §11 and §12).
//!
//! References followed, from the PostgreSQL documentation (current release):
//! - SQL commands: `COPY` (text format: tab-separated, `\N` for NULL, backslash escapes;
//!   `FROM STDIN`), `INSERT … ON CONFLICT (…) DO UPDATE SET … = EXCLUDED.…`, `DELETE … USING`,
//!   `CREATE TEMPORARY TABLE … ON COMMIT DELETE ROWS`, `ALTER TABLE … RENAME [CONSTRAINT]`;
//!   DDL is transactional, so a drop and a rename commit together.
//! - "Frontend/Backend Protocol", COPY sub-protocol (`CopyData`, `CopyDone`, `ErrorResponse`
//!   with the SQLSTATE in field `C`), spoken through sqlx's `PgConnection::copy_in_raw`.
//! - Appendix A "PostgreSQL Error Codes": class 22 data exception, 23 integrity constraint
//!   violation (23514 check_violation, 23505 unique_violation, 23502 not_null_violation), 08
//!   connection exception, 28 invalid authorization (28P01 invalid_password), 3D000
//!   invalid_catalog_name, 40001 serialization_failure, 40P01 deadlock_detected.
//! - §4.1.1 "Identifiers and Key Words": unquoted names fold to lower case, identifiers are at
//!   most NAMEDATALEN-1 = 63 bytes (longer ones are truncated), quoted identifiers double `"`.
//! - libpq §"Connection Strings" (URI form) and §"SSL Support" (`sslmode`: disable, allow,
//!   prefer (the default), require, verify-ca, verify-full).
//! - "System Information Functions": `has_schema_privilege(…, 'USAGE' | 'CREATE')`; the
//!   `pg_namespace`, `pg_class`, `pg_attribute`, `pg_index` catalogues; `format_type`.

mod address;
mod errors;
mod names;
mod rows;
mod sink;
mod table;

use std::collections::BTreeMap;

use async_trait::async_trait;
use sea_orm::sqlx::{self, Connection};

use self::address::Address;
use self::names::{DEFAULT_SCHEMA, qualified};
use self::sink::{Loader, Mode, PartTarget, PostgresSink, Session, staging_name};
use self::table::Fit;
use super::registry::{ALL_SEGMENTS, BOTH_KINDS, FILE_MODES, key, optional};
use super::retry::{Failure, retried};
use super::{Check, Connector, RunTarget, Sink, Target, TestReport, network_step};
use crate::domain::connection_type::{Category, ConnectionTypeSpec, ValueKind};
use crate::error::FieldViolation;

const TYPE_ID: &str = "postgres";

/// The connection type this module implements (CONNECTORS.md): ids and keys are part of the API.
pub const SPEC: ConnectionTypeSpec = ConnectionTypeSpec {
    id: TYPE_ID,
    display_name: "PostgreSQL",
    category: Category::Database,
    export_kinds: BOTH_KINDS,
    segment_types: ALL_SEGMENTS,
    sync_modes: FILE_MODES,
    required_fields: &[],
    identifier_fields: &[],
    profile_limit: 0,
    minimum_segment_size: 0,
    config: &[
        optional(
            "schema",
            "schema the tables are written in (default public); it must exist",
            ValueKind::SqlIdentifier,
        ),
        optional(
            "table_prefix",
            "prefix of every table name (derived or set with `table`)",
            ValueKind::SqlIdentifier,
        ),
    ],
    secrets: &[key(
        "url",
        "connection URL, postgres://user:password@host:port/database (add ?sslmode=require for TLS)",
        ValueKind::Url(&["postgres", "postgresql"]),
    )],
    one_of_secrets: &[],
    settings: &[
        optional(
            "table",
            "table name (default: the entity or segment id, `-` replaced by `_`)",
            ValueKind::SqlIdentifier,
        ),
        optional(
            "mode",
            "`replace` (default: load a new table and swap it in) or `upsert` (merge on the primary key)",
            ValueKind::OneOf(&["replace", "upsert"]),
        ),
    ],
    target_options: &[],
};

pub struct Postgres;

fn schema_of(target: &Target<'_>) -> String {
    match target.config("schema").trim() {
        "" => DEFAULT_SCHEMA.to_string(),
        schema => schema.to_string(),
    }
}

fn address_of(target: &Target<'_>) -> Result<Address, Failure> {
    let url = target.secrets.get("url").map(String::as_str).unwrap_or_default();
    address::parse(url).map_err(|problem| Failure::Permanent {
        message: format!("the connection's url {problem}"),
    })
}

/// What a failed sign-in says about the step that failed: the network (DNS, TCP, TLS), the
/// credentials, or the database named.
fn connect_step(err: &sqlx::Error) -> &'static str {
    match err {
        sqlx::Error::Tls(_) => "tls",
        sqlx::Error::Io(e) => network_step(&e.to_string()).unwrap_or("tcp_connect"),
        sqlx::Error::Database(_) => match errors::sqlstate(err).as_deref() {
            Some("3D000") => "database",
            Some(code) if code.starts_with("28") => "authenticate",
            _ => "connect",
        },
        _ => network_step(&err.to_string()).unwrap_or("connect"),
    }
}

/// Whether the schema exists and the user may use it and create tables in it.
async fn schema_checks(conn: &mut sqlx::PgConnection, address: &Address, schema: &str) -> Vec<Check> {
    let privileges: Result<Option<(bool, bool)>, sqlx::Error> = sqlx::query_as(
        "SELECT has_schema_privilege(n.oid, 'USAGE'), has_schema_privilege(n.oid, 'CREATE') \
         FROM pg_namespace n WHERE n.nspname = $1",
    )
    .bind(schema)
    .fetch_optional(&mut *conn)
    .await;
    match privileges {
        Err(err) => vec![Check::fail("schema", errors::message(&err, &address.secrets))],
        Ok(None) => vec![Check::fail(
            "schema",
            format!("schema '{schema}' does not exist in database '{}'", address.database),
        )],
        Ok(Some((usage, create))) => {
            let schema_check = Check::pass("schema", format!("schema '{schema}' exists"));
            let missing: Vec<&str> = [(usage, "USAGE"), (create, "CREATE")]
                .into_iter()
                .filter(|(granted, _)| !granted)
                .map(|(_, privilege)| privilege)
                .collect();
            let privileges_check = if missing.is_empty() {
                Check::pass(
                    "privileges",
                    format!("'{}' has USAGE and CREATE on schema '{schema}'", address.user),
                )
            } else {
                Check::fail(
                    "privileges",
                    format!(
                        "'{}' lacks {} on schema '{schema}'",
                        address.user,
                        missing.join(" and ")
                    ),
                )
            };
            vec![schema_check, privileges_check]
        }
    }
}

#[async_trait]
impl Connector for Postgres {
    /// Connect (DNS, TCP, TLS when the URL asks for it), authenticate, then the schema and the
    /// privileges every run needs on it.
    async fn test(&self, target: &Target<'_>) -> TestReport {
        let address = match address_of(target) {
            Ok(address) => address,
            Err(failure) => {
                return TestReport {
                    checks: vec![Check::fail("connect", failure.message())],
                };
            }
        };
        let mut checks = Vec::new();
        let tls = if address.tls_required { " over TLS" } else { "" };
        let reached = format!("reached {}:{}{tls}", address.host, address.port);
        let mut conn = match Session::connect(&address).await {
            Ok(conn) => conn,
            Err(err) => {
                let step = connect_step(&err);
                let message = errors::message(&err, &address.secrets);
                if matches!(step, "authenticate" | "database") {
                    checks.push(Check::pass("connect", reached));
                }
                checks.push(Check::fail(step, message));
                return TestReport { checks };
            }
        };
        checks.push(Check::pass("connect", reached));
        checks.push(Check::pass(
            "authenticate",
            format!("signed in as '{}' to database '{}'", address.user, address.database),
        ));
        checks.extend(schema_checks(&mut conn, &address, &schema_of(target)).await);
        let _ = conn.close().await;
        TestReport { checks }
    }

    /// Connects, then decides every part's table and checks what must hold before anything is
    /// written: the schema exists, names fit PostgreSQL, and each existing table an upsert (or
    /// an incremental replace) writes into fits.
    async fn open_sink(&self, run: &RunTarget<'_>) -> Result<Box<dyn Sink>, Failure> {
        let address = address_of(&run.target)?;
        let schema = schema_of(&run.target);
        let mode = match run.settings.get("mode").map(String::as_str) {
            Some("upsert") => Mode::Upsert,
            _ => Mode::Replace,
        };
        let table_setting = run.settings.get("table").map(String::as_str).filter(|t| !t.is_empty());
        if table_setting.is_some() && run.parts.len() > 1 {
            return Err(Failure::Permanent {
                message: format!(
                    "the export setting `table` names one table, but the export writes {} sources; \
                     leave it unset to get a table per source",
                    run.parts.len()
                ),
            });
        }
        let session = Session::new(address);
        let address = session.address.clone();
        let mut conn = retried(TYPE_ID, |_| {
            let (address, session) = (&address, &session);
            async move {
                Session::connect(address)
                    .await
                    .map_err(|e| session.failure(&format!("cannot connect to {}", address.shown()), &e))
            }
        })
        .await?;

        let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_namespace WHERE nspname = $1")
            .bind(&schema)
            .fetch_optional(&mut conn)
            .await
            .map_err(|e| session.failure("reading the schemas", &e))?;
        if exists.is_none() {
            return Err(Failure::Permanent {
                message: format!("schema '{schema}' does not exist in database '{}'", address.database),
            });
        }
        let prefix = run.target.config("table_prefix").trim();
        let mut targets = Vec::new();
        let mut misfits = Vec::new();
        for part in run.parts {
            for column in &part.columns {
                names::check_column(&column.name)?;
            }
            if part.primary_key.is_empty() {
                return Err(Failure::Permanent {
                    message: format!(
                        "the source '{}' writes no key column (map its primary key) so no table key can be made",
                        part.source
                    ),
                });
            }
            let table_name = names::table_name(prefix, table_setting, &part.id)?;
            let table = qualified(&schema, &table_name);
            if targets.iter().any(|t: &PartTarget| t.table == table) {
                return Err(Failure::Permanent {
                    message: format!("two sources of the export would write the table {table}"),
                });
            }
            let merge = mode == Mode::Upsert || !part.complete;
            let mut copy_current = false;
            if merge {
                match table::fit(&mut conn, &schema, &table_name, part)
                    .await
                    .map_err(|e| session.failure(&format!("reading the columns of {table}"), &e))?
                {
                    Fit::Missing => {}
                    Fit::Fits => copy_current = mode == Mode::Replace,
                    Fit::Misfit(problems) => misfits.push(format!("{table}: {}", problems.join("; "))),
                }
            }
            let staging = (mode == Mode::Replace).then(|| staging_name(run.run_id, &table_name));
            let destination = match &staging {
                Some(staging) => qualified(&schema, staging),
                None => table.clone(),
            };
            targets.push(PartTarget {
                schema: part.clone(),
                table,
                table_name,
                destination,
                staging,
                merge,
                copy_current,
            });
        }
        if !misfits.is_empty() {
            return Err(Failure::Permanent {
                message: format!(
                    "the target table does not fit the export, so nothing was written: {}",
                    misfits.join(" | ")
                ),
            });
        }
        let _ = conn.close().await;
        Ok(Box::new(PostgresSink::new(Loader {
            session,
            mode,
            schema,
            cancellation: run.cancellation.clone(),
            targets,
            next: 0,
            current: None,
            bytes: 0,
            rows: 0,
        })))
    }

    /// The URL must be one exportd can connect with (CreateConnection and UpdateConnection,
    /// when they give it).
    fn check_config(
        &self,
        _config: &BTreeMap<String, String>,
        secrets: &BTreeMap<String, String>,
    ) -> Vec<FieldViolation> {
        match secrets.get("url").map(|url| address::parse(url)) {
            Some(Err(problem)) => vec![FieldViolation {
                field: "connection.secrets.url".into(),
                description: format!("the url {problem}"),
            }],
            _ => Vec::new(),
        }
    }
}
