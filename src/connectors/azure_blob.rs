//! `azure-blob`: CDM folders in an Azure Blob Storage container (with `hierarchical_namespace`,
//! an ADLS Gen2 account, whose readers expect `dfs` locations) under the connection's `prefix`.
//!
//! References followed: Azure Storage Blob service REST API (Put Blob, Put Block / Put Block
//! List for large blobs — uncommitted blocks are discarded by the service after seven days, so an
//! aborted upload sends nothing —, List Blobs, Delete Blob; error codes `ContainerNotFound`,
//! `AuthenticationFailed`, `AuthorizationPermissionMismatch`), the ADLS Gen2 URI format
//! (`https://<account>.dfs.core.windows.net/<container>/<path>`), and
//! `object_store::azure::MicrosoftAzureBuilder` (account key or SAS, custom endpoint for
//! Azurite and other clouds).

use std::sync::Arc;

use async_trait::async_trait;

use super::registry::{HTTP_URL, TEXT, key, optional, storage_type};
use crate::domain::connection_type::{ConnectionTypeSpec, ValueKind};
use object_store::azure::MicrosoftAzureBuilder;

use super::storage::object::{ObjectBytes, retry_config};
use super::storage::{ByteStore, encode_url_path};
use super::storage_connector::StorageKind;
use super::{Target, object_store_step};
use crate::connectors::retry::Failure;

pub struct AzureBlob;

/// The connection type this file implements (CONNECTORS.md): ids and keys are part of the API.
pub const SPEC: ConnectionTypeSpec = storage_type(
    "azure-blob",
    "Azure Blob Storage",
    &[
        key("account", "storage account name", ValueKind::AzureAccount),
        key("container", "container name", ValueKind::AzureContainer),
        optional(
            "endpoint",
            "blob endpoint URL (default https://<account>.blob.core.windows.net)",
            HTTP_URL,
        ),
        optional("prefix", "path prefix for every blob", ValueKind::RelativePath),
        optional(
            "hierarchical_namespace",
            "`true` for ADLS Gen2 accounts",
            ValueKind::Bool,
        ),
    ],
    &[
        optional("account_key", "storage account key", TEXT),
        optional("sas_token", "shared access signature", TEXT),
    ],
    &["account_key", "sas_token"],
);

/// `https://<account>.blob.core.windows.net/<container>/<prefix>` (`dfs` for ADLS Gen2), or
/// `<endpoint>/<container>/<prefix>`.
fn url_root(target: &Target<'_>) -> String {
    let account = target.config("account");
    let endpoint = target.config("endpoint").trim_end_matches('/');
    let base = if !endpoint.is_empty() {
        endpoint.to_string()
    } else if target.config("hierarchical_namespace") == "true" {
        format!("https://{account}.dfs.core.windows.net")
    } else {
        format!("https://{account}.blob.core.windows.net")
    };
    let prefix = target.config("prefix").trim_matches('/');
    let container = target.config("container");
    if prefix.is_empty() {
        format!("{base}/{container}")
    } else {
        format!("{base}/{container}/{}", encode_url_path(prefix))
    }
}

/// A SAS token (`sv=…&sig=…`, with or without the leading `?`) as query pairs.
fn sas_pairs(token: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(token.trim_start_matches('?').as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

#[async_trait]
impl StorageKind for AzureBlob {
    async fn open(&self, target: &Target<'_>) -> Result<Arc<dyn ByteStore>, Failure> {
        super::ensure_tls_provider();
        let mut builder = MicrosoftAzureBuilder::new()
            .with_account(target.config("account"))
            .with_container_name(target.config("container"))
            .with_retry(retry_config());
        let mut secrets: Vec<String> = target.secrets.values().cloned().collect();
        if let Some(key) = target.secrets.get("account_key") {
            builder = builder.with_access_key(key);
        } else if let Some(token) = target.secrets.get("sas_token") {
            let pairs = sas_pairs(token);
            secrets.extend(pairs.iter().map(|(_, v)| v.clone()));
            builder = builder.with_sas_authorization(pairs);
        }
        let endpoint = target.config("endpoint");
        if !endpoint.is_empty() {
            builder = builder
                .with_endpoint(endpoint.to_string())
                .with_allow_http(endpoint.starts_with("http://"));
        }
        let store = builder.build().map_err(|e| Failure::Permanent {
            message: super::storage::object::redact(&format!("the Azure configuration cannot be used: {e}"), &secrets),
        })?;
        Ok(Arc::new(ObjectBytes::new(
            Arc::new(store),
            target.config("prefix"),
            url_root(target),
            secrets,
        )))
    }

    fn reach_steps(&self) -> &'static [&'static str] {
        &["dns", "tcp_connect", "tls", "authentication", "container_exists"]
    }

    fn failed_step(&self, failure: &Failure) -> &'static str {
        object_store_step(failure.message(), "ContainerNotFound", "container_exists")
    }

    fn private_locations(&self, target: &Target<'_>) -> Vec<String> {
        vec![url_root(target)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sas_tokens_split_into_pairs() {
        assert_eq!(
            sas_pairs("?sv=2022-11-02&sig=a%2Bb%3D"),
            vec![
                ("sv".to_string(), "2022-11-02".to_string()),
                ("sig".to_string(), "a+b=".to_string())
            ]
        );
    }
}
