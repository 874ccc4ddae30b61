//! A ServiceNow instance on loopback: the OAuth password grant, one incident behind the Table API
//! and that incident's work-note journal. It keeps state the way an instance does: a `PATCH`
//! changes what the next `GET` returns, journal fields read back empty and their entries appear
//! in `sys_journal_field`, and `sys_mod_count` goes up (and `sys_updated_on` moves to now) with
//! every write. The incident list answers the catch-up pass's encoded query
//! (`sys_updated_on>=…^ORDERBYsys_updated_on^ORDERBYsys_id`) over that incident and any added
//! with [`ServiceNowMock::add_incident`], paged by `sysparm_limit` and `sysparm_offset`, with
//! `X-Total-Count`.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{Map, Value, json};
use wiremock::matchers::{header, method, path, path_regex};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

/// The OAuth client id the tenant is configured with.
pub const CLIENT_ID: &str = "steward-e2e-client";
/// The OAuth client secret the tenant is configured with.
pub const CLIENT_SECRET: &str = "e2e-oauth-client-secret";
/// The integration user of the password grant.
pub const USERNAME: &str = "steward.integration";
/// The integration user's password.
pub const PASSWORD: &str = "e2e-integration-password";
/// The refresh token the password grant hands out.
pub const REFRESH_TOKEN: &str = "e2e-servicenow-refresh-token";

/// The first access token the token endpoint hands out.
pub const ACCESS_TOKEN: &str = "e2e-servicenow-access-token";

/// The access token of a generation (the first is [`ACCESS_TOKEN`]): the Table API accepts only
/// the current generation's.
fn access_token(generation: u32) -> String {
    if generation <= 1 {
        ACCESS_TOKEN.to_owned()
    } else {
        format!("{ACCESS_TOKEN}-{generation}")
    }
}

/// Fields ServiceNow treats as journals: writing appends an entry, reading returns `""`.
const JOURNAL_FIELDS: [&str; 2] = ["work_notes", "comments"];

/// One entry of the journal table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalEntry {
    /// The journal field written (`work_notes` or `comments`).
    pub element: String,
    /// The text of the entry.
    pub value: String,
}

/// A way the instance misbehaves on writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteFault {
    /// The next `PATCH` is applied, then answered `502`, as by a gateway that gave up waiting:
    /// the caller cannot tell from the answer whether the write happened.
    AppliedThenBadGateway,
    /// Every `PATCH` is applied at once, but its answer is held back this long.
    SlowAnswer(Duration),
}

/// A way the incident list misbehaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListFault {
    /// The next list request is answered `429` with this `Retry-After` (seconds) and the
    /// documented rate-limit body; the one after is answered normally.
    RateLimitedOnce { retry_after_secs: u64 },
    /// Every list request is answered `200` with exactly this body, until cleared.
    Body(Vec<u8>),
}

#[derive(Debug)]
struct Instance {
    record: Map<String, Value>,
    /// Further incidents, reachable by sys_id and listed, never written.
    others: Vec<Map<String, Value>>,
    journal: Vec<JournalEntry>,
    fault: Option<WriteFault>,
    list_fault: Option<ListFault>,
    token_generation: u32,
}

type Shared = Arc<Mutex<Instance>>;

fn lock(state: &Shared) -> MutexGuard<'_, Instance> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The mock instance. Every request it received can be read back for assertions.
pub struct ServiceNowMock {
    server: MockServer,
    state: Shared,
}

impl ServiceNowMock {
    /// Starts an instance holding `record`, which must carry `sys_id` and `number`.
    pub async fn start(record: Map<String, Value>) -> Self {
        let server = MockServer::start().await;
        let state = Arc::new(Mutex::new(Instance {
            record,
            others: Vec::new(),
            journal: Vec::new(),
            fault: None,
            list_fault: None,
            token_generation: 1,
        }));
        Mock::given(method("POST"))
            .and(path("/oauth_token.do"))
            .and(header("content-type", "application/x-www-form-urlencoded"))
            .respond_with(TokenEndpoint(Arc::clone(&state)))
            .mount(&server)
            .await;
        Mock::given(path_regex("^/api/now/table/"))
            .respond_with(TableApi(Arc::clone(&state)))
            .mount(&server)
            .await;
        Self { server, state }
    }

    /// The instance's base URL.
    pub fn uri(&self) -> String {
        self.server.uri()
    }

