//! `/ops`: a read-only page over the ops API, for people who would rather look than read JSON.
//! It shows the live tree and recent failures, refreshing itself, and a run with its timeline
//! and crash snapshots. With `[oidc]`, "Sign in with SSO" goes through `/ops/oidc/start` to the
//! identity provider and back to `/ops/oidc/callback`, which opens a session for the person;
//! without it, signing in posts the operator token once (`/ops/login`); neither ever puts a
//! credential in a URL. The page carries its own CSS and JavaScript under a per-response nonce
//! (no external assets), and puts every value it shows into the document as text, never as
//! markup.

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rand::RngCore;
use rand::rngs::OsRng;
use secrecy::SecretString;

use crate::ops_auth::{
    OpsAuth, PRE_LOGIN_COOKIE, Principal, behind_tls, cookie_value, session_cookie,
};
use crate::state::AppState;
use crate::webhooks::read_body;

const PAGE: &str = include_str!("ops_page.html");
const LOGIN: &str = include_str!("ops_login.html");
/// The largest sign-in or sign-out form accepted.
const MAX_FORM_BYTES: usize = 4096;

/// Escapes text for an HTML element or a quoted attribute.
pub(crate) fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn nonce() -> String {
    let mut bytes = [0u8; 16];
    OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// An HTML response with the headers every ops page carries.
fn html(status: StatusCode, body: String, nonce: &str) -> Response {
    let csp = format!(
        "default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; \
         connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    );
    let mut response = (status, body).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    if let Ok(v) = HeaderValue::from_str(&csp) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// The token form, or with `[oidc]` the SSO link (the operator token then opens no page
/// session).
const TOKEN_FORM: &str = r#"<form method="post" action="/ops/login">
  <label for="token">Operator token</label>
  <input type="password" id="token" name="token" autocomplete="current-password" required>
  <button type="submit">Sign in</button>
</form>
<p>The token is exchanged for a session cookie; it is never put in a URL.</p>"#;
const SSO_LINK: &str = r#"<p><a class="sso" href="/ops/oidc/start">Sign in with SSO</a></p>
<p>You sign in at your identity provider; your groups decide what you may do here.</p>"#;

fn login_page(state: &AppState, status: StatusCode, message: &str) -> Response {
    let nonce = nonce();
    let sign_in = if state.ops.oidc().is_some() {
        SSO_LINK
    } else {
        TOKEN_FORM
    };
    let body = LOGIN
        .replace("{{NONCE}}", &nonce)
        .replace("{{MESSAGE}}", &escape_html(message))
        .replace("{{SIGN_IN}}", sign_in);
    html(status, body, &nonce)
}

/// Who the page shows as signed in.
fn who(principal: &Principal) -> String {
    match principal {
        Principal::OperatorToken => "operator token".into(),
        Principal::Person(p) => {
            let roles: Vec<&str> = p.roles.iter().map(|r| r.as_str()).collect();
            let name = p
                .email
                .as_deref()
                .or(p.name.as_deref())
                .unwrap_or(&p.subject);
            format!("{name} ({})", roles.join(", "))
        }
    }
}

fn see_other(location: &'static str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    response
        .headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static(location));
    response
}

/// `GET /ops`: the page for a signed-in session, the sign-in form otherwise.
#[utoipa::path(get, path = "/ops", tag = "ops",
    responses((status = 200, description = "The page, or the sign-in form", body = String, content_type = "text/html")),
    security((), ("opsSession" = [])))]
pub(crate) async fn page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let session = session_cookie(&headers).and_then(|id| state.ops.session(&id));
    let Some((csrf, principal)) = session else {
        let message = if state.ops.configured() {
            ""
        } else {
            "No operator token or [oidc] is configured; sign-in is off."
        };
        return login_page(&state, StatusCode::OK, message);
    };
    let nonce = nonce();
    let body = PAGE
        .replace("{{NONCE}}", &nonce)
        .replace("{{CSRF}}", &escape_html(&csrf))
        .replace("{{WHO}}", &escape_html(&who(&principal)));
    html(StatusCode::OK, body, &nonce)
}

/// One field of an `application/x-www-form-urlencoded` body.
fn form_field(body: &[u8], name: &str) -> Option<String> {
    form_urlencoded::parse(body)
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// `POST /ops/login` with the form field `token`: a session cookie for the operator token.
#[utoipa::path(post, path = "/ops/login", tag = "ops",
    request_body(content = crate::openapi::LoginForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 303, description = "Signed in: a session cookie, and on to `/ops`",
            headers(("set-cookie" = String), ("location" = String))),
        (status = 401, description = "Not the operator token: the form again", body = String, content_type = "text/html"),
        (status = 413, description = "The form is over 4 KiB", body = String, content_type = "text/html"),
    ))]
