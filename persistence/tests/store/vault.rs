//! The vault: envelope encryption, tamper evidence, master-key checks (field case X2) and
//! plaintext never reaching the disk.

use secrecy::{ExposeSecret, SecretString};
use steward_persistence::{MasterKey, StoreError};

use crate::support::{TestDb, scope};
use steward_persistence::Backend;

const PLAINTEXT: &str = "xoxb-plaintext-canary-7d1f0c";

fn secret(text: &str) -> SecretString {
    SecretString::from(text)
}

async fn opened(db: &TestDb, key: &MasterKey, tenant: &str, name: &str) -> Option<String> {
    let value = db.store.secret(&scope(tenant), key, name).await.unwrap();
    value.map(|s| s.expose_secret().to_owned())
}

async fn secrets_round_trip_with_a_new_version_each_time() {
    let db = TestDb::new().await;
    let key = MasterKey::generate();
    let acme = scope("us-acme");
    db.store.check_master_key(&key).await.unwrap();
    assert_eq!(
        db.store
            .put_secret(&acme, &key, "slack/bot", &secret("one"))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        db.store
            .put_secret(&acme, &key, "slack/bot", &secret("two"))
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        db.store
            .put_secret(&acme, &key, "llm/key", &secret("k"))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        opened(&db, &key, "us-acme", "slack/bot").await.as_deref(),
        Some("two")
    );
    assert_eq!(
        opened(&db, &key, "us-acme", "llm/key").await.as_deref(),
        Some("k")
    );
    assert_eq!(opened(&db, &key, "us-acme", "missing").await, None);
}

async fn each_tenant_gets_its_own_data_key() {
    let db = TestDb::new().await;
    let key = MasterKey::generate();
    db.store
        .put_secret(&scope("us-acme"), &key, "s", &secret("a"))
        .await
        .unwrap();
    db.store
        .put_secret(&scope("eu-beta"), &key, "s", &secret("b"))
        .await
        .unwrap();
    let mut raw = db.raw().await;
    let wrapped: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT wrapped FROM data_keys ORDER BY tenant_id")
            .fetch_all(&mut raw)
            .await
            .unwrap();
    assert_eq!(wrapped.len(), 2);
    assert_ne!(wrapped[0], wrapped[1]);
    assert!(
        wrapped
            .iter()
            .all(|w| w[0] == 0x01 && w.len() == 1 + 24 + 32 + 16)
    );
}

/// Copies the `sealed` bytes of (tenant, name) over those of (to_tenant, to_name).
async fn copy_sealed(db: &TestDb, from: (&str, &str), to: (&str, &str)) {
    let mut raw = db.raw().await;
    let sealed: Vec<u8> = sqlx::query_scalar(
        "SELECT sealed FROM sealed_secrets WHERE tenant_id = $1 AND name = $2 \
         ORDER BY version DESC",
    )
    .bind(from.0)
    .bind(from.1)
    .fetch_one(&mut raw)
    .await
    .unwrap();
    sqlx::query("UPDATE sealed_secrets SET sealed = $1 WHERE tenant_id = $2 AND name = $3")
        .bind(sealed)
        .bind(to.0)
        .bind(to.1)
        .execute(&mut raw)
        .await
        .unwrap();
}

fn assert_unopenable(result: Result<Option<SecretString>, StoreError>, names: &[&str]) {
    let err = result.expect_err("a moved ciphertext must not open");
    let text = err.to_string();
    assert!(matches!(err, StoreError::Crypto(_)), "{text}");
    for name in names {
        assert!(text.contains(name), "{text} should name {name}");
    }
    assert!(!text.contains(PLAINTEXT));
}

async fn a_ciphertext_moved_to_another_tenant_does_not_open() {
    let db = TestDb::new().await;
    let key = MasterKey::generate();
    db.store
        .put_secret(&scope("us-acme"), &key, "slack", &secret(PLAINTEXT))
        .await
        .unwrap();
    db.store
        .put_secret(&scope("eu-beta"), &key, "slack", &secret("beta"))
        .await
        .unwrap();
    copy_sealed(&db, ("us-acme", "slack"), ("eu-beta", "slack")).await;
    let result = db.store.secret(&scope("eu-beta"), &key, "slack").await;
    assert_unopenable(result, &["`slack`", "v1", "eu-beta"]);
    assert_eq!(
        opened(&db, &key, "us-acme", "slack").await.as_deref(),
        Some(PLAINTEXT)
    );
}

