//! The ServiceNow catch-up pass's durable state (migration 0014): per tenant, how far the pass
//! has read the instance's incident changes, and the questions it asks before starting a run.
//!
//! The watermark is the newest `sys_updated_on` dealt with (Unix ms, a whole second) plus the
//! sys_ids dealt with at exactly that second: ServiceNow keeps update times to the second, so
//! the next pass asks again from that second (`>=`) and skips those ids rather than risk
//! missing a change made later in the same second. It only moves forward: an older time is
//! ignored, the same second adds ids, a newer one replaces them.

use serde::Serialize;
use sqlx::FromRow;
use steward_core::{IncidentRef, RunId, SourceName};

use crate::{Store, StoreError, TenantScope, codec};

/// The most sys_ids a watermark keeps for its one second. A pass that meets more changes
/// within a single second than this fails rather than forget which it dealt with.
pub const MAX_WATERMARK_IDS: usize = 10_000;

/// How far a tenant's catch-up pass has read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CatchupWatermark {
    /// The newest `sys_updated_on` dealt with, in Unix ms (a whole second).
    pub updated_ms: i64,
    /// The sys_ids updated at exactly `updated_ms` that were dealt with, sorted.
    pub sys_ids: Vec<String>,
    /// When the watermark last moved (the store's clock, Unix ms).
    pub changed_at: i64,
}

impl CatchupWatermark {
    /// Whether the change of `sys_id` at `updated_ms` is at or behind the watermark, that is,
    /// was dealt with by an earlier page or pass.
    pub fn covers(&self, sys_id: &str, updated_ms: i64) -> bool {
        updated_ms < self.updated_ms
            || (updated_ms == self.updated_ms
                && self
                    .sys_ids
                    .binary_search_by(|s| s.as_str().cmp(sys_id))
                    .is_ok())
    }
}

/// Why an incident change needs no new run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Covered {
    /// A run for the incident was created at or after the change (a webhook got there first,
    /// or an earlier pass).
    ByRun(RunId),
    /// A run for the incident wrote to it at or after the change: the change is most likely
    /// Steward's own writeback.
    OwnWrite(RunId),
}

#[derive(FromRow)]
struct WatermarkRow {
    updated_ms: i64,
    sys_ids: String,
    changed_at: i64,
}

#[derive(FromRow)]
struct CoverRow {
    id: String,
    created_at: i64,
    written_at: Option<i64>,
}

impl Store {
    /// The tenant's catch-up watermark; None before its first pass.
    pub async fn catchup_watermark(
        &self,
        scope: &TenantScope,
    ) -> Result<Option<CatchupWatermark>, StoreError> {
        let mut tx = self.read_as(scope).await?;
        let row: Option<WatermarkRow> = sqlx::query_as(
            "SELECT updated_ms, sys_ids, changed_at FROM catchup_watermarks WHERE tenant_id = $1",
        )
        .bind(scope.id())
        .fetch_optional(&mut *tx)
        .await?;
        row.map(|r| {
            Ok(CatchupWatermark {
                updated_ms: r.updated_ms,
                sys_ids: codec::from_json(&r.sys_ids, "catch-up watermark ids")?,
                changed_at: r.changed_at,
            })
        })
        .transpose()
    }

