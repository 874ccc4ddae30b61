//! The audit chain in the database: appends, paging, verification and tampering behind the
//! store's back.

use proptest::prelude::*;
use serde_json::json;
use steward_persistence::{AuditDraft, GENESIS_HASH, StoreError, entry_hash};

use crate::support::{TestDb, audit, scope};
use steward_persistence::Backend;

async fn with_entries(n: usize) -> TestDb {
    let db = TestDb::new().await;
    for i in 0..n {
        let mut draft = audit("run.step", None);
        draft.body = json!({"i": i, "digest": "sha256:00"});
        db.store
            .append_audit(&scope("us-acme"), draft)
            .await
            .unwrap();
    }
    db
}

async fn first_bad(db: &TestDb) -> u64 {
    let report = db.store.verify_audit(&scope("us-acme")).await.unwrap();
    report.first_bad.expect("tampering must be caught").seq
}

async fn appended_entries_form_a_verifying_chain() {
    let db = with_entries(5).await;
    let acme = scope("us-acme");
    let entries = db.store.audit_entries(&acme, 0, 100).await.unwrap();
    assert_eq!(
        entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    assert_eq!(entries[0].prev_hash, GENESIS_HASH);
    for pair in entries.windows(2) {
        assert_eq!(pair[1].prev_hash, pair[0].hash);
    }
    assert!(entries.iter().all(|e| entry_hash(e) == e.hash));
    // Compact JSON, exactly as stored (key order depends on serde_json's features).
    assert!(!entries[2].body.contains(' '), "compact JSON as stored");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&entries[2].body).unwrap(),
        serde_json::json!({"digest": "sha256:00", "i": 2})
    );

    let report = db.store.verify_audit(&acme).await.unwrap();
    assert_eq!((report.entries, report.first_bad), (5, None));
    assert_eq!(report.head_hash, entries[4].hash);
}

async fn an_empty_chain_verifies_to_genesis() {
    let db = TestDb::new().await;
    let report = db.store.verify_audit(&scope("us-acme")).await.unwrap();
    assert_eq!(
        (report.entries, report.head_hash.as_str()),
        (0, GENESIS_HASH)
    );
}

async fn entries_page_by_seq_with_at_most_1000_per_call() {
    let db = with_entries(1003).await;
    let acme = scope("us-acme");
    let page = db.store.audit_entries(&acme, 0, 5000).await.unwrap();
    assert_eq!((page.len(), page[999].seq), (1000, 1000));
    let rest = db.store.audit_entries(&acme, 1000, 5000).await.unwrap();
    assert_eq!(
        rest.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [1001, 1002, 1003]
    );
    assert_eq!(db.store.audit_entries(&acme, 2, 2).await.unwrap()[0].seq, 3);
    assert_eq!(db.store.verify_audit(&acme).await.unwrap().entries, 1003);

    let mut raw = db.attacker().await;
    sqlx::query("UPDATE audit_log SET body = '{}' WHERE seq = 1002")
        .execute(&mut raw)
        .await
        .unwrap();
    let report = db.store.verify_audit(&acme).await.unwrap();
    assert_eq!(
        (report.entries, report.first_bad.unwrap().seq),
        (1001, 1002)
    );
}

async fn concurrent_appends_get_consecutive_seqs() {
    let db = TestDb::new().await;
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let store = db.store.clone();
            tokio::spawn(async move {
                store
                    .append_audit(&scope("us-acme"), audit("x", None))
                    .await
            })
        })
        .collect();
    let mut seqs = Vec::new();
    for task in tasks {
        seqs.push(task.await.unwrap().unwrap());
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=20).collect::<Vec<_>>());
    assert!(
        db.store
            .verify_audit(&scope("us-acme"))
            .await
            .unwrap()
            .first_bad
            .is_none()
    );
}

async fn editing_any_column_of_a_row_is_caught_at_that_row() {
    let edits = [
        "body = '{\"i\":99}'",
        "kind = 'run.approved'",
        "at = at + 1",
        "actor = 'mallory'",
        "run_id = '018f0000-0000-7000-8000-000000000000'",
        "prev_hash = hash",
        "hash = prev_hash",
    ];
    for edit in edits {
        let db = with_entries(5).await;
        let mut raw = db.attacker().await;
        sqlx::query(&format!(
            "UPDATE audit_log SET {edit} WHERE tenant_id = 'us-acme' AND seq = 3"
        ))
        .execute(&mut raw)
        .await
        .unwrap();
        assert_eq!(first_bad(&db).await, 3, "{edit}");
    }
}

async fn a_row_that_no_longer_decodes_is_reported_as_the_break() {
    let db = with_entries(3).await;
    let mut raw = db.attacker().await;
    sqlx::query("UPDATE audit_log SET run_id = 'not-a-uuid' WHERE seq = 2")
        .execute(&mut raw)
        .await
        .unwrap();
    assert_eq!(first_bad(&db).await, 2);
    let listed = db.store.audit_entries(&scope("us-acme"), 0, 10).await;
    assert!(matches!(listed, Err(StoreError::Corrupt(_))));
}

async fn deleting_a_middle_row_is_caught_at_the_next() {
    let db = with_entries(5).await;
    let mut raw = db.attacker().await;
    sqlx::query("DELETE FROM audit_log WHERE seq = 3")
        .execute(&mut raw)
        .await
        .unwrap();
    assert_eq!(first_bad(&db).await, 4);
}

