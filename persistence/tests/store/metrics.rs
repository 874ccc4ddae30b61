//! The grouped reads behind the scrape-time gauges: unfinished runs per tenant and state, and
//! each tenant's oldest pending approval, across tenants.

use serde_json::json;
use steward_core::{ApprovalId, Clock};
use steward_persistence::NewApproval;

use crate::support::{TestDb, scope, step};

async fn unfinished_runs_and_pending_approvals_are_counted_per_tenant() {
    let db = TestDb::new().await;
    let acme = scope("us-acme");
    let waiting = db.intake("us-acme").await;
    let busy = db.intake("us-acme").await;
    db.intake("eu-beta").await;
    db.store
        .append_step(&acme, step(busy, 1, "triaging"))
        .await
        .unwrap();
    let asked_at = db.clock.now_millis();
    let mut ask = step(waiting, 1, "awaiting_approval");
    ask.new_approval = Some(NewApproval {
        id: ApprovalId::new(),
        diff_hash: "h".into(),
        record_version: "1".into(),
        policy: json!({}),
    });
    db.store.append_step(&acme, ask).await.unwrap();
    db.clock.advance_millis(5_000);

    let mut counts: Vec<(String, String, i64)> = db
        .store
        .run_state_counts(&["fetching", "awaiting_approval", "completed"])
        .await
        .unwrap()
        .into_iter()
        .map(|(tenant, state, n)| (tenant.to_string(), state, n))
        .collect();
    counts.sort();
    let expected = [
        ("eu-beta", "fetching", 1),
        ("us-acme", "awaiting_approval", 1),
    ]
    .map(|(t, s, n)| (t.to_owned(), s.to_owned(), n));
    assert_eq!(counts, expected, "states not named are left out");
    let all = db
        .store
        .run_state_counts(&["fetching", "awaiting_approval", "triaging"])
        .await
        .unwrap();
    assert_eq!(all.iter().map(|(_, _, n)| n).sum::<i64>(), 3);
    assert!(db.store.run_state_counts(&[]).await.unwrap().is_empty());

    let oldest = db.store.oldest_pending_approvals().await.unwrap();
    assert_eq!(oldest.len(), 1, "{oldest:?}");
    assert_eq!(oldest[0].0.to_string(), "us-acme");
    assert_eq!(oldest[0].1, asked_at);
}

crate::support::conformance!(unfinished_runs_and_pending_approvals_are_counted_per_tenant);
