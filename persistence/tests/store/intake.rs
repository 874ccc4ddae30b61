//! Intake and delivery dedupe (field case W1).

use serde_json::json;
use steward_core::IncidentRef;
use steward_persistence::{IntakeOutcome, StoreError};

use crate::support::{TestDb, new_run, scope, source};

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

fn created(outcome: IntakeOutcome) -> steward_core::RunId {
    match outcome {
        IntakeOutcome::Created(id) => id,
        other => panic!("expected Created, got {other:?}"),
    }
}

async fn intake_writes_the_run_its_first_step_and_its_audit_entry() {
    let db = TestDb::new().await;
    let acme = scope("us-acme");
    let run = new_run(Some("msg_1"));
    let id = created(db.store.record_intake(&acme, run.clone()).await.unwrap());

    let record = db.store.run(&acme, id).await.unwrap().unwrap();
    assert_eq!(record.tenant.as_str(), "us-acme");
    assert_eq!(record.source, Some(source()));
    assert_eq!(record.delivery_id.as_deref(), Some("msg_1"));
    assert_eq!(record.incident, run.incident);
    assert_eq!(record.trigger, run.trigger);
    assert_eq!((record.state.as_str(), record.steps), ("fetching", 1));
    assert_eq!(record.created_at, db.clock_ms());

    let steps = db.store.steps(&acme, id).await.unwrap();
    assert_eq!(steps.len(), 1);
    assert_eq!((steps[0].seq, steps[0].kind.as_str()), (0, "intake"));
    let entries = db.store.audit_entries(&acme, 0, 10).await.unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(
        (entries[0].kind.as_str(), entries[0].run_id),
        ("run.created", Some(id))
    );
}

async fn the_same_delivery_at_the_same_moment_creates_one_run() {
    let db = TestDb::new().await;
    let acme = scope("us-acme");
    let (a, b) = tokio::join!(
        db.store.record_intake(&acme, new_run(Some("msg_1"))),
        db.store.record_intake(&acme, new_run(Some("msg_1"))),
    );
    let outcomes = [a.unwrap(), b.unwrap()];
    let winner = outcomes.iter().find_map(|o| match o {
        IntakeOutcome::Created(id) => Some(*id),
        IntakeOutcome::Duplicate(_) => None,
    });
    let winner = winner.expect("one intake creates the run");
    assert!(
        outcomes.contains(&IntakeOutcome::Duplicate(winner)),
        "{outcomes:?}"
    );
    assert_eq!(db.store.list_runs(&acme, 10, None).await.unwrap().len(), 1);
    assert_eq!(db.store.audit_entries(&acme, 0, 10).await.unwrap().len(), 1);
}

async fn the_same_delivery_from_two_processes_creates_one_run() {
    let db = TestDb::new().await;
    let other = db.second_process().await;
    let acme = scope("us-acme");
    let mut outcomes = Vec::new();
    for i in 0..10 {
        let delivery = format!("msg_{i}");
        let (a, b) = tokio::join!(
            db.store.record_intake(&acme, new_run(Some(&delivery))),
            other.record_intake(&acme, new_run(Some(&delivery))),
        );
        outcomes.push((a.unwrap(), b.unwrap()));
    }
    for (a, b) in outcomes {
        let run = match (a, b) {
            (IntakeOutcome::Created(x), IntakeOutcome::Duplicate(y))
            | (IntakeOutcome::Duplicate(y), IntakeOutcome::Created(x)) => {
                assert_eq!(x, y);
                x
            }
            other => panic!("expected one Created and one Duplicate, got {other:?}"),
        };
        assert!(db.store.run(&acme, run).await.unwrap().is_some());
    }
    assert_eq!(
        db.store.list_runs(&acme, 100, None).await.unwrap().len(),
        10
    );
}

async fn a_delivery_seen_before_a_restart_is_a_duplicate_after_it() {
    let mut db = TestDb::new().await;
    let acme = scope("us-acme");
    let first = created(
        db.store
            .record_intake(&acme, new_run(Some("msg_1")))
            .await
            .unwrap(),
    );
    db.restart().await;
    let again = db
        .store
        .record_intake(&acme, new_run(Some("msg_1")))
        .await
        .unwrap();
    assert_eq!(again, IntakeOutcome::Duplicate(first));
}

async fn a_retry_five_minutes_and_one_second_later_is_still_a_duplicate() {
    let db = TestDb::new().await;
    let acme = scope("us-acme");
    let first = created(
        db.store
            .record_intake(&acme, new_run(Some("msg_1")))
            .await
            .unwrap(),
    );
    for step_ms in [60_000, 240_000, 1_000] {
        db.clock.advance_millis(step_ms);
        let again = db
            .store
            .record_intake(&acme, new_run(Some("msg_1")))
            .await
            .unwrap();
        assert_eq!(again, IntakeOutcome::Duplicate(first));
    }
}

