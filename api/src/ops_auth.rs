//! Who may use the ops API and page, and as whom.
//!
//! A caller is a [`Principal`]: the holder of the static operator token from the config, or a
//! [`Person`] with roles, signed in through OpenID Connect (a page session opened by the
//! code flow, or `Authorization: Bearer <ID token>`), or holding a break-glass grant
//! (`Bearer sbg_…`, role `operator`, kept with its grant id). What each role may do is the one
//! table in [`Role::allows`]; every ops handler asks [`Principal::permits`] through
//! `ops::authorize`.
//!
//! Without `[oidc]` the operator token works everywhere as it always has (dev, the demo).
//! With `[oidc]` it passes only [`Action::BreakGlass`], the grant flow's own step, so that a
//! lost identity provider still leaves a way in.
//!
//! The operator token: only its SHA-256 is held, and a presented token is compared with it in
//! constant time. A tenant API token never passes. Signing in on the page opens a session: a
//! random id in an HttpOnly, SameSite=Strict cookie (Secure behind a TLS proxy), held in memory
//! with an expiry, the principal it was opened for, and a CSRF token that the page sends in
//! `X-Steward-CSRF`. A POST authenticated by the cookie alone is refused without it; a GET is
//! protected by SameSite=Strict. The OIDC pre-login cookie is SameSite=Lax (the provider's
//! redirect back is a cross-site top-level GET) and lives ten minutes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue, header};
use rand::RngCore;
use rand::rngs::OsRng;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::expiring::ExpiringMap;
use crate::oidc::{Oidc, OidcError};
use crate::state::AppState;

/// The session cookie's name.
pub const COOKIE: &str = "steward_ops";
/// The OIDC pre-login cookie's name.
pub const PRE_LOGIN_COOKIE: &str = "steward_ops_login";
/// The header that carries a session's CSRF token.
pub const CSRF_HEADER: &str = "x-steward-csrf";
/// The shortest operator token accepted.
pub const MIN_TOKEN_BYTES: usize = 24;
/// The prefix of a break-glass grant token.
pub const BREAK_GLASS_PREFIX: &str = "sbg_";
/// Presented tokens longer than this are refused before hashing.
const MAX_TOKEN_BYTES: usize = 256;
/// The most sessions held at once; the oldest is dropped past this.
const MAX_SESSIONS: usize = 256;

/// A Steward role, granted by the role mapping from provider groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything under `/v1/ops` and `/ops`, the write pause and the platform routes.
    Operator,
    /// Reads the ops API and page; retries and cancels runs.
    Oncall,
    /// Reads the ops API and page.
    Approver,
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "operator" => Ok(Self::Operator),
            "oncall" => Ok(Self::Oncall),
            "approver" => Ok(Self::Approver),
            other => Err(format!(
                "unknown role `{other}`; expected operator, oncall or approver"
            )),
        }
    }
}

impl Role {
    /// The role's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Operator => "operator",
            Self::Oncall => "oncall",
            Self::Approver => "approver",
        }
    }

    /// The one table of what each role may do.
    pub fn allows(self, action: Action) -> bool {
        match self {
            Self::Operator => true,
            Self::Oncall => matches!(action, Action::Read | Action::RetryCancel),
            Self::Approver => matches!(action, Action::Read),
        }
    }
}

/// What an ops request does, for the role check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Reading the ops API or page (actors, runs, pauses).
    Read,
    /// Retrying or cancelling a run.
    RetryCancel,
    /// Pausing or resuming the platform's writes.
    Writes,
    /// Creating or offboarding tenants.
    Platform,
    /// Listing or exporting tenants.
    PlatformRead,
    /// Issuing a break-glass grant.
    BreakGlass,
}

impl Action {
    /// Whether the action changes something (a session then needs its CSRF token).
    pub fn changes(self) -> bool {
        !matches!(self, Self::Read | Self::PlatformRead)
    }
}

/// How a person proved who they are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "via", rename_all = "kebab-case")]
pub enum Via {
    /// An ID token from the identity provider.
    Oidc,
    /// A time-limited break-glass grant.
    BreakGlass { grant_id: String },
}

