//! `slough train` and `slough jobs`: fine-tuning through a running gateway, as any API
//! client would. `train` uploads the file, starts the job and follows its events with a
//! progress bar (step, loss, ETA) until it ends; `jobs` lists, shows, follows or cancels
//! jobs.

use std::time::Duration;

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use crate::gateway_client::GatewayClient;

/// What `slough train` starts.
#[derive(Debug, Clone, clap::Args)]
pub struct TrainOptions {
    /// The training file: one `{"messages": [...]}` per line (OpenAI's chat format).
    pub file: std::path::PathBuf,
    /// A validation file in the same format (its loss is reported each epoch).
    #[arg(long)]
    pub validation: Option<std::path::PathBuf>,
    /// The base chat model.
    #[arg(long)]
    pub model: String,
    /// Passes over the file (default: auto).
    #[arg(long)]
    pub epochs: Option<u32>,
    /// Examples per step (default: auto).
    #[arg(long)]
    pub batch_size: Option<u32>,
    /// Scales the base learning rate (default: auto).
    #[arg(long)]
    pub learning_rate_multiplier: Option<f64>,
    /// Part of the fine-tuned model's name.
    #[arg(long)]
    pub suffix: Option<String>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// LoRA rank (alpha is twice the rank).
    #[arg(long)]
    pub rank: Option<u32>,
}

async fn upload(client: &GatewayClient, path: &std::path::Path) -> anyhow::Result<String> {
    let content = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let name = path.file_name().map_or_else(
        || "train.jsonl".to_owned(),
        |n| n.to_string_lossy().into_owned(),
    );
    let file = client
        .upload("/v1/files", &[("purpose", "fine-tune")], &name, content)
        .await?;
    let id = file["id"].as_str().unwrap_or_default().to_owned();
    println!(
        "uploaded {} as {id} ({} bytes)",
        path.display(),
        file["bytes"]
    );
    Ok(id)
}

/// Uploads, starts the job and follows it to its end.
pub async fn train(client: &GatewayClient, options: TrainOptions) -> anyhow::Result<()> {
    let training_file = upload(client, &options.file).await?;
    let validation_file = match &options.validation {
        Some(path) => Some(upload(client, path).await?),
        None => None,
    };
    let auto = |value: Option<Value>| value.unwrap_or_else(|| json!("auto"));
    let mut body = json!({
        "model": options.model,
        "training_file": training_file,
        "hyperparameters": {
            "n_epochs": auto(options.epochs.map(Value::from)),
            "batch_size": auto(options.batch_size.map(Value::from)),
            "learning_rate_multiplier": auto(options.learning_rate_multiplier.map(Value::from)),
        },
    });
    if let Some(file) = validation_file {
        body["validation_file"] = json!(file);
    }
    if let Some(suffix) = options.suffix {
        body["suffix"] = json!(suffix);
    }
    if let Some(seed) = options.seed {
        body["seed"] = json!(seed);
    }
    if let Some(rank) = options.rank {
        body["lora"] = json!({ "rank": rank, "alpha": 2 * rank });
    }
    let job = client.post("/v1/fine_tuning/jobs", &body).await?;
    let id = job["id"].as_str().unwrap_or_default().to_owned();
    println!("job {id} created; following it (Ctrl-C stops following, not the job)");
    follow(client, &id).await
}

