//! Alert policies and the conditions they watch (PRODUCT.md §14): what a finished run means
//! for each condition, so that an alert fires once on entry and resolves once on recovery.

use super::names::AlertPolicyName;
use super::run::RunState;
use super::time::Micros;

/// `schedule_missed_after_seconds` when a policy leaves it 0.
pub const DEFAULT_SCHEDULE_MISSED_AFTER_SECONDS: i64 = 900;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Condition {
    RunFailed,
    RunSkipped,
    RecordsRejected,
    ScheduleMissed,
}

impl Condition {
    pub const ALL: [Condition; 4] = [
        Condition::RunFailed,
        Condition::RunSkipped,
        Condition::RecordsRejected,
        Condition::ScheduleMissed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Condition::RunFailed => "RUN_FAILED",
            Condition::RunSkipped => "RUN_SKIPPED",
            Condition::RecordsRejected => "RECORDS_REJECTED",
            Condition::ScheduleMissed => "SCHEDULE_MISSED",
        }
    }

    pub fn parse(text: &str) -> Option<Condition> {
        Condition::ALL.into_iter().find(|c| c.as_str() == text)
    }

    /// The API number (AlertCondition).
    pub fn number(self) -> i32 {
        match self {
            Condition::RunFailed => 1,
            Condition::RunSkipped => 2,
            Condition::RecordsRejected => 3,
            Condition::ScheduleMissed => 4,
        }
    }

    pub fn from_number(number: i32) -> Option<Condition> {
        Condition::ALL.into_iter().find(|c| c.number() == number)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventState {
    Firing,
    Resolved,
}

impl EventState {
    pub fn as_str(self) -> &'static str {
        match self {
            EventState::Firing => "FIRING",
            EventState::Resolved => "RESOLVED",
        }
    }

    pub fn parse(text: &str) -> Option<EventState> {
        [EventState::Firing, EventState::Resolved]
            .into_iter()
            .find(|s| s.as_str() == text)
    }

    pub fn number(self) -> i32 {
        match self {
            EventState::Firing => 1,
            EventState::Resolved => 2,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    Pending,
    Delivered,
    Failed,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "PENDING",
            DeliveryState::Delivered => "DELIVERED",
            DeliveryState::Failed => "FAILED",
        }
    }

    pub fn parse(text: &str) -> Option<DeliveryState> {
        [DeliveryState::Pending, DeliveryState::Delivered, DeliveryState::Failed]
            .into_iter()
            .find(|s| s.as_str() == text)
    }

    pub fn number(self) -> i32 {
        match self {
            DeliveryState::Pending => 1,
            DeliveryState::Delivered => 2,
            DeliveryState::Failed => 3,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct AlertPolicy {
    pub name: AlertPolicyName,
    pub display_name: String,
    /// The id of the environment's webhook connection.
    pub connection: String,
    pub conditions: Vec<Condition>,
    pub rejected_percent_threshold: f64,
    /// As given (0 = the default).
    pub schedule_missed_after_seconds: i64,
    /// Export ids; empty = every export of the environment.
    pub exports: Vec<String>,
    pub notify_recovery: bool,
    pub enabled: bool,
    pub create_time: Micros,
    pub update_time: Micros,
    pub revision: i64,
}

impl AlertPolicy {
    pub fn watches(&self, export_id: &str) -> bool {
        self.enabled && (self.exports.is_empty() || self.exports.iter().any(|e| e == export_id))
    }

    pub fn schedule_missed_after_micros(&self) -> Micros {
        let seconds = match self.schedule_missed_after_seconds {
            0 => DEFAULT_SCHEDULE_MISSED_AFTER_SECONDS,
            n => n,
        };
        seconds.saturating_mul(1_000_000)
    }
}

/// A stored alert event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertEvent {
    pub env: String,
    pub policy: String,
    pub id: String,
    /// Export name.
    pub export: String,
    /// Run name; empty for SCHEDULE_MISSED before any run started.
    pub run: String,
    pub condition: Condition,
    pub state: EventState,
    pub message: String,
    pub create_time: Micros,
    pub delivery_state: DeliveryState,
    pub delivery_attempts: i64,
    pub last_delivery_error: String,
}

impl AlertEvent {
    pub fn name(&self) -> String {
        format!(
            "environments/{}/alertPolicies/{}/events/{}",
            self.env, self.policy, self.id
        )
    }

    pub fn policy_name(&self) -> String {
        format!("environments/{}/alertPolicies/{}", self.env, self.policy)
    }

    /// The one-line text of its webhook POST (chat tools show it as is).
    pub fn text(&self) -> String {
        let what = match self.state {
            EventState::Firing => "FIRING",
            EventState::Resolved => "RESOLVED",
        };
        format!(
            "[exportd] {what} {}: {} — {}",
            self.condition.as_str(),
            self.export,
            self.message
        )
    }
}

/// What a finished run says about the conditions.
#[derive(Debug, Clone, Copy)]
pub struct RunOutcome {
    pub state: RunState,
    pub exported: i64,
    pub rejected: i64,
}

/// What a finished run does to one condition of a policy that watches its export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Fire,
    Resolve,
    Keep,
}

/// Whether `outcome` is in `condition` for `policy`. SCHEDULE_MISSED is the scheduler's to
/// say; a run is never in it.
pub fn holds(policy: &AlertPolicy, condition: Condition, outcome: &RunOutcome) -> bool {
    match condition {
        Condition::RunFailed => outcome.state == RunState::Failed,
        Condition::RunSkipped => outcome.state == RunState::Skipped,
        Condition::RecordsRejected => {
            let sent = outcome.exported + outcome.rejected;
            sent > 0
                && outcome.rejected > 0
                && (outcome.rejected as f64) * 100.0 / (sent as f64) > policy.rejected_percent_threshold
        }
        Condition::ScheduleMissed => false,
    }
}

/// Fires on entry (not again while firing); resolves only on a run that succeeds without it.
pub fn transition(firing: bool, holds: bool, state: RunState) -> Transition {
    match (firing, holds) {
        (false, true) => Transition::Fire,
        (true, false) if state == RunState::Succeeded => Transition::Resolve,
        _ => Transition::Keep,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(threshold: f64) -> AlertPolicy {
        AlertPolicy {
            name: AlertPolicyName::new("e", "p"),
            display_name: String::new(),
            connection: "hook".into(),
            conditions: vec![Condition::RecordsRejected],
            rejected_percent_threshold: threshold,
            schedule_missed_after_seconds: 0,
            exports: vec![],
            notify_recovery: true,
            enabled: true,
            create_time: 0,
            update_time: 0,
            revision: 1,
        }
    }

    #[test]
    fn rejected_share_is_compared_with_the_threshold() {
        let run = |exported, rejected| RunOutcome {
            state: RunState::Succeeded,
            exported,
            rejected,
        };
        assert!(holds(&policy(0.0), Condition::RecordsRejected, &run(99, 1)));
        assert!(!holds(&policy(0.0), Condition::RecordsRejected, &run(10, 0)));
        assert!(!holds(&policy(10.0), Condition::RecordsRejected, &run(90, 10)));
        assert!(holds(&policy(10.0), Condition::RecordsRejected, &run(89, 11)));
    }

    #[test]
    fn fire_once_resolve_once_on_success() {
        assert_eq!(transition(false, true, RunState::Failed), Transition::Fire);
        assert_eq!(transition(true, true, RunState::Failed), Transition::Keep);
        assert_eq!(transition(true, false, RunState::Skipped), Transition::Keep);
        assert_eq!(transition(true, false, RunState::Succeeded), Transition::Resolve);
        assert_eq!(transition(false, false, RunState::Succeeded), Transition::Keep);
        assert_eq!(Condition::from_number(4), Some(Condition::ScheduleMissed));
        assert_eq!(policy(0.0).schedule_missed_after_micros(), 900_000_000);
    }
}
