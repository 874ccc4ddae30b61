//! The audit log: per tenant, an append-only chain in which every entry commits by hash to the
//! one before it, over exactly the bytes stored. Appends happen inside the write transaction of
//! the change they describe; the single writer serializes them, so `seq` has no gaps.
//!
//! The body of an entry about a run is sealed with the tenant's data key (it may name incident
//! content); entries about the tenant itself (tokens, settings, secrets by name, offboarding)
//! stay in clear. The hash covers the stored text, sealed or not, so a chain verifies without
//! any key, also after offboarding destroyed the data key.
//!
//! A sealed body is stored bound ([`BOUND_PREFIX`]): a random salt and the SHA-256 of the salt
//! and the clear body come first, in clear, then the sealed text. The chain's hash covers the
//! digest, so the clear body an export shows beside the stored text is proved by the chain as
//! well: anyone can check that it hashes, with the salt, to the digest (`bound_body_matches`),
//! and no key is needed. The salt keeps the digest from confirming a guessed short body.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::FromRow;
use steward_core::{RunId, TenantId};

use rand::RngCore;

use crate::codec::{self, MAX_DOCUMENT_BYTES};
use crate::content::{self, Column};
use crate::store::WriteTx;
use crate::{Store, StoreError, TenantScope};

/// The `prev_hash` of a tenant's first entry: 64 zeros.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Domain tag that starts every entry hash.
const HASH_DOMAIN: &[u8] = b"steward-audit-v1";

/// The most entries one `audit_entries` call returns; also `verify_audit`'s page size.
const PAGE: u32 = 1000;

/// An audit entry before it is appended: the store adds tenant, seq, time and hashes.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditDraft {
    /// What happened, for example `run.created` (1–128 printable bytes).
    pub kind: String,
    /// The run it concerns, if any.
    pub run_id: Option<RunId>,
    /// Who caused it: a user, a token label, `steward` (1–256 printable bytes).
    pub actor: String,
    /// Details; digests of content rather than content. Stored as compact JSON, at most 1 MiB.
    pub body: serde_json::Value,
}

/// One stored audit entry, exactly as hashed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub tenant: TenantId,
    /// Position in the tenant's chain, from 1.
    pub seq: u64,
    /// Append time, Unix ms.
    pub at: i64,
    pub kind: String,
    pub run_id: Option<RunId>,
    pub actor: String,
    /// The entry's JSON text, opened when it is stored sealed.
    pub body: String,
    /// The stored text when the body is sealed (`sealed:1:…`), which is what the hash covers;
    /// absent when the body is stored in clear.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<String>,
    /// The previous entry's hash, or [`GENESIS_HASH`] for seq 1.
    pub prev_hash: String,
    /// [`entry_hash`] of this entry.
    pub hash: String,
}

/// Where and why a chain stopped verifying.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("audit chain breaks at seq {seq}: {reason}")]
pub struct ChainBreak {
    /// The first entry that does not verify.
    pub seq: u64,
    pub reason: String,
}

/// The outcome of verifying a tenant's whole chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Entries that verified, from the chain's stored start (seq 1, or the seq after its prune
    /// anchor) up to (not including) the first bad one.
    pub entries: u64,
    /// Hash of the last entry that verified; [`GENESIS_HASH`] for an empty chain.
    pub head_hash: String,
    /// The first entry that does not verify, if any.
    pub first_bad: Option<ChainBreak>,
}

/// The hash an entry must carry: lowercase hex of SHA-256 over the bytes `steward-audit-v1`
/// followed by each field as an 8-byte big-endian length and its UTF-8 bytes, in this order:
/// tenant, seq (decimal), at (decimal), kind, run_id (hyphenated, or empty), actor, body as
/// stored (`sealed` when present, else `body`), prev_hash.
pub fn entry_hash(e: &AuditEntry) -> String {
    hex::encode(HashInput::of(e).digest())
}

/// The fields of an entry that [`entry_hash`] covers, borrowed from wherever they were read.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HashInput<'a> {
    pub(crate) tenant: &'a str,
    pub(crate) seq: u64,
    pub(crate) at: i64,
    pub(crate) kind: &'a str,
    pub(crate) run_id: Option<RunId>,
    pub(crate) actor: &'a str,
    /// The body as stored: `sealed` when present, else `body`.
    pub(crate) stored_body: &'a str,
    pub(crate) prev_hash: &'a str,
}

