//! Verifiable evidence: checkpoints of each tenant's audit chain signed with an ed25519 platform
//! key, their countersignatures by an external witness, and the signed statement of an export's
//! range. An auditor holding the public keys checks a bundle ([`bundle`]) without the database.
//!
//! The signing key is generated once, its private half sealed under the master key (the vault's
//! sealed format, associated data naming the key and the master key). A store opened with a
//! rotated master key that still carries the previous one re-seals it under the new key the
//! first time it is loaded; a store whose master key knows neither cannot sign checkpoints.
//!
//! Every signed message is a domain tag followed by each field as an 8-byte big-endian length
//! and its UTF-8 bytes, numbers in decimal, so no two different field lists share bytes.

pub mod bundle;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rand::RngCore;
use rand::rngs::OsRng;
use secrecy::ExposeSecret;
use secrecy::zeroize::Zeroizing;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::FromRow;
use steward_core::{ApprovalId, RunId, TenantId};

use crate::codec;
use crate::envelope;
use crate::store::WriteTx;
use crate::{ApprovalRecord, GENESIS_HASH, MasterKey, Store, StoreError, TenantScope};

/// Domain tag of a checkpoint's signed bytes.
pub const CHECKPOINT_DOMAIN: &[u8] = b"steward-checkpoint-v1";
/// Domain tag of a witness countersignature's signed bytes.
pub const WITNESS_DOMAIN: &[u8] = b"steward-witness-v1";
/// Domain tag of an export range statement's signed bytes.
pub const RANGE_DOMAIN: &[u8] = b"steward-export-range-v1";
/// The only signature algorithm of this format.
pub const ALGORITHM: &str = "ed25519";

/// `domain` followed by each field as an 8-byte big-endian length and its bytes.
pub fn framed(domain: &[u8], fields: &[&[u8]]) -> Vec<u8> {
    let size = domain.len() + fields.iter().map(|f| 8 + f.len()).sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(domain);
    for field in fields {
        out.extend_from_slice(&(field.len() as u64).to_be_bytes());
        out.extend_from_slice(field);
    }
    out
}

/// The id of an ed25519 public key: `prefix` (`ek-` for Steward's keys, `wk-` for a witness's)
/// and the first 16 hex digits of SHA-256(`steward-evidence-key-id\0` || public key).
pub fn key_id_for(prefix: &str, public: &[u8; 32]) -> String {
    let digest = Sha256::new()
        .chain_update(b"steward-evidence-key-id\0")
        .chain_update(public)
        .finalize();
    format!("{prefix}{}", &hex::encode(digest)[..16])
}

/// Checks an ed25519 signature (hex) over `message` with a public key (hex), strictly (no
/// small-order keys, canonical encodings only). The error says which part is wrong.
pub fn verify_signature(
    public_hex: &str,
    message: &[u8],
    signature_hex: &str,
) -> Result<(), String> {
    let public = decode_32(public_hex).ok_or("the public key is not 64 hex digits")?;
    let key = VerifyingKey::from_bytes(&public)
        .map_err(|_| "the public key is not a valid ed25519 point")?;
    let sig: [u8; 64] = lower_hex(signature_hex)
        .then(|| hex::decode(signature_hex).ok())
        .flatten()
        .and_then(|b| b.try_into().ok())
        .ok_or("the signature is not 128 lowercase hex digits")?;
    key.verify_strict(message, &Signature::from_bytes(&sig))
        .map_err(|_| "the signature does not verify".to_owned())
}

/// 32 bytes from exactly 64 lowercase hex digits.
pub fn decode_32(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !lower_hex(text) {
        return None;
    }
    hex::decode(text).ok()?.try_into().ok()
}

/// Whether `text` is spelled in lowercase hex digits only. Evidence accepts one spelling of
/// each value, so that no byte of a bundle can change without the verification failing.
fn lower_hex(text: &str) -> bool {
    text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A public key that signs evidence, as published and as written to a bundle's `keys.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvidenceKey {
    /// `ek-` and 16 hex digits, derived from the public key ([`key_id_for`]).
    pub key_id: String,
    /// Always `ed25519`.
    pub algorithm: String,
    /// The 32-byte public key, hex.
    pub public_key: String,
    /// Unix ms.
    pub created_at: i64,
}

