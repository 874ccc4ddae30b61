//! The one way adapters build HTTP clients: rustls only, bounded timeouts, no redirects followed
//! (a redirect from a provider is reported, never silently chased to another host).

use std::time::Duration;

/// Settings shared by every outbound client.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Whole-request timeout.
    pub timeout: Duration,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Refuse plain `http://` URLs (production). Tests and the demo talk to loopback over HTTP.
    pub https_only: bool,
    /// The outbound hosts each region's tenants may be connected to, checked before a
    /// tenant's clients are built. The default is the production lists plus loopback, for
    /// tests and the demo; `steward serve` always sets it from the `[egress]` config.
    pub egress: crate::egress::Egress,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            https_only: false,
            egress: crate::egress::Egress::default().with_loopback(),
        }
    }
}

/// Builds a client with the given settings.
pub fn client(settings: &HttpSettings) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .use_rustls_tls()
        .timeout(settings.timeout)
        .connect_timeout(settings.connect_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .https_only(settings.https_only)
        .user_agent(concat!("steward/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// An answer whose body was read with a bound.
#[derive(Debug)]
pub struct CappedReply {
    pub status: reqwest::StatusCode,
    pub headers: reqwest::header::HeaderMap,
    /// `None` when the body was larger than the bound (declared or actual).
    pub body: Option<Vec<u8>>,
}

impl CappedReply {
    /// The body as text for an error message (empty when oversized).
    pub fn body_text(&self) -> String {
        self.body
            .as_deref()
            .map(String::from_utf8_lossy)
            .unwrap_or_default()
            .into_owned()
    }
}

/// Sends one request and reads at most `max` bytes of the answer, stopping as soon as the body
/// (declared by `Content-Length` or as received) is larger.
pub async fn send_capped(
    request: reqwest::RequestBuilder,
    max: usize,
) -> Result<CappedReply, reqwest::Error> {
    let mut response = request.send().await?;
    let status = response.status();
    let headers = std::mem::take(response.headers_mut());
    let oversized = |body: Option<Vec<u8>>| CappedReply {
        status,
        headers,
        body,
    };
    if response.content_length().is_some_and(|n| n > max as u64) {
        return Ok(oversized(None));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > max {
            return Ok(oversized(None));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(oversized(Some(body)))
}

/// A reqwest error with its causes, which is where the useful part of its text is.
pub fn error_chain(error: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
