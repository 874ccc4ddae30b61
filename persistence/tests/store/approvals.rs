//! Approvals: opened by a step, decided once (field case S1), durable across restarts.

use serde_json::json;
use steward_core::ApprovalId;
use steward_persistence::{ApprovalMessage, DecideOutcome, Decision, NewApproval, StoreError};

use crate::support::{TestDb, scope, step};

async fn a_step_opens_a_pending_approval() {
    let db = TestDb::new().await;
    let (run, id) = db.waiting("us-acme").await;
    let record = db
        .store
        .approval(&scope("us-acme"), id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((record.run_id, record.status.as_str()), (run, "pending"));
    assert_eq!(
        (record.diff_hash.as_str(), record.record_version.as_str()),
        ("sha256:abc", "7")
    );
    assert_eq!(record.policy, json!({"decision": "allow_with_approval"}));
    assert_eq!(
        (record.decided_by, record.decided_at, record.channel),
        (None, None, None)
    );
}

async fn an_approval_id_used_twice_is_a_conflict() {
    let db = TestDb::new().await;
    let acme = scope("us-acme");
    let (run, id) = db.waiting("us-acme").await;
    let mut again = step(run, 2, "awaiting_approval");
    again.new_approval = Some(NewApproval {
        id,
        diff_hash: "h".into(),
        record_version: "8".into(),
        policy: json!({}),
    });
    let err = db.store.append_step(&acme, again).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    assert!(err.to_string().contains(&format!("approval {id}")), "{err}");
    assert_eq!(db.store.run(&acme, run).await.unwrap().unwrap().steps, 2);
}

async fn the_message_location_is_recorded_and_may_be_replaced() {
    let db = TestDb::new().await;
    let acme = scope("us-acme");
    let (_, id) = db.waiting("us-acme").await;
    db.store
        .set_approval_message(&acme, id, "C123", "1700000000.000100")
        .await
        .unwrap();
    db.store
        .set_approval_message(&acme, id, "C123", "1700000001.000200")
        .await
        .unwrap();
    let record = db.store.approval(&acme, id).await.unwrap().unwrap();
    assert_eq!(record.channel.as_deref(), Some("C123"));
    assert_eq!(record.message_ts.as_deref(), Some("1700000001.000200"));
    let err = db
        .store
        .set_approval_message(&acme, ApprovalId::new(), "C1", "1.2")
        .await;
    assert!(matches!(err, Err(StoreError::NotFound(_))));
    let err = db.store.set_approval_message(&acme, id, "", "1.2").await;
    assert!(matches!(err, Err(StoreError::Invalid(_))));
}

/// The step that records a posted approval request notes its message on the approval, in
/// its own transaction: an approval the tenant does not have fails the step, and nothing of
/// it is written.
async fn a_step_notes_the_message_of_its_approval_with_it() {
    let db = TestDb::new().await;
    let acme = scope("us-acme");
    let (run, id) = db.waiting("us-acme").await;
    let mut posted = step(run, 2, "awaiting_approval");
    let unknown = ApprovalId::new();
    posted.approval_message = Some(ApprovalMessage {
        approval_id: unknown,
        channel: "C123".into(),
        ts: "1700000000.000100".into(),
    });
    let err = db.store.append_step(&acme, posted.clone()).await;
    assert!(
        matches!(&err, Err(StoreError::NotFound(what)) if *what == format!("approval {unknown}")),
        "{err:?}"
    );
    posted.approval_message = Some(ApprovalMessage {
        approval_id: id,
        channel: "C123".into(),
        ts: "x".repeat(65),
    });
    let err = db.store.append_step(&acme, posted.clone()).await;
    assert!(matches!(err, Err(StoreError::Invalid(_))), "{err:?}");
    assert_eq!(db.store.run(&acme, run).await.unwrap().unwrap().steps, 2);
    let record = db.store.approval(&acme, id).await.unwrap().unwrap();
    assert_eq!((record.channel, record.message_ts), (None, None));

    posted.approval_message = Some(ApprovalMessage {
        approval_id: id,
        channel: "C123".into(),
        ts: "1700000000.000100".into(),
    });
    db.store.append_step(&acme, posted).await.unwrap();
    let record = db.store.approval(&acme, id).await.unwrap().unwrap();
    assert_eq!(record.channel.as_deref(), Some("C123"));
    assert_eq!(record.message_ts.as_deref(), Some("1700000000.000100"));
    assert_eq!(db.store.run(&acme, run).await.unwrap().unwrap().steps, 3);
}

async fn a_decision_records_who_and_when_and_appends_the_step() {
    let db = TestDb::new().await;
    let acme = scope("us-acme");
    let (run, id) = db.waiting("us-acme").await;
    db.clock.advance_millis(5_000);
    let outcome = db
        .store
        .decide_approval(
            &acme,
            id,
            Decision::Approve,
            "U123",
            step(run, 2, "approved"),
        )
        .await;
    let DecideOutcome::Decided(record) = outcome.unwrap() else {
        panic!("not decided")
    };
    assert_eq!(record.status, "approved");
    assert_eq!(record.decided_by.as_deref(), Some("U123"));
    assert_eq!(record.decided_at, Some(db.clock_ms()));
    assert_eq!(
        db.store.run(&acme, run).await.unwrap().unwrap().state,
        "approved"
    );
    assert_eq!(db.store.approval(&acme, id).await.unwrap().unwrap(), record);
}

async fn two_concurrent_decisions_give_exactly_one_decided() {
    let db = TestDb::new().await;
    let other = db.second_process().await;
    let acme = scope("us-acme");
    let (run, id) = db.waiting("us-acme").await;
    let (a, b) = tokio::join!(
        db.store
            .decide_approval(&acme, id, Decision::Approve, "U1", step(run, 2, "approved")),
        other.decide_approval(&acme, id, Decision::Reject, "U2", step(run, 2, "rejected")),
    );
    let outcomes = [a.unwrap(), b.unwrap()];
    let decided: Vec<_> = outcomes
        .iter()
        .filter_map(|o| match o {
            DecideOutcome::Decided(r) => Some(r.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(decided.len(), 1, "{outcomes:?}");
    let loser = outcomes
        .iter()
        .find(|o| matches!(o, DecideOutcome::AlreadyDecided(_)));
    let Some(DecideOutcome::AlreadyDecided(seen)) = loser else {
        panic!("{outcomes:?}")
    };
    assert_eq!(seen, &decided[0], "the loser sees the winner's decision");

    let run_record = db.store.run(&acme, run).await.unwrap().unwrap();
    assert_eq!(run_record.steps, 3, "exactly one decision step");
    assert_eq!(run_record.state, decided[0].status);
}

async fn a_second_click_is_already_decided_and_writes_nothing() {
    let db = TestDb::new().await;
    let acme = scope("us-acme");
    let (run, id) = db.waiting("us-acme").await;
    db.store
        .decide_approval(&acme, id, Decision::Reject, "U1", step(run, 2, "rejected"))
        .await
        .unwrap();
    let audit_before = db.store.audit_entries(&acme, 0, 100).await.unwrap().len();
    let again = db
        .store
        .decide_approval(&acme, id, Decision::Approve, "U2", step(run, 3, "approved"))
        .await
        .unwrap();
    let DecideOutcome::AlreadyDecided(record) = again else {
        panic!("{again:?}")
    };
    assert_eq!(
        (record.status.as_str(), record.decided_by.as_deref()),
        ("rejected", Some("U1"))
    );
    assert_eq!(db.store.run(&acme, run).await.unwrap().unwrap().steps, 3);
    assert_eq!(
        db.store.audit_entries(&acme, 0, 100).await.unwrap().len(),
        audit_before
    );
}

async fn deciding_an_unknown_approval_is_not_found() {
    let db = TestDb::new().await;
    let run = db.intake("us-acme").await;
    let outcome = db
        .store
        .decide_approval(
            &scope("us-acme"),
            ApprovalId::new(),
            Decision::Approve,
            "U1",
            step(run, 1, "x"),
        )
        .await
        .unwrap();
    assert_eq!(outcome, DecideOutcome::NotFound);
    assert_eq!(
        db.store
            .run(&scope("us-acme"), run)
            .await
            .unwrap()
            .unwrap()
            .steps,
        1
    );
}

async fn a_decision_whose_step_cannot_be_written_is_rolled_back() {
    let db = TestDb::new().await;
    let acme = scope("us-acme");
    let (run, id) = db.waiting("us-acme").await;
    let stale = db
        .store
        .decide_approval(&acme, id, Decision::Approve, "U1", step(run, 1, "x"))
        .await;
    assert!(matches!(stale, Err(StoreError::Conflict(_))), "{stale:?}");
    let other_run = db.intake("us-acme").await;
    let wrong = db
        .store
        .decide_approval(&acme, id, Decision::Approve, "U1", step(other_run, 1, "x"))
        .await;
    assert!(matches!(wrong, Err(StoreError::Invalid(_))), "{wrong:?}");
    assert_eq!(
        db.store.approval(&acme, id).await.unwrap().unwrap().status,
        "pending"
    );
    let bad_by = db
        .store
        .decide_approval(&acme, id, Decision::Approve, "", step(run, 2, "x"))
        .await;
    assert!(matches!(bad_by, Err(StoreError::Invalid(_))));
}

async fn an_approval_pending_across_a_restart_can_be_decided_once_after_it() {
    let mut db = TestDb::new().await;
    let acme = scope("us-acme");
    let (run, id) = db.waiting("us-acme").await;
    db.restart().await;
    let first = db
        .store
        .decide_approval(&acme, id, Decision::Approve, "U1", step(run, 2, "approved"))
        .await;
    assert!(matches!(first, Ok(DecideOutcome::Decided(_))));
    let second = db
        .store
        .decide_approval(&acme, id, Decision::Approve, "U1", step(run, 3, "approved"))
        .await;
    assert!(matches!(second, Ok(DecideOutcome::AlreadyDecided(_))));
}

async fn an_expired_approval_can_no_longer_be_decided() {
    let db = TestDb::new().await;
    let acme = scope("us-acme");
    let (run, id) = db.waiting("us-acme").await;
    let DecideOutcome::Decided(record) = db
        .store
        .expire_approval(&acme, id, step(run, 2, "expired"))
        .await
        .unwrap()
    else {
        panic!("not expired")
    };
    assert_eq!(
        (record.status.as_str(), record.decided_by),
        ("expired", None)
    );
    let late = db
        .store
        .decide_approval(&acme, id, Decision::Approve, "U1", step(run, 3, "approved"))
        .await
        .unwrap();
    assert!(matches!(late, DecideOutcome::AlreadyDecided(r) if r.status == "expired"));
}

crate::support::conformance!(
    a_step_opens_a_pending_approval,
    an_approval_id_used_twice_is_a_conflict,
    the_message_location_is_recorded_and_may_be_replaced,
    a_step_notes_the_message_of_its_approval_with_it,
    a_decision_records_who_and_when_and_appends_the_step,
    two_concurrent_decisions_give_exactly_one_decided,
    a_second_click_is_already_decided_and_writes_nothing,
    deciding_an_unknown_approval_is_not_found,
    a_decision_whose_step_cannot_be_written_is_rolled_back,
    an_approval_pending_across_a_restart_can_be_decided_once_after_it,
    an_expired_approval_can_no_longer_be_decided,
);
