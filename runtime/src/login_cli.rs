//! `steward login` and `steward logout`: a person signs in to a server's ops API through its
//! identity provider with the device authorization grant (RFC 8628), and the ID token is kept
//! for `steward runs …` and `steward writes …`.
//!
//! `login` asks the server which provider and client to use (`GET /v1/ops/oidc`), reads the
//! provider's discovery document, asks for a device code, shows the verification URI and the
//! user code, and polls the token endpoint at the interval the provider gives, slowing down
//! when told to, until the person approves, refuses, or the code expires. The ID token is
//! verified (signature, issuer, audience, expiry) before it is saved, with its expiry and the
//! server's URL, in a file of mode 0600: `$XDG_CONFIG_HOME/steward/session.json` (or
//! `~/.config/steward/session.json`, or `--session-file`). A saved token is presented only to
//! the server it was obtained for and only until it expires; then `steward login` again.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use openidconnect::core::{
    CoreAuthDisplay, CoreClaimName, CoreClaimType, CoreClient, CoreClientAuthMethod, CoreGrantType,
    CoreIdTokenVerifier, CoreJsonWebKey, CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm, CoreJwsSigningAlgorithm, CoreResponseMode, CoreResponseType,
    CoreSubjectIdentifierType,
};
use openidconnect::{
    AdditionalProviderMetadata, ClientId, DeviceAuthorizationUrl, DeviceCodeErrorResponseType,
    IssuerUrl, Nonce, ProviderMetadata, RequestTokenError, Scope, TokenResponse,
};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use url::Url;

/// How long one call to the server or the provider may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest a login waits for the person, whatever the provider allows.
const MAX_WAIT: Duration = Duration::from_secs(30 * 60);

/// `steward login`.
#[derive(Debug, Args)]
pub struct LoginArgs {
    /// The server's base URL.
    #[arg(long, env = "STEWARD_URL", default_value = "http://127.0.0.1:8080")]
    pub url: Url,
    /// Where to keep the sign-in; default `$XDG_CONFIG_HOME/steward/session.json`.
    #[arg(long)]
    pub session_file: Option<PathBuf>,
}

/// `steward logout`.
#[derive(Debug, Args)]
pub struct LogoutArgs {
    /// The sign-in file to remove; default `$XDG_CONFIG_HOME/steward/session.json`.
    #[arg(long)]
    pub session_file: Option<PathBuf>,
}

/// A saved sign-in.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedSession {
    /// The server it is for (its origin).
    pub server: String,
    pub issuer: String,
    pub client_id: String,
    pub id_token: String,
    /// Unix seconds; the token is not presented after this.
    pub expires_at: i64,
    pub subject: String,
    pub email: Option<String>,
}

/// What the person is asked to do.
#[derive(Debug, Clone)]
pub struct Prompt {
    pub verification_uri: String,
    pub verification_uri_complete: Option<String>,
    pub user_code: String,
}

/// The provider metadata `steward login` needs beyond the standard: the device endpoint.
#[derive(Clone, Debug, Deserialize, Serialize)]
struct DeviceEndpoint {
    device_authorization_endpoint: DeviceAuthorizationUrl,
}
impl AdditionalProviderMetadata for DeviceEndpoint {}

type DeviceProviderMetadata = ProviderMetadata<
    DeviceEndpoint,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

/// The default sign-in file: `$XDG_CONFIG_HOME/steward/session.json`, else
/// `$HOME/.config/steward/session.json`.
pub fn default_session_file() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".config"))
        })?;
    Some(base.join("steward").join("session.json"))
}

fn session_path(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    given
        .map(Path::to_path_buf)
        .or_else(default_session_file)
        .context("no sign-in file: set XDG_CONFIG_HOME or HOME, or give --session-file")
}

fn origin(url: &Url) -> String {
    url.origin().ascii_serialization()
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Refuses a plain-http URL that is not on a loopback host.
fn check_transport(what: &str, url: &Url) -> anyhow::Result<()> {
    let loopback = match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    match url.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        _ => bail!("{what} must be https (plain http only on a loopback host): {url}"),
    }
}

fn http_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .use_rustls_tls()
        .timeout(REQUEST_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()?)
}

