//! Export runs: their triggers, states, tasks and progress.

use serde::{Deserialize, Serialize};

use super::names::RunName;
use super::time::Micros;

named_enum! {
    numbered
    /// The state of a run. The numbers are those of the API's `RunState`, because they are
    /// stored (`exports.last_run_state`) and sorted on: the lifecycle order. The names are what a
    /// list filter accepts (`status = FAILED`), without the enum prefix.
    pub enum RunState {
        Queued = 1,
        WaitingForDependencies = 2,
        Running = 3,
        Succeeded = 4,
        Failed = 5,
        Skipped = 6,
        Cancelled = 7,
    }
}

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

named_enum! {
    numbered
    /// What started a run; the numbers are the API's `RunTrigger`.
    pub enum RunTrigger {
        Manual = 1,
        RunAll = 2,
        Schedule = 3,
        SystemRefresh = 4,
    }
}

/// The latest run, as an export remembers it (written by the run engine).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastRun {
    pub id: String,
    pub state: RunState,
    pub end_time: Option<Micros>,
    /// Why it failed, when it did.
    pub error: Option<RunError>,
}

/// A warning that does not stop an export from being saved or a run from succeeding
/// (SEGMENT_OVER_LIMIT, SEGMENT_UNDER_MINIMUM, OLD_RUNS_NOT_REMOVED); a run keeps those it met.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub code: String,
    pub message: String,
    /// The resource it is about (a segment name).
    pub subject: String,
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

impl ConnectionDetail {
    /// A message that may name where `connection` writes (`locations`: prefixes of its paths
    /// and URLs), split into what everyone reads and, when that differs, the full form.
    pub fn split(full: String, connection: &str, locations: &[String]) -> (String, Option<ConnectionDetail>) {
        let public = conceal(&full, locations);
        if public == full {
            return (full, None);
        }
        let detail = ConnectionDetail {
            connection: connection.to_string(),
            message: full,
        };
        (public, Some(detail))
    }

    fn pick<'a>(detail: &'a Option<ConnectionDetail>, public: &'a str, may_see: impl Fn(&str) -> bool) -> &'a str {
        match detail {
            Some(detail) if may_see(&detail.connection) => &detail.message,
            _ => public,
        }
    }
}

/// `text` without the connection's locations: a path below one of them becomes relative to
/// it (`lake/model.json`), the location itself "the connection's root". Longer locations are
/// replaced first, so a URL goes before the path it contains.
pub fn conceal(text: &str, locations: &[String]) -> String {
    let mut needles: Vec<&str> = locations.iter().map(String::as_str).filter(|l| l.len() > 1).collect();
    needles.sort_by_key(|l| std::cmp::Reverse(l.len()));
    let mut out = text.to_string();
    for needle in needles {
        out = out.replace(&format!("{needle}/"), "");
        out = out.replace(needle, "the connection's root");
    }
    out
}

impl Task {
    /// The message for a caller; `may_see` says whether the caller may see a connection.
    pub fn message_for(&self, may_see: impl Fn(&str) -> bool) -> &str {
        ConnectionDetail::pick(&self.detail, &self.message, may_see)
    }

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
    /// The message as callers who may see the connection read it (naming where it failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<ConnectionDetail>,
}

impl RunError {
    /// The message for a caller; `may_see` says whether the caller may see a connection.
    pub fn message_for(&self, may_see: impl Fn(&str) -> bool) -> &str {
        ConnectionDetail::pick(&self.detail, &self.message, may_see)
    }

    /// The error with its message split as [`ConnectionDetail::split`] does.
    pub fn concealing(mut self, connection: &str, locations: &[String]) -> RunError {
        let (public, detail) = ConnectionDetail::split(std::mem::take(&mut self.message), connection, locations);
        self.message = public;
        self.detail = detail;
        self
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub total: i64,
    pub exported: i64,
    pub rejected: i64,
    /// Records or members removed at the target (INCREMENTAL deletions, MIRROR leavers).
    pub removed: i64,
    /// Outstanding rejects of earlier runs sent again.
    pub retried: i64,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_states_keep_the_api_numbers() {
        assert_eq!(RunState::Queued.number(), 1);
        assert_eq!(RunState::Cancelled.number(), 7);
        assert_eq!(RunState::parse("FAILED"), Some(RunState::Failed));
        assert_eq!(RunState::from_number(4), Some(RunState::Succeeded));
        assert_eq!(RunState::Skipped.as_str(), "SKIPPED");
    }

    #[test]
    fn names_are_the_api_names_without_their_prefix() {
        assert_eq!(RunState::WaitingForDependencies.as_str(), "WAITING_FOR_DEPENDENCIES");
        assert_eq!(RunState::NAMES.len(), 7);
        assert_eq!(RunTrigger::parse("SYSTEM_REFRESH"), Some(RunTrigger::SystemRefresh));
        assert_eq!(RunTrigger::NAMES, ["MANUAL", "RUN_ALL", "SCHEDULE", "SYSTEM_REFRESH"]);
        assert_eq!(RunTrigger::from_number(2), Some(RunTrigger::RunAll));
        assert_eq!(RunState::parse("queued"), None);
    }

    #[test]
    fn concealed_messages_name_folders_relative_to_the_connection() {
        let locations = vec!["/srv/hidden root".to_string(), "file:///srv/hidden%20root".to_string()];
        assert_eq!(
            conceal(
                "committed 2 files; see file:///srv/hidden%20root/lake/model.json",
                &locations
            ),
            "committed 2 files; see lake/model.json"
        );
        assert_eq!(
            conceal("cannot create /srv/hidden root: permission denied", &locations),
            "cannot create the connection's root: permission denied"
        );
        let (public, detail) = ConnectionDetail::split("no path here".into(), "c", &locations);
        assert_eq!((public.as_str(), detail), ("no path here", None));
        let task = Task {
            name: "finalize".into(),
            state: 4,
            start_time: None,
            end_time: None,
            message: "see lake/model.json".into(),
            detail: Some(ConnectionDetail {
                connection: "environments/e/connections/c".into(),
                message: "see file:///srv/lake/model.json".into(),
            }),
        };
        assert_eq!(task.message_for(|_| false), "see lake/model.json");
        assert_eq!(
            task.message_for(|c| c.ends_with("/c")),
            "see file:///srv/lake/model.json"
        );
    }
}
