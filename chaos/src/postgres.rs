//! A PostgreSQL database of a scenario's own, made and dropped with `psql` on a server the
//! scenario is given (a superuser URL), for the two-node scenarios. The server itself is never
//! stopped or reconfigured.

use std::process::Command;

use anyhow::{Context as _, bail};

/// The roles Steward's PostgreSQL deployments use (idempotent).
const ROLES: &str = include_str!("../../persistence/sql/postgres_roles.sql");

/// A database owned by `steward_owner`, dropped when this value is.
#[derive(Debug)]
pub struct Database {
    admin: String,
    name: String,
}

impl Database {
    /// Makes the Steward roles when missing and a fresh database on the server at `admin`.
    pub fn create(admin: &str) -> anyhow::Result<Self> {
        let name = format!("steward_chaos_{}", hex::encode(rand::random::<[u8; 8]>()));
        psql(admin, ROLES)?;
        psql(
            admin,
            &format!("CREATE DATABASE {name} OWNER steward_owner"),
        )?;
        Ok(Self {
            admin: admin.to_owned(),
            name,
        })
    }

    /// The database's URL as `user` (the server trusts loopback connections).
    pub fn url_as(&self, user: &str) -> String {
        let rest = self
            .admin
            .strip_prefix("postgres://")
            .or_else(|| self.admin.strip_prefix("postgresql://"))
            .unwrap_or(&self.admin);
        let host = rest.split_once('@').map_or(rest, |(_, host)| host);
        let host = host.split_once('/').map_or(host, |(host, _)| host);
        format!("postgres://{user}@{host}/{}", self.name)
    }

    /// The node holding `tenant`'s lease, read as the superuser.
    pub fn lease_holder(&self, tenant: &str) -> anyhow::Result<Option<String>> {
        let url = self.url_as("postgres");
        let sql = format!(
            "SELECT holder FROM tenant_leases WHERE tenant_id = '{tenant}' AND expires_at > \
             (extract(epoch from clock_timestamp()) * 1000)::bigint"
        );
        let out = Command::new("psql")
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", &url, "-c", &sql])
            .output()
            .context("could not run psql")?;
        if !out.status.success() {
            // Before the first migration there is no table yet.
            return Ok(None);
        }
        let holder = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        Ok((!holder.is_empty()).then_some(holder))
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        if psql(&self.admin, &sql).is_err() {
            eprintln!("notice: chaos database {} was not dropped", self.name);
        }
    }
}

fn psql(url: &str, sql: &str) -> anyhow::Result<()> {
    let out = Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", url, "-c", sql])
        .output()
        .context("could not run psql (the PostgreSQL client)")?;
    if !out.status.success() {
        bail!(
            "psql failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
