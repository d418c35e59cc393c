//! What a connection type is: its category, what it accepts, and the keys it needs. The
//! catalogue itself (one entry per target) lives in `connectors::registry`; the rules that use
//! it (config validation, eligibility, limits) live here, as pure functions.

use std::collections::BTreeMap;

use super::output_area::check_relative_folder;
use crate::error::FieldViolation;

/// Whether a byte can separate CSV fields in every reader: a printable ASCII character other
/// than the quote, or a tab.
pub fn is_csv_delimiter(byte: u8) -> bool {
    byte == b'\t' || (byte.is_ascii_graphic() || byte == b' ') && byte != b'"'
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Category {
    Storage,
    Database,
    Advertising,
    EmailMarketing,
    Webhook,
}

impl Category {
    /// Targets that address people (audiences), as opposed to writing records as they are.
    pub fn addresses_people(self) -> bool {
        matches!(self, Category::Advertising | Category::EmailMarketing)
    }
}

named_enum! {
    pub enum ExportKind {
        DataOut,
        Segment,
    }
}

named_enum! {
    pub enum SegmentType {
        Profile,
        Account,
        Contact,
    }
}

named_enum! {
    pub enum SyncMode {
        Full,
        Incremental,
        Mirror,
    }
}

/// What values a configuration, secret or setting key accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    Text,
    /// A whole number within the bounds.
    Integer {
        min: i64,
        max: i64,
    },
    /// `true` or `false`.
    Bool,
    /// A URL with one of the schemes.
    Url(&'static [&'static str]),
    /// One of the listed values.
    OneOf(&'static [&'static str]),
    /// A CSV delimiter: one printable ASCII character other than `"`, or a tab.
    Delimiter,
    /// A relative folder that every storage type can write: no `.`/`..` segments, no control
    /// characters, no over-long names (see [`check_relative_folder`]).
    RelativePath,
    /// An absolute folder path.
    AbsolutePath,
    /// An S3 bucket name (AWS's naming rules for general purpose buckets).
    BucketName,
    /// An Azure storage account name: 3–24 lowercase letters and digits.
    AzureAccount,
    /// An Azure container name: 3–63 lowercase letters, digits and single hyphens.
    AzureContainer,
    /// An OpenSSH public key line: `<type> <base64 key> [comment]`.
    SshPublicKey,
    /// A PostgreSQL identifier that means the same quoted or not (see [`check_sql_identifier`]).
    SqlIdentifier,
}

#[derive(Debug, Clone, Copy)]
pub struct KeySpec {
    pub key: &'static str,
    pub description: &'static str,
    pub required: bool,
    pub kind: ValueKind,
}

#[derive(Debug, Clone, Copy)]
pub struct TargetOptionSpec {
    pub value: &'static str,
    pub description: &'static str,
    pub identifier_fields: &'static [&'static str],
    pub segment_types: &'static [SegmentType],
}

#[derive(Debug, Clone, Copy)]
pub struct ConnectionTypeSpec {
    pub id: &'static str,
    pub display_name: &'static str,
    pub category: Category,
    pub export_kinds: &'static [ExportKind],
    /// Every segment type the type accepts with some target option.
    pub segment_types: &'static [SegmentType],
    pub sync_modes: &'static [SyncMode],
    pub required_fields: &'static [&'static str],
    pub identifier_fields: &'static [&'static str],
    /// Default maximum profiles per segment; 0 = none.
    pub profile_limit: i64,
    pub minimum_segment_size: i64,
    pub config: &'static [KeySpec],
    pub secrets: &'static [KeySpec],
    /// Secret keys of which exactly one must be set.
    pub one_of_secrets: &'static [&'static str],
    pub settings: &'static [KeySpec],
    pub target_options: &'static [TargetOptionSpec],
}

impl ConnectionTypeSpec {
    pub fn config_key(&self, key: &str) -> Option<&KeySpec> {
        self.config.iter().find(|k| k.key == key)
    }

    pub fn secret_key(&self, key: &str) -> Option<&KeySpec> {
        self.secrets.iter().find(|k| k.key == key)
    }
}

