//! The llama decoder in candle with LoRA adapters on chosen projections: the base
//! weights are constants, only the adapters are variables, so backpropagation computes
//! gradients for the adapters alone. Hugging Face's layout and rotary order (what
//! [`LlamaCheckpoint`] holds). The loss is the mean cross-entropy of the tokens a
//! [`Batch`] marks as trained; logits are computed for those positions only.

use std::collections::BTreeMap;

use candle_core::{D, DType, Device, Result, Tensor, Var};
use rand::Rng as _;
use rand_chacha::ChaCha8Rng;
use slough_modelkit::{
    checkpoint::{FloatTensor, LlamaCheckpoint},
    llama::LlamaConfig,
};

/// A projection of a decoder layer that can carry an adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Target {
    /// Every projection, in layer order.
    pub const ALL: [Target; 7] = [
        Target::Q,
        Target::K,
        Target::V,
        Target::O,
        Target::Gate,
        Target::Up,
        Target::Down,
    ];

    /// Its name as in PEFT's `target_modules` (`q_proj`, ..., `down_proj`).
    pub fn name(self) -> &'static str {
        match self {
            Target::Q => "q_proj",
            Target::K => "k_proj",
            Target::V => "v_proj",
            Target::O => "o_proj",
            Target::Gate => "gate_proj",
            Target::Up => "up_proj",
            Target::Down => "down_proj",
        }
    }

    /// Parses [`Target::name`].
    pub fn parse(name: &str) -> Option<Target> {
        Target::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The checkpoint's name of this projection in layer `layer`.
    fn weight_name(self, layer: usize) -> String {
        let module = match self {
            Target::Q | Target::K | Target::V | Target::O => "self_attn",
            Target::Gate | Target::Up | Target::Down => "mlp",
        };
        format!("model.layers.{layer}.{module}.{}.weight", self.name())
    }
}

/// The adapters' shape.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f64,
    pub targets: Vec<Target>,
}

impl LoraConfig {
    /// The factor the adapter's product is scaled by (`alpha / rank`).
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }
}

/// One adapter: `ΔW = scale · B·A`, `A` [rank, in] random, `B` [out, rank] zero at start.
#[derive(Debug)]
pub struct Adapter {
    pub a: Var,
    pub b: Var,
}

/// Token ids of a padded batch and which positions carry loss.
#[derive(Debug, Clone)]
pub struct Batch {
    /// `[rows, len]` row-major, right-padded.
    pub ids: Vec<u32>,
    pub rows: usize,
    pub len: usize,
    /// Each row's real length (the attention mask: keys past it are never seen).
    pub lengths: Vec<usize>,
    /// Flat positions `row · len + t` whose next token is trained, and that token.
    pub positions: Vec<u32>,
    pub targets: Vec<u32>,
}

struct Layer {
    attn_norm: Tensor,
    ffn_norm: Tensor,
    /// Indexed like [`Target::ALL`], `[out, in]`.
    weights: Vec<Tensor>,
}

/// The decoder with its adapters.
pub struct LoraModel {
    pub config: LlamaConfig,
    pub lora: LoraConfig,
    dtype: DType,
    device: Device,
    embed: Tensor,
    lm_head: Tensor,
    norm: Tensor,
    layers: Vec<Layer>,
    cos: Tensor,
    sin: Tensor,
    /// Adapters by (layer, target).
    pub adapters: BTreeMap<(usize, Target), Adapter>,
}

fn tensor(
    checkpoint: &LlamaCheckpoint,
    name: &str,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let t = checkpoint
        .tensors
        .get(name)
        .ok_or_else(|| candle_core::Error::Msg(format!("the base model has no {name}")))?;
    Tensor::from_slice(&t.values, t.shape.as_slice(), device)?.to_dtype(dtype)
}

