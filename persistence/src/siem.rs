//! Streaming a tenant's audit entries to its SIEM: the stream's settings and its durable
//! cursor. The cursor is the last seq the SIEM acknowledged; it only moves forward and never
//! past the chain's head, so a streamer that restarts sends again from the entry after it
//! (at-least-once, each batch under a stable id). The signing secret is a sealed secret named
//! [`SIEM_SECRET`]; this table holds no secret.

use serde::Serialize;
use sqlx::FromRow;
use steward_core::TenantId;

use crate::audit::AuditDraft;
use crate::{Store, StoreError, TenantScope, codec};

/// The vault name of a tenant's SIEM signing secret (`whsec_…`).
pub const SIEM_SECRET: &str = "siem_signing_secret";
/// The longest SIEM URL stored.
pub const MAX_SIEM_URL_BYTES: usize = 2048;
/// The longest delivery error kept; a longer one is cut at a character boundary.
const MAX_ERROR_BYTES: usize = 512;

/// How delivery to a tenant's SIEM is going.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SiemState {
    /// The last attempt succeeded, or none failed since the stream was configured.
    Active,
    /// The last attempt failed; delivery keeps being retried.
    Failing,
}

impl SiemState {
    fn as_str(self) -> &'static str {
        match self {
            SiemState::Active => "active",
            SiemState::Failing => "failing",
        }
    }

    fn parse(text: &str) -> Result<Self, StoreError> {
        match text {
            "active" => Ok(SiemState::Active),
            "failing" => Ok(SiemState::Failing),
            other => Err(StoreError::Corrupt(format!(
                "siem stream state `{other}` is unknown"
            ))),
        }
    }
}

/// One tenant's SIEM stream, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SiemStream {
    pub tenant: TenantId,
    /// Where batches are posted.
    pub url: String,
    pub state: SiemState,
    /// The last seq the SIEM acknowledged with a 2xx; 0 before the first.
    pub delivered_seq: u64,
    /// The last seq of the batch being sent, when it is past `delivered_seq`: a retry sends
    /// exactly `delivered_seq + 1..=pending_seq` again, under the same id.
    pub pending_seq: Option<u64>,
    /// Why the last attempt failed, while the stream is failing.
    pub last_error: Option<String>,
    /// Attempts that failed since the last success.
    pub failures: u64,
    /// Unix ms of the last attempt, successful or not.
    pub last_attempt_at: Option<i64>,
    /// Unix ms of the last acknowledged batch.
    pub last_delivered_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(FromRow)]
struct StreamRow {
    tenant_id: String,
    url: String,
    state: String,
    delivered_seq: i64,
    pending_seq: i64,
    last_error: Option<String>,
    failures: i64,
    last_attempt_at: Option<i64>,
    last_delivered_at: Option<i64>,
    created_at: i64,
    updated_at: i64,
}

impl TryFrom<StreamRow> for SiemStream {
    type Error = StoreError;

