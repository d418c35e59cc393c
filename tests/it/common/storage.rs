//! The storage targets of the conformance suite: how exportd connects to each (local files,
//! moto, Azurite, OpenSSH) and an independent client that reads back what it holds.

use std::collections::BTreeMap;
use std::sync::Arc;

use exportd::pb;
use object_store::{ObjectStore, ObjectStoreExt};
use serde_json::Value;

use super::TestServer;
use super::sshd::Sshd;
use super::storage_servers::{AZURITE_ACCOUNT, AZURITE_KEY, Azurite, Moto};

pub const BUCKET: &str = "cdp-exports";
pub const CONTAINER: &str = "cdp-exports";
pub const PREFIX: &str = "team/a";
pub const SECRET_KEY: &str = "moto-secret-access-key-never-shown";

/// One storage target under test: how to connect exportd to it and how to read it back.
pub struct Storage {
    pub kind: &'static str,
    pub config: BTreeMap<String, String>,
    pub secrets: BTreeMap<String, String>,
    /// Reads the target directly (not through exportd), rooted at the connection's prefix.
    pub reader: Arc<dyn ObjectStore>,
    /// The URL prefix of the connection's root in partition locations.
    pub url_root: String,
    pub _servers: (Option<Moto>, Option<Azurite>, Option<Sshd>),
}

pub fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

impl Storage {
    pub async fn local(t: &TestServer) -> Storage {
        let root = t.data_dir.path().join("lake");
        std::fs::create_dir_all(&root).unwrap();
        let root = std::fs::canonicalize(&root).unwrap();
        Storage {
            kind: "local-files",
            config: map(&[("root", root.to_str().unwrap())]),
            secrets: BTreeMap::new(),
            reader: Arc::new(object_store::local::LocalFileSystem::new_with_prefix(&root).unwrap()),
            url_root: format!("file://{}", root.display()),
            _servers: (None, None, None),
        }
    }

    pub async fn s3() -> Option<Storage> {
        let moto = Moto::start().await?;
        moto.create_bucket(BUCKET).await;
        let reader = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(BUCKET)
            .with_region("us-east-1")
            .with_access_key_id("AKIATEST")
            .with_secret_access_key(SECRET_KEY)
            .with_endpoint(&moto.endpoint)
            .with_allow_http(true)
            .build()
            .unwrap();
        let prefixed = object_store::prefix::PrefixStore::new(reader, PREFIX);
        Some(Storage {
            kind: "s3",
            config: map(&[
                ("bucket", BUCKET),
                ("region", "us-east-1"),
                ("endpoint", &moto.endpoint),
                ("prefix", PREFIX),
            ]),
            secrets: map(&[("access_key_id", "AKIATEST"), ("secret_access_key", SECRET_KEY)]),
            reader: Arc::new(prefixed),
            url_root: format!("s3://{BUCKET}/{PREFIX}"),
            _servers: (Some(moto), None, None),
        })
    }

    pub async fn azure() -> Option<Storage> {
        let azurite = Azurite::start().await?;
        azurite.create_container(CONTAINER).await;
        let reader = object_store::azure::MicrosoftAzureBuilder::new()
            .with_account(AZURITE_ACCOUNT)
            .with_access_key(AZURITE_KEY)
            .with_container_name(CONTAINER)
            .with_endpoint(azurite.endpoint.clone())
            .with_allow_http(true)
            .build()
            .unwrap();
        let prefixed = object_store::prefix::PrefixStore::new(reader, PREFIX);
        Some(Storage {
            kind: "azure-blob",
            config: map(&[
                ("account", AZURITE_ACCOUNT),
                ("container", CONTAINER),
                ("endpoint", &azurite.endpoint),
                ("prefix", PREFIX),
            ]),
            secrets: map(&[("account_key", AZURITE_KEY)]),
            reader: Arc::new(prefixed),
            url_root: format!("{}/{CONTAINER}/{PREFIX}", azurite.endpoint),
            _servers: (None, Some(azurite), None),
        })
    }

