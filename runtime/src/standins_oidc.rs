//! A local OpenID provider for tests, the demo and runbooks: it speaks the real wire formats
//! (OpenID Connect discovery and a JWKS, the authorization code grant of RFC 6749 with PKCE
//! S256 of RFC 7636, and the device authorization grant of RFC 8628) and signs ID tokens with
//! an ES256 key generated when it starts.
//!
//! What it enforces: a known `client_id` (and its secret, when one is set, by HTTP Basic or in
//! the body); `response_type=code`, `scope` with `openid` and an S256 `code_challenge` on
//! `/authorize`; codes that are single-use, bound to the client, `redirect_uri` and
//! challenge, and that expire; device codes that expire, answer `authorization_pending` until
//! a person decides, `slow_down` (adding 5 s to the interval) when polled faster than asked,
//! `access_denied` when refused and `expired_token` when late. The person is picked by a
//! `login_hint` query parameter, or in a tiny form.
//!
//! Routes: `GET /.well-known/openid-configuration`, `GET /jwks`, `GET /authorize`,
//! `POST /token`, `POST /device_authorization`, `GET`/`POST /device` (the verification page).
//! Tests also sign tokens of their own shape with [`OidcStandin::sign`] and rotate the key with
//! [`OidcStandin::rotate_key`]. No product path uses it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rand::Rng as _;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A person the stand-in can sign in.
#[derive(Debug, Clone)]
pub struct StandinUser {
    /// What `login_hint` names them by.
    pub login: String,
    pub sub: String,
    pub name: String,
    pub email: String,
    pub groups: Vec<String>,
}

impl StandinUser {
    pub fn new(login: &str, sub: &str, groups: &[&str]) -> Self {
        Self {
            login: login.into(),
            sub: sub.into(),
            name: login.into(),
            email: format!("{login}@example.com"),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        }
    }
}

/// The stand-in's client, users and lifetimes.
#[derive(Debug, Clone)]
pub struct OidcStandinSettings {
    pub client_id: String,
    /// None: a public client (no authentication at the token endpoint).
    pub client_secret: Option<String>,
    pub users: Vec<StandinUser>,
    pub id_token_ttl: Duration,
    pub code_ttl: Duration,
    pub device_code_ttl: Duration,
    /// The device flow's polling interval, in seconds.
    pub device_interval_secs: u64,
    /// The name of the groups claim in ID tokens.
    pub groups_claim: String,
}

impl Default for OidcStandinSettings {
    fn default() -> Self {
        Self {
            client_id: "steward-ops".into(),
            client_secret: None,
            users: vec![
                StandinUser::new("ana", "u-1001", &["steward-operators"]),
                StandinUser::new("omar", "u-1002", &["steward-oncall"]),
                StandinUser::new("cai", "u-1003", &["steward-approvers"]),
                StandinUser::new("nobody", "u-1004", &["marketing"]),
            ],
            id_token_ttl: Duration::from_secs(600),
            code_ttl: Duration::from_secs(60),
            device_code_ttl: Duration::from_secs(600),
            device_interval_secs: 5,
            groups_claim: "groups".into(),
        }
    }
}

struct SigningKey {
    kid: String,
    pair: EcdsaKeyPair,
}

impl SigningKey {
    fn generate() -> anyhow::Result<Self> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| anyhow::anyhow!("could not generate a P-256 key"))?;
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .map_err(|_| anyhow::anyhow!("could not load the P-256 key"))?;
        Ok(Self {
            kid: format!("standin-{}", random_token(8)),
            pair,
        })
    }

    fn jwk(&self) -> Value {
        let point = self.pair.public_key().as_ref();
        json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": self.kid,
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        })
    }

    fn sign(&self, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self
            .pair
            .sign(&SystemRandom::new(), input.as_bytes())
            .map(|s| URL_SAFE_NO_PAD.encode(s.as_ref()))
            .unwrap_or_default();
        format!("{input}.{signature}")
    }
}

