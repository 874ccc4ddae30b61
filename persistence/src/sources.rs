//! Webhook sources: how a tenant's incoming webhooks are verified and where the incident
//! reference sits in their bodies.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sqlx::FromRow;
use steward_core::{SignatureScheme, SourceName};

use crate::codec::{self, clip};
use crate::{Store, StoreError, TenantScope};

const MAX_POINTERS: usize = 8;
const MAX_POINTER_BYTES: usize = 256;

/// How long intake uses a source and its secrets read before (store clock, ms). A change made
/// through this store is seen at once (it empties the cache); one made by another node sharing
/// the database is seen within this.
const SOURCE_CACHE_TTL_MS: i64 = 1_000;

/// The most sources the cache holds; past it, lapsed entries go, then all of them.
const SOURCE_CACHE_MAX: usize = 4_096;

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
        let _forget = self.forget_sources_after();
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
    ///
    /// What was read is kept for the next deliveries to the source for at most
    /// [`SOURCE_CACHE_TTL_MS`] (by the store clock and by the process's monotonic one), and
    /// never past the moment a superseded secret version in it stops verifying. Every change
    /// to a source, a secret or a tenant's keys made through this store empties the cache
    /// ([`Store::forget_sources`]), even when its commit fails or is abandoned, and a read
    /// that started before such a change is not kept. A delivery that no kept secret
    /// verifies is worth [`Store::source_with_secrets_read_now`] ([`SourceRead::Kept`]):
    /// another node may have stored a newer one.
    pub async fn source_with_secrets(
        &self,
        scope: &TenantScope,
        key: &crate::MasterKey,
        name: &SourceName,
        secret_of: impl Fn(&WebhookSource) -> String,
    ) -> Result<Option<(Arc<SourceWithSecrets>, SourceRead)>, StoreError> {
        let now = self.now();
        if let Some(read) = self.source_cache().get(scope.id(), name.as_str(), now) {
            return Ok(Some((read, SourceRead::Kept)));
        }
        let read = self
            .source_with_secrets_read_now(scope, key, name, secret_of)
            .await?;
        Ok(read.map(|read| (read, SourceRead::Now)))
    }

    /// As [`Store::source_with_secrets`], but read from the database whatever is kept (and
    /// kept in place of it).
    pub async fn source_with_secrets_read_now(
        &self,
        scope: &TenantScope,
        key: &crate::MasterKey,
        name: &SourceName,
        secret_of: impl Fn(&WebhookSource) -> String,
    ) -> Result<Option<Arc<SourceWithSecrets>>, StoreError> {
        let cache = self.source_cache();
        let now = self.now();
        let ticket = cache.ticket();
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
        // The newest version verifies however old; each superseded one until it expires.
        let lapses = rows.iter().skip(1).filter_map(|row| row.expires_at()).min();
        let secrets = self.open_valid_secrets(scope, key, &secret_name, rows)?;
        let read = Arc::new(SourceWithSecrets {
            source,
            secret_name,
            secrets,
        });
        let until = lapses.map_or(now + SOURCE_CACHE_TTL_MS, |at| {
            at.min(now + SOURCE_CACHE_TTL_MS)
        });
        cache.put(scope.id(), name.as_str(), &read, until, ticket, now);
        Ok(Some(read))
    }

    /// Empties the cache of sources and secrets intake reads ([`Store::source_with_secrets`]).
    pub(crate) fn forget_sources(&self) {
        self.source_cache().forget_all();
    }

    /// A guard that empties the cache of sources when dropped: taken before the commit of a
    /// change to a source, a secret or a tenant's keys, so that the cache is emptied after
    /// it whether the commit succeeds, fails with its outcome unknown, or is abandoned.
    pub(crate) fn forget_sources_after(&self) -> ForgetSources<'_> {
        ForgetSources(self)
    }
}

/// Empties the store's cache of sources when dropped ([`Store::forget_sources_after`]).
pub(crate) struct ForgetSources<'a>(&'a Store);

impl Drop for ForgetSources<'_> {
    fn drop(&mut self) {
        self.0.forget_sources();
    }
}

/// Where [`Store::source_with_secrets`] found what it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceRead {
    /// Kept from an earlier read: a secret stored since by another node is not in it.
    Kept,
    /// Read from the database for this call.
    Now,
}

/// What intake read of each source lately, by tenant and source name.
#[derive(Debug, Default)]
pub(crate) struct SourceCache {
    entries: Mutex<HashMap<(String, String), CachedSource>>,
    /// Bumped whenever the cache is emptied: a read that began before keeps nothing.
    generation: AtomicU64,
    /// Numbers reads in the order they began: a read never replaces a later one.
    reads: AtomicU64,
}

/// When a read began: the cache's generation then, and the read's place in order.
#[derive(Debug, Clone, Copy)]
struct Ticket {
    generation: u64,
    read: u64,
}

#[derive(Debug)]
struct CachedSource {
    read: Arc<SourceWithSecrets>,
    /// Used while the store clock is below this (ms)...
    until: i64,
    /// ...and for at most [`SOURCE_CACHE_TTL_MS`] after this, whatever the clock does.
    fetched: Instant,
    /// The read's place in order ([`Ticket::read`]).
    order: u64,
}

