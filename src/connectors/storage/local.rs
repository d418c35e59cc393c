//! [`ByteStore`] over a folder of this machine: every object is written to a temporary name,
//! synced, renamed into place and its directory synced, so a crash leaves the old object or
//! the new one, never a part.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::AsyncWriteExt;

use super::{ByteStore, Upload, check_path};
use crate::connectors::io_failure;
use crate::connectors::retry::Failure;
use crate::file_modes::{create_file, create_folders_below, folder_mode};

/// Temporary files end with this; nothing else the store writes does.
const TMP_SUFFIX: &str = ".exportd-tmp";

pub struct LocalBytes {
    root: PathBuf,
    /// Permission bits of the files written (folders get `x` where `r` is set).
    file_mode: u32,
}

impl LocalBytes {
    /// `root` is made absolute (so that `file://` URLs are); it must exist: folders are only
    /// created below it.
    pub fn new(root: &Path, file_mode: u32) -> Result<LocalBytes, Failure> {
        let root = std::path::absolute(root).map_err(|e| io_failure(&format!("bad folder {}", root.display()), e))?;
        Ok(LocalBytes { root, file_mode })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn file(&self, path: &str) -> Result<PathBuf, Failure> {
        check_path(path)?;
        Ok(path.split('/').fold(self.root.clone(), |p, s| p.join(s)))
    }

    async fn create(&self, dest: &Path) -> Result<(tokio::fs::File, PathBuf), Failure> {
        let (root, dest, mode) = (self.root.clone(), dest.to_path_buf(), self.file_mode);
        let tmp = tmp_path(&dest);
        let opened = tokio::task::spawn_blocking({
            let tmp = tmp.clone();
            move || {
                if let Some(parent) = dest.parent() {
                    create_folders_below(&root, parent, folder_mode(mode))?;
                }
                create_file(&tmp, mode)
            }
        })
        .await
        .map_err(|e| Failure::Permanent { message: e.to_string() })?
        .map_err(|e| io_failure(&format!("cannot create {}", tmp.display()), e))?;
        Ok((tokio::fs::File::from_std(opened), tmp))
    }
}

fn tmp_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(TMP_SUFFIX);
    dest.with_file_name(name)
}

/// Syncs a written temp file, renames it into place and makes the rename durable.
async fn publish(mut file: tokio::fs::File, tmp: &Path, dest: &Path) -> std::io::Result<()> {
    file.flush().await?;
    file.sync_all().await?;
    drop(file);
    tokio::fs::rename(tmp, dest).await?;
    #[cfg(unix)]
    if let Some(parent) = dest.parent() {
        tokio::fs::File::open(parent).await?.sync_all().await?;
    }
    Ok(())
}

#[async_trait]
impl ByteStore for LocalBytes {
    async fn put(&self, path: &str, bytes: Bytes) -> Result<(), Failure> {
        let dest = self.file(path)?;
        let (mut file, tmp) = self.create(&dest).await?;
        let written = async {
            file.write_all(&bytes).await?;
            publish(file, &tmp, &dest).await
        }
        .await;
        if let Err(e) = written {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(io_failure(&format!("cannot write {}", dest.display()), e));
        }
        Ok(())
    }

    async fn upload(&self, path: &str) -> Result<Box<dyn Upload>, Failure> {
        let dest = self.file(path)?;
        let (file, tmp) = self.create(&dest).await?;
        Ok(Box::new(LocalUpload {
            file: Some(tokio::io::BufWriter::with_capacity(1 << 20, file)),
            tmp,
            dest,
            size: 0,
        }))
    }

