//! Per-tenant reports over HTTP, as JSON or CSV, and the durable count of refused webhook
//! deliveries the reports include.
//!
//! `GET /v1/tenant/report` answers for the caller's tenant (an API token with `runs:read` or
//! `admin`); `GET /v1/tenants/{id}/report` for an operator (any role that may read the ops
//! API). Both take `from` and `to` as Unix ms (`from` inclusive, `to` exclusive, at most 366
//! days apart) and `format` (`json`, the default, or `csv`). Any other spelling of a time (RFC
//! 3339, seconds with a fraction, a sign) is refused with `400`, as are unknown parameters.
//!
//! The CSV form is one table, `section,key,value`, with a header row. Fields holding a comma,
//! a quote, a line break or surrounding spaces are quoted (RFC 4180, quotes doubled). A field
//! that a spreadsheet would take for a formula (starting with `=`, `+`, `-`, `@`, a tab or a
//! carriage return) gets a leading `'`, so a field name chosen by the model cannot become a
//! formula in the reader's spreadsheet; only the key column can hold such text.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use steward_actors::states;
use steward_core::TenantId;
use steward_persistence::reports::HOUR_MS;
use steward_persistence::{RejectionCount, ReportRange, Store, TenantReport, TenantScope};
use tokio::sync::Notify;

use crate::error::ApiError;
use crate::state::AppState;

/// The longest `from` or `to` accepted: more digits than any Unix ms time needs.
const MAX_TIME_DIGITS: usize = 15;

/// How often the rejection tally is written to the store.
pub(crate) const FLUSH_EVERY: Duration = Duration::from_secs(10);

/// The most (tenant, hour, reason) counters held between flushes. A delivery that would add
/// a counter beyond it is left uncounted in the store (the Prometheus counter still has it),
/// and the number left out is logged at the next flush.
pub(crate) const MAX_TALLY_KEYS: usize = 10_000;

/// The range and format of a report request.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ReportQuery {
    /// Start of the range, Unix ms, inclusive.
    from: Option<String>,
    /// End of the range, Unix ms, exclusive; at most 366 days after `from`.
    to: Option<String>,
    /// `json` (the default) or `csv`.
    format: Option<String>,
}

/// The answer's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Csv,
}

impl ReportQuery {
    fn parse(&self) -> Result<(ReportRange, Format), ApiError> {
        let from = unix_ms("from", self.from.as_deref())?;
        let to = unix_ms("to", self.to.as_deref())?;
        let format = match self.format.as_deref() {
            None | Some("json") => Format::Json,
            Some("csv") => Format::Csv,
            Some(_) => {
                return Err(ApiError::BadRequest("`format` is `json` or `csv`".into()));
            }
        };
        Ok((ReportRange::new(from, to)?, format))
    }
}

/// A required time parameter: decimal digits only, Unix ms.
fn unix_ms(name: &str, value: Option<&str>) -> Result<i64, ApiError> {
    let value =
        value.ok_or_else(|| ApiError::BadRequest(format!("`{name}` is required, in Unix ms")))?;
    if value.is_empty()
        || value.len() > MAX_TIME_DIGITS
        || !value.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(ApiError::BadRequest(format!(
            "`{name}` must be Unix ms: at most {MAX_TIME_DIGITS} decimal digits"
        )));
    }
    value
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("`{name}` is out of range")))
}

/// `GET /v1/tenant/report`: the caller's tenant's report for `from <= t < to`.
#[utoipa::path(get, path = "/v1/tenant/report", tag = "tenant",
    params(ReportQuery),
    responses(
        (status = 200, description = "The report: JSON (`format=json`), or CSV rows `section,key,value` (`format=csv`)",
            content((Object = "application/json"), (String = "text/csv"))),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthenticated),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 500, response = crate::openapi::Internal),
    ),
    security(("tenantToken" = ["runs:read"])))]
pub(crate) async fn tenant_report(
    State(state): State<AppState>,
    tally: Option<axum::Extension<Arc<RejectionTally>>>,
    headers: HeaderMap,
    query: Result<Query<ReportQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let scope = reader(&state, &headers).await?;
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    answer(&state, tally, scope, &query).await
}

/// `GET /v1/tenants/{id}/report` (operator): a tenant's report for `from <= t < to`.
#[utoipa::path(get, path = "/v1/tenants/{id}/report", tag = "platform",
    params(("id" = String, Path, description = "Tenant id"), ReportQuery),
    responses(
        (status = 200, description = "The report: JSON (`format=json`), or CSV rows `section,key,value` (`format=csv`)",
            content((Object = "application/json"), (String = "text/csv"))),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthenticated),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 421, description = "The tenant is homed in another region", body = crate::openapi::Misdirected),
        (status = 500, response = crate::openapi::Internal),
    ),
    security(("operatorToken" = []), ("opsSession" = []), ("oidcIdToken" = [])))]
pub(crate) async fn platform_report(
    State(state): State<AppState>,
    tally: Option<axum::Extension<Arc<RejectionTally>>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: Result<Query<ReportQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    crate::ops::authorize(&state, &headers, crate::ops_auth::Action::Read).await?;
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let scope = crate::tenancy::known_tenant(&state, &id).await?;
    answer(&state, tally, scope, &query).await
}

