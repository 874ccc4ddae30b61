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
    /// Certificate authorities trusted for outbound TLS besides the built-in web roots (a
    /// private CA in front of a connector); `steward serve` reads them from
    /// `[http] outbound_ca_file` with [`read_ca_file`]. Empty by default.
    pub extra_roots: Vec<reqwest::Certificate>,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            https_only: false,
            egress: crate::egress::Egress::default().with_loopback(),
            extra_roots: Vec::new(),
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

/// The largest CA file [`read_ca_file`] reads, in bytes.
pub const MAX_CA_FILE_BYTES: u64 = 1024 * 1024;

/// Reads a PEM file of one or more CA certificates to trust for outbound TLS. The error names
/// the file and what is wrong: unreadable, too large, not PEM, no certificate in it, or a
/// certificate that does not parse.
pub fn read_ca_file(path: &std::path::Path) -> Result<Vec<reqwest::Certificate>, String> {
    use std::io::Read as _;
    let name = path.display();
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot read the CA file {name}: {e}"))?;
    let mut pem = Vec::new();
    file.take(MAX_CA_FILE_BYTES + 1)
        .read_to_end(&mut pem)
        .map_err(|e| format!("cannot read the CA file {name}: {e}"))?;
    if pem.len() as u64 > MAX_CA_FILE_BYTES {
        return Err(format!(
            "the CA file {name} is larger than {MAX_CA_FILE_BYTES} bytes"
        ));
    }
    if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
        return Err(format!("the CA file {name} holds no PEM CERTIFICATE block"));
    }
    let roots = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| format!("the CA file {name} is not valid PEM certificates: {e}"))?;
    // Build a client once so a certificate rustls cannot use is reported here, at startup.
    let mut builder = reqwest::Client::builder().use_rustls_tls();
    for root in &roots {
        builder = builder.add_root_certificate(root.clone());
    }
    builder.build().map_err(|e| {
        format!(
            "the CA file {name} holds a certificate that cannot be trusted: {}",
            error_chain(&e)
        )
    })?;
    Ok(roots)
}

/// Builds a client with the given settings.
pub fn client(settings: &HttpSettings) -> Result<reqwest::Client, reqwest::Error> {
    let mut builder = reqwest::Client::builder();
    for root in &settings.extra_roots {
        builder = builder.add_root_certificate(root.clone());
    }
    builder
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

    #[test]
    fn a_ca_file_that_does_not_hold_certificates_is_refused_by_name() {
        let dir = std::env::temp_dir().join(format!("steward-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pem");
        let err = read_ca_file(&missing).unwrap_err();
        assert!(
            err.contains("cannot read the CA file") && err.contains("missing.pem"),
            "{err}"
        );
        let text = dir.join("text.pem");
        std::fs::write(&text, "not a certificate").unwrap();
        let err = read_ca_file(&text).unwrap_err();
        assert!(err.contains("no PEM CERTIFICATE block"), "{err}");
        let garbage = dir.join("garbage.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = read_ca_file(&garbage).unwrap_err();
        assert!(err.contains("garbage.pem"), "{err}");
        let large = dir.join("large.pem");
        std::fs::write(&large, vec![b'A'; MAX_CA_FILE_BYTES as usize + 1]).unwrap();
        let err = read_ca_file(&large).unwrap_err();
        assert!(err.contains("larger than"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
