//! The ops API, for operators, on-call engineers and approvers (each by role, see
//! `ops_auth`): the live actor tree, runs across tenants with filters, one run with everything
//! kept about it (journal, state, snapshot, crash snapshots, audit entries), and a retry or
//! cancel.

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use serde::Deserialize;
use serde_json::{Value, json};
use steward_actors::operator::{OperatorError, OperatorRequest, fold_journal};
use steward_core::{RunId, TenantId};
use steward_persistence::{AuditEntry, Authenticator, RunFilter, RunRecord, TenantScope};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::ApiError;
use crate::ops_auth::{self, Action, OpsCaller};
use crate::state::AppState;
use crate::webhooks::read_body;

/// The longest value accepted for one query parameter.
const MAX_PARAM_BYTES: usize = 200;
/// Runs listed when no limit is asked for.
const DEFAULT_LIMIT: u32 = 50;

/// Checks who the caller is (see `ops_auth::identify`) and that they may do `action`:
/// no or an unknown credential is 401, a tenant's API token or a missing role 403. A page
/// session needs its CSRF header for an action that changes something.
pub(crate) async fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    action: Action,
) -> Result<OpsCaller, ApiError> {
    let caller = ops_auth::identify(state, headers, action.changes()).await?;
    if !caller.principal.permits(action, state.ops.oidc().is_some()) {
        if let Some(person) = caller.principal.person() {
            tracing::warn!(who = %person.describe(), ?action, "An ops request was refused for its role.");
        }
        return Err(ApiError::Forbidden("role"));
    }
    Ok(caller)
}

/// The operator request for a decision: a person is audited as who they signed in as,
/// whatever the body says; the operator token names itself with the body's `operator`.
pub(crate) fn operator_request(
    caller: &OpsCaller,
    declared: Option<String>,
    reason: String,
) -> Result<OperatorRequest, ApiError> {
    let operator = match caller.principal.person() {
        Some(person) => person.audit_name(),
        None => declared.ok_or_else(|| {
            ApiError::Unprocessable("`operator` names who decides with the operator token".into())
        })?,
    };
    let request = OperatorRequest { operator, reason };
    request.check().map_err(ApiError::from)?;
    if let Some(person) = caller.principal.person() {
        tracing::info!(who = %person.describe(), "An ops decision by a signed-in person.");
    }
    Ok(request)
}

/// `GET /v1/ops/oidc`: the identity provider a command-line client signs in with (issuer,
/// client id, scopes); 404 when none is configured. No credential needed.
#[utoipa::path(get, path = "/v1/ops/oidc", tag = "ops",
    responses(
        (status = 200, description = "The provider to sign in with", body = crate::openapi::OidcClientConfig),
        (status = 404, response = crate::openapi::NotFound),
    ))]
pub(crate) async fn oidc_config(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let oidc = state.ops.oidc().ok_or(ApiError::NotFound)?;
    Ok(Json(crate::oidc::client_config(oidc)))
}

/// `GET /v1/ops/actors`: the live supervision tree with each tenant's waiting runs.
#[utoipa::path(get, path = "/v1/ops/actors", tag = "ops",
    responses(
        (status = 200, description = "The tree", body = crate::openapi::ActorTree),
        (status = 401, response = crate::openapi::Unauthenticated),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 500, response = crate::openapi::Internal),
    ),
    security(("operatorToken" = []), ("opsSession" = []), ("oidcIdToken" = [])))]
