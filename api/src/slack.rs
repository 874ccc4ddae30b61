//! `POST /v1/slack/interactions/{tenant}`: button clicks from Slack. The path picks the
//! tenant's signing secret before anything is parsed; the click is answered well within Slack's
//! 3 seconds, and the decision is routed to the waiting run.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use steward_actors::{Clicker, Verdict, secret_names};
use steward_adapters::slack::{
    APPROVE_ACTION, REJECT_ACTION, parse_block_actions, verify_slack_signature,
};
use steward_core::{ApprovalId, TenantId};
use steward_persistence::{Authenticator, TenantScope};
use tracing::warn;

use crate::error::ApiError;
use crate::state::AppState;
use crate::webhooks::read_body;

/// How long the handler waits for the decision before answering anyway.
const DECISION_WAIT: Duration = Duration::from_millis(2500);

/// A button click from Slack, answered within 3 seconds; an unknown action is acknowledged and
/// ignored. A refused click is audited and told to the clicker privately, still `200`.
#[utoipa::path(post, path = "/v1/slack/interactions/{tenant}", tag = "intake",
    params(
        ("tenant" = String, Path, description = "Tenant id"),
        ("x-slack-request-timestamp" = String, Header, description = "Unix seconds, within 5 minutes"),
    ),
    request_body(content = crate::openapi::SlackForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "Acknowledged"),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::BadSignature),
        (status = 404, response = crate::openapi::NotFound),
        (status = 421, description = "The tenant is homed in another region; nothing was stored", body = crate::openapi::Misdirected),
        (status = 413, response = crate::openapi::TooLarge),
        (status = 500, response = crate::openapi::Internal),
    ),
    security(("slackSignature" = [])))]
pub(crate) async fn interaction(
    State(state): State<AppState>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let tenant = TenantId::parse(&tenant).map_err(|_| ApiError::NotFound)?;
    crate::tenancy::check_home(&state, &tenant)?;
    let scope = TenantScope::assume(tenant, Authenticator::SlackSignature);
    let secret = state
        .store
        .secret(
            &scope,
            &state.master_key,
            secret_names::SLACK_SIGNING_SECRET,
        )
        .await?
        .ok_or(ApiError::NotFound)?;
    let body = read_body(body, &headers, state.limits.slack_body_bytes).await?;
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    let now = state.store.clock().now_secs();
    verify_slack_signature(
        &secret,
        header("x-slack-request-timestamp"),
        header("x-slack-signature"),
        &body,
        now,
    )
    .map_err(ApiError::from_signature)?;

    let action = parse_block_actions(&body)
        .map_err(|e| ApiError::BadRequest(format!("not a block_actions payload: {e}")))?;
    let verdict = match action.action_id.as_str() {
        APPROVE_ACTION => Verdict::Approve,
        REJECT_ACTION => Verdict::Reject,
        // Another app's button, or one of ours we do not act on: acknowledge and ignore.
        _ => return Ok(StatusCode::OK),
    };
    let approval_id = ApprovalId::parse(&action.value)
        .map_err(|_| ApiError::BadRequest("the button does not name an approval".into()))?;
    let clicker = Clicker {
        user_id: action.user_id,
        user_name: action.user_name,
        channel: action.channel_id,
        message_ts: action.message_ts,
    };
    let steward = state.steward.clone();
    let decision =
        tokio::spawn(async move { steward.decide(&scope, approval_id, verdict, &clicker).await });
    match tokio::time::timeout(DECISION_WAIT, decision).await {
        Ok(Ok(Ok(_))) => Ok(StatusCode::OK),
        Ok(Ok(Err(e))) => Err(e.into()),
        Ok(Err(join)) => Err(ApiError::Internal(join.to_string())),
        Err(_) => {
            // The decision goes on in the background; Slack must hear back now.
            warn!("Deciding an approval took longer than the acknowledgement budget.");
            Ok(StatusCode::OK)
        }
    }
}
