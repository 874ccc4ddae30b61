//! Local stand-ins for the services Steward talks to: a ServiceNow instance (OAuth and the
//! Table API), the Slack Web API, and an OpenAI-compatible Chat Completions provider.
//!
//! They serve `steward demo`, the benchmarks, the chaos tests and the runbooks; no product path
//! uses them. Each is an in-memory axum server on a loopback address that speaks the vendor's
//! documented wire format, records what it receives, and exposes that record through
//! [`Standins`] and, for other processes, over HTTP under `/_standin/`:
//!
//! - every server: `GET /_standin/state` (its records and the shared [`Counts`]);
//! - ServiceNow: `POST /_standin/incidents` seeds an incident from a JSON object;
//! - Slack: `POST /_standin/click` with `{interactions_url, ts, action_id, user_id, user_name}`
//!   delivers a signed button click, as [`Standins::click`] does;
//! - LLM: `PUT /_standin/llm_reply` with an [`LlmScript`] changes the scripted reply;
//! - every server: `PUT /_standin/faults` replaces its fault book (see [`FaultRule`]) and
//!   `GET /_standin/faults` shows it with each rule's hits.
//!
//! They serve plain HTTP, or HTTPS with a given certificate pair ([`Standins::start_with`],
//! `steward standins --tls-cert … --tls-key …`).

mod faults;
mod llm;
mod servicenow;
mod slack;
mod support;
#[cfg(test)]
mod tests;

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

pub use self::faults::{FaultAction, FaultError, FaultRoute, FaultRule};

use self::faults::{Faults, Vendor};
use self::llm::Llm;
use self::servicenow::ServiceNow;
use self::slack::Slack;
use self::support::ServerTask;

/// Credentials and scripted behaviour of the stand-ins. The secrets are demo values known to
/// both sides; `Debug` still prints them redacted.
#[derive(Clone, Deserialize)]
#[serde(default)]
pub struct StandinSettings {
    /// OAuth client id of Steward's ServiceNow application registry.
    pub oauth_client_id: String,
    /// OAuth client secret of that registry.
    pub oauth_client_secret: String,
    /// The ServiceNow integration user.
    pub sn_username: String,
    /// The integration user's password.
    pub sn_password: String,
    /// The Slack bot token (`xoxb-…`) Web API calls must present.
    pub slack_bot_token: String,
    /// The Slack signing secret, used as UTF-8 bytes for the v0 request signature.
    pub slack_signing_secret: String,
    /// Lifetime of ServiceNow access tokens in seconds (ServiceNow reports 1799 by default).
    pub token_lifetime_secs: u64,
    /// The API key Chat Completions calls must present.
    pub llm_api_key: String,
    /// What the LLM replies to every completion.
    pub llm_reply: LlmScript,
}

impl Default for StandinSettings {
    fn default() -> Self {
        Self {
            oauth_client_id: "2c1f6b9e4d8a4f0e9b7c3a5d6e8f1a2b".into(),
            oauth_client_secret: "Qm7#demo-client-secret-4f8a".into(),
            sn_username: "steward.integration".into(),
            sn_password: "demo-Integration-P4ss!".into(),
            slack_bot_token: "xoxb-1234567890-9876543210987-StewardDemoBotToken42".into(),
            slack_signing_secret: "5f3a9c1e7b2d4f6a8c0e1b3d5f7a9c2e".into(),
            token_lifetime_secs: 1799,
            llm_api_key: "sk-proj-steward-demo-0000000000000000000000000000".into(),
            llm_reply: LlmScript::Proposal(demo_proposal()),
        }
    }
}

impl fmt::Debug for StandinSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const REDACTED: &str = "[redacted]";
        f.debug_struct("StandinSettings")
            .field("oauth_client_id", &self.oauth_client_id)
            .field("oauth_client_secret", &REDACTED)
            .field("sn_username", &self.sn_username)
            .field("sn_password", &REDACTED)
            .field("slack_bot_token", &REDACTED)
            .field("slack_signing_secret", &REDACTED)
            .field("token_lifetime_secs", &self.token_lifetime_secs)
            .field("llm_api_key", &REDACTED)
            .field("llm_reply", &self.llm_reply)
            .finish()
    }
}

/// The triage a plausible model would propose for the demo's checkout incident.
fn demo_proposal() -> Value {
    json!({
        "summary": "Checkout requests fail with HTTP 502 since the 14:05 deploy; the payments \
                    service exhausts its database connection pool.",
        "category": "software",
        "changes": [
            {"field": "impact", "value": "1"},
            {"field": "urgency", "value": "1"},
            {"field": "work_notes", "value": "Likely cause: connection pool exhaustion in \
                payments after the 14:05 deploy. Suggest rolling back and raising the pool limit."},
        ],
    })
}

