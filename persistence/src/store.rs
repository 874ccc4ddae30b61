//! The store handle: the pools, the write discipline of each backend, the tenant and platform
//! settings of each transaction, and the clock.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::pool::PoolOptions;
use sqlx::postgres::PgConnectOptions;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Any, AnyPool, ConnectOptions, Connection, Executor, Transaction};
use steward_core::{Clock, SystemClock};

use crate::batch::{IntakeJob, IntakeQueue, Job, ReserveJob, StepJob};
use crate::intake::ValidRun;
use crate::{StoreError, TenantScope};

/// How long a SQLite connection waits for another process's write lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The SQLite writer's page cache: `PRAGMA cache_size` takes a negative number as KiB, so
/// this is 32 MiB, filled only as pages are read.
const WRITER_CACHE_KIB: i64 = -32_768;

/// The PostgreSQL role platform-level calls switch to, for one transaction at a time.
const PLATFORM_ROLE: &str = "steward_platform";

/// SQL that creates, idempotently, the three PostgreSQL roles a store needs (`steward_owner`,
/// `steward_service`, `steward_platform`); run it as a role that may create roles, before the
/// first migration.
pub const POSTGRES_ROLES: &str = include_str!("../sql/postgres_roles.sql");

/// A transaction on either backend. Dropping it without `commit` rolls it back.
pub(crate) type WriteTx = Transaction<'static, Any>;

/// A read transaction: the same type, opened on the reader pool.
pub(crate) type ReadTx = Transaction<'static, Any>;

/// What a read of one statement runs on ([`Store::read_one_as`]): on SQLite a reader
/// connection as it is, where the statement is its own transaction; on PostgreSQL a read
/// transaction that names the tenant for row-level security.
pub(crate) enum OneRead {
    Conn(sqlx::pool::PoolConnection<Any>),
    Tx(ReadTx),
}

impl std::ops::Deref for OneRead {
    type Target = sqlx::AnyConnection;
    fn deref(&self) -> &Self::Target {
        match self {
            OneRead::Conn(conn) => conn,
            OneRead::Tx(tx) => tx,
        }
    }
}

impl std::ops::DerefMut for OneRead {
    fn deref_mut(&mut self) -> &mut Self::Target {
        match self {
            OneRead::Conn(conn) => conn,
            OneRead::Tx(tx) => tx,
        }
    }
}

/// How to open a SQLite [`Store`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// The database file; it and its parent directories are created if missing. It must be a
    /// real file, not `:memory:`: the readers and the writer are separate connections.
    pub path: PathBuf,
    /// `synchronous=FULL` (every commit reaches the disk) when true, `NORMAL` when false.
    /// NORMAL in WAL mode stays consistent after a crash but may lose the last commits on
    /// power loss; keep FULL in production.
    pub synchronous_full: bool,
    /// Size of the reader pool (at least 1).
    pub read_connections: u32,
    /// The time source for every timestamp the store writes.
    pub clock: Arc<dyn Clock>,
}

impl StoreOptions {
    /// Defaults for a production store at `path`: FULL sync, 4 readers, the system clock.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            synchronous_full: true,
            read_connections: 4,
            clock: Arc::new(SystemClock),
        }
    }
}

/// How to open a PostgreSQL [`Store`].
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// `postgres://…` URL of the service role: a role that owns no table, holds only DML
    /// grants and cannot bypass row-level security (see the crate docs).
    pub url: SecretString,
    /// `postgres://…` URL of the schema owner role; when given, migrations are applied through
    /// it before the service pool opens. When absent the schema must already be current.
    pub migrate_url: Option<SecretString>,
    /// Size of the service pool (at least 1).
    pub max_connections: u32,
    /// How many group-commit batchers write side by side (at least 1, at most half the pool:
    /// each holds a connection while it writes a batch).
    pub batchers: usize,
    /// The time source for every timestamp the store writes.
    pub clock: Arc<dyn Clock>,
}

impl PgOptions {
    /// Defaults for the service role at `url`: no migrations, 8 connections, 4 batchers, the
    /// system clock.
    pub fn new(url: SecretString) -> Self {
        Self {
            url,
            migrate_url: None,
            max_connections: 8,
            batchers: 4,
            clock: Arc::new(SystemClock),
        }
    }
}