/// The platform's checkpoint-signing key, opened. `Debug` shows only its id.
#[derive(Clone)]
pub struct CheckpointSigner {
    key: SigningKey,
    key_id: String,
    created_at: i64,
}

impl std::fmt::Debug for CheckpointSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointSigner")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl CheckpointSigner {
    /// A signer from a 32-byte seed (the ed25519 secret key).
    pub fn from_seed(seed: &[u8; 32], created_at: i64) -> Self {
        let key = SigningKey::from_bytes(seed);
        let key_id = key_id_for("ek-", key.verifying_key().as_bytes());
        Self {
            key,
            key_id,
            created_at,
        }
    }

    /// A fresh random signer.
    pub fn generate(created_at: i64) -> Self {
        let mut seed = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(seed.as_mut());
        Self::from_seed(&seed, created_at)
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The public half, as published.
    pub fn public(&self) -> EvidenceKey {
        EvidenceKey {
            key_id: self.key_id.clone(),
            algorithm: ALGORITHM.into(),
            public_key: hex::encode(self.key.verifying_key().as_bytes()),
            created_at: self.created_at,
        }
    }

    /// The signature over `message`, hex.
    pub fn sign(&self, message: &[u8]) -> String {
        hex::encode(self.key.sign(message).to_bytes())
    }

    /// A checkpoint of `tenant`'s chain at `seq` with head `head_hash`, signed at `at`.
    pub fn checkpoint(
        &self,
        tenant: &TenantId,
        seq: u64,
        head_hash: &str,
        at: i64,
    ) -> SignedCheckpoint {
        let mut cp = SignedCheckpoint {
            tenant: tenant.clone(),
            seq,
            head_hash: head_hash.to_owned(),
            at,
            key_id: self.key_id.clone(),
            signature: String::new(),
            witness: None,
        };
        cp.signature = self.sign(&cp.signed_bytes());
        cp
    }

    /// Signs a range statement in place (its `key_id` and `signature` are set).
    pub fn sign_range(&self, range: &mut ExportRange) {
        range.key_id.clone_from(&self.key_id);
        range.signature = self.sign(&range.signed_bytes());
    }
}

/// A checkpoint of one tenant's chain head, signed by Steward's evidence key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedCheckpoint {
    pub tenant: TenantId,
    /// The seq of the chain's head at the time.
    pub seq: u64,
    /// The hash of the entry at `seq`.
    pub head_hash: String,
    /// Signing time, Unix ms.
    pub at: i64,
    /// The signing key's id.
    pub key_id: String,
    /// ed25519 over [`SignedCheckpoint::signed_bytes`], hex.
    pub signature: String,
    /// The witness's countersignature, once it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub witness: Option<Countersignature>,
}

impl SignedCheckpoint {
    /// `steward-checkpoint-v1`, then tenant, seq, head_hash, at, key_id (framed).
    pub fn signed_bytes(&self) -> Vec<u8> {
        let (seq, at) = (self.seq.to_string(), self.at.to_string());
        framed(
            CHECKPOINT_DOMAIN,
            &[
                self.tenant.as_str().as_bytes(),
                seq.as_bytes(),
                self.head_hash.as_bytes(),
                at.as_bytes(),
                self.key_id.as_bytes(),
            ],
        )
    }

    /// What a witness signs: `steward-witness-v1`, then the checkpoint's signed bytes, its
    /// signature and the witness's time (framed). Countersigning the signature too means the
    /// witness vouches for this exact signed checkpoint.
    pub fn witness_bytes(&self, witness_at: i64) -> Vec<u8> {
        let at = witness_at.to_string();
        framed(
            WITNESS_DOMAIN,
            &[
                &self.signed_bytes(),
                self.signature.as_bytes(),
                at.as_bytes(),
            ],
        )
    }

    /// The body sent to a witness.
    pub fn witness_request(&self) -> WitnessRequest {
        WitnessRequest {
            tenant: self.tenant.clone(),
            seq: self.seq,
            head_hash: self.head_hash.clone(),
            at: self.at,
            key_id: self.key_id.clone(),
            signature: self.signature.clone(),
        }
    }

