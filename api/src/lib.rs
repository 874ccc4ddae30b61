//! Steward's HTTP surface, as axum routers: signed webhook intake, the runs API, Slack
//! interaction callbacks, health, and the ops API and page for the operator. Handlers verify
//! before they parse, map every failure to one status in [`error::ApiError`], and hand work to
//! the actor system without waiting for it.

mod break_glass;
mod controls;
pub mod error;
mod evidence;
mod expiring;
pub mod hardening;
mod health;
mod metrics;
pub mod oidc;
pub mod openapi;
mod ops;
pub mod ops_auth;
mod ops_page;
mod reports;
mod retention;
mod runs;
pub mod siem;
mod slack;
pub mod state;
mod telemetry;
pub mod tenancy;
mod tenancy_check;
mod webhooks;

use axum::Router;
use axum::routing::{delete, get, post, put};

use openapi::Routes;

pub use hardening::{RateLimit, RateLimits, ServerLimits, harden};
pub use oidc::{Oidc, OidcSettings};
pub use ops_auth::{OpsAuth, OpsSettings, Role};
pub use state::{ApiLimits, AppParts, AppState};
pub use tenancy::TenancySettings;

/// The whole API.
pub fn router(state: AppState) -> Router {
    routes()
        .router
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            break_glass::audit_uses,
        ))
        .layer(axum::middleware::from_fn(telemetry::http_span))
        .layer(axum::Extension(reports::RejectionTally::new(
            state.store.clone(),
        )))
        .with_state(state)
}

/// Every path the router serves (OpenAPI syntax, `{param}`), for holding the OpenAPI document
/// to the router.
pub fn route_paths() -> Vec<&'static str> {
    routes().paths
}

/// Every route, each documented by its handler's `#[utoipa::path]` and listed in
/// [`openapi`]'s document.
fn routes() -> Routes {
    Routes::new()
        .route("/healthz", get(health::healthz))
        .route("/openapi.json", get(openapi::serve))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics::scrape))
        .route("/v1/webhooks/{tenant}/{source}", post(webhooks::receive))
        .route("/v1/runs", post(runs::create).get(runs::list))
        .route("/v1/runs/{id}", get(runs::show))
        .route("/v1/slack/interactions/{tenant}", post(slack::interaction))
        .route("/v1/ops/actors", get(ops::actors))
        .route("/v1/ops/runs", get(ops::runs))
        .route("/v1/ops/runs/{id}", get(ops::run))
        .route("/v1/ops/runs/{id}/retry", post(ops::retry))
        .route("/v1/ops/runs/{id}/cancel", post(ops::cancel))
        .route("/v1/ops/oidc", get(ops::oidc_config))
        .route("/v1/ops/writes", get(controls::ops_pauses))
        .route("/v1/ops/writes/pause", post(controls::ops_pause))
        .route("/v1/ops/writes/resume", post(controls::ops_resume))
        .route(
            "/v1/ops/break-glass",
            post(break_glass::open).get(break_glass::list),
        )
        .route("/v1/ops/break-glass/{id}", delete(break_glass::close))
        .route("/v1/ops/audit", get(break_glass::audit))
        .route(
            "/v1/tenants",
            post(tenancy::create_tenant).get(tenancy::list_tenants),
        )
        .route("/v1/tenants/{id}", delete(tenancy::delete_tenant))
        .route("/v1/tenants/{id}/export", get(tenancy::export))
        .route(
            "/v1/tenants/{id}/legal-hold",
            put(retention::put_legal_hold).delete(retention::delete_legal_hold),
        )
        .route("/v1/tenants/{id}/erasure", post(retention::post_erasure))
        .route("/v1/ops/retention/sweep", post(retention::post_sweep))
        .route(
            "/v1/tenant/retention",
            put(retention::put_retention).get(retention::get_retention),
        )
        .route("/v1/tenants/{id}/evidence", get(evidence::platform_export))
        .route("/v1/tenant/evidence", get(evidence::tenant_export))
        .route("/v1/tenants/{id}/report", get(reports::platform_report))
        .route("/v1/tenant/report", get(reports::tenant_report))
        .route("/v1/evidence/keys", get(evidence::keys))
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
        .route(
            "/v1/tenant/siem",
            put(siem::put).get(siem::get).delete(siem::delete),
        )
        .route("/v1/tenant/writes", get(controls::tenant_pauses))
        .route("/v1/tenant/writes/pause", post(controls::tenant_pause))
        .route("/v1/tenant/writes/resume", post(controls::tenant_resume))
        .route("/v1/tenant/shadow", put(controls::put_shadow))
        .route(
            "/v1/tenant/budgets",
            put(controls::put_budgets).get(controls::get_budgets),
        )
        .route("/ops", get(ops_page::page))
        .route("/ops/login", post(ops_page::login))
        .route("/ops/logout", post(ops_page::logout))
        .route("/ops/oidc/start", get(ops_page::oidc_start))
        .route("/ops/oidc/callback", get(ops_page::oidc_callback))
}
