//! Fault and delay injection for the stand-ins, so tests can make a vendor misbehave the way it
//! does in production: a 5xx, a slow answer, a dropped connection, a rate limit, a Slack
//! `ok:false` error or an overloaded LLM, each in that vendor's own wire format.
//!
//! Each server holds its own [`Faults`] book, replaced with `PUT /_standin/faults` and read
//! with `GET /_standin/faults`. A book is a list of [`FaultRule`]s; a request to a route is
//! matched against the rules for that route in order, and the first rule that fires decides
//! what happens. A rule fires for the next `times` requests, or with a `probability` drawn from
//! a generator seeded with `seed`, or both (each request with that probability until `times`
//! hits), or, with neither, for every request.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::support;

/// The most rules one book holds.
pub(super) const MAX_RULES: usize = 64;

/// The longest delay or hold a rule may ask for.
pub(super) const MAX_DELAY: Duration = Duration::from_secs(600);

/// The longest Slack error code accepted.
const MAX_ERROR_CODE: usize = 64;

/// Which vendor a server speaks for; it decides the routes and the error formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Vendor {
    ServiceNow,
    Slack,
    Llm,
}

/// A route a rule can target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FaultRoute {
    /// `POST /oauth_token.do`.
    #[serde(rename = "oauth")]
    Oauth,
    /// `GET` of the `incident` table (one record or a query).
    #[serde(rename = "table_get")]
    TableGet,
    /// `PATCH` of a Table API record.
    #[serde(rename = "table_patch")]
    TablePatch,
    /// `GET` of the `sys_journal_field` table.
    #[serde(rename = "journal")]
    Journal,
    /// Slack `chat.postMessage`.
    #[serde(rename = "chat.postMessage")]
    ChatPostMessage,
    /// Slack `chat.update`.
    #[serde(rename = "chat.update")]
    ChatUpdate,
    /// Slack `chat.postEphemeral`.
    #[serde(rename = "chat.postEphemeral")]
    ChatPostEphemeral,
    /// `POST /v1/chat/completions`.
    #[serde(rename = "chat_completions")]
    ChatCompletions,
}

impl FaultRoute {
    /// The vendor serving this route.
    pub(super) fn vendor(self) -> Vendor {
        match self {
            Self::Oauth | Self::TableGet | Self::TablePatch | Self::Journal => Vendor::ServiceNow,
            Self::ChatPostMessage | Self::ChatUpdate | Self::ChatPostEphemeral => Vendor::Slack,
            Self::ChatCompletions => Vendor::Llm,
        }
    }

    /// The route a request to `vendor` goes to, if rules can target it.
    pub(super) fn classify(vendor: Vendor, method: &Method, path: &str) -> Option<Self> {
        match vendor {
            Vendor::ServiceNow => servicenow_route(method, path),
            Vendor::Slack if *method == Method::POST => match path.strip_prefix("/api/")? {
                "chat.postMessage" => Some(Self::ChatPostMessage),
                "chat.update" => Some(Self::ChatUpdate),
                "chat.postEphemeral" => Some(Self::ChatPostEphemeral),
                _ => None,
            },
            Vendor::Llm if *method == Method::POST && path == "/v1/chat/completions" => {
                Some(Self::ChatCompletions)
            }
            Vendor::Slack | Vendor::Llm => None,
        }
    }
}

fn servicenow_route(method: &Method, path: &str) -> Option<FaultRoute> {
    if *method == Method::POST && path == "/oauth_token.do" {
        return Some(FaultRoute::Oauth);
    }
    let rest = path.strip_prefix("/api/now/")?;
    let rest = ["v1/", "v2/"]
        .iter()
        .find_map(|version| rest.strip_prefix(version))
        .unwrap_or(rest);
    let table = rest.strip_prefix("table/")?.split('/').next()?;
    match (method, table) {
        (&Method::PATCH, _) => Some(FaultRoute::TablePatch),
        (&Method::GET, "sys_journal_field") => Some(FaultRoute::Journal),
        (&Method::GET, "incident") => Some(FaultRoute::TableGet),
        _ => None,
    }
}

