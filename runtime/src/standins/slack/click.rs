//! Slack delivering a button click: the `block_actions` payload, its `payload=<json>` form
//! body, and the v0 signature (`v0=` + hex HMAC-SHA256 over `v0:<timestamp>:<body>`, keyed
//! with the signing secret's UTF-8 bytes).

use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use url::{Host, Url};

use super::{APP_ID, ClickUser, Slack, TEAM_DOMAIN, TEAM_ID, message_json};
use crate::standins::SlackMessage;
use crate::standins::support;

/// Why a click could not be delivered.
#[derive(Debug, thiserror::Error)]
pub(in crate::standins) enum ClickError {
    #[error("the message has no button with action_id {0:?}")]
    NoSuchButton(String),
    #[error("no posted message has ts {0:?}")]
    NoSuchMessage(String),
    #[error("the interactions URL {0:?} is not an http(s) URL on a loopback host")]
    NotLoopback(String),
    #[error("could not deliver the click to the interactions URL")]
    Deliver(#[source] reqwest::Error),
}

impl ClickError {
    /// The status the control surface answers with.
    pub(super) fn status(&self) -> StatusCode {
        match self {
            Self::NoSuchButton(_) | Self::NotLoopback(_) => StatusCode::BAD_REQUEST,
            Self::NoSuchMessage(_) => StatusCode::NOT_FOUND,
            Self::Deliver(_) => StatusCode::BAD_GATEWAY,
        }
    }
}

/// A button found in a message's blocks.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Button {
    pub(super) block_id: String,
    pub(super) action_id: String,
    pub(super) value: Option<String>,
    pub(super) text: Value,
}

/// Finds the button with `action_id` in an `actions` block's elements or a block's
/// `accessory`. A block without a `block_id` gets a random one, as Slack assigns.
pub(super) fn find_button(blocks: &Value, action_id: &str) -> Option<Button> {
    blocks.as_array()?.iter().find_map(|block| {
        let elements = block.get("elements").and_then(Value::as_array);
        let element = (elements.into_iter().flatten())
            .chain(block.get("accessory"))
            .find(|element| is_button(element, action_id))?;
        Some(Button {
            block_id: string_field(block, "block_id").unwrap_or_else(|| support::random_alnum(5)),
            action_id: action_id.to_owned(),
            value: string_field(element, "value"),
            text: element
                .get("text")
                .cloned()
                .unwrap_or_else(|| json!({"type": "plain_text", "text": "", "emoji": true})),
        })
    })
}

fn is_button(element: &Value, action_id: &str) -> bool {
    element.get("type").and_then(Value::as_str) == Some("button")
        && element.get("action_id").and_then(Value::as_str) == Some(action_id)
}

fn string_field(value: &Value, name: &str) -> Option<String> {
    value.get(name).and_then(Value::as_str).map(str::to_owned)
}

/// Everything a `block_actions` payload names.
pub(super) struct Delivery<'a> {
    pub(super) message: &'a SlackMessage,
    pub(super) button: &'a Button,
    pub(super) user: ClickUser<'a>,
    pub(super) channel_name: &'a str,
    pub(super) response_url: &'a str,
    pub(super) verification_token: &'a str,
}

/// The `block_actions` payload Slack sends for a click on a (non-ephemeral) message.
pub(super) fn payload(delivery: &Delivery<'_>) -> Value {
    let Delivery {
        message,
        button,
        user,
        ..
    } = delivery;
    let mut action = json!({
        "action_id": button.action_id,
        "block_id": button.block_id,
        "text": button.text,
        "type": "button",
        "action_ts": super::format_ts(support::unix_now_micros()),
    });
    if let Some(value) = &button.value {
        action["value"] = json!(value);
    }
    json!({
        "type": "block_actions",
        "user": {"id": user.id, "username": user.name, "name": user.name, "team_id": TEAM_ID},
        "api_app_id": APP_ID,
        "token": delivery.verification_token,
        "container": {
            "type": "message",
            "message_ts": message.ts,
            "channel_id": message.channel,
            "is_ephemeral": false,
        },
        "trigger_id": trigger_id(),
        "team": {"id": TEAM_ID, "domain": TEAM_DOMAIN},
        "enterprise": null,
        "is_enterprise_install": false,
        "channel": {"id": message.channel, "name": delivery.channel_name},
        "message": message_json(message),
        "state": {"values": {}},
        "response_url": delivery.response_url,
        "actions": [action],
    })
}

/// Like `398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c`.
fn trigger_id() -> String {
    format!(
        "{}.{}.{}",
        support::random_digits(12),
        support::random_digits(11),
        support::random_hex(16)
    )
}

/// The form body Slack posts: exactly one field, `payload`, holding the JSON.
pub(super) fn form_body(payload: &Value) -> String {
    form_urlencoded::Serializer::new(String::new())
        .append_pair("payload", &payload.to_string())
        .finish()
}

