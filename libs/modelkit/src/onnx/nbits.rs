//! ggml weight blocks as onnxruntime `MatMulNBits` inputs, or as our own `BlockMatMul`'s
//! (see [`slough_operators`]), without requantizing. For `MatMulNBits`:
//! Q4_0 maps exactly (default zero point 8); Q4_1's per-block minimum is split off into
//! a second, tiny matmul over the activations' block sums, which is exact too and keeps
//! the fast kernel (a float zero point would not); Q8_0 runs as two 4-bit halves plus
//! such a block term (see [`matmul`]), because the 8-bit CPU kernel is slow.
//!
//! A GGUF matrix with dims `[K, N]` is N rows of K values, each row K/32 blocks: the
//! `[N, k_blocks, blob]` order `MatMulNBits` wants. Only the nibble order differs: ggml
//! puts values j and j+16 in byte j; `MatMulNBits` puts 2j (low) and 2j+1 (high).

use super::{
    graph::{Attr, GraphBuilder, MS_DOMAIN},
    proto::DataType,
};
use crate::gguf::GgmlType;

/// Values per ggml block, and `MatMulNBits`' block size for them.
pub const BLOCK: usize = 32;

/// A weight matrix ready for `MatMulNBits`.
#[derive(Debug, Clone, PartialEq)]
pub struct NBitsWeight {
    /// 4 or 8.
    pub bits: u8,
    /// Output features (rows).
    pub n: usize,
    /// Input features (columns).
    pub k: usize,
    /// `[N, k_blocks, BLOCK·bits/8]` packed values.
    pub b: Vec<u8>,
    /// `[N, k_blocks]` block scales.
    pub scales: Vec<f32>,
    /// `[N, k_blocks]` block minimums, for Q4_1 only.
    pub mins: Option<Vec<f32>>,
}

impl NBitsWeight {
    /// The matrix's values, row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        let blob = BLOCK * usize::from(self.bits) / 8;
        let mut values = Vec::with_capacity(self.n * self.k);
        for (block, bytes) in self.b.chunks_exact(blob).enumerate() {
            let scale = self.scales[block];
            let min = self.mins.as_ref().map(|mins| mins[block]);
            if self.bits == 8 {
                values.extend(bytes.iter().map(|&q| (f32::from(q) - 128.0) * scale));
                continue;
            }
            for &byte in bytes {
                for q in [byte & 0x0F, byte >> 4] {
                    values.push(match min {
                        Some(min) => f32::from(q) * scale + min,
                        None => (f32::from(q) - 8.0) * scale,
                    });
                }
            }
        }
        values
    }
}

/// Repacks an `n × k` ggml matrix (`bytes` as stored in GGUF); `None` for another
/// type or a shape that does not match the bytes.
pub fn from_ggml(ggml_type: GgmlType, bytes: &[u8], n: usize, k: usize) -> Option<NBitsWeight> {
    let block_bytes = match ggml_type {
        GgmlType::Q4_0 => 18,
        GgmlType::Q4_1 => 20,
        GgmlType::Q8_0 => 34,
        _ => return None,
    };
    if !k.is_multiple_of(BLOCK) || bytes.len() != n * (k / BLOCK) * block_bytes {
        return None;
    }
    let blocks = n * k / BLOCK;
    let mut weight = NBitsWeight {
        bits: if ggml_type == GgmlType::Q8_0 { 8 } else { 4 },
        n,
        k,
        b: Vec::with_capacity(blocks * if ggml_type == GgmlType::Q8_0 { 32 } else { 16 }),
        scales: Vec::with_capacity(blocks),
        mins: (ggml_type == GgmlType::Q4_1).then(|| Vec::with_capacity(blocks)),
    };
    let half =
        |block: &[u8], at: usize| half::f16::from_le_bytes([block[at], block[at + 1]]).to_f32();
    for block in bytes.chunks_exact(block_bytes) {
        weight.scales.push(half(block, 0));
        match ggml_type {
            GgmlType::Q8_0 => weight.b.extend(block[2..34].iter().map(|q| q ^ 0x80)),
            _ => {
                let qs = if ggml_type == GgmlType::Q4_1 {
                    &block[4..20]
                } else {
                    &block[2..18]
                };
                if let Some(mins) = &mut weight.mins {
                    mins.push(half(block, 2));
                }
                // ggml value v: v < 16 → low nibble of qs[v], else high nibble of qs[v-16].
                let value = |v: usize| {
                    if v < 16 {
                        qs[v] & 0x0F
                    } else {
                        qs[v - 16] >> 4
                    }
                };
                weight
                    .b
                    .extend((0..16).map(|j| value(2 * j) | (value(2 * j + 1) << 4)));
            }
        }
    }
    Some(weight)
}

