//! Group commit of intake: concurrent intakes share one transaction and one commit, and each
//! is still answered as if it had its own.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;

use sqlx::{AnyConnection, Connection, Executor};
use steward_core::{ApprovalId, RunId};
use steward_persistence::{
    ApprovalMessage, Backend, DecideOutcome, Decision, IntakeOutcome, MeterAsk, MeterCharge,
    NewApproval, NewRun, NewTimer, Reservation, Store, StoreError, TimerRecord,
};
use tokio::task::JoinSet;

use crate::support::{T0_SECS, TestDb, new_run, register, scope, step};

/// Longer than any of these tests needs; reaching it means something hangs.
const PATIENCE: Duration = Duration::from_secs(30);

/// How long writes are held back so that intakes pile up behind them.
const HOLD: Duration = Duration::from_millis(300);

/// Starts one intake per `(tenant, run)` on its own task.
fn spawn_intakes(
    store: &Store,
    runs: Vec<(&'static str, NewRun)>,
) -> JoinSet<(&'static str, NewRun, Result<IntakeOutcome, StoreError>)> {
    let mut set = JoinSet::new();
    for (tenant, run) in runs {
        let store = store.clone();
        set.spawn(async move {
            let outcome = store.record_intake(&scope(tenant), run.clone()).await;
            (tenant, run, outcome)
        });
    }
    set
}

/// Waits for every intake, failing the test if any takes longer than [`PATIENCE`].
async fn finish(
    mut set: JoinSet<(&'static str, NewRun, Result<IntakeOutcome, StoreError>)>,
) -> Vec<(&'static str, NewRun, Result<IntakeOutcome, StoreError>)> {
    let mut done = Vec::new();
    while let Some(joined) = tokio::time::timeout(PATIENCE, set.join_next())
        .await
        .expect("every intake is answered")
    {
        done.push(joined.expect("an intake task panicked"));
    }
    done
}

/// A raw connection holding a lock that keeps the store's writes waiting, so that intakes
/// queue up and the batcher takes them together once [`release`] lets go.
async fn hold_writes(db: &TestDb) -> AnyConnection {
    let mut raw = db.raw().await;
    match db.backend() {
        Backend::Sqlite => raw.execute("BEGIN IMMEDIATE").await.unwrap(),
        Backend::Postgres => {
            raw.execute("BEGIN").await.unwrap();
            raw.execute("LOCK TABLE deliveries IN SHARE MODE")
                .await
                .unwrap()
        }
    };
    raw
}

async fn release(mut raw: AnyConnection) {
    raw.execute("COMMIT").await.unwrap();
    raw.close().await.unwrap();
}

fn created(outcome: &Result<IntakeOutcome, StoreError>) -> RunId {
    match outcome {
        Ok(IntakeOutcome::Created(id)) => *id,
        other => panic!("expected Created, got {other:?}"),
    }
}

const TENANTS: [&str; 5] = ["us-acme", "eu-beta", "us-gamma", "eu-delta", "us-omega"];

/// Every answer of the labelled tasks of `set`, by label, once all are in.
async fn by_label<T: 'static>(mut set: JoinSet<(&'static str, T)>) -> BTreeMap<&'static str, T> {
    let mut answers = BTreeMap::new();
    while let Some(joined) = tokio::time::timeout(PATIENCE, set.join_next())
        .await
        .expect("every task is answered")
    {
        let (label, answer) = joined.expect("a task panicked");
        answers.insert(label, answer);
    }
    answers
}

async fn two_hundred_concurrent_intakes_over_five_tenants_all_land_with_valid_chains() {
    let db = TestDb::new().await;
    for tenant in &TENANTS[2..] {
        register(&db.store, tenant).await;
    }
    let runs = (0..200)
        .map(|i| {
            let delivery = format!("msg_{i}");
            (TENANTS[i % TENANTS.len()], new_run(Some(&delivery)))
        })
        .collect();
    let held = hold_writes(&db).await;
    let set = spawn_intakes(&db.store, runs);
    tokio::time::sleep(HOLD).await;
    release(held).await;

    for (tenant, run, outcome) in finish(set).await {
        assert_eq!(created(&outcome), run.id, "{tenant}");
        let stored = db.store.run(&scope(tenant), run.id).await.unwrap();
        assert!(stored.is_some(), "run {} of {tenant} is stored", run.id);
    }
    for tenant in TENANTS {
        let report = db.store.verify_audit(&scope(tenant)).await.unwrap();
        assert_eq!(report.first_bad, None, "{tenant}");
        assert_eq!(
            report.entries, 40,
            "{tenant}: one entry per run, seq 1 to 40"
        );
    }
}

