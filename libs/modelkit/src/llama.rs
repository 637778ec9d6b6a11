//! The Llama decoder as an ONNX graph, built from a GGUF file without requantizing
//! (see `shared/notes/onnx-llama.md`): fp32 activations, RMSNorm and skip-RMSNorm
//! contrib ops, one packed QKV `MatMulNBits`, `GroupQueryAttention` with fused rotary
//! and a KV cache, a SwiGLU MLP, and a tied or separate lm_head.
//!
//! Inputs: `input_ids` i64 [batch, seq], `attention_mask` i64 [batch, total],
//! `past_key_values.{i}.key|value` f32 [batch, kv_heads, past, head_dim].
//! Outputs: `logits` f32 [batch, seq, vocab], `present.{i}.key|value`.

use crate::{
    gguf::{GgmlType, GgufError, GgufFile, TensorInfo, quant},
    onnx::{
        Attr, Dim, GraphBuilder,
        graph::MS_DOMAIN,
        nbits::{self, MatMulOptions, NBitsWeight},
        proto::DataType,
    },
};

/// Why a graph could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The file lacks or mistypes something the graph needs.
    #[error(transparent)]
    Gguf(#[from] GgufError),
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
        if heads == 0 || kv_heads == 0 || hidden % heads != 0 || heads % kv_heads != 0 {
            return Err(BuildError::Unsupported(format!(
                "{heads} heads, {kv_heads} KV heads and width {hidden} do not divide"
            )));
        }
        let head_dim = hidden / heads;
        if let Ok(rope_dims) = file.get_u64("llama.rope.dimension_count")
            && rope_dims as usize != head_dim
        {
            return Err(BuildError::Unsupported(format!(
                "partial rotary ({rope_dims} of {head_dim} dims)"
            )));
        }
        if head_dim % 16 != 0 {
            return Err(BuildError::Unsupported(format!(
                "head_dim {head_dim} (GroupQueryAttention needs a multiple of 16)"
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
}

/// Choices that change speed or accuracy, not the model. The default (accuracy level 0
/// everywhere) computes in fp32 on the exact weights.
#[derive(Debug, Clone, Copy, Default)]
pub struct BuildOptions {
    /// `MatMulNBits` accuracy level inside the layers.
    pub accuracy_level: i64,
    /// `MatMulNBits` accuracy level of the lm_head (argmax is most sensitive here).
    pub lm_head_accuracy_level: i64,
}

/// Builds the decoder graph of a llama GGUF file; returns the serialized model.
pub fn build_from_gguf(file: &GgufFile, options: BuildOptions) -> Result<Vec<u8>, BuildError> {
    let config = LlamaConfig::from_gguf(file)?;
    let mut g = GraphBuilder::new("llama");
    let batch = || Dim::Named("batch".into());
    let layer_opts = MatMulOptions {
        accuracy_level: options.accuracy_level,
    };

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
    g.output(
        "logits",
        DataType::Float,
        &[
            batch(),
            Dim::Named("sequence".into()),
            Dim::Fixed(config.vocab_size as i64),
        ],
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

    // seqlens_k = sum(mask) − 1 per row; total_sequence_length = mask width.
    let axis1 = g.initializer_i64("const.axis1", &[1], &[1]);
    let one = g.initializer_i64("const.one", &[], &[1]);
    let lengths = g
        .node(
            "",
            "ReduceSum",
            "mask/lengths",
            &["attention_mask", &axis1],
            1,
            &[("keepdims", Attr::Int(0))],
        )
        .remove(0);
    let last = g
        .node("", "Sub", "mask/last", &[&lengths, &one], 1, &[])
        .remove(0);
    let seqlens_k = g
        .node(
            "",
            "Cast",
            "mask/seqlens_k",
            &[&last],
            1,
            &[("to", Attr::Int(DataType::Int32 as i64))],
        )
        .remove(0);
    let shape = g
        .node("", "Shape", "mask/shape", &["attention_mask"], 1, &[])
        .remove(0);
    let width = g
        .node(
            "",
            "Gather",
            "mask/width",
            &[&shape, &one],
            1,
            &[("axis", Attr::Int(0))],
        )
        .remove(0);
    let total = g
        .node(
            "",
            "Cast",
            "mask/total",
            &[&width],
            1,
            &[("to", Attr::Int(DataType::Int32 as i64))],
        )
        .remove(0);

    let (cos, sin) = rotary_caches(&config);
    let half = (config.head_dim / 2) as i64;
    let cos = g.initializer_f32("rotary.cos", &[config.context_length as i64, half], &cos);
    let sin = g.initializer_f32("rotary.sin", &[config.context_length as i64, half], &sin);

    let embedding = file.tensor("token_embd.weight")?;
    let mut residual = embed(&mut g, file, embedding, &config)?;
    let mut hidden = String::new();
    let mut pending: Option<String> = None; // the MLP output not yet added to the residual
    for i in 0..config.layers {
        let attn_norm = norm_weight(&mut g, file, &format!("blk.{i}.attn_norm.weight"))?;
        hidden = match pending.take() {
            None => g
                .node(
                    "",
                    "SimplifiedLayerNormalization",
                    &format!("l{i}/attn_norm"),
                    &[&residual, &attn_norm],
                    1,
                    &rms_attrs(&config),
                )
                .remove(0),
            Some(mlp) => {
                let mut outs = g.node(
                    MS_DOMAIN,
                    "SkipSimplifiedLayerNormalization",
                    &format!("l{i}/attn_norm"),
                    &[&mlp, &residual, &attn_norm],
                    4,
                    &[("epsilon", Attr::Float(config.rms_eps))],
                );
                residual = outs.remove(3);
                outs.remove(0)
            }
        };

        let qkv = packed_qkv(file, i)?;
        let qkv = nbits::matmul(&mut g, &format!("l{i}/qkv"), &hidden, &qkv, layer_opts);
        let past_key = format!("past_key_values.{i}.key");
        let past_value = format!("past_key_values.{i}.value");
        let attn_out = format!("l{i}/attn/out");
        g.node_named(
            MS_DOMAIN,
            "GroupQueryAttention",
            &format!("l{i}/attn"),
            &[
                &qkv,
                "",
                "",
                &past_key,
                &past_value,
                &seqlens_k,
                &total,
                &cos,
                &sin,
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
                // GGUF keeps llama.cpp's permuted Q/K rows: rotary pairs are adjacent.
                ("rotary_interleaved", Attr::Int(1)),
                ("local_window_size", Attr::Int(-1)),
            ],
        );
        let o = matrix(file, &format!("blk.{i}.attn_output.weight"))?;
        let o = nbits::matmul(&mut g, &format!("l{i}/o_proj"), &attn_out, &o, layer_opts);

        let ffn_norm = norm_weight(&mut g, file, &format!("blk.{i}.ffn_norm.weight"))?;
        let mut outs = g.node(
            MS_DOMAIN,
            "SkipSimplifiedLayerNormalization",
            &format!("l{i}/ffn_norm"),
            &[&o, &residual, &ffn_norm],
            4,
            &[("epsilon", Attr::Float(config.rms_eps))],
        );
        residual = outs.remove(3);
        let normed = outs.remove(0);

        let gate = nbits::matmul(
            &mut g,
            &format!("l{i}/gate"),
            &normed,
            &matrix(file, &format!("blk.{i}.ffn_gate.weight"))?,
            layer_opts,
        );
        let up = nbits::matmul(
            &mut g,
            &format!("l{i}/up"),
            &normed,
            &matrix(file, &format!("blk.{i}.ffn_up.weight"))?,
            layer_opts,
        );
        let sigmoid = g
            .node("", "Sigmoid", &format!("l{i}/sigmoid"), &[&gate], 1, &[])
            .remove(0);
        let silu = g
            .node("", "Mul", &format!("l{i}/silu"), &[&gate, &sigmoid], 1, &[])
            .remove(0);
        let act = g
            .node("", "Mul", &format!("l{i}/swiglu"), &[&silu, &up], 1, &[])
            .remove(0);
        pending = Some(nbits::matmul(
            &mut g,
            &format!("l{i}/down"),
            &act,
            &matrix(file, &format!("blk.{i}.ffn_down.weight"))?,
            layer_opts,
        ));
    }
    let output_norm = norm_weight(&mut g, file, "output_norm.weight")?;
    if let Some(mlp) = pending {
        hidden = g
            .node(
                MS_DOMAIN,
                "SkipSimplifiedLayerNormalization",
                "final_norm",
                &[&mlp, &residual, &output_norm],
                1,
                &[("epsilon", Attr::Float(config.rms_eps))],
            )
            .remove(0);
    }
    let lm_head = match file.tensor("output.weight") {
        Ok(_) => matrix(file, "output.weight")?,
        Err(_) => as_nbits(file, embedding)?,
    };
    let logits = nbits::matmul(
        &mut g,
        "lm_head",
        &hidden,
        &lm_head,
        MatMulOptions {
            accuracy_level: options.lm_head_accuracy_level,
        },
    );
    g.node_named(
        "",
        "Identity",
        "logits",
        &[&logits],
        &["logits".to_owned()],
        &[],
    );
    Ok(g.into_bytes())
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

/// The token embedding: an 8-bit table read by `GatherBlockQuantized` (Q8_0 bytes as
/// they are), or a float table for other types.
fn embed(
    g: &mut GraphBuilder,
    file: &GgufFile,
    tensor: &TensorInfo,
    config: &LlamaConfig,
) -> Result<String, BuildError> {
    if tensor.ggml_type == GgmlType::Q8_0 {
        let table = as_nbits(file, tensor)?;
        let (v, h) = (table.n as i64, table.k as i64);
        let data = g.initializer("token_embd.qweight", DataType::Uint8, &[v, h], table.b);
        let scales = g.initializer_f32(
            "token_embd.scales",
            &[v, h / nbits::BLOCK as i64],
            &table.scales,
        );
        return Ok(g
            .node(
                MS_DOMAIN,
                "GatherBlockQuantized",
                "embed",
                &[&data, "input_ids", &scales],
                1,
                &[
                    ("bits", Attr::Int(8)),
                    ("block_size", Attr::Int(nbits::BLOCK as i64)),
                    ("gather_axis", Attr::Int(0)),
                    ("quantize_axis", Attr::Int(1)),
                ],
            )
            .remove(0));
    }
    let values = file.dequantize(tensor)?;
    let table = g.initializer_f32(
        "token_embd.weight",
        &[config.vocab_size as i64, config.hidden as i64],
        &values,
    );
    Ok(g.node(
        "",
        "Gather",
        "embed",
        &[&table, "input_ids"],
        1,
        &[("axis", Attr::Int(0))],
    )
    .remove(0))
}

fn norm_weight(g: &mut GraphBuilder, file: &GgufFile, name: &str) -> Result<String, BuildError> {
    let tensor = file.tensor(name)?;
    let values = file.dequantize(tensor)?;
    Ok(g.initializer_f32(name, &[values.len() as i64], &values))
}

/// A weight matrix as `MatMulNBits` inputs. Types without an exact mapping are
/// dequantized and requantized to Q8_0 (none in the default models).
fn matrix(file: &GgufFile, name: &str) -> Result<NBitsWeight, BuildError> {
    as_nbits(file, file.tensor(name)?)
}

fn as_nbits(file: &GgufFile, tensor: &TensorInfo) -> Result<NBitsWeight, BuildError> {
    let [k, n] = tensor.dims[..] else {
        return Err(BuildError::Unsupported(format!(
            "{} is not a matrix: {:?}",
            tensor.name, tensor.dims
        )));
    };
    let (n, k) = (n as usize, k as usize);
    let bytes = file.tensor_bytes(tensor)?;
    if let Some(weight) = nbits::from_ggml(tensor.ggml_type, bytes, n, k) {
        return Ok(weight);
    }
    let values = file.dequantize(tensor)?;
    let requantized = quant::quantize(GgmlType::Q8_0, &values).ok_or_else(|| {
        BuildError::Unsupported(format!(
            "{}: {k} columns are not a multiple of 32",
            tensor.name
        ))
    })?;
    nbits::from_ggml(GgmlType::Q8_0, &requantized, n, k).ok_or_else(|| {
        BuildError::Unsupported(format!("{} cannot be mapped to MatMulNBits", tensor.name))
    })
}

/// Q, K and V stacked into one matrix (rows Q, then K, then V) when they share a type.
fn packed_qkv(file: &GgufFile, layer: usize) -> Result<NBitsWeight, BuildError> {
    let parts = ["attn_q", "attn_k", "attn_v"]
        .map(|part| file.tensor(&format!("blk.{layer}.{part}.weight")));
    let [q, k, v] = parts;
    let (q, k, v) = (q?, k?, v?);
    let (q, k, v) = (as_nbits(file, q)?, as_nbits(file, k)?, as_nbits(file, v)?);
    if q.bits != k.bits
        || q.bits != v.bits
        || q.mins.is_some() != k.mins.is_some()
        || q.mins.is_some() != v.mins.is_some()
    {
        return Err(BuildError::Unsupported(format!(
            "layer {layer}: Q, K and V are quantized differently"
        )));
    }
    let stack = |f: fn(&NBitsWeight) -> &[f32]| {
        [&q, &k, &v]
            .iter()
            .flat_map(|w| f(w).to_vec())
            .collect::<Vec<f32>>()
    };
    Ok(NBitsWeight {
        bits: q.bits,
        n: q.n + k.n + v.n,
        k: q.k,
        b: [&q.b[..], &k.b[..], &v.b[..]].concat(),
        scales: stack(|w| &w.scales),
        mins: q
            .mins
            .as_ref()
            .map(|_| stack(|w| w.mins.as_deref().unwrap_or_default())),
    })
}