/// Options for the matmuls we emit.
#[derive(Debug, Clone, Copy)]
pub struct MatMulOptions {
    /// `MatMulNBits`' `accuracy_level`: 0 unset, 1 fp32, 4 int8 activations (faster on
    /// CPU, may flip near-tie argmaxes; measured, not assumed).
    pub accuracy_level: i64,
    /// What multiplies by int8 activations (accuracy level 4).
    pub int8_kernel: Int8Kernel,
}

/// The kernel for matmuls with int8-quantized activations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Int8Kernel {
    /// Our `BlockMatMul` (see [`slough_operators`]): ggml blocks as GGUF stores them, the
    /// Q4_1 minimums inside the kernel.
    #[default]
    Blocks,
    /// onnxruntime's `MatMulNBits`, with Q4_1's minimums as a separate block term.
    MatMulNBits,
}

impl std::fmt::Display for Int8Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Int8Kernel::Blocks => "blocks",
            Int8Kernel::MatMulNBits => "matmulnbits",
        })
    }
}

/// Adds `input [.., K] · weightᵀ → [.., N]` to the graph (input of rank 3), with the
/// weight as initializers named after `name`; returns the output's name.
pub fn matmul(
    graph: &mut GraphBuilder,
    name: &str,
    input: &str,
    weight: &NBitsWeight,
    options: MatMulOptions,
) -> String {
    if options.accuracy_level == 4 && options.int8_kernel == Int8Kernel::Blocks {
        return block_matmul(graph, name, input, weight);
    }
    if weight.bits == 8 && options.accuracy_level < 4 {
        return matmul_8bit(graph, name, input, weight, options);
    }
    let product = nbits_node(graph, name, input, weight, options);
    match &weight.mins {
        // Q4_1 values are unsigned offsets from the block minimum.
        Some(mins) => add_block_term(graph, name, input, weight, mins, &product),
        None => product,
    }
}

/// 8-bit blocks through the 4-bit kernel: onnxruntime's 8-bit CPU kernel at fp32
/// accuracy is a slow reference path (about 100 ms for a 49152×576 lm_head), its 4-bit
/// one is fast. (With int8 activations, accuracy level 4, the 8-bit kernel is fast and
/// is used as it is.) With u = q + 128 = 16·h + l (nibbles h, l):
/// `d·q = 16d·(h − 8) + d·(l − 8) + 8d`, so one 4-bit matmul over `[A, A]` (the high
/// nibbles with scale 16d, then the low ones with scale d, default zero point 8) plus
/// the block-sum term with 8d gives the product exactly.
fn matmul_8bit(
    graph: &mut GraphBuilder,
    name: &str,
    input: &str,
    weight: &NBitsWeight,
    options: MatMulOptions,
) -> String {
    let k_blocks = weight.k / BLOCK;
    let mut split = NBitsWeight {
        bits: 4,
        n: weight.n,
        k: 2 * weight.k,
        b: Vec::with_capacity(weight.b.len()),
        scales: Vec::with_capacity(2 * weight.scales.len()),
        mins: None,
    };
    for row in 0..weight.n {
        for high in [true, false] {
            for block in 0..k_blocks {
                let at = row * k_blocks + block;
                let values = &weight.b[at * BLOCK..(at + 1) * BLOCK];
                let nibble = |j: usize| {
                    if high {
                        values[j] >> 4
                    } else {
                        values[j] & 0x0F
                    }
                };
                split
                    .b
                    .extend((0..BLOCK / 2).map(|j| nibble(2 * j) | (nibble(2 * j + 1) << 4)));
                let d = weight.scales[at];
                split.scales.push(if high { 16.0 * d } else { d });
            }
        }
    }
    let doubled = graph.op(
        "",
        "Concat",
        &format!("{name}/doubled"),
        &[input, input],
        &[("axis", Attr::Int(-1))],
    );
    let product = nbits_node(graph, name, &doubled, &split, options);
    let eights: Vec<f32> = weight.scales.iter().map(|d| 8.0 * d).collect();
    add_block_term(graph, name, input, weight, &eights, &product)
}

