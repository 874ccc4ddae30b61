//! The ServiceNow Table API for incidents, signed in with OAuth.
//!
//! Records are read and written as raw values (`sysparm_display_value=false`, reference links
//! left out), so what Steward compares and writes is what the instance stores. Nothing here
//! retries on its own, with one exception: a Table API 401 drops the access token and sends the
//! same request once more with a fresh one, since tokens may expire or be revoked at any time.
//! Inputs that end up in a URL or an encoded query are validated before anything is sent.

use std::fmt;
use std::sync::Arc;

use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION};
use serde_json::{Map, Value};
use steward_core::{Clock, Incident, IncidentRef, SystemClock};
use tokio::sync::watch;
use url::Url;

mod auth;
mod list;
mod record;
mod wire;

pub use auth::ServiceNowAuth;
pub use list::{ChangePage, IncidentChange, MAX_PAGE_SIZE, format_time, parse_changes, parse_time};
pub use record::{parse_incident_reply, parse_record_list_reply};
pub use wire::table_error;

use auth::TokenCache;
use wire::RawReply;

/// The flags every incident read and write carries: raw values, no reference links.
const RAW_VALUES: [(&str, &str); 2] = [
    ("sysparm_exclude_reference_link", "true"),
    ("sysparm_display_value", "false"),
];

/// Longest journal marker accepted.
const MAX_MARKER_CHARS: usize = 200;
/// Longest field name accepted in a journal query.
const MAX_ELEMENT_CHARS: usize = 80;

/// A client for one instance with one set of credentials. It holds the access-token cache, so
/// share one per instance (for example behind an `Arc`) rather than building one per call.
pub struct ServiceNowClient {
    instance: Url,
    http: reqwest::Client,
    tokens: TokenCache,
}

impl fmt::Debug for ServiceNowClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceNowClient")
            .field("instance", &self.instance.as_str())
            .field("tokens", &self.tokens)
            .finish_non_exhaustive()
    }
}

/// Why a ServiceNow call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ServiceNowError {
    #[error("servicenow has no such record, or an ACL hides it")]
    NotFound,
    #[error("servicenow rejected the access token: {message}")]
    Unauthorized { message: String },
    #[error("servicenow refused access (ACL, business rule or data policy): {message}")]
    Forbidden { message: String },
    #[error("servicenow rate limit reached{}", rate_limit_text(.limit, .reset_at_secs, .retry_after_secs))]
    RateLimited {
        reset_at_secs: Option<i64>,
        retry_after_secs: Option<u64>,
        limit: Option<String>,
    },
    #[error("servicenow rejected the request: {message}{}", detail_text(.detail))]
    BadRequest { message: String, detail: String },
    #[error("servicenow failed (status {status}): {message}")]
    Server { status: u16, message: String },
    #[error("servicenow sign-in failed ({error}: {description}){}",
        if *.reconnect_needed { "; the instance must be reconnected" } else { "" })]
    OAuth {
        error: String,
        description: String,
        reconnect_needed: bool,
    },
    #[error("could not reach servicenow: {0}")]
    Transport(String),
    #[error("servicenow sent a reply that cannot be read: {0}")]
    Decode(String),
}

fn rate_limit_text(limit: &Option<String>, reset: &Option<i64>, retry: &Option<u64>) -> String {
    let mut text = String::new();
    if let Some(limit) = limit {
        text.push_str(&format!(" (limit {limit})"));
    }
    if let Some(reset) = reset {
        text.push_str(&format!("; resets at unix time {reset}"));
    }
    if let Some(retry) = retry {
        text.push_str(&format!("; retry after {retry}s"));
    }
    text
}

fn detail_text(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(" ({detail})")
    }
}

impl ServiceNowError {
    /// Whether the same call may succeed later. A rate limit should be waited out until
    /// `reset_at_secs`, not retried with a short backoff.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::RateLimited { .. } | Self::Server { .. } | Self::Transport(_)
        )
    }

    /// A stable code for audit records and metrics.
    pub fn reason_code(&self) -> &'static str {
        match self {
            Self::NotFound => "servicenow_not_found",
            Self::Unauthorized { .. } => "servicenow_unauthorized",
            Self::Forbidden { .. } => "servicenow_forbidden",
            Self::RateLimited { .. } => "servicenow_rate_limited",
            Self::BadRequest { .. } => "servicenow_bad_request",
            Self::Server { .. } => "servicenow_server_error",
            Self::OAuth {
                reconnect_needed: true,
                ..
            } => "servicenow_reconnect_needed",
            Self::OAuth { .. } => "servicenow_oauth_error",
            Self::Transport(_) => "servicenow_transport",
            Self::Decode(_) => "servicenow_decode",
        }
    }
}

