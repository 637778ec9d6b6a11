//! What the scheduler needs from a chat model, as a trait over plain data: prefill
//! prompts, copy their keys and values into rows of a batch buffer, lay the buffer out
//! anew, and run one decode step over it. [`super::engine::Engine`] is the real one (ONNX
//! Runtime); the scheduler's tests use a fake, so its policy is tested without a model.

/// The shape facts the scheduler and the prefix cache need.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub layers: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    /// Positions per row.
    pub max_context: usize,
}

/// The size of a batch buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub rows: usize,
    /// Positions per row.
    pub capacity: usize,
}

/// The smallest capacity of a buffer.
const MIN_CAPACITY: usize = 256;

impl Shape {
    /// The bytes a buffer of `layout` takes (keys and values of every layer, f32).
    pub fn layout_bytes(&self, layout: Layout) -> usize {
        layout.rows * layout.capacity * self.layers * 2 * self.kv_heads * self.head_dim * 4
    }

    /// The smallest layout holding `sequences` rows of up to `positions` positions: a
    /// power-of-two number of rows (one stream does not pay for sixteen rows of compute)
    /// and a power-of-two number of positions from 256 up to `max_context` (a new buffer
    /// is zeroed, and zeroing the largest one takes seconds).
    pub fn layout_for(&self, sequences: usize, positions: usize) -> Layout {
        Layout {
            rows: sequences.max(1).next_power_of_two(),
            capacity: positions
                .max(MIN_CAPACITY)
                .next_power_of_two()
                .min(self.max_context),
        }
    }
}

/// A prompt's keys and values per layer ([kv_heads, len, head_dim] each), as prefill
/// leaves them.
pub type PrefillCache = Vec<[Vec<f32>; 2]>;

/// Where one row's sequence is in a batch decode step.
#[derive(Debug, Clone, Copy)]
pub struct Step {
    pub row: usize,
    /// The token to feed.
    pub token: u32,
    /// Its position (how many tokens the row holds before it).
    pub position: usize,
}

/// What a model call failed with.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct ModelError(pub String);

impl From<ort::Error> for ModelError {
    fn from(err: ort::Error) -> ModelError {
        ModelError(err.to_string())
    }
}

/// A chat model as the scheduler drives it.
pub trait Model {
    fn shape(&self) -> Shape;

    /// Runs prompts on an empty cache, together when there are several; returns per
    /// prompt its last position's logits and its keys/values for [`Model::place`].
    fn prefill(&mut self, prompts: &[&[u32]]) -> Result<Vec<(Vec<f32>, PrefillCache)>, ModelError>;

    /// Prefills `suffix` after a prompt prefix whose keys and values are known
    /// (`prefix_len` positions): the last position's logits and the whole prompt's cache,
    /// as [`Model::prefill`] would give for prefix and suffix together.
    fn prefill_after(
        &mut self,
        prefix: &PrefillCache,
        prefix_len: usize,
        suffix: &[u32],
    ) -> Result<(Vec<f32>, PrefillCache), ModelError>;

    /// Copies a prefilled cache of `len` positions into `row` of the current buffer.
    fn place(&mut self, row: usize, cache: &PrefillCache, len: usize) -> Result<(), ModelError>;

    /// Makes a buffer of `layout` the current one, moving sequences into it:
    /// `(from_row, to_row, len)` from the current buffer.
    fn relayout(
        &mut self,
        layout: Layout,
        moves: &[(usize, usize, usize)],
    ) -> Result<(), ModelError>;

    /// One decode step over the current buffer: each step's token at its position.
    /// Returns each step's logits, in the order given.
    fn decode(&mut self, steps: &[Step]) -> Result<Vec<Vec<f32>>, ModelError>;
}
