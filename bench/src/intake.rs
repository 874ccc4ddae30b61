//! Scenario `intake`: signed webhooks posted over HTTP/1.1 keep-alive to Steward's real server
//! (in this process, on its own runtime) with many tenants, open-loop at fixed rates and
//! closed-loop at saturation. Each `202` means the delivery, the run, its first step and its
//! audit entry were committed (SQLite, `synchronous=FULL` unless told otherwise).

use std::sync::Arc;
use std::time::{Duration, Instant};

use steward_actors::states;
use steward_persistence::Store;
use steward_runtime::standins::{StandinSettings, Standins};

use crate::deliveries::{Deliveries, IncidentKey, Incidents};
use crate::hold::Hold;
use crate::hosted::Hosted;
use crate::latency::millis;
use crate::load::{self, Pace, Plan};
use crate::machine::{CpuSample, Machine};
use crate::tenants::{self, Endpoints};
use crate::{Background, disk};

/// Settings of the intake scenario.
#[derive(Debug, Clone)]
pub(crate) struct IntakeArgs {
    pub(crate) tenants: usize,
    pub(crate) rates: Vec<f64>,
    pub(crate) window: Duration,
    pub(crate) connections: usize,
    pub(crate) saturation: Vec<usize>,
    pub(crate) background: Background,
    pub(crate) synchronous_full: bool,
    pub(crate) server_threads: usize,
    /// A PostgreSQL server's superuser URL: serve from a database made there, not SQLite.
    pub(crate) postgres: Option<String>,
}

/// Connections of Steward's PostgreSQL pool in this scenario.
const PG_CONNECTIONS: u32 = 16;

/// How long a parked run's first read may stay open.
const PARK_FOR: Duration = Duration::from_secs(1800);

/// How long to wait for the runs a phase started to stop moving before the next phase.
const SETTLE_LIMIT: Duration = Duration::from_secs(60);

/// Runs the scenario and prints its figures.
pub(crate) async fn run(args: &IntakeArgs, machine: &Machine) -> anyhow::Result<()> {
    println!(
        "== intake: {} tenants, one webhook source each",
        args.tenants
    );
    println!("{machine}");
    let dir = tempfile::tempdir()?;
    let sync = disk::sync_latency(dir.path(), 300)?;
    println!("disk: 4 KiB + fdatasync, appending:   {}", sync.append);
    println!("disk: 4 KiB + fdatasync, overwriting: {}", sync.overwrite);
    let database = match &args.postgres {
        Some(server) => {
            let db = crate::pg::BenchDatabase::create(server).await?;
            println!("database: {}", db.describe().await?);
            Some(db)
        }
        None => {
            println!(
                "database: SQLite (WAL), synchronous={}",
                if args.synchronous_full {
                    "FULL"
                } else {
                    "NORMAL"
                }
            );
            None
        }
    };

    let standins = Standins::start(StandinSettings::default()).await?;
    let hold = Hold::start().await?;
    let incidents = match args.background {
        Background::Parked | Background::FailFast => Incidents::Unknown,
        Background::Full => Incidents::Known(Arc::new(seed(&standins, 1000))),
    };
    println!("background: {}", args.background.describe());
    let servicenow = match args.background {
        Background::Parked => hold.url().trim_end_matches("/v1/").to_owned(),
        Background::FailFast | Background::Full => standins.servicenow_url(),
    };
    let endpoints = Endpoints {
        servicenow,
        slack_api: standins.slack_api_url(),
        llm: standins.llm_base_url(),
    };
    let mut opts = tenants::serve_options(
        dir.path().join("steward.db"),
        args.tenants,
        &endpoints,
        args.synchronous_full,
    )?;
    if let Some(db) = &database {
        opts.postgres = Some(db.options(PG_CONNECTIONS));
    }
    if args.background == Background::Parked {
        // Parked runs must stay parked for the whole scenario, not time out and fail.
        opts.http.timeout = PARK_FOR;
        opts.actors.retry.call_timeout = PARK_FOR;
    }
    let server = Hosted::start(opts, args.server_threads).await?;
    println!(
        "server: Steward's real server (boot::start), release build, {} worker threads, at {}",
        args.server_threads,
        server.url()
    );

    let mut phases = Phases {
        server: &server,
        args,
        incidents,
        offset: 0,
    };
    phases.warm_up().await?;
    for rate in &args.rates {
        phases
            .phase(Pace::Open { rate: *rate }, args.connections)
            .await?;
    }
    for connections in &args.saturation {
        phases.phase(Pace::Closed, *connections).await?;
    }
    server.stop().await;
    drop(hold);
    if let Some(db) = database {
        db.drop_now().await?;
    }
    Ok(())
}

