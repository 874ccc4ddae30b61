//! Per-tenant reports: every section counted from journals, approvals and rejection counts
//! written through the store, only the tenant's own rows, only within the range, and ranges
//! and rejection rows that are refused.

use serde_json::{Value, json};
use steward_core::{ApprovalId, RunId, TenantId};
use steward_persistence::reports::{DEFAULT_DENY_KEY, HOUR_MS, MAX_REPORT_SPAN_MS};
use steward_persistence::{
    Decision, NewApproval, RejectionCount, ReportRange, StepWrite, StoreError, TenantRecord,
    TenantScope,
};

use crate::support::{TestDb, scope, step};

const TERMINAL: &[&str] = &["completed", "rejected", "denied", "failed"];

/// A step of `kind` with `body`, moving the run to `state`.
fn kind_step(run: RunId, seq: u32, kind: &str, body: Value, state: &str) -> StepWrite {
    let mut s = step(run, seq, state);
    s.kind = kind.into();
    s.body = body;
    s
}

fn triaged(provider: &str, input: u64, output: u64, attempts: u32) -> Value {
    json!({
        "kind": "triaged",
        "proposal": {},
        "attempts": attempts,
        "provenance": {
            "provider": provider,
            "usage": {"input_tokens": input, "output_tokens": output},
        },
    })
}

fn decided(decisions: Value) -> Value {
    json!({"kind": "policy_decided", "decisions": decisions})
}

fn approval() -> NewApproval {
    NewApproval {
        id: ApprovalId::new(),
        diff_hash: "h".into(),
        record_version: "1".into(),
        policy: json!({}),
    }
}

/// Takes `run` through triage and policy (opening an approval); returns the approval id.
async fn to_approval(db: &TestDb, acme: &TenantScope, run: RunId, denied: Value) -> ApprovalId {
    let s = kind_step(run, 1, "triaged", triaged("openai", 100, 20, 2), "triaging");
    db.store.append_step(acme, s).await.unwrap();
    let mut s = kind_step(
        run,
        2,
        "policy_decided",
        decided(denied),
        "awaiting_approval",
    );
    let ask = approval();
    let id = ask.id;
    s.new_approval = Some(ask);
    db.store.append_step(acme, s).await.unwrap();
    id
}

fn rejection(tenant: &str, hour_start: i64, reason: &str, count: u64) -> RejectionCount {
    RejectionCount {
        tenant: TenantId::parse(tenant).unwrap(),
        hour_start,
        reason: reason.into(),
        count,
    }
}

