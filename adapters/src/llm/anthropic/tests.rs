use std::time::Duration;

use serde_json::{Value, json};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::*;
use crate::http::{HttpSettings, client};
use crate::llm::test_support::{API_KEY, only_request_body, proposal_json, request, settings};

const MODEL: &str = "claude-sonnet-4-5";

/// A Messages reply in the shape Anthropic sends.
fn message(content: Value, stop_reason: &str) -> Value {
    json!({
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": null,
        "usage": {"input_tokens": 1204, "output_tokens": 98,
                  "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
    })
}

fn tool_call(input: Value) -> Value {
    json!([{"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "propose_triage",
            "input": input}])
}

fn answering(input: Value) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(message(tool_call(input), "tool_use"))
}

fn error_reply(status: u16, kind: &str, text: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(json!({
        "type": "error",
        "error": {"type": kind, "message": text},
        "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy"
    }))
}

async fn server_replying(response: ResponseTemplate) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/messages"))
        .respond_with(response)
        .mount(&server)
        .await;
    server
}

async fn triage(server: &MockServer) -> Result<TriageReply, LlmError> {
    let http = client(&HttpSettings::default()).unwrap();
    Anthropic::new(settings(server, MODEL), http)
        .triage(&request())
        .await
}

async fn triage_with(response: ResponseTemplate) -> Result<TriageReply, LlmError> {
    triage(&server_replying(response).await).await
}

#[tokio::test]
async fn a_good_tool_call_becomes_a_proposal_with_provenance() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/messages"))
        .and(header("x-api-key", API_KEY))
        .and(header("anthropic-version", "2023-06-01"))
        .and(header("content-type", "application/json"))
        .respond_with(answering(proposal_json()))
        .expect(1)
        .mount(&server)
        .await;

    let reply = triage(&server).await.unwrap();

    assert_eq!(
        reply.proposal,
        parse_proposal(&proposal_json().to_string()).unwrap()
    );
    let p = &reply.provenance;
    assert_eq!(p.provider, "anthropic");
    assert_eq!(p.model_requested, MODEL);
    assert_eq!(p.model_reported, "claude-sonnet-4-5-20250929");
    assert_eq!(p.response_id, "msg_01XFDUDYJgAACzvnptvVoYEL");
    assert_eq!(p.prompt_version, PROMPT_VERSION);
    assert_eq!((p.temperature, p.max_tokens), (0.2, 1024));
    assert_eq!(
        p.usage,
        TokenUsage {
            input_tokens: 1204,
            output_tokens: 98
        }
    );
}

#[tokio::test]
async fn the_request_forces_the_triage_tool() {
    let server = server_replying(answering(proposal_json())).await;
    triage(&server).await.unwrap();

    let (system, user) = build_messages(&request());
    let expected = json!({
        "model": MODEL,
        "max_tokens": 1024,
        "temperature": 0.2,
        "system": system,
        "messages": [{"role": "user", "content": user}],
        "tools": [{
            "name": "propose_triage",
            "description": TOOL_DESCRIPTION,
            "input_schema": proposal_schema()
        }],
        "tool_choice": {"type": "tool", "name": "propose_triage"}
    });
    assert_eq!(only_request_body(&server).await, expected);
    let received = server.received_requests().await.unwrap();
    assert!(
        received[0].headers.get("authorization").is_none(),
        "the key goes in x-api-key only"
    );
}

#[tokio::test]
async fn text_before_the_tool_call_is_ignored() {
    let content = json!([
        {"type": "text", "text": "I'll record the triage now."},
        {"type": "tool_use", "id": "toolu_1", "name": "propose_triage", "input": proposal_json()}
    ]);
    let reply = triage_with(ResponseTemplate::new(200).set_body_json(message(content, "tool_use")))
        .await
        .unwrap();
    assert_eq!(reply.proposal.category, "email");
}

