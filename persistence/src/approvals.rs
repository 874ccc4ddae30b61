//! Approvals: a request for a person to approve one exact diff. An approval is decided at most
//! once; the decision and the run's decision step commit together.

use serde::Serialize;
use sqlx::FromRow;
use steward_core::{ApprovalId, RunId};

use crate::codec::{self, MAX_DOCUMENT_BYTES};
use crate::intake::Script;
use crate::runs::InBatch;
use crate::store::WriteTx;
use crate::{StepWrite, Store, StoreError, TenantScope};

/// An approval request opened by a run step.
#[derive(Clone, Debug, PartialEq)]
pub struct NewApproval {
    pub id: ApprovalId,
    /// Hash of the diff and of the old values it was computed against (1–128 bytes).
    pub diff_hash: String,
    /// The record version (`sys_mod_count`) the diff was computed against (at most 64 bytes).
    pub record_version: String,
    /// The policy decision the approval is bound to.
    pub policy: serde_json::Value,
}

/// An approval as stored.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ApprovalRecord {
    pub id: ApprovalId,
    pub run_id: RunId,
    pub diff_hash: String,
    pub record_version: String,
    pub policy: serde_json::Value,
    /// `pending`, `approved`, `rejected` or `expired`.
    pub status: String,
    /// Slack channel of the approval message, once posted.
    pub channel: Option<String>,
    /// Slack timestamp of the approval message, once posted.
    pub message_ts: Option<String>,
    pub decided_by: Option<String>,
    pub decided_at: Option<i64>,
    pub created_at: i64,
}

/// A person's answer to an approval request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Approve,
    Reject,
}

/// What `decide_approval` did.
#[derive(Clone, Debug, PartialEq)]
pub enum DecideOutcome {
    /// This call decided the approval (the record as decided) and appended the step.
    Decided(ApprovalRecord),
    /// It was decided (or expired) before; nothing was written.
    AlreadyDecided(ApprovalRecord),
    /// No such approval in the scope's tenant.
    NotFound,
}

#[derive(FromRow)]
struct ApprovalRow {
    id: String,
    run_id: String,
    diff_hash: String,
    record_version: String,
    policy: String,
    status: String,
    channel: Option<String>,
    message_ts: Option<String>,
    decided_by: Option<String>,
    decided_at: Option<i64>,
    created_at: i64,
}

impl TryFrom<ApprovalRow> for ApprovalRecord {
    type Error = StoreError;
    fn try_from(row: ApprovalRow) -> Result<Self, StoreError> {
        Ok(ApprovalRecord {
            id: codec::approval_id(&row.id)?,
            run_id: codec::run_id(&row.run_id)?,
            diff_hash: row.diff_hash,
            record_version: row.record_version,
            policy: codec::from_json(&row.policy, "approval policy")?,
            status: row.status,
            channel: row.channel,
            message_ts: row.message_ts,
            decided_by: row.decided_by,
            decided_at: row.decided_at,
            created_at: row.created_at,
        })
    }
}

const APPROVAL_SELECT: &str = "SELECT id, run_id, diff_hash, record_version, policy, status, \
     channel, message_ts, decided_by, decided_at, created_at FROM approvals \
     WHERE tenant_id = $1 AND id = $2";