impl ServiceNowClient {
    /// A client for the instance at `instance_url` (such as `https://acme.service-now.com`).
    pub fn new(instance_url: Url, auth: ServiceNowAuth, http: reqwest::Client) -> Self {
        Self::with_clock(instance_url, auth, http, Arc::new(SystemClock))
    }

    /// Like [`ServiceNowClient::new`], judging token expiry by `clock`.
    pub fn with_clock(
        instance_url: Url,
        auth: ServiceNowAuth,
        http: reqwest::Client,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let tokens = TokenCache::new(instance_url.clone(), auth, http.clone(), clock);
        Self {
            instance: instance_url,
            http,
            tokens,
        }
    }

    /// Receives the refresh token each time the server rotates the one given in
    /// [`ServiceNowAuth::RefreshToken`], so the caller can store it in place of the old one.
    pub fn rotated_refresh_token(&self) -> watch::Receiver<Option<secrecy::SecretString>> {
        self.tokens.rotated_refresh_token()
    }

    /// Reads an incident by `sys_id` or by number.
    pub async fn get_incident(&self, r: &IncidentRef) -> Result<Incident, ServiceNowError> {
        match r {
            IncidentRef::SysId(sys_id) => {
                let url = self.incident_url(sys_id)?;
                let reply = self
                    .call(|| self.http.get(url.clone()).query(&RAW_VALUES))
                    .await?;
                let incident = record::single_incident(reply)?;
                same_record(&incident.sys_id, sys_id, "sys_id")?;
                Ok(incident)
            }
            IncidentRef::Number(number) => self.incident_by_number(number).await,
        }
    }

    /// Writes exactly `fields` to the incident and returns the record as updated.
    pub async fn patch_incident(
        &self,
        sys_id: &str,
        fields: &Map<String, Value>,
    ) -> Result<Incident, ServiceNowError> {
        let url = self.incident_url(sys_id)?;
        let reply = self
            .call(|| self.http.patch(url.clone()).query(&RAW_VALUES).json(fields))
            .await?;
        let incident = record::single_incident(reply)?;
        same_record(&incident.sys_id, sys_id, "sys_id")?;
        Ok(incident)
    }

    /// Whether the journal field `element` (such as `work_notes`) of the record holds an entry
    /// containing `marker`. Journal fields read back empty through the Table API, so this asks
    /// the journal table. The marker may not contain `^` or a line break.
    pub async fn journal_contains(
        &self,
        sys_id: &str,
        element: &str,
        marker: &str,
    ) -> Result<bool, ServiceNowError> {
        check_sys_id(sys_id)?;
        check_element(element)?;
        check_marker(marker)?;
        let url = self.endpoint(&["api", "now", "table", "sys_journal_field"])?;
        let query = format!("element_id={sys_id}^element={element}^valueLIKE{marker}");
        let params = [
            ("sysparm_query", query.as_str()),
            ("sysparm_fields", "sys_id,value"),
            ("sysparm_limit", "1"),
        ];
        let reply = self
            .call(|| self.http.get(url.clone()).query(&params))
            .await?;
        let entries = record::record_list(reply)?;
        Ok(entries
            .iter()
            .any(|e| e.get("value").is_some_and(|v| v.contains(marker))))
    }

    /// A link a person can open: `{instance}/nav_to.do?uri={table}.do?sys_id={sys_id}`, with
    /// the inner URI encoded.
    pub fn record_url(&self, table: &str, sys_id: &str) -> String {
        let uri: String =
            form_urlencoded::byte_serialize(format!("{table}.do?sys_id={sys_id}").as_bytes())
                .collect();
        format!(
            "{}/nav_to.do?uri={uri}",
            self.instance.as_str().trim_end_matches('/')
        )
    }

