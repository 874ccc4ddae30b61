//! The process's metrics: one [`Registry`], built at boot and shared by the API and the actors,
//! rendered at `GET /metrics` in the OpenMetrics text format (which Prometheus scrapes).
//!
//! Labels are bounded: `tenant` appears only on series whose count grows with the number of
//! tenants; steps, adapters, outcomes, reasons and queries are fixed lists. No label or value
//! carries a secret, an incident's text, a run id or anything a caller sent.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use steward_core::TenantId;
use steward_persistence::{Store, StoreError};

use crate::journal::states;

/// The reasons a webhook delivery is refused for, each a series from the start.
const REJECTION_REASONS: &[&str] = &[
    "signature_mismatch",
    "signature_malformed",
    "missing_header",
    "empty_body",
    "timestamp_out_of_tolerance",
    "timestamp_malformed",
    "not_found",
    "body_too_large",
    "bad_request",
    "unprocessable",
];

/// The store calls that are timed, each a series from the start.
const QUERIES: &[&str] = &[
    "append_step",
    "list_tenants",
    "run_state_counts",
    "oldest_pending_approvals",
    "active_break_glass_count",
];

/// The unfinished states, each a series per tenant at every scrape.
const UNFINISHED: &[&str] = &[
    states::RECEIVED,
    states::TRIAGING,
    states::AWAITING_APPROVAL,
    states::PARKED,
    states::WRITING,
    states::CLOSING,
];

