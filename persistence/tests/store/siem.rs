//! SIEM streams on each backend: the cursor only moves forward and never past the chain's
//! head, failures are recorded without moving it, a stream survives a restart, and one
//! tenant's stream is invisible to another (on PostgreSQL also to a query that forgot its
//! tenant predicate).

use steward_persistence::{SiemState, StoreError};

use crate::support::{TestDb, audit, scope, service_connection};

async fn append(db: &TestDb, tenant: &str, n: usize) {
    for i in 0..n {
        db.store
            .append_audit(&scope(tenant), audit(&format!("test.entry{i}"), None))
            .await
            .unwrap();
    }
}

async fn the_cursor_only_moves_forward_and_never_past_the_head() {
    let mut db = TestDb::new().await;
    let acme = scope("us-acme");
    assert!(db.store.siem_stream(&acme).await.unwrap().is_none());
    assert!(!db.store.advance_siem_cursor(&acme, 0).await.unwrap());

    let s = db
        .store
        .put_siem_stream(&acme, "https://siem.example/ingest", 1, "token:t")
        .await
        .unwrap();
    assert_eq!((s.delivered_seq, s.state), (0, SiemState::Active));
    // `siem.configured` is itself an entry, the first of the chain.
    assert_eq!(db.store.audit_head_seq(&acme).await.unwrap(), 1);
    let first = db.store.audit_entries(&acme, 0, 10).await.unwrap();
    assert_eq!(first[0].kind, "siem.configured");
    assert!(!first[0].body.contains("whsec_"));
    append(&db, "us-acme", 4).await;

    // A batch is pending until acknowledged; a second cannot replace it.
    assert!(db.store.set_siem_pending(&acme, 2).await.unwrap());
    assert!(
        !db.store.set_siem_pending(&acme, 5).await.unwrap(),
        "one pending batch"
    );
    let pending = db.store.siem_stream(&acme).await.unwrap().unwrap();
    assert_eq!(pending.pending_seq, Some(2));
    assert!(matches!(
        db.store.set_siem_pending(&acme, 9).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(db.store.advance_siem_cursor(&acme, 3).await.unwrap());
    let advanced = db.store.siem_stream(&acme).await.unwrap().unwrap();
    assert_eq!(advanced.pending_seq, None, "acknowledged past it");
    assert!(
        !db.store.set_siem_pending(&acme, 3).await.unwrap(),
        "not past the cursor"
    );
    assert!(
        !db.store.advance_siem_cursor(&acme, 2).await.unwrap(),
        "no way back"
    );
    assert!(
        !db.store.advance_siem_cursor(&acme, 3).await.unwrap(),
        "no move, no change"
    );
    let past = db.store.advance_siem_cursor(&acme, 6).await;
    assert!(matches!(past, Err(StoreError::Invalid(_))), "{past:?}");
    assert_eq!(
        db.store
            .siem_stream(&acme)
            .await
            .unwrap()
            .unwrap()
            .delivered_seq,
        3
    );

    assert!(
        db.store
            .note_siem_failure(&acme, &"x\n".repeat(600))
            .await
            .unwrap()
    );
    assert!(
        db.store
            .note_siem_failure(&acme, "the SIEM answered 503")
            .await
            .unwrap()
    );
    let failing = db.store.siem_stream(&acme).await.unwrap().unwrap();
    assert_eq!(failing.state, SiemState::Failing);
    assert_eq!((failing.failures, failing.delivered_seq), (2, 3));
    assert_eq!(failing.last_error.as_deref(), Some("the SIEM answered 503"));

    // A new URL (a rotation) keeps the cursor and clears the failure.
    db.store
        .put_siem_stream(&acme, "https://siem2.example/ingest", 2, "token:t")
        .await
        .unwrap();
    db.restart().await;
    let again = db.store.siem_stream(&acme).await.unwrap().unwrap();
    assert_eq!(again.url, "https://siem2.example/ingest");
    assert_eq!((again.delivered_seq, again.state), (3, SiemState::Active));
    assert_eq!((again.failures, again.last_error), (0, None));
    assert!(db.store.advance_siem_cursor(&acme, 6).await.unwrap());
    let done = db.store.siem_stream(&acme).await.unwrap().unwrap();
    assert_eq!(done.delivered_seq, 6);
    assert!(done.last_delivered_at.is_some());

    assert!(db.store.delete_siem_stream(&acme, "token:t").await.unwrap());
    assert!(!db.store.delete_siem_stream(&acme, "token:t").await.unwrap());
    assert!(db.store.siem_stream(&acme).await.unwrap().is_none());
    let kinds: Vec<String> = db
        .store
        .audit_entries(&acme, 6, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(kinds, ["siem.removed"]);
    assert!(db.store.siem_tenants().await.unwrap().is_empty());
    assert!(
        db.store
            .verify_audit(&acme)
            .await
            .unwrap()
            .first_bad
            .is_none()
    );
}

async fn bad_urls_are_refused_by_the_store() {
    let db = TestDb::new().await;
    let acme = scope("us-acme");
    let long = format!("https://siem.example/{}", "a".repeat(2048));
    for bad in [
        "",
        "https://siem.example/a b",
        "https://siem.example/\u{e9}",
        &long,
    ] {
        let r = db.store.put_siem_stream(&acme, bad, 1, "token:t").await;
        assert!(matches!(r, Err(StoreError::Invalid(_))), "{bad}: {r:?}");
    }
    let unknown = scope("us-nobody");
    let r = db
        .store
        .put_siem_stream(&unknown, "https://siem.example/", 1, "token:t")
        .await;
    assert!(matches!(r, Err(StoreError::NotFound(_))), "{r:?}");
    assert!(db.store.siem_stream(&acme).await.unwrap().is_none());
}

async fn streams_are_isolated_between_tenants() {
    let db = TestDb::new().await;
    let (acme, beta) = (scope("us-acme"), scope("eu-beta"));
    db.store
        .put_siem_stream(&acme, "https://siem.acme.example/", 1, "token:a")
        .await
        .unwrap();
    append(&db, "us-acme", 3).await;
    append(&db, "eu-beta", 2).await;
    assert!(db.store.siem_stream(&beta).await.unwrap().is_none());
    assert!(!db.store.advance_siem_cursor(&beta, 1).await.unwrap());
    assert!(!db.store.note_siem_failure(&beta, "nope").await.unwrap());
    assert!(!db.store.delete_siem_stream(&beta, "token:b").await.unwrap());
    assert_eq!(db.store.audit_head_seq(&beta).await.unwrap(), 2);
    assert_eq!(db.store.audit_head_seq(&acme).await.unwrap(), 4);

    db.store
        .put_siem_stream(&beta, "https://siem.beta.example/", 1, "token:b")
        .await
        .unwrap();
    assert!(db.store.advance_siem_cursor(&acme, 4).await.unwrap());
    // Beta's head is 3 now: acme's cursor of 4 is nothing to beta.
    let b = db.store.siem_stream(&beta).await.unwrap().unwrap();
    assert_eq!(
        (b.delivered_seq, b.url.as_str()),
        (0, "https://siem.beta.example/")
    );
    assert!(matches!(
        db.store.advance_siem_cursor(&beta, 4).await,
        Err(StoreError::Invalid(_))
    ));
    let tenants: Vec<String> = db
        .store
        .siem_tenants()
        .await
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(tenants, ["eu-beta", "us-acme"]);

    if db.backend() == steward_persistence::Backend::Postgres {
        // The service role with one tenant named sees only that tenant's row, even when the
        // query forgot its predicate, and with none named sees nothing.
        let mut conn = service_connection(&db).await;
        let none: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM siem_streams")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(none, 0);
        let mut tx = sqlx::Connection::begin(&mut conn).await.unwrap();
        sqlx::query("SELECT set_config('steward.tenant', 'us-acme', true)")
            .execute(&mut *tx)
            .await
            .unwrap();
        let urls: Vec<String> = sqlx::query_scalar("SELECT url FROM siem_streams")
            .fetch_all(&mut *tx)
            .await
            .unwrap();
        assert_eq!(urls, ["https://siem.acme.example/"]);
        let moved = sqlx::query("UPDATE siem_streams SET delivered_seq = 99")
            .execute(&mut *tx)
            .await
            .unwrap();
        assert_eq!(moved.rows_affected(), 1, "only acme's row");
        tx.rollback().await.unwrap();
    }
}

crate::support::conformance!(
    the_cursor_only_moves_forward_and_never_past_the_head,
    bad_urls_are_refused_by_the_store,
    streams_are_isolated_between_tenants,
);