struct CodeGrant {
    client_id: String,
    redirect_uri: String,
    challenge: String,
    nonce: Option<String>,
    login: String,
    expires: Instant,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Decision {
    Pending,
    Approved(String),
    Denied,
}

struct DeviceGrant {
    user_code: String,
    client_id: String,
    expires: Instant,
    interval: Duration,
    last_poll: Option<Instant>,
    decision: Decision,
}

struct Shared {
    settings: OidcStandinSettings,
    issuer: String,
    key: Mutex<SigningKey>,
    codes: Mutex<HashMap<String, CodeGrant>>,
    devices: Mutex<HashMap<String, DeviceGrant>>,
    /// Counts of what happened, for tests.
    counts: Mutex<HashMap<&'static str, u64>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn random_token(len: usize) -> String {
    rand::thread_rng()
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Shared {
    fn count(&self, what: &'static str) {
        *lock(&self.counts).entry(what).or_default() += 1;
    }

    fn user(&self, login: &str) -> Option<&StandinUser> {
        self.settings.users.iter().find(|u| u.login == login)
    }

    /// The claims of an ID token for `user`, as the token endpoint issues them.
    fn claims(&self, user: &StandinUser, nonce: Option<&str>) -> Value {
        let now = now_secs();
        let mut claims = json!({
            "iss": self.issuer,
            "sub": user.sub,
            "aud": self.settings.client_id,
            "azp": self.settings.client_id,
            "iat": now,
            "auth_time": now,
            "exp": now + self.settings.id_token_ttl.as_secs() as i64,
            "email": user.email,
            "email_verified": true,
            "name": user.name,
        });
        claims[&self.settings.groups_claim] = json!(user.groups);
        if let Some(n) = nonce {
            claims["nonce"] = json!(n);
        }
        claims
    }

    fn id_token(&self, claims: &Value) -> String {
        let key = lock(&self.key);
        let header = json!({ "alg": "ES256", "typ": "JWT", "kid": key.kid });
        key.sign(&header, claims)
    }

    fn tokens(&self, user: &StandinUser, nonce: Option<&str>) -> Response {
        let id_token = self.id_token(&self.claims(user, nonce));
        self.count("tokens_issued");
        let body = json!({
            "access_token": random_token(40),
            "token_type": "Bearer",
            "expires_in": self.settings.id_token_ttl.as_secs(),
            "id_token": id_token,
            "scope": "openid email profile groups",
        });
        json_answer(StatusCode::OK, body)
    }
}

fn json_answer(status: StatusCode, body: Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// An RFC 6749 §5.2 error answer.
fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    json_answer(
        status,
        json!({ "error": error, "error_description": description }),
    )
}

fn html(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fn redirect(to: url::Url) -> Response {
    let mut response = StatusCode::FOUND.into_response();
    if let Ok(v) = HeaderValue::from_str(to.as_str()) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    response
}

/// A running OIDC stand-in. Dropping it stops the server.
pub struct OidcStandin {
    shared: Arc<Shared>,
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for OidcStandin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for OidcStandin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcStandin")
            .field("issuer", &self.shared.issuer)
            .finish_non_exhaustive()
    }
}

impl OidcStandin {
    /// Starts on a free loopback port.
    pub async fn start(settings: OidcStandinSettings) -> anyhow::Result<Self> {
        Self::start_on(settings, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts on `addr`, which must be a loopback address.
    pub async fn start_on(settings: OidcStandinSettings, addr: SocketAddr) -> anyhow::Result<Self> {
        anyhow::ensure!(
            addr.ip().is_loopback(),
            "stand-ins listen only on loopback addresses, not {addr}"
        );
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the OIDC stand-in to {addr}"))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            issuer: format!("http://{addr}"),
            settings,
            key: Mutex::new(SigningKey::generate()?),
            codes: Mutex::new(HashMap::new()),
            devices: Mutex::new(HashMap::new()),
            counts: Mutex::new(HashMap::new()),
        });
        let router = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .route("/authorize", get(authorize))
            .route("/token", post(token))
            .route("/device_authorization", post(device_authorization))
            .route("/device", get(device_page).post(device_decide))
            .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, router).await {
                tracing::error!(%error, "the OIDC stand-in stopped");
            }
        });
        Ok(Self { shared, addr, task })
    }

    /// The issuer, `http://127.0.0.1:PORT`.
    pub fn issuer(&self) -> &str {
        &self.shared.issuer
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The settings it runs with.
    pub fn settings(&self) -> &OidcStandinSettings {
        &self.shared.settings
    }

    /// The current key's id.
    pub fn kid(&self) -> String {
        lock(&self.shared.key).kid.clone()
    }

    /// The current public key as a JWK.
    pub fn public_jwk(&self) -> Value {
        lock(&self.shared.key).jwk()
    }

    /// Replaces the signing key; the JWKS serves only the new one from now on.
    pub fn rotate_key(&self) -> anyhow::Result<()> {
        *lock(&self.shared.key) = SigningKey::generate()?;
        Ok(())
    }

    /// The claims the token endpoint would put in an ID token for `login` now.
    pub fn claims_for(&self, login: &str, nonce: Option<&str>) -> Value {
        let user = self
            .shared
            .user(login)
            .cloned()
            .unwrap_or_else(|| StandinUser::new(login, &format!("u-{login}"), &[]));
        self.shared.claims(&user, nonce)
    }

    /// Signs `claims` under `header` with the current key (ES256), whatever they say.
    pub fn sign(&self, header: &Value, claims: &Value) -> String {
        lock(&self.shared.key).sign(header, claims)
    }

    /// A valid ID token for `login`, as the device flow would issue it.
    pub fn id_token_for(&self, login: &str) -> String {
        self.shared.id_token(&self.claims_for(login, None))
    }

    /// Decides a pending device request, as the person on the verification page would.
    pub fn decide_device(&self, user_code: &str, approve_as: Option<&str>) -> bool {
        let mut devices = lock(&self.shared.devices);
        let Some(grant) = devices.values_mut().find(|g| g.user_code == user_code) else {
            return false;
        };
        grant.decision = match approve_as {
            Some(login) => Decision::Approved(login.into()),
            None => Decision::Denied,
        };
        true
    }

    /// How often `what` happened (`codes_issued`, `tokens_issued`, `code_refused`,
    /// `device_pending`, `device_slow_down`, …).
    pub fn count(&self, what: &str) -> u64 {
        lock(&self.shared.counts)
            .iter()
            .find(|(k, _)| **k == what)
            .map(|(_, v)| *v)
            .unwrap_or(0)
    }
}

