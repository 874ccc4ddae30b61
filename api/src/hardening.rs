//! What every request and every answer of the HTTP surface is held to: security headers on every
//! answer (errors and 404s included), a JSON 404, an opaque JSON 500 for a handler that panics, a
//! deadline for receiving a request's body, and rate limits per client address and per tenant.
//!
//! The limits the connection itself enforces (how long a client may take to send its headers,
//! how large and how many they may be) are applied by the server that owns the connections, from
//! the same [`ServerLimits`].
//!
//! Rate limits answer `429` with `Retry-After` before the handler runs, so a webhook delivery is
//! only ever refused this way before it is verified, never after it was accepted. The client
//! address is the connection's peer address. `X-Forwarded-For` is read only from a peer listed in
//! [`RateLimits::trusted_proxies`] (none by default): behind a proxy that is not listed, every
//! client shares the proxy's address, and the proxy must do the per-client limiting.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use sha2::Digest as _;
use steward_core::TenantId;
use steward_persistence::Store;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::error::ApiError;
use crate::ops_auth::OpsAuth;

/// Every non-HTML answer: it loads nothing and may be framed by nobody.
pub const API_CSP: &str = "default-src 'none'; frame-ancestors 'none'";
/// Browsers that reached Steward over HTTPS keep to HTTPS for a year (ignored over plain HTTP).
pub const HSTS: &str = "max-age=31536000";

/// One rate limit: a sustained rate and the burst allowed on top of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests per second, sustained.
    pub per_second: NonZeroU32,
    /// Requests allowed at once after a quiet spell.
    pub burst: NonZeroU32,
}

impl RateLimit {
    /// `per_second` sustained with `burst` at once; `None` when `per_second` is 0 (no limit).
    /// A burst below the rate is raised to it.
    pub fn new(per_second: u32, burst: u32) -> Option<Self> {
        let per_second = NonZeroU32::new(per_second)?;
        let burst = NonZeroU32::new(burst.max(per_second.get()))?;
        Some(Self { per_second, burst })
    }

    fn quota(self) -> Quota {
        Quota::per_second(self.per_second).allow_burst(self.burst)
    }
}

/// The rate limits; `None` turns one off.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateLimits {
    /// Per client address (an IPv6 client by its /64).
    pub per_address: Option<RateLimit>,
    /// Per tenant: the tenant a webhook or Slack path names, or the tenant of a bearer token.
    pub per_tenant: Option<RateLimit>,
    /// Reverse proxies whose `X-Forwarded-For` names the client: from such a peer, the client
    /// is the right-most address in it that is not itself a listed proxy. From any other peer
    /// the header is ignored.
    pub trusted_proxies: Vec<IpAddr>,
}

impl RateLimits {
    /// No rate limit at all (benchmarks, and servers embedded in tests).
    pub fn off() -> Self {
        Self::default()
    }

    /// What `steward serve` runs with unless the config says otherwise: 100 requests a second
    /// with bursts of 200, per address and per tenant.
    pub fn recommended() -> Self {
        Self {
            per_address: RateLimit::new(100, 200),
            per_tenant: RateLimit::new(100, 200),
            trusted_proxies: Vec::new(),
        }
    }
}

/// The HTTP server's limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLimits {
    /// How long a client may take to send a request's line and headers, and how long an idle
    /// keep-alive connection is kept; then the connection is closed without an answer.
    pub header_read_timeout: Duration,
    /// How long a client may take to send a request's body, counted from its headers; then the
    /// answer is `408` and the connection is closed.
    pub request_timeout: Duration,
    /// The largest request line and headers together, in bytes; larger is `431`.
    pub max_header_bytes: usize,
    /// The most header fields a request may carry; more is `431`.
    pub max_headers: usize,
    /// Requests per client address and per tenant.
    pub rate: RateLimits,
}

