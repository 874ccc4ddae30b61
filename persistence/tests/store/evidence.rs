//! Evidence bundles on each backend: signed checkpoints, a bundle exported and verified
//! offline, witness countersignatures, and a history rewritten in the database caught against
//! a checkpoint signed before.

use std::path::Path;

use ed25519_dalek::{Signer, SigningKey};
use proptest::prelude::*;
use steward_persistence::evidence::bundle::{self, BundleWriter, VerifyOptions, verify_bundle};
use steward_persistence::evidence::key_id_for;
use steward_persistence::{Countersignature, MasterKey, SignedCheckpoint, StepWrite, TenantScope};

use crate::support::{TestDb, audit, scope, step};

/// Exports `scope`'s evidence for `from..to` into a new bundle at `dir`.
async fn export(
    db: &TestDb,
    scope: &TenantScope,
    master: &MasterKey,
    from: i64,
    to: i64,
    dir: &Path,
) {
    let signer = db.store.checkpoint_signer(master).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let store = db.store.clone();
    let sc = scope.clone();
    let task =
        tokio::spawn(async move { store.export_evidence(&sc, &signer, from, to, &tx).await });
    let mut writer = BundleWriter::create(dir).unwrap();
    while let Some(line) = rx.recv().await {
        writer.push(line).unwrap();
    }
    task.await.unwrap().unwrap();
    writer.finish().unwrap();
}

fn witness_sign(key: &SigningKey, cp: &SignedCheckpoint, at: i64) -> Countersignature {
    let public = key.verifying_key().to_bytes();
    Countersignature {
        witness_key_id: key_id_for("wk-", &public),
        witness_public_key: hex::encode(public),
        witness_at: at,
        witness_signature: hex::encode(key.sign(&cp.witness_bytes(at)).to_bytes()),
    }
}

/// A tenant with a run that finished and a second that did not, between other entries.
async fn busy_tenant(db: &TestDb) -> TenantScope {
    let acme = scope("us-acme");
    for i in 0..5 {
        db.store
            .append_audit(&acme, audit(&format!("token.issued{i}"), None))
            .await
            .unwrap();
        db.clock.advance_millis(1000);
    }
    let run = db.intake("us-acme").await;
    db.clock.advance_millis(1000);
    let mut finish: StepWrite = step(run, 1, "done");
    finish.audit[0].kind = "run.finished".into();
    finish.audit[0].body = serde_json::json!({"seq": 1, "state": "done"});
    db.store.append_step(&acme, finish).await.unwrap();
    db.clock.advance_millis(1000);
    let _second = db.intake("us-acme").await;
    db.clock.advance_millis(1000);
    acme
}