    /// Moves the tenant's watermark forward to `updated_ms` with `sys_ids` dealt with at that
    /// second, and returns it as stored. A time older than the stored one changes nothing; the
    /// same second adds the ids to those kept. Each id must be a sys_id; at most
    /// [`MAX_WATERMARK_IDS`] are kept.
    pub async fn advance_catchup_watermark(
        &self,
        scope: &TenantScope,
        updated_ms: i64,
        sys_ids: &[String],
    ) -> Result<CatchupWatermark, StoreError> {
        if updated_ms < 0 {
            return Err(StoreError::Invalid(
                "a catch-up watermark cannot be before 1970".into(),
            ));
        }
        if let Some(bad) = sys_ids.iter().find(|s| IncidentRef::sys_id(s).is_none()) {
            return Err(StoreError::Invalid(format!(
                "`{}` is not a sys_id",
                codec::clip(bad)
            )));
        }
        let mut tx = self.begin_tenant_write(scope).await?;
        let current: Option<WatermarkRow> = sqlx::query_as(
            "SELECT updated_ms, sys_ids, changed_at FROM catchup_watermarks WHERE tenant_id = $1",
        )
        .bind(scope.id())
        .fetch_optional(&mut *tx)
        .await?;
        let mut ids: Vec<String> = match &current {
            Some(row) if row.updated_ms > updated_ms => {
                return Ok(CatchupWatermark {
                    updated_ms: row.updated_ms,
                    sys_ids: codec::from_json(&row.sys_ids, "catch-up watermark ids")?,
                    changed_at: row.changed_at,
                });
            }
            Some(row) if row.updated_ms == updated_ms => {
                codec::from_json(&row.sys_ids, "catch-up watermark ids")?
            }
            _ => Vec::new(),
        };
        ids.extend(sys_ids.iter().cloned());
        ids.sort();
        ids.dedup();
        if ids.len() > MAX_WATERMARK_IDS {
            return Err(StoreError::Invalid(format!(
                "more than {MAX_WATERMARK_IDS} incidents changed within one second"
            )));
        }
        let text = serde_json::to_string(&ids)
            .map_err(|e| StoreError::Invalid(format!("catch-up watermark ids: {e}")))?;
        let now = self.now();
        sqlx::query(
            "INSERT INTO catchup_watermarks (tenant_id, updated_ms, sys_ids, changed_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (tenant_id) DO UPDATE SET \
             updated_ms = excluded.updated_ms, sys_ids = excluded.sys_ids, \
             changed_at = excluded.changed_at",
        )
        .bind(scope.id())
        .bind(updated_ms)
        .bind(&text)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(CatchupWatermark {
            updated_ms,
            sys_ids: ids,
            changed_at: now,
        })
    }

    /// Whether a run of the tenant already covers the change of the incident (`sys_id`,
    /// `number`) at `updated_ms`: a run naming it (by sys_id or number, or whose fetched record
    /// has that number) created at or after the change, or one whose `written` step (recorded
    /// after its `PATCH` returned) is at or after it. Times are compared as the store's clock
    /// and ServiceNow's see them, so the two clocks are assumed to agree to well within a
    /// second; `updated_ms` is a whole second, so a change made in the second a run was
    /// created counts as covered by it.
    pub async fn catchup_covered(
        &self,
        scope: &TenantScope,
        sys_id: &str,
        number: &str,
        updated_ms: i64,
    ) -> Result<Option<Covered>, StoreError> {
        let mut tx = self.read_as(scope).await?;
        let rows: Vec<CoverRow> = sqlx::query_as(
            "SELECT r.id, r.created_at, \
             (SELECT MAX(s.at) FROM run_steps s WHERE s.tenant_id = r.tenant_id \
              AND s.run_id = r.id AND s.kind = 'written') AS written_at \
             FROM runs r WHERE r.tenant_id = $1 \
             AND (r.incident_value = $2 OR r.incident_value = $3 OR r.fetched_number = $3) \
             AND (r.created_at >= $4 OR EXISTS (SELECT 1 FROM run_steps w \
              WHERE w.tenant_id = r.tenant_id AND w.run_id = r.id AND w.kind = 'written' \
              AND w.at >= $4)) \
             ORDER BY r.created_at LIMIT 10",
        )
        .bind(scope.id())
        .bind(sys_id)
        .bind(number)
        .bind(updated_ms)
        .fetch_all(&mut *tx)
        .await?;
        for row in &rows {
            let id = codec::run_id(&row.id)?;
            if row.created_at >= updated_ms {
                return Ok(Some(Covered::ByRun(id)));
            }
            if row.written_at.is_some_and(|at| at >= updated_ms) {
                return Ok(Some(Covered::OwnWrite(id)));
            }
        }
        Ok(None)
    }

    /// The tenant's webhook source that catch-up runs are recorded under: the first by name;
    /// None when the tenant has none.
    pub async fn catchup_source(
        &self,
        scope: &TenantScope,
    ) -> Result<Option<SourceName>, StoreError> {
        let mut tx = self.read_as(scope).await?;
        let name: Option<String> = sqlx::query_scalar(
            "SELECT name FROM webhook_sources WHERE tenant_id = $1 ORDER BY name LIMIT 1",
        )
        .bind(scope.id())
        .fetch_optional(&mut *tx)
        .await?;
        name.as_deref().map(codec::source_name).transpose()
    }
}
