//! The Slack stand-in over real HTTP: Web API calls and their error codes, response URLs, and
//! clicks delivered to a loopback receiver whose signature is checked independently.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::Sha256;

use crate::standins::support::{BODY_LIMIT, unix_now};
use crate::standins::{SlackMessage, StandinSettings, Standins};

async fn start() -> Standins {
    Standins::start(StandinSettings::default()).await.unwrap()
}

fn token() -> String {
    StandinSettings::default().slack_bot_token
}

fn approval_blocks() -> Value {
    json!([
        {"type": "section", "block_id": "summary",
         "text": {"type": "mrkdwn", "text": "*INC0010001* proposed changes"}},
        {"type": "actions", "block_id": "decision", "elements": [
            {"type": "button", "action_id": "approve", "style": "primary",
             "text": {"type": "plain_text", "text": "Approve"}, "value": "approval:abc"},
            {"type": "button", "action_id": "reject", "style": "danger",
             "text": {"type": "plain_text", "text": "Reject"}, "value": "rejection:abc"},
        ]},
    ])
}

async fn call(standins: &Standins, method: &str, body: &Value) -> (StatusCode, Value) {
    let response = reqwest::Client::new()
        .post(format!("{}{method}", standins.slack_api_url()))
        .bearer_auth(token())
        .header("Content-Type", "application/json; charset=utf-8")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    (response.status(), response.json().await.unwrap())
}

async fn post_approval(standins: &Standins) -> Value {
    let body =
        json!({"channel": "C0APPROVAL1", "text": "Approval needed", "blocks": approval_blocks()});
    let (status, reply) = call(standins, "chat.postMessage", &body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(reply["ok"], true, "{reply}");
    reply
}

fn is_slack_ts(ts: &Value) -> bool {
    let Some((secs, micros)) = ts.as_str().and_then(|ts| ts.split_once('.')) else {
        return false;
    };
    secs.len() == 10
        && micros.len() == 6
        && secs
            .bytes()
            .chain(micros.bytes())
            .all(|b| b.is_ascii_digit())
}

#[tokio::test]
async fn post_message_answers_in_slacks_success_shape() {
    let standins = start().await;
    let reply = post_approval(&standins).await;
    assert_eq!(reply["channel"], "C0APPROVAL1");
    assert!(is_slack_ts(&reply["ts"]), "{reply}");
    assert_eq!(reply["message"]["ts"], reply["ts"]);
    assert_eq!(reply["message"]["type"], "message");
    assert_eq!(reply["message"]["text"], "Approval needed");
    assert_eq!(reply["message"]["blocks"], approval_blocks());
    assert!(
        reply["message"]["bot_id"]
            .as_str()
            .unwrap()
            .starts_with('B')
    );
    assert!(reply.get("warning").is_none());

    let messages = standins.slack_messages();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].ts, reply["ts"]);
    assert_eq!(messages[0].blocks, approval_blocks());
    assert_eq!(standins.counts().slack_posts, 1);
}

#[tokio::test]
async fn message_timestamps_strictly_increase() {
    let standins = start().await;
    let mut previous = String::new();
    for _ in 0..20 {
        let reply = post_approval(&standins).await;
        let ts = reply["ts"].as_str().unwrap().to_owned();
        assert!(ts > previous, "{ts} after {previous}");
        previous = ts;
    }
}

#[tokio::test]
async fn form_bodies_with_a_token_argument_are_accepted() {
    let standins = start().await;
    let blocks = approval_blocks().to_string();
    let form = [
        ("token", token()),
        ("channel", "#ops-approvals".to_owned()),
        ("text", "Approval needed".to_owned()),
        ("blocks", blocks),
    ];
    let response = reqwest::Client::new()
        .post(format!("{}chat.postMessage", standins.slack_api_url()))
        .form(&form)
        .send()
        .await
        .unwrap();
    let reply: Value = response.json().await.unwrap();
    assert_eq!(reply["ok"], true, "{reply}");
    let channel = reply["channel"].as_str().unwrap();
    assert!(channel.starts_with('C') && channel.len() == 11, "{channel}");
    assert_eq!(standins.slack_messages()[0].blocks, approval_blocks());
}

