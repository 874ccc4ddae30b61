//! Backups and restores of a whole database, with a manifest that says what the backup holds.
//!
//! - **SQLite**: `VACUUM INTO` on a read-only connection writes a consistent copy of the
//!   database as of one read transaction, while the server keeps writing (WAL readers do not
//!   block the writer). It is plain SQL through sqlx, so no unsafe FFI to SQLite's backup API is
//!   needed; the backup API, driven page by page while another connection writes, restarts
//!   its copy after every write, and copied in one step it holds the same kind of read
//!   transaction as `VACUUM INTO` does. The copy is compacted and in rollback-journal mode. The
//!   manifest's row counts and chain heads are read from the copy itself, so they describe
//!   exactly the file's contents.
//! - **PostgreSQL**: `pg_dump --format=custom` as a role that reads every row (see
//!   `docs/operations/backup.md`). Counts and chain heads are read in a `REPEATABLE READ`
//!   transaction whose snapshot is exported and handed to `pg_dump --snapshot`, so the dump
//!   and the manifest describe the same moment. `pg_restore` loads it into an empty database
//!   as the schema owner.
//!
//! Restores check the manifest (format, backend, schema version, size, SHA-256) before
//! touching anything, refuse a target a server is using, and compare the restored database's
//! row counts and chain heads with the manifest. Passwords reach the PostgreSQL tools only in
//! their environment (`PGPASSWORD`), never on a command line, in the manifest or in an error.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::str::FromStr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::any::AnyConnectOptions;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{AnyConnection, ConnectOptions, Connection, Executor, Row};
use steward_core::TenantId;

use crate::{Authenticator, Backend, PgOptions, Store, StoreError, StoreOptions, TenantScope};

/// The manifest layout this build writes and reads.
pub const MANIFEST_FORMAT: u32 = 1;

/// What is appended to a backup file's name to name its manifest.
pub const MANIFEST_SUFFIX: &str = ".manifest.json";

/// The largest manifest read; a real one is a few KiB.
const MAX_MANIFEST_BYTES: u64 = 4 * 1024 * 1024;

/// How long a SQLite backup waits for a lock another connection holds.
const SQLITE_BUSY: Duration = Duration::from_secs(5);

/// Why a backup or restore stopped. Messages name files, tables and versions, never a password.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// A file could not be read or written.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The database refused or failed a statement.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The manifest is missing, malformed, or does not match the backup file.
    #[error("manifest check failed: {0}")]
    Manifest(String),
    /// The backup was taken from a schema newer than this build knows.
    #[error(
        "the backup is of schema version {found}, newer than this build's {known}; restore it \
         with the Steward release that took it (or a later one)"
    )]
    NewerSchema { found: i64, known: i64 },
    /// A server (or another process) is using the target database.
    #[error("refusing to restore: {0}")]
    InUse(String),
    /// The target PostgreSQL database already holds tables.
    #[error("refusing to restore: {0}")]
    NotEmpty(String),
    /// A precondition does not hold (an existing output file, a role that cannot see every
    /// row, mismatched tool and server versions).
    #[error("{0}")]
    Refused(String),
    /// `pg_dump` or `pg_restore` could not run or failed.
    #[error("{0}")]
    Tool(String),
    /// The restored database does not hold what the manifest says the backup holds.
    #[error("restored database differs from the manifest: {0}")]
    Mismatch(String),
}

impl From<sqlx::Error> for BackupError {
    fn from(e: sqlx::Error) -> Self {
        BackupError::Store(StoreError::Db(e))
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BackupError {
    let what = what.into();
    move |source| BackupError::Io { what, source }
}

/// Which database a backup came from, as the manifest names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupBackend {
    Sqlite,
    Postgres,
}

impl BackupBackend {
    /// The name the manifest uses: `sqlite` or `postgres`.
    pub fn as_str(self) -> &'static str {
        match self {
            BackupBackend::Sqlite => "sqlite",
            BackupBackend::Postgres => "postgres",
        }
    }
}

impl From<Backend> for BackupBackend {
    fn from(b: Backend) -> Self {
        match b {
            Backend::Sqlite => BackupBackend::Sqlite,
            Backend::Postgres => BackupBackend::Postgres,
        }
    }
}

/// The last entry of one tenant's audit chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainHead {
    pub seq: u64,
    pub hash: String,
}

/// What a database holds at one moment: the basis of a manifest and of a restore's check.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Contents {
    /// The last applied migration.
    pub schema_version: i64,
    /// Rows per table (every table of the schema, found at run time).
    pub tables: BTreeMap<String, u64>,
    /// Each tenant's chain head, for every tenant with at least one audit entry.
    pub chains: BTreeMap<String, ChainHead>,
    /// Every tenant id in `tenants`.
    pub tenants: BTreeSet<String>,
}

