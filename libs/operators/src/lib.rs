//! SloughGPT's own ONNX Runtime operators, domain [`DOMAIN`]: the graphs modelkit writes
//! may use them, so every session that runs a package registers [`domain`] (see the
//! README beside this crate for what they compute, how they are registered and how each
//! instruction-set path is tested). Depends on onnxruntime (`ort`) and `half` only.
//!
//! Both read a matrix as blocks of 32 (values `[rows, K/32, 16 or 32]` u8, scales
//! `[rows, K/32]` f16, and for 4 bits minimums `[rows, K/32]` f16: ggml's Q4_0, Q4_1
//! and Q8_0 without conversion, see [`dot`]); attributes `K` and `bits`.
//!
//! - `BlockMatMul` (`A [.., K] · Wᵀ → [.., N]`, attribute `N` too) quantizes A to int8
//!   blocks of 32 as llama.cpp does. It replaces `MatMulNBits` at accuracy level 4,
//!   which needs Q4_1's block minimums as a separate matmul over the activations' block
//!   sums (a fifth of the time per token, in 240 small nodes); here they cost a
//!   multiply-add per block.
//! - `BlockGather` (`ids [..] → rows [.., K]`, int64 ids) reads an embedding table's
//!   rows, so a tied lm_head and the embedding share one copy of the weights.

#![allow(
    unsafe_code,
    reason = "SIMD intrinsics, and one output written by several threads"
)]

pub mod dot;

use half::f16;
use ort::{
    operator::{
        ComputeContext, Kernel, KernelContext, Operator, OperatorDomain, OperatorInput,
        OperatorOutput,
    },
    value::{TensorElementType, ValueRef},
};

pub use self::dot::Isa;
use self::dot::{BLOCK, Layout, Matrix, Quantized, TILE};

/// The operator domain of our operators.
pub const DOMAIN: &str = "ai.sloughgpt";

/// The matmul over blocks.
pub const BLOCK_MATMUL: &str = "BlockMatMul";

/// The embedding lookup over blocks.
pub const BLOCK_GATHER: &str = "BlockGather";

/// Weight rows per task handed to the session's threads.
const ROWS_PER_TASK: usize = 16;

/// The domain with every operator, for `SessionBuilder::with_operators`; `BlockMatMul`
/// runs on the fastest instruction set this CPU has ([`Isa::detect`]).
pub fn domain() -> ort::Result<OperatorDomain> {
    domain_on(Isa::detect())
}

/// The domain with `BlockMatMul` on instruction set `isa`: what tests use to run the
/// portable path on a CPU that has faster ones. `isa` must be one the CPU runs
/// ([`Isa::available`]).
pub fn domain_on(isa: Isa) -> ort::Result<OperatorDomain> {
    if !Isa::available().contains(&isa) {
        return Err(ort::Error::new(format!("this CPU cannot run {isa:?}")));
    }
    OperatorDomain::new(DOMAIN)?
        .add(BlockMatMul { isa })?
        .add(BlockGather)
}

/// Creates a session that uses [`domain`], one at a time in this process: onnxruntime
/// adds a custom domain to a process-wide table the first time a session uses it,
/// without a lock, so two sessions created at once can both add ours and one fails
/// ("the domain is already exist").
pub fn create_session<T>(create: impl FnOnce() -> T) -> T {
    static CREATING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _creating = CREATING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    create()
}

/// The first input (the activations or the ids), then the matrix's three.
fn inputs(first: TensorElementType) -> [OperatorInput; 4] {
    [
        OperatorInput::required(first),
        OperatorInput::required(TensorElementType::Uint8),
        OperatorInput::required(TensorElementType::Float16),
        OperatorInput::optional(TensorElementType::Float16),
    ]
}

/// What both operators' attributes say about the matrix.
#[derive(Debug, Clone, Copy)]
struct Shape {
    k: usize,
    bits: u8,
}

/// A non-negative integer attribute.
fn attribute(op: &str, info: &KernelContext<'_>, name: &str) -> ort::Result<usize> {
    info.get::<i64>(name)
        .and_then(|value| usize::try_from(value).ok())
        .ok_or_else(|| ort::Error::new(format!("{op}: attribute {name} is missing or negative")))
}

impl Shape {
    fn read(op: &str, info: &KernelContext<'_>) -> ort::Result<Shape> {
        let (k, bits) = (attribute(op, info, "K")?, attribute(op, info, "bits")?);
        if k == 0 || !k.is_multiple_of(BLOCK) {
            return Err(ort::Error::new(format!(
                "{op}: K = {k} is not a multiple of {BLOCK}"
            )));
        }
        match bits {
            4 | 8 => Ok(Shape {
                k,
                bits: bits as u8,
            }),
            _ => Err(ort::Error::new(format!(
                "{op}: bits = {bits}, expected 4 or 8"
            ))),
        }
    }