async fn the_same_delivery_many_times_in_one_batch_creates_one_run() {
    let db = TestDb::new().await;
    let mut runs: Vec<_> = (0..20)
        .map(|_| ("us-acme", new_run(Some("msg_same"))))
        .collect();
    runs.extend((0..20).map(|i| ("us-acme", new_run(Some(&format!("msg_{i}"))))));
    let held = hold_writes(&db).await;
    let set = spawn_intakes(&db.store, runs);
    tokio::time::sleep(HOLD).await;
    release(held).await;

    let done = finish(set).await;
    let same: Vec<_> = done
        .iter()
        .filter(|(_, run, _)| run.delivery_id.as_deref() == Some("msg_same"))
        .map(|(_, _, outcome)| outcome.as_ref().unwrap())
        .collect();
    let winners: Vec<RunId> = same
        .iter()
        .filter_map(|o| match o {
            IntakeOutcome::Created(id) => Some(*id),
            IntakeOutcome::Duplicate(_) => None,
        })
        .collect();
    assert_eq!(winners.len(), 1, "{same:?}");
    let duplicates = same
        .iter()
        .filter(|o| **o == &IntakeOutcome::Duplicate(winners[0]))
        .count();
    assert_eq!(
        duplicates, 19,
        "every other copy names the winner: {same:?}"
    );

    let acme = scope("us-acme");
    assert_eq!(
        db.store.list_runs(&acme, 100, None).await.unwrap().len(),
        21
    );
    let report = db.store.verify_audit(&acme).await.unwrap();
    assert_eq!((report.entries, report.first_bad), (21, None));
}

async fn an_intake_that_fails_inside_a_batch_does_not_fail_its_neighbours() {
    let db = TestDb::new().await;
    let acme = scope("us-acme");
    let taken = new_run(None);
    db.store.record_intake(&acme, taken.clone()).await.unwrap();

    let mut runs: Vec<_> = (0..10)
        .map(|i| ("us-acme", new_run(Some(&format!("msg_{i}")))))
        .collect();
    let mut reused = new_run(Some("msg_reused"));
    reused.id = taken.id;
    runs.push(("us-acme", reused));
    runs.push(("us-ghost", new_run(Some("msg_ghost"))));
    let mut bad_audit = new_run(Some("msg_bad_audit"));
    bad_audit.audit.actor = String::new();
    runs.push(("us-acme", bad_audit));
    runs.extend((10..20).map(|i| ("us-acme", new_run(Some(&format!("msg_{i}"))))));

    let held = hold_writes(&db).await;
    let set = spawn_intakes(&db.store, runs);
    tokio::time::sleep(HOLD).await;
    release(held).await;

    let mut good = 0;
    for (tenant, run, outcome) in finish(set).await {
        match (tenant, run.delivery_id.as_deref()) {
            (_, Some("msg_reused")) => {
                assert!(
                    matches!(outcome, Err(StoreError::Conflict(_))),
                    "{outcome:?}"
                )
            }
            ("us-ghost", _) => {
                assert!(
                    matches!(outcome, Err(StoreError::NotFound(_))),
                    "{outcome:?}"
                )
            }
            (_, Some("msg_bad_audit")) => {
                assert!(
                    matches!(outcome, Err(StoreError::Invalid(_))),
                    "{outcome:?}"
                )
            }
            _ => {
                assert_eq!(created(&outcome), run.id);
                good += 1;
            }
        }
    }
    assert_eq!(good, 20);
    let runs = db.store.list_runs(&acme, 100, None).await.unwrap();
    assert_eq!(runs.len(), 21, "the earlier run and the twenty good ones");
    assert!(
        runs.iter()
            .all(|r| r.delivery_id.as_deref() != Some("msg_bad_audit"))
    );
    let report = db.store.verify_audit(&acme).await.unwrap();
    assert_eq!((report.entries, report.first_bad), (21, None));

    let retried = db
        .store
        .record_intake(&acme, new_run(Some("msg_bad_audit")))
        .await;
    assert!(
        matches!(retried, Ok(IntakeOutcome::Created(_))),
        "the failed delivery left no record behind: {retried:?}"
    );
}

async fn closing_with_intakes_pending_answers_every_one_and_keeps_what_it_answered() {
    let mut db = TestDb::new().await;
    // The tenant's first content makes its data key, which is a write of its own; it is made
    // here, before the writer is held.
    db.intake("us-acme").await;
    let runs = (0..50)
        .map(|i| ("us-acme", new_run(Some(&format!("msg_{i}")))))
        .collect();
    let held = hold_writes(&db).await;
    let set = spawn_intakes(&db.store, runs);
    tokio::time::sleep(HOLD).await;
    let store = db.store.clone();
    let closing = tokio::spawn(async move { store.close().await });
    tokio::time::sleep(HOLD).await;
    release(held).await;
    tokio::time::timeout(PATIENCE, closing)
        .await
        .expect("close returns")
        .unwrap();

    let done = finish(set).await;
    let late = db
        .store
        .record_intake(&scope("us-acme"), new_run(Some("msg_late")))
        .await;
    assert!(
        matches!(late, Err(StoreError::Db(sqlx::Error::PoolClosed))),
        "{late:?}"
    );

    db.restart().await;
    let acme = scope("us-acme");
    let mut answered_created = 0;
    for (_, run, outcome) in done {
        let stored = db.store.run(&acme, run.id).await.unwrap();
        match outcome {
            Ok(IntakeOutcome::Created(id)) => {
                assert_eq!(id, run.id);
                assert!(
                    stored.is_some(),
                    "a run answered Created survives the restart"
                );
                answered_created += 1;
            }
            Ok(IntakeOutcome::Duplicate(_)) => panic!("every delivery id is distinct"),
            Err(_) => assert!(stored.is_none(), "a refused run was not written"),
        }
    }
    assert!(
        answered_created > 0,
        "the pending intakes were written before the close"
    );
    let report = db.store.verify_audit(&acme).await.unwrap();
    assert_eq!(
        (report.entries, report.first_bad),
        (answered_created + 1, None)
    );
}

