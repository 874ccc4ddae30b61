use std::time::Duration;

use serde_json::{Value, json};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::*;
use crate::http::{HttpSettings, client};
use crate::llm::test_support::{API_KEY, only_request_body, proposal_json, request, settings};

const MODEL: &str = "gpt-4o";

/// A Chat Completions reply in the shape OpenAI sends.
fn completion(content: Value, finish_reason: &str, refusal: Value) -> Value {
    json!({
        "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
        "object": "chat.completion",
        "created": 1741569952,
        "model": "gpt-4o-2024-08-06",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content, "refusal": refusal},
            "logprobs": null,
            "finish_reason": finish_reason
        }],
        "usage": {
            "prompt_tokens": 812, "completion_tokens": 61, "total_tokens": 873,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0}
        },
        "system_fingerprint": "fp_f9f4fb6dbf"
    })
}

fn answering(content: &Value) -> ResponseTemplate {
    let body = completion(Value::String(content.to_string()), "stop", Value::Null);
    ResponseTemplate::new(200).set_body_json(body)
}

async fn server_replying(response: ResponseTemplate) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(response)
        .mount(&server)
        .await;
    server
}

async fn triage(server: &MockServer) -> Result<TriageReply, LlmError> {
    let http = client(&HttpSettings::default()).unwrap();
    OpenAiCompatible::new(settings(server, MODEL), http)
        .triage(&request())
        .await
}

async fn triage_with(response: ResponseTemplate) -> Result<TriageReply, LlmError> {
    triage(&server_replying(response).await).await
}

fn error_reply(status: u16, message: &str, kind: &str, code: Value) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(json!({
        "error": {"message": message, "type": kind, "param": null, "code": code}
    }))
}

#[tokio::test]
async fn a_good_reply_becomes_a_proposal_with_provenance() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .and(header(
            "authorization",
            format!("Bearer {API_KEY}").as_str(),
        ))
        .and(header("content-type", "application/json"))
        .respond_with(answering(&proposal_json()))
        .expect(1)
        .mount(&server)
        .await;

    let reply = triage(&server).await.unwrap();

    assert_eq!(
        reply.proposal,
        parse_proposal(&proposal_json().to_string()).unwrap()
    );
    let p = &reply.provenance;
    assert_eq!(p.provider, "openai");
    assert_eq!(p.model_requested, MODEL);
    assert_eq!(p.model_reported, "gpt-4o-2024-08-06");
    assert_eq!(p.response_id, "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT");
    assert_eq!(p.prompt_version, PROMPT_VERSION);
    assert_eq!((p.temperature, p.max_tokens), (0.2, 1024));
    assert_eq!(
        p.usage,
        TokenUsage {
            input_tokens: 812,
            output_tokens: 61
        }
    );
}

#[tokio::test]
async fn the_request_has_the_exact_chat_completions_shape() {
    let server = server_replying(answering(&proposal_json())).await;
    triage(&server).await.unwrap();

    let (system, user) = build_messages(&request());
    let expected = json!({
        "model": MODEL,
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": user}
        ],
        "temperature": 0.2,
        "max_tokens": 1024,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "steward_triage", "schema": proposal_schema(), "strict": true}
        }
    });
    assert_eq!(only_request_body(&server).await, expected);
}

#[tokio::test]
async fn a_base_url_with_a_path_and_query_keeps_both() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/openai/deployments/triage/chat/completions"))
        .and(wiremock::matchers::query_param("api-version", "2024-10-21"))
        .respond_with(answering(&proposal_json()))
        .expect(1)
        .mount(&server)
        .await;
    let mut s = settings(&server, MODEL);
    s.base_url = format!(
        "{}/openai/deployments/triage?api-version=2024-10-21",
        server.uri()
    )
    .parse()
    .unwrap();
    let http = client(&HttpSettings::default()).unwrap();
    OpenAiCompatible::new(s, http)
        .triage(&request())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_refusal_is_refused_not_a_proposal() {
    let refusal = json!("I'm sorry, I can't help with that request.");
    let body = completion(Value::Null, "stop", refusal);
    let err = triage_with(ResponseTemplate::new(200).set_body_json(body))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, LlmError::Refused(m) if m.contains("can't help")),
        "{err:?}"
    );
    assert!(err.is_retryable());
}

#[tokio::test]
async fn a_content_filter_stop_is_refused() {
    let body = completion(Value::Null, "content_filter", Value::Null);
    let err = triage_with(ResponseTemplate::new(200).set_body_json(body))
        .await
        .unwrap_err();
    assert!(matches!(err, LlmError::Refused(_)), "{err:?}");
}

