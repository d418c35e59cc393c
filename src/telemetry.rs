//! Trace ids and OpenTelemetry (PRODUCT.md §16 "Tracing"). Every RPC span and every run span
//! carries a `trace_id` field, so that each log line inside it names its trace: the caller's
//! W3C `traceparent` trace id when it sent one, else a new one. With the cargo feature `otlp`
//! and `otlp_endpoint` set, the spans (RPCs, runs, target requests) are also exported over
//! OTLP/gRPC, an RPC's span as a child of the caller's `traceparent`, and the logged trace id
//! is the exported one.

use rand::RngCore;
use tracing::Span;

/// Records the span's trace id (adopting the caller's trace context from `headers`).
pub fn link(span: &Span, headers: &http::HeaderMap) {
    #[cfg(feature = "otlp")]
    if let Some(id) = otlp::adopt(span, headers) {
        span.record("trace_id", tracing::field::display(id));
        return;
    }
    let id = traceparent_trace_id(headers).unwrap_or_else(new_trace_id);
    span.record("trace_id", tracing::field::display(id));
}

/// The trace id of a valid `traceparent` header (`00-<32 hex>-<16 hex>-<2 hex>`, not all zeros).
fn traceparent_trace_id(headers: &http::HeaderMap) -> Option<String> {
    let value = headers.get("traceparent")?.to_str().ok()?;
    let mut parts = value.split('-');
    let (version, trace_id, parent_id, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let valid = hex(version, 2)
        && version != "ff"
        && hex(trace_id, 32)
        && trace_id.bytes().any(|b| b != b'0')
        && hex(parent_id, 16)
        && hex(flags, 2);
    valid.then(|| trace_id.to_string())
}

fn new_trace_id() -> String {
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

#[cfg(feature = "otlp")]
pub mod otlp {
    use opentelemetry::propagation::{Extractor, TextMapPropagator};
    use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    /// Exports spans to `endpoint` (`http://collector:4317`); keep the provider until the
    /// process ends and shut it down then, which sends what is still buffered. Must be called
    /// inside the Tokio runtime (the exporter's gRPC client lives there).
    pub fn provider(endpoint: &str) -> Result<SdkTracerProvider, String> {
        use opentelemetry_otlp::WithExportConfig;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()
            .map_err(|e| format!("otlp_endpoint {endpoint}: {e}"))?;
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name("exportd")
            .build();
        // Batches are sent from a Tokio task: the exporter's gRPC client needs the runtime.
        let processor = opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
            exporter,
            opentelemetry_sdk::runtime::Tokio,
        )
        .build();
        Ok(SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(resource)
            .build())
    }

    /// The tracing layer that turns spans into OpenTelemetry spans of `provider`.
    pub fn layer<S>(provider: &SdkTracerProvider) -> impl tracing_subscriber::Layer<S>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        tracing_opentelemetry::layer().with_tracer(provider.tracer("exportd"))
    }

    struct Headers<'a>(&'a http::HeaderMap);

    impl Extractor for Headers<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(|v| v.to_str().ok())
        }
        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(|k| k.as_str()).collect()
        }
    }

    /// Makes the caller's trace context the span's parent; the span's trace id, when spans
    /// are exported (else None).
    pub(super) fn adopt(span: &tracing::Span, headers: &http::HeaderMap) -> Option<String> {
        let parent = TraceContextPropagator::new().extract(&Headers(headers));
        if parent.span().span_context().is_valid() {
            let _ = span.set_parent(parent);
        }
        let context = span.context();
        let span_context = context.span().span_context().clone();
        span_context.is_valid().then(|| span_context.trace_id().to_string())
    }
}
