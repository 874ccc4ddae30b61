//! A timestamping pass-through in front of a stand-in. Steward's connectors point at the tap;
//! the tap notes the arrival time of the requests a benchmark times (a Slack
//! `chat.postMessage`, a ServiceNow `PATCH` of an incident) and forwards every request to the
//! stand-in unchanged, returning its answer. The arrival is noted before the forward, so the
//! times measured end where the request reaches the stand-in's doorstep.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use steward_runtime::standins::SlackMessage;
use tokio::net::TcpListener;
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinHandle;

/// The largest request a tap forwards.
const BODY_LIMIT: usize = 4 * 1024 * 1024;

/// What a tap saw arrive.
#[derive(Debug)]
pub(crate) enum Seen {
    /// A `chat.postMessage` the Slack stand-in accepted, rebuilt as the posted message.
    SlackPost {
        /// When the request arrived.
        at: Instant,
        /// The message as posted, with the `ts` the stand-in gave it.
        message: SlackMessage,
    },
    /// A `PATCH` of an incident.
    Patch {
        /// When the request arrived.
        at: Instant,
        /// The incident's sys_id, from the path.
        sys_id: String,
    },
}

/// A running tap; dropping it stops the server.
pub(crate) struct Tap {
    url: String,
    task: JoinHandle<()>,
}

impl Tap {
    /// Starts a tap on a free loopback port in front of `upstream` (`http://127.0.0.1:PORT`),
    /// sending what it sees to `seen`.
    pub(crate) async fn start(
        upstream: String,
        seen: UnboundedSender<Seen>,
    ) -> anyhow::Result<Tap> {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .context("binding a tap")?;
        let url = format!("http://{}", listener.local_addr()?);
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(60))
            .build()?;
        let state = Arc::new(TapState {
            upstream: upstream.trim_end_matches('/').to_owned(),
            client,
            seen,
        });
        let app = Router::new().fallback(forward).with_state(state);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Tap { url, task })
    }

    /// `http://127.0.0.1:PORT`.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct TapState {
    upstream: String,
    client: reqwest::Client,
    seen: UnboundedSender<Seen>,
}

async fn forward(State(tap): State<Arc<TapState>>, request: Request) -> Response {
    let at = Instant::now();
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, BODY_LIMIT).await else {
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            "the tap refuses bodies over 4 MiB",
        )
            .into_response();
    };
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut out = tap
        .client
        .request(parts.method.clone(), format!("{}{path}", tap.upstream))
        .body(body.clone());
    for (name, value) in &parts.headers {
        if name != header::HOST && name != header::CONTENT_LENGTH {
            out = out.header(name, value);
        }
    }
    let answer = match out.send().await {
        Ok(answer) => answer,
        Err(e) => {
            return (
                StatusCode::BAD_GATEWAY,
                format!("the stand-in did not answer: {e}"),
            )
                .into_response();
        }
    };
    let status = answer.status();
    let headers = answer.headers().clone();
    let Ok(answer_body) = answer.bytes().await else {
        return (
            StatusCode::BAD_GATEWAY,
            "the stand-in's answer was cut short",
        )
            .into_response();
    };
    if let Some(seen) = observe(
        at,
        &parts.method,
        parts.uri.path(),
        &body,
        status,
        &answer_body,
    ) {
        let _ = tap.seen.send(seen);
    }
    respond(status, &headers, answer_body)
}

fn respond(status: StatusCode, headers: &HeaderMap, body: Bytes) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    if let Some(content_type) = headers.get(header::CONTENT_TYPE) {
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, content_type.clone());
    }
    response
}

/// What a request means to a benchmark, if anything.
fn observe(
    at: Instant,
    method: &Method,
    path: &str,
    body: &[u8],
    status: StatusCode,
    answer: &[u8],
) -> Option<Seen> {
    if *method == Method::PATCH && status.is_success() {
        let sys_id = path.strip_prefix("/api/now/table/incident/")?;
        return Some(Seen::Patch {
            at,
            sys_id: sys_id.to_owned(),
        });
    }
    if *method == Method::POST && path.ends_with("/chat.postMessage") {
        return posted_message(body, answer).map(|message| Seen::SlackPost { at, message });
    }
    None
}

