//! Compiles the protos with protox (pure Rust: nothing to install) and generates the tonic
//! services. The encoded descriptor set is kept for gRPC reflection.
use std::{env, fs, path::PathBuf};

use prost::Message;

const PROTOS: &[&str] = &[
    "exportd/v1/types.proto",
    "exportd/v1/connection_service.proto",
    "exportd/v1/export_service.proto",
    "exportd/v1/catalog_service.proto",
    "exportd/v1/alert_service.proto",
    "exportd/v1/audit_service.proto",
    // Served by reflection so that clients can decode `google.rpc` error details.
    "google/rpc/error_details.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out_dir.join("exportd_descriptor.bin"), descriptors.encode_to_vec())?;

    tonic_prost_build::configure()
        // google.rpc types come from tonic-types, so error details and `ExportRun.error`
        // share one definition.
        .extern_path(".google.rpc", "::tonic_types::pb")
        // Every map is a BTreeMap: prost then encodes map entries in key order, so a decoded
        // request re-encodes to the same bytes however the client ordered them. The request-id
        // fingerprint (store/request_ids.rs) relies on this; it also keeps answers stable.
        .btree_map(".")
        // Decoding goes through exportd's codec: a malformed message is INVALID_ARGUMENT, and
        // every request is held to its size bounds before a handler sees it (api/codec.rs).
        .codec_path("crate::api::codec::BoundedCodec")
        // Connection carries write-only secrets: its Debug is written by hand to redact them.
        .skip_debug(["exportd.v1.Connection"])
        .compile_fds(descriptors)?;
    Ok(())
}
