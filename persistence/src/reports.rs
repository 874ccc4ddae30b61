//! Per-tenant reports over a time range, computed from the durable records: runs and their
//! journal steps, approvals, and the webhook rejection counts of migration 0011.
//!
//! Counts and percentiles are SQL over clear columns (run states, step kinds and times,
//! approval times). Two sections need what only sealed step bodies hold: the policy's denials
//! (`policy_decided`) and the model's calls, tokens and errors (`triaged`, and the `parked` and
//! `finished` steps of a triage that failed). Those bodies are read a page at a time and opened
//! with the tenant's data key; at most [`MAX_SEALED_STEPS`] are opened for one report, and a
//! range holding more is refused, so one report cannot tie the store up for long.
//!
//! What each section counts, for `from <= t < to` (Unix ms):
//! - runs: runs created in the range, by their current state (terminal states as outcomes,
//!   the others as still open);
//! - approvals: requests created in the range (the approval row is written with the step that
//!   asks for it); the time to a decision runs from that row's creation to its `decided_at`,
//!   for approved and rejected requests only, as nearest-rank percentiles;
//! - writebacks: runs with a `write_intended` step in the range: succeeded when the run has a
//!   `written` step, failed when it has none and the run ended `failed`, otherwise unfinished;
//!   the rate is succeeded over succeeded plus failed;
//! - policy denials and LLM usage: steps recorded in the range;
//! - rejected webhooks: hour buckets whose start lies in the range.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use steward_core::TenantId;

use crate::content::Column;
use crate::runs::step_row;
use crate::{Store, StoreError, TenantScope, codec};

/// The longest range one report covers: 366 days.
pub const MAX_REPORT_SPAN_MS: i64 = 366 * 24 * HOUR_MS;

/// One hour in ms: the width of a rejection bucket.
pub const HOUR_MS: i64 = 3_600_000;

/// The step kinds the reports read by kind and time, as the schema's partial index
/// `run_steps_by_tenant_kind` lists them. Each read by kind states this condition too, since a
/// partial index serves a query only when the query states the index's condition.
const REPORTED_KINDS: &str =
    "s.kind IN ('write_intended', 'policy_decided', 'triaged', 'parked', 'finished')";

/// The most sealed step bodies one report opens; a busier range is refused.
pub const MAX_SEALED_STEPS: usize = 1_000_000;

/// The most distinct keys (policy ids, fields, providers) a report section lists; the rest
/// are summed under [`OTHER_KEY`].
pub const MAX_SECTION_KEYS: usize = 500;

/// Where keys beyond [`MAX_SECTION_KEYS`] are counted.
pub const OTHER_KEY: &str = "(other)";

/// The key of a denial no policy named (no permit matched, or the evaluation failed).
pub const DEFAULT_DENY_KEY: &str = "default_deny";

/// Sealed step bodies read per query.
const PAGE: i64 = 500;

/// The longest rejection reason stored.
const MAX_REASON_BYTES: usize = 64;

/// A report's range, `from <= t < to` in Unix ms: non-negative, non-empty, at most
/// [`MAX_REPORT_SPAN_MS`] long.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ReportRange {
    pub from: i64,
    pub to: i64,
}

impl ReportRange {
    /// Checks the range; an inverted, empty, negative or too long one is `Invalid`.
    pub fn new(from: i64, to: i64) -> Result<Self, StoreError> {
        if from < 0 || to < 0 {
            return Err(StoreError::Invalid(
                "a report range is Unix ms, not negative".into(),
            ));
        }
        if to <= from {
            return Err(StoreError::Invalid(
                "the report range must end after it starts (`to` > `from`)".into(),
            ));
        }
        if to - from > MAX_REPORT_SPAN_MS {
            return Err(StoreError::Invalid(format!(
                "a report covers at most 366 days ({MAX_REPORT_SPAN_MS} ms); this range is {} ms",
                to - from
            )));
        }
        Ok(Self { from, to })
    }
}