/// What the LLM stand-in answers. Serialized as `{"kind": "proposal" | "raw_content" |
/// "refusal", "value": …}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum LlmScript {
    /// Reply with this proposal as the message content, serialized: an object
    /// `{summary, category, changes: [{field, value}]}`.
    Proposal(Value),
    /// Reply with this raw content string (for malformed-reply scenarios).
    RawContent(String),
    /// Reply with a refusal (message.refusal set, content null).
    Refusal(String),
}

/// A Slack message posted with `chat.postMessage`, as it stands now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlackMessage {
    /// The channel ID it was posted to (a name is resolved to a stable ID).
    pub channel: String,
    /// Its timestamp ID, such as `1503435956.000247`.
    pub ts: String,
    /// Its current text.
    pub text: String,
    /// Its current blocks (`[]` when it has none).
    pub blocks: Value,
    /// Each `chat.update` body applied to it, oldest first.
    pub updates: Vec<Value>,
}

/// One journal entry (`work_notes` or `comments`) written to an incident.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// `work_notes` or `comments`.
    pub element: String,
    /// The text written.
    pub value: String,
    /// When, as `YYYY-MM-DD HH:MM:SS` UTC.
    pub sys_created_on: String,
}

/// A PATCH the ServiceNow stand-in received (authenticated, with a JSON object body),
/// whether or not the record existed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedPatch {
    /// The sys_id in the request path.
    pub sys_id: String,
    /// The request body.
    pub body: Value,
}

/// How many calls of each kind the stand-ins have answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Requests to `/oauth_token.do`, granted or not.
    pub oauth: u64,
    /// Authenticated Table API GETs (single records and lists).
    pub table_gets: u64,
    /// Authenticated, well-formed Table API PATCHes.
    pub patches: u64,
    /// Successful `chat.postMessage` calls.
    pub slack_posts: u64,
    /// Successful `chat.update` calls.
    pub slack_updates: u64,
    /// Authenticated, well-formed chat completions.
    pub llm_calls: u64,
}

/// The live counters behind [`Counts`], shared by the three servers.
#[derive(Debug, Default)]
struct Counters {
    oauth: AtomicU64,
    table_gets: AtomicU64,
    patches: AtomicU64,
    slack_posts: AtomicU64,
    slack_updates: AtomicU64,
    llm_calls: AtomicU64,
}

// === impl Counters ===

impl Counters {
    fn snapshot(&self) -> Counts {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Counts {
            oauth: read(&self.oauth),
            table_gets: read(&self.table_gets),
            patches: read(&self.patches),
            slack_posts: read(&self.slack_posts),
            slack_updates: read(&self.slack_updates),
            llm_calls: read(&self.llm_calls),
        }
    }
}

/// What the stand-ins need to serve HTTPS: the PEM certificate chain and key they present
/// (the same pair for all three), and the CA certificates the Slack stand-in trusts, besides
/// the web roots, when it delivers a click to an `https://` interactions URL.
#[derive(Debug, Clone)]
pub struct StandinTls {
    pub cert_file: std::path::PathBuf,
    pub key_file: std::path::PathBuf,
    pub click_roots: Vec<reqwest::Certificate>,
}

/// The three running stand-ins and their shared state. Dropping it stops the servers.
pub struct Standins {
    servicenow: Arc<ServiceNow>,
    slack: Arc<Slack>,
    llm: Arc<Llm>,
    counters: Arc<Counters>,
    faults: FaultBooks,
    urls: Urls,
    _tasks: [ServerTask; 3],
}

/// The fault book of each server.
#[derive(Debug)]
struct FaultBooks {
    servicenow: Arc<Faults>,
    slack: Arc<Faults>,
    llm: Arc<Faults>,
}

#[derive(Debug, Clone)]
struct Urls {
    servicenow: String,
    slack: String,
    llm: String,
}

// === impl Standins ===

impl Standins {
    /// Starts the three servers on free ports of 127.0.0.1.
    pub async fn start(settings: StandinSettings) -> anyhow::Result<Standins> {
        let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        Self::start_on(settings, any, any, any).await
    }

    /// Starts the three servers on the given loopback addresses (port 0 picks a free port).
    /// Fails on an address that is not loopback or cannot be bound.
    pub async fn start_on(
        settings: StandinSettings,
        servicenow: SocketAddr,
        slack: SocketAddr,
        llm: SocketAddr,
    ) -> anyhow::Result<Standins> {
        Self::start_with(settings, servicenow, slack, llm, None).await
    }