async fn a_ciphertext_moved_to_another_name_or_version_does_not_open() {
    let db = TestDb::new().await;
    let key = MasterKey::generate();
    let acme = scope("us-acme");
    db.store
        .put_secret(&acme, &key, "slack", &secret(PLAINTEXT))
        .await
        .unwrap();
    db.store
        .put_secret(&acme, &key, "servicenow", &secret("sn"))
        .await
        .unwrap();
    copy_sealed(&db, ("us-acme", "slack"), ("us-acme", "servicenow")).await;
    assert_unopenable(
        db.store.secret(&acme, &key, "servicenow").await,
        &["`servicenow`"],
    );

    db.store
        .put_secret(&acme, &key, "slack", &secret("v2"))
        .await
        .unwrap();
    let mut raw = db.raw().await;
    sqlx::query(
        "UPDATE sealed_secrets SET sealed = (SELECT sealed FROM sealed_secrets \
         WHERE name = 'slack' AND version = 1) WHERE name = 'slack' AND version = 2",
    )
    .execute(&mut raw)
    .await
    .unwrap();
    assert_unopenable(
        db.store.secret(&acme, &key, "slack").await,
        &["`slack`", "v2"],
    );
}

async fn flipped_or_truncated_ciphertexts_do_not_open() {
    let db = TestDb::new().await;
    let key = MasterKey::generate();
    let acme = scope("us-acme");
    db.store
        .put_secret(&acme, &key, "s", &secret(PLAINTEXT))
        .await
        .unwrap();
    let mut raw = db.raw().await;
    for sql in [
        "UPDATE sealed_secrets SET sealed = substr(sealed, 1, 20)",
        "UPDATE sealed_secrets SET sealed = X'02'",
        "UPDATE sealed_secrets SET sealed = zeroblob(100000)",
    ] {
        sqlx::query(sql).execute(&mut raw).await.unwrap();
        assert_unopenable(db.store.secret(&acme, &key, "s").await, &["`s`"]);
    }
}

async fn a_data_key_moved_to_another_tenant_does_not_unwrap() {
    let db = TestDb::new().await;
    let key = MasterKey::generate();
    db.store
        .put_secret(&scope("us-acme"), &key, "s", &secret("a"))
        .await
        .unwrap();
    db.store
        .put_secret(&scope("eu-beta"), &key, "s", &secret("b"))
        .await
        .unwrap();
    let mut raw = db.raw().await;
    sqlx::query(
        "UPDATE data_keys \
         SET wrapped = (SELECT wrapped FROM data_keys WHERE tenant_id = 'us-acme') \
         WHERE tenant_id = 'eu-beta'",
    )
    .execute(&mut raw)
    .await
    .unwrap();
    let err = db
        .store
        .secret(&scope("eu-beta"), &key, "s")
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Crypto(ref m) if m.contains("data key v1 of tenant eu-beta"))
    );
}

async fn a_wrong_master_key_is_refused_at_startup_naming_both_key_ids() {
    let mut db = TestDb::new().await;
    let right = MasterKey::generate();
    let wrong = MasterKey::generate();
    db.store.check_master_key(&right).await.unwrap();
    db.store
        .put_secret(&scope("us-acme"), &right, "s", &secret("a"))
        .await
        .unwrap();
    db.restart().await;

    db.store.check_master_key(&right).await.unwrap();
    let err = db.store.check_master_key(&wrong).await.unwrap_err();
    let StoreError::WrongMasterKey { expected, found } = &err else {
        panic!("{err}")
    };
    assert_eq!((expected, found), (&right.key_id(), &wrong.key_id()));
    let text = err.to_string();
    assert!(
        text.contains(&right.key_id()) && text.contains(&wrong.key_id()),
        "{text}"
    );

    let put = db
        .store
        .put_secret(&scope("us-acme"), &wrong, "t", &secret("b"))
        .await;
    assert!(matches!(put, Err(StoreError::WrongMasterKey { .. })));
    let get = db.store.secret(&scope("us-acme"), &wrong, "s").await;
    assert!(matches!(get, Err(StoreError::WrongMasterKey { .. })));
}

