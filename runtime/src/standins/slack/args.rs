//! Web API arguments as Slack reads them: a JSON object (`application/json`), or form fields
//! (`application/x-www-form-urlencoded`) whose `blocks` and `attachments` carry JSON text.

use axum::http::HeaderMap;
use serde_json::{Map, Value};

use super::SlackError;
use crate::standins::support;

/// Decoded arguments of one call.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Args {
    pub(super) fields: Map<String, Value>,
    /// Form bodies may carry the token as an argument; JSON bodies may not.
    pub(super) form: bool,
    /// A JSON body without `charset`, which Slack accepts with a warning.
    pub(super) missing_charset: bool,
}

/// Decodes a body by its `Content-Type`. An empty body has no arguments whatever its type.
pub(super) fn decode(headers: &HeaderMap, body: &[u8]) -> Result<Args, SlackError> {
    if body.is_empty() {
        return Ok(Args::default());
    }
    match support::media_type(headers).as_deref() {
        Some("application/json") => Ok(Args {
            fields: json_fields(body)?,
            form: false,
            missing_charset: !support::has_charset(headers),
        }),
        Some("application/x-www-form-urlencoded") => Ok(Args {
            fields: form_fields(body)?,
            form: true,
            missing_charset: false,
        }),
        _ => Err(SlackError::InvalidPostType),
    }
}

fn json_fields(body: &[u8]) -> Result<Map<String, Value>, SlackError> {
    let value: Value = serde_json::from_slice(body).map_err(|_| SlackError::InvalidJson)?;
    let Value::Object(mut fields) = value else {
        return Err(SlackError::JsonNotObject);
    };
    parse_embedded(&mut fields)?;
    Ok(fields)
}

fn form_fields(body: &[u8]) -> Result<Map<String, Value>, SlackError> {
    let mut fields: Map<String, Value> = form_urlencoded::parse(body)
        .map(|(name, value)| (name.into_owned(), Value::String(value.into_owned())))
        .collect();
    parse_embedded(&mut fields)?;
    Ok(fields)
}

/// `blocks` and `attachments` given as JSON text become JSON; both must be arrays.
fn parse_embedded(fields: &mut Map<String, Value>) -> Result<(), SlackError> {
    for (name, error) in [
        ("blocks", SlackError::InvalidBlocks),
        ("attachments", SlackError::InvalidAttachments),
    ] {
        let Some(value) = fields.get_mut(name) else {
            continue;
        };
        if let Value::String(text) = value {
            *value = serde_json::from_str(text).map_err(|_| error.clone())?;
        }
        if !value.is_array() {
            return Err(error);
        }
    }
    Ok(())
}

// === impl Args ===

impl Args {
    /// A string argument; numbers and booleans are taken as their text, `null` as absent.
    pub(super) fn string(&self, name: &str) -> Result<Option<String>, SlackError> {
        match self.fields.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) => Ok(Some(text.clone())),
            Some(Value::Number(number)) => Ok(Some(number.to_string())),
            Some(Value::Bool(flag)) => Ok(Some(flag.to_string())),
            Some(_) => Err(SlackError::InvalidArguments),
        }
    }

    /// A string argument that must be present and non-empty.
    pub(super) fn non_empty(&self, name: &str) -> Result<Option<String>, SlackError> {
        Ok(self.string(name)?.filter(|text| !text.is_empty()))
    }

    /// The blocks, validated as Slack's layout requires: at most 50 objects, each with a
    /// string `type`.
    pub(super) fn blocks(&self) -> Result<Option<Vec<Value>>, SlackError> {
        let Some(Value::Array(blocks)) = self.fields.get("blocks") else {
            return Ok(None);
        };
        let well_formed = blocks.len() <= 50
            && blocks
                .iter()
                .all(|block| block.get("type").is_some_and(Value::is_string));
        if well_formed {
            Ok(Some(blocks.clone()))
        } else {
            Err(SlackError::InvalidBlocks)
        }
    }

    /// Whether non-empty attachments were given.
    pub(super) fn has_attachments(&self) -> bool {
        matches!(self.fields.get("attachments"), Some(Value::Array(list)) if !list.is_empty())
    }

    /// The arguments as a JSON object, without any `token`.
    pub(super) fn recorded(&self) -> Value {
        let mut fields = self.fields.clone();
        fields.remove("token");
        Value::Object(fields)
    }
}

