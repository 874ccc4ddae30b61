//! `POST /v1/webhooks/{tenant}/{source}`: signed webhook intake, under the signature scheme the
//! source chose (Standard Webhooks, Slack `v0` or Stripe). The signature is checked over the raw
//! bytes before anything is parsed; the delivery is deduplicated in the same transaction that
//! creates the run; the answer never waits for the run itself.

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use steward_actors::run::FreshRun;
use steward_actors::{Step, secret_names, states};
use steward_adapters::webhook::{SignatureError, incident_at, verify_delivery};
use steward_core::{IncidentRef, RunId, SignatureScheme, SourceName, TenantId};
use steward_persistence::{
    AuditDraft, Authenticator, IntakeOutcome, NewRun, SourceRead, SourceWithSecrets, TenantScope,
    WebhookSource,
};

use crate::error::ApiError;
use crate::state::AppState;

/// A signed delivery, under the source's scheme (Standard Webhooks, Slack `v0` or Stripe):
/// verified over the raw bytes, then the incident is found by the source's JSON pointers and a
/// run starts. A redelivered `webhook-id` (Slack and Stripe: the same body) names the same run.
#[utoipa::path(post, path = "/v1/webhooks/{tenant}/{source}", tag = "intake",
    params(
        ("tenant" = String, Path, description = "Tenant id, such as `us-acme`"),
        ("source" = String, Path, description = "The tenant's webhook source"),
        ("webhook-id" = Option<String>, Header,
            description = "Standard Webhooks: the delivery id; redeliveries repeat it"),
        ("webhook-timestamp" = Option<String>, Header,
            description = "Standard Webhooks: Unix seconds, within 5 minutes"),
        ("x-slack-request-timestamp" = Option<String>, Header,
            description = "Scheme `slack`: Unix seconds, within 5 minutes"),
    ),
    request_body(content = serde_json::Value, description = "The sender's event, at most 256 KiB of JSON"),
    responses(
        (status = 202, description = "A run started", body = crate::openapi::RunAccepted,
            example = json!({"run_id": "0190f3c4-6a1e-7c1d-9a5b-2f4e8d7c6b5a", "status": "accepted"})),
        (status = 200, description = "A redelivery: the run it started", body = crate::openapi::RunAccepted),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::BadSignature),
        (status = 404, response = crate::openapi::NotFound),
        (status = 421, description = "The tenant is homed in another region; nothing was stored", body = crate::openapi::Misdirected),
        (status = 413, response = crate::openapi::TooLarge),
        (status = 422, response = crate::openapi::Unprocessable),
        (status = 500, response = crate::openapi::Internal),
    ),
    security(("webhookSignature" = []), ("slackSignature" = []), ("stripeSignature" = [])))]
pub(crate) async fn receive(
    State(state): State<AppState>,
    tally: Option<axum::Extension<std::sync::Arc<crate::reports::RejectionTally>>>,
    Path((tenant, source)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let metrics = state.metrics.clone();
    let clock = state.store.clock().clone();
    let mut known = None;
    let answer = intake(state, tenant, source, headers, body, &mut known).await;
    if let Err(error) = &answer
        && let Some(reason) = rejection_reason(error)
    {
        if let Some(metrics) = metrics {
            metrics.webhook_rejected(reason);
        }
        // Only a delivery to an existing tenant's existing source is that tenant's to count.
        if let (Some(tenant), Some(axum::Extension(tally))) = (known, tally) {
            tally.record(&tenant, reason, clock.now_millis());
        }
    }
    answer
}

/// The label a refused delivery is counted under in `steward_webhook_rejections_total`: the
/// error code of a 401 (the signature's or the clock's), 404, 413, 400 or 422. Other failures
/// (429 before the handler, 500) are not the sender's delivery being refused.
fn rejection_reason(error: &ApiError) -> Option<&'static str> {
    match error {
        ApiError::BadSignature(e) | ApiError::BadTimestamp(e) => Some(e.reason_code()),
        ApiError::NotFound => Some("not_found"),
        ApiError::TooLarge(_) => Some("body_too_large"),
        ApiError::BadRequest(_) => Some("bad_request"),
        ApiError::Unprocessable(_) => Some("unprocessable"),
        _ => None,
    }
}

