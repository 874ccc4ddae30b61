//! Master key rotation: every tenant's data key is re-wrapped with the new key, the old key is
//! refused afterwards, secrets still open, and an interrupted rotation resumes.

use std::time::Instant;

use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use steward_core::TenantId;
use steward_persistence::{
    Authenticator, MasterKey, Store, StoreError, StoreOptions, TenantRecord, TenantScope,
};

const SECRET: &str = "llm.api_key";

async fn open(dir: &tempfile::TempDir) -> Store {
    let mut opts = StoreOptions::new(dir.path().join("steward.db"));
    opts.synchronous_full = false;
    Store::open(opts).await.unwrap()
}

fn scope(n: usize) -> TenantScope {
    let id = TenantId::parse(&format!("us-t{n:04}")).unwrap();
    TenantScope::assume(id, Authenticator::Operator)
}

/// `count` tenants, each with one sealed secret (and so one data key) under `key`.
async fn tenants_with_secrets(store: &Store, key: &MasterKey, count: usize) {
    store.check_master_key(key).await.unwrap();
    for n in 0..count {
        let scope = scope(n);
        let record = TenantRecord {
            id: scope.tenant().clone(),
            name: format!("Tenant {n}"),
            settings: json!({}),
            created_at: 0,
        };
        store.upsert_tenant(&record).await.unwrap();
        let value = SecretString::from(format!("secret-of-tenant-{n}"));
        store.put_secret(&scope, key, SECRET, &value).await.unwrap();
    }
}

async fn opens_with(store: &Store, key: &MasterKey, n: usize) -> Result<String, StoreError> {
    let value = store.secret(&scope(n), key, SECRET).await?.unwrap();
    Ok(value.expose_secret().to_owned())
}

#[tokio::test]
async fn rotation_rewraps_every_tenant_and_refuses_the_old_key_afterwards() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let (old, new) = (MasterKey::generate(), MasterKey::generate());
    tenants_with_secrets(&store, &old, 5).await;

    let mut seen = Vec::new();
    let rewrapped = store
        .rotate_master_key(&old, &new, |done, total| seen.push((done, total)))
        .await
        .unwrap();
    assert_eq!(rewrapped, 5);
    assert_eq!(seen, (1..=5).map(|d| (d, 5)).collect::<Vec<_>>());

    let err = store.check_master_key(&old).await.unwrap_err();
    assert!(err.to_string().contains(&new.key_id()), "{err}");
    store.check_master_key(&new).await.unwrap();
    for n in 0..5 {
        assert_eq!(
            opens_with(&store, &new, n).await.unwrap(),
            format!("secret-of-tenant-{n}")
        );
        assert!(opens_with(&store, &old, n).await.is_err());
    }
    let audit = store.audit_entries(&scope(0), 0, 100).await.unwrap();
    let entry = audit
        .iter()
        .find(|e| e.kind == "vault.master_key_rotated")
        .unwrap();
    assert!(entry.body.contains(&new.key_id()), "{}", entry.body);
}

#[tokio::test]
async fn an_interrupted_rotation_resumes_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let (old, new) = (MasterKey::generate(), MasterKey::generate());
    tenants_with_secrets(&store, &old, 6).await;

    // The process dies after the third tenant's transaction committed.
    let (s, o, n) = (store.clone(), old.clone(), new.clone());
    let crashed = tokio::spawn(async move {
        s.rotate_master_key(&o, &n, |done, _| assert!(done < 3, "killed"))
            .await
    })
    .await;
    assert!(crashed.is_err(), "the rotation was interrupted");
    assert!(opens_with(&store, &new, 0).await.is_ok());
    assert!(opens_with(&store, &old, 5).await.is_ok());

    let rewrapped = store
        .rotate_master_key(&old, &new, |_, _| {})
        .await
        .unwrap();
    assert_eq!(rewrapped, 3, "only the tenants left over are re-wrapped");
    for n in 0..6 {
        assert!(opens_with(&store, &new, n).await.is_ok());
    }
    let again = store
        .rotate_master_key(&old, &new, |_, _| {})
        .await
        .unwrap();
    assert_eq!(again, 0, "a finished rotation has nothing left to do");
}

#[tokio::test]
async fn a_rotation_refuses_a_key_that_is_not_the_vaults() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let (old, new, stranger) = (
        MasterKey::generate(),
        MasterKey::generate(),
        MasterKey::generate(),
    );
    tenants_with_secrets(&store, &old, 1).await;
    let err = store
        .rotate_master_key(&stranger, &new, |_, _| {})
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::WrongMasterKey { .. }), "{err}");
    assert!(err.to_string().contains(&old.key_id()), "{err}");
    let same = store.rotate_master_key(&old, &old, |_, _| {}).await;
    assert!(matches!(same, Err(StoreError::Invalid(_))));
    assert!(opens_with(&store, &old, 0).await.is_ok());
}

#[tokio::test]
async fn rotating_a_thousand_tenants_is_timed() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let (old, new) = (MasterKey::generate(), MasterKey::generate());
    tenants_with_secrets(&store, &old, 1000).await;
    let started = Instant::now();
    let rewrapped = store
        .rotate_master_key(&old, &new, |_, _| {})
        .await
        .unwrap();
    let took = started.elapsed();
    println!("re-wrapped {rewrapped} data keys of 1000 tenants in {took:?}");
    assert_eq!(rewrapped, 1000);
    assert!(opens_with(&store, &new, 999).await.is_ok());
}
