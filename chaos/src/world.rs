//! One scenario's world: a temporary folder with a config file and a database, the stand-ins
//! process, and Steward, which the scenario may kill and start again.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use hmac::{Hmac, Mac as _};
use serde_json::{Value, json};
use sha2::Sha256;
use tempfile::TempDir;

use crate::process::{StandinUrls, StandinsProcess, StewardProcess};

/// The tenant every scenario declares.
pub const TENANT: &str = "us-chaos";
/// The approver the clicks come from.
pub const APPROVER: (&str, &str) = ("U0CHAOSAPR1", "chaos.approver");
/// The Slack channel approval requests go to.
const CHANNEL: &str = "C0CHAOSAPR1";
/// The operator token for the ops API.
const OPS_TOKEN: &str = "chaos-ops-token-0123456789abcdef0123";
/// Action ids of the approval message's buttons.
const APPROVE_ACTION: &str = "steward_approve";
const REJECT_ACTION: &str = "steward_reject";

/// The stand-ins' demo credentials (`steward standins` runs with its defaults).
const SN_CLIENT_ID: &str = "2c1f6b9e4d8a4f0e9b7c3a5d6e8f1a2b";
const SN_CLIENT_SECRET: &str = "Qm7#demo-client-secret-4f8a";
const SN_USER: &str = "steward.integration";
const SN_PASSWORD: &str = "demo-Integration-P4ss!";
const SLACK_BOT_TOKEN: &str = "xoxb-1234567890-9876543210987-StewardDemoBotToken42";
const SLACK_SIGNING_SECRET: &str = "5f3a9c1e7b2d4f6a8c0e1b3d5f7a9c2e";
const LLM_API_KEY: &str = "sk-proj-steward-demo-0000000000000000000000000000";

/// How long one HTTP call to Steward or a stand-in may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Which stand-in server a fault book or a state read is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    /// The ServiceNow instance.
    ServiceNow,
    /// The Slack Web API.
    Slack,
    /// The LLM provider.
    Llm,
}

/// A webhook Steward accepted, with the incident it names.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// The run it started.
    pub run_id: String,
    /// The incident's sys_id.
    pub sys_id: String,
}

/// The scenario's processes and files.
pub struct World {
    dir: TempDir,
    standins: StandinsProcess,
    steward: Option<StewardProcess>,
    url: String,
    http: reqwest::Client,
    webhook_secret: Vec<u8>,
    starts: u32,
    /// SIGKILLs sent to Steward so far.
    pub kills: u32,
    /// Every webhook Steward accepted, in order.
    pub accepted: Vec<Accepted>,
    /// The second node of a two-node world, with its URL and config.
    second: Option<(StewardProcess, String, PathBuf)>,
    /// The PostgreSQL database of a two-node world.
    pg: Option<crate::postgres::Database>,
    /// The first node's URL while it is down for an upgrade.
    first_down: Option<String>,
}

