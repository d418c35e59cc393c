//! [`ByteStore`] over SFTP: one SSH connection and SFTP session per store, opened on first use
//! and shared by concurrent operations; the server's host key must equal the pinned one.
//!
//! References followed:
//! - the SSH File Transfer Protocol, draft-ietf-secsh-filexfer-02 (protocol version 3, what
//!   OpenSSH speaks): OPEN/WRITE/CLOSE, READ until `SSH_FX_EOF`, OPENDIR/READDIR, MKDIR, RMDIR,
//!   REMOVE, REALPATH, and RENAME, which in version 3 refuses an existing target;
//! - OpenSSH's `PROTOCOL` file, section "sftp: Extension request posix-rename@openssh.com"
//!   (data: string oldpath, string newpath; rename(2) semantics, so the target is replaced
//!   atomically), "fsync@openssh.com" and "limits@openssh.com" (the largest read and write a
//!   server accepts);
//! - the SSH URI draft, draft-ietf-secsh-scp-sftp-ssh-uri-04, for `sftp://host:port/path`
//!   (and `/~/` for a path relative to the login folder, used only before the root is resolved);
//! - the russh 0.65 client docs (`client::Handler::check_server_key` receives a
//!   `PublicKeyOrCertificate`; its default rejects every key) and russh-sftp 3's
//!   `RawSftpSession` (requests pipelined over one channel, `extended` for extensions).
//!
//! Objects are written to `<name>.exportd-tmp` in their folder and renamed into place with
//! `posix-rename@openssh.com`; a server without it gets REMOVE then RENAME (a reader may then
//! briefly see no object, never a partial one). Folders are created as needed (mkdir -p), the
//! store's root folder too, and deletion prunes the folders it empties (never the root).
//!
//! Secrets (the password, the private key and its passphrase) appear in no message.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::{FuturesOrdered, FuturesUnordered};
use russh::client;
use russh::keys::ssh_key::{HashAlg, PrivateKey, PublicKey};
use russh::keys::{Algorithm, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh_sftp::client::RawSftpSession;
use russh_sftp::client::error::Error as SftpError;
use russh_sftp::client::rawsession::Limits;
use russh_sftp::protocol::{FileAttributes, OpenFlags, Packet, StatusCode};

use super::object::redact;
use super::{ByteStore, Upload, check_path, encode_url_path};
use crate::connectors::Check;
use crate::connectors::retry::{Attempts, Failure, RetryPolicy};

/// The connection type whose retries this store counts.
const CONNECTION_TYPE: &str = "sftp";

/// The port when the connection names none.
pub const DEFAULT_PORT: u16 = 22;
/// Temporary files end with this; nothing else the store writes does.
const TMP_SUFFIX: &str = ".exportd-tmp";
/// DNS, TCP, SSH handshake, authentication and SFTP start, all together.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// One SFTP request (a write of up to 255 KiB among those in flight, a rename, …).
const REQUEST_TIMEOUT_SECS: u64 = 60;
/// Reads and writes without `limits@openssh.com`: every server takes 32 KiB (draft §3).
const DEFAULT_IO_BYTES: usize = 32 * 1024;
/// The largest read or write sent (OpenSSH's limit: 256 KiB packets less headers).
const MAX_IO_BYTES: usize = 255 * 1024;
/// Writes (and reads) of one object in flight at once: bounded memory, few round trips.
const REQUESTS_IN_FLIGHT: usize = 16;
const POSIX_RENAME: &str = "posix-rename@openssh.com";
const FSYNC: &str = "fsync@openssh.com";
const LIMITS: &str = "limits@openssh.com";

/// What an `sftp` connection holds: its configuration and one of its secrets.
#[derive(Clone)]
pub struct SftpConfig {
    pub host: String,
    /// [`DEFAULT_PORT`] unless configured.
    pub port: u16,
    pub username: String,
    /// The store's root on the server; relative to the login folder unless absolute (a leading
    /// `~/` means the same); empty for the login folder itself.
    pub folder: String,
    /// The pinned server key, an OpenSSH public key line (`ssh-ed25519 AAAA… comment`; a
    /// `known_hosts` / `ssh-keyscan` line with the host first is accepted too).
    pub host_key: String,
    pub credentials: SftpCredentials,
}

/// How the store logs in (secrets: never shown, not even by `Debug`).
#[derive(Clone)]
pub enum SftpCredentials {
    Password(String),
    /// An OpenSSH private key (`-----BEGIN OPENSSH PRIVATE KEY-----`), with its passphrase if
    /// it is encrypted.
    PrivateKey {
        key: String,
        passphrase: Option<String>,
    },
}

impl fmt::Debug for SftpCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SftpCredentials::Password(_) => f.write_str("Password(<redacted>)"),
            SftpCredentials::PrivateKey { .. } => f.write_str("PrivateKey(<redacted>)"),
        }
    }
}

impl fmt::Debug for SftpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SftpConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("folder", &self.folder)
            .field("host_key", &self.host_key)
            .field("credentials", &self.credentials)
            .finish()
    }
}

/// A configuration value that cannot work, and why. `key` is the configuration or secret
/// key at fault (`host`, `port`, `username`, `folder`, `host_key`, `password`, `private_key`);
/// the message never contains a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: &'static str,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Checks a configuration without reaching the server (for CreateConnection/UpdateConnection):
/// names, the port, the pinned host key and the private key must parse and be usable.
pub fn check_config(config: &SftpConfig) -> Result<(), ConfigError> {
    Parsed::new(config).map(|_| ())
}

/// The keys of a configuration, parsed.
struct Parsed {
    host_key: PublicKey,
    auth: Auth,
}

enum Auth {
    Password(String),
    Key(Arc<PrivateKey>),
}

fn config_error(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key,
        message: message.into(),
    }
}

/// RSA is left out of this build (russh's `rsa` feature pins a `pkcs1` that conflicts with
/// another dependency): ed25519 and ECDSA keys work.
fn supported(algorithm: &Algorithm) -> bool {
    !algorithm.clone().is_rsa() && !matches!(algorithm, Algorithm::Dsa | Algorithm::Other(_))
}

impl Parsed {
    fn new(config: &SftpConfig) -> Result<Parsed, ConfigError> {
        let host = config.host.trim();
        if host.is_empty() {
            return Err(config_error("host", "is required"));
        }
        if host
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "/@?#".contains(c))
        {
            return Err(config_error("host", "must be a host name or an IP address"));
        }
        if config.port == 0 {
            return Err(config_error("port", "must be between 1 and 65535"));
        }
        if config.username.is_empty() || config.username.chars().any(|c| c.is_control()) {
            return Err(config_error(
                "username",
                "is required and may not contain control characters",
            ));
        }
        if config.folder.contains(['\0', '\n', '\r']) {
            return Err(config_error("folder", "may not contain control characters"));
        }
        let host_key = parse_host_key(&config.host_key)?;
        let auth = match &config.credentials {
            SftpCredentials::Password(password) => {
                if password.is_empty() {
                    return Err(config_error("password", "is empty"));
                }
                Auth::Password(password.clone())
            }
            SftpCredentials::PrivateKey { key, passphrase } => {
                Auth::Key(Arc::new(parse_private_key(key, passphrase.as_deref())?))
            }
        };
        Ok(Parsed { host_key, auth })
    }
}

