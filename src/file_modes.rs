//! Files and folders created with the permissions they must have, from the moment they exist:
//! the server's data (database, dev secrets) is private, exported files get the operator's
//! `export_file_mode`. Modes are set exactly (the umask neither widens nor narrows them),
//! folders get `x` wherever their files have `r`.

use std::fs::{self, File};
use std::io;
use std::path::{Component, Path};

/// Owner read and write: the database, dev secrets, and exported files by default.
pub const PRIVATE_FILE: u32 = 0o600;
/// Owner only: the data dir.
pub const PRIVATE_FOLDER: u32 = 0o700;

/// The mode of the folders that hold files of `file_mode`: `x` added wherever `r` is set
/// (0600 → 0700, 0640 → 0750).
pub fn folder_mode(file_mode: u32) -> u32 {
    file_mode | ((file_mode & 0o444) >> 2)
}

/// Creates `path` and its missing parents, each readable by the owner only. Existing folders
/// are left as they are (the operator's).
pub fn create_private_folder(path: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(PRIVATE_FOLDER);
    }
    builder.create(path)
}

/// Creates an empty file readable by the owner only, unless it exists: so that a database
/// opened next (SQLite gives its WAL and journal the database file's mode) is private too.
pub fn ensure_private_file(path: &Path) -> io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(PRIVATE_FILE);
    }
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Creates (or truncates) a file with exactly `mode`.
pub fn create_file(path: &Path, mode: u32) -> io::Result<File> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    let file = options.open(path)?;
    set_mode(&file, mode)?;
    Ok(file)
}

/// Creates the folders of `path` that are missing below `base`, each with exactly `mode`.
/// Nothing is created above `base`, which must exist: `path` must lie inside it, also once
/// symbolic links are followed. Error messages name no path: callers say which folder.
pub fn create_folders_below(base: &Path, path: &Path, mode: u32) -> io::Result<()> {
    let relative = path.strip_prefix(base).map_err(|_| {
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the folder is not inside the folder it is to be created in",
        )
    })?;
    if !base.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "the folder to create it in does not exist (the server's operator creates it)",
        ));
    }
    // A symbolic link below `base` must not lead writes elsewhere: each existing folder on
    // the way is checked before anything is created in it.
    let canonical_base = fs::canonicalize(base)?;
    let mut current = base.to_path_buf();
    for component in relative.components() {
        let Component::Normal(name) = component else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a plain folder path"));
        };
        current.push(name);
        match fs::create_dir(&current) {
            Ok(()) => set_mode(&File::open(&current)?, mode)?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                if !fs::canonicalize(&current)?.starts_with(&canonical_base) {
                    return Err(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        "a folder on the way is a symbolic link that leads elsewhere",
                    ));
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(unix)]
fn set_mode(file: &File, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_file: &File, _mode: u32) -> io::Result<()> {
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn folders_get_x_where_files_get_r() {
        assert_eq!(folder_mode(0o600), 0o700);
        assert_eq!(folder_mode(0o640), 0o750);
        assert_eq!(folder_mode(0o644), 0o755);
    }

    #[test]
    fn folders_are_created_below_the_base_only_with_exact_modes() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base");
        let deep = base.join("a/b");
        assert_eq!(
            create_folders_below(&base, &deep, 0o750).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        assert!(!base.exists(), "the base is never created");
        fs::create_dir(&base).unwrap();
        create_folders_below(&base, &deep, 0o750).unwrap();
        assert_eq!(mode_of(&base.join("a")), 0o750);
        assert_eq!(mode_of(&deep), 0o750);
        assert!(create_folders_below(&base, dir.path(), 0o700).is_err());

        let outside = dir.path().join("outside");
        fs::create_dir(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, base.join("link")).unwrap();
        let err = create_folders_below(&base, &base.join("link/x"), 0o700).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        assert!(!outside.join("x").exists(), "nothing is created through the link");
    }

    #[test]
    fn files_get_exactly_their_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        create_file(&path, 0o640).unwrap();
        assert_eq!(mode_of(&path), 0o640);
        let private = dir.path().join("db");
        ensure_private_file(&private).unwrap();
        assert_eq!(mode_of(&private), 0o600);
        ensure_private_file(&private).unwrap();
    }
}
