//! `sftp`: CDM folders on an SFTP server, under the connection's `folder`; the server's host
//! key must equal the pinned `host_key`, else the test and every run fail naming both
//! fingerprints and nothing is written. The protocol work (and its references) is in
//! `storage/sftp.rs`; this file turns a connection into its store.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;

use super::registry::{TEXT, key, optional, storage_type};
use crate::domain::connection_type::{ConnectionTypeSpec, ValueKind};

use super::retry::retried;
use super::storage::ByteStore;
use super::storage::retrying::Retrying;
use super::storage::sftp::{self, SftpBytes, SftpConfig, SftpCredentials};
use super::storage_connector::StorageKind;
use super::{Check, Target};
use crate::connectors::retry::Failure;
use crate::error::FieldViolation;

pub struct Sftp;

/// The connection type this file implements (CONNECTORS.md): ids and keys are part of the API.
pub const SPEC: ConnectionTypeSpec = storage_type(
    "sftp",
    "SFTP",
    &[
        key("host", "server host name or address", TEXT),
        optional(
            "port",
            "server port (default 22)",
            ValueKind::Integer { min: 1, max: 65535 },
        ),
        key("username", "login name", TEXT),
        optional("folder", "remote folder to write under", TEXT),
        key(
            "host_key",
            "the server's public host key, OpenSSH format (pinned)",
            ValueKind::SshPublicKey,
        ),
    ],
    &[
        optional("password", "password", TEXT),
        optional("private_key", "OpenSSH private key", TEXT),
    ],
    &["password", "private_key"],
);

/// The store's configuration from a connection's config and secrets.
fn sftp_config(config: &BTreeMap<String, String>, secrets: &BTreeMap<String, String>) -> SftpConfig {
    let get = |key: &str| config.get(key).cloned().unwrap_or_default();
    let credentials = match (secrets.get("private_key"), secrets.get("password")) {
        (Some(key), _) => SftpCredentials::PrivateKey {
            key: key.clone(),
            passphrase: secrets.get("passphrase").cloned(),
        },
        (None, password) => SftpCredentials::Password(password.cloned().unwrap_or_default()),
    };
    SftpConfig {
        host: get("host"),
        port: config
            .get("port")
            .and_then(|p| p.parse().ok())
            .unwrap_or(sftp::DEFAULT_PORT),
        username: get("username"),
        folder: get("folder"),
        host_key: get("host_key"),
        credentials,
    }
}

/// `sftp://host:port/folder` as configured (before the server resolves a relative folder).
fn configured_root(target: &Target<'_>) -> String {
    let config = sftp_config(&target.connection.config, &BTreeMap::new());
    format!(
        "sftp://{}:{}/{}",
        config.host,
        config.port,
        config.folder.trim_start_matches('/')
    )
}

#[async_trait]
impl StorageKind for Sftp {
    async fn open(&self, target: &Target<'_>) -> Result<Arc<dyn ByteStore>, Failure> {
        let store = SftpBytes::new(&sftp_config(&target.connection.config, target.secrets))?;
        // Resolves a relative folder, so that partition locations are absolute paths.
        retried(SPEC.id, |_| store.root()).await?;
        Ok(Arc::new(Retrying::new(SPEC.id, store)))
    }

    async fn probe(&self, target: &Target<'_>) -> Option<Vec<Check>> {
        Some(sftp::probe(&sftp_config(&target.connection.config, target.secrets)).await)
    }

    fn check_config(
        &self,
        config: &BTreeMap<String, String>,
        secrets: &BTreeMap<String, String>,
    ) -> Vec<FieldViolation> {
        match sftp::check_config(&sftp_config(config, secrets)) {
            Ok(()) => Vec::new(),
            Err(error) => {
                let group = if matches!(error.key, "password" | "private_key") {
                    "secrets"
                } else {
                    "config"
                };
                vec![FieldViolation {
                    field: format!("connection.{group}.{}", error.key),
                    description: error.message,
                }]
            }
        }
    }

    fn private_locations(&self, target: &Target<'_>) -> Vec<String> {
        vec![configured_root(target)]
    }
}
