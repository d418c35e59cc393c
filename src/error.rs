//! The one error type of exportd. Domain, store and engine code return it; `api::status` is the
//! only place that turns it into a gRPC `Status` (with `google.rpc` details).
//!
//! Every error has a code from a deliberately small set, an UPPER_SNAKE `reason` that clients
//! can switch on, a message for people, and metadata carrying every dynamic part of the message.

use std::collections::BTreeMap;
use std::fmt;

/// The small set of outcomes a caller can act on differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    /// Optimistic concurrency: etag mismatch.
    Aborted,
    PermissionDenied,
    Unauthenticated,
    ResourceExhausted,
    Unimplemented,
    Unavailable,
    Internal,
    Cancelled,
    DeadlineExceeded,
}

impl ErrorCode {
    /// The `google.rpc.Code` number, as stored in a run's error and sent on the wire.
    pub fn rpc_number(self) -> i32 {
        match self {
            ErrorCode::Cancelled => 1,
            ErrorCode::InvalidArgument => 3,
            ErrorCode::DeadlineExceeded => 4,
            ErrorCode::NotFound => 5,
            ErrorCode::AlreadyExists => 6,
            ErrorCode::PermissionDenied => 7,
            ErrorCode::ResourceExhausted => 8,
            ErrorCode::FailedPrecondition => 9,
            ErrorCode::Aborted => 10,
            ErrorCode::Unimplemented => 12,
            ErrorCode::Internal => 13,
            ErrorCode::Unavailable => 14,
            ErrorCode::Unauthenticated => 16,
        }
    }
}

/// A bad field in the request (`google.rpc.BadRequest.FieldViolation`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

