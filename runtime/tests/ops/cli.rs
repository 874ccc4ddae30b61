//! `steward runs list|inspect|retry|cancel` against `steward serve` started from a config file
//! with an operator token, its tenant wired to stand-ins running in the test.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use steward_core::{RunId, TenantId};
use steward_persistence::{Authenticator, MasterKey, NewCrash, Store, StoreOptions, TenantScope};
use steward_runtime::standins::{LlmScript, StandinSettings, Standins};
use tokio::process::{Child, Command};

use crate::support::PATIENCE;

const STEWARD: &str = env!("CARGO_BIN_EXE_steward");
const OPS_TOKEN: &str = "cli-ops-token-0123456789abcdef0123";
const TENANT_TOKEN: &str = "stw_cli_ops_tenant_token_0123456789";
const TENANT: &str = "us-cliops";

/// `steward serve`, killed when dropped.
struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.start_kill();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn write_config(dir: &Path, port: u16, standins: &Standins, s: &StandinSettings) {
    let files = [
        ("master.key", "5e".repeat(32)),
        ("ops_token", format!("{OPS_TOKEN}\n")),
        ("tenant_token", TENANT_TOKEN.to_owned()),
        ("sn_secret", s.oauth_client_secret.clone()),
        ("sn_password", s.sn_password.clone()),
        ("bot", s.slack_bot_token.clone()),
        ("signing", s.slack_signing_secret.clone()),
        ("llm", s.llm_api_key.clone()),
    ];
    for (name, value) in files {
        std::fs::write(dir.join(name), value).unwrap();
    }
    let config = format!(
        r#"
profile = "staging"
listen = "127.0.0.1:{port}"
database = "steward.db"
master_key = {{ file = "master.key" }}
allow_plain_http = true
ops_token = {{ file = "ops_token" }}

[tls]
terminates_at_proxy = true

[egress.us]
llm = ["127.0.0.1"]
servicenow = ["127.0.0.1"]
slack = ["127.0.0.1"]

[[tenants]]
id = "{TENANT}"
name = "CLI ops"
api_token = {{ file = "tenant_token" }}
servicenow = {{ instance_url = "{sn}", grant = "password", client_id = "{client_id}", username = "{user}", client_secret = {{ file = "sn_secret" }}, password = {{ file = "sn_password" }} }}
slack = {{ api_base = "{slack}", approval_channel = "C0CLIOPS001", approvers = ["U0CLIOPS001"], bot_token = {{ file = "bot" }}, signing_secret = {{ file = "signing" }} }}
llm = {{ provider = "openai", base_url = "{llm}", model = "gpt-4o-mini", api_key = {{ file = "llm" }} }}
"#,
        sn = standins.servicenow_url(),
        client_id = s.oauth_client_id,
        user = s.sn_username,
        slack = standins.slack_api_url(),
        llm = standins.llm_base_url(),
    );
    std::fs::write(dir.join("steward.toml"), config).unwrap();
}

struct Cli {
    dir: tempfile::TempDir,
    url: String,
    http: reqwest::Client,
    _serve: Serve,
}

