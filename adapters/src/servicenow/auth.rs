//! OAuth 2.0 against `oauth_token.do`, and the in-memory access token.
//!
//! One lock guards the token and is held across a token request, so a client never has two
//! token requests in flight: callers that find the token stale while another caller refreshes
//! it wait, then use the new one. Tokens are refreshed a margin ahead of their expiry. A
//! password grant's refresh token is used for later refreshes; when the server refuses it, the
//! password grant is tried once more. Credentials the server rejects for good (`invalid_grant`,
//! `access_denied`, ...) end in [`ServiceNowError::OAuth`] with `reconnect_needed`, never a loop.

use std::fmt;
use std::sync::Arc;

use reqwest::header::{ACCEPT, CONTENT_TYPE};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use steward_core::Clock;
use tokio::sync::{Mutex, watch};
use url::Url;

use super::wire::{self, RawReply, clip};
use super::{ServiceNowError, endpoint};

/// A token is refreshed once it has less than this long to live.
const REFRESH_MARGIN_MS: i64 = 60_000;
/// ServiceNow's default access-token lifespan, assumed when a reply leaves `expires_in` out.
const DEFAULT_LIFETIME_SECS: i64 = 1799;
/// Lifetimes beyond this are treated as this (a year), so expiry arithmetic stays in range.
const MAX_LIFETIME_SECS: i64 = 365 * 24 * 3600;

/// OAuth error codes that no retry can fix: a person must reconnect the instance.
const RECONNECT_ERRORS: [&str; 4] = [
    "invalid_grant",
    "access_denied",
    "invalid_client",
    "unauthorized_client",
];

/// How Steward signs in to an instance. `Debug` shows the ids, never the secrets.
#[derive(Debug, Clone)]
pub enum ServiceNowAuth {
    /// The resource-owner password grant; its refresh token is used for later refreshes.
    Password {
        client_id: String,
        client_secret: SecretString,
        username: String,
        password: SecretString,
    },
    /// A refresh token obtained elsewhere (for example by an authorization-code flow).
    RefreshToken {
        client_id: String,
        client_secret: SecretString,
        refresh_token: SecretString,
    },
    /// The client-credentials grant (off by default on instances; needs an OAuth application
    /// user).
    ClientCredentials {
        client_id: String,
        client_secret: SecretString,
    },
}

/// An access token and when it stops being usable.
#[derive(Clone)]
pub(super) struct AccessToken {
    pub(super) secret: SecretString,
    expires_at_ms: i64,
    /// Which token this is, so a rejected token is dropped only if it is still the current one.
    generation: u64,
}

/// What a successful token request returned.
struct Grant {
    access_token: SecretString,
    refresh_token: Option<SecretString>,
    lifetime_secs: i64,
}

#[derive(Default)]
struct TokenState {
    current: Option<AccessToken>,
    refresh_token: Option<SecretString>,
    generation: u64,
}

/// The token cache of one client.
pub(super) struct TokenCache {
    instance: Url,
    auth: ServiceNowAuth,
    http: reqwest::Client,
    clock: Arc<dyn Clock>,
    state: Mutex<TokenState>,
    rotated: watch::Sender<Option<SecretString>>,
}

impl fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCache")
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

impl TokenCache {
    pub(super) fn new(
        instance: Url,
        auth: ServiceNowAuth,
        http: reqwest::Client,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let refresh_token = match &auth {
            ServiceNowAuth::RefreshToken { refresh_token, .. } => Some(refresh_token.clone()),
            _ => None,
        };
        let state = TokenState {
            refresh_token,
            ..TokenState::default()
        };
        let (rotated, _) = watch::channel(None);
        Self {
            instance,
            auth,
            http,
            clock,
            state: Mutex::new(state),
            rotated,
        }
    }

    /// Receives the refresh token each time the server rotates the one given in
    /// [`ServiceNowAuth::RefreshToken`], so that it can be stored in its place.
    pub(super) fn rotated_refresh_token(&self) -> watch::Receiver<Option<SecretString>> {
        self.rotated.subscribe()
    }

    /// A usable access token: the cached one, or a new one.
    pub(super) async fn token(&self) -> Result<AccessToken, ServiceNowError> {
        let mut state = self.state.lock().await;
        self.usable_or_fetch(&mut state).await
    }

    /// A token to use after `rejected` drew a 401: a new one, unless another caller already
    /// replaced `rejected`, in which case that replacement.
    pub(super) async fn replace(
        &self,
        rejected: &AccessToken,
    ) -> Result<AccessToken, ServiceNowError> {
        let mut state = self.state.lock().await;
        if state
            .current
            .as_ref()
            .is_some_and(|t| t.generation == rejected.generation)
        {
            state.current = None;
        }
        self.usable_or_fetch(&mut state).await
    }

