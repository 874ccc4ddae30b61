//! Steward's durable state: tenants, runs and their journals, approvals, webhook deliveries, API
//! tokens, the secret vault and the per-tenant audit chain. Every call for tenant data takes a
//! [`TenantScope`] and filters by its tenant.
//!
//! # Two backends, one code path
//!
//! The store runs on SQLite ([`Store::open`], the embedded default) or PostgreSQL
//! ([`Store::open_postgres`], production). Both go through sqlx's `Any` driver, so every query
//! is written once: the SQL is portable (`$n` placeholders, `ON CONFLICT`, BIGINT millis, TEXT
//! JSON, blobs as `BLOB`/`BYTEA`), and the few statements that must differ (taking the write
//! lock, setting the tenant, `FOR UPDATE`) are chosen in one place by [`Backend`]. Two copies of
//! every query, or a generic layer over both drivers, would let the backends drift apart; the
//! conformance suite in `tests/store` runs every test body against both.
//!
//! - **SQLite** keeps one writer connection, and every write transaction starts with
//!   `BEGIN IMMEDIATE`, so a read-then-write never fails upgrading its lock. Reads use a
//!   separate `query_only` pool. Pragmas (WAL, foreign keys, busy timeout, synchronous) are set
//!   on each new connection.
//! - **PostgreSQL** uses one ordinary pool. Concurrent writers are ordered by the database:
//!   journal and approval writes by their keys and compare-and-set, audit appends by a lock
//!   on the tenant's row, timer claims by `FOR UPDATE SKIP LOCKED`.
//!
//! # Row-level security (PostgreSQL)
//!
//! The tenant predicate of every query is the first wall; row-level security is the second.
//! Migrations (`migrations/postgres`) run as an owner role; the service pool connects as
//! `steward_service`, which owns no table, holds only DML grants, is `NOSUPERUSER
//! NOBYPASSRLS`, and may not update or delete audit rows. Every tenant table has row-level
//! security enabled and forced, with the policy `tenant_id = current_setting('steward.tenant',
//! true)`. Each transaction names its tenant with `SELECT set_config('steward.tenant', $1,
//! true)` before its statements for that tenant (and again before a group for another), so a
//! query that forgot its predicate still sees only that tenant, and one that runs with no
//! tenant set sees nothing. [`POSTGRES_ROLES`] creates the roles.
//!
//! Platform-level calls (boot's unfinished runs, due timers, the delivery purge, token lookup
//! by hash, a run's tenant, the ops listings, the master key check) switch their transaction
//! to `steward_platform` with `SET LOCAL ROLE`. That role cannot log in and is granted only
//! what those calls read (plus claiming timers and deleting old deliveries), through policies
//! that admit every tenant's rows. `steward_service` is a `NOINHERIT` member, so it holds none
//! of those rights until a transaction asks, and the switch ends with the transaction.
//!
//! The trade-off: the platform path is a role switch the service can always make, not a
//! separate credential, so it guards against a query that forgot its tenant, not against SQL
//! run by an attacker who controls the service connection. A second login role with its own
//! pool would not change that while one process holds both credentials, and would double the
//! connections. `SECURITY DEFINER` functions would narrow the platform path to fixed
//! statements, at the price of writing each platform query as PL/pgSQL outside the shared
//! query path. Plain `set_config` of a platform flag was ruled out: it would be a setting,
//! not a grant, and every table's policy would have to trust it.
//!
//! # Content at rest
//!
//! Tenant content (triggers, journal steps, snapshots, crash records, timer payloads, the
//! bodies of audit entries about runs) is sealed with the tenant's data key before it is
//! written and opened when it is read (`content.rs`), so destroying the key at offboarding
//! leaves every copy unreadable. [`Store::check_master_key`] names the master key the store
//! seals under and, once, seals rows stored in clear by an older version.
//!
//! This crate knows nothing of HTTP, Slack or ServiceNow: it stores what the layers above decide.

mod approvals;
mod audit;
pub mod backup;
mod batch;
mod catchup;
mod checkpoint;
mod codec;
mod content;
mod controls;
mod crashes;
mod envelope;
mod error;
pub mod evidence;
mod intake;
mod leases;
mod legacy;
mod metrics;
mod operator_audit;
mod ops;
mod redact;
pub mod reports;
mod retention;
pub mod role_check;
mod runs;
mod scope;
mod siem;
mod snapshots;
mod sources;
mod store;
mod tenancy;
mod tenants;
mod timers;
mod tokens;
mod vault;

pub use approvals::{ApprovalRecord, DecideOutcome, Decision, NewApproval};
pub use audit::{
    AuditDraft, AuditEntry, BOUND_PREFIX, ChainBreak, GENESIS_HASH, VerifyReport,
    bound_body_matches, entry_hash, verify_entries,
};
pub use batch::IntakePaths;
pub use catchup::{CatchupWatermark, Covered, MAX_WATERMARK_IDS};
pub use controls::{MeterAsk, MeterCharge, MeterUsage, PauseChange, Reservation, WritePause};
pub use crashes::{CrashRecord, NewCrash};
pub use error::StoreError;
pub use evidence::{
    CheckpointSigner, Countersignature, EvidenceKey, ExportRange, SignedCheckpoint, WitnessRequest,
};
pub use intake::{IntakeOutcome, NewRun};
pub use leases::{Fencing, Lease, MAX_NODE_ID_BYTES, WAKE_CHANNEL, WakeCall, WakeListener};
pub use operator_audit::{
    BREAK_GLASS_CLOSED, BREAK_GLASS_EXPIRED, BREAK_GLASS_OPENED, BREAK_GLASS_USED, BreakGlassGrant,
    BreakGlassUse, GrantState, MAX_DETAIL_BYTES, MAX_GRANT_MINUTES, NewBreakGlass,
    OperatorAuditEntry, OperatorVerifyReport, operator_entry_hash,
};
pub use ops::{RunFilter, WaitingRun};
pub use redact::{REDACTED, is_secret_key, redact_json, redact_text};
pub use reports::{RejectionCount, ReportRange, TenantReport};
pub use retention::{
    ERASED, ErasureReport, FINISHED_STATES, LegalHold, MAX_HOLD_REASON_CHARS, MAX_RETENTION_DAYS,
    MAX_SWEEP_BATCH, MIN_AUDIT_DAYS, PruneAnchor, RetentionSettings, Subject, SweepReport,
};
pub use runs::{ApprovalMessage, RunRecord, StepRecord, StepWrite};
pub use scope::{Authenticator, TenantScope};
pub use siem::{MAX_SIEM_URL_BYTES, SIEM_SECRET, SiemState, SiemStream};
pub use sources::{SourceRead, SourceWithSecrets, WebhookSource};
pub use store::{Backend, POSTGRES_ROLES, PgOptions, Store, StoreOptions};
pub use tenancy::{Checkpoint, NewToken, TenantSummary, TokenInfo};
pub use tenants::TenantRecord;
pub use timers::{CLAIM_LEASE_MS, NewTimer, TimerRecord};
pub use tokens::{TokenPrincipal, generate_api_token};
pub use vault::MasterKey;
