//! Slack on loopback: the Web API methods Steward calls, answering like Slack does, and the
//! `block_actions` callbacks a person's click makes, built from the message Steward posted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

/// The bot token the tenant is configured with; the mock refuses any other.
pub const BOT_TOKEN: &str = "xoxb-e2e-0000000000-steward";
/// The workspace (team) id clicks come from.
pub const TEAM_ID: &str = "T0E2ESTEWD";

/// Someone who clicks a button.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Person {
    /// Slack user id.
    pub id: &'static str,
    /// Slack username.
    pub name: &'static str,
}

/// The approver every tenant of the harness lists.
pub const APPROVER: Person = Person {
    id: "U0APPROVER1",
    name: "ana.lima",
};

/// A second approver, for the two-person rule.
pub const SECOND_APPROVER: Person = Person {
    id: "U0APPROVER2",
    name: "bruno.costa",
};

/// A network lead: in no approver list, only in the tenant's `network-leads` group.
pub const NETWORK_LEAD: Person = Person {
    id: "U0NETLEAD01",
    name: "nadia.okafor",
};

/// Someone who may not decide anything.
pub const OUTSIDER: Person = Person {
    id: "U0OUTSIDER9",
    name: "mallory",
};

/// An approval request as Steward posted it.
#[derive(Debug, Clone)]
pub struct PostedMessage {
    /// The channel it went to.
    pub channel: String,
    /// The `ts` the mock answered with.
    pub ts: String,
    /// The fallback text.
    pub text: String,
    /// The Block Kit blocks.
    pub blocks: Value,
}

impl PostedMessage {
    /// The `value` of the button with `action_id`; panics if the message has no such button.
    pub fn button_value(&self, action_id: &str) -> String {
        self.button(action_id)["value"]
            .as_str()
            .unwrap_or_else(|| panic!("the {action_id} button carries no value"))
            .to_owned()
    }

    /// The button with `action_id`, in an `actions` block or as a section's accessory.
    pub fn button(&self, action_id: &str) -> &Value {
        self.blocks
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|b| {
                let elements = b["elements"].as_array().into_iter().flatten();
                elements.chain(std::iter::once(&b["accessory"]))
            })
            .find(|e| e["action_id"] == action_id)
            .unwrap_or_else(|| panic!("the message has no {action_id} button: {}", self.blocks))
    }
}

/// The mock Web API.
pub struct SlackMock {
    server: MockServer,
    posted: Posted,
    post_delay_ms: Arc<AtomicU64>,
}

/// The messages posted, as answered, in the order they were answered.
type Posted = Arc<Mutex<Vec<PostedMessage>>>;

impl SlackMock {
    /// Starts the Web API with `chat.postMessage`, `chat.update` and `chat.postEphemeral`.
    pub async fn start() -> Self {
        let server = MockServer::start().await;
        let posted = Posted::default();
        let post_delay_ms = Arc::new(AtomicU64::new(0));
        let bearer = format!("Bearer {BOT_TOKEN}");
        for (api_method, answer) in [
            ("chat.postMessage", Answer::Posted),
            ("chat.update", Answer::Updated),
            ("chat.postEphemeral", Answer::Ephemeral),
        ] {
            Mock::given(method("POST"))
                .and(path(format!("/api/{api_method}")))
                .and(header("authorization", bearer.as_str()))
                .respond_with(WebApi {
                    answer,
                    posted: Arc::clone(&posted),
                    post_delay_ms: Arc::clone(&post_delay_ms),
                })
                .mount(&server)
                .await;
        }
        Self {
            server,
            posted,
            post_delay_ms,
        }
    }

    /// From now on, `chat.postMessage` shows the message at once (it is in [`Self::posted`])
    /// but answers the caller only after `delay`, as a slow network would.
    pub fn slow_posts(&self, delay: Duration) {
        let millis = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.post_delay_ms.store(millis, Ordering::SeqCst);
    }

    /// From now on, every `chat.postMessage` is answered with `answer` (an error, say).
    pub async fn answer_posts_with(&self, answer: ResponseTemplate) {
        Mock::given(method("POST"))
            .and(path("/api/chat.postMessage"))
            .respond_with(answer)
            .with_priority(1)
            .mount(&self.server)
            .await;
    }

    /// The Web API base URL, as a tenant's `api_base`.
    pub fn api_base(&self) -> String {
        format!("{}/api/", self.server.uri())
    }

