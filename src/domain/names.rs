//! Resource names and ids: parsed once, at the edge, into typed values.
//!
//! Ids are `[a-z][a-z0-9-]{0,62}`; names follow API.md's patterns.

use std::fmt;

use rand::Rng;

use crate::error::{Error, Result};

/// Checks an id against `[a-z][a-z0-9-]{0,62}`.
pub fn is_valid_id(id: &str) -> bool {
    let bytes = id.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_lowercase()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

/// Validates a client-chosen id, or generates one (`<prefix>-<12 random chars>`) when empty.
pub fn id_or_generate(field: &str, id: &str, prefix: &str) -> Result<String> {
    if id.is_empty() {
        return Ok(generate_id(prefix));
    }
    if !is_valid_id(id) {
        return Err(Error::invalid(
            field,
            format!("'{id}' is not a valid id: use [a-z][a-z0-9-]{{0,62}}"),
        ));
    }
    Ok(id.to_string())
}

/// A random id that starts with a letter, so that it is always a valid id.
pub fn generate_id(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    let suffix: String = (0..12)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{prefix}-{suffix}")
}

fn split_name<'a>(field: &str, name: &'a str, collections: &[&str], what: &str) -> Result<Vec<&'a str>> {
    let pattern = collections
        .iter()
        .map(|c| format!("{c}/{{id}}"))
        .collect::<Vec<_>>()
        .join("/");
    let bad = || {
        Error::invalid(
            field,
            format!("'{name}' is not a valid {what} name: expected {pattern}"),
        )
    };
    if name.is_empty() {
        return Err(Error::invalid(field, format!("a {what} name is required ({pattern})")));
    }
    let parts: Vec<&str> = name.split('/').collect();
    if parts.len() != collections.len() * 2 {
        return Err(bad());
    }
    let mut ids = Vec::with_capacity(collections.len());
    for (i, collection) in collections.iter().enumerate() {
        if parts[i * 2] != *collection {
            return Err(bad());
        }
        ids.push(parts[i * 2 + 1]);
    }
    Ok(ids)
}

fn check_ids(field: &str, name: &str, ids: &[&str], what: &str, wildcard_last: bool) -> Result<()> {
    for (i, id) in ids.iter().enumerate() {
        let is_last = i == ids.len() - 1;
        if wildcard_last && is_last && *id == "-" {
            continue;
        }
        if !is_valid_id(id) {
            return Err(Error::invalid(
                field,
                format!("'{name}' is not a valid {what} name: '{id}' is not a valid id ([a-z][a-z0-9-]{{0,62}})"),
            ));
        }
    }
    Ok(())
}

macro_rules! env_scoped_name {
    ($(#[$doc:meta])* $ty:ident, $collection:literal, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub struct $ty {
            pub env: String,
            pub id: String,
        }

        impl $ty {
            pub const COLLECTION: &'static str = $collection;
            pub const KIND: &'static str = $what;

            pub fn new(env: impl Into<String>, id: impl Into<String>) -> Self {
                $ty { env: env.into(), id: id.into() }
            }

            /// Parses `environments/{env}/<collection>/{id}`; `field` names the request field.
            pub fn parse(field: &str, name: &str) -> Result<Self> {
                let ids = split_name(field, name, &["environments", $collection], $what)?;
                check_ids(field, name, &ids, $what, false)?;
                Ok($ty { env: ids[0].to_string(), id: ids[1].to_string() })
            }

            pub fn environment(&self) -> EnvironmentName {
                EnvironmentName { env: self.env.clone() }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "environments/{}/{}/{}", self.env, $collection, self.id)
            }
        }
    };
}