    pub async fn sftp() -> Option<Storage> {
        let sshd = Sshd::start()?;
        let folder = sshd.folder.clone();
        std::fs::create_dir_all(&folder).unwrap();
        let folder = std::fs::canonicalize(&folder).unwrap();
        Some(Storage {
            kind: "sftp",
            config: map(&[
                ("host", &sshd.host),
                ("port", &sshd.port.to_string()),
                ("username", &sshd.username),
                ("folder", folder.to_str().unwrap()),
                ("host_key", &sshd.host_key.public),
            ]),
            secrets: map(&[("private_key", &sshd.client_key.private)]),
            reader: Arc::new(object_store::local::LocalFileSystem::new_with_prefix(&folder).unwrap()),
            url_root: format!("sftp://{}:{}{}", sshd.host, sshd.port, folder.display()),
            _servers: (None, None, Some(sshd)),
        })
    }

    /// Every storage type whose server is available (under CI, all of them).
    pub async fn all(t: &TestServer) -> Vec<Storage> {
        let mut all = vec![Storage::local(t).await];
        all.extend(Storage::s3().await);
        all.extend(Storage::azure().await);
        all.extend(Storage::sftp().await);
        all
    }

    pub fn connection(&self, id: &str) -> pb::CreateConnectionRequest {
        pb::CreateConnectionRequest {
            parent: "environments/acme".into(),
            connection_id: id.into(),
            connection: Some(pb::Connection {
                display_name: format!("{} target", self.kind),
                r#type: self.kind.into(),
                config: self.config.clone().into_iter().collect(),
                secrets: self.secrets.clone().into_iter().collect(),
                contributors_can_use: true,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// The object at a partition location or root-relative path.
    pub async fn read(&self, location_or_path: &str) -> Vec<u8> {
        let path = location_or_path
            .strip_prefix(&self.url_root)
            .map(|p| p.trim_start_matches('/'))
            .unwrap_or(location_or_path);
        let path = object_store::path::Path::parse(path).unwrap();
        match self.reader.get(&path).await {
            Ok(result) => result.bytes().await.unwrap().to_vec(),
            Err(e) => panic!("{}: cannot read {location_or_path}: {e}", self.kind),
        }
    }

    /// Every object under the connection's root.
    pub async fn list(&self) -> Vec<String> {
        use futures::TryStreamExt;
        let mut paths: Vec<String> = self
            .reader
            .list(None)
            .map_ok(|meta| meta.location.to_string())
            .try_collect()
            .await
            .unwrap();
        paths.sort();
        paths
    }

    /// model.json of an export folder, and the rows of each entity's partitions (by entity),
    /// each row a map from column name to cell.
    pub async fn read_folder(&self, folder: &str) -> (Value, BTreeMap<String, Vec<BTreeMap<String, String>>>) {
        let model: Value = serde_json::from_slice(&self.read(&format!("{folder}/model.json")).await).unwrap();
        let mut rows = BTreeMap::new();
        for entity in model["entities"].as_array().unwrap() {
            let name = entity["name"].as_str().unwrap().to_string();
            let mut entity_rows = Vec::new();
            for partition in entity["partitions"].as_array().unwrap() {
                let location = partition["location"].as_str().unwrap();
                assert!(
                    location.starts_with(&self.url_root),
                    "{}: {location} is not under {}",
                    self.kind,
                    self.url_root
                );
                let bytes = self.read(location).await;
                let mut reader = csv::Reader::from_reader(bytes.as_slice());
                let header: Vec<String> = reader.headers().unwrap().iter().map(str::to_string).collect();
                for record in reader.records() {
                    let record = record.unwrap();
                    entity_rows.push(header.iter().cloned().zip(record.iter().map(str::to_string)).collect());
                }
            }
            rows.insert(name, entity_rows);
        }
        (model, rows)
    }
}
