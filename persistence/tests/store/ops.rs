//! What the operator tools read: crash snapshots (redacted, kept per run and tenant), a run
//! found by id alone, runs listed across tenants with filters, waiting runs, a run's audit.

use serde_json::json;
use steward_core::{ApprovalId, RunId, TenantId};
use steward_persistence::{NewApproval, NewCrash, RunFilter, StoreError};

use crate::support::{TestDb, new_run, scope, step};

fn crash(run: RunId, attempt: u32) -> NewCrash {
    NewCrash {
        run_id: run,
        attempt,
        journal_offset: 3,
        step: "triage".into(),
        message: "advance".into(),
        error: "panicked at run.rs: calling the llm with Bearer sk-live-0123456789abcdef".into(),
        state: json!({
            "incident": {"fields": {"description": "bot token xoxb-111-222-abcdef, ok"}},
            "settings": {"client_secret": "hunter2", "max_tokens": 1024},
        }),
    }
}

async fn crash_snapshots_are_numbered_redacted_and_kept_with_their_run() {
    let db = TestDb::new().await;
    let acme = scope("us-acme");
    let run = db.intake("us-acme").await;
    assert_eq!(
        db.store.record_crash(&acme, crash(run, 1)).await.unwrap(),
        1
    );
    db.clock.advance_millis(250);
    assert_eq!(
        db.store.record_crash(&acme, crash(run, 2)).await.unwrap(),
        2
    );

    let crashes = db.store.crashes(&acme, run).await.unwrap();
    assert_eq!(crashes.len(), 2);
    assert_eq!((crashes[0].seq, crashes[1].seq), (1, 2));
    assert_eq!(crashes[1].at - crashes[0].at, 250);
    assert_eq!((crashes[1].attempt, crashes[1].journal_offset), (2, 3));
    assert_eq!(
        (crashes[0].step.as_str(), crashes[0].message.as_str()),
        ("triage", "advance")
    );
    assert!(crashes[0].error.starts_with("panicked at run.rs"));
    let stored = serde_json::to_string(&crashes).unwrap();
    for secret in ["0123456789abcdef", "111-222-abcdef", "hunter2"] {
        assert!(!stored.contains(secret), "{secret} was stored: {stored}");
    }
    assert_eq!(crashes[0].state["settings"]["max_tokens"], 1024);

    let disk = db.stored_text().await;
    assert!(!disk.contains("hunter2"), "a secret reached the disk");
}

async fn crash_snapshots_belong_to_one_tenant() {
    let db = TestDb::new().await;
    let run = db.intake("us-acme").await;
    db.store
        .record_crash(&scope("us-acme"), crash(run, 1))
        .await
        .unwrap();
    assert!(
        db.store
            .crashes(&scope("eu-beta"), run)
            .await
            .unwrap()
            .is_empty()
    );
    let err = db
        .store
        .record_crash(&scope("eu-beta"), crash(run, 1))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
}

async fn oversized_and_hostile_crash_text_is_cut_not_refused() {
    let db = TestDb::new().await;
    let acme = scope("us-acme");
    let run = db.intake("us-acme").await;
    let mut big = crash(run, 1);
    big.error = "e".repeat(100_000);
    big.step = format!("\u{0}{}\n", "s".repeat(1000));
    big.message = String::new();
    big.state = json!({ "blob": "x".repeat(9 * 1024 * 1024) });
    db.store.record_crash(&acme, big).await.unwrap();
    let stored = &db.store.crashes(&acme, run).await.unwrap()[0];
    assert_eq!(stored.error.len(), 8 * 1024);
    assert_eq!(stored.step.len(), 128);
    assert!(!stored.step.contains('\u{0}'));
    assert_eq!(stored.message, "unknown");
    assert!(stored.state["omitted"].as_str().unwrap().contains("limit"));
}

async fn a_run_is_found_by_its_id_alone() {
    let db = TestDb::new().await;
    let acme_run = db.intake("us-acme").await;
    let beta_run = db.intake("eu-beta").await;
    let tenant = |t: &str| Some(TenantId::parse(t).unwrap());
    assert_eq!(
        db.store.run_tenant(acme_run).await.unwrap(),
        tenant("us-acme")
    );
    assert_eq!(
        db.store.run_tenant(beta_run).await.unwrap(),
        tenant("eu-beta")
    );
    assert_eq!(db.store.run_tenant(RunId::new()).await.unwrap(), None);
}