impl LoraModel {
    /// The base weights of `checkpoint` with fresh adapters (A from `rng`, B zero), in
    /// `dtype` (f32 to train; f64 for exact gradient checks).
    pub fn new(
        checkpoint: &LlamaCheckpoint,
        lora: LoraConfig,
        dtype: DType,
        rng: &mut ChaCha8Rng,
    ) -> Result<LoraModel> {
        let device = Device::Cpu;
        let c = checkpoint.config.clone();
        let embed = tensor(checkpoint, "model.embed_tokens.weight", dtype, &device)?;
        let lm_head = if checkpoint.tied {
            embed.clone()
        } else {
            tensor(checkpoint, "lm_head.weight", dtype, &device)?
        };
        let norm = tensor(checkpoint, "model.norm.weight", dtype, &device)?;
        let mut layers = Vec::with_capacity(c.layers);
        let mut adapters = BTreeMap::new();
        for i in 0..c.layers {
            let norm = |name: &str| {
                tensor(
                    checkpoint,
                    &format!("model.layers.{i}.{name}.weight"),
                    dtype,
                    &device,
                )
            };
            let weights = Target::ALL
                .iter()
                .map(|t| tensor(checkpoint, &t.weight_name(i), dtype, &device))
                .collect::<Result<Vec<_>>>()?;
            for &target in &lora.targets {
                let (out, inp) = weights[target as usize].dims2()?;
                // PEFT's default: A ~ U(-1/√in, 1/√in), B = 0, so training starts at
                // the base model exactly.
                let bound = 1.0 / (inp as f64).sqrt();
                let values: Vec<f64> = (0..lora.rank * inp)
                    .map(|_| rng.random_range(-bound..bound))
                    .collect();
                let a = Tensor::from_vec(values, (lora.rank, inp), &device)?.to_dtype(dtype)?;
                let b = Tensor::zeros((out, lora.rank), dtype, &device)?;
                adapters.insert(
                    (i, target),
                    Adapter {
                        a: Var::from_tensor(&a)?,
                        b: Var::from_tensor(&b)?,
                    },
                );
            }
            layers.push(Layer {
                attn_norm: norm("input_layernorm")?,
                ffn_norm: norm("post_attention_layernorm")?,
                weights,
            });
        }
        let (cos, sin) = rotary(&c, dtype, &device)?;
        Ok(LoraModel {
            config: c,
            lora,
            dtype,
            device,
            embed,
            lm_head,
            norm,
            layers,
            cos,
            sin,
            adapters,
        })
    }

    /// Every trainable variable with a stable name (`layers.3.q_proj.a`), for the
    /// optimizer and checkpoints.
    pub fn variables(&self) -> Vec<(String, &Var)> {
        self.adapters
            .iter()
            .flat_map(|((layer, target), adapter)| {
                let name = format!("layers.{layer}.{}", target.name());
                [
                    (format!("{name}.a"), &adapter.a),
                    (format!("{name}.b"), &adapter.b),
                ]
            })
            .collect()
    }

    /// `x · Wᵀ` plus the adapter's `scale · (drop(x) · Aᵀ) · Bᵀ` when there is one.
    fn project(
        &self,
        layer: usize,
        target: Target,
        x: &Tensor,
        dropout: &mut Option<&mut ChaCha8Rng>,
    ) -> Result<Tensor> {
        let w = &self.layers[layer].weights[target as usize];
        let base = linear(x, w)?;
        let Some(adapter) = self.adapters.get(&(layer, target)) else {
            return Ok(base);
        };
        let x = match dropout {
            Some(rng) if self.lora.dropout > 0.0 => {
                let p = self.lora.dropout;
                let keep: Vec<f64> = (0..x.elem_count())
                    .map(|_| {
                        if rng.random::<f64>() < p {
                            0.0
                        } else {
                            1.0 / (1.0 - p)
                        }
                    })
                    .collect();
                let mask = Tensor::from_vec(keep, x.shape(), &self.device)?.to_dtype(self.dtype)?;
                (x * mask)?
            }
            _ => x.clone(),
        };
        let delta = x
            .matmul(&adapter.a.as_tensor().t()?)?
            .matmul(&adapter.b.as_tensor().t()?)?;
        base + (delta * self.lora.scale())?
    }

