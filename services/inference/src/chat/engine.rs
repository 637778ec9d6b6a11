//! One chat model's ONNX session and KV cache (see `shared/notes/onnx-llama.md`).
//!
//! Prompts are prefilled alone on an empty cache; their keys and values are then copied
//! into rows of a batch buffer, and every decode step runs all rows together. The batch
//! buffer is a set of ONNX Runtime tensors bound (IoBinding) as both `past_key_values.*`
//! and `present.*`, so GroupQueryAttention appends each new position in place instead
//! of copying the cache. Its [`Layout`] follows the load: a power-of-two number of rows
//! (one stream does not pay for sixteen rows of compute) and a power-of-two number of
//! positions from 256 up to `max_context` (ort zeroes a new tensor, and zeroing 16 rows
//! of 2048 positions, 1.5 GB with SmolLM2, takes seconds). Sequences move to a new
//! buffer when the layout changes; only the current buffer is kept.

use ort::{
    memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType},
    session::{IoBinding, Session},
    value::Tensor,
};

use super::model::{Layout, Model, ModelError, PrefillCache, Shape, Step};

/// A batch buffer bound to the session.
struct Batch {
    layout: Layout,
    /// Per layer: key, value, each [rows, kv_heads, capacity, head_dim].
    cache: Vec<[Tensor<f32>; 2]>,
    binding: IoBinding,
}

/// A chat model's session and its batch buffer.
pub struct Engine {
    session: Session,
    shape: Shape,
    batch: Option<Batch>,
}

impl Engine {
    pub fn new(session: Session, shape: Shape) -> Engine {
        Engine {
            session,
            shape,
            batch: None,
        }
    }

    /// The inputs that run `prompts` on an empty cache, right-padded to the longest.
    fn prompt_inputs(
        &self,
        prompts: &[&[u32]],
    ) -> Result<Vec<(String, ort::session::SessionInputValue<'static>)>, ModelError> {
        let s = self.shape;
        let rows = prompts.len();
        let width = prompts.iter().map(|p| p.len()).max().unwrap_or(0);
        let mut ids = vec![0i64; rows * width];
        let mut mask = vec![0i64; rows * width];
        for (row, prompt) in prompts.iter().enumerate() {
            for (col, &token) in prompt.iter().enumerate() {
                ids[row * width + col] = i64::from(token);
                mask[row * width + col] = 1;
            }
        }
        let mut inputs: Vec<(String, ort::session::SessionInputValue<'static>)> = vec![
            (
                "input_ids".into(),
                Tensor::from_array(([rows, width], ids))?.into(),
            ),
            (
                "attention_mask".into(),
                Tensor::from_array(([rows, width], mask))?.into(),
            ),
        ];
        for layer in 0..s.layers {
            for part in ["key", "value"] {
                inputs.push((
                    format!("past_key_values.{layer}.{part}"),
                    Tensor::from_array(([rows, s.kv_heads, 0, s.head_dim], Vec::<f32>::new()))?
                        .into(),
                ));
            }
        }
        Ok(inputs)
    }

    /// Teacher-forced logits of `tokens` from position `first` on, through the same
    /// path a generation takes: `tokens[..=first]` prefilled, then one decode step per
    /// following token. Entry i predicts `tokens[first + i + 1]` (what perplexity
    /// scores). Uses row 0 of a one-row buffer, so only for an engine of its own.
    pub fn teacher_forced(
        &mut self,
        tokens: &[u32],
        first: usize,
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        if first + 1 >= tokens.len() {
            return Ok(Vec::new());
        }
        let (last, cache) = self
            .prefill(&[&tokens[..=first]])?
            .pop()
            .ok_or_else(|| ModelError("prefill returned nothing".to_owned()))?;
        self.relayout(self.shape.layout_for(1, tokens.len()), &[])?;
        self.place(0, &cache, first + 1)?;
        let mut logits = vec![last];
        let fed = &tokens[first + 1..tokens.len() - 1];
        for (position, &token) in (first + 1..).zip(fed) {
            let step = Step {
                row: 0,
                token,
                position,
            };
            logits.extend(self.decode(&[step])?);
        }
        Ok(logits)
    }

