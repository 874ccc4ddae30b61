//! The chaos suite's harness: it starts the real `steward` binary and its stand-ins as child
//! processes on loopback, kills Steward with SIGKILL at chosen and at seeded random moments,
//! makes the stand-ins fail the way the vendors do, and checks after each scenario that no run
//! was lost, that nothing was written twice or without approval, that no approval was decided
//! twice, and that the audit chain verifies. See `README.md` for how to run it.

pub mod binary;
pub mod check;
pub mod postgres;
pub mod process;
pub mod scenarios;
pub mod world;

pub use check::{Outcome, Summary};
pub use scenarios::{Boundary, Failover, FaultPlan, RandomKills, Upgrade};
pub use world::{Server, World};

/// Whether the full suite was asked for (`CHAOS_FULL=1`).
pub fn full_suite() -> bool {
    std::env::var("CHAOS_FULL").is_ok_and(|value| value == "1")
}

/// The seed to replay (`CHAOS_SEED`), if one was given.
pub fn replay_seed() -> anyhow::Result<Option<u64>> {
    match std::env::var("CHAOS_SEED") {
        Ok(value) => {
            value.trim().parse().map(Some).map_err(|_| {
                anyhow::anyhow!("CHAOS_SEED must be an unsigned integer, not {value:?}")
            })
        }
        Err(_) => Ok(None),
    }
}

/// A fresh seed from the clock and the process id, for runs that were given none.
pub fn fresh_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|since| since.as_nanos())
        .unwrap_or_default();
    (nanos as u64) ^ u64::from(std::process::id()).rotate_left(32)
}