impl<'a> HashInput<'a> {
    pub(crate) fn of(e: &'a AuditEntry) -> Self {
        Self {
            tenant: e.tenant.as_str(),
            seq: e.seq,
            at: e.at,
            kind: &e.kind,
            run_id: e.run_id,
            actor: &e.actor,
            stored_body: e.sealed.as_deref().unwrap_or(&e.body),
            prev_hash: &e.prev_hash,
        }
    }

    /// The SHA-256 [`entry_hash`] spells in hex; numbers and the run id are spelled on the
    /// stack, nothing is allocated.
    fn digest(&self) -> [u8; 32] {
        let (mut seq, mut at) = ([0u8; DECIMAL_BYTES], [0u8; DECIMAL_BYTES]);
        let mut run = RunText::new();
        let run_owned;
        let run_id: &[u8] = match self.run_id {
            None => b"",
            Some(r) => match run.spell(r) {
                Some(text) => text,
                None => {
                    run_owned = r.to_string();
                    run_owned.as_bytes()
                }
            },
        };
        let fields: [&[u8]; 8] = [
            self.tenant.as_bytes(),
            decimal(self.seq, false, &mut seq),
            decimal(self.at.unsigned_abs(), self.at < 0, &mut at),
            self.kind.as_bytes(),
            run_id,
            self.actor.as_bytes(),
            self.stored_body.as_bytes(),
            self.prev_hash.as_bytes(),
        ];
        domain_digest(HASH_DOMAIN, &fields)
    }

    /// Whether `hash` is this entry's [`entry_hash`], compared without building the hex text.
    pub(crate) fn hash_is(&self, hash: &str) -> bool {
        hash.as_bytes() == lower_hex_32(&self.digest())
    }
}

/// The most bytes a `u64`, or an `i64` with its sign, takes in decimal.
const DECIMAL_BYTES: usize = 20;

/// `n` in decimal, after a `-` when `negative`, as `to_string` spells it, written to the end
/// of `buf`.
fn decimal(mut n: u64, negative: bool, buf: &mut [u8; DECIMAL_BYTES]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if negative {
        i -= 1;
        buf[i] = b'-';
    }
    &buf[i..]
}

/// A run id spelled as `to_string` spells it (hyphenated, lowercase), on the stack.
struct RunText {
    buf: [u8; 36],
    len: usize,
}

impl RunText {
    fn new() -> Self {
        Self {
            buf: [0; 36],
            len: 0,
        }
    }

    /// The id's text; None if it did not fit (it always does: 36 bytes).
    fn spell(&mut self, run: RunId) -> Option<&[u8]> {
        use std::fmt::Write as _;
        write!(self, "{run}").ok()?;
        Some(&self.buf[..self.len])
    }
}

impl std::fmt::Write for RunText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        self.buf
            .get_mut(self.len..end)
            .ok_or(std::fmt::Error)?
            .copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Lowercase hex of 32 bytes, as `hex::encode` spells it.
fn lower_hex_32(bytes: &[u8; 32]) -> [u8; 64] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 64];
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0x0f)];
    }
    out
}

/// Lowercase hex of SHA-256 over `domain` followed by each field as an 8-byte big-endian
/// length and its bytes: the hash of an audit entry, for any chain with its own domain tag.
pub(crate) fn domain_hash(domain: &[u8], fields: &[&[u8]]) -> String {
    hex::encode(domain_digest(domain, fields))
}

/// The SHA-256 [`domain_hash`] spells in hex. The framed bytes are gathered into a few whole
/// blocks before they are hashed, rather than handed over a field at a time.
fn domain_digest(domain: &[u8], fields: &[&[u8]]) -> [u8; 32] {
    let mut framed = Framed {
        hasher: Sha256::new(),
        buf: [0; FRAMED_BUFFER_BYTES],
        len: 0,
    };
    framed.put(domain);
    for field in fields {
        framed.put(&(field.len() as u64).to_be_bytes());
        framed.put(field);
    }
    framed.hasher.update(&framed.buf[..framed.len]);
    framed.hasher.finalize().into()
}

/// The bytes [`Framed`] gathers before hashing them: four SHA-256 blocks.
const FRAMED_BUFFER_BYTES: usize = 256;

/// A SHA-256 fed through a buffer.
struct Framed {
    hasher: Sha256,
    buf: [u8; FRAMED_BUFFER_BYTES],
    len: usize,
}

