//! The HTTP plumbing both providers share: endpoint joining, one bounded request, and the
//! `retry-after` headers.

use std::time::Duration;

use reqwest::RequestBuilder;
use reqwest::header::{HeaderMap, HeaderValue};
use url::Url;

use super::LlmError;

/// No provider body larger than this is read.
pub(super) const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

/// A provider's answer: status, headers and the body, or `None` when it was over the limit.
pub(super) type RawReply = crate::http::CappedReply;

impl RawReply {
    /// The body of a successful reply; an oversized one is an invalid reply.
    pub(super) fn success_body(&self) -> Result<&[u8], LlmError> {
        self.body.as_deref().ok_or_else(|| {
            LlmError::InvalidReply(format!("reply body is larger than {MAX_BODY_BYTES} bytes"))
        })
    }
}

/// Appends path segments to `base`, keeping its own path (`/v1`, `/openai/deployments/x`)
/// whether or not it ends in `/`, and keeping its query (Azure's `api-version`).
pub(super) fn endpoint(base: &Url, segments: &[&str]) -> Result<Url, LlmError> {
    let mut url = base.clone();
    url.set_fragment(None);
    url.path_segments_mut()
        .map_err(|()| LlmError::Client {
            status: 0,
            message: format!("provider base url {base} cannot take a path"),
        })?
        .pop_if_empty()
        .extend(segments);
    Ok(url)
}

/// A header value carrying a secret, marked sensitive so it never shows in debug output.
pub(super) fn secret_header(value: &str) -> Result<HeaderValue, LlmError> {
    let mut header = HeaderValue::from_str(value).map_err(|_| LlmError::Client {
        status: 0,
        message: "the API key contains characters that cannot go in an HTTP header".into(),
    })?;
    header.set_sensitive(true);
    Ok(header)
}

/// Sends one request and reads at most [`MAX_BODY_BYTES`] of the answer.
pub(super) async fn send(request: RequestBuilder) -> Result<RawReply, LlmError> {
    crate::http::send_capped(request, MAX_BODY_BYTES)
        .await
        .map_err(|e| LlmError::Transport(super::clip(&crate::http::error_chain(&e))))
}

/// The wait a provider asked for: `retry-after-ms` (milliseconds) first, then `retry-after`
/// (seconds). The HTTP-date form of `retry-after` is not read; the caller's backoff applies.
pub(super) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let millis = header("retry-after-ms")
        .and_then(non_negative)
        .map(|ms| ms / 1000.0);
    millis
        .or_else(|| header("retry-after").and_then(non_negative))
        .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
}

fn non_negative(text: &str) -> Option<f64> {
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite() && *n >= 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join(base: &str) -> String {
        endpoint(&base.parse().unwrap(), &["chat", "completions"])
            .unwrap()
            .to_string()
    }

    #[test]
    fn endpoints_keep_the_base_path() {
        assert_eq!(
            join("https://api.openai.com/v1/"),
            "https://api.openai.com/v1/chat/completions"
        );
        assert_eq!(
            join("https://api.openai.com/v1"),
            "https://api.openai.com/v1/chat/completions"
        );
        assert_eq!(
            join("http://localhost:11434/v1/"),
            "http://localhost:11434/v1/chat/completions"
        );
        assert_eq!(
            join("http://127.0.0.1:8000"),
            "http://127.0.0.1:8000/chat/completions"
        );
        assert_eq!(
            join("https://x.openai.azure.com/openai/deployments/gpt4o?api-version=2024-10-21"),
            "https://x.openai.azure.com/openai/deployments/gpt4o/chat/completions?api-version=2024-10-21"
        );
    }

    #[test]
    fn a_base_url_that_cannot_take_a_path_is_a_client_error() {
        let err = endpoint(&"mailto:ops@example.com".parse().unwrap(), &["messages"]).unwrap_err();
        assert!(matches!(err, LlmError::Client { status: 0, .. }), "{err:?}");
    }

    #[test]
    fn retry_after_prefers_milliseconds_and_ignores_nonsense() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut map = HeaderMap::new();
            for (k, v) in pairs {
                map.insert(*k, HeaderValue::from_static(v));
            }
            map
        };
        let ms = headers(&[("retry-after-ms", "1500"), ("retry-after", "9")]);
        assert_eq!(retry_after(&ms), Some(Duration::from_millis(1500)));
        assert_eq!(
            retry_after(&headers(&[("retry-after", "20")])),
            Some(Duration::from_secs(20))
        );
        assert_eq!(
            retry_after(&headers(&[("retry-after", "0.5")])),
            Some(Duration::from_millis(500))
        );
        for bad in [
            "-1",
            "NaN",
            "inf",
            "1e400",
            "soon",
            "Wed, 21 Oct 2015 07:28:00 GMT",
            "",
        ] {
            let map = headers(&[("retry-after", bad)]);
            assert_eq!(retry_after(&map), None, "{bad}");
        }
        let fallback = headers(&[("retry-after-ms", "later"), ("retry-after", "3")]);
        assert_eq!(retry_after(&fallback), Some(Duration::from_secs(3)));
        assert_eq!(retry_after(&HeaderMap::new()), None);
        let huge = headers(&[("retry-after", "1e300")]);
        assert_eq!(
            retry_after(&huge),
            None,
            "an overflowing wait is ignored, not a panic"
        );
    }
}
