//! The secret vault (envelope encryption). A master key, held outside the database, wraps one
//! random data key per tenant; each secret version is sealed with its tenant's data key and
//! associated data naming tenant, secret, version and data key, so a ciphertext moved to any
//! other row fails to open. Plaintext exists only in `secrecy` types.

use base64::Engine;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use secrecy::zeroize::Zeroizing;
use secrecy::{ExposeSecret, SecretBox, SecretString};
use sha2::{Digest, Sha256};
use sqlx::FromRow;
use subtle::ConstantTimeEq;

use crate::codec::{self, clip};
use crate::envelope::{self, OpenError};
use crate::store::WriteTx;
use crate::{Store, StoreError, TenantScope};

/// The well-known key of `dev` profiles. Anyone can read it here, so it protects nothing.
const DEV_MASTER_KEY: [u8; 32] = *b"steward-dev-master-key-not-prod!";

/// The largest secret value the vault accepts.
const MAX_SECRET_BYTES: usize = 64 * 1024;

/// The key that wraps every tenant's data key. Never stored; `Debug` shows only its id.
///
/// A key may carry the key it replaces ([`MasterKey::with_previous`]): data keys still wrapped
/// by the previous key then open too, and new data keys are wrapped by this one. That is how
/// the master key rotates without downtime: every node is restarted with the new key and the
/// old one as previous, `steward keys rotate-master` re-wraps the data keys while they serve,
/// and the previous key is then dropped from the configuration.
pub struct MasterKey {
    key: SecretBox<[u8; 32]>,
    id: String,
    previous: Option<Box<MasterKey>>,
}

impl MasterKey {
    /// A master key from raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        let id = key_id_of(&bytes);
        Self {
            key: SecretBox::new(Box::new(bytes)),
            id,
            previous: None,
        }
    }

    /// This key, also able to open data keys wrapped by `previous` (which keeps no previous
    /// key of its own). The same key as previous is ignored.
    pub fn with_previous(mut self, previous: MasterKey) -> Self {
        if previous.id != self.id {
            self.previous = Some(Box::new(previous.without_previous()));
        }
        self
    }

    /// This key alone, without the key it replaces.
    pub fn without_previous(mut self) -> Self {
        self.previous = None;
        self
    }

    /// The id of the key this one replaces, when it carries one.
    pub fn previous_key_id(&self) -> Option<String> {
        self.previous.as_ref().map(|p| p.id.clone())
    }

    /// The key this one replaces, when it carries one.
    pub fn previous(&self) -> Option<&MasterKey> {
        self.previous.as_deref()
    }

    /// The key, of this one and its previous, whose id is `id`.
    fn for_id(&self, id: &str) -> Option<&MasterKey> {
        if self.id == id {
            Some(self)
        } else {
            self.previous.as_deref().filter(|p| p.id == id)
        }
    }

    /// Parses a master key given as 64 hex digits or as base64 (standard or URL-safe alphabet,
    /// padded or not) of exactly 32 bytes. Surrounding whitespace is ignored. The error never
    /// quotes the input.
    pub fn parse(s: &str) -> Result<Self, StoreError> {
        let s = s.trim();
        if s.len() > 128 {
            return Err(bad_key_text());
        }
        let bytes = if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            Zeroizing::new(hex::decode(s).map_err(|_| bad_key_text())?)
        } else {
            decode_base64(s)?
        };
        let array: [u8; 32] = bytes.as_slice().try_into().map_err(|_| bad_key_text())?;
        Ok(Self::from_bytes(array))
    }

    /// A fresh random master key.
    pub fn generate() -> Self {
        let random = envelope::random_key();
        Self::from_bytes(*random.expose_secret())
    }

    /// The fixed, publicly known key for `dev` profiles and tests. Staging and production
    /// configuration must refuse it (see [`MasterKey::is_dev`]); it protects nothing.
    pub fn dev() -> Self {
        Self::from_bytes(DEV_MASTER_KEY)
    }

    /// Whether this is the well-known [`MasterKey::dev`] key.
    pub fn is_dev(&self) -> bool {
        bool::from(self.key.expose_secret().ct_eq(&DEV_MASTER_KEY))
    }

    /// The key's public id: `mk-` and the first 16 hex digits of
    /// SHA-256(`steward-master-key-id\0` || key). Safe to log and to store.
    pub fn key_id(&self) -> String {
        self.id.clone()
    }

    /// The raw key, for deriving keys inside the store.
    pub(crate) fn bytes(&self) -> &[u8; 32] {
        self.key.expose_secret()
    }
}