impl Framed {
    fn put(&mut self, bytes: &[u8]) {
        if let Some(room) = self.buf.get_mut(self.len..self.len + bytes.len()) {
            room.copy_from_slice(bytes);
            self.len += bytes.len();
        } else {
            self.hasher.update(&self.buf[..self.len]);
            self.len = 0;
            self.hasher.update(bytes);
        }
    }
}

/// Verifies consecutive entries of one tenant's chain whose first entry should follow a head
/// of `expected_prev`; returns the new head hash. From [`GENESIS_HASH`] the first entry must
/// be seq 1; otherwise the first seq is taken as given and each later one must follow it by 1.
pub fn verify_entries<'a>(
    entries: impl IntoIterator<Item = &'a AuditEntry>,
    expected_prev: &str,
) -> Result<String, ChainBreak> {
    let first_seq = (expected_prev == GENESIS_HASH).then_some(1);
    let mut cursor = ChainCursor::new(expected_prev, first_seq);
    for entry in entries {
        cursor.check(entry)?;
    }
    Ok(cursor.head)
}

/// The running state of a chain check.
struct ChainCursor {
    head: String,
    next_seq: Option<u64>,
    tenant: Option<TenantId>,
}

impl ChainCursor {
    fn new(head: &str, next_seq: Option<u64>) -> Self {
        Self {
            head: head.to_owned(),
            next_seq,
            tenant: None,
        }
    }

    fn check(&mut self, e: &AuditEntry) -> Result<(), ChainBreak> {
        let bad = |reason: String| ChainBreak { seq: e.seq, reason };
        if let Some(want) = self.next_seq.filter(|want| *want != e.seq) {
            return Err(bad(format!(
                "expected seq {want}; an entry is missing or moved"
            )));
        }
        if let Some(t) = self.tenant.as_ref().filter(|t| **t != e.tenant) {
            return Err(bad(format!(
                "entry belongs to tenant {}, the chain to {t}",
                e.tenant
            )));
        }
        link_error(&HashInput::of(e), &e.hash, &self.head).map_err(|r| bad(r.into()))?;
        self.head.clone_from(&e.hash);
        self.next_seq = e.seq.checked_add(1);
        self.tenant.get_or_insert_with(|| e.tenant.clone());
        Ok(())
    }
}

/// Why an entry with the fields `e` and the stored hash `hash` does not follow a head of
/// `head`: its `prev_hash` names another head, or `hash` is not its hash.
fn link_error(e: &HashInput<'_>, hash: &str, head: &str) -> Result<(), &'static str> {
    if e.prev_hash != head {
        return Err("prev_hash does not match the hash of the entry before");
    }
    if !e.hash_is(hash) {
        return Err("stored hash does not match the entry's contents");
    }
    Ok(())
}

/// [`verify_entries`] of the one entry with the fields `e` and the stored hash `hash`, after a
/// head of `head`, without building an [`AuditEntry`]. On success the new head is `hash`.
pub(crate) fn verify_link(e: &HashInput<'_>, hash: &str, head: &str) -> Result<(), ChainBreak> {
    let bad = |reason: String| ChainBreak { seq: e.seq, reason };
    if head == GENESIS_HASH && e.seq != 1 {
        return Err(bad(
            "expected seq 1; an entry is missing or moved".to_owned()
        ));
    }
    link_error(e, hash, head).map_err(|r| bad(r.to_owned()))
}

/// How a bound body's stored text starts: `bound:1:<salt, 32 hex>:<digest, 64 hex>:` and then
/// the sealed text.
pub const BOUND_PREFIX: &str = "bound:1:";
/// Domain tag of a bound body's digest.
const BODY_DIGEST_DOMAIN: &[u8] = b"steward-audit-body-v1\0";

/// The parts of a bound body's stored text.
struct Bound<'a> {
    salt: [u8; 16],
    digest: &'a str,
    sealed: &'a str,
}

/// Lowercase hex SHA-256 of the domain tag, the salt and the clear body.
fn body_digest(salt: &[u8; 16], plain: &str) -> String {
    hex::encode(body_digest_bytes(salt, plain))
}

/// The SHA-256 [`body_digest`] spells in hex.
fn body_digest_bytes(salt: &[u8; 16], plain: &str) -> [u8; 32] {
    Sha256::new()
        .chain_update(BODY_DIGEST_DOMAIN)
        .chain_update(salt)
        .chain_update(plain.as_bytes())
        .finalize()
        .into()
}

