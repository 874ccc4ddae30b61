//! Runs and their journals. A run's journal is a gap-free sequence of steps; a step is written
//! only if the writer saw the journal at the length it expects (optimistic concurrency), in the
//! same transaction as the run's new state, any approval it opens and its audit entries.

use serde::Serialize;
use sqlx::FromRow;
use steward_core::{ApprovalId, IncidentRef, RunId, SourceName, TenantId};

use crate::approvals::NewApproval;
use crate::audit::ChainHeads;
use crate::codec::{self, MAX_DOCUMENT_BYTES};
use crate::content::{self, Column};
use crate::intake::Script;
use crate::store::WriteTx;
use crate::timers::NewTimer;
use crate::vault::DataKey;
use crate::{AuditDraft, AuditEntry, Store, StoreError, TenantScope};

/// The most runs one `list_runs` call returns.
const MAX_LIST: u32 = 200;

/// One step of a run's journal.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StepRecord {
    /// Position in the journal, from 0.
    pub seq: u32,
    pub kind: String,
    pub body: serde_json::Value,
    /// When it was recorded, Unix ms.
    pub at: i64,
}

/// A run as stored.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunRecord {
    pub id: RunId,
    pub tenant: TenantId,
    pub source: Option<SourceName>,
    pub delivery_id: Option<String>,
    /// The record this run may touch, taken from the trigger.
    pub incident: IncidentRef,
    pub trigger: serde_json::Value,
    pub state: String,
    /// Journal length: the seq the next step must carry.
    pub steps: u32,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// The lease a step of an owned run must still be under when it commits: this node's name
/// and the tenant's fencing token it holds.
#[derive(Clone, Debug)]
pub(crate) struct Fence {
    pub(crate) node: String,
    pub(crate) token: i64,
}

/// A step to append, with everything that must commit with it.
#[derive(Clone, Debug, PartialEq)]
pub struct StepWrite {
    pub run_id: RunId,
    /// The journal length the writer last saw; the step gets this seq.
    pub expected_seq: u32,
    /// Step kind (1–128 printable bytes).
    pub kind: String,
    /// Step body, at most 1 MiB as JSON.
    pub body: serde_json::Value,
    /// The run's state after this step.
    pub new_state: String,
    /// Replaces the run's last error (None clears it).
    pub last_error: Option<String>,
    /// Audit entries appended, in order, in the same transaction.
    pub audit: Vec<AuditDraft>,
    /// An approval request this step opens.
    pub new_approval: Option<NewApproval>,
    /// Timers this step sets (or moves), so the wait it records always has its wake-up.
    pub timers: Vec<NewTimer>,
    /// Budget meter windows this step settles, in the same transaction (a triage's tokens,
    /// recorded with the triage): each as [`Store::charge_budget`] would.
    pub charges: Vec<crate::MeterCharge>,
    /// The Slack message now showing an approval the run opened, noted on the approval as
    /// [`Store::set_approval_message`] would, in the same transaction as the step that
    /// records the post.
    pub approval_message: Option<ApprovalMessage>,
    /// Removes every timer of the run before this step's own are set: the step ends the run,
    /// and nothing it waited for can wake it any more.
    pub clears_timers: bool,
}

/// Where the message showing an approval was posted ([`StepWrite::approval_message`]).
#[derive(Clone, Debug, PartialEq)]
pub struct ApprovalMessage {
    pub approval_id: ApprovalId,
    pub channel: String,
    pub ts: String,
}

#[derive(FromRow)]
pub(crate) struct RunRow {
    tenant_id: String,
    id: String,
    source: Option<String>,
    delivery_id: Option<String>,
    incident_by: String,
    incident_value: String,
    trigger_body: String,
    state: String,
    steps: i64,
    last_error: Option<String>,
    created_at: i64,
    updated_at: i64,
}

pub(crate) const RUN_COLUMNS: &str = "tenant_id, id, source, delivery_id, incident_by, \
    incident_value, trigger_body, state, steps, last_error, created_at, updated_at";

