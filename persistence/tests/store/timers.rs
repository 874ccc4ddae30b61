//! Durable timers: set with a step or alone, claimed when due, handed out again after the
//! lease, cleared, kept per tenant, and kept across a restart.

use std::time::Duration;

use serde_json::json;
use steward_core::RunId;
use steward_persistence::{CLAIM_LEASE_MS, NewTimer, StoreError};

use crate::support::{TestDb, scope, step};

fn timer(kind: &str, due_at: i64) -> NewTimer {
    NewTimer {
        kind: kind.into(),
        due_at,
        payload: json!({"kind": kind}),
    }
}

async fn a_timer_written_with_its_step_commits_with_it() {
    let db = TestDb::new().await;
    let acme = scope("us-acme");
    let run = db.intake("us-acme").await;
    let due = db.clock_ms() + 1000;
    let mut write = step(run, 1, "awaiting_approval");
    write.timers = vec![timer("approval.remind", due)];
    db.store.append_step(&acme, write).await.unwrap();

    let timers = db.store.timers(&acme, run).await.unwrap();
    assert_eq!(timers.len(), 1);
    assert_eq!(timers[0].kind, "approval.remind");
    assert_eq!(timers[0].due_at, due);
    assert_eq!(timers[0].payload, json!({"kind": "approval.remind"}));
    assert_eq!(timers[0].claimed_at, None);
}

async fn a_step_that_fails_to_append_sets_no_timer() {
    let db = TestDb::new().await;
    let acme = scope("us-acme");
    let run = db.intake("us-acme").await;
    let mut stale = step(run, 7, "awaiting_approval");
    stale.timers = vec![timer("approval.remind", db.clock_ms())];
    let err = db.store.append_step(&acme, stale).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    assert!(db.store.timers(&acme, run).await.unwrap().is_empty());
}

async fn setting_a_kind_again_moves_the_timer_and_releases_its_claim() {
    let db = TestDb::new().await;
    let acme = scope("us-acme");
    let run = db.intake("us-acme").await;
    let now = db.clock_ms();
    db.store
        .set_timer(&acme, run, "run.resume", now, &json!({}))
        .await
        .unwrap();
    assert_eq!(db.store.due_timers(now, 10).await.unwrap().len(), 1);
    db.store
        .set_timer(&acme, run, "run.resume", now + 5000, &json!({"n": 2}))
        .await
        .unwrap();
    let timers = db.store.timers(&acme, run).await.unwrap();
    assert_eq!(timers.len(), 1, "one timer per kind");
    assert_eq!(timers[0].due_at, now + 5000);
    assert_eq!(timers[0].claimed_at, None);
    assert_eq!(timers[0].payload, json!({"n": 2}));
}

async fn due_timers_are_claimed_once_until_the_lease_runs_out() {
    let db = TestDb::new().await;
    let acme = scope("us-acme");
    let run = db.intake("us-acme").await;
    let now = db.clock_ms();
    db.store
        .set_timer(&acme, run, "approval.expire", now + 10, &json!({}))
        .await
        .unwrap();
    assert!(
        db.store.due_timers(now, 10).await.unwrap().is_empty(),
        "not due yet"
    );
    let due = db.store.due_timers(now + 10, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].run_id, run);
    assert_eq!(due[0].tenant.as_str(), "us-acme");
    assert_eq!(due[0].claimed_at, Some(now + 10));
    assert!(
        db.store.due_timers(now + 20, 10).await.unwrap().is_empty(),
        "a claimed timer is not handed out again within its lease"
    );
    let again = db
        .store
        .due_timers(now + 10 + CLAIM_LEASE_MS, 10)
        .await
        .unwrap();
    assert_eq!(again.len(), 1, "an unconsumed claim is handed out again");
}

async fn the_next_timer_time_accounts_for_claims() {
    let db = TestDb::new().await;
    let acme = scope("us-acme");
    assert_eq!(db.store.next_timer_at().await.unwrap(), None);
    let run = db.intake("us-acme").await;
    let now = db.clock_ms();
    db.store
        .set_timer(&acme, run, "a", now + 100, &json!({}))
        .await
        .unwrap();
    db.store
        .set_timer(&acme, run, "b", now + 50_000, &json!({}))
        .await
        .unwrap();
    assert_eq!(db.store.next_timer_at().await.unwrap(), Some(now + 100));
    db.store.due_timers(now + 100, 10).await.unwrap();
    assert_eq!(
        db.store.next_timer_at().await.unwrap(),
        Some(now + 50_000),
        "the claimed timer comes back at the end of its lease, after b"
    );
}

