#![allow(dead_code)]
//! The test harness: a real exportd server on 127.0.0.1:0 with its own database (SQLite in a
//! temp dir, or a fresh PostgreSQL database when EXPORTD_TEST_DATABASE=postgres), spoken to
//! through the generated gRPC clients; the same binary as a process (`process`); and the
//! fixtures every test file shares (`catalog`, `exports`, `runs`), so that no test file imports
//! another.

mod catalog;
mod eventually;
mod exports;
pub mod failing_proxy;
pub mod google_double;
mod json_reply;
pub mod linkedin_double;
pub mod mailchimp_double;
pub mod meta_double;
pub mod postgres_target;
mod process;
pub mod raw;
mod runs;
pub mod sshd;
pub mod storage;
pub mod storage_servers;
pub mod webhook_receiver;

pub use catalog::*;
pub use eventually::eventually;
pub use exports::*;
pub use process::*;
pub use runs::*;
pub use storage::Storage;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use base64::Engine;
use exportd::api::State;
use exportd::auth::Role;
use exportd::config::{Flags, Settings};
use exportd::domain::environment::EnvironmentKind;
use exportd::pb;
use exportd::server::RunningServer;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub const HS_SECRET: &str = "test-secret-test-secret-test-secret-0123456789";
pub const SEALING_KEY: [u8; 32] = [7u8; 32];

/// The file a `file://` location of `model.json` names: decoded by the `url` crate, as the
/// server encodes it (an absolute path; a space in it is `%20`).
pub fn path_of_location(location: &str) -> std::path::PathBuf {
    url::Url::parse(location)
        .ok()
        .filter(|url| url.scheme() == "file")
        .and_then(|url| url.to_file_path().ok())
        .unwrap_or_else(|| panic!("an absolute file:// URL: {location}"))
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer(pub Option<String>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().expect("ascii token"));
        }
        Ok(request)
    }
}

pub type Authed = InterceptedService<Channel, Bearer>;
pub type Connections = pb::connection_service_client::ConnectionServiceClient<Authed>;
pub type Exports = pb::export_service_client::ExportServiceClient<Authed>;
pub type Catalog = pb::catalog_service_client::CatalogServiceClient<Authed>;
pub type Alerts = pb::alert_service_client::AlertServiceClient<Authed>;
pub type Audit = pb::audit_service_client::AuditServiceClient<Authed>;

/// Which database the suite runs on.
pub fn backend() -> String {
    std::env::var("EXPORTD_TEST_DATABASE").unwrap_or_else(|_| "sqlite".to_string())
}

static DATABASES: AtomicU32 = AtomicU32::new(0);

/// A fresh PostgreSQL database for one test server.
async fn fresh_postgres_database() -> String {
    use sea_orm::{ConnectionTrait, Database};
    let admin = std::env::var("EXPORTD_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let name = format!(
        "exportd_test_{}_{}",
        std::process::id(),
        DATABASES.fetch_add(1, Ordering::SeqCst)
    );
    let db = Database::connect(&admin)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {admin} is required: {e}"));
    db.execute_unprepared(&format!("DROP DATABASE IF EXISTS {name}"))
        .await
        .unwrap();
    db.execute_unprepared(&format!("CREATE DATABASE {name}")).await.unwrap();
    db.close().await.unwrap();
    let (base, _) = admin.rsplit_once('/').expect("admin URL ends with a database");
    format!("{base}/{name}")
}

/// A new, empty database of the suite's backend (SQLite files live in `dir`).
pub async fn fresh_database_url(dir: &std::path::Path) -> String {
    match backend().as_str() {
        "postgres" => fresh_postgres_database().await,
        "sqlite" => format!("sqlite://{}?mode=rwc", dir.join("exportd.db").display()),
        other => panic!("EXPORTD_TEST_DATABASE={other}: use sqlite or postgres"),
    }
}

pub struct TestServer {
    pub server: Option<RunningServer>,
    pub addr: std::net::SocketAddr,
    pub state: State,
    pub data_dir: tempfile::TempDir,
    pub database_url: String,
}

