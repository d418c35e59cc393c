//! Environments: isolated tenants with a kind and a system refresh schedule.

use super::schedule::Schedule;
use super::time::Micros;

/// B-to-C or B-to-B; decides segment eligibility (PRODUCT.md §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvironmentKind {
    IndividualCustomers,
    BusinessAccounts,
}

impl EnvironmentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EnvironmentKind::IndividualCustomers => "INDIVIDUAL_CUSTOMERS",
            EnvironmentKind::BusinessAccounts => "BUSINESS_ACCOUNTS",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "INDIVIDUAL_CUSTOMERS" => Some(EnvironmentKind::IndividualCustomers),
            "BUSINESS_ACCOUNTS" => Some(EnvironmentKind::BusinessAccounts),
            _ => None,
        }
    }

    /// The CLI's short forms.
    pub fn from_cli(text: &str) -> Option<Self> {
        match text.to_ascii_lowercase().as_str() {
            "b2c" | "individual_customers" => Some(EnvironmentKind::IndividualCustomers),
            "b2b" | "business_accounts" => Some(EnvironmentKind::BusinessAccounts),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Environment {
    pub id: String,
    pub display_name: String,
    pub kind: EnvironmentKind,
    /// None = off (the default).
    pub system_refresh_schedule: Option<Schedule>,
    pub next_system_refresh_at: Option<Micros>,
    pub create_time: Micros,
    pub update_time: Micros,
    pub revision: i64,
}
