//! Retention, legal hold, audit pruning and erasure on each backend: the sweep removes exactly
//! what is due and nothing of other or held tenants, unfinished runs survive, a pruned chain
//! still verifies (in the store and as an evidence bundle), a DELETE above the prune anchor is
//! refused even to a superuser connection, and erasure leaves the subject in no mutable row.

use serde_json::json;
use sqlx::Executor;
use steward_core::{ApprovalId, FixedClock, RunId};
use steward_persistence::evidence::bundle::{BundleWriter, VerifyOptions, verify_bundle};
use steward_persistence::{
    Backend, CheckpointSigner, Decision, MasterKey, NewApproval, RetentionSettings, StoreError,
    Subject,
};

use crate::support::{T0_SECS, TestDb, audit, migrated_through, open_at, scope, step};

const DAY_MS: i64 = 86_400_000;
const FINISHED: &[&str] = &["completed", "failed"];

fn settings(content: u32, runs: u32, audit: u32) -> RetentionSettings {
    RetentionSettings {
        content_days: Some(content),
        runs_days: Some(runs),
        audit_days: Some(audit),
    }
}

async fn signer(db: &TestDb) -> CheckpointSigner {
    db.store
        .checkpoint_signer(&MasterKey::generate())
        .await
        .unwrap()
}

/// A run of `tenant` that ends `completed` (with a decided approval by `decider`).
async fn finished_run(db: &TestDb, tenant: &str, decider: &str) -> RunId {
    let sc = scope(tenant);
    let run = db.intake(tenant).await;
    let approval = ApprovalId::new();
    let mut ask = step(run, 1, "awaiting_approval");
    ask.body = json!({"posted": {"channel": "C1", "approvers": [decider]}});
    ask.new_approval = Some(NewApproval {
        id: approval,
        diff_hash: "sha256:abc".into(),
        record_version: "7".into(),
        policy: json!({"decision": "allow_with_approval"}),
    });
    db.store.append_step(&sc, ask).await.unwrap();
    let mut decided = step(run, 2, "completed");
    decided.body = json!({"decision": {"user": {"id": decider, "name": "Ana Example"}}});
    db.store
        .decide_approval(&sc, approval, Decision::Approve, decider, decided)
        .await
        .unwrap();
    db.store
        .save_snapshot(&sc, run, 3, &json!({"decider": decider}))
        .await
        .unwrap();
    run
}

async fn count(db: &TestDb, sql: &str) -> i64 {
    let mut raw = db.raw().await;
    sqlx::query_scalar(sql).fetch_one(&mut raw).await.unwrap()
}

async fn sweep_all(db: &TestDb, tenant: &str, signer: &CheckpointSigner) {
    let sc = scope(tenant);
    loop {
        let report = db
            .store
            .sweep_tenant(&sc, signer, FINISHED, 2)
            .await
            .unwrap();
        if !report.more(2) {
            break;
        }
    }
}

async fn settings_are_bounded_audited_and_read_back() {
    let db = TestDb::new().await;
    let acme = scope("us-acme");
    assert_eq!(
        db.store.retention(&acme).await.unwrap(),
        RetentionSettings::default()
    );
    for bad in [
        settings(0, 10, 400),
        settings(20, 10, 400),
        settings(5, 10, 100),
        settings(5, 10, 4000),
        RetentionSettings {
            runs_days: Some(10),
            ..RetentionSettings::default()
        },
    ] {
        let err = db.store.set_retention(&acme, bad, "admin").await;
        assert!(
            matches!(err, Err(StoreError::Invalid(_))),
            "{bad:?}: {err:?}"
        );
    }
    db.store
        .set_retention(&acme, settings(30, 90, 400), "admin")
        .await
        .unwrap();
    assert_eq!(
        db.store.retention(&acme).await.unwrap(),
        settings(30, 90, 400)
    );
    assert_eq!(
        db.store.retention(&scope("eu-beta")).await.unwrap(),
        RetentionSettings::default()
    );
    let last = db.store.audit_entries(&acme, 0, 1000).await.unwrap();
    let last = last.last().unwrap();
    assert_eq!(last.kind, "retention.set");
    assert!(last.body.contains("\"runs_days\":90"), "{}", last.body);
    let tenants = db.store.retention_tenants().await.unwrap();
    assert_eq!(
        tenants.iter().map(|t| t.as_str()).collect::<Vec<_>>(),
        ["us-acme"]
    );
}

