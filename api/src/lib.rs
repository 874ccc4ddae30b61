//! Steward's HTTP surface, as axum routers: signed webhook intake, the runs API, Slack
//! interaction callbacks, health, and the ops API and page for the operator. Handlers verify
//! before they parse, map every failure to one status in [`error::ApiError`], and hand work to
//! the actor system without waiting for it.

pub mod error;
mod health;
mod ops;
pub mod ops_auth;
mod ops_page;
mod runs;
mod slack;
pub mod state;
mod webhooks;

use axum::Router;
use axum::routing::{get, post};

pub use ops_auth::{OpsAuth, OpsSettings};
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
        .route("/v1/ops/actors", get(ops::actors))
        .route("/v1/ops/runs", get(ops::runs))
        .route("/v1/ops/runs/{id}", get(ops::run))
        .route("/v1/ops/runs/{id}/retry", post(ops::retry))
        .route("/v1/ops/runs/{id}/cancel", post(ops::cancel))
        .route("/ops", get(ops_page::page))
        .route("/ops/login", post(ops_page::login))
        .route("/ops/logout", post(ops_page::logout))
        .with_state(state)
}
