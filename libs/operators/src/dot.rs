//! The arithmetic of `BlockMatMul`: activations quantized to int8 in blocks of 32 (a
//! scale and a sum per block), and dot products of weight rows in blocks of 32 with
//! them, a tile of up to [`TILE`] weight rows by [`TILE`] activation rows per call. A
//! portable version, and x86-64 versions (AVX2, and AVX-VNNI where the CPU has it)
//! picked once at run time by [`Isa::detect`].
//!
//! 4-bit blocks are `w = d·u + m` with nibbles `u` (ggml's Q4_1; Q4_0's `d·(u − 8)` is
//! `m = −8d`); 8-bit blocks are `w = d·q` with signed `q` within ±127 (ggml's Q8_0).
//! With activations `a ≈ s·q` per block, a 4-bit block adds `d·s·Σ u·q + m·s·Σ q`: the
//! exact weights times the quantized activations, integer dot products in the inner
//! loop (as llama.cpp computes it).
//!
//! Layout, chosen for the x86 loop: a row's nibbles are its blocks' 16 bytes one after
//! the other (value j in the low nibble of byte j, value j + 16 in the high one, as
//! ggml stores them), so one 32-byte load holds two blocks; the activations of those
//! two blocks are stored to match (first halves, then second halves; [`Layout`]).

use half::f16;

/// Values per block, for weights and activations alike.
pub const BLOCK: usize = 32;

/// Weight rows and activation rows one call of [`Isa::dot`] handles at most.
pub const TILE: usize = 4;

/// How many rows past the one it reads the kernel asks for weights to be fetched: two
/// tiles ahead, mostly inside the same task of 16 rows (so on the same core). Left to
/// the hardware's prefetchers alone, a decoding step takes nearly twice as long here
/// (`cargo bench -p slough-operators --bench kernels`).
const PREFETCH_ROWS: usize = 2 * TILE;

/// Rows of weight blocks as the kernel reads them.
#[derive(Debug, Clone, Copy)]
pub struct Matrix<'a> {
    /// 4 or 8.
    pub bits: u8,
    /// Blocks per row.
    pub blocks: usize,
    /// Per block, 16 bytes of nibbles or 32 signed bytes.
    pub values: &'a [u8],
    /// Per block, `d`.
    pub scales: &'a [f16],
    /// Per block, `m` (4-bit only; empty for 8-bit).
    pub mins: &'a [f16],
}

impl<'a> Matrix<'a> {
    /// Bytes of values per block.
    pub fn block_bytes(bits: u8) -> usize {
        BLOCK * usize::from(bits) / 8
    }

    /// How many rows it holds.
    pub fn rows(&self) -> usize {
        self.scales.len().checked_div(self.blocks).unwrap_or(0)
    }

    /// Rows `first..first + count`.
    pub fn slice(&self, first: usize, count: usize) -> Matrix<'a> {
        let (b, bytes) = (self.blocks, Matrix::block_bytes(self.bits));
        Matrix {
            values: &self.values[first * b * bytes..(first + count) * b * bytes],
            scales: &self.scales[first * b..(first + count) * b],
            mins: match self.mins.is_empty() {
                true => self.mins,
                false => &self.mins[first * b..(first + count) * b],
            },
            ..*self
        }
    }

    /// Row `row`'s values, `d·u + m` (`m` = 0 for 8 bits), into `out` (K values).
    pub fn dequantize_row(&self, row: usize, out: &mut [f32]) {
        for (b, out) in out.chunks_exact_mut(BLOCK).enumerate().take(self.blocks) {
            let (d, m, values) = self.block(row, b);
            for (out, &v) in out.iter_mut().zip(&values) {
                *out = d * f32::from(v) + m;
            }
        }
    }

    /// `d`, `m` and the integer values of block `b` of row `row`.
    fn block(&self, row: usize, b: usize) -> (f32, f32, [i16; BLOCK]) {
        let at = row * self.blocks + b;
        let d = self.scales[at].to_f32();
        let mut values = [0i16; BLOCK];
        let bytes = Matrix::block_bytes(self.bits);
        let raw = &self.values[at * bytes..(at + 1) * bytes];
        if self.bits == 8 {
            for (v, &q) in values.iter_mut().zip(raw) {
                *v = i16::from(q.cast_signed());
            }
            return (d, 0.0, values);
        }
        for (j, byte) in raw.iter().enumerate() {
            values[j] = i16::from(byte & 0x0F);
            values[j + 16] = i16::from(byte >> 4);
        }
        (d, self.mins[at].to_f32(), values)
    }
}

