//! ggml blocks through our ONNX writer into onnxruntime: `MatMulNBits` over repacked
//! Q4_0, Q8_0 and (with the min split) Q4_1 weights gives what the dequantized matrix
//! gives, computed independently in f64 here. Needs libonnxruntime from `scripts/setup`
//! (or `ORT_DYLIB_PATH`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails by panicking"
)]

mod support;

use ort::{session::Session, value::Tensor};
use slough_modelkit::{
    gguf::{GgmlType, quant},
    onnx::{
        Dim, GraphBuilder,
        nbits::{self, MatMulOptions},
        proto::DataType,
    },
};

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

fn check(ggml_type: GgmlType, accuracy_level: i64, tolerance: f64) {
    let (m, k, n) = (5usize, 128usize, 48usize);
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
    let out = nbits::matmul(
        &mut graph,
        "proj",
        "a",
        &weight,
        MatMulOptions { accuracy_level },
    );
    graph.node_named("", "Identity", "y", &[&out], &["y".to_owned()], &[]);
    graph.output(
        "y",
        DataType::Float,
        &[Dim::Fixed(1), Dim::Named("m".into()), Dim::Fixed(n as i64)],
    );
    let model = graph.into_bytes();

    let mut session = Session::builder(support::environment())
        .unwrap()
        .commit_from_memory(&model)
        .unwrap();
    let a = values(m * k, 3);
    let outputs = session
        .run(ort::inputs!["a" => Tensor::from_array(([1usize, m, k], a.clone())).unwrap()])
        .unwrap();
    let (shape, y) = outputs["y"].try_extract_tensor::<f32>().unwrap();
    assert_eq!(&**shape, &[1, m as i64, n as i64]);

    let mut worst = 0f64;
    for row in 0..m {
        for col in 0..n {
            let expected: f64 = (0..k)
                .map(|i| f64::from(a[row * k + i]) * f64::from(dequantized[col * k + i]))
                .sum();
            worst = worst.max((expected - f64::from(y[row * n + col])).abs());
        }
    }
    eprintln!("{ggml_type} accuracy_level {accuracy_level}: max |Δ| {worst:.2e}");
    assert!(worst < tolerance, "{ggml_type}: max |Δ| {worst}");
}

#[test]
fn q4_0_maps_exactly() {
    check(GgmlType::Q4_0, 0, 1e-4);
}

#[test]
fn q8_0_maps_exactly() {
    check(GgmlType::Q8_0, 0, 1e-4);
}

#[test]
fn q4_1_maps_exactly_through_the_min_split() {
    check(GgmlType::Q4_1, 0, 1e-4);
}

#[test]
fn int8_activations_stay_close() {
    check(GgmlType::Q4_1, 4, 0.15);
}

#[test]
fn q8_0_with_int8_activations_stays_close() {
    check(GgmlType::Q8_0, 4, 0.15);
}
