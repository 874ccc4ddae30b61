//! Fault books: which requests a rule hits, how rules are checked, and what the client sees.

use std::time::Instant;

use serde_json::json;

use super::super::{StandinSettings, Standins};
use super::*;

fn rule(route: FaultRoute, action: FaultAction) -> FaultRule {
    FaultRule {
        route,
        action,
        times: None,
        probability: None,
        seed: None,
    }
}

fn server_error(status: u16) -> FaultAction {
    FaultAction::ServerError { status }
}

#[test]
fn requests_are_classified_by_vendor_method_and_path() {
    let cases = [
        (
            Vendor::ServiceNow,
            Method::POST,
            "/oauth_token.do",
            Some(FaultRoute::Oauth),
        ),
        (
            Vendor::ServiceNow,
            Method::GET,
            "/api/now/table/incident/abc",
            Some(FaultRoute::TableGet),
        ),
        (
            Vendor::ServiceNow,
            Method::GET,
            "/api/now/v2/table/incident",
            Some(FaultRoute::TableGet),
        ),
        (
            Vendor::ServiceNow,
            Method::PATCH,
            "/api/now/v1/table/incident/abc",
            Some(FaultRoute::TablePatch),
        ),
        (
            Vendor::ServiceNow,
            Method::GET,
            "/api/now/table/sys_journal_field",
            Some(FaultRoute::Journal),
        ),
        (
            Vendor::ServiceNow,
            Method::GET,
            "/api/now/table/cmdb_ci",
            None,
        ),
        (Vendor::ServiceNow, Method::GET, "/_standin/state", None),
        (
            Vendor::ServiceNow,
            Method::GET,
            "/api/now/v9/table/incident",
            None,
        ),
        (
            Vendor::Slack,
            Method::POST,
            "/api/chat.postMessage",
            Some(FaultRoute::ChatPostMessage),
        ),
        (
            Vendor::Slack,
            Method::POST,
            "/api/chat.update",
            Some(FaultRoute::ChatUpdate),
        ),
        (
            Vendor::Slack,
            Method::POST,
            "/api/chat.postEphemeral",
            Some(FaultRoute::ChatPostEphemeral),
        ),
        (Vendor::Slack, Method::POST, "/api/auth.test", None),
        (Vendor::Slack, Method::GET, "/api/chat.postMessage", None),
        (Vendor::Slack, Method::POST, "/_standin/click", None),
        (
            Vendor::Llm,
            Method::POST,
            "/v1/chat/completions",
            Some(FaultRoute::ChatCompletions),
        ),
        (Vendor::Llm, Method::GET, "/v1/models", None),
        (Vendor::Llm, Method::POST, "/api/chat.postMessage", None),
    ];
    for (vendor, method, path, expected) in cases {
        assert_eq!(
            FaultRoute::classify(vendor, &method, path),
            expected,
            "{vendor:?} {method} {path}"
        );
    }
}

#[test]
fn a_counted_rule_fires_for_exactly_the_next_n_requests() {
    let faults = Faults::new(Vendor::ServiceNow);
    let mut counted = rule(FaultRoute::TablePatch, server_error(503));
    counted.times = Some(2);
    faults.replace(vec![counted]).unwrap();
    assert_eq!(
        faults.decide(FaultRoute::TableGet),
        None,
        "another route is untouched"
    );
    assert_eq!(
        faults.decide(FaultRoute::TablePatch),
        Some(server_error(503))
    );
    assert_eq!(
        faults.decide(FaultRoute::TablePatch),
        Some(server_error(503))
    );
    assert_eq!(faults.decide(FaultRoute::TablePatch), None);
    let book = faults.json();
    assert_eq!(book["rules"][0]["hits"], 2);
    assert_eq!(book["rules"][0]["remaining"], 0);
}