    /// The final hidden states, `[rows · len, hidden]`. `dropout` is the RNG of the
    /// adapters' dropout while training, `None` to evaluate.
    fn hidden(&self, batch: &Batch, mut dropout: Option<&mut ChaCha8Rng>) -> Result<Tensor> {
        let c = &self.config;
        let (rows, len) = (batch.rows, batch.len);
        let ids = Tensor::from_slice(&batch.ids, rows * len, &self.device)?;
        let mut x = self.embed.index_select(&ids, 0)?;
        let mask = attention_mask(batch, self.dtype, &self.device)?;
        let cos = self.cos.narrow(0, 0, len)?;
        let sin = self.sin.narrow(0, 0, len)?;
        let heads = |t: Tensor, n: usize| -> Result<Tensor> {
            t.reshape((rows, len, n, c.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let repeat = c.heads / c.kv_heads;
        let scale = 1.0 / (c.head_dim as f64).sqrt();
        for (i, layer) in self.layers.iter().enumerate() {
            let h = candle_nn::ops::rms_norm_slow(&x, &layer.attn_norm, c.rms_eps)?;
            let q = heads(self.project(i, Target::Q, &h, &mut dropout)?, c.heads)?;
            let k = heads(self.project(i, Target::K, &h, &mut dropout)?, c.kv_heads)?;
            let v = heads(self.project(i, Target::V, &h, &mut dropout)?, c.kv_heads)?;
            let q = candle_nn::rotary_emb::rope_slow(&q, &cos, &sin)?;
            let k = candle_nn::rotary_emb::rope_slow(&k, &cos, &sin)?;
            let expand = |t: Tensor| -> Result<Tensor> {
                t.unsqueeze(2)?
                    .expand((rows, c.kv_heads, repeat, len, c.head_dim))?
                    .reshape((rows, c.heads, len, c.head_dim))
            };
            let (k, v) = (expand(k)?, expand(v)?);
            let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(&mask)?;
            let attention = softmax(&scores)?.matmul(&v)?;
            let attention = attention
                .transpose(1, 2)?
                .reshape((rows * len, c.heads * c.head_dim))?;
            x = (x + self.project(i, Target::O, &attention, &mut dropout)?)?;
            let h = candle_nn::ops::rms_norm_slow(&x, &layer.ffn_norm, c.rms_eps)?;
            let gate = self.project(i, Target::Gate, &h, &mut dropout)?;
            let up = self.project(i, Target::Up, &h, &mut dropout)?;
            let mlp = (gate.silu()? * up)?;
            x = (x + self.project(i, Target::Down, &mlp, &mut dropout)?)?;
        }
        candle_nn::ops::rms_norm_slow(&x, &self.norm, c.rms_eps)
    }

    /// The mean cross-entropy of the batch's trained tokens (a scalar tensor).
    pub fn loss(&self, batch: &Batch, dropout: Option<&mut ChaCha8Rng>) -> Result<Tensor> {
        let hidden = self.hidden(batch, dropout)?;
        let positions = Tensor::from_slice(&batch.positions, batch.positions.len(), &self.device)?;
        let targets = Tensor::from_slice(&batch.targets, (batch.targets.len(), 1), &self.device)?;
        let logits = linear(&hidden.index_select(&positions, 0)?, &self.lm_head)?;
        let log_probs = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        log_probs.gather(&targets, 1)?.mean_all()?.neg()
    }

    /// Logits of every position, `[rows, len, vocab]` (tests and evaluation).
    pub fn logits(&self, batch: &Batch) -> Result<Tensor> {
        let hidden = self.hidden(batch, None)?;
        linear(&hidden, &self.lm_head)?.reshape((batch.rows, batch.len, self.config.vocab_size))
    }

    /// The base weights with every adapter merged in (`W + scale · B·A`), as a checkpoint
    /// to export.
    pub fn merged(&self, base: &LlamaCheckpoint) -> Result<LlamaCheckpoint> {
        let mut merged = base.clone();
        for ((layer, target), adapter) in &self.adapters {
            let delta = (adapter.b.as_tensor().matmul(adapter.a.as_tensor())? * self.lora.scale())?
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let name = target.weight_name(*layer);
            let weight = merged
                .tensors
                .get_mut(&name)
                .ok_or_else(|| candle_core::Error::Msg(format!("the base model has no {name}")))?;
            for (w, d) in weight.values.iter_mut().zip(delta) {
                *w += d;
            }
        }
        Ok(merged)
    }

    /// The adapters as named f32 tensors (checkpoints).
    pub fn adapter_tensors(&self) -> Result<BTreeMap<String, FloatTensor>> {
        self.variables()
            .into_iter()
            .map(|(name, var)| Ok((name, float_tensor(var.as_tensor())?)))
            .collect()
    }

    /// Sets the adapters from [`LoraModel::adapter_tensors`]' output.
    pub fn load_adapters(&self, tensors: &BTreeMap<String, FloatTensor>) -> Result<()> {
        for (name, var) in self.variables() {
            let t = tensors
                .get(&name)
                .ok_or_else(|| candle_core::Error::Msg(format!("the checkpoint has no {name}")))?;
            let value = Tensor::from_slice(&t.values, t.shape.as_slice(), &self.device)?
                .to_dtype(self.dtype)?;
            var.set(&value)?;
        }
        Ok(())
    }
}

/// `x · Wᵀ` for a frozen weight `w` `[out, in]` and `x` `[rows, in]`. Its backward pass
/// computes the gradient of `x` only: candle's matmul would also compute the weight's,
/// which is the whole cost (and memory) of full fine-tuning.
fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.apply_op2(w, FrozenLinear)
}

struct FrozenLinear;

impl candle_core::CustomOp2 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(
        &self,
        x: &candle_core::CpuStorage,
        x_layout: &candle_core::Layout,
        w: &candle_core::CpuStorage,
        w_layout: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use candle_core::backend::BackendStorage as _;
        let (m, k) = x_layout.shape().dims2()?;
        let (n, w_k) = w_layout.shape().dims2()?;
        if k != w_k {
            candle_core::bail!("frozen-linear: x is [{m}, {k}], w is [{n}, {w_k}]");
        }
        let out = x.matmul(w, (1, m, n, k), x_layout, &w_layout.transpose(0, 1)?)?;
        Ok((out, candle_core::Shape::from((m, n))))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        w: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(grad.matmul(w)?), None))
    }
}

