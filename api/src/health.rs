//! Liveness and readiness.

use std::time::Duration;

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

/// How long readiness waits for the database: less than the probes' own timeout (3 s in
/// `deploy/k8s`), so that a database that does not answer is a prompt `503`, not a probe left
/// waiting for the connection pool's timeout.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// The process can serve: the database answers within [`READY_TIMEOUT`].
#[utoipa::path(get, path = "/readyz", tag = "health", responses(
    (status = 200, description = "The database answers", body = crate::openapi::Health,
        example = json!({"status": "ready"})),
    (status = 503, response = crate::openapi::Unavailable)))]
pub(crate) async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    match tokio::time::timeout(READY_TIMEOUT, state.store.ping()).await {
        Ok(Ok(())) => Ok(Json(json!({ "status": "ready" }))),
        Ok(Err(e)) => Err(ApiError::Unavailable(e.to_string())),
        Err(_) => Err(ApiError::Unavailable(format!(
            "the database did not answer within {} s",
            READY_TIMEOUT.as_secs()
        ))),
    }
}