    async fn get(&self, path: &str) -> Result<Option<Bytes>, Failure> {
        let file = self.file(path)?;
        match tokio::fs::read(&file).await {
            Ok(bytes) => Ok(Some(bytes.into())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_failure(&format!("cannot read {}", file.display()), e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, Failure> {
        let start = if prefix.is_empty() {
            self.root.clone()
        } else {
            self.file(prefix)?
        };
        let mut found = Vec::new();
        let mut folders = vec![(start, prefix.to_string())];
        while let Some((folder, relative)) = folders.pop() {
            let mut entries = match tokio::fs::read_dir(&folder).await {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_failure(&format!("cannot list {}", folder.display()), e)),
            };
            while let Some(entry) = entries
                .next_entry()
                .await
                .map_err(|e| io_failure(&format!("cannot list {}", folder.display()), e))?
            {
                let name = entry.file_name().to_string_lossy().into_owned();
                let path = super::join(&relative, &name);
                let kind = entry
                    .file_type()
                    .await
                    .map_err(|e| io_failure(&format!("cannot list {}", folder.display()), e))?;
                if kind.is_dir() {
                    folders.push((entry.path(), path));
                } else if !name.ends_with(TMP_SUFFIX) {
                    // A temporary file is an object not yet written.
                    found.push(path);
                }
            }
        }
        found.sort();
        Ok(found)
    }

    async fn delete(&self, path: &str) -> Result<(), Failure> {
        let file = self.file(path)?;
        match tokio::fs::remove_file(&file).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_failure(&format!("cannot delete {}", file.display()), e)),
        }
        // Prune the folders this leaves empty (never the root; remove_dir refuses a full one).
        let mut dir = file.parent();
        while let Some(current) = dir {
            if current == self.root || !current.starts_with(&self.root) || tokio::fs::remove_dir(current).await.is_err()
            {
                break;
            }
            dir = current.parent();
        }
        Ok(())
    }

    fn url(&self, path: &str) -> String {
        let full = path
            .split('/')
            .filter(|s| !s.is_empty())
            .fold(self.root.clone(), |p, s| p.join(s));
        crate::connectors::cdm::file_url(&full)
    }
}

struct LocalUpload {
    file: Option<tokio::io::BufWriter<tokio::fs::File>>,
    tmp: PathBuf,
    dest: PathBuf,
    size: u64,
}

#[async_trait]
impl Upload for LocalUpload {
    async fn write(&mut self, bytes: Bytes) -> Result<(), Failure> {
        let file = self.file.as_mut().ok_or_else(|| Failure::Permanent {
            message: "the upload is closed".into(),
        })?;
        file.write_all(&bytes)
            .await
            .map_err(|e| io_failure(&format!("cannot write {}", self.tmp.display()), e))?;
        self.size += bytes.len() as u64;
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<u64, Failure> {
        let Some(mut file) = self.file.take() else {
            return Err(Failure::Permanent {
                message: "the upload is closed".into(),
            });
        };
        let published = async {
            file.flush().await?;
            publish(file.into_inner(), &self.tmp, &self.dest).await
        }
        .await;
        if let Err(e) = published {
            let _ = tokio::fs::remove_file(&self.tmp).await;
            return Err(io_failure(&format!("cannot write {}", self.dest.display()), e));
        }
        Ok(self.size)
    }

    async fn abort(mut self: Box<Self>) {
        drop(self.file.take());
        let _ = tokio::fs::remove_file(&self.tmp).await;
    }
}

impl Drop for LocalUpload {
    /// An upload dropped unfinished leaves no temporary file behind.
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn objects_appear_whole_and_leave_no_temporary_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("root with space")).unwrap();
        let store = LocalBytes::new(&dir.path().join("root with space"), 0o600).unwrap();
        let mut upload = store.upload("a/b/c.csv").await.unwrap();
        upload.write(Bytes::from_static(b"x,y\n")).await.unwrap();
        assert_eq!(
            store.list("").await.unwrap(),
            Vec::<String>::new(),
            "nothing before finish"
        );
        upload.write(Bytes::from_static(b"1,2\n")).await.unwrap();
        assert_eq!(upload.finish().await.unwrap(), 8);
        store.put("model.json", Bytes::from_static(b"{}")).await.unwrap();
        assert_eq!(store.list("").await.unwrap(), vec!["a/b/c.csv", "model.json"]);
        assert_eq!(
            store.get("a/b/c.csv").await.unwrap().unwrap(),
            Bytes::from_static(b"x,y\n1,2\n")
        );
        assert!(
            store.url("a/b/c.csv").ends_with("/root%20with%20space/a/b/c.csv"),
            "{}",
            store.url("a/b/c.csv")
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(store.root().join("model.json"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let aborted = store.upload("a/d.csv").await.unwrap();
        aborted.abort().await;
        store.delete("a/b/c.csv").await.unwrap();
        assert_eq!(store.list("").await.unwrap(), vec!["model.json"]);
        assert!(!store.root().join("a").exists(), "emptied folders are pruned");
    }
}
