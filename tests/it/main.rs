//! Integration tests: the real server, spoken to through the generated gRPC clients.
mod common;

mod auth;
mod bad_input;
mod catalog;
mod cdm_output;
mod cli;
mod connections;
mod durability;
mod eligibility;
mod environments;
mod exports;
mod limits;
mod not_built;
mod output_areas;
mod process;
mod raw;
mod recurrences;
mod request_ids;
mod roles;
mod rule_limits;
mod runs;
mod scheduler;
mod sftp;
mod storage_servers;
mod storage_targets;
