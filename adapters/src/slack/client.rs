//! The few Slack Web API methods Steward calls: `chat.postMessage`, `chat.update` and
//! `chat.postEphemeral`. One attempt per call; the caller owns retries and asks
//! [`SlackError::is_retryable`] whether one makes sense.

use std::fmt;

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value, json};
use url::Url;

/// Largest response body read from Slack.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;
const MAX_ERROR_CODE_CHARS: usize = 64;
const JSON_UTF8: &str = "application/json; charset=utf-8";

/// Slack error codes that describe a passing condition on Slack's side.
const RETRYABLE_CODES: [&str; 5] = [
    "ratelimited",
    "rate_limited",
    "request_timeout",
    "fatal_error",
    "internal_error",
];

/// A message Slack accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostedMessage {
    /// The channel id the message landed in.
    pub channel: String,
    /// The message's timestamp, which is its id within the channel.
    pub ts: String,
}

/// Why a Web API call did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlackError {
    /// Slack answered `ok: false` with this error code (for example `channel_not_found`).
    #[error("slack refused the call: {code}")]
    Api {
        /// Slack's error code, limited to 64 characters of `[A-Za-z0-9_.-]`.
        code: String,
    },
    /// HTTP 429, with the `Retry-After` seconds when Slack sent them.
    #[error("slack rate limit hit{}", retry_after_text(.retry_after_secs))]
    RateLimited {
        /// Seconds to wait before the next call, from `Retry-After`.
        retry_after_secs: Option<u64>,
    },
    /// An HTTP status other than 200 and 429.
    #[error("slack answered http status {status}")]
    Http {
        /// The status code.
        status: u16,
    },
    /// The request did not complete: connection, TLS or timeout.
    #[error("request to slack failed: {0}")]
    Transport(String),
    /// The response could not be read as a Web API answer.
    #[error("unreadable slack response: {0}")]
    Decode(String),
    /// The request could not be built from this client's settings (a base URL that is not
    /// HTTP, or a token that cannot be sent in a header). Retrying cannot help.
    #[error("slack request cannot be built: {0}")]
    InvalidRequest(String),
}

fn retry_after_text(secs: &Option<u64>) -> String {
    secs.map(|s| format!("; retry after {s} s"))
        .unwrap_or_default()
}

impl SlackError {
    /// Whether the same call may succeed later: rate limits, server errors, transport failures
    /// and Slack's own transient error codes. Authentication, permission, channel and argument
    /// errors are final.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::RateLimited { .. } | Self::Transport(_) => true,
            Self::Http { status } => *status >= 500,
            Self::Api { code } => RETRYABLE_CODES.contains(&code.as_str()),
            Self::Decode(_) | Self::InvalidRequest(_) => false,
        }
    }
}

/// A Slack Web API client for one bot token.
#[derive(Clone)]
pub struct SlackClient {
    api_base: Url,
    bot_token: SecretString,
    http: reqwest::Client,
}

impl fmt::Debug for SlackClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlackClient")
            .field("api_base", &self.api_base.as_str())
            .field("bot_token", &"[redacted]")
            .finish_non_exhaustive()
    }
}

impl SlackClient {
    /// A client calling methods under `api_base` (for Slack itself `https://slack.com/api/`).
    /// A missing trailing slash is added, so method names always join onto the base path.
    pub fn new(mut api_base: Url, bot_token: SecretString, http: reqwest::Client) -> Self {
        if !api_base.path().ends_with('/') {
            let path = format!("{}/", api_base.path());
            api_base.set_path(&path);
        }
        Self {
            api_base,
            bot_token,
            http,
        }
    }

    /// Posts a message (`chat.postMessage`). `text` is the notification fallback; `blocks` is
    /// the Block Kit layout, left out of the request when it is `null`.
    pub async fn post_message(
        &self,
        channel: &str,
        text: &str,
        blocks: &Value,
    ) -> Result<PostedMessage, SlackError> {
        let mut args = json!({ "channel": channel, "text": text });
        with_blocks(&mut args, blocks);
        let answer = self.call("chat.postMessage", &args).await?;
        Ok(PostedMessage {
            channel: answer_str(&answer, "channel")?,
            ts: answer_str(&answer, "ts")?,
        })
    }

