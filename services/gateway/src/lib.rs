//! The gateway: SloughGPT's only public door, an OpenAI-compatible HTTP API. The API
//! routes arrive with their own issue; today the gateway opens the store (where API keys
//! will live), registers on the bus, serves its admin port, and answers every API path
//! with an OpenAI-shaped `404` error.

use std::net::SocketAddr;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, dev::ServerHandle, web};
use serde::Deserialize;
use slough_service::{ServiceContext, ServiceError};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The crate version, which is the version the instance registers with.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What the instance says it does in `$SRV.INFO`.
pub const DESCRIPTION: &str = "OpenAI-compatible HTTP API";

/// The `[gateway]` section of the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The public API (`SLOUGH_GATEWAY__LISTEN`).
    pub listen: SocketAddr,
    /// The admin server (`/metrics`, `/livez`, `/readyz`).
    pub admin_listen: SocketAddr,
    /// HTTP worker threads.
    pub workers: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9401)),
            workers: 2,
        }
    }
}

/// Serves the API until `shutdown` is cancelled, then stops taking connections and
/// leaves the bus.
pub async fn run(
    ctx: ServiceContext,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), ServiceError> {
    let store = ctx.open_store().await?;
    let host = ctx.register(DESCRIPTION).await?;
    let (handle, http) = start_api(&config)?;

    let served = ctx.serve(host, shutdown).await;
    handle.stop(true).await;
    let _ = http.await;
    store.close().await;
    served
}

/// Binds the API listener and serves it on the runtime.
fn start_api(
    config: &Config,
) -> Result<(ServerHandle, JoinHandle<std::io::Result<()>>), ServiceError> {
    let server = HttpServer::new(|| App::new().default_service(web::to(not_found)))
        .workers(config.workers.max(1))
        .disable_signals()
        .shutdown_timeout(10)
        .bind(config.listen)
        .map_err(|source| ServiceError::Io {
            context: format!("cannot listen on {}", config.listen),
            source,
        })?;
    for addr in server.addrs() {
        tracing::info!(%addr, "gateway API listening");
    }
    let server = server.run();
    Ok((server.handle(), tokio::spawn(server)))
}

/// OpenAI's error shape, so clients raise `NotFoundError` rather than a parse error.
async fn not_found(request: HttpRequest) -> HttpResponse {
    HttpResponse::NotFound().json(serde_json::json!({
        "error": {
            "message": format!("no route for {} {}", request.method(), request.path()),
            "type": "invalid_request_error",
            "param": null,
            "code": "not_found",
        }
    }))
}