#[tokio::test]
async fn a_refusal_is_refused_not_a_proposal() {
    let content = json!([{"type": "text", "text": "I can't help with this request."}]);
    let err = triage_with(ResponseTemplate::new(200).set_body_json(message(content, "refusal")))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, LlmError::Refused(m) if m.contains("can't help")),
        "{err:?}"
    );

    let err = triage_with(ResponseTemplate::new(200).set_body_json(message(json!([]), "refusal")))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, LlmError::Refused(m) if m.contains("refusal")),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_reply_cut_at_max_tokens_is_truncated_even_with_a_tool_call() {
    let partial = tool_call(json!({"summary": "Mail delivery is fail"}));
    let err = triage_with(ResponseTemplate::new(200).set_body_json(message(partial, "max_tokens")))
        .await
        .unwrap_err();
    assert!(matches!(err, LlmError::Truncated(_)), "{err:?}");
}

#[tokio::test]
async fn a_reply_without_the_tool_call_is_invalid() {
    let text_only = json!([{"type": "text", "text": "{\"summary\":\"s\"}"}]);
    let other_tool = json!([{"type": "tool_use", "id": "t", "name": "close_incident",
                             "input": proposal_json()}]);
    for content in [text_only, other_tool, json!([])] {
        let body = message(content, "end_turn");
        let err = triage_with(ResponseTemplate::new(200).set_body_json(body))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, LlmError::InvalidReply(m) if m.contains("propose_triage")),
            "{err:?}"
        );
    }
}

#[tokio::test]
async fn schema_violations_in_the_tool_input_are_invalid() {
    let change = |field: &str, value: &str| json!({"field": field, "value": value});
    let many: Vec<Value> = (0..21).map(|i| change(&format!("f{i}"), "x")).collect();
    let cases = [
        (
            "extra field",
            json!({"summary": "s", "category": "c", "changes": [], "approved": true}),
        ),
        ("missing field", json!({"summary": "s", "category": "c"})),
        (
            "21 changes",
            json!({"summary": "s", "category": "c", "changes": many}),
        ),
        (
            "bad field name",
            json!({"summary": "s", "category": "c",
                                  "changes": [change("State", "6")]}),
        ),
        (
            "duplicate field",
            json!({"summary": "s", "category": "c",
                                   "changes": [change("urgency", "1"), change("urgency", "2")]}),
        ),
        (
            "huge value",
            json!({"summary": "s", "category": "c",
                              "changes": [change("work_notes", &"x".repeat(4001))]}),
        ),
        ("not an object", json!("escalate")),
        (
            "wrong type",
            json!({"summary": "s", "category": "c", "changes": [change("a", "b")],
                              "priority": 1}),
        ),
    ];
    for (case, input) in cases {
        let err = triage_with(answering(input)).await.unwrap_err();
        assert!(matches!(err, LlmError::InvalidReply(_)), "{case}: {err:?}");
    }
}

#[tokio::test]
async fn a_bad_key_is_a_client_error() {
    let server = server_replying(error_reply(
        401,
        "authentication_error",
        "invalid x-api-key",
    ))
    .await;
    let err = triage(&server).await.unwrap_err();
    let LlmError::Client {
        status: 401,
        message,
    } = &err
    else {
        panic!("{err:?}")
    };
    assert!(message.contains("authentication_error") && message.contains("invalid x-api-key"));
    assert!(
        message.contains("req_011CSHoEeqs5C35K2UUqR7Fy"),
        "request id kept for support"
    );
    assert!(!err.is_retryable());
    assert_eq!(
        server.received_requests().await.unwrap().len(),
        1,
        "no retry of its own"
    );
}

#[tokio::test]
async fn documented_4xx_errors_are_client_errors() {
    let cases = [
        (400, "invalid_request_error"),
        (402, "billing_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (413, "request_too_large"),
    ];
    for (status, kind) in cases {
        let err = triage_with(error_reply(status, kind, "no"))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, LlmError::Client { status: s, .. } if *s == status),
            "{err:?}"
        );
        assert!(!err.is_retryable());
    }
}