#[cfg(test)]
mod tests {
    use axum::http::header;
    use serde_json::json;

    use super::*;

    fn headers(content_type: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, content_type.parse().unwrap());
        headers
    }

    #[test]
    fn json_bodies_decode_and_note_a_missing_charset() {
        let body = br#"{"channel":"C1","text":"hi","blocks":[{"type":"section"}]}"#;
        let args = decode(&headers("application/json"), body).unwrap();
        assert!(args.missing_charset && !args.form);
        assert_eq!(args.string("text").unwrap().as_deref(), Some("hi"));
        assert_eq!(args.blocks().unwrap().unwrap().len(), 1);
        let args = decode(&headers("application/json; charset=utf-8"), body).unwrap();
        assert!(!args.missing_charset);
    }

    #[test]
    fn form_bodies_carry_blocks_as_json_text() {
        let body = b"channel=C1&token=xoxb-1&blocks=%5B%7B%22type%22%3A%22divider%22%7D%5D";
        let args = decode(&headers("application/x-www-form-urlencoded"), body).unwrap();
        assert!(args.form);
        assert_eq!(args.fields["blocks"], json!([{"type": "divider"}]));
        assert_eq!(
            args.recorded(),
            json!({"channel": "C1", "blocks": [{"type": "divider"}]})
        );
    }

    #[test]
    fn malformed_bodies_get_slack_error_codes() {
        let json = headers("application/json; charset=utf-8");
        let form = headers("application/x-www-form-urlencoded");
        let cases: [(&HeaderMap, &[u8], SlackError); 7] = [
            (&json, b"{\"channel\":", SlackError::InvalidJson),
            (&json, b"[1,2]", SlackError::JsonNotObject),
            (
                &json,
                b"{\"blocks\":\"[not json\"}",
                SlackError::InvalidBlocks,
            ),
            (
                &json,
                b"{\"blocks\":{\"type\":\"x\"}}",
                SlackError::InvalidBlocks,
            ),
            (&form, b"attachments=%7B%7D", SlackError::InvalidAttachments),
            (
                &headers("text/plain"),
                b"channel=C1",
                SlackError::InvalidPostType,
            ),
            (
                &HeaderMap::new(),
                b"channel=C1",
                SlackError::InvalidPostType,
            ),
        ];
        for (headers, body, expected) in cases {
            assert_eq!(decode(headers, body), Err(expected), "{body:?}");
        }
    }

    #[test]
    fn blocks_must_be_typed_objects_and_at_most_fifty() {
        let json = headers("application/json; charset=utf-8");
        let untyped = decode(&json, br#"{"blocks":[{"text":"x"}]}"#).unwrap();
        assert_eq!(untyped.blocks(), Err(SlackError::InvalidBlocks));
        let many = json!({"blocks": vec![json!({"type": "divider"}); 51]}).to_string();
        let many = decode(&json, many.as_bytes()).unwrap();
        assert_eq!(many.blocks(), Err(SlackError::InvalidBlocks));
    }

    #[test]
    fn arguments_of_the_wrong_type_are_refused() {
        let args = decode(
            &headers("application/json; charset=utf-8"),
            br#"{"text":{"a":1},"ts":1503435956.000247,"channel":null}"#,
        )
        .unwrap();
        assert_eq!(args.string("text"), Err(SlackError::InvalidArguments));
        assert_eq!(args.string("channel"), Ok(None));
        assert!(args.string("ts").unwrap().is_some());
    }
}
