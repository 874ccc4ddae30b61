//! The Slack Web API methods Steward calls (`chat.postMessage`, `chat.update`,
//! `chat.postEphemeral`, `auth.test`) under `/api/`, with Slack's HTTP-200 `ok:false` errors,
//! plus the `response_url`s handed out in clicks and the click itself: a signed
//! `block_actions` delivery to Steward's interactions endpoint.

mod args;
mod click;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use self::args::Args;
use self::click::ClickError;
use super::support::{self, BODY_LIMIT, BodyError};
use super::{Counters, SlackMessage};

/// The workspace the stand-in pretends to be.
const TEAM_ID: &str = "T04STEWRD1";
const TEAM_DOMAIN: &str = "steward-demo";
const APP_ID: &str = "A04STEWRD1";
const BOT_ID: &str = "B04STEWRD1";
const BOT_USER_ID: &str = "U04STEWRD1";

/// Slack refuses message text longer than this many characters.
const MAX_TEXT_CHARS: usize = 40_000;

/// The Web API stand-in: its credentials, what it has received, and a client for clicks.
pub(super) struct Slack {
    base_url: String,
    bot_token: String,
    signing_secret: String,
    verification_token: String,
    counters: Arc<Counters>,
    client: reqwest::Client,
    state: Mutex<Workspace>,
    posted: Notify,
}

#[derive(Default)]
struct Workspace {
    messages: Vec<SlackMessage>,
    ephemerals: Vec<Value>,
    responses: Vec<Value>,
    /// Channel ID to name, for the `channel` object of click payloads.
    channel_names: BTreeMap<String, String>,
    /// `response_url` token to the message it answers.
    response_urls: HashMap<String, MessageKey>,
    last_ts_micros: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct MessageKey {
    channel: String,
    ts: String,
}

/// The person clicking.
#[derive(Debug, Clone, Copy)]
pub(super) struct ClickUser<'a> {
    pub(super) id: &'a str,
    pub(super) name: &'a str,
}

/// A Web API failure: Slack's error code, sent as HTTP 200 `{"ok":false,"error":code}`
/// (413 for an oversized body).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum SlackError {
    #[error("no token was presented")]
    NotAuthed,
    #[error("the token is not valid")]
    InvalidAuth,
    #[error("the channel is missing or unknown")]
    ChannelNotFound,
    #[error("the message has no text, blocks or attachments")]
    NoText,
    #[error("no message has that channel and ts")]
    MessageNotFound,
    #[error("the text is longer than {MAX_TEXT_CHARS} characters")]
    MsgTooLong,
    #[error("the user is missing or not in the channel")]
    UserNotInChannel,
    #[error("an argument has the wrong type")]
    InvalidArguments,
    #[error("the JSON body cannot be parsed")]
    InvalidJson,
    #[error("the JSON body is not an object")]
    JsonNotObject,
    #[error("the blocks are not a valid layout")]
    InvalidBlocks,
    #[error("the attachments are not a JSON array")]
    InvalidAttachments,
    #[error("the body is neither JSON nor form-encoded")]
    InvalidPostType,
    #[error("the request body could not be read")]
    InvalidFormData,
    #[error("the request body is too large")]
    RequestTooLarge,
    #[error("the method does not exist")]
    UnknownMethod,
}

impl SlackError {
    fn code(&self) -> &'static str {
        match self {
            Self::NotAuthed => "not_authed",
            Self::InvalidAuth => "invalid_auth",
            Self::ChannelNotFound => "channel_not_found",
            Self::NoText => "no_text",
            Self::MessageNotFound => "message_not_found",
            Self::MsgTooLong => "msg_too_long",
            Self::UserNotInChannel => "user_not_in_channel",
            Self::InvalidArguments => "invalid_arguments",
            Self::InvalidJson => "invalid_json",
            Self::JsonNotObject => "json_not_object",
            Self::InvalidBlocks => "invalid_blocks",
            Self::InvalidAttachments => "invalid_attachments",
            Self::InvalidPostType => "invalid_post_type",
            Self::InvalidFormData => "invalid_form_data",
            Self::RequestTooLarge => "request_too_large",
            Self::UnknownMethod => "unknown_method",
        }
    }
}

impl From<BodyError> for SlackError {
    fn from(error: BodyError) -> Self {
        match error {
            BodyError::TooLarge => Self::RequestTooLarge,
            BodyError::Unreadable => Self::InvalidFormData,
        }
    }
}

impl IntoResponse for SlackError {
    fn into_response(self) -> Response {
        let status = match self {
            Self::RequestTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::OK,
        };
        (status, Json(json!({"ok": false, "error": self.code()}))).into_response()
    }
}

/// The Web API methods served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    PostMessage,
    Update,
    PostEphemeral,
    AuthTest,
}

