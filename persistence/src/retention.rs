//! Per-tenant retention, legal hold, audit pruning and the erasure of one person's data
//! (migration 0013).
//!
//! # Retention
//!
//! A tenant keeps its data forever until it sets [`RetentionSettings`]: how many days the
//! sealed content of a finished run (trigger, journal, snapshot, crash records, timers), a
//! finished run itself (with its approvals and deliveries) and an audit entry are kept.
//! [`Store::sweep_tenant`] removes, in bounded batches, what is older than that. A run counts
//! as finished only in one of the states the caller names (the actors' terminal states); a
//! waiting or running run is never touched, whatever its age. Ages are measured from a run's
//! last change (`updated_at`) and an entry's append time.
//!
//! # Audit pruning
//!
//! Removing the oldest entries of a hash chain would leave the rest unverifiable, so the store
//! first records a prune anchor (`audit_prune_anchors`, append-only): the last seq removed, that
//! entry's hash, and a signed evidence checkpoint at or after it (taken on the spot when none
//! exists). The database admits a DELETE on `audit_log` only for rows at or below an anchor of
//! their tenant, for every role; above it the log stays append-only. Verification then starts
//! from the anchor's hash at the seq after it ([`Store::verify_audit`]), and an `audit.pruned`
//! entry records how many entries went and through which seq, never their content.
//!
//! # Legal hold
//!
//! While a tenant is held ([`Store::place_legal_hold`]) the sweep removes nothing of it and
//! erasure is refused. A hold, the sweep and erasure all take the tenant's lock, so a sweep
//! that started before a hold finishes before the hold is recorded, never after.
//!
//! # Erasure
//!
//! [`Store::erase_subject`] removes a person, named by a Slack user id or an email, from the
//! tenant's mutable rows: approvals' deciders, journal steps and triggers (sealed, opened,
//! scrubbed and sealed again), and it removes the snapshots and crash records of the runs it
//! changed (both are derived from the journal). What it cannot change: entries of the audit
//! chain (tenant and operator), whose hashes cover their text. Those keep the pseudonymous
//! identifiers they were written with (a Slack user id, `operator:<email>` as an actor) as the
//! security record of who decided what, until retention prunes them. Tenant settings (approver
//! groups) and token labels are configuration the tenant's admin changes; erasure leaves them.

use rand::RngCore;
use rand::rngs::OsRng;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::FromRow;
use steward_core::TenantId;

use crate::codec;
use crate::content::{self, Column};
use crate::evidence::CheckpointSigner;
use crate::runs::step_row;
use crate::store::WriteTx;
use crate::{AuditDraft, Store, StoreError, TenantScope};

/// One day in Unix milliseconds.
const DAY_MS: i64 = 86_400_000;
/// The longest any retention period may be: ten years.
pub const MAX_RETENTION_DAYS: u32 = 3650;
/// The shortest audit retention: one year, the security record's minimum.
pub const MIN_AUDIT_DAYS: u32 = 365;
/// The most rows of each kind (runs for content, runs, audit entries) one sweep removes.
pub const MAX_SWEEP_BATCH: u32 = 5000;
/// A hold's reason: at most this many characters.
pub const MAX_HOLD_REASON_CHARS: usize = 1000;
/// The states a run never leaves, as the schema's retention index (`runs_by_updated`, partial
/// on exactly these) lists them: a sweep may name only these as finished, and its read of due
/// runs states the same list so that the index serves it.
pub const FINISHED_STATES: &[&str] = &[
    "completed",
    "rejected",
    "denied",
    "stale",
    "failed",
    "expired",
    "cancelled",
    "shadowed",
];
/// What replaces an erased value.
pub const ERASED: &str = "[erased]";
/// What replaces a run's trigger once its content is pruned.
const PRUNED_TRIGGER: &str = r#"{"content_pruned":true}"#;
/// Keys whose value names a person, erased next to a value that matched the subject.
const NAME_KEYS: &[&str] = &[
    "name",
    "user_name",
    "username",
    "real_name",
    "display_name",
    "email",
];
/// Runs erasure reads per page.
const ERASURE_PAGE: i64 = 100;

/// How long a tenant keeps its data, in days; `None` keeps forever.
///
/// Bounds ([`RetentionSettings::check`]): every set value is 1 to [`MAX_RETENTION_DAYS`],
/// `audit_days` at least [`MIN_AUDIT_DAYS`], and content ≤ runs ≤ audit, where an unset value
/// counts as forever (so setting `runs_days` needs `content_days`, and setting `audit_days`
/// needs both): content never outlives its run, nor a run the entries that record it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionSettings {
    pub runs_days: Option<u32>,
    pub content_days: Option<u32>,
    pub audit_days: Option<u32>,
}