/// The message a successful `chat.postMessage` (JSON arguments) posted.
fn posted_message(request: &[u8], answer: &[u8]) -> Option<SlackMessage> {
    let args: Value = serde_json::from_slice(request).ok()?;
    let answer: Value = serde_json::from_slice(answer).ok()?;
    if answer.get("ok") != Some(&Value::Bool(true)) {
        return None;
    }
    let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_owned);
    Some(SlackMessage {
        channel: text(&answer, "channel")?,
        ts: text(&answer, "ts")?,
        text: text(&args, "text").unwrap_or_default(),
        blocks: args.get("blocks").cloned().unwrap_or(Value::Array(vec![])),
        updates: vec![],
    })
}

/// The first incident number (`INC` and at least seven digits) in `text`.
pub(crate) fn incident_number(text: &str) -> Option<&str> {
    let mut rest = text;
    while let Some(at) = rest.find("INC") {
        let digits = rest[at + 3..]
            .bytes()
            .take_while(u8::is_ascii_digit)
            .count();
        if digits >= 7 {
            return Some(&rest[at..at + 3 + digits]);
        }
        rest = &rest[at + 3..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_successful_post_is_rebuilt_as_the_posted_message() {
        let request = br#"{"channel":"C0BENCHAPPR","text":"INC0010001: 2 changes","blocks":[{"type":"divider"}]}"#;
        let answer = br#"{"ok":true,"channel":"C0BENCHAPPR","ts":"1700000000.000100"}"#;
        let seen = observe(
            Instant::now(),
            &Method::POST,
            "/api/chat.postMessage",
            request,
            StatusCode::OK,
            answer,
        );
        let Some(Seen::SlackPost { message, .. }) = seen else {
            panic!("not seen as a post: {seen:?}");
        };
        assert_eq!(message.ts, "1700000000.000100");
        assert_eq!(message.blocks[0]["type"], "divider");
    }

    #[test]
    fn refused_or_malformed_posts_are_not_seen() {
        let ok_request = br#"{"channel":"C1","text":"x"}"#;
        let refused = br#"{"ok":false,"error":"invalid_auth"}"#;
        let path = "/api/chat.postMessage";
        let now = Instant::now();
        assert!(
            observe(
                now,
                &Method::POST,
                path,
                ok_request,
                StatusCode::OK,
                refused
            )
            .is_none()
        );
        assert!(observe(now, &Method::POST, path, b"{", StatusCode::OK, b"{").is_none());
        let no_ts = br#"{"ok":true,"channel":"C1"}"#;
        assert!(observe(now, &Method::POST, path, ok_request, StatusCode::OK, no_ts).is_none());
    }

    #[test]
    fn incident_patches_are_seen_by_sys_id_and_others_are_not() {
        let now = Instant::now();
        let path = "/api/now/table/incident/0123456789abcdef0123456789abcdef";
        let seen = observe(now, &Method::PATCH, path, b"{}", StatusCode::OK, b"{}");
        assert!(matches!(seen, Some(Seen::Patch { sys_id, .. }) if sys_id.len() == 32));
        assert!(observe(now, &Method::GET, path, b"", StatusCode::OK, b"{}").is_none());
        assert!(
            observe(
                now,
                &Method::PATCH,
                path,
                b"{}",
                StatusCode::NOT_FOUND,
                b"{}"
            )
            .is_none()
        );
        let other = "/api/now/table/sys_user/1";
        assert!(observe(now, &Method::PATCH, other, b"{}", StatusCode::OK, b"{}").is_none());
    }

    #[test]
    fn incident_numbers_need_seven_digits() {
        assert_eq!(
            incident_number("Approval requested: INC0010001 (2)"),
            Some("INC0010001")
        );
        assert_eq!(
            incident_number("INC12 then INC0012345678"),
            Some("INC0012345678")
        );
        assert_eq!(incident_number("INC"), None);
        assert_eq!(incident_number("no number, INC123456"), None);
        assert_eq!(incident_number(&"INC".repeat(10_000)), None);
    }
}
