//! The gateway: SloughGPT's only public door, an OpenAI-compatible HTTP API (actix-web)
//! in front of the services on the bus. It authenticates API keys, applies scopes and
//! limits, turns requests into bus messages (inference's `generate`, `embed`, `models`),
//! streams answers back as server-sent events, and accounts for usage.
//!
//! A request's path: `http` (span, metrics, auth and body extractors) → `routes::*`
//! (checks, then `AppState::admit` for limits) → `generation` or a bus request → the
//! answer, with a `usage::Metered` guard recording it however it ends.

pub mod error;
pub mod generation;
pub mod http;
pub mod keys;
pub mod limits;
pub mod metrics;
pub mod openapi;
pub mod replicas;
pub mod routes;
pub mod usage;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use actix_cors::Cors;
use actix_web::{
    App, HttpServer,
    dev::ServerHandle,
    middleware::{Condition, from_fn},
    web,
};
use serde::Deserialize;
use slough_bus::Bus;
use slough_service::{ServiceContext, ServiceError};
use slough_store::Store;
use slough_telemetry::TelemetryError;
use tokio::{sync::Semaphore, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::{
    error::ApiError,
    keys::{ApiKey, Keys},
    limits::Limits,
    metrics::Metrics,
    usage::{Metered, UsageRecorder},
};

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
    /// Model requests (chat, completions, embeddings) answered at once; more get 429.
    pub max_in_flight: usize,
    /// The largest request body, in bytes; larger ones get 413.
    pub max_body_bytes: usize,
    /// Origins browsers may call the API from (`https://app.example.com`, or `*`).
    /// Empty (the default): no CORS headers, so browsers refuse cross-origin calls.
    pub cors_origins: Vec<String>,
    /// How long an authenticated key, and a budget's spent total, are trusted before
    /// being read again from the store (how soon another replica's revocation applies).
    pub key_cache_ms: u64,
    /// Usage rows waiting to be stored; beyond that they are dropped and counted.
    pub usage_queue: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9401)),
            workers: 2,
            max_in_flight: 256,
            max_body_bytes: 4 * 1024 * 1024,
            cors_origins: Vec::new(),
            key_cache_ms: 5_000,
            usage_queue: 10_000,
        }
    }
}

/// What every request handler shares.
pub struct AppState {
    pub bus: Bus,
    pub store: Store,
    pub keys: Keys,
    pub limits: Arc<Limits>,
    pub usage: UsageRecorder,
    pub metrics: Arc<Metrics>,
    /// The inference replicas' load, to send each generation where there is room.
    pub replicas: Arc<replicas::Replicas>,
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
    /// The largest body a request may have.
    pub max_body_bytes: usize,
}

impl AppState {
    /// Admits a model request of `key`: a free in-flight slot and the key's limits, or
    /// 429. The returned guard records the request's usage when it ends.
    pub async fn admit(
        &self,
        key: &ApiKey,
        endpoint: &'static str,
        model: &str,
    ) -> Result<Metered, ApiError> {
        if !self.bus.is_connected() {
            // Answer now rather than after the request timeout: nothing can reach a model
            // until the connection is back (it reconnects within a second of NATS).
            self.metrics.reject("bus_down");
            return Err(ApiError::unavailable(
                "the gateway has lost its connection to the message bus; retry shortly",
                Duration::from_secs(1),
            ));
        }
        let Ok(slot) = self.in_flight.clone().try_acquire_owned() else {
            self.metrics.reject("in_flight");
            return Err(ApiError::rate_limited(
                "gateway_busy",
                format!(
                    "the gateway is answering its limit of {} requests; retry shortly",
                    self.max_in_flight
                ),
                Duration::from_secs(1),
            ));
        };
        self.limits.admit(key).await?;
        Ok(Metered::new(
            self.usage.clone(),
            self.limits.clone(),
            slot,
            key.id,
            endpoint,
            model,
        ))
    }

    /// The answer for a failed upstream call of an admitted request.
    pub fn upstream_failed(&self, metered: &mut Metered, error: impl Into<ApiError>) -> ApiError {
        let error = error.into();
        if error.status().as_u16() == 429 {
            self.metrics.reject("upstream_overloaded");
        }
        metered.finish(error.status().as_u16());
        error
    }
}