/// The stored text of a body sealed as `sealed`: a fresh salt and the digest before it.
fn bind(plain: &str, sealed: &str) -> String {
    let mut salt = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    format!(
        "{BOUND_PREFIX}{}:{}:{sealed}",
        hex::encode(salt),
        body_digest(&salt, plain)
    )
}

fn split_bound(stored: &str) -> Option<Bound<'_>> {
    let rest = stored.strip_prefix(BOUND_PREFIX)?;
    let (salt, rest) = rest.split_once(':')?;
    let (digest, sealed) = rest.split_once(':')?;
    let lower = |t: &str, n: usize| {
        t.len() == n && t.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    if !lower(salt, 32) || !lower(digest, 64) {
        return None;
    }
    let mut bytes = [0u8; 16];
    hex::decode_to_slice(salt, &mut bytes).ok()?;
    Some(Bound {
        salt: bytes,
        digest,
        sealed,
    })
}

/// Whether `plain` is the clear body the stored text `stored` commits to: Some(true) or
/// Some(false) for a bound body, None for a stored text that is not bound (a clear body, or a
/// body sealed before bodies were bound, whose clear text the chain does not prove).
pub fn bound_body_matches(stored: &str, plain: &str) -> Option<bool> {
    if !stored.starts_with(BOUND_PREFIX) {
        return None;
    }
    Some(
        split_bound(stored).is_some_and(|b| {
            b.digest.as_bytes() == lower_hex_32(&body_digest_bytes(&b.salt, plain))
        }),
    )
}

#[derive(FromRow)]
pub(crate) struct AuditRow {
    tenant_id: String,
    seq: i64,
    at: i64,
    kind: String,
    run_id: Option<String>,
    actor: String,
    body: String,
    prev_hash: String,
    hash: String,
}

impl AuditRow {
    /// The entry exactly as stored, its body not opened: what the chain check hashes.
    fn stored_entry(self) -> Result<AuditEntry, StoreError> {
        Ok(AuditEntry {
            tenant: codec::tenant_id(&self.tenant_id)?,
            seq: codec::to_u64(self.seq, "audit seq")?,
            at: self.at,
            kind: self.kind,
            run_id: self.run_id.as_deref().map(codec::run_id).transpose()?,
            actor: self.actor,
            body: self.body,
            sealed: None,
            prev_hash: self.prev_hash,
            hash: self.hash,
        })
    }
}

impl Store {
    /// The entry of `row` with its body opened when it is sealed.
    pub(crate) async fn open_audit_row(&self, row: AuditRow) -> Result<AuditEntry, StoreError> {
        let mut entry = row.stored_entry()?;
        if let Some(bound) = split_bound(&entry.body) {
            let plain = self
                .open_content(
                    entry.tenant.as_str(),
                    Column::AuditBody,
                    &entry.seq.to_string(),
                    bound.sealed,
                )
                .await?;
            if body_digest(&bound.salt, &plain) != bound.digest {
                return Err(StoreError::Corrupt(format!(
                    "audit entry {} of tenant {}: its opened body does not match its digest",
                    entry.seq, entry.tenant
                )));
            }
            entry.sealed = Some(std::mem::replace(&mut entry.body, plain));
        } else if content::is_sealed(&entry.body) {
            let plain = self
                .open_content(
                    entry.tenant.as_str(),
                    Column::AuditBody,
                    &entry.seq.to_string(),
                    &entry.body,
                )
                .await?;
            entry.sealed = Some(std::mem::replace(&mut entry.body, plain));
        }
        Ok(entry)
    }

    /// [`Store::open_audit_row`] of each row, in order.
    pub(crate) async fn open_audit_rows(
        &self,
        rows: Vec<AuditRow>,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            out.push(self.open_audit_row(row).await?);
        }
        Ok(out)
    }
}

impl Store {
    /// Appends one entry to the scope's tenant's chain in its own transaction; returns its seq.
    pub async fn append_audit(
        &self,
        scope: &TenantScope,
        draft: AuditDraft,
    ) -> Result<u64, StoreError> {
        if draft.run_id.is_some() {
            self.content_key(scope).await?;
        }
        let mut tx = self.begin_tenant_write(scope).await?;
        let seq = self.append_audit_in(&mut tx, scope, &draft).await?;
        tx.commit().await?;
        Ok(seq)
    }

    /// Up to `limit` (at most 1000) entries of the scope's tenant with seq above `after_seq`,
    /// in seq order, sealed bodies opened. Start with `after_seq = 0`. A sealed body whose
    /// data key was destroyed (offboarding) fails the call with [`StoreError::Crypto`].
    pub async fn audit_entries(
        &self,
        scope: &TenantScope,
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let rows = self.audit_rows(scope, after_seq, limit).await?;
        self.open_audit_rows(rows).await
    }