async fn discovery(State(s): State<Arc<Shared>>) -> Response {
    let i = &s.issuer;
    json_answer(
        StatusCode::OK,
        json!({
            "issuer": i,
            "authorization_endpoint": format!("{i}/authorize"),
            "token_endpoint": format!("{i}/token"),
            "jwks_uri": format!("{i}/jwks"),
            "device_authorization_endpoint": format!("{i}/device_authorization"),
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
            "grant_types_supported": [
                "authorization_code", "urn:ietf:params:oauth:grant-type:device_code"
            ],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported":
                ["client_secret_basic", "client_secret_post", "none"],
            "scopes_supported": ["openid", "email", "profile", "groups"],
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "email", "name", s.settings.groups_claim],
        }),
    )
}

async fn jwks(State(s): State<Arc<Shared>>) -> Response {
    s.count("jwks_served");
    let jwk = lock(&s.key).jwk();
    json_answer(StatusCode::OK, json!({ "keys": [jwk] }))
}

async fn authorize(
    State(s): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let get = |k: &str| q.get(k).map(String::as_str).unwrap_or("");
    // Without a known client and a redirect URI there is nowhere safe to send an error.
    if get("client_id") != s.settings.client_id {
        return html(StatusCode::BAD_REQUEST, "<p>Unknown client_id.</p>".into());
    }
    let Ok(mut back) = url::Url::parse(get("redirect_uri")) else {
        return html(
            StatusCode::BAD_REQUEST,
            "<p>Missing or invalid redirect_uri.</p>".into(),
        );
    };
    let state = get("state").to_owned();
    let fail = |mut to: url::Url, error: &str| {
        {
            let mut pairs = to.query_pairs_mut();
            pairs.append_pair("error", error);
            if !state.is_empty() {
                pairs.append_pair("state", &state);
            }
        }
        redirect(to)
    };
    if get("response_type") != "code" {
        return fail(back, "unsupported_response_type");
    }
    if !get("scope").split(' ').any(|sc| sc == "openid") {
        return fail(back, "invalid_scope");
    }
    let challenge = get("code_challenge");
    if get("code_challenge_method") != "S256" || challenge.len() != 43 {
        return fail(back, "invalid_request");
    }
    let login = get("login_hint");
    if login.is_empty() {
        return login_form(&q, &s);
    }
    if s.user(login).is_none() {
        return fail(back, "access_denied");
    }
    let code = random_token(32);
    lock(&s.codes).insert(
        code.clone(),
        CodeGrant {
            client_id: get("client_id").into(),
            redirect_uri: get("redirect_uri").into(),
            challenge: challenge.into(),
            nonce: q.get("nonce").cloned(),
            login: login.into(),
            expires: Instant::now() + s.settings.code_ttl,
        },
    );
    s.count("codes_issued");
    {
        let mut pairs = back.query_pairs_mut();
        pairs.append_pair("code", &code);
        if !state.is_empty() {
            pairs.append_pair("state", &state);
        }
    }
    redirect(back)
}

