//! `POST /oauth_token.do`: ServiceNow's OAuth token endpoint with the `password`,
//! `refresh_token` and `client_credentials` grants, form-encoded only.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::ServiceNow;
use crate::standins::support::{self, BodyError, constant_time_eq};

/// Refresh tokens live 100 days, ServiceNow's default.
const REFRESH_LIFETIME: Duration = Duration::from_secs(100 * 24 * 3600);

/// Issued tokens and the user each acts as.
#[derive(Debug, Default)]
pub(super) struct Tokens {
    access: HashMap<String, Grant>,
    refresh: HashMap<String, Grant>,
}

#[derive(Debug, Clone)]
struct Grant {
    user: String,
    expires: Instant,
}

// === impl Tokens ===

impl Tokens {
    /// The user an unexpired access token acts as.
    pub(super) fn user(&self, access_token: &str) -> Option<&str> {
        self.access
            .get(access_token)
            .filter(|grant| Instant::now() < grant.expires)
            .map(|grant| grant.user.as_str())
    }

    fn issue_access(&mut self, user: &str, lifetime: Duration) -> String {
        self.prune();
        let token = support::random_token(64);
        self.access.insert(token.clone(), grant(user, lifetime));
        token
    }

    fn issue_refresh(&mut self, user: &str) -> String {
        let token = support::random_token(64);
        self.refresh
            .insert(token.clone(), grant(user, REFRESH_LIFETIME));
        token
    }

    fn refresh_user(&self, refresh_token: &str) -> Option<String> {
        self.refresh
            .get(refresh_token)
            .filter(|grant| Instant::now() < grant.expires)
            .map(|grant| grant.user.clone())
    }

    fn prune(&mut self) {
        let now = Instant::now();
        self.access.retain(|_, grant| now < grant.expires);
        self.refresh.retain(|_, grant| now < grant.expires);
    }
}

fn grant(user: &str, lifetime: Duration) -> Grant {
    Grant {
        user: user.to_owned(),
        expires: Instant::now() + lifetime,
    }
}

/// Why a token request was refused, each with ServiceNow's status and body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum OAuthError {
    #[error("the token request must be application/x-www-form-urlencoded")]
    ContentType,
    #[error(transparent)]
    Body(#[from] BodyError),
    #[error("the client or user credentials are wrong")]
    AccessDenied,
    #[error("the refresh token is unknown or expired")]
    InvalidGrant,
    #[error("grant_type must be password, refresh_token or client_credentials")]
    UnsupportedGrantType,
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let (status, body) = match &self {
            Self::AccessDenied => (
                StatusCode::UNAUTHORIZED,
                json!({"error_description": "access_denied", "error": "server_error"}),
            ),
            Self::InvalidGrant => (StatusCode::UNAUTHORIZED, oauth_body("invalid_grant", &self)),
            Self::UnsupportedGrantType => (
                StatusCode::BAD_REQUEST,
                oauth_body("unsupported_grant_type", &self),
            ),
            Self::ContentType | Self::Body(BodyError::Unreadable) => (
                StatusCode::BAD_REQUEST,
                oauth_body("invalid_request", &self),
            ),
            Self::Body(BodyError::TooLarge) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                oauth_body("invalid_request", &self),
            ),
        };
        (status, Json(body)).into_response()
    }
}

fn oauth_body(error: &str, description: &OAuthError) -> Value {
    json!({"error": error, "error_description": description.to_string()})
}

/// The token endpoint.
pub(super) async fn token(
    State(sn): State<Arc<ServiceNow>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, OAuthError> {
    sn.counters.oauth.fetch_add(1, Ordering::Relaxed);
    let body = support::read_body(body)?;
    if support::media_type(&headers).as_deref() != Some("application/x-www-form-urlencoded") {
        return Err(OAuthError::ContentType);
    }
    let form: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    let param = |name: &str| form.get(name).map(String::as_str).unwrap_or_default();
    sn.check_client(param("client_id"), param("client_secret"))?;
    match param("grant_type") {
        "password" => sn.password_grant(param("username"), param("password")),
        "refresh_token" => sn.refresh_grant(param("refresh_token")),
        "client_credentials" => Ok(sn.client_credentials_grant()),
        _ => Err(OAuthError::UnsupportedGrantType),
    }
    .map(Json)
}

// === impl ServiceNow ===

impl ServiceNow {
    fn check_client(&self, client_id: &str, client_secret: &str) -> Result<(), OAuthError> {
        let credentials = &self.credentials;
        let id_ok = constant_time_eq(client_id.as_bytes(), credentials.client_id.as_bytes());
        let secret_ok = constant_time_eq(
            client_secret.as_bytes(),
            credentials.client_secret.as_bytes(),
        );
        (id_ok & secret_ok)
            .then_some(())
            .ok_or(OAuthError::AccessDenied)
    }

    /// Whether a username and password are the integration user's.
    pub(super) fn check_user(&self, username: &str, password: &str) -> bool {
        let credentials = &self.credentials;
        let user_ok = constant_time_eq(username.as_bytes(), credentials.username.as_bytes());
        let password_ok = constant_time_eq(password.as_bytes(), credentials.password.as_bytes());
        user_ok & password_ok
    }

    fn password_grant(&self, username: &str, password: &str) -> Result<Value, OAuthError> {
        if !self.check_user(username, password) {
            return Err(OAuthError::AccessDenied);
        }
        let mut state = support::lock(&self.state);
        let access = state
            .tokens
            .issue_access(username, self.credentials.token_lifetime);
        let refresh = state.tokens.issue_refresh(username);
        Ok(self.token_body(&access, Some(&refresh)))
    }

    fn refresh_grant(&self, refresh_token: &str) -> Result<Value, OAuthError> {
        let mut state = support::lock(&self.state);
        let user = state
            .tokens
            .refresh_user(refresh_token)
            .ok_or(OAuthError::InvalidGrant)?;
        let access = state
            .tokens
            .issue_access(&user, self.credentials.token_lifetime);
        Ok(self.token_body(&access, Some(refresh_token)))
    }

    /// The client-credentials grant acts as the OAuth application user, here the integration
    /// user; it issues no refresh token.
    fn client_credentials_grant(&self) -> Value {
        let mut state = support::lock(&self.state);
        let access = state
            .tokens
            .issue_access(&self.credentials.username, self.credentials.token_lifetime);
        self.token_body(&access, None)
    }

    fn token_body(&self, access: &str, refresh: Option<&str>) -> Value {
        let mut body = json!({
            "access_token": access,
            "scope": "useraccount",
            "token_type": "Bearer",
            "expires_in": self.credentials.token_lifetime.as_secs(),
        });
        if let Some(refresh) = refresh {
            body["refresh_token"] = Value::String(refresh.to_owned());
        }
        body
    }
}