/// `FILE.manifest.json`: what a backup file holds and how to check it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT`].
    pub format: u32,
    pub backend: BackupBackend,
    /// The last migration applied to the database the backup was taken from.
    pub schema_version: i64,
    /// When the backup was taken, RFC 3339 UTC.
    pub created_at: String,
    /// The backup file's name (it lives beside the manifest).
    pub file: String,
    /// The backup file's size in bytes.
    pub size: u64,
    /// Lowercase hex SHA-256 of the backup file.
    pub sha256: String,
    /// Rows per table, as of the backup's snapshot.
    pub tables: BTreeMap<String, u64>,
    /// Each tenant's audit chain head, as of the backup's snapshot.
    pub chains: BTreeMap<String, ChainHead>,
    /// How counts and data were made to agree: `vacuum-into` (read from the copy) or
    /// `exported-snapshot` (one PostgreSQL snapshot for counts and dump).
    pub consistency: String,
    /// The PostgreSQL server version, for PostgreSQL backups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_version: Option<String>,
    /// The `pg_dump --version` line, for PostgreSQL backups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_version: Option<String>,
}

impl Manifest {
    /// Total rows over every table.
    pub fn total_rows(&self) -> u64 {
        self.tables.values().sum()
    }
}

/// One tenant's chain after a restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainCheck {
    pub tenant: String,
    /// Entries that verified.
    pub entries: u64,
    pub head_hash: String,
    /// The whole chain verified and its head is the manifest's.
    pub ok: bool,
    /// Why not, if not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// What a restore did and found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RestoreReport {
    pub manifest: Manifest,
    /// Row counts, chain heads and schema of the restored database matched the manifest.
    pub contents_match: bool,
    /// One per tenant of the restored database.
    pub chains: Vec<ChainCheck>,
}

impl RestoreReport {
    /// Everything checked out.
    pub fn ok(&self) -> bool {
        self.contents_match && self.chains.iter().all(|c| c.ok)
    }
}

/// The manifest path of a backup file: `FILE.manifest.json`.
pub fn manifest_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(MANIFEST_SUFFIX);
    PathBuf::from(name)
}

/// The newest schema version this build's migrations reach on `backend`.
pub fn known_schema_version(backend: Backend) -> i64 {
    let migrator = match backend {
        Backend::Sqlite => sqlx::migrate!("./migrations/sqlite"),
        Backend::Postgres => sqlx::migrate!("./migrations/postgres"),
    };
    migrator.iter().map(|m| m.version).max().unwrap_or(0)
}

/// Double-quotes an identifier for SQL, doubling any quote inside.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Reads what the connected database holds, inside whatever transaction `conn` is in. Tables
/// are found at run time (SQLite's catalog, or PostgreSQL's `public` schema), so later
/// migrations' tables are counted without a list here.
pub async fn read_contents(
    conn: &mut AnyConnection,
    backend: Backend,
) -> Result<Contents, BackupError> {
    let table_sql = match backend {
        Backend::Sqlite => {
            "SELECT name FROM sqlite_master WHERE type = 'table' \
             AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name"
        }
        Backend::Postgres => {
            "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
        }
    };
    let names: Vec<String> = sqlx::query_scalar(table_sql).fetch_all(&mut *conn).await?;
    if !names.iter().any(|n| n == "_sqlx_migrations") || !names.iter().any(|n| n == "audit_log") {
        return Err(BackupError::Refused(
            "the database holds no Steward schema (no migrations table or audit log)".into(),
        ));
    }
    let mut tables = BTreeMap::new();
    for name in names {
        let sql = format!("SELECT COUNT(*) FROM {}", quote_ident(&name));
        let n: i64 = sqlx::query_scalar(&sql).fetch_one(&mut *conn).await?;
        tables.insert(name, u64::try_from(n).unwrap_or(0));
    }
    let schema_version: Option<i64> =
        sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
            .fetch_one(&mut *conn)
            .await?;
    let rows = sqlx::query(
        "SELECT a.tenant_id, a.seq, a.hash FROM audit_log a \
         WHERE a.seq = (SELECT MAX(b.seq) FROM audit_log b WHERE b.tenant_id = a.tenant_id)",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut chains = BTreeMap::new();
    for row in rows {
        let tenant: String = row.try_get(0)?;
        let seq: i64 = row.try_get(1)?;
        let hash: String = row.try_get(2)?;
        let seq = u64::try_from(seq).unwrap_or(0);
        chains.insert(tenant, ChainHead { seq, hash });
    }
    let tenants: Vec<String> = sqlx::query_scalar("SELECT id FROM tenants")
        .fetch_all(&mut *conn)
        .await?;
    Ok(Contents {
        schema_version: schema_version.unwrap_or(0),
        tables,
        chains,
        tenants: tenants.into_iter().collect(),
    })
}

/// SHA-256 (lowercase hex) and size of a file, read in 1 MiB pieces.
pub fn file_digest(path: &Path) -> Result<(String, u64), BackupError> {
    let what = || format!("reading {}", path.display());
    let mut file = std::fs::File::open(path).map_err(io(what()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(io(what()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), size))
}

/// Flushes a file's data and metadata to disk.
fn fsync_file(path: &Path) -> Result<(), BackupError> {
    let what = format!("syncing {}", path.display());
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io(what))
}

/// Flushes a directory, so a rename inside it survives a crash.
fn fsync_dir(path: &Path) -> Result<(), BackupError> {
    let dir = parent_dir(path);
    let what = format!("syncing directory {}", dir.display());
    std::fs::File::open(&dir)
        .and_then(|f| f.sync_all())
        .map_err(io(what))
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// `path` with `suffix` appended to its file name.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn file_name(path: &Path) -> Result<String, BackupError> {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .ok_or_else(|| BackupError::Refused(format!("{} names no file", path.display())))
}

/// Refuses to overwrite an earlier backup or its manifest, and makes the output's directory.
fn refuse_existing(out: &Path) -> Result<(), BackupError> {
    let dir = parent_dir(out);
    std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
    for path in [out.to_path_buf(), manifest_path(out)] {
        if path.exists() {
            return Err(BackupError::Refused(format!(
                "{} already exists; choose a new backup file",
                path.display()
            )));
        }
    }
    Ok(())
}

/// Now as RFC 3339 UTC with milliseconds.
fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    let now = now
        .replace_nanosecond(now.millisecond() as u32 * 1_000_000)
        .unwrap_or(now);
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| now.unix_timestamp().to_string())
}

