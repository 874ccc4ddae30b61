//! The root of the supervision tree and [`Steward`], the handle the API uses. The root starts a
//! tenant supervisor on first use and forgets it if it stops, so the next use starts it again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ractor::rpc::CallResult;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use steward_adapters::http::HttpSettings;
use steward_core::{RunId, TenantId};
use steward_persistence::{Authenticator, MasterKey, Store, StoreError, TenantScope};
use tracing::{error, info};

use crate::budgets::PlatformLimits;
use crate::inspect::{ActorView, TenantFailures, WAITING_STATES, tree};
use crate::journal::{finished_write, states};
use crate::providers::LlmProviders;
use crate::retry::RetryPolicy;
use crate::run::FreshRun;
use crate::tenant::{RestartBudget, TenantInit, TenantMsg, TenantSupervisor};
use crate::tenant_runtime::SharedRuntime;

/// Settings of the actor system.
#[derive(Debug, Clone)]
pub struct StewardOptions {
    pub http: HttpSettings,
    pub retry: RetryPolicy,
    pub budget: RestartBudget,
    /// How long a waiting run's actor stays in memory before it stops (30 s by default; zero
    /// stops it as soon as it waits). A decision or timer after that starts a new actor.
    pub passivate_after: Duration,
    /// The most run actors alive at once in this process (2,000 by default). A run woken
    /// beyond it waits for an actor to end (in arrival order within its tenant, the tenants
    /// taking turns); while slots are scarce a waiting run stops its actor.
    pub max_live_runs: usize,
    /// The longest the timer service sleeps before it looks for due timers again (1 s).
    pub timer_poll: Duration,
    /// LLM providers beyond the built-in `openai` and `anthropic`.
    pub llm_providers: LlmProviders,
    /// The platform's budget ceilings, which tenants may lower.
    pub limits: PlatformLimits,
    /// The process's metrics (the binary builds one registry at boot and shares it).
    pub metrics: crate::metrics::Metrics,
    /// Set when this node shares its PostgreSQL database with other nodes: tenants are then
    /// owned through leases (`cluster.rs`). None: this node owns every tenant.
    pub cluster: Option<crate::cluster::ClusterOptions>,
}

impl Default for StewardOptions {
    fn default() -> Self {
        Self {
            http: HttpSettings::default(),
            retry: RetryPolicy::default(),
            budget: RestartBudget::default(),
            passivate_after: Duration::from_secs(30),
            max_live_runs: crate::live::DEFAULT_MAX_LIVE,
            timer_poll: Duration::from_secs(1),
            llm_providers: LlmProviders::default(),
            limits: PlatformLimits::default(),
            metrics: crate::metrics::Metrics::default(),
            cluster: None,
        }
    }
}

/// Decides which unfinished runs this node resumes at boot. One node owns every tenant today;
/// a multi-node lease plugs in here.
pub trait ResumeGate: Send + Sync {
    fn may_own(&self, tenant: &TenantId) -> bool;
}

/// The single-node gate: this node owns every tenant.
#[derive(Debug, Default)]
pub struct SingleNode;

impl ResumeGate for SingleNode {
    fn may_own(&self, _tenant: &TenantId) -> bool {
        true
    }
}

/// Messages to the root.
pub enum RootMsg {
    Tenant(TenantId, RpcReplyPort<Result<ActorRef<TenantMsg>, String>>),
    /// The live tenant supervisors, and the tenants whose supervisor failed.
    Tenants(RpcReplyPort<(Vec<ActorRef<TenantMsg>>, TenantFailures)>),
    /// Forgets the tenant's supervisor, if one runs, so its next use starts a new one with
    /// the stored settings; answers with the forgotten supervisor for the caller to stop.
    Reload(TenantId, RpcReplyPort<Option<ActorRef<TenantMsg>>>),
}

struct Root;

struct RootArgs {
    store: Store,
    master_key: Arc<MasterKey>,
    options: StewardOptions,
    live: Arc<crate::live::LiveRuns>,
}

struct RootState {
    args: RootArgs,
    tenants: HashMap<TenantId, ActorRef<TenantMsg>>,
    failures: TenantFailures,
}