impl Default for ServerLimits {
    /// Header read timeout 10 s, body deadline 30 s, 16 KiB and 64 header fields, no rate limit.
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_header_bytes: 16 * 1024,
            max_headers: 64,
            rate: RateLimits::off(),
        }
    }
}

/// The whole API behind its guards: the router of [`crate::router`] with a JSON 404, the rate
/// limits, the body deadline, panic recovery and the security headers.
///
/// The guards wrap the router once, as a whole, and the result is the fallback of an empty
/// router: every request passes them, as it would layers added to each route, but they are not
/// rebuilt per request. Layers added with [`Router::layer`] wrap every route in a box of their
/// own, and each request clones its route's whole stack of boxes (and `from_fn` clones what is
/// below it once more), which at intake rates was a measurable share of a webhook's cost.
///
/// `store` and `ops` tell whose budget a bearer token spends.
pub fn harden(router: Router, store: Store, ops: Arc<OpsAuth>, limits: &ServerLimits) -> Router {
    let guard = Arc::new(Guard::new(&limits.rate, store, ops));
    // Outermost first.
    let guarded = tower::ServiceBuilder::new()
        .layer(always(header::X_FRAME_OPTIONS, "DENY"))
        .layer(always(header::REFERRER_POLICY, "no-referrer"))
        .layer(always(header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .layer(always(header::STRICT_TRANSPORT_SECURITY, HSTS))
        .layer(unless_set(header::CACHE_CONTROL, "no-store"))
        .layer(unless_set(header::CONTENT_SECURITY_POLICY, API_CSP))
        .layer(CatchPanicLayer::custom(panicked))
        .layer(middleware::from_fn_with_state(
            limits.request_timeout,
            body_deadline,
        ))
        .layer(middleware::from_fn_with_state(guard, rate_limit))
        .service(router.fallback(not_found));
    Router::new().fallback_service(guarded)
}

/// A header every answer carries with this value, whatever the handler set.
fn always(name: header::HeaderName, value: &'static str) -> SetResponseHeaderLayer<HeaderValue> {
    SetResponseHeaderLayer::overriding(name, HeaderValue::from_static(value))
}

/// A header every answer carries, with this value unless the handler set its own.
fn unless_set(
    name: header::HeaderName,
    value: &'static str,
) -> SetResponseHeaderLayer<HeaderValue> {
    SetResponseHeaderLayer::if_not_present(name, HeaderValue::from_static(value))
}

async fn not_found() -> ApiError {
    ApiError::NotFound
}

/// A panicking handler is a plain 500: the panic's text stays out of the answer (the process's
/// panic hook has already reported it).
fn panicked(_payload: Box<dyn std::any::Any + Send + 'static>) -> Response {
    ApiError::Internal("a request handler panicked".into()).into_response()
}

/// The request body's deadline passed before the client finished sending it.
#[derive(Debug, thiserror::Error)]
#[error("the request body was not received in time")]
pub(crate) struct BodyDeadline;

impl BodyDeadline {
    /// Whether `error` (or anything it was caused by) is a passed body deadline.
    pub(crate) fn caused(error: &(dyn std::error::Error + 'static)) -> bool {
        let mut current = Some(error);
        while let Some(e) = current {
            if e.is::<BodyDeadline>() {
                return true;
            }
            current = e.source();
        }
        false
    }
}

/// Gives the request's body a deadline, counted from now (its headers are in).
async fn body_deadline(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    let deadline = tokio::time::Instant::now() + limit;
    let request = request.map(|body| {
        Body::new(DeadlineBody {
            inner: body,
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
        })
    });
    next.run(request).await
}

/// A body that fails with [`BodyDeadline`] once its deadline passes.
struct DeadlineBody {
    inner: Body,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        match self.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyDeadline)))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// How long a bearer token's tenant is remembered for charging its requests.
const TOKEN_MEMORY: Duration = Duration::from_secs(60);
/// The most bearer tokens remembered; past it the memory starts over.
const MAX_TOKENS_REMEMBERED: usize = 10_000;
/// How often idle limiter state is dropped.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// A bearer token's SHA-256 → its tenant (None: no tenant token), and when it was looked up.
type TokenTenants = HashMap<[u8; 32], (Option<TenantId>, Instant)>;

/// The limiters and what they need to find a request's tenant.
struct Guard {
    per_address: Option<DefaultKeyedRateLimiter<IpAddr>>,
    per_tenant: Option<DefaultKeyedRateLimiter<TenantId>>,
    clock: DefaultClock,
    trusted_proxies: Vec<IpAddr>,
    store: Store,
    ops: Arc<OpsAuth>,
    tokens: Mutex<TokenTenants>,
    last_sweep: Mutex<Instant>,
}

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    /// The client address's.
    Address,
    /// The tenant's.
    Tenant,
}