async fn a_report_counts_each_section_for_its_tenant_and_range() {
    let db = TestDb::new().await;
    let acme = scope("us-acme");
    let settings = TenantRecord {
        id: TenantId::parse("us-acme").unwrap(),
        name: "Acme".into(),
        settings: json!({"llm": {"provider": "anthropic"}}),
        created_at: db.clock_ms(),
    };
    db.store.upsert_tenant(&settings).await.unwrap();
    let from = db.clock_ms();

    // Approved after 5 s, written, completed; priority denied by a named policy.
    let approved = db.intake("us-acme").await;
    let deny_priority = json!([
        {"field": "priority", "outcome": "denied", "policies": ["policy0", "policy3"]},
        {"field": "urgency", "outcome": "with_approval", "policies": ["policy1"]},
    ]);
    let id = to_approval(&db, &acme, approved, deny_priority).await;
    db.clock.advance_millis(5_000);
    let s = kind_step(approved, 3, "approval_decided", json!({}), "writing");
    db.store
        .decide_approval(&acme, id, Decision::Approve, "U1", s)
        .await
        .unwrap();
    for (seq, kind, state) in [
        (4, "write_intended", "writing"),
        (5, "written", "closing"),
        (6, "finished", "completed"),
    ] {
        let s = kind_step(approved, seq, kind, json!({"reason": "done"}), state);
        db.store.append_step(&acme, s).await.unwrap();
    }

    // Rejected after 1 s; a denial no policy named.
    let rejected = db.intake("us-acme").await;
    let deny_state = json!([{"field": "state", "outcome": "denied", "policies": []}]);
    let id = to_approval(&db, &acme, rejected, deny_state).await;
    db.clock.advance_millis(1_000);
    let s = kind_step(rejected, 3, "approval_decided", json!({}), "rejected");
    db.store
        .decide_approval(&acme, id, Decision::Reject, "U2", s)
        .await
        .unwrap();

    // A write that failed.
    let write_failed = db.intake("us-acme").await;
    let s = kind_step(write_failed, 1, "write_intended", json!({}), "writing");
    db.store.append_step(&acme, s).await.unwrap();
    let reason = json!({"state": "failed", "reason": "writing the incident failed: 500"});
    let s = kind_step(write_failed, 2, "finished", reason, "failed");
    db.store.append_step(&acme, s).await.unwrap();

    // A triage that failed after parking once: 2 + 3 attempts, under the configured provider.
    let triage_failed = db.intake("us-acme").await;
    let parked =
        json!({"until": 1, "reason": "triage failed after 2 attempt(s), no proposal: 429"});
    let s = kind_step(triage_failed, 1, "parked", parked, "parked");
    db.store.append_step(&acme, s).await.unwrap();
    let reason = "triage failed after 3 attempt(s), no proposal: provider answered 500";
    let s = kind_step(
        triage_failed,
        2,
        "finished",
        json!({"reason": reason}),
        "failed",
    );
    db.store.append_step(&acme, s).await.unwrap();

    // Still open, with an approval pending.
    let open = db.intake("us-acme").await;
    let pending = json!([{"field": "priority", "outcome": "denied", "policies": ["policy0"]}]);
    to_approval(&db, &acme, open, pending).await;

    // Another tenant's run and rejections, which acme's report must not count.
    let beta = scope("eu-beta");
    let other = db.intake("eu-beta").await;
    let s = kind_step(other, 1, "triaged", triaged("openai", 7, 7, 1), "triaging");
    db.store.append_step(&beta, s).await.unwrap();

    let hour = (db.clock_ms() / HOUR_MS) * HOUR_MS;
    let tricky = "bad, \"quoted\"";
    db.store
        .add_webhook_rejections(&[
            rejection("us-acme", hour, "signature_mismatch", 3),
            rejection("us-acme", hour, tricky, 1),
            rejection("eu-beta", hour, "signature_mismatch", 40),
            rejection("us-ghost", hour, "signature_mismatch", 9),
        ])
        .await
        .unwrap();
    db.store
        .add_webhook_rejections(&[rejection("us-acme", hour, "signature_mismatch", 2)])
        .await
        .unwrap();
    // A bucket before the range is left out.
    db.store
        .add_webhook_rejections(&[rejection("us-acme", hour - 48 * HOUR_MS, "stale", 11)])
        .await
        .unwrap();

    db.clock.advance_millis(1_000);
    let to = db.clock_ms().max(hour + HOUR_MS);
    // A run after the range is left out.
    db.clock.advance_millis(2 * HOUR_MS);
    db.intake("us-acme").await;

    let range = ReportRange::new(from.min(hour), to).unwrap();
    let report = db
        .store
        .tenant_report(&acme, range, TERMINAL)
        .await
        .unwrap();
    assert_eq!(report.tenant, "us-acme");
    assert_eq!(report.runs.total, 5, "{:?}", report.runs);
    assert_eq!(report.runs.outcomes["completed"], 1);
    assert_eq!(report.runs.outcomes["rejected"], 1);
    assert_eq!(report.runs.outcomes["failed"], 2);
    assert_eq!(report.runs.open["awaiting_approval"], 1);

    let a = &report.approvals;
    assert_eq!(
        (a.requested, a.decided, a.approved, a.rejected),
        (3, 2, 1, 1)
    );
    assert_eq!(a.pending, 1);
    assert_eq!(a.p50_ms, Some(1_000), "{a:?}");
    assert_eq!(a.p90_ms, Some(5_000));
    assert_eq!(a.p99_ms, Some(5_000));

    let w = &report.writebacks;
    assert_eq!(
        (w.attempted, w.succeeded, w.failed, w.unfinished),
        (2, 1, 1, 0)
    );
    assert_eq!(w.success_rate, Some(0.5));

    let d = &report.policy_denials;
    assert_eq!(d.total, 3, "{d:?}");
    assert_eq!(d.by_policy["policy0"], 2);
    assert_eq!(d.by_policy["policy3"], 1);
    assert_eq!(d.by_policy[DEFAULT_DENY_KEY], 1);
    assert!(
        !d.by_policy.contains_key("policy1"),
        "an allowed field is no denial"
    );
    assert_eq!(d.by_field["priority"], 2);
    assert_eq!(d.by_field["state"], 1);

    let openai = &report.llm["openai"];
    assert_eq!(
        (
            openai.calls,
            openai.errors,
            openai.input_tokens,
            openai.output_tokens
        ),
        (6, 3, 300, 60),
        "three triages of two attempts each"
    );
    let anthropic = &report.llm["anthropic"];
    assert_eq!((anthropic.calls, anthropic.errors), (5, 5));

    let r = &report.rejected_webhooks;
    assert_eq!(r.total, 6, "{r:?}");
    assert_eq!(r.by_reason["signature_mismatch"], 5);
    assert_eq!(r.by_reason[tricky], 1);
    assert!(!r.by_reason.contains_key("stale"));

    let rows = report.rows();
    assert!(rows.contains(&("rejected_webhooks.reason".into(), tricky.into(), "1".into())));
    assert!(rows.contains(&("writebacks".into(), "success_rate".into(), "0.5000".into())));

    // The other tenant sees only its own.
    let theirs = db
        .store
        .tenant_report(&beta, range, TERMINAL)
        .await
        .unwrap();
    assert_eq!(theirs.runs.total, 1);
    assert_eq!(theirs.rejected_webhooks.total, 40);
    assert_eq!(theirs.llm["openai"].input_tokens, 7);
    assert_eq!(theirs.approvals.requested, 0);
    assert_eq!(theirs.approvals.p50_ms, None);
    assert_eq!(theirs.writebacks.success_rate, None);

    // A range before anything happened is empty.
    let early = ReportRange::new(0, 1_000).unwrap();
    let empty = db
        .store
        .tenant_report(&acme, early, TERMINAL)
        .await
        .unwrap();
    assert_eq!(empty.runs.total, 0);
    assert!(empty.llm.is_empty() && empty.rejected_webhooks.by_reason.is_empty());
}

