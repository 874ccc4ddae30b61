//! The per-region egress allow-list: a connector URL whose host is not on the tenant's home
//! region's list is refused when it is set (over the API or in the config), and again when
//! Steward would call it, if the list changed after it was stored: the connection check and the
//! run both give the reason, and no request reaches the endpoint.

use std::time::Duration;

use secrecy::SecretString;
use serde_json::{Value, json};
use steward_actors::states;
use steward_adapters::egress::{Egress, HostPattern};
use steward_core::{Region, RunId, TenantId};
use steward_persistence::{Authenticator, MasterKey, TenantScope};
use steward_runtime::boot::{self, ServeOptions, Server};
use steward_tests::fixtures;
use steward_tests::harness::{self, eventually};
use steward_tests::llm::{self, LlmMock};
use steward_tests::servicenow::{self, ServiceNowMock};
use steward_tests::slack::{self, APPROVER, SlackMock};
use steward_tests::webhook::{self, Delivery};

const OPS_TOKEN: &str = "ops-platform-token-egress-0123456789";

/// A Steward serving `region` under `egress`, with no tenants but those onboarded over the API.
struct World {
    server: Server,
    http: reqwest::Client,
}

async fn start(dir: &tempfile::TempDir, key: &MasterKey, region: Region, egress: Egress) -> World {
    let mut opts = ServeOptions::new(dir.path().join("steward.db"), key.clone());
    opts.ops_token = Some(SecretString::from(OPS_TOKEN));
    opts.region = region;
    opts.http.timeout = Duration::from_secs(10);
    opts.http.egress = egress;
    let server = boot::start(opts).await.expect("Steward boots");
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    World { server, http }
}

impl World {
    async fn call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.server.url()))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("Steward answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn onboard(&self, id: &str) -> String {
        let (status, body) = self
            .call(
                "POST",
                "/v1/tenants",
                OPS_TOKEN,
                Some(json!({ "id": id, "name": "Acme" })),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["admin_token"]["value"].as_str().unwrap().to_owned()
    }
}

fn servicenow_body(url: &str) -> Value {
    json!({
        "instance_url": url, "grant": "password",
        "client_id": servicenow::CLIENT_ID, "username": servicenow::USERNAME,
        "client_secret": servicenow::CLIENT_SECRET, "password": servicenow::PASSWORD,
    })
}

fn slack_body(url: &str) -> Value {
    json!({
        "api_base": url, "approval_channel": "C0EGRESS001", "approvers": [APPROVER.id],
        "bot_token": slack::BOT_TOKEN, "signing_secret": "egress-e2e-slack-signing-secret",
    })
}

fn llm_body(url: &str) -> Value {
    json!({ "provider": "openai", "model": llm::MODEL, "base_url": url, "api_key": llm::API_KEY })
}

#[tokio::test]
async fn an_eu_tenant_is_refused_a_us_only_llm_endpoint_at_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let key = MasterKey::generate();
    let w = start(&dir, &key, Region::Eu, Egress::default()).await;
    let admin = w.onboard("eu-acme").await;

    let (status, body) = w
        .call(
            "PUT",
            "/v1/tenant/connectors/llm",
            &admin,
            Some(llm_body("https://api.openai.com/v1")),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"], "unprocessable");
    assert_eq!(
        body["message"],
        "the llm endpoint host api.openai.com is not allowed for tenants homed in eu"
    );

    for (path, body, host) in [
        (
            "servicenow",
            servicenow_body("https://evil-service-now.com"),
            "evil-service-now.com",
        ),
        (
            "servicenow",
            servicenow_body("https://acme.service-now.com.evil.io"),
            "acme.service-now.com.evil.io",
        ),
        (
            "slack",
            slack_body("https://slack.com.evil.io/api/"),
            "slack.com.evil.io",
        ),
        ("llm", llm_body("http://127.0.0.1:9/v1"), "127.0.0.1"),
    ] {
        let (status, answer) = w
            .call(
                "PUT",
                &format!("/v1/tenant/connectors/{path}"),
                &admin,
                Some(body),
            )
            .await;
        assert_eq!(status, 422, "{path} {host}: {answer}");
        let message = answer["message"].as_str().unwrap();
        assert!(
            message.contains(path) && message.contains(host) && message.contains(" eu"),
            "{message}"
        );
    }

    // The region's own hosts are accepted (setting a connector sends no request).
    for (path, body) in [
        ("llm", llm_body("https://api.mistral.ai/v1")),
        (
            "servicenow",
            servicenow_body("https://acme.service-now.com"),
        ),
        ("slack", slack_body("https://slack.com/api/")),
    ] {
        let (status, answer) = w
            .call(
                "PUT",
                &format!("/v1/tenant/connectors/{path}"),
                &admin,
                Some(body),
            )
            .await;
        assert_eq!(status, 200, "{path}: {answer}");
    }
    w.server.shutdown().await;

    // A tenant declared in the config is refused at boot with the same reason.
    let servicenow = ServiceNowMock::start(fixtures::incident()).await;
    let slack = SlackMock::start().await;
    let llm_mock = LlmMock::start(llm::answering("{}")).await;
    let mut spec = declared_spec("eu-globex", &servicenow, &slack, &llm_mock);
    spec.settings.llm.base_url = "https://api.anthropic.com/v1/".into();
    let other = tempfile::tempdir().unwrap();
    let mut opts = ServeOptions::new(other.path().join("steward.db"), MasterKey::generate());
    opts.region = Region::Eu;
    opts.tenants = vec![spec];
    let err = boot::start(opts)
        .await
        .err()
        .expect("boot refuses the tenant");
    let text = format!("{err:#}");
    assert!(
        text.contains(
            "the llm endpoint host api.anthropic.com is not allowed for tenants homed in eu"
        ),
        "{text}"
    );
}

