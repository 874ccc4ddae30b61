//! Liveness and readiness.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::state::AppState;

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "Up", body = crate::openapi::Health,
        example = json!({"status": "ok"}))))]
pub(crate) async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// The process can serve: the database answers.
#[utoipa::path(get, path = "/readyz", tag = "health", responses(
    (status = 200, description = "The database answers", body = crate::openapi::Health,
        example = json!({"status": "ready"})),
    (status = 503, response = crate::openapi::Unavailable)))]
pub(crate) async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    state
        .store
        .ping()
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    Ok(Json(json!({ "status": "ready" })))
}
