//! What a PostgreSQL error means for a run, by its SQLSTATE (PostgreSQL documentation,
//! Appendix A "PostgreSQL Error Codes"): classes 22 (data exception) and 23 (integrity
//! constraint violation) are faults of rows, which the sink finds and rejects; lost connections
//! (class 08, I/O), serialization failures and deadlocks (40001, 40P01), a server short of
//! resources or shutting down (class 53, 57P01–57P03) are worth another try; the rest is
//! permanent.

use sea_orm::sqlx;

use crate::connectors::retry::Failure;
use crate::connectors::storage::object::redact;

/// A database error's SQLSTATE, if the server sent one.
pub fn sqlstate(err: &sqlx::Error) -> Option<String> {
    err.as_database_error().and_then(|e| e.code()).map(|c| c.into_owned())
}

/// A data or constraint error: some row of the batch is at fault, not the batch.
pub fn is_row_fault(code: &str) -> bool {
    code.starts_with("22") || code.starts_with("23")
}

fn is_transient(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(_) => sqlstate(err).is_some_and(|code| {
            code.starts_with("08")
                || code.starts_with("53")
                || matches!(code.as_str(), "40001" | "40P01" | "57P01" | "57P02" | "57P03")
        }),
        _ => false,
    }
}

/// The server's message with its SQLSTATE, or the client's error; never a secret.
pub fn message(err: &sqlx::Error, secrets: &[String]) -> String {
    let text = match err.as_database_error() {
        Some(db) => match db.code() {
            Some(code) => format!("{} (SQLSTATE {code})", db.message()),
            None => db.message().to_string(),
        },
        None => err.to_string(),
    };
    redact(&text, secrets)
}

/// A failure of the run, saying what was being done.
pub fn failure(context: &str, err: &sqlx::Error, secrets: &[String]) -> Failure {
    let message = format!("{context}: {}", message(err, secrets));
    if is_transient(err) {
        Failure::Transient {
            message,
            retry_after: None,
        }
    } else {
        Failure::Permanent { message }
    }
}
