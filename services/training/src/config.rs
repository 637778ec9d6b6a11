//! The `[training]` section of the configuration.

use std::{net::SocketAddr, path::PathBuf};

use serde::Deserialize;

/// How the training service runs.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where `/metrics`, `/livez` and `/readyz` listen.
    pub admin_listen: SocketAddr,
    /// Where the base models' sources are looked for when a package does not record
    /// one (default `<data_dir>/cache/sources`, where `scripts/fetch-assets` puts them).
    pub sources_dir: Option<PathBuf>,
    /// Checkpoints and exports, one directory per job (default `<data_dir>/training`).
    pub jobs_dir: Option<PathBuf>,
    /// Jobs one instance trains at once.
    pub concurrency: usize,
    /// A checkpoint every this many steps (and at each epoch's end).
    pub checkpoint_every: u64,
    /// Most padded tokens per forward pass; larger batches are split and their
    /// gradients accumulate (activation memory grows with it: about 2 GB per 256 tokens
    /// for SmolLM2-135M).
    pub micro_batch_tokens: usize,
    /// How long a worker's claim on a job lasts without renewal, and how long JetStream
    /// waits for an acknowledgement before it redelivers the job: a killed worker's job
    /// is taken over after about this long.
    pub lease_seconds: u64,
    /// How fine-tuned weights are stored: `int8` or `int4` blocks, or `fp32`.
    pub export_weights: slough_modelkit::llama::FloatWeights,
    /// The most tokens one job may train on: its training file's tokens times its
    /// epochs. A larger job fails validation naming this setting, rather than hold a
    /// CPU worker for days.
    pub max_job_tokens: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9405)),
            sources_dir: None,
            jobs_dir: None,
            concurrency: 1,
            checkpoint_every: 50,
            micro_batch_tokens: 512,
            lease_seconds: 30,
            export_weights: slough_modelkit::llama::FloatWeights::Int8,
            max_job_tokens: 10_000_000,
        }
    }
}

impl Config {
    /// Refuses settings the service cannot run with, naming them.
    pub fn validate(&self) -> Result<(), String> {
        let checks = [
            (
                (1..=16).contains(&self.concurrency),
                format!(
                    "training.concurrency = {} (must be 1 to 16)",
                    self.concurrency
                ),
            ),
            (
                self.checkpoint_every >= 1,
                "training.checkpoint_every must be at least 1".to_owned(),
            ),
            (
                (16..=65_536).contains(&self.micro_batch_tokens),
                format!(
                    "training.micro_batch_tokens = {} (must be 16 to 65536)",
                    self.micro_batch_tokens
                ),
            ),
            (
                self.max_job_tokens >= 1,
                "training.max_job_tokens must be at least 1".to_owned(),
            ),
            (
                (5..=3600).contains(&self.lease_seconds),
                format!(
                    "training.lease_seconds = {} (must be 5 to 3600)",
                    self.lease_seconds
                ),
            ),
        ];
        match checks.into_iter().find(|(ok, _)| !ok) {
            Some((_, message)) => Err(message),
            None => Ok(()),
        }
    }
}
