//! Journals, optimistic step appends (field case D1 at the API level), listing, resume and
//! snapshots.

use serde_json::json;
use steward_persistence::{Store, StoreError, TenantScope};

use crate::support::{TestDb, scope, step};

async fn steps_append_in_order_and_move_the_run() {
    let db = TestDb::new().await;
    let acme = scope("us-acme");
    let run = db.intake("us-acme").await;
    db.clock.advance_millis(10);
    let mut failing = step(run, 1, "triaging");
    failing.last_error = Some("llm timed out".into());
    db.store.append_step(&acme, failing).await.unwrap();
    db.store
        .append_step(&acme, step(run, 2, "waiting"))
        .await
        .unwrap();

    let record = db.store.run(&acme, run).await.unwrap().unwrap();
    assert_eq!((record.state.as_str(), record.steps), ("waiting", 3));
    assert_eq!(record.last_error, None, "a later step clears the error");
    assert_eq!(record.updated_at, record.created_at + 10);
    let seqs: Vec<u32> = db
        .store
        .steps(&acme, run)
        .await
        .unwrap()
        .iter()
        .map(|s| s.seq)
        .collect();
    assert_eq!(seqs, [0, 1, 2]);
    assert_eq!(
        db.store.steps(&acme, run).await.unwrap()[1].body,
        json!({"seq": 1})
    );
    assert_eq!(db.store.verify_audit(&acme).await.unwrap().entries, 3);
}

async fn the_last_error_is_kept_until_replaced() {
    let db = TestDb::new().await;
    let acme = scope("us-acme");
    let run = db.intake("us-acme").await;
    let mut failing = step(run, 1, "failed");
    failing.last_error = Some("servicenow answered 500".into());
    db.store.append_step(&acme, failing).await.unwrap();
    let record = db.store.run(&acme, run).await.unwrap().unwrap();
    assert_eq!(
        record.last_error.as_deref(),
        Some("servicenow answered 500")
    );
}

async fn a_step_at_a_stale_seq_is_a_conflict_and_writes_nothing() {
    let db = TestDb::new().await;
    let acme = scope("us-acme");
    let run = db.intake("us-acme").await;
    for seq in [0, 2, 7] {
        let err = db
            .store
            .append_step(&acme, step(run, seq, "x"))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    }
    assert_eq!(db.store.run(&acme, run).await.unwrap().unwrap().steps, 1);
    assert_eq!(db.store.audit_entries(&acme, 0, 10).await.unwrap().len(), 1);
}

