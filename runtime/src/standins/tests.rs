//! The stand-ins as a whole: addresses, URLs, shared counts, redaction and shutdown.

use std::net::SocketAddr;

use serde_json::json;

use super::*;

#[tokio::test]
async fn servers_start_on_loopback_with_the_documented_urls() {
    let standins = Standins::start(StandinSettings::default()).await.unwrap();
    for (url, suffix) in [
        (standins.servicenow_url(), ""),
        (standins.slack_api_url(), "/api/"),
        (standins.llm_base_url(), "/v1/"),
    ] {
        let rest = url.strip_prefix("http://127.0.0.1:").unwrap();
        let port = rest.strip_suffix(suffix).unwrap();
        assert!(port.parse::<u16>().unwrap() > 0, "{url}");
    }
    let line = standins.url_line();
    assert_eq!(line["servicenow"], standins.servicenow_url());
    assert_eq!(line["slack_api"], standins.slack_api_url());
    assert_eq!(line["llm"], standins.llm_base_url());
}

#[tokio::test]
async fn non_loopback_addresses_are_refused() {
    let loopback: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let public: SocketAddr = "0.0.0.0:0".parse().unwrap();
    let error = Standins::start_on(StandinSettings::default(), loopback, public, loopback)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("loopback"), "{error}");
}

#[tokio::test]
async fn every_server_reports_the_shared_counts() {
    let standins = Standins::start(StandinSettings::default()).await.unwrap();
    let settings = StandinSettings::default();
    let http = reqwest::Client::new();
    let reply = http
        .post(format!("{}chat.postMessage", standins.slack_api_url()))
        .bearer_auth(&settings.slack_bot_token)
        .header("Content-Type", "application/json; charset=utf-8")
        .body(json!({"channel": "C0APPROVAL1", "text": "hi"}).to_string())
        .send()
        .await
        .unwrap();
    assert!(reply.status().is_success());
    let form = [("grant_type", "password"), ("client_id", "wrong")];
    let token = http
        .post(format!("{}/oauth_token.do", standins.servicenow_url()))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(token.status(), reqwest::StatusCode::UNAUTHORIZED);

    let expected = Counts {
        oauth: 1,
        slack_posts: 1,
        ..Counts::default()
    };
    assert_eq!(standins.counts(), expected);
    let bases = [
        standins.servicenow_url(),
        standins.slack_api_url().replace("/api/", ""),
        standins.llm_base_url().replace("/v1/", ""),
    ];
    for base in bases {
        let state: serde_json::Value = (http.get(format!("{base}/_standin/state")).send().await)
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            state["counts"],
            serde_json::to_value(expected).unwrap(),
            "{base}"
        );
    }
}

#[tokio::test]
async fn dropping_the_standins_stops_the_servers() {
    let standins = Standins::start(StandinSettings::default()).await.unwrap();
    let url = format!("{}/_standin/state", standins.servicenow_url());
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    assert!(http.get(&url).send().await.is_ok());
    drop(standins);
    let mut refused = false;
    for _ in 0..50 {
        if http.get(&url).send().await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "the server still answers after drop");
}

#[test]
fn settings_debug_output_redacts_every_secret() {
    let settings = StandinSettings::default();
    let debug = format!("{settings:?}");
    for secret in [
        &settings.oauth_client_secret,
        &settings.sn_password,
        &settings.slack_bot_token,
        &settings.slack_signing_secret,
        &settings.llm_api_key,
    ] {
        assert!(!debug.contains(secret.as_str()), "{debug}");
    }
    assert!(debug.contains(&settings.sn_username));
}

#[test]
fn default_settings_are_realistic() {
    let settings = StandinSettings::default();
    assert!(settings.slack_bot_token.starts_with("xoxb-"));
    assert_eq!(settings.token_lifetime_secs, 1799);
    let LlmScript::Proposal(proposal) = &settings.llm_reply else {
        panic!("the default reply is a proposal");
    };
    assert!(proposal["summary"].is_string() && proposal["category"].is_string());
    let changes = proposal["changes"].as_array().unwrap();
    assert!(
        changes
            .iter()
            .all(|c| c["field"].is_string() && c["value"].is_string())
    );
}

#[test]
fn settings_deserialize_over_the_defaults() {
    let settings: StandinSettings = serde_json::from_value(
        json!({"token_lifetime_secs": 5, "llm_reply": {"kind": "raw_content", "value": "oops"}}),
    )
    .unwrap();
    assert_eq!(settings.token_lifetime_secs, 5);
    assert_eq!(settings.llm_reply, LlmScript::RawContent("oops".into()));
    assert_eq!(settings.sn_username, StandinSettings::default().sn_username);
}

#[test]
fn scripts_serialize_with_a_kind_tag() {
    let script = LlmScript::Refusal("no".into());
    assert_eq!(
        serde_json::to_value(&script).unwrap(),
        json!({"kind": "refusal", "value": "no"})
    );
    let script: LlmScript =
        serde_json::from_value(json!({"kind": "proposal", "value": {"a": 1}})).unwrap();
    assert_eq!(script, LlmScript::Proposal(json!({"a": 1})));
}
