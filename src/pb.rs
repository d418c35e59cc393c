//! Generated protobuf and gRPC code (package `exportd.v1`).
#![allow(clippy::all, missing_docs)]

pub mod exportd {
    pub mod v1 {
        tonic::include_proto!("exportd.v1");
    }
}

pub mod google {
    pub mod r#type {
        tonic::include_proto!("google.r#type");
    }
}

pub use exportd::v1::*;

/// Encoded descriptor set of every served proto, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/exportd_descriptor.bin"));

/// Secrets are write-only: Debug shows which keys were given, never their values.
impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secret_keys: Vec<&String> = self.secrets.keys().collect();
        f.debug_struct("Connection")
            .field("name", &self.name)
            .field("display_name", &self.display_name)
            .field("description", &self.description)
            .field("type", &self.r#type)
            .field("config", &self.config)
            .field("secrets", &format_args!("<redacted: {secret_keys:?}>"))
            .field("secret_keys", &self.secret_keys)
            .field("contributors_can_use", &self.contributors_can_use)
            .field("profile_limit", &self.profile_limit)
            .field("create_time", &self.create_time)
            .field("update_time", &self.update_time)
            .field("creator", &self.creator)
            .field("etag", &self.etag)
            .field("effective_profile_limit", &self.effective_profile_limit)
            .finish()
    }
}
