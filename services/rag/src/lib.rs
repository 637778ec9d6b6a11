//! The RAG service: collections of documents, split into chunks with the embedding
//! model's tokenizer, embedded by inference, and indexed in Qdrant (embedded Qdrant
//! Edge shards, or a Qdrant server) for dense, sparse (BM25) and hybrid search. Endpoints (`slough.v1.rag.<name>`):
//! `create_collection`, `list_collections`, `get_collection`, `delete_collection`,
//! `ingest`, `delete_document`, `search`.
//!
//! A request's path: [`handlers`] decodes it and hands it to [`collections`], which
//! keeps settings and documents in the store, splits with [`chunking`], embeds over
//! the bus and reads and writes chunks through [`index`].

pub mod chunking;
pub mod collections;
pub mod config;
mod handlers;
pub mod index;
pub mod metrics;

use std::{sync::Arc, time::Duration};

use slough_service::{ServiceContext, ServiceError};
use tokio_util::sync::CancellationToken;

pub use config::Config;

/// The crate version, which is the version the instance registers with.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What the instance says it does in `$SRV.INFO`.
pub const DESCRIPTION: &str = "Collections, ingestion and hybrid retrieval on Qdrant";

/// Opens every collection, then serves until `shutdown` is cancelled.
pub async fn run(
    ctx: ServiceContext,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), ServiceError> {
    config.validate().map_err(ServiceError::Config)?;
    let data_dir = ctx.common().data_dir.clone();
    let metrics = metrics::Metrics::register(ctx.registry())
        .map_err(slough_telemetry::TelemetryError::from)?;
    let backend = match &config.qdrant.url {
        None => index::Backend::Edge(index::EdgeBackend::new(
            &config
                .collections_dir
                .clone()
                .unwrap_or_else(|| data_dir.join("collections")),
        )),
        Some(url) => {
            let server = index::ServerBackend::new(index::server::ServerSettings {
                url: url.clone(),
                api_key: config.qdrant.api_key.clone(),
                timeout: Duration::from_secs(config.qdrant.timeout_seconds),
                connect_timeout: Duration::from_secs(config.qdrant.connect_timeout_seconds),
                collection_prefix: config.qdrant.collection_prefix.clone(),
            })
            .map_err(|err| ServiceError::Config(err.to_string()))?;
            index::Backend::Server(server)
        }
    };
    tracing::info!("collections kept as {}", backend.describe());
    let store = ctx.open_store().await?;
    let setup = collections::Setup {
        store: store.clone(),
        bus: ctx.bus().clone(),
        backend,
        models_dir: ctx.common().models_dir(),
        embed_batch: config.embed_batch,
        metrics,
    };
    let collections = collections::Collections::open(setup)
        .await
        .map_err(ServiceError::Config)?;
    let mut host = ctx.register(DESCRIPTION).await?;
    handlers::add(&mut host, Arc::new(collections)).await?;
    let served = ctx.serve(host, shutdown).await;
    store.close().await;
    served
}