fn parse_host_key(line: &str) -> Result<PublicKey, ConfigError> {
    let line = line.trim();
    if line.is_empty() {
        return Err(config_error(
            "host_key",
            "is required: the server's public key line, e.g. from `ssh-keyscan -t ed25519 HOST`",
        ));
    }
    // A known_hosts / ssh-keyscan line starts with the host: try without it too.
    let key = PublicKey::from_openssh(line).or_else(|first| match line.split_once(char::is_whitespace) {
        Some((_, rest)) => PublicKey::from_openssh(rest.trim()).map_err(|_| first),
        None => Err(first),
    });
    let key = key.map_err(|e| {
        config_error(
            "host_key",
            format!("is not an OpenSSH public key line (`ssh-ed25519 AAAA… comment`): {e}"),
        )
    })?;
    if !supported(&key.algorithm()) {
        return Err(config_error(
            "host_key",
            format!(
                "{} host keys are not supported; pin the server's ed25519 or ECDSA key \
                 (`ssh-keyscan -t ed25519 HOST`)",
                key.algorithm()
            ),
        ));
    }
    Ok(key)
}

fn parse_private_key(text: &str, passphrase: Option<&str>) -> Result<PrivateKey, ConfigError> {
    let text = text.trim();
    if !text.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----") {
        return Err(config_error(
            "private_key",
            "is not an OpenSSH private key (it must start with `-----BEGIN OPENSSH PRIVATE KEY-----`; \
             convert other formats with `ssh-keygen -p -f FILE`)",
        ));
    }
    // ssh-key's messages describe the encoding, never the key's bytes.
    let key = PrivateKey::from_openssh(text)
        .map_err(|e| config_error("private_key", format!("cannot be read as an OpenSSH private key: {e}")))?;
    let key = if key.is_encrypted() {
        match passphrase {
            None | Some("") => {
                return Err(config_error(
                    "private_key",
                    "is encrypted with a passphrase; give a key without one (`ssh-keygen -p -N '' -f FILE`)",
                ));
            }
            Some(passphrase) => key
                .decrypt(passphrase)
                .map_err(|_| config_error("private_key", "cannot be decrypted with the passphrase given"))?,
        }
    } else {
        key
    };
    if !supported(&key.algorithm()) {
        return Err(config_error(
            "private_key",
            format!(
                "{} keys are not supported; use an ed25519 or ECDSA key",
                key.algorithm()
            ),
        ));
    }
    Ok(key)
}

/// `SHA256:…`, as `ssh-keygen -l` prints it.
fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// The strings a message must never contain.
fn secret_values(credentials: &SftpCredentials) -> Vec<String> {
    let mut secrets = Vec::new();
    match credentials {
        SftpCredentials::Password(password) => secrets.push(password.clone()),
        SftpCredentials::PrivateKey { key, passphrase } => {
            secrets.push(key.trim().to_string());
            secrets.extend(
                key.lines()
                    .map(str::trim)
                    .filter(|l| l.len() >= 8 && !l.starts_with("-----"))
                    .map(str::to_string),
            );
            secrets.extend(passphrase.clone());
        }
    }
    secrets.retain(|s| s.len() >= 4);
    secrets
}

/// One SFTP folder on one server.
pub struct SftpBytes {
    inner: Arc<Inner>,
}

struct Inner {
    host: String,
    port: u16,
    username: String,
    folder: String,
    host_key: PublicKey,
    auth: Auth,
    secrets: Vec<String>,
    /// Uses REMOVE + RENAME even where `posix-rename@openssh.com` exists (tests).
    no_posix_rename: AtomicBool,
    /// Bounds reaching the server: DNS, TCP, handshake, authentication and SFTP start.
    connect_timeout: Duration,
    /// The open connection, if any; replaced when it dies.
    conn: Mutex<Option<Arc<Conn>>>,
    /// One connection attempt at a time.
    connecting: tokio::sync::Mutex<()>,
    /// The absolute root on the server, once a connection resolved it.
    root: OnceLock<String>,
}

impl SftpBytes {
    /// Parses the configuration (a bad one fails naming its key) but connects only when first
    /// used.
    pub fn new(config: &SftpConfig) -> Result<SftpBytes, Failure> {
        let parsed = Parsed::new(config).map_err(|e| Failure::Permanent {
            message: format!("sftp connection {e}"),
        })?;
        let folder = config.folder.trim().to_string();
        let inner = Inner {
            host: config.host.trim().to_string(),
            port: config.port,
            username: config.username.clone(),
            root: OnceLock::new(),
            host_key: parsed.host_key,
            auth: parsed.auth,
            secrets: secret_values(&config.credentials),
            no_posix_rename: AtomicBool::new(false),
            connect_timeout: CONNECT_TIMEOUT,
            conn: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            folder,
        };
        if let Some(absolute) = absolute_folder(&inner.folder) {
            let _ = inner.root.set(absolute);
        }
        Ok(SftpBytes { inner: Arc::new(inner) })
    }

    /// Connects (if not yet connected) and returns the absolute root folder on the server, as
    /// URLs show it (an absolute folder as configured, a relative one as the server resolved
    /// it). Call it before [`ByteStore::url`] when the folder is relative: until a connection
    /// has resolved it, such URLs use the `/~/folder` form.
    pub async fn root(&self) -> Result<String, Failure> {
        let conn = self.inner.conn().await?;
        Ok(self.inner.root.get().cloned().unwrap_or_else(|| conn.root.clone()))
    }

    /// Bounds each connection attempt (DNS to SFTP start; default 30 s). Call before first use.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> SftpBytes {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.connect_timeout = timeout;
        }
        self
    }

    /// Tests only: behave as if the server lacked `posix-rename@openssh.com`.
    #[doc(hidden)]
    pub fn without_posix_rename(self) -> SftpBytes {
        self.inner.no_posix_rename.store(true, Ordering::Relaxed);
        self
    }

    fn url_root(&self) -> String {
        match self.inner.root.get() {
            Some(root) => root.clone(),
            None => {
                let folder = normalize(&format!("/{}", strip_home(&self.inner.folder)));
                if folder == "/" {
                    "/~".to_string()
                } else {
                    format!("/~{folder}")
                }
            }
        }
    }
}

/// An absolute folder, normalized; `None` for a relative one (it needs the server).
fn absolute_folder(folder: &str) -> Option<String> {
    folder.starts_with('/').then(|| normalize(folder))
}

/// A folder relative to the login folder, without a leading `~/`.
fn strip_home(folder: &str) -> &str {
    match folder.strip_prefix('~') {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => rest.trim_start_matches('/'),
        _ => folder,
    }
}

/// `/a/./b//c/../d/` → `/a/b/d` (no trailing slash; `/` stays `/`).
fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    format!("/{}", parts.join("/"))
}

/// `root/path` for an absolute root.
fn under(root: &str, path: &str) -> String {
    match (root == "/", path.is_empty()) {
        (_, true) => root.to_string(),
        (true, false) => format!("/{path}"),
        (false, false) => format!("{root}/{path}"),
    }
}

/// The parent folder of an absolute path (`None` for `/`).
fn parent(path: &str) -> Option<&str> {
    if path == "/" {
        return None;
    }
    match path.rfind('/') {
        Some(0) => Some("/"),
        Some(i) => Some(&path[..i]),
        None => None,
    }
}

