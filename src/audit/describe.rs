//! What a mutating request changes, read from the request message through the protos'
//! descriptors — the same rules for every RPC, so no handler describes itself:
//!
//! - resource: the request's `name`; else the `name` of the resource message it carries (an
//!   update); else `parent` + collection + the `<resource>_id` (a create; a generated id is
//!   filled in later by `scope::created`); else the `parent`.
//! - changed fields: the top-level fields set in the resource message (a create, an update
//!   without mask; the mask, when given, replaces them through `scope::update_paths`), else the
//!   fields set in the request besides its addressing (`force`, `mode`, …). A `secrets` map is
//!   shown as `secrets.<key>`, never with values.
//! - CancelExportRun is recorded against the export, its run named in the summary.
//!
//! Only field numbers, names and string values of addressing fields are read: a value of any
//! other field never leaves this module.

use std::collections::HashMap;
use std::sync::OnceLock;

use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FieldDescriptorProto, FileDescriptorSet};

use super::scope::Subject;

/// What [`describe`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Description {
    pub subject: Subject,
    /// Keys of the `secrets` map of the resource message.
    pub secret_keys: Vec<String>,
    /// `validate_only` was set: nothing will change.
    pub validate_only: bool,
}

/// Fields of a request that address or qualify the call rather than change something.
const ADDRESSING: &[&str] = &["name", "parent", "etag", "request_id", "validate_only", "update_mask"];

struct Protos {
    /// `/exportd.v1.Service/Method` → its input type, for unary methods only.
    inputs: HashMap<String, String>,
    /// `.exportd.v1.Message` (nested types too) → its descriptor.
    messages: HashMap<String, DescriptorProto>,
}

fn protos() -> &'static Protos {
    static PROTOS: OnceLock<Protos> = OnceLock::new();
    PROTOS.get_or_init(|| {
        let set = FileDescriptorSet::decode(crate::pb::FILE_DESCRIPTOR_SET).expect("the build embeds a valid set");
        let mut inputs = HashMap::new();
        let mut messages = HashMap::new();
        for file in &set.file {
            let package = file.package();
            for service in &file.service {
                for method in &service.method {
                    if !method.client_streaming() {
                        inputs.insert(
                            format!("/{package}.{}/{}", service.name(), method.name()),
                            method.input_type().to_string(),
                        );
                    }
                }
            }
            for message in &file.message_type {
                add_message(&mut messages, &format!(".{package}"), message);
            }
        }
        Protos { inputs, messages }
    })
}

fn add_message(messages: &mut HashMap<String, DescriptorProto>, scope: &str, message: &DescriptorProto) {
    let name = format!("{scope}.{}", message.name());
    for nested in &message.nested_type {
        add_message(messages, &name, nested);
    }
    messages.insert(name, message.clone());
}

/// One field as it appears on the wire.
enum Wire<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

fn varint(buf: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = buf.split_first()?;
        *buf = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// The top-level fields of an encoded message, in wire order (stops at anything malformed;
/// the message was decoded by tonic before, so that does not happen).
fn wire_fields(mut buf: &[u8]) -> Vec<(u64, Wire<'_>)> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let Some(key) = varint(&mut buf) else { break };
        let value = match key & 7 {
            0 => match varint(&mut buf) {
                Some(v) => Wire::Varint(v),
                None => break,
            },
            1 | 5 => {
                let len = if key & 7 == 1 { 8 } else { 4 };
                if buf.len() < len {
                    break;
                }
                buf = &buf[len..];
                Wire::Fixed
            }
            2 => {
                let Some(len) = varint(&mut buf).and_then(|l| usize::try_from(l).ok()) else {
                    break;
                };
                if buf.len() < len {
                    break;
                }
                let (bytes, rest) = buf.split_at(len);
                buf = rest;
                Wire::Bytes(bytes)
            }
            _ => break,
        };
        out.push((key >> 3, value));
    }
    out
}

/// A message's fields by name, with their wire values (the last one of a singular field).
struct Fields<'a> {
    descriptor: &'a DescriptorProto,
    present: Vec<(&'a FieldDescriptorProto, Wire<'a>)>,
}

