//! A ServiceNow instance held in memory: OAuth at `/oauth_token.do` and the Table API for
//! `incident` (read, query, PATCH) and `sys_journal_field` (read, query), with ServiceNow's
//! envelopes, status codes and string-only values.

mod oauth;
mod query;
mod record;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde_json::{Map, Value, json};

use self::query::{EncodedQuery, QueryError, Row};
use self::record::{JournalLine, Render};
use super::support::{self, BODY_LIMIT, BodyError};
use super::{Counters, JournalEntry, RecordedPatch};

/// Who may get a token, and how long tokens live.
pub(super) struct Credentials {
    pub(super) client_id: String,
    pub(super) client_secret: String,
    pub(super) username: String,
    pub(super) password: String,
    pub(super) token_lifetime: Duration,
}

/// The instance: its URL (for reference links), credentials and records.
pub(super) struct ServiceNow {
    base_url: String,
    credentials: Credentials,
    counters: Arc<Counters>,
    state: Mutex<InstanceState>,
}

#[derive(Default)]
struct InstanceState {
    /// In the order they were stored (a list without `ORDERBY` answers in it).
    incidents: Vec<Row>,
    /// Where each incident is in `incidents`, by `sys_id`.
    incident_at: HashMap<String, usize>,
    journal: Vec<Row>,
    patches: Vec<RecordedPatch>,
    tokens: oauth::Tokens,
    issued_numbers: u64,
}

/// The tables the stand-in serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Table {
    Incident,
    Journal,
}

