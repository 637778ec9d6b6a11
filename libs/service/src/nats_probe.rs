//! Watches an instance's NATS connection for `/metrics`, so that operators see an
//! instance that lost NATS and a server that answers slowly:
//! `slough_<service>_nats_connected` (1 while connected) and
//! `slough_<service>_nats_rtt_seconds` (a flush round trip to the server, measured every
//! few seconds; the last one measured).

use std::time::{Duration, Instant};

use prometheus::{Gauge, IntGauge, Registry};
use slough_bus::Bus;
use slough_protocol::ServiceKind;
use tokio::task::JoinHandle;

/// How often the connection is probed.
const EVERY: Duration = Duration::from_secs(5);
/// A round trip longer than this counts as none.
const LIMIT: Duration = Duration::from_secs(5);

/// The probing task; it stops when this is dropped.
pub struct NatsProbe {
    task: JoinHandle<()>,
}

impl NatsProbe {
    /// Registers the two gauges in `registry` and starts probing `bus`.
    pub fn start(
        kind: ServiceKind,
        bus: Bus,
        registry: &Registry,
    ) -> Result<NatsProbe, prometheus::Error> {
        let connected = IntGauge::new(
            format!("slough_{kind}_nats_connected"),
            "1 while this instance is connected to NATS, else 0.",
        )?;
        let rtt = Gauge::new(
            format!("slough_{kind}_nats_rtt_seconds"),
            "The last round trip (a flush) to the NATS server, measured every 5 s.",
        )?;
        registry.register(Box::new(connected.clone()))?;
        registry.register(Box::new(rtt.clone()))?;
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(EVERY);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let started = Instant::now();
                let flushed = bus.is_connected()
                    && matches!(
                        tokio::time::timeout(LIMIT, bus.client().flush()).await,
                        Ok(Ok(()))
                    );
                connected.set(i64::from(flushed));
                if flushed {
                    rtt.set(started.elapsed().as_secs_f64());
                }
            }
        });
        Ok(NatsProbe { task })
    }
}

impl Drop for NatsProbe {
    fn drop(&mut self) {
        self.task.abort();
    }
}
