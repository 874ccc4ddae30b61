//! The cheap grouped reads behind the scrape-time gauges: how many runs each tenant has in each
//! unfinished state, and when each tenant's oldest pending approval was requested. Both are
//! platform level, one statement each, and return nothing that names an incident.

use steward_core::TenantId;

use crate::{Store, StoreError, codec};

impl Store {
    /// How many runs each tenant has in each of `states` (the unfinished ones, say); nothing
    /// for an empty list. Platform level. The runs are found through the index on state, so
    /// a read costs in proportion to the runs in those states, not to every run kept.
    pub async fn run_state_counts(
        &self,
        states: &[&str],
    ) -> Result<Vec<(TenantId, String, i64)>, StoreError> {
        if states.is_empty() {
            return Ok(vec![]);
        }
        let sql = state_counts_sql(states.len());
        let mut query = sqlx::query_as::<_, (String, String, i64)>(&sql);
        for state in states {
            query = query.bind(*state);
        }
        let mut tx = self.read_platform().await?;
        let rows = query.fetch_all(&mut *tx).await?;
        rows.into_iter()
            .map(|(tenant, state, n)| Ok((codec::tenant_id(&tenant)?, state, n)))
            .collect()
    }

    /// For each tenant with a pending approval, when its oldest one was requested (Unix ms).
    /// Platform level; read through the index of pending approvals alone.
    pub async fn oldest_pending_approvals(&self) -> Result<Vec<(TenantId, i64)>, StoreError> {
        let mut tx = self.read_platform().await?;
        let rows: Vec<(String, i64)> = sqlx::query_as(OLDEST_PENDING_SQL)
            .fetch_all(&mut *tx)
            .await?;
        rows.into_iter()
            .map(|(tenant, at)| Ok((codec::tenant_id(&tenant)?, at)))
            .collect()
    }
}

/// The read of [`Store::run_state_counts`] for `states` states.
fn state_counts_sql(states: usize) -> String {
    let placeholders: Vec<String> = (1..=states).map(|i| format!("${i}")).collect();
    format!(
        "SELECT tenant_id, state, COUNT(*) FROM runs WHERE state IN ({}) \
         GROUP BY tenant_id, state",
        placeholders.join(", ")
    )
}

/// The read of [`Store::oldest_pending_approvals`]; its condition is the one
/// `approvals_pending` (schema 19) holds.
const OLDEST_PENDING_SQL: &str = "SELECT tenant_id, MIN(created_at) FROM approvals \
     WHERE status = 'pending' GROUP BY tenant_id";

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `plan` reads some table whole (the index of pending approvals, which holds
    /// only those, is read whole on purpose).
    fn scans(plan: &[String]) -> bool {
        plan.iter()
            .any(|step| step.starts_with("SCAN ") && !step.contains("INDEX approvals_pending"))
    }

    #[tokio::test]
    async fn the_scrape_reads_find_their_rows_through_an_index() {
        let plan = Store::sqlite_plan(&state_counts_sql(6), 6).await;
        assert!(
            plan.iter()
                .any(|step| step.contains("USING INDEX runs_by_state (state=?)")),
            "{plan:?}"
        );
        assert!(!scans(&plan), "{plan:?}");

        let plan = Store::sqlite_plan(OLDEST_PENDING_SQL, 0).await;
        assert!(
            plan.iter().any(|step| step.contains("approvals_pending")),
            "{plan:?}"
        );
        assert!(!scans(&plan), "{plan:?}");
    }
}
