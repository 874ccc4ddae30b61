//! Runs that wait and survive: durable timers (reminders, escalation, approval timeouts) across
//! restarts, rate-limit parking (case N3), resuming without starting over (S3), a run whose
//! start fails (A1), passivation of waiting runs, and adapter crashes with one retry owner (L1).
//!
//! Each test boots Steward in-process on its own database file with a clock the test moves,
//! against wiremock servers for ServiceNow, Slack and the LLM provider. Restarting stops the
//! whole actor tree and boots again on the same file, as a process restart would.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use panicking::PanicOnce;
use secrecy::SecretString;
use serde_json::{Map, Value, json};
use steward_actors::retry::RetryPolicy;
use steward_actors::settings::{LlmConfig, ServiceNowSettings, SlackSettings, TenantSettings};
use steward_actors::tenant::RestartBudget;
use steward_actors::{LlmProviders, Step, secret_names, states};
use steward_adapters::http::HttpSettings;
use steward_adapters::llm::{LlmProvider, OpenAiCompatible};
use steward_adapters::slack::{APPROVE_ACTION, sign_slack};
use steward_adapters::webhook::WebhookSecret;
use steward_core::{Clock, FixedClock, IncidentRef, RunId, SourceName, TenantId};
use steward_persistence::{
    AuditDraft, AuditEntry, Authenticator, MasterKey, NewRun, RunRecord, TenantScope, WebhookSource,
};
use steward_runtime::boot::{self, ServeOptions, Server, TenantSpec};
use steward_tests::fixtures::{self, NUMBER, SYS_ID};
use steward_tests::servicenow::{self as sn, ServiceNowMock};
use steward_tests::slack::{self as slack_mock, APPROVER, Person, PostedMessage, SlackMock};
use steward_tests::webhook::{Delivery, incident_event};
use steward_tests::{eventually, llm};
use tempfile::TempDir;
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const SOURCE: &str = "servicenow";
const CHANNEL: &str = "C0ACMEAPPR1";
const ESCALATION_CHANNEL: &str = "C0ACMEESCL2";
const ESCALATION_APPROVER: Person = Person {
    id: "U0ESCALATE1",
    name: "eli.santos",
};
const SIGNING_SECRET: &str = "durability-signing-secret";
/// 2023-11-14T22:13:20Z.
const T0_SECS: i64 = 1_700_000_000;
const HOUR_MS: i64 = 3_600_000;

/// A test provider that panics on its first call, as a bug in a client would, and answers
/// through a real Chat Completions client after that. The count is shared by every instance
/// the factory builds, so a rebuilt adapter does not panic again.
mod panicking {
    use std::future::Future;
    use std::pin::Pin;

    use steward_adapters::llm::{LlmError, TriageReply, TriageRequest};

    use super::*;

    pub(super) struct PanicOnce {
        pub(super) inner: OpenAiCompatible,
        pub(super) calls: Arc<AtomicUsize>,
    }

    type Reply<'a> = Pin<Box<dyn Future<Output = Result<TriageReply, LlmError>> + Send + 'a>>;

    // The trait is declared with `async_trait`; this is the signature it expands to.
    impl LlmProvider for PanicOnce {
        fn name(&self) -> &'static str {
            self.inner.name()
        }

        fn triage<'life0, 'life1, 'async_trait>(
            &'life0 self,
            request: &'life1 TriageRequest,
        ) -> Reply<'async_trait>
        where
            'life0: 'async_trait,
            'life1: 'async_trait,
            Self: 'async_trait,
        {
            Box::pin(async move {
                if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    panic!("provider bug: index out of bounds in the first call");
                }
                self.inner.triage(request).await
            })
        }
    }
}

