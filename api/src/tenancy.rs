//! Tenant onboarding and administration. The platform (operator token) creates, lists, exports
//! and offboards tenants; a tenant's admin token sets its connectors, secrets, policy, webhook
//! sources and tokens. Secrets are write-only: answers say a secret is set and its version,
//! never its value, except for the values generated here (tokens, webhook secrets), shown
//! once in the answer that created them. Every change is an audit entry naming its actor, and
//! a change to settings or secrets restarts the tenant's supervisor so it takes effect.

use std::collections::HashMap;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use steward_actors::settings::{LlmConfig, ServiceNowSettings, SlackSettings};
use steward_actors::{PolicyGate, secret_names};
use steward_adapters::egress::EgressKind;
use steward_adapters::webhook;
use steward_core::{Region, SignatureScheme, SourceName, TenantId};
use steward_persistence::{
    AuditDraft, Authenticator, NewToken, TenantScope, WebhookSource, generate_api_token,
};
use tracing::warn;

use crate::error::ApiError;
use crate::ops;
use crate::state::AppState;
use crate::webhooks::read_body;

/// The scopes a token may carry.
pub const TOKEN_SCOPES: [&str; 4] = ["runs:read", "runs:write", "admin", "ops"];
/// The largest body the tenancy endpoints accept (a Cedar policy is the largest).
const MAX_BODY_BYTES: usize = 64 * 1024;
/// The longest token lifetime that may be asked for: two years.
const MAX_TOKEN_LIFETIME_SECS: u64 = 2 * 366 * 86_400;
/// The audit actor of platform calls.
const OPERATOR: &str = "operator";

/// Where this deployment sits, for refusing tenants homed elsewhere.
#[derive(Debug, Clone)]
pub struct TenancySettings {
    /// The region this deployment serves.
    pub region: Region,
    /// The base URL of the deployment of each other region, where known.
    pub peer_base_urls: HashMap<Region, String>,
    /// How `POST /v1/tenant/check` reaches the tenant's services.
    pub http: steward_adapters::http::HttpSettings,
}

impl Default for TenancySettings {
    fn default() -> Self {
        Self {
            region: Region::Us,
            peer_base_urls: HashMap::new(),
            http: steward_adapters::http::HttpSettings::default(),
        }
    }
}

/// A tenant admin: the scope its token proves and the audit actor naming that token.
pub(crate) struct Admin {
    pub(crate) scope: TenantScope,
    pub(crate) actor: String,
}

/// Authenticates a tenant token carrying `admin`; 401 for a bad token, 403 for a good one
/// without the scope.
pub(crate) async fn admin(state: &AppState, headers: &HeaderMap) -> Result<Admin, ApiError> {
    let token = crate::ops_auth::bearer(headers)
        .filter(|t| !t.is_empty() && t.len() <= 256)
        .ok_or(ApiError::Unauthenticated)?;
    let (scope, scopes) = state
        .store
        .authenticate_token(token)
        .await?
        .ok_or(ApiError::Unauthenticated)?;
    if !scopes.iter().any(|s| s == "admin") {
        return Err(ApiError::Forbidden("admin"));
    }
    let hash = hex::encode(Sha256::digest(token.as_bytes()));
    Ok(Admin {
        scope,
        actor: format!("token:tok_{}", &hash[..16]),
    })
}

/// Parses a JSON body of at most 64 KiB into `T`, refusing unknown fields (400).
pub(crate) async fn json_body<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
) -> Result<T, ApiError> {
    let bytes = read_body(body, headers, MAX_BODY_BYTES).await?;
    crate::error::json_object(&bytes)
}

fn digest(value: &impl serde::Serialize) -> String {
    let text = serde_json::to_string(value).unwrap_or_default();
    hex::encode(Sha256::digest(text.as_bytes()))
}

pub(crate) fn draft(kind: &str, actor: &str, body: Value) -> AuditDraft {
    AuditDraft {
        kind: kind.into(),
        run_id: None,
        actor: actor.into(),
        body,
    }
}

/// Makes the tenant's running supervisor, if any, start again with what is stored now.
pub(crate) async fn reload(state: &AppState, tenant: &TenantId) {
    if let Err(e) = state.steward.reload_tenant(tenant).await {
        warn!(%tenant, error = %e, "The tenant's supervisor could not be restarted.");
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateTenant {
    id: String,
    name: String,
}

/// `POST /v1/tenants` (operator): registers a tenant of this region and answers with its
/// first admin token, shown once. A tenant homed in another region is 421 with that region's
/// base URL when known.
#[utoipa::path(post, path = "/v1/tenants", tag = "platform",
    request_body(content = CreateTenant, example = json!({"id": "us-newco", "name": "NewCo"})),
    responses(
        (status = 201, description = "Created, with the first admin token", body = crate::openapi::TenantCreated),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthenticated),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 413, response = crate::openapi::TooLarge),
        (status = 409, response = crate::openapi::Conflict),
        (status = 421, description = "Homed in another region", body = crate::openapi::Misdirected),
        (status = 422, response = crate::openapi::Unprocessable),
        (status = 500, response = crate::openapi::Internal),
    ),
    security(("operatorToken" = []), ("opsSession" = []), ("oidcIdToken" = [])))]