impl RetentionSettings {
    /// Whether the settings are within the bounds above; the error says which is not.
    pub fn check(&self) -> Result<(), String> {
        for (name, value) in [
            ("runs_days", self.runs_days),
            ("content_days", self.content_days),
            ("audit_days", self.audit_days),
        ] {
            if let Some(days) = value
                && !(1..=MAX_RETENTION_DAYS).contains(&days)
            {
                return Err(format!("`{name}` must be 1 to {MAX_RETENTION_DAYS} days"));
            }
        }
        if self.audit_days.is_some_and(|d| d < MIN_AUDIT_DAYS) {
            return Err(format!("`audit_days` must be at least {MIN_AUDIT_DAYS}"));
        }
        let forever = |v: Option<u32>| v.unwrap_or(u32::MAX);
        if forever(self.content_days) > forever(self.runs_days) {
            return Err("`content_days` must not exceed `runs_days` (unset keeps forever)".into());
        }
        if forever(self.runs_days) > forever(self.audit_days) {
            return Err("`runs_days` must not exceed `audit_days` (unset keeps forever)".into());
        }
        Ok(())
    }
}

/// A tenant's legal hold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegalHold {
    pub tenant: TenantId,
    pub reason: String,
    /// Who placed it (the operator's audit name).
    pub held_by: String,
    /// Unix ms.
    pub held_at: i64,
}

/// The start of a tenant's stored chain after a prefix was pruned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneAnchor {
    pub tenant: TenantId,
    /// The last seq removed; the stored chain starts at the seq after it.
    pub through_seq: u64,
    /// The hash of entry `through_seq`: the `prev_hash` of the first entry kept.
    pub hash: String,
    /// The signed evidence checkpoint, at or after `through_seq`, the chain links to.
    pub checkpoint_seq: u64,
    /// When the anchor was recorded, Unix ms.
    pub at: i64,
}

/// What one [`Store::sweep_tenant`] removed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SweepReport {
    /// The tenant is on legal hold: nothing was looked at.
    pub held: bool,
    /// Finished runs whose sealed content was removed.
    pub content_runs: u64,
    /// Finished runs removed, with their steps, approvals, snapshots, crashes and timers.
    pub runs: u64,
    /// Audit entries removed.
    pub audit_entries: u64,
    /// The anchor recorded by this sweep, if it pruned the audit chain.
    pub anchor: Option<PruneAnchor>,
}

impl SweepReport {
    /// Whether a batch was full, so another sweep may find more.
    pub fn more(&self, batch: u32) -> bool {
        let full = u64::from(batch.clamp(1, MAX_SWEEP_BATCH));
        self.content_runs >= full || self.runs >= full || self.audit_entries >= full
    }
}

/// Who is to be erased: a Slack user (`slack:U…`) or an email address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subject {
    Slack(String),
    Email(String),
}

impl Subject {
    /// Parses `slack:` and a Slack user id (`U` or `W`, then 2 to 20 of `A-Z0-9`), or an email
    /// (at most 254 bytes, one `@` with text on both sides, no spaces, controls or quotes).
    pub fn parse(text: &str) -> Result<Self, StoreError> {
        let bad = |why: &str| StoreError::Invalid(format!("subject: {why}"));
        if let Some(id) = text.strip_prefix("slack:") {
            let shaped = (3..=21).contains(&id.len())
                && id.starts_with(['U', 'W'])
                && id
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
            return if shaped {
                Ok(Self::Slack(id.to_owned()))
            } else {
                Err(bad(
                    "a Slack user id is `slack:` then U or W and 2 to 20 of A-Z0-9",
                ))
            };
        }
        let mut parts = text.split('@');
        let (local, domain) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let clean = text
            .chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, '"' | '\'' | '<' | '>' | '\\'));
        if text.len() > 254
            || parts.next().is_some()
            || local.is_empty()
            || !domain.contains('.')
            || domain.starts_with('.')
            || domain.ends_with('.')
            || !clean
        {
            return Err(bad("expected `slack:<user id>` or an email address"));
        }
        Ok(Self::Email(text.to_ascii_lowercase()))
    }

    /// The text searched for in stored values.
    fn needle(&self) -> &str {
        match self {
            Self::Slack(id) | Self::Email(id) => id,
        }
    }

    /// The subject as it was named.
    fn canonical(&self) -> String {
        match self {
            Self::Slack(id) => format!("slack:{id}"),
            Self::Email(email) => email.clone(),
        }
    }
}

/// What one erasure changed. The subject itself appears nowhere in it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ErasureReport {
    /// Hex SHA-256 of the salt's bytes followed by the subject as named (`slack:U…`, or the
    /// email in lowercase).
    pub subject_sha256: String,
    /// 16 random bytes, hex: whoever knows a subject can confirm it was the one erased.
    pub salt: String,
    pub approvals: u64,
    pub steps: u64,
    pub triggers: u64,
    pub snapshots_removed: u64,
    pub crashes_removed: u64,
    pub runs_touched: u64,
    /// Seq of the `erasure.completed` entry.
    pub audit_seq: u64,
}

#[derive(FromRow)]
struct RetentionRow {
    runs_days: Option<i64>,
    content_days: Option<i64>,
    audit_days: Option<i64>,
}

#[derive(FromRow)]
struct HoldRow {
    reason: String,
    held_by: String,
    held_at: i64,
}

#[derive(FromRow)]
struct AnchorRow {
    through_seq: i64,
    hash: String,
    checkpoint_seq: i64,
    at: i64,
}

fn days(value: Option<i64>, what: &str) -> Result<Option<u32>, StoreError> {
    value.map(|v| codec::to_u32(v, what)).transpose()
}