impl Clone for MasterKey {
    fn clone(&self) -> Self {
        Self {
            key: SecretBox::new(Box::new(*self.bytes())),
            id: self.id.clone(),
            previous: self.previous.clone(),
        }
    }
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKey")
            .field("key_id", &self.id)
            .field("previous_key_id", &self.previous_key_id())
            .finish_non_exhaustive()
    }
}

fn key_id_of(bytes: &[u8; 32]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"steward-master-key-id\0");
    hasher.update(bytes);
    let digest = hex::encode(hasher.finalize());
    format!("mk-{}", &digest[..16])
}

fn bad_key_text() -> StoreError {
    StoreError::Crypto("master key must be 64 hex digits or the base64 of 32 bytes".into())
}

fn decode_base64(s: &str) -> Result<Zeroizing<Vec<u8>>, StoreError> {
    let config =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    [alphabet::STANDARD, alphabet::URL_SAFE]
        .iter()
        .find_map(|abc| GeneralPurpose::new(abc, config).decode(s).ok())
        .map(Zeroizing::new)
        .ok_or_else(bad_key_text)
}

/// A tenant's data key, unwrapped; zeroized when dropped.
pub(crate) struct DataKey {
    pub(crate) version: i64,
    pub(crate) key: SecretBox<[u8; 32]>,
}

#[derive(FromRow)]
pub(crate) struct WrappedRow {
    tenant_id: String,
    version: i64,
    master_key_id: String,
    wrapped: Vec<u8>,
}

impl WrappedRow {
    /// Unwraps this data key with `master` or the key it replaces, refusing a row recorded
    /// under any other key id.
    pub(crate) fn unwrap_with(&self, master: &MasterKey) -> Result<DataKey, StoreError> {
        let Some(master) = master.for_id(&self.master_key_id) else {
            return Err(StoreError::WrongMasterKey {
                expected: self.master_key_id.clone(),
                found: master.key_id(),
            });
        };
        let ad = envelope::data_key_ad(&self.tenant_id, self.version, &self.master_key_id);
        let fail = |reason: &dyn std::fmt::Display| {
            StoreError::Crypto(format!(
                "data key v{} of tenant {} could not be unwrapped with master key {}: {reason}",
                self.version, self.tenant_id, master.id
            ))
        };
        let plain = envelope::open(master.bytes(), &ad, &self.wrapped).map_err(|e| fail(&e))?;
        let array: [u8; 32] = plain
            .expose_secret()
            .try_into()
            .map_err(|_| fail(&"it is not 32 bytes long"))?;
        Ok(DataKey {
            version: self.version,
            key: SecretBox::new(Box::new(array)),
        })
    }
}

/// A secret version and, when it exists, the wrapped data key that sealed it.
#[derive(FromRow)]
pub(crate) struct SealedWithKey {
    version: i64,
    dek_version: i64,
    sealed: Vec<u8>,
    expires_at: Option<i64>,
    master_key_id: Option<String>,
    wrapped: Option<Vec<u8>>,
}

impl SealedWithKey {
    /// When this version stops verifying (store clock, ms), if it is superseded.
    pub(crate) fn expires_at(&self) -> Option<i64> {
        self.expires_at
    }
}

#[derive(FromRow)]
struct SealedRow {
    version: i64,
    dek_version: i64,
    sealed: Vec<u8>,
}