    /// The matrix in inputs 1 to 3, checked to be whole rows of this shape.
    fn matrix<'v>(
        self,
        op: &str,
        values: &'v ValueRef<'_>,
        scales: &'v ValueRef<'_>,
        mins: Option<&'v ValueRef<'_>>,
    ) -> ort::Result<Matrix<'v>> {
        let blocks = self.k / BLOCK;
        let matrix = Matrix {
            bits: self.bits,
            blocks,
            values: values.try_extract_tensor::<u8>()?.1,
            scales: scales.try_extract_tensor::<f16>()?.1,
            mins: match mins {
                Some(mins) => mins.try_extract_tensor::<f16>()?.1,
                None => &[],
            },
        };
        let rows = matrix.rows();
        let mins = if self.bits == 4 { rows * blocks } else { 0 };
        if !matrix.scales.len().is_multiple_of(blocks)
            || matrix.values.len() != rows * blocks * Matrix::block_bytes(self.bits)
            || matrix.mins.len() != mins
        {
            return Err(ort::Error::new(format!(
                "{op}: {} value bytes, {} scales and {} minimums do not make rows of {blocks} \
                 {}-bit blocks",
                matrix.values.len(),
                matrix.scales.len(),
                matrix.mins.len(),
                self.bits
            )));
        }
        Ok(matrix)
    }
}

struct BlockMatMul {
    isa: Isa,
}

impl Operator for BlockMatMul {
    type Kernel<'attr> = BlockMatMulKernel;

    fn name(&self) -> &str {
        BLOCK_MATMUL
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        inputs(TensorElementType::Float32)
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::required(TensorElementType::Float32)]
    }

    fn create_kernel<'attr>(
        &self,
        info: &KernelContext<'attr>,
    ) -> ort::Result<Self::Kernel<'attr>> {
        Ok(BlockMatMulKernel {
            shape: Shape::read(BLOCK_MATMUL, info)?,
            n: attribute(BLOCK_MATMUL, info, "N")?,
            isa: self.isa,
        })
    }
}

struct BlockMatMulKernel {
    shape: Shape,
    n: usize,
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

/// An input the graph must give.
fn required<'c>(ctx: &'c ComputeContext, op: &str, at: usize) -> ort::Result<ValueRef<'c>> {
    ctx.input(at)?
        .ok_or_else(|| ort::Error::new(format!("{op}: input {at} is missing")))
}

impl Kernel for BlockMatMulKernel {
    fn compute(&mut self, ctx: &ComputeContext) -> ort::Result<()> {
        let input = required(ctx, BLOCK_MATMUL, 0)?;
        let (shape, a) = input.try_extract_tensor::<f32>()?;
        let (values, scales) = (
            required(ctx, BLOCK_MATMUL, 1)?,
            required(ctx, BLOCK_MATMUL, 2)?,
        );
        let mins = ctx.input(3)?;
        let weights = self
            .shape
            .matrix(BLOCK_MATMUL, &values, &scales, mins.as_ref())?;
        let (k, n) = (self.shape.k, self.n);
        if weights.rows() != n {
            return Err(ort::Error::new(format!(
                "{BLOCK_MATMUL}: the weights have {} rows, N = {n}",
                weights.rows()
            )));
        }
        if shape.last().copied() != Some(k as i64) {
            return Err(ort::Error::new(format!(
                "{BLOCK_MATMUL}: input shape {shape:?} does not end in K = {k}"
            )));
        }
        let mut out_shape = shape.to_vec();
        if let Some(last) = out_shape.last_mut() {
            *last = n as i64;
        }
        let mut output = ctx
            .output(0, out_shape)?
            .ok_or_else(|| ort::Error::new(format!("{BLOCK_MATMUL}: no output")))?;
        let (_, out) = output.try_extract_tensor_mut::<f32>()?;
        if a.is_empty() {
            return Ok(());
        }

        let layout = Layout::for_bits(self.shape.bits);
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

struct BlockGather;

impl Operator for BlockGather {
    type Kernel<'attr> = BlockGatherKernel;

    fn name(&self) -> &str {
        BLOCK_GATHER
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        inputs(TensorElementType::Int64)
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::required(TensorElementType::Float32)]
    }

    fn create_kernel<'attr>(
        &self,
        info: &KernelContext<'attr>,
    ) -> ort::Result<Self::Kernel<'attr>> {
        Ok(BlockGatherKernel {
            shape: Shape::read(BLOCK_GATHER, info)?,
        })
    }
}

struct BlockGatherKernel {
    shape: Shape,
}

impl Kernel for BlockGatherKernel {
    fn compute(&mut self, ctx: &ComputeContext) -> ort::Result<()> {
        let ids = required(ctx, BLOCK_GATHER, 0)?;
        let (shape, ids) = ids.try_extract_tensor::<i64>()?;
        let (values, scales) = (
            required(ctx, BLOCK_GATHER, 1)?,
            required(ctx, BLOCK_GATHER, 2)?,
        );
        let mins = ctx.input(3)?;
        let table = self
            .shape
            .matrix(BLOCK_GATHER, &values, &scales, mins.as_ref())?;
        let k = self.shape.k;
        let mut out_shape = shape.to_vec();
        out_shape.push(k as i64);
        let mut output = ctx
            .output(0, out_shape)?
            .ok_or_else(|| ort::Error::new(format!("{BLOCK_GATHER}: no output")))?;
        let (_, out) = output.try_extract_tensor_mut::<f32>()?;
        for (&id, row) in ids.iter().zip(out.chunks_exact_mut(k)) {
            let id = usize::try_from(id)
                .ok()
                .filter(|&id| id < table.rows())
                .ok_or_else(|| {
                    ort::Error::new(format!(
                        "{BLOCK_GATHER}: id {id} is outside the table's {} rows",
                        table.rows()
                    ))
                })?;
            table.dequantize_row(id, row);
        }
        Ok(())
    }
}
