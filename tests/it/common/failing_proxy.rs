//! An HTTP proxy in front of an object-store server (moto, Azurite) that lets the first
//! `writes_allowed` writes (PUT and POST, but not bulk deletes) through and answers every later one with
//! `500 Internal Server Error`, as a target that starts failing mid-run does. Reads and deletes
//! always pass, so what a failed run cleans up can be checked on the real server.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

pub struct FailingProxy {
    /// `http://127.0.0.1:PORT/<upstream path>`, to use in place of the server's endpoint.
    pub endpoint: String,
    counts: Arc<Counts>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct Counts {
    writes_allowed: usize,
    writes: AtomicUsize,
    refused: AtomicUsize,
}

impl FailingProxy {
    pub async fn start(upstream: &str, writes_allowed: usize) -> FailingProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        // The upstream's path (Azurite's `/devstoreaccount1`) stays in the endpoint: clients
        // sign it.
        let url = reqwest::Url::parse(upstream).unwrap();
        let endpoint = format!(
            "http://{}{}",
            listener.local_addr().unwrap(),
            url.path().trim_end_matches('/')
        );
        let upstream = format!("{}://{}", url.scheme(), url.authority());
        let counts = Arc::new(Counts {
            writes_allowed,
            ..Counts::default()
        });
        let client = reqwest::Client::builder().build().unwrap();
        let shared = counts.clone();
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let (client, upstream, counts) = (client.clone(), upstream.clone(), shared.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        forward(request, client.clone(), upstream.clone(), counts.clone())
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(socket), service)
                        .await;
                });
            }
        });
        FailingProxy { endpoint, counts, task }
    }

    /// Writes answered with 500 so far.
    pub fn refused(&self) -> usize {
        self.counts.refused.load(Ordering::SeqCst)
    }
}

impl Drop for FailingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(
    request: Request<Incoming>,
    client: reqwest::Client,
    upstream: String,
    counts: Arc<Counts>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    // `object_store` deletes in bulk: S3's `POST /?delete` (DeleteObjects) and Azure's
    // `POST ?restype=container&comp=batch` (Blob Batch of deletes) are no writes.
    let is_delete = request
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|p| p == "delete" || p == "comp=batch"));
    let is_write = matches!(*request.method(), Method::PUT | Method::POST) && !is_delete;
    if is_write && counts.writes.fetch_add(1, Ordering::SeqCst) >= counts.writes_allowed {
        counts.refused.fetch_add(1, Ordering::SeqCst);
        // Read the body first, as a server does, so that the client sees the answer.
        let _ = request.into_body().collect().await;
        let mut refused = Response::new(Full::new(Bytes::from_static(
            b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>InternalError</Code>\
              <Message>We encountered an internal error. Please try again.</Message></Error>",
        )));
        *refused.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        return Ok(refused);
    }
    let (parts, body) = request.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut upstream_request = client.request(parts.method.clone(), format!("{upstream}{path}"));
    for (name, value) in &parts.headers {
        if name != hyper::header::HOST && name != hyper::header::CONTENT_LENGTH {
            upstream_request = upstream_request.header(name, value);
        }
    }
    // No body for an empty one: a `Content-Length: 0` the client did not send would break
    // Azure's Shared Key signature.
    if !body.is_empty() {
        upstream_request = upstream_request.body(body);
    }
    let answered = match upstream_request.send().await {
        Ok(answered) => answered,
        Err(e) => {
            let mut failed = Response::new(Full::new(Bytes::from(e.to_string())));
            *failed.status_mut() = StatusCode::BAD_GATEWAY;
            return Ok(failed);
        }
    };
    let status = answered.status();
    let headers = answered.headers().clone();
    let bytes = answered.bytes().await.unwrap_or_default();
    let mut response = Response::new(Full::new(bytes));
    *response.status_mut() = status;
    for (name, value) in &headers {
        // The body is re-framed here; hop-by-hop and length headers are hyper's to set.
        if ![
            hyper::header::TRANSFER_ENCODING,
            hyper::header::CONNECTION,
            hyper::header::CONTENT_LENGTH,
        ]
        .contains(name)
        {
            response.headers_mut().append(name, value.clone());
        }
    }
    Ok(response)
}
