//! `slough eval persona`: runs a file of prompts through a live platform's gateway as
//! one or more personas, and reports per persona the mean adherence and, per trait, the
//! target, the mean measure and the mean score, so that a persona's prompt can be tuned
//! with numbers (and two personas compared on the same prompts).

use std::{collections::BTreeMap, path::Path};

use anyhow::Context as _;
use futures::StreamExt as _;
use serde::Serialize;
use slough_protocol::personality::{Adherence, Trait};

use slough::{
    Settings,
    gateway_client::{GatewayClient, api_key, gateway_url},
};

/// What to evaluate.
#[derive(Debug, Clone, clap::Args)]
pub struct PersonaEvalOptions {
    /// The personas (ids), compared on the same prompts.
    #[arg(required = true)]
    pub personas: Vec<String>,
    /// A text file with one prompt per line (`#` lines are comments).
    #[arg(long)]
    pub prompts: std::path::PathBuf,
    /// The chat model (default: the first chat model the gateway lists).
    #[arg(long)]
    pub model: Option<String>,
    /// The gateway's URL (default: http:// and the configured gateway.listen).
    #[arg(long)]
    pub url: Option<String>,
    /// The API key (default: SLOUGH_API_KEY, then the admin key `slough up` made).
    #[arg(long)]
    pub key: Option<String>,
    /// Tokens per answer.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_tokens: u32,
    /// Prompts in flight at once.
    #[arg(long, default_value_t = 4, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub concurrency: usize,
    /// Also write the figures as JSON here.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// A mean and its standard deviation over the prompts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Stat {
    pub mean: f64,
    pub sd: f64,
}

impl Stat {
    fn of(values: &[f64]) -> Stat {
        if values.is_empty() {
            return Stat { mean: 0.0, sd: 0.0 };
        }
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
        Stat {
            mean,
            sd: variance.sqrt(),
        }
    }
}

/// One trait over every answer.
#[derive(Debug, Clone, Serialize)]
pub struct TraitSummary {
    pub target: f64,
    pub measured: Stat,
    pub score: Stat,
}

/// One persona over every prompt.
#[derive(Debug, Clone, Serialize)]
pub struct PersonaSummary {
    pub persona: String,
    pub answers: usize,
    pub adherence: Stat,
    pub traits: BTreeMap<&'static str, TraitSummary>,
    /// The style metrics behind the traits, averaged.
    pub metrics: BTreeMap<&'static str, Stat>,
}

/// Every persona's summary on the same prompts.
#[derive(Debug, Clone, Serialize)]
pub struct PersonaReport {
    pub model: String,
    pub prompts: usize,
    pub max_tokens: u32,
    pub personas: Vec<PersonaSummary>,
}

/// Reads prompts, one per line; blank lines and lines starting with `#` are skipped.
pub fn read_prompts(path: &Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the prompts file {}", path.display()))?;
    let prompts: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_owned)
        .collect();
    if prompts.is_empty() {
        anyhow::bail!("{} holds no prompts (one per line)", path.display());
    }
    Ok(prompts)
}

/// One answer as `persona`, with its adherence.
async fn ask(
    gateway: &GatewayClient,
    model: &str,
    persona: &str,
    prompt: &str,
    max_tokens: u32,
    seed: u64,
) -> anyhow::Result<Adherence> {
    let body = serde_json::json!({
        "model": model,
        "persona": persona,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "seed": seed,
    });
    let completion = gateway.post("/v1/chat/completions", &body).await?;
    let adherence = completion["choices"][0]["persona_adherence"].clone();
    if adherence.is_null() {
        anyhow::bail!("the answer carries no persona_adherence (is personality running?)");
    }
    Ok(serde_json::from_value(adherence)?)
}

