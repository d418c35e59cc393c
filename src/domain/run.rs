//! Export runs: their triggers, states, tasks and progress.

use serde::{Deserialize, Serialize};

pub use super::export::RunState;
use super::export::Warning;
use super::names::RunName;
use super::time::Micros;

impl RunState {
    /// Queued, waiting or running: an export has at most one such run.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            RunState::Queued | RunState::WaitingForDependencies | RunState::Running
        )
    }

    pub fn is_terminal(self) -> bool {
        !self.is_active()
    }
}

/// What started a run; the numbers are the API's `RunTrigger`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunTrigger {
    Manual = 1,
    RunAll = 2,
    Schedule = 3,
    SystemRefresh = 4,
}

impl RunTrigger {
    pub fn number(self) -> i32 {
        self as i32
    }

    pub fn from_number(n: i32) -> Option<Self> {
        [
            RunTrigger::Manual,
            RunTrigger::RunAll,
            RunTrigger::Schedule,
            RunTrigger::SystemRefresh,
        ]
        .into_iter()
        .find(|t| t.number() == n)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RunTrigger::Manual => "MANUAL",
            RunTrigger::RunAll => "RUN_ALL",
            RunTrigger::Schedule => "SCHEDULE",
            RunTrigger::SystemRefresh => "SYSTEM_REFRESH",
        }
    }

    pub const NAMES: [&'static str; 4] = ["MANUAL", "RUN_ALL", "SCHEDULE", "SYSTEM_REFRESH"];

    pub fn parse(text: &str) -> Option<Self> {
        [
            RunTrigger::Manual,
            RunTrigger::RunAll,
            RunTrigger::Schedule,
            RunTrigger::SystemRefresh,
        ]
        .into_iter()
        .find(|t| t.as_str() == text)
    }
}

/// The steps of every run, in order.
pub const TASKS: [&str; 4] = ["validate", "extract", "write", "finalize"];

/// One step of a run, stored with the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub name: String,
    /// A `RunState` number.
    pub state: i32,
    pub start_time: Option<Micros>,
    pub end_time: Option<Micros>,
    /// What every caller reads: it names no location of the connection beyond the export's
    /// own folder (relative to the connection's root or prefix).
    pub message: String,
    /// The message as callers who may see the connection read it (naming where it wrote).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<ConnectionDetail>,
}

/// A message meant only for callers who may see a connection: contributors and viewers see
/// a connection's details only when it is shared with contributors (PRODUCT.md §2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionDetail {
    /// The connection's name.
    pub connection: String,
    pub message: String,
}

impl Task {
    /// The message for a caller; `may_see` says whether the caller may see a connection.
    pub fn message_for(&self, may_see: impl Fn(&str) -> bool) -> &str {
        match &self.detail {
            Some(detail) if may_see(&detail.connection) => &detail.message,
            _ => &self.message,
        }
    }

    pub fn fresh_list() -> Vec<Task> {
        TASKS
            .iter()
            .map(|name| Task {
                name: name.to_string(),
                state: RunState::Queued.number(),
                start_time: None,
                end_time: None,
                message: String::new(),
                detail: None,
            })
            .collect()
    }
}

/// Why a run failed, stored as JSON and shown as a `google.rpc.Status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunError {
    /// A gRPC code number.
    pub code: i32,
    /// An UPPER_SNAKE reason (the ErrorInfo of the Status).
    pub reason: String,
    pub message: String,
    /// Where it happened: the task, and the part (entity or segment) when there is one.
    #[serde(default)]
    pub task: String,
    #[serde(default)]
    pub part: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub total: i64,
    pub exported: i64,
    pub rejected: i64,
    pub bytes: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub name: RunName,
    pub trigger: RunTrigger,
    pub state: RunState,
    pub tasks: Vec<Task>,
    pub counts: Counts,
    pub warnings: Vec<Warning>,
    pub error: Option<RunError>,
    pub skip_reason: Option<String>,
    pub attempt: i32,
    pub waiting_for: Vec<String>,
    pub create_time: Micros,
    pub start_time: Option<Micros>,
    pub end_time: Option<Micros>,
    pub cancel_requested: bool,
    pub revision: i64,
}
