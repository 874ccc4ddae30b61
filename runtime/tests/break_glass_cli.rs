//! `steward break-glass open|list|close` as an operator runs them, against a Steward booted
//! in-process on loopback: the token alone on stdout, the expiry on stderr, no token in the
//! list, and a closed grant refused.

use std::process::{Command, Output};

use secrecy::SecretString;
use steward_persistence::MasterKey;
use steward_runtime::boot::{self, ServeOptions};

const STEWARD: &str = env!("CARGO_BIN_EXE_steward");
const OPS_TOKEN: &str = "ops-platform-token-for-the-cli-0123";

/// Runs the binary with `args`, off the async runtime so the server keeps answering.
async fn steward(args: &[&str], token: Option<&str>) -> Output {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let token = token.map(str::to_owned);
    tokio::task::spawn_blocking(move || {
        let mut command = Command::new(STEWARD);
        command
            .args(&args)
            .env_remove("STEWARD_OPS_TOKEN")
            .env("NO_PROXY", "127.0.0.1");
        if let Some(token) = token {
            command.env("STEWARD_OPS_TOKEN", token);
        }
        command.output().unwrap()
    })
    .await
    .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

async fn status(url: &str, token: &str) -> u16 {
    reqwest::Client::new()
        .get(format!("{url}/v1/ops/actors"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_opens_lists_and_closes_a_grant() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = ServeOptions::new(dir.path().join("steward.db"), MasterKey::generate());
    opts.ops_token = Some(SecretString::from(OPS_TOKEN));
    let server = boot::start(opts).await.unwrap();
    let url = server.url();

    let open = [
        "break-glass",
        "open",
        "--url",
        &url,
        "--person",
        "ana@example.com",
        "--reason",
        "identity provider down during the P1",
        "--minutes",
        "15",
    ];
    let out = steward(&open, Some(OPS_TOKEN)).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let token = stdout.trim_end_matches('\n');
    assert!(
        token.starts_with("sbg_") && token.len() == 68 && !token.contains('\n'),
        "stdout holds the token alone: {stdout:?}"
    );
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("expires at") && stderr.contains("15 minutes"),
        "{stderr}"
    );
    assert!(!stderr.contains(token));
    let id = stderr
        .split_whitespace()
        .find(|w| w.starts_with("bg_"))
        .expect("the grant id is on stderr")
        .to_owned();
    assert_eq!(status(&url, token).await, 200);

    let list = steward(&["break-glass", "list", "--url", &url], Some(OPS_TOKEN)).await;
    assert!(list.status.success());
    let listed = text(&list.stdout);
    assert!(
        listed.contains(&id) && listed.contains("\tactive\t"),
        "{listed}"
    );
    assert!(!listed.contains(&token[4..]));

    let close = steward(
        &["break-glass", "close", "--url", &url, &id],
        Some(OPS_TOKEN),
    )
    .await;
    assert!(close.status.success(), "{}", text(&close.stderr));
    assert!(text(&close.stdout).contains("\tclosed\t"));
    assert_eq!(status(&url, token).await, 401);
    let again = steward(
        &["break-glass", "close", "--url", &url, &id],
        Some(OPS_TOKEN),
    )
    .await;
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("409"),
        "{}",
        text(&again.stderr)
    );

    // Refusals are clear and print no token.
    let mut short = open;
    short[7] = "short";
    let refused = steward(&short, Some(OPS_TOKEN)).await;
    assert!(!refused.status.success());
    assert!(refused.stdout.is_empty());
    assert!(
        text(&refused.stderr).contains("reason"),
        "{}",
        text(&refused.stderr)
    );
    let no_token = steward(&open, None).await;
    assert!(!no_token.status.success());
    assert!(text(&no_token.stderr).contains("STEWARD_OPS_TOKEN"));
    let with_grant = steward(&open, Some(token)).await;
    assert!(!with_grant.status.success() && with_grant.stdout.is_empty());
    let bad_id = steward(
        &["break-glass", "close", "--url", &url, "../tenants"],
        Some(OPS_TOKEN),
    )
    .await;
    assert!(!bad_id.status.success());
    server.shutdown().await;
}