impl Store {
    /// The run of `row`, its sealed columns opened.
    pub(crate) async fn open_run_row(&self, row: RunRow) -> Result<RunRecord, StoreError> {
        let id = codec::run_id(&row.id)?;
        let tenant = codec::tenant_id(&row.tenant_id)?;
        let trigger = self
            .open_json(
                &row.tenant_id,
                Column::RunTrigger,
                &row.id,
                &row.trigger_body,
            )
            .await?;
        let last_error = self
            .open_optional(
                &row.tenant_id,
                Column::RunLastError,
                &last_error_row(&row.id, row.steps),
                row.last_error.as_deref(),
            )
            .await?;
        Ok(RunRecord {
            id,
            tenant,
            source: row.source.as_deref().map(codec::source_name).transpose()?,
            delivery_id: row.delivery_id,
            incident: codec::incident(&row.incident_by, &row.incident_value)?,
            trigger,
            state: row.state,
            steps: codec::to_u32(row.steps, "run step count")?,
            last_error,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }

    /// [`Store::open_run_row`] of each row, in order.
    pub(crate) async fn open_run_rows(
        &self,
        rows: Vec<RunRow>,
    ) -> Result<Vec<RunRecord>, StoreError> {
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            out.push(self.open_run_row(row).await?);
        }
        Ok(out)
    }
}

/// The row a run's `last_error` is bound to: the run at the step count it was written with,
/// so an older error cannot be put back in its place.
pub(crate) fn last_error_row(run: &str, steps: i64) -> String {
    format!("{run}@{steps}")
}

/// The row a step's body is bound to.
pub(crate) fn step_row(run: &str, seq: i64) -> String {
    format!("{run}/{seq}")
}

#[derive(FromRow)]
struct StepRow {
    seq: i64,
    kind: String,
    body: String,
    at: i64,
}

/// The incident number an `incident_fetched` step read (`incident.number`), kept in clear so
/// runs can be found by it. Only a well-formed number is kept.
pub(crate) fn fetched_number(kind: &str, body: &serde_json::Value) -> Option<String> {
    if kind != "incident_fetched" {
        return None;
    }
    let number = body.pointer("/incident/number")?.as_str()?;
    IncidentRef::number(number).map(|_| number.to_owned())
}

/// Checks a run state name (1–64 printable bytes).
pub(crate) fn check_state(state: &str) -> Result<(), StoreError> {
    codec::check_text(state, "run state", 64)
}

/// Checks a step kind (1–128 printable bytes) and encodes its body.
pub(crate) fn step_columns(kind: &str, body: &serde_json::Value) -> Result<String, StoreError> {
    codec::check_text(kind, "step kind", 128)?;
    codec::json_text(body, "step body", MAX_DOCUMENT_BYTES)
}

/// Inserts journal row `seq` of a run.
pub(crate) async fn insert_step(
    tx: &mut WriteTx,
    scope: &TenantScope,
    run: RunId,
    seq: u32,
    kind: &str,
    body: &str,
    at: i64,
) -> Result<(), StoreError> {
    let run_text = run.to_string();
    let mut script = Script::numbered();
    push_step_insert(
        &mut script,
        scope,
        &run_text,
        i64::from(seq),
        kind,
        body,
        at,
    )?;
    script.execute(tx).await.map_err(|e| {
        codec::conflict_on_duplicate(e, || format!("run {run} already has step {seq}"))
    })
}

/// Appends to `script` the insert of journal row `seq` of a run.
fn push_step_insert<'q>(
    script: &mut Script<'q>,
    scope: &'q TenantScope,
    run: &'q str,
    seq: i64,
    kind: &'q str,
    body: &'q str,
    at: i64,
) -> Result<(), StoreError> {
    script.statement(
        "INSERT INTO run_steps (tenant_id, run_id, seq, kind, body, at) \
         VALUES (?, ?, ?, ?, ?, ?)",
    );
    script.bind(scope.id())?;
    script.bind(run)?;
    script.bind(seq)?;
    script.bind(kind)?;
    script.bind(body)?;
    script.bind(at)
}

