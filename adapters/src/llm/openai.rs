//! OpenAI-compatible Chat Completions with structured output (`response_format: json_schema`,
//! strict). Speaks to OpenAI, Ollama, vLLM and gateways that mirror the same API.

use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, HeaderMap};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::{Value, json};
use steward_core::{Proposal, Provenance, TokenUsage};

use super::transport::{self, RawReply};
use super::{
    LlmError, LlmProvider, LlmSettings, PROMPT_VERSION, TriageReply, TriageRequest, build_messages,
    parse_proposal, proposal_schema, provider_text, scrub_reply_error, wire_temperature,
};

/// The name under which the schema is sent.
const SCHEMA_NAME: &str = "steward_triage";

/// A Chat Completions client for one model and key.
#[derive(Debug, Clone)]
pub struct OpenAiCompatible {
    settings: LlmSettings,
    http: reqwest::Client,
}

impl OpenAiCompatible {
    /// A client that posts to `{base_url}/chat/completions` with `http`.
    pub fn new(settings: LlmSettings, http: reqwest::Client) -> Self {
        Self { settings, http }
    }

    fn request_body(&self, req: &TriageRequest) -> Result<Value, LlmError> {
        let (system, user) = build_messages(req);
        Ok(json!({
            "model": self.settings.model,
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": user},
            ],
            "temperature": wire_temperature(self.settings.temperature)?,
            "max_tokens": self.settings.max_tokens,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": SCHEMA_NAME, "schema": proposal_schema(), "strict": true},
            },
        }))
    }

    fn provenance(&self, completion: &ChatCompletion) -> Provenance {
        let usage = completion.usage.as_ref();
        Provenance {
            provider: "openai".into(),
            model_requested: self.settings.model.clone(),
            model_reported: completion.model.clone().unwrap_or_default(),
            prompt_version: PROMPT_VERSION.into(),
            temperature: self.settings.temperature,
            max_tokens: self.settings.max_tokens,
            usage: TokenUsage {
                input_tokens: usage.and_then(|u| u.prompt_tokens).unwrap_or(0),
                output_tokens: usage.and_then(|u| u.completion_tokens).unwrap_or(0),
            },
            response_id: completion.id.clone().unwrap_or_default(),
        }
    }

    /// Reads the body of a successful Chat Completions reply into a proposal and its
    /// provenance, exactly as [`LlmProvider::triage`] does. Public so that the reply parser can
    /// be exercised without a server.
    pub fn read_reply(&self, body: &[u8]) -> Result<TriageReply, LlmError> {
        let key = &self.settings.api_key;
        let completion: ChatCompletion = serde_json::from_slice(body).map_err(|e| {
            let reason = format!("reply is not a chat completion: {e}");
            LlmError::InvalidReply(provider_text(&reason, key))
        })?;
        let proposal = completion_proposal(&completion, &self.settings)
            .map_err(|e| scrub_reply_error(e, key))?;
        Ok(TriageReply {
            proposal,
            provenance: self.provenance(&completion),
        })
    }

    /// The error a reply with a failed status stands for, read from its status, its
    /// `retry-after` headers and its error envelope, as [`LlmProvider::triage`] does. Public so
    /// that the error parser can be exercised without a server.
    pub fn read_error(&self, reply: &RawReply) -> LlmError {
        let envelope = ErrorInfo::parse(&reply.body_text(), reply.status);
        let message = provider_text(&envelope.message, &self.settings.api_key);
        status_error(reply.status, &reply.headers, &envelope, message)
    }
}