/// Writes the manifest beside `out` (through a temporary file, synced, then renamed).
fn write_manifest(out: &Path, manifest: &Manifest) -> Result<PathBuf, BackupError> {
    let path = manifest_path(out);
    let partial = with_suffix(&path, ".partial");
    let mut text =
        serde_json::to_string_pretty(manifest).map_err(|e| BackupError::Manifest(e.to_string()))?;
    text.push('\n');
    let what = format!("writing {}", partial.display());
    let mut file = std::fs::File::create(&partial).map_err(io(what.clone()))?;
    file.write_all(text.as_bytes()).map_err(io(what.clone()))?;
    file.sync_all().map_err(io(what))?;
    std::fs::rename(&partial, &path).map_err(io(format!("renaming to {}", path.display())))?;
    fsync_dir(&path)?;
    Ok(path)
}

/// Reads and checks a backup's manifest against the file: format, backend, schema version
/// (not newer than this build), size and SHA-256. Nothing is restored from a file that fails.
pub fn check_backup(file: &Path) -> Result<Manifest, BackupError> {
    let manifest = read_manifest(file)?;
    let backend = match manifest.backend {
        BackupBackend::Sqlite => Backend::Sqlite,
        BackupBackend::Postgres => Backend::Postgres,
    };
    let known = known_schema_version(backend);
    if manifest.schema_version > known {
        return Err(BackupError::NewerSchema {
            found: manifest.schema_version,
            known,
        });
    }
    if file_name(file)? != manifest.file {
        return Err(BackupError::Manifest(format!(
            "the manifest describes {}, not {}",
            manifest.file,
            file.display()
        )));
    }
    let (sha256, size) = file_digest(file)?;
    if size != manifest.size {
        return Err(BackupError::Manifest(format!(
            "{} is {size} bytes; the manifest says {}",
            file.display(),
            manifest.size
        )));
    }
    if sha256 != manifest.sha256 {
        return Err(BackupError::Manifest(format!(
            "SHA-256 of {} is {sha256}; the manifest says {}: the file is damaged or not the \
             one the manifest describes",
            file.display(),
            manifest.sha256
        )));
    }
    Ok(manifest)
}

/// Reads and parses a backup's manifest without checking the file against it.
pub fn read_manifest(file: &Path) -> Result<Manifest, BackupError> {
    let path = manifest_path(file);
    let meta = std::fs::metadata(&path)
        .map_err(|e| BackupError::Manifest(format!("cannot read {}: {e}", path.display())))?;
    if meta.len() > MAX_MANIFEST_BYTES {
        return Err(BackupError::Manifest(format!(
            "{} is {} bytes, more than a manifest can be",
            path.display(),
            meta.len()
        )));
    }
    let text = std::fs::read_to_string(&path)
        .map_err(|e| BackupError::Manifest(format!("cannot read {}: {e}", path.display())))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| BackupError::Manifest(format!("{} is not JSON: {e}", path.display())))?;
    match value.get("format").and_then(serde_json::Value::as_u64) {
        Some(f) if f == u64::from(MANIFEST_FORMAT) => {}
        Some(f) => {
            return Err(BackupError::Manifest(format!(
                "manifest format {f} is not this build's format {MANIFEST_FORMAT}"
            )));
        }
        None => return Err(BackupError::Manifest("the manifest names no format".into())),
    }
    serde_json::from_value(value)
        .map_err(|e| BackupError::Manifest(format!("{}: {e}", path.display())))
}

