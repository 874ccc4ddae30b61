//! The HTTP server as a tester probing it from outside sees it: security headers on every answer
//! (success, error, 404, rate-limited, the ops page), rate limits per client address and per
//! tenant that answer 429 with Retry-After and never refuse a delivery already accepted, head
//! limits, a slowloris client cut off at the header read timeout, a trickling body answered 408,
//! and a panicking handler answered with an opaque 500.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get as route_get;
use reqwest::header::HeaderMap;
use steward_api::hardening::API_CSP;
use steward_api::{OpsAuth, OpsSettings, RateLimit, RateLimits, ServerLimits};
use steward_tests::{Delivery, Harness, SOURCE, Scenario};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Status, headers and body of `GET {path}`.
async fn get(h: &Harness, path: &str, token: Option<&str>) -> (u16, HeaderMap, String) {
    let mut request = client().get(format!("{}{path}", h.url()));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.text().await.unwrap())
}

/// The headers every answer carries, whatever it is.
fn assert_hardened(what: &str, headers: &HeaderMap) {
    let value = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    assert_eq!(
        value("strict-transport-security"),
        Some("max-age=31536000"),
        "{what}"
    );
    assert_eq!(value("x-content-type-options"), Some("nosniff"), "{what}");
    assert_eq!(value("referrer-policy"), Some("no-referrer"), "{what}");
    assert_eq!(value("x-frame-options"), Some("DENY"), "{what}");
    assert!(value("content-security-policy").is_some(), "{what}");
    assert!(headers.get("server").is_none(), "{what}: no server banner");
}

fn assert_api_csp(what: &str, headers: &HeaderMap) {
    assert_hardened(what, headers);
    assert_eq!(
        headers["content-security-policy"].to_str().unwrap(),
        API_CSP,
        "{what}"
    );
}

fn limited(rate: RateLimits) -> ServerLimits {
    ServerLimits {
        rate,
        ..ServerLimits::default()
    }
}