impl Cli {
    async fn start(standins: &Standins, settings: &StandinSettings) -> Cli {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        write_config(dir.path(), port, standins, settings);
        let child = Command::new(STEWARD)
            .args(["serve", "--config"])
            .arg(dir.path().join("steward.toml"))
            .current_dir(dir.path())
            .env_remove("STEWARD_OPS_TOKEN")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let cli = Cli {
            dir,
            url: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
            _serve: Serve(child),
        };
        let deadline = Instant::now() + PATIENCE;
        loop {
            let ready = cli.http.get(format!("{}/readyz", cli.url)).send().await;
            if ready.is_ok_and(|r| r.status() == 200) {
                return cli;
            }
            assert!(
                Instant::now() < deadline,
                "steward serve did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs `steward runs <args>` with the token file: (success, stdout, stderr).
    async fn runs(&self, args: &[&str]) -> (bool, String, String) {
        let token_file = self.dir.path().join("ops_token");
        let mut command = Command::new(STEWARD);
        command
            .arg("runs")
            .args(args)
            .args(["--url", &self.url])
            .arg("--token-file")
            .arg(token_file)
            .env_remove("STEWARD_OPS_TOKEN");
        output(command).await
    }

    async fn start_run(&self, sys_id: &str) -> RunId {
        let body: Value = self
            .http
            .post(format!("{}/v1/runs", self.url))
            .bearer_auth(TENANT_TOKEN)
            .json(&json!({ "incident": { "sys_id": sys_id } }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        RunId::parse(body["run_id"].as_str().unwrap()).unwrap()
    }

    async fn wait_state(&self, run: RunId, state: &str) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let body: Value = self
                .http
                .get(format!("{}/v1/ops/runs/{run}", self.url))
                .bearer_auth(OPS_TOKEN)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if body["run"]["state"] == state {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "run is {}, not {state}",
                body["run"]["state"]
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn output(mut command: Command) -> (bool, String, String) {
    let out = command.output().await.unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Records a crash snapshot through a second handle on the served database, as a crash of
/// the run's actor would have. Like any process that writes tenant content, the handle first
/// confirms the master key, which its content is sealed under.
async fn record_crash(dir: &Path, run: RunId) {
    let store = Store::open(StoreOptions::new(dir.join("steward.db")))
        .await
        .unwrap();
    let key = MasterKey::parse(&"5e".repeat(32)).unwrap();
    store.check_master_key(&key).await.unwrap();
    let scope = TenantScope::assume(TenantId::parse(TENANT).unwrap(), Authenticator::Operator);
    let crash = NewCrash {
        run_id: run,
        attempt: 1,
        journal_offset: 2,
        step: "triage".into(),
        message: "advance".into(),
        error: "calling the model with Bearer sk-live-abcdefgh12345678 failed\u{1b}[2J".into(),
        state: json!({ "steps": 2 }),
    };
    store.record_crash(&scope, crash).await.unwrap();
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_list_inspect_retry_and_cancel_work_against_a_served_steward() {
    let settings = StandinSettings {
        llm_reply: LlmScript::Refusal("I cannot help with that.".into()),
        ..StandinSettings::default()
    };
    let standins = Standins::start(settings.clone()).await.unwrap();
    let cli = Cli::start(&standins, &settings).await;
    let mut record = serde_json::Map::new();
    record.insert("number".into(), json!("INC0055555"));
    record.insert("short_description".into(), json!("Mail relay is down"));
    let sys_id = standins.seed_incident(record);
    let run = cli.start_run(&sys_id).await;
    cli.wait_state(run, "failed").await;
    record_crash(cli.dir.path(), run).await;
    let id = run.to_string();

    let (ok, out, err) = cli.runs(&["list", "--state", "failed"]).await;
    assert!(ok, "{err}");
    assert!(
        out.contains(&id) && out.contains("failed") && out.contains("1 run(s)"),
        "{out}"
    );
    assert!(
        out.contains("number INC0055555") || out.contains("sys_id"),
        "{out}"
    );

    // The token may come from the environment instead of a file.
    let mut command = Command::new(STEWARD);
    command
        .args(["runs", "inspect", &id, "--url", &cli.url])
        .env("STEWARD_OPS_TOKEN", OPS_TOKEN);
    let (ok, out, err) = output(command).await;
    assert!(ok, "{err}");
    for shown in [
        "timeline",
        "received",
        "incident_fetched",
        "finished",
        "failed: triage failed",
        "crash snapshots (1)",
        "step triage, handling advance",
        "Bearer [redacted]",
        "audit",
        "run.received",
    ] {
        assert!(out.contains(shown), "{shown} missing from: {out}");
    }
    assert!(!out.contains("abcdefgh12345678"), "a secret was printed");
    assert!(
        !out.contains('\u{1b}'),
        "terminal escapes are not passed through"
    );

    standins.set_llm_reply(StandinSettings::default().llm_reply);
    let (ok, out, err) = cli
        .runs(&[
            "retry",
            "--state",
            "failed",
            "--since",
            "1h",
            "--reason",
            "the provider is back",
            "--operator",
            "ana",
        ])
        .await;
    assert!(ok, "{out}{err}");
    assert!(out.contains("1 run(s) selected"), "{out}");
    assert!(
        out.contains(&format!(
            "retried {id}: failed -> triaging, going on with triage"
        )),
        "{out}"
    );
    cli.wait_state(run, "awaiting_approval").await;

    let (ok, out, _) = cli
        .runs(&["cancel", &id, "--reason", "duplicate", "--operator", "ana"])
        .await;
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("cancelled {id}: awaiting_approval -> cancelled")),
        "{out}"
    );
    let (ok, out, _) = cli.runs(&["list", "--number", "INC0055555"]).await;
    assert!(ok && out.contains("cancelled"), "{out}");

    // What an operator gets wrong is said plainly.
    let (ok, out, _) = cli
        .runs(&["cancel", &id, "--reason", "again", "--operator", "ana"])
        .await;
    assert!(
        !ok && out.contains("not cancelled") && out.contains("409"),
        "{out}"
    );
    let (ok, _, err) = cli.runs(&["inspect", "not-a-run"]).await;
    assert!(!ok && err.contains("is not a run id"), "{err}");
    let (ok, _, err) = cli
        .runs(&["retry", "--reason", "r", "--operator", "ana"])
        .await;
    assert!(!ok && err.contains("give a run id, or a filter"), "{err}");
    let (ok, _, err) = cli.runs(&["list", "--since", "whenever"]).await;
    assert!(!ok && err.contains("not a time"), "{err}");
    std::fs::write(
        cli.dir.path().join("ops_token"),
        "wrong-token-0123456789abcdef",
    )
    .unwrap();
    let (ok, _, err) = cli.runs(&["list"]).await;
    assert!(!ok && err.contains("401"), "{err}");
}
