//! The OpenAPI 3.1 document of the whole HTTP API, generated from the `#[utoipa::path]`
//! annotation on each handler and served at `GET /openapi.json` (no credential). Most handlers
//! build their answers with `json!`; the types in [`schemas`] describe those shapes for the
//! document only. [`Routes`] records every path the router registers, so a test can hold the
//! document to the router.

use std::sync::LazyLock;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use serde_json::json;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{self, ContentBuilder, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi, ToResponse};

use crate::state::AppState;

pub use schemas::*;

/// The router under construction, with the path of every route added to it.
pub(crate) struct Routes {
    pub(crate) router: Router<AppState>,
    pub(crate) paths: Vec<&'static str>,
}

impl Routes {
    pub(crate) fn new() -> Self {
        Self {
            router: Router::new(),
            paths: Vec::new(),
        }
    }

    /// [`Router::route`], remembering the path.
    pub(crate) fn route(
        mut self,
        path: &'static str,
        method_router: MethodRouter<AppState>,
    ) -> Self {
        self.router = self.router.route(path, method_router);
        if !self.paths.contains(&path) {
            self.paths.push(path);
        }
        self
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Steward",
        description = "Supervised AI workflows on IT incidents. Errors are \
                       `{\"error\": \"<stable code>\", \"message\": \"…\"}` with one status per code.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        crate::health::healthz,
        crate::health::readyz,
        crate::metrics::scrape,
        serve,
        crate::webhooks::receive,
        crate::runs::create,
        crate::runs::list,
        crate::runs::show,
        crate::slack::interaction,
        crate::ops::actors,
        crate::ops::runs,
        crate::ops::run,
        crate::ops::retry,
        crate::ops::cancel,
        crate::ops::oidc_config,
        crate::controls::ops_pauses,
        crate::controls::ops_pause,
        crate::controls::ops_resume,
        crate::break_glass::open,
        crate::break_glass::list,
        crate::break_glass::close,
        crate::break_glass::audit,
        crate::tenancy::create_tenant,
        crate::tenancy::list_tenants,
        crate::tenancy::delete_tenant,
        crate::tenancy::export,
        crate::retention::put_legal_hold,
        crate::retention::delete_legal_hold,
        crate::retention::post_erasure,
        crate::retention::put_retention,
        crate::retention::get_retention,
        crate::retention::post_sweep,
        crate::evidence::platform_export,
        crate::evidence::tenant_export,
        crate::evidence::keys,
        crate::reports::platform_report,
        crate::reports::tenant_report,
        crate::tenancy::put_servicenow,
        crate::tenancy::put_slack,
        crate::tenancy::put_llm,
        crate::tenancy::put_policy,
        crate::tenancy::create_source,
        crate::tenancy::rotate_source,
        crate::tenancy::put_secret,
        crate::tenancy::create_token,
        crate::tenancy::list_tokens,
        crate::tenancy::revoke_token,
        crate::tenancy::check,
        crate::siem::put,
        crate::siem::get,
        crate::siem::delete,
        crate::controls::tenant_pauses,
        crate::controls::tenant_pause,
        crate::controls::tenant_resume,
        crate::controls::put_shadow,
        crate::controls::put_budgets,
        crate::controls::get_budgets,
        crate::ops_page::page,
        crate::ops_page::login,
        crate::ops_page::logout,
        crate::ops_page::oidc_start,
        crate::ops_page::oidc_callback,
    ),
    components(schemas(ErrorBody), responses(
        BadRequest,
        Unauthenticated,
        BadSignature,
        Forbidden,
        NotFound,
        TooLarge,
        Unprocessable,
        Conflict,
        Internal,
        Unavailable,
        RateLimited,
        RequestTimeout
    )),
    modifiers(&Security, &Layered),
    tags(
        (name = "health", description = "Probes and this document"),
        (name = "intake", description = "Signed webhook deliveries and Slack callbacks"),
        (name = "runs", description = "A tenant's runs, with a tenant token"),
        (name = "ops", description = "The operator's API and page"),
        (name = "platform", description = "Creating, listing, exporting and offboarding tenants (operator)"),
        (name = "tenant", description = "A tenant's own settings, secrets and tokens (`admin`)"),
        (name = "evidence", description = "Public keys for verifying evidence bundles offline"),
    )
)]
struct ApiDoc;

