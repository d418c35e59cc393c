//! PostgreSQL as an export target: a fresh database per test on the server the suite uses
//! (named `exportd_test_target_…`, so that CI's cleanup drops one a failed test left), read
//! back with plain SQL; and a server that refuses every password as PostgreSQL does.

use std::sync::atomic::{AtomicU32, Ordering};

use sea_orm::sqlx::{self, Connection, PgConnection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

static TARGETS: AtomicU32 = AtomicU32::new(0);

pub fn admin_url() -> String {
    std::env::var("EXPORTD_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// One database the exports of a test write into.
pub struct TargetDb {
    pub name: String,
    /// What a connection's `url` secret holds to reach it (as the `postgres` user).
    pub url: String,
    pub conn: PgConnection,
}

impl TargetDb {
    pub async fn create() -> TargetDb {
        let name = format!(
            "exportd_test_target_{}_{}_{:08x}",
            std::process::id(),
            TARGETS.fetch_add(1, Ordering::SeqCst),
            rand::random::<u32>()
        );
        let mut admin = PgConnection::connect(&admin_url())
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at {} is required: {e}", admin_url()));
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .unwrap();
        admin.close().await.unwrap();
        let url = Self::url_of(&name);
        let mut conn = PgConnection::connect(&url).await.unwrap();
        sqlx::raw_sql("SET TimeZone = 'UTC'").execute(&mut conn).await.unwrap();
        TargetDb { name, url, conn }
    }

    /// The URL of database `name` as the admin user.
    pub fn url_of(name: &str) -> String {
        let admin = admin_url();
        let (base, _) = admin.rsplit_once('/').expect("admin URL ends with a database");
        format!("{base}/{name}")
    }

    pub async fn execute(&mut self, sql: &str) {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
            .execute(&mut self.conn)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// Every row of `table` as JSON (`row_to_json`), in key order.
    pub async fn rows(&mut self, table: &str, key: &str) -> Vec<serde_json::Value> {
        let sql = format!("SELECT row_to_json(t)::text FROM {table} t ORDER BY \"{key}\"");
        let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_all(&mut self.conn)
            .await
            .unwrap();
        rows.iter().map(|r| serde_json::from_str(r).unwrap()).collect()
    }

    /// `(column, data type)` of a table in `public`, in column order (information_schema).
    pub async fn columns(&mut self, table: &str) -> Vec<(String, String)> {
        sqlx::query_as(
            "SELECT column_name::text, data_type::text FROM information_schema.columns \
             WHERE table_schema = 'public' AND table_name = $1 ORDER BY ordinal_position",
        )
        .bind(table)
        .fetch_all(&mut self.conn)
        .await
        .unwrap()
    }

    /// The columns of a table's primary key.
    pub async fn primary_key(&mut self, table: &str) -> Vec<String> {
        sqlx::query_scalar(
            "SELECT k.column_name::text FROM information_schema.table_constraints c \
             JOIN information_schema.key_column_usage k ON k.constraint_name = c.constraint_name \
             AND k.table_schema = c.table_schema WHERE c.table_schema = 'public' AND c.table_name = $1 \
             AND c.constraint_type = 'PRIMARY KEY' ORDER BY k.ordinal_position",
        )
        .bind(table)
        .fetch_all(&mut self.conn)
        .await
        .unwrap()
    }

    /// The tables of schema `public`, sorted.
    pub async fn tables(&mut self) -> Vec<String> {
        sqlx::query_scalar("SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")
            .fetch_all(&mut self.conn)
            .await
            .unwrap()
    }

    pub async fn drop(self) {
        let TargetDb { name, conn, .. } = self;
        conn.close().await.unwrap();
        let mut admin = PgConnection::connect(&admin_url()).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&mut admin)
        .await
        .unwrap();
        admin.close().await.unwrap();
    }
}

/// A server on loopback that speaks the start of PostgreSQL's protocol ("Frontend/Backend
/// Protocol", "Start-up"): it declines TLS (`N`), asks for a cleartext password
/// (AuthenticationCleartextPassword) and answers every password with the FATAL
/// `ErrorResponse` PostgreSQL sends for a wrong one (SQLSTATE 28P01). It keeps the passwords
/// it was sent.
pub struct RefusingPostgres {
    pub port: u16,
    pub passwords: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl RefusingPostgres {
    pub async fn start() -> RefusingPostgres {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let passwords = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = passwords.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let kept = kept.clone();
                tokio::spawn(async move {
                    let _ = refuse(socket, kept).await;
                });
            }
        });
        RefusingPostgres { port, passwords }
    }
}

async fn refuse(
    mut socket: tokio::net::TcpStream,
    kept: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) -> std::io::Result<()> {
    const SSL_REQUEST: i32 = 80877103;
    loop {
        // Start-up packets: length (itself included), then a code.
        let length = socket.read_i32().await?;
        let code = socket.read_i32().await?;
        let mut rest = vec![0u8; (length - 8).max(0) as usize];
        socket.read_exact(&mut rest).await?;
        if code == SSL_REQUEST {
            socket.write_all(b"N").await?;
            continue;
        }
        break;
    }
    // AuthenticationCleartextPassword.
    socket.write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 3]).await?;
    let tag = socket.read_u8().await?;
    assert_eq!(tag, b'p', "a PasswordMessage");
    let length = socket.read_i32().await?;
    let mut password = vec![0u8; (length - 4) as usize];
    socket.read_exact(&mut password).await?;
    let password = String::from_utf8_lossy(password.strip_suffix(&[0]).unwrap_or(&password)).to_string();
    kept.lock().unwrap().push(password);
    let mut fields = Vec::new();
    for (field, value) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', "28P01"),
        (b'M', "password authentication failed for user \"app\""),
    ] {
        fields.push(field);
        fields.extend_from_slice(value.as_bytes());
        fields.push(0);
    }
    fields.push(0);
    let mut message = vec![b'E'];
    message.extend_from_slice(&((fields.len() + 4) as i32).to_be_bytes());
    message.extend_from_slice(&fields);
    socket.write_all(&message).await?;
    socket.shutdown().await
}

