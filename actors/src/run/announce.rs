//! Speaking for a run in Slack when an operator decides for it from outside its actor: the
//! approval message is brought up to date with the same rendering the run itself uses.

use std::time::Duration;

use ractor::ActorRef;
use steward_adapters::slack;
use steward_core::RunId;
use tracing::warn;

use super::RunActorState;
use crate::connectors::SlackMsg;
use crate::crash::RunWatch;
use crate::journal::{RunState, states};
use crate::tenant::TenantMsg;
use crate::tenant_runtime::SharedRuntime;

/// What an operator's decision shows in the run's Slack message.
pub(crate) enum Notice<'a> {
    /// The run ended `state`, for `reason`.
    Ended { state: &'a str, reason: &'a str },
    /// An approved run goes on writing.
    Writing,
    /// The run waits for its approval again: the request shows its buttons.
    AwaitingApproval,
}

/// Updates the run's approval message (and its escalation message, for an end) to `notice`.
/// A run without a message is left alone; a failed update is logged.
pub(crate) async fn announce(
    run_id: RunId,
    runtime: SharedRuntime,
    supervisor: ActorRef<TenantMsg>,
    run: RunState,
    notice: Notice<'_>,
) {
    let Some((channel, ts)) = run.message.clone() else {
        return;
    };
    let escalation = run.escalation_message.clone();
    let speaker = RunActorState {
        run_id,
        runtime,
        source: String::new(),
        run,
        supervisor,
        passivate_after: Duration::ZERO,
        handled: 0,
        reloads: 0,
        watch: RunWatch::new(),
        trace_parent: None,
        settle: None,
        reserved: None,
        timers_cleared: false,
        fresh: None,
        slot: crate::live::LiveSlot::none(),
        idle_since: std::time::Instant::now(),
    };
    match notice {
        Notice::Ended { state, reason } => {
            speaker.update_message(state, reason, &channel, &ts).await;
            if let Some((channel, ts)) = escalation {
                speaker.update_message(state, reason, &channel, &ts).await;
            }
        }
        Notice::Writing => {
            speaker
                .update_message(states::WRITING, "", &channel, &ts)
                .await;
        }
        Notice::AwaitingApproval => speaker.show_request(&channel, &ts).await,
    }
}

impl RunActorState {
    /// Puts the approval request, buttons and all, back into the message at `channel`/`ts`.
    async fn show_request(&self, channel: &str, ts: &str) {
        let Some(approval_id) = self.run.approval_id else {
            return;
        };
        let parts = self.view_parts();
        let approval = approval_id.to_string();
        let owned = parts.view(&approval);
        let (text, blocks) = slack::approval_message(&owned.as_view());
        let (result, _) = self
            .ask(
                |c| c.slack.clone(),
                |reply| SlackMsg::Update {
                    channel: channel.to_owned(),
                    ts: ts.to_owned(),
                    text: text.clone(),
                    blocks: blocks.clone(),
                    reply,
                },
            )
            .await;
        if let Err(error) = result {
            warn!(%error, "Showing the approval request again failed.");
        }
    }
}
