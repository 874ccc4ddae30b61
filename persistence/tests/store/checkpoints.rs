//! SQLite's WAL is checkpointed by a connection of its own, not by the writer as it commits.

use std::time::Duration;

use serde_json::json;

use crate::support::{TestDb, audit, scope, sqlite_only};

/// The database file's length in bytes.
fn file_len(db: &TestDb) -> u64 {
    std::fs::metadata(db.path()).map_or(0, |m| m.len())
}

/// Waits until `done` holds of the database file's length, for at most ten seconds.
async fn file_reaches(db: &TestDb, done: impl Fn(u64) -> bool) -> u64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let len = file_len(db);
        if done(len) || tokio::time::Instant::now() >= deadline {
            return len;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn committed_pages_reach_the_database_file_without_the_writer_checkpointing() {
    let db = TestDb::new().await;
    // The migrations' pages are copied first; then the file stops growing.
    let mut settled = file_reaches(&db, |len| len > 0).await;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = file_len(&db);
        if now == settled {
            break;
        }
        settled = now;
    }
    // About a megabyte of audit entries: a few hundred pages, far below the WAL length at
    // which the writer would checkpoint by itself, so only the background connection can
    // copy them into the database file.
    let filler = "x".repeat(4_000);
    for i in 0..250 {
        let mut draft = audit("run.step", None);
        draft.body = json!({ "i": i, "filler": filler });
        db.store
            .append_audit(&scope("us-acme"), draft)
            .await
            .unwrap();
    }
    let grown = file_reaches(&db, |len| len >= settled + 900_000).await;
    assert!(
        grown >= settled + 900_000,
        "the database file grew from {settled} to {grown} bytes only: the WAL was not \
         checkpointed"
    );
    // Everything still reads back through the WAL and the file together.
    let entries = db
        .store
        .audit_entries(&scope("us-acme"), 0, 1_000)
        .await
        .unwrap();
    assert_eq!(entries.len(), 250);
    assert!(
        db.store
            .verify_audit(&scope("us-acme"))
            .await
            .unwrap()
            .first_bad
            .is_none()
    );
}

sqlite_only!(committed_pages_reach_the_database_file_without_the_writer_checkpointing);
