//! The Llama decoder as an ONNX graph (see `shared/notes/onnx-llama.md`): fp32
//! activations, RMSNorm and skip-RMSNorm contrib ops, one packed QKV matmul,
//! `GroupQueryAttention` with fused rotary and a KV cache, a SwiGLU MLP with one packed
//! gate/up matmul, and a tied or separate lm_head.
//!
//! Two sources feed the same builder: a GGUF file, whose 4-/8-bit blocks are kept as
//! they are, and a Hugging Face checkpoint (`config.json` + `model.safetensors`, also
//! what our fine-tunes export), whose float weights are quantized to int8 or int4 blocks
//! or kept fp32, as [`BuildOptions::float_weights`] says.
//!
//! Inputs: `input_ids` i64 [batch, seq], `attention_mask` i64 [batch, total],
//! `past_key_values.{i}.key|value` f32 [batch, kv_heads, past, head_dim].
//! Outputs: `logits` f32 [batch, 1, vocab] (the last position; every position with
//! [`BuildOptions::all_logits`]), `present.{i}.key|value`.

use serde::Deserialize;

use crate::{
    gguf::{GgmlType, GgufError, GgufFile, quant},
    onnx::{
        Attr, Dim, GraphBuilder,
        graph::MS_DOMAIN,
        nbits::{self, MatMulOptions, NBitsWeight},
        proto::DataType,
    },
    safetensors::{SafetensorsError, SafetensorsFile},
};

/// Why a graph could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The file lacks or mistypes something the graph needs.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// The checkpoint lacks or misshapes a tensor.
    #[error(transparent)]
    Safetensors(#[from] SafetensorsError),
    /// `config.json` is not a llama configuration.
    #[error("config.json: {0}")]
    Config(String),
    /// The model is not one this builder makes.
    #[error("unsupported model: {0}")]
    Unsupported(String),
}

/// The hyperparameters the graph depends on.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub ffn: usize,
    pub rms_eps: f32,
    pub rope_theta: f32,
    pub context_length: usize,
}

impl LlamaConfig {
    /// Reads the `llama.*` keys.
    pub fn from_gguf(file: &GgufFile) -> Result<LlamaConfig, BuildError> {
        let architecture = file.get_str("general.architecture")?;
        if architecture != "llama" {
            return Err(BuildError::Unsupported(format!(
                "general.architecture = {architecture:?}, only \"llama\" is built"
            )));
        }
        let size = |key: &str| -> Result<usize, BuildError> {
            usize::try_from(file.get_u64(key)?)
                .map_err(|_| BuildError::Unsupported(format!("{key} is too large")))
        };
        let hidden = size("llama.embedding_length")?;
        let heads = size("llama.attention.head_count")?;
        let kv_heads = match file.get("llama.attention.head_count_kv") {
            Ok(_) => size("llama.attention.head_count_kv")?,
            Err(_) => heads,
        };
        let head_dim = head_dim(hidden, heads, kv_heads)?;
        if let Ok(rope_dims) = file.get_u64("llama.rope.dimension_count")
            && rope_dims as usize != head_dim
        {
            return Err(BuildError::Unsupported(format!(
                "partial rotary ({rope_dims} of {head_dim} dims)"
            )));
        }
        Ok(LlamaConfig {
            vocab_size: file
                .get_str_array("tokenizer.ggml.tokens")
                .map(|t| t.len())
                .or_else(|_| {
                    file.tensor("token_embd.weight")
                        .map(|t| t.dims.get(1).copied().unwrap_or(0) as usize)
                })?,
            hidden,
            layers: size("llama.block_count")?,
            heads,
            kv_heads,
            head_dim,
            ffn: size("llama.feed_forward_length")?,
            rms_eps: file.get_f32("llama.attention.layer_norm_rms_epsilon")?,
            rope_theta: file.get_f32("llama.rope.freq_base").unwrap_or(10_000.0),
            context_length: size("llama.context_length")?,
        })
    }

    /// Reads a Hugging Face `config.json` of a `LlamaForCausalLM`.
    pub fn from_hf_json(json: &str) -> Result<LlamaConfig, BuildError> {
        #[derive(Deserialize)]
        struct ModelType {
            model_type: Option<String>,
        }
        let config_error = |err: serde_json::Error| BuildError::Config(err.to_string());
        let ModelType { model_type } = serde_json::from_str(json).map_err(config_error)?;
        if model_type.as_deref() != Some("llama") {
            return Err(BuildError::Unsupported(format!(
                "model_type = {model_type:?}, only \"llama\" is built"
            )));
        }
        let raw: HfConfig = serde_json::from_str(json).map_err(config_error)?;
        if raw.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(BuildError::Unsupported("rope_scaling".to_owned()));
        }
        let heads = raw.num_attention_heads;
        let kv_heads = raw.num_key_value_heads.unwrap_or(heads);
        let hidden = raw.hidden_size;
        let head_dim = head_dim(hidden, heads, kv_heads)?;
        if let Some(declared) = raw.head_dim.filter(|&d| d != head_dim) {
            return Err(BuildError::Unsupported(format!(
                "head_dim {declared} is not hidden_size / num_attention_heads = {head_dim}"
            )));
        }
        Ok(LlamaConfig {
            vocab_size: raw.vocab_size,
            hidden,
            layers: raw.num_hidden_layers,
            heads,
            kv_heads,
            head_dim,
            ffn: raw.intermediate_size,
            rms_eps: raw.rms_norm_eps,
            rope_theta: raw.rope_theta,
            context_length: raw.max_position_embeddings,
        })
    }
}

