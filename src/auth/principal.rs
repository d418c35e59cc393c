//! Who is calling, and which role they hold in each environment.

use std::collections::BTreeMap;
use std::fmt;

/// The three roles of PRODUCT.md §2, in decreasing power.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Admin,
    Contributor,
    Viewer,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Admin, Role::Contributor, Role::Viewer];

    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "admin" => Some(Role::Admin),
            "contributor" => Some(Role::Contributor),
            "viewer" => Some(Role::Viewer),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Contributor => "contributor",
            Role::Viewer => "viewer",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The verified caller: its subject and its roles per environment (`*` = every environment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub subject: String,
    pub roles: BTreeMap<String, Role>,
}

impl Principal {
    /// The role in one environment; an explicit entry wins over `*`.
    pub fn role_in(&self, env: &str) -> Option<Role> {
        self.roles.get(env).or_else(|| self.roles.get("*")).copied()
    }

    /// Whether the caller holds a role in every environment (`*`).
    pub fn has_wildcard(&self) -> bool {
        self.roles.contains_key("*")
    }
}
