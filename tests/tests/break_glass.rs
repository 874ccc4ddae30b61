//! Break-glass operator access end to end: a grant opened with the operator token works on the
//! ops API as its person until it expires (on a clock the test moves) or is closed, every use
//! is in the operator audit log, the log's chain verifies until an entry is changed behind
//! Steward's back, hostile bodies and tokens get clear errors, and no grant token is kept in
//! the database, the audit log, the list or the logs.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{Value, json};
use sqlx::{Connection, Executor};
use steward_core::{Clock, FixedClock, SystemClock};
use steward_tests::database::Place;
use steward_tests::harness::{Harness, OPS_TOKEN, Reply, Scenario};

/// Every log line Steward writes in this test binary.
fn logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&buffer);
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing_subscriber::filter::LevelFilter::DEBUG)
            .with_writer(move || LogSink(Arc::clone(&sink)))
            .try_init();
        buffer
    })
}

struct LogSink(Arc<Mutex<Vec<u8>>>);

impl Write for LogSink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn log_text() -> String {
    String::from_utf8_lossy(&logs().lock().unwrap_or_else(|p| p.into_inner())).into_owned()
}

async fn start() -> (Harness, FixedClock) {
    logs();
    let clock = FixedClock::at_secs(SystemClock.now_secs());
    let h = Scenario::new().clock(Arc::new(clock.clone())).start().await;
    (h, clock)
}

const REASON: &str = "identity provider down during the P1 on INC0012345";

async fn open(h: &Harness, minutes: Option<u32>) -> Reply {
    let mut body = json!({ "person": "ana@example.com", "reason": REASON });
    if let Some(m) = minutes {
        body["minutes"] = json!(m);
    }
    h.post_json("/v1/ops/break-glass", Some(OPS_TOKEN), &body)
        .await
}

async fn opened(h: &Harness, minutes: Option<u32>) -> (String, String) {
    let reply = open(h, minutes).await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    let token = reply.body["token"].as_str().unwrap().to_owned();
    let id = reply.body["id"].as_str().unwrap().to_owned();
    (id, token)
}

async fn audit(h: &Harness) -> Vec<Value> {
    let reply = h.get("/v1/ops/audit?limit=1000", Some(OPS_TOKEN)).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    reply.body["entries"].as_array().unwrap().clone()
}

async fn verify(h: &Harness) -> Value {
    let reply = h.get("/v1/ops/audit?verify=true", Some(OPS_TOKEN)).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    reply.body["verify"].clone()
}

fn kinds(entries: &[Value]) -> Vec<&str> {
    entries
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect()
}

/// Posts `body` as it is, with `content_type`.
async fn post_raw(h: &Harness, token: &str, content_type: &str, body: Vec<u8>) -> Reply {
    let response = reqwest::Client::new()
        .post(format!("{}/v1/ops/break-glass", h.url()))
        .bearer_auth(token)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    Reply {
        status,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
        elapsed: std::time::Duration::ZERO,
    }
}

