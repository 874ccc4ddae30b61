//! The `steward` binary as an operator runs it: `webhooks check`, `serve` from a config file,
//! and `audit verify` on the database `serve` left behind.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const STEWARD: &str = env!("CARGO_BIN_EXE_steward");

// Standard Webhooks test vector A (published with the reference library).
const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
const MSG_ID: &str = "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk";
const TIMESTAMP: i64 = 1649367553;
const PAYLOAD: &str = r#"{"email":"test@example.com","username":"test_user"}"#;
const SIGNATURE: &str = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";

fn check(dir: &Path, signature: &str, at: i64) -> (bool, String) {
    std::fs::write(dir.join("secret"), SECRET).unwrap();
    std::fs::write(dir.join("body"), PAYLOAD).unwrap();
    let out = Command::new(STEWARD)
        .args(["webhooks", "check", "--secret-file"])
        .arg(dir.join("secret"))
        .arg("--body-file")
        .arg(dir.join("body"))
        .args(["-H", &format!("webhook-id: {MSG_ID}")])
        .args(["-H", &format!("webhook-timestamp: {TIMESTAMP}")])
        .args(["-H", &format!("webhook-signature: {signature}")])
        .args(["--at", &at.to_string()])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn webhooks_check_passes_the_published_vector() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = check(dir.path(), SIGNATURE, TIMESTAMP + 10);
    assert!(ok, "{out}");
    assert!(out.contains("signature:  ok"), "{out}");
    assert!(out.contains("PASS"), "{out}");
}

#[test]
fn webhooks_check_says_which_check_fails() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = check(
        dir.path(),
        "v1,R3PTzyfHASBKHH98a7yexTwaJ4yNIcGhFQc1yuN+BPU=",
        TIMESTAMP,
    );
    assert!(!ok);
    assert!(
        out.contains("signature") && out.contains("signature_mismatch"),
        "{out}"
    );

    let (ok, out) = check(dir.path(), SIGNATURE, TIMESTAMP + 301);
    assert!(!ok);
    assert!(
        out.contains("timestamp") && out.contains("timestamp_out_of_tolerance"),
        "{out}"
    );
    assert!(
        out.contains("301"),
        "the clock difference is reported: {out}"
    );
}

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn write_config(dir: &Path, port: u16) {
    let files = [
        ("master.key", "7f".repeat(32)),
        ("token", "stw_cli_test_token_0123456789abcdef".to_owned()),
        ("sn_secret", "client-secret".to_owned()),
        ("sn_password", "password".to_owned()),
        ("bot", "xoxb-1-2-cli".to_owned()),
        ("signing", "cli-signing-secret".to_owned()),
        ("llm", "sk-cli".to_owned()),
        ("whsec", SECRET.to_owned()),
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

[tls]
terminates_at_proxy = true

[egress.us]
llm = ["llm.example"]
servicenow = ["cli.service-now.example"]

[[tenants]]
id = "us-cli"
name = "CLI test"
api_token = {{ file = "token" }}
servicenow = {{ instance_url = "https://cli.service-now.example", grant = "password", client_id = "c", username = "u", client_secret = {{ file = "sn_secret" }}, password = {{ file = "sn_password" }} }}
slack = {{ approval_channel = "C0CLITEST01", approvers = ["U0CLITEST01"], bot_token = {{ file = "bot" }}, signing_secret = {{ file = "signing" }} }}
llm = {{ provider = "openai", base_url = "https://llm.example/v1/", model = "m", api_key = {{ file = "llm" }} }}
sources = [{{ name = "servicenow", secret = {{ file = "whsec" }}, sys_id_pointers = ["/sys_id"] }}]
"#
    );
    std::fs::write(dir.join("steward.toml"), config).unwrap();
}

fn wait_ready(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if tcp::get_status(&format!("http://127.0.0.1:{port}/readyz")).is_ok_and(|s| s == 200) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("steward serve did not become ready");
}

/// A tiny blocking GET over a plain TCP connection, so the test needs no HTTP client runtime.
mod tcp {
    use std::io::{Read, Write};

