//! Streaming each tenant's audit entries to its SIEM as they are written.
//!
//! One streamer runs per region's deployment. Every poll it lists the tenants with a stream
//! (`PUT /v1/tenant/siem`) and keeps one follower task per tenant, so a SIEM that hangs delays
//! only its own tenant. A follower reads the entries after the stream's durable cursor, posts
//! them as one batch (at most [`MAX_BATCH_ENTRIES`] entries or [`MAX_BATCH_BYTES`] of body),
//! and moves the cursor only after a 2xx; otherwise it retries the same batch with capped,
//! jittered exponential backoff, never skipping an entry. The last seq of a batch is stored
//! before it is first sent, so every retry, also after a restart, sends the same entries under
//! the same `webhook-id` (`{tenant}-{first_seq}-{last_seq}`): delivery is at-least-once, and
//! the receiver deduplicates on the id.
//!
//! The wire format: `POST <url>`, `Content-Type: application/x-ndjson`, one audit entry a line
//! in the JSON shape of the evidence export's `audit.jsonl` (so the SIEM can verify the chain
//! with [`steward_persistence::verify_entries`]'s rules), signed per Standard Webhooks
//! (`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256>`). While a
//! rotated secret's 24 h overlap lasts, the header carries a signature under each valid secret,
//! newest first, separated by a space.
//!
//! An answer of 408, 429, 5xx or no answer at all is transient; any other 4xx (or a 3xx, as
//! redirects are not followed) means the SIEM refuses the batch. Both mark the stream failing
//! (shown by `GET /v1/tenant/siem`, counted in `steward_siem_delivery_failures`) and are retried
//! at the capped interval: a refusal is usually a setting to fix on the SIEM's side, after which
//! delivery resumes by itself. `steward_siem_lag_entries` is the number of entries not yet
//! acknowledged, and `steward_siem_oldest_unacknowledged_timestamp_seconds` when the oldest of
//! them was appended (0 when none waits).
//!
//! New entries are found by polling, every [`SiemOptions::poll`] (250 ms by default): one
//! keyed read per tenant per poll. An offboarded tenant's stream stops (its signing secret was
//! destroyed with its other secrets).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use secrecy::ExposeSecret;
use steward_adapters::egress::EgressKind;
use steward_adapters::http::{HttpSettings, error_chain, send_capped};
use steward_adapters::webhook::{
    ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, WebhookSecret, sign_standard,
};
use steward_core::{Region, TenantId};
use steward_persistence::{
    AuditEntry, Authenticator, MAX_SIEM_URL_BYTES, MasterKey, SIEM_SECRET, Store, StoreError,
    TenantScope,
};
use tokio::task::{JoinHandle, JoinSet};
use url::Url;

use crate::metrics::Metrics;

/// The most entries one batch holds.
pub const MAX_BATCH_ENTRIES: usize = 500;
/// The largest batch body, in bytes. An entry whose line alone is larger is sent as a batch
/// of one (an audit body is at most 1 MiB of JSON, so such a line is rare and bounded).
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;
/// The media type of a batch.
pub const CONTENT_TYPE: &str = "application/x-ndjson";
/// The largest SIEM answer read; its body is only kept for the error message.
const MAX_ANSWER_BYTES: usize = 16 * 1024;
/// How much of a refusing answer's body is kept in the error shown by `GET`.
const ERROR_BODY_CHARS: usize = 200;

/// How the streamer polls and backs off.
#[derive(Debug, Clone)]
pub struct SiemOptions {
    /// How often each follower looks for new entries, and the streamer for new streams.
    pub poll: Duration,
    /// The first retry delay after a failed batch.
    pub min_delay: Duration,
    /// The cap of the retry delay (jitter adds up to one more delay on top).
    pub max_delay: Duration,
}

impl Default for SiemOptions {
    fn default() -> Self {
        Self {
            poll: Duration::from_millis(250),
            min_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(60),
        }
    }
}

