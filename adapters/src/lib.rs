//! The outside world, spoken in its own wire formats: LLM providers (OpenAI-compatible Chat
//! Completions and Anthropic Messages), the ServiceNow Table API with OAuth, the Slack Web API and
//! interaction payloads, and webhook signature schemes. Nothing here knows about the database,
//! and nothing here retries on its own: the caller owns retries.

pub mod egress;
pub mod http;
pub mod llm;
pub mod servicenow;
pub mod slack;
pub mod webhook;
