//! The training service: fine-tuning jobs on a durable JetStream work queue (jobs arrive
//! with their own issue; today it registers on the bus, answers `health`, serves its
//! admin port and reports whether JetStream answers, which its queue will need).

use std::net::SocketAddr;

use serde::Deserialize;
use slough_protocol::subjects;
use slough_service::{ServiceContext, ServiceError};
use tokio_util::sync::CancellationToken;

/// The crate version, which is the version the instance registers with.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What the instance says it does in `$SRV.INFO`.
pub const DESCRIPTION: &str = "Fine-tuning jobs on a JetStream work queue";

/// The `[training]` section of the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The admin server (`/metrics`, `/livez`, `/readyz`).
    pub admin_listen: SocketAddr,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9405)),
        }
    }
}

/// Serves until `shutdown` is cancelled, then leaves the bus.
pub async fn run(
    ctx: ServiceContext,
    _config: Config,
    shutdown: CancellationToken,
) -> Result<(), ServiceError> {
    let client = ctx.bus().client().clone();
    ctx.add_check("jetstream", move || {
        Box::pin(jetstream_answers(client.clone()))
    });
    let host = ctx.register(DESCRIPTION).await?;
    ctx.serve(host, shutdown).await
}

/// Asks JetStream for the account's information. Read as plain JSON rather than through
/// a typed client, so that any server version's answer is understood.
async fn jetstream_answers(client: async_nats::Client) -> Result<(), String> {
    let reply = client
        .request(subjects::JETSTREAM_ACCOUNT_INFO, bytes::Bytes::new())
        .await
        .map_err(|err| {
            format!("JetStream does not answer (is nats-server started with --jetstream?): {err}")
        })?;
    let answer: serde_json::Value = serde_json::from_slice(&reply.payload)
        .map_err(|err| format!("JetStream answered something unreadable: {err}"))?;
    match answer.get("error") {
        None => Ok(()),
        Some(error) => Err(format!("JetStream refused: {error}")),
    }
}