/// How the rig's Steward and tenant are set up.
struct Setup {
    clock: FixedClock,
    slack: SlackSettings,
    passivate_after: Duration,
    budget: RestartBudget,
    llm_provider: &'static str,
    providers: LlmProviders,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            clock: FixedClock::at_secs(T0_SECS),
            slack: SlackSettings::new(String::new(), CHANNEL.into(), vec![APPROVER.id.into()]),
            passivate_after: Duration::from_secs(30),
            budget: RestartBudget::default(),
            llm_provider: "openai",
            providers: LlmProviders::default(),
        }
    }
}

/// Steward, its database and clock, and the outside world.
struct Rig {
    servicenow_url: String,
    slack: SlackMock,
    llm: MockServer,
    tenant: TenantId,
    whsec: String,
    clock: FixedClock,
    setup: Setup,
    dir: TempDir,
    key: MasterKey,
    server: Option<Server>,
    http: reqwest::Client,
}

impl Rig {
    /// Steward against `servicenow_url`, the Slack mock and an LLM that proposes the triage.
    async fn start(servicenow_url: String, setup: Setup) -> Self {
        Self::start_with_llm(
            servicenow_url,
            setup,
            llm::answering(&fixtures::triage().to_string()),
        )
        .await
    }

    async fn start_with_llm(
        servicenow_url: String,
        setup: Setup,
        answer: ResponseTemplate,
    ) -> Self {
        let llm = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/v1/chat/completions"))
            .respond_with(answer)
            .mount(&llm)
            .await;
        let mut rig = Self {
            servicenow_url,
            slack: SlackMock::start().await,
            llm,
            tenant: TenantId::parse("us-acme").expect("a tenant id"),
            whsec: WebhookSecret::generate(),
            clock: setup.clock.clone(),
            setup,
            dir: tempfile::tempdir().expect("a temporary folder"),
            key: MasterKey::generate(),
            server: None,
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("an HTTP client"),
        };
        rig.boot().await;
        rig
    }

    async fn boot(&mut self) {
        let mut opts = ServeOptions::new(self.dir.path().join("steward.db"), self.key.clone());
        opts.http = HttpSettings {
            https_only: false,
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(2),
            ..HttpSettings::default()
        };
        opts.clock = Arc::new(self.clock.clone());
        opts.actors.retry = RetryPolicy {
            min_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(40),
            max_wait: Duration::from_secs(1),
            call_timeout: Duration::from_secs(10),
            ..RetryPolicy::default()
        };
        opts.actors.passivate_after = self.setup.passivate_after;
        opts.actors.timer_poll = Duration::from_millis(50);
        opts.actors.budget = self.setup.budget.clone();
        opts.actors.llm_providers = self.setup.providers.clone();
        opts.tenants = vec![self.spec()];
        self.server = Some(boot::start(opts).await.expect("Steward boots"));
    }

    fn spec(&self) -> TenantSpec {
        let secret = |v: &str| SecretString::from(v.to_owned());
        let mut slack = self.setup.slack.clone();
        slack.api_base = self.slack.api_base();
        TenantSpec {
            id: self.tenant.clone(),
            name: "Acme (durability)".into(),
            settings: TenantSettings {
                servicenow: ServiceNowSettings {
                    instance_url: self.servicenow_url.clone(),
                    grant: "password".into(),
                    client_id: sn::CLIENT_ID.into(),
                    username: Some(sn::USERNAME.into()),
                },
                slack,
                llm: LlmConfig {
                    provider: self.setup.llm_provider.into(),
                    base_url: format!("{}/v1", self.llm.uri()),
                    model: llm::MODEL.into(),
                    temperature: 0.0,
                    max_tokens: 1024,
                },
                policy: None,
            },
            secrets: vec![
                (
                    secret_names::SERVICENOW_CLIENT_SECRET.into(),
                    secret(sn::CLIENT_SECRET),
                ),
                (
                    secret_names::SERVICENOW_PASSWORD.into(),
                    secret(sn::PASSWORD),
                ),
                (
                    secret_names::SLACK_BOT_TOKEN.into(),
                    secret(slack_mock::BOT_TOKEN),
                ),
                (
                    secret_names::SLACK_SIGNING_SECRET.into(),
                    secret(SIGNING_SECRET),
                ),
                (secret_names::LLM_API_KEY.into(), secret(llm::API_KEY)),
            ],
            sources: vec![(
                WebhookSource {
                    name: SourceName::parse(SOURCE).expect("a source name"),
                    scheme: "standard-webhooks".into(),
                    secret_name: secret_names::webhook_source(SOURCE),
                    sys_id_pointers: vec!["/incident/sys_id".into()],
                    number_pointers: vec!["/incident/number".into()],
                },
                secret(&self.whsec),
            )],
            api_token: None,
        }
    }

