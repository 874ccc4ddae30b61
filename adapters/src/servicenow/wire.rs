//! HTTP plumbing for ServiceNow: one bounded request, the documented error envelope, and the
//! mapping from status to [`ServiceNowError`].

use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{RequestBuilder, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use super::ServiceNowError;

/// No ServiceNow body larger than this is read.
pub(super) const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

/// Text taken from a reply into an error is clipped to this many characters.
const MESSAGE_LIMIT_CHARS: usize = 300;

/// An answer: status, headers and the body, or `None` when it was over the limit.
pub(super) type RawReply = crate::http::CappedReply;

impl RawReply {
    /// The body of a successful reply as JSON.
    pub(super) fn json(&self) -> Result<Value, ServiceNowError> {
        let body = self.body.as_deref().ok_or_else(|| {
            ServiceNowError::Decode(format!("reply body is larger than {MAX_BODY_BYTES} bytes"))
        })?;
        json_body(body)
    }
}

/// A reply body as JSON; anything else is a [`ServiceNowError::Decode`].
pub(super) fn json_body(body: &[u8]) -> Result<Value, ServiceNowError> {
    serde_json::from_slice(body)
        .map_err(|e| ServiceNowError::Decode(clip(&format!("reply is not JSON: {e}"))))
}

/// Sends one request and reads at most [`MAX_BODY_BYTES`] of the answer.
pub(super) async fn send(request: RequestBuilder) -> Result<RawReply, ServiceNowError> {
    crate::http::send_capped(request, MAX_BODY_BYTES)
        .await
        .map_err(|e| ServiceNowError::Transport(clip(&crate::http::error_chain(&e))))
}

/// `Bearer <token>` as a header value marked sensitive, so it never shows in debug output.
pub(super) fn bearer(token: &SecretString) -> Result<HeaderValue, ServiceNowError> {
    let mut value =
        HeaderValue::from_str(&format!("Bearer {}", token.expose_secret())).map_err(|_| {
            ServiceNowError::Decode("the access token cannot go in an HTTP header".into())
        })?;
    value.set_sensitive(true);
    Ok(value)
}

/// Clips text to [`MESSAGE_LIMIT_CHARS`] characters, marking the cut.
pub(super) fn clip(text: &str) -> String {
    match text.char_indices().nth(MESSAGE_LIMIT_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// Maps a Table API failure to an error. Takes the message and detail from the documented
/// envelope `{"error":{"message","detail"},"status":"failure"}` when there is one. Public so
/// that the error parser can be exercised without an instance.
pub fn table_error(reply: &RawReply) -> ServiceNowError {
    let (message, detail) = envelope(&reply.body_text(), reply.status);
    let status = reply.status.as_u16();
    match reply.status {
        StatusCode::NOT_FOUND => ServiceNowError::NotFound,
        StatusCode::UNAUTHORIZED => ServiceNowError::Unauthorized { message },
        StatusCode::FORBIDDEN => ServiceNowError::Forbidden { message },
        StatusCode::TOO_MANY_REQUESTS => rate_limited(&reply.headers),
        StatusCode::BAD_REQUEST => ServiceNowError::BadRequest { message, detail },
        s if s.is_client_error() => ServiceNowError::BadRequest {
            message: format!("status {status}: {message}"),
            detail,
        },
        _ => ServiceNowError::Server { status, message },
    }
}

/// Message and detail from an error body, clipped; the raw text or the status reason when the
/// body is not the envelope.
fn envelope(body: &str, status: StatusCode) -> (String, String) {
    let value: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let error = &value["error"];
    let text = |v: &Value| v.as_str().map(str::to_owned);
    let message = text(&error["message"])
        .or_else(|| (value.is_null() && !body.trim().is_empty()).then(|| body.trim().to_owned()))
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("no message").to_owned());
    let detail = text(&error["detail"]).unwrap_or_default();
    (clip(&message), clip(&detail))
}

/// The rate-limit headers of a 429: `X-RateLimit-Limit`, `X-RateLimit-Reset` (Unix seconds)
/// and `Retry-After` (seconds).
pub(super) fn rate_limited(headers: &HeaderMap) -> ServiceNowError {
    let header = |name| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    ServiceNowError::RateLimited {
        reset_at_secs: header("x-ratelimit-reset").and_then(|v| v.parse().ok()),
        retry_after_secs: header("retry-after").and_then(|v| v.parse().ok()),
        limit: header("x-ratelimit-limit").map(clip),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(status: u16, body: &str) -> RawReply {
        RawReply {
            status: StatusCode::from_u16(status).unwrap(),
            headers: HeaderMap::new(),
            body: Some(body.as_bytes().to_vec()),
        }
    }

    #[test]
    fn the_error_envelope_supplies_message_and_detail() {
        let body = r#"{"error":{"message":"Invalid table","detail":"incidnt"},"status":"failure"}"#;
        let err = table_error(&reply(400, body));
        assert!(
            matches!(&err, ServiceNowError::BadRequest { message, detail }
            if message == "Invalid table" && detail == "incidnt"),
            "{err:?}"
        );
    }

    #[test]
    fn odd_statuses_and_bodies_are_still_classified() {
        let err = table_error(&reply(415, ""));
        assert!(
            matches!(&err, ServiceNowError::BadRequest { message, .. }
            if message == "status 415: Unsupported Media Type"),
            "{err:?}"
        );
        let err = table_error(&reply(302, ""));
        assert!(
            matches!(err, ServiceNowError::Server { status: 302, .. }),
            "{err:?}"
        );
        let err = table_error(&reply(503, "<html>Instance is hibernating</html>"));
        assert!(
            matches!(&err, ServiceNowError::Server { status: 503, message }
            if message.contains("hibernating")),
            "{err:?}"
        );
        let err = table_error(&reply(500, &"z".repeat(5000)));
        let ServiceNowError::Server { message, .. } = err else {
            panic!()
        };
        assert_eq!(message.chars().count(), MESSAGE_LIMIT_CHARS + 1);
    }

    #[test]
    fn malformed_rate_limit_headers_are_left_out() {
        let mut headers = HeaderMap::new();
        headers.insert("x-ratelimit-reset", HeaderValue::from_static("soon"));
        headers.insert("retry-after", HeaderValue::from_static("-5"));
        let err = rate_limited(&headers);
        assert!(
            matches!(
                err,
                ServiceNowError::RateLimited {
                    reset_at_secs: None,
                    retry_after_secs: None,
                    limit: None
                }
            ),
            "{err:?}"
        );
    }
}
