//! Standard Webhooks deliveries as a sender makes them: an id, a timestamp, a signature over
//! `{id}.{timestamp}.{body}` and the exact body bytes.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;
use steward_adapters::webhook::{WebhookSecret, sign_standard};
use steward_core::RunId;

/// One delivery, ready to send. Every part can be altered before sending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// `webhook-id`.
    pub id: String,
    /// `webhook-timestamp`, as sent.
    pub timestamp: String,
    /// `webhook-signature`.
    pub signature: String,
    /// The body bytes.
    pub body: Vec<u8>,
}

impl Delivery {
    /// A delivery with a new id, signed with `whsec` at `timestamp`.
    pub fn new(whsec: &str, timestamp: i64, body: Vec<u8>) -> Self {
        Self::signed(whsec, &new_delivery_id(), timestamp, body)
    }

    /// A delivery with the given id, signed with `whsec` at `timestamp`.
    pub fn signed(whsec: &str, id: &str, timestamp: i64, body: Vec<u8>) -> Self {
        let key = WebhookSecret::parse(whsec).expect("the harness makes valid whsec_ secrets");
        Self {
            id: id.to_owned(),
            timestamp: timestamp.to_string(),
            signature: sign_standard(&key, id, timestamp, &body),
            body,
        }
    }

    /// A delivery whose timestamp header is any text (`NaN`, say), signed over that text with
    /// `whsec`: the signature is right for what is sent, so only the timestamp can be wrong.
    pub fn with_raw_timestamp(whsec: &str, timestamp: &str, body: Vec<u8>) -> Self {
        let id = new_delivery_id();
        let encoded = whsec.strip_prefix("whsec_").expect("a whsec_ secret");
        let key = STANDARD.decode(encoded).expect("a base64 key");
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes any key");
        mac.update(format!("{id}.{timestamp}.").as_bytes());
        mac.update(&body);
        let tag = STANDARD.encode(mac.finalize().into_bytes());
        Self {
            id,
            timestamp: timestamp.to_owned(),
            signature: format!("v1,{tag}"),
            body,
        }
    }
}

/// A delivery id in the `msg_…` style senders use, unique per call.
pub fn new_delivery_id() -> String {
    format!("msg_{}", RunId::new().to_string().replace('-', ""))
}

/// The body a ServiceNow business rule sends when an incident is created.
pub fn incident_event(sys_id: &str, number: &str, title: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "event": "incident.created",
        "incident": {"sys_id": sys_id, "number": number, "short_description": title},
    }))
    .expect("a JSON value serializes")
}
