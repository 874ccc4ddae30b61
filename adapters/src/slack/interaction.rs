//! `block_actions` interaction payloads: the form body Slack posts when someone clicks a button,
//! with one field, `payload`, holding URL-encoded JSON. Parse only after the signature over the
//! raw form body has been verified.

use serde_json::{Map, Value};

use super::text::line_text;

/// Largest form body accepted. Real click payloads are a few kilobytes.
pub const MAX_INTERACTION_BODY_BYTES: usize = 64 * 1024;

const MAX_ECHOED_TYPE_CHARS: usize = 40;

/// The first action of a `block_actions` payload, with who clicked it and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockAction {
    /// Slack user id of the person who clicked (`user.id`).
    pub user_id: String,
    /// `user.username`, else `user.name`, else the user id: for display only, never for
    /// authorization.
    pub user_name: String,
    /// `team.id`, else `user.team_id`.
    pub team_id: Option<String>,
    /// The `action_id` of the clicked element.
    pub action_id: String,
    /// The `value` of the clicked button; empty for elements that carry none (link buttons,
    /// menus).
    pub value: String,
    /// `channel.id`, else `container.channel_id`.
    pub channel_id: Option<String>,
    /// `container.message_ts`, else `message.ts`: the message the button belongs to.
    pub message_ts: Option<String>,
    /// Where a reply to this interaction may be posted.
    pub response_url: Option<String>,
}

/// Why an interaction body was refused. Messages quote nothing from the body beyond a short,
/// escaped payload type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InteractionError {
    /// The body is not an `application/x-www-form-urlencoded` form (bytes outside printable
    /// ASCII, or a bare JSON document).
    #[error("body is not a url-encoded form")]
    NotForm,
    /// The form has no `payload` field.
    #[error("form has no payload field")]
    NoPayload,
    /// The form has more than one `payload` field; which one was signed for what is ambiguous,
    /// so neither is used.
    #[error("form has more than one payload field")]
    DuplicatePayload,
    /// The payload is not JSON, or lacks a field every click carries.
    #[error("payload is not a usable interaction: {0}")]
    BadJson(String),
    /// The payload is an interaction of another type (escaped, at most 40 characters).
    #[error("interaction type {0} is not block_actions")]
    NotBlockActions(String),
    /// The payload's `actions` list is missing or empty.
    #[error("payload carries no action")]
    NoAction,
    /// The body is larger than [`MAX_INTERACTION_BODY_BYTES`].
    #[error("body is larger than {MAX_INTERACTION_BODY_BYTES} bytes")]
    TooLarge,
}

/// Parses a `block_actions` form body and returns its first action.
pub fn parse_block_actions(form_body: &[u8]) -> Result<BlockAction, InteractionError> {
    let payload = payload_field(form_body)?;
    let root = parse_object(&payload)?;
    check_type(&root)?;
    let action = first_action(&root)?;
    let user = root
        .get("user")
        .and_then(Value::as_object)
        .ok_or_else(|| bad("user is missing or not an object"))?;
    let user_id = required(user, "id", "user.id")?;
    let user_name = str_field(user, "username")
        .or_else(|| str_field(user, "name"))
        .unwrap_or(&user_id)
        .to_owned();
    Ok(BlockAction {
        team_id: nested(&root, "team", "id")
            .or_else(|| str_field(user, "team_id").map(str::to_owned)),
        user_name,
        user_id,
        action_id: required(action, "action_id", "actions[0].action_id")?,
        value: optional(action, "value", "actions[0].value")?,
        channel_id: nested(&root, "channel", "id")
            .or_else(|| nested(&root, "container", "channel_id")),
        message_ts: nested(&root, "container", "message_ts")
            .or_else(|| nested(&root, "message", "ts")),
        response_url: str_field(&root, "response_url").map(str::to_owned),
    })
}

fn bad(what: &str) -> InteractionError {
    InteractionError::BadJson(what.to_owned())
}