/// Each head's width, once the head counts are known to fit the model's width and
/// GroupQueryAttention.
fn head_dim(hidden: usize, heads: usize, kv_heads: usize) -> Result<usize, BuildError> {
    let fits =
        heads > 0 && kv_heads > 0 && hidden.is_multiple_of(heads) && heads.is_multiple_of(kv_heads);
    if !fits {
        return Err(BuildError::Unsupported(format!(
            "{heads} heads, {kv_heads} KV heads and width {hidden} do not divide"
        )));
    }
    let head_dim = hidden / heads;
    if !head_dim.is_multiple_of(16) {
        return Err(BuildError::Unsupported(format!(
            "head_dim {head_dim} (GroupQueryAttention needs a multiple of 16)"
        )));
    }
    Ok(head_dim)
}

/// The fields of a Hugging Face llama `config.json` the graph depends on.
#[derive(Deserialize)]
struct HfConfig {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: f32,
    #[serde(default = "default_rope_theta")]
    rope_theta: f32,
    max_position_embeddings: usize,
    rope_scaling: Option<serde_json::Value>,
}

fn default_rope_theta() -> f32 {
    10_000.0
}

pub use crate::onnx::nbits::Int8Kernel;

/// Choices that change speed, size or accuracy, not the model. The default quantizes
/// activations to int8 in every matmul (accuracy level 4, as llama.cpp does) and runs
/// them on our own kernel over the GGUF's blocks ([`Int8Kernel::Blocks`], see
/// [`slough_operators`]): on SmolLM2's Q4_1 GGUF it decodes about 2.3× as fast as
/// [`BuildOptions::EXACT`], and its perplexity is within llama.cpp's own on the same
/// file (the README has the figures). Float weights are stored as int8 blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(default)]
pub struct BuildOptions {
    /// `MatMulNBits` accuracy level inside the layers.
    pub accuracy_level: i64,
    /// `MatMulNBits` accuracy level of the lm_head (argmax is most sensitive here).
    pub lm_head_accuracy_level: i64,
    /// What runs the matmuls at accuracy level 4: our kernel, or `MatMulNBits` (kept
    /// for comparison).
    pub int8_kernel: Int8Kernel,
    /// How float matrices (safetensors, F32/F16/BF16 GGUF tensors, and GGUF types with no
    /// exact block mapping) are stored.
    pub float_weights: FloatWeights,
    /// `logits` for every position of the input ([batch, sequence, vocab]) instead of the
    /// last one only ([batch, 1, vocab]). Generation needs the last one; scoring a text
    /// (teacher forcing, parity checks) needs all. Without it the lm_head runs on one
    /// position per row, which is a third of a short prompt's prefill.
    pub all_logits: bool,
    /// An int8 lm_head (a tied GGUF embedding is Q8_0) in two passes: every token's
    /// logit from a 4-bit copy of the matrix, then the best `lm_head_shortlist` of them
    /// computed again in fp32 from the int8 rows. A decode step reads every weight once
    /// and is bound by memory bandwidth; on SmolLM2 the int8 lm_head is a third of those
    /// bytes and its 4-bit copy 60 % of it. The likeliest tokens (the argmax, most of
    /// what top-p keeps) get the int8 logit; the tail keeps the draft's noise (on
    /// SmolLM2, perplexity 0.4 higher with 64). 0: one int8 pass. The package is larger
    /// by the copy (18 MB on SmolLM2).
    #[serde(default)]
    pub lm_head_shortlist: usize,
}

impl BuildOptions {
    /// fp32 arithmetic on the stored weights: the graph that matches candle's reference.
    pub const EXACT: BuildOptions = BuildOptions {
        accuracy_level: 0,
        lm_head_accuracy_level: 0,
        int8_kernel: Int8Kernel::Blocks,
        float_weights: FloatWeights::Int8,
        all_logits: false,
        lm_head_shortlist: 0,
    };
}

impl Default for BuildOptions {
    fn default() -> BuildOptions {
        BuildOptions {
            accuracy_level: 4,
            lm_head_accuracy_level: 4,
            lm_head_shortlist: 64,
            ..BuildOptions::EXACT
        }
    }
}

/// How float weight matrices are stored in the graph.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FloatWeights {
    /// Q8_0-style int8 blocks of 32 (near-lossless, a quarter of fp32's size).
    #[default]
    Int8,
    /// Q4_0-style int4 blocks of 32 (an eighth of fp32's size; the embedding stays int8).
    Int4,
    /// Plain fp32 `MatMul`s (exact, largest).
    Fp32,
}