/// A signed-in person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Person {
    /// The provider's subject identifier (or the grant's named person).
    pub subject: String,
    pub email: Option<String>,
    pub name: Option<String>,
    /// Never empty: a person without a role is refused before a principal exists.
    pub roles: Vec<Role>,
    #[serde(flatten)]
    pub via: Via,
}

/// Characters an audited operator name may hold; others become `_`.
fn audit_safe(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl Person {
    /// The name audited for this person's decisions: the email (or, without one, the
    /// subject), at most 64 of the characters operator names allow.
    pub fn audit_name(&self) -> String {
        let who = self.email.as_deref().unwrap_or(&self.subject);
        audit_safe(who).chars().take(64).collect()
    }

    /// The full identity for the log and the operator audit: `sub`, email and how.
    pub fn describe(&self) -> String {
        let email = self.email.as_deref().unwrap_or("-");
        match &self.via {
            Via::Oidc => format!("sub={} email={email}", self.subject),
            Via::BreakGlass { grant_id } => {
                format!("sub={} email={email} break-glass={grant_id}", self.subject)
            }
        }
    }
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// The holder of the static operator token (or a session it opened).
    OperatorToken,
    /// A person, with roles.
    Person(Person),
}

impl Principal {
    /// Whether this principal may do `action`. The operator token may do everything when no
    /// identity provider is configured, and only [`Action::BreakGlass`] when one is.
    pub fn permits(&self, action: Action, oidc_configured: bool) -> bool {
        match self {
            Self::OperatorToken => !oidc_configured || action == Action::BreakGlass,
            Self::Person(p) => p.roles.iter().any(|r| r.allows(action)),
        }
    }

    /// The person, when the caller is one.
    pub fn person(&self) -> Option<&Person> {
        match self {
            Self::Person(p) => Some(p),
            Self::OperatorToken => None,
        }
    }
}

/// How ops sessions behave.
#[derive(Debug, Clone)]
pub struct OpsSettings {
    /// How long a session lasts after sign-in.
    pub session_ttl: Duration,
}

impl Default for OpsSettings {
    fn default() -> Self {
        Self {
            session_ttl: Duration::from_secs(8 * 3600),
        }
    }
}

/// The operator credential, the identity provider, and the open sessions.
pub struct OpsAuth {
    token_sha256: Option<[u8; 32]>,
    settings: OpsSettings,
    oidc: Option<Arc<Oidc>>,
    sessions: ExpiringMap<Session>,
}

impl std::fmt::Debug for OpsAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpsAuth")
            .field("configured", &self.token_sha256.is_some())
            .field("oidc", &self.oidc)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
struct Session {
    csrf: String,
    principal: Principal,
}

/// How a request proved who it is, and who that is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpsCaller {
    pub principal: Principal,
    /// The CSRF token of the page session it came with; None for a bearer token.
    pub session_csrf: Option<String>,
}

/// A session just opened: the cookie value and the page's CSRF token.
pub struct OpenedSession {
    pub id: SecretString,
    pub csrf: String,
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

impl OpsAuth {
    /// With the operator token `token` (None and no identity provider: the ops API refuses
    /// everyone).
    pub fn new(token: Option<&SecretString>, settings: OpsSettings) -> Self {
        Self {
            token_sha256: token.map(|t| sha256(t.expose_secret().as_bytes())),
            settings,
            oidc: None,
            sessions: ExpiringMap::new(MAX_SESSIONS),
        }
    }

    /// People sign in through `oidc`; the operator token then passes only the break-glass
    /// grant flow.
    pub fn with_oidc(mut self, oidc: Oidc) -> Self {
        self.oidc = Some(Arc::new(oidc));
        self
    }

    /// The identity provider, when `[oidc]` is configured.
    pub fn oidc(&self) -> Option<&Arc<Oidc>> {
        self.oidc.as_ref()
    }

    /// Whether anyone can sign in: an operator token or an identity provider is configured.
    pub fn configured(&self) -> bool {
        self.token_sha256.is_some() || self.oidc.is_some()
    }

