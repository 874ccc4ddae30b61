//! Intake: a new run, its first step, its first audit entry and the delivery that caused it,
//! committed together, so a delivery seen once is seen forever (until purged) and a retry or a
//! replay names the existing run instead of starting another.

use std::collections::HashMap;

use steward_core::{IncidentRef, RunId, SourceName};

use crate::codec::{self, MAX_DOCUMENT_BYTES};
use crate::content::{self, Column};
use crate::runs::{check_state, fetched_number, insert_step, step_columns, step_row};
use crate::store::WriteTx;
use crate::vault::DataKey;
use crate::{AuditDraft, Store, StoreError, TenantScope};

/// The longest delivery id accepted.
const MAX_DELIVERY_ID_BYTES: usize = 256;

/// A run to create.
#[derive(Clone, Debug, PartialEq)]
pub struct NewRun {
    pub id: RunId,
    /// The webhook source that delivered the trigger, if any.
    pub source: Option<SourceName>,
    /// The sender's delivery id (1–256 printable bytes), unique per tenant and source. A run
    /// with no source may still carry one (an API idempotency key, say); it is then unique
    /// among the tenant's source-less runs.
    pub delivery_id: Option<String>,
    /// The incident change the run is for, when the trigger names it (`{sys_id}@{unix ms}` of
    /// its `sys_updated_on`): unique per tenant across every source, so a webhook delivered
    /// after the catch-up pass started a run for its change (or the other way round) is a
    /// `Duplicate` of that run.
    pub change: Option<String>,
    pub incident: IncidentRef,
    /// The trigger as received, at most 1 MiB as JSON.
    pub trigger: serde_json::Value,
    pub state: String,
    /// Step 0: (kind, body).
    pub first_step: (String, serde_json::Value),
    pub audit: AuditDraft,
}

/// What intake did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntakeOutcome {
    /// A new run.
    Created(RunId),
    /// The delivery was seen before; this is the run it created. Nothing was written.
    Duplicate(RunId),
}

/// The `deliveries.source` key of a run without a source. Source names are never empty.
const NO_SOURCE: &str = "";

/// The `deliveries.source` key under which incident changes are claimed; no source name can
/// hold `~`.
const CHANGES: &str = "~change";

/// A run that passed intake's checks, with its documents already encoded and sealed, on its
/// way to the intake batcher.
pub(crate) struct ValidRun {
    run: NewRun,
    /// The trigger, sealed.
    trigger: String,
    /// Step 0's body, sealed.
    step_body: String,
    /// The audit entry's body, checked and encoded (sealed once its seq is known).
    audit_body: String,
    /// The store's time when intake was called, stamped on the delivery, run and step.
    now: i64,
}

impl ValidRun {
    /// Checks `run`, encodes its trigger and first step and seals both with `key`.
    fn new(run: NewRun, now: i64, scope: &TenantScope, key: &DataKey) -> Result<Self, StoreError> {
        check_state(&run.state)?;
        codec::incident_columns(&run.incident)?;
        let trigger = codec::json_text(&run.trigger, "run trigger", MAX_DOCUMENT_BYTES)?;
        let step_body = step_columns(&run.first_step.0, &run.first_step.1)?;
        let id = run.id.to_string();
        let trigger = content::seal(key, scope.id(), Column::RunTrigger, &id, &trigger);
        let step_body = content::seal(
            key,
            scope.id(),
            Column::StepBody,
            &step_row(&id, 0),
            &step_body,
        );
        if let Some(change) = &run.change {
            codec::check_text(change, "incident change", MAX_DELIVERY_ID_BYTES)?;
        }
        if let Some(id) = &run.delivery_id {
            codec::check_text(id, "delivery id", MAX_DELIVERY_ID_BYTES)?;
        }
        let audit_body = crate::audit::draft_body(&run.audit)?;
        Ok(Self {
            run,
            trigger,
            step_body,
            audit_body,
            now,
        })
    }
}

impl Store {
    /// Records a new run atomically: the delivery (if any), the run, step 0 and the audit
    /// entry. A delivery id already recorded for the tenant and source yields `Duplicate` with
    /// the original run's id and writes nothing. Concurrent calls share one transaction and
    /// one commit (group commit), each under a savepoint of its own, so one call's failure
    /// undoes only its own rows; every call returns only after the commit that covers it.
    /// The trigger and step 0 are sealed with the tenant's data key before the run is handed
    /// to the batcher, so sealing stays out of the single writer's transaction.
    pub async fn record_intake(
        &self,
        scope: &TenantScope,
        run: NewRun,
    ) -> Result<IntakeOutcome, StoreError> {
        let key = self.content_key(scope).await?;
        let valid = ValidRun::new(run, self.now(), scope, &key)?;
        self.submit_intake(scope, valid).await
    }

    /// Writes one validated run inside `tx` (the intake batcher's transaction, under the run's
    /// own savepoint): the delivery, the run, step 0 and the audit entry, or nothing but the
    /// answer `Duplicate` when the delivery was recorded before, in this transaction or an
    /// earlier one.
    pub(crate) async fn intake_in(
        &self,
        tx: &mut WriteTx,
        scope: &TenantScope,
        valid: &ValidRun,
    ) -> Result<IntakeOutcome, StoreError> {
        let (run, now) = (&valid.run, valid.now);
        let (incident_by, incident_value) = codec::incident_columns(&run.incident)?;
        self.enter_tenant(tx, scope).await?;
        if let Some(existing) = self.claim_delivery(tx, scope, run, now).await? {
            return Ok(IntakeOutcome::Duplicate(existing));
        }
        if let Some(change) = &run.change {
            let claimed = self.claim(tx, scope, CHANGES, change, run.id, now).await?;
            if let Some(existing) = claimed {
                // A copy of a change another run deals with: this delivery now names that
                // run, so its redeliveries are answered the same way.
                point_delivery_at(tx, scope, run, existing).await?;
                return Ok(IntakeOutcome::Duplicate(existing));
            }
        }
        sqlx::query(
            "INSERT INTO runs (tenant_id, id, source, delivery_id, incident_by, incident_value, \
             trigger_body, state, steps, last_error, created_at, updated_at, fetched_number) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 1, NULL, $9, $9, $10)",
        )
        .bind(scope.id())
        .bind(run.id.to_string())
        .bind(run.source.as_ref().map(SourceName::as_str))
        .bind(&run.delivery_id)
        .bind(incident_by)
        .bind(incident_value)
        .bind(&valid.trigger)
        .bind(&run.state)
        .bind(now)
        .bind(fetched_number(&run.first_step.0, &run.first_step.1))
        .execute(&mut **tx)
        .await
        .map_err(|e| {
            codec::conflict_on_duplicate(e, || format!("run {} already exists", run.id))
        })?;
        insert_step(
            tx,
            scope,
            run.id,
            0,
            &run.first_step.0,
            &valid.step_body,
            now,
        )
        .await?;
        self.append_audit_in(tx, scope, &run.audit).await?;
        Ok(IntakeOutcome::Created(run.id))
    }