    /// A `response_url` on this mock, so a click carries one that points nowhere else.
    pub fn response_url(&self) -> String {
        format!("{}/actions/{TEAM_ID}/1/e2e", self.server.uri())
    }

    /// Every request received, in order.
    pub async fn requests(&self) -> Vec<Request> {
        self.server.received_requests().await.unwrap_or_default()
    }

    /// The JSON arguments of every call to `api_method` (such as `chat.update`), in order.
    pub async fn calls(&self, api_method: &str) -> Vec<Value> {
        let wanted = format!("/api/{api_method}");
        self.requests()
            .await
            .iter()
            .filter(|r| r.url.path() == wanted)
            .map(|r| {
                r.body_json::<Value>()
                    .unwrap_or_else(|e| panic!("{api_method} arguments are not JSON: {e}"))
            })
            .collect()
    }

    /// The approval requests posted so far, with the `ts` each was answered with.
    pub fn posted(&self) -> Vec<PostedMessage> {
        lock(&self.posted).clone()
    }
}

fn lock(posted: &Posted) -> std::sync::MutexGuard<'_, Vec<PostedMessage>> {
    posted
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[derive(Debug, Clone, Copy)]
enum Answer {
    Posted,
    Updated,
    Ephemeral,
}

/// Answers one Web API method the way Slack does, echoing the channel it was given.
struct WebApi {
    answer: Answer,
    posted: Posted,
    post_delay_ms: Arc<AtomicU64>,
}

impl Respond for WebApi {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let Ok(args) = request.body_json::<Value>() else {
            return ok_false("invalid_form_data");
        };
        let Some(channel) = args["channel"].as_str().filter(|c| !c.is_empty()) else {
            return ok_false("channel_not_found");
        };
        let body = match self.answer {
            Answer::Posted => {
                let mut posted = lock(&self.posted);
                let ts = format!("1700000000.{:06}", posted.len() + 1);
                posted.push(PostedMessage {
                    channel: channel.to_owned(),
                    ts: ts.clone(),
                    text: args["text"].as_str().unwrap_or_default().to_owned(),
                    blocks: args["blocks"].clone(),
                });
                let delay = Duration::from_millis(self.post_delay_ms.load(Ordering::SeqCst));
                let body = json!({"ok": true, "channel": channel, "ts": ts, "message": {
                    "type": "message", "subtype": "bot_message", "bot_id": "B0E2ESTEWD",
                    "text": args["text"], "ts": ts,
                }});
                return ResponseTemplate::new(200)
                    .set_body_json(body)
                    .set_delay(delay);
            }
            Answer::Updated => json!({
                "ok": true, "channel": channel, "ts": args["ts"], "text": args["text"],
            }),
            Answer::Ephemeral => json!({"ok": true, "message_ts": "1700000099.000100"}),
        };
        ResponseTemplate::new(200).set_body_json(body)
    }
}

fn ok_false(code: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({"ok": false, "error": code}))
}

/// The `block_actions` payload Slack sends when `who` clicks the button `action_id` of
/// `message`, with the button's own value.
pub fn block_actions(
    message: &PostedMessage,
    action_id: &str,
    who: Person,
    response_url: &str,
) -> Value {
    let button = message.button(action_id);
    json!({
        "type": "block_actions",
        "user": {"id": who.id, "username": who.name, "name": who.name, "team_id": TEAM_ID},
        "api_app_id": "A0E2ESTEWD",
        "token": "e2e-legacy-verification-token",
        "container": {
            "type": "message", "message_ts": message.ts,
            "channel_id": message.channel, "is_ephemeral": false,
        },
        "trigger_id": "1700000000.000000.e2e",
        "team": {"id": TEAM_ID, "domain": "steward-e2e"},
        "channel": {"id": message.channel, "name": "incident-approvals"},
        "message": {
            "type": "message", "ts": message.ts, "text": message.text, "blocks": message.blocks,
        },
        "response_url": response_url,
        "actions": [{
            "action_id": action_id,
            "block_id": "steward_decision",
            "text": button["text"],
            "value": button["value"],
            "type": "button",
            "action_ts": "1700000001.000001",
        }],
    })
}

/// A payload as the form body Slack posts: `payload=` and the URL-encoded JSON.
pub fn form_body(payload: &Value) -> Vec<u8> {
    form_urlencoded::Serializer::new(String::new())
        .append_pair("payload", &payload.to_string())
        .finish()
        .into_bytes()
}
