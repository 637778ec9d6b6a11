//! `slough-tools`: measure the platform's speed (`bench`), its quality (`eval`), and
//! how it behaves under faults (`chaos`). `slough bench|eval|chaos ...` runs this
//! program with the same arguments, so the README's commands work either way. This
//! file parses the command line, sets up logging and dispatches; the work is in the
//! library's modules.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use slough::{Settings, launch};
use slough_tools::{
    bench, bench_gateway, bench_rag, bench_training, chaos, eval_perplexity, eval_persona,
    eval_retrieval,
};

#[derive(Debug, Parser)]
#[command(
    name = "slough",
    version,
    about = "SloughGPT's benchmarks, evaluations and chaos scenarios"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
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
    /// Run the platform as separate processes on 127.0.0.1, inject a fault under load,
    /// print figures, and fail when the scenario's promise is broken: `soak` (no errors,
    /// memory growth under 5 %), `replica-loss` (SIGKILL one of two inference replicas),
    /// `nats-restart` (stop and restart nats-server), `store-outage` (PostgreSQL refuses
    /// connections for a while), `collection-delete` (collections deleted while documents
    /// are being ingested into them), `node-loss` (SIGKILL one of three clustered NATS
    /// servers).
    Chaos(chaos::ChaosOptions),
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Generation speed: decode, prefill, time to first token, aggregate throughput.
    /// Uses the inference service on NATS_URL when set; otherwise starts nats-server and
    /// an inference service here.
    Inference(bench::BenchOptions),
    /// What the gateway adds per request: `GET /v1/models` and a short chat through the
    /// gateway, against the same calls straight over NATS. Starts nats-server, inference
    /// and a gateway on ports the system picks, here.
    Gateway(bench_gateway::GatewayBenchOptions),
    /// LoRA fine-tuning speed: tokens per second through forward, backward and update on
    /// synthetic examples of a fixed length, and peak memory. Runs here, on the package's
    /// base weights.
    Training(bench_training::TrainingBenchOptions),
    /// The vector store's share of RAG: upserts per second and search p50/p99 per mode
    /// on synthetic chunks in a throw-away Qdrant Edge shard.
    Rag(bench_rag::RagBenchOptions),
}

#[derive(Debug, Subcommand)]
enum EvalCommand {
    /// A chat model package's perplexity on a text, as llama.cpp's llama-perplexity
    /// computes it (windows of --context tokens, the second half of each scored), run
    /// here on ONNX Runtime; with --reference also the mean KL divergence and top-1
    /// agreement against another package (the exact graph, say).
    Perplexity(eval_perplexity::PerplexityOptions),
    /// Run prompts through the gateway as one or more personas and print, per persona
    /// and trait, the target, the mean measure and the mean adherence.
    Persona(eval_persona::PersonaEvalOptions),
    /// Ingest a BEIR-format dataset into a throw-away collection through the gateway
    /// and print recall@1/5/10, MRR@10 and nDCG@10 for dense, sparse and hybrid search.
    Retrieval(eval_retrieval::RetrievalEvalOptions),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let launch = launch::Launch {
        one_shot: true,
        makes_data_dir: true,
    };
    let (settings, _telemetry) = match launch::start(launch) {
        Ok(started) => started,
        Err(code) => return code,
    };
    launch::finish(dispatch(cli.command, settings))
}

fn dispatch(command: Command, settings: Settings) -> anyhow::Result<()> {
    match command {
        Command::Bench { command } => match command {
            BenchCommand::Inference(options) => bench::run(settings, options),
            BenchCommand::Gateway(options) => bench_gateway::run(settings, options),
            BenchCommand::Training(options) => {
                let sources = settings
                    .training
                    .sources_dir
                    .clone()
                    .unwrap_or_else(|| settings.common.data_dir.join("cache/sources"));
                bench_training::run(&settings.common.models_dir(), &sources, options)
            }
            BenchCommand::Rag(options) => bench_rag::run(options),
        },
        Command::Eval { command } => match command {
            EvalCommand::Perplexity(options) => eval_perplexity::run(&settings, &options),
            EvalCommand::Persona(options) => eval_persona::run(settings, options),
            EvalCommand::Retrieval(options) => eval_retrieval::run(settings, options),
        },
        Command::Chaos(options) => chaos::run(&settings, &options),
    }
}
