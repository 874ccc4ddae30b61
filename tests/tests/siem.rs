//! Streaming a tenant's audit log to its SIEM end to end: configured over the API, the
//! flagship run's entries arrive at a loopback SIEM in order, with no gap, signed per Standard
//! Webhooks and forming a chain that verifies; failures, a refusing SIEM, a rotation and a
//! restart during an unacknowledged batch lose nothing; hostile settings are refused.

use std::time::{Duration, Instant};

use secrecy::ExposeSecret;
use serde_json::{Value, json};
use steward_actors::states;
use steward_adapters::slack::APPROVE_ACTION;
use steward_persistence::{AuditEntry, GENESIS_HASH, NewToken, generate_api_token, verify_entries};
use steward_tests::siem::SiemStandIn;
use steward_tests::{APPROVER, Harness, Scenario};

/// How long a test waits for the streamer (retries back off up to seconds).
const SIEM_PATIENCE: Duration = Duration::from_secs(40);

/// Issues an `admin` token for the harness's main tenant (`other` for the second one).
async fn admin_token(h: &Harness, other: bool) -> String {
    let tenant = if other { &h.other } else { &h.tenant };
    let value = generate_api_token();
    let scopes = vec!["admin".to_owned()];
    let token = NewToken {
        value: &value,
        label: "e2e-admin",
        scopes: &scopes,
        expires_at: None,
    };
    h.server()
        .store
        .issue_token(&tenant.scope(), token, "operator")
        .await
        .expect("a token is issued");
    value.expose_secret().to_owned()
}

/// Configures the main tenant's SIEM at `siem` and has the stand-in trust the new secret.
async fn configure(h: &Harness, token: &str, siem: &SiemStandIn) -> Value {
    let reply = h
        .request(
            "PUT",
            "/v1/tenant/siem",
            Some(token),
            Some(&json!({ "url": siem.url() })),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let secret = reply.body["secret"].as_str().expect("the secret is shown");
    siem.trust(secret);
    reply.body
}

/// Runs the flagship: a webhook, a proposal, an approval in Slack, the write.
async fn flagship(h: &Harness) {
    let run = h.trigger().await;
    let message = h.awaiting_approval(run).await;
    let click = h.click(&message, APPROVE_ACTION, APPROVER).await;
    assert_eq!(click.status, 200, "{}", click.text);
    assert_eq!(h.finished(run).await.state, states::COMPLETED);
}

/// Waits until `check` holds, up to [`SIEM_PATIENCE`].
async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + SIEM_PATIENCE;
    while !check().await {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the SIEM holds every entry of the main tenant's chain, then checks them: seq
/// 1 to the head, each once, equal to the stored entries, and a chain that verifies.
async fn all_delivered(h: &Harness, siem: &SiemStandIn) -> Vec<AuditEntry> {
    let mut head = 0;
    until("every entry at the SIEM", async || {
        head = h.audit().await.last().map_or(0, |e| e.seq);
        head > 0 && siem.last_seq() == head
    })
    .await;
    let got = siem.entries();
    let seqs: Vec<u64> = got.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=head).collect::<Vec<_>>(),
        "in order, no gap, no repeat"
    );
    let stored = h.audit().await;
    assert_eq!(got, stored[..got.len()], "the entries as stored");
    verify_entries(&got, GENESIS_HASH).expect("the received chain verifies");
    assert_eq!(siem.refused(), 0, "every batch was signed and well-formed");
    got
}

