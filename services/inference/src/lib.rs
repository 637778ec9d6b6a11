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

use futures::StreamExt as _;
use slough_protocol::{inference::ModelEvent, subjects};
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
    let models_dir = config
        .models_dir
        .clone()
        .unwrap_or_else(|| data_dir.join("models"));
    let metrics = metrics::Metrics::register(ctx.registry())
        .map_err(|err| ServiceError::Config(format!("cannot register metrics: {err}")))?;
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

    let events = ctx
        .bus()
        .client()
        .subscribe(subjects::event("models.*"))
        .await
        .map_err(|err| ServiceError::Bus(slough_bus::BusError::Nats(err.to_string())))?;
    tokio::spawn(follow_events(events, models.clone(), shutdown.clone()));

    let mut host = ctx.register(DESCRIPTION).await?;
    handlers::add(&mut host, models, max_embed_inputs).await?;
    ctx.serve(host, shutdown).await
}

/// Loads and unloads models as `slough.v1.events.models.added|removed` say.
async fn follow_events(
    mut events: async_nats::Subscriber,
    models: models::Models,
    shutdown: CancellationToken,
) {
    let added = subjects::event(subjects::events::MODELS_ADDED);
    loop {
        let message = tokio::select! {
            message = events.next() => message,
            () = shutdown.cancelled() => None,
        };
        let Some(message) = message else {
            return;
        };
        match serde_json::from_slice::<ModelEvent>(&message.payload) {
            Ok(event) => models.follow(event.model, message.subject.as_str() == added),
            Err(err) => tracing::warn!(subject = %message.subject, "unreadable model event: {err}"),
        }
    }
}