/// The media type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantLabel {
    tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantState {
    tenant: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabel {
    step: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AdapterLabels {
    tenant: String,
    adapter: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueryLabel {
    query: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Latency buckets from 5 ms to about 41 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

/// Database latency buckets from 0.5 ms to about 4 s.
fn db_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 14))
}

struct Inner {
    registry: Registry,
    runs_finished: Family<TenantState, Counter>,
    runs_unfinished: Family<TenantState, Gauge>,
    step_duration: Histograms<StepLabel>,
    webhook_rejections: Family<ReasonLabel, Counter>,
    approval_oldest_age: Family<TenantLabel, Gauge>,
    run_restarts: Family<TenantLabel, Counter>,
    adapter_calls: Family<AdapterLabels, Counter>,
    db_duration: Histograms<QueryLabel>,
    db_errors: Family<QueryLabel, Counter>,
    audit_failures: Family<TenantLabel, Counter>,
    /// The served certificate's `notAfter`, Unix seconds, set at startup and at each reload
    /// when Steward serves TLS itself; 0 when TLS ends at a proxy.
    tls_expiry: Gauge,
    /// Break-glass grants in force (opened, not closed, not expired), read at each scrape.
    break_glass_active: Gauge,
    /// Audit entries not yet acknowledged by the tenant's SIEM, set by the SIEM streamer.
    siem_lag: Family<TenantLabel, Gauge>,
    siem_failures: Family<TenantLabel, Counter>,
    /// When the oldest audit entry the tenant's SIEM has not acknowledged was written, Unix
    /// seconds; 0 when every entry is acknowledged or the tenant streams to no SIEM.
    siem_oldest_unacknowledged: Family<TenantLabel, Gauge>,
    /// Runs the ServiceNow catch-up pass started, by tenant.
    catchup_runs: Family<TenantLabel, Counter>,
    /// Catch-up passes that stopped on an error, by tenant.
    catchup_failures: Family<TenantLabel, Counter>,
    /// Catch-up passes in a row that stopped on an error, by tenant; 0 after a pass that
    /// finished.
    catchup_consecutive_failures: Family<TenantLabel, Gauge>,
    /// Run actors alive now, under the process's cap.
    run_actors_live: Gauge,
    /// Runs woken while every slot under the cap was taken, waiting for one.
    run_actors_queued: Gauge,
    /// Serializes scrape-time refreshes, so two scrapes do not interleave clearing and setting.
    refresh: tokio::sync::Mutex<()>,
}

/// A handle to the process's metrics; clones share them.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every Steward metric registered.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let runs_finished = Family::<TenantState, Counter>::default();
        registry.register(
            "steward_runs_finished",
            "Runs that reached a terminal state, by tenant and state",
            runs_finished.clone(),
        );
        let runs_unfinished = Family::<TenantState, Gauge>::default();
        registry.register(
            "steward_runs",
            "Unfinished runs by tenant and state, read from the store at scrape",
            runs_unfinished.clone(),
        );
        let step_duration: Histograms<StepLabel> = Family::new_with_constructor(latency_histogram);
        registry.register(
            "steward_step_duration_seconds",
            "Time a run step took, from its start to its journal entry, by step",
            step_duration.clone(),
        );
        let webhook_rejections = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "steward_webhook_rejections",
            "Webhook deliveries refused, by reason",
            webhook_rejections.clone(),
        );
        let approval_oldest_age = Family::<TenantLabel, Gauge>::default();
        registry.register(
            "steward_approval_oldest_pending_age_seconds",
            "Age of the oldest pending approval, by tenant, read from the store at scrape",
            approval_oldest_age.clone(),
        );
        let run_restarts = Family::<TenantLabel, Counter>::default();
        registry.register(
            "steward_run_restarts",
            "Run actors restarted by their tenant supervisor after a crash",
            run_restarts.clone(),
        );
        let adapter_calls = Family::<AdapterLabels, Counter>::default();
        registry.register(
            "steward_adapter_calls",
            "Calls to adapter actors, by tenant, adapter and outcome (ok, error, unavailable)",
            adapter_calls.clone(),
        );
        let db_duration: Histograms<QueryLabel> = Family::new_with_constructor(db_histogram);
        registry.register(
            "steward_db_query_duration_seconds",
            "Time of the store calls Steward times: run step writes and the scrape-time reads",
            db_duration.clone(),
        );
        let db_errors = Family::<QueryLabel, Counter>::default();
        registry.register(
            "steward_db_errors",
            "Timed store calls that failed, by query",
            db_errors.clone(),
        );
        let audit_failures = Family::<TenantLabel, Counter>::default();
        registry.register(
            "steward_audit_verification_failures",
            "Audit chain verifications that found a bad entry, by tenant",
            audit_failures.clone(),
        );
        let tls_expiry = Gauge::default();
        registry.register(
            "steward_tls_certificate_expiry_timestamp_seconds",
            "Expiry of the server TLS certificate, Unix seconds; 0 while Steward serves no TLS",
            tls_expiry.clone(),
        );
        let break_glass_active = Gauge::default();
        registry.register(
            "steward_break_glass_active_grants",
            "Break-glass operator grants in force now",
            break_glass_active.clone(),
        );
        let siem_lag = Family::<TenantLabel, Gauge>::default();
        registry.register(
            "steward_siem_lag_entries",
            "Audit entries the tenant's SIEM has not acknowledged yet, by tenant",
            siem_lag.clone(),
        );
        let siem_failures = Family::<TenantLabel, Counter>::default();
        registry.register(
            "steward_siem_delivery_failures",
            "Batches of audit entries the tenant's SIEM did not acknowledge, by tenant",
            siem_failures.clone(),
        );
        let siem_oldest_unacknowledged = Family::<TenantLabel, Gauge>::default();
        registry.register(
            "steward_siem_oldest_unacknowledged_timestamp_seconds",
            "Append time (Unix seconds) of the oldest audit entry the tenant's SIEM has not \
             acknowledged; 0 when none waits",
            siem_oldest_unacknowledged.clone(),
        );
        let catchup_runs = Family::<TenantLabel, Counter>::default();
        registry.register(
            "steward_catchup_runs_started",
            "Runs the ServiceNow catch-up pass started for missed incident changes, by tenant",
            catchup_runs.clone(),
        );
        let catchup_failures = Family::<TenantLabel, Counter>::default();
        registry.register(
            "steward_catchup_pass_failures",
            "ServiceNow catch-up passes that stopped on an error, by tenant",
            catchup_failures.clone(),
        );
        let catchup_consecutive_failures = Family::<TenantLabel, Gauge>::default();
        registry.register(
            "steward_catchup_consecutive_failures",
            "ServiceNow catch-up passes in a row that stopped on an error, by tenant; 0 after a \
             pass that finished",
            catchup_consecutive_failures.clone(),
        );
        let run_actors_live = Gauge::default();
        registry.register(
            "steward_run_actors_live",
            "Run actors alive in this process, at most the configured cap",
            run_actors_live.clone(),
        );
        let run_actors_queued = Gauge::default();
        registry.register(
            "steward_run_actors_queued",
            "Runs woken while every run actor slot was taken, waiting for a slot",
            run_actors_queued.clone(),
        );
        // Series with fixed labels exist from the start at zero, so that a rule's `increase`
        // sees their first event.
        for reason in REJECTION_REASONS {
            drop(webhook_rejections.get_or_create(&ReasonLabel { reason }));
        }
        for query in QUERIES {
            drop(db_errors.get_or_create(&QueryLabel { query }));
        }
        Self {
            inner: Arc::new(Inner {
                registry,
                runs_finished,
                runs_unfinished,
                step_duration,
                webhook_rejections,
                approval_oldest_age,
                run_restarts,
                adapter_calls,
                db_duration,
                db_errors,
                audit_failures,
                tls_expiry,
                break_glass_active,
                siem_lag,
                siem_failures,
                siem_oldest_unacknowledged,
                catchup_runs,
                catchup_failures,
                catchup_consecutive_failures,
                run_actors_live,
                run_actors_queued,
                refresh: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// This handle with the tenant label its actors put on their series.
    pub fn for_tenant(&self, tenant: &TenantId) -> TenantMetrics {
        TenantMetrics {
            metrics: self.clone(),
            tenant: tenant.to_string(),
        }
    }

    /// A webhook delivery refused with the error code `reason` (one of a fixed set).
    pub fn webhook_rejected(&self, reason: &'static str) {
        let labels = ReasonLabel { reason };
        self.inner.webhook_rejections.get_or_create(&labels).inc();
    }

    /// A verification of `tenant`'s audit chain found a bad entry.
    pub fn audit_verification_failed(&self, tenant: &TenantId) {
        let labels = TenantLabel {
            tenant: tenant.to_string(),
        };
        self.inner.audit_failures.get_or_create(&labels).inc();
    }

    /// Sets how many of `tenant`'s audit entries its SIEM has not acknowledged yet.
    pub fn set_siem_lag(&self, tenant: &TenantId, entries: u64) {
        let labels = TenantLabel {
            tenant: tenant.to_string(),
        };
        let entries = i64::try_from(entries).unwrap_or(i64::MAX);
        self.inner.siem_lag.get_or_create(&labels).set(entries);
        drop(self.inner.siem_failures.get_or_create(&labels));
    }

    /// A batch of `tenant`'s audit entries was not acknowledged by its SIEM.
    pub fn siem_delivery_failed(&self, tenant: &TenantId) {
        let labels = TenantLabel {
            tenant: tenant.to_string(),
        };
        self.inner.siem_failures.get_or_create(&labels).inc();
    }

    /// Sets when the oldest audit entry of `tenant` its SIEM has not acknowledged was
    /// appended (Unix ms), or None when none waits.
    pub fn set_siem_oldest_unacknowledged(&self, tenant: &TenantId, at_ms: Option<i64>) {
        let labels = TenantLabel {
            tenant: tenant.to_string(),
        };
        let secs = at_ms.map_or(0, |ms| ms.max(0) / 1000);
        self.inner
            .siem_oldest_unacknowledged
            .get_or_create(&labels)
            .set(secs);
    }

    /// Drops `tenant`'s lag series, once its SIEM stream is removed; nothing waits any more.
    pub fn clear_siem_lag(&self, tenant: &TenantId) {
        let labels = TenantLabel {
            tenant: tenant.to_string(),
        };
        self.inner.siem_lag.remove(&labels);
        self.inner
            .siem_oldest_unacknowledged
            .get_or_create(&labels)
            .set(0);
    }

    /// The catch-up pass started `runs` runs for `tenant`; a tenant's series exist from its
    /// first pass, at zero.
    pub fn catchup_runs_started(&self, tenant: &TenantId, runs: u64) {
        let labels = TenantLabel {
            tenant: tenant.to_string(),
        };
        self.inner.catchup_runs.get_or_create(&labels).inc_by(runs);
        drop(self.inner.catchup_failures.get_or_create(&labels));
        drop(
            self.inner
                .catchup_consecutive_failures
                .get_or_create(&labels),
        );
    }

    /// A catch-up pass for `tenant` stopped on an error.
    pub fn catchup_pass_failed(&self, tenant: &TenantId) {
        let labels = TenantLabel {
            tenant: tenant.to_string(),
        };
        self.inner.catchup_failures.get_or_create(&labels).inc();
        self.inner
            .catchup_consecutive_failures
            .get_or_create(&labels)
            .inc();
        drop(self.inner.catchup_runs.get_or_create(&labels));
    }

    /// A catch-up pass for `tenant` finished (or had nothing to do): the run of failures ends.
    pub fn catchup_pass_finished(&self, tenant: &TenantId) {
        let labels = TenantLabel {
            tenant: tenant.to_string(),
        };
        self.inner
            .catchup_consecutive_failures
            .get_or_create(&labels)
            .set(0);
    }

    /// The cap on live run actors, its gauges bound to this registry.
    pub fn live_runs(&self, max: usize) -> std::sync::Arc<crate::live::LiveRuns> {
        crate::live::LiveRuns::new(
            max,
            self.inner.run_actors_live.clone(),
            self.inner.run_actors_queued.clone(),
        )
    }

    /// Sets the served certificate's expiry (its `notAfter`, Unix seconds).
    pub fn set_tls_expiry(&self, unix_secs: i64) {
        self.inner.tls_expiry.set(unix_secs);
    }

    /// Times one store call under `query`, counting it as an error when it fails.
    pub async fn time_query<T>(
        &self,
        query: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let result = call.await;
        let labels = QueryLabel { query };
        let seconds = started.elapsed().as_secs_f64();
        self.inner
            .db_duration
            .get_or_create(&labels)
            .observe(seconds);
        if result.is_err() {
            self.inner.db_errors.get_or_create(&labels).inc();
        }
        result
    }

    /// Reads the scrape-time gauges from the store (the tenant list, two grouped counts and
    /// the break-glass grants in force),
    /// then renders every metric. Each tenant's series exist at zero from its first scrape, so
    /// that a rule's `increase` sees their first event and an idle tenant shows its zeros. A
    /// failed read leaves its gauges empty and counts a database error; the rest is still
    /// rendered.
    pub async fn scrape(&self, store: &Store) -> String {
        let _one_at_a_time = self.inner.refresh.lock().await;
        let tenants = self
            .time_query("list_tenants", store.list_tenants())
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|t| t.offboarded_at.is_none())
            .map(|t| t.id.to_string())
            .collect::<Vec<_>>();
        for tenant in &tenants {
            self.zero_tenant(tenant);
        }
        self.refresh_runs(store, &tenants).await;
        self.refresh_approvals(store, &tenants).await;
        self.refresh_break_glass(store).await;
        self.render()
    }

    /// Creates the tenant's counter series, its SIEM wait gauge and its catch-up failures in a
    /// row at zero (an existing series is left as it is). The catch-up counters exist from a
    /// tenant's first pass, so that their presence shows a pass has finished.
    fn zero_tenant(&self, tenant: &str) {
        let inner = &self.inner;
        for state in states::TERMINAL {
            let labels = TenantState {
                tenant: tenant.to_owned(),
                state: (*state).to_owned(),
            };
            drop(inner.runs_finished.get_or_create(&labels));
        }
        let labels = TenantLabel {
            tenant: tenant.to_owned(),
        };
        drop(inner.run_restarts.get_or_create(&labels));
        drop(inner.audit_failures.get_or_create(&labels));
        drop(inner.siem_failures.get_or_create(&labels));
        drop(inner.siem_oldest_unacknowledged.get_or_create(&labels));
        drop(inner.catchup_consecutive_failures.get_or_create(&labels));
    }

    async fn refresh_runs(&self, store: &Store, tenants: &[String]) {
        let counts = self
            .time_query("run_state_counts", store.run_state_counts(UNFINISHED))
            .await;
        let gauges = &self.inner.runs_unfinished;
        gauges.clear();
        for tenant in tenants {
            for state in UNFINISHED {
                let labels = TenantState {
                    tenant: tenant.clone(),
                    state: (*state).to_owned(),
                };
                gauges.get_or_create(&labels).set(0);
            }
        }
        for (tenant, state, n) in counts.unwrap_or_default() {
            let labels = TenantState {
                tenant: tenant.to_string(),
                state,
            };
            gauges.get_or_create(&labels).set(n);
        }
    }

    /// Each tenant's oldest pending approval's age; 0 for a tenant with none pending.
    async fn refresh_approvals(&self, store: &Store, tenants: &[String]) {
        let now = store.clock().now_millis();
        let oldest = self
            .time_query("oldest_pending_approvals", store.oldest_pending_approvals())
            .await;
        let gauges = &self.inner.approval_oldest_age;
        gauges.clear();
        for tenant in tenants {
            let labels = TenantLabel {
                tenant: tenant.clone(),
            };
            gauges.get_or_create(&labels).set(0);
        }
        for (tenant, requested_at) in oldest.unwrap_or_default() {
            let labels = TenantLabel {
                tenant: tenant.to_string(),
            };
            gauges
                .get_or_create(&labels)
                .set((now - requested_at).max(0) / 1000);
        }
    }

    /// The number of break-glass grants in force; left as it was when the read fails.
    async fn refresh_break_glass(&self, store: &Store) {
        let active = self
            .time_query("active_break_glass_count", store.active_break_glass_count())
            .await;
        if let Ok(n) = active {
            self.inner
                .break_glass_active
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// The exposition text of every metric, as they stand.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.inner.registry);
        text
    }
}

/// The metrics a tenant's actors record, labelled with the tenant.
#[derive(Clone, Debug)]
pub struct TenantMetrics {
    metrics: Metrics,
    tenant: String,
}

impl Default for TenantMetrics {
    /// A handle to a registry of its own, for runtimes built outside a running tree.
    fn default() -> Self {
        Self {
            metrics: Metrics::new(),
            tenant: String::new(),
        }
    }
}

impl TenantMetrics {
    /// The process-wide handle.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// A run of this tenant reached the terminal `state`.
    pub fn run_finished(&self, state: &str) {
        let labels = TenantState {
            tenant: self.tenant.clone(),
            state: state.to_owned(),
        };
        self.metrics
            .inner
            .runs_finished
            .get_or_create(&labels)
            .inc();
    }

    /// A crashed run actor of this tenant was started again.
    pub fn run_restarted(&self) {
        let labels = TenantLabel {
            tenant: self.tenant.clone(),
        };
        self.metrics.inner.run_restarts.get_or_create(&labels).inc();
    }

    /// A run step of `step` (a fixed name) took `took`.
    pub fn step_took(&self, step: &'static str, took: Duration) {
        let labels = StepLabel { step };
        let histogram = self.metrics.inner.step_duration.get_or_create(&labels);
        histogram.observe(took.as_secs_f64());
    }

    /// One call to `adapter` ended with `outcome`: `ok`, `error` (the adapter answered with an
    /// error) or `unavailable` (no answer: timed out, dropped, or the actor was gone).
    pub fn adapter_call(&self, adapter: &'static str, outcome: &'static str) {
        let labels = AdapterLabels {
            tenant: self.tenant.clone(),
            adapter,
            outcome,
        };
        self.metrics
            .inner
            .adapter_calls
            .get_or_create(&labels)
            .inc();
    }
}

/// A message type of an adapter actor, named for the `adapter` label.
pub trait AdapterMsg: ractor::Message {
    const ADAPTER: &'static str;
}

impl AdapterMsg for crate::connectors::LlmMsg {
    const ADAPTER: &'static str = "llm";
}

impl AdapterMsg for crate::connectors::ServiceNowMsg {
    const ADAPTER: &'static str = "servicenow";
}

impl AdapterMsg for crate::connectors::SlackMsg {
    const ADAPTER: &'static str = "slack";
}

/// The label of a step a run actor takes; None for the nexts that take none (waiting, done).
pub(crate) fn step_name(next: &crate::journal::Next) -> Option<&'static str> {
    use crate::journal::Next;
    Some(match next {
        Next::Fetch => "fetch",
        Next::Triage => "triage",
        Next::Decide => "decide",
        Next::RequestApproval => "request_approval",
        Next::Write => "write",
        Next::Confirm => "confirm",
        Next::Verify => "verify",
        Next::Close => "close",
        Next::AwaitApproval | Next::Done | Next::Wait { .. } => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_renders_with_its_help_and_type() {
        let metrics = Metrics::new();
        let tenant = metrics.for_tenant(&TenantId::parse("us-acme").unwrap());
        tenant.run_finished(states::COMPLETED);
        tenant.step_took("fetch", Duration::from_millis(12));
        tenant.adapter_call("llm", "ok");
        metrics.webhook_rejected("signature_mismatch");
        let text = metrics.render();
        assert!(
            text.contains("steward_runs_finished_total{tenant=\"us-acme\",state=\"completed\"} 1")
        );
        assert!(text.contains("steward_step_duration_seconds_count{step=\"fetch\"} 1"));
        assert!(text.contains("steward_webhook_rejections_total{reason=\"signature_mismatch\"} 1"));
        assert!(text.contains("# TYPE steward_tls_certificate_expiry_timestamp_seconds gauge"));
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn catchup_failures_in_a_row_reset_on_a_finished_pass_and_siem_waits_clear() {
        let metrics = Metrics::new();
        let acme = TenantId::parse("us-acme").unwrap();
        let in_a_row = "steward_catchup_consecutive_failures{tenant=\"us-acme\"}";
        metrics.catchup_pass_failed(&acme);
        metrics.catchup_pass_failed(&acme);
        assert!(metrics.render().contains(&format!("{in_a_row} 2\n")));
        metrics.catchup_pass_finished(&acme);
        let text = metrics.render();
        assert!(text.contains(&format!("{in_a_row} 0\n")), "{text}");
        assert!(text.contains("steward_catchup_pass_failures_total{tenant=\"us-acme\"} 2"));

        let waiting = "steward_siem_oldest_unacknowledged_timestamp_seconds{tenant=\"us-acme\"}";
        metrics.set_siem_oldest_unacknowledged(&acme, Some(1_767_225_600_123));
        assert!(
            metrics
                .render()
                .contains(&format!("{waiting} 1767225600\n"))
        );
        metrics.clear_siem_lag(&acme);
        assert!(metrics.render().contains(&format!("{waiting} 0\n")));
    }
}
