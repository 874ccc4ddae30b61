//! One Steward, booted in-process on loopback with a fresh SQLite file (or a PostgreSQL
//! database of its own), two tenants, and mock ServiceNow, Slack and LLM servers; plus the
//! calls a test makes against it over real HTTP.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use secrecy::SecretString;
use serde_json::{Map, Value};
use steward_actors::retry::RetryPolicy;
use steward_actors::settings::{LlmConfig, ServiceNowSettings, SlackSettings, TenantSettings};
use steward_actors::{secret_names, states};
use steward_adapters::egress::Egress;
use steward_adapters::http::HttpSettings;
use steward_adapters::slack::sign_slack;
use steward_adapters::webhook::WebhookSecret;
use steward_api::ServerLimits;
use steward_core::{Clock, Region, RunId, SourceName, SystemClock, TenantId};
use steward_persistence::{
    AuditEntry, Authenticator, MasterKey, PgOptions, RunRecord, StepRecord, TenantScope,
    WebhookSource, generate_api_token,
};
use steward_runtime::boot::{self, ServeOptions, Server, TenantSpec};
use steward_runtime::telemetry::{Telemetry, TelemetryOptions};
use tempfile::TempDir;
use wiremock::ResponseTemplate;

use crate::database::{PgServer, Place, RawRow};
use crate::fixtures;
use crate::llm::{self, LlmMock};
use crate::servicenow::{self, ServiceNowMock};
use crate::slack::{self, APPROVER, Person, PostedMessage, SlackMock};
use crate::webhook::{self, Delivery};

/// The webhook source every tenant declares.
pub const SOURCE: &str = "servicenow";

/// The operator token of every harness server (the ops API and the platform routes).
pub const OPS_TOKEN: &str = "e2e-operator-token-0123456789abcdef";

/// How long a test waits for something that should happen in milliseconds.
pub const PATIENCE: Duration = Duration::from_secs(5);

/// One tenant's identity and the secrets the harness holds for it.
#[derive(Debug, Clone)]
pub struct TenantFixture {
    /// The tenant id.
    pub id: TenantId,
    /// The `whsec_` secret of its `servicenow` source.
    pub whsec: String,
    /// Its Slack app's signing secret.
    pub signing_secret: String,
    /// Its API token (scopes `runs:read` and `runs:write`).
    pub api_token: String,
    /// Its approval channel.
    pub channel: String,
}

impl TenantFixture {
    fn new(id: &str, channel: &str) -> Self {
        Self {
            id: TenantId::parse(id).expect("a valid tenant id"),
            whsec: WebhookSecret::generate(),
            signing_secret: format!("e2e-signing-secret-{id}"),
            api_token: secrecy::ExposeSecret::expose_secret(&generate_api_token()).to_owned(),
            channel: channel.to_owned(),
        }
    }

    /// The store scope of this tenant, as an operator.
    pub fn scope(&self) -> TenantScope {
        TenantScope::assume(self.id.clone(), Authenticator::Operator)
    }
}

/// What a scenario starts from: the incident, what the model answers, and the clock.
pub struct Scenario {
    incident: Map<String, Value>,
    llm_answer: ResponseTemplate,
    clock: Option<Arc<dyn Clock>>,
    configure: Option<fn(&mut TenantSettings)>,
    server_limits: ServerLimits,
    otlp_endpoint: Option<String>,
    region: Region,
    peers: HashMap<Region, String>,
    postgres: Option<PgServer>,
    oidc: Option<steward_api::OidcSettings>,
    catchup: Option<steward_actors::catchup::CatchupOptions>,
    max_live_runs: Option<usize>,
}

impl Default for Scenario {
    fn default() -> Self {
        Self {
            incident: fixtures::incident(),
            llm_answer: llm::answering(&fixtures::triage().to_string()),
            clock: None,
            configure: None,
            server_limits: ServerLimits::default(),
            otlp_endpoint: None,
            region: Region::Us,
            peers: HashMap::new(),
            postgres: None,
            oidc: None,
            catchup: None,
            max_live_runs: None,
        }
    }
}

impl Scenario {
    /// The default incident, and a model that answers with [`fixtures::triage`].
    pub fn new() -> Self {
        Self::default()
    }

    /// The model answers with `proposal` as its JSON content.
    pub fn proposing(mut self, proposal: Value) -> Self {
        self.llm_answer = llm::answering(&proposal.to_string());
        self
    }

    /// The model answers with exactly `content`, valid or not.
    pub fn model_answers(mut self, content: &str) -> Self {
        self.llm_answer = llm::answering(content);
        self
    }

