//! Tenant scope: the proof, as a type, that a caller was authenticated for one tenant.

use steward_core::TenantId;

/// How the holder of a [`TenantScope`] proved that it acts for the tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Authenticator {
    /// A tenant API token, checked against its stored hash.
    ApiToken,
    /// A webhook whose signature verified with the source's secret.
    WebhookSignature,
    /// A Slack interaction whose signature verified with the tenant's signing secret.
    SlackSignature,
    /// A run resumed from the store; the scope is the one the run was created under.
    RunResume,
    /// Tenant configuration loaded at startup.
    Config,
    /// An operator command run on the host.
    Operator,
    /// An operator who presented the operator token (or a session it opened) to the ops API.
    OperatorToken,
}

/// Proof that a caller was authenticated for a tenant. Every store call for tenant data takes
/// one, and every query it makes filters by this tenant, so a row of another tenant is
/// indistinguishable from a row that does not exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantScope {
    tenant: TenantId,
    by: Authenticator,
}

impl TenantScope {
    /// Vouches that the caller acts for `tenant`, proven by `by`. This is the only constructor:
    /// only authentication paths (token and signature checks, config load, operator commands,
    /// run resume) may call it, right after the proof succeeded.
    pub fn assume(tenant: TenantId, by: Authenticator) -> Self {
        Self { tenant, by }
    }

    /// The tenant this scope admits.
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    /// How the tenant was proven.
    pub fn authenticator(&self) -> &Authenticator {
        &self.by
    }

    /// The tenant id as bound into queries.
    pub(crate) fn id(&self) -> &str {
        self.tenant.as_str()
    }
}