impl Method {
    fn parse(name: &str) -> Result<Self, SlackError> {
        match name {
            "chat.postMessage" => Ok(Self::PostMessage),
            "chat.update" => Ok(Self::Update),
            "chat.postEphemeral" => Ok(Self::PostEphemeral),
            "auth.test" => Ok(Self::AuthTest),
            _ => Err(SlackError::UnknownMethod),
        }
    }
}

/// The stand-in's routes, including the `/_standin/` control surface.
pub(super) fn router(slack: Arc<Slack>) -> Router {
    Router::new()
        .route("/api/{method}", post(api))
        .route("/actions/{team}/{id}/{token}", post(response_url))
        .route("/_standin/state", get(control_state))
        .route("/_standin/click", post(control_click))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(slack)
}

/// `POST /api/{method}`.
async fn api(
    State(slack): State<Arc<Slack>>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, SlackError> {
    let method = Method::parse(&method)?;
    let body = support::read_body(body)?;
    let args = args::decode(&headers, &body)?;
    slack.authorize(&headers, &args)?;
    let mut reply = match method {
        Method::PostMessage => slack.post_message(&args)?,
        Method::Update => slack.update(&args)?,
        Method::PostEphemeral => slack.post_ephemeral(&args)?,
        Method::AuthTest => auth_test(),
    };
    if args.missing_charset {
        reply["warning"] = json!("missing_charset");
        reply["response_metadata"] = json!({"warnings": ["missing_charset"]});
    }
    Ok(Json(reply))
}

fn auth_test() -> Value {
    json!({
        "ok": true,
        "url": format!("https://{TEAM_DOMAIN}.slack.com/"),
        "team": "Steward Demo",
        "user": "steward",
        "team_id": TEAM_ID,
        "user_id": BOT_USER_ID,
        "bot_id": BOT_ID,
        "is_enterprise_install": false,
    })
}

/// `POST` to a `response_url` handed out in a click: recorded, answered `{"ok":true}`.
async fn response_url(
    State(slack): State<Arc<Slack>>,
    Path((_team, _id, token)): Path<(String, String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match support::read_body(body) {
        Ok(body) => body,
        Err(BodyError::TooLarge) => {
            return (StatusCode::PAYLOAD_TOO_LARGE, "request_too_large").into_response();
        }
        Err(BodyError::Unreadable) => {
            return (StatusCode::BAD_REQUEST, "invalid_payload").into_response();
        }
    };
    let Ok(payload @ Value::Object(_)) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "invalid_payload").into_response();
    };
    if slack.record_response(&token, payload) {
        Json(json!({"ok": true})).into_response()
    } else {
        (StatusCode::NOT_FOUND, "no_service").into_response()
    }
}

/// `GET /_standin/state`.
async fn control_state(State(slack): State<Arc<Slack>>) -> Json<Value> {
    let workspace = support::lock(&slack.state);
    Json(json!({
        "messages": workspace.messages,
        "ephemerals": workspace.ephemerals,
        "responses": workspace.responses,
        "counts": slack.counters.snapshot(),
    }))
}

/// The body of `POST /_standin/click`.
#[derive(Debug, Deserialize)]
struct ClickRequest {
    interactions_url: String,
    ts: String,
    action_id: String,
    user_id: String,
    user_name: String,
}

/// `POST /_standin/click`: clicks a button of a posted message, answering
/// `{"ok":true,"status":…,"body":…}` with the interactions endpoint's reply.
async fn control_click(
    State(slack): State<Arc<Slack>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match click_from_control(&slack, body).await {
        Ok((status, body)) => {
            Json(json!({"ok": true, "status": status, "body": body})).into_response()
        }
        Err((status, error)) => {
            (status, Json(json!({"ok": false, "error": error}))).into_response()
        }
    }
}

async fn click_from_control(
    slack: &Slack,
    body: Result<Bytes, BytesRejection>,
) -> Result<(u16, String), (StatusCode, String)> {
    let body = support::read_body(body).map_err(|error| {
        let status = match error {
            BodyError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            BodyError::Unreadable => StatusCode::BAD_REQUEST,
        };
        (status, error.to_string())
    })?;
    let request: ClickRequest = serde_json::from_slice(&body).map_err(|error| {
        (
            StatusCode::BAD_REQUEST,
            format!("invalid click request: {error}"),
        )
    })?;
    let message = slack.message(&request.ts).ok_or_else(|| {
        let error = ClickError::NoSuchMessage(request.ts.clone());
        (error.status(), error.to_string())
    })?;
    let user = ClickUser {
        id: &request.user_id,
        name: &request.user_name,
    };
    slack
        .click(
            &request.interactions_url,
            &message,
            &request.action_id,
            user,
        )
        .await
        .map_err(|error| (error.status(), format!("{:#}", anyhow::Error::from(error))))
}