/// `v0=` + lowercase hex HMAC-SHA256 of `v0:<timestamp>:<body>`.
pub(super) fn sign(signing_secret: &str, timestamp: &str, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(signing_secret.as_bytes())
        .expect("HMAC-SHA256 takes a key of any length");
    mac.update(format!("v0:{timestamp}:{body}").as_bytes());
    format!("v0={}", hex::encode(mac.finalize().into_bytes()))
}

/// An http(s) URL whose host is loopback (`127.0.0.0/8`, `::1` or `localhost`).
fn loopback_url(raw: &str) -> Result<Url, ClickError> {
    let refuse = || ClickError::NotLoopback(raw.to_owned());
    let url = Url::parse(raw).map_err(|_| refuse())?;
    let loopback = match url.host() {
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        Some(Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
        None => false,
    };
    let web = matches!(url.scheme(), "http" | "https");
    (loopback && web).then_some(url).ok_or_else(refuse)
}

// === impl Slack ===

impl Slack {
    /// Delivers a signed click on `message`'s button `action_id` to `interactions_url`,
    /// returning the endpoint's status and body.
    pub(in crate::standins) async fn click(
        &self,
        interactions_url: &str,
        message: &SlackMessage,
        action_id: &str,
        user: ClickUser<'_>,
    ) -> Result<(u16, String), ClickError> {
        // Check everything before handing out a response_url.
        let url = loopback_url(interactions_url)?;
        let button = find_button(&message.blocks, action_id)
            .ok_or_else(|| ClickError::NoSuchButton(action_id.to_owned()))?;

        // Build and sign the body exactly as it goes on the wire.
        let response_url = self.response_url_for(message);
        let channel_name = self.channel_name(&message.channel);
        let body = form_body(&payload(&Delivery {
            message,
            button: &button,
            user,
            channel_name: &channel_name,
            response_url: &response_url,
            verification_token: &self.verification_token,
        }));
        let timestamp = support::unix_now().to_string();
        let signature = sign(&self.signing_secret, &timestamp, &body);

        // Deliver.
        let response = (self.client.post(url))
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header("X-Slack-Request-Timestamp", &timestamp)
            .header("X-Slack-Signature", signature)
            .body(body)
            .send()
            .await
            .map_err(ClickError::Deliver)?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(ClickError::Deliver)?;
        Ok((status, text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signing_matches_slacks_published_example() {
        let body = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&\
                    channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&\
                    user_name=roadrunner&command=%2Fwebhook-collect&text=&\
                    response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F\
                    397700885554%2F96rGlfmibIGlgcZRskXaIFfN&\
                    trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
        assert_eq!(
            sign("8f742231b10e8888abcd99yyyzzz85a5", "1531420618", body),
            "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"
        );
    }

    #[test]
    fn buttons_are_found_in_actions_blocks_and_accessories() {
        let blocks = json!([
            {"type": "section", "block_id": "s1", "text": {"type": "mrkdwn", "text": "x"},
             "accessory": {"type": "button", "action_id": "details", "value": "d",
                           "text": {"type": "plain_text", "text": "Details"}}},
            {"type": "actions", "block_id": "a1", "elements": [
                {"type": "static_select", "action_id": "approve"},
                {"type": "button", "action_id": "approve", "value": "v-1",
                 "text": {"type": "plain_text", "text": "Approve"}},
                {"type": "button", "action_id": "reject"}]},
        ]);
        let approve = find_button(&blocks, "approve").unwrap();
        assert_eq!(approve.block_id, "a1");
        assert_eq!(approve.value.as_deref(), Some("v-1"));
        assert_eq!(approve.text["text"], "Approve");
        assert_eq!(find_button(&blocks, "details").unwrap().block_id, "s1");
        let reject = find_button(&blocks, "reject").unwrap();
        assert_eq!(reject.value, None);
        assert_eq!(find_button(&blocks, "missing"), None);
        assert_eq!(find_button(&json!({"type": "actions"}), "approve"), None);
    }

    #[test]
    fn blocks_without_an_id_get_one() {
        let blocks = json!([{"type": "actions", "elements": [
            {"type": "button", "action_id": "go", "value": "1"}]}]);
        let button = find_button(&blocks, "go").unwrap();
        assert_eq!(button.block_id.len(), 5);
    }

    #[test]
    fn only_loopback_web_urls_are_accepted() {
        for ok in [
            "http://127.0.0.1:8080/slack/interactions",
            "https://localhost/x",
            "http://[::1]:9/x",
            "http://127.1.2.3/x",
        ] {
            assert!(loopback_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://example.com/x",
            "http://10.0.0.1/x",
            "ftp://127.0.0.1/x",
            "file:///etc/passwd",
            "not a url",
            "http://127.0.0.1.example.com/x",
        ] {
            assert!(loopback_url(bad).is_err(), "{bad}");
        }
    }
}
