//! `local-files`: exports written as a CDM folder on the server's file system, under the
//! connection's area (its `root`, else `<exports_root>/<environment>/<connection>`; see
//! `domain::output_area`). Folders are created only below the allowed root (or the exports
//! root) that contains the area, never above it, with the operator's `export_file_mode`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;

use super::registry::{optional, storage_type};
use crate::domain::connection_type::{ConnectionTypeSpec, ValueKind};

use super::cdm::file_url;
use super::storage::ByteStore;
use super::storage::local::LocalBytes;
use super::storage::retrying::Retrying;
use super::storage_connector::StorageKind;
use super::{Check, Target, io_failure};
use crate::connectors::retry::Failure;
use crate::domain::output_area::{area_base, local_area};
use crate::file_modes::{create_folders_below, folder_mode};

pub struct LocalFiles;

/// The connection type this file implements (CONNECTORS.md): ids and keys are part of the API.
pub const SPEC: ConnectionTypeSpec = storage_type(
    "local-files",
    "Local files",
    &[optional(
        "root",
        "absolute folder to write under, inside one of the server's allowed_roots \
         (default: <exports_root>/<environment>/<connection>)",
        ValueKind::AbsolutePath,
    )],
    &[],
    &[],
);

/// Creates the exports root (owner only, its missing parents too) at start, so that default
/// areas are always created below an existing folder. Folders that exist are left alone.
pub fn prepare_exports_root(exports_root: &Path, file_mode: u32) -> std::io::Result<()> {
    if exports_root.is_dir() {
        return Ok(());
    }
    crate::file_modes::create_private_folder(exports_root)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(exports_root, std::fs::Permissions::from_mode(folder_mode(file_mode)))?;
    }
    Ok(())
}

/// Where a connection writes: its area, and the existing folder the area is created in. None
/// when its `root` is no longer inside the operator's allowed roots.
fn area_of(target: &Target<'_>) -> Option<(PathBuf, PathBuf)> {
    let area = local_area(target.connection, target.local_roots.exports_root);
    let base = area_base(target.connection, &target.local_roots)?.to_path_buf();
    Some((area, base))
}

#[async_trait]
impl StorageKind for LocalFiles {
    /// The root must be allowed, and its folder exist or be creatable (below the allowed root).
    async fn preflight(&self, target: &Target<'_>) -> Vec<Check> {
        let mut checks = Vec::new();
        let shown = local_area(target.connection, target.local_roots.exports_root)
            .display()
            .to_string();
        let Some((area, base)) = area_of(target) else {
            let allowed: Vec<String> = target
                .local_roots
                .allowed
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            checks.push(Check::fail(
                "root_allowed",
                format!(
                    "{shown} is not inside the server's allowed_roots ({}); nothing was created",
                    allowed.join(", ")
                ),
            ));
            return checks;
        };
        checks.push(Check::pass(
            "root_allowed",
            format!("{shown} lies inside {}", base.display()),
        ));
        let mode = target.export_file_mode;
        let created = tokio::task::spawn_blocking(move || create_folders_below(&base, &area, folder_mode(mode))).await;
        match created {
            Ok(Ok(())) => checks.push(Check::pass("folder_exists", format!("folder {shown} exists"))),
            Ok(Err(e)) => checks.push(Check::fail(
                "folder_exists",
                format!("cannot create folder {shown}: {e}"),
            )),
            Err(e) => checks.push(Check::fail("folder_exists", e.to_string())),
        }
        checks
    }

    async fn open(&self, target: &Target<'_>) -> Result<Arc<dyn ByteStore>, Failure> {
        let (area, base) = area_of(target).ok_or_else(|| Failure::Permanent {
            message: "the connection's root is not inside the server's allowed_roots (they changed since it was \
                      saved); an admin must set another root"
                .into(),
        })?;
        let mode = target.export_file_mode;
        let shown = area.display().to_string();
        let folder = area.clone();
        tokio::task::spawn_blocking(move || create_folders_below(&base, &folder, folder_mode(mode)))
            .await
            .map_err(|e| Failure::Permanent { message: e.to_string() })?
            .map_err(|e| io_failure(&format!("cannot create {shown}"), e))?;
        // Resolved, so that partition locations and model.json's URL name the real folder.
        let area = std::fs::canonicalize(&area).unwrap_or(area);
        Ok(Arc::new(Retrying::new(SPEC.id, LocalBytes::new(&area, mode)?)))
    }

    fn private_locations(&self, target: &Target<'_>) -> Vec<String> {
        locations_of(&local_area(target.connection, target.local_roots.exports_root))
    }
}

/// The area as configured and as the file system resolves it, as paths and as `file://` URLs
/// (partition locations and model.json's URL use the resolved one).
fn locations_of(area: &Path) -> Vec<String> {
    let mut paths = vec![area.to_path_buf()];
    if let Ok(resolved) = std::fs::canonicalize(area) {
        paths.push(resolved);
    }
    paths
        .iter()
        .flat_map(|path| [path.display().to_string(), file_url(path)])
        .collect()
}