/// Refused webhook deliveries of one tenant in one hour for one reason, to add to the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RejectionCount {
    pub tenant: TenantId,
    /// The hour's start, Unix ms (a multiple of [`HOUR_MS`]).
    pub hour_start: i64,
    /// The refusal's code, such as `signature_mismatch` (1–64 printable bytes).
    pub reason: String,
    pub count: u64,
}

/// Runs created in the range, by state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunCounts {
    pub total: i64,
    /// Runs in a terminal state, by that state.
    pub outcomes: BTreeMap<String, i64>,
    /// Runs still going, by their current state.
    pub open: BTreeMap<String, i64>,
}

/// Approval requests created in the range and how long their decisions took.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ApprovalTimes {
    pub requested: i64,
    /// Approved or rejected: the requests the percentiles are over.
    pub decided: i64,
    pub approved: i64,
    pub rejected: i64,
    pub expired: i64,
    pub pending: i64,
    /// Nearest-rank percentiles of request-to-decision time, ms; None with no decision.
    pub p50_ms: Option<i64>,
    pub p90_ms: Option<i64>,
    pub p99_ms: Option<i64>,
}

/// Runs that set out to write to ServiceNow in the range.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Writebacks {
    pub attempted: i64,
    pub succeeded: i64,
    pub failed: i64,
    /// Neither written nor failed yet (or ended otherwise, such as cancelled).
    pub unfinished: i64,
    /// `succeeded / (succeeded + failed)`; None when both are 0.
    pub success_rate: Option<f64>,
}

/// Fields the policy denied in the range.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PolicyDenials {
    /// Denied field decisions in all.
    pub total: i64,
    /// By the policy id that denied (a decision naming several counts under each), or
    /// [`DEFAULT_DENY_KEY`] when none did.
    pub by_policy: BTreeMap<String, i64>,
    /// By the field denied.
    pub by_field: BTreeMap<String, i64>,
}

/// One LLM provider's use in the range.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LlmUsage {
    /// Attempts made: every try of a triage, failed or not.
    pub calls: i64,
    /// Tokens of the replies that produced a proposal, as the provider reported them.
    pub input_tokens: i64,
    pub output_tokens: i64,
    /// Attempts that produced no proposal.
    pub errors: i64,
}

/// Webhook deliveries refused for the tenant's sources in the range.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RejectedWebhooks {
    pub total: i64,
    pub by_reason: BTreeMap<String, i64>,
}

/// A tenant's report for one range.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TenantReport {
    pub tenant: String,
    /// The range, Unix ms, `from` inclusive, `to` exclusive.
    pub from: i64,
    pub to: i64,
    /// When the report was computed, Unix ms.
    pub generated_at: i64,
    pub runs: RunCounts,
    pub approvals: ApprovalTimes,
    pub writebacks: Writebacks,
    pub policy_denials: PolicyDenials,
    /// By provider (`openai`, `anthropic`, or a registered name).
    pub llm: BTreeMap<String, LlmUsage>,
    pub rejected_webhooks: RejectedWebhooks,
}

