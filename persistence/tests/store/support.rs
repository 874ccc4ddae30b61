//! Shared fixtures: a store on a fresh file with a clock the test controls, tenants, runs and
//! steps with sensible defaults, and a raw connection for tampering like an attacker would.

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::json;
use sqlx::{ConnectOptions, SqliteConnection, sqlite::SqliteConnectOptions};
use steward_core::{FixedClock, IncidentRef, RunId, SourceName, TenantId};
use steward_persistence::{
    AuditDraft, Authenticator, IntakeOutcome, NewRun, StepWrite, Store, StoreOptions, TenantRecord,
    TenantScope,
};
use tempfile::TempDir;

/// 2023-11-14T22:13:20Z.
pub(crate) const T0_SECS: i64 = 1_700_000_000;

pub(crate) struct TestDb {
    pub(crate) dir: TempDir,
    pub(crate) store: Store,
    pub(crate) clock: FixedClock,
}

impl TestDb {
    /// A fresh store with tenants `us-acme` and `eu-beta` registered.
    pub(crate) async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let clock = FixedClock::at_secs(T0_SECS);
        let store = open_at(&dir, &clock).await;
        for id in ["us-acme", "eu-beta"] {
            register(&store, id).await;
        }
        Self { dir, store, clock }
    }

    pub(crate) fn path(&self) -> PathBuf {
        self.dir.path().join("steward.db")
    }

    /// Another handle on the same file, as a second process would open it.
    pub(crate) async fn second_process(&self) -> Store {
        open_at(&self.dir, &self.clock).await
    }

    /// Closes the store and opens the same file again.
    pub(crate) async fn restart(&mut self) {
        self.store.close().await;
        self.store = open_at(&self.dir, &self.clock).await;
    }

    /// A connection that bypasses the store entirely.
    pub(crate) async fn raw(&self) -> SqliteConnection {
        SqliteConnectOptions::new()
            .filename(self.path())
            .connect()
            .await
            .unwrap()
    }

    /// Every byte the database keeps on disk: main file, WAL and shared memory.
    pub(crate) fn disk_bytes(&self) -> Vec<u8> {
        let mut all = Vec::new();
        for suffix in ["", "-wal", "-shm"] {
            let path = PathBuf::from(format!("{}{suffix}", self.path().display()));
            if let Ok(bytes) = std::fs::read(path) {
                all.extend(bytes);
            }
        }
        all
    }

    /// Records a run through intake and returns its id.
    pub(crate) async fn intake(&self, tenant: &str) -> RunId {
        match self
            .store
            .record_intake(&scope(tenant), new_run(None))
            .await
            .unwrap()
        {
            IntakeOutcome::Created(id) => id,
            other => panic!("expected a new run, got {other:?}"),
        }
    }
}

pub(crate) async fn open_at(dir: &TempDir, clock: &FixedClock) -> Store {
    let mut opts = StoreOptions::new(dir.path().join("steward.db"));
    opts.synchronous_full = false;
    opts.clock = Arc::new(clock.clone());
    Store::open(opts).await.unwrap()
}

pub(crate) async fn register(store: &Store, id: &str) {
    let record = TenantRecord {
        id: TenantId::parse(id).unwrap(),
        name: format!("Tenant {id}"),
        settings: json!({}),
        created_at: T0_SECS * 1000,
    };
    store.upsert_tenant(&record).await.unwrap();
}

pub(crate) fn scope(tenant: &str) -> TenantScope {
    TenantScope::assume(TenantId::parse(tenant).unwrap(), Authenticator::Operator)
}

pub(crate) fn source() -> SourceName {
    SourceName::parse("servicenow").unwrap()
}

pub(crate) fn audit(kind: &str, run: Option<RunId>) -> AuditDraft {
    AuditDraft {
        kind: kind.into(),
        run_id: run,
        actor: "steward".into(),
        body: json!({"k": kind}),
    }
}

/// A run from the `servicenow` source with the given delivery id (none if None).
pub(crate) fn new_run(delivery: Option<&str>) -> NewRun {
    let id = RunId::new();
    NewRun {
        id,
        source: delivery.map(|_| source()),
        delivery_id: delivery.map(str::to_owned),
        incident: IncidentRef::number("INC0010001").unwrap(),
        trigger: json!({"number": "INC0010001"}),
        state: "fetching".into(),
        first_step: ("intake".into(), json!({"delivery": delivery})),
        audit: audit("run.created", Some(id)),
    }
}

/// Step `seq` of `run` moving it to `state`, with one audit entry.
pub(crate) fn step(run: RunId, seq: u32, state: &str) -> StepWrite {
    StepWrite {
        run_id: run,
        expected_seq: seq,
        kind: format!("step-{seq}"),
        body: json!({"seq": seq}),
        new_state: state.into(),
        last_error: None,
        audit: vec![audit(&format!("run.{state}"), Some(run))],
        new_approval: None,
        timers: vec![],
    }
}

impl TestDb {
    /// The test clock's time in Unix ms.
    pub(crate) fn clock_ms(&self) -> i64 {
        use steward_core::Clock;
        self.clock.now_millis()
    }
}
