//! The BERT sentence encoder (all-MiniLM-L6-v2 and its kin) as an ONNX graph from a
//! safetensors checkpoint: embeddings, post-norm encoder layers with exact-erf GELU,
//! then mean pooling over the attention mask and L2 normalization inside the graph, so
//! the output is the sentence embedding.
//!
//! Inputs: `input_ids`, `attention_mask` i64 [batch, sequence] (token types are all 0).
//! Output: `embeddings` f32 [batch, hidden], unit length.

use serde::Deserialize;

use crate::{
    onnx::{Attr, Dim, GraphBuilder, proto::DataType},
    safetensors::{SafetensorsError, SafetensorsFile},
};

/// Why a BERT graph could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BertError {
    #[error(transparent)]
    Weights(#[from] SafetensorsError),
    #[error("invalid config.json: {0}")]
    Config(String),
}

/// The fields of Hugging Face's `config.json` the graph depends on.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f32,
    #[serde(default = "default_act")]
    pub hidden_act: String,
}

fn default_eps() -> f32 {
    1e-12
}

fn default_act() -> String {
    "gelu".to_owned()
}

impl BertConfig {
    /// Parses `config.json` and checks what the builder supports.
    pub fn from_json(json: &str) -> Result<BertConfig, BertError> {
        let config: BertConfig =
            serde_json::from_str(json).map_err(|err| BertError::Config(err.to_string()))?;
        if config.hidden_act != "gelu" {
            return Err(BertError::Config(format!(
                "hidden_act {:?} (only exact \"gelu\" is built)",
                config.hidden_act
            )));
        }
        if config.num_attention_heads == 0
            || !config
                .hidden_size
                .is_multiple_of(config.num_attention_heads)
        {
            return Err(BertError::Config(format!(
                "{} heads do not divide width {}",
                config.num_attention_heads, config.hidden_size
            )));
        }
        Ok(config)
    }
}

