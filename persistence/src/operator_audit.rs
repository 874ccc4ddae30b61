//! The operator audit log and break-glass grants: platform-level records of what operators did,
//! outside every tenant's chain.
//!
//! # The operator audit log
//!
//! One append-only chain for the whole platform (table `operator_audit_log`): sign-ins, refused
//! sign-ins, and break-glass access opened, used, closed and expired. Each entry commits by
//! hash to the one before it over exactly the bytes stored, hashed as the tenant chains are
//! (`audit::domain_hash`) under its own domain tag, so an entry of one chain never verifies in
//! the other. `operator_audit_head` keeps the last entry's seq and hash: appends lock that row
//! (PostgreSQL; SQLite has one writer), so `seq` has no gaps, and verification compares the
//! chain's end with it, so entries cut from the end are caught too.
//!
//! An entry's detail is redacted before it is stored ([`crate::redact_json`]: values under keys
//! that name a secret, and words shaped like credentials, `sbg_…` included), so the log holds
//! names, reasons, methods, paths and statuses, never a token.
//!
//! # Break-glass grants
//!
//! A grant (table `break_glass_grants`) is emergency operator access for one person, for at
//! most [`MAX_GRANT_MINUTES`], with a stated reason. Only the SHA-256 of its token is stored.
//! Opening, each use, closing and the first refused use after expiry each append their
//! operator audit entry in the same transaction as the grant's change. Every call here is
//! platform level: on PostgreSQL it runs as `steward_platform`, the only role granted these
//! tables.

use serde::Serialize;
use serde_json::{Value, json};
use sqlx::FromRow;

use crate::audit::{ChainBreak, GENESIS_HASH, domain_hash};
use crate::store::WriteTx;
use crate::{Store, StoreError, codec, redact_json};

/// Domain tag that starts every operator audit entry hash.
const HASH_DOMAIN: &[u8] = b"steward-operator-audit-v1";
/// The most entries one [`Store::operator_audit`] call returns; also verification's page size.
const PAGE: u32 = 1000;
/// The largest detail kept, as compact JSON after redaction.
pub const MAX_DETAIL_BYTES: usize = 64 * 1024;
/// The longest a break-glass grant may last, in minutes.
pub const MAX_GRANT_MINUTES: u32 = 240;
/// The most grants one [`Store::break_glass_grants`] call returns, newest first.
const MAX_LISTED_GRANTS: u32 = 1000;

/// Kinds of the break-glass entries.
pub const BREAK_GLASS_OPENED: &str = "break_glass.opened";
pub const BREAK_GLASS_USED: &str = "break_glass.used";
pub const BREAK_GLASS_CLOSED: &str = "break_glass.closed";
pub const BREAK_GLASS_EXPIRED: &str = "break_glass.expired";

/// One stored operator audit entry, exactly as hashed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OperatorAuditEntry {
    /// Position in the chain, from 1.
    pub seq: u64,
    /// Append time, Unix ms.
    pub at: i64,
    /// What happened, for example `break_glass.opened`.
    pub kind: String,
    /// Who did it: `operator` (the operator token), a person, `break_glass:<id>`.
    pub actor: String,
    /// The exact stored JSON text of the (redacted) detail.
    pub detail: String,
    /// The previous entry's hash, or [`GENESIS_HASH`] for seq 1.
    pub prev_hash: String,
    /// [`operator_entry_hash`] of this entry.
    pub hash: String,
}

/// The hash an operator audit entry must carry: lowercase hex of SHA-256 over the bytes
/// `steward-operator-audit-v1` followed by each field as an 8-byte big-endian length and its
/// UTF-8 bytes, in this order: seq (decimal), at (decimal), kind, actor, detail, prev_hash.
pub fn operator_entry_hash(e: &OperatorAuditEntry) -> String {
    let (seq, at) = (e.seq.to_string(), e.at.to_string());
    domain_hash(
        HASH_DOMAIN,
        &[
            seq.as_bytes(),
            at.as_bytes(),
            e.kind.as_bytes(),
            e.actor.as_bytes(),
            e.detail.as_bytes(),
            e.prev_hash.as_bytes(),
        ],
    )
}

