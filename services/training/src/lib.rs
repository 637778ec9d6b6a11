//! The training service: LoRA fine-tuning jobs shaped as OpenAI's, on a durable
//! JetStream work queue. Endpoints (`slough.v1.training.<name>`): `create_job`,
//! `list_jobs`, `get_job`, `cancel_job`, `list_events`, `list_checkpoints`.
//!
//! A job's path: [`handlers`] checks the request and stores the job ([`jobs`]); the
//! [`worker`] validates its files and queues it ([`queue`]); a worker (any replica)
//! pulls it, trains it with [`trainer`] on candle, checkpoints, and exports the merged
//! model as a package that inference loads.

pub mod classifier;
pub mod config;
mod handlers;
pub mod jobs;
pub mod metrics;
pub mod queue;
pub mod trainer;
pub mod worker;

use std::{sync::Arc, time::Duration};

use slough_service::{ServiceContext, ServiceError};
use tokio_util::sync::CancellationToken;

pub use config::Config;

/// The crate version, which is the version the instance registers with.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What the instance says it does in `$SRV.INFO`.
pub const DESCRIPTION: &str = "Fine-tuning jobs on a JetStream work queue";

/// Opens the store, the file store and the job queue, starts the worker, then serves
/// until `shutdown` is cancelled. On shutdown the worker stops first: a running job
/// saves a checkpoint and goes back to the queue before the bus closes.
pub async fn run(
    ctx: ServiceContext,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), ServiceError> {
    config.validate().map_err(ServiceError::Config)?;
    let data_dir = ctx.common().data_dir.clone();
    let bus = ctx.bus().clone();
    {
        let bus = bus.clone();
        ctx.add_check("jetstream", move || {
            let bus = bus.clone();
            Box::pin(async move { bus.jetstream_ready().await })
        });
    }
    let metrics = metrics::Metrics::register(ctx.registry())
        .map_err(slough_telemetry::TelemetryError::from)?;
    let store = ctx.open_store().await?;
    let files = slough_bus::FileStore::open(&bus).await?;
    let lease = Duration::from_secs(config.lease_seconds);
    let queue = queue::Queue::open(&bus, lease).await?;
    let mut host = ctx.register(DESCRIPTION).await?;
    let jobs = jobs::Jobs::new(store.clone());
    let worker = Arc::new(worker::Worker {
        jobs: jobs.clone(),
        files,
        bus: bus.clone(),
        queue,
        paths: worker::Paths {
            models: ctx.common().models_dir(),
            sources: config
                .sources_dir
                .clone()
                .unwrap_or_else(|| data_dir.join("cache/sources")),
            jobs: config
                .jobs_dir
                .clone()
                .unwrap_or_else(|| data_dir.join("training")),
        },
        settings: worker::Settings {
            checkpoint_every: config.checkpoint_every,
            micro_batch_tokens: config.micro_batch_tokens,
            lease,
            export_weights: config.export_weights,
            max_job_tokens: config.max_job_tokens,
        },
        id: host.id().to_owned(),
        metrics: metrics.clone(),
    });
    handlers::add(
        &mut host,
        Arc::new(handlers::Endpoints {
            jobs: jobs.clone(),
            worker: worker.clone(),
        }),
    )
    .await?;

    // Jobs left in validating_files by an instance that stopped are validated again
    // (validation is idempotent: only one instance moves a job on).
    match jobs.validating().await {
        Ok(stale) => {
            for job in stale {
                let worker = worker.clone();
                tokio::spawn(async move { worker.validate(&job.id).await });
            }
        }
        Err(err) => tracing::warn!("cannot look for jobs to validate: {err}"),
    }
    tokio::spawn(report_jobs(jobs, metrics, shutdown.clone()));

    let worker_done = tokio::spawn(worker.serve(config.concurrency, shutdown.clone()));
    let host_shutdown = CancellationToken::new();
    {
        let host_shutdown = host_shutdown.clone();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            let _ = worker_done.await;
            host_shutdown.cancel();
        });
    }
    let served = ctx.serve(host, host_shutdown).await;
    store.close().await;
    served
}

/// Refreshes the jobs-by-status gauge every few seconds.
async fn report_jobs(jobs: jobs::Jobs, metrics: metrics::Metrics, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        if let Ok(counts) = jobs.counts().await {
            metrics.set_jobs(&counts);
        }
    }
}
