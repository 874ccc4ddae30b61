//! Live tests against a staging tenant's real ServiceNow instance, Slack workspace and LLM
//! provider, through Steward's own adapters. Each runs only when its `STEWARD_LIVE_…`
//! variables are set; otherwise it prints `skipped: <test>: set … to run it` to stderr and
//! returns, and `live_staging_summary` prints one line naming every test that ran or was
//! skipped. The variables, the staging roles and scopes and the command are in
//! `docs/operations/live-staging.md`. Never point them at production.
//!
//! The live code paths are also run here against the loopback mocks of this crate, through
//! [`Reach::LoopbackForTests`]: an override that only these tests can choose (no variable turns
//! it on) and that admits plain `http://` to a loopback address and nothing else.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value, json};
use steward_actors::settings::{LlmConfig, ServiceNowSettings, SlackSettings, TenantSettings};
use steward_actors::{secret_names, states};
use steward_adapters::egress::{Egress, EgressKind, HostPattern};
use steward_adapters::http::HttpSettings;
use steward_adapters::llm::{
    Anthropic, LlmProvider, LlmSettings, OpenAiCompatible, TriageReply, TriageRequest,
};
use steward_adapters::servicenow::{ServiceNowAuth, ServiceNowClient};
use steward_adapters::slack::{
    APPROVE_ACTION, ApprovalView, Outcome, PostedMessage, SlackClient, approval_message,
    outcome_message, parse_block_actions, sign_slack, verify_slack_signature,
};
use steward_adapters::webhook::WebhookSecret;
use steward_core::{DiffEntry, Incident, IncidentRef, Region, SourceName, TenantId};
use steward_persistence::{Authenticator, MasterKey, TenantScope, WebhookSource};
use steward_runtime::boot::{self, ServeOptions, TenantSpec};
use steward_tests::webhook::{Delivery, incident_event};
use url::Url;

const SN_URL: &str = "STEWARD_LIVE_SERVICENOW_URL";
const SN_CLIENT_ID: &str = "STEWARD_LIVE_SERVICENOW_CLIENT_ID";
const SN_CLIENT_SECRET: &str = "STEWARD_LIVE_SERVICENOW_CLIENT_SECRET";
const SN_USERNAME: &str = "STEWARD_LIVE_SERVICENOW_USERNAME";
const SN_PASSWORD: &str = "STEWARD_LIVE_SERVICENOW_PASSWORD";
const SN_INCIDENT: &str = "STEWARD_LIVE_SERVICENOW_INCIDENT";
const SN_WRITE: &str = "STEWARD_LIVE_SERVICENOW_WRITE";
const SLACK_API_BASE: &str = "STEWARD_LIVE_SLACK_API_BASE";
const SLACK_BOT_TOKEN: &str = "STEWARD_LIVE_SLACK_BOT_TOKEN";
const SLACK_CHANNEL: &str = "STEWARD_LIVE_SLACK_CHANNEL";
const SLACK_SIGNING_SECRET: &str = "STEWARD_LIVE_SLACK_SIGNING_SECRET";
const LLM_PROVIDER: &str = "STEWARD_LIVE_LLM_PROVIDER";
const LLM_URL: &str = "STEWARD_LIVE_LLM_URL";
const LLM_KEY: &str = "STEWARD_LIVE_LLM_KEY";
const LLM_MODEL: &str = "STEWARD_LIVE_LLM_MODEL";
const APPROVER: &str = "STEWARD_LIVE_APPROVER";
const CLICK: &str = "STEWARD_LIVE_CLICK";
const LISTEN: &str = "STEWARD_LIVE_LISTEN";
const TIMEOUT: &str = "STEWARD_LIVE_TIMEOUT_SECS";

/// What the write opt-in must be set to.
const WRITE_OPT_IN: &str = "1";
const DEFAULT_SLACK_API: &str = "https://slack.com/api/";
const DEFAULT_OPENAI_URL: &str = "https://api.openai.com/v1/";
const DEFAULT_ANTHROPIC_URL: &str = "https://api.anthropic.com/v1/";
const DEFAULT_TIMEOUT_SECS: u64 = 300;
const MAX_TIMEOUT_SECS: u64 = 3600;
/// The tenant the in-process Steward of the flagship test serves.
const LIVE_TENANT: &str = "us-live-staging";
const LIVE_SOURCE: &str = "servicenow";
/// The fields Steward's built-in policy lets a run propose (with approval).
const ALLOWED_FIELDS: [&str; 4] = ["work_notes", "assignment_group", "category", "urgency"];

// ---------------------------------------------------------------------------------------------
// Configuration

/// Reads one variable; an empty value counts as unset.
type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Which URLs a configuration accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    /// `https://` only: every live test.
    Https,
    /// Also plain `http://` to 127.0.0.1, `localhost` or `[::1]`: only the tests in this file
    /// that point the live code at loopback mocks.
    LoopbackForTests,
}

impl Reach {
    /// Outbound client settings: HTTPS only for live runs, and the region's production
    /// allow-lists plus exactly the hosts configured (loopback added only for the mocks).
    fn http(self, urls: &[(EgressKind, &Url)]) -> HttpSettings {
        let mut egress = match self {
            Reach::Https => Egress::default(),
            Reach::LoopbackForTests => Egress::default().with_loopback(),
        };
        for (kind, url) in urls {
            if let Some(host) = url.host_str() {
                let pattern = HostPattern::parse(host).expect("a parsed URL's host is a pattern");
                egress.region_mut(Region::Us).kind_mut(*kind).push(pattern);
            }
        }
        HttpSettings {
            https_only: self == Reach::Https,
            timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            egress,
            ..HttpSettings::default()
        }
    }
}

/// A test either runs with its configuration or is skipped for want of these variables.
#[derive(Debug)]
enum Plan<T> {
    Run(T),
    Skip(Vec<String>),
}

fn var(env: Lookup<'_>, name: &str) -> Option<String> {
    env(name)
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// The names of `names` that are unset.
fn missing(env: Lookup<'_>, names: &[&str]) -> Vec<String> {
    names
        .iter()
        .filter(|n| var(env, n).is_none())
        .map(|n| (*n).to_owned())
        .collect()
}

fn required(env: Lookup<'_>, name: &str) -> Result<String, String> {
    var(env, name).ok_or_else(|| format!("{name} is not set"))
}

/// A connector URL from `name`: `https://`, without credentials or fragment. Under
/// [`Reach::LoopbackForTests`] plain `http://` is also accepted for a loopback host.
fn parse_url(name: &str, value: &str, reach: Reach) -> Result<Url, String> {
    let url = Url::parse(value).map_err(|e| format!("{name} is not a URL: {e}"))?;
    let loopback = matches!(
        url.host_str(),
        Some("127.0.0.1" | "localhost" | "[::1]" | "::1")
    );
    match url.scheme() {
        "https" => {}
        "http" if reach == Reach::LoopbackForTests && loopback => {}
        _ => {
            return Err(format!(
                "{name} must be an https:// URL (live tests never send credentials in the \
                 clear): got {}://{}",
                url.scheme(),
                url.host_str().unwrap_or_default()
            ));
        }
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("{name} must not carry credentials"));
    }
    if url.fragment().is_some() || url.host_str().is_none() {
        return Err(format!("{name} must name a host and have no fragment"));
    }
    Ok(url)
}