pub(crate) async fn create_tenant(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    ops::authorize(&state, &headers, crate::ops_auth::Action::Platform).await?;
    let req: CreateTenant = json_body(&headers, body).await?;
    let id = TenantId::parse(&req.id).map_err(|e| {
        ApiError::Unprocessable(format!("`id` must be a tenant id such as `us-acme`: {e}"))
    })?;
    if id.region() != state.tenancy.region {
        return Ok(misdirected(&state, &id));
    }
    let value = generate_api_token();
    let scopes = vec!["admin".to_owned()];
    let token = NewToken {
        value: &value,
        label: "first-admin",
        scopes: &scopes,
        expires_at: None,
    };
    let info = state
        .store
        .create_tenant(&id, &req.name, token, OPERATOR)
        .await
        .map_err(conflict_or)?;
    let answer = json!({
        "tenant": { "id": id, "name": req.name, "region": id.region() },
        "admin_token": { "id": info.id, "scopes": info.scopes, "value": value.expose_secret() },
    });
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

fn conflict_or(e: steward_persistence::StoreError) -> ApiError {
    match e {
        steward_persistence::StoreError::Conflict(why) => ApiError::Conflict(why),
        other => other.into(),
    }
}

/// Refuses a tenant homed in another region with `421` and that region's base URL, before
/// anything of the request is read or stored.
pub(crate) fn check_home(state: &AppState, id: &TenantId) -> Result<(), ApiError> {
    if id.region() == state.tenancy.region {
        return Ok(());
    }
    Err(ApiError::Misdirected {
        message: format!(
            "tenant {id} is homed in region {}; this deployment serves {}",
            id.region(),
            state.tenancy.region
        ),
        home_base_url: state.tenancy.peer_base_urls.get(&id.region()).cloned(),
    })
}

fn misdirected(state: &AppState, id: &TenantId) -> Response {
    let home = state.tenancy.peer_base_urls.get(&id.region());
    let body = json!({
        "error": "misdirected",
        "message": format!(
            "tenant {id} is homed in region {}; this deployment serves {}",
            id.region(),
            state.tenancy.region
        ),
        "home_base_url": home,
    });
    (StatusCode::MISDIRECTED_REQUEST, Json(body)).into_response()
}

/// `GET /v1/tenants` (operator): every tenant, by id.
#[utoipa::path(get, path = "/v1/tenants", tag = "platform",
    responses(
        (status = 200, description = "Every tenant", body = crate::openapi::TenantList),
        (status = 401, response = crate::openapi::Unauthenticated),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 500, response = crate::openapi::Internal),
    ),
    security(("operatorToken" = []), ("opsSession" = []), ("oidcIdToken" = [])))]
pub(crate) async fn list_tenants(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    ops::authorize(&state, &headers, crate::ops_auth::Action::PlatformRead).await?;
    let tenants = state.store.list_tenants().await?;
    Ok(Json(json!({ "tenants": tenants })))
}

/// A tenant named in a platform path, known to the platform; 404 otherwise.
pub(crate) async fn known_tenant(state: &AppState, id: &str) -> Result<TenantScope, ApiError> {
    let id = TenantId::parse(id).map_err(|_| ApiError::NotFound)?;
    check_home(state, &id)?;
    if !state.store.tenant_exists(&id).await? {
        return Err(ApiError::NotFound);
    }
    Ok(TenantScope::assume(id, Authenticator::OperatorToken))
}

/// `GET /v1/tenants/{id}/export` (operator): the tenant's evidence as JSON lines: a `tenant`
/// line, each audit entry in chain order, then each run with its steps.
#[utoipa::path(get, path = "/v1/tenants/{id}/export", tag = "platform",
    params(("id" = String, Path, description = "Tenant id")),
    responses(
        (status = 200, description = "JSON lines: `tenant`, then `audit` entries, then `run`s with steps",
            body = String, content_type = "application/x-ndjson"),
        (status = 401, response = crate::openapi::Unauthenticated),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 421, description = "The tenant is homed in another region", body = crate::openapi::Misdirected),
        (status = 500, response = crate::openapi::Internal),
    ),
    security(("operatorToken" = []), ("opsSession" = []), ("oidcIdToken" = [])))]
pub(crate) async fn export(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    ops::authorize(&state, &headers, crate::ops_auth::Action::PlatformRead).await?;
    let scope = known_tenant(&state, &id).await?;
    let mut out = Vec::new();
    let mut line = |value: Value| {
        out.extend_from_slice(value.to_string().as_bytes());
        out.push(b'\n');
    };
    line(json!({ "type": "tenant", "id": scope.tenant() }));
    let mut after = 0;
    loop {
        let page = state.store.audit_entries(&scope, after, 1000).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        page.into_iter()
            .for_each(|e| line(json!({ "type": "audit", "entry": e })));
    }
    let mut before = None;
    loop {
        let runs = state.store.list_runs(&scope, 200, before).await?;
        let Some(last) = runs.last() else { break };
        before = Some(last.id);
        for run in runs {
            let steps = state.store.steps(&scope, run.id).await?;
            line(json!({ "type": "run", "run": run, "steps": steps }));
        }
    }
    let headers = [(header::CONTENT_TYPE, "application/x-ndjson")];
    Ok((StatusCode::OK, headers, out).into_response())
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct DeleteTenant {
    #[serde(default)]
    confirm: Option<String>,
    #[serde(default)]
    exported: bool,
}

/// `DELETE /v1/tenants/{id}` (operator): offboards the tenant. Without
/// `{"confirm": "<id>", "exported": true}` it answers 409 pointing at the export. Then it
/// destroys the tenant's data keys, removes its rows except the audit chain, closes the chain
/// with `tenant.offboarded` and a signed checkpoint, and stops the tenant's actors.
#[utoipa::path(delete, path = "/v1/tenants/{id}", tag = "platform",
    params(("id" = String, Path, description = "Tenant id")),
    request_body(content = Option<DeleteTenant>,
        example = json!({"confirm": "us-newco", "exported": true})),
    responses(
        (status = 200, description = "Offboarded", body = crate::openapi::Offboarded),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthenticated),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 413, response = crate::openapi::TooLarge),
        (status = 404, response = crate::openapi::NotFound),
        (status = 421, description = "The tenant is homed in another region", body = crate::openapi::Misdirected),
        (status = 409, description = "Not confirmed: export first", body = crate::openapi::ExportFirst),
        (status = 500, response = crate::openapi::Internal),
    ),
    security(("operatorToken" = []), ("opsSession" = []), ("oidcIdToken" = [])))]