/// What a post or update carries.
struct Content {
    text: Option<String>,
    blocks: Option<Vec<Value>>,
    attachments: bool,
}

impl Content {
    fn read(args: &Args) -> Result<Self, SlackError> {
        let text = args.string("text")?;
        if text
            .as_ref()
            .is_some_and(|text| text.chars().count() > MAX_TEXT_CHARS)
        {
            return Err(SlackError::MsgTooLong);
        }
        Ok(Self {
            text,
            blocks: args.blocks()?,
            attachments: args.has_attachments(),
        })
    }

    fn is_empty(&self) -> bool {
        self.text.as_deref().is_none_or(str::is_empty)
            && self.blocks.as_ref().is_none_or(Vec::is_empty)
            && !self.attachments
    }
}

// === impl Slack ===

impl Slack {
    /// A workspace at `base_url` accepting `bot_token`, signing clicks with `signing_secret` and
    /// trusting `click_roots` besides the web roots when it delivers one over `https://`.
    pub(super) fn new(
        base_url: String,
        bot_token: String,
        signing_secret: String,
        counters: Arc<Counters>,
        click_roots: &[reqwest::Certificate],
    ) -> anyhow::Result<Self> {
        let mut builder = reqwest::Client::builder();
        for root in click_roots {
            builder = builder.add_root_certificate(root.clone());
        }
        let client = builder
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .user_agent("Slackbot 1.0 (+https://api.slack.com/robots)")
            .build()?;
        Ok(Self {
            base_url,
            bot_token,
            signing_secret,
            verification_token: support::random_alnum(24),
            counters,
            client,
            state: Mutex::new(Workspace::default()),
            posted: Notify::new(),
        })
    }

    /// A bearer token in `Authorization`, or for form bodies a `token` argument, must be the
    /// bot token.
    fn authorize(&self, headers: &HeaderMap, args: &Args) -> Result<(), SlackError> {
        let token = if headers.contains_key(header::AUTHORIZATION) {
            Some(
                support::bearer_token(headers)
                    .ok_or(SlackError::InvalidAuth)?
                    .to_owned(),
            )
        } else if args.form {
            args.non_empty("token")?
        } else {
            None
        };
        let token = token.ok_or(SlackError::NotAuthed)?;
        support::constant_time_eq(token.as_bytes(), self.bot_token.as_bytes())
            .then_some(())
            .ok_or(SlackError::InvalidAuth)
    }

    fn post_message(&self, args: &Args) -> Result<Value, SlackError> {
        let mut workspace = support::lock(&self.state);
        let channel = workspace.resolve_channel(args.non_empty("channel")?, true)?;
        let content = Content::read(args)?;
        if content.is_empty() {
            return Err(SlackError::NoText);
        }
        let message = SlackMessage {
            channel,
            ts: workspace.next_ts(),
            text: content.text.unwrap_or_default(),
            blocks: Value::Array(content.blocks.unwrap_or_default()),
            updates: Vec::new(),
        };
        let reply = json!({
            "ok": true,
            "channel": message.channel,
            "ts": message.ts,
            "message": message_json(&message),
        });
        workspace.messages.push(message);
        drop(workspace);
        self.counters.slack_posts.fetch_add(1, Ordering::Relaxed);
        self.posted.notify_waiters();
        Ok(reply)
    }

    fn update(&self, args: &Args) -> Result<Value, SlackError> {
        let mut workspace = support::lock(&self.state);
        let channel = workspace.resolve_channel(args.non_empty("channel")?, false)?;
        let ts = args.non_empty("ts")?.ok_or(SlackError::MessageNotFound)?;
        let content = Content::read(args)?;
        let message = (workspace.messages)
            .iter_mut()
            .find(|message| message.channel == channel && message.ts == ts)
            .ok_or(SlackError::MessageNotFound)?;
        if content.is_empty() {
            return Err(SlackError::NoText);
        }
        if let Some(text) = content.text {
            message.text = text;
        }
        if let Some(blocks) = content.blocks {
            message.blocks = Value::Array(blocks);
        }
        message.updates.push(args.recorded());
        let reply = json!({
            "ok": true,
            "channel": channel,
            "ts": ts,
            "text": message.text,
            "message": message_json(message),
        });
        self.counters.slack_updates.fetch_add(1, Ordering::Relaxed);
        Ok(reply)
    }

    fn post_ephemeral(&self, args: &Args) -> Result<Value, SlackError> {
        let mut workspace = support::lock(&self.state);
        let channel = workspace.resolve_channel(args.non_empty("channel")?, true)?;
        args.non_empty("user")?
            .ok_or(SlackError::UserNotInChannel)?;
        if Content::read(args)?.is_empty() {
            return Err(SlackError::NoText);
        }
        let ts = workspace.next_ts();
        let mut recorded = args.recorded();
        recorded["channel"] = json!(channel);
        recorded["message_ts"] = json!(ts);
        workspace.ephemerals.push(recorded);
        Ok(json!({"ok": true, "message_ts": ts}))
    }

