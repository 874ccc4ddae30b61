//! Deciding an approval. One rule for every path that can decide (today: Slack clicks): the
//! clicker must be one of the tenant's approvers (or, once the request was escalated, one of its
//! escalation approvers), the approval must still be pending (not decided, not expired), and the
//! decision is recorded with a compare-and-set so a double click decides once. Every refusal is
//! audited and told to the clicker.

use serde_json::json;
use steward_core::{ApprovalId, RunId};
use steward_persistence::{
    AuditDraft, DecideOutcome, Decision, StepWrite, StoreError, TenantScope,
};
use tracing::warn;

use crate::connectors::SlackMsg;
use crate::journal::{Step, Verdict};
use crate::retry::call;
use crate::root::Steward;
use crate::tenant_runtime::TenantRuntime;

/// Who clicked, and on which message.
#[derive(Debug, Clone)]
pub struct Clicker {
    pub user_id: String,
    pub user_name: String,
    pub channel: Option<String>,
}

/// The answer to a decision attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecisionOutcome {
    Recorded { run_id: RunId, verdict: Verdict },
    AlreadyDecided { status: String, by: Option<String> },
    NotAnApprover,
    RequesterMayNotApprove,
    Unknown,
}

impl DecisionOutcome {
    /// A short sentence for the person who clicked.
    pub fn message(&self) -> String {
        match self {
            Self::Recorded {
                verdict: Verdict::Approve,
                ..
            } => "Approved. Steward is writing the change.".into(),
            Self::Recorded {
                verdict: Verdict::Reject,
                ..
            } => "Rejected. Nothing will be written.".into(),
            Self::AlreadyDecided { status, by } => format!(
                "This request was already {status}{}; your click changed nothing.",
                by.as_ref().map(|b| format!(" by {b}")).unwrap_or_default()
            ),
            Self::NotAnApprover => {
                "You are not an approver for this workspace; your click was refused and logged."
                    .into()
            }
            Self::RequesterMayNotApprove => {
                "You asked for this change, so you may not approve it; your click was refused."
                    .into()
            }
            Self::Unknown => "Steward does not know this approval request.".into(),
        }
    }
}

const CONFLICT_RETRIES: usize = 5;

impl Steward {
    /// Decides `approval_id` for the clicker, if the rules allow it, and wakes the run.
    pub async fn decide(
        &self,
        scope: &TenantScope,
        approval_id: ApprovalId,
        verdict: Verdict,
        clicker: &Clicker,
    ) -> Result<DecisionOutcome, StoreError> {
        let runtime = self
            .runtime(scope.tenant())
            .await
            .map_err(|e| StoreError::NotFound(format!("tenant runtime: {e}")))?;
        let outcome = decide_in(&runtime, scope, approval_id, verdict, clicker).await?;
        match &outcome {
            DecisionOutcome::Recorded { run_id, .. } => self.wake(scope.tenant(), *run_id).await,
            refused => {
                let audit = AuditDraft {
                    kind: "approval.refused".into(),
                    run_id: None,
                    actor: format!("slack:{}", clicker.user_id),
                    body: json!({
                        "approval_id": approval_id.to_string(),
                        "reason": format!("{refused:?}"),
                    }),
                };
                self.store().append_audit(scope, audit).await?;
                // Told in the background: the click must be answered within Slack's 3 s.
                let (rt, who, text) = (runtime.clone(), clicker.clone(), refused.message());
                tokio::spawn(async move { tell(&rt, &who, &text).await });
            }
        }
        Ok(outcome)
    }
}

