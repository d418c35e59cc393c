//! `GET /metrics` on `metrics_listen`: a minimal HTTP/1.1 responder on tokio (a scrape is one
//! small request and one answer; a full HTTP server would be build weight for nothing).
//! Each connection gets one answer and is closed. Requests are bounded in size and time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::domain::run::RunState;
use crate::metrics::{Gauges, render};
use crate::store::Store;

/// The most of a request that is read (a scrape's request line and headers are far smaller).
const MAX_REQUEST_BYTES: usize = 16 * 1024;
/// A client that has not sent its request by then is dropped.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Prometheus text exposition format 0.0.4.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Binds `addr` and answers scrapes until `stopped` turns true; returns the bound address.
pub async fn start(
    addr: SocketAddr,
    store: Arc<Store>,
    mut stopped: watch::Receiver<bool>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), String> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen for metrics on {addr}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let store = store.clone();
                        tokio::spawn(async move {
                            if let Err(e) = answer(stream, &store).await {
                                tracing::debug!(error = %e, "metrics request failed");
                            }
                        });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot accept a metrics connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                _ = async { let _ = stopped.wait_for(|s| *s).await; } => return,
            }
        }
    });
    Ok((bound, task))
}

async fn answer(mut stream: TcpStream, store: &Store) -> std::io::Result<()> {
    let head = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Ok(head) => head?,
        Err(_) => return Ok(()),
    };
    let (status, body) = match request_line(&head) {
        Some(("GET", "/metrics")) => ("200 OK", scrape(store).await),
        Some(("GET", _)) => ("404 Not Found", "only /metrics is served here\n".to_string()),
        Some(_) => ("405 Method Not Allowed", "only GET is served here\n".to_string()),
        None => ("400 Bad Request", "not an HTTP request\n".to_string()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {CONTENT_TYPE}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// Reads until the end of the request head (or the size bound).
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(1024);
    let mut buffer = [0u8; 2048];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST_BYTES {
        let n = stream.read(&mut buffer).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buffer[..n]);
    }
    Ok(head)
}

/// `(method, path)` of the request line, the query string left out.
fn request_line(head: &[u8]) -> Option<(&str, &str)> {
    let line = std::str::from_utf8(head).ok()?.lines().next()?;
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    version
        .starts_with("HTTP/1.")
        .then(|| (method, target.split('?').next().unwrap_or(target)))
}

async fn scrape(store: &Store) -> String {
    let run_queue_depth = match store.count_runs_in(RunState::Queued).await {
        Ok(n) => Some(n as i64),
        Err(e) => {
            tracing::warn!(error = %e.message, "cannot count the queued runs for the metrics");
            None
        }
    };
    render(&Gauges { run_queue_depth })
}