/// The decoded `payload` field of the form, which must occur exactly once.
fn payload_field(form_body: &[u8]) -> Result<String, InteractionError> {
    if form_body.len() > MAX_INTERACTION_BODY_BYTES {
        return Err(InteractionError::TooLarge);
    }
    let printable = form_body.iter().all(|b| b.is_ascii_graphic());
    if !printable || form_body.first() == Some(&b'{') {
        return Err(InteractionError::NotForm);
    }
    let mut payloads = form_urlencoded::parse(form_body)
        .filter(|(name, _)| name == "payload")
        .map(|(_, value)| value);
    let first = payloads.next().ok_or(InteractionError::NoPayload)?;
    if payloads.next().is_some() {
        return Err(InteractionError::DuplicatePayload);
    }
    Ok(first.into_owned())
}

fn parse_object(payload: &str) -> Result<Map<String, Value>, InteractionError> {
    match serde_json::from_str::<Value>(payload) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(bad("payload is not a JSON object")),
        Err(e) => {
            let kind = match e.classify() {
                serde_json::error::Category::Eof => "truncated JSON",
                _ => "invalid JSON",
            };
            Err(InteractionError::BadJson(format!(
                "{kind} at line {} column {}",
                e.line(),
                e.column()
            )))
        }
    }
}

fn check_type(root: &Map<String, Value>) -> Result<(), InteractionError> {
    let kind = str_field(root, "type").ok_or_else(|| bad("type is missing or not a string"))?;
    if kind == "block_actions" {
        return Ok(());
    }
    let shown: String = line_text(kind)
        .chars()
        .take(MAX_ECHOED_TYPE_CHARS)
        .collect();
    Err(InteractionError::NotBlockActions(shown))
}

fn first_action(root: &Map<String, Value>) -> Result<&Map<String, Value>, InteractionError> {
    let actions = match root.get("actions") {
        None | Some(Value::Null) => return Err(InteractionError::NoAction),
        Some(Value::Array(actions)) => actions,
        Some(_) => return Err(bad("actions is not a list")),
    };
    let first = actions.first().ok_or(InteractionError::NoAction)?;
    first
        .as_object()
        .ok_or_else(|| bad("actions[0] is not an object"))
}

fn str_field<'a>(object: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    object.get(key).and_then(Value::as_str)
}

fn nested(root: &Map<String, Value>, outer: &str, inner: &str) -> Option<String> {
    root.get(outer)
        .and_then(Value::as_object)
        .and_then(|object| str_field(object, inner))
        .map(str::to_owned)
}

