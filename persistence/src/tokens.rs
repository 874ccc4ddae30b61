//! Tenant API tokens. Only the SHA-256 of a token is stored; the token itself is shown once,
//! when generated.

use rand::RngCore;
use rand::rngs::OsRng;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use sqlx::FromRow;
use subtle::ConstantTimeEq;

use crate::codec::{self, clip};
use crate::{Authenticator, Store, StoreError, TenantScope};

/// The prefix of tokens made by [`generate_api_token`], so leaked tokens are recognisable.
const TOKEN_PREFIX: &str = "stw_";
/// Tokens shorter than this are too guessable to register.
const MIN_TOKEN_BYTES: usize = 24;
/// Presented tokens longer than this are refused before hashing.
const MAX_TOKEN_BYTES: usize = 256;
const MAX_SCOPES: usize = 32;

/// A new random API token: `stw_` followed by 32 random bytes in hex.
pub fn generate_api_token() -> SecretString {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    SecretString::from(format!("{TOKEN_PREFIX}{}", hex::encode(bytes)))
}

fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// An authenticated API token: its tenant scope, its scopes and its label.
#[derive(Debug)]
pub struct TokenPrincipal {
    pub scope: TenantScope,
    pub scopes: Vec<String>,
    pub label: String,
}

#[derive(FromRow)]
struct TokenRow {
    token_hash: String,
    tenant_id: String,
    label: String,
    scopes: String,
    expires_at: Option<i64>,
    revoked_at: Option<i64>,
}

impl Store {
    /// Registers an API token for the scope's tenant, storing only its SHA-256. Tokens must be
    /// 24–256 bytes; labels 1–100 printable bytes; at most 32 scopes of 1–64 printable bytes.
    /// `expires_at` is Unix ms; None means the token lasts until revoked. Registering the same
    /// token twice is a Conflict.
    pub async fn add_api_token(
        &self,
        scope: &TenantScope,
        token: &SecretString,
        label: &str,
        scopes: &[String],
        expires_at: Option<i64>,
    ) -> Result<(), StoreError> {
        let token = token.expose_secret();
        if token.len() < MIN_TOKEN_BYTES || token.len() > MAX_TOKEN_BYTES {
            return Err(StoreError::Invalid(format!(
                "an api token must be {MIN_TOKEN_BYTES} to {MAX_TOKEN_BYTES} bytes long"
            )));
        }
        codec::check_text(label, "token label", 100)?;
        check_scopes(scopes)?;
        let scopes_json = serde_json::to_string(scopes)
            .map_err(|e| StoreError::Invalid(format!("token scopes: {e}")))?;

        let mut tx = self.begin_tenant_write(scope).await?;
        sqlx::query(
            "INSERT INTO api_tokens (token_hash, tenant_id, label, scopes, expires_at, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(token_hash(token))
        .bind(scope.id())
        .bind(label)
        .bind(scopes_json)
        .bind(expires_at)
        .bind(self.now())
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            codec::conflict_on_duplicate(e, || "this api token is already registered".into())
        })?;
        tx.commit().await?;
        Ok(())
    }

    /// Revokes every live token of the scope's tenant that carries `label`; returns how many.
    pub async fn revoke_api_tokens(
        &self,
        scope: &TenantScope,
        label: &str,
    ) -> Result<u64, StoreError> {
        let mut tx = self.begin_write_as(scope).await?;
        let done = sqlx::query(
            "UPDATE api_tokens SET revoked_at = $1 \
             WHERE tenant_id = $2 AND label = $3 AND revoked_at IS NULL",
        )
        .bind(self.now())
        .bind(scope.id())
        .bind(label)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }

    /// Authenticates a presented token: the tenant scope (proven by [`Authenticator::ApiToken`])
    /// and the token's scopes, or None for an unknown, expired (at or after `expires_at`),
    /// revoked, empty or oversized token. The stored hash is compared again in constant time.
    pub async fn authenticate_token(
        &self,
        token: &str,
    ) -> Result<Option<(TenantScope, Vec<String>)>, StoreError> {
        Ok(self
            .authenticate_token_labelled(token)
            .await?
            .map(|t| (t.scope, t.scopes)))
    }

    /// As [`Store::authenticate_token`], with the token's label: the principal an API call
    /// acts as.
    pub async fn authenticate_token_labelled(
        &self,
        token: &str,
    ) -> Result<Option<TokenPrincipal>, StoreError> {
        if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
            return Ok(None);
        }
        let presented = token_hash(token);
        let mut tx = self.read_platform().await?;
        let row: Option<TokenRow> = sqlx::query_as(
            "SELECT token_hash, tenant_id, label, scopes, expires_at, revoked_at FROM api_tokens \
             WHERE token_hash = $1",
        )
        .bind(&presented)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else { return Ok(None) };

        let same = row.token_hash.as_bytes().ct_eq(presented.as_bytes());
        let expired = row.expires_at.is_some_and(|at| at <= self.now());
        if !bool::from(same) || expired || row.revoked_at.is_some() {
            return Ok(None);
        }
        let tenant = codec::tenant_id(&row.tenant_id)?;
        let scopes = codec::from_json(&row.scopes, "token scopes")?;
        Ok(Some(TokenPrincipal {
            scope: TenantScope::assume(tenant, Authenticator::ApiToken),
            scopes,
            label: row.label,
        }))
    }
}

fn check_scopes(scopes: &[String]) -> Result<(), StoreError> {
    if scopes.len() > MAX_SCOPES {
        return Err(StoreError::Invalid(format!(
            "a token may carry at most {MAX_SCOPES} scopes"
        )));
    }
    for s in scopes {
        codec::check_text(s, &format!("token scope `{}`", clip(s)), 64)?;
    }
    Ok(())
}