    /// Whether `presented` is the operator token, in constant time.
    pub fn token_matches(&self, presented: &str) -> bool {
        let Some(expected) = &self.token_sha256 else {
            return false;
        };
        if presented.is_empty() || presented.len() > MAX_TOKEN_BYTES {
            return false;
        }
        bool::from(sha256(presented.as_bytes()).ct_eq(expected))
    }

    /// Opens a session for `principal`.
    pub fn open_session(&self, principal: Principal) -> OpenedSession {
        let id = random_hex();
        let csrf = random_hex();
        self.sessions.insert(
            &id,
            Session {
                csrf: csrf.clone(),
                principal,
            },
            Instant::now() + self.settings.session_ttl,
        );
        OpenedSession {
            id: SecretString::from(id),
            csrf,
        }
    }

    /// The CSRF token and principal of the live session `id`, if there is one.
    pub fn session(&self, id: &str) -> Option<(String, Principal)> {
        self.sessions.get(id).map(|s| (s.csrf, s.principal))
    }

    /// The CSRF token of the live session `id`, if there is one.
    pub fn session_csrf(&self, id: &str) -> Option<String> {
        self.session(id).map(|(csrf, _)| csrf)
    }

    /// Ends the session `id`.
    pub fn close_session(&self, id: &str) {
        self.sessions.remove(id);
    }

    /// The `Set-Cookie` value that carries session `id`.
    pub fn cookie(&self, id: &SecretString, secure: bool) -> HeaderValue {
        let max_age = self.settings.session_ttl.as_secs();
        let value = format!(
            "{COOKIE}={}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict{}",
            id.expose_secret(),
            if secure { "; Secure" } else { "" }
        );
        HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// The `Set-Cookie` value that removes the session cookie.
    pub fn clearing_cookie(secure: bool) -> HeaderValue {
        if secure {
            HeaderValue::from_static(
                "steward_ops=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict; Secure",
            )
        } else {
            HeaderValue::from_static("steward_ops=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict")
        }
    }

    /// The `Set-Cookie` value that carries a pre-login id to the OIDC callback.
    pub fn pre_login_cookie(id: &SecretString, secure: bool) -> HeaderValue {
        let value = format!(
            "{PRE_LOGIN_COOKIE}={}; Path=/ops/oidc; Max-Age={}; HttpOnly; SameSite=Lax{}",
            id.expose_secret(),
            crate::oidc::PRE_LOGIN_TTL.as_secs(),
            if secure { "; Secure" } else { "" }
        );
        HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// The `Set-Cookie` value that removes the pre-login cookie.
    pub fn clearing_pre_login_cookie(secure: bool) -> HeaderValue {
        if secure {
            HeaderValue::from_static(
                "steward_ops_login=; Path=/ops/oidc; Max-Age=0; HttpOnly; SameSite=Lax; Secure",
            )
        } else {
            HeaderValue::from_static(
                "steward_ops_login=; Path=/ops/oidc; Max-Age=0; HttpOnly; SameSite=Lax",
            )
        }
    }
}

/// The bearer token of a request, if it sent one.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

/// The value of cookie `name` in the request, if any.
pub fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, value)| value.to_owned())
}

/// The session id in the request's cookies, if any.
pub fn session_cookie(headers: &HeaderMap) -> Option<String> {
    cookie_value(headers, COOKIE)
}

/// Whether the request came over TLS: to the proxy in front of Steward, or to Steward's own TLS
/// listener, which sets this header on every request it received over TLS.
pub fn behind_tls(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"))
}