    /// The provider answers every request with `answer` (an error, say).
    pub fn provider_answers(mut self, answer: ResponseTemplate) -> Self {
        self.llm_answer = answer;
        self
    }

    /// The incident's `field` holds `value`.
    pub fn incident_field(mut self, field: &str, value: &str) -> Self {
        self.incident
            .insert(field.into(), Value::String(value.into()));
        self
    }

    /// The main tenant's settings are changed by `configure` (its policy, approvers, ...).
    pub fn tenant_settings(mut self, configure: fn(&mut TenantSettings)) -> Self {
        self.configure = Some(configure);
        self
    }

    /// Steward reads time from `clock` instead of the system clock.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Steward's HTTP server runs with `limits` (by default: [`ServerLimits::default`], which
    /// has no rate limit).
    pub fn server_limits(mut self, limits: ServerLimits) -> Self {
        self.server_limits = limits;
        self
    }

    /// Spans are exported to the OTLP/HTTP collector at `endpoint`. The exporter is installed
    /// with the process's `tracing` subscriber, so only the first scenario of a test binary
    /// that asks for it gets it.
    pub fn otlp_endpoint(mut self, endpoint: &str) -> Self {
        self.otlp_endpoint = Some(endpoint.to_owned());
        self
    }

    /// Steward serves `region` (by default `us`); the two declared tenants are homed there
    /// (`<region>-acme`, `<region>-globex`).
    pub fn region(mut self, region: Region) -> Self {
        self.region = region;
        self
    }

    /// Steward names `url` as the base URL of the deployment serving `region`.
    pub fn peer(mut self, region: Region, url: &str) -> Self {
        self.peers.insert(region, url.to_owned());
        self
    }

    /// Steward runs on a fresh PostgreSQL database of its own on `server` (see
    /// [`crate::database`]), dropped with the harness.
    pub fn postgres(mut self, server: &PgServer) -> Self {
        self.postgres = Some(server.clone());
        self
    }

    /// People sign in to the ops surface through the identity provider `settings` names
    /// (`[oidc]`); the operator token then passes only the break-glass grant flow.
    pub fn oidc(mut self, settings: steward_api::OidcSettings) -> Self {
        self.oidc = Some(settings);
        self
    }

    /// Runs the ServiceNow catch-up pass with `options` (off unless asked for).
    pub fn catchup(mut self, options: steward_actors::catchup::CatchupOptions) -> Self {
        self.catchup = Some(options);
        self
    }

    /// At most `max` run actors are alive at once (by default the product's cap).
    pub fn max_live_runs(mut self, max: usize) -> Self {
        self.max_live_runs = Some(max);
        self
    }

    /// Starts the mocks and Steward.
    pub async fn start(self) -> Harness {
        let telemetry = self.otlp_endpoint.map(|endpoint| {
            let options = TelemetryOptions::new(&endpoint, "steward-e2e");
            let telemetry = Telemetry::start(&options).expect("the span exporter builds");
            steward_runtime::cli::init_logs_with(false, Some(&telemetry));
            telemetry
        });
        let servicenow = ServiceNowMock::start(self.incident).await;
        let slack = SlackMock::start().await;
        let llm = LlmMock::start(self.llm_answer).await;
        let dir = tempfile::tempdir().expect("a temporary folder");
        let place = match &self.postgres {
            Some(server) => Place::Postgres(server.fresh_database().await),
            None => Place::Sqlite(dir.path().join("steward.db")),
        };
        let region = self.region;
        let mut harness = Harness {
            servicenow,
            slack,
            llm,
            tenant: TenantFixture::new(&format!("{region}-acme"), "C0ACMEAPPR1"),
            other: TenantFixture::new(&format!("{region}-globex"), "C0GLOBEXAP2"),
            server: None,
            dir,
            place,
            region,
            peers: self.peers,
            listen: None,
            key: MasterKey::generate(),
            clock: self.clock.unwrap_or_else(|| Arc::new(SystemClock)),
            http: http_client(),
            configure: self.configure,
            server_limits: self.server_limits,
            telemetry,
            oidc: self.oidc,
            catchup: self.catchup,
            max_live_runs: self.max_live_runs,
        };
        harness.boot().await;
        harness
    }
}

/// An HTTP answer from Steward.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The body as JSON, or `Null` when it is not JSON.
    pub body: Value,
    /// The body as text.
    pub text: String,
    /// How long the request took, sending to last byte.
    pub elapsed: Duration,
}

