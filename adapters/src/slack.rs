//! Slack: verifying signed requests from Slack, reading `block_actions` clicks, calling the Web
//! API (`chat.postMessage`, `chat.update`, `chat.postEphemeral`) and building the Block Kit
//! approval message whose buttons those clicks come from, with its reminders and escalations.

mod blocks;
mod client;
mod interaction;
mod notices;
mod signature;
mod text;

pub use blocks::{
    APPROVE_ACTION, ApprovalView, DeniedField, OPEN_INCIDENT_ACTION, Outcome, REJECT_ACTION,
    approval_message, outcome_message,
};
pub use client::{PostedMessage, SlackClient, SlackError};
pub use interaction::{
    BlockAction, InteractionError, MAX_INTERACTION_BODY_BYTES, parse_block_actions,
};
pub use notices::{escalation_message, escalation_text, reminder_text};
pub use signature::{SIGNATURE_HEADER, TIMESTAMP_HEADER, sign_slack, verify_slack_signature};
