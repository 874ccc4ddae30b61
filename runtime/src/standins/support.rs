//! What the three stand-ins share: binding loopback listeners, running a server as a task that
//! stops when dropped, the clock in ServiceNow's and Slack's formats, random identifiers, and
//! small readers for headers and bodies.

use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use base64::Engine as _;
use rand::Rng as _;
use rand::distributions::Alphanumeric;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The largest request body any stand-in reads; larger bodies get a 413.
pub(super) const BODY_LIMIT: usize = 1024 * 1024;

/// A running axum server. Dropping it aborts the server task.
pub(super) struct ServerTask {
    task: JoinHandle<()>,
}

// === impl ServerTask ===

impl ServerTask {
    /// Serves `router` on `listener` in a new task named after the stand-in: over TLS with
    /// `tls`, else plain HTTP.
    pub(super) fn spawn(
        name: &'static str,
        listener: TcpListener,
        router: Router,
        tls: Option<crate::tls::TlsListener>,
    ) -> Self {
        let task = tokio::spawn(async move {
            let served = match tls {
                None => axum::serve(listener, router).await,
                Some(tls) => {
                    let limits = steward_api::ServerLimits::default();
                    let forever = std::future::pending::<()>();
                    crate::http_server::serve_tls(listener, router, &limits, &tls, forever).await
                }
            };
            if let Err(error) = served {
                tracing::error!(%error, standin = name, "stand-in server stopped");
            }
        });
        Self { task }
    }
}

impl Drop for ServerTask {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `http://IP:PORT` for an address (IPv6 in brackets), `https://` when served over TLS.
pub(super) fn base_url(addr: SocketAddr, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{addr}")
}

/// Binds a listener and returns it with the address it got, refusing any address that is not
/// loopback: the stand-ins are never reachable from another machine.
pub(super) async fn bind_loopback(addr: SocketAddr) -> anyhow::Result<(TcpListener, SocketAddr)> {
    anyhow::ensure!(
        addr.ip().is_loopback(),
        "stand-ins listen only on loopback addresses, not {addr}"
    );
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("could not bind stand-in listener on {addr}"))?;
    let bound = listener
        .local_addr()
        .with_context(|| format!("could not read the address bound for {addr}"))?;
    Ok((listener, bound))
}

/// Locks a mutex, carrying on with the data if a panicking holder poisoned it: every critical
/// section leaves the state consistent.
pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Seconds since the Unix epoch.
pub(super) fn unix_now() -> u64 {
    unix_now_micros() / 1_000_000
}

/// Microseconds since the Unix epoch.
pub(super) fn unix_now_micros() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_micros()).unwrap_or(u64::MAX)
}

/// ServiceNow's `YYYY-MM-DD HH:MM:SS` (UTC) for the current time.
pub(super) fn servicenow_now() -> String {
    format_utc(unix_now())
}

/// Formats Unix seconds as `YYYY-MM-DD HH:MM:SS` in UTC.
pub(super) fn format_utc(secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX);
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    format!("{year:04}-{month:02}-{day:02} {h:02}:{m:02}:{s:02}")
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month as u32, day as u32)
}

/// `len` random bytes as lowercase hex.
pub(super) fn random_hex(len: usize) -> String {
    hex::encode(random_bytes(len))
}

/// `len` random ASCII letters and digits.
pub(super) fn random_alnum(len: usize) -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// `len` random ASCII digits, the first not zero.
pub(super) fn random_digits(len: usize) -> String {
    let mut rng = rand::thread_rng();
    (0..len)
        .map(|i| {
            let low = u8::from(i == 0);
            char::from(b'0' + rng.gen_range(low..10))
        })
        .collect()
}

/// A URL-safe opaque token of `bytes` random bytes.
pub(super) fn random_token(bytes: usize) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes(bytes))
}

fn random_bytes(len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    rand::thread_rng().fill(&mut bytes[..]);
    bytes
}

/// Compares two byte strings in time that depends only on their lengths.
pub(super) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A header's value when it is present and visible ASCII.
pub(super) fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive).
pub(super) fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = header_str(headers, header::AUTHORIZATION)?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|token| !token.is_empty())
}

/// The lowercase media type of `Content-Type`, without parameters.
pub(super) fn media_type(headers: &HeaderMap) -> Option<String> {
    let value = header_str(headers, header::CONTENT_TYPE)?;
    let essence = value.split(';').next().unwrap_or_default().trim();
    Some(essence.to_ascii_lowercase())
}

/// Whether `Content-Type` carries a `charset` parameter.
pub(super) fn has_charset(headers: &HeaderMap) -> bool {
    header_str(headers, header::CONTENT_TYPE).is_some_and(|value| {
        value
            .split(';')
            .skip(1)
            .any(|param| param.trim().to_ascii_lowercase().starts_with("charset="))
    })
}

/// Why a request body could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum BodyError {
    #[error("the request body is larger than {BODY_LIMIT} bytes")]
    TooLarge,
    #[error("the request body could not be read")]
    Unreadable,
}

/// The body bytes, or why they could not be had.
pub(super) fn read_body(body: Result<Bytes, BytesRejection>) -> Result<Bytes, BodyError> {
    body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => BodyError::TooLarge,
        _ => BodyError::Unreadable,
    })
}

/// The pairs of a URL query string, decoded (`+` as space, percent escapes).
pub(super) fn query_pairs(raw: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formatting_matches_servicenow_dates() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00");
        assert_eq!(format_utc(1_446_417_447), "2015-11-01 22:37:27");
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(format_utc(4_107_542_399), "2100-02-28 23:59:59");
    }

    #[test]
    fn random_identifiers_have_the_requested_shape() {
        let hex = random_hex(16);
        assert_eq!(hex.len(), 32);
        assert!(
            hex.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_ne!(random_hex(16), hex);
        assert!(random_alnum(29).bytes().all(|b| b.is_ascii_alphanumeric()));
        let digits = random_digits(12);
        assert_eq!(digits.len(), 12);
        assert!(digits.bytes().all(|b| b.is_ascii_digit()) && !digits.starts_with('0'));
        assert_eq!(random_token(64).len(), 86);
    }

    #[test]
    fn bearer_tokens_are_read_case_insensitively_and_never_empty() {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, "bearer abc".parse().unwrap());
        assert_eq!(bearer_token(&headers), Some("abc"));
        for bad in ["Bearer ", "Basic abc", "Bearerabc", ""] {
            headers.insert(header::AUTHORIZATION, bad.parse().unwrap());
            assert_eq!(bearer_token(&headers), None, "{bad:?}");
        }
    }

    #[test]
    fn content_type_parameters_are_split_off() {
        let mut headers = HeaderMap::new();
        assert_eq!(media_type(&headers), None);
        headers.insert(
            header::CONTENT_TYPE,
            "Application/JSON; Charset=UTF-8".parse().unwrap(),
        );
        assert_eq!(media_type(&headers).as_deref(), Some("application/json"));
        assert!(has_charset(&headers));
        headers.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        assert!(!has_charset(&headers));
    }

    #[test]
    fn constant_time_comparison_checks_length_and_content() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
    }

    #[tokio::test]
    async fn non_loopback_addresses_are_refused() {
        let error = bind_loopback("0.0.0.0:0".parse().unwrap())
            .await
            .unwrap_err();
        assert!(error.to_string().contains("loopback"), "{error}");
        assert!(bind_loopback("127.0.0.1:0".parse().unwrap()).await.is_ok());
    }
}
