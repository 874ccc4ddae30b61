//! Several nodes on one PostgreSQL database: each tenant's supervisor lives on the one node
//! that holds the tenant's lease (`persistence` `leases.rs`), and every other node routes the
//! tenant's work to it.
//!
//! - **The keeper** (one task per node) runs a round every third of the lease time: it renews
//!   the leases this node holds and takes every lease that is free (lapsed, released or never
//!   held). A node that cannot renew a lease before a safety margin ends (the database is
//!   unreachable, say) stops that tenant's actors on its own, before the lease can lapse and
//!   another node take it. A renewal the database refuses (another node holds a newer token)
//!   stops them at once. Taking a lease wakes the tenant's unfinished runs that do not wait.
//! - **Fencing**: the node's [`LeaseBook`] is the store's fencing, so a run actor's journal
//!   write commits only under the tenant's newest token held by this node; a run fenced off
//!   stops without counting a crash (`run.rs`).
//! - **Routing**: [`Steward::wake`] on a node that does not hold the tenant rings the owner
//!   (PostgreSQL `NOTIFY`, [`Store::ring`]); the listener task here wakes the run when this
//!   node holds it. The run itself is the durable inbox: intake and clicks commit their rows
//!   on whichever node they land on before ringing, and each keeper round also wakes every
//!   unfinished, not waiting run of the tenants the node holds, so a lost ring delays a run by
//!   one round at most.
//! - **Settings**: a tenant's settings changed through a node that does not own it ring the
//!   owner to reload (`WakeCall::Reload`); a node that takes a tenant starts its supervisor
//!   from the stored settings anyway.
//! - **Drain** ([`Steward::drain`]): the keeper stops, every held tenant's supervisor stops,
//!   and each lease is released, so the other nodes take the tenants at their next round
//!   instead of after the lease time.
//!
//! Which node takes a free tenant is first come: there is no balancing, so after a restart
//! one node may hold every tenant until it drains.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use steward_core::TenantId;
use steward_persistence::{Fencing, StoreError, WakeCall};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::journal::states;
use crate::root::{ResumeGate, Steward};

/// How a node takes part in a cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// This node's id (a pod name): 1 to 128 letters, digits, `.`, `_`, `-` or `:`, unique
    /// among the nodes on the database.
    pub node_id: String,
    /// How long a lease lasts unless renewed; also how long a dead node's tenants wait for
    /// another node. The keeper renews every third of it.
    pub lease: Duration,
}

impl ClusterOptions {
    /// How often the keeper runs a round.
    pub fn round(&self) -> Duration {
        self.lease / 3
    }

    /// How long after its last renewal a node keeps a tenant it cannot renew: two thirds of
    /// the lease, so its actors stop a third of a lease before the lease can lapse.
    fn keep_unrenewed(&self) -> Duration {
        self.lease * 2 / 3
    }
}

/// The leases this node holds, with when each was last renewed. The store's fencing and the
/// resume gate.
#[derive(Debug)]
pub struct LeaseBook {
    node: String,
    held: Mutex<HashMap<TenantId, Held>>,
}

#[derive(Debug, Clone, Copy)]
struct Held {
    token: i64,
    renewed: Instant,
}