/// Compares what a restored database holds with the manifest; the first difference, if any.
fn compare(manifest: &Manifest, found: &Contents) -> Option<String> {
    if found.schema_version != manifest.schema_version {
        return Some(format!(
            "schema version {} (manifest {})",
            found.schema_version, manifest.schema_version
        ));
    }
    if found.tables != manifest.tables {
        let mut names: BTreeSet<&String> = found.tables.keys().collect();
        names.extend(manifest.tables.keys());
        for name in names {
            let (a, b) = (found.tables.get(name), manifest.tables.get(name));
            if a != b {
                return Some(format!("table {name}: {a:?} rows, manifest {b:?}"));
            }
        }
    }
    if found.chains != manifest.chains {
        return Some("audit chain heads differ".into());
    }
    None
}

async fn connect_any(url: &str) -> Result<AnyConnection, BackupError> {
    sqlx::any::install_default_drivers();
    let opts = AnyConnectOptions::from_str(url)?;
    Ok(AnyConnection::connect_with(&opts).await?)
}

fn sqlite_url(path: &Path, read_only: bool) -> String {
    SqliteConnectOptions::new()
        .filename(path)
        .read_only(read_only)
        .to_url_lossy()
        .to_string()
}

/// Backs up the SQLite database at `db` to `out` while a server may be writing it: `VACUUM
/// INTO` a temporary file beside `out`, sync it, read its counts and chain heads, rename it to
/// `out`, sync the directory, and write the manifest. Refuses an existing `out`.
pub async fn backup_sqlite(db: &Path, out: &Path) -> Result<Manifest, BackupError> {
    refuse_existing(out)?;
    if !db.is_file() {
        return Err(BackupError::Refused(format!(
            "{} is not a database file",
            db.display()
        )));
    }
    let partial = with_suffix(out, ".partial");
    if partial.exists() {
        std::fs::remove_file(&partial)
            .map_err(io(format!("removing stale {}", partial.display())))?;
    }
    let target = partial
        .to_str()
        .ok_or_else(|| BackupError::Refused(format!("{} is not UTF-8", partial.display())))?
        .to_owned();
    let mut conn = connect_any(&sqlite_url(db, true)).await?;
    conn.execute(format!("PRAGMA busy_timeout = {}", SQLITE_BUSY.as_millis()).as_str())
        .await?;
    let vacuum = sqlx::query("VACUUM INTO $1")
        .bind(&target)
        .execute(&mut conn)
        .await;
    conn.close().await.ok();
    if let Err(e) = vacuum {
        std::fs::remove_file(&partial).ok();
        return Err(e.into());
    }
    let made = finish_sqlite_copy(&partial, out).await;
    if made.is_err() {
        std::fs::remove_file(&partial).ok();
    }
    made
}

async fn finish_sqlite_copy(partial: &Path, out: &Path) -> Result<Manifest, BackupError> {
    // A backup holds everything the database does: its owner's alone, like the database.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(partial, std::fs::Permissions::from_mode(0o600))
            .map_err(io(format!("restricting {}", partial.display())))?;
    }
    fsync_file(partial)?;
    let mut copy = connect_any(&sqlite_url(partial, true)).await?;
    let contents = read_contents(&mut copy, Backend::Sqlite).await?;
    copy.close().await.ok();
    let (sha256, size) = file_digest(partial)?;
    std::fs::rename(partial, out).map_err(io(format!("renaming to {}", out.display())))?;
    fsync_dir(out)?;
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        backend: BackupBackend::Sqlite,
        schema_version: contents.schema_version,
        created_at: now_rfc3339(),
        file: file_name(out)?,
        size,
        sha256,
        tables: contents.tables,
        chains: contents.chains,
        consistency: "vacuum-into".into(),
        server_version: None,
        tool_version: None,
    };
    write_manifest(out, &manifest)?;
    Ok(manifest)
}

/// Takes the target's lock for the restore: a connection in exclusive locking mode that
/// switches the file out of WAL mode. SQLite allows that only when no other connection, in
/// any process, has the database open (every WAL connection holds the shared-memory lock), so
/// a running server makes it fail at once (busy timeout 0). The connection keeps the
/// exclusive lock until it is closed.
async fn lock_sqlite_target(target: &Path) -> Result<AnyConnection, BackupError> {
    let in_use = |detail: String| {
        BackupError::InUse(format!(
            "{} is open in another process (a running server?): {detail}; stop it first",
            target.display()
        ))
    };
    let mut conn = connect_any(&sqlite_url(target, false)).await?;
    conn.execute("PRAGMA busy_timeout = 0; PRAGMA locking_mode = EXCLUSIVE;")
        .await?;
    let mode: String = match sqlx::query_scalar("PRAGMA journal_mode = DELETE")
        .fetch_one(&mut conn)
        .await
    {
        Ok(mode) => mode,
        Err(e) => return Err(in_use(e.to_string())),
    };
    if !mode.eq_ignore_ascii_case("delete") {
        return Err(in_use(format!("journal mode stays {mode}")));
    }
    if let Err(e) = conn.execute("BEGIN EXCLUSIVE; COMMIT;").await {
        return Err(in_use(e.to_string()));
    }
    Ok(conn)
}