async fn purging_keeps_deliveries_inside_the_window_and_drops_older_ones() {
    let db = TestDb::new().await;
    let acme = scope("us-acme");
    let first = created(
        db.store
            .record_intake(&acme, new_run(Some("msg_1")))
            .await
            .unwrap(),
    );

    db.clock.advance_millis(6 * DAY_MS);
    assert_eq!(db.store.purge_deliveries(7 * DAY_MS).await.unwrap(), 0);
    let again = db
        .store
        .record_intake(&acme, new_run(Some("msg_1")))
        .await
        .unwrap();
    assert_eq!(again, IntakeOutcome::Duplicate(first));

    db.clock.advance_millis(2 * DAY_MS);
    assert_eq!(db.store.purge_deliveries(7 * DAY_MS).await.unwrap(), 1);
    assert!(
        db.store.run(&acme, first).await.unwrap().is_some(),
        "the run outlives its delivery"
    );
    let later = created(
        db.store
            .record_intake(&acme, new_run(Some("msg_1")))
            .await
            .unwrap(),
    );
    assert_ne!(later, first);
    assert!(matches!(
        db.store.purge_deliveries(-1).await,
        Err(StoreError::Invalid(_))
    ));
}

async fn the_same_delivery_id_from_another_tenant_or_without_a_source_is_new() {
    let db = TestDb::new().await;
    created(
        db.store
            .record_intake(&scope("us-acme"), new_run(Some("msg_1")))
            .await
            .unwrap(),
    );
    created(
        db.store
            .record_intake(&scope("eu-beta"), new_run(Some("msg_1")))
            .await
            .unwrap(),
    );

    let mut keyed = new_run(None);
    keyed.delivery_id = Some("msg_1".into());
    let first = created(
        db.store
            .record_intake(&scope("us-acme"), keyed)
            .await
            .unwrap(),
    );
    let mut retry = new_run(None);
    retry.delivery_id = Some("msg_1".into());
    let again = db
        .store
        .record_intake(&scope("us-acme"), retry)
        .await
        .unwrap();
    assert_eq!(
        again,
        IntakeOutcome::Duplicate(first),
        "source-less keys dedupe among themselves"
    );
}

async fn runs_without_a_delivery_id_are_never_duplicates() {
    let db = TestDb::new().await;
    let a = db.intake("us-acme").await;
    let b = db.intake("us-acme").await;
    assert_ne!(a, b);
}

async fn a_run_id_used_twice_is_a_conflict() {
    let db = TestDb::new().await;
    let acme = scope("us-acme");
    let run = new_run(None);
    db.store.record_intake(&acme, run.clone()).await.unwrap();
    let err = db.store.record_intake(&acme, run).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
}

async fn intake_for_an_unregistered_tenant_is_refused() {
    let db = TestDb::new().await;
    let err = db
        .store
        .record_intake(&scope("us-ghost"), new_run(Some("m")))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::NotFound(ref m) if m.contains("us-ghost")),
        "{err}"
    );
}

