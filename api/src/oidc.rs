//! OpenID Connect sign-in for the people who use the ops API and page.
//!
//! Steward is a relying party of one OpenID provider (`[oidc]` in the config). It reads the
//! provider's discovery document (`{issuer}/.well-known/openid-configuration`) and key set on
//! first use, keeps both, and fetches the key set again when a token names a key it does not
//! know (at most once per [`OidcSettings::jwks_refetch_after`]).
//!
//! An ID token is accepted when: it is at most [`MAX_ID_TOKEN_BYTES`] long and a compact JWS;
//! its `alg` is RS256 or ES256 (`none`, every `HS*` and anything else are refused) and its
//! signature verifies with a key of the provider's set; `iss` is the issuer exactly; `aud`
//! contains the client id and names no other audience unless `azp` is the client id; `azp`,
//! when present, is the client id; `exp` is ahead and `iat` and `nbf` are not ahead, each by
//! more than [`OidcSettings::clock_skew`]; and, on the page flow, `nonce` is the one sent.
//! The groups in the configured claim then map to Steward roles; a person with none is 403.
//!
//! The page flow is the authorization code flow with PKCE (S256): [`Oidc::start`] keeps the
//! `state`, `nonce` and code verifier under a random pre-login id that travels in a short-lived
//! cookie, and [`Oidc::finish`] takes them back once (single use) when the provider redirects.
//! The verification is `openidconnect`'s (signature, issuer, audience, expiry, nonce) with the
//! checks it leaves to the client (`azp`, `nbf`, `iat` and the skew) added here.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreGenderClaim, CoreIdTokenVerifier, CoreJsonWebKeySet,
    CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm, CoreProviderMetadata,
};
use openidconnect::{
    AdditionalClaims, AuthorizationCode, ClaimsVerificationError, ClientId, ClientSecret,
    CsrfToken, HttpRequest, HttpResponse, IdToken, IdTokenClaims, IssuerUrl, JsonWebKeySet, Nonce,
    PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope, SignatureVerificationError,
    TokenResponse,
};
use rand::RngCore;
use rand::rngs::OsRng;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use subtle::ConstantTimeEq;
use tokio::sync::Mutex as AsyncMutex;

use crate::expiring::ExpiringMap;
use crate::ops_auth::{Person, Role, Via};

/// The longest ID token accepted, in bytes; longer ones are refused before parsing. (The HTTP
/// server's header limit, 16 KiB by default, bounds a bearer token before this does.)
pub const MAX_ID_TOKEN_BYTES: usize = 8 * 1024;
/// The largest answer read from the provider (discovery, key set, token endpoint).
pub const MAX_PROVIDER_ANSWER_BYTES: usize = 256 * 1024;
/// How long a pre-login (from `/ops/oidc/start` to the callback) may take.
pub const PRE_LOGIN_TTL: Duration = Duration::from_secs(600);
/// The most pre-logins held at once; the oldest is dropped past this.
const MAX_PRE_LOGINS: usize = 1024;
/// The longest subject, email or name kept from a token.
const MAX_CLAIM_CHARS: usize = 256;
/// The most groups read from a token.
const MAX_GROUPS: usize = 512;

/// `[oidc]`: the provider, this client, and how groups become roles.
#[derive(Clone)]
pub struct OidcSettings {
    /// The issuer identifier, exactly as the provider's tokens carry it in `iss`.
    pub issuer: String,
    /// This client's id at the provider; ID tokens must name it in `aud`.
    pub client_id: String,
    /// The client secret of a confidential client; None: a public client (PKCE only).
    pub client_secret: Option<SecretString>,
    /// Where the provider sends the browser back: `https://<steward>/ops/oidc/callback`.
    pub redirect_url: String,
    /// Scopes asked for; `openid` is always included.
    pub scopes: Vec<String>,
    /// The claim that lists a person's groups (a string array or one string).
    pub groups_claim: String,
    /// Provider group → Steward role.
    pub roles: BTreeMap<String, Role>,
    /// Allow a plain-http issuer and redirect URL on a loopback host (the dev profile and
    /// tests); otherwise both must be https.
    pub allow_loopback_http: bool,
    /// Tolerance on `exp`, `iat` and `nbf`.
    pub clock_skew: Duration,
    /// The key set is fetched again for an unknown `kid` at most this often.
    pub jwks_refetch_after: Duration,
    /// Timeouts of calls to the provider.
    pub timeout: Duration,
}

