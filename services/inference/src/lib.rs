//! The inference service: serves the model packages `modelkit` builds on ONNX Runtime.
//! Chat models generate with continuous batching, streamed over NATS; embedding models
//! embed batches of texts. Endpoints (`slough.v1.inference.<name>`): `generate`
//! (stream), `embed`, `models`, `load`, `unload`, `tokenize`, `detokenize`.
//!
//! A request's path: [`handlers`] decodes and checks it, [`models::Models`] names the
//! model, the model's [`chat::ChatModel`] queues it for its scheduler thread
//! ([`chat::scheduler`]), whose events the handler forwards as stream frames.

pub mod chat;
pub mod config;
pub mod embed;
mod handlers;
pub mod metrics;
pub mod models;
pub mod runtime;
pub mod text;

use slough_bus::EventStream;
use std::time::{Duration, Instant};

use slough_protocol::inference::{self, InstanceLoad, ModelEvent};
use slough_service::{ServiceContext, ServiceError};
use tokio_util::sync::CancellationToken;

pub use config::Config;

/// The crate version, which is the version the instance registers with.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What the instance says it does in `$SRV.INFO`.
pub const DESCRIPTION: &str = "Runs model packages on ONNX Runtime: generation and embeddings";

/// Loads the models, then serves until `shutdown` is cancelled.
pub async fn run(
    ctx: ServiceContext,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), ServiceError> {
    config.validate().map_err(ServiceError::Config)?;
    let data_dir = ctx.common().data_dir.clone();
    let models_dir = ctx.common().models_dir();
    let metrics = metrics::Metrics::register(ctx.registry())
        .map_err(slough_telemetry::TelemetryError::from)?;
    let runtime = runtime::Runtime::load(&config.runtime, &data_dir).map_err(|err| err.to_string());
    if let Err(err) = &runtime {
        // Serve anyway, unready, so that the operator sees why in the status.
        tracing::error!("{err}");
        let message = err.clone();
        ctx.add_check("onnxruntime", move || {
            let message = message.clone();
            Box::pin(async move { Err(message) })
        });
    }
    let max_embed_inputs = config.max_embed_inputs;
    let models = models::Models::start(models_dir, runtime, config, metrics).await;

    let added = ctx.bus().subscribe(&inference::MODEL_ADDED).await?;
    let removed = ctx.bus().subscribe(&inference::MODEL_REMOVED).await?;
    tokio::spawn(follow_events(
        added,
        removed,
        models.clone(),
        shutdown.clone(),
    ));

    let mut host = ctx.register(DESCRIPTION).await?;
    tokio::spawn(report_load(
        ctx.bus().clone(),
        host.id().to_owned(),
        models.clone(),
        shutdown.clone(),
    ));
    let state = handlers::Inference {
        models,
        max_embed_inputs,
    };
    handlers::add(&mut host, state).await?;
    ctx.serve(host, shutdown).await
}

/// How often the load is looked at, and published when it changed.
const LOAD_CHECK: Duration = Duration::from_millis(100);
/// The longest time between two load reports, changed or not (callers trust a report
/// for 1.5 s).
const LOAD_REPORT_AT_LEAST: Duration = Duration::from_millis(500);

/// Publishes this instance's load ([`inference::LOAD_REPORTS`]) whenever it changes
/// (checked every 100 ms) and every 500 ms regardless, so gateways can send work
/// where there is room.
async fn report_load(
    bus: slough_bus::Bus,
    instance_id: String,
    models: models::Models,
    shutdown: CancellationToken,
) {
    let mut last: Option<(Vec<inference::ModelLoad>, Instant)> = None;
    let mut tick = tokio::time::interval(LOAD_CHECK);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let loads = models.loads().await;
        let due = last.as_ref().is_none_or(|(previous, at)| {
            *previous != loads || at.elapsed() >= LOAD_REPORT_AT_LEAST
        });
        if !due || !bus.is_connected() {
            continue;
        }
        let report = InstanceLoad {
            instance_id: instance_id.clone(),
            models: loads.clone(),
        };
        if let Err(err) = bus.emit(&inference::LOAD_REPORTS, &report).await {
            tracing::debug!("cannot publish the load: {err}");
        }
        last = Some((loads, Instant::now()));
    }
}

/// Loads and unloads models as `slough.v1.events.models.added|removed` say.
async fn follow_events(
    mut added: EventStream<ModelEvent>,
    mut removed: EventStream<ModelEvent>,
    models: models::Models,
    shutdown: CancellationToken,
) {
    loop {
        let (event, load) = tokio::select! {
            event = added.next() => (event, true),
            event = removed.next() => (event, false),
            () = shutdown.cancelled() => return,
        };
        match event {
            Some(Ok(event)) => models.follow(event.model, load),
            Some(Err(err)) => tracing::warn!("unreadable model event: {err}"),
            None => return,
        }
    }
}