/// The one check of a SIEM URL, when it is set and before each batch: at most 2048 bytes, an
/// absolute `http` or `https` URL with a host and without credentials or a fragment,
/// `https://` while `https_only`, and a host on the region's `siem` egress list.
pub fn check_siem_url(http: &HttpSettings, region: Region, url: &str) -> Result<Url, String> {
    if url.len() > MAX_SIEM_URL_BYTES {
        return Err(format!(
            "the SIEM URL is longer than {MAX_SIEM_URL_BYTES} bytes"
        ));
    }
    let parsed = Url::parse(url).map_err(|e| format!("the SIEM URL does not parse: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("the SIEM URL must be an http or https URL".into());
    }
    if http.https_only && parsed.scheme() != "https" {
        return Err(
            "the SIEM URL must be https://: plain HTTP is allowed only in the dev profile and \
             test setups"
                .into(),
        );
    }
    let Some(host) = parsed.host_str() else {
        return Err("the SIEM URL has no host".into());
    };
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("the SIEM URL may not carry credentials".into());
    }
    if parsed.fragment().is_some() {
        return Err("the SIEM URL may not have a fragment".into());
    }
    if !http
        .egress
        .region(region)
        .kind(EgressKind::Siem)
        .iter()
        .any(|p| p.matches(host))
    {
        return Err(format!(
            "the SIEM endpoint host {host} is not allowed for tenants homed in {region}"
        ));
    }
    Ok(parsed)
}

/// A batch ready to post: the entries `first_seq..=last_seq`, one JSON line each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub first_seq: u64,
    pub last_seq: u64,
    pub entries: usize,
    pub body: Vec<u8>,
}

impl Batch {
    /// The batch's stable `webhook-id`: `{tenant}-{first_seq}-{last_seq}`.
    pub fn id(&self, tenant: &TenantId) -> String {
        format!("{tenant}-{}-{}", self.first_seq, self.last_seq)
    }
}

/// Packs consecutive entries, from the first, into one batch of at most [`MAX_BATCH_ENTRIES`]
/// entries and [`MAX_BATCH_BYTES`] (but always at least the first entry). None when
/// `entries` is empty.
pub fn pack(entries: &[AuditEntry]) -> Result<Option<Batch>, serde_json::Error> {
    let Some(first) = entries.first() else {
        return Ok(None);
    };
    let mut body = Vec::new();
    let mut batch = Batch {
        first_seq: first.seq,
        last_seq: first.seq,
        entries: 0,
        body: Vec::new(),
    };
    for entry in entries.iter().take(MAX_BATCH_ENTRIES) {
        let mut line = serde_json::to_vec(entry)?;
        line.push(b'\n');
        if batch.entries > 0 && body.len() + line.len() > MAX_BATCH_BYTES {
            break;
        }
        body.extend_from_slice(&line);
        batch.last_seq = entry.seq;
        batch.entries += 1;
    }
    batch.body = body;
    Ok(Some(batch))
}