    /// Checks a countersignature: its key id derives from its public key and its signature
    /// verifies over [`SignedCheckpoint::witness_bytes`].
    pub fn check_countersignature(&self, c: &Countersignature) -> Result<(), String> {
        let public = decode_32(&c.witness_public_key)
            .ok_or("the witness public key is not 64 hex digits")?;
        if key_id_for("wk-", &public) != c.witness_key_id {
            return Err(format!(
                "witness key id `{}` does not belong to its public key",
                codec::clip(&c.witness_key_id)
            ));
        }
        verify_signature(
            &c.witness_public_key,
            &self.witness_bytes(c.witness_at),
            &c.witness_signature,
        )
        .map_err(|e| format!("witness countersignature: {e}"))
    }
}

/// A checkpoint as sent to a witness: `POST <witness_url>` with this JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessRequest {
    pub tenant: TenantId,
    pub seq: u64,
    pub head_hash: String,
    pub at: i64,
    pub key_id: String,
    pub signature: String,
}

impl WitnessRequest {
    /// The checkpoint this request carries (no witness yet).
    pub fn checkpoint(&self) -> SignedCheckpoint {
        SignedCheckpoint {
            tenant: self.tenant.clone(),
            seq: self.seq,
            head_hash: self.head_hash.clone(),
            at: self.at,
            key_id: self.key_id.clone(),
            signature: self.signature.clone(),
            witness: None,
        }
    }
}

/// A witness's answer, stored with the checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Countersignature {
    /// `wk-` and 16 hex digits of the witness public key ([`key_id_for`]).
    pub witness_key_id: String,
    /// The witness's ed25519 public key, hex.
    pub witness_public_key: String,
    /// The witness's time, Unix ms.
    pub witness_at: i64,
    /// ed25519 over [`SignedCheckpoint::witness_bytes`], hex.
    pub witness_signature: String,
}

/// The server's signed statement of what an export covers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportRange {
    pub tenant: TenantId,
    /// Unix ms, inclusive.
    pub from: i64,
    /// Unix ms, exclusive.
    pub to: i64,
    /// The first entry of the range (the first with `at >= from`); for an empty range the seq
    /// the next entry will get.
    pub first_seq: u64,
    /// The last entry of the range (the last with `at < to`); `first_seq - 1` when empty.
    pub last_seq: u64,
    /// The seq of the checkpoint the range is linked to: entries after `last_seq` up to this
    /// one are in the bundle only to link the range to it. Equal to `last_seq` when empty.
    pub linked_through: u64,
    /// The hash of the entry before `first_seq` ([`GENESIS_HASH`] from the chain's start).
    pub prev_hash: String,
    /// Unix ms.
    pub exported_at: i64,
    pub key_id: String,
    /// ed25519 over [`ExportRange::signed_bytes`], hex.
    pub signature: String,
}

impl ExportRange {
    /// `steward-export-range-v1`, then tenant, from, to, first_seq, last_seq, linked_through,
    /// prev_hash, exported_at, key_id (framed).
    pub fn signed_bytes(&self) -> Vec<u8> {
        let nums = [
            self.from.to_string(),
            self.to.to_string(),
            self.first_seq.to_string(),
            self.last_seq.to_string(),
            self.linked_through.to_string(),
        ];
        let at = self.exported_at.to_string();
        framed(
            RANGE_DOMAIN,
            &[
                self.tenant.as_str().as_bytes(),
                nums[0].as_bytes(),
                nums[1].as_bytes(),
                nums[2].as_bytes(),
                nums[3].as_bytes(),
                nums[4].as_bytes(),
                self.prev_hash.as_bytes(),
                at.as_bytes(),
                self.key_id.as_bytes(),
            ],
        )
    }

    /// Whether the range holds no entries.
    pub fn is_empty(&self) -> bool {
        self.last_seq < self.first_seq
    }
}

/// Associated data binding the sealed signing key to its id and the master key sealing it.
fn sealed_key_ad(key_id: &str, master_key_id: &str) -> String {
    format!("steward/v1/evidence-key|{key_id}|{master_key_id}")
}

#[derive(FromRow)]
struct KeyRow {
    key_id: String,
    public_key: String,
    sealed_key: Vec<u8>,
    master_key_id: String,
    created_at: i64,
}

#[derive(FromRow)]
struct CheckpointRow {
    tenant_id: String,
    seq: i64,
    head_hash: String,
    at: i64,
    key_id: String,
    signature: String,
    witness_key_id: Option<String>,
    witness_public_key: Option<String>,
    witness_at: Option<i64>,
    witness_signature: Option<String>,
}