impl SourceCache {
    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), CachedSource>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// What is kept of the source, unless it lapsed (then it is dropped).
    fn get(&self, tenant: &str, name: &str, now: i64) -> Option<Arc<SourceWithSecrets>> {
        let key = (tenant.to_owned(), name.to_owned());
        let mut entries = self.entries();
        let cached = entries.get(&key)?;
        if cached.fresh(now) {
            return Some(Arc::clone(&cached.read));
        }
        entries.remove(&key);
        None
    }

    /// Taken as a read begins.
    fn ticket(&self) -> Ticket {
        Ticket {
            generation: self.generation.load(Ordering::Acquire),
            read: self.reads.fetch_add(1, Ordering::AcqRel),
        }
    }

    /// Keeps `read` until `until`, unless the cache was emptied since its ticket was taken or
    /// a read that began later is kept already.
    fn put(
        &self,
        tenant: &str,
        name: &str,
        read: &Arc<SourceWithSecrets>,
        until: i64,
        ticket: Ticket,
        now: i64,
    ) {
        let mut entries = self.entries();
        if self.generation.load(Ordering::Acquire) != ticket.generation || until <= now {
            return;
        }
        let key = (tenant.to_owned(), name.to_owned());
        if entries
            .get(&key)
            .is_some_and(|kept| kept.order > ticket.read)
        {
            return;
        }
        if entries.len() >= SOURCE_CACHE_MAX {
            entries.retain(|_, cached| cached.fresh(now));
            if entries.len() >= SOURCE_CACHE_MAX {
                entries.clear();
            }
        }
        let cached = CachedSource {
            read: Arc::clone(read),
            until,
            fetched: Instant::now(),
            order: ticket.read,
        };
        entries.insert(key, cached);
    }

    fn forget_all(&self) {
        let mut entries = self.entries();
        self.generation.fetch_add(1, Ordering::AcqRel);
        entries.clear();
    }
}

impl CachedSource {
    fn fresh(&self, now: i64) -> bool {
        let ttl = Duration::from_millis(SOURCE_CACHE_TTL_MS.unsigned_abs());
        now < self.until && self.fetched.elapsed() < ttl
    }
}

/// A webhook source with the secret versions that verify its deliveries now.
#[derive(Debug)]
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

    fn cached(name: &str) -> Arc<SourceWithSecrets> {
        Arc::new(SourceWithSecrets {
            source: source(&["/sys_id"], &[]),
            secret_name: name.into(),
            secrets: vec![secrecy::SecretString::from("s3cret".to_owned())],
        })
    }

    #[test]
    fn a_cached_source_lapses_at_its_time() {
        let cache = SourceCache::default();
        let read = cached("webhook/servicenow");
        cache.put("us-acme", "servicenow", &read, 2_000, cache.ticket(), 1_000);
        assert!(cache.get("us-acme", "servicenow", 1_999).is_some());
        assert!(cache.get("us-acme", "servicenow", 2_000).is_none());
        assert!(
            cache.get("us-other", "servicenow", 1_000).is_none(),
            "another tenant"
        );
        assert!(
            cache.get("us-acme", "stripe", 1_000).is_none(),
            "another source"
        );
        // Nothing is kept that has already lapsed.
        cache.put("us-acme", "slack", &read, 1_000, cache.ticket(), 1_000);
        assert!(cache.get("us-acme", "slack", 999).is_none());
    }

    #[test]
    fn a_read_begun_before_the_cache_was_emptied_is_not_kept() {
        let cache = SourceCache::default();
        let read = cached("webhook/servicenow");
        cache.put("us-acme", "servicenow", &read, 10_000, cache.ticket(), 0);
        let before = cache.ticket();
        cache.forget_all();
        assert!(cache.get("us-acme", "servicenow", 1).is_none(), "emptied");
        cache.put("us-acme", "servicenow", &read, 10_000, before, 1);
        assert!(
            cache.get("us-acme", "servicenow", 2).is_none(),
            "a stale read"
        );
        cache.put("us-acme", "servicenow", &read, 10_000, cache.ticket(), 1);
        assert!(
            cache.get("us-acme", "servicenow", 2).is_some(),
            "a fresh read"
        );
    }

    #[test]
    fn a_read_never_replaces_one_that_began_later() {
        let cache = SourceCache::default();
        let (older, newer) = (cached("webhook/old"), cached("webhook/new"));
        let (first, second) = (cache.ticket(), cache.ticket());
        cache.put("us-acme", "servicenow", &newer, 10_000, second, 0);
        cache.put("us-acme", "servicenow", &older, 10_000, first, 0);
        let kept = cache.get("us-acme", "servicenow", 1).expect("kept");
        assert_eq!(kept.secret_name, "webhook/new");
        let third = cache.ticket();
        cache.put("us-acme", "servicenow", &older, 10_000, third, 0);
        let kept = cache.get("us-acme", "servicenow", 1).expect("kept");
        assert_eq!(kept.secret_name, "webhook/old", "a later read replaces it");
    }

    #[test]
    fn a_lapsed_entry_is_dropped_when_asked_for() {
        let cache = SourceCache::default();
        let read = cached("webhook/servicenow");
        cache.put("us-acme", "servicenow", &read, 500, cache.ticket(), 0);
        assert!(cache.get("us-acme", "servicenow", 500).is_none());
        assert!(
            cache.entries().is_empty(),
            "its secrets are not left in memory"
        );
    }

    #[test]
    fn the_cache_is_bounded() {
        let cache = SourceCache::default();
        let read = cached("webhook/servicenow");
        for i in 0..(SOURCE_CACHE_MAX * 2 + 3) {
            let until = if i % 2 == 0 { 5 } else { 10_000 };
            let tenant = format!("us-t{i}");
            cache.put(&tenant, "servicenow", &read, until, cache.ticket(), 0);
            assert!(cache.entries().len() <= SOURCE_CACHE_MAX);
        }
        let newest = format!("us-t{}", SOURCE_CACHE_MAX * 2 + 2);
        assert!(cache.get(&newest, "servicenow", 1).is_some());
    }

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
