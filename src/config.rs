//! One settings struct, assembled as defaults < config file (TOML) < `EXPORTD_*` environment
//! variables < command-line flags, and validated before anything starts.
//!
//! The README's configuration table lists every setting; `SETTINGS` below is its source.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Deserialize;

use crate::domain::output_area::{LocalRoots, normalize};

/// Reads the SQLite store keeps in memory between writes, unless configured.
pub const DEFAULT_READ_CACHE_ENTRIES: usize = 16_384;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Everything the service needs to run. Secret material is held but never printed: Debug is
/// written by hand below.
#[derive(Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    /// Where Prometheus metrics are served (`/metrics`); None: not served.
    pub metrics_listen: Option<SocketAddr>,
    /// OTLP/gRPC collector that spans are exported to (feature `otlp`); None: not exported.
    pub otlp_endpoint: Option<String>,
    pub data_dir: PathBuf,
    pub database_url: String,
    pub dev: bool,
    pub log_format: LogFormat,
    pub log_filter: String,
    pub jwt: JwtSettings,
    /// Sealing keys by key id; `sealing_key_id` seals new secrets, every key can open old ones.
    pub sealing_keys: BTreeMap<String, [u8; 32]>,
    pub sealing_key_id: String,
    pub max_message_bytes: usize,
    pub workers: usize,
    pub run_lease_seconds: u64,
    /// Absolute and normalised.
    pub exports_root: PathBuf,
    /// Folders under which a `local-files` connection's `root` may lie; absolute, normalised.
    pub allowed_roots: Vec<PathBuf>,
    /// Permission bits of exported files; their folders get the same plus `x` where `r` is set.
    pub export_file_mode: u32,
    pub shutdown_grace_seconds: u64,
    /// Reads kept between writes on SQLite (0: none).
    pub read_cache_entries: usize,
    /// How long one evaluation of a segment rule over its entity may take.
    pub rule_evaluation_budget_seconds: u64,
    /// Batches of rule evaluation that may run at once (on the blocking pool).
    pub rule_evaluation_threads: usize,
    /// Audit events older than this many days are purged (PRODUCT.md §15).
    pub audit_retention_days: u64,
}

#[derive(Clone, Default)]
pub struct JwtSettings {
    pub hs256_secret: Option<Vec<u8>>,
    /// PEM public keys (RSA, EC P-256 or Ed25519). The file stem is the key's `kid`.
    pub public_key_files: Vec<PathBuf>,
    pub jwks_file: Option<PathBuf>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub leeway_seconds: u64,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("listen", &self.listen)
            .field("metrics_listen", &self.metrics_listen)
            .field("otlp_endpoint", &self.otlp_endpoint.as_deref().map(redact_url))
            .field("data_dir", &self.data_dir)
            .field("database_url", &redact_url(&self.database_url))
            .field("dev", &self.dev)
            .field("log_format", &self.log_format)
            .field(
                "jwt.hs256_secret",
                &self.jwt.hs256_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("jwt.public_key_files", &self.jwt.public_key_files)
            .field("jwt.jwks_file", &self.jwt.jwks_file)
            .field("jwt.issuer", &self.jwt.issuer)
            .field("jwt.audience", &self.jwt.audience)
            .field("sealing_key_ids", &self.sealing_keys.keys().collect::<Vec<_>>())
            .field("sealing_key_id", &self.sealing_key_id)
            .field("workers", &self.workers)
            .field("exports_root", &self.exports_root)
            .field("allowed_roots", &self.allowed_roots)
            .field("export_file_mode", &format_args!("{:04o}", self.export_file_mode))
            .finish_non_exhaustive()
    }
}

