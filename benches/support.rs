//! Shared machinery of the benchmarks: a real `exportd serve` process per backend, gRPC clients,
//! fresh PostgreSQL databases, and resource readings from /proc. `BENCH_LOG_FILTER` sets the
//! servers' `EXPORTD_LOG_FILTER` (default `warn`), e.g. `sqlx=debug` to see their statements.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use exportd::pb;
use prost_types::value::Kind;
use std::time::Instant;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub const EXE: &str = env!("CARGO_BIN_EXE_exportd");
pub const SECRET: &str = "bench-secret-bench-secret-bench-secret-0123";
pub const SEALING: &str = "bench:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
pub const PG_ADMIN: &str = "postgres://postgres@127.0.0.1:5432/postgres";

#[derive(Clone)]
pub struct Bearer(pub String);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {}", self.0).parse().unwrap());
        Ok(request)
    }
}

pub type Authed = InterceptedService<Channel, Bearer>;

/// One `exportd serve` process on its own database.
pub struct Server {
    /// The `exportd` executable this server runs (the CLI commands use the same one).
    pub exe: std::path::PathBuf,
    pub child: Child,
    pub addr: String,
    pub database_url: String,
    pub data_dir: tempfile::TempDir,
}

impl Server {
    pub fn start(backend: &str, extra_env: &[(&str, &str)]) -> Server {
        Self::start_exe(std::path::Path::new(EXE), backend, extra_env)
    }

    /// Like `start`, with another build of exportd (e.g. an earlier commit's, as a baseline).
    pub fn start_exe(exe: &std::path::Path, backend: &str, extra_env: &[(&str, &str)]) -> Server {
        let data_dir = tempfile::tempdir().unwrap();
        let database_url = match backend {
            "postgres" => fresh_postgres("exportd_bench"),
            _ => format!("sqlite://{}?mode=rwc", data_dir.path().join("exportd.db").display()),
        };
        Self::start_exe_on(exe, data_dir, database_url, extra_env)
    }

    /// Starts on an existing database (e.g. to measure a phase in a fresh process).
    pub fn start_on(data_dir: tempfile::TempDir, database_url: String, extra_env: &[(&str, &str)]) -> Server {
        Self::start_exe_on(std::path::Path::new(EXE), data_dir, database_url, extra_env)
    }

