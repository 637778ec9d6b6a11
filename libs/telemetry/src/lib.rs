//! Telemetry for every SloughGPT process: logs (pretty or JSON), OpenTelemetry traces
//! exported over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, Prometheus metrics, and
//! the per-service admin HTTP server (`/metrics`, `/livez`, `/readyz`).
//!
//! Must not depend on NATS or on any service: services hand it a registry and a
//! readiness probe, it serves them.

pub mod admin;
pub mod http;
pub mod logging;
pub mod metrics;

pub use admin::{AdminServer, Readiness};
pub use http::RunningServer;
pub use logging::{LogConfig, LogFormat, TelemetryGuard, init};

/// What can go wrong while setting telemetry up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The log filter in the configuration does not parse.
    #[error("invalid log level filter {filter:?}: {source}")]
    LogFilter {
        filter: String,
        source: tracing_subscriber::filter::ParseError,
    },
    /// A global subscriber was installed already.
    #[error("logging was initialised twice: {0}")]
    AlreadyInitialised(String),
    /// The OTLP exporter could not be built.
    #[error("cannot build the OTLP trace exporter: {0}")]
    Otlp(String),
    /// A metric could not be registered (a duplicate name, usually a bug).
    #[error("cannot register metric: {0}")]
    Metric(#[from] prometheus::Error),
    /// The admin server could not bind its address.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
}
