//! Shared fixtures: a store on a fresh database (a file in a temporary directory, or a
//! PostgreSQL database of its own) with a clock the test controls, tenants, runs and steps with
//! sensible defaults, and a raw connection for tampering like an attacker would.
//!
//! Every test body runs against both backends through [`conformance!`]. The PostgreSQL half
//! uses the server named by `STEWARD_TEST_POSTGRES` (a superuser URL), or
//! `postgres://postgres@127.0.0.1:5432/postgres` when it is unset. Each test makes its own
//! database, owned by `steward_owner`, and drops it when done. When no server answers, the
//! PostgreSQL half fails if the variable is set and is skipped with a notice otherwise.

use std::future::Future;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use secrecy::SecretString;
use serde_json::json;
use sqlx::postgres::PgConnectOptions;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{AnyConnection, ConnectOptions, Connection, Executor};
use steward_core::{ApprovalId, FixedClock, IncidentRef, RunId, SourceName, TenantId};
use steward_persistence::{
    AuditDraft, Authenticator, Backend, IntakeOutcome, NewApproval, NewRun, POSTGRES_ROLES,
    PgOptions, StepWrite, Store, StoreOptions, TenantRecord, TenantScope,
};
use tempfile::TempDir;

/// 2023-11-14T22:13:20Z.
pub(crate) const T0_SECS: i64 = 1_700_000_000;

/// The variable that names the PostgreSQL server and makes its absence a failure.
const POSTGRES_ENV: &str = "STEWARD_TEST_POSTGRES";
const DEFAULT_POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/postgres";

tokio::task_local! {
    static BACKEND: Backend;
}

/// Generates, for each named `async fn()`, a `sqlite` and a `postgres` test that run it.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod conformance {
            $(
                mod $name {
                    #[tokio::test]
                    async fn sqlite() {
                        crate::support::on(steward_persistence::Backend::Sqlite, super::super::$name()).await;
                    }

                    #[tokio::test]
                    async fn postgres() {
                        crate::support::on(steward_persistence::Backend::Postgres, super::super::$name()).await;
                    }
                }
            )*
        }
    };
}

/// Generates a `sqlite` test for each named `async fn()` whose body reads SQLite's files or
/// SQLite-only SQL.
macro_rules! sqlite_only {
    ($($name:ident),* $(,)?) => {
        mod sqlite_only {
            $(
                mod $name {
                    #[tokio::test]
                    async fn sqlite() {
                        crate::support::on(steward_persistence::Backend::Sqlite, super::super::$name()).await;
                    }
                }
            )*
        }
    };
}

pub(crate) use {conformance, sqlite_only};

/// Runs `body` with `backend` as the backend every [`TestDb`] in it opens, or skips it when
/// PostgreSQL is wanted, not required and not running.
pub(crate) async fn on(backend: Backend, body: impl Future<Output = ()>) {
    if backend == Backend::Postgres && !postgres_ready().await {
        return;
    }
    BACKEND.scope(backend, body).await;
}

/// The backend of the running test.
pub(crate) fn backend() -> Backend {
    BACKEND.try_with(|b| *b).unwrap_or(Backend::Sqlite)
}

fn admin_url() -> String {
    std::env::var(POSTGRES_ENV).unwrap_or_else(|_| DEFAULT_POSTGRES.to_owned())
}

/// Whether the server answers (and its roles exist); asked once per test binary.
async fn postgres_ready() -> bool {
    static READY: tokio::sync::OnceCell<bool> = tokio::sync::OnceCell::const_new();
    *READY.get_or_init(check_postgres).await
}

async fn check_postgres() -> bool {
    let required = std::env::var_os(POSTGRES_ENV).is_some();
    match admin().await {
        Ok(mut conn) => {
            conn.execute(POSTGRES_ROLES)
                .await
                .expect("creating the steward roles on the test server");
            conn.close().await.ok();
            true
        }
        Err(e) if required => {
            panic!("{POSTGRES_ENV} is set but the PostgreSQL server does not answer: {e}")
        }
        Err(e) => {
            eprintln!(
                "notice: PostgreSQL conformance tests skipped, no server at {DEFAULT_POSTGRES} \
                 ({e}); set {POSTGRES_ENV} to require them"
            );
            false
        }
    }
}

/// A superuser connection to the server's maintenance database.
async fn admin() -> Result<AnyConnection, sqlx::Error> {
    sqlx::any::install_default_drivers();
    AnyConnection::connect(&admin_url()).await
}

