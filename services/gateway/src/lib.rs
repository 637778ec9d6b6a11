//! The gateway: SloughGPT's only public door, an OpenAI-compatible HTTP API (actix-web)
//! in front of the services on the bus. It authenticates API keys, applies scopes and
//! limits, turns requests into bus messages (inference's `generate`, `embed`, `models`),
//! streams answers back as server-sent events, and accounts for usage.
//!
//! A request's path: `http` (span, metrics, auth and body extractors) → `routes::*`
//! (scope, body, model; OpenAI's shared shapes in `openai`) → `admission` (bus up, a
//! free slot, the key's limits; a `usage::Metered` guard records the request however it
//! ends) → for a chat, the `pipeline` (persona, retrieval, generation on the bus, and
//! the steps after the answer), for other routes a bus call → `generation` streams or
//! collects the answer → the route shapes OpenAI's JSON. `state` is what every handler
//! shares.
//! `console` serves the web console (static files, a client of this same API) at `/`.

pub mod admission;
pub mod audit;
pub mod console;
pub mod error;
pub mod generation;
pub mod http;
pub mod keys;
pub mod ledger;
pub mod limits;
pub mod metrics;
pub mod openai;
pub mod openapi;
pub mod ownership;
pub mod pipeline;
pub mod privacy;
pub mod quotas;
pub mod replicas;
pub mod routes;
pub mod state;
pub mod stored;
pub mod upload;
pub mod usage;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use actix_cors::Cors;
use actix_web::{
    App, HttpServer,
    middleware::{Condition, from_fn},
    web,
};
use serde::Deserialize;
use slough_service::{ServiceContext, ServiceError};
use slough_telemetry::{RunningServer, TelemetryError, http::bind_error};
use tokio_util::sync::CancellationToken;

