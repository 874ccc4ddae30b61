//! Write pauses and consumption meters: pauses per tenant and for the platform, each audited
//! where it applies; meters that never grant more than their limit, even to concurrent asks.

use steward_persistence::{MeterAsk, MeterCharge, Reservation, StoreError};

use crate::support::{T0_SECS, TestDb, scope, step};

/// The window the test clock stands in.
const NOW_WINDOW: i64 = T0_SECS * 1000;

fn ask(meter: &str, limit: u64, amount: u64) -> MeterAsk {
    MeterAsk {
        meter: meter.into(),
        window_start: NOW_WINDOW,
        limit,
        amount,
    }
}

async fn a_tenant_pause_stops_only_that_tenant_and_is_audited() {
    let db = TestDb::new().await;
    let (acme, beta) = (scope("us-acme"), scope("eu-beta"));
    let change = db
        .store
        .pause_tenant_writes(&acme, "token:tok_1", "change freeze")
        .await
        .unwrap();
    assert!(!change.was_paused && change.paused);
    let pauses = db.store.write_pauses(&acme).await.unwrap();
    assert_eq!(pauses.len(), 1);
    assert_eq!(pauses[0].reason, "change freeze");
    assert_eq!(pauses[0].actor, "token:tok_1");
    assert_eq!(pauses[0].place(), "tenant us-acme");
    assert!(db.store.write_pauses(&beta).await.unwrap().is_empty());

    let change = db
        .store
        .resume_tenant_writes(&acme, "token:tok_1", "freeze over")
        .await
        .unwrap();
    assert!(change.was_paused && !change.paused);
    assert!(db.store.write_pauses(&acme).await.unwrap().is_empty());

    let audit = db.store.audit_entries(&acme, 0, 100).await.unwrap();
    let kinds: Vec<&str> = audit.iter().map(|e| e.kind.as_str()).collect();
    assert!(
        kinds.ends_with(&["writes.paused", "writes.resumed"]),
        "{kinds:?}"
    );
    let last = audit.last().unwrap();
    assert!(last.body.contains("freeze over"), "{}", last.body);
    assert_eq!(last.actor, "token:tok_1");
    assert!(
        db.store
            .verify_audit(&acme)
            .await
            .unwrap()
            .first_bad
            .is_none()
    );
    let beta_audit = db.store.audit_entries(&beta, 0, 100).await.unwrap();
    assert!(beta_audit.iter().all(|e| !e.kind.starts_with("writes.")));
}

async fn the_platform_pause_reaches_every_tenant_and_every_chain() {
    let db = TestDb::new().await;
    let (acme, beta) = (scope("us-acme"), scope("eu-beta"));
    let change = db
        .store
        .set_platform_writes(true, "operator:ana", "provider incident")
        .await
        .unwrap();
    assert!(!change.was_paused && change.paused);
    for s in [&acme, &beta] {
        let pauses = db.store.write_pauses(s).await.unwrap();
        assert_eq!(pauses.len(), 1);
        assert_eq!(pauses[0].tenant, None);
        assert_eq!(pauses[0].place(), "the platform");
        let audit = db.store.audit_entries(s, 0, 100).await.unwrap();
        let last = audit.last().unwrap();
        assert_eq!(last.kind, "writes.paused");
        assert_eq!(last.actor, "operator:ana");
        assert!(last.body.contains("provider incident"));
        assert!(db.store.verify_audit(s).await.unwrap().first_bad.is_none());
    }
    db.store
        .pause_tenant_writes(&acme, "token:tok_1", "also frozen")
        .await
        .unwrap();
    let all = db.store.all_write_pauses().await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].tenant, None);
    assert_eq!(all[1].tenant.as_ref().unwrap().as_str(), "us-acme");

    db.store
        .set_platform_writes(false, "operator:ana", "over")
        .await
        .unwrap();
    assert!(db.store.write_pauses(&beta).await.unwrap().is_empty());
    assert_eq!(
        db.store.write_pauses(&acme).await.unwrap().len(),
        1,
        "its own stays"
    );
    let beta_audit = db.store.audit_entries(&beta, 0, 100).await.unwrap();
    assert_eq!(beta_audit.last().unwrap().kind, "writes.resumed");
}

async fn a_pause_needs_a_reason() {
    let db = TestDb::new().await;
    let err = db
        .store
        .pause_tenant_writes(&scope("us-acme"), "token:tok_1", "  ")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err}");
    let err = db
        .store
        .set_platform_writes(true, "operator:ana", "")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err}");
}