pub(crate) async fn delete_tenant(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    ops::authorize(&state, &headers, crate::ops_auth::Action::Platform).await?;
    let bytes = read_body(body, &headers, MAX_BODY_BYTES).await?;
    let req: DeleteTenant = if bytes.is_empty() {
        DeleteTenant::default()
    } else {
        crate::error::json_object(&bytes)?
    };
    let scope = known_tenant(&state, &id).await?;
    if state.store.tenant_offboarded(scope.tenant()).await? {
        return Err(ApiError::NotFound);
    }
    if req.confirm.as_deref() != Some(scope.tenant().as_str()) || !req.exported {
        let export = format!("/v1/tenants/{}/export", scope.tenant());
        let body = json!({
            "error": "export_first",
            "message": "export the tenant's evidence first, then repeat with \
                        {\"confirm\": \"<tenant id>\", \"exported\": true}",
            "export": export,
        });
        return Ok((StatusCode::CONFLICT, Json(body)).into_response());
    }
    let checkpoint = state
        .store
        .offboard_tenant(&scope, &state.master_key, OPERATOR)
        .await?;
    reload(&state, scope.tenant()).await;
    Ok(Json(json!({ "offboarded": scope.tenant(), "checkpoint": checkpoint })).into_response())
}

/// Seals each given secret under its vault name; answers `{name: {set, version}}`.
async fn seal_all(
    state: &AppState,
    admin: &Admin,
    secrets: Vec<(&str, Option<SecretString>)>,
) -> Result<serde_json::Map<String, Value>, ApiError> {
    let mut versions = serde_json::Map::new();
    for (name, value) in secrets {
        let Some(value) = value else { continue };
        let version = state
            .store
            .put_secret(&admin.scope, &state.master_key, name, &value)
            .await?;
        versions.insert(name.into(), json!({ "set": true, "version": version }));
    }
    Ok(versions)
}

/// Seals the secrets, stores the settings section and audits `connector.<section>.set` with
/// a digest of the section and the secret versions (never values), then restarts the tenant.
async fn apply_connector(
    state: &AppState,
    admin: &Admin,
    section: &str,
    settings: Value,
    secrets: Vec<(&str, Option<SecretString>)>,
    extra: Value,
) -> Result<Json<Value>, ApiError> {
    let versions = seal_all(state, admin, secrets).await?;
    let body = json!({
        "section": section, "settings_sha256": digest(&settings), "secrets": versions,
        "details": extra,
    });
    let kind = format!("connector.{section}.set");
    state
        .store
        .set_tenant_section(
            &admin.scope,
            section,
            Some(settings.clone()),
            draft(&kind, &admin.actor, body),
        )
        .await?;
    reload(state, admin.scope.tenant()).await;
    Ok(Json(
        json!({ "section": section, "settings": settings, "secrets": versions }),
    ))
}

fn check_url(url: &str, field: &str) -> Result<(), ApiError> {
    let parsed: Result<http::Uri, _> = url.parse();
    let ok = url.len() <= 2048
        && parsed
            .is_ok_and(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some());
    if ok {
        Ok(())
    } else {
        Err(ApiError::Unprocessable(format!(
            "`{field}` must be an http or https URL"
        )))
    }
}

/// 422 unless `url` is `https://` where plain HTTP is not allowed and its host is on the
/// allow-list of the tenant's home region for `kind`.
fn check_egress(
    state: &AppState,
    admin: &Admin,
    kind: EgressKind,
    url: &str,
) -> Result<(), ApiError> {
    let region = admin.scope.tenant().region();
    state
        .tenancy
        .http
        .check_url(region, kind, url)
        .map_err(|refused| ApiError::Unprocessable(refused.to_string()))
}

fn check_word(value: &str, field: &str, max: usize) -> Result<(), ApiError> {
    let ok = !value.is_empty()
        && value.len() <= max
        && value
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\');
    if ok {
        Ok(())
    } else {
        Err(ApiError::Unprocessable(format!(
            "`{field}` must be 1 to {max} visible ASCII characters"
        )))
    }
}

fn secret(value: Option<String>) -> Option<SecretString> {
    value.map(SecretString::from)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ServiceNowBody {
    #[schema(
        pattern = "^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[!-~]*)?$",
        max_length = 2048
    )]
    instance_url: String,
    #[schema(pattern = "^(password|refresh_token|client_credentials)$")]
    grant: String,
    #[schema(pattern = "^[!#-\\[\\]-~]{1,256}$")]
    client_id: String,
    #[serde(default)]
    #[schema(pattern = "^[!#-\\[\\]-~]{1,256}$")]
    username: Option<String>,
    #[serde(default)]
    client_secret: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    refresh_token: Option<String>,
}

