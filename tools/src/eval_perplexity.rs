//! `slough eval perplexity`: a chat model package's perplexity on a text, measured the
//! way llama.cpp's `llama-perplexity` measures it, so that the two can be compared on the
//! same GGUF: the text is tokenized once and cut into non-overlapping windows of the
//! context size; each window runs alone on an empty cache (its first token replaced by
//! the tokenizer's BOS, where it has one); the second half of each window is scored.
//! The figure is `exp(mean NLL)` with llama.cpp's ± (the standard error of the mean
//! NLL, carried through the exponential).
//!
//! With `--reference`, the same windows also run through a reference package (the exact
//! graph, say) and each scored position adds the KL divergence from the reference's
//! distribution to the model's, and whether both put the same token first.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Serialize;
use slough_inference::{
    chat::{engine::Engine, model::Model as _},
    runtime::Runtime,
    text::TextModel,
};
use slough_modelkit::package::{self, ModelKind};

use slough::Settings;

/// What to measure.
#[derive(Debug, Clone, clap::Args)]
pub struct PerplexityOptions {
    /// A text file, or a .jsonl file whose lines' `text` fields are joined (e.g.
    /// ../shared/data/retrieval/cranfield/corpus.jsonl).
    pub text: PathBuf,
    /// The package to score.
    #[arg(long)]
    pub model: String,
    /// A package with the same tokenizer to compare with.
    #[arg(long)]
    pub reference: Option<String>,
    /// Tokens per window (llama-perplexity's -c).
    #[arg(long, default_value_t = 512)]
    pub context: usize,
    /// Score only the first N windows (llama-perplexity's --chunks).
    #[arg(long)]
    pub chunks: Option<usize>,
    /// Record the figure in the package's slough-model.json (`quality`).
    #[arg(long)]
    pub record: bool,
    /// Also write the figures as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// The figures.
#[derive(Debug, Clone, Serialize)]
pub struct PerplexityReport {
    pub model: String,
    pub text: String,
    pub context: usize,
    pub chunks: usize,
    pub scored_tokens: usize,
    pub perplexity: f64,
    /// llama.cpp's ± of the perplexity.
    pub perplexity_error: f64,
    pub reference: Option<ReferenceReport>,
    pub seconds: f64,
}

/// How the model's next-token distributions compare with the reference's.
#[derive(Debug, Clone, Serialize)]
pub struct ReferenceReport {
    pub model: String,
    pub perplexity: f64,
    /// Mean of KL(reference ‖ model) over the scored positions, in nats.
    pub mean_kl_divergence: f64,
    /// Its standard error.
    pub kl_error: f64,
    /// The share of scored positions where both put the same token first.
    pub top1_agreement: f64,
}

/// A package opened for scoring.
pub struct Scorer {
    id: String,
    text: TextModel,
    engine: Engine,
}

impl Scorer {
    /// Opens package `id` from `models_dir` on `runtime`, for windows of `context`.
    pub fn open(
        models_dir: &Path,
        id: &str,
        runtime: &Runtime,
        context: usize,
    ) -> anyhow::Result<Scorer> {
        let dir = models_dir.join(id);
        let manifest = package::read_manifest(&dir)
            .with_context(|| format!("no model package {id} in {}", models_dir.display()))?;
        anyhow::ensure!(
            manifest.kind == ModelKind::Chat,
            "{id} is not a chat model; perplexity needs one"
        );
        anyhow::ensure!(
            context <= manifest.context_length,
            "--context {context} is longer than {id}'s context ({})",
            manifest.context_length
        );
        let (text, engine, _) = slough_inference::chat::open(&dir, &manifest, runtime, context)
            .map_err(|err| anyhow::anyhow!("cannot open {id}: {err}"))?;
        Ok(Scorer {
            id: id.to_owned(),
            text,
            engine,
        })
    }

    /// `text`'s tokens, without special tokens, and the BOS the tokenizer adds, if any.
    pub fn tokenize(&self, text: &str) -> anyhow::Result<(Vec<u32>, Option<u32>)> {
        let tokenizer = self.text.tokenizer();
        let plain = tokenizer
            .encode(text, false)
            .map_err(|err| anyhow::anyhow!("cannot tokenize the text: {err}"))?;
        let marked = tokenizer
            .encode("", true)
            .map_err(|err| anyhow::anyhow!("cannot tokenize: {err}"))?;
        Ok((plain.get_ids().to_vec(), marked.get_ids().first().copied()))
    }

    /// The logits that predict `window[first + 1..]`, one row per position, computed
    /// as a generation computes them (prefill, then decode steps).
    pub fn logits(&mut self, window: &[u32], first: usize) -> anyhow::Result<Vec<Vec<f32>>> {
        self.engine
            .teacher_forced(window, first)
            .map_err(|err| anyhow::anyhow!("{}: {err}", self.id))
    }

