//! What every SloughGPT service runs on: the layered configuration shared by all of them,
//! the `nats-server` child process of single-process mode, and the [`ServiceContext`] a
//! service starts from (bus connection, metrics registry, admin server, readiness checks).
//!
//! Must not depend on any service crate: services depend on it.

pub mod config;
pub mod context;
pub mod nats_probe;
pub mod nats_server;

pub use config::{CommonConfig, ConfigError, load_config};
pub use context::{CheckFuture, Listening, ServiceContext};
pub use nats_server::{ClusterOptions, NatsServer, NatsServerOptions};

/// What can stop a service from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The bus failed (connecting, registering, serving).
    #[error(transparent)]
    Bus(#[from] slough_bus::BusError),
    /// Telemetry failed (metrics registration, admin server).
    #[error(transparent)]
    Telemetry(#[from] slough_telemetry::TelemetryError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] slough_store::StoreError),
    /// A setting is out of range; the message names it. Only for settings.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// nats-server could not be started.
    #[error("{0}")]
    NatsServer(String),
    /// The service's task panicked.
    #[error("{service} panicked: {reason}")]
    Panicked { service: String, reason: String },
    /// The service did not stop within the time it was given.
    #[error("{service} did not stop within {limit:?}")]
    StopTimeout {
        service: String,
        limit: std::time::Duration,
    },
    /// A listener could not be bound or a file could not be written.
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}
