//! `steward backup` and `steward restore` on both backends: a backup taken while runs are
//! created and approved concurrently, the store destroyed, the backup restored, and the
//! restored runs, approvals and audit logs compared row for row with the state as of the
//! backup. Also: a damaged backup, a manifest from a newer schema, and a restore over a live
//! database are refused.
//!
//! The state as of the backup is derived from the live store, not from the backup: every
//! write of the load commits one audit entry in its own transaction, so a tenant's chain head
//! in the manifest says exactly which writes the backup holds.
//!
//! The PostgreSQL test runs on a private cluster made with `initdb` in a temporary directory
//! on a free port, started and stopped by the test (by its data directory); it is skipped with
//! a notice when `initdb` is not installed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use secrecy::SecretString;
use serde_json::json;
use steward_core::{ApprovalId, FixedClock, IncidentRef, RunId, TenantId};
use steward_persistence::backup::{self, BackupError, Manifest};
use steward_persistence::{
    ApprovalRecord, AuditDraft, AuditEntry, Authenticator, Backend, Decision, IntakeOutcome,
    NewApproval, NewRun, POSTGRES_ROLES, PgOptions, RunRecord, StepWrite, Store, StoreOptions,
    TenantRecord, TenantScope,
};
use steward_runtime::backup_cli::{BackupArgs, RestoreArgs, run_restore, take_backup};

const TENANTS: [&str; 3] = ["us-acme", "us-globex", "eu-initech"];
const T0_SECS: i64 = 1_700_000_000;

fn scope(tenant: &str) -> TenantScope {
    TenantScope::assume(TenantId::parse(tenant).unwrap(), Authenticator::Operator)
}

fn draft(kind: &str, run: RunId) -> AuditDraft {
    AuditDraft {
        kind: kind.into(),
        run_id: Some(run),
        actor: "steward".into(),
        body: json!({"kind": kind}),
    }
}

fn step(run: RunId, seq: u32, state: &str, kind: &str) -> StepWrite {
    StepWrite {
        run_id: run,
        expected_seq: seq,
        kind: kind.into(),
        body: json!({"seq": seq}),
        new_state: state.into(),
        last_error: None,
        audit: vec![draft(kind, run)],
        new_approval: None,
        timers: vec![],
        charges: vec![],
        approval_message: None,
        clears_timers: false,
    }
}

async fn register(store: &Store) {
    for id in TENANTS {
        let record = TenantRecord {
            id: TenantId::parse(id).unwrap(),
            name: format!("Tenant {id}"),
            settings: json!({"region_note": id}),
            created_at: T0_SECS * 1000,
        };
        store.upsert_tenant(&record).await.unwrap();
    }
}

/// Concurrent workers, each creating a run, opening its approval and approving it, over and
/// over: three transactions per run, each with one audit entry.
struct Load {
    stop: Arc<AtomicBool>,
    writes: Arc<AtomicU64>,
    approvals: Arc<Mutex<Vec<(String, ApprovalId)>>>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(store: &Store, workers_per_tenant: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let writes = Arc::new(AtomicU64::new(0));
        let approvals = Arc::new(Mutex::new(Vec::new()));
        let mut workers = Vec::new();
        for tenant in TENANTS {
            for n in 0..workers_per_tenant {
                let (store, stop, writes, approvals) = (
                    store.clone(),
                    stop.clone(),
                    writes.clone(),
                    approvals.clone(),
                );
                workers.push(tokio::spawn(async move {
                    let mut i = 0u32;
                    while !stop.load(Ordering::SeqCst) {
                        one_run(&store, tenant, n, i, &writes, &approvals).await;
                        i += 1;
                    }
                }));
            }
        }
        Self {
            stop,
            writes,
            approvals,
            workers,
        }
    }

    fn writes(&self) -> u64 {
        self.writes.load(Ordering::SeqCst)
    }