async fn reservations_share_a_batch_with_intakes_and_never_overdraw_a_meter() {
    let db = TestDb::new().await;
    let acme = scope("us-acme");
    // The tenant's data key is made before the writer is held.
    db.intake("us-acme").await;
    let ask = MeterAsk {
        meter: "runs:alerts".into(),
        window_start: T0_SECS * 1000,
        limit: 5,
        amount: 1,
    };
    let held = hold_writes(&db).await;
    let runs = (0..20)
        .map(|i| ("us-acme", new_run(Some(&format!("msg_{i}")))))
        .collect();
    let intakes = spawn_intakes(&db.store, runs);
    let mut asks = JoinSet::new();
    for tenant in ["us-acme"; 8].into_iter().chain(["us-ghost"]) {
        let (store, ask) = (db.store.clone(), ask.clone());
        asks.spawn(async move { store.reserve_budget(&scope(tenant), &[ask]).await });
    }
    tokio::time::sleep(HOLD).await;
    release(held).await;

    for (_, run, outcome) in finish(intakes).await {
        assert_eq!(created(&outcome), run.id);
    }
    let mut granted = 0;
    let mut refusals = Vec::new();
    let mut unknown = 0;
    while let Some(joined) = tokio::time::timeout(PATIENCE, asks.join_next())
        .await
        .expect("every reservation is answered")
    {
        match joined.expect("a reservation task panicked") {
            Ok(Reservation::Granted) => granted += 1,
            Ok(Reservation::Refused { used, refused, .. }) => refusals.push((used, refused)),
            Err(StoreError::NotFound(_)) => unknown += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!((granted, refusals.len(), unknown), (5, 3, 1));
    refusals.sort_unstable();
    assert_eq!(
        refusals,
        [(5, 1), (5, 2), (5, 3)],
        "each refusal is counted"
    );
    let usage = db.store.budget_usage(&acme, 0).await.unwrap();
    assert_eq!(usage.len(), 1);
    assert_eq!((usage[0].used, usage[0].refused), (5, 3));
    let report = db.store.verify_audit(&acme).await.unwrap();
    assert_eq!((report.entries, report.first_bad), (21, None));
}

async fn steps_held_behind_a_write_land_together_and_a_failing_one_is_undone_alone() {
    let db = TestDb::new().await;
    let mut runs = Vec::new();
    for i in 0..16 {
        let tenant = if i % 4 == 0 { "eu-beta" } else { "us-acme" };
        runs.push((tenant, db.intake(tenant).await));
    }
    let held = hold_writes(&db).await;
    let mut set = JoinSet::new();
    let mut spawn = |label: &'static str, tenant: &'static str, write| {
        let store = db.store.clone();
        set.spawn(async move { (label, store.append_step(&scope(tenant), write).await) });
    };
    // Every run but the third gets its next step; the first also gets one that expects a
    // journal it does not have, and the third only one whose audit entry is invalid, which
    // fails after its journal row and the run's update were written.
    for (i, (tenant, run)) in runs.iter().enumerate() {
        if i != 2 {
            spawn("good", tenant, step(*run, 1, "triaging"));
        }
    }
    spawn("stale", runs[0].0, step(runs[0].1, 7, "triaging"));
    let mut invalid = step(runs[2].1, 1, "triaging");
    invalid.audit[0].actor = String::new();
    spawn("invalid", runs[2].0, invalid);
    spawn("unknown", "us-acme", step(RunId::new(), 1, "triaging"));
    tokio::time::sleep(HOLD).await;
    release(held).await;

    let mut good = 0;
    while let Some(joined) = tokio::time::timeout(PATIENCE, set.join_next())
        .await
        .expect("every step is answered")
    {
        match joined.expect("a step task panicked") {
            ("good", Ok(())) => good += 1,
            ("stale", Err(StoreError::Conflict(_))) => {}
            ("invalid", Err(StoreError::Invalid(_))) => {}
            ("unknown", Err(StoreError::NotFound(_))) => {}
            (label, other) => panic!("{label}: {other:?}"),
        }
    }
    assert_eq!(good, 15);
    for (i, (tenant, run)) in runs.iter().enumerate() {
        let stored = db.store.run(&scope(tenant), *run).await.unwrap().unwrap();
        let journal = db.store.steps(&scope(tenant), *run).await.unwrap();
        if i == 2 {
            assert_eq!(
                (stored.steps, journal.len()),
                (1, 1),
                "the invalid step left nothing"
            );
        } else {
            assert_eq!((stored.steps, stored.state.as_str()), (2, "triaging"));
            assert_eq!(journal[1].kind, "step-1");
        }
    }
    for (tenant, runs_of_tenant, steps) in [("us-acme", 12, 11), ("eu-beta", 4, 4)] {
        let report = db.store.verify_audit(&scope(tenant)).await.unwrap();
        assert_eq!(
            (report.entries, report.first_bad),
            (runs_of_tenant + steps, None),
            "{tenant}: one entry per run and per step written"
        );
    }
}

/// Steps of one run handed over together land in order, behind a held writer as without
/// one: a second step sees the first; a first step that finds the journal one step further
/// on (another writer's step) fails, and the second, which would fit the journal, is not
/// written either; a step that fails after a good one leaves the good one written on SQLite
/// (each has its savepoint) and nothing on PostgreSQL (one transaction).
async fn steps_of_one_run_handed_over_together_land_in_order() {
    let db = TestDb::new().await;
    let acme = scope("us-acme");
    let [both, stale, half] = db.intakes("us-acme").await;
    db.store
        .append_step(&acme, step(stale, 1, "cancelled"))
        .await
        .unwrap();
    let held = hold_writes(&db).await;
    let mut set = JoinSet::new();
    let mut invalid = step(half, 2, "writing");
    invalid.audit[0].actor = String::new();
    for (label, steps) in [
        (
            "both",
            vec![
                step(both, 1, "triaging"),
                step(both, 2, "awaiting_approval"),
            ],
        ),
        (
            "stale",
            vec![step(stale, 1, "triaging"), step(stale, 2, "writing")],
        ),
        ("half", vec![step(half, 1, "triaging"), invalid]),
    ] {
        let store = db.store.clone();
        let acme = acme.clone();
        set.spawn(async move { (label, store.append_owned_steps(&acme, steps).await) });
    }
    tokio::time::sleep(HOLD).await;
    release(held).await;
    let mut answers = BTreeMap::new();
    for (label, results) in by_label(set).await {
        let kinds: Vec<&str> = results
            .iter()
            .map(|r| match r {
                Ok(()) => "ok",
                Err(StoreError::Conflict(_)) => "conflict",
                Err(StoreError::Invalid(_)) => "invalid",
                Err(e) => panic!("{label}: {e:?}"),
            })
            .collect();
        answers.insert(label, kinds);
    }
    let half_answer = match db.backend() {
        Backend::Sqlite => vec!["ok", "invalid"],
        Backend::Postgres => vec!["invalid", "invalid"],
    };
    assert_eq!(answers["both"], ["ok", "ok"]);
    assert_eq!(answers["stale"], ["conflict", "conflict"]);
    assert_eq!(answers["half"], half_answer);
    let kinds = |run| {
        let store = db.store.clone();
        let acme = acme.clone();
        async move {
            let journal = store.steps(&acme, run).await.unwrap();
            let state = store.run(&acme, run).await.unwrap().unwrap().state;
            (
                journal.into_iter().map(|s| s.kind).collect::<Vec<_>>(),
                state,
            )
        }
    };
    let (journal, state) = kinds(both).await;
    assert_eq!((journal.len(), journal[2].as_str()), (3, "step-2"));
    assert_eq!(state, "awaiting_approval");
    let (journal, state) = kinds(stale).await;
    assert_eq!(
        (journal.len(), state.as_str()),
        (2, "cancelled"),
        "nothing of a stale pair is written"
    );
    let written: u64 = if db.backend() == Backend::Sqlite {
        2
    } else {
        1
    };
    assert_eq!(kinds(half).await.0.len() as u64, written);
    let report = db.store.verify_audit(&acme).await.unwrap();
    assert_eq!(
        (report.entries, report.first_bad),
        (3 + 1 + 2 + written - 1, None)
    );
}

/// A step undone inside a batch after its rows and audit entry were written (its run's
/// journal had moved on) takes its entry back with it: the tenant's next steps in the same
/// batch continue the chain from the entry before it, and the chain verifies.
async fn a_step_undone_in_a_batch_leaves_the_chain_to_the_next_step_of_its_tenant() {
    let db = TestDb::new().await;
    let acme = scope("us-acme");
    let [first, second, moved, last] = db.intakes("us-acme").await;
    let held = hold_writes(&db).await;
    let mut set = JoinSet::new();
    // Handed over one after another, so that the batches write them in this order (the
    // first may be a batch of its own, waiting for the writer).
    for (label, write) in [
        ("first", step(first, 1, "triaging")),
        ("second", step(second, 1, "triaging")),
        ("moved", step(moved, 3, "triaging")),
        ("last", step(last, 1, "triaging")),
        ("moved-again", step(moved, 1, "triaging")),
    ] {
        let (store, acme) = (db.store.clone(), acme.clone());
        set.spawn(async move { (label, store.append_step(&acme, write).await) });
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(HOLD).await;
    release(held).await;
    let answers: BTreeMap<_, _> = by_label(set)
        .await
        .into_iter()
        .map(|(label, result)| (label, result.map_err(|e| e.to_string())))
        .collect();
    for label in ["first", "second", "last", "moved-again"] {
        assert!(answers[label].is_ok(), "{label}: {answers:?}");
    }
    let conflict = answers["moved"]
        .as_ref()
        .expect_err("the stale step is refused");
    assert!(conflict.contains("has 1 steps"), "{conflict}");
    let report = db.store.verify_audit(&acme).await.unwrap();
    assert_eq!((report.entries, report.first_bad), (4 + 4, None));
    let entries = db.store.audit_entries(&acme, 0, 100).await.unwrap();
    let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=8).collect::<Vec<_>>(),
        "no gap where the undone entry was"
    );
}

/// Decisions held behind a write ride in one batch, each under a savepoint of its own: of
/// four clicks on one approval exactly one decides it and the others see that decision; a
/// decision whose step names another run is refused and undone alone, and one on an
/// approval that does not exist is NotFound; the chain verifies.
async fn decisions_held_behind_a_write_are_decided_once_in_one_batch() {
    let db = TestDb::new().await;
    let acme = scope("us-acme");
    let (run, approval) = db.waiting("us-acme").await;
    let (other_run, other_approval) = db.waiting("us-acme").await;
    let held = hold_writes(&db).await;
    let mut set = JoinSet::new();
    let mut decide = |label: &'static str, id, write| {
        let (store, acme) = (db.store.clone(), acme.clone());
        set.spawn(async move {
            let by = format!("U-{label}");
            let outcome = store
                .decide_approval(&acme, id, Decision::Approve, &by, write)
                .await;
            (label, outcome)
        });
    };
    for label in ["a", "b", "c", "d"] {
        decide(label, approval, step(run, 2, "approved"));
    }
    decide("wrong-run", other_approval, step(run, 2, "approved"));
    decide("unknown", ApprovalId::new(), step(other_run, 2, "approved"));
    tokio::time::sleep(HOLD).await;
    release(held).await;

    let mut decided = Vec::new();
    let mut seen = Vec::new();
    while let Some(joined) = tokio::time::timeout(PATIENCE, set.join_next())
        .await
        .expect("every decision is answered")
    {
        match joined.expect("a decision task panicked") {
            (_, Ok(DecideOutcome::Decided(record))) => decided.push(record),
            (_, Ok(DecideOutcome::AlreadyDecided(record))) => seen.push(record),
            ("wrong-run", Err(StoreError::Invalid(_))) => {}
            ("unknown", Ok(DecideOutcome::NotFound)) => {}
            (label, other) => panic!("{label}: {other:?}"),
        }
    }
    assert_eq!((decided.len(), seen.len()), (1, 3), "{decided:?} {seen:?}");
    assert!(
        seen.iter().all(|r| r == &decided[0]),
        "the others see the decision"
    );
    let stored = db.store.run(&acme, run).await.unwrap().unwrap();
    assert_eq!((stored.steps, stored.state.as_str()), (3, "approved"));
    let untouched = db
        .store
        .approval(&acme, other_approval)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        untouched.status, "pending",
        "the refused decision was undone"
    );
    let report = db.store.verify_audit(&acme).await.unwrap();
    assert_eq!((report.entries, report.first_bad), (2 + 2 + 1, None));
}

