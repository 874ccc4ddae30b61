//! A PostgreSQL database of the benchmark's own on a server it is given (a superuser URL such
//! as `postgres://postgres@127.0.0.1:5432/postgres`): Steward's roles made when missing, a fresh
//! database owned by `steward_owner`, Steward serving as `steward_service` (migrating as the
//! owner), and the database dropped at the end. The server itself is never reconfigured.

use std::str::FromStr;
use std::sync::Arc;

use anyhow::Context as _;
use secrecy::SecretString;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, Executor};
use steward_persistence::{POSTGRES_ROLES, PgOptions};

/// A database made for one scenario; [`BenchDatabase::drop_now`] removes it.
pub(crate) struct BenchDatabase {
    server: PgConnectOptions,
    name: String,
}

impl BenchDatabase {
    /// Makes the roles and a fresh database on the server at the superuser URL `server`.
    pub(crate) async fn create(server: &str) -> anyhow::Result<Self> {
        let server = PgConnectOptions::from_str(server).context("a PostgreSQL URL")?;
        let name = format!("steward_bench_{}", std::process::id());
        let mut admin = server
            .connect()
            .await
            .context("the PostgreSQL server does not answer")?;
        admin.execute(POSTGRES_ROLES).await?;
        admin
            .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
            .await?;
        admin
            .execute(format!("CREATE DATABASE {name} OWNER steward_owner").as_str())
            .await?;
        admin.close().await?;
        Ok(Self { server, name })
    }

    fn url_as(&self, user: &str) -> SecretString {
        SecretString::from(
            self.server
                .clone()
                .username(user)
                .database(&self.name)
                .to_url_lossy()
                .to_string(),
        )
    }

    /// The store options of a Steward serving from this database with `connections`.
    pub(crate) fn options(&self, connections: u32) -> PgOptions {
        let mut opts = PgOptions::new(self.url_as("steward_service"));
        opts.migrate_url = Some(self.url_as("steward_owner"));
        opts.max_connections = connections;
        opts.clock = Arc::new(steward_core::SystemClock);
        opts
    }

    /// `SHOW synchronous_commit` and the server's version, for the report.
    pub(crate) async fn describe(&self) -> anyhow::Result<String> {
        let mut conn = self.server.clone().database(&self.name).connect().await?;
        let sync: String = sqlx::query_scalar("SHOW synchronous_commit")
            .fetch_one(&mut conn)
            .await?;
        let fsync: String = sqlx::query_scalar("SHOW fsync")
            .fetch_one(&mut conn)
            .await?;
        let version: String = sqlx::query_scalar("SHOW server_version")
            .fetch_one(&mut conn)
            .await?;
        conn.close().await?;
        Ok(format!(
            "PostgreSQL {version} on loopback, synchronous_commit={sync}, fsync={fsync}"
        ))
    }

    /// Drops the database.
    pub(crate) async fn drop_now(self) -> anyhow::Result<()> {
        let mut admin = self.server.connect().await?;
        admin
            .execute(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name).as_str())
            .await?;
        admin.close().await?;
        Ok(())
    }
}
