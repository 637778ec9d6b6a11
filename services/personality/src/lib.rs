//! The personality service: personas applied to chats, text-style metrics and persona
//! adherence (those arrive with their own issue; today it registers on the bus,
//! answers `health` and serves its admin port).

use std::net::SocketAddr;

use serde::Deserialize;
use slough_service::{ServiceContext, ServiceError};
use tokio_util::sync::CancellationToken;

/// The crate version, which is the version the instance registers with.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What the instance says it does in `$SRV.INFO`.
pub const DESCRIPTION: &str = "Personas, text-style metrics and persona adherence";

/// The `[personality]` section of the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The admin server (`/metrics`, `/livez`, `/readyz`).
    pub admin_listen: SocketAddr,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9404)),
        }
    }
}

/// Serves until `shutdown` is cancelled, then leaves the bus.
pub async fn run(
    ctx: ServiceContext,
    _config: Config,
    shutdown: CancellationToken,
) -> Result<(), ServiceError> {
    let host = ctx.register(DESCRIPTION).await?;
    ctx.serve(host, shutdown).await
}