    async fn wait_for(&self, writes: u64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.writes() < writes {
            assert!(
                Instant::now() < deadline,
                "the load made too little progress"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn stop(self) -> Vec<(String, ApprovalId)> {
        self.stop.store(true, Ordering::SeqCst);
        for w in self.workers {
            w.await.unwrap();
        }
        self.approvals.lock().unwrap().clone()
    }
}

async fn one_run(
    store: &Store,
    tenant: &str,
    worker: usize,
    i: u32,
    writes: &AtomicU64,
    approvals: &Mutex<Vec<(String, ApprovalId)>>,
) {
    let sc = scope(tenant);
    let id = RunId::new();
    let run = NewRun {
        id,
        source: None,
        delivery_id: Some(format!("w{worker}-{i}")),
        change: None,
        incident: IncidentRef::number("INC0010001").unwrap(),
        trigger: json!({"number": "INC0010001", "worker": worker, "i": i}),
        state: "received".into(),
        first_step: ("intake".into(), json!({"worker": worker})),
        audit: draft("run.created", id),
    };
    let created = store.record_intake(&sc, run).await.unwrap();
    assert_eq!(created, IntakeOutcome::Created(id));
    writes.fetch_add(1, Ordering::SeqCst);

    let approval = ApprovalId::new();
    let mut ask = step(id, 1, "awaiting_approval", "approval.requested");
    ask.new_approval = Some(NewApproval {
        id: approval,
        diff_hash: format!("sha256:{worker}-{i}"),
        record_version: i.to_string(),
        policy: json!({"decision": "allow_with_approval"}),
    });
    store.append_step(&sc, ask).await.unwrap();
    approvals
        .lock()
        .unwrap()
        .push((tenant.to_owned(), approval));
    writes.fetch_add(1, Ordering::SeqCst);

    let decided = store
        .decide_approval(
            &sc,
            approval,
            Decision::Approve,
            "U_APPROVER",
            step(id, 2, "approved", "approval.decided"),
        )
        .await
        .unwrap();
    assert!(matches!(
        decided,
        steward_persistence::DecideOutcome::Decided(_)
    ));
    writes.fetch_add(1, Ordering::SeqCst);
}

/// Every run, approval and audit entry of the test's tenants.
#[derive(Debug, Default, PartialEq)]
struct State {
    runs: BTreeMap<RunId, RunRecord>,
    approvals: BTreeMap<ApprovalId, ApprovalRecord>,
    audit: BTreeMap<String, Vec<AuditEntry>>,
}

async fn read_state(store: &Store, approvals: &[(String, ApprovalId)]) -> State {
    let mut state = State::default();
    for tenant in TENANTS {
        let sc = scope(tenant);
        let mut before = None;
        loop {
            let page = store.list_runs(&sc, 200, before).await.unwrap();
            let Some(last) = page.last() else { break };
            before = Some(last.id);
            for run in page {
                state.runs.insert(run.id, run);
            }
        }
        let mut entries = Vec::new();
        loop {
            let after = entries.last().map_or(0, |e: &AuditEntry| e.seq);
            let page = store.audit_entries(&sc, after, 1000).await.unwrap();
            if page.is_empty() {
                break;
            }
            entries.extend(page);
        }
        state.audit.insert(tenant.to_owned(), entries);
    }
    for (tenant, id) in approvals {
        if let Some(a) = store.approval(&scope(tenant), *id).await.unwrap() {
            state.approvals.insert(*id, a);
        }
    }
    state
}

/// The state as of the backup: each tenant's chain cut at the manifest's head, and each run
/// and approval as that prefix of the chain says it was (the clock is fixed, so timestamps do
/// not move).
fn as_of(live: &State, manifest: &Manifest) -> State {
    let mut state = State::default();
    for (tenant, entries) in &live.audit {
        let head = manifest.chains.get(tenant).map_or(0, |h| h.seq);
        let kept: Vec<AuditEntry> = entries.iter().take(head as usize).cloned().collect();
        if let Some(last) = kept.last() {
            assert_eq!(
                last.hash, manifest.chains[tenant].hash,
                "the manifest's head is an entry of the live chain"
            );
        }
        state.audit.insert(tenant.clone(), kept);
    }
    let mut phase: BTreeMap<RunId, usize> = BTreeMap::new();
    for e in state.audit.values().flatten() {
        *phase.entry(e.run_id.unwrap()).or_default() += 1;
    }
    for (id, run) in &live.runs {
        let mut run = run.clone();
        match phase.get(id).copied().unwrap_or(0) {
            0 => continue,
            1 => (run.state, run.steps) = ("received".into(), 1),
            2 => (run.state, run.steps) = ("awaiting_approval".into(), 2),
            _ => {}
        }
        state.runs.insert(*id, run);
    }
    for (id, approval) in &live.approvals {
        let mut approval = approval.clone();
        match phase.get(&approval.run_id).copied().unwrap_or(0) {
            0 | 1 => continue,
            2 => {
                approval.status = "pending".into();
                approval.decided_by = None;
                approval.decided_at = None;
            }
            _ => {}
        }
        state.approvals.insert(*id, approval);
    }
    state
}

fn assert_same(restored: &State, expected: &State) {
    assert_eq!(
        restored.audit, expected.audit,
        "audit logs as of the backup"
    );
    assert_eq!(
        restored.runs.len(),
        expected.runs.len(),
        "runs as of the backup"
    );
    assert_eq!(restored.runs, expected.runs, "runs as of the backup");
    assert_eq!(
        restored.approvals, expected.approvals,
        "approvals as of the backup"
    );
}

/// Copies the backup and its manifest into `dir` under the same name.
fn copy_backup(file: &Path, dir: &Path) -> PathBuf {
    let to = dir.join(file.file_name().unwrap());
    std::fs::copy(file, &to).unwrap();
    std::fs::copy(backup::manifest_path(file), backup::manifest_path(&to)).unwrap();
    to
}

/// A damaged backup (one byte changed) and a manifest from a newer schema are refused before
/// anything is restored; `args` says where each attempt would restore.
async fn damaged_and_newer_backups_are_refused(file: &Path, args: impl Fn(PathBuf) -> RestoreArgs) {
    let scratch = tempfile::tempdir().unwrap();
    let damaged_dir = scratch.path().join("damaged");
    std::fs::create_dir(&damaged_dir).unwrap();
    let damaged = copy_backup(file, &damaged_dir);
    let mut bytes = std::fs::read(&damaged).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(&damaged, bytes).unwrap();
    let err = run_restore(&args(damaged)).await.unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        matches!(
            err.downcast_ref::<BackupError>(),
            Some(BackupError::Manifest(_))
        ),
        "{msg}"
    );
    assert!(msg.contains("SHA-256"), "{msg}");

    let newer_dir = scratch.path().join("newer");
    std::fs::create_dir(&newer_dir).unwrap();
    let newer = copy_backup(file, &newer_dir);
    let manifest_file = backup::manifest_path(&newer);
    let mut manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest_file).unwrap()).unwrap();
    let known = backup::known_schema_version(Backend::Sqlite)
        .max(backup::known_schema_version(Backend::Postgres));
    manifest["schema_version"] = json!(known + 1);
    std::fs::write(&manifest_file, manifest.to_string()).unwrap();
    let err = run_restore(&args(newer)).await.unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        matches!(
            err.downcast_ref::<BackupError>(),
            Some(BackupError::NewerSchema { .. })
        ),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("schema version {}", known + 1)) && msg.contains("newer"),
        "{msg}"
    );
}

