//! Verifiable evidence over HTTP: the public keys that sign checkpoints (no authentication:
//! auditors need them, and they are public), and a tenant's evidence for a time range as a
//! stream of JSON lines that `steward evidence export` sorts into a bundle.

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body::Frame;
use serde::Deserialize;
use serde_json::{Value, json};
use steward_persistence::evidence::bundle::ExportLine;
use steward_persistence::{ExportRange, StoreError, TenantScope};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::error::ApiError;
use crate::state::AppState;

/// Lines buffered between the store and the connection.
const LINE_BUFFER: usize = 512;

/// The range of an evidence request, Unix ms.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct EvidenceQuery {
    /// Start, Unix ms, inclusive (default 0).
    #[serde(default)]
    from: Option<i64>,
    /// End, Unix ms, exclusive (default: no end).
    #[serde(default)]
    to: Option<i64>,
}

/// `GET /v1/evidence/keys`: the public keys that sign checkpoints and export ranges.
#[utoipa::path(get, path = "/v1/evidence/keys", tag = "evidence",
    responses(
        (status = 200, description = "`{\"keys\": [{key_id, algorithm, public_key, created_at}]}`", body = Object),
        (status = 500, response = crate::openapi::Internal),
    ))]
pub(crate) async fn keys(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let keys = state.store.evidence_keys().await?;
    Ok(Json(json!({ "keys": keys })))
}

/// `GET /v1/tenants/{id}/evidence` (operator): the tenant's evidence for `from <= at < to`.
#[utoipa::path(get, path = "/v1/tenants/{id}/evidence", tag = "platform",
    params(("id" = String, Path, description = "Tenant id"), EvidenceQuery),
    responses(
        (status = 200, description = "JSON lines: `range`, `audit` entries, `run`s, `approval`s, `checkpoint`s, `key`s",
            body = String, content_type = "application/x-ndjson"),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthenticated),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 500, response = crate::openapi::Internal),
    ),
    security(("operatorToken" = []), ("opsSession" = []), ("oidcIdToken" = [])))]
pub(crate) async fn platform_export(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<EvidenceQuery>,
) -> Result<Response, ApiError> {
    crate::ops::authorize(&state, &headers, crate::ops_auth::Action::PlatformRead).await?;
    let scope = crate::tenancy::known_tenant(&state, &id).await?;
    stream(state, scope, query).await
}

/// `GET /v1/tenant/evidence` (admin): the caller's tenant's evidence for `from <= at < to`.
#[utoipa::path(get, path = "/v1/tenant/evidence", tag = "tenant",
    params(EvidenceQuery),
    responses(
        (status = 200, description = "JSON lines: `range`, `audit` entries, `run`s, `approval`s, `checkpoint`s, `key`s",
            body = String, content_type = "application/x-ndjson"),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthenticated),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 500, response = crate::openapi::Internal),
    ),
    security(("tenantToken" = ["admin"])))]
pub(crate) async fn tenant_export(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<EvidenceQuery>,
) -> Result<Response, ApiError> {
    let admin = crate::tenancy::admin(&state, &headers).await?;
    stream(state, admin.scope, query).await
}

async fn stream(
    state: AppState,
    scope: TenantScope,
    query: EvidenceQuery,
) -> Result<Response, ApiError> {
    let from = query.from.unwrap_or(0);
    let to = query.to.unwrap_or(i64::MAX);
    if from < 0 || to <= from {
        return Err(ApiError::BadRequest(
            "`to` must be after `from`, both Unix ms".into(),
        ));
    }
    let signer = state.store.checkpoint_signer(&state.master_key).await?;
    let (tx, rx) = mpsc::channel(LINE_BUFFER);
    let store = state.store.clone();
    let task =
        tokio::spawn(async move { store.export_evidence(&scope, &signer, from, to, &tx).await });
    let body = LineBody {
        rx,
        task: Some(task),
    };
    let headers = [(header::CONTENT_TYPE, "application/x-ndjson")];
    Ok((StatusCode::OK, headers, Body::new(body)).into_response())
}

/// The export stream: each line as it comes from the store. A store error midway ends the
/// body with an error, so the connection is cut and the client never takes a short stream
/// for a whole one.
struct LineBody {
    rx: mpsc::Receiver<ExportLine>,
    task: Option<JoinHandle<Result<ExportRange, StoreError>>>,
}

impl http_body::Body for LineBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(line)) => {
                let mut text = serde_json::to_vec(&line).map_err(std::io::Error::other)?;
                text.push(b'\n');
                Poll::Ready(Some(Ok(Frame::data(Bytes::from(text)))))
            }
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                let Some(task) = self.task.as_mut() else {
                    return Poll::Ready(None);
                };
                let done = match Pin::new(task).poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(done) => done,
                };
                self.task = None;
                match done {
                    Ok(Ok(_)) => Poll::Ready(None),
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "evidence export failed midway");
                        Poll::Ready(Some(Err(std::io::Error::other(e.to_string()))))
                    }
                    Err(e) => Poll::Ready(Some(Err(std::io::Error::other(e.to_string())))),
                }
            }
        }
    }
}
