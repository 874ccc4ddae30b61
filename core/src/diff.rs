//! The diff a person approves: for each field, the value it holds now and the value Steward will
//! write. The approval binds to [`Diff::hash`], which covers both, so a diff computed against
//! other old values is a different diff.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One field of the diff.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffEntry {
    pub field: String,
    pub old: String,
    pub new: String,
}

/// The exact change to write to one record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diff {
    pub table: String,
    pub sys_id: String,
    /// `sys_mod_count` of the record the old values were read from.
    pub record_version: String,
    pub entries: Vec<DiffEntry>,
}

impl Diff {
    /// SHA-256 over a length-prefixed encoding of every part, hex encoded. Length prefixes make
    /// the encoding unambiguous whatever the values contain.
    pub fn hash(&self) -> String {
        let mut h = Sha256::new();
        let mut put = |s: &str| {
            h.update((s.len() as u64).to_be_bytes());
            h.update(s.as_bytes());
        };
        put("steward-diff-v1");
        put(&self.table);
        put(&self.sys_id);
        put(&self.record_version);
        for e in &self.entries {
            put(&e.field);
            put(&e.old);
            put(&e.new);
        }
        hex::encode(h.finalize())
    }

    /// The fields and new values to send in the `PATCH`.
    pub fn patch_body(&self) -> serde_json::Map<String, serde_json::Value> {
        self.entries
            .iter()
            .map(|e| (e.field.clone(), serde_json::Value::String(e.new.clone())))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn diff(entries: Vec<(String, String, String)>) -> Diff {
        Diff {
            table: "incident".into(),
            sys_id: "a".repeat(32),
            record_version: "3".into(),
            entries: entries
                .into_iter()
                .map(|(field, old, new)| DiffEntry { field, old, new })
                .collect(),
        }
    }

    #[test]
    fn hash_covers_old_values_and_version() {
        let a = diff(vec![("urgency".into(), "3".into(), "1".into())]);
        let mut b = a.clone();
        b.entries[0].old = "2".into();
        let mut c = a.clone();
        c.record_version = "4".into();
        assert_ne!(a.hash(), b.hash());
        assert_ne!(a.hash(), c.hash());
        let same = a.clone();
        assert_eq!(a.hash(), same.hash());
    }

    proptest! {
        #[test]
        fn shifting_bytes_between_parts_changes_the_hash(
            x in "[a-z]{0,6}", y in "[a-z]{0,6}", z in "[a-z]{1,6}"
        ) {
            let a = diff(vec![(x.clone(), format!("{y}{z}"), String::new())]);
            let b = diff(vec![(format!("{x}{y}"), z, String::new())]);
            prop_assume!(!y.is_empty());
            prop_assert_ne!(a.hash(), b.hash());
        }
    }
}