/// Hides the password of a database URL (`postgres://user:secret@host` → `postgres://user:***@host`).
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!("{}{}:***{}", &url[..scheme_end + 3], &userinfo[..colon], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// One documented setting: its TOML key, environment variable and meaning. The README table
/// and the environment overlay are both driven by this list, so they cannot drift apart.
pub struct SettingDoc {
    pub key: &'static str,
    pub default: &'static str,
    pub description: &'static str,
}

pub const SETTINGS: &[SettingDoc] = &[
    SettingDoc {
        key: "listen",
        default: "127.0.0.1:50051",
        description: "gRPC listen address",
    },
    SettingDoc {
        key: "metrics_listen",
        default: "(off)",
        description: "address of the Prometheus metrics endpoint `http://<metrics_listen>/metrics`",
    },
    SettingDoc {
        key: "otlp_endpoint",
        default: "(off)",
        description: "OpenTelemetry collector (OTLP/gRPC, e.g. `http://collector:4317`) that RPC, run and target-request spans are exported to; needs a build with the cargo feature `otlp`",
    },
    SettingDoc {
        key: "data_dir",
        default: "./exportd-data",
        description: "folder for the SQLite database, dev secrets and local exports",
    },
    SettingDoc {
        key: "database_url",
        default: "sqlite://<data_dir>/exportd.db",
        description: "`sqlite://PATH` or `postgres://user@host/db`",
    },
    SettingDoc {
        key: "log_format",
        default: "text",
        description: "`text` or `json`",
    },
    SettingDoc {
        key: "log_filter",
        default: "info,sqlx=warn,sea_orm=warn",
        description: "tracing filter (RUST_LOG syntax)",
    },
    SettingDoc {
        key: "jwt_hs256_secret",
        default: "(dev: generated)",
        description: "shared HS256 secret (at least 32 bytes)",
    },
    SettingDoc {
        key: "jwt_public_key_files",
        default: "(none)",
        description: "comma-separated PEM public keys (RS256, ES256, EdDSA); file stem = `kid`",
    },
    SettingDoc {
        key: "jwt_jwks_file",
        default: "(none)",
        description: "a JWKS file of public keys, chosen by `kid`",
    },
    SettingDoc {
        key: "jwt_issuer",
        default: "(not checked)",
        description: "required `iss` claim",
    },
    SettingDoc {
        key: "jwt_audience",
        default: "(not checked)",
        description: "required `aud` claim",
    },
    SettingDoc {
        key: "jwt_leeway_seconds",
        default: "30",
        description: "clock skew allowed on `exp`/`nbf` (at most 300)",
    },
    SettingDoc {
        key: "sealing_keys",
        default: "(dev: generated)",
        description: "secret-sealing keys `kid:base64(32 bytes)`, comma-separated",
    },
    SettingDoc {
        key: "sealing_key_id",
        default: "(the only key)",
        description: "which sealing key seals new secrets (others still open old ones)",
    },
    SettingDoc {
        key: "max_message_bytes",
        default: "16777216",
        description: "largest accepted request message",
    },
    SettingDoc {
        key: "workers",
        default: "(number of cores)",
        description: "concurrent export runs in this process (0: API only)",
    },
    SettingDoc {
        key: "run_lease_seconds",
        default: "30",
        description: "a run whose worker stops renewing for this long is taken over",
    },
    SettingDoc {
        key: "exports_root",
        default: "<data_dir>/exports",
        description: "where `local-files` connections without `root` write: `<exports_root>/<environment>/<connection>`",
    },
    SettingDoc {
        key: "allowed_roots",
        default: "<exports_root> (and <data_dir> under --dev)",
        description: "comma-separated absolute folders under which a `local-files` connection's `root` may lie",
    },
    SettingDoc {
        key: "export_file_mode",
        default: "0600",
        description: "octal permission bits of exported files (folders get `x` where `r` is set: 0600 gives 0700)",
    },
    SettingDoc {
        key: "shutdown_grace_seconds",
        default: "30",
        description: "how long shutdown waits for in-flight RPCs and runs",
    },
    SettingDoc {
        key: "read_cache_entries",
        default: "16384",
        description: "SQLite only: reads served from memory until the next write (0: every read goes to the database)",
    },
    SettingDoc {
        key: "rule_evaluation_budget_seconds",
        default: "600",
        description: "how long evaluating one segment rule over its entity may take before the create, update or refresh fails",
    },
    SettingDoc {
        key: "rule_evaluation_threads",
        default: "(number of cores)",
        description: "segment rule evaluations running at once, off the threads that answer RPCs",
    },
    SettingDoc {
        key: "audit_retention_days",
        default: "400",
        description: "audit events older than this many days are purged (checked every hour)",
    },
];

/// Values from any one source; later sources override earlier ones field by field.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layer {
    pub listen: Option<String>,
    pub metrics_listen: Option<String>,
    pub otlp_endpoint: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub database_url: Option<String>,
    pub log_format: Option<LogFormat>,
    pub log_filter: Option<String>,
    pub jwt_hs256_secret: Option<String>,
    #[serde(default, deserialize_with = "list_setting")]
    pub jwt_public_key_files: Option<Vec<PathBuf>>,
    pub jwt_jwks_file: Option<PathBuf>,
    pub jwt_issuer: Option<String>,
    pub jwt_audience: Option<String>,
    pub jwt_leeway_seconds: Option<u64>,
    #[serde(default, deserialize_with = "list_setting")]
    pub sealing_keys: Option<Vec<String>>,
    pub sealing_key_id: Option<String>,
    pub max_message_bytes: Option<usize>,
    pub workers: Option<usize>,
    pub run_lease_seconds: Option<u64>,
    pub exports_root: Option<PathBuf>,
    pub allowed_roots: Option<Vec<PathBuf>>,
    pub export_file_mode: Option<String>,
    pub shutdown_grace_seconds: Option<u64>,
    pub read_cache_entries: Option<usize>,
    pub rule_evaluation_budget_seconds: Option<u64>,
    pub rule_evaluation_threads: Option<usize>,
    pub audit_retention_days: Option<u64>,
}

