//! The one permission table: role × action, with the conditions PRODUCT.md §2 attaches to
//! contributors and viewers. Every RPC consults it through [`authorize`]; nothing else in the
//! code base decides who may do what.

use super::principal::{Principal, Role};
use crate::error::{Error, ErrorCode, Result};

/// One action per RPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    ListConnectionTypes,
    CreateConnection,
    GetConnection,
    ListConnections,
    UpdateConnection,
    DeleteConnection,
    TestConnection,
    CreateExport,
    GetExport,
    ListExports,
    UpdateExport,
    DeleteExport,
    DuplicateExport,
    DetachConnection,
    RunExport,
    RunAllExports,
    UpdateExportSchedules,
    ListExportRuns,
    GetExportRun,
    WatchExportRun,
    CancelExportRun,
    PreviewExport,
    ListRejectedRecords,
    GetEnvironment,
    UpdateEnvironment,
    ListEnvironments,
    CreateEntity,
    GetEntity,
    ListEntities,
    UpdateEntity,
    DeleteEntity,
    WriteRecords,
    CreateSegment,
    GetSegment,
    ListSegments,
    UpdateSegment,
    DeleteSegment,
    SetSegmentMembers,
    ListEligibleSegments,
    StartRefresh,
    CompleteRefresh,
    RunSystemRefresh,
    GetSystemRefresh,
    CreateAlertPolicy,
    GetAlertPolicy,
    ListAlertPolicies,
    UpdateAlertPolicy,
    DeleteAlertPolicy,
    ListAlertEvents,
    ListAuditEvents,
}

/// What one role may do for one action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    Allow,
    Deny,
    /// Allowed when the connection involved is shared with contributors
    /// (`contributors_can_use`); otherwise PERMISSION_DENIED.
    IfConnectionShared,
    /// Allowed on exports the role may edit: not detached, and over a connection shared with
    /// contributors. Otherwise PERMISSION_DENIED.
    IfExportEditable,
}

/// One row of the table.
#[derive(Debug, Clone, Copy)]
pub struct PolicyRow {
    pub action: Action,
    /// The gRPC service and method this row governs (checked against the protos by a test).
    pub service: &'static str,
    pub method: &'static str,
    /// The permission named in PERMISSION_DENIED errors.
    pub permission: &'static str,
    /// Whether the action addresses one environment (else any authenticated caller may call).
    pub environment_scoped: bool,
    pub admin: Rule,
    pub contributor: Rule,
    pub viewer: Rule,
}

/// RPCs that read or diagnose and are therefore not in the audit log (PRODUCT.md §15), besides
/// every Get*, List* and Watch*.
const NOT_AUDITED: &[&str] = &[
    "PreviewExport",
    "TestConnection",
    "ListEligibleSegments",
    "ListConnectionTypes",
];

impl PolicyRow {
    /// Whether calls of this RPC are recorded in the audit log: every RPC that changes or does
    /// something (PRODUCT.md §15).
    pub fn audited(&self) -> bool {
        !(self.method.starts_with("Get")
            || self.method.starts_with("List")
            || self.method.starts_with("Watch")
            || NOT_AUDITED.contains(&self.method))
    }

    /// The full gRPC method: `/exportd.v1.ExportService/UpdateExport`.
    pub fn full_method(&self) -> String {
        format!("/{}/{}", self.service, self.method)
    }

    pub fn rule_for(&self, role: Role) -> Rule {
        match role {
            Role::Admin => self.admin,
            Role::Contributor => self.contributor,
            Role::Viewer => self.viewer,
        }
    }
}

const C: &str = "exportd.v1.ConnectionService";
const E: &str = "exportd.v1.ExportService";
const K: &str = "exportd.v1.CatalogService";
const A: &str = "exportd.v1.AlertService";
const U: &str = "exportd.v1.AuditService";

macro_rules! row {
    ($action:ident, $service:expr, $permission:literal, $scoped:literal, $admin:ident, $contributor:ident, $viewer:ident) => {
        PolicyRow {
            action: Action::$action,
            service: $service,
            method: stringify!($action),
            permission: $permission,
            environment_scoped: $scoped,
            admin: Rule::$admin,
            contributor: Rule::$contributor,
            viewer: Rule::$viewer,
        }
    };
}