/// Where the quantized activations of block `b` lie within their row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Block b at `32·b`, its values in order (for 8-bit weights).
    Natural,
    /// Blocks 2p and 2p + 1 share bytes `64p..64p + 64`: the first halves of both, then
    /// the second halves (for 4-bit weights); an odd last block stays in order.
    Paired,
}

impl Layout {
    /// The layout weights of `bits` bits are read against.
    pub fn for_bits(bits: u8) -> Layout {
        if bits == 8 {
            Layout::Natural
        } else {
            Layout::Paired
        }
    }

    /// The offset of value `j` of block `b` in a row of `blocks` blocks.
    fn offset(self, blocks: usize, b: usize, j: usize) -> usize {
        if self == Layout::Natural || (b == blocks - 1 && blocks % 2 == 1) {
            return b * BLOCK + j;
        }
        b / 2 * 2 * BLOCK + (j / 16) * BLOCK + (b % 2) * 16 + j % 16
    }
}

/// Rows of activations quantized to int8 blocks, reused from call to call.
#[derive(Debug, Default)]
pub struct Quantized {
    /// Blocks per row.
    blocks: usize,
    layout: Option<Layout>,
    values: Vec<i8>,
    /// `|values|`, for 8-bit weights.
    magnitudes: Vec<u8>,
    /// Per block: the scale `s`.
    scales: Vec<f32>,
    /// Per pair of blocks: `s` of the first four times, then of the second four times.
    paired_scales: Vec<f32>,
    /// Per block: `s·Σ q`, what the quantized block sums to.
    sums: Vec<f32>,
}

/// One quantized row.
#[derive(Debug, Clone, Copy)]
pub struct Row<'a> {
    pub values: &'a [i8],
    pub magnitudes: &'a [u8],
    pub scales: &'a [f32],
    pub paired_scales: &'a [f32],
    pub sums: &'a [f32],
}

impl Quantized {
    /// Quantizes `input`, rows of `k` values (`k` a multiple of [`BLOCK`]), into `layout`.
    pub fn quantize(&mut self, input: &[f32], k: usize, layout: Layout, isa: Isa) {
        let blocks = k / BLOCK;
        let rows = input.len() / k;
        self.blocks = blocks;
        self.layout = Some(layout);
        self.values.resize(input.len(), 0);
        self.magnitudes.resize(input.len(), 0);
        self.scales.resize(rows * blocks, 0.0);
        self.sums.resize(rows * blocks, 0.0);
        self.paired_scales
            .resize(rows * blocks.div_ceil(2) * 8, 0.0);
        let mut q = [0i8; BLOCK];
        for (row, x) in input.chunks_exact(k).enumerate() {
            let values = &mut self.values[row * k..(row + 1) * k];
            for (b, x) in x.chunks_exact(BLOCK).enumerate() {
                let (scale, sum) = isa.quantize_block(x, &mut q);
                let first = layout.offset(blocks, b, 0);
                let second = layout.offset(blocks, b, 16);
                values[first..first + 16].copy_from_slice(&q[..16]);
                values[second..second + 16].copy_from_slice(&q[16..]);
                self.scales[row * blocks + b] = scale;
                self.sums[row * blocks + b] = sum;
                let pair = (row * blocks.div_ceil(2) + b / 2) * 8 + (b % 2) * 4;
                self.paired_scales[pair..pair + 4].fill(scale);
            }
        }
        for (m, q) in self.magnitudes.iter_mut().zip(&self.values) {
            *m = q.unsigned_abs();
        }
    }

    /// How many rows are held.
    pub fn rows(&self) -> usize {
        self.scales.len().checked_div(self.blocks).unwrap_or(0)
    }

    /// Row `m`.
    pub fn row(&self, m: usize) -> Row<'_> {
        let (b, k) = (self.blocks, self.blocks * BLOCK);
        let pairs = b.div_ceil(2) * 8;
        Row {
            values: &self.values[m * k..(m + 1) * k],
            magnitudes: &self.magnitudes[m * k..(m + 1) * k],
            scales: &self.scales[m * b..(m + 1) * b],
            paired_scales: &self.paired_scales[m * pairs..(m + 1) * pairs],
            sums: &self.sums[m * b..(m + 1) * b],
        }
    }

    /// The layout the rows are in.
    pub fn layout(&self) -> Option<Layout> {
        self.layout
    }
}