/// Seeds `n` incidents in the ServiceNow stand-in.
pub(crate) fn seed(standins: &Standins, n: usize) -> Vec<IncidentKey> {
    (0..n)
        .map(|i| {
            let record = serde_json::json!({
                "short_description": format!("Checkout fails with HTTP 502 ({i})"),
                "description": "Customers cannot pay since the 14:05 payments deploy.",
                "category": "inquiry",
                "impact": "3",
                "urgency": "3",
                "state": "1",
            });
            let sys_id = standins.seed_incident(record.as_object().cloned().unwrap_or_default());
            let number = standins
                .incident(&sys_id)
                .and_then(|v| v["number"].as_str().map(str::to_owned))
                .unwrap_or_default();
            IncidentKey { sys_id, number }
        })
        .collect()
}

struct Phases<'a> {
    server: &'a Hosted,
    args: &'a IntakeArgs,
    incidents: Incidents,
    offset: u64,
}

impl Phases<'_> {
    fn deliveries(&self) -> Deliveries {
        let incidents = match &self.incidents {
            Incidents::Unknown => Incidents::Unknown,
            Incidents::Known(list) => Incidents::Known(Arc::clone(list)),
        };
        Deliveries::new(self.server.addr().to_string(), self.args.tenants, incidents)
            .offset(self.offset)
    }

    fn advance(&mut self, report: &load::Report) {
        let sent: u64 = report.statuses.values().sum::<u64>() + report.errors;
        self.offset += sent;
    }

    /// One delivery per tenant, so every tenant supervisor is up before anything is timed.
    async fn warm_up(&mut self) -> anyhow::Result<()> {
        let count = self.args.tenants as u64 * 2;
        let plan = Plan {
            addr: self.server.addr(),
            connections: 4,
            window: Duration::from_secs(60),
            pace: Pace::Closed,
            max_requests: Some(count),
        };
        let report = load::run(&plan, Arc::new(self.deliveries())).await?;
        self.advance(&report);
        if report.count(202) != count {
            anyhow::bail!("warm-up deliveries were refused: {report}");
        }
        if self.args.background != Background::Parked {
            settle(self.server).await?;
        }
        Ok(())
    }

    async fn phase(&mut self, pace: Pace, connections: usize) -> anyhow::Result<()> {
        let window = self.args.window;
        match pace {
            Pace::Open { rate } => println!(
                "\n-- open loop at {rate:.0}/s for {:.0} s over {connections} connections",
                window.as_secs_f64()
            ),
            Pace::Closed => println!(
                "\n-- closed loop (saturation) for {:.0} s over {connections} connections",
                window.as_secs_f64()
            ),
        }
        let plan = Plan {
            addr: self.server.addr(),
            connections,
            window,
            pace,
            max_requests: None,
        };
        let workload = Arc::new(self.deliveries());
        let pid = std::process::id();
        let before = CpuSample::take(pid);
        let report = load::run(&plan, workload).await?;
        let usage = CpuSample::take(pid).since(&before);
        self.advance(&report);
        println!("{report}");
        println!("  {usage}");
        let at_end = unfinished(self.server).await?;
        if self.args.background == Background::Parked {
            println!("  background: {at_end} runs parked at their first read so far");
            return Ok(());
        }
        match settle(self.server).await? {
            Some(took) => println!(
                "  background: {at_end} started runs were still moving when the last answer \
                 came; they settled {} later",
                millis(took)
            ),
            None => println!(
                "  background: {at_end} started runs were still moving when the last answer \
                 came; some still were {} s later (the next phase shares the machine with them)",
                SETTLE_LIMIT.as_secs()
            ),
        }
        Ok(())
    }
}

/// Runs neither finished nor waiting for approval.
async fn unfinished(server: &Hosted) -> anyhow::Result<usize> {
    let store: Store = server.store();
    let runs = server
        .on_server(async move { store.unfinished_runs(states::TERMINAL).await })
        .await??;
    Ok(runs
        .iter()
        .filter(|(_, _, state)| state != states::AWAITING_APPROVAL)
        .count())
}

/// Waits until no run is moving; how long that took, or None if some still were at the limit.
async fn settle(server: &Hosted) -> anyhow::Result<Option<Duration>> {
    let start = Instant::now();
    loop {
        if unfinished(server).await? == 0 {
            return Ok(Some(start.elapsed()));
        }
        if start.elapsed() > SETTLE_LIMIT {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