/// The table. Reads of connections are additionally limited by visibility (see
/// [`can_see_connection`]): a connection that is not shared does not exist for contributors
/// and viewers.
#[rustfmt::skip]
pub const TABLE: &[PolicyRow] = &[
    //   action                 service permission              env-scoped admin  contributor          viewer
    row!(ListConnectionTypes,   C, "connectionTypes.list",     false, Allow, Allow,               Allow),
    row!(CreateConnection,      C, "connections.create",       true,  Allow, Deny,                Deny),
    row!(GetConnection,         C, "connections.get",          true,  Allow, Allow,               Allow),
    row!(ListConnections,       C, "connections.list",         true,  Allow, Allow,               Allow),
    row!(UpdateConnection,      C, "connections.update",       true,  Allow, Deny,                Deny),
    row!(DeleteConnection,      C, "connections.delete",       true,  Allow, Deny,                Deny),
    row!(TestConnection,        C, "connections.test",         true,  Allow, IfConnectionShared,  Deny),
    row!(CreateExport,          E, "exports.create",           true,  Allow, IfConnectionShared,  Deny),
    row!(GetExport,             E, "exports.get",              true,  Allow, Allow,               Allow),
    row!(ListExports,           E, "exports.list",             true,  Allow, Allow,               Allow),
    row!(UpdateExport,          E, "exports.update",           true,  Allow, IfExportEditable,    Deny),
    row!(DeleteExport,          E, "exports.delete",           true,  Allow, IfExportEditable,    Deny),
    row!(DuplicateExport,       E, "exports.duplicate",        true,  Allow, IfExportEditable,    Deny),
    row!(DetachConnection,      E, "exports.detach",           true,  Allow, IfExportEditable,    Deny),
    row!(RunExport,             E, "exports.run",              true,  Allow, IfExportEditable,    Deny),
    row!(RunAllExports,         E, "exports.runAll",           true,  Allow, Allow,               Deny),
    row!(UpdateExportSchedules, E, "exports.schedule",         true,  Allow, IfExportEditable,    Deny),
    row!(ListExportRuns,        E, "runs.list",                true,  Allow, Allow,               Allow),
    row!(GetExportRun,          E, "runs.get",                 true,  Allow, Allow,               Allow),
    row!(WatchExportRun,        E, "runs.watch",               true,  Allow, Allow,               Allow),
    row!(CancelExportRun,       E, "runs.cancel",              true,  Allow, IfExportEditable,    Deny),
    row!(PreviewExport,         E, "exports.preview",          true,  Allow, IfExportEditable,    Deny),
    row!(ListRejectedRecords,   E, "rejectedRecords.list",     true,  Allow, IfExportEditable,    Deny),
    row!(GetEnvironment,        K, "environments.get",         true,  Allow, Allow,               Allow),
    row!(UpdateEnvironment,     K, "environments.update",      true,  Allow, Deny,                Deny),
    row!(ListEnvironments,      K, "environments.list",        false, Allow, Allow,               Allow),
    row!(CreateEntity,          K, "entities.create",          true,  Allow, Deny,                Deny),
    row!(GetEntity,             K, "entities.get",             true,  Allow, Allow,               Allow),
    row!(ListEntities,          K, "entities.list",            true,  Allow, Allow,               Allow),
    row!(UpdateEntity,          K, "entities.update",          true,  Allow, Deny,                Deny),
    row!(DeleteEntity,          K, "entities.delete",          true,  Allow, Deny,                Deny),
    row!(WriteRecords,          K, "records.write",            true,  Allow, Deny,                Deny),
    row!(CreateSegment,         K, "segments.create",          true,  Allow, Deny,                Deny),
    row!(GetSegment,            K, "segments.get",             true,  Allow, Allow,               Allow),
    row!(ListSegments,          K, "segments.list",            true,  Allow, Allow,               Allow),
    row!(UpdateSegment,         K, "segments.update",          true,  Allow, Deny,                Deny),
    row!(DeleteSegment,         K, "segments.delete",          true,  Allow, Deny,                Deny),
    row!(SetSegmentMembers,     K, "segments.setMembers",      true,  Allow, Deny,                Deny),
    row!(ListEligibleSegments,  K, "segments.listEligible",    true,  Allow, Allow,               Allow),
    row!(StartRefresh,          K, "refresh.start",            true,  Allow, Deny,                Deny),
    row!(CompleteRefresh,       K, "refresh.complete",         true,  Allow, Deny,                Deny),
    row!(RunSystemRefresh,      K, "systemRefreshes.run",      true,  Allow, Deny,                Deny),
    row!(GetSystemRefresh,      K, "systemRefreshes.get",      true,  Allow, Allow,               Allow),
    row!(CreateAlertPolicy,     A, "alertPolicies.create",     true,  Allow, Deny,                Deny),
    row!(GetAlertPolicy,        A, "alertPolicies.get",        true,  Allow, Allow,               Allow),
    row!(ListAlertPolicies,     A, "alertPolicies.list",       true,  Allow, Allow,               Allow),
    row!(UpdateAlertPolicy,     A, "alertPolicies.update",     true,  Allow, Deny,                Deny),
    row!(DeleteAlertPolicy,     A, "alertPolicies.delete",     true,  Allow, Deny,                Deny),
    row!(ListAlertEvents,       A, "alertEvents.list",         true,  Allow, Allow,               Allow),
    row!(ListAuditEvents,       U, "auditEvents.list",         true,  Allow, Deny,                Deny),
];