async fn bad_ranges_and_rejection_rows_are_refused() {
    let db = TestDb::new().await;
    for (from, to) in [(10, 10), (10, 5), (-1, 5), (0, MAX_REPORT_SPAN_MS + 1)] {
        assert!(
            matches!(ReportRange::new(from, to), Err(StoreError::Invalid(_))),
            "{from}..{to}"
        );
    }
    let bad = [
        rejection("us-acme", 5, "signature_mismatch", 1),
        rejection("us-acme", -HOUR_MS, "signature_mismatch", 1),
        rejection("us-acme", HOUR_MS, "", 1),
        rejection("us-acme", HOUR_MS, "line\nbreak", 1),
        rejection("us-acme", HOUR_MS, &"x".repeat(65), 1),
        rejection("us-acme", HOUR_MS, "signature_mismatch", 0),
        rejection("us-acme", HOUR_MS, "signature_mismatch", u64::MAX),
    ];
    for row in bad {
        let good = rejection("us-acme", HOUR_MS, "ok", 1);
        let refused = db.store.add_webhook_rejections(&[good, row.clone()]).await;
        assert!(matches!(refused, Err(StoreError::Invalid(_))), "{row:?}");
    }
    let range = ReportRange::new(0, 2 * HOUR_MS).unwrap();
    let report = db
        .store
        .tenant_report(&scope("us-acme"), range, TERMINAL)
        .await
        .unwrap();
    assert_eq!(
        report.rejected_webhooks.total, 0,
        "a refused batch writes nothing"
    );
}

crate::support::conformance!(
    a_report_counts_each_section_for_its_tenant_and_range,
    bad_ranges_and_rejection_rows_are_refused,
);
