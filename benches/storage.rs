//! Storage targets benchmark (issue 14), side by side in one run: a DATA_OUT of N six-field
//! records (default 1,000,000) to S3 (moto), Azure Blob (Azurite) and SFTP (OpenSSH), as CSV and
//! as Parquet, against a bare upload of the very bytes the run wrote to the same server:
//! `object_store` alone (the same 8 MiB parts, 4 in flight) for moto and Azurite, OpenSSH's
//! `sftp` client `put` for SFTP. Each run starts in a fresh server process, so that the peak RSS
//! (`VmHWM`) is that run's own.
//!
//! Local files come first, against `std::fs` writes of the same bytes: the floor of a run
//! (reading the records and encoding them), beside which each target's upload shows its cost.
//!
//! Run: `cargo bench --bench storage` (BENCH_SIZES, comma-separated record counts, e.g.
//! `250000,1000000` to see memory stay flat with size;
//! BENCH_TARGETS=local-files,s3,azure-blob,sftp; BENCH_LINKS=0,40 also runs every remote target
//! through a loopback link of 40 MiB/s, as over a network, where the upload is the slow part;
//! BENCH_FORMATS=csv,parquet). Needs moto, Azurite and sshd as `.ci/run` installs them.

mod support;

#[allow(dead_code)]
#[path = "../tests/it/common/sshd.rs"]
mod sshd;
#[allow(dead_code)]
#[path = "../tests/it/common/storage_servers.rs"]
mod storage_servers;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use exportd::pb;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};
use sshd::Sshd;
use storage_servers::{AZURITE_ACCOUNT, AZURITE_KEY, Azurite, Moto};
use support::*;

const BUCKET: &str = "bench";
const PART_BYTES: usize = 8 << 20;
const PARTS_IN_FLIGHT: usize = 4;

/// A target server, how exportd connects to it, and a direct client of it.
struct Target {
    kind: &'static str,
    config: BTreeMap<String, String>,
    secrets: BTreeMap<String, String>,
    /// Reads what a run wrote and does the bare upload (object stores), rooted at the bucket or
    /// container; for SFTP, the server's folder on the local disk.
    direct: Arc<dyn ObjectStore>,
    /// The port exportd and the baseline reach the server on (through the link, if any).
    port: u16,
    /// The link's rate in MiB/s; 0 for none (the bare loopback).
    link: u64,
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn s3(moto: &Moto, link: &Link) -> Target {
    let endpoint = link.endpoint(&moto.endpoint);
    let direct = object_store::aws::AmazonS3Builder::new()
        .with_bucket_name(BUCKET)
        .with_region("us-east-1")
        .with_access_key_id("AKIABENCH")
        .with_secret_access_key("bench-secret")
        .with_endpoint(&endpoint)
        .with_allow_http(true)
        .build()
        .unwrap();
    Target {
        kind: "s3",
        config: map(&[("bucket", BUCKET), ("region", "us-east-1"), ("endpoint", &endpoint)]),
        secrets: map(&[("access_key_id", "AKIABENCH"), ("secret_access_key", "bench-secret")]),
        direct: Arc::new(direct),
        port: link.port,
        link: link.mib_per_second,
    }
}

fn azure(azurite: &Azurite, link: &Link) -> Target {
    let endpoint = link.endpoint(&azurite.endpoint);
    let direct = object_store::azure::MicrosoftAzureBuilder::new()
        .with_account(AZURITE_ACCOUNT)
        .with_access_key(AZURITE_KEY)
        .with_container_name(BUCKET)
        .with_endpoint(endpoint.clone())
        .with_allow_http(true)
        .build()
        .unwrap();
    Target {
        kind: "azure-blob",
        config: map(&[
            ("account", AZURITE_ACCOUNT),
            ("container", BUCKET),
            ("endpoint", &endpoint),
        ]),
        secrets: map(&[("account_key", AZURITE_KEY)]),
        direct: Arc::new(direct),
        port: link.port,
        link: link.mib_per_second,
    }
}

fn sftp(sshd: &Sshd, link: &Link) -> Target {
    let folder = std::fs::canonicalize(&sshd.folder).unwrap();
    Target {
        kind: "sftp",
        config: map(&[
            ("host", &sshd.host),
            ("port", &link.port.to_string()),
            ("username", &sshd.username),
            ("folder", folder.to_str().unwrap()),
            ("host_key", &sshd.host_key.public),
        ]),
        secrets: map(&[("private_key", &sshd.client_key.private)]),
        direct: Arc::new(object_store::local::LocalFileSystem::new_with_prefix(&folder).unwrap()),
        port: link.port,
        link: link.mib_per_second,
    }
}

/// Local files under the server's data folder: the floor of a run (reading and encoding, with
/// the cheapest writes), beside which each target's upload shows what it adds.
fn local(server: &Server) -> Target {
    // In the environment's own folder under the default allowed root, `<data dir>/exports`.
    let root = server.data_dir.path().join("exports/bench/lake");
    std::fs::create_dir_all(&root).unwrap();
    let root = std::fs::canonicalize(&root).unwrap();
    Target {
        kind: "local-files",
        config: map(&[("root", root.to_str().unwrap())]),
        secrets: BTreeMap::new(),
        direct: Arc::new(object_store::local::LocalFileSystem::new_with_prefix(&root).unwrap()),
        port: 0,
        link: 0,
    }
}

/// Writing the same files with `std::fs` (and fsync, as exportd does): seconds.
fn bare_local_write(target: &Target, files: &[(String, bytes::Bytes)]) -> f64 {
    use std::io::Write;
    let root = std::path::PathBuf::from(&target.config["root"]).join("bare");
    std::fs::create_dir_all(&root).unwrap();
    let started = Instant::now();
    for (i, (_, bytes)) in files.iter().enumerate() {
        let mut file = std::fs::File::create(root.join(i.to_string())).unwrap();
        file.write_all(bytes).unwrap();
        file.sync_all().unwrap();
    }
    let seconds = started.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&root);
    seconds
}

