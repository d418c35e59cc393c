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
mod key_rotation;
mod limits;
mod metrics;
mod migrations;
mod output_areas;
mod process;
mod raw;
mod readme;
mod request_ids;
mod roles;
mod rule_limits;
mod runs;
mod scale_out;
mod scheduler;
mod sdk_python;
