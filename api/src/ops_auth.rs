//! Who may use the ops API and page: the holder of the operator token, or a browser session it
//! opened. Until tenancy brings a full token model, the operator token comes from the config;
//! only its SHA-256 is held, and a presented token is compared with it in constant time. A
//! tenant API token never passes.
//!
//! Signing in on the page exchanges the token for a session: a random id in an HttpOnly,
//! SameSite=Strict cookie (Secure behind a TLS proxy), held in memory with an expiry, and a
//! CSRF token that the page sends in `X-Steward-CSRF`. A POST authenticated by the cookie alone
//! is refused without it; a GET is protected by SameSite=Strict.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue, header};
use rand::RngCore;
use rand::rngs::OsRng;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// The session cookie's name.
pub const COOKIE: &str = "steward_ops";
/// The header that carries a session's CSRF token.
pub const CSRF_HEADER: &str = "x-steward-csrf";
/// The shortest operator token accepted.
pub const MIN_TOKEN_BYTES: usize = 24;
/// Presented tokens longer than this are refused before hashing.
const MAX_TOKEN_BYTES: usize = 256;
/// The most sessions held at once; the oldest is dropped past this.
const MAX_SESSIONS: usize = 256;

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

/// The operator credential and the open sessions.
pub struct OpsAuth {
    token_sha256: Option<[u8; 32]>,
    settings: OpsSettings,
    sessions: Mutex<HashMap<[u8; 32], Session>>,
    /// Counts sessions opened, to tell the oldest apart.
    opened: AtomicU64,
}

impl std::fmt::Debug for OpsAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpsAuth")
            .field("configured", &self.token_sha256.is_some())
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
struct Session {
    csrf: String,
    expires: Instant,
    opened: u64,
}

/// How a request proved it is the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpsCaller {
    /// The bearer operator token.
    Token,
    /// A page session, with its CSRF token.
    Session { csrf: String },
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
    /// With the operator token `token` (None: the ops API refuses everyone).
    pub fn new(token: Option<&SecretString>, settings: OpsSettings) -> Self {
        Self {
            token_sha256: token.map(|t| sha256(t.expose_secret().as_bytes())),
            settings,
            sessions: Mutex::new(HashMap::new()),
            opened: AtomicU64::new(0),
        }
    }

    /// Whether an operator token is configured.
    pub fn configured(&self) -> bool {
        self.token_sha256.is_some()
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

    fn sessions(&self) -> MutexGuard<'_, HashMap<[u8; 32], Session>> {
        self.sessions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Opens a session for a caller who presented the operator token.
    pub fn open_session(&self) -> OpenedSession {
        let id = random_hex();
        let csrf = random_hex();
        let now = Instant::now();
        let mut sessions = self.sessions();
        sessions.retain(|_, s| s.expires > now);
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.opened)
                .map(|(k, _)| *k)
        {
            sessions.remove(&oldest);
        }
        sessions.insert(
            sha256(id.as_bytes()),
            Session {
                csrf: csrf.clone(),
                expires: now + self.settings.session_ttl,
                opened: self.opened.fetch_add(1, Ordering::Relaxed),
            },
        );
        OpenedSession {
            id: SecretString::from(id),
            csrf,
        }
    }

    /// The CSRF token of the live session `id`, if there is one.
    pub fn session_csrf(&self, id: &str) -> Option<String> {
        if id.is_empty() || id.len() > 128 {
            return None;
        }
        let key = sha256(id.as_bytes());
        let mut sessions = self.sessions();
        match sessions.get(&key) {
            Some(s) if s.expires > Instant::now() => Some(s.csrf.clone()),
            Some(_) => {
                sessions.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Ends the session `id`.
    pub fn close_session(&self, id: &str) {
        self.sessions().remove(&sha256(id.as_bytes()));
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
}

/// The bearer token of a request, if it sent one.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

/// The session id in the request's cookies, if any.
pub fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
}

/// Whether the request reached the proxy in front of Steward over TLS.
pub fn behind_tls(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"))
}

/// Checks the caller is the operator: the bearer operator token, or a session cookie (with
/// its CSRF header when `unsafe_method`). A bearer token that is not the operator token is
/// 401, unless the caller checked it is a tenant's token (then 403, see `ops::authorize`).
pub fn caller(
    auth: &OpsAuth,
    headers: &HeaderMap,
    unsafe_method: bool,
) -> Result<OpsCaller, ApiError> {
    if let Some(token) = bearer(headers) {
        return if auth.token_matches(token) {
            Ok(OpsCaller::Token)
        } else {
            Err(ApiError::Unauthenticated)
        };
    }
    let id = session_cookie(headers).ok_or(ApiError::Unauthenticated)?;
    let csrf = auth.session_csrf(&id).ok_or(ApiError::Unauthenticated)?;
    if unsafe_method {
        let sent = headers
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !bool::from(sent.as_bytes().ct_eq(csrf.as_bytes())) {
            return Err(ApiError::Forbidden("csrf"));
        }
    }
    Ok(OpsCaller::Session { csrf })
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
            caller(&auth, &headers(&[("authorization", &bearer)]), true).unwrap(),
            OpsCaller::Token
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
        let session = auth.open_session();
        let cookie = format!("a=b; {COOKIE}={}; c=d", session.id.expose_secret());
        let read = headers(&[("cookie", &cookie)]);
        assert!(matches!(
            caller(&auth, &read, false),
            Ok(OpsCaller::Session { .. })
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
        let session = auth.open_session();
        assert_eq!(auth.session_csrf(session.id.expose_secret()), None);
        assert_eq!(auth.session_csrf(""), None);
        assert_eq!(auth.session_csrf(&"f".repeat(64)), None);
        assert_eq!(auth.session_csrf(&"f".repeat(100_000)), None);
    }

    #[test]
    fn the_cookie_is_http_only_strict_and_secure_behind_tls() {
        let auth = auth();
        let session = auth.open_session();
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

    #[test]
    fn sessions_are_bounded() {
        let auth = auth();
        let first = auth.open_session();
        for _ in 0..MAX_SESSIONS {
            auth.open_session();
        }
        assert_eq!(auth.sessions().len(), MAX_SESSIONS);
        assert_eq!(auth.session_csrf(first.id.expose_secret()), None);
    }
}
