//! Process-wide logging and tracing, set up once by [`init`].

use std::io::IsTerminal as _;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use serde::Deserialize;
use tracing_subscriber::{EnvFilter, Layer, layer::SubscriberExt, util::SubscriberInitExt};

use crate::TelemetryError;

/// How logs are written to stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable, for a terminal.
    #[default]
    Pretty,
    /// One JSON object a line, for log collectors.
    Json,
}

/// The `[log]` section of the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `pretty` or `json`.
    pub format: LogFormat,
    /// An `EnvFilter` directive such as `info` or `info,slough_bus=debug`. `RUST_LOG`,
    /// when set, wins.
    pub level: String,
    /// Where to export traces over OTLP/HTTP (`http://collector:4318`); unset: the
    /// standard `OTEL_EXPORTER_OTLP_ENDPOINT`, and no export when that is unset too.
    pub otlp_endpoint: Option<String>,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Pretty,
            level: DEFAULT_LEVEL.to_owned(),
            otlp_endpoint: None,
        }
    }
}

/// Our own info logs; libraries (the NATS client, actix, ONNX Runtime's session dumps)
/// only when something goes wrong. Qdrant Edge warns on every new shard that an mmap
/// capability check it never runs in embedded use was not initialized, so only its
/// errors show.
const DEFAULT_LEVEL: &str = "info,async_nats=warn,actix_server=warn,ort=warn,qdrant_edge=error";

/// Keeps the tracer provider alive; flushes pending spans when dropped.
#[must_use = "dropping the guard shuts tracing down"]
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Err(err) = self.provider.shutdown() {
            eprintln!("warning: flushing traces failed: {err}");
        }
    }
}

/// Installs the global subscriber: logs to stderr (filtered by the log level), spans to
/// OpenTelemetry (filtered on their own, see below). A tracer
/// provider is always installed so that spans carry trace ids that travel across NATS;
/// spans are exported only when an OTLP endpoint is configured (`log.otlp_endpoint` or
/// `OTEL_EXPORTER_OTLP_ENDPOINT`).
pub fn init(process_name: &str, config: &LogConfig) -> Result<TelemetryGuard, TelemetryError> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(from_env) if !from_env.is_empty() => from_env,
        _ => config.level.clone(),
    };
    let env_filter = EnvFilter::try_new(&filter).map_err(|source| TelemetryError::LogFilter {
        filter: filter.clone(),
        source,
    })?;

    let provider = tracer_provider(process_name, config.otlp_endpoint.as_deref())?;
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    opentelemetry::global::set_tracer_provider(provider.clone());
    // Spans reach OpenTelemetry at `info` whatever the log level says: a quiet log must
    // not cut traces (or the trace context that travels to other services).
    let otel_layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("slough"))
        .with_filter(tracing_subscriber::filter::LevelFilter::INFO);

    let fmt_layer = match config.format {
        // Colours only on a terminal: a log written to a file or a pipe stays plain text.
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed(),
    };

    tracing_subscriber::registry()
        .with(fmt_layer.with_filter(env_filter))
        .with(otel_layer)
        .try_init()
        .map_err(|err| TelemetryError::AlreadyInitialised(err.to_string()))?;
    Ok(TelemetryGuard { provider })
}

fn tracer_provider(
    process_name: &str,
    endpoint: Option<&str>,
) -> Result<SdkTracerProvider, TelemetryError> {
    use opentelemetry_otlp::WithExportConfig as _;
    let resource = Resource::builder()
        .with_service_name(process_name.to_owned())
        .build();
    let builder = SdkTracerProvider::builder().with_resource(resource);
    let from_env = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").is_ok_and(|v| !v.is_empty())
        || std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_ok_and(|v| !v.is_empty());
    let exporter = match endpoint {
        // The configured endpoint is the collector's base URL, as the variable is.
        Some(endpoint) => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/'))),
        // The exporter reads the endpoint, headers and timeout from the standard
        // OTEL_EXPORTER_OTLP_* variables.
        None if from_env => opentelemetry_otlp::SpanExporter::builder().with_http(),
        None => return Ok(builder.build()),
    };
    let exporter = exporter
        .build()
        .map_err(|err| TelemetryError::Otlp(err.to_string()))?;
    Ok(builder.with_batch_exporter(exporter).build())
}

/// The current span's trace id as 32 hex digits, or `None` outside a sampled span.
pub fn current_trace_id() -> Option<String> {
    use opentelemetry::trace::TraceContextExt as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let context = tracing::Span::current().context();
    let span = context.span();
    let span_context = span.span_context();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}
