//! `steward checklist` against a staging deployment served by `steward serve` over TLS on
//! loopback: each item's result, the sign-off, the restore drill, the signed artifact and its
//! offline verification, and the refusals (a production checklist of a staging config, a
//! tampered artifact, a sign-off of a checked item).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const STEWARD: &str = env!("CARGO_BIN_EXE_steward");
const OPS_TOKEN: &str = "ops-checklist-token-0123456789abcdef";

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

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A self-signed pair for 127.0.0.1, valid for years: the probe trusts its certificate.
fn write_tls(dir: &Path) {
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "steward staging");
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2040, 1, 1);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
}

fn write_config(dir: &Path, port: u16) {
    let files = [
        ("master.key", "5e".repeat(32)),
        ("ops", OPS_TOKEN.to_owned()),
        ("token", "stw_checklist_tenant_token_0123456789".to_owned()),
        ("sn_secret", "client-secret".to_owned()),
        ("sn_password", "password".to_owned()),
        ("bot", "xoxb-1-2-checklist".to_owned()),
        ("signing", "checklist-signing-secret".to_owned()),
        ("llm", "sk-checklist".to_owned()),
        ("whsec", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_owned()),
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
ops_token = {{ file = "ops" }}

[tls]
cert_file = "cert.pem"
key_file = "key.pem"

[metrics]
enabled = true

[egress.us]
llm = ["llm.example"]
servicenow = ["checklist.service-now.example"]

[[tenants]]
id = "us-checklist"
name = "Checklist"
api_token = {{ file = "token" }}
servicenow = {{ instance_url = "https://checklist.service-now.example", grant = "password", client_id = "c", username = "u", client_secret = {{ file = "sn_secret" }}, password = {{ file = "sn_password" }} }}
slack = {{ approval_channel = "C0CHECKLST1", approvers = ["U0CHECKLST1"], bot_token = {{ file = "bot" }}, signing_secret = {{ file = "signing" }} }}
llm = {{ provider = "openai", base_url = "https://llm.example/v1/", model = "m", api_key = {{ file = "llm" }} }}
sources = [{{ name = "servicenow", secret = {{ file = "whsec" }}, sys_id_pointers = ["/sys_id"] }}]
"#
    );
    std::fs::write(dir.join("steward.toml"), config).unwrap();
}