/// The `webhook-signature` value: a `v1,` signature under each secret, space-separated.
pub fn signature_header(
    secrets: &[WebhookSecret],
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    secrets
        .iter()
        .map(|s| sign_standard(s, id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Why a batch was not acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// No answer, 408, 429 or 5xx: the SIEM is down or busy.
    Transient(String),
    /// Another 4xx, or a 3xx: the SIEM refuses the batch or the setting is wrong.
    Refused(String),
}

impl Failure {
    fn message(&self) -> &str {
        match self {
            Failure::Transient(m) | Failure::Refused(m) => m,
        }
    }
}

/// What one step of a follower did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing after the cursor.
    UpToDate,
    /// The SIEM acknowledged the entries through this seq.
    Delivered(u64),
}

/// The SIEM streamer of this deployment's region.
#[derive(Clone)]
pub struct SiemStreamer {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    master: Arc<MasterKey>,
    metrics: Metrics,
    options: SiemOptions,
    /// Timeouts, `https_only`, and the egress lists each URL is checked against again before
    /// each batch.
    settings: HttpSettings,
    http: reqwest::Client,
}

impl std::fmt::Debug for SiemStreamer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SiemStreamer")
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

impl SiemStreamer {
    /// A streamer over `store`, opening signing secrets with `master` and making requests
    /// as `settings` say.
    pub fn new(
        store: Store,
        master: Arc<MasterKey>,
        metrics: Metrics,
        settings: HttpSettings,
        options: SiemOptions,
    ) -> Result<Self, reqwest::Error> {
        let http = steward_adapters::http::client(&settings)?;
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                master,
                metrics,
                options,
                settings,
                http,
            }),
        })
    }

    /// Starts the streamer: every poll it starts a follower for each tenant with a stream
    /// that has none running. Aborting the handle stops the followers too.
    pub fn spawn(self) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut followers: HashMap<TenantId, tokio::task::AbortHandle> = HashMap::new();
            let mut tasks = JoinSet::new();
            loop {
                while let Some(done) = tasks.try_join_next() {
                    if let Ok(tenant) = done {
                        followers.remove(&tenant);
                    }
                }
                followers.retain(|_, handle| !handle.is_finished());
                match self.inner.store.siem_tenants().await {
                    Ok(tenants) => {
                        for tenant in tenants {
                            if followers.contains_key(&tenant) {
                                continue;
                            }
                            let me = self.clone();
                            let id = tenant.clone();
                            let handle = tasks.spawn(async move {
                                me.follow(&id).await;
                                id
                            });
                            followers.insert(tenant, handle);
                        }
                    }
                    Err(e) => {
                        let what = "Listing the tenants with a SIEM stream failed.";
                        tracing::error!(error = %e, "{what}");
                    }
                }
                tokio::time::sleep(self.inner.options.poll).await;
            }
        })
    }

    fn backoff(&self) -> ExponentialBackoff {
        ExponentialBuilder::default()
            .with_min_delay(self.inner.options.min_delay)
            .with_max_delay(self.inner.options.max_delay)
            .without_max_times()
            .with_jitter()
            .build()
    }

    /// Follows one tenant's stream until it is removed or the tenant is offboarded.
    async fn follow(&self, tenant: &TenantId) {
        let scope = TenantScope::assume(tenant.clone(), Authenticator::Operator);
        let store = &self.inner.store;
        let mut backoff: Option<ExponentialBackoff> = None;
        loop {
            let result = self.step(&scope).await;
            let wait = match result {
                Ok(Some(Step::Delivered(_))) => {
                    backoff = None;
                    continue;
                }
                Ok(Some(Step::UpToDate)) => {
                    backoff = None;
                    self.inner.options.poll
                }
                Ok(None) => {
                    self.inner.metrics.clear_siem_lag(tenant);
                    return;
                }
                Err(StepError::Store(e)) => {
                    tracing::error!(%tenant, error = %e, "Reading the SIEM stream failed.");
                    self.inner.options.max_delay.min(Duration::from_secs(5))
                }
                Err(StepError::Delivery(failure)) => {
                    self.inner.metrics.siem_delivery_failed(tenant);
                    tracing::warn!(%tenant, reason = %failure.message(),
                        "The SIEM did not acknowledge a batch; it is sent again.");
                    if let Err(e) = store.note_siem_failure(&scope, failure.message()).await {
                        tracing::error!(%tenant, error = %e, "Recording a SIEM failure failed.");
                    }
                    let delays = backoff.get_or_insert_with(|| self.backoff());
                    delays.next().unwrap_or(self.inner.options.max_delay)
                }
            };
            if matches!(store.tenant_offboarded(tenant).await, Ok(true)) {
                self.inner.metrics.clear_siem_lag(tenant);
                return;
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// One attempt for the scope's tenant: reads the entries after the cursor and, if there
    /// are any, posts one batch and moves the cursor past it on a 2xx. None when the tenant
    /// has no stream (any more).
    pub async fn step(&self, scope: &TenantScope) -> Result<Option<Step>, StepError> {
        let store = &self.inner.store;
        let Some(stream) = store.siem_stream(scope).await? else {
            return Ok(None);
        };
        let head = store.audit_head_seq(scope).await?;
        let tenant = scope.tenant();
        self.inner
            .metrics
            .set_siem_lag(tenant, head.saturating_sub(stream.delivered_seq));
        if head <= stream.delivered_seq {
            self.inner
                .metrics
                .set_siem_oldest_unacknowledged(tenant, None);
            return Ok(Some(Step::UpToDate));
        }
        let mut entries = store
            .audit_entries(scope, stream.delivered_seq, MAX_BATCH_ENTRIES as u32)
            .await?;
        let oldest = entries.first().map(|e| e.at);
        self.inner
            .metrics
            .set_siem_oldest_unacknowledged(tenant, oldest);
        // A batch already sent once is sent again with exactly its entries, so its id holds.
        if let Some(pending) = stream.pending_seq {
            entries.retain(|e| e.seq <= pending);
        }
        let batch = pack(&entries)
            .map_err(|e| StepError::Store(StoreError::Invalid(e.to_string())))?
            .ok_or(StepError::Store(StoreError::Invalid(
                "the chain's head is past the cursor, yet no entry follows it".into(),
            )))?;
        if batch.first_seq != stream.delivered_seq + 1 {
            return Err(StepError::Store(StoreError::Corrupt(format!(
                "the entry after the SIEM cursor {} is seq {}",
                stream.delivered_seq, batch.first_seq
            ))));
        }
        let url = check_siem_url(&self.inner.settings, tenant.region(), &stream.url)
            .map_err(|why| StepError::Delivery(Failure::Refused(why)))?;
        let secrets = self.secrets(scope).await?;
        if stream.pending_seq.is_none() {
            store.set_siem_pending(scope, batch.last_seq).await?;
        }
        self.post(&url, tenant, &batch, &secrets)
            .await
            .map_err(StepError::Delivery)?;
        store.advance_siem_cursor(scope, batch.last_seq).await?;
        self.inner
            .metrics
            .set_siem_lag(tenant, head.saturating_sub(batch.last_seq));
        if head <= batch.last_seq {
            self.inner
                .metrics
                .set_siem_oldest_unacknowledged(tenant, None);
        }
        Ok(Some(Step::Delivered(batch.last_seq)))
    }

    /// Every valid signing secret of the scope's tenant, newest first.
    async fn secrets(&self, scope: &TenantScope) -> Result<Vec<WebhookSecret>, StepError> {
        let values = self
            .inner
            .store
            .valid_secrets(scope, &self.inner.master, SIEM_SECRET)
            .await?;
        let secrets: Vec<WebhookSecret> = values
            .iter()
            .filter_map(|v| WebhookSecret::parse(v.expose_secret()).ok())
            .collect();
        if secrets.is_empty() {
            return Err(StepError::Delivery(Failure::Refused(
                "the SIEM signing secret is missing; configure the stream again".into(),
            )));
        }
        Ok(secrets)
    }

    /// Posts one signed batch; Ok on a 2xx.
    async fn post(
        &self,
        url: &Url,
        tenant: &TenantId,
        batch: &Batch,
        secrets: &[WebhookSecret],
    ) -> Result<(), Failure> {
        let id = batch.id(tenant);
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let signature = signature_header(secrets, &id, timestamp, &batch.body);
        let request = self
            .inner
            .http
            .post(url.clone())
            .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
            .header(ID_HEADER, &id)
            .header(TIMESTAMP_HEADER, timestamp.to_string())
            .header(SIGNATURE_HEADER, signature)
            .body(batch.body.clone());
        let reply = send_capped(request, MAX_ANSWER_BYTES).await.map_err(|e| {
            Failure::Transient(format!("the SIEM did not answer: {}", error_chain(&e)))
        })?;
        let status = reply.status;
        if status.is_success() {
            return Ok(());
        }
        let text: String = reply.body_text().chars().take(ERROR_BODY_CHARS).collect();
        let message = format!("the SIEM answered {status}: {text}");
        let transient = status.is_server_error()
            || status == reqwest::StatusCode::REQUEST_TIMEOUT
            || status == reqwest::StatusCode::TOO_MANY_REQUESTS;
        Err(if transient {
            Failure::Transient(message)
        } else {
            Failure::Refused(message)
        })
    }
}

/// Why a follower step did not finish.
#[derive(Debug)]
pub enum StepError {
    /// The store failed; nothing was sent, or the cursor did not move.
    Store(StoreError),
    /// The batch was not acknowledged.
    Delivery(Failure),
}

impl From<StoreError> for StepError {
    fn from(e: StoreError) -> Self {
        StepError::Store(e)
    }
}

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StepError::Store(e) => write!(f, "{e}"),
            StepError::Delivery(failure) => f.write_str(failure.message()),
        }
    }
}

