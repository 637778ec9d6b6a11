//! The training service: fine-tuning jobs on a durable JetStream work queue (jobs arrive
//! with their own issue; today it registers on the bus, answers `health`, serves its
//! admin port and reports whether JetStream answers, which its queue will need).

pub mod config;
pub mod jobs;
pub mod trainer;

use slough_service::{AdminOnlyConfig, ServiceContext, ServiceError};
use tokio_util::sync::CancellationToken;

/// The crate version, which is the version the instance registers with.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What the instance says it does in `$SRV.INFO`.
pub const DESCRIPTION: &str = "Fine-tuning jobs on a JetStream work queue";

/// The `[training]` section of the configuration: its admin port for now.
pub type Config = AdminOnlyConfig<9405>;

/// Serves until `shutdown` is cancelled, then leaves the bus.
pub async fn run(
    ctx: ServiceContext,
    _config: Config,
    shutdown: CancellationToken,
) -> Result<(), ServiceError> {
    let bus = ctx.bus().clone();
    ctx.add_check("jetstream", move || {
        let bus = bus.clone();
        Box::pin(async move { bus.jetstream_ready().await })
    });
    ctx.serve_health(DESCRIPTION, shutdown).await
}
