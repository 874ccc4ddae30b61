//! Webhook sources: how a tenant's incoming webhooks are verified and where the incident
//! reference sits in their bodies.

use serde::{Deserialize, Serialize};
use sqlx::FromRow;
use steward_core::{SignatureScheme, SourceName};

use crate::codec::{self, clip};
use crate::{Store, StoreError, TenantScope};

const MAX_POINTERS: usize = 8;
const MAX_POINTER_BYTES: usize = 256;

/// One webhook source of a tenant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookSource {
    pub name: SourceName,
    /// The signature scheme its deliveries are verified with, by name: one of
    /// [`SignatureScheme::NAMES`] (`standard-webhooks`, `slack`, `stripe`). Chosen when the
    /// source is created; any other name is refused here, and by the database itself since
    /// schema version 6, which also set every source stored before it to `standard-webhooks`.
    pub scheme: String,
    /// Name of the vault secret that verifies this source's signatures.
    pub secret_name: String,
    /// JSON pointers (RFC 6901) tried in order to find the incident's sys_id in a body.
    pub sys_id_pointers: Vec<String>,
    /// JSON pointers tried in order to find the incident's number in a body.
    pub number_pointers: Vec<String>,
}

impl WebhookSource {
    /// Refuses a source that could never yield an incident or whose fields are malformed.
    fn validate(&self) -> Result<(), StoreError> {
        SignatureScheme::parse(&self.scheme).map_err(|e| StoreError::Invalid(e.to_string()))?;
        codec::check_text(&self.secret_name, "secret name", 200)?;
        if self.sys_id_pointers.is_empty() && self.number_pointers.is_empty() {
            return Err(StoreError::Invalid(format!(
                "source `{}` names no pointer to an incident sys_id or number",
                self.name
            )));
        }
        for pointers in [&self.sys_id_pointers, &self.number_pointers] {
            if pointers.len() > MAX_POINTERS {
                return Err(StoreError::Invalid(format!(
                    "a source may list at most {MAX_POINTERS} pointers of each kind"
                )));
            }
            pointers.iter().try_for_each(|p| check_pointer(p))?;
        }
        Ok(())
    }
}

/// A JSON pointer: empty (the whole document) or `/`-led, with `~` only in `~0` and `~1`.
fn check_pointer(pointer: &str) -> Result<(), StoreError> {
    let bad = |why: &str| StoreError::Invalid(format!("json pointer `{}` {why}", clip(pointer)));
    if pointer.len() > MAX_POINTER_BYTES {
        return Err(bad("is too long"));
    }
    if !pointer.is_empty() && !pointer.starts_with('/') {
        return Err(bad("must start with `/`"));
    }
    if pointer.chars().any(char::is_control) {
        return Err(bad("contains control characters"));
    }
    let mut chars = pointer.chars();
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
            return Err(bad("has a `~` not followed by 0 or 1"));
        }
    }
    Ok(())
}

#[derive(FromRow)]
struct SourceRow {
    name: String,
    scheme: String,
    secret_name: String,
    sys_id_pointers: String,
    number_pointers: String,
}

impl TryFrom<SourceRow> for WebhookSource {
    type Error = StoreError;
    fn try_from(row: SourceRow) -> Result<Self, StoreError> {
        Ok(WebhookSource {
            name: codec::source_name(&row.name)?,
            scheme: row.scheme,
            secret_name: row.secret_name,
            sys_id_pointers: codec::from_json(&row.sys_id_pointers, "sys_id pointers")?,
            number_pointers: codec::from_json(&row.number_pointers, "number pointers")?,
        })
    }
}

