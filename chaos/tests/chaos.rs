//! The chaos suite. By default (`cargo test -p steward-chaos`) it runs the fast subset: one
//! SIGKILL at each step boundary of the flagship path. `CHAOS_FULL=1` adds seeded random kills
//! under a stream of webhooks and faults at the stand-ins; `CHAOS_SEED=<n>` replays a seed.

use std::time::Instant;

use steward_chaos::{Boundary, RandomKills, Summary, scenarios};

/// Builds (or finds) the binary before any clock starts, so no scenario's time includes it.
fn binary_ready() {
    if let Err(error) = steward_chaos::binary::steward_binary() {
        panic!("{error:#}");
    }
}

fn report(title: &str, summary: &Summary, started: Instant) {
    println!(
        "\n== {title} ({:.1}s) ==\n{summary}",
        started.elapsed().as_secs_f64()
    );
    let violations = summary.violations();
    for violation in &violations {
        println!("VIOLATION {violation}");
    }
    assert!(
        violations.is_empty(),
        "{} violation(s); see above",
        violations.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_at_each_step_boundary_loses_nothing_and_writes_once() {
    binary_ready();
    let started = Instant::now();
    let mut summary = Summary::default();
    for boundary in Boundary::ALL {
        let outcome = scenarios::kill_at_boundary(boundary)
            .await
            .unwrap_or_else(|error| panic!("{}: {error:#}", boundary.name()));
        summary.outcomes.push(outcome);
    }
    report("step-boundary kills", &summary, started);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_random_kills_under_a_webhook_stream_lose_nothing() {
    if !steward_chaos::full_suite() && steward_chaos::replay_seed().unwrap().is_none() {
        println!("random kills run with CHAOS_FULL=1 or CHAOS_SEED=<n>");
        return;
    }
    binary_ready();
    let started = Instant::now();
    let seeds = match steward_chaos::replay_seed().unwrap() {
        Some(seed) => vec![seed],
        None => {
            let first = steward_chaos::fresh_seed();
            (0..3).map(|i| first.wrapping_add(i)).collect()
        }
    };
    let mut summary = Summary::default();
    for seed in seeds {
        println!("random kills: seed {seed} (replay with CHAOS_SEED={seed})");
        let plan = RandomKills {
            seed,
            webhooks: 30,
            kills: 3,
        };
        let outcome = scenarios::random_kills(plan).await.unwrap_or_else(|error| {
            panic!("seed {seed}: {error:#} (replay with CHAOS_SEED={seed})")
        });
        if !outcome.violations.is_empty() {
            println!("seed {seed} broke an invariant; replay with CHAOS_SEED={seed}");
        }
        summary.outcomes.push(outcome);
    }
    report("seeded random kills", &summary, started);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vendor_faults_while_runs_flow_lose_nothing_and_write_once() {
    if !steward_chaos::full_suite() && steward_chaos::replay_seed().unwrap().is_none() {
        println!("fault scenarios run with CHAOS_FULL=1 or CHAOS_SEED=<n>");
        return;
    }
    binary_ready();
    let started = Instant::now();
    let seed = steward_chaos::replay_seed()
        .unwrap()
        .unwrap_or_else(steward_chaos::fresh_seed);
    println!("fault scenarios: seed {seed} (replay with CHAOS_SEED={seed})");
    let mut summary = Summary::default();
    for plan in scenarios::fault_plans(seed, 6) {
        let outcome = scenarios::faults_while_flowing(&plan)
            .await
            .unwrap_or_else(|error| panic!("{}: {error:#} (CHAOS_SEED={seed})", plan.name));
        summary.outcomes.push(outcome);
    }
    report("vendor faults", &summary, started);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_the_owner_killed_its_tenants_runs_finish_on_the_other() {
    let Some(admin) = std::env::var("STEWARD_TEST_POSTGRES")
        .ok()
        .filter(|v| !v.is_empty())
    else {
        println!(
            "two-node failover runs on PostgreSQL: set STEWARD_TEST_POSTGRES to a superuser URL"
        );
        return;
    };
    binary_ready();
    let started = Instant::now();
    let failover = scenarios::failover(&admin, 8, 3)
        .await
        .unwrap_or_else(|error| panic!("{error:#}"));
    println!(
        "\n== two-node failover ==\nlease {:?}; lease moved to the survivor {} ms after the \
         SIGKILL; every run in flight moving again after {} ms",
        failover.lease,
        failover.lease_moved.as_millis(),
        failover.runs_moving_again.as_millis()
    );
    // The survivor takes a dead node's tenant once its lease lapses, at its next round.
    let bound = failover.lease + failover.lease / 3 + std::time::Duration::from_secs(2);
    assert!(
        failover.lease_moved <= bound,
        "the lease moved after {:?}, beyond {bound:?}",
        failover.lease_moved
    );
    let summary = Summary {
        outcomes: vec![failover.outcome],
    };
    report("two nodes, owner killed", &summary, started);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_upgrade_of_one_of_two_nodes_under_load_loses_and_doubles_nothing() {
    let Some(admin) = std::env::var("STEWARD_TEST_POSTGRES")
        .ok()
        .filter(|v| !v.is_empty())
    else {
        println!("the rolling upgrade runs on PostgreSQL: set STEWARD_TEST_POSTGRES");
        return;
    };
    binary_ready();
    let started = Instant::now();
    let upgrade = scenarios::rolling_upgrade(&admin, 6, 10)
        .await
        .unwrap_or_else(|error| panic!("{error:#}"));
    println!(
        "\n== rolling upgrade ==\nlease 10s; the other node held the tenant {} ms after SIGTERM \
         (a drain releases the lease instead of letting it lapse); {} webhooks sent during \
         the upgrade",
        upgrade.handed_over.as_millis(),
        upgrade.during
    );
    // A drain hands over at the other node's next round, well before the lease would lapse.
    assert!(
        upgrade.handed_over < std::time::Duration::from_secs(10),
        "the hand-over took {:?}: the lease lapsed instead of being released",
        upgrade.handed_over
    );
    let summary = Summary {
        outcomes: vec![upgrade.outcome],
    };
    report("rolling upgrade", &summary, started);
}