impl std::fmt::Display for FloatWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FloatWeights::Int8 => "int8",
            FloatWeights::Int4 => "int4",
            FloatWeights::Fp32 => "fp32",
        })
    }
}

/// Builds the decoder graph of a llama GGUF file; returns the serialized model.
pub fn build_from_gguf(file: &GgufFile, options: BuildOptions) -> Result<Vec<u8>, BuildError> {
    let config = LlamaConfig::from_gguf(file)?;
    build(&config, &GgufWeights(file), options)
}

/// Builds the decoder graph of a Hugging Face llama checkpoint whose `config.json` gave
/// `config`; returns the serialized model.
pub fn build_from_safetensors(
    config: &LlamaConfig,
    weights: &SafetensorsFile,
    options: BuildOptions,
) -> Result<Vec<u8>, BuildError> {
    build(config, &HfWeights(weights), options)
}

/// A weight of the decoder, whatever its name in the source.
#[derive(Debug, Clone, Copy)]
enum Weight {
    Embedding,
    AttnNorm(usize),
    Q(usize),
    K(usize),
    V(usize),
    O(usize),
    FfnNorm(usize),
    Gate(usize),
    Up(usize),
    Down(usize),
    OutputNorm,
    LmHead,
}

impl Weight {
    fn gguf_name(self) -> String {
        match self {
            Weight::Embedding => "token_embd.weight".to_owned(),
            Weight::AttnNorm(i) => format!("blk.{i}.attn_norm.weight"),
            Weight::Q(i) => format!("blk.{i}.attn_q.weight"),
            Weight::K(i) => format!("blk.{i}.attn_k.weight"),
            Weight::V(i) => format!("blk.{i}.attn_v.weight"),
            Weight::O(i) => format!("blk.{i}.attn_output.weight"),
            Weight::FfnNorm(i) => format!("blk.{i}.ffn_norm.weight"),
            Weight::Gate(i) => format!("blk.{i}.ffn_gate.weight"),
            Weight::Up(i) => format!("blk.{i}.ffn_up.weight"),
            Weight::Down(i) => format!("blk.{i}.ffn_down.weight"),
            Weight::OutputNorm => "output_norm.weight".to_owned(),
            Weight::LmHead => "output.weight".to_owned(),
        }
    }

    fn hf_name(self) -> String {
        match self {
            Weight::Embedding => "model.embed_tokens.weight".to_owned(),
            Weight::AttnNorm(i) => format!("model.layers.{i}.input_layernorm.weight"),
            Weight::Q(i) => format!("model.layers.{i}.self_attn.q_proj.weight"),
            Weight::K(i) => format!("model.layers.{i}.self_attn.k_proj.weight"),
            Weight::V(i) => format!("model.layers.{i}.self_attn.v_proj.weight"),
            Weight::O(i) => format!("model.layers.{i}.self_attn.o_proj.weight"),
            Weight::FfnNorm(i) => format!("model.layers.{i}.post_attention_layernorm.weight"),
            Weight::Gate(i) => format!("model.layers.{i}.mlp.gate_proj.weight"),
            Weight::Up(i) => format!("model.layers.{i}.mlp.up_proj.weight"),
            Weight::Down(i) => format!("model.layers.{i}.mlp.down_proj.weight"),
            Weight::OutputNorm => "model.norm.weight".to_owned(),
            Weight::LmHead => "lm_head.weight".to_owned(),
        }
    }
}

/// A weight matrix of `n` rows (output features) by `k` columns (input features).
enum Matrix {
    /// 4-/8-bit blocks for `MatMulNBits`.
    Blocks(NBitsWeight),
    /// Row-major float values.
    Float {
        n: usize,
        k: usize,
        values: Vec<f32>,
    },
}

/// Where the builder reads weights from.
trait Weights {
    /// A vector of `len` floats (the norms).
    fn vector(&self, weight: Weight, len: usize) -> Result<Vec<f32>, BuildError>;
    /// An `n × k` matrix; `None` when the source does not have it (a tied lm_head).
    fn matrix(&self, weight: Weight, n: usize, k: usize) -> Result<Option<Matrix>, BuildError>;
    /// Whether each head's Q/K rows hold rotary pairs next to each other (llama.cpp's
    /// permuted order) rather than in two halves (Hugging Face's order).
    fn rotary_interleaved(&self) -> bool;
}

struct GgufWeights<'a>(&'a GgufFile);

