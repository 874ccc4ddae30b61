//! The operator audit log and break-glass grants in the database: appends, paging,
//! verification, tampering behind the store's back, the grant lifecycle and what is kept.

use serde_json::json;
use sqlx::{AnyConnection, Executor};
use steward_core::Clock as _;
use steward_persistence::{
    Backend, BreakGlassUse, GENESIS_HASH, GrantState, NewBreakGlass, StoreError,
    operator_entry_hash,
};

use crate::support::TestDb;

/// A raw connection with the operator audit log's append-only triggers removed, as an
/// attacker with full control of the database has.
async fn attacker(db: &TestDb) -> AnyConnection {
    let mut raw = db.raw().await;
    for trigger in [
        "operator_audit_log_no_update",
        "operator_audit_log_no_delete",
    ] {
        let sql = match db.backend() {
            Backend::Sqlite => format!("DROP TRIGGER {trigger}"),
            Backend::Postgres => format!("DROP TRIGGER {trigger} ON operator_audit_log"),
        };
        raw.execute(sql.as_str()).await.unwrap();
    }
    raw
}

async fn with_entries(n: usize) -> TestDb {
    let db = TestDb::new().await;
    for i in 0..n {
        db.store
            .append_operator_audit("operator.signed_in", "ana@example.com", json!({"i": i}))
            .await
            .unwrap();
    }
    db
}

async fn first_bad(db: &TestDb) -> Option<u64> {
    let report = db.store.verify_operator_audit().await.unwrap();
    report.first_bad.map(|b| b.seq)
}

fn new_grant(id: &str, minutes: u32) -> NewBreakGlass {
    NewBreakGlass {
        id: id.into(),
        token_sha256: format!("{:0>64}", id.trim_start_matches("bg_")),
        person: "ana@example.com".into(),
        reason: "identity provider down".into(),
        opened_by: "operator".into(),
        minutes,
    }
}

async fn appended_entries_form_a_verifying_chain() {
    let db = with_entries(5).await;
    let entries = db.store.operator_audit(0, 100).await.unwrap();
    assert_eq!(
        entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    assert_eq!(entries[0].prev_hash, GENESIS_HASH);
    for pair in entries.windows(2) {
        assert_eq!(pair[1].prev_hash, pair[0].hash);
    }
    assert!(entries.iter().all(|e| operator_entry_hash(e) == e.hash));
    assert_eq!(entries[2].detail, r#"{"i":2}"#);

    let report = db.store.verify_operator_audit().await.unwrap();
    assert_eq!((report.entries, report.first_bad), (5, None));
    assert_eq!(report.head_hash, entries[4].hash);

    let empty = TestDb::new().await;
    let report = empty.store.verify_operator_audit().await.unwrap();
    assert_eq!(
        (report.entries, report.head_hash.as_str(), report.first_bad),
        (0, GENESIS_HASH, None)
    );
}

async fn entries_page_by_seq() {
    let db = with_entries(7).await;
    let page = db.store.operator_audit(2, 3).await.unwrap();
    assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 4, 5]);
    assert!(db.store.operator_audit(7, 10).await.unwrap().is_empty());
    assert_eq!(db.store.operator_audit(0, 0).await.unwrap().len(), 1);
}

async fn concurrent_appends_get_consecutive_seqs() {
    let db = TestDb::new().await;
    let second = db.second_process().await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let store = if i % 2 == 0 {
            db.store.clone()
        } else {
            second.clone()
        };
        tasks.push(tokio::spawn(async move {
            store
                .append_operator_audit("operator.signed_in", "ana", json!({"i": i}))
                .await
                .unwrap()
        }));
    }
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.push(t.await.unwrap());
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=20).collect::<Vec<u64>>());
    assert_eq!(first_bad(&db).await, None);
}

async fn editing_any_column_of_an_entry_is_caught_at_that_entry() {
    let edits = [
        "detail = '{\"i\":99}'",
        "kind = 'break_glass.closed'",
        "at = at + 1",
        "actor = 'mallory'",
        "prev_hash = hash",
        "hash = prev_hash",
    ];
    for edit in edits {
        let db = with_entries(5).await;
        let mut raw = attacker(&db).await;
        sqlx::query(&format!(
            "UPDATE operator_audit_log SET {edit} WHERE seq = 3"
        ))
        .execute(&mut raw)
        .await
        .unwrap();
        assert_eq!(first_bad(&db).await, Some(3), "{edit}");
    }
}

async fn removing_entries_is_caught_in_the_middle_and_at_the_end() {
    let db = with_entries(5).await;
    let mut raw = attacker(&db).await;
    sqlx::query("DELETE FROM operator_audit_log WHERE seq = 2")
        .execute(&mut raw)
        .await
        .unwrap();
    assert_eq!(first_bad(&db).await, Some(3));

    // Cutting the last entries leaves a chain that verifies on its own; the head does not.
    let db = with_entries(5).await;
    let mut raw = attacker(&db).await;
    sqlx::query("DELETE FROM operator_audit_log WHERE seq >= 4")
        .execute(&mut raw)
        .await
        .unwrap();
    let report = db.store.verify_operator_audit().await.unwrap();
    assert_eq!(report.entries, 3);
    let bad = report.first_bad.expect("a cut tail is caught");
    assert_eq!(bad.seq, 4);
    assert!(bad.reason.contains("head records seq 5"), "{}", bad.reason);
}

