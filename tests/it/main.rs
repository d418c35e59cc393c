//! Integration tests: the real server, spoken to through the generated gRPC clients.
mod common;

mod auth;
mod catalog;
mod cdm_output;
mod cli;
mod connections;
mod durability;
mod eligibility;
mod environments;
mod exports;
mod process;
mod recurrences;
mod roles;
mod runs;
mod scheduler;