impl LeaseBook {
    pub fn new(node: &str) -> Self {
        Self {
            node: node.to_owned(),
            held: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TenantId, Held>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether this node holds the tenant's lease.
    pub fn holds(&self, tenant: &TenantId) -> bool {
        self.lock().contains_key(tenant)
    }

    /// The tenants this node holds, sorted.
    pub fn tenants(&self) -> Vec<TenantId> {
        let mut all: Vec<TenantId> = self.lock().keys().cloned().collect();
        all.sort();
        all
    }

    fn insert(&self, tenant: TenantId, token: i64) {
        self.lock().insert(
            tenant,
            Held {
                token,
                renewed: Instant::now(),
            },
        );
    }

    fn remove(&self, tenant: &TenantId) -> Option<i64> {
        self.lock().remove(tenant).map(|h| h.token)
    }

    fn get(&self, tenant: &TenantId) -> Option<Held> {
        self.lock().get(tenant).copied()
    }
}

impl Fencing for LeaseBook {
    fn node(&self) -> &str {
        &self.node
    }

    fn token(&self, tenant: &TenantId) -> Option<i64> {
        self.get(tenant).map(|h| h.token)
    }
}

impl ResumeGate for LeaseBook {
    fn may_own(&self, tenant: &TenantId) -> bool {
        self.holds(tenant)
    }
}

/// A node's part in the cluster, held by its [`Steward`].
#[derive(Debug)]
pub struct Cluster {
    pub(crate) options: ClusterOptions,
    pub(crate) book: std::sync::Arc<LeaseBook>,
    draining: AtomicBool,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Cluster {
    pub(crate) fn new(options: ClusterOptions) -> Self {
        Self {
            book: std::sync::Arc::new(LeaseBook::new(&options.node_id)),
            options,
            draining: AtomicBool::new(false),
            tasks: Mutex::new(Vec::new()),
        }
    }

    /// The leases this node holds.
    pub fn book(&self) -> &LeaseBook {
        &self.book
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.options.node_id
    }

    /// Whether the node is draining: it takes no lease any more.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    pub(crate) fn stop_tasks(&self) {
        for task in self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            task.abort();
        }
    }
}

/// Starts the keeper and the wake listener of `steward`'s cluster.
pub(crate) fn spawn(steward: &Steward) {
    let Some(cluster) = steward.cluster() else {
        return;
    };
    let keeper = tokio::spawn(keep(steward.clone()));
    let listener = tokio::spawn(listen(steward.clone()));
    let mut tasks = cluster.tasks.lock().unwrap_or_else(|e| e.into_inner());
    tasks.push(keeper);
    tasks.push(listener);
}

/// The keeper: a round every third of the lease time, until the node drains.
async fn keep(steward: Steward) {
    let Some(cluster) = steward.cluster() else {
        return;
    };
    let round = cluster.options.round();
    loop {
        if cluster.draining() {
            return;
        }
        if let Err(e) = keeper_round(&steward).await {
            warn!(error = %e, "A lease round failed; the next one tries again.");
        }
        tokio::time::sleep(round).await;
    }
}

/// One round: drop what cannot be kept, renew what is held, take what is free, and wake the
/// held tenants' runs that have something to do.
pub(crate) async fn keeper_round(steward: &Steward) -> Result<(), StoreError> {
    let Some(cluster) = steward.cluster() else {
        return Ok(());
    };
    let store = steward.store();
    let node = cluster.node_id();
    let lease_ms = i64::try_from(cluster.options.lease.as_millis()).unwrap_or(i64::MAX);
    let book = &cluster.book;

    // First, whatever could not be renewed in time stops, whatever else happens this round.
    for tenant in book.tenants() {
        if let Some(held) = book.get(&tenant)
            && held.renewed.elapsed() > cluster.options.keep_unrenewed()
        {
            warn!(%tenant, "The lease could not be renewed in time; the tenant's work stops here.");
            lose(steward, &tenant).await;
        }
    }
    let tenants = store.list_tenants().await?;
    for summary in tenants {
        if cluster.draining() {
            return Ok(());
        }
        let tenant = summary.id;
        let offboarded = summary.offboarded_at.is_some();
        match book.get(&tenant) {
            Some(held) => match store.renew_lease(&tenant, node, held.token, lease_ms).await {
                Ok(Some(_)) if !offboarded => book.insert(tenant, held.token),
                Ok(Some(_)) => {
                    lose(steward, &tenant).await;
                    let _ = store.release_lease(&tenant, node, held.token).await;
                }
                Ok(None) => {
                    let why = "Another node holds the tenant's lease now; its work stops here.";
                    warn!(%tenant, "{why}");
                    lose(steward, &tenant).await;
                }
                Err(e) => warn!(%tenant, error = %e, "Renewing a lease failed."),
            },
            None if offboarded => {}
            None => match store.acquire_lease(&tenant, node, lease_ms).await {
                Ok(Some(lease)) => {
                    info!(%tenant, token = lease.token, "This node took the tenant's lease.");
                    // A supervisor started here for an API call while another node owned the
                    // tenant may hold settings older than the stored ones.
                    if let Err(e) = steward.stop_tenant(&tenant, "taking the tenant over").await {
                        warn!(%tenant, error = %e, "Stopping a stale supervisor failed.");
                    }
                    book.insert(tenant, lease.token);
                }
                Ok(None) => {}
                Err(e) => warn!(%tenant, error = %e, "Taking a lease failed."),
            },
        }
    }
    // The sweep wakes the runs of the tenants just taken with the rest.
    sweep(steward).await
}

/// Wakes every unfinished run of the tenants this node holds that does not wait for a person
/// or a timer: the runs a ring may not have reached (and, after taking a lease, those the
/// previous owner left). A live run's actor ignores a wake it does not need.
async fn sweep(steward: &Steward) -> Result<(), StoreError> {
    let Some(cluster) = steward.cluster() else {
        return Ok(());
    };
    let runs = steward.store().unfinished_runs(states::TERMINAL).await?;
    for (tenant, run_id, state) in runs {
        let waiting = state == states::AWAITING_APPROVAL || state == states::PARKED;
        if !waiting && cluster.book.holds(&tenant) {
            steward.wake_here(&tenant, run_id).await;
        }
    }
    Ok(())
}

/// Forgets the tenant's lease and stops its supervisor with its actors.
async fn lose(steward: &Steward, tenant: &TenantId) {
    if let Some(cluster) = steward.cluster() {
        cluster.book.remove(tenant);
    }
    if let Err(e) = steward
        .stop_tenant(tenant, "the tenant's lease moved")
        .await
    {
        error!(%tenant, error = %e, "Stopping a tenant that moved away failed.");
    }
}

/// The wake listener: wakes the runs other nodes ring for, and reloads the tenants whose
/// settings they changed, when this node holds them. A lost
/// connection is opened again after a second, followed by a sweep for what it missed.
async fn listen(steward: Steward) {
    loop {
        match steward.store().listen_for_wakes().await {
            Ok(mut listener) => loop {
                match listener.recv().await {
                    Ok(call) if !steward.owns(call.tenant()) => {}
                    Ok(WakeCall::Run { tenant, run }) => steward.wake_here(&tenant, run).await,
                    Ok(WakeCall::Reload { tenant }) => {
                        if let Err(e) = steward.reload_tenant(&tenant).await {
                            let why = "Reloading a tenant changed through another node failed.";
                            error!(%tenant, error = %e, "{why}");
                        }
                    }
                    Err(e) => {
                        warn!(error = %e, "The wake listener lost its connection.");
                        break;
                    }
                }
            },
            Err(e) => warn!(error = %e, "The wake listener could not connect."),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Err(e) = sweep(&steward).await {
            warn!(error = %e, "A sweep after the listener reconnected failed.");
        }
    }
}

/// Drains the node: the keeper and listener stop, every held tenant's actors stop, and each
/// lease is released for another node to take. Returns how many leases were handed over.
pub(crate) async fn drain(steward: &Steward) -> usize {
    let Some(cluster) = steward.cluster() else {
        return 0;
    };
    cluster.draining.store(true, Ordering::SeqCst);
    cluster.stop_tasks();
    let mut released = 0;
    for tenant in cluster.book.tenants() {
        if let Err(e) = steward.stop_tenant(&tenant, "the node is draining").await {
            error!(%tenant, error = %e, "Stopping a tenant while draining failed.");
        }
        let Some(token) = cluster.book.remove(&tenant) else {
            continue;
        };
        match steward
            .store()
            .release_lease(&tenant, cluster.node_id(), token)
            .await
        {
            Ok(true) => released += 1,
            Ok(false) => {}
            Err(e) => warn!(%tenant, error = %e, "Releasing a lease failed; it lapses instead."),
        }
    }
    info!(released, "The node drained; its tenants' leases are free.");
    released
}