impl Actor for Root {
    type Msg = RootMsg;
    type State = RootState;
    type Arguments = RootArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(RootState {
            args,
            tenants: HashMap::new(),
            failures: TenantFailures::default(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RootMsg::Tenant(tenant, reply) => {
                let result = state.tenant(&myself, tenant).await;
                let _ = reply.send(result);
            }
            RootMsg::Tenants(reply) => {
                let live = state.tenants.values().cloned().collect();
                let _ = reply.send((live, state.failures.clone()));
            }
            RootMsg::Reload(tenant, reply) => {
                let _ = reply.send(state.tenants.remove(&tenant));
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let gone = match &event {
            SupervisionEvent::ActorTerminated(cell, _, _) => Some(cell.get_id()),
            SupervisionEvent::ActorFailed(cell, e) => {
                error!(error = %e, "A tenant supervisor failed; it starts again on next use.");
                let failed = state
                    .tenants
                    .iter()
                    .find(|(_, t)| t.get_id() == cell.get_id());
                if let Some((tenant, _)) = failed {
                    state.failures.note(tenant, &e.to_string());
                }
                Some(cell.get_id())
            }
            _ => None,
        };
        if let Some(id) = gone {
            let tenant = state
                .tenants
                .iter()
                .find(|(_, t)| t.get_id() == id)
                .map(|(tenant, _)| tenant.clone());
            state.tenants.retain(|_, t| t.get_id() != id);
            // Runs queued for a slot with the supervisor that ended go to its successor.
            let queued = state.args.live.withdraw(id);
            if let Some(tenant) = tenant.filter(|_| !queued.is_empty()) {
                match state.tenant(&myself, tenant).await {
                    Ok(successor) => {
                        for run_id in queued {
                            let _ = successor.cast(TenantMsg::Wake(run_id));
                        }
                    }
                    Err(e) => error!(
                        error = %e,
                        runs = queued.len(),
                        "Runs queued for a tenant whose supervisor ended wait for their next \
                         wake-up."
                    ),
                }
            }
        }
        Ok(())
    }
}

impl RootState {
    async fn tenant(
        &mut self,
        myself: &ActorRef<RootMsg>,
        tenant: TenantId,
    ) -> Result<ActorRef<TenantMsg>, String> {
        if let Some(t) = self.tenants.get(&tenant) {
            return Ok(t.clone());
        }
        let init = TenantInit {
            tenant: tenant.clone(),
            store: self.args.store.clone(),
            master_key: self.args.master_key.clone(),
            http: self.args.options.http.clone(),
            retry: self.args.options.retry.clone(),
            budget: self.args.options.budget.clone(),
            passivate_after: self.args.options.passivate_after,
            llm_providers: self.args.options.llm_providers.clone(),
            limits: self.args.options.limits.clone(),
            metrics: self.args.options.metrics.for_tenant(&tenant),
            live: self.args.live.clone(),
        };
        let spawned = Actor::spawn_linked(None, TenantSupervisor, init, myself.get_cell()).await;
        let (sup, _) = spawned.map_err(|e| {
            let why = format!("tenant {tenant} could not start: {e}");
            self.failures.note(&tenant, &why);
            why
        })?;
        self.tenants.insert(tenant, sup.clone());
        Ok(sup)
    }
}

/// The handle to the running actor system.
#[derive(Clone)]
pub struct Steward {
    root: ActorRef<RootMsg>,
    store: Store,
    timers: Arc<std::sync::OnceLock<tokio::task::AbortHandle>>,
    started: std::time::Instant,
    limits: PlatformLimits,
    cluster: Option<Arc<crate::cluster::Cluster>>,
    live: Arc<crate::live::LiveRuns>,
}

const ASK_TIMEOUT: Duration = Duration::from_secs(10);

impl Steward {
    /// Starts the root of the tree.
    pub async fn start(
        store: Store,
        master_key: Arc<MasterKey>,
        options: StewardOptions,
    ) -> Result<Self, ActorProcessingErr> {
        let timer_poll = options.timer_poll;
        let limits = options.limits.clone();
        let cluster = options
            .cluster
            .clone()
            .map(|o| Arc::new(crate::cluster::Cluster::new(o)));
        if let Some(cluster) = &cluster {
            store.fence_with(cluster.book.clone())?;
        }
        let live = options.metrics.live_runs(options.max_live_runs);
        let args = RootArgs {
            store: store.clone(),
            master_key,
            options,
            live: live.clone(),
        };
        let (root, _) = Actor::spawn(None, Root, args).await?;
        let steward = Self {
            root,
            store,
            timers: Arc::default(),
            started: std::time::Instant::now(),
            limits,
            cluster,
            live,
        };
        let service = crate::timers::spawn(steward.clone(), timer_poll);
        let _ = steward.timers.set(service.abort_handle());
        crate::cluster::spawn(&steward);
        Ok(steward)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The platform's budget ceilings.
    pub fn limits(&self) -> &PlatformLimits {
        &self.limits
    }

    /// The cap on live run actors, with the runs queued for a slot.
    pub fn live_runs(&self) -> &crate::live::LiveRuns {
        &self.live
    }

    /// This node's part in a cluster, when it shares its database with other nodes.
    pub fn cluster(&self) -> Option<&crate::cluster::Cluster> {
        self.cluster.as_deref()
    }

    /// Whether this node runs the tenant's work now: always on a single node; in a cluster,
    /// while it holds the tenant's lease. Background passes over tenants (catch-up, SIEM)
    /// ask this before working for one.
    pub fn owns(&self, tenant: &TenantId) -> bool {
        self.cluster.as_ref().is_none_or(|c| c.book.holds(tenant))
    }

    /// The gate for resuming runs: every tenant on a single node, the held ones in a cluster.
    pub fn gate(&self) -> &dyn ResumeGate {
        match &self.cluster {
            Some(c) => c.book.as_ref(),
            None => &SingleNode,
        }
    }

    /// Drains this node (see `cluster.rs`): it takes no more leases, stops the actors of every
    /// tenant it holds and releases their leases. Returns how many it handed over; 0 on a
    /// single node.
    pub async fn drain(&self) -> usize {
        crate::cluster::drain(self).await
    }

    /// Stops the tenant's supervisor, if one runs here, with its run and adapter actors,
    /// without waking anything; its runs resume from their journals wherever the tenant is
    /// owned next.
    pub async fn stop_tenant(&self, tenant: &TenantId, reason: &str) -> Result<bool, String> {
        Ok(self.stop_supervisor(tenant, reason).await?.is_some())
    }

    /// Stops the tenant's supervisor as [`Steward::stop_tenant`] does; when one ran, returns
    /// its runs that were queued for a slot under the cap on live actors, taken out of the
    /// queue (their wake-up would otherwise go to the stopped supervisor).
    async fn stop_supervisor(
        &self,
        tenant: &TenantId,
        reason: &str,
    ) -> Result<Option<Vec<RunId>>, String> {
        let running = match self
            .root
            .call(|r| RootMsg::Reload(tenant.clone(), r), Some(ASK_TIMEOUT))
            .await
        {
            Ok(CallResult::Success(running)) => running,
            Ok(_) => return Err("the root did not answer in time".into()),
            Err(e) => return Err(e.to_string()),
        };
        let Some(sup) = running else {
            return Ok(None);
        };
        let mut queued = self.live.withdraw(sup.get_id());
        let reason = Some(reason.to_owned());
        sup.stop_children_and_wait(reason.clone(), Some(ASK_TIMEOUT))
            .await;
        let _ = sup.stop_and_wait(reason, Some(ASK_TIMEOUT)).await;
        // Runs woken while it was stopping.
        queued.extend(self.live.withdraw(sup.get_id()));
        Ok(Some(queued))
    }

    /// Wakes every parked run of `tenant` (of every tenant when None) that this node owns, so
    /// that a run held by a gate that opened (writes resumed) goes on. A run parked for
    /// another reason reads its journal, finds it still waits, and passivates again. Called
    /// when writes resume and at boot. Returns how many were woken.
    pub async fn wake_parked(
        &self,
        tenant: Option<&TenantId>,
        gate: &dyn ResumeGate,
    ) -> Result<usize, StoreError> {
        let runs = self.store.unfinished_runs(states::TERMINAL).await?;
        let mut woken = 0;
        for (owner, run_id, state) in runs {
            let selected = tenant.is_none_or(|t| t == &owner);
            if state == states::PARKED && selected && gate.may_own(&owner) {
                self.wake(&owner, run_id).await;
                woken += 1;
            }
        }
        Ok(woken)
    }

    /// The tenant's supervisor, started if needed.
    pub async fn tenant(&self, tenant: &TenantId) -> Result<ActorRef<TenantMsg>, String> {
        match self
            .root
            .call(|r| RootMsg::Tenant(tenant.clone(), r), Some(ASK_TIMEOUT))
            .await
        {
            Ok(CallResult::Success(result)) => result,
            Ok(_) => Err("the root did not answer in time".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The tenant's shared runtime (settings, policy, adapters).
    pub async fn runtime(&self, tenant: &TenantId) -> Result<SharedRuntime, String> {
        let sup = self.tenant(tenant).await?;
        match sup.call(TenantMsg::Runtime, Some(ASK_TIMEOUT)).await {
            Ok(CallResult::Success(rt)) => Ok(rt),
            Ok(_) => Err("the tenant supervisor did not answer in time".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Makes the tenant start again from its stored settings: stops its supervisor, if one
    /// runs, with its run and adapter actors, then wakes the tenant's unfinished runs that do
    /// not wait, which resume from their journals under the new settings. Returns whether a
    /// supervisor was running. In a cluster, on a node that does not own the tenant, the
    /// owner is rung to do this.
    pub async fn reload_tenant(&self, tenant: &TenantId) -> Result<bool, String> {
        if !self.owns(tenant) {
            // Another node runs the tenant: it must reload. A supervisor started here for an
            // API call (a connection check) stops, so its next use reads the new settings.
            self.stop_tenant(tenant, "tenant settings changed").await?;
            let call = steward_persistence::WakeCall::Reload {
                tenant: tenant.clone(),
            };
            self.store.ring(&call).await.map_err(|e| e.to_string())?;
            return Ok(false);
        }
        let Some(queued) = self
            .stop_supervisor(tenant, "tenant settings changed")
            .await?
        else {
            return Ok(false);
        };
        info!(%tenant, "Tenant settings changed; its supervisor restarted.");
        let runs = self
            .store
            .unfinished_runs(states::TERMINAL)
            .await
            .map_err(|e| e.to_string())?;
        let mut woken: std::collections::HashSet<RunId> = queued.iter().copied().collect();
        for run_id in queued {
            self.wake(tenant, run_id).await;
        }
        for (owner, run_id, state) in runs {
            let waiting = state == states::AWAITING_APPROVAL || state == states::PARKED;
            if &owner == tenant && !waiting && woken.insert(run_id) {
                self.wake(tenant, run_id).await;
            }
        }
        Ok(true)
    }

    /// Starts or wakes a run's actor on the node that owns its tenant: here on a single node
    /// or when this node holds the tenant's lease; otherwise the owner is rung
    /// ([`Store::ring`]), and the run, already durable, waits for it.
    pub async fn wake(&self, tenant: &TenantId, run_id: RunId) {
        if !self.owns(tenant) {
            let call = steward_persistence::WakeCall::Run {
                tenant: tenant.clone(),
                run: run_id,
            };
            if let Err(e) = self.store.ring(&call).await {
                let why = "Ringing the tenant's owner failed; its next sweep finds the run.";
                tracing::warn!(run.id = %run_id, error = %e, "{why}");
            }
            return;
        }
        self.wake_here(tenant, run_id).await;
    }

    /// Starts the actor of a run intake has just written, from `fresh` (what intake wrote)
    /// instead of reading it back. A run of a tenant another node owns is rung there, as
    /// [`Steward::wake`] does, and its owner reads it.
    pub async fn start_fresh(&self, tenant: &TenantId, run_id: RunId, fresh: FreshRun) {
        if !self.owns(tenant) {
            self.wake(tenant, run_id).await;
            return;
        }
        match self.tenant(tenant).await {
            Ok(sup) => {
                let _ = sup.cast(TenantMsg::Start(run_id, Box::new(fresh)));
            }
            Err(reason) => self.fail_to_start(tenant, run_id, &reason).await,
        }
    }

    /// Starts or wakes a run's actor on this node. If the tenant cannot start (a missing
    /// secret, say), the run is ended `failed` with that reason rather than left waiting.
    pub(crate) async fn wake_here(&self, tenant: &TenantId, run_id: RunId) {
        match self.tenant(tenant).await {
            Ok(sup) => {
                let _ = sup.cast(TenantMsg::Wake(run_id));
            }
            Err(reason) => self.fail_to_start(tenant, run_id, &reason).await,
        }
    }

    /// A run whose tenant cannot start (`reason`) is ended `failed` rather than left waiting.
    async fn fail_to_start(&self, tenant: &TenantId, run_id: RunId, reason: &str) {
        error!(run.id = %run_id, %reason, "A run could not start.");
        let scope = TenantScope::assume(tenant.clone(), Authenticator::RunResume);
        if let Err(e) = fail_unstarted(&self.store, &scope, run_id, reason).await {
            error!(run.id = %run_id, error = %e, "Recording the failure failed.");
        }
    }

    /// Resumes every unfinished run that `gate` lets this node own. Runs that wait for a
    /// person are left passivated: their callback or their timer wakes them. Parked runs are
    /// woken with the rest, so boot reads the unfinished runs once: each checks its gate again
    /// (write pauses are stored, and survive a restart) and goes idle if it still holds. A
    /// tenant's supervisor is looked up once for all its runs; a lookup that fails fails only
    /// the run it was for, and the next run of the tenant looks again. Returns how many were
    /// woken.
    pub async fn resume(&self, gate: &dyn ResumeGate) -> Result<usize, StoreError> {
        let runs = self.store.unfinished_runs(states::TERMINAL).await?;
        let mut supervisors: HashMap<TenantId, ActorRef<TenantMsg>> = HashMap::new();
        let mut woken = 0;
        for (tenant, run_id, state) in runs {
            if !gate.may_own(&tenant) || state == states::AWAITING_APPROVAL {
                continue;
            }
            woken += 1;
            if !self.owns(&tenant) {
                self.wake(&tenant, run_id).await;
                continue;
            }
            // A known supervisor that has stopped since is looked up (and started) again.
            if let Some(sup) = supervisors.get(&tenant)
                && sup.cast(TenantMsg::Wake(run_id)).is_ok()
            {
                continue;
            }
            supervisors.remove(&tenant);
            match self.tenant(&tenant).await {
                Ok(sup) => {
                    let _ = sup.cast(TenantMsg::Wake(run_id));
                    supervisors.insert(tenant, sup);
                }
                Err(reason) => self.fail_to_start(&tenant, run_id, &reason).await,
            }
        }
        info!(woken, "Resumed unfinished runs.");
        Ok(woken)
    }

    /// The live tree: the root, each live tenant with its runs and adapters, and per tenant
    /// the runs that wait without a live actor. A tenant that does not answer in time is left
    /// out.
    pub async fn inspect(&self) -> Result<ActorView, StoreError> {
        let (tenants, failures) = match self.root.call(RootMsg::Tenants, Some(ASK_TIMEOUT)).await {
            Ok(CallResult::Success(t)) => t,
            _ => (vec![], TenantFailures::default()),
        };
        let mut views = Vec::new();
        for t in tenants {
            if let Ok(CallResult::Success(v)) = t.call(TenantMsg::Inspect, Some(ASK_TIMEOUT)).await
            {
                views.push(v);
            }
        }
        let waiting = self.store.waiting_runs(WAITING_STATES).await?;
        Ok(tree(self.started.elapsed(), views, &failures, waiting))
    }

    /// Stops the timer service, then the whole tree at once, as a process exit would: a run in
    /// the middle of a step stops there, and its journal resumes it at the next start.
    pub fn stop(&self) {
        if let Some(timers) = self.timers.get() {
            timers.abort();
        }
        if let Some(cluster) = &self.cluster {
            cluster.stop_tasks();
        }
        self.root.kill();
    }
}

async fn fail_unstarted(
    store: &Store,
    scope: &TenantScope,
    run_id: RunId,
    reason: &str,
) -> Result<(), StoreError> {
    let Some(run) = store.run(scope, run_id).await? else {
        return Ok(());
    };
    if !states::is_terminal(&run.state) {
        store
            .append_step(
                scope,
                finished_write(run_id, run.steps, states::FAILED, reason),
            )
            .await?;
    }
    // No actor will start to consume the run's timers; they would only fire again.
    store.clear_timers(scope, run_id).await.map(drop)
}