impl Reply {
    /// The `run_id` the body names; panics when it names none.
    pub fn run_id(&self) -> RunId {
        let id = self.body["run_id"]
            .as_str()
            .unwrap_or_else(|| panic!("the answer names no run: {} {}", self.status, self.text));
        RunId::parse(id).expect("a run id")
    }

    /// The stable `error` code of an error body.
    pub fn error_code(&self) -> &str {
        self.body["error"].as_str().unwrap_or_default()
    }

    /// The `message` of an error body.
    pub fn message(&self) -> &str {
        self.body["message"].as_str().unwrap_or_default()
    }
}

/// A running Steward and the outside world it talks to.
pub struct Harness {
    /// The ServiceNow instance.
    pub servicenow: ServiceNowMock,
    /// The Slack Web API.
    pub slack: SlackMock,
    /// The LLM provider.
    pub llm: LlmMock,
    /// The tenant every scenario is about.
    pub tenant: TenantFixture,
    /// A second tenant on the same Steward, for isolation checks.
    pub other: TenantFixture,
    server: Option<Server>,
    dir: TempDir,
    place: Place,
    region: Region,
    peers: HashMap<Region, String>,
    listen: Option<SocketAddr>,
    key: MasterKey,
    clock: Arc<dyn Clock>,
    http: reqwest::Client,
    configure: Option<fn(&mut TenantSettings)>,
    server_limits: ServerLimits,
    telemetry: Option<Telemetry>,
    oidc: Option<steward_api::OidcSettings>,
    catchup: Option<steward_actors::catchup::CatchupOptions>,
    max_live_runs: Option<usize>,
}

impl Harness {
    async fn boot(&mut self) {
        let mut opts = ServeOptions::new(self.dir.path().join("steward.db"), self.key.clone());
        opts.http = HttpSettings {
            https_only: false,
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(2),
            // The production allow-lists plus loopback, where every mock listens.
            egress: Egress::default().with_loopback(),
            ..HttpSettings::default()
        };
        opts.clock = Arc::clone(&self.clock);
        opts.actors.retry = RetryPolicy {
            min_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(40),
            max_wait: Duration::from_secs(1),
            call_timeout: Duration::from_secs(10),
            ..RetryPolicy::default()
        };
        opts.tenants = vec![self.spec(&self.tenant), self.spec(&self.other)];
        opts.ops_token = Some(SecretString::from(OPS_TOKEN));
        opts.server_limits = self.server_limits.clone();
        opts.telemetry = self.telemetry.clone();
        opts.oidc = self.oidc.clone();
        opts.catchup = self.catchup.clone();
        opts.region = self.region;
        opts.peer_base_urls = self.peers.clone();
        if let Some(max) = self.max_live_runs {
            opts.actors.max_live_runs = max;
        }
        if let Some(listen) = self.listen {
            opts.listen = listen;
        }
        if let Place::Postgres(db) = &self.place {
            let mut pg = PgOptions::new(SecretString::from(db.url_as("steward_service")));
            pg.migrate_url = Some(SecretString::from(db.url_as("steward_owner")));
            pg.max_connections = 4;
            opts.postgres = Some(pg);
        }
        self.server = Some(boot::start(opts).await.expect("Steward boots"));
    }

    fn spec(&self, t: &TenantFixture) -> TenantSpec {
        let mut spec = self.default_spec(t);
        if let Some(configure) = self.configure.filter(|_| t.id == self.tenant.id) {
            configure(&mut spec.settings);
        }
        spec
    }