    /// Deletes delivery records received more than `older_than_millis` ago (by the store's
    /// clock), across all tenants; returns how many. The runs stay. Keep the window well past
    /// every sender's retry schedule (days, not minutes): a delivery retried after its record
    /// is purged starts a new run. Platform level.
    pub async fn purge_deliveries(&self, older_than_millis: i64) -> Result<u64, StoreError> {
        if older_than_millis < 0 {
            return Err(StoreError::Invalid(
                "the purge window must not be negative".into(),
            ));
        }
        let cutoff = self.now().saturating_sub(older_than_millis);
        let mut tx = self.begin_platform_write().await?;
        let done = sqlx::query("DELETE FROM deliveries WHERE received_at < $1")
            .bind(cutoff)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        if done.rows_affected() > 0 {
            tracing::info!(purged = done.rows_affected(), "purged old delivery records");
        }
        Ok(done.rows_affected())
    }

    /// Records the run's delivery; returns the existing run's id if it was already recorded.
    async fn claim_delivery(
        &self,
        tx: &mut WriteTx,
        scope: &TenantScope,
        run: &NewRun,
        now: i64,
    ) -> Result<Option<RunId>, StoreError> {
        let Some(delivery_id) = &run.delivery_id else {
            return Ok(None);
        };
        let source = run.source.as_ref().map_or(NO_SOURCE, SourceName::as_str);
        self.claim(tx, scope, source, delivery_id, run.id, now)
            .await
    }

    /// Records `key` under `source` for `run`; returns the run that recorded it first, if
    /// another did.
    async fn claim(
        &self,
        tx: &mut WriteTx,
        scope: &TenantScope,
        source: &str,
        key: &str,
        run: RunId,
        now: i64,
    ) -> Result<Option<RunId>, StoreError> {
        let inserted = sqlx::query(
            "INSERT INTO deliveries (tenant_id, source, delivery_id, run_id, received_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant_id, source, delivery_id) DO NOTHING",
        )
        .bind(scope.id())
        .bind(source)
        .bind(key)
        .bind(run.to_string())
        .bind(now)
        .execute(&mut **tx)
        .await?;
        if inserted.rows_affected() == 1 {
            return Ok(None);
        }
        let existing: String = sqlx::query_scalar(
            "SELECT run_id FROM deliveries \
             WHERE tenant_id = $1 AND source = $2 AND delivery_id = $3",
        )
        .bind(scope.id())
        .bind(source)
        .bind(key)
        .fetch_one(&mut **tx)
        .await?;
        codec::run_id(&existing).map(Some)
    }
}

/// Makes `run`'s delivery (if it has one) name `existing`, the run that deals with its incident
/// change, so that its redeliveries are answered with that run.
async fn point_delivery_at(
    tx: &mut WriteTx,
    scope: &TenantScope,
    run: &NewRun,
    existing: RunId,
) -> Result<(), StoreError> {
    let Some(delivery_id) = &run.delivery_id else {
        return Ok(());
    };
    sqlx::query(
        "UPDATE deliveries SET run_id = $1 WHERE tenant_id = $2 AND source = $3 \
         AND delivery_id = $4",
    )
    .bind(existing.to_string())
    .bind(scope.id())
    .bind(run.source.as_ref().map_or(NO_SOURCE, SourceName::as_str))
    .bind(delivery_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// What became of one run of a batch: its outcome, or its own error (the others unaffected).
pub(crate) type JobResult = Result<IntakeOutcome, StoreError>;

/// Whether the runs of a batch may be written together by [`Store::intake_together`]: no two
/// of them claim the same delivery or the same incident change. A batch that fails this (a
/// redelivery racing its original, say) is written one run at a time.
pub(crate) fn keys_distinct<'a>(
    runs: impl IntoIterator<Item = (&'a TenantScope, &'a ValidRun)>,
) -> bool {
    let mut seen = std::collections::HashSet::new();
    runs.into_iter().all(|(scope, valid)| {
        let run = &valid.run;
        let delivery = run.delivery_id.as_deref().map(|id| {
            let source = run.source.as_ref().map_or(NO_SOURCE, SourceName::as_str);
            (scope.id(), source, id)
        });
        let change = run.change.as_deref().map(|c| (scope.id(), CHANGES, c));
        [delivery, change]
            .into_iter()
            .flatten()
            .all(|key| seen.insert(key))
    })
}

/// `($1, $2, …), (…)`: placeholders for `rows` rows of `cols` values each.
pub(crate) fn value_rows(rows: usize, cols: usize) -> String {
    let mut sql = String::new();
    push_placeholders(&mut sql, true, 0, rows, cols);
    sql
}

/// Appends placeholders for `rows` rows of `cols` values each to `sql`: numbered on from
/// `after` (`$after+1` first), or, when not `numbered`, each a plain `?`.
fn push_placeholders(sql: &mut String, numbered: bool, after: usize, rows: usize, cols: usize) {
    use std::fmt::Write as _;
    sql.reserve(rows * cols * if numbered { 7 } else { 3 });
    let mut n = after;
    for row in 0..rows {
        if row > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for col in 0..cols {
            if col > 0 {
                sql.push_str(", ");
            }
            if numbered {
                n += 1;
                let _ = write!(sql, "${n}");
            } else {
                sql.push('?');
            }
        }
        sql.push(')');
    }
}

/// Statements sent to the database as one, their values bound in order across all of them.
/// SQLite runs such a script in one hand-off to its connection's thread, where each statement
/// sent alone would cost a hand-off and a wake-up of its own.
pub(crate) struct Script<'q> {
    sql: String,
    args: sqlx::any::AnyArguments<'q>,
    params: usize,
    /// `$1` … `$n` (PostgreSQL) rather than `?` (SQLite).
    numbered: bool,
}

impl<'q> Script<'q> {
    /// A script for PostgreSQL: its placeholders numbered on across its statements (`$1` …
    /// `$n`), the only form PostgreSQL takes.
    pub(crate) fn numbered() -> Self {
        Self::new(true)
    }

    /// A script for SQLite: each placeholder a plain `?`, taking the next value. SQLite finds
    /// a numbered placeholder's name by walking the statement's list of names, so binding a
    /// statement's n numbered values costs in proportion to n², which a batch of a few
    /// hundred runs (thousands of values) feels; a `?` has no name to look up.
    pub(crate) fn positional() -> Self {
        Self::new(false)
    }

    fn new(numbered: bool) -> Self {
        Self {
            sql: String::new(),
            args: sqlx::any::AnyArguments::default(),
            params: 0,
            numbered,
        }
    }

    /// Appends `sql` as it is.
    pub(crate) fn push(&mut self, sql: &str) {
        self.sql.push_str(sql);
    }

    /// Appends one statement written with plain `?` placeholders (and no other `?`), numbered
    /// on from the script's last when the script is numbered. Its values are bound next, in
    /// order.
    pub(crate) fn statement(&mut self, sql: &str) {
        use std::fmt::Write as _;
        if !self.numbered {
            self.params += sql.matches('?').count();
            self.sql.push_str(sql);
            return;
        }
        self.sql.reserve(sql.len() + 16);
        for (i, part) in sql.split('?').enumerate() {
            if i > 0 {
                self.params += 1;
                let _ = write!(self.sql, "${}", self.params);
            }
            self.sql.push_str(part);
        }
    }

