//! An OpenAI-compatible provider: `POST /v1/chat/completions` answering from an [`LlmScript`]
//! in the Chat Completions response shape, `GET /v1/models`, and OpenAI's error envelope.

#[cfg(test)]
mod tests;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::{Map, Value, json};

use super::support::{self, BODY_LIMIT, BodyError};
use super::{Counters, LlmScript};

/// The snapshot suffix reported for a model requested without one.
const MODEL_SNAPSHOT: &str = "2024-08-06";

/// Models listed by `GET /v1/models`.
const MODELS: [&str; 4] = [
    "gpt-4o-2024-08-06",
    "gpt-4o-mini-2024-07-18",
    "gpt-4.1-2025-04-14",
    "gpt-4.1-mini-2025-04-14",
];

/// The provider stand-in: the key it accepts, its script and what it has received.
pub(super) struct Llm {
    api_key: String,
    fingerprint: String,
    counters: Arc<Counters>,
    state: Mutex<Exchange>,
}

struct Exchange {
    script: LlmScript,
    requests: Vec<Value>,
}

/// A refused call, rendered as `{"error":{"message","type","param","code"}}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum LlmError {
    #[error(
        "You didn't provide an API key. You need to provide your API key in an Authorization \
         header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
    )]
    MissingKey,
    #[error(
        "Incorrect API key provided: {0}. You can find your API key at \
         https://platform.openai.com/account/api-keys."
    )]
    InvalidKey(String),
    #[error(
        "We could not parse the JSON body of your request. (HINT: This likely means you aren't \
         using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was \
         sent was not valid JSON.)"
    )]
    InvalidJson,
    #[error("The request body must be a JSON object.")]
    NotAnObject,
    #[error("Missing required parameter: '{0}'.")]
    MissingParameter(&'static str),
    #[error("Invalid type for '{0}': expected {1}.")]
    InvalidType(&'static str, &'static str),
    #[error(
        "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an \
         empty array instead."
    )]
    EmptyMessages,
    #[error("This provider does not stream; send 'stream': false.")]
    StreamUnsupported,
    #[error("Request body too large: the limit is {BODY_LIMIT} bytes.")]
    TooLarge,
    #[error("The request body could not be read.")]
    Unreadable,
    #[error("Invalid URL ({0} {1})")]
    InvalidUrl(String, String),
}

impl LlmError {
    fn status(&self) -> StatusCode {
        match self {
            Self::MissingKey | Self::InvalidKey(_) => StatusCode::UNAUTHORIZED,
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::InvalidUrl(..) => StatusCode::NOT_FOUND,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    fn param(&self) -> Option<&'static str> {
        match self {
            Self::MissingParameter(param) | Self::InvalidType(param, _) => Some(param),
            Self::EmptyMessages => Some("messages"),
            Self::StreamUnsupported => Some("stream"),
            _ => None,
        }
    }

    fn code(&self) -> Option<&'static str> {
        match self {
            Self::InvalidKey(_) => Some("invalid_api_key"),
            Self::MissingParameter(_) => Some("missing_required_parameter"),
            Self::InvalidType(..) => Some("invalid_type"),
            Self::EmptyMessages => Some("empty_array"),
            Self::StreamUnsupported => Some("unsupported_value"),
            _ => None,
        }
    }
}

impl From<BodyError> for LlmError {
    fn from(error: BodyError) -> Self {
        match error {
            BodyError::TooLarge => Self::TooLarge,
            BodyError::Unreadable => Self::Unreadable,
        }
    }
}

impl IntoResponse for LlmError {
    fn into_response(self) -> Response {
        let body = json!({"error": {
            "message": self.to_string(),
            "type": "invalid_request_error",
            "param": self.param(),
            "code": self.code(),
        }});
        (self.status(), Json(body)).into_response()
    }
}

/// The provider's routes, including the `/_standin/` control surface.
pub(super) fn router(llm: Arc<Llm>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/_standin/state", get(control_state))
        .route("/_standin/llm_reply", put(control_script))
        .fallback(|method: Method, uri: Uri| async move {
            LlmError::InvalidUrl(method.to_string(), uri.path().to_owned())
        })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(llm)
}