/// Extra settings for one test, as EXPORTD_* variables.
#[derive(Default, Clone)]
pub struct Options {
    pub vars: BTreeMap<String, String>,
    /// Variables the harness would set that this test leaves unset (to get the defaults, or to
    /// take a setting from a config file).
    pub unset: Vec<String>,
}

impl Options {
    pub fn var(mut self, key: &str, value: impl Into<String>) -> Self {
        self.vars.insert(key.to_string(), value.into());
        self
    }

    /// The server's own default `allowed_roots` (the exports root) instead of the harness's
    /// (the whole temporary data dir, where the suite's `local-files` roots live).
    pub fn default_allowed_roots(self) -> Self {
        self.without("EXPORTD_ALLOWED_ROOTS")
    }

    /// Leaves one of the harness's variables unset.
    pub fn without(mut self, key: &str) -> Self {
        self.unset.push(key.to_string());
        self
    }
}

pub fn settings_for(data_dir: &std::path::Path, database_url: &str, options: &Options) -> Settings {
    let mut vars = BTreeMap::from([
        ("EXPORTD_DATABASE_URL".to_string(), database_url.to_string()),
        ("EXPORTD_LISTEN".to_string(), "127.0.0.1:0".to_string()),
        ("EXPORTD_JWT_HS256_SECRET".to_string(), HS_SECRET.to_string()),
        (
            "EXPORTD_SEALING_KEYS".to_string(),
            format!(
                "test1:{}",
                base64::engine::general_purpose::STANDARD.encode(SEALING_KEY)
            ),
        ),
        ("EXPORTD_SHUTDOWN_GRACE_SECONDS".to_string(), "5".to_string()),
        // Tests give connections roots in folders of their own temporary data dir.
        ("EXPORTD_ALLOWED_ROOTS".to_string(), data_dir.display().to_string()),
    ]);
    vars.extend(options.vars.clone());
    for name in &options.unset {
        vars.remove(name);
    }
    let flags = Flags {
        data_dir: Some(data_dir.to_path_buf()),
        ..Flags::default()
    };
    Settings::load_with_env(&flags, &|name| vars.get(name).cloned()).expect("test settings")
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(options: Options) -> TestServer {
        // Server errors show in the output of a failing test.
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter("warn")
            .try_init();
        let data_dir = tempfile::tempdir().unwrap();
        let database_url = fresh_database_url(data_dir.path()).await;
        let settings = settings_for(data_dir.path(), &database_url, &options);
        let state = exportd::server::open_state(settings).await.expect("server state");
        state
            .store
            .create_environment("acme", "Acme", EnvironmentKind::IndividualCustomers)
            .await
            .unwrap();
        state
            .store
            .create_environment("globex", "Globex", EnvironmentKind::BusinessAccounts)
            .await
            .unwrap();
        let server = exportd::server::start(state.clone()).await.expect("server starts");
        TestServer {
            addr: server.addr,
            server: Some(server),
            state,
            data_dir,
            database_url,
        }
    }

    /// Stops the server and starts a new one on the same database and data dir, as after an
    /// upgrade (migrations run at start).
    pub async fn restart(mut self, options: Options) -> TestServer {
        if let Some(server) = self.server.take() {
            server.shutdown().await.unwrap();
        }
        let settings = settings_for(self.data_dir.path(), &self.database_url, &options);
        let state = exportd::server::open_state(settings).await.expect("server state");
        let server = exportd::server::start(state.clone()).await.expect("server starts");
        TestServer {
            addr: server.addr,
            server: Some(server),
            state,
            data_dir: self.data_dir,
            database_url: self.database_url,
        }
    }

    pub fn token(&self, roles: &[(&str, Role)]) -> String {
        let roles: BTreeMap<String, Role> = roles.iter().map(|(e, r)| (e.to_string(), *r)).collect();
        exportd::auth::jwt::sign_hs256(HS_SECRET.as_bytes(), "tester", &roles, Duration::from_secs(600)).unwrap()
    }

    pub async fn channel(&self) -> Channel {
        tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .expect("connect to test server")
    }

    async fn authed(&self, token: Option<String>) -> Authed {
        InterceptedService::new(self.channel().await, Bearer(token))
    }

    pub async fn connections_with(&self, token: Option<String>) -> Connections {
        pb::connection_service_client::ConnectionServiceClient::new(self.authed(token).await)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    }

    pub async fn connections(&self, env: &str, role: Role) -> Connections {
        self.connections_with(Some(self.token(&[(env, role)]))).await
    }

    pub async fn exports(&self, env: &str, role: Role) -> Exports {
        pb::export_service_client::ExportServiceClient::new(self.authed(Some(self.token(&[(env, role)]))).await)
    }

    pub async fn catalog(&self, env: &str, role: Role) -> Catalog {
        pb::catalog_service_client::CatalogServiceClient::new(self.authed(Some(self.token(&[(env, role)]))).await)
    }

    pub async fn catalog_with(&self, token: Option<String>) -> Catalog {
        pb::catalog_service_client::CatalogServiceClient::new(self.authed(token).await)
    }

    pub async fn alerts(&self, env: &str, role: Role) -> Alerts {
        pb::alert_service_client::AlertServiceClient::new(self.authed(Some(self.token(&[(env, role)]))).await)
    }

    pub async fn audit(&self, env: &str, role: Role) -> Audit {
        pb::audit_service_client::AuditServiceClient::new(self.authed(Some(self.token(&[(env, role)]))).await)
    }

    pub async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await.unwrap();
        }
    }
}