impl TenantReport {
    /// The report as `(section, key, value)` rows, in a fixed order: the CSV form.
    pub fn rows(&self) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        let mut push = |section: &str, key: &str, value: String| {
            out.push((section.to_owned(), key.to_owned(), value));
        };
        push("report", "tenant", self.tenant.clone());
        push("report", "from", self.from.to_string());
        push("report", "to", self.to.to_string());
        push("report", "generated_at", self.generated_at.to_string());
        push("runs", "total", self.runs.total.to_string());
        for (state, n) in &self.runs.outcomes {
            push("runs.outcome", state, n.to_string());
        }
        for (state, n) in &self.runs.open {
            push("runs.open", state, n.to_string());
        }
        let a = &self.approvals;
        for (key, n) in [
            ("requested", a.requested),
            ("decided", a.decided),
            ("approved", a.approved),
            ("rejected", a.rejected),
            ("expired", a.expired),
            ("pending", a.pending),
        ] {
            push("approvals", key, n.to_string());
        }
        for (key, p) in [
            ("p50_ms", a.p50_ms),
            ("p90_ms", a.p90_ms),
            ("p99_ms", a.p99_ms),
        ] {
            push(
                "approvals",
                key,
                p.map(|p| p.to_string()).unwrap_or_default(),
            );
        }
        let w = &self.writebacks;
        for (key, n) in [
            ("attempted", w.attempted),
            ("succeeded", w.succeeded),
            ("failed", w.failed),
            ("unfinished", w.unfinished),
        ] {
            push("writebacks", key, n.to_string());
        }
        let rate = w
            .success_rate
            .map(|r| format!("{r:.4}"))
            .unwrap_or_default();
        push("writebacks", "success_rate", rate);
        push(
            "policy_denials",
            "total",
            self.policy_denials.total.to_string(),
        );
        for (policy, n) in &self.policy_denials.by_policy {
            push("policy_denials.policy", policy, n.to_string());
        }
        for (field, n) in &self.policy_denials.by_field {
            push("policy_denials.field", field, n.to_string());
        }
        for (provider, u) in &self.llm {
            let section = format!("llm.{provider}");
            for (key, n) in [
                ("calls", u.calls),
                ("input_tokens", u.input_tokens),
                ("output_tokens", u.output_tokens),
                ("errors", u.errors),
            ] {
                push(&section, key, n.to_string());
            }
        }
        push(
            "rejected_webhooks",
            "total",
            self.rejected_webhooks.total.to_string(),
        );
        for (reason, n) in &self.rejected_webhooks.by_reason {
            push("rejected_webhooks.reason", reason, n.to_string());
        }
        out
    }
}

/// A counter map that lists at most [`MAX_SECTION_KEYS`] keys and sums the rest under
/// [`OTHER_KEY`].
fn bump(map: &mut BTreeMap<String, i64>, key: &str, by: i64) {
    if let Some(n) = map.get_mut(key) {
        *n += by;
    } else if map.len() < MAX_SECTION_KEYS {
        map.insert(key.to_owned(), by);
    } else {
        *map.entry(OTHER_KEY.to_owned()).or_default() += by;
    }
}

/// What the report reads of a `policy_decided` body.
#[derive(Deserialize)]
struct DecidedBody {
    #[serde(default)]
    decisions: Vec<DecisionBody>,
}

#[derive(Deserialize)]
struct DecisionBody {
    field: String,
    outcome: String,
    #[serde(default)]
    policies: Vec<String>,
}

/// What the report reads of a `triaged` body.
#[derive(Deserialize)]
struct TriagedBody {
    provenance: ProvenanceBody,
    #[serde(default)]
    attempts: u32,
}

#[derive(Deserialize)]
struct ProvenanceBody {
    provider: String,
    usage: UsageBody,
}

#[derive(Deserialize)]
struct UsageBody {
    input_tokens: u64,
    output_tokens: u64,
}

/// What the report reads of a `parked` or `finished` body.
#[derive(Deserialize)]
struct ReasonBody {
    #[serde(default)]
    reason: String,
}

/// How many attempts a triage that produced no proposal made, read from the reason the run
/// recorded (`triage failed after N attempt(s), …`); None for any other reason.
pub(crate) fn failed_triage_attempts(reason: &str) -> Option<u32> {
    let rest = reason.strip_prefix("triage failed after ")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    rest[digits.len()..].starts_with(" attempt").then_some(())?;
    digits.parse().ok()
}

/// The nearest-rank position (0-based) of percentile `p` among `n` sorted values.
fn rank(p: i64, n: i64) -> i64 {
    ((p * n + 99) / 100).max(1) - 1
}

