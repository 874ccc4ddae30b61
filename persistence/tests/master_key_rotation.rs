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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_while_servers_run_with_both_keys_never_fails_a_read() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let (old, new) = (MasterKey::generate(), MasterKey::generate());
    tenants_with_secrets(&store, &old, 40).await;

    // Every node restarts with the new key, carrying the old one as previous.
    let both = new.clone().with_previous(old.clone());
    assert_eq!(both.previous_key_id(), Some(old.key_id()));
    store.check_master_key(&both).await.unwrap();

    // A node keeps serving every tenant's secret while the rotation runs.
    let serving = {
        let (store, both) = (store.clone(), both.clone());
        tokio::spawn(async move {
            let mut reads = 0;
            for round in 0..20 {
                for n in 0..40 {
                    let value = opens_with(&store, &both, n).await.unwrap_or_else(|e| {
                        panic!("round {round}, tenant {n}: a read failed during rotation: {e}")
                    });
                    assert_eq!(value, format!("secret-of-tenant-{n}"));
                    reads += 1;
                }
                tokio::task::yield_now().await;
            }
            reads
        })
    };
    // A tenant onboarded during the rotation gets a data key wrapped by the new key.
    tenants_with_secrets_from(&store, &both, 40, 41).await;
    let rewrapped = store
        .rotate_master_key(&old, &new, |_, _| {})
        .await
        .unwrap();
    assert_eq!(rewrapped, 40, "the tenant onboarded meanwhile needed none");
    assert_eq!(serving.await.unwrap(), 800);

    // After the rotation the new key alone opens everything; the old one is refused.
    store.check_master_key(&new).await.unwrap();
    store.check_master_key(&both).await.unwrap();
    for n in 0..41 {
        assert_eq!(
            opens_with(&store, &new, n).await.unwrap(),
            format!("secret-of-tenant-{n}")
        );
    }
    assert!(matches!(
        store.check_master_key(&old).await,
        Err(StoreError::WrongMasterKey { .. })
    ));
    assert!(opens_with(&store, &old, 0).await.is_err());
}

/// Tenants `from..to`, each with a sealed secret, under `key` (which may carry a previous key).
async fn tenants_with_secrets_from(store: &Store, key: &MasterKey, from: usize, to: usize) {
    for n in from..to {
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

#[test]
fn a_key_never_carries_itself_or_a_chain_of_previous_keys() {
    let (a, b, c) = (
        MasterKey::generate(),
        MasterKey::generate(),
        MasterKey::generate(),
    );
    assert_eq!(a.clone().with_previous(a.clone()).previous_key_id(), None);
    let chained = c.with_previous(b.clone().with_previous(a));
    assert_eq!(chained.previous_key_id(), Some(b.key_id()));
    assert_eq!(
        chained.previous().and_then(MasterKey::previous_key_id),
        None
    );
    assert!(format!("{chained:?}").contains(&b.key_id()));
}