async fn decide_in(
    rt: &TenantRuntime,
    scope: &TenantScope,
    approval_id: ApprovalId,
    verdict: Verdict,
    clicker: &Clicker,
) -> Result<DecisionOutcome, StoreError> {
    let Some(approval) = rt.store.approval(scope, approval_id).await? else {
        return Ok(DecisionOutcome::Unknown);
    };
    if !may_decide(rt, scope, approval.run_id, &clicker.user_id).await? {
        return Ok(DecisionOutcome::NotAnApprover);
    }
    let Some(run) = rt.store.run(scope, approval.run_id).await? else {
        return Ok(DecisionOutcome::Unknown);
    };
    let requester = run.trigger.get("requester_slack").and_then(|v| v.as_str());
    if verdict == Verdict::Approve && requester == Some(clicker.user_id.as_str()) {
        return Ok(DecisionOutcome::RequesterMayNotApprove);
    }
    let decision = match verdict {
        Verdict::Approve => Decision::Approve,
        Verdict::Reject => Decision::Reject,
    };
    let by = format!("{} ({})", clicker.user_name, clicker.user_id);
    for _ in 0..CONFLICT_RETRIES {
        let steps = match rt.store.run(scope, approval.run_id).await? {
            Some(r) => r.steps,
            None => return Ok(DecisionOutcome::Unknown),
        };
        let step = Step::ApprovalDecided {
            approval_id,
            verdict,
            by: clicker.user_id.clone(),
            by_name: clicker.user_name.clone(),
        };
        let body = serde_json::to_value(&step).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let write = StepWrite {
            run_id: approval.run_id,
            expected_seq: steps,
            kind: step.kind().into(),
            body,
            new_state: crate::journal::states::WRITING.into(),
            last_error: None,
            audit: vec![AuditDraft {
                kind: "run.approval_decided".into(),
                run_id: Some(approval.run_id),
                actor: format!("slack:{}", clicker.user_id),
                body: json!({
                    "seq": steps,
                    "approval_id": approval_id.to_string(),
                    "verdict": verdict,
                    "diff_sha256": approval.diff_hash,
                }),
            }],
            new_approval: None,
            timers: vec![],
        };
        match rt
            .store
            .decide_approval(scope, approval_id, decision, &by, write)
            .await
        {
            Ok(DecideOutcome::Decided(_)) => {
                return Ok(DecisionOutcome::Recorded {
                    run_id: approval.run_id,
                    verdict,
                });
            }
            Ok(DecideOutcome::AlreadyDecided(a)) => {
                return Ok(DecisionOutcome::AlreadyDecided {
                    status: a.status,
                    by: a.decided_by,
                });
            }
            Ok(DecideOutcome::NotFound) => return Ok(DecisionOutcome::Unknown),
            Err(StoreError::Conflict(_)) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Conflict(
        "the run's journal kept moving while deciding".into(),
    ))
}

/// Whether `user` may decide the run's approval: a listed approver always, an escalation
/// approver once the run's journal records the escalation.
async fn may_decide(
    rt: &TenantRuntime,
    scope: &TenantScope,
    run_id: RunId,
    user: &str,
) -> Result<bool, StoreError> {
    let slack = &rt.settings.slack;
    if slack.approvers.iter().any(|a| a == user) {
        return Ok(true);
    }
    if !slack.escalation_approvers.iter().any(|a| a == user) {
        return Ok(false);
    }
    let escalated = Step::ApprovalEscalated {
        channel: None,
        ts: None,
    }
    .kind();
    let steps = rt.store.steps(scope, run_id).await?;
    Ok(steps.iter().any(|s| s.kind == escalated))
}

/// Tells the clicker, privately, what happened to their click.
async fn tell(rt: &TenantRuntime, clicker: &Clicker, text: &str) {
    let channel = clicker
        .channel
        .clone()
        .unwrap_or_else(|| rt.settings.slack.approval_channel.clone());
    let slack = rt.connectors().slack;
    let result = call(&slack, rt.retry.call_timeout, |reply| SlackMsg::Ephemeral {
        channel,
        user: clicker.user_id.clone(),
        text: text.to_owned(),
        reply,
    })
    .await;
    if let Err(error) = result {
        warn!(%error, "Telling a clicker about a refused click failed.");
    }
}
