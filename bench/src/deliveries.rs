//! Signed webhook deliveries: JSON bodies of about 2 KiB naming an incident, each with its own
//! delivery id, signed with Standard Webhooks for the tenant they are posted to.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use steward_adapters::webhook::{WebhookSecret, sign_standard};
use steward_core::{Clock, RunId, SystemClock};

use crate::load::{Body, Workload};
use crate::tenants;

/// The size a delivery body is padded to.
pub(crate) const BODY_BYTES: usize = 2048;

/// The incident a delivery names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IncidentKey {
    /// 32 hex digits.
    pub(crate) sys_id: String,
    /// `INC0010001` and so on.
    pub(crate) number: String,
}

/// Which incidents deliveries name.
pub(crate) enum Incidents {
    /// Incidents no ServiceNow has: each run ends at its first read (404, not retried).
    Unknown,
    /// These incidents, delivery `i` naming number `i % len`.
    Known(Arc<Vec<IncidentKey>>),
}

/// Hears each accepted delivery: its index, the run it started and when the `202` arrived.
pub(crate) type OnAccepted = Box<dyn Fn(u64, RunId, Instant) + Send + Sync>;

/// Deliveries spread round-robin over tenants `0..tenants`.
pub(crate) struct Deliveries {
    host: String,
    keys: Vec<WebhookSecret>,
    incidents: Incidents,
    /// Makes delivery ids unique across load runs against one database.
    tag: String,
    /// Added to the index a load run passes, so that phases name different incidents.
    offset: u64,
    padding: String,
    on_accepted: Option<OnAccepted>,
}

impl Deliveries {
    /// Deliveries to `host` for `tenants` tenants.
    pub(crate) fn new(host: String, tenants: usize, incidents: Incidents) -> Self {
        Self {
            host,
            keys: (0..tenants).map(tenants::signing_key).collect(),
            incidents,
            tag: RunId::new().to_string().replace('-', ""),
            offset: 0,
            padding: padding(),
            on_accepted: None,
        }
    }

    /// Starts the indices at `offset`.
    pub(crate) fn offset(mut self, offset: u64) -> Self {
        self.offset = offset;
        self
    }

    /// Calls `f` for each `202`.
    pub(crate) fn on_accepted(mut self, f: OnAccepted) -> Self {
        self.on_accepted = Some(f);
        self
    }

    /// The tenant index delivery `i` goes to.
    pub(crate) fn tenant_of(&self, i: u64) -> usize {
        ((self.offset + i) % self.keys.len() as u64) as usize
    }

    fn incident(&self, i: u64) -> IncidentKey {
        let n = self.offset + i;
        match &self.incidents {
            Incidents::Known(list) => list[(n % list.len() as u64) as usize].clone(),
            Incidents::Unknown => {
                let digest = Sha256::digest(format!("{}-{n}", self.tag).as_bytes());
                IncidentKey {
                    sys_id: hex_of(&digest[..16]),
                    number: format!("INC9{:06}", n % 1_000_000),
                }
            }
        }
    }

    /// The body of delivery `i`.
    pub(crate) fn body(&self, i: u64, incident: &IncidentKey) -> Vec<u8> {
        let body = json!({
            "event": "incident.created",
            "sequence": self.offset + i,
            "incident": {
                "sys_id": incident.sys_id,
                "number": incident.number,
                "short_description": "Checkout fails with HTTP 502 since the 14:05 deploy",
                "priority": "4",
                "assignment_group": "Payments SRE",
                "description": self.padding,
            },
            "sender": {"system": "monitoring", "rule": "incident.created → steward"},
        });
        serde_json::to_vec(&body).unwrap_or_default()
    }
}

impl Workload for Deliveries {
    fn request(&self, i: u64) -> Request<Body> {
        let tenant = self.tenant_of(i);
        let incident = self.incident(i);
        let body = self.body(i, &incident);
        let id = format!("msg_{}_{}", self.tag, self.offset + i);
        let ts = SystemClock.now_secs();
        let signature = sign_standard(&self.keys[tenant], &id, ts, &body);
        Request::post(format!(
            "/v1/webhooks/{}/{}",
            tenants::tenant_id(tenant),
            tenants::SOURCE
        ))
        .header("host", &self.host)
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", signature)
        .body(Full::new(Bytes::from(body)))
        .expect("the delivery request is well-formed")
    }

    fn answered(&self, i: u64, status: StatusCode, body: &[u8], at: Instant) {
        let Some(f) = &self.on_accepted else { return };
        if status != StatusCode::ACCEPTED {
            return;
        }
        if let Some(run) = run_id_of(body) {
            f(self.offset + i, run, at);
        }
    }
}

/// The `run_id` of an intake answer.
fn run_id_of(body: &[u8]) -> Option<RunId> {
    let answer: Value = serde_json::from_slice(body).ok()?;
    RunId::parse(answer.get("run_id")?.as_str()?).ok()
}

/// Description text that brings a body to about [`BODY_BYTES`].
fn padding() -> String {
    const LINE: &str = "Customers cannot pay: /checkout returns 502 for about 40% of requests \
                        since the payments deploy; the pool of database connections is exhausted. ";
    let target = BODY_BYTES - 420;
    LINE.repeat(target / LINE.len() + 1)[..target].to_owned()
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deliveries() -> Deliveries {
        Deliveries::new("127.0.0.1:1".into(), 3, Incidents::Unknown)
    }

    #[test]
    fn bodies_are_about_two_kib() {
        let d = deliveries();
        let body = d.body(12345, &d.incident(12345));
        assert!((1900..=2200).contains(&body.len()), "{}", body.len());
    }

    #[test]
    fn requests_are_signed_for_their_tenant_and_verify() {
        let d = deliveries();
        let request = d.request(4);
        assert_eq!(d.tenant_of(4), 1);
        assert_eq!(request.uri().path(), "/v1/webhooks/us-bench-001/alerts");
        let header = |n: &str| request.headers()[n].to_str().unwrap().to_owned();
        let body = d.body(4, &d.incident(4));
        let verified = steward_adapters::webhook::verify_standard(
            &tenants::signing_key(1),
            Some(&header("webhook-id")),
            Some(&header("webhook-timestamp")),
            Some(&header("webhook-signature")),
            &body,
            SystemClock.now_secs(),
        );
        assert!(verified.is_ok(), "{verified:?}");
    }

    #[test]
    fn delivery_ids_and_unknown_incidents_are_distinct() {
        let d = deliveries();
        let a = d.request(1);
        let b = d.request(2);
        assert_ne!(a.headers()["webhook-id"], b.headers()["webhook-id"]);
        assert_ne!(d.incident(1).sys_id, d.incident(2).sys_id);
        assert_eq!(d.incident(1).sys_id.len(), 32);
    }

    #[test]
    fn run_ids_are_read_only_from_well_formed_answers() {
        let run = RunId::new();
        let good = format!(r#"{{"run_id":"{run}","status":"accepted"}}"#);
        assert_eq!(run_id_of(good.as_bytes()), Some(run));
        assert_eq!(run_id_of(b"not json"), None);
        assert_eq!(run_id_of(br#"{"run_id":42}"#), None);
        assert_eq!(run_id_of(br#"{"run_id":"not-a-uuid"}"#), None);
        assert_eq!(run_id_of(&vec![b'['; 100_000]), None);
    }
}