impl std::fmt::Display for Limited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Address => "client address",
            Self::Tenant => "tenant",
        })
    }
}

impl Guard {
    fn new(limits: &RateLimits, store: Store, ops: Arc<OpsAuth>) -> Self {
        Self {
            per_address: limits
                .per_address
                .map(|l| DefaultKeyedRateLimiter::keyed(l.quota())),
            per_tenant: limits
                .per_tenant
                .map(|l| DefaultKeyedRateLimiter::keyed(l.quota())),
            clock: DefaultClock::default(),
            trusted_proxies: limits.trusted_proxies.clone(),
            store,
            ops,
            tokens: Mutex::new(HashMap::new()),
            last_sweep: Mutex::new(Instant::now()),
        }
    }

    /// Charges the address, then the tenant; the wait before a retry when one is spent.
    async fn charge(&self, who: Caller) -> Result<(), (Limited, Duration)> {
        self.sweep_if_due();
        if let Some(limiter) = &self.per_address
            && let Some(client) = who.client
            && let Err(not_until) = limiter.check_key(&client_key(client))
        {
            return Err((Limited::Address, not_until.wait_time_from(self.clock.now())));
        }
        let Some(limiter) = &self.per_tenant else {
            return Ok(());
        };
        let tenant = match who.tenant {
            TenantHint::Named(tenant) => Some(tenant),
            TenantHint::Token(token) => self.token_tenant(token).await,
            TenantHint::None => None,
        };
        if let Some(tenant) = tenant
            && let Err(not_until) = limiter.check_key(&tenant)
        {
            return Err((Limited::Tenant, not_until.wait_time_from(self.clock.now())));
        }
        Ok(())
    }

    /// The tenant a bearer token belongs to; the operator is no tenant.
    async fn token_tenant(&self, token: String) -> Option<TenantId> {
        if self.ops.token_matches(&token) {
            return None;
        }
        let digest: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        let now = Instant::now();
        if let Some((tenant, at)) = self.lock_tokens().get(&digest)
            && now.duration_since(*at) < TOKEN_MEMORY
        {
            return tenant.clone();
        }
        // The handler authenticates the token itself; this lookup only says whose budget the
        // request spends, and a failed lookup spends none.
        let tenant = match self.store.authenticate_token(&token).await {
            Ok(found) => found.map(|(scope, _)| scope.tenant().clone()),
            Err(_) => return None,
        };
        let mut tokens = self.lock_tokens();
        if tokens.len() >= MAX_TOKENS_REMEMBERED {
            tokens.clear();
        }
        tokens.insert(digest, (tenant.clone(), now));
        tenant
    }

    fn lock_tokens(&self) -> std::sync::MutexGuard<'_, TokenTenants> {
        self.tokens.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops the state of addresses and tenants that are back to a full burst, and forgotten
    /// tokens, at most once a minute.
    fn sweep_if_due(&self) {
        let now = Instant::now();
        {
            let mut last = self.last_sweep.lock().unwrap_or_else(|p| p.into_inner());
            if now.duration_since(*last) < SWEEP_EVERY {
                return;
            }
            *last = now;
        }
        if let Some(l) = &self.per_address {
            l.retain_recent();
            l.shrink_to_fit();
        }
        if let Some(l) = &self.per_tenant {
            l.retain_recent();
            l.shrink_to_fit();
        }
        self.lock_tokens()
            .retain(|_, (_, at)| now.duration_since(*at) < TOKEN_MEMORY);
    }
}

