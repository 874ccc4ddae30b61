//! The `steward` binary's library: configuration, boot and shutdown, the operator commands and
//! the demo with its local stand-ins for ServiceNow, Slack and an LLM provider.

pub mod api_client;
pub mod backup_cli;
pub mod boot;
pub mod break_glass_cli;
pub mod checklist;
pub mod cli;
pub mod config;
pub mod demo;
pub mod evidence_cli;
pub mod http_server;
pub mod login_cli;
pub mod memory;
pub mod report_cli;
pub mod runs_cli;
pub mod selfcheck;
pub mod standins;
pub mod standins_oidc;
pub mod telemetry;
pub mod tenants_cli;
pub mod tls;
pub mod webhooks_cli;
pub mod writes_cli;
