//! A webhook source's secret rotates with an overlap: until the superseded secret expires,
//! deliveries signed with either secret are accepted; afterwards only the new one is.

use std::sync::Arc;

use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use steward_actors::secret_names;
use steward_adapters::webhook::WebhookSecret;
use steward_core::{Clock, FixedClock, SystemClock, TenantId};
use steward_persistence::{Authenticator, MasterKey, Store, StoreError, StoreOptions, TenantScope};
use steward_runtime::boot::{self, ServeOptions, Server};
use steward_tests::Delivery;
use steward_tests::webhook::incident_event;

const OPS_TOKEN: &str = "ops-token-for-the-rotation-test";
const TENANT: &str = "us-rotco";
const SOURCE: &str = "servicenow";
const HOUR_MS: i64 = 3_600_000;

struct Rig {
    server: Server,
    key: MasterKey,
    clock: FixedClock,
    http: reqwest::Client,
    whsec: String,
    _dir: tempfile::TempDir,
}

impl Rig {
    /// Boots Steward, onboards a tenant through the API and creates its webhook source.
    async fn start() -> Self {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let key = MasterKey::generate();
        let clock = FixedClock::at_secs(SystemClock.now_secs());
        let mut opts = ServeOptions::new(dir.path().join("steward.db"), key.clone());
        opts.clock = Arc::new(clock.clone());
        opts.ops_token = Some(SecretString::from(OPS_TOKEN));
        let server = boot::start(opts).await.expect("Steward boots");
        let http = reqwest::Client::new();
        let mut rig = Self {
            server,
            key,
            clock,
            http,
            whsec: String::new(),
            _dir: dir,
        };
        let tenant = rig
            .post(
                "/v1/tenants",
                OPS_TOKEN,
                json!({ "id": TENANT, "name": "Rotation Co" }),
            )
            .await;
        let admin = tenant["admin_token"]["value"].as_str().expect("a token");
        let source = rig
            .post(
                "/v1/tenant/sources",
                admin,
                json!({ "name": SOURCE, "sys_id_pointers": ["/incident/sys_id"] }),
            )
            .await;
        rig.whsec = source["secret"].as_str().expect("a whsec").to_owned();
        rig
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> Value {
        let response = self
            .http
            .post(format!("{}{path}", self.server.url()))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .expect("Steward answers");
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
        response.json().await.expect("a JSON answer")
    }

    fn scope(&self) -> TenantScope {
        TenantScope::assume(TenantId::parse(TENANT).unwrap(), Authenticator::Operator)
    }

    /// Rotates the source's secret; the superseded one stays valid for `overlap_ms`.
    async fn rotate(&self, overlap_ms: i64) -> String {
        self.rotate_through(&self.server.store, overlap_ms).await
    }

    /// Rotates the source's secret through `store`, which may be another process's.
    async fn rotate_through(&self, store: &Store, overlap_ms: i64) -> String {
        let fresh = WebhookSecret::generate();
        store
            .rotate_secret(
                &self.scope(),
                &self.key,
                &secret_names::webhook_source(SOURCE),
                &SecretString::from(fresh.clone()),
                self.clock.now_millis() + overlap_ms,
                "operator:rotation-test",
            )
            .await
            .expect("the secret rotates");
        fresh
    }

    /// The status of one fresh delivery signed with `whsec` now.
    async fn deliver(&self, whsec: &str) -> StatusCode {
        let body = incident_event("46d44f4b2f0a2110a3b8d5f4f699b6e1", "INC0010001", "Down");
        let delivery = Delivery::new(whsec, self.clock.now_secs(), body);
        self.http
            .post(format!(
                "{}/v1/webhooks/{TENANT}/{SOURCE}",
                self.server.url()
            ))
            .header("content-type", "application/json")
            .header("webhook-id", &delivery.id)
            .header("webhook-timestamp", &delivery.timestamp)
            .header("webhook-signature", &delivery.signature)
            .body(delivery.body)
            .send()
            .await
            .expect("Steward answers")
            .status()
    }
}

/// Another process on the same database (a second node) rotates the secret: this node's kept
/// read of the source does not know the new secret, so a delivery signed with it is checked
/// again against the database and accepted at once. A secret that node cut off is still
/// honoured here for at most a second.
#[tokio::test]
async fn a_secret_another_node_stored_verifies_at_once_and_one_it_cut_off_within_a_second() {
    let rig = Rig::start().await;
    let mut opts = StoreOptions::new(rig._dir.path().join("steward.db"));
    opts.clock = Arc::new(rig.clock.clone());
    let other = Store::open(opts)
        .await
        .expect("a second handle on the database");
    let old = rig.whsec.clone();
    assert_eq!(rig.deliver(&old).await, StatusCode::ACCEPTED, "old, kept");

    // The other node replaces the secret with no overlap.
    let fresh = rig.rotate_through(&other, 0).await;
    assert_eq!(
        rig.deliver(&fresh).await,
        StatusCode::ACCEPTED,
        "new, at once"
    );
    // Reading the new one refreshed what this node keeps: the old one is refused already.
    assert_eq!(
        rig.deliver(&old).await,
        StatusCode::UNAUTHORIZED,
        "old, cut off"
    );

    // Cut off again by the other node; this node's kept read may still have it, for a second
    // at most.
    let newer = rig.rotate_through(&other, 0).await;
    rig.clock.advance_millis(1_000);
    assert_eq!(
        rig.deliver(&fresh).await,
        StatusCode::UNAUTHORIZED,
        "after it"
    );
    assert_eq!(
        rig.deliver(&newer).await,
        StatusCode::ACCEPTED,
        "the newest"
    );
    other.close().await;
}

#[tokio::test]
async fn both_secrets_verify_during_the_overlap_and_only_the_new_one_after() {
    let rig = Rig::start().await;
    let old = rig.whsec.clone();
    assert_eq!(rig.deliver(&old).await, StatusCode::ACCEPTED);

    let new = rig.rotate(24 * HOUR_MS).await;
    assert_eq!(
        rig.deliver(&old).await,
        StatusCode::ACCEPTED,
        "old, in overlap"
    );
    assert_eq!(
        rig.deliver(&new).await,
        StatusCode::ACCEPTED,
        "new, in overlap"
    );

    rig.clock.advance_millis(24 * HOUR_MS - 1000);
    assert_eq!(
        rig.deliver(&old).await,
        StatusCode::ACCEPTED,
        "old, 1 s left"
    );

    rig.clock.advance_millis(1000);
    assert_eq!(
        rig.deliver(&old).await,
        StatusCode::UNAUTHORIZED,
        "old, expired"
    );
    assert_eq!(rig.deliver(&new).await, StatusCode::ACCEPTED, "new, after");

    let audit = rig
        .server
        .store
        .audit_entries(&rig.scope(), 0, 1000)
        .await
        .unwrap();
    let rotated = audit
        .iter()
        .find(|e| e.kind == "secret.rotated")
        .expect("audited");
    assert_eq!(rotated.actor, "operator:rotation-test");
    assert!(
        rotated.body.contains("\"previous_version\":1"),
        "{}",
        rotated.body
    );
    let secret = |s: &str| s.trim_start_matches("whsec_").to_owned();
    assert!(!rotated.body.contains(&secret(&old)) && !rotated.body.contains(&secret(&new)));
    rig.server.shutdown().await;
}

#[tokio::test]
async fn a_second_rotation_ends_the_overlap_of_the_first() {
    let rig = Rig::start().await;
    let first = rig.whsec.clone();
    let second = rig.rotate(24 * HOUR_MS).await;
    let third = rig.rotate(24 * HOUR_MS).await;
    assert_eq!(rig.deliver(&first).await, StatusCode::UNAUTHORIZED);
    assert_eq!(rig.deliver(&second).await, StatusCode::ACCEPTED);
    assert_eq!(rig.deliver(&third).await, StatusCode::ACCEPTED);
    rig.server.shutdown().await;
}

#[tokio::test]
async fn an_overlap_ending_now_refuses_the_old_secret_at_once() {
    let rig = Rig::start().await;
    let old = rig.whsec.clone();
    let new = rig.rotate(0).await;
    assert_eq!(rig.deliver(&old).await, StatusCode::UNAUTHORIZED);
    assert_eq!(rig.deliver(&new).await, StatusCode::ACCEPTED);
    let valid = rig
        .server
        .store
        .valid_secrets(
            &rig.scope(),
            &rig.key,
            &secret_names::webhook_source(SOURCE),
        )
        .await
        .unwrap();
    assert_eq!(valid.len(), 1);
    assert_eq!(valid[0].expose_secret(), new);
    rig.server.shutdown().await;
}

#[tokio::test]
async fn rotating_a_secret_that_was_never_set_is_refused() {
    let rig = Rig::start().await;
    let err = rig
        .server
        .store
        .rotate_secret(
            &rig.scope(),
            &rig.key,
            "webhook.nosuchsource",
            &SecretString::from(WebhookSecret::generate()),
            rig.clock.now_millis() + HOUR_MS,
            "operator:rotation-test",
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
    assert_eq!(rig.deliver(&rig.whsec).await, StatusCode::ACCEPTED);
    rig.server.shutdown().await;
}