/// Authenticates a tenant token carrying `runs:read` or `admin`: 401 for a bad token, 403
/// for a good one without either.
async fn reader(state: &AppState, headers: &HeaderMap) -> Result<TenantScope, ApiError> {
    let token = crate::ops_auth::bearer(headers)
        .filter(|t| !t.is_empty() && t.len() <= 256)
        .ok_or(ApiError::Unauthenticated)?;
    let (scope, scopes) = state
        .store
        .authenticate_token(token)
        .await?
        .ok_or(ApiError::Unauthenticated)?;
    if !scopes.iter().any(|s| s == "runs:read" || s == "admin") {
        return Err(ApiError::Forbidden("runs:read"));
    }
    Ok(scope)
}

async fn answer(
    state: &AppState,
    tally: Option<axum::Extension<Arc<RejectionTally>>>,
    scope: TenantScope,
    query: &ReportQuery,
) -> Result<Response, ApiError> {
    let (range, format) = query.parse()?;
    // What this process counted but has not written yet belongs in the report.
    if let Some(axum::Extension(tally)) = tally {
        tally.flush().await;
    }
    let report = state
        .store
        .tenant_report(&scope, range, states::TERMINAL)
        .await?;
    Ok(match format {
        Format::Json => (StatusCode::OK, Json(report)).into_response(),
        Format::Csv => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            to_csv(&report),
        )
            .into_response(),
    })
}

/// The report as CSV: a header, then one `section,key,value` row per fact.
pub(crate) fn to_csv(report: &TenantReport) -> String {
    let mut out = String::from("section,key,value\r\n");
    for (section, key, value) in report.rows() {
        for (i, field) in [section, key, value].iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&csv_field(field));
        }
        out.push_str("\r\n");
    }
    out
}

/// One CSV field: formula-like text defused with a leading `'`, then quoted when needed.
fn csv_field(value: &str) -> String {
    let defused = if value.starts_with(['=', '+', '-', '@', '\t', '\r']) && !is_number(value) {
        format!("'{value}")
    } else {
        value.to_owned()
    };
    let needs_quotes = defused.contains([',', '"', '\n', '\r'])
        || defused.starts_with(' ')
        || defused.ends_with(' ');
    if needs_quotes {
        format!("\"{}\"", defused.replace('"', "\"\""))
    } else {
        defused
    }
}

/// Whether `value` is a plain number (a negative count or rate is left as it is).
fn is_number(value: &str) -> bool {
    value.parse::<f64>().is_ok()
}

