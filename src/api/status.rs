//! The one conversion from [`Error`] to a gRPC `Status`, carrying `google.rpc` details: an
//! `ErrorInfo` always (reason, domain `exportd.v1`, metadata), plus `BadRequest` and
//! `PreconditionFailure` when the error has violations.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::error::{Error, ErrorCode};

pub const DOMAIN: &str = "exportd.v1";

pub fn code_of(code: ErrorCode) -> Code {
    match code {
        ErrorCode::InvalidArgument => Code::InvalidArgument,
        ErrorCode::NotFound => Code::NotFound,
        ErrorCode::AlreadyExists => Code::AlreadyExists,
        ErrorCode::FailedPrecondition => Code::FailedPrecondition,
        ErrorCode::Aborted => Code::Aborted,
        ErrorCode::PermissionDenied => Code::PermissionDenied,
        ErrorCode::Unauthenticated => Code::Unauthenticated,
        ErrorCode::ResourceExhausted => Code::ResourceExhausted,
        ErrorCode::Unimplemented => Code::Unimplemented,
        ErrorCode::Unavailable => Code::Unavailable,
        ErrorCode::Internal => Code::Internal,
        ErrorCode::Cancelled => Code::Cancelled,
        ErrorCode::DeadlineExceeded => Code::DeadlineExceeded,
    }
}

pub fn to_status(err: Error) -> Status {
    if err.code == ErrorCode::Internal {
        tracing::error!(reason = err.reason, message = %err.message, "internal error");
    }
    let metadata: HashMap<String, String> = err.metadata.into_iter().collect();
    let mut details = ErrorDetails::with_error_info(err.reason, DOMAIN, metadata);
    for violation in &err.field_violations {
        details.add_bad_request_violation(violation.field.clone(), violation.description.clone());
    }
    for violation in &err.precondition_violations {
        details.add_precondition_failure_violation(
            violation.kind.clone(),
            violation.subject.clone(),
            violation.description.clone(),
        );
    }
    Status::with_error_details(code_of(err.code), err.message, details)
}

/// Adds an `ErrorInfo` to statuses made outside our handlers (tonic's own decode and size
/// errors), so that every error a client sees carries one. Used by the edge layer.
pub fn ensure_error_info(status: Status) -> Status {
    if !status.details().is_empty() || status.code() == Code::Ok {
        return status;
    }
    // tonic reports an oversize message as OUT_OF_RANGE; gRPC's convention is RESOURCE_EXHAUSTED.
    let too_large = status.message().contains("too large");
    let code = if too_large {
        Code::ResourceExhausted
    } else {
        status.code()
    };
    let reason = match code {
        _ if too_large => "MESSAGE_TOO_LARGE",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::InvalidArgument | Code::Internal if status.message().contains("decode") => "MALFORMED_MESSAGE",
        Code::Unimplemented => "UNKNOWN_METHOD",
        // The health service's answer for a service it does not know.
        Code::NotFound if status.message().contains("service") => "SERVICE_NOT_FOUND",
        Code::NotFound => "RESOURCE_NOT_FOUND",
        Code::Cancelled => "CANCELLED",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::Unavailable => "UNAVAILABLE",
        _ => "INTERNAL",
    };
    let details = ErrorDetails::with_error_info(reason, DOMAIN, HashMap::new());
    Status::with_error_details(code, status.message().to_string(), details)
}
