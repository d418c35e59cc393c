//! The catalogue of connection types (CONNECTORS.md): ids, categories, what each accepts, and
//! the configuration, secret and setting keys it takes. Ids and keys are part of the API.

use crate::domain::connection_type::{
    Category, ConnectionTypeSpec, ExportKind, KeySpec, SegmentType, SyncMode, TargetOptionSpec, ValueKind,
};

use ExportKind::*;
use SegmentType::*;
use SyncMode::*;

const fn key(key: &'static str, description: &'static str, kind: ValueKind) -> KeySpec {
    KeySpec {
        key,
        description,
        required: true,
        kind,
    }
}

const fn optional(key: &'static str, description: &'static str, kind: ValueKind) -> KeySpec {
    KeySpec {
        key,
        description,
        required: false,
        kind,
    }
}

const TEXT: ValueKind = ValueKind::Text;
const HTTP_URL: ValueKind = ValueKind::Url(&["https", "http"]);
const BASE_URL: KeySpec = optional(
    "base_url",
    "replaces the vendor's API root (proxy, sandbox or test double)",
    HTTP_URL,
);
const ALL_SEGMENTS: &[SegmentType] = &[Profile, Account, Contact];
const PEOPLE_SEGMENTS: &[SegmentType] = &[Profile, Contact];
const BOTH_KINDS: &[ExportKind] = &[DataOut, Segment];
const FILE_MODES: &[SyncMode] = &[Full, Incremental];
const AUDIENCE_MODES: &[SyncMode] = &[Full, Mirror];