async fn the_log_is_append_only_even_for_a_superuser_connection() {
    let db = with_entries(2).await;
    let mut raw = db.raw().await;
    for sql in [
        "UPDATE operator_audit_log SET detail = '{}'",
        "DELETE FROM operator_audit_log",
    ] {
        let err = sqlx::query(sql).execute(&mut raw).await.unwrap_err();
        assert!(err.to_string().contains("append-only"), "{err}");
    }
}

async fn the_service_role_cannot_reach_the_tables_without_the_platform_role() {
    if crate::support::backend() != Backend::Postgres {
        return;
    }
    let db = with_entries(1).await;
    let mut service = crate::support::service_connection(&db).await;
    for sql in [
        "SELECT * FROM operator_audit_log",
        "SELECT * FROM break_glass_grants",
        "UPDATE operator_audit_head SET seq = 0",
    ] {
        let err = sqlx::query(sql).execute(&mut service).await.unwrap_err();
        assert!(
            err.to_string().contains("permission denied"),
            "{sql}: {err}"
        );
    }
    service
        .execute("BEGIN; SET LOCAL ROLE steward_platform")
        .await
        .unwrap();
    for sql in [
        "UPDATE operator_audit_log SET detail = '{}'",
        "DELETE FROM operator_audit_log",
        "DELETE FROM break_glass_grants",
    ] {
        let err = sqlx::query(sql).execute(&mut service).await.unwrap_err();
        assert!(
            err.to_string().contains("permission denied")
                || err.to_string().contains("append-only"),
            "{sql}: {err}"
        );
        service
            .execute("ROLLBACK; BEGIN; SET LOCAL ROLE steward_platform")
            .await
            .unwrap();
    }
}

async fn malformed_entries_are_refused_and_details_are_redacted() {
    let db = TestDb::new().await;
    let bad = [
        ("", "ana", json!({})),
        ("Break Glass", "ana", json!({})),
        ("x", "", json!({})),
        ("x", "a\u{1b}[31m", json!({})),
        ("x", "ana", json!("d".repeat(65 * 1024))),
    ];
    for (kind, actor, detail) in bad {
        assert!(
            matches!(
                db.store.append_operator_audit(kind, actor, detail).await,
                Err(StoreError::Invalid(_))
            ),
            "{kind:?} {actor:?}"
        );
    }
    let token = format!("sbg_{}", "ab".repeat(32));
    db.store
        .append_operator_audit(
            "operator.sign_in_refused",
            "unknown",
            json!({"why": format!("presented {token}"), "id_token": "eyJhbGciOi.x.y"}),
        )
        .await
        .unwrap();
    let entry = &db.store.operator_audit(0, 10).await.unwrap()[0];
    assert!(!entry.detail.contains(&token), "{}", entry.detail);
    assert!(!entry.detail.contains("eyJhbGciOi"), "{}", entry.detail);
    assert_eq!(first_bad(&db).await, None);
}

