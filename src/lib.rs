//! exportd: the exports control plane of a customer data platform.
//!
//! Layout (ARCHITECTURE.md): `api` (gRPC services) → `engine` (runs) → `connectors`
//! (targets), all on `domain` (pure rules) and `store` (the only SQL). `auth` holds the JWT
//! verification and the one permission table.
pub mod api;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod config;
pub mod connectors;
pub mod copy_text;
pub mod domain;
pub mod engine;
pub mod error;
pub mod file_modes;
pub mod metrics;
pub mod pb;
pub mod pg_nodelay;
pub mod server;
pub mod store;
pub mod telemetry;
