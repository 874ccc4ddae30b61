//! Deciding an approval. One rule for every path that can decide (today: Slack clicks): the
//! click must come from the message that carries the request (the request or its escalation),
//! the approval must be the run's current one and still pending (not decided, not expired, not
//! superseded by a fresh proposal), and the policy must let the clicker approve every field of
//! the diff (the requester never may). Under the two-person rule the first approval is a vote
//! and a second, different approver decides. Decisions are recorded with a compare-and-set on
//! the journal, so a double click decides once. Every refusal is audited with its reason and
//! the policies behind it, and told to the clicker.

use serde_json::json;
use steward_core::{ApprovalId, RunId};
use steward_persistence::{
    AuditDraft, DecideOutcome, Decision, RunRecord, StepWrite, StoreError, TenantScope,
};
use tracing::warn;

use crate::connectors::SlackMsg;
use crate::journal::{RunState, Step, Verdict, states};
use crate::policy::{ApproveRequest, FieldRequest};
use crate::retry::call;
use crate::root::Steward;
use crate::settings::Requester;
use crate::tenant_runtime::TenantRuntime;

/// Who clicked, and on which message.
#[derive(Debug, Clone)]
pub struct Clicker {
    pub user_id: String,
    pub user_name: String,
    pub channel: Option<String>,
    /// The Slack message the button was on.
    pub message_ts: Option<String>,
}

/// The answer to a decision attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecisionOutcome {
    Recorded {
        run_id: RunId,
        verdict: Verdict,
    },
    /// One approval of the several the policy asks for; `need` more are needed.
    Voted {
        run_id: RunId,
        need: u32,
    },
    AlreadyDecided {
        status: String,
        by: Option<String>,
    },
    /// The clicker approved already; the next approval must come from someone else.
    AlreadyVoted,
    /// The policy does not let the clicker decide this diff.
    NotAllowed {
        reason: String,
        policies: Vec<String>,
    },
    RequesterMayNotApprove,
    /// The click came from a message that does not carry this request, or from a request the
    /// run no longer waits on.
    NotTheCurrentRequest,
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
            Self::Voted { need, .. } => format!(
                "Your approval is recorded. This change needs {need} more approval{} from \
                 someone else before anything is written.",
                if *need == 1 { "" } else { "s" }
            ),
            Self::AlreadyDecided { status, by } => format!(
                "This request was already {status}{}; your click changed nothing.",
                by.as_ref().map(|b| format!(" by {b}")).unwrap_or_default()
            ),
            Self::AlreadyVoted => {
                "You approved this already; the next approval must come from someone else.".into()
            }
            Self::NotAllowed { .. } => {
                "You are not an approver for this change under the workspace's policy; your \
                 click was refused and logged."
                    .into()
            }
            Self::RequesterMayNotApprove => {
                "You asked for this change, so you may not approve it; your click was refused."
                    .into()
            }
            Self::NotTheCurrentRequest => {
                "This message is not the current request for this change; your click was \
                 refused and logged."
                    .into()
            }
            Self::Unknown => "Steward does not know this approval request.".into(),
        }
    }

    /// The refusal's audit reason: a stable word, and for policy refusals the policies.
    fn audit_reason(&self) -> serde_json::Value {
        match self {
            Self::AlreadyDecided { status, .. } => {
                json!({"reason": "already_decided", "status": status})
            }
            Self::AlreadyVoted => json!({"reason": "already_voted"}),
            Self::NotAllowed { reason, policies } => {
                json!({"reason": "not_allowed", "detail": reason, "policies": policies})
            }
            Self::RequesterMayNotApprove => json!({"reason": "requester_may_not_approve"}),
            Self::NotTheCurrentRequest => json!({"reason": "not_the_current_request"}),
            Self::Unknown => json!({"reason": "unknown_approval"}),
            Self::Recorded { .. } | Self::Voted { .. } => json!({"reason": "recorded"}),
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
            other => {
                if !matches!(other, DecisionOutcome::Voted { .. }) {
                    let mut body = other.audit_reason();
                    body["approval_id"] = json!(approval_id.to_string());
                    body["verdict"] = json!(verdict);
                    let audit = AuditDraft {
                        kind: "approval.refused".into(),
                        run_id: None,
                        actor: format!("slack:{}", clicker.user_id),
                        body,
                    };
                    self.store().append_audit(scope, audit).await?;
                }
                // Told in the background: the click must be answered within Slack's 3 s.
                let (rt, who, text) = (runtime.clone(), clicker.clone(), other.message());
                tokio::spawn(async move { tell(&rt, &who, &text).await });
            }
        }
        Ok(outcome)
    }
}

/// What a decision is checked against: the run's journal folded, and the run row.
struct Pending {
    run: RunRecord,
    state: RunState,
}