/// The caller from the operator token or a session cookie (with its CSRF header when
/// `unsafe_method`). Any other bearer token is 401 here; [`identify`] also knows ID tokens,
/// break-glass grants and tenant tokens.
pub fn caller(
    auth: &OpsAuth,
    headers: &HeaderMap,
    unsafe_method: bool,
) -> Result<OpsCaller, ApiError> {
    if let Some(token) = bearer(headers) {
        return if auth.token_matches(token) {
            Ok(OpsCaller {
                principal: Principal::OperatorToken,
                session_csrf: None,
            })
        } else {
            Err(ApiError::Unauthenticated)
        };
    }
    let id = session_cookie(headers).ok_or(ApiError::Unauthenticated)?;
    let (csrf, principal) = auth.session(&id).ok_or(ApiError::Unauthenticated)?;
    if unsafe_method {
        let sent = headers
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !bool::from(sent.as_bytes().ct_eq(csrf.as_bytes())) {
            return Err(ApiError::Forbidden("csrf"));
        }
    }
    Ok(OpsCaller {
        principal,
        session_csrf: Some(csrf),
    })
}

/// The one place a break-glass grant token (`sbg_…`) becomes a person: the grant's named
/// person with role `operator`, kept with the grant id for the audit. The grants themselves
/// (issue, expiry, closing, the audit of each use) are `break_glass`'s; a token that names no
/// grant in force is 401.
async fn break_glass_person(state: &AppState, token: &str) -> Result<Person, ApiError> {
    let grant = crate::break_glass::grant_for(state, token)
        .await?
        .ok_or(ApiError::Unauthenticated)?;
    Ok(Person {
        subject: grant.person.clone(),
        email: None,
        name: Some(grant.person),
        roles: vec![Role::Operator],
        via: Via::BreakGlass { grant_id: grant.id },
    })
}

/// Who is calling: a break-glass grant, the operator token, an ID token (with `[oidc]`), or a
/// page session. A bearer token that is none of these is 403 when it is a tenant's API token
/// and 401 otherwise; a valid ID token whose groups map to no role is 403.
pub(crate) async fn identify(
    state: &AppState,
    headers: &HeaderMap,
    unsafe_method: bool,
) -> Result<OpsCaller, ApiError> {
    let auth = &state.ops;
    let Some(token) = bearer(headers) else {
        return caller(auth, headers, unsafe_method);
    };
    let bearer_caller = |principal| OpsCaller {
        principal,
        session_csrf: None,
    };
    if token.starts_with(BREAK_GLASS_PREFIX) {
        return break_glass_person(state, token)
            .await
            .map(|p| bearer_caller(Principal::Person(p)));
    }
    if auth.token_matches(token) {
        return Ok(bearer_caller(Principal::OperatorToken));
    }
    if let Some(oidc) = auth.oidc()
        && crate::oidc::looks_like_jwt(token)
    {
        return match oidc.verify(token, None).await {
            Ok(person) => Ok(bearer_caller(Principal::Person(person))),
            Err(e) => Err(refused(e)),
        };
    }
    let tenant_token = !token.is_empty()
        && token.len() <= MAX_TOKEN_BYTES
        && state.store.authenticate_token(token).await?.is_some();
    Err(if tenant_token {
        ApiError::Forbidden("ops")
    } else {
        ApiError::Unauthenticated
    })
}

/// Records a page sign-in, or a refused one, with who it was (`sub`, email) or why it was
/// refused. The log always has it; this is also the one place where sign-ins reach the
/// operator audit log.
pub(crate) async fn audit_sign_in(state: &AppState, outcome: Result<&Person, &str>) {
    let (kind, actor, detail) = match outcome {
        Ok(person) => {
            tracing::info!(who = %person.describe(), "A person signed in to the ops page.");
            let roles: Vec<&str> = person.roles.iter().map(|r| r.as_str()).collect();
            (
                "oidc.signed_in",
                format!("person:{}", person.subject),
                serde_json::json!({
                    "sub": person.subject, "email": person.email, "name": person.name,
                    "roles": roles,
                }),
            )
        }
        Err(why) => {
            tracing::warn!(%why, "A sign-in to the ops page was refused.");
            let why: String = why.chars().take(500).collect();
            (
                "oidc.sign_in_refused",
                "anonymous".to_owned(),
                serde_json::json!({ "reason": why }),
            )
        }
    };
    if let Err(e) = state
        .store
        .append_operator_audit(kind, &actor, detail)
        .await
    {
        tracing::error!(error = %e, kind, "The operator audit entry of a sign-in could not be written.");
    }
}

