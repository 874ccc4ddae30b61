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

use crate::journal::{finished_write, states};
use crate::retry::RetryPolicy;
use crate::tenant::{RestartBudget, TenantInit, TenantMsg, TenantSupervisor, TenantView};
use crate::tenant_runtime::SharedRuntime;

/// Settings of the actor system.
#[derive(Debug, Clone, Default)]
pub struct StewardOptions {
    pub http: HttpSettings,
    pub retry: RetryPolicy,
    pub budget: RestartBudget,
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
    Tenants(RpcReplyPort<Vec<ActorRef<TenantMsg>>>),
}

struct Root;

struct RootArgs {
    store: Store,
    master_key: Arc<MasterKey>,
    options: StewardOptions,
}

struct RootState {
    args: RootArgs,
    tenants: HashMap<TenantId, ActorRef<TenantMsg>>,
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
                let _ = reply.send(state.tenants.values().cloned().collect());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let gone = match &event {
            SupervisionEvent::ActorTerminated(cell, _, _) => Some(cell.get_id()),
            SupervisionEvent::ActorFailed(cell, e) => {
                error!(error = %e, "A tenant supervisor failed; it starts again on next use.");
                Some(cell.get_id())
            }
            _ => None,
        };
        if let Some(id) = gone {
            state.tenants.retain(|_, t| t.get_id() != id);
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
        };
        let (sup, _) = Actor::spawn_linked(None, TenantSupervisor, init, myself.get_cell())
            .await
            .map_err(|e| format!("tenant {tenant} could not start: {e}"))?;
        self.tenants.insert(tenant, sup.clone());
        Ok(sup)
    }
}

/// The handle to the running actor system.
#[derive(Clone)]
pub struct Steward {
    root: ActorRef<RootMsg>,
    store: Store,
}

const ASK_TIMEOUT: Duration = Duration::from_secs(10);

impl Steward {
    /// Starts the root of the tree.
    pub async fn start(
        store: Store,
        master_key: Arc<MasterKey>,
        options: StewardOptions,
    ) -> Result<Self, ActorProcessingErr> {
        let args = RootArgs {
            store: store.clone(),
            master_key,
            options,
        };
        let (root, _) = Actor::spawn(None, Root, args).await?;
        Ok(Self { root, store })
    }

    pub fn store(&self) -> &Store {
        &self.store
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

    /// Starts or wakes a run's actor. If the tenant cannot start (a missing secret, say), the
    /// run is ended `failed` with that reason rather than left waiting.
    pub async fn wake(&self, tenant: &TenantId, run_id: RunId) {
        match self.tenant(tenant).await {
            Ok(sup) => {
                let _ = sup.cast(TenantMsg::Wake(run_id));
            }
            Err(reason) => {
                error!(run.id = %run_id, %reason, "A run could not start.");
                let scope = TenantScope::assume(tenant.clone(), Authenticator::RunResume);
                if let Err(e) = fail_unstarted(&self.store, &scope, run_id, &reason).await {
                    error!(run.id = %run_id, error = %e, "Recording the failure failed.");
                }
            }
        }
    }

    /// Resumes every unfinished run that `gate` lets this node own. Runs waiting for a person
    /// are left passivated; their callback wakes them. Returns how many were woken.
    pub async fn resume(&self, gate: &dyn ResumeGate) -> Result<usize, StoreError> {
        let runs = self.store.unfinished_runs(states::TERMINAL).await?;
        let mut woken = 0;
        for (tenant, run_id, state) in runs {
            if !gate.may_own(&tenant) || state == states::AWAITING_APPROVAL {
                continue;
            }
            self.wake(&tenant, run_id).await;
            woken += 1;
        }
        info!(woken, "Resumed unfinished runs.");
        Ok(woken)
    }

    /// The live tree, tenant by tenant.
    pub async fn inspect(&self) -> Vec<TenantView> {
        let tenants = match self.root.call(RootMsg::Tenants, Some(ASK_TIMEOUT)).await {
            Ok(CallResult::Success(t)) => t,
            _ => return vec![],
        };
        let mut views = Vec::new();
        for t in tenants {
            if let Ok(CallResult::Success(v)) = t.call(TenantMsg::Inspect, Some(ASK_TIMEOUT)).await
            {
                views.push(v);
            }
        }
        views
    }

    /// Stops the tree.
    pub fn stop(&self) {
        self.root.stop(None);
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
    if states::is_terminal(&run.state) {
        return Ok(());
    }
    store
        .append_step(
            scope,
            finished_write(run_id, run.steps, states::FAILED, reason),
        )
        .await
}