impl<'a> Fields<'a> {
    fn read(descriptor: &'a DescriptorProto, encoded: &'a [u8]) -> Self {
        let present = wire_fields(encoded)
            .into_iter()
            .filter_map(|(number, wire)| {
                let field = descriptor
                    .field
                    .iter()
                    .find(|f| i64::from(f.number()) == number as i64)?;
                Some((field, wire))
            })
            .collect();
        Fields { descriptor, present }
    }

    fn string(&self, name: &str) -> String {
        self.present
            .iter()
            .rev()
            .find(|(f, _)| f.name() == name && f.r#type() == Type::String)
            .and_then(|(_, wire)| match wire {
                Wire::Bytes(bytes) => std::str::from_utf8(bytes).ok().map(str::to_string),
                _ => None,
            })
            .unwrap_or_default()
    }

    fn flag(&self, name: &str) -> bool {
        self.present
            .iter()
            .any(|(f, wire)| f.name() == name && matches!(wire, Wire::Varint(v) if *v != 0))
    }

    /// The singular message field whose type is a resource (has a `name`), with its bytes.
    fn resource_message(&self) -> Option<(&'a FieldDescriptorProto, &'a DescriptorProto, &'a [u8])> {
        self.descriptor.field.iter().find_map(|field| {
            if field.r#type() != Type::Message || field.label() == Label::Repeated {
                return None;
            }
            let descriptor = protos().messages.get(field.type_name())?;
            if !descriptor.field.iter().any(|f| f.name() == "name") {
                return None;
            }
            let bytes = self.present.iter().rev().find_map(|(f, wire)| match wire {
                Wire::Bytes(bytes) if f.number() == field.number() => Some(*bytes),
                _ => None,
            })?;
            Some((field, descriptor, bytes))
        })
    }

    /// Names of the fields set, once each, in declaration order; `secrets` as its keys.
    /// `skip_ids`: leave out `<resource>_id` fields too (a request's addressing).
    fn set_paths(&self, skip: &[&str], skip_ids: bool) -> (Vec<String>, Vec<String>) {
        let mut paths = Vec::new();
        let mut secret_keys = Vec::new();
        for field in &self.descriptor.field {
            if skip.contains(&field.name()) || (skip_ids && field.name().ends_with("_id")) {
                continue;
            }
            let values: Vec<&Wire<'_>> = self
                .present
                .iter()
                .filter(|(f, _)| f.number() == field.number())
                .map(|(_, wire)| wire)
                .collect();
            if values.is_empty() {
                continue;
            }
            if field.name() == "secrets" {
                for wire in values {
                    if let Wire::Bytes(entry) = wire
                        && let Some(key) = map_key(entry)
                    {
                        secret_keys.push(key);
                    }
                }
                paths.extend(secret_keys.iter().map(|k| format!("secrets.{k}")));
            } else {
                paths.push(field.name().to_string());
            }
        }
        (paths, secret_keys)
    }
}

/// The key (field 1, a string) of an encoded map entry.
fn map_key(entry: &[u8]) -> Option<String> {
    wire_fields(entry)
        .into_iter()
        .find_map(|(number, wire)| match (number, wire) {
            (1, Wire::Bytes(bytes)) => std::str::from_utf8(bytes).ok().map(str::to_string),
            _ => None,
        })
}

/// `alert_policy` → `alertPolicies`, `entity` → `entities`: the collection of a resource field.
fn collection(field: &str) -> String {
    let mut camel = String::with_capacity(field.len() + 3);
    let mut upper = false;
    for c in field.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            camel.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            camel.push(c);
        }
    }
    match camel.strip_suffix('y') {
        Some(stem) => format!("{stem}ies"),
        None => format!("{camel}s"),
    }
}

