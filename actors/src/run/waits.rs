//! What a run does while it waits: the timers it sets when it starts waiting, what it does when
//! one is due (remind, escalate, expire, or simply go on after a rate-limit window), and how its
//! actor is passivated after the idle time.
//!
//! A timer only wakes the run; the journal says what already happened. So a timer handed out
//! twice, or one left behind by a crash, finds its work recorded and does nothing again.

use ractor::ActorRef;
use serde_json::json;
use steward_adapters::slack;
use steward_persistence::{DecideOutcome, NewTimer, StepWrite, StoreError, TimerRecord};
use tracing::warn;

use super::{RunActorState, RunMsg, audit_for};
use crate::connectors::SlackMsg;
use crate::journal::{Next, Step};
use crate::retry::{Transient, park_until};
use crate::tenant::TenantMsg;
use crate::timers::{approval_timers, human_duration, kinds};

/// How often a lingering waiting run looks whether slots for live run actors became scarce.
const SCARCITY_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// How often expiring is tried again when the journal moves underneath it.
const CONFLICT_RETRIES: usize = 3;

impl RunActorState {
    /// The timers `step` needs, written in its transaction.
    pub(super) fn timers_for(&self, step: &Step) -> Vec<NewTimer> {
        match step {
            Step::ApprovalRequested { approval_id, .. } if self.run.verdict.is_none() => {
                approval_timers(&self.runtime.settings.slack, self.now(), *approval_id)
            }
            Step::Parked { until, .. }
            | Step::Held {
                until: Some(until), ..
            } => vec![NewTimer {
                kind: kinds::RESUME.into(),
                due_at: *until,
                payload: json!({}),
            }],
            _ => vec![],
        }
    }

    /// The run waits: after the idle time it offers to stop; at once when the idle time is
    /// zero or live run actors are near their cap, so that its slot serves a run with work.
    /// Until the idle time is over it looks again every [`SCARCITY_CHECK`], so that it also
    /// gives its slot up when slots become scarce while it lingers.
    pub(super) fn idle(&mut self, myself: &ActorRef<RunMsg>) {
        self.idle_since = std::time::Instant::now();
        self.idle_check(myself, self.handled);
    }

    /// Offers to stop if the run has waited since `mark` for its idle time, or slots are
    /// scarce; otherwise looks again later.
    pub(super) fn idle_check(&self, myself: &ActorRef<RunMsg>, mark: u64) {
        if mark != self.handled {
            return;
        }
        let left = self
            .passivate_after
            .saturating_sub(self.idle_since.elapsed());
        if left.is_zero() || self.slot.scarce() {
            self.offer_to_stop(myself, mark);
        } else {
            myself.send_after(left.min(SCARCITY_CHECK), move || RunMsg::Idle(mark));
        }
    }

    /// Asks the supervisor to stop this actor, if nothing came since the idle time began. The
    /// supervisor stops it only if no reload it sent is still on its way.
    pub(super) fn offer_to_stop(&self, myself: &ActorRef<RunMsg>, mark: u64) {
        if mark != self.handled {
            return;
        }
        let idle = TenantMsg::Idle {
            run_id: self.run_id,
            actor: myself.get_id(),
            reloads: self.reloads,
        };
        if let Err(error) = self.supervisor.cast(idle) {
            warn!(%error, "Offering to passivate a waiting run failed.");
        }
    }

    /// The run ended: its timers have nothing left to wake.
    pub(super) async fn clear_timers(&self) {
        let rt = &self.runtime;
        if let Err(error) = rt.store.clear_timers(&rt.scope, self.run_id).await {
            warn!(%error, "Clearing a finished run's timers failed.");
        }
    }

    /// Acts on every timer of the run that is due, then removes it. An expiry that is due
    /// makes the reminder and the escalation moot.
    pub(super) async fn fire_due_timers(&mut self) -> Result<(), StoreError> {
        let rt = self.runtime.clone();
        let now = self.now();
        let due: Vec<TimerRecord> = rt
            .store
            .timers(&rt.scope, self.run_id)
            .await?
            .into_iter()
            .filter(|t| t.due_at <= now)
            .collect();
        let expiring = due.iter().any(|t| t.kind == kinds::EXPIRE);
        for timer in &due {
            match timer.kind.as_str() {
                kinds::EXPIRE => self.expire().await?,
                kinds::REMIND if !expiring => self.remind().await?,
                kinds::ESCALATE if !expiring => self.escalate().await?,
                // A resume timer only had to wake the run: its park is over by the clock.
                _ => {}
            }
            rt.store
                .clear_timer(&rt.scope, self.run_id, &timer.kind, timer.due_at)
                .await?;
        }
        Ok(())
    }

    /// Why an expired run ended.
    pub(super) fn expiry_reason(&self) -> String {
        format!(
            "nobody decided the approval request within {}; nothing was written",
            human_duration(self.runtime.settings.slack.expire_after_secs)
        )
    }

    fn awaiting_approval(&self) -> bool {
        self.run.next(self.now()) == Next::AwaitApproval
    }

    fn incident_number(&self) -> String {
        self.run
            .incident
            .as_ref()
            .map(|i| i.number.clone())
            .unwrap_or_default()
    }

    /// Everyone who may decide the request now.
    fn deciders(&self) -> Vec<String> {
        let settings = &self.runtime.settings.slack;
        let mut people = settings.approvers.clone();
        if self.run.escalated {
            people.extend(settings.escalation_approvers.iter().cloned());
        }
        people
    }

