//! What the PostgreSQL service role can do, as a deployment check sees it (`steward
//! checklist`): least privilege means no superuser, no `BYPASSRLS`, no role or database
//! creation, nothing owned, and row-level security on every table that holds tenant rows.

use std::str::FromStr;

use secrecy::{ExposeSecret, SecretString};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, Row};

use crate::StoreError;

/// The service role's privileges, read through its own connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleReport {
    /// `current_user` of the connection.
    pub role: String,
    pub superuser: bool,
    pub bypass_rls: bool,
    pub create_role: bool,
    pub create_db: bool,
    /// Tables, views, sequences and functions the role owns in any non-system schema.
    pub owned_objects: i64,
    /// Tables with a `tenant_id` column.
    pub tenant_tables: i64,
    /// Those of them without row-level security enabled and forced.
    pub unprotected_tables: Vec<String>,
}

impl RoleReport {
    /// What makes the role more than least privilege; empty when it is.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.superuser {
            out.push("is a superuser".to_owned());
        }
        if self.bypass_rls {
            out.push("has BYPASSRLS".to_owned());
        }
        if self.create_role {
            out.push("may create roles".to_owned());
        }
        if self.create_db {
            out.push("may create databases".to_owned());
        }
        if self.owned_objects > 0 {
            out.push(format!("owns {} objects", self.owned_objects));
        }
        if self.tenant_tables == 0 {
            out.push("sees no tenant table (wrong database?)".to_owned());
        }
        if !self.unprotected_tables.is_empty() {
            out.push(format!(
                "tenant tables without forced row-level security: {}",
                self.unprotected_tables.join(", ")
            ));
        }
        out
    }
}

/// Connects with `url` (the service role's) and reads its privileges.
pub async fn service_role(url: &SecretString) -> Result<RoleReport, StoreError> {
    let options = PgConnectOptions::from_str(url.expose_secret())
        .map_err(|e| StoreError::Invalid(format!("the PostgreSQL URL does not parse: {e}")))?
        .disable_statement_logging();
    let mut conn = options.connect().await?;
    let row = sqlx::query(
        "SELECT current_user::text, rolsuper, rolbypassrls, rolcreaterole, rolcreatedb \
         FROM pg_roles WHERE rolname = current_user",
    )
    .fetch_one(&mut conn)
    .await?;
    let role: String = row.try_get(0)?;
    let owned: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relowner = (SELECT oid FROM pg_roles WHERE rolname = current_user) \
                   AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
                   AND n.nspname NOT LIKE 'pg_toast%') \
              + (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
                 WHERE p.proowner = (SELECT oid FROM pg_roles WHERE rolname = current_user) \
                   AND n.nspname NOT IN ('pg_catalog', 'information_schema'))",
    )
    .fetch_one(&mut conn)
    .await?;
    let tables = sqlx::query(
        "SELECT c.relname::text, c.relrowsecurity AND c.relforcerowsecurity \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('r', 'p') AND n.nspname = current_schema() \
           AND EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid \
                       AND a.attname = 'tenant_id' AND NOT a.attisdropped) \
         ORDER BY 1",
    )
    .fetch_all(&mut conn)
    .await?;
    let mut unprotected = Vec::new();
    for t in &tables {
        let protected: bool = t.try_get(1)?;
        if !protected {
            unprotected.push(t.try_get::<String, _>(0)?);
        }
    }
    let report = RoleReport {
        role,
        superuser: row.try_get(1)?,
        bypass_rls: row.try_get(2)?,
        create_role: row.try_get(3)?,
        create_db: row.try_get(4)?,
        owned_objects: owned,
        tenant_tables: tables.len() as i64,
        unprotected_tables: unprotected,
    };
    conn.close().await?;
    Ok(report)
}