    /// Appends `(…), (…)`: placeholders for `rows` rows of `cols` values each, after the
    /// script's last. Their values are bound next, in order.
    pub(crate) fn rows(&mut self, rows: usize, cols: usize) {
        push_placeholders(&mut self.sql, self.numbered, self.params, rows, cols);
        self.params += rows * cols;
    }

    /// Binds the next placeholder's value.
    pub(crate) fn bind<T>(&mut self, value: T) -> Result<(), StoreError>
    where
        T: 'q + sqlx::Encode<'q, sqlx::Any> + sqlx::Type<sqlx::Any>,
    {
        use sqlx::Arguments as _;
        self.args
            .add(value)
            .map_err(|e| StoreError::Corrupt(format!("a value could not be bound: {e}")))
    }

    /// Runs every statement of the script in `tx`, in order, and returns how many rows they
    /// changed in all; the first that fails stops it.
    pub(crate) async fn rows_affected(self, tx: &mut WriteTx) -> Result<u64, sqlx::Error> {
        sqlx::query_with(&self.sql, self.args)
            .execute(&mut **tx)
            .await
            .map(|done| done.rows_affected())
    }

    /// Runs every statement of the script in `tx`, in order; the first that fails stops it.
    pub(crate) async fn execute(self, tx: &mut WriteTx) -> Result<(), sqlx::Error> {
        sqlx::query_with(&self.sql, self.args)
            .execute(&mut **tx)
            .await
            .map(|_| ())
    }
}

/// The head of each of `tenants`' chains (ids, in any order, repeats allowed), read with one
/// statement: `None` for a chain with no entry yet. A tenant that is not registered has no
/// row. With `lock` (PostgreSQL only), the tenants' rows are locked as they are read, which
/// orders the chains' appends against other writers.
pub(crate) async fn tenant_chain_heads(
    tx: &mut WriteTx,
    mut tenants: Vec<&str>,
    lock: bool,
) -> Result<HashMap<String, Option<(i64, String)>>, StoreError> {
    tenants.sort_unstable();
    tenants.dedup();
    // Each head is found by its own index seek (newest seq of the tenant), as a single
    // append finds it; a grouped or correlated MAX would walk every entry of the tenants.
    let sql = format!(
        "SELECT t.id, \
         (SELECT a.seq FROM audit_log a WHERE a.tenant_id = t.id ORDER BY a.seq DESC LIMIT 1), \
         (SELECT a.hash FROM audit_log a WHERE a.tenant_id = t.id ORDER BY a.seq DESC LIMIT 1) \
         FROM tenants t WHERE t.id IN ({}){}",
        value_rows(1, tenants.len()).trim_matches(['(', ')']),
        if lock { " FOR NO KEY UPDATE OF t" } else { "" }
    );
    let mut query = sqlx::query_as::<_, (String, Option<i64>, Option<String>)>(&sql);
    for tenant in &tenants {
        query = query.bind(*tenant);
    }
    Ok(query
        .fetch_all(&mut **tx)
        .await?
        .into_iter()
        .map(|(tenant, seq, hash)| (tenant, seq.zip(hash)))
        .collect())
}

/// A claim of one key in `deliveries` by one run of a batch.
struct Claim<'a> {
    job: usize,
    source: &'a str,
    key: &'a str,
}

impl Store {
    /// Writes the runs of one intake batch with a handful of statements for the whole batch
    /// instead of about ten per run: multi-row inserts of the deliveries, runs, first steps
    /// and audit entries, the tenants checked and their chains' heads read once each. On
    /// PostgreSQL, whose row-level security admits one tenant per statement, that is done
    /// once per tenant of the batch, in tenant order, after locking the tenant's row (which
    /// orders its chain's appends against other writers).
    ///
    /// The runs must pass [`keys_distinct`]. Each run's answer is what [`Store::intake_in`]
    /// would give it: `Created`, `Duplicate` of the run that claimed its delivery or its
    /// incident change first, or NotFound for an unregistered tenant. Any database error is
    /// the batch's: the caller rolls all of it back and writes the runs one at a time, which
    /// names the run at fault.
    pub(crate) async fn intake_together(
        &self,
        tx: &mut WriteTx,
        runs: &[(&TenantScope, &ValidRun)],
    ) -> Result<Vec<JobResult>, StoreError> {
        let mut results: Vec<Option<JobResult>> = runs.iter().map(|_| None).collect();
        let groups: Vec<Vec<usize>> = if self.is_postgres() {
            by_tenant(runs)
        } else {
            vec![(0..runs.len()).collect()]
        };
        for group in groups {
            if self.is_postgres() {
                self.set_tenant(tx, runs[group[0]].0.id()).await?;
            }
            self.intake_group(tx, runs, group, &mut results).await?;
        }
        results
            .into_iter()
            .map(|r| {
                r.ok_or_else(|| StoreError::Corrupt("an intake batch left a run unanswered".into()))
            })
            .collect()
    }

    /// [`Store::intake_together`] for the runs `live` of `runs` (on PostgreSQL, of one tenant).
    async fn intake_group(
        &self,
        tx: &mut WriteTx,
        runs: &[(&TenantScope, &ValidRun)],
        mut live: Vec<usize>,
        results: &mut [Option<JobResult>],
    ) -> Result<(), StoreError> {
        // The tenants must be registered (and on PostgreSQL their rows are locked).
        let mut tenants: Vec<&str> = live.iter().map(|&i| runs[i].0.id()).collect();
        tenants.sort_unstable();
        tenants.dedup();
        let lock = if self.is_postgres() {
            " FOR NO KEY UPDATE"
        } else {
            ""
        };
        let sql = format!(
            "SELECT id FROM tenants WHERE id IN ({}){lock}",
            value_rows(1, tenants.len()).trim_matches(['(', ')'])
        );
        let mut query = sqlx::query_scalar::<_, String>(&sql);
        for tenant in &tenants {
            query = query.bind(*tenant);
        }
        let found: std::collections::HashSet<String> =
            query.fetch_all(&mut **tx).await?.into_iter().collect();
        live.retain(|&i| {
            let scope = runs[i].0;
            let known = found.contains(scope.id());
            if !known {
                results[i] = Some(Err(StoreError::NotFound(format!(
                    "tenant `{}` is not registered",
                    scope.tenant()
                ))));
            }
            known
        });

        // Deliveries first: a delivery recorded before names its run and writes nothing.
        let deliveries: Vec<Claim<'_>> = live
            .iter()
            .filter_map(|&i| {
                let run = &runs[i].1.run;
                let key = run.delivery_id.as_deref()?;
                let source = run.source.as_ref().map_or(NO_SOURCE, SourceName::as_str);
                Some(Claim {
                    job: i,
                    source,
                    key,
                })
            })
            .collect();
        for (job, existing) in self.claim_all(tx, runs, &deliveries).await? {
            results[job] = Some(Ok(IntakeOutcome::Duplicate(existing)));
        }
        live.retain(|&i| results[i].is_none());

        // Then incident changes: a copy of a change another run deals with names that run,
        // and so do its delivery's later redeliveries.
        let changes: Vec<Claim<'_>> = live
            .iter()
            .filter_map(|&i| {
                let key = runs[i].1.run.change.as_deref()?;
                Some(Claim {
                    job: i,
                    source: CHANGES,
                    key,
                })
            })
            .collect();
        for (job, existing) in self.claim_all(tx, runs, &changes).await? {
            let (scope, valid) = runs[job];
            point_delivery_at(tx, scope, &valid.run, existing).await?;
            results[job] = Some(Ok(IntakeOutcome::Duplicate(existing)));
        }
        live.retain(|&i| results[i].is_none());
        if live.is_empty() {
            return Ok(());
        }

        self.insert_created(tx, runs, &live).await?;
        for &i in &live {
            results[i] = Some(Ok(IntakeOutcome::Created(runs[i].1.run.id)));
        }
        Ok(())
    }

