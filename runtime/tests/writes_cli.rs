//! `steward writes pause|resume|status` against a running server: the platform's switch with
//! the operator token, a tenant's with its admin token, each audited with who and why.

use secrecy::{ExposeSecret, SecretString};
use steward_core::TenantId;
use steward_persistence::{Authenticator, MasterKey, NewToken, TenantScope, generate_api_token};
use steward_runtime::boot::{self, ServeOptions};

const STEWARD: &str = env!("CARGO_BIN_EXE_steward");
const OPS_TOKEN: &str = "writes-cli-ops-token-0123456789abcdef";

async fn steward(args: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new(STEWARD)
        .args(args)
        .env_remove("STEWARD_OPS_TOKEN")
        .env_remove("STEWARD_TOKEN")
        .env_remove("STEWARD_URL")
        .output()
        .await
        .expect("the binary runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_paused_and_resumed_from_the_command_line_and_audited() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = ServeOptions::new(dir.path().join("steward.db"), MasterKey::generate());
    opts.ops_token = Some(SecretString::from(OPS_TOKEN));
    let server = boot::start(opts).await.expect("Steward boots");
    let tenant = TenantId::parse("us-clifreeze").unwrap();
    let admin = generate_api_token();
    let scopes = vec!["admin".to_owned()];
    let token = NewToken {
        value: &admin,
        label: "admin",
        scopes: &scopes,
        expires_at: None,
    };
    server
        .store
        .create_tenant(&tenant, "CLI freeze", token, "operator")
        .await
        .unwrap();
    let ops_file = dir.path().join("ops_token");
    let admin_file = dir.path().join("admin_token");
    std::fs::write(&ops_file, OPS_TOKEN).unwrap();
    std::fs::write(&admin_file, admin.expose_secret()).unwrap();
    let url = server.url();
    let (ops, adm) = (ops_file.to_str().unwrap(), admin_file.to_str().unwrap());

    let (ok, out) = steward(&[
        "writes",
        "pause",
        "--url",
        &url,
        "--token-file",
        ops,
        "--reason",
        "upgrade window",
        "--operator",
        "ana",
    ])
    .await;
    assert!(
        ok && out.contains("writes are paused for the platform"),
        "{out}"
    );
    let (ok, out) = steward(&[
        "writes",
        "pause",
        "--url",
        &url,
        "--tenant",
        "us-clifreeze",
        "--token-file",
        adm,
        "--reason",
        "change freeze",
    ])
    .await;
    assert!(
        ok && out.contains("writes are paused for tenant us-clifreeze"),
        "{out}"
    );
    let (ok, out) = steward(&["writes", "status", "--url", &url, "--token-file", ops]).await;
    assert!(ok, "{out}");
    assert!(
        out.contains("paused for the platform by operator:ana: upgrade window"),
        "{out}"
    );
    assert!(
        out.contains("paused for tenant us-clifreeze by token:tok_"),
        "{out}"
    );

    let (ok, out) = steward(&[
        "writes",
        "pause",
        "--url",
        &url,
        "--tenant",
        "us-clifreeze",
        "--token-file",
        ops,
        "--reason",
        "x",
    ])
    .await;
    assert!(
        !ok,
        "the operator token is not a tenant's admin token: {out}"
    );
    let (ok, out) = steward(&["writes", "pause", "--url", &url, "--token-file", ops]).await;
    assert!(
        !ok && out.contains("--reason"),
        "a reason is required: {out}"
    );

    let (ok, out) = steward(&[
        "writes",
        "resume",
        "--url",
        &url,
        "--token-file",
        ops,
        "--reason",
        "done",
        "--operator",
        "ana",
    ])
    .await;
    assert!(
        ok && out.contains("no longer paused for the platform"),
        "{out}"
    );
    let pauses = server.store.all_write_pauses().await.unwrap();
    assert_eq!(pauses.len(), 1, "the tenant's own pause stays: {pauses:?}");

    let scope = TenantScope::assume(tenant, Authenticator::Operator);
    let audit = server.store.audit_entries(&scope, 0, 100).await.unwrap();
    let kinds: Vec<(&str, &str)> = audit
        .iter()
        .map(|e| (e.kind.as_str(), e.actor.as_str()))
        .filter(|(k, _)| k.starts_with("writes."))
        .collect();
    assert_eq!(kinds.len(), 3, "{kinds:?}");
    assert_eq!(kinds[0], ("writes.paused", "operator:ana"));
    assert!(kinds[1].1.starts_with("token:tok_"));
    assert_eq!(kinds[2], ("writes.resumed", "operator:ana"));
    server.shutdown().await;
}
