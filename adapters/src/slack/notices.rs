//! Follow-ups to an approval request that nobody has decided: a reminder in its thread, and the
//! same request posted again for a second group of approvers (an escalation), with the approval
//! id unchanged so a click on either message decides the one approval.
//!
//! These texts are mrkdwn written by Steward. The incident number is the only value from outside
//! in them, and it goes in confined to one line and with mrkdwn escaped; people are mentioned
//! only by ids that look like Slack user ids.

use serde_json::Value;

use super::blocks::{ApprovalView, approval_message};
use super::text::{FALLBACK_TEXT_MAX, line_text, mrkdwn_escape, truncate};

const NUMBER_MAX: usize = 100;
const MAX_MENTIONS: usize = 20;

/// The reminder posted in the request's thread: the request is still waiting, and the people
/// who may decide it are mentioned.
pub fn reminder_text(incident_number: &str, approvers: &[String]) -> String {
    let text = format!(
        "Reminder: the approval request for {} is still waiting for a decision.{}",
        number(incident_number),
        mentions(approvers)
    );
    truncate(&text, FALLBACK_TEXT_MAX)
}

/// The note under an escalated request: nobody decided in time, and the escalation approvers
/// may now decide too.
pub fn escalation_text(incident_number: &str, approvers: &[String]) -> String {
    let text = format!(
        "Escalated: the approval request for {} was not decided in time. \
         Any listed approver may decide it now; the first click counts.{}",
        number(incident_number),
        mentions(approvers)
    );
    truncate(&text, FALLBACK_TEXT_MAX)
}

/// The approval request as posted to the escalation channel: the same blocks and buttons (so
/// the same approval id), with a fallback that says it is an escalation.
pub fn escalation_message(view: &ApprovalView<'_>) -> (String, Value) {
    let (fallback, blocks) = approval_message(view);
    (
        truncate(&format!("Escalated: {fallback}"), FALLBACK_TEXT_MAX),
        blocks,
    )
}

fn number(incident_number: &str) -> String {
    mrkdwn_escape(&truncate(&line_text(incident_number), NUMBER_MAX))
}

/// ` <@U…> <@W…>` for the ids that look like Slack user ids; others are left out.
fn mentions(ids: &[String]) -> String {
    ids.iter()
        .filter(|id| is_user_id(id))
        .take(MAX_MENTIONS)
        .map(|id| format!(" <@{id}>"))
        .collect()
}

fn is_user_id(id: &str) -> bool {
    let mut chars = id.chars();
    matches!(chars.next(), Some('U' | 'W'))
        && (2..=20).contains(&chars.clone().count())
        && chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use steward_core::DiffEntry;

    fn people(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_reminder_names_the_incident_and_mentions_the_approvers() {
        let text = reminder_text("INC0010001", &people(&["U0APPROVER1", "W0ENTERPRISE"]));
        assert_eq!(
            text,
            "Reminder: the approval request for INC0010001 is still waiting for a decision. \
             <@U0APPROVER1> <@W0ENTERPRISE>"
        );
    }

    #[test]
    fn ids_that_are_not_user_ids_are_never_mentioned() {
        let hostile = people(&[
            "!channel",
            "U1> <!here",
            "C0CHANNEL1",
            "u0lowercase",
            "U",
            &format!("U{}", "1".repeat(40)),
            "",
        ]);
        let text = reminder_text("INC0010001", &hostile);
        assert!(!text.contains("<@"), "{text}");
        assert!(!text.contains("<!"), "{text}");
    }

    #[test]
    fn a_hostile_incident_number_cannot_mention_format_or_break_lines() {
        let text = escalation_text("INC1 <!channel>\n*bold*", &[]);
        assert!(!text.contains("<!channel>"), "{text}");
        assert!(text.contains("&lt;!channel&gt;"), "{text}");
        assert!(!text.contains('\n'), "{text}");
    }

    #[test]
    fn an_oversized_incident_number_is_cut() {
        let text = reminder_text(&"9".repeat(10_000), &[]);
        assert!(text.chars().count() < 400, "{} chars", text.chars().count());
        assert!(text.contains("truncated"), "{text}");
    }

    #[test]
    fn mentions_are_capped() {
        let many: Vec<String> = (0..100).map(|i| format!("U{i:08}")).collect();
        let text = escalation_text("INC0010001", &many);
        assert_eq!(text.matches("<@").count(), MAX_MENTIONS);
    }

    #[test]
    fn the_escalated_request_keeps_the_buttons_of_the_original() {
        let entries = vec![DiffEntry {
            field: "urgency".into(),
            old: "3".into(),
            new: "1".into(),
        }];
        let view = ApprovalView {
            approval_id: "0190aaaa-0000-7000-8000-000000000001",
            run_id: "0190aaaa-0000-7000-8000-000000000002",
            incident_number: "INC0010001",
            incident_title: "Checkout fails",
            summary: "s",
            entries: &entries,
            denied: &[],
            work_note: "",
            incident_url: None,
        };
        let (original_text, original_blocks) = approval_message(&view);
        let (text, blocks) = escalation_message(&view);
        assert_eq!(blocks, original_blocks);
        assert_eq!(text, format!("Escalated: {original_text}"));
    }
}
