//! Anthropic Messages, with the proposal obtained through a forced tool call: the model must
//! call `propose_triage`, whose `input_schema` is the proposal schema, and its input is then
//! held to the same strict parser as any other reply.

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::{Value, json};
use steward_core::{Proposal, Provenance, TokenUsage};

use super::transport::{self, RawReply};
use super::{
    LlmError, LlmProvider, LlmSettings, PROMPT_VERSION, TriageReply, TriageRequest, build_messages,
    parse_proposal, proposal_schema, provider_text, scrub_reply_error, wire_temperature,
};

/// The API version this client speaks.
const API_VERSION: &str = "2023-06-01";
/// The tool the model is made to call.
const TOOL_NAME: &str = "propose_triage";
const TOOL_DESCRIPTION: &str = "Record the triage proposal for the incident: a summary, a \
    category and the changes to allowed fields. A person reviews it before anything is written.";

/// A Messages API client for one model and key.
#[derive(Debug, Clone)]
pub struct Anthropic {
    settings: LlmSettings,
    http: reqwest::Client,
}

impl Anthropic {
    /// A client that posts to `{base_url}/messages` with `http`.
    pub fn new(settings: LlmSettings, http: reqwest::Client) -> Self {
        Self { settings, http }
    }

    fn request_body(&self, req: &TriageRequest) -> Result<Value, LlmError> {
        let (system, user) = build_messages(req);
        Ok(json!({
            "model": self.settings.model,
            "max_tokens": self.settings.max_tokens,
            "temperature": wire_temperature(self.settings.temperature)?,
            "system": system,
            "messages": [{"role": "user", "content": user}],
            "tools": [{
                "name": TOOL_NAME,
                "description": TOOL_DESCRIPTION,
                "input_schema": proposal_schema(),
            }],
            "tool_choice": {"type": "tool", "name": TOOL_NAME},
        }))
    }

    fn provenance(&self, message: &MessageReply) -> Provenance {
        let usage = message.usage.as_ref();
        Provenance {
            provider: "anthropic".into(),
            model_requested: self.settings.model.clone(),
            model_reported: message.model.clone().unwrap_or_default(),
            prompt_version: PROMPT_VERSION.into(),
            temperature: self.settings.temperature,
            max_tokens: self.settings.max_tokens,
            usage: TokenUsage {
                input_tokens: usage.and_then(|u| u.input_tokens).unwrap_or(0),
                output_tokens: usage.and_then(|u| u.output_tokens).unwrap_or(0),
            },
            response_id: message.id.clone().unwrap_or_default(),
        }
    }

    /// Reads the body of a successful Messages reply into a proposal and its provenance,
    /// exactly as [`LlmProvider::triage`] does. Public so that the reply parser can be
    /// exercised without a server.
    pub fn read_reply(&self, body: &[u8]) -> Result<TriageReply, LlmError> {
        let key = &self.settings.api_key;
        let message: MessageReply = serde_json::from_slice(body).map_err(|e| {
            let reason = format!("reply is not a message: {e}");
            LlmError::InvalidReply(provider_text(&reason, key))
        })?;
        let proposal =
            message_proposal(&message, &self.settings).map_err(|e| scrub_reply_error(e, key))?;
        Ok(TriageReply {
            proposal,
            provenance: self.provenance(&message),
        })
    }

    /// The error a reply with a failed status stands for, read from its status, its
    /// `retry-after` header and its error envelope, as [`LlmProvider::triage`] does. Public so
    /// that the error parser can be exercised without a server.
    pub fn read_error(&self, reply: &RawReply) -> LlmError {
        let info = ErrorInfo::parse(&reply.body_text(), reply.status);
        let message = provider_text(&info.message, &self.settings.api_key);
        status_error(reply.status, &reply.headers, info.kind.as_deref(), message)
    }
}

