//! Tenants and webhook sources.

use serde_json::json;
use steward_core::{SourceName, TenantId};
use steward_persistence::{StoreError, TenantRecord, WebhookSource};

use crate::support::{T0_SECS, TestDb, scope};

async fn upserting_a_tenant_updates_it_but_keeps_its_creation_time() {
    let db = TestDb::new().await;
    let mut record = db.store.tenant(&scope("eu-beta")).await.unwrap().unwrap();
    assert_eq!(record.created_at, T0_SECS * 1000);
    record.name = "Beta GmbH".into();
    record.settings = json!({"approvers": ["U1"]});
    record.created_at = 0;
    db.store.upsert_tenant(&record).await.unwrap();

    let stored = db.store.tenant(&scope("eu-beta")).await.unwrap().unwrap();
    assert_eq!(
        (stored.name.as_str(), stored.created_at),
        ("Beta GmbH", T0_SECS * 1000)
    );
    assert_eq!(stored.settings, json!({"approvers": ["U1"]}));

    let mut raw = db.raw().await;
    let region: String = sqlx::query_scalar("SELECT region FROM tenants WHERE id = 'eu-beta'")
        .fetch_one(&mut raw)
        .await
        .unwrap();
    assert_eq!(region, "eu");
}

async fn tenant_existence_is_known_per_id() {
    let db = TestDb::new().await;
    assert!(
        db.store
            .tenant_exists(&TenantId::parse("us-acme").unwrap())
            .await
            .unwrap()
    );
    assert!(
        !db.store
            .tenant_exists(&TenantId::parse("us-ghost").unwrap())
            .await
            .unwrap()
    );
    assert_eq!(db.store.tenant(&scope("us-ghost")).await.unwrap(), None);
}

async fn a_tenant_without_a_name_is_refused() {
    let db = TestDb::new().await;
    let record = TenantRecord {
        id: TenantId::parse("us-new").unwrap(),
        name: " \n".into(),
        settings: json!({}),
        created_at: 0,
    };
    assert!(matches!(
        db.store.upsert_tenant(&record).await,
        Err(StoreError::Invalid(_))
    ));
}

fn servicenow() -> WebhookSource {
    WebhookSource {
        name: SourceName::parse("servicenow").unwrap(),
        scheme: "standard-webhooks".into(),
        secret_name: "webhook/servicenow".into(),
        sys_id_pointers: vec!["/sys_id".into(), "/data/sys_id".into()],
        number_pointers: vec!["/number".into()],
    }
}

async fn sources_round_trip_and_are_replaced_by_name() {
    let db = TestDb::new().await;
    let acme = scope("us-acme");
    db.store.upsert_source(&acme, &servicenow()).await.unwrap();
    assert_eq!(
        db.store.source(&acme, &servicenow().name).await.unwrap(),
        Some(servicenow())
    );

    let mut changed = servicenow();
    changed.number_pointers.clear();
    changed.secret_name = "webhook/sn-2".into();
    db.store.upsert_source(&acme, &changed).await.unwrap();
    assert_eq!(
        db.store.source(&acme, &changed.name).await.unwrap(),
        Some(changed)
    );
    let other = SourceName::parse("pagerduty").unwrap();
    assert_eq!(db.store.source(&acme, &other).await.unwrap(), None);
}

async fn malformed_sources_are_refused() {
    let db = TestDb::new().await;
    let acme = scope("us-acme");
    let mut bad_pointer = servicenow();
    bad_pointer.sys_id_pointers = vec!["sys_id".into()];
    let mut no_pointer = servicenow();
    no_pointer.sys_id_pointers.clear();
    no_pointer.number_pointers.clear();
    let mut no_secret = servicenow();
    no_secret.secret_name.clear();
    for source in [bad_pointer, no_pointer, no_secret] {
        assert!(matches!(
            db.store.upsert_source(&acme, &source).await,
            Err(StoreError::Invalid(_))
        ));
    }
    let ghost = db
        .store
        .upsert_source(&scope("us-ghost"), &servicenow())
        .await;
    assert!(matches!(ghost, Err(StoreError::NotFound(_))));
}

crate::support::conformance!(
    upserting_a_tenant_updates_it_but_keeps_its_creation_time,
    tenant_existence_is_known_per_id,
    a_tenant_without_a_name_is_refused,
    sources_round_trip_and_are_replaced_by_name,
    malformed_sources_are_refused,
);
