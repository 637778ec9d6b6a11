//! SloughGPT's own ONNX Runtime operators, domain [`DOMAIN`]: the graphs modelkit writes
//! may use them, so every session that runs a package registers [`domain`].
//!
//! `BlockMatMul` (`A [.., K] · Wᵀ → [.., N]`, attributes `K`, `N` and `bits`) reads W
//! as blocks of 32 (values `[N, K/32, 16 or 32]` u8, scales `[N, K/32]` f16, and for
//! 4 bits minimums `[N, K/32]` f16: ggml's Q4_0, Q4_1 and Q8_0 without conversion, see
//! [`dot`]) and quantizes A to int8 blocks of 32 as llama.cpp does. It replaces
//! `MatMulNBits` at accuracy level 4, which needs Q4_1's block minimums as a separate
//! matmul over the activations' block sums (a fifth of the time per token, in 240
//! small nodes); here they cost a multiply-add per block.

pub mod dot;

use ort::{
    operator::{
        ComputeContext, Kernel, KernelContext, Operator, OperatorDomain, OperatorInput,
        OperatorOutput,
    },
    value::TensorElementType,
};

use half::f16;

use self::dot::{BLOCK, Isa, Layout, Matrix, Quantized, TILE};

/// The operator domain of our operators.
pub const DOMAIN: &str = "ai.sloughgpt";

/// The matmul over ggml blocks.
pub const BLOCK_MATMUL: &str = "BlockMatMul";

/// Weight rows per task handed to the session's threads.
const ROWS_PER_TASK: usize = 16;

/// The domain with every operator, for `SessionBuilder::with_operators`.
pub fn domain() -> ort::Result<OperatorDomain> {
    OperatorDomain::new(DOMAIN)?.add(BlockMatMul)
}

struct BlockMatMul;

impl Operator for BlockMatMul {
    type Kernel<'attr> = BlockMatMulKernel;

    fn name(&self) -> &str {
        BLOCK_MATMUL
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        [
            OperatorInput::required(TensorElementType::Float32),
            OperatorInput::required(TensorElementType::Uint8),
            OperatorInput::required(TensorElementType::Float16),
            OperatorInput::optional(TensorElementType::Float16),
        ]
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::required(TensorElementType::Float32)]
    }

    fn create_kernel<'attr>(
        &self,
        info: &KernelContext<'attr>,
    ) -> ort::Result<Self::Kernel<'attr>> {
        let attribute = |name: &str| {
            info.get::<i64>(name)
                .and_then(|value| usize::try_from(value).ok())
                .ok_or_else(|| {
                    ort::Error::new(format!(
                        "{BLOCK_MATMUL}: attribute {name} is missing or negative"
                    ))
                })
        };
        let (k, n, bits) = (attribute("K")?, attribute("N")?, attribute("bits")?);
        if k == 0 || !k.is_multiple_of(BLOCK) {
            return Err(ort::Error::new(format!(
                "{BLOCK_MATMUL}: K = {k} is not a multiple of {BLOCK}"
            )));
        }
        let bits = match bits {
            4 => 4,
            8 => 8,
            _ => {
                return Err(ort::Error::new(format!(
                    "{BLOCK_MATMUL}: bits = {bits}, expected 4 or 8"
                )));
            }
        };
        Ok(BlockMatMulKernel {
            k,
            n,
            bits,
            isa: Isa::detect(),
        })
    }
}

struct BlockMatMulKernel {
    k: usize,
    n: usize,
    bits: u8,
    isa: Isa,
}

thread_local! {
    /// The input's quantized rows, kept for the next call on this thread (onnxruntime
    /// may run one kernel from several threads at once, so not in the kernel).
    static ACTIVATIONS: std::cell::RefCell<Quantized> = std::cell::RefCell::default();
}

/// The output, written by several threads at disjoint places.
#[derive(Clone, Copy)]
struct Output(*mut f32);

