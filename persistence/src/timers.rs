//! Durable timers: a run's wake-ups (an approval reminder, an escalation, an approval timeout,
//! the end of a rate-limit window), kept with the run so they outlive the process. A run has at
//! most one timer of each kind; setting a kind again moves it.
//!
//! The timer service asks [`Store::due_timers`] for what is due. That call claims what it
//! returns, and a claim that the run did not consume (by clearing the timer) is handed out
//! again after [`CLAIM_LEASE_MS`], so a crash between the claim and the run's reaction loses
//! nothing. A run treats a timer as a hint to look at its journal, never as the fact itself, so
//! a timer handed out twice does no harm.

use serde::Serialize;
use sqlx::FromRow;
use steward_core::{RunId, TenantId};

use crate::codec;
use crate::content::{self, Column};
use crate::intake::Script;
use crate::store::WriteTx;
use crate::vault::DataKey;
use crate::{Store, StoreError, TenantScope};

/// How long a claimed timer stays with the claimant before it is handed out again.
pub const CLAIM_LEASE_MS: i64 = 60_000;

/// The largest timer payload kept, as JSON.
const MAX_PAYLOAD_BYTES: usize = 64 * 1024;

/// The most due timers one `due_timers` call returns.
const MAX_DUE: u32 = 1000;

/// A timer to set for a run, in the transaction of the step that needs it.
#[derive(Clone, Debug, PartialEq)]
pub struct NewTimer {
    /// What the timer is for (1–64 printable bytes); one timer per kind and run.
    pub kind: String,
    /// When it is due, Unix ms.
    pub due_at: i64,
    /// Facts the run wants back when it fires, at most 64 KiB as JSON.
    pub payload: serde_json::Value,
}

/// A timer as stored.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TimerRecord {
    pub tenant: TenantId,
    pub run_id: RunId,
    pub kind: String,
    /// When it is due, Unix ms.
    pub due_at: i64,
    pub payload: serde_json::Value,
    /// When a timer service last claimed it, Unix ms.
    pub claimed_at: Option<i64>,
}

#[derive(FromRow)]
struct TimerRow {
    tenant_id: String,
    run_id: String,
    kind: String,
    due_at: i64,
    payload: String,
    claimed_at: Option<i64>,
}

/// The row a timer's payload is bound to: the run's timer of a kind at its due time.
pub(crate) fn timer_row(run: &str, kind: &str, due_at: i64) -> String {
    format!("{run}/{kind}@{due_at}")
}

impl Store {
    /// The timer of `row`, its payload opened.
    async fn open_timer_row(&self, row: TimerRow) -> Result<TimerRecord, StoreError> {
        let at = timer_row(&row.run_id, &row.kind, row.due_at);
        let payload = self
            .open_json(&row.tenant_id, Column::TimerPayload, &at, &row.payload)
            .await?;
        Ok(TimerRecord {
            tenant: codec::tenant_id(&row.tenant_id)?,
            run_id: codec::run_id(&row.run_id)?,
            kind: row.kind,
            due_at: row.due_at,
            payload,
            claimed_at: row.claimed_at,
        })
    }
}

const TIMER_COLUMNS: &str = "tenant_id, run_id, kind, due_at, payload, claimed_at";

/// Checks a timer and encodes its payload.
fn timer_columns(timer: &NewTimer) -> Result<String, StoreError> {
    codec::check_text(&timer.kind, "timer kind", 64)?;
    if timer.due_at < 0 {
        return Err(StoreError::Invalid(format!(
            "timer due time {} is before 1970",
            timer.due_at
        )));
    }
    codec::json_text(&timer.payload, "timer payload", MAX_PAYLOAD_BYTES)
}

impl Store {
    /// Sets (or moves) the run's timer of `kind` to `due_at`, unclaimed. NotFound if the run is
    /// not the scope's tenant's.
    pub async fn set_timer(
        &self,
        scope: &TenantScope,
        run_id: RunId,
        kind: &str,
        due_at: i64,
        payload: &serde_json::Value,
    ) -> Result<(), StoreError> {
        let timer = NewTimer {
            kind: kind.to_owned(),
            due_at,
            payload: payload.clone(),
        };
        let payload = timer_columns(&timer)?;
        self.content_key(scope).await?;
        let mut tx = self.begin_write_as(scope).await?;
        let exists: Option<String> =
            sqlx::query_scalar("SELECT id FROM runs WHERE tenant_id = $1 AND id = $2")
                .bind(scope.id())
                .bind(run_id.to_string())
                .fetch_optional(&mut *tx)
                .await?;
        if exists.is_none() {
            return Err(StoreError::NotFound(format!("run {run_id}")));
        }
        self.upsert_timer_in(&mut tx, scope, run_id, &timer, &payload)
            .await?;
        tx.commit().await?;
        self.timers_changed();
        Ok(())
    }