fn check_report(report: &backup::RestoreReport, manifest: &Manifest) {
    assert!(report.contents_match, "{report:?}");
    assert!(report.ok(), "{report:?}");
    assert_eq!(&report.manifest, manifest);
    assert_eq!(report.chains.len(), TENANTS.len());
    for c in &report.chains {
        let head = &manifest.chains[&c.tenant];
        assert_eq!((c.entries, &c.head_hash), (head.seq, &head.hash), "{c:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_backup_under_load_restores_the_state_as_of_the_backup() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("data").join("steward.db");
    let clock = FixedClock::at_secs(T0_SECS);
    let mut opts = StoreOptions::new(&db);
    opts.clock = Arc::new(clock.clone());
    let store = Store::open(opts).await.unwrap();
    register(&store).await;

    let load = Load::start(&store, 2);
    load.wait_for(60).await;
    let out = dir.path().join("backups").join("steward-1.db");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let before = load.writes();
    let manifest = take_backup(&BackupArgs {
        out: out.clone(),
        config: None,
        database_url: None,
        database: Some(db.clone()),
    })
    .await
    .unwrap();
    let after_backup = load.writes();
    load.wait_for(after_backup + 30).await;
    let approvals = load.stop().await;
    assert!(
        after_backup > before,
        "writes went on while the backup was taken"
    );

    assert_eq!(manifest.backend, backup::BackupBackend::Sqlite);
    assert_eq!(
        manifest.schema_version,
        backup::known_schema_version(Backend::Sqlite)
    );
    assert_eq!(manifest.consistency, "vacuum-into");
    let (sha, size) = backup::file_digest(&out).unwrap();
    assert_eq!((sha, size), (manifest.sha256.clone(), manifest.size));
    let on_disk: Manifest =
        serde_json::from_str(&std::fs::read_to_string(backup::manifest_path(&out)).unwrap())
            .unwrap();
    assert_eq!(on_disk, manifest);
    for table in [
        "runs",
        "approvals",
        "audit_log",
        "run_steps",
        "tenants",
        "_sqlx_migrations",
    ] {
        assert!(manifest.tables.contains_key(table), "{table} counted");
    }
    assert_eq!(manifest.chains.len(), TENANTS.len());

    let live = read_state(&store, &approvals).await;
    let expected = as_of(&live, &manifest);
    assert!(
        expected.runs.len() < live.runs.len(),
        "the backup predates later runs"
    );
    assert_eq!(manifest.tables["runs"], expected.runs.len() as u64);
    assert_eq!(
        manifest.tables["approvals"],
        expected.approvals.len() as u64
    );
    let audit_rows: usize = expected.audit.values().map(Vec::len).sum();
    assert_eq!(manifest.tables["audit_log"], audit_rows as u64);

    let restore_args = |from: PathBuf, to: &Path| RestoreArgs {
        from,
        config: None,
        to: Some(to.to_path_buf()),
        database_url: None,
        verify_url: None,
    };
    // Over the live database: refused, and nothing changed.
    let err = run_restore(&restore_args(out.clone(), &db))
        .await
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        matches!(
            err.downcast_ref::<BackupError>(),
            Some(BackupError::InUse(_))
        ),
        "{msg}"
    );
    assert!(msg.contains("refusing to restore"), "{msg}");
    assert_eq!(
        read_state(&store, &approvals).await,
        live,
        "the live store is untouched"
    );

    let elsewhere = dir.path().join("elsewhere.db");
    damaged_and_newer_backups_are_refused(&out, |from| restore_args(from, &elsewhere)).await;
    assert!(!elsewhere.exists(), "a refused backup restores nothing");

    // Destroy the store, then restore.
    store.close().await;
    for suffix in ["", "-wal", "-shm"] {
        let path = PathBuf::from(format!("{}{suffix}", db.display()));
        if path.exists() {
            std::fs::remove_file(path).unwrap();
        }
    }
    let (report, target) = run_restore(&restore_args(out.clone(), &db)).await.unwrap();
    assert_eq!(target, db.display().to_string());
    check_report(&report, &manifest);

    let restored = Store::open(StoreOptions::new(&db)).await.unwrap();
    assert_same(&read_state(&restored, &approvals).await, &expected);
    for tenant in TENANTS {
        let report = restored.verify_audit(&scope(tenant)).await.unwrap();
        assert!(report.first_bad.is_none(), "{tenant}: {report:?}");
    }
    restored.close().await;
    eprintln!(
        "sqlite backup test: {} runs in the backup of {} written, {:.2}s",
        expected.runs.len(),
        live.runs.len(),
        started.elapsed().as_secs_f64()
    );
}

/// A PostgreSQL cluster of the test's own, in a temporary directory, stopped (by its data
/// directory) when dropped.
struct Cluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    /// Run the server tools as this user (initdb refuses root).
    run_as: Option<String>,
}

