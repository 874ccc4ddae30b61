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

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use steward_core::{RunId, TenantId};

use super::{EvidenceKey, ExportRange, SignedCheckpoint, decode_32, key_id_for, verify_signature};
use crate::audit::{AuditEntry, HashInput, verify_link};

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
/// The read buffer of verification: files are hashed and lines read this much at a time.
const READ_BUFFER_BYTES: usize = 1 << 18;

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
        let item = || format!("export line {}", self.lines + 1);
        if line.len() > MAX_LINE_BYTES {
            return Err(bad(item(), format!("longer than {MAX_LINE_BYTES} bytes")));
        }
        let parsed: ExportLine =
            serde_json::from_slice(line).map_err(|e| bad(item(), e.to_string()))?;
        self.push(parsed)
    }

    /// Takes one parsed line of the export stream.
    pub fn push(&mut self, line: ExportLine) -> Result<(), BundleError> {
        self.lines += 1;
        let item = || format!("export line {}", self.lines);
        match (line, &self.range) {
            (ExportLine::Range { range }, None) => self.range = Some(range),
            (ExportLine::Range { .. }, Some(_)) => {
                return Err(bad(item(), "a second range line"));
            }
            (_, None) => return Err(bad(item(), "the stream must start with its range line")),
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
    let mut noted = Noted::default();
    // The first checkpoint (in seq order) not before the next entry.
    let mut next_checkpoint = 0usize;
    let mut count = 0u64;
    let mut sealed = 0u64;
    let mut bound = 0u64;
    let mut fast = FastEntries::default();
    for_each_line(dir, AUDIT_FILE, |n, text| {
        let parsed;
        let entry = match fast.parse(text, manifest.tenant.as_str()) {
            Some(entry) => entry,
            None => {
                parsed = serde_json::from_slice::<EntryText<'_>>(text)
                    .map_err(|e| bad(format!("{AUDIT_FILE} line {n}"), e.to_string()))?;
                parsed.view()
            }
        };
        let item = || format!("{AUDIT_FILE} line {n} (seq {})", entry.seq);
        if entry.tenant != manifest.tenant.as_str() {
            return Err(bad(item(), format!("belongs to tenant {}", entry.tenant)));
        }
        if entry.seq != next_seq {
            return Err(bad(
                item(),
                format!("expected seq {next_seq}; an entry is missing or moved"),
            ));
        }
        verify_link(&entry.hash_input(), entry.hash, &head).map_err(|b| bad(item(), b.reason))?;
        head.clear();
        head.push_str(entry.hash);
        if entry.seq <= range.last_seq {
            // Times need not rise with seq (clocks step back), so only the ends are bound.
            if (entry.seq == range.first_seq && entry.at < range.from)
                || (entry.seq == range.last_seq && entry.at >= range.to)
            {
                return Err(bad(item(), "its time lies outside the range"));
            }
            noted.note(&entry);
        }
        // Checkpoints rise strictly by seq, and so do entries, one at a time.
        while checkpoints
            .get(next_checkpoint)
            .is_some_and(|cp| cp.seq < entry.seq)
        {
            next_checkpoint += 1;
        }
        if let Some(cp) = checkpoints.get(next_checkpoint)
            && cp.seq == entry.seq
            && cp.head_hash != entry.hash
        {
            return Err(bad(
                item(),
                "the signed checkpoint at this seq names another head hash: the log was rewritten",
            ));
        }
        next_seq += 1;
        count += 1;
        if let Some(stored) = entry.sealed {
            match crate::audit::bound_body_matches(stored, entry.body) {
                Some(true) => bound += 1,
                Some(false) => {
                    return Err(bad(
                        item(),
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
    let Noted {
        runs: noted_runs,
        finished,
        decided,
        ..
    } = noted;
    let covered_runs: BTreeSet<String> = noted_runs.iter().map(RunId::to_string).collect();
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

/// An audit entry as `audit.jsonl` holds it, its text borrowed from the line where it has no
/// escapes. It accepts and refuses exactly what [`AuditEntry`]'s `Deserialize` does, with the
/// same messages (the same field types, order and attributes; `tenant` checked as
/// [`TenantId`] checks it).
#[derive(Deserialize)]
#[serde(rename = "AuditEntry")]
struct EntryText<'a> {
    #[serde(borrow)]
    tenant: Tenant<'a>,
    seq: u64,
    at: i64,
    #[serde(borrow)]
    kind: Text<'a>,
    run_id: Option<RunId>,
    #[serde(borrow)]
    actor: Text<'a>,
    #[serde(borrow)]
    body: Text<'a>,
    #[serde(default, borrow)]
    sealed: Option<Text<'a>>,
    #[serde(borrow)]
    prev_hash: Text<'a>,
    #[serde(borrow)]
    hash: Text<'a>,
}

impl EntryText<'_> {
    fn view(&self) -> EntryView<'_> {
        EntryView {
            tenant: &self.tenant.0,
            seq: self.seq,
            at: self.at,
            kind: &self.kind.0,
            run_id: self.run_id,
            actor: &self.actor.0,
            body: &self.body.0,
            sealed: self.sealed.as_ref().map(|s| &*s.0),
            prev_hash: &self.prev_hash.0,
            hash: &self.hash.0,
        }
    }
}

/// The fields of an `audit.jsonl` line, however it was read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct EntryView<'a> {
    tenant: &'a str,
    seq: u64,
    at: i64,
    kind: &'a str,
    run_id: Option<RunId>,
    actor: &'a str,
    body: &'a str,
    sealed: Option<&'a str>,
    prev_hash: &'a str,
    hash: &'a str,
}

impl EntryView<'_> {
    fn hash_input(&self) -> HashInput<'_> {
        HashInput {
            tenant: self.tenant,
            seq: self.seq,
            at: self.at,
            kind: self.kind,
            run_id: self.run_id,
            actor: self.actor,
            stored_body: self.sealed.unwrap_or(self.body),
            prev_hash: self.prev_hash,
        }
    }
}

/// Reads an `audit.jsonl` line quickly when it is in the one layout [`BundleWriter`] writes
/// (an [`AuditEntry`] as `serde_json` serializes it: its fields in order, no spaces, integers
/// that fit, no `\u` escapes) and its tenant is the bundle's; None for anything else, which
/// [`EntryText`] then reads. Whatever it reads, `serde_json` reads to the same fields.
#[derive(Default)]
struct FastEntries {
    /// The text of strings with escapes, unescaped.
    scratch: String,
    /// The run id read last, as written and parsed.
    last_run: Option<(Vec<u8>, RunId)>,
}

/// Where a string read by [`FastEntries`] lies: in the line, or in its scratch text.
#[derive(Clone, Copy)]
enum Span {
    Line(usize, usize),
    Scratch(usize, usize),
}

impl FastEntries {
    fn parse<'a>(&'a mut self, line: &'a [u8], tenant: &str) -> Option<EntryView<'a>> {
        let line = std::str::from_utf8(line).ok()?;
        self.scratch.clear();
        let mut at = Fields {
            line,
            i: 0,
            scratch: &mut self.scratch,
        };
        at.literal("{\"tenant\":")?;
        let tenant_span = at.string()?;
        at.literal(",\"seq\":")?;
        let seq = at.natural(u64::MAX)?;
        at.literal(",\"at\":")?;
        let time = at.integer()?;
        at.literal(",\"kind\":")?;
        let kind = at.string()?;
        at.literal(",\"run_id\":")?;
        let run = if at.literal("null").is_some() {
            None
        } else {
            Some(at.string()?)
        };
        at.literal(",\"actor\":")?;
        let actor = at.string()?;
        at.literal(",\"body\":")?;
        let body = at.string()?;
        let sealed = match at.literal(",\"sealed\":") {
            Some(()) => Some(at.string()?),
            None => None,
        };
        at.literal(",\"prev_hash\":")?;
        let prev_hash = at.string()?;
        at.literal(",\"hash\":")?;
        let hash = at.string()?;
        at.literal("}")?;
        if at.i != line.len() {
            return None;
        }
        let scratch = self.scratch.as_str();
        let text = |span: Span| match span {
            Span::Line(a, b) => &line[a..b],
            Span::Scratch(a, b) => &scratch[a..b],
        };
        if text(tenant_span) != tenant {
            return None;
        }
        let run_id = match run.map(text) {
            None => None,
            Some(run) => match &self.last_run {
                Some((last, id)) if last.as_slice() == run.as_bytes() => Some(*id),
                _ => {
                    let id = RunId::parse(run).ok()?;
                    self.last_run = Some((run.as_bytes().to_vec(), id));
                    Some(id)
                }
            },
        };
        Some(EntryView {
            tenant: text(tenant_span),
            seq,
            at: time,
            kind: text(kind),
            run_id,
            actor: text(actor),
            body: text(body),
            sealed: sealed.map(text),
            prev_hash: text(prev_hash),
            hash: text(hash),
        })
    }
}

/// A cursor over a line being read by [`FastEntries`].
struct Fields<'a, 's> {
    line: &'a str,
    i: usize,
    scratch: &'s mut String,
}

impl Fields<'_, '_> {
    fn rest(&self) -> &[u8] {
        &self.line.as_bytes()[self.i..]
    }

    fn literal(&mut self, text: &str) -> Option<()> {
        self.rest().starts_with(text.as_bytes()).then(|| {
            self.i += text.len();
        })
    }

    /// A JSON string without `\u` escapes or control characters.
    fn string(&mut self) -> Option<Span> {
        self.literal("\"")?;
        let start = self.i;
        let end = start + find_string_stop(self.rest())?;
        if self.line.as_bytes()[end] == b'"' {
            self.i = end + 1;
            return Some(Span::Line(start, end));
        }
        // Escapes: the text goes to the scratch.
        let from = self.scratch.len();
        let mut plain = start;
        let mut i = end;
        loop {
            match self.line.as_bytes()[i] {
                b'"' => {
                    self.scratch.push_str(&self.line[plain..i]);
                    self.i = i + 1;
                    return Some(Span::Scratch(from, self.scratch.len()));
                }
                b'\\' => {
                    self.scratch.push_str(&self.line[plain..i]);
                    let escaped = match self.line.as_bytes().get(i + 1)? {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        _ => return None,
                    };
                    self.scratch.push(escaped);
                    plain = i + 2;
                    i = plain;
                }
                _ => return None,
            }
            i += find_string_stop(self.line.as_bytes().get(i..)?)?;
        }
    }

    /// A JSON integer without sign, fraction or exponent, at most `max`.
    fn natural(&mut self, max: u64) -> Option<u64> {
        let digits = self
            .rest()
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        let text = &self.rest()[..digits];
        if digits == 0 || (digits > 1 && text[0] == b'0') {
            return None;
        }
        let mut n = 0u64;
        for &d in text {
            n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        }
        self.i += digits;
        (n <= max).then_some(n)
    }

    /// A JSON integer that fits an `i64`, without fraction or exponent, and not `-0`.
    fn integer(&mut self) -> Option<i64> {
        if self.literal("-").is_some() {
            let n = self.natural(i64::MAX as u64)?;
            (n != 0).then(|| -(n as i64))
        } else {
            self.natural(i64::MAX as u64).map(|n| n as i64)
        }
    }
}

/// The first byte of `hay` that ends the plain run of a JSON string: its quote, an escape, or
/// a control character (which JSON refuses).
fn find_string_stop(hay: &[u8]) -> Option<usize> {
    const QUOTES: u64 = LOW_BITS * b'"' as u64;
    const BACKSLASHES: u64 = LOW_BITS * b'\\' as u64;
    const SPACES: u64 = LOW_BITS * b' ' as u64;
    find_first(
        hay,
        // Below 0x20: subtracting 0x20 sets the high bit of a byte whose high bit was clear.
        |w| {
            zero_bytes(w ^ QUOTES)
                | zero_bytes(w ^ BACKSLASHES)
                | (w.wrapping_sub(SPACES) & !w & HIGH_BITS)
        },
        |b| b == b'"' || b == b'\\' || b < 0x20,
    )
}

/// A JSON string, borrowed when it has no escapes; refused as a `String` is.
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Text<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }

            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }

            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v)))
            }

            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Text<'de>, E> {
                match std::str::from_utf8(v) {
                    Ok(s) => Ok(Text(Cow::Owned(s.to_owned()))),
                    Err(_) => Err(E::invalid_value(serde::de::Unexpected::Bytes(v), &self)),
                }
            }

            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Text<'de>, E> {
                match String::from_utf8(v) {
                    Ok(s) => Ok(Text(Cow::Owned(s))),
                    Err(e) => Err(E::invalid_value(
                        serde::de::Unexpected::Bytes(&e.into_bytes()),
                        &self,
                    )),
                }
            }
        }
        deserializer.deserialize_string(Visit)
    }
}

