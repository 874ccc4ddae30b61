//! A bounded map of short-lived secrets held in memory (page sessions, OIDC pre-logins): kept
//! under the SHA-256 of their id, so a memory dump or a debug print shows no usable id; each
//! with its own expiry; and at most `capacity` of them, the oldest evicted first, so that a
//! flood of sign-ins cannot grow the process without bound.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use sha2::{Digest, Sha256};

struct Entry<V> {
    value: V,
    expires: Instant,
    /// Insertion order, for evicting the oldest.
    order: u64,
}

struct Inner<V> {
    entries: HashMap<[u8; 32], Entry<V>>,
    next: u64,
}

/// The map. Ids longer than [`MAX_ID_BYTES`] are never found.
pub(crate) struct ExpiringMap<V> {
    inner: Mutex<Inner<V>>,
    capacity: usize,
}

/// The longest id looked up; longer ones are refused before hashing.
pub(crate) const MAX_ID_BYTES: usize = 128;

fn key(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

impl<V> ExpiringMap<V> {
    /// An empty map holding at most `capacity` (at least 1) entries.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                entries: HashMap::new(),
                next: 0,
            }),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner<V>> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Keeps `value` under `id` until `expires`; drops expired entries first, then the oldest
    /// when the map is full.
    pub(crate) fn insert(&self, id: &str, value: V, expires: Instant) {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.entries.retain(|_, e| e.expires > now);
        if inner.entries.len() >= self.capacity
            && let Some(oldest) = inner
                .entries
                .iter()
                .min_by_key(|(_, e)| e.order)
                .map(|(k, _)| *k)
        {
            inner.entries.remove(&oldest);
        }
        let order = inner.next;
        inner.next += 1;
        inner.entries.insert(
            key(id),
            Entry {
                value,
                expires,
                order,
            },
        );
    }

    /// Removes and returns the live entry `id` (a single-use lookup).
    pub(crate) fn take(&self, id: &str) -> Option<V> {
        if id.is_empty() || id.len() > MAX_ID_BYTES {
            return None;
        }
        let entry = self.lock().entries.remove(&key(id))?;
        (entry.expires > Instant::now()).then_some(entry.value)
    }

    /// Removes `id`, live or not.
    pub(crate) fn remove(&self, id: &str) {
        if id.len() <= MAX_ID_BYTES {
            self.lock().entries.remove(&key(id));
        }
    }

    /// How many entries are held, expired ones included until the next insert.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().entries.len()
    }
}

impl<V: Clone> ExpiringMap<V> {
    /// A copy of the live entry `id`; an expired one is dropped.
    pub(crate) fn get(&self, id: &str) -> Option<V> {
        if id.is_empty() || id.len() > MAX_ID_BYTES {
            return None;
        }
        let k = key(id);
        let mut inner = self.lock();
        match inner.entries.get(&k) {
            Some(e) if e.expires > Instant::now() => Some(e.value.clone()),
            Some(_) => {
                inner.entries.remove(&k);
                None
            }
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn entries_expire_are_single_use_when_taken_and_the_oldest_goes_first() {
        let map = ExpiringMap::new(2);
        let later = Instant::now() + Duration::from_secs(60);
        map.insert("a", 1, later);
        map.insert("b", 2, later);
        assert_eq!(map.get("a"), Some(1));
        map.insert("c", 3, later);
        assert_eq!(map.len(), 2);
        assert_eq!(map.get("a"), None, "the oldest was evicted");
        assert_eq!(map.take("b"), Some(2));
        assert_eq!(map.take("b"), None, "taken once");
        map.insert("gone", 4, Instant::now());
        assert_eq!(map.get("gone"), None);
        assert_eq!(map.take("gone"), None);
        map.remove("c");
        assert_eq!(map.get("c"), None);
    }

    #[test]
    fn empty_and_oversized_ids_are_never_found() {
        let map = ExpiringMap::new(4);
        let later = Instant::now() + Duration::from_secs(60);
        let long = "x".repeat(MAX_ID_BYTES + 1);
        map.insert(&long, 1, later);
        map.insert("", 2, later);
        assert_eq!(map.get(&long), None);
        assert_eq!(map.take(&long), None);
        assert_eq!(map.get(""), None);
    }
}
