//! ggml blocks through our ONNX writer into onnxruntime: `MatMulNBits` over repacked
//! Q4_0, Q8_0 and (with the min split) Q4_1 weights gives what the dequantized matrix
//! gives, and our `BlockMatMul` what the dequantized matrix gives with the activations
//! quantized to int8 blocks, both computed independently in f64 here, on every
//! instruction set this CPU runs (the portable path included). Needs libonnxruntime from
//! `scripts/setup` (or `ORT_DYLIB_PATH`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails by panicking"
)]

mod support;

use ort::value::Tensor;
use slough_modelkit::{
    gguf::{GgmlType, quant},
    onnx::{
        Dim, GraphBuilder,
        nbits::{self, Int8Kernel, MatMulOptions},
        proto::DataType,
    },
};
use slough_operators::Isa;

/// A deterministic, irregular matrix.
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

/// The activations as int8 blocks of 32 see them: `s·round(x/s)`, `s = max|x|/127`.
fn int8_blocks(a: &[f32]) -> Vec<f32> {
    a.chunks(32)
        .flat_map(|block| {
            let amax = block.iter().fold(0f32, |max, x| max.max(x.abs()));
            let scale = amax / 127.0;
            block.iter().map(move |x| match amax > 0.0 {
                true => (x * (127.0 / amax)).round_ties_even() * scale,
                false => 0.0,
            })
        })
        .collect()
}

/// Runs `a [1, m, k]` through one matmul node (ours on `isa`) and returns the worst
/// difference from `reference(a) · dequantizedᵀ` computed in f64.
fn worst_error(
    ggml_type: GgmlType,
    options: MatMulOptions,
    m: usize,
    reference: fn(&[f32]) -> Vec<f32>,
    isa: Isa,
) -> f64 {
    let (k, n) = (128usize, 48usize);
    let weights = values(n * k, 7);
    let bytes = quant::quantize(ggml_type, &weights).unwrap();
    let dequantized = quant::dequantize(ggml_type, &bytes).unwrap();
    let weight = nbits::from_ggml(ggml_type, &bytes, n, k).unwrap();

    let mut graph = GraphBuilder::new("matmul");
    graph.input(
        "a",
        DataType::Float,
        &[Dim::Fixed(1), Dim::Named("m".into()), Dim::Fixed(k as i64)],
    );
    let out = nbits::matmul(&mut graph, "proj", "a", &weight, options);
    graph.node_named("", "Identity", "y", &[&out], &["y".to_owned()], &[]);
    graph.output(
        "y",
        DataType::Float,
        &[Dim::Fixed(1), Dim::Named("m".into()), Dim::Fixed(n as i64)],
    );
    let model = graph.into_bytes();

    let mut session = support::session_on(&model, isa);
    let mut a = values(m * k, 3);
    // A block of zeros and a tiny one: no division by zero, no overflow.
    if m > 1 {
        a[k..k + 64].fill(0.0);
        a[k + 32] = 1e-30;
    }
    let outputs = session
        .run(ort::inputs!["a" => Tensor::from_array(([1usize, m, k], a.clone())).unwrap()])
        .unwrap();
    let (shape, y) = outputs["y"].try_extract_tensor::<f32>().unwrap();
    assert_eq!(&**shape, &[1, m as i64, n as i64]);

    let seen = reference(&a);
    let mut worst = 0f64;
    for row in 0..m {
        for col in 0..n {
            let expected: f64 = (0..k)
                .map(|i| f64::from(seen[row * k + i]) * f64::from(dequantized[col * k + i]))
                .sum();
            worst = worst.max((expected - f64::from(y[row * n + col])).abs());
        }
    }
    eprintln!("{ggml_type} {options:?} on {isa:?}, {m} rows: max |Δ| {worst:.2e}");
    worst
}

fn matmulnbits(accuracy_level: i64) -> MatMulOptions {
    MatMulOptions {
        accuracy_level,
        int8_kernel: Int8Kernel::MatMulNBits,
    }
}

