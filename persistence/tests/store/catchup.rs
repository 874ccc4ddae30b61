//! The catch-up pass's state on each backend: the watermark only moves forward and survives a
//! restart, one tenant's watermark is invisible to another (on PostgreSQL also to a query that
//! forgot its tenant predicate), and a run covers an incident change it was created after or
//! wrote after.

use steward_persistence::{Covered, StoreError};

use crate::support::{TestDb, audit, scope, service_connection};

const A: &str = "a9e30c7dc61122760116894de7bcc7bd";
const B: &str = "0000000000000000000000000000000b";
const C: &str = "0000000000000000000000000000000c";
const T: i64 = 1_767_225_600_000;

fn ids(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

async fn the_watermark_only_moves_forward() {
    let mut db = TestDb::new().await;
    let acme = scope("us-acme");
    assert!(db.store.catchup_watermark(&acme).await.unwrap().is_none());

    let w = db
        .store
        .advance_catchup_watermark(&acme, T, &ids(&[B]))
        .await
        .unwrap();
    assert_eq!((w.updated_ms, w.sys_ids.clone()), (T, ids(&[B])));
    // The same second adds ids, kept sorted and once each.
    let w = db
        .store
        .advance_catchup_watermark(&acme, T, &ids(&[A, B]))
        .await
        .unwrap();
    assert_eq!(w.sys_ids, ids(&["0000000000000000000000000000000b", A]));
    assert!(w.covers(A, T) && w.covers(C, T - 1000) && !w.covers(C, T));
    assert!(!w.covers(A, T + 1000));
    // An older time changes nothing.
    let w = db
        .store
        .advance_catchup_watermark(&acme, T - 1000, &ids(&[C]))
        .await
        .unwrap();
    assert_eq!((w.updated_ms, w.sys_ids.len()), (T, 2));
    // A newer second replaces the ids.
    db.store
        .advance_catchup_watermark(&acme, T + 1000, &ids(&[C]))
        .await
        .unwrap();
    db.restart().await;
    let stored = db.store.catchup_watermark(&acme).await.unwrap().unwrap();
    assert_eq!((stored.updated_ms, stored.sys_ids), (T + 1000, ids(&[C])));

    // Bad input is refused and changes nothing.
    for bad in [
        db.store
            .advance_catchup_watermark(&acme, T + 5000, &ids(&["not-a-sys-id"]))
            .await,
        db.store.advance_catchup_watermark(&acme, -1, &[]).await,
    ] {
        assert!(matches!(bad, Err(StoreError::Invalid(_))), "{bad:?}");
    }
    let stored = db.store.catchup_watermark(&acme).await.unwrap().unwrap();
    assert_eq!(stored.updated_ms, T + 1000);
    // An unregistered tenant gets no row.
    let r = db
        .store
        .advance_catchup_watermark(&scope("us-nobody"), T, &[])
        .await;
    assert!(matches!(r, Err(StoreError::NotFound(_))), "{r:?}");
}

async fn watermarks_are_isolated_between_tenants() {
    let db = TestDb::new().await;
    let (acme, beta) = (scope("us-acme"), scope("eu-beta"));
    db.store
        .advance_catchup_watermark(&acme, T + 60_000, &ids(&[A]))
        .await
        .unwrap();
    assert!(db.store.catchup_watermark(&beta).await.unwrap().is_none());
    // Beta's watermark starts where beta says, not past acme's.
    let b = db
        .store
        .advance_catchup_watermark(&beta, T, &[])
        .await
        .unwrap();
    assert_eq!((b.updated_ms, b.sys_ids.len()), (T, 0));
    let a = db.store.catchup_watermark(&acme).await.unwrap().unwrap();
    assert_eq!((a.updated_ms, a.sys_ids), (T + 60_000, ids(&[A])));

    if db.backend() == steward_persistence::Backend::Postgres {
        let mut conn = service_connection(&db).await;
        let none: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM catchup_watermarks")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(none, 0, "no tenant named, no rows");
        let mut tx = sqlx::Connection::begin(&mut conn).await.unwrap();
        sqlx::query("SELECT set_config('steward.tenant', 'eu-beta', true)")
            .execute(&mut *tx)
            .await
            .unwrap();
        let moved = sqlx::query("UPDATE catchup_watermarks SET updated_ms = 0")
            .execute(&mut *tx)
            .await
            .unwrap();
        assert_eq!(moved.rows_affected(), 1, "only beta's row");
        tx.rollback().await.unwrap();
    }
}

async fn a_run_covers_changes_it_was_created_or_wrote_after() {
    let db = TestDb::new().await;
    let (acme, beta) = (scope("us-acme"), scope("eu-beta"));
    let created = db.clock_ms();
    // The support run names incident INC0010001 by number.
    let run = db.intake("us-acme").await;
    let covered = db
        .store
        .catchup_covered(&acme, A, "INC0010001", created - 1000)
        .await
        .unwrap();
    assert_eq!(covered, Some(Covered::ByRun(run)));
    assert_eq!(
        db.store
            .catchup_covered(&acme, A, "INC0010001", created + 5000)
            .await
            .unwrap(),
        None,
        "a change after the run is not covered"
    );
    assert_eq!(
        db.store
            .catchup_covered(&beta, A, "INC0010001", created - 1000)
            .await
            .unwrap(),
        None,
        "another tenant's run covers nothing"
    );
    assert_eq!(
        db.store
            .catchup_covered(&acme, B, "INC0010002", created - 1000)
            .await
            .unwrap(),
        None
    );

    // The run writes ten seconds later: a change up to then is its own write.
    db.clock.advance_millis(10_000);
    let mut written = crate::support::step(run, 1, "closing");
    written.kind = "written".into();
    written.audit = vec![audit("run.written", Some(run))];
    db.store.append_step(&acme, written).await.unwrap();
    let covered = db
        .store
        .catchup_covered(&acme, A, "INC0010001", created + 9000)
        .await
        .unwrap();
    assert_eq!(covered, Some(Covered::OwnWrite(run)));
    assert_eq!(
        db.store
            .catchup_covered(&acme, A, "INC0010001", created + 11_000)
            .await
            .unwrap(),
        None,
        "an edit after Steward's write is a person's"
    );
}

crate::support::conformance!(
    the_watermark_only_moves_forward,
    watermarks_are_isolated_between_tenants,
    a_run_covers_changes_it_was_created_or_wrote_after,
);