/// The outcome of verifying the whole operator audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OperatorVerifyReport {
    /// Entries that verified, from seq 1 up to (not including) the first bad one.
    pub entries: u64,
    /// Hash of the last entry that verified; [`GENESIS_HASH`] for an empty log.
    pub head_hash: String,
    /// The first entry that does not verify (or, past the last entry, where the recorded head
    /// says the log should go on), if any.
    pub first_bad: Option<ChainBreak>,
}

/// What a break-glass grant is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantState {
    Active,
    Expired,
    Closed,
}

/// A break-glass grant as stored, without its token (only the token's SHA-256 is kept, and it
/// is not part of this value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BreakGlassGrant {
    /// `bg_` and 16 random hex digits.
    pub id: String,
    /// Who the access is for.
    pub person: String,
    /// Why it was opened.
    pub reason: String,
    /// Who opened it.
    pub opened_by: String,
    /// Unix ms.
    pub opened_at: i64,
    /// Unix ms; the grant is refused from this instant on.
    pub expires_at: i64,
    pub closed_at: Option<i64>,
    pub closed_by: Option<String>,
    /// How many requests the grant authenticated.
    pub uses: u64,
}

impl BreakGlassGrant {
    /// The grant's state at `now` (Unix ms).
    pub fn state(&self, now: i64) -> GrantState {
        if self.closed_at.is_some() {
            GrantState::Closed
        } else if now >= self.expires_at {
            GrantState::Expired
        } else {
            GrantState::Active
        }
    }

    /// The names an audit entry about the grant carries.
    fn detail(&self) -> Value {
        json!({
            "grant": self.id,
            "person": self.person,
            "reason": self.reason,
            "expires_at": self.expires_at,
        })
    }
}

/// A grant to open: the caller makes the token and passes only its SHA-256.
#[derive(Debug, Clone)]
pub struct NewBreakGlass {
    pub id: String,
    /// Lowercase hex SHA-256 of the token.
    pub token_sha256: String,
    pub person: String,
    pub reason: String,
    /// Who opens it, as the audit actor.
    pub opened_by: String,
    /// 1 to [`MAX_GRANT_MINUTES`].
    pub minutes: u32,
}

/// One request a grant authenticated.
#[derive(Debug, Clone)]
pub struct BreakGlassUse {
    pub method: String,
    /// The request path, without its query.
    pub path: String,
    pub status: u16,
}

#[derive(FromRow)]
struct EntryRow {
    seq: i64,
    at: i64,
    kind: String,
    actor: String,
    detail: String,
    prev_hash: String,
    hash: String,
}

impl TryFrom<EntryRow> for OperatorAuditEntry {
    type Error = StoreError;
    fn try_from(row: EntryRow) -> Result<Self, StoreError> {
        Ok(OperatorAuditEntry {
            seq: codec::to_u64(row.seq, "operator audit seq")?,
            at: row.at,
            kind: row.kind,
            actor: row.actor,
            detail: row.detail,
            prev_hash: row.prev_hash,
            hash: row.hash,
        })
    }
}

#[derive(FromRow)]
struct GrantRow {
    id: String,
    token_sha256: String,
    person: String,
    reason: String,
    opened_by: String,
    opened_at: i64,
    expires_at: i64,
    closed_at: Option<i64>,
    closed_by: Option<String>,
    uses: i64,
}

impl GrantRow {
    fn into_grant(self) -> Result<(BreakGlassGrant, String), StoreError> {
        let grant = BreakGlassGrant {
            id: self.id,
            person: self.person,
            reason: self.reason,
            opened_by: self.opened_by,
            opened_at: self.opened_at,
            expires_at: self.expires_at,
            closed_at: self.closed_at,
            closed_by: self.closed_by,
            uses: codec::to_u64(self.uses, "break-glass uses")?,
        };
        Ok((grant, self.token_sha256))
    }
}

const GRANT_COLUMNS: &str = "id, token_sha256, person, reason, opened_by, opened_at, \
     expires_at, closed_at, closed_by, uses";

/// Checks an entry kind: 1–64 bytes of lowercase ASCII letters, digits, `_` and `.`.
fn check_kind(kind: &str) -> Result<(), StoreError> {
    let ok = !kind.is_empty()
        && kind.len() <= 64
        && kind
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "operator audit kind `{}` must be 1-64 of a-z, 0-9, `_` and `.`",
            codec::clip(kind)
        )))
    }
}

