//! `slough bench gateway`: what the gateway adds to a request. The same work is timed
//! twice at the same concurrency, once through the gateway over HTTP (key check, limits,
//! JSON in OpenAI's shapes, usage row) and once straight over NATS, for a route that
//! does not reach a model (`GET /v1/models` vs inference's `models`) and a short chat
//! (`POST /v1/chat/completions` vs inference's `generate`). Prints requests per second
//! and p50/p99 latency of each, and the difference; writes JSON.

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use serde::Serialize;
use slough_bus::Bus;
use slough_protocol::{
    ServiceKind,
    inference::{self, ChatMessage, GenerateRequest, ModelsRequest, PromptInput, Role},
};
use slough_service::NatsServer;
use tokio_util::sync::CancellationToken;

use slough::{Settings, platform::ServiceHandle, runtime};

use crate::bench;

/// What to measure.
#[derive(Debug, Clone, clap::Args)]
pub struct GatewayBenchOptions {
    /// The chat model's package id.
    #[arg(long, default_value = "smollm2-135m-instruct-q4_1")]
    pub model: String,
    /// Concurrent connections.
    #[arg(long, default_value_t = 64, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub concurrency: usize,
    /// Requests per run of the models route.
    #[arg(long, default_value_t = 20_000)]
    pub requests: usize,
    /// Requests per run of the chat route.
    #[arg(long, default_value_t = 512)]
    pub chat_requests: usize,
    /// Tokens each chat generates.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub chat_tokens: u32,
    /// Where to write the JSON figures (default bench-gateway.json).
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// One run's figures.
#[derive(Debug, Clone, Serialize)]
pub struct RunFigure {
    pub requests: usize,
    pub errors: usize,
    pub requests_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// One route: through the gateway, direct, and what the gateway adds.
#[derive(Debug, Serialize)]
pub struct RouteFigure {
    pub route: &'static str,
    pub gateway: RunFigure,
    pub direct: RunFigure,
    pub added_p50_ms: f64,
    pub added_p99_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct GatewayBenchReport {
    pub concurrency: usize,
    pub routes: Vec<RouteFigure>,
}

/// Runs `requests` calls of `call`, `concurrency` at a time, after a short warm-up.
async fn drive<F, Fut>(concurrency: usize, requests: usize, call: F) -> RunFigure
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send,
{
    let call = Arc::new(call);
    for _ in 0..concurrency.min(8) {
        call().await;
    }
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let call = call.clone();
            let next = next.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = 0;
                while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < requests {
                    let sent = Instant::now();
                    if !call().await {
                        errors += 1;
                    }
                    latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(requests);
    let mut errors = 0;
    for worker in workers {
        if let Ok((mut some, failed)) = worker.await {
            latencies.append(&mut some);
            errors += failed;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let index = ((latencies.len() as f64 - 1.0) * q).round() as usize;
        latencies.get(index).copied().unwrap_or(0.0)
    };
    RunFigure {
        requests: latencies.len(),
        errors,
        requests_per_s: latencies.len() as f64 / elapsed,
        p50_ms: at(0.50),
        p99_ms: at(0.99),
    }
}

fn route(route: &'static str, gateway: RunFigure, direct: RunFigure) -> RouteFigure {
    RouteFigure {
        route,
        added_p50_ms: gateway.p50_ms - direct.p50_ms,
        added_p99_ms: gateway.p99_ms - direct.p99_ms,
        gateway,
        direct,
    }
}

/// Measures the gateway at `base_url` (authenticating with `key`) against the bus.
pub async fn measure(
    base_url: &str,
    key: &str,
    bus: &Bus,
    options: &GatewayBenchOptions,
) -> anyhow::Result<GatewayBenchReport> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(options.concurrency)
        .build()?;
    let concurrency = options.concurrency;
    let auth = format!("Bearer {key}");

    let models = {
        let (http, url, auth) = (http.clone(), format!("{base_url}/v1/models"), auth.clone());
        drive(concurrency, options.requests, move || {
            let request = http.get(&url).header("Authorization", &auth);
            async move { answered(request).await }
        })
        .await
    };
    let models_direct = {
        let bus = bus.clone();
        drive(concurrency, options.requests, move || {
            let bus = bus.clone();
            async move {
                bus.call(&inference::MODELS, &ModelsRequest {})
                    .await
                    .is_ok()
            }
        })
        .await
    };

    let question = "What is the capital of France?";
    let chat = {
        let body = serde_json::json!({
            "model": options.model,
            "messages": [{"role": "user", "content": question}],
            "max_tokens": options.chat_tokens,
            "temperature": 0,
        });
        let (http, url, auth) = (
            http.clone(),
            format!("{base_url}/v1/chat/completions"),
            auth,
        );
        drive(concurrency, options.chat_requests, move || {
            let request = http.post(&url).header("Authorization", &auth).json(&body);
            async move { answered(request).await }
        })
        .await
    };
    let chat_direct = {
        let bus = bus.clone();
        let mut request = GenerateRequest::new(
            options.model.clone(),
            PromptInput::Messages(vec![ChatMessage::new(Role::User, question)]),
        );
        request.max_tokens = Some(options.chat_tokens);
        request.sampling.temperature = Some(0.0);
        drive(concurrency, options.chat_requests, move || {
            let (bus, request) = (bus.clone(), request.clone());
            async move { bench::generate_over_bus(&bus, &request).await.is_ok() }
        })
        .await
    };
    Ok(GatewayBenchReport {
        concurrency,
        routes: vec![
            route("GET /v1/models", models, models_direct),
            route("POST /v1/chat/completions", chat, chat_direct),
        ],
    })
}

/// Sends an HTTP request and reads the whole answer; true on 200.
async fn answered(request: reqwest::RequestBuilder) -> bool {
    match request.send().await {
        Ok(response) => response.status() == 200 && response.bytes().await.is_ok(),
        Err(_) => false,
    }
}

/// Prints the report as a table.
pub fn print(report: &GatewayBenchReport) {
    let mut table = comfy_table::Table::new();
    table.set_header([
        "route", "path", "requests", "errors", "req/s", "p50 ms", "p99 ms",
    ]);
    for route in &report.routes {
        for (path, run) in [("gateway", &route.gateway), ("NATS direct", &route.direct)] {
            table.add_row([
                route.route.to_owned(),
                path.to_owned(),
                run.requests.to_string(),
                run.errors.to_string(),
                format!("{:.0}", run.requests_per_s),
                format!("{:.2}", run.p50_ms),
                format!("{:.2}", run.p99_ms),
            ]);
        }
        table.add_row([
            route.route.to_owned(),
            "added by the gateway".to_owned(),
            String::new(),
            String::new(),
            String::new(),
            format!("{:+.2}", route.added_p50_ms),
            format!("{:+.2}", route.added_p99_ms),
        ]);
    }
    println!(
        "gateway overhead at {} concurrent connections",
        report.concurrency
    );
    println!("{table}");
}

/// How long to wait for the platform to answer before giving up.
pub const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// `slough bench gateway`: nats-server, inference and a gateway (on a port it picks)
/// started here, the gateway on a throw-away store (so the run leaves no keys or usage
/// in yours), the models and runtime from your data directory. The bench key is made
/// as a user would: with the first admin key, through `POST /v1/keys`.
pub fn run(mut settings: Settings, options: GatewayBenchOptions) -> anyhow::Result<()> {
    let store = bench::nats_store(&settings)?;
    let mut server = NatsServer::start(&settings.common.nats.server.options(0, store))?;
    let any_port = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    settings.gateway.listen = any_port;
    settings.gateway.admin_listen = any_port;
    settings.inference.admin_listen = any_port;
    let data_dir = settings.common.data_dir.clone();
    // The packages stay where they are when the data directory becomes a scratch one.
    settings
        .common
        .models_dir
        .get_or_insert_with(|| data_dir.join("models"));
    if std::env::var_os("ORT_DYLIB_PATH").is_none() {
        settings
            .inference
            .runtime
            .library
            .get_or_insert_with(|| data_dir.join("runtime/libonnxruntime.so"));
    }
    let scratch = tempfile::tempdir()?;
    settings.common.data_dir = scratch.path().to_owned();
    settings.common.database_url = None;
    let url = server.url();
    let result = runtime().and_then(|rt| {
        rt.block_on(async {
            let store = slough_store::Store::open(None, scratch.path()).await?;
            let admin_key = slough_gateway::keys::bootstrap_admin_key(&store, scratch.path(), None)
                .await?
                .ok_or_else(|| anyhow::anyhow!("a fresh store has no admin key"))?;
            store.close().await;
            let mut services = Vec::new();
            for kind in [ServiceKind::Inference, ServiceKind::Gateway] {
                services.push(
                    ServiceHandle::start(kind, &settings, &url, CancellationToken::new()).await?,
                );
            }
            let outcome = async {
                let api = match services.last() {
                    Some(gateway) => gateway.address("api").await,
                    None => None,
                };
                let api = api.ok_or_else(|| anyhow::anyhow!("the gateway did not start"))?;
                let base = format!("http://{api}");
                let key = bench_key(&base, &admin_key).await?;
                wait_for_gateway(&base, &key, &options.model).await?;
                let bus =
                    slough_bus::connect(&url, "slough-bench", settings.common.nats.bus_options())
                        .await?;
                let report = measure(&base, &key, &bus, &options).await?;
                print(&report);
                let path = options
                    .json
                    .clone()
                    .unwrap_or_else(|| "bench-gateway.json".into());
                crate::write_figures(&path, &report)
            }
            .await;
            for service in services.into_iter().rev() {
                service.stop(Duration::from_secs(15)).await?;
            }
            outcome
        })
    });
    server.stop();
    result
}

/// A key for the run, created with `admin_key` through the API.
async fn bench_key(base: &str, admin_key: &str) -> anyhow::Result<String> {
    let client = reqwest::Client::new();
    let deadline = std::time::Instant::now() + READY_TIMEOUT;
    loop {
        let created = client
            .post(format!("{base}/v1/keys"))
            .bearer_auth(admin_key)
            .json(&serde_json::json!({"name": "slough bench gateway", "scopes": ["inference"]}))
            .send()
            .await;
        if let Ok(response) = created
            && response.status().is_success()
        {
            let created: serde_json::Value = response.json().await?;
            if let Some(secret) = created["secret"].as_str() {
                return Ok(secret.to_owned());
            }
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!("the gateway did not create a bench key");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the gateway at `base` lists `model`.
async fn wait_for_gateway(base: &str, key: &str, model: &str) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + READY_TIMEOUT;
    let client = reqwest::Client::new();
    loop {
        let listed = client
            .get(format!("{base}/v1/models"))
            .bearer_auth(key)
            .send()
            .await;
        if let Ok(response) = listed
            && let Ok(text) = response.text().await
            && text.contains(&format!("\"{model}\""))
        {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!("the gateway does not list {model:?} (see `slough models list`)");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