/// The person picker: the same request again with `login_hint` chosen.
fn login_form(q: &HashMap<String, String>, s: &Shared) -> Response {
    let hidden: String = q
        .iter()
        .filter(|(k, _)| k.as_str() != "login_hint")
        .map(|(k, v)| {
            format!(
                r#"<input type="hidden" name="{}" value="{}">"#,
                escape(k),
                escape(v)
            )
        })
        .collect();
    let options: String = s
        .settings
        .users
        .iter()
        .map(|u| {
            format!(
                r#"<option value="{}">{} ({})</option>"#,
                escape(&u.login),
                escape(&u.name),
                escape(&u.groups.join(", "))
            )
        })
        .collect();
    html(
        StatusCode::OK,
        format!(
            "<!doctype html><title>Stand-in sign-in</title><h1>Sign in</h1>\
             <form method=\"get\" action=\"/authorize\">{hidden}\
             <select name=\"login_hint\">{options}</select> <button>Sign in</button></form>"
        ),
    )
}

/// The refusal of a request that does not authenticate as the client, by HTTP Basic (RFC 6749
/// §2.3.1, form-encoded parts) or by `client_id` (and `client_secret`) in the body.
fn client_refusal(
    s: &Shared,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Option<Response> {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|pair| {
            let (id, secret) = pair.split_once(':')?;
            let decode = |t: &str| {
                form_urlencoded::parse(format!("x={t}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
            };
            Some((decode(id)?, decode(secret)?))
        });
    let (id, secret) = match basic {
        Some((id, secret)) => (id, Some(secret)),
        None => (
            form.get("client_id").cloned().unwrap_or_default(),
            form.get("client_secret").cloned(),
        ),
    };
    let secret_ok = match &s.settings.client_secret {
        Some(expected) => secret.as_deref() == Some(expected.as_str()),
        None => secret.as_deref().is_none_or(str::is_empty),
    };
    if id != s.settings.client_id || !secret_ok {
        s.count("client_refused");
        return Some(oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "unknown client or wrong secret",
        ));
    }
    None
}

fn form(body: &Bytes) -> HashMap<String, String> {
    form_urlencoded::parse(body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// RFC 7636 §4.1: 43 to 128 unreserved characters.
fn verifier_shaped(v: &str) -> bool {
    (43..=128).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

async fn token(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let form = form(&body);
    if let Some(refused) = client_refusal(&s, &headers, &form) {
        return refused;
    }
    let get = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
    match get("grant_type") {
        "authorization_code" => {
            // Taken out at once: a code is good for one exchange, right or wrong.
            let grant = lock(&s.codes).remove(get("code"));
            let Some(grant) = grant else {
                s.count("code_refused");
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "unknown or used code",
                );
            };
            let verifier = get("code_verifier");
            let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
            let refused = if grant.expires <= Instant::now() {
                Some("the code expired")
            } else if grant.client_id != s.settings.client_id {
                Some("the code is another client's")
            } else if grant.redirect_uri != get("redirect_uri") {
                Some("redirect_uri differs")
            } else if !verifier_shaped(verifier) || challenge != grant.challenge {
                Some("the code verifier does not match")
            } else {
                None
            };
            if let Some(why) = refused {
                s.count("code_refused");
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", why);
            }
            let Some(user) = s.user(&grant.login).cloned() else {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "unknown user");
            };
            s.tokens(&user, grant.nonce.as_deref())
        }
        "urn:ietf:params:oauth:grant-type:device_code" => {
            let device_code = get("device_code");
            let now = Instant::now();
            let mut devices = lock(&s.devices);
            let Some(grant) = devices.get_mut(device_code) else {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "unknown device code",
                );
            };
            if grant.client_id != s.settings.client_id {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "another client's code",
                );
            }
            if grant.expires <= now {
                devices.remove(device_code);
                s.count("device_expired");
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "expired_token",
                    "the device code expired",
                );
            }
            let too_soon = grant
                .last_poll
                .is_some_and(|at| now.duration_since(at) < grant.interval);
            grant.last_poll = Some(now);
            if too_soon {
                grant.interval += Duration::from_secs(5);
                s.count("device_slow_down");
                return oauth_error(StatusCode::BAD_REQUEST, "slow_down", "poll less often");
            }
            match grant.decision.clone() {
                Decision::Pending => {
                    s.count("device_pending");
                    oauth_error(
                        StatusCode::BAD_REQUEST,
                        "authorization_pending",
                        "not decided yet",
                    )
                }
                Decision::Denied => {
                    devices.remove(device_code);
                    s.count("device_denied");
                    oauth_error(
                        StatusCode::BAD_REQUEST,
                        "access_denied",
                        "the person refused",
                    )
                }
                Decision::Approved(login) => {
                    devices.remove(device_code);
                    drop(devices);
                    match s.user(&login).cloned() {
                        Some(user) => s.tokens(&user, None),
                        None => {
                            oauth_error(StatusCode::BAD_REQUEST, "access_denied", "unknown user")
                        }
                    }
                }
            }
        }
        _ => oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "authorization_code or device_code",
        ),
    }
}