/// The instruction set the kernel runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    AvxVnni,
}

impl Isa {
    /// The fastest this CPU has.
    pub fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c");
            if avx2 && std::arch::is_x86_feature_detected!("avxvnni") {
                return Isa::AvxVnni;
            }
            if avx2 {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }

    /// Every instruction set this CPU can run, the portable one first (for tests).
    pub fn available() -> Vec<Isa> {
        let mut all = vec![Isa::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if Isa::detect() != Isa::Portable {
                all.push(Isa::Avx2);
            }
            if Isa::detect() == Isa::AvxVnni {
                all.push(Isa::AvxVnni);
            }
        }
        all
    }

    /// Quantizes one block of [`BLOCK`] values into `q`, in order; returns its scale and
    /// sum.
    fn quantize_block(self, x: &[f32], q: &mut [i8; BLOCK]) -> (f32, f32) {
        assert!(x.len() == BLOCK);
        match self {
            Isa::Portable => portable::quantize_block(x, q),
            // SAFETY: detect() saw the features; the length is checked above.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { x86::avx2::quantize_block(x, q) },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Isa::AvxVnni => unsafe { x86::avxvnni::quantize_block(x, q) },
        }
    }

    /// `out[c·rows.len() + r] = Σ_k w_c[k]·a_r[k]` for the weight rows of `weights` (at
    /// most [`TILE`]) and the activation rows `rows` (at most [`TILE`], quantized in
    /// `layout`, the one [`Layout`] says the weights' bits need).
    pub fn dot(self, weights: Matrix<'_>, rows: &[Row<'_>], layout: Layout, out: &mut [f32]) {
        let columns = weights.rows();
        let blocks = weights.blocks;
        assert!((1..=TILE).contains(&columns) && rows.len() <= TILE);
        assert!(out.len() == columns * rows.len());
        assert!(weights.values.len() == columns * blocks * Matrix::block_bytes(weights.bits));
        assert!(
            weights.mins.len()
                == if weights.bits == 8 {
                    0
                } else {
                    columns * blocks
                }
        );
        assert!(
            layout
                == if weights.bits == 8 {
                    Layout::Natural
                } else {
                    Layout::Paired
                }
        );
        for row in rows {
            assert!(row.values.len() == blocks * BLOCK && row.magnitudes.len() == blocks * BLOCK);
            assert!(row.scales.len() == blocks && row.sums.len() == blocks);
            assert!(row.paired_scales.len() == blocks.div_ceil(2) * 8);
        }
        match self {
            Isa::Portable => portable::dot(weights, rows, layout, out),
            // SAFETY: detect() saw the features; the lengths are checked above.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { x86::avx2::dot(weights, rows, out) },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Isa::AvxVnni => unsafe { x86::avxvnni::dot(weights, rows, out) },
        }
    }
}

mod portable {
    use super::{BLOCK, Layout, Matrix, Row};

    pub fn quantize_block(x: &[f32], q: &mut [i8; BLOCK]) -> (f32, f32) {
        let amax = x.iter().fold(0f32, |max, v| max.max(v.abs()));
        let scale = amax / 127.0;
        let inverse = if amax > 0.0 { 127.0 / amax } else { 0.0 };
        let mut sum = 0i32;
        for (q, x) in q.iter_mut().zip(x) {
            *q = (x * inverse).round_ties_even() as i8;
            sum += i32::from(*q);
        }
        (scale, scale * sum as f32)
    }