    async fn usable_or_fetch(
        &self,
        state: &mut TokenState,
    ) -> Result<AccessToken, ServiceNowError> {
        let now = self.clock.now_millis();
        if let Some(token) = &state.current
            && token.expires_at_ms.saturating_sub(REFRESH_MARGIN_MS) > now
        {
            return Ok(token.clone());
        }
        state.current = None;
        let grant = self.obtain(state).await?;
        if let Some(refresh_token) = grant.refresh_token {
            self.keep_refresh_token(state, refresh_token);
        }
        state.generation += 1;
        let token = AccessToken {
            secret: grant.access_token,
            expires_at_ms: self
                .clock
                .now_millis()
                .saturating_add(grant.lifetime_secs * 1000),
            generation: state.generation,
        };
        state.current = Some(token.clone());
        Ok(token)
    }

    /// Runs the grant the configuration calls for.
    async fn obtain(&self, state: &mut TokenState) -> Result<Grant, ServiceNowError> {
        match &self.auth {
            ServiceNowAuth::Password {
                client_id,
                client_secret,
                username,
                password,
            } => {
                if let Some(refresh_token) = state.refresh_token.clone() {
                    let form = refresh_form(client_id, client_secret, &refresh_token);
                    match self.request(form).await {
                        Err(ServiceNowError::OAuth { error, .. }) => {
                            tracing::info!(%error, "servicenow refused the refresh token; \
                                signing in with the password grant again");
                            state.refresh_token = None;
                        }
                        other => return other,
                    }
                }
                let form = form(&[
                    ("grant_type", "password"),
                    ("client_id", client_id),
                    ("client_secret", client_secret.expose_secret()),
                    ("username", username),
                    ("password", password.expose_secret()),
                ]);
                self.request(form).await
            }
            ServiceNowAuth::RefreshToken {
                client_id,
                client_secret,
                refresh_token,
            } => {
                let current = state.refresh_token.as_ref().unwrap_or(refresh_token);
                self.request(refresh_form(client_id, client_secret, current))
                    .await
            }
            ServiceNowAuth::ClientCredentials {
                client_id,
                client_secret,
            } => {
                let form = form(&[
                    ("grant_type", "client_credentials"),
                    ("client_id", client_id),
                    ("client_secret", client_secret.expose_secret()),
                ]);
                self.request(form).await
            }
        }
    }

    fn keep_refresh_token(&self, state: &mut TokenState, new: SecretString) {
        let changed = state
            .refresh_token
            .as_ref()
            .is_none_or(|old| old.expose_secret() != new.expose_secret());
        if changed && matches!(self.auth, ServiceNowAuth::RefreshToken { .. }) {
            self.rotated.send_replace(Some(new.clone()));
        }
        state.refresh_token = Some(new);
    }

    /// One token request; the form body is secret and goes nowhere but the request.
    async fn request(&self, form: SecretString) -> Result<Grant, ServiceNowError> {
        let url = endpoint(&self.instance, &["oauth_token.do"])?;
        let request = self
            .http
            .post(url)
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(ACCEPT, "application/json")
            .body(form.expose_secret().to_owned());
        let reply = wire::send(request).await?;
        tracing::debug!(
            status = reply.status.as_u16(),
            "servicenow token endpoint answered"
        );
        grant(&reply)
    }
}

fn refresh_form(
    client_id: &str,
    client_secret: &SecretString,
    token: &SecretString,
) -> SecretString {
    form(&[
        ("grant_type", "refresh_token"),
        ("client_id", client_id),
        ("client_secret", client_secret.expose_secret()),
        ("refresh_token", token.expose_secret()),
    ])
}

fn form(pairs: &[(&str, &str)]) -> SecretString {
    let mut serializer = form_urlencoded::Serializer::new(String::new());
    serializer.extend_pairs(pairs);
    SecretString::from(serializer.finish())
}

/// Reads a token reply: a grant, an OAuth error, or a plain HTTP failure.
fn grant(reply: &RawReply) -> Result<Grant, ServiceNowError> {
    let value = reply.json().unwrap_or(Value::Null);
    let text = |name: &str| value[name].as_str().filter(|s| !s.is_empty());
    if let (true, Some(access_token)) = (reply.status.is_success(), text("access_token")) {
        return Ok(Grant {
            access_token: SecretString::from(access_token),
            refresh_token: text("refresh_token").map(SecretString::from),
            lifetime_secs: lifetime(&value["expires_in"]),
        });
    }
    if let Some(error) = text("error") {
        return Err(oauth_error(error, text("error_description").unwrap_or("")));
    }
    let status = reply.status.as_u16();
    match status {
        429 => Err(wire::rate_limited(&reply.headers)),
        500..=599 => Err(ServiceNowError::Server {
            status,
            message: "the token endpoint failed".into(),
        }),
        200..=299 => {
            reply.json()?;
            Err(ServiceNowError::Decode(
                "token reply has no access_token".into(),
            ))
        }
        _ => Err(ServiceNowError::OAuth {
            error: format!("http_{status}"),
            description: "the token endpoint refused the request".into(),
            reconnect_needed: matches!(status, 401 | 403),
        }),
    }
}

