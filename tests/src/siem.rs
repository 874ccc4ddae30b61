//! A stand-in for a tenant's SIEM: an HTTP server on loopback that takes Steward's batches of
//! audit entries (`POST /ingest`, `application/x-ndjson`, signed per Standard Webhooks),
//! verifies each batch's signature with the secrets it was given, and records the batches it
//! accepted, marking a `webhook-id` seen before as a duplicate. It can be told to fail the next
//! N batches with a status, to answer one status until told otherwise, or to hang: record a
//! batch and then hold the answer, as a receiver whose acknowledgement never arrives.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use steward_adapters::webhook::{
    ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, WebhookSecret, verify_standard_any,
};
use steward_persistence::AuditEntry;

/// One accepted batch.
#[derive(Debug, Clone)]
pub struct ReceivedBatch {
    /// The `webhook-id`.
    pub id: String,
    /// The raw `webhook-signature` header.
    pub signature: String,
    /// The entries, in the order of the lines.
    pub entries: Vec<AuditEntry>,
    /// Whether this `webhook-id` had been accepted before (a redelivery).
    pub duplicate: bool,
}

#[derive(Default)]
struct Control {
    /// Secrets a batch may be signed with.
    secrets: Vec<String>,
    /// The next this many batches get `fail_status`.
    fail_next: u32,
    fail_status: u16,
    /// Every batch gets this status while set.
    always: Option<u16>,
    /// Every batch is held this long before it is answered while set.
    hang: Option<Duration>,
    batches: Vec<ReceivedBatch>,
    seen: BTreeSet<String>,
    /// Batches refused for a bad signature, content type or body.
    refused: u32,
    /// Requests received, answered or not.
    requests: u32,
}

/// A running stand-in SIEM.
pub struct SiemStandIn {
    pub addr: SocketAddr,
    control: Arc<Mutex<Control>>,
    task: tokio::task::JoinHandle<()>,
}

impl SiemStandIn {
    /// Starts a receiver on a loopback port; give it secrets with [`SiemStandIn::trust`].
    pub async fn start() -> Self {
        let control = Arc::new(Mutex::new(Control::default()));
        let app = axum::Router::new()
            .route("/ingest", axum::routing::post(ingest))
            .with_state(control.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            addr,
            control,
            task,
        }
    }

    /// The URL to configure: `http://127.0.0.1:PORT/ingest`.
    pub fn url(&self) -> String {
        format!("http://{}/ingest", self.addr)
    }

    fn with<T>(&self, f: impl FnOnce(&mut Control) -> T) -> T {
        f(&mut self.control.lock().unwrap())
    }

    /// Accepts batches signed with `secret` too.
    pub fn trust(&self, secret: &str) {
        self.with(|c| c.secrets.push(secret.to_owned()));
    }

    /// Accepts batches signed with only this secret from now on.
    pub fn trust_only(&self, secret: &str) {
        self.with(|c| c.secrets = vec![secret.to_owned()]);
    }

    /// Answers the next `n` batches with `status` (without recording them).
    pub fn fail_next(&self, n: u32, status: u16) {
        self.with(|c| {
            c.fail_next = n;
            c.fail_status = status;
        });
    }

    /// Answers every batch with `status` until called with None.
    pub fn always(&self, status: Option<u16>) {
        self.with(|c| c.always = status);
    }

    /// Holds every request for `delay` before answering, until called with None.
    pub fn hang(&self, delay: Option<Duration>) {
        self.with(|c| c.hang = delay);
    }

    /// The accepted batches, in arrival order.
    pub fn batches(&self) -> Vec<ReceivedBatch> {
        self.with(|c| c.batches.clone())
    }

    /// Every entry of the accepted batches that were not duplicates, in arrival order.
    pub fn entries(&self) -> Vec<AuditEntry> {
        self.with(|c| {
            c.batches
                .iter()
                .filter(|b| !b.duplicate)
                .flat_map(|b| b.entries.clone())
                .collect()
        })
    }

    /// The highest seq received.
    pub fn last_seq(&self) -> u64 {
        self.entries().last().map_or(0, |e| e.seq)
    }

    /// Batches refused for a bad signature, content type or body.
    pub fn refused(&self) -> u32 {
        self.with(|c| c.refused)
    }

    /// Requests received.
    pub fn requests(&self) -> u32 {
        self.with(|c| c.requests)
    }
}

impl Drop for SiemStandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

async fn ingest(
    State(control): State<Arc<Mutex<Control>>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let hang = {
        let mut c = control.lock().unwrap();
        c.requests += 1;
        match accept(&mut c, &headers, &body) {
            Ok(()) => c.hang,
            Err(answer) => return answer.into_response(),
        }
    };
    if let Some(delay) = hang {
        tokio::time::sleep(delay).await;
    }
    StatusCode::NO_CONTENT.into_response()
}

/// The status and text a batch that is not accepted gets.
type Refusal = (StatusCode, &'static str);

/// Checks and records one batch; the answer to give when it is not accepted.
fn accept(c: &mut Control, headers: &HeaderMap, body: &[u8]) -> Result<(), Refusal> {
    if let Some(status) = c.always {
        return Err((StatusCode::from_u16(status).unwrap(), "told to fail"));
    }
    if c.fail_next > 0 {
        c.fail_next -= 1;
        return Err((StatusCode::from_u16(c.fail_status).unwrap(), "told to fail"));
    }
    let secrets: Vec<WebhookSecret> = c
        .secrets
        .iter()
        .map(|s| WebhookSecret::parse(s).unwrap())
        .collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let verified = verify_standard_any(
        &secrets,
        header(headers, ID_HEADER),
        header(headers, TIMESTAMP_HEADER),
        header(headers, SIGNATURE_HEADER),
        body,
        now,
    );
    let Ok(verified) = verified else {
        c.refused += 1;
        return Err((StatusCode::UNAUTHORIZED, "bad signature"));
    };
    if header(headers, "content-type") != Some("application/x-ndjson") {
        c.refused += 1;
        let answer = (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "want application/x-ndjson",
        );
        return Err(answer);
    }
    let mut entries = Vec::new();
    for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        match serde_json::from_slice::<AuditEntry>(line) {
            Ok(entry) => entries.push(entry),
            Err(_) => {
                c.refused += 1;
                let answer = (StatusCode::BAD_REQUEST, "a line is not an audit entry");
                return Err(answer);
            }
        }
    }
    let duplicate = !c.seen.insert(verified.id.clone());
    c.batches.push(ReceivedBatch {
        id: verified.id,
        signature: header(headers, SIGNATURE_HEADER)
            .unwrap_or_default()
            .to_owned(),
        entries,
        duplicate,
    });
    Ok(())
}
