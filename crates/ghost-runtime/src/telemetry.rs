//! The only place a tracing subscriber is built: an `EnvFilter` (`RUST_LOG`, else the configured
//! filter), human or JSON logs, and — when an OTLP endpoint is configured or
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set — span export over OTLP/gRPC.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use serde::{Deserialize, Serialize};
use tracing_opentelemetry::OpenTelemetryLayer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// How logs are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (the default).
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Logging and tracing settings, embedded in every service config as `telemetry`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Log line format.
    pub log_format: LogFormat,
    /// Filter directives used when `RUST_LOG` is not set, e.g. `info,router=debug`.
    pub log_filter: String,
    /// OTLP/gRPC collector endpoint, e.g. `http://127.0.0.1:4317`; the standard
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` variable takes precedence. Unset: no span export.
    pub otlp_endpoint: Option<String>,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Text,
            log_filter: "info".to_owned(),
            otlp_endpoint: None,
        }
    }
}

/// Keeps the span exporter alive; call [`Telemetry::shutdown`] on exit so the last spans leave.
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports every finished span now.
    pub fn flush(&self) {
        if let Some(provider) = &self.provider
            && let Err(err) = provider.force_flush()
        {
            tracing::warn!(error = %err, "cannot flush spans");
        }
    }

    /// Flushes and stops the exporter.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(err) = provider.shutdown()
        {
            tracing::warn!(error = %err, "cannot shut down the span exporter");
        }
    }
}

/// Installs the global subscriber for `service`. Must run inside the Tokio runtime when OTLP
/// export is on (the exporter's channel spawns a task).
pub fn init(service: &str, config: &TelemetryConfig) -> anyhow::Result<Telemetry> {
    let filter =
        EnvFilter::try_from_default_env().or_else(|_| EnvFilter::try_new(&config.log_filter))?;
    let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .ok()
        .filter(|value| !value.is_empty())
        .or_else(|| config.otlp_endpoint.clone());
    let (otel, provider) = match endpoint {
        Some(endpoint) => {
            let (layer, provider) = otel_layer(service, &endpoint)?;
            (Some(layer), Some(provider))
        }
        None => (None, None),
    };
    let logs = match config.log_format {
        LogFormat::Text => tracing_subscriber::fmt::layer().boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(otel)
        .with(logs)
        .with(filter)
        .try_init()?;
    Ok(Telemetry { provider })
}

/// An OpenTelemetry layer exporting to `endpoint` over OTLP/gRPC, and its provider.
pub fn otel_layer(
    service: &str,
    endpoint: &str,
) -> anyhow::Result<(OpenTelemetryLayer<Registry, SdkTracer>, SdkTracerProvider)> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name(service.to_owned())
                .build(),
        )
        .build();
    let tracer = provider.tracer(service.to_owned());
    Ok((tracing_opentelemetry::layer().with_tracer(tracer), provider))
}