/// The security schemes the operations name.
struct Security;

impl Modify for Security {
    fn modify(&self, doc: &mut openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        let bearer = |description: &str| {
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("opaque")
                    .description(Some(description))
                    .build(),
            )
        };
        let key = |key: ApiKey| SecurityScheme::ApiKey(key);
        components.add_security_scheme(
            "tenantToken",
            bearer(
                "A tenant API token (`stw_…`). Scopes: `runs:read`, `runs:write`, `admin` \
                 (includes both), `ops` (stored; grants nothing yet). No or an unknown token is \
                 401, a token without the scope 403.",
            ),
        );
        components.add_security_scheme(
            "operatorToken",
            bearer(
                "The deployment's operator token (`ops_token`). A tenant token is 403 here, \
                 whatever its scopes.",
            ),
        );
        components.add_security_scheme(
            "oidcIdToken",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "An ID token from the deployment's identity provider (`[oidc]`; \
                         `steward login` gets one by the device grant). Its groups map to \
                         the roles `operator`, `oncall` and `approver`; a person with no \
                         mapped role, or without the role an operation needs, is 403.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "breakGlassGrant",
            bearer(
                "A break-glass grant token (`sbg_…`, from `POST /v1/ops/break-glass`): the \
                 named person with the `operator` role until the grant expires or is closed. \
                 Every request with it is in the operator audit log; an expired or closed \
                 grant is 401.",
            ),
        );
        components.add_security_scheme(
            "opsSession",
            key(ApiKey::Cookie(ApiKeyValue::with_description(
                crate::ops_auth::COOKIE,
                "A session of the `/ops` page (from `POST /ops/login`). A POST with it also \
                 needs the session's CSRF token in `X-Steward-CSRF`.",
            ))),
        );
        components.add_security_scheme(
            "webhookSignature",
            key(ApiKey::Header(ApiKeyValue::with_description(
                "webhook-signature",
                "A webhook source of scheme `standard-webhooks` (the default): `v1,` + base64(HMAC-SHA256(key, \
                 `<webhook-id>.<webhook-timestamp>.<raw body>`)), the key being the decoded part \
                 of the source's `whsec_` secret; several space-separated signatures may be \
                 sent. The timestamp must be within 5 minutes.",
            ))),
        );
        components.add_security_scheme(
            "stripeSignature",
            key(ApiKey::Header(ApiKeyValue::with_description(
                "stripe-signature",
                "A webhook source of scheme `stripe`: `t=<unix>,v1=<hex>`, each `v1` being \
                 hex(HMAC-SHA256(secret, `<t>.<raw body>`)).",
            ))),
        );
        components.add_security_scheme(
            "slackSignature",
            key(ApiKey::Header(ApiKeyValue::with_description(
                "x-slack-signature",
                "Slack interaction callbacks, and webhook sources of scheme `slack`: `v0=` + hex(HMAC-SHA256(signing secret, \
                 `v0:<x-slack-request-timestamp>:<raw body>`)).",
            ))),
        );
    }
}

/// What the hardening layer around every route may answer instead of the handler: `429` from
/// the rate limits, `408` when a body arrives too slowly, `500` for a handler that panicked.
struct Layered;

impl Modify for Layered {
    fn modify(&self, doc: &mut openapi::OpenApi) {
        let response = |name: &str| RefOr::Ref(openapi::Ref::from_response_name(name));
        for item in doc.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for op in operations.into_iter().flatten() {
                // An optional parameter is left out, never sent as null.
                for parameter in op.parameters.iter_mut().flatten() {
                    if let RefOr::T(parameter) = parameter
                        && parameter.required == openapi::Required::False
                        && let Some(RefOr::T(openapi::Schema::Object(schema))) =
                            &mut parameter.schema
                    {
                        not_null(&mut schema.schema_type);
                    }
                }
                let responses = &mut op.responses.responses;
                responses
                    .entry("429".into())
                    .or_insert_with(|| response("RateLimited"));
                responses
                    .entry("500".into())
                    .or_insert_with(|| response("Internal"));
                if op.request_body.is_some() {
                    responses
                        .entry("408".into())
                        .or_insert_with(|| response("RequestTimeout"));
                }
            }
        }
    }
}

