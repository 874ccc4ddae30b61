//! The server's periodic audit verification counts each tenant whose chain has a bad entry in
//! `steward_audit_verification_failures_total`, and only those.

use serde_json::json;
use sqlx::Connection as _;
use steward_actors::Metrics;
use steward_core::TenantId;
use steward_persistence::{
    AuditDraft, Authenticator, Store, StoreOptions, TenantRecord, TenantScope,
};
use steward_runtime::boot::verify_audit_chains;

async fn tenant_with_entries(store: &Store, id: &str) -> TenantScope {
    let tenant = TenantId::parse(id).expect("a tenant id");
    let record = TenantRecord {
        id: tenant.clone(),
        name: id.to_owned(),
        settings: json!({}),
        created_at: 0,
    };
    store.upsert_tenant(&record).await.expect("the tenant");
    let scope = TenantScope::assume(tenant, Authenticator::Config);
    for n in 0..3 {
        let draft = AuditDraft {
            kind: "test.entry".into(),
            run_id: None,
            actor: "steward".into(),
            body: json!({ "n": n }),
        };
        store.append_audit(&scope, draft).await.expect("an entry");
    }
    scope
}

#[tokio::test]
async fn a_tampered_chain_is_counted_for_its_tenant_only() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let path = dir.path().join("steward.db");
    let store = Store::open(StoreOptions::new(&path))
        .await
        .expect("the store");
    tenant_with_entries(&store, "us-acme").await;
    tenant_with_entries(&store, "us-beta").await;
    let metrics = Metrics::new();
    assert_eq!(verify_audit_chains(&store, &metrics).await, 0);

    // Someone with the database file rewrites an entry behind the store's back.
    let url = format!("sqlite://{}", path.display());
    let mut raw = sqlx::SqliteConnection::connect(&url)
        .await
        .expect("the file");
    sqlx::query("DROP TRIGGER audit_log_no_update")
        .execute(&mut raw)
        .await
        .expect("the trigger goes");
    sqlx::query("UPDATE audit_log SET body = '{}' WHERE tenant_id = 'us-acme' AND seq = 2")
        .execute(&mut raw)
        .await
        .expect("the entry changes");
    raw.close().await.expect("closed");

    assert_eq!(verify_audit_chains(&store, &metrics).await, 1);
    let text = metrics.render();
    let failures = "steward_audit_verification_failures_total";
    assert!(
        text.contains(&format!("{failures}{{tenant=\"us-acme\"}} 1")),
        "{text}"
    );
    assert!(
        !text.contains(&format!("{failures}{{tenant=\"us-beta\"}} 1")),
        "{text}"
    );
    store.close().await;
}
