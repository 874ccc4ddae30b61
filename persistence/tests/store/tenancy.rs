//! Tenant onboarding and offboarding on each backend: a new tenant with its first token, token
//! revocation by public id, and an offboarding that leaves only the closed audit chain.

use secrecy::ExposeSecret;
use steward_core::TenantId;
use steward_persistence::{MasterKey, NewToken, generate_api_token};

use crate::support::{TestDb, scope};

async fn an_onboarded_tenant_can_be_offboarded_leaving_a_signed_chain() {
    let db = TestDb::new().await;
    let key = MasterKey::generate();
    db.store.check_master_key(&key).await.unwrap();
    let id = TenantId::parse("us-delta").unwrap();
    let token = generate_api_token();
    let scopes = vec!["admin".to_owned()];
    let first = NewToken {
        value: &token,
        label: "first",
        scopes: &scopes,
        expires_at: None,
    };
    let info = db
        .store
        .create_tenant(&id, "Delta", first, "operator")
        .await
        .unwrap();
    let (delta, granted) = db
        .store
        .authenticate_token(token.expose_secret())
        .await
        .unwrap()
        .expect("the first token authenticates");
    assert_eq!((delta.tenant(), granted), (&id, scopes.clone()));
    let listed = db.store.list_tokens(&delta).await.unwrap();
    assert_eq!(listed.iter().map(|t| &t.id).collect::<Vec<_>>(), [&info.id]);
    assert!(
        db.store
            .list_tokens(&scope("us-acme"))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        !db.store
            .revoke_token(&scope("us-acme"), &info.id, "intruder")
            .await
            .unwrap(),
        "another tenant cannot revoke the token"
    );
    db.store
        .put_secret(
            &delta,
            &key,
            "llm",
            &secrecy::SecretString::from("sk-delta"),
        )
        .await
        .unwrap();
    db.intake("us-delta").await;

    let checkpoint = db
        .store
        .offboard_tenant(&delta, &key, "operator")
        .await
        .unwrap();
    assert!(db.store.checkpoint_verifies(&checkpoint, &key));
    assert_eq!(
        db.store.audit_checkpoint(&delta).await.unwrap(),
        Some(checkpoint)
    );
    assert!(db.store.tenant_offboarded(&id).await.unwrap());
    assert!(
        db.store
            .list_runs(&delta, 200, None)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        db.store
            .secret(&delta, &key, "llm")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        db.store
            .authenticate_token(token.expose_secret())
            .await
            .unwrap()
            .is_none()
    );
    let report = db.store.verify_audit(&delta).await.unwrap();
    assert!(report.entries > 0 && report.first_bad.is_none());
    let tenants = db.store.list_tenants().await.unwrap();
    assert!(
        tenants
            .iter()
            .any(|t| t.id == id && t.offboarded_at.is_some())
    );
    assert!(
        tenants
            .iter()
            .any(|t| t.id.as_str() == "us-acme" && t.offboarded_at.is_none())
    );
}

crate::support::conformance!(an_onboarded_tenant_can_be_offboarded_leaving_a_signed_chain);
