//! Where a harness Steward keeps its state, and raw reads of it that go around Steward.
//!
//! The default is a SQLite file in the harness's temporary folder. A PostgreSQL database is
//! made on the server `STEWARD_TEST_POSTGRES` names (a superuser URL such as
//! `postgres://postgres@127.0.0.1:5432/postgres`): the Steward roles are made there if missing,
//! a database of its own is created for one harness, owned by `steward_owner` (empty, or a
//! copy of a migrated template), Steward runs as `steward_service` (migrating as the owner),
//! and the database is dropped with the harness. Raw reads connect as the superuser, so
//! row-level security does not hide any row from them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use secrecy::SecretString;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{ConnectOptions, Connection, Executor, Row};
use steward_persistence::{POSTGRES_ROLES, PgOptions, Store};

/// The variable naming the PostgreSQL server the tests may create databases on.
pub const POSTGRES_ENV: &str = "STEWARD_TEST_POSTGRES";

/// A PostgreSQL server the tests may create databases on, and optionally a migrated database
/// that fresh ones are copied from (dropped with the last clone of this value).
#[derive(Debug, Clone)]
pub struct PgServer {
    url: String,
    template: Option<Arc<PgDatabase>>,
}

impl PgServer {
    /// The server `STEWARD_TEST_POSTGRES` names; when it is unset, prints a notice naming
    /// `test` (which is then skipped) and answers None.
    pub fn from_env(test: &str) -> Option<Self> {
        match std::env::var(POSTGRES_ENV) {
            Ok(url) if !url.is_empty() => Some(Self {
                url,
                template: None,
            }),
            _ => {
                eprintln!(
                    "notice: {test} skipped on PostgreSQL: set {POSTGRES_ENV} to a superuser \
                     URL (postgres://postgres@127.0.0.1:5432/postgres) to run it"
                );
                None
            }
        }
    }

    /// The same server, with a database migrated once that each fresh database copies, which
    /// is quicker than migrating each one.
    pub async fn with_template(self) -> Self {
        let template = PgDatabase::create(&self.url, None).await;
        let mut opts = PgOptions::new(SecretString::from(template.url_as("steward_service")));
        opts.migrate_url = Some(SecretString::from(template.url_as("steward_owner")));
        opts.max_connections = 1;
        let store = Store::open_postgres(opts)
            .await
            .expect("the template database migrates");
        store.close().await;
        Self {
            template: Some(Arc::new(template)),
            ..self
        }
    }

    /// A fresh database for one harness.
    pub async fn fresh_database(&self) -> PgDatabase {
        let template = self.template.as_deref().map(PgDatabase::name);
        PgDatabase::create(&self.url, template).await
    }
}

/// A PostgreSQL database made for one harness, dropped when this value is.
#[derive(Debug)]
pub struct PgDatabase {
    server: String,
    name: String,
}

impl PgDatabase {
    /// Makes the Steward roles (when missing) and a fresh database owned by `steward_owner`,
    /// a copy of `template` if given, on the server at the superuser URL `server`; panics when
    /// the server does not answer.
    pub async fn create(server: &str, template: Option<&str>) -> Self {
        let name = format!("steward_e2e_{}", uuid_hex());
        let mut admin = PgConnection::connect(server)
            .await
            .unwrap_or_else(|e| panic!("{POSTGRES_ENV} names a server that does not answer: {e}"));
        admin
            .execute(POSTGRES_ROLES)
            .await
            .expect("making the Steward roles on the test server");
        let copy = template
            .map(|t| format!(" TEMPLATE {t}"))
            .unwrap_or_default();
        admin
            .execute(format!("CREATE DATABASE {name} OWNER steward_owner{copy}").as_str())
            .await
            .expect("creating the test database");
        admin.close().await.ok();
        Self {
            server: server.to_owned(),
            name,
        }
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The URL of this database as `user` (the test server trusts loopback connections).
    pub fn url_as(&self, user: &str) -> String {
        PgConnectOptions::from_str(&self.server)
            .expect("a PostgreSQL URL")
            .username(user)
            .database(&self.name)
            .to_url_lossy()
            .to_string()
    }

    fn superuser(&self) -> PgConnectOptions {
        PgConnectOptions::from_str(&self.server)
            .expect("a PostgreSQL URL")
            .database(&self.name)
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let server = self.server.clone();
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        // A runtime of its own on a thread of its own: this may run inside or outside one.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(async {
                let mut admin = PgConnection::connect(&server).await?;
                admin.execute(sql.as_str()).await?;
                admin.close().await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("notice: test database {} was not dropped", self.name);
        }
    }
}

fn uuid_hex() -> String {
    steward_core::RunId::new().to_string().replace('-', "")
}

/// Where a harness's database is.
#[derive(Debug)]
pub enum Place {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL database of the harness's own.
    Postgres(PgDatabase),
}

/// One stored row: its table and every column's value as text (binary columns lossily).
#[derive(Debug, Clone)]
pub struct RawRow {
    /// The table.
    pub table: String,
    /// The row's columns, as text.
    pub text: String,
}

impl Place {
    /// Every row of every table, read around Steward.
    pub async fn rows(&self) -> Vec<RawRow> {
        match self {
            Self::Sqlite(path) => sqlite_rows(path).await,
            Self::Postgres(db) => postgres_rows(db).await,
        }
    }

    /// How many rows each table holds.
    pub async fn counts(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for row in self.rows().await {
            *counts.entry(row.table).or_default() += 1;
        }
        counts
    }
}

async fn sqlite_rows(path: &Path) -> Vec<RawRow> {
    let mut conn: SqliteConnection = SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .connect()
        .await
        .expect("the SQLite file opens");
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .fetch_all(&mut conn)
            .await
            .expect("the tables are listed");
    let mut rows = Vec::new();
    for table in tables {
        let columns: Vec<String> = sqlx::query_scalar("SELECT name FROM pragma_table_info($1)")
            .bind(&table)
            .fetch_all(&mut conn)
            .await
            .expect("the columns are listed");
        // Every value as its bytes: text as is, numbers as their digits, blobs raw.
        let select = columns
            .iter()
            .map(|c| format!("CAST(\"{c}\" AS BLOB)"))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!("SELECT {select} FROM \"{table}\"");
        for row in sqlx::query(&sql)
            .fetch_all(&mut conn)
            .await
            .expect("the rows are read")
        {
            let text = (0..columns.len())
                .map(|i| {
                    let value: Option<Vec<u8>> = row.try_get(i).expect("a column as bytes");
                    value
                        .map(|v| String::from_utf8_lossy(&v).into_owned())
                        .unwrap_or_default()
                })
                .collect::<Vec<_>>()
                .join("\t");
            rows.push(RawRow {
                table: table.clone(),
                text,
            });
        }
    }
    conn.close().await.ok();
    rows
}

async fn postgres_rows(db: &PgDatabase) -> Vec<RawRow> {
    let mut conn = db
        .superuser()
        .connect()
        .await
        .expect("the test database answers");
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
    )
    .fetch_all(&mut conn)
    .await
    .expect("the tables are listed");
    let mut rows = Vec::new();
    for table in tables {
        let sql = format!("SELECT row_to_json(t)::text FROM \"{table}\" t");
        let texts: Vec<String> = sqlx::query_scalar(&sql)
            .fetch_all(&mut conn)
            .await
            .expect("the rows are read");
        rows.extend(texts.into_iter().map(|text| RawRow {
            table: table.clone(),
            text,
        }));
    }
    conn.close().await.ok();
    rows
}