async fn due_timers_come_earliest_first_and_respect_the_limit() {
    let db = TestDb::new().await;
    let now = db.clock_ms();
    let mut runs = Vec::new();
    for (tenant, offset) in [("us-acme", 30), ("eu-beta", 10), ("us-acme", 20)] {
        let run = db.intake(tenant).await;
        db.store
            .set_timer(&scope(tenant), run, "k", now + offset, &json!({}))
            .await
            .unwrap();
        runs.push(run);
    }
    let due = db.store.due_timers(now + 100, 2).await.unwrap();
    let ids: Vec<RunId> = due.iter().map(|t| t.run_id).collect();
    assert_eq!(ids, vec![runs[1], runs[2]]);
    let rest = db.store.due_timers(now + 100, 2).await.unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].run_id, runs[0]);
}

async fn clearing_one_timer_leaves_a_timer_moved_since_it_was_read() {
    let db = TestDb::new().await;
    let acme = scope("us-acme");
    let run = db.intake("us-acme").await;
    let now = db.clock_ms();
    db.store
        .set_timer(&acme, run, "approval.remind", now, &json!({}))
        .await
        .unwrap();
    db.store
        .set_timer(&acme, run, "approval.remind", now + 1, &json!({}))
        .await
        .unwrap();
    assert!(
        !db.store
            .clear_timer(&acme, run, "approval.remind", now)
            .await
            .unwrap()
    );
    assert_eq!(db.store.timers(&acme, run).await.unwrap().len(), 1);
    assert!(
        db.store
            .clear_timer(&acme, run, "approval.remind", now + 1)
            .await
            .unwrap()
    );
    assert!(db.store.timers(&acme, run).await.unwrap().is_empty());
}

async fn clearing_a_runs_timers_removes_them_all_and_only_its_own() {
    let db = TestDb::new().await;
    let acme = scope("us-acme");
    let run = db.intake("us-acme").await;
    let other = db.intake("us-acme").await;
    let now = db.clock_ms();
    for kind in ["a", "b", "c"] {
        db.store
            .set_timer(&acme, run, kind, now, &json!({}))
            .await
            .unwrap();
    }
    db.store
        .set_timer(&acme, other, "a", now, &json!({}))
        .await
        .unwrap();
    assert_eq!(db.store.clear_timers(&acme, run).await.unwrap(), 3);
    assert!(db.store.timers(&acme, run).await.unwrap().is_empty());
    assert_eq!(db.store.timers(&acme, other).await.unwrap().len(), 1);
}

/// A step that ends a run removes every timer of the run, and only of that run, in its own
/// transaction; a timer the same step sets is kept.
async fn a_step_that_clears_timers_removes_the_runs_before_setting_its_own() {
    let db = TestDb::new().await;
    let acme = scope("us-acme");
    let run = db.intake("us-acme").await;
    let other = db.intake("us-acme").await;
    let now = db.clock_ms();
    for (of, kind) in [(run, "a"), (run, "b"), (other, "a")] {
        db.store
            .set_timer(&acme, of, kind, now, &json!({}))
            .await
            .unwrap();
    }
    let mut ends = step(run, 1, "completed");
    ends.clears_timers = true;
    ends.timers = vec![timer("b", now + 5)];
    db.store.append_step(&acme, ends).await.unwrap();
    let left = db.store.timers(&acme, run).await.unwrap();
    assert_eq!(
        left.iter()
            .map(|t| (t.kind.as_str(), t.due_at))
            .collect::<Vec<_>>(),
        [("b", now + 5)]
    );
    assert_eq!(db.store.timers(&acme, other).await.unwrap().len(), 1);
    let mut stale = step(other, 4, "completed");
    stale.clears_timers = true;
    let err = db.store.append_step(&acme, stale).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    assert_eq!(db.store.timers(&acme, other).await.unwrap().len(), 1);
}