/// Export settings of every storage type (CONNECTORS.md).
const STORAGE_SETTINGS: &[KeySpec] = &[
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

const ADVERTISING_SETTINGS: &[KeySpec] = &[
    optional(
        "audience_name",
        "audience name (default: the segment's display name); created if absent",
        TEXT,
    ),
    optional("audience_id", "an existing audience to fill instead", TEXT),
    optional("target", "`CONTACT` (default)", ValueKind::OneOf(&["CONTACT"])),
];

const CONTACT_TARGET: TargetOptionSpec = TargetOptionSpec {
    value: "CONTACT",
    description: "people, matched by their identifiers (default)",
    identifier_fields: &["email", "phone"],
    segment_types: PEOPLE_SEGMENTS,
};

pub const CONNECTION_TYPES: &[ConnectionTypeSpec] = &[
    ConnectionTypeSpec {
        id: "local-files",
        display_name: "Local files",
        category: Category::Storage,
        export_kinds: BOTH_KINDS,
        segment_types: ALL_SEGMENTS,
        sync_modes: FILE_MODES,
        required_fields: &[],
        identifier_fields: &[],
        profile_limit: 0,
        minimum_segment_size: 0,
        config: &[optional(
            "root",
            "absolute folder to write under, inside one of the server's allowed_roots \
             (default: <exports_root>/<environment>/<connection>)",
            ValueKind::AbsolutePath,
        )],
        secrets: &[],
        one_of_secrets: &[],
        settings: STORAGE_SETTINGS,
        target_options: &[],
    },
    ConnectionTypeSpec {
        id: "s3",
        display_name: "Amazon S3",
        category: Category::Storage,
        export_kinds: BOTH_KINDS,
        segment_types: ALL_SEGMENTS,
        sync_modes: FILE_MODES,
        required_fields: &[],
        identifier_fields: &[],
        profile_limit: 0,
        minimum_segment_size: 0,
        config: &[
            key("bucket", "bucket name", ValueKind::BucketName),
            key("region", "AWS region, e.g. eu-west-1", TEXT),
            optional("endpoint", "S3-compatible endpoint URL", HTTP_URL),
            optional("prefix", "key prefix for every object", ValueKind::RelativePath),
        ],
        secrets: &[
            key("access_key_id", "access key id", TEXT),
            key("secret_access_key", "secret access key", TEXT),
        ],
        one_of_secrets: &[],
        settings: STORAGE_SETTINGS,
        target_options: &[],
    },
    ConnectionTypeSpec {
        id: "azure-blob",
        display_name: "Azure Blob Storage",
        category: Category::Storage,
        export_kinds: BOTH_KINDS,
        segment_types: ALL_SEGMENTS,
        sync_modes: FILE_MODES,
        required_fields: &[],
        identifier_fields: &[],
        profile_limit: 0,
        minimum_segment_size: 0,
        config: &[
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
        secrets: &[
            optional("account_key", "storage account key", TEXT),
            optional("sas_token", "shared access signature", TEXT),
        ],
        one_of_secrets: &["account_key", "sas_token"],
        settings: STORAGE_SETTINGS,
        target_options: &[],
    },
    ConnectionTypeSpec {
        id: "sftp",
        display_name: "SFTP",
        category: Category::Storage,
        export_kinds: BOTH_KINDS,
        segment_types: ALL_SEGMENTS,
        sync_modes: FILE_MODES,
        required_fields: &[],
        identifier_fields: &[],
        profile_limit: 0,
        minimum_segment_size: 0,
        config: &[
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
        secrets: &[
            optional("password", "password", TEXT),
            optional("private_key", "OpenSSH private key", TEXT),
        ],
        one_of_secrets: &["password", "private_key"],
        settings: STORAGE_SETTINGS,
        target_options: &[],
    },
    ConnectionTypeSpec {
        id: "postgres",
        display_name: "PostgreSQL",
        category: Category::Database,
        export_kinds: BOTH_KINDS,
        segment_types: ALL_SEGMENTS,
        sync_modes: FILE_MODES,
        required_fields: &[],
        identifier_fields: &[],
        profile_limit: 0,
        minimum_segment_size: 0,
        config: &[
            optional("schema", "schema to write into (default public)", TEXT),
            optional("table_prefix", "prefix for every table name", TEXT),
        ],
        secrets: &[key(
            "url",
            "connection URL, postgres://user:password@host:port/database",
            ValueKind::Url(&["postgres", "postgresql"]),
        )],
        one_of_secrets: &[],
        settings: &[
            optional("table", "table name (default: the entity or segment id)", TEXT),
            optional(
                "mode",
                "`replace` (default) or `upsert`",
                ValueKind::OneOf(&["replace", "upsert"]),
            ),
        ],
        target_options: &[],
    },
    ConnectionTypeSpec {
        id: "webhook",
        display_name: "Webhook",
        category: Category::Webhook,
        export_kinds: BOTH_KINDS,
        segment_types: ALL_SEGMENTS,
        sync_modes: FILE_MODES,
        required_fields: &[],
        identifier_fields: &[],
        profile_limit: 0,
        minimum_segment_size: 0,
        config: &[
            key("url", "endpoint receiving JSON batches by POST", HTTP_URL),
            optional(
                "batch_size",
                "records per POST (default 500)",
                ValueKind::Integer { min: 1, max: 10_000 },
            ),
        ],
        secrets: &[optional(
            "signing_secret",
            "HMAC-SHA256 key for the X-Exportd-Signature header",
            TEXT,
        )],
        one_of_secrets: &[],
        settings: &[],
        target_options: &[],
    },
    ConnectionTypeSpec {
        id: "mailchimp",
        display_name: "Mailchimp",
        category: Category::EmailMarketing,
        export_kinds: &[Segment],
        segment_types: PEOPLE_SEGMENTS,
        sync_modes: AUDIENCE_MODES,
        required_fields: &["email"],
        identifier_fields: &[],
        profile_limit: 1_000_000,
        minimum_segment_size: 0,
        config: &[
            key("server_prefix", "data center of the account, e.g. us21", TEXT),
            key("audience_id", "the audience (list) members go to", TEXT),
            BASE_URL,
        ],
        secrets: &[key("api_key", "Mailchimp API key", TEXT)],
        one_of_secrets: &[],
        settings: &[
            optional("audience_id", "overrides the connection's audience", TEXT),
            optional(
                "tag_with_segment",
                "`true` tags each member with the segment's display name (default false)",
                ValueKind::Bool,
            ),
        ],
        target_options: &[],
    },
    ConnectionTypeSpec {
        id: "linkedin-ads",
        display_name: "LinkedIn Ads",
        category: Category::Advertising,
        export_kinds: &[Segment],
        segment_types: ALL_SEGMENTS,
        sync_modes: AUDIENCE_MODES,
        required_fields: &[],
        identifier_fields: &["email"],
        profile_limit: 100_000,
        minimum_segment_size: 300,
        config: &[key("ad_account_id", "sponsored account id", TEXT), BASE_URL],
        secrets: &[key("access_token", "OAuth access token", TEXT)],
        one_of_secrets: &[],
        settings: &[
            optional(
                "audience_name",
                "audience name (default: the segment's display name); created if absent",
                TEXT,
            ),
            optional("audience_id", "an existing audience to fill instead", TEXT),
            optional(
                "target",
                "`CONTACT` (default) or `COMPANY`",
                ValueKind::OneOf(&["CONTACT", "COMPANY"]),
            ),
        ],
        target_options: &[
            TargetOptionSpec {
                value: "CONTACT",
                description: "people, matched by email (default)",
                identifier_fields: &["email"],
                segment_types: PEOPLE_SEGMENTS,
            },
            TargetOptionSpec {
                value: "COMPANY",
                description: "companies, matched by name, email domain or website",
                identifier_fields: &["company_name", "email_domain", "company_website"],
                segment_types: &[Account],
            },
        ],
    },
    ConnectionTypeSpec {
        id: "facebook-ads",
        display_name: "Facebook Ads",
        category: Category::Advertising,
        export_kinds: &[Segment],
        segment_types: PEOPLE_SEGMENTS,
        sync_modes: AUDIENCE_MODES,
        required_fields: &[],
        identifier_fields: &["email", "phone"],
        profile_limit: 10_000_000,
        minimum_segment_size: 0,
        config: &[
            key("ad_account_id", "ad account id (without act_)", TEXT),
            optional("api_version", "Graph API version, e.g. v21.0", TEXT),
            BASE_URL,
        ],
        secrets: &[key("access_token", "system-user access token", TEXT)],
        one_of_secrets: &[],
        settings: ADVERTISING_SETTINGS,
        target_options: &[CONTACT_TARGET],
    },
    ConnectionTypeSpec {
        id: "google-ads",
        display_name: "Google Ads",
        category: Category::Advertising,
        export_kinds: &[Segment],
        segment_types: PEOPLE_SEGMENTS,
        sync_modes: AUDIENCE_MODES,
        required_fields: &[],
        identifier_fields: &["email", "phone"],
        profile_limit: 1_000_000,
        minimum_segment_size: 0,
        config: &[
            key("customer_id", "customer id, digits only", TEXT),
            optional("login_customer_id", "manager account id, digits only", TEXT),
            BASE_URL,
        ],
        secrets: &[
            key("developer_token", "developer token", TEXT),
            key("oauth_refresh_token", "OAuth refresh token", TEXT),
            key("oauth_client_id", "OAuth client id", TEXT),
            key("oauth_client_secret", "OAuth client secret", TEXT),
        ],
        one_of_secrets: &[],
        settings: ADVERTISING_SETTINGS,
        target_options: &[CONTACT_TARGET],
    },
];

pub fn find(id: &str) -> Option<&'static ConnectionTypeSpec> {
    CONNECTION_TYPES.iter().find(|t| t.id == id)
}

pub fn known_ids() -> Vec<&'static str> {
    CONNECTION_TYPES.iter().map(|t| t.id).collect()
}