pub(crate) async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Ok(body) = read_body(body, &headers, MAX_FORM_BYTES).await else {
        return login_page(
            &state,
            StatusCode::PAYLOAD_TOO_LARGE,
            "The form is too large.",
        );
    };
    if state.ops.oidc().is_some() {
        return login_page(
            &state,
            StatusCode::UNAUTHORIZED,
            "Sign in with SSO; the operator token opens no page session here.",
        );
    }
    let token = form_field(&body, "token").map(SecretString::from);
    let valid = token.as_ref().is_some_and(|t| {
        state
            .ops
            .token_matches(secrecy::ExposeSecret::expose_secret(t))
    });
    if !valid {
        tracing::warn!("A sign-in to the ops page was refused.");
        return login_page(
            &state,
            StatusCode::UNAUTHORIZED,
            "That is not the operator token.",
        );
    }
    let session = state.ops.open_session(Principal::OperatorToken);
    let mut response = see_other("/ops");
    response.headers_mut().insert(
        header::SET_COOKIE,
        state.ops.cookie(&session.id, behind_tls(&headers)),
    );
    response
}

/// `GET /ops/oidc/start`: a fresh pre-login (`state`, `nonce`, PKCE verifier) in a
/// short-lived cookie, and a redirect to the identity provider.
#[utoipa::path(get, path = "/ops/oidc/start", tag = "ops",
    responses(
        (status = 303, description = "On to the identity provider, with the pre-login cookie",
            headers(("set-cookie" = String), ("location" = String))),
        (status = 404, description = "No `[oidc]` is configured", body = String, content_type = "text/html"),
        (status = 503, description = "The identity provider cannot be reached", body = String, content_type = "text/html"),
    ))]
pub(crate) async fn oidc_start(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let Some(oidc) = state.ops.oidc() else {
        return login_page(&state, StatusCode::NOT_FOUND, "SSO is not configured.");
    };
    match oidc.start().await {
        Ok(started) => {
            let mut response = StatusCode::SEE_OTHER.into_response();
            let h = response.headers_mut();
            match HeaderValue::from_str(&started.authorize_url) {
                Ok(location) => h.insert(header::LOCATION, location),
                Err(_) => {
                    return login_page(
                        &state,
                        StatusCode::SERVICE_UNAVAILABLE,
                        "The identity provider's authorization URL is unusable.",
                    );
                }
            };
            h.insert(
                header::SET_COOKIE,
                OpsAuth::pre_login_cookie(&started.pre_login_id, behind_tls(&headers)),
            );
            response
        }
        Err(e) => {
            tracing::warn!(error = %e, "An SSO sign-in could not start.");
            login_page(
                &state,
                StatusCode::SERVICE_UNAVAILABLE,
                "The identity provider cannot be reached; try again shortly.",
            )
        }
    }
}

/// The provider's redirect back: `code` and `state`, or `error`.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct CallbackQuery {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    error_description: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    session_state: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    iss: Option<String>,
}

/// `GET /ops/oidc/callback?code=&state=`: checks `state` against the pre-login cookie (once),
/// exchanges the code with the PKCE verifier, validates the ID token and its nonce, maps the
/// person's groups to roles, and opens a session for them. Any failure opens nothing.
#[utoipa::path(get, path = "/ops/oidc/callback", tag = "ops",
    params(
        ("code" = Option<String>, Query, description = "The authorization code"),
        ("state" = Option<String>, Query, description = "The state sent to the provider"),
        ("error" = Option<String>, Query, description = "The provider's refusal"),
    ),
    responses(
        (status = 303, description = "Signed in: a session cookie, and on to `/ops`",
            headers(("set-cookie" = String), ("location" = String))),
        (status = 401, description = "Refused: the sign-in form again", body = String, content_type = "text/html"),
        (status = 403, description = "Signed in, but no group maps to a Steward role", body = String, content_type = "text/html"),
        (status = 404, description = "No `[oidc]` is configured", body = String, content_type = "text/html"),
        (status = 503, description = "The identity provider cannot be reached", body = String, content_type = "text/html"),
    ))]