    /// The logits of `prefix`'s last position alone, from a prefill of the whole prefix
    /// (no decode steps): an independent way to the same figures, for checking.
    pub fn last_logits(&mut self, prefix: &[u32]) -> anyhow::Result<Vec<f32>> {
        let mut prefilled = self
            .engine
            .prefill(&[prefix])
            .map_err(|err| anyhow::anyhow!("{}: {err}", self.id))?;
        prefilled
            .pop()
            .map(|(last, _)| last)
            .context("prefill returned nothing")
    }

    pub fn vocab(&self) -> usize {
        self.engine.shape().vocab
    }
}

/// `row`'s log-probabilities (a numerically stable log-softmax), in f64.
pub fn log_softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = row.iter().map(|&x| f64::from(x - max).exp()).sum();
    let log_sum = sum.ln();
    row.iter().map(|&x| f64::from(x - max) - log_sum).collect()
}

/// A running mean with its standard error (llama.cpp's formula).
#[derive(Debug, Default, Clone, Copy)]
struct Mean {
    sum: f64,
    squares: f64,
    count: usize,
}

impl Mean {
    fn add(&mut self, value: f64) {
        self.sum += value;
        self.squares += value * value;
        self.count += 1;
    }

    fn mean(&self) -> f64 {
        self.sum / self.count.max(1) as f64
    }

    fn error(&self) -> f64 {
        if self.count < 2 {
            return 0.0;
        }
        let mean = self.mean();
        let variance = self.squares / self.count as f64 - mean * mean;
        (variance.max(0.0) / (self.count - 1) as f64).sqrt()
    }
}

/// What the scored positions add up to.
#[derive(Debug, Default)]
pub struct Tally {
    nll: Mean,
    reference_nll: Mean,
    kl: Mean,
    agree: usize,
}

impl Tally {
    /// Scores one window: `logits[i]` (and `reference[i]`, the reference's, when given)
    /// predict `window[first + i + 1]`.
    pub fn window(
        &mut self,
        window: &[u32],
        logits: &[Vec<f32>],
        reference: Option<&[Vec<f32>]>,
        first: usize,
    ) {
        for (i, row) in logits.iter().enumerate() {
            let next = window[first + i + 1] as usize;
            let log_p = log_softmax(row);
            self.nll.add(-log_p[next]);
            let Some(reference) = reference else {
                continue;
            };
            let log_q = log_softmax(&reference[i]);
            self.reference_nll.add(-log_q[next]);
            let kl: f64 = log_q
                .iter()
                .zip(&log_p)
                .map(|(&q, &p)| q.exp() * (q - p))
                .sum();
            self.kl.add(kl.max(0.0));
            self.agree += usize::from(argmax(&log_p) == argmax(&log_q));
        }
    }

    /// Perplexity and its ±.
    pub fn perplexity(&self) -> (f64, f64) {
        let ppl = self.nll.mean().exp();
        (ppl, ppl * self.nll.error())
    }

    pub fn scored(&self) -> usize {
        self.nll.count
    }

    /// How the reference compared, when the windows ran through one.
    pub fn compared(&self, reference: &str) -> ReferenceReport {
        ReferenceReport {
            model: reference.to_owned(),
            perplexity: self.reference_nll.mean().exp(),
            mean_kl_divergence: self.kl.mean(),
            kl_error: self.kl.error(),
            top1_agreement: self.agree as f64 / self.scored().max(1) as f64,
        }
    }
}

fn argmax(values: &[f64]) -> usize {
    values
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(index, _)| index)
}

/// The text to score: the file itself, or for `.jsonl` its lines' `text` fields joined
/// by blank lines.
pub fn read_text(path: &Path) -> anyhow::Result<String> {
    let raw =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    if path.extension().is_none_or(|ext| ext != "jsonl") {
        return Ok(raw);
    }
    let mut texts = Vec::new();
    for (index, line) in raw.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{} line {}: not JSON", path.display(), index + 1))?;
        let text = value["text"]
            .as_str()
            .with_context(|| format!("{} line {}: no `text` field", path.display(), index + 1))?;
        texts.push(text.trim().to_owned());
    }
    Ok(texts.join("\n\n"))
}

/// Scores `tokens` in windows of `context` with `model` (and `reference`), reporting
/// each window to `progress`.
pub fn evaluate(
    model: &mut Scorer,
    mut reference: Option<&mut Scorer>,
    tokens: &[u32],
    bos: Option<u32>,
    context: usize,
    chunks: Option<usize>,
    progress: &indicatif::ProgressBar,
) -> anyhow::Result<(Tally, usize)> {
    anyhow::ensure!(
        context >= 16 && context.is_multiple_of(2),
        "--context must be an even number of at least 16 tokens"
    );
    let available = tokens.len() / context;
    anyhow::ensure!(
        available >= 1,
        "the text has {} tokens, fewer than one window of {context}",
        tokens.len()
    );
    let windows = chunks.map_or(available, |n| n.min(available));
    if let Some(reference) = reference.as_deref() {
        anyhow::ensure!(
            reference.vocab() == model.vocab(),
            "{} and {} have different vocabularies ({} and {} tokens)",
            model.id,
            reference.id,
            model.vocab(),
            reference.vocab()
        );
    }
    progress.set_length(windows as u64);
    let mut tally = Tally::default();
    for index in 0..windows {
        let mut window = tokens[index * context..(index + 1) * context].to_vec();
        if let Some(bos) = bos {
            window[0] = bos;
        }
        let first = context / 2;
        let logits = model.logits(&window, first)?;
        let reference_logits = match reference.as_deref_mut() {
            Some(reference) => Some(reference.logits(&window, first)?),
            None => None,
        };
        tally.window(&window, &logits, reference_logits.as_deref(), first);
        let (ppl, error) = tally.perplexity();
        progress.set_message(format!("PPL {ppl:.3} ± {error:.3}"));
        progress.inc(1);
    }
    Ok((tally, windows))
}