const BLOCK_MATMUL: MatMulOptions = MatMulOptions {
    accuracy_level: 4,
    int8_kernel: Int8Kernel::Blocks,
};

fn exact(ggml_type: GgmlType) -> f64 {
    worst_error(ggml_type, matmulnbits(0), 5, <[f32]>::to_vec, Isa::detect())
}

#[test]
fn q4_0_maps_exactly() {
    assert!(exact(GgmlType::Q4_0) < 1e-4);
}

#[test]
fn q8_0_maps_exactly() {
    assert!(exact(GgmlType::Q8_0) < 1e-4);
}

#[test]
fn q4_1_maps_exactly_through_the_min_split() {
    assert!(exact(GgmlType::Q4_1) < 1e-4);
}

#[test]
fn int8_activations_stay_close() {
    let close = |t| worst_error(t, matmulnbits(4), 5, <[f32]>::to_vec, Isa::detect());
    assert!(close(GgmlType::Q4_1) < 0.15);
    assert!(close(GgmlType::Q8_0) < 0.15);
}

/// `BlockMatMul` is the dequantized weights times exactly the int8 activations, for
/// every block type, one row and several (a group of four and one more), on every
/// instruction set this CPU runs: the portable path is forced through
/// `slough_operators::domain_on`, as it runs on a CPU without AVX2.
#[test]
fn block_matmul_is_exact_on_int8_activations_on_every_instruction_set() {
    let isas = Isa::available();
    eprintln!("instruction sets here: {isas:?}");
    assert_eq!(isas[0], Isa::Portable);
    for isa in isas {
        for ggml_type in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0] {
            for m in [1, 5] {
                let worst = worst_error(ggml_type, BLOCK_MATMUL, m, int8_blocks, isa);
                assert!(
                    worst < 1e-4,
                    "{ggml_type} on {isa:?}, {m} rows: max |Δ| {worst}"
                );
            }
        }
    }
}

/// `BlockGather` gives an embedding table's dequantized rows, and names an id outside
/// the table instead of reading past it.
#[test]
fn block_gather_reads_dequantized_rows() {
    let (k, n) = (64usize, 10usize);
    for ggml_type in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0] {
        let bytes = quant::quantize(ggml_type, &values(n * k, 5)).unwrap();
        let dequantized = quant::dequantize(ggml_type, &bytes).unwrap();
        let table = nbits::from_ggml(ggml_type, &bytes, n, k).unwrap();
        let mut graph = GraphBuilder::new("gather");
        graph.input("ids", DataType::Int64, &[Dim::Named("m".into())]);
        let out = nbits::gather(&mut graph, "table", "ids", &table);
        graph.node_named("", "Identity", "rows", &[&out], &["rows".to_owned()], &[]);
        graph.output(
            "rows",
            DataType::Float,
            &[Dim::Named("m".into()), Dim::Fixed(k as i64)],
        );
        let mut session = support::session_from_memory(&graph.into_bytes());
        let ids = vec![3i64, 0, 9, 3];
        let outputs = session
            .run(ort::inputs!["ids" => Tensor::from_array(([4usize], ids.clone())).unwrap()])
            .unwrap();
        let (_, rows) = outputs["rows"].try_extract_tensor::<f32>().unwrap();
        for (row, &id) in rows.chunks(k).zip(&ids) {
            let id = id as usize;
            assert_eq!(
                row,
                &dequantized[id * k..(id + 1) * k],
                "{ggml_type}, id {id}"
            );
        }
        drop(outputs);
        let error = session
            .run(ort::inputs!["ids" => Tensor::from_array(([1usize], vec![10i64])).unwrap()])
            .map(|_| ())
            .unwrap_err();
        assert!(
            error
                .to_string()
                .contains("id 10 is outside the table's 10 rows"),
            "{error}"
        );
    }
}
