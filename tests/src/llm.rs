//! An OpenAI-compatible Chat Completions endpoint on loopback that answers every request the same
//! scripted way: one assistant message in the real response shape, or one error.

use serde_json::{Value, json};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

/// The API key the tenant is configured with; the mock refuses any other.
pub const API_KEY: &str = "sk-e2e-0000000000000000000000000000";
/// The model the tenant asks for.
pub const MODEL: &str = "gpt-4o-mini";

/// The mock provider.
pub struct LlmMock {
    server: MockServer,
}

impl LlmMock {
    /// Starts a provider that answers every request with `answer`.
    pub async fn start(answer: ResponseTemplate) -> Self {
        let server = MockServer::start().await;
        let bearer = format!("Bearer {API_KEY}");
        Mock::given(method("POST"))
            .and(path("/v1/chat/completions"))
            .and(header("authorization", bearer.as_str()))
            .respond_with(answer)
            .mount(&server)
            .await;
        Self { server }
    }

    /// The base URL a tenant is configured with (`…/v1`).
    pub fn base_url(&self) -> String {
        format!("{}/v1", self.server.uri())
    }

    /// Every request received, in order.
    pub async fn requests(&self) -> Vec<Request> {
        self.server.received_requests().await.unwrap_or_default()
    }
}

/// A successful answer whose assistant message is `content`.
pub fn answering(content: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(completion(content))
}

/// An error answer in OpenAI's envelope.
pub fn error(status: u16, kind: &str, code: &str, message: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(json!({
        "error": {"message": message, "type": kind, "param": null, "code": code},
    }))
}

/// A `chat.completion` whose first choice's message is `content`.
pub fn completion(content: &str) -> Value {
    json!({
        "id": "chatcmpl-e2e0000000000000000000001",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content, "refusal": null},
            "finish_reason": "stop",
            "logprobs": null,
        }],
        "usage": {"prompt_tokens": 812, "completion_tokens": 164, "total_tokens": 976},
        "system_fingerprint": "fp_e2e",
    })
}
