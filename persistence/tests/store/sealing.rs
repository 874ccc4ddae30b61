//! Tenant content at rest: every content column holds only sealed text, a sealed value moved
//! to another row, column or tenant does not open, offboarding leaves content unreadable, and
//! content stored in clear before sealing is sealed once at startup.

use serde_json::json;
use sqlx::{Connection, Executor};
use steward_core::{FixedClock, RunId};
use steward_persistence::{
    AuditDraft, AuditEntry, Backend, GENESIS_HASH, MasterKey, NewCrash, NewTimer, RunFilter,
    StoreError, TenantScope, entry_hash,
};

use crate::support::{T0_SECS, TestDb, migrated_through, new_run, open_at, scope, step};

/// Recognizable text standing in for incident content, prompts and model replies.
const INCIDENT_TEXT: &str = "Payroll-database-unreachable-from-Lyon";
const PROMPT: &str = "Summarize-this-incident-for-the-on-call-engineer";
const REPLY: &str = "The-Lyon-replica-lost-its-route-to-the-primary";
const ERROR: &str = "model-timeout-while-drafting-Lyon-fix";

/// Every content column, as (table, column).
const CONTENT_COLUMNS: &[(&str, &str)] = &[
    ("runs", "trigger_body"),
    ("runs", "last_error"),
    ("run_steps", "body"),
    ("run_snapshots", "state"),
    ("run_crashes", "message"),
    ("run_crashes", "error"),
    ("run_crashes", "state"),
    ("timers", "payload"),
];

/// A run of `tenant` carrying the recognizable texts in every content column.
async fn run_with_content(db: &TestDb, tenant: &str) -> RunId {
    let acme = scope(tenant);
    let mut run = new_run(Some(&format!("msg-{}", RunId::new())));
    run.trigger = json!({"incident": {"number": "INC0010001", "short_description": INCIDENT_TEXT}});
    run.audit.body = json!({"incident": INCIDENT_TEXT});
    let id = run.id;
    db.store.record_intake(&acme, run).await.unwrap();
    let mut prompt = step(id, 1, "drafting");
    prompt.body = json!({"prompt": PROMPT, "reply": REPLY});
    prompt.last_error = Some(ERROR.into());
    prompt.timers = vec![NewTimer {
        kind: "approval_reminder".into(),
        due_at: T0_SECS * 1000 + 60_000,
        payload: json!({"say": REPLY}),
    }];
    prompt.audit = vec![AuditDraft {
        kind: "run.drafted".into(),
        run_id: Some(id),
        actor: "steward".into(),
        body: json!({"reply": REPLY}),
    }];
    db.store.append_step(&acme, prompt).await.unwrap();
    db.store
        .save_snapshot(&acme, id, 2, &json!({"incident": INCIDENT_TEXT}))
        .await
        .unwrap();
    let crash = NewCrash {
        run_id: id,
        attempt: 1,
        journal_offset: 2,
        step: "drafting".into(),
        message: format!("panicked on {INCIDENT_TEXT}"),
        error: ERROR.into(),
        state: json!({"prompt": PROMPT}),
    };
    db.store.record_crash(&acme, crash).await.unwrap();
    id
}

async fn column_values(db: &TestDb, table: &str, column: &str) -> Vec<String> {
    let mut raw = db.raw().await;
    let sql = format!("SELECT {column} FROM {table} WHERE {column} IS NOT NULL");
    let values: Vec<String> = sqlx::query_scalar(&sql).fetch_all(&mut raw).await.unwrap();
    raw.close().await.unwrap();
    values
}

fn assert_no_content(what: &str, text: &str) {
    for marker in [INCIDENT_TEXT, PROMPT, REPLY, ERROR, "Lyon"] {
        assert!(!text.contains(marker), "{what} holds `{marker}` in clear");
    }
}