    /// Records every claim in `deliveries` with one statement; answers, for each claim whose
    /// key was recorded before, its job and the run that holds the key.
    async fn claim_all(
        &self,
        tx: &mut WriteTx,
        runs: &[(&TenantScope, &ValidRun)],
        claims: &[Claim<'_>],
    ) -> Result<Vec<(usize, RunId)>, StoreError> {
        if claims.is_empty() {
            return Ok(vec![]);
        }
        let sql = format!(
            "INSERT INTO deliveries (tenant_id, source, delivery_id, run_id, received_at) \
             VALUES {} ON CONFLICT (tenant_id, source, delivery_id) DO NOTHING \
             RETURNING tenant_id, source, delivery_id",
            value_rows(claims.len(), 5)
        );
        let mut query = sqlx::query_as::<_, (String, String, String)>(&sql);
        for claim in claims {
            let (scope, valid) = runs[claim.job];
            query = query
                .bind(scope.id())
                .bind(claim.source)
                .bind(claim.key)
                .bind(valid.run.id.to_string())
                .bind(valid.now);
        }
        let inserted: std::collections::HashSet<(String, String, String)> =
            query.fetch_all(&mut **tx).await?.into_iter().collect();
        let mut taken = Vec::new();
        for claim in claims {
            let scope = runs[claim.job].0;
            let key = (
                scope.id().to_owned(),
                claim.source.to_owned(),
                claim.key.to_owned(),
            );
            if inserted.contains(&key) {
                continue;
            }
            let existing: String = sqlx::query_scalar(
                "SELECT run_id FROM deliveries \
                 WHERE tenant_id = $1 AND source = $2 AND delivery_id = $3",
            )
            .bind(scope.id())
            .bind(claim.source)
            .bind(claim.key)
            .fetch_one(&mut **tx)
            .await?;
            taken.push((claim.job, codec::run_id(&existing)?));
        }
        Ok(taken)
    }

    /// Inserts the runs `live` of `runs`, their first steps and their audit entries: on
    /// PostgreSQL with one statement, on SQLite (which has no data-modifying `WITH`) with three.
    async fn insert_created(
        &self,
        tx: &mut WriteTx,
        runs: &[(&TenantScope, &ValidRun)],
        live: &[usize],
    ) -> Result<(), StoreError> {
        // The chains' heads are read first: nothing inserted here changes them.
        let heads = self.chain_heads(tx, runs, live, false).await?;
        let entries = self.intake_entries(tx, runs, live, heads).await?;
        let run_exists = |e| codec::conflict_on_duplicate(e, || "a run of the batch exists".into());
        if self.is_postgres() {
            // One statement, so one round trip: the runs and their first steps inserted by
            // data-modifying `WITH` clauses, the audit entries by the statement itself. The
            // steps' references to their runs are checked as the statement ends, when the
            // runs are in.
            let mut script = Script::numbered();
            script.push("WITH new_runs AS (");
            push_runs(&mut script, runs, live)?;
            script.push("), first_steps AS (");
            push_first_steps(&mut script, runs, live)?;
            script.push(") ");
            crate::audit::push_entries(&mut script, &entries)?;
            return script.execute(tx).await.map_err(run_exists);
        }
        let mut script = Script::positional();
        push_runs(&mut script, runs, live)?;
        script.execute(tx).await.map_err(run_exists)?;
        let mut script = Script::positional();
        push_first_steps(&mut script, runs, live)?;
        script.execute(tx).await?;
        let mut script = Script::positional();
        crate::audit::push_entries(&mut script, &entries)?;
        script.execute(tx).await?;
        Ok(())
    }

    /// The head of each tenant's chain among the runs `live` of `runs`, read with one
    /// statement: `None` for a chain with no entry yet. A tenant that is not registered has
    /// no row. With `lock` (PostgreSQL only), the tenants' rows are locked as they are read,
    /// which orders the chains' appends against other writers.
    async fn chain_heads(
        &self,
        tx: &mut WriteTx,
        runs: &[(&TenantScope, &ValidRun)],
        live: &[usize],
        lock: bool,
    ) -> Result<HashMap<String, Option<(i64, String)>>, StoreError> {
        let tenants = live.iter().map(|&i| runs[i].0.id()).collect();
        tenant_chain_heads(tx, tenants, lock).await
    }

    /// The audit entries of the runs `live` of `runs`, in their order, each tenant's chain
    /// continued from its head in `heads`.
    async fn intake_entries(
        &self,
        tx: &mut WriteTx,
        runs: &[(&TenantScope, &ValidRun)],
        live: &[usize],
        mut heads: HashMap<String, Option<(i64, String)>>,
    ) -> Result<Vec<crate::AuditEntry>, StoreError> {
        use crate::audit::ChainHead;
        let mut chains = HashMap::new();
        for &i in live {
            let scope = runs[i].0;
            if chains.contains_key(scope.id()) {
                continue;
            }
            let head = heads.remove(scope.id()).ok_or_else(|| {
                StoreError::NotFound(format!("tenant `{}` is not registered", scope.tenant()))
            })?;
            let key = self.content_key_in(tx, scope).await?;
            chains.insert(scope.id(), (ChainHead::read(head)?, key));
        }
        let mut entries = Vec::with_capacity(live.len());
        for &i in live {
            let (scope, valid) = runs[i];
            let (head, key) = chains
                .get_mut(scope.id())
                .ok_or_else(|| StoreError::Corrupt("a batch's tenant has no chain head".into()))?;
            let key = valid.run.audit.run_id.map(|_| key.as_ref());
            entries.push(head.next(
                scope,
                &valid.run.audit,
                valid.audit_body.clone(),
                key,
                self.now(),
            ));
        }
        Ok(entries)
    }

    /// SQLite's intake of a batch in two hand-offs to the writer's thread, where
    /// [`Store::intake_together`] takes about eight: the tenants and their chains' heads read
    /// with one statement, then one script that inserts the runs, claims every delivery and
    /// incident change, and inserts the first steps and the audit entries, under a savepoint
    /// of its own. The claims are plain inserts, so a key recorded before fails the script,
    /// which is then undone. `None` means nothing was written: a tenant is not registered, a key
    /// was claimed before (a redelivery) or a statement failed, and the caller writes the
    /// batch the longer way, which answers each of those. The error is the transaction's.
    pub(crate) async fn intake_script(
        &self,
        tx: &mut WriteTx,
        runs: &[(&TenantScope, &ValidRun)],
    ) -> Result<Option<Vec<JobResult>>, StoreError> {
        let all: Vec<usize> = (0..runs.len()).collect();
        let heads = self.chain_heads(tx, runs, &all, false).await?;
        if runs
            .iter()
            .any(|(scope, _)| !heads.contains_key(scope.id()))
        {
            return Ok(None);
        }
        let Some(entries) = self.first_try_entries(tx, runs, &all, heads).await? else {
            return Ok(None);
        };
        let script = match script_of(runs, &all, &entries, false) {
            Ok(script) => script,
            Err(e) => {
                tracing::debug!(error = %e, "an intake script was not tried");
                return Ok(None);
            }
        };
        if let Err(e) = script.execute(tx).await {
            tracing::debug!(error = %e, runs = runs.len(), "an intake script was undone");
            let undo = format!("ROLLBACK TO SAVEPOINT {SCRIPT}; RELEASE SAVEPOINT {SCRIPT}");
            sqlx::query(&undo).execute(&mut **tx).await?;
            return Ok(None);
        }
        Ok(Some(all_created(runs)))
    }

    /// The audit entries of the runs `live` of `runs` for a first try, or `None` when one of
    /// them cannot be written for a reason of its own (a tenant's data key destroyed as it is
    /// offboarded, a chain head that does not read), which the longer path names alone;
    /// nothing is written yet. A database error is the transaction's.
    async fn first_try_entries(
        &self,
        tx: &mut WriteTx,
        runs: &[(&TenantScope, &ValidRun)],
        live: &[usize],
        heads: HashMap<String, Option<(i64, String)>>,
    ) -> Result<Option<Vec<crate::AuditEntry>>, StoreError> {
        match self.intake_entries(tx, runs, live, heads).await {
            Ok(entries) => Ok(Some(entries)),
            Err(e @ StoreError::Db(_)) => Err(e),
            Err(e) => {
                tracing::debug!(error = %e, "an intake batch's first try was not made");
                Ok(None)
            }
        }
    }

    /// PostgreSQL's intake of a batch of fresh runs in three round trips per tenant, where
    /// [`Store::intake_together`] takes about six: the tenant named for row-level security;
    /// its row locked and its chain's head read with one statement; then one statement that
    /// inserts the runs, claims their deliveries and incident changes, and inserts their
    /// first steps and audit entries. The claims are plain inserts, so a key recorded before
    /// fails that statement. `None` means a tenant is not registered, a run could not be
    /// written for a reason of its own, or a statement failed: the caller must then roll the
    /// transaction back to a savepoint it took before the call (a failed statement aborts a
    /// PostgreSQL transaction) and write the batch the longer way, which answers each run.
    pub(crate) async fn intake_by_tenant(
        &self,
        tx: &mut WriteTx,
        runs: &[(&TenantScope, &ValidRun)],
    ) -> Result<Option<Vec<JobResult>>, StoreError> {
        for group in by_tenant(runs) {
            self.set_tenant(tx, runs[group[0]].0.id()).await?;
            let heads = self.chain_heads(tx, runs, &group, true).await?;
            if heads.is_empty() {
                return Ok(None);
            }
            let Some(entries) = self.first_try_entries(tx, runs, &group, heads).await? else {
                return Ok(None);
            };
            let statement = match script_of(runs, &group, &entries, true) {
                Ok(statement) => statement,
                Err(e) => {
                    tracing::debug!(error = %e, "a tenant's intake statement was not tried");
                    return Ok(None);
                }
            };
            if let Err(e) = statement.execute(tx).await {
                tracing::debug!(
                    error = %e,
                    runs = group.len(),
                    "a tenant's intake statement failed"
                );
                return Ok(None);
            }
        }
        Ok(Some(all_created(runs)))
    }
}

/// Every run of `runs` answered `Created`.
fn all_created(runs: &[(&TenantScope, &ValidRun)]) -> Vec<JobResult> {
    runs.iter()
        .map(|(_, valid)| Ok(IntakeOutcome::Created(valid.run.id)))
        .collect()
}

/// The runs of a batch by tenant, in tenant order: the indexes into `runs` of each tenant's.
fn by_tenant(runs: &[(&TenantScope, &ValidRun)]) -> Vec<Vec<usize>> {
    let mut groups = std::collections::BTreeMap::<&str, Vec<usize>>::new();
    for (i, (scope, _)) in runs.iter().enumerate() {
        groups.entry(scope.id()).or_default().push(i);
    }
    groups.into_values().collect()
}

/// What writes the runs `live` of `runs` (whose audit entries are `entries`): the runs, their
/// claims of deliveries and incident changes, their first steps and their audit entries. For
/// SQLite ([`Store::intake_script`], `numbered` false) a script of four statements under a
/// savepoint of its own; for PostgreSQL ([`Store::intake_by_tenant`], `numbered` true) one
/// statement, the runs, claims and steps inserted by data-modifying `WITH` clauses.
fn script_of<'q>(
    runs: &[(&'q TenantScope, &'q ValidRun)],
    live: &[usize],
    entries: &'q [crate::AuditEntry],
    numbered: bool,
) -> Result<Script<'q>, StoreError> {
    let claims: Vec<(usize, &str, &str)> = live
        .iter()
        .flat_map(|&i| {
            let run = &runs[i].1.run;
            let source = run.source.as_ref().map_or(NO_SOURCE, SourceName::as_str);
            let delivery = run.delivery_id.as_deref().map(|key| (i, source, key));
            let change = run.change.as_deref().map(|key| (i, CHANGES, key));
            [delivery, change].into_iter().flatten()
        })
        .collect();
    if numbered {
        // The references of the claims and steps to their runs are checked as the statement
        // ends (the claims' at commit), when the runs are in.
        let mut script = Script::numbered();
        script.push("WITH new_runs AS (");
        push_runs(&mut script, runs, live)?;
        if !claims.is_empty() {
            script.push("), claims AS (");
            push_claims(&mut script, runs, &claims)?;
        }
        script.push("), first_steps AS (");
        push_first_steps(&mut script, runs, live)?;
        script.push(") ");
        crate::audit::push_entries(&mut script, entries)?;
        return Ok(script);
    }
    let mut script = Script::positional();
    script.push(&format!("SAVEPOINT {SCRIPT}; "));
    // The runs before the deliveries that name them: a delivery inserted first would leave
    // its deferred reference to `runs` pending, and each run's insert would then look up the
    // tenant's deliveries that name it.
    push_runs(&mut script, runs, live)?;
    script.push("; ");
    if !claims.is_empty() {
        push_claims(&mut script, runs, &claims)?;
        script.push("; ");
    }
    push_first_steps(&mut script, runs, live)?;
    script.push("; ");
    crate::audit::push_entries(&mut script, entries)?;
    script.push(&format!("; RELEASE SAVEPOINT {SCRIPT}"));
    Ok(script)
}