/// An unmet condition (`google.rpc.PreconditionFailure.Violation`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreconditionViolation {
    /// UPPER_SNAKE kind, e.g. `SEGMENT_NOT_ELIGIBLE`.
    pub kind: String,
    /// The resource it is about, e.g. a segment name.
    pub subject: String,
    pub description: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub code: ErrorCode,
    pub reason: &'static str,
    pub message: String,
    pub metadata: BTreeMap<String, String>,
    pub field_violations: Vec<FieldViolation>,
    pub precondition_violations: Vec<PreconditionViolation>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How many items of a list an error message names; the details carry more (see
/// `api::status`).
const LISTED_IN_MESSAGE: usize = 10;

/// The first items of a list of `total`, joined; for more than [`LISTED_IN_MESSAGE`], their
/// number first (`252 resources, the first 10: a, b, …`), so that a message cut short still
/// says how many there are. `first` holds at most [`LISTED_IN_MESSAGE`] items.
fn listing(total: usize, first: &[String], noun: &str, separator: &str) -> String {
    if total <= LISTED_IN_MESSAGE {
        return first.join(separator);
    }
    format!("{total} {noun}, the first {}: {}", first.len(), first.join(separator))
}

impl Error {
    pub fn new(code: ErrorCode, reason: &'static str, message: impl Into<String>) -> Self {
        Error {
            code,
            reason,
            message: message.into(),
            metadata: BTreeMap::new(),
            field_violations: Vec::new(),
            precondition_violations: Vec::new(),
        }
    }

    pub fn with_meta(mut self, key: &str, value: impl Into<String>) -> Self {
        self.metadata.insert(key.to_string(), value.into());
        self
    }

    /// The error as it concerns one of several resources of a request: the message starts
    /// with it (`export 'environments/e/exports/x': …`) and the metadata names it.
    pub fn concerning(mut self, resource_type: &str, name: &str) -> Self {
        self.message = format!("{resource_type} '{name}': {}", self.message);
        self.with_meta(resource_type, name)
    }

    /// One bad field. `field` is the request path, e.g. `connection.config.bucket`.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::invalid_fields(vec![FieldViolation {
            field: field.into(),
            description: description.into(),
        }])
    }

    /// Several bad fields at once, so that a client can fix them all in one round trip.
    pub fn invalid_fields(violations: Vec<FieldViolation>) -> Self {
        let message = match violations.as_slice() {
            [] => "invalid request".to_string(),
            [one] => format!("invalid {}: {}", one.field, one.description),
            many => {
                let first: Vec<String> = many
                    .iter()
                    .take(LISTED_IN_MESSAGE)
                    .map(|v| format!("{}: {}", v.field, v.description))
                    .collect();
                format!("invalid request: {}", listing(many.len(), &first, "problems", "; "))
            }
        };
        let fields: Vec<&str> = violations.iter().map(|v| v.field.as_str()).collect();
        let mut err =
            Error::new(ErrorCode::InvalidArgument, "INVALID_ARGUMENT", message).with_meta("fields", fields.join(","));
        err.field_violations = violations;
        err
    }

    pub fn not_found(resource_type: &str, name: impl Into<String>) -> Self {
        let name = name.into();
        Error::new(
            ErrorCode::NotFound,
            "RESOURCE_NOT_FOUND",
            format!("{resource_type} '{name}' not found"),
        )
        .with_meta("resource_type", resource_type)
        .with_meta("name", name)
    }

    pub fn already_exists(resource_type: &str, name: impl Into<String>) -> Self {
        let name = name.into();
        Error::new(
            ErrorCode::AlreadyExists,
            "RESOURCE_ALREADY_EXISTS",
            format!("{resource_type} '{name}' already exists"),
        )
        .with_meta("resource_type", resource_type)
        .with_meta("name", name)
    }

    pub fn etag_mismatch(name: impl Into<String>, given: &str, current: &str) -> Self {
        let name = name.into();
        Error::new(
            ErrorCode::Aborted,
            "ETAG_MISMATCH",
            format!("etag '{given}' does not match the current etag of '{name}'; read it again and retry"),
        )
        .with_meta("name", name)
        .with_meta("etag", given)
        .with_meta("current_etag", current)
    }

    /// A resource cannot go while others depend on it: FAILED_PRECONDITION with every user as a
    /// violation. `what` names the resource (`entity`), `relation` what each user does with it
    /// (`uses`), `remedy` what to do about it.
    pub fn in_use(
        reason: &'static str,
        what: &str,
        name: &str,
        users: &[String],
        relation: &str,
        remedy: &str,
    ) -> Self {
        let listed = &users[..users.len().min(LISTED_IN_MESSAGE)];
        let mut err = Error::precondition(
            reason,
            format!(
                "{what} '{name}' is used by {}; {remedy}",
                listing(users.len(), listed, "resources", ", ")
            ),
        )
        .with_meta("name", name)
        .with_meta("used_by", listed.join(","))
        .with_meta("used_by_count", users.len().to_string());
        for user in users {
            err = err.with_precondition(reason, user.clone(), format!("{relation} {what} '{name}'"));
        }
        err
    }

    /// A rule about the resource's state forbids the request.
    pub fn precondition(reason: &'static str, message: impl Into<String>) -> Self {
        Error::new(ErrorCode::FailedPrecondition, reason, message)
    }

    pub fn with_precondition(mut self, kind: &str, subject: impl Into<String>, description: impl Into<String>) -> Self {
        self.precondition_violations.push(PreconditionViolation {
            kind: kind.to_string(),
            subject: subject.into(),
            description: description.into(),
        });
        self
    }

    pub fn unauthenticated(reason: &'static str, message: impl Into<String>) -> Self {
        Error::new(ErrorCode::Unauthenticated, reason, message)
    }

    pub fn unimplemented(what: &str, message: impl Into<String>) -> Self {
        Error::new(ErrorCode::Unimplemented, "NOT_IMPLEMENTED", message).with_meta("method", what)
    }

    /// An unexpected failure. The detail is logged by the caller, never sent: it may name
    /// internals (SQL, paths) that a client has no business seeing.
    pub fn internal(message: impl Into<String>) -> Self {
        Error::new(ErrorCode::Internal, "INTERNAL", message)
    }

    pub fn unavailable(reason: &'static str, message: impl Into<String>) -> Self {
        Error::new(ErrorCode::Unavailable, reason, message)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} {}: {}", self.code, self.reason, self.message)
    }
}

impl std::error::Error for Error {}
