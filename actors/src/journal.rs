//! A run is a journal of steps; its state is a fold of that journal. Each step is recorded
//! before the run acts on it, so a resumed run continues from what was recorded.
//!
//! The fold looks at which facts are present, not at their order: an approval decision may be
//! recorded before the step that notes the Slack message it came from.

use serde::{Deserialize, Serialize};
use steward_core::{ApprovalId, Diff, Incident, IncidentRef, Proposal, Provenance};

use crate::policy::FieldDecision;

/// States a run can be in, as stored in the run row.
pub mod states {
    pub const RECEIVED: &str = "received";
    pub const TRIAGING: &str = "triaging";
    pub const AWAITING_APPROVAL: &str = "awaiting_approval";
    pub const WRITING: &str = "writing";
    pub const CLOSING: &str = "closing";
    pub const COMPLETED: &str = "completed";
    pub const REJECTED: &str = "rejected";
    pub const DENIED: &str = "denied";
    pub const STALE: &str = "stale";
    pub const FAILED: &str = "failed";
    pub const EXPIRED: &str = "expired";

    /// States a run never leaves.
    pub const TERMINAL: &[&str] = &[COMPLETED, REJECTED, DENIED, STALE, FAILED, EXPIRED];

    pub fn is_terminal(state: &str) -> bool {
        TERMINAL.contains(&state)
    }
}

/// A person's answer to an approval request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Approve,
    Reject,
}

/// One journal entry. `kind` in the store is the serde tag.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Step {
    /// The trigger: which record this run may touch, and who asked.
    Received {
        incident: IncidentRef,
        source: Option<String>,
        delivery_id: Option<String>,
        requester: Option<String>,
    },
    IncidentFetched {
        incident: Incident,
    },
    Triaged {
        proposal: Proposal,
        provenance: Provenance,
        attempts: u32,
    },
    /// The policy's answer per field, and the diff built from what it allows.
    PolicyDecided {
        decisions: Vec<FieldDecision>,
        diff: Diff,
        diff_hash: String,
        needs_approval: bool,
        approval_id: Option<ApprovalId>,
        summary: String,
    },
    ApprovalRequested {
        approval_id: ApprovalId,
        channel: String,
        ts: String,
    },
    ApprovalDecided {
        approval_id: ApprovalId,
        verdict: Verdict,
        by: String,
        by_name: String,
    },
    /// Recorded before the `PATCH`; the marker identifies this run's work note.
    WriteIntended {
        diff_hash: String,
        marker: String,
    },
    Written {
        after: Incident,
        recovered: bool,
    },
    Verified {
        mismatches: Vec<String>,
    },
    /// The run's end; `state` is one of the terminal states.
    Finished {
        state: String,
        reason: String,
    },
}

impl Step {
    /// The serde tag, used as the stored step kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Step::Received { .. } => "received",
            Step::IncidentFetched { .. } => "incident_fetched",
            Step::Triaged { .. } => "triaged",
            Step::PolicyDecided { .. } => "policy_decided",
            Step::ApprovalRequested { .. } => "approval_requested",
            Step::ApprovalDecided { .. } => "approval_decided",
            Step::WriteIntended { .. } => "write_intended",
            Step::Written { .. } => "written",
            Step::Verified { .. } => "verified",
            Step::Finished { .. } => "finished",
        }
    }
}

/// The write that ends a run from outside its actor (a spent restart budget, a tenant that
/// cannot start), with its audit entry.
pub fn finished_write(
    run_id: steward_core::RunId,
    expected_seq: u32,
    state: &str,
    reason: &str,
) -> steward_persistence::StepWrite {
    let step = Step::Finished {
        state: state.to_owned(),
        reason: reason.to_owned(),
    };
    steward_persistence::StepWrite {
        run_id,
        expected_seq,
        kind: step.kind().into(),
        body: serde_json::json!({ "kind": "finished", "state": state, "reason": reason }),
        new_state: state.to_owned(),
        last_error: Some(reason.to_owned()),
        audit: vec![steward_persistence::AuditDraft {
            kind: "run.finished".into(),
            run_id: Some(run_id),
            actor: "steward".into(),
            body: serde_json::json!({ "seq": expected_seq, "state": state }),
        }],
        new_approval: None,
    }
}