impl Store {
    /// The scope's tenant's run, or None (also for another tenant's run).
    pub async fn run(
        &self,
        scope: &TenantScope,
        id: RunId,
    ) -> Result<Option<RunRecord>, StoreError> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE tenant_id = $1 AND id = $2");
        let row: Option<RunRow> = {
            let mut tx = self.read_one_as(scope).await?;
            sqlx::query_as(&sql)
                .bind(scope.id())
                .bind(id.to_string())
                .fetch_optional(&mut *tx)
                .await?
        };
        match row {
            Some(row) => self.open_run_row(row).await.map(Some),
            None => Ok(None),
        }
    }

    /// The run's journal in seq order; empty for an unknown run or another tenant's.
    pub async fn steps(
        &self,
        scope: &TenantScope,
        id: RunId,
    ) -> Result<Vec<StepRecord>, StoreError> {
        let rows: Vec<StepRow> = {
            let mut tx = self.read_one_as(scope).await?;
            sqlx::query_as(
                "SELECT seq, kind, body, at FROM run_steps WHERE tenant_id = $1 AND run_id = $2 \
                 ORDER BY seq",
            )
            .bind(scope.id())
            .bind(id.to_string())
            .fetch_all(&mut *tx)
            .await?
        };
        let run = id.to_string();
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let body = self
                .open_json(
                    scope.id(),
                    Column::StepBody,
                    &step_row(&run, row.seq),
                    &row.body,
                )
                .await?;
            out.push(StepRecord {
                seq: codec::to_u32(row.seq, "step seq")?,
                kind: row.kind,
                body,
                at: row.at,
            });
        }
        Ok(out)
    }

    /// The scope's tenant's runs, newest first, at most `limit` (capped at 200). Pass the last
    /// id of a page as `before` to get the next, older page.
    pub async fn list_runs(
        &self,
        scope: &TenantScope,
        limit: u32,
        before: Option<RunId>,
    ) -> Result<Vec<RunRecord>, StoreError> {
        let limit = i64::from(limit.min(MAX_LIST));
        let rows: Vec<RunRow> = match before {
            None => {
                let sql = format!(
                    "SELECT {RUN_COLUMNS} FROM runs WHERE tenant_id = $1 ORDER BY id DESC LIMIT $2"
                );
                let mut tx = self.read_as(scope).await?;
                sqlx::query_as(&sql)
                    .bind(scope.id())
                    .bind(limit)
                    .fetch_all(&mut *tx)
                    .await?
            }
            Some(before) => {
                let sql = format!(
                    "SELECT {RUN_COLUMNS} FROM runs WHERE tenant_id = $1 AND id < $2 \
                     ORDER BY id DESC LIMIT $3"
                );
                let mut tx = self.read_as(scope).await?;
                sqlx::query_as(&sql)
                    .bind(scope.id())
                    .bind(before.to_string())
                    .bind(limit)
                    .fetch_all(&mut *tx)
                    .await?
            }
        };
        self.open_run_rows(rows).await
    }

    /// Appends a step in one transaction: journal row `expected_seq`, the run's new state,
    /// step count, last error and update time, the approval it opens, the timers it sets and
    /// its audit entries.
    /// NotFound if the run is not the scope's tenant's; Conflict if the journal is not at
    /// `expected_seq` (another writer got there first) or the approval id exists.
    pub async fn append_step(
        &self,
        scope: &TenantScope,
        step: StepWrite,
    ) -> Result<(), StoreError> {
        self.write_step(scope, step, None).await
    }

    /// [`Store::append_step`] for the actor that owns the run: once [`Store::fence_with`] set
    /// this node's leases, the step commits only under the tenant's current fencing token held
    /// by this node, and is refused (Fenced) otherwise, so a node that lost the tenant cannot
    /// move its runs on. Without fencing it is `append_step`. Writes any node may make for a
    /// run it does not own (an approval click, an operator's decision) use `append_step` or
    /// `decide`: the journal's compare-and-set orders them.
    pub async fn append_owned_step(
        &self,
        scope: &TenantScope,
        step: StepWrite,
    ) -> Result<(), StoreError> {
        let fence = self.own_fence(scope)?;
        self.write_step(scope, step, fence).await
    }

    /// [`Store::append_owned_step`] for steps of one run that follow one another (each
    /// `expected_seq` one past the step before it), sharing one commit: the run's next step
    /// when it has no effect outside Steward and needs nothing but the step before it (the
    /// policy's decision on a triage). Answers each step in order. On SQLite the steps go to
    /// the batcher as one job, so they ride in one batch, each under a savepoint of its own: a
    /// step that fails leaves the ones before it written, and the ones after it are not tried
    /// (Conflict), even where one would fit the journal. On PostgreSQL they are one
    /// transaction, all or none: a failure answers the first step with its error and the
    /// others with a copy of it.
    pub async fn append_owned_steps(
        &self,
        scope: &TenantScope,
        steps: Vec<StepWrite>,
    ) -> Vec<Result<(), StoreError>> {
        let count = steps.len();
        let all = |e: StoreError| {
            let copies: Vec<_> = (1..count)
                .map(|_| Err(crate::batch::shared_error(&e)))
                .collect();
            std::iter::once(Err(e)).chain(copies).collect()
        };
        let fence = match self.own_fence(scope) {
            Ok(fence) => fence,
            Err(e) => return all(e),
        };
        if let Err(e) = self.content_key(scope).await {
            return all(e);
        }
        if !self.is_postgres() {
            return self.submit_steps(scope, steps, fence).await;
        }
        let written = async {
            let mut tx = self.begin_write_as(scope).await?;
            for step in &steps {
                self.step_in(&mut tx, scope, step, fence.as_ref(), None)
                    .await?;
            }
            tx.commit().await?;
            Ok::<_, StoreError>(())
        };
        match written.await {
            Ok(()) => {
                if steps.iter().any(|s| !s.timers.is_empty()) {
                    self.timers_changed();
                }
                (0..count).map(|_| Ok(())).collect()
            }
            Err(e) => all(e),
        }
    }

    /// The fence an owned step must be written under: none before [`Store::fence_with`];
    /// after it, this node's lease of the scope's tenant, or Fenced when it holds none.
    fn own_fence(&self, scope: &TenantScope) -> Result<Option<Fence>, StoreError> {
        Ok(match self.fencing() {
            None => None,
            Some(fencing) => {
                let token = fencing.token(scope.tenant()).ok_or_else(|| {
                    StoreError::Fenced(format!(
                        "node `{}` holds no lease of tenant `{}`",
                        fencing.node(),
                        scope.tenant()
                    ))
                })?;
                Some(Fence {
                    node: fencing.node().to_owned(),
                    token,
                })
            }
        })
    }

    /// Writes one step. On SQLite, whose one writer connection serializes every write anyway,
    /// the step goes to the batcher and shares its commit with whatever else is pending (each
    /// step under a savepoint of its own); on PostgreSQL, whose writers run side by side, it
    /// is a transaction of its own.
    async fn write_step(
        &self,
        scope: &TenantScope,
        step: StepWrite,
        fence: Option<Fence>,
    ) -> Result<(), StoreError> {
        self.content_key(scope).await?;
        if !self.is_postgres() {
            return self.submit_step(scope, step, fence).await;
        }
        let mut tx = self.begin_write_as(scope).await?;
        self.step_in(&mut tx, scope, &step, fence.as_ref(), None)
            .await?;
        tx.commit().await?;
        if !step.timers.is_empty() {
            self.timers_changed();
        }
        Ok(())
    }

    /// A step inside `tx`, in which the scope's tenant is set: the fence checked first when
    /// there is one, then [`Store::append_step_in`], within a batch when `batch` is given.
    pub(crate) async fn step_in(
        &self,
        tx: &mut WriteTx,
        scope: &TenantScope,
        step: &StepWrite,
        fence: Option<&Fence>,
        batch: Option<&mut InBatch>,
    ) -> Result<(), StoreError> {
        if let Some(fence) = fence {
            self.check_fence(tx, scope, &fence.node, fence.token)
                .await?;
        }
        self.append_step_in(tx, scope, step, batch).await
    }

    /// Every run, of every tenant, whose state is not one of `terminal_states`, oldest first
    /// within each tenant: what must be resumed on boot. Platform level.
    pub async fn unfinished_runs(
        &self,
        terminal_states: &[&str],
    ) -> Result<Vec<(TenantId, RunId, String)>, StoreError> {
        let placeholders: Vec<String> = (1..=terminal_states.len())
            .map(|i| format!("${i}"))
            .collect();
        let filter = if placeholders.is_empty() {
            String::new()
        } else {
            format!(" WHERE state NOT IN ({})", placeholders.join(", "))
        };
        let sql = format!("SELECT tenant_id, id, state FROM runs{filter} ORDER BY tenant_id, id");
        let mut query = sqlx::query_as::<_, (String, String, String)>(&sql);
        for state in terminal_states {
            query = query.bind(*state);
        }
        let mut tx = self.read_platform().await?;
        let rows = query.fetch_all(&mut *tx).await?;
        rows.into_iter()
            .map(|(tenant, id, state)| Ok((codec::tenant_id(&tenant)?, codec::run_id(&id)?, state)))
            .collect()
    }

    /// [`Store::append_step`] inside a caller's transaction, within a batch when `batch` is
    /// given. On SQLite a step's rows go to the connection in one script (one hand-off);
    /// within a batch the script opens with the batch's statements that start the step's
    /// savepoint (when it has them), and the step's audit entries continue the batch's own
    /// copy of the tenant's chain head (read ahead for the batch's tenants, or the first time
    /// a step needs it) and go in the script too; the copy moves along once the whole step is
    /// written. The caller forgets a tenant's head when it undoes one of its steps.
    /// PostgreSQL writes each row apart and makes no use of `batch`.
    pub(crate) async fn append_step_in(
        &self,
        tx: &mut WriteTx,
        scope: &TenantScope,
        step: &StepWrite,
        batch: Option<&mut InBatch>,
    ) -> Result<(), StoreError> {
        let mut batch = batch.filter(|_| !self.is_postgres());
        check_state(&step.new_state)?;
        if let Some(err) = &step.last_error {
            codec::check_len(err, "last error", 16 * 1024)?;
        }
        for charge in &step.charges {
            codec::check_text(&charge.meter, "meter", 128)?;
        }
        if let Some(message) = &step.approval_message {
            codec::check_text(&message.channel, "slack channel", 64)?;
            codec::check_text(&message.ts, "slack message ts", 64)?;
        }
        let body = step_columns(&step.kind, &step.body)?;
        let now = self.now();
        let key = self.content_key_in(tx, scope).await?;
        let run = step.run_id.to_string();
        let body = content::seal(
            &key,
            scope.id(),
            Column::StepBody,
            &step_row(&run, i64::from(step.expected_seq)),
            &body,
        );

        // The journal must be exactly as long as the writer expects: the run's row is
        // updated only when it is, and the step inserted after it. A step that was not
        // written is then told apart (no such run, or a journal of another length); the
        // caller undoes whatever of it was written.
        let last_error = step.last_error.as_deref().map(|err| {
            let row = last_error_row(&run, i64::from(step.expected_seq) + 1);
            content::seal(&key, scope.id(), Column::RunLastError, &row, err)
        });
        // The audit entries written with the step, and the chain's head after them.
        let mut entries = Vec::new();
        let mut head_after = None;
        if let Some(batch) = batch.as_mut()
            && !step.audit.is_empty()
        {
            let mut head = match batch.heads.get(scope.id()) {
                Some(head) => head.clone(),
                None => crate::audit::chain_head(tx, scope).await?,
            };
            for draft in &step.audit {
                let body = crate::audit::draft_body(draft)?;
                let sealed_with = draft.run_id.map(|_| key.as_ref());
                entries.push(head.next(scope, draft, body, sealed_with, now));
            }
            head_after = Some(head);
        }
        let written = StepWriteRows {
            scope,
            step,
            run: &run,
            body: &body,
            last_error: last_error.as_deref(),
            now,
        };
        if self.is_postgres() {
            match written.apart(tx).await {
                Ok(true) => {}
                Ok(false) => return Err(why_not_appended(tx, scope, step, false).await),
                Err(StoreError::Db(e)) => return Err(written.conflict(e)),
                Err(e) => return Err(e),
            }
            self.step_extras_apart(tx, scope, step).await?;
        } else {
            // SQLite: the step's rows in one script, the timers it ends cleared first. Within a
            // batch the statements that start the step's savepoint go with its first write.
            let opening = batch.as_ref().and_then(|b| b.opening);
            let mut script = Script::positional();
            if let Some(sql) = opening.filter(|_| !step.clears_timers) {
                script.push(ZERO_CHANGES);
                script.push(sql);
                script.push("; ");
            }
            let expected = written.push_all(&mut script, &key, &entries)?;
            // From here on the savepoint is started: a step refused before this point wrote
            // nothing, and leaves the batch nothing to undo.
            if let Some(batch) = batch.as_mut() {
                batch.opening = None;
            }
            if step.clears_timers {
                let mut clear = Script::positional();
                if let Some(sql) = opening {
                    clear.push(sql);
                    clear.push("; ");
                }
                crate::timers::push_clear_timers(&mut clear, scope, step.run_id)?;
                clear.execute(tx).await?;
            }
            match script.rows_affected(tx).await {
                Ok(n) if n == expected => {}
                Ok(_) => return Err(why_not_appended(tx, scope, step, true).await),
                Err(e) => {
                    let e = written.conflict(e);
                    // A run that is not there fails the step's reference to it.
                    if matches!(e, StoreError::Db(_)) {
                        let why = why_not_appended(tx, scope, step, false).await;
                        if matches!(why, StoreError::NotFound(_)) {
                            return Err(why);
                        }
                    }
                    return Err(e);
                }
            }
            if head_after.is_none() {
                for draft in &step.audit {
                    self.append_audit_in(tx, scope, draft).await?;
                }
            }
        }
        if let (Some(batch), Some(head)) = (batch, head_after) {
            batch.heads.insert(scope.id().to_owned(), head);
        }
        Ok(())
    }

    /// The rows a step writes besides its own, each a statement of its own (PostgreSQL's
    /// form): its approval, its message, its timers cleared and set, its audit entries and
    /// its charges (in meter order, so two writers charge the same meters in one order).
    async fn step_extras_apart(
        &self,
        tx: &mut WriteTx,
        scope: &TenantScope,
        step: &StepWrite,
    ) -> Result<(), StoreError> {
        if let Some(approval) = &step.new_approval {
            self.insert_approval(tx, scope, step.run_id, approval)
                .await?;
        }
        if let Some(message) = &step.approval_message {
            crate::approvals::set_message_in(tx, scope, message).await?;
        }
        if step.clears_timers {
            crate::timers::clear_timers_in(tx, scope, step.run_id).await?;
        }
        for timer in &step.timers {
            self.set_timer_in(tx, scope, step.run_id, timer).await?;
        }
        for draft in &step.audit {
            self.append_audit_in(tx, scope, draft).await?;
        }
        for charge in sorted_charges(step) {
            crate::controls::charge_in(tx, scope, &charge.meter, charge.window_start, charge.delta)
                .await?;
        }
        Ok(())
    }
}

