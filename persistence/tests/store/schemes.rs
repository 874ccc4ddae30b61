//! A webhook source's signature scheme: stored with the source, only known names, and every
//! source stored before schemes could be chosen reads as Standard Webhooks.

use sqlx::{Connection, Executor};
use steward_core::{FixedClock, SignatureScheme, SourceName};
use steward_persistence::{Backend, StoreError, WebhookSource};

use crate::support::{T0_SECS, TestDb, migrated_through, open_at, scope};

/// The last migration before sources chose their scheme.
const BEFORE_SCHEMES: i64 = 5;

fn source(name: &str, scheme: &str) -> WebhookSource {
    WebhookSource {
        name: SourceName::parse(name).unwrap(),
        scheme: scheme.into(),
        secret_name: format!("webhook.{name}"),
        sys_id_pointers: vec!["/incident/sys_id".into()],
        number_pointers: vec![],
    }
}

async fn each_scheme_is_stored_with_its_source() {
    let db = TestDb::new().await;
    let acme = scope("us-acme");
    for name in SignatureScheme::NAMES {
        let s = source(name, name);
        db.store.upsert_source(&acme, &s).await.unwrap();
        assert_eq!(db.store.source(&acme, &s.name).await.unwrap(), Some(s));
    }
    // A source re-created with another scheme keeps the new one.
    let changed = source("slack", "stripe");
    db.store.upsert_source(&acme, &changed).await.unwrap();
    let stored = db.store.source(&acme, &changed.name).await.unwrap();
    assert_eq!(stored.unwrap().scheme, "stripe");
}

async fn unknown_schemes_are_refused_by_the_store_and_the_database() {
    let db = TestDb::new().await;
    let acme = scope("us-acme");
    for bad in ["hmac", "Slack", "", "standard_webhooks"] {
        let err = db
            .store
            .upsert_source(&acme, &source("sn", bad))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Invalid(_)), "{bad:?}: {err}");
    }
    assert_eq!(
        db.store
            .source(&acme, &source("sn", "x").name)
            .await
            .unwrap(),
        None
    );

    // Past the store, the database refuses too: a row written by other means, and a change.
    let mut raw = db.raw().await;
    let insert = "INSERT INTO webhook_sources (tenant_id, name, scheme, secret_name, \
                  sys_id_pointers, number_pointers, created_at, updated_at) \
                  VALUES ('us-acme', 'raw', 'hmac', 'webhook.raw', '[]', '[]', 0, 0)";
    let err = raw.execute(insert).await.unwrap_err();
    assert!(err.to_string().contains("scheme"), "{err}");
    db.store
        .upsert_source(&acme, &source("kept", "slack"))
        .await
        .unwrap();
    let update = "UPDATE webhook_sources SET scheme = 'hmac' WHERE name = 'kept'";
    let err = raw.execute(update).await.unwrap_err();
    assert!(err.to_string().contains("scheme"), "{err}");
    let kept = db.store.source(&acme, &source("kept", "x").name).await;
    assert_eq!(kept.unwrap().unwrap().scheme, "slack");
}

/// Sources stored under schema version 5, whatever their `scheme` column said, were verified as
/// Standard Webhooks; after the migration they say so. On PostgreSQL the migration runs as the
/// schema owner, to whom forced row-level security applies as well, and the force is back on.
async fn sources_stored_before_schemes_become_standard_webhooks() {
    let (place, mut owner) = migrated_through(BEFORE_SCHEMES).await;
    let mut tx = owner.begin().await.unwrap();
    if crate::support::backend() == Backend::Postgres {
        tx.execute("SELECT set_config('steward.tenant', 'us-acme', true)")
            .await
            .unwrap();
    }
    tx.execute(
        "INSERT INTO tenants (id, region, name, settings, created_at, updated_at) \
         VALUES ('us-acme', 'us', 'Acme', '{}', 0, 0)",
    )
    .await
    .unwrap();
    for (name, scheme) in [
        ("legacy", "whatever-it-said"),
        ("plain", "standard-webhooks"),
    ] {
        let sql = format!(
            "INSERT INTO webhook_sources (tenant_id, name, scheme, secret_name, \
             sys_id_pointers, number_pointers, created_at, updated_at) VALUES ('us-acme', \
             '{name}', '{scheme}', 'webhook.{name}', '[\"/incident/sys_id\"]', '[]', 0, 0)"
        );
        tx.execute(sql.as_str()).await.unwrap();
    }
    tx.commit().await.unwrap();
    owner.close().await.unwrap();

    let clock = FixedClock::at_secs(T0_SECS);
    let store = open_at(&place, &clock, true).await;
    let acme = scope("us-acme");
    for name in ["legacy", "plain"] {
        let stored = store.source(&acme, &SourceName::parse(name).unwrap()).await;
        assert_eq!(
            stored.unwrap().unwrap().scheme,
            "standard-webhooks",
            "{name}"
        );
    }
    let db = TestDb {
        store,
        clock,
        place,
    };
    if db.backend() == Backend::Postgres {
        let mut raw = db.raw().await;
        let forced: bool = sqlx::query_scalar(
            "SELECT relforcerowsecurity FROM pg_class WHERE relname = 'webhook_sources'",
        )
        .fetch_one(&mut raw)
        .await
        .unwrap();
        assert!(
            forced,
            "row-level security is forced again after the migration"
        );
    }
}

