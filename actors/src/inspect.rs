//! Live inspection of the supervision tree, for on-call engineers: every live actor (root,
//! tenants, runs, adapters) with its kind, id, state, current step, what it waits on, restarts,
//! last error, uptime and, where known, its backlog; and per tenant the runs that wait without
//! a live actor (passivated), read from the store.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use ractor::rpc::CallResult;
use ractor::{ActorCell, ActorRef};
use serde::Serialize;
use steward_core::{RunId, TenantId};
use steward_persistence::{WaitingRun, redact_text};

use crate::connectors::{Connectors, LlmMsg, ServiceNowMsg, SlackMsg};
use crate::crash::{RunWatch, millis};
use crate::journal::states;
use crate::run::RunMsg;

/// States of runs that wait, possibly without a live actor.
pub const WAITING_STATES: &[&str] = &[states::AWAITING_APPROVAL, states::PARKED];

/// How long inspection waits for an adapter to report its backlog.
const BACKLOG_TIMEOUT: Duration = Duration::from_millis(500);

/// The longest error text shown.
const MAX_ERROR_CHARS: usize = 2000;

/// What an actor in the tree is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActorKind {
    Root,
    Tenant,
    Run,
    Adapter,
}

/// One actor of the tree and its children. Fields that do not apply, or are not known, are
/// null.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ActorView {
    pub kind: ActorKind,
    /// `root`, a tenant id, a run id, or an adapter's name (`llm`, `servicenow`, `slack`).
    pub id: String,
    /// For a run, the state of its journal (`triaging`, `writing`, …); for others, the actor's
    /// lifecycle (`running`, `idle`, …).
    pub state: String,
    /// The step a run is at.
    pub step: Option<String>,
    /// What the current step waits on: an adapter, a person or a timer.
    pub waits_on: Option<String>,
    /// The message a run is handling.
    pub message: Option<String>,
    /// Failures within the restart window (runs) or since start (tenants, adapters).
    pub restarts: usize,
    /// The last failure, redacted.
    pub last_error: Option<String>,
    /// Since the actor (this incarnation) started; null for an actor that is not running.
    pub uptime_ms: Option<u64>,
    /// Calls queued or running (adapters).
    pub backlog: Option<usize>,
    pub children: Vec<ActorView>,
    /// Runs of a tenant that wait without a live actor.
    pub waiting: Vec<WaitingView>,
}

impl ActorView {
    fn new(kind: ActorKind, id: impl Into<String>, state: impl Into<String>) -> Self {
        Self {
            kind,
            id: id.into(),
            state: state.into(),
            step: None,
            waits_on: None,
            message: None,
            restarts: 0,
            last_error: None,
            uptime_ms: None,
            backlog: None,
            children: vec![],
            waiting: vec![],
        }
    }
}

/// A run that waits outside any actor.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WaitingView {
    pub run_id: RunId,
    pub state: String,
    /// What wakes it: an approval (and where it was posted) or a timer.
    pub waits_on: String,
    /// Since when, Unix ms.
    pub since: i64,
}

impl From<WaitingRun> for WaitingView {
    fn from(w: WaitingRun) -> Self {
        let waits_on = match (w.approval_id, &w.channel) {
            (Some(id), Some(channel)) => format!("approval {id} in Slack channel {channel}"),
            (Some(id), None) => format!("approval {id} (request not yet posted)"),
            (None, _) if w.state == states::PARKED => {
                "a timer or a gate (a rate-limit or budget window, or paused writes; the run's \
                 last error says which)"
                    .to_owned()
            }
            (None, _) => w.state.clone(),
        };
        Self {
            run_id: w.run_id,
            state: w.state,
            waits_on,
            since: w.since,
        }
    }
}

/// An error as shown: redacted and cut.
fn shown(error: &str) -> String {
    redact_text(error).chars().take(MAX_ERROR_CHARS).collect()
}

fn lifecycle(cell: &ActorCell) -> String {
    format!("{:?}", cell.get_status()).to_ascii_lowercase()
}

/// How the tenant's adapter actors have fared.
#[derive(Debug)]
struct AdapterHealth {
    started: Instant,
    restarts: usize,
    last_error: Option<String>,
}

/// What a tenant supervisor keeps for inspection and crash snapshots.
#[derive(Debug)]
pub struct TenantOps {
    started: Instant,
    watches: HashMap<RunId, RunWatch>,
    adapters: AdapterHealth,
}

impl Default for TenantOps {
    fn default() -> Self {
        Self::new()
    }
}