/// Restores a SQLite backup to `target`: checks the manifest, refuses a target in use, copies
/// the backup beside the target, checks the copy (SHA-256, `integrity_check`, counts and chain
/// heads against the manifest), renames it over the target while holding the old file's
/// exclusive lock, removes the old file's `-wal` and `-shm`, then opens the store (applying
/// any later migrations) and verifies every tenant's audit chain.
pub async fn restore_sqlite(file: &Path, target: &Path) -> Result<RestoreReport, BackupError> {
    let manifest = check_backup(file)?;
    if manifest.backend != BackupBackend::Sqlite {
        return Err(BackupError::Refused(
            "this is a PostgreSQL backup; restore it into PostgreSQL".into(),
        ));
    }
    let lock = if target.exists() {
        Some(lock_sqlite_target(target).await?)
    } else {
        std::fs::create_dir_all(parent_dir(target))
            .map_err(io(format!("creating {}", parent_dir(target).display())))?;
        None
    };
    let partial = with_suffix(target, ".restore-partial");
    let staged = stage_sqlite_copy(file, &partial, &manifest).await;
    let contents = match staged {
        Ok(c) => c,
        Err(e) => {
            std::fs::remove_file(&partial).ok();
            return Err(e);
        }
    };
    std::fs::rename(&partial, target).map_err(io(format!("renaming to {}", target.display())))?;
    for suffix in ["-wal", "-shm", "-journal"] {
        let stale = with_suffix(target, suffix);
        if stale.exists() {
            std::fs::remove_file(&stale).map_err(io(format!("removing {}", stale.display())))?;
        }
    }
    fsync_dir(target)?;
    if let Some(lock) = lock {
        lock.close().await.ok();
    }
    let contents_match = compare(&manifest, &contents).is_none();
    let store = Store::open(StoreOptions::new(target)).await?;
    let chains = verify_chains(&store, &manifest, &contents).await;
    store.close().await;
    Ok(RestoreReport {
        manifest,
        contents_match,
        chains: chains?,
    })
}

/// Copies the backup to `partial`, syncs it, and checks the copy against the manifest.
async fn stage_sqlite_copy(
    file: &Path,
    partial: &Path,
    manifest: &Manifest,
) -> Result<Contents, BackupError> {
    std::fs::copy(file, partial).map_err(io(format!("copying to {}", partial.display())))?;
    fsync_file(partial)?;
    let (sha256, _) = file_digest(partial)?;
    if sha256 != manifest.sha256 {
        return Err(BackupError::Manifest(format!(
            "the copy at {} does not hash to the manifest's SHA-256",
            partial.display()
        )));
    }
    let mut conn = connect_any(&sqlite_url(partial, true)).await?;
    let integrity: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&mut conn)
        .await?;
    if integrity != "ok" {
        return Err(BackupError::Mismatch(format!(
            "integrity_check: {integrity}"
        )));
    }
    let contents = read_contents(&mut conn, Backend::Sqlite).await?;
    conn.close().await.ok();
    if let Some(diff) = compare(manifest, &contents) {
        return Err(BackupError::Mismatch(diff));
    }
    Ok(contents)
}

/// Verifies, through the store, the chain of every tenant the restored database holds, and
/// that each head is the manifest's.
async fn verify_chains(
    store: &Store,
    manifest: &Manifest,
    contents: &Contents,
) -> Result<Vec<ChainCheck>, BackupError> {
    let mut tenants = contents.tenants.clone();
    tenants.extend(contents.chains.keys().cloned());
    tenants.extend(manifest.chains.keys().cloned());
    let mut checks = Vec::new();
    for tenant in tenants {
        let id = match TenantId::parse(&tenant) {
            Ok(id) => id,
            Err(e) => {
                checks.push(ChainCheck {
                    tenant,
                    entries: 0,
                    head_hash: String::new(),
                    ok: false,
                    problem: Some(format!("not a tenant id: {e}")),
                });
                continue;
            }
        };
        let scope = TenantScope::assume(id, Authenticator::Operator);
        let report = store.verify_audit(&scope).await?;
        let want = manifest.chains.get(&tenant);
        let problem = match (&report.first_bad, want) {
            (Some(bad), _) => Some(bad.to_string()),
            (None, Some(head)) if head.seq != report.entries || head.hash != report.head_hash => {
                Some(format!(
                    "head is seq {} {}, the manifest's seq {} {}",
                    report.entries, report.head_hash, head.seq, head.hash
                ))
            }
            (None, None) if report.entries > 0 => {
                Some("the manifest has no chain for this tenant".into())
            }
            _ => None,
        };
        checks.push(ChainCheck {
            tenant,
            entries: report.entries,
            head_hash: report.head_hash,
            ok: problem.is_none(),
            problem,
        });
    }
    Ok(checks)
}

