//! Prometheus metrics (PRODUCT.md §16): exactly the series the product names, recorded by the
//! layers that see them and rendered in the Prometheus text format (0.0.4) for
//! `http://<metrics_listen>/metrics` (`server::metrics_http`).
//!
//! One registry per process (a static): the engine, the edge layer and the connectors record
//! into it by calling the functions below, without a handle threaded through every layer.
//!
//! Label sets stay bounded: label values are `&'static str` chosen by the caller from fixed
//! sets (method names of the API, code names, states, outcomes), except the connection type,
//! a type id of the catalogue of connectors; any value past [`MAX_VALUES_PER_LABEL`] distinct
//! ones is reported as `other`, so that a bug can never grow the set without bound. Never a
//! resource name, key or run id.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

mod histogram;

use histogram::Histogram;

/// Distinct values a dynamic label (the connection type) may take; more become `other`.
pub const MAX_VALUES_PER_LABEL: usize = 64;

/// Buckets of `exportd_rpc_duration_seconds` (seconds).
const RPC_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Buckets of `exportd_scheduler_lag_seconds` (seconds).
const LAG_BUCKETS: &[f64] = &[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

/// A counter per label set.
struct Counters<const N: usize> {
    values: Mutex<BTreeMap<[&'static str; N], u64>>,
}

impl<const N: usize> Counters<N> {
    const fn new() -> Self {
        Counters {
            values: Mutex::new(BTreeMap::new()),
        }
    }

    fn add(&self, labels: [&'static str; N], by: u64) {
        *self.values.lock().expect("metrics").entry(labels).or_insert(0) += by;
    }

    /// A series without labels shows 0 before anything was counted.
    fn snapshot(&self) -> Vec<([&'static str; N], u64)> {
        let values = self.values.lock().expect("metrics");
        if N == 0 && values.is_empty() {
            return vec![([""; N], 0)];
        }
        values.iter().map(|(k, v)| (*k, *v)).collect()
    }
}

/// A histogram per label set.
struct Histograms<const N: usize> {
    buckets: &'static [f64],
    values: Mutex<BTreeMap<[&'static str; N], Histogram>>,
}

impl<const N: usize> Histograms<N> {
    const fn new(buckets: &'static [f64]) -> Self {
        Histograms {
            buckets,
            values: Mutex::new(BTreeMap::new()),
        }
    }

    fn observe(&self, labels: [&'static str; N], value: f64) {
        self.values
            .lock()
            .expect("metrics")
            .entry(labels)
            .or_insert_with(|| Histogram::new(self.buckets))
            .observe(value);
    }

    /// A series without labels shows empty buckets before anything was observed.
    fn snapshot(&self) -> Vec<([&'static str; N], Histogram)> {
        let values = self.values.lock().expect("metrics");
        if N == 0 && values.is_empty() {
            return vec![([""; N], Histogram::new(self.buckets))];
        }
        values.iter().map(|(k, v)| (*k, v.clone())).collect()
    }
}

struct Registry {
    rpc_requests: Counters<2>,
    rpc_duration: Histograms<1>,
    runs: Counters<3>,
    lease_takeovers: Counters<0>,
    scheduler_lag: Histograms<0>,
    records_exported: Counters<1>,
    records_rejected: Counters<1>,
    bytes_written: Counters<1>,
    target_requests: Counters<2>,
    target_retries: Counters<2>,
    /// Connection types seen so far, kept as `&'static str` for the label maps.
    connection_types: Mutex<Vec<&'static str>>,
}

static REGISTRY: Registry = Registry {
    rpc_requests: Counters::new(),
    rpc_duration: Histograms::new(RPC_BUCKETS),
    runs: Counters::new(),
    lease_takeovers: Counters::new(),
    scheduler_lag: Histograms::new(LAG_BUCKETS),
    records_exported: Counters::new(),
    records_rejected: Counters::new(),
    bytes_written: Counters::new(),
    target_requests: Counters::new(),
    target_retries: Counters::new(),
    connection_types: Mutex::new(Vec::new()),
};

/// The label value of a connection type: the same `&'static str` each time, from a bounded set.
fn connection_type_label(type_id: &str) -> &'static str {
    if type_id.is_empty() {
        return "none";
    }
    let mut known = REGISTRY.connection_types.lock().expect("metrics");
    if let Some(label) = known.iter().find(|k| **k == type_id) {
        return label;
    }
    if known.len() >= MAX_VALUES_PER_LABEL {
        return "other";
    }
    // Leaked once per distinct type id, at most MAX_VALUES_PER_LABEL of them.
    let label: &'static str = Box::leak(type_id.to_string().into_boxed_str());
    known.push(label);
    label
}

/// An RPC ended: `method` is the full gRPC method (`/exportd.v1.ExportService/RunExport`) or
/// `other`, `code` the gRPC code name (`OK`, `NOT_FOUND`).
pub fn rpc_finished(method: &'static str, code: &'static str, elapsed: Duration) {
    REGISTRY.rpc_requests.add([method, code], 1);
    REGISTRY.rpc_duration.observe([method], elapsed.as_secs_f64());
}

/// What a run that ended reported.
pub struct RunEnded<'a> {
    /// `SUCCEEDED`, `FAILED`, `SKIPPED` or `CANCELLED`.
    pub state: &'static str,
    /// `MANUAL`, `RUN_ALL`, `SCHEDULE` or `SYSTEM_REFRESH`.
    pub trigger: &'static str,
    /// The type id of the export's connection (empty for a detached export).
    pub connection_type: &'a str,
    pub records_exported: u64,
    pub records_rejected: u64,
    pub bytes_written: u64,
}

/// A run ended (counted by the process that recorded its end).
pub fn run_ended(run: &RunEnded<'_>) {
    let connection_type = connection_type_label(run.connection_type);
    REGISTRY.runs.add([run.state, run.trigger, connection_type], 1);
    REGISTRY.records_exported.add([connection_type], run.records_exported);
    REGISTRY.records_rejected.add([connection_type], run.records_rejected);
    REGISTRY.bytes_written.add([connection_type], run.bytes_written);
}

/// A worker took over a run whose previous worker stopped renewing its lease.
pub fn lease_takeover() {
    REGISTRY.lease_takeovers.add([], 1);
}

/// The scheduler fired an occurrence `lag` after it was due.
pub fn scheduler_lag(lag: Duration) {
    REGISTRY.scheduler_lag.observe([], lag.as_secs_f64());
}

/// One request to a target, e.g. a file published or an HTTP call. `outcome`: `ok`, or a short
/// fixed word for a failure (`error`, `throttled`, `timeout`).
pub fn target_request(connection_type: &str, outcome: &'static str) {
    REGISTRY
        .target_requests
        .add([connection_type_label(connection_type), outcome], 1);
}

/// A request to a target is retried; `reason` is a short fixed word (`throttled`, `timeout`,
/// `server_error`, `connection`).
pub fn target_retry(connection_type: &str, reason: &'static str) {
    REGISTRY
        .target_retries
        .add([connection_type_label(connection_type), reason], 1);
}

/// Values read when the metrics are scraped rather than recorded as they happen.
pub struct Gauges {
    /// Runs QUEUED in the database (every process reports the same number).
    pub run_queue_depth: Option<i64>,
}

/// Every series in the Prometheus text format. A series is described (`# HELP`, `# TYPE`) even
/// before it has samples, so that a scrape always shows the whole set.
pub fn render(gauges: &Gauges) -> String {
    let r = &REGISTRY;
    let mut out = String::new();
    counter(
        &mut out,
        "exportd_rpc_requests_total",
        "RPCs handled, by method and gRPC code.",
        &["method", "code"],
        &r.rpc_requests,
    );
    histogram(
        &mut out,
        "exportd_rpc_duration_seconds",
        "Time from request to the end of the response, by method.",
        &["method"],
        &r.rpc_duration,
    );
    counter(
        &mut out,
        "exportd_runs_total",
        "Runs ended by this process, by state, trigger and connection type.",
        &["state", "trigger", "connection_type"],
        &r.runs,
    );
    header(
        &mut out,
        "exportd_run_queue_depth",
        "Runs waiting in the queue for a worker (database-wide).",
        "gauge",
    );
    if let Some(depth) = gauges.run_queue_depth {
        let _ = writeln!(out, "exportd_run_queue_depth {depth}");
    }
    counter(
        &mut out,
        "exportd_run_lease_takeovers_total",
        "Runs taken over by this process after their worker stopped renewing its lease.",
        &[],
        &r.lease_takeovers,
    );
    histogram(
        &mut out,
        "exportd_scheduler_lag_seconds",
        "How late the scheduler fired a due schedule or system refresh.",
        &[],
        &r.scheduler_lag,
    );
    counter(
        &mut out,
        "exportd_records_exported_total",
        "Records exported by the runs that ended, by connection type.",
        &["connection_type"],
        &r.records_exported,
    );
    counter(
        &mut out,
        "exportd_records_rejected_total",
        "Records rejected by targets in the runs that ended, by connection type.",
        &["connection_type"],
        &r.records_rejected,
    );
    counter(
        &mut out,
        "exportd_bytes_written_total",
        "Bytes written by the runs that ended, by connection type.",
        &["connection_type"],
        &r.bytes_written,
    );
    counter(
        &mut out,
        "exportd_target_requests_total",
        "Requests to targets, by connection type and outcome.",
        &["connection_type", "outcome"],
        &r.target_requests,
    );
    counter(
        &mut out,
        "exportd_target_retries_total",
        "Retried requests to targets, by connection type and reason.",
        &["connection_type", "reason"],
        &r.target_retries,
    );
    out
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// `{a="x",b="y"}` (empty without labels), values escaped as the format asks.
fn label_text(names: &[&str], values: &[&str], extra: Option<(&str, &str)>) -> String {
    let pairs: Vec<String> = names
        .iter()
        .zip(values)
        .map(|(n, v)| (*n, *v))
        .chain(extra)
        .map(|(n, v)| format!("{n}=\"{}\"", escape(v)))
        .collect();
    if pairs.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", pairs.join(","))
    }
}

fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn counter<const N: usize>(out: &mut String, name: &str, help: &str, labels: &[&str; N], counters: &Counters<N>) {
    header(out, name, help, "counter");
    for (values, value) in counters.snapshot() {
        let _ = writeln!(out, "{name}{} {value}", label_text(labels, &values, None));
    }
}

fn histogram<const N: usize>(out: &mut String, name: &str, help: &str, labels: &[&str; N], histograms: &Histograms<N>) {
    header(out, name, help, "histogram");
    for (values, h) in histograms.snapshot() {
        for (le, count) in h.cumulative() {
            let le = if le.is_infinite() {
                "+Inf".to_string()
            } else {
                le.to_string()
            };
            let _ = writeln!(
                out,
                "{name}_bucket{} {count}",
                label_text(labels, &values, Some(("le", &le)))
            );
        }
        let _ = writeln!(out, "{name}_sum{} {}", label_text(labels, &values, None), h.sum());
        let _ = writeln!(out, "{name}_count{} {}", label_text(labels, &values, None), h.count());
    }
}