#[test]
fn the_first_rule_that_fires_decides_and_a_spent_rule_gives_way() {
    let faults = Faults::new(Vendor::Slack);
    let mut first = rule(
        FaultRoute::ChatUpdate,
        FaultAction::SlackError {
            error: "ratelimited".into(),
        },
    );
    first.times = Some(1);
    let second = rule(FaultRoute::ChatUpdate, server_error(500));
    faults.replace(vec![first.clone(), second]).unwrap();
    assert_eq!(faults.decide(FaultRoute::ChatUpdate), Some(first.action));
    assert_eq!(
        faults.decide(FaultRoute::ChatUpdate),
        Some(server_error(500))
    );
    assert_eq!(
        faults.decide(FaultRoute::ChatUpdate),
        Some(server_error(500)),
        "no count: always"
    );
}

fn draws(seed: u64, probability: f64) -> Vec<bool> {
    let faults = Faults::new(Vendor::Llm);
    let mut random = rule(FaultRoute::ChatCompletions, FaultAction::LlmOverloaded);
    random.probability = Some(probability);
    random.seed = Some(seed);
    faults.replace(vec![random]).unwrap();
    (0..200)
        .map(|_| faults.decide(FaultRoute::ChatCompletions).is_some())
        .collect()
}

#[test]
fn a_seeded_probability_replays_the_same_hits() {
    let first = draws(42, 0.3);
    assert_eq!(first, draws(42, 0.3));
    assert_ne!(first, draws(43, 0.3));
    let hits = first.iter().filter(|hit| **hit).count();
    assert!((30..=90).contains(&hits), "{hits} hits of 200 at p = 0.3");
    assert!(draws(7, 0.0).iter().all(|hit| !hit));
    assert!(draws(7, 1.0).iter().all(|hit| *hit));
}

#[test]
fn probability_and_count_together_cap_the_hits() {
    let faults = Faults::new(Vendor::Llm);
    let mut capped = rule(FaultRoute::ChatCompletions, FaultAction::OpenaiServerError);
    capped.probability = Some(0.5);
    capped.times = Some(3);
    capped.seed = Some(9);
    faults.replace(vec![capped]).unwrap();
    let hits = (0..100)
        .filter(|_| faults.decide(FaultRoute::ChatCompletions).is_some())
        .count();
    assert_eq!(hits, 3);
}

/// Whether an error is the one expected.
type ErrorTest = fn(&FaultError) -> bool;

#[test]
fn rules_that_do_not_fit_the_server_are_refused_and_change_nothing() {
    let faults = Faults::new(Vendor::ServiceNow);
    let kept = rule(FaultRoute::Oauth, server_error(502));
    faults.replace(vec![kept]).unwrap();
    let slack_error = FaultAction::SlackError {
        error: "invalid_auth".into(),
    };
    let cases: Vec<(FaultRule, ErrorTest)> = vec![
        (rule(FaultRoute::ChatUpdate, server_error(500)), |e| {
            matches!(e, FaultError::WrongServer(..))
        }),
        (rule(FaultRoute::TableGet, slack_error), |e| {
            matches!(e, FaultError::WrongAction(..))
        }),
        (
            rule(FaultRoute::TableGet, FaultAction::LlmOverloaded),
            |e| matches!(e, FaultError::WrongAction(..)),
        ),
        (rule(FaultRoute::TableGet, server_error(429)), |e| {
            matches!(e, FaultError::NotAServerError(_, 429))
        }),
        (rule(FaultRoute::TableGet, server_error(600)), |e| {
            matches!(e, FaultError::NotAServerError(..))
        }),
        (
            rule(FaultRoute::TableGet, FaultAction::Delay { ms: 600_001 }),
            |e| matches!(e, FaultError::TooLong(0)),
        ),
        (
            rule(
                FaultRoute::TableGet,
                FaultAction::Reset { after_ms: u64::MAX },
            ),
            |e| matches!(e, FaultError::TooLong(0)),
        ),
        (
            rule(FaultRoute::TableGet, FaultAction::RetryAfter { secs: 601 }),
            |e| matches!(e, FaultError::TooLong(0)),
        ),
    ];
    for (bad, expected) in cases {
        let error = faults.replace(vec![bad.clone()]).unwrap_err();
        assert!(expected(&error), "{bad:?} gave {error}");
    }
    for probability in [-0.1, 1.5, f64::NAN] {
        let mut bad = rule(FaultRoute::TableGet, server_error(500));
        bad.probability = Some(probability);
        assert_eq!(
            faults.replace(vec![bad]).unwrap_err(),
            FaultError::Probability(0)
        );
    }
    let too_many = vec![rule(FaultRoute::TableGet, server_error(500)); MAX_RULES + 1];
    assert_eq!(
        faults.replace(too_many).unwrap_err(),
        FaultError::TooManyRules(MAX_RULES + 1)
    );
    assert_eq!(
        faults.decide(FaultRoute::Oauth),
        Some(server_error(502)),
        "the old book stands"
    );
}

