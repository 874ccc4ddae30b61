//! Everything a tenant's runs share: the store scope, settings, policy gate and adapter actors.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use steward_persistence::{Store, TenantScope};

use crate::budgets::PlatformLimits;
use crate::connectors::Connectors;
use crate::policy::PolicyGate;
use crate::retry::RetryPolicy;
use crate::settings::{TenantControls, TenantSettings};

/// A tenant's shared context, built by its supervisor when it starts.
pub struct TenantRuntime {
    pub store: Store,
    pub scope: TenantScope,
    pub settings: TenantSettings,
    pub policy: PolicyGate,
    pub retry: RetryPolicy,
    /// Base URL of the ServiceNow instance, for links in messages.
    pub servicenow_url: String,
    /// Shadow mode and the tenant's budgets (default: neither set).
    pub controls: TenantControls,
    /// The platform's budget ceilings (default: [`PlatformLimits::default`]).
    pub limits: PlatformLimits,
    /// The process's metrics for this tenant (default: a registry of its own).
    pub metrics: crate::metrics::TenantMetrics,
    connectors: RwLock<Connectors>,
    /// Counts adapter replacements, so a caller whose adapter stopped can wait for the next.
    replaced: tokio::sync::watch::Sender<u64>,
}

impl TenantRuntime {
    pub fn new(
        store: Store,
        scope: TenantScope,
        settings: TenantSettings,
        policy: PolicyGate,
        retry: RetryPolicy,
        connectors: Connectors,
    ) -> Self {
        let servicenow_url = settings
            .servicenow
            .instance_url
            .trim_end_matches('/')
            .to_owned();
        Self {
            store,
            scope,
            settings,
            policy,
            retry,
            servicenow_url,
            controls: TenantControls::default(),
            limits: PlatformLimits::default(),
            metrics: crate::metrics::TenantMetrics::default(),
            connectors: RwLock::new(connectors),
            replaced: tokio::sync::watch::Sender::new(0),
        }
    }

    /// The adapter actors as they are now (an adapter that restarted has a new reference).
    pub fn connectors(&self) -> Connectors {
        self.connectors
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Replaces the adapter references after a restart.
    pub fn set_connectors(&self, connectors: Connectors) {
        *self
            .connectors
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = connectors;
        self.replaced.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The adapter actors, once they are all running: when one has stopped (it failed and the
    /// supervisor is starting a new set) this waits up to `patience` for the replacement, and
    /// then gives what there is, so the call fails and the retry owner decides.
    pub async fn live_connectors(&self, patience: Duration) -> Connectors {
        let mut replaced = self.replaced.subscribe();
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let current = self.connectors();
            if current.all_running() {
                return current;
            }
            match tokio::time::timeout_at(deadline, replaced.changed()).await {
                Ok(Ok(())) => continue,
                _ => return current,
            }
        }
    }

    /// A link to the incident in the ServiceNow UI.
    pub fn incident_url(&self, sys_id: &str) -> String {
        format!(
            "{}/nav_to.do?uri=incident.do%3Fsys_id%3D{sys_id}",
            self.servicenow_url
        )
    }
}

/// Shared handle.
pub type SharedRuntime = Arc<TenantRuntime>;