    /// As [`Standins::start_on`], serving HTTPS with `tls` when given: every URL is then
    /// `https://`. Fails on a pair that does not load, naming the file.
    pub async fn start_with(
        settings: StandinSettings,
        servicenow: SocketAddr,
        slack: SocketAddr,
        llm: SocketAddr,
        tls: Option<&StandinTls>,
    ) -> anyhow::Result<Standins> {
        let listener = match tls {
            Some(tls) => {
                let options = crate::tls::TlsOptions::new(&tls.cert_file, &tls.key_file);
                let server = crate::tls::ServerTls::new(options).map_err(anyhow::Error::msg)?;
                Some(server.listener())
            }
            None => None,
        };
        let https = listener.is_some();
        let click_roots = tls.map(|t| t.click_roots.as_slice()).unwrap_or_default();
        // Bind first: the ServiceNow links and Slack response URLs name the bound ports.
        let (sn_listener, sn_addr) = support::bind_loopback(servicenow).await?;
        let (slack_listener, slack_addr) = support::bind_loopback(slack).await?;
        let (llm_listener, llm_addr) = support::bind_loopback(llm).await?;
        let urls = Urls {
            servicenow: support::base_url(sn_addr, https),
            slack: support::base_url(slack_addr, https),
            llm: support::base_url(llm_addr, https),
        };

        // Build each service's state from its share of the settings.
        let counters = Arc::new(Counters::default());
        let servicenow = Arc::new(ServiceNow::new(
            urls.servicenow.clone(),
            servicenow_credentials(&settings),
            counters.clone(),
        ));
        let slack = Arc::new(Slack::new(
            urls.slack.clone(),
            settings.slack_bot_token,
            settings.slack_signing_secret,
            counters.clone(),
            click_roots,
        )?);
        let llm = Arc::new(Llm::new(
            settings.llm_api_key,
            settings.llm_reply,
            counters.clone(),
        ));

        // Serve, every request going through its server's fault book.
        let faults = FaultBooks {
            servicenow: Arc::new(Faults::new(Vendor::ServiceNow)),
            slack: Arc::new(Faults::new(Vendor::Slack)),
            llm: Arc::new(Faults::new(Vendor::Llm)),
        };
        let tasks = [
            ServerTask::spawn(
                "servicenow",
                sn_listener,
                faults::layer(
                    servicenow::router(servicenow.clone()),
                    faults.servicenow.clone(),
                ),
                listener.clone(),
            ),
            ServerTask::spawn(
                "slack",
                slack_listener,
                faults::layer(slack::router(slack.clone()), faults.slack.clone()),
                listener.clone(),
            ),
            ServerTask::spawn(
                "llm",
                llm_listener,
                faults::layer(llm::router(llm.clone()), faults.llm.clone()),
                listener,
            ),
        ];
        Ok(Standins {
            servicenow,
            slack,
            llm,
            counters,
            faults,
            urls,
            _tasks: tasks,
        })
    }

    /// The ServiceNow instance base, `http://127.0.0.1:PORT` (`https://` over TLS).
    pub fn servicenow_url(&self) -> String {
        self.urls.servicenow.clone()
    }

    /// The Slack Web API base, `http://127.0.0.1:PORT/api/` (`https://` over TLS).
    pub fn slack_api_url(&self) -> String {
        format!("{}/api/", self.urls.slack)
    }

    /// The OpenAI-compatible base, `http://127.0.0.1:PORT/v1/` (`https://` over TLS).
    pub fn llm_base_url(&self) -> String {
        format!("{}/v1/", self.urls.llm)
    }

    /// Adds an incident and returns its sys_id. Values are stored as strings (numbers and
    /// booleans as written, `null` as `""`, a reference object by its `value`). Absent fields
    /// are filled the way a new record has them: `sys_id` (32 hex digits), `number`
    /// (`INC0010001`, `INC0010002`, …), `sys_mod_count` `"0"`, `sys_created_on` and
    /// `sys_updated_on` (now), `state` `"1"`, `impact`/`urgency` `"3"`, a `priority` derived
    /// from them, and empty strings for the other standard fields. `work_notes` and `comments`
    /// become journal entries. Seeding an existing sys_id replaces that record.
    pub fn seed_incident(&self, record: Map<String, Value>) -> String {
        self.servicenow.seed(record)
    }

    /// The incident's current `result` object as the Table API returns it with
    /// `sysparm_exclude_reference_link=true`: every value a string, journal fields `""`.
    pub fn incident(&self, sys_id: &str) -> Option<Value> {
        self.servicenow.incident(sys_id)
    }

    /// The `work_notes` and `comments` entries written to an incident, oldest first.
    pub fn journal(&self, sys_id: &str) -> Vec<JournalEntry> {
        self.servicenow.journal(sys_id)
    }