/// What a firing rule does to the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum FaultAction {
    /// Wait `ms` milliseconds, then answer normally.
    Delay { ms: u64 },
    /// Wait `after_ms` milliseconds (0 by default), then drop the connection without a
    /// complete answer; the request never reaches the stand-in's state.
    Reset {
        #[serde(default)]
        after_ms: u64,
    },
    /// Let the stand-in handle the request (a write is applied), then wait `after_ms`
    /// milliseconds and drop the connection instead of answering: the caller never learns
    /// that its call took effect.
    LoseReply {
        #[serde(default)]
        after_ms: u64,
    },
    /// Answer this 5xx status with the vendor's error body.
    ServerError { status: u16 },
    /// Answer 429 with `Retry-After: secs` and the vendor's rate-limit body.
    RetryAfter { secs: u64 },
    /// ServiceNow's rate limit: 429 with `X-RateLimit-Limit`, `X-RateLimit-Reset` (Unix time,
    /// `reset_in_secs` from now), `X-RateLimit-Rule` and `Retry-After`.
    ServicenowRateLimit { limit: u64, reset_in_secs: u64 },
    /// Slack's HTTP 200 `{"ok":false,"error":error}`.
    SlackError { error: String },
    /// Anthropic's overload: 529 with an `overloaded_error` body.
    LlmOverloaded,
    /// OpenAI's 500 `server_error` body.
    OpenaiServerError,
}

/// One rule of a book, as `PUT /_standin/faults` takes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRule {
    /// The route it applies to.
    pub route: FaultRoute,
    /// What it does when it fires.
    pub action: FaultAction,
    /// Fire for at most this many requests.
    #[serde(default)]
    pub times: Option<u64>,
    /// Fire for each request with this probability (0 to 1).
    #[serde(default)]
    pub probability: Option<f64>,
    /// Seed of the generator behind `probability` (0 by default).
    #[serde(default)]
    pub seed: Option<u64>,
}

/// Why a book was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FaultError {
    #[error("a book holds at most {MAX_RULES} rules, not {0}")]
    TooManyRules(usize),
    #[error("rule {0}: route {1:?} is not served by this stand-in")]
    WrongServer(usize, FaultRoute),
    #[error("rule {0}: this action does not fit route {1:?}")]
    WrongAction(usize, FaultRoute),
    #[error("rule {0}: a server error status must be 500 to 599, not {1}")]
    NotAServerError(usize, u16),
    #[error("rule {0}: waits are at most {secs} s", secs = MAX_DELAY.as_secs())]
    TooLong(usize),
    #[error("rule {0}: probability must be between 0 and 1")]
    Probability(usize),
    #[error("rule {0}: a slack error code is 1 to {MAX_ERROR_CODE} lowercase letters and '_'")]
    ErrorCode(usize),
    #[error("the fault book is not valid JSON of the expected shape: {0}")]
    Malformed(String),
}

/// A rule with what it has done so far.
#[derive(Debug)]
struct ActiveRule {
    rule: FaultRule,
    hits: u64,
    rng: StdRng,
}

impl ActiveRule {
    fn new(rule: FaultRule) -> Self {
        let rng = StdRng::seed_from_u64(rule.seed.unwrap_or(0));
        Self { rule, hits: 0, rng }
    }

    /// Whether the rule fires for one more request to its route; counts the hit if so.
    fn fire(&mut self) -> bool {
        if self.rule.times.is_some_and(|times| self.hits >= times) {
            return false;
        }
        if let Some(probability) = self.rule.probability
            && !self.rng.gen_bool(probability)
        {
            return false;
        }
        self.hits += 1;
        true
    }

    fn json(&self) -> Value {
        let remaining = self.rule.times.map(|times| times.saturating_sub(self.hits));
        json!({"rule": self.rule, "hits": self.hits, "remaining": remaining})
    }
}

/// The fault book of one server.
#[derive(Debug)]
pub(super) struct Faults {
    vendor: Vendor,
    rules: Mutex<Vec<ActiveRule>>,
}

impl Faults {
    /// An empty book for a server of `vendor`.
    pub(super) fn new(vendor: Vendor) -> Self {
        Self {
            vendor,
            rules: Mutex::new(Vec::new()),
        }
    }

    /// Replaces the book with `rules` after checking every rule; on error nothing changes.
    pub(super) fn replace(&self, rules: Vec<FaultRule>) -> Result<(), FaultError> {
        self.check_all(&rules)?;
        *support::lock(&self.rules) = rules.into_iter().map(ActiveRule::new).collect();
        Ok(())
    }

