//! What the edge layer records of every RPC for `exportd_rpc_requests_total{method,code}` and
//! `exportd_rpc_duration_seconds{method}`: the method (one of the server's own, else `other`,
//! so that a client sending made-up paths cannot grow the label set) and the final gRPC code,
//! which for a streamed or unary answer is only known from the trailers at the end of the body.
//! The response body is therefore wrapped, and the RPC is recorded when the body ends (or is
//! dropped: a client that went away before the end is `CANCELLED`).

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};
use std::time::Instant;

use http_body::{Body, Frame, SizeHint};
use prost::Message;

/// Every method the server serves, as `/package.Service/Method`.
static METHODS: LazyLock<HashSet<&'static str>> = LazyLock::new(|| {
    let sets = [
        crate::pb::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ];
    let mut methods = HashSet::new();
    for bytes in sets {
        let Ok(set) = prost_types::FileDescriptorSet::decode(bytes) else {
            continue;
        };
        for file in set.file {
            for service in &file.service {
                for method in &service.method {
                    let path = format!("/{}.{}/{}", file.package(), service.name(), method.name());
                    // Built once per process from a fixed list.
                    methods.insert(&*Box::leak(path.into_boxed_str()));
                }
            }
        }
    }
    methods
});

/// The `method` label of a request path.
pub fn method_label(path: &str) -> &'static str {
    METHODS.get(path).copied().unwrap_or("other")
}

/// The gRPC code's name as the protocol spells it (`OK`, `NOT_FOUND`).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// One RPC being answered; recorded once, when its body ends.
pub struct RpcRecord {
    method: &'static str,
    started: Instant,
    /// From the response headers (a trailers-only answer), until trailers say otherwise.
    code: Option<tonic::Code>,
    recorded: bool,
}

impl RpcRecord {
    pub fn new(method: &'static str, started: Instant, header_code: Option<tonic::Code>) -> Self {
        RpcRecord {
            method,
            started,
            code: header_code,
            recorded: false,
        }
    }

    fn finish(&mut self, code: tonic::Code) {
        if !self.recorded {
            self.recorded = true;
            crate::metrics::rpc_finished(self.method, code_name(code), self.started.elapsed());
        }
    }
}

impl Drop for RpcRecord {
    fn drop(&mut self) {
        // The body was dropped before its end: the client went away (or the server stopped).
        self.finish(self.code.unwrap_or(tonic::Code::Cancelled));
    }
}

pin_project_lite::pin_project! {
    /// A response body that records its RPC when it ends.
    pub struct MeteredBody<B> {
        #[pin]
        inner: B,
        record: Option<RpcRecord>,
    }
}

impl<B> MeteredBody<B> {
    pub fn new(inner: B, record: RpcRecord) -> Self {
        MeteredBody {
            inner,
            record: Some(record),
        }
    }
}

impl<B: Default> Default for MeteredBody<B> {
    /// An empty body that records nothing (tonic builds these for its own error answers,
    /// which the edge layer records itself).
    fn default() -> Self {
        MeteredBody {
            inner: B::default(),
            record: None,
        }
    }
}

impl<B: Body> Body for MeteredBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Some(record) = this.record.as_mut() {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(trailers) = frame.trailers_ref()
                        && let Some(status) = tonic::Status::from_header_map(trailers)
                    {
                        record.code = Some(status.code());
                    }
                }
                // A body that fails mid-way ends the stream without a status: the client sees
                // the stream reset, reported as UNKNOWN.
                Poll::Ready(Some(Err(_))) => record.finish(tonic::Code::Unknown),
                Poll::Ready(None) => {
                    let code = record.code.unwrap_or(tonic::Code::Ok);
                    record.finish(code);
                }
                Poll::Pending => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