impl Store {
    /// Confirms at startup that `key` is the vault's master key. The first call on a new
    /// database records the key's id; later calls with another key fail with
    /// [`StoreError::WrongMasterKey`] naming both ids. It also unwraps the newest stored data
    /// key, so a key that matches by id but not by bytes (or a damaged row) is caught here,
    /// before any run needs a secret.
    ///
    /// On success `key` also becomes the key under which the store seals and opens tenant
    /// content (until this call, the dev key), and content stored in clear by an older version
    /// is sealed, once (see `docs/security/data-at-rest.md`). Call it before writing any tenant
    /// content.
    pub async fn check_master_key(&self, key: &MasterKey) -> Result<(), StoreError> {
        let mut tx = self.begin_platform_write().await?;
        self.ensure_master_key(&mut tx, key).await?;
        let newest: Option<WrappedRow> = sqlx::query_as(
            "SELECT tenant_id, version, master_key_id, wrapped FROM data_keys \
             ORDER BY created_at DESC, tenant_id, version DESC LIMIT 1",
        )
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = newest {
            row.unwrap_with(key)?;
        }
        tx.commit().await?;
        self.use_content_master(key);
        self.seal_legacy_content().await?;
        Ok(())
    }

    /// The tenant's newest data key inside `tx`, made (version 1, wrapped by `key`) when the
    /// tenant has none yet.
    pub(crate) async fn newest_data_key(
        &self,
        tx: &mut WriteTx,
        scope: &TenantScope,
        key: &MasterKey,
    ) -> Result<DataKey, StoreError> {
        self.ensure_master_key(tx, key).await?;
        self.lock_chain(tx, scope).await?;
        self.tenant_data_key(tx, scope, key).await
    }

