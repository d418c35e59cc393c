//! TCP_NODELAY on PostgreSQL connections: the store's pool and the `postgres` target's
//! connections alike.
//!
//! sqlx (0.9) opens its PostgreSQL TCP sockets without TCP_NODELAY. Then the kernel holds a short
//! write back while earlier data is unacknowledged (Nagle's algorithm), and PostgreSQL
//! acknowledges late (delayed ACK, up to 40 ms on Linux). A COPY writes its rows and then a short
//! CopyDone, so every COPY waited for a delayed ACK: a COPY of 5,000 records took 60 ms
//! instead of 20, and the database sat idle meanwhile.
//!
//! sqlx has no option for it and does not hand out its socket. So after connecting we ask the
//! server which client port it sees, and set the option on the socket of this process with that
//! local port and the server's port as its peer. Unix-socket connections need nothing (no Nagle
//! there). Behind a proxy or NAT that changes the port, no socket matches and the connection
//! stays as sqlx made it; that is logged.

use std::os::fd::{BorrowedFd, RawFd};

use sea_orm::sqlx::{self, PgConnection};
use socket2::SockRef;

/// Sets TCP_NODELAY on the socket of `connection`, if it is a TCP connection we can find.
pub async fn enable_nodelay(connection: &mut PgConnection) -> Result<(), sqlx::Error> {
    let Some((client_port, server_port)) = ports(connection).await? else {
        return Ok(());
    };
    match with_socket(client_port, server_port, |socket| socket.set_tcp_nodelay(true)) {
        Some(Ok(())) => {}
        Some(Err(e)) => tracing::warn!(error = %e, "cannot set TCP_NODELAY on a PostgreSQL connection"),
        None => tracing::info!(
            client_port,
            server_port,
            "no local socket matches a PostgreSQL connection (a proxy in between?): TCP_NODELAY not set"
        ),
    }
    Ok(())
}

/// The PostgreSQL server of the PostgreSQL suite (`EXPORTD_TEST_DATABASE=postgres`, which CI
/// runs); None in the SQLite suite.
#[cfg(test)]
pub(crate) fn suite_url() -> Option<String> {
    if std::env::var("EXPORTD_TEST_DATABASE").as_deref() != Ok("postgres") {
        return None;
    }
    Some(
        std::env::var("EXPORTD_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into()),
    )
}

/// Whether the socket of `connection` has TCP_NODELAY set; None when it is not a TCP socket
/// of this process.
#[cfg(test)]
pub(crate) async fn nodelay(connection: &mut PgConnection) -> Result<Option<bool>, sqlx::Error> {
    let Some((client, server)) = ports(connection).await? else {
        return Ok(None);
    };
    Ok(with_socket(client, server, |socket| socket.tcp_nodelay().ok()).flatten())
}

/// The client and server ports the server sees; None on a Unix socket.
async fn ports(connection: &mut PgConnection) -> Result<Option<(u16, u16)>, sqlx::Error> {
    let (client, server): (Option<i32>, Option<i32>) = sqlx::query_as("SELECT inet_client_port(), inet_server_port()")
        .fetch_one(connection)
        .await?;
    Ok(client
        .zip(server)
        .and_then(|(c, s)| Some((u16::try_from(c).ok()?, u16::try_from(s).ok()?))))
}

/// Runs `f` on the socket of this process whose local port is `local_port` and whose peer's
/// port is `peer_port`.
fn with_socket<T>(local_port: u16, peer_port: u16, f: impl FnOnce(SockRef<'_>) -> T) -> Option<T> {
    // `/dev/fd` lists this process's open descriptors (on Linux it is `/proc/self/fd`).
    for entry in std::fs::read_dir("/dev/fd").ok()?.flatten() {
        let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse::<RawFd>().ok()) else {
            continue;
        };
        // SAFETY: the descriptor is only used for the calls below. Should another thread close
        // it meanwhile, they fail (EBADF, ENOTSOCK) or, if the number was reused at once, read
        // the addresses of another descriptor, which then does not match.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let socket = SockRef::from(&fd);
        let port = |addr: std::io::Result<socket2::SockAddr>| addr.ok()?.as_socket().map(|a| a.port());
        if port(socket.local_addr()) == Some(local_port) && port(socket.peer_addr()) == Some(peer_port) {
            return Some(f(socket));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_connection_of_a_postgres_store_sends_without_delay() {
        let Some(url) = suite_url() else { return };
        let db = crate::store::connect(&url, 2).await.unwrap();
        let pool = db.get_postgres_connection_pool();
        let mut first = pool.acquire().await.unwrap();
        let mut second = pool.acquire().await.unwrap();
        for connection in [&mut first, &mut second] {
            let (client, server) = ports(connection).await.unwrap().expect("a TCP connection");
            let nodelay = with_socket(client, server, |socket| socket.tcp_nodelay().unwrap());
            assert_eq!(nodelay, Some(true), "connection from port {client}");
        }
    }
}
