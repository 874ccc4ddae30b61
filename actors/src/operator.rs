//! Operators' decisions on a run: retry a failed run from the step it failed at, or cancel a run
//! that has not ended. Each is one journal step written with optimistic concurrency, audited
//! with who decided (`operator:<name>`) and why; each brings the run's Slack message up to date
//! where there is one, and wakes the run.

use serde::Serialize;
use serde_json::json;
use steward_core::RunId;
use steward_persistence::{
    AuditDraft, DecideOutcome, RunRecord, StepRecord, StepWrite, StoreError, TenantScope,
    redact_text,
};
use tracing::warn;

use crate::crash::step_name;
use crate::journal::{RunState, Step, Verdict, states};
use crate::root::Steward;
use crate::run::{Notice, announce};
use crate::tenant::TenantMsg;

/// The longest operator name.
const MAX_OPERATOR_CHARS: usize = 64;
/// The longest reason.
const MAX_REASON_CHARS: usize = 1000;
/// How often a decision is tried again when the journal moved underneath it.
const CONFLICT_RETRIES: usize = 5;

/// Who decides, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorRequest {
    /// The operator's name: 1–64 letters, digits or `.`, `_`, `-`, `@`.
    pub operator: String,
    /// Why: 1–1000 characters, no control characters.
    pub reason: String,
}

impl OperatorRequest {
    /// Refuses a name or reason that is empty, too long or malformed.
    pub fn check(&self) -> Result<(), OperatorError> {
        let name_ok = !self.operator.is_empty()
            && self.operator.chars().count() <= MAX_OPERATOR_CHARS
            && self
                .operator
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
        if !name_ok {
            return Err(OperatorError::Invalid(format!(
                "operator must be 1 to {MAX_OPERATOR_CHARS} letters, digits, `.`, `_`, `-` or `@`"
            )));
        }
        if self.reason.trim().is_empty() || self.reason.chars().count() > MAX_REASON_CHARS {
            return Err(OperatorError::Invalid(format!(
                "reason must be 1 to {MAX_REASON_CHARS} characters"
            )));
        }
        if self.reason.chars().any(char::is_control) {
            return Err(OperatorError::Invalid(
                "reason must not contain control characters".into(),
            ));
        }
        Ok(())
    }

    /// The audit actor: `operator:<name>`.
    pub fn actor(&self) -> String {
        format!("operator:{}", self.operator)
    }
}

/// What an operator's decision did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OperatorOutcome {
    pub run_id: RunId,
    /// `retried` or `cancelled`.
    pub action: &'static str,
    pub previous_state: String,
    pub state: String,
    /// The step a retried run goes on with.
    pub step: Option<String>,
}

/// Why an operator's decision was not recorded.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("no such run")]
    NotFound,
    #[error("only a failed run can be retried; this run is {0}")]
    NotRetryable(String),
    #[error("the run has already ended: {0}")]
    Ended(String),
    #[error(
        "the run has recorded its intent to write to ServiceNow; a cancel cannot stop a write \
         that may be under way, so the run is left to finish"
    )]
    Writing,
    #[error("the run's journal cannot be read, so it cannot go on: {0}")]
    Unreadable(String),
    #[error("the run kept changing while the decision was recorded; try again")]
    Busy,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Folds stored journal rows into the run's state; fails naming the first step that does not
/// read as a step of this build.
pub fn fold_journal(steps: &[StepRecord]) -> Result<RunState, String> {
    let mut journal = Vec::with_capacity(steps.len());
    for record in steps {
        let step: Step = serde_json::from_value(record.body.clone())
            .map_err(|e| format!("step {} ({}): {e}", record.seq, record.kind))?;
        journal.push(step);
    }
    Ok(RunState::fold(&journal))
}

/// The step write for an operator's decision, with its audit entry.
fn decision_write(
    record: &RunRecord,
    step: &Step,
    after: &RunState,
    req: &OperatorRequest,
    audit_kind: &str,
) -> StepWrite {
    let reason = redact_text(&req.reason);
    StepWrite {
        run_id: record.id,
        expected_seq: record.steps,
        kind: step.kind().to_owned(),
        body: serde_json::to_value(step).unwrap_or_default(),
        new_state: after.stored_state().to_owned(),
        last_error: after.finished.as_ref().map(|(_, why)| why.clone()),
        audit: vec![AuditDraft {
            kind: audit_kind.to_owned(),
            run_id: Some(record.id),
            actor: req.actor(),
            body: json!({
                "seq": record.steps,
                "previous_state": record.state,
                "state": after.stored_state(),
                "reason": reason,
            }),
        }],
        new_approval: None,
        timers: vec![],
        charges: vec![],
        approval_message: None,
        clears_timers: false,
    }
}