    /// Re-wraps every tenant's data keys from master key `old` to `new`, one transaction per
    /// tenant (each audited), then records `new` as the vault's key, after which `old` is
    /// refused. `progress(done, total)` is called after each tenant. Safe to run again after an
    /// interruption: each data key records the master key that wraps it, so keys already
    /// re-wrapped are skipped. Returns how many data keys were re-wrapped by this call.
    pub async fn rotate_master_key(
        &self,
        old: &MasterKey,
        new: &MasterKey,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<u64, StoreError> {
        if old.id == new.id {
            return Err(StoreError::Invalid(
                "the new master key is the current one; generate a new key".into(),
            ));
        }
        self.check_rotation_start(old, new).await?;
        let tenants = self.list_tenants().await?;
        let total = tenants.len();
        let mut rewrapped = 0;
        for (done, tenant) in tenants.into_iter().enumerate() {
            let scope = TenantScope::assume(tenant.id, crate::Authenticator::Operator);
            rewrapped += self.rewrap_tenant(&scope, old, new).await?;
            progress(done + 1, total);
        }
        let mut tx = self.begin_platform_write().await?;
        sqlx::query("UPDATE vault_meta SET master_key_id = $1 WHERE id = 1")
            .bind(&new.id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::info!(from = %old.id, to = %new.id, rewrapped, "rotated the vault master key");
        Ok(rewrapped)
    }

    /// A rotation starts from the recorded key, or resumes one that already recorded `new`.
    async fn check_rotation_start(
        &self,
        old: &MasterKey,
        new: &MasterKey,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_platform_write().await?;
        let recorded: Option<String> =
            sqlx::query_scalar("SELECT master_key_id FROM vault_meta WHERE id = 1")
                .fetch_optional(&mut *tx)
                .await?;
        match recorded {
            Some(id) if id == old.id || id == new.id => Ok(()),
            Some(expected) => Err(StoreError::WrongMasterKey {
                expected,
                found: old.key_id(),
            }),
            None => {
                self.ensure_master_key(&mut tx, old).await?;
                tx.commit().await?;
                Ok(())
            }
        }
    }

    /// Re-wraps one tenant's data keys still wrapped by `old`, in one transaction.
    async fn rewrap_tenant(
        &self,
        scope: &TenantScope,
        old: &MasterKey,
        new: &MasterKey,
    ) -> Result<u64, StoreError> {
        let mut tx = self.begin_tenant_write(scope).await?;
        let rows: Vec<WrappedRow> = sqlx::query_as(
            "SELECT tenant_id, version, master_key_id, wrapped FROM data_keys \
             WHERE tenant_id = $1 AND master_key_id <> $2 ORDER BY version",
        )
        .bind(scope.id())
        .bind(&new.id)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        for row in &rows {
            let dek = row.unwrap_with(old)?;
            let ad = envelope::data_key_ad(scope.id(), row.version, &new.id);
            let wrapped = envelope::seal(new.bytes(), &ad, dek.key.expose_secret());
            sqlx::query(
                "UPDATE data_keys SET master_key_id = $1, wrapped = $2 \
                 WHERE tenant_id = $3 AND version = $4",
            )
            .bind(&new.id)
            .bind(wrapped)
            .bind(scope.id())
            .bind(row.version)
            .execute(&mut *tx)
            .await?;
        }
        let draft = crate::AuditDraft {
            kind: "vault.master_key_rotated".into(),
            run_id: None,
            actor: "operator".into(),
            body: serde_json::json!({
                "from": old.id, "to": new.id, "data_keys": rows.len(),
            }),
        };
        self.append_audit_in(&mut tx, scope, &draft).await?;
        let _forget = self.forget_sources_after();
        tx.commit().await?;
        Ok(rows.len() as u64)
    }

    /// Seals a new version of the tenant's secret `name` and returns its version (1, 2, …).
    /// The tenant's data key is created on first use. Names are 1–200 printable bytes; values
    /// 1 byte to 64 KiB.
    pub async fn put_secret(
        &self,
        scope: &TenantScope,
        key: &MasterKey,
        name: &str,
        value: &SecretString,
    ) -> Result<u32, StoreError> {
        let mut tx = self.begin_tenant_write(scope).await?;
        let next = self.seal_next(&mut tx, scope, key, name, value).await?;
        let _forget = self.forget_sources_after();
        tx.commit().await?;
        codec::to_u32(next, "secret version")
    }

    /// Seals the next version of `name` inside `tx` and returns its number.
    async fn seal_next(
        &self,
        tx: &mut WriteTx,
        scope: &TenantScope,
        key: &MasterKey,
        name: &str,
        value: &SecretString,
    ) -> Result<i64, StoreError> {
        codec::check_text(name, "secret name", 200)?;
        let plain = value.expose_secret().as_bytes();
        if plain.is_empty() || plain.len() > MAX_SECRET_BYTES {
            return Err(StoreError::Invalid(format!(
                "secret `{}` must be 1 to {MAX_SECRET_BYTES} bytes long",
                clip(name)
            )));
        }
        self.ensure_master_key(tx, key).await?;
        // Two writers of one tenant's secrets at once would both number the same version (or
        // both make the first data key): the tenant's lock orders them.
        self.lock_chain(tx, scope).await?;
        let dek = self.tenant_data_key(tx, scope, key).await?;
        let next: i64 = sqlx::query_scalar(
            "SELECT COALESCE(MAX(version), 0) + 1 FROM sealed_secrets \
             WHERE tenant_id = $1 AND name = $2",
        )
        .bind(scope.id())
        .bind(name)
        .fetch_one(&mut **tx)
        .await?;

        let ad = envelope::secret_ad(scope.id(), name, next, dek.version);
        let sealed = envelope::seal(dek.key.expose_secret(), &ad, plain);
        sqlx::query(
            "INSERT INTO sealed_secrets \
             (tenant_id, name, version, dek_version, sealed, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(scope.id())
        .bind(name)
        .bind(next)
        .bind(dek.version)
        .bind(sealed)
        .bind(self.now())
        .execute(&mut **tx)
        .await?;
        Ok(next)
    }

    /// The latest version of the tenant's secret `name`, or None if it was never stored. A
    /// value that fails to open is an error naming the secret, version and tenant; it is
    /// never returned in any form.
    pub async fn secret(
        &self,
        scope: &TenantScope,
        key: &MasterKey,
        name: &str,
    ) -> Result<Option<SecretString>, StoreError> {
        let Some(row) = self.latest_sealed(scope, name).await? else {
            return Ok(None);
        };
        let dek = self.data_key_for(scope, key, name, &row).await?;
        open_secret(scope, name, &row, &dek).map(Some)
    }

    /// Seals `value` as the new version of secret `name` while the version it replaces stays
    /// valid until `old_expires_at` (Unix milliseconds): the overlap of a rotation. Versions
    /// older than that one lose any overlap they still had. The rotation is audited in the same
    /// transaction as the work of `actor` (names and versions, never values). Returns the new
    /// version.
    pub async fn rotate_secret(
        &self,
        scope: &TenantScope,
        key: &MasterKey,
        name: &str,
        value: &SecretString,
        old_expires_at: i64,
        actor: &str,
    ) -> Result<u32, StoreError> {
        let mut tx = self.begin_tenant_write(scope).await?;
        self.lock_chain(&mut tx, scope).await?;
        let previous: Option<i64> = sqlx::query_scalar(
            "SELECT MAX(version) FROM sealed_secrets WHERE tenant_id = $1 AND name = $2",
        )
        .bind(scope.id())
        .bind(name)
        .fetch_one(&mut *tx)
        .await?;
        let previous = previous.ok_or_else(|| {
            StoreError::NotFound(format!("secret `{}` has no version to rotate", clip(name)))
        })?;
        let next = self.seal_next(&mut tx, scope, key, name, value).await?;
        sqlx::query(
            "UPDATE sealed_secrets \
             SET expires_at = CASE WHEN version = $1 THEN $2 ELSE NULL END \
             WHERE tenant_id = $3 AND name = $4 AND version <= $1",
        )
        .bind(previous)
        .bind(old_expires_at)
        .bind(scope.id())
        .bind(name)
        .execute(&mut *tx)
        .await?;
        let draft = crate::AuditDraft {
            kind: "secret.rotated".into(),
            run_id: None,
            actor: actor.into(),
            body: serde_json::json!({
                "secret": name, "version": next,
                "previous_version": previous, "previous_expires_at": old_expires_at,
            }),
        };
        self.append_audit_in(&mut tx, scope, &draft).await?;
        let _forget = self.forget_sources_after();
        tx.commit().await?;
        codec::to_u32(next, "secret version")
    }

    /// Every version of secret `name` that verifies now, newest first: the latest, and any
    /// superseded version whose overlap has not yet expired by the store's clock. Empty if the
    /// secret was never stored.
    pub async fn valid_secrets(
        &self,
        scope: &TenantScope,
        key: &MasterKey,
        name: &str,
    ) -> Result<Vec<SecretString>, StoreError> {
        let rows = {
            let mut tx = self.read_one_as(scope).await?;
            self.valid_secret_rows(&mut tx, scope, name).await?
        };
        self.open_valid_secrets(scope, key, name, rows)
    }

    /// The sealed versions [`Store::valid_secrets`] opens, each with the data key that sealed
    /// it, in one statement: intake reads them for every delivery, before its signature is
    /// checked.
    pub(crate) async fn valid_secret_rows(
        &self,
        conn: &mut sqlx::AnyConnection,
        scope: &TenantScope,
        name: &str,
    ) -> Result<Vec<SealedWithKey>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT s.version, s.dek_version, s.sealed, s.expires_at, d.master_key_id, d.wrapped \
             FROM sealed_secrets s LEFT JOIN data_keys d \
             ON d.tenant_id = s.tenant_id AND d.version = s.dek_version \
             WHERE s.tenant_id = $1 AND s.name = $2 AND (s.expires_at > $3 OR s.version = \
             (SELECT MAX(version) FROM sealed_secrets WHERE tenant_id = $1 AND name = $2)) \
             ORDER BY s.version DESC",
        )
        .bind(scope.id())
        .bind(name)
        .bind(self.now())
        .fetch_all(conn)
        .await?)
    }

