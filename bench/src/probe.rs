//! A read-only look into a Steward database from outside the server, to see how far runs have
//! got: counts of runs by their stored `state` and by when they were last `updated_at`. The
//! store has no platform-level query for this, so the benchmark reads the `runs` table itself
//! (on a `query_only` connection, as the store's own readers do).

use std::collections::BTreeMap;
use std::path::Path;

use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use steward_actors::states;

/// A `query_only` connection to a Steward database.
pub(crate) struct Probe {
    pool: SqlitePool,
}

impl Probe {
    /// Opens `path`, which must exist.
    pub(crate) async fn open(path: &Path) -> anyhow::Result<Self> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .pragma("query_only", "ON");
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await?;
        Ok(Self { pool })
    }

    /// How many runs are in each state.
    pub(crate) async fn states(&self) -> anyhow::Result<BTreeMap<String, u64>> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, count(*) FROM runs GROUP BY state")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .into_iter()
            .map(|(state, n)| (state, u64::try_from(n).unwrap_or(0)))
            .collect())
    }

    /// How many runs are in `state`.
    pub(crate) async fn in_state(&self, state: &str) -> anyhow::Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM runs WHERE state = $1")
            .bind(state)
            .fetch_one(&self.pool)
            .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Runs neither finished nor waiting for approval that have recorded nothing since
    /// `since_ms` (Unix ms): the ones a restart has not set moving yet.
    pub(crate) async fn unmoved(&self, since_ms: i64) -> anyhow::Result<u64> {
        let mut sql =
            String::from("SELECT count(*) FROM runs WHERE updated_at < $1 AND state NOT IN ($2");
        let parked: Vec<&str> = std::iter::once(states::AWAITING_APPROVAL)
            .chain(states::TERMINAL.iter().copied())
            .collect();
        for i in 1..parked.len() {
            sql.push_str(&format!(", ${}", i + 2));
        }
        sql.push(')');
        let mut query = sqlx::query_scalar::<_, i64>(&sql).bind(since_ms);
        for state in parked {
            query = query.bind(state);
        }
        let n = query.fetch_one(&self.pool).await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Closes the connection.
    pub(crate) async fn close(self) {
        self.pool.close().await;
    }
}

/// Runs that are neither finished nor waiting for approval, from a count by state.
pub(crate) fn moving(states_count: &BTreeMap<String, u64>) -> u64 {
    states_count
        .iter()
        .filter(|(s, _)| *s != states::AWAITING_APPROVAL && !states::is_terminal(s))
        .map(|(_, n)| n)
        .sum()
}
