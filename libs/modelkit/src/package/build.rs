//! Building a package's files in a staging directory, per kind of source: a GGUF
//! decoder, a safetensors llama decoder, a safetensors BERT encoder.

use std::{
    fs,
    path::{Path, PathBuf},
};

use crate::{
    bert::{self, BertConfig},
    gguf::GgufFile,
    llama::{self, BuildOptions, LlamaConfig},
    safetensors::SafetensorsFile,
    tokenizer,
};

use super::{PackageError, Progress, import::ImportOptions, io, manifest::*};

/// What every builder gets: the source, the staging directory to write into, and the
/// manifest facts known before building.
pub(super) struct BuildJob<'a> {
    pub(super) source: &'a Path,
    pub(super) staging: &'a Path,
    pub(super) id: &'a str,
    pub(super) file_name: &'a str,
    pub(super) sha256: String,
    pub(super) options: &'a ImportOptions,
    pub(super) progress: &'a dyn Progress,
}

pub(super) enum SourceKind {
    Gguf,
    /// A Hugging Face llama checkpoint (`model_type: "llama"`).
    Llama,
    Bert,
}

impl SourceKind {
    pub(super) fn of(source: &Path) -> Result<SourceKind, PackageError> {
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

    pub(super) fn weights_file(&self, source: &Path) -> PathBuf {
        match self {
            SourceKind::Gguf => source.to_path_buf(),
            SourceKind::Llama | SourceKind::Bert => source.join("model.safetensors"),
        }
    }
}

pub(super) fn build_gguf(job: BuildJob<'_>) -> Result<Manifest, PackageError> {
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
pub(super) fn build_llama_safetensors(job: BuildJob<'_>) -> Result<Manifest, PackageError> {
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

pub(super) fn build_bert(job: BuildJob<'_>) -> Result<Manifest, PackageError> {
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