pub fn row(action: Action) -> &'static PolicyRow {
    TABLE
        .iter()
        .find(|row| row.action == action)
        .expect("every action has a row (checked by policy tests)")
}

/// What the handler knows about the resource when it asks.
#[derive(Debug, Clone, Copy, Default)]
pub struct Facts {
    /// The connection involved is shared with contributors.
    pub connection_shared: Option<bool>,
    /// The export involved is editable by contributors (shared connection, not detached).
    pub export_editable_by_contributors: Option<bool>,
}

impl Facts {
    pub fn connection(shared: bool) -> Facts {
        Facts {
            connection_shared: Some(shared),
            ..Facts::default()
        }
    }

    pub fn export(editable_by_contributors: bool) -> Facts {
        Facts {
            export_editable_by_contributors: Some(editable_by_contributors),
            ..Facts::default()
        }
    }

    /// An edit that also moves the export onto another connection: both must allow it.
    pub fn export_onto(editable_by_contributors: bool, connection_shared: bool) -> Facts {
        Facts {
            export_editable_by_contributors: Some(editable_by_contributors),
            connection_shared: Some(connection_shared),
        }
    }
}

/// The caller's role in `env`, or NOT_FOUND: the names of other tenants' environments (and
/// everything in them) must not leak.
pub fn role_in(principal: &Principal, env: &str) -> Result<Role> {
    principal
        .role_in(env)
        .ok_or_else(|| Error::not_found("environment", format!("environments/{env}")))
}

/// Only admins see connections that are not shared with contributors.
pub fn can_see_connection(role: Role, shared: bool) -> bool {
    role == Role::Admin || shared
}

/// Decides one request. Returns the caller's role in the environment for further use.
pub fn authorize(principal: &Principal, env: &str, action: Action, facts: Facts) -> Result<Role> {
    let row = row(action);
    let role = role_in(principal, env)?;
    let denied = |why: &str| {
        Error::new(
            ErrorCode::PermissionDenied,
            "PERMISSION_DENIED",
            format!("permission '{}' is required: {why}", row.permission),
        )
        .with_meta("permission", row.permission)
        .with_meta("role", role.as_str())
        .with_meta("environment", env)
    };
    match row.rule_for(role) {
        Rule::Allow => Ok(role),
        Rule::Deny => Err(denied(&format!(
            "role '{role}' in environment '{env}' does not have it"
        ))),
        Rule::IfConnectionShared => match facts.connection_shared {
            Some(true) => Ok(role),
            _ => Err(denied(&format!(
                "role '{role}' may use only connections shared with contributors; connection is not shared with contributors or does not exist"
            ))),
        },
        Rule::IfExportEditable => match (facts.export_editable_by_contributors, facts.connection_shared) {
            (Some(true), Some(false)) => Err(denied(&format!(
                "role '{role}' may put exports only on connections shared with contributors; connection is not shared with contributors or does not exist"
            ))),
            (Some(true), _) => Ok(role),
            _ => Err(denied(&format!(
                "role '{role}' may change only exports whose connection is shared with contributors (detached exports are editable by admins only)"
            ))),
        },
    }
}

