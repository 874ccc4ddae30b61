//! Request spans and the incoming W3C trace context. Each request has an `http.request` span
//! with its method, route template and status, a child of the caller's `traceparent` when it
//! sends a valid one; a malformed one is ignored. The endpoints that start runs keep the
//! normalised `traceparent` in the run's trigger, so the run's step spans join the same trace.

use axum::extract::{MatchedPath, Request};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use serde_json::Value;
use steward_actors::trace_context;
use tracing::{Instrument, info_span};

/// The caller's valid `traceparent`, normalised; None when absent or malformed.
pub(crate) fn traceparent(headers: &HeaderMap) -> Option<String> {
    trace_context::normalise(headers.get("traceparent").and_then(|v| v.to_str().ok()))
}

/// Records the caller's valid `traceparent` in a run's trigger JSON.
pub(crate) fn record_traceparent(trigger: &mut Value, headers: &HeaderMap) {
    if let (Some(value), Some(map)) = (traceparent(headers), trigger.as_object_mut()) {
        map.insert(trace_context::TRIGGER_FIELD.into(), Value::String(value));
    }
}

/// Runs a request inside its `http.request` span.
pub(crate) async fn http_span(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let span = info_span!(
        "http.request",
        otel.name = format!("{} {route}", request.method()),
        otel.kind = "server",
        http.request.method = %request.method(),
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
    );
    let parent = traceparent(request.headers()).and_then(|v| trace_context::parse(&v));
    if let Some(parent) = parent {
        trace_context::set_parent(&span, &parent);
    }
    let response = next.run(request).instrument(span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_valid_traceparent_is_recorded_in_the_trigger() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut headers = HeaderMap::new();
        headers.insert("traceparent", good.parse().unwrap());
        let mut trigger = serde_json::json!({ "kind": "api" });
        record_traceparent(&mut trigger, &headers);
        assert_eq!(trigger["traceparent"], good);

        for bad in [
            "",
            "00-xyz",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
        ] {
            headers.insert("traceparent", bad.parse().unwrap());
            let mut trigger = serde_json::json!({ "kind": "api" });
            record_traceparent(&mut trigger, &headers);
            assert_eq!(trigger, serde_json::json!({ "kind": "api" }), "{bad}");
        }
    }
}