/// `PUT /v1/tenant/connectors/servicenow` (admin).
#[utoipa::path(put, path = "/v1/tenant/connectors/servicenow", tag = "tenant",
    request_body(content = ServiceNowBody, description = "Instance, OAuth grant and its secrets (write-only)"),
    responses(
        (status = 200, description = "Stored; the tenant restarts with it", body = crate::openapi::ConnectorSet),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthenticated),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 413, response = crate::openapi::TooLarge),
        (status = 422, response = crate::openapi::Unprocessable),
        (status = 500, response = crate::openapi::Internal),
    ),
    security(("tenantToken" = ["admin"])))]
pub(crate) async fn put_servicenow(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let admin = admin(&state, &headers).await?;
    let req: ServiceNowBody = json_body(&headers, body).await?;
    check_url(&req.instance_url, "instance_url")?;
    check_egress(&state, &admin, EgressKind::ServiceNow, &req.instance_url)?;
    check_word(&req.client_id, "client_id", 256)?;
    match req.grant.as_str() {
        "password" if req.username.is_none() => {
            return Err(ApiError::Unprocessable(
                "the password grant needs `username`".into(),
            ));
        }
        "password" | "refresh_token" | "client_credentials" => {}
        _ => {
            return Err(ApiError::Unprocessable(
                "`grant` must be password, refresh_token or client_credentials".into(),
            ));
        }
    }
    if let Some(u) = &req.username {
        check_word(u, "username", 256)?;
    }
    let settings = ServiceNowSettings {
        instance_url: req.instance_url,
        grant: req.grant,
        client_id: req.client_id,
        username: req.username,
    };
    let secrets = vec![
        (
            secret_names::SERVICENOW_CLIENT_SECRET,
            secret(req.client_secret),
        ),
        (secret_names::SERVICENOW_PASSWORD, secret(req.password)),
        (
            secret_names::SERVICENOW_REFRESH_TOKEN,
            secret(req.refresh_token),
        ),
    ];
    let settings = serde_json::to_value(settings).map_err(internal)?;
    apply_connector(&state, &admin, "servicenow", settings, secrets, json!({})).await
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct SlackBody {
    #[schema(
        pattern = "^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[!-~]*)?$",
        max_length = 2048
    )]
    api_base: String,
    #[schema(pattern = "^[!#-\\[\\]-~]{1,64}$")]
    approval_channel: String,
    approvers: Vec<String>,
    #[serde(default)]
    remind_after_secs: Option<u64>,
    #[serde(default)]
    escalate_after_secs: Option<u64>,
    #[serde(default)]
    escalation_channel: Option<String>,
    #[serde(default)]
    escalation_approvers: Vec<String>,
    #[serde(default)]
    expire_after_secs: Option<u64>,
    /// Approver groups the tenant's policies name: group name to Slack user ids.
    #[serde(default)]
    approver_groups: std::collections::BTreeMap<String, Vec<String>>,
    /// Who each Slack user is in ServiceNow and which API tokens they use, so that the person
    /// who asked for a change never approves it.
    #[serde(default)]
    people: Vec<PersonBody>,
    #[serde(default)]
    bot_token: Option<String>,
    #[serde(default)]
    signing_secret: Option<String>,
}

/// One person across systems.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct PersonBody {
    slack_user: String,
    #[serde(default)]
    servicenow_user: Option<String>,
    #[serde(default)]
    token_labels: Vec<String>,
}

/// Approver groups by name, and the people mapping, as the settings keep them.
type PeopleAndGroups = (
    std::collections::BTreeMap<String, Vec<String>>,
    Vec<steward_actors::PersonLink>,
);

/// Checks approver groups and the people mapping, and turns them into settings.
fn people_and_groups(
    groups: std::collections::BTreeMap<String, Vec<String>>,
    people: Vec<PersonBody>,
) -> Result<PeopleAndGroups, ApiError> {
    if groups.len() > 50 || groups.values().any(|m| m.len() > 500) {
        return Err(ApiError::Unprocessable(
            "at most 50 approver groups of at most 500 members each".into(),
        ));
    }
    for (name, members) in &groups {
        check_word(name, "approver_groups", 64)?;
        if name == steward_actors::APPROVERS_GROUP || name == steward_actors::ESCALATION_GROUP {
            return Err(ApiError::Unprocessable(format!(
                "the group `{name}` is the approver list itself; choose another name"
            )));
        }
        for m in members {
            check_word(m, "approver_groups members", 64)?;
        }
    }
    if people.len() > 2000 || people.iter().any(|p| p.token_labels.len() > 20) {
        return Err(ApiError::Unprocessable(
            "at most 2000 people with at most 20 token labels each".into(),
        ));
    }
    let mut links = Vec::with_capacity(people.len());
    for p in people {
        check_word(&p.slack_user, "people.slack_user", 64)?;
        if let Some(u) = &p.servicenow_user {
            check_word(u, "people.servicenow_user", 64)?;
        }
        for l in &p.token_labels {
            check_word(l, "people.token_labels", 64)?;
        }
        links.push(steward_actors::PersonLink {
            slack_user: p.slack_user,
            servicenow_user: p.servicenow_user,
            token_labels: p.token_labels,
        });
    }
    Ok((groups, links))
}

