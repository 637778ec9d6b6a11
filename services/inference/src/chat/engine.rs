//! One chat model's ONNX session and KV cache (see `shared/notes/onnx-llama.md`).
//!
//! Prompts are prefilled alone on an empty cache; their keys and values are then copied
//! into rows of a batch buffer, and every decode step runs all rows together. The batch
//! buffers are ONNX Runtime tensors bound (IoBinding) as both `past_key_values.*` and
//! `present.*`, so GroupQueryAttention appends each new position in place instead of
//! copying the cache. Buffers come in power-of-two row counts up to the batch limit,
//! made when first needed, so one stream does not pay for sixteen rows of compute.

use ort::{
    memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType},
    session::{IoBinding, Session},
    value::Tensor,
};

/// The shape facts the engine needs.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub layers: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    /// Positions per row.
    pub max_context: usize,
}

/// A buffer of `rows` sequences bound to the session.
struct Batch {
    rows: usize,
    /// Per layer: key, value, each [rows, kv_heads, max_context, head_dim].
    cache: Vec<[Tensor<f32>; 2]>,
    binding: IoBinding,
}

/// A chat model's session and batch buffers.
pub struct Engine {
    session: Session,
    shape: Shape,
    /// Indexed by log2(rows).
    batches: Vec<Option<Batch>>,
}

/// A prompt's keys and values per layer ([kv_heads, len, head_dim] each), as prefill
/// leaves them.
pub type PrefillCache = Vec<[Vec<f32>; 2]>;

/// What an ONNX Runtime call failed with.
pub type EngineError = ort::Error;

/// Where one row's sequence is in a batch decode step.
#[derive(Debug, Clone, Copy)]
pub struct Step {
    pub row: usize,
    /// The token to feed.
    pub token: u32,
    /// Its position (how many tokens the row holds before it).
    pub position: usize,
}

impl Engine {
    pub fn new(session: Session, shape: Shape) -> Engine {
        Engine {
            session,
            shape,
            batches: Vec::new(),
        }
    }

    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// The smallest buffer size holding `sequences` rows.
    pub fn rows_for(sequences: usize) -> usize {
        sequences.max(1).next_power_of_two()
    }

    /// Runs `tokens` on an empty cache; returns the last position's logits and the
    /// keys/values per layer ([kv_heads, len, head_dim] each) for [`Engine::place`].
    pub fn prefill(&mut self, tokens: &[u32]) -> Result<(Vec<f32>, PrefillCache), EngineError> {
        let s = self.shape;
        let len = tokens.len();
        let ids: Vec<i64> = tokens.iter().map(|&t| i64::from(t)).collect();
        let mut inputs: Vec<(String, ort::session::SessionInputValue<'_>)> = vec![
            (
                "input_ids".into(),
                Tensor::from_array(([1, len], ids))?.into(),
            ),
            (
                "attention_mask".into(),
                Tensor::from_array(([1, len], vec![1i64; len]))?.into(),
            ),
        ];
        for layer in 0..s.layers {
            for part in ["key", "value"] {
                inputs.push((
                    format!("past_key_values.{layer}.{part}"),
                    Tensor::from_array(([1, s.kv_heads, 0, s.head_dim], Vec::<f32>::new()))?.into(),
                ));
            }
        }
        let outputs = self.session.run(inputs)?;
        // The last position's row (the graph may give one row or one per position).
        let (_, logits) = outputs["logits"].try_extract_tensor::<f32>()?;
        let last = logits[logits.len() - s.vocab..].to_vec();
        let mut cache = Vec::with_capacity(s.layers);
        for layer in 0..s.layers {
            let part = |name: &str| -> Result<Vec<f32>, EngineError> {
                let (_, data) = outputs[format!("present.{layer}.{name}").as_str()]
                    .try_extract_tensor::<f32>()?;
                Ok(data.to_vec())
            };
            cache.push([part("key")?, part("value")?]);
        }
        Ok((last, cache))
    }

    /// Copies a prefilled cache of `len` positions into `row` of the `rows` buffer.
    pub fn place(
        &mut self,
        rows: usize,
        row: usize,
        cache: &PrefillCache,
        len: usize,
    ) -> Result<(), EngineError> {
        let s = self.shape;
        let batch = self.batch(rows)?;
        for (layer, parts) in cache.iter().enumerate() {
            for (part, source) in parts.iter().enumerate() {
                let (_, data) = batch.cache[layer][part].try_extract_tensor_mut::<f32>()?;
                for head in 0..s.kv_heads {
                    let from = head * len * s.head_dim;
                    let to = offset(s, row, head, 0);
                    data[to..to + len * s.head_dim]
                        .copy_from_slice(&source[from..from + len * s.head_dim]);
                }
            }
        }
        Ok(())
    }