/// Runs for the filter tests: (acme from a source, acme by API later, beta by API later still).
async fn three_runs(db: &TestDb) -> (RunId, RunId, RunId) {
    let acme = scope("us-acme");
    let sourced = match db
        .store
        .record_intake(&acme, new_run(Some("d-1")))
        .await
        .unwrap()
    {
        steward_persistence::IntakeOutcome::Created(id) => id,
        other => panic!("{other:?}"),
    };
    db.clock.advance_millis(1000);
    let api = db.intake("us-acme").await;
    db.store
        .append_step(&acme, step(api, 1, "failed"))
        .await
        .unwrap();
    db.clock.advance_millis(1000);
    let beta = db.intake("eu-beta").await;
    (sourced, api, beta)
}

fn filter() -> RunFilter {
    RunFilter {
        limit: 50,
        ..RunFilter::default()
    }
}

async fn runs_are_listed_across_tenants_newest_first_with_filters() {
    let db = TestDb::new().await;
    let (sourced, api, beta) = three_runs(&db).await;
    let ids = |runs: Vec<steward_persistence::RunRecord>| -> Vec<RunId> {
        runs.into_iter().map(|r| r.id).collect()
    };
    let all = ids(db.store.find_runs(&filter()).await.unwrap());
    assert_eq!(all, [beta, api, sourced]);

    let by_tenant = RunFilter {
        tenant: Some(TenantId::parse("us-acme").unwrap()),
        ..filter()
    };
    assert_eq!(
        ids(db.store.find_runs(&by_tenant).await.unwrap()),
        [api, sourced]
    );
    let failed = RunFilter {
        states: vec!["failed".into(), "stale".into()],
        ..filter()
    };
    assert_eq!(ids(db.store.find_runs(&failed).await.unwrap()), [api]);
    let from_source = RunFilter {
        source: Some("servicenow".into()),
        ..filter()
    };
    assert_eq!(
        ids(db.store.find_runs(&from_source).await.unwrap()),
        [sourced]
    );
    let from_api = RunFilter {
        source: Some(RunFilter::NO_SOURCE.into()),
        ..filter()
    };
    assert_eq!(
        ids(db.store.find_runs(&from_api).await.unwrap()),
        [beta, api]
    );

    let t0 = db.clock_ms() - 2000;
    let window = RunFilter {
        since: Some(t0 + 500),
        until: Some(t0 + 1500),
        ..filter()
    };
    assert_eq!(ids(db.store.find_runs(&window).await.unwrap()), [api]);
    let page = RunFilter {
        before: Some(api),
        limit: 1,
        ..filter()
    };
    assert_eq!(ids(db.store.find_runs(&page).await.unwrap()), [sourced]);
}

async fn runs_are_found_by_the_incident_number_they_read() {
    let db = TestDb::new().await;
    let acme = scope("us-acme");
    let run = db.intake("us-acme").await;
    let mut fetched = step(run, 1, "triaging");
    fetched.kind = "incident_fetched".into();
    fetched.body = json!({
        "kind": "incident_fetched",
        "incident": {"sys_id": "a".repeat(32), "number": "INC0020002", "fields": {}},
    });
    db.store.append_step(&acme, fetched).await.unwrap();
    let by = |n: &str| RunFilter {
        number: Some(n.into()),
        ..filter()
    };
    let found = db.store.find_runs(&by("INC0020002")).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].id, run);
    // The trigger named INC0010001.
    assert_eq!(
        db.store.find_runs(&by("INC0010001")).await.unwrap().len(),
        1
    );
    assert!(
        db.store
            .find_runs(&by("INC0099999"))
            .await
            .unwrap()
            .is_empty()
    );
}