/// `POST /v1/chat/completions`.
async fn completions(
    State(llm): State<Arc<Llm>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, LlmError> {
    // Authenticate, then read and check the request.
    llm.authorize(&headers)?;
    let body = support::read_body(body)?;
    let request = parse_request(&body)?;

    // Record it and answer from the script.
    let script = llm.record(&request);
    let reply = completion(&script, &request, &llm.fingerprint);
    let mut response = Json(reply).into_response();
    let request_id = format!("req_{}", support::random_hex(16));
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    Ok(response)
}

/// `GET /v1/models`.
async fn models(State(llm): State<Arc<Llm>>, headers: HeaderMap) -> Result<Json<Value>, LlmError> {
    llm.authorize(&headers)?;
    let data: Vec<Value> = MODELS
        .iter()
        .map(|id| {
            json!({"id": id, "object": "model", "created": 1_722_814_719, "owned_by": "system"})
        })
        .collect();
    Ok(Json(json!({"object": "list", "data": data})))
}

/// `GET /_standin/state`.
async fn control_state(State(llm): State<Arc<Llm>>) -> Json<Value> {
    let exchange = support::lock(&llm.state);
    Json(json!({
        "requests": exchange.requests,
        "script": exchange.script,
        "counts": llm.counters.snapshot(),
    }))
}

/// `PUT /_standin/llm_reply` with an [`LlmScript`] as JSON.
async fn control_script(
    State(llm): State<Arc<Llm>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let script = support::read_body(body)
        .map_err(|error| error.to_string())
        .and_then(|body| serde_json::from_slice::<LlmScript>(&body).map_err(|e| e.to_string()));
    match script {
        Ok(script) => {
            llm.set_script(script);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(error) => {
            let body = json!({"ok": false, "error": format!("invalid script: {error}")});
            (StatusCode::BAD_REQUEST, Json(body)).into_response()
        }
    }
}

/// The request as a JSON object with a string `model` and a non-empty `messages` array,
/// not asking to stream.
fn parse_request(body: &[u8]) -> Result<Map<String, Value>, LlmError> {
    let request = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(request)) => request,
        Ok(_) => return Err(LlmError::NotAnObject),
        Err(_) => return Err(LlmError::InvalidJson),
    };
    match request.get("model") {
        None | Some(Value::Null) => return Err(LlmError::MissingParameter("model")),
        Some(Value::String(_)) => {}
        Some(_) => return Err(LlmError::InvalidType("model", "a string")),
    }
    match request.get("messages") {
        None | Some(Value::Null) => return Err(LlmError::MissingParameter("messages")),
        Some(Value::Array(messages)) if messages.is_empty() => return Err(LlmError::EmptyMessages),
        Some(Value::Array(_)) => {}
        Some(_) => return Err(LlmError::InvalidType("messages", "an array")),
    }
    if request.get("stream") == Some(&Value::Bool(true)) {
        return Err(LlmError::StreamUnsupported);
    }
    Ok(request)
}

/// A Chat Completions reply to `request` from `script`. A reply longer than the request's
/// `max_completion_tokens` (or `max_tokens`) is cut there with `finish_reason` `length`.
fn completion(script: &LlmScript, request: &Map<String, Value>, fingerprint: &str) -> Value {
    let (content, refusal) = match script {
        LlmScript::Proposal(proposal) => (Some(proposal.to_string()), None),
        LlmScript::RawContent(content) => (Some(content.clone()), None),
        LlmScript::Refusal(refusal) => (None, Some(refusal.clone())),
    };
    let limit = ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|name| request.get(*name).and_then(Value::as_u64));
    let (content, finish_reason) = truncate(content, limit);
    let prompt_tokens = prompt_tokens(request);
    let completion_tokens = tokens(content.as_deref().or(refusal.as_deref()).unwrap_or(""));
    let model = request
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or_default();
    json!({
        "id": format!("chatcmpl-{}", support::random_alnum(29)),
        "object": "chat.completion",
        "created": support::unix_now(),
        "model": reported_model(model),
        "choices": [{
            "index": 0,
            "message": {
                "role": "assistant",
                "content": content,
                "refusal": refusal,
                "annotations": [],
            },
            "logprobs": null,
            "finish_reason": finish_reason,
        }],
        "usage": usage(prompt_tokens, completion_tokens),
        "service_tier": "default",
        "system_fingerprint": fingerprint,
    })
}