/// What the limits need to know of a request, taken before anything is awaited.
struct Caller {
    /// The client's address: the peer's, or what a trusted proxy says it is.
    client: Option<IpAddr>,
    tenant: TenantHint,
}

/// Where a request's tenant comes from.
enum TenantHint {
    /// Its webhook or Slack path names it.
    Named(TenantId),
    /// Its bearer token's tenant, if the token has one.
    Token(String),
    None,
}

impl Caller {
    fn of(request: &Request, trusted_proxies: &[IpAddr]) -> Self {
        let client = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| client_address(c.0.ip(), request.headers(), trusted_proxies));
        let tenant = match path_tenant(request.uri().path()) {
            Some(named) => TenantId::parse(named).map_or(TenantHint::None, TenantHint::Named),
            None => bearer(request.headers())
                .map_or(TenantHint::None, |t| TenantHint::Token(t.to_owned())),
        };
        Self { client, tenant }
    }
}

/// `429` with `Retry-After` when the request's address or tenant has spent its budget.
async fn rate_limit(State(guard): State<Arc<Guard>>, request: Request, next: Next) -> Response {
    let who = Caller::of(&request, &guard.trusted_proxies);
    match guard.charge(who).await {
        Ok(()) => next.run(request).await,
        Err((limited, wait)) => ApiError::RateLimited {
            limited,
            retry_after_secs: (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1),
        }
        .into_response(),
    }
}

/// The client's address: the peer's, unless the peer is a trusted proxy; then the right-most
/// `X-Forwarded-For` entry that is not a trusted proxy (the proxy's own address when the header
/// is missing or an entry does not parse).
fn client_address(peer: IpAddr, headers: &HeaderMap, trusted_proxies: &[IpAddr]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted_proxies.contains(&client_key_exact(*ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let entries: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    for entry in entries.iter().rev() {
        let Some(ip) = parse_forwarded(entry) else {
            return peer;
        };
        if !is_trusted(&ip) {
            return ip;
        }
    }
    peer
}

/// An `X-Forwarded-For` entry: an address, or an address with a port.
fn parse_forwarded(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|s| s.ip()))
}

/// An IPv4-mapped IPv6 address as IPv4; any other address as it is.
fn client_key_exact(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The key an address is limited under: an IPv4 address itself (also when mapped into IPv6),
/// an IPv6 address by its /64, which one host usually holds whole.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(bits))
            }
        },
    }
}

/// The tenant segment of `/v1/webhooks/{tenant}/…` and `/v1/slack/interactions/{tenant}`.
fn path_tenant(path: &str) -> Option<&str> {
    let rest = path
        .strip_prefix("/v1/webhooks/")
        .or_else(|| path.strip_prefix("/v1/slack/interactions/"))?;
    let tenant = rest.split('/').next()?;
    (!tenant.is_empty()).then_some(tenant)
}

