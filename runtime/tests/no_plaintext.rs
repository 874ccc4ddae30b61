//! No secret leaves in plain text: the whole incident-triage path runs with recognizable secret
//! values, then every place this test can reach is searched for them: the logs at TRACE, every
//! API answer, crash snapshots, the audit log and the raw database files. Requests carrying
//! recognizable credentials that are refused (bearer tokens, webhook and Slack signatures, an
//! ops sign-in) go through the rate limiter too, and neither their credentials nor the valid
//! signatures and session cookie of the accepted requests appear in any log line.
//!
//! Tenant content is sealed at rest: the incident's text, the model's reply and the prompt
//! built from them appear in no raw row of any table and in no byte of the database files,
//! while the store reads them back for the run.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use secrecy::SecretString;
use serde_json::{Map, Value, json};
use steward_actors::settings::{LlmConfig, ServiceNowSettings, SlackSettings, TenantSettings};
use steward_actors::{secret_names, states};
use steward_adapters::http::HttpSettings;
use steward_adapters::slack::{APPROVE_ACTION, sign_slack};
use steward_adapters::webhook::{WebhookSecret, sign_standard};
use steward_api::{RateLimit, RateLimits};
use steward_core::{Clock, RunId, SourceName, SystemClock, TenantId};
use steward_persistence::{Authenticator, MasterKey, TenantScope, WebhookSource};
use steward_runtime::boot::{self, ServeOptions, TenantSpec};
use steward_runtime::standins::{LlmScript, StandinSettings, Standins};

const TENANT: &str = "us-canary";
const CHANNEL: &str = "C0CANARY001";
const APPROVER: (&str, &str) = ("U0CANARY001", "ana.canary");
const MASTER_KEY_HEX: &str = "c4a7c4a7c4a7c4a7c4a7c4a7c4a7c4a7c4a7c4a7c4a7c4a7c4a7c4a7c4a7c4a7";
const API_TOKEN: &str = "canary-api-token-7f3a91c2";
const OPS_TOKEN: &str = "canary-ops-token-7f3a91c2";

/// Everything the logs receive, at every level.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() -> Captured {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .try_init()
        .expect("the only subscriber of this test binary");
    captured
}

fn canary_settings() -> StandinSettings {
    StandinSettings {
        oauth_client_secret: "canary-sn-client-secret-7f3a91c2".into(),
        sn_password: "canary-sn-password-7f3a91c2".into(),
        slack_bot_token: "xoxb-canary-slack-bot-7f3a91c2".into(),
        slack_signing_secret: "canary-slack-signing-7f3a91c2".into(),
        llm_api_key: "sk-canary-llm-key-7f3a91c2".into(),
        llm_reply: LlmScript::Proposal(json!({
            "summary": MODEL_REPLY,
            "category": "software",
            "changes": [{"field": "urgency", "value": "1"}],
        })),
        ..Default::default()
    }
}

fn spec(standins: &Standins, s: &StandinSettings, whsec: &str) -> TenantSpec {
    let secret = |v: &str| SecretString::from(v.to_owned());
    TenantSpec {
        id: TenantId::parse(TENANT).unwrap(),
        name: "Canary Corp".into(),
        settings: TenantSettings {
            servicenow: ServiceNowSettings {
                instance_url: standins.servicenow_url(),
                grant: "password".into(),
                client_id: s.oauth_client_id.clone(),
                username: Some(s.sn_username.clone()),
            },
            slack: SlackSettings::new(
                standins.slack_api_url(),
                CHANNEL.into(),
                vec![APPROVER.0.into()],
            ),
            llm: LlmConfig {
                provider: "openai".into(),
                base_url: standins.llm_base_url(),
                model: "gpt-4o-mini".into(),
                temperature: 0.0,
                max_tokens: 1024,
            },
            policy: None,
        },
        secrets: vec![
            (
                secret_names::SERVICENOW_CLIENT_SECRET.into(),
                secret(&s.oauth_client_secret),
            ),
            (
                secret_names::SERVICENOW_PASSWORD.into(),
                secret(&s.sn_password),
            ),
            (
                secret_names::SLACK_BOT_TOKEN.into(),
                secret(&s.slack_bot_token),
            ),
            (
                secret_names::SLACK_SIGNING_SECRET.into(),
                secret(&s.slack_signing_secret),
            ),
            (secret_names::LLM_API_KEY.into(), secret(&s.llm_api_key)),
        ],
        sources: vec![(
            WebhookSource {
                secret_name: secret_names::webhook_source("servicenow"),
                name: SourceName::parse("servicenow").unwrap(),
                scheme: "standard-webhooks".into(),
                sys_id_pointers: vec!["/incident/sys_id".into()],
                number_pointers: vec!["/incident/number".into()],
            },
            secret(whsec),
        )],
        api_token: Some(secret(API_TOKEN)),
    }
}

