//! The tenant supervisor: started on a tenant's first use, it owns that tenant's adapter actors
//! and its run actors. A run actor that fails is restarted from its journal within a restart
//! budget; when the budget is spent the run is marked failed and the supervisor goes on. An
//! adapter actor that fails or stops is started again on its own. A waiting run's actor is
//! stopped when it has been idle long enough and no wake-up for it is on its way.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent,
};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use steward_adapters::egress::{EgressKind, EgressRefused};
use steward_adapters::http::{HttpSettings, client};
use steward_adapters::llm::{Anthropic, LlmProvider, LlmSettings, OpenAiCompatible};
use steward_adapters::servicenow::{ServiceNowAuth, ServiceNowClient};
use steward_adapters::slack::SlackClient;
use steward_core::{RunId, TenantId};
use steward_persistence::{AuditDraft, Authenticator, MasterKey, Store, TenantScope, redact_text};
use tokio::sync::watch;
use tracing::{error, warn};

use crate::connectors::{Connectors, LlmActor, ServiceNowActor, SlackActor};
use crate::inspect::{ActorView, TenantOps};
use crate::journal::{finished_write, states};
use crate::live::{Admission, LiveRuns, LiveSlot};
use crate::policy::PolicyGate;
use crate::providers::LlmProviders;
use crate::retry::RetryPolicy;
use crate::run::{RunActor, RunArgs, RunMsg};
use crate::settings::{TenantSettings, secret_names};
use crate::tenant_runtime::{SharedRuntime, TenantRuntime};

/// How long after an operator's retry the run is woken a second time.
const REWAKE_AFTER_RETRY: Duration = Duration::from_millis(250);

/// How many times a run may crash in `restart_window` before it is failed.
#[derive(Debug, Clone)]
pub struct RestartBudget {
    pub max_restarts: usize,
    pub window: Duration,
    pub backoff: Duration,
}

impl Default for RestartBudget {
    fn default() -> Self {
        Self {
            max_restarts: 3,
            window: Duration::from_secs(60),
            backoff: Duration::from_millis(200),
        }
    }
}

/// What a tenant supervisor needs to start.
pub struct TenantInit {
    pub tenant: TenantId,
    pub store: Store,
    pub master_key: Arc<MasterKey>,
    pub http: HttpSettings,
    pub retry: RetryPolicy,
    pub budget: RestartBudget,
    /// How long a waiting run's actor stays in memory.
    pub passivate_after: Duration,
    /// LLM providers beyond the built-in ones.
    pub llm_providers: LlmProviders,
    /// The platform's budget ceilings.
    pub limits: crate::budgets::PlatformLimits,
    /// The process's metrics, labelled with this tenant.
    pub metrics: crate::metrics::TenantMetrics,
    /// The process-wide cap on live run actors, shared by every tenant.
    pub live: Arc<LiveRuns>,
}

/// Messages to a tenant supervisor.
pub enum TenantMsg {
    /// Start the run's actor if it is not running, or tell it to read its journal again.
    Wake(RunId),
    /// Start the actor of a run intake has just written, from what intake wrote; a run whose
    /// actor is running is told to read its journal again, as `Wake` does.
    Start(RunId, Box<crate::run::FreshRun>),
    /// A queued run's turn under the cap on live run actors: start its actor with this slot.
    Admit(RunId, LiveSlot),
    /// The shared runtime, for callers that act for this tenant (approval decisions).
    Runtime(RpcReplyPort<SharedRuntime>),
    /// The tenant's live subtree: its runs and adapters with their state.
    Inspect(RpcReplyPort<ActorView>),
    /// An operator retried the run: its restart budget starts afresh, and it is woken.
    Retried(RunId),
    /// A waiting run's actor has been idle for its idle time, having handled `reloads` reloads:
    /// stop it, unless a reload sent to it is still on its way.
    Idle {
        run_id: RunId,
        actor: ActorId,
        reloads: u64,
    },
}

pub struct TenantSupervisor;

