//! ggml tensor encodings: block layouts, dequantization to f32, and quantization of
//! f32 rows into the simple block types (Q4_0, Q4_1, Q8_0). Layouts follow ggml's
//! `ggml-quants.c`; every block starts with its f16 scale.

use std::fmt;

use half::{bf16, f16};

/// A ggml tensor type. Types this crate does not decode are kept as `Other(id)` so a
/// file using them still opens and the error can name the type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q8_0,
    Q6K,
    BF16,
    Other(u32),
}

/// Values per block of the k-quants.
const QK_K: usize = 256;

impl GgmlType {
    /// The type for an id read from a file.
    pub fn from_id(id: u32) -> GgmlType {
        match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            8 => GgmlType::Q8_0,
            14 => GgmlType::Q6K,
            30 => GgmlType::BF16,
            other => GgmlType::Other(other),
        }
    }

    /// The id written to a file.
    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q8_0 => 8,
            GgmlType::Q6K => 14,
            GgmlType::BF16 => 30,
            GgmlType::Other(id) => id,
        }
    }

    /// (values per block, bytes per block), or `None` for a type we do not decode.
    pub fn block_layout(self) -> Option<(u64, u64)> {
        match self {
            GgmlType::F32 => Some((1, 4)),
            GgmlType::F16 | GgmlType::BF16 => Some((1, 2)),
            GgmlType::Q4_0 => Some((32, 18)),
            GgmlType::Q4_1 => Some((32, 20)),
            GgmlType::Q8_0 => Some((32, 34)),
            GgmlType::Q6K => Some((QK_K as u64, 210)),
            GgmlType::Other(_) => None,
        }
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GgmlType::F32 => f.write_str("F32"),
            GgmlType::F16 => f.write_str("F16"),
            GgmlType::Q4_0 => f.write_str("Q4_0"),
            GgmlType::Q4_1 => f.write_str("Q4_1"),
            GgmlType::Q8_0 => f.write_str("Q8_0"),
            GgmlType::Q6K => f.write_str("Q6_K"),
            GgmlType::BF16 => f.write_str("BF16"),
            GgmlType::Other(id) => write!(f, "ggml type {id}"),
        }
    }
}

fn half_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// Decodes `bytes` (whole blocks of `ggml_type`) to f32; `None` for a type we do not
/// decode or a length that is not a whole number of blocks.
pub fn dequantize(ggml_type: GgmlType, bytes: &[u8]) -> Option<Vec<f32>> {
    let (block_values, block_bytes) = ggml_type.block_layout()?;
    let (block_values, block_bytes) = (block_values as usize, block_bytes as usize);
    if !bytes.len().is_multiple_of(block_bytes) {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / block_bytes * block_values);
    for block in bytes.chunks_exact(block_bytes) {
        match ggml_type {
            GgmlType::F32 => out.push(f32::from_le_bytes([block[0], block[1], block[2], block[3]])),
            GgmlType::F16 => out.push(half_at(block, 0)),
            GgmlType::BF16 => out.push(bf16::from_le_bytes([block[0], block[1]]).to_f32()),
            GgmlType::Q4_0 => dequantize_q4_0(block, &mut out),
            GgmlType::Q4_1 => dequantize_q4_1(block, &mut out),
            GgmlType::Q8_0 => dequantize_q8_0(block, &mut out),
            GgmlType::Q6K => dequantize_q6_k(block, &mut out),
            GgmlType::Other(_) => return None,
        }
    }
    Some(out)
}

/// Q4_0: f16 d, 16 bytes; byte j holds value j (low nibble) and j+16 (high), each
/// `(q − 8)·d`.
fn dequantize_q4_0(block: &[u8], out: &mut Vec<f32>) {
    let d = half_at(block, 0);
    let qs = &block[2..18];
    out.extend(qs.iter().map(|&q| (f32::from(q & 0x0F) - 8.0) * d));
    out.extend(qs.iter().map(|&q| (f32::from(q >> 4) - 8.0) * d));
}