/// The bearer token of the `Authorization` header.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_keyed_by_host() {
        let v4: IpAddr = "203.0.113.7".parse().unwrap();
        assert_eq!(client_key(v4), v4);
        let mapped: IpAddr = "::ffff:203.0.113.7".parse().unwrap();
        assert_eq!(client_key(mapped), v4);
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(a), client_key(b));
        assert_ne!(client_key(a), client_key(other));
        assert_eq!(client_key(a), "2001:db8:1:2::".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn forwarded_for_is_believed_from_trusted_proxies_only() {
        let proxy: IpAddr = "10.0.0.5".parse().unwrap();
        let inner: IpAddr = "10.0.0.6".parse().unwrap();
        let client: IpAddr = "198.51.100.9".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_static("203.0.113.1, 198.51.100.9, 10.0.0.6"),
        );
        // Not trusted: the header is ignored, whatever it says.
        assert_eq!(client_address(proxy, &headers, &[]), proxy);
        assert_eq!(client_address(client, &headers, &[proxy, inner]), client);
        // Trusted: the right-most entry that is not a trusted proxy; the left-most entries
        // are whatever the client wrote and are never believed past it.
        assert_eq!(client_address(proxy, &headers, &[proxy, inner]), client);
        assert_eq!(client_address(proxy, &headers, &[proxy]), inner);
        let mapped: IpAddr = "::ffff:10.0.0.5".parse().unwrap();
        assert_eq!(client_address(mapped, &headers, &[proxy, inner]), client);
        // No header, or an entry that does not parse: the proxy's own address.
        assert_eq!(client_address(proxy, &HeaderMap::new(), &[proxy]), proxy);
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_static("bogus, 10.0.0.6"),
        );
        assert_eq!(client_address(proxy, &headers, &[proxy, inner]), proxy);
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_static("198.51.100.9:4711"),
        );
        assert_eq!(client_address(proxy, &headers, &[proxy]), client);
    }

    #[test]
    fn the_tenant_comes_from_the_webhook_and_slack_paths_only() {
        assert_eq!(
            path_tenant("/v1/webhooks/us-acme/servicenow"),
            Some("us-acme")
        );
        assert_eq!(
            path_tenant("/v1/slack/interactions/eu-globex"),
            Some("eu-globex")
        );
        assert_eq!(path_tenant("/v1/webhooks/"), None);
        assert_eq!(path_tenant("/v1/runs"), None);
        assert_eq!(path_tenant("/v1/tenants/us-acme"), None);
    }

    #[test]
    fn bearer_tokens_are_read_case_insensitively() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer(&headers), None);
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(bearer(&headers), Some("abc"));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer  xyz "),
        );
        assert_eq!(bearer(&headers), Some("xyz"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&headers), None);
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer(&headers), None);
    }

    #[test]
    fn a_rate_of_zero_is_no_limit_and_the_burst_is_at_least_the_rate() {
        assert_eq!(RateLimit::new(0, 10), None);
        let l = RateLimit::new(5, 1).unwrap();
        assert_eq!((l.per_second.get(), l.burst.get()), (5, 5));
        let l = RateLimit::new(5, 50).unwrap();
        assert_eq!((l.per_second.get(), l.burst.get()), (5, 50));
    }

    /// A body that sends one chunk and then nothing more, ever.
    struct Stalled(bool);

    impl http_body::Body for Stalled {
        type Data = Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
            if self.0 {
                return Poll::Pending;
            }
            self.0 = true;
            Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from_static(b"{")))))
        }
    }

    fn with_deadline(inner: Body, after: Duration) -> Body {
        Body::new(DeadlineBody {
            inner,
            sleep: Box::pin(tokio::time::sleep(after)),
        })
    }

    #[tokio::test]
    async fn a_body_still_arriving_at_its_deadline_is_a_timeout_not_too_large() {
        let body = with_deadline(Body::new(Stalled(false)), Duration::from_millis(50));
        let err = crate::webhooks::read_body(body, &HeaderMap::new(), 1024)
            .await
            .unwrap_err();
        assert!(matches!(err, ApiError::RequestTimeout), "{err:?}");

        let whole = with_deadline(Body::from("whole"), Duration::from_millis(50));
        let bytes = crate::webhooks::read_body(whole, &HeaderMap::new(), 1024)
            .await
            .unwrap();
        assert_eq!(bytes, Bytes::from("whole"));

        let large = with_deadline(Body::from(vec![b'x'; 2048]), Duration::from_secs(5));
        let err = crate::webhooks::read_body(large, &HeaderMap::new(), 1024)
            .await
            .unwrap_err();
        assert!(matches!(err, ApiError::TooLarge(1024)), "{err:?}");
    }
}