async fn every_content_column_holds_only_sealed_text() {
    let db = TestDb::new().await;
    let key = MasterKey::generate();
    db.store.check_master_key(&key).await.unwrap();
    let acme = scope("us-acme");
    let id = run_with_content(&db, "us-acme").await;

    for (table, column) in CONTENT_COLUMNS {
        let values = column_values(&db, table, column).await;
        assert!(!values.is_empty(), "{table}.{column} has a row");
        for value in values {
            assert!(value.starts_with("sealed:1:"), "{table}.{column}: {value}");
            assert_no_content(&format!("{table}.{column}"), &value);
        }
    }
    let mut raw = db.raw().await;
    let audit: Vec<(Option<String>, String)> =
        sqlx::query_as("SELECT run_id, body FROM audit_log WHERE tenant_id = 'us-acme'")
            .fetch_all(&mut raw)
            .await
            .unwrap();
    for (run, body) in &audit {
        if run.is_some() {
            // `bound:1:<salt>:<digest>:` and then the sealed text.
            let parts: Vec<&str> = body.splitn(5, ':').collect();
            assert_eq!(&parts[..2], ["bound", "1"], "run audit body {body}");
            assert_eq!((parts[2].len(), parts[3].len()), (32, 64), "{body}");
            assert!(parts[4].starts_with("sealed:1:"), "run audit body {body}");
        }
        assert_no_content("audit_log.body", body);
    }
    // Nothing anywhere in the database: files (with the WAL) or every row of every table.
    assert_no_content("the database", &db.stored_text().await);

    // The store reads it all back in clear.
    let run = db.store.run(&acme, id).await.unwrap().unwrap();
    assert_eq!(run.trigger["incident"]["short_description"], INCIDENT_TEXT);
    assert_eq!(run.last_error.as_deref(), Some(ERROR));
    let steps = db.store.steps(&acme, id).await.unwrap();
    assert_eq!(steps[1].body["prompt"], PROMPT);
    assert_eq!(steps[1].body["reply"], REPLY);
    let (offset, state) = db.store.snapshot(&acme, id).await.unwrap().unwrap();
    assert_eq!((offset, &state["incident"]), (2, &json!(INCIDENT_TEXT)));
    let crashes = db.store.crashes(&acme, id).await.unwrap();
    assert_eq!(crashes[0].error, ERROR);
    assert!(crashes[0].message.contains(INCIDENT_TEXT));
    let timers = db.store.timers(&acme, id).await.unwrap();
    assert_eq!(timers[0].payload["say"], REPLY);
    let due = db
        .store
        .due_timers(T0_SECS * 1000 + 60_000, 10)
        .await
        .unwrap();
    assert_eq!(due[0].payload["say"], REPLY);
    let entries = db.store.run_audit(&acme, id).await.unwrap();
    assert!(entries.iter().any(|e| e.body.contains(REPLY)));
    assert!(entries.iter().all(|e| e.sealed.is_some()));
    let report = db.store.verify_audit(&acme).await.unwrap();
    assert_eq!(report.first_bad, None);
    // An exported entry verifies offline: its hash covers the stored (sealed) text.
    for entry in db.store.audit_entries(&acme, 0, 100).await.unwrap() {
        let exported: AuditEntry =
            serde_json::from_str(&serde_json::to_string(&entry).unwrap()).unwrap();
        assert_eq!(entry_hash(&exported), exported.hash);
    }
}

/// Copies the stored text of `column` of one row over another's, as someone with the database
/// could.
async fn copy(db: &TestDb, sql_from: &str, sql_to: &str) {
    let mut raw = db.raw().await;
    let value: String = sqlx::query_scalar(sql_from)
        .fetch_one(&mut raw)
        .await
        .unwrap();
    let done = sqlx::query(sql_to)
        .bind(value)
        .execute(&mut raw)
        .await
        .unwrap();
    assert_eq!(done.rows_affected(), 1, "{sql_to}");
    raw.close().await.unwrap();
}

fn assert_refused<T: std::fmt::Debug>(what: &str, result: Result<T, StoreError>) {
    let err = result.unwrap_err();
    assert!(matches!(err, StoreError::Crypto(_)), "{what}: {err}");
    assert_no_content(what, &err.to_string());
}

