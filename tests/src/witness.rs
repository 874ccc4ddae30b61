//! A stand-in for an external evidence witness: an HTTP server on loopback with its own ed25519
//! key that countersigns the checkpoints posted to it, in the witness wire format (`POST /`
//! with `{tenant, seq, head_hash, at, key_id, signature}`, answer `{witness_key_id,
//! witness_public_key, witness_at, witness_signature}`). It can be switched to answer 503, as a
//! witness in an outage would.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ed25519_dalek::{Signer, SigningKey};
use steward_persistence::evidence::key_id_for;
use steward_persistence::{Countersignature, WitnessRequest};

#[derive(Clone)]
struct Inner {
    key: Arc<SigningKey>,
    down: Arc<AtomicBool>,
    requests: Arc<AtomicU64>,
}

/// A running stand-in witness.
pub struct WitnessStandIn {
    pub addr: SocketAddr,
    inner: Inner,
    task: tokio::task::JoinHandle<()>,
}

impl WitnessStandIn {
    /// Starts a witness with a key from `seed` on a loopback port.
    pub async fn start(seed: [u8; 32]) -> Self {
        let inner = Inner {
            key: Arc::new(SigningKey::from_bytes(&seed)),
            down: Arc::new(AtomicBool::new(false)),
            requests: Arc::new(AtomicU64::new(0)),
        };
        let app = axum::Router::new()
            .route("/", axum::routing::post(countersign))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, inner, task }
    }

    pub fn url(&self) -> url::Url {
        url::Url::parse(&format!("http://{}/", self.addr)).unwrap()
    }

    /// The witness's public key, hex.
    pub fn public_key(&self) -> String {
        hex::encode(self.inner.key.verifying_key().to_bytes())
    }

    /// Makes every answer a 503 (true) or a countersignature (false).
    pub fn set_down(&self, down: bool) {
        self.inner.down.store(down, Ordering::SeqCst);
    }

    /// Requests received so far.
    pub fn requests(&self) -> u64 {
        self.inner.requests.load(Ordering::SeqCst)
    }
}

impl Drop for WitnessStandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn countersign(State(inner): State<Inner>, body: axum::body::Bytes) -> Response {
    inner.requests.fetch_add(1, Ordering::SeqCst);
    if inner.down.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let Ok(request) = serde_json::from_slice::<WitnessRequest>(&body) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let checkpoint = request.checkpoint();
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let public = inner.key.verifying_key().to_bytes();
    Json(Countersignature {
        witness_key_id: key_id_for("wk-", &public),
        witness_public_key: hex::encode(public),
        witness_at: at,
        witness_signature: hex::encode(inner.key.sign(&checkpoint.witness_bytes(at)).to_bytes()),
    })
    .into_response()
}
