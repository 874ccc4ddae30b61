//! `POST /v1/webhooks/{tenant}/{source}`: Standard Webhooks intake. The signature is checked over
//! the raw bytes before anything is parsed; the delivery is deduplicated in the same
//! transaction that creates the run; the answer never waits for the run itself.

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use steward_actors::{Step, secret_names, states};
use steward_adapters::webhook::{WebhookSecret, verify_standard_any};
use steward_core::{IncidentRef, RunId, SourceName, TenantId};
use steward_persistence::{
    AuditDraft, Authenticator, IntakeOutcome, NewRun, TenantScope, WebhookSource,
};

use crate::error::ApiError;
use crate::state::AppState;

pub(crate) async fn receive(
    State(state): State<AppState>,
    Path((tenant, source)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    // Which tenant and source; unknown ones are indistinguishable to the caller.
    let tenant = TenantId::parse(&tenant).map_err(|_| ApiError::NotFound)?;
    let source = SourceName::parse(&source).map_err(|_| ApiError::NotFound)?;
    let scope = TenantScope::assume(tenant.clone(), Authenticator::WebhookSignature);
    let config = state
        .store
        .source(&scope, &source)
        .await?
        .ok_or(ApiError::NotFound)?;

    // The raw bytes, bounded.
    let body = read_body(body, &headers, state.limits.webhook_body_bytes).await?;

    // Verify before parsing anything.
    let delivery = verify(&state, &scope, &config, &headers, &body).await?;

    // Only now look inside.
    let payload: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("the body is not JSON: {e}")))?;
    let incident = incident_ref(&config, &payload)?;
    let run = new_run(&source, &delivery.id, delivery.timestamp, incident, &body)?;
    match state.store.record_intake(&scope, run).await? {
        IntakeOutcome::Created(run_id) => {
            wake(&state, tenant, run_id);
            Ok((
                StatusCode::ACCEPTED,
                Json(json!({ "run_id": run_id, "status": "accepted" })),
            ))
        }
        IntakeOutcome::Duplicate(run_id) => Ok((
            StatusCode::OK,
            Json(json!({ "run_id": run_id, "status": "duplicate", "delivery_id": delivery.id })),
        )),
    }
}

/// Reads at most `limit` bytes; a declared or actual larger body is `413`.
pub(crate) async fn read_body(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::TooLarge(limit));
    }
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::TooLarge(limit))
}

async fn verify(
    state: &AppState,
    scope: &TenantScope,
    config: &WebhookSource,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<steward_adapters::webhook::VerifiedDelivery, ApiError> {
    let name = if config.secret_name.is_empty() {
        secret_names::webhook_source(config.name.as_str())
    } else {
        config.secret_name.clone()
    };
    // During a rotation's overlap the superseded secret verifies too, until it expires.
    let secrets = state
        .store
        .valid_secrets(scope, &state.master_key, &name)
        .await?;
    if secrets.is_empty() {
        return Err(ApiError::Internal(format!(
            "webhook secret `{name}` is missing"
        )));
    }
    let keys = secrets
        .iter()
        .map(|secret| WebhookSecret::parse(secret.expose_secret()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiError::Internal(format!("webhook secret `{name}` is unusable: {e}")))?;
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    let now = state.store.clock().now_secs();
    verify_standard_any(
        &keys,
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
        body,
        now,
    )
    .map_err(ApiError::from_signature)
}

/// Finds the incident by the source's JSON pointers: sys_id pointers first, then numbers.
fn incident_ref(config: &WebhookSource, payload: &Value) -> Result<IncidentRef, ApiError> {
    let at = |p: &String| payload.pointer(p).and_then(Value::as_str);
    let found = config
        .sys_id_pointers
        .iter()
        .filter_map(at)
        .find_map(IncidentRef::sys_id)
        .or_else(|| {
            config
                .number_pointers
                .iter()
                .filter_map(at)
                .find_map(IncidentRef::number)
        });
    found.ok_or_else(|| {
        ApiError::Unprocessable(format!(
            "no incident sys_id (at {}) or number (at {}) in the body; no run was started",
            config.sys_id_pointers.join(", "),
            config.number_pointers.join(", "),
        ))
    })
}

fn new_run(
    source: &SourceName,
    delivery_id: &str,
    timestamp: i64,
    incident: IncidentRef,
    body: &[u8],
) -> Result<NewRun, ApiError> {
    use sha2::{Digest, Sha256};
    let id = RunId::new();
    let step = Step::Received {
        incident: incident.clone(),
        source: Some(source.to_string()),
        delivery_id: Some(delivery_id.to_owned()),
        requester: None,
    };
    let body_sha256 = hex::encode(Sha256::digest(body));
    Ok(NewRun {
        id,
        source: Some(source.clone()),
        delivery_id: Some(delivery_id.to_owned()),
        incident: incident.clone(),
        trigger: json!({ "kind": "webhook", "webhook_timestamp": timestamp, "body_sha256": body_sha256 }),
        state: states::RECEIVED.into(),
        first_step: (
            step.kind().into(),
            serde_json::to_value(&step).map_err(|e| ApiError::Internal(e.to_string()))?,
        ),
        audit: AuditDraft {
            kind: "run.received".into(),
            run_id: Some(id),
            actor: format!("webhook:{source}"),
            body: json!({ "delivery_id": delivery_id, "incident": incident, "body_sha256": body_sha256 }),
        },
    })
}

/// Starts the run in the background: intake never waits for the actor system.
pub(crate) fn wake(state: &AppState, tenant: TenantId, run_id: RunId) {
    let steward = state.steward.clone();
    tokio::spawn(async move { steward.wake(&tenant, run_id).await });
}
