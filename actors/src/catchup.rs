//! The ServiceNow catch-up pass: after downtime (Steward's, the network's, or a sender that
//! dropped webhooks), ask each tenant's instance for the incidents changed since the last one
//! seen and start the runs that were missed, once each.
//!
//! A pass runs at startup and then every [`CatchupOptions::every`], for every tenant that has a
//! ServiceNow connector and a webhook source, one tenant after another. It reads the Table API
//! list of incidents with `sys_updated_on` at or after the tenant's watermark, oldest first, in
//! pages, and for each change it has not dealt with yet:
//!
//! - skips it when a run already covers it ([`Store::catchup_covered`]): a run for the incident
//!   created at or after the change (a webhook got there first, or an earlier pass), or a run
//!   whose `written` step is at or after the change. That second rule is how Steward's own
//!   writeback is told apart: its `PATCH` moves `sys_updated_on`, and the run records `written`
//!   only once the `PATCH` has returned, so a last update no later than a recorded write is
//!   taken as Steward's own and starts nothing. A person's edit made after that write is later
//!   than it and does start a run.
//! - otherwise records a run through the same intake path as a webhook
//!   ([`Store::record_intake`]) under the tenant's first webhook source (by name), with the
//!   delivery id `catchup:{sys_id}:{sys_updated_on}`. Intake deduplicates delivery ids in the
//!   run's own transaction, so two passes (or two nodes) that meet the same change start one run.
//!
//! The watermark moves only after a page's runs are recorded, so a pass that fails part way
//! leaves the rest for the next pass. A new tenant's watermark starts at now minus
//! [`CatchupOptions::lookback`], never at the beginning of the instance's history. A pass reads
//! at most [`CatchupOptions::max_pages`] pages; what is left is read by the next one.
//!
//! Each run it starts also claims its change (`NewRun::change`, `{sys_id}@{updated ms}`), which
//! webhook intake claims too when the body carries the record's `sys_updated_on` beside its
//! sys_id (`steward_adapters::webhook::change_at`): a webhook that arrives after the pass dealt
//! with its change is a duplicate of the pass's run.
//!
//! Limits, stated plainly: a late webhook whose body lacks `sys_updated_on` starts a run of its
//! own; the pass builds its own
//! ServiceNow client per pass, so it signs in once per pass, and it skips tenants on the
//! `refresh_token` grant, whose rotating refresh token belongs to the tenant's supervisor.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use steward_adapters::egress::EgressKind;
use steward_adapters::http::HttpSettings;
use steward_adapters::servicenow::{
    ChangePage, IncidentChange, MAX_PAGE_SIZE, ServiceNowAuth, ServiceNowClient, ServiceNowError,
    format_time,
};
use steward_core::{IncidentRef, RunId, SourceName, TenantId};
use steward_persistence::{
    AuditDraft, Authenticator, CatchupWatermark, IntakeOutcome, MasterKey, NewRun, Store,
    StoreError, TenantScope,
};
use tokio::task::JoinHandle;

use crate::journal::{Step, states};
use crate::metrics::Metrics;
use crate::root::Steward;
use crate::settings::{TenantControls, TenantSettings, secret_names};

/// How the catch-up pass runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatchupOptions {
    /// Time between passes; the first runs at startup.
    pub every: Duration,
    /// How far back a tenant's first pass looks.
    pub lookback: Duration,
    /// Pages one pass reads per tenant at most.
    pub max_pages: u32,
    /// Records per page (1 to 1000).
    pub page_size: u32,
    /// The longest `Retry-After` the pass waits out on a 429; a longer one ends the pass.
    pub max_retry_after: Duration,
    /// 429s waited out per page before the pass gives up.
    pub rate_limit_retries: u32,
}

impl Default for CatchupOptions {
    fn default() -> Self {
        Self {
            every: Duration::from_secs(300),
            lookback: Duration::from_secs(24 * 3600),
            max_pages: 20,
            page_size: 100,
            max_retry_after: Duration::from_secs(120),
            rate_limit_retries: 3,
        }
    }
}

/// Why a tenant's pass stopped.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error("servicenow: {0}")]
    ServiceNow(#[from] ServiceNowError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Setup(String),
}

