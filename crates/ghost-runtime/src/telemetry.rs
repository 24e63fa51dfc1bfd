//! The only place a tracing subscriber is built: an `EnvFilter` (`RUST_LOG`, else the configured
//! filter), human or JSON logs (no colour codes unless stdout is a terminal), and an OpenTelemetry
//! tracer that always runs, so every request has a W3C trace context whether or not spans leave
//! the process. Spans are exported over OTLP/gRPC only when an OTLP endpoint is configured or
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
//!
//! A service binary calls [`init`] with its name. `ghost up` runs all five services in one
//! process under one subscriber and calls [`init_local`] instead, which attributes each span to
//! the service that emitted it (see [`services`]).

mod services;

use std::io::IsTerminal;

use opentelemetry::trace::{Tracer, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, SpanExporter};
use serde::{Deserialize, Serialize};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

pub use services::{LOCAL_SERVICE, SERVICE_ATTRIBUTE, SERVICES};

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
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` variable takes precedence. Unset: no span export (trace
    /// ids are still created and propagated).
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

/// Keeps the tracer alive; call [`Telemetry::shutdown`] on exit so the last spans leave.
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Exports every finished span now (nothing to do when no exporter is configured).
    pub fn flush(&self) {
        if let Err(err) = self.provider.force_flush() {
            tracing::warn!(error = %err, "cannot flush spans");
        }
    }

    /// Flushes and stops the exporter.
    pub fn shutdown(self) {
        if let Err(err) = self.provider.shutdown() {
            tracing::warn!(error = %err, "cannot shut down the span exporter");
        }
    }
}

/// Installs the global subscriber for one `service`. Must run inside the Tokio runtime when OTLP
/// export is on (the exporter's channel spawns a task).
pub fn init(service: &str, config: &TelemetryConfig) -> anyhow::Result<Telemetry> {
    let exporter = match otlp_endpoint(config) {
        Some(endpoint) => Some(otlp_exporter(&endpoint)?),
        None => None,
    };
    let provider = tracer_provider(service, exporter);
    let tracer = provider.tracer(service.to_owned());
    install(config, tracer)?;
    Ok(Telemetry { provider })
}

/// Installs the global subscriber for `ghost up`: the five services in one process. Each span
/// carries the [`SERVICE_ATTRIBUTE`] of the service that emitted it, and is exported with that
/// service's `service.name`, so a trace viewer shows five services, not one.
pub fn init_local(config: &TelemetryConfig) -> anyhow::Result<Telemetry> {
    let exporter = match otlp_endpoint(config) {
        Some(endpoint) => Some(services::ByService::new(|| otlp_exporter(&endpoint))?),
        None => None,
    };
    let provider = tracer_provider(LOCAL_SERVICE, exporter);
    let tracer = services::ServiceTracer::new(provider.tracer(LOCAL_SERVICE));
    install(config, tracer)?;
    Ok(Telemetry { provider })
}

/// The configured endpoint; the standard environment variable wins.
fn otlp_endpoint(config: &TelemetryConfig) -> Option<String> {
    std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .ok()
        .filter(|value| !value.is_empty())
        .or_else(|| config.otlp_endpoint.clone())
}

fn otlp_exporter(endpoint: &str) -> anyhow::Result<opentelemetry_otlp::SpanExporter> {
    Ok(opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()?)
}

/// A provider that samples every span (so every request has a trace id) and exports them only
/// when given an exporter.
fn tracer_provider<E: SpanExporter + 'static>(
    service: &str,
    exporter: Option<E>,
) -> SdkTracerProvider {
    let builder = SdkTracerProvider::builder()
        .with_sampler(Sampler::AlwaysOn)
        .with_resource(
            Resource::builder()
                .with_service_name(service.to_owned())
                .build(),
        );
    match exporter {
        Some(exporter) => builder.with_batch_exporter(exporter),
        None => builder,
    }
    .build()
}

/// Whether text logs may carry ANSI colour codes: only on a terminal, and never with `NO_COLOR`.
fn colour_logs() -> bool {
    std::io::stdout().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty())
}

fn install<T>(config: &TelemetryConfig, tracer: T) -> anyhow::Result<()>
where
    T: Tracer + Send + Sync + 'static,
    T::Span: Send + Sync,
{
    let filter =
        EnvFilter::try_from_default_env().or_else(|_| EnvFilter::try_new(&config.log_filter))?;
    let otel = tracing_opentelemetry::layer::<Registry>().with_tracer(tracer);
    let logs = match config.log_format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(colour_logs())
            .boxed(),
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
    Ok(())
}
