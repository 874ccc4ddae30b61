//! Webhook sources choose their signature scheme when they are created: Standard Webhooks (the
//! default), Slack's `v0` or Stripe's `Stripe-Signature`. Each source verifies only its own
//! scheme, refuses the others' headers, keeps the signature/timestamp distinction in its
//! errors, and honours a rotation's overlap. Signatures here are computed by hand from each
//! vendor's documented algorithm, not with Steward's own signers.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use secrecy::SecretString;
use serde_json::{Value, json};
use sha2::Sha256;
use steward_core::{Clock, FixedClock, SystemClock};
use steward_persistence::MasterKey;
use steward_runtime::boot::{self, ServeOptions, Server};
use steward_tests::Delivery;
use steward_tests::webhook::incident_event;

const OPS_TOKEN: &str = "ops-token-for-the-scheme-test";
const TENANT: &str = "us-schemeco";
/// Slack's published example signing secret: the kind of value a Slack app is issued.
const SLACK_SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
const HOUR_SECS: i64 = 3600;

struct Rig {
    server: Server,
    clock: FixedClock,
    http: reqwest::Client,
    admin: String,
    bodies: AtomicU32,
    _dir: tempfile::TempDir,
}

/// An answer from Steward: status and JSON body.
struct Answer {
    status: StatusCode,
    body: Value,
    text: String,
}

impl Rig {
    /// Boots Steward and onboards a tenant through the API.
    async fn start() -> Self {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let clock = FixedClock::at_secs(SystemClock.now_secs());
        let mut opts = ServeOptions::new(dir.path().join("steward.db"), MasterKey::generate());
        opts.clock = Arc::new(clock.clone());
        opts.ops_token = Some(SecretString::from(OPS_TOKEN));
        let server = boot::start(opts).await.expect("Steward boots");
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("a client");
        let mut rig = Self {
            server,
            clock,
            http,
            admin: String::new(),
            bodies: AtomicU32::new(0),
            _dir: dir,
        };
        let tenant = rig
            .post_json(
                "/v1/tenants",
                OPS_TOKEN,
                json!({ "id": TENANT, "name": "Scheme Co" }),
            )
            .await;
        assert_eq!(tenant.status, StatusCode::CREATED, "{}", tenant.text);
        rig.admin = tenant.body["admin_token"]["value"]
            .as_str()
            .expect("an admin token")
            .to_owned();
        rig
    }

    async fn post_json(&self, path: &str, token: &str, body: Value) -> Answer {
        let request = self
            .http
            .post(format!("{}{path}", self.server.url()))
            .bearer_auth(token)
            .json(&body);
        answer(request).await
    }

    /// Creates a source through the API; `extra` adds `scheme` and `secret`.
    async fn create_source(&self, name: &str, extra: Value) -> Answer {
        let mut body = json!({ "name": name, "sys_id_pointers": ["/incident/sys_id"] });
        for (k, v) in extra.as_object().into_iter().flatten() {
            body[k] = v.clone();
        }
        self.post_json("/v1/tenant/sources", &self.admin, body)
            .await
    }

    /// Creates a source that must succeed, and returns the secret the sender is to use.
    async fn source(&self, name: &str, extra: Value) -> Answer {
        let created = self.create_source(name, extra).await;
        assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
        created
    }

    /// A body no earlier delivery had: deliveries of the Slack and Stripe schemes carry no
    /// delivery id, so the same bytes again are a redelivery.
    fn fresh_body(&self) -> Vec<u8> {
        let n = self.bodies.fetch_add(1, Ordering::Relaxed);
        incident_event(
            "46d44f4b2f0a2110a3b8d5f4f699b6e1",
            "INC0010001",
            &format!("Down, report {n}"),
        )
    }

    async fn deliver(&self, source: &str, headers: &[(&str, String)], body: Vec<u8>) -> Answer {
        let mut request = self
            .http
            .post(format!(
                "{}/v1/webhooks/{TENANT}/{source}",
                self.server.url()
            ))
            .header("content-type", "application/json")
            .body(body);
        for (name, value) in headers {
            request = request.header(*name, value.as_str());
        }
        answer(request).await
    }

    /// A Slack-signed delivery of `body` at `ts`.
    async fn slack(&self, source: &str, secret: &str, ts: i64, body: Vec<u8>) -> Answer {
        let headers = [
            ("x-slack-request-timestamp", ts.to_string()),
            ("x-slack-signature", slack_signature(secret, ts, &body)),
        ];
        self.deliver(source, &headers, body).await
    }