impl std::fmt::Debug for OidcSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcSettings")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("confidential", &self.client_secret.is_some())
            .field("redirect_url", &self.redirect_url)
            .field("scopes", &self.scopes)
            .field("groups_claim", &self.groups_claim)
            .field("roles", &self.roles)
            .finish_non_exhaustive()
    }
}

impl OidcSettings {
    /// Settings with the defaults for everything but the provider and client.
    pub fn new(issuer: &str, client_id: &str, redirect_url: &str) -> Self {
        Self {
            issuer: issuer.to_owned(),
            client_id: client_id.to_owned(),
            client_secret: None,
            redirect_url: redirect_url.to_owned(),
            scopes: vec!["openid".into(), "email".into(), "profile".into()],
            groups_claim: "groups".into(),
            roles: BTreeMap::new(),
            allow_loopback_http: false,
            clock_skew: Duration::from_secs(60),
            jwks_refetch_after: Duration::from_secs(60),
            timeout: Duration::from_secs(10),
        }
    }

    /// Refuses an unusable setting: a URL that is not https (plain http only on a loopback
    /// host when allowed), an issuer with a query or fragment, an empty client id or groups
    /// claim, or no role mapping at all.
    pub fn check(&self) -> Result<(), String> {
        check_url("issuer", &self.issuer, self.allow_loopback_http)?;
        let issuer = url::Url::parse(&self.issuer).map_err(|e| format!("issuer: {e}"))?;
        if issuer.query().is_some() || issuer.fragment().is_some() {
            return Err("issuer must have no query or fragment".into());
        }
        check_url("redirect_url", &self.redirect_url, self.allow_loopback_http)?;
        if self.client_id.trim().is_empty() || self.client_id.len() > 256 {
            return Err("client_id must be 1 to 256 characters".into());
        }
        if self.groups_claim.trim().is_empty() || self.groups_claim.len() > 128 {
            return Err("groups_claim must be 1 to 128 characters".into());
        }
        if self.roles.is_empty() {
            return Err("[oidc.roles] must map at least one group to a role".into());
        }
        if self.scopes.iter().any(|s| s.is_empty() || s.contains(' ')) {
            return Err("each scope must be one non-empty word".into());
        }
        Ok(())
    }

    fn scopes(&self) -> Vec<String> {
        let mut scopes = vec!["openid".to_owned()];
        scopes.extend(self.scopes.iter().filter(|s| *s != "openid").cloned());
        scopes
    }
}

fn check_url(name: &str, value: &str, allow_loopback_http: bool) -> Result<(), String> {
    let url = url::Url::parse(value).map_err(|e| format!("{name}: {e}"))?;
    match url.scheme() {
        "https" => {}
        "http" if allow_loopback_http && is_loopback(&url) => {}
        "http" => {
            return Err(format!(
                "{name} must be https (plain http only for a loopback host in the dev profile)"
            ));
        }
        _ => return Err(format!("{name} must be an https URL")),
    }
    if url.host().is_none() {
        return Err(format!("{name} has no host"));
    }
    Ok(())
}

fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// Why a sign-in or a bearer ID token was refused.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    /// The token or the callback is not acceptable (401).
    #[error("{0}")]
    Invalid(String),
    /// The person is signed in but none of their groups maps to a role (403).
    #[error("no Steward role for {subject}")]
    NoRole { subject: String },
    /// The provider could not be reached or answered nonsense (503).
    #[error("the identity provider is unavailable: {0}")]
    Unavailable(String),
}

/// The claims beyond the standard ones: kept whole, to read the groups claim (whatever its
/// name) and `nbf`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct OtherClaims {
    #[serde(flatten)]
    claims: HashMap<String, Value>,
}

impl AdditionalClaims for OtherClaims {}

type StewardIdToken = IdToken<
    OtherClaims,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;
type StewardClaims = IdTokenClaims<OtherClaims, CoreGenderClaim>;

/// An HTTP failure talking to the provider.
#[derive(Debug, thiserror::Error)]
pub enum ProviderHttpError {
    #[error("{0}")]
    Request(String),
    #[error("the answer is larger than {MAX_PROVIDER_ANSWER_BYTES} bytes")]
    TooLarge,
}

