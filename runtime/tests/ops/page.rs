//! The `/ops` page: signing in exchanges the operator token for a session cookie, the JSON
//! endpoints accept the cookie (POSTs only with the CSRF token), and in headless Chromium the
//! page shows the live tree of a running tenant and a crashed run's error, escaped.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use reqwest::header::{COOKIE, SET_COOKIE};
use serde_json::json;

use crate::support::{HOSTILE_KIND, OPS_TOKEN, Ops, TENANT, decision};

async fn login(ops: &Ops, token: &str, forwarded_https: bool) -> reqwest::Response {
    let mut request = ops
        .http
        .post(ops.url("/ops/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={}", urlencode(token)));
    if forwarded_https {
        request = request.header("x-forwarded-proto", "https");
    }
    request.send().await.unwrap()
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// `steward_ops=<id>` from a Set-Cookie header.
fn session_pair(response: &reqwest::Response) -> String {
    let cookie = response.headers()[SET_COOKIE].to_str().unwrap();
    cookie.split(';').next().unwrap().to_owned()
}

fn csrf_of(page: &str) -> String {
    let marker = "name=\"steward-csrf\" content=\"";
    let start = page.find(marker).expect("the page carries its CSRF token") + marker.len();
    page[start..start + 64].to_owned()
}

#[tokio::test]
async fn signing_in_exchanges_the_token_for_a_strict_http_only_session_cookie() {
    let ops = Ops::start().await;
    let refused = login(&ops, "not-the-token-0123456789abcdef", false).await;
    assert_eq!(refused.status(), 401);
    assert!(refused.headers().get(SET_COOKIE).is_none());
    let huge = login(&ops, &"t".repeat(10_000), false).await;
    assert_eq!(huge.status(), 413);
    // The token is never taken from a URL.
    let by_url = ops
        .http
        .get(ops.url(&format!("/ops/login?token={OPS_TOKEN}")))
        .send()
        .await
        .unwrap();
    assert_eq!(by_url.status(), 405);

    let signed_in = login(&ops, OPS_TOKEN, false).await;
    assert_eq!(signed_in.status(), 303);
    assert_eq!(signed_in.headers()["location"], "/ops");
    let set_cookie = signed_in.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age="] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    assert!(
        !set_cookie.contains("Secure"),
        "plain HTTP gets no Secure cookie"
    );
    assert!(!set_cookie.contains(OPS_TOKEN));
    let behind_tls = login(&ops, OPS_TOKEN, true).await;
    assert!(
        behind_tls.headers()[SET_COOKIE]
            .to_str()
            .unwrap()
            .contains("; Secure")
    );

    let cookie = session_pair(&signed_in);
    let page = ops
        .http
        .get(ops.url("/ops"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'nonce-"),
        "{csp}"
    );
    assert_eq!(page.headers()["cache-control"], "no-store");
    let html = page.text().await.unwrap();
    assert!(html.contains("Live actors"));
    let csrf = csrf_of(&html);

    // The cookie reads the JSON endpoints.
    let tree = ops
        .http
        .get(ops.url("/v1/ops/actors"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(tree.status(), 200);

    // A POST with the cookie needs the CSRF header.
    let run = ops.start_run(&ops.seed(json!({}))).await;
    let retry = ops.url(&format!("/v1/ops/runs/{run}/retry"));
    let without = ops
        .http
        .post(&retry)
        .header(COOKIE, &cookie)
        .json(&decision("r"))
        .send()
        .await
        .unwrap();
    assert_eq!(without.status(), 403);
    let wrong = ops
        .http
        .post(&retry)
        .header(COOKIE, &cookie)
        .header("x-steward-csrf", "0".repeat(64))
        .json(&decision("r"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 403);
    let with = ops
        .http
        .post(&retry)
        .header(COOKIE, &cookie)
        .header("x-steward-csrf", &csrf)
        .json(&decision("r"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        with.status(),
        409,
        "authorized; the run is simply not failed"
    );

    // Signing out ends the session.
    let out = ops
        .http
        .post(ops.url("/ops/logout"))
        .header(COOKIE, &cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("csrf={csrf}"))
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 303);
    assert!(
        out.headers()[SET_COOKIE]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let after = ops
        .http
        .get(ops.url("/v1/ops/actors"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 401);
    let login_page = ops
        .http
        .get(ops.url("/ops"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(login_page.contains("Operator token"));
}

/// Serves, on another loopback port (the same site for cookies), a page that signs in by
/// submitting the page's own login form, as a person would. Answers `requests` requests.
fn serve_sign_in_page(steward: &str, requests: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let page = format!(
        "<!doctype html><html><body><form method=\"post\" action=\"{steward}/ops/login\">\
         <input type=\"hidden\" name=\"token\" value=\"{OPS_TOKEN}\"></form>\
         <script>document.forms[0].submit();</script></body></html>"
    );
    std::thread::spawn(move || {
        for stream in listener.incoming().take(requests) {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\n\
                 connection: close\r\n\r\n{page}",
                page.len()
            );
        }
    });
    url
}

fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser"].into_iter().find(|bin| {
        Command::new(bin)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// Loads `url` in headless Chromium with the profile in `profile` and returns the DOM.
fn dump_dom(bin: &str, profile: &Path, url: &str) -> String {
    let out = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(url)
        .output()
        .expect("chromium runs");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_chromium_the_page_shows_the_live_tree_and_a_crashed_runs_error() {
    let Some(bin) = chromium() else {
        println!("skipped: the `chromium` binary is not installed (apt-get install chromium)");
        return;
    };
    let ops = Ops::start().await;
    let waiting = ops.waiting_run(json!({})).await;
    let doomed = ops.waiting_run(json!({})).await;
    ops.crash_until_failed(doomed).await;
    let profile = tempfile::tempdir().unwrap();
    let sign_in = serve_sign_in_page(&ops.server.url(), 4);

    let (bin_owned, dir) = (bin.to_owned(), profile.path().to_owned());
    let tree = tokio::task::spawn_blocking(move || dump_dom(&bin_owned, &dir, &sign_in))
        .await
        .unwrap();
    assert!(tree.contains("Live actors"), "signed in: {tree}");
    for shown in [TENANT, "servicenow", "llm", "slack", "awaiting_approval"] {
        assert!(tree.contains(shown), "{shown} is not shown: {tree}");
    }
    assert!(
        tree.contains(&waiting.to_string()),
        "the waiting run is listed"
    );
    assert!(
        tree.contains(&doomed.to_string()),
        "the crashed run is listed"
    );
    assert!(tree.contains("restart budget spent"), "its error is shown");
    assert!(
        tree.contains("&lt;img src=x onerror=alert(1)&gt;"),
        "escaped: {tree}"
    );
    assert!(!tree.contains(HOSTILE_KIND), "never as markup");

    // The same profile holds the session: the run view shows the crash snapshots.
    let run_view = format!("{}/ops#run={doomed}", ops.server.url());
    let (bin_owned, dir) = (bin.to_owned(), profile.path().to_owned());
    let run = tokio::task::spawn_blocking(move || dump_dom(&bin_owned, &dir, &run_view))
        .await
        .unwrap();
    assert!(run.contains("Crash snapshots"), "{run}");
    assert!(run.contains("crash 4"), "every crash is shown: {run}");
    assert!(run.contains("unknown variant"), "{run}");
    assert!(!run.contains(HOSTILE_KIND));
}
