//! `update_mask` handling (AIP-134): the paths a client may name, `*` for all of them, and the
//! implied mask (every field the client set) when the mask is absent.

use crate::error::{Error, Result};

/// Checks the paths of a mask against `allowed` (plain fields) and `map_fields` (maps whose
/// single keys may be named as `field.KEY`). Returns the paths to apply.
pub fn paths(
    mask: &Option<prost_types::FieldMask>,
    allowed: &[&str],
    map_fields: &[&str],
    implied: impl FnOnce() -> Vec<String>,
) -> Result<Vec<String>> {
    let resolved = resolve(mask, allowed, map_fields, implied)?;
    crate::audit::scope::update_paths(&resolved);
    Ok(resolved)
}

fn resolve(
    mask: &Option<prost_types::FieldMask>,
    allowed: &[&str],
    map_fields: &[&str],
    implied: impl FnOnce() -> Vec<String>,
) -> Result<Vec<String>> {
    let given = mask.as_ref().map(|m| m.paths.clone()).unwrap_or_default();
    if given.is_empty() {
        let implied = implied();
        if implied.is_empty() {
            return Err(Error::invalid(
                "update_mask",
                format!(
                    "nothing to update: name the fields in update_mask ({})",
                    allowed.join(", ")
                ),
            ));
        }
        return Ok(implied);
    }
    if given.iter().any(|p| p == "*") {
        if given.len() > 1 {
            return Err(Error::invalid("update_mask", "`*` must be the only path"));
        }
        return Ok(allowed.iter().map(|s| s.to_string()).collect());
    }
    let mut violations = Vec::new();
    for path in &given {
        let ok = allowed.contains(&path.as_str())
            || map_fields.iter().any(|m| {
                path.strip_prefix(m)
                    .and_then(|rest| rest.strip_prefix('.'))
                    .is_some_and(|k| !k.is_empty())
            });
        if !ok {
            violations.push(crate::error::FieldViolation {
                field: "update_mask".into(),
                description: format!("unknown or read-only path '{path}'; updatable: {}", allowed.join(", ")),
            });
        }
    }
    if !violations.is_empty() {
        return Err(Error::invalid_fields(violations));
    }
    Ok(given)
}

/// The key of a `field.KEY` path, if `path` names one key of the map `field`.
pub fn map_key<'a>(path: &'a str, field: &str) -> Option<&'a str> {
    path.strip_prefix(field)?.strip_prefix('.')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(paths: &[&str]) -> Option<prost_types::FieldMask> {
        Some(prost_types::FieldMask {
            paths: paths.iter().map(|s| s.to_string()).collect(),
        })
    }

    #[test]
    fn known_paths_pass_and_unknown_paths_are_named() {
        let allowed = &["display_name", "config"];
        assert_eq!(
            paths(&mask(&["config.bucket"]), allowed, &["config"], Vec::new).unwrap(),
            vec!["config.bucket"]
        );
        let err = paths(&mask(&["name", "display_name"]), allowed, &["config"], Vec::new).unwrap_err();
        assert!(err.message.contains("'name'"), "{}", err.message);
        assert_eq!(paths(&mask(&["*"]), allowed, &[], Vec::new).unwrap().len(), 2);
        assert!(paths(&None, allowed, &[], Vec::new).is_err());
        assert_eq!(
            paths(&None, allowed, &[], || vec!["display_name".into()]).unwrap(),
            vec!["display_name"]
        );
    }
}
