//! The retention sweeper: a task that, every `every`, applies each tenant's retention settings
//! (`Store::sweep_tenant`): the sealed content of finished runs, finished runs and the oldest
//! audit entries, each past its tenant's number of days. Work is done in bounded batches, a
//! transaction each, at most [`SweepOptions::max_batches`] per tenant per round, so a tenant
//! with a large backlog is worked down over several rounds without holding the writer long.
//!
//! A run is finished when its state is one of [`states::TERMINAL`]; no other run is touched.
//! Tenants on legal hold are not listed and, should a hold arrive mid-round, the store
//! refuses the sweep under the tenant's lock. A failure is logged and never stops the round
//! for other tenants. Time is the store's clock.

use std::time::Duration;

use steward_persistence::{
    Authenticator, CheckpointSigner, MasterKey, Store, StoreError, SweepReport, TenantScope,
};
use tokio::task::JoinHandle;
use tracing::{error, info};

use crate::journal::states;

/// How the sweeper runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SweepOptions {
    /// Time between rounds.
    pub every: Duration,
    /// Rows of each kind one batch removes (1 to `MAX_SWEEP_BATCH`).
    pub batch: u32,
    /// Batches per tenant per round.
    pub max_batches: u32,
}

impl Default for SweepOptions {
    fn default() -> Self {
        Self {
            every: Duration::from_secs(3600),
            batch: 500,
            max_batches: 20,
        }
    }
}

/// What one round removed, summed over tenants.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RoundReport {
    pub tenants: u64,
    pub content_runs: u64,
    pub runs: u64,
    pub audit_entries: u64,
    /// Tenants whose sweep failed (logged).
    pub failures: u64,
}

impl RoundReport {
    fn add(&mut self, r: &SweepReport) {
        self.content_runs += r.content_runs;
        self.runs += r.runs;
        self.audit_entries += r.audit_entries;
    }
}

/// Starts the sweeper; the first round runs a full period after the start.
pub fn spawn(store: Store, master: MasterKey, options: SweepOptions) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(options.every.max(Duration::from_secs(1)));
        tick.tick().await;
        loop {
            tick.tick().await;
            let report = sweep_round(&store, &master, options).await;
            if report.content_runs + report.runs + report.audit_entries > 0 {
                info!(
                    tenants = report.tenants,
                    content_runs = report.content_runs,
                    runs = report.runs,
                    audit_entries = report.audit_entries,
                    "The retention sweep removed data past its tenants' retention."
                );
            }
        }
    })
}

/// One round over every tenant with retention settings that is not held.
pub async fn sweep_round(store: &Store, master: &MasterKey, options: SweepOptions) -> RoundReport {
    let mut report = RoundReport::default();
    let signer = match store.checkpoint_signer(master).await {
        Ok(signer) => signer,
        Err(e) => {
            error!(error = %e, "Loading the evidence signing key for the retention sweep failed.");
            report.failures += 1;
            return report;
        }
    };
    let tenants = match store.retention_tenants().await {
        Ok(tenants) => tenants,
        Err(e) => {
            error!(error = %e, "Listing tenants for the retention sweep failed.");
            report.failures += 1;
            return report;
        }
    };
    for tenant in tenants {
        report.tenants += 1;
        let scope = TenantScope::assume(tenant.clone(), Authenticator::Operator);
        if let Err(e) = sweep_tenant(store, &signer, &scope, options, &mut report).await {
            report.failures += 1;
            error!(%tenant, error = %e, "The retention sweep of a tenant failed.");
        }
    }
    report
}

async fn sweep_tenant(
    store: &Store,
    signer: &CheckpointSigner,
    scope: &TenantScope,
    options: SweepOptions,
    report: &mut RoundReport,
) -> Result<(), StoreError> {
    for _ in 0..options.max_batches.max(1) {
        let batch = store
            .sweep_tenant(scope, signer, states::TERMINAL, options.batch)
            .await?;
        report.add(&batch);
        if batch.held || !batch.more(options.batch) {
            break;
        }
    }
    Ok(())
}