/// Prints a job's events as they come, a progress bar while it trains, until it ends.
pub async fn follow(client: &GatewayClient, id: &str) -> anyhow::Result<()> {
    let bar = ProgressBar::hidden();
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut newest: Option<String> = None;
    loop {
        // Newest first: everything down to the newest event already shown.
        let page = client
            .get(&format!("/v1/fine_tuning/jobs/{id}/events?limit=100"))
            .await?;
        let mut fresh: Vec<&Value> = Vec::new();
        for event in page["data"].as_array().into_iter().flatten() {
            if newest.as_deref() == event["id"].as_str() {
                break;
            }
            fresh.push(event);
        }
        if let Some(first) = fresh.first() {
            newest = first["id"].as_str().map(str::to_owned);
        }
        for event in fresh.into_iter().rev() {
            let data = &event["data"];
            if event["type"] == "metrics" {
                if bar.is_hidden() {
                    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
                }
                bar.set_length(data["total_steps"].as_u64().unwrap_or(0));
                bar.set_position(data["step"].as_u64().unwrap_or(0));
                bar.set_message(format!(
                    "epoch {}  loss {:.4}  {:.0} tokens/s  ETA {}",
                    data["epoch"],
                    data["train_loss"].as_f64().unwrap_or(f64::NAN),
                    data["tokens_per_second"].as_f64().unwrap_or(0.0),
                    eta(data["eta_seconds"].as_f64().unwrap_or(0.0)),
                ));
            } else {
                bar.println(format!(
                    "{} {}",
                    event["level"].as_str().unwrap_or("info"),
                    event["message"].as_str().unwrap_or_default()
                ));
            }
        }
        let job = client.get(&format!("/v1/fine_tuning/jobs/{id}")).await?;
        match job["status"].as_str().unwrap_or_default() {
            "succeeded" => {
                bar.finish_and_clear();
                println!(
                    "succeeded: {} ({} tokens trained)",
                    job["fine_tuned_model"].as_str().unwrap_or_default(),
                    job["trained_tokens"]
                );
                return Ok(());
            }
            "failed" => {
                bar.finish_and_clear();
                anyhow::bail!(
                    "job {id} failed: {}",
                    job["error"]["message"].as_str().unwrap_or("no message")
                );
            }
            "cancelled" => {
                bar.finish_and_clear();
                anyhow::bail!("job {id} was cancelled");
            }
            _ => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

fn eta(seconds: f64) -> String {
    let seconds = seconds.max(0.0) as u64;
    format!("{}:{:02}", seconds / 60, seconds % 60)
}

/// `slough jobs list`: one line per job, newest first.
pub async fn list(client: &GatewayClient) -> anyhow::Result<()> {
    let page = client.get("/v1/fine_tuning/jobs?limit=100").await?;
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::NOTHING);
    table.set_header(["JOB", "STATUS", "MODEL", "FINE-TUNED MODEL", "TOKENS"]);
    for job in page["data"].as_array().into_iter().flatten() {
        table.add_row([
            job["id"].as_str().unwrap_or_default().to_owned(),
            job["status"].as_str().unwrap_or_default().to_owned(),
            job["model"].as_str().unwrap_or_default().to_owned(),
            job["fine_tuned_model"].as_str().unwrap_or("-").to_owned(),
            job["trained_tokens"]
                .as_u64()
                .map_or_else(|| "-".to_owned(), |t| t.to_string()),
        ]);
    }
    println!("{table}");
    Ok(())
}

/// `slough jobs show <id>`: the job as JSON.
pub async fn show(client: &GatewayClient, id: &str) -> anyhow::Result<()> {
    let job = client.get(&format!("/v1/fine_tuning/jobs/{id}")).await?;
    println!("{}", serde_json::to_string_pretty(&job)?);
    Ok(())
}

/// `slough jobs events <id>`: every event, oldest first.
pub async fn events(client: &GatewayClient, id: &str) -> anyhow::Result<()> {
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut path = format!("/v1/fine_tuning/jobs/{id}/events?limit=100");
        if let Some(after) = &after {
            path.push_str(&format!("&after={after}"));
        }
        let page = client.get(&path).await?;
        let data = page["data"].as_array().cloned().unwrap_or_default();
        after = data
            .last()
            .and_then(|e| e["id"].as_str())
            .map(str::to_owned);
        all.extend(data);
        if page["has_more"] != true {
            break;
        }
    }
    for event in all.iter().rev() {
        let time = chrono::DateTime::from_timestamp(event["created_at"].as_i64().unwrap_or(0), 0)
            .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_default();
        println!(
            "{time}  {:<5}  {}",
            event["level"].as_str().unwrap_or_default(),
            event["message"].as_str().unwrap_or_default()
        );
    }
    Ok(())
}

/// `slough jobs cancel <id>`.
pub async fn cancel(client: &GatewayClient, id: &str) -> anyhow::Result<()> {
    let job = client
        .post(&format!("/v1/fine_tuning/jobs/{id}/cancel"), &json!({}))
        .await?;
    println!("{id}: {}", job["status"].as_str().unwrap_or_default());
    Ok(())
}