async fn hostile_filters_are_refused_before_any_query() {
    let db = TestDb::new().await;
    db.intake("us-acme").await;
    let refused = [
        RunFilter {
            number: Some("INC%".into()),
            ..filter()
        },
        RunFilter {
            number: Some("' OR 1=1 --".into()),
            ..filter()
        },
        RunFilter {
            source: Some("Bad Source!".into()),
            ..filter()
        },
        RunFilter {
            states: vec!["a\nb".into()],
            ..filter()
        },
        RunFilter {
            states: vec!["failed".into(); 17],
            ..filter()
        },
        RunFilter {
            since: Some(10),
            until: Some(5),
            ..filter()
        },
    ];
    for f in refused {
        let err = db.store.find_runs(&f).await.unwrap_err();
        assert!(matches!(err, StoreError::Invalid(_)), "{f:?}: {err}");
    }
    let quoted = RunFilter {
        states: vec!["failed' OR '1'='1".into()],
        ..filter()
    };
    assert!(db.store.find_runs(&quoted).await.unwrap().is_empty());
    let huge = RunFilter {
        limit: u32::MAX,
        ..filter()
    };
    assert_eq!(db.store.find_runs(&huge).await.unwrap().len(), 1);
}

async fn waiting_runs_name_the_approval_they_wait_for() {
    let db = TestDb::new().await;
    let acme = scope("us-acme");
    let run = db.intake("us-acme").await;
    let busy = db.intake("us-acme").await;
    db.store
        .append_step(&acme, step(busy, 1, "triaging"))
        .await
        .unwrap();
    let approval = ApprovalId::new();
    let mut ask = step(run, 1, "awaiting_approval");
    ask.new_approval = Some(NewApproval {
        id: approval,
        diff_hash: "h".into(),
        record_version: "1".into(),
        policy: json!({}),
    });
    db.store.append_step(&acme, ask).await.unwrap();
    db.store
        .set_approval_message(&acme, approval, "C0APPROVE1", "1.2")
        .await
        .unwrap();

    let waiting = db.store.waiting_runs(&["awaiting_approval"]).await.unwrap();
    assert_eq!(waiting.len(), 1);
    assert_eq!(waiting[0].run_id, run);
    assert_eq!(waiting[0].approval_id, Some(approval));
    assert_eq!(waiting[0].channel.as_deref(), Some("C0APPROVE1"));
    assert!(db.store.waiting_runs(&[]).await.unwrap().is_empty());
}

async fn a_runs_audit_holds_only_its_own_entries() {
    let db = TestDb::new().await;
    let acme = scope("us-acme");
    let run = db.intake("us-acme").await;
    let other = db.intake("us-acme").await;
    db.store
        .append_step(&acme, step(run, 1, "triaging"))
        .await
        .unwrap();
    db.store
        .append_step(&acme, step(other, 1, "triaging"))
        .await
        .unwrap();
    let entries = db.store.run_audit(&acme, run).await.unwrap();
    assert_eq!(entries.len(), 2);
    assert!(entries.iter().all(|e| e.run_id == Some(run)));
    assert!(entries[0].seq < entries[1].seq);
    assert!(
        db.store
            .run_audit(&scope("eu-beta"), run)
            .await
            .unwrap()
            .is_empty()
    );
}

/// Crash records of one run written at once are numbered apart, none lost.
async fn concurrent_crash_records_of_one_run_are_numbered_apart() {
    let db = TestDb::new().await;
    let run = db.intake("us-acme").await;
    let acme = scope("us-acme");
    let writes = (1..=6).map(|attempt| {
        let (store, acme) = (db.store.clone(), acme.clone());
        tokio::spawn(async move { store.record_crash(&acme, crash(run, attempt)).await })
    });
    let mut seqs = Vec::new();
    for write in writes {
        seqs.push(write.await.unwrap().unwrap());
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=6).collect::<Vec<u32>>());
}

crate::support::conformance!(
    concurrent_crash_records_of_one_run_are_numbered_apart,
    crash_snapshots_are_numbered_redacted_and_kept_with_their_run,
    crash_snapshots_belong_to_one_tenant,
    oversized_and_hostile_crash_text_is_cut_not_refused,
    a_run_is_found_by_its_id_alone,
    runs_are_listed_across_tenants_newest_first_with_filters,
    runs_are_found_by_the_incident_number_they_read,
    hostile_filters_are_refused_before_any_query,
    waiting_runs_name_the_approval_they_wait_for,
    a_runs_audit_holds_only_its_own_entries,
);
