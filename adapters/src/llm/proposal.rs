//! The proposal schema the model must follow, and the strict parser that holds it to it.
//!
//! The schema sent to providers uses only the keywords every structured-output mode accepts
//! (types, `required`, `additionalProperties`); the limits are stated in descriptions for the
//! model and enforced here, where they cannot be ignored.

use std::collections::HashSet;

use serde::Deserialize;
use serde_json::{Value, json};
use steward_core::{FieldChange, Proposal};

use super::{LlmError, clip};

/// Replies longer than this are refused before parsing.
const MAX_REPLY_BYTES: usize = 64 * 1024;
const MAX_SUMMARY_CHARS: usize = 2000;
const MAX_CATEGORY_CHARS: usize = 100;
const MAX_CHANGES: usize = 20;
const MAX_FIELD_CHARS: usize = 80;
const MAX_VALUE_CHARS: usize = 4000;

/// The JSON Schema of a triage reply: `{summary, category, changes: [{field, value}]}`, every
/// property required and no other property allowed.
pub fn proposal_schema() -> Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["summary", "category", "changes"],
        "properties": {
            "summary": {
                "type": "string",
                "description": "What is wrong and what should happen next, 1 to 2000 characters."
            },
            "category": {
                "type": "string",
                "description": "A short category for the incident, at most 100 characters."
            },
            "changes": {
                "type": "array",
                "description": "At most 20 field changes, each to a different allowed field.",
                "items": {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["field", "value"],
                    "properties": {
                        "field": {
                            "type": "string",
                            "description": "An allowed field name: lowercase letters, digits, _."
                        },
                        "value": {
                            "type": "string",
                            "description": "The new raw value, at most 4000 characters."
                        }
                    }
                }
            }
        }
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireProposal {
    summary: String,
    category: String,
    changes: Vec<WireChange>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireChange {
    field: String,
    value: String,
}

/// Parses a reply as strict JSON against [`proposal_schema`] and its limits. No fences, no prose
/// around the JSON; anything else is [`LlmError::InvalidReply`] with the reason.
pub fn parse_proposal(text: &str) -> Result<Proposal, LlmError> {
    if text.len() > MAX_REPLY_BYTES {
        return Err(invalid(format!(
            "reply is {} bytes, more than the {MAX_REPLY_BYTES} allowed",
            text.len()
        )));
    }
    let wire: WireProposal = serde_json::from_str(text)
        .map_err(|e| invalid(format!("reply does not match the proposal schema: {e}")))?;
    check_summary(&wire.summary)?;
    check_category(&wire.category)?;
    check_changes(&wire.changes)?;
    Ok(Proposal {
        summary: wire.summary,
        category: wire.category,
        changes: wire
            .changes
            .into_iter()
            .map(|c| FieldChange {
                field: c.field,
                value: c.value,
            })
            .collect(),
    })
}

fn invalid(reason: String) -> LlmError {
    LlmError::InvalidReply(clip(&reason))
}

fn check_summary(summary: &str) -> Result<(), LlmError> {
    if summary.trim().is_empty() {
        return Err(invalid("summary is empty".into()));
    }
    let chars = summary.chars().count();
    if chars > MAX_SUMMARY_CHARS {
        return Err(invalid(format!(
            "summary has {chars} characters, more than {MAX_SUMMARY_CHARS}"
        )));
    }
    Ok(())
}

fn check_category(category: &str) -> Result<(), LlmError> {
    let chars = category.chars().count();
    if chars > MAX_CATEGORY_CHARS {
        return Err(invalid(format!(
            "category has {chars} characters, more than {MAX_CATEGORY_CHARS}"
        )));
    }
    Ok(())
}

fn check_changes(changes: &[WireChange]) -> Result<(), LlmError> {
    if changes.len() > MAX_CHANGES {
        return Err(invalid(format!(
            "{} changes proposed, more than {MAX_CHANGES}",
            changes.len()
        )));
    }
    let mut seen = HashSet::new();
    for change in changes {
        if !is_field_name(&change.field) {
            return Err(invalid(format!(
                "field name {:?} is not 1-{MAX_FIELD_CHARS} of a-z 0-9 _ \
                 starting with a letter or _",
                change.field
            )));
        }
        let chars = change.value.chars().count();
        if chars > MAX_VALUE_CHARS {
            return Err(invalid(format!(
                "value for {} has {chars} characters, more than {MAX_VALUE_CHARS}",
                change.field
            )));
        }
        if !seen.insert(change.field.as_str()) {
            return Err(invalid(format!("field {} is changed twice", change.field)));
        }
    }
    Ok(())
}

/// `^[a-z_][a-z0-9_]{0,79}$`.
fn is_field_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    match bytes.split_first() {
        Some((first, rest)) => {
            bytes.len() <= MAX_FIELD_CHARS
                && (first.is_ascii_lowercase() || *first == b'_')
                && rest
                    .iter()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_')
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reply(changes: Value) -> String {
        json!({"summary": "Mail is down for the Berlin office", "category": "email",
               "changes": changes})
        .to_string()
    }

    fn reason(text: &str) -> String {
        match parse_proposal(text) {
            Err(LlmError::InvalidReply(reason)) => reason,
            other => panic!("expected InvalidReply, got {other:?}"),
        }
    }

    #[test]
    fn a_valid_reply_becomes_a_proposal() {
        let text = reply(json!([{"field": "urgency", "value": "1"},
                                {"field": "assignment_group", "value": "8a4dde73c6112278017a6a4baf547aa7"}]));
        let proposal = parse_proposal(&text).unwrap();
        assert_eq!(proposal.summary, "Mail is down for the Berlin office");
        assert_eq!(proposal.category, "email");
        assert_eq!(
            proposal.changes,
            vec![
                FieldChange {
                    field: "urgency".into(),
                    value: "1".into()
                },
                FieldChange {
                    field: "assignment_group".into(),
                    value: "8a4dde73c6112278017a6a4baf547aa7".into()
                },
            ]
        );
    }

    #[test]
    fn no_changes_is_a_valid_proposal() {
        assert!(
            parse_proposal(&reply(json!([])))
                .unwrap()
                .changes
                .is_empty()
        );
    }

    #[test]
    fn unknown_properties_are_refused_at_every_level() {
        let top = json!({"summary": "s", "category": "c", "changes": [], "close": "INC0000999"});
        assert!(reason(&top.to_string()).contains("unknown field"));
        let inner = reply(json!([{"field": "urgency", "value": "1", "sys_id": "x"}]));
        assert!(reason(&inner).contains("unknown field"));
    }

    #[test]
    fn missing_properties_are_refused() {
        assert!(reason(r#"{"summary":"s","changes":[]}"#).contains("missing field `category`"));
        assert!(reason(&reply(json!([{"field": "urgency"}]))).contains("missing field `value`"));
    }

    #[test]
    fn wrong_types_and_non_json_are_refused() {
        reason(&reply(json!([{"field": "urgency", "value": 1}])));
        reason(r#"{"summary":"s","category":"c","changes":{}}"#);
        reason("Sure! Here is the proposal: {}");
        reason("```json\n{\"summary\":\"s\",\"category\":\"c\",\"changes\":[]}\n```");
        reason("");
        reason("null");
        reason(r#"{"summary":"s","category":"c","changes":[]} trailing"#);
    }

    #[test]
    fn a_repeated_json_key_is_refused() {
        reason(r#"{"summary":"a","summary":"b","category":"c","changes":[]}"#);
    }

    #[test]
    fn more_than_twenty_changes_are_refused() {
        let changes: Vec<Value> = (0..21)
            .map(|i| json!({"field": format!("f{i}"), "value": "x"}))
            .collect();
        assert!(reason(&reply(Value::Array(changes))).contains("21 changes"));
        let twenty: Vec<Value> = (0..20)
            .map(|i| json!({"field": format!("f{i}"), "value": "x"}))
            .collect();
        assert_eq!(
            parse_proposal(&reply(Value::Array(twenty)))
                .unwrap()
                .changes
                .len(),
            20
        );
    }

    #[test]
    fn bad_field_names_are_refused() {
        let long = "a".repeat(81);
        for bad in [
            "",
            "Urgency",
            "1field",
            "state^ORactive=true",
            "a-b",
            "é",
            long.as_str(),
        ] {
            let text = reply(json!([{"field": bad, "value": "1"}]));
            assert!(reason(&text).contains("field name"), "{bad}");
        }
        let longest = "a".repeat(80);
        for good in ["_x", "u_custom_1", longest.as_str()] {
            assert!(parse_proposal(&reply(json!([{"field": good, "value": "1"}]))).is_ok());
        }
    }

    #[test]
    fn a_field_changed_twice_is_refused() {
        let text = reply(json!([{"field": "urgency", "value": "1"},
                                {"field": "urgency", "value": "2"}]));
        assert!(reason(&text).contains("changed twice"));
    }

    #[test]
    fn oversized_parts_are_refused() {
        let huge_value = reply(json!([{"field": "work_notes", "value": "x".repeat(4001)}]));
        assert!(reason(&huge_value).contains("4001 characters"));
        let at_limit = reply(json!([{"field": "work_notes", "value": "é".repeat(4000)}]));
        assert!(parse_proposal(&at_limit).is_ok());
        let summary = json!({"summary": "s".repeat(2001), "category": "c", "changes": []});
        assert!(reason(&summary.to_string()).contains("summary"));
        let category = json!({"summary": "s", "category": "c".repeat(101), "changes": []});
        assert!(reason(&category.to_string()).contains("category"));
        let blank = json!({"summary": "  \n", "category": "c", "changes": []});
        assert!(reason(&blank.to_string()).contains("summary is empty"));
    }

    #[test]
    fn replies_over_64_kib_are_refused_before_parsing() {
        let padded = format!("{}{}", reply(json!([])), " ".repeat(64 * 1024));
        assert!(reason(&padded).contains("bytes"));
    }

    #[test]
    fn reasons_are_clipped_even_when_the_model_invents_long_names() {
        let name = "x".repeat(5000);
        let text = format!(r#"{{"summary":"s","category":"c","changes":[],"{name}":1}}"#);
        assert!(reason(&text).chars().count() <= 301);
    }

    #[test]
    fn the_schema_is_strict_everywhere() {
        let schema = proposal_schema();
        assert_eq!(schema["additionalProperties"], false);
        assert_eq!(
            schema["required"],
            json!(["summary", "category", "changes"])
        );
        let item = &schema["properties"]["changes"]["items"];
        assert_eq!(item["additionalProperties"], false);
        assert_eq!(item["required"], json!(["field", "value"]));
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in ".{0,300}") {
            let _ = parse_proposal(&text);
        }

        #[test]
        fn valid_field_names_are_accepted(name in "[a-z_][a-z0-9_]{0,79}") {
            prop_assert!(is_field_name(&name));
        }

        #[test]
        fn names_with_other_characters_are_refused(
            head in "[a-z_]{0,5}", bad in "[^a-z0-9_]", tail in "[a-z_]{0,5}"
        ) {
            let name = format!("{head}{bad}{tail}");
            prop_assert!(!is_field_name(&name));
        }
    }
}
