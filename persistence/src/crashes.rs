//! Crash snapshots: what a run actor was doing each time it failed, kept with the run for the
//! people who investigate it. Everything is redacted before it is written, so a snapshot never
//! carries a secret even when the run's state or the error text held one.

use serde::{Deserialize, Serialize};
use sqlx::FromRow;
use steward_core::RunId;

use crate::codec::{self, MAX_SNAPSHOT_BYTES};
use crate::content::{self, Column};
use crate::redact::{redact_json, redact_text};
use crate::{Store, StoreError, TenantScope};

/// The longest error text kept; longer text is cut, not refused, so a crash is always recorded.
const MAX_ERROR_CHARS: usize = 8 * 1024;
/// The longest step or message name kept.
const MAX_NAME_CHARS: usize = 128;

/// A crash to record.
#[derive(Clone, Debug, PartialEq)]
pub struct NewCrash {
    pub run_id: RunId,
    /// Which crash this is within the restart window, from 1.
    pub attempt: u32,
    /// How many journal steps the state covers.
    pub journal_offset: u32,
    /// The step the run was at (`triage`, `confirm`, …), or `unknown`.
    pub step: String,
    /// The message being handled (`advance`, `reload`, …).
    pub message: String,
    /// The error or panic text.
    pub error: String,
    /// The run's folded state as far as it was known.
    pub state: serde_json::Value,
}

/// A stored crash snapshot, redacted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CrashRecord {
    pub run_id: RunId,
    /// Position among the run's crashes, from 1.
    pub seq: u32,
    /// When it was recorded, Unix ms.
    pub at: i64,
    pub attempt: u32,
    pub journal_offset: u32,
    pub step: String,
    pub message: String,
    pub error: String,
    pub state: serde_json::Value,
}

#[derive(FromRow)]
struct CrashRow {
    run_id: String,
    seq: i64,
    at: i64,
    attempt: i64,
    journal_offset: i64,
    step: String,
    message: String,
    error: String,
    state: String,
}

/// The row a crash record's sealed columns are bound to.
pub(crate) fn crash_row(run: &str, seq: i64) -> String {
    format!("{run}/{seq}")
}

impl Store {
    async fn open_crash_row(&self, tenant: &str, row: CrashRow) -> Result<CrashRecord, StoreError> {
        let at = crash_row(&row.run_id, row.seq);
        let message = self
            .open_content(tenant, Column::CrashMessage, &at, &row.message)
            .await?;
        let error = self
            .open_content(tenant, Column::CrashError, &at, &row.error)
            .await?;
        let state = self
            .open_json(tenant, Column::CrashState, &at, &row.state)
            .await?;
        Ok(CrashRecord {
            run_id: codec::run_id(&row.run_id)?,
            seq: codec::to_u32(row.seq, "crash seq")?,
            at: row.at,
            attempt: codec::to_u32(row.attempt, "crash attempt")?,
            journal_offset: codec::to_u32(row.journal_offset, "crash journal offset")?,
            step: row.step,
            message,
            error,
            state,
        })
    }
}

/// The redacted columns of a crash, cut to the limits.
struct CrashColumns {
    step: String,
    message: String,
    error: String,
    state: String,
}

impl CrashColumns {
    fn of(crash: &NewCrash) -> Self {
        let mut state = crash.state.clone();
        redact_json(&mut state);
        let state =
            codec::json_text(&state, "crash state", MAX_SNAPSHOT_BYTES).unwrap_or_else(|e| {
                serde_json::json!({ "omitted": redact_text(&e.to_string()) }).to_string()
            });
        Self {
            step: name(&crash.step),
            message: name(&crash.message),
            error: cut(&redact_text(&crash.error), MAX_ERROR_CHARS),
            state,
        }
    }
}

/// A short one-line name: control characters dropped, cut, never empty.
fn name(text: &str) -> String {
    let clean: String = text.chars().filter(|c| !c.is_control()).collect();
    let clean = cut(&redact_text(&clean), MAX_NAME_CHARS);
    if clean.is_empty() {
        "unknown".into()
    } else {
        clean
    }
}

fn cut(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

impl Store {
    /// Records a crash snapshot of the scope's tenant's run, redacted; returns its seq. Text
    /// over the limits is cut and a state over 8 MiB is replaced by a note, so that a crash is
    /// always recorded. NotFound if the run is not the scope's tenant's.
    pub async fn record_crash(
        &self,
        scope: &TenantScope,
        crash: NewCrash,
    ) -> Result<u32, StoreError> {
        let columns = CrashColumns::of(&crash);
        let key = self.content_key(scope).await?;
        let mut tx = self.begin_write_as(scope).await?;
        // The run's row is locked (PostgreSQL) so two crash records of one run at once do not
        // both take the same `MAX + 1`; SQLite has one writer already.
        let lock = if self.is_postgres() {
            "SELECT steps FROM runs WHERE tenant_id = $1 AND id = $2 FOR UPDATE"
        } else {
            "SELECT steps FROM runs WHERE tenant_id = $1 AND id = $2"
        };
        let exists: Option<i64> = sqlx::query_scalar(lock)
            .bind(scope.id())
            .bind(crash.run_id.to_string())
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_none() {
            return Err(StoreError::NotFound(format!("run {}", crash.run_id)));
        }
        let last: Option<i64> = sqlx::query_scalar(
            "SELECT MAX(seq) FROM run_crashes WHERE tenant_id = $1 AND run_id = $2",
        )
        .bind(scope.id())
        .bind(crash.run_id.to_string())
        .fetch_one(&mut *tx)
        .await?;
        let seq = last.unwrap_or(0) + 1;
        let (tenant, at) = (scope.id(), crash_row(&crash.run_id.to_string(), seq));
        let message = content::seal(&key, tenant, Column::CrashMessage, &at, &columns.message);
        let error = content::seal(&key, tenant, Column::CrashError, &at, &columns.error);
        let state = content::seal(&key, tenant, Column::CrashState, &at, &columns.state);
        sqlx::query(
            "INSERT INTO run_crashes (tenant_id, run_id, seq, at, attempt, journal_offset, step, \
             message, error, state) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(scope.id())
        .bind(crash.run_id.to_string())
        .bind(seq)
        .bind(self.now())
        .bind(i64::from(crash.attempt))
        .bind(i64::from(crash.journal_offset))
        .bind(&columns.step)
        .bind(message)
        .bind(error)
        .bind(state)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        codec::to_u32(seq, "crash seq")
    }

    /// The run's crash snapshots, oldest first; empty for an unknown run or another tenant's.
    pub async fn crashes(
        &self,
        scope: &TenantScope,
        run: RunId,
    ) -> Result<Vec<CrashRecord>, StoreError> {
        let rows: Vec<CrashRow> = {
            let mut tx = self.read_as(scope).await?;
            sqlx::query_as(
                "SELECT run_id, seq, at, attempt, journal_offset, step, message, error, state \
                 FROM run_crashes WHERE tenant_id = $1 AND run_id = $2 ORDER BY seq",
            )
            .bind(scope.id())
            .bind(run.to_string())
            .fetch_all(&mut *tx)
            .await?
        };
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            out.push(self.open_crash_row(scope.id(), row).await?);
        }
        Ok(out)
    }
}