/// Where the PostgreSQL client tools are: a directory, or the `PATH` when `None`.
#[derive(Debug, Clone, Default)]
pub struct PgTools {
    pub bin_dir: Option<PathBuf>,
}

impl PgTools {
    fn command(&self, tool: &str) -> tokio::process::Command {
        let program = match &self.bin_dir {
            Some(dir) => dir.join(tool),
            None => PathBuf::from(tool),
        };
        let mut cmd = tokio::process::Command::new(program);
        cmd.stdin(Stdio::null()).kill_on_drop(true);
        cmd
    }

    /// The tool's `--version` line and its major version.
    async fn version(&self, tool: &str) -> Result<(String, u32), BackupError> {
        let out = self
            .command(tool)
            .arg("--version")
            .output()
            .await
            .map_err(|e| {
                BackupError::Tool(format!(
                    "cannot run {tool}: {e}; install the PostgreSQL client tools of the \
                     server's major version (package postgresql-client)"
                ))
            })?;
        let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let major = parse_tool_major(&line).ok_or_else(|| {
            BackupError::Tool(format!("cannot read {tool}'s version from `{line}`"))
        })?;
        Ok((line, major))
    }
}

/// The major version in a line like `pg_dump (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)`.
pub fn parse_tool_major(line: &str) -> Option<u32> {
    let rest = line.split_once(") ")?.1;
    let number = rest.split_whitespace().next()?;
    number.split('.').next()?.parse().ok()
}

/// A PostgreSQL URL split for a child tool: the URL without its password (safe to pass as
/// `--dbname`), and the password for its environment.
struct ChildUrl {
    url: String,
    password: Option<SecretString>,
}

fn split_password(url: &SecretString) -> Result<ChildUrl, BackupError> {
    let bad = || BackupError::Refused("the PostgreSQL URL does not parse".into());
    let mut parsed = url::Url::parse(url.expose_secret()).map_err(|_| bad())?;
    if !matches!(parsed.scheme(), "postgres" | "postgresql") {
        return Err(bad());
    }
    let mut password = parsed.password().map(|p| {
        let decoded = percent_encoding::percent_decode_str(p).decode_utf8_lossy();
        SecretString::from(decoded.into_owned())
    });
    parsed.set_password(None).map_err(|()| bad())?;
    let pairs: Vec<(String, String)> = parsed
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if pairs.iter().any(|(k, _)| k == "password") {
        let kept: Vec<&(String, String)> = pairs.iter().filter(|(k, _)| k != "password").collect();
        if let Some((_, v)) = pairs.iter().find(|(k, _)| k == "password") {
            password = Some(SecretString::from(v.clone()));
        }
        if kept.is_empty() {
            parsed.set_query(None);
        } else {
            parsed.query_pairs_mut().clear().extend_pairs(kept);
        }
    }
    Ok(ChildUrl {
        url: parsed.to_string(),
        password,
    })
}

/// Runs a PostgreSQL tool with the password in its environment only; its stderr on failure.
async fn run_tool(
    mut cmd: tokio::process::Command,
    tool: &str,
    password: Option<&SecretString>,
) -> Result<(), BackupError> {
    if let Some(pw) = password {
        cmd.env("PGPASSWORD", pw.expose_secret());
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let out = cmd
        .output()
        .await
        .map_err(|e| BackupError::Tool(format!("cannot run {tool}: {e}")))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stderr: String = stderr.chars().take(4000).collect();
        return Err(BackupError::Tool(format!(
            "{tool} failed ({}): {}",
            out.status,
            stderr.trim()
        )));
    }
    Ok(())
}

/// The server's version string and major version.
async fn server_version(conn: &mut AnyConnection) -> Result<(String, u32), BackupError> {
    let version: String = sqlx::query_scalar("SELECT current_setting('server_version')")
        .fetch_one(&mut *conn)
        .await?;
    let num: String = sqlx::query_scalar("SELECT current_setting('server_version_num')")
        .fetch_one(&mut *conn)
        .await?;
    let num: u32 = num
        .parse()
        .map_err(|_| BackupError::Tool(format!("unreadable server_version_num `{num}`")))?;
    Ok((version, num / 10_000))
}

fn same_major(
    tool: &str,
    tool_major: u32,
    server: &str,
    server_major: u32,
) -> Result<(), BackupError> {
    if tool_major != server_major {
        return Err(BackupError::Refused(format!(
            "{tool} is major version {tool_major} but the server runs {server}; use the client \
             tools of major version {server_major}"
        )));
    }
    Ok(())
}