/// The identity provider the server names at `GET /v1/ops/oidc`.
async fn server_provider(
    http: &reqwest::Client,
    server: &Url,
) -> anyhow::Result<(String, String, Vec<String>)> {
    let url = server.join("v1/ops/oidc")?;
    let reply = steward_adapters::http::send_capped(http.get(url), 64 * 1024)
        .await
        .with_context(|| format!("reaching Steward at {server}"))?;
    if reply.status == reqwest::StatusCode::NOT_FOUND {
        bail!("{server} has no identity provider configured ([oidc]); use the operator token");
    }
    if !reply.status.is_success() {
        bail!("Steward answered {} to GET /v1/ops/oidc", reply.status);
    }
    let body: Value = serde_json::from_slice(reply.body.as_deref().unwrap_or_default())
        .context("Steward's /v1/ops/oidc answer is not JSON")?;
    let issuer = body["issuer"]
        .as_str()
        .context("no issuer in /v1/ops/oidc")?;
    let client_id = body["client_id"]
        .as_str()
        .filter(|c| !c.is_empty())
        .context("no client_id in /v1/ops/oidc")?;
    let scopes = body["scopes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    check_transport(
        "the issuer",
        &Url::parse(issuer).context("the issuer is not a URL")?,
    )?;
    Ok((issuer.to_owned(), client_id.to_owned(), scopes))
}

/// Signs in to `server` with the device grant, showing the person what to do through `show`,
/// and returns the verified session (not yet saved). Fails when the person refuses, the code
/// expires, or the provider or server misbehaves, saying which.
pub async fn device_login(
    server: &Url,
    show: &mut (dyn FnMut(&Prompt) + Send),
) -> anyhow::Result<SavedSession> {
    check_transport("--url", server)?;
    let http = http_client()?;
    let (issuer, client_id, scopes) = server_provider(&http, server).await?;
    let call = |request| steward_api::oidc::send(http.clone(), request);
    // The issuer exactly as the server names it: discovery and `iss` must match it.
    let issuer_url = IssuerUrl::new(issuer.clone())?;
    let metadata = DeviceProviderMetadata::discover_async(issuer_url.clone(), &call)
        .await
        .with_context(|| format!("reading the identity provider's discovery at {issuer}"))?;
    let device_url = metadata
        .additional_metadata()
        .device_authorization_endpoint
        .clone();
    check_transport("the device endpoint", device_url.url())?;
    let jwks = metadata.jwks().clone();
    let client =
        CoreClient::from_provider_metadata(metadata, ClientId::new(client_id.clone()), None)
            .set_device_authorization_url(device_url);
    let mut request = client.exchange_device_code();
    for scope in scopes.iter().filter(|s| *s != "openid") {
        request = request.add_scope(Scope::new(scope.clone()));
    }
    let details: openidconnect::core::CoreDeviceAuthorizationResponse =
        request.request_async(&call).await.map_err(|e| {
            anyhow::anyhow!("the device authorization request failed: {}", describe(&e))
        })?;
    show(&Prompt {
        verification_uri: details.verification_uri().to_string(),
        verification_uri_complete: details
            .verification_uri_complete()
            .map(|u| u.secret().clone()),
        user_code: details.user_code().secret().clone(),
    });
    let wait = details.expires_in().min(MAX_WAIT);
    let answer = client
        .exchange_device_access_token(&details)?
        .request_async(&call, tokio::time::sleep, Some(wait))
        .await
        .map_err(|e| match &e {
            RequestTokenError::ServerResponse(r) => match r.error() {
                DeviceCodeErrorResponseType::AccessDenied => {
                    anyhow::anyhow!("the sign-in was refused at the identity provider")
                }
                DeviceCodeErrorResponseType::ExpiredToken => anyhow::anyhow!(
                    "the code expired before the sign-in was approved; run `steward login` again"
                ),
                _ => anyhow::anyhow!("the identity provider refused: {}", describe(&e)),
            },
            _ => anyhow::anyhow!("polling the identity provider failed: {}", describe(&e)),
        })?;
    let id_token = answer
        .id_token()
        .context("the identity provider's answer has no ID token")?;
    let verifier = CoreIdTokenVerifier::new_public_client(
        ClientId::new(client_id.clone()),
        issuer_url.clone(),
        jwks,
    )
    .set_allowed_algs([
        CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
        CoreJwsSigningAlgorithm::EcdsaP256Sha256,
    ])
    .set_other_audience_verifier_fn(|_| true);
    let claims = id_token
        .claims(&verifier, |_: Option<&Nonce>| Ok(()))
        .context("the ID token does not verify")?;
    Ok(SavedSession {
        server: origin(server),
        issuer: issuer_url.to_string(),
        client_id,
        id_token: id_token.to_string(),
        expires_at: claims.expiration().timestamp(),
        subject: claims.subject().to_string(),
        email: claims.email().map(|e| e.to_string()),
    })
}