/// A TCP link to a server on loopback that carries at most `mib_per_second` towards it (the
/// uploads), all connections together, as a network link would; answers pass at once. A rate
/// of 0 is no link: the server's own port.
struct Link {
    port: u16,
    mib_per_second: u64,
}

impl Link {
    async fn to(upstream: u16, mib_per_second: u64) -> Link {
        if mib_per_second == 0 {
            return Link {
                port: upstream,
                mib_per_second,
            };
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let rate = (mib_per_second << 20) as f64;
        // When the bytes sent so far are due on the wire; no credit builds up while idle.
        let schedule = Arc::new(std::sync::Mutex::new(Instant::now()));
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let schedule = schedule.clone();
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await else {
                        return;
                    };
                    let _ = (client.set_nodelay(true), server.set_nodelay(true));
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut server_read, mut server_write) = server.into_split();
                    let up = async move {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let mut buffer = vec![0u8; 64 << 10];
                        while let Ok(n) = client_read.read(&mut buffer).await {
                            if n == 0 {
                                break;
                            }
                            let due = {
                                let mut next = schedule.lock().unwrap();
                                *next = (*next).max(Instant::now()) + Duration::from_secs_f64(n as f64 / rate);
                                *next
                            };
                            tokio::time::sleep_until(due.into()).await;
                            if server_write.write_all(&buffer[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = server_write.shutdown().await;
                    };
                    let down = async move {
                        use tokio::io::AsyncWriteExt;
                        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
                        let _ = client_write.shutdown().await;
                    };
                    tokio::join!(up, down);
                });
            }
        });
        Link { port, mib_per_second }
    }

    /// `endpoint` (`http://127.0.0.1:PORT/path`) through this link.
    fn endpoint(&self, endpoint: &str) -> String {
        let mut url = reqwest::Url::parse(endpoint).unwrap();
        url.set_port(Some(self.port)).unwrap();
        url.to_string().trim_end_matches('/').to_string()
    }
}

