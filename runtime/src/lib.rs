//! The `steward` binary's library: configuration, boot and shutdown, the operator commands and
//! the demo with its local stand-ins for ServiceNow, Slack and an LLM provider.

pub mod boot;
pub mod cli;
pub mod config;
pub mod demo;
pub mod http_server;
pub mod runs_cli;
pub mod standins;
pub mod telemetry;
pub mod tenants_cli;
pub mod writes_cli;
