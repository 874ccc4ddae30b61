//! Controls over what runs may do: the write pause (kill switch) of the platform (operator
//! token) and of one tenant (its `admin` token), shadow mode, and the tenant's budgets.
//!
//! Pausing takes effect at once: every run reads the pauses before each write step, so no
//! write starts after the answer (one already past that check finishes). Resuming wakes the
//! parked runs concerned, and the held ones write. Every change is an audit entry with who
//! and why (`writes.paused`, `writes.resumed`, `shadow.set`, `budgets.set`).

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use serde::Deserialize;
use serde_json::{Value, json};
use steward_actors::budgets::{Budgets, DAY_MS};
use steward_actors::operator::OperatorRequest;
use steward_actors::settings::{ShadowSettings, TenantControls};
use steward_core::TenantId;
use tracing::warn;
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::ops;
use crate::ops_auth::{Action, OpsCaller};
use crate::state::AppState;
use crate::tenancy::{admin, draft, json_body, reload};

/// `{"reason", "operator"}`: the platform's pause or resume.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PlatformChange {
    /// Why (1 to 1000 characters).
    reason: String,
    /// Who, with the operator token; a signed-in person is audited as themselves and this is
    /// ignored.
    #[serde(default)]
    operator: Option<String>,
}

/// `{"reason", "tenant"?}`: a tenant's pause or resume; `tenant`, when given, must be the
/// token's own tenant.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TenantChange {
    /// Why (1 to 1000 characters).
    reason: String,
    /// The tenant meant; another tenant than the token's is 404.
    #[serde(default)]
    tenant: Option<String>,
}

/// What a pause or resume did, for the document.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct PauseAnswer {
    /// Whether writes are paused there now.
    paused: bool,
    /// Whether they were before.
    was_paused: bool,
    /// `the platform` or `tenant <id>`.
    scope: String,
    /// Parked runs woken (on resume).
    woken: Option<u64>,
}

/// The pauses in force, for the document.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct PauseList {
    /// Each `{tenant (null for the platform), reason, actor, paused_at}`.
    #[schema(value_type = Vec<Object>)]
    pauses: Vec<String>,
}

/// `{"enabled"}`: shadow mode.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct ShadowBody {
    enabled: bool,
}

/// A tenant's budgets: each optional; absent means the platform's limit, zero allows none.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct BudgetsBody {
    llm_calls_per_hour: Option<u64>,
    llm_calls_per_day: Option<u64>,
    llm_tokens_per_hour: Option<u64>,
    llm_tokens_per_day: Option<u64>,
    runs_per_source_per_minute: Option<u64>,
}

/// The budgets as they stand, for the document.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct BudgetsAnswer {
    /// What the tenant set.
    budgets: BudgetsBody,
    /// The platform's limits.
    limits: BudgetsBody,
    /// What runs are held to.
    effective: BudgetsBody,
    /// Use in the windows of the last day: `{meter, window_start, used, refused}`.
    #[schema(value_type = Vec<Object>)]
    usage: Vec<String>,
}

fn parse_body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    crate::error::json_object(bytes)
}

async fn platform_change(
    state: &AppState,
    headers: &HeaderMap,
    caller: &OpsCaller,
    body: Body,
) -> Result<OperatorRequest, ApiError> {
    let bytes = crate::webhooks::read_body(body, headers, state.limits.api_body_bytes).await?;
    let change: PlatformChange = parse_body(&bytes)?;
    ops::operator_request(caller, change.operator, change.reason)
}

/// `GET /v1/ops/writes` (operator): every pause in force.
#[utoipa::path(get, path = "/v1/ops/writes", tag = "ops",
    responses(
        (status = 200, description = "The pauses in force", body = PauseList),
        (status = 401, response = crate::openapi::Unauthenticated),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 500, response = crate::openapi::Internal),
    ),
    security(("operatorToken" = []), ("opsSession" = []), ("oidcIdToken" = [])))]
pub(crate) async fn ops_pauses(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    ops::authorize(&state, &headers, Action::Read).await?;
    let pauses = state.store.all_write_pauses().await?;
    Ok(Json(json!({ "pauses": pauses })))
}

/// `POST /v1/ops/writes/pause` (operator) with `{"reason", "operator"}`: stops every
/// tenant's writes.
#[utoipa::path(post, path = "/v1/ops/writes/pause", tag = "ops",
    request_body(content = PlatformChange,
        example = json!({"reason": "ServiceNow upgrade window", "operator": "ana"})),
    responses(
        (status = 200, description = "Writes are paused on the platform", body = PauseAnswer),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthenticated),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 422, response = crate::openapi::Unprocessable),
        (status = 500, response = crate::openapi::Internal),
    ),
    security(("operatorToken" = []), ("opsSession" = []), ("oidcIdToken" = [])))]