/// A list setting, in either form API.md gives: a comma-separated string (the README's and the
/// `EXPORTD_*` variables' form, e.g. `sealing_keys = "k1:…,k2:…"`) or a TOML array of strings.
/// Items are trimmed; empty ones are dropped.
fn list_setting<'de, D, T>(deserializer: D) -> Result<Option<Vec<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: From<String>,
{
    struct ListVisitor;

    impl<'de> serde::de::Visitor<'de> for ListVisitor {
        type Value = Vec<String>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a comma-separated string or an array of strings")
        }

        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Vec<String>, E> {
            Ok(text.split(',').map(str::to_string).collect())
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
            let mut items = Vec::new();
            while let Some(item) = seq.next_element::<String>()? {
                items.push(item);
            }
            Ok(items)
        }
    }

    let items = deserializer.deserialize_any(ListVisitor)?;
    Ok(Some(
        items
            .into_iter()
            .map(|item| item.trim().to_string())
            .filter(|item| !item.is_empty())
            .map(T::from)
            .collect(),
    ))
}

macro_rules! overlay {
    ($base:ident, $top:ident, $($field:ident),*) => {
        $( if $top.$field.is_some() { $base.$field = $top.$field; } )*
    };
}

impl Layer {
    fn merge(mut self, top: Layer) -> Layer {
        overlay!(
            self,
            top,
            listen,
            metrics_listen,
            otlp_endpoint,
            data_dir,
            database_url,
            log_format,
            log_filter,
            jwt_hs256_secret,
            jwt_public_key_files,
            jwt_jwks_file,
            jwt_issuer,
            jwt_audience,
            jwt_leeway_seconds,
            sealing_keys,
            sealing_key_id,
            max_message_bytes,
            workers,
            run_lease_seconds,
            exports_root,
            allowed_roots,
            export_file_mode,
            shutdown_grace_seconds,
            read_cache_entries,
            rule_evaluation_budget_seconds,
            rule_evaluation_threads,
            audit_retention_days
        );
        self
    }