/// Which database a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite in WAL mode, one writer.
    Sqlite,
    /// PostgreSQL with row-level security.
    Postgres,
}

/// Handle to Steward's database. Cheap to clone; clones share the pools.
///
/// On SQLite, writes go through exactly one connection, and each write transaction takes the
/// write lock up front (`BEGIN IMMEDIATE`), so a transaction never fails upgrading a read lock
/// to a write lock, and other processes on the same file (operator commands) wait their turn
/// within the busy timeout. Reads use a separate pool that cannot write. On PostgreSQL one
/// pool serves both, and every transaction names its tenant before it touches tenant rows.
///
/// Intake is group-committed: a batcher task, started by `open` and stopped by
/// [`Store::close`], writes the runs of concurrent [`Store::record_intake`] calls in one
/// transaction and answers each after that transaction's commit.
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<Inner>,
    /// The intake batcher's queue; empty in the batcher's own handle, so that the task does
    /// not keep itself alive: it ends once every other handle is dropped or the store closed.
    intake: Arc<IntakeQueue>,
}

#[derive(Debug)]
struct Inner {
    backend: Backend,
    writer: AnyPool,
    reader: AnyPool,
    clock: Arc<dyn Clock>,
    /// Signalled when a timer is set, so the timer service notices one due before it expected.
    timer_signal: tokio::sync::Notify,
    /// The master key tenant content is sealed under and the cache of unwrapped data keys.
    content: crate::content::ContentKeys,
    /// What intake read of each webhook source and its secrets lately.
    sources: crate::sources::SourceCache,
    /// The leases this node holds, when it shares the database with other nodes: journal
    /// writes are then fenced by them (see `leases.rs`). Unset on a single node.
    fencing: std::sync::OnceLock<Arc<dyn crate::leases::Fencing>>,
    /// The service role's URL on PostgreSQL, for the connection that listens for wake-ups.
    listen_url: std::sync::OnceLock<SecretString>,
    /// When this process last removed each tenant's expired meter windows (store clock, ms).
    meters_pruned: std::sync::Mutex<std::collections::HashMap<String, i64>>,
    /// SQLite's background checkpoints; unset on PostgreSQL.
    checkpointer: std::sync::OnceLock<crate::checkpoint::Checkpointer>,
    /// How the intake batches were written since the store opened.
    intake_paths: crate::batch::PathCounters,
}

/// The pragmas every SQLite connection runs with; readers add `query_only`.
fn sqlite_pragmas(synchronous_full: bool, read_only: bool) -> String {
    let sync = if synchronous_full { "FULL" } else { "NORMAL" };
    let mut sql = format!(
        "PRAGMA busy_timeout = {}; PRAGMA foreign_keys = ON; PRAGMA synchronous = {sync};",
        BUSY_TIMEOUT.as_millis()
    );
    if read_only {
        sql.push_str(" PRAGMA query_only = ON;");
    }
    sql
}

/// A pool whose every new connection first runs `setup`.
fn pool_with_setup(setup: String) -> PoolOptions<Any> {
    AnyPoolOptions::new().after_connect(move |conn, _meta| {
        let setup = setup.clone();
        Box::pin(async move {
            conn.execute(setup.as_str()).await?;
            Ok(())
        })
    })
}