    /// Verifies the scope's tenant's whole stored chain, a page of 1000 at a time: from seq 1,
    /// or, once retention pruned a prefix, from the latest prune anchor's hash at the seq after
    /// it. A row that does not even decode (a run id that is not a UUID, say) is reported as
    /// the break.
    pub async fn verify_audit(&self, scope: &TenantScope) -> Result<VerifyReport, StoreError> {
        let anchor = self.prune_anchor(scope).await?;
        let (start_hash, mut after) = match &anchor {
            Some(a) => (a.hash.as_str(), a.through_seq),
            None => (GENESIS_HASH, 0),
        };
        let mut cursor = ChainCursor::new(start_hash, Some(after + 1));
        let mut verified = 0u64;
        loop {
            let rows = self.audit_rows(scope, after, PAGE).await?;
            let last_page = rows.len() < PAGE as usize;
            for row in rows {
                let seq = u64::try_from(row.seq).unwrap_or(0);
                let checked = row
                    .stored_entry()
                    .map_err(|e| ChainBreak {
                        seq,
                        reason: e.to_string(),
                    })
                    .and_then(|entry| cursor.check(&entry));
                if let Err(first_bad) = checked {
                    return Ok(report(verified, cursor.head, Some(first_bad)));
                }
                verified += 1;
                after = seq;
            }
            if last_page {
                return Ok(report(verified, cursor.head, None));
            }
        }
    }

