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
pub mod tenancy;
mod tenancy_check;
mod webhooks;

use axum::Router;
use axum::routing::{delete, get, post, put};

pub use ops_auth::{OpsAuth, OpsSettings};
pub use state::{ApiLimits, AppState};
pub use tenancy::TenancySettings;

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
        .route(
            "/v1/tenants",
            post(tenancy::create_tenant).get(tenancy::list_tenants),
        )
        .route("/v1/tenants/{id}", delete(tenancy::delete_tenant))
        .route("/v1/tenants/{id}/export", get(tenancy::export))
        .route(
            "/v1/tenant/connectors/servicenow",
            put(tenancy::put_servicenow),
        )
        .route("/v1/tenant/connectors/slack", put(tenancy::put_slack))
        .route("/v1/tenant/connectors/llm", put(tenancy::put_llm))
        .route("/v1/tenant/policy", put(tenancy::put_policy))
        .route("/v1/tenant/sources", post(tenancy::create_source))
        .route(
            "/v1/tenant/sources/{name}/rotate",
            post(tenancy::rotate_source),
        )
        .route("/v1/tenant/secrets/{name}", put(tenancy::put_secret))
        .route(
            "/v1/tenant/tokens",
            post(tenancy::create_token).get(tenancy::list_tokens),
        )
        .route("/v1/tenant/tokens/{id}", delete(tenancy::revoke_token))
        .route("/v1/tenant/check", post(tenancy::check))
        .route("/ops", get(ops_page::page))
        .route("/ops/login", post(ops_page::login))
        .route("/ops/logout", post(ops_page::logout))
        .with_state(state)
}