impl TryFrom<CheckpointRow> for SignedCheckpoint {
    type Error = StoreError;
    fn try_from(r: CheckpointRow) -> Result<Self, StoreError> {
        let witness = match (
            r.witness_key_id,
            r.witness_public_key,
            r.witness_at,
            r.witness_signature,
        ) {
            (
                Some(witness_key_id),
                Some(witness_public_key),
                Some(witness_at),
                Some(witness_signature),
            ) => Some(Countersignature {
                witness_key_id,
                witness_public_key,
                witness_at,
                witness_signature,
            }),
            _ => None,
        };
        Ok(SignedCheckpoint {
            tenant: codec::tenant_id(&r.tenant_id)?,
            seq: codec::to_u64(r.seq, "checkpoint seq")?,
            head_hash: r.head_hash,
            at: r.at,
            key_id: r.key_id,
            signature: r.signature,
            witness,
        })
    }
}

const CHECKPOINT_COLUMNS: &str = "tenant_id, seq, head_hash, at, key_id, signature, \
     witness_key_id, witness_public_key, witness_at, witness_signature";

impl Store {
    /// The platform's checkpoint signer, created (and sealed under `master`) on first use.
    /// WrongMasterKey when the stored key was sealed under a master key `master` neither is nor
    /// carries; Crypto when it does not open.
    pub async fn checkpoint_signer(
        &self,
        master: &MasterKey,
    ) -> Result<CheckpointSigner, StoreError> {
        let mut tx = self.begin_platform_write().await?;
        let row: Option<KeyRow> = sqlx::query_as(
            "SELECT key_id, public_key, sealed_key, master_key_id, created_at FROM evidence_keys \
             ORDER BY created_at DESC, key_id LIMIT 1",
        )
        .fetch_optional(&mut *tx)
        .await?;
        let signer = match row {
            Some(row) => {
                let sealer = if row.master_key_id == master.key_id() {
                    master
                } else {
                    master
                        .previous()
                        .filter(|p| p.key_id() == row.master_key_id)
                        .ok_or_else(|| StoreError::WrongMasterKey {
                            expected: row.master_key_id.clone(),
                            found: master.key_id(),
                        })?
                };
                let ad = sealed_key_ad(&row.key_id, &row.master_key_id);
                let opened = envelope::open(sealer.bytes(), &ad, &row.sealed_key).map_err(|e| {
                    StoreError::Crypto(format!("the evidence signing key does not open: {e}"))
                })?;
                let seed: [u8; 32] = opened.expose_secret().try_into().map_err(|_| {
                    StoreError::Corrupt("the evidence signing key has the wrong length".into())
                })?;
                let signer = CheckpointSigner::from_seed(&seed, row.created_at);
                if signer.key_id != row.key_id || signer.public().public_key != row.public_key {
                    return Err(StoreError::Corrupt(
                        "the evidence signing key does not match its public key".into(),
                    ));
                }
                if sealer.key_id() != master.key_id() {
                    let ad = sealed_key_ad(&row.key_id, &master.key_id());
                    sqlx::query(
                        "UPDATE evidence_keys SET sealed_key = $1, master_key_id = $2 WHERE key_id = $3",
                    )
                    .bind(envelope::seal(master.bytes(), &ad, &seed))
                    .bind(master.key_id())
                    .bind(&row.key_id)
                    .execute(&mut *tx)
                    .await?;
                }
                signer
            }
            None => {
                let signer = CheckpointSigner::generate(self.now());
                let seed = Zeroizing::new(signer.key.to_bytes());
                let ad = sealed_key_ad(&signer.key_id, &master.key_id());
                sqlx::query(
                    "INSERT INTO evidence_keys (key_id, public_key, sealed_key, master_key_id, created_at) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(&signer.key_id)
                .bind(signer.public().public_key)
                .bind(envelope::seal(master.bytes(), &ad, seed.as_ref()))
                .bind(master.key_id())
                .bind(signer.created_at)
                .execute(&mut *tx)
                .await?;
                signer
            }
        };
        tx.commit().await?;
        Ok(signer)
    }

    /// Every public key that has signed evidence, oldest first.
    pub async fn evidence_keys(&self) -> Result<Vec<EvidenceKey>, StoreError> {
        let mut tx = self.read_platform().await?;
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT key_id, public_key, created_at FROM evidence_keys ORDER BY created_at, key_id",
        )
        .fetch_all(&mut *tx)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(key_id, public_key, created_at)| EvidenceKey {
                key_id,
                algorithm: ALGORITHM.into(),
                public_key,
                created_at,
            })
            .collect())
    }

    /// Signs a checkpoint of the scope's tenant's chain head, unless the chain is empty or its
    /// head already has one. Returns the new checkpoint.
    pub async fn take_checkpoint(
        &self,
        scope: &TenantScope,
        signer: &CheckpointSigner,
    ) -> Result<Option<SignedCheckpoint>, StoreError> {
        let mut tx = self.begin_tenant_write(scope).await?;
        self.lock_chain(&mut tx, scope).await?;
        let head: Option<(i64, String)> = sqlx::query_as(
            "SELECT seq, hash FROM audit_log WHERE tenant_id = $1 ORDER BY seq DESC LIMIT 1",
        )
        .bind(scope.id())
        .fetch_optional(&mut *tx)
        .await?;
        let Some((seq, hash)) = head else {
            return Ok(None);
        };
        let signed: Option<i64> = sqlx::query_scalar(
            "SELECT seq FROM evidence_checkpoints WHERE tenant_id = $1 AND seq = $2",
        )
        .bind(scope.id())
        .bind(seq)
        .fetch_optional(&mut *tx)
        .await?;
        if signed.is_some() {
            return Ok(None);
        }
        let cp = self
            .insert_signed_checkpoint_in(
                &mut tx,
                scope,
                signer,
                codec::to_u64(seq, "audit seq")?,
                &hash,
            )
            .await?;
        tx.commit().await?;
        Ok(Some(cp))
    }

    /// Signs and stores a checkpoint at `seq` inside `tx`.
    pub(crate) async fn insert_signed_checkpoint_in(
        &self,
        tx: &mut WriteTx,
        scope: &TenantScope,
        signer: &CheckpointSigner,
        seq: u64,
        head_hash: &str,
    ) -> Result<SignedCheckpoint, StoreError> {
        let cp = signer.checkpoint(scope.tenant(), seq, head_hash, self.now());
        sqlx::query(
            "INSERT INTO evidence_checkpoints (tenant_id, seq, head_hash, at, key_id, signature) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(scope.id())
        .bind(codec::to_i64(seq, "checkpoint seq")?)
        .bind(&cp.head_hash)
        .bind(cp.at)
        .bind(&cp.key_id)
        .bind(&cp.signature)
        .execute(&mut **tx)
        .await?;
        Ok(cp)
    }

    /// Up to `limit` (at most 1000) signed checkpoints of the scope's tenant with seq in
    /// `from_seq..=to_seq`, in seq order.
    pub async fn signed_checkpoints(
        &self,
        scope: &TenantScope,
        from_seq: u64,
        to_seq: u64,
        limit: u32,
    ) -> Result<Vec<SignedCheckpoint>, StoreError> {
        let sql = format!(
            "SELECT {CHECKPOINT_COLUMNS} FROM evidence_checkpoints \
             WHERE tenant_id = $1 AND seq >= $2 AND seq <= $3 ORDER BY seq LIMIT $4"
        );
        let mut tx = self.read_as(scope).await?;
        let rows: Vec<CheckpointRow> = sqlx::query_as(&sql)
            .bind(scope.id())
            .bind(codec::to_i64(from_seq, "seq")?)
            .bind(codec::to_i64(to_seq.min(i64::MAX as u64), "seq")?)
            .bind(i64::from(limit.min(1000)))
            .fetch_all(&mut *tx)
            .await?;
        rows.into_iter().map(SignedCheckpoint::try_from).collect()
    }

    /// The scope's tenant's latest signed checkpoint.
    pub async fn latest_signed_checkpoint(
        &self,
        scope: &TenantScope,
    ) -> Result<Option<SignedCheckpoint>, StoreError> {
        let sql = format!(
            "SELECT {CHECKPOINT_COLUMNS} FROM evidence_checkpoints WHERE tenant_id = $1 \
             ORDER BY seq DESC LIMIT 1"
        );
        let mut tx = self.read_as(scope).await?;
        let row: Option<CheckpointRow> = sqlx::query_as(&sql)
            .bind(scope.id())
            .fetch_optional(&mut *tx)
            .await?;
        row.map(SignedCheckpoint::try_from).transpose()
    }

    /// Up to `limit` checkpoints of the scope's tenant no witness has countersigned yet,
    /// oldest first.
    pub async fn unwitnessed_checkpoints(
        &self,
        scope: &TenantScope,
        limit: u32,
    ) -> Result<Vec<SignedCheckpoint>, StoreError> {
        let sql = format!(
            "SELECT {CHECKPOINT_COLUMNS} FROM evidence_checkpoints \
             WHERE tenant_id = $1 AND witness_signature IS NULL ORDER BY seq LIMIT $2"
        );
        let mut tx = self.read_as(scope).await?;
        let rows: Vec<CheckpointRow> = sqlx::query_as(&sql)
            .bind(scope.id())
            .bind(i64::from(limit.min(1000)))
            .fetch_all(&mut *tx)
            .await?;
        rows.into_iter().map(SignedCheckpoint::try_from).collect()
    }

    /// Stores a witness's countersignature of the checkpoint at `seq`, after checking it.
    /// Invalid when it does not verify; false when the checkpoint is unknown or already
    /// countersigned (the first countersignature stays).
    pub async fn record_witness(
        &self,
        scope: &TenantScope,
        checkpoint: &SignedCheckpoint,
        witness: &Countersignature,
    ) -> Result<bool, StoreError> {
        checkpoint
            .check_countersignature(witness)
            .map_err(StoreError::Invalid)?;
        let mut tx = self.begin_tenant_write(scope).await?;
        let done = sqlx::query(
            "UPDATE evidence_checkpoints SET witness_key_id = $1, witness_public_key = $2, \
             witness_at = $3, witness_signature = $4, witness_attempts = witness_attempts + 1 \
             WHERE tenant_id = $5 AND seq = $6 AND signature = $7 AND witness_signature IS NULL",
        )
        .bind(&witness.witness_key_id)
        .bind(&witness.witness_public_key)
        .bind(witness.witness_at)
        .bind(&witness.witness_signature)
        .bind(scope.id())
        .bind(codec::to_i64(checkpoint.seq, "checkpoint seq")?)
        .bind(&checkpoint.signature)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    /// Counts one failed attempt to have the checkpoint at `seq` countersigned.
    pub async fn note_witness_failure(
        &self,
        scope: &TenantScope,
        seq: u64,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_tenant_write(scope).await?;
        sqlx::query(
            "UPDATE evidence_checkpoints SET witness_attempts = witness_attempts + 1 \
             WHERE tenant_id = $1 AND seq = $2",
        )
        .bind(scope.id())
        .bind(codec::to_i64(seq, "checkpoint seq")?)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The signed range statement of an export of the scope's tenant's entries with `from <=
    /// at < to`. Entries are taken by seq from the first at or after `from` to the last before
    /// `to`, so the range is one unbroken stretch of the chain. The range is linked to the
    /// first checkpoint at or after its last entry; when there is none yet, one is taken now.
    pub async fn export_range(
        &self,
        scope: &TenantScope,
        signer: &CheckpointSigner,
        from: i64,
        to: i64,
    ) -> Result<ExportRange, StoreError> {
        if to <= from {
            return Err(StoreError::Invalid(
                "the range's end must be after its start".into(),
            ));
        }
        let (first, last) = {
            let mut tx = self.read_as(scope).await?;
            let first: Option<i64> = sqlx::query_scalar(
                "SELECT MIN(seq) FROM audit_log WHERE tenant_id = $1 AND at >= $2",
            )
            .bind(scope.id())
            .bind(from)
            .fetch_one(&mut *tx)
            .await?;
            let last: Option<i64> = sqlx::query_scalar(
                "SELECT MAX(seq) FROM audit_log WHERE tenant_id = $1 AND at < $2",
            )
            .bind(scope.id())
            .bind(to)
            .fetch_one(&mut *tx)
            .await?;
            let head: Option<i64> =
                sqlx::query_scalar("SELECT MAX(seq) FROM audit_log WHERE tenant_id = $1")
                    .bind(scope.id())
                    .fetch_one(&mut *tx)
                    .await?;
            let head = codec::to_u64(head.unwrap_or(0), "audit seq")?;
            match (first, last) {
                (Some(f), Some(l)) if l >= f => (
                    codec::to_u64(f, "audit seq")?,
                    codec::to_u64(l, "audit seq")?,
                ),
                (Some(f), _) => {
                    let f = codec::to_u64(f, "audit seq")?;
                    (f, f - 1)
                }
                (None, _) => (head + 1, head),
            }
        };
        let (prev_hash, linked_through) = if first > last {
            let prev = if last == 0 {
                GENESIS_HASH.to_owned()
            } else {
                // Entry `last` may have been pruned; the entry after it then links to it.
                self.audit_entries(scope, last - 1, 1)
                    .await?
                    .pop()
                    .map(|e| if e.seq == last { e.hash } else { e.prev_hash })
                    .unwrap_or_else(|| GENESIS_HASH.to_owned())
            };
            (prev, last)
        } else {
            let entry = self
                .audit_entries(scope, first - 1, 1)
                .await?
                .pop()
                .ok_or_else(|| StoreError::Corrupt("the range's first entry vanished".into()))?;
            let mut link = self
                .signed_checkpoints(scope, last, u64::MAX, 1)
                .await?
                .pop();
            if link.is_none() {
                self.take_checkpoint(scope, signer).await?;
                link = self
                    .signed_checkpoints(scope, last, u64::MAX, 1)
                    .await?
                    .pop();
            }
            let link =
                link.ok_or_else(|| StoreError::Corrupt("no checkpoint covers the range".into()))?;
            (entry.prev_hash, link.seq)
        };
        let mut range = ExportRange {
            tenant: scope.tenant().clone(),
            from,
            to,
            first_seq: first,
            last_seq: last,
            linked_through,
            prev_hash,
            exported_at: self.now(),
            key_id: String::new(),
            signature: String::new(),
        };
        signer.sign_range(&mut range);
        Ok(range)
    }

    /// Streams the scope's tenant's evidence for `from <= at < to` into `out`, in the order a
    /// [`bundle::BundleWriter`] takes: the signed range ([`Store::export_range`]), each entry
    /// through the linking checkpoint, the runs the range's entries name, their approvals, the
    /// checkpoints from the range's first entry to the link, and the public keys. Entries are
    /// read a page of 1000 at a time; only the ids of the runs named are held. Stops quietly
    /// when `out` is closed. Returns the range.
    pub async fn export_evidence(
        &self,
        scope: &TenantScope,
        signer: &CheckpointSigner,
        from: i64,
        to: i64,
        out: &tokio::sync::mpsc::Sender<bundle::ExportLine>,
    ) -> Result<ExportRange, StoreError> {
        use bundle::ExportLine;
        let range = self.export_range(scope, signer, from, to).await?;
        let closed = |_| StoreError::Invalid("the export's reader went away".into());
        let send = |line| out.send(line);
        send(ExportLine::Range {
            range: range.clone(),
        })
        .await
        .map_err(closed)?;
        let mut runs = std::collections::BTreeSet::new();
        if !range.is_empty() {
            let mut after = range.first_seq - 1;
            while after < range.linked_through {
                let page = self.audit_entries(scope, after, 1000).await?;
                let Some(last) = page.last() else { break };
                after = last.seq;
                for entry in page {
                    if entry.seq > range.linked_through {
                        break;
                    }
                    if entry.seq <= range.last_seq {
                        runs.extend(entry.run_id);
                    }
                    send(ExportLine::Audit { entry }).await.map_err(closed)?;
                }
            }
        }
        for run in &runs {
            if let Some(record) = self.run(scope, *run).await? {
                send(ExportLine::Run {
                    run: to_json(&record)?,
                })
                .await
                .map_err(closed)?;
            }
        }
        for run in &runs {
            for approval in self.approvals_of_run(scope, *run).await? {
                send(ExportLine::Approval {
                    approval: to_json(&approval)?,
                })
                .await
                .map_err(closed)?;
            }
        }
        if !range.is_empty() {
            let mut next = range.first_seq;
            loop {
                let page = self
                    .signed_checkpoints(scope, next, range.linked_through, 1000)
                    .await?;
                let Some(last) = page.last() else { break };
                next = last.seq + 1;
                for checkpoint in page {
                    send(ExportLine::Checkpoint { checkpoint })
                        .await
                        .map_err(closed)?;
                }
            }
        }
        for key in self.evidence_keys().await? {
            send(ExportLine::Key { key }).await.map_err(closed)?;
        }
        Ok(range)
    }

    /// The scope's tenant's approvals of `run`, oldest first.
    pub async fn approvals_of_run(
        &self,
        scope: &TenantScope,
        run: RunId,
    ) -> Result<Vec<ApprovalRecord>, StoreError> {
        let mut ids: Vec<(i64, String)> = {
            let mut tx = self.read_as(scope).await?;
            sqlx::query_as(RUN_APPROVALS_SQL)
                .bind(scope.id())
                .bind(run.to_string())
                .fetch_all(&mut *tx)
                .await?
        };
        // Sorted here: asked to order them, SQLite's planner reads the tenant's approvals
        // in creation order through `approvals_by_tenant_created`, walking all of them.
        ids.sort_unstable();
        let mut out = Vec::with_capacity(ids.len());
        for (_, id) in ids {
            let id: ApprovalId = codec::approval_id(&id)?;
            if let Some(a) = self.approval(scope, id).await? {
                out.push(a);
            }
        }
        Ok(out)
    }
}

/// A record as JSON for the export stream.
fn to_json<T: Serialize>(value: &T) -> Result<serde_json::Value, StoreError> {
    serde_json::to_value(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// A run's approvals, each with when it was asked for: found through `approvals_by_run`.
const RUN_APPROVALS_SQL: &str =
    "SELECT created_at, id FROM approvals WHERE tenant_id = $1 AND run_id = $2";

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_runs_approvals_are_read_through_the_index_on_the_run() {
        let plan = Store::sqlite_plan(RUN_APPROVALS_SQL, 2).await;
        assert!(
            plan.iter().any(
                |step| step.contains("USING INDEX approvals_by_run (tenant_id=? AND run_id=?)")
            ),
            "{plan:?}"
        );
    }

    fn tenant() -> TenantId {
        TenantId::parse("us-acme").unwrap()
    }

    #[test]
    fn checkpoints_verify_and_any_changed_field_does_not() {
        let signer = CheckpointSigner::from_seed(&[7; 32], 1);
        let cp = signer.checkpoint(&tenant(), 5, &"a".repeat(64), 1000);
        let public = signer.public();
        assert!(public.key_id.starts_with("ek-"));
        verify_signature(&public.public_key, &cp.signed_bytes(), &cp.signature).unwrap();
        for change in 0..4 {
            let mut bad = cp.clone();
            match change {
                0 => bad.seq += 1,
                1 => bad.head_hash = "b".repeat(64),
                2 => bad.at += 1,
                _ => bad.tenant = TenantId::parse("eu-acme").unwrap(),
            }
            assert!(
                verify_signature(&public.public_key, &bad.signed_bytes(), &bad.signature).is_err()
            );
        }
    }

    #[test]
    fn malformed_keys_and_signatures_are_named() {
        let err = verify_signature("zz", b"m", "00").unwrap_err();
        assert!(err.contains("public key"), "{err}");
        let signer = CheckpointSigner::from_seed(&[1; 32], 1);
        let err = verify_signature(&signer.public().public_key, b"m", "abc").unwrap_err();
        assert!(err.contains("128 lowercase hex"), "{err}");
    }

    #[test]
    fn a_countersignature_must_match_its_key_id_and_bytes() {
        let signer = CheckpointSigner::from_seed(&[2; 32], 1);
        let witness = SigningKey::from_bytes(&[3; 32]);
        let cp = signer.checkpoint(&tenant(), 9, &"c".repeat(64), 50);
        let public = witness.verifying_key().to_bytes();
        let mut c = Countersignature {
            witness_key_id: key_id_for("wk-", &public),
            witness_public_key: hex::encode(public),
            witness_at: 60,
            witness_signature: hex::encode(witness.sign(&cp.witness_bytes(60)).to_bytes()),
        };
        cp.check_countersignature(&c).unwrap();
        c.witness_at = 61;
        assert!(cp.check_countersignature(&c).is_err());
        c.witness_at = 60;
        c.witness_key_id = "wk-0000000000000000".into();
        assert!(
            cp.check_countersignature(&c)
                .unwrap_err()
                .contains("does not belong")
        );
    }
}
