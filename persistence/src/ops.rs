//! What the operator tools read: a run found by its id alone, runs listed across tenants with
//! filters, the runs that wait, and a run's audit entries. The cross-tenant calls are platform
//! level (their callers hold the operator token); the per-run ones take a [`TenantScope`].

use serde::Serialize;
use sqlx::FromRow;
use steward_core::{ApprovalId, IncidentRef, RunId, SourceName, TenantId};

use crate::audit::AuditRow;
use crate::codec;
use crate::runs::{RUN_COLUMNS, RunRow};
use crate::{AuditEntry, RunRecord, Store, StoreError, TenantScope};

/// The most runs one [`Store::find_runs`] call returns.
const MAX_FIND: u32 = 500;
/// The most audit entries [`Store::run_audit`] returns.
const MAX_RUN_AUDIT: i64 = 2000;
/// The most states one filter may name.
const MAX_STATES: usize = 16;

/// Which runs [`Store::find_runs`] returns. Every part is optional; parts combine with AND.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunFilter {
    pub tenant: Option<TenantId>,
    /// Any of these states.
    pub states: Vec<String>,
    /// The webhook source; [`RunFilter::NO_SOURCE`] selects runs started through the API.
    pub source: Option<String>,
    /// Created at or after, Unix ms.
    pub since: Option<i64>,
    /// Created before, Unix ms.
    pub until: Option<i64>,
    /// The incident number (as the trigger named it or as the run read it).
    pub number: Option<String>,
    /// Only runs older than this one (for paging).
    pub before: Option<RunId>,
    /// At most this many (capped at 500).
    pub limit: u32,
}

impl RunFilter {
    /// The `source` value that selects runs without a webhook source.
    pub const NO_SOURCE: &'static str = "api";

    /// Checks the filter's values before any query is built from them.
    pub fn check(&self) -> Result<(), StoreError> {
        if self.states.len() > MAX_STATES {
            return Err(StoreError::Invalid(format!(
                "at most {MAX_STATES} states may be named"
            )));
        }
        for state in &self.states {
            codec::check_text(state, "state", 64)?;
        }
        if let Some(source) = &self.source
            && source != Self::NO_SOURCE
        {
            SourceName::parse(source).map_err(|e| StoreError::Invalid(format!("source: {e}")))?;
        }
        if let Some(number) = &self.number
            && IncidentRef::number(number).is_none()
        {
            return Err(StoreError::Invalid(
                "number must be letters then digits, such as INC0010001".into(),
            ));
        }
        if let (Some(since), Some(until)) = (self.since, self.until)
            && since > until
        {
            return Err(StoreError::Invalid("since is after until".into()));
        }
        Ok(())
    }
}

/// A run waiting outside any actor, and what it waits on.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WaitingRun {
    pub tenant: TenantId,
    pub run_id: RunId,
    pub state: String,
    /// Since when, Unix ms (the run's last step).
    pub since: i64,
    /// The pending approval it waits for, if any.
    pub approval_id: Option<ApprovalId>,
    /// The Slack channel of that approval's message, once posted.
    pub channel: Option<String>,
}

#[derive(FromRow)]
struct WaitingRow {
    tenant_id: String,
    id: String,
    state: String,
    updated_at: i64,
    approval_id: Option<String>,
    channel: Option<String>,
}

impl TryFrom<WaitingRow> for WaitingRun {
    type Error = StoreError;
    fn try_from(row: WaitingRow) -> Result<Self, StoreError> {
        Ok(WaitingRun {
            tenant: codec::tenant_id(&row.tenant_id)?,
            run_id: codec::run_id(&row.id)?,
            state: row.state,
            since: row.updated_at,
            approval_id: row
                .approval_id
                .as_deref()
                .map(codec::approval_id)
                .transpose()?,
            channel: row.channel,
        })
    }
}

/// Binds built up alongside a query's text.
enum Bind {
    Text(String),
    Int(i64),
}

struct Query {
    clauses: Vec<String>,
    binds: Vec<Bind>,
}

impl Query {
    fn new() -> Self {
        Self {
            clauses: vec![],
            binds: vec![],
        }
    }

    /// The next placeholder, `$n`.
    fn next(&self) -> String {
        format!("${}", self.binds.len() + 1)
    }

    fn text(&mut self, clause: impl FnOnce(&str) -> String, value: String) {
        let p = self.next();
        self.clauses.push(clause(&p));
        self.binds.push(Bind::Text(value));
    }

    fn int(&mut self, clause: impl FnOnce(&str) -> String, value: i64) {
        let p = self.next();
        self.clauses.push(clause(&p));
        self.binds.push(Bind::Int(value));
    }

    fn filter(f: &RunFilter) -> Self {
        let mut q = Query::new();
        if let Some(t) = &f.tenant {
            q.text(|p| format!("tenant_id = {p}"), t.as_str().to_owned());
        }
        if !f.states.is_empty() {
            let first = q.binds.len() + 1;
            let places: Vec<String> = (0..f.states.len())
                .map(|i| format!("${}", first + i))
                .collect();
            q.clauses.push(format!("state IN ({})", places.join(", ")));
            q.binds.extend(f.states.iter().cloned().map(Bind::Text));
        }
        match f.source.as_deref() {
            Some(RunFilter::NO_SOURCE) => q.clauses.push("source IS NULL".into()),
            Some(s) => q.text(|p| format!("source = {p}"), s.to_owned()),
            None => {}
        }
        if let Some(since) = f.since {
            q.int(|p| format!("created_at >= {p}"), since);
        }
        if let Some(until) = f.until {
            q.int(|p| format!("created_at < {p}"), until);
        }
        if let Some(number) = &f.number {
            q.number(number);
        }
        if let Some(before) = f.before {
            q.text(|p| format!("id < {p}"), before.to_string());
        }
        q
    }

