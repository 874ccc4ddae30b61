//! Checkpoints sent to a witness through an outage and its recovery: the log is never blocked,
//! the unwitnessed checkpoint is sent again on the next round, and the bundle exported after
//! it verifies with the witness key pinned.

use serde_json::json;
use steward_actors::witness::Witness;
use steward_core::TenantId;
use steward_persistence::evidence::bundle::{BundleWriter, VerifyOptions, verify_bundle};
use steward_persistence::{
    AuditDraft, Authenticator, MasterKey, Store, StoreOptions, TenantRecord, TenantScope,
};
use steward_tests::witness::WitnessStandIn;

#[tokio::test]
async fn a_witness_outage_delays_countersigning_and_never_blocks_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreOptions::new(dir.path().join("db.sqlite")))
        .await
        .unwrap();
    let id = TenantId::parse("us-acme").unwrap();
    store
        .upsert_tenant(&TenantRecord {
            id: id.clone(),
            name: "Acme".into(),
            settings: json!({}),
            created_at: 0,
        })
        .await
        .unwrap();
    let scope = TenantScope::assume(id, Authenticator::Operator);
    let draft = |kind: &str| AuditDraft {
        kind: kind.into(),
        run_id: None,
        actor: "operator".into(),
        body: json!({}),
    };
    store
        .append_audit(&scope, draft("token.issued"))
        .await
        .unwrap();
    let master = MasterKey::generate();
    let signer = store.checkpoint_signer(&master).await.unwrap();
    let witness = WitnessStandIn::start([11; 32]).await;
    let client = Witness::new(witness.url(), std::time::Duration::from_secs(5), 2).unwrap();

    witness.set_down(true);
    let first = store
        .take_checkpoint(&scope, &signer)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(client.send_pending(&store, &scope).await.unwrap(), 0);
    assert_eq!(witness.requests(), 2, "two attempts, then left for later");
    // The log goes on while the witness is down.
    store
        .append_audit(&scope, draft("token.revoked"))
        .await
        .unwrap();
    let second = store
        .take_checkpoint(&scope, &signer)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        store
            .unwitnessed_checkpoints(&scope, 10)
            .await
            .unwrap()
            .len(),
        2
    );

    witness.set_down(false);
    assert_eq!(client.send_pending(&store, &scope).await.unwrap(), 2);
    assert!(
        store
            .unwitnessed_checkpoints(&scope, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let latest = store
        .latest_signed_checkpoint(&scope)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(latest.seq, second.seq);
    assert!(first.seq < second.seq);

    // A bundle exported now verifies with the witness key pinned, and not with another.
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let out = dir.path().join("bundle");
    let mut writer = BundleWriter::create(&out).unwrap();
    let task = {
        let store = store.clone();
        let scope = scope.clone();
        tokio::spawn(async move {
            store
                .export_evidence(&scope, &signer, 0, i64::MAX, &tx)
                .await
        })
    };
    while let Some(line) = rx.recv().await {
        writer.push(line).unwrap();
    }
    task.await.unwrap().unwrap();
    writer.finish().unwrap();
    let pinned = VerifyOptions {
        witness_keys: vec![witness.public_key()],
    };
    let report = verify_bundle(&out, &pinned, |_| {}).unwrap();
    assert!(report.witness_pinned && report.witnessed_by.is_some());
    let other = VerifyOptions {
        witness_keys: vec!["ab".repeat(32)],
    };
    assert!(verify_bundle(&out, &other, |_| {}).is_err());
}