/// A delivery reads its source and the secret versions that verify it together: none for an
/// unknown source, an empty list for a secret never stored, the newest version first and the
/// superseded one during a rotation's overlap.
async fn a_source_is_read_with_the_secrets_that_verify_it() {
    use secrecy::{ExposeSecret, SecretString};
    let db = TestDb::new().await;
    let acme = scope("us-acme");
    let master = steward_persistence::MasterKey::generate();
    let default = |s: &WebhookSource| format!("default.{}", s.name);
    let read = |name: &str| {
        let (store, acme, master) = (db.store.clone(), acme.clone(), master.clone());
        let name = SourceName::parse(name).unwrap();
        async move {
            store
                .source_with_secrets(&acme, &master, &name, default)
                .await
                .unwrap()
                .map(|(r, _)| {
                    let values: Vec<String> = r
                        .secrets
                        .iter()
                        .map(|s| s.expose_secret().to_owned())
                        .collect();
                    (r.source.clone(), r.secret_name.clone(), values)
                })
        }
    };
    assert!(read("servicenow").await.is_none(), "an unknown source");
    let named = source("servicenow", "standard-webhooks");
    db.store.upsert_source(&acme, &named).await.unwrap();
    let (found, name, values) = read("servicenow").await.unwrap();
    assert_eq!(
        (found, name.as_str()),
        (named.clone(), "webhook.servicenow")
    );
    assert!(values.is_empty(), "a secret never stored");

    let secret = |v: &str| SecretString::from(v.to_owned());
    db.store
        .put_secret(&acme, &master, "webhook.servicenow", &secret("first"))
        .await
        .unwrap();
    let later = db.clock_ms() + 60_000;
    db.store
        .rotate_secret(
            &acme,
            &master,
            "webhook.servicenow",
            &secret("second"),
            later,
            "ops",
        )
        .await
        .unwrap();
    assert_eq!(read("servicenow").await.unwrap().2, ["second", "first"]);
    db.clock.advance_millis(60_001);
    assert_eq!(read("servicenow").await.unwrap().2, ["second"]);
}

/// Intake keeps what it read of a source: a change made through the same store is seen by the
/// next delivery, one made through another process on the database within a second (by the
/// store clock here; the process's monotonic clock bounds it too).
async fn a_cached_source_sees_its_own_changes_at_once_and_another_nodes_within_a_second() {
    use secrecy::{ExposeSecret, SecretString};
    let db = TestDb::new().await;
    let other = db.second_process().await;
    let acme = scope("us-acme");
    let master = steward_persistence::MasterKey::generate();
    let default = |s: &WebhookSource| format!("default.{}", s.name);
    let name = SourceName::parse("servicenow").unwrap();
    let secrets = || {
        let (store, acme, master, name) =
            (db.store.clone(), acme.clone(), master.clone(), name.clone());
        async move {
            let (read, _) = store
                .source_with_secrets(&acme, &master, &name, default)
                .await
                .unwrap()
                .unwrap();
            let values: Vec<String> = read
                .secrets
                .iter()
                .map(|s| s.expose_secret().to_owned())
                .collect();
            (read.source.number_pointers.clone(), values)
        }
    };
    let secret = |v: &str| SecretString::from(v.to_owned());
    let mut source = source("servicenow", "standard-webhooks");
    db.store.upsert_source(&acme, &source).await.unwrap();
    db.store
        .put_secret(&acme, &master, "webhook.servicenow", &secret("first"))
        .await
        .unwrap();
    assert_eq!(secrets().await.1, ["first"]);

    // Through this store: seen at once, the source and the secret alike.
    source.number_pointers = vec!["/record/number".into()];
    db.store.upsert_source(&acme, &source).await.unwrap();
    assert_eq!(secrets().await.0, ["/record/number"]);
    let now = db.clock_ms();
    db.store
        .rotate_secret(
            &acme,
            &master,
            "webhook.servicenow",
            &secret("second"),
            now,
            "ops",
        )
        .await
        .unwrap();
    assert_eq!(secrets().await.1, ["second"], "the first cut off at once");

    // Through another process: the cached read stands for at most a second.
    other
        .rotate_secret(
            &acme,
            &master,
            "webhook.servicenow",
            &secret("third"),
            now,
            "ops",
        )
        .await
        .unwrap();
    db.clock.advance_millis(1_000);
    assert_eq!(secrets().await.1, ["third"], "a second later");
    other.close().await;
}

crate::support::conformance!(
    a_cached_source_sees_its_own_changes_at_once_and_another_nodes_within_a_second,
    a_source_is_read_with_the_secrets_that_verify_it,
    each_scheme_is_stored_with_its_source,
    unknown_schemes_are_refused_by_the_store_and_the_database,
    sources_stored_before_schemes_become_standard_webhooks,
);