/// Sends one of `openidconnect`'s requests through `client`, reading at most
/// [`MAX_PROVIDER_ANSWER_BYTES`] of the answer. Redirects are not followed (the client's
/// policy), so a provider cannot send the request elsewhere.
pub async fn send(
    client: reqwest::Client,
    request: HttpRequest,
) -> Result<HttpResponse, ProviderHttpError> {
    let (parts, body) = request.into_parts();
    let builder = client
        .request(parts.method, parts.uri.to_string())
        .headers(parts.headers)
        .body(body);
    let reply = steward_adapters::http::send_capped(builder, MAX_PROVIDER_ANSWER_BYTES)
        .await
        .map_err(|e| ProviderHttpError::Request(steward_adapters::http::error_chain(&e)))?;
    let body = reply.body.ok_or(ProviderHttpError::TooLarge)?;
    let mut response = http::Response::builder().status(reply.status);
    if let Some(headers) = response.headers_mut() {
        *headers = reply.headers;
    }
    response
        .body(body)
        .map_err(|e| ProviderHttpError::Request(e.to_string()))
}

/// What was read from the provider.
#[derive(Clone)]
struct Provider {
    metadata: CoreProviderMetadata,
    jwks: CoreJsonWebKeySet,
    jwks_fetched: Instant,
}

/// A pre-login: what the callback must match, held until it comes back (once).
struct PreLogin {
    state: String,
    nonce: String,
    verifier: String,
}

/// A started page sign-in: where to send the browser, and the pre-login cookie value.
pub struct Started {
    pub authorize_url: String,
    pub pre_login_id: SecretString,
}

/// The relying party: settings, the provider as last read, and the pending pre-logins.
pub struct Oidc {
    settings: OidcSettings,
    http: reqwest::Client,
    provider: AsyncMutex<Option<Provider>>,
    /// When discovery last failed, so a dead provider is not asked on every request.
    last_failure: Mutex<Option<Instant>>,
    pre_logins: ExpiringMap<PreLogin>,
}

impl std::fmt::Debug for Oidc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Oidc")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The cheap shape check made before any parsing: three base64url segments.
pub fn looks_like_jwt(token: &str) -> bool {
    let parts: Vec<&str> = token.split('.').collect();
    parts.len() == 3
        && parts[..2].iter().all(|p| !p.is_empty())
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn clip(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_control())
        .take(MAX_CLAIM_CHARS)
        .collect()
}