/// Opens a script whose changed rows are counted, before statements that change none: on
/// SQLite a statement other than an INSERT, UPDATE or DELETE reports the rows the last of
/// those changed as its own (`changes()`), which the count would take in, and a delete of
/// nothing sets that to zero.
pub(crate) const ZERO_CHANGES: &str = "DELETE FROM timers WHERE 0; ";

/// What a group-commit batch on SQLite hands each step (or decision) it writes.
pub(crate) struct InBatch {
    /// Each tenant's audit chain head as the batch's steps have moved it.
    pub(crate) heads: ChainHeads,
    /// The statements that start the step's (or decision's) savepoint, sent with its first
    /// write; cleared when they are, so still here when it was refused before writing
    /// anything.
    pub(crate) opening: Option<&'static str>,
}

/// A step's charges in meter order.
fn sorted_charges(step: &StepWrite) -> Vec<&crate::MeterCharge> {
    let mut charges: Vec<_> = step.charges.iter().collect();
    charges.sort_unstable_by(|a, b| (&a.meter, a.window_start).cmp(&(&b.meter, b.window_start)));
    charges
}

/// A journal step's writes to `runs` and `run_steps`, its body and last error sealed.
struct StepWriteRows<'a> {
    scope: &'a TenantScope,
    step: &'a StepWrite,
    run: &'a str,
    body: &'a str,
    last_error: Option<&'a str>,
    now: i64,
}

