//! Retention settings, legal holds and erasure over HTTP.
//!
//! - `PUT /v1/tenant/retention` (`admin`): how many days the tenant keeps finished runs'
//!   content, finished runs and audit entries (`null` or absent keeps forever); bounds in
//!   [`RetentionSettings::check`]. `GET` reads them with the hold, if any. The change is the
//!   audit entry `retention.set`.
//! - `PUT /v1/tenants/{id}/legal-hold` (operator) `{"reason"}` places a hold; `DELETE`
//!   releases it. Each is an entry in the tenant's chain and in the operator audit log.
//! - `POST /v1/tenants/{id}/erasure` (operator) `{"subject", "reason"}` erases one person
//!   (`slack:U…` or an email) from the tenant's mutable rows; 409 while the tenant is held.
//!   The answer and both audit logs carry a salted hash of the subject, never the subject.
//!
//! - `POST /v1/ops/retention/sweep` (operator) runs one sweep round now, as the periodic
//!   sweeper (`steward_actors::retention`) does, and answers what it removed.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use steward_persistence::{
    MAX_HOLD_REASON_CHARS, RetentionSettings, StoreError, Subject, TenantScope,
};
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::ops;
use crate::ops_auth::{Action, OpsCaller};
use crate::state::AppState;
use crate::tenancy::{admin, known_tenant};
use crate::webhooks::read_body;

/// The largest body these endpoints read.
const MAX_BODY_BYTES: usize = 4 * 1024;
/// An erasure's reason: at most this many characters.
const MAX_REASON_CHARS: usize = 1000;

/// `{"runs_days", "content_days", "audit_days"}`, each days or `null` (keep forever).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RetentionBody {
    /// Finished runs, with approvals and deliveries: 1 to 3650 days, at most `audit_days`.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 3650)]
    runs_days: Option<u64>,
    /// Sealed content of finished runs: 1 to 3650 days, at most `runs_days`.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 3650)]
    content_days: Option<u64>,
    /// Audit entries: 365 to 3650 days.
    #[serde(default)]
    #[schema(minimum = 365, maximum = 3650)]
    audit_days: Option<u64>,
}

impl RetentionBody {
    fn settings(&self) -> Result<RetentionSettings, ApiError> {
        let days = |v: Option<u64>, name: &str| {
            v.map(|d| {
                u32::try_from(d).map_err(|_| {
                    ApiError::Unprocessable(format!("`{name}` must be 1 to 3650 days"))
                })
            })
            .transpose()
        };
        let settings = RetentionSettings {
            runs_days: days(self.runs_days, "runs_days")?,
            content_days: days(self.content_days, "content_days")?,
            audit_days: days(self.audit_days, "audit_days")?,
        };
        settings.check().map_err(ApiError::Unprocessable)?;
        Ok(settings)
    }
}

/// The retention settings and the legal hold in force, if any.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct RetentionAnswer {
    tenant: String,
    runs_days: Option<u32>,
    content_days: Option<u32>,
    audit_days: Option<u32>,
    /// `{reason, held_by, held_at}` or null.
    legal_hold: Option<Value>,
    /// `{through_seq, hash, checkpoint_seq, at}` once audit entries were pruned, or null.
    prune_anchor: Option<Value>,
}

/// `{"reason"}`: why the tenant is held.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct HoldBody {
    /// 1 to 1000 characters.
    reason: String,
}

/// `{"subject", "reason"}`: whose data to erase and why.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ErasureBody {
    /// `slack:` and a Slack user id, or an email address.
    subject: String,
    /// 1 to 1000 characters; the subject is erased from it before it is recorded.
    reason: String,
}

/// What an erasure changed; the subject appears only as a salted SHA-256.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct ErasureAnswer {
    tenant: String,
    subject_sha256: String,
    salt: String,
    approvals: u64,
    steps: u64,
    triggers: u64,
    snapshots_removed: u64,
    crashes_removed: u64,
    runs_touched: u64,
    audit_seq: u64,
}

async fn body<T: DeserializeOwned>(headers: &HeaderMap, body: Body) -> Result<T, ApiError> {
    let bytes = read_body(body, headers, MAX_BODY_BYTES).await?;
    let invalid = |e: serde_json::Error| ApiError::BadRequest(format!("invalid request body: {e}"));
    // serde would take a struct from a JSON array too; only an object is a request here.
    let value: Value = serde_json::from_slice(&bytes).map_err(invalid)?;
    if !value.is_object() {
        return Err(ApiError::BadRequest(
            "invalid request body: expected a JSON object".into(),
        ));
    }
    serde_json::from_value(value).map_err(invalid)
}

fn conflict(e: StoreError) -> ApiError {
    match e {
        StoreError::Conflict(why) => ApiError::Conflict(why),
        other => other.into(),
    }
}

/// The audit name of an operator: `operator:<email or subject>` for a person, `operator` for
/// the operator token.
fn operator_name(caller: &OpsCaller) -> String {
    match caller.principal.person() {
        Some(person) => format!("operator:{}", person.audit_name()),
        None => "operator".to_owned(),
    }
}