    /// Posts a reply in the thread of the message `thread_ts` (`chat.postMessage` with
    /// `thread_ts`), such as a reminder under an approval request. The reply stays in the
    /// thread; it is not broadcast to the channel.
    pub async fn post_in_thread(
        &self,
        channel: &str,
        thread_ts: &str,
        text: &str,
    ) -> Result<PostedMessage, SlackError> {
        let args = json!({ "channel": channel, "thread_ts": thread_ts, "text": text });
        let answer = self.call("chat.postMessage", &args).await?;
        Ok(PostedMessage {
            channel: answer_str(&answer, "channel")?,
            ts: answer_str(&answer, "ts")?,
        })
    }

    /// Replaces a message (`chat.update`). A `null` `blocks` leaves the message's blocks as
    /// they are; an empty array removes them.
    pub async fn update_message(
        &self,
        channel: &str,
        ts: &str,
        text: &str,
        blocks: &Value,
    ) -> Result<(), SlackError> {
        let mut args = json!({ "channel": channel, "ts": ts, "text": text });
        with_blocks(&mut args, blocks);
        self.call("chat.update", &args).await.map(drop)
    }

    /// Shows a message only `user` can see (`chat.postEphemeral`), such as a refusal to a
    /// person who may not approve.
    pub async fn post_ephemeral(
        &self,
        channel: &str,
        user: &str,
        text: &str,
    ) -> Result<(), SlackError> {
        let args = json!({ "channel": channel, "user": user, "text": text });
        self.call("chat.postEphemeral", &args).await.map(drop)
    }

    async fn call(&self, method: &str, args: &Value) -> Result<Map<String, Value>, SlackError> {
        let url = self.method_url(method)?;
        let response = self
            .http
            .post(url)
            .header(AUTHORIZATION, self.authorization()?)
            .header(CONTENT_TYPE, JSON_UTF8)
            .body(args.to_string())
            .send()
            .await
            .map_err(transport)?;
        let status = response.status();
        if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Err(SlackError::RateLimited {
                retry_after_secs: retry_after(response.headers()),
            });
        }
        if status != reqwest::StatusCode::OK {
            return Err(SlackError::Http {
                status: status.as_u16(),
            });
        }
        let body = read_capped(response).await?;
        interpret(&body)
    }

    fn method_url(&self, method: &str) -> Result<Url, SlackError> {
        if !matches!(self.api_base.scheme(), "http" | "https") {
            return Err(SlackError::InvalidRequest(
                "api base url is not http or https".into(),
            ));
        }
        self.api_base
            .join(method)
            .map_err(|_| SlackError::InvalidRequest("api base url cannot take a path".into()))
    }

    fn authorization(&self) -> Result<HeaderValue, SlackError> {
        let mut value = HeaderValue::from_str(&format!(
            "Bearer {}",
            self.bot_token.expose_secret()
        ))
        .map_err(|_| {
            SlackError::InvalidRequest("bot token has characters not allowed in a header".into())
        })?;
        value.set_sensitive(true);
        Ok(value)
    }
}

fn with_blocks(args: &mut Value, blocks: &Value) {
    if !blocks.is_null() {
        args["blocks"] = blocks.clone();
    }
}

fn transport(error: reqwest::Error) -> SlackError {
    let mut message = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    SlackError::Transport(message)
}

fn retry_after(headers: &HeaderMap) -> Option<u64> {
    headers.get(RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()
}

async fn read_capped(mut response: reqwest::Response) -> Result<Vec<u8>, SlackError> {
    let too_large = || SlackError::Decode(format!("response exceeds {MAX_RESPONSE_BYTES} bytes"));
    if response
        .content_length()
        .is_some_and(|len| len > MAX_RESPONSE_BYTES as u64)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(transport)? {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Reads a Web API answer: `ok: true` gives the object, `ok: false` its error code.
fn interpret(body: &[u8]) -> Result<Map<String, Value>, SlackError> {
    let Ok(Value::Object(answer)) = serde_json::from_slice::<Value>(body) else {
        return Err(SlackError::Decode("response is not a JSON object".into()));
    };
    match answer.get("ok").and_then(Value::as_bool) {
        Some(true) => Ok(answer),
        Some(false) => match answer.get("error").and_then(Value::as_str) {
            Some(code) => Err(SlackError::Api {
                code: clean_code(code),
            }),
            None => Err(SlackError::Decode("ok is false but no error code".into())),
        },
        None => Err(SlackError::Decode("response has no boolean ok".into())),
    }
}

fn clean_code(code: &str) -> String {
    code.chars()
        .take(MAX_ERROR_CODE_CHARS)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '?'
            }
        })
        .collect()
}

