//! The RAG service: collections of documents, split into chunks with the embedding
//! model's tokenizer, embedded by inference, and indexed in Qdrant Edge for dense,
//! sparse (BM25) and hybrid search. Endpoints (`slough.v1.rag.<name>`):
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

use std::sync::Arc;

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
    let store = ctx.open_store().await?;
    let setup = collections::Setup {
        store: store.clone(),
        bus: ctx.bus().clone(),
        collections_dir: config
            .collections_dir
            .clone()
            .unwrap_or_else(|| data_dir.join("collections")),
        models_dir: config
            .models_dir
            .clone()
            .unwrap_or_else(|| data_dir.join("models")),
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
