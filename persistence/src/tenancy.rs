//! Tenant lifecycle through the API: onboarding a tenant with its first admin token, changing
//! its settings, issuing, listing and revoking its tokens, exporting its evidence, and
//! offboarding it. Every change appends an audit entry naming who made it in the same
//! transaction. Offboarding destroys the tenant's data keys, removes its rows except the audit
//! chain, and closes the chain with a checkpoint signed by a key derived from the master key.

use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use sqlx::FromRow;
use steward_core::TenantId;

use crate::codec::{self, MAX_DOCUMENT_BYTES, clip};
use crate::store::WriteTx;
use crate::{AuditDraft, MasterKey, Store, StoreError, TenantScope};

/// Hex digits of a token's hash that make its public id.
const TOKEN_ID_HEX: usize = 16;
/// The prefix of public token ids.
const TOKEN_ID_PREFIX: &str = "tok_";
/// Domain of the checkpoint-signing key derived from the master key.
const CHECKPOINT_KEY_DOMAIN: &[u8] = b"steward/v1/audit-checkpoint-key";
/// The largest settings section accepted.
const MAX_SECTION_BYTES: usize = 256 * 1024;

/// A tenant as the platform lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TenantSummary {
    pub id: TenantId,
    pub name: String,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms; set once the tenant is offboarded.
    pub offboarded_at: Option<i64>,
}

/// A token as listed: never its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenInfo {
    /// Public id: `tok_` and the first 16 hex digits of the token's SHA-256.
    pub id: String,
    pub label: String,
    pub scopes: Vec<String>,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms; None lasts until revoked.
    pub expires_at: Option<i64>,
    /// Unix ms.
    pub revoked_at: Option<i64>,
}

/// A token to issue.
pub struct NewToken<'a> {
    pub value: &'a SecretString,
    pub label: &'a str,
    pub scopes: &'a [String],
    /// Unix ms.
    pub expires_at: Option<i64>,
}

/// The signed close of an offboarded tenant's audit chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Checkpoint {
    pub tenant: TenantId,
    /// Seq of the final entry, `tenant.offboarded`.
    pub seq: u64,
    pub head_hash: String,
    /// The id of the master key the signing key derives from.
    pub key_id: String,
    /// Hex HMAC-SHA256 of `tenant|seq|head_hash` under the derived key.
    pub signature: String,
    pub created_at: i64,
}

#[derive(FromRow)]
struct SummaryRow {
    id: String,
    name: String,
    created_at: i64,
    offboarded_at: Option<i64>,
}

#[derive(FromRow)]
struct TokenListRow {
    token_hash: String,
    label: String,
    scopes: String,
    created_at: i64,
    expires_at: Option<i64>,
    revoked_at: Option<i64>,
}

#[derive(FromRow)]
struct CheckpointRow {
    seq: i64,
    head_hash: String,
    key_id: String,
    signature: String,
    created_at: i64,
}

/// The tables of tenant data removed at offboarding, children before parents.
const OFFBOARD_TABLES: &[&str] = &[
    "timers",
    "budget_meters",
    "tenant_write_pauses",
    "run_crashes",
    "run_snapshots",
    "approvals",
    "run_steps",
    "deliveries",
    "runs",
    "webhook_sources",
    "webhook_rejections",
    "siem_streams",
    "catchup_watermarks",
    "tenant_retention",
    "api_tokens",
    "sealed_secrets",
    "data_keys",
];

/// The SHA-256 of a token, as stored.
fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The public id of a token with this stored hash.
fn token_id(hash: &str) -> String {
    format!("{TOKEN_ID_PREFIX}{}", &hash[..TOKEN_ID_HEX.min(hash.len())])
}

/// The hash prefix a public token id names, or None when it is not a token id.
fn hash_prefix(id: &str) -> Option<&str> {
    let hex = id.strip_prefix(TOKEN_ID_PREFIX)?;
    let ok = hex.len() == TOKEN_ID_HEX
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    ok.then_some(hex)
}

/// HMAC-SHA256 (RFC 2104).
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.map(|k| k ^ byte);
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

/// The signature of a checkpoint over `tenant|seq|head_hash`.
fn checkpoint_signature(master: &MasterKey, tenant: &str, seq: u64, head_hash: &str) -> String {
    let key = hmac_sha256(master.bytes(), CHECKPOINT_KEY_DOMAIN);
    let message = format!("{tenant}|{seq}|{head_hash}");
    hex::encode(hmac_sha256(&key, message.as_bytes()))
}

