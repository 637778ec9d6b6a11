//! The decoder builder on a Hugging Face checkpoint (config.json + model.safetensors, the
//! layout our fine-tunes export): the tiny llama's float weights give the same logits as
//! the same weights in a GGUF file (and as candle's llama on that file), and the int8
//! and int4 storage options stay close to fp32.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails by panicking"
)]

mod support;

use slough_modelkit::{
    gguf::GgufFile,
    llama::{self, BuildError, BuildOptions, FloatWeights, LlamaConfig},
    safetensors::SafetensorsFile,
};
use support::{
    Decoder, candle_logits, compare,
    tiny::{HEAD_DIM, KV_HEADS, LAYERS, VOCAB, tiny_llama_f32, write_hf_checkpoint},
};

const TOKENS: [u32; 14] = [3, 17, 42, 5, 88, 13, 0, 61, 61, 29, 71, 2, 95, 40];

fn options(float_weights: FloatWeights) -> BuildOptions {
    BuildOptions {
        float_weights,
        all_logits: true,
        ..BuildOptions::EXACT
    }
}

fn run(model: &[u8]) -> Vec<Vec<f32>> {
    Decoder::new(model, LAYERS, KV_HEADS, HEAD_DIM, VOCAB).feed(&TOKENS)
}

fn hf_logits(dir: &std::path::Path, float_weights: FloatWeights) -> Vec<Vec<f32>> {
    let config =
        LlamaConfig::from_hf_json(&std::fs::read_to_string(dir.join("config.json")).unwrap())
            .unwrap();
    let weights = SafetensorsFile::open(&dir.join("model.safetensors")).unwrap();
    run(&llama::build_from_safetensors(&config, &weights, options(float_weights)).unwrap())
}

#[test]
fn a_safetensors_checkpoint_equals_the_same_weights_in_gguf() {
    for tied in [false, true] {
        let gguf = tiny_llama_f32(tied);
        let dir = tempfile::tempdir().unwrap();
        write_hf_checkpoint(&gguf, dir.path());
        let file = GgufFile::from_bytes(gguf.clone()).unwrap();
        let from_gguf =
            |float_weights| run(&llama::build_from_gguf(&file, options(float_weights)).unwrap());

        let fp32 = hf_logits(dir.path(), FloatWeights::Fp32);
        let scale = fp32.iter().flatten().fold(0f32, |m, v| m.max(v.abs()));
        let (worst, agreement) = compare(&fp32, &from_gguf(FloatWeights::Fp32));
        eprintln!(
            "tied={tied}: safetensors vs GGUF, fp32: max |Δlogit| {worst:.2e} (logits up to {scale:.2})"
        );
        assert!(worst < 1e-4, "max |Δlogit| {worst}");
        assert_eq!(agreement, 1.0);

        let (worst, agreement) = compare(&fp32, &candle_logits(&gguf, &TOKENS));
        eprintln!("tied={tied}: safetensors fp32 vs candle: max |Δlogit| {worst:.2e}");
        assert!(worst < support::tolerance(scale), "max |Δlogit| {worst}");
        assert_eq!(agreement, 1.0);

        // Quantizing is row-wise, so the permuted GGUF rows give the same blocks.
        for float_weights in [FloatWeights::Int8, FloatWeights::Int4] {
            let quantized = hf_logits(dir.path(), float_weights);
            let (worst, _) = compare(&quantized, &from_gguf(float_weights));
            assert!(worst < 1e-4, "{float_weights}: safetensors vs GGUF {worst}");
            let (worst, agreement) = compare(&quantized, &fp32);
            eprintln!(
                "tied={tied}: {float_weights} vs fp32: max |Δlogit| {worst:.2e}, top-1 agreement {:.0} %",
                agreement * 100.0
            );
            // Uniform random weights are int4's worst case; the check that counts is the
            // equality with the GGUF path on the same blocks above.
            let bound = if float_weights == FloatWeights::Int8 {
                0.03
            } else {
                0.25
            };
            assert!(
                worst < bound * scale,
                "{float_weights}: max |Δlogit| {worst} of {scale}"
            );
        }
    }
}

#[test]
fn a_checkpoint_that_is_not_a_llama_or_lacks_a_tensor_is_named() {
    let err = LlamaConfig::from_hf_json(r#"{"model_type": "bert"}"#).unwrap_err();
    assert!(err.to_string().contains("bert"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    write_hf_checkpoint(&tiny_llama_f32(true), dir.path());
    let json = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
    let mut config = LlamaConfig::from_hf_json(&json).unwrap();
    config.layers += 1; // asks for a layer the checkpoint does not have
    let weights = SafetensorsFile::open(&dir.path().join("model.safetensors")).unwrap();
    let err =
        llama::build_from_safetensors(&config, &weights, BuildOptions::default()).unwrap_err();
    assert!(matches!(err, BuildError::Safetensors(_)), "{err}");
    assert!(err.to_string().contains("model.layers.2."), "{err}");
}

#[test]
fn a_checkpoint_written_as_f16_stays_close_to_f32() {
    use slough_modelkit::checkpoint::{LlamaCheckpoint, StoredFloat};

    let file = GgufFile::from_bytes(tiny_llama_f32(true)).unwrap();
    let checkpoint = LlamaCheckpoint::from_gguf(&file).unwrap();
    let (full, half) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    checkpoint
        .write_hf_dir(full.path(), StoredFloat::F32)
        .unwrap();
    checkpoint
        .write_hf_dir(half.path(), StoredFloat::F16)
        .unwrap();
    let size = |dir: &std::path::Path| {
        std::fs::metadata(dir.join("model.safetensors"))
            .unwrap()
            .len()
    };
    assert!(size(half.path()) * 2 <= size(full.path()) + 4096);
    let exact = hf_logits(full.path(), FloatWeights::Fp32);
    let scale = exact.iter().flatten().fold(0f32, |m, v| m.max(v.abs()));
    let (worst, _) = compare(&hf_logits(half.path(), FloatWeights::Fp32), &exact);
    eprintln!("f16 vs f32 checkpoint: max |Δlogit| {worst:.2e} of {scale:.2}");
    assert!(worst < 2e-3 * scale.max(1.0), "max |Δlogit| {worst}");
}