#[async_trait::async_trait]
impl LlmProvider for OpenAiCompatible {
    fn name(&self) -> &'static str {
        "openai"
    }

    async fn triage(&self, req: &TriageRequest) -> Result<TriageReply, LlmError> {
        let url = transport::endpoint(&self.settings.base_url, &["chat", "completions"])?;
        let bearer = format!("Bearer {}", self.settings.api_key.expose_secret());
        let request = self
            .http
            .post(url)
            .header(AUTHORIZATION, transport::secret_header(&bearer)?)
            .json(&self.request_body(req)?);
        let reply = transport::send(request).await?;
        tracing::debug!(status = reply.status.as_u16(), model = %self.settings.model,
            "chat completion answered");
        if !reply.status.is_success() {
            return Err(self.read_error(&reply));
        }
        self.read_reply(reply.success_body()?)
    }
}

/// Reads the proposal out of the first choice, in the order that matters: an explicit
/// refusal, then a cut-off or filtered answer, then the content itself.
fn completion_proposal(
    completion: &ChatCompletion,
    settings: &LlmSettings,
) -> Result<Proposal, LlmError> {
    let choice = completion
        .choices
        .first()
        .ok_or_else(|| LlmError::InvalidReply("reply has no choices".into()))?;
    let message = choice.message.as_ref();
    let refusal = message
        .and_then(|m| m.refusal.as_deref())
        .filter(|r| !r.is_empty());
    if let Some(refusal) = refusal {
        return Err(LlmError::Refused(provider_text(refusal, &settings.api_key)));
    }
    match choice.finish_reason.as_deref() {
        Some("length") => {
            return Err(LlmError::Truncated(format!(
                "finish_reason length: the reply hit max_tokens ({})",
                settings.max_tokens
            )));
        }
        Some("content_filter") => {
            return Err(LlmError::Refused("finish_reason content_filter".into()));
        }
        _ => {}
    }
    let content = message
        .and_then(|m| m.content.as_deref())
        .ok_or_else(|| LlmError::InvalidReply("reply message has no content".into()))?;
    parse_proposal(content)
}

/// Maps a failed status to an error, per the OpenAI SDK's status classes.
fn status_error(
    status: StatusCode,
    headers: &HeaderMap,
    info: &ErrorInfo,
    message: String,
) -> LlmError {
    let code = status.as_u16();
    match status {
        StatusCode::TOO_MANY_REQUESTS if info.is("insufficient_quota") => {
            LlmError::QuotaExceeded(message)
        }
        StatusCode::TOO_MANY_REQUESTS => LlmError::RateLimited {
            retry_after: transport::retry_after(headers),
        },
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

/// What an error body says, in the shapes OpenAI and compatible servers use:
/// `{"error":{"message","type","code"}}`, `{"error":"text"}` or `{"message","type","code"}`.
#[derive(Debug, Default)]
struct ErrorInfo {
    message: String,
    kind: Option<String>,
    code: Option<String>,
}

impl ErrorInfo {
    fn parse(body: &str, status: StatusCode) -> Self {
        let value: Value = serde_json::from_str(body).unwrap_or(Value::Null);
        let detail = match &value["error"] {
            Value::Object(_) => &value["error"],
            _ => &value,
        };
        let text = |v: &Value| v.as_str().map(str::to_owned);
        let message = text(&detail["message"])
            .or_else(|| text(&value["error"]))
            .or_else(|| (!body.trim().is_empty() && value.is_null()).then(|| body.trim().into()))
            .unwrap_or_else(|| status.canonical_reason().unwrap_or("no message").into());
        Self {
            message,
            kind: text(&detail["type"]),
            code: text(&detail["code"]),
        }
    }

    fn is(&self, name: &str) -> bool {
        self.kind.as_deref() == Some(name) || self.code.as_deref() == Some(name)
    }
}

#[derive(Debug, Deserialize)]
struct ChatCompletion {
    id: Option<String>,
    model: Option<String>,
    #[serde(default)]
    choices: Vec<Choice>,
    usage: Option<Usage>,
}

#[derive(Debug, Deserialize)]
struct Choice {
    message: Option<Message>,
    finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Message {
    content: Option<String>,
    refusal: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Usage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
}

#[cfg(test)]
mod tests;