    fn try_from(r: StreamRow) -> Result<Self, StoreError> {
        let delivered_seq = codec::to_u64(r.delivered_seq, "siem delivered_seq")?;
        let pending_seq = codec::to_u64(r.pending_seq, "siem pending_seq")?;
        Ok(SiemStream {
            tenant: codec::tenant_id(&r.tenant_id)?,
            url: r.url,
            state: SiemState::parse(&r.state)?,
            delivered_seq,
            pending_seq: (pending_seq > delivered_seq).then_some(pending_seq),
            last_error: r.last_error,
            failures: codec::to_u64(r.failures, "siem failures")?,
            last_attempt_at: r.last_attempt_at,
            last_delivered_at: r.last_delivered_at,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

const COLUMNS: &str = "tenant_id, url, state, delivered_seq, pending_seq, last_error, failures, \
                       last_attempt_at, last_delivered_at, created_at, updated_at";

/// `text` cut to at most [`MAX_ERROR_BYTES`] at a character boundary, controls replaced.
fn clip_error(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_ERROR_BYTES));
    for c in text.chars() {
        if out.len() + c.len_utf8() > MAX_ERROR_BYTES {
            break;
        }
        out.push(if c.is_control() { ' ' } else { c });
    }
    out
}

impl Store {
    /// Points the scope's tenant's SIEM stream at `url`, creating it with its cursor at 0 or
    /// keeping the cursor of the one it replaces (a new URL or a rotated secret resumes where
    /// delivery stopped). Audits `siem.configured` (the URL and the secret version, never the
    /// secret) in the same transaction, as `actor`. Invalid when the URL is empty, longer than
    /// [`MAX_SIEM_URL_BYTES`] or not printable ASCII; the caller checks it is allowed.
    pub async fn put_siem_stream(
        &self,
        scope: &TenantScope,
        url: &str,
        secret_version: u32,
        actor: &str,
    ) -> Result<SiemStream, StoreError> {
        let printable = url.bytes().all(|b| b.is_ascii_graphic());
        if url.is_empty() || url.len() > MAX_SIEM_URL_BYTES || !printable {
            return Err(StoreError::Invalid(format!(
                "the SIEM URL must be 1 to {MAX_SIEM_URL_BYTES} printable ASCII characters"
            )));
        }
        let now = self.now();
        let mut tx = self.begin_tenant_write(scope).await?;
        sqlx::query(
            "INSERT INTO siem_streams (tenant_id, url, state, delivered_seq, failures, \
             created_at, updated_at) VALUES ($1, $2, 'active', 0, 0, $3, $3) \
             ON CONFLICT (tenant_id) DO UPDATE SET url = excluded.url, state = 'active', \
             last_error = NULL, failures = 0, updated_at = excluded.updated_at",
        )
        .bind(scope.id())
        .bind(url)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let draft = AuditDraft {
            kind: "siem.configured".into(),
            run_id: None,
            actor: actor.into(),
            body: serde_json::json!({ "url": url, "secret_version": secret_version }),
        };
        self.append_audit_in(&mut tx, scope, &draft).await?;
        tx.commit().await?;
        self.siem_stream(scope)
            .await?
            .ok_or_else(|| StoreError::NotFound("the SIEM stream just stored".into()))
    }

    /// The scope's tenant's SIEM stream, if one is configured.
    pub async fn siem_stream(&self, scope: &TenantScope) -> Result<Option<SiemStream>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM siem_streams WHERE tenant_id = $1");
        let mut tx = self.read_as(scope).await?;
        let row: Option<StreamRow> = sqlx::query_as(&sql)
            .bind(scope.id())
            .fetch_optional(&mut *tx)
            .await?;
        row.map(SiemStream::try_from).transpose()
    }

    /// Stops the scope's tenant's SIEM stream, auditing `siem.removed` as `actor`; false when
    /// none was configured (nothing is audited then). Its signing secret stays sealed in the
    /// vault, unused.
    pub async fn delete_siem_stream(
        &self,
        scope: &TenantScope,
        actor: &str,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_tenant_write(scope).await?;
        let gone: Option<i64> = sqlx::query_scalar(
            "DELETE FROM siem_streams WHERE tenant_id = $1 RETURNING delivered_seq",
        )
        .bind(scope.id())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(delivered) = gone else {
            return Ok(false);
        };
        let draft = AuditDraft {
            kind: "siem.removed".into(),
            run_id: None,
            actor: actor.into(),
            body: serde_json::json!({ "delivered_seq": delivered }),
        };
        self.append_audit_in(&mut tx, scope, &draft).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Records that the SIEM acknowledged every entry through `through_seq`: the cursor moves
    /// there, the stream is active again and its failures are cleared. The cursor never moves
    /// back: false (and no change) when it is already at or past `through_seq`, or when no
    /// stream is configured. Invalid when `through_seq` is past the chain's head.
    pub async fn advance_siem_cursor(
        &self,
        scope: &TenantScope,
        through_seq: u64,
    ) -> Result<bool, StoreError> {
        let through = codec::to_i64(through_seq, "siem cursor")?;
        let mut tx = self.begin_tenant_write(scope).await?;
        refuse_past_head(&mut tx, scope, through, "the SIEM cursor cannot move to").await?;
        let now = self.now();
        let moved = sqlx::query(
            "UPDATE siem_streams SET delivered_seq = $1, state = 'active', last_error = NULL, \
             failures = 0, last_attempt_at = $2, last_delivered_at = $2, updated_at = $2 \
             WHERE tenant_id = $3 AND delivered_seq < $1",
        )
        .bind(through)
        .bind(now)
        .bind(scope.id())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(moved.rows_affected() == 1)
    }

    /// Records that a batch ending at `through_seq` is about to be sent, so that until it is
    /// acknowledged every retry sends the same batch. Only a batch just past the cursor is
    /// recorded: false (and no change) when `through_seq` is not past the cursor, another batch
    /// is already pending, or no stream is configured. Invalid past the chain's head.
    pub async fn set_siem_pending(
        &self,
        scope: &TenantScope,
        through_seq: u64,
    ) -> Result<bool, StoreError> {
        let through = codec::to_i64(through_seq, "siem pending seq")?;
        let mut tx = self.begin_tenant_write(scope).await?;
        refuse_past_head(&mut tx, scope, through, "the SIEM batch cannot end at").await?;
        let set = sqlx::query(
            "UPDATE siem_streams SET pending_seq = $1, updated_at = $2 \
             WHERE tenant_id = $3 AND delivered_seq < $1 AND pending_seq <= delivered_seq",
        )
        .bind(through)
        .bind(self.now())
        .bind(scope.id())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(set.rows_affected() == 1)
    }

    /// Records a failed delivery attempt: one more failure, the reason (clipped to 512 bytes)
    /// and the stream marked [`SiemState::Failing`]. The cursor does not move. False when no
    /// stream is configured.
    pub async fn note_siem_failure(
        &self,
        scope: &TenantScope,
        error: &str,
    ) -> Result<bool, StoreError> {
        let now = self.now();
        let mut tx = self.begin_tenant_write(scope).await?;
        let noted = sqlx::query(
            "UPDATE siem_streams SET state = $1, last_error = $2, failures = failures + 1, \
             last_attempt_at = $3, updated_at = $3 WHERE tenant_id = $4",
        )
        .bind(SiemState::Failing.as_str())
        .bind(clip_error(error))
        .bind(now)
        .bind(scope.id())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(noted.rows_affected() == 1)
    }

    /// Every tenant with a SIEM stream whose tenant is not offboarded, by id. Platform level:
    /// the streamer's list of whom to follow.
    pub async fn siem_tenants(&self) -> Result<Vec<TenantId>, StoreError> {
        let mut tx = self.read_platform().await?;
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT s.tenant_id FROM siem_streams s JOIN tenants t ON t.id = s.tenant_id \
             WHERE t.offboarded_at IS NULL ORDER BY s.tenant_id LIMIT 10000",
        )
        .fetch_all(&mut *tx)
        .await?;
        ids.iter().map(|id| codec::tenant_id(id)).collect()
    }

    /// The seq of the scope's tenant's latest audit entry; 0 for an empty chain.
    pub async fn audit_head_seq(&self, scope: &TenantScope) -> Result<u64, StoreError> {
        let mut tx = self.read_as(scope).await?;
        let head: Option<i64> =
            sqlx::query_scalar("SELECT MAX(seq) FROM audit_log WHERE tenant_id = $1")
                .bind(scope.id())
                .fetch_one(&mut *tx)
                .await?;
        codec::to_u64(head.unwrap_or(0), "audit seq")
    }
}

/// Invalid when `seq` lies past the tenant's chain head, read in the write transaction `tx`.
async fn refuse_past_head(
    tx: &mut crate::store::WriteTx,
    scope: &TenantScope,
    seq: i64,
    what: &str,
) -> Result<(), StoreError> {
    let head: Option<i64> =
        sqlx::query_scalar("SELECT MAX(seq) FROM audit_log WHERE tenant_id = $1")
            .bind(scope.id())
            .fetch_one(&mut **tx)
            .await?;
    if seq > head.unwrap_or(0) {
        return Err(StoreError::Invalid(format!(
            "{what} seq {seq}, past the chain's head"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_clipped_at_a_character_boundary_without_controls() {
        let long = "é".repeat(400);
        let clipped = clip_error(&long);
        assert!(clipped.len() <= MAX_ERROR_BYTES);
        assert!(clipped.chars().all(|c| c == 'é'));
        assert_eq!(clip_error("a\nb\u{7}"), "a b ");
    }
}