pub struct TenantState {
    init: TenantInit,
    runtime: SharedRuntime,
    runs: HashMap<RunId, ActorRef<RunMsg>>,
    cells: HashMap<ActorId, RunId>,
    restarts: HashMap<RunId, VecDeque<Instant>>,
    adapters: HashMap<ActorId, &'static str>,
    /// Reloads sent to each live run actor, its first included.
    reloads_sent: HashMap<RunId, u64>,
    /// What each run is doing (for crash snapshots and inspection), and adapter health.
    ops: TenantOps,
}

impl Actor for TenantSupervisor {
    type Msg = TenantMsg;
    type State = TenantState;
    type Arguments = TenantInit;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        init: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let scope = TenantScope::assume(init.tenant.clone(), Authenticator::RunResume);
        let record = init
            .store
            .tenant(&scope)
            .await?
            .ok_or_else(|| format!("tenant {} is not configured", init.tenant))?;
        let mut document = record.settings;
        let controls = crate::settings::TenantControls::take(&mut document)
            .map_err(|e| format!("tenant {} settings are invalid: {e}", init.tenant))?;
        let settings: TenantSettings = serde_json::from_value(document)
            .map_err(|e| format!("tenant {} settings are invalid: {e}", init.tenant))?;
        let policy = PolicyGate::new(settings.policy.as_deref())?;
        let clients = Clients::build(&init, &scope, &settings).await?;
        let mut adapters = HashMap::new();
        let connectors = clients.spawn(&myself, &mut adapters).await?;
        let mut runtime = TenantRuntime::new(
            init.store.clone(),
            scope,
            settings,
            policy,
            init.retry.clone(),
            connectors,
        );
        runtime.controls = controls;
        runtime.limits = init.limits.clone();
        runtime.metrics = init.metrics.clone();
        let runtime = Arc::new(runtime);
        Ok(TenantState {
            init,
            runtime,
            runs: HashMap::new(),
            cells: HashMap::new(),
            restarts: HashMap::new(),
            adapters,
            reloads_sent: HashMap::new(),
            ops: TenantOps::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            TenantMsg::Wake(run_id) => state.wake(&myself, run_id, None).await,
            TenantMsg::Start(run_id, fresh) => state.wake(&myself, run_id, Some(fresh)).await,
            TenantMsg::Admit(run_id, slot) => {
                // Woken again while it was queued: the slot goes to the next in line.
                if !state.reload(run_id) {
                    state.spawn(&myself, run_id, None, slot).await;
                }
            }
            TenantMsg::Runtime(reply) => {
                let _ = reply.send(state.runtime.clone());
            }
            TenantMsg::Inspect(reply) => {
                let connectors = state.runtime.connectors();
                let view = state
                    .ops
                    .view(
                        &state.init.tenant,
                        &state.runs,
                        &state.restarts,
                        &connectors,
                    )
                    .await;
                let _ = reply.send(view);
            }
            TenantMsg::Retried(run_id) => {
                state.restarts.remove(&run_id);
                state.wake(&myself, run_id, None).await;
                // The actor that ended the run may still be stopping and drop that wake; wake
                // the run again once it is surely gone (a second wake of a live run is a
                // harmless reload).
                let me = myself.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(REWAKE_AFTER_RETRY).await;
                    let _ = me.cast(TenantMsg::Wake(run_id));
                });
            }
            TenantMsg::Idle {
                run_id,
                actor,
                reloads,
            } => state.passivate(run_id, actor, reloads),
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                if let Some(run_id) = state.cells.remove(&cell.get_id()) {
                    if state.forget_actor(run_id, cell.get_id()) {
                        state.ops.forget(run_id);
                    }
                } else if let Some(kind) = state.adapters.remove(&cell.get_id()) {
                    warn!(
                        adapter = kind,
                        ?reason,
                        "An adapter actor stopped; starting it again."
                    );
                    let why = reason.as_deref().unwrap_or("stopped");
                    state.ops.adapter_failed(kind, why);
                    state.restart_adapters(&myself).await;
                }
            }
            SupervisionEvent::ActorFailed(cell, error) => {
                state.failed(&myself, cell, error.to_string()).await;
            }
            _ => {}
        }
        Ok(())
    }
}

