//! Scenario `flagship`: whole runs at a steady rate with the stand-ins answering at once. Times
//! two stretches of each run: from the webhook's `202` to the approval request reaching the
//! Slack stand-in, and from the signed Approve click to the `PATCH` reaching the ServiceNow
//! stand-in. The click is sent once the run is passivated (stored `awaiting_approval`, its
//! actor stopped), so the second stretch includes waking it from the journal.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use steward_actors::states;
use steward_adapters::slack::APPROVE_ACTION;
use steward_core::RunId;
use steward_persistence::{Authenticator, Store, TenantScope};
use steward_runtime::standins::{SlackMessage, StandinSettings, Standins};
use tokio::runtime::Handle;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::deliveries::{Deliveries, IncidentKey, Incidents};
use crate::hosted::Hosted;
use crate::intake::seed;
use crate::latency::{Latency, millis};
use crate::load::{self, Pace, Plan};
use crate::machine::{CpuSample, Machine};
use crate::tap::{Seen, Tap, incident_number};
use crate::tenants::{self, APPROVER, Endpoints};

/// Settings of the flagship scenario.
#[derive(Debug, Clone)]
pub(crate) struct FlagshipArgs {
    pub(crate) tenants: usize,
    pub(crate) rates: Vec<f64>,
    pub(crate) window: Duration,
    pub(crate) drain: Duration,
    pub(crate) connections: usize,
    pub(crate) server_threads: usize,
}

/// How long a click waits for its run to be passivated before it is sent anyway.
const PASSIVATION_LIMIT: Duration = Duration::from_secs(20);

/// How long after its run is stored waiting a click is sent, for the actor to have stopped.
const PASSIVATION_SETTLE: Duration = Duration::from_millis(20);

/// The first pause between two reads of a run a click waits on.
const POLL_FIRST: Duration = Duration::from_millis(2);

/// The longest pause between two reads of a run a click waits on.
const POLL_MOST: Duration = Duration::from_millis(32);

/// Runs the scenario and prints its figures.
pub(crate) async fn run(args: &FlagshipArgs, machine: &Machine) -> anyhow::Result<()> {
    println!(
        "== flagship: webhook → Slack approval request, click → ServiceNow PATCH; {} tenants",
        args.tenants
    );
    println!("{machine}");
    let standins = Arc::new(Standins::start(StandinSettings::default()).await?);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let slack_upstream = standins
        .slack_api_url()
        .trim_end_matches("/api/")
        .to_owned();
    let slack_tap = Tap::start(slack_upstream, tx.clone()).await?;
    let sn_tap = Tap::start(standins.servicenow_url(), tx).await?;
    let endpoints = Endpoints {
        servicenow: sn_tap.url().to_owned(),
        slack_api: format!("{}/api/", slack_tap.url()),
        llm: standins.llm_base_url(),
    };
    println!(
        "stand-ins: ServiceNow, Slack and the LLM in this process, answering at once; Slack \
         and ServiceNow behind a pass-through that stamps arrivals (one extra loopback hop each)"
    );
    let warm = args.tenants as u64;
    let planned: u64 = args
        .rates
        .iter()
        .map(|r| (r * args.window.as_secs_f64()) as u64)
        .sum();
    let incidents = Arc::new(seed(&standins, (warm + planned) as usize));
    let tracker = Arc::new(Tracker::new(&incidents));

    let dir = tempfile::tempdir()?;
    let mut opts = tenants::serve_options(
        dir.path().join("steward.db"),
        args.tenants,
        &endpoints,
        true,
    )?;
    // Steward keeps a waiting run's actor for its idle time (30 s by default), so a click
    // that soon would reach a live actor. The stretch to time includes waking a passivated
    // run, so here a run's actor stops as soon as the run waits.
    opts.actors.passivate_after = Duration::ZERO;
    let server = Hosted::start(opts, args.server_threads).await?;
    println!(
        "server: Steward's real server, SQLite synchronous=FULL, at {}",
        server.url()
    );
    let clicker = Clicker {
        tracker: Arc::clone(&tracker),
        standins: Arc::clone(&standins),
        store: server.store(),
        server_runtime: server
            .handle()
            .ok_or_else(|| anyhow::anyhow!("no server runtime"))?,
        base_url: server.url(),
        tenants: args.tenants,
    };
    let observer = tokio::spawn(clicker.observe(rx));

    let mut phases = Phases {
        args,
        server: &server,
        incidents,
        tracker,
        offset: 0,
    };
    phases.run_phase(Pace::Closed, warm, None).await?;
    for rate in &args.rates {
        let count = (rate * args.window.as_secs_f64()) as u64;
        phases
            .run_phase(Pace::Open { rate: *rate }, count, Some(*rate))
            .await?;
    }
    observer.abort();
    server.stop().await;
    Ok(())
}

/// When each step of one run was seen.
#[derive(Debug, Default, Clone, Copy)]
struct Times {
    run: Option<RunId>,
    accepted: Option<Instant>,
    posted: Option<Instant>,
    passivated: Option<Instant>,
    clicked: Option<Instant>,
    click_answered: Option<Instant>,
    patched: Option<Instant>,
}

