//! The task that owns what monitoring knows: it sweeps the bus on a timer, keeps every
//! instance seen recently, forgets those unseen for too long, reads JetStream's streams,
//! and publishes each new picture as a [`StatusReport`] snapshot that readers borrow.

use std::{collections::HashMap, time::Duration};

use chrono::{DateTime, Utc};
use prometheus::{Histogram, HistogramOpts, IntGaugeVec, Opts, Registry};
use slough_protocol::{
    ServiceKind,
    status::{InstanceStatus, StatusReport, StreamStatus},
};
use tokio::{sync::watch, time::Instant};
use tokio_util::sync::CancellationToken;

use crate::discovery::{Sighting, sweep};

/// How the tracker sweeps.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub interval: Duration,
    pub window: Duration,
    pub forget_after: Duration,
}

struct Tracked {
    sighting: Sighting,
    last_seen: Instant,
}

/// Sweeps until `shutdown`, publishing into `snapshots`.
pub async fn run(
    bus: slough_bus::Bus,
    timing: Timing,
    metrics: TrackerMetrics,
    snapshots: watch::Sender<StatusReport>,
    shutdown: CancellationToken,
) {
    let http = reqwest::Client::new();
    let mut known: HashMap<String, Tracked> = HashMap::new();
    let mut streams = Vec::new();
    let mut ticks = tokio::time::interval(timing.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let started = Instant::now();
        match sweep(&bus, &http, timing.window).await {
            Ok(sightings) => {
                for sighting in sightings {
                    known.insert(
                        sighting.id.clone(),
                        Tracked {
                            sighting,
                            last_seen: started,
                        },
                    );
                }
            }
            Err(err) => tracing::warn!(error = %err, "sweeping the bus failed"),
        }
        match bus.streams().await {
            Ok(read) => streams = read,
            Err(err) => tracing::warn!(error = %err, "reading JetStream's streams failed"),
        }
        known.retain(|id, tracked| {
            let keep = started.duration_since(tracked.last_seen) < timing.forget_after;
            if !keep {
                tracing::info!(instance = %id, service = %tracked.sighting.service, "instance stopped answering; forgotten");
            }
            keep
        });
        metrics
            .sweep_duration
            .observe(started.elapsed().as_secs_f64());
        let report = report(&known, streams.clone(), Utc::now());
        metrics.count(&report);
        snapshots.send_replace(report);
    }
}

fn report(
    known: &HashMap<String, Tracked>,
    mut streams: Vec<StreamStatus>,
    now: DateTime<Utc>,
) -> StatusReport {
    let mut instances: Vec<InstanceStatus> = known
        .values()
        .map(|tracked| {
            let sighting = &tracked.sighting;
            InstanceStatus {
                id: sighting.id.clone(),
                service: sighting.service,
                version: sighting.version.clone(),
                started_at: sighting.started_at,
                uptime_seconds: u64::try_from((now - sighting.started_at).num_seconds())
                    .unwrap_or(0),
                admin_url: sighting.admin_url.clone(),
                metrics_url: sighting
                    .admin_url
                    .as_ref()
                    .map(|url| format!("{}/metrics", url.trim_end_matches('/'))),
                healthy: sighting.problem.is_none(),
                problem: sighting.problem.clone(),
                endpoints: sighting.endpoints.clone(),
            }
        })
        .collect();
    instances.sort_by(|a, b| (a.service.name(), &a.id).cmp(&(b.service.name(), &b.id)));
    streams.sort_by(|a, b| a.name.cmp(&b.name));
    StatusReport {
        swept_at: Some(now),
        instances,
        streams,
    }
}

/// Monitoring's own view of the platform, as metrics.
#[derive(Clone)]
pub struct TrackerMetrics {
    instances: IntGaugeVec,
    sweep_duration: Histogram,
    stream_copies: IntGaugeVec,
}

impl TrackerMetrics {
    pub fn register(registry: &Registry) -> Result<TrackerMetrics, prometheus::Error> {
        let instances = IntGaugeVec::new(
            Opts::new(
                "slough_monitoring_instances",
                "Service instances seen on the bus, by service and health.",
            ),
            &["service", "healthy"],
        )?;
        let sweep_duration = Histogram::with_opts(
            HistogramOpts::new(
                "slough_monitoring_sweep_duration_seconds",
                "Time one discovery sweep of the bus takes, readiness checks included.",
            )
            .buckets(vec![0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0]),
        )?;
        let stream_copies = IntGaugeVec::new(
            Opts::new(
                "slough_monitoring_jetstream_copies",
                "Copies of each JetStream stream: those configured, and those current now.",
            ),
            &["stream", "state"],
        )?;
        registry.register(Box::new(instances.clone()))?;
        registry.register(Box::new(sweep_duration.clone()))?;
        registry.register(Box::new(stream_copies.clone()))?;
        Ok(TrackerMetrics {
            instances,
            sweep_duration,
            stream_copies,
        })
    }

    fn count(&self, report: &StatusReport) {
        // Streams that went away leave the metric with them.
        self.stream_copies.reset();
        for stream in &report.streams {
            for (state, copies) in [("configured", stream.replicas), ("current", stream.current)] {
                self.stream_copies
                    .with_label_values(&[stream.name.as_str(), state])
                    .set(i64::from(copies));
            }
        }
        for service in ServiceKind::ALL {
            for healthy in [true, false] {
                let count = report
                    .instances
                    .iter()
                    .filter(|i| i.service == service && i.healthy == healthy)
                    .count();
                self.instances
                    .with_label_values(&[service.name(), if healthy { "true" } else { "false" }])
                    .set(i64::try_from(count).unwrap_or(i64::MAX));
            }
        }
    }
}