async fn a_step_for_an_unknown_run_is_not_found() {
    let db = TestDb::new().await;
    let err = db
        .store
        .append_step(&scope("us-acme"), step(steward_core::RunId::new(), 0, "x"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
}

async fn a_step_with_a_bad_audit_draft_rolls_back_whole() {
    let db = TestDb::new().await;
    let acme = scope("us-acme");
    let run = db.intake("us-acme").await;
    let mut bad = step(run, 1, "triaging");
    bad.audit.push(crate::support::audit("", Some(run)));
    assert!(matches!(
        db.store.append_step(&acme, bad).await,
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(db.store.run(&acme, run).await.unwrap().unwrap().steps, 1);
    assert_eq!(db.store.steps(&acme, run).await.unwrap().len(), 1);
    assert_eq!(db.store.audit_entries(&acme, 0, 10).await.unwrap().len(), 1);
}

async fn concurrent_appends_at_the_same_seq_commit_exactly_one() {
    let db = TestDb::new().await;
    let acme = scope("us-acme");
    let run = db.intake("us-acme").await;
    let (a, b) = tokio::join!(
        db.store.append_step(&acme, step(run, 1, "a")),
        db.store.append_step(&acme, step(run, 1, "b")),
    );
    let results = [a, b];
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
    assert!(
        results
            .iter()
            .any(|r| matches!(r, Err(StoreError::Conflict(_))))
    );
    assert_eq!(db.store.steps(&acme, run).await.unwrap().len(), 2);
}

/// Reads the run, then appends at the length it read, retrying on Conflict; `n` times.
async fn read_then_append(store: &Store, scope: &TenantScope, run: steward_core::RunId, n: usize) {
    let mut done = 0;
    while done < n {
        let seen = store.run(scope, run).await.unwrap().unwrap().steps;
        tokio::task::yield_now().await;
        match store.append_step(scope, step(run, seen, "working")).await {
            Ok(()) => done += 1,
            Err(StoreError::Conflict(_)) => continue,
            Err(other) => panic!("a read-then-write transaction failed: {other}"),
        }
    }
}

async fn concurrent_read_then_write_on_one_run_never_fails_with_a_lock_error() {
    let db = TestDb::new().await;
    let other = db.second_process().await;
    let acme = scope("us-acme");
    let run = db.intake("us-acme").await;
    tokio::join!(
        read_then_append(&db.store, &acme, run, 15),
        read_then_append(&other, &acme, run, 15),
    );
    let seqs: Vec<u32> = db
        .store
        .steps(&acme, run)
        .await
        .unwrap()
        .iter()
        .map(|s| s.seq)
        .collect();
    assert_eq!(seqs, (0..31).collect::<Vec<_>>());
    assert!(
        db.store
            .verify_audit(&acme)
            .await
            .unwrap()
            .first_bad
            .is_none()
    );
}

async fn runs_list_newest_first_in_pages_capped_at_200() {
    let db = TestDb::new().await;
    let acme = scope("us-acme");
    let mut ids = Vec::new();
    for _ in 0..205 {
        ids.push(db.intake("us-acme").await);
    }
    ids.reverse();

    let first = db.store.list_runs(&acme, 1000, None).await.unwrap();
    assert_eq!(first.len(), 200);
    assert_eq!(first.iter().map(|r| r.id).collect::<Vec<_>>(), ids[..200]);
    let rest = db
        .store
        .list_runs(&acme, 1000, Some(first[199].id))
        .await
        .unwrap();
    assert_eq!(rest.iter().map(|r| r.id).collect::<Vec<_>>(), ids[200..]);
    let page = db.store.list_runs(&acme, 3, Some(ids[10])).await.unwrap();
    assert_eq!(page.iter().map(|r| r.id).collect::<Vec<_>>(), ids[11..14]);
    assert!(db.store.list_runs(&acme, 0, None).await.unwrap().is_empty());
}

async fn unfinished_runs_of_every_tenant_are_listed_for_resume() {
    let db = TestDb::new().await;
    let a1 = db.intake("us-acme").await;
    let a2 = db.intake("us-acme").await;
    let b1 = db.intake("eu-beta").await;
    db.store
        .append_step(&scope("us-acme"), step(a2, 1, "completed"))
        .await
        .unwrap();
    db.store
        .append_step(&scope("eu-beta"), step(b1, 1, "waiting"))
        .await
        .unwrap();

    let open = db
        .store
        .unfinished_runs(&["completed", "failed"])
        .await
        .unwrap();
    let listed: Vec<_> = open
        .iter()
        .map(|(t, r, s)| (t.as_str(), *r, s.as_str()))
        .collect();
    assert_eq!(
        listed,
        [("eu-beta", b1, "waiting"), ("us-acme", a1, "fetching")]
    );
    assert_eq!(db.store.unfinished_runs(&[]).await.unwrap().len(), 3);
}

async fn snapshots_keep_the_latest_offset_and_never_roll_back() {
    let db = TestDb::new().await;
    let acme = scope("us-acme");
    let run = db.intake("us-acme").await;
    db.store
        .append_step(&acme, step(run, 1, "triaging"))
        .await
        .unwrap();
    assert_eq!(db.store.snapshot(&acme, run).await.unwrap(), None);

    db.store
        .save_snapshot(&acme, run, 1, &json!({"at": 1}))
        .await
        .unwrap();
    db.store
        .save_snapshot(&acme, run, 2, &json!({"at": 2}))
        .await
        .unwrap();
    db.store
        .save_snapshot(&acme, run, 1, &json!({"at": "stale"}))
        .await
        .unwrap();
    assert_eq!(
        db.store.snapshot(&acme, run).await.unwrap(),
        Some((2, json!({"at": 2})))
    );
    db.store
        .save_snapshot(&acme, run, 2, &json!({"at": "2b"}))
        .await
        .unwrap();
    assert_eq!(
        db.store.snapshot(&acme, run).await.unwrap(),
        Some((2, json!({"at": "2b"})))
    );
}

async fn a_snapshot_past_the_journal_or_of_an_unknown_run_is_refused() {
    let db = TestDb::new().await;
    let acme = scope("us-acme");
    let run = db.intake("us-acme").await;
    let err = db
        .store
        .save_snapshot(&acme, run, 2, &json!({}))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    let ghost = steward_core::RunId::new();
    let err = db
        .store
        .save_snapshot(&acme, ghost, 0, &json!({}))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
}

async fn a_run_row_edited_behind_the_store_reads_back_as_corrupt() {
    let db = TestDb::new().await;
    let acme = scope("us-acme");
    let run = db.intake("us-acme").await;
    let mut raw = db.raw().await;
    sqlx::query("UPDATE runs SET incident_value = 'INC1^ORactive=true' WHERE id = $1")
        .bind(run.to_string())
        .execute(&mut raw)
        .await
        .unwrap();
    let err = db.store.run(&acme, run).await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
    // Step bodies are sealed: one replaced behind the store does not open.
    sqlx::query("UPDATE run_steps SET body = '{not json' WHERE run_id = $1")
        .bind(run.to_string())
        .execute(&mut raw)
        .await
        .unwrap();
    let err = db.store.steps(&acme, run).await.unwrap_err();
    assert!(matches!(err, StoreError::Crypto(_)), "{err}");
    assert!(err.to_string().contains("run_steps.body"), "{err}");
}

crate::support::conformance!(
    steps_append_in_order_and_move_the_run,
    the_last_error_is_kept_until_replaced,
    a_step_at_a_stale_seq_is_a_conflict_and_writes_nothing,
    a_step_for_an_unknown_run_is_not_found,
    a_step_with_a_bad_audit_draft_rolls_back_whole,
    concurrent_appends_at_the_same_seq_commit_exactly_one,
    concurrent_read_then_write_on_one_run_never_fails_with_a_lock_error,
    runs_list_newest_first_in_pages_capped_at_200,
    unfinished_runs_of_every_tenant_are_listed_for_resume,
    snapshots_keep_the_latest_offset_and_never_roll_back,
    a_snapshot_past_the_journal_or_of_an_unknown_run_is_refused,
    a_run_row_edited_behind_the_store_reads_back_as_corrupt,
);
