//! The `exportd` command line: serve, migrate, mint tokens, manage environments, run exports.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use exportd::auth::Role;
use exportd::auth::jwt::sign_hs256;
use exportd::config::{Flags, LogFormat, Settings};
use exportd::domain::environment::EnvironmentKind;
use exportd::domain::names::is_valid_id;
use exportd::domain::schedule::{CronSchedule, Schedule, Trigger};
use exportd::domain::time::{from_datetime, now_micros, to_datetime};
use exportd::store::{Sealer, Store};

#[derive(Parser)]
#[command(
    name = "exportd",
    version,
    about = "Exports control plane of a customer data platform"
)]
struct Cli {
    /// Data folder (SQLite database, dev secrets, local exports).
    #[arg(long, global = true, env = "EXPORTD_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// TOML configuration file.
    #[arg(long, global = true, env = "EXPORTD_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gRPC service.
    Serve {
        /// Development mode: SQLite and files under the data dir, generated secrets, a `demo`
        /// environment and a printed admin token.
        #[arg(long)]
        dev: bool,
        /// Listen address (default 127.0.0.1:50051).
        #[arg(long, env = "EXPORTD_LISTEN")]
        listen: Option<String>,
    },
    /// Apply database migrations.
    Migrate,
    /// Print a JWT signed with the configured (or dev) HS256 secret; the token is the last line.
    Token {
        /// ENV=ROLE, repeatable; ROLE is admin, contributor or viewer; ENV `*` means all.
        #[arg(long = "env", required = true, value_name = "ENV=ROLE")]
        envs: Vec<String>,
        /// The token's subject (`sub`): who the server records as the actor.
        #[arg(long, default_value = "exportd-cli")]
        sub: String,
        /// Lifetime, a positive number with s, m, h or d, e.g. 15m, 1h, 7d.
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
    /// Manage environments (operator only).
    #[command(subcommand)]
    Environment(EnvironmentCommand),
    /// Key rotation of the stored connection secrets.
    #[command(subcommand)]
    Secrets(SecretsCommand),
    /// Start a run of an export (environments/ENV/exports/ID) and, with --watch, follow it.
    RunExport {
        /// The export's name, e.g. environments/demo/exports/lake.
        name: String,
        /// Show live progress until the run ends; the exit code is 0 only if it SUCCEEDED.
        #[arg(long)]
        watch: bool,
        /// The server's address (default: EXPORTD_SERVER, else this configuration's `listen`).
        #[arg(long, env = "EXPORTD_SERVER")]
        server: Option<String>,
        /// A JWT (default: EXPORTD_TOKEN; else one is minted with the configured HS256 secret).
        #[arg(long, env = "EXPORTD_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
}

#[derive(Subcommand)]
enum EnvironmentCommand {
    /// Create an environment in the server's database.
    Create {
        /// The new environment's id: [a-z][a-z0-9-]{0,62}, e.g. `shop`.
        id: String,
        /// b2c (INDIVIDUAL_CUSTOMERS) or b2b (BUSINESS_ACCOUNTS).
        #[arg(long)]
        kind: String,
        /// A human-readable name (default: the id).
        #[arg(long)]
        display_name: Option<String>,
    },
    /// List environments with their kind and system refresh schedule.
    List,
    /// Change an environment's display name or system refresh schedule.
    Update(UpdateEnvironment),
}

#[derive(Subcommand)]
enum SecretsCommand {
    /// Seal every stored connection secret again with the current key (`sealing_key_id`);
    /// afterwards the older keys can be removed from `sealing_keys`. Safe while servers run.
    Reseal,
}

#[derive(Args)]
struct UpdateEnvironment {
    /// The environment's id, e.g. `shop`.
    id: String,
    /// A new human-readable name.
    #[arg(long)]
    display_name: Option<String>,
    /// Five-field cron expression for the system refresh, e.g. "0 3 * * *".
    #[arg(long, conflicts_with = "no_system_refresh")]
    system_refresh_cron: Option<String>,
    /// IANA time zone of the cron expression, e.g. Europe/Paris (default: UTC).
    #[arg(long, requires = "system_refresh_cron")]
    time_zone: Option<String>,
    /// Switch the system refresh schedule off.
    #[arg(long)]
    no_system_refresh: bool,
}

/// Under load glibc's malloc took a fifth of the server's CPU (arena locks, consolidation);
/// mimalloc's thread-local heaps do the same work for much less (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc (v3) returns freed memory to the system a second after it became free; a run that
/// streams rows through short-lived buffers then holds a second's worth of them: Parquet
/// uploads peaked at 197–211 MiB, 128–160 MiB when freed memory goes back after 10 ms
/// (mimalloc v2's delay), at no cost in time measured (benches/storage.rs). mimalloc's own
/// `MIMALLOC_PURGE_DELAY`, when set, still decides.
fn return_freed_memory_sooner() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    unsafe extern "C" {
        fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
    }
    /// `mi_option_purge_delay` in mimalloc.h's `mi_option_e` (v3), in milliseconds.
    const PURGE_DELAY: std::ffi::c_int = 15;
    // SAFETY: setting an option is allowed at any time; the allocator reads it when it purges.
    unsafe { mi_option_set(PURGE_DELAY, 10) };
}

fn main() -> ExitCode {
    return_freed_memory_sooner();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("exportd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("exportd: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    let mut flags = Flags {
        config: cli.config.clone(),
        data_dir: cli.data_dir.clone(),
        ..Flags::default()
    };
    if let Command::Serve { dev, listen } = &cli.command {
        flags.dev = *dev;
        flags.listen = listen.clone();
    }
    let settings = Settings::load(&flags)?;
    let telemetry = init_logging(&settings, matches!(cli.command, Command::Serve { .. }))?;
    let result = command(cli.command, settings).await;
    telemetry.shutdown();
    result
}

async fn command(command: Command, settings: Settings) -> Result<(), String> {
    match command {
        Command::Serve { .. } => serve(settings).await,
        Command::Migrate => {
            let (store, applied) = open_store(&settings).await?;
            store.close().await;
            let database = database_shown(&settings);
            match applied {
                0 => println!("the schema of {database} is up to date"),
                n => println!("applied {n} migrations to {database}"),
            }
            Ok(())
        }
        Command::Token { envs, sub, ttl } => {
            let secret = settings
                .jwt
                .hs256_secret
                .clone()
                .ok_or("no HS256 secret: set jwt_hs256_secret or point --data-dir at a dev data dir")?;
            let mut roles = BTreeMap::new();
            for entry in &envs {
                let (env, role) = entry
                    .split_once('=')
                    .ok_or_else(|| format!("--env '{entry}': expected ENV=ROLE"))?;
                if env != "*" && !is_valid_id(env) {
                    return Err(format!("--env '{entry}': '{env}' is not an environment id"));
                }
                let role = Role::parse(role)
                    .ok_or_else(|| format!("--env '{entry}': role must be admin, contributor or viewer"))?;
                roles.insert(env.to_string(), role);
            }
            let ttl = parse_duration(&ttl)?;
            let token = sign_hs256(&secret, &sub, &roles, ttl).map_err(|e| e.message)?;
            println!("{token}");
            Ok(())
        }
        Command::Environment(command) => environment(settings, command).await,
        Command::Secrets(SecretsCommand::Reseal) => reseal(settings).await,
        Command::RunExport {
            name,
            watch,
            server,
            token,
        } => {
            let server = server.unwrap_or_else(|| settings.listen.to_string());
            let token = match token {
                Some(token) => token,
                None => mint_for(&settings, &name)?,
            };
            let succeeded = exportd::cli::run_export(&server, &token, &name, watch).await?;
            if succeeded {
                Ok(())
            } else {
                Err("the run did not succeed".into())
            }
        }
    }
}

/// Keeps the span exporter (feature `otlp`) until the command ends, then flushes it.
struct Telemetry {
    #[cfg(feature = "otlp")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    fn shutdown(self) {
        #[cfg(feature = "otlp")]
        if let Some(provider) = self.provider
            && let Err(e) = tokio::task::block_in_place(|| provider.shutdown())
        {
            eprintln!("exportd: cannot send the last spans: {e}");
        }
    }
}

/// Logs go to stderr; `serve` also exports its spans when `otlp_endpoint` is set.
fn init_logging(settings: &Settings, export_spans: bool) -> Result<Telemetry, String> {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer};
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::try_new(&settings.log_filter).unwrap_or_else(|_| EnvFilter::new("info")));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let fmt = match settings.log_format {
        LogFormat::Json => fmt.json().boxed(),
        LogFormat::Text => fmt.boxed(),
    };
    let registry = tracing_subscriber::registry().with(filter).with(fmt);
    #[cfg(feature = "otlp")]
    {
        let provider = match (&settings.otlp_endpoint, export_spans) {
            (Some(endpoint), true) => Some(exportd::telemetry::otlp::provider(endpoint)?),
            _ => None,
        };
        let otel = provider.as_ref().map(exportd::telemetry::otlp::layer);
        let _ = registry.with(otel).try_init();
        Ok(Telemetry { provider })
    }
    #[cfg(not(feature = "otlp"))]
    {
        let _ = export_spans;
        let _ = registry.try_init();
        Ok(Telemetry {})
    }
}

