//! The scenarios: SIGKILL at each step boundary of the flagship path, SIGKILL at seeded
//! random moments under a stream of webhooks, and faults at the stand-ins while runs flow.
//!
//! A scenario stops Steward at a boundary without any hook in the product: a stand-in holds
//! the call that follows the step (a fault rule that waits, then drops the connection), the
//! scenario waits until the stand-in has that call in hand, reads the journal through the ops
//! API to see where the run stands, and sends SIGKILL.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde_json::{Value, json};

use crate::check::{self, Outcome, TERMINAL};
use crate::world::{Server, World};

/// How long a run may take to get where a scenario waits for it.
const PATIENCE: Duration = Duration::from_secs(60);

/// How long a stand-in holds a call the scenario kills Steward during. The kill comes within
/// milliseconds; the hold only has to outlast it.
const HOLD_MS: u64 = 20_000;

/// Where the flagship path is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Boundary {
    /// The run is recorded; the incident fetch is in flight.
    AfterIntake,
    /// The proposal and the policy decision are recorded; the Slack post is in flight.
    AfterLlmReply,
    /// The approval request is posted and recorded; the run waits for a person.
    AfterSlackPost,
    /// The approval is decided; the pre-write re-read is in flight.
    AfterClick,
    /// The write intent is recorded; the `PATCH` is in flight and has not arrived.
    AfterWriteIntent,
    /// The `PATCH` is applied at ServiceNow; its reply never reaches Steward.
    AfterWrite,
}

impl Boundary {
    /// Every boundary, in path order.
    pub const ALL: [Boundary; 6] = [
        Boundary::AfterIntake,
        Boundary::AfterLlmReply,
        Boundary::AfterSlackPost,
        Boundary::AfterClick,
        Boundary::AfterWriteIntent,
        Boundary::AfterWrite,
    ];

    /// The scenario's name in the summary.
    pub fn name(self) -> &'static str {
        match self {
            Self::AfterIntake => "kill after intake",
            Self::AfterLlmReply => "kill after the LLM reply",
            Self::AfterSlackPost => "kill after the Slack post",
            Self::AfterClick => "kill after the click",
            Self::AfterWriteIntent => "kill after recording the write intent",
            Self::AfterWrite => "kill after the write",
        }
    }

    /// The journal step that must be recorded when Steward is killed.
    fn recorded_step(self) -> &'static str {
        match self {
            Self::AfterIntake => "received",
            Self::AfterLlmReply => "policy_decided",
            Self::AfterSlackPost => "approval_requested",
            Self::AfterClick => "approval_decided",
            Self::AfterWriteIntent | Self::AfterWrite => "write_intended",
        }
    }

    /// The call the stand-in holds, if any: its server and rule.
    fn hold(self) -> Option<(Server, Value)> {
        let reset = json!({"kind": "reset", "after_ms": HOLD_MS});
        let rule =
            |route: &str, action: &Value| json!([{"route": route, "action": action, "times": 1}]);
        match self {
            Self::AfterIntake => Some((Server::ServiceNow, rule("table_get", &reset))),
            Self::AfterLlmReply => Some((Server::Slack, rule("chat.postMessage", &reset))),
            Self::AfterSlackPost => None,
            Self::AfterClick => Some((Server::ServiceNow, rule("table_get", &reset))),
            Self::AfterWriteIntent => Some((Server::ServiceNow, rule("table_patch", &reset))),
            Self::AfterWrite => {
                let lose = json!({"kind": "lose_reply", "after_ms": HOLD_MS});
                Some((Server::ServiceNow, rule("table_patch", &lose)))
            }
        }
    }

    /// Whether the cut comes after the approval click.
    fn after_click(self) -> bool {
        matches!(
            self,
            Self::AfterClick | Self::AfterWriteIntent | Self::AfterWrite
        )
    }
}