/// `PUT /v1/tenant/connectors/slack` (admin): workspace, channel, approvers and secrets.
#[utoipa::path(put, path = "/v1/tenant/connectors/slack", tag = "tenant",
    request_body(content = SlackBody, description = "Channels, approvers, timings and the app secrets (write-only)"),
    responses(
        (status = 200, description = "Stored; the tenant restarts with it", body = crate::openapi::ConnectorSet),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthenticated),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 413, response = crate::openapi::TooLarge),
        (status = 422, response = crate::openapi::Unprocessable),
        (status = 500, response = crate::openapi::Internal),
    ),
    security(("tenantToken" = ["admin"])))]
pub(crate) async fn put_slack(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let admin = admin(&state, &headers).await?;
    let req: SlackBody = json_body(&headers, body).await?;
    check_url(&req.api_base, "api_base")?;
    check_egress(&state, &admin, EgressKind::Slack, &req.api_base)?;
    check_word(&req.approval_channel, "approval_channel", 64)?;
    if req.approvers.len() > 500 || req.escalation_approvers.len() > 500 {
        return Err(ApiError::Unprocessable(
            "at most 500 approvers of each kind".into(),
        ));
    }
    for a in req.approvers.iter().chain(&req.escalation_approvers) {
        check_word(a, "approvers", 64)?;
    }
    if let Some(c) = &req.escalation_channel {
        check_word(c, "escalation_channel", 64)?;
    }
    let mut s = SlackSettings::new(req.api_base, req.approval_channel, req.approvers);
    s.remind_after_secs = req.remind_after_secs.unwrap_or(s.remind_after_secs);
    s.escalate_after_secs = req.escalate_after_secs.unwrap_or(s.escalate_after_secs);
    s.expire_after_secs = req.expire_after_secs.unwrap_or(s.expire_after_secs);
    s.escalation_channel = req.escalation_channel;
    s.escalation_approvers = req.escalation_approvers;
    (s.approver_groups, s.people) = people_and_groups(req.approver_groups, req.people)?;
    let approvers = json!({
        "approvers": s.approvers, "escalation_approvers": s.escalation_approvers,
        "approval_channel": s.approval_channel, "approver_groups": s.approver_groups,
        "people": s.people.len(),
    });
    let secrets = vec![
        (secret_names::SLACK_BOT_TOKEN, secret(req.bot_token)),
        (
            secret_names::SLACK_SIGNING_SECRET,
            secret(req.signing_secret),
        ),
    ];
    let settings = serde_json::to_value(s).map_err(internal)?;
    apply_connector(&state, &admin, "slack", settings, secrets, approvers).await
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct LlmBody {
    #[schema(pattern = "^[!#-\\[\\]-~]{1,64}$")]
    provider: String,
    #[schema(pattern = "^[!#-\\[\\]-~]{1,200}$")]
    model: String,
    #[schema(
        pattern = "^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[!-~]*)?$",
        max_length = 2048
    )]
    base_url: String,
    #[serde(default)]
    #[schema(minimum = 0, maximum = 2)]
    temperature: Option<f32>,
    #[serde(default)]
    #[schema(minimum = 1, maximum = 200000)]
    max_tokens: Option<u32>,
    #[serde(default)]
    api_key: Option<String>,
}

/// `PUT /v1/tenant/connectors/llm` (admin): provider, model, base URL and key.
#[utoipa::path(put, path = "/v1/tenant/connectors/llm", tag = "tenant",
    request_body(content = LlmBody, description = "Provider, model, base URL and key (write-only)"),
    responses(
        (status = 200, description = "Stored; the tenant restarts with it", body = crate::openapi::ConnectorSet),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthenticated),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 413, response = crate::openapi::TooLarge),
        (status = 422, response = crate::openapi::Unprocessable),
        (status = 500, response = crate::openapi::Internal),
    ),
    security(("tenantToken" = ["admin"])))]
pub(crate) async fn put_llm(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let admin = admin(&state, &headers).await?;
    let req: LlmBody = json_body(&headers, body).await?;
    check_word(&req.provider, "provider", 64)?;
    check_word(&req.model, "model", 200)?;
    check_url(&req.base_url, "base_url")?;
    check_egress(&state, &admin, EgressKind::Llm, &req.base_url)?;
    let temperature = req.temperature.unwrap_or(0.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::Unprocessable(
            "`temperature` must be between 0 and 2".into(),
        ));
    }
    let max_tokens = req.max_tokens.unwrap_or(1024);
    if !(1..=200_000).contains(&max_tokens) {
        return Err(ApiError::Unprocessable(
            "`max_tokens` must be 1 to 200000".into(),
        ));
    }
    let settings = LlmConfig {
        provider: req.provider,
        base_url: req.base_url,
        model: req.model,
        temperature,
        max_tokens,
    };
    let secrets = vec![(secret_names::LLM_API_KEY, secret(req.api_key))];
    let settings = serde_json::to_value(settings).map_err(internal)?;
    apply_connector(&state, &admin, "llm", settings, secrets, json!({})).await
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct PolicyBody {
    cedar: String,
}

/// `PUT /v1/tenant/policy` (admin): the tenant's Cedar policies; 422 with Cedar's message
/// when they do not validate.
#[utoipa::path(put, path = "/v1/tenant/policy", tag = "tenant",
    request_body(content = PolicyBody),
    responses(
        (status = 200, description = "Stored", body = crate::openapi::PolicySet),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthenticated),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 413, response = crate::openapi::TooLarge),
        (status = 422, response = crate::openapi::Unprocessable),
        (status = 500, response = crate::openapi::Internal),
    ),
    security(("tenantToken" = ["admin"])))]
