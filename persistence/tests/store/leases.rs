//! Tenant leases on each backend: one holder at a time, a fencing token that grows with every
//! new holding and never goes back, renewal and release, journal writes refused once a later
//! holding began, and bad input refused without a row written. On PostgreSQL, wake-ups rung
//! through one store reach a listener on another, and whatever else is sent on their channel
//! is skipped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use steward_core::TenantId;
use steward_persistence::{Backend, Fencing, StoreError, WAKE_CHANNEL, WakeCall, WakeListener};

use crate::support::{TestDb, scope, service_connection, step};

const TTL: i64 = 15_000;

/// How long a wake-up may take to reach a listener on the same server.
const WAKE_WAIT: Duration = Duration::from_secs(5);

fn acme() -> TenantId {
    TenantId::parse("us-acme").unwrap()
}

/// A node's book of the leases it holds, as a node's lease keeper would keep it.
#[derive(Debug)]
struct Book {
    node: String,
    tokens: Mutex<HashMap<TenantId, i64>>,
}

impl Book {
    fn new(node: &str) -> Arc<Self> {
        Arc::new(Self {
            node: node.into(),
            tokens: Mutex::new(HashMap::new()),
        })
    }

    fn hold(&self, tenant: &TenantId, token: i64) {
        self.tokens.lock().unwrap().insert(tenant.clone(), token);
    }
}

impl Fencing for Book {
    fn node(&self) -> &str {
        &self.node
    }

    fn token(&self, tenant: &TenantId) -> Option<i64> {
        self.tokens.lock().unwrap().get(tenant).copied()
    }
}

async fn one_node_holds_a_lease_and_each_new_holding_raises_the_token() {
    let db = TestDb::new().await;
    let t = acme();
    let a = db
        .store
        .acquire_lease(&t, "node-a", TTL)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((a.holder.as_str(), a.token), ("node-a", 1));
    assert_eq!(a.expires_at, db.clock_ms() + TTL);
    assert!(a.live_at(db.clock_ms()));
    // Another node gets nothing while it is in force.
    assert!(
        db.store
            .acquire_lease(&t, "node-b", TTL)
            .await
            .unwrap()
            .is_none()
    );

    // Renewal, by acquiring again or by renewing, keeps the token and the start.
    db.clock.advance_millis(5_000);
    let again = db
        .store
        .acquire_lease(&t, "node-a", TTL)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((again.token, again.acquired_at), (1, a.acquired_at));
    let renewed = db
        .store
        .renew_lease(&t, "node-a", 1, TTL)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(renewed.expires_at, db.clock_ms() + TTL);

    // Once it lapses, node-b takes it under token 2, and node-a can no longer renew.
    db.clock.advance_millis(TTL);
    assert!(
        db.store
            .renew_lease(&t, "node-a", 1, TTL)
            .await
            .unwrap()
            .is_none()
    );
    let b = db
        .store
        .acquire_lease(&t, "node-b", TTL)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((b.holder.as_str(), b.token), ("node-b", 2));
    assert!(
        db.store
            .renew_lease(&t, "node-a", 2, TTL)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        db.store
            .acquire_lease(&t, "node-a", TTL)
            .await
            .unwrap()
            .is_none()
    );

    // A release hands it over at once, under a larger token; releasing twice does nothing.
    assert!(!db.store.release_lease(&t, "node-a", 2).await.unwrap());
    assert!(db.store.release_lease(&t, "node-b", 2).await.unwrap());
    let a = db
        .store
        .acquire_lease(&t, "node-a", TTL)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a.token, 3);
    // Taking a lease one let lapse also raises the token.
    db.clock.advance_millis(TTL + 1);
    let a = db
        .store
        .acquire_lease(&t, "node-a", TTL)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a.token, 4);

    let all = db.store.leases().await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0], a);
    assert_eq!(
        db.store.lease(&scope("us-acme")).await.unwrap(),
        Some(a.clone())
    );
    assert!(db.store.lease(&scope("eu-beta")).await.unwrap().is_none());
}

async fn nodes_racing_for_a_lease_get_one_holder() {
    let db = TestDb::new().await;
    let other = db.second_process().await;
    let t = acme();
    let mut tasks = Vec::new();
    for i in 0..16 {
        let store = if i % 2 == 0 {
            db.store.clone()
        } else {
            other.clone()
        };
        let t = t.clone();
        tasks.push(tokio::spawn(async move {
            store
                .acquire_lease(&t, &format!("node-{i}"), TTL)
                .await
                .unwrap()
        }));
    }
    let mut won = Vec::new();
    for task in tasks {
        if let Some(lease) = task.await.unwrap() {
            won.push(lease);
        }
    }
    assert_eq!(won.len(), 1, "{won:?}");
    assert_eq!(won[0].token, 1);
    other.close().await;
}