    pub(crate) fn get_status(url: &str) -> std::io::Result<u16> {
        let rest = url.strip_prefix("http://").unwrap_or(url);
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        let mut stream = std::net::TcpStream::connect(host)?;
        write!(
            stream,
            "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let status = response
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        Ok(status)
    }
}

#[test]
fn serve_starts_from_a_config_file_logs_json_and_audit_verify_reads_its_database() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    write_config(dir.path(), port);
    let child = Command::new(STEWARD)
        .args(["serve", "--config"])
        .arg(dir.path().join("steward.toml"))
        .current_dir(dir.path())
        .env("STEWARD_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut serve = Serve(child);
    wait_ready(port);
    assert_eq!(
        tcp::get_status(&format!("http://127.0.0.1:{port}/healthz")).unwrap(),
        200
    );
    let _ = serve.0.kill();
    let _ = serve.0.wait();
    let stderr = serve.0.stderr.take().unwrap();
    let lines: Vec<String> = BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
        .collect();
    assert!(!lines.is_empty());
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v.get("level").is_some(), "{line}");
        for secret in [
            "client-secret",
            "xoxb-1-2-cli",
            "cli-signing-secret",
            "sk-cli",
            "stw_cli",
        ] {
            assert!(!line.contains(secret), "a secret reached the log: {line}");
        }
    }
    assert!(lines.iter().any(|l| l.contains("Steward is serving")));

    // The database file holds no secret in plain text.
    let db = std::fs::read(dir.path().join("steward.db")).unwrap_or_default();
    let wal = std::fs::read(dir.path().join("steward.db-wal")).unwrap_or_default();
    for bytes in [&db, &wal] {
        let text = String::from_utf8_lossy(bytes);
        for secret in [
            "client-secret",
            "xoxb-1-2-cli",
            "cli-signing-secret",
            "stw_cli_test",
        ] {
            assert!(!text.contains(secret), "a secret is stored in plain text");
        }
    }

    let out = Command::new(STEWARD)
        .args(["audit", "verify", "--tenant", "us-cli", "--config"])
        .arg(dir.path().join("steward.toml"))
        .current_dir(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("PASS"), "{text}");
}

#[test]
fn serve_refuses_a_staging_config_without_a_master_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("steward.toml"), "profile = \"staging\"\n").unwrap();
    let out = Command::new(STEWARD)
        .args(["serve", "--config"])
        .arg(dir.path().join("steward.toml"))
        .env_remove("STEWARD_MASTER_KEY")
        .env_remove("STEWARD_MASTER_KEY_FILE")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("master key"));
}

#[test]
fn serve_stops_gracefully_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    write_config(dir.path(), port);
    let child = Command::new(STEWARD)
        .args(["serve", "--config"])
        .arg(dir.path().join("steward.toml"))
        .current_dir(dir.path())
        .env("STEWARD_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut serve = Serve(child);
    wait_ready(port);
    let pid = serve.0.id().to_string();
    let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(sent.success());
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = serve.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(15),
            "steward did not stop within 15 s of SIGTERM"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(status.success(), "a SIGTERM stop is a clean exit: {status}");
    let stderr = serve.0.stderr.take().unwrap();
    let lines: Vec<String> = BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
        .collect();
    assert!(
        lines.iter().any(|l| l.contains("Shutting down")),
        "{lines:?}"
    );
}

#[test]
fn serve_in_the_dev_profile_without_a_master_key_warns_that_the_dev_key_protects_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    std::fs::write(
        dir.path().join("steward.toml"),
        format!("listen = \"127.0.0.1:{port}\"\ndatabase = \"steward.db\"\n"),
    )
    .unwrap();
    let child = Command::new(STEWARD)
        .args(["serve", "--config"])
        .arg(dir.path().join("steward.toml"))
        .current_dir(dir.path())
        .env("STEWARD_LOG", "info")
        .env_remove("STEWARD_MASTER_KEY")
        .env_remove("STEWARD_MASTER_KEY_FILE")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut serve = Serve(child);
    wait_ready(port);
    let _ = serve.0.kill();
    let _ = serve.0.wait();
    let stderr = serve.0.stderr.take().unwrap();
    let warned = BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
        .any(|l| l.contains("WARN") && l.contains("published dev key"));
    assert!(
        warned,
        "serve must warn that the dev master key protects nothing"
    );
}

#[test]
fn webhooks_send_signs_a_delivery_the_server_accepts_once_and_a_wrong_secret_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    write_config(dir.path(), port);
    let child = Command::new(STEWARD)
        .args(["serve", "--config"])
        .arg(dir.path().join("steward.toml"))
        .current_dir(dir.path())
        .stderr(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let _serve = Serve(child);
    wait_ready(port);
    std::fs::write(
        dir.path().join("body.json"),
        r#"{"sys_id":"9d385017c611228701d22104cc95c371","number":"INC0010001"}"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("wrong"),
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    )
    .unwrap();
    let send = |secret: &str, id: &str| {
        Command::new(STEWARD)
            .args(["webhooks", "send", "--url"])
            .arg(format!("http://127.0.0.1:{port}"))
            .args(["--tenant", "us-cli", "--source", "servicenow", "--id", id])
            .arg("--secret-file")
            .arg(dir.path().join(secret))
            .arg("--body-file")
            .arg(dir.path().join("body.json"))
            .env("NO_PROXY", "127.0.0.1")
            .output()
            .unwrap()
    };
    let first = send("whsec", "msg_cli_send_1");
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(first.status.success(), "{stdout}");
    assert!(stdout.starts_with("202 "), "{stdout}");
    let again = send("whsec", "msg_cli_send_1");
    let again_out = String::from_utf8_lossy(&again.stdout);
    assert!(
        again_out.starts_with("200 "),
        "a redelivery names the same run: {again_out}"
    );
    let run =
        |s: &str| serde_json::from_str::<serde_json::Value>(&s[4..]).unwrap()["run_id"].clone();
    assert_eq!(run(&stdout), run(&again_out));
    let forged = send("wrong", "msg_cli_send_2");
    assert_eq!(forged.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&forged.stdout).starts_with("401 "));
}
