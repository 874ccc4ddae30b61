//! Every failure the API reports, each owning its status. Bodies are
//! `{"error": "<stable code>", "message": "<what went wrong and what to do>"}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use steward_adapters::webhook::SignatureError;
use steward_persistence::StoreError;
use tracing::error;

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
    #[error("the service is not ready: {0}")]
    Unavailable(String),
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
            other => other.to_string(),
        };
        (status, Json(json!({ "error": code, "message": message }))).into_response()
    }
}