    /// Reads `EXPORTD_<KEY>` for every documented key.
    pub fn from_env(vars: &dyn Fn(&str) -> Option<String>) -> Result<Layer, String> {
        let mut table = toml::Table::new();
        for setting in SETTINGS {
            let var = format!("EXPORTD_{}", setting.key.to_uppercase());
            let Some(raw) = vars(&var) else { continue };
            let value = match setting.key {
                "jwt_public_key_files" | "sealing_keys" | "allowed_roots" => toml::Value::Array(
                    raw.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(|s| toml::Value::String(s.into()))
                        .collect(),
                ),
                "jwt_leeway_seconds"
                | "max_message_bytes"
                | "workers"
                | "run_lease_seconds"
                | "shutdown_grace_seconds"
                | "read_cache_entries"
                | "rule_evaluation_budget_seconds"
                | "rule_evaluation_threads"
                | "audit_retention_days" => toml::Value::Integer(
                    raw.trim()
                        .parse()
                        .map_err(|_| format!("{var}: '{raw}' is not a whole number"))?,
                ),
                _ => toml::Value::String(raw),
            };
            table.insert(setting.key.to_string(), value);
        }
        Layer::deserialize(toml::Value::Table(table)).map_err(|e| format!("environment: {e}"))
    }

    pub fn from_file(path: &Path) -> Result<Layer, String> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("config file {}: {e}", path.display()))
    }
}

/// What the command line contributes.
#[derive(Debug, Default, Clone)]
pub struct Flags {
    pub config: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub listen: Option<String>,
    pub dev: bool,
}

/// The file in a dev data dir holding the generated HS256 and sealing secrets.
pub const DEV_SECRETS_FILE: &str = "dev-secrets.toml";

#[derive(Debug, serde::Serialize, Deserialize)]
struct DevSecrets {
    jwt_hs256_secret: String,
    sealing_key: String,
}

impl Settings {
    /// Loads settings for a command. `create_dev_secrets` is true only for `serve --dev`, which
    /// may create the data dir and its secrets; every other command only reads them.
    pub fn load(flags: &Flags) -> Result<Settings, String> {
        Self::load_with_env(flags, &|name| std::env::var(name).ok())
    }

    pub fn load_with_env(flags: &Flags, vars: &dyn Fn(&str) -> Option<String>) -> Result<Settings, String> {
        let mut layer = Layer::default();
        let config_path = flags
            .config
            .clone()
            .or_else(|| vars("EXPORTD_CONFIG").map(PathBuf::from));
        if let Some(path) = &config_path {
            layer = layer.merge(Layer::from_file(path)?);
        }
        layer = layer.merge(Layer::from_env(vars)?);
        let cli = Layer {
            data_dir: flags.data_dir.clone(),
            listen: flags.listen.clone(),
            ..Layer::default()
        };
        layer = layer.merge(cli);
        Self::resolve(layer, flags.dev)
    }

    fn resolve(layer: Layer, dev: bool) -> Result<Settings, String> {
        let data_dir = layer.data_dir.unwrap_or_else(|| PathBuf::from("./exportd-data"));
        let listen_text = layer.listen.unwrap_or_else(|| "127.0.0.1:50051".to_string());
        let listen: SocketAddr = listen_text
            .parse()
            .map_err(|_| format!("listen: '{listen_text}' is not an address like 127.0.0.1:50051"))?;
        let metrics_listen = match layer.metrics_listen.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(text) => Some(
                text.parse::<SocketAddr>()
                    .map_err(|_| format!("metrics_listen: '{text}' is not an address like 0.0.0.0:9090"))?,
            ),
        };
        let otlp_endpoint = layer.otlp_endpoint.filter(|e| !e.trim().is_empty());
        if otlp_endpoint.is_some() && !cfg!(feature = "otlp") {
            return Err(
                "otlp_endpoint is set, but this exportd was built without OpenTelemetry (cargo feature `otlp`)".into(),
            );
        }
        let database_url = layer
            .database_url
            .unwrap_or_else(|| format!("sqlite://{}?mode=rwc", data_dir.join("exportd.db").display()));