impl<'a> StepWriteRows<'a> {
    /// The run's row updated, then the step inserted, each a statement of its own (the form
    /// PostgreSQL takes): false, with nothing inserted, when the update found no run whose
    /// journal is as long as the step expects.
    async fn apart(&self, tx: &mut WriteTx) -> Result<bool, StoreError> {
        let mut update = Script::numbered();
        self.push_update(&mut update)?;
        if update.rows_affected(tx).await? != 1 {
            return Ok(false);
        }
        let mut insert = Script::numbered();
        self.push_insert(&mut insert)?;
        insert.execute(tx).await?;
        Ok(true)
    }

    /// Appends every row of the step to `script` (one hand-off to SQLite's connection): the
    /// update of its run, its insert, `entries` (its audit entries, when the caller computed
    /// them), its approval, its message, its timers (their payloads sealed with `key`) and
    /// its charges. Returns how many rows the script changes when all of it is written. The
    /// step is inserted even when the update found no run to update: the script then changes
    /// fewer rows, and the caller undoes what it wrote with the step's savepoint.
    fn push_all(
        &self,
        script: &mut Script<'a>,
        key: &DataKey,
        entries: &'a [AuditEntry],
    ) -> Result<u64, StoreError> {
        let step = self.step;
        let mut rows = 2;
        self.push_update(script)?;
        script.push("; ");
        self.push_insert(script)?;
        if !entries.is_empty() {
            script.push("; ");
            crate::audit::push_entries(script, entries)?;
            rows += entries.len() as u64;
        }
        if let Some(approval) = &step.new_approval {
            script.push("; ");
            crate::approvals::push_approval(script, self.scope, step.run_id, approval, self.now)?;
            rows += 1;
        }
        if let Some(message) = &step.approval_message {
            script.push("; ");
            crate::approvals::push_message(script, self.scope, message)?;
            rows += 1;
        }
        for timer in &step.timers {
            script.push("; ");
            crate::timers::push_checked_timer(script, key, self.scope, self.run, timer, self.now)?;
            rows += 1;
        }
        for charge in sorted_charges(step) {
            script.push("; ");
            let (meter, window, delta) = (&charge.meter, charge.window_start, charge.delta);
            crate::controls::push_charge(script, self.scope, meter, window, delta)?;
            rows += 1;
        }
        Ok(rows)
    }

