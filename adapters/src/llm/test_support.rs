//! Fixtures shared by the provider tests.

use std::collections::BTreeMap;

use secrecy::SecretString;
use serde_json::{Value, json};
use steward_core::Incident;
use wiremock::MockServer;

use super::{LlmSettings, TriageRequest};

pub(super) const API_KEY: &str = "sk-test-4f9a2c61b7d0e8";

/// A proposal as the model would send it.
pub(super) fn proposal_json() -> Value {
    json!({
        "summary": "Mail delivery is failing for the Berlin office; route to Messaging.",
        "category": "email",
        "changes": [
            {"field": "urgency", "value": "1"},
            {"field": "assignment_group", "value": "8a4dde73c6112278017a6a4baf547aa7"}
        ]
    })
}

pub(super) fn request() -> TriageRequest {
    let fields: BTreeMap<String, String> = [
        ("number", "INC0010001"),
        ("short_description", "Outlook cannot send mail"),
        ("description", "Since 09:00 nobody in Berlin can send mail."),
        ("urgency", "3"),
        ("impact", "2"),
        ("state", "1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    TriageRequest {
        incident: Incident {
            sys_id: "a9e30c7dc61122760116894de7bcc7bd".into(),
            number: "INC0010001".into(),
            fields,
        },
        allowed_fields: vec!["urgency".into(), "assignment_group".into()],
    }
}

/// Settings pointing at the mock server, under `/v1/` like the real APIs.
pub(super) fn settings(server: &MockServer, model: &str) -> LlmSettings {
    LlmSettings {
        base_url: format!("{}/v1", server.uri()).parse().unwrap(),
        model: model.into(),
        api_key: SecretString::from(API_KEY),
        temperature: 0.2,
        max_tokens: 1024,
    }
}

/// The body of the one request the server received.
pub(super) async fn only_request_body(server: &MockServer) -> Value {
    let received = server.received_requests().await.unwrap();
    assert_eq!(received.len(), 1, "exactly one HTTP request per call");
    serde_json::from_slice(&received[0].body).unwrap()
}
