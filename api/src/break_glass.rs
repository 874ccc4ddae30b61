//! Break-glass operator access and the operator audit log over HTTP.
//!
//! The holder of the operator token (the sealed emergency credential) opens a grant for one
//! named person, with a reason, for 1 to 240 minutes: `POST /v1/ops/break-glass`. The answer
//! carries the grant's token (`sbg_` and 64 hex digits) once; only its SHA-256 is stored. While
//! the grant is in force, its token is accepted on the ops API as that person with the
//! `operator` role ([`grant_for`], called by the ops identity). Every request that presents a
//! live grant is an operator audit entry (`break_glass.used`: person, reason, method, path,
//! status), written by [`audit_uses`] after the answer is made. A grant presented after its
//! expiry is 401 and its first such refusal is recorded (`break_glass.expired`); a closed one
//! (`DELETE /v1/ops/break-glass/{id}`) is 401 too. `GET /v1/ops/audit` reads the operator
//! audit log, and with `?verify=true` verifies its chain.
//!
//! Limits, plainly: a grant's use is audited after its handler ran, so a request whose entry
//! cannot be written (the database failing at that moment) has happened unaudited, and that
//! failure is logged. Grants are checked against the store's clock.

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rand::RngCore;
use rand::rngs::OsRng;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use steward_persistence::{
    BreakGlassUse, GrantState, MAX_GRANT_MINUTES, NewBreakGlass, OperatorAuditEntry, StoreError,
};
use subtle::ConstantTimeEq;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::ToSchema;

pub(crate) use steward_persistence::BreakGlassGrant;

use crate::error::ApiError;
use crate::ops;
use crate::ops_auth::{self, Action};
use crate::state::AppState;
use crate::webhooks::read_body;

/// The prefix of a grant token.
pub(crate) const TOKEN_PREFIX: &str = "sbg_";
/// Hex digits after the prefix: 32 random bytes.
const TOKEN_HEX: usize = 64;
/// A grant's length when the body names none, in minutes.
pub(crate) const DEFAULT_MINUTES: u32 = 60;
/// A reason's bounds, in characters.
const MIN_REASON_CHARS: usize = 10;
const MAX_REASON_CHARS: usize = 1000;
/// A person's name: at most this many characters.
const MAX_PERSON_CHARS: usize = 128;
/// The largest body `POST /v1/ops/break-glass` reads.
const MAX_BODY_BYTES: usize = 8 * 1024;
/// The longest path an audit entry of a use keeps.
const MAX_AUDITED_PATH: usize = 512;
/// Entries one `GET /v1/ops/audit` returns when no limit is asked for, and at most.
const DEFAULT_AUDIT_LIMIT: u32 = 100;
const MAX_AUDIT_LIMIT: u32 = 1000;