/// The answer to a refused ID token: 401, 403 for a person without a role, 503 when the
/// provider cannot be reached. The reason goes to the log, not to the caller.
pub(crate) fn refused(e: OidcError) -> ApiError {
    tracing::warn!(error = %e, "An OIDC sign-in was refused.");
    match e {
        OidcError::Invalid(_) => ApiError::Unauthenticated,
        OidcError::NoRole { .. } => ApiError::Forbidden("role"),
        OidcError::Unavailable(why) => ApiError::Unavailable(why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "ops-token-0123456789abcdef-0123";

    fn auth() -> OpsAuth {
        OpsAuth::new(Some(&SecretString::from(TOKEN)), OpsSettings::default())
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, HeaderValue::from_str(value).unwrap());
        }
        h
    }

    #[test]
    fn only_the_operator_token_passes() {
        let auth = auth();
        assert!(auth.token_matches(TOKEN));
        for wrong in ["", "ops-token", &format!("{TOKEN}x"), &"a".repeat(10_000)] {
            assert!(!auth.token_matches(wrong), "{wrong}");
        }
        let off = OpsAuth::new(None, OpsSettings::default());
        assert!(!off.configured());
        assert!(!off.token_matches(TOKEN));
        let bearer = format!("Bearer {TOKEN}");
        assert_eq!(
            caller(&auth, &headers(&[("authorization", &bearer)]), true)
                .unwrap()
                .principal,
            Principal::OperatorToken
        );
        let other = caller(&auth, &headers(&[("authorization", "Bearer stw_x")]), false);
        assert!(matches!(other, Err(ApiError::Unauthenticated)));
        assert!(matches!(
            caller(&auth, &HeaderMap::new(), false),
            Err(ApiError::Unauthenticated)
        ));
    }

    #[test]
    fn a_session_cookie_passes_reads_and_needs_its_csrf_token_for_writes() {
        let auth = auth();
        let session = auth.open_session(Principal::OperatorToken);
        let cookie = format!("a=b; {COOKIE}={}; c=d", session.id.expose_secret());
        let read = headers(&[("cookie", &cookie)]);
        assert!(matches!(
            caller(&auth, &read, false),
            Ok(OpsCaller {
                session_csrf: Some(_),
                ..
            })
        ));
        assert!(matches!(
            caller(&auth, &read, true),
            Err(ApiError::Forbidden("csrf"))
        ));
        let bad = headers(&[("cookie", &cookie), (CSRF_HEADER, "0000")]);
        assert!(matches!(
            caller(&auth, &bad, true),
            Err(ApiError::Forbidden("csrf"))
        ));
        let good = headers(&[("cookie", &cookie), (CSRF_HEADER, &session.csrf)]);
        assert!(caller(&auth, &good, true).is_ok());

        auth.close_session(session.id.expose_secret());
        assert!(matches!(
            caller(&auth, &good, false),
            Err(ApiError::Unauthenticated)
        ));
    }

    #[test]
    fn sessions_expire_and_unknown_ones_are_refused() {
        let auth = OpsAuth::new(
            Some(&SecretString::from(TOKEN)),
            OpsSettings {
                session_ttl: Duration::ZERO,
            },
        );
        let session = auth.open_session(Principal::OperatorToken);
        assert_eq!(auth.session_csrf(session.id.expose_secret()), None);
        assert_eq!(auth.session_csrf(""), None);
        assert_eq!(auth.session_csrf(&"f".repeat(64)), None);
        assert_eq!(auth.session_csrf(&"f".repeat(100_000)), None);
    }

    #[test]
    fn the_cookie_is_http_only_strict_and_secure_behind_tls() {
        let auth = auth();
        let session = auth.open_session(Principal::OperatorToken);
        let plain = auth.cookie(&session.id, false);
        let plain = plain.to_str().unwrap();
        assert!(plain.contains("HttpOnly") && plain.contains("SameSite=Strict"));
        assert!(!plain.contains("Secure"));
        assert!(
            auth.cookie(&session.id, true)
                .to_str()
                .unwrap()
                .ends_with("; Secure")
        );
        assert!(behind_tls(&headers(&[("x-forwarded-proto", "HTTPS")])));
        assert!(!behind_tls(&HeaderMap::new()));
        assert!(!format!("{auth:?}").contains(TOKEN));
    }

    fn person(roles: &[Role]) -> Principal {
        Principal::Person(Person {
            subject: "248289761001".into(),
            email: Some("ana+ops@example.com".into()),
            name: Some("Ana".into()),
            roles: roles.to_vec(),
            via: Via::Oidc,
        })
    }

    #[test]
    fn each_role_may_do_what_the_table_says() {
        use Action::*;
        let all = [
            Read,
            RetryCancel,
            Writes,
            Platform,
            PlatformRead,
            BreakGlass,
        ];
        let operator = person(&[Role::Operator]);
        assert!(all.iter().all(|a| operator.permits(*a, true)));
        let oncall = person(&[Role::Oncall]);
        assert!(oncall.permits(Read, true) && oncall.permits(RetryCancel, true));
        assert!(!oncall.permits(Writes, true) && !oncall.permits(Platform, true));
        assert!(!oncall.permits(PlatformRead, true) && !oncall.permits(BreakGlass, true));
        let approver = person(&[Role::Approver]);
        assert!(approver.permits(Read, true));
        assert!(!approver.permits(RetryCancel, true) && !approver.permits(Writes, true));
        assert!(person(&[Role::Approver, Role::Oncall]).permits(RetryCancel, true));
        assert!(!person(&[]).permits(Read, true), "no role, nothing");
        // The operator token: everything without an identity provider, the grant flow with one.
        assert!(
            all.iter()
                .all(|a| Principal::OperatorToken.permits(*a, false))
        );
        assert!(Principal::OperatorToken.permits(BreakGlass, true));
        for a in [Read, RetryCancel, Writes, Platform, PlatformRead] {
            assert!(!Principal::OperatorToken.permits(a, true), "{a:?}");
        }
        assert!(!Read.changes() && Writes.changes() && RetryCancel.changes());
        assert_eq!("oncall".parse::<Role>().unwrap(), Role::Oncall);
        assert!("admin".parse::<Role>().is_err());
    }

    #[test]
    fn a_person_is_audited_by_email_in_safe_characters() {
        let Principal::Person(mut p) = person(&[Role::Operator]) else {
            unreachable!()
        };
        assert_eq!(p.audit_name(), "ana_ops@example.com");
        assert!(p.describe().contains("sub=248289761001"));
        p.email = None;
        p.subject = "<script> ".repeat(20);
        let name = p.audit_name();
        assert_eq!(name.chars().count(), 64);
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c))
        );
        p.via = Via::BreakGlass {
            grant_id: "bg_1".into(),
        };
        assert!(p.describe().contains("break-glass=bg_1"));
    }

    #[test]
    fn a_session_keeps_the_person_it_was_opened_for() {
        let auth = auth();
        let session = auth.open_session(person(&[Role::Oncall]));
        let (_, principal) = auth.session(session.id.expose_secret()).unwrap();
        assert_eq!(principal, person(&[Role::Oncall]));
        let pre = OpsAuth::pre_login_cookie(&session.id, false);
        let pre = pre.to_str().unwrap();
        assert!(pre.contains("SameSite=Lax") && pre.contains("HttpOnly"));
        assert!(pre.contains("Path=/ops/oidc") && pre.contains("Max-Age=600"));
    }

    #[test]
    fn sessions_are_bounded() {
        let auth = auth();
        let first = auth.open_session(Principal::OperatorToken);
        for _ in 0..MAX_SESSIONS {
            auth.open_session(Principal::OperatorToken);
        }
        assert_eq!(auth.sessions.len(), MAX_SESSIONS);
        assert_eq!(auth.session_csrf(first.id.expose_secret()), None);
    }
}