fn retry_after(headers: &HeaderMap) -> u64 {
    headers
        .get("retry-after")
        .expect("a 429 says when to retry")
        .to_str()
        .unwrap()
        .parse()
        .expect("Retry-After in seconds")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_carries_the_security_headers() {
    let h = Scenario::new().start().await;

    let (status, headers, _) = get(&h, "/healthz", None).await;
    assert_eq!(status, 200);
    assert_api_csp("a success", &headers);

    let (status, headers, body) = get(&h, "/v1/runs", None).await;
    assert_eq!(status, 401, "{body}");
    assert_api_csp("an error", &headers);

    let (status, headers, body) = get(&h, "/no/such/route", None).await;
    assert_eq!(status, 404);
    assert_api_csp("a 404", &headers);
    let body: serde_json::Value = serde_json::from_str(&body).expect("a 404 is JSON");
    assert_eq!(body["error"], "not_found");

    let reply = client()
        .post(format!("{}/v1/webhooks/{}/{SOURCE}", h.url(), h.tenant.id))
        .header("webhook-id", "msg_1")
        .header("webhook-timestamp", h.now_secs().to_string())
        .header("webhook-signature", "v1,AAAA")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 401);
    assert_api_csp("a refused webhook", reply.headers());

    // The ops page keeps its own, stricter policy: scripts and styles only under its nonce.
    let (status, headers, page) = get(&h, "/ops", None).await;
    assert_eq!(status, 200);
    assert_hardened("the ops page", &headers);
    let csp = headers["content-security-policy"].to_str().unwrap();
    let nonce = csp
        .split("'nonce-")
        .nth(1)
        .and_then(|rest| rest.split('\'').next())
        .expect("the page's CSP names a nonce");
    assert!(csp.starts_with("default-src 'none';"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{csp}"
    );
    assert!(
        page.contains(&format!("nonce=\"{nonce}\"")),
        "the page uses it"
    );
    assert!(
        !page.contains(" onclick=") && !page.contains(" style=\""),
        "no inline handler or style attribute, which the nonce would not cover"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_address_over_its_budget_gets_429_with_retry_after() {
    let h = Scenario::new()
        .server_limits(limited(RateLimits {
            per_address: RateLimit::new(1, 3),
            per_tenant: None,
            ..RateLimits::off()
        }))
        .start()
        .await;
    for _ in 0..3 {
        assert_eq!(get(&h, "/healthz", None).await.0, 200);
    }
    let (status, headers, body) = get(&h, "/healthz", None).await;
    assert_eq!(status, 429, "{body}");
    assert_api_csp("a 429", &headers);
    let wait = retry_after(&headers);
    assert!((1..=2).contains(&wait), "{wait}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"], "rate_limited");
    assert!(body["message"].as_str().unwrap().contains("client address"));

    tokio::time::sleep(Duration::from_secs(wait)).await;
    assert_eq!(get(&h, "/healthz", None).await.0, 200, "the budget refills");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_over_its_budget_gets_429_before_intake_and_the_other_tenant_does_not() {
    let h = Scenario::new()
        .server_limits(limited(RateLimits {
            per_address: None,
            per_tenant: RateLimit::new(1, 3),
            ..RateLimits::off()
        }))
        .start()
        .await;
    let mut accepted = Vec::new();
    for _ in 0..3 {
        let reply = h.send(&h.delivery(h.incident_event())).await;
        assert_eq!(reply.status, 202, "{}", reply.text);
        accepted.push(reply.run_id());
    }
    let refused = h.delivery(h.incident_event());
    let reply = h.send(&refused).await;
    assert_eq!(reply.status, 429, "{}", reply.text);
    assert!(reply.message().contains("tenant"), "{}", reply.text);
    assert_eq!(
        h.runs().await.len(),
        3,
        "the refused delivery was not recorded; every accepted one was"
    );

    // The same budget covers the tenant's token; the other tenant spends its own.
    let (status, headers, _) = get(&h, "/v1/runs", Some(&h.tenant.api_token)).await;
    assert_eq!(status, 429);
    let wait = retry_after(&headers);
    assert!((1..=2).contains(&wait), "{wait}");
    let (status, _, body) = get(&h, "/v1/runs", Some(&h.other.api_token)).await;
    assert_eq!(status, 200, "{body}");
    let other = Delivery::new(&h.other.whsec, h.now_secs(), h.incident_event());
    let reply = h.send_to(h.other.id.as_str(), SOURCE, &other).await;
    assert_eq!(reply.status, 202, "{}", reply.text);

    // The sender retries the refused delivery after Retry-After, and it is taken.
    tokio::time::sleep(Duration::from_secs(wait)).await;
    let reply = h.send(&refused).await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    assert_eq!(h.runs().await.len(), 4);
    for run in accepted {
        assert!(h.run(run).await.is_some(), "accepted run {run} is kept");
    }
}

/// Writes `request` on a fresh connection and reads until the server closes it (at most 5 s).
async fn raw_exchange(h: &Harness, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(h.server().addr).await.unwrap();
    // The server may close while the request is still being written.
    let _ = stream.write_all(request).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_and_too_many_headers_are_refused() {
    let h = Scenario::new().start().await;
    let limits = ServerLimits::default();

    let fine = raw_exchange(
        &h,
        b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(fine.starts_with("HTTP/1.1 200"), "{fine}");

    let big = format!(
        "GET /healthz HTTP/1.1\r\nhost: x\r\nx-padding: {}\r\n\r\n",
        "a".repeat(limits.max_header_bytes + 1)
    );
    let answer = raw_exchange(&h, big.as_bytes()).await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "an oversized head is 431 or a closed connection: {answer:?}"
    );

    let mut many = String::from("GET /healthz HTTP/1.1\r\nhost: x\r\n");
    for i in 0..=limits.max_headers {
        many.push_str(&format!("x-h{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let answer = raw_exchange(&h, many.as_bytes()).await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "too many header fields is 431 or a closed connection: {answer:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_client_is_disconnected_at_the_header_read_timeout() {
    let timeout = Duration::from_secs(1);
    let h = Scenario::new()
        .server_limits(ServerLimits {
            header_read_timeout: timeout,
            ..ServerLimits::default()
        })
        .start()
        .await;
    let started = Instant::now();
    let stream = TcpStream::connect(h.server().addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let closed = tokio::spawn(async move {
        let mut sink = Vec::new();
        let _ = read.read_to_end(&mut sink).await;
        Instant::now()
    });
    let head = b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\nx-slow: ";
    // One byte every 100 ms: the whole head would take far longer than the timeout.
    for byte in head
        .iter()
        .chain(b"abcdefghijklmnopqrstuvwxyz".iter())
        .take(80)
    {
        if closed.is_finished() || write.write_all(&[*byte]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let closed_at = tokio::time::timeout(Duration::from_secs(5), closed)
        .await
        .expect("the server closed the connection")
        .unwrap();
    let held = closed_at - started;
    assert!(held >= timeout - Duration::from_millis(100), "{held:?}");
    assert!(
        held < timeout + Duration::from_secs(2),
        "held {held:?} with a {timeout:?} header read timeout"
    );
    assert_eq!(get(&h, "/healthz", None).await.0, 200, "others are served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_still_trickling_at_the_request_timeout_is_408_and_starts_nothing() {
    let h = Scenario::new()
        .server_limits(ServerLimits {
            request_timeout: Duration::from_secs(1),
            ..ServerLimits::default()
        })
        .start()
        .await;
    let delivery = h.delivery(h.incident_event());
    let started = Instant::now();
    let mut stream = TcpStream::connect(h.server().addr).await.unwrap();
    let head = format!(
        "POST /v1/webhooks/{}/{SOURCE} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         webhook-id: {}\r\nwebhook-timestamp: {}\r\nwebhook-signature: {}\r\n\
         content-length: {}\r\n\r\n",
        h.tenant.id,
        delivery.id,
        delivery.timestamp,
        delivery.signature,
        delivery.body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&delivery.body[..10]).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(4));
    assert!(h.runs().await.is_empty(), "nothing was accepted");

    // Sent whole, the same delivery is taken.
    assert_eq!(h.send(&delivery).await.status, 202);
}

/// A handler that panics with text that must not reach the caller.
async fn boom() -> String {
    panic!("panic-detail-4b1d /var/lib/steward/steward.db")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_is_an_opaque_500() {
    let h = Scenario::new().start().await;
    let routes = Router::new().route("/boom", route_get(boom));
    let limits = ServerLimits::default();
    let app = steward_api::harden(
        routes,
        h.server().store.clone(),
        Arc::new(OpsAuth::new(None, OpsSettings::default())),
        &limits,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        steward_runtime::http_server::serve(listener, app, &limits, async move {
            let _ = stopped.await;
        })
        .await
    });

    let response = client()
        .get(format!("http://{addr}/boom"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 500);
    assert_api_csp("a panic", response.headers());
    let text = response.text().await.unwrap();
    let body: serde_json::Value = serde_json::from_str(&text).expect("a JSON body");
    assert_eq!(body["error"], "internal");
    assert!(
        !text.contains("panic-detail") && !text.contains("/var/lib"),
        "{text}"
    );

    // The server lives on, and stops when told to.
    let after = client()
        .get(format!("http://{addr}/nothing"))
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 404);
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the server stops")
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_not_held_up_by_an_idle_or_a_slow_connection() {
    let mut h = Scenario::new().start().await;
    let mut idle = TcpStream::connect(h.server().addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut status = [0u8; 12];
    idle.read_exact(&mut status).await.unwrap();
    assert_eq!(&status, b"HTTP/1.1 200");
    let mut slow = TcpStream::connect(h.server().addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nho")
        .await
        .unwrap();

    let started = Instant::now();
    h.restart().await;
    let limit = ServerLimits::default().header_read_timeout + Duration::from_secs(3);
    assert!(started.elapsed() < limit, "{:?}", started.elapsed());
    assert_eq!(get(&h, "/healthz", None).await.0, 200);
}
