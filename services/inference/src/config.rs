//! The `[inference]` section of the configuration.

use std::{net::SocketAddr, path::PathBuf};

use serde::Deserialize;

/// The `[inference]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The admin server (`/metrics`, `/livez`, `/readyz`).
    pub admin_listen: SocketAddr,
    /// ONNX Runtime: library, execution providers, threads.
    pub runtime: RuntimeConfig,
    /// Most sequences decoded together per chat model.
    pub max_batch: usize,
    /// Most requests waiting for a slot per chat model; beyond it requests are refused
    /// with `overloaded`.
    pub max_queue: usize,
    /// Longest sequence (prompt + completion) served, in tokens; the model's own limit
    /// when lower. Each batch slot reserves KV-cache room for this many tokens.
    pub max_context: usize,
    /// Most texts in one embedding request.
    pub max_embed_inputs: usize,
    /// Prompt tokens a scheduler prefills between two decode steps once it has admitted
    /// one request: a burst of short prompts starts together, and a longer prompt that
    /// arrives while streams run is prefilled in chunks of this size, one per step.
    pub prefill_budget: usize,
    /// Memory per chat model for the keys and values of recent prompts' leading
    /// 16-token blocks, in MiB (0 turns the prefix cache off): a prompt that starts like
    /// a recent one (a persona's system prompt, RAG instructions) prefills only the rest.
    pub prefix_cache_mb: usize,
    /// Most memory per chat model for the running sequences' keys and values, in MiB
    /// (default: a quarter of the machine's memory). Requests wait while admitting them
    /// would need more (each counted at its prompt plus max_tokens); one that could
    /// never fit is refused.
    pub kv_cache_mb: Option<usize>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9402)),
            runtime: RuntimeConfig::default(),
            max_batch: 16,
            max_queue: 64,
            max_context: 2048,
            max_embed_inputs: 2048,
            prefill_budget: 256,
            prefix_cache_mb: 256,
            kv_cache_mb: None,
        }
    }
}

impl Config {
    /// The KV-cache limit per chat model, in bytes.
    pub fn kv_cache_bytes(&self) -> usize {
        let mib = self.kv_cache_mb.unwrap_or_else(|| machine_memory_mib() / 4);
        mib.saturating_mul(1024 * 1024)
    }

    /// Checks ranges; the message names the setting.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=256).contains(&self.max_batch) {
            return Err(format!(
                "inference.max_batch = {} (must be 1 to 256)",
                self.max_batch
            ));
        }
        if self.max_context < 16 {
            return Err(format!(
                "inference.max_context = {} (must be at least 16)",
                self.max_context
            ));
        }
        if self.kv_cache_mb == Some(0) {
            return Err("inference.kv_cache_mb must be at least 1 (MiB)".to_owned());
        }
        if self.max_embed_inputs == 0 {
            return Err("inference.max_embed_inputs must be at least 1".to_owned());
        }
        if self.runtime.providers.is_empty() {
            return Err("inference.runtime.providers is empty (use [\"cpu\"])".to_owned());
        }
        Ok(())
    }
}

/// The machine's memory in MiB (`MemTotal` of /proc/meminfo; 16 GiB where unreadable).
fn machine_memory_mib() -> usize {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            let line = info.lines().find(|line| line.starts_with("MemTotal:"))?;
            let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib / 1024)
        })
        .unwrap_or(16 * 1024)
}

/// `[inference.runtime]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// libonnxruntime to load; unset: `ORT_DYLIB_PATH`, else
    /// `<data_dir>/runtime/libonnxruntime.so` (where `scripts/setup` puts it).
    pub library: Option<PathBuf>,
    /// Execution providers in order of preference: `cpu`, `cuda`, `tensorrt`.
    pub providers: Vec<Provider>,
    /// When a requested provider cannot be used: `fallback` to the next one (and log it),
    /// or `refuse` to load the model.
    pub on_unavailable: OnUnavailable,
    /// GPU to use with `cuda` / `tensorrt`.
    pub device_id: i32,
    /// TensorRT: where built engines are cached (default `<data_dir>/cache/tensorrt`).
    pub tensorrt_cache_dir: Option<PathBuf>,
    /// TensorRT: allow fp16 kernels.
    pub tensorrt_fp16: bool,
    /// Threads for one operator (0: one per core).
    pub intra_threads: usize,
    /// Whether those threads spin between operators (faster alone, but they take the
    /// cores from sampling and the bus while they do).
    pub intra_op_spinning: bool,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            library: None,
            providers: vec![Provider::Cpu],
            on_unavailable: OnUnavailable::Fallback,
            device_id: 0,
            tensorrt_cache_dir: None,
            tensorrt_fp16: true,
            intra_threads: 0,
            intra_op_spinning: true,
        }
    }
}

/// An ONNX Runtime execution provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Cpu,
    Cuda,
    Tensorrt,
}

impl Provider {
    /// The name used in config, logs and `ModelInfo`.
    pub fn name(self) -> &'static str {
        match self {
            Provider::Cpu => "cpu",
            Provider::Cuda => "cuda",
            Provider::Tensorrt => "tensorrt",
        }
    }
}

/// What to do when a provider cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnUnavailable {
    Fallback,
    Refuse,
}