/// Checks one value against its kind; the description says what is expected.
pub fn check_value(spec: &KeySpec, value: &str) -> Result<(), String> {
    match spec.kind {
        ValueKind::Text => {
            if value.trim().is_empty() {
                return Err("must not be empty".into());
            }
        }
        ValueKind::Integer { min, max } => match value.trim().parse::<i64>() {
            Ok(n) if (min..=max).contains(&n) => {}
            _ => return Err(format!("must be a whole number from {min} to {max}")),
        },
        ValueKind::Bool => {
            if value != "true" && value != "false" {
                return Err("must be `true` or `false`".into());
            }
        }
        ValueKind::Url(schemes) => {
            let ok = schemes.iter().any(|scheme| {
                value
                    .strip_prefix(scheme)
                    .and_then(|rest| rest.strip_prefix("://"))
                    .is_some_and(|rest| {
                        !rest.is_empty() && !rest.starts_with('/') && !rest.contains(char::is_whitespace)
                    })
            });
            if !ok {
                let list: Vec<String> = schemes.iter().map(|s| format!("{s}://")).collect();
                return Err(format!("must be a URL starting with {}", list.join(" or ")));
            }
        }
        ValueKind::OneOf(values) => {
            if !values.contains(&value) {
                return Err(format!("must be one of: {}", values.join(", ")));
            }
        }
        ValueKind::Delimiter => {
            if !matches!(value.as_bytes(), [byte] if is_csv_delimiter(*byte)) {
                return Err("must be one printable ASCII character other than `\"`, or a tab".into());
            }
        }
        ValueKind::RelativePath => check_relative_folder(value)?,
        ValueKind::AbsolutePath => {
            if !value.starts_with('/') || value.split('/').any(|part| part == "..") || value.contains('\0') {
                return Err("must be an absolute folder path without `..`".into());
            }
        }
        ValueKind::BucketName => check_bucket_name(value)?,
        ValueKind::AzureAccount => {
            let ok =
                (3..=24).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
            if !ok {
                return Err("must be 3 to 24 lowercase letters and digits (an Azure storage account name)".into());
            }
        }
        ValueKind::AzureContainer => {
            let ok = (3..=63).contains(&value.len())
                && value
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !value.starts_with('-')
                && !value.ends_with('-')
                && !value.contains("--");
            if !ok {
                return Err(
                    "must be 3 to 63 lowercase letters, digits and single hyphens, starting and ending with a \
                     letter or digit (an Azure container name)"
                        .into(),
                );
            }
        }
        ValueKind::SshPublicKey => check_ssh_public_key(value)?,
        ValueKind::SqlIdentifier => check_sql_identifier(value)?,
    }
    Ok(())
}

/// PostgreSQL's longest identifier (NAMEDATALEN - 1 bytes); longer ones are cut silently by
/// the server, so two long names could name one table.
pub const MAX_SQL_IDENTIFIER_BYTES: usize = 63;

/// A lowercase letter or underscore, then lowercase letters, digits and underscores, at most 63
/// bytes: what PostgreSQL reads unquoted as the same name (unquoted names are folded to lower
/// case; `$` and non-ASCII letters are left out, as the SQL standard does). exportd still
/// quotes every identifier it sends, so a keyword such as `user` is safe too.
pub fn check_sql_identifier(value: &str) -> Result<(), String> {
    let bytes = value.as_bytes();
    let ok = (1..=MAX_SQL_IDENTIFIER_BYTES).contains(&bytes.len())
        && bytes.first().is_some_and(|b| b.is_ascii_lowercase() || *b == b'_')
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "must be a PostgreSQL identifier: a lowercase letter or underscore, then lowercase letters, digits \
             and underscores, at most {MAX_SQL_IDENTIFIER_BYTES} bytes"
        ))
    }
}

/// AWS's rules for general purpose bucket names: 3–63 characters of lowercase letters, digits,
/// dots and hyphens, beginning and ending with a letter or digit, no two adjacent dots, not an
/// IP address.
fn check_bucket_name(value: &str) -> Result<(), String> {
    let bytes = value.as_bytes();
    let ok = (3..=63).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'.' || *b == b'-')
        && bytes.first().is_some_and(|b| b.is_ascii_alphanumeric())
        && bytes.last().is_some_and(|b| b.is_ascii_alphanumeric())
        && !value.contains("..")
        && value.parse::<std::net::Ipv4Addr>().is_err();
    if ok {
        Ok(())
    } else {
        Err(
            "must be 3 to 63 lowercase letters, digits, dots and hyphens, starting and ending with a letter or \
             digit (an S3 bucket name)"
                .into(),
        )
    }
}

