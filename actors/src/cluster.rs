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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use ractor::ActorStatus;
    use secrecy::SecretString;
    use serde_json::json;
    use steward_core::{Clock, FixedClock};
    use steward_persistence::{
        Authenticator, Lease, MasterKey, Store, StoreOptions, TenantRecord, TenantScope,
    };

    use super::*;
    use crate::root::StewardOptions;
    use crate::settings::secret_names;

    /// The shortest lease a node may take, in ms.
    const LEASE_MS: i64 = 3_000;

    fn acme() -> TenantId {
        TenantId::parse("us-acme").unwrap()
    }

    /// `node-a` on a fresh database (with `clock` as the database's clock) and one tenant whose
    /// supervisor starts: its connectors point at loopback, which nothing here calls. The
    /// keeper and the listener are stopped before they ever run, so each test runs the rounds
    /// itself.
    async fn node_a(dir: &tempfile::TempDir, clock: &FixedClock) -> Steward {
        let mut opts = StoreOptions::new(dir.path().join("steward.db"));
        opts.clock = Arc::new(clock.clone());
        let store = Store::open(opts).await.unwrap();
        let record = TenantRecord {
            id: acme(),
            name: "Acme".into(),
            settings: json!({
                "servicenow": {
                    "instance_url": "http://127.0.0.1:9",
                    "grant": "client_credentials",
                    "client_id": "steward",
                },
                "slack": {
                    "api_base": "http://127.0.0.1:9/api/",
                    "approval_channel": "C1",
                    "approvers": ["U1"],
                },
                "llm": {
                    "provider": "openai",
                    "base_url": "http://127.0.0.1:9/v1",
                    "model": "m",
                },
            }),
            created_at: 0,
        };
        store.upsert_tenant(&record).await.unwrap();
        let key = Arc::new(MasterKey::generate());
        let scope = TenantScope::assume(acme(), Authenticator::Operator);
        for name in [
            secret_names::LLM_API_KEY,
            secret_names::SERVICENOW_CLIENT_SECRET,
            secret_names::SLACK_BOT_TOKEN,
        ] {
            let value = SecretString::from("not-a-real-secret");
            store.put_secret(&scope, &key, name, &value).await.unwrap();
        }
        let options = StewardOptions {
            cluster: Some(ClusterOptions {
                node_id: "node-a".into(),
                lease: Duration::from_millis(LEASE_MS as u64),
            }),
            ..StewardOptions::default()
        };
        let steward = Steward::start(store, key, options).await.unwrap();
        // The test runtime has one thread and nothing has yielded since the tasks were
        // spawned, so neither has run a round.
        steward.cluster().unwrap().stop_tasks();
        steward
    }

    /// The tenant's lease as stored.
    async fn stored_lease(steward: &Steward) -> Lease {
        let mut leases = steward.store().leases().await.unwrap();
        assert_eq!(leases.len(), 1, "{leases:?}");
        leases.remove(0)
    }

    /// Moves the tenant's last renewal on this node `by` into the past, as if the node had
    /// tried and failed to renew for that long.
    fn last_renewed_ago(steward: &Steward, tenant: &TenantId, by: Duration) {
        let cluster = steward.cluster().unwrap();
        let mut held = cluster.book.lock();
        let entry = held.get_mut(tenant).unwrap();
        entry.renewed = Instant::now().checked_sub(by).unwrap();
    }

    #[tokio::test]
    async fn a_renewal_refused_for_a_newer_holder_drops_the_tenant_and_stops_its_supervisor() {
        let dir = tempfile::tempdir().unwrap();
        let clock = FixedClock::at_secs(1_700_000_000);
        let a = node_a(&dir, &clock).await;
        let t = acme();
        keeper_round(&a).await.unwrap();
        assert!(a.owns(&t));
        let supervisor = a.tenant(&t).await.unwrap();

        // A round in time renews the lease under the same token and leaves the work running.
        clock.advance_millis(1_000);
        keeper_round(&a).await.unwrap();
        assert!(a.owns(&t));
        assert_eq!(supervisor.get_status(), ActorStatus::Running);
        let lease = stored_lease(&a).await;
        assert_eq!(
            (lease.holder.as_str(), lease.token, lease.expires_at),
            ("node-a", 1, clock.now_millis() + LEASE_MS)
        );

        // The lease lapses on the database's clock before node-a's own time says it should
        // (their clocks drifted apart), and node-b takes the tenant under a newer token.
        clock.advance_millis(LEASE_MS + 1);
        let taken = a
            .store()
            .acquire_lease(&t, "node-b", LEASE_MS)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(taken.token, 2);

        // node-a's next round finds its renewal refused: the tenant leaves its book, so its
        // journal writes are fenced, and its supervisor is stopped and forgotten.
        keeper_round(&a).await.unwrap();
        assert!(!a.owns(&t));
        assert!(a.cluster().unwrap().book().tenants().is_empty());
        assert_eq!(supervisor.get_status(), ActorStatus::Stopped);
        assert!(!a.stop_tenant(&t, "checking").await.unwrap(), "forgotten");

        // It does not take the tenant back while node-b's lease is in force.
        keeper_round(&a).await.unwrap();
        assert!(!a.owns(&t));
        assert_eq!(stored_lease(&a).await, taken);
        a.stop();
    }

    #[tokio::test]
    async fn a_node_that_cannot_renew_in_time_stops_the_tenant_without_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let clock = FixedClock::at_secs(1_700_000_000);
        let a = node_a(&dir, &clock).await;
        let t = acme();
        keeper_round(&a).await.unwrap();
        assert!(a.owns(&t));
        let supervisor = a.tenant(&t).await.unwrap();
        let lease = stored_lease(&a).await;

        // The database becomes unreachable. A failed round alone keeps the tenant: its lease
        // is still good for most of its time.
        a.store().close().await;
        assert!(keeper_round(&a).await.is_err());
        assert!(a.owns(&t));
        assert_eq!(supervisor.get_status(), ActorStatus::Running);

        // Two thirds of a lease pass without a renewal: the next round stops the tenant before
        // asking the database anything, a third of a lease before another node could take it.
        let keep = a.cluster().unwrap().options.keep_unrenewed();
        let waited = keep + Duration::from_millis(1);
        last_renewed_ago(&a, &t, waited);
        clock.advance_millis(i64::try_from(waited.as_millis()).unwrap());
        assert!(
            keeper_round(&a).await.is_err(),
            "the database is still away"
        );
        assert!(!a.owns(&t));
        assert_eq!(supervisor.get_status(), ActorStatus::Stopped);
        assert!(!a.stop_tenant(&t, "checking").await.unwrap(), "forgotten");
        assert!(lease.live_at(clock.now_millis()));
        assert!(lease.expires_at - clock.now_millis() >= LEASE_MS / 3 - 1);
        a.stop();
    }
}