async fn a_meter_grants_up_to_its_limit_and_counts_refusals() {
    let db = TestDb::new().await;
    let acme = scope("us-acme");
    for _ in 0..2 {
        let r = db
            .store
            .reserve_budget(&acme, &[ask("llm.calls", 2, 1)])
            .await;
        assert_eq!(r.unwrap(), Reservation::Granted);
    }
    for n in 1..=2 {
        match db
            .store
            .reserve_budget(&acme, &[ask("llm.calls", 2, 1)])
            .await
            .unwrap()
        {
            Reservation::Refused {
                used,
                refused,
                meter,
                ..
            } => {
                assert_eq!((meter.as_str(), used, refused), ("llm.calls", 2, n));
            }
            other => panic!("{other:?}"),
        }
    }
    let other_window = MeterAsk {
        window_start: NOW_WINDOW + 3_600_000,
        ..ask("llm.calls", 2, 1)
    };
    assert_eq!(
        db.store
            .reserve_budget(&acme, &[other_window])
            .await
            .unwrap(),
        Reservation::Granted,
        "a new window starts empty"
    );
    assert_eq!(
        db.store
            .reserve_budget(&scope("eu-beta"), &[ask("llm.calls", 2, 1)])
            .await
            .unwrap(),
        Reservation::Granted,
        "meters are per tenant"
    );
}

async fn a_reservation_is_all_or_nothing() {
    let db = TestDb::new().await;
    let acme = scope("us-acme");
    db.store
        .reserve_budget(&acme, &[ask("llm.tokens", 100, 90)])
        .await
        .unwrap();
    let both = [ask("llm.calls", 10, 1), ask("llm.tokens", 100, 20)];
    let r = db.store.reserve_budget(&acme, &both).await.unwrap();
    assert!(
        matches!(r, Reservation::Refused { ref meter, .. } if meter == "llm.tokens"),
        "{r:?}"
    );
    let usage = db.store.budget_usage(&acme, 0).await.unwrap();
    let calls = usage.iter().find(|u| u.meter == "llm.calls");
    assert!(
        calls.is_none_or(|c| c.used == 0),
        "the granted meter rolled back: {usage:?}"
    );

    db.store
        .charge_budget(&acme, "llm.tokens", NOW_WINDOW, -50)
        .await
        .unwrap();
    db.store
        .charge_budget(&acme, "llm.tokens", NOW_WINDOW, -500)
        .await
        .unwrap();
    let usage = db.store.budget_usage(&acme, 0).await.unwrap();
    let tokens = usage.iter().find(|u| u.meter == "llm.tokens").unwrap();
    assert_eq!(tokens.used, 0, "a settlement never goes below zero");
    db.store
        .charge_budget(&acme, "llm.tokens", NOW_WINDOW, 40)
        .await
        .unwrap();
    let usage = db.store.budget_usage(&acme, 0).await.unwrap();
    assert_eq!(
        usage.iter().find(|u| u.meter == "llm.tokens").unwrap().used,
        40
    );
}

async fn concurrent_asks_never_overdraw_a_meter() {
    let db = TestDb::new().await;
    let acme = scope("us-acme");
    let asks = (0..8).map(|_| {
        let store = db.store.clone();
        let acme = acme.clone();
        tokio::spawn(async move { store.reserve_budget(&acme, &[ask("runs.src", 3, 1)]).await })
    });
    let mut granted = 0;
    for task in asks {
        if task.await.unwrap().unwrap() == Reservation::Granted {
            granted += 1;
        }
    }
    assert_eq!(granted, 3, "exactly the limit is granted");
    let usage = db.store.budget_usage(&acme, 0).await.unwrap();
    assert_eq!(usage[0].used, 3);
    assert_eq!(usage[0].refused, 5);
}

async fn old_windows_are_removed_as_new_ones_are_used_at_most_every_ten_minutes() {
    let db = TestDb::new().await;
    let acme = scope("us-acme");
    let old = MeterAsk {
        window_start: 0,
        ..ask("llm.calls", 5, 1)
    };
    db.store.reserve_budget(&acme, &[old]).await.unwrap();
    let now = db.clock_ms();
    let current = MeterAsk {
        window_start: now,
        ..ask("llm.calls", 5, 1)
    };
    db.store
        .reserve_budget(&acme, std::slice::from_ref(&current))
        .await
        .unwrap();
    let usage = db.store.budget_usage(&acme, 0).await.unwrap();
    assert_eq!(
        usage.len(),
        2,
        "within ten minutes of the last removal nothing is removed: {usage:?}"
    );
    db.clock.advance_millis(10 * 60_000);
    db.store.reserve_budget(&acme, &[current]).await.unwrap();
    let usage = db.store.budget_usage(&acme, 0).await.unwrap();
    assert_eq!(usage.len(), 1, "{usage:?}");
    assert_eq!((usage[0].window_start, usage[0].used), (now, 2));
}

