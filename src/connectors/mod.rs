//! Targets. Every connection type implements one [`Connector`] trait; what is common to all of
//! them (batching, retries, progress, cancellation) lives in shared machinery, not in the
//! connectors. `registry` holds the catalogue of types.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use async_trait::async_trait;

use crate::domain::connection::Connection;

pub mod cdm;
pub mod local_files;
pub mod registry;

/// Everything a connector may know about its connection.
pub struct Target<'a> {
    pub connection: &'a Connection,
    /// Opened secrets; never logged.
    pub secrets: &'a BTreeMap<String, String>,
    /// Where `local-files` connections without `root` write.
    pub exports_root: &'a Path,
}

/// One step of a connection test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub message: String,
}

impl Check {
    pub fn pass(name: &str, message: impl Into<String>) -> Check {
        Check {
            name: name.to_string(),
            ok: true,
            message: message.into(),
        }
    }

    pub fn fail(name: &str, message: impl Into<String>) -> Check {
        Check {
            name: name.to_string(),
            ok: false,
            message: message.into(),
        }
    }
}

/// The result of `TestConnection`: the checks made, in order. A failed check ends the test.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TestReport {
    pub checks: Vec<Check>,
}

impl TestReport {
    pub fn ok(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(|c| c.ok)
    }

    /// One sentence: what failed (the first failing check), or that everything passed.
    pub fn summary(&self) -> String {
        match self.checks.iter().find(|c| !c.ok) {
            Some(check) => format!("{} failed: {}", check.name, check.message),
            None if self.checks.is_empty() => "no checks were made".to_string(),
            None => format!("all {} checks passed", self.checks.len()),
        }
    }
}

#[async_trait]
pub trait Connector: Send + Sync {
    /// Reaches the target with the stored credentials and reports each step.
    async fn test(&self, target: &Target<'_>) -> TestReport;
}

/// A type from the catalogue whose connector has not been built yet: it says so plainly
/// instead of pretending.
struct NotYetSupported;

#[async_trait]
impl Connector for NotYetSupported {
    async fn test(&self, target: &Target<'_>) -> TestReport {
        TestReport {
            checks: vec![Check::fail(
                "connector_available",
                format!(
                    "connections of type '{}' cannot be reached by this version of exportd yet",
                    target.connection.type_id
                ),
            )],
        }
    }
}

/// The connector of a type id.
pub fn connector_for(type_id: &str) -> &'static dyn Connector {
    match type_id {
        "local-files" => &local_files::LocalFiles,
        _ => &NotYetSupported,
    }
}

/// The folder a `local-files` connection writes under.
pub fn local_root(connection: &Connection, exports_root: &Path) -> PathBuf {
    connection
        .config
        .get("root")
        .map(PathBuf::from)
        .unwrap_or_else(|| exports_root.to_path_buf())
}