#[tokio::test]
async fn only_the_operator_token_opens_a_grant_and_bodies_are_held_to_their_bounds() {
    let (h, clock) = start().await;
    let good = json!({ "person": "ana@example.com", "reason": REASON, "minutes": 30 });

    let none = h.post_json("/v1/ops/break-glass", None, &good).await;
    assert_eq!((none.status, none.error_code()), (401, "unauthenticated"));
    let tenant = h
        .post_json("/v1/ops/break-glass", Some(&h.tenant.api_token), &good)
        .await;
    assert_eq!(tenant.status, 403, "{}", tenant.text);
    let wrong = h
        .post_json("/v1/ops/break-glass", Some("not-the-operator-token"), &good)
        .await;
    assert_eq!(wrong.status, 401);

    let refused = [
        (json!({ "person": "ana" }), 400, "reason"),
        (
            json!({ "person": "ana", "reason": "too short" }),
            422,
            "reason",
        ),
        (
            json!({ "person": "ana", "reason": "r".repeat(1001) }),
            422,
            "reason",
        ),
        (
            json!({ "person": "ana", "reason": REASON, "minutes": 0 }),
            422,
            "minutes",
        ),
        (
            json!({ "person": "ana", "reason": REASON, "minutes": 241 }),
            422,
            "minutes",
        ),
        (
            json!({ "person": "ana", "reason": REASON, "minutes": -5 }),
            422,
            "minutes",
        ),
        (
            json!({ "person": "ana", "reason": REASON, "minutes": "60" }),
            422,
            "minutes",
        ),
        (json!({ "person": "", "reason": REASON }), 422, "person"),
        (
            json!({ "person": "ana\u{1b}[2J", "reason": REASON }),
            422,
            "person",
        ),
        (json!({ "reason": REASON }), 400, "person"),
        (
            json!({ "person": "ana", "reason": REASON, "role": "admin" }),
            400,
            "role",
        ),
        (json!(["ana", REASON]), 400, "invalid"),
    ];
    for (body, status, names) in refused {
        let reply = h
            .post_json("/v1/ops/break-glass", Some(OPS_TOKEN), &body)
            .await;
        assert_eq!(reply.status, status, "{body}: {}", reply.text);
        assert!(reply.message().contains(names), "{body}: {}", reply.text);
    }
    for raw in [&b"{\"person\": \"ana\", "[..], b"", b"\xff\xfe", b"null"] {
        let reply = post_raw(&h, OPS_TOKEN, "application/json", raw.to_vec()).await;
        assert_eq!(reply.status, 400, "{raw:?}: {}", reply.text);
        assert_eq!(reply.error_code(), "bad_request");
    }
    let huge = json!({ "person": "ana", "reason": "r".repeat(64 * 1024) }).to_string();
    let reply = post_raw(&h, OPS_TOKEN, "application/json", huge.into_bytes()).await;
    assert_eq!(reply.status, 413, "{}", reply.text);

    // Nothing refused was opened or audited.
    let list = h.get("/v1/ops/break-glass", Some(OPS_TOKEN)).await;
    assert_eq!(list.body["grants"], json!([]));
    assert!(audit(&h).await.is_empty());

    let reply = open(&h, None).await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    let token = reply.body["token"].as_str().unwrap();
    assert!(token.starts_with("sbg_") && token.len() == 68, "{token}");
    assert_eq!(
        reply.body["expires_at"].as_i64().unwrap(),
        clock.now_millis() + 60 * 60_000,
        "60 minutes by default"
    );
    assert!(reply.body["expires"].as_str().unwrap().contains('T'));

    // A grant cannot open another one.
    let again = h.post_json("/v1/ops/break-glass", Some(token), &good).await;
    assert_eq!(again.status, 403, "{}", again.text);
    h.shutdown().await;
}

#[tokio::test]
async fn a_grant_works_on_the_ops_api_until_it_expires_and_every_use_is_audited() {
    let (h, clock) = start().await;
    let (id, token) = opened(&h, Some(1)).await;

    for path in [
        "/v1/ops/actors",
        "/v1/ops/runs",
        "/v1/ops/writes",
        "/v1/ops/break-glass",
    ] {
        let reply = h.get(path, Some(&token)).await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.text);
    }
    let metrics = h.get("/metrics", None).await;
    assert!(
        metrics.text.contains("steward_break_glass_active_grants 1"),
        "{}",
        metrics.text
    );

    clock.advance_millis(59_999);
    assert_eq!(h.get("/v1/ops/actors", Some(&token)).await.status, 200);
    clock.advance_millis(1);
    for _ in 0..3 {
        let reply = h.get("/v1/ops/actors", Some(&token)).await;
        assert_eq!((reply.status, reply.error_code()), (401, "unauthenticated"));
    }
    let metrics = h.get("/metrics", None).await;
    assert!(metrics.text.contains("steward_break_glass_active_grants 0"));

    let entries = audit(&h).await;
    assert_eq!(
        kinds(&entries),
        [
            "break_glass.opened",
            "break_glass.used",
            "break_glass.used",
            "break_glass.used",
            "break_glass.used",
            "break_glass.used",
            "break_glass.expired",
        ],
        "the first refused use after expiry is recorded once"
    );
    for e in &entries {
        assert_eq!(e["detail"]["grant"], json!(id));
        assert_eq!(e["detail"]["person"], json!("ana@example.com"));
        assert_eq!(e["detail"]["reason"], json!(REASON));
    }
    assert_eq!(entries[0]["actor"], json!("operator"));
    assert_eq!(entries[1]["detail"]["method"], json!("GET"));
    assert_eq!(entries[1]["detail"]["path"], json!("/v1/ops/actors"));
    assert_eq!(entries[1]["detail"]["status"], json!(200));
    assert_eq!(entries[6]["detail"]["path"], json!("/v1/ops/actors"));

    let report = verify(&h).await;
    assert_eq!(report["entries"], json!(7));
    assert_eq!(report["first_bad"], Value::Null);

    let list = h.get("/v1/ops/break-glass", Some(OPS_TOKEN)).await;
    let grant = &list.body["grants"][0];
    assert_eq!(
        (grant["state"].as_str(), grant["uses"].as_u64()),
        (Some("expired"), Some(5))
    );
    let closing = h
        .request(
            "DELETE",
            &format!("/v1/ops/break-glass/{id}"),
            Some(OPS_TOKEN),
            None,
        )
        .await;
    assert_eq!(closing.status, 409, "an expired grant is not closed again");
    h.shutdown().await;
}