/// A staging ServiceNow instance: the OAuth password grant and one dedicated incident.
#[derive(Debug)]
struct ServiceNowLive {
    url: Url,
    client_id: String,
    client_secret: SecretString,
    username: String,
    password: SecretString,
    incident: IncidentRef,
}

impl ServiceNowLive {
    const VARS: [&str; 6] = [
        SN_URL,
        SN_CLIENT_ID,
        SN_CLIENT_SECRET,
        SN_USERNAME,
        SN_PASSWORD,
        SN_INCIDENT,
    ];

    fn load(env: Lookup<'_>, reach: Reach) -> Result<Plan<Self>, String> {
        let absent = missing(env, &Self::VARS);
        if !absent.is_empty() {
            return Ok(Plan::Skip(absent));
        }
        let incident = required(env, SN_INCIDENT)?;
        let incident = IncidentRef::sys_id(&incident)
            .or_else(|| IncidentRef::number(&incident))
            .ok_or_else(|| {
                format!("{SN_INCIDENT} must be an incident number (INC…) or a 32-hex sys_id")
            })?;
        Ok(Plan::Run(Self {
            url: parse_url(SN_URL, &required(env, SN_URL)?, reach)?,
            client_id: required(env, SN_CLIENT_ID)?,
            client_secret: SecretString::from(required(env, SN_CLIENT_SECRET)?),
            username: required(env, SN_USERNAME)?,
            password: SecretString::from(required(env, SN_PASSWORD)?),
            incident,
        }))
    }

    /// As [`ServiceNowLive::load`], and only when the write opt-in is set to `1`.
    fn load_for_writes(env: Lookup<'_>, reach: Reach) -> Result<Plan<Self>, String> {
        let opt_in = match var(env, SN_WRITE).as_deref() {
            None => false,
            Some(WRITE_OPT_IN) => true,
            Some(other) => {
                return Err(format!(
                    "{SN_WRITE} must be {WRITE_OPT_IN} to allow writes, or unset: got {other:?}"
                ));
            }
        };
        let mut absent = missing(env, &Self::VARS);
        if !opt_in {
            absent.push(format!("{SN_WRITE}={WRITE_OPT_IN}"));
        }
        if !absent.is_empty() {
            return Ok(Plan::Skip(absent));
        }
        Self::load(env, reach)
    }

    fn client(&self, http: reqwest::Client) -> ServiceNowClient {
        let auth = ServiceNowAuth::Password {
            client_id: self.client_id.clone(),
            client_secret: self.client_secret.clone(),
            username: self.username.clone(),
            password: self.password.clone(),
        };
        ServiceNowClient::new(self.url.clone(), auth, http)
    }
}

/// A staging Slack workspace: the bot token, the approval channel and the app's signing secret.
#[derive(Debug)]
struct SlackLive {
    api_base: Url,
    bot_token: SecretString,
    channel: String,
    signing_secret: SecretString,
}

impl SlackLive {
    const VARS: [&str; 3] = [SLACK_BOT_TOKEN, SLACK_CHANNEL, SLACK_SIGNING_SECRET];

    fn load(env: Lookup<'_>, reach: Reach) -> Result<Plan<Self>, String> {
        let absent = missing(env, &Self::VARS);
        if !absent.is_empty() {
            return Ok(Plan::Skip(absent));
        }
        let api_base = var(env, SLACK_API_BASE).unwrap_or_else(|| DEFAULT_SLACK_API.into());
        let channel = required(env, SLACK_CHANNEL)?;
        if !channel.starts_with(['C', 'G']) || !channel.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(format!(
                "{SLACK_CHANNEL} must be a channel id (C… or G…), not a name"
            ));
        }
        Ok(Plan::Run(Self {
            api_base: parse_url(SLACK_API_BASE, &api_base, reach)?,
            bot_token: SecretString::from(required(env, SLACK_BOT_TOKEN)?),
            channel,
            signing_secret: SecretString::from(required(env, SLACK_SIGNING_SECRET)?),
        }))
    }
}

/// The provider kinds Steward speaks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProviderKind {
    OpenAi,
    Anthropic,
    /// Ollama's OpenAI-compatible endpoint (`…/v1/`); no key needed.
    Ollama,
}

impl ProviderKind {
    /// The name a tenant's `llm.provider` setting uses for it.
    fn setting(self) -> &'static str {
        match self {
            ProviderKind::OpenAi | ProviderKind::Ollama => "openai",
            ProviderKind::Anthropic => "anthropic",
        }
    }
}

/// The tenant's LLM provider, model and key.
#[derive(Debug)]
struct LlmLive {
    kind: ProviderKind,
    base_url: Url,
    model: String,
    key: SecretString,
}

impl LlmLive {
    fn load(env: Lookup<'_>, reach: Reach) -> Result<Plan<Self>, String> {
        let mut absent = missing(env, &[LLM_PROVIDER, LLM_MODEL]);
        let kind = match var(env, LLM_PROVIDER).as_deref() {
            None => None,
            Some("openai") => Some(ProviderKind::OpenAi),
            Some("anthropic") => Some(ProviderKind::Anthropic),
            Some("ollama") => Some(ProviderKind::Ollama),
            Some(other) => {
                return Err(format!(
                    "{LLM_PROVIDER} must be openai, anthropic or ollama: got {other:?}"
                ));
            }
        };
        // Ollama has no public default URL and needs no key; the others have both.
        match kind {
            Some(ProviderKind::Ollama) => absent.extend(missing(env, &[LLM_URL])),
            Some(_) => absent.extend(missing(env, &[LLM_KEY])),
            None => {}
        }
        let Some(kind) = kind.filter(|_| absent.is_empty()) else {
            return Ok(Plan::Skip(absent));
        };
        let url = var(env, LLM_URL).unwrap_or_else(|| match kind {
            ProviderKind::Anthropic => DEFAULT_ANTHROPIC_URL.into(),
            _ => DEFAULT_OPENAI_URL.into(),
        });
        Ok(Plan::Run(Self {
            kind,
            base_url: parse_url(LLM_URL, &url, reach)?,
            model: required(env, LLM_MODEL)?,
            key: SecretString::from(var(env, LLM_KEY).unwrap_or_else(|| "ollama".into())),
        }))
    }