impl Weights for GgufWeights<'_> {
    fn vector(&self, weight: Weight, len: usize) -> Result<Vec<f32>, BuildError> {
        let name = weight.gguf_name();
        let values = self.0.dequantize(self.0.tensor(&name)?)?;
        if values.len() != len {
            return Err(BuildError::Unsupported(format!(
                "{name} has {} values, expected {len}",
                values.len()
            )));
        }
        Ok(values)
    }

    fn matrix(&self, weight: Weight, n: usize, k: usize) -> Result<Option<Matrix>, BuildError> {
        let name = weight.gguf_name();
        let Ok(tensor) = self.0.tensor(&name) else {
            return Ok(None);
        };
        if tensor.dims[..] != [k as u64, n as u64] {
            return Err(BuildError::Unsupported(format!(
                "{name} has dims {:?}, expected [{k}, {n}]",
                tensor.dims
            )));
        }
        let bytes = self.0.tensor_bytes(tensor)?;
        if let Some(blocks) = nbits::from_ggml(tensor.ggml_type, bytes, n, k) {
            return Ok(Some(Matrix::Blocks(blocks)));
        }
        let values = self.0.dequantize(tensor)?;
        Ok(Some(Matrix::Float { n, k, values }))
    }

    fn rotary_interleaved(&self) -> bool {
        true
    }
}

struct HfWeights<'a>(&'a SafetensorsFile);

impl Weights for HfWeights<'_> {
    fn vector(&self, weight: Weight, len: usize) -> Result<Vec<f32>, BuildError> {
        Ok(self.0.f32(&weight.hf_name(), &[len])?)
    }

    fn matrix(&self, weight: Weight, n: usize, k: usize) -> Result<Option<Matrix>, BuildError> {
        let name = weight.hf_name();
        if !self.0.contains(&name) {
            return Ok(None);
        }
        let values = self.0.f32(&name, &[n, k])?;
        Ok(Some(Matrix::Float { n, k, values }))
    }

    fn rotary_interleaved(&self) -> bool {
        false
    }
}

/// Looks up a matrix the model cannot do without.
fn required(
    weights: &dyn Weights,
    weight: Weight,
    n: usize,
    k: usize,
) -> Result<Matrix, BuildError> {
    weights
        .matrix(weight, n, k)?
        .ok_or_else(|| BuildError::Unsupported(format!("the source has no {weight:?} matrix")))
}

/// Builds the decoder graph, block by block: inputs and outputs, the mask helpers, the
/// embedding, each layer (attention, then MLP, their norms fused with the residual
/// adds), the last positions, the final norm and the lm_head.
fn build(
    config: &LlamaConfig,
    weights: &dyn Weights,
    options: BuildOptions,
) -> Result<Vec<u8>, BuildError> {
    let mut g = GraphBuilder::new("llama");
    declare_io(&mut g, config, options);
    let mask = Mask::build(&mut g);
    let (cos, sin) = rotary(&mut g, config);
    let mut decoder = Decoder {
        g,
        config,
        weights,
        options,
        mask,
        cos,
        sin,
    };

    let embedding = required(weights, Weight::Embedding, config.vocab_size, config.hidden)?;
    let embedding = match embedding {
        Matrix::Float { .. } if options.float_weights != FloatWeights::Fp32 => {
            store(embedding, FloatWeights::Int8)?
        }
        other => other,
    };
    let mut stream = Residual {
        residual: embed(&mut decoder.g, &embedding),
        hidden: String::new(),
        pending: None,
    };
    for i in 0..config.layers {
        let normed =
            decoder.norm_in(&mut stream, Weight::AttnNorm(i), &format!("l{i}/attn_norm"))?;
        stream.hidden = normed;
        let attended = decoder.attention(i, &stream.hidden)?;
        stream.pending = Some(attended);
        let normed = decoder.norm_in(&mut stream, Weight::FfnNorm(i), &format!("l{i}/ffn_norm"))?;
        stream.pending = Some(decoder.mlp(i, &normed)?);
    }
    if !options.all_logits {
        decoder.keep_last_positions(&mut stream);
    }
    let hidden = decoder.final_norm(stream)?;
    decoder.lm_head(&hidden, embedding)?;
    Ok(decoder.g.into_bytes())
}

/// The graph's inputs (`input_ids`, `attention_mask`, the past KV) and outputs
/// (`logits`, the present KV).
fn declare_io(g: &mut GraphBuilder, config: &LlamaConfig, options: BuildOptions) {
    let batch = || Dim::Named("batch".into());
    g.input(
        "input_ids",
        DataType::Int64,
        &[batch(), Dim::Named("sequence".into())],
    );
    g.input(
        "attention_mask",
        DataType::Int64,
        &[batch(), Dim::Named("total".into())],
    );
    let positions = if options.all_logits {
        Dim::Named("sequence".into())
    } else {
        Dim::Fixed(1)
    };
    g.output(
        "logits",
        DataType::Float,
        &[batch(), positions, Dim::Fixed(config.vocab_size as i64)],
    );
    let kv_dims = |length: &str| {
        [
            batch(),
            Dim::Fixed(config.kv_heads as i64),
            Dim::Named(length.into()),
            Dim::Fixed(config.head_dim as i64),
        ]
    };
    for i in 0..config.layers {
        for part in ["key", "value"] {
            g.input(
                &format!("past_key_values.{i}.{part}"),
                DataType::Float,
                &kv_dims("past"),
            );
            g.output(
                &format!("present.{i}.{part}"),
                DataType::Float,
                &kv_dims("total"),
            );
        }
    }
}