pub(crate) async fn ops_pause(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let caller = ops::authorize(&state, &headers, Action::Writes).await?;
    let request = platform_change(&state, &headers, &caller, body).await?;
    let actor = format!("operator:{}", request.operator);
    let change = state
        .store
        .set_platform_writes(true, &actor, &request.reason)
        .await?;
    warn!(%actor, reason = %request.reason, "Writes are paused on the whole platform.");
    Ok(Json(json!({
        "paused": change.paused, "was_paused": change.was_paused, "scope": "the platform",
    })))
}

/// `POST /v1/ops/writes/resume` (operator) with `{"reason", "operator"}`: ends the platform's
/// pause and wakes every parked run; a tenant's own pause still holds.
#[utoipa::path(post, path = "/v1/ops/writes/resume", tag = "ops",
    request_body(content = PlatformChange,
        example = json!({"reason": "upgrade done", "operator": "ana"})),
    responses(
        (status = 200, description = "The platform's pause is over", body = PauseAnswer),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthenticated),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 422, response = crate::openapi::Unprocessable),
        (status = 500, response = crate::openapi::Internal),
    ),
    security(("operatorToken" = []), ("opsSession" = []), ("oidcIdToken" = [])))]
pub(crate) async fn ops_resume(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let caller = ops::authorize(&state, &headers, Action::Writes).await?;
    let request = platform_change(&state, &headers, &caller, body).await?;
    let actor = format!("operator:{}", request.operator);
    let change = state
        .store
        .set_platform_writes(false, &actor, &request.reason)
        .await?;
    let woken = state
        .steward
        .wake_parked(None, state.steward.gate())
        .await?;
    Ok(Json(json!({
        "paused": change.paused, "was_paused": change.was_paused, "scope": "the platform",
        "woken": woken,
    })))
}

/// The tenant change in the body, checked against the token's tenant.
async fn tenant_change(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    tenant: &TenantId,
) -> Result<String, ApiError> {
    let bytes = crate::webhooks::read_body(body, headers, state.limits.api_body_bytes).await?;
    let change: TenantChange = parse_body(&bytes)?;
    if change.tenant.is_some_and(|t| t != tenant.as_str()) {
        return Err(ApiError::NotFound);
    }
    let check = OperatorRequest {
        operator: "tenant".into(),
        reason: change.reason,
    };
    check.check().map_err(ApiError::from)?;
    Ok(check.reason)
}

/// `GET /v1/tenant/writes` (`admin`): the pauses that hold the tenant's writes now.
#[utoipa::path(get, path = "/v1/tenant/writes", tag = "tenant",
    responses(
        (status = 200, description = "The pauses holding this tenant", body = PauseList),
        (status = 401, response = crate::openapi::Unauthenticated),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 500, response = crate::openapi::Internal),
    ),
    security(("tenantToken" = [])))]
pub(crate) async fn tenant_pauses(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let admin = admin(&state, &headers).await?;
    let pauses = state.store.write_pauses(&admin.scope).await?;
    Ok(Json(json!({ "pauses": pauses })))
}

/// `POST /v1/tenant/writes/pause` (`admin`) with `{"reason"}`: stops this tenant's writes.
#[utoipa::path(post, path = "/v1/tenant/writes/pause", tag = "tenant",
    request_body(content = TenantChange, example = json!({"reason": "change freeze"})),
    responses(
        (status = 200, description = "The tenant's writes are paused", body = PauseAnswer),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthenticated),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 422, response = crate::openapi::Unprocessable),
        (status = 500, response = crate::openapi::Internal),
    ),
    security(("tenantToken" = [])))]
pub(crate) async fn tenant_pause(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let admin = admin(&state, &headers).await?;
    let reason = tenant_change(&state, &headers, body, admin.scope.tenant()).await?;
    let change = state
        .store
        .pause_tenant_writes(&admin.scope, &admin.actor, &reason)
        .await?;
    warn!(
        tenant = %admin.scope.tenant(),
        actor = %admin.actor,
        %reason,
        "A tenant's writes are paused."
    );
    Ok(Json(json!({
        "paused": change.paused, "was_paused": change.was_paused,
        "scope": format!("tenant {}", admin.scope.tenant()),
    })))
}

/// `POST /v1/tenant/writes/resume` (`admin`) with `{"reason"}`: ends this tenant's pause
/// and wakes its parked runs; the platform's pause, if any, still holds.
#[utoipa::path(post, path = "/v1/tenant/writes/resume", tag = "tenant",
    request_body(content = TenantChange, example = json!({"reason": "freeze over"})),
    responses(
        (status = 200, description = "The tenant's pause is over", body = PauseAnswer),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthenticated),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 422, response = crate::openapi::Unprocessable),
        (status = 500, response = crate::openapi::Internal),
    ),
    security(("tenantToken" = [])))]