pub(crate) async fn actors(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authorize(&state, &headers, Action::Read).await?;
    let tree = state.steward.inspect().await?;
    let at = state.store.clock().now_millis();
    Ok(Json(json!({ "at": at, "tree": tree })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RunsQuery {
    /// One state, or several separated by commas.
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    since: Option<String>,
    #[serde(default)]
    until: Option<String>,
    #[serde(default)]
    number: Option<String>,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    limit: Option<u32>,
    #[serde(default)]
    before: Option<String>,
}

/// A time as Unix milliseconds or RFC 3339.
fn parse_time(name: &str, value: &str) -> Result<i64, ApiError> {
    if let Ok(ms) = value.parse::<i64>() {
        return Ok(ms);
    }
    OffsetDateTime::parse(value, &Rfc3339)
        .map(|t| i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX))
        .map_err(|_| {
            ApiError::BadRequest(format!(
                "`{name}` must be Unix milliseconds or an RFC 3339 time"
            ))
        })
}

impl RunsQuery {
    fn filter(self) -> Result<RunFilter, ApiError> {
        let params = [
            &self.state,
            &self.source,
            &self.since,
            &self.until,
            &self.number,
            &self.tenant,
            &self.before,
        ];
        if params
            .iter()
            .any(|p| p.as_ref().is_some_and(|v| v.len() > MAX_PARAM_BYTES))
        {
            return Err(ApiError::BadRequest(format!(
                "a query parameter is longer than {MAX_PARAM_BYTES} bytes"
            )));
        }
        let tenant = self
            .tenant
            .map(|t| {
                TenantId::parse(&t).map_err(|e| ApiError::BadRequest(format!("`tenant`: {e}")))
            })
            .transpose()?;
        let before = self
            .before
            .map(|b| {
                RunId::parse(&b)
                    .map_err(|_| ApiError::BadRequest("`before` must be a run id".into()))
            })
            .transpose()?;
        let states = self
            .state
            .map(|s| {
                s.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let filter = RunFilter {
            tenant,
            states,
            source: self.source,
            since: self.since.map(|s| parse_time("since", &s)).transpose()?,
            until: self.until.map(|s| parse_time("until", &s)).transpose()?,
            number: self.number,
            before,
            limit: self.limit.unwrap_or(DEFAULT_LIMIT),
        };
        filter.check()?;
        Ok(filter)
    }
}

/// A run as listed: no trigger body.
fn summary(run: &RunRecord) -> Value {
    json!({
        "id": run.id,
        "tenant": run.tenant,
        "source": run.source,
        "incident": run.incident,
        "state": run.state,
        "steps": run.steps,
        "last_error": run.last_error,
        "created_at": run.created_at,
        "updated_at": run.updated_at,
    })
}

/// `GET /v1/ops/runs?state=&source=&since=&until=&number=&tenant=&limit=&before=`: runs of
/// every tenant, newest first; `next` pages on.
#[utoipa::path(get, path = "/v1/ops/runs", tag = "ops",
    params(
        ("state" = Option<String>, Query, description = "One state, or several separated by commas"),
        ("source" = Option<String>, Query, description = "A webhook source name"),
        ("since" = Option<String>, Query, description = "Unix ms or RFC 3339"),
        ("until" = Option<String>, Query, description = "Unix ms or RFC 3339"),
        ("number" = Option<String>, Query, description = "An incident number"),
        ("tenant" = Option<String>, Query, description = "A tenant id"),
        ("limit" = Option<u32>, Query, description = "1 to 500 (default 50)"),
        ("before" = Option<String>, Query, description = "A run id: the page after it"),
    ),
    responses(
        (status = 200, description = "A page of runs", body = crate::openapi::OpsRunPage),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthenticated),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 500, response = crate::openapi::Internal),
    ),
    security(("operatorToken" = []), ("opsSession" = []), ("oidcIdToken" = [])))]
pub(crate) async fn runs(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<RunsQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    authorize(&state, &headers, Action::Read).await?;
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let filter = query.filter()?;
    let runs = state.store.find_runs(&filter).await?;
    let full = runs.len() == filter.limit.clamp(1, 500) as usize;
    let next = full.then(|| runs.last().map(|r| r.id)).flatten();
    let listed: Vec<Value> = runs.iter().map(summary).collect();
    Ok(Json(json!({ "runs": listed, "next": next })))
}

/// An audit entry with its body as JSON.
fn audit_json(e: &AuditEntry) -> Value {
    json!({
        "seq": e.seq,
        "at": e.at,
        "kind": e.kind,
        "actor": e.actor,
        "body": serde_json::from_str::<Value>(&e.body).unwrap_or(Value::String(e.body.clone())),
        "hash": e.hash,
    })
}

/// The run's tenant scope, found from its id alone.
async fn run_scope(state: &AppState, id: &str) -> Result<(RunId, TenantScope), ApiError> {
    let id = RunId::parse(id).map_err(|_| ApiError::NotFound)?;
    let tenant = state
        .store
        .run_tenant(id)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok((
        id,
        TenantScope::assume(tenant, Authenticator::OperatorToken),
    ))
}

/// `GET /v1/ops/runs/{id}`: the run, its journal, its state now, its stored snapshot, its
/// crash snapshots and its audit entries.
#[utoipa::path(get, path = "/v1/ops/runs/{id}", tag = "ops",
    params(("id" = String, Path, description = "The run id")),
    responses(
        (status = 200, description = "The run", body = crate::openapi::OpsRun),
        (status = 401, response = crate::openapi::Unauthenticated),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 500, response = crate::openapi::Internal),
    ),
    security(("operatorToken" = []), ("opsSession" = []), ("oidcIdToken" = [])))]
pub(crate) async fn run(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    authorize(&state, &headers, Action::Read).await?;
    let (id, scope) = run_scope(&state, &id).await?;
    let store = &state.store;
    let run = store.run(&scope, id).await?.ok_or(ApiError::NotFound)?;
    let journal = store.steps(&scope, id).await?;
    let snapshot = store.snapshot(&scope, id).await?;
    let crashes = store.crashes(&scope, id).await?;
    let audit = store.run_audit(&scope, id).await?;
    let (folded, fold_error) = match fold_journal(&journal) {
        Ok(s) => (serde_json::to_value(s).unwrap_or_default(), None),
        Err(e) => (Value::Null, Some(e)),
    };
    Ok(Json(json!({
        "run": run,
        "journal": journal,
        "state": folded,
        "state_error": fold_error,
        "snapshot": snapshot.map(|(offset, state)| json!({ "offset": offset, "state": state })),
        "crashes": crashes,
        "audit": audit.iter().map(audit_json).collect::<Vec<_>>(),
    })))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    reason: String,
    /// Who decides, with the operator token; a signed-in person is audited as themselves and
    /// this is ignored.
    #[serde(default)]
    operator: Option<String>,
}