pub(crate) async fn put_policy(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let admin = admin(&state, &headers).await?;
    let req: PolicyBody = json_body(&headers, body).await?;
    PolicyGate::new(Some(&req.cedar))
        .map_err(|e| ApiError::Unprocessable(format!("the policy does not validate: {e}")))?;
    let sha = digest(&req.cedar);
    let audit = draft("policy.set", &admin.actor, json!({ "policy_sha256": sha }));
    state
        .store
        .set_tenant_section(&admin.scope, "policy", Some(json!(req.cedar)), audit)
        .await?;
    reload(&state, admin.scope.tenant()).await;
    Ok(Json(json!({ "policy_sha256": sha })))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct SourceBody {
    name: String,
    /// How the sender signs: `standard-webhooks` (the default), `slack` or `stripe`.
    #[serde(default)]
    scheme: Option<String>,
    /// The secret the sender already holds (a Slack app's signing secret, a Stripe endpoint
    /// secret); without it Steward generates one. Write-only: never answered back.
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    sys_id_pointers: Vec<String>,
    #[serde(default)]
    number_pointers: Vec<String>,
}

/// `POST /v1/tenant/sources` (admin): creates (or replaces, with a new secret) a webhook
/// source verified under the signature scheme it names (`standard-webhooks` when it names
/// none; an unknown name is 422).
///
/// The secret is the tenant's or Steward's. A `slack` sender is a Slack app, whose signing
/// secret Slack issues, and a Stripe endpoint's secret is issued by Stripe: the tenant
/// supplies those as `secret` (16 to 256 visible ASCII characters), and the answer does not
/// repeat it. Without one, Steward generates a secret of the scheme's shape and answers it
/// once: `whsec_` and base64 of 32 bytes for Standard Webhooks, 32 hex digits (Slack's shape)
/// for `slack`, `whsec_` and 32 letters and digits (Stripe's shape) for `stripe`. A supplied
/// Standard Webhooks secret must be a `whsec_` secret.
#[utoipa::path(post, path = "/v1/tenant/sources", tag = "tenant",
    request_body(content = SourceBody, example = json!({"name": "servicenow",
        "sys_id_pointers": ["/incident/sys_id"], "number_pointers": ["/incident/number"]})),
    responses(
        (status = 201, description = "Created, with its secret", body = crate::openapi::SourceCreated),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthenticated),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 413, response = crate::openapi::TooLarge),
        (status = 422, response = crate::openapi::Unprocessable),
        (status = 500, response = crate::openapi::Internal),
    ),
    security(("tenantToken" = ["admin"])))]
pub(crate) async fn create_source(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let admin = admin(&state, &headers).await?;
    let req: SourceBody = json_body(&headers, body).await?;
    let name = SourceName::parse(&req.name)
        .map_err(|e| ApiError::Unprocessable(format!("`name` is not a source name: {e}")))?;
    let scheme = match req.scheme.as_deref() {
        None => SignatureScheme::default(),
        Some(s) => SignatureScheme::parse(s)
            .map_err(|e| ApiError::Unprocessable(format!("`scheme`: {e}")))?,
    };
    let (value, generated) = source_secret(scheme, req.secret)?;
    let source = WebhookSource {
        secret_name: secret_names::webhook_source(name.as_str()),
        name,
        scheme: scheme.as_str().into(),
        sys_id_pointers: req.sys_id_pointers,
        number_pointers: req.number_pointers,
    };
    let version = state
        .store
        .put_secret(&admin.scope, &state.master_key, &source.secret_name, &value)
        .await?;
    state.store.upsert_source(&admin.scope, &source).await?;
    let audit = json!({
        "source": source.name, "scheme": source.scheme,
        "secret": { "name": source.secret_name, "version": version, "generated": generated },
        "sys_id_pointers": source.sys_id_pointers, "number_pointers": source.number_pointers,
    });
    state
        .store
        .append_audit(&admin.scope, draft("source.set", &admin.actor, audit))
        .await?;
    let url = format!("/v1/webhooks/{}/{}", admin.scope.tenant(), source.name);
    let mut answer = json!({
        "name": source.name, "url": url, "scheme": source.scheme, "secret_version": version,
    });
    if generated {
        answer["secret"] = json!(value.expose_secret());
    }
    Ok((StatusCode::CREATED, Json(answer)))
}

/// The secret of a source of `scheme`: the supplied one, checked against the scheme's shape
/// (422 saying what is wrong, never quoting it), or a generated one. Says which it is.
fn source_secret(
    scheme: SignatureScheme,
    supplied: Option<String>,
) -> Result<(SecretString, bool), ApiError> {
    match supplied {
        Some(value) => {
            check_webhook_secret(scheme, &value)?;
            Ok((SecretString::from(value), false))
        }
        None => Ok((SecretString::from(webhook::generate_secret(scheme)), true)),
    }
}