impl std::error::Error for StepError {}

#[cfg(test)]
mod tests {
    use super::*;
    use steward_adapters::webhook::verify_standard_any;
    use steward_persistence::GENESIS_HASH;

    fn entry(seq: u64, body: &str) -> AuditEntry {
        AuditEntry {
            tenant: TenantId::parse("us-acme").expect("tenant id"),
            seq,
            at: 1,
            kind: "k".into(),
            run_id: None,
            actor: "a".into(),
            body: body.into(),
            sealed: None,
            prev_hash: GENESIS_HASH.into(),
            hash: String::new(),
        }
    }

    #[test]
    fn batches_stop_at_the_entry_count_and_the_byte_bound() {
        let many: Vec<_> = (1..=600).map(|s| entry(s, "{}")).collect();
        let b = pack(&many).unwrap().unwrap();
        assert_eq!((b.first_seq, b.last_seq, b.entries), (1, 500, 500));
        assert_eq!(b.body.iter().filter(|c| **c == b'\n').count(), 500);

        let big = format!("{{\"x\":\"{}\"}}", "a".repeat(400 * 1024));
        let large: Vec<_> = (1..=5).map(|s| entry(s, &big)).collect();
        let b = pack(&large).unwrap().unwrap();
        assert_eq!(b.entries, 2);
        assert!(b.body.len() <= MAX_BATCH_BYTES);

        let huge = format!("{{\"x\":\"{}\"}}", "a".repeat(MAX_BATCH_BYTES));
        let b = pack(&[entry(7, &huge), entry(8, "{}")]).unwrap().unwrap();
        assert_eq!(
            (b.first_seq, b.last_seq),
            (7, 7),
            "an oversized entry goes alone"
        );
        assert!(pack(&[]).unwrap().is_none());
    }

