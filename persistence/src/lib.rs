//! Steward's durable state: tenants, runs and their journals, approvals, webhook deliveries, API
//! tokens, the secret vault and the per-tenant audit chain, kept in SQLite (WAL) behind one
//! writer. Every call for tenant data takes a [`TenantScope`] and filters by its tenant.
//!
//! This crate knows nothing of HTTP, Slack or ServiceNow: it stores what the layers above decide.

mod approvals;
mod audit;
mod codec;
mod crashes;
mod envelope;
mod error;
mod intake;
mod ops;
mod redact;
mod runs;
mod scope;
mod snapshots;
mod sources;
mod store;
mod tenants;
mod timers;
mod tokens;
mod vault;

pub use approvals::{ApprovalRecord, DecideOutcome, Decision, NewApproval};
pub use audit::{
    AuditDraft, AuditEntry, ChainBreak, GENESIS_HASH, VerifyReport, entry_hash, verify_entries,
};
pub use crashes::{CrashRecord, NewCrash};
pub use error::StoreError;
pub use intake::{IntakeOutcome, NewRun};
pub use ops::{RunFilter, WaitingRun};
pub use redact::{REDACTED, is_secret_key, redact_json, redact_text};
pub use runs::{RunRecord, StepRecord, StepWrite};
pub use scope::{Authenticator, TenantScope};
pub use sources::WebhookSource;
pub use store::{Store, StoreOptions};
pub use tenants::TenantRecord;
pub use timers::{CLAIM_LEASE_MS, NewTimer, TimerRecord};
pub use tokens::generate_api_token;
pub use vault::MasterKey;