        if dev {
            ensure_dev_secrets(&data_dir)?;
        }
        let dev_secrets = read_dev_secrets(&data_dir)?;

        let hs256_secret = match (layer.jwt_hs256_secret, &dev_secrets) {
            (Some(secret), _) => Some(secret.into_bytes()),
            (None, Some(dev)) => Some(dev.jwt_hs256_secret.clone().into_bytes()),
            (None, None) => None,
        };
        if let Some(secret) = &hs256_secret
            && secret.len() < 32
        {
            return Err("jwt_hs256_secret must be at least 32 bytes".into());
        }
        let leeway_seconds = layer.jwt_leeway_seconds.unwrap_or(30);
        if leeway_seconds > 300 {
            return Err("jwt_leeway_seconds must be at most 300".into());
        }
        let jwt = JwtSettings {
            hs256_secret,
            public_key_files: layer.jwt_public_key_files.unwrap_or_default(),
            jwks_file: layer.jwt_jwks_file,
            issuer: layer.jwt_issuer,
            audience: layer.jwt_audience,
            leeway_seconds,
        };

        let mut sealing_keys = BTreeMap::new();
        let configured_keys = layer.sealing_keys.unwrap_or_default();
        for entry in &configured_keys {
            let (kid, key) = parse_sealing_key(entry)?;
            sealing_keys.insert(kid, key);
        }
        if let Some(dev) = &dev_secrets {
            let (kid, key) = parse_sealing_key(&dev.sealing_key)?;
            sealing_keys.entry(kid).or_insert(key);
        }
        let sealing_key_id = match layer.sealing_key_id {
            Some(kid) if sealing_keys.contains_key(&kid) => kid,
            Some(kid) => return Err(format!("sealing_key_id '{kid}' is not among sealing_keys")),
            None if !configured_keys.is_empty() && sealing_keys.len() > 1 && configured_keys.len() > 1 => {
                return Err(
                    "several sealing_keys are configured: set sealing_key_id to the one that seals new secrets".into(),
                );
            }
            None => match configured_keys.first() {
                Some(entry) => parse_sealing_key(entry)?.0,
                None => sealing_keys.keys().next().cloned().unwrap_or_default(),
            },
        };