/// The `google.rpc.ErrorInfo` reason of a status (every error must carry one).
pub fn reason(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    let details = status.get_error_details();
    let info = details
        .error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo on {status:?}"));
    assert_eq!(info.domain, "exportd.v1");
    info.reason.clone()
}

/// The fields named by the status's BadRequest.
pub fn bad_fields(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}

/// Asserts a call failed with `code` and an ErrorInfo; returns the status.
pub fn expect_code<T: std::fmt::Debug>(
    result: Result<tonic::Response<T>, tonic::Status>,
    code: tonic::Code,
) -> tonic::Status {
    match result {
        Ok(response) => panic!("expected {code:?}, got {:?}", response.into_inner()),
        Err(status) => {
            assert_eq!(status.code(), code, "{status:?}");
            reason(&status);
            status
        }
    }
}

/// A local-files connection request in `env`.
pub fn local_files(env: &str, id: &str, display_name: &str, shared: bool) -> pb::CreateConnectionRequest {
    pb::CreateConnectionRequest {
        parent: format!("environments/{env}"),
        connection_id: id.to_string(),
        connection: Some(pb::Connection {
            display_name: display_name.to_string(),
            r#type: "local-files".into(),
            contributors_can_use: shared,
            ..Default::default()
        }),
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Runs
// ---------------------------------------------------------------------------------------------

/// A DATA_OUT export `id` of `acme`'s `customers` entity to its `files` connection.
pub fn files_export(id: &str) -> pb::CreateExportRequest {
    pb::CreateExportRequest {
        parent: "environments/acme".into(),
        export_id: id.into(),
        export: Some(pb::Export {
            display_name: id.into(),
            connection: "environments/acme/connections/files".into(),
            kind: pb::ExportKind::DataOut as i32,
            entities: vec!["environments/acme/entities/customers".into()],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A local-files connection request writing under `root` (an absolute folder).
pub fn local_files_at(
    env: &str,
    id: &str,
    display_name: &str,
    shared: bool,
    root: &std::path::Path,
) -> pb::CreateConnectionRequest {
    let mut request = local_files(env, id, display_name, shared);
    request
        .connection
        .as_mut()
        .unwrap()
        .config
        .insert("root".into(), root.display().to_string());
    request
}

pub fn run_state(run: &pb::ExportRun) -> pb::RunState {
    pb::RunState::try_from(run.state).unwrap_or_else(|_| panic!("unknown run state {}", run.state))
}

/// SUCCEEDED, FAILED, SKIPPED or CANCELLED.
pub fn is_terminal(run: &pb::ExportRun) -> bool {
    matches!(
        run_state(run),
        pb::RunState::Succeeded | pb::RunState::Failed | pb::RunState::Skipped | pb::RunState::Cancelled
    )
}

/// Starts a run of an export (no request id).
pub async fn run_export(client: &mut Exports, export: &str) -> pb::ExportRun {
    client
        .run_export(pb::RunExportRequest {
            name: export.into(),
            request_id: String::new(),
        })
        .await
        .unwrap_or_else(|s| panic!("RunExport {export}: {s:?}"))
        .into_inner()
}

pub async fn get_run(client: &mut Exports, name: &str) -> pb::ExportRun {
    client
        .get_export_run(pb::GetExportRunRequest { name: name.into() })
        .await
        .unwrap_or_else(|s| panic!("GetExportRun {name}: {s:?}"))
        .into_inner()
}

/// Asks GetExportRun (for up to 30 s) until `predicate` holds; returns that run.
pub async fn wait_for_run(
    client: &mut Exports,
    name: &str,
    predicate: impl Fn(&pb::ExportRun) -> bool,
) -> pb::ExportRun {
    eventually(
        Duration::from_secs(30),
        format_args!("run {name} getting there"),
        async || {
            let run = get_run(client, name).await;
            if predicate(&run) {
                Ok(run)
            } else {
                Err(format!("{run:#?}"))
            }
        },
    )
    .await
}

/// Waits until the run is SUCCEEDED, FAILED, SKIPPED or CANCELLED.
pub async fn wait_for_end(client: &mut Exports, name: &str) -> pb::ExportRun {
    wait_for_run(client, name, is_terminal).await
}

/// Every message of a WatchExportRun stream until it ends (bounded: 30 s).
pub async fn watch_to_end(client: &mut Exports, name: &str) -> Vec<pb::ExportRun> {
    let mut stream = client
        .watch_export_run(pb::WatchExportRunRequest { name: name.into() })
        .await
        .unwrap_or_else(|s| panic!("WatchExportRun {name}: {s:?}"))
        .into_inner();
    let mut messages = Vec::new();
    let all = async {
        while let Some(run) = stream.message().await.expect("watch stream") {
            messages.push(run);
        }
    };
    tokio::time::timeout(Duration::from_secs(30), all)
        .await
        .unwrap_or_else(|_| panic!("the watch of {name} did not end within 30 s"));
    messages
}

/// The ErrorInfo reason inside a run's `error` (a google.rpc.Status).
pub fn run_error_reason(status: &tonic_types::pb::Status) -> String {
    use prost::Message;
    status
        .details
        .iter()
        .find(|any| any.type_url.ends_with("google.rpc.ErrorInfo"))
        .map(|any| tonic_types::pb::ErrorInfo::decode(any.value.as_slice()).expect("an ErrorInfo"))
        .map(|info| {
            assert_eq!(info.domain, "exportd.v1");
            info.reason
        })
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"))
}

/// Every file under `dir` as a `/`-separated path relative to it, sorted (none if it is missing).
pub fn files_under(dir: &std::path::Path) -> Vec<String> {
    fn walk(base: &std::path::Path, dir: &std::path::Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(base, &path, out);
            } else {
                let relative = path.strip_prefix(base).unwrap();
                out.push(
                    relative
                        .components()
                        .map(|c| c.as_os_str().to_string_lossy().into_owned())
                        .collect::<Vec<_>>()
                        .join("/"),
                );
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// A Timestamp as microseconds since the epoch (for ordering).
pub fn micros(time: &Option<prost_types::Timestamp>) -> i64 {
    let time = time.as_ref().expect("a timestamp");
    time.seconds * 1_000_000 + i64::from(time.nanos) / 1000
}

/// Either a usable tool or, outside CI, a note that the test cannot run here.
pub fn required<T>(tool: Option<T>, what: &str) -> Option<T> {
    if tool.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{what} is required under CI=true (.ci/run installs it)"
        );
        eprintln!("note: {what} is not installed; skipping (CI installs it)");
    }
    tool
}

/// The CDM `model.json` schema (a copy kept in the repository, see tests/fixtures/README).
const SCHEMA_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/cdm-model.schema.json");

/// What is wrong with a `model.json` by the CDM schema (nothing: an empty list).
pub fn schema_errors(model: &serde_json::Value) -> Vec<String> {
    let text = std::fs::read_to_string(SCHEMA_PATH).unwrap_or_else(|e| panic!("{SCHEMA_PATH}: {e}"));
    let schema: serde_json::Value = serde_json::from_str(&text).unwrap();
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap();
    validator
        .iter_errors(model)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect()
}