env_scoped_name!(
    /// `environments/{environment}/connections/{connection}`
    ConnectionName, "connections", "connection"
);
env_scoped_name!(
    /// `environments/{environment}/exports/{export}`
    ExportName, "exports", "export"
);
env_scoped_name!(
    /// `environments/{environment}/entities/{entity}`
    EntityName, "entities", "entity"
);
env_scoped_name!(
    /// `environments/{environment}/segments/{segment}`
    SegmentName, "segments", "segment"
);
env_scoped_name!(
    /// `environments/{environment}/systemRefreshes/{refresh}`
    SystemRefreshName, "systemRefreshes", "system refresh"
);
env_scoped_name!(
    /// `environments/{environment}/alertPolicies/{policy}`
    AlertPolicyName, "alertPolicies", "alert policy"
);

/// `environments/{environment}`
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EnvironmentName {
    pub env: String,
}

impl EnvironmentName {
    pub fn new(env: impl Into<String>) -> Self {
        EnvironmentName { env: env.into() }
    }

    pub fn parse(field: &str, name: &str) -> Result<Self> {
        let ids = split_name(field, name, &["environments"], "environment")?;
        check_ids(field, name, &ids, "environment", false)?;
        Ok(EnvironmentName {
            env: ids[0].to_string(),
        })
    }
}

impl fmt::Display for EnvironmentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "environments/{}", self.env)
    }
}

/// `environments/{environment}/exports/{export}/runs/{run}`
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RunName {
    pub env: String,
    pub export: String,
    pub id: String,
}

impl RunName {
    pub fn parse(field: &str, name: &str) -> Result<Self> {
        let ids = split_name(field, name, &["environments", "exports", "runs"], "export run")?;
        check_ids(field, name, &ids, "export run", false)?;
        Ok(RunName {
            env: ids[0].to_string(),
            export: ids[1].to_string(),
            id: ids[2].to_string(),
        })
    }

    pub fn export_name(&self) -> ExportName {
        ExportName::new(&self.env, &self.export)
    }
}

impl fmt::Display for RunName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "environments/{}/exports/{}/runs/{}", self.env, self.export, self.id)
    }
}

/// The parent of ListExportRuns: one export, or `-` for every export of the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunParent {
    pub env: String,
    /// None for `exports/-`.
    pub export: Option<String>,
}

impl RunParent {
    pub fn parse(field: &str, name: &str) -> Result<Self> {
        let ids = split_name(field, name, &["environments", "exports"], "export")?;
        check_ids(field, name, &ids, "export", true)?;
        let export = (ids[1] != "-").then(|| ids[1].to_string());
        Ok(RunParent {
            env: ids[0].to_string(),
            export,
        })
    }
}

/// The parent of ListAlertEvents: one alert policy, or `-` for every policy of the
/// environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertEventParent {
    pub env: String,
    /// None for `alertPolicies/-`.
    pub policy: Option<String>,
}

impl AlertEventParent {
    pub fn parse(field: &str, name: &str) -> Result<Self> {
        let ids = split_name(field, name, &["environments", "alertPolicies"], "alert policy")?;
        check_ids(field, name, &ids, "alert policy", true)?;
        let policy = (ids[1] != "-").then(|| ids[1].to_string());
        Ok(AlertEventParent {
            env: ids[0].to_string(),
            policy,
        })
    }
}

/// The parent of ListRejectedRecords: a run (the records it rejected) or an export (its
/// outstanding rejects).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RejectedRecordParent {
    Export(ExportName),
    Run(RunName),
}

impl RejectedRecordParent {
    pub fn parse(field: &str, name: &str) -> Result<Self> {
        // `environments/{e}/exports/{x}` has four segments, a run name six.
        if name.split('/').count() == 6 {
            RunName::parse(field, name).map(RejectedRecordParent::Run)
        } else {
            ExportName::parse(field, name).map(RejectedRecordParent::Export)
        }
    }

    /// The environment it is in.
    pub fn env(&self) -> &str {
        match self {
            RejectedRecordParent::Export(name) => &name.env,
            RejectedRecordParent::Run(name) => &name.env,
        }
    }

