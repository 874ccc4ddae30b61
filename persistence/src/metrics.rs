//! The cheap grouped reads behind the scrape-time gauges: how many runs each tenant has in each
//! unfinished state, and when each tenant's oldest pending approval was requested. Both are
//! platform level, one statement each, and return nothing that names an incident.

use steward_core::TenantId;

use crate::{Store, StoreError, codec};

impl Store {
    /// How many runs each tenant has in each state not in `terminal_states`. Platform level.
    pub async fn run_state_counts(
        &self,
        terminal_states: &[&str],
    ) -> Result<Vec<(TenantId, String, i64)>, StoreError> {
        let placeholders: Vec<String> = (1..=terminal_states.len())
            .map(|i| format!("${i}"))
            .collect();
        let filter = if placeholders.is_empty() {
            String::new()
        } else {
            format!(" WHERE state NOT IN ({})", placeholders.join(", "))
        };
        let sql = format!(
            "SELECT tenant_id, state, COUNT(*) FROM runs{filter} GROUP BY tenant_id, state"
        );
        let mut query = sqlx::query_as::<_, (String, String, i64)>(&sql);
        for state in terminal_states {
            query = query.bind(*state);
        }
        let mut tx = self.read_platform().await?;
        let rows = query.fetch_all(&mut *tx).await?;
        rows.into_iter()
            .map(|(tenant, state, n)| Ok((codec::tenant_id(&tenant)?, state, n)))
            .collect()
    }

    /// For each tenant with a pending approval, when its oldest one was requested (Unix ms).
    /// Platform level.
    pub async fn oldest_pending_approvals(&self) -> Result<Vec<(TenantId, i64)>, StoreError> {
        let mut tx = self.read_platform().await?;
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT tenant_id, MIN(created_at) FROM approvals WHERE status = 'pending' \
             GROUP BY tenant_id",
        )
        .fetch_all(&mut *tx)
        .await?;
        rows.into_iter()
            .map(|(tenant, at)| Ok((codec::tenant_id(&tenant)?, at)))
            .collect()
    }
}