pub(crate) async fn oidc_callback(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<CallbackQuery>, QueryRejection>,
) -> Response {
    let secure = behind_tls(&headers);
    let refuse = |state: &AppState, status, message: &str| {
        let mut response = login_page(state, status, message);
        response.headers_mut().insert(
            header::SET_COOKIE,
            OpsAuth::clearing_pre_login_cookie(secure),
        );
        response
    };
    let Some(oidc) = state.ops.oidc().cloned() else {
        return login_page(&state, StatusCode::NOT_FOUND, "SSO is not configured.");
    };
    let Ok(Query(query)) = query else {
        return refuse(
            &state,
            StatusCode::UNAUTHORIZED,
            "That sign-in was refused.",
        );
    };
    let pre_login = cookie_value(&headers, PRE_LOGIN_COOKIE).unwrap_or_default();
    if let Some(error) = query.error {
        // The pre-login is spent either way.
        let _ = oidc.finish(&pre_login, "", "").await;
        crate::ops_auth::audit_sign_in(&state, Err(&format!("provider said {error}"))).await;
        return refuse(
            &state,
            StatusCode::UNAUTHORIZED,
            "The identity provider did not sign you in.",
        );
    }
    let (code, sent_state) = (
        query.code.unwrap_or_default(),
        query.state.unwrap_or_default(),
    );
    match oidc.finish(&pre_login, &sent_state, &code).await {
        Ok(person) => {
            crate::ops_auth::audit_sign_in(&state, Ok(&person)).await;
            let session = state.ops.open_session(Principal::Person(person));
            let mut response = see_other("/ops");
            let h = response.headers_mut();
            h.append(header::SET_COOKIE, state.ops.cookie(&session.id, secure));
            h.append(
                header::SET_COOKIE,
                OpsAuth::clearing_pre_login_cookie(secure),
            );
            response
        }
        Err(e) => {
            crate::ops_auth::audit_sign_in(&state, Err(&e.to_string())).await;
            let (status, message) = match &e {
                crate::oidc::OidcError::NoRole { .. } => (
                    StatusCode::FORBIDDEN,
                    "You are signed in, but none of your groups has a Steward role.",
                ),
                crate::oidc::OidcError::Unavailable(_) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The identity provider cannot be reached; try again shortly.",
                ),
                crate::oidc::OidcError::Invalid(_) => {
                    (StatusCode::UNAUTHORIZED, "That sign-in was refused.")
                }
            };
            refuse(&state, status, message)
        }
    }
}

/// `POST /ops/logout` with the form field `csrf`: ends the session and clears the cookie.
#[utoipa::path(post, path = "/ops/logout", tag = "ops",
    request_body(content = crate::openapi::LogoutForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 303, description = "Signed out; on to `/ops`",
        headers(("set-cookie" = String), ("location" = String)))),
    security((), ("opsSession" = [])))]
pub(crate) async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let (Ok(body), Some(id)) = (
        read_body(body, &headers, MAX_FORM_BYTES).await,
        session_cookie(&headers),
    ) {
        let sent = form_field(&body, "csrf").unwrap_or_default();
        if state.ops.session_csrf(&id).is_some_and(|csrf| {
            subtle::ConstantTimeEq::ct_eq(csrf.as_bytes(), sent.as_bytes()).into()
        }) {
            state.ops.close_session(&id);
        }
    }
    let mut response = see_other("/ops");
    response.headers_mut().insert(
        header::SET_COOKIE,
        OpsAuth::clearing_cookie(behind_tls(&headers)),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_text_is_escaped() {
        assert_eq!(
            escape_html(r#"<img src=x onerror="alert('1')">&"#),
            "&lt;img src=x onerror=&quot;alert(&#39;1&#39;)&quot;&gt;&amp;"
        );
        assert_eq!(escape_html("plain"), "plain");
    }

    #[test]
    fn the_page_needs_no_external_asset_and_fills_every_placeholder() {
        for template in [PAGE, LOGIN] {
            for external in ["src=\"http", "href=\"http", "@import", "url("] {
                assert!(!template.contains(external), "{external}");
            }
        }
        let page = PAGE
            .replace("{{NONCE}}", "n")
            .replace("{{CSRF}}", "c")
            .replace("{{WHO}}", "w");
        assert!(!page.contains("{{"));
        assert!(!page.contains("innerHTML"), "values go in as text only");
        for sign_in in [TOKEN_FORM, SSO_LINK] {
            let login = LOGIN
                .replace("{{NONCE}}", "n")
                .replace("{{MESSAGE}}", "")
                .replace("{{SIGN_IN}}", sign_in);
            assert!(!login.contains("{{"));
            for external in ["src=\"http", "href=\"http"] {
                assert!(!login.contains(external), "{external}");
            }
        }
        assert!(
            TOKEN_FORM.contains("method=\"post\""),
            "the token is never sent in a URL"
        );
        assert!(SSO_LINK.contains("Sign in with SSO") && SSO_LINK.contains("/ops/oidc/start"));
    }

    #[test]
    fn form_fields_are_decoded() {
        assert_eq!(
            form_field(b"a=1&token=abc%2Bdef+g", "token").as_deref(),
            Some("abc+def g")
        );
        assert_eq!(form_field(b"\xff\xfe=\x00", "token"), None);
        assert_eq!(form_field(b"", "token"), None);
    }
}