fn port_of(endpoint: &str) -> u16 {
    reqwest::Url::parse(endpoint).unwrap().port().unwrap()
}

/// The partitions of an export folder as `model.json` lists them (paths under the direct
/// client's root) with their bytes.
async fn partitions(target: &Target, folder: &str) -> Vec<(String, bytes::Bytes)> {
    let model = target
        .direct
        .get(&ObjectPath::from(format!("{folder}/model.json")))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let model: serde_json::Value = serde_json::from_slice(&model).unwrap();
    let mut out = Vec::new();
    for entity in model["entities"].as_array().unwrap() {
        for partition in entity["partitions"].as_array().unwrap() {
            let location = partition["location"].as_str().unwrap();
            let at = location
                .find(&format!("/{folder}/"))
                .expect("the export folder in the location");
            let path = ObjectPath::from(&location[at + 1..]);
            let bytes = target.direct.get(&path).await.unwrap().bytes().await.unwrap();
            out.push((path.to_string(), bytes));
        }
    }
    out
}

/// `object_store` alone uploading the same files: seconds.
async fn bare_object_store_upload(target: &Target, files: &[(String, bytes::Bytes)]) -> f64 {
    let started = Instant::now();
    for (i, (_, bytes)) in files.iter().enumerate() {
        let path = ObjectPath::from(format!("bare/{i}"));
        let upload = target.direct.put_multipart(&path).await.unwrap();
        let mut write = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        for chunk in bytes.chunks(1 << 20) {
            write.wait_for_capacity(PARTS_IN_FLIGHT).await.unwrap();
            write.write(chunk);
        }
        write.finish().await.unwrap();
    }
    started.elapsed().as_secs_f64()
}

/// OpenSSH's `sftp` client putting the same files (copied to a local folder first): seconds.
fn bare_sftp_put(sshd: &Sshd, port: u16, files: &[(String, bytes::Bytes)]) -> f64 {
    let local = tempfile::tempdir().unwrap();
    let remote = std::fs::canonicalize(&sshd.folder).unwrap().join("bare");
    let mut batch = format!("-mkdir {}\n", remote.display());
    for (i, (_, bytes)) in files.iter().enumerate() {
        let file = local.path().join(i.to_string());
        std::fs::write(&file, bytes).unwrap();
        batch.push_str(&format!("put {} {}/{i}\n", file.display(), remote.display()));
    }
    let batch_file = local.path().join("batch");
    std::fs::write(&batch_file, batch).unwrap();
    let started = Instant::now();
    let status = std::process::Command::new("sftp")
        .args(["-q", "-b"])
        .arg(&batch_file)
        .arg("-i")
        .arg(sshd.client_key_file())
        .args(["-P", &port.to_string()])
        .args(["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"])
        .arg(format!("{}@{}", sshd.username, sshd.host))
        .stdout(std::process::Stdio::null())
        .status()
        .expect("OpenSSH's sftp client");
    let seconds = started.elapsed().as_secs_f64();
    assert!(status.success(), "sftp put failed");
    let _ = std::fs::remove_dir_all(&remote);
    seconds
}

struct Measured {
    seconds: f64,
    bytes: u64,
    rss_mib: f64,
    baseline: f64,
    files: usize,
}

fn measure(
    runtime: &tokio::runtime::Runtime,
    server: Server,
    export: &str,
    target: &Target,
    sshd: Option<&Sshd>,
    n: usize,
) -> (Server, Measured) {
    // A fresh process, so that the peak RSS is this run's own.
    let (data_dir, url) = server.stop();
    let server = Server::start_on(data_dir, url, &[]);
    let (seconds, run) = runtime.block_on(run_and_wait(&server, export));
    assert_eq!(run.state, pb::RunState::Succeeded as i32, "{run:?}");
    assert_eq!(run.records_exported as usize, n);
    let rss_mib = server.peak_rss_mib();
    let files = runtime.block_on(partitions(target, export));
    let baseline = match (target.kind, sshd) {
        ("local-files", _) => bare_local_write(target, &files),
        (_, Some(sshd)) => bare_sftp_put(sshd, target.port, &files),
        _ => runtime.block_on(bare_object_store_upload(target, &files)),
    };
    let measured = Measured {
        seconds,
        bytes: run.bytes_written as u64,
        rss_mib,
        baseline,
        files: files.len(),
    };
    (server, measured)
}

