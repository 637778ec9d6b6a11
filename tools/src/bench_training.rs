//! `slough bench training`: LoRA fine-tuning speed of a chat model on this machine, on
//! synthetic examples (random tokens, the second half of each trained) of a fixed
//! length: tokens per second through forward, backward and update, the time per step,
//! and the process's peak memory. Reads the base weights as the training service does.

use std::time::Instant;

use candle_core::DType;
use rand::{Rng as _, SeedableRng as _};
use serde::Serialize;
use slough_modelkit::{checkpoint::LlamaCheckpoint, package};
use slough_training::trainer::{
    Hyperparameters, Trainer,
    data::Example,
    model::{LoraConfig, Target},
};

/// What to measure.
#[derive(Debug, Clone, clap::Args)]
pub struct TrainingBenchOptions {
    /// The chat model's package id.
    #[arg(long, default_value = "smollm2-135m-instruct-q4_1")]
    pub model: String,
    /// Tokens per example (at least 2).
    #[arg(long, default_value_t = 256, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(2..))]
    pub sequence: usize,
    /// Examples per step.
    #[arg(long, default_value_t = 4, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub batch: usize,
    /// Most padded tokens per forward pass (gradients accumulate over the batch).
    #[arg(long, default_value_t = 512, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub micro_batch_tokens: usize,
    /// Steps measured (after one warm-up step).
    #[arg(long, default_value_t = 5, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub steps: usize,
    /// LoRA rank.
    #[arg(long, default_value_t = 8, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub rank: usize,
    /// Also write the figures as JSON here.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

#[derive(Debug, Serialize)]
pub struct TrainingBenchReport {
    pub model: String,
    pub sequence: usize,
    pub batch: usize,
    pub micro_batch_tokens: usize,
    pub rank: usize,
    pub trainable_parameters: usize,
    pub steps: usize,
    pub tokens_per_s: f64,
    pub seconds_per_step: f64,
    pub load_seconds: f64,
    pub peak_rss_mib: f64,
}

/// Runs the benchmark on the package `model` of `models_dir`.
pub fn run(
    models_dir: &std::path::Path,
    sources_dir: &std::path::Path,
    options: TrainingBenchOptions,
) -> anyhow::Result<()> {
    let manifest = package::read_manifest(&models_dir.join(&options.model))?;
    let source = package::source_path(&manifest, sources_dir).ok_or_else(|| {
        anyhow::anyhow!(
            "the source of {} ({}) is not to be found",
            options.model,
            manifest.source.file
        )
    })?;
    let loading = Instant::now();
    let base = LlamaCheckpoint::from_source(&source)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let vocab = base.config.vocab_size as u32;
    let examples: Vec<Example> = (0..options.batch * (options.steps + 1))
        .map(|_| Example {
            tokens: (0..options.sequence)
                .map(|_| rng.random_range(0..vocab))
                .collect(),
            trained: (0..options.sequence)
                .map(|i| i >= options.sequence / 2)
                .collect(),
        })
        .collect();
    let lora = LoraConfig {
        rank: options.rank,
        alpha: 2.0 * options.rank as f64,
        dropout: 0.0,
        targets: Target::ALL.to_vec(),
    };
    let hyper = Hyperparameters {
        epochs: 1,
        batch_size: options.batch,
        micro_batch_tokens: options.micro_batch_tokens,
        learning_rate: 2e-4,
        warmup_ratio: 0.1,
        max_grad_norm: 1.0,
        seed: 1,
    };
    let mut trainer = Trainer::new(&base, lora, hyper, examples, Vec::new(), DType::F32)?;
    let load_seconds = loading.elapsed().as_secs_f64();
    let trainable: usize = trainer
        .model()
        .variables()
        .iter()
        .map(|(_, var)| var.as_tensor().elem_count())
        .sum();
    println!(
        "{}: sequence {}, batch {} (micro-batches of at most {} tokens), LoRA rank {} on every projection ({:.2} M trainable parameters); loaded in {load_seconds:.1} s",
        options.model,
        options.sequence,
        options.batch,
        options.micro_batch_tokens,
        options.rank,
        trainable as f64 / 1e6
    );
    // The first step warms caches and allocations; it is not counted.
    trainer.step()?;
    let started = Instant::now();
    let mut tokens = 0u64;
    for step in 0..options.steps {
        let began = Instant::now();
        let Some(report) = trainer.step()? else { break };
        tokens += report.tokens;
        println!(
            "step {}: loss {:.3}, {:.2} s, {:.0} tokens/s",
            step + 1,
            report.loss,
            began.elapsed().as_secs_f64(),
            report.tokens as f64 / began.elapsed().as_secs_f64()
        );
    }
    let elapsed = started.elapsed().as_secs_f64();
    let report = TrainingBenchReport {
        model: options.model.clone(),
        sequence: options.sequence,
        batch: options.batch,
        micro_batch_tokens: options.micro_batch_tokens,
        rank: options.rank,
        trainable_parameters: trainable,
        steps: options.steps,
        tokens_per_s: tokens as f64 / elapsed,
        seconds_per_step: elapsed / options.steps as f64,
        load_seconds,
        peak_rss_mib: peak_rss_mib(),
    };
    println!(
        "training: {:.0} tokens/s, {:.2} s per step, peak memory {:.0} MiB",
        report.tokens_per_s, report.seconds_per_step, report.peak_rss_mib
    );
    if let Some(path) = &options.json {
        crate::write_figures(path, &report)?;
    }
    Ok(())
}

/// The process's peak resident memory (`VmHWM`), in MiB; 0 where /proc is not there.
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map_or(0.0, |kib| kib / 1024.0)
}