/// Backs up a PostgreSQL database with `pg_dump --format=custom`, connecting as the role at
/// `url` (the backup role: it must bypass row-level security, or the dump would miss tenant
/// rows). Counts and chain heads are read in the snapshot `pg_dump` is given. Refuses an
/// existing `out`, a role that cannot see every row, and a `pg_dump` whose major version is
/// not the server's.
pub async fn backup_postgres(
    url: &SecretString,
    out: &Path,
    tools: &PgTools,
) -> Result<Manifest, BackupError> {
    refuse_existing(out)?;
    let child = split_password(url)?;
    let (tool_version, tool_major) = tools.version("pg_dump").await?;
    let mut conn = connect_any(url.expose_secret()).await?;
    let (server, server_major) = server_version(&mut conn).await?;
    same_major("pg_dump", tool_major, &server, server_major)?;
    let sees_all: bool = sqlx::query_scalar(
        "SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user",
    )
    .fetch_one(&mut conn)
    .await?;
    if !sees_all {
        return Err(BackupError::Refused(
            "the backup role neither bypasses row-level security nor is a superuser, so a dump \
             would miss every tenant's rows; see the backup role in docs/operations/backup.md"
                .into(),
        ));
    }
    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await?;
    let snapshot: String = sqlx::query_scalar("SELECT pg_export_snapshot()")
        .fetch_one(&mut conn)
        .await?;
    let contents = read_contents(&mut conn, Backend::Postgres).await?;
    let partial = with_suffix(out, ".partial");
    if partial.exists() {
        std::fs::remove_file(&partial)
            .map_err(io(format!("removing stale {}", partial.display())))?;
    }
    let mut cmd = tools.command("pg_dump");
    cmd.arg("--format=custom")
        .arg("--no-password")
        .arg(format!("--snapshot={snapshot}"))
        .arg("--file")
        .arg(&partial)
        .arg("--dbname")
        .arg(&child.url);
    let dumped = run_tool(cmd, "pg_dump", child.password.as_ref()).await;
    // The snapshot had to stay valid until pg_dump imported it; the transaction ends now.
    conn.execute("COMMIT").await.ok();
    conn.close().await.ok();
    if let Err(e) = dumped {
        std::fs::remove_file(&partial).ok();
        return Err(e);
    }
    fsync_file(&partial)?;
    let (sha256, size) = file_digest(&partial)?;
    std::fs::rename(&partial, out).map_err(io(format!("renaming to {}", out.display())))?;
    fsync_dir(out)?;
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        backend: BackupBackend::Postgres,
        schema_version: contents.schema_version,
        created_at: now_rfc3339(),
        file: file_name(out)?,
        size,
        sha256,
        tables: contents.tables,
        chains: contents.chains,
        consistency: "exported-snapshot".into(),
        server_version: Some(server),
        tool_version: Some(tool_version),
    };
    write_manifest(out, &manifest)?;
    Ok(manifest)
}

