//! The LLM stand-in over real HTTP: reply shapes for each script, OpenAI's error envelope, and
//! malformed or oversized requests.

use reqwest::StatusCode;
use serde_json::{Value, json};

use super::*;
use crate::standins::{StandinSettings, Standins};

async fn start_with(script: LlmScript) -> Standins {
    let settings = StandinSettings {
        llm_reply: script,
        ..StandinSettings::default()
    };
    Standins::start(settings).await.unwrap()
}

fn request(model: &str) -> Value {
    json!({
        "model": model,
        "temperature": 0,
        "max_tokens": 800,
        "messages": [
            {"role": "system", "content": "You triage incidents. Reply with JSON only."},
            {"role": "user", "content": [{"type": "text", "text": "INC0010001: checkout 502s"}]},
        ],
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "triage", "strict": true, "schema": {}},
        },
    })
}

async fn complete(standins: &Standins, key: &str, body: Vec<u8>) -> (StatusCode, HeaderMap, Value) {
    let response = reqwest::Client::new()
        .post(format!("{}chat/completions", standins.llm_base_url()))
        .bearer_auth(key)
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    (status, headers, response.json().await.unwrap())
}

async fn complete_ok(standins: &Standins, body: &Value) -> Value {
    let key = StandinSettings::default().llm_api_key;
    let (status, headers, reply) = complete(standins, &key, body.to_string().into_bytes()).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert!(
        headers["x-request-id"]
            .to_str()
            .unwrap()
            .starts_with("req_")
    );
    reply
}

fn proposal() -> Value {
    json!({"summary": "Pool exhausted", "category": "database",
           "changes": [{"field": "urgency", "value": "1"}]})
}