async fn a_sealed_value_moved_to_another_row_column_or_tenant_does_not_open() {
    let db = TestDb::new().await;
    db.store
        .check_master_key(&MasterKey::generate())
        .await
        .unwrap();
    let (acme, beta) = (scope("us-acme"), scope("eu-beta"));
    let a = run_with_content(&db, "us-acme").await;
    let b = run_with_content(&db, "us-acme").await;
    let c = run_with_content(&db, "eu-beta").await;

    // Another row of the same column.
    copy(
        &db,
        &format!("SELECT trigger_body FROM runs WHERE id = '{a}'"),
        &format!("UPDATE runs SET trigger_body = $1 WHERE id = '{b}'"),
    )
    .await;
    assert_refused(
        "a trigger moved to another run",
        db.store.run(&acme, b).await,
    );
    // Another column of the same row.
    copy(
        &db,
        &format!("SELECT trigger_body FROM runs WHERE id = '{a}'"),
        &format!("UPDATE runs SET last_error = $1 WHERE id = '{a}'"),
    )
    .await;
    assert_refused(
        "a trigger moved to last_error",
        db.store.run(&acme, a).await,
    );
    // Another step of the same run.
    copy(
        &db,
        &format!("SELECT body FROM run_steps WHERE run_id = '{c}' AND seq = 1"),
        &format!("UPDATE run_steps SET body = $1 WHERE run_id = '{c}' AND seq = 0"),
    )
    .await;
    assert_refused("a step moved to step 0", db.store.steps(&beta, c).await);
    // Another tenant: acme's crash state under beta's crash.
    copy(
        &db,
        &format!("SELECT state FROM run_crashes WHERE run_id = '{a}'"),
        &format!("UPDATE run_crashes SET state = $1 WHERE run_id = '{c}'"),
    )
    .await;
    assert_refused(
        "a crash moved to another tenant",
        db.store.crashes(&beta, c).await,
    );
    // An older snapshot put back under a newer offset.
    copy(
        &db,
        &format!("SELECT state FROM run_snapshots WHERE run_id = '{b}'"),
        &format!("UPDATE run_snapshots SET journal_offset = 1, state = $1 WHERE run_id = '{b}'"),
    )
    .await;
    assert_refused(
        "a snapshot at another offset",
        db.store.snapshot(&acme, b).await,
    );
    // A timer payload moved to another run.
    copy(
        &db,
        &format!("SELECT payload FROM timers WHERE run_id = '{a}'"),
        &format!("UPDATE timers SET payload = $1 WHERE run_id = '{b}'"),
    )
    .await;
    assert_refused(
        "a timer moved to another run",
        db.store.timers(&acme, b).await,
    );
    // A run audit body moved to another entry of the chain: it does not open, and the chain
    // check names the entry.
    let mut attacker = db.attacker().await;
    let seqs: Vec<i64> = sqlx::query_scalar(
        "SELECT seq FROM audit_log WHERE tenant_id = 'us-acme' AND run_id IS NOT NULL ORDER BY seq",
    )
    .fetch_all(&mut attacker)
    .await
    .unwrap();
    let body: String = sqlx::query_scalar(&format!(
        "SELECT body FROM audit_log WHERE tenant_id = 'us-acme' AND seq = {}",
        seqs[0]
    ))
    .fetch_one(&mut attacker)
    .await
    .unwrap();
    sqlx::query(&format!(
        "UPDATE audit_log SET body = $1 WHERE tenant_id = 'us-acme' AND seq = {}",
        seqs[1]
    ))
    .bind(body)
    .execute(&mut attacker)
    .await
    .unwrap();
    attacker.close().await.unwrap();
    assert_refused(
        "an audit body moved",
        db.store.audit_entries(&acme, 0, 100).await,
    );
    let report = db.store.verify_audit(&acme).await.unwrap();
    assert_eq!(report.first_bad.map(|b| b.seq), Some(seqs[1] as u64));
}