        let workers = layer
            .workers
            .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2));
        let run_lease_seconds = layer.run_lease_seconds.unwrap_or(30);
        let rule_evaluation_budget_seconds = layer.rule_evaluation_budget_seconds.unwrap_or(600);
        if rule_evaluation_budget_seconds == 0 {
            return Err("rule_evaluation_budget_seconds must be at least 1".into());
        }
        let audit_retention_days = layer.audit_retention_days.unwrap_or(400);
        if audit_retention_days == 0 {
            return Err("audit_retention_days must be at least 1".into());
        }
        if run_lease_seconds < 2 {
            return Err("run_lease_seconds must be at least 2".into());
        }
        // Relative folders are taken from where the server starts, once: every later check
        // compares normalised absolute paths.
        let cwd = std::env::current_dir().map_err(|e| format!("cannot read the current folder: {e}"))?;
        let exports_root = normalize(&layer.exports_root.unwrap_or_else(|| data_dir.join("exports")), &cwd);
        let allowed_roots = match layer.allowed_roots {
            Some(list) => list
                .iter()
                .map(|root| {
                    if root.is_absolute() {
                        Ok(normalize(root, &cwd))
                    } else {
                        Err(format!("allowed_roots: '{}' is not an absolute folder", root.display()))
                    }
                })
                .collect::<Result<Vec<_>, _>>()?,
            None if dev => vec![exports_root.clone(), normalize(&data_dir, &cwd)],
            None => vec![exports_root.clone()],
        };
        let export_file_mode = match &layer.export_file_mode {
            Some(text) => parse_file_mode(text)?,
            None => DEFAULT_EXPORT_FILE_MODE,
        };
        Ok(Settings {
            listen,
            metrics_listen,
            otlp_endpoint,
            exports_root,
            allowed_roots,
            export_file_mode,
            data_dir,
            database_url,
            dev,
            log_format: layer.log_format.unwrap_or(LogFormat::Text),
            log_filter: layer
                .log_filter
                .unwrap_or_else(|| "info,sqlx=warn,sea_orm=warn".to_string()),
            jwt,
            sealing_keys,
            sealing_key_id,
            max_message_bytes: layer.max_message_bytes.unwrap_or(16 * 1024 * 1024),
            workers,
            run_lease_seconds,
            shutdown_grace_seconds: layer.shutdown_grace_seconds.unwrap_or(30),
            read_cache_entries: layer.read_cache_entries.unwrap_or(DEFAULT_READ_CACHE_ENTRIES),
            rule_evaluation_budget_seconds,
            rule_evaluation_threads: layer
                .rule_evaluation_threads
                .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2))
                .max(1),
            audit_retention_days,
        })
    }

    /// The serving checks that other commands do not need.
    pub fn check_can_serve(&self) -> Result<(), String> {
        if self.jwt.hs256_secret.is_none() && self.jwt.public_key_files.is_empty() && self.jwt.jwks_file.is_none() {
            return Err(
                "no JWT verification key: set jwt_hs256_secret, jwt_public_key_files or jwt_jwks_file (or use --dev)"
                    .into(),
            );
        }
        self.check_can_seal()
    }

    pub fn check_can_seal(&self) -> Result<(), String> {
        if self.sealing_keys.is_empty() {
            return Err("no secret-sealing key: set sealing_keys (or use --dev)".into());
        }
        Ok(())
    }

    pub fn is_sqlite(&self) -> bool {
        self.database_url.starts_with("sqlite:")
    }

    /// What `local-files` connections may write under.
    pub fn local_roots(&self) -> LocalRoots<'_> {
        LocalRoots {
            exports_root: &self.exports_root,
            allowed: &self.allowed_roots,
        }
    }
}

/// Exported files are the tenants' data: readable by the server's user only, unless the
/// operator says otherwise.
pub const DEFAULT_EXPORT_FILE_MODE: u32 = crate::file_modes::PRIVATE_FILE;

/// `export_file_mode`: octal permission bits (`0640`, `640`). The server itself must be able
/// to read and write what it exported (it reads model.json back), so `u+rw` is required.
fn parse_file_mode(text: &str) -> Result<u32, String> {
    let bad = || format!("export_file_mode: '{text}' is not octal permission bits like 0600 or 0640");
    let digits = text.trim();
    if digits.is_empty() || digits.len() > 4 || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err(bad());
    }
    let mode = u32::from_str_radix(digits, 8).map_err(|_| bad())?;
    if mode > 0o777 {
        return Err(format!(
            "export_file_mode: '{text}' may only set permission bits (at most 0777)"
        ));
    }
    if mode & 0o600 != 0o600 {
        return Err(format!(
            "export_file_mode: '{text}' must let the server's own user read and write (0600 at least)"
        ));
    }
    Ok(mode)
}

fn parse_sealing_key(entry: &str) -> Result<(String, [u8; 32]), String> {
    let (kid, encoded) = entry
        .split_once(':')
        .ok_or_else(|| "sealing_keys entries look like `kid:base64key`".to_string())?;
    if kid.is_empty() || !kid.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(format!("sealing key id '{kid}' must be letters, digits, '-' or '_'"));
    }
    let bytes = BASE64
        .decode(encoded.trim())
        .map_err(|_| format!("sealing key '{kid}' is not valid base64"))?;
    let key: [u8; 32] = bytes
        .try_into()
        .map_err(|_| format!("sealing key '{kid}' must be 32 bytes"))?;
    Ok((kid.to_string(), key))
}