    /// Opens what [`Store::valid_secret_rows`] read.
    pub(crate) fn open_valid_secrets(
        &self,
        scope: &TenantScope,
        key: &MasterKey,
        name: &str,
        rows: Vec<SealedWithKey>,
    ) -> Result<Vec<SecretString>, StoreError> {
        let mut open = Vec::with_capacity(rows.len());
        for row in rows {
            let sealed = SealedRow {
                version: row.version,
                dek_version: row.dek_version,
                sealed: row.sealed,
            };
            let (Some(master_key_id), Some(wrapped)) = (row.master_key_id, row.wrapped) else {
                return Err(missing_data_key(scope, name, &sealed));
            };
            let wrapped = WrappedRow {
                tenant_id: scope.id().to_owned(),
                version: sealed.dek_version,
                master_key_id,
                wrapped,
            };
            let dek = wrapped.unwrap_with(key)?;
            open.push(open_secret(scope, name, &sealed, &dek)?);
        }
        Ok(open)
    }

    /// The unwrapped data key that sealed `row`.
    async fn data_key_for(
        &self,
        scope: &TenantScope,
        key: &MasterKey,
        name: &str,
        row: &SealedRow,
    ) -> Result<DataKey, StoreError> {
        let mut tx = self.read_as(scope).await?;
        let wrapped: Option<WrappedRow> = sqlx::query_as(
            "SELECT tenant_id, version, master_key_id, wrapped FROM data_keys \
             WHERE tenant_id = $1 AND version = $2",
        )
        .bind(scope.id())
        .bind(row.dek_version)
        .fetch_optional(&mut *tx)
        .await?;
        let wrapped = wrapped.ok_or_else(|| missing_data_key(scope, name, row))?;
        wrapped.unwrap_with(key)
    }

