//! Every failure the API reports, each owning its status. Bodies are
//! `{"error": "<stable code>", "message": "<what went wrong and what to do>"}`. A body never
//! carries a database or driver message, a file path or a panic: those are logged, and the
//! caller gets `internal` or `unavailable` with a fixed message.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use steward_adapters::webhook::SignatureError;
use steward_persistence::StoreError;
use tracing::error;

use crate::hardening::Limited;

/// An API failure.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Unknown tenant, source, run or route. Says nothing about which part was unknown.
    #[error("not found")]
    NotFound,
    #[error("the signature does not verify: {0}")]
    BadSignature(SignatureError),
    #[error("the timestamp is not acceptable: {0}")]
    BadTimestamp(SignatureError),
    #[error("missing or invalid API token")]
    Unauthenticated,
    #[error("the token lacks the `{0}` scope")]
    Forbidden(&'static str),
    #[error("body larger than {0} bytes")]
    TooLarge(usize),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unprocessable(String),
    /// The request is valid but the resource's current state refuses it.
    #[error("{0}")]
    Conflict(String),
    /// Not ready; the detail is logged, never sent.
    #[error("the service is not ready")]
    Unavailable(String),
    /// The client's address or tenant spent its request budget; sent before any handler ran.
    #[error("too many requests from this {limited}; retry after {retry_after_secs} s")]
    RateLimited {
        limited: Limited,
        retry_after_secs: u64,
    },
    /// The client did not finish sending the request in time.
    #[error("the request was not received in time")]
    RequestTimeout,
    /// The tenant is homed in another region: nothing of the request is stored here.
    #[error("{message}")]
    Misdirected {
        message: String,
        home_base_url: Option<String>,
    },
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            Self::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            Self::BadSignature(e) | Self::BadTimestamp(e) => {
                (StatusCode::UNAUTHORIZED, e.reason_code())
            }
            Self::Unauthenticated => (StatusCode::UNAUTHORIZED, "unauthenticated"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Self::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Self::Unprocessable(_) => (StatusCode::UNPROCESSABLE_ENTITY, "unprocessable"),
            Self::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            Self::RequestTimeout => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            Self::Misdirected { .. } => (StatusCode::MISDIRECTED_REQUEST, "misdirected"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    /// A signature failure, told apart from a timestamp failure.
    pub fn from_signature(e: SignatureError) -> Self {
        if e.is_timestamp_problem() {
            Self::BadTimestamp(e)
        } else {
            Self::BadSignature(e)
        }
    }
}

/// Parses a request body that must be one JSON object into `T` (400 otherwise). serde would
/// also fill a struct from a JSON array, by position; a body is refused unless it is an object,
/// so that `["ana", 5]` never passes for `{"person": "ana", "minutes": 5}`.
pub(crate) fn json_object<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::BadRequest(
            "invalid request body: expected a JSON object".into(),
        ));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::BadRequest(format!("invalid request body: {e}")))
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Invalid(why) => Self::BadRequest(why),
            StoreError::NotFound(_) => Self::NotFound,
            other => Self::Internal(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.parts();
        let message = match &self {
            // Internal details go to the log, not to the caller.
            Self::Internal(detail) => {
                error!(error = %detail, "Request failed.");
                "internal error; the request was not applied".to_owned()
            }
            Self::Unavailable(detail) => {
                tracing::warn!(error = %detail, "Not ready.");
                "the service is not ready; try again shortly".to_owned()
            }
            other => other.to_string(),
        };
        let mut body = json!({ "error": code, "message": message });
        if let Self::Misdirected { home_base_url, .. } = &self {
            body["home_base_url"] = json!(home_base_url);
        }
        let mut response = (status, Json(body)).into_response();
        if let Self::RateLimited {
            retry_after_secs, ..
        } = &self
        {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
        }
        if matches!(self, Self::RequestTimeout) {
            // The rest of the body is not read: the connection cannot carry another request.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderMap;

    async fn body_of(error: ApiError) -> (StatusCode, HeaderMap, String) {
        let response = error.into_response();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), 4096)
            .await
            .unwrap();
        (status, headers, String::from_utf8(bytes.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn internal_details_stay_out_of_the_body() {
        let detail = "database error: error returned from database: (code: 5) database is locked \
                      at /var/lib/steward/steward.db; panicked at persistence/src/runs.rs:42";
        for error in [
            ApiError::Internal(detail.into()),
            ApiError::Unavailable(detail.into()),
            ApiError::from(StoreError::Conflict(detail.into())),
        ] {
            let (status, _, body) = body_of(error).await;
            assert!(status.is_server_error(), "{status}");
            for leak in ["database", "/var/lib", "panicked", ".rs", "sqlx", "code: 5"] {
                assert!(!body.contains(leak), "{leak} in {body}");
            }
            let json: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert!(json["error"].is_string() && json["message"].is_string());
        }
    }

    #[tokio::test]
    async fn a_rate_limit_says_when_to_retry_and_a_timeout_closes() {
        let (status, headers, body) = body_of(ApiError::RateLimited {
            limited: Limited::Tenant,
            retry_after_secs: 7,
        })
        .await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(headers[header::RETRY_AFTER], "7");
        assert!(
            body.contains("rate_limited") && body.contains("tenant"),
            "{body}"
        );

        let (status, headers, _) = body_of(ApiError::RequestTimeout).await;
        assert_eq!(status, StatusCode::REQUEST_TIMEOUT);
        assert_eq!(headers[header::CONNECTION], "close");
    }

    #[derive(Debug, serde::Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Body {
        person: String,
        minutes: u32,
    }

    #[test]
    fn only_a_json_object_fills_a_body() {
        let ok: Body = json_object(b" \n{\"person\": \"ana\", \"minutes\": 5}").unwrap();
        assert_eq!(
            ok,
            Body {
                person: "ana".into(),
                minutes: 5
            }
        );
        for bad in [
            &b"[\"ana\", 5]"[..],
            b"  [\"ana\", 5]",
            b"",
            b"null",
            b"\"ana\"",
            b"5",
            b"{\"person\": \"ana\"}",
            b"{\"person\": \"ana\", \"minutes\": 5, \"extra\": 1}",
            b"{\"person\": \"ana\", \"minutes\": 5",
            b"\xef\xbb\xbf{\"person\": \"ana\", \"minutes\": 5}",
        ] {
            let err = json_object::<Body>(bad).unwrap_err();
            assert!(matches!(err, ApiError::BadRequest(_)), "{bad:?}");
        }
    }
}