fn main() {
    let sizes: Vec<usize> = std::env::var("BENCH_SIZES")
        .unwrap_or_else(|_| "1000000".into())
        .split(',')
        .map(|s| s.trim().parse().expect("a record count"))
        .collect();
    let kinds = std::env::var("BENCH_TARGETS").unwrap_or_else(|_| "local-files,s3,azure-blob,sftp".into());
    let formats = std::env::var("BENCH_FORMATS").unwrap_or_else(|_| "csv,parquet".into());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (moto, azurite) = runtime.block_on(async {
        let moto = Moto::start().await.expect("moto_server (see .ci/run)");
        moto.create_bucket(BUCKET).await;
        let azurite = Azurite::start().await.expect("azurite-blob (see .ci/run)");
        azurite.create_container(BUCKET).await;
        (moto, azurite)
    });
    let sshd = Sshd::start().expect("sshd (see .ci/run)");
    let links: Vec<u64> = std::env::var("BENCH_LINKS")
        .unwrap_or_else(|_| "0".into())
        .split(',')
        .map(|s| s.trim().parse().expect("a rate in MiB/s"))
        .collect();
    let mut targets = Vec::new();
    for &rate in &links {
        let (to_moto, to_azurite, to_sshd) = runtime.block_on(async {
            (
                Link::to(port_of(&moto.endpoint), rate).await,
                Link::to(port_of(&azurite.endpoint), rate).await,
                Link::to(sshd.port, rate).await,
            )
        });
        targets.extend([s3(&moto, &to_moto), azure(&azurite, &to_azurite), sftp(&sshd, &to_sshd)]);
    }
    println!(
        "{}",
        table_row(&[
            "records".into(),
            "target".into(),
            "link MiB/s".into(),
            "format".into(),
            "files".into(),
            "MiB".into(),
            "bare upload s".into(),
            "exportd run s".into(),
            "ratio".into(),
            "server peak RSS MiB".into(),
        ])
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for &n in &sizes {
        let mut server = Server::start("sqlite", &[]);
        server.create_environment("bench", "b2c");
        runtime.block_on(write_records(&server, n));
        let floor = local(&server);
        let all = std::iter::once(&floor).chain(targets.iter());
        for target in all.filter(|t| kinds.split(',').any(|k| k == t.kind)) {
            let connection = format!("{}{}", target.kind.replace('-', ""), target.link);
            let config: Vec<(&str, &str)> = target.config.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let secrets: Vec<(&str, &str)> = target.secrets.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            runtime.block_on(create_connection(&server, &connection, target.kind, &config, &secrets));
            for format in formats.split(',') {
                let export = format!("{connection}-{format}-{n}");
                runtime.block_on(create_data_out_export(
                    &server,
                    &export,
                    &connection,
                    &[("format", format)],
                ));
                let sftp = (target.kind == "sftp").then_some(&sshd);
                let (next, m) = measure(&runtime, server, &export, target, sftp, n);
                server = next;
                let link = match target.link {
                    0 => "—".to_string(),
                    rate => rate.to_string(),
                };
                println!(
                    "{}",
                    table_row(&[
                        n.to_string(),
                        target.kind.into(),
                        link,
                        format.into(),
                        m.files.to_string(),
                        format!("{:.1}", m.bytes as f64 / (1 << 20) as f64),
                        format!("{:.2}", m.baseline),
                        format!("{:.2}", m.seconds),
                        format!("**{:.2}×**", m.seconds / m.baseline),
                        format!("{:.0}", m.rss_mib),
                    ])
                );
            }
        }
        let _ = server.stop();
    }
}