fn answer_str(answer: &Map<String, Value>, key: &str) -> Result<String, SlackError> {
    answer
        .get(key)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| SlackError::Decode(format!("answer has no string {key}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    const TOKEN: &str = "xoxb-test-token-123";

    async fn server_with(api_method: &str, response: ResponseTemplate) -> MockServer {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path(format!("/api/{api_method}")))
            .respond_with(response)
            .mount(&server)
            .await;
        server
    }

    fn client(server: &MockServer) -> SlackClient {
        let base = Url::parse(&format!("{}/api/", server.uri())).expect("mock url");
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client builds");
        SlackClient::new(base, SecretString::from(TOKEN), http)
    }

    fn ok_json(body: Value) -> ResponseTemplate {
        ResponseTemplate::new(200).set_body_json(body)
    }

    fn documented_success() -> Value {
        json!({"ok":true,"channel":"C1H9RESGL","ts":"1503435956.000247",
            "message":{"text":"Here's a message for you","username":"ecto1","bot_id":"B19LU7CSY",
              "attachments":[{"text":"This is an attachment","id":1,"fallback":"This is an attachment's fallback"}],
              "type":"message","subtype":"bot_message","ts":"1503435956.000247"}})
    }

    async fn only_request(server: &MockServer) -> wiremock::Request {
        let mut requests = server.received_requests().await.expect("recording on");
        assert_eq!(requests.len(), 1, "exactly one attempt");
        requests.remove(0)
    }

    #[tokio::test]
    async fn post_message_returns_the_channel_and_ts_of_the_documented_answer() {
        let server = server_with("chat.postMessage", ok_json(documented_success())).await;
        let blocks = json!([{"type":"section","text":{"type":"plain_text","text":"hi"}}]);
        let posted = client(&server)
            .post_message("C1H9RESGL", "fallback", &blocks)
            .await
            .expect("posted");
        assert_eq!(
            posted,
            PostedMessage {
                channel: "C1H9RESGL".into(),
                ts: "1503435956.000247".into()
            }
        );
        let request = only_request(&server).await;
        assert_eq!(
            request.headers.get("authorization").expect("auth header"),
            &format!("Bearer {TOKEN}")
        );
        assert_eq!(
            request.headers.get("content-type").expect("content type"),
            JSON_UTF8
        );
        let sent: Value = serde_json::from_slice(&request.body).expect("json body");
        assert_eq!(
            sent,
            json!({"channel":"C1H9RESGL","text":"fallback","blocks":blocks})
        );
    }

    #[tokio::test]
    async fn a_thread_reply_names_the_parent_message_and_returns_its_own_ts() {
        let answer = json!({"ok":true,"channel":"C1","ts":"1503435957.000100",
            "message":{"type":"message","text":"Reminder","thread_ts":"1503435956.000247",
              "ts":"1503435957.000100"}});
        let server = server_with("chat.postMessage", ok_json(answer)).await;
        let posted = client(&server)
            .post_in_thread("C1", "1503435956.000247", "Reminder")
            .await
            .expect("posted");
        assert_eq!(posted.ts, "1503435957.000100");
        let sent: Value =
            serde_json::from_slice(&only_request(&server).await.body).expect("json body");
        assert_eq!(
            sent,
            json!({"channel":"C1","thread_ts":"1503435956.000247","text":"Reminder"})
        );
    }

    #[tokio::test]
    async fn a_thread_reply_refused_by_slack_is_an_api_error() {
        let server = server_with(
            "chat.postMessage",
            ok_json(json!({"ok":false,"error":"thread_not_found"})),
        )
        .await;
        let err = client(&server)
            .post_in_thread("C1", "0.0", "Reminder")
            .await
            .unwrap_err();
        assert_eq!(
            err,
            SlackError::Api {
                code: "thread_not_found".into()
            }
        );
        assert!(!err.is_retryable());
    }

    #[tokio::test]
    async fn update_message_sends_channel_ts_text_and_blocks() {
        let answer = json!({"ok":true,"channel":"C1","ts":"1.2","text":"t"});
        let server = server_with("chat.update", ok_json(answer)).await;
        let blocks = json!([]);
        client(&server)
            .update_message("C1", "1.2", "done", &blocks)
            .await
            .expect("updated");
        let request = only_request(&server).await;
        let sent: Value = serde_json::from_slice(&request.body).expect("json body");
        assert_eq!(
            sent,
            json!({"channel":"C1","ts":"1.2","text":"done","blocks":[]})
        );
    }

    #[tokio::test]
    async fn null_blocks_are_left_out_of_the_request() {
        let answer = json!({"ok":true,"channel":"C1","ts":"1.2"});
        let server = server_with("chat.update", ok_json(answer)).await;
        client(&server)
            .update_message("C1", "1.2", "done", &Value::Null)
            .await
            .expect("updated");
        let sent: Value =
            serde_json::from_slice(&only_request(&server).await.body).expect("json body");
        assert_eq!(sent, json!({"channel":"C1","ts":"1.2","text":"done"}));
    }

    #[tokio::test]
    async fn post_ephemeral_addresses_one_user() {
        let answer = json!({"ok":true,"message_ts":"1.3"});
        let server = server_with("chat.postEphemeral", ok_json(answer)).await;
        client(&server)
            .post_ephemeral("C1", "U2", "you may not approve this")
            .await
            .expect("posted");
        let sent: Value =
            serde_json::from_slice(&only_request(&server).await.body).expect("json body");
        assert_eq!(
            sent,
            json!({"channel":"C1","user":"U2","text":"you may not approve this"})
        );
    }

    #[tokio::test]
    async fn ok_false_answers_become_api_errors_classified_for_retry() {
        let cases = [
            ("channel_not_found", false),
            ("invalid_auth", false),
            ("not_in_channel", false),
            ("too_many_attachments", false),
            ("rate_limited", true),
            ("ratelimited", true),
            ("request_timeout", true),
            ("fatal_error", true),
            ("internal_error", true),
        ];
        for (code, retryable) in cases {
            let server = server_with(
                "chat.postMessage",
                ok_json(json!({"ok":false,"error":code})),
            )
            .await;
            let err = client(&server)
                .post_message("C1", "t", &Value::Null)
                .await
                .unwrap_err();
            assert_eq!(err, SlackError::Api { code: code.into() });
            assert_eq!(err.is_retryable(), retryable, "{code}");
        }
    }

    #[tokio::test]
    async fn hostile_error_codes_are_cleaned_and_shortened() {
        let code = format!("bad\n<!channel>{}", "x".repeat(500));
        let server = server_with(
            "chat.postMessage",
            ok_json(json!({"ok":false,"error":code})),
        )
        .await;
        let err = client(&server)
            .post_message("C1", "t", &Value::Null)
            .await
            .unwrap_err();
        let SlackError::Api { code } = err else {
            panic!("expected Api");
        };
        assert_eq!(code.chars().count(), MAX_ERROR_CODE_CHARS);
        assert!(code.starts_with("bad???channel?xx"), "{code}");
    }

    #[tokio::test]
    async fn http_429_reports_retry_after() {
        let limited = ResponseTemplate::new(429)
            .insert_header("Retry-After", "30")
            .set_body_json(json!({"ok":false,"error":"ratelimited"}));
        let server = server_with("chat.postMessage", limited).await;
        let err = client(&server)
            .post_message("C1", "t", &Value::Null)
            .await
            .unwrap_err();
        assert_eq!(
            err,
            SlackError::RateLimited {
                retry_after_secs: Some(30)
            }
        );
        assert!(err.is_retryable());
        assert_eq!(err.to_string(), "slack rate limit hit; retry after 30 s");
    }

    #[tokio::test]
    async fn http_429_without_a_usable_retry_after_still_reports_the_limit() {
        for header in [None, Some("soon"), Some("Wed, 21 Oct 2015 07:28:00 GMT")] {
            let mut limited = ResponseTemplate::new(429);
            if let Some(value) = header {
                limited = limited.insert_header("Retry-After", value);
            }
            let server = server_with("chat.postMessage", limited).await;
            let err = client(&server)
                .post_message("C1", "t", &Value::Null)
                .await
                .unwrap_err();
            assert_eq!(
                err,
                SlackError::RateLimited {
                    retry_after_secs: None
                }
            );
        }
    }

    #[tokio::test]
    async fn server_errors_are_retryable_and_client_errors_are_not() {
        for (status, retryable) in [
            (500, true),
            (503, true),
            (400, false),
            (404, false),
            (302, false),
        ] {
            let server = server_with("chat.postMessage", ResponseTemplate::new(status)).await;
            let err = client(&server)
                .post_message("C1", "t", &Value::Null)
                .await
                .unwrap_err();
            assert_eq!(err, SlackError::Http { status });
            assert_eq!(err.is_retryable(), retryable, "{status}");
        }
    }

    #[tokio::test]
    async fn unreadable_answers_are_decode_errors() {
        let cases = [
            ResponseTemplate::new(200).set_body_string("<html>proxy error</html>"),
            ResponseTemplate::new(200).set_body_string(""),
            ok_json(json!([1, 2])),
            ok_json(json!({"channel":"C1","ts":"1"})),
            ok_json(json!({"ok":"true","channel":"C1","ts":"1"})),
            ok_json(json!({"ok":false})),
            ok_json(json!({"ok":true,"channel":"C1"})),
            ok_json(json!({"ok":true,"channel":7,"ts":"1"})),
        ];
        for response in cases {
            let server = server_with("chat.postMessage", response).await;
            let err = client(&server)
                .post_message("C1", "t", &Value::Null)
                .await
                .unwrap_err();
            assert!(matches!(err, SlackError::Decode(_)), "{err:?}");
            assert!(!err.is_retryable());
        }
    }

    #[tokio::test]
    async fn oversized_answers_are_not_read_whole() {
        let huge = format!(
            "{{\"ok\":true,\"channel\":\"C1\",\"ts\":\"1\",\"pad\":\"{}\"}}",
            "x".repeat(MAX_RESPONSE_BYTES)
        );
        let server = server_with(
            "chat.postMessage",
            ResponseTemplate::new(200).set_body_string(huge),
        )
        .await;
        let err = client(&server)
            .post_message("C1", "t", &Value::Null)
            .await
            .unwrap_err();
        assert!(
            matches!(err, SlackError::Decode(ref m) if m.contains("exceeds")),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn a_server_that_never_answers_is_a_retryable_transport_error() {
        let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let base = Url::parse(&format!(
            "http://{}/api/",
            silent.local_addr().expect("addr")
        ))
        .expect("url");
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(std::time::Duration::from_millis(300))
            .build()
            .expect("client");
        let slack = SlackClient::new(base, SecretString::from(TOKEN), http);
        let err = slack
            .post_message("C1", "t", &Value::Null)
            .await
            .unwrap_err();
        assert!(matches!(err, SlackError::Transport(_)), "{err:?}");
        assert!(err.is_retryable());
        assert!(!err.to_string().contains(TOKEN));
    }

    #[tokio::test]
    async fn a_token_unfit_for_a_header_is_refused_without_a_request() {
        let server = server_with("chat.postMessage", ok_json(documented_success())).await;
        let base = Url::parse(&format!("{}/api/", server.uri())).expect("mock url");
        let slack = SlackClient::new(
            base,
            SecretString::from("xoxb-\nInjected: yes"),
            reqwest::Client::new(),
        );
        let err = slack
            .post_message("C1", "t", &Value::Null)
            .await
            .unwrap_err();
        assert!(matches!(err, SlackError::InvalidRequest(_)));
        assert!(!err.is_retryable());
        assert!(!err.to_string().contains("Injected"));
        assert!(
            server
                .received_requests()
                .await
                .expect("recording")
                .is_empty()
        );
    }

    #[tokio::test]
    async fn a_base_without_trailing_slash_still_joins_method_names() {
        let server = server_with("chat.postMessage", ok_json(documented_success())).await;
        let base = Url::parse(&format!("{}/api", server.uri())).expect("mock url");
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client");
        let slack = SlackClient::new(base, SecretString::from(TOKEN), http);
        assert!(slack.post_message("C1", "t", &Value::Null).await.is_ok());
    }

    #[tokio::test]
    async fn a_non_http_base_is_refused() {
        let base = Url::parse("mailto:someone@example.com").expect("url");
        let slack = SlackClient::new(base, SecretString::from(TOKEN), reqwest::Client::new());
        let err = slack
            .post_message("C1", "t", &Value::Null)
            .await
            .unwrap_err();
        assert!(matches!(err, SlackError::InvalidRequest(_)));
    }

    #[test]
    fn debug_output_does_not_show_the_token() {
        let base = Url::parse("https://slack.com/api/").expect("url");
        let slack = SlackClient::new(base, SecretString::from(TOKEN), reqwest::Client::new());
        let debug = format!("{slack:?}");
        assert!(!debug.contains(TOKEN), "{debug}");
        assert!(debug.contains("[redacted]"));
    }
}