#[tokio::test]
async fn a_closed_grant_is_refused_and_closing_is_audited() {
    let (h, _clock) = start().await;
    let (id, token) = opened(&h, Some(240)).await;
    let (other, other_token) = opened(&h, Some(10)).await;
    assert_eq!(h.get("/v1/ops/runs", Some(&token)).await.status, 200);

    let closed = h
        .request(
            "DELETE",
            &format!("/v1/ops/break-glass/{id}"),
            Some(OPS_TOKEN),
            None,
        )
        .await;
    assert_eq!(closed.status, 200, "{}", closed.text);
    assert_eq!(closed.body["state"], json!("closed"));
    assert_eq!(closed.body["closed_by"], json!("operator"));
    let refused = h.get("/v1/ops/runs", Some(&token)).await;
    assert_eq!(refused.status, 401);
    assert_eq!(h.get("/v1/ops/runs", Some(&other_token)).await.status, 200);

    let again = h
        .request(
            "DELETE",
            &format!("/v1/ops/break-glass/{id}"),
            Some(OPS_TOKEN),
            None,
        )
        .await;
    assert_eq!((again.status, again.error_code()), (409, "conflict"));
    for unknown in ["bg_0000000000000000", "x", &"b".repeat(300)] {
        let reply = h
            .request(
                "DELETE",
                &format!("/v1/ops/break-glass/{unknown}"),
                Some(OPS_TOKEN),
                None,
            )
            .await;
        assert_eq!(reply.status, 404, "{unknown}");
    }
    let tenant = h
        .request(
            "DELETE",
            &format!("/v1/ops/break-glass/{other}"),
            Some(&h.tenant.api_token),
            None,
        )
        .await;
    assert_eq!(tenant.status, 403);

    // The grant holder may close their own grant; the entry names who did.
    let own = h
        .request(
            "DELETE",
            &format!("/v1/ops/break-glass/{other}"),
            Some(&other_token),
            None,
        )
        .await;
    assert_eq!(own.status, 200, "{}", own.text);
    assert_eq!(h.get("/v1/ops/runs", Some(&other_token)).await.status, 401);

    let entries = audit(&h).await;
    let closings: Vec<&Value> = entries
        .iter()
        .filter(|e| e["kind"] == "break_glass.closed")
        .collect();
    assert_eq!(closings.len(), 2);
    assert_eq!(closings[0]["detail"]["grant"], json!(id));
    assert_eq!(closings[0]["detail"]["reason"], json!(REASON));
    assert!(
        !kinds(&entries).contains(&"break_glass.expired"),
        "a closed grant is refused, not expired"
    );
    assert_eq!(verify(&h).await["first_bad"], Value::Null);
    h.shutdown().await;
}