impl Store {
    /// Records where the approval's Slack message is. Posting again (after a restart, say)
    /// replaces the previous location. NotFound if the approval is not the scope's tenant's.
    pub async fn set_approval_message(
        &self,
        scope: &TenantScope,
        id: ApprovalId,
        channel: &str,
        ts: &str,
    ) -> Result<(), StoreError> {
        codec::check_text(channel, "slack channel", 64)?;
        codec::check_text(ts, "slack message ts", 64)?;
        let message = crate::ApprovalMessage {
            approval_id: id,
            channel: channel.to_owned(),
            ts: ts.to_owned(),
        };
        let mut tx = self.begin_write_as(scope).await?;
        set_message_in(&mut tx, scope, &message).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The scope's tenant's approval, or None.
    pub async fn approval(
        &self,
        scope: &TenantScope,
        id: ApprovalId,
    ) -> Result<Option<ApprovalRecord>, StoreError> {
        let mut tx = self.read_as(scope).await?;
        let row: Option<ApprovalRow> = sqlx::query_as(APPROVAL_SELECT)
            .bind(scope.id())
            .bind(id.to_string())
            .fetch_optional(&mut *tx)
            .await?;
        row.map(ApprovalRecord::try_from).transpose()
    }

    /// Decides a pending approval and appends the run's decision step (same rules as
    /// `append_step`; the step must be for the approval's run) in one transaction. Of any
    /// number of concurrent calls exactly one gets `Decided`. If the step cannot be appended
    /// (Conflict, NotFound, Invalid) the decision is rolled back and the error returned.
    pub async fn decide_approval(
        &self,
        scope: &TenantScope,
        id: ApprovalId,
        decision: Decision,
        by: &str,
        step: StepWrite,
    ) -> Result<DecideOutcome, StoreError> {
        codec::check_text(by, "approver", 256)?;
        let status = match decision {
            Decision::Approve => "approved",
            Decision::Reject => "rejected",
        };
        self.close_approval(scope, id, status, Some(by), step).await
    }

    /// Marks a pending approval expired (no one decided in time) and appends the run's step,
    /// with the same atomicity and outcomes as [`Store::decide_approval`]; `decided_by` stays
    /// empty and `decided_at` is the expiry time.
    pub async fn expire_approval(
        &self,
        scope: &TenantScope,
        id: ApprovalId,
        step: StepWrite,
    ) -> Result<DecideOutcome, StoreError> {
        self.close_approval(scope, id, "expired", None, step).await
    }

    async fn close_approval(
        &self,
        scope: &TenantScope,
        id: ApprovalId,
        status: &'static str,
        by: Option<&str>,
        step: StepWrite,
    ) -> Result<DecideOutcome, StoreError> {
        self.content_key(scope).await?;
        let sets_timers = !step.timers.is_empty();
        // On SQLite the decision shares a batch's commit, as journal steps do: a transaction
        // of its own would hold the one writer connection, and the batcher behind it, for a
        // commit of its own.
        let job = crate::batch::DecideJob {
            scope: scope.clone(),
            id,
            status,
            by: by.map(str::to_owned),
            step,
        };
        let outcome = if self.is_postgres() {
            let mut tx = self.begin_write_as(scope).await?;
            let outcome = self.close_approval_in(&mut tx, &job, None).await?;
            if matches!(outcome, DecideOutcome::Decided(_)) {
                tx.commit().await?;
            }
            outcome
        } else {
            self.submit_decision(job).await?
        };
        if matches!(outcome, DecideOutcome::Decided(_)) && sets_timers {
            self.timers_changed();
        }
        Ok(outcome)
    }

    /// [`Store::decide_approval`]'s writes inside `tx`, in which the scope's tenant is set
    /// (within a batch when `batch` is given, as for a step): `Decided` only when the
    /// approval was pending and the step was appended. Nothing is written for the other
    /// outcomes; an error may leave writes for the caller to undo.
    pub(crate) async fn close_approval_in(
        &self,
        tx: &mut WriteTx,
        job: &crate::batch::DecideJob,
        batch: Option<&mut InBatch>,
    ) -> Result<DecideOutcome, StoreError> {
        let (scope, id, step) = (&job.scope, job.id, &job.step);
        let mut batch = batch.filter(|_| !self.is_postgres());
        let mut script = Script::numbered();
        // Within a batch on SQLite, the statements that start the decision's savepoint go
        // with its first write.
        if let Some(opening) = batch.as_mut().and_then(|b| b.opening.take()) {
            script.push(crate::runs::ZERO_CHANGES);
            script.push(opening);
            script.push("; ");
        }
        script.statement(
            "UPDATE approvals SET status = ?, decided_by = ?, decided_at = ? \
             WHERE tenant_id = ? AND id = ? AND status = 'pending'",
        );
        script.bind(job.status)?;
        script.bind(job.by.as_deref())?;
        script.bind(self.now())?;
        script.bind(scope.id())?;
        script.bind(id.to_string())?;
        let decided = script.rows_affected(tx).await?;
        let record = approval_in(tx, scope, id).await?;
        let Some(record) = record else {
            return Ok(DecideOutcome::NotFound);
        };
        if decided == 0 {
            return Ok(DecideOutcome::AlreadyDecided(record));
        }

        if step.run_id != record.run_id {
            return Err(StoreError::Invalid(format!(
                "approval {id} belongs to run {}, not to run {}",
                record.run_id, step.run_id
            )));
        }
        self.append_step_in(tx, scope, step, batch).await?;
        Ok(DecideOutcome::Decided(record))
    }

    /// Inserts a pending approval for `run` inside a step's transaction.
    pub(crate) async fn insert_approval(
        &self,
        tx: &mut WriteTx,
        scope: &TenantScope,
        run: RunId,
        approval: &NewApproval,
    ) -> Result<(), StoreError> {
        let mut script = Script::numbered();
        push_approval(&mut script, scope, run, approval, self.now())?;
        script
            .execute(tx)
            .await
            .map_err(|e| approval_conflict(e, approval))
    }
}

/// Checks a new approval and appends its insert to `script`.
pub(crate) fn push_approval<'q>(
    script: &mut Script<'q>,
    scope: &'q TenantScope,
    run: RunId,
    approval: &'q NewApproval,
    now: i64,
) -> Result<(), StoreError> {
    codec::check_text(&approval.diff_hash, "diff hash", 128)?;
    codec::check_len(&approval.record_version, "record version", 64)?;
    let policy = codec::json_text(&approval.policy, "approval policy", MAX_DOCUMENT_BYTES)?;
    script.statement(
        "INSERT INTO approvals (tenant_id, id, run_id, diff_hash, record_version, policy, \
         status, created_at) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?)",
    );
    script.bind(scope.id())?;
    script.bind(approval.id.to_string())?;
    script.bind(run.to_string())?;
    script.bind(approval.diff_hash.as_str())?;
    script.bind(approval.record_version.as_str())?;
    script.bind(policy)?;
    script.bind(now)
}