/// A user code of RFC 8628 §6.1's shape: eight letters without vowels, `XXXX-XXXX`.
fn user_code() -> String {
    const LETTERS: &[u8] = b"BCDFGHJKLMNPQRSTVWXZ";
    let mut rng = rand::thread_rng();
    let mut code: String = (0..8)
        .map(|_| LETTERS[rng.gen_range(0..LETTERS.len())] as char)
        .collect();
    code.insert(4, '-');
    code
}

async fn device_authorization(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = form(&body);
    if let Some(refused) = client_refusal(&s, &headers, &form) {
        return refused;
    }
    let scope = form.get("scope").map(String::as_str).unwrap_or("");
    if !scope.split(' ').any(|sc| sc == "openid") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            "openid is required",
        );
    }
    let device_code = random_token(40);
    let code = user_code();
    let interval = Duration::from_secs(s.settings.device_interval_secs);
    lock(&s.devices).insert(
        device_code.clone(),
        DeviceGrant {
            user_code: code.clone(),
            client_id: s.settings.client_id.clone(),
            expires: Instant::now() + s.settings.device_code_ttl,
            interval,
            last_poll: None,
            decision: Decision::Pending,
        },
    );
    s.count("device_codes_issued");
    let verification_uri = format!("{}/device", s.issuer);
    json_answer(
        StatusCode::OK,
        json!({
            "device_code": device_code,
            "user_code": code,
            "verification_uri": verification_uri,
            "verification_uri_complete": format!("{verification_uri}?user_code={code}"),
            "expires_in": s.settings.device_code_ttl.as_secs(),
            "interval": s.settings.device_interval_secs,
        }),
    )
}