    fn provider(&self, http: reqwest::Client) -> Arc<dyn LlmProvider> {
        let settings = LlmSettings {
            base_url: self.base_url.clone(),
            model: self.model.clone(),
            api_key: self.key.clone(),
            temperature: 0.0,
            max_tokens: 1024,
        };
        match self.kind {
            ProviderKind::Anthropic => Arc::new(Anthropic::new(settings, http)),
            ProviderKind::OpenAi | ProviderKind::Ollama => {
                Arc::new(OpenAiCompatible::new(settings, http))
            }
        }
    }
}

/// How the flagship run's approval is clicked.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Click {
    /// The test sends the `block_actions` callback Slack sends, signed with the signing
    /// secret, as the approver: Slack cannot reach a Steward listening on loopback.
    Signed,
    /// A person clicks Approve in Slack; Steward listens on this address, which the Slack
    /// app's Interactivity URL must reach (`…/v1/slack/interactions/us-live-staging`).
    Person(SocketAddr),
}

/// Everything the flagship run needs.
#[derive(Debug)]
struct FlagshipLive {
    servicenow: ServiceNowLive,
    slack: SlackLive,
    llm: LlmLive,
    approver: String,
    click: Click,
    timeout: Duration,
}

impl FlagshipLive {
    fn load(env: Lookup<'_>, reach: Reach) -> Result<Plan<Self>, String> {
        let servicenow = ServiceNowLive::load_for_writes(env, reach)?;
        let slack = SlackLive::load(env, reach)?;
        let llm = LlmLive::load(env, reach)?;
        let mut absent = missing(env, &[APPROVER]);
        let click = match var(env, CLICK).as_deref() {
            None | Some("signed") => Some(Click::Signed),
            Some("person") => match var(env, LISTEN) {
                Some(listen) => Some(Click::Person(listen.parse().map_err(|e| {
                    format!("{LISTEN} must be an address such as 0.0.0.0:8443: {e}")
                })?)),
                None => {
                    absent.push(LISTEN.to_owned());
                    None
                }
            },
            Some(other) => {
                return Err(format!("{CLICK} must be signed or person: got {other:?}"));
            }
        };
        let timeout = match var(env, TIMEOUT) {
            None => DEFAULT_TIMEOUT_SECS,
            Some(secs) => secs
                .parse::<u64>()
                .ok()
                .filter(|s| (1..=MAX_TIMEOUT_SECS).contains(s))
                .ok_or_else(|| format!("{TIMEOUT} must be 1 to {MAX_TIMEOUT_SECS} seconds"))?,
        };
        let (servicenow, slack, llm, click) = match (servicenow, slack, llm, click) {
            (Plan::Run(sn), Plan::Run(sl), Plan::Run(llm), Some(click)) if absent.is_empty() => {
                (sn, sl, llm, click)
            }
            (sn, sl, llm, _) => {
                let mut all = Vec::new();
                for plan in [skipped(&sn), skipped(&sl), skipped(&llm)] {
                    all.extend(plan);
                }
                all.extend(absent);
                return Ok(Plan::Skip(all));
            }
        };
        let approver = required(env, APPROVER)?;
        if !approver.starts_with(['U', 'W']) || !approver.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err(format!("{APPROVER} must be a Slack user id (U… or W…)"));
        }
        Ok(Plan::Run(Self {
            servicenow,
            slack,
            llm,
            approver,
            click,
            timeout: Duration::from_secs(timeout),
        }))
    }
}

fn skipped<T>(plan: &Plan<T>) -> Vec<String> {
    match plan {
        Plan::Run(_) => Vec::new(),
        Plan::Skip(names) => names.clone(),
    }
}

// ---------------------------------------------------------------------------------------------
// Skips and the summary

fn skip_message(test: &str, missing: &[String]) -> String {
    format!("skipped: {test}: set {} to run it", missing.join(", "))
}

/// Runs with the configuration, or prints the skip and gives None. A configuration that is
/// set but wrong fails the test: it is never taken for a skip.
fn ready<T>(test: &str, loaded: Result<Plan<T>, String>) -> Option<T> {
    match loaded {
        Err(why) => panic!("{test}: the live configuration is wrong: {why}"),
        Ok(Plan::Skip(missing)) => {
            eprintln!("{}", skip_message(test, &missing));
            None
        }
        Ok(Plan::Run(config)) => Some(config),
    }
}

const TESTS: [&str; 5] = [
    "live_servicenow_token_and_read",
    "live_servicenow_write_and_read_back",
    "live_slack_approval_request_and_signed_interaction",
    "live_llm_triage",
    "live_flagship_run",
];

/// Which live tests this environment runs and which it skips, and for want of what.
fn plan(env: Lookup<'_>) -> Vec<(&'static str, Result<Vec<String>, String>)> {
    let reach = Reach::Https;
    TESTS
        .iter()
        .map(|test| {
            let outcome = match *test {
                "live_servicenow_token_and_read" => {
                    ServiceNowLive::load(env, reach).map(|p| skipped(&p))
                }
                "live_servicenow_write_and_read_back" => {
                    ServiceNowLive::load_for_writes(env, reach).map(|p| skipped(&p))
                }
                "live_slack_approval_request_and_signed_interaction" => {
                    SlackLive::load(env, reach).map(|p| skipped(&p))
                }
                "live_llm_triage" => LlmLive::load(env, reach).map(|p| skipped(&p)),
                _ => FlagshipLive::load(env, reach).map(|p| skipped(&p)),
            };
            (*test, outcome)
        })
        .collect()
}

/// One line: how many live tests run here, and each skipped one by name.
fn summary_line(env: Lookup<'_>) -> String {
    let plan = plan(env);
    let runs: Vec<&str> = plan
        .iter()
        .filter(|(_, p)| matches!(p, Ok(m) if m.is_empty()))
        .map(|(t, _)| *t)
        .collect();
    let skips: Vec<&str> = plan
        .iter()
        .filter(|(_, p)| matches!(p, Ok(m) if !m.is_empty()))
        .map(|(t, _)| *t)
        .collect();
    let wrong: Vec<&str> = plan
        .iter()
        .filter(|(_, p)| p.is_err())
        .map(|(t, _)| *t)
        .collect();
    let list = |names: &[&str]| {
        if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(", ")
        }
    };
    let mut line = format!(
        "live staging: {} of {} run; run: {}; skipped: {}",
        runs.len(),
        plan.len(),
        list(&runs),
        list(&skips)
    );
    if !wrong.is_empty() {
        line.push_str(&format!("; misconfigured: {}", list(&wrong)));
    }
    line
}

// ---------------------------------------------------------------------------------------------
// What each live test does

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn client(settings: &HttpSettings) -> reqwest::Client {
    steward_adapters::http::client(settings).expect("an HTTP client")
}