/// A TCP proxy on loopback in front of the suite's PostgreSQL that interrupts one connection
/// (the `nth` it accepts, from 0) once it has forwarded `after` bytes from the client: it cuts
/// it (a connection lost in the middle of what the client was sending), or holds it (forwards
/// nothing more, as a stalled network would, until the client gives up on it).
pub struct InterruptingProxy {
    pub port: u16,
    pub accepted: std::sync::Arc<AtomicU32>,
    /// Set once the held connection stopped forwarding.
    pub holding: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

#[derive(Clone, Copy)]
pub enum Interruption {
    Cut,
    Hold,
}

impl InterruptingProxy {
    pub async fn start(nth: u32, after: usize, how: Interruption) -> InterruptingProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = std::sync::Arc::new(AtomicU32::new(0));
        let holding = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (counter, held) = (accepted.clone(), holding.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let number = counter.fetch_add(1, Ordering::SeqCst);
                let held = held.clone();
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect("127.0.0.1:5432").await else {
                        return;
                    };
                    let limit = (number == nth).then_some((after, how, held));
                    let _ = forward(client, server, limit).await;
                });
            }
        });
        InterruptingProxy {
            port,
            accepted,
            holding,
        }
    }
}

type Limit = (usize, Interruption, std::sync::Arc<std::sync::atomic::AtomicBool>);

async fn forward(
    client: tokio::net::TcpStream,
    server: tokio::net::TcpStream,
    limit: Option<Limit>,
) -> std::io::Result<()> {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upstream = async {
        let mut sent = 0usize;
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            let n = client_read.read(&mut buffer).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(());
            }
            if let Some((after, how, held)) = &limit
                && sent + n >= *after
            {
                server_write.write_all(&buffer[..after - sent]).await?;
                if let Interruption::Hold = how {
                    held.store(true, Ordering::SeqCst);
                    // Nothing more goes through; the connection ends when the client closes it.
                    while client_read.read(&mut buffer).await? > 0 {}
                }
                // Both directions end here, as when the network goes.
                return Ok(());
            }
            server_write.write_all(&buffer[..n]).await?;
            sent += n;
        }
    };
    let downstream = tokio::io::copy(&mut server_read, &mut client_write);
    tokio::select! {
        result = upstream => result,
        result = downstream => result.map(|_| ()),
    }
}