impl Store {
    /// Registers a new tenant with empty settings and its first token, and opens its audit
    /// chain with `tenant.created` naming `actor`, in one transaction. Platform level: the
    /// caller proved it is the operator. Conflict when the id is taken, offboarded or not.
    pub async fn create_tenant(
        &self,
        id: &TenantId,
        name: &str,
        token: NewToken<'_>,
        actor: &str,
    ) -> Result<TokenInfo, StoreError> {
        codec::check_text(name, "tenant name", 200)?;
        let now = self.now();
        let mut tx = self.begin_write().await?;
        self.set_tenant(&mut tx, id.as_str()).await?;
        sqlx::query(
            "INSERT INTO tenants (id, region, name, settings, created_at, updated_at) \
             VALUES ($1, $2, $3, '{}', $4, $4)",
        )
        .bind(id.as_str())
        .bind(id.region().as_str())
        .bind(name)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(|e| codec::conflict_on_duplicate(e, || format!("tenant `{id}` exists")))?;
        let scope = TenantScope::assume(id.clone(), crate::Authenticator::OperatorToken);
        let draft = AuditDraft {
            kind: "tenant.created".into(),
            run_id: None,
            actor: actor.into(),
            body: json!({ "name": name, "region": id.region().as_str() }),
        };
        self.append_audit_in(&mut tx, &scope, &draft).await?;
        let info = self.insert_token(&mut tx, &scope, &token, actor).await?;
        tx.commit().await?;
        Ok(info)
    }