    /// Checks that this server can apply every rule.
    pub(super) fn check_all(&self, rules: &[FaultRule]) -> Result<(), FaultError> {
        if rules.len() > MAX_RULES {
            return Err(FaultError::TooManyRules(rules.len()));
        }
        for (index, rule) in rules.iter().enumerate() {
            self.check(index, rule)?;
        }
        Ok(())
    }

    fn check(&self, index: usize, rule: &FaultRule) -> Result<(), FaultError> {
        if rule.route.vendor() != self.vendor {
            return Err(FaultError::WrongServer(index, rule.route));
        }
        if rule.probability.is_some_and(|p| !(0.0..=1.0).contains(&p)) {
            return Err(FaultError::Probability(index));
        }
        check_action(index, rule.route, &rule.action)
    }

    /// The action of the first rule that fires for a request to `route`.
    pub(super) fn decide(&self, route: FaultRoute) -> Option<FaultAction> {
        let mut rules = support::lock(&self.rules);
        rules
            .iter_mut()
            .filter(|active| active.rule.route == route)
            .find_map(|active| active.fire().then(|| active.rule.action.clone()))
    }

    /// The book with each rule's hits and remaining count.
    pub(super) fn json(&self) -> Value {
        let rules = support::lock(&self.rules);
        json!({"rules": rules.iter().map(ActiveRule::json).collect::<Vec<_>>()})
    }
}

fn check_action(index: usize, route: FaultRoute, action: &FaultAction) -> Result<(), FaultError> {
    let max_ms = u64::try_from(MAX_DELAY.as_millis()).unwrap_or(u64::MAX);
    let fits = match action {
        FaultAction::Delay { ms }
        | FaultAction::Reset { after_ms: ms }
        | FaultAction::LoseReply { after_ms: ms } => {
            if *ms > max_ms {
                return Err(FaultError::TooLong(index));
            }
            true
        }
        FaultAction::RetryAfter { secs } if *secs > MAX_DELAY.as_secs() => {
            return Err(FaultError::TooLong(index));
        }
        FaultAction::RetryAfter { .. } => true,
        FaultAction::ServerError { status } if !(500..=599).contains(status) => {
            return Err(FaultError::NotAServerError(index, *status));
        }
        FaultAction::ServerError { .. } => true,
        FaultAction::ServicenowRateLimit { .. } => route.vendor() == Vendor::ServiceNow,
        FaultAction::SlackError { error } => {
            if !is_error_code(error) {
                return Err(FaultError::ErrorCode(index));
            }
            route.vendor() == Vendor::Slack
        }
        FaultAction::LlmOverloaded | FaultAction::OpenaiServerError => {
            route.vendor() == Vendor::Llm
        }
    };
    fits.then_some(())
        .ok_or(FaultError::WrongAction(index, route))
}

fn is_error_code(code: &str) -> bool {
    (1..=MAX_ERROR_CODE).contains(&code.len())
        && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
}

/// Adds `GET` and `PUT /_standin/faults` to a server's router and puts every request through
/// its book.
pub(super) fn layer(router: Router, faults: Arc<Faults>) -> Router {
    let control = Router::new()
        .route(
            "/_standin/faults",
            axum::routing::get(control_get).put(control_put),
        )
        .with_state(faults.clone());
    router
        .merge(control)
        .layer(axum::middleware::from_fn_with_state(faults, inject))
}

async fn control_get(State(faults): State<Arc<Faults>>) -> Json<Value> {
    Json(faults.json())
}

/// The body of `PUT /_standin/faults`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Book {
    rules: Vec<FaultRule>,
}

async fn control_put(
    State(faults): State<Arc<Faults>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = support::read_body(body)
        .map_err(|error| FaultError::Malformed(error.to_string()))
        .and_then(|body| {
            serde_json::from_slice::<Book>(&body)
                .map_err(|error| FaultError::Malformed(error.to_string()))
        })
        .and_then(|book| faults.replace(book.rules));
    match result {
        Ok(()) => Json(faults.json()).into_response(),
        Err(error) => (
            StatusCode::BAD_REQUEST,
            Json(json!({"ok": false, "error": error.to_string()})),
        )
            .into_response(),
    }
}