async fn load(
    rt: &TenantRuntime,
    scope: &TenantScope,
    run_id: RunId,
) -> Result<Option<Pending>, StoreError> {
    let Some(run) = rt.store.run(scope, run_id).await? else {
        return Ok(None);
    };
    let mut journal = Vec::new();
    for record in rt.store.steps(scope, run_id).await? {
        let step = serde_json::from_value::<Step>(record.body)
            .map_err(|e| StoreError::Corrupt(format!("step {}: {e}", record.seq)))?;
        journal.push(step);
    }
    let state = RunState::fold(&journal);
    Ok(Some(Pending { run, state }))
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
    for _ in 0..CONFLICT_RETRIES {
        let Some(pending) = load(rt, scope, approval.run_id).await? else {
            return Ok(DecisionOutcome::Unknown);
        };
        if let Some(refused) = check(rt, &approval, &pending, verdict, clicker) {
            return Ok(refused);
        }
        let have = u32::try_from(pending.state.votes.len()).unwrap_or(u32::MAX);
        let need = pending.state.approvers_required.max(1);
        let outcome = if verdict == Verdict::Approve && have + 1 < need {
            vote(rt, scope, &approval, &pending, clicker, need - have - 1).await
        } else {
            record(rt, scope, &approval, &pending, verdict, clicker).await
        };
        match outcome {
            Err(StoreError::Conflict(_)) => continue,
            other => return other,
        }
    }
    Err(StoreError::Conflict(
        "the run's journal kept moving while deciding".into(),
    ))
}

/// Every rule a click must pass before it is recorded; the refusal, if one fails.
fn check(
    rt: &TenantRuntime,
    approval: &steward_persistence::ApprovalRecord,
    pending: &Pending,
    verdict: Verdict,
    clicker: &Clicker,
) -> Option<DecisionOutcome> {
    let state = &pending.state;
    if approval.status != "pending" {
        return Some(DecisionOutcome::AlreadyDecided {
            status: approval.status.clone(),
            by: approval.decided_by.clone(),
        });
    }
    if state.approval_id != Some(approval.id) || state.verdict.is_some() || state.finished.is_some()
    {
        return Some(DecisionOutcome::NotTheCurrentRequest);
    }
    // The click must come from a message that carries this request. Until the step that
    // records Slack's answer to the post has committed, Steward knows no message yet; the
    // signed payload's button then names the approval, which was made for this diff only.
    let known: Vec<&String> = approval
        .message_ts
        .iter()
        .chain(state.message.as_ref().map(|m| &m.1))
        .chain(state.escalation_message.as_ref().map(|m| &m.1))
        .collect();
    let from_request = match &clicker.message_ts {
        Some(ts) => known.is_empty() || known.contains(&ts),
        None => false,
    };
    if !from_request {
        return Some(DecisionOutcome::NotTheCurrentRequest);
    }
    if verdict == Verdict::Approve && state.votes.iter().any(|(id, _)| *id == clicker.user_id) {
        return Some(DecisionOutcome::AlreadyVoted);
    }
    let slack = &rt.settings.slack;
    let requester = requester_of(&pending.run, state);
    let is_requester = slack.is_requester(&clicker.user_id, &requester);
    if verdict == Verdict::Approve && is_requester {
        return Some(DecisionOutcome::RequesterMayNotApprove);
    }
    let groups = slack.groups_of(&clicker.user_id);
    let source = pending
        .run
        .source
        .as_ref()
        .map_or_else(|| "api".to_owned(), ToString::to_string);
    let diff = state.diff.as_ref()?;
    let tenant = rt.scope.tenant().as_str();
    let run_id = pending.run.id.to_string();
    for entry in &diff.entries {
        let req = ApproveRequest {
            field: FieldRequest {
                tenant,
                run_id: &run_id,
                source: &source,
                table: &diff.table,
                field: &entry.field,
                old_value: &entry.old,
                value: &entry.new,
            },
            person: &clicker.user_id,
            groups: &groups,
            // Withdrawing one's own request is allowed; approving it never is.
            is_requester: is_requester && verdict == Verdict::Approve,
            escalated: state.escalated,
        };
        let answer = rt.policy.may_approve(&req);
        if !answer.allowed {
            return Some(DecisionOutcome::NotAllowed {
                reason: format!("{}: {}", entry.field, answer.reason),
                policies: answer.policies,
            });
        }
    }
    None
}

