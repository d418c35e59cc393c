//! `local-files`: exports written to a folder of the server's file system.

use async_trait::async_trait;

use super::{Check, Connector, Target, TestReport, local_root};

pub struct LocalFiles;

#[async_trait]
impl Connector for LocalFiles {
    /// The folder must exist or be creatable, and be writable (proved by writing, syncing and
    /// removing a probe file).
    async fn test(&self, target: &Target<'_>) -> TestReport {
        let root = local_root(target.connection, target.exports_root);
        let mut checks = Vec::new();
        let shown = root.display().to_string();
        match tokio::fs::create_dir_all(&root).await {
            Ok(()) => checks.push(Check::pass("folder_exists", format!("folder {shown} exists"))),
            Err(e) => {
                checks.push(Check::fail(
                    "folder_exists",
                    format!("cannot create folder {shown}: {e}"),
                ));
                return TestReport { checks };
            }
        }
        let probe = root.join(format!(".exportd-probe-{}", std::process::id()));
        let write = async {
            tokio::fs::write(&probe, b"exportd connection test").await?;
            let written = tokio::fs::read(&probe).await?;
            tokio::fs::remove_file(&probe).await?;
            Ok::<_, std::io::Error>(written.len())
        };
        match write.await {
            Ok(_) => checks.push(Check::pass(
                "folder_writable",
                format!("wrote and removed a probe file in {shown}"),
            )),
            Err(e) => checks.push(Check::fail("folder_writable", format!("cannot write in {shown}: {e}"))),
        }
        TestReport { checks }
    }
}
