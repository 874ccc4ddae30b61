//! LLM providers that turn an incident into a triage [`Proposal`]: OpenAI-compatible Chat
//! Completions (OpenAI, Ollama, vLLM, Azure-style gateways) and Anthropic Messages.
//!
//! Each call to [`LlmProvider::triage`] sends exactly one HTTP request and never retries: the
//! caller owns the one retry policy and uses [`LlmError::is_retryable`] and
//! [`LlmError::retry_after`] to drive it. The reply must be strict JSON matching
//! [`proposal_schema`]; anything else is an error, never a proposal. Messages that come back
//! from a provider are clipped and scrubbed of the API key before they reach an error.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use steward_core::{Incident, Proposal, Provenance};

mod anthropic;
mod openai;
mod prompt;
mod proposal;
#[cfg(test)]
mod test_support;
mod transport;

pub use anthropic::Anthropic;
pub use openai::OpenAiCompatible;
pub use prompt::build_messages;
pub use proposal::{parse_proposal, proposal_schema};

/// The version of the prompt and schema below; recorded in every [`Provenance`].
pub const PROMPT_VERSION: &str = "triage-v1";

/// Provider messages are clipped to this many characters before they enter an error.
const MESSAGE_LIMIT_CHARS: usize = 300;

/// API keys shorter than this are not scrubbed from messages: local servers accept any key
/// (often a single letter), and scrubbing that would garble the message without hiding a secret.
const MIN_SCRUBBED_KEY_LEN: usize = 8;

/// What the model is asked to triage.
#[derive(Debug, Clone)]
pub struct TriageRequest {
    /// The incident as read from ServiceNow.
    pub incident: Incident,
    /// The only fields the model may propose changes to (policy decides the rest).
    pub allowed_fields: Vec<String>,
}

/// A schema-valid proposal and what produced it.
#[derive(Debug, Clone)]
pub struct TriageReply {
    /// The parsed, schema-valid proposal.
    pub proposal: Proposal,
    /// Provider, models, prompt version, sampling settings, usage and reply id.
    pub provenance: Provenance,
}

/// How to reach one provider with one tenant's key. `Debug` shows everything but the key.
#[derive(Debug, Clone)]
pub struct LlmSettings {
    /// The API root, such as `https://api.openai.com/v1/`; endpoint paths are appended to it.
    pub base_url: url::Url,
    /// The model to ask for, as the provider names it.
    pub model: String,
    /// The tenant's key (sent as a bearer token or `x-api-key`; local servers ignore it).
    pub api_key: SecretString,
    /// Sampling temperature; must be a finite number.
    pub temperature: f32,
    /// The most tokens the reply may use; a reply that hits it is [`LlmError::Truncated`].
    pub max_tokens: u32,
}

/// A provider that can triage an incident.
#[async_trait::async_trait]
pub trait LlmProvider: Send + Sync + 'static {
    /// The wire protocol spoken: `openai` or `anthropic`.
    fn name(&self) -> &'static str;

    /// Asks the model for a proposal. Sends exactly one HTTP request and never retries.
    async fn triage(&self, req: &TriageRequest) -> Result<TriageReply, LlmError>;
}

/// Why a triage call produced no proposal.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LlmError {
    #[error("the model refused to answer: {0}")]
    Refused(String),
    #[error("the model's reply was cut off: {0}")]
    Truncated(String),
    #[error("the model's reply is not a valid proposal: {0}")]
    InvalidReply(String),
    #[error("the provider is rate limiting this key{}", after(.retry_after))]
    RateLimited { retry_after: Option<Duration> },
    #[error("the provider is overloaded{}", after(.retry_after))]
    Overloaded { retry_after: Option<Duration> },
    #[error("the provider account is out of quota; check its plan and billing: {0}")]
    QuotaExceeded(String),
    /// The provider refused the request itself; `status` is 0 when the request was refused
    /// before it was sent (a base URL or API key that cannot form a request).
    #[error("the provider rejected the request (status {status}): {message}")]
    Client { status: u16, message: String },
    #[error("the provider failed (status {status}): {message}")]
    Server { status: u16, message: String },
    #[error("could not talk to the provider: {0}")]
    Transport(String),
}

fn after(retry_after: &Option<Duration>) -> String {
    retry_after
        .map(|d| format!("; retry after {d:?}"))
        .unwrap_or_default()
}

impl LlmError {
    /// Whether the same request may succeed if sent again. A refused, truncated or invalid reply
    /// counts: the model may do better next time, and the caller bounds the attempts.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, Self::QuotaExceeded(_) | Self::Client { .. })
    }

    /// How long the provider asked us to wait, when it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after } | Self::Overloaded { retry_after } => *retry_after,
            _ => None,
        }
    }

    /// A stable code for audit records and metrics.
    pub fn reason_code(&self) -> &'static str {
        match self {
            Self::Refused(_) => "llm_refused",
            Self::Truncated(_) => "llm_truncated",
            Self::InvalidReply(_) => "llm_invalid_reply",
            Self::RateLimited { .. } => "llm_rate_limited",
            Self::Overloaded { .. } => "llm_overloaded",
            Self::QuotaExceeded(_) => "llm_quota_exceeded",
            Self::Client { .. } => "llm_client_error",
            Self::Server { .. } => "llm_server_error",
            Self::Transport(_) => "llm_transport",
        }
    }
}