/// The URL of `database` on the test server as `user`.
pub(crate) fn pg_url(user: &str, database: &str) -> String {
    PgConnectOptions::from_str(&admin_url())
        .expect("a PostgreSQL URL")
        .username(user)
        .database(database)
        .to_url_lossy()
        .to_string()
}

/// A PostgreSQL database made for one test and dropped after it.
pub(crate) struct PgDb {
    pub(crate) name: String,
}

impl PgDb {
    async fn create() -> Self {
        let name = format!("steward_test_{:016x}", rand::random::<u64>());
        let mut conn = admin().await.unwrap();
        conn.execute(format!("CREATE DATABASE {name} OWNER steward_owner").as_str())
            .await
            .unwrap();
        conn.close().await.ok();
        Self { name }
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let mut conn = admin().await?;
                conn.execute(sql.as_str()).await?;
                conn.close().await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("notice: test database {} was not dropped", self.name);
        }
    }
}

/// Where a test's database lives.
pub(crate) enum Place {
    File(TempDir),
    Postgres(PgDb),
}

pub(crate) struct TestDb {
    pub(crate) store: Store,
    pub(crate) clock: FixedClock,
    pub(crate) place: Place,
}

impl TestDb {
    /// A fresh store with tenants `us-acme` and `eu-beta` registered.
    pub(crate) async fn new() -> Self {
        let clock = FixedClock::at_secs(T0_SECS);
        let place = match backend() {
            Backend::Sqlite => Place::File(tempfile::tempdir().unwrap()),
            Backend::Postgres => Place::Postgres(PgDb::create().await),
        };
        let store = open_at(&place, &clock, true).await;
        for id in ["us-acme", "eu-beta"] {
            register(&store, id).await;
        }
        Self {
            store,
            clock,
            place,
        }
    }

    /// The backend this database runs on.
    pub(crate) fn backend(&self) -> Backend {
        self.store.backend()
    }

    /// The SQLite file (SQLite only).
    pub(crate) fn path(&self) -> PathBuf {
        match &self.place {
            Place::File(dir) => dir.path().join("steward.db"),
            Place::Postgres(_) => panic!("a PostgreSQL store has no file"),
        }
    }

    /// Another handle on the same database, as a second process would open it.
    pub(crate) async fn second_process(&self) -> Store {
        open_at(&self.place, &self.clock, false).await
    }

    /// Closes the store and opens the same database again.
    pub(crate) async fn restart(&mut self) {
        self.store.close().await;
        self.store = open_at(&self.place, &self.clock, false).await;
    }

    /// A connection that bypasses the store entirely: the file itself, or a superuser
    /// connection that row-level security does not apply to.
    pub(crate) async fn raw(&self) -> AnyConnection {
        match &self.place {
            Place::File(_) => {
                let url = SqliteConnectOptions::new()
                    .filename(self.path())
                    .to_url_lossy();
                AnyConnection::connect(url.as_str()).await.unwrap()
            }
            Place::Postgres(db) => {
                let admin = PgConnectOptions::from_str(&admin_url()).unwrap();
                let url = pg_url(admin.get_username(), &db.name);
                AnyConnection::connect(&url).await.unwrap()
            }
        }
    }

    /// A raw connection with the audit log's append-only triggers removed, as an attacker
    /// with full control of the database has.
    pub(crate) async fn attacker(&self) -> AnyConnection {
        let mut raw = self.raw().await;
        for trigger in ["audit_log_no_update", "audit_log_no_delete"] {
            let sql = match self.backend() {
                Backend::Sqlite => format!("DROP TRIGGER {trigger}"),
                Backend::Postgres => format!("DROP TRIGGER {trigger} ON audit_log"),
            };
            raw.execute(sql.as_str()).await.unwrap();
        }
        raw
    }

    /// Every byte the database keeps on disk: main file, WAL and shared memory (SQLite only).
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