fn oauth_error(error: &str, description: &str) -> ServiceNowError {
    let reconnect_needed =
        RECONNECT_ERRORS.contains(&error) || RECONNECT_ERRORS.contains(&description);
    ServiceNowError::OAuth {
        error: clip(error),
        description: clip(description),
        reconnect_needed,
    }
}

/// `expires_in` in seconds, as a number or a numeric string.
fn lifetime(value: &Value) -> i64 {
    let secs = match value {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    secs.unwrap_or(DEFAULT_LIFETIME_SECS)
        .clamp(0, MAX_LIFETIME_SECS)
}

#[cfg(test)]
mod tests {
    use reqwest::StatusCode;
    use reqwest::header::HeaderMap;
    use serde_json::json;

    use super::*;

    fn reply(status: u16, body: &str) -> RawReply {
        RawReply {
            status: StatusCode::from_u16(status).unwrap(),
            headers: HeaderMap::new(),
            body: Some(body.as_bytes().to_vec()),
        }
    }

    #[test]
    fn a_token_reply_is_read() {
        let body = json!({"access_token": "at", "refresh_token": "rt", "scope": "useraccount",
                          "token_type": "Bearer", "expires_in": 1799});
        let grant = grant(&reply(200, &body.to_string())).unwrap();
        assert_eq!(grant.access_token.expose_secret(), "at");
        assert_eq!(grant.refresh_token.unwrap().expose_secret(), "rt");
        assert_eq!(grant.lifetime_secs, 1799);
    }

    #[test]
    fn lifetimes_in_odd_shapes_are_bounded() {
        assert_eq!(lifetime(&json!("1799")), 1799);
        assert_eq!(lifetime(&json!(1799.9)), 1799);
        assert_eq!(lifetime(&json!(null)), DEFAULT_LIFETIME_SECS);
        assert_eq!(lifetime(&json!("soon")), DEFAULT_LIFETIME_SECS);
        assert_eq!(lifetime(&json!(-5)), 0);
        assert_eq!(lifetime(&json!(1e300)), MAX_LIFETIME_SECS);
        assert_eq!(lifetime(&json!(u64::MAX)), MAX_LIFETIME_SECS);
    }

    #[test]
    fn credential_errors_need_a_reconnect_and_others_do_not() {
        let cases = [
            (
                r#"{"error":"invalid_grant","error_description":"Invalid refresh token"}"#,
                true,
            ),
            (
                r#"{"error_description":"access_denied","error":"server_error"}"#,
                true,
            ),
            (r#"{"error":"invalid_client"}"#, true),
            (r#"{"error":"temporarily_unavailable"}"#, false),
        ];
        for (body, reconnect) in cases {
            let Err(ServiceNowError::OAuth {
                reconnect_needed, ..
            }) = grant(&reply(401, body))
            else {
                panic!("{body}")
            };
            assert_eq!(reconnect_needed, reconnect, "{body}");
        }
    }

    #[test]
    fn replies_without_a_token_are_errors() {
        let err = |status, body| grant(&reply(status, body)).err().unwrap();
        assert!(matches!(err(200, "{}"), ServiceNowError::Decode(_)));
        assert!(matches!(
            err(200, r#"{"access_token":""}"#),
            ServiceNowError::Decode(_)
        ));
        assert!(matches!(
            err(200, "<html>login</html>"),
            ServiceNowError::Decode(_)
        ));
        assert!(matches!(
            err(503, ""),
            ServiceNowError::Server { status: 503, .. }
        ));
        assert!(matches!(err(429, ""), ServiceNowError::RateLimited { .. }));
        assert!(matches!(
            err(401, ""),
            ServiceNowError::OAuth {
                reconnect_needed: true,
                ..
            }
        ));
        assert!(matches!(
            err(400, "bad"),
            ServiceNowError::OAuth {
                reconnect_needed: false,
                ..
            }
        ));
    }

    #[test]
    fn the_auth_debug_shows_no_secret() {
        let auth = ServiceNowAuth::Password {
            client_id: "steward".into(),
            client_secret: "client-secret-value".into(),
            username: "svc.steward".into(),
            password: "hunter2-password".into(),
        };
        let shown = format!("{auth:?}");
        assert!(
            shown.contains("steward") && shown.contains("svc.steward"),
            "{shown}"
        );
        assert!(
            !shown.contains("client-secret-value") && !shown.contains("hunter2"),
            "{shown}"
        );
    }
}
