//! sea-orm models, one file per table.
pub mod connection;
pub mod environment;
pub mod request_id;
