//! How fast `BlockMatMul`'s arithmetic is on this CPU, per instruction set, on one
//! thread: the matrices of one decoding step of SmolLM2-135M (30 layers of 4-bit
//! blocks, the 8-bit lm_head), for 1 and 4 activation rows. Prints milliseconds per
//! step and the weight bytes read per second. `cargo bench -p slough-operators --bench
//! kernels`.

use std::time::{Duration, Instant};

use half::f16;
use slough_operators::dot::{BLOCK, Isa, Layout, Matrix, Quantized, TILE};

/// A matrix's storage.
struct Weights {
    bits: u8,
    blocks: usize,
    values: Vec<u8>,
    scales: Vec<f16>,
    mins: Vec<f16>,
}

impl Weights {
    /// `rows` rows of `k` columns of arbitrary blocks.
    fn new(bits: u8, rows: usize, k: usize, seed: usize) -> Weights {
        let blocks = k / BLOCK;
        let count = rows * blocks;
        let noise = |i: usize| ((i * 2_654_435_761 + seed * 40_503) >> 7) % 251;
        Weights {
            bits,
            blocks,
            values: (0..count * Matrix::block_bytes(bits))
                .map(|i| match bits {
                    8 => (noise(i) as i32 - 125) as i8 as u8,
                    _ => noise(i) as u8,
                })
                .collect(),
            scales: (0..count)
                .map(|i| f16::from_f32(0.001 * (1 + noise(i) % 7) as f32))
                .collect(),
            mins: match bits {
                8 => Vec::new(),
                _ => (0..count)
                    .map(|i| f16::from_f32(-0.004 * (noise(i) % 5) as f32))
                    .collect(),
            },
        }
    }

    fn matrix(&self) -> Matrix<'_> {
        Matrix {
            bits: self.bits,
            blocks: self.blocks,
            values: &self.values,
            scales: &self.scales,
            mins: &self.mins,
        }
    }

    fn bytes(&self) -> usize {
        self.values.len() + 2 * (self.scales.len() + self.mins.len())
    }
}

/// One step's products: quantize the input, then every tile, as the operator does.
fn product(isa: Isa, weights: &Weights, input: &[f32], q: &mut Quantized) {
    let matrix = weights.matrix();
    let k = matrix.blocks * BLOCK;
    let layout = Layout::for_bits(matrix.bits);
    q.quantize(input, k, layout, isa);
    let rows: Vec<_> = (0..q.rows()).map(|m| q.row(m)).collect();
    let n = matrix.rows();
    let mut tile = [0f32; TILE * TILE];
    for first in (0..n).step_by(TILE) {
        let columns = TILE.min(n - first);
        let tile = &mut tile[..columns * rows.len()];
        isa.dot(matrix.slice(first, columns), &rows, layout, tile);
        std::hint::black_box(tile);
    }
}

fn main() {
    let (hidden, intermediate, layers, vocab) = (576, 1536, 30, 49152);
    let mut model = Vec::new();
    for layer in 0..layers {
        model.push(Weights::new(4, hidden + 2 * 192, hidden, 4 * layer));
        model.push(Weights::new(4, hidden, hidden, 4 * layer + 1));
        model.push(Weights::new(4, 2 * intermediate, hidden, 4 * layer + 2));
        model.push(Weights::new(4, hidden, intermediate, 4 * layer + 3));
    }
    model.push(Weights::new(8, vocab, hidden, 0));
    let bytes: usize = model.iter().map(Weights::bytes).sum();
    println!(
        "one decoding step of SmolLM2-135M: {:.1} MB of weights, one thread",
        bytes as f64 / 1e6
    );
    let mut q = Quantized::default();
    // The same step's work on one matrix that stays in the core's cache: the difference
    // is the time spent waiting for memory.
    let hot: Vec<&Weights> = std::iter::repeat_n(&model[2], model.len()).collect();
    for isa in Isa::available() {
        for rows in [1, TILE] {
            let input: Vec<f32> = (0..rows * intermediate)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
                .collect();
            for (name, set) in [
                ("model", model.iter().collect::<Vec<_>>()),
                ("in cache", hot.clone()),
            ] {
                let bytes: usize = set.iter().map(|w| w.bytes()).sum();
                let step = |q: &mut Quantized| {
                    for weights in &set {
                        let k = weights.blocks * BLOCK;
                        product(isa, weights, &input[..rows * k], q);
                    }
                };
                step(&mut q);
                let (started, mut steps) = (Instant::now(), 0u32);
                while started.elapsed() < Duration::from_secs(2) {
                    step(&mut q);
                    steps += 1;
                }
                let seconds = started.elapsed().as_secs_f64() / f64::from(steps);
                println!(
                    "{:<10} {rows} row{}  {name:<8}  {:6.2} ms per step  {:5.1} GB/s",
                    format!("{isa:?}"),
                    if rows == 1 { " " } else { "s" },
                    seconds * 1e3,
                    bytes as f64 / seconds / 1e9
                );
            }
        }
    }
}