pub(crate) async fn tenant_resume(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let admin = admin(&state, &headers).await?;
    let reason = tenant_change(&state, &headers, body, admin.scope.tenant()).await?;
    let change = state
        .store
        .resume_tenant_writes(&admin.scope, &admin.actor, &reason)
        .await?;
    let woken = state
        .steward
        .wake_parked(Some(admin.scope.tenant()), state.steward.gate())
        .await?;
    Ok(Json(json!({
        "paused": change.paused, "was_paused": change.was_paused,
        "scope": format!("tenant {}", admin.scope.tenant()), "woken": woken,
    })))
}

/// `PUT /v1/tenant/shadow` (`admin`) with `{"enabled": bool}`: in shadow mode runs go as far
/// as the write, post a `shadow:` notice and end `shadowed`, writing nothing.
#[utoipa::path(put, path = "/v1/tenant/shadow", tag = "tenant",
    request_body(content = ShadowBody, example = json!({"enabled": true})),
    responses(
        (status = 200, description = "Shadow mode is set", body = ShadowBody),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthenticated),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 500, response = crate::openapi::Internal),
    ),
    security(("tenantToken" = [])))]
pub(crate) async fn put_shadow(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let admin = admin(&state, &headers).await?;
    let shadow: ShadowSettings = json_body(&headers, body).await?;
    let audit = draft(
        "shadow.set",
        &admin.actor,
        json!({ "enabled": shadow.enabled }),
    );
    state
        .store
        .set_tenant_section(
            &admin.scope,
            TenantControls::SHADOW,
            Some(json!(shadow)),
            audit,
        )
        .await?;
    reload(&state, admin.scope.tenant()).await;
    Ok(Json(json!({ "enabled": shadow.enabled })))
}

/// `PUT /v1/tenant/budgets` (`admin`): the tenant's budgets, each at most the platform's
/// limit (a value above it is 422 naming it and the limit).
#[utoipa::path(put, path = "/v1/tenant/budgets", tag = "tenant",
    request_body(content = BudgetsBody,
        example = json!({"llm_calls_per_hour": 200, "runs_per_source_per_minute": 30})),
    responses(
        (status = 200, description = "The budgets as they stand", body = BudgetsAnswer),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthenticated),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 422, response = crate::openapi::Unprocessable),
        (status = 500, response = crate::openapi::Internal),
    ),
    security(("tenantToken" = [])))]
pub(crate) async fn put_budgets(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let admin = admin(&state, &headers).await?;
    let budgets: Budgets = json_body(&headers, body).await?;
    budgets
        .check(state.steward.limits())
        .map_err(ApiError::Unprocessable)?;
    let audit = draft("budgets.set", &admin.actor, json!({ "budgets": budgets }));
    state
        .store
        .set_tenant_section(
            &admin.scope,
            TenantControls::BUDGETS,
            Some(json!(budgets)),
            audit,
        )
        .await?;
    reload(&state, admin.scope.tenant()).await;
    budgets_answer(&state, &admin.scope, budgets).await
}

/// `GET /v1/tenant/budgets` (`admin`): the tenant's budgets, the platform's limits, what runs
/// are held to, and the use of the last day's windows.
#[utoipa::path(get, path = "/v1/tenant/budgets", tag = "tenant",
    responses(
        (status = 200, description = "The budgets as they stand", body = BudgetsAnswer),
        (status = 401, response = crate::openapi::Unauthenticated),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 500, response = crate::openapi::Internal),
    ),
    security(("tenantToken" = [])))]
pub(crate) async fn get_budgets(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let admin = admin(&state, &headers).await?;
    let record = state.store.tenant(&admin.scope).await?;
    let mut document = record.map(|r| r.settings).unwrap_or_default();
    let controls = TenantControls::take(&mut document).map_err(ApiError::Internal)?;
    budgets_answer(&state, &admin.scope, controls.budgets).await
}

async fn budgets_answer(
    state: &AppState,
    scope: &steward_persistence::TenantScope,
    budgets: Budgets,
) -> Result<Json<Value>, ApiError> {
    let limits = state.steward.limits();
    let since = state.store.clock().now_millis() - DAY_MS;
    let usage = state.store.budget_usage(scope, since).await?;
    Ok(Json(json!({
        "budgets": budgets,
        "limits": limits,
        "effective": budgets.effective(limits),
        "usage": usage,
    })))
}