async fn answer(state: &AppState, scope: &TenantScope) -> Result<Json<Value>, ApiError> {
    let settings = state.store.retention(scope).await?;
    let hold = state.store.legal_hold(scope).await?;
    let anchor = state.store.prune_anchor(scope).await?;
    Ok(Json(json!({
        "tenant": scope.tenant(),
        "runs_days": settings.runs_days,
        "content_days": settings.content_days,
        "audit_days": settings.audit_days,
        "legal_hold": hold.map(|h| json!({
            "reason": h.reason, "held_by": h.held_by, "held_at": h.held_at,
        })),
        "prune_anchor": anchor.map(|a| json!({
            "through_seq": a.through_seq, "hash": a.hash,
            "checkpoint_seq": a.checkpoint_seq, "at": a.at,
        })),
    })))
}

/// `PUT /v1/tenant/retention` (`admin`): replaces the tenant's retention settings.
#[utoipa::path(put, path = "/v1/tenant/retention", tag = "tenant",
    request_body(content = RetentionBody,
        example = json!({"content_days": 30, "runs_days": 90, "audit_days": 730})),
    responses(
        (status = 200, description = "The settings as they stand", body = RetentionAnswer),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthenticated),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 413, response = crate::openapi::TooLarge),
        (status = 422, response = crate::openapi::Unprocessable),
        (status = 500, response = crate::openapi::Internal),
    ),
    security(("tenantToken" = [])))]
pub(crate) async fn put_retention(
    State(state): State<AppState>,
    headers: HeaderMap,
    raw: Body,
) -> Result<Json<Value>, ApiError> {
    let admin = admin(&state, &headers).await?;
    let req: RetentionBody = body(&headers, raw).await?;
    let settings = req.settings()?;
    state
        .store
        .set_retention(&admin.scope, settings, &admin.actor)
        .await?;
    answer(&state, &admin.scope).await
}

/// `GET /v1/tenant/retention` (`admin`): the tenant's retention settings, its legal hold and
/// where its stored audit chain starts.
#[utoipa::path(get, path = "/v1/tenant/retention", tag = "tenant",
    responses(
        (status = 200, description = "The settings as they stand", body = RetentionAnswer),
        (status = 401, response = crate::openapi::Unauthenticated),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 500, response = crate::openapi::Internal),
    ),
    security(("tenantToken" = [])))]
pub(crate) async fn get_retention(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let admin = admin(&state, &headers).await?;
    answer(&state, &admin.scope).await
}

/// `PUT /v1/tenants/{id}/legal-hold` (operator): places a legal hold; 409 when one is in
/// force.
#[utoipa::path(put, path = "/v1/tenants/{id}/legal-hold", tag = "platform",
    params(("id" = String, Path, description = "Tenant id")),
    request_body(content = HoldBody, example = json!({"reason": "Litigation hold, case 2026-114"})),
    responses(
        (status = 200, description = "Held", body = RetentionAnswer),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthenticated),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 409, response = crate::openapi::Conflict),
        (status = 413, response = crate::openapi::TooLarge),
        (status = 421, description = "The tenant is homed in another region",
            body = crate::openapi::Misdirected),
        (status = 422, response = crate::openapi::Unprocessable),
        (status = 500, response = crate::openapi::Internal),
    ),
    security(("operatorToken" = []), ("opsSession" = []), ("oidcIdToken" = [])))]
pub(crate) async fn put_legal_hold(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    raw: Body,
) -> Result<Response, ApiError> {
    let caller = ops::authorize(&state, &headers, Action::Platform).await?;
    let req: HoldBody = body(&headers, raw).await?;
    let reason = req.reason.trim();
    if reason.is_empty()
        || reason.chars().count() > MAX_HOLD_REASON_CHARS
        || reason.chars().any(char::is_control)
    {
        return Err(ApiError::Unprocessable(format!(
            "`reason` must be 1 to {MAX_HOLD_REASON_CHARS} characters without control characters"
        )));
    }
    let scope = known_tenant(&state, &id).await?;
    let actor = operator_name(&caller);
    state
        .store
        .place_legal_hold(&scope, reason, &actor)
        .await
        .map_err(conflict)?;
    operator_audit(
        &state,
        "legal_hold.placed",
        &actor,
        json!({ "tenant": scope.tenant(), "reason": reason }),
    )
    .await;
    Ok(answer(&state, &scope).await?.into_response())
}

/// `DELETE /v1/tenants/{id}/legal-hold` (operator): releases the legal hold; 404 when none
/// is in force.
#[utoipa::path(delete, path = "/v1/tenants/{id}/legal-hold", tag = "platform",
    params(("id" = String, Path, description = "Tenant id")),
    responses(
        (status = 200, description = "Released", body = RetentionAnswer),
        (status = 401, response = crate::openapi::Unauthenticated),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 421, description = "The tenant is homed in another region",
            body = crate::openapi::Misdirected),
        (status = 500, response = crate::openapi::Internal),
    ),
    security(("operatorToken" = []), ("opsSession" = []), ("oidcIdToken" = [])))]
