//! Where exports write, and the rule that output areas never overlap (PRODUCT.md §3).
//!
//! - A `local-files` connection writes under its **area**: its `root` when set (which must lie
//!   under one of the operator's `allowed_roots`), else `<exports_root>/<environment>/<connection>`.
//!   Every environment owns `<exports_root>/<environment>/`, so default areas of two
//!   environments can never meet, and an explicit `root` may not reach into another
//!   environment's part of the exports root, contain the exports root, or overlap a root of
//!   another environment.
//! - An export writes at its **location**: the area (or a storage connection's prefix/folder)
//!   joined with the export's `folder` (default: its export id). Within an environment no two
//!   locations may be equal or nested.
//!
//! Paths are compared lexically on normalised absolute paths, component by component
//! (`/a/b` contains `/a/b/c` but not `/a/bc`); nothing here touches the file system. The
//! connectors check again, on the real folders, before they write.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use super::connection::Connection;
use super::names::ExportName;
use crate::error::FieldViolation;

/// Longest folder or file name the file systems and object stores we write to accept (bytes).
pub const MAX_SEGMENT_BYTES: usize = 255;

/// The operator's settings for `local-files`, normalised.
#[derive(Debug, Clone, Copy)]
pub struct LocalRoots<'a> {
    /// Default areas are `<exports_root>/<environment>/<connection>`.
    pub exports_root: &'a Path,
    /// Folders under which a connection's `root` may lie.
    pub allowed: &'a [PathBuf],
}

/// `path` made absolute against `base` and normalised lexically: `.` dropped, `..` taking
/// away the folder before it (never above `/`).
pub fn normalize(path: &Path, base: &Path) -> PathBuf {
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    };
    let mut out = PathBuf::new();
    for component in joined.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// Checks a relative folder (an export's `folder`, a connection's `prefix`): what can be
/// written on every storage type. `a//b` and a trailing `/` are accepted and mean `a/b`.
pub fn check_relative_folder(value: &str) -> Result<(), String> {
    if value.starts_with('/') {
        return Err("must be a relative path (no leading `/`)".into());
    }
    if value.contains('\\') {
        return Err("must use `/` between folders, not `\\`".into());
    }
    if value.chars().any(char::is_control) {
        return Err("must not contain line breaks or other control characters".into());
    }
    let segments = folder_segments(value);
    if segments.is_empty() {
        return Err("must name at least one folder".into());
    }
    if let Some(dot) = segments.iter().find(|s| **s == "." || **s == "..") {
        return Err(format!("must not contain `{dot}` segments"));
    }
    if let Some(long) = segments.iter().find(|s| s.len() > MAX_SEGMENT_BYTES) {
        let shown: String = long.chars().take(20).collect();
        return Err(format!(
            "each folder name is at most {MAX_SEGMENT_BYTES} bytes ('{shown}…' has {})",
            long.len()
        ));
    }
    Ok(())
}

fn folder_segments(value: &str) -> Vec<&str> {
    value.split('/').filter(|s| !s.is_empty()).collect()
}

/// The folder an export writes in, relative to its connection's area: its `folder` setting
/// (normalised), else its export id.
pub fn export_folder(export_id: &str, settings: &BTreeMap<String, String>) -> String {
    match settings.get("folder") {
        Some(folder) => folder_segments(folder).join("/"),
        None => export_id.to_string(),
    }
}

/// The folder a `local-files` connection writes under.
pub fn local_area(connection: &Connection, exports_root: &Path) -> PathBuf {
    match connection.config.get("root") {
        Some(root) => normalize(Path::new(root), Path::new("/")),
        None => exports_root.join(&connection.name.env).join(&connection.name.id),
    }
}

/// The folder under which a `local-files` connection's area is created, or None when the
/// operator no longer allows it (a `root` saved before `allowed_roots` changed): the exports
/// root for default areas, else the innermost allowed root that contains the `root`.
pub fn area_base<'a>(connection: &Connection, roots: &LocalRoots<'a>) -> Option<&'a Path> {
    if !connection.config.contains_key("root") {
        return Some(roots.exports_root);
    }
    let area = local_area(connection, roots.exports_root);
    roots
        .allowed
        .iter()
        .filter(|allowed| area.starts_with(allowed))
        .max_by_key(|allowed| allowed.components().count())
        .map(PathBuf::as_path)
}