impl TenantOps {
    /// For a supervisor starting now.
    pub fn new() -> Self {
        let now = Instant::now();
        Self {
            started: now,
            watches: HashMap::new(),
            adapters: AdapterHealth {
                started: now,
                restarts: 0,
                last_error: None,
            },
        }
    }

    /// The watch for a run whose actor starts now: made on the run's first start and kept
    /// across restarts of its actor.
    pub fn watch(&mut self, run_id: RunId) -> RunWatch {
        let watch = self.watches.entry(run_id).or_default().clone();
        watch.started();
        watch
    }

    /// The run's watch, while it has one.
    pub fn watch_of(&self, run_id: RunId) -> Option<RunWatch> {
        self.watches.get(&run_id).cloned()
    }

    /// The run has no actor any more and none is coming (it stopped, or its budget is spent).
    pub fn forget(&mut self, run_id: RunId) {
        self.watches.remove(&run_id);
    }

    /// An adapter actor failed; the set is being replaced.
    pub fn adapter_failed(&mut self, kind: &str, error: &str) {
        self.adapters.restarts += 1;
        self.adapters.last_error = Some(format!("{kind}: {error}"));
        self.adapters.started = Instant::now();
    }

    /// The tenant's subtree: its runs (live and restarting) and its adapters.
    pub async fn view(
        &self,
        tenant: &TenantId,
        runs: &HashMap<RunId, ActorRef<RunMsg>>,
        restarts: &HashMap<RunId, VecDeque<Instant>>,
        connectors: &Connectors,
    ) -> ActorView {
        let mut view = ActorView::new(ActorKind::Tenant, tenant.as_str(), "running");
        view.uptime_ms = Some(millis(self.started.elapsed()));
        let mut ids: Vec<RunId> = runs.keys().chain(self.watches.keys()).copied().collect();
        ids.sort_unstable();
        ids.dedup();
        for id in ids {
            let crashes = restarts.get(&id).map_or(0, VecDeque::len);
            view.children
                .push(self.run_view(id, runs.contains_key(&id), crashes));
        }
        view.children.extend(self.adapter_views(connectors).await);
        view
    }

    fn run_view(&self, id: RunId, live: bool, crashes: usize) -> ActorView {
        let status = self.watches.get(&id).map(RunWatch::status);
        let state = match (&status, live) {
            (_, false) => "restarting".to_owned(),
            (Some(s), true) => s.state.clone().unwrap_or_else(|| "starting".into()),
            (None, true) => "starting".to_owned(),
        };
        let mut view = ActorView::new(ActorKind::Run, id.to_string(), state);
        view.restarts = crashes;
        if let Some(s) = status {
            view.step = s.step;
            view.waits_on = s.waits_on.map(str::to_owned);
            view.message = s.message;
            view.last_error = s.last_error.as_deref().map(shown);
            view.uptime_ms = live.then_some(s.uptime_ms);
        }
        view
    }

    async fn adapter_views(&self, c: &Connectors) -> Vec<ActorView> {
        let llm = c.llm.call(LlmMsg::Pending, Some(BACKLOG_TIMEOUT));
        let sn = c
            .servicenow
            .call(ServiceNowMsg::Pending, Some(BACKLOG_TIMEOUT));
        let slack = c.slack.call(SlackMsg::Pending, Some(BACKLOG_TIMEOUT));
        let (llm, sn, slack) = tokio::join!(llm, sn, slack);
        let backlog = |r: Result<CallResult<usize>, _>| match r {
            Ok(CallResult::Success(n)) => Some(n),
            _ => None,
        };
        [
            ("llm", c.llm.get_cell(), backlog(llm.map_err(|_| ()))),
            (
                "servicenow",
                c.servicenow.get_cell(),
                backlog(sn.map_err(|_| ())),
            ),
            ("slack", c.slack.get_cell(), backlog(slack.map_err(|_| ()))),
        ]
        .into_iter()
        .map(|(name, cell, backlog)| {
            let mut view = ActorView::new(ActorKind::Adapter, name, lifecycle(&cell));
            view.restarts = self.adapters.restarts;
            view.last_error = self.adapters.last_error.as_deref().map(shown);
            view.uptime_ms = Some(millis(self.adapters.started.elapsed()));
            view.backlog = backlog;
            view
        })
        .collect()
    }
}

/// Tenant supervisors that failed, as the root saw them: how often and the last error.
#[derive(Debug, Clone, Default)]
pub struct TenantFailures(HashMap<TenantId, (usize, String)>);