fn usage(prompt_tokens: u64, completion_tokens: u64) -> Value {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    })
}

/// Cuts content at `limit` tokens (about four characters each).
fn truncate(content: Option<String>, limit: Option<u64>) -> (Option<String>, &'static str) {
    match (content, limit) {
        (Some(content), Some(limit)) if tokens(&content) > limit => {
            let chars = usize::try_from(limit.saturating_mul(4)).unwrap_or(usize::MAX);
            (Some(content.chars().take(chars).collect()), "length")
        }
        (content, _) => (content, "stop"),
    }
}

/// A rough token count: one per four characters, at least one for non-empty text.
fn tokens(text: &str) -> u64 {
    let chars = u64::try_from(text.chars().count()).unwrap_or(u64::MAX);
    chars.div_ceil(4)
}

/// Prompt tokens: the text of every message plus a few per message for the framing.
fn prompt_tokens(request: &Map<String, Value>) -> u64 {
    let messages = request.get("messages").and_then(Value::as_array);
    let per_message = |message: &Value| 4 + tokens(&message_text(message));
    messages.into_iter().flatten().map(per_message).sum()
}

/// A message's text, whether `content` is a string or an array of parts.
fn message_text(message: &Value) -> String {
    match message.get("content") {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|part| part.get("text").and_then(Value::as_str))
            .collect(),
        _ => String::new(),
    }
}

/// The model name as the provider reports it: with a dated snapshot suffix.
fn reported_model(model: &str) -> String {
    if has_snapshot_suffix(model) {
        model.to_owned()
    } else {
        format!("{model}-{MODEL_SNAPSHOT}")
    }
}

/// Whether a name ends in `-YYYY-MM-DD`.
fn has_snapshot_suffix(model: &str) -> bool {
    let bytes = model.as_bytes();
    let Some(suffix) = bytes.len().checked_sub(11).map(|start| &bytes[start..]) else {
        return false;
    };
    suffix.iter().enumerate().all(|(i, b)| match i {
        0 | 5 | 8 => *b == b'-',
        _ => b.is_ascii_digit(),
    })
}

/// Hides all but the ends of a presented key, as OpenAI does in its error message.
fn mask(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() <= 8 {
        return "*".repeat(chars.len());
    }
    let head: String = chars[..3].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}{}{tail}", "*".repeat(chars.len() - 7))
}

// === impl Llm ===

impl Llm {
    /// A provider accepting `api_key` and answering from `script`.
    pub(super) fn new(api_key: String, script: LlmScript, counters: Arc<Counters>) -> Self {
        Self {
            api_key,
            fingerprint: format!("fp_{}", support::random_hex(5)),
            counters,
            state: Mutex::new(Exchange {
                script,
                requests: Vec::new(),
            }),
        }
    }

    fn authorize(&self, headers: &HeaderMap) -> Result<(), LlmError> {
        let key = support::bearer_token(headers).ok_or(LlmError::MissingKey)?;
        if support::constant_time_eq(key.as_bytes(), self.api_key.as_bytes()) {
            Ok(())
        } else {
            Err(LlmError::InvalidKey(mask(key)))
        }
    }

    /// Records a request and returns the script to answer it with.
    fn record(&self, request: &Map<String, Value>) -> LlmScript {
        let mut exchange = support::lock(&self.state);
        exchange.requests.push(Value::Object(request.clone()));
        self.counters.llm_calls.fetch_add(1, Ordering::Relaxed);
        exchange.script.clone()
    }

    /// Every recorded request body.
    pub(super) fn requests(&self) -> Vec<Value> {
        support::lock(&self.state).requests.clone()
    }

    /// Replaces the script.
    pub(super) fn set_script(&self, script: LlmScript) {
        support::lock(&self.state).script = script;
    }
}