/// What attention and the last-position pick read from `attention_mask`.
struct Mask {
    /// Per row: its total length − 1 (int32, for GroupQueryAttention).
    seqlens_k: String,
    /// The mask's width (int32).
    total: String,
    /// Per row: its total length − 1 (int64).
    last: String,
    /// The mask's width (int64).
    width: String,
    /// The constant 1 (int64).
    one: String,
}

impl Mask {
    /// seqlens_k = sum(mask) − 1 per row; total_sequence_length = mask width.
    fn build(g: &mut GraphBuilder) -> Mask {
        let to_int32 = [("to", Attr::Int(DataType::Int32 as i64))];
        let axis1 = g.initializer_i64("const.axis1", &[1], &[1]);
        let one = g.initializer_i64("const.one", &[], &[1]);
        let lengths = g.op(
            "",
            "ReduceSum",
            "mask/lengths",
            &["attention_mask", &axis1],
            &[("keepdims", Attr::Int(0))],
        );
        let last = g.op("", "Sub", "mask/last", &[&lengths, &one], &[]);
        let seqlens_k = g.op("", "Cast", "mask/seqlens_k", &[&last], &to_int32);
        let shape = g.op("", "Shape", "mask/shape", &["attention_mask"], &[]);
        let width = g.op(
            "",
            "Gather",
            "mask/width",
            &[&shape, &one],
            &[("axis", Attr::Int(0))],
        );
        let total = g.op("", "Cast", "mask/total", &[&width], &to_int32);
        Mask {
            seqlens_k,
            total,
            last,
            width,
            one,
        }
    }
}

/// The rotary caches as initializers: `cos` and `sin`, [context, head_dim / 2].
fn rotary(g: &mut GraphBuilder, config: &LlamaConfig) -> (String, String) {
    let (cos, sin) = rotary_caches(config);
    let half = (config.head_dim / 2) as i64;
    let rows = config.context_length as i64;
    (
        g.initializer_f32("rotary.cos", &[rows, half], &cos),
        g.initializer_f32("rotary.sin", &[rows, half], &sin),
    )
}

/// The residual stream between blocks: the running sum, the last normalized hidden
/// state, and the output of the last block not yet added to the sum (the next norm
/// adds it, fused).
struct Residual {
    residual: String,
    hidden: String,
    pending: Option<String>,
}

/// The graph being built and what every block reads.
struct Decoder<'a> {
    g: GraphBuilder,
    config: &'a LlamaConfig,
    weights: &'a dyn Weights,
    options: BuildOptions,
    mask: Mask,
    cos: String,
    sin: String,
}