/// Drops `null` from a type list such as `["string", "null"]`.
fn not_null(types: &mut openapi::schema::SchemaType) {
    use openapi::schema::{SchemaType, Type};
    if let SchemaType::Array(list) = types {
        list.retain(|t| *t != Type::Null);
        if list.len() == 1 {
            *types = SchemaType::Type(list.remove(0));
        }
    }
}

/// The whole document.
pub fn document() -> openapi::OpenApi {
    ApiDoc::openapi()
}

/// The document as pretty-printed JSON, as served and as `steward openapi` prints it.
pub fn to_json() -> String {
    document()
        .to_pretty_json()
        .unwrap_or_else(|e| json!({ "error": e.to_string() }).to_string())
}

static DOCUMENT: LazyLock<String> = LazyLock::new(to_json);

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "health",
    responses((status = 200, description = "This OpenAPI 3.1 document", body = Object))
)]
pub(crate) async fn serve() -> Response {
    let mut response = DOCUMENT.as_str().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// An error answer described as `description`, with the error body's schema and the first
/// code's example.
fn error_response(description: &str, codes: &[(&str, &str)]) -> openapi::Response {
    let mut content =
        ContentBuilder::new().schema(Some(openapi::Ref::from_schema_name("ErrorBody")));
    if let Some((code, message)) = codes.first() {
        content = content.example(Some(json!({ "error": code, "message": message })));
    }
    ResponseBuilder::new()
        .description(description)
        .content("application/json", content.build())
        .build()
}

macro_rules! error_responses {
    ($($name:ident: $description:literal, [$(($code:literal, $message:literal)),+ $(,)?];)+) => {$(
        #[doc = $description]
        pub struct $name;

        impl<'s> ToResponse<'s> for $name {
            fn response() -> (&'s str, RefOr<openapi::Response>) {
                (stringify!($name), RefOr::T(error_response($description, &[$(($code, $message)),+])))
            }
        }
    )+};
}

error_responses! {
    BadRequest: "The request is malformed: not JSON, an unknown or missing field, a bad query parameter (`bad_request`).",
        [("bad_request", "invalid request body: missing field `incident` at line 1 column 2")];
    Unauthenticated: "No credential, or one that is unknown, expired or revoked (`unauthenticated`).",
        [("unauthenticated", "missing or invalid API token")];
    BadSignature: "The signature or its timestamp does not verify: `signature_mismatch`, `signature_malformed`, `missing_header`, `empty_body`, `timestamp_out_of_tolerance` or `timestamp_malformed`.",
        [("signature_mismatch", "the signature does not verify: no signature matches")];
    Forbidden: "The credential is valid but lacks the scope, or is a tenant token on an operator route (`forbidden`).",
        [("forbidden", "the token lacks the `runs:read` scope")];
    NotFound: "Unknown tenant, source, run, token or secret name; never says which (`not_found`).",
        [("not_found", "not found")];
    TooLarge: "The body is over the route's limit (`body_too_large`).",
        [("body_too_large", "body larger than 16384 bytes")];
    Unprocessable: "The request parses but a value is refused (`unprocessable`).",
        [("unprocessable", "name the incident by exactly one of `sys_id` (32 hex digits) or `number`")];
    Conflict: "The resource's current state refuses the request (`conflict`).",
        [("conflict", "only a failed run can be retried; this run is completed")];
    Internal: "Steward failed; the request was not applied (`internal`). Details are in the server's log.",
        [("internal", "internal error; the request was not applied")];
    Unavailable: "The database does not answer (`unavailable`).",
        [("unavailable", "the service is not ready")];
    RequestTimeout: "The request did not arrive within its deadline (`request_timeout`).",
        [("request_timeout", "the request was not received in time")];
}

/// Too many requests from this client address or for this tenant (`rate_limited`), refused
/// before the handler runs; `Retry-After` says when to try again.
pub struct RateLimited;

impl<'s> ToResponse<'s> for RateLimited {
    fn response() -> (&'s str, RefOr<openapi::Response>) {
        let description = "Too many requests from this client address or for this tenant \
                           (`rate_limited`); `Retry-After` gives the seconds to wait.";
        let mut response = error_response(
            description,
            &[(
                "rate_limited",
                "too many requests from this client address; retry after 1 s",
            )],
        );
        let seconds = openapi::ObjectBuilder::new()
            .schema_type(openapi::schema::Type::Integer)
            .build();
        let header = openapi::header::HeaderBuilder::new()
            .schema(Some(seconds))
            .description(Some("Seconds until a retry may pass"))
            .build();
        response
            .headers
            .insert("retry-after".into(), RefOr::T(header));
        ("RateLimited", RefOr::T(response))
    }
}

/// The shapes of the answers, as the handlers build them. Never constructed: they exist for
/// their schemas.
#[allow(dead_code)]
mod schemas {
    use serde_json::Value;
    use utoipa::ToSchema;

    /// Every error answer: a stable code and a message saying what went wrong and what to do.
    #[derive(ToSchema)]
    #[schema(example = json!({"error": "not_found", "message": "not found"}))]
    pub struct ErrorBody {
        /// A stable code: `not_found`, `unauthenticated`, `forbidden`, `bad_request`,
        /// `unprocessable`, `body_too_large`, `conflict`, `unavailable`, `internal`, a
        /// signature code (`signature_mismatch`, `signature_malformed`, `missing_header`,
        /// `empty_body`, `timestamp_out_of_tolerance`, `timestamp_malformed`), `misdirected`
        /// or `export_first`.
        pub error: String,
        pub message: String,
    }

    /// A tenant homed in another region.
    #[derive(ToSchema)]
    pub struct Misdirected {
        /// `misdirected`.
        pub error: String,
        pub message: String,
        /// That region's deployment, when this one knows it.
        pub home_base_url: Option<String>,
    }

    /// Offboarding refused until the evidence is exported and the id confirmed.
    #[derive(ToSchema)]
    pub struct ExportFirst {
        /// `export_first`.
        pub error: String,
        pub message: String,
        /// The export's path.
        pub export: String,
    }

    /// A probe's answer.
    #[derive(ToSchema)]
    pub struct Health {
        /// `ok` or `ready`.
        #[schema(example = "ok")]
        pub status: String,
    }

    /// How a trigger names the incident a run may touch.
    #[derive(ToSchema)]
    #[schema(example = json!({"by": "number", "value": "INC0010001"}))]
    pub struct IncidentRef {
        pub by: IncidentBy,
        /// 32 lowercase hex digits, or letters then digits.
        pub value: String,
    }

    #[derive(ToSchema)]
    #[schema(rename_all = "snake_case")]
    pub enum IncidentBy {
        SysId,
        Number,
    }

    /// A run as stored.
    #[derive(ToSchema)]
    pub struct Run {
        #[schema(format = "uuid")]
        pub id: String,
        pub tenant: String,
        /// The webhook source, for a run a webhook started.
        pub source: Option<String>,
        /// The webhook delivery id or the `Idempotency-Key`.
        pub delivery_id: Option<String>,
        pub incident: IncidentRef,
        /// What started the run: `{"kind": "webhook" | "api", …}`.
        #[schema(value_type = Object)]
        pub trigger: Value,
        /// `received`, `triaging`, `awaiting_approval`, `parked`, `writing`, `closing`, or a
        /// terminal `completed`, `rejected`, `denied`, `stale`, `failed`, `expired`,
        /// `cancelled`.
        pub state: String,
        /// The journal's length.
        pub steps: u32,
        pub last_error: Option<String>,
        /// Unix ms.
        pub created_at: i64,
        /// Unix ms.
        pub updated_at: i64,
    }

    /// A run as the ops listing shows it: no trigger, no delivery id.
    #[derive(ToSchema)]
    pub struct RunSummary {
        #[schema(format = "uuid")]
        pub id: String,
        pub tenant: String,
        pub source: Option<String>,
        pub incident: IncidentRef,
        pub state: String,
        pub steps: u32,
        pub last_error: Option<String>,
        pub created_at: i64,
        pub updated_at: i64,
    }

    /// One step of a run's journal.
    #[derive(ToSchema)]
    pub struct Step {
        /// Position in the journal, from 0.
        pub seq: u32,
        pub kind: String,
        pub body: Value,
        /// Unix ms.
        pub at: i64,
    }

    /// A started (202) or already known (200) run.
    #[derive(ToSchema)]
    pub struct RunAccepted {
        #[schema(format = "uuid")]
        pub run_id: String,
        pub status: RunAcceptedStatus,
        /// A redelivered webhook's delivery id.
        pub delivery_id: Option<String>,
    }

    #[derive(ToSchema)]
    #[schema(rename_all = "snake_case")]
    pub enum RunAcceptedStatus {
        Accepted,
        Duplicate,
    }

    /// A run and its journal.
    #[derive(ToSchema)]
    pub struct RunWithSteps {
        pub run: Run,
        pub steps: Vec<Step>,
    }

    /// A page of runs, newest first.
    #[derive(ToSchema)]
    pub struct RunPage {
        pub runs: Vec<Run>,
        /// Pass as `before` for the next page; null on the last.
        #[schema(format = "uuid")]
        pub next: Option<String>,
    }

    /// The live supervision tree.
    #[derive(ToSchema)]
    pub struct ActorTree {
        /// Unix ms.
        pub at: i64,
        /// The root actor: kind, id, state, children, waiting runs.
        #[schema(value_type = Object)]
        pub tree: Value,
    }

    /// A page of runs across tenants.
    #[derive(ToSchema)]
    pub struct OpsRunPage {
        pub runs: Vec<RunSummary>,
        #[schema(format = "uuid")]
        pub next: Option<String>,
    }

    /// Everything kept about one run.
    #[derive(ToSchema)]
    pub struct OpsRun {
        pub run: Run,
        pub journal: Vec<Step>,
        /// The journal folded into the run's state now; null if it does not fold.
        pub state: Value,
        /// Why the journal does not fold.
        pub state_error: Option<String>,
        pub snapshot: Option<Snapshot>,
        pub crashes: Vec<Crash>,
        pub audit: Vec<OpsAuditEntry>,
    }

    /// The run actor's stored snapshot.
    #[derive(ToSchema)]
    pub struct Snapshot {
        pub offset: u32,
        pub state: Value,
    }

    /// A crash snapshot, redacted.
    #[derive(ToSchema)]
    pub struct Crash {
        #[schema(format = "uuid")]
        pub run_id: String,
        pub seq: u32,
        pub at: i64,
        pub attempt: u32,
        pub journal_offset: u32,
        pub step: String,
        pub message: String,
        pub error: String,
        pub state: Value,
    }

    /// An audit entry of a run.
    #[derive(ToSchema)]
    pub struct OpsAuditEntry {
        pub seq: u64,
        pub at: i64,
        pub kind: String,
        pub actor: String,
        pub body: Value,
        pub hash: String,
    }

    /// What an operator's retry or cancel did.
    #[derive(ToSchema)]
    pub struct OperatorOutcome {
        #[schema(format = "uuid")]
        pub run_id: String,
        /// `retried` or `cancelled`.
        pub action: String,
        pub previous_state: String,
        pub state: String,
        /// The step a retried run goes on with.
        pub step: Option<String>,
    }

    /// A tenant just created, with its first `admin` token (shown once).
    #[derive(ToSchema)]
    pub struct TenantCreated {
        pub tenant: NewTenant,
        pub admin_token: IssuedToken,
    }

    #[derive(ToSchema)]
    pub struct NewTenant {
        pub id: String,
        pub name: String,
        /// `us` or `eu`.
        pub region: String,
    }

    /// A generated token with its value, shown once.
    #[derive(ToSchema)]
    pub struct IssuedToken {
        pub id: String,
        pub scopes: Vec<String>,
        pub value: String,
    }

    #[derive(ToSchema)]
    pub struct TenantList {
        pub tenants: Vec<TenantSummary>,
    }

    #[derive(ToSchema)]
    pub struct TenantSummary {
        pub id: String,
        pub name: String,
        pub created_at: i64,
        pub offboarded_at: Option<i64>,
    }

    /// The closed chain of an offboarded tenant.
    #[derive(ToSchema)]
    pub struct Offboarded {
        pub offboarded: String,
        pub checkpoint: Checkpoint,
    }

    /// The signed close of an audit chain.
    #[derive(ToSchema)]
    pub struct Checkpoint {
        pub tenant: String,
        pub seq: u64,
        pub head_hash: String,
        pub key_id: String,
        /// Hex HMAC-SHA256 of `tenant|seq|head_hash` under a key derived from the master key.
        pub signature: String,
        pub created_at: i64,
    }

    /// A stored secret: set, and its version; never its value.
    #[derive(ToSchema)]
    pub struct SecretStatus {
        pub set: bool,
        pub version: u32,
    }

    /// A connector's settings as stored, and the versions of the secrets this call sealed.
    #[derive(ToSchema)]
    pub struct ConnectorSet {
        /// `servicenow`, `slack` or `llm`.
        pub section: String,
        #[schema(value_type = Object)]
        pub settings: Value,
        /// By vault name, e.g. `llm.api_key`.
        pub secrets: std::collections::HashMap<String, SecretStatus>,
    }

    #[derive(ToSchema)]
    pub struct PolicySet {
        pub policy_sha256: String,
    }

    /// A webhook source, with its secret when Steward generated it (shown once).
    #[derive(ToSchema)]
    pub struct SourceCreated {
        pub name: String,
        /// Where the sender posts.
        pub url: String,
        /// `standard-webhooks`, `slack` or `stripe`.
        pub scheme: String,
        pub secret_version: u32,
        /// Present only when Steward generated the secret.
        pub secret: Option<String>,
    }

    /// A source's new secret version (the secret itself when Steward generated it, shown
    /// once); the old one verifies until `old_expires_at`.
    #[derive(ToSchema)]
    pub struct SourceRotated {
        pub name: String,
        pub scheme: String,
        pub secret_version: u32,
        /// Unix seconds.
        pub old_expires_at: i64,
        /// Present only when Steward generated the secret.
        pub secret: Option<String>,
    }

    #[derive(ToSchema)]
    pub struct SecretSet {
        pub secret: String,
        pub status: SecretStatus,
    }

    /// A token as listed: never its value.
    #[derive(ToSchema)]
    pub struct TokenInfo {
        /// `tok_` and the first 16 hex digits of the token's SHA-256.
        pub id: String,
        pub label: String,
        pub scopes: Vec<String>,
        pub created_at: i64,
        pub expires_at: Option<i64>,
        pub revoked_at: Option<i64>,
    }

    /// A token just issued, with its value (shown once).
    #[derive(ToSchema)]
    pub struct TokenIssued {
        pub token: TokenInfo,
        pub value: String,
    }

    #[derive(ToSchema)]
    pub struct TokenList {
        pub tokens: Vec<TokenInfo>,
    }

    #[derive(ToSchema)]
    pub struct TokenRevoked {
        pub revoked: String,
    }

    /// Each connection's check; `ok` is true when all passed.
    #[derive(ToSchema)]
    pub struct CheckReport {
        pub ok: bool,
        pub servicenow: Option<CheckOutcome>,
        pub slack: Option<CheckOutcome>,
        pub llm: Option<CheckOutcome>,
        /// Set when no check could run.
        pub problem: Option<String>,
    }

    #[derive(ToSchema)]
    pub struct CheckOutcome {
        pub ok: bool,
        /// What is wrong, quoting no secret and no response body.
        pub problem: Option<String>,
    }

    /// A Slack interaction callback, as Slack posts it.
    #[derive(ToSchema)]
    pub struct SlackForm {
        /// The `block_actions` payload as JSON text.
        pub payload: String,
    }

    /// The `/ops` sign-in form.
    #[derive(ToSchema)]
    pub struct LoginForm {
        pub token: String,
    }

    /// The identity provider a command-line client signs in with.
    #[derive(ToSchema)]
    pub struct OidcClientConfig {
        /// The issuer (its discovery document is under `/.well-known/openid-configuration`).
        pub issuer: String,
        /// The client id ID tokens must be issued to.
        pub client_id: String,
        /// The scopes to ask for.
        pub scopes: Vec<String>,
    }

    /// The `/ops` sign-out form.
    #[derive(ToSchema)]
    pub struct LogoutForm {
        pub csrf: String,
    }
}