/// Q4_1: f16 d, f16 m, 16 bytes in Q4_0's nibble order, each `q·d + m`.
fn dequantize_q4_1(block: &[u8], out: &mut Vec<f32>) {
    let (d, m) = (half_at(block, 0), half_at(block, 2));
    let qs = &block[4..20];
    out.extend(qs.iter().map(|&q| f32::from(q & 0x0F) * d + m));
    out.extend(qs.iter().map(|&q| f32::from(q >> 4) * d + m));
}

/// Q8_0: f16 d, 32 signed bytes, each `q·d`.
fn dequantize_q8_0(block: &[u8], out: &mut Vec<f32>) {
    let d = half_at(block, 0);
    out.extend(block[2..34].iter().map(|&q| f32::from(q as i8) * d));
}

/// Q6_K, 256 values: 128 bytes of low nibbles, 64 bytes of high 2-bit pairs, 16 signed
/// scales, then f16 d. Each value is `d · scale · (q − 32)` with 6-bit q.
fn dequantize_q6_k(block: &[u8], out: &mut Vec<f32>) {
    let (ql_all, rest) = block.split_at(128);
    let (qh_all, rest) = rest.split_at(64);
    let (scales, d) = rest.split_at(16);
    let d = half_at(d, 0);
    let mut values = [0f32; QK_K];
    for half in 0..2 {
        let ql = &ql_all[half * 64..];
        let qh = &qh_all[half * 32..];
        let sc = &scales[half * 8..];
        let y = &mut values[half * 128..];
        for l in 0..32 {
            let is = l / 16;
            let q1 = i32::from((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) - 32;
            let q2 = i32::from((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) - 32;
            let q3 = i32::from((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
            let q4 = i32::from((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
            let scale = |k: usize| d * f32::from(sc[is + k] as i8);
            y[l] = scale(0) * q1 as f32;
            y[l + 32] = scale(2) * q2 as f32;
            y[l + 64] = scale(4) * q3 as f32;
            y[l + 96] = scale(6) * q4 as f32;
        }
    }
    out.extend_from_slice(&values);
}

/// Encodes `values` (a multiple of the block size for block types) as `ggml_type`.
/// Q6_K is read-only here; `None` for it, for unknown types and for a ragged length.
pub fn quantize(ggml_type: GgmlType, values: &[f32]) -> Option<Vec<u8>> {
    let block = match ggml_type {
        GgmlType::F32 => return Some(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        GgmlType::F16 => {
            return Some(
                values
                    .iter()
                    .flat_map(|&v| f16::from_f32(v).to_le_bytes())
                    .collect(),
            );
        }
        GgmlType::BF16 => {
            return Some(
                values
                    .iter()
                    .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
                    .collect(),
            );
        }
        GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0 => 32,
        GgmlType::Q6K | GgmlType::Other(_) => return None,
    };
    if !values.len().is_multiple_of(block) {
        return None;
    }
    let mut out = Vec::new();
    for chunk in values.chunks_exact(block) {
        match ggml_type {
            GgmlType::Q4_0 => quantize_q4_0(chunk, &mut out),
            GgmlType::Q4_1 => quantize_q4_1(chunk, &mut out),
            _ => quantize_q8_0(chunk, &mut out),
        }
    }
    Some(out)
}

/// As ggml: the value of largest magnitude maps to −8, so d = max / −8.
fn quantize_q4_0(chunk: &[f32], out: &mut Vec<u8>) {
    let max = chunk
        .iter()
        .copied()
        .fold(0f32, |m, v| if v.abs() > m.abs() { v } else { m });
    let d = max / -8.0;
    let inv = if d == 0.0 { 0.0 } else { 1.0 / d };
    out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
    let q = |v: f32| ((v * inv + 8.5) as i32).clamp(0, 15) as u8;
    out.extend((0..16).map(|j| q(chunk[j]) | (q(chunk[j + 16]) << 4)));
}

fn quantize_q4_1(chunk: &[f32], out: &mut Vec<u8>) {
    let min = chunk.iter().copied().fold(f32::INFINITY, f32::min);
    let max = chunk.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let d = (max - min) / 15.0;
    let inv = if d == 0.0 { 0.0 } else { 1.0 / d };
    out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
    out.extend_from_slice(&f16::from_f32(min).to_le_bytes());
    let q = |v: f32| (((v - min) * inv + 0.5) as i32).clamp(0, 15) as u8;
    out.extend((0..16).map(|j| q(chunk[j]) | (q(chunk[j + 16]) << 4)));
}

fn quantize_q8_0(chunk: &[f32], out: &mut Vec<u8>) {
    let amax = chunk.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let inv = if d == 0.0 { 0.0 } else { 1.0 / d };
    out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
    out.extend(
        chunk
            .iter()
            .map(|&v| ((v * inv).round() as i32).clamp(-127, 127) as i8 as u8),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f16_bytes(v: f32) -> [u8; 2] {
        f16::from_f32(v).to_le_bytes()
    }

    #[test]
    fn q4_0_block_follows_ggml_nibble_order() {
        // d = 0.5; byte j = (low j%16, high 15 - j%16)
        let mut block = f16_bytes(0.5).to_vec();
        block.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let values = dequantize(GgmlType::Q4_0, &block).unwrap();
        assert_eq!(values.len(), 32);
        assert_eq!(values[0], -4.0); // (0 - 8) * 0.5
        assert_eq!(values[15], 3.5); // (15 - 8) * 0.5
        assert_eq!(values[16], 3.5); // high nibble of byte 0 = 15
        assert_eq!(values[31], -4.0);
    }

    #[test]
    fn q4_1_adds_the_block_minimum() {
        let mut block = f16_bytes(0.25).to_vec();
        block.extend_from_slice(&f16_bytes(-1.0));
        block.extend([0x21u8; 16]); // low 1, high 2
        let values = dequantize(GgmlType::Q4_1, &block).unwrap();
        assert_eq!(values[0], -0.75);
        assert_eq!(values[16], -0.5);
    }

    #[test]
    fn q8_0_is_signed() {
        let mut block = f16_bytes(2.0).to_vec();
        block.extend((0..32).map(|j: i8| (j - 16) as u8));
        let values = dequantize(GgmlType::Q8_0, &block).unwrap();
        assert_eq!(values[0], -32.0);
        assert_eq!(values[31], 30.0);
    }

    #[test]
    fn q6_k_decodes_six_bit_values_with_sub_block_scales() {
        // Every value q = 33 (so q − 32 = 1): low nibble 1, high bits 2 (0b10 << 4 = 32).
        let mut block = vec![0x11u8; 128];
        block.extend([0xAAu8; 64]); // each 2-bit pair = 2
        block.extend((1..=16).map(|s: i8| s as u8)); // scales 1..16
        block.extend_from_slice(&f16_bytes(0.5));
        let values = dequantize(GgmlType::Q6K, &block).unwrap();
        assert_eq!(values.len(), 256);
        // Value i uses scale index 8·(i/128) + (i%128)/32·2 + (i%32)/16.
        for (i, value) in values.iter().enumerate() {
            let scale = 8 * (i / 128) + (i % 128) / 32 * 2 + (i % 32) / 16 + 1;
            assert_eq!(*value, 0.5 * scale as f32, "value {i}");
        }
    }

    #[test]
    fn quantizing_round_trips_within_the_step() {
        let values: Vec<f32> = (0..64)
            .map(|i| ((i * 37 % 64) as f32 - 31.5) / 10.0)
            .collect();
        for (ggml_type, tolerance) in [
            (GgmlType::Q8_0, 0.03),
            (GgmlType::Q4_0, 0.45),
            (GgmlType::Q4_1, 0.25),
            (GgmlType::F16, 0.005),
            (GgmlType::BF16, 0.02),
        ] {
            let bytes = quantize(ggml_type, &values).unwrap();
            let back = dequantize(ggml_type, &bytes).unwrap();
            let worst = values
                .iter()
                .zip(&back)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(worst <= tolerance, "{ggml_type}: worst error {worst}");
        }
        assert!(
            quantize(GgmlType::Q8_0, &values[..40]).is_none(),
            "ragged rows are refused"
        );
    }
}