impl TenantState {
    /// Tells a live run's actor to read its journal again; false when the run has none.
    fn reload(&mut self, run_id: RunId) -> bool {
        if let Some(run) = self.runs.get(&run_id)
            && run.cast(RunMsg::Reload).is_ok()
        {
            *self.reloads_sent.entry(run_id).or_default() += 1;
            return true;
        }
        false
    }

    /// Reloads the run's actor, or starts one when a slot is free; otherwise the run is queued
    /// (without intake's copy: its actor reads the run when its turn comes).
    async fn wake(
        &mut self,
        myself: &ActorRef<TenantMsg>,
        run_id: RunId,
        fresh: Option<Box<crate::run::FreshRun>>,
    ) {
        if self.reload(run_id) {
            return;
        }
        if let Admission::Admitted(slot) = self.init.live.acquire(myself, run_id) {
            self.spawn(myself, run_id, fresh, slot).await;
        }
    }

    async fn spawn(
        &mut self,
        myself: &ActorRef<TenantMsg>,
        run_id: RunId,
        fresh: Option<Box<crate::run::FreshRun>>,
        slot: LiveSlot,
    ) {
        let args = RunArgs {
            run_id,
            runtime: self.runtime.clone(),
            supervisor: myself.clone(),
            passivate_after: self.init.passivate_after,
            watch: self.ops.watch(run_id),
            fresh,
            slot,
        };
        match Actor::spawn_linked(None, RunActor, args, myself.get_cell()).await {
            Ok((run, _)) => {
                self.cells.insert(run.get_id(), run_id);
                self.runs.insert(run_id, run);
                // The new actor sends itself its first reload.
                self.reloads_sent.insert(run_id, 1);
            }
            Err(e) => error!(run.id = %run_id, error = %e, "Starting a run actor failed."),
        }
    }

    /// Forgets the run's actor `actor`, which has ended, unless a newer actor of the run has
    /// taken its place (a wake-up that came while it was ending started one): that one stays
    /// tracked. Returns whether `actor` was the run's current actor. Its watch is left for the
    /// caller, which may still need it for a crash snapshot.
    fn forget_actor(&mut self, run_id: RunId, actor: ActorId) -> bool {
        if self.runs.get(&run_id).is_some_and(|r| r.get_id() != actor) {
            return false;
        }
        self.runs.remove(&run_id);
        self.reloads_sent.remove(&run_id);
        true
    }

    /// Stops an idle run actor, unless it is not the run's current actor or a reload sent to
    /// it has not been handled yet (it will go idle again after handling it).
    fn passivate(&mut self, run_id: RunId, actor: ActorId, reloads: u64) {
        let current = self.runs.get(&run_id).is_some_and(|r| r.get_id() == actor);
        let caught_up = self.reloads_sent.get(&run_id) == Some(&reloads);
        if !(current && caught_up) {
            return;
        }
        if let Some(run) = self.runs.remove(&run_id) {
            self.cells.remove(&actor);
            self.reloads_sent.remove(&run_id);
            self.ops.forget(run_id);
            run.stop(Some("passivated: waiting with nothing to do".into()));
        }
    }

    async fn failed(&mut self, myself: &ActorRef<TenantMsg>, cell: ActorCell, error: String) {
        if let Some(kind) = self.adapters.remove(&cell.get_id()) {
            warn!(adapter = kind, %error, "An adapter actor failed; starting it again.");
            self.ops.adapter_failed(kind, &error);
            self.restart_adapters(myself).await;
            return;
        }
        let Some(run_id) = self.cells.remove(&cell.get_id()) else {
            return;
        };
        // False when a newer actor of the run already runs (woken while this one was ending):
        // the crash is still recorded, but nothing is restarted.
        let current = self.forget_actor(run_id, cell.get_id());
        let now = Instant::now();
        let budget = self.init.budget.clone();
        let times = self.restarts.entry(run_id).or_default();
        times.retain(|t| now.duration_since(*t) < budget.window);
        times.push_back(now);
        let attempt = times.len();
        self.record_crash(run_id, attempt, &error).await;
        if !current {
            return;
        }
        if attempt > budget.max_restarts {
            self.ops.forget(run_id);
            self.fail_run(run_id, &error, attempt).await;
            return;
        }
        self.runtime.metrics.run_restarted();
        let backoff = budget
            .backoff
            .saturating_mul(1 << (attempt - 1).min(6) as u32);
        let me = myself.clone();
        tokio::spawn(async move {
            tokio::time::sleep(backoff).await;
            let _ = me.cast(TenantMsg::Wake(run_id));
        });
    }

