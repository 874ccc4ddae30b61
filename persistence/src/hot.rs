//! A short-lived cache of what every webhook delivery reads before it is verified: the
//! source's settings and the opened versions of its signing secret. Intake reads them for
//! every delivery, and without the cache each read is a reader transaction and, for a secret,
//! a data key lookup and two AEAD opens.
//!
//! Entries live [`TTL`] at most. Every write through this process's store (a new secret
//! version, a rotation, a source change, an offboarding, a master key rotation) drops what it
//! touches, so this process sees its own changes at once; a change made by another node or
//! process is seen within [`TTL`]. Whether a superseded secret version still verifies is
//! decided at each use by the store's clock, from the expiry cached beside it, so an overlap
//! ends on time whatever the cache holds. At most [`MAX_ENTRIES`] entries of each kind are kept;
//! a full cache is emptied and fills again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use secrecy::SecretString;

use crate::sources::WebhookSource;

/// How long an entry is used before it is read again.
pub(crate) const TTL: Duration = Duration::from_secs(1);

/// The most entries of each kind.
const MAX_ENTRIES: usize = 10_000;

/// One stored version of a secret, opened.
#[derive(Clone)]
pub(crate) struct SecretVersion {
    pub(crate) version: i64,
    /// When its overlap ends (Unix ms, the store's clock); None for no expiry.
    pub(crate) expires_at: Option<i64>,
    pub(crate) value: SecretString,
}

#[derive(Default)]
pub(crate) struct HotCache {
    sources: Mutex<HashMap<(String, String), (Option<WebhookSource>, Instant)>>,
    secrets: Mutex<HashMap<(String, String), (Vec<SecretVersion>, Instant)>>,
}

impl std::fmt::Debug for HotCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HotCache").finish_non_exhaustive()
    }
}

fn fresh(loaded: Instant) -> bool {
    loaded.elapsed() < TTL
}

fn put<V>(map: &mut HashMap<(String, String), (V, Instant)>, key: (String, String), value: V) {
    if map.len() >= MAX_ENTRIES {
        map.clear();
    }
    map.insert(key, (value, Instant::now()));
}

impl HotCache {
    pub(crate) fn source(&self, tenant: &str, name: &str) -> Option<Option<WebhookSource>> {
        let map = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        let (source, loaded) = map.get(&(tenant.to_owned(), name.to_owned()))?;
        fresh(*loaded).then(|| source.clone())
    }

    pub(crate) fn put_source(&self, tenant: &str, name: &str, source: Option<WebhookSource>) {
        let mut map = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        put(&mut map, (tenant.to_owned(), name.to_owned()), source);
    }

    /// The cached versions of secret `name`, newest first, if fresh.
    pub(crate) fn secrets(&self, tenant: &str, name: &str) -> Option<Vec<SecretVersion>> {
        let map = self.secrets.lock().unwrap_or_else(|e| e.into_inner());
        let (versions, loaded) = map.get(&(tenant.to_owned(), name.to_owned()))?;
        fresh(*loaded).then(|| versions.clone())
    }

    pub(crate) fn put_secrets(&self, tenant: &str, name: &str, versions: Vec<SecretVersion>) {
        let mut map = self.secrets.lock().unwrap_or_else(|e| e.into_inner());
        put(&mut map, (tenant.to_owned(), name.to_owned()), versions);
    }

    /// Drops the cached versions of one secret.
    pub(crate) fn forget_secret(&self, tenant: &str, name: &str) {
        let mut map = self.secrets.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(&(tenant.to_owned(), name.to_owned()));
    }

    /// Drops one cached source.
    pub(crate) fn forget_source(&self, tenant: &str, name: &str) {
        let mut map = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(&(tenant.to_owned(), name.to_owned()));
    }

    /// Drops everything cached for a tenant.
    pub(crate) fn forget_tenant(&self, tenant: &str) {
        let mut map = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|(t, _), _| t != tenant);
        drop(map);
        let mut map = self.secrets.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|(t, _), _| t != tenant);
    }

    /// Drops everything.
    pub(crate) fn forget_all(&self) {
        self.sources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.secrets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

/// The versions that verify at `now`: the newest, and every other whose overlap has not ended.
pub(crate) fn valid_at(versions: &[SecretVersion], now: i64) -> Vec<SecretString> {
    let newest = versions.iter().map(|v| v.version).max();
    versions
        .iter()
        .filter(|v| Some(v.version) == newest || v.expires_at.is_some_and(|e| e > now))
        .map(|v| v.value.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret as _;

    fn version(version: i64, expires_at: Option<i64>) -> SecretVersion {
        SecretVersion {
            version,
            expires_at,
            value: SecretString::from(format!("v{version}")),
        }
    }

    #[test]
    fn only_the_newest_and_unexpired_versions_verify() {
        let versions = vec![version(3, None), version(2, Some(1_000)), version(1, None)];
        let names = |now| -> Vec<String> {
            valid_at(&versions, now)
                .iter()
                .map(|s| s.expose_secret().to_owned())
                .collect()
        };
        assert_eq!(names(999), ["v3", "v2"]);
        assert_eq!(names(1_000), ["v3"], "an overlap ends at its expiry");
        assert!(valid_at(&[], 0).is_empty());
    }

    #[test]
    fn entries_are_forgotten_by_name_by_tenant_and_all_at_once() {
        let cache = HotCache::default();
        cache.put_secrets("us-a", "s", vec![version(1, None)]);
        cache.put_secrets("us-b", "s", vec![version(1, None)]);
        cache.put_source("us-a", "src", None);
        assert!(cache.secrets("us-a", "s").is_some());
        assert_eq!(cache.source("us-a", "src"), Some(None));
        cache.forget_secret("us-a", "s");
        assert!(cache.secrets("us-a", "s").is_none());
        cache.forget_tenant("us-a");
        assert!(cache.source("us-a", "src").is_none());
        assert!(cache.secrets("us-b", "s").is_some());
        cache.forget_all();
        assert!(cache.secrets("us-b", "s").is_none());
    }

    #[test]
    fn a_full_cache_empties_and_fills_again() {
        let cache = HotCache::default();
        for i in 0..MAX_ENTRIES {
            cache.put_source("us-a", &format!("s{i}"), None);
        }
        cache.put_source("us-a", "last", None);
        assert!(cache.source("us-a", "s0").is_none());
        assert!(cache.source("us-a", "last").is_some());
    }
}