/// Serves the API until `shutdown` is cancelled, then stops taking connections, lets
/// open requests finish (up to 10 s), writes the queued usage and leaves the bus.
pub async fn run(
    ctx: ServiceContext,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), ServiceError> {
    validate(&config)?;
    let store = ctx.open_store().await?;
    let admin_key = keys::admin_key_from_env();
    keys::bootstrap_admin_key(&store, &ctx.common().data_dir, admin_key.as_deref())
        .await
        .map_err(ServiceError::Config)?;
    let metrics = Arc::new(Metrics::register(ctx.registry()).map_err(TelemetryError::from)?);
    let (usage, writer) = UsageRecorder::start(store.clone(), config.usage_queue, metrics.clone());
    let cache = Duration::from_millis(config.key_cache_ms);
    let replicas = Arc::new(replicas::Replicas::new(metrics.inference_replicas.clone()));
    replicas::follow(ctx.bus().clone(), replicas.clone(), shutdown.clone()).await?;
    let state = web::Data::new(AppState {
        bus: ctx.bus().clone(),
        store: store.clone(),
        keys: Keys::new(store.clone(), cache),
        limits: Arc::new(Limits::new(store.clone(), cache, metrics.clone())),
        usage,
        metrics,
        replicas,
        in_flight: Arc::new(Semaphore::new(config.max_in_flight)),
        max_in_flight: config.max_in_flight,
        max_body_bytes: config.max_body_bytes,
    });
    let host = ctx.register(DESCRIPTION).await?;
    let (handle, http) = start_api(&config, state.clone())?;

    // HTTP stops first, so that open requests still have the bus while they finish.
    let bus_shutdown = CancellationToken::new();
    let stopped = {
        let bus_shutdown = bus_shutdown.clone();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            handle.stop(true).await;
            let _ = http.await;
            bus_shutdown.cancel();
        })
    };
    let served = ctx.serve(host, bus_shutdown).await;
    let _ = stopped.await;
    drop(state);
    let _ = writer.await;
    store.close().await;
    served
}

fn validate(config: &Config) -> Result<(), ServiceError> {
    let invalid = |message: String| Err(ServiceError::Config(message));
    if config.max_in_flight == 0 {
        return invalid("gateway.max_in_flight must be at least 1".to_owned());
    }
    if config.max_body_bytes < 1024 {
        return invalid("gateway.max_body_bytes must be at least 1024".to_owned());
    }
    for origin in &config.cors_origins {
        let host = origin
            .strip_prefix("https://")
            .or_else(|| origin.strip_prefix("http://"));
        let valid = origin == "*"
            || host.is_some_and(|host| {
                let host = host.trim_end_matches('/');
                !host.is_empty() && !host.contains(['/', ' '])
            });
        if !valid {
            return invalid(format!(
                "gateway.cors_origins: {origin:?} is not `*` or an origin like https://app.example.com"
            ));
        }
    }
    Ok(())
}

/// Binds the API listener and serves it on the runtime.
fn start_api(
    config: &Config,
    state: web::Data<AppState>,
) -> Result<(ServerHandle, JoinHandle<std::io::Result<()>>), ServiceError> {
    let document = web::Data::new(openapi::Document::new());
    let body_limit = config.max_body_bytes;
    let origins = config.cors_origins.clone();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(document.clone())
            .app_data(web::PayloadConfig::new(body_limit))
            .wrap(Condition::new(!origins.is_empty(), cors(&origins)))
            .wrap(from_fn(http::observe))
            .configure(routes::configure)
            .default_service(web::to(http::no_route))
    })
    .on_connect(http::remember_socket)
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

fn cors(origins: &[String]) -> Cors {
    let mut cors = Cors::default()
        .allow_any_method()
        .allow_any_header()
        .expose_headers(["Retry-After", "x-request-id"])
        .max_age(3600);
    for origin in origins {
        cors = if origin == "*" {
            cors.allow_any_origin()
        } else {
            cors.allowed_origin(origin.trim_end_matches('/'))
        };
    }
    cors
}
