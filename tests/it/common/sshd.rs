//! A real OpenSSH `sshd` on 127.0.0.1 for SFTP tests: generated ed25519 host and client keys,
//! its own `sshd_config` in a temp dir, `internal-sftp` starting in a temp login folder, the
//! current user (root here, hence `PermitRootLogin yes`). Killed (with its connection
//! processes) on drop.
//!
//! When `/usr/sbin/sshd` or `ssh-keygen` is missing the tests using it are skipped with a note,
//! except under `CI=true`, where that is a failure.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use exportd::connectors::storage::sftp::{SftpConfig, SftpCredentials};

const SSHD: &str = "/usr/sbin/sshd";

/// A key pair made by `ssh-keygen`.
pub struct KeyPair {
    /// The OpenSSH private key text.
    pub private: String,
    /// The public key line.
    pub public: String,
    /// `SHA256:…`, as `ssh-keygen -l` prints it.
    pub fingerprint: String,
}

/// Generates an ed25519 key pair in `dir` (`passphrase` empty for none).
pub fn keygen(dir: &Path, name: &str, passphrase: &str) -> KeyPair {
    let path = dir.join(name);
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", passphrase, "-C", name, "-f"])
        .arg(&path)
        .stdin(Stdio::null())
        .status()
        .expect("ssh-keygen runs");
    assert!(status.success(), "ssh-keygen failed for {name}");
    let listed = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(path.with_extension("pub"))
        .output()
        .expect("ssh-keygen -l runs");
    let listed = String::from_utf8(listed.stdout).expect("utf-8");
    let fingerprint = listed
        .split_whitespace()
        .find(|w| w.starts_with("SHA256:"))
        .expect("a SHA256 fingerprint")
        .to_string();
    KeyPair {
        private: std::fs::read_to_string(&path).expect("private key"),
        public: std::fs::read_to_string(path.with_extension("pub"))
            .expect("public key")
            .trim()
            .to_string(),
        fingerprint,
    }
}

pub struct Sshd {
    child: Child,
    dir: tempfile::TempDir,
    pub host: String,
    pub port: u16,
    pub username: String,
    pub host_key: KeyPair,
    /// Authorized (in `authorized_keys`).
    pub client_key: KeyPair,
    /// Also authorized; encrypted with [`Sshd::PASSPHRASE`].
    pub encrypted_client_key: KeyPair,
    /// The login folder of SFTP sessions (`internal-sftp -d`): relative folders live here.
    pub home: PathBuf,
    /// An empty folder for a test's files (absolute).
    pub folder: PathBuf,
}

impl Sshd {
    pub const PASSPHRASE: &'static str = "correct horse battery";