/// A tenant id's text, checked as [`TenantId`]'s `Deserialize` checks it.
struct Tenant<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Tenant<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let Text(text) = Text::deserialize(deserializer)?;
        TenantId::parse(&text).map_err(serde::de::Error::custom)?;
        Ok(Tenant(text))
    }
}

/// What the entries of the range say about runs and approvals.
#[derive(Default)]
struct Noted {
    /// The runs the entries name.
    runs: BTreeSet<RunId>,
    /// The run named last, already in `runs`.
    last_run: Option<RunId>,
    /// Run id to the state its `run.finished` entry records.
    finished: HashMap<String, String>,
    /// Approval id to the run, verdict and diff hash its decision entry records.
    decided: HashMap<String, (String, String, String)>,
}

impl Noted {
    /// Remembers what an entry of the range says about runs and approvals.
    fn note(&mut self, entry: &EntryView<'_>) {
        let Some(run_id) = entry.run_id else {
            return;
        };
        let kind = entry.kind;
        if (kind == "run.finished" || kind == "run.approval_decided")
            && let Ok(body) = serde_json::from_str::<serde_json::Value>(entry.body)
        {
            let run = run_id.to_string();
            if kind == "run.finished" {
                if let Some(state) = str_field(&body, "state") {
                    self.finished.insert(run, state.to_owned());
                }
            } else if let (Some(id), Some(verdict), Some(diff)) = (
                str_field(&body, "approval_id"),
                str_field(&body, "verdict"),
                str_field(&body, "diff_sha256"),
            ) {
                self.decided
                    .insert(id.to_owned(), (run, verdict.to_owned(), diff.to_owned()));
            }
        }
        if self.last_run != Some(run_id) {
            self.runs.insert(run_id);
            self.last_run = Some(run_id);
        }
    }
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
    let mut buf = vec![0u8; READ_BUFFER_BYTES];
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
/// [`MAX_LINE_BYTES`]. Lines are handed out of one read buffer, not copied.
fn for_each_line(
    dir: &Path,
    name: &str,
    mut f: impl FnMut(u64, &[u8]) -> Result<(), BundleError>,
) -> Result<u64, BundleError> {
    let mut file = File::open(dir.join(name)).map_err(|e| io_err(name, e))?;
    let mut buf = vec![0u8; READ_BUFFER_BYTES];
    // The bytes read and not yet handed out, and how many of them hold no newline.
    let (mut start, mut end, mut searched) = (0usize, 0usize, 0usize);
    let mut n = 0u64;
    let too_long = |n: u64| {
        bad(
            format!("{name} line {n}"),
            format!("longer than {MAX_LINE_BYTES} bytes"),
        )
    };
    loop {
        if let Some(i) = find_byte(b'\n', &buf[start + searched..end]) {
            let stop = start + searched + i;
            n += 1;
            if stop - start > MAX_LINE_BYTES {
                return Err(too_long(n));
            }
            f(n, &buf[start..stop])?;
            start = stop + 1;
            searched = 0;
            continue;
        }
        searched = end - start;
        if searched > MAX_LINE_BYTES {
            return Err(too_long(n + 1));
        }
        buf.copy_within(start..end, 0);
        (start, end) = (0, end - start);
        if end == buf.len() {
            buf.resize((buf.len() * 2).min(MAX_LINE_BYTES + 1), 0);
        }
        let read = loop {
            match file.read(&mut buf[end..]) {
                Ok(read) => break read,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err(name, e)),
            }
        };
        if read == 0 {
            if start == end {
                return Ok(n);
            }
            let reason = if end - start > MAX_LINE_BYTES {
                format!("longer than {MAX_LINE_BYTES} bytes")
            } else {
                "the file does not end with a newline".to_owned()
            };
            return Err(bad(format!("{name} line {}", n + 1), reason));
        }
        end += read;
    }
}