fn required(
    object: &Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<String, InteractionError> {
    match str_field(object, key) {
        Some(value) if !value.is_empty() => Ok(value.to_owned()),
        _ => Err(InteractionError::BadJson(format!(
            "{path} is missing, empty or not a string"
        ))),
    }
}

fn optional(
    object: &Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<String, InteractionError> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(value)) => Ok(value.clone()),
        Some(_) => Err(InteractionError::BadJson(format!("{path} is not a string"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bolt_example() -> Value {
        json!({"type":"block_actions",
            "user":{"id":"W111","username":"primary-owner","name":"primary-owner","team_id":"T111"},
            "api_app_id":"A111","token":"verification_token",
            "container":{"type":"message","message_ts":"111.222","channel_id":"C111","is_ephemeral":true},
            "trigger_id":"111.222.valid",
            "team":{"id":"T111","domain":"workspace-domain","enterprise_id":"E111","enterprise_name":"Sandbox Org"},
            "channel":{"id":"C111","name":"test-channel"},
            "response_url":"https://hooks.slack.com/actions/T111/111/random-value",
            "actions":[{"action_id":"a","block_id":"b","text":{"type":"plain_text","text":"Button","emoji":true},
                        "value":"click_me_123","type":"button","action_ts":"1596530385.194939"}]})
    }

    fn form(payload: &str) -> Vec<u8> {
        form_urlencoded::Serializer::new(String::new())
            .append_pair("payload", payload)
            .finish()
            .into_bytes()
    }

    fn pretty_form(value: &Value) -> Vec<u8> {
        form(&serde_json::to_string_pretty(value).expect("serializes"))
    }

    #[test]
    fn bolts_example_payload_parses() {
        let body = pretty_form(&bolt_example());
        let text = String::from_utf8(body.clone()).expect("ascii");
        assert!(text.contains('+') && text.contains("%22"), "{text:.80}");
        assert_eq!(
            parse_block_actions(&body),
            Ok(BlockAction {
                user_id: "W111".into(),
                user_name: "primary-owner".into(),
                team_id: Some("T111".into()),
                action_id: "a".into(),
                value: "click_me_123".into(),
                channel_id: Some("C111".into()),
                message_ts: Some("111.222".into()),
                response_url: Some("https://hooks.slack.com/actions/T111/111/random-value".into()),
            })
        );
    }

    #[test]
    fn plus_and_percent_escapes_decode_as_in_a_form() {
        let body = concat!(
            "payload=%7B%22type%22%3A%22block_actions%22%2C%22user%22%3A%7B%22id%22%3A%22U1%22%2C",
            "%22name%22%3A%22Ada+Lovelace%22%7D%2C%22actions%22%3A%5B%7B%22action_id%22%3A",
            "%22steward_approve%22%2C%22value%22%3A%22apr%2B1%22%7D%5D%7D"
        );
        let action = parse_block_actions(body.as_bytes()).expect("parses");
        assert_eq!(action.user_name, "Ada Lovelace");
        assert_eq!(action.value, "apr+1");
        assert_eq!(action.team_id, None);
        assert_eq!(action.channel_id, None);
        assert_eq!(action.message_ts, None);
    }

    #[test]
    fn fallbacks_are_used_when_the_first_choice_is_absent() {
        let mut value = bolt_example();
        let root = value.as_object_mut().expect("object");
        root.remove("channel");
        root.remove("team");
        root["container"] = json!({"type":"message","channel_id":"C222"});
        root.insert("message".into(), json!({"ts":"333.444"}));
        root["user"] = json!({"id":"U9","name":"nine","team_id":"T9"});
        let action = parse_block_actions(&pretty_form(&value)).expect("parses");
        assert_eq!(action.channel_id.as_deref(), Some("C222"));
        assert_eq!(action.message_ts.as_deref(), Some("333.444"));
        assert_eq!(action.team_id.as_deref(), Some("T9"));
        assert_eq!(action.user_name, "nine");
    }

    #[test]
    fn an_element_without_a_value_parses_with_an_empty_value() {
        let mut value = bolt_example();
        value["actions"] = json!([{"action_id":"steward_open_incident","type":"button",
                                   "url":"https://example.com/incident"}]);
        let action = parse_block_actions(&pretty_form(&value)).expect("parses");
        assert_eq!(action.action_id, "steward_open_incident");
        assert_eq!(action.value, "");
    }

    #[test]
    fn the_first_of_several_actions_is_used() {
        let mut value = bolt_example();
        value["actions"] =
            json!([{"action_id":"first","value":"1"},{"action_id":"second","value":"2"}]);
        let action = parse_block_actions(&pretty_form(&value)).expect("parses");
        assert_eq!(
            (action.action_id.as_str(), action.value.as_str()),
            ("first", "1")
        );
    }

    #[test]
    fn a_form_without_payload_is_refused() {
        assert_eq!(
            parse_block_actions(b"foo=bar&x=1"),
            Err(InteractionError::NoPayload)
        );
        assert_eq!(parse_block_actions(b""), Err(InteractionError::NoPayload));
        assert_eq!(
            parse_block_actions(b"Payload=%7B%7D"),
            Err(InteractionError::NoPayload)
        );
    }

    #[test]
    fn two_payload_fields_are_refused_as_ambiguous() {
        let one = String::from_utf8(pretty_form(&bolt_example())).expect("ascii");
        let body = format!("{one}&{one}");
        assert_eq!(
            parse_block_actions(body.as_bytes()),
            Err(InteractionError::DuplicatePayload)
        );
    }

    #[test]
    fn bodies_that_are_not_forms_are_refused() {
        let json_body = serde_json::to_vec(&bolt_example()).expect("serializes");
        assert_eq!(
            parse_block_actions(&json_body),
            Err(InteractionError::NotForm)
        );
        assert_eq!(
            parse_block_actions("payload=é".as_bytes()),
            Err(InteractionError::NotForm)
        );
        assert_eq!(
            parse_block_actions(b"payload=a b"),
            Err(InteractionError::NotForm)
        );
        assert_eq!(
            parse_block_actions(b"payload=\0"),
            Err(InteractionError::NotForm)
        );
    }

    #[test]
    fn oversized_bodies_are_refused_before_parsing() {
        let mut body = form(&"x".repeat(MAX_INTERACTION_BODY_BYTES));
        assert_eq!(parse_block_actions(&body), Err(InteractionError::TooLarge));
        body.truncate(MAX_INTERACTION_BODY_BYTES);
        assert!(matches!(
            parse_block_actions(&body),
            Err(InteractionError::BadJson(_))
        ));
    }

    #[test]
    fn payloads_that_are_not_json_objects_are_refused() {
        for payload in [
            "not json",
            "{\"type\":",
            "[1,2]",
            "\"block_actions\"",
            "%ZZ",
            "",
        ] {
            let err = parse_block_actions(&form(payload)).unwrap_err();
            assert!(
                matches!(err, InteractionError::BadJson(_)),
                "{payload:?}: {err:?}"
            );
        }
    }

    #[test]
    fn deeply_nested_json_is_refused_without_overflowing() {
        let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
        let err = parse_block_actions(&form(&deep)).unwrap_err();
        assert!(matches!(err, InteractionError::BadJson(_)));
    }

    #[test]
    fn json_errors_do_not_echo_the_payload() {
        let err = parse_block_actions(&form("{\"type\": <script>alert(1)</script>")).unwrap_err();
        assert!(!err.to_string().contains("script"), "{err}");
    }

    #[test]
    fn other_interaction_types_are_named_escaped_and_short() {
        let mut value = bolt_example();
        value["type"] = json!("view_submission");
        assert_eq!(
            parse_block_actions(&pretty_form(&value)),
            Err(InteractionError::NotBlockActions("view_submission".into()))
        );
        value["type"] = json!(format!("evil\n\u{202E}{}", "x".repeat(500)));
        let Err(InteractionError::NotBlockActions(shown)) =
            parse_block_actions(&pretty_form(&value))
        else {
            panic!("expected NotBlockActions");
        };
        assert!(shown.chars().count() <= MAX_ECHOED_TYPE_CHARS);
        assert!(shown.starts_with("evil\\n\\u{202e}"), "{shown}");
        value["type"] = json!(7);
        assert!(matches!(
            parse_block_actions(&pretty_form(&value)),
            Err(InteractionError::BadJson(_))
        ));
    }

    #[test]
    fn missing_or_empty_actions_are_no_action() {
        let mut value = bolt_example();
        value["actions"] = json!([]);
        assert_eq!(
            parse_block_actions(&pretty_form(&value)),
            Err(InteractionError::NoAction)
        );
        value.as_object_mut().expect("object").remove("actions");
        assert_eq!(
            parse_block_actions(&pretty_form(&value)),
            Err(InteractionError::NoAction)
        );
        value["actions"] = json!("a");
        assert!(matches!(
            parse_block_actions(&pretty_form(&value)),
            Err(InteractionError::BadJson(_))
        ));
    }

    #[test]
    fn required_fields_of_wrong_shape_are_refused() {
        let cases: [(&str, Value); 6] = [
            ("/user", json!(null)),
            ("/user/id", json!(42)),
            ("/user/id", json!("")),
            ("/actions/0/action_id", json!(null)),
            ("/actions/0/value", json!({"nested": true})),
            ("/actions/0", json!("button")),
        ];
        for (pointer, replacement) in cases {
            let mut value = bolt_example();
            *value.pointer_mut(pointer).expect("pointer exists") = replacement;
            let err = parse_block_actions(&pretty_form(&value)).unwrap_err();
            assert!(
                matches!(err, InteractionError::BadJson(_)),
                "{pointer}: {err:?}"
            );
        }
    }
}