async fn a_bundle_round_trips_and_verifies_offline() {
    let db = TestDb::new().await;
    let master = MasterKey::generate();
    let acme = busy_tenant(&db).await;
    let signer = db.store.checkpoint_signer(&master).await.unwrap();
    let again = db.store.checkpoint_signer(&master).await.unwrap();
    assert_eq!(
        signer.key_id(),
        again.key_id(),
        "the key is made once and kept"
    );
    let first = db
        .store
        .take_checkpoint(&acme, &signer)
        .await
        .unwrap()
        .unwrap();
    assert!(
        db.store
            .take_checkpoint(&acme, &signer)
            .await
            .unwrap()
            .is_none(),
        "head unchanged"
    );

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bundle");
    export(&db, &acme, &master, 0, i64::MAX, &out).await;
    let report = verify_bundle(&out, &VerifyOptions::default(), |_| {}).unwrap();
    assert_eq!(report.entries, first.seq);
    assert_eq!(report.runs, 2);
    assert_eq!(report.linked_checkpoint, Some(first.seq));
    assert!(report.witnessed_by.is_none());

    // A middle range links through the later entries to the checkpoint.
    let t0 = crate::support::T0_SECS * 1000;
    let mid = dir.path().join("mid");
    export(&db, &acme, &master, t0 + 1000, t0 + 3000, &mid).await;
    let report = verify_bundle(&mid, &VerifyOptions::default(), |_| {}).unwrap();
    assert_eq!((report.entries, report.runs), (2, 0));
    assert_eq!(report.linked_checkpoint, Some(first.seq));
    assert_eq!(report.entries + report.link_entries, first.seq - 1);

    // A pinned witness: the bundle without its countersignature fails, with it passes.
    let witness = SigningKey::from_bytes(&[9; 32]);
    let pin = VerifyOptions {
        witness_keys: vec![hex::encode(witness.verifying_key().to_bytes())],
    };
    let err = verify_bundle(&out, &pin, |_| {}).unwrap_err();
    assert!(err.reason.contains("pinned witness"), "{err}");
    let c = witness_sign(&witness, &first, db.clock_ms());
    let mut forged = c.clone();
    forged.witness_at += 1;
    assert!(
        db.store
            .record_witness(&acme, &first, &forged)
            .await
            .is_err()
    );
    assert!(db.store.record_witness(&acme, &first, &c).await.unwrap());
    assert!(
        !db.store.record_witness(&acme, &first, &c).await.unwrap(),
        "first one stays"
    );
    assert!(
        db.store
            .unwitnessed_checkpoints(&acme, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let witnessed = dir.path().join("witnessed");
    export(&db, &acme, &master, 0, i64::MAX, &witnessed).await;
    let report = verify_bundle(&witnessed, &pin, |_| {}).unwrap();
    assert_eq!(report.witnessed_by, Some(c.witness_key_id.clone()));
    let other = VerifyOptions {
        witness_keys: vec![hex::encode(
            SigningKey::from_bytes(&[8; 32]).verifying_key().to_bytes(),
        )],
    };
    assert!(verify_bundle(&witnessed, &other, |_| {}).is_err());

    // An export with nothing new after the checkpoint takes none; new entries get one.
    db.store
        .append_audit(&acme, audit("token.revoked", None))
        .await
        .unwrap();
    let fresh = dir.path().join("fresh");
    export(&db, &acme, &master, 0, i64::MAX, &fresh).await;
    let report = verify_bundle(&fresh, &VerifyOptions::default(), |_| {}).unwrap();
    assert_eq!(report.linked_checkpoint, Some(first.seq + 1));

    // The key opens after a master key rotation that carries the old key, and is re-sealed.
    let rotated = MasterKey::generate().with_previous(master.clone());
    let after = db.store.checkpoint_signer(&rotated).await.unwrap();
    assert_eq!(after.key_id(), signer.key_id());
    let alone = db
        .store
        .checkpoint_signer(&rotated.clone().without_previous())
        .await
        .unwrap();
    assert_eq!(alone.key_id(), signer.key_id());
    assert!(db.store.checkpoint_signer(&master).await.is_err());
    assert_eq!(
        db.store.evidence_keys().await.unwrap(),
        vec![signer.public()]
    );
}

async fn a_rewritten_history_is_caught_by_a_witnessed_checkpoint() {
    let db = TestDb::new().await;
    let master = MasterKey::generate();
    let acme = busy_tenant(&db).await;
    let signer = db.store.checkpoint_signer(&master).await.unwrap();
    let cp = db
        .store
        .take_checkpoint(&acme, &signer)
        .await
        .unwrap()
        .unwrap();
    let witness = SigningKey::from_bytes(&[5; 32]);
    let c = witness_sign(&witness, &cp, db.clock_ms());
    db.store.record_witness(&acme, &cp, &c).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let before = dir.path().join("before");
    export(&db, &acme, &master, 0, i64::MAX, &before).await;
    let kept: Vec<SignedCheckpoint> =
        serde_json::from_slice(&std::fs::read(before.join(bundle::CHECKPOINTS_FILE)).unwrap())
            .unwrap();

    // Someone with the database rewrites entry 3 and re-hashes the whole chain after it.
    let mut raw = db.attacker().await;
    let entries = db.store.audit_entries(&acme, 0, 1000).await.unwrap();
    let mut prev = entries[1].hash.clone();
    for e in &entries[2..] {
        let mut e = e.clone();
        if e.seq == 3 {
            e.body = r#"{"k":"rewritten"}"#.into();
        }
        e.prev_hash = prev.clone();
        e.hash = steward_persistence::entry_hash(&e);
        prev.clone_from(&e.hash);
        sqlx::query("UPDATE audit_log SET body = $1, prev_hash = $2, hash = $3 WHERE tenant_id = $4 AND seq = $5")
            .bind(e.sealed.as_ref().unwrap_or(&e.body))
            .bind(&e.prev_hash)
            .bind(&e.hash)
            .bind("us-acme")
            .bind(e.seq as i64)
            .execute(&mut raw)
            .await
            .unwrap();
    }
    assert!(
        db.store
            .verify_audit(&acme)
            .await
            .unwrap()
            .first_bad
            .is_none(),
        "the chain itself holds"
    );

    // A new export is linked to the stored checkpoint, whose head no longer matches.
    let after = dir.path().join("after");
    export(&db, &acme, &master, 0, i64::MAX, &after).await;
    let err = verify_bundle(&after, &VerifyOptions::default(), |_| {}).unwrap_err();
    assert!(err.reason.contains("rewritten"), "{err}");
    assert!(err.item.contains(&format!("seq {}", cp.seq)), "{err}");

    // Against the copy kept from before, the new head differs from the witnessed one.
    let now = db
        .store
        .audit_entries(&acme, cp.seq - 1, 1)
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_ne!(now.hash, kept[0].head_hash);
    kept[0]
        .check_countersignature(kept[0].witness.as_ref().unwrap())
        .unwrap();
}

async fn offboarding_also_signs_an_evidence_checkpoint() {
    let db = TestDb::new().await;
    let master = MasterKey::generate();
    let acme = busy_tenant(&db).await;
    let hmac = db
        .store
        .offboard_tenant(&acme, &master, "operator")
        .await
        .unwrap();
    let signed = db
        .store
        .latest_signed_checkpoint(&acme)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((signed.seq, &signed.head_hash), (hmac.seq, &hmac.head_hash));
    let public = db.store.evidence_keys().await.unwrap().pop().unwrap();
    steward_persistence::evidence::verify_signature(
        &public.public_key,
        &signed.signed_bytes(),
        &signed.signature,
    )
    .unwrap();
}

/// Run entries are stored sealed and bound: the export shows their clear bodies, the bundle
/// proves them by the digest the chain covers, and an edited clear body is caught even with
/// the manifest rehashed.
async fn the_clear_bodies_of_sealed_entries_are_proved_by_the_chain() {
    let db = TestDb::new().await;
    let master = MasterKey::generate();
    let acme = busy_tenant(&db).await;
    let signer = db.store.checkpoint_signer(&master).await.unwrap();
    db.store.take_checkpoint(&acme, &signer).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bundle");
    export(&db, &acme, &master, 0, i64::MAX, &out).await;
    let report = verify_bundle(&out, &VerifyOptions::default(), |_| {}).unwrap();
    assert!(report.bound_entries > 0, "{report:?}");
    assert_eq!(
        report.sealed_entries, 0,
        "no entry's clear body goes unproved"
    );

    let path = out.join(bundle::AUDIT_FILE);
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let i = lines
        .iter()
        .position(|e| e["sealed"].is_string())
        .expect("a sealed entry");
    let stored = lines[i]["sealed"].as_str().unwrap().to_owned();
    let body = lines[i]["body"].as_str().unwrap().to_owned();
    assert!(
        stored.starts_with(steward_persistence::BOUND_PREFIX),
        "{stored}"
    );
    assert_eq!(
        steward_persistence::bound_body_matches(&stored, &body),
        Some(true)
    );
    // Edit the clear body only: the hashes still verify, the digest does not.
    lines[i]["body"] = serde_json::json!(format!("{body} "));
    let edited: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&path, edited).unwrap();
    rehash(&out);
    let err = verify_bundle(&out, &VerifyOptions::default(), |_| {}).unwrap_err();
    assert!(err.reason.contains("digest"), "{err}");
}

crate::support::conformance!(
    the_clear_bodies_of_sealed_entries_are_proved_by_the_chain,
    a_bundle_round_trips_and_verifies_offline,
    a_rewritten_history_is_caught_by_a_witnessed_checkpoint,
    offboarding_also_signs_an_evidence_checkpoint,
);

/// A bundle of `n` synthetic entries, built without a database.
fn synthetic_bundle(dir: &Path, n: u64) {
    use steward_core::{RunId, TenantId};
    use steward_persistence::evidence::bundle::ExportLine;
    use steward_persistence::{
        AuditEntry, CheckpointSigner, ExportRange, GENESIS_HASH, entry_hash,
    };
    let tenant = TenantId::parse("us-acme").unwrap();
    let signer = CheckpointSigner::from_seed(&[4; 32], 1);
    let run = RunId::new();
    let mut w = BundleWriter::create(dir).unwrap();
    let mut range = ExportRange {
        tenant: tenant.clone(),
        from: 0,
        to: n as i64 + 1,
        first_seq: 1,
        last_seq: n,
        linked_through: n,
        prev_hash: GENESIS_HASH.into(),
        exported_at: 5,
        key_id: String::new(),
        signature: String::new(),
    };
    signer.sign_range(&mut range);
    w.push(ExportLine::Range { range }).unwrap();
    let mut prev = GENESIS_HASH.to_owned();
    for seq in 1..=n {
        let mut e = AuditEntry {
            tenant: tenant.clone(),
            seq,
            at: seq as i64,
            kind: if seq == n {
                "run.finished".into()
            } else {
                "run.step".into()
            },
            run_id: Some(run),
            actor: "steward".into(),
            body: if seq == n {
                r#"{"state":"done"}"#.into()
            } else {
                format!(r#"{{"i":{seq}}}"#)
            },
            sealed: None,
            prev_hash: prev.clone(),
            hash: String::new(),
        };
        e.hash = entry_hash(&e);
        prev.clone_from(&e.hash);
        w.push(ExportLine::Audit { entry: e }).unwrap();
    }
    w.push(ExportLine::Run {
        run: serde_json::json!({"id": run.to_string(), "tenant": "us-acme", "state": "done"}),
    })
    .unwrap();
    let cp = signer.checkpoint(&tenant, n, &prev, 6);
    w.push(ExportLine::Checkpoint { checkpoint: cp }).unwrap();
    w.push(ExportLine::Key {
        key: signer.public(),
    })
    .unwrap();
    w.finish().unwrap();
}

/// Recomputes the manifest's file hashes, as a forger who edits a file would.
fn rehash(dir: &Path) {
    let path = dir.join(bundle::MANIFEST_FILE);
    let mut m: bundle::Manifest = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    for name in bundle::FILES {
        use sha2::Digest;
        let bytes = std::fs::read(dir.join(name)).unwrap();
        m.files
            .insert(name.into(), hex::encode(sha2::Sha256::digest(&bytes)));
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
}

#[test]
fn a_synthetic_bundle_verifies() {
    let dir = tempfile::tempdir().unwrap();
    synthetic_bundle(&dir.path().join("b"), 6);
    let report = verify_bundle(&dir.path().join("b"), &VerifyOptions::default(), |_| {}).unwrap();
    assert_eq!((report.entries, report.runs, report.checkpoints), (6, 1, 1));
}

/// Hex digits have two spellings of each letter; a bundle accepts only the lowercase one, so a
/// case flip in the (unhashed) manifest's signature is an edit like any other.
#[test]
fn an_uppercased_signature_in_the_manifest_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let b = dir.path().join("b");
    synthetic_bundle(&b, 6);
    let path = b.join(bundle::MANIFEST_FILE);
    let mut m: bundle::Manifest = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    m.range.signature = m.range.signature.to_ascii_uppercase();
    std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    let err = verify_bundle(&b, &VerifyOptions::default(), |_| ()).unwrap_err();
    assert!(err.reason.contains("lowercase hex"), "{err}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn any_flipped_byte_is_caught(file in 0usize..6, at in any::<prop::sample::Index>(), bit in 0u8..8) {
        let dir = tempfile::tempdir().unwrap();
        let b = dir.path().join("b");
        synthetic_bundle(&b, 6);
        let names = [bundle::MANIFEST_FILE, bundle::AUDIT_FILE, bundle::RUNS_FILE, bundle::CHECKPOINTS_FILE, bundle::KEYS_FILE, bundle::MANIFEST_FILE];
        let path = b.join(names[file]);
        let mut bytes = std::fs::read(&path).unwrap();
        let i = at.index(bytes.len());
        bytes[i] ^= 1 << bit;
        std::fs::write(&path, &bytes).unwrap();
        let caught = verify_bundle(&b, &VerifyOptions::default(), |_| ()).is_err();
        prop_assert!(caught);
    }

    #[test]
    fn removed_reordered_or_edited_lines_are_caught_even_with_a_rehashed_manifest(
        n in 2u64..12,
        what in 0usize..4,
        pick in any::<prop::sample::Index>(),
        field in 0usize..7,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let b = dir.path().join("b");
        synthetic_bundle(&b, n);
        let path = b.join(bundle::AUDIT_FILE);
        let text = std::fs::read_to_string(&path).unwrap();
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        let i = pick.index(lines.len());
        match what {
            0 => { lines.remove(i); }
            1 => { let j = (i + 1) % lines.len(); lines.swap(i, j); }
            2 => lines.push(lines[i].clone()),
            _ => {
                let mut v: serde_json::Value = serde_json::from_str(&lines[i]).unwrap();
                let key = ["seq", "at", "kind", "run_id", "actor", "body", "prev_hash"][field];
                v[key] = match &v[key] {
                    serde_json::Value::Number(x) => serde_json::json!(x.as_i64().unwrap() + 1),
                    serde_json::Value::String(s) => serde_json::json!(format!("{s}x")),
                    _ => serde_json::json!("x"),
                };
                lines[i] = v.to_string();
            }
        }
        let mut out = lines.join("\n");
        out.push('\n');
        std::fs::write(&path, out).unwrap();
        rehash(&b);
        let caught = verify_bundle(&b, &VerifyOptions::default(), |_| ()).is_err();
        prop_assert!(caught);
    }
}

/// Export and verify of a bundle of one million entries. Run with
/// `cargo test --release -p steward-persistence --test store -- --ignored --nocapture million`.
#[test]
#[ignore]
fn a_million_entry_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let b = dir.path().join("b");
    let t = std::time::Instant::now();
    synthetic_bundle(&b, 1_000_000);
    let written = t.elapsed();
    let t = std::time::Instant::now();
    let report = verify_bundle(&b, &VerifyOptions::default(), |_| {}).unwrap();
    let verified = t.elapsed();
    let bytes = std::fs::metadata(b.join(bundle::AUDIT_FILE)).unwrap().len();
    assert_eq!(report.entries, 1_000_000);
    println!("1000000 entries, audit.jsonl {bytes} bytes: write {written:?}, verify {verified:?}");
    let rate = report.entries as f64 / verified.as_secs_f64();
    println!("verify rate: {rate:.0} entries/s");
}