/// The matrix as our kernels read it (see [`slough_operators`]), as initializers named
/// after `name`: the values in ggml's order, f16 scales, and f16 minimums for 4 bits
/// (Q4_0's are `−8d`). The scales and minimums came from f16, so nothing is rounded.
fn block_initializers(graph: &mut GraphBuilder, name: &str, weight: &NBitsWeight) -> Vec<String> {
    let k_blocks = weight.k / BLOCK;
    let blob = BLOCK * usize::from(weight.bits) / 8;
    let halves = |values: &mut dyn Iterator<Item = f32>| -> Vec<u8> {
        values
            .flat_map(|v| half::f16::from_f32(v).to_le_bytes())
            .collect()
    };
    let values: Vec<u8> = match weight.bits {
        // Stored as q + 128 for MatMulNBits; the kernel wants q.
        8 => weight.b.iter().map(|u| u ^ 0x80).collect(),
        // MatMulNBits pairs values 2j and 2j+1 in byte j; ggml pairs j with j + 16.
        _ => weight
            .b
            .chunks_exact(blob)
            .flat_map(|block| {
                let value = |v: usize| (block[v / 2] >> (4 * (v % 2))) & 0x0F;
                (0..16).map(move |j| value(j) | (value(j + 16) << 4))
            })
            .collect(),
    };
    let shape = [weight.n as i64, k_blocks as i64];
    let values = graph.initializer(
        &format!("{name}.values"),
        DataType::Uint8,
        &[shape[0], shape[1], blob as i64],
        values,
    );
    let scales = halves(&mut weight.scales.iter().copied());
    let scales = graph.initializer(&format!("{name}.scales"), DataType::Float16, &shape, scales);
    let mut inputs = vec![values, scales];
    if weight.bits == 4 {
        let mins = match &weight.mins {
            Some(mins) => halves(&mut mins.iter().copied()),
            None => halves(&mut weight.scales.iter().map(|d| -8.0 * d)),
        };
        inputs.push(graph.initializer(&format!("{name}.mins"), DataType::Float16, &shape, mins));
    }
    inputs
}

/// One `BlockMatMul` node.
fn block_matmul(graph: &mut GraphBuilder, name: &str, input: &str, weight: &NBitsWeight) -> String {
    let mut inputs = vec![input.to_owned()];
    inputs.extend(block_initializers(graph, name, weight));
    let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    graph.op(
        slough_operators::DOMAIN,
        slough_operators::BLOCK_MATMUL,
        name,
        &inputs,
        &[
            ("K", Attr::Int(weight.k as i64)),
            ("N", Attr::Int(weight.n as i64)),
            ("bits", Attr::Int(i64::from(weight.bits))),
        ],
    )
}

/// Adds `ids [..] → rows [.., K]` of the matrix (an embedding table) to the graph, as a
/// `BlockGather` node over the same initializers [`matmul`] gives the matrix on our
/// kernel (so a tied lm_head shares them); returns the output's name.
pub fn gather(graph: &mut GraphBuilder, name: &str, ids: &str, weight: &NBitsWeight) -> String {
    let mut inputs = vec![ids.to_owned()];
    inputs.extend(block_initializers(graph, name, weight));
    let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    graph.op(
        slough_operators::DOMAIN,
        slough_operators::BLOCK_GATHER,
        name,
        &inputs,
        &[
            ("K", Attr::Int(weight.k as i64)),
            ("bits", Attr::Int(i64::from(weight.bits))),
        ],
    )
}

