//! An evidence bundle: a directory an auditor verifies offline.
//!
//! | file | content |
//! | --- | --- |
//! | `audit.jsonl` | the range's audit entries, one JSON object a line, then the entries after it up to the checkpoint it is linked to |
//! | `runs.jsonl` | each run named by an entry of the range, as stored at export time |
//! | `approvals.jsonl` | each approval of those runs |
//! | `checkpoints.json` | the signed checkpoints with seq from the range's first entry to the linking checkpoint, with witness countersignatures |
//! | `keys.json` | Steward's evidence public keys and the witness keys seen |
//! | `manifest.json` | the signed range statement, the counts, and the SHA-256 of every other file |
//!
//! The server streams the lines of an export ([`ExportLine`], one JSON object a line);
//! [`BundleWriter`] sorts them into files as they come, never holding the entries in memory.
//! [`verify_bundle`] needs only the directory (and, if given, pinned witness keys).
//!
//! What verification proves: the range statement and every checkpoint were signed by a key in
//! `keys.json`, the entries form one unbroken chain from the range's `prev_hash` to a signed
//! (and, if required, witnessed) checkpoint, and the runs and approvals agree with the entries.
//! Once retention pruned a prefix of the chain (`retention.rs`), a range starts no earlier than
//! the first entry kept and its `prev_hash` is the prune anchor's hash, so the same check holds.
//! What it cannot prove alone: that `keys.json` holds Steward's real keys. Compare them with
//! `GET /v1/evidence/keys` or a copy kept from earlier, and pin the witness key given out of
//! band (`--witness-key`), since a witness key read from the bundle vouches only for itself.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File};
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use steward_core::TenantId;

use super::{EvidenceKey, ExportRange, SignedCheckpoint, decode_32, key_id_for, verify_signature};
use crate::audit::{AuditEntry, verify_entries};

/// The format name in every manifest.
pub const FORMAT: &str = "steward-evidence-v1";
pub const AUDIT_FILE: &str = "audit.jsonl";
pub const RUNS_FILE: &str = "runs.jsonl";
pub const APPROVALS_FILE: &str = "approvals.jsonl";
pub const CHECKPOINTS_FILE: &str = "checkpoints.json";
pub const KEYS_FILE: &str = "keys.json";
pub const MANIFEST_FILE: &str = "manifest.json";
/// The files the manifest lists, in the order verification reads them.
pub const FILES: [&str; 5] = [
    KEYS_FILE,
    CHECKPOINTS_FILE,
    AUDIT_FILE,
    RUNS_FILE,
    APPROVALS_FILE,
];
/// The longest line read from a `.jsonl` file (an audit body is at most 1 MiB of JSON).
pub const MAX_LINE_BYTES: usize = 4 * 1024 * 1024;
/// The largest `manifest.json`, `keys.json` or `checkpoints.json` read.
pub const MAX_JSON_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// One line of the server's export stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ExportLine {
    /// First: the signed range statement.
    Range { range: ExportRange },
    /// An audit entry, in seq order.
    Audit { entry: AuditEntry },
    /// A run (as the store lists it).
    Run { run: serde_json::Value },
    /// An approval (as the store lists it).
    Approval { approval: serde_json::Value },
    /// A signed checkpoint, in seq order.
    Checkpoint { checkpoint: SignedCheckpoint },
    /// A Steward evidence public key.
    Key { key: EvidenceKey },
}

/// A witness public key as listed in `keys.json`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessKey {
    pub witness_key_id: String,
    pub public_key: String,
}

/// `keys.json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysFile {
    pub checkpoint_keys: Vec<EvidenceKey>,
    pub witness_keys: Vec<WitnessKey>,
}

/// How many items each file holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Counts {
    /// Lines of `audit.jsonl` (the range and its link).
    pub audit: u64,
    pub runs: u64,
    pub approvals: u64,
    pub checkpoints: u64,
}

/// `manifest.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    pub tenant: TenantId,
    /// The server's signed statement of the range.
    pub range: ExportRange,
    pub counts: Counts,
    /// SHA-256 (hex) of each file of [`FILES`].
    pub files: BTreeMap<String, String>,
}