async fn decision(
    state: &AppState,
    headers: &HeaderMap,
    caller: &OpsCaller,
    body: Body,
) -> Result<OperatorRequest, ApiError> {
    let body = read_body(body, headers, state.limits.api_body_bytes).await?;
    let body: DecisionBody = crate::error::json_object(&body)?;
    operator_request(caller, body.operator, body.reason)
}

impl From<OperatorError> for ApiError {
    fn from(e: OperatorError) -> Self {
        match e {
            OperatorError::Invalid(why) => Self::Unprocessable(why),
            OperatorError::NotFound => Self::NotFound,
            OperatorError::Store(e) => e.into(),
            conflict @ (OperatorError::NotRetryable(_)
            | OperatorError::Ended(_)
            | OperatorError::Writing
            | OperatorError::Unreadable(_)
            | OperatorError::Busy) => Self::Conflict(conflict.to_string()),
        }
    }
}

/// `POST /v1/ops/runs/{id}/retry` with `{"reason", "operator"}`: resumes a failed run.
#[utoipa::path(post, path = "/v1/ops/runs/{id}/retry", tag = "ops",
    params(("id" = String, Path, description = "The run id")),
    request_body(content = DecisionBody,
        example = json!({"reason": "provider outage over", "operator": "ana"})),
    responses(
        (status = 200, description = "What it did", body = crate::openapi::OperatorOutcome),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthenticated),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 409, response = crate::openapi::Conflict),
        (status = 413, response = crate::openapi::TooLarge),
        (status = 422, response = crate::openapi::Unprocessable),
        (status = 500, response = crate::openapi::Internal),
    ),
    security(("operatorToken" = []), ("opsSession" = []), ("oidcIdToken" = [])))]
pub(crate) async fn retry(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let caller = authorize(&state, &headers, Action::RetryCancel).await?;
    let (id, scope) = run_scope(&state, &id).await?;
    let request = decision(&state, &headers, &caller, body).await?;
    let outcome = state.steward.retry_run(&scope, id, &request).await?;
    Ok(Json(json!(outcome)))
}

/// `POST /v1/ops/runs/{id}/cancel` with `{"reason", "operator"}`: ends a run `cancelled`.
#[utoipa::path(post, path = "/v1/ops/runs/{id}/cancel", tag = "ops",
    params(("id" = String, Path, description = "The run id")),
    request_body(content = DecisionBody,
        example = json!({"reason": "provider outage over", "operator": "ana"})),
    responses(
        (status = 200, description = "What it did", body = crate::openapi::OperatorOutcome),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthenticated),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 409, response = crate::openapi::Conflict),
        (status = 413, response = crate::openapi::TooLarge),
        (status = 422, response = crate::openapi::Unprocessable),
        (status = 500, response = crate::openapi::Internal),
    ),
    security(("operatorToken" = []), ("opsSession" = []), ("oidcIdToken" = [])))]
pub(crate) async fn cancel(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let caller = authorize(&state, &headers, Action::RetryCancel).await?;
    let (id, scope) = run_scope(&state, &id).await?;
    let request = decision(&state, &headers, &caller, body).await?;
    let outcome = state.steward.cancel_run(&scope, id, &request).await?;
    Ok(Json(json!(outcome)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(q: &str) -> Result<RunsQuery, QueryRejection> {
        let uri: axum::http::Uri = format!("/v1/ops/runs?{q}").parse().unwrap();
        Query::<RunsQuery>::try_from_uri(&uri).map(|Query(q)| q)
    }

    #[test]
    fn times_are_unix_millis_or_rfc3339() {
        assert_eq!(
            parse_time("since", "1700000000000").unwrap(),
            1_700_000_000_000
        );
        assert_eq!(
            parse_time("since", "2023-11-14T22:13:20Z").unwrap(),
            1_700_000_000_000
        );
        for bad in ["yesterday", "2023-13-01T00:00:00Z", "", "1e9"] {
            assert!(parse_time("since", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_query_becomes_a_checked_filter() {
        let f = query("state=failed,%20stale,&tenant=us-acme")
            .unwrap()
            .filter()
            .unwrap();
        assert_eq!(f.states, ["failed", "stale"]);
        assert_eq!(f.tenant.unwrap().as_str(), "us-acme");
        assert_eq!(f.limit, DEFAULT_LIMIT);
        let long = format!("state={}", "s".repeat(201));
        for bad in [
            "tenant=xx-nope",
            "before=not-a-run",
            "number=INC%25",
            "since=later",
            "source=Bad%20Source",
            long.as_str(),
        ] {
            assert!(query(bad).unwrap().filter().is_err(), "{bad}");
        }
        assert!(
            query("colour=red").is_err(),
            "unknown parameters are refused"
        );
        assert!(query("limit=-1").is_err());
    }
}