impl Decoder<'_> {
    fn layer_opts(&self) -> MatMulOptions {
        MatMulOptions {
            accuracy_level: self.options.accuracy_level,
            int8_kernel: self.options.int8_kernel,
        }
    }

    /// A matrix of `weight` as the options store it.
    fn matrix(&self, weight: Weight, rows: usize, columns: usize) -> Result<Matrix, BuildError> {
        store(
            required(self.weights, weight, rows, columns)?,
            self.options.float_weights,
        )
    }

    /// RMSNorm of the stream (`weight`'s gamma): the first one plain, the others fused
    /// with adding the pending block output to the residual.
    fn norm_in(
        &mut self,
        stream: &mut Residual,
        weight: Weight,
        name: &str,
    ) -> Result<String, BuildError> {
        let gamma = norm(&mut self.g, self.weights, weight, self.config.hidden)?;
        Ok(match stream.pending.take() {
            None => self.g.op(
                "",
                "SimplifiedLayerNormalization",
                name,
                &[&stream.residual, &gamma],
                &rms_attrs(self.config),
            ),
            Some(block) => {
                let [normed, _, _, sum] = self.g.node(
                    MS_DOMAIN,
                    "SkipSimplifiedLayerNormalization",
                    name,
                    &[&block, &stream.residual, &gamma],
                    &[("epsilon", Attr::Float(self.config.rms_eps))],
                );
                stream.residual = sum;
                normed
            }
        })
    }

    /// Layer `i`'s attention: one packed QKV matmul, GroupQueryAttention (rotary fused,
    /// the KV cache in and out), the output projection.
    fn attention(&mut self, i: usize, hidden: &str) -> Result<String, BuildError> {
        let config = self.config;
        let (hidden_size, q_rows, kv_rows) = (
            config.hidden,
            config.heads * config.head_dim,
            config.kv_heads * config.head_dim,
        );
        let qkv = vec![
            self.matrix(Weight::Q(i), q_rows, hidden_size)?,
            self.matrix(Weight::K(i), kv_rows, hidden_size)?,
            self.matrix(Weight::V(i), kv_rows, hidden_size)?,
        ];
        let layer_opts = self.layer_opts();
        let qkv = fused_matmul(&mut self.g, &format!("l{i}/qkv"), hidden, qkv, layer_opts);
        let past_key = format!("past_key_values.{i}.key");
        let past_value = format!("past_key_values.{i}.value");
        let attn_out = format!("l{i}/attn/out");
        self.g.node_named(
            MS_DOMAIN,
            "GroupQueryAttention",
            &format!("l{i}/attn"),
            &[
                &qkv,
                "",
                "",
                &past_key,
                &past_value,
                &self.mask.seqlens_k,
                &self.mask.total,
                &self.cos,
                &self.sin,
            ],
            &[
                attn_out.clone(),
                format!("present.{i}.key"),
                format!("present.{i}.value"),
            ],
            &[
                ("num_heads", Attr::Int(config.heads as i64)),
                ("kv_num_heads", Attr::Int(config.kv_heads as i64)),
                ("scale", Attr::Float(1.0 / (config.head_dim as f32).sqrt())),
                ("do_rotary", Attr::Int(1)),
                (
                    "rotary_interleaved",
                    Attr::Int(i64::from(self.weights.rotary_interleaved())),
                ),
                ("local_window_size", Attr::Int(-1)),
            ],
        );
        let o = self.matrix(Weight::O(i), hidden_size, q_rows)?;
        Ok(matmul(
            &mut self.g,
            &format!("l{i}/o_proj"),
            &attn_out,
            &o,
            layer_opts,
        ))
    }

    /// Layer `i`'s SwiGLU MLP: gate and up in one matmul, then split; silu(gate) · up;
    /// the down projection.
    fn mlp(&mut self, i: usize, normed: &str) -> Result<String, BuildError> {
        let (hidden_size, ffn) = (self.config.hidden, self.config.ffn);
        let gate_up = vec![
            self.matrix(Weight::Gate(i), ffn, hidden_size)?,
            self.matrix(Weight::Up(i), ffn, hidden_size)?,
        ];
        let layer_opts = self.layer_opts();
        let g = &mut self.g;
        let gate_up = fused_matmul(g, &format!("l{i}/gate_up"), normed, gate_up, layer_opts);
        let halves = g.initializer_i64(
            &format!("l{i}/gate_up.split"),
            &[2],
            &[ffn as i64, ffn as i64],
        );
        let [gate, up] = g.node(
            "",
            "Split",
            &format!("l{i}/gate_up/split"),
            &[&gate_up, &halves],
            &[("axis", Attr::Int(-1))],
        );
        let sigmoid = g.op("", "Sigmoid", &format!("l{i}/sigmoid"), &[&gate], &[]);
        let silu = g.op("", "Mul", &format!("l{i}/silu"), &[&gate, &sigmoid], &[]);
        let act = g.op("", "Mul", &format!("l{i}/swiglu"), &[&silu, &up], &[]);
        let down = self.matrix(Weight::Down(i), hidden_size, ffn)?;
        Ok(matmul(
            &mut self.g,
            &format!("l{i}/down"),
            &act,
            &down,
            layer_opts,
        ))
    }

    /// Keeps only each row's last position of the stream, for the lm_head (the final
    /// norm needs the MLP output and the residual there). A row's last position in this
    /// input is its length − 1 − (mask width − input width): right-padded prompts
    /// prefilled together each get their own; decode rows shorter than the longest clip
    /// to 0.
    fn keep_last_positions(&mut self, stream: &mut Residual) {
        let g = &mut self.g;
        let Mask {
            last, width, one, ..
        } = &self.mask;
        let ids_shape = g.op("", "Shape", "last/ids_shape", &["input_ids"], &[]);
        let sequence = g.op(
            "",
            "Gather",
            "last/sequence",
            &[&ids_shape, one],
            &[("axis", Attr::Int(0))],
        );
        let past = g.op("", "Sub", "last/past", &[width, &sequence], &[]);
        let position = g.op("", "Sub", "last/position", &[last, &past], &[]);
        let highest = g.op("", "Sub", "last/highest", &[&sequence, one], &[]);
        let zero = g.initializer_i64("const.zero", &[], &[0]);
        let position = g.op(
            "",
            "Clip",
            "last/clipped",
            &[&position, &zero, &highest],
            &[],
        );
        let column = g.initializer_i64("last.column", &[3], &[-1, 1, 1]);
        let position = g.op("", "Reshape", "last/column", &[&position, &column], &[]);
        let across = g.initializer_i64("last.across", &[3], &[1, 1, self.config.hidden as i64]);
        let index = g.op("", "Expand", "last/index", &[&position, &across], &[]);
        let mut pick = |tensor: &str, label: &str| {
            g.op(
                "",
                "GatherElements",
                &format!("last/{label}"),
                &[tensor, &index],
                &[("axis", Attr::Int(1))],
            )
        };
        stream.residual = pick(&stream.residual, "residual");
        match stream.pending.take() {
            Some(block) => stream.pending = Some(pick(&block, "mlp")),
            None => stream.hidden = pick(&stream.hidden, "hidden"),
        }
    }

    /// The final norm, fused with adding the last MLP output to the residual.
    fn final_norm(&mut self, stream: Residual) -> Result<String, BuildError> {
        let gamma = norm(
            &mut self.g,
            self.weights,
            Weight::OutputNorm,
            self.config.hidden,
        )?;
        Ok(match stream.pending {
            Some(block) => self.g.op(
                MS_DOMAIN,
                "SkipSimplifiedLayerNormalization",
                "final_norm",
                &[&block, &stream.residual, &gamma],
                &[("epsilon", Attr::Float(self.config.rms_eps))],
            ),
            None => stream.hidden,
        })
    }

    /// The lm_head, its own matrix or the embedding's (tied), into `logits`.
    fn lm_head(&mut self, hidden: &str, embedding: Matrix) -> Result<(), BuildError> {
        let (vocab, hidden_size) = (self.config.vocab_size, self.config.hidden);
        let lm_head = match self.weights.matrix(Weight::LmHead, vocab, hidden_size)? {
            Some(separate) => store(separate, self.options.float_weights)?,
            // Tied: the embedding's own weights (already int8 blocks or fp32).
            None => embedding,
        };
        let options = MatMulOptions {
            accuracy_level: self.options.lm_head_accuracy_level,
            int8_kernel: self.options.int8_kernel,
        };
        let shortlist = self.options.lm_head_shortlist;
        let logits = match &lm_head {
            Matrix::Blocks(int8) if int8.bits == 8 && shortlist > 0 && shortlist < vocab => {
                shortlisted_lm_head(&mut self.g, hidden, int8, shortlist, options)?
            }
            _ => matmul(&mut self.g, "lm_head", hidden, &lm_head, options),
        };
        self.g.node_named(
            "",
            "Identity",
            "logits",
            &[&logits],
            &["logits".to_owned()],
            &[],
        );
        Ok(())
    }
}