/// Whether `token` has a grant token's shape: `sbg_` and 64 lowercase hex digits.
pub(crate) fn token_shaped(token: &str) -> bool {
    token.len() == TOKEN_PREFIX.len() + TOKEN_HEX
        && token.strip_prefix(TOKEN_PREFIX).is_some_and(|rest| {
            rest.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
}

fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    OsRng.fill_bytes(&mut buf);
    hex::encode(buf)
}

/// The grant whose token `bearer` is, when it is in force now. None when `bearer` is not
/// `sbg_`-shaped, is unknown (the stored hash is compared in constant time), or names a
/// grant that is closed or expired; the first refusal of an expired grant appends
/// `break_glass.expired`.
pub(crate) async fn grant_for(
    state: &AppState,
    bearer: &str,
) -> Result<Option<BreakGlassGrant>, ApiError> {
    resolve(state, bearer, "-", "-").await
}

/// [`grant_for`], naming the refused request in a `break_glass.expired` entry.
async fn resolve(
    state: &AppState,
    bearer: &str,
    method: &str,
    path: &str,
) -> Result<Option<BreakGlassGrant>, ApiError> {
    if !token_shaped(bearer) {
        return Ok(None);
    }
    let presented = sha256_hex(bearer);
    let Some((grant, stored)) = state.store.break_glass_by_token_sha256(&presented).await? else {
        return Ok(None);
    };
    if !bool::from(presented.as_bytes().ct_eq(stored.as_bytes())) {
        return Ok(None);
    }
    match grant.state(state.store.clock().now_millis()) {
        GrantState::Active => Ok(Some(grant)),
        GrantState::Closed => Ok(None),
        GrantState::Expired => {
            if state
                .store
                .note_break_glass_expired(&grant.id, method, path)
                .await?
            {
                tracing::warn!(grant = %grant.id, person = %grant.person,
                    "An expired break-glass grant was presented and refused.");
            }
            Ok(None)
        }
    }
}

/// Middleware: audits every request that presents a live grant, after its answer is made
/// (`break_glass.used` with method, path and status). Requests without a grant pass untouched.
pub(crate) async fn audit_uses(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let Some(token) = ops_auth::bearer(req.headers()).filter(|t| t.starts_with(TOKEN_PREFIX))
    else {
        return next.run(req).await;
    };
    let method: String = req.method().as_str().chars().take(16).collect();
    let path = clip_path(req.uri().path());
    let grant = match resolve(&state, token, &method, &path).await {
        Ok(grant) => grant,
        Err(e) => return e.into_response(),
    };
    let response = next.run(req).await;
    if let Some(grant) = grant {
        let used = BreakGlassUse {
            method,
            path,
            status: response.status().as_u16(),
        };
        match state.store.record_break_glass_use(&grant.id, &used).await {
            Ok(_) => tracing::warn!(grant = %grant.id, person = %grant.person,
                method = %used.method, path = %used.path, status = used.status,
                "A break-glass grant was used."),
            Err(e) => tracing::error!(grant = %grant.id, error = %e,
                "A break-glass use could not be audited."),
        }
    }
    response
}

fn clip_path(path: &str) -> String {
    let mut end = path.len().min(MAX_AUDITED_PATH);
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    path[..end].to_owned()
}

/// `{"person", "reason", "minutes"?}`: a grant to open.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct OpenBody {
    /// Who the access is for (1 to 128 characters, no control characters).
    person: String,
    /// Why (10 to 1000 characters).
    reason: String,
    /// How long it lasts, 1 to 240 minutes; 60 when absent.
    #[serde(default)]
    #[schema(value_type = Option<u32>, minimum = 1, maximum = 240)]
    minutes: Option<Value>,
}

impl OpenBody {
    fn check(&self) -> Result<u32, ApiError> {
        let person = self.person.trim();
        if person.is_empty()
            || person.chars().count() > MAX_PERSON_CHARS
            || person.chars().any(char::is_control)
        {
            return Err(ApiError::Unprocessable(format!(
                "`person` must be 1 to {MAX_PERSON_CHARS} characters without control characters"
            )));
        }
        let reason = self.reason.trim().chars().count();
        if !(MIN_REASON_CHARS..=MAX_REASON_CHARS).contains(&reason) {
            return Err(ApiError::Unprocessable(format!(
                "`reason` must be {MIN_REASON_CHARS} to {MAX_REASON_CHARS} characters; \
                 it has {reason}"
            )));
        }
        if self.reason.chars().any(|c| c.is_control() && c != '\n') {
            return Err(ApiError::Unprocessable(
                "`reason` must not contain control characters".into(),
            ));
        }
        let minutes = match &self.minutes {
            None | Some(Value::Null) => Some(DEFAULT_MINUTES),
            Some(Value::Number(n)) => n.as_u64().and_then(|m| u32::try_from(m).ok()),
            Some(_) => None,
        };
        match minutes {
            Some(m) if (1..=MAX_GRANT_MINUTES).contains(&m) => Ok(m),
            _ => Err(ApiError::Unprocessable(format!(
                "`minutes` must be a whole number from 1 to {MAX_GRANT_MINUTES}"
            ))),
        }
    }
}

/// A grant just opened, for the document.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct BreakGlassOpened {
    /// `bg_…`.
    id: String,
    /// `sbg_` and 64 hex digits: shown in this answer only.
    token: String,
    person: String,
    reason: String,
    /// Unix ms.
    opened_at: i64,
    /// Unix ms.
    expires_at: i64,
    /// The expiry, RFC 3339.
    expires: String,
}