    /// The update of the run's row, when its journal is as long as the step expects.
    fn push_update(&self, script: &mut Script<'a>) -> Result<(), StoreError> {
        let expected = i64::from(self.step.expected_seq);
        script.statement(
            "UPDATE runs SET state = ?, steps = ?, last_error = ?, updated_at = ?, \
             fetched_number = COALESCE(?, fetched_number) \
             WHERE tenant_id = ? AND id = ? AND steps = ?",
        );
        script.bind(self.step.new_state.as_str())?;
        script.bind(expected + 1)?;
        script.bind(self.last_error)?;
        script.bind(self.now)?;
        script.bind(fetched_number(&self.step.kind, &self.step.body))?;
        script.bind(self.scope.id())?;
        script.bind(self.run)?;
        script.bind(expected)
    }

    fn push_insert(&self, script: &mut Script<'a>) -> Result<(), StoreError> {
        let seq = i64::from(self.step.expected_seq);
        let kind = self.step.kind.as_str();
        push_step_insert(script, self.scope, self.run, seq, kind, self.body, self.now)
    }

    /// A failed write of the step's rows: Conflict when one of them is there already.
    fn conflict(&self, err: sqlx::Error) -> StoreError {
        let approval = self.step.new_approval.as_ref();
        let on_approvals = matches!(
            &err,
            sqlx::Error::Database(db) if db.message().contains("approvals")
        );
        match approval {
            Some(approval) if on_approvals => crate::approvals::approval_conflict(err, approval),
            _ => codec::conflict_on_duplicate(err, || {
                format!(
                    "run {} already has step {}",
                    self.step.run_id, self.step.expected_seq
                )
            }),
        }
    }
}

/// Why a step was not appended: its run is not there, or its journal is not as long as the
/// step expects. After a step's script (`in_script`), a journal one longer than the step
/// expects means the step's own rows were written, and the row missing is the approval its
/// message names: the only other statement of the script that can change no row.
async fn why_not_appended(
    tx: &mut WriteTx,
    scope: &TenantScope,
    step: &StepWrite,
    in_script: bool,
) -> StoreError {
    let steps: Result<Option<i64>, _> =
        sqlx::query_scalar("SELECT steps FROM runs WHERE tenant_id = $1 AND id = $2")
            .bind(scope.id())
            .bind(step.run_id.to_string())
            .fetch_optional(&mut **tx)
            .await;
    let written = i64::from(step.expected_seq) + 1;
    match (steps, &step.approval_message) {
        (Err(e), _) => StoreError::Db(e),
        (Ok(None), _) => StoreError::NotFound(format!("run {}", step.run_id)),
        (Ok(Some(steps)), Some(message)) if in_script && steps == written => {
            StoreError::NotFound(format!("approval {}", message.approval_id))
        }
        (Ok(Some(steps)), _) => StoreError::Conflict(format!(
            "run {} has {steps} steps; the write expected {}",
            step.run_id, step.expected_seq
        )),
    }
}
