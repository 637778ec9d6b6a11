//! Monitoring: discovers every running instance through the NATS micro-service API
//! (`$SRV.INFO` / `$SRV.STATS`) plus each instance's `/readyz`, and serves what it sees:
//! `GET /v1/status` and the `status` bus endpoint (what `slough status` shows), and
//! `GET /v1/sd/prometheus` (Prometheus HTTP service discovery of every `/metrics`).
//!
//! One request, followed: `tracker` sweeps on a timer and publishes a snapshot;
//! `http` and the bus endpoint only read the latest snapshot.

mod discovery;
mod http;
mod tracker;

use std::{net::SocketAddr, time::Duration};

use serde::Deserialize;
use slough_protocol::status;
use slough_service::{ServiceContext, ServiceError};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The crate version, which is the version the instance registers with.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What the instance says it does in `$SRV.INFO`.
pub const DESCRIPTION: &str =
    "Discovers service instances; status and Prometheus service discovery";

/// The `[monitoring]` section of the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `GET /v1/status` and `GET /v1/sd/prometheus`.
    pub listen: SocketAddr,
    /// The admin server (`/metrics`, `/livez`, `/readyz`).
    pub admin_listen: SocketAddr,
    /// How often to sweep the bus, in milliseconds.
    pub sweep_interval_ms: u64,
    /// How long a sweep waits for answers (and each `/readyz`), in milliseconds.
    pub answer_window_ms: u64,
    /// An instance unseen for this long is dropped from the status, in milliseconds.
    pub forget_after_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 9400)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9406)),
            sweep_interval_ms: 2_000,
            answer_window_ms: 500,
            forget_after_ms: 5_000,
        }
    }
}

impl Config {
    fn timing(&self) -> Result<tracker::Timing, ServiceError> {
        let timing = tracker::Timing {
            interval: Duration::from_millis(self.sweep_interval_ms),
            window: Duration::from_millis(self.answer_window_ms),
            forget_after: Duration::from_millis(self.forget_after_ms),
        };
        if timing.window.is_zero()
            || timing.window >= timing.interval
            || timing.forget_after <= timing.interval
        {
            return Err(ServiceError::Config(format!(
                "monitoring needs 0 < answer_window_ms ({}) < sweep_interval_ms ({}) < forget_after_ms ({})",
                self.answer_window_ms, self.sweep_interval_ms, self.forget_after_ms
            )));
        }
        Ok(timing)
    }
}

/// Sweeps and serves until `shutdown` is cancelled.
pub async fn run(
    ctx: ServiceContext,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), ServiceError> {
    let timing = config.timing()?;
    let metrics = tracker::TrackerMetrics::register(ctx.registry())
        .map_err(slough_telemetry::TelemetryError::from)?;
    let (snapshots, latest) = watch::channel(slough_protocol::status::StatusReport {
        swept_at: None,
        instances: Vec::new(),
        streams: Vec::new(),
    });
    let sweeper = tokio::spawn(tracker::run(
        ctx.bus().clone(),
        timing,
        metrics,
        snapshots,
        shutdown.clone(),
    ));

    let mut host = ctx.register(DESCRIPTION).await?;
    host.serve(&status::STATUS, latest.clone(), |latest, _| {
        let report = latest.borrow().clone();
        async move { Ok(report) }
    })
    .await?;
    let server = http::start(config.listen, latest)?;
    tracing::info!(addr = %server.addr(), "monitoring status listening");
    ctx.listening().announce("status", server.addr());

    let served = ctx.serve(host, shutdown).await;
    server.stop().await;
    let _ = sweeper.await;
    served
}