    /// Every authenticated PATCH with a JSON object body, in arrival order.
    pub fn patches(&self) -> Vec<RecordedPatch> {
        self.servicenow.patches()
    }

    /// Every message posted with `chat.postMessage`, in order, with updates applied.
    pub fn slack_messages(&self) -> Vec<SlackMessage> {
        self.slack.messages()
    }

    /// Every `chat.postEphemeral` body accepted, with the `message_ts` it was given.
    pub fn ephemerals(&self) -> Vec<Value> {
        self.slack.ephemerals()
    }

    /// Every POST to a click's `response_url`: `{message_ts, channel, body}`.
    pub fn responses(&self) -> Vec<Value> {
        self.slack.responses()
    }

    /// Every authenticated, well-formed chat completion request body, in order.
    pub fn llm_requests(&self) -> Vec<Value> {
        self.llm.requests()
    }

    /// Changes what the LLM replies from now on.
    pub fn set_llm_reply(&self, script: LlmScript) {
        self.llm.set_script(script);
    }

    /// Replaces the fault books of all three servers: each rule goes to the server of its
    /// route, and a server no rule names gets an empty book. On error nothing changes.
    pub fn set_faults(&self, rules: Vec<FaultRule>) -> Result<(), FaultError> {
        let books = [
            &self.faults.servicenow,
            &self.faults.slack,
            &self.faults.llm,
        ];
        let mut shares: [Vec<FaultRule>; 3] = Default::default();
        for rule in rules {
            let index = match rule.route.vendor() {
                Vendor::ServiceNow => 0,
                Vendor::Slack => 1,
                Vendor::Llm => 2,
            };
            shares[index].push(rule);
        }
        for (book, share) in books.iter().zip(&shares) {
            book.check_all(share)?;
        }
        for (book, share) in books.iter().zip(shares) {
            book.replace(share)?;
        }
        Ok(())
    }

    /// The call counts so far.
    pub fn counts(&self) -> Counts {
        self.counters.snapshot()
    }

    /// The first message posted, as it stands now; waits up to `timeout` for one to arrive.
    pub async fn wait_for_message(&self, timeout: Duration) -> Option<SlackMessage> {
        self.slack.wait_for_first(timeout).await
    }

    /// Acts as Slack delivering a click on the button `action_id` of `message`: builds a
    /// `block_actions` payload (user, channel, container, message, the button's `value` and
    /// `block_id`, a `response_url` served by this stand-in), form-encodes it as
    /// `payload=<json>`, signs it with the v0 scheme at the current time, and POSTs it to
    /// `interactions_url`, which must be a loopback URL. Returns the response status and body.
    pub async fn click(
        &self,
        interactions_url: &str,
        message: &SlackMessage,
        action_id: &str,
        user_id: &str,
        user_name: &str,
    ) -> anyhow::Result<(u16, String)> {
        let user = slack::ClickUser {
            id: user_id,
            name: user_name,
        };
        Ok(self
            .slack
            .click(interactions_url, message, action_id, user)
            .await?)
    }

    /// The URL line `serve_forever` prints.
    fn url_line(&self) -> Value {
        json!({
            "servicenow": self.servicenow_url(),
            "slack_api": self.slack_api_url(),
            "llm": self.llm_base_url(),
        })
    }
}

impl fmt::Debug for Standins {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Standins")
            .field("urls", &self.urls)
            .field("counts", &self.counts())
            .finish()
    }
}

fn servicenow_credentials(settings: &StandinSettings) -> servicenow::Credentials {
    servicenow::Credentials {
        client_id: settings.oauth_client_id.clone(),
        client_secret: settings.oauth_client_secret.clone(),
        username: settings.sn_username.clone(),
        password: settings.sn_password.clone(),
        token_lifetime: Duration::from_secs(settings.token_lifetime_secs),
    }
}

/// Starts the stand-ins (over HTTPS with `tls`), prints one JSON line `{"servicenow",
/// "slack_api", "llm"}` with their URLs to stdout (and `oidc_issuer` when the OpenID provider
/// stand-in `oidc` is served too), and serves until Ctrl-C.
pub async fn serve_forever(
    settings: StandinSettings,
    servicenow: SocketAddr,
    slack: SocketAddr,
    llm: SocketAddr,
    oidc: Option<crate::standins_oidc::OidcStandin>,
    tls: Option<&StandinTls>,
) -> anyhow::Result<()> {
    let standins = Standins::start_with(settings, servicenow, slack, llm, tls).await?;
    let mut line = standins.url_line();
    if let Some(oidc) = &oidc {
        line["oidc_issuer"] = json!(oidc.issuer());
    }
    println!("{line}");
    tokio::signal::ctrl_c()
        .await
        .context("could not listen for ctrl-c")?;
    Ok(())
}