#[tokio::test]
async fn proposals_come_back_as_json_content_in_the_completion_shape() {
    let standins = start_with(LlmScript::Proposal(proposal())).await;
    let reply = complete_ok(&standins, &request("gpt-4o")).await;
    assert!(reply["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(reply["object"], "chat.completion");
    assert!(reply["created"].as_u64().unwrap() > 1_700_000_000);
    assert_eq!(reply["model"], "gpt-4o-2024-08-06");
    assert!(
        reply["system_fingerprint"]
            .as_str()
            .unwrap()
            .starts_with("fp_")
    );
    let choice = &reply["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["finish_reason"], "stop");
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["refusal"], Value::Null);
    let content: Value =
        serde_json::from_str(choice["message"]["content"].as_str().unwrap()).unwrap();
    assert_eq!(content, proposal());
    let usage = &reply["usage"];
    let (prompt, completion) = (
        usage["prompt_tokens"].as_u64().unwrap(),
        usage["completion_tokens"].as_u64().unwrap(),
    );
    assert!(prompt > 0 && completion > 0);
    assert_eq!(usage["total_tokens"].as_u64().unwrap(), prompt + completion);

    assert_eq!(standins.llm_requests(), vec![request("gpt-4o")]);
    assert_eq!(standins.counts().llm_calls, 1);
}

#[tokio::test]
async fn raw_content_is_returned_verbatim() {
    let standins = start_with(LlmScript::RawContent("Sure! {\"summary\": ".into())).await;
    let reply = complete_ok(&standins, &request("gpt-4o-mini")).await;
    assert_eq!(
        reply["choices"][0]["message"]["content"],
        "Sure! {\"summary\": "
    );
    assert_eq!(reply["model"], "gpt-4o-mini-2024-08-06");
}

#[tokio::test]
async fn refusals_set_refusal_and_null_content() {
    let standins = start_with(LlmScript::Refusal("I can't help with that.".into())).await;
    let reply = complete_ok(&standins, &request("gpt-4o-2024-11-20")).await;
    let message = &reply["choices"][0]["message"];
    assert_eq!(message["content"], Value::Null);
    assert_eq!(message["refusal"], "I can't help with that.");
    assert_eq!(reply["choices"][0]["finish_reason"], "stop");
    assert_eq!(reply["model"], "gpt-4o-2024-11-20");
}

#[tokio::test]
async fn replies_longer_than_max_tokens_are_cut_with_finish_reason_length() {
    let standins = start_with(LlmScript::RawContent("x".repeat(400))).await;
    let mut body = request("gpt-4o");
    body["max_completion_tokens"] = json!(10);
    let reply = complete_ok(&standins, &body).await;
    assert_eq!(reply["choices"][0]["finish_reason"], "length");
    assert_eq!(reply["choices"][0]["message"]["content"], "x".repeat(40));
    assert_eq!(reply["usage"]["completion_tokens"], 10);
}

#[tokio::test]
async fn the_script_can_be_changed_in_process_and_over_http() {
    let standins = start_with(LlmScript::RawContent("first".into())).await;
    standins.set_llm_reply(LlmScript::RawContent("second".into()));
    let reply = complete_ok(&standins, &request("gpt-4o")).await;
    assert_eq!(reply["choices"][0]["message"]["content"], "second");

    let base = standins.llm_base_url().trim_end_matches("v1/").to_owned();
    let http = reqwest::Client::new();
    let script = json!({"kind": "refusal", "value": "no"});
    let response = http
        .put(format!("{base}_standin/llm_reply"))
        .json(&script)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let reply = complete_ok(&standins, &request("gpt-4o")).await;
    assert_eq!(reply["choices"][0]["message"]["refusal"], "no");

    let bad = json!({"kind": "shout", "value": 1});
    let response = http
        .put(format!("{base}_standin/llm_reply"))
        .json(&bad)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let state: Value = http
        .get(format!("{base}_standin/state"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(state["script"], script);
    assert_eq!(state["requests"].as_array().unwrap().len(), 2);
    assert_eq!(state["counts"]["llm_calls"], 2);
}

#[tokio::test]
async fn wrong_or_missing_keys_get_openais_401_envelope() {
    let standins = start_with(LlmScript::Proposal(proposal())).await;
    let body = request("gpt-4o").to_string().into_bytes();
    let wrong = "sk-proj-wrongwrongwrongwrong1234";
    let (status, _, reply) = complete(&standins, wrong, body.clone()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply["error"]["type"], "invalid_request_error");
    assert_eq!(reply["error"]["code"], "invalid_api_key");
    assert_eq!(reply["error"]["param"], Value::Null);
    let message = reply["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("Incorrect API key provided: sk-"),
        "{message}"
    );
    assert!(
        message.contains("1234") && !message.contains(wrong),
        "{message}"
    );

    let response = reqwest::Client::new()
        .post(format!("{}chat/completions", standins.llm_base_url()))
        .json(&request("gpt-4o"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let reply: Value = response.json().await.unwrap();
    assert_eq!(reply["error"]["code"], Value::Null);
    assert!(standins.llm_requests().is_empty());
}

#[tokio::test]
async fn malformed_and_oversized_requests_get_openai_errors() {
    let standins = start_with(LlmScript::Proposal(proposal())).await;
    let key = StandinSettings::default().llm_api_key;
    let mut no_model = request("gpt-4o");
    no_model.as_object_mut().unwrap().remove("model");
    let mut empty = request("gpt-4o");
    empty["messages"] = json!([]);
    let mut streaming = request("gpt-4o");
    streaming["stream"] = json!(true);
    let mut numeric_model = request("gpt-4o");
    numeric_model["model"] = json!(4);
    let cases: [(Vec<u8>, StatusCode, Value, Value); 7] = [
        (
            b"{\"model\":".to_vec(),
            StatusCode::BAD_REQUEST,
            Value::Null,
            Value::Null,
        ),
        (
            b"[]".to_vec(),
            StatusCode::BAD_REQUEST,
            Value::Null,
            Value::Null,
        ),
        (
            no_model.to_string().into(),
            StatusCode::BAD_REQUEST,
            json!("model"),
            json!("missing_required_parameter"),
        ),
        (
            empty.to_string().into(),
            StatusCode::BAD_REQUEST,
            json!("messages"),
            json!("empty_array"),
        ),
        (
            streaming.to_string().into(),
            StatusCode::BAD_REQUEST,
            json!("stream"),
            json!("unsupported_value"),
        ),
        (
            numeric_model.to_string().into(),
            StatusCode::BAD_REQUEST,
            json!("model"),
            json!("invalid_type"),
        ),
        (
            vec![b' '; BODY_LIMIT + 1],
            StatusCode::PAYLOAD_TOO_LARGE,
            Value::Null,
            Value::Null,
        ),
    ];
    for (body, status, param, code) in cases {
        let (got, _, reply) = complete(&standins, &key, body).await;
        assert_eq!(got, status, "{reply}");
        assert_eq!(reply["error"]["param"], param, "{reply}");
        assert_eq!(reply["error"]["code"], code, "{reply}");
        assert!(reply["error"]["message"].is_string());
    }
    assert_eq!(standins.counts().llm_calls, 0);
}

#[tokio::test]
async fn models_are_listed_and_unknown_urls_get_the_envelope() {
    let standins = start_with(LlmScript::Proposal(proposal())).await;
    let key = StandinSettings::default().llm_api_key;
    let http = reqwest::Client::new();
    let response = http
        .get(format!("{}models", standins.llm_base_url()))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    let models: Value = response.json().await.unwrap();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["object"], "model");
    let response = http
        .post(format!("{}chat/completion", standins.llm_base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let reply: Value = response.json().await.unwrap();
    assert_eq!(
        reply["error"]["message"],
        "Invalid URL (POST /v1/chat/completion)"
    );
}

#[test]
fn dated_model_names_are_recognised() {
    assert!(has_snapshot_suffix("gpt-4o-2024-08-06"));
    assert!(!has_snapshot_suffix("gpt-4o"));
    assert!(!has_snapshot_suffix("2024-08-06"));
    assert!(!has_snapshot_suffix("gpt-4o-2024-0806x"));
    assert!(!has_snapshot_suffix(""));
    assert_eq!(reported_model("llama3.1"), "llama3.1-2024-08-06");
}

#[test]
fn keys_are_masked_to_their_ends() {
    assert_eq!(mask("sk-abcdefghijkl1234"), "sk-************1234");
    assert_eq!(mask("short"), "*****");
    assert_eq!(mask("ключ-ключ-ключ"), "клю*******ключ");
}