/// `slough eval perplexity`.
pub fn run(settings: &Settings, options: &PerplexityOptions) -> anyhow::Result<()> {
    let data_dir = &settings.common.data_dir;
    let runtime = Runtime::load(&settings.inference.runtime, data_dir)
        .map_err(|err| anyhow::anyhow!("ONNX Runtime: {err}"))?;
    let models_dir = settings.common.models_dir();
    let mut model = Scorer::open(&models_dir, &options.model, &runtime, options.context)?;
    let mut reference = options
        .reference
        .as_deref()
        .map(|id| Scorer::open(&models_dir, id, &runtime, options.context))
        .transpose()?;
    let text = read_text(&options.text)?;
    let (tokens, bos) = model.tokenize(&text)?;
    println!(
        "{}: {} tokens; windows of {} tokens, the second half of each scored",
        options.text.display(),
        tokens.len(),
        options.context
    );
    let progress = indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} windows  {msg}  {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let started = std::time::Instant::now();
    let (tally, windows) = evaluate(
        &mut model,
        reference.as_mut(),
        &tokens,
        bos,
        options.context,
        options.chunks,
        &progress,
    )?;
    progress.finish_and_clear();
    let (perplexity, perplexity_error) = tally.perplexity();
    let report = PerplexityReport {
        model: options.model.clone(),
        text: options.text.display().to_string(),
        context: options.context,
        chunks: windows,
        scored_tokens: tally.scored(),
        perplexity,
        perplexity_error,
        reference: options.reference.as_deref().map(|id| tally.compared(id)),
        seconds: started.elapsed().as_secs_f64(),
    };
    println!(
        "{}: PPL = {:.4} ± {:.4} over {} windows ({} tokens scored) in {:.0} s",
        report.model,
        report.perplexity,
        report.perplexity_error,
        report.chunks,
        report.scored_tokens,
        report.seconds
    );
    if let Some(reference) = &report.reference {
        println!(
            "against {} (PPL {:.4}): mean KL divergence {:.5} ± {:.5}, top-1 agreement {:.2} %",
            reference.model,
            reference.perplexity,
            reference.mean_kl_divergence,
            reference.kl_error,
            100.0 * reference.top1_agreement
        );
    }
    if options.record {
        let quality = package::Quality {
            text: options
                .text
                .file_name()
                .map_or_else(String::new, |name| name.to_string_lossy().into_owned()),
            context: report.context,
            windows: report.chunks,
            perplexity: report.perplexity,
            perplexity_error: report.perplexity_error,
            measured_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        };
        package::record_quality(&models_dir.join(&options.model), quality)?;
        println!("recorded in {}'s {}", options.model, package::MANIFEST);
    }
    if let Some(path) = &options.json {
        crate::write_figures(path, &report)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_sums_to_one_and_survives_large_logits() {
        let log_p = log_softmax(&[1000.0, 999.0, -5.0]);
        let total: f64 = log_p.iter().map(|l| l.exp()).sum();
        assert!((total - 1.0).abs() < 1e-9);
        assert!((log_p[0] - log_p[1] - 1.0).abs() < 1e-9);
    }

    #[test]
    fn a_window_scores_its_second_half_and_an_identical_reference_agrees() {
        // Vocabulary of 3; the "model" always puts 0.5 on the next token.
        let window = [0u32, 1, 2, 0, 1, 2];
        // Rows for positions 3 and 4 (5 has no next token), each putting 0.5 on the
        // right token: e^x / (e^x + 2) = 0.5 with x = ln 2.
        let logits: Vec<Vec<f32>> = (3..5)
            .map(|position| {
                let mut row = vec![0.0f32; 3];
                row[window[position + 1] as usize] = 2.0f32.ln();
                row
            })
            .collect();
        let mut tally = Tally::default();
        tally.window(&window, &logits, Some(&logits), 3);
        assert_eq!(tally.scored(), 2);
        let (ppl, error) = tally.perplexity();
        assert!((ppl - 2.0).abs() < 1e-6, "{ppl}");
        assert!(error.abs() < 1e-9);
        assert!(tally.kl.mean().abs() < 1e-12);
        assert_eq!(tally.agree, 2);
    }
}
