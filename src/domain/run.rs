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
    pub message: String,
}

impl Task {
    /// The tasks of a run that is queued, or that waits for the refresh of `waiting_for`: its
    /// validate task then waits too, and says for what.
    pub fn waiting_list(waiting_for: &[String]) -> Vec<Task> {
        let mut tasks = Self::fresh_list();
        if let (Some(validate), false) = (tasks.first_mut(), waiting_for.is_empty()) {
            validate.state = RunState::WaitingForDependencies.number();
            validate.message = format!("waiting for the refresh of {} to complete", waiting_for.join(", "));
        }
        tasks
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