impl Store {
    /// Adds refused-delivery counts, one upsert per row, in one transaction. Rows of a tenant
    /// that is not registered are skipped; a malformed row (reason, hour, zero count) is
    /// `Invalid` and nothing is written.
    pub async fn add_webhook_rejections(
        &self,
        counts: &[RejectionCount],
    ) -> Result<(), StoreError> {
        for c in counts {
            codec::check_text(&c.reason, "rejection reason", MAX_REASON_BYTES)?;
            if c.hour_start < 0 || c.hour_start % HOUR_MS != 0 {
                return Err(StoreError::Invalid(format!(
                    "hour start {} is not the start of an hour in Unix ms",
                    c.hour_start
                )));
            }
            if c.count == 0 || i64::try_from(c.count).is_err() {
                return Err(StoreError::Invalid(format!(
                    "rejection count {} is out of range",
                    c.count
                )));
            }
        }
        let mut by_tenant: BTreeMap<&str, Vec<&RejectionCount>> = BTreeMap::new();
        for c in counts {
            by_tenant.entry(c.tenant.as_str()).or_default().push(c);
        }
        let mut tx = self.begin_write().await?;
        for (tenant, rows) in by_tenant {
            let scope = TenantScope::assume(
                rows[0].tenant.clone(),
                crate::Authenticator::WebhookSignature,
            );
            match self.enter_tenant(&mut tx, &scope).await {
                Ok(()) => {}
                Err(StoreError::NotFound(_)) => {
                    tracing::debug!(tenant, "rejection counts of an unknown tenant dropped");
                    continue;
                }
                Err(e) => return Err(e),
            }
            for c in rows {
                sqlx::query(
                    "INSERT INTO webhook_rejections (tenant_id, hour_start, reason, rejected) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (tenant_id, hour_start, reason) \
                     DO UPDATE SET rejected = webhook_rejections.rejected + excluded.rejected",
                )
                .bind(tenant)
                .bind(c.hour_start)
                .bind(&c.reason)
                .bind(i64::try_from(c.count).unwrap_or(i64::MAX))
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// The scope's tenant's report for `range`. `terminal_states` names the run states that
    /// are outcomes (the rest count as open). Invalid when the range holds more than
    /// [`MAX_SEALED_STEPS`] steps to open.
    pub async fn tenant_report(
        &self,
        scope: &TenantScope,
        range: ReportRange,
        terminal_states: &[&str],
    ) -> Result<TenantReport, StoreError> {
        let runs = self.report_runs(scope, range, terminal_states).await?;
        let approvals = self.report_approvals(scope, range).await?;
        let writebacks = self.report_writebacks(scope, range).await?;
        let (policy_denials, llm) = self.report_sealed(scope, range).await?;
        let rejected_webhooks = self.report_rejections(scope, range).await?;
        Ok(TenantReport {
            tenant: scope.id().to_owned(),
            from: range.from,
            to: range.to,
            generated_at: self.clock().now_millis(),
            runs,
            approvals,
            writebacks,
            policy_denials,
            llm,
            rejected_webhooks,
        })
    }

    async fn report_runs(
        &self,
        scope: &TenantScope,
        range: ReportRange,
        terminal_states: &[&str],
    ) -> Result<RunCounts, StoreError> {
        let rows: Vec<(String, i64)> = {
            let mut tx = self.read_as(scope).await?;
            sqlx::query_as(
                "SELECT state, COUNT(*) FROM runs WHERE tenant_id = $1 AND created_at >= $2 \
                 AND created_at < $3 GROUP BY state",
            )
            .bind(scope.id())
            .bind(range.from)
            .bind(range.to)
            .fetch_all(&mut *tx)
            .await?
        };
        let mut counts = RunCounts::default();
        for (state, n) in rows {
            counts.total += n;
            let map = if terminal_states.contains(&state.as_str()) {
                &mut counts.outcomes
            } else {
                &mut counts.open
            };
            bump(map, &state, n);
        }
        Ok(counts)
    }

    async fn report_approvals(
        &self,
        scope: &TenantScope,
        range: ReportRange,
    ) -> Result<ApprovalTimes, StoreError> {
        let mut tx = self.read_as(scope).await?;
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT status, COUNT(*) FROM approvals WHERE tenant_id = $1 AND created_at >= $2 \
             AND created_at < $3 GROUP BY status",
        )
        .bind(scope.id())
        .bind(range.from)
        .bind(range.to)
        .fetch_all(&mut *tx)
        .await?;
        let mut times = ApprovalTimes::default();
        for (status, n) in rows {
            times.requested += n;
            match status.as_str() {
                "approved" => times.approved = n,
                "rejected" => times.rejected = n,
                "expired" => times.expired = n,
                "pending" => times.pending = n,
                _ => {}
            }
        }
        let decided: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM approvals WHERE tenant_id = $1 AND created_at >= $2 \
             AND created_at < $3 AND status IN ('approved', 'rejected') \
             AND decided_at IS NOT NULL",
        )
        .bind(scope.id())
        .bind(range.from)
        .bind(range.to)
        .fetch_one(&mut *tx)
        .await?;
        times.decided = decided;
        if decided > 0 {
            let at = |p: i64| {
                sqlx::query_scalar::<_, i64>(
                    "SELECT decided_at - created_at FROM approvals WHERE tenant_id = $1 \
                     AND created_at >= $2 AND created_at < $3 \
                     AND status IN ('approved', 'rejected') AND decided_at IS NOT NULL \
                     ORDER BY decided_at - created_at LIMIT 1 OFFSET $4",
                )
                .bind(scope.id())
                .bind(range.from)
                .bind(range.to)
                .bind(rank(p, decided))
            };
            times.p50_ms = at(50).fetch_optional(&mut *tx).await?;
            times.p90_ms = at(90).fetch_optional(&mut *tx).await?;
            times.p99_ms = at(99).fetch_optional(&mut *tx).await?;
        }
        Ok(times)
    }

    async fn report_writebacks(
        &self,
        scope: &TenantScope,
        range: ReportRange,
    ) -> Result<Writebacks, StoreError> {
        let (attempted, succeeded, failed): (i64, i64, i64) = {
            let mut tx = self.read_as(scope).await?;
            let sql = writebacks_sql();
            sqlx::query_as(&sql)
                .bind(scope.id())
                .bind(range.from)
                .bind(range.to)
                .fetch_one(&mut *tx)
                .await?
        };
        let ended = succeeded + failed;
        Ok(Writebacks {
            attempted,
            succeeded,
            failed,
            unfinished: attempted - ended,
            success_rate: (ended > 0).then(|| succeeded as f64 / ended as f64),
        })
    }

    /// Policy denials and LLM use, from the sealed bodies of the steps that record them.
    async fn report_sealed(
        &self,
        scope: &TenantScope,
        range: ReportRange,
    ) -> Result<(PolicyDenials, BTreeMap<String, LlmUsage>), StoreError> {
        let configured = self.configured_provider(scope).await?;
        let mut denials = PolicyDenials::default();
        let mut llm: BTreeMap<String, LlmUsage> = BTreeMap::new();
        let mut opened = 0usize;
        // Keyset paging on (at, run_id, seq).
        let mut after: (i64, String, i64) = (range.from - 1, String::new(), 0);
        loop {
            let rows: Vec<(i64, String, i64, String, String)> = {
                let mut tx = self.read_as(scope).await?;
                let sql = sealed_steps_sql();
                sqlx::query_as(&sql)
                    .bind(scope.id())
                    .bind(range.from)
                    .bind(range.to)
                    .bind(after.0)
                    .bind(after.0)
                    .bind(after.1.as_str())
                    .bind(after.1.as_str())
                    .bind(after.2)
                    .bind(PAGE)
                    .fetch_all(&mut *tx)
                    .await?
            };
            let Some(last) = rows.last() else { break };
            after = (last.0, last.1.clone(), last.2);
            let full = rows.len() as i64 == PAGE;
            opened += rows.len();
            if opened > MAX_SEALED_STEPS {
                return Err(StoreError::Invalid(format!(
                    "the range holds more than {MAX_SEALED_STEPS} journal steps to read; \
                     ask for a shorter range"
                )));
            }
            for (_, run, seq, kind, body) in rows {
                let text = self
                    .open_content(scope.id(), Column::StepBody, &step_row(&run, seq), &body)
                    .await?;
                match kind.as_str() {
                    "policy_decided" => {
                        let decided: DecidedBody = codec::from_json(&text, "policy step")?;
                        for d in decided.decisions.iter().filter(|d| d.outcome == "denied") {
                            denials.total += 1;
                            bump(&mut denials.by_field, &d.field, 1);
                            if d.policies.is_empty() {
                                bump(&mut denials.by_policy, DEFAULT_DENY_KEY, 1);
                            }
                            for policy in &d.policies {
                                bump(&mut denials.by_policy, policy, 1);
                            }
                        }
                    }
                    "triaged" => {
                        let triaged: TriagedBody = codec::from_json(&text, "triage step")?;
                        let attempts = i64::from(triaged.attempts.max(1));
                        let usage = provider_entry(&mut llm, &triaged.provenance.provider);
                        usage.calls += attempts;
                        usage.errors += attempts - 1;
                        let tokens = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
                        usage.input_tokens = usage
                            .input_tokens
                            .saturating_add(tokens(triaged.provenance.usage.input_tokens));
                        usage.output_tokens = usage
                            .output_tokens
                            .saturating_add(tokens(triaged.provenance.usage.output_tokens));
                    }
                    _ => {
                        let ended: ReasonBody = codec::from_json(&text, "step")?;
                        if let Some(n) = failed_triage_attempts(&ended.reason) {
                            let usage = provider_entry(&mut llm, &configured);
                            usage.calls += i64::from(n);
                            usage.errors += i64::from(n);
                        }
                    }
                }
            }
            if !full {
                break;
            }
        }
        Ok((denials, llm))
    }

    /// The LLM provider in the tenant's settings, which a failed triage is counted under
    /// (its step does not name one); `unknown` when the settings name none.
    async fn configured_provider(&self, scope: &TenantScope) -> Result<String, StoreError> {
        let tenant = self.tenant(scope).await?;
        Ok(tenant
            .as_ref()
            .and_then(|t| t.settings.pointer("/llm/provider"))
            .and_then(|p| p.as_str())
            .filter(|p| !p.is_empty() && p.len() <= 64)
            .unwrap_or("unknown")
            .to_owned())
    }

    async fn report_rejections(
        &self,
        scope: &TenantScope,
        range: ReportRange,
    ) -> Result<RejectedWebhooks, StoreError> {
        let rows: Vec<(String, i64)> = {
            let mut tx = self.read_as(scope).await?;
            sqlx::query_as(
                "SELECT reason, CAST(SUM(rejected) AS BIGINT) FROM webhook_rejections \
                 WHERE tenant_id = $1 AND hour_start >= $2 AND hour_start < $3 GROUP BY reason",
            )
            .bind(scope.id())
            .bind(range.from)
            .bind(range.to)
            .fetch_all(&mut *tx)
            .await?
        };
        let mut out = RejectedWebhooks::default();
        for (reason, n) in rows {
            out.total += n;
            bump(&mut out.by_reason, &reason, n);
        }
        Ok(out)
    }
}

/// The usage entry of `provider`, within [`MAX_SECTION_KEYS`] providers.
fn provider_entry<'a>(llm: &'a mut BTreeMap<String, LlmUsage>, provider: &str) -> &'a mut LlmUsage {
    let key = if llm.contains_key(provider) || llm.len() < MAX_SECTION_KEYS {
        provider
    } else {
        OTHER_KEY
    };
    llm.entry(key.to_owned()).or_default()
}