    /// Everything the database keeps, as text: the SQLite files, or on PostgreSQL every row
    /// of every table as JSON.
    pub(crate) async fn stored_text(&self) -> String {
        if self.backend() == Backend::Sqlite {
            return String::from_utf8_lossy(&self.disk_bytes()).into_owned();
        }
        let mut raw = self.raw().await;
        let tables: Vec<String> =
            sqlx::query_scalar("SELECT tablename::text FROM pg_tables WHERE schemaname = 'public'")
                .fetch_all(&mut raw)
                .await
                .unwrap();
        let mut all = String::new();
        for table in tables {
            let sql = format!(
                "SELECT COALESCE(string_agg(row_to_json(t)::text, E'\\n'), '') FROM {table} t"
            );
            let rows: String = sqlx::query_scalar(&sql).fetch_one(&mut raw).await.unwrap();
            all.push_str(&rows);
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

    /// Records a run through intake and a step that opens a fresh approval for it, so the run
    /// waits on that approval: (run, approval).
    /// `N` runs of `tenant`, taken in one after another.
    pub(crate) async fn intakes<const N: usize>(&self, tenant: &str) -> [RunId; N] {
        let mut runs = Vec::with_capacity(N);
        for _ in 0..N {
            runs.push(self.intake(tenant).await);
        }
        runs.try_into().expect("N runs")
    }

    pub(crate) async fn waiting(&self, tenant: &str) -> (RunId, ApprovalId) {
        let run = self.intake(tenant).await;
        let approval = ApprovalId::new();
        let mut ask = step(run, 1, "awaiting_approval");
        ask.new_approval = Some(NewApproval {
            id: approval,
            diff_hash: "sha256:abc".into(),
            record_version: "7".into(),
            policy: json!({"decision": "allow_with_approval"}),
        });
        self.store.append_step(&scope(tenant), ask).await.unwrap();
        (run, approval)
    }
}

/// Opens the store at `place`; `migrate` applies PostgreSQL migrations as the owner role.
pub(crate) async fn open_at(place: &Place, clock: &FixedClock, migrate: bool) -> Store {
    match place {
        Place::File(dir) => {
            let mut opts = StoreOptions::new(dir.path().join("steward.db"));
            opts.synchronous_full = false;
            opts.clock = Arc::new(clock.clone());
            Store::open(opts).await.unwrap()
        }
        Place::Postgres(db) => {
            let mut opts = PgOptions::new(SecretString::from(pg_url("steward_service", &db.name)));
            opts.migrate_url =
                migrate.then(|| SecretString::from(pg_url("steward_owner", &db.name)));
            // Four batchers, as in production, so that every PostgreSQL test writes through
            // batchers side by side.
            opts.max_connections = 8;
            opts.batchers = 4;
            opts.clock = Arc::new(clock.clone());
            Store::open_postgres(opts).await.unwrap()
        }
    }
}

/// A fresh database with only the migrations up to version `last` applied, and a connection
/// to it as the schema owner (the file itself on SQLite), for testing what a later migration
/// does to rows stored before it. Open the store on the place to apply the rest.
pub(crate) async fn migrated_through(last: i64) -> (Place, AnyConnection) {
    use sqlx::migrate::Migrate as _;
    let (place, url, migrator) = match backend() {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            let url = SqliteConnectOptions::new()
                .filename(dir.path().join("steward.db"))
                .create_if_missing(true)
                .to_url_lossy();
            let migrator = sqlx::migrate!("./migrations/sqlite");
            (Place::File(dir), url.to_string(), migrator)
        }
        Backend::Postgres => {
            let db = PgDb::create().await;
            let url = pg_url("steward_owner", &db.name);
            let migrator = sqlx::migrate!("./migrations/postgres");
            (Place::Postgres(db), url, migrator)
        }
    };
    sqlx::any::install_default_drivers();
    let mut conn = AnyConnection::connect(&url).await.unwrap();
    conn.ensure_migrations_table().await.unwrap();
    for migration in migrator.iter().filter(|m| m.version <= last) {
        conn.apply(migration).await.unwrap();
    }
    (place, conn)
}

/// The service role's own connection to the test's PostgreSQL database.
pub(crate) async fn service_connection(db: &TestDb) -> AnyConnection {
    let Place::Postgres(pg) = &db.place else {
        panic!("only a PostgreSQL store has a service role")
    };
    AnyConnection::connect(&pg_url("steward_service", &pg.name))
        .await
        .unwrap()
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
        change: None,
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
        charges: vec![],
        approval_message: None,
        clears_timers: false,
    }
}

impl TestDb {
    /// The test clock's time in Unix ms.
    pub(crate) fn clock_ms(&self) -> i64 {
        use steward_core::Clock;
        self.clock.now_millis()
    }
}