const INCIDENT_SUMMARY: &str = "Checkout fails with HTTP 502";
const INCIDENT_DESCRIPTION: &str = "Customers cannot pay since the 14:05 deploy.";
const MODEL_REPLY: &str = "The payments service exhausts its connection pool.";

fn incident() -> Map<String, Value> {
    json!({
        "short_description": INCIDENT_SUMMARY,
        "description": INCIDENT_DESCRIPTION,
        "category": "inquiry", "impact": "2", "urgency": "3", "priority": "4", "state": "1",
    })
    .as_object()
    .cloned()
    .unwrap()
}

/// Every answer Steward gave, as text.
#[derive(Default)]
struct Answers(Vec<String>);

impl Answers {
    async fn get(&mut self, url: String, token: &str) -> Value {
        let response = reqwest::Client::new()
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let text = response.text().await.unwrap();
        self.0.push(text.clone());
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }
}

/// Sends the incident's webhook; the run it started and the signature it carried.
async fn send_webhook(
    base: &str,
    whsec: &str,
    sys_id: &str,
    answers: &mut Answers,
) -> (RunId, String) {
    let body = serde_json::to_vec(
        &json!({ "event": "incident.created", "incident": { "sys_id": sys_id } }),
    )
    .unwrap();
    let key = WebhookSecret::parse(whsec).unwrap();
    let id = "msg_canary0001";
    let ts = SystemClock.now_secs();
    let signature = sign_standard(&key, id, ts, &body);
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/webhooks/{TENANT}/servicenow"))
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", &signature)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let text = response.text().await.unwrap();
    answers.0.push(text.clone());
    let answer: Value = serde_json::from_str(&text).unwrap();
    let run = RunId::parse(answer["run_id"].as_str().unwrap()).unwrap();
    (run, signature)
}

/// Keeps the answer's text; its status.
async fn keep(answers: &mut Answers, response: reqwest::Response) -> u16 {
    let status = response.status().as_u16();
    answers.0.push(response.text().await.unwrap());
    status
}