    /// The run's timers, earliest first; empty for an unknown run or another tenant's.
    pub async fn timers(
        &self,
        scope: &TenantScope,
        run_id: RunId,
    ) -> Result<Vec<TimerRecord>, StoreError> {
        let sql = format!(
            "SELECT {TIMER_COLUMNS} FROM timers WHERE tenant_id = $1 AND run_id = $2 \
             ORDER BY due_at, kind"
        );
        let rows: Vec<TimerRow> = {
            let mut tx = self.read_one_as(scope).await?;
            sqlx::query_as(&sql)
                .bind(scope.id())
                .bind(run_id.to_string())
                .fetch_all(&mut *tx)
                .await?
        };
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            out.push(self.open_timer_row(row).await?);
        }
        Ok(out)
    }

    /// Removes the run's timer of `kind` if it is still due at `due_at` (a timer moved since it
    /// was read is left alone). Returns whether one was removed.
    pub async fn clear_timer(
        &self,
        scope: &TenantScope,
        run_id: RunId,
        kind: &str,
        due_at: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write_as(scope).await?;
        let done = sqlx::query(
            "DELETE FROM timers WHERE tenant_id = $1 AND run_id = $2 AND kind = $3 \
             AND due_at = $4",
        )
        .bind(scope.id())
        .bind(run_id.to_string())
        .bind(kind)
        .bind(due_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected() > 0)
    }

    /// Removes every timer of the run (it finished). Returns how many were removed.
    pub async fn clear_timers(
        &self,
        scope: &TenantScope,
        run_id: RunId,
    ) -> Result<u64, StoreError> {
        let mut tx = self.begin_write_as(scope).await?;
        let removed = clear_timers_in(&mut tx, scope, run_id).await?;
        tx.commit().await?;
        Ok(removed)
    }

    /// Claims and returns, earliest first, at most `limit` (capped at 1000) timers of every
    /// tenant that are due at `now` (Unix ms) and not claimed within the last
    /// [`CLAIM_LEASE_MS`]. Platform level: only the timer service calls it.
    pub async fn due_timers(&self, now: i64, limit: u32) -> Result<Vec<TimerRecord>, StoreError> {
        let limit = i64::from(limit.min(MAX_DUE));
        let mut tx = self.begin_platform_write().await?;
        // On PostgreSQL two timer services skip each other's claims instead of sharing them.
        let lock = if self.is_postgres() {
            " FOR UPDATE SKIP LOCKED"
        } else {
            ""
        };
        let sql = format!(
            "SELECT {TIMER_COLUMNS} FROM timers WHERE due_at <= $1 \
             AND (claimed_at IS NULL OR claimed_at <= $2) \
             ORDER BY due_at, tenant_id, run_id, kind LIMIT $3{lock}"
        );
        let mut rows: Vec<TimerRow> = sqlx::query_as(&sql)
            .bind(now)
            .bind(now - CLAIM_LEASE_MS)
            .bind(limit)
            .fetch_all(&mut *tx)
            .await?;
        for row in &mut rows {
            sqlx::query(
                "UPDATE timers SET claimed_at = $1 WHERE tenant_id = $2 AND run_id = $3 \
                 AND kind = $4",
            )
            .bind(now)
            .bind(&row.tenant_id)
            .bind(&row.run_id)
            .bind(&row.kind)
            .execute(&mut *tx)
            .await?;
            row.claimed_at = Some(now);
        }
        tx.commit().await?;
        // Opened after the commit: the claim does not wait on reading data keys. A payload
        // that does not open fails the call; its timer stays claimed until the lease ends.
        let mut due = Vec::with_capacity(rows.len());
        for row in rows {
            due.push(self.open_timer_row(row).await?);
        }
        Ok(due)
    }

    /// When the next timer of any tenant can be claimed, Unix ms: its due time, or for a
    /// claimed one the end of its lease. None when there are no timers. Platform level.
    pub async fn next_timer_at(&self) -> Result<Option<i64>, StoreError> {
        let mut tx = self.read_platform().await?;
        let next: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(CASE WHEN claimed_at IS NULL THEN due_at \
             WHEN claimed_at + $1 > due_at THEN claimed_at + $1 ELSE due_at END) FROM timers",
        )
        .bind(CLAIM_LEASE_MS)
        .fetch_one(&mut *tx)
        .await?;
        Ok(next)
    }

    /// Waits until a timer was set through this store handle (or one of its clones) since the
    /// last wait returned. A timer set before the wait began ends it at once.
    pub async fn timer_set(&self) {
        self.timer_signal().notified().await;
    }

    /// Tells the waiter in [`Store::timer_set`] that the timers changed.
    pub(crate) fn timers_changed(&self) {
        self.timer_signal().notify_one();
    }

    /// Sets a timer inside a step's transaction.
    pub(crate) async fn set_timer_in(
        &self,
        tx: &mut WriteTx,
        scope: &TenantScope,
        run_id: RunId,
        timer: &NewTimer,
    ) -> Result<(), StoreError> {
        let payload = timer_columns(timer)?;
        self.upsert_timer_in(tx, scope, run_id, timer, &payload)
            .await
    }

    async fn upsert_timer_in(
        &self,
        tx: &mut WriteTx,
        scope: &TenantScope,
        run_id: RunId,
        timer: &NewTimer,
        payload: &str,
    ) -> Result<(), StoreError> {
        let key = self.content_key_in(tx, scope).await?;
        let run = run_id.to_string();
        let mut script = Script::numbered();
        push_timer(&mut script, &key, scope, &run, timer, payload, self.now())?;
        script.execute(tx).await?;
        Ok(())
    }
}