    async fn latest_sealed(
        &self,
        scope: &TenantScope,
        name: &str,
    ) -> Result<Option<SealedRow>, StoreError> {
        let mut tx = self.read_as(scope).await?;
        Ok(sqlx::query_as(
            "SELECT version, dek_version, sealed FROM sealed_secrets \
             WHERE tenant_id = $1 AND name = $2 ORDER BY version DESC LIMIT 1",
        )
        .bind(scope.id())
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?)
    }

    /// Records `key` as the vault's master key if none is recorded yet; refuses any other key.
    async fn ensure_master_key(&self, tx: &mut WriteTx, key: &MasterKey) -> Result<(), StoreError> {
        let recorded: Option<String> =
            sqlx::query_scalar("SELECT master_key_id FROM vault_meta WHERE id = 1")
                .fetch_optional(&mut **tx)
                .await?;
        match recorded {
            // During a rotation the vault still names the previous key until it completes.
            Some(expected) if key.for_id(&expected).is_some() => Ok(()),
            Some(expected) => Err(StoreError::WrongMasterKey {
                expected,
                found: key.key_id(),
            }),
            None => {
                // Two tenants' first data keys may be made at once; the one that records its
                // key first wins and the other is checked against it.
                let done = sqlx::query(
                    "INSERT INTO vault_meta (id, master_key_id, created_at) VALUES (1, $1, $2) \
                     ON CONFLICT (id) DO NOTHING",
                )
                .bind(&key.id)
                .bind(self.now())
                .execute(&mut **tx)
                .await?;
                if done.rows_affected() == 0 {
                    let expected: String =
                        sqlx::query_scalar("SELECT master_key_id FROM vault_meta WHERE id = 1")
                            .fetch_one(&mut **tx)
                            .await?;
                    if key.for_id(&expected).is_none() {
                        return Err(StoreError::WrongMasterKey {
                            expected,
                            found: key.key_id(),
                        });
                    }
                    return Ok(());
                }
                tracing::info!(master_key_id = %key.id, "recorded the vault master key id");
                Ok(())
            }
        }
    }

    /// The tenant's newest data key, creating version 1 if the tenant has none.
    async fn tenant_data_key(
        &self,
        tx: &mut WriteTx,
        scope: &TenantScope,
        key: &MasterKey,
    ) -> Result<DataKey, StoreError> {
        let newest: Option<WrappedRow> = sqlx::query_as(
            "SELECT tenant_id, version, master_key_id, wrapped FROM data_keys \
             WHERE tenant_id = $1 ORDER BY version DESC LIMIT 1",
        )
        .bind(scope.id())
        .fetch_optional(&mut **tx)
        .await?;
        if let Some(row) = newest {
            return row.unwrap_with(key);
        }

        let fresh = envelope::random_key();
        let ad = envelope::data_key_ad(scope.id(), 1, &key.id);
        let wrapped = envelope::seal(key.bytes(), &ad, fresh.expose_secret());
        sqlx::query(
            "INSERT INTO data_keys (tenant_id, version, master_key_id, wrapped, created_at) \
             VALUES ($1, 1, $2, $3, $4)",
        )
        .bind(scope.id())
        .bind(&key.id)
        .bind(wrapped)
        .bind(self.now())
        .execute(&mut **tx)
        .await?;
        Ok(DataKey {
            version: 1,
            key: fresh,
        })
    }
}

