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
    /// Refuse plain `http://` URLs: when a connector URL is set, before a tenant's clients are
    /// built ([`HttpSettings::check_url`]) and in every request. `steward serve` sets it in
    /// every profile but `dev` (always in production); tests and the demo talk to loopback over
    /// HTTP.
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

impl HttpSettings {
    /// The one check of a connector URL, made when it is set (the tenancy API, declared
    /// tenants at startup, the connection check) and again before a tenant's clients are built:
    /// `https://` while `https_only`, then a host on the allow-list of the tenant's home region
    /// for `kind`.
    pub fn check_url(
        &self,
        region: steward_core::Region,
        kind: crate::egress::EgressKind,
        url: &str,
    ) -> Result<(), crate::egress::EgressRefused> {
        if self.https_only {
            crate::egress::require_https(region, kind, url)?;
        }
        self.egress.check(region, kind, url)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::egress::{EgressKind, Refusal};
    use steward_core::Region;

    #[test]
    fn https_only_refuses_plain_http_before_the_allow_list() {
        let mut settings = HttpSettings::default();
        let plain = "http://127.0.0.1:9/v1";
        assert!(
            settings
                .check_url(Region::Us, EgressKind::Llm, plain)
                .is_ok()
        );
        settings.https_only = true;
        let refused = settings
            .check_url(Region::Us, EgressKind::Llm, plain)
            .unwrap_err();
        assert!(matches!(refused.why, Refusal::PlainHttp(_)), "{refused}");
        assert!(
            settings
                .check_url(Region::Us, EgressKind::Llm, "https://127.0.0.1:9/v1")
                .is_ok()
        );
        let refused = settings
            .check_url(Region::Us, EgressKind::Llm, "https://llm.evil.io/v1")
            .unwrap_err();
        assert_eq!(refused.why, Refusal::Host);
    }
}