/// Cuts one flagship run at `boundary` with SIGKILL, restarts Steward on the same database,
/// finishes the run (clicking Approve when it asks), and checks.
pub async fn kill_at_boundary(boundary: Boundary) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let mut world = World::start().await?;
    let hold = boundary.hold();
    if !boundary.after_click()
        && let Some((server, rules)) = &hold
    {
        world.set_faults(*server, rules.clone()).await?;
    }
    let run = world.send_webhook(boundary.name()).await?;
    if boundary == Boundary::AfterSlackPost || boundary.after_click() {
        world
            .wait_state(&run.run_id, &["awaiting_approval"], PATIENCE)
            .await?;
    }
    if boundary.after_click() {
        if let Some((server, rules)) = &hold {
            world.set_faults(*server, rules.clone()).await?;
        }
        let status = world.click(&run.run_id, true).await?;
        anyhow::ensure!(status == 200, "the click was answered {status}");
    }
    if let Some((server, _)) = &hold {
        world.wait_fault_hit(*server, 0, PATIENCE).await?;
    }
    let mut outcome = cut(&mut world, &run.run_id, boundary.recorded_step()).await?;
    finish(&mut world, &HashSet::new(), PATIENCE).await?;
    let checked = check::check(&world, boundary.name(), started).await;
    outcome.violations.extend(checked.violations);
    Ok(Outcome {
        violations: outcome.violations,
        ..checked
    })
}

/// SIGKILLs Steward once the run's journal holds `step`, and starts it again. The outcome
/// carries a violation if the step was not recorded at the cut.
async fn cut(world: &mut World, run_id: &str, step: &str) -> anyhow::Result<Outcome> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut kinds = world.step_kinds(run_id).await?;
    while !kinds.iter().any(|kind| kind == step) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        kinds = world.step_kinds(run_id).await?;
    }
    let mut outcome = Outcome::default();
    if !kinds.iter().any(|kind| kind == step) {
        outcome.violations.push(format!(
            "run {run_id}: {step} was not recorded before the call that follows it; journal: {kinds:?}"
        ));
    }
    world.crash_and_restart().await?;
    Ok(outcome)
}