    /// Posts a reminder in the request's thread, once.
    async fn remind(&mut self) -> Result<(), StoreError> {
        if !self.awaiting_approval() || self.run.reminded {
            return Ok(());
        }
        let Some((channel, thread_ts)) = self.run.message.clone() else {
            return Ok(());
        };
        let text = slack::reminder_text(&self.incident_number(), &self.deciders());
        let (result, _) = self
            .ask(
                |c| c.slack.clone(),
                |reply| SlackMsg::Thread {
                    channel: channel.clone(),
                    thread_ts: thread_ts.clone(),
                    text: text.clone(),
                    reply,
                },
            )
            .await;
        match result {
            Ok(posted) => {
                self.record(Step::ReminderSent { ts: posted.ts }, None)
                    .await
            }
            Err(e) => {
                self.postpone(kinds::REMIND, &e, "posting the approval reminder failed")
                    .await
            }
        }
    }

    /// Posts the request to the escalation channel (same approval id, so either message's
    /// click decides it once), records that the escalation approvers may now decide, and
    /// mentions them in the escalated request's thread.
    async fn escalate(&mut self) -> Result<(), StoreError> {
        if !self.awaiting_approval() || self.run.escalated {
            return Ok(());
        }
        let rt = self.runtime.clone();
        let settings = &rt.settings.slack;
        let mut posted = None;
        if let Some(channel) = settings.escalation_channel.clone() {
            let parts = self.view_parts();
            let approval_id = self
                .run
                .approval_id
                .map(|a| a.to_string())
                .unwrap_or_default();
            let owned = parts.view(&approval_id);
            let (text, blocks) = slack::escalation_message(&owned.as_view());
            let (result, _) = self
                .ask(
                    |c| c.slack.clone(),
                    |reply| SlackMsg::Post {
                        channel: channel.clone(),
                        text: text.clone(),
                        blocks: blocks.clone(),
                        reply,
                    },
                )
                .await;
            match result {
                Ok(message) => posted = Some(message),
                Err(e) => {
                    return self
                        .postpone(kinds::ESCALATE, &e, "posting the escalation failed")
                        .await;
                }
            }
        }
        let step = Step::ApprovalEscalated {
            channel: posted.as_ref().map(|p| p.channel.clone()),
            ts: posted.as_ref().map(|p| p.ts.clone()),
        };
        self.record(step, None).await?;
        let thread = posted
            .map(|p| (p.channel, p.ts))
            .or(self.run.message.clone());
        if let Some((channel, ts)) = thread
            && !settings.escalation_approvers.is_empty()
        {
            let text = slack::escalation_text(&self.incident_number(), &self.deciders());
            self.post_note(channel, ts, text).await;
        }
        Ok(())
    }

    /// A note in a thread that nothing depends on: a failure is only logged.
    async fn post_note(&self, channel: String, thread_ts: String, text: String) {
        let (result, _) = self
            .ask(
                |c| c.slack.clone(),
                |reply| SlackMsg::Thread {
                    channel: channel.clone(),
                    thread_ts: thread_ts.clone(),
                    text: text.clone(),
                    reply,
                },
            )
            .await;
        if let Err(error) = result {
            warn!(%error, "Posting a note in an approval thread failed.");
        }
    }

    /// Expires the pending approval and records it, in one transaction; the run then closes
    /// as `expired` and says so in Slack. A decision that got there first wins.
    async fn expire(&mut self) -> Result<(), StoreError> {
        for _ in 0..CONFLICT_RETRIES {
            if !self.awaiting_approval() {
                return Ok(());
            }
            let Some(approval_id) = self.run.approval_id else {
                return Ok(());
            };
            let step = Step::ApprovalExpired { approval_id };
            let mut next = self.run.clone();
            next.apply(&step);
            let body =
                serde_json::to_value(&step).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let write = StepWrite {
                run_id: self.run_id,
                expected_seq: self.run.steps,
                kind: step.kind().to_owned(),
                audit: vec![audit_for(&self.run_id, self.run.steps, &step, &body)],
                body,
                new_state: next.stored_state().to_owned(),
                last_error: None,
                new_approval: None,
                timers: vec![],
                charges: vec![],
                approval_message: None,
                clears_timers: false,
            };
            let rt = self.runtime.clone();
            match rt
                .store
                .expire_approval(&rt.scope, approval_id, write)
                .await
            {
                Ok(DecideOutcome::Decided(_)) => {
                    rt.metrics.run_finished(next.stored_state());
                    self.run = next;
                    return Ok(());
                }
                Ok(DecideOutcome::AlreadyDecided(_) | DecideOutcome::NotFound) => {
                    return self.reload().await;
                }
                Err(StoreError::Conflict(_)) => self.reload().await?,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// A follow-up that Slack refused: if it asked for a long wait, the timer moves to the end
    /// of it; otherwise the follow-up is given up, and logged.
    async fn postpone<E: Transient>(
        &self,
        kind: &str,
        error: &E,
        what: &str,
    ) -> Result<(), StoreError> {
        let rt = &self.runtime;
        match park_until(&rt.retry, error, self.now()) {
            Some(until) => {
                rt.store
                    .set_timer(&rt.scope, self.run_id, kind, until, &json!({}))
                    .await
            }
            None => {
                warn!(%error, "{what}; it is not tried again.");
                Ok(())
            }
        }
    }
}