    /// The export whose rejects are asked for.
    pub fn export_name(&self) -> ExportName {
        match self {
            RejectedRecordParent::Export(name) => name.clone(),
            RejectedRecordParent::Run(name) => name.export_name(),
        }
    }
}

/// `connectionTypes/{type}`
pub fn connection_type_name(id: &str) -> String {
    format!("connectionTypes/{id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_the_pattern() {
        assert!(is_valid_id("a"));
        assert!(is_valid_id("demo-2"));
        assert!(is_valid_id(&format!("a{}", "b".repeat(62))));
        assert!(!is_valid_id(&format!("a{}", "b".repeat(63))));
        assert!(!is_valid_id(""));
        assert!(!is_valid_id("1abc"));
        assert!(!is_valid_id("Abc"));
        assert!(!is_valid_id("a_b"));
        assert!(!is_valid_id("a/b"));
    }

    #[test]
    fn generated_ids_are_valid_and_distinct() {
        let a = generate_id("conn");
        let b = generate_id("conn");
        assert!(is_valid_id(&a), "{a}");
        assert_ne!(a, b);
    }

    #[test]
    fn names_parse_and_print_back() {
        let name = ConnectionName::parse("name", "environments/demo/connections/s3-main").unwrap();
        assert_eq!(name.env, "demo");
        assert_eq!(name.id, "s3-main");
        assert_eq!(name.to_string(), "environments/demo/connections/s3-main");
        let run = RunName::parse("name", "environments/demo/exports/e1/runs/r1").unwrap();
        assert_eq!(run.export_name().to_string(), "environments/demo/exports/e1");
    }

    #[test]
    fn malformed_names_name_the_field() {
        for bad in [
            "",
            "environments/demo",
            "environments/demo/exports/x",
            "environments/Demo/connections/x",
            "environments/demo/connections/x/y",
            "envs/demo/connections/x",
        ] {
            let err = ConnectionName::parse("connection.name", bad).unwrap_err();
            assert_eq!(err.field_violations[0].field, "connection.name", "{bad}");
        }
    }

    #[test]
    fn run_parent_accepts_the_wildcard_only_for_exports() {
        assert_eq!(
            RunParent::parse("parent", "environments/demo/exports/-")
                .unwrap()
                .export,
            None
        );
        assert_eq!(
            RunParent::parse("parent", "environments/demo/exports/e1")
                .unwrap()
                .export
                .as_deref(),
            Some("e1")
        );
        assert!(RunParent::parse("parent", "environments/-/exports/-").is_err());
    }

    #[test]
    fn alert_event_parent_accepts_the_wildcard_only_for_policies() {
        let all = AlertEventParent::parse("parent", "environments/demo/alertPolicies/-").unwrap();
        assert_eq!((all.env.as_str(), all.policy), ("demo", None));
        let one = AlertEventParent::parse("parent", "environments/demo/alertPolicies/p1").unwrap();
        assert_eq!(one.policy.as_deref(), Some("p1"));
        assert!(AlertEventParent::parse("parent", "environments/-/alertPolicies/-").is_err());
        assert!(AlertEventParent::parse("parent", "environments/demo/exports/-").is_err());
    }

    #[test]
    fn rejected_record_parents_are_exports_or_runs() {
        let export = RejectedRecordParent::parse("parent", "environments/demo/exports/e1").unwrap();
        assert!(matches!(export, RejectedRecordParent::Export(_)));
        let run = RejectedRecordParent::parse("parent", "environments/demo/exports/e1/runs/r1").unwrap();
        assert!(matches!(run, RejectedRecordParent::Run(_)));
        assert_eq!(run.env(), "demo");
        assert_eq!(run.export_name().to_string(), "environments/demo/exports/e1");
        for bad in [
            "",
            "environments/demo",
            "environments/demo/exports/-",
            "environments/demo/exports/e1/runs",
        ] {
            let err = RejectedRecordParent::parse("parent", bad).unwrap_err();
            assert_eq!(err.field_violations[0].field, "parent", "{bad}");
        }
    }
}