/// Who asked for the run's change: the Slack user an API caller named, the token that started
/// it, and the ServiceNow user who opened the incident.
fn requester_of(run: &RunRecord, state: &RunState) -> Requester {
    let text = |key: &str| {
        run.trigger
            .get(key)
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    Requester {
        slack: text("requester_slack").or_else(|| state.requester.clone()),
        servicenow: state
            .incident
            .as_ref()
            .map(|i| i.field("opened_by").to_owned())
            .filter(|s| !s.is_empty()),
        token_label: text("token_label"),
    }
}

/// Records one approval short of the number needed; the run goes on waiting.
async fn vote(
    rt: &TenantRuntime,
    scope: &TenantScope,
    approval: &steward_persistence::ApprovalRecord,
    pending: &Pending,
    clicker: &Clicker,
    still_needed: u32,
) -> Result<DecisionOutcome, StoreError> {
    let step = Step::ApprovalVoted {
        approval_id: approval.id,
        by: clicker.user_id.clone(),
        by_name: clicker.user_name.clone(),
    };
    let body = serde_json::to_value(&step).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let seq = pending.run.steps;
    let write = StepWrite {
        run_id: approval.run_id,
        expected_seq: seq,
        kind: step.kind().into(),
        body,
        new_state: states::AWAITING_APPROVAL.into(),
        last_error: None,
        audit: vec![AuditDraft {
            kind: "run.approval_voted".into(),
            run_id: Some(approval.run_id),
            actor: format!("slack:{}", clicker.user_id),
            body: json!({
                "seq": seq,
                "approval_id": approval.id.to_string(),
                "diff_sha256": approval.diff_hash,
                "still_needed": still_needed,
            }),
        }],
        new_approval: None,
        timers: vec![],
        charges: vec![],
        approval_message: None,
        clears_timers: false,
    };
    rt.store.append_step(scope, write).await?;
    Ok(DecisionOutcome::Voted {
        run_id: approval.run_id,
        need: still_needed,
    })
}

/// Records the decision itself, with a compare-and-set on the approval and the journal.
async fn record(
    rt: &TenantRuntime,
    scope: &TenantScope,
    approval: &steward_persistence::ApprovalRecord,
    pending: &Pending,
    verdict: Verdict,
    clicker: &Clicker,
) -> Result<DecisionOutcome, StoreError> {
    let decision = match verdict {
        Verdict::Approve => Decision::Approve,
        Verdict::Reject => Decision::Reject,
    };
    let mut by = format!("{} ({})", clicker.user_name, clicker.user_id);
    for (id, name) in pending.state.votes.iter().rev() {
        by = format!("{name} ({id}) and {by}");
    }
    let steps = pending.run.steps;
    let step = Step::ApprovalDecided {
        approval_id: approval.id,
        verdict,
        by: clicker.user_id.clone(),
        by_name: clicker.user_name.clone(),
    };
    let body = serde_json::to_value(&step).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let approvers: Vec<&str> = pending
        .state
        .votes
        .iter()
        .map(|(id, _)| id.as_str())
        .chain([clicker.user_id.as_str()])
        .collect();
    let write = StepWrite {
        run_id: approval.run_id,
        expected_seq: steps,
        kind: step.kind().into(),
        body,
        new_state: states::WRITING.into(),
        last_error: None,
        audit: vec![AuditDraft {
            kind: "run.approval_decided".into(),
            run_id: Some(approval.run_id),
            actor: format!("slack:{}", clicker.user_id),
            body: json!({
                "seq": steps,
                "approval_id": approval.id.to_string(),
                "verdict": verdict,
                "diff_sha256": approval.diff_hash,
                "record_version": approval.record_version,
                "approvers": approvers,
            }),
        }],
        new_approval: None,
        timers: vec![],
        charges: vec![],
        approval_message: None,
        clears_timers: false,
    };
    match rt
        .store
        .decide_approval(scope, approval.id, decision, &by, write)
        .await?
    {
        DecideOutcome::Decided(_) => Ok(DecisionOutcome::Recorded {
            run_id: approval.run_id,
            verdict,
        }),
        DecideOutcome::AlreadyDecided(a) => Ok(DecisionOutcome::AlreadyDecided {
            status: a.status,
            by: a.decided_by,
        }),
        DecideOutcome::NotFound => Ok(DecisionOutcome::Unknown),
    }
}

/// Tells the clicker, privately, what happened to their click.
async fn tell(rt: &TenantRuntime, clicker: &Clicker, text: &str) {
    let channel = clicker
        .channel
        .clone()
        .unwrap_or_else(|| rt.settings.slack.approval_channel.clone());
    let slack = rt.connectors().slack;
    let result = call(&rt.metrics, &slack, rt.retry.call_timeout, |reply| {
        SlackMsg::Ephemeral {
            channel,
            user: clicker.user_id.clone(),
            text: text.to_owned(),
            reply,
        }
    })
    .await;
    if let Err(error) = result {
        warn!(%error, "Telling a clicker about a refused click failed.");
    }
}