fn read_dev_secrets(data_dir: &Path) -> Result<Option<DevSecrets>, String> {
    let path = data_dir.join(DEV_SECRETS_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => toml::from_str(&text)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Generates the dev HS256 secret and sealing key once, readable by the owner only.
fn ensure_dev_secrets(data_dir: &Path) -> Result<(), String> {
    use rand::RngCore;
    crate::file_modes::create_private_folder(data_dir)
        .map_err(|e| format!("cannot create {}: {e}", data_dir.display()))?;
    let path = data_dir.join(DEV_SECRETS_FILE);
    if path.exists() {
        return Ok(());
    }
    let mut secret = [0u8; 32];
    let mut key = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut secret);
    rand::thread_rng().fill_bytes(&mut key);
    let secrets = DevSecrets {
        jwt_hs256_secret: hex::encode(secret),
        sealing_key: format!("dev1:{}", BASE64.encode(key)),
    };
    let text = toml::to_string(&secrets).map_err(|e| e.to_string())?;
    write_private_file(&path, text.as_bytes()).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Creates a file with mode 0600 from the start, so the secret is never readable by others.
fn write_private_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn environment_overrides_file_and_flags_override_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("exportd.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:7000\"\nworkers = 3\nlog_format = \"json\"\n",
        )
        .unwrap();
        let flags = Flags {
            config: Some(file),
            data_dir: Some(dir.path().into()),
            ..Flags::default()
        };
        let vars = env_of(&[("EXPORTD_WORKERS", "5"), ("EXPORTD_LISTEN", "127.0.0.1:7001")]);
        let settings = Settings::load_with_env(&flags, &vars).unwrap();
        assert_eq!(settings.workers, 5);
        assert_eq!(settings.listen.port(), 7001);
        assert_eq!(settings.log_format, LogFormat::Json);

        let flags = Flags {
            listen: Some("127.0.0.1:7002".into()),
            ..flags
        };
        assert_eq!(Settings::load_with_env(&flags, &vars).unwrap().listen.port(), 7002);
    }

    #[test]
    fn unknown_file_keys_and_bad_values_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("exportd.toml");
        std::fs::write(&file, "listne = \"x\"\n").unwrap();
        let flags = Flags {
            config: Some(file),
            ..Flags::default()
        };
        assert!(
            Settings::load_with_env(&flags, &env_of(&[]))
                .unwrap_err()
                .contains("listne")
        );
        let flags = Flags {
            data_dir: Some(dir.path().into()),
            ..Flags::default()
        };
        let err = Settings::load_with_env(&flags, &env_of(&[("EXPORTD_WORKERS", "many")])).unwrap_err();
        assert!(err.contains("EXPORTD_WORKERS"), "{err}");
    }

    #[test]
    fn dev_secrets_are_created_private_and_found_by_later_commands() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("dev-data");
        let dev = Flags {
            data_dir: Some(dir.clone()),
            dev: true,
            ..Flags::default()
        };
        let first = Settings::load_with_env(&dev, &env_of(&[])).unwrap();
        first.check_can_serve().unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&dir.join(DEV_SECRETS_FILE)), 0o600);
            assert_eq!(mode(&dir), 0o700, "the data dir is the server's alone");
        }
        let later = Flags {
            data_dir: Some(dir.clone()),
            ..Flags::default()
        };
        let second = Settings::load_with_env(&later, &env_of(&[])).unwrap();
        assert_eq!(first.jwt.hs256_secret, second.jwt.hs256_secret);
        assert_eq!(first.sealing_keys, second.sealing_keys);
        assert!(!format!("{second:?}").contains(&String::from_utf8(second.jwt.hs256_secret.clone().unwrap()).unwrap()));
    }

    #[test]
    fn local_files_roots_default_to_the_exports_root_and_the_dev_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let flags = Flags {
            data_dir: Some(data.join("./x/..")),
            ..Flags::default()
        };
        let settings = Settings::load_with_env(&flags, &env_of(&[])).unwrap();
        assert_eq!(settings.exports_root, data.join("exports"), "normalised");
        assert_eq!(settings.allowed_roots, vec![data.join("exports")]);
        assert_eq!(settings.export_file_mode, 0o600);
        let dev = Flags {
            dev: true,
            ..flags.clone()
        };
        let settings = Settings::load_with_env(&dev, &env_of(&[])).unwrap();
        assert_eq!(settings.allowed_roots, vec![data.join("exports"), data.clone()]);

        let vars = env_of(&[
            ("EXPORTD_ALLOWED_ROOTS", "/srv/a/, /srv/b/../c"),
            ("EXPORTD_EXPORT_FILE_MODE", "640"),
        ]);
        let settings = Settings::load_with_env(&flags, &vars).unwrap();
        assert_eq!(
            settings.allowed_roots,
            vec![PathBuf::from("/srv/a"), PathBuf::from("/srv/c")]
        );
        assert_eq!(settings.export_file_mode, 0o640);
        let vars = env_of(&[("EXPORTD_ALLOWED_ROOTS", "")]);
        assert!(Settings::load_with_env(&flags, &vars).unwrap().allowed_roots.is_empty());
        let vars = env_of(&[("EXPORTD_ALLOWED_ROOTS", "relative/path")]);
        assert!(
            Settings::load_with_env(&flags, &vars)
                .unwrap_err()
                .contains("allowed_roots")
        );
        for bad in ["0400", "rw", "0o600", "1777", "99"] {
            let pairs = [("EXPORTD_EXPORT_FILE_MODE", bad)];
            let vars = env_of(&pairs);
            let err = Settings::load_with_env(&flags, &vars).unwrap_err();
            assert!(err.contains("export_file_mode"), "{bad}: {err}");
        }
    }

    #[test]
    fn list_settings_take_a_comma_separated_string_or_an_array() {
        let dir = tempfile::tempdir().unwrap();
        let key = |byte: u8| BASE64.encode([byte; 32]);
        let file = dir.path().join("exportd.toml");
        for (keys, files) in [
            (
                format!("sealing_keys = \" k1:{}, k2:{} \"", key(1), key(2)),
                "jwt_public_key_files = \"/keys/a.pem,/keys/b.pem\"",
            ),
            (
                format!("sealing_keys = [\"k1:{}\", \"k2:{}\"]", key(1), key(2)),
                "jwt_public_key_files = [\"/keys/a.pem\", \"/keys/b.pem\"]",
            ),
        ] {
            std::fs::write(&file, format!("{keys}\nsealing_key_id = \"k2\"\n{files}\n")).unwrap();
            let flags = Flags {
                config: Some(file.clone()),
                data_dir: Some(dir.path().into()),
                ..Flags::default()
            };
            let settings = Settings::load_with_env(&flags, &env_of(&[])).unwrap();
            assert_eq!(settings.sealing_keys.keys().collect::<Vec<_>>(), ["k1", "k2"], "{keys}");
            assert_eq!(settings.sealing_keys["k2"], [2u8; 32]);
            assert_eq!(settings.sealing_key_id, "k2");
            assert_eq!(
                settings.jwt.public_key_files,
                [PathBuf::from("/keys/a.pem"), PathBuf::from("/keys/b.pem")]
            );
        }
        std::fs::write(&file, "sealing_keys = 3\n").unwrap();
        let flags = Flags {
            config: Some(file.clone()),
            ..Flags::default()
        };
        let err = Settings::load_with_env(&flags, &env_of(&[])).unwrap_err();
        assert!(err.contains("comma-separated string or an array"), "{err}");
    }

    #[test]
    fn serving_without_keys_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let flags = Flags {
            data_dir: Some(dir.path().into()),
            ..Flags::default()
        };
        let settings = Settings::load_with_env(&flags, &env_of(&[])).unwrap();
        assert!(settings.check_can_serve().unwrap_err().contains("JWT"));
    }

    #[test]
    fn database_passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://app:hunter2@db:5432/x"),
            "postgres://app:***@db:5432/x"
        );
        assert_eq!(redact_url("postgres://app@db/x"), "postgres://app@db/x");
    }
}