/// Appends the insert of `claims` (each a run's index into `runs`, the key's source and the
/// key) to `script`: plain inserts, so a key recorded before fails the statement.
fn push_claims<'q>(
    script: &mut Script<'q>,
    runs: &[(&'q TenantScope, &'q ValidRun)],
    claims: &[(usize, &'q str, &'q str)],
) -> Result<(), StoreError> {
    script.push(
        "INSERT INTO deliveries (tenant_id, source, delivery_id, run_id, received_at) VALUES ",
    );
    script.rows(claims.len(), 5);
    for &(i, source, key) in claims {
        let (scope, valid) = runs[i];
        script.bind(scope.id())?;
        script.bind(source)?;
        script.bind(key)?;
        script.bind(valid.run.id.to_string())?;
        script.bind(valid.now)?;
    }
    Ok(())
}

/// The savepoint of an intake script ([`Store::intake_script`]).
const SCRIPT: &str = "intake_script";

/// Appends the insert of the runs `live` of `runs` to `script`.
fn push_runs<'q>(
    script: &mut Script<'q>,
    runs: &[(&'q TenantScope, &'q ValidRun)],
    live: &[usize],
) -> Result<(), StoreError> {
    script.push(
        "INSERT INTO runs (tenant_id, id, source, delivery_id, incident_by, incident_value, \
         trigger_body, state, steps, last_error, created_at, updated_at, fetched_number) \
         VALUES ",
    );
    script.rows(live.len(), 13);
    for &i in live {
        let (scope, valid) = runs[i];
        let run = &valid.run;
        let (incident_by, incident_value) = codec::incident_columns(&run.incident)?;
        script.bind(scope.id())?;
        script.bind(run.id.to_string())?;
        script.bind(run.source.as_ref().map(SourceName::as_str))?;
        script.bind(run.delivery_id.as_deref())?;
        script.bind(incident_by)?;
        script.bind(incident_value)?;
        script.bind(valid.trigger.as_str())?;
        script.bind(run.state.as_str())?;
        script.bind(1_i64)?;
        script.bind(None::<String>)?;
        script.bind(valid.now)?;
        script.bind(valid.now)?;
        script.bind(fetched_number(&run.first_step.0, &run.first_step.1))?;
    }
    Ok(())
}