    fn server(&self) -> &Server {
        self.server.as_ref().expect("Steward is running")
    }

    fn scope(&self) -> TenantScope {
        TenantScope::assume(self.tenant.clone(), Authenticator::Operator)
    }

    /// Stops Steward (the whole tree at once) and boots it again on the same database.
    async fn restart(&mut self) {
        self.stop().await;
        self.boot().await;
    }

    async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
    }

    fn advance(&self, millis: i64) {
        self.clock.advance_millis(millis);
    }

    /// Sends the incident webhook; returns the run it started.
    async fn trigger(&self) -> RunId {
        let body = incident_event(SYS_ID, NUMBER, "Checkout fails with HTTP 502");
        let delivery = Delivery::new(&self.whsec, self.clock.now_secs(), body);
        let response = self
            .http
            .post(format!(
                "{}/v1/webhooks/{}/{SOURCE}",
                self.server().url(),
                self.tenant
            ))
            .header("content-type", "application/json")
            .header("webhook-id", &delivery.id)
            .header("webhook-timestamp", &delivery.timestamp)
            .header("webhook-signature", &delivery.signature)
            .body(delivery.body.clone())
            .send()
            .await
            .expect("Steward answers");
        assert_eq!(response.status().as_u16(), 202, "the webhook was accepted");
        let body: Value = response.json().await.expect("a JSON answer");
        RunId::parse(body["run_id"].as_str().expect("a run id")).expect("a run id")
    }

    /// `who` clicks Approve on `message`, signed now.
    async fn approve(&self, message: &PostedMessage, who: Person) {
        let payload =
            slack_mock::block_actions(message, APPROVE_ACTION, who, &self.slack.response_url());
        let body = slack_mock::form_body(&payload);
        let now = self.clock.now_secs();
        let response = self
            .http
            .post(format!(
                "{}/v1/slack/interactions/{}",
                self.server().url(),
                self.tenant
            ))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-slack-request-timestamp", now.to_string())
            .header("x-slack-signature", sign_slack(SIGNING_SECRET, now, &body))
            .body(body)
            .send()
            .await
            .expect("Steward answers");
        assert_eq!(
            response.status().as_u16(),
            200,
            "the click was acknowledged"
        );
    }

    async fn run(&self, id: RunId) -> Option<RunRecord> {
        self.server()
            .store
            .run(&self.scope(), id)
            .await
            .expect("the store answers")
    }

    async fn wait_for_state(&self, id: RunId, state: &str) -> RunRecord {
        eventually(&format!("run {id} to be {state}"), || async {
            self.run(id).await.filter(|r| r.state == state)
        })
        .await
    }

    async fn step_kinds(&self, id: RunId) -> Vec<String> {
        self.server()
            .store
            .steps(&self.scope(), id)
            .await
            .expect("the store answers")
            .into_iter()
            .map(|s| s.kind)
            .collect()
    }

    async fn audit(&self) -> Vec<AuditEntry> {
        self.server()
            .store
            .audit_entries(&self.scope(), 0, 1000)
            .await
            .expect("the store answers")
    }

    /// How many audit entries of `kind` the run has.
    async fn audited(&self, id: RunId, kind: &str) -> usize {
        self.audit()
            .await
            .iter()
            .filter(|e| e.run_id == Some(id) && e.kind == kind)
            .count()
    }

    /// The approval requests posted (messages with buttons), in order.
    fn approval_posts(&self) -> Vec<PostedMessage> {
        self.slack
            .posted()
            .into_iter()
            .filter(|m| m.blocks.is_array())
            .collect()
    }

    async fn approval_request(&self) -> PostedMessage {
        eventually("an approval request in Slack", || async {
            self.approval_posts().into_iter().next()
        })
        .await
    }

    /// `chat.postMessage` calls that reply in a thread.
    async fn thread_replies(&self) -> Vec<Value> {
        self.slack
            .calls("chat.postMessage")
            .await
            .into_iter()
            .filter(|args| args.get("thread_ts").is_some())
            .collect()
    }

    async fn llm_requests(&self) -> usize {
        self.llm.received_requests().await.unwrap_or_default().len()
    }

    /// Whether the run has a live actor.
    async fn is_live(&self, id: RunId) -> bool {
        steward_tests::harness::live_run_actors(self.server())
            .await
            .contains(&id.to_string())
    }
}