impl Oidc {
    /// A relying party for `settings`; the provider is read on first use. Fails only when the
    /// settings do not [check](OidcSettings::check) or the HTTP client cannot be built.
    pub fn new(settings: OidcSettings) -> Result<Self, String> {
        settings.check()?;
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .https_only(!settings.allow_loopback_http)
            .user_agent(concat!("steward/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("building the OIDC client: {e}"))?;
        Ok(Self {
            settings,
            http,
            provider: AsyncMutex::new(None),
            last_failure: Mutex::new(None),
            pre_logins: ExpiringMap::new(MAX_PRE_LOGINS),
        })
    }

    /// The settings.
    pub fn settings(&self) -> &OidcSettings {
        &self.settings
    }

    fn issuer(&self) -> Result<IssuerUrl, OidcError> {
        IssuerUrl::new(self.settings.issuer.clone())
            .map_err(|e| OidcError::Unavailable(format!("issuer: {e}")))
    }

    /// The provider's metadata and keys, read once and kept. A failed read is not repeated
    /// for [`OidcSettings::jwks_refetch_after`].
    async fn provider(&self) -> Result<Provider, OidcError> {
        let mut cached = self.provider.lock().await;
        if let Some(p) = cached.as_ref() {
            return Ok(p.clone());
        }
        if lock(&self.last_failure)
            .is_some_and(|at| at.elapsed() < self.settings.jwks_refetch_after)
        {
            return Err(OidcError::Unavailable(
                "discovery failed recently; not asking again yet".into(),
            ));
        }
        let http = |request| send(self.http.clone(), request);
        match CoreProviderMetadata::discover_async(self.issuer()?, &http).await {
            Ok(metadata) => {
                let provider = Provider {
                    jwks: metadata.jwks().clone(),
                    metadata,
                    jwks_fetched: Instant::now(),
                };
                *cached = Some(provider.clone());
                Ok(provider)
            }
            Err(e) => {
                *lock(&self.last_failure) = Some(Instant::now());
                tracing::warn!(error = %e, "OIDC discovery failed.");
                Err(OidcError::Unavailable(format!("discovery failed: {e}")))
            }
        }
    }

    /// Fetches the key set again, unless it was fetched within `jwks_refetch_after`. Returns
    /// whether the keys changed.
    async fn refetch_jwks(&self) -> bool {
        let mut cached = self.provider.lock().await;
        let Some(provider) = cached.as_mut() else {
            return false;
        };
        if provider.jwks_fetched.elapsed() < self.settings.jwks_refetch_after {
            return false;
        }
        provider.jwks_fetched = Instant::now();
        let http = |request| send(self.http.clone(), request);
        match JsonWebKeySet::fetch_async(provider.metadata.jwks_uri(), &http).await {
            Ok(jwks) => {
                let changed =
                    serde_json::to_string(&jwks).ok() != serde_json::to_string(&provider.jwks).ok();
                provider.jwks = jwks;
                changed
            }
            Err(e) => {
                tracing::warn!(error = %e, "Fetching the OIDC key set failed.");
                false
            }
        }
    }

    /// Validates an ID token (see the module docs) and maps its groups to roles. `nonce` is
    /// required to match on the page flow; a bearer token from the device flow has none.
    pub async fn verify(&self, raw: &str, nonce: Option<&str>) -> Result<Person, OidcError> {
        if raw.len() > MAX_ID_TOKEN_BYTES {
            return Err(OidcError::Invalid("the ID token is too large".into()));
        }
        if !looks_like_jwt(raw) {
            return Err(OidcError::Invalid(
                "the ID token is not a compact JWS".into(),
            ));
        }
        let token = StewardIdToken::from_str(raw)
            .map_err(|e| OidcError::Invalid(format!("the ID token is malformed: {e}")))?;
        let provider = self.provider().await?;
        let claims = match self.check(&token, &provider.jwks, nonce) {
            Err(ClaimsVerificationError::SignatureVerification(
                SignatureVerificationError::NoMatchingKey,
            )) if self.refetch_jwks().await => {
                let provider = self.provider().await?;
                self.check(&token, &provider.jwks, nonce)
            }
            other => other,
        }
        .map_err(|e| OidcError::Invalid(format!("the ID token is not valid: {e}")))?;
        self.person(&claims)
    }

    fn check(
        &self,
        token: &StewardIdToken,
        jwks: &CoreJsonWebKeySet,
        nonce: Option<&str>,
    ) -> Result<StewardClaims, ClaimsVerificationError> {
        let skew = chrono::Duration::from_std(self.settings.clock_skew).unwrap_or_default();
        let now = chrono::Utc::now();
        // Signature, issuer and audience; a public-client verifier, so no HS* ever passes.
        let verifier = CoreIdTokenVerifier::new_public_client(
            ClientId::new(self.settings.client_id.clone()),
            IssuerUrl::new(self.settings.issuer.clone())
                .map_err(|e| ClaimsVerificationError::Other(e.to_string()))?,
            jwks.clone(),
        )
        .set_allowed_algs([
            CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
            CoreJwsSigningAlgorithm::EcdsaP256Sha256,
        ])
        // `exp` is compared with this time: the skew is granted by looking back.
        .set_time_fn(move || now - skew)
        .set_issue_time_verifier_fn(move |iat| {
            if iat > now + skew {
                Err(format!("issued in the future ({iat})"))
            } else {
                Ok(())
            }
        })
        .set_other_audience_verifier_fn(|_| true);
        let claims = match nonce {
            Some(n) => {
                let expected = Nonce::new(n.to_owned());
                token.claims(&verifier, &expected)?.clone()
            }
            None => token.claims(&verifier, |_: Option<&Nonce>| Ok(()))?.clone(),
        };
        // `aud` with other audiences needs `azp` naming this client; `azp` present must.
        let client = self.settings.client_id.as_str();
        match claims.authorized_party() {
            Some(azp) if azp.as_str() != client => {
                return Err(ClaimsVerificationError::InvalidAudience(
                    "azp is another client".into(),
                ));
            }
            None if claims.audiences().len() > 1 => {
                return Err(ClaimsVerificationError::InvalidAudience(
                    "several audiences and no azp".into(),
                ));
            }
            _ => {}
        }
        if let Some(nbf) = claims.additional_claims().claims.get("nbf") {
            let nbf = nbf
                .as_i64()
                .ok_or_else(|| ClaimsVerificationError::Other("nbf is not a number".into()))?;
            if nbf > (now + skew).timestamp() {
                return Err(ClaimsVerificationError::Expired(
                    "not valid yet (nbf)".into(),
                ));
            }
        }
        Ok(claims)
    }

    fn person(&self, claims: &StewardClaims) -> Result<Person, OidcError> {
        let subject = clip(claims.subject().as_str());
        if subject.is_empty() {
            return Err(OidcError::Invalid("the ID token has no subject".into()));
        }
        let email = claims.email().map(|e| clip(e.as_str()));
        let name = claims
            .name()
            .and_then(|n| n.get(None))
            .map(|n| clip(n.as_str()));
        let groups: Vec<String> = match claims
            .additional_claims()
            .claims
            .get(&self.settings.groups_claim)
        {
            Some(Value::Array(items)) => items
                .iter()
                .take(MAX_GROUPS)
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            Some(Value::String(one)) => vec![one.clone()],
            _ => vec![],
        };
        let mut roles: Vec<Role> = groups
            .iter()
            .filter_map(|g| self.settings.roles.get(g).copied())
            .collect();
        roles.sort();
        roles.dedup();
        if roles.is_empty() {
            return Err(OidcError::NoRole { subject });
        }
        Ok(Person {
            subject,
            email,
            name,
            roles,
            via: Via::Oidc,
        })
    }

    /// Starts a page sign-in: a fresh `state`, `nonce` and PKCE verifier kept under a new
    /// pre-login id, and the provider's authorization URL carrying the S256 challenge.
    pub async fn start(&self) -> Result<Started, OidcError> {
        let provider = self.provider().await?;
        let client = CoreClient::from_provider_metadata(
            provider.metadata,
            ClientId::new(self.settings.client_id.clone()),
            None,
        )
        .set_redirect_uri(
            RedirectUrl::new(self.settings.redirect_url.clone())
                .map_err(|e| OidcError::Unavailable(format!("redirect_url: {e}")))?,
        );
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .set_pkce_challenge(challenge);
        for scope in self.settings.scopes().into_iter().filter(|s| s != "openid") {
            request = request.add_scope(Scope::new(scope));
        }
        let (url, state, nonce) = request.url();
        let id = random_hex();
        self.pre_logins.insert(
            &id,
            PreLogin {
                state: state.secret().clone(),
                nonce: nonce.secret().clone(),
                verifier: verifier.secret().clone(),
            },
            Instant::now() + PRE_LOGIN_TTL,
        );
        Ok(Started {
            authorize_url: url.to_string(),
            pre_login_id: SecretString::from(id),
        })
    }

    /// Finishes a page sign-in: takes the pre-login (once), checks `state`, exchanges `code`
    /// with the PKCE verifier, and validates the ID token with the pre-login's nonce.
    pub async fn finish(
        &self,
        pre_login_id: &str,
        state: &str,
        code: &str,
    ) -> Result<Person, OidcError> {
        let pending = self
            .pre_logins
            .take(pre_login_id)
            .ok_or_else(|| OidcError::Invalid("no sign-in is under way".into()))?;
        if !bool::from(pending.state.as_bytes().ct_eq(state.as_bytes())) {
            return Err(OidcError::Invalid("state does not match".into()));
        }
        if code.is_empty() || code.len() > 2048 {
            return Err(OidcError::Invalid("no authorization code".into()));
        }
        let provider = self.provider().await?;
        let client = CoreClient::from_provider_metadata(
            provider.metadata,
            ClientId::new(self.settings.client_id.clone()),
            self.settings
                .client_secret
                .as_ref()
                .map(|s| ClientSecret::new(s.expose_secret().to_owned())),
        )
        .set_redirect_uri(
            RedirectUrl::new(self.settings.redirect_url.clone())
                .map_err(|e| OidcError::Unavailable(format!("redirect_url: {e}")))?,
        );
        let http = |request| send(self.http.clone(), request);
        let answer = client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(|e| OidcError::Unavailable(format!("token endpoint: {e}")))?
            .set_pkce_verifier(PkceCodeVerifier::new(pending.verifier))
            .request_async(&http)
            .await
            .map_err(|e| OidcError::Invalid(format!("the code exchange was refused: {e}")))?;
        let id_token = answer
            .id_token()
            .ok_or_else(|| OidcError::Invalid("the token answer has no ID token".into()))?
            .to_string();
        self.verify(&id_token, Some(&pending.nonce)).await
    }
}

/// What `GET /v1/ops/oidc` tells a command-line client.
pub fn client_config(oidc: &Arc<Oidc>) -> Value {
    serde_json::json!({
        "issuer": oidc.settings.issuer,
        "client_id": oidc.settings.client_id,
        "scopes": oidc.settings.scopes(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> OidcSettings {
        let mut s = OidcSettings::new(
            "https://idp.example.com/realms/ops",
            "steward",
            "https://steward.example.com/ops/oidc/callback",
        );
        s.roles.insert("sre".into(), Role::Operator);
        s
    }

    #[test]
    fn settings_need_https_outside_loopback_and_a_role_mapping() {
        assert!(settings().check().is_ok());
        let mut plain = settings();
        plain.issuer = "http://idp.example.com".into();
        assert!(plain.check().is_err());
        plain.allow_loopback_http = true;
        assert!(plain.check().is_err(), "loopback only");
        plain.issuer = "http://127.0.0.1:9000".into();
        plain.redirect_url = "http://localhost:8080/ops/oidc/callback".into();
        assert!(plain.check().is_ok());
        plain.allow_loopback_http = false;
        assert!(plain.check().is_err());
        for broken in [
            |s: &mut OidcSettings| s.roles.clear(),
            |s: &mut OidcSettings| s.client_id = String::new(),
            |s: &mut OidcSettings| s.groups_claim = " ".into(),
            |s: &mut OidcSettings| s.issuer = "https://idp.example.com/?a=b".into(),
            |s: &mut OidcSettings| s.issuer = "ftp://idp.example.com".into(),
            |s: &mut OidcSettings| s.redirect_url = "not a url".into(),
            |s: &mut OidcSettings| s.scopes = vec!["two words".into()],
        ] {
            let mut s = settings();
            broken(&mut s);
            assert!(s.check().is_err(), "{s:?}");
        }
    }

    #[test]
    fn openid_is_always_asked_for_once() {
        let mut s = settings();
        s.scopes = vec!["email".into(), "openid".into(), "groups".into()];
        assert_eq!(s.scopes(), ["openid", "email", "groups"]);
    }

    #[test]
    fn only_compact_jws_shapes_get_parsed() {
        assert!(looks_like_jwt("eyJh.eyJi.c2ln"));
        assert!(
            looks_like_jwt("eyJh.eyJi."),
            "an empty signature is parsed, then refused"
        );
        for bad in [
            "", "a.b", "a.b.c.d", ".b.c", "a..c", "a.b.c d", "a.b.c=", "stw_abc",
        ] {
            assert!(!looks_like_jwt(bad), "{bad}");
        }
    }

    #[tokio::test]
    async fn malformed_and_oversized_tokens_are_refused_before_the_provider_is_asked() {
        let oidc = Oidc::new(settings()).unwrap();
        for bad in [
            "x".repeat(MAX_ID_TOKEN_BYTES + 1),
            "not-a-jwt".into(),
            "eyJhbGciOiJub25lIn0.e30.".into(),
            "%%%.%%%.%%%".into(),
            "YQ.YQ.YQ".into(),
        ] {
            assert!(
                matches!(oidc.verify(&bad, None).await, Err(OidcError::Invalid(_))),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn a_pre_login_is_single_use_and_needs_its_state() {
        let oidc = Oidc::new(settings()).unwrap();
        let id = "f".repeat(64);
        oidc.pre_logins.insert(
            &id,
            PreLogin {
                state: "s1".into(),
                nonce: "n".into(),
                verifier: "v".into(),
            },
            Instant::now() + PRE_LOGIN_TTL,
        );
        let wrong = oidc.finish(&id, "s2", "code").await;
        assert!(matches!(wrong, Err(OidcError::Invalid(m)) if m.contains("state")));
        let again = oidc.finish(&id, "s1", "code").await;
        assert!(matches!(again, Err(OidcError::Invalid(m)) if m.contains("under way")));
        assert!(matches!(
            oidc.finish("", "s1", "code").await,
            Err(OidcError::Invalid(_))
        ));
    }
}