async fn another_tenant_can_neither_see_set_nor_clear_a_runs_timers() {
    let db = TestDb::new().await;
    let (acme, beta) = (scope("us-acme"), scope("eu-beta"));
    let run = db.intake("us-acme").await;
    let now = db.clock_ms();
    db.store
        .set_timer(&acme, run, "a", now, &json!({}))
        .await
        .unwrap();
    assert!(db.store.timers(&beta, run).await.unwrap().is_empty());
    let err = db
        .store
        .set_timer(&beta, run, "b", now, &json!({}))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
    assert_eq!(db.store.clear_timers(&beta, run).await.unwrap(), 0);
    assert!(!db.store.clear_timer(&beta, run, "a", now).await.unwrap());
    assert_eq!(db.store.timers(&acme, run).await.unwrap().len(), 1);
}

async fn malformed_and_oversized_timers_are_refused() {
    let db = TestDb::new().await;
    let acme = scope("us-acme");
    let run = db.intake("us-acme").await;
    let now = db.clock_ms();
    let huge = json!({"pad": "x".repeat(70 * 1024)});
    let cases = [
        ("", now, json!({})),
        ("a\nb", now, json!({})),
        (&"k".repeat(65) as &str, now, json!({})),
        ("ok", -1, json!({})),
        ("ok", now, huge),
    ];
    for (kind, due, payload) in cases {
        let err = db
            .store
            .set_timer(&acme, run, kind, due, &payload)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Invalid(_)), "{kind:?}: {err}");
    }
    let mut write = step(run, 1, "parked");
    write.timers = vec![timer("", now)];
    let err = db.store.append_step(&acme, write).await.unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err}");
    assert_eq!(
        db.store.run(&acme, run).await.unwrap().unwrap().steps,
        1,
        "the step did not commit without its timer"
    );
    assert!(db.store.timers(&acme, run).await.unwrap().is_empty());
}

async fn timers_survive_a_restart() {
    let mut db = TestDb::new().await;
    let acme = scope("us-acme");
    let run = db.intake("us-acme").await;
    let due = db.clock_ms() + 40 * 60 * 1000;
    let mut write = step(run, 1, "parked");
    write.timers = vec![timer("run.resume", due)];
    db.store.append_step(&acme, write).await.unwrap();
    db.restart().await;
    assert_eq!(db.store.next_timer_at().await.unwrap(), Some(due));
    let fired = db.store.due_timers(due, 10).await.unwrap();
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].kind, "run.resume");
}

async fn setting_a_timer_wakes_a_waiter_even_when_set_before_the_wait() {
    let db = TestDb::new().await;
    let acme = scope("us-acme");
    let run = db.intake("us-acme").await;
    let now = db.clock_ms();
    db.store
        .set_timer(&acme, run, "a", now, &json!({}))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(2), db.store.timer_set())
        .await
        .expect("a timer set before the wait ends it at once");

    let waiter = {
        let store = db.store.clone();
        tokio::spawn(async move { store.timer_set().await })
    };
    tokio::task::yield_now().await;
    let mut write = step(run, 1, "parked");
    write.timers = vec![timer("run.resume", now + 5)];
    db.store.append_step(&acme, write).await.unwrap();
    tokio::time::timeout(Duration::from_secs(2), waiter)
        .await
        .expect("a step that sets a timer wakes the waiter")
        .unwrap();
}

crate::support::conformance!(
    a_timer_written_with_its_step_commits_with_it,
    a_step_that_clears_timers_removes_the_runs_before_setting_its_own,
    a_step_that_fails_to_append_sets_no_timer,
    setting_a_kind_again_moves_the_timer_and_releases_its_claim,
    due_timers_are_claimed_once_until_the_lease_runs_out,
    the_next_timer_time_accounts_for_claims,
    due_timers_come_earliest_first_and_respect_the_limit,
    clearing_one_timer_leaves_a_timer_moved_since_it_was_read,
    clearing_a_runs_timers_removes_them_all_and_only_its_own,
    another_tenant_can_neither_see_set_nor_clear_a_runs_timers,
    malformed_and_oversized_timers_are_refused,
    timers_survive_a_restart,
    setting_a_timer_wakes_a_waiter_even_when_set_before_the_wait,
);
