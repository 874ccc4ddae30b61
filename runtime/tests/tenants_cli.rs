//! `steward tenants …` and `steward secrets set` as an operator and a tenant admin run them,
//! against a Steward booted in-process on loopback.

use std::path::{Path, PathBuf};
use std::process::Command;

use secrecy::SecretString;
use steward_core::TenantId;
use steward_persistence::{Authenticator, MasterKey, TenantScope};
use steward_runtime::boot::{self, ServeOptions};

const STEWARD: &str = env!("CARGO_BIN_EXE_steward");
const OPS_TOKEN: &str = "ops-platform-token-for-the-cli-0123";

/// Runs the binary with `args`, off the async runtime so the server keeps answering.
async fn steward(args: Vec<String>, envs: Vec<(&'static str, String)>) -> (bool, String) {
    tokio::task::spawn_blocking(move || {
        let out = Command::new(STEWARD)
            .args(&args)
            .env_remove("STEWARD_OPS_TOKEN")
            .env_remove("STEWARD_TOKEN")
            .env("NO_PROXY", "127.0.0.1")
            .envs(envs)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    })
    .await
    .unwrap()
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn path_arg(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_and_an_admin_onboard_configure_and_offboard_a_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let key = MasterKey::generate();
    let mut opts = ServeOptions::new(dir.path().join("steward.db"), key.clone());
    opts.ops_token = Some(SecretString::from(OPS_TOKEN));
    let server = boot::start(opts).await.unwrap();
    let url = server.url();
    let ops_file = path_arg(&write(dir.path(), "ops_token", OPS_TOKEN));

    let create = [
        "tenants",
        "create",
        "--url",
        &url,
        "--token-file",
        &ops_file,
        "--id",
        "us-cli",
        "--name",
        "CLI Co",
    ];
    let (ok, out) = steward(args(&create), vec![]).await;
    assert!(ok, "{out}");
    let admin = out
        .lines()
        .find_map(|l| l.strip_prefix("admin token: "))
        .expect("the admin token is printed")
        .trim()
        .to_owned();
    assert!(admin.starts_with("stw_"), "{out}");

    let (ok, out) = steward(
        args(&["tenants", "list", "--url", &url]),
        vec![("STEWARD_OPS_TOKEN", OPS_TOKEN.to_owned())],
    )
    .await;
    assert!(
        ok && out.contains("us-cli") && out.contains("active"),
        "{out}"
    );

    let admin_env = vec![("STEWARD_TOKEN", admin.clone())];
    let llm = write(
        dir.path(),
        "llm.json",
        r#"{"provider": "openai", "model": "m", "base_url": "http://127.0.0.1:9/v1"}"#,
    );
    let connector = [
        "tenants",
        "connector",
        "llm",
        "--url",
        &url,
        "--file",
        &path_arg(&llm),
    ];
    let (ok, out) = steward(args(&connector), admin_env.clone()).await;
    assert!(ok, "{out}");

    let key_file = write(dir.path(), "llm_key", "sk-cli-secret-value-000000\n");
    let set = [
        "secrets",
        "set",
        "llm.api_key",
        "--url",
        &url,
        "--value-file",
        &path_arg(&key_file),
    ];
    let (ok, out) = steward(args(&set), admin_env.clone()).await;
    assert!(ok && out.contains("llm.api_key: set, version 1"), "{out}");
    assert!(!out.contains("sk-cli-secret-value"), "{out}");
    let scope = TenantScope::assume(TenantId::parse("us-cli").unwrap(), Authenticator::Operator);
    let stored = server
        .store
        .secret(&scope, &key, "llm.api_key")
        .await
        .unwrap();
    let stored = secrecy::ExposeSecret::expose_secret(stored.as_ref().unwrap()).to_owned();
    assert_eq!(
        stored, "sk-cli-secret-value-000000",
        "the newline is not part of it"
    );

    let bad_policy = write(dir.path(), "bad.cedar", "permit(principal, action,");
    let policy = [
        "tenants",
        "policy",
        "--url",
        &url,
        "--file",
        &path_arg(&bad_policy),
    ];
    let (ok, out) = steward(args(&policy), admin_env.clone()).await;
    assert!(
        !ok && out.contains("422") && out.contains("does not validate"),
        "{out}"
    );

    let (ok, out) = steward(args(&["tenants", "check", "--url", &url]), admin_env).await;
    assert!(!ok, "nothing is reachable: {out}");
    assert!(out.contains("servicenow  FAIL: not configured"), "{out}");
    assert!(
        out.contains("llm         FAIL: models: could not connect"),
        "{out}"
    );

    let export = dir.path().join("us-cli.jsonl");
    let delete = [
        "tenants",
        "delete",
        "us-cli",
        "--confirm",
        "us-cli",
        "--url",
        &url,
        "--token-file",
        &ops_file,
        "--export-to",
        &path_arg(&export),
    ];
    let (ok, out) = steward(args(&delete), vec![]).await;
    assert!(ok && out.contains("offboarded:  us-cli"), "{out}");
    let exported = std::fs::read_to_string(&export).unwrap();
    assert!(exported.contains("\"tenant.created\""), "{exported}");
    assert!(!exported.contains("sk-cli-secret-value"));
    assert!(
        server
            .store
            .secret(&scope, &key, "llm.api_key")
            .await
            .unwrap()
            .is_none()
    );

    let mistyped = [
        "tenants",
        "delete",
        "us-cli",
        "--confirm",
        "us-other",
        "--url",
        &url,
        "--token-file",
        &ops_file,
        "--export-to",
        &path_arg(&dir.path().join("x")),
    ];
    let (ok, out) = steward(args(&mistyped), vec![]).await;
    assert!(!ok && out.contains("--confirm must repeat"), "{out}");
    server.shutdown().await;
}