/// Checks a `local-files` connection's `root` in `env` against the operator's roots and the
/// explicit roots of other environments' connections (`foreign_roots`, normalised). The
/// description never names anything of another environment.
pub fn check_root(env: &str, root: &str, roots: &LocalRoots, foreign_roots: &[PathBuf]) -> Result<(), String> {
    let root = normalize(Path::new(root), Path::new("/"));
    if !roots.allowed.iter().any(|allowed| root.starts_with(allowed)) {
        let allowed: Vec<String> = roots.allowed.iter().map(|p| p.display().to_string()).collect();
        return Err(if allowed.is_empty() {
            "the server's operator allows no explicit roots (allowed_roots is empty); leave `root` out \
             to write in the connection's own folder"
                .into()
        } else {
            format!(
                "must be a folder under one of the server's allowed_roots: {}",
                allowed.join(", ")
            )
        });
    }
    let exports_root = roots.exports_root;
    if exports_root.starts_with(&root) {
        return Err(format!(
            "must not contain the exports root {}, which holds every environment's own folder",
            exports_root.display()
        ));
    }
    let own = exports_root.join(env);
    if root.starts_with(exports_root) && !root.starts_with(&own) {
        return Err(format!(
            "inside the exports root, a root must lie in this environment's own folder {}",
            own.display()
        ));
    }
    if foreign_roots.iter().any(|other| path_overlap(&root, other).is_some()) {
        return Err("overlaps the output area of another environment; choose another folder".into());
    }
    Ok(())
}

/// How two paths are nested, if they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overlap {
    Same,
    /// The first lies inside the second.
    Inside,
    /// The first contains the second.
    Contains,
}

/// Whether two paths (or segment lists) are equal or nested, compared element by element.
fn nesting<T: PartialEq>(a: &[T], b: &[T]) -> Option<Overlap> {
    let shared = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    match (shared == a.len(), shared == b.len()) {
        (true, true) => Some(Overlap::Same),
        (false, true) => Some(Overlap::Inside),
        (true, false) => Some(Overlap::Contains),
        (false, false) => None,
    }
}

fn path_overlap(a: &Path, b: &Path) -> Option<Overlap> {
    let a: Vec<Component> = a.components().collect();
    let b: Vec<Component> = b.components().collect();
    nesting(&a, &b)
}

/// Where an export writes, comparable with another export's location: a storage space (the
/// server's file system, one bucket, one container, one SFTP server) and a path in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    space: String,
    path: Vec<String>,
}

impl Location {
    pub fn overlap(&self, other: &Location) -> Option<Overlap> {
        if self.space != other.space {
            return None;
        }
        nesting(&self.path, &other.path)
    }
}

/// Where an export over `connection` writes; None for targets that are not folders
/// (databases, webhooks, audiences).
pub fn export_location(
    connection: &Connection,
    export_id: &str,
    settings: &BTreeMap<String, String>,
    exports_root: &Path,
) -> Option<Location> {
    let mut location = connection_location(connection, exports_root)?;
    location.path.extend(
        folder_segments(&export_folder(export_id, settings))
            .into_iter()
            .map(str::to_string),
    );
    Some(location)
}