    /// Every tenant the platform knows, by id.
    pub async fn list_tenants(&self) -> Result<Vec<TenantSummary>, StoreError> {
        let mut tx = self.read_platform().await?;
        let rows: Vec<SummaryRow> = sqlx::query_as(
            "SELECT id, name, created_at, offboarded_at FROM tenants ORDER BY id LIMIT 10000",
        )
        .fetch_all(&mut *tx)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(TenantSummary {
                    id: codec::tenant_id(&r.id)?,
                    name: r.name,
                    created_at: r.created_at,
                    offboarded_at: r.offboarded_at,
                })
            })
            .collect()
    }

    /// Whether the tenant was offboarded. Platform level.
    pub async fn tenant_offboarded(&self, tenant: &TenantId) -> Result<bool, StoreError> {
        let mut tx = self.read_as_tenant(tenant.as_str()).await?;
        let at: Option<Option<i64>> =
            sqlx::query_scalar("SELECT offboarded_at FROM tenants WHERE id = $1")
                .bind(tenant.as_str())
                .fetch_optional(&mut *tx)
                .await?;
        Ok(matches!(at, Some(Some(_))))
    }

    /// Replaces the top-level `section` of the scope's tenant's settings document with
    /// `value` (None removes it) and appends `audit`, in one transaction. NotFound when the
    /// tenant is not registered or was offboarded.
    pub async fn set_tenant_section(
        &self,
        scope: &TenantScope,
        section: &str,
        value: Option<serde_json::Value>,
        audit: AuditDraft,
    ) -> Result<(), StoreError> {
        codec::check_text(section, "settings section", 64)?;
        if let Some(v) = &value {
            codec::json_text(v, "settings section", MAX_SECTION_BYTES)?;
        }
        let mut tx = self.begin_tenant_write(scope).await?;
        let current: Option<String> = sqlx::query_scalar(
            "SELECT settings FROM tenants WHERE id = $1 AND offboarded_at IS NULL",
        )
        .bind(scope.id())
        .fetch_optional(&mut *tx)
        .await?;
        let current = current.ok_or_else(|| offboarded(scope))?;
        let mut settings: serde_json::Value = codec::from_json(&current, "tenant settings")?;
        let object = settings
            .as_object_mut()
            .ok_or_else(|| StoreError::Corrupt("tenant settings are not an object".into()))?;
        match value {
            Some(v) => object.insert(section.to_owned(), v),
            None => object.remove(section),
        };
        let text = codec::json_text(&settings, "tenant settings", MAX_DOCUMENT_BYTES)?;
        sqlx::query("UPDATE tenants SET settings = $1, updated_at = $2 WHERE id = $3")
            .bind(text)
            .bind(self.now())
            .bind(scope.id())
            .execute(&mut *tx)
            .await?;
        self.append_audit_in(&mut tx, scope, &audit).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Issues a token for the scope's tenant and audits `token.issued` naming `actor`.
    pub async fn issue_token(
        &self,
        scope: &TenantScope,
        token: NewToken<'_>,
        actor: &str,
    ) -> Result<TokenInfo, StoreError> {
        let mut tx = self.begin_tenant_write(scope).await?;
        let info = self.insert_token(&mut tx, scope, &token, actor).await?;
        tx.commit().await?;
        Ok(info)
    }

    /// The scope's tenant's tokens, oldest first, without their values.
    pub async fn list_tokens(&self, scope: &TenantScope) -> Result<Vec<TokenInfo>, StoreError> {
        let mut tx = self.read_as(scope).await?;
        let rows: Vec<TokenListRow> = sqlx::query_as(
            "SELECT token_hash, label, scopes, created_at, expires_at, revoked_at \
             FROM api_tokens WHERE tenant_id = $1 ORDER BY created_at, token_hash LIMIT 10000",
        )
        .bind(scope.id())
        .fetch_all(&mut *tx)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(TokenInfo {
                    id: token_id(&r.token_hash),
                    label: r.label,
                    scopes: codec::from_json(&r.scopes, "token scopes")?,
                    created_at: r.created_at,
                    expires_at: r.expires_at,
                    revoked_at: r.revoked_at,
                })
            })
            .collect()
    }

    /// Revokes the scope's tenant's token with public id `id` and audits `token.revoked`.
    /// Returns false for an id that is malformed, unknown, another tenant's or already
    /// revoked.
    pub async fn revoke_token(
        &self,
        scope: &TenantScope,
        id: &str,
        actor: &str,
    ) -> Result<bool, StoreError> {
        let Some(prefix) = hash_prefix(id) else {
            return Ok(false);
        };
        let mut tx = self.begin_tenant_write(scope).await?;
        let done = sqlx::query(
            "UPDATE api_tokens SET revoked_at = $1 WHERE tenant_id = $2 \
             AND substr(token_hash, 1, 16) = $3 AND revoked_at IS NULL",
        )
        .bind(self.now())
        .bind(scope.id())
        .bind(prefix)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        let draft = AuditDraft {
            kind: "token.revoked".into(),
            run_id: None,
            actor: actor.into(),
            body: json!({ "token_id": id }),
        };
        self.append_audit_in(&mut tx, scope, &draft).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Offboards the scope's tenant in one transaction: appends `tenant.offboarded` (with
    /// how many rows of each table go), signs a checkpoint over the chain's new head (with the
    /// master-key HMAC, and with the ed25519 evidence key for auditors), removes
    /// every row of the tenant's data except the audit chain and the checkpoint, destroys its
    /// data keys and marks the tenant offboarded. Sealed data of the tenant copied elsewhere
    /// can no longer be opened: its data keys exist nowhere. NotFound when already offboarded.
    pub async fn offboard_tenant(
        &self,
        scope: &TenantScope,
        master: &MasterKey,
        actor: &str,
    ) -> Result<Checkpoint, StoreError> {
        let signer = self.checkpoint_signer(master).await?;
        let mut tx = self.begin_tenant_write(scope).await?;
        let live: Option<String> =
            sqlx::query_scalar("SELECT id FROM tenants WHERE id = $1 AND offboarded_at IS NULL")
                .bind(scope.id())
                .fetch_optional(&mut *tx)
                .await?;
        live.ok_or_else(|| offboarded(scope))?;
        // A legal hold suspends every deletion, offboarding's included.
        let held: Option<String> =
            sqlx::query_scalar("SELECT reason FROM legal_holds WHERE tenant_id = $1")
                .bind(scope.id())
                .fetch_optional(&mut *tx)
                .await?;
        if held.is_some() {
            return Err(StoreError::Conflict(format!(
                "tenant {} is under legal hold; release the hold before offboarding",
                scope.tenant()
            )));
        }
        let removed = self.remove_tenant_rows(&mut tx, scope).await?;
        let draft = AuditDraft {
            kind: "tenant.offboarded".into(),
            run_id: None,
            actor: actor.into(),
            body: json!({ "removed": removed, "data_keys": "destroyed" }),
        };
        let seq = self.append_audit_in(&mut tx, scope, &draft).await?;
        let head_hash: String =
            sqlx::query_scalar("SELECT hash FROM audit_log WHERE tenant_id = $1 AND seq = $2")
                .bind(scope.id())
                .bind(codec::to_i64(seq, "audit seq")?)
                .fetch_one(&mut *tx)
                .await?;
        let checkpoint = Checkpoint {
            tenant: scope.tenant().clone(),
            seq,
            signature: checkpoint_signature(master, scope.id(), seq, &head_hash),
            head_hash,
            key_id: master.key_id(),
            created_at: self.now(),
        };
        self.insert_checkpoint(&mut tx, &checkpoint).await?;
        self.insert_signed_checkpoint_in(&mut tx, scope, &signer, seq, &checkpoint.head_hash)
            .await?;
        sqlx::query(
            "UPDATE tenants SET settings = '{}', offboarded_at = $1, updated_at = $1 \
             WHERE id = $2",
        )
        .bind(checkpoint.created_at)
        .bind(scope.id())
        .execute(&mut *tx)
        .await?;
        let forget = self.forget_sources_after();
        tx.commit().await?;
        self.evict_content_keys(scope.id());
        drop(forget);
        Ok(checkpoint)
    }

    /// The checkpoint that closed the scope's tenant's chain, if it was offboarded.
    pub async fn audit_checkpoint(
        &self,
        scope: &TenantScope,
    ) -> Result<Option<Checkpoint>, StoreError> {
        let mut tx = self.read_as(scope).await?;
        let row: Option<CheckpointRow> = sqlx::query_as(
            "SELECT seq, head_hash, key_id, signature, created_at FROM audit_checkpoints \
             WHERE tenant_id = $1 ORDER BY seq DESC LIMIT 1",
        )
        .bind(scope.id())
        .fetch_optional(&mut *tx)
        .await?;
        row.map(|r| {
            Ok(Checkpoint {
                tenant: scope.tenant().clone(),
                seq: codec::to_u64(r.seq, "checkpoint seq")?,
                head_hash: r.head_hash,
                key_id: r.key_id,
                signature: r.signature,
                created_at: r.created_at,
            })
        })
        .transpose()
    }

    /// Whether `checkpoint` was signed with a key derived from `master`, in constant time.
    pub fn checkpoint_verifies(&self, checkpoint: &Checkpoint, master: &MasterKey) -> bool {
        use subtle::ConstantTimeEq;
        let want = checkpoint_signature(
            master,
            checkpoint.tenant.as_str(),
            checkpoint.seq,
            &checkpoint.head_hash,
        );
        bool::from(want.as_bytes().ct_eq(checkpoint.signature.as_bytes()))
    }

    async fn insert_token(
        &self,
        tx: &mut WriteTx,
        scope: &TenantScope,
        token: &NewToken<'_>,
        actor: &str,
    ) -> Result<TokenInfo, StoreError> {
        let value = token.value.expose_secret();
        if !(24..=256).contains(&value.len()) {
            return Err(StoreError::Invalid(
                "an api token must be 24 to 256 bytes long".into(),
            ));
        }
        codec::check_text(token.label, "token label", 100)?;
        if token.scopes.is_empty() || token.scopes.len() > 32 {
            return Err(StoreError::Invalid("a token carries 1 to 32 scopes".into()));
        }
        for s in token.scopes {
            codec::check_text(s, &format!("token scope `{}`", clip(s)), 64)?;
        }
        let hash = token_hash(value);
        let scopes = serde_json::to_string(token.scopes)
            .map_err(|e| StoreError::Invalid(format!("token scopes: {e}")))?;
        let now = self.now();
        sqlx::query(
            "INSERT INTO api_tokens (token_hash, tenant_id, label, scopes, expires_at, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&hash)
        .bind(scope.id())
        .bind(token.label)
        .bind(scopes)
        .bind(token.expires_at)
        .bind(now)
        .execute(&mut **tx)
        .await
        .map_err(|e| {
            codec::conflict_on_duplicate(e, || "this api token is already registered".into())
        })?;
        let info = TokenInfo {
            id: token_id(&hash),
            label: token.label.to_owned(),
            scopes: token.scopes.to_vec(),
            created_at: now,
            expires_at: token.expires_at,
            revoked_at: None,
        };
        let draft = AuditDraft {
            kind: "token.issued".into(),
            run_id: None,
            actor: actor.into(),
            body: json!({
                "token_id": info.id, "label": info.label, "scopes": info.scopes,
                "expires_at": info.expires_at,
            }),
        };
        self.append_audit_in(tx, scope, &draft).await?;
        Ok(info)
    }

    async fn remove_tenant_rows(
        &self,
        tx: &mut WriteTx,
        scope: &TenantScope,
    ) -> Result<serde_json::Map<String, serde_json::Value>, StoreError> {
        let mut removed = serde_json::Map::new();
        for table in OFFBOARD_TABLES {
            let done = sqlx::query(&format!("DELETE FROM {table} WHERE tenant_id = $1"))
                .bind(scope.id())
                .execute(&mut **tx)
                .await?;
            removed.insert((*table).to_owned(), done.rows_affected().into());
        }
        Ok(removed)
    }

    async fn insert_checkpoint(
        &self,
        tx: &mut WriteTx,
        checkpoint: &Checkpoint,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit_checkpoints \
             (tenant_id, seq, head_hash, key_id, signature, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(checkpoint.tenant.as_str())
        .bind(codec::to_i64(checkpoint.seq, "checkpoint seq")?)
        .bind(&checkpoint.head_hash)
        .bind(&checkpoint.key_id)
        .bind(&checkpoint.signature)
        .bind(checkpoint.created_at)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}

fn offboarded(scope: &TenantScope) -> StoreError {
    StoreError::NotFound(format!("tenant `{}` was offboarded", scope.tenant()))
}

#[cfg(test)]
mod tests {
    use steward_core::RunId;

    use super::*;
    use crate::{Authenticator, StoreOptions, generate_api_token};

    async fn store(dir: &tempfile::TempDir) -> Store {
        Store::open(StoreOptions::new(dir.path().join("steward.db")))
            .await
            .unwrap()
    }

    fn scopes(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    async fn onboard(store: &Store, id: &str) -> (TenantScope, SecretString, TokenInfo) {
        let tenant = TenantId::parse(id).unwrap();
        let value = generate_api_token();
        let admin = scopes(&["admin"]);
        let token = NewToken {
            value: &value,
            label: "first-admin",
            scopes: &admin,
            expires_at: None,
        };
        let info = store
            .create_tenant(&tenant, "Acme", token, "operator")
            .await
            .unwrap();
        let scope = TenantScope::assume(tenant, Authenticator::OperatorToken);
        (scope, value, info)
    }

    #[test]
    fn hmac_matches_rfc_4231_test_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn hmac_matches_rfc_4231_test_case_6_with_a_long_key() {
        let mac = hmac_sha256(
            &[0xaa; 131],
            b"Test Using Larger Than Block-Size Key - Hash Key First",
        );
        assert_eq!(
            hex::encode(mac),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn token_ids_must_be_well_formed() {
        assert_eq!(
            hash_prefix("tok_0123456789abcdef"),
            Some("0123456789abcdef")
        );
        for bad in [
            "",
            "tok_",
            "tok_0123456789ABCDEF",
            "tok_0123456789abcde",
            "tok_0123456789abcdef0",
            "tok_0123456789abcdeg",
            "0123456789abcdef",
            "tok_%25%25%25%25%25%25%25%2",
        ] {
            assert_eq!(hash_prefix(bad), None, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn an_onboarded_tenants_first_token_authenticates_and_is_audited() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir).await;
        let (scope, value, info) = onboard(&store, "us-acme").await;
        let (found, got) = store
            .authenticate_token(value.expose_secret())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(found.tenant(), scope.tenant());
        assert_eq!(got, scopes(&["admin"]));
        let kinds: Vec<String> = store
            .audit_entries(&scope, 0, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(kinds, ["tenant.created", "token.issued"]);
        assert!(info.id.starts_with("tok_"));
        let again = onboard_err(&store, "us-acme").await;
        assert!(matches!(again, StoreError::Conflict(_)), "{again}");
    }

    async fn onboard_err(store: &Store, id: &str) -> StoreError {
        let value = generate_api_token();
        let admin = scopes(&["admin"]);
        let token = NewToken {
            value: &value,
            label: "again",
            scopes: &admin,
            expires_at: None,
        };
        store
            .create_tenant(&TenantId::parse(id).unwrap(), "Acme", token, "operator")
            .await
            .unwrap_err()
    }

    #[tokio::test]
    async fn tokens_list_without_values_and_revoke_only_within_their_tenant() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir).await;
        let (acme, _, _) = onboard(&store, "us-acme").await;
        let (globex, _, _) = onboard(&store, "us-globex").await;
        let value = generate_api_token();
        let read = scopes(&["runs:read"]);
        let token = NewToken {
            value: &value,
            label: "ci",
            scopes: &read,
            expires_at: Some(i64::MAX),
        };
        let issued = store.issue_token(&acme, token, "token:x").await.unwrap();
        let listed = store.list_tokens(&acme).await.unwrap();
        assert_eq!(listed.len(), 2);
        let shown = serde_json::to_string(&listed).unwrap();
        assert!(!shown.contains(value.expose_secret()));
        assert!(!shown.contains(&token_hash(value.expose_secret())));

        assert!(!store.revoke_token(&globex, &issued.id, "x").await.unwrap());
        assert!(store.revoke_token(&acme, &issued.id, "x").await.unwrap());
        assert!(!store.revoke_token(&acme, &issued.id, "x").await.unwrap());
        assert!(!store.revoke_token(&acme, "tok_bad", "x").await.unwrap());
        let auth = store
            .authenticate_token(value.expose_secret())
            .await
            .unwrap();
        assert!(auth.is_none(), "a revoked token no longer authenticates");
    }

    #[tokio::test]
    async fn settings_sections_are_replaced_and_audited() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir).await;
        let (scope, _, _) = onboard(&store, "eu-acme").await;
        let audit = |kind: &str| AuditDraft {
            kind: kind.into(),
            run_id: None,
            actor: "token:t".into(),
            body: json!({}),
        };
        let value = Some(json!({ "model": "m" }));
        store
            .set_tenant_section(&scope, "llm", value, audit("connector.llm.set"))
            .await
            .unwrap();
        let record = store.tenant(&scope).await.unwrap().unwrap();
        assert_eq!(record.settings, json!({ "llm": { "model": "m" } }));
        let huge = Some(json!("x".repeat(MAX_SECTION_BYTES + 1)));
        let err = store
            .set_tenant_section(&scope, "llm", huge, audit("x"))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Invalid(_)), "{err}");
        let stranger = TenantScope::assume(
            TenantId::parse("eu-nobody").unwrap(),
            Authenticator::ApiToken,
        );
        let err = store
            .set_tenant_section(&stranger, "llm", None, audit("x"))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::NotFound(_)), "{err}");
    }

    #[tokio::test]
    async fn offboarding_destroys_keys_and_rows_and_closes_a_verifying_chain() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir).await;
        let key = MasterKey::generate();
        let (scope, value, _) = onboard(&store, "us-acme").await;
        let secret = SecretString::from("sn-client-secret-value");
        store
            .put_secret(&scope, &key, "servicenow.client_secret", &secret)
            .await
            .unwrap();

        let checkpoint = store
            .offboard_tenant(&scope, &key, "operator")
            .await
            .unwrap();
        assert!(store.checkpoint_verifies(&checkpoint, &key));
        assert!(!store.checkpoint_verifies(&checkpoint, &MasterKey::generate()));
        assert_eq!(
            store.audit_checkpoint(&scope).await.unwrap(),
            Some(checkpoint.clone())
        );

        let report = store.verify_audit(&scope).await.unwrap();
        assert!(report.first_bad.is_none());
        assert_eq!(report.head_hash, checkpoint.head_hash);
        assert_eq!(report.entries, checkpoint.seq);

        let opened = store
            .secret(&scope, &key, "servicenow.client_secret")
            .await
            .unwrap();
        assert!(opened.is_none());
        for table in ["data_keys", "sealed_secrets", "api_tokens"] {
            let n: i64 = sqlx::query_scalar(&format!(
                "SELECT COUNT(*) FROM {table} WHERE tenant_id = 'us-acme'"
            ))
            .fetch_one(store.reader())
            .await
            .unwrap();
            assert_eq!(n, 0, "{table}");
        }
        assert!(
            store
                .authenticate_token(value.expose_secret())
                .await
                .unwrap()
                .is_none()
        );
        assert!(store.tenant_offboarded(scope.tenant()).await.unwrap());
        let again = store.offboard_tenant(&scope, &key, "operator").await;
        assert!(matches!(again, Err(StoreError::NotFound(_))));
        assert!(store.run(&scope, RunId::new()).await.unwrap().is_none());
    }
}
