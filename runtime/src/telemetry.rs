//! OpenTelemetry traces over OTLP/HTTP. With an endpoint configured, the spans of `tracing`
//! (HTTP requests, run steps, adapter calls) are exported as OTLP protobuf to
//! `{endpoint}/v1/traces` by a batch processor on its own thread: ending a span only queues it
//! (a full queue drops spans rather than wait), so export never holds up a request. The
//! server's shutdown flushes what is queued.

use std::time::Duration;

use anyhow::Context;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracer, SdkTracerProvider,
};
use tracing::Subscriber;
use tracing_opentelemetry::OpenTelemetryLayer;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::registry::LookupSpan;

/// Where and how spans are exported.
#[derive(Debug, Clone)]
pub struct TelemetryOptions {
    /// The full URL spans are posted to (`…/v1/traces`).
    pub traces_url: String,
    /// The `service.name` resource attribute.
    pub service_name: String,
    /// How long finished spans wait before a batch is sent (default 5 s).
    pub scheduled_delay: Duration,
    /// How long one export may take (default 10 s).
    pub export_timeout: Duration,
    /// Refuse a `traces_url` that is not `https://` (`steward serve` outside `dev`; default
    /// off).
    pub https_only: bool,
}

impl TelemetryOptions {
    /// Export to the collector at base URL `endpoint` (its `/v1/traces`).
    pub fn new(endpoint: &str, service_name: &str) -> Self {
        let base = endpoint.trim_end_matches('/');
        let traces_url = if base.ends_with("/v1/traces") {
            base.to_owned()
        } else {
            format!("{base}/v1/traces")
        };
        Self {
            traces_url,
            service_name: service_name.to_owned(),
            scheduled_delay: Duration::from_secs(5),
            export_timeout: Duration::from_secs(10),
            https_only: false,
        }
    }
}

/// The process's tracer provider. Cloning shares it.
#[derive(Clone)]
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").finish_non_exhaustive()
    }
}

impl Telemetry {
    /// Builds the exporter and its batch processor; nothing is sent until spans end.
    pub fn start(options: &TelemetryOptions) -> anyhow::Result<Self> {
        if options.https_only
            && !options
                .traces_url
                .to_ascii_lowercase()
                .starts_with("https://")
        {
            anyhow::bail!(
                "the OTLP endpoint {} must be https:// here: plain HTTP is allowed only in \
                 the dev profile and test setups",
                options.traces_url
            );
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(options.traces_url.clone())
            .with_timeout(options.export_timeout)
            .build()
            .context("building the OTLP span exporter")?;
        let batch = BatchConfigBuilder::default()
            .with_scheduled_delay(options.scheduled_delay)
            .build();
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(batch)
            .build();
        let resource = Resource::builder()
            .with_service_name(options.service_name.clone())
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(resource)
            .build();
        Ok(Self { provider })
    }

    /// The `tracing` layer that turns spans into OpenTelemetry spans of this provider. Only
    /// spans pass: log events, whose messages may quote an error from a connector, are never
    /// attached to exported spans, so what is exported is the spans' own fields, which name
    /// ids, steps, routes and outcomes only.
    pub fn layer<S>(&self) -> impl Layer<S> + 'static
    where
        S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
    {
        let layer: OpenTelemetryLayer<S, SdkTracer> = tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer("steward"))
            .with_tracked_inactivity(false)
            .with_location(false)
            .with_threads(false);
        layer.with_filter(filter_fn(|meta| meta.is_span()))
    }

    /// Exports every finished span now, waiting (off the async threads) until it is sent or
    /// the export timeout passes.
    pub async fn flush(&self) {
        let provider = self.provider.clone();
        let flushed = tokio::task::spawn_blocking(move || provider.force_flush()).await;
        if let Ok(Err(e)) = flushed {
            tracing::warn!(error = %e, "Flushing spans failed.");
        }
    }

    /// Flushes and stops the exporter; spans that end later are dropped.
    pub async fn shutdown(&self) {
        let provider = self.provider.clone();
        let stopped = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        if let Ok(Err(e)) = stopped {
            tracing::warn!(error = %e, "Stopping the span exporter failed.");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_https_only_exporter_refuses_a_plain_http_endpoint() {
        let mut options = TelemetryOptions::new("http://127.0.0.1:4318", "steward");
        options.https_only = true;
        let err = Telemetry::start(&options).err().unwrap().to_string();
        assert!(err.contains("must be https://"), "{err}");
    }
}