    async fn audit_rows(
        &self,
        scope: &TenantScope,
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<AuditRow>, StoreError> {
        let mut tx = self.read_as(scope).await?;
        Ok(sqlx::query_as(
            "SELECT tenant_id, seq, at, kind, run_id, actor, body, prev_hash, hash FROM audit_log \
             WHERE tenant_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(scope.id())
        .bind(codec::to_i64(after_seq, "after_seq")?)
        .bind(i64::from(limit.min(PAGE)))
        .fetch_all(&mut *tx)
        .await?)
    }

    /// Appends `draft` to the scope's tenant's chain inside `tx`; returns its seq.
    pub(crate) async fn append_audit_in(
        &self,
        tx: &mut WriteTx,
        scope: &TenantScope,
        draft: &AuditDraft,
    ) -> Result<u64, StoreError> {
        let body = draft_body(draft)?;
        let key = match draft.run_id {
            Some(_) => Some(self.content_key_in(tx, scope).await?),
            None => None,
        };
        self.lock_chain(tx, scope).await?;
        let mut head = chain_head(tx, scope).await?;
        let entry = head.next(scope, draft, body, key.as_deref(), self.now());
        insert_entry(tx, &entry).await?;
        Ok(entry.seq)
    }
}

/// Chain heads by tenant id, as a batch's appends move them along.
pub(crate) type ChainHeads = std::collections::HashMap<String, ChainHead>;

/// The head of the scope's tenant's chain as `tx` sees it (the genesis when it has no entry).
pub(crate) async fn chain_head(
    tx: &mut WriteTx,
    scope: &TenantScope,
) -> Result<ChainHead, StoreError> {
    let head: Option<(i64, String)> = sqlx::query_as(
        "SELECT seq, hash FROM audit_log WHERE tenant_id = $1 ORDER BY seq DESC LIMIT 1",
    )
    .bind(scope.id())
    .fetch_optional(&mut **tx)
    .await?;
    ChainHead::read(head)
}

/// Checks `draft`'s kind and actor and encodes its body: what an append can refuse before it
/// touches the chain.
pub(crate) fn draft_body(draft: &AuditDraft) -> Result<String, StoreError> {
    codec::check_text(&draft.kind, "audit kind", 128)?;
    codec::check_text(&draft.actor, "audit actor", 256)?;
    codec::json_text(&draft.body, "audit body", MAX_DOCUMENT_BYTES)
}

/// The last entry of a tenant's chain, as appends in one transaction move it along.
#[derive(Debug, Clone)]
pub(crate) struct ChainHead {
    seq: u64,
    hash: String,
}

impl ChainHead {
    /// The head from the stored `(seq, hash)` of the newest entry; the genesis when none.
    pub(crate) fn read(newest: Option<(i64, String)>) -> Result<Self, StoreError> {
        Ok(match newest {
            Some((seq, hash)) => Self {
                seq: codec::to_u64(seq, "audit seq")?,
                hash,
            },
            None => Self {
                seq: 0,
                hash: GENESIS_HASH.to_owned(),
            },
        })
    }

    /// The entry `draft` becomes after this head (its body already encoded by
    /// [`draft_body`], sealed and bound with `key` when given), which becomes the new head.
    pub(crate) fn next(
        &mut self,
        scope: &TenantScope,
        draft: &AuditDraft,
        body: String,
        key: Option<&crate::vault::DataKey>,
        at: i64,
    ) -> AuditEntry {
        let seq = self.seq + 1;
        let body = match key {
            Some(key) => bind(
                &body,
                &content::seal(key, scope.id(), Column::AuditBody, &seq.to_string(), &body),
            ),
            None => body,
        };
        let mut entry = AuditEntry {
            tenant: scope.tenant().clone(),
            seq,
            at,
            kind: draft.kind.clone(),
            run_id: draft.run_id,
            actor: draft.actor.clone(),
            body,
            sealed: None,
            prev_hash: std::mem::take(&mut self.hash),
            hash: String::new(),
        };
        entry.hash = entry_hash(&entry);
        self.seq = seq;
        self.hash.clone_from(&entry.hash);
        entry
    }
}

impl Store {
    /// Serializes appends to the scope's tenant's chain until `tx` ends. SQLite's single
    /// writer already does; on PostgreSQL the tenant's row is locked, so two transactions
    /// never read the same head.
    /// Orders this transaction after every other one holding the tenant's lock (its row, on
    /// PostgreSQL; SQLite has one writer already). Audit appends take it, and so does every
    /// write that numbers rows by `MAX + 1` (secret versions, the first data key). The row is
    /// locked `FOR NO KEY UPDATE`, which excludes other holders of this lock as `FOR UPDATE`
    /// would but not the key-share lock another transaction's foreign key takes on the row
    /// (inserting a meter or a run of the tenant): that one would wait for this commit, and
    /// two writers could each wait for the other.
    pub(crate) async fn lock_chain(
        &self,
        tx: &mut WriteTx,
        scope: &TenantScope,
    ) -> Result<(), StoreError> {
        if self.is_postgres() {
            sqlx::query("SELECT id FROM tenants WHERE id = $1 FOR NO KEY UPDATE")
                .bind(scope.id())
                .fetch_optional(&mut **tx)
                .await?;
        }
        Ok(())
    }
}

/// Inserts `entries` (at least one) with one statement.
/// Appends the insert of `entries` to `script`, as one statement.
pub(crate) fn push_entries<'q>(
    script: &mut crate::intake::Script<'q>,
    entries: &'q [AuditEntry],
) -> Result<(), StoreError> {
    script.push(
        "INSERT INTO audit_log (tenant_id, seq, at, kind, run_id, actor, body, prev_hash, hash) \
         VALUES ",
    );
    script.rows(entries.len(), 9);
    for e in entries {
        script.bind(e.tenant.as_str())?;
        script.bind(codec::to_i64(e.seq, "audit seq")?)?;
        script.bind(e.at)?;
        script.bind(e.kind.as_str())?;
        script.bind(e.run_id.map(|r| r.to_string()))?;
        script.bind(e.actor.as_str())?;
        script.bind(e.body.as_str())?;
        script.bind(e.prev_hash.as_str())?;
        script.bind(e.hash.as_str())?;
    }
    Ok(())
}

async fn insert_entry(tx: &mut WriteTx, e: &AuditEntry) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO audit_log (tenant_id, seq, at, kind, run_id, actor, body, prev_hash, hash) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(e.tenant.as_str())
    .bind(codec::to_i64(e.seq, "audit seq")?)
    .bind(e.at)
    .bind(&e.kind)
    .bind(e.run_id.map(|r| r.to_string()))
    .bind(&e.actor)
    .bind(&e.body)
    .bind(&e.prev_hash)
    .bind(&e.hash)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn report(entries: u64, head_hash: String, first_bad: Option<ChainBreak>) -> VerifyReport {
    VerifyReport {
        entries,
        head_hash,
        first_bad,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn chain(tenant: &str, bodies: &[String]) -> Vec<AuditEntry> {
        let tenant = TenantId::parse(tenant).unwrap();
        let mut prev = GENESIS_HASH.to_owned();
        let mut out = Vec::new();
        for (i, body) in bodies.iter().enumerate() {
            let mut e = AuditEntry {
                tenant: tenant.clone(),
                seq: i as u64 + 1,
                at: 1_700_000_000_000 + i as i64,
                kind: "run.step".into(),
                run_id: (i % 2 == 0).then(RunId::new),
                actor: "steward".into(),
                body: body.clone(),
                sealed: None,
                prev_hash: prev.clone(),
                hash: String::new(),
            };
            e.hash = entry_hash(&e);
            prev.clone_from(&e.hash);
            out.push(e);
        }
        out
    }

    fn bodies(n: usize) -> Vec<String> {
        (0..n).map(|i| format!(r#"{{"i":{i}}}"#)).collect()
    }

    #[test]
    fn the_genesis_hash_is_64_zeros() {
        assert_eq!(GENESIS_HASH.len(), 64);
        assert!(GENESIS_HASH.bytes().all(|b| b == b'0'));
    }

    #[test]
    fn entry_hashes_length_prefix_every_field() {
        let e = &chain("us-acme", &bodies(1))[0];
        let run = e.run_id.unwrap().to_string();
        let mut manual = Sha256::new();
        manual.update(b"steward-audit-v1");
        for field in [
            "us-acme",
            "1",
            "1700000000000",
            "run.step",
            &run,
            "steward",
            r#"{"i":0}"#,
            GENESIS_HASH,
        ] {
            manual.update((field.len() as u64).to_be_bytes());
            manual.update(field.as_bytes());
        }
        assert_eq!(entry_hash(e), hex::encode(manual.finalize()));

        // Moving bytes between neighbouring fields changes the hash.
        let mut shifted = e.clone();
        shifted.kind = "run.ste".into();
        shifted.actor = "psteward".into();
        assert_ne!(entry_hash(&shifted), entry_hash(e));
    }

    #[test]
    fn numbers_and_run_ids_are_spelled_as_to_string_spells_them() {
        for n in [0, 1, 9, 10, 99, 1_700_000_000_000, u64::MAX] {
            let mut buf = [0u8; DECIMAL_BYTES];
            assert_eq!(decimal(n, false, &mut buf), n.to_string().as_bytes());
        }
        for n in [0, -1, 1, -10, 1_700_000_000_000, i64::MIN, i64::MAX] {
            let mut buf = [0u8; DECIMAL_BYTES];
            let text = decimal(n.unsigned_abs(), n < 0, &mut buf);
            assert_eq!(text, n.to_string().as_bytes());
        }
        let run = RunId::new();
        assert_eq!(RunText::new().spell(run), Some(run.to_string().as_bytes()));
        let digest = [0xa5; 32];
        assert_eq!(
            lower_hex_32(&digest).as_slice(),
            hex::encode(digest).as_bytes()
        );
    }

    #[test]
    fn fields_longer_than_the_buffer_hash_as_when_streamed() {
        for body_len in [0, 100, 200, 255, 256, 257, 1000, 70_000] {
            let mut e = chain("us-acme", &["x".repeat(body_len)])[0].clone();
            e.at = -5;
            let mut manual = Sha256::new();
            manual.update(b"steward-audit-v1");
            let run = e.run_id.unwrap().to_string();
            for field in [
                "us-acme",
                "1",
                "-5",
                "run.step",
                &run,
                "steward",
                &e.body,
                GENESIS_HASH,
            ] {
                manual.update((field.len() as u64).to_be_bytes());
                manual.update(field.as_bytes());
            }
            let want = hex::encode(manual.finalize());
            assert_eq!(entry_hash(&e), want, "{body_len}");
            assert!(HashInput::of(&e).hash_is(&want));
            assert!(!HashInput::of(&e).hash_is(&want.to_ascii_uppercase()));
            assert!(!HashInput::of(&e).hash_is(&want[1..]));
        }
    }

    #[test]
    fn one_link_verifies_as_verify_entries_does() {
        let entries = chain("us-acme", &bodies(3));
        let link = |e: &AuditEntry, head: &str| {
            verify_link(&HashInput::of(e), &e.hash, head).map_err(|b| (b.seq, b.reason))
        };
        let whole = |e: &AuditEntry, head: &str| {
            verify_entries(std::iter::once(e), head)
                .map(|_| ())
                .map_err(|b| (b.seq, b.reason))
        };
        let mut bad_hash = entries[1].clone();
        bad_hash.hash = "f".repeat(64);
        for (e, head) in [
            (&entries[0], GENESIS_HASH),
            (&entries[1], entries[0].hash.as_str()),
            (&entries[1], GENESIS_HASH),
            (&entries[2], entries[0].hash.as_str()),
            (&bad_hash, entries[0].hash.as_str()),
        ] {
            assert_eq!(link(e, head), whole(e, head));
        }
        assert!(link(&entries[1], GENESIS_HASH).is_err());
    }

    #[test]
    fn a_chain_verifies_from_genesis_and_from_a_midpoint() {
        let entries = chain("us-acme", &bodies(5));
        assert_eq!(
            verify_entries(&entries, GENESIS_HASH).unwrap(),
            entries[4].hash
        );
        assert_eq!(
            verify_entries(&entries[2..], &entries[1].hash).unwrap(),
            entries[4].hash
        );
        assert_eq!(verify_entries([], GENESIS_HASH).unwrap(), GENESIS_HASH);
    }

    #[test]
    fn a_chain_that_does_not_start_at_one_is_refused_from_genesis() {
        let entries = chain("us-acme", &bodies(3));
        assert_eq!(
            verify_entries(&entries[1..], GENESIS_HASH).unwrap_err().seq,
            2
        );
    }

    #[test]
    fn entries_of_another_tenant_break_the_chain() {
        let mut entries = chain("us-acme", &bodies(3));
        let other = chain("eu-beta", &bodies(3));
        entries[2] = other[2].clone();
        assert_eq!(verify_entries(&entries, GENESIS_HASH).unwrap_err().seq, 3);
    }

    #[test]
    fn deleting_or_swapping_entries_is_caught() {
        let entries = chain("us-acme", &bodies(5));
        let mut deleted = entries.clone();
        deleted.remove(2);
        assert_eq!(verify_entries(&deleted, GENESIS_HASH).unwrap_err().seq, 4);
        let mut swapped = entries;
        swapped.swap(1, 2);
        assert_eq!(verify_entries(&swapped, GENESIS_HASH).unwrap_err().seq, 3);
    }

    fn tamper(e: &mut AuditEntry, field: usize) {
        match field {
            0 => e.body.push(' '),
            1 => e.kind.push('x'),
            2 => e.at += 1,
            3 => e.actor.push('x'),
            4 => {
                e.run_id = if e.run_id.is_some() {
                    None
                } else {
                    Some(RunId::new())
                }
            }
            5 => e.prev_hash = "f".repeat(64),
            6 => e.hash = "f".repeat(64),
            _ => e.seq += 1,
        }
    }

    proptest! {
        #[test]
        fn tampering_with_any_field_is_caught_at_that_entry(
            n in 1usize..40,
            pick in any::<prop::sample::Index>(),
            field in 0usize..8,
        ) {
            let mut entries = chain("us-acme", &bodies(n));
            let at = pick.index(n);
            tamper(&mut entries[at], field);
            let err = verify_entries(&entries, GENESIS_HASH).unwrap_err();
            let want = if field == 7 { entries[at].seq } else { at as u64 + 1 };
            prop_assert_eq!(err.seq, want);
        }
    }

    #[test]
    fn a_bound_body_proves_its_clear_text_and_nothing_else() {
        let stored = bind(r#"{"state":"done"}"#, "sealed:1:1:AAAA");
        assert!(stored.starts_with(BOUND_PREFIX));
        assert_eq!(
            bound_body_matches(&stored, r#"{"state":"done"}"#),
            Some(true)
        );
        assert_eq!(
            bound_body_matches(&stored, r#"{"state":"failed"}"#),
            Some(false)
        );
        assert_eq!(
            bound_body_matches(&stored, r#"{"state":"done"} "#),
            Some(false)
        );
        let other = bind(r#"{"state":"done"}"#, "sealed:1:1:AAAA");
        assert_ne!(stored, other, "each body has its own salt");
        assert_eq!(bound_body_matches("sealed:1:1:AAAA", "x"), None);
        assert_eq!(bound_body_matches(r#"{"a":1}"#, r#"{"a":1}"#), None);
        let upper = stored.replacen(&stored[8..40], &stored[8..40].to_ascii_uppercase(), 1);
        for hostile in [
            "bound:1:",
            "bound:1::",
            "bound:1:zz:yy:sealed:1:1:AAAA",
            upper.as_str(),
            &stored[..stored.len() - 60],
        ] {
            assert_ne!(
                bound_body_matches(hostile, r#"{"state":"done"}"#),
                Some(true),
                "{hostile}"
            );
        }
    }
}
