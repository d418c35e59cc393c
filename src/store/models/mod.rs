//! sea-orm models, one file per table.
pub mod alert_condition;
pub mod alert_event;
pub mod alert_policy;
pub mod audit_event;
pub mod connection;
pub mod entity;
pub mod environment;
pub mod export;
pub mod export_source;
pub mod lease;
pub mod record;
pub mod rejected_record;
pub mod request_id;
pub mod run;
pub mod segment;
pub mod segment_member;
pub mod system_refresh;
