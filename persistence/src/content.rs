//! Tenant content at rest: incident text, triggers, journal steps (prompts, model replies,
//! proposals, diffs, Slack messages), snapshots, crash records, timer payloads and the audit
//! entries about runs are sealed with the tenant's data key (the one the vault wraps under the
//! master key), so destroying that key at offboarding leaves every copy of the content
//! unreadable. `docs/security/data-at-rest.md` lists what is sealed and what stays in clear.
//!
//! A sealed value is stored in its TEXT column as `sealed:1:<data key version>:<base64 of the
//! envelope>` (the envelope of [`crate::envelope`]). Its associated data names the tenant, the
//! table and column, the row, and the data key version, so a ciphertext copied to another
//! row, column or tenant fails to open.
//!
//! Unwrapped data keys are cached per tenant in memory (bounded, each for a few minutes,
//! zeroized when dropped), so the master key unwraps a tenant's data key once per interval,
//! not once per row. Offboarding evicts the tenant's keys from this process's cache; another
//! process that cached the key holds it until the entry expires.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use secrecy::ExposeSecret;

use crate::codec::clip;
use crate::envelope;
use crate::store::WriteTx;
use crate::vault::{DataKey, WrappedRow};
use crate::{MasterKey, Store, StoreError, TenantScope};

/// How every sealed value starts.
pub(crate) const SEALED_PREFIX: &str = "sealed:1:";

/// The most data keys kept unwrapped at once.
const MAX_CACHED: usize = 1024;

/// How long an unwrapped data key is kept before it is read and unwrapped again.
const CACHE_TTL: Duration = Duration::from_secs(300);

/// A sealed column: its table and column name, as named in the associated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Column {
    RunTrigger,
    RunLastError,
    StepBody,
    Snapshot,
    CrashMessage,
    CrashError,
    CrashState,
    TimerPayload,
    AuditBody,
}

impl Column {
    /// `table.column`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::RunTrigger => "runs.trigger_body",
            Self::RunLastError => "runs.last_error",
            Self::StepBody => "run_steps.body",
            Self::Snapshot => "run_snapshots.state",
            Self::CrashMessage => "run_crashes.message",
            Self::CrashError => "run_crashes.error",
            Self::CrashState => "run_crashes.state",
            Self::TimerPayload => "timers.payload",
            Self::AuditBody => "audit_log.body",
        }
    }
}

/// Associated data of a sealed content value.
pub(crate) fn content_ad(tenant: &str, column: Column, row: &str, dek_version: i64) -> String {
    format!(
        "steward/v1/content|{tenant}|{}|{row}|{dek_version}",
        column.name()
    )
}

/// Whether a stored value is in the sealed format (as opposed to a row written before content
/// was sealed).
pub(crate) fn is_sealed(stored: &str) -> bool {
    stored.starts_with(SEALED_PREFIX)
}

/// Seals `plain` as the value of `column` in the row `row` of `tenant`.
pub(crate) fn seal(key: &DataKey, tenant: &str, column: Column, row: &str, plain: &str) -> String {
    let ad = content_ad(tenant, column, row, key.version);
    let sealed = envelope::seal(key.key.expose_secret(), &ad, plain.as_bytes());
    // The prefix, at most 20 digits of version and a colon, then the base64 written in place.
    let mut text = String::with_capacity(SEALED_PREFIX.len() + 21 + sealed.len().div_ceil(3) * 4);
    let _ = write!(text, "{SEALED_PREFIX}{}:", key.version);
    STANDARD_NO_PAD.encode_string(sealed, &mut text);
    text
}

/// The data key version a sealed value names, and its envelope bytes.
fn parse(stored: &str) -> Option<(i64, Vec<u8>)> {
    let rest = stored.strip_prefix(SEALED_PREFIX)?;
    let (version, b64) = rest.split_once(':')?;
    let version: i64 = version.parse().ok().filter(|v| *v > 0)?;
    let bytes = STANDARD_NO_PAD.decode(b64).ok()?;
    Some((version, bytes))
}

/// The master key content is sealed under, and the cache of unwrapped data keys.
pub(crate) struct ContentKeys {
    master: RwLock<MasterKey>,
    cache: Mutex<Cache>,
}

#[derive(Default)]
struct Cache {
    keys: HashMap<(String, i64), (Arc<DataKey>, Instant)>,
    newest: HashMap<String, i64>,
}

impl Cache {
    fn get(&mut self, tenant: &str, version: i64) -> Option<Arc<DataKey>> {
        let id = (tenant.to_owned(), version);
        match self.keys.get(&id) {
            Some((key, at)) if at.elapsed() < CACHE_TTL => Some(Arc::clone(key)),
            Some(_) => {
                self.keys.remove(&id);
                None
            }
            None => None,
        }
    }

    fn newest(&mut self, tenant: &str) -> Option<Arc<DataKey>> {
        let version = *self.newest.get(tenant)?;
        self.get(tenant, version)
    }