    async fn incident_by_number(&self, number: &str) -> Result<Incident, ServiceNowError> {
        if IncidentRef::number(number).is_none() {
            return Err(refused(
                "incident number must be letters then digits",
                number,
            ));
        }
        let url = self.endpoint(&["api", "now", "table", "incident"])?;
        let query = format!("number={number}");
        let mut params = vec![("sysparm_query", query.as_str()), ("sysparm_limit", "1")];
        params.extend(RAW_VALUES);
        let reply = self
            .call(|| self.http.get(url.clone()).query(&params))
            .await?;
        let fields = record::record_list(reply)?
            .into_iter()
            .next()
            .ok_or(ServiceNowError::NotFound)?;
        let incident = record::incident_from_fields(fields)?;
        same_record(&incident.number, number, "number")?;
        Ok(incident)
    }

    /// Sends a Table API request built by `build`, once more with a fresh token after a 401,
    /// and returns the JSON of a successful reply.
    async fn call<F>(&self, build: F) -> Result<Value, ServiceNowError>
    where
        F: Fn() -> reqwest::RequestBuilder,
    {
        let token = self.tokens.token().await?;
        let mut reply = self.send(&build, &token.secret).await?;
        if reply.status == StatusCode::UNAUTHORIZED {
            tracing::debug!("servicenow rejected the access token; retrying once with a new one");
            let fresh = self.tokens.replace(&token).await?;
            reply = self.send(&build, &fresh.secret).await?;
        }
        if !reply.status.is_success() {
            return Err(wire::table_error(&reply));
        }
        reply.json()
    }

    async fn send<F>(
        &self,
        build: &F,
        token: &secrecy::SecretString,
    ) -> Result<RawReply, ServiceNowError>
    where
        F: Fn() -> reqwest::RequestBuilder,
    {
        let request = build()
            .header(AUTHORIZATION, wire::bearer(token)?)
            .header(ACCEPT, "application/json");
        let reply = wire::send(request).await?;
        tracing::debug!(
            status = reply.status.as_u16(),
            "servicenow table api answered"
        );
        Ok(reply)
    }

    fn incident_url(&self, sys_id: &str) -> Result<Url, ServiceNowError> {
        check_sys_id(sys_id)?;
        self.endpoint(&["api", "now", "table", "incident", sys_id])
    }

    fn endpoint(&self, segments: &[&str]) -> Result<Url, ServiceNowError> {
        endpoint(&self.instance, segments)
    }
}

/// Appends path segments to the instance URL.
fn endpoint(instance: &Url, segments: &[&str]) -> Result<Url, ServiceNowError> {
    let mut url = instance.clone();
    url.set_query(None);
    url.set_fragment(None);
    url.path_segments_mut()
        .map_err(|()| refused("the instance url cannot take a path", instance.as_str()))?
        .pop_if_empty()
        .extend(segments);
    Ok(url)
}

/// An input refused before anything was sent.
fn refused(message: &str, input: &str) -> ServiceNowError {
    ServiceNowError::BadRequest {
        message: message.to_owned(),
        detail: format!("refused before sending: {}", wire::clip(input)),
    }
}

fn check_sys_id(sys_id: &str) -> Result<(), ServiceNowError> {
    match IncidentRef::sys_id(sys_id) {
        Some(_) => Ok(()),
        None => Err(refused("sys_id must be 32 lowercase hex digits", sys_id)),
    }
}

fn check_element(element: &str) -> Result<(), ServiceNowError> {
    let ok = !element.is_empty()
        && element.len() <= MAX_ELEMENT_CHARS
        && element
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(refused("journal element must be a field name", element))
    }
}

fn check_marker(marker: &str) -> Result<(), ServiceNowError> {
    let ok = !marker.trim().is_empty()
        && marker.chars().count() <= MAX_MARKER_CHARS
        && !marker.contains(['^', '\n', '\r']);
    if ok {
        Ok(())
    } else {
        Err(refused(
            "journal marker must be 1-200 characters without ^ or line breaks",
            marker,
        ))
    }
}

/// The reply must be about the record that was asked for.
fn same_record(got: &str, wanted: &str, what: &str) -> Result<(), ServiceNowError> {
    if got == wanted {
        Ok(())
    } else {
        Err(ServiceNowError::Decode(format!(
            "asked for the record with {what} {wanted} but got {}",
            wire::clip(got)
        )))
    }
}

#[cfg(test)]
mod tests;