    /// Stores the crash snapshot (what the run was doing, redacted by the store) and the
    /// `run.crashed` audit entry.
    async fn record_crash(&self, run_id: RunId, attempt: usize, error: &str) {
        let rt = &self.runtime;
        let crash = self
            .ops
            .watch_of(run_id)
            .unwrap_or_default()
            .crashed(run_id, attempt, error);
        let seq = match rt.store.record_crash(&rt.scope, crash).await {
            Ok(seq) => Some(seq),
            Err(e) => {
                error!(run.id = %run_id, error = %e, "Storing a crash snapshot failed.");
                None
            }
        };
        let draft = AuditDraft {
            kind: "run.crashed".into(),
            run_id: Some(run_id),
            actor: "steward".into(),
            body: json!({
                "attempt": attempt,
                "crash_seq": seq,
                "error": truncate(&redact_text(error), 2000),
            }),
        };
        if let Err(e) = self
            .runtime
            .store
            .append_audit(&self.runtime.scope, draft)
            .await
        {
            error!(run.id = %run_id, error = %e, "Recording a run crash failed.");
        }
    }

    async fn fail_run(&self, run_id: RunId, error: &str, attempts: usize) {
        let rt = &self.runtime;
        let reason = format!(
            "crashed {attempts} times; restart budget spent: {}",
            truncate(&redact_text(error), 500)
        );
        let steps = match rt.store.run(&rt.scope, run_id).await {
            Ok(Some(run)) => run.steps,
            _ => return,
        };
        let write = finished_write(run_id, steps, states::FAILED, &reason);
        match rt.store.append_owned_step(&rt.scope, write).await {
            Ok(()) => rt.metrics.run_finished(states::FAILED),
            Err(e) => {
                error!(
                    run.id = %run_id,
                    error = %e,
                    "Marking a run failed after its crashes failed."
                );
            }
        }
        if let Err(e) = rt.store.clear_timers(&rt.scope, run_id).await {
            error!(run.id = %run_id, error = %e, "Clearing a failed run's timers failed.");
        }
    }