async fn servicenow() -> ServiceNowMock {
    ServiceNowMock::start(fixtures::incident()).await
}

/// Waits long enough for the timer service (polling every 50 ms) to have acted many times.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(400)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reminder_and_an_expiry_fire_after_restarts_and_a_late_click_is_refused() {
    let sn = servicenow().await;
    let mut setup = Setup::default();
    setup.slack.remind_after_secs = 3600;
    setup.slack.expire_after_secs = 2 * 3600;
    let mut rig = Rig::start(sn.uri(), setup).await;
    let run = rig.trigger().await;
    let request = rig.approval_request().await;
    rig.wait_for_state(run, states::AWAITING_APPROVAL).await;

    rig.stop().await;
    rig.advance(HOUR_MS + 1000);
    rig.boot().await;
    let reminder = eventually("a reminder in the request's thread", || async {
        rig.thread_replies().await.into_iter().next()
    })
    .await;
    assert_eq!(reminder["thread_ts"], request.ts.as_str());
    assert_eq!(reminder["channel"], CHANNEL);
    let text = reminder["text"].as_str().expect("reminder text");
    assert!(
        text.contains(NUMBER) && text.contains(&format!("<@{}>", APPROVER.id)),
        "{text}"
    );
    eventually("the reminder step", || async {
        rig.step_kinds(run)
            .await
            .contains(&"reminder_sent".to_owned())
            .then_some(())
    })
    .await;

    rig.restart().await;
    settle().await;
    assert_eq!(
        rig.thread_replies().await.len(),
        1,
        "the reminder is sent once"
    );
    assert_eq!(
        rig.run(run).await.expect("the run").state,
        states::AWAITING_APPROVAL
    );

    rig.advance(HOUR_MS);
    let expired = rig.wait_for_state(run, states::EXPIRED).await;
    assert!(
        expired
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("within 2 h")),
        "{expired:?}"
    );
    let updates = rig.slack.calls("chat.update").await;
    let update = updates
        .iter()
        .find(|u| u["ts"] == request.ts.as_str())
        .expect("the request's message was updated");
    assert!(
        update["text"]
            .as_str()
            .unwrap_or_default()
            .contains("expired"),
        "{update}"
    );
    let approval_id = request.button_value(APPROVE_ACTION);
    let approval = rig
        .server()
        .store
        .approval(&rig.scope(), approval_id.parse().expect("an approval id"))
        .await
        .expect("the store answers")
        .expect("the approval");
    assert_eq!(approval.status, "expired");

    rig.approve(&request, APPROVER).await;
    eventually("the late click's refusal in the audit log", || async {
        rig.audit()
            .await
            .into_iter()
            .find(|e| e.kind == "approval.refused" && e.body.contains("expired"))
    })
    .await;
    settle().await;
    assert!(
        sn.patches().await.is_empty(),
        "nothing is written after expiry"
    );
    assert_eq!(rig.run(run).await.expect("the run").state, states::EXPIRED);
    let timers = rig
        .server()
        .store
        .timers(&rig.scope(), run)
        .await
        .expect("the store answers");
    assert!(
        timers.is_empty(),
        "a finished run keeps no timers: {timers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_escalated_request_can_be_decided_once_by_an_escalation_approver() {
    let sn = servicenow().await;
    let mut setup = Setup::default();
    setup.slack.escalate_after_secs = 60;
    setup.slack.escalation_channel = Some(ESCALATION_CHANNEL.into());
    setup.slack.escalation_approvers = vec![ESCALATION_APPROVER.id.into()];
    let rig = Rig::start(sn.uri(), setup).await;
    let run = rig.trigger().await;
    let request = rig.approval_request().await;
    rig.wait_for_state(run, states::AWAITING_APPROVAL).await;

    rig.approve(&request, ESCALATION_APPROVER).await;
    eventually("the early click's refusal", || async {
        rig.audit()
            .await
            .into_iter()
            .find(|e| e.kind == "approval.refused" && e.body.contains("not_allowed"))
    })
    .await;

    rig.advance(61_000);
    let escalated = eventually("the request in the escalation channel", || async {
        rig.approval_posts()
            .into_iter()
            .find(|m| m.channel == ESCALATION_CHANNEL)
    })
    .await;
    assert_eq!(
        escalated.button_value(APPROVE_ACTION),
        request.button_value(APPROVE_ACTION),
        "the same approval id"
    );
    assert!(
        escalated.text.starts_with("Escalated:"),
        "{}",
        escalated.text
    );
    let note = eventually("the escalation note", || async {
        rig.thread_replies().await.into_iter().next()
    })
    .await;
    assert_eq!(note["thread_ts"], escalated.ts.as_str());
    assert!(
        note["text"]
            .as_str()
            .unwrap_or_default()
            .contains(&format!("<@{}>", ESCALATION_APPROVER.id)),
        "{note}"
    );

    rig.approve(&escalated, ESCALATION_APPROVER).await;
    rig.approve(&request, APPROVER).await;
    rig.wait_for_state(run, states::COMPLETED).await;
    assert_eq!(sn.patches().await.len(), 1, "one write for one approval");
    assert_eq!(rig.audited(run, "run.approval_decided").await, 1);
    let updates = rig.slack.calls("chat.update").await;
    for message in [&request, &escalated] {
        assert!(
            updates.iter().any(|u| u["ts"] == message.ts.as_str()),
            "the message in {} says how it ended",
            message.channel
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_approving_after_a_restart_resumes_without_starting_over() {
    let sn = servicenow().await;
    let mut rig = Rig::start(sn.uri(), Setup::default()).await;
    let run = rig.trigger().await;
    let request = rig.approval_request().await;
    rig.wait_for_state(run, states::AWAITING_APPROVAL).await;

    rig.restart().await;
    settle().await;
    rig.approve(&request, APPROVER).await;
    rig.wait_for_state(run, states::COMPLETED).await;

    assert_eq!(rig.llm_requests().await, 1, "one LLM call");
    assert_eq!(rig.approval_posts().len(), 1, "one Slack approval post");
    assert_eq!(sn.patches().await.len(), 1, "one ServiceNow PATCH");
    for (kind, what) in [
        ("run.triaged", "LLM call"),
        ("run.approval_requested", "approval post"),
        ("run.written", "write"),
    ] {
        assert_eq!(
            rig.audited(run, kind).await,
            1,
            "the audit log shows one {what}"
        );
    }
}

/// ServiceNow with an hourly rate limit: until `reset_secs` by the shared clock, the Table API
/// answers `429` with `X-RateLimit-Limit` and `X-RateLimit-Reset`; then it serves the incident.
struct RateLimitedTable {
    clock: FixedClock,
    reset_secs: i64,
    record: Map<String, Value>,
}

impl Respond for RateLimitedTable {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        if self.clock.now_secs() < self.reset_secs {
            return ResponseTemplate::new(429)
                .insert_header("X-RateLimit-Limit", "1000")
                .insert_header("X-RateLimit-Reset", self.reset_secs.to_string().as_str())
                .set_body_json(json!({
                    "error": {"message": "Rate limit exceeded", "detail": "hourly limit"},
                    "status": "failure",
                }));
        }
        let by_number = request.url.path().ends_with("/incident");
        let result = if by_number {
            json!([self.record])
        } else {
            json!(self.record)
        };
        ResponseTemplate::new(200).set_body_json(json!({ "result": result }))
    }
}

async fn rate_limited_servicenow(clock: &FixedClock, reset_secs: i64) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth_token.do"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": sn::ACCESS_TOKEN,
            "refresh_token": "durability-refresh-token",
            "token_type": "Bearer",
            "expires_in": 1799,
        })))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path_regex("^/api/now/table/incident"))
        .respond_with(RateLimitedTable {
            clock: clock.clone(),
            reset_secs,
            record: fixtures::incident(),
        })
        .mount(&server)
        .await;
    server
}