const LOW_BITS: u64 = 0x0101_0101_0101_0101;
const HIGH_BITS: u64 = 0x8080_8080_8080_8080;

/// The high bit of each byte of `word` that is zero (exact for the lowest such byte, which is
/// all [`first_flagged`] reads).
fn zero_bytes(word: u64) -> u64 {
    word.wrapping_sub(LOW_BITS) & !word & HIGH_BITS
}

/// The index of the lowest byte whose high bit `flags` sets, in a word read little-endian.
fn first_flagged(flags: u64) -> usize {
    (flags.trailing_zeros() / 8) as usize
}

/// The first index in `hay` at which `flag` (given 8 bytes as a little-endian word, it flags
/// the high bit of each byte that matches, exactly for the lowest one) or `matches` (given one
/// byte) holds; both must say the same of every byte. Eight bytes at a time.
fn find_first(
    hay: &[u8],
    flag: impl Fn(u64) -> u64,
    matches: impl Fn(u8) -> bool,
) -> Option<usize> {
    let mut words = hay.chunks_exact(8);
    let mut offset = 0;
    for chunk in &mut words {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let flags = flag(u64::from_le_bytes(word));
        if flags != 0 {
            return Some(offset + first_flagged(flags));
        }
        offset += 8;
    }
    words
        .remainder()
        .iter()
        .position(|&b| matches(b))
        .map(|i| offset + i)
}

