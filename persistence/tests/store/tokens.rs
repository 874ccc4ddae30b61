//! API tokens: stored as hashes, checked in constant time, expiring and revocable.

use secrecy::{ExposeSecret, SecretString};
use steward_persistence::{Authenticator, StoreError, generate_api_token};

use crate::support::{TestDb, scope};

#[test]
fn generated_tokens_are_prefixed_random_hex() {
    let token = generate_api_token();
    let text = token.expose_secret();
    assert_eq!(text.len(), 4 + 64);
    assert!(text.starts_with("stw_"));
    assert!(
        text[4..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    );
    assert_ne!(text, generate_api_token().expose_secret());
}

async fn a_registered_token_authenticates_its_tenant_and_scopes() {
    let db = TestDb::new().await;
    let token = generate_api_token();
    let scopes = vec!["runs:read".to_owned(), "runs:write".to_owned()];
    db.store
        .add_api_token(&scope("eu-beta"), &token, "ci", &scopes, None)
        .await
        .unwrap();

    let (who, granted) = db
        .store
        .authenticate_token(token.expose_secret())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(who.tenant().as_str(), "eu-beta");
    assert_eq!(who.authenticator(), &Authenticator::ApiToken);
    assert_eq!(granted, scopes);

    let mut raw = db.raw().await;
    let stored: String = sqlx::query_scalar("SELECT token_hash FROM api_tokens")
        .fetch_one(&mut raw)
        .await
        .unwrap();
    assert_eq!(stored.len(), 64);
    assert!(!stored.contains(&token.expose_secret()[4..]));
}

async fn unknown_and_hostile_tokens_authenticate_nobody() {
    let db = TestDb::new().await;
    let token = generate_api_token();
    db.store
        .add_api_token(&scope("us-acme"), &token, "ci", &[], None)
        .await
        .unwrap();
    let real = token.expose_secret();
    let hostile = [
        String::new(),
        real[..real.len() - 1].to_owned(),
        format!("{real} "),
        real.to_uppercase(),
        "' OR 1=1 --".to_owned(),
        "stw_\u{0}".to_owned(),
        "é".repeat(40),
        "a".repeat(100_000),
    ];
    for presented in hostile {
        assert!(
            db.store
                .authenticate_token(&presented)
                .await
                .unwrap()
                .is_none(),
            "{presented:.20}"
        );
    }
}

async fn a_token_stops_working_at_its_expiry() {
    let db = TestDb::new().await;
    let token = generate_api_token();
    let expires = db.clock_ms() + 1_000;
    db.store
        .add_api_token(&scope("us-acme"), &token, "ci", &[], Some(expires))
        .await
        .unwrap();
    db.clock.advance_millis(999);
    assert!(
        db.store
            .authenticate_token(token.expose_secret())
            .await
            .unwrap()
            .is_some()
    );
    db.clock.advance_millis(1);
    assert!(
        db.store
            .authenticate_token(token.expose_secret())
            .await
            .unwrap()
            .is_none()
    );
}

async fn revoking_a_label_revokes_only_that_tenants_tokens_of_that_label() {
    let db = TestDb::new().await;
    let (ci, ops, beta_ci) = (
        generate_api_token(),
        generate_api_token(),
        generate_api_token(),
    );
    db.store
        .add_api_token(&scope("us-acme"), &ci, "ci", &[], None)
        .await
        .unwrap();
    db.store
        .add_api_token(&scope("us-acme"), &ops, "ops", &[], None)
        .await
        .unwrap();
    db.store
        .add_api_token(&scope("eu-beta"), &beta_ci, "ci", &[], None)
        .await
        .unwrap();

    assert_eq!(
        db.store
            .revoke_api_tokens(&scope("us-acme"), "ci")
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        db.store
            .revoke_api_tokens(&scope("us-acme"), "ci")
            .await
            .unwrap(),
        0
    );
    assert!(
        db.store
            .authenticate_token(ci.expose_secret())
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        db.store
            .authenticate_token(ops.expose_secret())
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        db.store
            .authenticate_token(beta_ci.expose_secret())
            .await
            .unwrap()
            .is_some()
    );
}

async fn weak_duplicate_or_mislabelled_tokens_are_refused() {
    let db = TestDb::new().await;
    let acme = scope("us-acme");
    let token = generate_api_token();
    db.store
        .add_api_token(&acme, &token, "ci", &[], None)
        .await
        .unwrap();
    let dup = db
        .store
        .add_api_token(&scope("eu-beta"), &token, "ci", &[], None)
        .await;
    assert!(matches!(dup, Err(StoreError::Conflict(ref m)) if !m.contains(token.expose_secret())));

    let short = SecretString::from("stw_short");
    let err = db
        .store
        .add_api_token(&acme, &short, "ci", &[], None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Invalid(ref m) if !m.contains("stw_short")),
        "{err}"
    );
    let fresh = generate_api_token();
    for (label, scopes) in [
        ("", vec![]),
        ("ci", vec![String::new()]),
        ("ci", vec!["a\nb".to_owned()]),
        ("ci", (0..33).map(|i| format!("s{i}")).collect()),
    ] {
        let err = db
            .store
            .add_api_token(&acme, &fresh, label, &scopes, None)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Invalid(_)), "{err}");
    }
    let ghost = db
        .store
        .add_api_token(&scope("us-ghost"), &fresh, "ci", &[], None)
        .await;
    assert!(matches!(ghost, Err(StoreError::NotFound(_))));
}

crate::support::conformance!(
    a_registered_token_authenticates_its_tenant_and_scopes,
    unknown_and_hostile_tokens_authenticate_nobody,
    a_token_stops_working_at_its_expiry,
    revoking_a_label_revokes_only_that_tenants_tokens_of_that_label,
    weak_duplicate_or_mislabelled_tokens_are_refused,
);
