//! The store's behaviour through its public API. Every test opens its own database file in a
//! temporary directory.

mod approvals;
mod audit;
mod catchup;
mod checkpoints;
mod controls;
mod evidence;
mod group_commit;
mod intake;
mod isolation;
mod isolation_calls;
mod leases;
mod metrics;
mod operator_audit;
mod ops;
mod reports;
mod retention;
mod runs;
mod schemes;
mod sealing;
mod siem;
mod support;
mod tenancy;
mod tenants;
mod timers;
mod tokens;
mod vault;