/// The first item of a bundle (or of an export stream) that is wrong, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{item}: {reason}")]
pub struct BundleError {
    /// The file, line or record: `audit.jsonl line 7 (seq 42)`.
    pub item: String,
    pub reason: String,
}

fn bad(item: impl Into<String>, reason: impl Into<String>) -> BundleError {
    BundleError {
        item: item.into(),
        reason: reason.into(),
    }
}

fn io_err(item: &str, e: std::io::Error) -> BundleError {
    bad(item, e.to_string())
}

/// A writer that hashes what passes through.
struct HashedFile {
    name: &'static str,
    out: BufWriter<File>,
    hash: Sha256,
    lines: u64,
}

impl HashedFile {
    fn create(dir: &Path, name: &'static str) -> Result<Self, BundleError> {
        let file = File::create_new(dir.join(name)).map_err(|e| io_err(name, e))?;
        Ok(Self {
            name,
            out: BufWriter::new(file),
            hash: Sha256::new(),
            lines: 0,
        })
    }

    fn write_all(&mut self, bytes: &[u8]) -> Result<(), BundleError> {
        self.hash.update(bytes);
        self.out.write_all(bytes).map_err(|e| io_err(self.name, e))
    }

    fn line(&mut self, value: &impl Serialize) -> Result<(), BundleError> {
        let mut text = serde_json::to_vec(value).map_err(|e| bad(self.name, e.to_string()))?;
        text.push(b'\n');
        self.lines += 1;
        self.write_all(&text)
    }

    fn finish(mut self) -> Result<String, BundleError> {
        self.out.flush().map_err(|e| io_err(self.name, e))?;
        self.out
            .get_ref()
            .sync_all()
            .map_err(|e| io_err(self.name, e))?;
        Ok(hex::encode(self.hash.finalize()))
    }
}

/// Sorts an export stream into a bundle directory as it arrives. The range line must come
/// first; entries, runs and approvals go straight to their files, checkpoints and keys (few)
/// are kept until [`BundleWriter::finish`].
pub struct BundleWriter {
    dir: PathBuf,
    range: Option<ExportRange>,
    audit: HashedFile,
    runs: HashedFile,
    approvals: HashedFile,
    checkpoints: Vec<SignedCheckpoint>,
    keys: Vec<EvidenceKey>,
    lines: u64,
}

impl BundleWriter {
    /// Creates `dir` (which must not exist, or be empty) and the bundle's files in it.
    pub fn create(dir: &Path) -> Result<Self, BundleError> {
        let item = dir.display().to_string();
        if dir.exists() {
            let mut entries = fs::read_dir(dir).map_err(|e| io_err(&item, e))?;
            if entries.next().is_some() {
                return Err(bad(item, "the output directory exists and is not empty"));
            }
        } else {
            fs::create_dir_all(dir).map_err(|e| io_err(&item, e))?;
        }
        Ok(Self {
            dir: dir.to_owned(),
            range: None,
            audit: HashedFile::create(dir, AUDIT_FILE)?,
            runs: HashedFile::create(dir, RUNS_FILE)?,
            approvals: HashedFile::create(dir, APPROVALS_FILE)?,
            checkpoints: Vec::new(),
            keys: Vec::new(),
            lines: 0,
        })
    }

    /// Lines taken so far.
    pub fn lines(&self) -> u64 {
        self.lines
    }

    /// Entries written so far.
    pub fn entries(&self) -> u64 {
        self.audit.lines
    }

    /// Takes one line of the export stream (JSON text, without its newline).
    pub fn push_line(&mut self, line: &[u8]) -> Result<(), BundleError> {
        let item = format!("export line {}", self.lines + 1);
        if line.len() > MAX_LINE_BYTES {
            return Err(bad(item, format!("longer than {MAX_LINE_BYTES} bytes")));
        }
        let parsed: ExportLine =
            serde_json::from_slice(line).map_err(|e| bad(item, e.to_string()))?;
        self.push(parsed)
    }