async fn steward(dir: &Path, args: Vec<String>) -> Output {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        Command::new(STEWARD)
            .args(&args)
            .current_dir(dir)
            .env_remove("STEWARD_OPS_TOKEN")
            .env_remove("STEWARD_CONFIG")
            .env("NO_PROXY", "127.0.0.1")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

async fn wait_ready(url: &str, ca: &Path) {
    let client = reqwest::Client::builder()
        .no_proxy()
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap())
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(r) = client.get(format!("{url}/readyz")).send().await
            && r.status() == 200
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("steward serve did not become ready over HTTPS");
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

fn status_of(artifact: &Value, id: &str) -> String {
    artifact["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == id)
        .unwrap_or_else(|| panic!("no item {id} in {artifact:#}"))["status"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staging_deployment_is_checked_signed_and_verified() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_tls(d);
    let port = free_port();
    write_config(d, port);
    let config = d.join("steward.toml").display().to_string();
    let child = Command::new(STEWARD)
        .args(["serve", "--config", &config])
        .current_dir(d)
        .env_remove("STEWARD_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _serve = Serve(child);
    let url = format!("https://127.0.0.1:{port}");
    let ca = d.join("cert.pem");
    wait_ready(&url, &ca).await;

    // A restore drill of an online backup, its output kept as the drill's record.
    let backup = d.join("backup.db").display().to_string();
    let out = steward(d, s(&["backup", "--config", &config, "--out", &backup])).await;
    assert!(out.status.success(), "backup: {}", text(&out.stderr));
    let restored = d.join("restored.db").display().to_string();
    let out = steward(
        d,
        s(&[
            "restore", "--config", &config, "--from", &backup, "--to", &restored,
        ]),
    )
    .await;
    assert!(
        out.status.success(),
        "restore: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    std::fs::write(d.join("drill.txt"), &out.stdout).unwrap();

    let key = d.join("checklist.key").display().to_string();
    let out = steward(d, s(&["checklist", "keygen", "--out", &key])).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let printed = text(&out.stdout);
    let public = printed.split_whitespace().nth(1).unwrap().to_owned();
    assert_eq!(public.len(), 64, "{printed}");

    let alerts = repo_root().join("deploy/prometheus/alerts.yml");
    let artifact_path = d.join("checklist.json").display().to_string();
    let run = |env: &str, out_path: &str, sign_off: &str| {
        s(&[
            "checklist",
            "--env",
            env,
            "--config",
            &config,
            "--url",
            &url,
            "--ca-file",
            ca.to_str().unwrap(),
            "--smoke-tenant",
            "us-checklist",
            "--alerts",
            alerts.to_str().unwrap(),
            "--restore-report",
            d.join("drill.txt").to_str().unwrap(),
            "--sign-off",
            sign_off,
            "--test-identity",
            "--signing-key",
            &key,
            "--out",
            out_path,
        ])
    };
    let out = steward(
        d,
        run(
            "staging",
            &artifact_path,
            "item=ops.oncall,who=ci@example.com,role=on-call lead",
        ),
    )
    .await;
    let stdout = text(&out.stdout);
    // No smoke run has completed on this deployment yet: no-go, exit 3.
    assert_eq!(out.status.code(), Some(3), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("decision: no-go"), "{stdout}");
    let artifact: Value = serde_json::from_slice(&std::fs::read(&artifact_path).unwrap()).unwrap();
    for id in [
        "us.security.profile",
        "us.security.tls",
        "us.security.encryption_at_rest",
        "us.security.database_role",
        "us.security.limits",
        "us.security.headers",
        "us.product.evidence",
        "ops.alerts",
        "ops.backup_drill",
    ] {
        assert_eq!(status_of(&artifact, id), "pass", "{id}: {stdout}");
    }
    assert_eq!(status_of(&artifact, "us.product.smoke"), "fail", "{stdout}");
    assert_eq!(status_of(&artifact, "ops.oncall"), "signed_off", "{stdout}");
    assert_eq!(artifact["sign_offs"][0]["test_identity"], true);
    assert_eq!(artifact["decision"], "no-go");
    assert_eq!(artifact["inputs"]["deployments"][0]["region"], "us");

    // Offline verification, pinned to the key keygen printed.
    let verify = |extra: &[&str]| {
        let mut v = s(&[
            "checklist",
            "verify",
            &artifact_path,
            "--public-key",
            &public,
        ]);
        v.extend(s(extra));
        v
    };
    let out = steward(d, verify(&[])).await;
    assert!(out.status.success(), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).contains("decision no-go"),
        "{}",
        text(&out.stdout)
    );
    assert!(text(&out.stdout).contains("test identity"));
    let out = steward(d, verify(&["--require-go"])).await;
    assert_eq!(out.status.code(), Some(3));

    // One flipped byte anywhere in an item's detail, and the artifact is invalid.
    let mut bytes = std::fs::read(&artifact_path).unwrap();
    let at = text(&bytes).find("\"detail\"").unwrap() + 12;
    bytes[at] ^= 0x01;
    let tampered = d.join("tampered.json");
    std::fs::write(&tampered, &bytes).unwrap();
    let out = steward(
        d,
        s(&[
            "checklist",
            "verify",
            tampered.to_str().unwrap(),
            "--public-key",
            &public,
        ]),
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).starts_with("INVALID"),
        "{}",
        text(&out.stdout)
    );

    // A production checklist of this staging config fails its profile item.
    let prod = d.join("production.json").display().to_string();
    let out = steward(
        d,
        run(
            "production",
            &prod,
            "item=ops.oncall,who=ci@example.com,role=on-call lead",
        ),
    )
    .await;
    assert_eq!(out.status.code(), Some(3));
    let artifact: Value = serde_json::from_slice(&std::fs::read(&prod).unwrap()).unwrap();
    assert_eq!(status_of(&artifact, "us.security.profile"), "fail");

    // A sign-off cannot pass a checked item; nothing is written.
    let refused = d.join("refused.json");
    let out = steward(
        d,
        run(
            "staging",
            refused.to_str().unwrap(),
            "item=us.product.smoke,who=ci@example.com,role=release manager",
        ),
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("cannot change its result"),
        "{}",
        text(&out.stderr)
    );
    assert!(!refused.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signing_key_readable_by_others_or_malformed_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k");
    std::fs::write(&key, "ab".repeat(32)).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let args = |k: &Path| {
        s(&[
            "checklist",
            "--env",
            "staging",
            "--config",
            "/nonexistent/steward.toml",
            "--url",
            "https://127.0.0.1:1",
            "--signing-key",
            k.to_str().unwrap(),
            "--out",
            dir.path().join("a.json").to_str().unwrap(),
        ])
    };
    let out = steward(dir.path(), args(&key)).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("readable by others"),
        "{}",
        text(&out.stderr)
    );
    let bad = dir.path().join("bad");
    let out = steward(
        dir.path(),
        s(&["checklist", "keygen", "--out", bad.to_str().unwrap()]),
    )
    .await;
    assert!(out.status.success());
    // keygen never overwrites a key.
    let out = steward(
        dir.path(),
        s(&["checklist", "keygen", "--out", bad.to_str().unwrap()]),
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    std::fs::write(&bad, "not hex").unwrap();
    let out = steward(dir.path(), args(&bad)).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("64 lowercase hex"),
        "{}",
        text(&out.stderr)
    );
}