/// Why a Table API request failed; each renders ServiceNow's error envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum TableError {
    #[error("the request carries no valid credentials")]
    Unauthenticated,
    #[error("no record has that sys_id")]
    NoRecord,
    #[error("table {0} is not served")]
    InvalidTable(String),
    #[error("table {0} cannot be written through the Table API")]
    ReadOnly(String),
    #[error("the request names no resource")]
    NoResource,
    #[error("the method is not supported for this resource")]
    MethodNotAllowed,
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error("sysparm_{0} must be a non-negative integer")]
    Parameter(&'static str),
    #[error("the {0} header is required")]
    MissingHeader(&'static str),
    #[error("the stand-in answers only application/json")]
    NotAcceptable,
    #[error("the request body must be application/json")]
    UnsupportedMediaType,
    #[error("the payload is not valid JSON")]
    InvalidJson,
    #[error("the payload must be a JSON object")]
    NotAnObject,
    #[error(transparent)]
    Value(#[from] record::InvalidValue),
    #[error(transparent)]
    Body(#[from] BodyError),
}

impl TableError {
    fn status(&self) -> StatusCode {
        match self {
            Self::Unauthenticated => StatusCode::UNAUTHORIZED,
            Self::NoRecord => StatusCode::NOT_FOUND,
            Self::ReadOnly(_) => StatusCode::FORBIDDEN,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::NotAcceptable => StatusCode::NOT_ACCEPTABLE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Body(BodyError::TooLarge) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::InvalidTable(_)
            | Self::NoResource
            | Self::Query(_)
            | Self::Parameter(_)
            | Self::MissingHeader(_)
            | Self::InvalidJson
            | Self::NotAnObject
            | Self::Value(_)
            | Self::Body(BodyError::Unreadable) => StatusCode::BAD_REQUEST,
        }
    }

    /// ServiceNow's `error.message` and `error.detail` for this failure.
    fn envelope(&self) -> (String, Value) {
        let detail = Value::String(self.to_string());
        match self {
            Self::Unauthenticated => (
                "User Not Authenticated".into(),
                "Required to provide Auth information".into(),
            ),
            Self::NoRecord => (
                "No Record found".into(),
                "Record doesn't exist or ACL restricts the record retrieval".into(),
            ),
            Self::InvalidTable(table) => (format!("Invalid table {table}"), Value::Null),
            Self::ReadOnly(_) => (
                "Operation Failed".into(),
                "ACL Exception Update Failed due to security constraints".into(),
            ),
            Self::NoResource => (
                "Requested URI does not represent any resource".into(),
                Value::Null,
            ),
            Self::InvalidJson | Self::NotAnObject | Self::Body(_) => {
                ("Exception while reading request".into(), detail)
            }
            Self::MethodNotAllowed => ("Method not Supported".into(), detail),
            Self::Query(_) => ("Invalid query".into(), detail),
            Self::Value(_) => ("Invalid value".into(), detail),
            Self::Parameter(_) | Self::MissingHeader(_) => ("Invalid request".into(), detail),
            Self::NotAcceptable => ("Not Acceptable".into(), detail),
            Self::UnsupportedMediaType => ("Unsupported Media Type".into(), detail),
        }
    }
}

impl IntoResponse for TableError {
    fn into_response(self) -> Response {
        let (message, detail) = self.envelope();
        let body = json!({"error": {"message": message, "detail": detail}, "status": "failure"});
        (self.status(), Json(body)).into_response()
    }
}

/// The instance's routes, including the `/_standin/` control surface.
pub(super) fn router(sn: Arc<ServiceNow>) -> Router {
    let mut router = Router::new().route("/oauth_token.do", post(oauth::token));
    for prefix in ["/api/now", "/api/now/v1", "/api/now/v2"] {
        router = router
            .route(&format!("{prefix}/table/{{table}}"), get(list))
            .route(
                &format!("{prefix}/table/{{table}}/{{sys_id}}"),
                get(read).patch(patch),
            );
    }
    router
        .route("/_standin/state", get(control_state))
        .route("/_standin/incidents", post(control_seed))
        .method_not_allowed_fallback(|| async { TableError::MethodNotAllowed })
        .fallback(|| async { TableError::NoResource })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(sn)
}

/// Query parameters of a Table API call.
#[derive(Debug, Default)]
struct Params {
    render: Render,
    query: EncodedQuery,
    limit: usize,
    offset: usize,
}

// === impl Params ===

impl Params {
    fn parse(raw: Option<&str>) -> Result<Self, TableError> {
        let mut params = Self {
            limit: 10_000,
            ..Self::default()
        };
        for (name, value) in support::query_pairs(raw) {
            params.set(&name, &value)?;
        }
        Ok(params)
    }

    fn set(&mut self, name: &str, value: &str) -> Result<(), TableError> {
        match name {
            "sysparm_exclude_reference_link" => {
                self.render.exclude_reference_link = value.eq_ignore_ascii_case("true");
            }
            "sysparm_fields" => {
                let fields = value.split(',').map(|field| field.trim().to_owned());
                self.render.fields = Some(fields.filter(|field| !field.is_empty()).collect());
            }
            "sysparm_query" => self.query = EncodedQuery::parse(value)?,
            "sysparm_limit" => self.limit = count(value, "limit")?,
            "sysparm_offset" => self.offset = count(value, "offset")?,
            _ => {}
        }
        Ok(())
    }
}

fn count(value: &str, name: &'static str) -> Result<usize, TableError> {
    value.parse().map_err(|_| TableError::Parameter(name))
}

fn table(name: &str) -> Result<Table, TableError> {
    match name {
        "incident" => Ok(Table::Incident),
        "sys_journal_field" => Ok(Table::Journal),
        other => Err(TableError::InvalidTable(other.to_owned())),
    }
}

/// `Accept` must allow JSON when present; `required` makes it mandatory (writes).
fn check_accept(headers: &HeaderMap, required: bool) -> Result<(), TableError> {
    let Some(accept) = support::header_str(headers, header::ACCEPT) else {
        return if required {
            Err(TableError::MissingHeader("Accept"))
        } else {
            Ok(())
        };
    };
    let acceptable = accept.split(',').any(|range| {
        let range = range.split(';').next().unwrap_or_default().trim();
        ["application/json", "application/*", "*/*"]
            .iter()
            .any(|ok| range.eq_ignore_ascii_case(ok))
    });
    acceptable.then_some(()).ok_or(TableError::NotAcceptable)
}

fn check_content_type(headers: &HeaderMap) -> Result<(), TableError> {
    match support::media_type(headers).as_deref() {
        None => Err(TableError::MissingHeader("Content-Type")),
        Some("application/json") => Ok(()),
        Some(_) => Err(TableError::UnsupportedMediaType),
    }
}

fn json_object(body: &[u8]) -> Result<Map<String, Value>, TableError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(TableError::NotAnObject),
        Err(_) => Err(TableError::InvalidJson),
    }
}

/// `GET /api/now/table/{table}/{sys_id}`.
async fn read(
    State(sn): State<Arc<ServiceNow>>,
    Path((table_name, sys_id)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Json<Value>, TableError> {
    sn.authenticate(&headers)?;
    check_accept(&headers, false)?;
    let params = Params::parse(raw.as_deref())?;
    let table = table(&table_name)?;
    sn.counters.table_gets.fetch_add(1, Ordering::Relaxed);
    let row = sn.read(table, &sys_id, &params.render)?;
    Ok(Json(json!({ "result": row })))
}

/// `GET /api/now/table/{table}?sysparm_query=…`, with `X-Total-Count`.
async fn list(
    State(sn): State<Arc<ServiceNow>>,
    Path(table_name): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, TableError> {
    sn.authenticate(&headers)?;
    check_accept(&headers, false)?;
    let params = Params::parse(raw.as_deref())?;
    let table = table(&table_name)?;
    sn.counters.table_gets.fetch_add(1, Ordering::Relaxed);
    let (total, rows) = sn.list(table, &params);
    let mut response = Json(json!({ "result": rows })).into_response();
    response
        .headers_mut()
        .insert("x-total-count", HeaderValue::from(total));
    Ok(response)
}

/// `PATCH /api/now/table/incident/{sys_id}`.
async fn patch(
    State(sn): State<Arc<ServiceNow>>,
    Path((table_name, sys_id)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, TableError> {
    // Who is asking, and whether the request is well-formed, before touching anything.
    let user = sn.authenticate(&headers)?;
    check_accept(&headers, true)?;
    let body = support::read_body(body)?;
    check_content_type(&headers)?;
    let changes = json_object(&body)?;
    let params = Params::parse(raw.as_deref())?;

    // Only incidents are writable.
    if table(&table_name)? == Table::Journal {
        return Err(TableError::ReadOnly(table_name));
    }

    // Record what arrived, then apply it.
    sn.counters.patches.fetch_add(1, Ordering::Relaxed);
    let row = sn.patch(&sys_id, changes, &user, &params.render)?;
    Ok(Json(json!({ "result": row })))
}

/// `GET /_standin/state`: everything the instance holds and has received.
async fn control_state(State(sn): State<Arc<ServiceNow>>) -> Json<Value> {
    Json(sn.state_json())
}

/// `POST /_standin/incidents`: seeds an incident from a JSON object.
async fn control_seed(
    State(sn): State<Arc<ServiceNow>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), TableError> {
    let body = support::read_body(body)?;
    let record = json_object(&body)?;
    let sys_id = sn.seed(record);
    let number = sn.incident_field(&sys_id, "number").unwrap_or_default();
    Ok((
        StatusCode::CREATED,
        Json(json!({"sys_id": sys_id, "number": number})),
    ))
}

// === impl ServiceNow ===

impl ServiceNow {
    /// An instance at `base_url` with no records.
    pub(super) fn new(base_url: String, credentials: Credentials, counters: Arc<Counters>) -> Self {
        Self {
            base_url,
            credentials,
            counters,
            state: Mutex::new(InstanceState::default()),
        }
    }

    /// The user a request acts as: an unexpired bearer token, or Basic credentials of the
    /// integration user.
    fn authenticate(&self, headers: &HeaderMap) -> Result<String, TableError> {
        if let Some(token) = support::bearer_token(headers) {
            let state = support::lock(&self.state);
            return state
                .tokens
                .user(token)
                .map(str::to_owned)
                .ok_or(TableError::Unauthenticated);
        }
        self.basic_user(headers).ok_or(TableError::Unauthenticated)
    }

    fn basic_user(&self, headers: &HeaderMap) -> Option<String> {
        let value = support::header_str(headers, header::AUTHORIZATION)?;
        let (scheme, encoded) = value.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()?;
        let (user, password) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
        self.check_user(user, password).then(|| user.to_owned())
    }

    /// Adds an incident and returns its sys_id; see [`super::Standins::seed_incident`].
    pub(super) fn seed(&self, record: Map<String, Value>) -> String {
        let now = support::servicenow_now();
        let mut state = support::lock(&self.state);
        let sys_id = match record.get("sys_id") {
            Some(Value::String(id)) if !id.is_empty() => id.clone(),
            _ => support::random_hex(16),
        };
        let number = match record.get("number") {
            Some(Value::String(number)) if !number.is_empty() => number.clone(),
            _ => {
                state.issued_numbers += 1;
                format!("INC{:07}", 10_000 + state.issued_numbers)
            }
        };
        let (row, lines) = record::seed(&record, sys_id.clone(), number, &now);
        state.store_incident(sys_id.clone(), row);
        let user = "admin";
        for line in lines {
            state.journal.push(journal_row(&sys_id, line, user, &now));
        }
        sys_id
    }

    /// One stored field of an incident.
    fn incident_field(&self, sys_id: &str, name: &str) -> Option<String> {
        let state = support::lock(&self.state);
        state.incident(sys_id)?.get(name).cloned()
    }

    /// An incident with raw values, as `sysparm_exclude_reference_link=true` returns it.
    pub(super) fn incident(&self, sys_id: &str) -> Option<Value> {
        let render = raw_render();
        self.read(Table::Incident, sys_id, &render).ok()
    }

    /// The journal entries written to an incident, oldest first.
    pub(super) fn journal(&self, sys_id: &str) -> Vec<JournalEntry> {
        let state = support::lock(&self.state);
        state
            .journal
            .iter()
            .filter(|row| field(row, "element_id") == sys_id)
            .map(|row| JournalEntry {
                element: field(row, "element").to_owned(),
                value: field(row, "value").to_owned(),
                sys_created_on: field(row, "sys_created_on").to_owned(),
            })
            .collect()
    }

    /// Every authenticated, well-formed PATCH received, in order.
    pub(super) fn patches(&self) -> Vec<RecordedPatch> {
        support::lock(&self.state).patches.clone()
    }

    fn read(&self, table: Table, sys_id: &str, render: &Render) -> Result<Value, TableError> {
        let state = support::lock(&self.state);
        let row = match table {
            Table::Incident => state.incident(sys_id),
            Table::Journal => state.journal.iter().find(|row| has_id(row, sys_id)),
        };
        let row = row.ok_or(TableError::NoRecord)?;
        Ok(render.row(row, table == Table::Incident, &self.base_url))
    }

    fn list(&self, table: Table, params: &Params) -> (usize, Vec<Value>) {
        let state = support::lock(&self.state);
        let mut rows: Vec<&Row> = state
            .rows(table)
            .iter()
            .filter(|row| params.query.matches(row))
            .collect();
        params.query.sort(&mut rows);
        let total = rows.len();
        let page = rows.into_iter().skip(params.offset).take(params.limit);
        let rendered = page
            .map(|row| {
                params
                    .render
                    .row(row, table == Table::Incident, &self.base_url)
            })
            .collect();
        (total, rendered)
    }

    fn patch(
        &self,
        sys_id: &str,
        changes: Map<String, Value>,
        user: &str,
        render: &Render,
    ) -> Result<Value, TableError> {
        let now = support::servicenow_now();
        let mut state = support::lock(&self.state);
        state.patches.push(RecordedPatch {
            sys_id: sys_id.to_owned(),
            body: Value::Object(changes.clone()),
        });
        let at = state.incident_at.get(sys_id).copied();
        let row = at
            .and_then(|at| state.incidents.get_mut(at))
            .ok_or(TableError::NoRecord)?;
        let applied = record::apply(row, &changes, user, &now)?;
        let rendered = render.row(row, true, &self.base_url);
        for line in applied.journal {
            state.journal.push(journal_row(sys_id, line, user, &now));
        }
        Ok(rendered)
    }

    fn state_json(&self) -> Value {
        let render = raw_render();
        let state = support::lock(&self.state);
        let incidents: Vec<Value> = (state.incidents)
            .iter()
            .map(|row| render.row(row, true, &self.base_url))
            .collect();
        json!({
            "incidents": incidents,
            "journal": state.journal,
            "patches": state.patches,
            "counts": self.counters.snapshot(),
        })
    }
}

impl InstanceState {
    /// The incident `sys_id`, found by its index entry.
    fn incident(&self, sys_id: &str) -> Option<&Row> {
        self.incident_at
            .get(sys_id)
            .and_then(|&at| self.incidents.get(at))
    }

    /// Stores `row` as incident `sys_id`, last in order, in place of one stored before.
    fn store_incident(&mut self, sys_id: String, row: Row) {
        if let Some(at) = self.incident_at.remove(&sys_id) {
            self.incidents.remove(at);
            for later in self.incident_at.values_mut() {
                if *later > at {
                    *later -= 1;
                }
            }
        }
        self.incident_at.insert(sys_id, self.incidents.len());
        self.incidents.push(row);
    }

    fn rows(&self, table: Table) -> &[Row] {
        match table {
            Table::Incident => &self.incidents,
            Table::Journal => &self.journal,
        }
    }
}

fn has_id(row: &Row, sys_id: &str) -> bool {
    field(row, "sys_id") == sys_id
}

fn field<'a>(row: &'a Row, name: &str) -> &'a str {
    row.get(name).map(String::as_str).unwrap_or_default()
}

fn raw_render() -> Render {
    Render {
        exclude_reference_link: true,
        fields: None,
    }
}

/// A `sys_journal_field` row for one journal line.
fn journal_row(element_id: &str, line: JournalLine, user: &str, now: &str) -> Row {
    [
        ("sys_id", support::random_hex(16)),
        ("element_id", element_id.to_owned()),
        ("element", line.element),
        ("name", "incident".to_owned()),
        ("value", line.value),
        ("sys_created_on", now.to_owned()),
        ("sys_created_by", user.to_owned()),
        ("sys_tags", String::new()),
    ]
    .into_iter()
    .map(|(field, value)| (field.to_owned(), value))
    .collect()
}