    async fn restart_adapters(&mut self, myself: &ActorRef<TenantMsg>) {
        // One adapter failed; replace all three so the runtime holds one consistent set.
        let old = self.runtime.connectors();
        for cell in [
            old.llm.get_cell(),
            old.servicenow.get_cell(),
            old.slack.get_cell(),
        ] {
            self.adapters.remove(&cell.get_id());
            cell.stop(Some("replaced after an adapter failure".into()));
        }
        let scope = self.runtime.scope.clone();
        let result = match Clients::build(&self.init, &scope, &self.runtime.settings).await {
            Ok(clients) => clients.spawn(myself, &mut self.adapters).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(connectors) => self.runtime.set_connectors(connectors),
            Err(e) => error!(error = %e, "Restarting the adapter actors failed."),
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// Refuses to build a tenant's clients while any of its stored connector URLs is plain HTTP
/// where that is not allowed, or off its home region's allow-list
/// ([`HttpSettings::check_url`]): the one call-time check, before any request, for the built-in
/// and the registered LLM providers alike. The tenant then cannot start, and a run woken for it
/// fails with this reason.
pub fn check_egress(
    http: &HttpSettings,
    tenant: &TenantId,
    settings: &TenantSettings,
) -> Result<(), EgressRefused> {
    let region = tenant.region();
    http.check_url(region, EgressKind::Llm, &settings.llm.base_url)?;
    http.check_url(
        region,
        EgressKind::ServiceNow,
        &settings.servicenow.instance_url,
    )?;
    http.check_url(region, EgressKind::Slack, &settings.slack.api_base)
}

/// The tenant's outside-world clients, built from settings and sealed secrets.
struct Clients {
    llm: Arc<dyn LlmProvider>,
    servicenow: Arc<ServiceNowClient>,
    slack: Arc<SlackClient>,
}

impl Clients {
    async fn build(
        init: &TenantInit,
        scope: &TenantScope,
        settings: &TenantSettings,
    ) -> Result<Self, ActorProcessingErr> {
        check_egress(&init.http, &init.tenant, settings)?;
        let http = client(&init.http)?;
        let secret = |name: &'static str| {
            let store = init.store.clone();
            let key = init.master_key.clone();
            let scope = scope.clone();
            async move {
                store
                    .secret(&scope, &key, name)
                    .await?
                    .ok_or_else(|| format!("secret `{name}` is not set for this tenant").into())
            }
        };
        let llm_settings = LlmSettings {
            base_url: settings.llm.base_url.parse()?,
            model: settings.llm.model.clone(),
            api_key: secret_result(secret(secret_names::LLM_API_KEY).await)?,
            temperature: settings.llm.temperature,
            max_tokens: settings.llm.max_tokens,
        };
        let llm: Arc<dyn LlmProvider> = match settings.llm.provider.as_str() {
            "openai" => Arc::new(OpenAiCompatible::new(llm_settings, http.clone())),
            "anthropic" => Arc::new(Anthropic::new(llm_settings, http.clone())),
            other => init
                .llm_providers
                .build(other, llm_settings, http.clone())
                .ok_or_else(|| format!("unknown LLM provider `{other}`"))?,
        };
        let sn = &settings.servicenow;
        let client_secret = secret_result(secret(secret_names::SERVICENOW_CLIENT_SECRET).await)?;
        let auth = match sn.grant.as_str() {
            "password" => ServiceNowAuth::Password {
                client_id: sn.client_id.clone(),
                client_secret,
                username: sn
                    .username
                    .clone()
                    .ok_or("the password grant needs a username")?,
                password: secret_result(secret(secret_names::SERVICENOW_PASSWORD).await)?,
            },
            "refresh_token" => ServiceNowAuth::RefreshToken {
                client_id: sn.client_id.clone(),
                client_secret,
                refresh_token: secret_result(secret(secret_names::SERVICENOW_REFRESH_TOKEN).await)?,
            },
            "client_credentials" => ServiceNowAuth::ClientCredentials {
                client_id: sn.client_id.clone(),
                client_secret,
            },
            other => return Err(format!("unknown ServiceNow grant `{other}`").into()),
        };
        let servicenow = Arc::new(ServiceNowClient::new(
            sn.instance_url.parse()?,
            auth,
            http.clone(),
        ));
        if sn.grant == "refresh_token" {
            seal_rotated_refresh_tokens(
                init.store.clone(),
                init.master_key.clone(),
                scope.clone(),
                servicenow.rotated_refresh_token(),
            );
        }
        let bot_token = secret_result(secret(secret_names::SLACK_BOT_TOKEN).await)?;
        let slack = Arc::new(SlackClient::new(
            settings.slack.api_base.parse()?,
            bot_token,
            http,
        ));
        Ok(Self {
            llm,
            servicenow,
            slack,
        })
    }

    async fn spawn(
        self,
        supervisor: &ActorRef<TenantMsg>,
        adapters: &mut HashMap<ActorId, &'static str>,
    ) -> Result<Connectors, ActorProcessingErr> {
        let cell = supervisor.get_cell();
        let (llm, _) = Actor::spawn_linked(None, LlmActor, self.llm, cell.clone()).await?;
        let (servicenow, _) =
            Actor::spawn_linked(None, ServiceNowActor, self.servicenow, cell.clone()).await?;
        let (slack, _) = Actor::spawn_linked(None, SlackActor, self.slack, cell).await?;
        adapters.insert(llm.get_id(), "llm");
        adapters.insert(servicenow.get_id(), "servicenow");
        adapters.insert(slack.get_id(), "slack");
        Ok(Connectors {
            llm,
            servicenow,
            slack,
        })
    }
}

/// Seals each refresh token the ServiceNow server rotates in as the tenant's refresh-token
/// secret (one transaction each), so that a restart starts from the newest one. The task ends
/// when the client that reports rotations is dropped.
fn seal_rotated_refresh_tokens(
    store: Store,
    key: Arc<MasterKey>,
    scope: TenantScope,
    mut rotated: watch::Receiver<Option<SecretString>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while rotated.changed().await.is_ok() {
            let Some(token) = rotated.borrow_and_update().clone() else {
                continue;
            };
            seal_refresh_token(&store, &key, &scope, &token).await;
        }
    })
}