/// What one tenant's pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Runs started.
    pub started: Vec<RunId>,
    /// Changes a run already covered (a webhook's, an earlier pass's, or Steward's own write).
    pub covered: u64,
    /// Pages read.
    pub pages: u32,
    /// The watermark after the pass.
    pub watermark_ms: i64,
}

/// The catch-up service: what a pass needs, for every tenant.
#[derive(Clone)]
pub struct Catchup {
    store: Store,
    master_key: Arc<MasterKey>,
    http: HttpSettings,
    steward: Steward,
    metrics: Metrics,
    options: CatchupOptions,
}

impl Catchup {
    pub fn new(
        store: Store,
        master_key: Arc<MasterKey>,
        http: HttpSettings,
        steward: Steward,
        metrics: Metrics,
        options: CatchupOptions,
    ) -> Self {
        let page_size = options.page_size.clamp(1, MAX_PAGE_SIZE);
        Self {
            store,
            master_key,
            http,
            steward,
            metrics,
            options: CatchupOptions {
                page_size,
                max_pages: options.max_pages.max(1),
                ..options
            },
        }
    }

    /// Runs a round at once, then one every [`CatchupOptions::every`].
    pub fn spawn(self) -> JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                self.round().await;
                tokio::time::sleep(self.options.every).await;
            }
        })
    }

    /// One pass for every tenant that is not offboarded; a tenant's failure is logged and
    /// counted and does not stop the others.
    pub async fn round(&self) {
        let tenants = match self.store.list_tenants().await {
            Ok(tenants) => tenants,
            Err(e) => {
                tracing::warn!(error = %e, "The catch-up pass could not list the tenants.");
                return;
            }
        };
        for tenant in tenants.into_iter().filter(|t| t.offboarded_at.is_none()) {
            // In a cluster only the tenant's owner asks, so two nodes never race on a change.
            if !self.steward.owns(&tenant.id) {
                continue;
            }
            match self.pass(&tenant.id).await {
                Ok(_) => self.metrics.catchup_pass_finished(&tenant.id),
                Err(e) => {
                    self.metrics.catchup_pass_failed(&tenant.id);
                    tracing::warn!(tenant = %tenant.id, error = %e,
                        "The ServiceNow catch-up pass failed; the watermark stays where it was.");
                }
            }
        }
    }

    /// One pass for `tenant`; None when the tenant has no webhook source or its connector is
    /// one the pass leaves alone.
    pub async fn pass(&self, tenant: &TenantId) -> Result<Option<PassReport>, PassError> {
        let scope = TenantScope::assume(tenant.clone(), Authenticator::Config);
        let Some(source) = self.store.catchup_source(&scope).await? else {
            return Ok(None);
        };
        let Some(client) = self.client(&scope).await? else {
            return Ok(None);
        };
        let mut watermark = match self.store.catchup_watermark(&scope).await? {
            Some(watermark) => watermark,
            None => {
                let lookback = i64::try_from(self.options.lookback.as_millis()).unwrap_or(0);
                let start = self
                    .store
                    .clock()
                    .now_millis()
                    .saturating_sub(lookback)
                    .max(0);
                let start = start - start % 1000;
                self.store
                    .advance_catchup_watermark(&scope, start, &[])
                    .await?
            }
        };
        let mut report = PassReport::default();
        let mut total = None;
        let read = self
            .read_pages(
                &scope,
                &source,
                &client,
                &mut watermark,
                &mut report,
                &mut total,
            )
            .await;
        report.watermark_ms = watermark.updated_ms;
        let started = report.started.len() as u64;
        // Runs a failed pass started before it stopped are audited too. The counter moves
        // after the audit entry is written, so a pass that shows in the metrics is audited.
        let audited = match started {
            0 => Ok(()),
            _ => {
                let failed = read.as_ref().err().map(ToString::to_string);
                self.audit(&scope, &report, &watermark, total, failed).await
            }
        };
        self.metrics.catchup_runs_started(tenant, started);
        audited?;
        read?;
        tracing::info!(tenant = %tenant, started, covered = report.covered, pages = report.pages,
            "The ServiceNow catch-up pass finished.");
        Ok(Some(report))
    }

    /// Reads pages from the watermark on, starting runs and moving the watermark page by page,
    /// until the list ends or the page budget is spent.
    async fn read_pages(
        &self,
        scope: &TenantScope,
        source: &SourceName,
        client: &ServiceNowClient,
        watermark: &mut CatchupWatermark,
        report: &mut PassReport,
        total: &mut Option<u64>,
    ) -> Result<(), PassError> {
        let tenant = scope.tenant();
        let mut offset = 0u64;
        while report.pages < self.options.max_pages {
            let asked_from = watermark.updated_ms;
            let page = self.page(client, asked_from, offset).await?;
            report.pages += 1;
            *total = page.total.or(*total);
            let mut page_runs = Vec::new();
            for change in &page.changes {
                if watermark.covers(&change.sys_id, change.updated_at_ms) {
                    continue;
                }
                match self.start_run(scope, source, change).await? {
                    Some(run) => page_runs.push(run),
                    None => report.covered += 1,
                }
            }
            // Recorded runs start now; one the process stops before waking is resumed at boot.
            for run in &page_runs {
                self.steward.wake(tenant, *run).await;
            }
            report.started.extend(page_runs);
            let Some(last) = page.changes.last() else {
                break;
            };
            let at_last: Vec<String> = page
                .changes
                .iter()
                .filter(|c| c.updated_at_ms == last.updated_at_ms)
                .map(|c| c.sys_id.clone())
                .collect();
            *watermark = self
                .store
                .advance_catchup_watermark(scope, last.updated_at_ms, &at_last)
                .await?;
            let full = page.changes.len() >= self.options.page_size as usize;
            if !full {
                break;
            }
            // A full page all within the second it was asked from makes no progress by time:
            // walk that second by offset. Otherwise ask again from the new watermark.
            offset = if last.updated_at_ms == asked_from
                && page.changes[0].updated_at_ms == asked_from
            {
                offset + page.changes.len() as u64
            } else {
                0
            };
        }
        Ok(())
    }

    /// One page, waiting out a 429's `Retry-After` (up to the configured bound and count).
    async fn page(
        &self,
        client: &ServiceNowClient,
        since_ms: i64,
        offset: u64,
    ) -> Result<ChangePage, PassError> {
        let mut waited = 0;
        loop {
            match client
                .incidents_updated_since(since_ms, offset, self.options.page_size)
                .await
            {
                Err(ServiceNowError::RateLimited {
                    retry_after_secs,
                    reset_at_secs,
                    limit,
                }) if waited < self.options.rate_limit_retries => {
                    let now_secs = self.store.clock().now_millis() / 1000;
                    let secs = retry_after_secs
                        .or_else(|| reset_at_secs.map(|r| r.saturating_sub(now_secs).max(0) as u64))
                        .unwrap_or(1);
                    let wait = Duration::from_secs(secs.max(1));
                    if wait > self.options.max_retry_after {
                        return Err(ServiceNowError::RateLimited {
                            retry_after_secs,
                            reset_at_secs,
                            limit,
                        }
                        .into());
                    }
                    tracing::info!(
                        wait_secs = wait.as_secs(),
                        "ServiceNow rate-limited the catch-up pass; waiting as it asked."
                    );
                    tokio::time::sleep(wait).await;
                    waited += 1;
                }
                other => return Ok(other?),
            }
        }
    }

    /// Starts a run for `change` unless a run covers it; the new run's id, or None.
    async fn start_run(
        &self,
        scope: &TenantScope,
        source: &SourceName,
        change: &IncidentChange,
    ) -> Result<Option<RunId>, PassError> {
        let covered = self
            .store
            .catchup_covered(scope, &change.sys_id, &change.number, change.updated_at_ms)
            .await?;
        if covered.is_some() {
            return Ok(None);
        }
        let delivery_id = delivery_id(change);
        let incident = IncidentRef::SysId(change.sys_id.clone());
        let id = RunId::new();
        let step = Step::Received {
            incident: incident.clone(),
            source: Some(source.to_string()),
            delivery_id: Some(delivery_id.clone()),
            requester: None,
        };
        let run = NewRun {
            id,
            source: Some(source.clone()),
            delivery_id: Some(delivery_id.clone()),
            change: Some(steward_adapters::webhook::change_key(
                &change.sys_id,
                change.updated_at_ms,
            )),
            incident: incident.clone(),
            trigger: json!({
                "kind": "catchup",
                "number": change.number,
                "sys_updated_on": change.updated_on,
            }),
            state: states::RECEIVED.into(),
            first_step: (
                step.kind().into(),
                serde_json::to_value(&step).map_err(|e| PassError::Setup(e.to_string()))?,
            ),
            audit: AuditDraft {
                kind: "run.received".into(),
                run_id: Some(id),
                actor: format!("catchup:{source}"),
                body: json!({
                    "delivery_id": delivery_id,
                    "incident": incident,
                    "sys_updated_on": change.updated_on,
                }),
            },
        };
        Ok(match self.store.record_intake(scope, run).await? {
            IntakeOutcome::Created(id) => Some(id),
            IntakeOutcome::Duplicate(_) => None,
        })
    }

    async fn audit(
        &self,
        scope: &TenantScope,
        report: &PassReport,
        watermark: &CatchupWatermark,
        total: Option<u64>,
        failed: Option<String>,
    ) -> Result<(), PassError> {
        let draft = AuditDraft {
            kind: "catchup.pass".into(),
            run_id: None,
            actor: "catchup".into(),
            body: json!({
                "started": report.started.len(),
                "covered": report.covered,
                "pages": report.pages,
                "total": total,
                "watermark": format_time(watermark.updated_ms),
                "watermark_sys_ids": watermark.sys_ids.len(),
                "failed": failed,
            }),
        };
        self.store.append_audit(scope, draft).await?;
        Ok(())
    }

    /// The tenant's ServiceNow client, after the egress check; None for a connector the pass
    /// leaves alone (the `refresh_token` grant).
    async fn client(&self, scope: &TenantScope) -> Result<Option<ServiceNowClient>, PassError> {
        let record = self
            .store
            .tenant(scope)
            .await?
            .ok_or_else(|| PassError::Setup("the tenant is not configured".into()))?;
        let mut document = record.settings;
        TenantControls::take(&mut document)
            .map_err(|e| PassError::Setup(format!("the tenant's settings are invalid: {e}")))?;
        let settings: TenantSettings = serde_json::from_value(document)
            .map_err(|e| PassError::Setup(format!("the tenant's settings are invalid: {e}")))?;
        let sn = &settings.servicenow;
        self.http
            .check_url(
                scope.tenant().region(),
                EgressKind::ServiceNow,
                &sn.instance_url,
            )
            .map_err(|e| PassError::Setup(e.to_string()))?;
        let secret = |name: &'static str| async move {
            self.store
                .secret(scope, &self.master_key, name)
                .await?
                .ok_or_else(|| PassError::Setup(format!("secret `{name}` is not set")))
        };
        let client_secret = secret(secret_names::SERVICENOW_CLIENT_SECRET).await?;
        let auth = match sn.grant.as_str() {
            "password" => ServiceNowAuth::Password {
                client_id: sn.client_id.clone(),
                client_secret,
                username: sn.username.clone().ok_or_else(|| {
                    PassError::Setup("the password grant needs a username".into())
                })?,
                password: secret(secret_names::SERVICENOW_PASSWORD).await?,
            },
            "client_credentials" => ServiceNowAuth::ClientCredentials {
                client_id: sn.client_id.clone(),
                client_secret,
            },
            "refresh_token" => {
                tracing::debug!(tenant = %scope.tenant(),
                    "The catch-up pass skips a tenant on the refresh_token grant.");
                return Ok(None);
            }
            other => {
                return Err(PassError::Setup(format!(
                    "unknown ServiceNow grant `{other}`"
                )));
            }
        };
        let instance = sn
            .instance_url
            .parse()
            .map_err(|e| PassError::Setup(format!("the instance URL is invalid: {e}")))?;
        let http = steward_adapters::http::client(&self.http)
            .map_err(|e| PassError::Setup(format!("building the HTTP client: {e}")))?;
        Ok(Some(ServiceNowClient::with_clock(
            instance,
            auth,
            http,
            self.store.clock().clone(),
        )))
    }
}

/// The delivery id a catch-up run is recorded under: one per incident change, so a second
/// pass that meets the same change names the same run.
pub fn delivery_id(change: &IncidentChange) -> String {
    format!("catchup:{}:{}", change.sys_id, change.updated_on)
}