impl Cluster {
    /// The highest installed `/usr/lib/postgresql/<major>/bin` holding `initdb`.
    fn find_bin() -> Option<PathBuf> {
        let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(Result::ok)
            .filter_map(|e| {
                let major = e.file_name().to_str()?.parse::<u32>().ok()?;
                let bin = e.path().join("bin");
                bin.join("initdb").is_file().then_some((major, bin))
            })
            .collect();
        found.sort();
        found.pop().map(|(_, bin)| bin)
    }

    fn tool(&self, name: &str) -> Command {
        let program = self.bin.join(name);
        match &self.run_as {
            Some(user) => {
                let mut cmd = Command::new("runuser");
                cmd.arg("-u").arg(user).arg("--").arg(program);
                cmd
            }
            None => Command::new(program),
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn start(bin: PathBuf) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let uid = Command::new("id").arg("-u").output().unwrap();
        let root = String::from_utf8_lossy(&uid.stdout).trim() == "0";
        let run_as = root.then(|| "postgres".to_owned());
        if let Some(user) = &run_as {
            let chown = Command::new("chown")
                .arg("-R")
                .arg(user)
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(chown.success(), "chown of the cluster directory");
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cluster = Self {
            bin,
            dir,
            port,
            run_as,
        };
        let pwfile = cluster.dir.path().join("pw");
        std::fs::write(&pwfile, "superuser-pw\n").unwrap();
        if let Some(user) = &cluster.run_as {
            Command::new("chown")
                .arg(user)
                .arg(&pwfile)
                .status()
                .unwrap();
        }
        let init = cluster
            .tool("initdb")
            .arg("-D")
            .arg(cluster.data())
            .args([
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
                "--auth-local=trust",
            ])
            .arg("--auth-host=scram-sha-256")
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .unwrap();
        assert!(
            init.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -c unix_socket_directories={} -c fsync=off",
            cluster.port,
            cluster.dir.path().display()
        );
        let started = cluster
            .tool("pg_ctl")
            .arg("-D")
            .arg(cluster.data())
            .arg("-o")
            .arg(options)
            .arg("-l")
            .arg(cluster.dir.path().join("log"))
            .args(["-w", "start"])
            .output()
            .unwrap();
        assert!(
            started.status.success(),
            "pg_ctl start: {}",
            String::from_utf8_lossy(&started.stderr)
        );
        cluster
    }

    /// Runs each statement, in its own transaction, as the superuser over the cluster's own
    /// socket.
    fn psql(&self, database: &str, statements: &[&str]) {
        let mut cmd = Command::new(self.bin.join("psql"));
        cmd.arg("-h")
            .arg(self.dir.path())
            .arg("-p")
            .arg(self.port.to_string())
            .args([
                "-U",
                "postgres",
                "-v",
                "ON_ERROR_STOP=1",
                "-X",
                "-q",
                "-d",
                database,
            ]);
        for sql in statements {
            cmd.arg("-c").arg(sql);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "psql: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn url(&self, user: &str, password: &str, database: &str) -> String {
        format!(
            "postgres://{user}:{password}@127.0.0.1:{}/{database}",
            self.port
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self
            .tool("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_backup_under_load_restores_the_state_as_of_the_backup() {
    let Some(bin) = Cluster::find_bin() else {
        eprintln!("notice: PostgreSQL backup test skipped: initdb is not installed");
        return;
    };
    let started = Instant::now();
    let cluster = Cluster::start(bin.clone());
    cluster.psql("postgres", &[POSTGRES_ROLES]);
    cluster.psql(
        "postgres",
        &[
            "ALTER ROLE steward_owner PASSWORD 'owner pw/1'",
            "ALTER ROLE steward_service PASSWORD 'service-pw'",
            "CREATE ROLE steward_backup LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE BYPASSRLS \
             PASSWORD 'backup@pw'",
            "GRANT pg_read_all_data TO steward_backup",
            "CREATE DATABASE steward OWNER steward_owner",
        ],
    );
    let owner = cluster.url("steward_owner", "owner%20pw%2F1", "steward");
    let service = cluster.url("steward_service", "service-pw", "steward");
    let backup_url = cluster.url("steward_backup", "backup%40pw", "steward");

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("owner_url"), &owner).unwrap();
    std::fs::write(dir.path().join("backup_url"), &backup_url).unwrap();
    let config = dir.path().join("steward.toml");
    std::fs::write(
        &config,
        format!(
            "postgres_url = {{ env = \"STEWARD_BACKUP_TEST_UNUSED\" }}\n\
             postgres_migrate_url = {{ file = \"owner_url\" }}\n\
             [backup]\npostgres_url = {{ file = \"backup_url\" }}\npg_bin_dir = \"{}\"\n",
            bin.display()
        ),
    )
    .unwrap();

    let clock = FixedClock::at_secs(T0_SECS);
    let open = |migrate: bool| {
        let mut opts = PgOptions::new(SecretString::from(service.clone()));
        opts.migrate_url = migrate.then(|| SecretString::from(owner.clone()));
        opts.max_connections = 8;
        opts.clock = Arc::new(clock.clone());
        Store::open_postgres(opts)
    };
    let store = open(true).await.unwrap();
    register(&store).await;

    let load = Load::start(&store, 2);
    load.wait_for(60).await;
    let out = dir.path().join("steward-1.dump");
    let before = load.writes();
    let manifest = take_backup(&BackupArgs {
        out: out.clone(),
        config: Some(config.clone()),
        database_url: None,
        database: None,
    })
    .await
    .unwrap();
    let after_backup = load.writes();
    load.wait_for(after_backup + 30).await;
    let approvals = load.stop().await;
    assert!(
        after_backup > before,
        "writes went on while the backup was taken"
    );

    assert_eq!(manifest.backend, backup::BackupBackend::Postgres);
    assert_eq!(manifest.consistency, "exported-snapshot");
    assert_eq!(
        manifest.schema_version,
        backup::known_schema_version(Backend::Postgres)
    );
    let manifest_text = std::fs::read_to_string(backup::manifest_path(&out)).unwrap();
    for secret in ["backup@pw", "backup%40pw", "owner pw", "service-pw"] {
        assert!(
            !manifest_text.contains(secret),
            "the manifest holds no password"
        );
    }
    let live = read_state(&store, &approvals).await;
    let expected = as_of(&live, &manifest);
    assert!(
        expected.runs.len() < live.runs.len(),
        "the backup predates later runs"
    );
    assert_eq!(manifest.tables["runs"], expected.runs.len() as u64);
    assert_eq!(
        manifest.tables["approvals"],
        expected.approvals.len() as u64
    );

    let restore_args = |from: PathBuf| RestoreArgs {
        from,
        config: Some(config.clone()),
        to: None,
        database_url: None,
        verify_url: None,
    };
    // Into the live database: refused (it holds tables, and a server is connected).
    let err = run_restore(&restore_args(out.clone())).await.unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        matches!(
            err.downcast_ref::<BackupError>(),
            Some(BackupError::NotEmpty(_))
        ),
        "{msg}"
    );
    assert_eq!(
        read_state(&store, &approvals).await,
        live,
        "the live store is untouched"
    );
    damaged_and_newer_backups_are_refused(&out, restore_args).await;

    // Destroy the database, then restore into a new empty one.
    store.close().await;
    cluster.psql(
        "postgres",
        &[
            "DROP DATABASE steward WITH (FORCE)",
            "CREATE DATABASE steward OWNER steward_owner",
        ],
    );
    let (report, target) = run_restore(&restore_args(out.clone())).await.unwrap();
    assert_eq!(target, format!("127.0.0.1:{}/steward", cluster.port));
    check_report(&report, &manifest);

    let restored = open(false).await.unwrap();
    assert_same(&read_state(&restored, &approvals).await, &expected);
    for tenant in TENANTS {
        let report = restored.verify_audit(&scope(tenant)).await.unwrap();
        assert!(report.first_bad.is_none(), "{tenant}: {report:?}");
    }
    restored.close().await;
    eprintln!(
        "postgres backup test: {} runs in the backup of {} written, {:.2}s",
        expected.runs.len(),
        live.runs.len(),
        started.elapsed().as_secs_f64()
    );
}