/// Requests with credentials, most of them refused; the values that must never be logged.
async fn probe_credentials(
    base: &str,
    signing_secret: &str,
    answers: &mut Answers,
) -> Vec<(&'static str, String)> {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let wrong_bearer = "stw_canary-wrong-bearer-7f3a91c2";
    let sent = http
        .get(format!("{base}/v1/runs"))
        .bearer_auth(wrong_bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(keep(answers, sent).await, 401);

    let wrong_webhook_signature = "v1,7f3a91c27f3a91c27f3a91c27f3a91c27f3a91c27f3=";
    let sent = http
        .post(format!("{base}/v1/webhooks/{TENANT}/servicenow"))
        .header("webhook-id", "msg_canary0002")
        .header("webhook-timestamp", SystemClock.now_secs().to_string())
        .header("webhook-signature", wrong_webhook_signature)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(keep(answers, sent).await, 401);

    let ts = SystemClock.now_secs();
    let body = b"payload=%7B%22type%22%3A%22block_actions%22%7D".to_vec();
    let wrong_slack_signature = format!("v0={}", "7f3a91c2".repeat(8));
    let valid_slack_signature = sign_slack(signing_secret, ts, &body);
    for signature in [&wrong_slack_signature, &valid_slack_signature] {
        let sent = http
            .post(format!("{base}/v1/slack/interactions/{TENANT}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-slack-request-timestamp", ts.to_string())
            .header("x-slack-signature", signature.as_str())
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let status = keep(answers, sent).await;
        assert!(status < 500, "{status}");
    }

    let wrong_ops = "canary-wrong-ops-token-7f3a91c2";
    let mut session = String::new();
    for token in [wrong_ops, OPS_TOKEN] {
        let sent = http
            .post(format!("{base}/ops/login"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("token={token}"))
            .send()
            .await
            .unwrap();
        if let Some(cookie) = sent.headers().get("set-cookie") {
            let cookie = cookie.to_str().unwrap();
            let value = cookie.split(';').next().unwrap();
            session = value.split_once('=').unwrap().1.to_owned();
        }
        keep(answers, sent).await;
    }
    assert!(session.len() >= 16, "the operator signed in: {session:?}");
    vec![
        ("refused bearer token", wrong_bearer.to_owned()),
        (
            "refused webhook signature",
            wrong_webhook_signature.to_owned(),
        ),
        ("refused Slack signature", wrong_slack_signature),
        ("valid Slack signature", valid_slack_signature),
        ("refused ops token", wrong_ops.to_owned()),
        ("ops session cookie", session),
    ]
}

async fn wait_terminal(store: &steward_persistence::Store, scope: &TenantScope, run: RunId) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let state = store.run(scope, run).await.unwrap().map(|r| r.state);
        if state.as_deref().is_some_and(states::is_terminal) {
            return;
        }
        assert!(Instant::now() < deadline, "run {run} is still {state:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every value of every row of every table of the SQLite file, as text, one per line.
async fn raw_rows(path: &std::path::Path) -> String {
    use sqlx::{Connection, Row};
    let url = format!("sqlite://{}?mode=ro", path.display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table'")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    let mut all = String::new();
    for table in tables {
        let columns: Vec<String> = sqlx::query(&format!("PRAGMA table_info({table})"))
            .fetch_all(&mut conn)
            .await
            .unwrap()
            .iter()
            .map(|row| row.get::<String, _>("name"))
            .collect();
        for column in columns {
            let sql = format!(
                "SELECT CASE WHEN typeof({column}) = 'blob' THEN hex({column}) \
                 ELSE COALESCE(CAST({column} AS TEXT), '') END FROM {table}"
            );
            let values: Vec<String> = sqlx::query_scalar(&sql).fetch_all(&mut conn).await.unwrap();
            for value in values {
                all.push_str(&format!("{table}.{column}: {value}\n"));
            }
        }
    }
    conn.close().await.unwrap();
    all
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Fails naming the secret and the place where it was found.
fn assert_clean(place: &str, haystack: &[u8], secrets: &[(&str, String)]) {
    for (name, value) in secrets {
        let found = haystack.windows(value.len()).any(|w| w == value.as_bytes());
        assert!(!found, "the {name} appears in plain text in {place}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_flagship_path_leaves_no_secret_in_plain_text_anywhere() {
    let logs = capture_logs();
    let dir = tempfile::tempdir().unwrap();
    let settings = canary_settings();
    let standins = Standins::start(settings.clone()).await.unwrap();
    let sys_id = standins.seed_incident(incident());
    let whsec = WebhookSecret::generate();
    let mut opts = ServeOptions::new(
        dir.path().join("steward.db"),
        MasterKey::parse(MASTER_KEY_HEX).unwrap(),
    );
    opts.http = HttpSettings {
        https_only: false,
        ..HttpSettings::default()
    };
    opts.ops_token = Some(SecretString::from(OPS_TOKEN));
    // Limits high enough never to refuse, so that every request passes through the limiter
    // (which looks up a bearer token's tenant).
    opts.server_limits.rate = RateLimits {
        per_address: RateLimit::new(1000, 1000),
        per_tenant: RateLimit::new(1000, 1000),
        ..RateLimits::off()
    };
    opts.tenants.push(spec(&standins, &settings, &whsec));
    let server = boot::start(opts).await.unwrap();
    let base = server.url();
    let scope = TenantScope::assume(TenantId::parse(TENANT).unwrap(), Authenticator::Operator);

    let mut answers = Answers::default();
    let (run, webhook_signature) = send_webhook(&base, &whsec, &sys_id, &mut answers).await;
    let message = standins
        .wait_for_message(Duration::from_secs(30))
        .await
        .expect("an approval request reaches Slack");
    let url = format!("{base}/v1/slack/interactions/{TENANT}");
    let (status, text) = standins
        .click(&url, &message, APPROVE_ACTION, APPROVER.0, APPROVER.1)
        .await
        .unwrap();
    assert_eq!(status, 200, "{text}");
    answers.0.push(text);
    wait_terminal(&server.store, &scope, run).await;
    let finished = server.store.run(&scope, run).await.unwrap().unwrap();
    assert_eq!(
        finished.state,
        states::COMPLETED,
        "{:?}",
        finished.last_error
    );

    answers
        .get(format!("{base}/v1/runs/{run}"), API_TOKEN)
        .await;
    answers.get(format!("{base}/v1/runs"), API_TOKEN).await;
    answers.get(format!("{base}/v1/ops/runs"), OPS_TOKEN).await;
    answers
        .get(format!("{base}/v1/ops/runs/{run}"), OPS_TOKEN)
        .await;
    answers
        .get(format!("{base}/v1/ops/actors"), OPS_TOKEN)
        .await;
    let probed = probe_credentials(&base, &settings.slack_signing_secret, &mut answers).await;
    let audit = server.store.audit_entries(&scope, 0, 1000).await.unwrap();
    assert!(audit.len() > 3, "the run was audited");
    let crashes = server.store.crashes(&scope, run).await.unwrap();
    // Positive control for the content: the store reads the incident and the reply back.
    let steps = serde_json::to_string(&server.store.steps(&scope, run).await.unwrap()).unwrap();
    for text in [INCIDENT_SUMMARY, INCIDENT_DESCRIPTION, MODEL_REPLY] {
        assert!(
            steps.contains(text),
            "the journal holds `{text}` for the run"
        );
    }
    server.shutdown().await;

    let whsec_key = whsec.trim_start_matches("whsec_").to_owned();
    let mut secrets = vec![
        (
            "ServiceNow client secret",
            settings.oauth_client_secret.clone(),
        ),
        ("ServiceNow password", settings.sn_password.clone()),
        ("Slack bot token", settings.slack_bot_token.clone()),
        (
            "Slack signing secret",
            settings.slack_signing_secret.clone(),
        ),
        ("LLM API key", settings.llm_api_key.clone()),
        ("webhook secret", whsec_key),
        ("API token", API_TOKEN.to_owned()),
        ("ops token", OPS_TOKEN.to_owned()),
        ("master key", MASTER_KEY_HEX.to_owned()),
        ("common canary marker", "7f3a91c2".to_owned()),
        ("valid webhook signature", webhook_signature),
    ];
    secrets.extend(probed);

    // Positive controls: each place searched really holds this run's data.
    let logged = logs.0.lock().unwrap().clone();
    assert!(
        contains(&logged, "TRACE") && contains(&logged, TENANT),
        "logs captured"
    );
    assert!(
        contains(&logged, "sign-in to the ops page was refused"),
        "the refused credentials reached the handlers that log"
    );
    assert!(
        answers.0.iter().any(|a| a.contains(&run.to_string())),
        "answers captured"
    );
    let db = std::fs::read(dir.path().join("steward.db")).unwrap();
    assert!(contains(&db, TENANT), "the database file is readable");
    assert_clean("the logs", &logged, &secrets);
    for answer in &answers.0 {
        assert_clean("an API answer", answer.as_bytes(), &secrets);
    }
    for entry in &audit {
        assert_clean("the audit log", entry.body.as_bytes(), &secrets);
    }
    assert_clean(
        "the crash snapshots",
        format!("{crashes:?}").as_bytes(),
        &secrets,
    );
    let content = [
        ("incident summary", INCIDENT_SUMMARY.to_owned()),
        ("incident description", INCIDENT_DESCRIPTION.to_owned()),
        ("model reply", MODEL_REPLY.to_owned()),
        ("incident text", "payments service".to_owned()),
    ];
    for file in std::fs::read_dir(dir.path()).unwrap() {
        let path = file.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let place = format!("the database file {}", path.display());
        assert_clean(&place, &bytes, &secrets);
        assert_clean(&place, &bytes, &content);
    }
    let rows = raw_rows(&dir.path().join("steward.db")).await;
    assert!(
        rows.contains("run_steps.body: sealed:1:"),
        "the raw rows were read"
    );
    assert_clean("a raw row", rows.as_bytes(), &secrets);
    assert_clean("a raw row", rows.as_bytes(), &content);
}