/// The first index of `byte` in `hay`.
fn find_byte(byte: u8, hay: &[u8]) -> Option<usize> {
    let pattern = LOW_BITS * u64::from(byte);
    find_first(hay, |w| zero_bytes(w ^ pattern), |b| b == byte)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn entry(body: &str, sealed: Option<&str>) -> AuditEntry {
        AuditEntry {
            tenant: TenantId::parse("us-acme").unwrap(),
            seq: 42,
            at: 1_700_000_000_000,
            kind: "run.step".into(),
            run_id: Some(RunId::new()),
            actor: "steward".into(),
            body: body.into(),
            sealed: sealed.map(str::to_owned),
            prev_hash: "a".repeat(64),
            hash: "b".repeat(64),
        }
    }

    /// The fast reading of `line`, if it takes it, is what `serde_json` reads.
    fn agrees(line: &[u8]) -> Option<()> {
        let mut fast = FastEntries::default();
        let view = fast.parse(line, "us-acme")?;
        let slow = serde_json::from_slice::<EntryText<'_>>(line)
            .unwrap_or_else(|e| panic!("taken fast, refused by serde: {e}"));
        assert_eq!(view, slow.view());
        let full: AuditEntry = serde_json::from_slice(line).unwrap();
        assert_eq!(view.tenant, full.tenant.as_str());
        assert_eq!(
            (view.seq, view.at, view.run_id),
            (full.seq, full.at, full.run_id)
        );
        assert_eq!(
            (view.kind, view.actor, view.body),
            (&*full.kind, &*full.actor, &*full.body)
        );
        assert_eq!(view.sealed, full.sealed.as_deref());
        assert_eq!((view.prev_hash, view.hash), (&*full.prev_hash, &*full.hash));
        Some(())
    }

    #[test]
    fn the_writers_layout_is_read_fast_and_as_serde_reads_it() {
        for e in [
            entry(r#"{"i":1}"#, None),
            entry("plain", Some("bound:1:00:11:sealed")),
            entry(
                "tab\t nl\n quote\" backslash\\ slash/ \u{8}\u{c}\r é 😀",
                None,
            ),
            AuditEntry {
                run_id: None,
                at: -1,
                seq: u64::MAX,
                ..entry("", None)
            },
            AuditEntry {
                at: i64::MIN + 1,
                seq: 0,
                ..entry("x", None)
            },
        ] {
            let line = serde_json::to_vec(&e).unwrap();
            assert!(
                agrees(&line).is_some(),
                "{}",
                String::from_utf8_lossy(&line)
            );
        }
    }

    #[test]
    fn anything_else_is_left_to_serde() {
        let good = String::from_utf8(serde_json::to_vec(&entry("b", None)).unwrap()).unwrap();
        let edits: [(&str, &str); 14] = [
            ("\"us-acme\"", "\"us-other\""),
            ("\"us-acme\"", "\"us-acm\\u0065\""),
            ("\"seq\":42", "\"seq\":042"),
            ("\"seq\":42", "\"seq\":42.0"),
            ("\"seq\":42", "\"seq\":-42"),
            ("\"seq\":42", "\"seq\":99999999999999999999"),
            ("\"at\":1700000000000", "\"at\":-0"),
            ("\"at\":1700000000000", "\"at\":1e3"),
            ("\"at\":1700000000000", "\"at\":9223372036854775808"),
            ("\"at\":1700000000000", "\"at\": 1"),
            ("\"kind\":\"run.step\"", "\"kind\":\"run\\u002estep\""),
            ("\"actor\":\"steward\"", "\"actor\":\"ste\tward\""),
            ("\"body\":\"b\"", "\"body\":\"b\",\"extra\":1"),
            ("\"body\":\"b\"", "\"body\":\"b\",\"sealed\":null"),
        ];
        for (from, to) in edits {
            assert!(good.contains(from), "{from}");
            let line = good.replacen(from, to, 1);
            assert!(agrees(line.as_bytes()).is_none(), "{line}");
        }
        for line in [
            format!("{good} "),
            format!(" {good}"),
            format!("{good}\r"),
            "{}".into(),
        ] {
            assert!(agrees(line.as_bytes()).is_none(), "{line}");
        }
        let mut bad_utf8 = good.into_bytes();
        let at = bad_utf8.iter().position(|&b| b == b'b').unwrap();
        bad_utf8[at] = 0xff;
        assert!(agrees(&bad_utf8).is_none());
    }

    fn naive_stop(hay: &[u8]) -> Option<usize> {
        hay.iter()
            .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
    }

    proptest! {
        #[test]
        fn any_entry_is_read_fast_as_serde_reads_it(
            strings in prop::collection::vec(any::<String>(), 6),
            seq in any::<u64>(),
            at in any::<i64>(),
            has_run in any::<bool>(),
            has_sealed in any::<bool>(),
        ) {
            let e = AuditEntry {
                tenant: TenantId::parse("us-acme").unwrap(),
                seq,
                at,
                kind: strings[0].clone(),
                run_id: has_run.then(RunId::new),
                actor: strings[1].clone(),
                body: strings[2].clone(),
                sealed: has_sealed.then(|| strings[3].clone()),
                prev_hash: strings[4].clone(),
                hash: strings[5].clone(),
            };
            let line = serde_json::to_vec(&e).unwrap();
            let taken = agrees(&line).is_some();
            let unicode_escape = String::from_utf8_lossy(&line).contains("\\u");
            prop_assert!(taken || unicode_escape || at == i64::MIN);
        }

        #[test]
        fn an_edited_line_read_fast_is_read_as_serde_reads_it(
            body in any::<String>(),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
            how in 0usize..3,
        ) {
            let mut line = serde_json::to_vec(&entry(&body, None)).unwrap();
            let i = at.index(line.len());
            match how {
                0 => line[i] = byte,
                1 => line.insert(i, byte),
                _ => {
                    line.remove(i);
                }
            }
            agrees(&line);
        }

        #[test]
        fn the_word_scans_find_what_a_byte_scan_finds(
            hay in prop::collection::vec(any::<u8>(), 0..80)
        ) {
            prop_assert_eq!(find_string_stop(&hay), naive_stop(&hay));
            prop_assert_eq!(find_byte(b'\n', &hay), hay.iter().position(|&b| b == b'\n'));
        }
    }

    fn lines_of(text: &[u8]) -> Result<Vec<Vec<u8>>, BundleError> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), text).unwrap();
        let mut lines = Vec::new();
        let n = for_each_line(dir.path(), "f", |n, line| {
            assert_eq!(n, lines.len() as u64 + 1);
            lines.push(line.to_vec());
            Ok(())
        })?;
        assert_eq!(n, lines.len() as u64);
        Ok(lines)
    }

    #[test]
    fn lines_are_read_whole_and_bounded() {
        assert_eq!(lines_of(b"").unwrap(), Vec::<Vec<u8>>::new());
        assert_eq!(
            lines_of(b"a\n\nbc\n").unwrap(),
            vec![b"a".to_vec(), vec![], b"bc".to_vec()]
        );
        let err = lines_of(b"a\nb").unwrap_err();
        assert_eq!(
            (err.item.as_str(), err.reason.as_str()),
            ("f line 2", "the file does not end with a newline")
        );

        // Lines across many reads of the buffer, up to the longest allowed.
        let mut text = Vec::new();
        let sizes = [
            READ_BUFFER_BYTES - 1,
            3,
            READ_BUFFER_BYTES + 5,
            MAX_LINE_BYTES,
            0,
            7,
        ];
        for (i, size) in sizes.iter().enumerate() {
            text.extend(std::iter::repeat_n(b'a' + i as u8, *size));
            text.push(b'\n');
        }
        let lines = lines_of(&text).unwrap();
        assert_eq!(lines.iter().map(Vec::len).collect::<Vec<_>>(), sizes);
        assert!(lines[3].iter().all(|&b| b == b'd'));

        let too_long = format!("longer than {MAX_LINE_BYTES} bytes");
        let mut long = b"x\n".to_vec();
        long.extend(std::iter::repeat_n(b'y', MAX_LINE_BYTES + 1));
        for end in [&b"\nz\n"[..], b"", b"yyy"] {
            let mut text = long.clone();
            text.extend_from_slice(end);
            let err = lines_of(&text).unwrap_err();
            assert_eq!(
                (err.item.as_str(), err.reason.as_str()),
                ("f line 2", too_long.as_str())
            );
        }
        let mut unterminated = b"x\n".to_vec();
        unterminated.extend(std::iter::repeat_n(b'y', MAX_LINE_BYTES));
        let err = lines_of(&unterminated).unwrap_err();
        assert_eq!(err.reason, "the file does not end with a newline");
    }
}