/// A secret version names a data key that does not exist.
fn missing_data_key(scope: &TenantScope, name: &str, row: &SealedRow) -> StoreError {
    StoreError::Corrupt(format!(
        "secret `{}` v{} of tenant {} names data key v{}, which does not exist",
        clip(name),
        row.version,
        scope.tenant(),
        row.dek_version
    ))
}

fn open_secret(
    scope: &TenantScope,
    name: &str,
    row: &SealedRow,
    dek: &DataKey,
) -> Result<SecretString, StoreError> {
    let fail = |reason: &dyn std::fmt::Display| {
        StoreError::Crypto(format!(
            "secret `{}` v{} of tenant {} could not be opened: {reason}",
            clip(name),
            row.version,
            scope.tenant()
        ))
    };
    let ad = envelope::secret_ad(scope.id(), name, row.version, row.dek_version);
    let plain = envelope::open(dek.key.expose_secret(), &ad, &row.sealed)
        .map_err(|e: OpenError| fail(&e))?;
    let text = std::str::from_utf8(plain.expose_secret()).map_err(|_| fail(&"it is not UTF-8"))?;
    Ok(SecretString::from(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn master_keys_parse_from_hex_and_base64() {
        let bytes: [u8; 32] = std::array::from_fn(|i| u8::try_from(i).unwrap() * 7);
        let want = MasterKey::from_bytes(bytes).key_id();
        let hex_upper = hex::encode_upper(bytes);
        let std_b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
        let url_b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        for text in [
            hex::encode(bytes),
            hex_upper,
            std_b64.clone(),
            url_b64,
            format!(" {std_b64}\n"),
        ] {
            assert_eq!(MasterKey::parse(&text).unwrap().key_id(), want, "{text}");
        }
    }

    #[test]
    fn malformed_master_keys_are_refused_without_echoing_them() {
        let short = base64::engine::general_purpose::STANDARD.encode([1u8; 31]);
        let long = base64::engine::general_purpose::STANDARD.encode([1u8; 33]);
        let oversized = "A".repeat(100_000);
        let cases = [
            "",
            "zz".repeat(32).as_str(),
            &"a".repeat(63),
            &short,
            &long,
            &oversized,
            "é".repeat(32).as_str(),
            "not a key at all!",
        ]
        .map(str::to_owned);
        for text in cases {
            let err = MasterKey::parse(&text).unwrap_err();
            assert!(matches!(err, StoreError::Crypto(_)), "{err}");
            if text.len() > 3 {
                assert!(
                    !err.to_string().contains(text.trim()),
                    "error quotes the input"
                );
            }
        }
    }

    #[test]
    fn key_ids_follow_the_documented_derivation() {
        let key = MasterKey::from_bytes([0u8; 32]);
        let mut hasher = Sha256::new();
        hasher.update(b"steward-master-key-id\0");
        hasher.update([0u8; 32]);
        let digest = hex::encode(hasher.finalize());
        assert_eq!(key.key_id(), format!("mk-{}", &digest[..16]));
        assert_eq!(key.key_id().len(), 19);
        assert_ne!(
            MasterKey::generate().key_id(),
            MasterKey::generate().key_id()
        );
    }

    #[test]
    fn debug_shows_only_the_key_id() {
        let key = MasterKey::from_bytes([0xab; 32]);
        let shown = format!("{key:?}");
        assert!(shown.contains(&key.key_id()));
        assert!(
            !shown.contains("171") && !shown.to_lowercase().contains("abab"),
            "{shown}"
        );
    }

    #[test]
    fn only_the_dev_key_is_dev() {
        assert!(MasterKey::dev().is_dev());
        let dev = MasterKey::dev();
        let copy = dev.clone();
        assert!(copy.is_dev() && dev.is_dev());
        assert!(!MasterKey::generate().is_dev());
        assert_eq!(
            MasterKey::dev().key_id(),
            MasterKey::from_bytes(DEV_MASTER_KEY).key_id()
        );
    }
}