#[tokio::test]
async fn json_without_a_charset_is_accepted_with_a_warning() {
    let standins = start().await;
    let response = reqwest::Client::new()
        .post(format!("{}chat.postMessage", standins.slack_api_url()))
        .bearer_auth(token())
        .json(&json!({"channel": "C0APPROVAL1", "text": "hi"}))
        .send()
        .await
        .unwrap();
    let reply: Value = response.json().await.unwrap();
    assert_eq!(reply["ok"], true);
    assert_eq!(reply["warning"], "missing_charset");
    assert_eq!(
        reply["response_metadata"]["warnings"],
        json!(["missing_charset"])
    );
}

#[tokio::test]
async fn bad_or_missing_tokens_fail_with_http_200() {
    let standins = start().await;
    let url = format!("{}chat.postMessage", standins.slack_api_url());
    let body = json!({"channel": "C0APPROVAL1", "text": "hi"}).to_string();
    let http = reqwest::Client::new();
    let cases = [
        (None, "not_authed"),
        (Some("Bearer xoxb-wrong"), "invalid_auth"),
        (Some("Basic eG94Yjp4"), "invalid_auth"),
    ];
    for (authorization, code) in cases {
        let mut request = (http.post(&url))
            .header("Content-Type", "application/json; charset=utf-8")
            .body(body.clone());
        if let Some(value) = authorization {
            request = request.header("Authorization", value);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let reply: Value = response.json().await.unwrap();
        assert_eq!(reply, json!({"ok": false, "error": code}));
    }
    assert!(standins.slack_messages().is_empty());
}

#[tokio::test]
async fn post_message_needs_a_channel_and_some_content() {
    let standins = start().await;
    let cases = [
        (json!({"text": "hi"}), "channel_not_found"),
        (json!({"channel": "", "text": "hi"}), "channel_not_found"),
        (
            json!({"channel": "#Not A Name", "text": "hi"}),
            "channel_not_found",
        ),
        (json!({"channel": "C0APPROVAL1"}), "no_text"),
        (
            json!({"channel": "C0APPROVAL1", "text": "", "blocks": []}),
            "no_text",
        ),
        (
            json!({"channel": "C0APPROVAL1", "text": ["hi"]}),
            "invalid_arguments",
        ),
        (
            json!({"channel": "C0APPROVAL1", "blocks": [{"text": "x"}]}),
            "invalid_blocks",
        ),
        (
            json!({"channel": "C0APPROVAL1", "text": "x".repeat(40_001)}),
            "msg_too_long",
        ),
    ];
    for (body, code) in cases {
        let (status, reply) = call(&standins, "chat.postMessage", &body).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(reply["error"], code, "{body}");
        assert_eq!(reply["ok"], false);
    }
    assert_eq!(standins.counts().slack_posts, 0);
}

#[tokio::test]
async fn malformed_oversized_and_unknown_calls_get_slack_errors() {
    let standins = start().await;
    let http = reqwest::Client::new();
    let url = format!("{}chat.postMessage", standins.slack_api_url());
    let send = |content_type: &'static str, body: Vec<u8>| {
        (http.post(&url))
            .bearer_auth(token())
            .header("Content-Type", content_type)
            .body(body)
            .send()
    };
    let json_type = "application/json; charset=utf-8";
    let cases: [(&str, Vec<u8>, StatusCode, &str); 5] = [
        (
            json_type,
            b"{\"channel\":".to_vec(),
            StatusCode::OK,
            "invalid_json",
        ),
        (
            json_type,
            b"\"just a string\"".to_vec(),
            StatusCode::OK,
            "json_not_object",
        ),
        (json_type, vec![0xc3, 0x28], StatusCode::OK, "invalid_json"),
        (
            "text/plain",
            b"channel=C1&text=hi".to_vec(),
            StatusCode::OK,
            "invalid_post_type",
        ),
        (
            json_type,
            vec![b' '; BODY_LIMIT + 1],
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
        ),
    ];
    for (content_type, body, status, code) in cases {
        let response = send(content_type, body).await.unwrap();
        assert_eq!(response.status(), status, "{code}");
        let reply: Value = response.json().await.unwrap();
        assert_eq!(reply, json!({"ok": false, "error": code}));
    }
    let (status, reply) = call(&standins, "chat.delete", &json!({})).await;
    assert_eq!(
        (status, reply),
        (
            StatusCode::OK,
            json!({"ok": false, "error": "unknown_method"})
        )
    );
}

