//! A tenant's SIEM stream (`admin`): `PUT /v1/tenant/siem` points it at a URL and answers, once,
//! with the signing secret Steward generated (`whsec_…`, Standard Webhooks); `GET` shows how
//! delivery is going; `DELETE` stops it. A `PUT` while a stream exists rotates the secret: the
//! previous one keeps signing, beside the new one, for 24 hours. Delivery itself is
//! `steward_actors::siem`.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};
use steward_actors::siem::check_siem_url;
use steward_adapters::webhook::WebhookSecret;
use steward_persistence::{SIEM_SECRET, SiemStream};

use crate::error::ApiError;
use crate::state::AppState;
use crate::tenancy::admin;
use crate::webhooks::read_body;

/// The largest body `PUT /v1/tenant/siem` accepts.
const MAX_BODY_BYTES: usize = 4 * 1024;
/// How long the previous signing secret still signs after a rotation.
pub const OVERLAP_SECS: i64 = 24 * 3600;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SiemBody {
    /// Where batches are posted: `https://` (plain HTTP only in the dev profile and tests),
    /// a host the region allows.
    #[schema(max_length = 2048, example = "https://siem.example.com/ingest/steward")]
    url: String,
}

/// The answer to `PUT /v1/tenant/siem`.
#[derive(utoipa::ToSchema)]
pub struct SiemConfigured {
    /// The stream as stored.
    pub stream: SiemStatus,
    /// The new signing secret, `whsec_` and the base64 of 32 bytes; shown only here.
    pub secret: String,
    /// The secret's version in the vault.
    pub secret_version: u32,
    /// Unix seconds until which the previous secret also signs; absent on first setup.
    pub previous_secret_expires_at: Option<i64>,
}

/// A SIEM stream and how far delivery got.
#[derive(utoipa::ToSchema)]
pub struct SiemStatus {
    pub url: String,
    /// `active` or `failing` (the last attempt failed; it is retried).
    #[schema(pattern = "^(active|failing)$")]
    pub state: String,
    /// The last seq the SIEM acknowledged; 0 before the first.
    pub delivered_seq: u64,
    /// The seq of the tenant's latest audit entry.
    pub head_seq: u64,
    /// Entries written but not yet acknowledged.
    pub lag: u64,
    /// Why the last attempt failed, while failing.
    pub last_error: Option<String>,
    /// Failed attempts since the last success.
    pub failures: u64,
    /// Unix ms.
    pub last_attempt_at: Option<i64>,
    /// Unix ms.
    pub last_delivered_at: Option<i64>,
}

fn status(stream: &SiemStream, head: u64) -> Value {
    json!({
        "url": stream.url,
        "state": stream.state,
        "delivered_seq": stream.delivered_seq,
        "head_seq": head,
        "lag": head.saturating_sub(stream.delivered_seq),
        "last_error": stream.last_error,
        "failures": stream.failures,
        "last_attempt_at": stream.last_attempt_at,
        "last_delivered_at": stream.last_delivered_at,
    })
}

/// `PUT /v1/tenant/siem` (admin): streams the tenant's audit entries to `url`, signed with a
/// new secret shown once in the answer.
#[utoipa::path(put, path = "/v1/tenant/siem", tag = "tenant",
    request_body(content = SiemBody, description = "The SIEM endpoint"),
    responses(
        (status = 200, description = "Stored; delivery starts (or resumes) from the cursor",
            body = SiemConfigured),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthenticated),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 413, response = crate::openapi::TooLarge),
        (status = 422, response = crate::openapi::Unprocessable),
        (status = 500, response = crate::openapi::Internal),
    ),
    security(("tenantToken" = ["admin"])))]
pub(crate) async fn put(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let admin = admin(&state, &headers).await?;
    let bytes = read_body(body, &headers, MAX_BODY_BYTES).await?;
    let req: SiemBody = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::BadRequest(format!("invalid request body: {e}")))?;
    let region = admin.scope.tenant().region();
    check_siem_url(&state.tenancy.http, region, &req.url).map_err(ApiError::Unprocessable)?;
    let existing = state.store.siem_stream(&admin.scope).await?;
    let had_secret = state
        .store
        .secret(&admin.scope, &state.master_key, SIEM_SECRET)
        .await?
        .is_some();
    let secret = SecretString::from(WebhookSecret::generate());
    let now = state.store.clock().now_secs();
    // A stream in use keeps its previous secret for the overlap; a secret left from a
    // removed stream stops signing at once.
    let previous_expires = existing.as_ref().map(|_| now + OVERLAP_SECS);
    let version = if had_secret {
        state
            .store
            .rotate_secret(
                &admin.scope,
                &state.master_key,
                SIEM_SECRET,
                &secret,
                previous_expires.unwrap_or(now).saturating_mul(1000),
                &admin.actor,
            )
            .await?
    } else {
        state
            .store
            .put_secret(&admin.scope, &state.master_key, SIEM_SECRET, &secret)
            .await?
    };
    let stream = state
        .store
        .put_siem_stream(&admin.scope, &req.url, version, &admin.actor)
        .await?;
    let head = state.store.audit_head_seq(&admin.scope).await?;
    Ok(Json(json!({
        "stream": status(&stream, head),
        "secret": secret.expose_secret(),
        "secret_version": version,
        "previous_secret_expires_at": previous_expires,
    })))
}

/// `GET /v1/tenant/siem` (admin): the stream and how far delivery got; 404 when none.
#[utoipa::path(get, path = "/v1/tenant/siem", tag = "tenant",
    responses(
        (status = 200, description = "The stream", body = SiemStatus),
        (status = 401, response = crate::openapi::Unauthenticated),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 500, response = crate::openapi::Internal),
    ),
    security(("tenantToken" = ["admin"])))]
pub(crate) async fn get(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let admin = admin(&state, &headers).await?;
    let stream = state
        .store
        .siem_stream(&admin.scope)
        .await?
        .ok_or(ApiError::NotFound)?;
    let head = state.store.audit_head_seq(&admin.scope).await?;
    Ok(Json(status(&stream, head)))
}

/// `DELETE /v1/tenant/siem` (admin): stops streaming; 404 when none. Configuring again
/// later starts from the first entry.
#[utoipa::path(delete, path = "/v1/tenant/siem", tag = "tenant",
    responses(
        (status = 200, description = "Stopped", body = SiemRemoved),
        (status = 401, response = crate::openapi::Unauthenticated),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 500, response = crate::openapi::Internal),
    ),
    security(("tenantToken" = ["admin"])))]
pub(crate) async fn delete(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let admin = admin(&state, &headers).await?;
    if !state
        .store
        .delete_siem_stream(&admin.scope, &admin.actor)
        .await?
    {
        return Err(ApiError::NotFound);
    }
    Ok(Json(json!({ "removed": true })))
}

/// The answer to `DELETE /v1/tenant/siem`.
#[derive(utoipa::ToSchema)]
pub struct SiemRemoved {
    /// Always true.
    pub removed: bool,
}