    /// A new buffer of `layout`, bound to the session.
    fn make(&mut self, layout: Layout) -> Result<Batch, ModelError> {
        let s = self.shape;
        let allocator = Allocator::default();
        let dims = [layout.rows, s.kv_heads, layout.capacity, s.head_dim];
        let mut binding = self.session.create_binding()?;
        let mut cache = Vec::with_capacity(s.layers);
        for layer in 0..s.layers {
            let mut key = Tensor::<f32>::new(&allocator, dims)?;
            let mut value = Tensor::<f32>::new(&allocator, dims)?;
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
        Ok(Batch {
            layout,
            cache,
            binding,
        })
    }
}

impl Model for Engine {
    fn shape(&self) -> Shape {
        self.shape
    }

    /// Runs prompts on an empty cache, together (right-padded) when there are several;
    /// returns per prompt its last position's logits and its keys/values per layer
    /// ([kv_heads, len, head_dim] each) for [`Engine::place`].
    fn prefill(&mut self, prompts: &[&[u32]]) -> Result<Vec<(Vec<f32>, PrefillCache)>, ModelError> {
        let s = self.shape;
        let rows = prompts.len();
        let width = prompts.iter().map(|p| p.len()).max().unwrap_or(0);
        let inputs = self.prompt_inputs(prompts)?;
        let outputs = self.session.run(inputs)?;
        // One row of logits per prompt (its last position).
        let (_, logits) = outputs["logits"].try_extract_tensor::<f32>()?;
        let per_row = logits.len() / rows.max(1);
        let mut presents = Vec::with_capacity(s.layers);
        for layer in 0..s.layers {
            let part = |name: &str| -> Result<&[f32], ModelError> {
                let (_, data) = outputs[format!("present.{layer}.{name}").as_str()]
                    .try_extract_tensor::<f32>()?;
                Ok(data)
            };
            presents.push([part("key")?, part("value")?]);
        }
        let mut prefilled = Vec::with_capacity(rows);
        for (row, prompt) in prompts.iter().enumerate() {
            let len = prompt.len();
            let last = logits[(row + 1) * per_row - s.vocab..(row + 1) * per_row].to_vec();
            let cache = presents
                .iter()
                .map(|parts| {
                    parts.map(|data| {
                        (0..s.kv_heads)
                            .flat_map(|head| {
                                let at = (row * s.kv_heads + head) * width * s.head_dim;
                                data[at..at + len * s.head_dim].iter().copied()
                            })
                            .collect()
                    })
                })
                .collect();
            prefilled.push((last, cache));
        }
        Ok(prefilled)
    }

    /// Prefills `suffix` after a prompt prefix whose keys and values are known
    /// (`prefix`, `prefix_len` positions, as a cached [`PrefillCache`]): only the suffix
    /// is computed. Returns the last position's logits and the whole prompt's cache, as
    /// [`Engine::prefill`] would for the prefix and suffix together. One prompt per call:
    /// ONNX Runtime's GroupQueryAttention takes several new positions after a past only
    /// for a batch of one.
    fn prefill_after(
        &mut self,
        prefix: &PrefillCache,
        prefix_len: usize,
        suffix: &[u32],
    ) -> Result<(Vec<f32>, PrefillCache), ModelError> {
        let s = self.shape;
        let ids: Vec<i64> = suffix.iter().map(|&t| i64::from(t)).collect();
        let total = prefix_len + suffix.len();
        let mut inputs: Vec<(String, ort::session::SessionInputValue<'static>)> = vec![
            (
                "input_ids".into(),
                Tensor::from_array(([1, suffix.len()], ids))?.into(),
            ),
            (
                "attention_mask".into(),
                Tensor::from_array(([1, total], vec![1i64; total]))?.into(),
            ),
        ];
        for (layer, parts) in prefix.iter().enumerate() {
            for (part, name) in parts.iter().zip(["key", "value"]) {
                inputs.push((
                    format!("past_key_values.{layer}.{name}"),
                    Tensor::from_array(([1, s.kv_heads, prefix_len, s.head_dim], part.clone()))?
                        .into(),
                ));
            }
        }
        let outputs = self.session.run(inputs)?;
        let (_, logits) = outputs["logits"].try_extract_tensor::<f32>()?;
        let last = logits[logits.len() - s.vocab..].to_vec();
        let mut cache = Vec::with_capacity(s.layers);
        for layer in 0..s.layers {
            let part = |name: &str| -> Result<Vec<f32>, ModelError> {
                let (_, data) = outputs[format!("present.{layer}.{name}").as_str()]
                    .try_extract_tensor::<f32>()?;
                Ok(data.to_vec())
            };
            cache.push([part("key")?, part("value")?]);
        }
        Ok((last, cache))
    }