/// `hidden · matrixᵀ` in two passes (see [`BuildOptions::lm_head_shortlist`]): every
/// row's draft from a Q4_1 copy of the int8 matrix, then the `shortlist` best drafts of
/// each position replaced by fp32 products with the int8 rows (`BlockGather` dequantizes
/// them; on a tied matrix it shares the embedding's initializers).
fn shortlisted_lm_head(
    g: &mut GraphBuilder,
    hidden: &str,
    int8: &NBitsWeight,
    shortlist: usize,
    options: MatMulOptions,
) -> Result<String, BuildError> {
    let (n, k) = (int8.n, int8.k);
    let draft = quant::quantize(GgmlType::Q4_1, &int8.dequantize())
        .and_then(|bytes| nbits::from_ggml(GgmlType::Q4_1, &bytes, n, k))
        .ok_or_else(|| BuildError::Unsupported(format!("the {n}×{k} lm_head has no 4-bit copy")))?;
    let drafts = nbits::matmul(g, "lm_head/draft", hidden, &draft, options);
    let count = g.initializer_i64("lm_head.shortlist", &[1], &[shortlist as i64]);
    let [_, ids] = g.node(
        "",
        "TopK",
        "lm_head/shortlist",
        &[&drafts, &count],
        &[("axis", Attr::Int(-1)), ("sorted", Attr::Int(0))],
    );
    // [.., shortlist, K] · [.., K, 1] → [.., shortlist, 1]
    let rows = nbits::gather(g, "lm_head/rows", &ids, int8);
    let last = g.initializer_i64("lm_head.last_axis", &[1], &[-1]);
    let column = g.op("", "Unsqueeze", "lm_head/column", &[hidden, &last], &[]);
    let exact = g.op("", "MatMul", "lm_head/exact", &[&rows, &column], &[]);
    let exact = g.op("", "Squeeze", "lm_head/exact_row", &[&exact, &last], &[]);
    Ok(g.op(
        "",
        "ScatterElements",
        "lm_head",
        &[&drafts, &ids, &exact],
        &[("axis", Attr::Int(-1))],
    ))
}

/// A matrix as the options store it: blocks stay blocks; float values become int8 or
/// int4 blocks, or stay fp32.
fn store(matrix: Matrix, float_weights: FloatWeights) -> Result<Matrix, BuildError> {
    let Matrix::Float { n, k, values } = matrix else {
        return Ok(matrix);
    };
    let ggml_type = match float_weights {
        FloatWeights::Fp32 => return Ok(Matrix::Float { n, k, values }),
        FloatWeights::Int8 => GgmlType::Q8_0,
        FloatWeights::Int4 => GgmlType::Q4_0,
    };
    let quantized = quant::quantize(ggml_type, &values)
        .filter(|_| k.is_multiple_of(nbits::BLOCK))
        .and_then(|bytes| nbits::from_ggml(ggml_type, &bytes, n, k))
        .ok_or_else(|| {
            BuildError::Unsupported(format!(
                "a {n}×{k} matrix cannot be cut into blocks of {} columns; build with fp32 weights",
                nbits::BLOCK
            ))
        })?;
    Ok(Matrix::Blocks(quantized))
}

