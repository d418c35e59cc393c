//! Real storage servers on loopback for the storage conformance suite: moto (the S3 API) and
//! Azurite (the Azure Blob API), each started per test on a free port and stopped on drop.
//!
//! The programs are found through `EXPORTD_TEST_MOTO_SERVER` / `EXPORTD_TEST_AZURITE_BLOB`,
//! then `PATH`, then the tools cache `.ci/run` installs into (`~/.cache/exportd/tools`).
//! Missing one is a failure under `CI=true` and a skipped test (with a note) elsewhere.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Azurite's well-known development account.
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Where a tool is, or None (after failing the test under CI).
fn tool(env_var: &str, name: &str, cached: &str) -> Option<PathBuf> {
    // The clients of these tests (reqwest, object_store) use the process's rustls provider.
    exportd::connectors::ensure_tls_provider();
    let found = std::env::var_os(env_var)
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|dir| dir.join(name))
                    .find(|candidate| candidate.is_file())
            })
        })
        .or_else(|| {
            let home = std::env::var_os("HOME")?;
            let candidate = PathBuf::from(home).join(".cache/exportd/tools").join(cached);
            candidate.is_file().then_some(candidate)
        });
    if found.is_none() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{name} is required by the storage tests (set {env_var}, or let .ci/run install it)");
        }
        eprintln!("note: {name} not found ({env_var}); skipping this storage test");
    }
    found
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits (bounded) until something accepts connections on `port`.
async fn wait_for_port(port: u16, what: &str, child: &mut Child) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited before it listened: {status}");
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} did not listen on {port}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A moto S3 server.
pub struct Moto {
    child: Child,
    pub endpoint: String,
}

impl Moto {
    pub async fn start() -> Option<Moto> {
        let program = tool("EXPORTD_TEST_MOTO_SERVER", "moto_server", "moto-venv/bin/moto_server")?;
        let port = free_port();
        let mut child = Command::new(program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server starts");
        wait_for_port(port, "moto_server", &mut child).await;
        Some(Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        })
    }

    /// Creates a bucket (moto takes unsigned requests).
    pub async fn create_bucket(&self, bucket: &str) {
        let response = reqwest::Client::new()
            .put(format!("{}/{bucket}", self.endpoint))
            .send()
            .await
            .expect("moto answers");
        assert!(response.status().is_success(), "create bucket: {}", response.status());
    }

    /// Stops the server (a target that goes away mid-run).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An Azurite Blob server with its data in a temporary folder.
pub struct Azurite {
    child: Child,
    _data: tempfile::TempDir,
    /// `http://127.0.0.1:<port>/devstoreaccount1`
    pub endpoint: String,
}

impl Azurite {
    pub async fn start() -> Option<Azurite> {
        let program = tool(
            "EXPORTD_TEST_AZURITE_BLOB",
            "azurite-blob",
            "node_modules/.bin/azurite-blob",
        )?;
        let data = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut child = Command::new(program)
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string(), "--location"])
            .arg(data.path())
            .args(["--skipApiVersionCheck", "--disableTelemetry", "--silent"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("azurite-blob starts");
        wait_for_port(port, "azurite-blob", &mut child).await;
        Some(Azurite {
            child,
            _data: data,
            endpoint: format!("http://127.0.0.1:{port}/{AZURITE_ACCOUNT}"),
        })
    }

    /// Creates a container: Create Container, signed with the account key (Shared Key; the
    /// emulator's canonical resource names the account twice).
    pub async fn create_container(&self, container: &str) {
        use base64::Engine;
        use hmac::{Hmac, Mac};
        let date = chrono::Utc::now().format("%a, %d %b %Y %H:%M:%S GMT").to_string();
        let version = "2021-08-06";
        let string_to_sign = format!(
            "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n/{AZURITE_ACCOUNT}/{AZURITE_ACCOUNT}/{container}\nrestype:container"
        );
        let key = base64::engine::general_purpose::STANDARD.decode(AZURITE_KEY).unwrap();
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
        mac.update(string_to_sign.as_bytes());
        let signature = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        let response = reqwest::Client::new()
            .put(format!("{}/{container}?restype=container", self.endpoint))
            .header("x-ms-date", date)
            .header("x-ms-version", version)
            .header("authorization", format!("SharedKey {AZURITE_ACCOUNT}:{signature}"))
            .send()
            .await
            .expect("azurite answers");
        assert!(
            response.status().is_success(),
            "create container: {}",
            response.status()
        );
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