/// A grant as listed, without its token, for the document.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct GrantView {
    id: String,
    person: String,
    reason: String,
    /// Who opened it.
    opened_by: String,
    opened_at: i64,
    expires_at: i64,
    closed_at: Option<i64>,
    closed_by: Option<String>,
    /// Requests it authenticated.
    uses: u64,
    /// `active`, `expired` or `closed`.
    state: String,
}

/// The grants, newest first, for the document.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct BreakGlassList {
    grants: Vec<GrantView>,
}

/// A page of the operator audit log, or (with `verify=true`) its verification report, for
/// the document.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct OperatorAuditPage {
    /// Each `{seq, at, kind, actor, detail, prev_hash, hash}`.
    #[schema(value_type = Option<Vec<Object>>)]
    entries: Option<Vec<String>>,
    /// The `after` of the next page; null on the last.
    next: Option<u64>,
    /// `{entries, head_hash, first_bad: {seq, reason} | null}`.
    #[schema(value_type = Option<Object>)]
    verify: Option<String>,
}

/// The body as a JSON object of the known fields (serde would also take a struct from an
/// array of its values; that is refused here).
fn parse_open_body(bytes: &[u8]) -> Result<OpenBody, ApiError> {
    let bad = |e: serde_json::Error| ApiError::BadRequest(format!("invalid request body: {e}"));
    let value: Value = serde_json::from_slice(bytes).map_err(bad)?;
    if !value.is_object() {
        return Err(ApiError::BadRequest(
            "invalid request body: expected a JSON object {\"person\", \"reason\", \"minutes\"}"
                .into(),
        ));
    }
    serde_json::from_value(value).map_err(bad)
}

/// A grant as listed, without its token.
fn grant_json(g: &BreakGlassGrant, now: i64) -> Value {
    json!({
        "id": g.id,
        "person": g.person,
        "reason": g.reason,
        "opened_by": g.opened_by,
        "opened_at": g.opened_at,
        "expires_at": g.expires_at,
        "closed_at": g.closed_at,
        "closed_by": g.closed_by,
        "uses": g.uses,
        "state": g.state(now),
    })
}

fn rfc3339(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

fn store_conflict(e: StoreError) -> ApiError {
    match e {
        StoreError::Conflict(why) => ApiError::Conflict(why),
        other => other.into(),
    }
}

/// `POST /v1/ops/break-glass` with `{"person", "reason", "minutes"?}`: opens a grant. Only the
/// operator token may (a session, an ID token or a grant is 403, a tenant token 403).
#[utoipa::path(post, path = "/v1/ops/break-glass", tag = "ops", operation_id = "open_break_glass",
    request_body(content = OpenBody,
        example = json!({"person": "ana@example.com",
            "reason": "identity provider down during the P1 on INC0012345", "minutes": 60})),
    responses(
        (status = 201, description = "The grant, with its token (shown once)",
            body = BreakGlassOpened),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthenticated),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 413, response = crate::openapi::TooLarge),
        (status = 422, response = crate::openapi::Unprocessable),
        (status = 500, response = crate::openapi::Internal),
    ),
    security(("operatorToken" = [])))]