    /// A Stripe-signed delivery with the given header.
    async fn stripe(&self, source: &str, header: String, body: Vec<u8>) -> Answer {
        self.deliver(source, &[("stripe-signature", header)], body)
            .await
    }

    /// A Standard Webhooks delivery, signed now with `whsec`.
    async fn standard(&self, source: &str, whsec: &str, body: Vec<u8>) -> Answer {
        let d = Delivery::new(whsec, self.clock.now_secs(), body);
        let headers = [
            ("webhook-id", d.id.clone()),
            ("webhook-timestamp", d.timestamp.clone()),
            ("webhook-signature", d.signature.clone()),
        ];
        self.deliver(source, &headers, d.body).await
    }

    async fn rotate(&self, source: &str, body: Value) -> Answer {
        let path = format!("/v1/tenant/sources/{source}/rotate");
        self.post_json(&path, &self.admin, body).await
    }
}

async fn answer(request: reqwest::RequestBuilder) -> Answer {
    let response = request.send().await.expect("Steward answers");
    let status = response.status();
    let text = response.text().await.expect("a readable answer");
    Answer {
        status,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
    }
}

fn hmac_hex(key: &[u8], parts: &[&[u8]]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key");
    for part in parts {
        mac.update(part);
    }
    hex::encode(mac.finalize().into_bytes())
}

/// `v0=` and the hex HMAC-SHA256 of `v0:{ts}:{body}`, keyed with the secret as text.
fn slack_signature(secret: &str, ts: i64, body: &[u8]) -> String {
    let base = format!("v0:{ts}:");
    format!(
        "v0={}",
        hmac_hex(secret.as_bytes(), &[base.as_bytes(), body])
    )
}

/// The `v1` of Stripe: the hex HMAC-SHA256 of `{t}.{body}`, keyed with the whole secret.
fn stripe_v1(secret: &str, t: i64, body: &[u8]) -> String {
    let prefix = format!("{t}.");
    hmac_hex(secret.as_bytes(), &[prefix.as_bytes(), body])
}

fn secret_of(created: &Answer) -> String {
    created.body["secret"]
        .as_str()
        .unwrap_or_else(|| panic!("a generated secret: {}", created.text))
        .to_owned()
}