fn check_webhook_secret(scheme: SignatureScheme, value: &str) -> Result<(), ApiError> {
    webhook::check_secret(scheme, value).map_err(|e| {
        let why = match e {
            webhook::SignatureError::BadSecret(why) => why,
            other => other.to_string(),
        };
        ApiError::Unprocessable(format!("not a usable {scheme} secret: {why}"))
    })
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct SecretBody {
    value: String,
}

/// The secret names an admin may set directly.
fn settable_secret(name: &str) -> bool {
    const FIXED: [&str; 6] = [
        secret_names::SERVICENOW_CLIENT_SECRET,
        secret_names::SERVICENOW_PASSWORD,
        secret_names::SERVICENOW_REFRESH_TOKEN,
        secret_names::SLACK_BOT_TOKEN,
        secret_names::SLACK_SIGNING_SECRET,
        secret_names::LLM_API_KEY,
    ];
    FIXED.contains(&name)
        || name
            .strip_prefix("webhook.")
            .is_some_and(|s| SourceName::parse(s).is_ok())
}

/// `PUT /v1/tenant/secrets/{name}` (admin): seals a new version of one secret (a rotation);
/// answers its version.
#[utoipa::path(put, path = "/v1/tenant/secrets/{name}", tag = "tenant",
    params(("name" = String, Path, description = "`servicenow.client_secret`, `servicenow.password`, \
        `servicenow.refresh_token`, `slack.bot_token`, `slack.signing_secret`, `llm.api_key` or `webhook.<source>`")),
    request_body(content = SecretBody),
    responses(
        (status = 200, description = "Sealed", body = crate::openapi::SecretSet),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthenticated),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 413, response = crate::openapi::TooLarge),
        (status = 404, response = crate::openapi::NotFound),
        (status = 422, response = crate::openapi::Unprocessable),
        (status = 500, response = crate::openapi::Internal),
    ),
    security(("tenantToken" = ["admin"])))]
pub(crate) async fn put_secret(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let admin = admin(&state, &headers).await?;
    if !settable_secret(&name) {
        return Err(ApiError::NotFound);
    }
    let req: SecretBody = json_body(&headers, body).await?;
    if let Some(source) = name.strip_prefix("webhook.") {
        // The value must suit the source's scheme; a secret set ahead of its source is taken
        // to be for Standard Webhooks, the scheme of a source created without naming one.
        let source = SourceName::parse(source).map_err(|_| ApiError::NotFound)?;
        let scheme = match state.store.source(&admin.scope, &source).await? {
            Some(s) => SignatureScheme::parse(&s.scheme).map_err(internal)?,
            None => SignatureScheme::default(),
        };
        check_webhook_secret(scheme, &req.value)?;
    }
    let versions = seal_all(&state, &admin, vec![(&name, secret(Some(req.value)))]).await?;
    let audit = json!({ "secret": name, "version": versions[&name]["version"] });
    state
        .store
        .append_audit(&admin.scope, draft("secret.set", &admin.actor, audit))
        .await?;
    reload(&state, admin.scope.tenant()).await;
    Ok(Json(json!({ "secret": name, "status": versions[&name] })))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    label: String,
    scopes: Vec<String>,
    #[serde(default)]
    expires_in_secs: Option<u64>,
}

/// `POST /v1/tenant/tokens` (admin): issues a token; its value is in this answer only.
#[utoipa::path(post, path = "/v1/tenant/tokens", tag = "tenant",
    request_body(content = TokenBody, example = json!({"label": "ci", "scopes": ["runs:read"], "expires_in_secs": 86400})),
    responses(
        (status = 201, description = "Issued, with its value", body = crate::openapi::TokenIssued),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthenticated),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 413, response = crate::openapi::TooLarge),
        (status = 422, response = crate::openapi::Unprocessable),
        (status = 500, response = crate::openapi::Internal),
    ),
    security(("tenantToken" = ["admin"])))]
pub(crate) async fn create_token(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let admin = admin(&state, &headers).await?;
    let req: TokenBody = json_body(&headers, body).await?;
    if req.scopes.is_empty()
        || req
            .scopes
            .iter()
            .any(|s| !TOKEN_SCOPES.contains(&s.as_str()))
    {
        return Err(ApiError::Unprocessable(format!(
            "`scopes` must name at least one of {}",
            TOKEN_SCOPES.join(", ")
        )));
    }
    let expires_at = match req.expires_in_secs {
        None => None,
        Some(secs @ 1..=MAX_TOKEN_LIFETIME_SECS) => {
            let ms = i64::try_from(secs * 1000).map_err(internal)?;
            Some(state.store.clock().now_millis() + ms)
        }
        Some(_) => {
            return Err(ApiError::Unprocessable(format!(
                "`expires_in_secs` must be 1 to {MAX_TOKEN_LIFETIME_SECS}"
            )));
        }
    };
    let value = generate_api_token();
    let token = NewToken {
        value: &value,
        label: &req.label,
        scopes: &req.scopes,
        expires_at,
    };
    let info = state
        .store
        .issue_token(&admin.scope, token, &admin.actor)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "token": info, "value": value.expose_secret() })),
    ))
}

/// `GET /v1/tenant/tokens` (admin): the tenant's tokens, without values.
#[utoipa::path(get, path = "/v1/tenant/tokens", tag = "tenant",
    responses(
        (status = 200, description = "The tenant's tokens", body = crate::openapi::TokenList),
        (status = 401, response = crate::openapi::Unauthenticated),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 500, response = crate::openapi::Internal),
    ),
    security(("tenantToken" = ["admin"])))]
pub(crate) async fn list_tokens(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let admin = admin(&state, &headers).await?;
    let tokens = state.store.list_tokens(&admin.scope).await?;
    Ok(Json(json!({ "tokens": tokens })))
}

/// `DELETE /v1/tenant/tokens/{id}` (admin): revokes one of the tenant's tokens; 404 for an
/// id that is unknown, revoked already or another tenant's.
#[utoipa::path(delete, path = "/v1/tenant/tokens/{id}", tag = "tenant",
    params(("id" = String, Path, description = "The token's public id, `tok_…`")),
    responses(
        (status = 200, description = "Revoked", body = crate::openapi::TokenRevoked),
        (status = 401, response = crate::openapi::Unauthenticated),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 500, response = crate::openapi::Internal),
    ),
    security(("tenantToken" = ["admin"])))]