pub(crate) async fn open(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    match ops_auth::bearer(&headers) {
        Some(t) if state.ops.token_matches(t) => {}
        Some(_) | None => {
            // Whoever else it is (a person, a session, a grant, a tenant) is told it is the
            // wrong credential, once it is known to be a credential at all.
            ops::authorize(&state, &headers, Action::BreakGlass).await?;
            return Err(ApiError::Forbidden("operator_token"));
        }
    }
    let bytes = read_body(body, &headers, MAX_BODY_BYTES).await?;
    let body = parse_open_body(&bytes)?;
    let minutes = body.check()?;
    let token = SecretString::from(format!("{TOKEN_PREFIX}{}", random_hex(TOKEN_HEX / 2)));
    let new = NewBreakGlass {
        id: format!("bg_{}", random_hex(8)),
        token_sha256: sha256_hex(token.expose_secret()),
        person: body.person.trim().to_owned(),
        reason: body.reason.trim().to_owned(),
        opened_by: "operator".into(),
        minutes,
    };
    let grant = state
        .store
        .open_break_glass(&new)
        .await
        .map_err(store_conflict)?;
    tracing::warn!(grant = %grant.id, person = %grant.person, minutes,
        "A break-glass grant was opened.");
    let answer = json!({
        "id": grant.id,
        "token": token.expose_secret(),
        "person": grant.person,
        "reason": grant.reason,
        "opened_at": grant.opened_at,
        "expires_at": grant.expires_at,
        "expires": rfc3339(grant.expires_at),
    });
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

/// `GET /v1/ops/break-glass`: the newest 1000 grants in every state, without tokens.
#[utoipa::path(get, path = "/v1/ops/break-glass", tag = "ops", operation_id = "list_break_glass",
    responses(
        (status = 200, description = "The grants", body = BreakGlassList),
        (status = 401, response = crate::openapi::Unauthenticated),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 500, response = crate::openapi::Internal),
    ),
    security(("operatorToken" = []), ("opsSession" = []), ("oidcIdToken" = []),
        ("breakGlassGrant" = [])))]
pub(crate) async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    ops::authorize(&state, &headers, Action::PlatformRead).await?;
    let grants = state.store.break_glass_grants(1000).await?;
    let now = state.store.clock().now_millis();
    let listed: Vec<Value> = grants.iter().map(|g| grant_json(g, now)).collect();
    Ok(Json(json!({ "grants": listed })))
}

/// `DELETE /v1/ops/break-glass/{id}`: closes a grant before its expiry; 409 when it is closed
/// or expired already.
#[utoipa::path(delete, path = "/v1/ops/break-glass/{id}", tag = "ops",
    operation_id = "close_break_glass",
    params(("id" = String, Path, description = "The grant id (`bg_…`)")),
    responses(
        (status = 200, description = "The closed grant", body = GrantView),
        (status = 401, response = crate::openapi::Unauthenticated),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 409, response = crate::openapi::Conflict),
        (status = 500, response = crate::openapi::Internal),
    ),
    security(("operatorToken" = []), ("opsSession" = []), ("oidcIdToken" = []),
        ("breakGlassGrant" = [])))]
pub(crate) async fn close(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let caller = ops::authorize(&state, &headers, Action::BreakGlass).await?;
    if id.is_empty() || id.len() > 64 || id.chars().any(char::is_control) {
        return Err(ApiError::NotFound);
    }
    let actor = match caller.principal.person() {
        Some(person) => person.audit_name(),
        None => "operator".to_owned(),
    };
    let grant = state
        .store
        .close_break_glass(&id, &actor)
        .await
        .map_err(store_conflict)?;
    tracing::warn!(grant = %grant.id, person = %grant.person, %actor,
        "A break-glass grant was closed.");
    let now = state.store.clock().now_millis();
    Ok(Json(grant_json(&grant, now)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuditQuery {
    #[serde(default)]
    after: Option<u64>,
    #[serde(default)]
    limit: Option<u32>,
    #[serde(default)]
    verify: Option<bool>,
}

fn entry_json(e: &OperatorAuditEntry) -> Value {
    json!({
        "seq": e.seq,
        "at": e.at,
        "kind": e.kind,
        "actor": e.actor,
        "detail": serde_json::from_str::<Value>(&e.detail)
            .unwrap_or(Value::String(e.detail.clone())),
        "prev_hash": e.prev_hash,
        "hash": e.hash,
    })
}

/// `GET /v1/ops/audit?after=&limit=&verify=`: the operator audit log in seq order after
/// `after` (default 0), at most `limit` (default 100, at most 1000) entries; with
/// `verify=true`, the verification report of the whole chain instead.
#[utoipa::path(get, path = "/v1/ops/audit", tag = "ops", operation_id = "operator_audit",
    params(
        ("after" = Option<u64>, Query, description = "Entries with seq above this (default 0)"),
        ("limit" = Option<u32>, Query,
            description = "At most this many (default 100, at most 1000)"),
        ("verify" = Option<bool>, Query,
            description = "Answer the chain's verification report instead"),
    ),
    responses(
        (status = 200, description = "A page of entries, or the verification report",
            body = OperatorAuditPage),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthenticated),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 500, response = crate::openapi::Internal),
    ),
    security(("operatorToken" = []), ("opsSession" = []), ("oidcIdToken" = []),
        ("breakGlassGrant" = [])))]