#[tokio::test]
async fn a_reply_cut_at_max_tokens_is_truncated() {
    let partial = json!(r#"{"summary":"Mail delivery is fail"#);
    let body = completion(partial, "length", Value::Null);
    let err = triage_with(ResponseTemplate::new(200).set_body_json(body))
        .await
        .unwrap_err();
    assert!(matches!(err, LlmError::Truncated(_)), "{err:?}");
    assert_eq!(err.reason_code(), "llm_truncated");
}

#[tokio::test]
async fn missing_content_or_choices_is_invalid() {
    let no_content = completion(Value::Null, "stop", Value::Null);
    let err = triage_with(ResponseTemplate::new(200).set_body_json(no_content))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, LlmError::InvalidReply(m) if m.contains("no content")),
        "{err:?}"
    );

    let mut no_choices = completion(Value::Null, "stop", Value::Null);
    no_choices["choices"] = json!([]);
    let err = triage_with(ResponseTemplate::new(200).set_body_json(no_choices))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, LlmError::InvalidReply(m) if m.contains("no choices")),
        "{err:?}"
    );
}

#[tokio::test]
async fn content_that_is_not_json_is_invalid() {
    let body = completion(json!("Here is my triage: escalate."), "stop", Value::Null);
    let err = triage_with(ResponseTemplate::new(200).set_body_json(body))
        .await
        .unwrap_err();
    assert!(matches!(err, LlmError::InvalidReply(_)), "{err:?}");
}

