//! What every handler shares.

use std::sync::Arc;

use steward_actors::Steward;
use steward_persistence::{MasterKey, Store};

use crate::ops_auth::OpsAuth;
use crate::tenancy::TenancySettings;

/// Request limits.
#[derive(Debug, Clone)]
pub struct ApiLimits {
    /// Largest webhook body accepted; larger is `413`.
    pub webhook_body_bytes: usize,
    /// Largest Slack interaction body accepted.
    pub slack_body_bytes: usize,
    /// Largest JSON body on the runs API.
    pub api_body_bytes: usize,
}

impl Default for ApiLimits {
    fn default() -> Self {
        Self {
            webhook_body_bytes: 256 * 1024,
            slack_body_bytes: 64 * 1024,
            api_body_bytes: 16 * 1024,
        }
    }
}

/// Shared handler state: one reference-counted handle, as the router clones it for every
/// request and for each layer that reads it (a clone of the parts themselves was about a dozen
/// shared counters touched and released per clone, a measurable share of a webhook's cost).
#[derive(Clone)]
pub struct AppState(Arc<AppParts>);

impl AppState {
    /// The state the handlers share, made of `parts`.
    pub fn new(parts: AppParts) -> Self {
        Self(Arc::new(parts))
    }
}

impl std::ops::Deref for AppState {
    type Target = AppParts;

    fn deref(&self) -> &AppParts {
        &self.0
    }
}

/// What [`AppState`] holds.
pub struct AppParts {
    pub steward: Steward,
    pub store: Store,
    pub master_key: Arc<MasterKey>,
    pub limits: ApiLimits,
    /// The operator credential and the ops page's sessions.
    pub ops: Arc<OpsAuth>,
    /// The deployment's region and its peers, for onboarding.
    pub tenancy: Arc<TenancySettings>,
    /// The process's metrics, served at `GET /metrics`; None when `[metrics]` turns them off
    /// (the route then answers 404).
    pub metrics: Option<steward_actors::Metrics>,
}
