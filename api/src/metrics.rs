//! `GET /metrics`: the process's metrics in the OpenMetrics text format, for Prometheus. It
//! needs no credential and is served only when `[metrics]` enables it; what it carries is
//! counts, ages and latencies labelled by tenant, state, step, adapter, reason or query, never a
//! secret, an incident's text or a run id.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use steward_actors::metrics::CONTENT_TYPE;

use crate::error::ApiError;
use crate::state::AppState;

/// The metrics, with the run and approval gauges read from the store at this scrape.
#[utoipa::path(get, path = "/metrics", tag = "health", responses(
    (status = 200, description = "The metrics in the OpenMetrics text format",
        content_type = "application/openmetrics-text", body = String),
    (status = 404, response = crate::openapi::NotFound)))]
pub(crate) async fn scrape(State(state): State<AppState>) -> Result<Response, ApiError> {
    let metrics = state.metrics.as_ref().ok_or(ApiError::NotFound)?;
    let text = metrics.scrape(&state.store).await;
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response())
}