    /// Takes one parsed line of the export stream.
    pub fn push(&mut self, line: ExportLine) -> Result<(), BundleError> {
        self.lines += 1;
        let item = format!("export line {}", self.lines);
        match (line, &self.range) {
            (ExportLine::Range { range }, None) => self.range = Some(range),
            (ExportLine::Range { .. }, Some(_)) => return Err(bad(item, "a second range line")),
            (_, None) => return Err(bad(item, "the stream must start with its range line")),
            (ExportLine::Audit { entry }, Some(_)) => self.audit.line(&entry)?,
            (ExportLine::Run { run }, Some(_)) => self.runs.line(&run)?,
            (ExportLine::Approval { approval }, Some(_)) => self.approvals.line(&approval)?,
            (ExportLine::Checkpoint { checkpoint }, Some(_)) => self.checkpoints.push(checkpoint),
            (ExportLine::Key { key }, Some(_)) => self.keys.push(key),
        }
        Ok(())
    }

    /// Writes `checkpoints.json`, `keys.json` and `manifest.json`; returns the manifest.
    pub fn finish(self) -> Result<Manifest, BundleError> {
        let range = self
            .range
            .ok_or_else(|| bad("export stream", "it ended before its range line"))?;
        let counts = Counts {
            audit: self.audit.lines,
            runs: self.runs.lines,
            approvals: self.approvals.lines,
            checkpoints: self.checkpoints.len() as u64,
        };
        let mut files = BTreeMap::new();
        files.insert(AUDIT_FILE.to_owned(), self.audit.finish()?);
        files.insert(RUNS_FILE.to_owned(), self.runs.finish()?);
        files.insert(APPROVALS_FILE.to_owned(), self.approvals.finish()?);
        let witness_keys: BTreeSet<WitnessKey> = self
            .checkpoints
            .iter()
            .filter_map(|c| c.witness.as_ref())
            .map(|w| WitnessKey {
                witness_key_id: w.witness_key_id.clone(),
                public_key: w.witness_public_key.clone(),
            })
            .collect();
        let keys = KeysFile {
            checkpoint_keys: self.keys,
            witness_keys: witness_keys.into_iter().collect(),
        };
        for (name, value) in [
            (CHECKPOINTS_FILE, serde_json::to_value(&self.checkpoints)),
            (KEYS_FILE, serde_json::to_value(&keys)),
        ] {
            let value = value.map_err(|e| bad(name, e.to_string()))?;
            files.insert(name.to_owned(), write_json(&self.dir, name, &value)?);
        }
        let manifest = Manifest {
            format: FORMAT.into(),
            tenant: range.tenant.clone(),
            range,
            counts,
            files,
        };
        let value =
            serde_json::to_value(&manifest).map_err(|e| bad(MANIFEST_FILE, e.to_string()))?;
        write_json(&self.dir, MANIFEST_FILE, &value)?;
        Ok(manifest)
    }
}

/// Writes pretty JSON to a new file; returns its SHA-256.
fn write_json(dir: &Path, name: &str, value: &serde_json::Value) -> Result<String, BundleError> {
    let mut text = serde_json::to_vec_pretty(value).map_err(|e| bad(name, e.to_string()))?;
    text.push(b'\n');
    let mut file = File::create_new(dir.join(name)).map_err(|e| io_err(name, e))?;
    file.write_all(&text).map_err(|e| io_err(name, e))?;
    file.sync_all().map_err(|e| io_err(name, e))?;
    Ok(hex::encode(Sha256::digest(&text)))
}

/// What verification should insist on beyond the bundle itself.
#[derive(Clone, Debug, Default)]
pub struct VerifyOptions {
    /// Witness public keys (hex) given out of band. When any is given, the linking checkpoint
    /// must be countersigned by one of them, and witness keys from `keys.json` count for
    /// nothing.
    pub witness_keys: Vec<String>,
}