use crate::{
    admission::Admission, keys::Keys, limits::Limits, metrics::Metrics, state::AppState,
    usage::UsageRecorder,
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
    /// How long a client may take to send a request's head (line and headers), in
    /// seconds; then the connection is closed.
    pub header_timeout_s: u64,
    /// How long a client may take to send a request's body, in seconds; then 408.
    pub body_timeout_s: u64,
    /// Mask personal data (as `<TYPE>`) in what the platform stores from requests:
    /// stored completions, their answers and feedback corrections, so the fine-tuning
    /// dataset made from them holds none either.
    pub mask_stored_pii: bool,
    /// The most bytes of files one key keeps (0: no limit); past it, uploads get 413.
    pub max_file_bytes_per_key: u64,
    /// The most bytes of document text one key's collections hold (0: no limit).
    pub max_collection_bytes_per_key: u64,
    /// Origins browsers may call the API from (`https://app.example.com`, or `*`).
    /// Empty (the default): no CORS headers, so browsers refuse cross-origin calls.
    pub cors_origins: Vec<String>,
    /// How long an authenticated key, and a budget's spent total, are trusted before
    /// being read again from the store. A key's revocation or change reaches every
    /// replica at once through the bus; this bounds it when a replica missed the event.
    pub key_cache_ms: u64,
    /// Usage rows waiting to be stored; beyond that they are dropped and counted.
    pub usage_queue: usize,
    /// Days audit records are kept (0: for ever); older ones are removed behind a
    /// checkpoint record that keeps the chain verifiable.
    pub audit_retention_days: u32,
    /// How often, in seconds, the gateway applies the retention and verifies the audit
    /// chain (`slough_gateway_audit_chain_intact`); also once at start.
    pub audit_check_s: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9401)),
            workers: 2,
            max_in_flight: 256,
            max_body_bytes: 4 * 1024 * 1024,
            header_timeout_s: 5,
            body_timeout_s: 60,
            mask_stored_pii: false,
            max_file_bytes_per_key: 1 << 30,
            max_collection_bytes_per_key: 256 << 20,
            cors_origins: Vec::new(),
            key_cache_ms: 5_000,
            usage_queue: 10_000,
            audit_retention_days: 0,
            audit_check_s: 3600,
        }
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
    let metrics = Arc::new(Metrics::register(ctx.registry()).map_err(TelemetryError::from)?);
    let (usage, writer) = UsageRecorder::start(store.clone(), config.usage_queue, metrics.clone());
    let cache = Duration::from_millis(config.key_cache_ms);
    let replicas = Arc::new(replicas::Replicas::new(metrics.inference_replicas.clone()));
    replicas::follow(ctx.bus().clone(), replicas.clone(), shutdown.clone()).await?;
    let limits = Arc::new(Limits::new(store.clone(), cache, metrics.clone()));
    limits::share(ctx.bus(), limits.clone(), shutdown.clone()).await?;
    let state = web::Data::new(AppState {
        bus: ctx.bus().clone(),
        store: store.clone(),
        keys: Arc::new(Keys::new(store.clone(), cache, Some(ctx.bus().clone()))),
        admission: Admission::new(
            ctx.bus().clone(),
            config.max_in_flight,
            limits,
            usage,
            metrics.clone(),
        ),
        metrics,
        replicas,
        max_body_bytes: config.max_body_bytes,
        body_timeout: Duration::from_secs(config.body_timeout_s),
        mask_stored_pii: config.mask_stored_pii,
        quotas: quotas::Quotas {
            file_bytes: config.max_file_bytes_per_key,
            collection_bytes: config.max_collection_bytes_per_key,
        },
        files: tokio::sync::OnceCell::new(),
    });
    tokio::spawn(audit::keep(
        store.clone(),
        state.metrics.clone(),
        audit::Upkeep {
            retention: (config.audit_retention_days > 0)
                .then(|| chrono::Duration::days(i64::from(config.audit_retention_days))),
            every: Duration::from_secs(config.audit_check_s),
        },
        shutdown.clone(),
    ));
    keys::cache::follow(ctx.bus(), state.keys.clone(), shutdown.clone()).await?;
    let host = ctx.register(DESCRIPTION).await?;
    let api = start_api(&config, state.clone())?;
    ctx.listening().announce("api", api.addr());

    // HTTP stops first, so that open requests still have the bus while they finish.
    let bus_shutdown = CancellationToken::new();
    let stopped = {
        let bus_shutdown = bus_shutdown.clone();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            api.stop().await;
            bus_shutdown.cancel();
        })
    };
    let served = ctx.serve(host, bus_shutdown).await;
    let _ = stopped.await;
    drop(state);
    // The last usage rows are stored; a store that is down gets a few seconds, not the
    // writer's whole patience.
    if tokio::time::timeout(Duration::from_secs(10), writer)
        .await
        .is_err()
    {
        tracing::error!("the store did not take the last usage rows within 10 s; they are lost");
    }
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
    if config.audit_check_s == 0 {
        return invalid("gateway.audit_check_s must be at least 1".to_owned());
    }
    if config.header_timeout_s == 0 || config.body_timeout_s == 0 {
        return invalid(
            "gateway.header_timeout_s and gateway.body_timeout_s must be at least 1".to_owned(),
        );
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
fn start_api(config: &Config, state: web::Data<AppState>) -> Result<RunningServer, ServiceError> {
    let document = web::Data::new(openapi::Document::new());
    let known = web::Data::new(routes::Known::new());
    let body_limit = config.max_body_bytes;
    let origins = config.cors_origins.clone();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(document.clone())
            .app_data(known.clone())
            .app_data(web::PayloadConfig::new(body_limit))
            // A query string that does not fit a route's parameters is the caller's
            // error, answered in the API's JSON error shape.
            .app_data(web::QueryConfig::default().error_handler(|err, _| {
                error::ApiError::invalid("query", format!("bad query string: {err}")).into()
            }))
            .wrap(Condition::new(!origins.is_empty(), cors(&origins)))
            .wrap(from_fn(http::observe))
            // Outside `observe`, so that the answer's request id is there to record.
            .wrap(from_fn(audit::record))
            .configure(routes::configure)
            .route("/openapi.json", web::get().to(openapi::serve))
            .configure(console::configure)
            .default_service(web::to(routes::no_route))
    })
    .on_connect(http::remember_socket)
    .client_request_timeout(Duration::from_secs(config.header_timeout_s))
    .workers(config.workers.max(1))
    .disable_signals()
    .shutdown_timeout(10)
    .bind(config.listen)
    .map_err(bind_error(config.listen))?;
    let bound = server.addrs();
    let server = RunningServer::spawn(server.run(), &bound, config.listen)?;
    tracing::info!(addr = %server.addr(), "gateway API listening");
    Ok(server)
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