/// Where a storage connection's exports go (its area, bucket and prefix, server and folder);
/// None for targets that are not folders.
pub fn connection_location(connection: &Connection, exports_root: &Path) -> Option<Location> {
    let config = |key: &str| connection.config.get(key).map(String::as_str).unwrap_or_default();
    let strings = |text: &str| {
        folder_segments(text)
            .into_iter()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let (space, path) = match connection.type_id.as_str() {
        "local-files" => {
            let area = local_area(connection, exports_root);
            let path = area
                .components()
                .filter_map(|c| match c {
                    Component::Normal(name) => Some(name.to_string_lossy().into_owned()),
                    _ => None,
                })
                .collect();
            ("file".to_string(), path)
        }
        "s3" => (
            format!("s3 {} {}", config("endpoint"), config("bucket")),
            strings(config("prefix")),
        ),
        "azure-blob" => (
            format!(
                "azure {} {} {}",
                config("endpoint"),
                config("account"),
                config("container")
            ),
            strings(config("prefix")),
        ),
        "sftp" => {
            let port = connection.config.get("port").map(String::as_str).unwrap_or("22");
            let folder = config("folder");
            // A relative folder starts in the user's login folder.
            let mut path = if folder.starts_with('/') {
                Vec::new()
            } else {
                vec![format!("~{}", config("username"))]
            };
            path.extend(strings(folder));
            (format!("sftp {} {port}", config("host").to_ascii_lowercase()), path)
        }
        _ => return None,
    };
    Some(Location { space, path })
}

/// An export that writes where another one does, as the field violation that refuses it.
/// `field` is what the caller can change (`export.settings.folder`, `export_id`,
/// `connection.config.root`); the description names the other export and nothing of its
/// connection.
pub fn overlap_violation(field: &str, export: &ExportName, other: &ExportName, how: Overlap) -> FieldViolation {
    let relation = match how {
        Overlap::Same => "the same folder as",
        Overlap::Inside => "a folder inside the folder of",
        Overlap::Contains => "a folder that contains the folder of",
    };
    FieldViolation {
        field: field.to_string(),
        description: format!(
            "export '{export}' would write to {relation} export '{other}'; the output areas of two exports \
             never overlap: choose another folder"
        ),
    }
}

/// The first pair of exports whose locations are equal or nested, among `placed` (each export
/// with its location), checking only pairs that involve one of `changed`.
pub fn first_overlap<'a>(
    placed: &'a [(ExportName, Location)],
    changed: &[&ExportName],
) -> Option<(&'a ExportName, &'a ExportName, Overlap)> {
    for (name, location) in placed.iter().filter(|(n, _)| changed.contains(&n)) {
        for (other, other_location) in placed {
            if other == name {
                continue;
            }
            if let Some(how) = location.overlap(other_location) {
                return Some((name, other, how));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::names::ConnectionName;

    fn connection(env: &str, id: &str, type_id: &str, config: &[(&str, &str)]) -> Connection {
        Connection {
            name: ConnectionName::new(env, id),
            display_name: id.into(),
            description: String::new(),
            type_id: type_id.into(),
            config: config.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            secret_keys: Vec::new(),
            contributors_can_use: false,
            profile_limit: 0,
            creator: String::new(),
            create_time: 0,
            update_time: 0,
            revision: 1,
        }
    }

    fn settings(folder: Option<&str>) -> BTreeMap<String, String> {
        folder
            .map(|f| BTreeMap::from([("folder".to_string(), f.to_string())]))
            .unwrap_or_default()
    }

    #[test]
    fn paths_are_normalised_lexically() {
        let base = Path::new("/srv/exportd");
        assert_eq!(
            normalize(Path::new("data/./exports/"), base),
            PathBuf::from("/srv/exportd/data/exports")
        );
        assert_eq!(normalize(Path::new("/a/b/../c"), base), PathBuf::from("/a/c"));
        assert_eq!(normalize(Path::new("/../.."), base), PathBuf::from("/"));
    }

    #[test]
    fn folders_that_can_never_be_written_are_refused() {
        for good in ["x", "a/b", "a//b/", "Ünï code", "x.y", ".hidden"] {
            assert!(check_relative_folder(good).is_ok(), "{good}");
        }
        let long = "x".repeat(MAX_SEGMENT_BYTES + 1);
        for bad in [
            ".", "./x", "x/./y", "x/..", "/abs", "a\nb", "a\\b", "", "/", "//", &long,
        ] {
            assert!(check_relative_folder(bad).is_err(), "{bad:?}");
        }
        assert!(check_relative_folder(&"x".repeat(MAX_SEGMENT_BYTES)).is_ok());
    }

    #[test]
    fn default_areas_are_per_environment_and_connection() {
        let root = Path::new("/data/exports");
        let a = connection("acme", "files", "local-files", &[]);
        let b = connection("globex", "files", "local-files", &[]);
        assert_eq!(local_area(&a, root), PathBuf::from("/data/exports/acme/files"));
        let same_id = |c: &Connection| export_location(c, "lake", &BTreeMap::new(), root).unwrap();
        assert_eq!(same_id(&a).overlap(&same_id(&b)), None);
        let explicit = connection("acme", "x", "local-files", &[("root", "/srv/out/./a/")]);
        assert_eq!(local_area(&explicit, root), PathBuf::from("/srv/out/a"));
    }

    #[test]
    fn locations_overlap_when_equal_or_nested_in_one_space() {
        let root = Path::new("/data/exports");
        let files = connection("acme", "files", "local-files", &[]);
        let at = |folder: Option<&str>| export_location(&files, "e", &settings(folder), root).unwrap();
        assert_eq!(at(Some("a/b")).overlap(&at(Some("a//b/"))), Some(Overlap::Same));
        assert_eq!(at(Some("a/b")).overlap(&at(Some("a"))), Some(Overlap::Inside));
        assert_eq!(at(Some("a")).overlap(&at(Some("a/b"))), Some(Overlap::Contains));
        assert_eq!(at(Some("ab")).overlap(&at(Some("a"))), None);
        // Another connection's root can reach into this one's area.
        let inner = connection(
            "acme",
            "inner",
            "local-files",
            &[("root", "/data/exports/acme/files/a")],
        );
        let inner_at = export_location(&inner, "e", &settings(Some("b")), root).unwrap();
        assert_eq!(inner_at.overlap(&at(Some("a/b"))), Some(Overlap::Same));

        let bucket =
            |prefix: &str, bucket: &str| connection("acme", "s", "s3", &[("bucket", bucket), ("prefix", prefix)]);
        let s3 = |c: &Connection, folder: &str| export_location(c, "e", &settings(Some(folder)), root).unwrap();
        assert_eq!(
            s3(&bucket("p", "b1"), "x").overlap(&s3(&bucket("", "b1"), "p")),
            Some(Overlap::Inside)
        );
        assert_eq!(s3(&bucket("p", "b1"), "x").overlap(&s3(&bucket("p", "b2"), "x")), None);
        let sftp = |folder: &str, user: &str| {
            connection(
                "acme",
                "f",
                "sftp",
                &[("host", "Files.Example"), ("folder", folder), ("username", user)],
            )
        };
        let at_sftp = |c: &Connection| export_location(c, "e", &BTreeMap::new(), root).unwrap();
        assert_eq!(at_sftp(&sftp("out", "a")).overlap(&at_sftp(&sftp("out", "b"))), None);
        assert_eq!(
            at_sftp(&sftp("/out", "a")).overlap(&at_sftp(&sftp("/out", "b"))),
            Some(Overlap::Same)
        );
        let webhook = connection("acme", "w", "webhook", &[("url", "https://x")]);
        assert!(export_location(&webhook, "e", &BTreeMap::new(), root).is_none());
    }

    #[test]
    fn roots_stay_under_allowed_roots_and_out_of_other_environments() {
        let allowed = vec![PathBuf::from("/data/exports"), PathBuf::from("/srv/shared")];
        let roots = LocalRoots {
            exports_root: Path::new("/data/exports"),
            allowed: &allowed,
        };
        let foreign = vec![PathBuf::from("/srv/shared/globex")];
        let check = |root: &str| check_root("acme", root, &roots, &foreign);
        assert!(check("/srv/shared/acme").is_ok());
        assert!(check("/data/exports/acme/custom").is_ok());
        assert!(check("/data/exports/acme").is_ok());
        assert!(check("/etc/cron.d").unwrap_err().contains("allowed_roots"));
        assert!(check("/srv/sharedx").unwrap_err().contains("allowed_roots"));
        assert!(check("/data/exports").unwrap_err().contains("exports root"));
        assert!(check("/data/exports/globex/files").unwrap_err().contains("own folder"));
        for overlapping in ["/srv/shared", "/srv/shared/globex", "/srv/shared/globex/x/../y"] {
            let err = check(overlapping).unwrap_err();
            assert!(!err.contains("globex"), "{err}");
        }
        let none = LocalRoots {
            exports_root: Path::new("/data/exports"),
            allowed: &[],
        };
        assert!(check_root("acme", "/data/exports/acme", &none, &[]).is_err());
    }

    #[test]
    fn areas_are_created_under_the_innermost_allowed_root() {
        let allowed = vec![PathBuf::from("/srv"), PathBuf::from("/srv/shared")];
        let roots = LocalRoots {
            exports_root: Path::new("/data/exports"),
            allowed: &allowed,
        };
        let at = |root: &str| connection("acme", "c", "local-files", &[("root", root)]);
        assert_eq!(area_base(&at("/srv/shared/a"), &roots), Some(Path::new("/srv/shared")));
        assert_eq!(area_base(&at("/srv/other"), &roots), Some(Path::new("/srv")));
        assert_eq!(area_base(&at("/etc"), &roots), None);
        let default = connection("acme", "c", "local-files", &[]);
        assert_eq!(area_base(&default, &roots), Some(Path::new("/data/exports")));
    }

    #[test]
    fn the_first_overlap_involves_a_changed_export() {
        let root = Path::new("/data/exports");
        let files = connection("acme", "files", "local-files", &[]);
        let place = |id: &str, folder: Option<&str>| {
            (
                ExportName::new("acme", id),
                export_location(&files, id, &settings(folder), root).unwrap(),
            )
        };
        let placed = vec![place("a", Some("x")), place("b", Some("x")), place("c", None)];
        let c = ExportName::new("acme", "c");
        assert_eq!(first_overlap(&placed, &[&c]), None);
        let (name, other, how) = first_overlap(&placed, &[&ExportName::new("acme", "b")]).unwrap();
        assert_eq!((name.id.as_str(), other.id.as_str(), how), ("b", "a", Overlap::Same));
        let violation = overlap_violation("export.settings.folder", name, other, how);
        assert!(
            violation.description.contains("environments/acme/exports/a"),
            "{}",
            violation.description
        );
    }
}