fn describe<E: std::error::Error>(e: &E) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Writes `session` to `path` with mode 0600 (its folder 0700 when created), replacing
/// what was there in one rename.
pub fn save(session: &SavedSession, path: &Path) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.exists() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
    }
    let mut file = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("writing in {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        file.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    serde_json::to_writer_pretty(&mut file, session)?;
    file.write_all(b"\n")?;
    file.persist(path)
        .with_context(|| format!("saving {}", path.display()))?;
    Ok(())
}

/// The saved ID token for `server`, when there is a sign-in file for it. A sign-in for
/// another server is not presented (None); an expired one is an error that says to log in.
pub fn saved_token(file: Option<&Path>, server: &Url) -> anyhow::Result<Option<SecretString>> {
    let Ok(path) = session_path(file) else {
        return Ok(None);
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let session: SavedSession = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a Steward sign-in", path.display()))?;
    if session.server != origin(server) {
        return Ok(None);
    }
    if session.expires_at <= now_secs() {
        bail!(
            "your sign-in to {} has expired; run `steward login`",
            session.server
        );
    }
    Ok(Some(SecretString::from(session.id_token)))
}

/// Removes the sign-in file; whether there was one.
pub fn logout(file: Option<&Path>) -> anyhow::Result<bool> {
    let path = session_path(file)?;
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

/// Runs `steward login`.
pub async fn run_login(args: LoginArgs) -> anyhow::Result<ExitCode> {
    crate::boot::install_crypto_provider();
    let path = session_path(args.session_file.as_deref())?;
    let mut show = |p: &Prompt| {
        println!("To sign in, open {}", p.verification_uri);
        println!("and enter the code {}", p.user_code);
        if let Some(complete) = &p.verification_uri_complete {
            println!("(or open {complete})");
        }
        println!("Waiting for the sign-in to be approved…");
    };
    let session = device_login(&args.url, &mut show).await?;
    save(&session, &path)?;
    println!(
        "Signed in as {} until {}; saved to {}.",
        session.email.as_deref().unwrap_or(&session.subject),
        time::OffsetDateTime::from_unix_timestamp(session.expires_at)
            .ok()
            .and_then(|t| t
                .format(&time::format_description::well_known::Rfc3339)
                .ok())
            .unwrap_or_else(|| session.expires_at.to_string()),
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Runs `steward logout`.
pub fn run_logout(args: LogoutArgs) -> anyhow::Result<ExitCode> {
    if logout(args.session_file.as_deref())? {
        println!("Signed out.");
    } else {
        println!("There was no sign-in to remove.");
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(server: &str, expires_at: i64) -> SavedSession {
        SavedSession {
            server: server.into(),
            issuer: "https://idp.example.com".into(),
            client_id: "steward".into(),
            id_token: "eyJ.eyJ.sig".into(),
            expires_at,
            subject: "u-1".into(),
            email: None,
        }
    }

    #[test]
    fn a_saved_sign_in_is_private_and_only_for_its_server_until_it_expires() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("steward").join("session.json");
        let server = Url::parse("http://127.0.0.1:8080/").unwrap();
        save(&session("http://127.0.0.1:8080", now_secs() + 600), &path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            let dir_mode = std::fs::metadata(path.parent().unwrap())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(dir_mode & 0o777, 0o700);
        }
        assert!(saved_token(Some(&path), &server).unwrap().is_some());
        let other = Url::parse("http://127.0.0.1:9999/").unwrap();
        assert!(saved_token(Some(&path), &other).unwrap().is_none());
        save(&session("http://127.0.0.1:8080", now_secs() - 1), &path).unwrap();
        let expired = saved_token(Some(&path), &server).unwrap_err().to_string();
        assert!(expired.contains("steward login"), "{expired}");
        std::fs::write(&path, "{not json").unwrap();
        assert!(saved_token(Some(&path), &server).is_err());
        assert!(logout(Some(&path)).unwrap());
        assert!(!logout(Some(&path)).unwrap());
        assert!(saved_token(Some(&path), &server).unwrap().is_none());
    }

    #[test]
    fn plain_http_only_on_loopback() {
        for ok in [
            "https://idp.example.com",
            "http://127.0.0.1:1",
            "http://localhost:2",
            "http://[::1]:3",
        ] {
            assert!(
                check_transport("x", &Url::parse(ok).unwrap()).is_ok(),
                "{ok}"
            );
        }
        for bad in [
            "http://idp.example.com",
            "ftp://127.0.0.1",
            "http://10.0.0.1",
        ] {
            assert!(
                check_transport("x", &Url::parse(bad).unwrap()).is_err(),
                "{bad}"
            );
        }
    }
}