/// Drives every accepted run to a terminal state: clicks Approve (Reject for runs in
/// `reject`) on each run waiting for a decision, until all are terminal or `patience` is
/// over. Runs still open then are left for the checks to judge.
pub async fn finish(
    world: &mut World,
    reject: &HashSet<String>,
    patience: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + patience;
    let mut clicked = HashSet::new();
    while Instant::now() < deadline {
        let mut open = 0;
        for accepted in world.accepted.clone() {
            let Ok(state) = world.state(&accepted.run_id).await else {
                open += 1;
                continue;
            };
            if TERMINAL.contains(&state.as_str()) {
                continue;
            }
            open += 1;
            if state == "awaiting_approval" && !clicked.contains(&accepted.run_id) {
                let approve = !reject.contains(&accepted.run_id);
                if let Ok(200) = world.click(&accepted.run_id, approve).await {
                    clicked.insert(accepted.run_id.clone());
                }
            }
        }
        if open == 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// The size of a seeded random-kill scenario.
#[derive(Debug, Clone, Copy)]
pub struct RandomKills {
    /// The seed of every random choice (kill moments, which runs are rejected).
    pub seed: u64,
    /// Webhooks sent.
    pub webhooks: usize,
    /// SIGKILLs sent.
    pub kills: usize,
}

/// Sends a steady stream of webhooks, approving (or now and then rejecting) each run as it
/// asks, and SIGKILLs Steward at seeded random moments, restarting it each time.
pub async fn random_kills(plan: RandomKills) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let name = format!("random kills (seed {})", plan.seed);
    let mut rng = StdRng::seed_from_u64(plan.seed);
    let mut kill_after: Vec<usize> = (0..plan.kills)
        .map(|_| rng.gen_range(0..plan.webhooks))
        .collect();
    kill_after.sort_unstable();
    let mut world = World::start().await?;
    let mut reject = HashSet::new();
    let mut clicked = HashSet::new();
    for index in 0..plan.webhooks {
        let run = world.send_webhook(&format!("stream {index}")).await?;
        if rng.gen_ratio(1, 5) {
            reject.insert(run.run_id.clone());
        }
        click_waiting(&world, &reject, &mut clicked).await;
        tokio::time::sleep(Duration::from_millis(rng.gen_range(20..120))).await;
        for _ in kill_after.iter().filter(|at| **at == index) {
            tokio::time::sleep(Duration::from_millis(rng.gen_range(0..400))).await;
            world.crash_and_restart().await?;
        }
    }
    finish(&mut world, &reject, PATIENCE).await?;
    Ok(check::check(&world, &name, started).await)
}

/// Clicks once on each run that waits for a decision and has not been clicked.
async fn click_waiting(world: &World, reject: &HashSet<String>, clicked: &mut HashSet<String>) {
    for accepted in &world.accepted {
        if clicked.contains(&accepted.run_id) {
            continue;
        }
        if world.state(&accepted.run_id).await.ok().as_deref() == Some("awaiting_approval") {
            let approve = !reject.contains(&accepted.run_id);
            if let Ok(200) = world.click(&accepted.run_id, approve).await {
                clicked.insert(accepted.run_id.clone());
            }
        }
    }
}

/// One fault scenario: a name, the rules for each server, and how many webhooks to send.
#[derive(Debug, Clone)]
pub struct FaultPlan {
    /// The scenario's name in the summary.
    pub name: String,
    /// The fault book of each server that gets one.
    pub books: Vec<(Server, Value)>,
    /// Webhooks sent while the faults are on.
    pub webhooks: usize,
}

/// The fault scenarios: one per kind of failure the vendors produce, each on the calls where
/// it hurts.
pub fn fault_plans(seed: u64, webhooks: usize) -> Vec<FaultPlan> {
    let plan = |name: &str, books: Vec<(Server, Value)>| FaultPlan {
        name: name.to_owned(),
        books,
        webhooks,
    };
    vec![
        plan(
            "servicenow 5xx and resets",
            vec![(
                Server::ServiceNow,
                json!([
                    {"route": "table_get", "action": {"kind": "server_error", "status": 503}, "probability": 0.3, "seed": seed, "times": 6},
                    {"route": "table_patch", "action": {"kind": "reset"}, "times": 1},
                    {"route": "table_patch", "action": {"kind": "lose_reply"}, "times": 1},
                    {"route": "journal", "action": {"kind": "server_error", "status": 500}, "times": 1},
                ]),
            )],
        ),
        plan(
            "rate limits (Retry-After, X-RateLimit)",
            vec![
                (
                    Server::ServiceNow,
                    json!([
                        {"route": "oauth", "action": {"kind": "retry_after", "secs": 1}, "times": 1},
                        {"route": "table_get", "action": {"kind": "servicenow_rate_limit", "limit": 100, "reset_in_secs": 2}, "times": 1},
                        {"route": "table_patch", "action": {"kind": "servicenow_rate_limit", "limit": 100, "reset_in_secs": 2}, "times": 1},
                    ]),
                ),
                (
                    Server::Slack,
                    json!([{"route": "chat.postMessage", "action": {"kind": "retry_after", "secs": 1}, "times": 1}]),
                ),
            ],
        ),
        plan(
            "slack ok:false and LLM overload",
            vec![
                (
                    Server::Slack,
                    json!([
                        {"route": "chat.postMessage", "action": {"kind": "slack_error", "error": "internal_error"}, "times": 1},
                        {"route": "chat.update", "action": {"kind": "slack_error", "error": "ratelimited"}, "times": 2},
                        {"route": "chat.postEphemeral", "action": {"kind": "server_error", "status": 503}, "times": 1},
                    ]),
                ),
                (
                    Server::Llm,
                    json!([
                        {"route": "chat_completions", "action": {"kind": "openai_server_error"}, "probability": 0.4, "seed": seed, "times": 4},
                        {"route": "chat_completions", "action": {"kind": "llm_overloaded"}, "times": 1},
                    ]),
                ),
            ],
        ),
        plan(
            "slow calls and dropped connections",
            vec![
                (
                    Server::ServiceNow,
                    json!([
                        {"route": "table_get", "action": {"kind": "delay", "ms": 1500}, "times": 2},
                        {"route": "oauth", "action": {"kind": "reset"}, "times": 1},
                    ]),
                ),
                (
                    Server::Llm,
                    json!([{"route": "chat_completions", "action": {"kind": "reset", "after_ms": 200}, "times": 1}]),
                ),
                (
                    Server::Slack,
                    json!([{"route": "chat.update", "action": {"kind": "reset"}, "times": 1}]),
                ),
            ],
        ),
    ]
}

/// Turns the plan's faults on, sends its webhooks, approves every run, and checks.
pub async fn faults_while_flowing(plan: &FaultPlan) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let mut world = World::start().await?;
    for (server, rules) in &plan.books {
        world
            .set_faults(*server, rules.clone())
            .await
            .with_context(|| format!("{}: {server:?}", plan.name))?;
    }
    let mut clicked = HashSet::new();
    let none = HashSet::new();
    for index in 0..plan.webhooks {
        world.send_webhook(&format!("faults {index}")).await?;
        click_waiting(&world, &none, &mut clicked).await;
    }
    finish(&mut world, &none, PATIENCE).await?;
    Ok(check::check(&world, &plan.name, started).await)
}

