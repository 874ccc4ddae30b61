//! The runs API, for holders of a tenant API token: start a run for a named incident, read a
//! run with its steps, list a tenant's runs newest first.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use steward_actors::{Step, states};
use steward_core::{IncidentRef, RunId};
use steward_persistence::{AuditDraft, IntakeOutcome, NewRun, TenantScope};

use crate::error::ApiError;
use crate::state::AppState;
use crate::webhooks::{read_body, start};

/// Authenticates the bearer token and checks it carries `scope`.
async fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    scope: &'static str,
) -> Result<TenantScope, ApiError> {
    Ok(authorize_principal(state, headers, scope).await?.0)
}

/// As [`authorize`], with the token's label: who the call acts as.
async fn authorize_principal(
    state: &AppState,
    headers: &HeaderMap,
    scope: &'static str,
) -> Result<(TenantScope, String), ApiError> {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .filter(|t| !t.is_empty() && t.len() <= 256)
        .ok_or(ApiError::Unauthenticated)?;
    let principal = state
        .store
        .authenticate_token_labelled(token)
        .await?
        .ok_or(ApiError::Unauthenticated)?;
    if !principal.scopes.iter().any(|s| s == scope || s == "admin") {
        return Err(ApiError::Forbidden(scope));
    }
    Ok((principal.scope, principal.label))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateRun {
    incident: IncidentSpec,
    /// Who asked, as a Slack user id; they may not approve their own request.
    #[serde(default)]
    requester_slack: Option<String>,
}

/// Exactly one of `sys_id` (32 hex digits) or `number` (such as `INC0010001`).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct IncidentSpec {
    #[serde(default)]
    #[schema(pattern = "^[0-9a-f]{32}$")]
    sys_id: Option<String>,
    #[serde(default)]
    #[schema(pattern = "^[A-Z]+[0-9]+$", max_length = 40)]
    number: Option<String>,
}

/// `POST /v1/runs` (scope `runs:write`). An `Idempotency-Key` header deduplicates like a
/// webhook delivery id.
#[utoipa::path(post, path = "/v1/runs", tag = "runs",
    params(("Idempotency-Key" = Option<String>, Header,
        description = "1 to 200 visible ASCII characters; a repeat names the first run")),
    request_body(content = CreateRun, description = "At most 16 KiB",
        example = json!({"incident": {"number": "INC0010001"}, "requester_slack": "U0DEMOREQ01"})),
    responses(
        (status = 202, description = "A run started", body = crate::openapi::RunAccepted),
        (status = 200, description = "The `Idempotency-Key` was seen: its run", body = crate::openapi::RunAccepted),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthenticated),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 413, response = crate::openapi::TooLarge),
        (status = 422, response = crate::openapi::Unprocessable),
        (status = 500, response = crate::openapi::Internal),
    ),
    security(("tenantToken" = ["runs:write"])))]
pub(crate) async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let (scope, token_label) = authorize_principal(&state, &headers, "runs:write").await?;
    let body = read_body(body, &headers, state.limits.api_body_bytes).await?;
    let req: CreateRun = crate::error::json_object(&body)?;
    let incident = match (&req.incident.sys_id, &req.incident.number) {
        (Some(s), None) => IncidentRef::sys_id(s),
        (None, Some(n)) => IncidentRef::number(n),
        _ => None,
    }
    .ok_or_else(|| {
        ApiError::Unprocessable(
            "name the incident by exactly one of `sys_id` (32 hex digits) or `number`".into(),
        )
    })?;
    let key = headers
        .get("idempotency-key")
        .map(|v| v.to_str().map(str::to_owned))
        .transpose()
        .map_err(|_| ApiError::BadRequest("Idempotency-Key must be visible ASCII".into()))?;
    if key.as_ref().is_some_and(|k| k.is_empty() || k.len() > 200) {
        return Err(ApiError::BadRequest(
            "Idempotency-Key must be 1 to 200 characters".into(),
        ));
    }
    let id = RunId::new();
    let step = Step::Received {
        incident: incident.clone(),
        source: None,
        delivery_id: key.clone(),
        requester: req.requester_slack.clone(),
    };
    let mut run = NewRun {
        id,
        source: None,
        delivery_id: key,
        change: None,
        incident: incident.clone(),
        // The token's label is the requester's principal: the tenant maps it to a person.
        trigger: json!({
            "kind": "api",
            "requester_slack": req.requester_slack,
            "token_label": token_label,
        }),
        state: states::RECEIVED.into(),
        first_step: (
            step.kind().into(),
            serde_json::to_value(&step).unwrap_or_default(),
        ),
        audit: AuditDraft {
            kind: "run.received".into(),
            run_id: Some(id),
            actor: "api-token".into(),
            body: json!({ "incident": incident }),
        },
    };
    crate::telemetry::record_traceparent(&mut run.trigger, &headers);
    let tenant = scope.tenant().clone();
    // The run's actor starts from what intake writes instead of reading it back.
    let fresh = steward_actors::run::FreshRun::of(&run)
        .map_err(|e| ApiError::Internal(format!("the first step does not read back: {e}")))?;
    match state.store.record_intake(&scope, run).await? {
        IntakeOutcome::Created(run_id) => {
            start(&state, tenant, run_id, fresh);
            Ok((
                StatusCode::ACCEPTED,
                Json(json!({ "run_id": run_id, "status": "accepted" })),
            ))
        }
        IntakeOutcome::Duplicate(run_id) => Ok((
            StatusCode::OK,
            Json(json!({ "run_id": run_id, "status": "duplicate" })),
        )),
    }
}

/// `GET /v1/runs/{id}` (scope `runs:read`): the run and its steps.
#[utoipa::path(get, path = "/v1/runs/{id}", tag = "runs",
    params(("id" = String, Path, description = "The run id")),
    responses(
        (status = 200, description = "The run and its journal", body = crate::openapi::RunWithSteps),
        (status = 401, response = crate::openapi::Unauthenticated),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 500, response = crate::openapi::Internal),
    ),
    security(("tenantToken" = ["runs:read"])))]
pub(crate) async fn show(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let scope = authorize(&state, &headers, "runs:read").await?;
    let id = RunId::parse(&id).map_err(|_| ApiError::NotFound)?;
    let run = state
        .store
        .run(&scope, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let steps = state.store.steps(&scope, id).await?;
    Ok(Json(json!({ "run": run, "steps": steps })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    #[serde(default)]
    limit: Option<u32>,
    #[serde(default)]
    before: Option<String>,
}

/// `GET /v1/runs?limit=&before=` (scope `runs:read`): newest first; `next` pages on.
#[utoipa::path(get, path = "/v1/runs", tag = "runs",
    params(
        ("limit" = Option<u32>, Query, description = "1 to 200 (default 50)"),
        ("before" = Option<String>, Query, description = "A run id: the page after it"),
    ),
    responses(
        (status = 200, description = "A page of the tenant's runs", body = crate::openapi::RunPage),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthenticated),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 500, response = crate::openapi::Internal),
    ),
    security(("tenantToken" = ["runs:read"])))]
pub(crate) async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let scope = authorize(&state, &headers, "runs:read").await?;
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let limit = query.limit.unwrap_or(50).clamp(1, 200);
    let before = query
        .before
        .map(|b| {
            RunId::parse(&b).map_err(|_| ApiError::BadRequest("`before` must be a run id".into()))
        })
        .transpose()?;
    let runs = state.store.list_runs(&scope, limit, before).await?;
    let next = (runs.len() == limit as usize)
        .then(|| runs.last().map(|r| r.id))
        .flatten();
    Ok(Json(json!({ "runs": runs, "next": next })))
}
