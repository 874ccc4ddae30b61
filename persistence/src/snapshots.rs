//! Run snapshots: the fold of a run's journal at an offset, so a run can resume without
//! replaying its whole journal. One per run, the latest.

use steward_core::RunId;

use crate::codec::{self, MAX_SNAPSHOT_BYTES};
use crate::content::{self, Column};
use crate::{Store, StoreError, TenantScope};

impl Store {
    /// Saves the run's state as folded over its first `offset` steps. The offset may not
    /// exceed the journal's length (Conflict). A snapshot older than the stored one (a lower
    /// offset) is ignored, so a slow writer never rolls a snapshot back; an equal offset
    /// replaces it. At most 8 MiB as JSON.
    pub async fn save_snapshot(
        &self,
        scope: &TenantScope,
        run: RunId,
        offset: u32,
        state: &serde_json::Value,
    ) -> Result<(), StoreError> {
        let text = codec::json_text(state, "snapshot", MAX_SNAPSHOT_BYTES)?;
        let key = self.content_key(scope).await?;
        let row = snapshot_row(&run.to_string(), i64::from(offset));
        let text = content::seal(&key, scope.id(), Column::Snapshot, &row, &text);
        let mut tx = self.begin_write_as(scope).await?;
        let steps: Option<i64> =
            sqlx::query_scalar("SELECT steps FROM runs WHERE tenant_id = $1 AND id = $2")
                .bind(scope.id())
                .bind(run.to_string())
                .fetch_optional(&mut *tx)
                .await?;
        let steps = steps.ok_or_else(|| StoreError::NotFound(format!("run {run}")))?;
        if i64::from(offset) > steps {
            return Err(StoreError::Conflict(format!(
                "snapshot of run {run} at offset {offset} is past its {steps} steps"
            )));
        }
        sqlx::query(
            "INSERT INTO run_snapshots (tenant_id, run_id, journal_offset, state, saved_at) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (tenant_id, run_id) DO UPDATE \
             SET journal_offset = excluded.journal_offset, \
             state = excluded.state, saved_at = excluded.saved_at \
             WHERE run_snapshots.journal_offset <= excluded.journal_offset",
        )
        .bind(scope.id())
        .bind(run.to_string())
        .bind(i64::from(offset))
        .bind(text)
        .bind(self.now())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The run's latest snapshot: (offset, state).
    pub async fn snapshot(
        &self,
        scope: &TenantScope,
        run: RunId,
    ) -> Result<Option<(u32, serde_json::Value)>, StoreError> {
        let row: Option<(i64, String)> = {
            let mut tx = self.read_as(scope).await?;
            sqlx::query_as(
                "SELECT journal_offset, state FROM run_snapshots \
                 WHERE tenant_id = $1 AND run_id = $2",
            )
            .bind(scope.id())
            .bind(run.to_string())
            .fetch_optional(&mut *tx)
            .await?
        };
        let Some((offset, state)) = row else {
            return Ok(None);
        };
        let row = snapshot_row(&run.to_string(), offset);
        let state = self
            .open_json(scope.id(), Column::Snapshot, &row, &state)
            .await?;
        Ok(Some((codec::to_u32(offset, "snapshot offset")?, state)))
    }
}

/// The row a snapshot is bound to: the run at its journal offset, so an older snapshot cannot
/// be put back under a newer offset.
pub(crate) fn snapshot_row(run: &str, offset: i64) -> String {
    format!("{run}@{offset}")
}
