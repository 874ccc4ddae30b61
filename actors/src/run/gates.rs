//! The gates a run passes before some of its steps, each decided where the run stands:
//!
//! - **Writes** (the kill switch): before `Write` and `Confirm`, the run reads the platform's
//!   and its tenant's write pauses. While one holds, the run records `Held { gate: writes }`
//!   with no end and waits; nothing is lost, and no timer is needed: resuming writes wakes
//!   the tenant's parked runs (`Steward::wake_parked`), and so does boot. A held run that is
//!   woken reads the pauses again and goes on only if none holds. A step already past the
//!   check when the switch is engaged finishes its one `PATCH`; the next write stops.
//! - **Shadow mode**: a tenant in shadow mode goes as far as the write. Where it would ask for
//!   approval or write, it posts a notice marked `shadow:` in the approval channel (no
//!   buttons), closes the approval the policy opened (as expired, so no click can decide it),
//!   and ends `shadowed`. A run that had
//!   already recorded its write intent when shadow mode was turned on confirms that write.
//! - **Source cap**: before its first step, a run started by a webhook takes one unit of its
//!   source's per-minute meter; without room it is held until the window ends.
//! - **LLM budget**: before each triage, the run reserves one call and its completion cap of
//!   tokens in the hour's and the day's windows, all or none; without room it is held until
//!   the refusing window ends. After the triage the tokens are settled to the provenance's
//!   usage. Held runs of one window are spread over the following windows by how many the
//!   window refused, so a backlog does not wake all at once.
//!
//! Budget holds raise an alert: a warning in the log, the `run.held` audit entry with the
//! gate and reason, and the reason as the run's last error (what ops listings show).
//!
//! Limits, stated plainly: a triage counts as one call however many attempts its retries
//! made; the tokens of a triage that failed or parked stay charged at the reservation; a
//! crash between a reservation and the step it admits charges that step again when it is
//! redone. All three err on the side of counting more, never less.

use ractor::ActorProcessingErr;
use serde_json::json;
use steward_persistence::{
    DecideOutcome, MeterAsk, MeterCharge, Reservation, StoreError, WritePause,
};
use tracing::{info, warn};

use super::RunActorState;
use crate::budgets::{self, meters};
use crate::connectors::SlackMsg;
use crate::journal::{Gate, Next, RunState, Step, finished_write, states};

/// A triage's token reservation, to be settled when the triage is recorded.
#[derive(Debug, Clone, Copy)]
pub(super) struct TokenSettlement {
    /// When the reservation was made (its windows are the ones this falls in).
    now: i64,
    /// The tokens it reserved.
    estimate: u64,
}

/// A triage's reservation taken ahead, with the step that recorded the incident, and what
/// the store answered.
pub(super) struct Reserved {
    settle: TokenSettlement,
    asks: Vec<MeterAsk>,
    answer: Reservation,
}

/// The most later windows a held run is spread to.
const MAX_WAVES: u64 = 24;
/// The longest shadow notice, in characters.
const NOTICE_MAX: usize = 2900;

impl RunActorState {
    /// The next thing to do now. A run held because writes were paused goes on at once once
    /// no pause holds, without waiting for anything else.
    pub(super) async fn next_now(&self) -> Next {
        let next = self.run.next(self.now());
        if matches!(next, Next::Wait { .. }) && self.run.held == Some(Gate::Writes) {
            match self.write_pauses().await {
                Ok(pauses) if pauses.is_empty() => return self.run.next_step(),
                Ok(_) => {}
                Err(error) => warn!(%error, "Reading the write pauses failed; the run stays held."),
            }
        }
        next
    }