    fn record_response(&self, token: &str, body: Value) -> bool {
        let mut workspace = support::lock(&self.state);
        let Some(key) = workspace.response_urls.get(token).cloned() else {
            return false;
        };
        let entry = json!({"message_ts": key.ts, "channel": key.channel, "body": body});
        workspace.responses.push(entry);
        true
    }

    /// Hands out a fresh `response_url` for a message.
    fn response_url_for(&self, message: &SlackMessage) -> String {
        let token = support::random_alnum(24);
        let id = support::random_digits(13);
        let key = MessageKey {
            channel: message.channel.clone(),
            ts: message.ts.clone(),
        };
        support::lock(&self.state)
            .response_urls
            .insert(token.clone(), key);
        format!("{}/actions/{TEAM_ID}/{id}/{token}", self.base_url)
    }

    fn channel_name(&self, channel: &str) -> String {
        let workspace = support::lock(&self.state);
        workspace
            .channel_names
            .get(channel)
            .cloned()
            .unwrap_or_else(|| channel.to_lowercase())
    }

    /// The posted message with this ts, as it stands now.
    fn message(&self, ts: &str) -> Option<SlackMessage> {
        let workspace = support::lock(&self.state);
        workspace.messages.iter().find(|m| m.ts == ts).cloned()
    }

    /// Every posted message, in order.
    pub(super) fn messages(&self) -> Vec<SlackMessage> {
        support::lock(&self.state).messages.clone()
    }

    /// Every accepted ephemeral message.
    pub(super) fn ephemerals(&self) -> Vec<Value> {
        support::lock(&self.state).ephemerals.clone()
    }

    /// Every POST to a handed-out `response_url`.
    pub(super) fn responses(&self) -> Vec<Value> {
        support::lock(&self.state).responses.clone()
    }

    fn first_message(&self) -> Option<SlackMessage> {
        support::lock(&self.state).messages.first().cloned()
    }

    /// The first posted message, waiting up to `timeout` for one.
    pub(super) async fn wait_for_first(&self, timeout: Duration) -> Option<SlackMessage> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Register for the wake-up before looking, so a post in between is not missed.
            let notified = self.posted.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(first) = self.first_message() {
                return Some(first);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.first_message();
            }
        }
    }
}

// === impl Workspace ===

impl Workspace {
    /// A channel ID as given, or (where names are allowed) a name like `#ops` mapped to a
    /// stable ID.
    fn resolve_channel(
        &mut self,
        channel: Option<String>,
        names_allowed: bool,
    ) -> Result<String, SlackError> {
        let channel = channel.ok_or(SlackError::ChannelNotFound)?;
        if is_channel_id(&channel) {
            let name = channel.to_lowercase();
            self.channel_names.entry(channel.clone()).or_insert(name);
            return Ok(channel);
        }
        let name = channel.strip_prefix('#').unwrap_or(&channel);
        if !names_allowed || !is_channel_name(name) {
            return Err(SlackError::ChannelNotFound);
        }
        let id = channel_id_for(name);
        self.channel_names.insert(id.clone(), name.to_owned());
        Ok(id)
    }

    /// A message timestamp, strictly increasing: Unix seconds, a dot, six digits.
    fn next_ts(&mut self) -> String {
        let micros = support::unix_now_micros().max(self.last_ts_micros + 1);
        self.last_ts_micros = micros;
        format_ts(micros)
    }
}

fn format_ts(micros: u64) -> String {
    format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000)
}

/// `C…`, `G…` or `D…` followed by uppercase letters and digits.
fn is_channel_id(channel: &str) -> bool {
    let mut bytes = channel.bytes();
    let prefix_ok = matches!(bytes.next(), Some(b'C' | b'G' | b'D'));
    prefix_ok
        && (9..=12).contains(&channel.len())
        && bytes.all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

/// Slack channel names: 1 to 80 lowercase letters, digits, `-` and `_`.
fn is_channel_name(name: &str) -> bool {
    (1..=80).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn channel_id_for(name: &str) -> String {
    let digest = Sha256::digest(name.as_bytes());
    format!("C{}", hex::encode_upper(&digest[..5]))
}

/// A message as Slack returns it from the Web API.
fn message_json(message: &SlackMessage) -> Value {
    let mut json = json!({
        "type": "message",
        "user": BOT_USER_ID,
        "bot_id": BOT_ID,
        "app_id": APP_ID,
        "team": TEAM_ID,
        "text": message.text,
        "ts": message.ts,
    });
    if message
        .blocks
        .as_array()
        .is_some_and(|blocks| !blocks.is_empty())
    {
        json["blocks"] = message.blocks.clone();
    }
    json
}