async fn deleting_the_first_row_is_caught() {
    let db = with_entries(3).await;
    let mut raw = db.attacker().await;
    sqlx::query("DELETE FROM audit_log WHERE seq = 1")
        .execute(&mut raw)
        .await
        .unwrap();
    assert_eq!(first_bad(&db).await, 2);
}

async fn swapping_two_rows_is_caught_at_the_first_of_them() {
    let db = with_entries(5).await;
    let mut raw = db.attacker().await;
    for sql in [
        "UPDATE audit_log SET seq = -1 WHERE seq = 2",
        "UPDATE audit_log SET seq = 2 WHERE seq = 3",
        "UPDATE audit_log SET seq = 3 WHERE seq = -1",
    ] {
        sqlx::query(sql).execute(&mut raw).await.unwrap();
    }
    assert_eq!(first_bad(&db).await, 2);
}

async fn the_service_itself_cannot_change_or_delete_audit_rows() {
    let db = with_entries(2).await;
    let mut raw = db.raw().await;
    for sql in ["UPDATE audit_log SET body = '{}'", "DELETE FROM audit_log"] {
        let err = sqlx::query(sql).execute(&mut raw).await.unwrap_err();
        assert!(err.to_string().contains("append-only"), "{err}");
    }
}

async fn malformed_drafts_are_refused() {
    let db = TestDb::new().await;
    let acme = scope("us-acme");
    let drafts = [
        AuditDraft {
            kind: String::new(),
            ..audit("x", None)
        },
        AuditDraft {
            actor: "a\u{1b}[31m".into(),
            ..audit("x", None)
        },
        AuditDraft {
            body: json!("x".repeat(2 * 1024 * 1024)),
            ..audit("x", None)
        },
    ];
    for draft in drafts {
        assert!(matches!(
            db.store.append_audit(&acme, draft).await,
            Err(StoreError::Invalid(_))
        ));
    }
    let ghost = db
        .store
        .append_audit(&scope("us-ghost"), audit("x", None))
        .await;
    assert!(matches!(ghost, Err(StoreError::NotFound(_))));
}

const TENANTS: [&str; 3] = ["us-acme", "eu-beta", "us-gamma"];

/// Appends `ops` (tenant index, body number), returning how many entries each tenant got.
async fn append_all(db: &TestDb, ops: &[(usize, u32)]) -> [u64; 3] {
    let mut counts = [0u64; 3];
    for (tenant, n) in ops {
        let draft = AuditDraft {
            body: json!({ "n": n }),
            ..audit("op", None)
        };
        let seq = db
            .store
            .append_audit(&scope(TENANTS[*tenant]), draft)
            .await
            .unwrap();
        counts[*tenant] += 1;
        assert_eq!(seq, counts[*tenant]);
    }
    counts
}

const EDITS: [&str; 4] = [
    "body = '{\"n\":-1}'",
    "kind = 'forged'",
    "at = at - 1",
    "hash = prev_hash",
];

/// Appends `ops` across three tenants, checks every chain, tampers with one entry of the
/// tenant of `ops[victim]` and checks that exactly that chain breaks, at that entry.
async fn interleave_then_tamper(ops: Vec<(usize, u32)>, victim: usize, edit: &str) {
    let db = TestDb::new().await;
    crate::support::register(&db.store, "us-gamma").await;
    let counts = append_all(&db, &ops).await;
    for (i, tenant) in TENANTS.iter().enumerate() {
        let report = db.store.verify_audit(&scope(tenant)).await.unwrap();
        assert_eq!((report.entries, report.first_bad), (counts[i], None));
    }

    let (tenant_idx, _) = ops[victim];
    let seq = 1 + victim as u64 % counts[tenant_idx];
    let mut raw = db.attacker().await;
    sqlx::query(&format!(
        "UPDATE audit_log SET {edit} WHERE tenant_id = $1 AND seq = $2"
    ))
    .bind(TENANTS[tenant_idx])
    .bind(i64::try_from(seq).unwrap())
    .execute(&mut raw)
    .await
    .unwrap();

    for (i, tenant) in TENANTS.iter().enumerate() {
        let report = db.store.verify_audit(&scope(tenant)).await.unwrap();
        let want = (i == tenant_idx).then_some(seq);
        assert_eq!(report.first_bad.map(|b| b.seq), want, "{tenant}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn chains_of_interleaved_tenants_verify_and_catch_tampering_at_its_seq(
        ops in prop::collection::vec((0usize..3, any::<u32>()), 1..30),
        victim in any::<prop::sample::Index>(),
        column in 0usize..4,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let victim = victim.index(ops.len());
        for backend in [Backend::Sqlite, Backend::Postgres] {
            rt.block_on(crate::support::on(backend, interleave_then_tamper(ops.clone(), victim, EDITS[column])));
        }
    }
}

crate::support::conformance!(
    appended_entries_form_a_verifying_chain,
    an_empty_chain_verifies_to_genesis,
    entries_page_by_seq_with_at_most_1000_per_call,
    concurrent_appends_get_consecutive_seqs,
    editing_any_column_of_a_row_is_caught_at_that_row,
    a_row_that_no_longer_decodes_is_reported_as_the_break,
    deleting_a_middle_row_is_caught_at_the_next,
    deleting_the_first_row_is_caught,
    swapping_two_rows_is_caught_at_the_first_of_them,
    the_service_itself_cannot_change_or_delete_audit_rows,
    malformed_drafts_are_refused,
);