impl World {
    /// Starts the stand-ins, writes the config and starts Steward.
    pub async fn start() -> anyhow::Result<World> {
        let dir = tempfile::tempdir().context("could not make the scenario folder")?;
        let standins = StandinsProcess::start(&dir.path().join("standins.log"))?;
        let port = free_port()?;
        let webhook_secret: [u8; 24] = rand::random();
        write_config(&dir, port, &standins.urls, &webhook_secret)?;
        let http = reqwest::Client::builder()
            .timeout(CALL_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let mut world = World {
            dir,
            standins,
            steward: None,
            url: format!("http://127.0.0.1:{port}"),
            http,
            webhook_secret: webhook_secret.to_vec(),
            starts: 0,
            kills: 0,
            accepted: Vec::new(),
            second: None,
            pg: None,
            first_down: None,
        };
        world.start_steward().await?;
        Ok(world)
    }

    /// Two nodes on one PostgreSQL database of their own on the server at the superuser URL
    /// `admin`, sharing the stand-ins: `node-a` starts first and takes the tenant's lease
    /// (leases of `lease_secs`), then `node-b` starts. Calls go to `node-a` until
    /// [`World::kill_first_node`].
    pub async fn start_pair(admin: &str, lease_secs: u64) -> anyhow::Result<World> {
        let dir = tempfile::tempdir().context("could not make the scenario folder")?;
        let standins = StandinsProcess::start(&dir.path().join("standins.log"))?;
        let pg = crate::postgres::Database::create(admin)?;
        std::fs::write(dir.path().join("pg_service"), pg.url_as("steward_service"))?;
        std::fs::write(dir.path().join("pg_owner"), pg.url_as("steward_owner"))?;
        let webhook_secret: [u8; 24] = rand::random();
        let (port_a, port_b) = (free_port()?, free_port()?);
        write_config(&dir, port_a, &standins.urls, &webhook_secret)?;
        let base = std::fs::read_to_string(dir.path().join("steward.toml"))?;
        for (node, port) in [("a", port_a), ("b", port_b)] {
            let config = node_config(&base, port_a, port, node, lease_secs);
            std::fs::write(dir.path().join(format!("steward-{node}.toml")), config)?;
        }
        let http = reqwest::Client::builder()
            .timeout(CALL_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let url_a = format!("http://127.0.0.1:{port_a}");
        let url_b = format!("http://127.0.0.1:{port_b}");
        let config_a = dir.path().join("steward-a.toml");
        let config_b = dir.path().join("steward-b.toml");
        // The CLI commands a scenario runs (audit verify) read steward.toml: the first node's.
        std::fs::copy(&config_a, dir.path().join("steward.toml"))?;
        let a = StewardProcess::start(&config_a, &dir.path().join("node-a.log"), &url_a).await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while pg.lease_holder(TENANT)?.as_deref() != Some("node-a") {
            anyhow::ensure!(
                Instant::now() < deadline,
                "node-a took no lease within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let b = StewardProcess::start(&config_b, &dir.path().join("node-b.log"), &url_b).await?;
        Ok(World {
            dir,
            standins,
            steward: Some(a),
            url: url_a,
            http,
            webhook_secret: webhook_secret.to_vec(),
            starts: 2,
            kills: 0,
            accepted: Vec::new(),
            second: Some((b, url_b, config_b)),
            pg: Some(pg),
            first_down: None,
        })
    }

    /// The second node's URL, in a two-node world.
    pub fn second_url(&self) -> Option<&str> {
        self.second.as_ref().map(|(_, url, _)| url.as_str())
    }

    /// Sends the calls that follow to the node at `url` (one of the two).
    pub fn use_node(&mut self, url: &str) {
        self.url = url.to_owned();
    }

    /// In a two-node world, SIGKILLs the first node; the second becomes the one the calls
    /// go to. Returns when the kill was sent.
    pub fn kill_first_node(&mut self) -> anyhow::Result<Instant> {
        let (second, url, config) = self.second.take().context("not a two-node world")?;
        let killed_at = Instant::now();
        self.kill_steward();
        self.steward = Some(second);
        self.url = url;
        std::fs::copy(config, self.config_path())?;
        Ok(killed_at)
    }

    /// In a two-node world, stops the first node as a rolling upgrade does (SIGTERM: it
    /// finishes its requests, drains and exits); the second becomes the one the calls go to.
    /// Returns when SIGTERM was sent and whether the node exited cleanly within 30 s.
    pub fn drain_first_node(&mut self) -> anyhow::Result<(Instant, bool)> {
        let (second, url, config) = self.second.take().context("not a two-node world")?;
        let first = self
            .steward
            .take()
            .context("the first node is not running")?;
        let first_url = std::mem::replace(&mut self.url, url);
        let sent_at = Instant::now();
        let clean = first.terminate(Duration::from_secs(30))?;
        self.steward = Some(second);
        std::fs::copy(&config, self.config_path())?;
        self.first_down = Some(first_url);
        Ok((sent_at, clean))
    }

    /// Starts the first node again (the upgraded binary, in a rolling upgrade) beside the
    /// running one, after [`World::drain_first_node`].
    pub async fn restart_first_node(&mut self) -> anyhow::Result<()> {
        let url = self
            .first_down
            .take()
            .context("the first node was not drained")?;
        self.starts += 1;
        let config = self.dir.path().join("steward-a.toml");
        let log = self.dir.path().join(format!("node-a-{}.log", self.starts));
        let node = StewardProcess::start(&config, &log, &url).await?;
        self.second = Some((node, url, config));
        Ok(())
    }

    /// The node holding the tenant's lease, in a two-node world.
    pub fn lease_holder(&self) -> anyhow::Result<Option<String>> {
        self.pg
            .as_ref()
            .context("not a two-node world")?
            .lease_holder(TENANT)
    }

    /// Steward's base URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The config file, for CLI commands such as `audit verify`.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("steward.toml")
    }

    /// Starts Steward (again) on the same database.
    pub async fn start_steward(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.steward.is_none(), "steward is already running");
        self.starts += 1;
        let log = self.dir.path().join(format!("steward-{}.log", self.starts));
        let steward = StewardProcess::start(&self.config_path(), &log, &self.url).await?;
        self.steward = Some(steward);
        Ok(())
    }

    /// SIGKILLs Steward.
    pub fn kill_steward(&mut self) {
        if let Some(steward) = self.steward.take() {
            steward.kill();
            self.kills += 1;
        }
    }

    /// SIGKILLs Steward and starts it again.
    pub async fn crash_and_restart(&mut self) -> anyhow::Result<()> {
        self.kill_steward();
        self.start_steward().await
    }

    fn server_root(&self, server: Server) -> String {
        let urls = &self.standins.urls;
        match server {
            Server::ServiceNow => urls.servicenow.clone(),
            Server::Slack => urls.slack_root().to_owned(),
            Server::Llm => urls.llm_root().to_owned(),
        }
    }

    /// `GET /_standin/state` of a stand-in server.
    pub async fn standin_state(&self, server: Server) -> anyhow::Result<Value> {
        let url = format!("{}/_standin/state", self.server_root(server));
        json_of(self.http.get(url).send().await?).await
    }

    /// Replaces a stand-in server's fault book.
    pub async fn set_faults(&self, server: Server, rules: Value) -> anyhow::Result<()> {
        let url = format!("{}/_standin/faults", self.server_root(server));
        let response = self
            .http
            .put(url)
            .json(&json!({ "rules": rules }))
            .send()
            .await?;
        let status = response.status();
        let body = response.text().await?;
        anyhow::ensure!(status == 200, "the fault book was refused: {body}");
        Ok(())
    }

    /// How many times each rule of a server's fault book has fired.
    pub async fn fault_hits(&self, server: Server) -> anyhow::Result<Vec<u64>> {
        let url = format!("{}/_standin/faults", self.server_root(server));
        let book = json_of(self.http.get(url).send().await?).await?;
        let rules = book["rules"].as_array().cloned().unwrap_or_default();
        Ok(rules
            .iter()
            .map(|r| r["hits"].as_u64().unwrap_or(0))
            .collect())
    }

    /// How many faults all three stand-ins have injected so far.
    pub async fn faults_fired(&self) -> u64 {
        let mut fired = 0;
        for server in [Server::ServiceNow, Server::Slack, Server::Llm] {
            fired += self
                .fault_hits(server)
                .await
                .unwrap_or_default()
                .iter()
                .sum::<u64>();
        }
        fired
    }

    /// Waits until rule `index` of a server's book has fired.
    pub async fn wait_fault_hit(
        &self,
        server: Server,
        index: usize,
        patience: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + patience;
        while Instant::now() < deadline {
            let hits = self.fault_hits(server).await?;
            if hits.get(index).is_some_and(|hits| *hits > 0) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        bail!("fault rule {index} of {server:?} did not fire within {patience:?}")
    }

    /// Seeds an incident at the ServiceNow stand-in; returns its sys_id.
    pub async fn seed_incident(&self, label: &str) -> anyhow::Result<String> {
        let url = format!("{}/_standin/incidents", self.standins.urls.servicenow);
        let record = json!({
            "short_description": format!("Checkout fails with HTTP 502 ({label})"),
            "description": "Customers see HTTP 502 on checkout since the 14:05 deploy.",
            "impact": "3",
            "urgency": "3",
        });
        let created = json_of(self.http.post(url).json(&record).send().await?).await?;
        created["sys_id"]
            .as_str()
            .map(str::to_owned)
            .context("the stand-in returned no sys_id")
    }

    /// Delivers one signed webhook for `sys_id` with `delivery_id`. Returns the run id when
    /// Steward accepts it (202, or 200 for a redelivery); an error when Steward is down.
    pub async fn deliver(&self, sys_id: &str, delivery_id: &str) -> anyhow::Result<String> {
        let body = json!({ "sys_id": sys_id, "event": "incident.created" }).to_string();
        let timestamp = unix_now().to_string();
        let signature = self.sign(delivery_id, &timestamp, &body);
        let response = self
            .http
            .post(format!("{}/v1/webhooks/{TENANT}/servicenow", self.url))
            .header("content-type", "application/json")
            .header("webhook-id", delivery_id)
            .header("webhook-timestamp", &timestamp)
            .header("webhook-signature", format!("v1,{signature}"))
            .body(body)
            .send()
            .await?;
        let status = response.status().as_u16();
        let reply: Value = response.json().await.unwrap_or(Value::Null);
        anyhow::ensure!(
            status == 202 || status == 200,
            "webhook refused: {status} {reply}"
        );
        reply["run_id"]
            .as_str()
            .map(str::to_owned)
            .context("the webhook reply names no run")
    }

    /// Seeds an incident and delivers its webhook, redelivering the same delivery id until
    /// Steward accepts it (it may be down between a kill and its restart). Records it.
    pub async fn send_webhook(&mut self, label: &str) -> anyhow::Result<Accepted> {
        let sys_id = self.seed_incident(label).await?;
        let delivery_id = format!("msg_chaos_{}", hex::encode(rand::random::<[u8; 12]>()));
        let deadline = Instant::now() + Duration::from_secs(30);
        let run_id = loop {
            match self.deliver(&sys_id, &delivery_id).await {
                Ok(run_id) => break run_id,
                Err(error) if Instant::now() > deadline => return Err(error),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        let accepted = Accepted { run_id, sys_id };
        self.accepted.push(accepted.clone());
        Ok(accepted)
    }

    fn sign(&self, id: &str, timestamp: &str, body: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.webhook_secret)
            .expect("HMAC takes a key of any length");
        mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    }

    /// `GET /v1/ops/runs/{id}`: the run, its journal and its audit entries.
    pub async fn run(&self, run_id: &str) -> anyhow::Result<Value> {
        let response = self
            .http
            .get(format!("{}/v1/ops/runs/{run_id}", self.url))
            .bearer_auth(OPS_TOKEN)
            .send()
            .await?;
        json_of(response).await
    }

    /// The run's state as stored.
    pub async fn state(&self, run_id: &str) -> anyhow::Result<String> {
        let run = self.run(run_id).await?;
        run["run"]["state"]
            .as_str()
            .map(str::to_owned)
            .context("the ops API shows no state")
    }

    /// The kinds of the run's journal steps, in order.
    pub async fn step_kinds(&self, run_id: &str) -> anyhow::Result<Vec<String>> {
        let run = self.run(run_id).await?;
        Ok(journal(&run)
            .iter()
            .filter_map(|step| step["kind"].as_str().map(str::to_owned))
            .collect())
    }

    /// Waits until the run's state is one of `states`; returns it.
    pub async fn wait_state(
        &self,
        run_id: &str,
        states: &[&str],
        patience: Duration,
    ) -> anyhow::Result<String> {
        let deadline = Instant::now() + patience;
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Ok(state) = self.state(run_id).await {
                if states.contains(&state.as_str()) {
                    return Ok(state);
                }
                last = state;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        bail!("run {run_id} is {last:?} after {patience:?}, not one of {states:?}")
    }

    /// Clicks Approve (or Reject) on the run's approval message as the approver, through
    /// the Slack stand-in's signed click. Returns Steward's status for the click.
    pub async fn click(&self, run_id: &str, approve: bool) -> anyhow::Result<u16> {
        let run = self.run(run_id).await?;
        let ts = journal(&run)
            .iter()
            .find(|step| step["kind"] == "approval_requested")
            .and_then(|step| step["body"]["ts"].as_str().map(str::to_owned))
            .context("the run has posted no approval request")?;
        let action = if approve {
            APPROVE_ACTION
        } else {
            REJECT_ACTION
        };
        let request = json!({
            "interactions_url": format!("{}/v1/slack/interactions/{TENANT}", self.url),
            "ts": ts,
            "action_id": action,
            "user_id": APPROVER.0,
            "user_name": APPROVER.1,
        });
        let url = format!("{}/_standin/click", self.standins.urls.slack_root());
        let reply = json_of(self.http.post(url).json(&request).send().await?).await?;
        anyhow::ensure!(reply["ok"] == true, "the click was not delivered: {reply}");
        reply["status"]
            .as_u64()
            .and_then(|status| u16::try_from(status).ok())
            .context("the click reply has no status")
    }

    /// Runs `steward audit verify --tenant` on the database; Ok(output) when it passes.
    pub fn audit_verify(&self) -> anyhow::Result<Result<String, String>> {
        let output = std::process::Command::new(crate::binary::steward_binary()?)
            .args(["audit", "verify", "--tenant", TENANT, "--config"])
            .arg(self.config_path())
            .current_dir(self.dir.path())
            .output()
            .context("could not run steward audit verify")?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(if output.status.success() {
            Ok(text)
        } else {
            Err(text)
        })
    }

    /// Keeps the scenario folder (database, config, logs) on disk and returns its path.
    pub fn keep_files(self) -> PathBuf {
        let World { dir, .. } = self;
        dir.keep()
    }

    /// The log of the node `name` (`a` or `b`) of a two-node world.
    pub fn node_log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("node-{name}.log")))
            .unwrap_or_default()
    }
}

/// The journal array of an ops run view.
pub fn journal(run: &Value) -> Vec<Value> {
    run["journal"].as_array().cloned().unwrap_or_default()
}

async fn json_of(response: reqwest::Response) -> anyhow::Result<Value> {
    let status = response.status();
    let body = response.text().await?;
    anyhow::ensure!(status.is_success(), "{status}: {body}");
    serde_json::from_str(&body).with_context(|| format!("not JSON: {body}"))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|since| since.as_secs())
        .unwrap_or_default()
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// A node's config in a two-node world: the single-node config on PostgreSQL, listening on
/// `port`, in a cluster as `node-{node}`, with the catch-up pass off (the scenario sends every
/// webhook itself).
fn node_config(base: &str, base_port: u16, port: u16, node: &str, lease_secs: u64) -> String {
    let listen = format!("listen = \"127.0.0.1:{base_port}\"");
    let head = format!(
        "listen = \"127.0.0.1:{port}\"\n\
         postgres_url = {{ file = \"pg_service\" }}\n\
         postgres_migrate_url = {{ file = \"pg_owner\" }}"
    );
    let body = base.replacen(&listen, &head, 1);
    let (top, rest) = body.split_once("\n[").unwrap_or((&body, ""));
    format!(
        "{top}\n\n[cluster]\nnode_id = \"node-{node}\"\nlease_secs = {lease_secs}\n\n\
         [catchup]\ninterval_secs = 0\n\n[{rest}"
    )
}

fn write_config(
    dir: &TempDir,
    port: u16,
    urls: &StandinUrls,
    webhook_secret: &[u8],
) -> anyhow::Result<()> {
    let whsec = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(webhook_secret)
    );
    let master_key = hex::encode(rand::random::<[u8; 32]>());
    let files = [
        ("master.key", master_key.as_str()),
        ("ops_token", OPS_TOKEN),
        ("sn_secret", SN_CLIENT_SECRET),
        ("sn_password", SN_PASSWORD),
        ("slack_bot", SLACK_BOT_TOKEN),
        ("slack_signing", SLACK_SIGNING_SECRET),
        ("llm_key", LLM_API_KEY),
        ("whsec", whsec.as_str()),
    ];
    for (name, value) in files {
        std::fs::write(dir.path().join(name), value)?;
    }
    let config = format!(
        r#"profile = "staging"
listen = "127.0.0.1:{port}"
database = "steward.db"
master_key = {{ file = "master.key" }}
ops_token = {{ file = "ops_token" }}
allow_plain_http = true

[tls]
terminates_at_proxy = true

[egress.us]
llm = ["127.0.0.1"]
servicenow = ["127.0.0.1"]
slack = ["127.0.0.1"]

[[tenants]]
id = "{TENANT}"
name = "Chaos"

[tenants.servicenow]
instance_url = "{servicenow}"
grant = "password"
client_id = "{SN_CLIENT_ID}"
username = "{SN_USER}"
client_secret = {{ file = "sn_secret" }}
password = {{ file = "sn_password" }}

[tenants.slack]
api_base = "{slack}"
approval_channel = "{CHANNEL}"
approvers = ["{approver}"]
bot_token = {{ file = "slack_bot" }}
signing_secret = {{ file = "slack_signing" }}

[tenants.llm]
provider = "openai"
base_url = "{llm}"
model = "gpt-4o-mini"
api_key = {{ file = "llm_key" }}

[[tenants.sources]]
name = "servicenow"
secret = {{ file = "whsec" }}
sys_id_pointers = ["/sys_id"]
"#,
        servicenow = urls.servicenow,
        slack = urls.slack_api,
        llm = urls.llm,
        approver = APPROVER.0,
    );
    std::fs::write(dir.path().join("steward.toml"), config)?;
    Ok(())
}