    /// The incident as it is now.
    pub fn record(&self) -> Map<String, Value> {
        lock(&self.state).record.clone()
    }

    /// A person edits the incident in ServiceNow: `field` now holds `value`.
    pub fn edit(&self, field: &str, value: &str) {
        let mut instance = lock(&self.state);
        instance.record.insert(field.into(), json!(value));
        instance.bump_version();
    }

    /// Adds an incident (reachable by `GET` and listed) last updated at `updated_on`
    /// (`YYYY-MM-DD HH:MM:SS`, UTC): a copy of the main incident with its own ids.
    pub fn add_incident(&self, sys_id: &str, number: &str, updated_on: &str) {
        let mut instance = lock(&self.state);
        let mut record = instance.record.clone();
        record.insert("sys_id".into(), json!(sys_id));
        record.insert("number".into(), json!(number));
        record.insert("sys_updated_on".into(), json!(updated_on));
        record.insert("sys_mod_count".into(), json!("1"));
        instance.others.retain(|r| text(r, "sys_id") != sys_id);
        instance.others.push(record);
    }

    /// From now on, incident lists misbehave as `fault` says; None answers them normally.
    pub fn fail_list(&self, fault: Option<ListFault>) {
        lock(&self.state).list_fault = fault;
    }

    /// The query parameters of every incident list request received, in order.
    pub async fn list_requests(&self) -> Vec<Vec<(String, String)>> {
        self.requests()
            .await
            .iter()
            .filter(|r| {
                r.method.as_str() == "GET"
                    && r.url.path() == "/api/now/table/incident"
                    && query_value(r, "sysparm_query")
                        .is_some_and(|q| q.starts_with("sys_updated_on>="))
            })
            .map(|r| {
                r.url
                    .query_pairs()
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect()
            })
            .collect()
    }

    /// The access token handed out so far stops working, as one that expired or was revoked.
    pub fn expire_token(&self) {
        lock(&self.state).token_generation += 1;
    }

    /// How many single incidents were read (`GET /api/now/table/incident/{sys_id}`).
    pub async fn record_reads(&self) -> usize {
        self.requests()
            .await
            .iter()
            .filter(|r| {
                r.method.as_str() == "GET" && r.url.path().starts_with("/api/now/table/incident/")
            })
            .count()
    }

    /// How many times the token endpoint was asked for a token.
    pub async fn token_requests(&self) -> usize {
        self.requests()
            .await
            .iter()
            .filter(|r| r.url.path() == "/oauth_token.do")
            .count()
    }

    /// From now on, writes misbehave as `fault` says.
    pub fn inject(&self, fault: WriteFault) {
        lock(&self.state).fault = Some(fault);
    }

    /// Every journal entry written so far.
    pub fn journal(&self) -> Vec<JournalEntry> {
        lock(&self.state).journal.clone()
    }

    /// Every request received, in order.
    pub async fn requests(&self) -> Vec<Request> {
        self.server.received_requests().await.unwrap_or_default()
    }

    /// The JSON bodies of every `PATCH` received, in order.
    pub async fn patches(&self) -> Vec<Map<String, Value>> {
        self.requests()
            .await
            .iter()
            .filter(|r| r.method.as_str() == "PATCH")
            .map(|r| match r.body_json::<Value>() {
                Ok(Value::Object(body)) => body,
                other => panic!("a PATCH body is not a JSON object: {other:?}"),
            })
            .collect()
    }
}

