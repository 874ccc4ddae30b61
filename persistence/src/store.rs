//! The store handle: the SQLite pools, the single-writer discipline and the clock.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Sqlite, Transaction};
use steward_core::{Clock, SystemClock};

use crate::{StoreError, TenantScope};

/// How long a connection waits for another process's write lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// A write transaction, opened with `BEGIN IMMEDIATE` on the writer connection. Dropping it
/// without `commit` rolls it back.
pub(crate) type WriteTx = Transaction<'static, Sqlite>;

/// How to open a [`Store`].
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

/// Handle to Steward's database. Cheap to clone; clones share the pools.
///
/// Writes go through exactly one connection, and each write transaction takes the write lock
/// up front (`BEGIN IMMEDIATE`), so a transaction never fails upgrading a read lock to a write
/// lock, and other processes on the same file (operator commands) wait their turn within the
/// busy timeout. Reads use a separate pool that cannot write.
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    writer: SqlitePool,
    reader: SqlitePool,
    clock: Arc<dyn Clock>,
    /// Signalled when a timer is set, so the timer service notices one due before it expected.
    timer_signal: tokio::sync::Notify,
}

impl Store {
    /// Opens (creating if needed) the database, switches it to WAL and applies migrations.
    pub async fn open(opts: StoreOptions) -> Result<Store, StoreError> {
        if let Some(dir) = opts.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(sqlx::Error::Io)?;
        }
        let sync = if opts.synchronous_full {
            SqliteSynchronous::Full
        } else {
            SqliteSynchronous::Normal
        };
        let base = SqliteConnectOptions::new()
            .filename(&opts.path)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT)
            .synchronous(sync);

        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(
                base.clone()
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal),
            )
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&writer).await?;

        let reader = SqlitePoolOptions::new()
            .max_connections(opts.read_connections.max(1))
            .connect_with(base.pragma("query_only", "ON"))
            .await?;
        let inner = Inner {
            writer,
            reader,
            clock: opts.clock,
            timer_signal: tokio::sync::Notify::new(),
        };
        Ok(Store {
            inner: Arc::new(inner),
        })
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

    /// Closes both pools, waiting for connections in use to be returned. Later calls on any
    /// clone fail with a closed-pool error.
    pub async fn close(&self) {
        self.inner.reader.close().await;
        self.inner.writer.close().await;
    }

    /// Now, in Unix milliseconds, from the store's clock.
    pub(crate) fn now(&self) -> i64 {
        self.inner.clock.now_millis()
    }

    /// The signal behind [`Store::timer_set`].
    pub(crate) fn timer_signal(&self) -> &tokio::sync::Notify {
        &self.inner.timer_signal
    }

    /// The reader pool. Its connections are `query_only`.
    pub(crate) fn reader(&self) -> &SqlitePool {
        &self.inner.reader
    }

    /// The one way to write: a transaction on the single writer connection that holds the
    /// write lock from its first statement.
    pub(crate) async fn begin_write(&self) -> Result<WriteTx, StoreError> {
        Ok(self.inner.writer.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// A write transaction for tenant data; fails with NotFound when the scope's tenant is not
    /// registered, so no row is written for a tenant the platform does not know.
    pub(crate) async fn begin_tenant_write(
        &self,
        scope: &TenantScope,
    ) -> Result<WriteTx, StoreError> {
        let mut tx = self.begin_write().await?;
        let found = sqlx::query("SELECT id FROM tenants WHERE id = $1")
            .bind(scope.id())
            .fetch_optional(&mut *tx)
            .await?;
        if found.is_none() {
            return Err(StoreError::NotFound(format!(
                "tenant `{}` is not registered",
                scope.tenant()
            )));
        }
        Ok(tx)
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