/// Steps and decisions of several tenants in one batch continue each tenant's chain from
/// heads the batch reads together: a refused decision (its step names another run) takes
/// nothing of its own with it, and the tenant's next writes continue the chain after it.
async fn steps_and_decisions_of_several_tenants_in_a_batch_keep_every_chain_whole() {
    let db = TestDb::new().await;
    let tenants = ["us-acme", "eu-beta"];
    let mut waits = Vec::new();
    for tenant in tenants {
        let [running] = db.intakes(tenant).await;
        let (waiting, approval) = db.waiting(tenant).await;
        let (other, _) = db.waiting(tenant).await;
        waits.push((tenant, running, waiting, approval, other));
    }
    let held = hold_writes(&db).await;
    let mut set = JoinSet::new();
    // Handed over one after another, so that the batch writes them in this order.
    for kind in ["refused", "stepped", "decided"] {
        for &(tenant, running, waiting, approval, other) in &waits {
            let (store, scope) = (db.store.clone(), scope(tenant));
            set.spawn(async move {
                let outcome = match kind {
                    "refused" => {
                        let write = step(other, 2, "rejected");
                        store
                            .decide_approval(&scope, approval, Decision::Reject, "U1", write)
                            .await
                            .map(|o| format!("{o:?}"))
                    }
                    "stepped" => store
                        .append_step(&scope, step(running, 1, "triaging"))
                        .await
                        .map(|()| "stepped".to_owned()),
                    _ => {
                        let write = step(waiting, 2, "approved");
                        store
                            .decide_approval(&scope, approval, Decision::Approve, "U1", write)
                            .await
                            .map(|o| format!("{o:?}"))
                    }
                };
                (tenant, kind, outcome)
            });
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    tokio::time::sleep(HOLD).await;
    release(held).await;
    let mut answers = Vec::new();
    while let Some(joined) = tokio::time::timeout(PATIENCE, set.join_next())
        .await
        .expect("every write is answered")
    {
        answers.push(joined.expect("a task panicked"));
    }
    assert_eq!(answers.len(), 6);
    for (tenant, kind, outcome) in answers {
        match (kind, &outcome) {
            ("refused", Err(StoreError::Invalid(_))) => {}
            ("stepped", Ok(_)) => {}
            ("decided", Ok(o)) if o.starts_with("Decided") => {}
            _ => panic!("{tenant} {kind}: {outcome:?}"),
        }
    }
    for tenant in tenants {
        let report = db.store.verify_audit(&scope(tenant)).await.unwrap();
        // Three runs taken in, two approvals asked, one step and one decision.
        assert_eq!(
            (report.entries, report.first_bad),
            (3 + 2 + 2, None),
            "{tenant}"
        );
    }
}

/// A step's other rows (its approval, its message, its timers set and cleared, its charges)
/// ride in its batch with it: on SQLite in its one script. A step whose approval's id is
/// taken, or whose message names an approval its tenant does not have, is undone alone with
/// every row of it, and the error names the approval; one with a malformed timer is refused
/// before anything of it is written.
async fn a_steps_other_rows_land_with_it_in_a_batch_or_not_at_all() {
    let db = TestDb::new().await;
    let acme = scope("us-acme");
    let [asks, taken_by, ending, refused] = db.intakes("us-acme").await;
    let (posts, approval) = db.waiting("us-acme").await;
    let (lost, _) = db.waiting("us-acme").await;
    db.store
        .set_timer(
            &acme,
            ending,
            "reminder",
            T0_SECS * 1000 + 60_000,
            &json!({}),
        )
        .await
        .unwrap();
    let timer = |kind: &str| NewTimer {
        kind: kind.into(),
        due_at: T0_SECS * 1000 + 3_600_000,
        payload: json!({"kind": kind}),
    };
    let charge = |delta| MeterCharge {
        meter: "llm.tokens.day".into(),
        window_start: 0,
        delta,
    };
    let fresh = ApprovalId::new();
    let new_approval = |id| NewApproval {
        id,
        diff_hash: "sha256:def".into(),
        record_version: "3".into(),
        policy: json!({"decision": "allow_with_approval"}),
    };
    let message = |approval_id| ApprovalMessage {
        approval_id,
        channel: "C123".into(),
        ts: "1700000000.000100".into(),
    };

    let mut ask = step(asks, 1, "awaiting_approval");
    ask.new_approval = Some(new_approval(fresh));
    ask.timers = vec![timer("reminder"), timer("expire")];
    ask.charges = vec![charge(5)];
    let mut posted = step(posts, 2, "awaiting_approval");
    posted.approval_message = Some(message(approval));
    let mut taken = step(taken_by, 1, "awaiting_approval");
    taken.new_approval = Some(new_approval(approval));
    taken.timers = vec![timer("reminder")];
    taken.charges = vec![charge(7)];
    let unknown = ApprovalId::new();
    let mut astray = step(lost, 2, "awaiting_approval");
    astray.approval_message = Some(message(unknown));
    astray.timers = vec![timer("reminder")];
    let mut ends = step(ending, 1, "completed");
    ends.clears_timers = true;
    let mut malformed = step(refused, 1, "awaiting_approval");
    malformed.timers = vec![timer("reminder"), timer("bad\nkind")];
    malformed.charges = vec![charge(11)];

    let held = hold_writes(&db).await;
    let mut set = JoinSet::new();
    for (label, write) in [
        ("ask", ask),
        ("posted", posted),
        ("taken", taken),
        ("astray", astray),
        ("ends", ends),
        ("malformed", malformed),
    ] {
        let (store, acme) = (db.store.clone(), acme.clone());
        set.spawn(async move { (label, store.append_step(&acme, write).await) });
    }
    tokio::time::sleep(HOLD).await;
    release(held).await;
    let answers = by_label(set).await;
    for label in ["ask", "posted", "ends"] {
        assert!(answers[label].is_ok(), "{label}: {answers:?}");
    }
    let taken_err = answers["taken"].as_ref().unwrap_err();
    assert!(
        matches!(taken_err, StoreError::Conflict(what) if what.contains(&approval.to_string())),
        "{taken_err:?}"
    );
    let malformed_err = answers["malformed"].as_ref().unwrap_err();
    assert!(
        matches!(malformed_err, StoreError::Invalid(_)),
        "{malformed_err:?}"
    );
    let astray_err = answers["astray"].as_ref().unwrap_err();
    assert!(
        matches!(astray_err, StoreError::NotFound(what) if *what == format!("approval {unknown}")),
        "{astray_err:?}"
    );

    let kinds = |timers: Vec<TimerRecord>| -> Vec<String> {
        let mut kinds: Vec<String> = timers.into_iter().map(|t| t.kind).collect();
        kinds.sort();
        kinds
    };
    let asked = db.store.approval(&acme, fresh).await.unwrap().unwrap();
    assert_eq!((asked.run_id, asked.status.as_str()), (asks, "pending"));
    assert_eq!(
        kinds(db.store.timers(&acme, asks).await.unwrap()),
        ["expire", "reminder"]
    );
    let noted = db.store.approval(&acme, approval).await.unwrap().unwrap();
    assert_eq!(
        (noted.run_id, noted.channel.as_deref()),
        (posts, Some("C123")),
        "the taken id's approval is the first run's, its message noted"
    );
    for undone in [taken_by, lost, refused] {
        assert!(db.store.timers(&acme, undone).await.unwrap().is_empty());
    }
    assert!(db.store.timers(&acme, ending).await.unwrap().is_empty());
    let usage = db.store.budget_usage(&acme, 0).await.unwrap();
    assert_eq!(
        usage
            .iter()
            .map(|u| (u.meter.as_str(), u.used))
            .collect::<Vec<_>>(),
        [("llm.tokens.day", 5)],
        "the undone step charged nothing"
    );
    let journals = [
        (asks, 2),
        (posts, 3),
        (taken_by, 1),
        (lost, 2),
        (ending, 2),
        (refused, 1),
    ];
    for (run, steps) in journals {
        let stored = db.store.run(&acme, run).await.unwrap().unwrap();
        assert_eq!(stored.steps, steps, "{run}");
    }
    let report = db.store.verify_audit(&acme).await.unwrap();
    assert_eq!((report.entries, report.first_bad), (6 + 2 + 3, None));
}

async fn intakes_and_reservations_from_many_tasks_over_five_tenants_never_deadlock() {
    let db = TestDb::new().await;
    for tenant in &TENANTS[2..] {
        register(&db.store, tenant).await;
    }
    for tenant in TENANTS {
        db.intake(tenant).await;
    }
    let ask = |meter: &str| MeterAsk {
        meter: meter.into(),
        window_start: T0_SECS * 1000,
        limit: 10,
        amount: 1,
    };
    // Nothing holds the writer back: the batchers (four on PostgreSQL) take small batches side
    // by side, and reservations that ask two meters ask them in both orders.
    let runs = (0..300)
        .map(|i| (TENANTS[i % 5], new_run(Some(&format!("msg_{i}")))))
        .collect();
    let intakes = spawn_intakes(&db.store, runs);
    let mut asks = JoinSet::new();
    for i in 0..150 {
        let tenant = TENANTS[i % 5];
        let wanted = match i % 3 {
            0 => vec![ask("runs:a")],
            1 => vec![ask("runs:a"), ask("runs:b")],
            _ => vec![ask("runs:b"), ask("runs:a")],
        };
        let store = db.store.clone();
        let both = wanted.len() == 2;
        asks.spawn(async move {
            let answer = store.reserve_budget(&scope(tenant), &wanted).await;
            (tenant, both, answer)
        });
    }

    for (tenant, run, outcome) in finish(intakes).await {
        assert_eq!(created(&outcome), run.id, "{tenant}");
    }
    // Per tenant: reservations granted, and of them those that asked both meters.
    let mut granted = std::collections::BTreeMap::<&str, (i64, i64)>::new();
    while let Some(joined) = tokio::time::timeout(PATIENCE, asks.join_next())
        .await
        .expect("every reservation is answered")
    {
        match joined.expect("a reservation task panicked") {
            (tenant, both, Ok(Reservation::Granted)) => {
                let count = granted.entry(tenant).or_default();
                count.0 += 1;
                count.1 += i64::from(both);
            }
            (_, _, Ok(Reservation::Refused { .. })) => {}
            (tenant, _, Err(e)) => panic!("{tenant}: {e}"),
        }
    }
    for tenant in TENANTS {
        let usage = db.store.budget_usage(&scope(tenant), 0).await.unwrap();
        let used = |meter: &str| {
            usage
                .iter()
                .find(|u| u.meter == meter)
                .map_or(0, |u| u.used)
        };
        let (all, both) = granted[tenant];
        assert_eq!(
            (used("runs:a"), used("runs:b"), all),
            (10, both, 10),
            "{tenant}: every grant took `runs:a`, those that asked both took `runs:b` too"
        );
        let report = db.store.verify_audit(&scope(tenant)).await.unwrap();
        assert_eq!((report.entries, report.first_bad), (61, None), "{tenant}");
    }
}

/// Runs `calls` together, polling them in order each time: the first poll of each reaches its
/// hand-over to the batcher (nothing before it waits), so the batcher gets them in this order.
async fn in_order<T>(mut calls: Vec<std::pin::Pin<Box<impl Future<Output = T>>>>) -> Vec<T> {
    let mut done: Vec<Option<T>> = calls.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        for (call, done) in calls.iter_mut().zip(done.iter_mut()) {
            if done.is_none()
                && let std::task::Poll::Ready(answer) = call.as_mut().poll(cx)
            {
                *done = Some(answer);
            }
        }
        if done.iter().all(Option::is_some) {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    done.into_iter().flatten().collect()
}

/// Reservations queued behind a held writer land in one batch, in the order they were handed
/// over, and each gets the answer it would have got alone at its turn: all of its asks or
/// none, the first meter without room named, each refusal counted, an unknown tenant refused
/// on its own.
async fn reservations_in_one_batch_are_answered_in_turn_as_if_taken_one_by_one() {
    let db = TestDb::new().await;
    let acme = scope("us-acme");
    db.intake("us-acme").await;
    let ask = |meter: &str, limit: u64, amount: u64| MeterAsk {
        meter: meter.into(),
        window_start: T0_SECS * 1000,
        limit,
        amount,
    };
    let (a, b) = (|n| ask("a", 5, n), |n| ask("b", 3, n));
    let granted = || Ok(Reservation::Granted);
    let refused = |meter: &str, used, refused| {
        Ok(Reservation::Refused {
            meter: meter.into(),
            window_start: T0_SECS * 1000,
            used,
            refused,
        })
    };
    // (tenant, asks, the answer it gets), in the order they are handed over.
    let turns: Vec<(&str, Vec<MeterAsk>, Result<Reservation, &str>)> = vec![
        ("us-acme", vec![a(2)], granted()),
        ("us-acme", vec![a(2), b(2)], granted()),
        // `a` has room, `b` has not: nothing is taken, and `b` is named.
        ("us-acme", vec![a(1), b(2)], refused("b", 2, 1)),
        ("us-ghost", vec![a(1)], Err("not registered")),
        // One meter asked twice: the second ask sees the first, and the pair does not fit.
        ("us-acme", vec![b(1), b(1)], refused("b", 2, 2)),
        // More than the limit itself: refused without looking further.
        ("us-acme", vec![a(6)], refused("a", 4, 1)),
        ("us-acme", vec![b(1)], granted()),
        ("us-acme", vec![a(1)], granted()),
        ("us-acme", vec![a(1)], refused("a", 5, 2)),
        ("us-acme", vec![b(0)], granted()),
    ];
    let held = hold_writes(&db).await;
    let calls = turns
        .iter()
        .map(|(tenant, asks, _)| {
            let (store, scope, asks) = (db.store.clone(), scope(tenant), asks.clone());
            Box::pin(async move { store.reserve_budget(&scope, &asks).await })
        })
        .collect();
    let answers = tokio::spawn(in_order(calls));
    tokio::time::sleep(HOLD).await;
    release(held).await;
    let answers = tokio::time::timeout(PATIENCE, answers)
        .await
        .expect("every reservation is answered")
        .unwrap();
    for ((tenant, asks, expected), answer) in turns.iter().zip(answers) {
        match (expected, answer) {
            (Ok(expected), Ok(answer)) => assert_eq!(&answer, expected, "{tenant} {asks:?}"),
            (Err(_), Err(StoreError::NotFound(_))) => {}
            (expected, answer) => panic!("{tenant} {asks:?}: {answer:?}, not {expected:?}"),
        }
    }
    let usage = db.store.budget_usage(&acme, 0).await.unwrap();
    let found: Vec<_> = usage
        .iter()
        .map(|u| (u.meter.as_str(), u.used, u.refused))
        .collect();
    assert_eq!(found, [("a", 5, 2), ("b", 3, 2)]);
}

async fn fresh_batches_are_written_at_the_first_try_and_a_redelivery_takes_the_longer_way() {
    let db = TestDb::new().await;
    for tenant in &TENANTS[2..] {
        register(&db.store, tenant).await;
    }
    let fresh = |from: usize| {
        (from..from + 40)
            .map(|i| {
                let delivery = format!("msg_{i}");
                (TENANTS[i % TENANTS.len()], new_run(Some(&delivery)))
            })
            .collect::<Vec<_>>()
    };
    let held = hold_writes(&db).await;
    let set = spawn_intakes(&db.store, fresh(0));
    tokio::time::sleep(HOLD).await;
    release(held).await;
    let mut first = None;
    for (tenant, run, outcome) in finish(set).await {
        assert_eq!(created(&outcome), run.id, "{tenant}");
        if run.delivery_id.as_deref() == Some("msg_3") {
            first = Some(run.id);
        }
    }
    let first = first.expect("msg_3 was among the first deliveries");
    let paths = db.store.intake_paths();
    assert!(paths.first_try >= 1, "{paths:?}");
    assert_eq!((paths.together, paths.one_by_one), (0, 0), "{paths:?}");

    // The same again with a redelivery of msg_3 (tenant TENANTS[3]) among fresh deliveries:
    // the batch holding it cannot be written at the first try.
    let mut runs = fresh(40);
    runs.push((TENANTS[3], new_run(Some("msg_3"))));
    let held = hold_writes(&db).await;
    let set = spawn_intakes(&db.store, runs);
    tokio::time::sleep(HOLD).await;
    release(held).await;
    for (tenant, run, outcome) in finish(set).await {
        if run.delivery_id.as_deref() == Some("msg_3") {
            assert_eq!(
                outcome.unwrap(),
                IntakeOutcome::Duplicate(first),
                "{tenant}"
            );
        } else {
            assert_eq!(created(&outcome), run.id, "{tenant}");
        }
    }
    let later = db.store.intake_paths();
    assert!(
        later.together + later.one_by_one >= 1,
        "the redelivery's batch went the longer way: {later:?}"
    );
    for tenant in TENANTS {
        let report = db.store.verify_audit(&scope(tenant)).await.unwrap();
        assert_eq!((report.entries, report.first_bad), (16, None), "{tenant}");
    }
}

crate::support::conformance!(
    two_hundred_concurrent_intakes_over_five_tenants_all_land_with_valid_chains,
    the_same_delivery_many_times_in_one_batch_creates_one_run,
    an_intake_that_fails_inside_a_batch_does_not_fail_its_neighbours,
    closing_with_intakes_pending_answers_every_one_and_keeps_what_it_answered,
    reservations_share_a_batch_with_intakes_and_never_overdraw_a_meter,
    steps_held_behind_a_write_land_together_and_a_failing_one_is_undone_alone,
    intakes_and_reservations_from_many_tasks_over_five_tenants_never_deadlock,
    reservations_in_one_batch_are_answered_in_turn_as_if_taken_one_by_one,
    steps_of_one_run_handed_over_together_land_in_order,
    a_step_undone_in_a_batch_leaves_the_chain_to_the_next_step_of_its_tenant,
    decisions_held_behind_a_write_are_decided_once_in_one_batch,
    a_steps_other_rows_land_with_it_in_a_batch_or_not_at_all,
    steps_and_decisions_of_several_tenants_in_a_batch_keep_every_chain_whole,
    fresh_batches_are_written_at_the_first_try_and_a_redelivery_takes_the_longer_way,
);