fn text(record: &Map<String, Value>, name: &str) -> String {
    record
        .get(name)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// The documented error envelope.
fn failure(status: u16, message: &str, detail: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(json!({
        "error": {"message": message, "detail": detail},
        "status": "failure",
    }))
}

fn not_found() -> ResponseTemplate {
    failure(
        404,
        "No Record found",
        "Record doesn't exist or ACL restricts the record retrieval",
    )
}

/// `oauth_token.do`: the password grant for the integration user, and the refresh grant for
/// the refresh token it hands out. Each grant issues the current generation's access token.
struct TokenEndpoint(Shared);

impl Respond for TokenEndpoint {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let form: Vec<(String, String)> = form_urlencoded::parse(&request.body)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let field = |name: &str| {
            form.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let client =
            field("client_id") == Some(CLIENT_ID) && field("client_secret") == Some(CLIENT_SECRET);
        let granted = client
            && match field("grant_type") {
                Some("password") => {
                    field("username") == Some(USERNAME) && field("password") == Some(PASSWORD)
                }
                Some("refresh_token") => field("refresh_token") == Some(REFRESH_TOKEN),
                _ => false,
            };
        if !granted {
            return ResponseTemplate::new(401).set_body_json(json!({
                "error": "invalid_grant",
                "error_description": "access_denied",
            }));
        }
        let generation = lock(&self.0).token_generation;
        ResponseTemplate::new(200).set_body_json(json!({
            "access_token": access_token(generation),
            "refresh_token": REFRESH_TOKEN,
            "scope": "useraccount",
            "token_type": "Bearer",
            "expires_in": 1799,
        }))
    }
}

/// The Table API: the incident by sys_id or number, its `PATCH`, and the journal table.
struct TableApi(Shared);

impl Respond for TableApi {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let mut instance = lock(&self.0);
        let bearer = format!("Bearer {}", access_token(instance.token_generation));
        let authorized = request
            .headers
            .get("authorization")
            .is_some_and(|v| v.as_bytes() == bearer.as_bytes());
        if !authorized {
            return failure(
                401,
                "User Not Authenticated",
                "Required to provide Auth information",
            );
        }
        let segments: Vec<&str> = request
            .url
            .path_segments()
            .map(Iterator::collect)
            .unwrap_or_default();
        match (request.method.as_str(), segments.as_slice()) {
            ("GET", ["api", "now", "table", "incident", id]) => instance.get(id),
            ("PATCH", ["api", "now", "table", "incident", id]) => instance.patch(id, &request.body),
            ("GET", ["api", "now", "table", "incident"])
                if query_value(request, "sysparm_query")
                    .is_some_and(|q| q.starts_with("sys_updated_on>=")) =>
            {
                instance.list(request)
            }
            ("GET", ["api", "now", "table", "incident"]) => instance.by_number(request),
            ("GET", ["api", "now", "table", "sys_journal_field"]) => {
                instance.journal_query(request)
            }
            _ => failure(400, "Invalid table or method", request.url.path()),
        }
    }
}

impl Instance {
    fn is_ours(&self, sys_id: &str) -> bool {
        text(&self.record, "sys_id") == sys_id
    }

    fn get(&self, sys_id: &str) -> ResponseTemplate {
        let found = std::iter::once(&self.record)
            .chain(&self.others)
            .find(|r| text(r, "sys_id") == sys_id);
        match found {
            Some(record) => ResponseTemplate::new(200).set_body_json(json!({ "result": record })),
            None => not_found(),
        }
    }

    /// The incident list for `sys_updated_on>=<time>^ORDERBYsys_updated_on^ORDERBYsys_id`, as
    /// the Table API answers it: `{"result": […]}` of the page, `X-Total-Count` of all matches.
    fn list(&mut self, request: &Request) -> ResponseTemplate {
        match self.list_fault.clone() {
            Some(ListFault::RateLimitedOnce { retry_after_secs }) => {
                self.list_fault = None;
                return failure(
                    429,
                    "Rate limit exceeded",
                    "Rate limit of 10 requests per hour for Table API exceeded",
                )
                .insert_header("Retry-After", retry_after_secs.to_string().as_str())
                .insert_header("X-RateLimit-Limit", "10");
            }
            Some(ListFault::Body(body)) => {
                return ResponseTemplate::new(200).set_body_raw(body, "application/json");
            }
            None => {}
        }
        let query = query_value(request, "sysparm_query").unwrap_or_default();
        let mut since = None;
        for term in query.split('^') {
            if let Some(v) = term.strip_prefix("sys_updated_on>=") {
                since = steward_adapters::servicenow::parse_time(v);
                if since.is_none() {
                    return failure(400, "Invalid date", term);
                }
            } else if term != "ORDERBYsys_updated_on" && term != "ORDERBYsys_id" {
                return failure(400, "Invalid query", term);
            }
        }
        let Some(since) = since else {
            return failure(400, "Invalid query", &query);
        };
        let number = |name: &str, default: usize| match query_value(request, name) {
            None => Some(default),
            Some(v) => v.parse::<usize>().ok(),
        };
        let (Some(limit), Some(offset)) =
            (number("sysparm_limit", 10_000), number("sysparm_offset", 0))
        else {
            return failure(400, "Invalid limit or offset", &query);
        };
        let updated = |r: &Map<String, Value>| {
            steward_adapters::servicenow::parse_time(&text(r, "sys_updated_on")).unwrap_or(0)
        };
        let mut matching: Vec<&Map<String, Value>> = std::iter::once(&self.record)
            .chain(&self.others)
            .filter(|r| updated(r) >= since)
            .collect();
        matching.sort_by_key(|r| (updated(r), text(r, "sys_id")));
        let fields = query_value(request, "sysparm_fields");
        let page: Vec<Value> = matching
            .iter()
            .skip(offset)
            .take(limit)
            .map(|r| match &fields {
                Some(fields) => Value::Object(
                    fields
                        .split(',')
                        .filter_map(|f| r.get(f).map(|v| (f.to_owned(), v.clone())))
                        .collect(),
                ),
                None => Value::Object((*r).clone()),
            })
            .collect();
        ResponseTemplate::new(200)
            .insert_header("X-Total-Count", matching.len().to_string().as_str())
            .set_body_json(json!({ "result": page }))
    }