/// Appends the insert of step 0 of the runs `live` of `runs` to `script`.
fn push_first_steps<'q>(
    script: &mut Script<'q>,
    runs: &[(&'q TenantScope, &'q ValidRun)],
    live: &[usize],
) -> Result<(), StoreError> {
    script.push("INSERT INTO run_steps (tenant_id, run_id, seq, kind, body, at) VALUES ");
    script.rows(live.len(), 6);
    for &i in live {
        let (scope, valid) = runs[i];
        script.bind(scope.id())?;
        script.bind(valid.run.id.to_string())?;
        script.bind(0_i64)?;
        script.bind(valid.run.first_step.0.as_str())?;
        script.bind(valid.step_body.as_str())?;
        script.bind(valid.now)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use steward_core::TenantId;

    use super::*;
    use crate::{Authenticator, StoreOptions, TenantRecord};

    fn scope(tenant: &str) -> TenantScope {
        TenantScope::assume(TenantId::parse(tenant).unwrap(), Authenticator::Operator)
    }

    fn run(delivery: &str, change: Option<&str>) -> NewRun {
        let id = RunId::new();
        NewRun {
            id,
            source: Some(SourceName::parse("alerts").unwrap()),
            delivery_id: Some(delivery.to_owned()),
            change: change.map(str::to_owned),
            incident: IncidentRef::number("INC0010001").unwrap(),
            trigger: json!({"kind": "webhook"}),
            state: "received".into(),
            first_step: ("received".into(), json!({"delivery": delivery})),
            audit: AuditDraft {
                kind: "run.received".into(),
                run_id: Some(id),
                actor: "webhook:alerts".into(),
                body: json!({"delivery_id": delivery}),
            },
        }
    }

    async fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(StoreOptions::new(dir.path().join("steward.db")))
            .await
            .unwrap();
        for id in ["us-acme", "eu-beta"] {
            let record = TenantRecord {
                id: TenantId::parse(id).unwrap(),
                name: id.into(),
                settings: json!({}),
                created_at: 0,
            };
            store.upsert_tenant(&record).await.unwrap();
        }
        (dir, store)
    }

    async fn valid(store: &Store, scope: &TenantScope, run: NewRun) -> ValidRun {
        let key = store.content_key(scope).await.unwrap();
        ValidRun::new(run, store.now(), scope, &key).unwrap()
    }

    #[tokio::test]
    async fn a_batch_written_together_answers_each_run_as_one_at_a_time_would() {
        let (_dir, store) = store().await;
        let (acme, beta, ghost) = (scope("us-acme"), scope("eu-beta"), scope("us-ghost"));
        let IntakeOutcome::Created(first) = store
            .record_intake(&acme, run("d1", Some("c1")))
            .await
            .unwrap()
        else {
            panic!("the first delivery starts a run");
        };

        let fresh = run("d2", Some("c2"));
        let other_tenant = run("d1", Some("c1"));
        let batch = [
            (&acme, valid(&store, &acme, fresh.clone()).await),
            (&acme, valid(&store, &acme, run("d1", None)).await),
            (&acme, valid(&store, &acme, run("d9", Some("c1"))).await),
            (&beta, valid(&store, &beta, other_tenant.clone()).await),
            (&ghost, valid(&store, &acme, run("d3", None)).await),
        ];
        let runs: Vec<_> = batch.iter().map(|(s, v)| (*s, v)).collect();
        assert!(keys_distinct(runs.iter().copied()));
        let mut tx = store.begin_write().await.unwrap();
        let results = store.intake_together(&mut tx, &runs).await.unwrap();
        tx.commit().await.unwrap();

        assert_eq!(
            results[0].as_ref().unwrap(),
            &IntakeOutcome::Created(fresh.id)
        );
        assert_eq!(
            results[1].as_ref().unwrap(),
            &IntakeOutcome::Duplicate(first)
        );
        assert_eq!(
            results[2].as_ref().unwrap(),
            &IntakeOutcome::Duplicate(first)
        );
        assert_eq!(
            results[3].as_ref().unwrap(),
            &IntakeOutcome::Created(other_tenant.id),
            "keys are per tenant"
        );
        assert!(
            matches!(results[4], Err(StoreError::NotFound(_))),
            "{:?}",
            results[4]
        );

        // A copy of a change names the run of the change, and so do its redeliveries.
        let again = store.record_intake(&acme, run("d9", None)).await.unwrap();
        assert_eq!(again, IntakeOutcome::Duplicate(first));

        let stored = store.run(&acme, fresh.id).await.unwrap().unwrap();
        assert_eq!(stored.delivery_id.as_deref(), Some("d2"));
        let steps = store.steps(&acme, fresh.id).await.unwrap();
        assert_eq!(steps.len(), 1);
        assert_eq!(steps[0].body, json!({"delivery": "d2"}));
        for (scope, entries) in [(&acme, 2), (&beta, 1)] {
            let report = store.verify_audit(scope).await.unwrap();
            assert_eq!((report.entries, report.first_bad), (entries, None));
        }
        let audit = store.audit_entries(&acme, 0, 10).await.unwrap();
        assert_eq!(audit[1].run_id, Some(fresh.id));
        assert_eq!(audit[1].body, json!({"delivery_id": "d2"}).to_string());
        store.close().await;
    }

    #[tokio::test]
    async fn an_intake_script_writes_a_fresh_batch_of_several_tenants_whole() {
        let (_dir, store) = store().await;
        let (acme, beta) = (scope("us-acme"), scope("eu-beta"));
        store
            .record_intake(&acme, run("d0", Some("c0")))
            .await
            .unwrap();
        let fresh = [
            run("d1", Some("c1")),
            run("d2", None),
            run("d1", Some("c1")),
        ];
        let batch = [
            (&acme, valid(&store, &acme, fresh[0].clone()).await),
            (&acme, valid(&store, &acme, fresh[1].clone()).await),
            (&beta, valid(&store, &beta, fresh[2].clone()).await),
        ];
        let runs: Vec<_> = batch.iter().map(|(s, v)| (*s, v)).collect();
        let mut tx = store.begin_write().await.unwrap();
        let results = store.intake_script(&mut tx, &runs).await.unwrap();
        tx.commit().await.unwrap();

        let results = results.expect("a fresh batch is written by the script");
        for (result, run) in results.iter().zip(&fresh) {
            assert_eq!(result.as_ref().unwrap(), &IntakeOutcome::Created(run.id));
        }
        for (scope, run, delivery) in [(&acme, &fresh[1], "d2"), (&beta, &fresh[2], "d1")] {
            let stored = store.run(scope, run.id).await.unwrap().unwrap();
            assert_eq!(stored.delivery_id.as_deref(), Some(delivery));
            let steps = store.steps(scope, run.id).await.unwrap();
            assert_eq!(steps[0].body, json!({ "delivery": delivery }));
        }
        // Each tenant's chain goes on from its head, and verifies.
        for (scope, entries) in [(&acme, 3), (&beta, 1)] {
            let report = store.verify_audit(scope).await.unwrap();
            assert_eq!((report.entries, report.first_bad), (entries, None));
        }
        let audit = store.audit_entries(&acme, 0, 10).await.unwrap();
        let runs: Vec<_> = audit.iter().map(|e| e.run_id).collect();
        assert_eq!(runs[1..], [Some(fresh[0].id), Some(fresh[1].id)]);
        // The script claimed the deliveries and the change: they name their runs now.
        let again = store.record_intake(&acme, run("d1", None)).await.unwrap();
        assert_eq!(again, IntakeOutcome::Duplicate(fresh[0].id));
        let copy = store.record_intake(&acme, run("d7", Some("c1"))).await;
        assert_eq!(copy.unwrap(), IntakeOutcome::Duplicate(fresh[0].id));
        store.close().await;
    }

    #[tokio::test]
    async fn an_intake_script_that_meets_a_recorded_key_or_an_unknown_tenant_writes_nothing() {
        let (_dir, store) = store().await;
        let (acme, ghost) = (scope("us-acme"), scope("us-ghost"));
        let IntakeOutcome::Created(first) = store
            .record_intake(&acme, run("d1", Some("c1")))
            .await
            .unwrap()
        else {
            panic!("the first delivery starts a run");
        };
        let fresh = run("d2", None);
        let cases = [
            ("a redelivery", run("d1", None)),
            ("a copy of a change", run("d3", Some("c1"))),
        ];
        for (what, late) in cases {
            let batch = [
                (&acme, valid(&store, &acme, fresh.clone()).await),
                (&acme, valid(&store, &acme, late).await),
            ];
            let runs: Vec<_> = batch.iter().map(|(s, v)| (*s, v)).collect();
            let mut tx = store.begin_write().await.unwrap();
            let results = store.intake_script(&mut tx, &runs).await.unwrap();
            assert!(results.is_none(), "{what}: the script is undone");
            // The same transaction goes on to write the batch the longer way.
            let results = store.intake_together(&mut tx, &runs).await.unwrap();
            tx.rollback().await.unwrap();
            assert_eq!(
                results[0].as_ref().unwrap(),
                &IntakeOutcome::Created(fresh.id)
            );
            assert_eq!(
                results[1].as_ref().unwrap(),
                &IntakeOutcome::Duplicate(first),
                "{what}"
            );
        }

        // A later statement fails (a run id taken), after the claims went in: the savepoint
        // takes the claims back too, and the transaction goes on to commit.
        let mut taken = run("d5", None);
        taken.id = first;
        let batch = [
            (&acme, valid(&store, &acme, fresh.clone()).await),
            (&acme, valid(&store, &acme, taken).await),
        ];
        let runs: Vec<_> = batch.iter().map(|(s, v)| (*s, v)).collect();
        let mut tx = store.begin_write().await.unwrap();
        assert!(store.intake_script(&mut tx, &runs).await.unwrap().is_none());
        tx.commit().await.unwrap();
        let d5 = store.record_intake(&acme, run("d5", None)).await.unwrap();
        assert!(
            matches!(d5, IntakeOutcome::Created(id) if id != first),
            "the undone claim of d5 is gone: {d5:?}"
        );

        let batch = [
            (&acme, valid(&store, &acme, fresh.clone()).await),
            (&ghost, valid(&store, &acme, run("d4", None)).await),
        ];
        let runs: Vec<_> = batch.iter().map(|(s, v)| (*s, v)).collect();
        let mut tx = store.begin_write().await.unwrap();
        assert!(store.intake_script(&mut tx, &runs).await.unwrap().is_none());
        tx.commit().await.unwrap();

        // Nothing of the undone scripts was kept: the fresh run, its delivery and its audit
        // entry are not there.
        assert!(store.run(&acme, fresh.id).await.unwrap().is_none());
        let report = store.verify_audit(&acme).await.unwrap();
        assert_eq!(
            (report.entries, report.first_bad),
            (2, None),
            "the first run and d5's"
        );
        let later = store.record_intake(&acme, fresh.clone()).await.unwrap();
        assert_eq!(later, IntakeOutcome::Created(fresh.id));
        store.close().await;
    }

    #[tokio::test]
    async fn an_intake_script_leaves_a_tenant_whose_keys_are_gone_to_the_longer_path() {
        let (_dir, store) = store().await;
        let (acme, beta) = (scope("us-acme"), scope("eu-beta"));
        let fresh = run("d1", None);
        let batch = [
            (&acme, valid(&store, &acme, fresh.clone()).await),
            (&beta, valid(&store, &beta, run("d1", None)).await),
        ];
        // Offboarded while its delivery was on its way: the tenant's row stays, its data keys
        // are destroyed, so its audit entry cannot be sealed.
        store
            .offboard_tenant(&beta, &crate::MasterKey::generate(), "operator")
            .await
            .unwrap();
        let runs: Vec<_> = batch.iter().map(|(s, v)| (*s, v)).collect();
        let mut tx = store.begin_write().await.unwrap();
        let script = store.intake_script(&mut tx, &runs).await;
        assert!(
            matches!(script, Ok(None)),
            "one tenant's failure is not the batch's: {:?}",
            script.map(|r| r.map(|r| r.len()))
        );
        // Nothing was written and the transaction goes on: the acme run is still new.
        tx.commit().await.unwrap();
        assert!(store.run(&acme, fresh.id).await.unwrap().is_none());
        let later = store.record_intake(&acme, fresh.clone()).await.unwrap();
        assert_eq!(later, IntakeOutcome::Created(fresh.id));
        store.close().await;
    }

    #[test]
    fn runs_claiming_one_key_twice_are_not_written_together() {
        let acme = scope("us-acme");
        let beta = scope("eu-beta");
        let key = DataKey {
            version: 1,
            key: secrecy::SecretBox::new(Box::new([7; 32])),
        };
        let valid = |r: NewRun, s: &TenantScope| ValidRun::new(r, 0, s, &key).unwrap();
        let a = valid(run("d1", Some("c1")), &acme);
        let b = valid(run("d1", None), &acme);
        let c = valid(run("d2", Some("c1")), &acme);
        let d = valid(run("d1", Some("c1")), &beta);
        assert!(!keys_distinct([(&acme, &a), (&acme, &b)]));
        assert!(!keys_distinct([(&acme, &a), (&acme, &c)]));
        assert!(keys_distinct([(&acme, &a), (&beta, &d)]));
        assert!(keys_distinct([(&acme, &b), (&acme, &c)]));
    }

    #[tokio::test]
    async fn an_intake_script_inserts_the_runs_before_the_deliveries_that_name_them() {
        let (_dir, store) = store().await;
        let acme = scope("us-acme");
        let first = valid(&store, &acme, run("msg_1", Some("c1@1"))).await;
        let second = valid(&store, &acme, run("msg_2", None)).await;
        let runs = [(&acme, &first), (&acme, &second)];
        let entries: Vec<crate::AuditEntry> = Vec::new();
        let script = script_of(&runs, &[0, 1], &entries, false).unwrap();
        let runs_at = script.sql.find("INSERT INTO runs ").unwrap();
        let claims_at = script.sql.find("INSERT INTO deliveries ").unwrap();
        // A claim inserted first would leave its deferred reference pending while the runs
        // are inserted, and SQLite would then look up each run's deliveries.
        assert!(runs_at < claims_at, "{}", script.sql);
    }

    #[tokio::test]
    async fn a_tenants_intake_statement_numbers_its_values_across_every_clause() {
        let (_dir, store) = store().await;
        let acme = scope("us-acme");
        let first = valid(&store, &acme, run("msg_1", Some("c1@1"))).await;
        let second = valid(&store, &acme, run("msg_2", None)).await;
        let runs = [(&acme, &first), (&acme, &second)];
        let mut tx = store.begin_write().await.unwrap();
        let heads = store
            .chain_heads(&mut tx, &runs, &[0, 1], false)
            .await
            .unwrap();
        let entries = store
            .intake_entries(&mut tx, &runs, &[0, 1], heads)
            .await
            .unwrap();
        drop(tx);
        let statement = script_of(&runs, &[0, 1], &entries, true).unwrap();
        let sql = &statement.sql;
        // Two runs, three claims (two deliveries and one change), two steps, two entries.
        let values = 2 * 13 + 3 * 5 + 2 * 6 + 2 * 9;
        assert_eq!(statement.params, values);
        assert!(
            sql.starts_with("WITH new_runs AS (INSERT INTO runs "),
            "{sql}"
        );
        assert!(
            sql.contains("), claims AS (INSERT INTO deliveries "),
            "{sql}"
        );
        assert!(
            sql.contains("), first_steps AS (INSERT INTO run_steps "),
            "{sql}"
        );
        assert!(sql.contains(") INSERT INTO audit_log "), "{sql}");
        assert!(!sql.contains(';'), "one statement: {sql}");
        for n in 1..=values {
            assert_eq!(
                sql.matches(&format!("${n})")).count() + sql.matches(&format!("${n},")).count(),
                1,
                "${n} in {sql}"
            );
        }
        assert!(!sql.contains(&format!("${}", values + 1)), "{sql}");

        // Without a claim (runs started with no delivery id), the claims' clause is left out.
        let mut bare = run("msg_3", None);
        bare.delivery_id = None;
        let bare = valid(&store, &acme, bare).await;
        let runs = [(&acme, &bare)];
        let statement = script_of(&runs, &[0], &entries[..1], true).unwrap();
        assert!(!statement.sql.contains("deliveries"), "{}", statement.sql);
    }

    #[test]
    fn value_rows_number_every_placeholder_once() {
        assert_eq!(value_rows(1, 1), "($1)");
        assert_eq!(value_rows(2, 3), "($1, $2, $3), ($4, $5, $6)");
    }

    #[test]
    fn scripts_number_on_across_statements_or_take_values_in_order() {
        let mut numbered = Script::numbered();
        let mut positional = Script::positional();
        for script in [&mut numbered, &mut positional] {
            script.push("A ");
            script.rows(1, 2);
            script.push("; B ");
            script.rows(2, 1);
        }
        assert_eq!(numbered.sql, "A ($1, $2); B ($3), ($4)");
        assert_eq!(positional.sql, "A (?, ?); B (?), (?)");
        for script in [&mut numbered, &mut positional] {
            script.push("; ");
            script.statement("C ? = ?, ?");
            script.rows(1, 1);
        }
        assert_eq!(numbered.sql, "A ($1, $2); B ($3), ($4); C $5 = $6, $7($8)");
        assert_eq!(positional.sql, "A (?, ?); B (?), (?); C ? = ?, ?(?)");
    }

    #[tokio::test]
    async fn a_positional_script_binds_its_values_in_order_across_statements() {
        let (_dir, store) = store().await;
        let mut tx = store.begin_write().await.unwrap();
        sqlx::query("CREATE TEMP TABLE pairs (a BIGINT, b TEXT)")
            .execute(&mut *tx)
            .await
            .unwrap();
        let mut script = Script::positional();
        script.push("INSERT INTO pairs (a, b) VALUES ");
        script.rows(2, 2);
        script.push("; INSERT INTO pairs (a, b) VALUES ");
        script.rows(1, 2);
        for (a, b) in [(1_i64, "one"), (2, "two"), (3, "three")] {
            script.bind(a).unwrap();
            script.bind(b).unwrap();
        }
        script.execute(&mut tx).await.unwrap();
        let rows: Vec<(i64, String)> = sqlx::query_as("SELECT a, b FROM pairs ORDER BY a")
            .fetch_all(&mut *tx)
            .await
            .unwrap();
        assert_eq!(
            rows,
            [(1, "one".into()), (2, "two".into()), (3, "three".into())]
        );
    }
}
