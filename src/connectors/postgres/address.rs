//! The connection's secret `url`, read the way libpq reads a connection URI
//! (`postgres[ql]://user[:password]@host[:port][/database][?sslmode=…]`), with less left to the
//! server's environment: a URL must name its host and user (no Unix sockets, no defaults from
//! `PGUSER`/`PGPASSWORD` or a password file of the exportd server), and takes only the
//! parameters exportd honours.

use sea_orm::sqlx::postgres::{PgConnectOptions, PgSslMode};

/// Query parameters a URL may carry. `sslmode` is libpq's (TLS when the URL asks for it);
/// file parameters such as `sslrootcert` would name files on the exportd server, so they are
/// not taken from a tenant's URL.
const PARAMETERS: &[&str] = &["sslmode", "application_name"];
const SSL_MODES: &[&str] = &["disable", "allow", "prefer", "require", "verify-ca", "verify-full"];

/// Where and as whom a connection signs in.
#[derive(Clone)]
pub struct Address {
    pub options: PgConnectOptions,
    pub host: String,
    pub port: u16,
    pub user: String,
    pub database: String,
    /// Whether the URL asks for TLS (`sslmode` require or stronger).
    pub tls_required: bool,
    /// The URL and its password (as written and decoded): taken out of every message.
    pub secrets: Vec<String>,
}

/// Reads a connection URL; the error says what is wrong with it without repeating it.
pub fn parse(url: &str) -> Result<Address, String> {
    let parsed = url::Url::parse(url.trim()).map_err(|e| format!("is not a URL ({e})"))?;
    if !matches!(parsed.scheme(), "postgres" | "postgresql") {
        return Err("must start with postgres:// or postgresql://".into());
    }
    let host = parsed
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or("must name a host: postgres://user:password@host:5432/database")?;
    // `[::1]` is how a URL writes an IPv6 address; the socket wants it bare.
    let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
    let decode = |text: &str, what: &str| {
        percent_encoding_decode(text).ok_or_else(|| format!("has a {what} that is not UTF-8 once decoded"))
    };
    let user = decode(parsed.username(), "user name")?;
    if user.is_empty() {
        return Err("must name a user: postgres://user:password@host:5432/database".into());
    }
    let password = match parsed.password() {
        Some(raw) => Some((raw.to_string(), decode(raw, "password")?)),
        None => None,
    };
    let path = parsed.path().trim_start_matches('/');
    if path.contains('/') {
        return Err("must name at most one database after the host".into());
    }
    // libpq's default: the database named like the user.
    let database = match decode(path, "database name")? {
        name if name.is_empty() => user.clone(),
        name => name,
    };
    let port = parsed.port().unwrap_or(5432);
    let mut options = PgConnectOptions::new_without_pgpass()
        .host(&host)
        .port(port)
        .username(&user)
        .database(&database)
        // Never a password of the server's environment (PGPASSWORD).
        .password(password.as_ref().map(|(_, decoded)| decoded.as_str()).unwrap_or(""))
        .ssl_mode(PgSslMode::Prefer)
        .application_name("exportd");
    let mut tls_required = false;
    for (key, value) in parsed.query_pairs() {
        match &*key {
            "sslmode" => {
                if !SSL_MODES.contains(&&*value) {
                    return Err(format!("has sslmode '{value}'; use one of: {}", SSL_MODES.join(", ")));
                }
                let mode: PgSslMode = value.parse().map_err(|_| format!("has sslmode '{value}'"))?;
                tls_required = matches!(mode, PgSslMode::Require | PgSslMode::VerifyCa | PgSslMode::VerifyFull);
                options = options.ssl_mode(mode);
            }
            "application_name" => options = options.application_name(&value),
            other => {
                return Err(format!(
                    "has the parameter '{other}', which exportd does not take; known parameters: {}",
                    PARAMETERS.join(", ")
                ));
            }
        }
    }
    let mut secrets = vec![url.to_string(), url.trim().to_string()];
    if let Some((raw, decoded)) = password {
        secrets.extend([raw, decoded].into_iter().filter(|p| !p.is_empty()));
    }
    Ok(Address {
        options,
        host,
        port,
        user,
        database,
        tls_required,
        secrets,
    })
}

/// `%XX` sequences decoded; None when the result is not UTF-8.
fn percent_encoding_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(high), Some(low)) => {
                out.push((high * 16 + low) as u8);
                i += 3;
            }
            (byte, _, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

impl Address {
    /// `user@host:port/database`, for messages (never the password).
    pub fn shown(&self) -> String {
        format!("{}@{}:{}/{}", self.user, self.host, self.port, self.database)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_names_host_user_and_database_and_its_password_is_a_secret() {
        let address = parse("postgres://app:p%40ss@db.example:6543/crm?sslmode=require").unwrap();
        assert_eq!(address.shown(), "app@db.example:6543/crm");
        assert!(address.tls_required);
        assert!(address.secrets.contains(&"p@ss".to_string()));
        assert!(address.secrets.contains(&"p%40ss".to_string()));
        let defaults = parse("postgresql://app@127.0.0.1").unwrap();
        assert_eq!(defaults.shown(), "app@127.0.0.1:5432/app");
        assert!(!defaults.tls_required);
    }

    #[test]
    fn urls_that_exportd_cannot_use_are_refused() {
        for url in [
            "not a url",
            "mysql://app@host/db",
            "postgres:///db",
            "postgres://host/db",
            "postgres://app@host/db/more",
            "postgres://app@host/db?sslmode=sometimes",
            "postgres://app@host/db?sslrootcert=/etc/passwd",
            "postgres://app@host:99999/db",
        ] {
            assert!(parse(url).is_err(), "{url}");
        }
    }
}