#[tokio::test]
async fn a_tampered_entry_fails_verification() {
    let (h, _clock) = start().await;
    let (_, token) = opened(&h, None).await;
    for _ in 0..3 {
        assert_eq!(h.get("/v1/ops/actors", Some(&token)).await.status, 200);
    }
    assert_eq!(verify(&h).await["first_bad"], Value::Null);

    let Place::Sqlite(path) = h.place() else {
        panic!("this scenario runs on SQLite")
    };
    let url = format!("sqlite://{}", path.display());
    let mut raw = sqlx::SqliteConnection::connect(&url).await.unwrap();
    raw.execute("DROP TRIGGER operator_audit_log_no_update")
        .await
        .unwrap();
    raw.execute(
        "UPDATE operator_audit_log SET detail = replace(detail, '\"status\":200', '\"status\":404') \
         WHERE seq = 3",
    )
    .await
    .unwrap();
    raw.close().await.unwrap();

    let report = verify(&h).await;
    assert_eq!(report["entries"], json!(2), "{report}");
    assert_eq!(report["first_bad"]["seq"], json!(3), "{report}");
    assert!(
        report["first_bad"]["reason"]
            .as_str()
            .unwrap()
            .contains("hash")
    );
    h.shutdown().await;
}

#[tokio::test]
async fn hostile_tokens_and_queries_get_clear_errors() {
    let (h, _clock) = start().await;
    let (_, token) = opened(&h, None).await;
    let hostile = [
        format!("sbg_{}", "0".repeat(64)),
        format!("{}0", token),
        token[..60].to_owned(),
        token.to_uppercase(),
        format!("sbg_{}", "z".repeat(64)),
        format!("sbg_{}", "a".repeat(4000)),
        "sbg_".to_owned(),
        format!("sbg_{}", "é".repeat(32)),
    ];
    for bad in &hostile {
        let reply = h.get("/v1/ops/actors", Some(bad)).await;
        assert_eq!(
            (reply.status, reply.error_code()),
            (401, "unauthenticated"),
            "{}",
            reply.text
        );
    }
    for query in [
        "limit=abc",
        "limit=0",
        "limit=1001",
        "after=-1",
        "verify=maybe",
        "bogus=1",
    ] {
        let reply = h
            .get(&format!("/v1/ops/audit?{query}"), Some(OPS_TOKEN))
            .await;
        assert_eq!(
            (reply.status, reply.error_code()),
            (400, "bad_request"),
            "{query}: {}",
            reply.text
        );
    }
    let tenant = h.get("/v1/ops/audit", Some(&h.tenant.api_token)).await;
    assert_eq!(tenant.status, 403);
    assert_eq!(h.get("/v1/ops/audit", None).await.status, 401);
    let via_grant = h.get("/v1/ops/audit", Some(&token)).await;
    assert_eq!(via_grant.status, 200, "a grant holder is an operator");
    // Only the opening and the one use just made: refused tokens name no grant.
    assert_eq!(
        kinds(&audit(&h).await),
        ["break_glass.opened", "break_glass.used"]
    );
    h.shutdown().await;
}

#[tokio::test]
async fn no_grant_token_is_kept_listed_audited_or_logged() {
    let (h, clock) = start().await;
    let (id, token) = opened(&h, Some(5)).await;
    assert_eq!(h.get("/v1/ops/actors", Some(&token)).await.status, 200);
    let (closed, closed_token) = opened(&h, Some(5)).await;
    h.request(
        "DELETE",
        &format!("/v1/ops/break-glass/{closed}"),
        Some(OPS_TOKEN),
        None,
    )
    .await;
    assert_eq!(
        h.get("/v1/ops/actors", Some(&closed_token)).await.status,
        401
    );
    clock.advance_millis(5 * 60_000);
    assert_eq!(h.get("/v1/ops/actors", Some(&token)).await.status, 401);

    let secrets = [&token, &closed_token];
    let hexes: Vec<&str> = secrets.iter().map(|t| &t[4..]).collect();
    let list = h.get("/v1/ops/break-glass", Some(OPS_TOKEN)).await;
    assert!(list.text.contains(&id));
    let audit_text = h
        .get("/v1/ops/audit?limit=1000", Some(OPS_TOKEN))
        .await
        .text;
    assert!(audit_text.contains("break_glass.expired"));
    let stored: String = h
        .stored_rows()
        .await
        .into_iter()
        .map(|r| r.text)
        .collect::<Vec<_>>()
        .join("\n");
    let logged = log_text();
    assert!(logged.contains("break-glass"), "the grant's life is logged");
    for (what, text) in [
        ("list", &list.text),
        ("audit", &audit_text),
        ("database", &stored),
        ("logs", &logged),
    ] {
        for hex in &hexes {
            assert!(!text.contains(hex), "a grant token is in the {what}");
        }
    }
    h.shutdown().await;
}
