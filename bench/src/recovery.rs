//! Scenario `recovery`: a database with unfinished runs, some waiting for approval and the rest
//! in flight, Steward killed with SIGKILL, then started again on the same file; how long until
//! every unfinished run is resumed. In this design a run waiting for approval needs nothing at
//! boot (its click wakes it), and `Steward::resume` wakes every other unfinished run, one after
//! another, before the server starts serving.
//!
//! The runs in flight are made by pointing the tenants' ServiceNow at a server that never
//! answers: each run's actor waits on its first read, so at the kill every one of them is
//! unfinished and must be resumed. While the runs are built, SQLite runs with
//! `synchronous=NORMAL` (a process crash loses nothing in WAL mode; only power loss could);
//! the restarted server runs with `synchronous=FULL`, as in production.

use std::sync::Arc;
use std::time::{Duration, Instant};

use steward_actors::states;
use steward_core::{Clock, SystemClock};
use steward_runtime::standins::{StandinSettings, Standins};

use crate::child::{ChildPlan, ChildServer};
use crate::deliveries::{Deliveries, IncidentKey, Incidents};
use crate::hold::Hold;
use crate::intake::seed;
use crate::latency::millis;
use crate::load::{self, Pace, Plan};
use crate::machine::Machine;
use crate::probe::{self, Probe};
use crate::tenants::Endpoints;

/// Settings of the recovery scenario.
#[derive(Debug, Clone)]
pub(crate) struct RecoveryArgs {
    pub(crate) tenants: usize,
    /// Runs waiting for approval at the kill.
    pub(crate) waiting: u64,
    /// Runs in flight at the kill.
    pub(crate) moving: u64,
    pub(crate) connections: usize,
}

/// How long the restarted server gets to set every run moving and to park them all.
const RESUME_LIMIT: Duration = Duration::from_secs(180);

/// Runs the scenario and prints its figures.
pub(crate) async fn run(args: &RecoveryArgs, machine: &Machine) -> anyhow::Result<()> {
    println!(
        "== recovery: {} unfinished runs ({} waiting for approval, {} in flight), SIGKILL, \
         restart on the same database",
        args.waiting + args.moving,
        args.waiting,
        args.moving
    );
    println!("{machine}");
    let standins = Standins::start(StandinSettings::default()).await?;
    let incidents = Arc::new(seed(&standins, 1000));
    let dir = tempfile::tempdir()?;
    let plan = ChildPlan {
        database: dir.path().join("steward.db"),
        tenants: args.tenants,
        endpoints: Endpoints {
            servicenow: standins.servicenow_url(),
            slack_api: standins.slack_api_url(),
            llm: standins.llm_base_url(),
        },
        synchronous_full: false,
        call_timeout: None,
        max_live_actors: None,
    };
    build_waiting(args, &plan, &incidents).await?;
    build_in_flight(args, &plan, &incidents).await?;
    let probe = Probe::open(&plan.database).await?;
    let at_kill = probe.states().await?;
    println!("   runs by state at the kill: {at_kill:?}");
    println!(
        "   unfinished: {} waiting for approval (nothing to resume), {} to set moving",
        at_kill.get(states::AWAITING_APPROVAL).copied().unwrap_or(0),
        probe::moving(&at_kill)
    );
    restart(
        &ChildPlan {
            synchronous_full: true,
            ..plan
        },
        &probe,
    )
    .await?;
    probe.close().await;
    Ok(())
}

/// Drives `args.waiting` runs the whole way to their approval request, then stops cleanly.
async fn build_waiting(
    args: &RecoveryArgs,
    plan: &ChildPlan,
    incidents: &Arc<Vec<IncidentKey>>,
) -> anyhow::Result<()> {
    let child = ChildServer::spawn(plan).await?;
    let started = Instant::now();
    send(&child, args, incidents, 0, args.waiting).await?;
    let probe = Probe::open(&plan.database).await?;
    let limit = Duration::from_secs(60) + Duration::from_millis(20 * args.waiting);
    while probe.in_state(states::AWAITING_APPROVAL).await? < args.waiting {
        if started.elapsed() > limit {
            anyhow::bail!(
                "the waiting runs were not all parked: {:?}",
                probe.states().await?
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    probe.close().await;
    child.stop().await?;
    println!(
        "\n-- {} runs driven to their approval request in {:.1} s",
        args.waiting,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Accepts `args.moving` runs whose first read never returns, then kills the server.
async fn build_in_flight(
    args: &RecoveryArgs,
    plan: &ChildPlan,
    incidents: &Arc<Vec<IncidentKey>>,
) -> anyhow::Result<()> {
    let hold = Hold::start().await?;
    let mut stuck = plan.clone();
    stuck.endpoints.servicenow = hold.url().trim_end_matches("/v1/").to_owned();
    let child = ChildServer::spawn(&stuck).await?;
    let started = Instant::now();
    let rate = send(&child, args, incidents, args.waiting, args.moving).await?;
    child.kill().await?;
    drop(hold);
    println!(
        "-- {} more runs accepted in {:.1} s ({rate:.0}/s) with ServiceNow not answering, then \
         SIGKILL at once",
        args.moving,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn send(
    child: &ChildServer,
    args: &RecoveryArgs,
    incidents: &Arc<Vec<IncidentKey>>,
    offset: u64,
    count: u64,
) -> anyhow::Result<f64> {
    let deliveries = Deliveries::new(
        child.addr().to_string(),
        args.tenants,
        Incidents::Known(Arc::clone(incidents)),
    )
    .offset(offset);
    let plan = Plan {
        addr: child.addr(),
        connections: args.connections,
        window: Duration::from_secs(3600),
        pace: Pace::Closed,
        max_requests: Some(count),
    };
    let report = load::run(&plan, Arc::new(deliveries)).await?;
    if report.count(202) != count {
        anyhow::bail!("not every delivery was accepted: {report}");
    }
    Ok(report.throughput())
}

/// Starts Steward again and times the resume.
async fn restart(plan: &ChildPlan, probe: &Probe) -> anyhow::Result<()> {
    let restart_ms = SystemClock.now_millis();
    let restarted = Instant::now();
    let child = ChildServer::spawn(plan).await?;
    println!(
        "-- restarted (synchronous=FULL): serving {} after the spawn; the process's own time \
         from start to serving, resume included: {}",
        millis(child.ready_after()),
        millis(child.boot())
    );
    let all_moving = until(|| async { Ok(probe.unmoved(restart_ms).await? == 0) }).await?;
    report_time(
        "every run in flight had recorded a step since the restart",
        all_moving,
        restarted,
    );
    let parked = until(|| async { Ok(probe::moving(&probe.states().await?) == 0) }).await?;
    report_time(
        "every resumed run was parked again (waiting for approval or ended)",
        parked,
        restarted,
    );
    println!("   runs by state now: {:?}", probe.states().await?);
    child.stop().await
}

fn report_time(what: &str, at: Option<Instant>, restarted: Instant) {
    match at {
        Some(at) => println!("   {what}: {} after the spawn", millis(at - restarted)),
        None => println!("   {what}: not within {} s", RESUME_LIMIT.as_secs()),
    }
}

/// Polls `check` every 10 ms until it holds (the moment it was seen) or the limit passes.
async fn until<F, Fut>(check: F) -> anyhow::Result<Option<Instant>>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let start = Instant::now();
    while start.elapsed() < RESUME_LIMIT {
        if check().await? {
            return Ok(Some(Instant::now()));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(None)
}