    /// Copies a prefilled cache of `len` positions into `row` of the current buffer.
    fn place(&mut self, row: usize, cache: &PrefillCache, len: usize) -> Result<(), ModelError> {
        let s = self.shape;
        let batch = self.batch.as_mut().ok_or_else(no_buffer)?;
        let capacity = batch.layout.capacity;
        for (layer, parts) in cache.iter().enumerate() {
            for (part, source) in parts.iter().enumerate() {
                let (_, data) = batch.cache[layer][part].try_extract_tensor_mut::<f32>()?;
                for head in 0..s.kv_heads {
                    let from = head * len * s.head_dim;
                    let to = offset(s, capacity, row, head);
                    data[to..to + len * s.head_dim]
                        .copy_from_slice(&source[from..from + len * s.head_dim]);
                }
            }
        }
        Ok(())
    }

    /// Makes a buffer of `layout` the current one, moving sequences into it:
    /// `(from_row, to_row, len)` from the current buffer. The old buffer is dropped.
    fn relayout(
        &mut self,
        layout: Layout,
        moves: &[(usize, usize, usize)],
    ) -> Result<(), ModelError> {
        let s = self.shape;
        if self.batch.as_ref().is_some_and(|b| b.layout == layout) {
            return Ok(());
        }
        let mut new = self.make(layout)?;
        let old = self.batch.take();
        if let Some(old) = old {
            for layer in 0..s.layers {
                for part in 0..2 {
                    let (_, from) = old.cache[layer][part].try_extract_tensor::<f32>()?;
                    let (_, to) = new.cache[layer][part].try_extract_tensor_mut::<f32>()?;
                    for &(from_row, to_row, len) in moves {
                        for head in 0..s.kv_heads {
                            let a = offset(s, old.layout.capacity, from_row, head);
                            let b = offset(s, layout.capacity, to_row, head);
                            to[b..b + len * s.head_dim]
                                .copy_from_slice(&from[a..a + len * s.head_dim]);
                        }
                    }
                }
            }
        }
        tracing::debug!(
            rows = layout.rows,
            capacity = layout.capacity,
            "KV buffer laid out"
        );
        self.batch = Some(new);
        Ok(())
    }

    /// One decode step over the current buffer: each step's token at its position (rows
    /// without a step idle). Returns each step's logits, in the order given.
    fn decode(&mut self, steps: &[Step]) -> Result<Vec<Vec<f32>>, ModelError> {
        let s = self.shape;
        let batch = self.batch.as_mut().ok_or_else(no_buffer)?;
        let rows = batch.layout.rows;
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
}

fn no_buffer() -> ModelError {
    ModelError("no KV buffer laid out".to_owned())
}

/// Where `(row, head)` starts in a [rows, kv_heads, capacity, head_dim] buffer.
fn offset(s: Shape, capacity: usize, row: usize, head: usize) -> usize {
    (row * s.kv_heads + head) * capacity * s.head_dim
}