/// Every run's times, by the index of the delivery that started it.
struct Tracker {
    times: Mutex<Vec<Times>>,
    by_number: HashMap<String, usize>,
    by_sys_id: HashMap<String, usize>,
    click_failures: AtomicU64,
}

impl Tracker {
    fn new(incidents: &[IncidentKey]) -> Self {
        Self {
            times: Mutex::new(vec![Times::default(); incidents.len()]),
            by_number: incidents
                .iter()
                .enumerate()
                .map(|(i, k)| (k.number.clone(), i))
                .collect(),
            by_sys_id: incidents
                .iter()
                .enumerate()
                .map(|(i, k)| (k.sys_id.clone(), i))
                .collect(),
            click_failures: AtomicU64::new(0),
        }
    }

    fn update(&self, i: usize, f: impl FnOnce(&mut Times)) {
        let mut times = self.times.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = times.get_mut(i) {
            f(t);
        }
    }

    fn get(&self, i: usize) -> Times {
        let times = self.times.lock().unwrap_or_else(|e| e.into_inner());
        times.get(i).copied().unwrap_or_default()
    }

    fn range(&self, from: usize, to: usize) -> Vec<Times> {
        let times = self.times.lock().unwrap_or_else(|e| e.into_inner());
        times[from.min(times.len())..to.min(times.len())].to_vec()
    }
}

/// Clicks Approve on every approval request the Slack tap sees, once its run is passivated.
struct Clicker {
    tracker: Arc<Tracker>,
    standins: Arc<Standins>,
    store: Store,
    server_runtime: Handle,
    base_url: String,
    tenants: usize,
}

impl Clicker {
    async fn observe(self, mut seen: UnboundedReceiver<Seen>) {
        let this = Arc::new(self);
        while let Some(event) = seen.recv().await {
            match event {
                Seen::SlackPost { at, message } => {
                    let found = incident_number(&message.text)
                        .and_then(|n| this.tracker.by_number.get(n))
                        .copied();
                    let Some(i) = found else { continue };
                    this.tracker.update(i, |t| {
                        t.posted.get_or_insert(at);
                    });
                    tokio::spawn(Arc::clone(&this).click(i, message));
                }
                Seen::Patch { at, sys_id } => {
                    if let Some(&i) = this.tracker.by_sys_id.get(&sys_id) {
                        this.tracker.update(i, |t| {
                            t.patched.get_or_insert(at);
                        });
                    }
                }
            }
        }
    }