async fn after_offboarding_the_content_cannot_be_opened() {
    let db = TestDb::new().await;
    let key = MasterKey::generate();
    db.store.check_master_key(&key).await.unwrap();
    let acme = scope("us-acme");
    let id = run_with_content(&db, "us-acme").await;

    // A copy of the run's row, as a backup would keep it.
    let mut raw = db.raw().await;
    let (trigger, steps): (String, i64) = sqlx::query_as(&format!(
        "SELECT trigger_body, steps FROM runs WHERE id = '{id}'"
    ))
    .fetch_one(&mut raw)
    .await
    .unwrap();
    raw.close().await.unwrap();

    let checkpoint = db
        .store
        .offboard_tenant(&acme, &key, "operator")
        .await
        .unwrap();
    let report = db.store.verify_audit(&acme).await.unwrap();
    assert_eq!(
        (report.first_bad, report.entries, report.head_hash),
        (None, checkpoint.seq, checkpoint.head_hash)
    );
    let err = db.store.audit_entries(&acme, 0, 100).await.unwrap_err();
    assert!(matches!(err, StoreError::Crypto(_)), "{err}");
    assert!(err.to_string().contains("offboarded"), "{err}");
    // The closing entry itself is about the tenant, not a run, and stays readable.
    let last = db
        .store
        .audit_entries(&acme, checkpoint.seq - 1, 1)
        .await
        .unwrap();
    assert_eq!(last[0].kind, "tenant.offboarded");

    // The backup put back: the row is there, its content is not.
    let mut raw = db.raw().await;
    let mut tx = raw.begin().await.unwrap();
    if db.backend() == Backend::Postgres {
        tx.execute("SELECT set_config('steward.tenant', 'us-acme', true)")
            .await
            .unwrap();
    }
    sqlx::query(
        "INSERT INTO runs (tenant_id, id, source, delivery_id, incident_by, incident_value, \
         trigger_body, state, steps, last_error, created_at, updated_at) \
         VALUES ('us-acme', $1, NULL, NULL, 'number', 'INC0010001', $2, 'drafting', $3, NULL, 0, 0)",
    )
    .bind(id.to_string())
    .bind(trigger)
    .bind(steps)
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    raw.close().await.unwrap();
    let err = db.store.run(&acme, id).await.unwrap_err();
    assert!(matches!(err, StoreError::Crypto(_)), "{err}");
    assert!(err.to_string().contains("offboarded"), "{err}");
    // No new key is made for the offboarded tenant's content.
    let again = db.store.record_intake(&acme, new_run(None)).await;
    assert!(matches!(again, Err(StoreError::NotFound(_))), "{again:?}");
}

/// The schema version before content was sealed.
const BEFORE_SEALING: i64 = 8;