#[tokio::test]
async fn update_replaces_text_keeps_or_clears_blocks_and_records_bodies() {
    let standins = start().await;
    let posted = post_approval(&standins).await;
    let ts = posted["ts"].clone();

    let first = json!({"channel": "C0APPROVAL1", "ts": ts, "text": "Approved by Ana"});
    let (_, reply) = call(&standins, "chat.update", &first).await;
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(reply["ts"], ts);
    assert_eq!(reply["text"], "Approved by Ana");
    assert_eq!(reply["message"]["blocks"], approval_blocks());
    let kept = standins.slack_messages().remove(0);
    assert_eq!(kept.text, "Approved by Ana");
    assert_eq!(kept.blocks, approval_blocks());

    let second = json!({"channel": "C0APPROVAL1", "ts": ts, "text": "Done", "blocks": []});
    call(&standins, "chat.update", &second).await;
    let cleared = standins.slack_messages().remove(0);
    assert_eq!(cleared.blocks, json!([]));
    assert_eq!(cleared.updates, vec![first, second]);
    assert_eq!(standins.counts().slack_updates, 2);
}

#[tokio::test]
async fn update_errors_use_slacks_codes() {
    let standins = start().await;
    let posted = post_approval(&standins).await;
    let ts = posted["ts"].clone();
    let cases = [
        (
            json!({"channel": "C0APPROVAL1", "ts": "1.000001", "text": "x"}),
            "message_not_found",
        ),
        (
            json!({"channel": "C0OTHERCHAN", "ts": ts, "text": "x"}),
            "message_not_found",
        ),
        (
            json!({"channel": "C0APPROVAL1", "text": "x"}),
            "message_not_found",
        ),
        (
            json!({"channel": "#approvals", "ts": ts, "text": "x"}),
            "channel_not_found",
        ),
        (json!({"ts": ts, "text": "x"}), "channel_not_found"),
        (json!({"channel": "C0APPROVAL1", "ts": ts}), "no_text"),
    ];
    for (body, code) in cases {
        let (_, reply) = call(&standins, "chat.update", &body).await;
        assert_eq!(reply, json!({"ok": false, "error": code}), "{body}");
    }
    assert!(standins.slack_messages()[0].updates.is_empty());
}

#[tokio::test]
async fn ephemeral_messages_are_recorded() {
    let standins = start().await;
    let body =
        json!({"channel": "C0APPROVAL1", "user": "U0ANA", "text": "You may not approve this"});
    let (_, reply) = call(&standins, "chat.postEphemeral", &body).await;
    assert_eq!(reply["ok"], true);
    assert!(is_slack_ts(&reply["message_ts"]));
    let ephemerals = standins.ephemerals();
    assert_eq!(ephemerals.len(), 1);
    assert_eq!(ephemerals[0]["user"], "U0ANA");
    assert_eq!(ephemerals[0]["message_ts"], reply["message_ts"]);

    let (_, reply) = call(
        &standins,
        "chat.postEphemeral",
        &json!({"channel": "C0APPROVAL1", "text": "x"}),
    )
    .await;
    assert_eq!(reply["error"], "user_not_in_channel");
    assert!(standins.slack_messages().is_empty());
}