async fn malformed_intake_is_refused_and_writes_nothing() {
    let db = TestDb::new().await;
    let acme = scope("us-acme");
    let mut cases = Vec::new();
    let mut hostile = new_run(None);
    hostile.incident = IncidentRef::Number("INC001^ORactive=true".into());
    cases.push(hostile);
    let mut huge = new_run(None);
    huge.trigger = json!({"pad": "x".repeat(2 * 1024 * 1024)});
    cases.push(huge);
    for bad_id in ["", "a\nb", &"d".repeat(300)] {
        let mut run = new_run(Some("x"));
        run.delivery_id = Some(bad_id.to_owned());
        cases.push(run);
    }
    let mut no_state = new_run(None);
    no_state.state = String::new();
    cases.push(no_state);
    let mut no_kind = new_run(None);
    no_kind.first_step.0 = String::new();
    cases.push(no_kind);
    let mut bad_audit = new_run(None);
    bad_audit.audit.kind = "x".repeat(129);
    cases.push(bad_audit);

    for run in cases {
        let err = db.store.record_intake(&acme, run).await.unwrap_err();
        assert!(matches!(err, StoreError::Invalid(_)), "{err}");
    }
    assert!(
        db.store
            .list_runs(&acme, 10, None)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        db.store
            .audit_entries(&acme, 0, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn one_incident_change_gets_one_run_whichever_source_delivers_it() {
    let db = TestDb::new().await;
    let acme = scope("us-acme");
    let change = |run: &mut steward_persistence::NewRun, key: &str| {
        run.change = Some(key.to_owned());
    };
    let mut first = new_run(Some("catchup:s:1"));
    change(&mut first, "s@1000");
    let first = created(db.store.record_intake(&acme, first).await.unwrap());

    // The same change by another source and delivery id is a copy of the first run, and so
    // are that delivery's redeliveries, with or without the change named.
    let mut late = new_run(Some("msg_late"));
    late.source = Some(steward_core::SourceName::parse("another").unwrap());
    change(&mut late, "s@1000");
    let outcome = db.store.record_intake(&acme, late.clone()).await.unwrap();
    assert_eq!(outcome, IntakeOutcome::Duplicate(first));
    late.change = None;
    late.id = steward_core::RunId::new();
    let outcome = db.store.record_intake(&acme, late).await.unwrap();
    assert_eq!(outcome, IntakeOutcome::Duplicate(first));

    // A later change, or the same change of another tenant, is new.
    let mut next = new_run(Some("msg_next"));
    change(&mut next, "s@2000");
    created(db.store.record_intake(&acme, next).await.unwrap());
    let mut other = new_run(Some("msg_other"));
    change(&mut other, "s@1000");
    created(
        db.store
            .record_intake(&scope("eu-beta"), other)
            .await
            .unwrap(),
    );

    // Two deliveries of one change at the same moment make one run.
    let (mut a, mut b) = (new_run(Some("msg_a")), new_run(Some("msg_b")));
    change(&mut a, "s@3000");
    change(&mut b, "s@3000");
    let (a, b) = tokio::join!(
        db.store.record_intake(&acme, a),
        db.store.record_intake(&acme, b)
    );
    let outcomes = [a.unwrap(), b.unwrap()];
    let made = outcomes
        .iter()
        .filter(|o| matches!(o, IntakeOutcome::Created(_)))
        .count();
    assert_eq!(made, 1, "{outcomes:?}");

    for bad in ["", "s@1\n", &"c".repeat(300)] {
        let mut run = new_run(Some("msg_bad"));
        change(&mut run, bad);
        let err = db.store.record_intake(&acme, run).await.unwrap_err();
        assert!(matches!(err, StoreError::Invalid(_)), "{bad:?}: {err}");
    }
    assert_eq!(db.store.list_runs(&acme, 10, None).await.unwrap().len(), 3);
}

/// A run's deliveries are found through an index on the run, never by walking the tenant's
/// deliveries: SQLite looks for them when a run is inserted while a delivery's reference to it
/// is still pending, and both backends when retention deletes the run.
async fn a_runs_deliveries_are_found_by_index() {
    use sqlx::{Executor, Row};
    let db = TestDb::new().await;
    let mut raw = db.raw().await;
    match db.backend() {
        steward_persistence::Backend::Sqlite => {
            let plan = raw
                .fetch_all(
                    "EXPLAIN QUERY PLAN SELECT received_at FROM deliveries \
                     WHERE tenant_id = 'us-acme' AND run_id = 'r'",
                )
                .await
                .unwrap();
            let detail: Vec<String> = plan.iter().map(|row| row.get::<String, _>(3)).collect();
            assert!(
                detail.iter().any(|d| d.contains("deliveries_by_run")),
                "{detail:?}"
            );
        }
        steward_persistence::Backend::Postgres => {
            let found = raw
                .fetch_all(
                    "SELECT indexdef FROM pg_indexes WHERE tablename = 'deliveries' \
                     AND indexname = 'deliveries_by_run'",
                )
                .await
                .unwrap();
            let def: String = found[0].get(0);
            assert!(def.contains("(run_id, tenant_id)"), "{def}");
        }
    }
}

crate::support::conformance!(
    a_runs_deliveries_are_found_by_index,
    one_incident_change_gets_one_run_whichever_source_delivers_it,
    intake_writes_the_run_its_first_step_and_its_audit_entry,
    the_same_delivery_at_the_same_moment_creates_one_run,
    the_same_delivery_from_two_processes_creates_one_run,
    a_delivery_seen_before_a_restart_is_a_duplicate_after_it,
    a_retry_five_minutes_and_one_second_later_is_still_a_duplicate,
    purging_keeps_deliveries_inside_the_window_and_drops_older_ones,
    the_same_delivery_id_from_another_tenant_or_without_a_source_is_new,
    runs_without_a_delivery_id_are_never_duplicates,
    a_run_id_used_twice_is_a_conflict,
    intake_for_an_unregistered_tenant_is_refused,
    malformed_intake_is_refused_and_writes_nothing,
);