    /// The trigger named the number, or the run read an incident with that number (kept in
    /// clear as `runs.fetched_number` when that step is written: step bodies are sealed). The
    /// number is checked to be letters and digits.
    fn number(&mut self, number: &str) {
        let (a, b) = (self.next(), format!("${}", self.binds.len() + 2));
        self.clauses.push(format!(
            "((incident_by = 'number' AND incident_value = {a}) OR fetched_number = {b})"
        ));
        self.binds.push(Bind::Text(number.to_owned()));
        self.binds.push(Bind::Text(number.to_owned()));
    }

    fn where_clause(&self) -> String {
        if self.clauses.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", self.clauses.join(" AND "))
        }
    }
}

impl Store {
    /// The tenant whose run this is, or None. Platform level: run ids are unique across
    /// tenants (UUIDv7), and a second tenant holding the same id is reported as corrupt.
    pub async fn run_tenant(&self, run: RunId) -> Result<Option<TenantId>, StoreError> {
        let mut tx = self.read_platform().await?;
        let rows: Vec<String> =
            sqlx::query_scalar("SELECT tenant_id FROM runs WHERE id = $1 LIMIT 2")
                .bind(run.to_string())
                .fetch_all(&mut *tx)
                .await?;
        match rows.as_slice() {
            [] => Ok(None),
            [tenant] => Ok(Some(codec::tenant_id(tenant)?)),
            _ => Err(StoreError::Corrupt(format!(
                "run {run} is recorded for more than one tenant"
            ))),
        }
    }

    /// Runs of every tenant that match `filter`, newest first. Platform level.
    pub async fn find_runs(&self, filter: &RunFilter) -> Result<Vec<RunRecord>, StoreError> {
        filter.check()?;
        let mut q = Query::filter(filter);
        let limit = i64::from(filter.limit.clamp(1, MAX_FIND));
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM runs{} ORDER BY id DESC LIMIT {}",
            q.where_clause(),
            q.next()
        );
        q.binds.push(Bind::Int(limit));
        let mut query = sqlx::query_as::<_, RunRow>(&sql);
        for bind in q.binds {
            query = match bind {
                Bind::Text(t) => query.bind(t),
                Bind::Int(i) => query.bind(i),
            };
        }
        let rows = {
            let mut tx = self.read_platform().await?;
            query.fetch_all(&mut *tx).await?
        };
        self.open_run_rows(rows).await
    }

    /// Every run, of every tenant, in one of `states`, with the pending approval it waits for:
    /// the runs that wait without a live actor. Oldest first. Platform level.
    pub async fn waiting_runs(&self, states: &[&str]) -> Result<Vec<WaitingRun>, StoreError> {
        if states.is_empty() {
            return Ok(vec![]);
        }
        let places: Vec<String> = (1..=states.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT r.tenant_id, r.id, r.state, r.updated_at, a.id AS approval_id, a.channel \
             FROM runs r LEFT JOIN approvals a ON a.tenant_id = r.tenant_id \
             AND a.run_id = r.id AND a.status = 'pending' \
             WHERE r.state IN ({}) ORDER BY r.tenant_id, r.id",
            places.join(", ")
        );
        let mut query = sqlx::query_as::<_, WaitingRow>(&sql);
        for state in states {
            query = query.bind(*state);
        }
        let mut tx = self.read_platform().await?;
        let rows = query.fetch_all(&mut *tx).await?;
        rows.into_iter().map(WaitingRun::try_from).collect()
    }

    /// The audit entries about the scope's tenant's run, in chain order (at most 2000).
    pub async fn run_audit(
        &self,
        scope: &TenantScope,
        run: RunId,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let rows: Vec<AuditRow> = {
            let mut tx = self.read_as(scope).await?;
            sqlx::query_as(RUN_AUDIT_SQL)
                .bind(scope.id())
                .bind(run.to_string())
                .bind(MAX_RUN_AUDIT)
                .fetch_all(&mut *tx)
                .await?
        };
        self.open_audit_rows(rows).await
    }
}

/// A run's audit entries in chain order. `audit_log_by_run` (run, tenant, seq) serves it
/// whole: the run's few entries, already in order, never the tenant's whole chain.
const RUN_AUDIT_SQL: &str = "SELECT tenant_id, seq, at, kind, run_id, actor, body, prev_hash, \
     hash FROM audit_log WHERE tenant_id = $1 AND run_id = $2 ORDER BY seq LIMIT $3";

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_runs_audit_entries_are_read_through_the_index_on_the_run_in_order() {
        let plan = Store::sqlite_plan(RUN_AUDIT_SQL, 3).await;
        assert!(
            plan.iter().any(
                |step| step.contains("USING INDEX audit_log_by_run (run_id=? AND tenant_id=?)")
            ),
            "{plan:?}"
        );
        assert!(
            !plan.iter().any(|step| step.contains("TEMP B-TREE")),
            "no sort: {plan:?}"
        );
    }
}
