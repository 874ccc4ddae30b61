//! Steward's HTTP surface, as axum routers: signed webhook intake, the runs API, Slack
//! interaction callbacks, and health. Handlers verify before they parse, map every failure to
//! one status in [`error::ApiError`], and hand work to the actor system without waiting for it.

pub mod error;
mod health;
mod runs;
mod slack;
pub mod state;
mod webhooks;

use axum::Router;
use axum::routing::{get, post};

pub use state::{ApiLimits, AppState};

/// The whole API.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/v1/webhooks/{tenant}/{source}", post(webhooks::receive))
        .route("/v1/runs", post(runs::create).get(runs::list))
        .route("/v1/runs/{id}", get(runs::show))
        .route("/v1/slack/interactions/{tenant}", post(slack::interaction))
        .with_state(state)
}
