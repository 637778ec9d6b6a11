//! The RAG service: collections, ingestion and hybrid retrieval on Qdrant (retrieval
//! arrives with its own issue; today it registers on the bus, answers `health` and
//! serves its admin port).

use slough_service::{AdminOnlyConfig, ServiceContext, ServiceError};
use tokio_util::sync::CancellationToken;

/// The crate version, which is the version the instance registers with.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What the instance says it does in `$SRV.INFO`.
pub const DESCRIPTION: &str = "Collections, ingestion and hybrid retrieval on Qdrant";

/// The `[rag]` section of the configuration: its admin port for now.
pub type Config = AdminOnlyConfig<9403>;

/// Serves until `shutdown` is cancelled, then leaves the bus.
pub async fn run(
    ctx: ServiceContext,
    _config: Config,
    shutdown: CancellationToken,
) -> Result<(), ServiceError> {
    ctx.serve_health(DESCRIPTION, shutdown).await
}