fn code(answer: &Answer) -> &str {
    answer.body["error"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn each_source_verifies_its_own_scheme() {
    let rig = Rig::start().await;
    let standard = rig.source("standard", json!({})).await;
    assert_eq!(standard.body["scheme"], "standard-webhooks");
    let whsec = secret_of(&standard);
    assert!(whsec.starts_with("whsec_"));

    let slack = rig
        .source(
            "slack",
            json!({ "scheme": "slack", "secret": SLACK_SECRET }),
        )
        .await;
    assert_eq!(slack.body["scheme"], "slack");
    assert!(
        slack.body.get("secret").is_none() && !slack.text.contains(SLACK_SECRET),
        "a supplied secret is never answered back: {}",
        slack.text
    );

    let stripe = rig.source("stripe", json!({ "scheme": "stripe" })).await;
    let stripe_secret = secret_of(&stripe);
    assert!(stripe_secret.starts_with("whsec_") && stripe_secret.len() == 38);

    let now = rig.clock.now_secs();
    // Correctly signed, each in its own scheme.
    let ok = rig.standard("standard", &whsec, rig.fresh_body()).await;
    assert_eq!(ok.status, StatusCode::ACCEPTED, "{}", ok.text);
    let ok = rig
        .slack("slack", SLACK_SECRET, now, rig.fresh_body())
        .await;
    assert_eq!(ok.status, StatusCode::ACCEPTED, "{}", ok.text);
    let body = rig.fresh_body();
    let header = format!(
        "t={now},v1={},v0={}",
        stripe_v1(&stripe_secret, now, &body),
        "0".repeat(64)
    );
    let first = rig.stripe("stripe", header, body.clone()).await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.text);

    // A sender's retry of the same bytes, signed again later, names the same run.
    rig.clock.advance_millis(60_000);
    let later = rig.clock.now_secs();
    let header = format!("t={later},v1={}", stripe_v1(&stripe_secret, later, &body));
    let retry = rig.stripe("stripe", header, body).await;
    assert_eq!(retry.status, StatusCode::OK, "{}", retry.text);
    assert_eq!(retry.body["status"], "duplicate");
    assert_eq!(retry.body["run_id"], first.body["run_id"]);

    // Wrongly signed: the wrong secret, or another scheme's headers.
    let wrong = rig
        .slack(
            "slack",
            "0123456789abcdef0123456789abcdef",
            later,
            rig.fresh_body(),
        )
        .await;
    assert_eq!(
        (wrong.status, code(&wrong)),
        (StatusCode::UNAUTHORIZED, "signature_mismatch")
    );
    let body = rig.fresh_body();
    let header = format!("t={later},v1={}", stripe_v1(SLACK_SECRET, later, &body));
    let wrong = rig.stripe("stripe", header, body).await;
    assert_eq!(
        (wrong.status, code(&wrong)),
        (StatusCode::UNAUTHORIZED, "signature_mismatch")
    );
    let crossed = rig.standard("slack", &whsec, rig.fresh_body()).await;
    assert_eq!(
        (crossed.status, code(&crossed)),
        (StatusCode::UNAUTHORIZED, "missing_header")
    );
    let crossed = rig
        .slack("standard", SLACK_SECRET, later, rig.fresh_body())
        .await;
    assert_eq!(code(&crossed), "missing_header");

    // The clock is told apart from the signature, with the difference.
    let stale = rig
        .slack("slack", SLACK_SECRET, later - 301, rig.fresh_body())
        .await;
    assert_eq!(
        (stale.status, code(&stale)),
        (StatusCode::UNAUTHORIZED, "timestamp_out_of_tolerance")
    );
    assert!(stale.text.contains("301 s old"), "{}", stale.text);
    let body = rig.fresh_body();
    let ahead = later + 301;
    let header = format!("t={ahead},v1={}", stripe_v1(&stripe_secret, ahead, &body));
    let future = rig.stripe("stripe", header, body).await;
    assert_eq!(code(&future), "timestamp_out_of_tolerance");
    assert!(future.text.contains("in the future"), "{}", future.text);

    // Hostile envelopes are malformed, and no answer quotes a secret.
    let body = rig.fresh_body();
    let v1 = stripe_v1(&stripe_secret, later, &body);
    for header in [
        format!("v1={v1}"),
        format!("t={later},t={later},v1={v1}"),
        format!("t={later},v1={}", "zz".repeat(32)),
        format!("t={later},v2={v1}"),
        format!("t={later},v1={v1},{}", "v0=00,".repeat(1500)),
    ] {
        let refused = rig.stripe("stripe", header.clone(), body.clone()).await;
        assert_eq!(
            (refused.status, code(&refused)),
            (StatusCode::UNAUTHORIZED, "signature_malformed"),
            "{header:.60}"
        );
        assert!(!refused.text.contains(&stripe_secret) && !refused.text.contains(&v1));
    }
    let overflow = format!("t={},v1={v1}", "9".repeat(30));
    let refused = rig.stripe("stripe", overflow, body.clone()).await;
    assert_eq!(code(&refused), "timestamp_malformed");
    let prefix = rig
        .deliver(
            "slack",
            &[
                ("x-slack-request-timestamp", later.to_string()),
                ("x-slack-signature", format!("v1={}", "a".repeat(64))),
            ],
            body,
        )
        .await;
    assert_eq!(code(&prefix), "signature_malformed");
    rig.server.shutdown().await;
}

#[tokio::test]
async fn unknown_schemes_and_unusable_secrets_are_refused_at_creation() {
    let rig = Rig::start().await;
    for (extra, expected) in [
        (
            json!({ "scheme": "hmac-sha256" }),
            "unknown signature scheme",
        ),
        (json!({ "scheme": "Slack" }), "unknown signature scheme"),
        (
            json!({ "scheme": "slack", "secret": "too-short" }),
            "16 to 256 visible ASCII",
        ),
        (
            json!({ "scheme": "stripe", "secret": "whsec_ with spaces in it" }),
            "16 to 256 visible ASCII",
        ),
        (json!({ "secret": "plain-text-not-whsec" }), "whsec_"),
    ] {
        let refused = rig.create_source("refused", extra.clone()).await;
        assert_eq!(
            (refused.status, code(&refused)),
            (StatusCode::UNPROCESSABLE_ENTITY, "unprocessable"),
            "{extra}: {}",
            refused.text
        );
        assert!(refused.text.contains(expected), "{}", refused.text);
        if let Some(secret) = extra["secret"].as_str() {
            assert!(!refused.text.contains(secret), "{}", refused.text);
        }
    }
    let wrong_type = rig.create_source("refused", json!({ "scheme": 7 })).await;
    assert_eq!(wrong_type.status, StatusCode::BAD_REQUEST);
    // Nothing was created.
    let missing = rig
        .slack(
            "refused",
            SLACK_SECRET,
            rig.clock.now_secs(),
            rig.fresh_body(),
        )
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);

    // A secret set for a source must suit its scheme.
    rig.source("slack", json!({ "scheme": "slack" })).await;
    let path = "/v1/tenant/secrets/webhook.slack";
    let url = format!("{}{path}", rig.server.url());
    let put = |value: &str| {
        rig.http
            .put(url.clone())
            .bearer_auth(&rig.admin)
            .json(&json!({ "value": value }))
    };
    let refused = answer(put("short")).await;
    assert_eq!(
        refused.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        refused.text
    );
    let set = answer(put(SLACK_SECRET)).await;
    assert_eq!(set.status, StatusCode::OK, "{}", set.text);
    let ok = rig
        .slack(
            "slack",
            SLACK_SECRET,
            rig.clock.now_secs(),
            rig.fresh_body(),
        )
        .await;
    assert_eq!(ok.status, StatusCode::ACCEPTED, "{}", ok.text);
    rig.server.shutdown().await;
}