/// What a bundle proved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BundleReport {
    pub tenant: TenantId,
    pub from: i64,
    pub to: i64,
    /// Entries of the range.
    pub entries: u64,
    /// Entries after the range, present only to link it to its checkpoint.
    pub link_entries: u64,
    /// Entries whose body is stored sealed and bound: the chain covers the stored text and the
    /// digest in it, which their clear `body` (opened at export) was checked against.
    pub bound_entries: u64,
    /// Entries whose body was sealed before bodies were bound: the chain covers the sealed
    /// text, so their clear `body` is shown to the reader but not proved by the hashes.
    pub sealed_entries: u64,
    pub runs: u64,
    pub approvals: u64,
    pub checkpoints: u64,
    /// The checkpoint the range is linked to; None for an empty range.
    pub linked_checkpoint: Option<u64>,
    /// The witness key id that countersigned the linking checkpoint, if one did.
    pub witnessed_by: Option<String>,
    /// Whether that witness key was pinned by the caller (rather than read from the bundle).
    pub witness_pinned: bool,
}

/// Verifies a bundle directory without any database or server: every file's SHA-256 against
/// the manifest; the range statement and every checkpoint's signature against `keys.json`, and
/// every witness countersignature (against the pinned keys when given); every entry's hash and
/// link from the range's `prev_hash`, the entries' times within the range, and every
/// checkpoint's head against the entry at its seq; that the range's last entry is linked to a
/// signed checkpoint; and that each run and approval is one the entries name, with the state,
/// ids and decided diff hash they record. `progress` is called with the entries checked so far,
/// every 100 000. Fails at the first bad item.
pub fn verify_bundle(
    dir: &Path,
    options: &VerifyOptions,
    mut progress: impl FnMut(u64),
) -> Result<BundleReport, BundleError> {
    let manifest: Manifest = read_json(dir, MANIFEST_FILE)?;
    if manifest.format != FORMAT {
        return Err(bad(MANIFEST_FILE, format!("format is not `{FORMAT}`")));
    }
    let range = &manifest.range;
    if range.tenant != manifest.tenant {
        return Err(bad(
            MANIFEST_FILE,
            "the range names another tenant than the manifest",
        ));
    }
    for name in FILES {
        let want = manifest
            .files
            .get(name)
            .ok_or_else(|| bad(MANIFEST_FILE, format!("lists no hash for {name}")))?;
        let got = hash_file(dir, name)?;
        if &got != want {
            return Err(bad(name, "its SHA-256 does not match the manifest"));
        }
    }
    if manifest.files.len() != FILES.len() {
        return Err(bad(
            MANIFEST_FILE,
            "lists a file that is not part of the format",
        ));
    }

    let keys: KeysFile = read_json(dir, KEYS_FILE)?;
    let mut signing = HashMap::new();
    for (i, key) in keys.checkpoint_keys.iter().enumerate() {
        let item = format!("{KEYS_FILE} checkpoint key {}", i + 1);
        let public = decode_32(&key.public_key)
            .ok_or_else(|| bad(&item, "public key is not 64 hex digits"))?;
        if key.algorithm != super::ALGORITHM || key_id_for("ek-", &public) != key.key_id {
            return Err(bad(
                item,
                "key id or algorithm does not match the public key",
            ));
        }
        signing.insert(key.key_id.clone(), key.public_key.clone());
    }
    let signer_of = |item: &str, key_id: &str| {
        signing.get(key_id).ok_or_else(|| {
            bad(
                item,
                format!("signed by key {key_id:?}, which keys.json does not hold"),
            )
        })
    };
    let public = signer_of("manifest.json range", &range.key_id)?;
    verify_signature(public, &range.signed_bytes(), &range.signature)
        .map_err(|e| bad("manifest.json range", e))?;

    let pinned: BTreeSet<String> = options
        .witness_keys
        .iter()
        .map(|k| k.to_ascii_lowercase())
        .collect();
    let known_witness: BTreeSet<String> = if pinned.is_empty() {
        keys.witness_keys
            .iter()
            .map(|k| k.public_key.clone())
            .collect()
    } else {
        pinned.clone()
    };

    let checkpoints: Vec<SignedCheckpoint> = read_json(dir, CHECKPOINTS_FILE)?;
    if checkpoints.len() as u64 != manifest.counts.checkpoints {
        return Err(bad(
            CHECKPOINTS_FILE,
            "holds another number of checkpoints than the manifest says",
        ));
    }
    let mut heads: HashMap<u64, (String, usize)> = HashMap::new();
    let mut prev_seq = None;
    for (i, cp) in checkpoints.iter().enumerate() {
        let item = format!("{CHECKPOINTS_FILE} checkpoint {} (seq {})", i + 1, cp.seq);
        if cp.tenant != manifest.tenant {
            return Err(bad(item, format!("belongs to tenant {}", cp.tenant)));
        }
        if prev_seq.is_some_and(|p| cp.seq <= p) {
            return Err(bad(item, "checkpoints are not in increasing seq order"));
        }
        prev_seq = Some(cp.seq);
        if cp.seq < range.first_seq || cp.seq > range.linked_through {
            return Err(bad(item, "lies outside the bundle's entries"));
        }
        verify_signature(
            signer_of(&item, &cp.key_id)?,
            &cp.signed_bytes(),
            &cp.signature,
        )
        .map_err(|e| bad(&item, e))?;
        if let Some(w) = &cp.witness {
            cp.check_countersignature(w).map_err(|e| bad(&item, e))?;
            if !known_witness.contains(&w.witness_public_key) {
                let reason = if pinned.is_empty() {
                    "its witness key is not listed in keys.json"
                } else {
                    "countersigned by a witness key that was not pinned"
                };
                return Err(bad(item, reason));
            }
        }
        heads.insert(cp.seq, (cp.head_hash.clone(), i));
    }

    // The chain.
    let expected_lines = if range.is_empty() {
        0
    } else {
        range
            .linked_through
            .checked_sub(range.first_seq)
            .map(|n| n + 1)
            .ok_or_else(|| {
                bad(
                    "manifest.json range",
                    "its linking checkpoint lies before its first entry",
                )
            })?
    };
    if range.linked_through < range.last_seq || range.first_seq == 0 {
        return Err(bad("manifest.json range", "its seqs are inconsistent"));
    }
    if manifest.counts.audit != expected_lines {
        return Err(bad(
            MANIFEST_FILE,
            "the audit count does not match the range",
        ));
    }
    let mut head = range.prev_hash.clone();
    let mut next_seq = range.first_seq;
    let mut covered_runs = BTreeSet::new();
    let mut finished: HashMap<String, String> = HashMap::new();
    let mut decided: HashMap<String, (String, String, String)> = HashMap::new();
    let mut count = 0u64;
    let mut sealed = 0u64;
    let mut bound = 0u64;
    for_each_line(dir, AUDIT_FILE, |n, text| {
        let item = format!("{AUDIT_FILE} line {n}");
        let entry: AuditEntry =
            serde_json::from_slice(text).map_err(|e| bad(&item, e.to_string()))?;
        let item = format!("{item} (seq {})", entry.seq);
        if entry.tenant != manifest.tenant {
            return Err(bad(item, format!("belongs to tenant {}", entry.tenant)));
        }
        if entry.seq != next_seq {
            return Err(bad(
                item,
                format!("expected seq {next_seq}; an entry is missing or moved"),
            ));
        }
        head = verify_entries(std::iter::once(&entry), &head).map_err(|b| bad(&item, b.reason))?;
        if entry.seq <= range.last_seq {
            // Times need not rise with seq (clocks step back), so only the ends are bound.
            if (entry.seq == range.first_seq && entry.at < range.from)
                || (entry.seq == range.last_seq && entry.at >= range.to)
            {
                return Err(bad(item, "its time lies outside the range"));
            }
            note_entry(&entry, &mut covered_runs, &mut finished, &mut decided);
        }
        if let Some((hash, _)) = heads.get(&entry.seq)
            && *hash != entry.hash
        {
            return Err(bad(
                item,
                "the signed checkpoint at this seq names another head hash: the log was rewritten",
            ));
        }
        next_seq += 1;
        count += 1;
        if let Some(stored) = &entry.sealed {
            match crate::audit::bound_body_matches(stored, &entry.body) {
                Some(true) => bound += 1,
                Some(false) => {
                    return Err(bad(
                        item,
                        "its body does not match the digest its stored text commits to",
                    ));
                }
                None => sealed += 1,
            }
        }
        if count.is_multiple_of(100_000) {
            progress(count);
        }
        Ok(())
    })?;
    if count != expected_lines {
        return Err(bad(
            AUDIT_FILE,
            format!("holds {count} entries; the range needs {expected_lines}"),
        ));
    }
    let linked = if range.is_empty() {
        None
    } else {
        let (_, index) = heads.get(&range.linked_through).ok_or_else(|| {
            bad(
                CHECKPOINTS_FILE,
                format!(
                    "holds no checkpoint at seq {}, the range's link",
                    range.linked_through
                ),
            )
        })?;
        Some(&checkpoints[*index])
    };
    let witnessed_by = linked
        .and_then(|cp| cp.witness.as_ref())
        .map(|w| w.witness_key_id.clone());
    if !pinned.is_empty() && witnessed_by.is_none() && linked.is_some() {
        return Err(bad(
            CHECKPOINTS_FILE,
            format!(
                "the linking checkpoint (seq {}) has no countersignature by a pinned witness",
                range.linked_through
            ),
        ));
    }

    // Runs and approvals.
    let mut runs_seen = BTreeSet::new();
    let runs = for_each_line(dir, RUNS_FILE, |n, text| {
        let run: serde_json::Value = serde_json::from_slice(text)
            .map_err(|e| bad(format!("{RUNS_FILE} line {n}"), e.to_string()))?;
        let id = str_field(&run, "id")
            .ok_or_else(|| bad(format!("{RUNS_FILE} line {n}"), "has no id"))?;
        let item = format!("{RUNS_FILE} line {n} (run {id})");
        if !covered_runs.contains(id) {
            return Err(bad(item, "no entry of the range names this run"));
        }
        if !runs_seen.insert(id.to_owned()) {
            return Err(bad(item, "listed twice"));
        }
        if str_field(&run, "tenant") != Some(manifest.tenant.as_str()) {
            return Err(bad(item, "belongs to another tenant"));
        }
        if let Some(state) = finished.get(id)
            && str_field(&run, "state") != Some(state.as_str())
        {
            return Err(bad(
                item,
                format!("its state is not `{state}`, the state its run.finished entry records"),
            ));
        }
        Ok(())
    })?;
    let mut approvals_seen = BTreeSet::new();
    let approvals = for_each_line(dir, APPROVALS_FILE, |n, text| {
        let a: serde_json::Value = serde_json::from_slice(text)
            .map_err(|e| bad(format!("{APPROVALS_FILE} line {n}"), e.to_string()))?;
        let id = str_field(&a, "id")
            .ok_or_else(|| bad(format!("{APPROVALS_FILE} line {n}"), "has no id"))?;
        let item = format!("{APPROVALS_FILE} line {n} (approval {id})");
        let run = str_field(&a, "run_id").unwrap_or_default();
        if !runs_seen.contains(run) {
            return Err(bad(item, "its run is not in runs.jsonl"));
        }
        if !approvals_seen.insert(id.to_owned()) {
            return Err(bad(item, "listed twice"));
        }
        if let Some((entry_run, verdict, diff)) = decided.get(id) {
            let status = match verdict.as_str() {
                "approve" => "approved",
                "reject" => "rejected",
                other => other,
            };
            if entry_run != run {
                return Err(bad(item, "its decision entry names another run"));
            }
            if str_field(&a, "status") != Some(status) {
                return Err(bad(
                    item,
                    format!("its status is not `{status}`, as its decision entry records"),
                ));
            }
            if str_field(&a, "diff_hash") != Some(diff.as_str()) {
                return Err(bad(
                    item,
                    "its diff hash is not the one its decision entry records",
                ));
            }
        }
        Ok(())
    })?;
    if let Some(missing) = decided.keys().find(|id| !approvals_seen.contains(*id)) {
        return Err(bad(
            APPROVALS_FILE,
            format!("lacks approval {missing}, decided by an entry of the range"),
        ));
    }
    if runs != manifest.counts.runs || approvals != manifest.counts.approvals {
        return Err(bad(
            MANIFEST_FILE,
            "the run or approval count does not match the files",
        ));
    }

    Ok(BundleReport {
        tenant: manifest.tenant.clone(),
        from: range.from,
        to: range.to,
        entries: if range.is_empty() {
            0
        } else {
            range.last_seq - range.first_seq + 1
        },
        bound_entries: bound,
        sealed_entries: sealed,
        link_entries: range.linked_through - range.last_seq.max(range.first_seq - 1),
        runs,
        approvals,
        checkpoints: checkpoints.len() as u64,
        linked_checkpoint: linked.map(|c| c.seq),
        witnessed_by,
        witness_pinned: !pinned.is_empty(),
    })
}