/// The OAuth token (the password grant) and one read of the incident.
async fn servicenow_read(sn: &ServiceNowLive, reach: Reach) -> Result<Incident, String> {
    let http = client(&reach.http(&[(EgressKind::ServiceNow, &sn.url)]));
    let incident = sn
        .client(http)
        .get_incident(&sn.incident)
        .await
        .map_err(|e| format!("reading {}: {e}", sn.incident))?;
    let named = match &sn.incident {
        IncidentRef::SysId(id) => &incident.sys_id == id,
        IncidentRef::Number(n) => &incident.number == n,
    };
    if !named || incident.version().is_empty() {
        return Err(format!(
            "the instance answered another or an incomplete record: {} {} (sys_mod_count {:?})",
            incident.number,
            incident.sys_id,
            incident.version()
        ));
    }
    Ok(incident)
}

/// Appends a work note to the dedicated incident and reads it back from the journal; returns
/// the marker written.
async fn servicenow_write_and_read_back(
    sn: &ServiceNowLive,
    reach: Reach,
) -> Result<String, String> {
    let before = servicenow_read(sn, reach).await?;
    let http = client(&reach.http(&[(EgressKind::ServiceNow, &sn.url)]));
    let sn_client = sn.client(http);
    let marker = format!("[steward live test {}]", now_ms());
    let mut fields = Map::new();
    fields.insert(
        "work_notes".into(),
        json!(format!(
            "{marker} Steward's staging live test wrote this note; no action is needed."
        )),
    );
    let after = sn_client
        .patch_incident(&before.sys_id, &fields)
        .await
        .map_err(|e| format!("writing a work note to {}: {e}", before.number))?;
    let version = |i: &Incident| i.version().parse::<u64>().unwrap_or(0);
    if version(&after) <= version(&before) {
        return Err(format!(
            "the write did not move sys_mod_count: {} then {}",
            before.version(),
            after.version()
        ));
    }
    let found = sn_client
        .journal_contains(&before.sys_id, "work_notes", &marker)
        .await
        .map_err(|e| format!("reading the journal back: {e}"))?;
    if !found {
        return Err(format!(
            "the work note {marker} is not in the journal of {}",
            before.number
        ));
    }
    Ok(marker)
}

/// A `block_actions` callback as Slack sends it when `user` clicks `action_id` on `message`.
fn block_actions(message: &PostedMessage, action_id: &str, value: &str, user: &str) -> Vec<u8> {
    let payload = json!({
        "type": "block_actions",
        "user": {"id": user, "username": "live-approver", "name": "live-approver"},
        "container": {
            "type": "message", "message_ts": message.ts, "channel_id": message.channel,
            "is_ephemeral": false,
        },
        "channel": {"id": message.channel},
        "message": {"type": "message", "ts": message.ts},
        "actions": [{
            "action_id": action_id, "block_id": "steward_decision", "value": value,
            "type": "button", "action_ts": format!("{}.000001", now_ms() / 1000),
        }],
    });
    form_urlencoded::Serializer::new(String::new())
        .append_pair("payload", &payload.to_string())
        .finish()
        .into_bytes()
}

/// Posts an approval request through Steward's Slack adapter, checks a click on it in Slack's
/// signed callback format against the signing secret, and takes the buttons away again.
async fn slack_round_trip(sl: &SlackLive, reach: Reach) -> Result<PostedMessage, String> {
    let http = client(&reach.http(&[(EgressKind::Slack, &sl.api_base)]));
    let slack = SlackClient::new(sl.api_base.clone(), sl.bot_token.clone(), http);
    let approval_id = format!("apr_live{}", now_ms());
    let entries = [DiffEntry {
        field: "work_notes".into(),
        old: String::new(),
        new: "Steward staging live test: nothing to decide.".into(),
    }];
    let view = ApprovalView {
        approval_id: &approval_id,
        run_id: "run_live_staging_test",
        incident_number: "INC0000000",
        incident_title: "Steward staging live test (no action needed)",
        summary: "A live test of the approval message; its buttons are removed at once.",
        entries: &entries,
        denied: &[],
        work_note: "Steward staging live test: nothing to decide.",
        incident_url: None,
    };
    let (text, blocks) = approval_message(&view);
    let posted = slack
        .post_message(&sl.channel, &text, &blocks)
        .await
        .map_err(|e| format!("chat.postMessage to {}: {e}", sl.channel))?;
    let checked = check_signed_click(sl, &posted, &approval_id);
    let (text, blocks) = outcome_message(
        &view,
        &Outcome::Cancelled {
            reason: "a live staging test; nothing to decide",
        },
    );
    slack
        .update_message(&posted.channel, &posted.ts, &text, &blocks)
        .await
        .map_err(|e| format!("chat.update of {}: {e}", posted.ts))?;
    checked.map(|()| posted)
}

/// A click on `posted`, signed as Slack signs it, verifies under the signing secret and parses
/// back to the message and approval; the same body altered, or signed under another secret,
/// does not verify.
fn check_signed_click(
    sl: &SlackLive,
    posted: &PostedMessage,
    approval_id: &str,
) -> Result<(), String> {
    let body = block_actions(posted, APPROVE_ACTION, approval_id, "U0LIVETEST");
    let now = now_ms() / 1000;
    let secret = sl.signing_secret.expose_secret();
    let signature = sign_slack(secret, now, &body);
    let stamp = now.to_string();
    verify_slack_signature(
        &sl.signing_secret,
        Some(&stamp),
        Some(&signature),
        &body,
        now,
    )
    .map_err(|e| format!("a click signed with the signing secret does not verify: {e}"))?;
    let mut altered = body.clone();
    altered.push(b'x');
    if verify_slack_signature(
        &sl.signing_secret,
        Some(&stamp),
        Some(&signature),
        &altered,
        now,
    )
    .is_ok()
    {
        return Err("an altered callback body verifies".into());
    }
    let forged = sign_slack(&format!("{secret}-other"), now, &body);
    if verify_slack_signature(&sl.signing_secret, Some(&stamp), Some(&forged), &body, now).is_ok() {
        return Err("a callback signed with another secret verifies".into());
    }
    let action = parse_block_actions(&body).map_err(|e| format!("the callback: {e}"))?;
    let expected = (
        APPROVE_ACTION,
        approval_id,
        Some(posted.ts.as_str()),
        Some(posted.channel.as_str()),
    );
    let got = (
        action.action_id.as_str(),
        action.value.as_str(),
        action.message_ts.as_deref(),
        action.channel_id.as_deref(),
    );
    if got != expected {
        return Err(format!("the callback parses to {got:?}, not {expected:?}"));
    }
    Ok(())
}

