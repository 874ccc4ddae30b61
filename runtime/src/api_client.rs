//! What the operator commands (`steward runs`, `writes`, `tenants`, `break-glass`, `report`)
//! share as clients of a running server: finding the token, one HTTP client that never
//! follows a redirect (the token would follow it), the error a refusal becomes, and printing
//! server text with its control characters escaped.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use url::Url;

/// How long one request may take by default.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest token file read.
const MAX_TOKEN_FILE_BYTES: u64 = 4096;

/// The token to present: the file when given, else the variable `var`, else (when
/// `sign_in_for` names the server) the sign-in `steward login` saved for that server.
pub fn read_token(
    file: Option<&Path>,
    var: &str,
    sign_in_for: Option<&Url>,
) -> anyhow::Result<SecretString> {
    let token = match file {
        Some(path) => {
            let size = std::fs::metadata(path)
                .with_context(|| format!("reading the token file {}", path.display()))?
                .len();
            if size > MAX_TOKEN_FILE_BYTES {
                bail!(
                    "the token file {} is too large to hold a token",
                    path.display()
                );
            }
            std::fs::read_to_string(path)
                .with_context(|| format!("reading the token file {}", path.display()))?
        }
        None => match (std::env::var(var), sign_in_for) {
            (Ok(token), _) => token,
            (Err(_), Some(server)) => {
                return crate::login_cli::saved_token(None, server)?.with_context(|| {
                    format!(
                        "sign in with `steward login`, or give the token with --token-file or \
                         {var}"
                    )
                });
            }
            (Err(_), None) => bail!("give the token with --token-file or {var}"),
        },
    };
    let token = token.trim().to_owned();
    if token.is_empty() {
        bail!("the token is empty");
    }
    Ok(SecretString::from(token))
}

/// The variable naming a PEM file of CA certificates the operator commands trust besides the
/// web roots, for a server whose certificate a private CA issued.
pub const CA_FILE_VAR: &str = "STEWARD_CA_FILE";

/// The start of every operator command's HTTP client: no redirect followed, and the CA
/// certificates of `STEWARD_CA_FILE` trusted when it is set.
pub fn http_builder() -> anyhow::Result<reqwest::ClientBuilder> {
    let mut builder = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none());
    if let Some(path) = std::env::var_os(CA_FILE_VAR).filter(|v| !v.is_empty()) {
        let roots = steward_adapters::http::read_ca_file(Path::new(&path))
            .map_err(|e| anyhow::anyhow!("{CA_FILE_VAR}: {e}"))?;
        for root in roots {
            builder = builder.add_root_certificate(root);
        }
    }
    Ok(builder)
}

/// A client of one server, presenting one token.
pub struct ApiClient {
    http: reqwest::Client,
    base: Url,
    token: SecretString,
}

impl ApiClient {
    /// A client of `base` (http or https) with the default timeout.
    pub fn new(base: &Url, token: SecretString) -> anyhow::Result<Self> {
        Self::with_timeout(base, token, REQUEST_TIMEOUT)
    }

    /// A client of `base` whose requests may each take `timeout`.
    pub fn with_timeout(
        base: &Url,
        token: SecretString,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        if !matches!(base.scheme(), "http" | "https") || base.host().is_none() {
            bail!("--url must be an http or https URL");
        }
        let http = http_builder()?.timeout(timeout).build()?;
        Ok(Self {
            http,
            base: base.clone(),
            token,
        })
    }

    /// The URL of `path` under the base.
    pub fn url(&self, path: &str) -> anyhow::Result<Url> {
        self.base
            .join(path)
            .with_context(|| format!("building the URL for {path}"))
    }

    /// A request to `path`, carrying the token.
    pub fn request(
        &self,
        method: reqwest::Method,
        path: &str,
    ) -> anyhow::Result<reqwest::RequestBuilder> {
        Ok(self
            .http
            .request(method, self.url(path)?)
            .bearer_auth(self.token.expose_secret()))
    }

    /// Sends `request`; its JSON answer, or an error quoting the server's message.
    pub async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let response = request
            .send()
            .await
            .with_context(|| format!("reaching Steward at {}", self.base))?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let message = body["message"].as_str().unwrap_or("no message");
            bail!("Steward answered {status}: {}", clean(message));
        }
        Ok(body)
    }

    /// `GET path?query`.
    pub async fn get(&self, path: &str, query: &[(&str, String)]) -> anyhow::Result<Value> {
        self.send(self.request(reqwest::Method::GET, path)?.query(query))
            .await
    }

    /// `method path` with an optional JSON body.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let mut request = self.request(method, path)?;
        if let Some(body) = body {
            request = request.json(body);
        }
        self.send(request).await
    }
}

/// Text from outside, with control characters escaped, so server text cannot drive the
/// terminal.
pub fn clean(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().collect()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(clean("ok\u{1b}[31mred\n"), "ok\\u{1b}[31mred\\n");
        assert_eq!(clean("plain é"), "plain é");
    }

    #[test]
    fn tokens_come_from_the_file_trimmed_and_empty_or_huge_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t");
        std::fs::write(&file, "  secret-token\n").unwrap();
        let token = read_token(Some(&file), "STEWARD_TEST_UNSET_VAR", None).unwrap();
        assert_eq!(token.expose_secret(), "secret-token");
        std::fs::write(&file, "\n").unwrap();
        assert!(read_token(Some(&file), "STEWARD_TEST_UNSET_VAR", None).is_err());
        std::fs::write(&file, "x".repeat(5000)).unwrap();
        assert!(read_token(Some(&file), "STEWARD_TEST_UNSET_VAR", None).is_err());
        let err = read_token(None, "STEWARD_TEST_UNSET_VAR", None).unwrap_err();
        assert!(err.to_string().contains("STEWARD_TEST_UNSET_VAR"), "{err}");
    }

    #[test]
    fn only_http_urls_make_a_client() {
        let token = || SecretString::from("t".to_owned());
        assert!(ApiClient::new(&Url::parse("http://127.0.0.1:1").unwrap(), token()).is_ok());
        for bad in [
            "file:///etc/passwd",
            "ftp://127.0.0.1/",
            "data:text/plain,x",
        ] {
            assert!(
                ApiClient::new(&Url::parse(bad).unwrap(), token()).is_err(),
                "{bad}"
            );
        }
    }
}