async fn table_requests(server: &MockServer) -> usize {
    server
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|r| r.url.path().starts_with("/api/now/table/"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n3_an_hourly_rate_limit_parks_the_run_until_the_reset_even_across_a_restart() {
    let setup = Setup::default();
    let reset = T0_SECS + 40 * 60;
    let servicenow = rate_limited_servicenow(&setup.clock, reset).await;
    let mut rig = Rig::start(servicenow.uri(), setup).await;

    let run = rig.trigger().await;
    let parked = rig.wait_for_state(run, states::PARKED).await;
    assert!(
        parked
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains(&reset.to_string())),
        "the wait is named: {parked:?}"
    );
    assert_eq!(
        table_requests(&servicenow).await,
        1,
        "no retry spent on the window"
    );
    let timers = rig
        .server()
        .store
        .timers(&rig.scope(), run)
        .await
        .expect("the store answers");
    assert_eq!(timers.len(), 1);
    assert_eq!(timers[0].due_at, reset * 1000);

    rig.advance(20 * 60 * 1000);
    settle().await;
    rig.restart().await;
    settle().await;
    assert_eq!(
        table_requests(&servicenow).await,
        1,
        "nothing is sent while parked"
    );
    assert_eq!(rig.run(run).await.expect("the run").state, states::PARKED);

    rig.advance(20 * 60 * 1000);
    rig.approval_request().await;
    rig.wait_for_state(run, states::AWAITING_APPROVAL).await;
    assert_eq!(
        table_requests(&servicenow).await,
        2,
        "one request after the reset"
    );
    let kinds = rig.step_kinds(run).await;
    assert_eq!(
        kinds.iter().filter(|k| *k == "parked").count(),
        1,
        "{kinds:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_llm_asking_for_a_long_wait_parks_the_run_and_it_triages_after_the_wait() {
    let sn = servicenow().await;
    let rig = Rig::start(sn.uri(), Setup::default()).await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(
            llm::error(429, "requests", "rate_limit_exceeded", "Rate limit reached")
                .insert_header("retry-after", "600"),
        )
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&rig.llm)
        .await;

    let run = rig.trigger().await;
    rig.wait_for_state(run, states::PARKED).await;
    settle().await;
    assert_eq!(rig.llm_requests().await, 1, "no attempts spent on the wait");

    rig.advance(601_000);
    rig.wait_for_state(run, states::AWAITING_APPROVAL).await;
    assert_eq!(rig.llm_requests().await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l1_a_provider_that_always_answers_429_gets_at_most_the_policys_attempts() {
    let sn = servicenow().await;
    let always_limited = llm::error(429, "requests", "rate_limit_exceeded", "Rate limit reached");
    let rig = Rig::start_with_llm(sn.uri(), Setup::default(), always_limited).await;
    let run = rig.trigger().await;
    let failed = rig.wait_for_state(run, states::FAILED).await;
    assert!(
        failed
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("3 attempt(s)")),
        "{failed:?}"
    );
    settle().await;
    assert_eq!(
        rig.llm_requests().await,
        RetryPolicy::default().attempts,
        "one retry owner: attempts, not attempts squared"
    );
    assert!(rig.approval_posts().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_panics_has_its_adapter_replaced_and_the_run_retries_once() {
    let sn = servicenow().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let factory_calls = Arc::clone(&calls);
    let setup = Setup {
        llm_provider: "panics-once",
        providers: LlmProviders::default().with(
            "panics-once",
            Arc::new(move |settings, http| {
                Arc::new(PanicOnce {
                    inner: OpenAiCompatible::new(settings, http),
                    calls: Arc::clone(&factory_calls),
                }) as Arc<dyn LlmProvider>
            }),
        ),
        ..Setup::default()
    };
    let rig = Rig::start(sn.uri(), setup).await;
    let before = rig
        .server()
        .steward
        .runtime(&rig.tenant)
        .await
        .expect("the tenant starts")
        .connectors()
        .llm
        .get_id();

    let run = rig.trigger().await;
    rig.wait_for_state(run, states::AWAITING_APPROVAL).await;
    let after = rig
        .server()
        .steward
        .runtime(&rig.tenant)
        .await
        .expect("the tenant runs")
        .connectors()
        .llm
        .get_id();
    assert_ne!(before, after, "the crashed LLM adapter was replaced");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the panicking call and one retry"
    );
    assert_eq!(
        rig.llm_requests().await,
        1,
        "the panicking call sent nothing"
    );
    let steps = rig
        .server()
        .store
        .steps(&rig.scope(), run)
        .await
        .expect("the store answers");
    let triaged = steps
        .iter()
        .find(|s| s.kind == "triaged")
        .expect("a triaged step");
    assert_eq!(
        triaged.body["attempts"], 2,
        "retried by the step's one retry owner"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a1_a_run_whose_start_fails_is_restarted_and_its_sibling_goes_on() {
    let sn = servicenow().await;
    let setup = Setup {
        budget: RestartBudget {
            backoff: Duration::from_millis(500),
            ..RestartBudget::default()
        },
        ..Setup::default()
    };
    let rig = Rig::start(sn.uri(), setup).await;
    let early = RunId::new();
    // The run is woken before its row is readable, as when the store is briefly behind: its
    // actor fails while loading.
    rig.server().steward.wake(&rig.tenant, early).await;
    eventually("the failed start to be recorded", || async {
        (rig.audited(early, "run.crashed").await > 0).then_some(())
    })
    .await;

    let sibling = rig.trigger().await;
    let _ = record_intake(&rig, early).await;
    rig.wait_for_state(early, states::AWAITING_APPROVAL).await;
    rig.wait_for_state(sibling, states::AWAITING_APPROVAL).await;
    assert_eq!(
        rig.audited(sibling, "run.crashed").await,
        0,
        "the sibling never crashed"
    );
    let crashes = rig.audited(early, "run.crashed").await;
    assert!(
        (1..=RestartBudget::default().max_restarts).contains(&crashes),
        "restarted within its budget: {crashes}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_started_from_what_intake_wrote_reads_its_journal_again_when_it_moved_on() {
    let sn = servicenow().await;
    let rig = Rig::start(sn.uri(), Setup::default()).await;
    let steward = &rig.server().steward;

    // Started from intake's copy, a run goes the whole way as one read back would.
    let fresh = RunId::new();
    let copy = record_intake(&rig, fresh).await;
    steward.start_fresh(&rig.tenant, fresh, copy).await;
    rig.wait_for_state(fresh, states::AWAITING_APPROVAL).await;
    assert_eq!(rig.llm_requests().await, 1);

    // Cancelled between intake and its actor's start: the copy is stale. The actor's first
    // record conflicts with the cancel, it reads the journal again and stops there.
    let stale = RunId::new();
    let copy = record_intake(&rig, stale).await;
    let request = steward_actors::OperatorRequest {
        operator: "oncall".into(),
        reason: "a duplicate of another incident".into(),
    };
    steward
        .cancel_run(&rig.scope(), stale, &request)
        .await
        .expect("the run is cancelled");
    // The cancel wakes the run itself; that actor reads the journal and stops. Only then is
    // the copy handed over, to an actor of its own.
    let stopped = || async { (!rig.is_live(stale).await).then_some(()) };
    settle().await;
    eventually("the cancelled run's actor to stop", stopped).await;
    let reads = sn.record_reads().await;
    steward.start_fresh(&rig.tenant, stale, copy).await;
    eventually("the stale copy to read the incident", || async {
        (sn.record_reads().await > reads).then_some(())
    })
    .await;
    settle().await;
    eventually("the stale run's actor to stop", stopped).await;
    assert_eq!(
        rig.step_kinds(stale).await,
        ["received", "finished"],
        "nothing after the cancel"
    );
    let record = rig.run(stale).await.expect("the run");
    assert_eq!(record.state, states::CANCELLED);
    assert_eq!(
        rig.llm_requests().await,
        1,
        "the stale run never reached triage"
    );
}

/// Records a run with the given id, as intake does, without waking it; answers the run as
/// intake wrote it, which a run's actor can start from.
async fn record_intake(rig: &Rig, id: RunId) -> steward_actors::run::FreshRun {
    let incident = IncidentRef::sys_id(SYS_ID).expect("a sys_id");
    let first = Step::Received {
        incident: incident.clone(),
        source: None,
        delivery_id: None,
        requester: None,
    };
    let run = NewRun {
        id,
        source: None,
        delivery_id: None,
        change: None,
        incident,
        trigger: json!({ "sys_id": SYS_ID }),
        state: states::RECEIVED.into(),
        first_step: (
            first.kind().into(),
            serde_json::to_value(&first).expect("a step serializes"),
        ),
        audit: AuditDraft {
            kind: "run.received".into(),
            run_id: Some(id),
            actor: "api".into(),
            body: json!({ "seq": 0 }),
        },
    };
    let fresh = steward_actors::run::FreshRun {
        source: None,
        trigger: run.trigger.clone(),
        first_step: first,
    };
    rig.server()
        .store
        .record_intake(&rig.scope(), run)
        .await
        .expect("the run is recorded");
    fresh
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_run_is_passivated_after_its_idle_time_and_a_click_still_completes_it() {
    let sn = servicenow().await;
    let setup = Setup {
        passivate_after: Duration::from_millis(300),
        ..Setup::default()
    };
    let rig = Rig::start(sn.uri(), setup).await;
    let run = rig.trigger().await;
    let request = rig.approval_request().await;
    rig.wait_for_state(run, states::AWAITING_APPROVAL).await;
    assert!(
        rig.is_live(run).await,
        "a run that just began waiting is still in memory"
    );
    eventually("the waiting run to be passivated", || async {
        (!rig.is_live(run).await).then_some(())
    })
    .await;

    rig.approve(&request, APPROVER).await;
    rig.wait_for_state(run, states::COMPLETED).await;
    assert_eq!(sn.patches().await.len(), 1);
    eventually("the finished run to leave memory", || async {
        (!rig.is_live(run).await).then_some(())
    })
    .await;
}