async fn the_sweep_removes_exactly_what_is_due() {
    let db = TestDb::new().await;
    let signer = signer(&db).await;
    let acme = scope("us-acme");
    let beta = scope("eu-beta");
    let old_acme = finished_run(&db, "us-acme", "U0ANA").await;
    let old_beta = finished_run(&db, "eu-beta", "U0ANA").await;
    let waiting = db.intake("us-acme").await;
    db.store
        .append_step(&acme, step(waiting, 1, "awaiting_approval"))
        .await
        .unwrap();
    db.clock.advance_millis(40 * DAY_MS);
    let fresh = finished_run(&db, "us-acme", "U0BO").await;
    for sc in [&acme, &beta] {
        db.store
            .set_retention(sc, settings(30, 60, 400), "admin")
            .await
            .unwrap();
    }
    db.store
        .place_legal_hold(
            &beta,
            "litigation hold for case 42",
            "operator:ana@example.com",
        )
        .await
        .unwrap();

    sweep_all(&db, "us-acme", &signer).await;
    // Old and finished: content gone, run kept until runs_days.
    let run = db.store.run(&acme, old_acme).await.unwrap().unwrap();
    assert_eq!(run.trigger, json!({"content_pruned": true}));
    assert!(db.store.steps(&acme, old_acme).await.unwrap().is_empty());
    assert!(db.store.snapshot(&acme, old_acme).await.unwrap().is_none());
    assert_eq!(
        db.store
            .approvals_of_run(&acme, old_acme)
            .await
            .unwrap()
            .len(),
        1
    );
    // Fresh, unfinished and held tenants' runs keep everything.
    assert_eq!(db.store.steps(&acme, fresh).await.unwrap().len(), 3);
    assert_eq!(db.store.steps(&acme, waiting).await.unwrap().len(), 2);
    assert_eq!(db.store.steps(&beta, old_beta).await.unwrap().len(), 3);
    let held = db
        .store
        .sweep_tenant(&beta, &signer, FINISHED, 10)
        .await
        .unwrap();
    assert!(held.held);

    db.clock.advance_millis(30 * DAY_MS);
    sweep_all(&db, "us-acme", &signer).await;
    assert!(db.store.run(&acme, old_acme).await.unwrap().is_none());
    assert!(
        db.store
            .approvals_of_run(&acme, old_acme)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(db.store.run(&acme, fresh).await.unwrap().is_some());
    assert!(db.store.run(&acme, waiting).await.unwrap().is_some());
    assert!(db.store.run(&beta, old_beta).await.unwrap().is_some());

    // A year later the waiting run is still there, whatever its age.
    db.clock.advance_millis(400 * DAY_MS);
    sweep_all(&db, "us-acme", &signer).await;
    assert!(db.store.run(&acme, waiting).await.unwrap().is_some());
    assert!(db.store.run(&acme, fresh).await.unwrap().is_none());
    assert_eq!(db.store.steps(&beta, old_beta).await.unwrap().len(), 3);
    let entries = db.store.audit_entries(&acme, 0, 1000).await.unwrap();
    assert!(entries.iter().all(|e| e.kind != "run.created"));
    assert!(entries.iter().any(|e| e.kind == "retention.swept"));
    // The held tenant's chain is whole.
    assert_eq!(db.store.audit_entries(&beta, 0, 1).await.unwrap()[0].seq, 1);
}

async fn a_pruned_chain_verifies_in_the_store_and_as_a_bundle() {
    let db = TestDb::new().await;
    let signer = signer(&db).await;
    let acme = scope("us-acme");
    for i in 0..7 {
        db.store
            .append_audit(&acme, audit(&format!("token.issued{i}"), None))
            .await
            .unwrap();
    }
    db.clock.advance_millis(400 * DAY_MS);
    db.store
        .append_audit(&acme, audit("token.late", None))
        .await
        .unwrap();
    db.store
        .set_retention(&acme, settings(1, 2, 365), "admin")
        .await
        .unwrap();
    let first = db
        .store
        .sweep_tenant(&acme, &signer, FINISHED, 3)
        .await
        .unwrap();
    assert_eq!(first.audit_entries, 3);
    let anchor = first.anchor.clone().unwrap();
    assert_eq!(anchor.through_seq, 3);
    assert!(anchor.checkpoint_seq >= 3);
    sweep_all(&db, "us-acme", &signer).await;
    let anchor = db.store.prune_anchor(&acme).await.unwrap().unwrap();
    assert_eq!(anchor.through_seq, 7);

    let report = db.store.verify_audit(&acme).await.unwrap();
    assert_eq!(report.first_bad, None, "{report:?}");
    let entries = db.store.audit_entries(&acme, 0, 1000).await.unwrap();
    assert_eq!(entries[0].seq, 8);
    assert_eq!(entries[0].prev_hash, anchor.hash);
    let pruned: Vec<_> = entries
        .iter()
        .filter(|e| e.kind == "audit.pruned")
        .collect();
    assert!(!pruned.is_empty());
    assert!(
        pruned[0].body.contains("\"through_seq\":3"),
        "{}",
        pruned[0].body
    );
    assert!(!pruned[0].body.contains("token.issued"));

    // An export of everything starts at the anchor and verifies offline.
    let dir = tempfile::tempdir().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let (store, sc, s) = (db.store.clone(), acme.clone(), signer.clone());
    let to = db.clock_ms() + 1;
    let task = tokio::spawn(async move { store.export_evidence(&sc, &s, 0, to, &tx).await });
    let mut writer = BundleWriter::create(dir.path()).unwrap();
    while let Some(line) = rx.recv().await {
        writer.push(line).unwrap();
    }
    let range = task.await.unwrap().unwrap();
    writer.finish().unwrap();
    assert_eq!(range.first_seq, 8);
    assert_eq!(range.prev_hash, anchor.hash);
    verify_bundle(dir.path(), &VerifyOptions::default(), |_| {}).unwrap();
}

async fn deleting_above_the_anchor_is_refused_even_to_a_superuser() {
    let db = TestDb::new().await;
    let signer = signer(&db).await;
    let acme = scope("us-acme");
    for i in 0..4 {
        db.store
            .append_audit(&acme, audit(&format!("k{i}"), None))
            .await
            .unwrap();
    }
    db.store
        .append_audit(&scope("eu-beta"), audit("k", None))
        .await
        .unwrap();
    db.clock.advance_millis(400 * DAY_MS);
    db.store
        .set_retention(&acme, settings(1, 2, 365), "admin")
        .await
        .unwrap();
    db.store
        .sweep_tenant(&acme, &signer, FINISHED, 2)
        .await
        .unwrap();
    let mut raw = db.raw().await;
    for sql in [
        "DELETE FROM audit_log",
        "DELETE FROM audit_log WHERE tenant_id = 'us-acme' AND seq = 3",
        "DELETE FROM audit_log WHERE tenant_id = 'eu-beta'",
        "UPDATE audit_log SET body = '{}'",
        "DELETE FROM audit_prune_anchors",
        "UPDATE audit_prune_anchors SET through_seq = 100",
    ] {
        let err = sqlx::query(sql).execute(&mut raw).await.unwrap_err();
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
    assert_eq!(db.store.verify_audit(&acme).await.unwrap().first_bad, None);
    if db.backend() == steward_persistence::Backend::Postgres {
        // The service role may not delete audit rows at all, anchor or not.
        let mut service = crate::support::service_connection(&db).await;
        service.execute("BEGIN").await.unwrap();
        sqlx::query("SELECT set_config('steward.tenant', 'us-acme', true)")
            .execute(&mut service)
            .await
            .unwrap();
        let err = sqlx::query("DELETE FROM audit_log WHERE seq <= 2")
            .execute(&mut service)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("denied"), "{err}");
    }
}

async fn legal_holds_are_single_audited_and_block_erasure() {
    let db = TestDb::new().await;
    let acme = scope("us-acme");
    let actor = "operator:ana@example.com";
    for bad in ["", "   ", &"x".repeat(1001), "a\u{7}b"] {
        let err = db.store.place_legal_hold(&acme, bad, actor).await;
        assert!(matches!(err, Err(StoreError::Invalid(_))), "{bad:?}");
    }
    db.store
        .place_legal_hold(&acme, "case 42", actor)
        .await
        .unwrap();
    let again = db.store.place_legal_hold(&acme, "case 43", actor).await;
    assert!(matches!(again, Err(StoreError::Conflict(_))));
    let subject = Subject::parse("slack:U0ANA").unwrap();
    let err = db
        .store
        .erase_subject(&acme, &subject, "request", actor)
        .await;
    assert!(matches!(err, Err(StoreError::Conflict(m)) if m.contains("legal hold")));
    let key = MasterKey::generate();
    db.store.check_master_key(&key).await.unwrap();
    let err = db.store.offboard_tenant(&acme, &key, actor).await;
    assert!(
        matches!(&err, Err(StoreError::Conflict(m)) if m.contains("legal hold")),
        "offboarding is a deletion too: {err:?}"
    );
    assert!(!db.store.tenant_offboarded(acme.tenant()).await.unwrap());
    assert!(db.store.retention_tenants().await.unwrap().is_empty());
    let hold = db.store.release_legal_hold(&acme, actor).await.unwrap();
    assert_eq!(hold.reason, "case 42");
    let err = db.store.release_legal_hold(&acme, actor).await;
    assert!(matches!(err, Err(StoreError::NotFound(_))));
    let kinds: Vec<String> = db
        .store
        .audit_entries(&acme, 0, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert!(kinds.contains(&"legal_hold.placed".to_owned()));
    assert!(kinds.contains(&"legal_hold.released".to_owned()));
    assert!(
        db.store
            .legal_hold(&scope("eu-beta"))
            .await
            .unwrap()
            .is_none()
    );
}

async fn erasure_removes_the_subject_from_every_mutable_row() {
    let db = TestDb::new().await;
    let acme = scope("us-acme");
    let beta = scope("eu-beta");
    let run = finished_run(&db, "us-acme", "U0ANA").await;
    let other = finished_run(&db, "us-acme", "U0BO").await;
    let theirs = finished_run(&db, "eu-beta", "U0ANA").await;
    let subject = Subject::parse("slack:U0ANA").unwrap();
    let report = db
        .store
        .erase_subject(
            &acme,
            &subject,
            "request from U0ANA",
            "operator:ana@example.com",
        )
        .await
        .unwrap();
    assert_eq!(report.approvals, 1);
    assert_eq!(report.steps, 2);
    assert_eq!(report.runs_touched, 1);
    assert_eq!(report.snapshots_removed, 1);

    let steps = serde_json::to_string(&db.store.steps(&acme, run).await.unwrap()).unwrap();
    assert!(
        !steps.contains("U0ANA") && !steps.contains("Ana Example"),
        "{steps}"
    );
    let approvals = db.store.approvals_of_run(&acme, run).await.unwrap();
    assert!(
        !approvals[0]
            .decided_by
            .as_deref()
            .unwrap()
            .contains("U0ANA")
    );
    assert!(db.store.snapshot(&acme, run).await.unwrap().is_none());
    // Others and other tenants are untouched.
    let kept = serde_json::to_string(&db.store.steps(&acme, other).await.unwrap()).unwrap();
    assert!(kept.contains("U0BO"));
    let theirs = serde_json::to_string(&db.store.steps(&beta, theirs).await.unwrap()).unwrap();
    assert!(theirs.contains("U0ANA"));

    let record = db.store.audit_entries(&acme, 0, 1000).await.unwrap();
    let record = record.last().unwrap();
    assert_eq!(record.kind, "erasure.completed");
    assert!(!record.body.contains("U0ANA"), "{}", record.body);
    assert!(record.body.contains(&report.subject_sha256));
    assert_eq!(db.store.verify_audit(&acme).await.unwrap().first_bad, None);
    // No clear copy of the subject in the approvals table of the tenant.
    let left = count(
        &db,
        "SELECT COUNT(*) FROM approvals WHERE tenant_id = 'us-acme' AND decided_by LIKE '%U0ANA%'",
    )
    .await;
    assert_eq!(left, 0);
}

async fn emails_are_erased_case_insensitively_from_triggers() {
    let db = TestDb::new().await;
    let acme = scope("us-acme");
    let mut run = crate::support::new_run(None);
    run.trigger = json!({"number": "INC0010001", "caller": "Ana.Example@Example.com"});
    let id = run.id;
    db.store.record_intake(&acme, run).await.unwrap();
    let subject = Subject::parse("ana.example@example.com").unwrap();
    let report = db
        .store
        .erase_subject(&acme, &subject, "gdpr", "operator")
        .await
        .unwrap();
    assert_eq!(report.triggers, 1);
    let record = db.store.run(&acme, id).await.unwrap().unwrap();
    assert_eq!(record.trigger["caller"], steward_persistence::ERASED);
}

/// Retention's read of due runs is served by an index that holds only runs in the states it
/// knows as finished; a sweep naming another state is refused and removes nothing.
async fn a_sweep_naming_a_state_retention_does_not_know_is_refused() {
    let db = TestDb::new().await;
    let signer = signer(&db).await;
    let acme = scope("us-acme");
    let run = db.intake("us-acme").await;
    db.store
        .append_step(&acme, step(run, 1, "done"))
        .await
        .unwrap();
    db.store
        .set_retention(&acme, settings(5, 10, 400), "admin")
        .await
        .unwrap();
    db.clock.advance_millis(40 * DAY_MS);
    let err = db
        .store
        .sweep_tenant(&acme, &signer, &["completed", "done"], 10)
        .await;
    assert!(
        matches!(&err, Err(StoreError::Invalid(m)) if m.contains("\"done\"")),
        "{err:?}"
    );
    assert!(db.store.run(&acme, run).await.unwrap().is_some());
    assert_eq!(db.store.steps(&acme, run).await.unwrap().len(), 2);
    for state in steward_persistence::FINISHED_STATES {
        db.store
            .sweep_tenant(&acme, &signer, &[state], 10)
            .await
            .unwrap();
    }
}

/// The schema version before the report and retention indexes were partial.
const BEFORE_PARTIAL_INDEXES: i64 = 16;

/// A database that held runs and steps before the report and retention indexes were made
/// partial is upgraded as the store opens: the indexes are built again from the rows already
/// there, and hold exactly the finished runs and the step kinds the reports read.
async fn the_partial_indexes_are_built_from_the_rows_already_there() {
    use sqlx::Connection;
    let (place, mut owner) = migrated_through(BEFORE_PARTIAL_INDEXES).await;
    let mut tx = owner.begin().await.unwrap();
    if crate::support::backend() == Backend::Postgres {
        tx.execute("SELECT set_config('steward.tenant', 'us-acme', true)")
            .await
            .unwrap();
    }
    let runs = [
        (RunId::new(), "completed"),
        (RunId::new(), "awaiting_approval"),
        (RunId::new(), "failed"),
    ];
    tx.execute(
        "INSERT INTO tenants (id, region, name, settings, created_at, updated_at) \
         VALUES ('us-acme', 'us', 'Acme', '{}', 0, 0)",
    )
    .await
    .unwrap();
    for (i, (run, state)) in runs.iter().enumerate() {
        let kinds = match i {
            0 => ["received", "triaged"],
            1 => ["received", "awaiting_approval"],
            _ => ["received", "finished"],
        };
        tx.execute(
            format!(
                "INSERT INTO runs (tenant_id, id, source, delivery_id, incident_by, \
                 incident_value, trigger_body, state, steps, last_error, created_at, updated_at) \
                 VALUES ('us-acme', '{run}', NULL, NULL, 'number', 'INC0010001', '{{}}', \
                 '{state}', 2, NULL, 1, 1)"
            )
            .as_str(),
        )
        .await
        .unwrap();
        for (seq, kind) in kinds.iter().enumerate() {
            tx.execute(
                format!(
                    "INSERT INTO run_steps (tenant_id, run_id, seq, kind, body, at) \
                     VALUES ('us-acme', '{run}', {seq}, '{kind}', '{{}}', 1)"
                )
                .as_str(),
            )
            .await
            .unwrap();
        }
    }
    tx.commit().await.unwrap();
    owner.close().await.unwrap();

    let clock = FixedClock::at_secs(T0_SECS);
    let store = open_at(&place, &clock, true).await;
    let db = TestDb {
        store,
        clock,
        place,
    };
    let mut raw = db.raw().await;
    let finished = steward_persistence::FINISHED_STATES
        .iter()
        .map(|s| format!("'{s}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let reported = "'write_intended', 'policy_decided', 'triaged', 'parked', 'finished'";
    match db.backend() {
        Backend::Sqlite => {
            let defs: Vec<String> = sqlx::query_scalar(
                "SELECT sql FROM sqlite_master WHERE type = 'index' \
                 AND name IN ('runs_by_updated', 'run_steps_by_tenant_kind')",
            )
            .fetch_all(&mut raw)
            .await
            .unwrap();
            assert_eq!(defs.len(), 2, "{defs:?}");
            for def in &defs {
                assert!(def.contains("WHERE"), "{def}");
            }
            // `INDEXED BY` reads through the named index, or fails if it cannot serve the
            // query: the counts are what each index holds.
            let in_runs: i64 = sqlx::query_scalar(&format!(
                "SELECT COUNT(*) FROM runs INDEXED BY runs_by_updated WHERE state IN ({finished})"
            ))
            .fetch_one(&mut raw)
            .await
            .unwrap();
            assert_eq!(in_runs, 2);
            let in_steps: i64 = sqlx::query_scalar(&format!(
                "SELECT COUNT(*) FROM run_steps INDEXED BY run_steps_by_tenant_kind \
                 WHERE kind IN ({reported})"
            ))
            .fetch_one(&mut raw)
            .await
            .unwrap();
            assert_eq!(in_steps, 2);
        }
        Backend::Postgres => {
            let defs: Vec<(String, bool)> = sqlx::query_as(
                "SELECT pg_get_indexdef(i.indexrelid), i.indisvalid FROM pg_index i \
                 JOIN pg_class c ON c.oid = i.indexrelid \
                 WHERE c.relname IN ('runs_by_updated', 'run_steps_by_tenant_kind')",
            )
            .fetch_all(&mut raw)
            .await
            .unwrap();
            assert_eq!(defs.len(), 2, "{defs:?}");
            for (def, valid) in &defs {
                assert!(*valid && def.contains(" WHERE "), "{def}");
            }
        }
    }
    raw.close().await.unwrap();
}

crate::support::conformance!(
    settings_are_bounded_audited_and_read_back,
    the_partial_indexes_are_built_from_the_rows_already_there,
    a_sweep_naming_a_state_retention_does_not_know_is_refused,
    the_sweep_removes_exactly_what_is_due,
    a_pruned_chain_verifies_in_the_store_and_as_a_bundle,
    deleting_above_the_anchor_is_refused_even_to_a_superuser,
    legal_holds_are_single_audited_and_block_erasure,
    erasure_removes_the_subject_from_every_mutable_row,
    emails_are_erased_case_insensitively_from_triggers,
);