    /// Does `next` once its gates let it: or holds the run, or ends it in shadow mode.
    pub(super) async fn gated_step(&mut self, next: Next) -> Result<(), ActorProcessingErr> {
        let shadow = self.runtime.controls.shadow.enabled;
        match next {
            Next::RequestApproval | Next::Write if shadow => {
                return Ok(self.end_in_shadow(&next).await?);
            }
            Next::Write | Next::Confirm => {
                if let Some(pause) = self.write_pauses().await?.into_iter().next() {
                    return Ok(self.hold_writes(&pause).await?);
                }
            }
            Next::Fetch if self.starting() => {
                let budget = self.budget();
                let ask = budgets::source_ask(&budget, &self.source, self.now());
                let rt = self.runtime.clone();
                let asks = [ask];
                if let refused @ Reservation::Refused { .. } =
                    rt.store.reserve_budget(&rt.scope, &asks).await?
                {
                    return Ok(self.hold_budget(Gate::SourceCap, refused, &asks).await?);
                }
            }
            Next::Triage => return self.budgeted_triage().await,
            _ => {}
        }
        self.step(next).await
    }

    fn budget(&self) -> budgets::Effective {
        self.runtime
            .controls
            .budgets
            .effective(&self.runtime.limits)
    }

    /// Whether the run has done nothing yet but wait at its source's gate: a run started by
    /// a webhook, before its first step.
    fn starting(&self) -> bool {
        self.source != "api" && self.run.incident.is_none() && self.run.steps == 1 + self.run.holds
    }

    async fn write_pauses(&self) -> Result<Vec<WritePause>, StoreError> {
        let rt = &self.runtime;
        rt.store.write_pauses(&rt.scope).await
    }

    /// Holds the run at its write until writes resume.
    async fn hold_writes(&mut self, pause: &WritePause) -> Result<(), StoreError> {
        let reason = format!(
            "writes are paused for {} by {}: {}; the run writes once they resume",
            pause.place(),
            pause.actor,
            pause.reason
        );
        info!(
            gate = "writes",
            %reason,
            "A run reached its write while writes are paused; it is held."
        );
        let step = Step::Held {
            gate: Gate::Writes,
            until: None,
            reason: reason.clone(),
        };
        self.record(step, Some(&reason)).await
    }

    /// The triage's call and tokens to reserve, as of now.
    fn triage_asks(&self) -> (TokenSettlement, Vec<MeterAsk>) {
        let now = self.now();
        let estimate = u64::from(self.runtime.settings.llm.max_tokens);
        let asks = budgets::llm_asks(&self.budget(), now, estimate);
        (TokenSettlement { now, estimate }, asks)
    }

    /// Records the incident just read and reserves the triage that follows it at the same
    /// time: the two writes reach the store together and share a commit where they can, so
    /// the reservation costs no wait of its own on the way to the approval request. The
    /// triage then takes the answer instead of reserving again, provided the run (read again,
    /// if its journal had moved on) triages next; otherwise the answer is dropped. An answer
    /// dropped, or lost because recording the incident failed and the actor stops, stays
    /// charged, as a crash between a reservation and its step does: the budget counts more,
    /// never less.
    pub(super) async fn record_reserving_triage(&mut self, step: Step) -> Result<(), StoreError> {
        let (settle, asks) = self.triage_asks();
        let rt = self.runtime.clone();
        let (recorded, answer) = tokio::join!(
            self.record(step, None),
            rt.store.reserve_budget(&rt.scope, &asks)
        );
        recorded?;
        let answer = answer?;
        if self.run.next(self.now()) == Next::Triage {
            self.reserved = Some(Reserved {
                settle,
                asks,
                answer,
            });
        }
        Ok(())
    }

    /// Reserves the triage's call and tokens (or takes the reservation made ahead), triages,
    /// then settles the tokens to what the provider reported.
    async fn budgeted_triage(&mut self) -> Result<(), ActorProcessingErr> {
        let Reserved {
            settle,
            asks,
            answer,
        } = match self.reserved.take() {
            Some(reserved) => reserved,
            None => {
                let (settle, asks) = self.triage_asks();
                let rt = self.runtime.clone();
                let answer = rt.store.reserve_budget(&rt.scope, &asks).await?;
                Reserved {
                    settle,
                    asks,
                    answer,
                }
            }
        };
        if let refused @ Reservation::Refused { .. } = answer {
            return Ok(self.hold_budget(Gate::LlmBudget, refused, &asks).await?);
        }
        // The step that records the triage settles the reservation in its own transaction
        // (`take_charges`): no commit of its own on the way to the approval request.
        self.settle = Some(settle);
        let stepped = self.step(Next::Triage).await;
        self.settle = None;
        stepped
    }