/// The database a command works on, for people: the SQLite file's absolute path, or the
/// PostgreSQL URL without its password.
fn database_shown(settings: &Settings) -> String {
    match exportd::store::sqlite_path(&settings.database_url) {
        Some(path) => std::path::absolute(&path)
            .unwrap_or_else(|_| PathBuf::from(&path))
            .display()
            .to_string(),
        None => exportd::config::redact_url(&settings.database_url),
    }
}

/// Opens the database of a running (or stopped) server for an operator command. Unlike
/// `serve` and `migrate` it never creates one: a command run from the wrong folder must not
/// write to a fresh database that no server uses.
async fn open_existing_store(settings: &Settings) -> Result<Store, String> {
    if let Some(path) = exportd::store::sqlite_path(&settings.database_url)
        && !std::path::Path::new(&path).exists()
    {
        return Err(format!(
            "no exportd database at {} (from the data dir {}): pass --data-dir with the folder \
             `exportd serve` uses (or --config / EXPORTD_DATABASE_URL naming its database), or run \
             `exportd migrate` to create a new database there",
            database_shown(settings),
            settings.data_dir.display()
        ));
    }
    open_store(settings).await.map(|(store, _)| store)
}

/// Opens the database for an operator command; secrets are not needed, so a missing sealing
/// key is fine here. Also says how many migrations it applied.
async fn open_store(settings: &Settings) -> Result<(Store, usize), String> {
    let sealer = Sealer::new(settings.sealing_keys.clone(), settings.sealing_key_id.clone())?;
    let store = Store::open(&settings.database_url, sealer, settings.read_cache_entries).await?;
    let applied = store.migrate().await?;
    Ok((store, applied))
}

