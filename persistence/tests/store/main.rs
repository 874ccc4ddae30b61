//! The store's behaviour through its public API. Every test opens its own database file in a
//! temporary directory.

mod approvals;
mod audit;
mod group_commit;
mod intake;
mod isolation;
mod ops;
mod runs;
mod support;
mod tenancy;
mod tenants;
mod timers;
mod tokens;
mod vault;