async fn content_stored_in_clear_before_sealing_is_sealed_once_at_startup() {
    let (place, mut owner) = migrated_through(BEFORE_SEALING).await;
    let run = RunId::new();
    let mut tx = owner.begin().await.unwrap();
    if crate::support::backend() == Backend::Postgres {
        tx.execute("SELECT set_config('steward.tenant', 'us-acme', true)")
            .await
            .unwrap();
    }
    let trigger = json!({"short_description": INCIDENT_TEXT}).to_string();
    let fetched = json!({"kind": "incident_fetched",
        "incident": {"number": "INC0020002", "fields": {"description": INCIDENT_TEXT}}})
    .to_string();
    let audit = AuditEntry {
        tenant: steward_core::TenantId::parse("us-acme").unwrap(),
        seq: 1,
        at: 5,
        kind: "run.received".into(),
        run_id: Some(run),
        actor: "steward".into(),
        body: json!({"incident": "INC0010001"}).to_string(),
        sealed: None,
        prev_hash: GENESIS_HASH.into(),
        hash: String::new(),
    };
    let hash = entry_hash(&audit);
    let statements = [
        "INSERT INTO tenants (id, region, name, settings, created_at, updated_at) \
         VALUES ('us-acme', 'us', 'Acme', '{}', 0, 0)"
            .to_owned(),
        format!(
            "INSERT INTO runs (tenant_id, id, source, delivery_id, incident_by, incident_value, \
             trigger_body, state, steps, last_error, created_at, updated_at) VALUES ('us-acme', \
             '{run}', NULL, NULL, 'number', 'INC0010001', '{trigger}', 'drafting', 2, '{ERROR}', 1, 1)"
        ),
        format!(
            "INSERT INTO run_steps (tenant_id, run_id, seq, kind, body, at) VALUES \
             ('us-acme', '{run}', 0, 'intake', '{{\"prompt\":\"{PROMPT}\"}}', 1), \
             ('us-acme', '{run}', 1, 'incident_fetched', '{fetched}', 2)"
        ),
        format!(
            "INSERT INTO run_snapshots (tenant_id, run_id, journal_offset, state, saved_at) \
             VALUES ('us-acme', '{run}', 2, '{{\"reply\":\"{REPLY}\"}}', 3)"
        ),
        format!(
            "INSERT INTO run_crashes (tenant_id, run_id, seq, at, attempt, journal_offset, step, \
             message, error, state) VALUES ('us-acme', '{run}', 1, 4, 1, 2, 'drafting', \
             'panicked on {INCIDENT_TEXT}', '{ERROR}', '{{\"prompt\":\"{PROMPT}\"}}')"
        ),
        format!(
            "INSERT INTO timers (tenant_id, run_id, kind, due_at, payload, claimed_at, created_at) \
             VALUES ('us-acme', '{run}', 'reminder', 9, '{{\"say\":\"{REPLY}\"}}', NULL, 4)"
        ),
        format!(
            "INSERT INTO audit_log (tenant_id, seq, at, kind, run_id, actor, body, prev_hash, hash) \
             VALUES ('us-acme', 1, 5, 'run.received', '{run}', 'steward', '{}', '{GENESIS_HASH}', \
             '{hash}')",
            audit.body
        ),
    ];
    for sql in &statements {
        tx.execute(sql.as_str()).await.unwrap();
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
    let key = MasterKey::generate();
    db.store.check_master_key(&key).await.unwrap();
    // The run's fetched number was taken from the clear step by the migration.
    let by_number = RunFilter {
        number: Some("INC0020002".into()),
        limit: 10,
        ..RunFilter::default()
    };
    let found = db.store.find_runs(&by_number).await.unwrap();
    assert_eq!(found.len(), 1);
    for (table, column) in CONTENT_COLUMNS {
        for value in column_values(&db, table, column).await {
            assert!(value.starts_with("sealed:1:"), "{table}.{column}: {value}");
            assert_no_content(&format!("{table}.{column}"), &value);
        }
    }
    let acme: TenantScope = scope("us-acme");
    let stored = db.store.run(&acme, run).await.unwrap().unwrap();
    assert_eq!(stored.trigger["short_description"], INCIDENT_TEXT);
    assert_eq!(stored.last_error.as_deref(), Some(ERROR));
    let steps = db.store.steps(&acme, run).await.unwrap();
    assert_eq!(steps[0].body["prompt"], PROMPT);
    assert_eq!(steps[1].body["incident"]["number"], "INC0020002");
    assert_eq!(
        db.store.snapshot(&acme, run).await.unwrap().unwrap().1["reply"],
        REPLY
    );
    assert_eq!(db.store.crashes(&acme, run).await.unwrap()[0].error, ERROR);
    assert_eq!(
        db.store.timers(&acme, run).await.unwrap()[0].payload["say"],
        REPLY
    );
    // The audit entry keeps the clear body it was hashed over.
    let entries = db.store.audit_entries(&acme, 0, 10).await.unwrap();
    assert_eq!(
        (entries[0].body.as_str(), entries[0].sealed.as_ref()),
        (audit.body.as_str(), None)
    );
    assert_eq!(db.store.verify_audit(&acme).await.unwrap().first_bad, None);

    // The pass ran once: a clear value put back later is not sealed by another start.
    let mut raw = db.raw().await;
    raw.execute(
        format!("UPDATE timers SET payload = '{{\"say\":\"again\"}}' WHERE run_id = '{run}'")
            .as_str(),
    )
    .await
    .unwrap();
    raw.close().await.unwrap();
    db.store.check_master_key(&key).await.unwrap();
    assert_eq!(
        column_values(&db, "timers", "payload").await,
        [r#"{"say":"again"}"#]
    );
    assert_refused(
        "a clear value after the pass",
        db.store.timers(&acme, run).await,
    );
}

crate::support::conformance!(
    every_content_column_holds_only_sealed_text,
    a_sealed_value_moved_to_another_row_column_or_tenant_does_not_open,
    after_offboarding_the_content_cannot_be_opened,
    content_stored_in_clear_before_sealing_is_sealed_once_at_startup,
);