    pub fn dot(weights: Matrix<'_>, rows: &[Row<'_>], layout: Layout, out: &mut [f32]) {
        let blocks = weights.blocks;
        for (at, out) in out.iter_mut().enumerate() {
            let (column, row) = (at / rows.len(), &rows[at % rows.len()]);
            let mut total = 0f32;
            for b in 0..blocks {
                let (d, m, w) = weights.block(column, b);
                let dot: i32 = (0..BLOCK)
                    .map(|j| i32::from(w[j]) * i32::from(row.values[layout.offset(blocks, b, j)]))
                    .sum();
                total += d * row.scales[b] * dot as f32 + m * row.sums[b];
            }
            *out = total;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    /// One module per instruction set, alike but for the integer dot products of
    /// unsigned by signed bytes (`$dot`), so that everything inlines under one set of
    /// target features.
    macro_rules! isa {
        ($name:ident, $features:literal, $($dot:item)*) => {
            pub mod $name {
                use std::arch::x86_64::*;

                use crate::dot::{BLOCK, Matrix, PREFETCH_ROWS, Row};

                $($dot)*

                #[target_feature(enable = $features)]
                fn sum(v: __m256) -> f32 {
                    let quad = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
                    let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
                    _mm_cvtss_f32(_mm_add_ss(pair, _mm_shuffle_ps(pair, pair, 1)))
                }

                /// The f16 value at `p`, as a float (F16C, not a library call).
                ///
                /// # Safety
                /// A value at `p`.
                #[target_feature(enable = $features)]
                unsafe fn half1(p: *const half::f16) -> f32 {
                    // SAFETY: as the caller promises.
                    let bits = unsafe { p.cast::<u16>().read_unaligned() };
                    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
                }

                /// Asks for the cache line `at` bytes after `values`' start to be on its
                /// way. It may lie past the slice, a tile of the matrix: in the rows after
                /// it, or nowhere (prefetching neither faults nor reads for Rust).
                #[target_feature(enable = $features)]
                fn prefetch(values: &[u8], at: usize) {
                    _mm_prefetch::<_MM_HINT_T0>(values.as_ptr().wrapping_add(at).cast());
                }

                /// # Safety
                /// The CPU has the features; `x` holds [`BLOCK`] values.
                #[target_feature(enable = $features)]
                pub unsafe fn quantize_block(x: &[f32], q: &mut [i8; BLOCK]) -> (f32, f32) {
                    let p = x.as_ptr();
                    // SAFETY: 32 floats at p.
                    let v = unsafe {
                        [
                            _mm256_loadu_ps(p),
                            _mm256_loadu_ps(p.add(8)),
                            _mm256_loadu_ps(p.add(16)),
                            _mm256_loadu_ps(p.add(24)),
                        ]
                    };
                    let sign = _mm256_set1_ps(-0.0);
                    let abs = v.map(|v| _mm256_andnot_ps(sign, v));
                    let max = _mm256_max_ps(_mm256_max_ps(abs[0], abs[1]), _mm256_max_ps(abs[2], abs[3]));
                    let quad = _mm_max_ps(_mm256_castps256_ps128(max), _mm256_extractf128_ps(max, 1));
                    let pair = _mm_max_ps(quad, _mm_movehl_ps(quad, quad));
                    let amax = _mm_cvtss_f32(_mm_max_ss(pair, _mm_shuffle_ps(pair, pair, 1)));
                    let scale = amax / 127.0;
                    let inverse = _mm256_set1_ps(if amax > 0.0 { 127.0 / amax } else { 0.0 });
                    let i = v.map(|v| _mm256_cvtps_epi32(_mm256_mul_ps(v, inverse)));
                    let total = _mm256_add_epi32(
                        _mm256_add_epi32(i[0], i[1]),
                        _mm256_add_epi32(i[2], i[3]),
                    );
                    let total = sum(_mm256_cvtepi32_ps(total));
                    // Packing works per 128-bit lane; the permutation puts the values back in order.
                    let packed = _mm256_packs_epi16(
                        _mm256_packs_epi32(i[0], i[1]),
                        _mm256_packs_epi32(i[2], i[3]),
                    );
                    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
                    let packed = _mm256_permutevar8x32_epi32(packed, order);
                    // SAFETY: 32 bytes at q.
                    unsafe { _mm256_storeu_si256(q.as_mut_ptr().cast(), packed) };
                    (scale, scale * total)
                }

                /// # Safety
                /// The CPU has the features; the lengths are as
                /// [`crate::dot::Isa::dot`] checks.
                #[target_feature(enable = $features)]
                pub unsafe fn dot(weights: Matrix<'_>, rows: &[Row<'_>], out: &mut [f32]) {
                    let (columns, width) = (weights.rows(), rows.len());
                    // Tiles with enough independent sums to keep the CPU busy: 4 weight
                    // rows by 1 activation row, 1 by 4, else 1 by 1.
                    // SAFETY (all calls): the slices are in bounds, as the caller checked.
                    unsafe {
                        match (columns, width, weights.bits) {
                            (_, 4, 4) => {
                                for c in 0..columns {
                                    tile4::<1, 4>(weights.slice(c, 1), rows, &mut out[c * 4..]);
                                }
                            }
                            (_, 4, _) => {
                                for c in 0..columns {
                                    tile8::<1, 4>(weights.slice(c, 1), rows, &mut out[c * 4..]);
                                }
                            }
                            (4, _, bits) => {
                                for (r, row) in rows.iter().enumerate() {
                                    let mut four = [0f32; 4];
                                    let one = std::slice::from_ref(row);
                                    match bits {
                                        4 => tile4::<4, 1>(weights, one, &mut four),
                                        _ => tile8::<4, 1>(weights, one, &mut four),
                                    }
                                    for (c, value) in four.into_iter().enumerate() {
                                        out[c * width + r] = value;
                                    }
                                }
                            }
                            (_, _, bits) => {
                                for c in 0..columns {
                                    for (r, row) in rows.iter().enumerate() {
                                        let one = std::slice::from_ref(row);
                                        let at = &mut out[c * width + r..];
                                        match bits {
                                            4 => tile4::<1, 1>(weights.slice(c, 1), one, at),
                                            _ => tile8::<1, 1>(weights.slice(c, 1), one, at),
                                        }
                                    }
                                }
                            }
                        }
                    }
                }

                /// `out[c·A + r]` for `W` rows of 4-bit blocks and `A` activation rows
                /// (paired layout).
                #[target_feature(enable = $features)]
                unsafe fn tile4<const W: usize, const A: usize>(
                    weights: Matrix<'_>,
                    rows: &[Row<'_>],
                    out: &mut [f32],
                ) {
                    let blocks = weights.blocks;
                    let low = _mm256_set1_epi8(0x0F);
                    let spread = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
                    let mut acc = [[_mm256_setzero_ps(); A]; W];
                    for pair in 0..blocks / 2 {
                        for c in 0..W {
                            let row = c * blocks + 2 * pair;
                            prefetch(weights.values, (row + PREFETCH_ROWS * blocks) * 16);
                            // SAFETY: blocks 2·pair and 2·pair + 1 of weight row c.
                            let (raw, d) = unsafe {
                                let two = weights.scales.as_ptr().add(row).cast::<i32>().read_unaligned();
                                (
                                    _mm256_loadu_si256(weights.values.as_ptr().add(row * 16).cast()),
                                    _mm256_castps128_ps256(_mm_cvtph_ps(_mm_cvtsi32_si128(two))),
                                )
                            };
                            let first = _mm256_and_si256(raw, low);
                            let second = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low);
                            let d = _mm256_permutevar8x32_ps(d, spread);
                            for r in 0..A {
                                // SAFETY: the pair's 64 activation bytes and 8 scales.
                                let (q1, q2, s) = unsafe {
                                    let q = rows[r].values.as_ptr().add(pair * 64);
                                    (
                                        _mm256_loadu_si256(q.cast()),
                                        _mm256_loadu_si256(q.add(32).cast()),
                                        _mm256_loadu_ps(rows[r].paired_scales.as_ptr().add(pair * 8)),
                                    )
                                };
                                let products = _mm256_cvtepi32_ps(dot64(first, q1, second, q2));
                                acc[c][r] = _mm256_fmadd_ps(products, _mm256_mul_ps(d, s), acc[c][r]);
                            }
                        }
                    }
                    if blocks % 2 == 1 {
                        let b = blocks - 1;
                        for c in 0..W {
                            let at = c * blocks + b;
                            // SAFETY: the last block of weight row c.
                            let (raw, d) = unsafe {
                                (
                                    _mm_loadu_si128(weights.values.as_ptr().add(at * 16).cast()),
                                    half1(weights.scales.as_ptr().add(at)),
                                )
                            };
                            let u = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw), low);
                            for r in 0..A {
                                // SAFETY: the block's 32 activation bytes, in order.
                                let (q, s) = unsafe {
                                    (
                                        _mm256_loadu_si256(rows[r].values.as_ptr().add(b * BLOCK).cast()),
                                        *rows[r].scales.get_unchecked(b),
                                    )
                                };
                                let products = _mm256_cvtepi32_ps(dot32(u, q));
                                acc[c][r] = _mm256_fmadd_ps(products, _mm256_set1_ps(d * s), acc[c][r]);
                            }
                        }
                    }
                    // Σ m·(s·Σq), eight blocks at a time, then one by one.
                    for c in 0..W {
                        for r in 0..A {
                            let mut offsets = _mm256_setzero_ps();
                            let mut rest = 0f32;
                            let mins = &weights.mins[c * blocks..(c + 1) * blocks];
                            let sums = rows[r].sums;
                            for b in (0..blocks / 8 * 8).step_by(8) {
                                // SAFETY: eight minimums and sums from b.
                                let (m, s) = unsafe {
                                    (
                                        _mm256_cvtph_ps(_mm_loadu_si128(mins.as_ptr().add(b).cast())),
                                        _mm256_loadu_ps(sums.as_ptr().add(b)),
                                    )
                                };
                                offsets = _mm256_fmadd_ps(m, s, offsets);
                            }
                            for b in blocks / 8 * 8..blocks {
                                // SAFETY: b < blocks.
                                rest += unsafe { half1(mins.as_ptr().add(b)) } * sums[b];
                            }
                            out[c * A + r] = sum(acc[c][r]) + sum(offsets) + rest;
                        }
                    }
                }

                /// `out[c·A + r]` for `W` rows of 8-bit blocks and `A` activation rows
                /// (natural layout).
                #[target_feature(enable = $features)]
                unsafe fn tile8<const W: usize, const A: usize>(
                    weights: Matrix<'_>,
                    rows: &[Row<'_>],
                    out: &mut [f32],
                ) {
                    let blocks = weights.blocks;
                    let mut acc = [[_mm256_setzero_ps(); A]; W];
                    for b in 0..blocks {
                        for c in 0..W {
                            let at = c * blocks + b;
                            prefetch(weights.values, (at + PREFETCH_ROWS * blocks) * BLOCK);
                            // SAFETY: block b of weight row c.
                            let (w, d) = unsafe {
                                (
                                    _mm256_loadu_si256(weights.values.as_ptr().add(at * BLOCK).cast()),
                                    half1(weights.scales.as_ptr().add(at)),
                                )
                            };
                            for r in 0..A {
                                // SAFETY: the block's 32 activation bytes and magnitudes.
                                let (q, magnitude, s) = unsafe {
                                    (
                                        _mm256_loadu_si256(rows[r].values.as_ptr().add(b * BLOCK).cast()),
                                        _mm256_loadu_si256(rows[r].magnitudes.as_ptr().add(b * BLOCK).cast()),
                                        *rows[r].scales.get_unchecked(b),
                                    )
                                };
                                // Σ w·q as Σ |q|·(w·sign q): unsigned by signed, and no pair
                                // of 16-bit products overflows (|w|, |q| ≤ 127).
                                let products = _mm256_cvtepi32_ps(dot32(magnitude, _mm256_sign_epi8(w, q)));
                                acc[c][r] = _mm256_fmadd_ps(products, _mm256_set1_ps(d * s), acc[c][r]);
                            }
                        }
                    }
                    for c in 0..W {
                        for r in 0..A {
                            out[c * A + r] = sum(acc[c][r]);
                        }
                    }
                }
            }
        };
    }

    isa! {
        avx2,
        "avx2,fma,f16c",
        /// Σ u·q of 32 bytes in 8 lanes, by saturating pairs of 16-bit products (4-bit
        /// u, or |u| ≤ 127, never reach the limit).
        #[target_feature(enable = "avx2,fma,f16c")]
        fn dot32(u: __m256i, q: __m256i) -> __m256i {
            _mm256_madd_epi16(_mm256_maddubs_epi16(u, q), _mm256_set1_epi16(1))
        }
        /// Σ u·q + Σ v·p in 8 lanes (4-bit u and v: the 16-bit sums stay small).
        #[target_feature(enable = "avx2,fma,f16c")]
        fn dot64(u: __m256i, q: __m256i, v: __m256i, p: __m256i) -> __m256i {
            let pairs = _mm256_add_epi16(_mm256_maddubs_epi16(u, q), _mm256_maddubs_epi16(v, p));
            _mm256_madd_epi16(pairs, _mm256_set1_epi16(1))
        }
    }

    isa! {
        avxvnni,
        "avx2,fma,f16c,avxvnni",
        /// Σ u·q of 32 bytes in 8 lanes with the VNNI instruction.
        #[target_feature(enable = "avx2,fma,f16c,avxvnni")]
        fn dot32(u: __m256i, q: __m256i) -> __m256i {
            _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u, q)
        }
        /// Σ u·q + Σ v·p in 8 lanes.
        #[target_feature(enable = "avx2,fma,f16c,avxvnni")]
        fn dot64(u: __m256i, q: __m256i, v: __m256i, p: __m256i) -> __m256i {
            _mm256_dpbusd_avx_epi32(_mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u, q), v, p)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(count: usize, seed: u32) -> Vec<f32> {
        (0..count as u32)
            .map(|i| {
                let x = i
                    .wrapping_mul(2_654_435_761)
                    .wrapping_add(seed.wrapping_mul(40_503))
                    >> 8;
                (x % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn every_instruction_set_quantizes_alike() {
        let mut x = values(BLOCK * 6, 1);
        x[BLOCK..3 * BLOCK].fill(0.0);
        x[2 * BLOCK] = 1e-30;
        for layout in [Layout::Natural, Layout::Paired] {
            let mut reference = Quantized::default();
            reference.quantize(&x, BLOCK * 3, layout, Isa::Portable);
            for isa in Isa::available() {
                let mut q = Quantized::default();
                q.quantize(&x, BLOCK * 3, layout, isa);
                assert_eq!(q.values, reference.values, "{isa:?}");
                assert_eq!(q.scales, reference.scales, "{isa:?}");
                assert_eq!(q.sums, reference.sums, "{isa:?}");
                assert_eq!(q.rows(), 2);
            }
        }
    }

    #[test]
    fn the_paired_layout_places_every_value_once() {
        for blocks in [1, 2, 3, 18] {
            let mut seen = vec![false; blocks * BLOCK];
            for b in 0..blocks {
                for j in 0..BLOCK {
                    let at = Layout::Paired.offset(blocks, b, j);
                    assert!(!seen[at], "{blocks} blocks: {b}/{j} lands twice at {at}");
                    seen[at] = true;
                }
            }
        }
    }

    /// Random-looking rows of weight blocks: scales and minimums, any nibbles, 8-bit
    /// values within ±127.
    fn matrix(bits: u8, rows: usize, blocks: usize) -> (Vec<u8>, Vec<f16>, Vec<f16>) {
        let count = rows * blocks;
        let noise = values(count * 2, 9);
        let scales = (0..count)
            .map(|i| f16::from_f32(0.01 + noise[i].abs() / 50.0))
            .collect();
        let mins = match bits {
            8 => Vec::new(),
            _ => (0..count)
                .map(|i| f16::from_f32(noise[count + i] / 10.0))
                .collect(),
        };
        let bytes = count * Matrix::block_bytes(bits);
        let values = (0..bytes)
            .map(|j| match bits {
                8 => ((j * 31 % 255) as i32 - 127) as i8 as u8,
                _ => (j * 29 % 256) as u8,
            })
            .collect();
        (values, scales, mins)
    }

    #[test]
    fn every_instruction_set_computes_the_portable_dot() {
        for bits in [4, 8] {
            let layout = if bits == 8 {
                Layout::Natural
            } else {
                Layout::Paired
            };
            for blocks in [1, 2, 7, 18, 48] {
                let mut q = Quantized::default();
                q.quantize(
                    &values(BLOCK * blocks * TILE, 4),
                    BLOCK * blocks,
                    layout,
                    Isa::Portable,
                );
                let rows: Vec<_> = (0..TILE).map(|m| q.row(m)).collect();
                let (values, scales, mins) = matrix(bits, TILE, blocks);
                let all = Matrix {
                    bits,
                    blocks,
                    values: &values,
                    scales: &scales,
                    mins: &mins,
                };
                for (columns, take) in (1..=TILE).flat_map(|c| (1..=TILE).map(move |r| (c, r))) {
                    let weights = all.slice(0, columns);
                    let mut expected = vec![0f32; columns * take];
                    Isa::Portable.dot(weights, &rows[..take], layout, &mut expected);
                    for isa in Isa::available() {
                        let mut got = vec![0f32; columns * take];
                        isa.dot(weights, &rows[..take], layout, &mut got);
                        for (e, g) in expected.iter().zip(&got) {
                            let close = (e - g).abs() <= 1e-5 * e.abs().max(1.0);
                            assert!(close, "{isa:?}, {bits} bits, {blocks} blocks: {e} vs {g}");
                        }
                    }
                }
            }
        }
    }
}