async fn a_journal_write_is_fenced_by_the_lease_it_was_made_under() {
    let db = TestDb::new().await;
    let node_b = db.second_process().await;
    let (a, b) = (Book::new("node-a"), Book::new("node-b"));
    db.store.fence_with(a.clone()).unwrap();
    node_b.fence_with(b.clone()).unwrap();
    assert!(
        db.store.fence_with(Book::new("node-c")).is_err(),
        "set once"
    );
    let acme_scope = scope("us-acme");
    let run = db.intake("us-acme").await;

    // No lease here yet: the write is refused and nothing is written.
    let err = db
        .store
        .append_owned_step(&acme_scope, step(run, 1, "fetched"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Fenced(m) if m.contains("no lease")),
        "{err}"
    );

    let t = acme();
    let lease = db
        .store
        .acquire_lease(&t, "node-a", TTL)
        .await
        .unwrap()
        .unwrap();
    a.hold(&t, lease.token);
    db.store
        .append_owned_step(&acme_scope, step(run, 1, "fetched"))
        .await
        .unwrap();

    // node-a stalls past its lease; node-b takes the tenant over and writes.
    db.clock.advance_millis(TTL + 1);
    let taken = node_b
        .acquire_lease(&t, "node-b", TTL)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(taken.token, 2);
    b.hold(&t, taken.token);
    node_b
        .append_owned_step(&acme_scope, step(run, 2, "triaged"))
        .await
        .unwrap();
    // node-a wakes up still believing it holds token 1: its write is refused, even one that
    // would fit the journal, and the journal stays as node-b left it.
    let err = db
        .store
        .append_owned_step(&acme_scope, step(run, 3, "stale"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Fenced(m) if m.contains("token 2") && m.contains("node-b")),
        "{err}"
    );
    let steps = db.store.steps(&acme_scope, run).await.unwrap();
    assert_eq!(steps.len(), 3, "{steps:?}");
    let record = db.store.run(&acme_scope, run).await.unwrap().unwrap();
    assert_eq!(record.state, "triaged");

    // A write any node may make for a run (a click, an operator's decision) is not fenced.
    db.store
        .append_step(&acme_scope, step(run, 3, "awaiting_approval"))
        .await
        .unwrap();

    // A lapsed lease nobody took still fences nothing: its holder's token is the newest.
    db.clock.advance_millis(TTL + 1);
    node_b
        .append_owned_step(&acme_scope, step(run, 4, "approved"))
        .await
        .unwrap();
    node_b.close().await;
}

async fn bad_lease_requests_are_refused_and_write_nothing() {
    let db = TestDb::new().await;
    let t = acme();
    let long = "n".repeat(129);
    for node in [
        "",
        "node a",
        "node'; DROP TABLE tenant_leases; --",
        "nöde",
        "a\0b",
        &long,
    ] {
        let err = db.store.acquire_lease(&t, node, TTL).await.unwrap_err();
        assert!(matches!(err, StoreError::Invalid(_)), "{node:?}: {err}");
        let err = db.store.renew_lease(&t, node, 1, TTL).await.unwrap_err();
        assert!(matches!(err, StoreError::Invalid(_)), "{node:?}: {err}");
        let err = db.store.release_lease(&t, node, 1).await.unwrap_err();
        assert!(matches!(err, StoreError::Invalid(_)), "{node:?}: {err}");
    }
    for ttl in [i64::MIN, -1, 0, 999, 600_001, i64::MAX] {
        let err = db.store.acquire_lease(&t, "node-a", ttl).await.unwrap_err();
        assert!(matches!(err, StoreError::Invalid(_)), "{ttl}: {err}");
    }
    let nobody = TenantId::parse("us-nobody").unwrap();
    let err = db
        .store
        .acquire_lease(&nobody, "node-a", TTL)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
    assert!(db.store.leases().await.unwrap().is_empty());
    // A renewal or release of a lease that was never taken changes nothing.
    assert!(
        db.store
            .renew_lease(&t, "node-a", 1, TTL)
            .await
            .unwrap()
            .is_none()
    );
    assert!(!db.store.release_lease(&t, "node-a", 1).await.unwrap());
    assert!(db.store.leases().await.unwrap().is_empty());
}

async fn the_service_role_reads_only_its_tenants_lease_and_writes_none() {
    let db = TestDb::new().await;
    if db.backend() != Backend::Postgres {
        return;
    }
    for tenant in ["us-acme", "eu-beta"] {
        let t = TenantId::parse(tenant).unwrap();
        db.store
            .acquire_lease(&t, "node-a", TTL)
            .await
            .unwrap()
            .unwrap();
    }
    let mut conn = service_connection(&db).await;
    let none: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tenant_leases")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(none, 0, "no tenant named, no rows");
    let mut tx = sqlx::Connection::begin(&mut conn).await.unwrap();
    sqlx::query("SELECT set_config('steward.tenant', 'eu-beta', true)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let seen: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tenant_leases")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(seen, 1, "only beta's row");
    let refused = sqlx::query("UPDATE tenant_leases SET token = 99")
        .execute(&mut *tx)
        .await;
    assert!(
        refused.is_err(),
        "the service role cannot move a fencing token"
    );
    tx.rollback().await.unwrap();
}