    fn default_spec(&self, t: &TenantFixture) -> TenantSpec {
        let secret = |v: &str| SecretString::from(v.to_owned());
        TenantSpec {
            id: t.id.clone(),
            name: format!("{} (end-to-end)", t.id),
            settings: TenantSettings {
                servicenow: ServiceNowSettings {
                    instance_url: self.servicenow.uri(),
                    grant: "password".into(),
                    client_id: servicenow::CLIENT_ID.into(),
                    username: Some(servicenow::USERNAME.into()),
                },
                slack: SlackSettings::new(
                    self.slack.api_base(),
                    t.channel.clone(),
                    vec![APPROVER.id.into()],
                ),
                llm: LlmConfig {
                    provider: "openai".into(),
                    base_url: self.llm.base_url(),
                    model: llm::MODEL.into(),
                    temperature: 0.0,
                    max_tokens: 1024,
                },
                policy: None,
            },
            secrets: vec![
                (
                    secret_names::SERVICENOW_CLIENT_SECRET.into(),
                    secret(servicenow::CLIENT_SECRET),
                ),
                (
                    secret_names::SERVICENOW_PASSWORD.into(),
                    secret(servicenow::PASSWORD),
                ),
                (
                    secret_names::SLACK_BOT_TOKEN.into(),
                    secret(slack::BOT_TOKEN),
                ),
                (
                    secret_names::SLACK_SIGNING_SECRET.into(),
                    secret(&t.signing_secret),
                ),
                (secret_names::LLM_API_KEY.into(), secret(llm::API_KEY)),
            ],
            sources: vec![(
                WebhookSource {
                    name: SourceName::parse(SOURCE).expect("a valid source name"),
                    scheme: "standard-webhooks".into(),
                    secret_name: secret_names::webhook_source(SOURCE),
                    sys_id_pointers: vec!["/incident/sys_id".into()],
                    number_pointers: vec!["/incident/number".into()],
                },
                secret(&t.whsec),
            )],
            api_token: Some(secret(&t.api_token)),
        }
    }

    /// The running server; panics between a shutdown and the next boot.
    pub fn server(&self) -> &Server {
        self.server.as_ref().expect("Steward is running")
    }

    /// Steward's base URL.
    pub fn url(&self) -> String {
        self.server().url()
    }

    /// The value of one series in `GET /metrics`, named as the scrape writes it, labels and
    /// all (`steward_run_actors_live`, `steward_x_total{tenant="us-acme"}`); None when absent
    /// or not a `T`.
    pub async fn metric<T: std::str::FromStr>(&self, series: &str) -> Option<T> {
        let scrape = self.get("/metrics", None).await;
        assert_eq!(scrape.status, 200, "GET /metrics: {}", scrape.text);
        let wanted = format!("{series} ");
        scrape
            .text
            .lines()
            .find_map(|line| line.strip_prefix(&wanted))
            .and_then(|value| value.trim().parse().ok())
    }

    /// Ids of the run actors alive now, from the inspected supervision tree.
    pub async fn live_run_actors(&self) -> Vec<String> {
        live_run_actors(self.server()).await
    }

    /// Stops Steward and boots it again on the same database file and master key.
    pub async fn restart(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
        self.boot().await;
    }

    /// Names `url` as the base URL of the deployment serving `region`: Steward stops and boots
    /// again with it, on the same address, so that URLs handed out before stay right.
    pub async fn set_peer(&mut self, region: Region, url: &str) {
        self.peers.insert(region, url.to_owned());
        self.listen = Some(self.server().addr);
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
        self.boot().await;
        // Pooled connections went to the server that stopped.
        self.http = http_client();
    }

    /// The region Steward serves.
    pub fn region(&self) -> Region {
        self.region
    }

    /// Every row of every table of Steward's database, read around Steward (as the superuser
    /// on PostgreSQL, so row-level security hides nothing).
    pub async fn stored_rows(&self) -> Vec<RawRow> {
        self.place.rows().await
    }

    /// Where Steward's database is, for reading or changing it around Steward.
    pub fn place(&self) -> &Place {
        &self.place
    }

    /// How many rows each table of Steward's database holds.
    pub async fn row_counts(&self) -> BTreeMap<String, usize> {
        self.place.counts().await
    }

    /// Steward's clock, in Unix seconds.
    pub fn now_secs(&self) -> i64 {
        self.clock.now_secs()
    }

    /// The webhook body announcing the scenario's incident.
    pub fn incident_event(&self) -> Vec<u8> {
        webhook::incident_event(
            fixtures::SYS_ID,
            fixtures::NUMBER,
            "Checkout fails with HTTP 502",
        )
    }

    /// A new delivery of `body` for the main tenant, signed now.
    pub fn delivery(&self, body: Vec<u8>) -> Delivery {
        Delivery::new(&self.tenant.whsec, self.now_secs(), body)
    }

    /// The same delivery id and body as `first`, signed again now, as a sender's retry is.
    pub fn redelivery(&self, first: &Delivery) -> Delivery {
        Delivery::signed(
            &self.tenant.whsec,
            &first.id,
            self.now_secs(),
            first.body.clone(),
        )
    }

    /// Posts `delivery` to the main tenant's `servicenow` source.
    pub async fn send(&self, delivery: &Delivery) -> Reply {
        self.send_to(self.tenant.id.as_str(), SOURCE, delivery)
            .await
    }