    /// The meter changes the step about to be recorded carries: for a triage recorded with
    /// its proposal, the tokens the provider reported less the reservation's estimate, in
    /// the reservation's hour and day windows. Nothing for any other step, and nothing twice.
    pub(super) fn take_charges(&mut self, step: &Step, next: &RunState) -> Vec<MeterCharge> {
        let Some(settle) = self.settle.take() else {
            return vec![];
        };
        let usage = next
            .provenance
            .as_ref()
            .filter(|_| matches!(step, Step::Triaged { .. }) && next.proposal.is_some())
            .map(|p| p.usage.input_tokens.saturating_add(p.usage.output_tokens));
        let Some(usage) = usage else {
            return vec![];
        };
        let delta = i64::try_from(usage)
            .unwrap_or(i64::MAX)
            .saturating_sub(i64::try_from(settle.estimate).unwrap_or(i64::MAX));
        [
            (meters::LLM_TOKENS_HOUR, budgets::HOUR_MS),
            (meters::LLM_TOKENS_DAY, budgets::DAY_MS),
        ]
        .into_iter()
        .map(|(meter, len)| MeterCharge {
            meter: meter.to_owned(),
            window_start: budgets::window_start(settle.now, len),
            delta,
        })
        .collect()
    }

    /// Holds the run until the window that refused it ends (later when that window refused
    /// many), and raises the alert.
    async fn hold_budget(
        &mut self,
        gate: Gate,
        refusal: Reservation,
        asks: &[MeterAsk],
    ) -> Result<(), StoreError> {
        let Reservation::Refused {
            meter,
            window_start,
            used,
            refused,
        } = refusal
        else {
            return Ok(());
        };
        let ask = asks.iter().find(|a| a.meter == meter);
        let (limit, amount) = ask.map_or((0, 1), |a| (a.limit, a.amount));
        let len = budgets::window_len(&meter);
        let waves = refused
            .saturating_sub(1)
            .checked_div(limit)
            .unwrap_or(0)
            .min(MAX_WAVES);
        let until = window_start + len * (1 + i64::try_from(waves).unwrap_or(0));
        let what = if gate == Gate::SourceCap {
            "source cap"
        } else {
            "LLM budget"
        };
        let mut reason = format!(
            "{what} reached: {used} of {limit} {} used; the run waits until {} and asks again",
            budgets::describe(&meter),
            budgets::clock_time(until)
        );
        if amount > limit {
            reason.push_str(&format!(
                " (one call reserves {amount}, more than the whole budget: raise the budget \
                 or lower the LLM's max_tokens)"
            ));
        }
        warn!(
            gate = gate.as_str(),
            meter = %meter,
            used,
            limit,
            until,
            "A budget is spent; new work waits for its window."
        );
        let step = Step::Held {
            gate,
            until: Some(until),
            reason: reason.clone(),
        };
        self.record(step, Some(&reason)).await
    }