/// Whether `role` may edit an export with these facts (for `your_permission`), asked of the same
/// table as the edit RPCs themselves.
pub fn may_edit_export(role: Role, editable_by_contributors: bool) -> bool {
    match row(Action::UpdateExport).rule_for(role) {
        Rule::Allow => true,
        Rule::IfExportEditable => editable_by_contributors,
        Rule::Deny | Rule::IfConnectionShared => false,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use prost::Message;

    use super::*;

    fn principal(env: &str, role: Role) -> Principal {
        Principal {
            subject: "u".into(),
            roles: BTreeMap::from([(env.to_string(), role)]),
        }
    }

    #[test]
    fn every_rpc_of_every_service_has_exactly_one_row() {
        let set = prost_types::FileDescriptorSet::decode(crate::pb::FILE_DESCRIPTOR_SET).unwrap();
        let mut rpcs = BTreeSet::new();
        for file in set.file.iter().filter(|f| f.package() == "exportd.v1") {
            for service in &file.service {
                for method in &service.method {
                    rpcs.insert(format!("exportd.v1.{}/{}", service.name(), method.name()));
                }
            }
        }
        let rows: Vec<String> = TABLE.iter().map(|r| format!("{}/{}", r.service, r.method)).collect();
        let unique: BTreeSet<String> = rows.iter().cloned().collect();
        assert_eq!(rows.len(), unique.len(), "duplicate rows");
        assert_eq!(unique, rpcs);
    }

    #[test]
    fn no_role_in_the_environment_is_not_found() {
        let err = authorize(&principal("a", Role::Admin), "b", Action::GetExport, Facts::default()).unwrap_err();
        assert_eq!(err.code, ErrorCode::NotFound);
    }

    #[test]
    fn wildcard_grants_every_environment_but_explicit_entries_win() {
        let p = Principal {
            subject: "u".into(),
            roles: BTreeMap::from([("*".to_string(), Role::Admin), ("x".to_string(), Role::Viewer)]),
        };
        assert!(authorize(&p, "any", Action::CreateConnection, Facts::default()).is_ok());
        let err = authorize(&p, "x", Action::CreateConnection, Facts::default()).unwrap_err();
        assert_eq!(err.code, ErrorCode::PermissionDenied);
        assert!(err.message.contains("connections.create"), "{}", err.message);
    }

    #[test]
    fn conditions_need_their_facts() {
        let c = principal("e", Role::Contributor);
        assert!(authorize(&c, "e", Action::CreateExport, Facts::connection(true)).is_ok());
        let err = authorize(&c, "e", Action::CreateExport, Facts::connection(false)).unwrap_err();
        assert!(err.message.contains("connection is not shared with contributors"));
        assert!(authorize(&c, "e", Action::RunExport, Facts::export(true)).is_ok());
        assert!(authorize(&c, "e", Action::RunExport, Facts::export(false)).is_err());
        assert!(authorize(&c, "e", Action::UpdateExport, Facts::export_onto(true, true)).is_ok());
        let err = authorize(&c, "e", Action::UpdateExport, Facts::export_onto(true, false)).unwrap_err();
        assert!(err.message.contains("connection is not shared with contributors"));
        let a = principal("e", Role::Admin);
        assert!(authorize(&a, "e", Action::UpdateExport, Facts::export_onto(false, false)).is_ok());
        assert!(may_edit_export(Role::Admin, false));
        assert!(!may_edit_export(Role::Viewer, true));
    }
}
