//! Block Kit messages for an approval: the incident, the model's summary, every field change with
//! its old and new value, what policy refused, the work note Steward will append, and Approve and
//! Reject buttons (or, once decided, the outcome in their place).
//!
//! Everything that comes from the incident or the model is rendered in `plain_text` objects, in
//! blocks of its own below labels that only Steward writes, so it cannot format, link, mention or
//! lay out anything. Invisible and direction-changing characters are shown as `\u{…}` escapes,
//! single-line values are quoted, and every text is cut to Slack's limits with a visible marker.

use serde_json::{Value, json};
use steward_core::DiffEntry;

use super::text::{
    CONTEXT_TEXT_MAX, FALLBACK_TEXT_MAX, HEADER_TEXT_MAX, SECTION_TEXT_MAX, block_text, chunks,
    line_text, mrkdwn_escape, quoted, truncate,
};

/// `action_id` of the Approve button. Its `value` is the approval id.
pub const APPROVE_ACTION: &str = "steward_approve";
/// `action_id` of the Reject button. Its `value` is the approval id.
pub const REJECT_ACTION: &str = "steward_reject";
/// `action_id` of the link button that opens the incident. Slack reports clicks on it too; they
/// decide nothing and are to be acknowledged and ignored.
pub const OPEN_INCIDENT_ACTION: &str = "steward_open_incident";

const MAX_BLOCKS: usize = 50;
const FIELD_NAME_MAX: usize = 100;
const VALUE_MAX: usize = 1400;
const DENIED_VALUE_MAX: usize = 300;
const REASON_MAX: usize = 300;
const NAME_MAX: usize = 100;
const ID_MAX: usize = 200;
const URL_MAX: usize = 3000;
const CONFIRM_TEXT_MAX: usize = 300;

const NOTICE: &str = "_Quoted text below comes from the incident and from the model. \
                      It is data, not instructions._";
const WORK_NOTE_MARKER: &str = "(the work note below, in full)";

/// What an approver needs to see to decide.
#[derive(Debug, Clone, Copy)]
pub struct ApprovalView<'a> {
    /// Goes into each button's `value`; must stay short (Slack allows 2000 characters).
    pub approval_id: &'a str,
    /// The run that asks for approval.
    pub run_id: &'a str,
    /// The incident's number, such as `INC0010001`.
    pub incident_number: &'a str,
    /// Untrusted: text from the incident.
    pub incident_title: &'a str,
    /// Untrusted: the model's summary.
    pub summary: &'a str,
    /// The exact changes to write: field, old value, new value.
    pub entries: &'a [DiffEntry],
    /// Changes the model proposed that policy refused.
    pub denied: &'a [DeniedField<'a>],
    /// The note Steward will append; also one of `entries` when present. Shown in full.
    pub work_note: &'a str,
    /// Link to the incident; shown only if it is an `http` or `https` URL.
    pub incident_url: Option<&'a str>,
}

/// A proposed change that policy refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeniedField<'a> {
    /// The field the model wanted to change.
    pub field: &'a str,
    /// Untrusted: the value the model proposed.
    pub value: &'a str,
    /// Why policy refused it.
    pub reason: &'a str,
}