pub(crate) async fn revoke_token(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let admin = admin(&state, &headers).await?;
    if !state
        .store
        .revoke_token(&admin.scope, &id, &admin.actor)
        .await?
    {
        return Err(ApiError::NotFound);
    }
    Ok(Json(json!({ "revoked": id })))
}

/// `POST /v1/tenant/check` (admin): tests each connection of the tenant with its stored
/// settings and secrets; each is `ok` or says what is wrong, never quoting a secret.
#[utoipa::path(post, path = "/v1/tenant/check", tag = "tenant",
    responses(
        (status = 200, description = "Each connection: ok, or what is wrong", body = crate::openapi::CheckReport),
        (status = 401, response = crate::openapi::Unauthenticated),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 500, response = crate::openapi::Internal),
    ),
    security(("tenantToken" = ["admin"])))]
pub(crate) async fn check(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let admin = admin(&state, &headers).await?;
    let record = state
        .store
        .tenant(&admin.scope)
        .await?
        .ok_or(ApiError::NotFound)?;
    let report = crate::tenancy_check::run(&state, &admin.scope, &record.settings).await;
    Ok(Json(report))
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_known_secret_names_are_settable() {
        assert!(settable_secret("llm.api_key"));
        assert!(settable_secret("webhook.servicenow"));
        for bad in [
            "",
            "llm.api_key2",
            "webhook.",
            "webhook.../x",
            "webhook.UPPER case",
            "other",
        ] {
            assert!(!settable_secret(bad), "{bad:?}");
        }
    }

    #[test]
    fn urls_must_be_http_with_a_host() {
        assert!(check_url("https://acme.service-now.com", "u").is_ok());
        assert!(check_url("http://127.0.0.1:9/api/", "u").is_ok());
        let long = format!("https://a.com/{}", "x".repeat(3000));
        for bad in ["", "ftp://a.com", "not a url", "/relative", long.as_str()] {
            assert!(check_url(bad, "u").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn words_refuse_controls_quotes_and_oversize() {
        assert!(check_word("C123", "c", 64).is_ok());
        for bad in ["", "a b", "a\"b", "a\nb", &"x".repeat(65)] {
            assert!(check_word(bad, "c", 64).is_err(), "{bad:?}");
        }
    }
}
/// How long a rotated webhook secret keeps verifying when the request names no expiry.
const DEFAULT_OVERLAP_SECS: i64 = 7 * 24 * 3600;

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RotateBody {
    /// When the superseded secret stops verifying, in Unix seconds.
    #[serde(default)]
    old_expires_at: Option<i64>,
    /// The new secret, when the sender issues it (a Slack app's regenerated signing secret, a
    /// Stripe endpoint's rolled secret); without it Steward generates one.
    #[serde(default)]
    secret: Option<String>,
}

/// `POST /v1/tenant/sources/{name}/rotate` (admin): gives the source a new secret, of its
/// scheme's shape: the supplied `secret`, or a generated one shown once in this answer (see
/// [`create_source`]). The old one keeps verifying until `old_expires_at` (default: 7 days
/// from now), under the same scheme. The store audits the rotation, without either value.
#[utoipa::path(post, path = "/v1/tenant/sources/{name}/rotate", tag = "tenant",
    params(("name" = String, Path, description = "The source's name")),
    request_body(content = Option<RotateBody>, example = json!({"old_expires_at": 1767225600})),
    responses(
        (status = 200, description = "Rotated, with the new secret", body = crate::openapi::SourceRotated),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthenticated),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 413, response = crate::openapi::TooLarge),
        (status = 422, response = crate::openapi::Unprocessable),
        (status = 500, response = crate::openapi::Internal),
    ),
    security(("tenantToken" = ["admin"])))]
pub(crate) async fn rotate_source(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let admin = admin(&state, &headers).await?;
    let name = SourceName::parse(&name).map_err(|_| ApiError::NotFound)?;
    let source = state
        .store
        .source(&admin.scope, &name)
        .await?
        .ok_or(ApiError::NotFound)?;
    let bytes = read_body(body, &headers, MAX_BODY_BYTES).await?;
    let req: RotateBody = if bytes.is_empty() {
        RotateBody::default()
    } else {
        crate::error::json_object(&bytes)?
    };
    let now = state.store.clock().now_secs();
    let expires = req.old_expires_at.unwrap_or(now + DEFAULT_OVERLAP_SECS);
    if expires < now || expires > now + 365 * 24 * 3600 {
        return Err(ApiError::Unprocessable(
            "`old_expires_at` must be between now and one year from now".into(),
        ));
    }
    let scheme = SignatureScheme::parse(&source.scheme).map_err(internal)?;
    let (value, generated) = source_secret(scheme, req.secret)?;
    let version = state
        .store
        .rotate_secret(
            &admin.scope,
            &state.master_key,
            &source.secret_name,
            &value,
            expires.saturating_mul(1000),
            &admin.actor,
        )
        .await?;
    let mut answer = json!({
        "name": source.name, "scheme": source.scheme, "secret_version": version,
        "old_expires_at": expires,
    });
    if generated {
        answer["secret"] = json!(value.expose_secret());
    }
    Ok(Json(answer))
}