/// One triage call through Steward's adapter for the provider; the proposal parsed and
/// schema-valid, naming only the fields it was offered.
async fn llm_triage(llm: &LlmLive, reach: Reach) -> Result<TriageReply, String> {
    let http = client(&reach.http(&[(EgressKind::Llm, &llm.base_url)]));
    let fields: BTreeMap<String, String> = [
        ("number", "INC0000000"),
        (
            "short_description",
            "VPN drops every ten minutes for the Lisbon office",
        ),
        (
            "description",
            "Since this morning the site-to-site VPN in Lisbon disconnects about every ten \
             minutes; reconnecting works. About 40 people are affected.",
        ),
        ("urgency", "3"),
        ("impact", "2"),
        ("state", "1"),
        ("category", "network"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let request = TriageRequest {
        incident: Incident {
            sys_id: "0123456789abcdef0123456789abcdef".into(),
            number: "INC0000000".into(),
            fields,
        },
        allowed_fields: ALLOWED_FIELDS.map(String::from).to_vec(),
    };
    let reply = llm
        .provider(http)
        .triage(&request)
        .await
        .map_err(|e| format!("the {:?} triage call: {e}", llm.kind))?;
    if reply.proposal.summary.trim().is_empty() {
        return Err("the proposal has an empty summary".into());
    }
    Ok(reply)
}

/// The flagship run against the three: Steward in-process with a tenant pointed at them, a
/// signed webhook for the dedicated incident, the approval clicked, the write read back.
async fn flagship_run(cfg: &FlagshipLive, reach: Reach) -> Result<(), String> {
    let incident = servicenow_read(&cfg.servicenow, reach).await?;
    let http = reach.http(&[
        (EgressKind::ServiceNow, &cfg.servicenow.url),
        (EgressKind::Slack, &cfg.slack.api_base),
        (EgressKind::Llm, &cfg.llm.base_url),
    ]);
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let whsec = WebhookSecret::generate();
    let tenant = TenantId::parse(LIVE_TENANT).expect("a valid tenant id");
    let mut opts = ServeOptions::new(dir.path().join("steward.db"), MasterKey::generate());
    opts.http = http;
    opts.tenants = vec![live_tenant(cfg, &tenant, &whsec)];
    if let Click::Person(listen) = cfg.click {
        opts.listen = listen;
    }
    let server = boot::start(opts)
        .await
        .map_err(|e| format!("Steward does not start: {e}"))?;
    let outcome = drive_flagship(cfg, &server, &tenant, &whsec, &incident, reach).await;
    server.shutdown().await;
    outcome
}

fn live_tenant(cfg: &FlagshipLive, tenant: &TenantId, whsec: &str) -> TenantSpec {
    let sn = &cfg.servicenow;
    let sl = &cfg.slack;
    let secret = |v: &SecretString| SecretString::from(v.expose_secret().to_owned());
    TenantSpec {
        id: tenant.clone(),
        name: "Live staging test".into(),
        settings: TenantSettings {
            servicenow: ServiceNowSettings {
                instance_url: sn.url.to_string().trim_end_matches('/').to_owned(),
                grant: "password".into(),
                client_id: sn.client_id.clone(),
                username: Some(sn.username.clone()),
            },
            slack: SlackSettings::new(
                sl.api_base.to_string(),
                sl.channel.clone(),
                vec![cfg.approver.clone()],
            ),
            llm: LlmConfig {
                provider: cfg.llm.kind.setting().into(),
                base_url: cfg.llm.base_url.to_string(),
                model: cfg.llm.model.clone(),
                temperature: 0.0,
                max_tokens: 1024,
            },
            policy: None,
        },
        secrets: vec![
            (
                secret_names::SERVICENOW_CLIENT_SECRET.into(),
                secret(&sn.client_secret),
            ),
            (
                secret_names::SERVICENOW_PASSWORD.into(),
                secret(&sn.password),
            ),
            (secret_names::SLACK_BOT_TOKEN.into(), secret(&sl.bot_token)),
            (
                secret_names::SLACK_SIGNING_SECRET.into(),
                secret(&sl.signing_secret),
            ),
            (secret_names::LLM_API_KEY.into(), secret(&cfg.llm.key)),
        ],
        sources: vec![(
            WebhookSource {
                name: SourceName::parse(LIVE_SOURCE).expect("a valid source name"),
                scheme: "standard-webhooks".into(),
                secret_name: secret_names::webhook_source(LIVE_SOURCE),
                sys_id_pointers: vec!["/incident/sys_id".into()],
                number_pointers: vec!["/incident/number".into()],
            },
            SecretString::from(whsec.to_owned()),
        )],
        api_token: None,
    }
}

/// Polls the run until `done` holds of its state or the deadline passes.
async fn wait_for(
    server: &boot::Server,
    scope: &TenantScope,
    run: steward_core::RunId,
    deadline: Instant,
    done: impl Fn(&str) -> bool,
) -> Result<steward_persistence::RunRecord, String> {
    loop {
        let record = server
            .store
            .run(scope, run)
            .await
            .map_err(|e| format!("reading run {run}: {e}"))?
            .ok_or_else(|| format!("run {run} is gone"))?;
        if done(&record.state) {
            return Ok(record);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "gave up waiting: run {run} is {} ({:?})",
                record.state, record.last_error
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn drive_flagship(
    cfg: &FlagshipLive,
    server: &boot::Server,
    tenant: &TenantId,
    whsec: &str,
    incident: &Incident,
    reach: Reach,
) -> Result<(), String> {
    let scope = TenantScope::assume(tenant.clone(), Authenticator::Operator);
    let local = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| e.to_string())?;
    let title = incident.field("short_description").to_owned();
    let body = incident_event(&incident.sys_id, &incident.number, &title);
    let delivery = Delivery::new(whsec, now_ms() / 1000, body);
    let answer = local
        .post(format!(
            "{}/v1/webhooks/{tenant}/{LIVE_SOURCE}",
            server.url()
        ))
        .header("content-type", "application/json")
        .header("webhook-id", &delivery.id)
        .header("webhook-timestamp", &delivery.timestamp)
        .header("webhook-signature", &delivery.signature)
        .body(delivery.body.clone())
        .send()
        .await
        .map_err(|e| format!("the webhook: {e}"))?;
    let status = answer.status().as_u16();
    let reply: Value = answer.json().await.unwrap_or(Value::Null);
    let run = reply["run_id"]
        .as_str()
        .and_then(|id| steward_core::RunId::parse(id).ok())
        .filter(|_| status == 202)
        .ok_or_else(|| format!("the webhook was answered {status}: {reply}"))?;
    let deadline = Instant::now() + cfg.timeout;
    let waiting = wait_for(server, &scope, run, deadline, |s| {
        s == states::AWAITING_APPROVAL || states::is_terminal(s)
    })
    .await?;
    if waiting.state != states::AWAITING_APPROVAL {
        return Err(format!(
            "run {run} ended {} before asking for approval: {:?}",
            waiting.state, waiting.last_error
        ));
    }
    let steps = server
        .store
        .steps(&scope, run)
        .await
        .map_err(|e| e.to_string())?;
    let step = |kind: &str| {
        steps
            .iter()
            .find(|s| s.kind == kind)
            .map(|s| s.body.clone())
            .ok_or_else(|| format!("run {run} has no {kind} step"))
    };
    let requested = step("approval_requested")?;
    let message = PostedMessage {
        channel: requested["channel"].as_str().unwrap_or_default().to_owned(),
        ts: requested["ts"].as_str().unwrap_or_default().to_owned(),
    };
    let approval_id = requested["approval_id"].as_str().unwrap_or_default();
    match cfg.click {
        Click::Signed => {
            let body = block_actions(&message, APPROVE_ACTION, approval_id, &cfg.approver);
            let now = now_ms() / 1000;
            let signature = sign_slack(cfg.slack.signing_secret.expose_secret(), now, &body);
            let clicked = local
                .post(format!("{}/v1/slack/interactions/{tenant}", server.url()))
                .header("content-type", "application/x-www-form-urlencoded")
                .header("x-slack-request-timestamp", now.to_string())
                .header("x-slack-signature", signature)
                .body(body)
                .send()
                .await
                .map_err(|e| format!("the signed click: {e}"))?;
            if clicked.status().as_u16() != 200 {
                return Err(format!(
                    "the signed click was answered {}",
                    clicked.status()
                ));
            }
        }
        Click::Person(listen) => eprintln!(
            "live_flagship_run: waiting up to {:?} for {} to click Approve on message {} in \
             {} (Steward listens on {listen})",
            cfg.timeout, cfg.approver, message.ts, message.channel
        ),
    }
    let finished = wait_for(server, &scope, run, deadline, states::is_terminal).await?;
    if finished.state != states::COMPLETED {
        return Err(format!(
            "run {run} ended {}: {:?}",
            finished.state, finished.last_error
        ));
    }
    let decided = step("policy_decided")?;
    let after = servicenow_read(&cfg.servicenow, reach).await?;
    for entry in decided["diff"]["entries"].as_array().into_iter().flatten() {
        let field = entry["field"].as_str().unwrap_or_default();
        let new = entry["new"].as_str().unwrap_or_default();
        if field != "work_notes" && after.field(field) != new {
            return Err(format!(
                "{field} reads back {:?}, not the approved {new:?}",
                after.field(field)
            ));
        }
    }
    let http = client(&reach.http(&[(EgressKind::ServiceNow, &cfg.servicenow.url)]));
    let marker = format!("[steward run {run}]");
    let noted = cfg
        .servicenow
        .client(http)
        .journal_contains(&incident.sys_id, "work_notes", &marker)
        .await
        .map_err(|e| format!("reading the journal back: {e}"))?;
    if !noted {
        return Err(format!(
            "the work note {marker} is not in the incident's journal"
        ));
    }
    let audit = server
        .store
        .verify_audit(&scope)
        .await
        .map_err(|e| e.to_string())?;
    if let Some(bad) = audit.first_bad {
        return Err(format!("the audit chain does not verify: {bad:?}"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The live tests: each skips, by name, unless its variables are set.

#[tokio::test]
async fn live_servicenow_token_and_read() {
    let test = "live_servicenow_token_and_read";
    let Some(sn) = ready(test, ServiceNowLive::load(&process_env, Reach::Https)) else {
        return;
    };
    let incident = servicenow_read(&sn, Reach::Https)
        .await
        .unwrap_or_else(|e| panic!("{test}: {e}"));
    eprintln!("{test}: read {} ({})", incident.number, incident.sys_id);
}

#[tokio::test]
async fn live_servicenow_write_and_read_back() {
    let test = "live_servicenow_write_and_read_back";
    let Some(sn) = ready(
        test,
        ServiceNowLive::load_for_writes(&process_env, Reach::Https),
    ) else {
        return;
    };
    let marker = servicenow_write_and_read_back(&sn, Reach::Https)
        .await
        .unwrap_or_else(|e| panic!("{test}: {e}"));
    eprintln!("{test}: wrote and read back {marker}");
}

#[tokio::test]
async fn live_slack_approval_request_and_signed_interaction() {
    let test = "live_slack_approval_request_and_signed_interaction";
    let Some(sl) = ready(test, SlackLive::load(&process_env, Reach::Https)) else {
        return;
    };
    let posted = slack_round_trip(&sl, Reach::Https)
        .await
        .unwrap_or_else(|e| panic!("{test}: {e}"));
    eprintln!("{test}: posted {} in {}", posted.ts, posted.channel);
}

#[tokio::test]
async fn live_llm_triage() {
    let test = "live_llm_triage";
    let Some(llm) = ready(test, LlmLive::load(&process_env, Reach::Https)) else {
        return;
    };
    let reply = llm_triage(&llm, Reach::Https)
        .await
        .unwrap_or_else(|e| panic!("{test}: {e}"));
    eprintln!(
        "{test}: {} proposed {} change(s)",
        llm.model,
        reply.proposal.changes.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_flagship_run() {
    let test = "live_flagship_run";
    let Some(cfg) = ready(test, FlagshipLive::load(&process_env, Reach::Https)) else {
        return;
    };
    flagship_run(&cfg, Reach::Https)
        .await
        .unwrap_or_else(|e| panic!("{test}: {e}"));
    eprintln!("{test}: approved, written once and read back");
}

#[test]
fn live_staging_summary() {
    eprintln!("{}", summary_line(&process_env));
}

// ---------------------------------------------------------------------------------------------
// The test logic itself, against loopback mocks.

mod logic {
    use super::*;
    use steward_tests::fixtures;
    use steward_tests::llm::{self as llm_mock, LlmMock};
    use steward_tests::servicenow::{self as sn_mock, ServiceNowMock};
    use steward_tests::slack::{self as slack_mock, SlackMock};

    const SIGNING_SECRET: &str = "live-logic-signing-secret-0123456789";

    fn env_of(vars: &[(&str, String)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        move |name: &str| map.get(name).cloned()
    }

    fn servicenow_vars(mock: &ServiceNowMock) -> Vec<(&'static str, String)> {
        vec![
            (SN_URL, mock.uri()),
            (SN_CLIENT_ID, sn_mock::CLIENT_ID.into()),
            (SN_CLIENT_SECRET, sn_mock::CLIENT_SECRET.into()),
            (SN_USERNAME, sn_mock::USERNAME.into()),
            (SN_PASSWORD, sn_mock::PASSWORD.into()),
            (SN_INCIDENT, fixtures::NUMBER.into()),
        ]
    }

    fn slack_vars(mock: &SlackMock) -> Vec<(&'static str, String)> {
        vec![
            (SLACK_API_BASE, mock.api_base()),
            (SLACK_BOT_TOKEN, slack_mock::BOT_TOKEN.into()),
            (SLACK_CHANNEL, "C0LIVELOGIC".into()),
            (SLACK_SIGNING_SECRET, SIGNING_SECRET.into()),
        ]
    }

    fn llm_vars(mock: &LlmMock) -> Vec<(&'static str, String)> {
        vec![
            (LLM_PROVIDER, "openai".into()),
            (LLM_URL, mock.base_url()),
            (LLM_KEY, llm_mock::API_KEY.into()),
            (LLM_MODEL, llm_mock::MODEL.into()),
        ]
    }

    fn run<T: std::fmt::Debug>(plan: Result<Plan<T>, String>) -> T {
        match plan {
            Ok(Plan::Run(config)) => config,
            other => panic!("expected a runnable configuration: {other:?}"),
        }
    }

    fn skip<T: std::fmt::Debug>(plan: Result<Plan<T>, String>) -> Vec<String> {
        match plan {
            Ok(Plan::Skip(missing)) => missing,
            other => panic!("expected a skip: {other:?}"),
        }
    }

    #[test]
    fn with_nothing_set_every_live_test_skips_naming_what_to_set() {
        let env = env_of(&[]);
        assert_eq!(
            skip(ServiceNowLive::load(&env, Reach::Https)),
            ServiceNowLive::VARS.map(String::from).to_vec()
        );
        let write = skip(ServiceNowLive::load_for_writes(&env, Reach::Https));
        assert_eq!(write.last().unwrap(), "STEWARD_LIVE_SERVICENOW_WRITE=1");
        assert_eq!(
            skip(SlackLive::load(&env, Reach::Https)),
            SlackLive::VARS.map(String::from).to_vec()
        );
        assert_eq!(
            skip(LlmLive::load(&env, Reach::Https)),
            [LLM_PROVIDER, LLM_MODEL].map(String::from).to_vec()
        );
        let flagship = skip(FlagshipLive::load(&env, Reach::Https));
        for name in [
            SN_URL,
            SLACK_BOT_TOKEN,
            LLM_PROVIDER,
            APPROVER,
            "STEWARD_LIVE_SERVICENOW_WRITE=1",
        ] {
            assert!(flagship.iter().any(|n| n == name), "{name} in {flagship:?}");
        }
        let line = summary_line(&env);
        assert_eq!(
            line,
            format!(
                "live staging: 0 of 5 run; run: none; skipped: {}",
                TESTS.join(", ")
            )
        );
        assert_eq!(
            skip_message("live_llm_triage", &[LLM_PROVIDER.into(), LLM_MODEL.into()]),
            "skipped: live_llm_triage: set STEWARD_LIVE_LLM_PROVIDER, STEWARD_LIVE_LLM_MODEL \
             to run it"
        );
    }

    #[test]
    fn only_the_missing_variables_are_named_and_empty_counts_as_unset() {
        let env = env_of(&[
            (SN_URL, "https://acme-staging.service-now.com".into()),
            (SN_CLIENT_ID, "id".into()),
            (SN_CLIENT_SECRET, "  ".into()),
            (SN_USERNAME, "steward.integration".into()),
        ]);
        assert_eq!(
            skip(ServiceNowLive::load(&env, Reach::Https)),
            [SN_CLIENT_SECRET, SN_PASSWORD, SN_INCIDENT]
                .map(String::from)
                .to_vec()
        );
        let ollama = env_of(&[
            (LLM_PROVIDER, "ollama".into()),
            (LLM_MODEL, "llama3.1".into()),
        ]);
        assert_eq!(
            skip(LlmLive::load(&ollama, Reach::Https)),
            vec![LLM_URL.to_owned()]
        );
        let openai = env_of(&[
            (LLM_PROVIDER, "openai".into()),
            (LLM_MODEL, "gpt-4o-mini".into()),
        ]);
        assert_eq!(
            skip(LlmLive::load(&openai, Reach::Https)),
            vec![LLM_KEY.to_owned()]
        );
        let keyed = env_of(&[
            (LLM_PROVIDER, "anthropic".into()),
            (LLM_MODEL, "claude-sonnet-4-5".into()),
            (LLM_KEY, "sk-ant-staging".into()),
        ]);
        let llm = run(LlmLive::load(&keyed, Reach::Https));
        assert_eq!(llm.kind, ProviderKind::Anthropic);
        assert_eq!(llm.base_url.as_str(), DEFAULT_ANTHROPIC_URL);
    }

    #[test]
    fn a_plain_http_url_is_refused_and_loopback_only_by_the_test_override() {
        for (url, reach, ok) in [
            ("https://acme-staging.service-now.com", Reach::Https, true),
            ("http://acme-staging.service-now.com", Reach::Https, false),
            ("http://127.0.0.1:18081", Reach::Https, false),
            ("http://127.0.0.1:18081", Reach::LoopbackForTests, true),
            ("http://localhost:18081", Reach::LoopbackForTests, true),
            ("http://10.0.0.7:18081", Reach::LoopbackForTests, false),
            (
                "http://acme-staging.service-now.com",
                Reach::LoopbackForTests,
                false,
            ),
            ("ftp://acme-staging.service-now.com", Reach::Https, false),
            (
                "https://user:pw@acme-staging.service-now.com",
                Reach::Https,
                false,
            ),
            ("not a url", Reach::Https, false),
        ] {
            assert_eq!(
                parse_url(SN_URL, url, reach).is_ok(),
                ok,
                "{url} under {reach:?}"
            );
        }
        let why = parse_url(SN_URL, "http://acme.service-now.com", Reach::Https).unwrap_err();
        assert!(
            why.contains("STEWARD_LIVE_SERVICENOW_URL must be an https:// URL"),
            "{why}"
        );

        // A full configuration with a plain-HTTP URL fails its test rather than skipping it.
        let mut vars = vec![
            (SN_URL, "http://acme-staging.service-now.com".to_owned()),
            (SN_CLIENT_ID, "id".into()),
            (SN_CLIENT_SECRET, "secret".into()),
            (SN_USERNAME, "user".into()),
            (SN_PASSWORD, "pw".into()),
            (SN_INCIDENT, "INC0010001".into()),
        ];
        let env = env_of(&vars);
        assert!(ServiceNowLive::load(&env, Reach::Https).is_err());
        let refused = std::panic::catch_unwind(|| {
            ready(
                "live_servicenow_token_and_read",
                ServiceNowLive::load(&env, Reach::Https),
            )
        });
        assert!(refused.is_err(), "a wrong configuration is never a skip");
        assert!(
            summary_line(&env).ends_with(
                "skipped: live_servicenow_write_and_read_back, live_slack_approval_request_and_signed_interaction, live_llm_triage, live_flagship_run; misconfigured: live_servicenow_token_and_read"
            ),
            "{}",
            summary_line(&env)
        );
        vars[0].1 = "https://acme-staging.service-now.com".into();
        let env = env_of(&vars);
        assert!(
            summary_line(&env).starts_with(
                "live staging: 1 of 5 run; run: live_servicenow_token_and_read; skipped: "
            ),
            "{}",
            summary_line(&env)
        );
    }

    #[test]
    fn values_that_are_set_but_wrong_are_refused() {
        let base = [
            (SN_URL, "https://acme-staging.service-now.com".to_owned()),
            (SN_CLIENT_ID, "id".into()),
            (SN_CLIENT_SECRET, "secret".into()),
            (SN_USERNAME, "user".into()),
            (SN_PASSWORD, "pw".into()),
        ];
        let with = |extra: &[(&'static str, &str)]| {
            let mut vars = base.to_vec();
            vars.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
            env_of(&vars)
        };
        let bad_incident = with(&[(SN_INCIDENT, "INC001^ORactive=true")]);
        assert!(ServiceNowLive::load(&bad_incident, Reach::Https).is_err());
        for opt_in in ["true", "yes", "0"] {
            let env = with(&[(SN_INCIDENT, "INC0010001"), (SN_WRITE, opt_in)]);
            assert!(
                ServiceNowLive::load_for_writes(&env, Reach::Https).is_err(),
                "{opt_in}"
            );
        }
        let opted = with(&[(SN_INCIDENT, "INC0010001"), (SN_WRITE, "1")]);
        run(ServiceNowLive::load_for_writes(&opted, Reach::Https));
        let gemini = env_of(&[(LLM_PROVIDER, "gemini".into()), (LLM_MODEL, "m".into())]);
        assert!(LlmLive::load(&gemini, Reach::Https).is_err());
        let named = env_of(&[
            (SLACK_BOT_TOKEN, "xoxb-1".into()),
            (SLACK_CHANNEL, "#approvals".into()),
            (SLACK_SIGNING_SECRET, "s".into()),
        ]);
        assert!(SlackLive::load(&named, Reach::Https).is_err());
    }

    #[tokio::test]
    async fn the_servicenow_checks_read_and_write_back_through_the_adapter() {
        let mock = ServiceNowMock::start(fixtures::incident()).await;
        let mut vars = servicenow_vars(&mock);
        let sn = run(ServiceNowLive::load(
            &env_of(&vars),
            Reach::LoopbackForTests,
        ));
        assert!(
            servicenow_read(&sn, Reach::Https).await.is_err(),
            "the live settings refuse plain HTTP in every request"
        );
        let read = servicenow_read(&sn, Reach::LoopbackForTests).await.unwrap();
        assert_eq!(read.sys_id, fixtures::SYS_ID);
        assert!(
            mock.token_requests().await >= 1,
            "an OAuth token was asked for"
        );
        assert!(mock.patches().await.is_empty(), "reading writes nothing");

        vars.push((SN_WRITE, "1".into()));
        let sn = run(ServiceNowLive::load_for_writes(
            &env_of(&vars),
            Reach::LoopbackForTests,
        ));
        let marker = servicenow_write_and_read_back(&sn, Reach::LoopbackForTests)
            .await
            .unwrap();
        let patches = mock.patches().await;
        assert_eq!(patches.len(), 1, "one write: {patches:?}");
        assert_eq!(patches[0].keys().collect::<Vec<_>>(), ["work_notes"]);
        assert!(
            mock.journal()
                .iter()
                .any(|j| format!("{j:?}").contains(&marker))
        );

        let wrong = ServiceNowMock::start(fixtures::incident()).await;
        let mut vars = servicenow_vars(&wrong);
        vars[4].1 = "not-the-password".into();
        let sn = run(ServiceNowLive::load(
            &env_of(&vars),
            Reach::LoopbackForTests,
        ));
        assert!(servicenow_read(&sn, Reach::LoopbackForTests).await.is_err());
    }

    #[tokio::test]
    async fn the_slack_check_posts_verifies_a_signed_click_and_removes_the_buttons() {
        let mock = SlackMock::start().await;
        let sl = run(SlackLive::load(
            &env_of(&slack_vars(&mock)),
            Reach::LoopbackForTests,
        ));
        let posted = slack_round_trip(&sl, Reach::LoopbackForTests)
            .await
            .unwrap();
        let messages = mock.posted();
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].channel, "C0LIVELOGIC");
        assert_eq!(messages[0].ts, posted.ts);
        assert!(messages[0].blocks.to_string().contains(APPROVE_ACTION));
        let updates = mock.calls("chat.update").await;
        assert_eq!(updates.len(), 1);
        assert!(!updates[0]["blocks"].to_string().contains(APPROVE_ACTION));
    }

    #[tokio::test]
    async fn the_llm_check_parses_the_structured_proposal() {
        let mock = LlmMock::start(llm_mock::answering(&fixtures::triage().to_string())).await;
        let llm = run(LlmLive::load(
            &env_of(&llm_vars(&mock)),
            Reach::LoopbackForTests,
        ));
        let reply = llm_triage(&llm, Reach::LoopbackForTests).await.unwrap();
        assert!(!reply.proposal.changes.is_empty());
        assert_eq!(mock.requests().await.len(), 1, "one triage call");

        let broken = LlmMock::start(llm_mock::answering("this is not a proposal")).await;
        let llm = run(LlmLive::load(
            &env_of(&llm_vars(&broken)),
            Reach::LoopbackForTests,
        ));
        assert!(llm_triage(&llm, Reach::LoopbackForTests).await.is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_flagship_run_approves_writes_and_reads_back() {
        let sn = ServiceNowMock::start(fixtures::incident()).await;
        let slack = SlackMock::start().await;
        let llm = LlmMock::start(llm_mock::answering(&fixtures::triage().to_string())).await;
        let mut vars = servicenow_vars(&sn);
        vars.push((SN_WRITE, "1".into()));
        vars.extend(slack_vars(&slack));
        vars.extend(llm_vars(&llm));
        vars.push((APPROVER, steward_tests::APPROVER.id.into()));
        vars.push((TIMEOUT, "30".into()));
        let cfg = run(FlagshipLive::load(&env_of(&vars), Reach::LoopbackForTests));
        assert_eq!(cfg.click, Click::Signed);
        flagship_run(&cfg, Reach::LoopbackForTests).await.unwrap();
        let patches = sn.patches().await;
        assert_eq!(patches.len(), 1, "written exactly once: {patches:?}");
        assert_eq!(sn.record()["urgency"], "1");
        assert_eq!(slack.posted().len(), 1, "one approval request");
    }
}
