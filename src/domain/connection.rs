//! Connections: a target type, non-secret configuration and sealed secrets.

use std::collections::BTreeMap;

use super::connection_type::{ConnectionTypeSpec, check_map, check_one_of, missing_keys};
use super::names::ConnectionName;
use super::time::Micros;
use crate::error::FieldViolation;

/// A stored connection, as the domain sees it. Secrets are not here: they stay sealed in the
/// store and are opened only by the connector that needs them.
#[derive(Debug, Clone, PartialEq)]
pub struct Connection {
    pub name: ConnectionName,
    pub display_name: String,
    pub description: String,
    pub type_id: String,
    pub config: BTreeMap<String, String>,
    pub secret_keys: Vec<String>,
    pub contributors_can_use: bool,
    /// 0 = the type's default.
    pub profile_limit: i64,
    pub creator: String,
    pub create_time: Micros,
    pub update_time: Micros,
    pub revision: i64,
}

impl Connection {
    /// The profile limit that applies: the connection's own, else the type's (0 = none).
    pub fn effective_profile_limit(&self, spec: &ConnectionTypeSpec) -> i64 {
        if self.profile_limit > 0 {
            self.profile_limit
        } else {
            spec.profile_limit
        }
    }
}

/// Validates the parts of a connection a client writes. `prefix` is the request path of the
/// connection message (e.g. `connection`).
pub fn validate(
    prefix: &str,
    spec: &ConnectionTypeSpec,
    display_name: &str,
    config: &BTreeMap<String, String>,
    secrets: &BTreeMap<String, String>,
    secret_values: bool,
    profile_limit: i64,
) -> Vec<FieldViolation> {
    let mut violations = Vec::new();
    violations.extend(check_display_name(&format!("{prefix}.display_name"), display_name));
    violations.extend(check_map(&format!("{prefix}.config"), spec.config, config));
    if secret_values {
        violations.extend(check_map(&format!("{prefix}.secrets"), spec.secrets, secrets));
    } else {
        // Secrets kept from before are sealed: only their keys are known here, and their
        // values were checked when they were given.
        violations.extend(missing_keys(&format!("{prefix}.secrets"), spec.secrets, secrets));
    }
    violations.extend(check_one_of(&format!("{prefix}.secrets"), spec.one_of_secrets, secrets));
    if profile_limit < 0 {
        violations.push(FieldViolation {
            field: format!("{prefix}.profile_limit"),
            description: "must be 0 (the type's default) or a positive number".into(),
        });
    }
    violations
}

/// Display names are required, within their bound (200 characters), and without control
/// characters.
pub fn check_display_name(field: &str, display_name: &str) -> Option<FieldViolation> {
    let problem = if display_name.trim().is_empty() {
        Some("a display name is required".to_string())
    } else {
        super::bounds::DISPLAY_NAME.problem(display_name).or_else(|| {
            display_name
                .chars()
                .any(char::is_control)
                .then(|| "must not contain control characters".to_string())
        })
    };
    problem.map(|description| FieldViolation {
        field: field.to_string(),
        description,
    })
}