async fn the_key_check_unwraps_a_data_key_even_if_the_recorded_id_was_removed() {
    let db = TestDb::new().await;
    let right = MasterKey::generate();
    db.store
        .put_secret(&scope("us-acme"), &right, "s", &secret("a"))
        .await
        .unwrap();
    let mut raw = db.raw().await;
    sqlx::query("DELETE FROM vault_meta")
        .execute(&mut raw)
        .await
        .unwrap();

    let wrong = MasterKey::generate();
    let err = db.store.check_master_key(&wrong).await.unwrap_err();
    let StoreError::WrongMasterKey { expected, .. } = err else {
        panic!("{err}")
    };
    assert_eq!(expected, right.key_id());
    // The refused key was not recorded: the right one still passes.
    db.store.check_master_key(&right).await.unwrap();

    let truncate = match db.backend() {
        Backend::Sqlite => {
            "UPDATE data_keys SET wrapped = CAST(substr(wrapped, 1, 30) || X'00' AS BLOB)"
        }
        Backend::Postgres => {
            "UPDATE data_keys SET wrapped = substr(wrapped, 1, 30) || '\\x00'::bytea"
        }
    };
    sqlx::query(truncate).execute(&mut raw).await.unwrap();
    let err = db.store.check_master_key(&right).await.unwrap_err();
    assert!(matches!(err, StoreError::Crypto(_)), "{err}");
}

async fn plaintext_never_reaches_the_disk() {
    let db = TestDb::new().await;
    let key = MasterKey::generate();
    let acme = scope("us-acme");
    db.store
        .put_secret(&acme, &key, "slack", &secret(PLAINTEXT))
        .await
        .unwrap();
    let token = steward_persistence::generate_api_token();
    db.store
        .add_api_token(&acme, &token, "ci", &[], None)
        .await
        .unwrap();

    let needles = [PLAINTEXT.as_bytes(), token.expose_secret().as_bytes()];
    let haystack = db.disk_bytes();
    assert!(
        haystack.windows(7).any(|w| w == b"us-acme"),
        "the scan must see the database"
    );
    for needle in needles {
        assert!(
            !haystack.windows(needle.len()).any(|w| w == needle),
            "plaintext found on disk"
        );
    }
    db.store.close().await;
    let haystack = db.disk_bytes();
    for needle in needles {
        assert!(
            !haystack.windows(needle.len()).any(|w| w == needle),
            "plaintext after checkpoint"
        );
    }
}

async fn malformed_secret_names_and_values_are_refused() {
    let db = TestDb::new().await;
    let key = MasterKey::dev();
    let acme = scope("us-acme");
    let too_big = "x".repeat(64 * 1024 + 1);
    let long_name = "n".repeat(201);
    for (name, value) in [
        ("", "v"),
        ("a\nb", "v"),
        (long_name.as_str(), "v"),
        ("n", ""),
        ("n", too_big.as_str()),
    ] {
        let err = db
            .store
            .put_secret(&acme, &key, name, &secret(value))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Invalid(_)), "{err}");
    }
    let ghost = db
        .store
        .put_secret(&scope("us-ghost"), &key, "n", &secret("v"))
        .await;
    assert!(matches!(ghost, Err(StoreError::NotFound(_))));
}

/// Eight writers of one secret at once, on a tenant with no data key yet: each gets its own
/// version, one data key is made, and the newest version opens.
async fn concurrent_writes_of_one_secret_each_get_their_own_version() {
    let db = TestDb::new().await;
    let key = MasterKey::generate();
    let acme = scope("us-acme");
    let writes = (0..8).map(|n| {
        let (store, key, acme) = (db.store.clone(), key.clone(), acme.clone());
        tokio::spawn(async move {
            let value = secret(&format!("value-{n}"));
            store.put_secret(&acme, &key, "llm.api_key", &value).await
        })
    });
    let mut versions = Vec::new();
    for write in writes {
        versions.push(write.await.unwrap().unwrap());
    }
    versions.sort_unstable();
    assert_eq!(versions, (1..=8).collect::<Vec<u32>>());
    let newest = db
        .store
        .secret(&acme, &key, "llm.api_key")
        .await
        .unwrap()
        .unwrap();
    assert!(newest.expose_secret().starts_with("value-"));
}

crate::support::conformance!(
    concurrent_writes_of_one_secret_each_get_their_own_version,
    secrets_round_trip_with_a_new_version_each_time,
    each_tenant_gets_its_own_data_key,
    a_ciphertext_moved_to_another_tenant_does_not_open,
    a_ciphertext_moved_to_another_name_or_version_does_not_open,
    a_data_key_moved_to_another_tenant_does_not_unwrap,
    a_wrong_master_key_is_refused_at_startup_naming_both_key_ids,
    the_key_check_unwraps_a_data_key_even_if_the_recorded_id_was_removed,
    malformed_secret_names_and_values_are_refused,
);

// These read SQLite's files or write blobs with SQLite-only SQL.
crate::support::sqlite_only!(
    flipped_or_truncated_ciphertexts_do_not_open,
    plaintext_never_reaches_the_disk,
);