/// One `MatMulNBits` node; Q4_1 blocks get zero point 0 (their minimum is added apart).
fn nbits_node(
    graph: &mut GraphBuilder,
    name: &str,
    input: &str,
    weight: &NBitsWeight,
    options: MatMulOptions,
) -> String {
    let k_blocks = weight.k / BLOCK;
    let (n, k) = (weight.n as i64, weight.k as i64);
    let blob = BLOCK * usize::from(weight.bits) / 8;
    let b = graph.initializer(
        &format!("{name}.qweight"),
        DataType::Uint8,
        &[n, k_blocks as i64, blob as i64],
        weight.b.clone(),
    );
    let scales = graph.initializer_f32(
        &format!("{name}.scales"),
        &[n * k_blocks as i64],
        &weight.scales,
    );
    let zero_points = match weight.mins {
        Some(_) => graph.initializer(
            &format!("{name}.zero_points"),
            DataType::Uint8,
            &[n * k_blocks.div_ceil(2) as i64],
            vec![0; weight.n * k_blocks.div_ceil(2)],
        ),
        None => String::new(),
    };
    let attributes = [
        ("K", Attr::Int(k)),
        ("N", Attr::Int(n)),
        ("bits", Attr::Int(i64::from(weight.bits))),
        ("block_size", Attr::Int(BLOCK as i64)),
        ("accuracy_level", Attr::Int(options.accuracy_level)),
    ];
    let inputs = [input, b.as_str(), scales.as_str(), zero_points.as_str()];
    let inputs = if zero_points.is_empty() {
        &inputs[..3]
    } else {
        &inputs[..]
    };
    graph.op(MS_DOMAIN, "MatMulNBits", name, inputs, &attributes)
}

/// `product + Σ_blocks (Σ_{k∈block} a_k)·m[n, block]`: a per-block constant `m` of the
/// weight (Q4_1's minimum, or 8d for split 8-bit blocks) times the activations' block sums.
fn add_block_term(
    graph: &mut GraphBuilder,
    name: &str,
    input: &str,
    weight: &NBitsWeight,
    per_block: &[f32],
    product: &str,
) -> String {
    let k_blocks = weight.k / BLOCK;
    // Block sums as one small matmul: S [K, k_blocks] has a 1 where column k lies in block b.
    let selector: Vec<f32> = (0..weight.k)
        .flat_map(|col| (0..k_blocks).map(move |blk| f32::from(u8::from(col / BLOCK == blk))))
        .collect();
    let selector = graph.initializer_f32(
        &format!("{name}.block_selector"),
        &[weight.k as i64, k_blocks as i64],
        &selector,
    );
    let transposed: Vec<f32> = (0..k_blocks)
        .flat_map(|blk| (0..weight.n).map(move |row| (blk, row)))
        .map(|(blk, row)| per_block[row * k_blocks + blk])
        .collect();
    let transposed = graph.initializer_f32(
        &format!("{name}.block_terms"),
        &[k_blocks as i64, weight.n as i64],
        &transposed,
    );
    let sums = graph.op(
        "",
        "MatMul",
        &format!("{name}/block_sums"),
        &[input, &selector],
        &[],
    );
    let offset = graph.op(
        "",
        "MatMul",
        &format!("{name}/block_term"),
        &[&sums, &transposed],
        &[],
    );
    graph.op(
        "",
        "Add",
        &format!("{name}/with_block_term"),
        &[product, &offset],
        &[],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::quant;

    #[test]
    fn dequantized_blocks_equal_ggml_values() {
        let values: Vec<f32> = (0..4 * 64)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 9.0)
            .collect();
        for ggml_type in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0] {
            let bytes = quant::quantize(ggml_type, &values).unwrap_or_default();
            let weight = from_ggml(ggml_type, &bytes, 4, 64);
            let expected = quant::dequantize(ggml_type, &bytes);
            assert_eq!(weight.map(|w| w.dequantize()), expected, "{ggml_type}");
        }
    }
}