async fn seal_refresh_token(
    store: &Store,
    key: &MasterKey,
    scope: &TenantScope,
    token: &SecretString,
) {
    let name = secret_names::SERVICENOW_REFRESH_TOKEN;
    let version = match store.put_secret(scope, key, name, token).await {
        Ok(version) => version,
        Err(e) => {
            error!(
                tenant = %scope.tenant(),
                error = %e,
                "Sealing a rotated ServiceNow refresh token failed."
            );
            return;
        }
    };
    let draft = AuditDraft {
        kind: "secret.rotated".into(),
        run_id: None,
        actor: "servicenow".into(),
        body: json!({ "secret": name, "version": version }),
    };
    if let Err(e) = store.append_audit(scope, draft).await {
        error!(tenant = %scope.tenant(), error = %e, "Recording a refresh token rotation failed.");
    }
}

fn secret_result(
    r: Result<SecretString, ActorProcessingErr>,
) -> Result<SecretString, ActorProcessingErr> {
    r.and_then(|s| {
        if s.expose_secret().is_empty() {
            Err("a secret is set but empty".into())
        } else {
            Ok(s)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use steward_persistence::{StoreOptions, TenantRecord};

    async fn store_with_tenant(dir: &tempfile::TempDir) -> (Store, TenantScope) {
        let store = Store::open(StoreOptions::new(dir.path().join("steward.db")))
            .await
            .unwrap();
        let id = TenantId::parse("us-acme").unwrap();
        let record = TenantRecord {
            id: id.clone(),
            name: "Acme".into(),
            settings: json!({}),
            created_at: 0,
        };
        store.upsert_tenant(&record).await.unwrap();
        (store, TenantScope::assume(id, Authenticator::Operator))
    }

    async fn stored_token(store: &Store, key: &MasterKey, scope: &TenantScope) -> Option<String> {
        store
            .secret(scope, key, secret_names::SERVICENOW_REFRESH_TOKEN)
            .await
            .unwrap()
            .map(|s| s.expose_secret().to_owned())
    }

    #[tokio::test]
    async fn a_rotated_refresh_token_is_sealed_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (store, scope) = store_with_tenant(&dir).await;
        let key = Arc::new(MasterKey::generate());
        let name = secret_names::SERVICENOW_REFRESH_TOKEN;
        store
            .put_secret(&scope, &key, name, &SecretString::from("refresh-old"))
            .await
            .unwrap();
        let (tx, rx) = watch::channel(None);
        let task = seal_rotated_refresh_tokens(store.clone(), key.clone(), scope.clone(), rx);
        tx.send(Some(SecretString::from("refresh-new"))).unwrap();
        drop(tx);
        task.await.unwrap();
        store.close().await;

        let reopened = Store::open(StoreOptions::new(dir.path().join("steward.db")))
            .await
            .unwrap();
        let token = stored_token(&reopened, &key, &scope).await;
        assert_eq!(token.as_deref(), Some("refresh-new"));
        let audit = reopened.audit_entries(&scope, 0, 100).await.unwrap();
        let rotation = audit.iter().find(|e| e.kind == "secret.rotated").unwrap();
        assert!(!rotation.body.contains("refresh-new"), "{}", rotation.body);
    }

    #[tokio::test]
    async fn nothing_is_sealed_until_the_server_rotates_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let (store, scope) = store_with_tenant(&dir).await;
        let key = Arc::new(MasterKey::generate());
        let (tx, rx) = watch::channel(None);
        let task = seal_rotated_refresh_tokens(store.clone(), key.clone(), scope.clone(), rx);
        tx.send(None).unwrap();
        drop(tx);
        task.await.unwrap();
        assert_eq!(stored_token(&store, &key, &scope).await, None);
    }
}