/// The middleware: applies the action of the rule that fires, if any.
async fn inject(State(faults): State<Arc<Faults>>, request: Request, next: Next) -> Response {
    let route = FaultRoute::classify(faults.vendor, request.method(), request.uri().path());
    let Some(action) = route.and_then(|route| faults.decide(route)) else {
        return next.run(request).await;
    };
    tracing::info!(?route, ?action, "stand-in injects a fault");
    match action {
        FaultAction::Delay { ms } => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            next.run(request).await
        }
        FaultAction::Reset { after_ms } => {
            tokio::time::sleep(Duration::from_millis(after_ms)).await;
            drop_connection()
        }
        FaultAction::LoseReply { after_ms } => {
            drop(next.run(request).await);
            tokio::time::sleep(Duration::from_millis(after_ms)).await;
            drop_connection()
        }
        other => fault_response(faults.vendor, &other),
    }
}

/// Drops the connection of the request being served, with no answer at all.
///
/// The server runs each connection as its own task, and the request's handler runs inside it;
/// unwinding out of the handler ends that task, which closes the socket mid-request, as a
/// crashed or reset peer does. `resume_unwind` skips the panic hook, so nothing is printed, and
/// the runtime contains the unwind to that one connection's task.
fn drop_connection() -> ! {
    std::panic::resume_unwind(Box::new("stand-in fault: connection dropped"))
}

/// The vendor-format answer for an action that answers.
pub(super) fn fault_response(vendor: Vendor, action: &FaultAction) -> Response {
    match action {
        FaultAction::ServerError { status } => server_error(vendor, *status),
        FaultAction::RetryAfter { secs } => rate_limited(vendor, *secs),
        FaultAction::ServicenowRateLimit {
            limit,
            reset_in_secs,
        } => servicenow_rate_limit(*limit, *reset_in_secs),
        FaultAction::SlackError { error } => {
            Json(json!({"ok": false, "error": error})).into_response()
        }
        FaultAction::LlmOverloaded => (
            status_or_500(529),
            Json(json!({
                "type": "error",
                "error": {"type": "overloaded_error", "message": "Overloaded"},
            })),
        )
            .into_response(),
        FaultAction::OpenaiServerError => server_error(Vendor::Llm, 500),
        FaultAction::Delay { .. } | FaultAction::Reset { .. } | FaultAction::LoseReply { .. } => {
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

fn status_or_500(status: u16) -> StatusCode {
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

fn server_error(vendor: Vendor, status: u16) -> Response {
    let body = match vendor {
        Vendor::ServiceNow => json!({
            "error": {"message": "Internal server error", "detail": "The instance could not handle the request"},
            "status": "failure",
        }),
        Vendor::Slack => json!({"ok": false, "error": "fatal_error"}),
        Vendor::Llm => json!({"error": {
            "message": "The server had an error while processing your request. Sorry about that!",
            "type": "server_error",
            "param": null,
            "code": null,
        }}),
    };
    (status_or_500(status), Json(body)).into_response()
}

fn rate_limited(vendor: Vendor, secs: u64) -> Response {
    let body = match vendor {
        Vendor::ServiceNow => json!({
            "error": {"message": "Rate limit exceeded", "detail": "Rate limit for Table API exceeded"},
            "status": "failure",
        }),
        Vendor::Slack => json!({"ok": false, "error": "ratelimited"}),
        Vendor::Llm => json!({"error": {
            "message": "Rate limit reached for requests. Please try again later.",
            "type": "requests",
            "param": null,
            "code": "rate_limit_exceeded",
        }}),
    };
    let mut response = (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    response
}

fn servicenow_rate_limit(limit: u64, reset_in_secs: u64) -> Response {
    let body = json!({
        "error": {
            "message": "Rate limit exceeded",
            "detail": format!("Rate limit of {limit} requests per hour for Table API exceeded"),
        },
        "status": "failure",
    });
    let mut response = (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response();
    let headers = response.headers_mut();
    headers.insert("x-ratelimit-limit", HeaderValue::from(limit));
    let reset = support::unix_now().saturating_add(reset_in_secs);
    headers.insert("x-ratelimit-reset", HeaderValue::from(reset));
    headers.insert(
        "x-ratelimit-rule",
        HeaderValue::from_static("4d3b2a1f0e9c8b7a6d5c4b3a2f1e0d9c"),
    );
    headers.insert(header::RETRY_AFTER, HeaderValue::from(reset_in_secs));
    response
}

#[cfg(test)]
mod tests;
