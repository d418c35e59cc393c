//! The list of connection types (CONNECTORS.md) and of the connectors built for them: each
//! built connector declares its own type next to its code (`SPEC`); the types still without a
//! connector are declared here. Ids and keys are part of the API.

use super::Connector;
use super::storage_connector::StorageConnector;
use super::{azure_blob, facebook_ads, google_ads, linkedin_ads, local_files, mailchimp, postgres, s3, sftp, webhook};
use crate::domain::connection::Connection;
use crate::domain::connection_type::{
    Category, ConnectionTypeSpec, ExportKind, KeySpec, SegmentType, SyncMode, TargetOptionSpec, ValueKind,
};
use crate::error::{Error, Result};

use ExportKind::*;
use SegmentType::*;
use SyncMode::*;

pub(super) const fn key(key: &'static str, description: &'static str, kind: ValueKind) -> KeySpec {
    KeySpec {
        key,
        description,
        required: true,
        kind,
    }
}

pub(super) const fn optional(key: &'static str, description: &'static str, kind: ValueKind) -> KeySpec {
    KeySpec {
        key,
        description,
        required: false,
        kind,
    }
}

pub(super) const TEXT: ValueKind = ValueKind::Text;
pub(super) const HTTP_URL: ValueKind = ValueKind::Url(&["https", "http"]);
pub(super) const BASE_URL: KeySpec = optional(
    "base_url",
    "replaces the vendor's API root (proxy, sandbox or test double)",
    HTTP_URL,
);
pub(super) const ALL_SEGMENTS: &[SegmentType] = &[Profile, Account, Contact];
pub(super) const PEOPLE_SEGMENTS: &[SegmentType] = &[Profile, Contact];
pub(super) const BOTH_KINDS: &[ExportKind] = &[DataOut, Segment];
pub(super) const FILE_MODES: &[SyncMode] = &[Full, Incremental];
pub(super) const AUDIENCE_MODES: &[SyncMode] = &[Full, Mirror];

/// Export settings of every storage type (CONNECTORS.md).
pub(super) const STORAGE_SETTINGS: &[KeySpec] = &[
    optional(
        "folder",
        "folder under the connection's root or prefix (default: the export id); two exports of an \
         environment never write to the same or nested folders",
        ValueKind::RelativePath,
    ),
    optional(
        "format",
        "`csv` (default) or `parquet` (typed columns, one file per partition)",
        ValueKind::OneOf(&["csv", "parquet"]),
    ),
    optional(
        "compression",
        "`none` (default) or `gzip` for CSV; `snappy` (default), `zstd` or `none` for Parquet",
        ValueKind::OneOf(&["none", "gzip", "snappy", "zstd"]),
    ),
    optional(
        "delimiter",
        "CSV field delimiter: one printable ASCII character other than `\"`, or a tab (default `,`)",
        ValueKind::Delimiter,
    ),
    optional(
        "max_rows_per_file",
        "rows per partition file before a new one starts (default 1,000,000)",
        ValueKind::Integer {
            min: 1,
            max: 1_000_000_000,
        },
    ),
    optional(
        "keep_runs",
        "keep the partition folders of the last N successful runs (the new one included) and delete \
         older ones after each commit; never those model.json points to (default: keep all)",
        ValueKind::Integer { min: 1, max: 100_000 },
    ),
];

pub(super) const ADVERTISING_SETTINGS: &[KeySpec] = &[
    optional(
        "audience_name",
        "audience name (default: the segment's display name); created if absent",
        TEXT,
    ),
    optional("audience_id", "an existing audience to fill instead", TEXT),
    optional("target", "`CONTACT` (default)", ValueKind::OneOf(&["CONTACT"])),
];

pub(super) const CONTACT_TARGET: TargetOptionSpec = TargetOptionSpec {
    value: "CONTACT",
    description: "people, matched by their identifiers (default)",
    identifier_fields: &["email", "phone"],
    segment_types: PEOPLE_SEGMENTS,
};

/// A storage type: both export kinds, every segment type, FULL and INCREMENTAL, no limits,
/// the storage export settings; only its id, name and keys differ.
pub(super) const fn storage_type(
    id: &'static str,
    display_name: &'static str,
    config: &'static [KeySpec],
    secrets: &'static [KeySpec],
    one_of_secrets: &'static [&'static str],
) -> ConnectionTypeSpec {
    ConnectionTypeSpec {
        id,
        display_name,
        category: Category::Storage,
        export_kinds: BOTH_KINDS,
        segment_types: ALL_SEGMENTS,
        sync_modes: FILE_MODES,
        required_fields: &[],
        identifier_fields: &[],
        profile_limit: 0,
        minimum_segment_size: 0,
        config,
        secrets,
        one_of_secrets,
        settings: STORAGE_SETTINGS,
        target_options: &[],
    }
}

pub const CONNECTION_TYPES: &[ConnectionTypeSpec] = &[
    local_files::SPEC,
    s3::SPEC,
    azure_blob::SPEC,
    sftp::SPEC,
    postgres::SPEC,
    webhook::SPEC,
    mailchimp::SPEC,
    linkedin_ads::SPEC,
    facebook_ads::SPEC,
    google_ads::SPEC,
];

/// The connectors built so far, by their type's spec.
static CONNECTORS: &[(&ConnectionTypeSpec, &(dyn Connector + 'static))] = &[
    (&local_files::SPEC, &StorageConnector(local_files::LocalFiles)),
    (&s3::SPEC, &StorageConnector(s3::S3)),
    (&azure_blob::SPEC, &StorageConnector(azure_blob::AzureBlob)),
    (&sftp::SPEC, &StorageConnector(sftp::Sftp)),
    (&postgres::SPEC, &postgres::Postgres),
    (&webhook::SPEC, &webhook::Webhook),
    (&mailchimp::SPEC, &mailchimp::Mailchimp),
    (&facebook_ads::SPEC, &facebook_ads::FacebookAds),
    (&google_ads::SPEC, &google_ads::GoogleAds),
    (&linkedin_ads::SPEC, &linkedin_ads::LinkedInAds),
];

/// The connector of a type, if this version has one.
pub fn connector(type_id: &str) -> Option<&'static dyn Connector> {
    CONNECTORS
        .iter()
        .find(|(spec, _)| spec.id == type_id)
        .map(|(_, connector)| *connector)
}

pub fn find(id: &str) -> Option<&'static ConnectionTypeSpec> {
    CONNECTION_TYPES.iter().find(|t| t.id == id)
}

/// The type a request names (`connection.type`): INVALID_ARGUMENT, listing the known types,
/// when there is no such type.
pub fn requested(type_id: &str) -> Result<&'static ConnectionTypeSpec> {
    find(type_id).ok_or_else(|| {
        let known = known_ids().join(", ");
        let description = if type_id.is_empty() {
            format!("a connection type is required; known types: {known}")
        } else {
            format!("unknown connection type '{type_id}'; known types: {known}")
        };
        Error::invalid("connection.type", description)
    })
}

/// The type of a stored connection. It was known when the connection was stored, so a type
/// this version does not know is the server's fault (INTERNAL), not the caller's.
pub fn type_of(connection: &Connection) -> Result<&'static ConnectionTypeSpec> {
    find(&connection.type_id).ok_or_else(|| {
        Error::internal(format!(
            "connection '{}' has the unknown type '{}'",
            connection.name, connection.type_id
        ))
    })
}

pub fn known_ids() -> Vec<&'static str> {
    CONNECTION_TYPES.iter().map(|t| t.id).collect()
}