fn held(scope: &TenantScope) -> StoreError {
    StoreError::Conflict(format!(
        "tenant `{}` is on legal hold: nothing of it may be deleted until the hold is released",
        scope.tenant()
    ))
}

/// `$first, $first+1, …` for `n` values.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Store {
    /// The scope's tenant's retention settings; all unset when it never set any.
    pub async fn retention(&self, scope: &TenantScope) -> Result<RetentionSettings, StoreError> {
        let mut tx = self.read_as(scope).await?;
        let row: Option<RetentionRow> = sqlx::query_as(
            "SELECT runs_days, content_days, audit_days FROM tenant_retention \
             WHERE tenant_id = $1",
        )
        .bind(scope.id())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(RetentionSettings::default());
        };
        Ok(RetentionSettings {
            runs_days: days(row.runs_days, "runs_days")?,
            content_days: days(row.content_days, "content_days")?,
            audit_days: days(row.audit_days, "audit_days")?,
        })
    }

    /// Replaces the scope's tenant's retention settings and appends `retention.set` (before and
    /// after) in the same transaction. Invalid when they are out of bounds; NotFound when the
    /// tenant is not registered or was offboarded.
    pub async fn set_retention(
        &self,
        scope: &TenantScope,
        settings: RetentionSettings,
        actor: &str,
    ) -> Result<(), StoreError> {
        settings.check().map_err(StoreError::Invalid)?;
        let before = self.retention(scope).await?;
        let mut tx = self.begin_tenant_write(scope).await?;
        self.require_live(&mut tx, scope).await?;
        let num = |v: Option<u32>| v.map(i64::from);
        sqlx::query(
            "INSERT INTO tenant_retention (tenant_id, runs_days, content_days, audit_days, \
             updated_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant_id) DO UPDATE SET \
             runs_days = excluded.runs_days, content_days = excluded.content_days, \
             audit_days = excluded.audit_days, updated_at = excluded.updated_at",
        )
        .bind(scope.id())
        .bind(num(settings.runs_days))
        .bind(num(settings.content_days))
        .bind(num(settings.audit_days))
        .bind(self.now())
        .execute(&mut *tx)
        .await?;
        let draft = AuditDraft {
            kind: "retention.set".into(),
            run_id: None,
            actor: actor.into(),
            body: json!({ "before": before, "after": settings }),
        };
        self.append_audit_in(&mut tx, scope, &draft).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The scope's tenant's legal hold, if one is in force.
    pub async fn legal_hold(&self, scope: &TenantScope) -> Result<Option<LegalHold>, StoreError> {
        let mut tx = self.read_as(scope).await?;
        let row: Option<HoldRow> =
            sqlx::query_as("SELECT reason, held_by, held_at FROM legal_holds WHERE tenant_id = $1")
                .bind(scope.id())
                .fetch_optional(&mut *tx)
                .await?;
        Ok(row.map(|r| LegalHold {
            tenant: scope.tenant().clone(),
            reason: r.reason,
            held_by: r.held_by,
            held_at: r.held_at,
        }))
    }

    /// Places a legal hold on the scope's tenant and appends `legal_hold.placed` in the same
    /// transaction. Conflict when it is already held; Invalid for an empty reason, one with
    /// control characters or over [`MAX_HOLD_REASON_CHARS`].
    pub async fn place_legal_hold(
        &self,
        scope: &TenantScope,
        reason: &str,
        actor: &str,
    ) -> Result<LegalHold, StoreError> {
        let reason = reason.trim();
        if reason.is_empty()
            || reason.chars().count() > MAX_HOLD_REASON_CHARS
            || reason.chars().any(|c| c.is_control() && c != '\n')
        {
            return Err(StoreError::Invalid(format!(
                "a hold's reason is 1 to {MAX_HOLD_REASON_CHARS} characters without controls"
            )));
        }
        codec::check_text(actor, "hold actor", 256)?;
        let mut tx = self.begin_tenant_write(scope).await?;
        self.lock_chain(&mut tx, scope).await?;
        self.require_live(&mut tx, scope).await?;
        if self.held_in(&mut tx, scope).await? {
            return Err(StoreError::Conflict(format!(
                "tenant `{}` is already on legal hold",
                scope.tenant()
            )));
        }
        let hold = LegalHold {
            tenant: scope.tenant().clone(),
            reason: reason.to_owned(),
            held_by: actor.to_owned(),
            held_at: self.now(),
        };
        sqlx::query(
            "INSERT INTO legal_holds (tenant_id, reason, held_by, held_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(scope.id())
        .bind(&hold.reason)
        .bind(&hold.held_by)
        .bind(hold.held_at)
        .execute(&mut *tx)
        .await?;
        let draft = AuditDraft {
            kind: "legal_hold.placed".into(),
            run_id: None,
            actor: actor.into(),
            body: json!({ "reason": hold.reason }),
        };
        self.append_audit_in(&mut tx, scope, &draft).await?;
        tx.commit().await?;
        Ok(hold)
    }

    /// Releases the scope's tenant's legal hold and appends `legal_hold.released` (with the
    /// hold's reason and start) in the same transaction; NotFound when it is not held.
    pub async fn release_legal_hold(
        &self,
        scope: &TenantScope,
        actor: &str,
    ) -> Result<LegalHold, StoreError> {
        codec::check_text(actor, "hold actor", 256)?;
        let hold = self.legal_hold(scope).await?.ok_or_else(|| {
            StoreError::NotFound(format!("tenant `{}` is not on legal hold", scope.tenant()))
        })?;
        let mut tx = self.begin_tenant_write(scope).await?;
        self.lock_chain(&mut tx, scope).await?;
        let gone = sqlx::query("DELETE FROM legal_holds WHERE tenant_id = $1")
            .bind(scope.id())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if gone == 0 {
            return Err(StoreError::NotFound(format!(
                "tenant `{}` is not on legal hold",
                scope.tenant()
            )));
        }
        let draft = AuditDraft {
            kind: "legal_hold.released".into(),
            run_id: None,
            actor: actor.into(),
            body: json!({
                "reason": hold.reason,
                "held_at": hold.held_at,
                "held_by": hold.held_by,
            }),
        };
        self.append_audit_in(&mut tx, scope, &draft).await?;
        tx.commit().await?;
        Ok(hold)
    }

    /// The tenants the sweep has work for: those with retention settings, not offboarded and
    /// not held, in id order. Platform level.
    pub async fn retention_tenants(&self) -> Result<Vec<TenantId>, StoreError> {
        let mut tx = self.read_platform().await?;
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT r.tenant_id FROM tenant_retention r JOIN tenants t ON t.id = r.tenant_id \
             WHERE t.offboarded_at IS NULL AND (r.runs_days IS NOT NULL \
             OR r.content_days IS NOT NULL OR r.audit_days IS NOT NULL) \
             AND NOT EXISTS (SELECT 1 FROM legal_holds h WHERE h.tenant_id = r.tenant_id) \
             ORDER BY r.tenant_id LIMIT 100000",
        )
        .fetch_all(&mut *tx)
        .await?;
        ids.iter().map(|id| codec::tenant_id(id)).collect()
    }

    /// The scope's tenant's latest prune anchor: where its stored chain starts.
    pub async fn prune_anchor(
        &self,
        scope: &TenantScope,
    ) -> Result<Option<PruneAnchor>, StoreError> {
        let mut tx = self.read_as(scope).await?;
        let row: Option<AnchorRow> = sqlx::query_as(
            "SELECT through_seq, hash, checkpoint_seq, at FROM audit_prune_anchors \
             WHERE tenant_id = $1 ORDER BY through_seq DESC LIMIT 1",
        )
        .bind(scope.id())
        .fetch_optional(&mut *tx)
        .await?;
        row.map(|r| {
            Ok(PruneAnchor {
                tenant: scope.tenant().clone(),
                through_seq: codec::to_u64(r.through_seq, "anchor seq")?,
                hash: r.hash,
                checkpoint_seq: codec::to_u64(r.checkpoint_seq, "anchor checkpoint")?,
                at: r.at,
            })
        })
        .transpose()
    }

    /// Removes, in one transaction, at most `batch` (1 to [`MAX_SWEEP_BATCH`]) rows of each
    /// kind that the scope's tenant's retention settings make due: the sealed content of
    /// finished runs older than `content_days`, finished runs older than `runs_days`, and the
    /// oldest audit entries older than `audit_days` (after recording a prune anchor, with a
    /// checkpoint signed by `signer` when none lies at or after it). `finished` names the
    /// states a run never leaves, each one of [`FINISHED_STATES`] (any other is refused as
    /// invalid); no other run is touched. Appends `retention.swept` when runs
    /// or content went and `audit.pruned` when entries went. A held tenant is left alone
    /// (`held` in the report).
    pub async fn sweep_tenant(
        &self,
        scope: &TenantScope,
        signer: &CheckpointSigner,
        finished: &[&str],
        batch: u32,
    ) -> Result<SweepReport, StoreError> {
        if let Some(other) = finished.iter().find(|s| !FINISHED_STATES.contains(s)) {
            return Err(StoreError::Invalid(format!(
                "{other:?} is not a state retention knows as finished (one of {})",
                finished_sql()
            )));
        }
        let batch = i64::from(batch.clamp(1, MAX_SWEEP_BATCH));
        let settings = self.retention(scope).await?;
        let mut report = SweepReport::default();
        let mut tx = self.begin_tenant_write(scope).await?;
        self.lock_chain(&mut tx, scope).await?;
        if self.held_in(&mut tx, scope).await? {
            report.held = true;
            return Ok(report);
        }
        let now = self.now();
        let cutoff = |d: u32| now.saturating_sub(i64::from(d).saturating_mul(DAY_MS));
        let mut removed = serde_json::Map::new();
        if let Some(d) = settings.content_days.filter(|_| !finished.is_empty()) {
            let ids = self
                .due_runs(&mut tx, scope, finished, cutoff(d), batch, true)
                .await?;
            for id in &ids {
                let key = self.content_key_in(&mut tx, scope).await?;
                self.delete_run_rows(&mut tx, scope, id, &CONTENT_TABLES)
                    .await?;
                let trigger =
                    content::seal(&key, scope.id(), Column::RunTrigger, id, PRUNED_TRIGGER);
                sqlx::query(
                    "UPDATE runs SET trigger_body = $1, last_error = NULL, content_pruned_at = $2 \
                     WHERE tenant_id = $3 AND id = $4",
                )
                .bind(trigger)
                .bind(now)
                .bind(scope.id())
                .bind(id)
                .execute(&mut *tx)
                .await?;
            }
            report.content_runs = ids.len() as u64;
        }
        if let Some(d) = settings.runs_days.filter(|_| !finished.is_empty()) {
            let ids = self
                .due_runs(&mut tx, scope, finished, cutoff(d), batch, false)
                .await?;
            for id in &ids {
                self.delete_run_rows(&mut tx, scope, id, &RUN_TABLES)
                    .await?;
                sqlx::query("DELETE FROM runs WHERE tenant_id = $1 AND id = $2")
                    .bind(scope.id())
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
            report.runs = ids.len() as u64;
        }
        if report.content_runs > 0 || report.runs > 0 {
            removed.insert("content_runs".into(), json!(report.content_runs));
            removed.insert("runs".into(), json!(report.runs));
            let draft = AuditDraft {
                kind: "retention.swept".into(),
                run_id: None,
                actor: "steward".into(),
                body: json!({ "removed": removed, "settings": settings }),
            };
            self.append_audit_in(&mut tx, scope, &draft).await?;
        }
        if let Some(d) = settings.audit_days {
            self.prune_audit_in(&mut tx, scope, signer, cutoff(d), batch, &mut report)
                .await?;
        }
        tx.commit().await?;
        Ok(report)
    }

    /// Prunes the oldest due entries inside `tx` (see [`Store::sweep_tenant`]). The DELETE
    /// comes last: on PostgreSQL it runs as the platform role, which alone may delete audit
    /// rows, for the rest of the transaction.
    async fn prune_audit_in(
        &self,
        tx: &mut WriteTx,
        scope: &TenantScope,
        signer: &CheckpointSigner,
        cutoff: i64,
        batch: i64,
        report: &mut SweepReport,
    ) -> Result<(), StoreError> {
        let anchored: Option<i64> = sqlx::query_scalar(
            "SELECT MAX(through_seq) FROM audit_prune_anchors WHERE tenant_id = $1",
        )
        .bind(scope.id())
        .fetch_one(&mut **tx)
        .await?;
        let anchored = anchored.unwrap_or(0);
        let head: Option<(i64, String)> = sqlx::query_as(
            "SELECT seq, hash FROM audit_log WHERE tenant_id = $1 ORDER BY seq DESC LIMIT 1",
        )
        .bind(scope.id())
        .fetch_optional(&mut **tx)
        .await?;
        let Some((head_seq, head_hash)) = head else {
            return Ok(());
        };
        // Entries go in seq order, up to the first one that is not yet due (times need not
        // rise with seq, so a later due entry waits for the earlier one).
        let first_kept: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(seq) FROM audit_log WHERE tenant_id = $1 AND seq > $2 AND at >= $3",
        )
        .bind(scope.id())
        .bind(anchored)
        .bind(cutoff)
        .fetch_one(&mut **tx)
        .await?;
        let due_through = first_kept.map_or(head_seq, |s| s - 1);
        let through = due_through.min(anchored.saturating_add(batch));
        if through <= anchored {
            return Ok(());
        }
        let hash: String =
            sqlx::query_scalar("SELECT hash FROM audit_log WHERE tenant_id = $1 AND seq = $2")
                .bind(scope.id())
                .bind(through)
                .fetch_one(&mut **tx)
                .await?;
        let signed: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(seq) FROM evidence_checkpoints WHERE tenant_id = $1 AND seq >= $2",
        )
        .bind(scope.id())
        .bind(through)
        .fetch_one(&mut **tx)
        .await?;
        let checkpoint_seq = match signed {
            Some(seq) => seq,
            None => {
                let at = codec::to_u64(head_seq, "audit seq")?;
                self.insert_signed_checkpoint_in(tx, scope, signer, at, &head_hash)
                    .await?;
                head_seq
            }
        };
        let anchor = PruneAnchor {
            tenant: scope.tenant().clone(),
            through_seq: codec::to_u64(through, "audit seq")?,
            hash,
            checkpoint_seq: codec::to_u64(checkpoint_seq, "checkpoint seq")?,
            at: self.now(),
        };
        sqlx::query(
            "INSERT INTO audit_prune_anchors (tenant_id, through_seq, hash, checkpoint_seq, at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(scope.id())
        .bind(through)
        .bind(&anchor.hash)
        .bind(checkpoint_seq)
        .bind(anchor.at)
        .execute(&mut **tx)
        .await?;
        let count = through - anchored;
        let draft = AuditDraft {
            kind: "audit.pruned".into(),
            run_id: None,
            actor: "steward".into(),
            body: json!({
                "entries": count,
                "from_seq": anchored + 1,
                "through_seq": through,
                "anchor_hash": anchor.hash,
                "checkpoint_seq": checkpoint_seq,
            }),
        };
        self.append_audit_in(tx, scope, &draft).await?;
        if self.is_postgres() {
            sqlx::query("SET LOCAL ROLE steward_platform")
                .execute(&mut **tx)
                .await?;
        }
        let gone = sqlx::query("DELETE FROM audit_log WHERE tenant_id = $1 AND seq <= $2")
            .bind(scope.id())
            .bind(through)
            .execute(&mut **tx)
            .await?
            .rows_affected();
        if gone != count as u64 {
            return Err(StoreError::Corrupt(format!(
                "pruning through seq {through} removed {gone} entries, expected {count}"
            )));
        }
        report.audit_entries = gone;
        report.anchor = Some(anchor);
        Ok(())
    }

    /// Ids of up to `batch` finished runs of the tenant last changed before `cutoff`, oldest
    /// first; with `content`, only those whose content is still there.
    async fn due_runs(
        &self,
        tx: &mut WriteTx,
        scope: &TenantScope,
        finished: &[&str],
        cutoff: i64,
        batch: i64,
        content: bool,
    ) -> Result<Vec<String>, StoreError> {
        let sql = due_runs_sql(content, finished.len());
        let mut query = sqlx::query_scalar(&sql)
            .bind(scope.id())
            .bind(cutoff)
            .bind(batch);
        for state in finished {
            query = query.bind(*state);
        }
        Ok(query.fetch_all(&mut **tx).await?)
    }

    async fn delete_run_rows(
        &self,
        tx: &mut WriteTx,
        scope: &TenantScope,
        run: &str,
        tables: &[&str],
    ) -> Result<(), StoreError> {
        for table in tables {
            sqlx::query(&format!(
                "DELETE FROM {table} WHERE tenant_id = $1 AND run_id = $2"
            ))
            .bind(scope.id())
            .bind(run)
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }

    async fn held_in(&self, tx: &mut WriteTx, scope: &TenantScope) -> Result<bool, StoreError> {
        let row: Option<String> =
            sqlx::query_scalar("SELECT tenant_id FROM legal_holds WHERE tenant_id = $1")
                .bind(scope.id())
                .fetch_optional(&mut **tx)
                .await?;
        Ok(row.is_some())
    }

    async fn require_live(&self, tx: &mut WriteTx, scope: &TenantScope) -> Result<(), StoreError> {
        let live: Option<String> =
            sqlx::query_scalar("SELECT id FROM tenants WHERE id = $1 AND offboarded_at IS NULL")
                .bind(scope.id())
                .fetch_optional(&mut **tx)
                .await?;
        live.map(|_| ()).ok_or_else(|| {
            StoreError::NotFound(format!("tenant `{}` was offboarded", scope.tenant()))
        })
    }
}

/// The tables holding a run's sealed content besides its trigger, children first.
const CONTENT_TABLES: [&str; 4] = ["timers", "run_crashes", "run_snapshots", "run_steps"];
/// Every table with rows of a run, children first (the run itself goes last).
const RUN_TABLES: [&str; 6] = [
    "timers",
    "run_crashes",
    "run_snapshots",
    "approvals",
    "run_steps",
    "deliveries",
];

/// Replaces every occurrence of `needle` in `text` (ASCII case-insensitively when `fold`).
fn scrub_text(text: &str, needle: &str, fold: bool) -> Option<String> {
    if needle.is_empty() {
        return None;
    }
    let (hay, needle) = if fold {
        (text.to_ascii_lowercase(), needle.to_ascii_lowercase())
    } else {
        (text.to_owned(), needle.to_owned())
    };
    if !hay.contains(needle.as_str()) {
        return None;
    }
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for (at, _) in hay.match_indices(needle.as_str()) {
        out.push_str(&text[last..at]);
        out.push_str(ERASED);
        last = at + needle.len();
    }
    out.push_str(&text[last..]);
    Some(out)
}

/// Erases `needle` from every string of `value`, and the name-like fields ([`NAME_KEYS`]) of
/// each object in which a value named the subject. Returns how many values changed.
fn scrub_json(value: &mut Value, needle: &str, fold: bool) -> u64 {
    match value {
        Value::String(s) => match scrub_text(s, needle, fold) {
            Some(new) => {
                *s = new;
                1
            }
            None => 0,
        },
        Value::Array(items) => items.iter_mut().map(|v| scrub_json(v, needle, fold)).sum(),
        Value::Object(map) => {
            let mut changed = 0;
            let mut named = false;
            for (_, v) in map.iter_mut() {
                let direct = v.is_string();
                let n = scrub_json(v, needle, fold);
                named |= direct && n > 0;
                changed += n;
            }
            if named {
                for key in NAME_KEYS {
                    if let Some(v) = map.get_mut(*key)
                        && v.as_str().is_some_and(|s| s != ERASED)
                    {
                        *v = Value::String(ERASED.into());
                        changed += 1;
                    }
                }
            }
            changed
        }
        _ => 0,
    }
}

/// One run's rows changed by an erasure, sealed again, ready to write.
#[derive(Default)]
struct RunErasure {
    trigger: Option<String>,
    steps: Vec<(i64, String)>,
}

impl Store {
    /// Erases `subject` from the scope's tenant's mutable rows (see the module docs) and
    /// appends `erasure.completed` with a salted hash of the subject, the counts and the
    /// reason with the subject erased from it. Conflict while the tenant is on legal hold.
    /// Runs are read a page of 100 at a time and each page is written in its own transaction,
    /// so a failure part way leaves the pages before it erased; repeating the call finishes
    /// the rest. Limits: it does not look inside timers' payloads (reminders of pending
    /// approvals, removed with their run), and it cannot change audit entries.
    pub async fn erase_subject(
        &self,
        scope: &TenantScope,
        subject: &Subject,
        reason: &str,
        actor: &str,
    ) -> Result<ErasureReport, StoreError> {
        codec::check_text(actor, "erasure actor", 256)?;
        if self.legal_hold(scope).await?.is_some() {
            return Err(held(scope));
        }
        let fold = matches!(subject, Subject::Email(_));
        let needle = subject.needle();
        let mut report = ErasureReport::default();

        // Approvals' deciders: a Slack user id, or `operator:<email>`.
        {
            let mut tx = self.begin_tenant_write(scope).await?;
            self.lock_chain(&mut tx, scope).await?;
            if self.held_in(&mut tx, scope).await? {
                return Err(held(scope));
            }
            let rows: Vec<(String, String)> = sqlx::query_as(
                "SELECT id, decided_by FROM approvals WHERE tenant_id = $1 \
                 AND decided_by IS NOT NULL",
            )
            .bind(scope.id())
            .fetch_all(&mut *tx)
            .await?;
            for (id, by) in rows {
                if let Some(new) = scrub_text(&by, needle, fold) {
                    sqlx::query(
                        "UPDATE approvals SET decided_by = $1 WHERE tenant_id = $2 AND id = $3",
                    )
                    .bind(new)
                    .bind(scope.id())
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                    report.approvals += 1;
                }
            }
            tx.commit().await?;
        }

        let mut after = String::new();
        loop {
            let runs: Vec<(String, String)> = {
                let mut tx = self.read_as(scope).await?;
                sqlx::query_as(
                    "SELECT id, trigger_body FROM runs WHERE tenant_id = $1 AND id > $2 \
                     ORDER BY id LIMIT $3",
                )
                .bind(scope.id())
                .bind(&after)
                .bind(ERASURE_PAGE)
                .fetch_all(&mut *tx)
                .await?
            };
            let Some((last, _)) = runs.last() else { break };
            after.clone_from(last);
            let mut changes = Vec::new();
            for (run, trigger) in runs {
                let change = self
                    .erase_in_run(scope, &run, &trigger, needle, fold)
                    .await?;
                if change.trigger.is_some() || !change.steps.is_empty() {
                    changes.push((run, change));
                }
            }
            if changes.is_empty() {
                continue;
            }
            let mut tx = self.begin_tenant_write(scope).await?;
            self.lock_chain(&mut tx, scope).await?;
            if self.held_in(&mut tx, scope).await? {
                return Err(held(scope));
            }
            let key = self.content_key_in(&mut tx, scope).await?;
            for (run, change) in changes {
                if let Some(plain) = change.trigger {
                    let sealed = content::seal(&key, scope.id(), Column::RunTrigger, &run, &plain);
                    sqlx::query(
                        "UPDATE runs SET trigger_body = $1 WHERE tenant_id = $2 AND id = $3",
                    )
                    .bind(sealed)
                    .bind(scope.id())
                    .bind(&run)
                    .execute(&mut *tx)
                    .await?;
                    report.triggers += 1;
                }
                for (seq, plain) in change.steps {
                    let row = step_row(&run, seq);
                    let sealed = content::seal(&key, scope.id(), Column::StepBody, &row, &plain);
                    sqlx::query(
                        "UPDATE run_steps SET body = $1 WHERE tenant_id = $2 AND run_id = $3 \
                         AND seq = $4",
                    )
                    .bind(sealed)
                    .bind(scope.id())
                    .bind(&run)
                    .bind(seq)
                    .execute(&mut *tx)
                    .await?;
                    report.steps += 1;
                }
                for (table, count) in [
                    ("run_snapshots", &mut report.snapshots_removed),
                    ("run_crashes", &mut report.crashes_removed),
                ] {
                    *count += sqlx::query(&format!(
                        "DELETE FROM {table} WHERE tenant_id = $1 AND run_id = $2"
                    ))
                    .bind(scope.id())
                    .bind(&run)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                }
                report.runs_touched += 1;
            }
            tx.commit().await?;
        }

        let mut salt = [0u8; 16];
        OsRng.fill_bytes(&mut salt);
        let mut hasher = Sha256::new();
        hasher.update(salt);
        hasher.update(subject.canonical().as_bytes());
        report.subject_sha256 = hex::encode(hasher.finalize());
        report.salt = hex::encode(salt);
        let reason = scrub_text(reason, needle, true).unwrap_or_else(|| reason.to_owned());
        let reason: String = reason.chars().take(1000).collect();
        let draft = AuditDraft {
            kind: "erasure.completed".into(),
            run_id: None,
            actor: actor.into(),
            body: json!({
                "subject_sha256": report.subject_sha256,
                "salt": report.salt,
                "subject_kind": if fold { "email" } else { "slack" },
                "reason": reason,
                "counts": {
                    "approvals": report.approvals,
                    "steps": report.steps,
                    "triggers": report.triggers,
                    "snapshots_removed": report.snapshots_removed,
                    "crashes_removed": report.crashes_removed,
                    "runs_touched": report.runs_touched,
                },
                "kept": "audit entries (hash-chained) keep pseudonymous identifiers",
            }),
        };
        report.audit_seq = self.append_audit(scope, draft).await?;
        Ok(report)
    }

    /// The scrubbed trigger and steps of one run, as plain text, where they changed.
    async fn erase_in_run(
        &self,
        scope: &TenantScope,
        run: &str,
        trigger: &str,
        needle: &str,
        fold: bool,
    ) -> Result<RunErasure, StoreError> {
        let mut out = RunErasure::default();
        let mut value: Value = self
            .open_json(scope.id(), Column::RunTrigger, run, trigger)
            .await?;
        if scrub_json(&mut value, needle, fold) > 0 {
            out.trigger = Some(value.to_string());
        }
        let rows: Vec<(i64, String)> = {
            let mut tx = self.read_as(scope).await?;
            sqlx::query_as(
                "SELECT seq, body FROM run_steps WHERE tenant_id = $1 AND run_id = $2 ORDER BY seq",
            )
            .bind(scope.id())
            .bind(run)
            .fetch_all(&mut *tx)
            .await?
        };
        for (seq, body) in rows {
            let mut value: Value = self
                .open_json(scope.id(), Column::StepBody, &step_row(run, seq), &body)
                .await?;
            if scrub_json(&mut value, needle, fold) > 0 {
                out.steps.push((seq, value.to_string()));
            }
        }
        Ok(out)
    }
}

/// The read of a tenant's finished runs last changed before a cutoff (`$1` the tenant, `$2` the
/// cutoff, `$3` how many, then `finished` states from `$4`), oldest first; with `content`, only
/// those whose content is still there. It states the retention index's condition.
fn due_runs_sql(content: bool, finished: usize) -> String {
    let extra = if content {
        " AND content_pruned_at IS NULL"
    } else {
        ""
    };
    format!(
        "SELECT id FROM runs WHERE tenant_id = $1 AND updated_at < $2{extra} \
         AND state IN ({}) AND state IN ({}) ORDER BY updated_at, id LIMIT $3",
        finished_sql(),
        placeholders(4, finished)
    )
}

/// [`FINISHED_STATES`] as the SQL list the retention index's condition spells.
fn finished_sql() -> String {
    let quoted: Vec<String> = FINISHED_STATES.iter().map(|s| format!("'{s}'")).collect();
    quoted.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_read_of_due_runs_is_served_by_the_partial_retention_index() {
        for content in [true, false] {
            let plan = Store::sqlite_plan(&due_runs_sql(content, 2), 5).await;
            assert!(
                plan.iter()
                    .any(|step| step.contains("USING INDEX runs_by_updated")),
                "{plan:?}"
            );
        }
    }

    #[test]
    fn bounds_keep_content_within_runs_within_audit() {
        let ok = RetentionSettings {
            content_days: Some(30),
            runs_days: Some(90),
            audit_days: Some(400),
        };
        assert!(ok.check().is_ok());
        assert!(RetentionSettings::default().check().is_ok());
        let cases = [
            (Some(0), None, None),
            (Some(10), Some(5), None),
            (Some(5), Some(10), Some(364)),
            (Some(5), Some(500), Some(400)),
            (None, Some(10), None),
            (Some(5), None, Some(400)),
            (Some(5), Some(10), Some(3651)),
        ];
        for (content_days, runs_days, audit_days) in cases {
            let s = RetentionSettings {
                runs_days,
                content_days,
                audit_days,
            };
            assert!(s.check().is_err(), "{s:?}");
        }
    }

    #[test]
    fn subjects_are_slack_ids_or_emails() {
        assert_eq!(
            Subject::parse("slack:U012ABCDEF").unwrap(),
            Subject::Slack("U012ABCDEF".into())
        );
        assert_eq!(
            Subject::parse("Ana@Example.com").unwrap(),
            Subject::Email("ana@example.com".into())
        );
        for bad in [
            "",
            "slack:",
            "slack:u012",
            "slack:X012ABC",
            "slack:U0<script>",
            "ana",
            "ana@",
            "@example.com",
            "a@b@c.com",
            "ana @example.com",
            "ana@example",
            "\"ana\"@example.com",
        ] {
            assert!(Subject::parse(bad).is_err(), "{bad}");
        }
        assert!(Subject::parse(&format!("{}@example.com", "a".repeat(250))).is_err());
    }

    #[test]
    fn scrubbing_replaces_the_subject_and_names_beside_it() {
        let mut v = json!({
            "decision": {"user": {"id": "U012ABC", "name": "ana", "team": "T1"}},
            "text": "approved by <@U012ABC>",
            "other": {"id": "U999", "name": "bo"},
        });
        assert_eq!(scrub_json(&mut v, "U012ABC", false), 3);
        assert_eq!(v["decision"]["user"]["name"], ERASED);
        assert_eq!(v["decision"]["user"]["team"], "T1");
        assert_eq!(v["text"], format!("approved by <@{ERASED}>"));
        assert_eq!(v["other"]["name"], "bo");
        assert_eq!(
            scrub_text("Caller: Ana@Example.com.", "ana@example.com", true).unwrap(),
            format!("Caller: {ERASED}.")
        );
        assert!(scrub_text("nothing", "ana@example.com", true).is_none());
    }
}