/// A step can carry meter changes (a triage's token settlement): they land with the step, in
/// its transaction, and not at all when the step is refused; a charge that would pass the
/// largest count stops there instead of failing or turning into something unreadable.
async fn a_step_settles_its_meters_in_its_own_transaction() {
    let db = TestDb::new().await;
    let acme = scope("us-acme");
    let run = db.intake("us-acme").await;
    let charge = |meter: &str, delta: i64| MeterCharge {
        meter: meter.into(),
        window_start: NOW_WINDOW,
        delta,
    };
    let granted = db
        .store
        .reserve_budget(
            &acme,
            &[
                ask("llm.tokens.day", 1000, 600),
                ask("llm.tokens.hour", 1000, 600),
            ],
        )
        .await
        .unwrap();
    assert_eq!(granted, Reservation::Granted);
    let mut triaged = step(run, 1, "deciding");
    triaged.charges = vec![
        charge("llm.tokens.hour", -450),
        charge("llm.tokens.day", -450),
    ];
    db.store.append_step(&acme, triaged.clone()).await.unwrap();
    // The same step again: the journal moved on, so it is refused and charges nothing.
    let err = db.store.append_step(&acme, triaged).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    let mut bad = step(run, 2, "deciding");
    bad.charges = vec![charge("bad\nmeter", 5)];
    let err = db.store.append_step(&acme, bad).await.unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err}");
    let used = |usage: &[steward_persistence::MeterUsage], meter: &str| {
        usage.iter().find(|u| u.meter == meter).map(|u| u.used)
    };
    let usage = db.store.budget_usage(&acme, 0).await.unwrap();
    assert_eq!(
        (
            used(&usage, "llm.tokens.hour"),
            used(&usage, "llm.tokens.day")
        ),
        (Some(150), Some(150)),
        "settled once, to the 150 tokens used"
    );
    assert_eq!(db.store.steps(&acme, run).await.unwrap().len(), 2);

    let mut huge = step(run, 2, "deciding");
    huge.charges = vec![charge("llm.tokens.hour", i64::MAX)];
    db.store.append_step(&acme, huge).await.unwrap();
    db.store
        .charge_budget(&acme, "llm.tokens.hour", NOW_WINDOW, i64::MAX)
        .await
        .unwrap();
    let usage = db.store.budget_usage(&acme, 0).await.unwrap();
    assert_eq!(used(&usage, "llm.tokens.hour"), Some(i64::MAX));
    // The window still reads back, and still takes part in a batch's reservations.
    let refused = db
        .store
        .reserve_budget(&acme, &[ask("llm.tokens.hour", 1000, 1)])
        .await
        .unwrap();
    assert!(
        matches!(refused, Reservation::Refused { .. }),
        "{refused:?}"
    );
}

crate::support::conformance!(
    a_step_settles_its_meters_in_its_own_transaction,
    a_tenant_pause_stops_only_that_tenant_and_is_audited,
    the_platform_pause_reaches_every_tenant_and_every_chain,
    a_pause_needs_a_reason,
    a_meter_grants_up_to_its_limit_and_counts_refusals,
    a_reservation_is_all_or_nothing,
    concurrent_asks_never_overdraw_a_meter,
    old_windows_are_removed_as_new_ones_are_used_at_most_every_ten_minutes,
);

/// The platform pause is no tenant's row: the service role reads it, only the platform role
/// changes it.
async fn the_service_role_reads_but_cannot_change_the_platform_pause() {
    let db = TestDb::new().await;
    let mut conn = crate::support::service_connection(&db).await;
    sqlx::query("SELECT id FROM platform_write_pause")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    let err = sqlx::query(
        "INSERT INTO platform_write_pause (id, reason, actor, paused_at) VALUES (1, 'x', 'y', 0)",
    )
    .execute(&mut conn)
    .await
    .unwrap_err();
    assert!(err.to_string().contains("permission denied"), "{err}");
}

mod postgres_only {
    #[tokio::test]
    async fn the_service_role_reads_but_cannot_change_the_platform_pause() {
        crate::support::on(
            steward_persistence::Backend::Postgres,
            super::the_service_role_reads_but_cannot_change_the_platform_pause(),
        )
        .await;
    }
}