fn is_hex_sha256(text: &str) -> bool {
    text.len() == 64
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl Store {
    /// Appends one entry to the operator audit log in its own transaction; returns its seq.
    /// `kind` is 1–64 of `a-z0-9_.`, `actor` 1–256 printable bytes; `detail` is redacted, then
    /// kept as compact JSON of at most [`MAX_DETAIL_BYTES`].
    pub async fn append_operator_audit(
        &self,
        kind: &str,
        actor: &str,
        detail: Value,
    ) -> Result<u64, StoreError> {
        let mut tx = self.begin_platform_write().await?;
        let seq = self
            .append_operator_audit_in(&mut tx, kind, actor, detail)
            .await?;
        tx.commit().await?;
        Ok(seq)
    }

    /// Up to `limit` (at most 1000) entries with seq above `after_seq`, in seq order. Start
    /// with `after_seq = 0`.
    pub async fn operator_audit(
        &self,
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<OperatorAuditEntry>, StoreError> {
        self.operator_audit_rows(after_seq, limit)
            .await?
            .into_iter()
            .map(OperatorAuditEntry::try_from)
            .collect()
    }

    /// Verifies the whole operator audit log from seq 1, a page of 1000 at a time, then checks
    /// that it ends where its recorded head says.
    pub async fn verify_operator_audit(&self) -> Result<OperatorVerifyReport, StoreError> {
        let mut head = GENESIS_HASH.to_owned();
        let mut next_seq = 1u64;
        let mut verified = 0u64;
        let report = |entries, head_hash, first_bad| OperatorVerifyReport {
            entries,
            head_hash,
            first_bad,
        };
        loop {
            let rows = self.operator_audit_rows(next_seq - 1, PAGE).await?;
            let last_page = rows.len() < PAGE as usize;
            for row in rows {
                let seq = u64::try_from(row.seq).unwrap_or(0);
                let bad = |reason: &str| {
                    Some(ChainBreak {
                        seq,
                        reason: reason.to_owned(),
                    })
                };
                let entry = OperatorAuditEntry::try_from(row)?;
                let broken = if entry.seq != next_seq {
                    bad(&format!(
                        "expected seq {next_seq}; an entry is missing or moved"
                    ))
                } else if entry.prev_hash != head {
                    bad("prev_hash does not match the hash of the entry before")
                } else if operator_entry_hash(&entry) != entry.hash {
                    bad("stored hash does not match the entry's contents")
                } else {
                    None
                };
                if broken.is_some() {
                    return Ok(report(verified, head, broken));
                }
                head = entry.hash;
                next_seq += 1;
                verified += 1;
            }
            if last_page {
                break;
            }
        }
        let mut tx = self.read_platform().await?;
        let (head_seq, head_hash): (i64, String) =
            sqlx::query_as("SELECT seq, hash FROM operator_audit_head WHERE id = 1")
                .fetch_one(&mut *tx)
                .await?;
        let head_seq = codec::to_u64(head_seq, "operator audit head seq")?;
        let first_bad = (head_seq != verified || head_hash != head).then(|| ChainBreak {
            seq: verified + 1,
            reason: format!(
                "the log ends at seq {verified} but its head records seq {head_seq}; \
                 entries were removed or the head was changed"
            ),
        });
        Ok(report(verified, head, first_bad))
    }

    async fn operator_audit_rows(
        &self,
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<EntryRow>, StoreError> {
        let mut tx = self.read_platform().await?;
        Ok(sqlx::query_as(
            "SELECT seq, at, kind, actor, detail, prev_hash, hash FROM operator_audit_log \
             WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(codec::to_i64(after_seq, "after_seq")?)
        .bind(i64::from(limit.clamp(1, PAGE)))
        .fetch_all(&mut *tx)
        .await?)
    }

    /// Appends an entry inside `tx`, which must be a platform write.
    async fn append_operator_audit_in(
        &self,
        tx: &mut WriteTx,
        kind: &str,
        actor: &str,
        mut detail: Value,
    ) -> Result<u64, StoreError> {
        check_kind(kind)?;
        codec::check_text(actor, "operator audit actor", 256)?;
        redact_json(&mut detail);
        let detail = codec::json_text(&detail, "operator audit detail", MAX_DETAIL_BYTES)?;
        let lock = if self.is_postgres() {
            " FOR UPDATE"
        } else {
            ""
        };
        let (last_seq, prev_hash): (i64, String) = sqlx::query_as(&format!(
            "SELECT seq, hash FROM operator_audit_head WHERE id = 1{lock}"
        ))
        .fetch_one(&mut **tx)
        .await?;
        let mut entry = OperatorAuditEntry {
            seq: codec::to_u64(last_seq, "operator audit head seq")? + 1,
            at: self.now(),
            kind: kind.to_owned(),
            actor: actor.to_owned(),
            detail,
            prev_hash,
            hash: String::new(),
        };
        entry.hash = operator_entry_hash(&entry);
        let seq = codec::to_i64(entry.seq, "operator audit seq")?;
        sqlx::query(
            "INSERT INTO operator_audit_log (seq, at, kind, actor, detail, prev_hash, hash) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(seq)
        .bind(entry.at)
        .bind(&entry.kind)
        .bind(&entry.actor)
        .bind(&entry.detail)
        .bind(&entry.prev_hash)
        .bind(&entry.hash)
        .execute(&mut **tx)
        .await?;
        sqlx::query("UPDATE operator_audit_head SET seq = $1, hash = $2 WHERE id = 1")
            .bind(seq)
            .bind(&entry.hash)
            .execute(&mut **tx)
            .await?;
        Ok(entry.seq)
    }

    /// Opens a grant and appends `break_glass.opened` (naming the person, the reason and the
    /// expiry), in one transaction. Refuses an id or token hash already used (Conflict), a
    /// malformed token hash, a person of 0 or over 512 bytes or with control characters, a
    /// reason of 0 or over 4000 bytes, and minutes outside 1 to [`MAX_GRANT_MINUTES`].
    pub async fn open_break_glass(
        &self,
        new: &NewBreakGlass,
    ) -> Result<BreakGlassGrant, StoreError> {
        codec::check_text(&new.id, "grant id", 64)?;
        codec::check_text(&new.person, "person", 512)?;
        codec::check_text(&new.opened_by, "opened_by", 256)?;
        if new.reason.trim().is_empty() || new.reason.len() > 4000 {
            return Err(StoreError::Invalid("reason must be 1 to 4000 bytes".into()));
        }
        if !is_hex_sha256(&new.token_sha256) {
            return Err(StoreError::Invalid(
                "token_sha256 must be 64 lowercase hex digits".into(),
            ));
        }
        if !(1..=MAX_GRANT_MINUTES).contains(&new.minutes) {
            return Err(StoreError::Invalid(format!(
                "minutes must be 1 to {MAX_GRANT_MINUTES}"
            )));
        }
        let now = self.now();
        let grant = BreakGlassGrant {
            id: new.id.clone(),
            person: new.person.clone(),
            reason: new.reason.clone(),
            opened_by: new.opened_by.clone(),
            opened_at: now,
            expires_at: now + i64::from(new.minutes) * 60_000,
            closed_at: None,
            closed_by: None,
            uses: 0,
        };
        let mut tx = self.begin_platform_write().await?;
        sqlx::query(
            "INSERT INTO break_glass_grants (id, token_sha256, person, reason, opened_by, \
             opened_at, expires_at, uses) VALUES ($1, $2, $3, $4, $5, $6, $7, 0)",
        )
        .bind(&grant.id)
        .bind(&new.token_sha256)
        .bind(&grant.person)
        .bind(&grant.reason)
        .bind(&grant.opened_by)
        .bind(grant.opened_at)
        .bind(grant.expires_at)
        .execute(&mut *tx)
        .await
        .map_err(|e| codec::conflict_on_duplicate(e, || "the grant exists already".into()))?;
        let mut detail = grant.detail();
        detail["minutes"] = json!(new.minutes);
        self.append_operator_audit_in(&mut tx, BREAK_GLASS_OPENED, &grant.opened_by, detail)
            .await?;
        tx.commit().await?;
        Ok(grant)
    }

    /// The grant whose token has the SHA-256 `token_sha256` (lowercase hex), whatever its
    /// state, with the stored hash for the caller to compare in constant time.
    pub async fn break_glass_by_token_sha256(
        &self,
        token_sha256: &str,
    ) -> Result<Option<(BreakGlassGrant, String)>, StoreError> {
        if !is_hex_sha256(token_sha256) {
            return Ok(None);
        }
        let mut tx = self.read_platform().await?;
        let row: Option<GrantRow> = sqlx::query_as(&format!(
            "SELECT {GRANT_COLUMNS} FROM break_glass_grants WHERE token_sha256 = $1"
        ))
        .bind(token_sha256)
        .fetch_optional(&mut *tx)
        .await?;
        row.map(GrantRow::into_grant).transpose()
    }

    /// The grant `id`, whatever its state.
    pub async fn break_glass_grant(&self, id: &str) -> Result<Option<BreakGlassGrant>, StoreError> {
        let mut tx = self.read_platform().await?;
        let row: Option<GrantRow> = sqlx::query_as(&format!(
            "SELECT {GRANT_COLUMNS} FROM break_glass_grants WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        Ok(row.map(GrantRow::into_grant).transpose()?.map(|(g, _)| g))
    }

    /// The newest `limit` (at most 1000) grants, newest first, in every state.
    pub async fn break_glass_grants(&self, limit: u32) -> Result<Vec<BreakGlassGrant>, StoreError> {
        let mut tx = self.read_platform().await?;
        let rows: Vec<GrantRow> = sqlx::query_as(&format!(
            "SELECT {GRANT_COLUMNS} FROM break_glass_grants ORDER BY opened_at DESC, id DESC \
             LIMIT $1"
        ))
        .bind(i64::from(limit.clamp(1, MAX_LISTED_GRANTS)))
        .fetch_all(&mut *tx)
        .await?;
        rows.into_iter()
            .map(|r| r.into_grant().map(|(g, _)| g))
            .collect()
    }

    /// How many grants are in force now (not closed, not expired).
    pub async fn active_break_glass_count(&self) -> Result<u64, StoreError> {
        let mut tx = self.read_platform().await?;
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM break_glass_grants WHERE closed_at IS NULL AND expires_at > $1",
        )
        .bind(self.now())
        .fetch_one(&mut *tx)
        .await?;
        codec::to_u64(n, "grant count")
    }

    /// Records one request the grant `id` authenticated: counts it and appends
    /// `break_glass.used` (person, reason, method, path, status), in one transaction.
    pub async fn record_break_glass_use(
        &self,
        id: &str,
        used: &BreakGlassUse,
    ) -> Result<u64, StoreError> {
        codec::check_text(&used.method, "method", 16)?;
        codec::check_len(&used.path, "path", 2048)?;
        let mut tx = self.begin_platform_write().await?;
        let row: Option<GrantRow> = sqlx::query_as(&format!(
            "UPDATE break_glass_grants SET uses = uses + 1 WHERE id = $1 RETURNING {GRANT_COLUMNS}"
        ))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let (grant, _) = row
            .ok_or_else(|| StoreError::NotFound(format!("grant `{}`", codec::clip(id))))?
            .into_grant()?;
        let mut detail = grant.detail();
        detail["method"] = json!(used.method);
        detail["path"] = json!(used.path);
        detail["status"] = json!(used.status);
        let seq = self
            .append_operator_audit_in(
                &mut tx,
                BREAK_GLASS_USED,
                &format!("break_glass:{}", grant.id),
                detail,
            )
            .await?;
        tx.commit().await?;
        Ok(seq)
    }

    /// Notes that the grant `id` was presented after it expired: the first time (for a grant
    /// expired and not closed), appends `break_glass.expired` with the refused request's method
    /// and path and returns true; afterwards does nothing and returns false.
    pub async fn note_break_glass_expired(
        &self,
        id: &str,
        method: &str,
        path: &str,
    ) -> Result<bool, StoreError> {
        let now = self.now();
        let mut tx = self.begin_platform_write().await?;
        let row: Option<GrantRow> = sqlx::query_as(&format!(
            "UPDATE break_glass_grants SET expiry_noted_at = $2 WHERE id = $1 \
             AND closed_at IS NULL AND expires_at <= $2 AND expiry_noted_at IS NULL \
             RETURNING {GRANT_COLUMNS}"
        ))
        .bind(id)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(false);
        };
        let (grant, _) = row.into_grant()?;
        let mut detail = grant.detail();
        detail["method"] = json!(codec::clip(method));
        detail["path"] = json!(codec::clip(path));
        self.append_operator_audit_in(
            &mut tx,
            BREAK_GLASS_EXPIRED,
            &format!("break_glass:{}", grant.id),
            detail,
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Closes the grant `id` before it expires and appends `break_glass.closed`, in one
    /// transaction. NotFound for an unknown grant; Conflict for one closed or expired already.
    pub async fn close_break_glass(
        &self,
        id: &str,
        actor: &str,
    ) -> Result<BreakGlassGrant, StoreError> {
        codec::check_text(actor, "actor", 256)?;
        let now = self.now();
        let mut tx = self.begin_platform_write().await?;
        let row: Option<GrantRow> = sqlx::query_as(&format!(
            "UPDATE break_glass_grants SET closed_at = $2, closed_by = $3 WHERE id = $1 \
             AND closed_at IS NULL AND expires_at > $2 RETURNING {GRANT_COLUMNS}"
        ))
        .bind(id)
        .bind(now)
        .bind(actor)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            drop(tx);
            return match self.break_glass_grant(id).await? {
                None => Err(StoreError::NotFound(format!("grant `{}`", codec::clip(id)))),
                Some(g) => Err(StoreError::Conflict(format!(
                    "grant `{}` is {} already",
                    g.id,
                    match g.state(now) {
                        GrantState::Closed => "closed",
                        _ => "expired",
                    }
                ))),
            };
        };
        let (grant, _) = row.into_grant()?;
        self.append_operator_audit_in(&mut tx, BREAK_GLASS_CLOSED, actor, grant.detail())
            .await?;
        tx.commit().await?;
        Ok(grant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64) -> OperatorAuditEntry {
        let mut e = OperatorAuditEntry {
            seq,
            at: 1_700_000_000_000,
            kind: "break_glass.opened".into(),
            actor: "operator".into(),
            detail: r#"{"person":"ana"}"#.into(),
            prev_hash: GENESIS_HASH.into(),
            hash: String::new(),
        };
        e.hash = operator_entry_hash(&e);
        e
    }

    #[test]
    fn entry_hashes_cover_every_field_under_their_own_domain() {
        let e = entry(1);
        let mut shifted = e.clone();
        shifted.kind = "break_glass.opene".into();
        shifted.actor = "doperator".into();
        assert_ne!(operator_entry_hash(&shifted), e.hash);
        let tenant_style = domain_hash(
            b"steward-audit-v1",
            &[
                b"1",
                b"1700000000000",
                e.kind.as_bytes(),
                e.actor.as_bytes(),
                e.detail.as_bytes(),
                e.prev_hash.as_bytes(),
            ],
        );
        assert_ne!(tenant_style, e.hash);
        for edit in [
            |e: &mut OperatorAuditEntry| e.seq += 1,
            |e: &mut OperatorAuditEntry| e.at += 1,
            |e: &mut OperatorAuditEntry| e.detail.push(' '),
            |e: &mut OperatorAuditEntry| e.prev_hash = "1".repeat(64),
        ] {
            let mut changed = e.clone();
            edit(&mut changed);
            assert_ne!(operator_entry_hash(&changed), e.hash);
        }
    }

    #[test]
    fn kinds_are_narrow() {
        for ok in ["break_glass.used", "operator.sign_in", "a"] {
            assert!(check_kind(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Break", "a b", "x\u{1b}", &"a".repeat(65), "é"] {
            assert!(check_kind(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn grant_states_follow_the_clock_and_closing() {
        let mut g = BreakGlassGrant {
            id: "bg_1".into(),
            person: "ana".into(),
            reason: "database failover".into(),
            opened_by: "operator".into(),
            opened_at: 0,
            expires_at: 60_000,
            closed_at: None,
            closed_by: None,
            uses: 0,
        };
        assert_eq!(g.state(59_999), GrantState::Active);
        assert_eq!(g.state(60_000), GrantState::Expired);
        g.closed_at = Some(10);
        assert_eq!(g.state(0), GrantState::Closed);
    }
}