async fn intake(
    state: AppState,
    tenant: String,
    source: String,
    headers: HeaderMap,
    body: Body,
    known: &mut Option<TenantId>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    // Which tenant and source; unknown ones are indistinguishable to the caller.
    let tenant = TenantId::parse(&tenant).map_err(|_| ApiError::NotFound)?;
    crate::tenancy::check_home(&state, &tenant)?;
    let source = SourceName::parse(&source).map_err(|_| ApiError::NotFound)?;
    let scope = TenantScope::assume(tenant.clone(), Authenticator::WebhookSignature);
    // The source and the secret versions that verify it now, in one read.
    let secret_of = |s: &WebhookSource| secret_names::webhook_source(s.name.as_str());
    let (mut read, found) = state
        .store
        .source_with_secrets(&scope, &state.master_key, &source, secret_of)
        .await?
        .ok_or(ApiError::NotFound)?;
    *known = Some(tenant.clone());

    // The raw bytes, bounded.
    let body = read_body(body, &headers, state.limits.webhook_body_bytes).await?;

    // Verify before parsing anything. What the store kept of the source may predate a secret
    // another node stored since: a delivery no kept secret verifies is checked once more
    // against the database.
    let delivery = match verify(&state, &read, &headers, &body) {
        Err(e) if found == SourceRead::Kept && may_be_a_newer_secret(&read, &e) => {
            // Should the source have gone meanwhile, or the database not answer, the delivery
            // is refused for what the kept read found.
            read = read_again(&state, &scope, &source, secret_of)
                .await
                .ok_or(e)?;
            verify(&state, &read, &headers, &body)?
        }
        verified => verified?,
    };
    let config = &read.source;

    // Only now look inside.
    let payload: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("the body is not JSON: {e}")))?;
    let incident = incident_ref(config, &payload)?;
    let change = steward_adapters::webhook::change_at(&payload, &config.sys_id_pointers);
    let found = (incident, change);
    let mut run = new_run(&source, &delivery.id, delivery.timestamp, found, &body)?;
    crate::telemetry::record_traceparent(&mut run.trigger, &headers);
    // What the run's actor would read back as it starts: it starts from this instead.
    let fresh = FreshRun::of(&run)
        .map_err(|e| ApiError::Internal(format!("the first step does not read back: {e}")))?;
    // The delivery is verified: record it and start its run in a task of their own, so that a
    // client that goes away now cannot stop an accepted delivery halfway (between its commit and
    // its wake-up). Nothing after this point answers 429.
    let intake = {
        let state = state.clone();
        tokio::spawn(async move {
            let outcome = state.store.record_intake(&scope, run).await;
            if let Ok(IntakeOutcome::Created(run_id)) = &outcome {
                start(&state, tenant, *run_id, fresh);
            }
            outcome
        })
    };
    let outcome = intake
        .await
        .map_err(|e| ApiError::Internal(format!("recording the delivery stopped: {e}")))??;
    match outcome {
        IntakeOutcome::Created(run_id) => Ok((
            StatusCode::ACCEPTED,
            Json(json!({ "run_id": run_id, "status": "accepted" })),
        )),
        IntakeOutcome::Duplicate(run_id) => Ok((
            StatusCode::OK,
            Json(json!({ "run_id": run_id, "status": "duplicate", "delivery_id": delivery.id })),
        )),
    }
}

/// Reads at most `limit` bytes; a declared or actual larger body is `413`, a body still
/// arriving at the request's deadline `408`.
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
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        if crate::hardening::BodyDeadline::caused(&e) {
            ApiError::RequestTimeout
        } else {
            ApiError::TooLarge(limit)
        }
    })
}

/// The source and its secrets read from the database now; None when the source is gone or
/// the read failed (logged).
async fn read_again(
    state: &AppState,
    scope: &TenantScope,
    source: &SourceName,
    secret_of: impl Fn(&WebhookSource) -> String,
) -> Option<std::sync::Arc<SourceWithSecrets>> {
    let read = state
        .store
        .source_with_secrets_read_now(scope, &state.master_key, source, secret_of)
        .await;
    read.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "reading a webhook source again failed");
        None
    })
}

/// Whether a refusal could come from a secret stored after `read` was: no secret at all, or
/// a well-formed signature that none of them made.
fn may_be_a_newer_secret(read: &SourceWithSecrets, error: &ApiError) -> bool {
    read.secrets.is_empty()
        || matches!(
            error,
            ApiError::BadSignature(SignatureError::NoMatchingSignature)
        )
}

/// Checks the delivery's signature with every secret version that verifies now: during a
/// rotation's overlap the superseded secret verifies too, until it expires.
fn verify(
    state: &AppState,
    read: &SourceWithSecrets,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<steward_adapters::webhook::VerifiedDelivery, ApiError> {
    let (config, name, secrets) = (&read.source, &read.secret_name, &read.secrets);
    if secrets.is_empty() {
        return Err(ApiError::Internal(format!(
            "webhook secret `{name}` is missing"
        )));
    }
    let scheme = SignatureScheme::parse(&config.scheme)
        .map_err(|e| ApiError::Internal(format!("source `{}`: {e}", config.name)))?;
    let header = |n: &'static str| headers.get(n).and_then(|v| v.to_str().ok());
    let now = state.store.clock().now_secs();
    // A secret that cannot be used is Steward's problem, not the sender's: it is logged, and
    // the sender gets the fixed internal answer, never a hint about the secret.
    verify_delivery(scheme, secrets, header, body, now).map_err(|e| match e {
        SignatureError::BadSecret(why) => {
            ApiError::Internal(format!("webhook secret `{name}` is unusable: {why}"))
        }
        other => ApiError::from_signature(other),
    })
}

/// Finds the incident by the source's JSON pointers: sys_id pointers first, then numbers.
fn incident_ref(config: &WebhookSource, payload: &Value) -> Result<IncidentRef, ApiError> {
    let found = incident_at(payload, &config.sys_id_pointers, &config.number_pointers);
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
    (incident, change): (IncidentRef, Option<String>),
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
        change,
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

/// Starts the run in the background, from what intake wrote (`fresh`): intake never waits
/// for the actor system.
pub(crate) fn start(state: &AppState, tenant: TenantId, run_id: RunId, fresh: FreshRun) {
    let state = state.clone();
    tokio::spawn(async move { state.steward.start_fresh(&tenant, run_id, fresh).await });
}