/// `input` times several matrices, the outputs side by side (Q, K and V; gate and up):
/// one matmul over the stacked matrices when they are stored alike (rows of the first,
/// then the next...), else one matmul each and a `Concat`.
fn fused_matmul(
    g: &mut GraphBuilder,
    name: &str,
    input: &str,
    parts: Vec<Matrix>,
    options: MatMulOptions,
) -> String {
    let alike = |a: &Matrix, b: &Matrix| match (a, b) {
        (Matrix::Blocks(a), Matrix::Blocks(b)) => {
            a.bits == b.bits && a.k == b.k && a.mins.is_some() == b.mins.is_some()
        }
        (Matrix::Float { k: a, .. }, Matrix::Float { k: b, .. }) => a == b,
        _ => false,
    };
    if !parts.windows(2).all(|pair| alike(&pair[0], &pair[1])) {
        let outputs: Vec<String> = parts
            .iter()
            .enumerate()
            .map(|(j, part)| matmul(g, &format!("{name}.{j}"), input, part, options))
            .collect();
        let outputs: Vec<&str> = outputs.iter().map(String::as_str).collect();
        return g.op("", "Concat", name, &outputs, &[("axis", Attr::Int(-1))]);
    }
    let mut parts = parts.into_iter();
    let Some(first) = parts.next() else {
        return input.to_owned();
    };
    let stacked = parts.fold(first, below);
    matmul(g, name, input, &stacked, options)
}

/// `b`'s rows below `a`'s (both stored alike, as [`fused_matmul`] checks).
fn below(a: Matrix, b: Matrix) -> Matrix {
    match (a, b) {
        (Matrix::Blocks(mut a), Matrix::Blocks(b)) => {
            a.n += b.n;
            a.b.extend(b.b);
            a.scales.extend(b.scales);
            if let (Some(mins), Some(more)) = (&mut a.mins, b.mins) {
                mins.extend(more);
            }
            Matrix::Blocks(a)
        }
        (
            Matrix::Float { n, k, mut values },
            Matrix::Float {
                n: more, values: v, ..
            },
        ) => {
            values.extend(v);
            Matrix::Float {
                n: n + more,
                k,
                values,
            }
        }
        (a, _) => a,
    }
}

/// `input [.., K] · matrixᵀ → [.., N]`: `MatMulNBits` on blocks, `MatMul` on floats.
fn matmul(
    g: &mut GraphBuilder,
    name: &str,
    input: &str,
    matrix: &Matrix,
    options: MatMulOptions,
) -> String {
    let (n, k, values) = match matrix {
        Matrix::Blocks(blocks) => return nbits::matmul(g, name, input, blocks, options),
        Matrix::Float { n, k, values } => (*n, *k, values),
    };
    let transposed: Vec<f32> = (0..k)
        .flat_map(|col| (0..n).map(move |row| values[row * k + col]))
        .collect();
    let weight = g.initializer_f32(
        &format!("{name}.weight"),
        &[k as i64, n as i64],
        &transposed,
    );
    g.op("", "MatMul", name, &[input, &weight], &[])
}

/// The token embedding: blocks read by our `BlockGather` (sharing their initializers
/// with a tied lm_head on our kernel), else a float table.
fn embed(g: &mut GraphBuilder, table: &Matrix) -> String {
    let (n, k, values) = match table {
        Matrix::Blocks(blocks) => return nbits::gather(g, "token_embd", "input_ids", blocks),
        Matrix::Float { n, k, values } => (*n, *k, values),
    };
    let table = g.initializer_f32("token_embd.weight", &[n as i64, k as i64], values);
    g.op(
        "",
        "Gather",
        "embed",
        &[&table, "input_ids"],
        &[("axis", Attr::Int(0))],
    )
}

fn norm(
    g: &mut GraphBuilder,
    weights: &dyn Weights,
    weight: Weight,
    len: usize,
) -> Result<String, BuildError> {
    let values = weights.vector(weight, len)?;
    Ok(g.initializer_f32(&weight.gguf_name(), &[len as i64], &values))
}

fn rms_attrs(config: &LlamaConfig) -> [(&'static str, Attr); 3] {
    [
        ("epsilon", Attr::Float(config.rms_eps)),
        ("axis", Attr::Int(-1)),
        ("stash_type", Attr::Int(1)),
    ]
}

/// `cos[p][j] = cos(p · θ^(−2j/head_dim))`, likewise `sin`, for every position.
fn rotary_caches(config: &LlamaConfig) -> (Vec<f32>, Vec<f32>) {
    let half = config.head_dim / 2;
    let theta = f64::from(config.rope_theta);
    let inv: Vec<f64> = (0..half)
        .map(|j| theta.powf(-(2.0 * j as f64) / config.head_dim as f64))
        .collect();
    let angles = (0..config.context_length).flat_map(|p| inv.iter().map(move |f| p as f64 * f));
    let (mut cos, mut sin) = (Vec::new(), Vec::new());
    for angle in angles {
        cos.push(angle.cos() as f32);
        sin.push(angle.sin() as f32);
    }
    (cos, sin)
}