/// The key's type is repeated inside its base64 blob (RFC 4253 §6.6): a line that is not a key
/// of the type it names is refused.
fn check_ssh_public_key(value: &str) -> Result<(), String> {
    use base64::Engine;
    let expected = "must be an OpenSSH public key line such as `ssh-ed25519 AAAAC3Nza… host`";
    let mut parts = value.split_whitespace();
    let (Some(kind), Some(blob)) = (parts.next(), parts.next()) else {
        return Err(expected.into());
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(blob)
        .map_err(|_| format!("{expected}: the key is not base64"))?;
    let named = decoded
        .get(..4)
        .map(|len| u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize)
        .and_then(|len| decoded.get(4..4 + len));
    if named != Some(kind.as_bytes()) {
        return Err(format!("{expected}: the key data is not a `{kind}` key"));
    }
    Ok(())
}

/// Validates a whole key/value map against specs: unknown keys, missing required keys and bad
/// values, each as its own violation on `<field_prefix>.<key>`.
pub fn check_map(field_prefix: &str, specs: &[KeySpec], values: &BTreeMap<String, String>) -> Vec<FieldViolation> {
    let mut violations = Vec::new();
    for (key, value) in values {
        match specs.iter().find(|s| s.key == key) {
            None => {
                let known: Vec<&str> = specs.iter().map(|s| s.key).collect();
                let description = if known.is_empty() {
                    format!("unknown key '{key}': this connection type takes none")
                } else {
                    format!("unknown key '{key}'; known keys: {}", known.join(", "))
                };
                violations.push(FieldViolation {
                    field: format!("{field_prefix}.{key}"),
                    description,
                });
            }
            Some(spec) => {
                if let Err(description) = check_value(spec, value) {
                    violations.push(FieldViolation {
                        field: format!("{field_prefix}.{key}"),
                        description,
                    });
                }
            }
        }
    }
    violations.extend(missing_keys(field_prefix, specs, values));
    violations
}

/// The required keys `values` lacks, each as its own violation on `<field_prefix>.<key>`.
pub fn missing_keys(field_prefix: &str, specs: &[KeySpec], values: &BTreeMap<String, String>) -> Vec<FieldViolation> {
    specs
        .iter()
        .filter(|s| s.required && !values.contains_key(s.key))
        .map(|spec| FieldViolation {
            field: format!("{field_prefix}.{}", spec.key),
            description: format!("'{}' is required ({})", spec.key, spec.description),
        })
        .collect()
}

/// Exactly one of `one_of` must be present in `values` (e.g. `password` or `private_key`).
pub fn check_one_of(field_prefix: &str, one_of: &[&str], values: &BTreeMap<String, String>) -> Vec<FieldViolation> {
    if one_of.is_empty() {
        return Vec::new();
    }
    let present: Vec<&&str> = one_of.iter().filter(|k| values.contains_key(**k)).collect();
    match present.len() {
        1 => Vec::new(),
        0 => vec![FieldViolation {
            field: format!("{field_prefix}.{}", one_of[0]),
            description: format!("one of {} is required", one_of.join(" or ")),
        }],
        _ => vec![FieldViolation {
            field: format!("{field_prefix}.{}", present[1]),
            description: format!("set only one of {}", one_of.join(" or ")),
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPECS: &[KeySpec] = &[
        KeySpec {
            key: "bucket",
            description: "bucket name",
            required: true,
            kind: ValueKind::Text,
        },
        KeySpec {
            key: "port",
            description: "port",
            required: false,
            kind: ValueKind::Integer { min: 1, max: 65535 },
        },
        KeySpec {
            key: "endpoint",
            description: "endpoint",
            required: false,
            kind: ValueKind::Url(&["http", "https"]),
        },
    ];

    #[test]
    fn maps_report_every_problem_with_its_field() {
        let values = BTreeMap::from([
            ("port".to_string(), "99999".to_string()),
            ("endpoint".to_string(), "ftp://x".to_string()),
            ("bukket".to_string(), "x".to_string()),
        ]);
        let mut fields: Vec<String> = check_map("connection.config", SPECS, &values)
            .into_iter()
            .map(|v| v.field)
            .collect();
        fields.sort();
        assert_eq!(
            fields,
            vec![
                "connection.config.bucket",
                "connection.config.bukket",
                "connection.config.endpoint",
                "connection.config.port"
            ]
        );
    }

    #[test]
    fn one_of_requires_exactly_one() {
        let one_of = &["password", "private_key"];
        assert_eq!(check_one_of("s", one_of, &BTreeMap::new()).len(), 1);
        let both = BTreeMap::from([
            ("password".to_string(), "a".to_string()),
            ("private_key".to_string(), "b".to_string()),
        ]);
        assert_eq!(check_one_of("s", one_of, &both)[0].field, "s.private_key");
        let one = BTreeMap::from([("password".to_string(), "a".to_string())]);
        assert!(check_one_of("s", one_of, &one).is_empty());
    }

    #[test]
    fn values_are_checked_by_kind() {
        let path = KeySpec {
            key: "folder",
            description: "",
            required: false,
            kind: ValueKind::RelativePath,
        };
        assert!(check_value(&path, "a/b").is_ok());
        assert!(check_value(&path, "../etc").is_err());
        assert!(check_value(&path, "/abs").is_err());
        let delimiter = KeySpec {
            key: "delimiter",
            description: "",
            required: false,
            kind: ValueKind::Delimiter,
        };
        assert!(check_value(&delimiter, ";").is_ok());
        assert!(check_value(&delimiter, "\t").is_ok());
        for bad in [";;", "", "\"", "\n", "é", "；"] {
            assert!(check_value(&delimiter, bad).is_err(), "{bad:?}");
        }
        assert!(check_value(&path, "./x").is_err());
    }
}