#[test]
fn slack_error_codes_must_look_like_slack_codes() {
    let faults = Faults::new(Vendor::Slack);
    for code in [
        "",
        "Not_Authed",
        "a b",
        "x\u{0}",
        &"a".repeat(65),
        "<script>",
    ] {
        let bad = rule(
            FaultRoute::ChatPostMessage,
            FaultAction::SlackError { error: code.into() },
        );
        assert_eq!(
            faults.replace(vec![bad]).unwrap_err(),
            FaultError::ErrorCode(0),
            "{code:?}"
        );
    }
}

async fn put_faults(url: &str, body: String) -> (u16, Value) {
    let response = reqwest::Client::new()
        .put(format!("{url}/_standin/faults"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn the_control_endpoint_takes_a_book_and_refuses_malformed_or_hostile_ones() {
    let standins = Standins::start(StandinSettings::default()).await.unwrap();
    let url = standins.servicenow_url();
    let good = json!({"rules": [{"route": "table_patch", "action": {"kind": "reset", "after_ms": 5}, "times": 1}]});
    let (status, book) = put_faults(&url, good.to_string()).await;
    assert_eq!(status, 200, "{book}");
    assert_eq!(book["rules"][0]["remaining"], 1);
    let oversized = format!(
        "{{\"rules\": [], \"pad\": \"{}\"}}",
        "x".repeat(2 * 1024 * 1024)
    );
    let hostile = [
        "not json".to_owned(),
        "[]".to_owned(),
        json!({"rules": [{"route": "table_delete", "action": {"kind": "reset"}}]}).to_string(),
        json!({"rules": [{"route": "table_get", "action": {"kind": "explode"}}]}).to_string(),
        json!({"rules": [{"route": "table_get", "action": {"kind": "delay", "ms": -1}}]}).to_string(),
        json!({"rules": [{"route": "table_get", "action": {"kind": "delay", "ms": 1}, "extra": 1}]}).to_string(),
        json!({"rules": [{"route": "chat.update", "action": {"kind": "reset"}}]}).to_string(),
        oversized,
    ];
    for body in hostile {
        let (status, reply) = put_faults(&url, body.clone()).await;
        assert_eq!(status, 400, "{}", &body[..body.len().min(80)]);
        assert_eq!(reply["ok"], false);
    }
    let shown: Value = reqwest::get(format!("{url}/_standin/faults"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        shown["rules"].as_array().unwrap().len(),
        1,
        "refused books change nothing"
    );
}

#[tokio::test]
async fn injected_faults_reach_the_client_in_each_vendors_format() {
    let standins = Standins::start(StandinSettings::default()).await.unwrap();
    let once = |route, action| FaultRule {
        times: Some(1),
        ..rule(route, action)
    };
    standins
        .set_faults(vec![
            once(
                FaultRoute::Oauth,
                FaultAction::ServicenowRateLimit {
                    limit: 10,
                    reset_in_secs: 120,
                },
            ),
            once(
                FaultRoute::ChatPostMessage,
                FaultAction::SlackError {
                    error: "channel_not_found".into(),
                },
            ),
            once(FaultRoute::ChatUpdate, FaultAction::RetryAfter { secs: 7 }),
            once(FaultRoute::ChatCompletions, FaultAction::LlmOverloaded),
        ])
        .unwrap();
    let http = reqwest::Client::new();

    let limited = http
        .post(format!("{}/oauth_token.do", standins.servicenow_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(limited.status(), 429);
    let reset: u64 = limited.headers()["x-ratelimit-reset"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        reset >= support::unix_now() + 100,
        "the reset is a Unix time in the future"
    );
    assert_eq!(limited.headers()["x-ratelimit-limit"], "10");
    assert_eq!(limited.headers()["retry-after"], "120");
    let body: Value = limited.json().await.unwrap();
    assert_eq!(body["status"], "failure");
    assert_eq!(body["error"]["message"], "Rate limit exceeded");

    let posted: Value = http
        .post(format!("{}chat.postMessage", standins.slack_api_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(posted, json!({"ok": false, "error": "channel_not_found"}));
    let updated = http
        .post(format!("{}chat.update", standins.slack_api_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(updated.status(), 429);
    assert_eq!(updated.headers()["retry-after"], "7");
    assert_eq!(
        updated.json::<Value>().await.unwrap()["error"],
        "ratelimited"
    );

    let overloaded = http
        .post(format!("{}chat/completions", standins.llm_base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(overloaded.status().as_u16(), 529);
    assert_eq!(
        overloaded.json::<Value>().await.unwrap()["error"]["type"],
        "overloaded_error"
    );

    let next = http
        .post(format!("{}chat.postMessage", standins.slack_api_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        next.json::<Value>().await.unwrap()["error"],
        "not_authed",
        "spent: the real handler answers"
    );
}

#[tokio::test]
async fn a_reset_never_reaches_the_handler_a_lost_reply_does_and_a_delay_only_waits() {
    let standins = Standins::start(StandinSettings::default()).await.unwrap();
    let settings = StandinSettings::default();
    let once = |action| FaultRule {
        times: Some(1),
        ..rule(FaultRoute::ChatPostMessage, action)
    };
    standins
        .set_faults(vec![once(FaultAction::Reset { after_ms: 0 })])
        .unwrap();
    let post = || {
        reqwest::Client::new()
            .post(format!("{}chat.postMessage", standins.slack_api_url()))
            .bearer_auth(&settings.slack_bot_token)
            .json(&json!({"channel": "C0APPROVAL1", "text": "hi"}))
            .send()
    };
    let dropped = match post().await {
        Ok(response) => response.bytes().await.map(|_| ()),
        Err(error) => Err(error),
    };
    assert!(dropped.is_err(), "the client sees a broken connection");
    assert!(
        standins.slack_messages().is_empty(),
        "the post never happened"
    );

    standins
        .set_faults(vec![once(FaultAction::LoseReply { after_ms: 0 })])
        .unwrap();
    assert!(post().await.is_err(), "the reply is lost");
    assert_eq!(standins.slack_messages().len(), 1, "but the post happened");

    standins
        .set_faults(vec![once(FaultAction::Delay { ms: 300 })])
        .unwrap();
    let started = Instant::now();
    let held: Value = post().await.unwrap().json().await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(held["ok"], true, "{held}");
    assert_eq!(standins.slack_messages().len(), 2);
}

#[tokio::test]
async fn server_errors_use_the_vendors_error_bodies() {
    for (vendor, status, pointer, expected) in [
        (Vendor::ServiceNow, 503, "/status", json!("failure")),
        (Vendor::Slack, 500, "/ok", json!(false)),
        (Vendor::Llm, 502, "/error/type", json!("server_error")),
    ] {
        let response = fault_response(vendor, &server_error(status));
        assert_eq!(response.status().as_u16(), status);
        let bytes = axum::body::to_bytes(response.into_body(), 4096)
            .await
            .unwrap();
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(body.pointer(pointer), Some(&expected), "{vendor:?}: {body}");
    }
    let openai = fault_response(Vendor::Llm, &FaultAction::OpenaiServerError);
    assert_eq!(openai.status(), 500);
}