#[async_trait::async_trait]
impl LlmProvider for Anthropic {
    fn name(&self) -> &'static str {
        "anthropic"
    }

    async fn triage(&self, req: &TriageRequest) -> Result<TriageReply, LlmError> {
        let url = transport::endpoint(&self.settings.base_url, &["messages"])?;
        let request = self
            .http
            .post(url)
            .header(
                "x-api-key",
                transport::secret_header(self.settings.api_key.expose_secret())?,
            )
            .header("anthropic-version", API_VERSION)
            .json(&self.request_body(req)?);
        let reply = transport::send(request).await?;
        tracing::debug!(status = reply.status.as_u16(), model = %self.settings.model,
            "anthropic message answered");
        if !reply.status.is_success() {
            return Err(self.read_error(&reply));
        }
        self.read_reply(reply.success_body()?)
    }
}

/// Reads the proposal out of the forced tool call, after checking why the model stopped.
fn message_proposal(message: &MessageReply, settings: &LlmSettings) -> Result<Proposal, LlmError> {
    match message.stop_reason.as_deref() {
        Some("refusal") => {
            let said = message.text();
            let said = if said.is_empty() {
                "stop_reason refusal".into()
            } else {
                said
            };
            return Err(LlmError::Refused(provider_text(&said, &settings.api_key)));
        }
        Some(reason @ ("max_tokens" | "model_context_window_exceeded")) => {
            return Err(LlmError::Truncated(format!(
                "stop_reason {reason} (max_tokens {})",
                settings.max_tokens
            )));
        }
        _ => {}
    }
    let input = message
        .content
        .iter()
        .find(|b| b.kind == "tool_use" && b.name.as_deref() == Some(TOOL_NAME))
        .and_then(|b| b.input.as_ref())
        .ok_or_else(|| LlmError::InvalidReply(format!("reply has no {TOOL_NAME} tool call")))?;
    parse_proposal(&input.to_string())
}

/// Maps a failed status to an error, per Anthropic's documented error types.
fn status_error(
    status: StatusCode,
    headers: &HeaderMap,
    kind: Option<&str>,
    message: String,
) -> LlmError {
    let code = status.as_u16();
    let retry_after = transport::retry_after(headers);
    if code == 529 || kind == Some("overloaded_error") {
        return LlmError::Overloaded { retry_after };
    }
    match status {
        StatusCode::TOO_MANY_REQUESTS => LlmError::RateLimited { retry_after },
        StatusCode::REQUEST_TIMEOUT => LlmError::Transport(format!(
            "the provider timed out reading the request: {message}"
        )),
        s if s.is_server_error() => LlmError::Server {
            status: code,
            message,
        },
        _ => LlmError::Client {
            status: code,
            message,
        },
    }
}

/// `{"type":"error","error":{"type","message"},"request_id"}`, or whatever text came instead.
#[derive(Debug)]
struct ErrorInfo {
    message: String,
    kind: Option<String>,
}

impl ErrorInfo {
    fn parse(body: &str, status: StatusCode) -> Self {
        let value: Value = serde_json::from_str(body).unwrap_or(Value::Null);
        let error = &value["error"];
        let kind = error["type"].as_str().map(str::to_owned);
        let message = match error["message"].as_str() {
            Some(text) => text.to_owned(),
            None if value.is_null() && !body.trim().is_empty() => body.trim().to_owned(),
            None => status.canonical_reason().unwrap_or("no message").to_owned(),
        };
        let message = match (&kind, value["request_id"].as_str()) {
            (Some(kind), Some(id)) => format!("{kind}: {message} (request {id})"),
            (Some(kind), None) => format!("{kind}: {message}"),
            (None, _) => message,
        };
        Self { message, kind }
    }
}

#[derive(Debug, Deserialize)]
struct MessageReply {
    id: Option<String>,
    model: Option<String>,
    #[serde(default)]
    content: Vec<Block>,
    stop_reason: Option<String>,
    usage: Option<Usage>,
}

impl MessageReply {
    /// The text blocks, joined.
    fn text(&self) -> String {
        let texts: Vec<&str> = self
            .content
            .iter()
            .filter_map(|b| b.text.as_deref())
            .collect();
        texts.join("\n")
    }
}

#[derive(Debug, Deserialize)]
struct Block {
    #[serde(rename = "type")]
    kind: String,
    name: Option<String>,
    input: Option<Value>,
    text: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Usage {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
}

#[cfg(test)]
mod tests;
