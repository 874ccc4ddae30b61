//! `/ops`: a read-only page over the ops API, for people who would rather look than read JSON.
//! It shows the live tree and recent failures, refreshing itself, and a run with its timeline
//! and crash snapshots. Signing in posts the operator token once (`/ops/login`) and gets a
//! session cookie back; the token never appears in a URL. The page carries its own CSS and
//! JavaScript under a per-response nonce (no external assets), and puts every value it shows
//! into the document as text, never as markup.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rand::RngCore;
use rand::rngs::OsRng;
use secrecy::SecretString;

use crate::ops_auth::{OpsAuth, behind_tls, session_cookie};
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

fn login_page(status: StatusCode, message: &str) -> Response {
    let nonce = nonce();
    let body = LOGIN
        .replace("{{NONCE}}", &nonce)
        .replace("{{MESSAGE}}", &escape_html(message));
    html(status, body, &nonce)
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
    let csrf = session_cookie(&headers).and_then(|id| state.ops.session_csrf(&id));
    let Some(csrf) = csrf else {
        let message = if state.ops.configured() {
            ""
        } else {
            "No operator token is configured (ops_token in the config file); sign-in is off."
        };
        return login_page(StatusCode::OK, message);
    };
    let nonce = nonce();
    let body = PAGE
        .replace("{{NONCE}}", &nonce)
        .replace("{{CSRF}}", &escape_html(&csrf));
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
        return login_page(StatusCode::PAYLOAD_TOO_LARGE, "The form is too large.");
    };
    let token = form_field(&body, "token").map(SecretString::from);
    let valid = token.as_ref().is_some_and(|t| {
        state
            .ops
            .token_matches(secrecy::ExposeSecret::expose_secret(t))
    });
    if !valid {
        tracing::warn!("A sign-in to the ops page was refused.");
        return login_page(StatusCode::UNAUTHORIZED, "That is not the operator token.");
    }
    let session = state.ops.open_session();
    let mut response = see_other("/ops");
    response.headers_mut().insert(
        header::SET_COOKIE,
        state.ops.cookie(&session.id, behind_tls(&headers)),
    );
    response
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
        let page = PAGE.replace("{{NONCE}}", "n").replace("{{CSRF}}", "c");
        assert!(!page.contains("{{"));
        assert!(!page.contains("innerHTML"), "values go in as text only");
        let login = LOGIN.replace("{{NONCE}}", "n").replace("{{MESSAGE}}", "");
        assert!(!login.contains("{{"));
        assert!(
            login.contains("method=\"post\""),
            "the token is never sent in a URL"
        );
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