/// Refused deliveries for known tenants' sources, counted in memory and written to the store
/// every [`FLUSH_EVERY`], so that a flood of forged deliveries costs a handful of upserts per
/// flush (one per tenant, hour and reason), not a database write per delivery. The map holds
/// at most [`MAX_TALLY_KEYS`] counters. A report asks for a flush first, so it includes what
/// this process has counted. When the router holding the tally is dropped (an orderly
/// shutdown), what is left is handed to a last flush task, best effort: it runs only if the
/// runtime and the store outlive the router. Limits: counts not yet flushed are
/// lost if the process dies, at most [`FLUSH_EVERY`] of them; each process counts its own
/// refusals, and the store adds them up.
pub(crate) struct RejectionTally {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    counts: Mutex<Tally>,
    /// Wakes the flusher early when the tally is dropped.
    closed: Notify,
    /// Serialises flushes, so two cannot write the same counts.
    flushing: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Tally {
    counts: HashMap<(TenantId, i64, &'static str), u64>,
    /// Deliveries left uncounted since the last flush, the map being full.
    dropped: u64,
    /// Whether the flusher task runs.
    started: bool,
}

fn lock(m: &Mutex<Tally>) -> MutexGuard<'_, Tally> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl RejectionTally {
    /// A tally that writes to `store`. Its flusher task starts with the first count, inside
    /// the server's runtime.
    pub(crate) fn new(store: Store) -> Arc<Self> {
        Arc::new(Self {
            inner: Arc::new(Inner {
                store,
                counts: Mutex::new(Tally::default()),
                closed: Notify::new(),
                flushing: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// Counts one refused delivery of `tenant`'s existing source for `reason`, at `now_ms`.
    pub(crate) fn record(&self, tenant: &TenantId, reason: &'static str, now_ms: i64) {
        let hour = now_ms.div_euclid(HOUR_MS) * HOUR_MS;
        let start = {
            let mut tally = lock(&self.inner.counts);
            let key = (tenant.clone(), hour, reason);
            if let Some(n) = tally.counts.get_mut(&key) {
                *n = n.saturating_add(1);
            } else if tally.counts.len() < MAX_TALLY_KEYS {
                tally.counts.insert(key, 1);
            } else {
                tally.dropped = tally.dropped.saturating_add(1);
            }
            !std::mem::replace(&mut tally.started, true)
        };
        if start {
            let weak = Arc::downgrade(&self.inner);
            tokio::spawn(flush_loop(weak));
        }
    }

    /// Writes what was counted so far. A failed write keeps the counts for the next flush
    /// (within [`MAX_TALLY_KEYS`]) and is logged.
    pub(crate) async fn flush(&self) {
        self.inner.flush().await;
    }
}

impl Drop for RejectionTally {
    fn drop(&mut self) {
        self.inner.closed.notify_one();
        // The flusher may never have started: hand any counts to a last flush of their own.
        let pending = !lock(&self.inner.counts).counts.is_empty();
        if pending && let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let inner = self.inner.clone();
            runtime.spawn(async move { inner.flush().await });
        }
    }
}

impl Inner {
    async fn flush(&self) {
        let _one = self.flushing.lock().await;
        let (taken, dropped) = {
            let mut tally = lock(&self.counts);
            (
                std::mem::take(&mut tally.counts),
                std::mem::take(&mut tally.dropped),
            )
        };
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "Refused webhook deliveries were left out of the stored counts: the tally was full."
            );
        }
        if taken.is_empty() {
            return;
        }
        let rows: Vec<RejectionCount> = taken
            .iter()
            .map(|((tenant, hour, reason), n)| RejectionCount {
                tenant: tenant.clone(),
                hour_start: *hour,
                reason: (*reason).to_owned(),
                count: *n,
            })
            .collect();
        if let Err(error) = self.store.add_webhook_rejections(&rows).await {
            tracing::warn!(
                %error,
                "Writing the refused webhook counts failed; they are kept for the next flush."
            );
            let mut tally = lock(&self.counts);
            for (key, n) in taken {
                if let Some(m) = tally.counts.get_mut(&key) {
                    *m = m.saturating_add(n);
                } else if tally.counts.len() < MAX_TALLY_KEYS {
                    tally.counts.insert(key, n);
                } else {
                    tally.dropped = tally.dropped.saturating_add(n);
                }
            }
        }
    }
}

/// Flushes every [`FLUSH_EVERY`] while the tally lives, and once more when it is dropped.
async fn flush_loop(inner: Weak<Inner>) {
    loop {
        let closed = {
            let Some(strong) = inner.upgrade() else {
                return;
            };
            let closed = tokio::select! {
                () = tokio::time::sleep(FLUSH_EVERY) => false,
                () = strong.closed.notified() => true,
            };
            strong.flush().await;
            closed
        };
        if closed {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An RFC 4180 reader, written apart from the writer, for the round trip.
    fn parse_csv(text: &str) -> Vec<Vec<String>> {
        let mut rows = Vec::new();
        let mut row = Vec::new();
        let mut field = String::new();
        let mut quoted = false;
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match (quoted, c) {
                (true, '"') if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                (true, '"') => quoted = false,
                (true, c) => field.push(c),
                (false, '"') => quoted = true,
                (false, ',') => row.push(std::mem::take(&mut field)),
                (false, '\r') if chars.peek() == Some(&'\n') => {}
                (false, '\n') => {
                    row.push(std::mem::take(&mut field));
                    rows.push(std::mem::take(&mut row));
                }
                (false, c) => field.push(c),
            }
        }
        rows
    }

    #[test]
    fn fields_round_trip_through_a_csv_reader() {
        for value in [
            "plain",
            "a,b",
            "say \"hi\"",
            "two\nlines",
            "cr\r\nlf",
            " padded ",
            "",
            "-1",
        ] {
            let line = format!("{},x\r\n", csv_field(value));
            assert_eq!(
                parse_csv(&line),
                vec![vec![value.to_owned(), "x".into()]],
                "{value:?}"
            );
        }
    }

    #[test]
    fn formula_like_fields_are_defused() {
        assert_eq!(csv_field("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(csv_field("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(csv_field("+1"), "+1");
    }

    #[test]
    fn times_are_unix_ms_digits_only() {
        assert_eq!(
            unix_ms("from", Some("1700000000000")).ok(),
            Some(1_700_000_000_000)
        );
        for bad in [
            "",
            "-5",
            "+5",
            "1.5",
            "2024-01-01T00:00:00Z",
            "1e9",
            " 5",
            "9999999999999999",
        ] {
            assert!(unix_ms("from", Some(bad)).is_err(), "{bad:?}");
        }
        assert!(unix_ms("from", None).is_err());
    }

    #[tokio::test]
    async fn the_tally_keeps_a_bounded_number_of_counters() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(steward_persistence::StoreOptions::new(
            dir.path().join("s.db"),
        ))
        .await
        .unwrap();
        let tally = RejectionTally::new(store);
        let tenant = TenantId::parse("us-acme").unwrap();
        for hour in 0..(MAX_TALLY_KEYS as i64 + 5) {
            tally.record(&tenant, "signature_mismatch", hour * HOUR_MS);
        }
        tally.record(&tenant, "signature_mismatch", 0);
        let counts = lock(&tally.inner.counts);
        assert_eq!(counts.counts.len(), MAX_TALLY_KEYS);
        assert_eq!(counts.dropped, 5);
        assert_eq!(counts.counts[&(tenant, 0, "signature_mismatch")], 2);
    }
}
