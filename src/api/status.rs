//! The one conversion from [`Error`] to a gRPC `Status`, carrying `google.rpc` details: an
//! `ErrorInfo` always (reason, domain `exportd.v1`, metadata), plus `BadRequest` and
//! `PreconditionFailure` when the error has violations. Also the way back, for statuses that
//! arrive from a client stream, and the classification of tonic's own statuses.
//!
//! A status travels in HTTP/2 trailers, and C-core clients (Python, C++, Ruby…) refuse
//! metadata over 16 KiB (and may refuse more than 8 KiB), so every status is cut to fit
//! [`STATUS_BUDGET_BYTES`] as sent: long messages and details are shortened, long violation
//! lists keep their first items, and the metadata says how many were left out.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::error::{Error, ErrorCode, FieldViolation, PreconditionViolation};

pub const DOMAIN: &str = "exportd.v1";

/// The most that `grpc-message` and `grpc-status-details-bin` of one status take as sent
/// (percent-encoded and base64): under C-core's 8 KiB soft limit with room for the other
/// trailers.
pub const STATUS_BUDGET_BYTES: usize = 7 * 1024;

/// How much of an error a status shows; shrunk until the status fits the budget.
#[derive(Debug, Clone, Copy)]
struct Shown {
    violations: usize,
    message_chars: usize,
    detail_chars: usize,
}

impl Shown {
    const FIRST: Shown = Shown {
        violations: 20,
        message_chars: 1_000,
        detail_chars: 300,
    };
    const LEAST: Shown = Shown {
        violations: 1,
        message_chars: 100,
        detail_chars: 60,
    };

    fn smaller(self) -> Option<Shown> {
        let next = Shown {
            violations: (self.violations / 2).max(Self::LEAST.violations),
            message_chars: (self.message_chars / 2).max(Self::LEAST.message_chars),
            detail_chars: (self.detail_chars / 2).max(Self::LEAST.detail_chars),
        };
        let same = next.violations == self.violations
            && next.message_chars == self.message_chars
            && next.detail_chars == self.detail_chars;
        (!same).then_some(next)
    }
}

pub fn code_of(code: ErrorCode) -> Code {
    Code::from(code.rpc_number())
}

fn error_code_of(code: Code) -> ErrorCode {
    match code {
        Code::InvalidArgument | Code::OutOfRange => ErrorCode::InvalidArgument,
        Code::NotFound => ErrorCode::NotFound,
        Code::AlreadyExists => ErrorCode::AlreadyExists,
        Code::FailedPrecondition => ErrorCode::FailedPrecondition,
        Code::Aborted => ErrorCode::Aborted,
        Code::PermissionDenied => ErrorCode::PermissionDenied,
        Code::Unauthenticated => ErrorCode::Unauthenticated,
        Code::ResourceExhausted => ErrorCode::ResourceExhausted,
        Code::Unimplemented => ErrorCode::Unimplemented,
        Code::Unavailable => ErrorCode::Unavailable,
        Code::Cancelled => ErrorCode::Cancelled,
        Code::DeadlineExceeded => ErrorCode::DeadlineExceeded,
        _ => ErrorCode::Internal,
    }
}

pub fn to_status(err: Error) -> Status {
    if err.code == ErrorCode::Internal {
        tracing::error!(reason = err.reason, message = %err.message, "internal error");
    }
    let mut shown = Shown::FIRST;
    loop {
        let status = build(&err, shown);
        if sent_size(&status) <= STATUS_BUDGET_BYTES {
            return status;
        }
        match shown.smaller() {
            Some(next) => shown = next,
            None => return status,
        }
    }
}

/// The bytes a status takes in trailers.
fn sent_size(status: &Status) -> usize {
    let mut headers = http::HeaderMap::new();
    if status.add_header(&mut headers).is_err() {
        return usize::MAX;
    }
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum()
}

fn build(err: &Error, shown: Shown) -> Status {
    let cut = |text: &str| shorten(text, shown.detail_chars);
    let mut metadata: HashMap<String, String> = err.metadata.iter().map(|(k, v)| (k.clone(), cut(v))).collect();
    let fields = &err.field_violations[..err.field_violations.len().min(shown.violations)];
    let preconditions = &err.precondition_violations[..err.precondition_violations.len().min(shown.violations)];
    let omitted_fields = err.field_violations.len() - fields.len();
    let omitted_preconditions = err.precondition_violations.len() - preconditions.len();
    if omitted_fields > 0 {
        metadata.insert("omitted_field_violations".into(), omitted_fields.to_string());
    }
    if omitted_preconditions > 0 {
        metadata.insert(
            "omitted_precondition_violations".into(),
            omitted_preconditions.to_string(),
        );
    }
    let mut details = ErrorDetails::with_error_info(err.reason, DOMAIN, metadata);
    for violation in fields {
        details.add_bad_request_violation(cut(&violation.field), cut(&violation.description));
    }
    for violation in preconditions {
        details.add_precondition_failure_violation(
            cut(&violation.kind),
            cut(&violation.subject),
            cut(&violation.description),
        );
    }
    let mut message = shorten(&err.message, shown.message_chars);
    let omitted = omitted_fields + omitted_preconditions;
    if omitted > 0 {
        message.push_str(&format!(" ({omitted} more violations are not shown)"));
    }
    Status::with_error_details(code_of(err.code), message, details)
}

/// `text` cut to `max` characters, saying how many were left out.
fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_string(),
        Some((end, _)) => {
            let left_out = text[end..].chars().count();
            format!("{}… ({left_out} more characters)", &text[..end])
        }
    }
}