async fn serve(settings: Settings) -> Result<(), String> {
    let dev = settings.dev;
    let secret = settings.jwt.hs256_secret.clone();
    let state = exportd::server::open_state(settings).await?;
    // `environment create` may race us from another process: "already exists" is fine.
    if dev
        && state
            .store
            .get_environment("demo")
            .await
            .map_err(|e| e.message)?
            .is_none()
    {
        match state
            .store
            .create_environment("demo", "Demo", EnvironmentKind::IndividualCustomers)
            .await
        {
            Ok(_) => {}
            Err(e) if e.code == exportd::error::ErrorCode::AlreadyExists => {}
            Err(e) => return Err(e.message),
        }
    }
    let server = exportd::server::start(state).await?;
    tracing::info!(addr = %server.addr, "exportd is serving");
    // Before the "listening" line, which tools wait for: when they see it, both are up.
    if let Some(metrics) = server.metrics_addr {
        println!("exportd metrics on http://{metrics}/metrics");
    }
    println!("exportd listening on {}", server.addr);
    if dev && let Some(secret) = secret {
        let roles = BTreeMap::from([("demo".to_string(), Role::Admin)]);
        let token = sign_hs256(&secret, "dev-admin", &roles, Duration::from_secs(24 * 3600)).map_err(|e| e.message)?;
        println!("dev mode: environment `demo` (INDIVIDUAL_CUSTOMERS); an admin token for it, valid 24h:");
        println!("export EXPORTD_TOKEN={token}");
    }
    let stopper = server.stopper();
    tokio::spawn(async move {
        exportd::server::termination_signal().await;
        tracing::info!("shutdown requested: no new connections; finishing in-flight RPCs");
        let _ = stopper.send(true);
    });
    server.wait().await?;
    tracing::info!("exportd stopped");
    Ok(())
}