/// Creates the database file, when it does not exist yet, readable and writable by its owner
/// alone (SQLite gives its `-wal` and `-shm` files the same mode). An existing file keeps its
/// mode; `steward checklist` reports one that others may read.
fn create_private(path: &std::path::Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

impl Store {
    /// Opens (creating if needed, with mode 0600) the SQLite database, switches it to WAL and
    /// applies migrations.
    pub async fn open(opts: StoreOptions) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        if let Some(dir) = opts.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(sqlx::Error::Io)?;
        }
        create_private(&opts.path).map_err(sqlx::Error::Io)?;
        let url = SqliteConnectOptions::new()
            .filename(&opts.path)
            .create_if_missing(true)
            .to_url_lossy();
        let connect = AnyConnectOptions::from_url(&url)?;

        // The writer leaves checkpoints to a connection of its own (`checkpoint.rs`), and
        // keeps a larger page cache: every batch walks the same indexes. Its savepoints' page
        // copies (the sub-journal) stay in memory: by default SQLite spills them past 64 KiB
        // to a file in the temporary directory, which a batch of a few dozen runs does, and
        // those writes then share the disk with the commit's sync.
        let writer_setup = format!(
            "{} PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = {}; \
             PRAGMA cache_size = {WRITER_CACHE_KIB}; PRAGMA temp_store = MEMORY;",
            sqlite_pragmas(opts.synchronous_full, false),
            crate::checkpoint::WRITER_BACKSTOP,
        );
        let writer = pool_with_setup(writer_setup)
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .test_before_acquire(false)
            .connect_with(connect.clone())
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&writer).await?;

        // A connection to a local file cannot go stale the way a network one can, so neither
        // pool pings a connection before handing it out (a hand-off per transaction saved).
        let reader = pool_with_setup(sqlite_pragmas(opts.synchronous_full, true))
            .max_connections(opts.read_connections.max(1))
            .test_before_acquire(false)
            .connect_with(connect.clone())
            .await?;
        let checkpoints = pool_with_setup(sqlite_pragmas(opts.synchronous_full, false))
            .max_connections(1)
            .test_before_acquire(false)
            .connect_lazy_with(connect);
        // One writer connection: one batcher.
        let store = Self::assemble(Backend::Sqlite, writer, reader, opts.clock, 1);
        let _ = store
            .inner
            .checkpointer
            .set(crate::checkpoint::Checkpointer::start(checkpoints));
        Ok(store)
    }

    /// Opens a PostgreSQL store: applies migrations as the owner role when `migrate_url` is
    /// given, then connects the service pool.
    pub async fn open_postgres(opts: PgOptions) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        if let Some(owner) = &opts.migrate_url {
            let owner = PgConnectOptions::from_str(owner.expose_secret())?;
            let mut conn = owner.connect().await?;
            sqlx::migrate!("./migrations/postgres")
                .run(&mut conn)
                .await?;
            conn.close().await?;
        }
        let connect = AnyConnectOptions::from_str(opts.url.expose_secret())?;
        let pool = AnyPoolOptions::new()
            .max_connections(opts.max_connections.max(1))
            .connect_with(connect)
            .await?;
        // Batchers write side by side, each on a connection of the pool while it writes; at
        // most half the pool, so the rest is left to readers and other writes.
        let half = usize::try_from(opts.max_connections / 2).unwrap_or(usize::MAX);
        let batchers = opts.batchers.clamp(1, half.max(1));
        let store = Self::assemble(Backend::Postgres, pool.clone(), pool, opts.clock, batchers);
        store.set_listen_url(opts.url.clone());
        Ok(store)
    }

    fn set_listen_url(&self, url: SecretString) {
        let _ = self.inner.listen_url.set(url);
    }

    fn assemble(
        backend: Backend,
        writer: AnyPool,
        reader: AnyPool,
        clock: Arc<dyn Clock>,
        batchers: usize,
    ) -> Self {
        let inner = Inner {
            backend,
            writer,
            reader,
            clock,
            timer_signal: tokio::sync::Notify::new(),
            content: crate::content::ContentKeys::new(),
            sources: crate::sources::SourceCache::default(),
            fencing: std::sync::OnceLock::new(),
            listen_url: std::sync::OnceLock::new(),
            meters_pruned: std::sync::Mutex::new(std::collections::HashMap::new()),
            checkpointer: std::sync::OnceLock::new(),
            intake_paths: crate::batch::PathCounters::default(),
        };
        let batcher = Store {
            inner: Arc::new(inner),
            intake: Arc::new(IntakeQueue::default()),
        };
        Store {
            inner: Arc::clone(&batcher.inner),
            intake: Arc::new(IntakeQueue::start(batcher, batchers)),
        }
    }

    /// Which database this store runs on.
    pub fn backend(&self) -> Backend {
        self.inner.backend
    }

    /// Checks that the database answers a query (for readiness probes).
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.inner.reader).await?;
        Ok(())
    }

    /// The clock the store stamps rows with.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    /// Stops the intake batcher once it has written and answered every run already handed to
    /// it, and SQLite's background checkpoints, then closes both pools, waiting for
    /// connections in use to be returned. Later calls on any clone fail with a closed-pool
    /// error.
    pub async fn close(&self) {
        self.intake.stop().await;
        if let Some(checkpointer) = self.inner.checkpointer.get() {
            checkpointer.stop().await;
        }
        self.inner.reader.close().await;
        self.inner.writer.close().await;
    }

    /// Now, in Unix milliseconds, from the store's clock.
    pub(crate) fn now(&self) -> i64 {
        self.inner.clock.now_millis()
    }

    /// The service role's URL, on PostgreSQL.
    pub(crate) fn listen_url(&self) -> Option<&SecretString> {
        self.inner.listen_url.get()
    }

    /// The leases journal writes are fenced by, once [`Store::fence_with`] set them.
    pub(crate) fn fencing(&self) -> Option<&Arc<dyn crate::leases::Fencing>> {
        self.inner.fencing.get()
    }

    /// From now on, every journal write of this store (and its clones) commits only under the
    /// fencing token `fencing` reports for the write's tenant, and is refused (Conflict) for a
    /// tenant this node holds no lease of. Set once, by a node that shares the database with
    /// others; Invalid when already set.
    pub fn fence_with(&self, fencing: Arc<dyn crate::leases::Fencing>) -> Result<(), StoreError> {
        self.inner
            .fencing
            .set(fencing)
            .map_err(|_| StoreError::Invalid("the store's fencing is already set".into()))
    }

    /// Whether this store runs on PostgreSQL (for the few statements that differ).
    pub(crate) fn is_postgres(&self) -> bool {
        self.inner.backend == Backend::Postgres
    }

    /// The content master key and data key cache.
    pub(crate) fn content_keys(&self) -> &crate::content::ContentKeys {
        &self.inner.content
    }

    /// What intake read of each webhook source and its secrets lately.
    pub(crate) fn source_cache(&self) -> &crate::sources::SourceCache {
        &self.inner.sources
    }

    /// How the intake batches were written since the store opened.
    pub(crate) fn path_counters(&self) -> &crate::batch::PathCounters {
        &self.inner.intake_paths
    }

    /// When this process last removed each tenant's expired meter windows.
    pub(crate) fn meters_pruned(
        &self,
    ) -> &std::sync::Mutex<std::collections::HashMap<String, i64>> {
        &self.inner.meters_pruned
    }

    /// The signal behind [`Store::timer_set`].
    pub(crate) fn timer_signal(&self) -> &tokio::sync::Notify {
        &self.inner.timer_signal
    }

    /// The one way to write: on SQLite a transaction on the single writer connection that
    /// holds the write lock from its first statement; on PostgreSQL a pooled transaction.
    /// Tenant rows are invisible to it until [`Store::set_tenant`] names their tenant.
    pub(crate) async fn begin_write(&self) -> Result<WriteTx, StoreError> {
        let tx = match self.inner.backend {
            Backend::Sqlite => self.inner.writer.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.inner.writer.begin().await?,
        };
        Ok(tx)
    }

    /// A write transaction in which the scope's tenant is set.
    pub(crate) async fn begin_write_as(&self, scope: &TenantScope) -> Result<WriteTx, StoreError> {
        let mut tx = self.begin_write().await?;
        self.set_tenant(&mut tx, scope.id()).await?;
        Ok(tx)
    }

    /// A write transaction for tenant data; fails with NotFound when the scope's tenant is not
    /// registered, so no row is written for a tenant the platform does not know.
    pub(crate) async fn begin_tenant_write(
        &self,
        scope: &TenantScope,
    ) -> Result<WriteTx, StoreError> {
        let mut tx = self.begin_write().await?;
        self.enter_tenant(&mut tx, scope).await?;
        Ok(tx)
    }

    /// Names the scope's tenant in `tx` (see [`Store::set_tenant`]) and checks that it is
    /// registered: NotFound when it is not, so no row is written for an unknown tenant.
    pub(crate) async fn enter_tenant(
        &self,
        tx: &mut WriteTx,
        scope: &TenantScope,
    ) -> Result<(), StoreError> {
        self.set_tenant(tx, scope.id()).await?;
        let found = sqlx::query("SELECT id FROM tenants WHERE id = $1")
            .bind(scope.id())
            .fetch_optional(&mut **tx)
            .await?;
        if found.is_none() {
            return Err(StoreError::NotFound(format!(
                "tenant `{}` is not registered",
                scope.tenant()
            )));
        }
        Ok(())
    }

    /// Hands a validated run to the intake batcher and waits for the answer it sends after
    /// the commit that covers the run.
    pub(crate) async fn submit_intake(
        &self,
        scope: &TenantScope,
        run: ValidRun,
    ) -> Result<crate::IntakeOutcome, StoreError> {
        let scope = scope.clone();
        self.ask_batcher(|reply| Job::Intake(Box::new(IntakeJob { scope, run, reply })))
            .await
    }

    /// Hands a budget reservation (asks checked, in meter order) to the batcher and waits for
    /// the answer it sends after the commit that covers it.
    pub(crate) async fn submit_reservation(
        &self,
        scope: &TenantScope,
        asks: Vec<crate::MeterAsk>,
    ) -> Result<crate::Reservation, StoreError> {
        let scope = scope.clone();
        self.ask_batcher(|reply| Job::Reserve(ReserveJob { scope, asks, reply }))
            .await
    }

    /// Hands an approval's decision and its run's step to the batcher and waits for the answer
    /// it sends after the commit that covers it.
    pub(crate) async fn submit_decision(
        &self,
        job: crate::batch::DecideJob,
    ) -> Result<crate::DecideOutcome, StoreError> {
        self.ask_batcher(|reply| Job::Decide(Box::new((job, reply))))
            .await
    }

    /// Hands a journal step to the batcher and waits for the answer it sends after the commit
    /// that covers it; wakes the timer loop when the step set timers.
    pub(crate) async fn submit_step(
        &self,
        scope: &TenantScope,
        step: crate::StepWrite,
        fence: Option<crate::runs::Fence>,
    ) -> Result<(), StoreError> {
        self.submit_steps(scope, vec![step], fence)
            .await
            .pop()
            .unwrap_or_else(|| Err(StoreError::Corrupt("a step was left unanswered".into())))
    }

    /// Hands the batcher journal steps of one run as one job, so they ride in one batch, in
    /// order, and none is written after one that was not; waits for each answer, and wakes
    /// the timer loop when a step written set timers.
    pub(crate) async fn submit_steps(
        &self,
        scope: &TenantScope,
        steps: Vec<crate::StepWrite>,
        fence: Option<crate::runs::Fence>,
    ) -> Vec<Result<(), StoreError>> {
        let count = steps.len();
        let sets_timers: Vec<bool> = steps.iter().map(|s| !s.timers.is_empty()).collect();
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = Job::Step(Box::new(StepJob {
            scope: scope.clone(),
            steps,
            fence,
            reply,
        }));
        let results = match self.intake.submit(job).await {
            Ok(()) => answer.await.unwrap_or_else(|_| {
                (0..count)
                    .map(|_| Err(StoreError::Db(sqlx::Error::WorkerCrashed)))
                    .collect()
            }),
            Err(e) => {
                let mut all = vec![Err(e)];
                all.extend((1..count).map(|_| Err(StoreError::Db(sqlx::Error::PoolClosed))));
                all
            }
        };
        if results
            .iter()
            .zip(&sets_timers)
            .any(|(r, &t)| t && r.is_ok())
        {
            self.timers_changed();
        }
        results
    }

    /// Hands the batcher the job `make` builds around a reply channel, and waits for its
    /// answer.
    async fn ask_batcher<T>(
        &self,
        make: impl FnOnce(tokio::sync::oneshot::Sender<Result<T, StoreError>>) -> Job,
    ) -> Result<T, StoreError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.intake.submit(make(reply)).await?;
        answer
            .await
            .map_err(|_| StoreError::Db(sqlx::Error::WorkerCrashed))?
    }

    /// A read-only transaction on the reader pool, with no tenant set.
    async fn begin_read(&self) -> Result<ReadTx, StoreError> {
        let tx = match self.inner.backend {
            Backend::Sqlite => self.inner.reader.begin().await?,
            Backend::Postgres => self.inner.reader.begin_with("BEGIN READ ONLY").await?,
        };
        Ok(tx)
    }

    /// Where to run a read of exactly one statement that sees the scope's tenant's rows. On
    /// SQLite a single statement is already a consistent snapshot by itself, so the `BEGIN`
    /// and `ROLLBACK` of a transaction (each a hand-off to the connection's thread) are
    /// skipped; a read of several statements that must agree takes [`Store::read_as`].
    pub(crate) async fn read_one_as(&self, scope: &TenantScope) -> Result<OneRead, StoreError> {
        match self.inner.backend {
            Backend::Sqlite => Ok(OneRead::Conn(self.inner.reader.acquire().await?)),
            Backend::Postgres => Ok(OneRead::Tx(self.read_as(scope).await?)),
        }
    }

    /// A read transaction that sees the scope's tenant's rows.
    pub(crate) async fn read_as(&self, scope: &TenantScope) -> Result<ReadTx, StoreError> {
        self.read_as_tenant(scope.id()).await
    }

    /// A read transaction that sees the rows of the tenant `id`. For authentication paths
    /// that ask about one named tenant before any scope exists.
    pub(crate) async fn read_as_tenant(&self, id: &str) -> Result<ReadTx, StoreError> {
        let mut tx = self.begin_read().await?;
        self.set_tenant(&mut tx, id).await?;
        Ok(tx)
    }

    /// A read transaction for a platform-level call, which sees every tenant's rows of the
    /// tables the platform role is granted.
    pub(crate) async fn read_platform(&self) -> Result<ReadTx, StoreError> {
        let mut tx = self.begin_read().await?;
        self.enter_platform(&mut tx).await?;
        Ok(tx)
    }

    /// A write transaction for a platform-level call (see [`Store::read_platform`]).
    pub(crate) async fn begin_platform_write(&self) -> Result<WriteTx, StoreError> {
        let mut tx = self.begin_write().await?;
        self.enter_platform(&mut tx).await?;
        Ok(tx)
    }

    /// Names the tenant whose rows the following statements of `tx` may see and write
    /// (PostgreSQL row-level security); call it again before each group of statements for
    /// another tenant. SQLite relies on the tenant predicate of every query alone.
    pub(crate) async fn set_tenant(&self, tx: &mut WriteTx, id: &str) -> Result<(), StoreError> {
        if self.is_postgres() {
            sqlx::query("SELECT set_config('steward.tenant', $1, true)")
                .bind(id)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    /// Switches `tx` to the platform role until it ends (PostgreSQL only).
    async fn enter_platform(&self, tx: &mut WriteTx) -> Result<(), StoreError> {
        if self.is_postgres() {
            let sql = format!("SET LOCAL ROLE {PLATFORM_ROLE}");
            tx.execute(sql.as_str()).await?;
        }
        Ok(())
    }

    /// The reader pool, for the store's own unit tests.
    #[cfg(test)]
    pub(crate) fn reader(&self) -> &AnyPool {
        &self.inner.reader
    }

    /// The steps of SQLite's plan for `sql` on a fresh store of the current schema, its
    /// `params` placeholders each bound to 0.
    #[cfg(test)]
    pub(crate) async fn sqlite_plan(sql: &str, params: usize) -> Vec<String> {
        use sqlx::Row;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(StoreOptions::new(dir.path().join("steward.db")))
            .await
            .unwrap();
        let explain = format!("EXPLAIN QUERY PLAN {sql}");
        let mut query = sqlx::query(&explain);
        for _ in 0..params {
            query = query.bind(0_i64);
        }
        let rows = query.fetch_all(store.reader()).await.unwrap();
        store.close().await;
        rows.iter().map(|row| row.get::<String, _>(3)).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sqlx::Row;

    use super::*;

    async fn open(dir: &tempfile::TempDir) -> Store {
        Store::open(StoreOptions::new(dir.path().join("steward.db")))
            .await
            .unwrap()
    }

    /// One read-then-write transaction: read a counter, yield so the other task can run, then
    /// write the counter back incremented.
    async fn read_then_write(store: &Store) -> Result<(), StoreError> {
        let mut tx = store.begin_write().await?;
        let row = sqlx::query("SELECT updated_at FROM tenants WHERE id = 'us-acme'")
            .fetch_one(&mut *tx)
            .await?;
        let count: i64 = row.try_get(0)?;
        tokio::time::sleep(Duration::from_millis(20)).await;
        sqlx::query("UPDATE tenants SET updated_at = $1 WHERE id = 'us-acme'")
            .bind(count + 1)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn counter(store: &Store) -> i64 {
        let row = sqlx::query("SELECT updated_at FROM tenants WHERE id = 'us-acme'")
            .fetch_one(store.reader())
            .await
            .unwrap();
        row.get(0)
    }

    async fn seed(store: &Store) {
        let mut tx = store.begin_write().await.unwrap();
        sqlx::query(
            "INSERT INTO tenants (id, region, name, settings, created_at, updated_at) \
             VALUES ('us-acme', 'us', 'Acme', '{}', 0, 0)",
        )
        .execute(&mut *tx)
        .await
        .unwrap();
        tx.commit().await.unwrap();
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_new_database_and_its_wal_are_private_and_an_existing_mode_is_kept() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir).await;
        seed(&store).await;
        let path = dir.path().join("steward.db");
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&dir.path().join("steward.db-wal")), 0o600);
        store.close().await;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let again = open(&dir).await;
        assert_eq!(
            mode(&path),
            0o640,
            "an operator's choice of mode is left alone"
        );
        again.close().await;
    }

    #[tokio::test]
    async fn the_writer_keeps_its_savepoint_journal_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir).await;
        let mut tx = store.begin_write().await.unwrap();
        let row = sqlx::query("PRAGMA temp_store")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        let temp_store: i64 = row.try_get(0).unwrap();
        assert_eq!(temp_store, 2, "MEMORY");
        drop(tx);
        store.close().await;
    }

    #[tokio::test]
    async fn concurrent_read_then_write_transactions_both_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir).await;
        seed(&store).await;

        let (a, b) = tokio::join!(read_then_write(&store), read_then_write(&store));
        a.unwrap();
        b.unwrap();
        assert_eq!(counter(&store).await, 2, "neither increment may be lost");
    }

    #[tokio::test]
    async fn read_then_write_from_two_processes_waits_instead_of_failing() {
        let dir = tempfile::tempdir().unwrap();
        let first = open(&dir).await;
        let second = open(&dir).await;
        seed(&first).await;

        let rounds = |store: Store| async move {
            for _ in 0..5 {
                read_then_write(&store).await?;
            }
            Ok::<_, StoreError>(())
        };
        let (a, b) = tokio::join!(rounds(first.clone()), rounds(second));
        a.unwrap();
        b.unwrap();
        assert_eq!(counter(&first).await, 10);
    }

    #[tokio::test]
    async fn paths_with_url_characters_open_the_file_they_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a dir?x=1#frag").join("100% steward&.db");
        let store = Store::open(StoreOptions::new(&path)).await.unwrap();
        seed(&store).await;
        store.close().await;
        assert!(path.is_file(), "the file is where the path says");
        let again = Store::open(StoreOptions::new(&path)).await.unwrap();
        assert_eq!(counter(&again).await, 0);
    }

    #[tokio::test]
    async fn opening_creates_missing_directories_and_reopens_with_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested").join("deeper").join("steward.db");
        let store = Store::open(StoreOptions::new(&path)).await.unwrap();
        seed(&store).await;
        store.close().await;
        let again = Store::open(StoreOptions::new(&path)).await.unwrap();
        assert_eq!(counter(&again).await, 0);
    }

    #[tokio::test]
    async fn readers_cannot_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir).await;
        let err = sqlx::query("DELETE FROM tenants")
            .execute(store.reader())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("readonly"), "{err}");
    }

    #[tokio::test]
    async fn a_dropped_write_transaction_rolls_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir).await;
        seed(&store).await;
        {
            let mut tx = store.begin_write().await.unwrap();
            sqlx::query("UPDATE tenants SET updated_at = 99")
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        assert_eq!(counter(&store).await, 0);
        read_then_write(&store).await.unwrap();
        assert_eq!(counter(&store).await, 1);
    }

    #[tokio::test]
    async fn the_database_runs_in_wal_mode_with_foreign_keys() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir).await;
        let mode: String = sqlx::query("PRAGMA journal_mode")
            .fetch_one(store.reader())
            .await
            .unwrap()
            .get(0);
        assert_eq!(mode, "wal");
        let fk: i64 = sqlx::query("PRAGMA foreign_keys")
            .fetch_one(store.reader())
            .await
            .unwrap()
            .get(0);
        assert_eq!(fk, 1);
    }
}
