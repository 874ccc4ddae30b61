//! End-to-end tests of whole flows live in `tests/`; this library is their harness: Steward
//! booted in-process on loopback with a fresh SQLite file (or a PostgreSQL database of its
//! own), and stateful mocks of ServiceNow, Slack and an OpenAI-compatible LLM speaking the real
//! wire formats.

pub mod database;
pub mod fixtures;
pub mod harness;
pub mod llm;
pub mod onboarding;
pub mod otlp;
pub mod servicenow;
pub mod siem;
pub mod slack;
pub mod webhook;
pub mod witness;

pub use harness::{
    Harness, OPS_TOKEN, PATIENCE, Reply, SOURCE, Scenario, TenantFixture, eventually,
};
pub use slack::{APPROVER, NETWORK_LEAD, OUTSIDER, Person, PostedMessage, SECOND_APPROVER};
pub use webhook::Delivery;