/// The read of the write-backs a tenant's runs intended in a range (`$1` the tenant, `$2` and
/// `$3` the range): each with how many writes it recorded, and its run's state. It states the
/// condition of the partial index on steps by kind.
fn writebacks_sql() -> String {
    format!(
        "SELECT COUNT(*), \
         COALESCE(SUM(CASE WHEN w.written > 0 THEN 1 ELSE 0 END), 0), \
         COALESCE(SUM(CASE WHEN w.written = 0 AND r.state = 'failed' \
             THEN 1 ELSE 0 END), 0) \
         FROM (SELECT s.tenant_id, s.run_id, \
                 (SELECT COUNT(*) FROM run_steps d WHERE d.tenant_id = s.tenant_id \
                  AND d.run_id = s.run_id AND d.kind = 'written') AS written \
               FROM run_steps s WHERE s.tenant_id = $1 AND s.kind = 'write_intended' \
               AND {REPORTED_KINDS} \
               AND s.at >= $2 AND s.at < $3 GROUP BY s.tenant_id, s.run_id) w \
         JOIN runs r ON r.tenant_id = w.tenant_id AND r.id = w.run_id"
    )
}

/// One page of the steps the sealed sections read (`$1` the tenant, `$2` and `$3` the range,
/// `$4` to `$8` the key of the last step read, `$9` the page's size), in (at, run, seq)
/// order. It states the condition of the partial index on steps by kind.
fn sealed_steps_sql() -> String {
    format!(
        "SELECT s.at, s.run_id, s.seq, s.kind, s.body FROM run_steps s \
         JOIN runs r ON r.tenant_id = s.tenant_id AND r.id = s.run_id \
         WHERE s.tenant_id = $1 AND s.at >= $2 AND s.at < $3 AND {REPORTED_KINDS} \
         AND (s.kind IN ('policy_decided', 'triaged', 'parked') \
              OR (s.kind = 'finished' AND r.state = 'failed')) \
         AND (s.at > $4 OR (s.at = $5 AND (s.run_id > $6 \
              OR (s.run_id = $7 AND s.seq > $8)))) \
         ORDER BY s.at, s.run_id, s.seq LIMIT $9"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_reads_by_step_kind_are_served_by_the_partial_index() {
        for (sql, params) in [(writebacks_sql(), 3), (sealed_steps_sql(), 9)] {
            let plan = Store::sqlite_plan(&sql, params).await;
            assert!(
                plan.iter()
                    .any(|step| step.contains("USING INDEX run_steps_by_tenant_kind")),
                "{plan:?}"
            );
        }
    }

    #[test]
    fn ranges_are_checked() {
        assert!(ReportRange::new(0, 1).is_ok());
        assert!(ReportRange::new(0, MAX_REPORT_SPAN_MS).is_ok());
        assert!(ReportRange::new(0, MAX_REPORT_SPAN_MS + 1).is_err());
        assert!(ReportRange::new(5, 5).is_err());
        assert!(ReportRange::new(6, 5).is_err());
        assert!(ReportRange::new(-1, 5).is_err());
    }

    #[test]
    fn failed_triage_reasons_give_their_attempts() {
        let r = "triage failed after 3 attempt(s), no proposal: provider said 500";
        assert_eq!(failed_triage_attempts(r), Some(3));
        assert_eq!(
            failed_triage_attempts("triage failed after x attempt(s)"),
            None
        );
        assert_eq!(failed_triage_attempts("writing failed: 502"), None);
        assert_eq!(failed_triage_attempts("triage failed after 2 tries"), None);
    }

    #[test]
    fn nearest_rank_positions() {
        assert_eq!(rank(50, 1), 0);
        assert_eq!(rank(99, 1), 0);
        assert_eq!(rank(50, 4), 1);
        assert_eq!(rank(90, 10), 8);
        assert_eq!(rank(99, 10), 9);
        assert_eq!(rank(50, 3), 1);
    }

    #[test]
    fn sections_keep_a_bounded_number_of_keys() {
        let mut map = BTreeMap::new();
        for i in 0..MAX_SECTION_KEYS + 10 {
            bump(&mut map, &format!("k{i}"), 1);
        }
        assert_eq!(map.len(), MAX_SECTION_KEYS + 1);
        assert_eq!(map[OTHER_KEY], 10);
    }
}