    /// Moves sequences between buffers: `(from_row, to_row, len)` from the `from` buffer
    /// to the `to` buffer.
    pub fn migrate(
        &mut self,
        from: usize,
        to: usize,
        moves: &[(usize, usize, usize)],
    ) -> Result<(), EngineError> {
        let s = self.shape;
        self.batch(to)?;
        let mut staged: Vec<Vec<f32>> = Vec::new();
        {
            let source = self.batch(from)?;
            for layer in 0..s.layers {
                for part in 0..2 {
                    let (_, data) = source.cache[layer][part].try_extract_tensor::<f32>()?;
                    for &(from_row, _, len) in moves {
                        for head in 0..s.kv_heads {
                            let at = offset(s, from_row, head, 0);
                            staged.push(data[at..at + len * s.head_dim].to_vec());
                        }
                    }
                }
            }
        }
        let target = self.batch(to)?;
        let mut staged = staged.into_iter();
        for layer in 0..s.layers {
            for part in 0..2 {
                let (_, data) = target.cache[layer][part].try_extract_tensor_mut::<f32>()?;
                for &(_, to_row, len) in moves {
                    for head in 0..s.kv_heads {
                        let at = offset(s, to_row, head, 0);
                        if let Some(values) = staged.next() {
                            data[at..at + len * s.head_dim].copy_from_slice(&values);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// One decode step over the `rows` buffer: each step's token at its position (rows
    /// without a step idle). Returns each step's logits, in the order given.
    pub fn decode(&mut self, rows: usize, steps: &[Step]) -> Result<Vec<Vec<f32>>, EngineError> {
        let s = self.shape;
        let total = steps.iter().map(|st| st.position + 1).max().unwrap_or(1);
        let mut ids = vec![0i64; rows];
        // An idle row sees one position, so its work is negligible.
        let mut mask = vec![0i64; rows * total];
        for row in 0..rows {
            mask[row * total] = 1;
        }
        for step in steps {
            ids[step.row] = i64::from(step.token);
            mask[step.row * total..step.row * total + step.position + 1].fill(1);
        }
        let input_ids = Tensor::from_array(([rows, 1], ids))?;
        let attention_mask = Tensor::from_array(([rows, total], mask))?;
        self.batch(rows)?;
        let Some(batch) = self
            .batches
            .get_mut(rows.trailing_zeros() as usize)
            .and_then(Option::as_mut)
        else {
            return Ok(Vec::new());
        };
        batch.binding.bind_input("input_ids", &input_ids)?;
        batch
            .binding
            .bind_input("attention_mask", &attention_mask)?;
        let outputs = self.session.run_binding(&batch.binding)?;
        let (_, logits) = outputs["logits"].try_extract_tensor::<f32>()?;
        Ok(steps
            .iter()
            .map(|step| logits[step.row * s.vocab..(step.row + 1) * s.vocab].to_vec())
            .collect())
    }

    /// The `rows` buffer, made and bound on first use.
    fn batch(&mut self, rows: usize) -> Result<&mut Batch, EngineError> {
        let index = rows.trailing_zeros() as usize;
        if self.batches.len() <= index {
            self.batches.resize_with(index + 1, || None);
        }
        if self.batches[index].is_none() {
            let s = self.shape;
            let allocator = Allocator::new(
                &self.session,
                MemoryInfo::new(
                    AllocationDevice::CPU,
                    0,
                    AllocatorType::Device,
                    MemoryType::Default,
                )?,
            )?;
            let mut binding = self.session.create_binding()?;
            let mut cache = Vec::with_capacity(s.layers);
            for layer in 0..s.layers {
                let mut key =
                    Tensor::<f32>::new(&allocator, [rows, s.kv_heads, s.max_context, s.head_dim])?;
                let mut value =
                    Tensor::<f32>::new(&allocator, [rows, s.kv_heads, s.max_context, s.head_dim])?;
                binding.bind_input(format!("past_key_values.{layer}.key"), &key)?;
                binding.bind_input(format!("past_key_values.{layer}.value"), &value)?;
                binding.bind_output(format!("present.{layer}.key"), &mut key)?;
                binding.bind_output(format!("present.{layer}.value"), &mut value)?;
                cache.push([key, value]);
            }
            binding.bind_output_to_device(
                "logits",
                &MemoryInfo::new(
                    AllocationDevice::CPU,
                    0,
                    AllocatorType::Device,
                    MemoryType::Default,
                )?,
            )?;
            tracing::debug!(rows, "KV batch buffer made");
            self.batches[index] = Some(Batch {
                rows,
                cache,
                binding,
            });
        }
        match self.batches[index].as_mut() {
            Some(batch) => Ok(batch),
            None => Err(ort::Error::new("batch buffer missing")),
        }
    }

    /// Frees buffers larger than `rows` (after a busy spell).
    pub fn release_above(&mut self, rows: usize) {
        for batch in self.batches.iter_mut() {
            if batch.as_ref().is_some_and(|b| b.rows > rows) {
                *batch = None;
            }
        }
    }
}

/// Where `(row, head, position)` starts in a [rows, kv_heads, max_context, head_dim] buffer.
fn offset(s: Shape, row: usize, head: usize, position: usize) -> usize {
    ((row * s.kv_heads + head) * s.max_context + position) * s.head_dim
}