/// Remembers what an entry of the range says about runs and approvals.
fn note_entry(
    entry: &AuditEntry,
    runs: &mut BTreeSet<String>,
    finished: &mut HashMap<String, String>,
    decided: &mut HashMap<String, (String, String, String)>,
) {
    let Some(run) = entry.run_id.map(|r| r.to_string()) else {
        return;
    };
    if (entry.kind == "run.finished" || entry.kind == "run.approval_decided")
        && let Ok(body) = serde_json::from_str::<serde_json::Value>(&entry.body)
    {
        if entry.kind == "run.finished" {
            if let Some(state) = str_field(&body, "state") {
                finished.insert(run.clone(), state.to_owned());
            }
        } else if let (Some(id), Some(verdict), Some(diff)) = (
            str_field(&body, "approval_id"),
            str_field(&body, "verdict"),
            str_field(&body, "diff_sha256"),
        ) {
            decided.insert(
                id.to_owned(),
                (run.clone(), verdict.to_owned(), diff.to_owned()),
            );
        }
    }
    runs.insert(run);
}

fn str_field<'a>(v: &'a serde_json::Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(|v| v.as_str())
}

fn read_json<T: serde::de::DeserializeOwned>(dir: &Path, name: &str) -> Result<T, BundleError> {
    let file = File::open(dir.join(name)).map_err(|e| io_err(name, e))?;
    let mut text = Vec::new();
    file.take(MAX_JSON_FILE_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(|e| io_err(name, e))?;
    if text.len() as u64 > MAX_JSON_FILE_BYTES {
        return Err(bad(
            name,
            format!("larger than {MAX_JSON_FILE_BYTES} bytes"),
        ));
    }
    serde_json::from_slice(&text).map_err(|e| bad(name, e.to_string()))
}

fn hash_file(dir: &Path, name: &str) -> Result<String, BundleError> {
    let mut file = File::open(dir.join(name)).map_err(|e| io_err(name, e))?;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(|e| io_err(name, e))?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
    }
    Ok(hex::encode(hash.finalize()))
}

/// Calls `f` with each line (numbered from 1, without its newline); returns the line count.
/// Every line, the last included, must end with a newline and hold at most
/// [`MAX_LINE_BYTES`].
fn for_each_line(
    dir: &Path,
    name: &str,
    mut f: impl FnMut(u64, &[u8]) -> Result<(), BundleError>,
) -> Result<u64, BundleError> {
    let file = File::open(dir.join(name)).map_err(|e| io_err(name, e))?;
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let mut line = Vec::new();
    let mut n = 0u64;
    loop {
        line.clear();
        let read = (&mut reader)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(|e| io_err(name, e))?;
        if read == 0 {
            return Ok(n);
        }
        n += 1;
        if line.last() != Some(&b'\n') {
            let reason = if line.len() > MAX_LINE_BYTES {
                format!("longer than {MAX_LINE_BYTES} bytes")
            } else {
                "the file does not end with a newline".to_owned()
            };
            return Err(bad(format!("{name} line {n}"), reason));
        }
        line.pop();
        f(n, &line)?;
    }
}