/// `host` as a URL writes it (IPv6 literals in brackets).
fn url_host(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// The open SSH connection and its SFTP session.
struct Conn {
    sftp: RawSftpSession,
    ssh: client::Handle<Pinned>,
    root: String,
    posix_rename: bool,
    fsync: bool,
    write_bytes: usize,
    read_bytes: usize,
    /// Set when a request failed in a way that says the connection is gone.
    dead: AtomicBool,
}

impl Conn {
    fn alive(&self) -> bool {
        !self.dead.load(Ordering::Relaxed) && !self.ssh.is_closed()
    }

    fn path(&self, path: &str) -> String {
        under(&self.root, path)
    }
}

impl Inner {
    fn endpoint(&self) -> String {
        format!("sftp://{}:{}", url_host(&self.host), self.port)
    }

    fn url_of(&self, absolute: &str) -> String {
        format!("{}{}", self.endpoint(), encode_url_path(absolute))
    }

    fn cached(&self) -> Option<Arc<Conn>> {
        let conn = self.conn.lock().expect("sftp connection lock").clone();
        conn.filter(|c| c.alive())
    }

    /// The shared connection, opened (again) when there is none or it died.
    async fn conn(&self) -> Result<Arc<Conn>, Failure> {
        if let Some(conn) = self.cached() {
            return Ok(conn);
        }
        let _gate = self.connecting.lock().await;
        if let Some(conn) = self.cached() {
            return Ok(conn);
        }
        let mut passed = Vec::new();
        let conn = match tokio::time::timeout(self.connect_timeout, connect(self, &mut passed)).await {
            Ok(Ok(conn)) => Arc::new(conn),
            Ok(Err(failure)) => return Err(failure),
            Err(_) => {
                return Err(Failure::Transient {
                    message: format!(
                        "cannot connect to {} ({}): timed out after {:?}",
                        self.endpoint(),
                        step_after(&passed),
                        self.connect_timeout
                    ),
                    retry_after: None,
                });
            }
        };
        let _ = self.root.set(conn.root.clone());
        *self.conn.lock().expect("sftp connection lock") = Some(conn.clone());
        Ok(conn)
    }

    /// A failed SFTP request as a [`Failure`]: `what` says what was being done. A lost
    /// connection is transient (and the connection is dropped, so the next call reconnects).
    fn failure(&self, conn: &Conn, what: &str, error: SftpError) -> Failure {
        let message = redact(&format!("{what}: {}", describe(&error)), &self.secrets);
        if transient(&error) {
            conn.dead.store(true, Ordering::Relaxed);
            Failure::Transient {
                message,
                retry_after: None,
            }
        } else {
            Failure::Permanent { message }
        }
    }

    /// Creates `dir` and its missing parents (a folder made concurrently is fine).
    async fn mkdir_p(&self, conn: &Conn, dir: &str) -> Result<(), Failure> {
        let mut missing = Vec::new();
        let mut current = dir;
        loop {
            match conn.sftp.stat(current).await {
                Ok(attrs) if is_dir(&attrs.attrs) => break,
                Ok(_) => {
                    return Err(Failure::Permanent {
                        message: format!("cannot create folder {}: {current} is not a folder", self.url_of(dir)),
                    });
                }
                Err(e) if status_code(&e) == Some(StatusCode::NoSuchFile) => {
                    missing.push(current);
                    match parent(current) {
                        Some(up) => current = up,
                        None => break,
                    }
                }
                Err(e) => return Err(self.failure(conn, &format!("cannot create folder {}", self.url_of(dir)), e)),
            }
        }
        for folder in missing.into_iter().rev() {
            if let Err(e) = conn.sftp.mkdir(folder, FileAttributes::empty()).await {
                match conn.sftp.stat(folder).await {
                    Ok(attrs) if is_dir(&attrs.attrs) => {}
                    _ => {
                        return Err(self.failure(conn, &format!("cannot create folder {}", self.url_of(folder)), e));
                    }
                }
            }
        }
        Ok(())
    }

    /// Renames `tmp` to `dest`, replacing what is there.
    async fn replace(&self, conn: &Conn, tmp: &str, dest: &str) -> Result<(), Failure> {
        let what = || format!("cannot rename into place {}", self.url_of(dest));
        if conn.posix_rename && !self.no_posix_rename.load(Ordering::Relaxed) {
            let mut data = Vec::with_capacity(8 + tmp.len() + dest.len());
            for s in [tmp, dest] {
                data.extend_from_slice(&(s.len() as u32).to_be_bytes());
                data.extend_from_slice(s.as_bytes());
            }
            match conn.sftp.extended(POSIX_RENAME, data).await {
                Ok(Packet::Status(status)) if status.status_code == StatusCode::Ok => return Ok(()),
                Ok(Packet::Status(status)) if status.status_code == StatusCode::OpUnsupported => {}
                Ok(Packet::Status(status)) => return Err(self.failure(conn, &what(), SftpError::Status(status))),
                Ok(_) => return Err(self.failure(conn, &what(), SftpError::UnexpectedPacket)),
                Err(e) if status_code(&e) == Some(StatusCode::OpUnsupported) => {}
                Err(e) => return Err(self.failure(conn, &what(), e)),
            }
        }
        // SFTP v3 RENAME refuses an existing target: remove it first.
        match conn.sftp.remove(dest).await {
            Ok(_) => {}
            Err(e) if status_code(&e) == Some(StatusCode::NoSuchFile) => {}
            Err(e) => return Err(self.failure(conn, &what(), e)),
        }
        conn.sftp
            .rename(tmp, dest)
            .await
            .map(|_| ())
            .map_err(|e| self.failure(conn, &what(), e))
    }

    /// Opens `<dest>.exportd-tmp` for writing, creating the folders above it.
    async fn create(&self, conn: &Conn, dest: &str) -> Result<(String, String), Failure> {
        if let Some(dir) = parent(dest) {
            self.mkdir_p(conn, dir).await?;
        }
        let tmp = format!("{dest}{TMP_SUFFIX}");
        let handle = conn
            .sftp
            .open(
                tmp.as_str(),
                OpenFlags::CREATE | OpenFlags::TRUNCATE | OpenFlags::WRITE,
                FileAttributes::empty(),
            )
            .await
            .map_err(|e| self.failure(conn, &format!("cannot create {}", self.url_of(&tmp)), e))?
            .handle;
        Ok((tmp, handle))
    }
}

/// Writes `bytes` at `offset` in pieces the server accepts, several in flight.
async fn write_at(conn: &Conn, handle: &str, offset: u64, bytes: &[u8]) -> Result<(), SftpError> {
    let piece = conn.write_bytes;
    let mut in_flight = FuturesUnordered::new();
    for (i, chunk) in bytes.chunks(piece).enumerate() {
        if in_flight.len() >= REQUESTS_IN_FLIGHT
            && let Some(written) = in_flight.next().await
        {
            written?;
        }
        let at = offset + (i * piece) as u64;
        in_flight.push(conn.sftp.write(handle.to_string(), at, chunk.to_vec()));
    }
    while let Some(written) = in_flight.next().await {
        written?;
    }
    Ok(())
}

/// Flushes (where the server can) and closes a written file.
async fn close_written(conn: &Conn, handle: &str) -> Result<(), SftpError> {
    if conn.fsync {
        let mut data = Vec::with_capacity(4 + handle.len());
        data.extend_from_slice(&(handle.len() as u32).to_be_bytes());
        data.extend_from_slice(handle.as_bytes());
        match conn.sftp.extended(FSYNC, data).await? {
            Packet::Status(status) if matches!(status.status_code, StatusCode::Ok | StatusCode::OpUnsupported) => {}
            Packet::Status(status) => {
                let _ = conn.sftp.close(handle).await;
                return Err(SftpError::Status(status));
            }
            _ => {}
        }
    }
    conn.sftp.close(handle).await.map(|_| ())
}

fn status_code(error: &SftpError) -> Option<StatusCode> {
    match error {
        SftpError::Status(status) => Some(status.status_code),
        _ => None,
    }
}

/// The connection is gone (or the server did not answer in time): worth another try.
fn transient(error: &SftpError) -> bool {
    match error {
        SftpError::Status(status) => {
            matches!(
                status.status_code,
                StatusCode::NoConnection | StatusCode::ConnectionLost
            )
        }
        SftpError::IO(_) | SftpError::Timeout => true,
        // "session closed", a dropped reply channel: the channel or connection went away.
        SftpError::UnexpectedBehavior(_) => true,
        SftpError::Limited(_) | SftpError::UnexpectedPacket => false,
    }
}

fn describe(error: &SftpError) -> String {
    match error {
        SftpError::Status(status)
            if !status.error_message.is_empty()
                && !status
                    .error_message
                    .eq_ignore_ascii_case(&status.status_code.to_string()) =>
        {
            format!("{} ({})", status.error_message, status.status_code)
        }
        SftpError::Status(status) => status.status_code.to_string(),
        SftpError::Timeout => format!("the server did not answer within {REQUEST_TIMEOUT_SECS} s"),
        SftpError::UnexpectedBehavior(m) => format!("the SFTP session ended ({m})"),
        e => e.to_string(),
    }
}

/// The file type bits of a mode.
const S_IFMT: u32 = 0o170000;
const S_IFDIR: u32 = 0o040000;

fn is_dir(attrs: &FileAttributes) -> bool {
    attrs.permissions.is_some_and(|p| p & S_IFMT == S_IFDIR)
}

/// One attempt of each request: `storage::retrying` tries them again (a lost connection is
/// transient and reconnects on the next attempt).
#[async_trait]
impl ByteStore for SftpBytes {
    async fn put(&self, path: &str, bytes: Bytes) -> Result<(), Failure> {
        check_path(path)?;
        let inner = &self.inner;
        let conn = inner.conn().await?;
        let dest = conn.path(path);
        let (tmp, handle) = inner.create(&conn, &dest).await?;
        let written = async {
            write_at(&conn, &handle, 0, &bytes).await?;
            close_written(&conn, &handle).await
        }
        .await;
        if let Err(e) = written {
            let failure = inner.failure(&conn, &format!("cannot write {}", inner.url_of(&dest)), e);
            let _ = conn.sftp.close(handle.as_str()).await;
            let _ = conn.sftp.remove(tmp.as_str()).await;
            return Err(failure);
        }
        if let Err(failure) = inner.replace(&conn, &tmp, &dest).await {
            let _ = conn.sftp.remove(tmp.as_str()).await;
            return Err(failure);
        }
        Ok(())
    }

    async fn upload(&self, path: &str) -> Result<Box<dyn Upload>, Failure> {
        check_path(path)?;
        let conn = self.inner.conn().await?;
        let dest = conn.path(path);
        let (tmp, handle) = self.inner.create(&conn, &dest).await?;
        Ok(Box::new(SftpUpload {
            inner: self.inner.clone(),
            open: Some(OpenFile { conn, handle, tmp }),
            lost: false,
            in_flight: None,
            dest,
            size: 0,
        }))
    }

    async fn get(&self, path: &str) -> Result<Option<Bytes>, Failure> {
        check_path(path)?;
        let inner = &self.inner;
        let conn = inner.conn().await?;
        let file = conn.path(path);
        let what = || format!("cannot read {}", inner.url_of(&file));
        let handle = match conn
            .sftp
            .open(file.as_str(), OpenFlags::READ, FileAttributes::empty())
            .await
        {
            Ok(handle) => handle.handle,
            Err(e) if status_code(&e) == Some(StatusCode::NoSuchFile) => return Ok(None),
            Err(e) => return Err(inner.failure(&conn, &what(), e)),
        };
        let read = read_all(&conn, &handle).await;
        let _ = conn.sftp.close(handle.as_str()).await;
        read.map(|bytes| Some(Bytes::from(bytes)))
            .map_err(|e| inner.failure(&conn, &what(), e))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, Failure> {
        if !prefix.is_empty() {
            check_path(prefix.trim_end_matches('/'))?;
        }
        let prefix = prefix.trim_end_matches('/');
        let inner = &self.inner;
        let conn = inner.conn().await?;
        let mut found = Vec::new();
        let mut folders = vec![(conn.path(prefix), prefix.to_string())];
        while let Some((folder, relative)) = folders.pop() {
            let what = || format!("cannot list {}", inner.url_of(&folder));
            let handle = match conn.sftp.opendir(folder.as_str()).await {
                Ok(handle) => handle.handle,
                Err(e) if status_code(&e) == Some(StatusCode::NoSuchFile) => continue,
                Err(e) => return Err(inner.failure(&conn, &what(), e)),
            };
            let mut entries = Vec::new();
            let read = loop {
                match conn.sftp.readdir(handle.as_str()).await {
                    Ok(name) => entries.extend(name.files),
                    Err(e) if status_code(&e) == Some(StatusCode::Eof) => break Ok(()),
                    Err(e) => break Err(e),
                }
            };
            let _ = conn.sftp.close(handle.as_str()).await;
            read.map_err(|e| inner.failure(&conn, &what(), e))?;
            for entry in entries {
                let name = entry.filename;
                if name == "." || name == ".." {
                    continue;
                }
                let path = super::join(&relative, &name);
                let folder_entry = match entry.attrs.permissions {
                    Some(_) => is_dir(&entry.attrs),
                    None => entry.longname.starts_with('d'),
                };
                if folder_entry {
                    folders.push((under(&folder, &name), path));
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
        check_path(path)?;
        let inner = &self.inner;
        let conn = inner.conn().await?;
        let file = conn.path(path);
        match conn.sftp.remove(file.as_str()).await {
            Ok(_) => {}
            Err(e) if status_code(&e) == Some(StatusCode::NoSuchFile) => {}
            Err(e) => return Err(inner.failure(&conn, &format!("cannot delete {}", inner.url_of(&file)), e)),
        }
        // Prune the folders this leaves empty (never the root; RMDIR refuses a full one).
        let mut dir = parent(&file);
        while let Some(current) = dir {
            if current == conn.root || !current.starts_with(&conn.root) || conn.sftp.rmdir(current).await.is_err() {
                break;
            }
            dir = parent(current);
        }
        Ok(())
    }

    fn url(&self, path: &str) -> String {
        self.inner.url_of(&under(&self.url_root(), path))
    }
}

/// Reads a whole file, several reads in flight; a short read restarts from where it ended.
async fn read_all(conn: &Conn, handle: &str) -> Result<Vec<u8>, SftpError> {
    let piece = conn.read_bytes;
    let mut out = Vec::new();
    let mut offset = 0u64;
    'window: loop {
        let mut reads = FuturesOrdered::new();
        for i in 0..REQUESTS_IN_FLIGHT {
            let at = offset + (i * piece) as u64;
            reads.push_back(conn.sftp.read(handle.to_string(), at, piece as u32));
        }
        while let Some(read) = reads.next().await {
            match read {
                Ok(data) if data.data.is_empty() => break 'window,
                Ok(data) => {
                    let n = data.data.len();
                    out.extend_from_slice(&data.data);
                    offset += n as u64;
                    if n < piece {
                        // The reads after this one started past a gap: read on from here.
                        continue 'window;
                    }
                }
                Err(e) if status_code(&e) == Some(StatusCode::Eof) => break 'window,
                Err(e) => return Err(e),
            }
        }
    }
    Ok(out)
}

struct OpenFile {
    conn: Arc<Conn>,
    handle: String,
    tmp: String,
}

/// A streamed file: written to `<dest>.exportd-tmp`, renamed into place by `finish`. A write,
/// the close or the rename that fails transiently is tried again on a new connection: the
/// temporary file is opened again (without truncating) and the bytes go to the same offset,
/// since SFTP writes name their offset.
struct SftpUpload {
    inner: Arc<Inner>,
    /// `None` once finished or aborted.
    open: Option<OpenFile>,
    /// The connection under `open` was lost: reopen the temporary file before the next request.
    lost: bool,
    /// The last chunk handed over, until the server has acknowledged it.
    in_flight: Option<InFlight>,
    dest: String,
    /// Bytes handed over so far.
    size: u64,
}

/// A chunk being written: what to send again should its connection be lost.
struct InFlight {
    offset: u64,
    bytes: Bytes,
    conn: Arc<Conn>,
    task: tokio::task::JoinHandle<Result<(), SftpError>>,
}

fn closed() -> Failure {
    Failure::Permanent {
        message: "the upload is closed".into(),
    }
}

impl SftpUpload {
    /// The connection and handle of the open file, opened again on a new connection after a
    /// lost one (a failure to do so leaves it lost).
    async fn file(&mut self) -> Result<(Arc<Conn>, String), Failure> {
        let open = self.open.as_mut().ok_or_else(closed)?;
        if self.lost || !open.conn.alive() {
            self.lost = true;
            let conn = self.inner.conn().await?;
            let reopened = conn
                .sftp
                .open(open.tmp.as_str(), OpenFlags::WRITE, FileAttributes::empty())
                .await;
            let handle = reopened
                .map_err(|e| {
                    self.inner
                        .failure(&conn, &format!("cannot reopen {}", self.inner.url_of(&open.tmp)), e)
                })?
                .handle;
            open.conn = conn;
            open.handle = handle;
            self.lost = false;
        }
        Ok((open.conn.clone(), open.handle.clone()))
    }

    fn tmp(&self) -> String {
        self.open.as_ref().map(|open| open.tmp.clone()).unwrap_or_default()
    }

    /// Notes a failure: a transient one means the connection is gone.
    fn failed(&mut self, failure: Failure) -> Failure {
        if matches!(failure, Failure::Transient { .. }) {
            self.lost = true;
        }
        failure
    }

    async fn write_once(&mut self, offset: u64, bytes: &Bytes) -> Result<(), Failure> {
        let (conn, handle) = self.file().await?;
        if let Err(e) = write_at(&conn, &handle, offset, bytes).await {
            let failure = self
                .inner
                .failure(&conn, &format!("cannot write {}", self.inner.url_of(&self.tmp())), e);
            return Err(self.failed(failure));
        }
        Ok(())
    }

    /// Sends `bytes` at `offset` and waits for the server's answers, retried (reopening the
    /// file after a lost connection).
    async fn send(&mut self, offset: u64, bytes: &Bytes) -> Result<(), Failure> {
        let mut attempts = Attempts::new(RetryPolicy::default()).of_target(CONNECTION_TYPE);
        loop {
            match self.write_once(offset, bytes).await {
                Ok(()) => return Ok(()),
                Err(failure) => match attempts.next(&failure) {
                    Some(pause) => tokio::time::sleep(pause).await,
                    None => return Err(failure),
                },
            }
        }
    }

    /// Waits for the chunk in flight; one that failed on a lost connection is sent again.
    async fn settle(&mut self) -> Result<(), Failure> {
        let Some(flight) = self.in_flight.take() else {
            return Ok(());
        };
        match flight.task.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                let what = format!("cannot write {}", self.inner.url_of(&self.tmp()));
                match self.failed(self.inner.failure(&flight.conn, &what, e)) {
                    Failure::Transient { .. } => self.send(flight.offset, &flight.bytes).await,
                    failure => Err(failure),
                }
            }
            Err(e) => Err(Failure::Permanent {
                message: format!("a write to {} was interrupted: {e}", self.inner.url_of(&self.dest)),
            }),
        }
    }

    /// Closes (with fsync where the server can) and renames into place. A rename whose answer
    /// was lost may have happened: a missing temporary file with the destination at the
    /// written size means it did.
    async fn finish_once(&mut self) -> Result<(), Failure> {
        let was_lost = self.lost;
        let (conn, handle) = self.file().await?;
        if was_lost && let Some(done) = self.renamed_already(&conn).await {
            return done;
        }
        if let Err(e) = close_written(&conn, &handle).await {
            let failure = self
                .inner
                .failure(&conn, &format!("cannot write {}", self.inner.url_of(&self.dest)), e);
            return Err(self.failed(failure));
        }
        if let Err(failure) = self.inner.replace(&conn, &self.tmp(), &self.dest).await {
            return Err(self.failed(failure));
        }
        Ok(())
    }

    /// After a lost connection: `Some(Ok)` when the file is already in place.
    async fn renamed_already(&self, conn: &Conn) -> Option<Result<(), Failure>> {
        let tmp = self.tmp();
        let tmp_missing =
            matches!(conn.sftp.stat(tmp.as_str()).await, Err(e) if status_code(&e) == Some(StatusCode::NoSuchFile));
        if !tmp_missing {
            return None;
        }
        match conn.sftp.stat(self.dest.as_str()).await {
            Ok(attrs) if attrs.attrs.size == Some(self.size) => Some(Ok(())),
            _ => Some(Err(Failure::Permanent {
                message: format!("the temporary file of {} went missing", self.inner.url_of(&self.dest)),
            })),
        }
    }
}

#[async_trait]
impl Upload for SftpUpload {
    /// Hands a chunk to the server and returns once the chunk before it is acknowledged, so
    /// that the next one is encoded while this one travels (one chunk in flight, within it
    /// [`REQUESTS_IN_FLIGHT`] requests).
    async fn write(&mut self, bytes: Bytes) -> Result<(), Failure> {
        self.settle().await?;
        let offset = self.size;
        self.size += bytes.len() as u64;
        let (conn, handle) = match self.file().await {
            Ok(file) => file,
            // Not reachable now: send it the slow way, with its retries.
            Err(_) => return self.send(offset, &bytes).await,
        };
        let task = tokio::spawn({
            let (conn, bytes) = (conn.clone(), bytes.clone());
            async move { write_at(&conn, &handle, offset, &bytes).await }
        });
        self.in_flight = Some(InFlight {
            offset,
            bytes,
            conn,
            task,
        });
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<u64, Failure> {
        self.settle().await?;
        let mut attempts = Attempts::new(RetryPolicy::default()).of_target(CONNECTION_TYPE);
        loop {
            match self.finish_once().await {
                Ok(()) => {
                    self.open = None;
                    return Ok(self.size);
                }
                Err(failure) => match attempts.next(&failure) {
                    Some(pause) => tokio::time::sleep(pause).await,
                    // Dropping `self` removes the temporary file.
                    None => return Err(failure),
                },
            }
        }
    }

    async fn abort(mut self: Box<Self>) {
        if let Some(flight) = self.in_flight.take() {
            flight.task.abort();
        }
        if let Some(open) = self.open.take() {
            discard(open).await;
        }
    }
}

async fn discard(open: OpenFile) {
    let _ = open.conn.sftp.close(open.handle.as_str()).await;
    if let Err(e) = open.conn.sftp.remove(open.tmp.as_str()).await
        && status_code(&e) != Some(StatusCode::NoSuchFile)
    {
        tracing::warn!(file = %open.tmp, error = %describe(&e), "cannot remove a temporary sftp file");
    }
}

impl Drop for SftpUpload {
    /// An upload dropped unfinished leaves no temporary file behind (where a runtime can
    /// still send the requests).
    fn drop(&mut self) {
        if let Some(flight) = self.in_flight.take() {
            flight.task.abort();
        }
        if let Some(open) = self.open.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(discard(open));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Connecting, step by step.

/// The client side of the handshake: accepts exactly the pinned key, and remembers the key
/// the server showed.
struct Pinned {
    expected: PublicKey,
    seen: Arc<Mutex<Option<PublicKey>>>,
}

impl client::Handler for Pinned {
    type Error = russh::Error;

    async fn check_server_key(&mut self, key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        let shown = key.public_key();
        let matches = shown.key_data() == self.expected.key_data();
        *self.seen.lock().expect("host key lock") = Some(shown);
        Ok(matches)
    }
}

/// A step that failed: its check name and the failure.
struct StepFailure {
    step: &'static str,
    failure: Failure,
}

fn permanent(step: &'static str, message: impl Into<String>) -> StepFailure {
    StepFailure {
        step,
        failure: Failure::Permanent {
            message: message.into(),
        },
    }
}

fn transient_step(step: &'static str, message: impl Into<String>) -> StepFailure {
    StepFailure {
        step,
        failure: Failure::Transient {
            message: message.into(),
            retry_after: None,
        },
    }
}

fn io_step(step: &'static str, context: &str, error: &std::io::Error) -> StepFailure {
    use std::io::ErrorKind::*;
    let message = format!("{context}: {error}");
    match error.kind() {
        ConnectionRefused | ConnectionReset | ConnectionAborted | BrokenPipe | TimedOut | UnexpectedEof
        | NotConnected | Interrupted | WouldBlock | HostUnreachable | NetworkUnreachable | NetworkDown => {
            transient_step(step, message)
        }
        _ => permanent(step, message),
    }
}

fn ssh_step(step: &'static str, context: &str, error: russh::Error) -> StepFailure {
    use russh::Error as E;
    match error {
        E::IO(e) => io_step(step, context, &e),
        E::HUP | E::Disconnect | E::ConnectionTimeout | E::KeepaliveTimeout | E::InactivityTimeout | E::SendError => {
            transient_step(step, format!("{context}: {error}"))
        }
        e => permanent(step, format!("{context}: {e}")),
    }
}

/// The host key algorithms offered: the pinned key's first (so that a server with several
/// host keys shows that one), then the other supported ones.
fn preferred_host_keys(pinned: &PublicKey) -> Vec<Algorithm> {
    let pinned = pinned.algorithm();
    let mut keys = vec![pinned.clone()];
    keys.extend(
        russh::Preferred::DEFAULT
            .key
            .iter()
            .filter(|a| supported(a) && **a != pinned)
            .cloned(),
    );
    keys
}

/// Reaches the server step by step, pushing a passed [`Check`] per step; a failing step
/// ends it (its check is for the caller to push).
async fn connect_steps(inner: &Inner, checks: &mut Vec<Check>) -> Result<Conn, StepFailure> {
    let endpoint = format!("{}:{}", url_host(&inner.host), inner.port);

    // dns
    let addresses: Vec<std::net::SocketAddr> = match tokio::net::lookup_host((inner.host.as_str(), inner.port)).await {
        Ok(addresses) => addresses.collect(),
        Err(e) => {
            let message = format!("cannot resolve {}: {e}", inner.host);
            // getaddrinfo's EAI_AGAIN: the resolver, not the name, failed.
            return Err(if e.to_string().contains("Temporary failure") {
                transient_step("dns", message)
            } else {
                permanent("dns", message)
            });
        }
    };
    if addresses.is_empty() {
        return Err(permanent("dns", format!("{} has no address", inner.host)));
    }
    let shown: Vec<String> = addresses.iter().map(|a| a.ip().to_string()).collect();
    checks.push(Check::pass(
        "dns",
        format!("{} resolves to {}", inner.host, shown.join(", ")),
    ));

    // tcp_connect
    let mut last_error = None;
    let mut socket = None;
    for address in &addresses {
        match tokio::net::TcpStream::connect(address).await {
            Ok(s) => {
                socket = Some((s, *address));
                break;
            }
            Err(e) => last_error = Some((e, *address)),
        }
    }
    let (socket, address) = match (socket, last_error) {
        (Some(found), _) => found,
        (None, Some((e, address))) => return Err(io_step("tcp_connect", &format!("cannot connect to {address}"), &e)),
        (None, None) => return Err(permanent("tcp_connect", format!("cannot connect to {endpoint}"))),
    };
    let _ = socket.set_nodelay(true);
    checks.push(Check::pass("tcp_connect", format!("connected to {address}")));

    // ssh_handshake
    let config = client::Config {
        preferred: russh::Preferred {
            key: preferred_host_keys(&inner.host_key).into(),
            ..russh::Preferred::DEFAULT
        },
        keepalive_interval: Some(Duration::from_secs(15)),
        keepalive_max: 3,
        nodelay: true,
        ..client::Config::default()
    };
    let seen = Arc::new(Mutex::new(None));
    let handler = Pinned {
        expected: inner.host_key.clone(),
        seen: seen.clone(),
    };
    let mut ssh = match client::connect_stream(Arc::new(config), socket, handler).await {
        Ok(ssh) => ssh,
        Err(russh::Error::UnknownKey) => {
            let shown = seen.lock().expect("host key lock").clone();
            let shown = match shown {
                Some(key) => format!("{} ({})", fingerprint(&key), key.algorithm()),
                None => "an unknown key".to_string(),
            };
            return Err(permanent(
                "ssh_handshake",
                format!(
                    "the host key of {endpoint} is {shown}, not the pinned host_key {} ({}); \
                     no credentials were sent and nothing was written (if the server's key \
                     really changed, update host_key)",
                    fingerprint(&inner.host_key),
                    inner.host_key.algorithm()
                ),
            ));
        }
        Err(e) => {
            return Err(ssh_step(
                "ssh_handshake",
                &format!("SSH handshake with {endpoint} failed"),
                e,
            ));
        }
    };
    checks.push(Check::pass(
        "ssh_handshake",
        format!(
            "the host key of {endpoint} is the pinned one ({} {})",
            inner.host_key.algorithm(),
            fingerprint(&inner.host_key)
        ),
    ));

    // authentication
    let (result, how) = match &inner.auth {
        Auth::Password(password) => (
            ssh.authenticate_password(inner.username.as_str(), password.as_str())
                .await,
            "the password".to_string(),
        ),
        Auth::Key(key) => {
            let how = format!(
                "the private key ({} {})",
                key.algorithm(),
                fingerprint(key.public_key())
            );
            let key = PrivateKeyWithHashAlg::new(key.clone(), None);
            (ssh.authenticate_publickey(inner.username.as_str(), key).await, how)
        }
    };
    match result {
        Ok(result) if result.success() => {}
        Ok(russh::client::AuthResult::Failure { remaining_methods, .. }) => {
            let accepted: Vec<&str> = remaining_methods.iter().map(<&str>::from).collect();
            return Err(permanent(
                "authentication",
                format!(
                    "{endpoint} refused {how} for user '{}' (it accepts: {})",
                    inner.username,
                    if accepted.is_empty() {
                        "nothing more".to_string()
                    } else {
                        accepted.join(", ")
                    }
                ),
            ));
        }
        Ok(_) => return Err(permanent("authentication", format!("{endpoint} refused {how}"))),
        Err(e) => {
            return Err(ssh_step(
                "authentication",
                &format!("cannot authenticate as '{}' with {how}", inner.username),
                e,
            ));
        }
    }
    checks.push(Check::pass(
        "authentication",
        format!("logged in as '{}' with {how}", inner.username),
    ));

    // sftp_subsystem
    let step = "sftp_subsystem";
    let context = "cannot start the SFTP subsystem";
    let mut channel = ssh
        .channel_open_session()
        .await
        .map_err(|e| ssh_step(step, context, e))?;
    channel
        .request_subsystem(true, "sftp")
        .await
        .map_err(|e| ssh_step(step, context, e))?;
    loop {
        match channel.wait().await {
            Some(russh::ChannelMsg::Success) => break,
            Some(russh::ChannelMsg::Failure) => {
                return Err(permanent(step, format!("{endpoint} refused the sftp subsystem")));
            }
            Some(russh::ChannelMsg::Close | russh::ChannelMsg::Eof) | None => {
                return Err(transient_step(step, format!("{context}: the channel closed")));
            }
            Some(_) => {}
        }
    }
    let sftp_config = russh_sftp::client::Config {
        request_timeout_secs: REQUEST_TIMEOUT_SECS,
        ..russh_sftp::client::Config::default()
    };
    let mut sftp = RawSftpSession::new_with_config(channel.into_stream(), sftp_config);
    let sftp_failure = |e: SftpError| {
        let message = format!("{context}: {}", describe(&e));
        if transient(&e) {
            transient_step(step, message)
        } else {
            permanent(step, message)
        }
    };
    let version = sftp.init().await.map_err(sftp_failure)?;
    let has = |name: &str| version.extensions.contains_key(name);
    let (posix_rename, fsync) = (has(POSIX_RENAME), has(FSYNC));
    let (mut write_bytes, mut read_bytes) = (DEFAULT_IO_BYTES, DEFAULT_IO_BYTES);
    if has(LIMITS)
        && let Ok(limits) = sftp.limits().await
    {
        let limits = Limits::from(limits);
        let packet = limits
            .packet_len
            .map_or(MAX_IO_BYTES, |p| (p as usize).saturating_sub(1024));
        let bound = |len: Option<u64>| {
            len.map_or(DEFAULT_IO_BYTES, |l| l as usize)
                .min(packet)
                .min(MAX_IO_BYTES)
        };
        write_bytes = bound(limits.write_len).max(1024);
        read_bytes = bound(limits.read_len).max(1024);
        sftp.set_limits(limits);
    }
    checks.push(Check::pass(
        step,
        format!(
            "SFTP version {}{}",
            version.version,
            if posix_rename {
                ", with posix-rename@openssh.com"
            } else {
                ""
            }
        ),
    ));

    // The root: realpath of the folder, or of the login folder plus the folder while missing.
    let relative = strip_home(&inner.folder);
    let root = if inner.folder.starts_with('/') {
        match sftp.realpath(inner.folder.as_str()).await {
            Ok(name) => name.files.first().map(|f| normalize(&f.filename)),
            Err(_) => None,
        }
        .unwrap_or_else(|| normalize(&inner.folder))
    } else {
        let home = sftp
            .realpath(".")
            .await
            .map_err(|e| {
                permanent(
                    "folder_exists",
                    format!("cannot resolve the login folder: {}", describe(&e)),
                )
            })?
            .files
            .first()
            .map(|f| normalize(&f.filename))
            .unwrap_or_else(|| "/".to_string());
        if relative.is_empty() {
            home
        } else {
            match sftp.realpath(under(&home, relative)).await {
                Ok(name) if !name.files.is_empty() => normalize(&name.files[0].filename),
                _ => normalize(&under(&home, relative)),
            }
        }
    };

    Ok(Conn {
        sftp,
        ssh,
        root,
        posix_rename,
        fsync,
        write_bytes,
        read_bytes,
        dead: AtomicBool::new(false),
    })
}

/// The step under way once `passed` have passed.
fn step_after(passed: &[Check]) -> &'static str {
    const STEPS: [&str; 5] = [
        "dns",
        "tcp_connect",
        "ssh_handshake",
        "authentication",
        "sftp_subsystem",
    ];
    STEPS.get(passed.len()).copied().unwrap_or("folder_exists")
}

/// Connects for the store's operations; a failure names its step.
async fn connect(inner: &Inner, checks: &mut Vec<Check>) -> Result<Conn, Failure> {
    connect_steps(inner, checks)
        .await
        .map_err(|StepFailure { step, failure }| {
            let message = redact(
                &format!("cannot connect to {} ({step}): {}", inner.endpoint(), failure.message()),
                &inner.secrets,
            );
            match failure {
                Failure::Transient { retry_after, .. } => Failure::Transient { message, retry_after },
                Failure::Permanent { .. } | Failure::Unsupported { .. } => Failure::Permanent { message },
            }
        })
}

/// The connection test: `config` (when the configuration cannot work), then `dns`,
/// `tcp_connect`, `ssh_handshake` (the host key must be the pinned one; a mismatch names both
/// fingerprints), `authentication`, `sftp_subsystem`, `folder_exists` (a missing folder is
/// created, as the first write would) and `folder_writable` (a probe file written, read back
/// and removed). The first failing check ends the list. The whole test is bounded by 30 s
/// for reaching the server plus the SFTP request timeout per folder step.
pub async fn probe(config: &SftpConfig) -> Vec<Check> {
    let store = match SftpBytes::new(config) {
        Ok(store) => store,
        Err(_) => {
            let error = check_config(config).expect_err("a configuration that failed to parse");
            return vec![Check::fail("config", error.to_string())];
        }
    };
    let inner = &store.inner;
    let mut checks = Vec::new();
    let conn = match tokio::time::timeout(inner.connect_timeout, connect_steps(inner, &mut checks)).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(StepFailure { step, failure })) => {
            checks.push(Check::fail(step, redact(failure.message(), &inner.secrets)));
            return checks;
        }
        Err(_) => {
            let step = step_after(&checks);
            checks.push(Check::fail(
                step,
                format!("timed out after {:?}", inner.connect_timeout),
            ));
            return checks;
        }
    };
    let root_url = inner.url_of(&conn.root);

    // folder_exists
    match conn.sftp.stat(conn.root.as_str()).await {
        Ok(attrs) if is_dir(&attrs.attrs) => {
            checks.push(Check::pass("folder_exists", format!("folder {root_url} exists")));
        }
        Ok(_) => {
            checks.push(Check::fail("folder_exists", format!("{root_url} is not a folder")));
            return checks;
        }
        Err(e) if status_code(&e) == Some(StatusCode::NoSuchFile) => match inner.mkdir_p(&conn, &conn.root).await {
            Ok(()) => checks.push(Check::pass(
                "folder_exists",
                format!("folder {root_url} did not exist and was created"),
            )),
            Err(failure) => {
                checks.push(Check::fail(
                    "folder_exists",
                    format!(
                        "folder {root_url} does not exist and cannot be created: {}",
                        failure.message()
                    ),
                ));
                return checks;
            }
        },
        Err(e) => {
            checks.push(Check::fail(
                "folder_exists",
                format!("cannot see folder {root_url}: {}", describe(&e)),
            ));
            return checks;
        }
    }

    // folder_writable
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let probe = under(&conn.root, &format!(".exportd-probe-{}-{nanos:x}", std::process::id()));
    let content: &[u8] = b"exportd connection test";
    let written = async {
        let handle = conn
            .sftp
            .open(
                probe.as_str(),
                OpenFlags::CREATE | OpenFlags::TRUNCATE | OpenFlags::WRITE,
                FileAttributes::empty(),
            )
            .await?
            .handle;
        let write = write_at(&conn, &handle, 0, content).await;
        let close = conn.sftp.close(handle.as_str()).await;
        write?;
        close?;
        let handle = conn
            .sftp
            .open(probe.as_str(), OpenFlags::READ, FileAttributes::empty())
            .await?
            .handle;
        let read = read_all(&conn, &handle).await;
        let _ = conn.sftp.close(handle.as_str()).await;
        let read = read?;
        conn.sftp.remove(probe.as_str()).await?;
        Ok::<_, SftpError>(read)
    };
    match written.await {
        Ok(read) if read == content => checks.push(Check::pass(
            "folder_writable",
            format!("wrote, read back and removed a probe file in {root_url}"),
        )),
        Ok(_) => {
            let _ = conn.sftp.remove(probe.as_str()).await;
            checks.push(Check::fail(
                "folder_writable",
                format!("a probe file written in {root_url} read back different"),
            ));
        }
        Err(e) => {
            let _ = conn.sftp.remove(probe.as_str()).await;
            checks.push(Check::fail(
                "folder_writable",
                format!("cannot write in {root_url}: {}", describe(&e)),
            ));
        }
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBTScu9N7EuZXJJcrdvMcat/10yY7YeGInqH+nWAlq9G test@host";

    const RSA_KEY: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQC83CEQEs8mMn0lgz9hiDQ+zylTMlTyhlgyVqpgLIwZ8hlRIdF5ou1DVTQaI4YQiYVcDBkfrOhWzGGqZmTxJobYBpQ3oyfVrVKhIVJYpLT8LKRtJEYps9xSvnuiT/TRn6aEEghqhjW2OPw2bl2D3TDnt/7JZ7TSaB0/5Qh4mZ5eOQ== r";

    fn config(credentials: SftpCredentials) -> SftpConfig {
        SftpConfig {
            host: "files.example".into(),
            port: DEFAULT_PORT,
            username: "cdp".into(),
            folder: "exports".into(),
            host_key: HOST_KEY.into(),
            credentials,
        }
    }

    #[test]
    fn configuration_errors_name_their_key_and_no_secret() {
        assert_eq!(
            check_config(&config(SftpCredentials::Password("hunter22".into()))),
            Ok(())
        );
        let mut bad = config(SftpCredentials::Password("hunter22".into()));
        bad.host_key = "ssh-ed25519 not-base64".into();
        assert_eq!(check_config(&bad).unwrap_err().key, "host_key");
        bad.host_key = format!("files.example {HOST_KEY}");
        assert_eq!(check_config(&bad), Ok(()), "a known_hosts line is accepted");
        bad.host_key = RSA_KEY.into();
        let error = check_config(&bad).unwrap_err();
        assert_eq!(error.key, "host_key");
        assert!(error.message.contains("not supported"), "{error}");

        let secret = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQSECRET\n-----END OPENSSH PRIVATE KEY-----\n";
        let bad = config(SftpCredentials::PrivateKey {
            key: secret.into(),
            passphrase: None,
        });
        let error = check_config(&bad).unwrap_err();
        assert_eq!(error.key, "private_key");
        assert!(!error.message.contains("SECRET"), "{error}");
        let bad = config(SftpCredentials::PrivateKey {
            key: "PuTTY-User-Key-File-3: ssh-ed25519".into(),
            passphrase: None,
        });
        assert_eq!(check_config(&bad).unwrap_err().key, "private_key");
        assert_eq!(
            check_config(&config(SftpCredentials::Password(String::new())))
                .unwrap_err()
                .key,
            "password"
        );
        let mut bad = config(SftpCredentials::Password("hunter22".into()));
        bad.host = "user@files.example".into();
        assert_eq!(check_config(&bad).unwrap_err().key, "host");
        bad.host = "files.example".into();
        bad.port = 0;
        assert_eq!(check_config(&bad).unwrap_err().key, "port");
        let shown = format!("{:?}", config(SftpCredentials::Password("hunter22".into())));
        assert!(!shown.contains("hunter22"), "{shown}");
    }

    #[test]
    fn paths_and_urls() {
        assert_eq!(normalize("/a/./b//c/../d/"), "/a/b/d");
        assert_eq!(normalize("/"), "/");
        assert_eq!(under("/", "a/b"), "/a/b");
        assert_eq!(under("/r", "a"), "/r/a");
        assert_eq!(under("/r", ""), "/r");
        assert_eq!(parent("/r/a"), Some("/r"));
        assert_eq!(parent("/r"), Some("/"));
        assert_eq!(parent("/"), None);
        assert_eq!(strip_home("~/x/y"), "x/y");
        assert_eq!(strip_home("~"), "");
        assert_eq!(strip_home("~x"), "~x");

        let mut absolute = config(SftpCredentials::Password("hunter22".into()));
        absolute.folder = "/home/cdp/exports/".into();
        let store = SftpBytes::new(&absolute).unwrap();
        assert_eq!(
            store.url("a b/model.json"),
            "sftp://files.example:22/home/cdp/exports/a%20b/model.json"
        );
        let relative = SftpBytes::new(&config(SftpCredentials::Password("hunter22".into()))).unwrap();
        assert_eq!(relative.url("m.json"), "sftp://files.example:22/~/exports/m.json");
        let mut v6 = absolute.clone();
        v6.host = "::1".into();
        v6.port = 2222;
        assert_eq!(
            SftpBytes::new(&v6).unwrap().url(""),
            "sftp://[::1]:2222/home/cdp/exports"
        );
    }

    #[test]
    fn the_pinned_algorithm_is_offered_first() {
        let key = PublicKey::from_openssh(HOST_KEY).unwrap();
        let offered = preferred_host_keys(&key);
        assert_eq!(offered[0], Algorithm::Ed25519);
        assert!(offered.iter().all(supported));
        assert_eq!(offered.iter().filter(|a| **a == Algorithm::Ed25519).count(), 1);
    }
}