#[tokio::test]
async fn a_stripe_source_rotates_with_an_overlap() {
    let rig = Rig::start().await;
    let old = secret_of(&rig.source("stripe", json!({ "scheme": "stripe" })).await);
    let now = rig.clock.now_secs();
    let rotated = rig
        .rotate("stripe", json!({ "old_expires_at": now + HOUR_SECS }))
        .await;
    assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.text);
    assert_eq!(rotated.body["scheme"], "stripe");
    let new = secret_of(&rotated);
    assert!(new.starts_with("whsec_") && new != old);

    let send = |secret: String| {
        let rig = &rig;
        async move {
            let t = rig.clock.now_secs();
            let body = rig.fresh_body();
            let header = format!("t={t},v1={}", stripe_v1(&secret, t, &body));
            rig.stripe("stripe", header, body).await.status
        }
    };
    assert_eq!(
        send(old.clone()).await,
        StatusCode::ACCEPTED,
        "old, in overlap"
    );
    assert_eq!(
        send(new.clone()).await,
        StatusCode::ACCEPTED,
        "new, in overlap"
    );
    // Both signatures in one header, as a sender mid-rotation sends them.
    let t = rig.clock.now_secs();
    let body = rig.fresh_body();
    let header = format!(
        "t={t},v1={},v1={}",
        stripe_v1("whsec_neither", t, &body),
        stripe_v1(&old, t, &body)
    );
    assert_eq!(
        rig.stripe("stripe", header, body).await.status,
        StatusCode::ACCEPTED
    );

    rig.clock.advance_millis(HOUR_SECS * 1000);
    assert_eq!(send(old).await, StatusCode::UNAUTHORIZED, "old, expired");
    assert_eq!(send(new).await, StatusCode::ACCEPTED, "new, after");
    rig.server.shutdown().await;
}

#[tokio::test]
async fn a_slack_source_rotates_to_a_supplied_secret_with_an_overlap() {
    let rig = Rig::start().await;
    rig.source(
        "slack",
        json!({ "scheme": "slack", "secret": SLACK_SECRET }),
    )
    .await;
    let regenerated = "0f1e2d3c4b5a69788796a5b4c3d2e1f0";
    let now = rig.clock.now_secs();
    let rotated = rig
        .rotate(
            "slack",
            json!({ "old_expires_at": now + HOUR_SECS, "secret": regenerated }),
        )
        .await;
    assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.text);
    assert!(rotated.body.get("secret").is_none() && !rotated.text.contains(regenerated));

    for secret in [SLACK_SECRET, regenerated] {
        let ok = rig.slack("slack", secret, now, rig.fresh_body()).await;
        assert_eq!(ok.status, StatusCode::ACCEPTED, "{secret}: {}", ok.text);
    }
    rig.clock.advance_millis(HOUR_SECS * 1000 + 1000);
    let later = rig.clock.now_secs();
    let old = rig
        .slack("slack", SLACK_SECRET, later, rig.fresh_body())
        .await;
    assert_eq!(
        (old.status, code(&old)),
        (StatusCode::UNAUTHORIZED, "signature_mismatch")
    );
    let new = rig
        .slack("slack", regenerated, later, rig.fresh_body())
        .await;
    assert_eq!(new.status, StatusCode::ACCEPTED, "{}", new.text);
    rig.server.shutdown().await;
}