async fn device_page(
    State(s): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let code = q.get("user_code").map(String::as_str).unwrap_or("");
    let options: String = s
        .settings
        .users
        .iter()
        .map(|u| format!(r#"<option value="{0}">{0}</option>"#, escape(&u.login)))
        .collect();
    html(
        StatusCode::OK,
        format!(
            "<!doctype html><title>Stand-in device sign-in</title><h1>Device sign-in</h1>\
             <form method=\"post\" action=\"/device\">\
             <input name=\"user_code\" value=\"{}\"> <select name=\"login_hint\">{options}</select>\
             <button name=\"action\" value=\"approve\">Approve</button>\
             <button name=\"action\" value=\"deny\">Deny</button></form>",
            escape(code)
        ),
    )
}

/// The verification page's form: `user_code`, `login_hint`, `action=approve|deny`.
async fn device_decide(State(s): State<Arc<Shared>>, body: Bytes) -> Response {
    let form = form(&body);
    let get = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
    let code = get("user_code").trim().to_ascii_uppercase();
    let decision = match (get("action"), s.user(get("login_hint"))) {
        ("approve", Some(user)) => Decision::Approved(user.login.clone()),
        ("deny", _) => Decision::Denied,
        _ => {
            return html(
                StatusCode::BAD_REQUEST,
                "<p>Pick a known person.</p>".into(),
            );
        }
    };
    let mut devices = lock(&s.devices);
    let Some(grant) = devices
        .values_mut()
        .find(|g| g.user_code == code && g.decision == Decision::Pending)
    else {
        return html(StatusCode::NOT_FOUND, "<p>Unknown or used code.</p>".into());
    };
    grant.decision = decision;
    html(
        StatusCode::OK,
        "<p>Done; go back to your terminal.</p>".into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_codes_and_verifiers_have_their_rfc_shapes() {
        let code = user_code();
        assert_eq!(code.len(), 9);
        assert_eq!(&code[4..5], "-");
        assert!(
            code.chars()
                .all(|c| c == '-' || "BCDFGHJKLMNPQRSTVWXZ".contains(c))
        );
        assert!(verifier_shaped(&"a".repeat(43)));
        assert!(!verifier_shaped(&"a".repeat(42)));
        assert!(!verifier_shaped(&"a".repeat(129)));
        assert!(!verifier_shaped(&format!("{}+", "a".repeat(43))));
    }

    #[test]
    fn tokens_verify_with_the_published_key() {
        let key = SigningKey::generate().unwrap();
        let token = key.sign(&json!({"alg": "ES256"}), &json!({"sub": "x"}));
        let (input, sig) = token.rsplit_once('.').unwrap();
        let jwk = key.jwk();
        let mut point = vec![4u8];
        point.extend(URL_SAFE_NO_PAD.decode(jwk["x"].as_str().unwrap()).unwrap());
        point.extend(URL_SAFE_NO_PAD.decode(jwk["y"].as_str().unwrap()).unwrap());
        let public = ring::signature::UnparsedPublicKey::new(
            &ring::signature::ECDSA_P256_SHA256_FIXED,
            point,
        );
        let sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
        assert!(public.verify(input.as_bytes(), &sig).is_ok());
        assert!(public.verify(b"other", &sig).is_err());
    }
}
