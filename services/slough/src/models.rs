//! `slough models`: import, list and remove model packages under `<data>/models`, with
//! a progress bar while importing.

use std::{path::Path, time::Duration};

use indicatif::{ProgressBar, ProgressStyle};
use slough_modelkit::{
    llama::{BuildOptions, FloatWeights, Int8Kernel},
    package::{self, ImportOptions, Imported, Manifest, Progress},
};
use slough_protocol::{
    Event,
    inference::{self, ModelEvent},
};

/// Tells running inference services that a package came or went
/// (`slough.v1.events.models.*`), so they load or unload it. Best effort: with no NATS
/// server reachable within a second, nobody is running to tell.
fn announce(nats_url: &str, topic: &Event<ModelEvent>, id: &str) {
    // One connection attempt, no retries: nothing is running when it fails.
    let options = slough_bus::BusOptions {
        connect_timeout: Duration::ZERO,
        ..slough_bus::BusOptions::default()
    };
    let publish = async {
        let bus = tokio::time::timeout(
            Duration::from_secs(1),
            slough_bus::connect(nats_url, "slough-models", options),
        )
        .await
        .ok()?
        .ok()?;
        let event = ModelEvent {
            model: id.to_owned(),
        };
        let sent = bus.emit(topic, &event).await.ok();
        bus.close().await;
        sent
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    if let Ok(runtime) = runtime
        && runtime.block_on(publish).is_some()
    {
        tracing::debug!(topic = topic.topic(), model = id, "announced");
    }
}

/// A terminal progress bar: a spinner per stage, a byte bar while hashing.
struct Bar(ProgressBar);

impl Progress for Bar {
    fn stage(&self, name: &str) {
        self.0.set_style(
            ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        self.0.set_message(name.to_owned());
    }

    fn bytes(&self, done: u64, total: u64) {
        if self.0.length() != Some(total) {
            self.0.set_style(
                ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {bytes}/{total_bytes}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            self.0.set_length(total);
        }
        self.0.set_position(done);
    }
}

/// What `slough models import` builds, from the command line.
#[derive(Debug, Clone, clap::Args)]
pub struct ImportArgs {
    /// The source file or directory.
    pub source: std::path::PathBuf,
    /// The package id (default: from the source's name).
    #[arg(long)]
    pub id: Option<String>,
    /// How float weight matrices are stored: int8, int4 or fp32 (GGUF blocks that map
    /// exactly are always kept as they are).
    #[arg(long, default_value = "int8", value_parser = parse_weights)]
    pub weights: FloatWeights,
    /// Accuracy level inside the layers: 4 quantizes activations to int8 as llama.cpp
    /// does (the default: about 2.3× as fast on CPU, perplexity within llama.cpp's; the
    /// README has the figures); 0 computes in fp32 on the exact weights (MatMulNBits).
    #[arg(long, default_value_t = BuildOptions::default().accuracy_level, value_parser = clap::value_parser!(i64).range(0..=4))]
    pub accuracy_level: i64,
    /// The same for the lm_head alone.
    #[arg(long, default_value_t = BuildOptions::default().lm_head_accuracy_level, value_parser = clap::value_parser!(i64).range(0..=4))]
    pub lm_head_accuracy_level: i64,
    /// What multiplies by int8 activations (accuracy level 4): blocks (our kernel, ggml
    /// blocks as GGUF stores them; the default) or matmulnbits (onnxruntime's).
    #[arg(long, default_value_t = BuildOptions::default().int8_kernel, value_parser = parse_int8_kernel)]
    pub int8_kernel: Int8Kernel,
    /// An int8 lm_head (SmolLM2's tied Q8_0 embedding) scores every token with a 4-bit
    /// copy, then recomputes this many of the best from the int8 rows (the default:
    /// about 15 % faster decoding on SmolLM2, perplexity 0.4 higher; the README has the
    /// figures); 0 runs it once on the int8 rows.
    #[arg(long, default_value_t = BuildOptions::default().lm_head_shortlist)]
    pub lm_head_shortlist: usize,
    /// The exact graph: fp32 arithmetic everywhere (both accuracy levels 0, no
    /// shortlist), the one that matches a float reference.
    #[arg(long, conflicts_with_all = ["accuracy_level", "lm_head_accuracy_level", "int8_kernel", "lm_head_shortlist"])]
    pub exact: bool,
}

impl ImportArgs {
    /// The graph these options ask for.
    pub fn build_options(&self) -> BuildOptions {
        let levels = match self.exact {
            true => BuildOptions::EXACT,
            false => BuildOptions {
                accuracy_level: self.accuracy_level,
                lm_head_accuracy_level: self.lm_head_accuracy_level,
                int8_kernel: self.int8_kernel,
                lm_head_shortlist: self.lm_head_shortlist,
                ..BuildOptions::EXACT
            },
        };
        BuildOptions {
            float_weights: self.weights,
            ..levels
        }
    }
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

/// Imports `source` and says what happened; the id of a package it made.
pub fn import(
    models_dir: &Path,
    nats_url: &str,
    source: &Path,
    id: Option<String>,
    build: BuildOptions,
) -> anyhow::Result<Option<String>> {
    let bar = Bar(ProgressBar::new_spinner());
    bar.0.enable_steady_tick(Duration::from_millis(120));
    let started = std::time::Instant::now();
    let outcome = package::import(
        source,
        models_dir,
        &ImportOptions {
            id,
            build,
            parent: None,
        },
        &bar,
    );
    bar.0.finish_and_clear();
    match outcome? {
        Imported::Created(manifest) => {
            let size = package_size(&models_dir.join(&manifest.id));
            println!(
                "imported {} ({} {}, {:.1} MB) in {:.1} s",
                manifest.id,
                manifest.architecture,
                kind(&manifest),
                size as f64 / 1e6,
                started.elapsed().as_secs_f64()
            );
            announce(nats_url, &inference::MODEL_ADDED, &manifest.id);
            Ok(Some(manifest.id))
        }
        Imported::AlreadyPresent(manifest) => {
            println!(
                "{} is already imported from this source; nothing to do",
                manifest.id
            );
            Ok(None)
        }
    }
}

/// Prints the packages as a table or JSON.
pub fn list(models_dir: &Path, json: bool) -> anyhow::Result<()> {
    let manifests = package::list(models_dir)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&manifests)?);
        return Ok(());
    }
    let mut table = comfy_table::Table::new();
    table
        .load_preset(comfy_table::presets::UTF8_FULL_CONDENSED)
        .set_header([
            "ID",
            "KIND",
            "ARCHITECTURE",
            "CONTEXT",
            "QUANTIZATION",
            "SIZE",
            "SOURCE",
        ]);
    for manifest in &manifests {
        table.add_row([
            manifest.id.clone(),
            kind(manifest).to_owned(),
            manifest.architecture.clone(),
            manifest.context_length.to_string(),
            manifest
                .quantization
                .split(' ')
                .next()
                .unwrap_or_default()
                .to_owned(),
            format!(
                "{:.1} MB",
                package_size(&models_dir.join(&manifest.id)) as f64 / 1e6
            ),
            format!(
                "{} (sha256 {}…)",
                manifest.source.file,
                &manifest.source.sha256[..12.min(manifest.source.sha256.len())]
            ),
        ]);
    }
    println!(
        "{table}\n{} model(s) in {}",
        manifests.len(),
        models_dir.display()
    );
    Ok(())
}

/// Removes a package.
pub fn remove(models_dir: &Path, nats_url: &str, id: &str) -> anyhow::Result<()> {
    let manifest = package::remove(models_dir, id)?;
    println!("removed {}", manifest.id);
    announce(nats_url, &inference::MODEL_REMOVED, &manifest.id);
    Ok(())
}

fn kind(manifest: &Manifest) -> &'static str {
    match manifest.kind {
        package::ModelKind::Chat => "chat",
        package::ModelKind::Embedding => "embedding",
        package::ModelKind::Classifier => "classifier",
    }
}

fn package_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}