#[tokio::test]
async fn auth_test_names_the_bot() {
    let standins = start().await;
    let (_, reply) = call(&standins, "auth.test", &json!({})).await;
    assert_eq!(reply["ok"], true);
    assert!(reply["bot_id"].as_str().unwrap().starts_with('B'));
}

/// What a loopback interactions endpoint received.
#[derive(Debug, Clone)]
struct Received {
    headers: HeaderMap,
    body: String,
}

/// Starts a loopback receiver that records one request and answers 200 "ack".
async fn receiver() -> (
    String,
    Arc<Mutex<Vec<Received>>>,
    tokio::task::JoinHandle<()>,
) {
    let seen: Arc<Mutex<Vec<Received>>> = Arc::default();
    let app = axum::Router::new()
        .route(
            "/slack/interactions",
            post(
                |State(seen): State<Arc<Mutex<Vec<Received>>>>,
                 headers: HeaderMap,
                 body: String| async move {
                    seen.lock().unwrap().push(Received { headers, body });
                    "ack"
                },
            ),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/slack/interactions",
        listener.local_addr().unwrap()
    );
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (url, seen, task)
}

fn expected_signature(secret: &str, timestamp: &str, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(b"v0:");
    mac.update(timestamp.as_bytes());
    mac.update(b":");
    mac.update(body.as_bytes());
    format!("v0={}", hex::encode(mac.finalize().into_bytes()))
}

fn decoded_payload(body: &str) -> Value {
    let fields: Vec<(String, String)> = form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    assert_eq!(fields.len(), 1, "exactly one form field");
    assert_eq!(fields[0].0, "payload");
    serde_json::from_str(&fields[0].1).unwrap()
}

async fn first_message(standins: &Standins) -> SlackMessage {
    post_approval(standins).await;
    standins
        .wait_for_message(Duration::from_secs(1))
        .await
        .unwrap()
}

#[tokio::test]
async fn clicks_are_signed_block_actions_form_posts() {
    let standins = start().await;
    let (url, seen, receiver_task) = receiver().await;
    let message = first_message(&standins).await;

    let (status, body) = standins
        .click(&url, &message, "approve", "U0ANA", "ana")
        .await
        .unwrap();
    assert_eq!((status, body.as_str()), (200, "ack"));

    let received = seen.lock().unwrap().remove(0);
    let header = |name: &str| received.headers[name].to_str().unwrap().to_owned();
    assert_eq!(header("content-type"), "application/x-www-form-urlencoded");
    let timestamp = header("x-slack-request-timestamp");
    let sent_at: u64 = timestamp.parse().unwrap();
    assert!(unix_now().abs_diff(sent_at) <= 5);
    let secret = StandinSettings::default().slack_signing_secret;
    assert_eq!(
        header("x-slack-signature"),
        expected_signature(&secret, &timestamp, &received.body)
    );
    assert!(received.body.starts_with("payload="));

    let payload = decoded_payload(&received.body);
    assert_eq!(payload["type"], "block_actions");
    assert_eq!(payload["user"]["id"], "U0ANA");
    assert_eq!(payload["user"]["username"], "ana");
    assert_eq!(payload["user"]["name"], "ana");
    assert_eq!(payload["channel"]["id"], message.channel);
    assert_eq!(payload["container"]["type"], "message");
    assert_eq!(payload["container"]["message_ts"], message.ts);
    assert_eq!(payload["container"]["channel_id"], message.channel);
    assert_eq!(payload["message"]["ts"], message.ts);
    assert_eq!(payload["message"]["blocks"], message.blocks);
    let action = &payload["actions"][0];
    assert_eq!(action["action_id"], "approve");
    assert_eq!(action["value"], "approval:abc");
    assert_eq!(action["type"], "button");
    assert_eq!(action["block_id"], "decision");
    assert!(is_slack_ts(&action["action_ts"]));
    assert_eq!(payload["actions"].as_array().unwrap().len(), 1);
    let trigger_parts = payload["trigger_id"].as_str().unwrap().split('.').count();
    assert_eq!(trigger_parts, 3);
    let response_url = payload["response_url"].as_str().unwrap();
    let slack_base = standins.slack_api_url().trim_end_matches("api/").to_owned();
    assert!(
        response_url.starts_with(&format!("{slack_base}actions/")),
        "{response_url}"
    );
    receiver_task.abort();
}