impl TenantFailures {
    /// The tenant's supervisor failed, or could not start, with `error`.
    pub fn note(&mut self, tenant: &TenantId, error: &str) {
        let entry = self.0.entry(tenant.clone()).or_default();
        entry.0 += 1;
        entry.1 = error.to_owned();
    }
}

/// The whole tree: the root over its live tenants, with each tenant's waiting runs and
/// failures. A tenant that is not live but has waiting runs or failures is shown `idle`.
pub fn tree(
    uptime: Duration,
    live: Vec<ActorView>,
    failures: &TenantFailures,
    waiting: Vec<WaitingRun>,
) -> ActorView {
    let mut tenants: BTreeMap<String, ActorView> =
        live.into_iter().map(|v| (v.id.clone(), v)).collect();
    let idle = |id: &str| ActorView::new(ActorKind::Tenant, id, "idle");
    for (tenant, (count, error)) in &failures.0 {
        let view = tenants
            .entry(tenant.to_string())
            .or_insert_with(|| idle(tenant.as_str()));
        view.restarts = *count;
        view.last_error = Some(shown(error));
    }
    for w in waiting {
        let view = tenants
            .entry(w.tenant.to_string())
            .or_insert_with(|| idle(w.tenant.as_str()));
        let id = w.run_id.to_string();
        if !view.children.iter().any(|c| c.id == id) {
            view.waiting.push(w.into());
        }
    }
    let mut root = ActorView::new(ActorKind::Root, "root", "running");
    root.uptime_ms = Some(millis(uptime));
    root.children = tenants.into_values().collect();
    root
}

#[cfg(test)]
mod tests {
    use steward_core::ApprovalId;

    use super::*;

    fn waiting(tenant: &str, run: RunId, approval: Option<ApprovalId>) -> WaitingRun {
        WaitingRun {
            tenant: TenantId::parse(tenant).unwrap(),
            run_id: run,
            state: states::AWAITING_APPROVAL.into(),
            since: 1,
            approval_id: approval,
            channel: approval.map(|_| "C0APPROVE1".to_owned()),
        }
    }

    #[test]
    fn waiting_runs_hang_under_their_tenant_even_when_it_is_not_live() {
        let mut live = ActorView::new(ActorKind::Tenant, "us-acme", "running");
        let busy = RunId::new();
        live.children
            .push(ActorView::new(ActorKind::Run, busy.to_string(), "triaging"));
        let approval = ApprovalId::new();
        let (parked, asleep) = (RunId::new(), RunId::new());
        let tree = tree(
            Duration::from_secs(5),
            vec![live],
            &TenantFailures::default(),
            vec![
                waiting("us-acme", busy, None),
                waiting("us-acme", parked, Some(approval)),
                waiting("eu-beta", asleep, None),
            ],
        );
        assert_eq!(tree.kind, ActorKind::Root);
        assert_eq!(tree.uptime_ms, Some(5000));
        let ids: Vec<&str> = tree.children.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["eu-beta", "us-acme"]);
        let acme = &tree.children[1];
        assert_eq!(acme.waiting.len(), 1, "a live run is not listed as waiting");
        assert_eq!(acme.waiting[0].run_id, parked);
        assert!(acme.waiting[0].waits_on.contains("C0APPROVE1"));
        assert_eq!(tree.children[0].state, "idle");
    }

    #[test]
    fn a_tenant_that_failed_shows_its_redacted_error() {
        let mut failures = TenantFailures::default();
        let tenant = TenantId::parse("us-acme").unwrap();
        failures.note(&tenant, "first");
        failures.note(&tenant, "secret `slack.bot_token` xoxb-1-2-3 is unusable");
        let tree = tree(Duration::ZERO, vec![], &failures, vec![]);
        let acme = &tree.children[0];
        assert_eq!((acme.state.as_str(), acme.restarts), ("idle", 2));
        let error = acme.last_error.as_deref().unwrap();
        assert!(!error.contains("1-2-3"), "{error}");
        assert!(error.contains("is unusable"), "{error}");
    }

    #[test]
    fn the_view_serializes_every_field() {
        let json =
            serde_json::to_value(ActorView::new(ActorKind::Adapter, "llm", "running")).unwrap();
        for field in [
            "kind",
            "id",
            "state",
            "step",
            "waits_on",
            "message",
            "restarts",
            "last_error",
            "uptime_ms",
            "backlog",
            "children",
            "waiting",
        ] {
            assert!(json.get(field).is_some(), "{field}");
        }
        assert_eq!(json["kind"], "adapter");
    }
}
