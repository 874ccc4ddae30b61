//! Scenario `waiting`: Steward's resident memory (of a child process that is only Steward) with
//! many runs waiting for approval, and per live run actor. In this design a run waiting for
//! approval has no live actor: once its request is posted the actor stops and the run is only
//! rows on disk. Live actors are measured apart, by holding every run at its LLM call.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use steward_actors::states;
use steward_runtime::standins::{StandinSettings, Standins};

use crate::child::{ChildPlan, ChildServer};
use crate::deliveries::{Deliveries, IncidentKey, Incidents};
use crate::hold::Hold;
use crate::intake::seed;
use crate::load::{self, Pace, Plan};
use crate::machine::{Machine, mib};
use crate::probe::Probe;
use crate::tenants::Endpoints;

/// Settings of the waiting scenario.
#[derive(Debug, Clone)]
pub(crate) struct WaitingArgs {
    pub(crate) tenants: usize,
    /// Waiting-run counts to measure at, in increasing order.
    pub(crate) runs: Vec<u64>,
    /// Live run actors to hold.
    pub(crate) live: u64,
    pub(crate) connections: usize,
    pub(crate) synchronous_full: bool,
}

/// Runs the scenario and prints its figures.
pub(crate) async fn run(args: &WaitingArgs, machine: &Machine) -> anyhow::Result<()> {
    println!(
        "== waiting: resident memory of Steward (a child process) with runs waiting for approval"
    );
    println!("{machine}");
    println!(
        "design: a run waiting for approval has no live actor; it is rows in SQLite until its \
         click wakes it. SQLite synchronous={}",
        if args.synchronous_full {
            "FULL"
        } else {
            "NORMAL (durability is not what is measured here)"
        }
    );
    let standins = Standins::start(StandinSettings::default()).await?;
    let incidents = Arc::new(seed(&standins, 1000));
    let dir = tempfile::tempdir()?;
    let endpoints = Endpoints {
        servicenow: standins.servicenow_url(),
        slack_api: standins.slack_api_url(),
        llm: standins.llm_base_url(),
    };
    let plan = ChildPlan {
        database: dir.path().join("steward.db"),
        tenants: args.tenants,
        endpoints: endpoints.clone(),
        synchronous_full: args.synchronous_full,
        call_timeout: None,
        max_live_actors: None,
    };
    waiting_runs(args, &plan, &standins, &incidents).await?;
    let live_plan = ChildPlan {
        database: dir.path().join("live.db"),
        ..plan
    };
    live_actors(args, live_plan, &incidents).await
}

/// How long after the passivation delay the resident set is read again, so that the last
/// runs' actors have surely stopped.
const PASSIVATION_MARGIN: Duration = Duration::from_secs(5);

async fn waiting_runs(
    args: &WaitingArgs,
    plan: &ChildPlan,
    standins: &Standins,
    incidents: &Arc<Vec<IncidentKey>>,
) -> anyhow::Result<()> {
    let child = ChildServer::spawn(plan).await?;
    let probe = Probe::open(&plan.database).await?;
    println!(
        "\n-- booted (pid {}), no runs: RSS {}",
        child.pid(),
        mib(child.rss()?)
    );
    let mut sender = Sender::new(&child, args, incidents);
    sender.send(args.tenants as u64).await?;
    wait_for(&probe, states::AWAITING_APPROVAL, args.tenants as u64).await?;
    let base = child.rss()?;
    println!(
        "   one waiting run per tenant (tenants started): RSS {}",
        mib(base)
    );
    let mut waiting = args.tenants as u64;
    for target in &args.runs {
        let started = Instant::now();
        sender.send(target.saturating_sub(waiting)).await?;
        wait_for(&probe, states::AWAITING_APPROVAL, *target).await?;
        waiting = (*target).max(waiting);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rss = child.rss()?;
        println!(
            "-- {waiting} runs waiting for approval (driven through the real path in {:.1} s, \
             {} Slack posts), 0.5 s after the last began waiting: RSS {} (peak so far {}); \
             {:.0} bytes per waiting run above the one-per-tenant mark",
            started.elapsed().as_secs_f64(),
            standins.counts().slack_posts,
            mib(rss),
            mib(child.peak_rss()?),
            per(rss, base, waiting - args.tenants as u64)
        );
        // A run that has just started waiting keeps its actor until it has been idle for
        // the passivation delay; only then is it rows alone.
        let linger = steward_actors::root::StewardOptions::default().passivate_after;
        tokio::time::sleep(linger + PASSIVATION_MARGIN).await;
        let settled = child.rss()?;
        println!(
            "   {:.0} s later, every waiting run's actor passivated: RSS {}; {:.0} bytes per \
             waiting run above the one-per-tenant mark",
            (linger + PASSIVATION_MARGIN).as_secs_f64(),
            mib(settled),
            per(settled, base, waiting - args.tenants as u64)
        );
        println!("   on disk: {}", disk_size(&plan.database));
    }
    child.stop().await?;
    let fresh = ChildServer::spawn(plan).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!(
        "-- fresh process over the same {waiting} waiting runs (booted in {:.0} ms): RSS {}",
        fresh.boot().as_secs_f64() * 1000.0,
        mib(fresh.rss()?)
    );
    fresh.stop().await?;
    probe.close().await;
    Ok(())
}