/// A declared tenant on the mocks (loopback), as the harness declares its own.
fn declared_spec(
    id: &str,
    servicenow: &ServiceNowMock,
    slack: &SlackMock,
    llm: &LlmMock,
) -> boot::TenantSpec {
    use steward_actors::settings::{LlmConfig, ServiceNowSettings, SlackSettings, TenantSettings};
    boot::TenantSpec {
        id: TenantId::parse(id).unwrap(),
        name: "Globex".into(),
        settings: TenantSettings {
            servicenow: ServiceNowSettings {
                instance_url: servicenow.uri(),
                grant: "password".into(),
                client_id: servicenow::CLIENT_ID.into(),
                username: Some(servicenow::USERNAME.into()),
            },
            slack: SlackSettings::new(slack.api_base(), "C0EGRESS002".into(), vec![]),
            llm: LlmConfig {
                provider: "openai".into(),
                base_url: llm.base_url(),
                model: llm::MODEL.into(),
                temperature: 0.0,
                max_tokens: 256,
            },
            policy: None,
        },
        secrets: vec![],
        sources: vec![],
        api_token: None,
    }
}

#[tokio::test]
async fn a_stored_url_no_longer_allowed_fails_the_check_and_the_run_without_a_request() {
    let servicenow = ServiceNowMock::start(fixtures::incident()).await;
    let slack = SlackMock::start().await;
    let llm_mock = LlmMock::start(llm::answering(&fixtures::triage().to_string())).await;
    let dir = tempfile::tempdir().unwrap();
    let key = MasterKey::generate();

    // Configured while loopback is allowed.
    let w = start(&dir, &key, Region::Us, Egress::default().with_loopback()).await;
    let admin = w.onboard("us-acme").await;
    for (path, body) in [
        ("servicenow", servicenow_body(&servicenow.uri())),
        ("slack", slack_body(&slack.api_base())),
        ("llm", llm_body(&llm_mock.base_url())),
    ] {
        let (status, answer) = w
            .call(
                "PUT",
                &format!("/v1/tenant/connectors/{path}"),
                &admin,
                Some(body),
            )
            .await;
        assert_eq!(status, 200, "{path}: {answer}");
    }
    let source = json!({
        "name": harness::SOURCE, "sys_id_pointers": ["/incident/sys_id"],
        "number_pointers": ["/incident/number"],
    });
    let (status, answer) = w
        .call("POST", "/v1/tenant/sources", &admin, Some(source))
        .await;
    assert_eq!(status, 201, "{answer}");
    let whsec = answer["secret"].as_str().unwrap().to_owned();
    w.server.shutdown().await;

    // The list changes: the LLM host is no longer on it; the other kinds keep loopback.
    let mut narrowed = Egress::default().with_loopback();
    narrowed.us.llm = vec![HostPattern::parse("api.openai.com").unwrap()];
    let w = start(&dir, &key, Region::Us, narrowed).await;
    let reason = "the llm endpoint host 127.0.0.1 is not allowed for tenants homed in us";

    let (status, check) = w.call("POST", "/v1/tenant/check", &admin, None).await;
    assert_eq!(status, 200, "{check}");
    assert_eq!(check["ok"], false, "{check}");
    assert_eq!(check["llm"]["ok"], false, "{check}");
    assert_eq!(check["llm"]["problem"], reason, "{check}");

    let now = steward_core::Clock::now_secs(&steward_core::SystemClock);
    let body = webhook::incident_event(fixtures::SYS_ID, fixtures::NUMBER, "Checkout fails");
    let d = Delivery::new(&whsec, now, body);
    let response = w
        .http
        .post(format!(
            "{}/v1/webhooks/us-acme/{}",
            w.server.url(),
            harness::SOURCE
        ))
        .header("content-type", "application/json")
        .header("webhook-id", &d.id)
        .header("webhook-timestamp", &d.timestamp)
        .header("webhook-signature", &d.signature)
        .body(d.body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    let answer: Value = response.json().await.unwrap();
    let run = RunId::parse(answer["run_id"].as_str().unwrap()).unwrap();

    let scope = TenantScope::assume(TenantId::parse("us-acme").unwrap(), Authenticator::Operator);
    let record = eventually("the run to fail", || async {
        w.server
            .store
            .run(&scope, run)
            .await
            .unwrap()
            .filter(|r| r.state == states::FAILED)
    })
    .await;
    let why = record.last_error.unwrap_or_default();
    assert!(why.contains(reason), "{why}");

    let (status, shown) = w
        .call("GET", &format!("/v1/runs/{run}"), &admin, None)
        .await;
    assert_eq!(status, 200, "{shown}");
    assert!(shown.to_string().contains(reason), "{shown}");

    assert!(
        llm_mock.requests().await.is_empty(),
        "a request reached the refused LLM endpoint"
    );
    w.server.shutdown().await;
}