/// The fold of a run's journal.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    pub steps: u32,
    pub incident_ref: Option<IncidentRef>,
    pub requester: Option<String>,
    pub incident: Option<Incident>,
    pub proposal: Option<Proposal>,
    pub provenance: Option<Provenance>,
    pub decisions: Vec<FieldDecision>,
    pub diff: Option<Diff>,
    pub diff_hash: Option<String>,
    pub summary: Option<String>,
    pub needs_approval: bool,
    pub approval_id: Option<ApprovalId>,
    pub message: Option<(String, String)>,
    pub verdict: Option<(Verdict, String, String)>,
    pub write_marker: Option<String>,
    pub written: Option<Incident>,
    pub verified: Option<Vec<String>>,
    pub finished: Option<(String, String)>,
}

/// What a run must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    Fetch,
    Triage,
    Decide,
    RequestApproval,
    AwaitApproval,
    Write,
    Confirm,
    Verify,
    Close,
    Done,
}

impl RunState {
    /// Folds a journal from the start.
    pub fn fold<'a>(steps: impl IntoIterator<Item = &'a Step>) -> Self {
        let mut state = Self::default();
        for step in steps {
            state.apply(step);
        }
        state
    }

    /// Applies one step.
    pub fn apply(&mut self, step: &Step) {
        self.steps += 1;
        match step {
            Step::Received {
                incident,
                requester,
                ..
            } => {
                self.incident_ref = Some(incident.clone());
                self.requester.clone_from(requester);
            }
            Step::IncidentFetched { incident } => self.incident = Some(incident.clone()),
            Step::Triaged {
                proposal,
                provenance,
                ..
            } => {
                self.proposal = Some(proposal.clone());
                self.provenance = Some(provenance.clone());
            }
            Step::PolicyDecided {
                decisions,
                diff,
                diff_hash,
                needs_approval,
                approval_id,
                summary,
            } => {
                self.decisions.clone_from(decisions);
                self.diff = Some(diff.clone());
                self.diff_hash = Some(diff_hash.clone());
                self.needs_approval = *needs_approval;
                self.approval_id = *approval_id;
                self.summary = Some(summary.clone());
            }
            Step::ApprovalRequested { channel, ts, .. } => {
                self.message = Some((channel.clone(), ts.clone()));
            }
            Step::ApprovalDecided {
                verdict,
                by,
                by_name,
                ..
            } => {
                self.verdict = Some((*verdict, by.clone(), by_name.clone()));
            }
            Step::WriteIntended { marker, .. } => self.write_marker = Some(marker.clone()),
            Step::Written { after, .. } => self.written = Some(after.clone()),
            Step::Verified { mismatches } => self.verified = Some(mismatches.clone()),
            Step::Finished { state, reason } => {
                self.finished = Some((state.clone(), reason.clone()));
            }
        }
    }

    /// The next thing to do, from the facts recorded so far.
    pub fn next(&self) -> Next {
        if self.finished.is_some() {
            return Next::Done;
        }
        if self.incident.is_none() {
            return Next::Fetch;
        }
        if self.proposal.is_none() {
            return Next::Triage;
        }
        if self.diff.is_none() {
            return Next::Decide;
        }
        if self.needs_approval {
            if self.message.is_none() && self.verdict.is_none() {
                return Next::RequestApproval;
            }
            match &self.verdict {
                None => return Next::AwaitApproval,
                Some((Verdict::Reject, _, _)) => return Next::Close,
                Some((Verdict::Approve, _, _)) => {}
            }
        }
        if self.write_marker.is_none() {
            return Next::Write;
        }
        if self.written.is_none() {
            return Next::Confirm;
        }
        if self.verified.is_none() {
            return Next::Verify;
        }
        Next::Close
    }

    /// The state to store in the run row while the run is at `next`.
    pub fn stored_state(&self) -> &str {
        if let Some((state, _)) = &self.finished {
            return state;
        }
        match self.next() {
            Next::Fetch | Next::Triage => states::TRIAGING,
            Next::Decide | Next::RequestApproval => states::TRIAGING,
            Next::AwaitApproval => states::AWAITING_APPROVAL,
            Next::Write | Next::Confirm | Next::Verify => states::WRITING,
            Next::Close | Next::Done => states::CLOSING,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn incident() -> Incident {
        Incident {
            sys_id: "a".repeat(32),
            number: "INC0010001".into(),
            fields: BTreeMap::new(),
        }
    }

    fn received() -> Step {
        Step::Received {
            incident: IncidentRef::Number("INC0010001".into()),
            source: None,
            delivery_id: None,
            requester: None,
        }
    }

    fn decided(needs_approval: bool) -> Step {
        Step::PolicyDecided {
            decisions: vec![],
            diff: Diff {
                table: "incident".into(),
                sys_id: "a".repeat(32),
                record_version: "0".into(),
                entries: vec![],
            },
            diff_hash: "h".into(),
            needs_approval,
            approval_id: Some(ApprovalId::new()),
            summary: "s".into(),
        }
    }

    fn triaged() -> Step {
        Step::Triaged {
            proposal: Proposal {
                summary: "s".into(),
                category: "c".into(),
                changes: vec![],
            },
            provenance: Provenance {
                provider: "openai".into(),
                model_requested: "m".into(),
                model_reported: "m".into(),
                prompt_version: "v".into(),
                temperature: 0.0,
                max_tokens: 1,
                usage: Default::default(),
                response_id: "r".into(),
            },
            attempts: 1,
        }
    }

    #[test]
    fn the_fold_walks_the_flagship_path() {
        let mut journal = vec![received()];
        assert_eq!(RunState::fold(&journal).next(), Next::Fetch);
        journal.push(Step::IncidentFetched {
            incident: incident(),
        });
        assert_eq!(RunState::fold(&journal).next(), Next::Triage);
        journal.push(triaged());
        assert_eq!(RunState::fold(&journal).next(), Next::Decide);
        journal.push(decided(true));
        assert_eq!(RunState::fold(&journal).next(), Next::RequestApproval);
        let approval_id = ApprovalId::new();
        journal.push(Step::ApprovalRequested {
            approval_id,
            channel: "C1".into(),
            ts: "1.2".into(),
        });
        let state = RunState::fold(&journal);
        assert_eq!(state.next(), Next::AwaitApproval);
        assert_eq!(state.stored_state(), states::AWAITING_APPROVAL);
        journal.push(Step::ApprovalDecided {
            approval_id,
            verdict: Verdict::Approve,
            by: "U1".into(),
            by_name: "ana".into(),
        });
        assert_eq!(RunState::fold(&journal).next(), Next::Write);
        journal.push(Step::WriteIntended {
            diff_hash: "h".into(),
            marker: "m".into(),
        });
        assert_eq!(RunState::fold(&journal).next(), Next::Confirm);
        journal.push(Step::Written {
            after: incident(),
            recovered: false,
        });
        assert_eq!(RunState::fold(&journal).next(), Next::Verify);
        journal.push(Step::Verified { mismatches: vec![] });
        assert_eq!(RunState::fold(&journal).next(), Next::Close);
        journal.push(Step::Finished {
            state: states::COMPLETED.into(),
            reason: String::new(),
        });
        let state = RunState::fold(&journal);
        assert_eq!(state.next(), Next::Done);
        assert_eq!(state.stored_state(), states::COMPLETED);
    }

    #[test]
    fn a_decision_recorded_before_the_message_step_is_honoured() {
        let journal = vec![
            received(),
            Step::IncidentFetched {
                incident: incident(),
            },
            triaged(),
            decided(true),
            Step::ApprovalDecided {
                approval_id: ApprovalId::new(),
                verdict: Verdict::Reject,
                by: "U1".into(),
                by_name: "ana".into(),
            },
        ];
        assert_eq!(RunState::fold(&journal).next(), Next::Close);
    }

    #[test]
    fn steps_round_trip_through_json_with_their_kind() {
        let step = received();
        let json = serde_json::to_value(&step).unwrap();
        assert_eq!(json["kind"], step.kind());
        assert_eq!(serde_json::from_value::<Step>(json).unwrap(), step);
    }
}