impl Steward {
    async fn load(
        &self,
        scope: &TenantScope,
        run_id: RunId,
    ) -> Result<(RunRecord, Result<RunState, String>), OperatorError> {
        let record = self
            .store()
            .run(scope, run_id)
            .await?
            .ok_or(OperatorError::NotFound)?;
        let steps = self.store().steps(scope, run_id).await?;
        Ok((record, fold_journal(&steps)))
    }

    /// Resumes a failed run from the step it failed at: a `retried` step clears its end, its
    /// restart budget starts afresh, and its actor starts again. Only `failed` runs qualify.
    pub async fn retry_run(
        &self,
        scope: &TenantScope,
        run_id: RunId,
        req: &OperatorRequest,
    ) -> Result<OperatorOutcome, OperatorError> {
        req.check()?;
        for _ in 0..CONFLICT_RETRIES {
            let (record, run) = self.load(scope, run_id).await?;
            if record.state != states::FAILED {
                return Err(OperatorError::NotRetryable(record.state));
            }
            let run = run.map_err(OperatorError::Unreadable)?;
            let step = Step::Retried {
                by: req.actor(),
                reason: req.reason.clone(),
            };
            let mut after = run.clone();
            after.apply(&step);
            let write = decision_write(&record, &step, &after, req, "run.retried");
            match self.store().append_step(scope, write).await {
                Ok(()) => {
                    self.after_retry(scope, run_id, &after).await;
                    return Ok(OperatorOutcome {
                        run_id,
                        action: "retried",
                        previous_state: record.state,
                        state: after.stored_state().to_owned(),
                        step: Some(step_name(&after.next(self.store().clock().now_millis()))),
                    });
                }
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(OperatorError::Busy)
    }

    async fn after_retry(&self, scope: &TenantScope, run_id: RunId, run: &RunState) {
        if run.message.is_some() {
            let pending = match run.approval_id {
                Some(id) if run.verdict.is_none() => self
                    .store()
                    .approval(scope, id)
                    .await
                    .ok()
                    .flatten()
                    .is_some_and(|a| a.status == "pending"),
                _ => false,
            };
            let notice = match &run.verdict {
                Some((Verdict::Approve, _, _)) => Some(Notice::Writing),
                None if pending => Some(Notice::AwaitingApproval),
                _ => None,
            };
            if let Some(notice) = notice {
                self.announce(scope, run_id, run, notice).await;
            }
        }
        match self.tenant(scope.tenant()).await {
            Ok(sup) => {
                let _ = sup.cast(TenantMsg::Retried(run_id));
            }
            Err(_) => self.wake(scope.tenant(), run_id).await,
        }
    }

    /// Ends a run that has not ended as `cancelled`, with the operator and reason. A pending
    /// approval is closed in the same transaction, so a later click is refused. A run that has
    /// recorded its write intent is not cancelled: the write may be under way.
    pub async fn cancel_run(
        &self,
        scope: &TenantScope,
        run_id: RunId,
        req: &OperatorRequest,
    ) -> Result<OperatorOutcome, OperatorError> {
        req.check()?;
        for _ in 0..CONFLICT_RETRIES {
            let (record, run) = self.load(scope, run_id).await?;
            if states::is_terminal(&record.state) {
                return Err(OperatorError::Ended(record.state));
            }
            let writing = match &run {
                Ok(run) => run.write_marker.is_some(),
                Err(_) => record.state == states::WRITING,
            };
            if writing {
                return Err(OperatorError::Writing);
            }
            let run = run.unwrap_or_default();
            let reason = format!("cancelled by {}: {}", req.actor(), req.reason);
            let step = Step::Finished {
                state: states::CANCELLED.to_owned(),
                reason: reason.clone(),
            };
            let mut after = run.clone();
            after.apply(&step);
            let write = decision_write(&record, &step, &after, req, "run.cancelled");
            let pending = run
                .approval_id
                .filter(|_| run.verdict.is_none() && !run.expired);
            let result = match pending {
                Some(id) => match self.store().expire_approval(scope, id, write.clone()).await {
                    Ok(DecideOutcome::Decided(_)) => Ok(()),
                    Ok(DecideOutcome::AlreadyDecided(_) | DecideOutcome::NotFound) => {
                        self.store().append_step(scope, write).await
                    }
                    Err(e) => Err(e),
                },
                None => self.store().append_step(scope, write).await,
            };
            match result {
                Ok(()) => {
                    if run.message.is_some() {
                        let notice = Notice::Ended {
                            state: states::CANCELLED,
                            reason: &reason,
                        };
                        self.announce(scope, run_id, &run, notice).await;
                    }
                    self.wake(scope.tenant(), run_id).await;
                    return Ok(OperatorOutcome {
                        run_id,
                        action: "cancelled",
                        previous_state: record.state,
                        state: states::CANCELLED.to_owned(),
                        step: None,
                    });
                }
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(OperatorError::Busy)
    }

    async fn announce(
        &self,
        scope: &TenantScope,
        run_id: RunId,
        run: &RunState,
        notice: Notice<'_>,
    ) {
        let speaker = match self.tenant(scope.tenant()).await {
            Ok(supervisor) => self
                .runtime(scope.tenant())
                .await
                .map(|runtime| (supervisor, runtime)),
            Err(e) => Err(e),
        };
        match speaker {
            Ok((supervisor, runtime)) => {
                announce(run_id, runtime, supervisor, run.clone(), notice).await;
            }
            Err(error) => {
                warn!(run.id = %run_id, %error, "The Slack message could not be updated.");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use steward_core::{Incident, IncidentRef};

    use super::*;
    use crate::journal::Next;

    fn request(operator: &str, reason: &str) -> OperatorRequest {
        OperatorRequest {
            operator: operator.into(),
            reason: reason.into(),
        }
    }

    #[test]
    fn operator_names_and_reasons_are_checked() {
        assert!(request("ana.lima@oncall", "llm was down").check().is_ok());
        for (name, reason) in [
            ("", "r"),
            ("ana lima", "r"),
            ("<script>", "r"),
            (&"a".repeat(65), "r"),
            ("ana", ""),
            ("ana", "   "),
            ("ana", "line\nbreak"),
            ("ana", &"r".repeat(1001)),
        ] {
            assert!(
                matches!(
                    request(name, reason).check(),
                    Err(OperatorError::Invalid(_))
                ),
                "{name:?} {reason:?}"
            );
        }
        assert_eq!(request("ana", "r").actor(), "operator:ana");
    }

    fn failed_after_fetch() -> Vec<Step> {
        vec![
            Step::Received {
                incident: IncidentRef::Number("INC0010001".into()),
                source: None,
                delivery_id: None,
                requester: None,
            },
            Step::IncidentFetched {
                incident: Incident {
                    sys_id: "a".repeat(32),
                    number: "INC0010001".into(),
                    fields: Default::default(),
                },
            },
            Step::Finished {
                state: states::FAILED.into(),
                reason: "triage failed".into(),
            },
        ]
    }

    #[test]
    fn a_retried_run_goes_on_from_the_step_it_failed_at() {
        let mut journal = failed_after_fetch();
        let failed = RunState::fold(&journal);
        assert_eq!(failed.next(0), Next::Done);
        assert_eq!(failed.stored_state(), states::FAILED);
        journal.push(Step::Retried {
            by: "operator:ana".into(),
            reason: "the provider is back".into(),
        });
        let retried = RunState::fold(&journal);
        assert_eq!(retried.next(0), Next::Triage);
        assert_eq!(retried.stored_state(), states::TRIAGING);
        assert!(retried.incident.is_some(), "nothing done before is redone");
    }

    #[test]
    fn a_journal_with_a_step_this_build_cannot_read_names_it() {
        let rows = vec![StepRecord {
            seq: 0,
            kind: "from_the_future".into(),
            body: json!({"kind": "from_the_future"}),
            at: 0,
        }];
        let err = fold_journal(&rows).unwrap_err();
        assert!(err.starts_with("step 0 (from_the_future)"), "{err}");
    }

    #[test]
    fn cancelled_is_terminal() {
        assert!(states::is_terminal(states::CANCELLED));
    }
}