async fn a_grant_lives_until_it_expires_or_is_closed_and_each_step_is_audited() {
    let db = TestDb::new().await;
    let opened = db
        .store
        .open_break_glass(&new_grant("bg_1", 30))
        .await
        .unwrap();
    assert_eq!(opened.expires_at - opened.opened_at, 30 * 60_000);
    let now = || db.clock.now_millis();
    assert_eq!(opened.state(now()), GrantState::Active);
    assert_eq!(db.store.active_break_glass_count().await.unwrap(), 1);

    let hash = new_grant("bg_1", 30).token_sha256;
    let (found, stored) = db
        .store
        .break_glass_by_token_sha256(&hash)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((found.id.as_str(), stored), ("bg_1", hash));
    assert!(
        db.store
            .break_glass_by_token_sha256(&"f".repeat(64))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        db.store
            .break_glass_by_token_sha256("not hex")
            .await
            .unwrap()
            .is_none()
    );

    let used = BreakGlassUse {
        method: "GET".into(),
        path: "/v1/ops/runs".into(),
        status: 200,
    };
    db.store
        .record_break_glass_use("bg_1", &used)
        .await
        .unwrap();
    assert!(matches!(
        db.store.record_break_glass_use("bg_nope", &used).await,
        Err(StoreError::NotFound(_))
    ));
    // Not yet expired: nothing to note.
    assert!(
        !db.store
            .note_break_glass_expired("bg_1", "GET", "/v1/ops/runs")
            .await
            .unwrap()
    );

    db.clock.advance_millis(30 * 60_000);
    assert_eq!(db.store.active_break_glass_count().await.unwrap(), 0);
    let grant = db.store.break_glass_grant("bg_1").await.unwrap().unwrap();
    assert_eq!((grant.state(now()), grant.uses), (GrantState::Expired, 1));
    assert!(
        db.store
            .note_break_glass_expired("bg_1", "GET", "/v1/ops/runs")
            .await
            .unwrap()
    );
    assert!(
        !db.store
            .note_break_glass_expired("bg_1", "GET", "/v1/ops/runs")
            .await
            .unwrap(),
        "the expiry is recorded once"
    );
    assert!(matches!(
        db.store.close_break_glass("bg_1", "operator").await,
        Err(StoreError::Conflict(_))
    ));

    db.store
        .open_break_glass(&new_grant("bg_2", 5))
        .await
        .unwrap();
    let closed = db
        .store
        .close_break_glass("bg_2", "operator")
        .await
        .unwrap();
    assert_eq!(closed.state(now()), GrantState::Closed);
    assert!(matches!(
        db.store.close_break_glass("bg_2", "operator").await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        db.store.close_break_glass("bg_3", "operator").await,
        Err(StoreError::NotFound(_))
    ));

    let kinds: Vec<String> = db
        .store
        .operator_audit(0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            "break_glass.opened",
            "break_glass.used",
            "break_glass.expired",
            "break_glass.opened",
            "break_glass.closed",
        ]
    );
    let entries = db.store.operator_audit(0, 100).await.unwrap();
    for e in &entries {
        assert!(e.detail.contains("ana@example.com"), "{}", e.detail);
        assert!(e.detail.contains("identity provider down"), "{}", e.detail);
    }
    assert!(entries[1].detail.contains("\"status\":200"));
    assert_eq!(first_bad(&db).await, None);

    let listed = db.store.break_glass_grants(10).await.unwrap();
    assert_eq!(
        listed.iter().map(|g| g.id.as_str()).collect::<Vec<_>>(),
        ["bg_2", "bg_1"]
    );
}

async fn grants_are_refused_outside_their_bounds() {
    let db = TestDb::new().await;
    let mut bad = vec![
        new_grant("bg_1", 0),
        new_grant("bg_1", 241),
        NewBreakGlass {
            token_sha256: "sbg_plain_token".into(),
            ..new_grant("bg_1", 5)
        },
        NewBreakGlass {
            person: String::new(),
            ..new_grant("bg_1", 5)
        },
        NewBreakGlass {
            reason: " ".into(),
            ..new_grant("bg_1", 5)
        },
    ];
    bad.push(NewBreakGlass {
        reason: "r".repeat(4001),
        ..new_grant("bg_1", 5)
    });
    for new in &bad {
        assert!(
            matches!(
                db.store.open_break_glass(new).await,
                Err(StoreError::Invalid(_))
            ),
            "{new:?}"
        );
    }
    db.store
        .open_break_glass(&new_grant("bg_1", 5))
        .await
        .unwrap();
    let same_token = NewBreakGlass {
        id: "bg_other".into(),
        ..new_grant("bg_1", 5)
    };
    assert!(matches!(
        db.store.open_break_glass(&same_token).await,
        Err(StoreError::Conflict(_))
    ));
    // Nothing refused reached the log.
    assert_eq!(db.store.operator_audit(0, 100).await.unwrap().len(), 1);
}

async fn no_token_is_kept_only_its_hash() {
    let db = TestDb::new().await;
    let token = format!("sbg_{}", "c3".repeat(32));
    let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(token.as_bytes()));
    let new = NewBreakGlass {
        token_sha256: hash.clone(),
        ..new_grant("bg_1", 5)
    };
    db.store.open_break_glass(&new).await.unwrap();
    let used = BreakGlassUse {
        method: "GET".into(),
        path: "/v1/ops/actors".into(),
        status: 200,
    };
    db.store
        .record_break_glass_use("bg_1", &used)
        .await
        .unwrap();
    let stored = db.stored_text().await;
    assert!(!stored.contains(&token));
    assert!(!stored.contains(&token[4..]));
    assert!(stored.contains(&hash));
    let entries = db.store.operator_audit(0, 10).await.unwrap();
    assert!(entries.iter().all(|e| !e.detail.contains(&hash)));
}

crate::support::conformance!(
    appended_entries_form_a_verifying_chain,
    entries_page_by_seq,
    concurrent_appends_get_consecutive_seqs,
    editing_any_column_of_an_entry_is_caught_at_that_entry,
    removing_entries_is_caught_in_the_middle_and_at_the_end,
    the_log_is_append_only_even_for_a_superuser_connection,
    the_service_role_cannot_reach_the_tables_without_the_platform_role,
    malformed_entries_are_refused_and_details_are_redacted,
    a_grant_lives_until_it_expires_or_is_closed_and_each_step_is_audited,
    grants_are_refused_outside_their_bounds,
    no_token_is_kept_only_its_hash,
);