    /// A running sshd, or `None` (after a note) when OpenSSH is not installed here.
    pub fn start() -> Option<Sshd> {
        let missing = [SSHD, "ssh-keygen"].into_iter().find(|tool| which(tool).is_none());
        if let Some(tool) = missing {
            let message = format!(
                "OpenSSH is not installed ({tool} not found): apt-get install -y openssh-server openssh-client"
            );
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("SFTP tests need {message}");
            }
            eprintln!("note: skipping an SFTP test: {message}");
            return None;
        }
        Some(Self::start_installed())
    }

    fn start_installed() -> Sshd {
        let dir = tempfile::tempdir().expect("temp dir");
        let host_key = keygen(dir.path(), "host_ed25519", "");
        let client_key = keygen(dir.path(), "client_ed25519", "");
        let encrypted_client_key = keygen(dir.path(), "client_encrypted", Self::PASSPHRASE);
        std::fs::write(
            dir.path().join("authorized_keys"),
            format!("{}\n{}\n", client_key.public, encrypted_client_key.public),
        )
        .expect("authorized_keys");
        let home = dir.path().join("home");
        let folder = dir.path().join("data");
        std::fs::create_dir_all(&home).expect("home");
        std::fs::create_dir_all(&folder).expect("data");
        // sshd refuses to start without its privilege separation directory (the package's
        // service unit makes it at boot; a container may not have it).
        let _ = std::fs::create_dir_all("/run/sshd");
        let username = current_user();

        // A free port can be taken between finding it and sshd binding it: try a few.
        let mut last_log = String::new();
        for _ in 0..5 {
            let port = free_port();
            let config = dir.path().join("sshd_config");
            std::fs::write(&config, sshd_config(dir.path(), port, &home)).expect("sshd_config");
            let log_path = dir.path().join(format!("sshd-{port}.log"));
            let log = std::fs::File::create(&log_path).expect("log file");
            let mut command = Command::new(SSHD);
            command
                .arg("-D")
                .arg("-e")
                .arg("-f")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log);
            // Its own process group, so that drop ends the connection processes too.
            std::os::unix::process::CommandExt::process_group(&mut command, 0);
            let mut child = command.spawn().expect("sshd starts");
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    last_log = format!(
                        "sshd exited ({status}): {}",
                        std::fs::read_to_string(&log_path).unwrap_or_default()
                    );
                    break;
                }
                if std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
                    .is_ok()
                {
                    return Sshd {
                        child,
                        dir,
                        host: "127.0.0.1".into(),
                        port,
                        username,
                        host_key,
                        client_key,
                        encrypted_client_key,
                        home,
                        folder,
                    };
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "sshd did not accept connections on port {port} within 10 s: {}",
                        std::fs::read_to_string(&log_path).unwrap_or_default()
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("sshd would not start: {last_log}");
    }

    /// A store configuration for `folder` logging in with the client key.
    pub fn config(&self, folder: &str) -> SftpConfig {
        SftpConfig {
            host: self.host.clone(),
            port: self.port,
            username: self.username.clone(),
            folder: folder.to_string(),
            host_key: self.host_key.public.clone(),
            credentials: SftpCredentials::PrivateKey {
                key: self.client_key.private.clone(),
                passphrase: None,
            },
        }
    }

    /// The store configuration for [`Sshd::folder`].
    pub fn data_config(&self) -> SftpConfig {
        self.config(self.folder.to_str().expect("utf-8 path"))
    }

    /// The file of [`Sshd::client_key`], for OpenSSH's own clients.
    #[allow(dead_code)]
    pub fn client_key_file(&self) -> PathBuf {
        self.dir.path().join("client_ed25519")
    }

    /// What sshd logged so far.
    pub fn log(&self) -> String {
        let mut log = String::new();
        for entry in std::fs::read_dir(self.dir.path()).expect("temp dir").flatten() {
            if entry.file_name().to_string_lossy().ends_with(".log") {
                log.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
            }
        }
        log
    }

    /// Ends every SSH session (the processes sshd forked per connection), as a server restart
    /// or a network cut would; the listener stays. Returns how many were ended.
    pub fn kill_sessions(&self) -> usize {
        let listener = self.child.id();
        let mut ended = 0;
        for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // `pid (comm) state ppid …`; comm may hold spaces and parentheses.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if ppid == Some(listener)
                && Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status()
                    .is_ok_and(|s| s.success())
            {
                ended += 1;
            }
        }
        ended
    }

    /// Every file under `dir`, relative to it, sorted (temporary files included).
    pub fn files_under(dir: &Path) -> Vec<String> {
        let mut found = Vec::new();
        let mut folders = vec![dir.to_path_buf()];
        while let Some(folder) = folders.pop() {
            let Ok(entries) = std::fs::read_dir(&folder) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    folders.push(path);
                } else {
                    found.push(path.strip_prefix(dir).unwrap().to_string_lossy().into_owned());
                }
            }
        }
        found.sort();
        found
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        // The listener and the session processes it forked: its process group.
        let _ = Command::new("kill")
            .args(["-TERM", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sshd_config(dir: &Path, port: u16, home: &Path) -> String {
    let d = dir.display();
    format!(
        "Port {port}\n\
         ListenAddress 127.0.0.1\n\
         HostKey {d}/host_ed25519\n\
         PidFile {d}/sshd.pid\n\
         AuthorizedKeysFile {d}/authorized_keys\n\
         StrictModes no\n\
         Subsystem sftp internal-sftp -d {home}\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         UsePAM no\n\
         PermitRootLogin yes\n\
         UseDNS no\n\
         PrintMotd no\n\
         LogLevel VERBOSE\n",
        home = home.display()
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("a free port")
        .local_addr()
        .expect("its address")
        .port()
}

fn which(tool: &str) -> Option<PathBuf> {
    if tool.contains('/') {
        return Path::new(tool).is_file().then(|| PathBuf::from(tool));
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(tool))
        .find(|p| p.is_file())
}

fn current_user() -> String {
    let output = Command::new("id").arg("-un").output().expect("id -un runs");
    let user = String::from_utf8(output.stdout).expect("utf-8").trim().to_string();
    assert!(!user.is_empty(), "the current user has a name");
    user
}