/// Builds the encoder from `weights` (names as `BertModel` saves them, with or without
/// a `bert.` prefix); returns the serialized model.
pub fn build(config: &BertConfig, weights: &SafetensorsFile) -> Result<Vec<u8>, BertError> {
    let prefix = if weights.contains("bert.embeddings.word_embeddings.weight") {
        "bert."
    } else {
        ""
    };
    let (h, ffn) = (config.hidden_size, config.intermediate_size);
    let heads = config.num_attention_heads as i64;
    let head_dim = (h / config.num_attention_heads) as i64;
    let mut g = GraphBuilder::new("bert");
    let weight = |g: &mut GraphBuilder, name: &str, shape: &[usize]| -> Result<String, BertError> {
        let values = weights.f32(&format!("{prefix}{name}"), shape)?;
        let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        Ok(g.initializer_f32(name, &dims, &values))
    };
    // A linear layer: checkpoints store [out, in]; MatMul wants [in, out].
    let linear = |g: &mut GraphBuilder,
                  name: &str,
                  input: &str,
                  inputs: usize,
                  outputs: usize|
     -> Result<String, BertError> {
        let w = weights.f32(&format!("{prefix}{name}.weight"), &[outputs, inputs])?;
        let transposed: Vec<f32> = (0..inputs)
            .flat_map(|i| (0..outputs).map(move |o| (i, o)))
            .map(|(i, o)| w[o * inputs + i])
            .collect();
        let w = g.initializer_f32(
            &format!("{name}.weight_t"),
            &[inputs as i64, outputs as i64],
            &transposed,
        );
        let b = g.initializer_f32(
            &format!("{name}.bias"),
            &[outputs as i64],
            &weights.f32(&format!("{prefix}{name}.bias"), &[outputs])?,
        );
        let product = g.op("", "MatMul", &format!("{name}/matmul"), &[input, &w], &[]);
        Ok(g.op("", "Add", &format!("{name}/bias"), &[&product, &b], &[]))
    };
    let eps = Attr::Float(config.layer_norm_eps);
    let layer_norm = |g: &mut GraphBuilder, name: &str, input: &str| -> Result<String, BertError> {
        let gamma = weight(g, &format!("{name}.weight"), &[h])?;
        let beta = weight(g, &format!("{name}.bias"), &[h])?;
        Ok(g.op(
            "",
            "LayerNormalization",
            name,
            &[input, &gamma, &beta],
            &[("axis", Attr::Int(-1)), ("epsilon", eps.clone())],
        ))
    };

    let batch = || Dim::Named("batch".into());
    let sequence = || Dim::Named("sequence".into());
    g.input("input_ids", DataType::Int64, &[batch(), sequence()]);
    g.input("attention_mask", DataType::Int64, &[batch(), sequence()]);
    g.output(
        "embeddings",
        DataType::Float,
        &[batch(), Dim::Fixed(h as i64)],
    );

    // Embeddings: word + position + token type 0, then LayerNorm.
    let words = weights.f32(
        &format!("{prefix}embeddings.word_embeddings.weight"),
        &[config.vocab_size, h],
    )?;
    let words = g.initializer_f32(
        "embeddings.word",
        &[config.vocab_size as i64, h as i64],
        &words,
    );
    let positions = weights.f32(
        &format!("{prefix}embeddings.position_embeddings.weight"),
        &[config.max_position_embeddings, h],
    )?;
    let positions = g.initializer_f32(
        "embeddings.position",
        &[config.max_position_embeddings as i64, h as i64],
        &positions,
    );
    let types = weights.f32(
        &format!("{prefix}embeddings.token_type_embeddings.weight"),
        &[2, h],
    )?;
    let type0 = g.initializer_f32("embeddings.type0", &[h as i64], &types[..h]);
    let zero = g.initializer_i64("const.zero", &[], &[0]);
    let one = g.initializer_i64("const.one", &[], &[1]);
    let shape = g.op("", "Shape", "ids/shape", &["input_ids"], &[]);
    let length = g.op(
        "",
        "Gather",
        "ids/length",
        &[&shape, &one],
        &[("axis", Attr::Int(0))],
    );
    let position_ids = g.op("", "Range", "ids/positions", &[&zero, &length, &one], &[]);
    let word_vectors = g.op(
        "",
        "Gather",
        "embed/words",
        &[&words, "input_ids"],
        &[("axis", Attr::Int(0))],
    );
    let position_vectors = g.op(
        "",
        "Gather",
        "embed/positions",
        &[&positions, &position_ids],
        &[("axis", Attr::Int(0))],
    );
    let summed = g.op(
        "",
        "Add",
        "embed/sum",
        &[&word_vectors, &position_vectors],
        &[],
    );
    let summed = g.op("", "Add", "embed/type", &[&summed, &type0], &[]);
    let mut x = layer_norm(&mut g, "embeddings.LayerNorm", &summed)?;

    // Additive mask [batch, 1, 1, sequence]: 0 where attended, a large negative elsewhere.
    let mask = g.op(
        "",
        "Cast",
        "mask/float",
        &["attention_mask"],
        &[("to", Attr::Int(DataType::Float as i64))],
    );
    let one_f = g.initializer_f32("const.one_f", &[], &[1.0]);
    let inverted = g.op("", "Sub", "mask/inverted", &[&one_f, &mask], &[]);
    let big = g.initializer_f32("const.mask_value", &[], &[-1e9]);
    let bias = g.op("", "Mul", "mask/bias", &[&inverted, &big], &[]);
    let axes12 = g.initializer_i64("const.axes12", &[2], &[1, 2]);
    let bias = g.op("", "Unsqueeze", "mask/bias4", &[&bias, &axes12], &[]);

    let split_heads = g.initializer_i64("const.split_heads", &[4], &[0, 0, heads, head_dim]);
    let merge_heads = g.initializer_i64("const.merge_heads", &[3], &[0, 0, h as i64]);
    let scale = g.initializer_f32("const.scale", &[], &[1.0 / (head_dim as f32).sqrt()]);
    for i in 0..config.num_hidden_layers {
        let p = format!("encoder.layer.{i}");
        let heads_of = |g: &mut GraphBuilder, name: &str, input: &str, perm: &[i64]| {
            let split = g.op(
                "",
                "Reshape",
                &format!("{name}/split"),
                &[input, &split_heads],
                &[],
            );
            g.op(
                "",
                "Transpose",
                &format!("{name}/heads"),
                &[&split],
                &[("perm", Attr::Ints(perm.to_vec()))],
            )
        };
        let q = linear(&mut g, &format!("{p}.attention.self.query"), &x, h, h)?;
        let k = linear(&mut g, &format!("{p}.attention.self.key"), &x, h, h)?;
        let v = linear(&mut g, &format!("{p}.attention.self.value"), &x, h, h)?;
        let q = heads_of(&mut g, &format!("{p}/q"), &q, &[0, 2, 1, 3]);
        let k = heads_of(&mut g, &format!("{p}/k"), &k, &[0, 2, 3, 1]);
        let v = heads_of(&mut g, &format!("{p}/v"), &v, &[0, 2, 1, 3]);
        let scores = g.op("", "MatMul", &format!("{p}/scores"), &[&q, &k], &[]);
        let scores = g.op("", "Mul", &format!("{p}/scaled"), &[&scores, &scale], &[]);
        let scores = g.op("", "Add", &format!("{p}/masked"), &[&scores, &bias], &[]);
        let probs = g.op(
            "",
            "Softmax",
            &format!("{p}/probs"),
            &[&scores],
            &[("axis", Attr::Int(-1))],
        );
        let context = g.op("", "MatMul", &format!("{p}/context"), &[&probs, &v], &[]);
        let context = g.op(
            "",
            "Transpose",
            &format!("{p}/context_t"),
            &[&context],
            &[("perm", Attr::Ints(vec![0, 2, 1, 3]))],
        );
        let context = g.op(
            "",
            "Reshape",
            &format!("{p}/context_merged"),
            &[&context, &merge_heads],
            &[],
        );
        let attended = linear(
            &mut g,
            &format!("{p}.attention.output.dense"),
            &context,
            h,
            h,
        )?;
        let residual = g.op(
            "",
            "Add",
            &format!("{p}/attn_residual"),
            &[&attended, &x],
            &[],
        );
        x = layer_norm(
            &mut g,
            &format!("{p}.attention.output.LayerNorm"),
            &residual,
        )?;
        let up = linear(&mut g, &format!("{p}.intermediate.dense"), &x, h, ffn)?;
        let act = g.op(
            "",
            "Gelu",
            &format!("{p}/gelu"),
            &[&up],
            &[("approximate", Attr::String("none".into()))],
        );
        let down = linear(&mut g, &format!("{p}.output.dense"), &act, ffn, h)?;
        let residual = g.op("", "Add", &format!("{p}/ffn_residual"), &[&down, &x], &[]);
        x = layer_norm(&mut g, &format!("{p}.output.LayerNorm"), &residual)?;
    }

    // Mean over attended tokens: Σ h·m / max(Σ m, 1e-9); then unit length.
    let axis_last = g.initializer_i64("const.axis_last", &[1], &[-1]);
    let axis1 = g.initializer_i64("const.axis1", &[1], &[1]);
    let weights3 = g.op("", "Unsqueeze", "pool/mask3", &[&mask, &axis_last], &[]);
    let masked = g.op("", "Mul", "pool/masked", &[&x, &weights3], &[]);
    let sums = g.op(
        "",
        "ReduceSum",
        "pool/sums",
        &[&masked, &axis1],
        &[("keepdims", Attr::Int(0))],
    );
    let counts = g.op(
        "",
        "ReduceSum",
        "pool/counts",
        &[&weights3, &axis1],
        &[("keepdims", Attr::Int(0))],
    );
    let floor = g.initializer_f32("const.min_count", &[], &[1e-9]);
    let counts = g.op("", "Max", "pool/counts_floor", &[&counts, &floor], &[]);
    let mean = g.op("", "Div", "pool/mean", &[&sums, &counts], &[]);
    g.node_named(
        "",
        "LpNormalization",
        "normalize",
        &[&mean],
        &["embeddings".to_owned()],
        &[("axis", Attr::Int(-1)), ("p", Attr::Int(2))],
    );
    Ok(g.into_bytes())
}
