//! Steward booted in-process on loopback with an operator token, a tenant (with an API token)
//! wired to the local stand-ins, and helpers to start runs and call the ops API.

use std::time::{Duration, Instant};

use secrecy::SecretString;
use serde_json::{Map, Value, json};
use steward_actors::retry::RetryPolicy;
use steward_actors::settings::{LlmConfig, ServiceNowSettings, SlackSettings, TenantSettings};
use steward_actors::tenant::RestartBudget;
use steward_actors::{secret_names, states};
use steward_adapters::http::HttpSettings;
use steward_core::{RunId, TenantId};
use steward_persistence::{Authenticator, MasterKey, RunRecord, StepWrite, TenantScope};
use steward_runtime::boot::{self, ServeOptions, Server, TenantSpec};
use steward_runtime::standins::{SlackMessage, StandinSettings, Standins};
use tempfile::TempDir;

pub(crate) const OPS_TOKEN: &str = "ops-test-token-0123456789abcdef";
pub(crate) const TENANT_TOKEN: &str = "stw_ops_tenant_token_0123456789abcdef";
pub(crate) const TENANT: &str = "us-opsdemo";
pub(crate) const CHANNEL: &str = "C0OPSAPPR01";
pub(crate) const APPROVER: (&str, &str) = ("U0OPSANA001", "ana.lima");
/// How long a test waits for a run to get somewhere.
pub(crate) const PATIENCE: Duration = Duration::from_secs(30);

/// A hostile string that a crash's error text will carry to the page and the CLI.
pub(crate) const HOSTILE_KIND: &str = "<img src=x onerror=alert(1)>";

pub(crate) struct Ops {
    pub(crate) _dir: TempDir,
    pub(crate) standins: Standins,
    pub(crate) server: Server,
    pub(crate) http: reqwest::Client,
}

fn tenant(standins: &Standins, s: &StandinSettings) -> TenantSpec {
    let secret = |v: &str| SecretString::from(v.to_owned());
    TenantSpec {
        id: TenantId::parse(TENANT).unwrap(),
        name: "Ops Demo".into(),
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
        sources: vec![],
        api_token: Some(secret(TENANT_TOKEN)),
    }
}

impl Ops {
    /// Boots Steward and the stand-ins. Waiting runs are passivated at once, a crashed run is
    /// restarted after 20 ms (doubling), and a failing call is retried quickly.
    pub(crate) async fn start() -> Ops {
        let dir = tempfile::tempdir().unwrap();
        let settings = StandinSettings::default();
        let standins = Standins::start(settings.clone()).await.unwrap();
        let mut opts = ServeOptions::new(dir.path().join("steward.db"), MasterKey::generate());
        opts.synchronous_full = false;
        opts.http = HttpSettings {
            https_only: false,
            ..HttpSettings::default()
        };
        opts.ops_token = Some(SecretString::from(OPS_TOKEN.to_owned()));
        opts.actors.passivate_after = Duration::ZERO;
        opts.actors.budget = RestartBudget {
            max_restarts: 3,
            window: Duration::from_secs(60),
            backoff: Duration::from_millis(20),
        };
        opts.actors.retry = RetryPolicy {
            attempts: 2,
            min_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
            ..RetryPolicy::default()
        };
        opts.tenants.push(tenant(&standins, &settings));
        let server = boot::start(opts).await.unwrap();
        Ops {
            _dir: dir,
            standins,
            server,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.url())
    }

    pub(crate) fn scope(&self) -> TenantScope {
        TenantScope::assume(TenantId::parse(TENANT).unwrap(), Authenticator::Operator)
    }

    /// Seeds an incident with `fields` over the stand-in's defaults; returns its sys_id.
    pub(crate) fn seed(&self, fields: Value) -> String {
        let mut record: Map<String, Value> = fields.as_object().cloned().unwrap_or_default();
        record
            .entry("short_description")
            .or_insert_with(|| json!("Checkout fails with HTTP 502"));
        record.entry("impact").or_insert_with(|| json!("3"));
        self.standins.seed_incident(record)
    }