impl Store {
    /// Creates or replaces the scope's tenant's source of that name.
    pub async fn upsert_source(
        &self,
        scope: &TenantScope,
        source: &WebhookSource,
    ) -> Result<(), StoreError> {
        source.validate()?;
        let sys_ids = serde_json::to_string(&source.sys_id_pointers)
            .map_err(|e| StoreError::Invalid(format!("sys_id pointers: {e}")))?;
        let numbers = serde_json::to_string(&source.number_pointers)
            .map_err(|e| StoreError::Invalid(format!("number pointers: {e}")))?;
        let now = self.now();

        let mut tx = self.begin_tenant_write(scope).await?;
        sqlx::query(
            "INSERT INTO webhook_sources (tenant_id, name, scheme, secret_name, sys_id_pointers, \
             number_pointers, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7) \
             ON CONFLICT (tenant_id, name) DO UPDATE SET scheme = excluded.scheme, \
             secret_name = excluded.secret_name, sys_id_pointers = excluded.sys_id_pointers, \
             number_pointers = excluded.number_pointers, updated_at = excluded.updated_at",
        )
        .bind(scope.id())
        .bind(source.name.as_str())
        .bind(&source.scheme)
        .bind(&source.secret_name)
        .bind(sys_ids)
        .bind(numbers)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The scope's tenant's source of that name.
    pub async fn source(
        &self,
        scope: &TenantScope,
        name: &SourceName,
    ) -> Result<Option<WebhookSource>, StoreError> {
        let mut tx = self.read_one_as(scope).await?;
        source_in(&mut tx, scope, name).await
    }

    /// The source `name` with every version of its secret that verifies now (as
    /// [`Store::valid_secrets`] reads them), read together for a delivery: in one read
    /// transaction on PostgreSQL (a round trip for each statement, where two reads took four
    /// each), on one connection on SQLite. The secret is the one the source names, or
    /// `secret_of` the source when it names none. None for an unknown source; an empty list
    /// when the secret was never stored.
    pub async fn source_with_secrets(
        &self,
        scope: &TenantScope,
        key: &crate::MasterKey,
        name: &SourceName,
        secret_of: impl Fn(&WebhookSource) -> String,
    ) -> Result<Option<SourceWithSecrets>, StoreError> {
        let mut tx = self.read_one_as(scope).await?;
        let Some(source) = source_in(&mut tx, scope, name).await? else {
            return Ok(None);
        };
        let secret_name = if source.secret_name.is_empty() {
            secret_of(&source)
        } else {
            source.secret_name.clone()
        };
        let rows = self.valid_secret_rows(&mut tx, scope, &secret_name).await?;
        drop(tx);
        let secrets = self.open_valid_secrets(scope, key, &secret_name, rows)?;
        Ok(Some(SourceWithSecrets {
            source,
            secret_name,
            secrets,
        }))
    }
}

/// A webhook source with the secret versions that verify its deliveries now.
pub struct SourceWithSecrets {
    pub source: WebhookSource,
    /// The secret's name: the source's own, or the default for a source that names none.
    pub secret_name: String,
    /// Newest first; empty when the secret was never stored.
    pub secrets: Vec<secrecy::SecretString>,
}

/// The scope's tenant's source `name`, or None.
async fn source_in(
    conn: &mut sqlx::AnyConnection,
    scope: &TenantScope,
    name: &SourceName,
) -> Result<Option<WebhookSource>, StoreError> {
    let row: Option<SourceRow> = sqlx::query_as(
        "SELECT name, scheme, secret_name, sys_id_pointers, number_pointers \
         FROM webhook_sources WHERE tenant_id = $1 AND name = $2",
    )
    .bind(scope.id())
    .bind(name.as_str())
    .fetch_optional(conn)
    .await?;
    row.map(WebhookSource::try_from).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(sys: &[&str], num: &[&str]) -> WebhookSource {
        WebhookSource {
            name: SourceName::parse("servicenow").unwrap(),
            scheme: "standard-webhooks".into(),
            secret_name: "webhook/servicenow".into(),
            sys_id_pointers: sys.iter().map(|s| s.to_string()).collect(),
            number_pointers: num.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn well_formed_pointers_pass() {
        assert!(
            source(&["/sys_id", "/data/a~1b/~0c"], &[])
                .validate()
                .is_ok()
        );
        assert!(source(&[], &["", "/number"]).validate().is_ok());
    }

    #[test]
    fn malformed_pointers_are_refused() {
        let long = format!("/{}", "a".repeat(300));
        for bad in ["sys_id", "/a~", "/a~2", "/a\nb", long.as_str()] {
            let err = source(&[bad], &[]).validate().unwrap_err();
            assert!(matches!(err, StoreError::Invalid(_)), "{bad:?}: {err}");
        }
        let many: Vec<String> = (0..9).map(|i| format!("/p{i}")).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(source(&refs, &[]).validate().is_err());
    }

    #[test]
    fn a_source_must_point_at_an_incident() {
        assert!(source(&[], &[]).validate().is_err());
        let mut s = source(&["/sys_id"], &[]);
        s.scheme = String::new();
        assert!(s.validate().is_err());
    }

    #[test]
    fn only_known_schemes_are_stored() {
        let mut s = source(&["/sys_id"], &[]);
        for name in SignatureScheme::NAMES {
            s.scheme = name.into();
            assert!(s.validate().is_ok(), "{name}");
        }
        for bad in ["hmac", "Slack", "standard_webhooks"] {
            s.scheme = bad.into();
            let err = s.validate().unwrap_err();
            assert!(
                err.to_string().contains("unknown signature scheme"),
                "{err}"
            );
        }
    }
}