async fn environment(settings: Settings, command: EnvironmentCommand) -> Result<(), String> {
    let store = open_existing_store(&settings).await?;
    let database = database_shown(&settings);
    let result = match command {
        EnvironmentCommand::Create { id, kind, display_name } => {
            if !is_valid_id(&id) {
                return Err(format!("'{id}' is not a valid id: use [a-z][a-z0-9-]{{0,62}}"));
            }
            let kind = EnvironmentKind::from_cli(&kind).ok_or_else(|| format!("--kind '{kind}': use b2c or b2b"))?;
            let display_name = display_name.unwrap_or_else(|| id.clone());
            let env = store
                .create_environment(&id, &display_name, kind)
                .await
                .map_err(|e| e.message)?;
            println!("created environments/{} ({}) in {database}", env.id, env.kind.as_str());
            Ok(())
        }
        EnvironmentCommand::List => {
            let (items, _) = store
                .list_environments(None, 0, u64::MAX >> 1)
                .await
                .map_err(|e| e.message)?;
            println!("{:<24} {:<22} {:<30} SYSTEM REFRESH", "ID", "KIND", "DISPLAY NAME");
            for env in items {
                let schedule = env
                    .system_refresh_schedule
                    .as_ref()
                    .map_or_else(|| "off".to_string(), Schedule::to_string);
                println!(
                    "{:<24} {:<22} {:<30} {}",
                    env.id,
                    env.kind.as_str(),
                    env.display_name,
                    schedule
                );
            }
            Ok(())
        }
        EnvironmentCommand::Update(update) => {
            let mut env = store
                .get_environment(&update.id)
                .await
                .map_err(|e| e.message)?
                .ok_or_else(|| format!("environment '{}' not found", update.id))?;
            if let Some(name) = update.display_name {
                env.display_name = name;
            }
            if update.no_system_refresh {
                env.system_refresh_schedule = None;
            }
            if let Some(expression) = update.system_refresh_cron {
                let schedule = Schedule {
                    enabled: true,
                    trigger: Trigger::Cron(CronSchedule {
                        expression,
                        time_zone: update.time_zone.unwrap_or_default(),
                    }),
                };
                let problems = schedule.validate();
                if !problems.is_empty() {
                    let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
                    return Err(text.join("; "));
                }
                env.system_refresh_schedule = Some(schedule);
            }
            env.next_system_refresh_at = env
                .system_refresh_schedule
                .as_ref()
                .and_then(|s| s.next_run_time(to_datetime(now_micros())))
                .map(from_datetime);
            let env = store.update_environment(&env).await.map_err(|e| e.message)?;
            match env.next_system_refresh_at {
                Some(next) => println!(
                    "updated environments/{} in {database}; next system refresh at {}",
                    env.id,
                    to_datetime(next).to_rfc3339()
                ),
                None => println!("updated environments/{} in {database}; system refresh off", env.id),
            }
            Ok(())
        }
    };
    store.close().await;
    result
}

/// Prints what it did; fails when some secrets were sealed with a key that is not configured
/// (they are named with their key id, never their values).
async fn reseal(settings: Settings) -> Result<(), String> {
    settings.check_can_seal()?;
    let (store, _) = open_store(&settings).await?;
    let report = store.reseal_secrets().await.map_err(|e| e.message);
    store.close().await;
    let report = report?;
    println!(
        "resealed {} connection secrets with key '{}'; {} already used it",
        report.resealed, settings.sealing_key_id, report.current
    );
    if report.unopenable.is_empty() {
        return Ok(());
    }
    for (connection, key_id) in &report.unopenable {
        eprintln!("{connection}: sealed with key '{key_id}', which is not configured");
    }
    Err(format!(
        "{} connections could not be resealed: add the keys they name to sealing_keys and run it again",
        report.unopenable.len()
    ))
}

/// A short-lived admin token for the export's environment, signed with the configured (or dev)
/// HS256 secret: whoever can read that secret can mint any token anyway.
fn mint_for(settings: &Settings, export: &str) -> Result<String, String> {
    let name = exportd::domain::names::ExportName::parse("name", export).map_err(|e| e.message)?;
    let secret = settings
        .jwt
        .hs256_secret
        .clone()
        .ok_or("no token: pass --token or set EXPORTD_TOKEN (no HS256 secret is configured to mint one)")?;
    let roles = BTreeMap::from([(name.env.clone(), Role::Admin)]);
    sign_hs256(&secret, "exportd-cli", &roles, Duration::from_secs(3600)).map_err(|e| e.message)
}

/// `15m`, `1h`, `30s`, `7d`: a positive lifetime of at most 10 years.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("--ttl '{text}': use a number with s, m, h or d (e.g. 15m)");
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?);
    let n: u64 = number.parse().map_err(|_| bad())?;
    let unit_seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(bad()),
    };
    const MAX_SECONDS: u64 = 10 * 366 * 86400;
    match n.checked_mul(unit_seconds) {
        Some(0) => Err(format!("--ttl '{text}': must be positive")),
        Some(seconds) if seconds <= MAX_SECONDS => Ok(Duration::from_secs(seconds)),
        _ => Err(format!("--ttl '{text}': at most 10 years (3660d)")),
    }
}