/// Clips text to [`MESSAGE_LIMIT_CHARS`] characters, marking the cut.
fn clip(text: &str) -> String {
    match text.char_indices().nth(MESSAGE_LIMIT_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// Makes provider-supplied text fit for an error: the API key scrubbed out, then clipped.
fn provider_text(text: &str, api_key: &SecretString) -> String {
    let key = api_key.expose_secret();
    if key.len() >= MIN_SCRUBBED_KEY_LEN && text.contains(key) {
        clip(&text.replace(key, "[redacted]"))
    } else {
        clip(text)
    }
}

/// A reply parser's refusal made fit for an error: its reason may quote the reply, and so
/// whatever the reply quoted, the API key included.
fn scrub_reply_error(error: LlmError, api_key: &SecretString) -> LlmError {
    match error {
        LlmError::InvalidReply(reason) => LlmError::InvalidReply(provider_text(&reason, api_key)),
        other => other,
    }
}

/// The temperature as JSON, written the way it reads (`0.2`, not `0.20000000298023224` as a
/// widened `f32` would be). A temperature that is not a finite number cannot form a request.
fn wire_temperature(temperature: f32) -> Result<serde_json::Value, LlmError> {
    temperature
        .to_string()
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map(serde_json::Value::Number)
        .ok_or_else(|| LlmError::Client {
            status: 0,
            message: format!("temperature {temperature} is not a finite number"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_quota_and_client_errors_are_final() {
        let final_errors = [
            LlmError::QuotaExceeded("x".into()),
            LlmError::Client {
                status: 401,
                message: "x".into(),
            },
        ];
        assert!(final_errors.iter().all(|e| !e.is_retryable()));
        let retryable = [
            LlmError::Refused("x".into()),
            LlmError::Truncated("x".into()),
            LlmError::InvalidReply("x".into()),
            LlmError::RateLimited { retry_after: None },
            LlmError::Overloaded { retry_after: None },
            LlmError::Server {
                status: 500,
                message: "x".into(),
            },
            LlmError::Transport("x".into()),
        ];
        assert!(retryable.iter().all(LlmError::is_retryable));
    }

    #[test]
    fn retry_after_is_reported_only_for_throttling() {
        let wait = Some(Duration::from_secs(7));
        assert_eq!(
            LlmError::RateLimited { retry_after: wait }.retry_after(),
            wait
        );
        assert_eq!(
            LlmError::Overloaded { retry_after: wait }.retry_after(),
            wait
        );
        assert_eq!(
            LlmError::Server {
                status: 503,
                message: String::new()
            }
            .retry_after(),
            None
        );
        let text = LlmError::RateLimited { retry_after: wait }.to_string();
        assert!(text.contains("retry after 7s"), "{text}");
    }

    #[test]
    fn settings_debug_hides_the_key() {
        let settings = LlmSettings {
            base_url: "http://127.0.0.1:1/v1/".parse().unwrap(),
            model: "m".into(),
            api_key: SecretString::from("sk-very-secret-key"),
            temperature: 0.0,
            max_tokens: 10,
        };
        let shown = format!("{settings:?}");
        assert!(!shown.contains("sk-very-secret-key"), "{shown}");
        assert!(shown.contains("model"), "{shown}");
    }

    #[test]
    fn provider_text_scrubs_the_key_and_clips() {
        let key = SecretString::from("sk-live-0123456789");
        let echoed = format!(
            "Incorrect API key provided: sk-live-0123456789. {}",
            "x".repeat(500)
        );
        let shown = provider_text(&echoed, &key);
        assert!(!shown.contains("sk-live-0123456789"), "{shown}");
        assert!(shown.contains("[redacted]"));
        assert_eq!(shown.chars().count(), MESSAGE_LIMIT_CHARS + 1);
    }

    #[test]
    fn temperatures_are_sent_as_written() {
        assert_eq!(wire_temperature(0.2).unwrap().to_string(), "0.2");
        assert_eq!(wire_temperature(1.0).unwrap().to_string(), "1.0");
        for bad in [f32::NAN, f32::INFINITY] {
            assert!(matches!(
                wire_temperature(bad),
                Err(LlmError::Client { status: 0, .. })
            ));
        }
    }

    #[test]
    fn clip_respects_character_boundaries() {
        let text = "é".repeat(400);
        let clipped = clip(&text);
        assert_eq!(clipped.chars().count(), MESSAGE_LIMIT_CHARS + 1);
        assert_eq!(clip("short"), "short");
    }
}
