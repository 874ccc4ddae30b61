//! Sending signed checkpoints to an external witness for countersigning.
//!
//! The witness takes `POST <url>` with a checkpoint as JSON (`tenant, seq, head_hash, at,
//! key_id, signature`) and answers `{witness_key_id, witness_public_key, witness_at,
//! witness_signature}`: ed25519 over the checkpoint's witness bytes
//! (`SignedCheckpoint::witness_bytes`). Each answer is checked before it is stored. A witness
//! that is down never blocks the log: the checkpoint stays unwitnessed, counted, and is sent
//! again on the next round.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use steward_persistence::{Countersignature, SignedCheckpoint, Store, StoreError, TenantScope};
use url::Url;

/// The largest witness answer read.
const MAX_ANSWER_BYTES: usize = 16 * 1024;
/// Checkpoints sent per tenant per round.
const PER_ROUND: u32 = 100;

/// A witness client.
#[derive(Clone, Debug)]
pub struct Witness {
    http: reqwest::Client,
    url: Url,
    attempts: usize,
}

impl Witness {
    /// A client of the witness at `url`, each request bounded by `timeout`, each checkpoint
    /// tried up to `attempts` times per round.
    pub fn new(url: Url, timeout: Duration, attempts: usize) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            http,
            url,
            attempts: attempts.max(1),
        })
    }

    /// One attempt at having `checkpoint` countersigned; the answer is checked.
    pub async fn countersign(
        &self,
        checkpoint: &SignedCheckpoint,
    ) -> Result<Countersignature, String> {
        let response = self
            .http
            .post(self.url.clone())
            .json(&checkpoint.witness_request())
            .send()
            .await
            .map_err(|e| format!("the witness did not answer: {e}"))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("the witness answered {status}"));
        }
        if response
            .content_length()
            .is_some_and(|n| n > MAX_ANSWER_BYTES as u64)
        {
            return Err("the witness's answer is too large".into());
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| format!("reading the witness's answer: {e}"))?;
        if body.len() > MAX_ANSWER_BYTES {
            return Err("the witness's answer is too large".into());
        }
        let answer: Countersignature = serde_json::from_slice(&body)
            .map_err(|e| format!("the witness's answer is malformed: {e}"))?;
        checkpoint.check_countersignature(&answer)?;
        Ok(answer)
    }

    /// Sends the scope's tenant's unwitnessed checkpoints, oldest first, retrying each a few
    /// times; stops at the first that still fails (the witness is likely down) and leaves the
    /// rest for the next round. Returns how many were countersigned.
    pub async fn send_pending(
        &self,
        store: &Store,
        scope: &TenantScope,
    ) -> Result<usize, StoreError> {
        let mut done = 0;
        for checkpoint in store.unwitnessed_checkpoints(scope, PER_ROUND).await? {
            let backoff = ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(200))
                .with_max_delay(Duration::from_secs(5))
                .with_max_times(self.attempts - 1)
                .with_jitter();
            match (|| self.countersign(&checkpoint)).retry(backoff).await {
                Ok(answer) => {
                    store.record_witness(scope, &checkpoint, &answer).await?;
                    done += 1;
                }
                Err(why) => {
                    tracing::warn!(tenant = %scope.tenant(), seq = checkpoint.seq, reason = %why,
                        "The witness did not countersign a checkpoint; it is sent again later.");
                    store.note_witness_failure(scope, checkpoint.seq).await?;
                    break;
                }
            }
        }
        Ok(done)
    }
}