/// The next wake-up the listener decodes, failing the test when none arrives in [`WAKE_WAIT`].
async fn next_wake(listener: &mut WakeListener) -> WakeCall {
    tokio::time::timeout(WAKE_WAIT, listener.recv())
        .await
        .expect("a wake-up arrives within the wait")
        .expect("the listener keeps its connection")
}

async fn a_wake_call_rung_through_one_store_reaches_a_listener_on_another() {
    let db = TestDb::new().await;
    let call = WakeCall::Reload { tenant: acme() };
    if db.backend() != Backend::Postgres {
        // One node serves SQLite: a ring goes nowhere and there is nothing to listen on.
        db.store.ring(&call).await.unwrap();
        let err = db.store.listen_for_wakes().await.unwrap_err();
        assert!(matches!(err, StoreError::Invalid(_)), "{err}");
        return;
    }
    // The owner listens through its own store; the node that took the intake rings through
    // another, with no keeper or sweep anywhere to find the run instead.
    let mut owner = db.store.listen_for_wakes().await.unwrap();
    let intake_node = db.second_process().await;
    let run = db.intake("us-acme").await;
    let beta = TenantId::parse("eu-beta").unwrap();
    for call in [
        WakeCall::Run {
            tenant: acme(),
            run,
        },
        call,
        WakeCall::Run {
            tenant: beta.clone(),
            run,
        },
        WakeCall::Reload { tenant: beta },
    ] {
        intake_node.ring(&call).await.unwrap();
        assert_eq!(next_wake(&mut owner).await, call);
    }
    intake_node.close().await;
}

async fn hostile_payloads_on_the_wake_channel_are_skipped_and_the_listener_keeps_going() {
    let db = TestDb::new().await;
    if db.backend() != Backend::Postgres {
        return;
    }
    let mut owner = db.store.listen_for_wakes().await.unwrap();
    let run = db.intake("us-acme").await;
    // Any role that may connect may notify on any channel: the service role's own connection
    // sends what a compromised or confused peer might.
    let mut conn = service_connection(&db).await;
    let huge_run = format!("us-acme {}", "9".repeat(7_900));
    let long_tenant = format!("us-{} reload", "a".repeat(7_900));
    let trailing = format!("us-acme {run} trailing");
    let hostile = [
        "",
        " ",
        "us-acme",
        "us-acme ",
        "us-acme  reload",
        "us-acme\treload",
        "us-acme not-a-run",
        "us-acme reload extra",
        "US-ACME reload",
        "../etc reload",
        "xx-acme reload",
        "'; DROP TABLE runs; --",
        "{\"tenant\":\"us-acme\",\"run\":\"x\"}",
        "us-acme\u{202e} reload",
        &trailing,
        &huge_run,
        &long_tenant,
        &"x".repeat(7_999),
        &"ü".repeat(3_999),
    ];
    for payload in hostile {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(WAKE_CHANNEL)
            .bind(payload)
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("notifying {} bytes: {e}", payload.len()));
    }
    // The server refuses a payload of 8000 bytes or more, so no listener ever reads one.
    let oversized = sqlx::query("SELECT pg_notify($1, $2)")
        .bind(WAKE_CHANNEL)
        .bind("x".repeat(8_000))
        .execute(&mut conn)
        .await;
    assert!(oversized.is_err(), "an oversized payload was sent");

    // Every one of them was skipped: the first call the listener hands over is the real ring
    // sent after them, and it still hears the next.
    for call in [
        WakeCall::Run {
            tenant: acme(),
            run,
        },
        WakeCall::Reload { tenant: acme() },
    ] {
        db.store.ring(&call).await.unwrap();
        assert_eq!(next_wake(&mut owner).await, call);
    }
}

crate::support::conformance!(
    one_node_holds_a_lease_and_each_new_holding_raises_the_token,
    nodes_racing_for_a_lease_get_one_holder,
    a_journal_write_is_fenced_by_the_lease_it_was_made_under,
    bad_lease_requests_are_refused_and_write_nothing,
    the_service_role_reads_only_its_tenants_lease_and_writes_none,
    a_wake_call_rung_through_one_store_reaches_a_listener_on_another,
    hostile_payloads_on_the_wake_channel_are_skipped_and_the_listener_keeps_going,
);