    /// Posts `delivery` to the main tenant's source over a connection of its own.
    pub async fn send_fresh(&self, delivery: &Delivery) -> Reply {
        let own = http_client();
        let url = self.webhook_url(self.tenant.id.as_str(), SOURCE);
        send(webhook_request(&own, &url, delivery)).await
    }

    /// Posts `delivery` to `/v1/webhooks/{tenant}/{source}`.
    pub async fn send_to(&self, tenant: &str, source: &str, delivery: &Delivery) -> Reply {
        let url = self.webhook_url(tenant, source);
        send(webhook_request(&self.http, &url, delivery)).await
    }

    /// Posts `delivery` to the main tenant's source with `headers` added.
    pub async fn send_with(&self, delivery: &Delivery, headers: &[(&str, &str)]) -> Reply {
        let url = self.webhook_url(self.tenant.id.as_str(), SOURCE);
        let mut request = webhook_request(&self.http, &url, delivery);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        send(request).await
    }

    /// Exports every finished span now, when the scenario exports spans.
    pub async fn flush_spans(&self) {
        if let Some(telemetry) = &self.telemetry {
            telemetry.flush().await;
        }
    }

    fn webhook_url(&self, tenant: &str, source: &str) -> String {
        format!("{}/v1/webhooks/{tenant}/{source}", self.url())
    }

    /// Sends the incident webhook and returns the run it started; panics unless it is `202`.
    pub async fn trigger(&self) -> RunId {
        let reply = self.send(&self.delivery(self.incident_event())).await;
        assert_eq!(reply.status, 202, "the webhook was refused: {}", reply.text);
        reply.run_id()
    }

    /// The main tenant's run, if it exists.
    pub async fn run(&self, id: RunId) -> Option<RunRecord> {
        self.server()
            .store
            .run(&self.tenant.scope(), id)
            .await
            .expect("the store answers")
    }

    /// The main tenant's runs, newest first.
    pub async fn runs(&self) -> Vec<RunRecord> {
        self.server()
            .store
            .list_runs(&self.tenant.scope(), 200, None)
            .await
            .expect("the store answers")
    }

    /// The journal of the main tenant's run.
    pub async fn steps(&self, id: RunId) -> Vec<StepRecord> {
        self.server()
            .store
            .steps(&self.tenant.scope(), id)
            .await
            .expect("the store answers")
    }

    /// The journal step of `kind`; panics if the run has none.
    pub async fn step(&self, id: RunId, kind: &str) -> Value {
        self.steps(id)
            .await
            .into_iter()
            .find(|s| s.kind == kind)
            .unwrap_or_else(|| panic!("run {id} has no {kind} step"))
            .body
    }

    /// The main tenant's whole audit chain.
    pub async fn audit(&self) -> Vec<AuditEntry> {
        self.server()
            .store
            .audit_entries(&self.tenant.scope(), 0, 1000)
            .await
            .expect("the store answers")
    }

    /// Waits until the run is in `state`.
    pub async fn wait_for_state(&self, id: RunId, state: &str) -> RunRecord {
        eventually(&format!("run {id} to be {state}"), || async {
            self.run(id).await.filter(|r| r.state == state)
        })
        .await
    }

    /// Waits until the run has ended, and returns it.
    pub async fn finished(&self, id: RunId) -> RunRecord {
        eventually(&format!("run {id} to end"), || async {
            self.run(id).await.filter(|r| states::is_terminal(&r.state))
        })
        .await
    }

    /// Waits for the first approval request posted to Slack.
    pub async fn approval_request(&self) -> PostedMessage {
        eventually("an approval request in Slack", || async {
            self.slack.posted().into_iter().next()
        })
        .await
    }

    /// Waits until the run waits for a person, and returns the approval request it posted: the
    /// moment a person would see the message and could click.
    pub async fn awaiting_approval(&self, run: RunId) -> PostedMessage {
        self.wait_for_state(run, states::AWAITING_APPROVAL).await;
        let named = format!("Run {run}");
        self.slack
            .posted()
            .into_iter()
            .find(|m| m.blocks.to_string().contains(&named))
            .unwrap_or_else(|| panic!("no approval request in Slack names run {run}"))
    }

    /// `who` clicks the button `action_id` of `message`: a signed `block_actions` callback for
    /// the main tenant, timestamped now.
    pub async fn click(&self, message: &PostedMessage, action_id: &str, who: Person) -> Reply {
        let payload = slack::block_actions(message, action_id, who, &self.slack.response_url());
        let body = slack::form_body(&payload);
        let now = self.now_secs();
        let signature = sign_slack(&self.tenant.signing_secret, now, &body);
        self.slack_callback(self.tenant.id.as_str(), body, &now.to_string(), &signature)
            .await
    }