/// Checks a timer and appends to `script` the upsert that sets (or moves) it, unclaimed, its
/// payload sealed with `key`. It changes one row.
pub(crate) fn push_checked_timer<'q>(
    script: &mut Script<'q>,
    key: &DataKey,
    scope: &'q TenantScope,
    run: &'q str,
    timer: &'q NewTimer,
    now: i64,
) -> Result<(), StoreError> {
    let payload = timer_columns(timer)?;
    push_timer(script, key, scope, run, timer, &payload, now)
}

fn push_timer<'q>(
    script: &mut Script<'q>,
    key: &DataKey,
    scope: &'q TenantScope,
    run: &'q str,
    timer: &'q NewTimer,
    payload: &str,
    now: i64,
) -> Result<(), StoreError> {
    let at = timer_row(run, &timer.kind, timer.due_at);
    let payload = content::seal(key, scope.id(), Column::TimerPayload, &at, payload);
    script.statement(
        "INSERT INTO timers (tenant_id, run_id, kind, due_at, payload, claimed_at, \
         created_at) VALUES (?, ?, ?, ?, ?, NULL, ?) \
         ON CONFLICT (tenant_id, run_id, kind) DO UPDATE \
         SET due_at = excluded.due_at, payload = excluded.payload, claimed_at = NULL",
    );
    script.bind(scope.id())?;
    script.bind(run)?;
    script.bind(timer.kind.as_str())?;
    script.bind(timer.due_at)?;
    script.bind(payload)?;
    script.bind(now)
}

/// Removes every timer of the run inside `tx` (for [`Store::clear_timers`], and for a step
/// that ends its run). Returns how many were removed.
pub(crate) async fn clear_timers_in(
    tx: &mut WriteTx,
    scope: &TenantScope,
    run_id: RunId,
) -> Result<u64, StoreError> {
    let mut script = Script::numbered();
    push_clear_timers(&mut script, scope, run_id)?;
    Ok(script.rows_affected(tx).await?)
}

/// Appends to `script` the delete of every timer of the run.
pub(crate) fn push_clear_timers<'q>(
    script: &mut Script<'q>,
    scope: &'q TenantScope,
    run_id: RunId,
) -> Result<(), StoreError> {
    script.statement("DELETE FROM timers WHERE tenant_id = ? AND run_id = ?");
    script.bind(scope.id())?;
    script.bind(run_id.to_string())
}
