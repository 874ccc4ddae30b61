//! W3C trace context (`traceparent`) for runs. The API reads the header of the request that
//! starts a run and keeps its normalised value in the run's trigger JSON under
//! [`TRIGGER_FIELD`]; the run actor makes it the parent of each step's span, so a run handled
//! later, or after a restart, stays in the caller's trace.
//!
//! Only the `traceparent` header is honoured; `tracestate` is not carried.

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The trigger JSON field holding the normalised `traceparent` of the request that started a
/// run.
pub const TRIGGER_FIELD: &str = "traceparent";

/// The remote span context a `traceparent` value names, or None when it is malformed (wrong
/// length or separators, upper-case or non-hex digits, version `ff`, an all-zero trace or
/// parent id). Versions above `00` are read for their first four fields, as the W3C
/// specification asks.
pub fn parse(value: &str) -> Option<SpanContext> {
    let value = value.trim();
    let bytes = value.as_bytes();
    if !value.is_ascii() || bytes.len() < 55 {
        return None;
    }
    let hex = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let version = &value[..2];
    if !hex(version) || version == "ff" {
        return None;
    }
    if version == "00" && bytes.len() != 55 {
        return None;
    }
    if bytes.len() > 55 && bytes[55] != b'-' {
        return None;
    }
    if bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
        return None;
    }
    let (trace, parent, flags) = (&value[3..35], &value[36..52], &value[53..55]);
    if !hex(trace) || !hex(parent) || !hex(flags) {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(parent).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    Some(SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags & 1),
        true,
        TraceState::default(),
    ))
}

/// The version-00 `traceparent` form of a span context.
pub fn format(cx: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        cx.trace_id(),
        cx.span_id(),
        cx.trace_flags().to_u8()
    )
}

/// A valid `traceparent` header value, normalised, or None when absent or malformed.
pub fn normalise(value: Option<&str>) -> Option<String> {
    value.and_then(parse).map(|cx| format(&cx))
}

/// The trace context recorded in a run's trigger, if any.
pub fn from_trigger(trigger: &serde_json::Value) -> Option<SpanContext> {
    trigger.get(TRIGGER_FIELD)?.as_str().and_then(parse)
}

/// Makes `cx` the parent of `span`, which must not have been entered yet. Does nothing when no
/// OpenTelemetry layer is installed.
pub fn set_parent(span: &tracing::Span, cx: &SpanContext) {
    let parent = opentelemetry::Context::new().with_remote_span_context(cx.clone());
    let _ = span.set_parent(parent);
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_round_trips() {
        let cx = parse(GOOD).unwrap();
        assert_eq!(
            cx.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(cx.is_remote() && cx.is_sampled());
        assert_eq!(format(&cx), GOOD);
        let future = format!("cc{}-extra", &GOOD[2..]);
        assert_eq!(normalise(Some(&future)).as_deref(), Some(GOOD));
    }

    #[test]
    fn malformed_traceparents_are_ignored() {
        for bad in [
            "",
            "garbage",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
        let trigger = serde_json::json!({ "traceparent": "nonsense" });
        assert!(from_trigger(&trigger).is_none());
    }
}