    fn patch(&mut self, sys_id: &str, body: &[u8]) -> ResponseTemplate {
        if !self.is_ours(sys_id) {
            return not_found();
        }
        let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(body) else {
            return failure(
                400,
                "Exception while reading request",
                "body is not an object",
            );
        };
        if fields.values().any(|v| !v.is_string()) {
            return failure(
                400,
                "Exception while reading request",
                "values must be text",
            );
        }
        for (name, value) in fields {
            let value = value.as_str().unwrap_or_default().to_owned();
            if JOURNAL_FIELDS.contains(&name.as_str()) {
                self.journal.push(JournalEntry {
                    element: name,
                    value,
                });
            } else {
                self.record.insert(name, Value::String(value));
            }
        }
        self.bump_version();
        match self.fault {
            Some(WriteFault::AppliedThenBadGateway) => {
                self.fault = None;
                ResponseTemplate::new(502).set_body_string("<html>502 Bad Gateway</html>")
            }
            Some(WriteFault::SlowAnswer(delay)) => self.get(sys_id).set_delay(delay),
            None => self.get(sys_id),
        }
    }

    fn bump_version(&mut self) {
        let count = text(&self.record, "sys_mod_count")
            .parse::<u64>()
            .unwrap_or(0);
        self.record
            .insert("sys_mod_count".into(), json!((count + 1).to_string()));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        if let Some(now) = steward_adapters::servicenow::format_time(now) {
            self.record.insert("sys_updated_on".into(), json!(now));
        }
    }

    fn by_number(&self, request: &Request) -> ResponseTemplate {
        let wanted = query_value(request, "sysparm_query");
        let number = format!("number={}", text(&self.record, "number"));
        let result = if wanted.as_deref() == Some(number.as_str()) {
            vec![Value::Object(self.record.clone())]
        } else {
            vec![]
        };
        ResponseTemplate::new(200).set_body_json(json!({ "result": result }))
    }

    /// `element_id=<sys_id>^element=<field>^valueLIKE<text>`, the one query Steward sends.
    fn journal_query(&self, request: &Request) -> ResponseTemplate {
        let query = query_value(request, "sysparm_query").unwrap_or_default();
        let mut element_id = None;
        let mut element = None;
        let mut like = None;
        for term in query.split('^') {
            if let Some(v) = term.strip_prefix("element_id=") {
                element_id = Some(v);
            } else if let Some(v) = term.strip_prefix("element=") {
                element = Some(v);
            } else if let Some(v) = term.strip_prefix("valueLIKE") {
                like = Some(v);
            } else {
                return failure(400, "Invalid query", term);
            }
        }
        let (Some(element_id), Some(element), Some(like)) = (element_id, element, like) else {
            return failure(400, "Invalid query", &query);
        };
        let result: Vec<Value> = if self.is_ours(element_id) {
            self.journal
                .iter()
                .enumerate()
                .filter(|(_, e)| e.element == element && e.value.contains(like))
                .map(|(i, e)| json!({"sys_id": format!("{i:032x}"), "value": e.value}))
                .collect()
        } else {
            vec![]
        };
        ResponseTemplate::new(200).set_body_json(json!({ "result": result }))
    }
}

fn query_value(request: &Request, name: &str) -> Option<String> {
    request
        .url
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}