/// What a status made by tonic itself (size limits, framing) is, as exportd reports it.
fn classify(status: &Status) -> (Code, &'static str) {
    let message = status.message();
    if message.contains("too large") || message.contains("size limit") {
        // tonic reports an oversize message as OUT_OF_RANGE; gRPC's convention is
        // RESOURCE_EXHAUSTED.
        return (Code::ResourceExhausted, "MESSAGE_TOO_LARGE");
    }
    if message.contains("Missing request message") {
        return (Code::InvalidArgument, "MISSING_MESSAGE");
    }
    if message.contains("Unexpected EOF decoding stream") || message.contains("decode") {
        return (Code::InvalidArgument, "MALFORMED_MESSAGE");
    }
    let reason = match status.code() {
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::Unimplemented => "UNKNOWN_METHOD",
        // The health service's answer for a service it does not know.
        Code::NotFound if status.message().contains("service") => "SERVICE_NOT_FOUND",
        Code::NotFound => "RESOURCE_NOT_FOUND",
        Code::Cancelled => "CANCELLED",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::Unavailable => "UNAVAILABLE",
        _ => "INTERNAL",
    };
    (status.code(), reason)
}

/// Adds an `ErrorInfo` to statuses made outside our handlers (tonic's own size and framing
/// errors), so that every error a client sees carries one. Used by the edge layer.
pub fn ensure_error_info(status: Status) -> Status {
    if !status.details().is_empty() || status.code() == Code::Ok {
        return status;
    }
    let (code, reason) = classify(&status);
    let details = ErrorDetails::with_error_info(reason, DOMAIN, HashMap::new());
    Status::with_error_details(code, status.message().to_string(), details)
}

/// Reasons that a status read back from a client stream may carry (the reason of an
/// [`Error`] is static): those of the codec and of tonic's own statuses.
const STREAM_REASONS: &[&str] = &[
    "INVALID_ARGUMENT",
    "MALFORMED_MESSAGE",
    "MESSAGE_TOO_LARGE",
    "MISSING_MESSAGE",
    "RESOURCE_EXHAUSTED",
    "CANCELLED",
    "DEADLINE_EXCEEDED",
    "UNAVAILABLE",
];

/// A status that reading a client stream produced (the codec's bounds or decode errors,
/// tonic's size limit, the client going away), as an [`Error`] with the same code, reason and
/// details, so that a stream handler can add what it knows (how many messages it committed).
pub fn error_from_status(status: &Status) -> Error {
    let details = status.get_error_details();
    let (code, derived) = classify(status);
    let (code, reason, metadata) = match details.error_info() {
        Some(info) => {
            let reason = STREAM_REASONS
                .iter()
                .find(|r| **r == info.reason)
                .copied()
                .unwrap_or(derived);
            (status.code(), reason, info.metadata.clone())
        }
        None => (code, derived, HashMap::new()),
    };
    let mut err = Error::new(error_code_of(code), reason, status.message());
    err.metadata = metadata.into_iter().collect();
    if let Some(bad) = details.bad_request() {
        err.field_violations = bad
            .field_violations
            .iter()
            .map(|v| FieldViolation {
                field: v.field.clone(),
                description: v.description.clone(),
            })
            .collect();
    }
    if let Some(failure) = details.precondition_failure() {
        err.precondition_violations = failure
            .violations
            .iter()
            .map(|v| PreconditionViolation {
                kind: v.r#type.clone(),
                subject: v.subject.clone(),
                description: v.description.clone(),
            })
            .collect();
    }
    err
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_errors_fit_the_trailer_budget_and_say_what_was_left_out() {
        let violations = (0..5_000)
            .map(|i| FieldViolation {
                field: format!("names[{i}]"),
                description: format!("'{}' is not a valid export name", "é".repeat(4_000)),
            })
            .collect();
        let err = Error::invalid_fields(violations).with_meta("echo", "\u{1F600}".repeat(100_000));
        let status = to_status(err);
        assert!(sent_size(&status) <= STATUS_BUDGET_BYTES, "{}", sent_size(&status));
        let details = status.get_error_details();
        let info = details.error_info().unwrap();
        let shown = details.bad_request().unwrap().field_violations.len();
        assert!(shown >= 1);
        assert_eq!(info.metadata["omitted_field_violations"], (5_000 - shown).to_string());
        assert!(
            status.message().contains("more violations are not shown"),
            "{}",
            status.message()
        );
    }

    #[test]
    fn small_errors_are_unchanged() {
        let status = to_status(Error::invalid("display_name", "at most 200 characters (got 201)"));
        assert_eq!(
            status.message(),
            "invalid display_name: at most 200 characters (got 201)"
        );
        assert_eq!(
            status.get_error_details().bad_request().unwrap().field_violations.len(),
            1
        );
    }

    #[test]
    fn statuses_read_back_keep_code_reason_and_violations() {
        let original = Error::invalid("deletes[3]", "must not contain NUL (U+0000) characters");
        let back = error_from_status(&to_status(original.clone()));
        assert_eq!(back.code, ErrorCode::InvalidArgument);
        assert_eq!(back.reason, "INVALID_ARGUMENT");
        assert_eq!(back.field_violations, original.field_violations);
        let too_large = error_from_status(&Status::out_of_range(
            "Error, decoded message length too large: found 9 bytes, the limit is: 4 bytes",
        ));
        assert_eq!(
            (too_large.code, too_large.reason),
            (ErrorCode::ResourceExhausted, "MESSAGE_TOO_LARGE")
        );
    }
}
