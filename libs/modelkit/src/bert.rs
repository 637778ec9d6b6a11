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
/// a `bert.` prefix), block by block: inputs and output, the embeddings, the additive
/// attention mask, each layer (self-attention, then the feed-forward block, each with
/// its residual LayerNorm), and mean pooling to a unit vector. Returns the serialized
/// model.
pub fn build(config: &BertConfig, weights: &SafetensorsFile) -> Result<Vec<u8>, BertError> {
    let prefix = if weights.contains("bert.embeddings.word_embeddings.weight") {
        "bert."
    } else {
        ""
    };
    let mut encoder = Encoder {
        g: GraphBuilder::new("bert"),
        config,
        weights,
        prefix,
    };
    encoder.declare_io();
    let mut x = encoder.embeddings()?;
    let mask = encoder.mask();
    let heads = Heads::new(&mut encoder.g, config);
    for i in 0..config.num_hidden_layers {
        x = encoder.self_attention(i, &x, &mask, &heads)?;
        x = encoder.feed_forward(i, &x)?;
    }
    encoder.mean_pool(&x, &mask.float);
    Ok(encoder.g.into_bytes())
}

/// The graph being built and what every block reads.
struct Encoder<'a> {
    g: GraphBuilder,
    config: &'a BertConfig,
    weights: &'a SafetensorsFile,
    /// `bert.` or nothing, before every checkpoint name.
    prefix: &'a str,
}

/// The attention mask as blocks use it.
struct Mask {
    /// The mask as floats [batch, sequence], for pooling.
    float: String,
    /// Additive [batch, 1, 1, sequence]: 0 where attended, a large negative elsewhere.
    bias: String,
}

/// Constants for splitting the hidden state into heads and back.
struct Heads {
    split: String,
    merge: String,
    scale: String,
}

impl Heads {
    fn new(g: &mut GraphBuilder, config: &BertConfig) -> Heads {
        let h = config.hidden_size;
        let heads = config.num_attention_heads as i64;
        let head_dim = (h / config.num_attention_heads) as i64;
        Heads {
            split: g.initializer_i64("const.split_heads", &[4], &[0, 0, heads, head_dim]),
            merge: g.initializer_i64("const.merge_heads", &[3], &[0, 0, h as i64]),
            scale: g.initializer_f32("const.scale", &[], &[1.0 / (head_dim as f32).sqrt()]),
        }
    }
}