/// A tensor's shape and values as f32.
pub fn float_tensor(t: &Tensor) -> Result<FloatTensor> {
    Ok(FloatTensor {
        shape: t.dims().to_vec(),
        values: t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?,
    })
}

/// Softmax over the last dimension; the max is subtracted as a constant (the result
/// does not depend on it), so no gradient flows through it.
fn softmax(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// `[rows, 1, len, len]`: 0 where query `i` may see key `j` (`j ≤ i`, `j` inside the
/// row), a large negative number elsewhere.
fn attention_mask(batch: &Batch, dtype: DType, device: &Device) -> Result<Tensor> {
    let len = batch.len;
    let mut values = vec![0f32; batch.rows * len * len];
    for (row, &length) in batch.lengths.iter().enumerate() {
        for i in 0..len {
            for j in 0..len {
                if j > i || j >= length {
                    values[(row * len + i) * len + j] = -1e9;
                }
            }
        }
    }
    Tensor::from_vec(values, (batch.rows, 1, len, len), device)?.to_dtype(dtype)
}

/// The rotary tables `[context, head_dim / 2]` in Hugging Face's half-split order.
fn rotary(c: &LlamaConfig, dtype: DType, device: &Device) -> Result<(Tensor, Tensor)> {
    let half = c.head_dim / 2;
    let inv: Vec<f64> = (0..half)
        .map(|i| 1.0 / f64::from(c.rope_theta).powf(2.0 * i as f64 / c.head_dim as f64))
        .collect();
    let mut cos = Vec::with_capacity(c.context_length * half);
    let mut sin = Vec::with_capacity(c.context_length * half);
    for p in 0..c.context_length {
        for f in &inv {
            let angle = p as f64 * f;
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }
    Ok((
        Tensor::from_vec(cos, (c.context_length, half), device)?.to_dtype(dtype)?,
        Tensor::from_vec(sin, (c.context_length, half), device)?.to_dtype(dtype)?,
    ))
}