    /// Posts a Slack interaction callback with the given headers.
    pub async fn slack_callback(
        &self,
        tenant: &str,
        body: Vec<u8>,
        timestamp: &str,
        signature: &str,
    ) -> Reply {
        let request = self
            .http
            .post(format!("{}/v1/slack/interactions/{tenant}", self.url()))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-slack-request-timestamp", timestamp)
            .header("x-slack-signature", signature)
            .body(body);
        send(request).await
    }

    /// `GET {path}` on Steward, with `token` as the bearer token if given.
    pub async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        let mut request = self.http.get(format!("{}{path}", self.url()));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        send(request).await
    }

    /// `POST {path}` on Steward with a JSON body, with `token` as the bearer token if given.
    pub async fn post_json(&self, path: &str, token: Option<&str>, body: &Value) -> Reply {
        let mut request = self
            .http
            .post(format!("{}{path}", self.url()))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        send(request).await
    }

    /// `method path` on Steward with `token` as the bearer token and `body` as JSON, if given.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Reply {
        self.request_with(method, path, token, body, &[]).await
    }

    /// As [`Harness::request`], with `headers` added.
    pub async fn request_with(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("an HTTP method");
        let mut request = self.http.request(method, format!("{}{path}", self.url()));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        send(request).await
    }

    /// Posts `body` to `path` in HTTP/1.1 chunks with no `Content-Length`, the way a client
    /// that does not say how much it will send does, and returns the status Steward answers.
    /// The closing chunk is never sent: the body's size alone must decide the answer.
    pub async fn post_chunked(&self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> u16 {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut stream = tokio::net::TcpStream::connect(self.server().addr)
            .await
            .expect("Steward accepts connections");
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nhost: {}\r\ntransfer-encoding: chunked\r\n",
            self.server().addr
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        let mut bytes = request.into_bytes();
        for chunk in body.chunks(16 * 1024) {
            bytes.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            bytes.extend_from_slice(chunk);
            bytes.extend_from_slice(b"\r\n");
        }
        stream.write_all(&bytes).await.expect("the request is sent");
        let mut head = [0u8; 12];
        tokio::time::timeout(PATIENCE, stream.read_exact(&mut head))
            .await
            .expect("Steward answers before the body ends")
            .expect("the answer is readable");
        let line = String::from_utf8_lossy(&head);
        line.strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.trim().parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP/1.1 status line: {line:?}"))
    }

    /// Stops Steward.
    pub async fn shutdown(mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
    }
}

/// A client that never goes through a proxy: everything it calls is on loopback.
fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("an HTTP client")
}

fn webhook_request(
    http: &reqwest::Client,
    url: &str,
    delivery: &Delivery,
) -> reqwest::RequestBuilder {
    // Raw bytes, so that a test can send header values no well-behaved sender would.
    let raw = |v: &str| {
        reqwest::header::HeaderValue::from_bytes(v.as_bytes())
            .expect("a header value without line breaks")
    };
    http.post(url)
        .header("content-type", "application/json")
        .header("webhook-id", raw(&delivery.id))
        .header("webhook-timestamp", raw(&delivery.timestamp))
        .header("webhook-signature", raw(&delivery.signature))
        .body(delivery.body.clone())
}

async fn send(request: reqwest::RequestBuilder) -> Reply {
    let started = Instant::now();
    let response = request.send().await.expect("Steward answers");
    let status = response.status().as_u16();
    let text = response.text().await.expect("Steward's answer is readable");
    Reply {
        status,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
        elapsed: started.elapsed(),
    }
}

/// Polls `check` every 10 ms until it yields a value; panics after [`PATIENCE`], naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "gave up after {PATIENCE:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Ids of the run actors alive now in `server`, from its inspected supervision tree.
pub async fn live_run_actors(server: &Server) -> Vec<String> {
    fn collect(node: &Value, ids: &mut Vec<String>) {
        if node["kind"] == "run"
            && let Some(id) = node["id"].as_str()
        {
            ids.push(id.to_owned());
        }
        for child in node["children"].as_array().into_iter().flatten() {
            collect(child, ids);
        }
    }
    let tree = server.steward.inspect().await.expect("the tree answers");
    let tree = serde_json::to_value(tree).expect("the tree serializes");
    let mut ids = Vec::new();
    collect(&tree, &mut ids);
    ids
}