    #[test]
    fn lines_are_the_export_shape_and_signatures_verify_under_each_secret() {
        let b = pack(&[entry(1, "{}"), entry(2, "{}")]).unwrap().unwrap();
        for line in b.body.split(|c| *c == b'\n').filter(|l| !l.is_empty()) {
            let back: AuditEntry = serde_json::from_slice(line).unwrap();
            assert_eq!(back.kind, "k");
        }
        let (new, old) = (WebhookSecret::generate(), WebhookSecret::generate());
        let secrets = [
            WebhookSecret::parse(&new).unwrap(),
            WebhookSecret::parse(&old).unwrap(),
        ];
        let tenant = TenantId::parse("us-acme").unwrap();
        let id = b.id(&tenant);
        assert_eq!(id, "us-acme-1-2");
        let header = signature_header(&secrets, &id, 1_700_000_000, &b.body);
        assert_eq!(header.split(' ').count(), 2);
        for secret in &secrets {
            verify_standard_any(
                std::slice::from_ref(secret),
                Some(&id),
                Some("1700000000"),
                Some(&header),
                &b.body,
                1_700_000_000,
            )
            .unwrap();
        }
    }

    #[test]
    fn urls_are_checked_for_scheme_host_credentials_and_egress() {
        let mut http = HttpSettings::default();
        let us = Region::Us;
        assert!(check_siem_url(&http, us, "http://127.0.0.1:9/ingest").is_ok());
        assert!(check_siem_url(&http, us, "http://localhost:9/").is_ok());
        for bad in [
            "not a url",
            "ftp://127.0.0.1/x",
            "http://user:pw@127.0.0.1/x",
            "http://127.0.0.1/x#frag",
            "http://siem.example.com/x",
            "http://10.0.0.1/x",
            "unix:/run/siem.sock",
        ] {
            assert!(check_siem_url(&http, us, bad).is_err(), "{bad}");
        }
        let long = format!("http://127.0.0.1/{}", "a".repeat(MAX_SIEM_URL_BYTES));
        assert!(check_siem_url(&http, us, &long).is_err());
        http.https_only = true;
        let err = check_siem_url(&http, us, "http://127.0.0.1:9/").unwrap_err();
        assert!(err.contains("https"), "{err}");
        assert!(check_siem_url(&http, us, "https://127.0.0.1:9/").is_ok());
        http.egress = steward_adapters::egress::Egress::default();
        assert!(check_siem_url(&http, us, "https://127.0.0.1:9/").is_err());
        // An operator's `siem` list opens exactly its hosts, in its region only.
        http.egress.us.siem =
            vec![steward_adapters::egress::HostPattern::parse("siem.example.com").unwrap()];
        assert!(check_siem_url(&http, us, "https://siem.example.com/ingest").is_ok());
        assert!(check_siem_url(&http, us, "https://other.example.com/ingest").is_err());
        assert!(check_siem_url(&http, Region::Eu, "https://siem.example.com/ingest").is_err());
    }
}