impl Encoder<'_> {
    /// `input_ids` and `attention_mask` in, `embeddings` [batch, hidden] out.
    fn declare_io(&mut self) {
        let batch = || Dim::Named("batch".into());
        let sequence = || Dim::Named("sequence".into());
        let g = &mut self.g;
        g.input("input_ids", DataType::Int64, &[batch(), sequence()]);
        g.input("attention_mask", DataType::Int64, &[batch(), sequence()]);
        g.output(
            "embeddings",
            DataType::Float,
            &[batch(), Dim::Fixed(self.config.hidden_size as i64)],
        );
    }

    /// A checkpoint tensor of `shape` as an initializer named `name`.
    fn weight(&mut self, name: &str, shape: &[usize]) -> Result<String, BertError> {
        let values = self.weights.f32(&format!("{}{name}", self.prefix), shape)?;
        let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        Ok(self.g.initializer_f32(name, &dims, &values))
    }

    /// A linear layer: checkpoints store [out, in]; MatMul wants [in, out].
    fn linear(
        &mut self,
        name: &str,
        input: &str,
        inputs: usize,
        outputs: usize,
    ) -> Result<String, BertError> {
        let prefix = self.prefix;
        let w = self
            .weights
            .f32(&format!("{prefix}{name}.weight"), &[outputs, inputs])?;
        let transposed: Vec<f32> = (0..inputs)
            .flat_map(|i| (0..outputs).map(move |o| (i, o)))
            .map(|(i, o)| w[o * inputs + i])
            .collect();
        let bias = self
            .weights
            .f32(&format!("{prefix}{name}.bias"), &[outputs])?;
        let g = &mut self.g;
        let w = g.initializer_f32(
            &format!("{name}.weight_t"),
            &[inputs as i64, outputs as i64],
            &transposed,
        );
        let b = g.initializer_f32(&format!("{name}.bias"), &[outputs as i64], &bias);
        let product = g.op("", "MatMul", &format!("{name}/matmul"), &[input, &w], &[]);
        Ok(g.op("", "Add", &format!("{name}/bias"), &[&product, &b], &[]))
    }

    /// LayerNorm `name` of `input`.
    fn layer_norm(&mut self, name: &str, input: &str) -> Result<String, BertError> {
        let h = self.config.hidden_size;
        let gamma = self.weight(&format!("{name}.weight"), &[h])?;
        let beta = self.weight(&format!("{name}.bias"), &[h])?;
        Ok(self.g.op(
            "",
            "LayerNormalization",
            name,
            &[input, &gamma, &beta],
            &[
                ("axis", Attr::Int(-1)),
                ("epsilon", Attr::Float(self.config.layer_norm_eps)),
            ],
        ))
    }

    /// Word + position + token type 0 embeddings, then LayerNorm.
    fn embeddings(&mut self) -> Result<String, BertError> {
        let (config, prefix) = (self.config, self.prefix);
        let h = config.hidden_size;
        let words = self.weights.f32(
            &format!("{prefix}embeddings.word_embeddings.weight"),
            &[config.vocab_size, h],
        )?;
        let positions = self.weights.f32(
            &format!("{prefix}embeddings.position_embeddings.weight"),
            &[config.max_position_embeddings, h],
        )?;
        let types = self.weights.f32(
            &format!("{prefix}embeddings.token_type_embeddings.weight"),
            &[2, h],
        )?;
        let g = &mut self.g;
        let words = g.initializer_f32(
            "embeddings.word",
            &[config.vocab_size as i64, h as i64],
            &words,
        );
        let positions = g.initializer_f32(
            "embeddings.position",
            &[config.max_position_embeddings as i64, h as i64],
            &positions,
        );
        let type0 = g.initializer_f32("embeddings.type0", &[h as i64], &types[..h]);
        let zero = g.initializer_i64("const.zero", &[], &[0]);
        let one = g.initializer_i64("const.one", &[], &[1]);
        let along_rows = [("axis", Attr::Int(0))];
        let shape = g.op("", "Shape", "ids/shape", &["input_ids"], &[]);
        let length = g.op("", "Gather", "ids/length", &[&shape, &one], &along_rows);
        let position_ids = g.op("", "Range", "ids/positions", &[&zero, &length, &one], &[]);
        let word_vectors = g.op(
            "",
            "Gather",
            "embed/words",
            &[&words, "input_ids"],
            &along_rows,
        );
        let position_vectors = g.op(
            "",
            "Gather",
            "embed/positions",
            &[&positions, &position_ids],
            &along_rows,
        );
        let summed = g.op(
            "",
            "Add",
            "embed/sum",
            &[&word_vectors, &position_vectors],
            &[],
        );
        let summed = g.op("", "Add", "embed/type", &[&summed, &type0], &[]);
        self.layer_norm("embeddings.LayerNorm", &summed)
    }

    /// The attention mask as floats, and as an additive bias for the scores.
    fn mask(&mut self) -> Mask {
        let g = &mut self.g;
        let float = g.op(
            "",
            "Cast",
            "mask/float",
            &["attention_mask"],
            &[("to", Attr::Int(DataType::Float as i64))],
        );
        let one = g.initializer_f32("const.one_f", &[], &[1.0]);
        let inverted = g.op("", "Sub", "mask/inverted", &[&one, &float], &[]);
        let big = g.initializer_f32("const.mask_value", &[], &[-1e9]);
        let bias = g.op("", "Mul", "mask/bias", &[&inverted, &big], &[]);
        let axes12 = g.initializer_i64("const.axes12", &[2], &[1, 2]);
        let bias = g.op("", "Unsqueeze", "mask/bias4", &[&bias, &axes12], &[]);
        Mask { float, bias }
    }

    /// Layer `i`'s self-attention with its output projection, residual and LayerNorm.
    fn self_attention(
        &mut self,
        i: usize,
        x: &str,
        mask: &Mask,
        heads: &Heads,
    ) -> Result<String, BertError> {
        let h = self.config.hidden_size;
        let p = format!("encoder.layer.{i}");
        let q = self.linear(&format!("{p}.attention.self.query"), x, h, h)?;
        let k = self.linear(&format!("{p}.attention.self.key"), x, h, h)?;
        let v = self.linear(&format!("{p}.attention.self.value"), x, h, h)?;
        let g = &mut self.g;
        let mut heads_of = |name: &str, input: &str, perm: &[i64]| {
            let split = g.op(
                "",
                "Reshape",
                &format!("{name}/split"),
                &[input, &heads.split],
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
        let q = heads_of(&format!("{p}/q"), &q, &[0, 2, 1, 3]);
        let k = heads_of(&format!("{p}/k"), &k, &[0, 2, 3, 1]);
        let v = heads_of(&format!("{p}/v"), &v, &[0, 2, 1, 3]);
        let scores = g.op("", "MatMul", &format!("{p}/scores"), &[&q, &k], &[]);
        let scores = g.op(
            "",
            "Mul",
            &format!("{p}/scaled"),
            &[&scores, &heads.scale],
            &[],
        );
        let scores = g.op(
            "",
            "Add",
            &format!("{p}/masked"),
            &[&scores, &mask.bias],
            &[],
        );
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
            &[&context, &heads.merge],
            &[],
        );
        let attended = self.linear(&format!("{p}.attention.output.dense"), &context, h, h)?;
        let residual = self.g.op(
            "",
            "Add",
            &format!("{p}/attn_residual"),
            &[&attended, x],
            &[],
        );
        self.layer_norm(&format!("{p}.attention.output.LayerNorm"), &residual)
    }

    /// Layer `i`'s feed-forward block (exact GELU) with its residual and LayerNorm.
    fn feed_forward(&mut self, i: usize, x: &str) -> Result<String, BertError> {
        let (h, ffn) = (self.config.hidden_size, self.config.intermediate_size);
        let p = format!("encoder.layer.{i}");
        let up = self.linear(&format!("{p}.intermediate.dense"), x, h, ffn)?;
        let act = self.g.op(
            "",
            "Gelu",
            &format!("{p}/gelu"),
            &[&up],
            &[("approximate", Attr::String("none".into()))],
        );
        let down = self.linear(&format!("{p}.output.dense"), &act, ffn, h)?;
        let residual = self
            .g
            .op("", "Add", &format!("{p}/ffn_residual"), &[&down, x], &[]);
        self.layer_norm(&format!("{p}.output.LayerNorm"), &residual)
    }

    /// Mean over attended tokens: Σ h·m / max(Σ m, 1e-9); then unit length, into
    /// `embeddings`.
    fn mean_pool(&mut self, x: &str, mask: &str) {
        let g = &mut self.g;
        let axis_last = g.initializer_i64("const.axis_last", &[1], &[-1]);
        let axis1 = g.initializer_i64("const.axis1", &[1], &[1]);
        let sum_tokens = [("keepdims", Attr::Int(0))];
        let weights3 = g.op("", "Unsqueeze", "pool/mask3", &[mask, &axis_last], &[]);
        let masked = g.op("", "Mul", "pool/masked", &[x, &weights3], &[]);
        let sums = g.op(
            "",
            "ReduceSum",
            "pool/sums",
            &[&masked, &axis1],
            &sum_tokens,
        );
        let counts = g.op(
            "",
            "ReduceSum",
            "pool/counts",
            &[&weights3, &axis1],
            &sum_tokens,
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
    }
}