async fn live_actors(
    args: &WaitingArgs,
    mut plan: ChildPlan,
    incidents: &Arc<Vec<IncidentKey>>,
) -> anyhow::Result<()> {
    let hold = Hold::start().await?;
    plan.endpoints.llm = hold.url().to_owned();
    plan.call_timeout = Some(Duration::from_secs(900));
    // Every run's actor is to stay alive here, whatever the cap on live actors.
    plan.max_live_actors = Some(args.tenants + args.live as usize + 1);
    let child = ChildServer::spawn(&plan).await?;
    let probe = Probe::open(&plan.database).await?;
    println!(
        "\n-- live run actors: the tenants' LLM never answers, so each run's actor stays alive \
         waiting for its triage (calls time out after 900 s)"
    );
    let mut sender = Sender::new(&child, args, incidents);
    let warm = args.tenants as u64;
    sender.send(warm).await?;
    wait_for_fetched(&probe, warm).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base = child.rss()?;
    let started = Instant::now();
    sender.send(args.live).await?;
    wait_for_fetched(&probe, warm + args.live).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss = child.rss()?;
    println!(
        "   {} live run actors (reached in {:.1} s): RSS {} (from {} with one per tenant); {:.0} \
         bytes per live actor, its pending LLM call included",
        warm + args.live,
        started.elapsed().as_secs_f64(),
        mib(rss),
        mib(base),
        per(rss, base, args.live)
    );
    child.kill().await?;
    probe.close().await;
    drop(hold);
    Ok(())
}

fn per(rss: u64, base: u64, n: u64) -> f64 {
    if n == 0 {
        return 0.0;
    }
    (rss as f64 - base as f64) / n as f64
}

/// Sends deliveries to a child, continuing its numbering.
struct Sender {
    addr: std::net::SocketAddr,
    tenants: usize,
    connections: usize,
    incidents: Arc<Vec<IncidentKey>>,
    offset: u64,
}

impl Sender {
    fn new(child: &ChildServer, args: &WaitingArgs, incidents: &Arc<Vec<IncidentKey>>) -> Self {
        Self {
            addr: child.addr(),
            tenants: args.tenants,
            connections: args.connections,
            incidents: Arc::clone(incidents),
            offset: 0,
        }
    }

    async fn send(&mut self, count: u64) -> anyhow::Result<()> {
        if count == 0 {
            return Ok(());
        }
        let deliveries = Deliveries::new(
            self.addr.to_string(),
            self.tenants,
            Incidents::Known(Arc::clone(&self.incidents)),
        )
        .offset(self.offset);
        let plan = Plan {
            addr: self.addr,
            connections: self.connections,
            window: Duration::from_secs(3600),
            pace: Pace::Closed,
            max_requests: Some(count),
        };
        let report = load::run(&plan, Arc::new(deliveries)).await?;
        self.offset += count;
        if report.count(202) != count {
            anyhow::bail!("not every delivery was accepted: {report}");
        }
        Ok(())
    }
}

/// Waits until at least `n` runs are in `state`, allowing 20 ms per run and a minute more.
async fn wait_for(probe: &Probe, state: &str, n: u64) -> anyhow::Result<()> {
    let limit = Duration::from_secs(60) + Duration::from_millis(20 * n);
    let start = Instant::now();
    loop {
        let have = probe.in_state(state).await?;
        if have >= n {
            return Ok(());
        }
        if start.elapsed() > limit {
            anyhow::bail!(
                "only {have} of {n} runs reached {state} within {} s: {:?}",
                limit.as_secs(),
                probe.states().await?
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `n` runs have fetched their incident and wait for the LLM.
async fn wait_for_fetched(probe: &Probe, n: u64) -> anyhow::Result<()> {
    wait_for(probe, states::TRIAGING, n).await
}

/// `steward.db 12.3 MiB + WAL 4.0 MiB`.
fn disk_size(database: &Path) -> String {
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    let mut wal = database.as_os_str().to_owned();
    wal.push("-wal");
    format!(
        "database {} + write-ahead log {}",
        mib(size(database)),
        mib(size(Path::new(&wal)))
    )
}