/// Runs every prompt as `persona` (`concurrency` at a time; prompt `i` with seed `i`, so
/// that runs repeat) and summarizes the adherence.
pub async fn evaluate(
    gateway: &GatewayClient,
    model: &str,
    persona: &str,
    prompts: &[String],
    max_tokens: u32,
    concurrency: usize,
    progress: &indicatif::ProgressBar,
) -> anyhow::Result<PersonaSummary> {
    let answers: Vec<anyhow::Result<Adherence>> = futures::stream::iter(prompts.iter().zip(0u64..))
        .map(|(prompt, seed)| async move {
            let answered = ask(gateway, model, persona, prompt, max_tokens, seed)
                .await
                .with_context(|| format!("{persona}, prompt {}", seed + 1));
            progress.inc(1);
            answered
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let answers = answers.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    Ok(summarize(persona, &answers))
}

/// One number read from an answer's adherence.
type Measure = fn(&Adherence) -> f64;

fn summarize(persona: &str, answers: &[Adherence]) -> PersonaSummary {
    let stat = |value: &dyn Fn(&Adherence) -> f64| {
        Stat::of(&answers.iter().map(value).collect::<Vec<_>>())
    };
    let traits = Trait::ALL
        .iter()
        .map(|&which| {
            let target = answers
                .first()
                .map_or(0.0, |first| first.traits.get(which).target);
            let summary = TraitSummary {
                target,
                measured: stat(&|answer| answer.traits.get(which).measured),
                score: stat(&|answer| answer.traits.get(which).score),
            };
            (which.name(), summary)
        })
        .collect();
    let metrics: [(&'static str, Measure); 7] = [
        ("words", |answer| f64::from(answer.metrics.words)),
        ("sentiment_compound", |answer| {
            answer.metrics.sentiment.compound
        }),
        ("formality", |answer| answer.metrics.formality),
        ("exclamation_ratio", |answer| {
            answer.metrics.exclamation_ratio
        }),
        ("emoji_density", |answer| answer.metrics.emoji_density),
        ("flesch_reading_ease", |answer| {
            answer.metrics.flesch_reading_ease
        }),
        ("lexical_diversity", |answer| {
            answer.metrics.lexical_diversity
        }),
    ];
    PersonaSummary {
        persona: persona.to_owned(),
        answers: answers.len(),
        adherence: stat(&|answer| answer.score),
        traits,
        metrics: metrics
            .into_iter()
            .map(|(name, value)| (name, stat(&value)))
            .collect(),
    }
}

/// `slough eval persona`.
pub fn run(settings: Settings, options: PersonaEvalOptions) -> anyhow::Result<()> {
    let prompts = read_prompts(&options.prompts)?;
    let key = api_key(&settings, options.key.clone())?;
    let base = gateway_url(&settings, options.url.clone());
    slough::runtime()?.block_on(async {
        let gateway = GatewayClient::new(&base, &key)?;
        let model = match options.model.clone() {
            Some(model) => model,
            None => gateway.first_model("chat").await?,
        };
        let total = prompts.len() * options.personas.len();
        let progress = indicatif::ProgressBar::new(total as u64).with_style(
            indicatif::ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} answers, {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        let mut personas = Vec::new();
        for persona in &options.personas {
            progress.set_message(persona.clone());
            personas.push(
                evaluate(
                    &gateway,
                    &model,
                    persona,
                    &prompts,
                    options.max_tokens,
                    options.concurrency,
                    &progress,
                )
                .await?,
            );
        }
        progress.finish_and_clear();
        let report = PersonaReport {
            model,
            prompts: prompts.len(),
            max_tokens: options.max_tokens,
            personas,
        };
        print_report(&report);
        if let Some(path) = &options.json {
            crate::write_figures(path, &report)?;
        }
        Ok(())
    })
}

fn print_report(report: &PersonaReport) {
    println!(
        "{} prompts on {}, at most {} tokens each",
        report.prompts, report.model, report.max_tokens
    );
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
    table.set_header(["persona", "trait", "target", "measured", "adherence"]);
    let shown = |stat: Stat| format!("{:.2} ± {:.2}", stat.mean, stat.sd);
    for summary in &report.personas {
        for (name, one) in &summary.traits {
            table.add_row([
                summary.persona.clone(),
                (*name).to_owned(),
                format!("{:.2}", one.target),
                shown(one.measured),
                shown(one.score),
            ]);
        }
        table.add_row([
            summary.persona.clone(),
            "(mean)".to_owned(),
            String::new(),
            String::new(),
            shown(summary.adherence),
        ]);
    }
    println!("{table}");
    let mut metrics = comfy_table::Table::new();
    metrics.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
    let mut header = vec!["metric".to_owned()];
    header.extend(
        report
            .personas
            .iter()
            .map(|summary| summary.persona.clone()),
    );
    metrics.set_header(header);
    if let Some(first) = report.personas.first() {
        for name in first.metrics.keys() {
            let mut row = vec![(*name).to_owned()];
            for summary in &report.personas {
                row.push(
                    summary
                        .metrics
                        .get(name)
                        .copied()
                        .map_or_else(String::new, shown),
                );
            }
            metrics.add_row(row);
        }
    }
    println!("{metrics}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_skip_blank_and_comment_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prompts.txt");
        std::fs::write(
            &path,
            "# tuning set\nWhat is rain?\n\n  Why is the sky blue?  \n",
        )
        .unwrap();
        assert_eq!(
            read_prompts(&path).unwrap(),
            ["What is rain?", "Why is the sky blue?"]
        );
        std::fs::write(&path, "# nothing\n\n").unwrap();
        assert!(read_prompts(&path).is_err());
    }

    #[test]
    fn stats_are_mean_and_population_sd() {
        let stat = Stat::of(&[1.0, 3.0]);
        assert_eq!(stat, Stat { mean: 2.0, sd: 1.0 });
        assert_eq!(Stat::of(&[]), Stat { mean: 0.0, sd: 0.0 });
    }
}