/// A failed insert of `approval`: Conflict when an approval with its id exists.
pub(crate) fn approval_conflict(err: sqlx::Error, approval: &NewApproval) -> StoreError {
    codec::conflict_on_duplicate(err, || format!("approval {} already exists", approval.id))
}

async fn approval_in(
    tx: &mut WriteTx,
    scope: &TenantScope,
    id: ApprovalId,
) -> Result<Option<ApprovalRecord>, StoreError> {
    let row: Option<ApprovalRow> = sqlx::query_as(APPROVAL_SELECT)
        .bind(scope.id())
        .bind(id.to_string())
        .fetch_optional(&mut **tx)
        .await?;
    row.map(ApprovalRecord::try_from).transpose()
}

/// Notes inside `tx` where the message showing an approval was posted; NotFound when the
/// scope's tenant has no such approval.
pub(crate) async fn set_message_in(
    tx: &mut WriteTx,
    scope: &TenantScope,
    message: &crate::ApprovalMessage,
) -> Result<(), StoreError> {
    let mut script = Script::numbered();
    push_message(&mut script, scope, message)?;
    if script.rows_affected(tx).await? == 0 {
        return Err(StoreError::NotFound(format!(
            "approval {}",
            message.approval_id
        )));
    }
    Ok(())
}

/// Appends to `script` the update noting where the message showing an approval was posted: it
/// changes one row, or none when the scope's tenant has no such approval.
pub(crate) fn push_message<'q>(
    script: &mut Script<'q>,
    scope: &'q TenantScope,
    message: &'q crate::ApprovalMessage,
) -> Result<(), StoreError> {
    script.statement(
        "UPDATE approvals SET channel = ?, message_ts = ? WHERE tenant_id = ? AND id = ?",
    );
    script.bind(message.channel.as_str())?;
    script.bind(message.ts.as_str())?;
    script.bind(scope.id())?;
    script.bind(message.approval_id.to_string())
}