/// What the two-node failover measured.
#[derive(Debug, Clone)]
pub struct Failover {
    /// The checks' outcome.
    pub outcome: Outcome,
    /// From the SIGKILL of the owner to the survivor holding the tenant's lease.
    pub lease_moved: Duration,
    /// From the SIGKILL to every run that was moving at the kill being terminal or waiting
    /// for its approval on the survivor.
    pub runs_moving_again: Duration,
    /// The lease time the nodes ran with.
    pub lease: Duration,
}

/// Two nodes on one PostgreSQL database: webhooks and clicks land on both (the one that
/// does not own the tenant hands them to the owner), then the owner is SIGKILLed with runs in
/// flight; the survivor must take the tenant within the lease time and finish every run, with
/// nothing lost, written twice or written without approval.
pub async fn failover(admin: &str, runs: usize, lease_secs: u64) -> anyhow::Result<Failover> {
    let started = Instant::now();
    let mut world = World::start_pair(admin, lease_secs).await?;
    let first = world.url().to_owned();
    let second = world.second_url().context("a second node")?.to_owned();

    // Half the webhooks land on the node that owns the tenant, half on the other.
    send_to_both(&mut world, [&first, &second], runs, "failover").await?;
    world.use_node(&first);
    for accepted in world.accepted.clone() {
        world
            .wait_state(&accepted.run_id, &["awaiting_approval"], PATIENCE)
            .await?;
    }
    // Clicks through the node that does not own the tenant: the owner writes.
    world.use_node(&second);
    let half = runs / 2;
    for accepted in &world.accepted[..half] {
        let status = world.click(&accepted.run_id, true).await?;
        anyhow::ensure!(
            status == 200,
            "a click on the second node was answered {status}"
        );
    }
    for accepted in &world.accepted[..half] {
        world
            .wait_state(&accepted.run_id, &["completed"], PATIENCE)
            .await?;
    }
    // The rest are approved, and more webhooks arrive, as the owner dies.
    for accepted in &world.accepted[half..] {
        world.click(&accepted.run_id, true).await?;
    }
    world.use_node(&first);
    for i in 0..half {
        world.send_webhook(&format!("failover late {i}")).await?;
    }
    let moving: Vec<String> = world.accepted[half..]
        .iter()
        .map(|a| a.run_id.clone())
        .collect();
    let killed_at = world.kill_first_node()?;

    let deadline = killed_at + PATIENCE;
    while world.lease_holder()?.as_deref() != Some("node-b") {
        anyhow::ensure!(
            Instant::now() < deadline,
            "node-b did not take the lease; its log:\n{}",
            world.node_log("b")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lease_moved = killed_at.elapsed();
    let mut open: HashSet<String> = moving.into_iter().collect();
    while !open.is_empty() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "runs {open:?} did not move again on node-b; its log:\n{}",
            world.node_log("b")
        );
        let mut still = HashSet::new();
        for run in &open {
            let state = world.state(run).await.unwrap_or_default();
            if !(TERMINAL.contains(&state.as_str()) || state == "awaiting_approval") {
                still.insert(run.clone());
            }
        }
        open = still;
        if !open.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let runs_moving_again = killed_at.elapsed();
    finish(&mut world, &HashSet::new(), PATIENCE).await?;
    let mut outcome = check::check(&world, "two nodes, owner killed", started).await;
    require_completed(&world, &mut outcome).await;
    Ok(Failover {
        outcome,
        lease_moved,
        runs_moving_again,
        lease: Duration::from_secs(lease_secs),
    })
}

/// What the rolling upgrade measured.
#[derive(Debug, Clone)]
pub struct Upgrade {
    /// The checks' outcome.
    pub outcome: Outcome,
    /// Whether the drained node exited by itself, successfully.
    pub exited_cleanly: bool,
    /// From SIGTERM to the other node holding the tenant's lease.
    pub handed_over: Duration,
    /// Webhooks sent while the first node drained and came back.
    pub during: usize,
}

/// A rolling upgrade of one of two nodes under load: webhooks keep arriving at both nodes
/// while the first is stopped with SIGTERM (it drains: its tenants' leases are released, so
/// the other node takes them at its next round) and started again; every run must finish,
/// once, with nothing lost.
pub async fn rolling_upgrade(admin: &str, runs: usize, lease_secs: u64) -> anyhow::Result<Upgrade> {
    let started = Instant::now();
    let mut world = World::start_pair(admin, lease_secs).await?;
    let first = world.url().to_owned();
    let second = world.second_url().context("a second node")?.to_owned();
    send_to_both(&mut world, [&first, &second], runs, "before").await?;
    // Approvals in flight as the drain begins.
    world.use_node(&second);
    for accepted in world.accepted.clone() {
        world
            .wait_state(&accepted.run_id, &["awaiting_approval"], PATIENCE)
            .await?;
        world.click(&accepted.run_id, true).await?;
    }
    let (sent_at, exited_cleanly) = world.drain_first_node()?;
    let deadline = sent_at + PATIENCE;
    let mut during = 0;
    while world.lease_holder()?.as_deref() != Some("node-b") {
        anyhow::ensure!(Instant::now() < deadline, "node-b did not take the lease");
        world.send_webhook(&format!("during {during}")).await?;
        during += 1;
    }
    let handed_over = sent_at.elapsed();
    world.restart_first_node().await?;
    // The upgraded node takes intake too; it owns nothing until node-b drains.
    let upgraded = world.second_url().context("the upgraded node")?.to_owned();
    send_to_both(&mut world, [&upgraded, &second], runs, "after").await?;
    during += runs;
    world.use_node(&second);
    finish(&mut world, &HashSet::new(), PATIENCE).await?;
    let mut outcome = check::check(&world, "rolling upgrade of one of two nodes", started).await;
    require_completed(&world, &mut outcome).await;
    if !exited_cleanly {
        outcome
            .violations
            .push("the drained node did not exit cleanly within 30 s".into());
    }
    Ok(Upgrade {
        outcome,
        exited_cleanly,
        handed_over,
        during,
    })
}

/// Adds a violation for every accepted run that did not end `completed` (every run of the
/// two-node scenarios is approved).
async fn require_completed(world: &World, outcome: &mut Outcome) {
    for accepted in &world.accepted {
        let state = world.state(&accepted.run_id).await.unwrap_or_default();
        if state != "completed" {
            outcome.violations.push(format!(
                "run {} ended {state:?}, not completed",
                accepted.run_id
            ));
        }
    }
}

/// Sends `runs` webhooks, alternating between the two nodes at `urls`.
async fn send_to_both(
    world: &mut World,
    urls: [&str; 2],
    runs: usize,
    label: &str,
) -> anyhow::Result<()> {
    for i in 0..runs {
        world.use_node(urls[i % 2]);
        world.send_webhook(&format!("{label} {i}")).await?;
    }
    Ok(())
}