/// How an approval ended, shown in place of the buttons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// Approved; the write is under way.
    Approved { by: &'a str },
    /// Rejected; nothing will be written.
    Rejected { by: &'a str },
    /// Approved and written.
    Written { by: &'a str },
    /// Not written because the record no longer holds the old values that were approved.
    Stale { reason: &'a str },
    /// Nobody decided in time.
    Expired,
    /// The write failed.
    Failed { reason: &'a str },
    /// An operator ended the run; `reason` names them and why.
    Cancelled { reason: &'a str },
}

/// The approval request: fallback text for notifications and the blocks with Approve and Reject
/// buttons. The fallback carries only the incident number and the number of changes, never
/// untrusted text, because Slack renders it as mrkdwn.
pub fn approval_message(view: &ApprovalView<'_>) -> (String, Value) {
    let fallback = format!(
        "Approval needed: {} proposed field change(s) to {}",
        view.entries.len(),
        fallback_number(view.incident_number)
    );
    let blocks = build(view, decision_buttons(view));
    (truncate(&fallback, FALLBACK_TEXT_MAX), Value::Array(blocks))
}

/// The same message once decided: identical content, with the buttons replaced by the outcome.
pub fn outcome_message(view: &ApprovalView<'_>, outcome: &Outcome<'_>) -> (String, Value) {
    let fallback = format!(
        "{}: {}",
        fallback_number(view.incident_number),
        outcome_status(outcome)
    );
    let footer = plain_section(&outcome_line(outcome));
    let blocks = build(view, footer);
    (truncate(&fallback, FALLBACK_TEXT_MAX), Value::Array(blocks))
}

fn build(view: &ApprovalView<'_>, footer: Value) -> Vec<Value> {
    let mut blocks = vec![
        header(view.incident_number),
        json!({"type": "context", "elements": [mrkdwn(NOTICE)]}),
        label("*Incident title*"),
        plain_section(&block_text(view.incident_title)),
        label("*Summary from the model*"),
        plain_section(&block_text(view.summary)),
        json!({"type": "divider"}),
        label(&format!(
            "*Changes Steward will write* ({})",
            view.entries.len()
        )),
    ];
    let denied = denied_blocks(view.denied);
    let mut tail = vec![ids_context(view)];
    tail.extend(link_block(view.incident_url));
    tail.push(footer);
    let has_note = !view.work_note.is_empty();
    let budget = MAX_BLOCKS
        .saturating_sub(blocks.len() + denied.len() + tail.len())
        .saturating_sub(usize::from(has_note));
    let entries = entry_blocks(view, budget.saturating_sub(usize::from(has_note)));
    let note_slots = budget.saturating_sub(entries.len());
    blocks.extend(entries);
    blocks.extend(denied);
    if has_note {
        blocks.push(label("*Work note Steward will append*"));
        blocks.extend(note_blocks(view.work_note, note_slots));
    }
    blocks.extend(tail);
    blocks
}

fn plain(text: &str) -> Value {
    let text = if text.is_empty() { "(empty)" } else { text };
    json!({"type": "plain_text", "text": text, "emoji": false})
}

fn mrkdwn(text: &str) -> Value {
    json!({"type": "mrkdwn", "text": text})
}

/// A section of untrusted text, as plain text within the section limit.
fn plain_section(text: &str) -> Value {
    json!({"type": "section", "text": plain(&truncate(text, SECTION_TEXT_MAX))})
}

/// A label Steward writes; never given untrusted text.
fn label(text: &str) -> Value {
    json!({"type": "section", "text": mrkdwn(text)})
}

fn header(incident_number: &str) -> Value {
    let text = format!("Approval requested: {}", line_text(incident_number));
    json!({"type": "header", "text": plain(&truncate(&text, HEADER_TEXT_MAX))})
}

fn fallback_number(incident_number: &str) -> String {
    mrkdwn_escape(&truncate(&line_text(incident_number), NAME_MAX))
}

fn field_name(field: &str) -> String {
    let identifier = !field.is_empty()
        && field
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if identifier {
        truncate(field, FIELD_NAME_MAX)
    } else {
        quoted(field, FIELD_NAME_MAX)
    }
}

fn entry_line(entry: &DiffEntry, work_note: &str) -> String {
    let new = if !work_note.is_empty() && entry.new == work_note {
        WORK_NOTE_MARKER.to_owned()
    } else {
        quoted(&entry.new, VALUE_MAX)
    };
    format!(
        "{}: {} → {new}",
        field_name(&entry.field),
        quoted(&entry.old, VALUE_MAX)
    )
}

/// One section per change; if there are more changes than blocks left, the last block says how
/// many are not shown.
fn entry_blocks(view: &ApprovalView<'_>, slots: usize) -> Vec<Value> {
    let lines = view.entries.iter().map(|e| entry_line(e, view.work_note));
    if view.entries.len() <= slots {
        return lines.map(|line| plain_section(&line)).collect();
    }
    let shown = slots.saturating_sub(1);
    let mut blocks: Vec<Value> = lines.take(shown).map(|line| plain_section(&line)).collect();
    blocks.push(label(&format!(
        "*…and {} more changes not shown here.* Do not approve changes you cannot see.",
        view.entries.len() - shown
    )));
    blocks
}

fn denied_blocks(denied: &[DeniedField<'_>]) -> Vec<Value> {
    if denied.is_empty() {
        return Vec::new();
    }
    let lines: Vec<String> = denied
        .iter()
        .map(|d| {
            format!(
                "{}: {}, refused: {}",
                field_name(d.field),
                quoted(d.value, DENIED_VALUE_MAX),
                truncate(&line_text(d.reason), REASON_MAX)
            )
        })
        .collect();
    vec![
        label("*Refused by policy* (not part of this approval, will not be written)"),
        plain_section(&lines.join("\n")),
    ]
}

fn note_blocks(note: &str, slots: usize) -> Vec<Value> {
    let text = truncate(&block_text(note), slots.max(1) * SECTION_TEXT_MAX);
    chunks(&text, SECTION_TEXT_MAX)
        .iter()
        .map(|piece| plain_section(piece))
        .collect()
}

fn ids_context(view: &ApprovalView<'_>) -> Value {
    let text = format!(
        "Run {} · Approval {}",
        truncate(&line_text(view.run_id), ID_MAX),
        truncate(&line_text(view.approval_id), ID_MAX)
    );
    json!({"type": "context", "elements": [plain(&truncate(&text, CONTEXT_TEXT_MAX))]})
}

fn link_block(incident_url: Option<&str>) -> Option<Value> {
    let url = url::Url::parse(incident_url?).ok()?;
    if !matches!(url.scheme(), "http" | "https") || url.as_str().len() > URL_MAX {
        return None;
    }
    Some(json!({
        "type": "section",
        "text": mrkdwn("Check the incident itself before deciding."),
        "accessory": {
            "type": "button",
            "action_id": OPEN_INCIDENT_ACTION,
            "text": plain("Open incident"),
            "url": url.as_str(),
        },
    }))
}

fn decision_buttons(view: &ApprovalView<'_>) -> Value {
    let confirm_text = format!(
        "Steward will write {} field change(s) to {}, exactly as shown.",
        view.entries.len(),
        truncate(&line_text(view.incident_number), NAME_MAX)
    );
    json!({
        "type": "actions",
        "block_id": "steward_decision",
        "elements": [
            {
                "type": "button",
                "action_id": APPROVE_ACTION,
                "style": "primary",
                "text": plain("Approve"),
                "value": view.approval_id,
                "confirm": {
                    "title": plain("Approve this change?"),
                    "text": plain(&truncate(&confirm_text, CONFIRM_TEXT_MAX)),
                    "confirm": plain("Approve"),
                    "deny": plain("Cancel"),
                },
            },
            {
                "type": "button",
                "action_id": REJECT_ACTION,
                "style": "danger",
                "text": plain("Reject"),
                "value": view.approval_id,
            },
        ],
    })
}

fn who(by: &str) -> String {
    truncate(&line_text(by), NAME_MAX)
}

fn outcome_line(outcome: &Outcome<'_>) -> String {
    match outcome {
        Outcome::Approved { by } => {
            format!("Approved by {}. Steward is writing the change.", who(by))
        }
        Outcome::Rejected { by } => format!("Rejected by {}. Nothing will be written.", who(by)),
        Outcome::Written { by } => {
            format!("Approved by {} and written to the incident.", who(by))
        }
        Outcome::Stale { reason } => format!(
            "Not written: the incident changed after approval was requested ({}).",
            truncate(&line_text(reason), REASON_MAX)
        ),
        Outcome::Expired => "Expired: nobody decided in time. Nothing was written.".to_owned(),
        Outcome::Failed { reason } => {
            format!("Failed: {}.", truncate(&line_text(reason), REASON_MAX))
        }
        Outcome::Cancelled { reason } => format!(
            "Cancelled: {}. Nothing was written.",
            truncate(&line_text(reason), REASON_MAX)
        ),
    }
}

fn outcome_status(outcome: &Outcome<'_>) -> &'static str {
    match outcome {
        Outcome::Approved { .. } => "approved",
        Outcome::Rejected { .. } => "rejected",
        Outcome::Written { .. } => "approved and written",
        Outcome::Stale { .. } => "not written, the incident changed",
        Outcome::Expired => "approval expired",
        Outcome::Failed { .. } => "failed",
        Outcome::Cancelled { .. } => "cancelled",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOTE: &str = "Steward: set urgency 3 → 1 because the outage affects all users.\n\
                        Approved by U123 (run run_1).";

    fn entries() -> Vec<DiffEntry> {
        vec![
            DiffEntry {
                field: "urgency".into(),
                old: "3".into(),
                new: "1".into(),
            },
            DiffEntry {
                field: "assignment_group".into(),
                old: String::new(),
                new: "Network\nOps".into(),
            },
            DiffEntry {
                field: "work_notes".into(),
                old: String::new(),
                new: NOTE.into(),
            },
        ]
    }

    fn view<'a>(
        entries: &'a [DiffEntry],
        denied: &'a [DeniedField<'a>],
        summary: &'a str,
    ) -> ApprovalView<'a> {
        ApprovalView {
            approval_id: "apr_01J9Z",
            run_id: "run_01J9Y",
            incident_number: "INC0010001",
            incident_title: "Email down for everyone",
            summary,
            entries,
            denied,
            work_note: NOTE,
            incident_url: Some("https://dev1.service-now.com/nav_to.do?uri=incident.do"),
        }
    }

    fn blocks_of(message: &(String, Value)) -> &Vec<Value> {
        message.1.as_array().expect("blocks are an array")
    }

    /// Every text object in the message, with its type.
    fn text_objects(value: &Value, out: &mut Vec<(String, String)>) {
        match value {
            Value::Object(map) => {
                if let (Some(Value::String(kind)), Some(Value::String(text))) =
                    (map.get("type"), map.get("text"))
                {
                    out.push((kind.clone(), text.clone()));
                }
                map.values().for_each(|v| text_objects(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| text_objects(v, out)),
            _ => {}
        }
    }

    fn all_texts(blocks: &Value) -> Vec<(String, String)> {
        let mut out = Vec::new();
        text_objects(blocks, &mut out);
        out
    }

    fn assert_within_limits(message: &(String, Value)) {
        let blocks = blocks_of(message);
        assert!(blocks.len() <= MAX_BLOCKS, "{} blocks", blocks.len());
        assert!(message.0.chars().count() <= FALLBACK_TEXT_MAX);
        for block in blocks {
            let kind = block["type"].as_str().expect("every block has a type");
            if let Some(text) = block["text"]["text"].as_str() {
                let max = if kind == "header" {
                    HEADER_TEXT_MAX
                } else {
                    SECTION_TEXT_MAX
                };
                assert!(
                    text.chars().count() <= max,
                    "{kind}: {}",
                    text.chars().count()
                );
                assert!(!text.is_empty());
            }
        }
        for (kind, text) in all_texts(&message.1) {
            if kind == "plain_text" {
                assert!(!text.is_empty());
            }
        }
    }

    fn plain_texts(blocks: &Value) -> Vec<String> {
        all_texts(blocks)
            .into_iter()
            .filter(|(kind, _)| kind == "plain_text")
            .map(|(_, text)| text)
            .collect()
    }

    #[test]
    fn approval_message_has_the_expected_shape() {
        let entries = entries();
        let message = approval_message(&view(&entries, &[], "Mail relay is down."));
        assert_within_limits(&message);
        let blocks = blocks_of(&message);
        assert_eq!(blocks[0]["type"], "header");
        assert_eq!(blocks[0]["text"]["text"], "Approval requested: INC0010001");
        let last = blocks.last().expect("blocks");
        assert_eq!(last["type"], "actions");
        let buttons = last["elements"].as_array().expect("elements");
        assert_eq!(buttons.len(), 2);
        assert_eq!(buttons[0]["action_id"], APPROVE_ACTION);
        assert_eq!(buttons[0]["style"], "primary");
        assert_eq!(buttons[1]["action_id"], REJECT_ACTION);
        assert_eq!(buttons[1]["style"], "danger");
        for button in buttons {
            assert_eq!(button["type"], "button");
            assert_eq!(button["value"], "apr_01J9Z");
            assert_eq!(button["text"]["type"], "plain_text");
        }
        assert_eq!(
            message.0,
            "Approval needed: 3 proposed field change(s) to INC0010001"
        );
        let round_trip: Value = serde_json::from_str(&message.1.to_string()).expect("valid JSON");
        assert_eq!(round_trip, message.1);
    }

    #[test]
    fn each_change_shows_field_old_and_new() {
        let entries = entries();
        let texts = plain_texts(&approval_message(&view(&entries, &[], "s")).1);
        assert!(
            texts.contains(&"urgency: \"3\" → \"1\"".to_owned()),
            "{texts:?}"
        );
        assert!(texts.contains(&"assignment_group: (empty) → \"Network\\nOps\"".to_owned()));
        assert!(texts.contains(&format!("work_notes: (empty) → {WORK_NOTE_MARKER}")));
    }

    #[test]
    fn the_work_note_is_shown_in_full_even_when_long() {
        let long_note = format!("{}END", "note text ".repeat(700));
        let entries = vec![DiffEntry {
            field: "work_notes".into(),
            old: String::new(),
            new: long_note.clone(),
        }];
        let mut v = view(&entries, &[], "s");
        v.work_note = &long_note;
        let message = approval_message(&v);
        assert_within_limits(&message);
        let texts = plain_texts(&message.1);
        let start = texts
            .iter()
            .position(|t| long_note.starts_with(t.as_str()))
            .expect("note starts a section");
        let shown: String = texts[start..start + 3].concat();
        assert_eq!(shown, long_note);
    }

    #[test]
    fn a_hostile_summary_is_rendered_inert_and_truncated() {
        let hostile = format!(
            "*bold* <https://evil.example|click> <!channel> <@U999> ```code``` \
             zero\u{200B}width bidi\u{202E}txet\u{2066}iso\u{2069} bom\u{FEFF} :rotating_light:\n{}",
            "A".repeat(100 * 1024)
        );
        let entries = entries();
        let message = approval_message(&view(&entries, &[], &hostile));
        assert_within_limits(&message);
        let serialized = message.1.to_string();
        for hidden in ['\u{200B}', '\u{202E}', '\u{2066}', '\u{2069}', '\u{FEFF}'] {
            assert!(!serialized.contains(hidden), "{hidden:?} left raw");
        }
        let summary = plain_texts(&message.1)
            .into_iter()
            .find(|t| t.starts_with("*bold*"))
            .expect("summary section");
        assert!(summary.contains("<!channel>") && summary.contains("<https://evil.example|click>"));
        assert!(summary.contains("zero\\u{200b}width bidi\\u{202e}txet"));
        assert!(summary.chars().count() <= SECTION_TEXT_MAX);
        assert!(summary.contains("…(truncated, "), "no marker");
        let section = blocks_of(&message)
            .iter()
            .find(|b| b["text"]["text"] == summary.as_str())
            .expect("section");
        assert_eq!(section["text"]["type"], "plain_text");
        assert_eq!(section["text"]["emoji"], false);
        for (kind, text) in all_texts(&message.1) {
            if kind == "mrkdwn" {
                assert!(
                    !text.contains("evil") && !text.contains("channel"),
                    "{text}"
                );
            }
        }
        assert!(!message.0.contains("evil") && !message.0.contains("bold"));
    }

    #[test]
    fn hostile_values_cannot_fake_extra_changes() {
        let entries = vec![DiffEntry {
            field: "short_description".into(),
            old: "x\" → \"y\"\npriority: \"5\" → \"1".into(),
            new: "ok\u{202E}".into(),
        }];
        let texts = plain_texts(&approval_message(&view(&entries, &[], "s")).1);
        let line = texts
            .iter()
            .find(|t| t.starts_with("short_description"))
            .expect("entry line");
        assert!(!line.contains('\n'));
        assert_eq!(
            line,
            "short_description: \"x\\\" → \\\"y\\\"\\npriority: \\\"5\\\" → \\\"1\" → \"ok\\u{202e}\""
        );
    }

    #[test]
    fn odd_field_names_are_quoted() {
        let entries = vec![DiffEntry {
            field: "urgency: \"3\" → \"1\"\nstate".into(),
            old: "a".into(),
            new: "b".into(),
        }];
        let texts = plain_texts(&approval_message(&view(&entries, &[], "s")).1);
        assert!(
            texts.contains(&"\"urgency: \\\"3\\\" → \\\"1\\\"\\nstate\": \"a\" → \"b\"".to_owned())
        );
    }

    #[test]
    fn long_values_are_cut_with_their_quotes_balanced() {
        let entries = vec![DiffEntry {
            field: "description".into(),
            old: "o".repeat(5000),
            new: "n".repeat(5000),
        }];
        let message = approval_message(&view(&entries, &[], "s"));
        assert_within_limits(&message);
        let line = plain_texts(&message.1)
            .into_iter()
            .find(|t| t.starts_with("description"))
            .expect("entry line");
        assert_eq!(
            line.matches("…(truncated, 3600 more characters)").count(),
            2
        );
        assert_eq!(line.matches('"').count(), 4);
    }

    #[test]
    fn too_many_changes_stay_within_50_blocks_and_say_what_is_hidden() {
        let entries: Vec<DiffEntry> = (0..120)
            .map(|i| DiffEntry {
                field: format!("u_field_{i}"),
                old: "a".into(),
                new: "b".into(),
            })
            .collect();
        let message = approval_message(&view(&entries, &[], "s"));
        assert_within_limits(&message);
        let shown = plain_texts(&message.1)
            .iter()
            .filter(|t| t.starts_with("u_field_"))
            .count();
        let hidden_note = all_texts(&message.1)
            .into_iter()
            .find(|(_, t)| t.contains("more changes not shown"))
            .expect("hidden count");
        assert!(
            hidden_note
                .1
                .contains(&format!("{} more changes", 120 - shown))
        );
        assert_eq!(blocks_of(&message).len(), MAX_BLOCKS);
        assert!(
            plain_texts(&message.1)
                .iter()
                .any(|t| t.starts_with("Steward: set urgency"))
        );
    }

    #[test]
    fn refused_fields_are_listed_apart_as_quoted_data() {
        let entries = entries();
        let denied = [DeniedField {
            field: "priority",
            value: "1\n<!channel>",
            reason: "priority is not writable by Steward",
        }];
        let message = approval_message(&view(&entries, &denied, "s"));
        assert_within_limits(&message);
        let texts = plain_texts(&message.1);
        assert!(
            texts.contains(
                &"priority: \"1\\n<!channel>\", refused: priority is not writable by Steward"
                    .to_owned()
            )
        );
        assert!(
            all_texts(&message.1)
                .iter()
                .any(|(_, t)| t.starts_with("*Refused by policy*"))
        );
    }

    #[test]
    fn invisible_characters_in_the_title_and_number_are_made_visible() {
        let entries = entries();
        let mut v = view(&entries, &[], "s");
        v.incident_title = "Reset\u{200B} password\u{202E}";
        v.incident_number = "INC<!here>\u{200F}";
        let message = approval_message(&v);
        let texts = plain_texts(&message.1);
        assert!(texts.contains(&"Reset\\u{200b} password\\u{202e}".to_owned()));
        assert_eq!(
            blocks_of(&message)[0]["text"]["text"],
            "Approval requested: INC<!here>\\u{200f}"
        );
        assert!(
            message.0.contains("INC&lt;!here&gt;\\u{200f}"),
            "{}",
            message.0
        );
    }

    #[test]
    fn overlong_header_and_ids_are_cut() {
        let entries = entries();
        let number = "N".repeat(1000);
        let mut v = view(&entries, &[], "");
        v.incident_number = &number;
        v.incident_title = "";
        let message = approval_message(&v);
        assert_within_limits(&message);
        let header = blocks_of(&message)[0]["text"]["text"]
            .as_str()
            .expect("header");
        assert!(header.ends_with("more characters)"));
        assert!(plain_texts(&message.1).iter().any(|t| t == "(empty)"));
    }

    #[test]
    fn only_web_links_to_the_incident_are_shown() {
        let entries = entries();
        let link_of = |url: Option<&str>| {
            let mut v = view(&entries, &[], "s");
            v.incident_url = url;
            blocks_of(&approval_message(&v))
                .iter()
                .find_map(|b| b["accessory"]["url"].as_str().map(str::to_owned))
        };
        assert_eq!(
            link_of(Some("https://dev1.service-now.com/x?a=1")).as_deref(),
            Some("https://dev1.service-now.com/x?a=1")
        );
        assert_eq!(link_of(Some("javascript:alert(1)")), None);
        assert_eq!(link_of(Some("not a url")), None);
        assert_eq!(link_of(None), None);
    }

    #[test]
    fn outcome_message_keeps_the_content_and_replaces_the_buttons() {
        let entries = entries();
        let v = view(&entries, &[], "Mail relay is down.");
        let request = approval_message(&v);
        let outcomes = [
            Outcome::Approved { by: "alice" },
            Outcome::Rejected { by: "bob" },
            Outcome::Written { by: "alice" },
            Outcome::Stale {
                reason: "urgency is now 2",
            },
            Outcome::Expired,
            Outcome::Failed {
                reason: "ServiceNow answered 403",
            },
            Outcome::Cancelled {
                reason: "cancelled by operator:ana: duplicate of INC0010002",
            },
        ];
        let mut lines = std::collections::HashSet::new();
        for outcome in outcomes {
            let message = outcome_message(&v, &outcome);
            assert_within_limits(&message);
            let before = blocks_of(&request);
            let after = blocks_of(&message);
            assert_eq!(before.len(), after.len());
            assert_eq!(before[..before.len() - 1], after[..after.len() - 1]);
            let footer = after.last().expect("footer");
            assert_eq!(footer["type"], "section");
            assert_eq!(footer["text"]["type"], "plain_text");
            assert!(!message.1.to_string().contains(APPROVE_ACTION));
            lines.insert(footer["text"]["text"].as_str().expect("line").to_owned());
            assert!(message.0.starts_with("INC0010001: "));
        }
        assert_eq!(lines.len(), outcomes.len());
    }

    #[test]
    fn outcome_names_are_shown_as_plain_text() {
        let entries = entries();
        let v = view(&entries, &[], "s");
        let message = outcome_message(
            &v,
            &Outcome::Approved {
                by: "<!channel>\nfake",
            },
        );
        let footer = blocks_of(&message).last().expect("footer").clone();
        assert_eq!(
            footer["text"]["text"],
            "Approved by <!channel>\\nfake. Steward is writing the change."
        );
        assert!(!message.0.contains("channel"));
    }
}