    fn put(&mut self, tenant: &str, key: Arc<DataKey>, newest: bool) {
        if self.keys.len() >= MAX_CACHED {
            self.keys.retain(|_, (_, at)| at.elapsed() < CACHE_TTL);
        }
        if self.keys.len() >= MAX_CACHED
            && let Some(oldest) = self
                .keys
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(id, _)| id.clone())
        {
            self.keys.remove(&oldest);
        }
        if newest {
            self.newest.insert(tenant.to_owned(), key.version);
        }
        self.keys
            .insert((tenant.to_owned(), key.version), (key, Instant::now()));
    }

    fn evict(&mut self, tenant: &str) {
        self.keys.retain(|(t, _), _| t != tenant);
        self.newest.remove(tenant);
    }
}

impl ContentKeys {
    pub(crate) fn new() -> Self {
        Self {
            master: RwLock::new(MasterKey::dev()),
            cache: Mutex::new(Cache::default()),
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn master(&self) -> MasterKey {
        self.master
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl std::fmt::Debug for ContentKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContentKeys")
            .field("master_key_id", &self.master().key_id())
            .field("cached", &self.cache().keys.len())
            .finish()
    }
}

impl Store {
    /// Makes `key` the master key under which this store seals and opens tenant content
    /// (until then it is the dev key). [`Store::check_master_key`] calls it.
    pub(crate) fn use_content_master(&self, key: &MasterKey) {
        let keys = self.content_keys();
        *keys
            .master
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = key.clone();
    }

    /// Forgets the tenant's unwrapped data keys (at offboarding).
    pub(crate) fn evict_content_keys(&self, tenant: &str) {
        self.content_keys().cache().evict(tenant);
    }

    /// The tenant's newest data key, from the cache, the database, or made now (in a write
    /// transaction of its own). Must not be called while this task holds a write transaction:
    /// on SQLite the single writer would wait for itself.
    pub(crate) async fn content_key(
        &self,
        scope: &TenantScope,
    ) -> Result<Arc<DataKey>, StoreError> {
        if let Some(key) = self.content_keys().cache().newest(scope.id()) {
            return Ok(key);
        }
        let master = self.content_keys().master();
        let newest: Option<WrappedRow> = {
            let mut tx = self.read_as(scope).await?;
            sqlx::query_as(
                "SELECT tenant_id, version, master_key_id, wrapped FROM data_keys \
                 WHERE tenant_id = $1 ORDER BY version DESC LIMIT 1",
            )
            .bind(scope.id())
            .fetch_optional(&mut *tx)
            .await?
        };
        let key = match newest {
            Some(row) => row.unwrap_with(&master)?,
            None => {
                let mut tx = self.begin_tenant_write(scope).await?;
                let offboarded: Option<i64> =
                    sqlx::query_scalar("SELECT offboarded_at FROM tenants WHERE id = $1")
                        .bind(scope.id())
                        .fetch_one(&mut *tx)
                        .await?;
                if offboarded.is_some() {
                    return Err(StoreError::NotFound(format!(
                        "tenant `{}` was offboarded",
                        scope.tenant()
                    )));
                }
                let key = self.newest_data_key(&mut tx, scope, &master).await?;
                tx.commit().await?;
                key
            }
        };
        let key = Arc::new(key);
        self.content_keys()
            .cache()
            .put(scope.id(), Arc::clone(&key), true);
        Ok(key)
    }

    /// The tenant's newest data key inside a write transaction: from the cache, or read
    /// through `tx`. The key must exist already ([`Store::content_key`] makes it).
    pub(crate) async fn content_key_in(
        &self,
        tx: &mut WriteTx,
        scope: &TenantScope,
    ) -> Result<Arc<DataKey>, StoreError> {
        if let Some(key) = self.content_keys().cache().newest(scope.id()) {
            return Ok(key);
        }
        let newest: Option<WrappedRow> = sqlx::query_as(
            "SELECT tenant_id, version, master_key_id, wrapped FROM data_keys \
             WHERE tenant_id = $1 ORDER BY version DESC LIMIT 1",
        )
        .bind(scope.id())
        .fetch_optional(&mut **tx)
        .await?;
        let row = newest.ok_or_else(|| {
            StoreError::Crypto(format!(
                "tenant {} has no data key to seal its content with",
                scope.tenant()
            ))
        })?;
        let key = Arc::new(row.unwrap_with(&self.content_keys().master())?);
        self.content_keys()
            .cache()
            .put(scope.id(), Arc::clone(&key), true);
        Ok(key)
    }

    /// Data key `version` of `tenant`, to open a value with. Platform reads call it for rows
    /// of any tenant. A key that no longer exists (the tenant was offboarded) is a clear
    /// [`StoreError::Crypto`].
    async fn opening_key(&self, tenant: &str, version: i64) -> Result<Arc<DataKey>, StoreError> {
        if let Some(key) = self.content_keys().cache().get(tenant, version) {
            return Ok(key);
        }
        let row: Option<WrappedRow> = {
            let mut tx = self.read_as_tenant(tenant).await?;
            sqlx::query_as(
                "SELECT tenant_id, version, master_key_id, wrapped FROM data_keys \
                 WHERE tenant_id = $1 AND version = $2",
            )
            .bind(tenant)
            .bind(version)
            .fetch_optional(&mut *tx)
            .await?
        };
        let row = row.ok_or_else(|| {
            StoreError::Crypto(format!(
                "data key v{version} of tenant {tenant} no longer exists (destroyed when the \
                 tenant was offboarded): its sealed content cannot be opened"
            ))
        })?;
        let key = Arc::new(row.unwrap_with(&self.content_keys().master())?);
        self.content_keys()
            .cache()
            .put(tenant, Arc::clone(&key), false);
        Ok(key)
    }

    /// Opens the sealed value of `column` in the row `row` of `tenant`. A value that is not
    /// sealed, names a destroyed key or fails to authenticate is an error naming the column
    /// and row; nothing of it is returned.
    pub(crate) async fn open_content(
        &self,
        tenant: &str,
        column: Column,
        row: &str,
        stored: &str,
    ) -> Result<String, StoreError> {
        let fail = |reason: &dyn std::fmt::Display| {
            StoreError::Crypto(format!(
                "{} of row {} of tenant {tenant} could not be opened: {reason}",
                column.name(),
                clip(row)
            ))
        };
        let (version, bytes) = parse(stored).ok_or_else(|| fail(&"it is not sealed"))?;
        let key = self.opening_key(tenant, version).await?;
        let ad = content_ad(tenant, column, row, version);
        let plain = envelope::open(key.key.expose_secret(), &ad, &bytes).map_err(|e| fail(&e))?;
        String::from_utf8(plain.expose_secret().to_vec()).map_err(|_| fail(&"it is not UTF-8"))
    }

    /// [`Store::open_content`] of an optional column.
    pub(crate) async fn open_optional(
        &self,
        tenant: &str,
        column: Column,
        row: &str,
        stored: Option<&str>,
    ) -> Result<Option<String>, StoreError> {
        match stored {
            Some(stored) => self
                .open_content(tenant, column, row, stored)
                .await
                .map(Some),
            None => Ok(None),
        }
    }

    /// Opens a sealed JSON column and parses it.
    pub(crate) async fn open_json<T: serde::de::DeserializeOwned>(
        &self,
        tenant: &str,
        column: Column,
        row: &str,
        stored: &str,
    ) -> Result<T, StoreError> {
        let text = self.open_content(tenant, column, row, stored).await?;
        crate::codec::from_json(&text, column.name())
    }
}

#[cfg(test)]
mod tests {
    use secrecy::SecretBox;

    use super::*;

    fn key(version: i64, byte: u8) -> Arc<DataKey> {
        Arc::new(DataKey {
            version,
            key: SecretBox::new(Box::new([byte; 32])),
        })
    }

    #[test]
    fn sealed_values_open_only_with_their_own_associated_data() {
        let k = key(1, 7);
        let sealed = seal(
            &k,
            "us-acme",
            Column::StepBody,
            "r/1",
            "{\"prompt\":\"hi\"}",
        );
        assert!(is_sealed(&sealed));
        assert!(!sealed.contains("prompt"));
        let (version, bytes) = parse(&sealed).unwrap();
        assert_eq!(version, 1);
        let open = |tenant, column, row| {
            envelope::open(
                k.key.expose_secret(),
                &content_ad(tenant, column, row, 1),
                &bytes,
            )
        };
        assert!(open("us-acme", Column::StepBody, "r/1").is_ok());
        assert!(open("eu-beta", Column::StepBody, "r/1").is_err());
        assert!(open("us-acme", Column::Snapshot, "r/1").is_err());
        assert!(open("us-acme", Column::StepBody, "r/2").is_err());
    }

    #[test]
    fn malformed_sealed_text_does_not_parse() {
        for bad in [
            "",
            "{\"a\":1}",
            "sealed:1:",
            "sealed:1:x:AAAA",
            "sealed:1:0:AAAA",
            "sealed:1:-1:AAAA",
            "sealed:1:1:not base64!",
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn the_cache_is_bounded_and_forgets_an_evicted_tenant() {
        let mut cache = Cache::default();
        for i in 0..(MAX_CACHED + 10) {
            cache.put(&format!("us-t{i}"), key(1, 1), true);
        }
        assert!(cache.keys.len() <= MAX_CACHED);
        assert!(cache.newest(&format!("us-t{}", MAX_CACHED + 9)).is_some());
        cache.put("us-acme", key(1, 2), true);
        cache.put("us-acme", key(2, 3), false);
        assert_eq!(cache.newest("us-acme").unwrap().version, 1);
        assert!(cache.get("us-acme", 2).is_some());
        cache.evict("us-acme");
        assert!(cache.newest("us-acme").is_none());
        assert!(cache.get("us-acme", 2).is_none());
    }
}
