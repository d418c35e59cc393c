//! The real `exportd` binary as a user runs it: `serve`, `token`, `environment`, signals.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use base64::Engine as _;
use exportd::auth::Role;
use exportd::pb;

use super::*;

pub const EXE: &str = env!("CARGO_BIN_EXE_exportd");

/// A running `exportd serve` child process. Its stderr (the logs) is collected in a file.
pub struct ServeProcess {
    pub child: Child,
    pub addr: String,
    pub token: Option<String>,
    /// `http://…/metrics`, when the process serves metrics.
    pub metrics_url: Option<String>,
    pub log_path: std::path::PathBuf,
}

impl ServeProcess {
    /// Starts `exportd serve <args>` with `envs` and waits for its "listening on" line.
    pub fn start(data_dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> ServeProcess {
        Self::spawn(data_dir, args, envs).ready()
    }

    /// Starts `exportd serve <args>` without waiting for it: several can be started at the
    /// same moment, then waited for with [`Starting::ready`].
    pub fn spawn(data_dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> Starting {
        static STARTED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let log_path = data_dir.join(format!("serve-{}-{n}.log", std::process::id()));
        let log = std::fs::File::create(&log_path).unwrap();
        let mut command = Command::new(EXE);
        command
            .arg("serve")
            .args(args)
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .env_remove("RUST_LOG");
        for (k, v) in envs {
            command.env(k, v);
        }
        let child = command.spawn().expect("spawn exportd");
        Starting {
            child: Some(child),
            log_path,
            dev: args.contains(&"--dev"),
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit and returns its exit code.
    pub fn wait(mut self) -> Option<i32> {
        self.child.wait().unwrap().code()
    }
}

/// A `serve` process that has been started and may not be listening yet.
pub struct Starting {
    /// Taken by `ready`; a `Starting` dropped before that kills its process.
    child: Option<Child>,
    log_path: std::path::PathBuf,
    dev: bool,
}

impl Starting {
    /// Waits (up to 60 s) for the "listening on" line (and, in dev mode, the token).
    pub fn ready(mut self) -> ServeProcess {
        let mut child = self.child.take().expect("not ready yet");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let mut addr = None;
        let mut token = None;
        let mut metrics_url = None;
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let Some(Ok(line)) = lines.next() else { break };
            if let Some(rest) = line.strip_prefix("exportd metrics on ") {
                metrics_url = Some(rest.trim().to_string());
            }
            if let Some(rest) = line.strip_prefix("exportd listening on ") {
                addr = Some(rest.trim().to_string());
                if !self.dev {
                    break;
                }
            }
            if let Some(rest) = line.strip_prefix("export EXPORTD_TOKEN=") {
                token = Some(rest.trim().to_string());
                break;
            }
        }
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let process = ServeProcess {
            child,
            addr: addr.unwrap_or_default(),
            token,
            metrics_url,
            log_path: self.log_path.clone(),
        };
        assert!(
            !process.addr.is_empty(),
            "exportd did not start; log:\n{}",
            process.logs()
        );
        process
    }
}

impl Drop for Starting {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs an `exportd` command to completion: (exit code, stdout, stderr).
pub fn run(args: &[&str], envs: &[(&str, &str)]) -> (i32, String, String) {
    let mut command = Command::new(EXE);
    command.args(args);
    output_of(command, envs)
}

/// Runs an `exportd` command in `dir` as a user would there: no `EXPORTD_*` variable from the
/// test's own environment, only `envs`.
pub fn run_in(dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> (i32, String, String) {
    let mut command = Command::new(EXE);
    command.args(args).current_dir(dir);
    for (key, _) in std::env::vars() {
        if key.starts_with("EXPORTD_") {
            command.env_remove(key);
        }
    }
    output_of(command, envs)
}

fn output_of(mut command: Command, envs: &[(&str, &str)]) -> (i32, String, String) {
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in envs {
        command.env(k, v);
    }
    let mut child = command.spawn().unwrap();
    let mut out = String::new();
    let mut err = String::new();
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    let code = child.wait().unwrap().code().unwrap_or(-1);
    (code, out, err)
}

/// `(name, value)` settings as the `&str` pairs `start` and `run` take.
pub fn borrowed<'a>(envs: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    envs.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// `GET` of an `http://host:port/path` URL over HTTP/1.1: (status code, body).
pub fn http_get(url: &str, method: &str) -> (u16, String) {
    use std::io::Write;
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    let (host, path) = rest
        .split_once('/')
        .map(|(h, p)| (h, format!("/{p}")))
        .unwrap_or((rest, "/".into()));
    let mut stream = std::net::TcpStream::connect(host).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(stream, "{method} {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    (status, body.to_string())
}

// ---------------------------------------------------------------------------------------------
// Servers as processes: their settings, clients and what they wrote
// ---------------------------------------------------------------------------------------------

pub fn token(env: &str) -> String {
    let roles = BTreeMap::from([(env.to_string(), Role::Admin)]);
    exportd::auth::jwt::sign_hs256(HS_SECRET.as_bytes(), "durability", &roles, Duration::from_secs(3600)).unwrap()
}

pub fn server_env(database_url: &str, extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, String)> {
    let mut envs = vec![
        ("EXPORTD_DATABASE_URL", database_url.to_string()),
        ("EXPORTD_JWT_HS256_SECRET", HS_SECRET.to_string()),
        (
            "EXPORTD_SEALING_KEYS",
            format!(
                "test1:{}",
                base64::engine::general_purpose::STANDARD.encode(SEALING_KEY)
            ),
        ),
        ("EXPORTD_LOG_FILTER", "info,sqlx=warn,sea_orm=warn".to_string()),
    ];
    envs.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    envs
}

pub fn start(dir: &std::path::Path, envs: &[(&'static str, String)]) -> ServeProcess {
    let borrowed: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    ServeProcess::start(dir, &[], &borrowed)
}

pub async fn clients(addr: &str, env: &str) -> (Catalog, Connections, Exports) {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let authed = tonic::service::interceptor::InterceptedService::new(channel, Bearer(Some(token(env))));
    (
        pb::catalog_service_client::CatalogServiceClient::new(authed.clone()).max_encoding_message_size(64 << 20),
        pb::connection_service_client::ConnectionServiceClient::new(authed.clone()),
        pb::export_service_client::ExportServiceClient::new(authed),
    )
}

/// Creates the database (as an operator does before the first start) and an environment in it.
pub fn create_environment(dir: &std::path::Path, envs: &[(&'static str, String)], id: &str) {
    let borrowed: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (code, _, err) = run(&["migrate", "--data-dir", dir.to_str().unwrap()], &borrowed);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(
        &[
            "environment",
            "create",
            id,
            "--kind",
            "b2c",
            "--data-dir",
            dir.to_str().unwrap(),
        ],
        &borrowed,
    );
    assert_eq!(code, 0, "{err}");
}

/// Polls a run until `done` holds (bounded).
pub async fn wait_run(
    exports: &mut Exports,
    name: &str,
    what: &str,
    done: impl Fn(&pb::ExportRun) -> bool,
) -> pb::ExportRun {
    eventually(
        Duration::from_secs(120),
        format_args!("run {name} reaching {what}"),
        async || {
            // A server being killed or starting may not answer: that is asked again too.
            match exports
                .get_export_run(pb::GetExportRunRequest { name: name.into() })
                .await
            {
                Ok(run) if done(run.get_ref()) => Ok(run.into_inner()),
                Ok(run) => Err(format!("{:#?}", run.into_inner())),
                Err(status) => Err(format!("{status:?}")),
            }
        },
    )
    .await
}

/// Every data row of the partitions model.json points to, as (key, row) — read back from disk.
pub fn exported_keys(root: &std::path::Path, export: &str) -> Vec<String> {
    let model: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join(export).join("model.json")).unwrap()).unwrap();
    let mut keys = Vec::new();
    for entity in model["entities"].as_array().unwrap() {
        for partition in entity["partitions"].as_array().unwrap() {
            let path = path_of_location(partition["location"].as_str().unwrap());
            let mut reader = csv::Reader::from_path(path).unwrap();
            for record in reader.records() {
                keys.push(record.unwrap()[0].to_string());
            }
        }
    }
    keys
}

/// The value of one sample line (`name{labels} value`), if the scrape has it.
pub fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

pub fn scrape(server: &ServeProcess) -> String {
    let url = server.metrics_url.as_ref().expect("the server serves metrics");
    let (status, body) = http_get(url, "GET");
    assert_eq!(status, 200, "{body}");
    body
}