    async fn click(self: Arc<Self>, i: usize, message: SlackMessage) {
        let tenant = tenants::tenant_id(i % self.tenants);
        if let Some(run) = self.wait_passivated(i, &tenant).await {
            let now = Instant::now();
            self.tracker.update(i, |t| {
                t.run = Some(run);
                t.passivated.get_or_insert(now);
            });
            // The actor offers to stop once the state is stored; give its supervisor the
            // moment that takes (untimed), so the click almost always finds no live actor.
            tokio::time::sleep(PASSIVATION_SETTLE).await;
        }
        let url = format!("{}/v1/slack/interactions/{tenant}", self.base_url);
        let sent = Instant::now();
        self.tracker.update(i, |t| {
            t.clicked.get_or_insert(sent);
        });
        let answer = self
            .standins
            .click(&url, &message, APPROVE_ACTION, APPROVER.0, APPROVER.1)
            .await;
        let answered = Instant::now();
        match answer {
            Ok((200, _)) => self.tracker.update(i, |t| {
                t.click_answered.get_or_insert(answered);
            }),
            _ => {
                self.tracker.click_failures.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Waits until the run is stored `awaiting_approval`, reading it at growing intervals
    /// ([`POLL_FIRST`] doubling up to [`POLL_MOST`]): each read runs on Steward's runtime and
    /// its SQLite readers, so a steady 2 ms poll of every waiting run would itself be a large
    /// share of the load measured.
    async fn wait_passivated(&self, i: usize, tenant: &steward_core::TenantId) -> Option<RunId> {
        let deadline = Instant::now() + PASSIVATION_LIMIT;
        let scope = TenantScope::assume(tenant.clone(), Authenticator::Operator);
        let mut pause = POLL_FIRST;
        while Instant::now() < deadline {
            if let Some(run) = self.tracker.get(i).run {
                let store = self.store.clone();
                let scope = scope.clone();
                let state = self
                    .server_runtime
                    .spawn(async move { store.run(&scope, run).await })
                    .await;
                if let Ok(Ok(Some(record))) = state
                    && (record.state == states::AWAITING_APPROVAL
                        || states::is_terminal(&record.state))
                {
                    return Some(run);
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(POLL_MOST);
                continue;
            }
            // Its 202 has not come back yet: nothing was read.
            tokio::time::sleep(POLL_FIRST).await;
        }
        None
    }
}

struct Phases<'a> {
    args: &'a FlagshipArgs,
    server: &'a Hosted,
    incidents: Arc<Vec<IncidentKey>>,
    tracker: Arc<Tracker>,
    offset: u64,
}

impl Phases<'_> {
    /// Sends `count` webhooks paced by `pace`, waits for their runs to be written back, and
    /// prints the figures unless this is the warm-up (`rate` None).
    async fn run_phase(&mut self, pace: Pace, count: u64, rate: Option<f64>) -> anyhow::Result<()> {
        let tracker = Arc::clone(&self.tracker);
        let deliveries = Deliveries::new(
            self.server.addr().to_string(),
            self.args.tenants,
            Incidents::Known(Arc::clone(&self.incidents)),
        )
        .offset(self.offset)
        .on_accepted(Box::new(move |n, run, at| {
            tracker.update(n as usize, |t| {
                t.run = Some(run);
                t.accepted = Some(at);
            });
        }));
        let plan = Plan {
            addr: self.server.addr(),
            connections: self.args.connections,
            window: if rate.is_some() {
                self.args.window
            } else {
                Duration::from_secs(60)
            },
            pace,
            max_requests: Some(count),
        };
        if let Some(rate) = rate {
            println!(
                "\n-- {rate:.0} runs/s offered for {:.0} s ({count} webhooks, {} connections)",
                self.args.window.as_secs_f64(),
                self.args.connections
            );
        }
        let pid = std::process::id();
        let before = CpuSample::take(pid);
        let start = Instant::now();
        let report = load::run(&plan, Arc::new(deliveries)).await?;
        let (from, to) = (self.offset as usize, (self.offset + count) as usize);
        self.offset += count;
        let drained = self.drain(from, to).await;
        let usage = CpuSample::take(pid).since(&before);
        if rate.is_none() {
            if report.count(202) != count {
                anyhow::bail!("warm-up webhooks were refused: {report}");
            }
            return Ok(());
        }
        println!("  webhooks:\n{report}");
        let times = self.tracker.range(from, to);
        print_stretches(&times, start, drained, self.args.drain);
        println!(
            "  click failures: {}",
            self.tracker.click_failures.swap(0, Ordering::Relaxed)
        );
        println!("  {usage}");
        Ok(())
    }

    /// Waits until every accepted run of `from..to` was PATCHed, or the drain time ran out.
    /// Returns how long after the last webhook answer that took.
    async fn drain(&self, from: usize, to: usize) -> Option<Duration> {
        let start = Instant::now();
        while start.elapsed() < self.args.drain {
            let pending = self
                .tracker
                .range(from, to)
                .iter()
                .filter(|t| t.accepted.is_some() && t.patched.is_none())
                .count();
            if pending == 0 {
                return Some(start.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }
}

/// Prints the two timed stretches and the rate each stage kept up.
fn print_stretches(times: &[Times], start: Instant, drained: Option<Duration>, limit: Duration) {
    let mut to_slack = Latency::new();
    let mut to_patch = Latency::new();
    let mut click_answer = Latency::new();
    let mut passivation = Latency::new();
    for t in times {
        if let (Some(a), Some(p)) = (t.accepted, t.posted) {
            to_slack.record(p.saturating_duration_since(a));
        }
        if let (Some(c), Some(p)) = (t.clicked, t.patched) {
            to_patch.record(p.saturating_duration_since(c));
        }
        if let (Some(c), Some(a)) = (t.clicked, t.click_answered) {
            click_answer.record(a.saturating_duration_since(c));
        }
        if let (Some(p), Some(s)) = (t.posted, t.passivated) {
            passivation.record(s.saturating_duration_since(p));
        }
    }
    println!("  webhook 202 → approval request at Slack: {to_slack}");
    println!("  click sent → PATCH at ServiceNow:       {to_patch}");
    println!("  click sent → Steward's 200 to Slack:    {click_answer}");
    println!("  (untimed) request at Slack → run seen passivated: {passivation}");
    let rate = |pick: fn(&Times) -> Option<Instant>| {
        let seen: Vec<Instant> = times.iter().filter_map(pick).collect();
        let last = seen.iter().max().copied();
        let secs = last.map_or(0.0, |l| l.saturating_duration_since(start).as_secs_f64());
        (
            seen.len(),
            if secs > 0.0 {
                seen.len() as f64 / secs
            } else {
                0.0
            },
        )
    };
    let (accepted, accepted_rate) = rate(|t| t.accepted);
    let (posted, posted_rate) = rate(|t| t.posted);
    let (patched, patched_rate) = rate(|t| t.patched);
    println!(
        "  sustained (count / time from the first send to the last event): 202s {accepted} at \
         {accepted_rate:.0}/s; approval requests {posted} at {posted_rate:.0}/s; PATCHes \
         {patched} at {patched_rate:.0}/s"
    );
    match drained {
        Some(d) => println!(
            "  every accepted run was written back {} after the last 202",
            millis(d)
        ),
        None => println!(
            "  not drained: {} of {accepted} accepted runs had no PATCH {} s after the last 202",
            accepted - patched.min(accepted),
            limit.as_secs()
        ),
    }
}