impl Output {
    /// # Safety
    /// `at` lies inside the output, and no other thread writes there.
    unsafe fn write(self, at: usize, value: f32) {
        // SAFETY: as the caller promises.
        unsafe { *self.0.add(at) = value };
    }
}

// SAFETY: each task writes only the columns of its own weight rows.
unsafe impl Send for Output {}
// SAFETY: as above.
unsafe impl Sync for Output {}

impl Kernel for BlockMatMulKernel {
    fn compute(&mut self, ctx: &ComputeContext) -> ort::Result<()> {
        let error = |what: String| ort::Error::new(format!("{BLOCK_MATMUL}: {what}"));
        let missing = |what: &str| error(format!("no {what}"));
        let input = ctx.input(0)?.ok_or_else(|| missing("input"))?;
        let (shape, a) = input.try_extract_tensor::<f32>()?;
        let values = ctx.input(1)?.ok_or_else(|| missing("values"))?;
        let scales = ctx.input(2)?.ok_or_else(|| missing("scales"))?;
        let mins = ctx.input(3)?;
        let (k, n, bits) = (self.k, self.n, self.bits);
        let blocks = k / BLOCK;
        let weights = Matrix {
            bits,
            blocks,
            values: values.try_extract_tensor::<u8>()?.1,
            scales: scales.try_extract_tensor::<f16>()?.1,
            mins: match &mins {
                Some(mins) => mins.try_extract_tensor::<f16>()?.1,
                None => &[],
            },
        };
        let expected_mins = if bits == 4 { n * blocks } else { 0 };
        if weights.values.len() != n * blocks * Matrix::block_bytes(bits)
            || weights.scales.len() != n * blocks
            || weights.mins.len() != expected_mins
        {
            return Err(error(format!(
                "weights of {} value bytes, {} scales and {} minimums \
                 do not make {n} rows of {blocks} {bits}-bit blocks",
                weights.values.len(),
                weights.scales.len(),
                weights.mins.len()
            )));
        }
        if shape.last().copied() != Some(k as i64) {
            return Err(error(format!(
                "input shape {shape:?} does not end in K = {k}"
            )));
        }
        let mut out_shape = shape.to_vec();
        if let Some(last) = out_shape.last_mut() {
            *last = n as i64;
        }
        let mut output = ctx.output(0, out_shape)?.ok_or_else(|| missing("output"))?;
        let (_, out) = output.try_extract_tensor_mut::<f32>()?;
        if a.is_empty() {
            return Ok(());
        }

        let layout = if bits == 8 {
            Layout::Natural
        } else {
            Layout::Paired
        };
        let isa = self.isa;
        ACTIVATIONS.with_borrow_mut(|activations| {
            activations.quantize(a, k, layout, isa);
            let rows: Vec<_> = (0..activations.rows())
                .map(|m| activations.row(m))
                .collect();
            let target = Output(out.as_mut_ptr());
            ctx.par_for(n.div_ceil(ROWS_PER_TASK), 0, move |task| {
                let mut tile = [0f32; TILE * TILE];
                let end = ((task + 1) * ROWS_PER_TASK).min(n);
                for first in (task * ROWS_PER_TASK..end).step_by(TILE) {
                    let columns = TILE.min(end - first);
                    let weights = weights.slice(first, columns);
                    for (group, rows) in rows.chunks(TILE).enumerate() {
                        let tile = &mut tile[..columns * rows.len()];
                        isa.dot(weights, rows, layout, tile);
                        for (at, &value) in tile.iter().enumerate() {
                            let (c, r) = (at / rows.len(), at % rows.len());
                            let at = (group * TILE + r) * n + first + c;
                            // SAFETY: at < rows·n, the output's length; no other task
                            // writes this column.
                            unsafe { target.write(at, value) };
                        }
                    }
                }
            })
        })?;
        Ok(())
    }
}