async fn scrape(h: &Harness) -> String {
    h.get("/metrics", None).await.text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_flagship_arrives_in_order_signed_and_verifying() {
    let h = Scenario::new().start().await;
    let siem = SiemStandIn::start().await;
    let token = admin_token(&h, false).await;
    let started = Instant::now();
    let answer = configure(&h, &token, &siem).await;
    let secret = answer["secret"].as_str().unwrap();
    assert!(secret.starts_with("whsec_"), "{secret}");
    assert!(steward_adapters::webhook::WebhookSecret::parse(secret).is_ok());
    assert_eq!(answer["stream"]["url"], siem.url());
    assert_eq!(answer["previous_secret_expires_at"], Value::Null);
    // The configuration is itself an entry, and it reaches the SIEM on its own.
    until("the first entry", async || siem.last_seq() >= 1).await;
    let first_latency = started.elapsed();

    flagship(&h).await;
    let entries = all_delivered(&h, &siem).await;
    assert!(entries.iter().any(|e| e.kind == "siem.configured"));
    assert!(
        entries.iter().any(|e| e.run_id.is_some()),
        "run entries too"
    );
    for batch in siem.batches() {
        let (first, last) = (batch.entries[0].seq, batch.entries.last().unwrap().seq);
        assert_eq!(batch.id, format!("{}-{first}-{last}", h.tenant.id));
        assert!(batch.entries.len() <= 500);
        assert!(batch.signature.starts_with("v1,"));
        assert!(!batch.duplicate);
    }
    let shown = h.get("/v1/tenant/siem", Some(&token)).await;
    assert_eq!(shown.status, 200, "{}", shown.text);
    assert_eq!(shown.body["state"], "active");
    let delivered = shown.body["delivered_seq"].as_u64().unwrap();
    assert!(delivered >= entries.len() as u64, "{}", shown.text);
    assert_eq!(shown.body["last_error"], Value::Null);
    assert!(
        !shown.text.contains("whsec_"),
        "the secret is never shown again"
    );
    let metrics = scrape(&h).await;
    assert!(
        metrics.contains(&format!(
            "steward_siem_lag_entries{{tenant=\"{}\"}}",
            h.tenant.id
        )),
        "{metrics}"
    );
    // The other tenant has no stream and sees none.
    let other = admin_token(&h, true).await;
    assert_eq!(h.get("/v1/tenant/siem", Some(&other)).await.status, 404);
    assert!(siem.entries().iter().all(|e| e.tenant == h.tenant.id));
    // From an append to its arrival: at most one poll (250 ms) plus a request, when idle.
    let mut worst = Duration::ZERO;
    for i in 0..10 {
        let draft = steward_persistence::AuditDraft {
            kind: format!("test.latency{i}"),
            run_id: None,
            actor: "e2e".into(),
            body: json!({}),
        };
        let appended = Instant::now();
        let seq = h
            .server()
            .store
            .append_audit(&h.tenant.scope(), draft)
            .await
            .unwrap();
        until("the new entry", async || siem.last_seq() >= seq).await;
        worst = worst.max(appended.elapsed());
        tokio::time::sleep(Duration::from_millis(37)).await;
    }
    assert!(worst < Duration::from_secs(2), "{worst:?}");
    eprintln!(
        "siem: first entry {first_latency:?} after configuring; append to arrival ≤ {worst:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_a_refusal_a_rotation_and_a_restart_lose_nothing() {
    let mut h = Scenario::new().start().await;
    let siem = SiemStandIn::start().await;
    let token = admin_token(&h, false).await;

    // Three 503s, then through.
    siem.fail_next(3, 503);
    let first = configure(&h, &token, &siem).await;
    flagship(&h).await;
    all_delivered(&h, &siem).await;
    assert!(siem.requests() >= 4);

    // A SIEM that refuses (400) marks the stream failing, is retried, and catches up.
    siem.always(Some(400));
    let store = h.server().store.clone();
    let scope = h.tenant.scope();
    let audit = |kind: &str| steward_persistence::AuditDraft {
        kind: kind.into(),
        run_id: None,
        actor: "e2e".into(),
        body: json!({}),
    };
    store
        .append_audit(&scope, audit("test.during_refusal"))
        .await
        .unwrap();
    until("the stream shows failing", async || {
        let shown = h.get("/v1/tenant/siem", Some(&token)).await;
        shown.body["state"] == "failing"
            && shown.body["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("400"))
            && shown.body["lag"].as_u64().is_some_and(|lag| lag >= 1)
    })
    .await;
    let metrics = scrape(&h).await;
    let failures = format!(
        "steward_siem_delivery_failures_total{{tenant=\"{}\"}}",
        h.tenant.id
    );
    assert!(metrics.contains(&failures), "{metrics}");
    let oldest = format!(
        "steward_siem_oldest_unacknowledged_timestamp_seconds{{tenant=\"{}\"}} ",
        h.tenant.id
    );
    let waiting = |text: &str| -> Option<i64> {
        text.lines()
            .find_map(|l| l.strip_prefix(&oldest))
            .and_then(|v| v.trim().parse().ok())
    };
    let now_secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let since = waiting(&metrics).expect("the oldest unacknowledged entry's time");
    assert!(
        (now_secs - 120..=now_secs).contains(&since),
        "the refused entry waits since {since}, now {now_secs}"
    );
    siem.always(None);
    all_delivered(&h, &siem).await;
    // The SIEM holds every entry; Steward stores its acknowledgement just after the answer.
    until("the stream shows active with no lag", async || {
        let shown = h.get("/v1/tenant/siem", Some(&token)).await;
        shown.body["state"] == "active" && shown.body["lag"] == 0
    })
    .await;
    until("nothing waits any more", async || {
        waiting(&scrape(&h).await) == Some(0)
    })
    .await;

    // A rotation: a new secret, both signatures during the overlap.
    let old = first["secret"].as_str().unwrap().to_owned();
    let rotated = configure(&h, &token, &siem).await;
    let new = rotated["secret"].as_str().unwrap().to_owned();
    assert_ne!(old, new);
    assert!(rotated["previous_secret_expires_at"].as_i64().is_some());
    siem.trust_only(&new);
    all_delivered(&h, &siem).await;
    siem.trust_only(&old);
    store
        .append_audit(&scope, audit("test.after_rotation"))
        .await
        .unwrap();
    all_delivered(&h, &siem).await;
    let last = siem.batches().pop().unwrap();
    assert_eq!(last.signature.split(' ').count(), 2, "{}", last.signature);
    siem.trust(&new);

    // The SIEM records a batch but its answer never comes; Steward restarts meanwhile.
    siem.hang(Some(Duration::from_secs(60)));
    let before = siem.batches().len();
    store
        .append_audit(&scope, audit("test.before_restart"))
        .await
        .unwrap();
    until("a batch held unanswered", async || {
        siem.batches().len() > before
    })
    .await;
    let held = siem.batches().pop().unwrap();
    siem.hang(None);
    h.restart().await;
    let store = h.server().store.clone();
    store
        .append_audit(&scope, audit("test.after_restart"))
        .await
        .unwrap();
    all_delivered(&h, &siem).await;
    let again: Vec<_> = siem
        .batches()
        .into_iter()
        .filter(|b| b.id == held.id)
        .collect();
    assert_eq!(
        again.len(),
        2,
        "sent again under the same id: {:?}",
        siem.batches()
    );
    assert!(again[1].duplicate && again[0].entries == again[1].entries);
    until("no lag after the restart", async || {
        let shown = h.get("/v1/tenant/siem", Some(&token)).await;
        shown.body["lag"] == 0
    })
    .await;

    // Stopping: nothing more is sent.
    let removed = h
        .request("DELETE", "/v1/tenant/siem", Some(&token), None)
        .await;
    assert_eq!(removed.status, 200, "{}", removed.text);
    assert_eq!(
        h.request("DELETE", "/v1/tenant/siem", Some(&token), None)
            .await
            .status,
        404
    );
    assert_eq!(h.get("/v1/tenant/siem", Some(&token)).await.status, 404);
    let count = siem.requests();
    store
        .append_audit(&scope, audit("test.after_removal"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(siem.requests(), count, "a removed stream sends nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_settings_are_refused() {
    let h = Scenario::new().start().await;
    let token = admin_token(&h, false).await;
    let put = async |body: &str, content_type: &str| {
        let reply = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .put(format!("{}/v1/tenant/siem", h.url()))
            .bearer_auth(&token)
            .header("content-type", content_type)
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        let status = reply.status().as_u16();
        (status, reply.text().await.unwrap_or_default())
    };
    let json = "application/json";
    let long = format!("http://127.0.0.1:9/{}", "a".repeat(2100));
    let cases: Vec<(String, u16)> = vec![
        (json!({"url": "not a url"}).to_string(), 422),
        (json!({"url": "ftp://127.0.0.1/x"}).to_string(), 422),
        (
            json!({"url": "http://siem.example.com/ingest"}).to_string(),
            422,
        ),
        (json!({"url": "http://10.1.2.3/ingest"}).to_string(), 422),
        (
            json!({"url": "http://user:pw@127.0.0.1:9/"}).to_string(),
            422,
        ),
        (json!({"url": long}).to_string(), 422),
        (
            json!({"url": "http://127.0.0.1:9/", "secret": "whsec_x"}).to_string(),
            400,
        ),
        (json!([{"url": "http://127.0.0.1:9/"}]).to_string(), 400),
        (json!({"url": 7}).to_string(), 400),
        ("{\"url\": ".into(), 400),
        (String::new(), 400),
        (
            format!(
                "{{\"url\": \"http://127.0.0.1:9/{}\"}}",
                "a".repeat(8 * 1024)
            ),
            413,
        ),
    ];
    for (body, want) in cases {
        let (status, text) = put(&body, json).await;
        let shown: String = body.chars().take(80).collect();
        assert_eq!(status, want, "{shown}: {text}");
        assert!(!text.contains("whsec_"), "{text}");
    }
    // Nothing was stored by any of them.
    assert_eq!(h.get("/v1/tenant/siem", Some(&token)).await.status, 404);
    assert!(h.audit().await.iter().all(|e| !e.kind.starts_with("siem.")));
    // Without a token, or with one lacking `admin`.
    let body = json!({"url": "http://127.0.0.1:9/"});
    let none = h.request("PUT", "/v1/tenant/siem", None, Some(&body)).await;
    assert_eq!(none.status, 401);
    let runs_only = h
        .request(
            "PUT",
            "/v1/tenant/siem",
            Some(&h.tenant.api_token),
            Some(&body),
        )
        .await;
    assert_eq!(runs_only.status, 403);
    assert_eq!(
        h.get("/v1/tenant/siem", Some(&h.tenant.api_token))
            .await
            .status,
        403
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_is_refused_outside_dev() {
    use steward_actors::siem::check_siem_url;
    use steward_adapters::egress::Egress;
    use steward_adapters::http::HttpSettings;
    // The check the PUT and the streamer share, with the settings of every profile but dev.
    let settings = HttpSettings {
        https_only: true,
        egress: Egress::default().with_loopback(),
        ..HttpSettings::default()
    };
    let region = steward_core::Region::Us;
    let err = check_siem_url(&settings, region, "http://127.0.0.1:9/ingest").unwrap_err();
    assert!(err.contains("https"), "{err}");
    assert!(check_siem_url(&settings, region, "https://127.0.0.1:9/ingest").is_ok());
}