/// Restores a PostgreSQL backup with `pg_restore --single-transaction --exit-on-error` into
/// the empty database at `owner_url`, as the schema owner. Refuses a database that holds any
/// table or has other client sessions. Then reads counts and chain heads as the role at
/// `verify_url` (the backup role, which sees every row), compares them with the manifest, and
/// verifies every tenant's chain through a store opened with that role.
pub async fn restore_postgres(
    file: &Path,
    owner_url: &SecretString,
    verify_url: &SecretString,
    tools: &PgTools,
) -> Result<RestoreReport, BackupError> {
    let manifest = check_backup(file)?;
    if manifest.backend != BackupBackend::Postgres {
        return Err(BackupError::Refused(
            "this is a SQLite backup; restore it to a SQLite file".into(),
        ));
    }
    let child = split_password(owner_url)?;
    let (_, tool_major) = tools.version("pg_restore").await?;
    let mut owner = connect_any(owner_url.expose_secret()).await?;
    let (server, server_major) = server_version(&mut owner).await?;
    same_major("pg_restore", tool_major, &server, server_major)?;
    let tables: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') \
         AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
         AND n.nspname NOT LIKE 'pg\\_toast%'",
    )
    .fetch_one(&mut owner)
    .await?;
    let database: String = sqlx::query_scalar("SELECT current_database()::text")
        .fetch_one(&mut owner)
        .await?;
    if tables > 0 {
        return Err(BackupError::NotEmpty(format!(
            "database {database} already holds {tables} relations; restore into a new, empty \
             database owned by the schema owner"
        )));
    }
    let others: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() \
         AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
    )
    .fetch_one(&mut owner)
    .await?;
    owner.close().await.ok();
    if others > 0 {
        return Err(BackupError::InUse(format!(
            "database {database} has {others} other client sessions; stop the servers using it"
        )));
    }
    let mut cmd = tools.command("pg_restore");
    cmd.arg("--exit-on-error")
        .arg("--single-transaction")
        .arg("--no-password")
        .arg("--dbname")
        .arg(&child.url)
        .arg(file);
    run_tool(cmd, "pg_restore", child.password.as_ref()).await?;

    let mut reader = connect_any(verify_url.expose_secret()).await?;
    reader
        .execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await?;
    let contents = read_contents(&mut reader, Backend::Postgres).await?;
    reader.execute("COMMIT").await.ok();
    reader.close().await.ok();
    let contents_match = compare(&manifest, &contents).is_none();
    let mut opts = PgOptions::new(verify_url.clone());
    opts.max_connections = 2;
    let store = Store::open_postgres(opts).await?;
    let chains = verify_chains(&store, &manifest, &contents).await;
    store.close().await;
    Ok(RestoreReport {
        manifest,
        contents_match,
        chains: chains?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_versions_parse() {
        assert_eq!(
            parse_tool_major("pg_dump (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)"),
            Some(15)
        );
        assert_eq!(parse_tool_major("pg_restore (PostgreSQL) 17.2"), Some(17));
        assert_eq!(parse_tool_major("garbage"), None);
        assert_eq!(parse_tool_major(""), None);
    }

    #[test]
    fn passwords_leave_the_url() {
        let url = SecretString::from(
            "postgres://steward_backup:p%40ss%2Fw@db:5433/steward?sslmode=require",
        );
        let child = split_password(&url).unwrap();
        assert_eq!(
            child.url,
            "postgres://steward_backup@db:5433/steward?sslmode=require"
        );
        assert_eq!(child.password.unwrap().expose_secret(), "p@ss/w");

        let url = SecretString::from("postgresql://u@h/d?password=hunter2&sslmode=disable");
        let child = split_password(&url).unwrap();
        assert!(!child.url.contains("hunter2"), "{}", child.url);
        assert_eq!(child.password.unwrap().expose_secret(), "hunter2");

        assert!(split_password(&SecretString::from("mysql://u:p@h/d")).is_err());
        assert!(split_password(&SecretString::from("not a url")).is_err());
    }

    #[test]
    fn manifest_paths_sit_beside_the_file() {
        assert_eq!(
            manifest_path(Path::new("/b/steward-1.db")),
            PathBuf::from("/b/steward-1.db.manifest.json")
        );
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("runs"), "\"runs\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }

    fn manifest_json(file: &str, size: u64, sha256: &str) -> serde_json::Value {
        serde_json::json!({
            "format": MANIFEST_FORMAT, "backend": "sqlite", "schema_version": 1,
            "created_at": "2026-01-01T00:00:00Z", "file": file, "size": size,
            "sha256": sha256, "tables": {}, "chains": {}, "consistency": "vacuum-into"
        })
    }

    #[test]
    fn malformed_oversized_and_hostile_manifests_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("b.db");
        std::fs::write(&file, b"backup bytes").unwrap();
        let (sha, size) = file_digest(&file).unwrap();
        let manifest = manifest_path(&file);
        let refused = |text: &[u8]| {
            std::fs::write(&manifest, text).unwrap();
            match check_backup(&file) {
                Err(BackupError::Manifest(m)) => m,
                other => panic!("expected a manifest refusal, got {other:?}"),
            }
        };
        assert!(refused(b"").contains("not JSON"));
        assert!(refused(b"{\"format\": 1, ").contains("not JSON"));
        assert!(refused(b"[]").contains("names no format"));
        let mut v = manifest_json("b.db", size, &sha);
        v["format"] = serde_json::json!(99);
        assert!(refused(v.to_string().as_bytes()).contains("format 99"));
        let mut v = manifest_json("b.db", size, &sha);
        v["extra"] = serde_json::json!(true);
        assert!(refused(v.to_string().as_bytes()).contains("unknown field"));
        let v = manifest_json("../etc/passwd", size, &sha);
        assert!(refused(v.to_string().as_bytes()).contains("describes ../etc/passwd"));
        let v = manifest_json("b.db", size + 1, &sha);
        assert!(refused(v.to_string().as_bytes()).contains("bytes"));
        let v = manifest_json("b.db", size, &"0".repeat(64));
        assert!(refused(v.to_string().as_bytes()).contains("SHA-256"));
        let huge = vec![b' '; (MAX_MANIFEST_BYTES + 1) as usize];
        assert!(refused(&huge).contains("more than a manifest can be"));

        let v = manifest_json("b.db", size, &sha);
        std::fs::write(&manifest, v.to_string()).unwrap();
        assert_eq!(check_backup(&file).unwrap().sha256, sha);
        std::fs::remove_file(&manifest).unwrap();
        assert!(matches!(check_backup(&file), Err(BackupError::Manifest(_))));
    }

    #[test]
    fn this_build_knows_its_schema() {
        assert!(known_schema_version(Backend::Sqlite) >= 7);
        assert_eq!(
            known_schema_version(Backend::Sqlite),
            known_schema_version(Backend::Postgres)
        );
    }
}