    fn start_exe_on(
        exe: &std::path::Path,
        data_dir: tempfile::TempDir,
        database_url: String,
        extra_env: &[(&str, &str)],
    ) -> Server {
        let mut command = Command::new(exe);
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir.path())
            .env("EXPORTD_DATABASE_URL", &database_url)
            .env("EXPORTD_JWT_HS256_SECRET", SECRET)
            .env("EXPORTD_SEALING_KEYS", SEALING)
            .env(
                "EXPORTD_LOG_FILTER",
                std::env::var("BENCH_LOG_FILTER").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in extra_env {
            command.env(k, v);
        }
        let mut child = command.spawn().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let addr = loop {
            let line = lines.next().expect("server output").unwrap();
            if let Some(addr) = line.strip_prefix("exportd listening on ") {
                break addr.trim().to_string();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Server {
            exe: exe.to_path_buf(),
            child,
            addr,
            database_url,
            data_dir,
        }
    }

    pub fn create_environment(&self, id: &str, kind: &str) {
        let status = Command::new(&self.exe)
            .args(["environment", "create", id, "--kind", kind, "--data-dir"])
            .arg(self.data_dir.path())
            .env("EXPORTD_DATABASE_URL", &self.database_url)
            .env(
                "EXPORTD_LOG_FILTER",
                std::env::var("BENCH_LOG_FILTER").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
    }

    pub async fn channel(&self) -> Channel {
        tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    pub async fn authed(&self, env: &str) -> Authed {
        let roles = std::collections::BTreeMap::from([(env.to_string(), exportd::auth::Role::Admin)]);
        let token =
            exportd::auth::jwt::sign_hs256(SECRET.as_bytes(), "bench", &roles, Duration::from_secs(7200)).unwrap();
        InterceptedService::new(self.channel().await, Bearer(token))
    }

    pub async fn catalog(&self, env: &str) -> pb::catalog_service_client::CatalogServiceClient<Authed> {
        pb::catalog_service_client::CatalogServiceClient::new(self.authed(env).await)
            .max_encoding_message_size(64 << 20)
            .max_decoding_message_size(64 << 20)
    }

    /// Peak resident memory of the server process so far (VmHWM), in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        proc_status_kib(self.child.id(), "VmHWM") as f64 / 1024.0
    }

    /// User + system CPU seconds the server has used.
    pub fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        let fields: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
        let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
        ticks / 100.0
    }

    pub fn stop(mut self) -> (tempfile::TempDir, String) {
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
        let data_dir = std::mem::replace(&mut self.data_dir, tempfile::tempdir().unwrap());
        (data_dir, self.database_url.clone())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn proc_status_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A new, empty PostgreSQL database; returns its URL.
pub fn fresh_postgres(prefix: &str) -> String {
    let pid = std::process::id();
    let name = format!("{prefix}_{pid}");
    // Databases of earlier bench runs (another process id) are dropped, so runs leave at most
    // their own behind.
    let stale = psql(
        PG_ADMIN,
        &format!("SELECT datname FROM pg_database WHERE datname LIKE '{prefix}\\_%' AND datname NOT LIKE '%\\_{pid}'"),
    );
    for old in stale.lines().chain([name.as_str()]) {
        psql(PG_ADMIN, &format!("DROP DATABASE IF EXISTS \"{old}\""));
    }
    psql(PG_ADMIN, &format!("CREATE DATABASE {name}"));
    format!("postgres://postgres@127.0.0.1:5432/{name}")
}

/// Writes PostgreSQL's dirty pages out now, so that a measurement does not pay for a checkpoint
/// that an earlier one made due (each run writes gigabytes of WAL).
pub fn checkpoint_postgres() {
    psql(PG_ADMIN, "CHECKPOINT");
}

pub fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql").args([url, "-Atqc", sql]).output().expect("psql");
    assert!(
        out.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `n` fields of a six-field customer record, deterministic in `i`.
pub fn customer(i: usize) -> (String, String, String, f64, bool, String) {
    let countries = ["ID", "SG", "FR", "US", "DE"];
    (
        format!("c{i:08}"),
        format!("user{i}@example.com"),
        countries[i % countries.len()].to_string(),
        ((i * 7919) % 100_000) as f64 / 10.0,
        i.is_multiple_of(3),
        format!("2026-{:02}-{:02}T10:00:00Z", 1 + i % 12, 1 + i % 28),
    )
}

pub fn table_row(cells: &[String]) -> String {
    format!("| {} |", cells.join(" | "))
}

pub const BATCH: usize = 5000;

fn value(kind: Kind) -> prost_types::Value {
    prost_types::Value { kind: Some(kind) }
}

pub fn record(i: usize) -> prost_types::Struct {
    let (id, email, country, ltv, vip, signup) = customer(i);
    prost_types::Struct {
        fields: [
            ("id".to_string(), value(Kind::StringValue(id))),
            ("email".to_string(), value(Kind::StringValue(email))),
            ("country".to_string(), value(Kind::StringValue(country))),
            ("ltv".to_string(), value(Kind::NumberValue(ltv))),
            ("vip".to_string(), value(Kind::BoolValue(vip))),
            ("signup".to_string(), value(Kind::StringValue(signup))),
        ]
        .into(),
    }
}

pub fn entity_request() -> pb::CreateEntityRequest {
    let field = |name: &str, t: pb::FieldType| pb::EntityField {
        name: name.into(),
        r#type: t as i32,
        ..Default::default()
    };
    pb::CreateEntityRequest {
        parent: "environments/bench".into(),
        entity_id: "customers".into(),
        entity: Some(pb::Entity {
            display_name: "Customers".into(),
            kind: pb::EntityKind::Profile as i32,
            fields: vec![
                field("id", pb::FieldType::String),
                field("email", pb::FieldType::String),
                field("country", pb::FieldType::String),
                field("ltv", pb::FieldType::Double),
                field("vip", pb::FieldType::Bool),
                field("signup", pb::FieldType::Timestamp),
            ],
            primary_key: "id".into(),
            ..Default::default()
        }),
    }
}

/// Streams `n` records in messages of BATCH; returns the seconds the RPC took.
pub async fn write_records(server: &Server, n: usize) -> f64 {
    let mut catalog = server.catalog("bench").await;
    catalog.create_entity(entity_request()).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    // Messages are built on another thread while earlier ones are sent.
    std::thread::spawn(move || {
        let mut start = 0;
        while start < n {
            let end = (start + BATCH).min(n);
            let message = pb::WriteRecordsRequest {
                entity: "environments/bench/entities/customers".into(),
                upserts: (start..end).map(record).collect(),
                deletes: vec![],
            };
            if tx.blocking_send(message).is_err() {
                return;
            }
            start = end;
        }
    });
    let started = Instant::now();
    let response = catalog
        .write_records(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(response.upserted as usize, n);
    seconds
}

pub fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

pub async fn exports_client(server: &Server) -> pb::export_service_client::ExportServiceClient<Authed> {
    pb::export_service_client::ExportServiceClient::new(server.authed("bench").await)
}

pub async fn connections_client(server: &Server) -> pb::connection_service_client::ConnectionServiceClient<Authed> {
    pb::connection_service_client::ConnectionServiceClient::new(server.authed("bench").await)
}

/// Runs an export and waits for its end; returns (seconds, final run).
pub async fn run_and_wait(server: &Server, export: &str) -> (f64, pb::ExportRun) {
    let mut exports = exports_client(server).await;
    let started = Instant::now();
    let run = exports
        .run_export(pb::RunExportRequest {
            name: format!("environments/bench/exports/{export}"),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut watch = exports
        .watch_export_run(pb::WatchExportRunRequest { name: run.name })
        .await
        .unwrap()
        .into_inner();
    let mut last = None;
    while let Some(update) = watch.message().await.unwrap() {
        last = Some(update);
    }
    (started.elapsed().as_secs_f64(), last.unwrap())
}

/// Creates a connection of `kind` in the bench environment.
pub async fn create_connection(
    server: &Server,
    id: &str,
    kind: &str,
    config: &[(&str, &str)],
    secrets: &[(&str, &str)],
) {
    connections_client(server)
        .await
        .create_connection(pb::CreateConnectionRequest {
            parent: "environments/bench".into(),
            connection_id: id.into(),
            connection: Some(pb::Connection {
                display_name: kind.into(),
                r#type: kind.into(),
                config: string_map(config),
                secrets: string_map(secrets),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
}

/// Creates a DATA_OUT export of the bench's `customers` entity over `connection`.
pub async fn create_data_out_export(server: &Server, id: &str, connection: &str, settings: &[(&str, &str)]) {
    exports_client(server)
        .await
        .create_export(pb::CreateExportRequest {
            parent: "environments/bench".into(),
            export_id: id.into(),
            export: Some(pb::Export {
                display_name: id.into(),
                connection: format!("environments/bench/connections/{connection}"),
                kind: pb::ExportKind::DataOut as i32,
                entities: vec!["environments/bench/entities/customers".into()],
                settings: string_map(settings),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
}

/// Key-value pairs as the map type a message field has.
pub fn string_map<M: FromIterator<(String, String)>>(pairs: &[(&str, &str)]) -> M {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}