pub(crate) async fn delete_legal_hold(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let caller = ops::authorize(&state, &headers, Action::Platform).await?;
    let scope = known_tenant(&state, &id).await?;
    let actor = operator_name(&caller);
    let hold = state.store.release_legal_hold(&scope, &actor).await?;
    operator_audit(
        &state,
        "legal_hold.released",
        &actor,
        json!({ "tenant": scope.tenant(), "reason": hold.reason, "held_at": hold.held_at }),
    )
    .await;
    Ok(answer(&state, &scope).await?.into_response())
}

/// `POST /v1/tenants/{id}/erasure` (operator): erases one person's data from the tenant's
/// mutable rows. 409 while the tenant is on legal hold.
#[utoipa::path(post, path = "/v1/tenants/{id}/erasure", tag = "platform",
    params(("id" = String, Path, description = "Tenant id")),
    request_body(content = ErasureBody,
        example = json!({"subject": "slack:U012ABCDEF", "reason": "Data subject request DSR-88"})),
    responses(
        (status = 200, description = "Erased", body = ErasureAnswer),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthenticated),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 409, response = crate::openapi::Conflict),
        (status = 413, response = crate::openapi::TooLarge),
        (status = 421, description = "The tenant is homed in another region",
            body = crate::openapi::Misdirected),
        (status = 422, response = crate::openapi::Unprocessable),
        (status = 500, response = crate::openapi::Internal),
    ),
    security(("operatorToken" = []), ("opsSession" = []), ("oidcIdToken" = [])))]
pub(crate) async fn post_erasure(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    raw: Body,
) -> Result<Response, ApiError> {
    let caller = ops::authorize(&state, &headers, Action::Platform).await?;
    let req: ErasureBody = body(&headers, raw).await?;
    let subject = Subject::parse(req.subject.trim()).map_err(|e| match e {
        StoreError::Invalid(why) => ApiError::Unprocessable(why),
        other => other.into(),
    })?;
    let reason = req.reason.trim();
    if reason.is_empty()
        || reason.chars().count() > MAX_REASON_CHARS
        || reason.chars().any(char::is_control)
    {
        return Err(ApiError::Unprocessable(format!(
            "`reason` must be 1 to {MAX_REASON_CHARS} characters without control characters"
        )));
    }
    let scope = known_tenant(&state, &id).await?;
    if state.store.tenant_offboarded(scope.tenant()).await? {
        return Err(ApiError::NotFound);
    }
    let actor = operator_name(&caller);
    let report = state
        .store
        .erase_subject(&scope, &subject, reason, &actor)
        .await
        .map_err(|e| match e {
            StoreError::Conflict(why) => ApiError::Conflict(why),
            other => other.into(),
        })?;
    operator_audit(
        &state,
        "erasure.completed",
        &actor,
        json!({
            "tenant": scope.tenant(),
            "subject_sha256": report.subject_sha256,
            "salt": report.salt,
            "audit_seq": report.audit_seq,
        }),
    )
    .await;
    let mut out = json!(report);
    out["tenant"] = json!(scope.tenant());
    Ok((StatusCode::OK, Json(out)).into_response())
}

/// Appends an operator audit entry after the tenant's own entry was committed; a failure is
/// logged (the tenant's chain already holds the record).
async fn operator_audit(state: &AppState, kind: &str, actor: &str, detail: Value) {
    if let Err(e) = state.store.append_operator_audit(kind, actor, detail).await {
        tracing::error!(error = %e, kind, "The operator audit entry could not be written.");
    }
}

/// What one sweep round removed, summed over tenants.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct SweepAnswer {
    tenants: u64,
    content_runs: u64,
    runs: u64,
    audit_entries: u64,
    failures: u64,
}

/// `POST /v1/ops/retention/sweep` (operator): one retention sweep round over every tenant with
/// retention settings that is not on legal hold, now.
#[utoipa::path(post, path = "/v1/ops/retention/sweep", tag = "ops",
    responses(
        (status = 200, description = "What the round removed", body = SweepAnswer),
        (status = 401, response = crate::openapi::Unauthenticated),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 500, response = crate::openapi::Internal),
    ),
    security(("operatorToken" = []), ("opsSession" = []), ("oidcIdToken" = [])))]
pub(crate) async fn post_sweep(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let caller = ops::authorize(&state, &headers, Action::Platform).await?;
    let options = steward_actors::retention::SweepOptions::default();
    let report =
        steward_actors::retention::sweep_round(&state.store, &state.master_key, options).await;
    operator_audit(
        &state,
        "retention.swept",
        &operator_name(&caller),
        json!({ "report": report }),
    )
    .await;
    Ok(Json(json!(report)))
}