#[tokio::test]
async fn a_rate_limit_carries_retry_after() {
    let limited = error_reply(
        429,
        "rate_limit_error",
        "Number of request tokens has exceeded your per-minute rate limit",
    )
    .insert_header("retry-after", "17");
    let err = triage_with(limited).await.unwrap_err();
    assert!(matches!(err, LlmError::RateLimited { .. }), "{err:?}");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(17)));
    assert!(err.is_retryable());

    let without = triage_with(error_reply(429, "rate_limit_error", "slow down"))
        .await
        .unwrap_err();
    assert!(
        matches!(without, LlmError::RateLimited { retry_after: None }),
        "{without:?}"
    );
}

#[tokio::test]
async fn an_overload_is_retryable_with_its_wait() {
    let overloaded =
        error_reply(529, "overloaded_error", "Overloaded").insert_header("retry-after", "5");
    let err = triage_with(overloaded).await.unwrap_err();
    assert!(matches!(err, LlmError::Overloaded { .. }), "{err:?}");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(5)));
    assert!(err.is_retryable());
    assert_eq!(err.reason_code(), "llm_overloaded");
}

#[tokio::test]
async fn server_errors_are_retryable() {
    for (status, kind) in [(500, "api_error"), (504, "timeout_error")] {
        let err = triage_with(error_reply(status, kind, "Internal server error"))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, LlmError::Server { status: s, .. } if *s == status),
            "{err:?}"
        );
        assert!(err.is_retryable());
    }
}

#[tokio::test]
async fn a_garbage_body_is_handled_by_status() {
    for body in ["<html>oops</html>", "{\"content\": \"nope\"}", ""] {
        let err = triage_with(ResponseTemplate::new(200).set_body_string(body))
            .await
            .unwrap_err();
        assert!(matches!(err, LlmError::InvalidReply(_)), "{body}: {err:?}");
    }
    let err = triage_with(ResponseTemplate::new(500).set_body_string("<html>upstream</html>"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, LlmError::Server { status: 500, message } if message.contains("upstream"))
    );
}

#[tokio::test]
async fn an_oversized_body_is_not_read() {
    let huge = "x".repeat(transport::MAX_BODY_BYTES + 1);
    let err = triage_with(ResponseTemplate::new(200).set_body_string(huge.clone()))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, LlmError::InvalidReply(m) if m.contains("larger than")),
        "{err:?}"
    );
    let err = triage_with(ResponseTemplate::new(529).set_body_string(huge))
        .await
        .unwrap_err();
    assert!(matches!(err, LlmError::Overloaded { .. }), "{err:?}");
}

#[tokio::test]
async fn an_oversized_tool_input_is_invalid() {
    let input = json!({"summary": "s", "category": "c",
                       "changes": [{"field": "work_notes", "value": "x".repeat(70_000)}]});
    let err = triage_with(answering(input)).await.unwrap_err();
    assert!(
        matches!(&err, LlmError::InvalidReply(m) if m.contains("bytes")),
        "{err:?}"
    );
}

#[test]
fn the_provider_is_named_anthropic() {
    let s = LlmSettings {
        base_url: "http://127.0.0.1:1/v1/".parse().unwrap(),
        model: MODEL.into(),
        api_key: API_KEY.into(),
        temperature: 0.0,
        max_tokens: 1,
    };
    assert_eq!(
        Anthropic::new(s, reqwest::Client::new()).name(),
        "anthropic"
    );
}

#[tokio::test]
async fn a_reply_of_the_wrong_shape_is_invalid_without_quoting_the_key_or_all_of_itself() {
    let cases = [
        json!({"id": "msg_1", "content": API_KEY}),
        json!({"content": "x".repeat(5000)}),
        message(
            tool_call(json!({"summary": "s", "category": "c", "changes": API_KEY})),
            "tool_use",
        ),
    ];
    for body in cases {
        let err = triage_with(ResponseTemplate::new(200).set_body_json(body))
            .await
            .unwrap_err();
        let LlmError::InvalidReply(reason) = &err else {
            panic!("{err:?}")
        };
        assert!(!format!("{err} {err:?}").contains(API_KEY), "{err}");
        assert!(reason.chars().count() <= 301, "{reason}");
    }
}
