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
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            https_only: false,
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