#[tokio::test]
async fn schema_violations_are_invalid_replies() {
    let change = |field: &str, value: &str| json!({"field": field, "value": value});
    let many: Vec<Value> = (0..21).map(|i| change(&format!("f{i}"), "x")).collect();
    let cases = [
        (
            "extra field",
            json!({"summary": "s", "category": "c", "changes": [], "approved": true}),
        ),
        ("missing field", json!({"summary": "s", "changes": []})),
        (
            "21 changes",
            json!({"summary": "s", "category": "c", "changes": many}),
        ),
        (
            "bad field name",
            json!({"summary": "s", "category": "c",
                                  "changes": [change("Priority; drop", "1")]}),
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
    ];
    for (case, content) in cases {
        let err = triage_with(answering(&content)).await.unwrap_err();
        assert!(matches!(err, LlmError::InvalidReply(_)), "{case}: {err:?}");
    }
}

#[tokio::test]
async fn a_bad_key_is_a_client_error_that_never_shows_the_key() {
    let echoed = format!("Incorrect API key provided: {API_KEY}. You can find your API key at …");
    let server = server_replying(error_reply(
        401,
        &echoed,
        "invalid_request_error",
        json!("invalid_api_key"),
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
    assert!(
        message.starts_with("Incorrect API key provided"),
        "{message}"
    );
    assert!(!format!("{err} {err:?}").contains(API_KEY));
    assert!(!err.is_retryable());
    assert_eq!(
        server.received_requests().await.unwrap().len(),
        1,
        "no retry of its own"
    );
}

#[tokio::test]
async fn other_4xx_statuses_are_client_errors() {
    for status in [400, 403, 404, 409, 422] {
        let err = triage_with(error_reply(
            status,
            "nope",
            "invalid_request_error",
            Value::Null,
        ))
        .await
        .unwrap_err();
        assert!(
            matches!(
                &err,
                LlmError::Client { status: s, message } if *s == status && message == "nope"
            ),
            "{status}: {err:?}"
        );
    }
}

#[tokio::test]
async fn a_rate_limit_carries_retry_after() {
    let limited = error_reply(
        429,
        "Rate limit reached for gpt-4o on tokens per min (TPM): Limit 30000, Used 30000.",
        "tokens",
        json!("rate_limit_exceeded"),
    );
    let err = triage_with(limited.clone().insert_header("retry-after", "20"))
        .await
        .unwrap_err();
    assert!(matches!(err, LlmError::RateLimited { .. }), "{err:?}");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(20)));
    assert!(err.is_retryable());

    let err = triage_with(limited.insert_header("retry-after-ms", "750"))
        .await
        .unwrap_err();
    assert_eq!(err.retry_after(), Some(Duration::from_millis(750)));
}

#[tokio::test]
async fn an_exhausted_quota_is_not_retryable() {
    let quota = error_reply(
        429,
        "You exceeded your current quota, please check your plan and billing details.",
        "insufficient_quota",
        json!("insufficient_quota"),
    );
    let err = triage_with(quota).await.unwrap_err();
    assert!(
        matches!(&err, LlmError::QuotaExceeded(m) if m.contains("current quota")),
        "{err:?}"
    );
    assert!(!err.is_retryable());
    assert_eq!(err.reason_code(), "llm_quota_exceeded");
}

#[tokio::test]
async fn server_errors_are_retryable() {
    for status in [500, 502, 503, 529] {
        let err = triage_with(error_reply(
            status,
            "The server had an error",
            "server_error",
            Value::Null,
        ))
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
async fn a_plain_text_error_body_becomes_the_message() {
    let html = ResponseTemplate::new(502).set_body_string("<html>Bad Gateway</html>");
    let err = triage_with(html).await.unwrap_err();
    assert!(
        matches!(&err, LlmError::Server { status: 502, message } if message.contains("Bad Gateway"))
    );

    let vllm = ResponseTemplate::new(400).set_body_json(
        json!({"object": "error", "message": "max_tokens is too large", "type": "BadRequestError",
               "param": null, "code": 400}),
    );
    let err = triage_with(vllm).await.unwrap_err();
    assert!(
        matches!(&err, LlmError::Client { message, .. } if message == "max_tokens is too large")
    );

    let empty = triage_with(ResponseTemplate::new(404)).await.unwrap_err();
    assert!(
        matches!(&empty, LlmError::Client { message, .. } if message == "Not Found"),
        "{empty:?}"
    );
}

#[tokio::test]
async fn a_garbage_success_body_is_invalid() {
    for body in ["not json at all", "{\"choices\": 7}", "[]", ""] {
        let err = triage_with(ResponseTemplate::new(200).set_body_string(body))
            .await
            .unwrap_err();
        assert!(matches!(err, LlmError::InvalidReply(_)), "{body}: {err:?}");
    }
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

    let err = triage_with(ResponseTemplate::new(503).set_body_string(huge))
        .await
        .unwrap_err();
    assert!(
        matches!(err, LlmError::Server { status: 503, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn long_provider_messages_are_clipped() {
    let err = triage_with(error_reply(
        400,
        &"y".repeat(10_000),
        "invalid_request_error",
        Value::Null,
    ))
    .await
    .unwrap_err();
    let LlmError::Client { message, .. } = err else {
        panic!()
    };
    assert!(message.chars().count() <= 301, "{}", message.len());
}

#[tokio::test]
async fn a_redirect_is_reported_not_followed() {
    let moved =
        ResponseTemplate::new(302).insert_header("location", "http://127.0.0.1:9/elsewhere");
    let err = triage_with(moved).await.unwrap_err();
    assert!(
        matches!(err, LlmError::Client { status: 302, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn an_unreachable_provider_is_a_transport_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut s = settings(&MockServer::start().await, MODEL);
    s.base_url = format!("http://127.0.0.1:{port}/v1/").parse().unwrap();
    let http = client(&HttpSettings::default()).unwrap();
    let err = OpenAiCompatible::new(s, http)
        .triage(&request())
        .await
        .unwrap_err();
    assert!(matches!(err, LlmError::Transport(_)), "{err:?}");
    assert!(err.is_retryable());
}

#[tokio::test]
async fn a_key_that_cannot_be_a_header_is_refused_before_sending() {
    let server = server_replying(answering(&proposal_json())).await;
    let mut s = settings(&server, MODEL);
    s.api_key = "sk-bad\nkey".into();
    let http = client(&HttpSettings::default()).unwrap();
    let err = OpenAiCompatible::new(s, http)
        .triage(&request())
        .await
        .unwrap_err();
    assert!(matches!(err, LlmError::Client { status: 0, .. }), "{err:?}");
    assert!(server.received_requests().await.unwrap().is_empty());
}

#[test]
fn the_provider_is_named_openai() {
    let s = LlmSettings {
        base_url: "http://127.0.0.1:1/v1/".parse().unwrap(),
        model: MODEL.into(),
        api_key: API_KEY.into(),
        temperature: 0.0,
        max_tokens: 1,
    };
    assert_eq!(
        OpenAiCompatible::new(s, reqwest::Client::new()).name(),
        "openai"
    );
}

#[tokio::test]
async fn a_reply_of_the_wrong_shape_is_invalid_without_quoting_the_key_or_all_of_itself() {
    let cases = [
        json!({"id": "chatcmpl-1", "choices": API_KEY}),
        json!({"choices": "x".repeat(5000)}),
        completion(
            Value::String(
                json!({"summary": "s", "category": "c",
                       "changes": [{"field": API_KEY, "value": "1"}]})
                .to_string(),
            ),
            "stop",
            Value::Null,
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