    /// Starts a run for the incident through the runs API.
    pub(crate) async fn start_run(&self, sys_id: &str) -> RunId {
        let response = self
            .http
            .post(self.url("/v1/runs"))
            .bearer_auth(TENANT_TOKEN)
            .json(&json!({ "incident": { "sys_id": sys_id } }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
        let body: Value = response.json().await.unwrap();
        RunId::parse(body["run_id"].as_str().unwrap()).unwrap()
    }

    pub(crate) async fn run(&self, id: RunId) -> RunRecord {
        self.server
            .store
            .run(&self.scope(), id)
            .await
            .unwrap()
            .unwrap()
    }

    /// Waits until the run is in `state`.
    pub(crate) async fn wait_state(&self, id: RunId, state: &str) -> RunRecord {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let run = self.run(id).await;
            if run.state == state {
                return run;
            }
            assert!(
                Instant::now() < deadline,
                "run {id} is {} ({:?}), not {state}",
                run.state,
                run.last_error
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A run waiting for approval.
    pub(crate) async fn waiting_run(&self, fields: Value) -> RunId {
        let sys_id = self.seed(fields);
        let id = self.start_run(&sys_id).await;
        self.wait_state(id, states::AWAITING_APPROVAL).await;
        id
    }

    /// Makes `id`'s journal unreadable by this build (a step a newer build wrote, named
    /// [`HOSTILE_KIND`]), then wakes it: its actor fails on every start until its restart
    /// budget is spent. Returns the run once it is `failed`.
    pub(crate) async fn crash_until_failed(&self, id: RunId) -> RunRecord {
        let run = self.run(id).await;
        let write = StepWrite {
            run_id: id,
            expected_seq: run.steps,
            kind: HOSTILE_KIND.into(),
            body: json!({ "kind": HOSTILE_KIND }),
            new_state: run.state.clone(),
            last_error: None,
            audit: vec![],
            new_approval: None,
            timers: vec![],
            charges: vec![],
            approval_message: None,
            clears_timers: false,
        };
        self.server
            .store
            .append_step(&self.scope(), write)
            .await
            .unwrap();
        self.server
            .steward
            .wake(&TenantId::parse(TENANT).unwrap(), id)
            .await;
        self.wait_state(id, states::FAILED).await
    }

    /// The approval message of the run, as the stand-in holds it.
    pub(crate) async fn message_of(&self, id: RunId) -> SlackMessage {
        let steps = self.server.store.steps(&self.scope(), id).await.unwrap();
        let ts = steps
            .iter()
            .find(|s| s.kind == "approval_requested")
            .and_then(|s| s.body["ts"].as_str().map(str::to_owned))
            .expect("the run posted its request");
        self.standins
            .slack_messages()
            .into_iter()
            .find(|m| m.ts == ts)
            .expect("the stand-in holds the message")
    }

    /// Clicks `action` on the run's approval message as the approver.
    pub(crate) async fn click(&self, id: RunId, action: &str) -> (u16, String) {
        let message = self.message_of(id).await;
        self.click_on(&message, action).await
    }

    /// Clicks `action` on `message` (as it was when read) as the approver.
    pub(crate) async fn click_on(&self, message: &SlackMessage, action: &str) -> (u16, String) {
        let url = self.url(&format!("/v1/slack/interactions/{TENANT}"));
        self.standins
            .click(&url, message, action, APPROVER.0, APPROVER.1)
            .await
            .unwrap()
    }

    /// A GET with the given bearer token (none if None): (status, JSON body).
    pub(crate) async fn get_as(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut request = self.http.get(self.url(path));
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// A GET with the operator token.
    pub(crate) async fn ops_get(&self, path: &str) -> (u16, Value) {
        self.get_as(path, Some(OPS_TOKEN)).await
    }

    /// A POST of a JSON body with the given bearer token.
    pub(crate) async fn post_as(
        &self,
        path: &str,
        token: Option<&str>,
        body: &Value,
    ) -> (u16, Value) {
        let mut request = self.http.post(self.url(path)).json(body);
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// A POST with the operator token.
    pub(crate) async fn ops_post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.post_as(path, Some(OPS_TOKEN), body).await
    }
}

/// An operator's decision body.
pub(crate) fn decision(reason: &str) -> Value {
    json!({ "reason": reason, "operator": "ana.lima" })
}

/// Waits until `check` holds.
pub(crate) async fn eventually(check: impl Fn() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "the condition did not come true in time"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
