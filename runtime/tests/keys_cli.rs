//! `steward keys rotate-master`: re-wraps every tenant's data key with the new master key and
//! prints its progress; afterwards the old key is refused and the secrets open with the new one.

use std::path::Path;
use std::process::Command;

use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use steward_core::TenantId;
use steward_persistence::{
    Authenticator, MasterKey, Store, StoreOptions, TenantRecord, TenantScope,
};

const STEWARD: &str = env!("CARGO_BIN_EXE_steward");
const OLD_KEY: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const NEW_KEY: &str = "2222222222222222222222222222222222222222222222222222222222222222";

fn scope(n: usize) -> TenantScope {
    TenantScope::assume(
        TenantId::parse(&format!("us-k{n}")).unwrap(),
        Authenticator::Operator,
    )
}

async fn seed(db: &Path, key: &MasterKey) {
    let store = Store::open(StoreOptions::new(db)).await.unwrap();
    store.check_master_key(key).await.unwrap();
    for n in 0..3 {
        let record = TenantRecord {
            id: scope(n).tenant().clone(),
            name: format!("Tenant {n}"),
            settings: json!({}),
            created_at: 0,
        };
        store.upsert_tenant(&record).await.unwrap();
        let value = SecretString::from(format!("bot-token-{n}"));
        store
            .put_secret(&scope(n), key, "slack.bot_token", &value)
            .await
            .unwrap();
    }
    store.close().await;
}

fn rotate(dir: &Path) -> (bool, String) {
    let out = Command::new(STEWARD)
        .args(["keys", "rotate-master", "--config"])
        .arg(dir.join("steward.toml"))
        .arg("--new-key-file")
        .arg(dir.join("new.key"))
        .env_remove("STEWARD_MASTER_KEY")
        .env_remove("STEWARD_DATABASE")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn rotate_master_rewraps_every_tenant_and_the_old_key_is_refused_after() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("steward.db");
    let (old, new) = (
        MasterKey::parse(OLD_KEY).unwrap(),
        MasterKey::parse(NEW_KEY).unwrap(),
    );
    seed(&db, &old).await;
    std::fs::write(dir.path().join("master.key"), OLD_KEY).unwrap();
    std::fs::write(dir.path().join("new.key"), NEW_KEY).unwrap();
    let config = format!(
        "profile = \"staging\"\ndatabase = {:?}\nmaster_key = {{ file = \"master.key\" }}\n",
        db.display().to_string()
    );
    std::fs::write(dir.path().join("steward.toml"), config).unwrap();

    let (ok, out) = rotate(dir.path());
    assert!(ok, "{out}");
    for line in ["1/3 tenants", "2/3 tenants", "3/3 tenants", &new.key_id()] {
        assert!(out.contains(line), "missing `{line}`: {out}");
    }
    assert!(!out.contains(OLD_KEY) && !out.contains(NEW_KEY), "{out}");

    let (again, out) = rotate(dir.path());
    assert!(again, "a second run resumes and finds nothing left: {out}");
    assert!(out.contains("re-wrapped 0 data keys"), "{out}");

    let store = Store::open(StoreOptions::new(&db)).await.unwrap();
    let err = store.check_master_key(&old).await.unwrap_err();
    assert!(err.to_string().contains(&new.key_id()), "{err}");
    store.check_master_key(&new).await.unwrap();
    for n in 0..3 {
        let value = store
            .secret(&scope(n), &new, "slack.bot_token")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(value.expose_secret(), format!("bot-token-{n}"));
    }
}

#[test]
fn rotate_master_refuses_an_unreadable_new_key_without_quoting_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("master.key"), OLD_KEY).unwrap();
    std::fs::write(dir.path().join("new.key"), "not-a-key-secret-value").unwrap();
    let config = format!(
        "profile = \"staging\"\ndatabase = {:?}\nmaster_key = {{ file = \"master.key\" }}\n",
        dir.path().join("steward.db").display().to_string()
    );
    std::fs::write(dir.path().join("steward.toml"), config).unwrap();
    let (ok, out) = rotate(dir.path());
    assert!(!ok, "{out}");
    assert!(out.contains("master key must be"), "{out}");
    assert!(!out.contains("not-a-key-secret-value"), "{out}");
}

#[tokio::test]
async fn a_live_rotation_rewraps_the_previous_key_to_the_configured_one() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("steward.db");
    let (old, new) = (
        MasterKey::parse(OLD_KEY).unwrap(),
        MasterKey::parse(NEW_KEY).unwrap(),
    );
    seed(&db, &old).await;
    std::fs::write(dir.path().join("master.key"), NEW_KEY).unwrap();
    std::fs::write(dir.path().join("previous.key"), OLD_KEY).unwrap();
    let config = format!(
        "profile = \"staging\"\ndatabase = {:?}\nmaster_key = {{ file = \"master.key\" }}\n\
         previous_master_key = {{ file = \"previous.key\" }}\n",
        db.display().to_string()
    );
    std::fs::write(dir.path().join("steward.toml"), config).unwrap();
    // A server would start with both keys, before the rotation has run.
    let both = new.clone().with_previous(old.clone());
    let store = Store::open(StoreOptions::new(&db)).await.unwrap();
    store.check_master_key(&both).await.unwrap();
    store.close().await;

    let out = Command::new(STEWARD)
        .args(["keys", "rotate-master", "--config"])
        .arg(dir.path().join("steward.toml"))
        .env_remove("STEWARD_MASTER_KEY")
        .env_remove("STEWARD_DATABASE")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("3/3 tenants") && text.contains("Remove previous_master_key"),
        "{text}"
    );

    let store = Store::open(StoreOptions::new(&db)).await.unwrap();
    store.check_master_key(&new).await.unwrap();
    assert!(store.check_master_key(&old).await.is_err());

    // Giving a new key while a rotation is configured is refused: finish that one first.
    std::fs::write(dir.path().join("new.key"), OLD_KEY).unwrap();
    let (ok, out) = rotate(dir.path());
    assert!(!ok && out.contains("rotation is under way"), "{out}");
}