pub(crate) async fn audit(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    ops::authorize(&state, &headers, Action::PlatformRead).await?;
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    if query.verify == Some(true) {
        let report = state.store.verify_operator_audit().await?;
        return Ok(Json(json!({ "verify": report })));
    }
    let limit = query.limit.unwrap_or(DEFAULT_AUDIT_LIMIT);
    if !(1..=MAX_AUDIT_LIMIT).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "`limit` must be 1 to {MAX_AUDIT_LIMIT}"
        )));
    }
    let entries = state
        .store
        .operator_audit(query.after.unwrap_or(0), limit)
        .await?;
    let next = (entries.len() == limit as usize)
        .then(|| entries.last().map(|e| e.seq))
        .flatten();
    let listed: Vec<Value> = entries.iter().map(entry_json).collect();
    Ok(Json(json!({ "entries": listed, "next": next })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_prefixed_hex_of_the_right_length_is_token_shaped() {
        let good = format!("sbg_{}", "0a".repeat(32));
        assert!(token_shaped(&good));
        for bad in [
            String::new(),
            "sbg_".into(),
            format!("sbg_{}", "0A".repeat(32)),
            format!("sbg_{}", "0a".repeat(33)),
            format!("stw_{}", "0a".repeat(32)),
            format!("sbg_{}g", "0a".repeat(31)),
            format!("sbg_{}é", "a".repeat(62)),
        ] {
            assert!(!token_shaped(&bad), "{bad}");
        }
    }

    #[test]
    fn bodies_are_held_to_their_bounds() {
        let body = |person: &str, reason: &str, minutes: Option<Value>| OpenBody {
            person: person.into(),
            reason: reason.into(),
            minutes,
        };
        assert_eq!(body("ana", "database failover", None).check().unwrap(), 60);
        assert_eq!(
            body("ana", &"r".repeat(1000), Some(json!(240)))
                .check()
                .unwrap(),
            240
        );
        for bad in [
            body("", "database failover", None),
            body(" ", "database failover", None),
            body("a\u{7}", "database failover", None),
            body(&"a".repeat(129), "database failover", None),
            body("ana", "too short", None),
            body("ana", &"r".repeat(1001), None),
            body("ana", "database\u{1b} failover", None),
            body("ana", "database failover", Some(json!(0))),
            body("ana", "database failover", Some(json!(241))),
            body("ana", "database failover", Some(json!(-5))),
            body("ana", "database failover", Some(json!(1.5))),
            body("ana", "database failover", Some(json!("60"))),
            body("ana", "database failover", Some(json!(u64::MAX))),
        ] {
            assert!(
                matches!(bad.check(), Err(ApiError::Unprocessable(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn only_an_object_body_is_read() {
        assert!(parse_open_body(br#"{"person": "ana", "reason": "database failover"}"#).is_ok());
        for bad in [
            &br#"["ana", "database failover"]"#[..],
            b"null",
            b"42",
            b"",
            b"{",
            br#"{"person": "ana", "reason": "database failover", "extra": 1}"#,
        ] {
            assert!(
                matches!(parse_open_body(bad), Err(ApiError::BadRequest(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn audited_paths_are_clipped_on_a_character_boundary() {
        assert_eq!(clip_path("/v1/ops/runs"), "/v1/ops/runs");
        let long = format!("/{}", "é".repeat(600));
        let clipped = clip_path(&long);
        assert!(clipped.len() <= MAX_AUDITED_PATH && long.starts_with(&clipped));
    }
}
