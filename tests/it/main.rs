//! Integration tests: the real server, spoken to through the generated gRPC clients.
mod common;

mod auth;
mod cli;
mod connections;
mod environments;
mod process;
mod roles;