/// Describes a unary request of `method` (its canonical encoding); None for unknown methods
/// and streams.
pub fn describe(method: &str, encoded: &[u8]) -> Option<Description> {
    let protos = protos();
    let descriptor = protos.messages.get(protos.inputs.get(method)?)?;
    let request = Fields::read(descriptor, encoded);
    let mut out = Description {
        validate_only: request.flag("validate_only"),
        ..Description::default()
    };
    let name = request.string("name");
    let resource_message = request.resource_message();
    let (paths, secret_keys) = match resource_message {
        Some((_, resource_descriptor, bytes)) => {
            let resource = Fields::read(resource_descriptor, bytes);
            if name.is_empty() {
                out.subject.resource = resource.string("name");
            }
            resource.set_paths(&["name", "etag"], false)
        }
        None => request.set_paths(ADDRESSING, true),
    };
    out.subject.changed_fields = paths;
    out.secret_keys = secret_keys;
    if !name.is_empty() {
        out.subject.resource = name;
    }
    if out.subject.resource.is_empty() {
        let parent = request.string("parent");
        let id = descriptor
            .field
            .iter()
            .map(|f| f.name())
            .find(|f| f.ends_with("_id") && *f != "request_id")
            .map(|f| (f, request.string(f)));
        out.subject.resource = match (resource_message, id) {
            (Some((field, _, _)), Some((_, id))) if !id.is_empty() && !parent.is_empty() => {
                format!("{parent}/{}/{id}", collection(field.name()))
            }
            (None, Some((id_field, id))) if !id.is_empty() && !parent.is_empty() => {
                format!("{parent}/{}/{id}", collection(id_field.trim_end_matches("_id")))
            }
            _ => parent,
        };
    }
    if method.ends_with("/CancelExportRun")
        && let Some((export, _)) = out.subject.resource.split_once("/runs/")
    {
        out.subject.summary = format!("cancelled run {}", out.subject.resource);
        out.subject.resource = export.to_string();
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb;

    fn of<M: Message>(method: &str, message: &M) -> Description {
        describe(&format!("/exportd.v1.{method}"), &message.encode_to_vec()).expect("a unary method")
    }

    #[test]
    fn a_create_names_the_new_resource_and_its_fields_and_only_secret_keys() {
        let request = pb::CreateConnectionRequest {
            parent: "environments/acme".into(),
            connection_id: "hook".into(),
            connection: Some(pb::Connection {
                display_name: "Hook".into(),
                r#type: "webhook".into(),
                secrets: [("token".to_string(), "s3cr3t-value".to_string())]
                    .into_iter()
                    .collect(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let d = of("ConnectionService/CreateConnection", &request);
        assert_eq!(d.subject.resource, "environments/acme/connections/hook");
        assert_eq!(d.subject.changed_fields, vec!["display_name", "type", "secrets.token"]);
        assert_eq!(d.secret_keys, vec!["token"]);
        assert!(!format!("{d:?}").contains("s3cr3t"));
        assert!(!d.validate_only);
    }

    #[test]
    fn updates_deletes_and_cancels_address_their_resource() {
        let update = pb::UpdateExportRequest {
            export: Some(pb::Export {
                name: "environments/acme/exports/nightly".into(),
                display_name: "N".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let d = of("ExportService/UpdateExport", &update);
        assert_eq!(d.subject.resource, "environments/acme/exports/nightly");
        assert_eq!(d.subject.changed_fields, vec!["display_name"]);
        let delete = pb::DeleteConnectionRequest {
            name: "environments/acme/connections/c".into(),
            force: true,
            ..Default::default()
        };
        let d = of("ConnectionService/DeleteConnection", &delete);
        assert_eq!(d.subject.resource, "environments/acme/connections/c");
        assert_eq!(d.subject.changed_fields, vec!["force"]);
        let cancel = pb::CancelExportRunRequest {
            name: "environments/acme/exports/nightly/runs/r1".into(),
        };
        let d = of("ExportService/CancelExportRun", &cancel);
        assert_eq!(d.subject.resource, "environments/acme/exports/nightly");
        assert_eq!(
            d.subject.summary,
            "cancelled run environments/acme/exports/nightly/runs/r1"
        );
    }

    #[test]
    fn collections_are_plural_lower_camel() {
        assert_eq!(collection("alert_policy"), "alertPolicies");
        assert_eq!(collection("entity"), "entities");
        assert_eq!(collection("export"), "exports");
    }

    #[test]
    fn streams_are_not_described_here() {
        assert!(describe("/exportd.v1.CatalogService/WriteRecords", &[]).is_none());
    }
}