    /// Shadow mode at the approval request or the write: tells the approval channel what
    /// Steward would have done, closes the approval the policy opened, and ends `shadowed`.
    async fn end_in_shadow(&mut self, next: &Next) -> Result<(), StoreError> {
        let changes = self.shadow_changes();
        let (would, action) = if *next == Next::RequestApproval {
            ("request approval for", "asked for approval")
        } else {
            ("write", "written")
        };
        let number = self
            .run
            .incident
            .as_ref()
            .map(|i| i.number.clone())
            .unwrap_or_default();
        let text = shadow_notice(would, &number, &changes);
        self.post_shadow_notice(&text).await;
        let reason = format!(
            "shadow mode: Steward would have {action} {} change(s) to {}; nothing was written",
            changes.len(),
            clean(&number)
        );
        info!(%reason, "A run in shadow mode ended before its write.");
        if *next == Next::RequestApproval
            && let Some(approval_id) = self.run.approval_id
        {
            let rt = self.runtime.clone();
            let write = finished_write(self.run_id, self.run.steps, states::SHADOWED, &reason);
            match rt
                .store
                .expire_approval(&rt.scope, approval_id, write)
                .await
            {
                Ok(DecideOutcome::Decided(_)) => return self.reload().await,
                Ok(_) | Err(StoreError::Conflict(_)) => self.reload().await?,
                Err(e) => return Err(e),
            }
            if self.run.finished.is_some() {
                return Ok(());
            }
        }
        self.finish(states::SHADOWED, &reason).await
    }

    /// The diff as `field: old -> new` lines (the work note as one line).
    fn shadow_changes(&self) -> Vec<String> {
        let entries = self
            .run
            .diff
            .as_ref()
            .map(|d| d.entries.clone())
            .unwrap_or_default();
        entries
            .iter()
            .map(|e| {
                if e.field == "work_notes" {
                    "work_notes: Steward's work note".to_owned()
                } else {
                    let old = if e.old.is_empty() { "(empty)" } else { &e.old };
                    format!("{}: {} -> {}", clean(&e.field), clean(old), clean(&e.new))
                }
            })
            .collect()
    }

    /// Posts the notice; a failure is logged and the run still ends.
    async fn post_shadow_notice(&self, text: &str) {
        let channel = self.runtime.settings.slack.approval_channel.clone();
        let blocks = json!([{ "type": "section", "text": { "type": "plain_text", "text": text } }]);
        let (result, _) = self
            .ask(
                |c| c.slack.clone(),
                |reply| SlackMsg::Post {
                    channel: channel.clone(),
                    text: text.to_owned(),
                    blocks: blocks.clone(),
                    reply,
                },
            )
            .await;
        if let Err(error) = result {
            warn!(%error, "Posting the shadow-mode notice failed.");
        }
    }
}

/// The shadow notice: marked `shadow:` first, then what would have happened.
fn shadow_notice(would: &str, number: &str, changes: &[String]) -> String {
    let mut text = format!(
        "shadow: Steward would {would} {} on {}:",
        plural(changes.len()),
        clean(number)
    );
    for change in changes {
        text.push_str("\n- ");
        text.push_str(change);
    }
    text.push_str("\nShadow mode is on for this tenant: nothing was written.");
    if text.chars().count() > NOTICE_MAX {
        text = text.chars().take(NOTICE_MAX).collect();
        text.push('…');
    }
    text
}

fn plural(n: usize) -> String {
    if n == 1 {
        "1 change".into()
    } else {
        format!("{n} changes")
    }
}

/// Text from outside, made safe for Slack's message text: one line, at most 200 characters,
/// and no `&`, `<` or `>` (which would start Slack's control sequences).
fn clean(text: &str) -> String {
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    one_line
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shadow_notice_is_marked_and_lists_the_changes() {
        let text = shadow_notice(
            "request approval for",
            "INC0010001",
            &[
                "urgency: 3 -> 1".into(),
                "work_notes: Steward's work note".into(),
            ],
        );
        assert!(
            text.starts_with("shadow: Steward would request approval for 2 changes on INC0010001:")
        );
        assert!(text.contains("\n- urgency: 3 -> 1"));
        assert!(text.ends_with("nothing was written."));
    }

    #[test]
    fn outside_text_cannot_mention_or_break_lines() {
        assert_eq!(clean("<!channel>\nx & y"), "&lt;!channel&gt; x &amp; y");
        assert_eq!(clean(&"a".repeat(500)).len(), 200);
        let long = shadow_notice("write", "INC1", &vec!["f: a -> b".repeat(50); 20]);
        assert!(long.chars().count() <= NOTICE_MAX + 1);
    }
}