#[tokio::test]
async fn response_urls_record_posts_and_refuse_garbage() {
    let standins = start().await;
    let (url, seen, receiver_task) = receiver().await;
    let message = first_message(&standins).await;
    standins
        .click(&url, &message, "reject", "U0ANA", "ana")
        .await
        .unwrap();
    let payload = decoded_payload(&seen.lock().unwrap()[0].body);
    let response_url = payload["response_url"].as_str().unwrap().to_owned();
    let http = reqwest::Client::new();

    let reply = json!({"replace_original": true, "text": "Rejected by ana"});
    let response = http.post(&response_url).json(&reply).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let responses = standins.responses();
    assert_eq!(
        responses,
        vec![json!({"message_ts": message.ts, "channel": message.channel, "body": reply})]
    );

    let garbage = http
        .post(&response_url)
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(garbage.status(), StatusCode::BAD_REQUEST);
    let unknown = response_url.rsplit_once('/').unwrap().0.to_owned() + "/unknown-token";
    let unknown = http.post(unknown).json(&reply).send().await.unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    assert_eq!(standins.responses().len(), 1);
    receiver_task.abort();
}

#[tokio::test]
async fn clicks_refuse_unknown_buttons_and_remote_urls() {
    let standins = start().await;
    let message = first_message(&standins).await;
    let local = "http://127.0.0.1:9/slack/interactions";
    let error = standins
        .click(local, &message, "escalate", "U0ANA", "ana")
        .await
        .unwrap_err();
    assert!(error.to_string().contains("escalate"), "{error}");
    let remote = "https://hooks.example.com/slack/interactions";
    let error = standins
        .click(remote, &message, "approve", "U0ANA", "ana")
        .await
        .unwrap_err();
    assert!(error.to_string().contains("loopback"), "{error}");
}

#[tokio::test]
async fn the_control_surface_clicks_and_reports_state() {
    let standins = start().await;
    let (url, seen, receiver_task) = receiver().await;
    let message = first_message(&standins).await;
    let http = reqwest::Client::new();
    let base = standins.slack_api_url().trim_end_matches("api/").to_owned();
    let click = json!({"interactions_url": url, "ts": message.ts, "action_id": "approve",
                       "user_id": "U0ANA", "user_name": "ana"});
    let response = http
        .post(format!("{base}_standin/click"))
        .json(&click)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let reply: Value = response.json().await.unwrap();
    assert_eq!(reply, json!({"ok": true, "status": 200, "body": "ack"}));
    assert_eq!(seen.lock().unwrap().len(), 1);

    let mut unknown = click.clone();
    unknown["ts"] = json!("1.000000");
    let response = http
        .post(format!("{base}_standin/click"))
        .json(&unknown)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let response = (http.post(format!("{base}_standin/click")))
        .header("Content-Type", "application/json")
        .body("{\"ts\":")
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
    assert_eq!(state["messages"][0]["ts"], message.ts);
    assert_eq!(state["counts"]["slack_posts"], 1);
    receiver_task.abort();
}

#[tokio::test]
async fn waiting_for_a_message_sees_a_later_post_and_times_out_without_one() {
    let standins = Arc::new(start().await);
    assert!(
        standins
            .wait_for_message(Duration::from_millis(50))
            .await
            .is_none()
    );

    let poster = standins.clone();
    let post = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        post_approval(&poster).await;
    });
    let message = standins
        .wait_for_message(Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(message.text, "Approval needed");
    post.await.unwrap();
}
