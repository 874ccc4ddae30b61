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
    /// Waiting out a rate-limit window; a timer wakes the run when it opens.
    pub const PARKED: &str = "parked";
    /// Ended by an operator before it finished.
    pub const CANCELLED: &str = "cancelled";
    /// The tenant runs in shadow mode: the run went as far as the write and wrote nothing.
    pub const SHADOWED: &str = "shadowed";

    /// States a run never leaves. The store's retention reads finished runs through an index
    /// that holds runs in exactly these ([`steward_persistence::FINISHED_STATES`]).
    pub const TERMINAL: &[&str] = &[
        COMPLETED, REJECTED, DENIED, STALE, FAILED, EXPIRED, CANCELLED, SHADOWED,
    ];

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

/// What holds a run back before a step (see [`Step::Held`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Gate {
    /// Writes are paused, for the tenant or the whole platform (the kill switch).
    Writes,
    /// The tenant's LLM budget (calls or tokens, per hour or per day) has no room.
    LlmBudget,
    /// The run's webhook source started as many runs this minute as it may.
    SourceCap,
}

impl Gate {
    /// The gate's name as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Gate::Writes => "writes",
            Gate::LlmBudget => "llm_budget",
            Gate::SourceCap => "source_cap",
        }
    }
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
        /// Distinct approvers the diff needs (the two-person rule makes it 2).
        #[serde(default = "one")]
        approvers_required: u32,
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
    /// One approval of several the policy asks for (the two-person rule): recorded, and the
    /// run waits for the next distinct approver.
    ApprovalVoted {
        approval_id: ApprovalId,
        by: String,
        by_name: String,
    },
    /// The record changed after the approver saw the diff: nothing was written, and the run
    /// starts over from reading the record, for a fresh proposal and a fresh approval.
    Reproposed {
        reason: String,
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
    /// The other side refused a call and asked for a wait longer than a step retries for (a
    /// rate-limit window): the run sleeps until `until` (Unix ms), then does the same step
    /// again with its retries intact.
    Parked {
        until: i64,
        reason: String,
    },
    /// A reminder was posted in the approval request's thread.
    ReminderSent {
        ts: String,
    },
    /// The request went to the escalation approvers: posted again in `channel` (at `ts`) when
    /// an escalation channel is set, and from now on they may decide it too.
    ApprovalEscalated {
        channel: Option<String>,
        ts: Option<String>,
    },
    /// Nobody decided in time; recorded in the transaction that expires the approval.
    ApprovalExpired {
        approval_id: ApprovalId,
    },
    /// An operator resumed a failed run: it goes on from the step it failed at.
    Retried {
        by: String,
        reason: String,
    },
    /// A gate holds the run before its next step: writes are paused, or a budget has no room
    /// in its window. The run waits until `until` (Unix ms), or, when None, until the gate
    /// opens and the run is woken; then it asks the gate again. A hold spends no park.
    Held {
        gate: Gate,
        until: Option<i64>,
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
            Step::ApprovalVoted { .. } => "approval_voted",
            Step::Reproposed { .. } => "reproposed",
            Step::WriteIntended { .. } => "write_intended",
            Step::Written { .. } => "written",
            Step::Verified { .. } => "verified",
            Step::Finished { .. } => "finished",
            Step::Parked { .. } => "parked",
            Step::ReminderSent { .. } => "reminder_sent",
            Step::ApprovalEscalated { .. } => "approval_escalated",
            Step::ApprovalExpired { .. } => "approval_expired",
            Step::Retried { .. } => "retried",
            Step::Held { .. } => "held",
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
        timers: vec![],
        charges: vec![],
        approval_message: None,
        clears_timers: false,
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
    /// Until when (Unix ms) the run is parked; cleared by the next step of any other kind.
    #[serde(default)]
    pub parked_until: Option<i64>,
    /// How many times in a row the run parked without getting further.
    #[serde(default)]
    pub parks: u32,
    #[serde(default)]
    pub reminded: bool,
    #[serde(default)]
    pub escalated: bool,
    /// The escalation message (channel, ts), when one was posted.
    #[serde(default)]
    pub escalation_message: Option<(String, String)>,
    #[serde(default)]
    pub expired: bool,
    /// The gate holding the run, while it is held; cleared by the next step of another kind.
    #[serde(default)]
    pub held: Option<Gate>,
    /// How many times the run was held, in all.
    #[serde(default)]
    pub holds: u32,
    /// Distinct approvers the diff needs.
    #[serde(default = "one")]
    pub approvers_required: u32,
    /// Approvals recorded so far short of the required number: (Slack id, name).
    #[serde(default)]
    pub votes: Vec<(String, String)>,
    /// How many times the run started over because the record changed under its approval.
    #[serde(default)]
    pub reproposals: u32,
}

fn one() -> u32 {
    1
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
    /// Parked: nothing to do before `until` (Unix ms).
    Wait {
        until: i64,
    },
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
        if !matches!(step, Step::Parked { .. } | Step::Held { .. }) {
            self.parked_until = None;
            self.parks = 0;
        }
        if !matches!(step, Step::Held { .. }) {
            self.held = None;
        }
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
                approvers_required,
            } => {
                self.approvers_required = *approvers_required;
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
            Step::ApprovalVoted { by, by_name, .. } => {
                if !self.votes.iter().any(|(id, _)| id == by) {
                    self.votes.push((by.clone(), by_name.clone()));
                }
            }
            Step::Reproposed { .. } => {
                // Everything learned from the old record goes; the journal keeps it.
                *self = Self {
                    steps: self.steps,
                    incident_ref: self.incident_ref.take(),
                    requester: self.requester.take(),
                    reproposals: self.reproposals + 1,
                    ..Self::default()
                };
            }
            Step::WriteIntended { marker, .. } => self.write_marker = Some(marker.clone()),
            Step::Written { after, .. } => self.written = Some(after.clone()),
            Step::Verified { mismatches } => self.verified = Some(mismatches.clone()),
            Step::Finished { state, reason } => {
                self.finished = Some((state.clone(), reason.clone()));
            }
            Step::Parked { until, .. } => {
                self.parked_until = Some(*until);
                self.parks += 1;
            }
            Step::ReminderSent { .. } => self.reminded = true,
            Step::ApprovalEscalated { channel, ts } => {
                self.escalated = true;
                self.escalation_message = channel.clone().zip(ts.clone());
            }
            Step::ApprovalExpired { .. } => self.expired = true,
            Step::Held { gate, until, .. } => {
                self.parked_until = Some(until.unwrap_or(i64::MAX));
                self.held = Some(*gate);
                self.holds += 1;
            }
            Step::Retried { .. } => {
                self.finished = None;
                // A read-back that differed is read again rather than failed again.
                if self.verified.as_ref().is_some_and(|m| !m.is_empty()) {
                    self.verified = None;
                }
            }
        }
    }

    /// The next thing to do at `now_millis`, from the facts recorded so far.
    pub fn next(&self, now_millis: i64) -> Next {
        match self.parked_until {
            Some(until) if self.finished.is_none() && now_millis < until => Next::Wait { until },
            _ => self.next_step(),
        }
    }

    /// The next step, whether or not the run is parked or held.
    pub fn next_step(&self) -> Next {
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
            if self.expired {
                return Next::Close;
            }
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
        if self.parked_until.is_some() {
            return states::PARKED;
        }
        match self.next_step() {
            Next::Fetch | Next::Triage => states::TRIAGING,
            Next::Decide | Next::RequestApproval => states::TRIAGING,
            Next::AwaitApproval => states::AWAITING_APPROVAL,
            Next::Write | Next::Confirm | Next::Verify => states::WRITING,
            Next::Close | Next::Done | Next::Wait { .. } => states::CLOSING,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn the_terminal_states_are_the_ones_retention_knows_as_finished() {
        let mut terminal = states::TERMINAL.to_vec();
        let mut finished = steward_persistence::FINISHED_STATES.to_vec();
        terminal.sort_unstable();
        finished.sort_unstable();
        assert_eq!(terminal, finished);
    }

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
            approvers_required: 1,
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
    fn a_vote_short_of_the_required_approvers_keeps_the_run_waiting() {
        let approval_id = ApprovalId::new();
        let mut journal = vec![
            received(),
            Step::IncidentFetched {
                incident: incident(),
            },
            triaged(),
            decided(true),
            Step::ApprovalRequested {
                approval_id,
                channel: "C1".into(),
                ts: "1.2".into(),
            },
        ];
        let vote = Step::ApprovalVoted {
            approval_id,
            by: "U1".into(),
            by_name: "ana".into(),
        };
        journal.push(vote.clone());
        journal.push(vote);
        let state = RunState::fold(&journal);
        assert_eq!(state.next(0), Next::AwaitApproval);
        assert_eq!(state.votes, vec![("U1".to_owned(), "ana".to_owned())]);
        journal.push(Step::ApprovalDecided {
            approval_id,
            verdict: Verdict::Approve,
            by: "U2".into(),
            by_name: "bo".into(),
        });
        assert_eq!(RunState::fold(&journal).next(0), Next::Write);
    }

    #[test]
    fn a_reproposal_starts_the_run_over_from_reading_the_record() {
        let approval_id = ApprovalId::new();
        let mut journal = vec![
            received(),
            Step::IncidentFetched {
                incident: incident(),
            },
            triaged(),
            decided(true),
            Step::ApprovalRequested {
                approval_id,
                channel: "C1".into(),
                ts: "1.2".into(),
            },
            Step::ApprovalDecided {
                approval_id,
                verdict: Verdict::Approve,
                by: "U2".into(),
                by_name: "bo".into(),
            },
            Step::Reproposed {
                reason: "urgency changed".into(),
            },
        ];
        let state = RunState::fold(&journal);
        assert_eq!(state.next(0), Next::Fetch);
        assert_eq!(state.reproposals, 1);
        assert!(state.verdict.is_none() && state.approval_id.is_none() && state.message.is_none());
        assert!(
            state.incident_ref.is_some(),
            "the run still knows its record"
        );
        assert_eq!(state.steps, 7);
        journal.push(Step::IncidentFetched {
            incident: incident(),
        });
        journal.push(triaged());
        journal.push(decided(true));
        assert_eq!(RunState::fold(&journal).next(0), Next::RequestApproval);
    }

    #[test]
    fn the_fold_walks_the_flagship_path() {
        let mut journal = vec![received()];
        assert_eq!(RunState::fold(&journal).next(0), Next::Fetch);
        journal.push(Step::IncidentFetched {
            incident: incident(),
        });
        assert_eq!(RunState::fold(&journal).next(0), Next::Triage);
        journal.push(triaged());
        assert_eq!(RunState::fold(&journal).next(0), Next::Decide);
        journal.push(decided(true));
        assert_eq!(RunState::fold(&journal).next(0), Next::RequestApproval);
        let approval_id = ApprovalId::new();
        journal.push(Step::ApprovalRequested {
            approval_id,
            channel: "C1".into(),
            ts: "1.2".into(),
        });
        let state = RunState::fold(&journal);
        assert_eq!(state.next(0), Next::AwaitApproval);
        assert_eq!(state.stored_state(), states::AWAITING_APPROVAL);
        journal.push(Step::ApprovalDecided {
            approval_id,
            verdict: Verdict::Approve,
            by: "U1".into(),
            by_name: "ana".into(),
        });
        assert_eq!(RunState::fold(&journal).next(0), Next::Write);
        journal.push(Step::WriteIntended {
            diff_hash: "h".into(),
            marker: "m".into(),
        });
        assert_eq!(RunState::fold(&journal).next(0), Next::Confirm);
        journal.push(Step::Written {
            after: incident(),
            recovered: false,
        });
        assert_eq!(RunState::fold(&journal).next(0), Next::Verify);
        journal.push(Step::Verified { mismatches: vec![] });
        assert_eq!(RunState::fold(&journal).next(0), Next::Close);
        journal.push(Step::Finished {
            state: states::COMPLETED.into(),
            reason: String::new(),
        });
        let state = RunState::fold(&journal);
        assert_eq!(state.next(0), Next::Done);
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
        assert_eq!(RunState::fold(&journal).next(0), Next::Close);
    }

    fn awaiting() -> (Vec<Step>, ApprovalId) {
        let approval_id = ApprovalId::new();
        let journal = vec![
            received(),
            Step::IncidentFetched {
                incident: incident(),
            },
            triaged(),
            decided(true),
            Step::ApprovalRequested {
                approval_id,
                channel: "C1".into(),
                ts: "1.2".into(),
            },
        ];
        (journal, approval_id)
    }

    #[test]
    fn a_parked_run_waits_until_its_window_opens_then_repeats_the_step() {
        let mut journal = vec![received()];
        journal.push(Step::Parked {
            until: 5_000,
            reason: "rate limited".into(),
        });
        let state = RunState::fold(&journal);
        assert_eq!(state.next(4_999), Next::Wait { until: 5_000 });
        assert_eq!(state.next(5_000), Next::Fetch, "the same step again");
        assert_eq!(state.stored_state(), states::PARKED);
        assert_eq!(state.parks, 1);

        journal.push(Step::Parked {
            until: 9_000,
            reason: "rate limited again".into(),
        });
        assert_eq!(
            RunState::fold(&journal).parks,
            2,
            "parks in a row are counted"
        );

        journal.push(Step::IncidentFetched {
            incident: incident(),
        });
        let state = RunState::fold(&journal);
        assert_eq!(state.parked_until, None, "progress ends the park");
        assert_eq!(state.parks, 0);
        assert_eq!(state.next(0), Next::Triage);
        assert_eq!(state.stored_state(), states::TRIAGING);
    }

    #[test]
    fn a_held_run_waits_for_its_gate_without_spending_parks() {
        let mut journal = vec![
            received(),
            Step::Parked {
                until: 5,
                reason: "rate limited".into(),
            },
            Step::Held {
                gate: Gate::SourceCap,
                until: Some(60_000),
                reason: "source cap".into(),
            },
        ];
        let state = RunState::fold(&journal);
        assert_eq!(state.next(59_999), Next::Wait { until: 60_000 });
        assert_eq!(state.next(60_000), Next::Fetch);
        assert_eq!(state.stored_state(), states::PARKED);
        assert_eq!(state.held, Some(Gate::SourceCap));
        assert_eq!((state.parks, state.holds), (1, 1), "a hold is not a park");

        journal.push(Step::Held {
            gate: Gate::Writes,
            until: None,
            reason: "writes paused".into(),
        });
        let state = RunState::fold(&journal);
        assert_eq!(state.next(i64::MAX - 1), Next::Wait { until: i64::MAX });
        assert_eq!(
            state.next_step(),
            Next::Fetch,
            "what it does once the gate opens"
        );
        assert_eq!(state.held, Some(Gate::Writes));

        journal.push(Step::IncidentFetched {
            incident: incident(),
        });
        let state = RunState::fold(&journal);
        assert_eq!((state.held, state.parked_until), (None, None));
        assert_eq!(state.holds, 2);
        assert_eq!(state.stored_state(), states::TRIAGING);
    }

    #[test]
    fn shadowed_is_terminal() {
        assert!(states::is_terminal(states::SHADOWED));
    }

    #[test]
    fn a_finished_run_is_done_even_if_it_was_parked() {
        let mut state = RunState::fold(&[received()]);
        state.parked_until = Some(i64::MAX);
        state.finished = Some((states::FAILED.into(), "x".into()));
        assert_eq!(state.next(0), Next::Done);
    }

    #[test]
    fn an_expired_approval_closes_the_run_without_a_write() {
        let (mut journal, approval_id) = awaiting();
        journal.push(Step::ApprovalExpired { approval_id });
        let state = RunState::fold(&journal);
        assert!(state.expired);
        assert_eq!(state.next(0), Next::Close);
        assert_eq!(state.stored_state(), states::CLOSING);
    }

    #[test]
    fn reminders_and_escalations_keep_the_run_waiting_for_its_approver() {
        let (mut journal, _) = awaiting();
        journal.push(Step::ReminderSent { ts: "1.3".into() });
        journal.push(Step::ApprovalEscalated {
            channel: Some("C2".into()),
            ts: Some("2.1".into()),
        });
        let state = RunState::fold(&journal);
        assert!(state.reminded && state.escalated);
        assert_eq!(state.escalation_message, Some(("C2".into(), "2.1".into())));
        assert_eq!(state.next(0), Next::AwaitApproval);
        assert_eq!(state.stored_state(), states::AWAITING_APPROVAL);

        let mut quiet = awaiting().0;
        quiet.push(Step::ApprovalEscalated {
            channel: None,
            ts: None,
        });
        let state = RunState::fold(&quiet);
        assert!(state.escalated);
        assert_eq!(state.escalation_message, None);
    }

    #[test]
    fn a_snapshot_from_before_timers_still_reads() {
        let mut old = serde_json::to_value(RunState::fold(&[received()])).unwrap();
        for field in [
            "parked_until",
            "parks",
            "reminded",
            "escalated",
            "escalation_message",
            "expired",
            "held",
            "holds",
        ] {
            old.as_object_mut().unwrap().remove(field);
        }
        let state: RunState = serde_json::from_value(old).unwrap();
        assert_eq!(state.next(0), Next::Fetch);
    }

    #[test]
    fn new_steps_round_trip_through_json_with_their_kind() {
        for step in [
            Step::Parked {
                until: 1,
                reason: "r".into(),
            },
            Step::ReminderSent { ts: "1.1".into() },
            Step::ApprovalEscalated {
                channel: None,
                ts: None,
            },
            Step::ApprovalExpired {
                approval_id: ApprovalId::new(),
            },
            Step::Held {
                gate: Gate::LlmBudget,
                until: Some(3_600_000),
                reason: "r".into(),
            },
        ] {
            let json = serde_json::to_value(&step).unwrap();
            assert_eq!(json["kind"], step.kind());
            assert_eq!(serde_json::from_value::<Step>(json).unwrap(), step);
        }
    }

    #[test]
    fn steps_round_trip_through_json_with_their_kind() {
        let step = received();
        let json = serde_json::to_value(&step).unwrap();
        assert_eq!(json["kind"], step.kind());
        assert_eq!(serde_json::from_value::<Step>(json).unwrap(), step);
    }
}
