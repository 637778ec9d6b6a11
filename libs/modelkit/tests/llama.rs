//! The decoder builder on a tiny synthetic llama (2 layers, random weights, written as
//! GGUF here): onnxruntime's logits match candle's quantized llama on the same file, and
//! decoding with the KV cache gives what one long prefill gives.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails by panicking"
)]

mod support;

use slough_modelkit::{
    gguf::{GgmlType, GgufFile, Value, ValueType, quant, writer::GgufWriter},
    llama::{self, BuildOptions, LlamaConfig},
};
use support::{Decoder, candle_logits, compare};

const VOCAB: usize = 96;
const HIDDEN: usize = 64;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = HIDDEN / HEADS;
const FFN: usize = 128;
const LAYERS: usize = 2;

/// Deterministic noise with a given scale.
fn noise(count: usize, seed: u32, scale: f32) -> Vec<f32> {
    (0..count as u32)
        .map(|i| {
            let x = (i ^ seed.wrapping_mul(0x9E37_79B9)).wrapping_mul(2_654_435_761) >> 7;
            ((x % 20_001) as f32 / 10_000.0 - 1.0) * scale
        })
        .collect()
}

fn tiny_llama(tied: bool) -> Vec<u8> {
    let mut writer = GgufWriter::new()
        .metadata("general.architecture", Value::String("llama".into()))
        .metadata("llama.context_length", Value::U32(256))
        .metadata("llama.embedding_length", Value::U32(HIDDEN as u32))
        .metadata("llama.block_count", Value::U32(LAYERS as u32))
        .metadata("llama.feed_forward_length", Value::U32(FFN as u32))
        .metadata("llama.attention.head_count", Value::U32(HEADS as u32))
        .metadata("llama.attention.head_count_kv", Value::U32(KV_HEADS as u32))
        .metadata("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5))
        .metadata("llama.rope.freq_base", Value::F32(10_000.0))
        .metadata("llama.rope.dimension_count", Value::U32(HEAD_DIM as u32))
        .metadata(
            "tokenizer.ggml.tokens",
            Value::Array(
                ValueType::String,
                (0..VOCAB).map(|i| Value::String(format!("t{i}"))).collect(),
            ),
        );
    let mut seed = 1;
    let mut matrix =
        |writer: GgufWriter, name: &str, rows: usize, cols: usize, ggml_type: GgmlType| {
            seed += 1;
            let values = noise(rows * cols, seed, 1.0 / (cols as f32).sqrt() * 1.7);
            writer.tensor(
                name,
                &[cols as u64, rows as u64],
                ggml_type,
                quant::quantize(ggml_type, &values).unwrap(),
            )
        };
    writer = matrix(writer, "token_embd.weight", VOCAB, HIDDEN, GgmlType::Q8_0);
    for i in 0..LAYERS {
        writer = matrix(
            writer,
            &format!("blk.{i}.attn_q.weight"),
            HIDDEN,
            HIDDEN,
            GgmlType::Q4_1,
        );
        writer = matrix(
            writer,
            &format!("blk.{i}.attn_k.weight"),
            KV_HEADS * HEAD_DIM,
            HIDDEN,
            GgmlType::Q4_1,
        );
        writer = matrix(
            writer,
            &format!("blk.{i}.attn_v.weight"),
            KV_HEADS * HEAD_DIM,
            HIDDEN,
            GgmlType::Q4_1,
        );
        writer = matrix(
            writer,
            &format!("blk.{i}.attn_output.weight"),
            HIDDEN,
            HIDDEN,
            GgmlType::Q4_0,
        );
        writer = matrix(
            writer,
            &format!("blk.{i}.ffn_gate.weight"),
            FFN,
            HIDDEN,
            GgmlType::Q8_0,
        );
        writer = matrix(
            writer,
            &format!("blk.{i}.ffn_up.weight"),
            FFN,
            HIDDEN,
            GgmlType::Q4_1,
        );
        writer = matrix(
            writer,
            &format!("blk.{i}.ffn_down.weight"),
            HIDDEN,
            FFN,
            GgmlType::Q4_0,
        );
        for norm in ["attn_norm", "ffn_norm"] {
            let gamma: Vec<f32> = noise(HIDDEN, 100 + i as u32, 0.3)
                .iter()
                .map(|v| 1.0 + v)
                .collect();
            writer = writer.tensor(
                &format!("blk.{i}.{norm}.weight"),
                &[HIDDEN as u64],
                GgmlType::F32,
                quant::quantize(GgmlType::F32, &gamma).unwrap(),
            );
        }
    }
    let gamma: Vec<f32> = noise(HIDDEN, 7, 0.3).iter().map(|v| 1.0 + v).collect();
    writer = writer.tensor(
        "output_norm.weight",
        &[HIDDEN as u64],
        GgmlType::F32,
        quant::quantize(GgmlType::F32, &gamma).unwrap(),
    );
    if !tied {
        writer = matrix(writer, "output.weight", VOCAB, HIDDEN, GgmlType::Q4_1);
    }
    writer.to_bytes()
}

const TOKENS: [u32; 14] = [3, 17, 42, 5, 88, 13, 0, 61, 61, 29, 71, 2, 95, 40];

fn ours(gguf: &[u8]) -> Decoder {
    let file = GgufFile::from_bytes(gguf.to_vec()).unwrap();
    let config = LlamaConfig::from_gguf(&file).unwrap();
    assert_eq!(
        (config.head_dim, config.kv_heads, config.vocab_size),
        (HEAD_DIM, KV_HEADS, VOCAB)
    );
    let model = llama::build_from_gguf(&file, BuildOptions::default()).unwrap();
    Decoder::new(&model, LAYERS, KV_HEADS, HEAD_DIM, VOCAB)
}

#[test]
fn logits_match_candle_with_a_separate_and_a_tied_lm_head() {
    for tied in [false, true] {
        let gguf = tiny_llama(tied);
        let logits = ours(&gguf).feed(&TOKENS);
        let reference = candle_logits(&gguf, &TOKENS);
        let (worst, agreement) = compare(&logits, &reference);
        let scale = reference.iter().flatten().fold(0f32, |m, v| m.max(v.abs()));
        eprintln!(
            "tied={tied}: max |Δlogit| {worst:.2e} of logits up to {scale:.2}, top-1 agreement {:.0} %",
            agreement * 100.0
        );
        assert!(
            worst < support::tolerance(scale),
            "max |Δlogit| {worst} of {scale}"
        );
        assert_eq!(agreement, 1.0, "top-1 agreement");
    }
}

#[test]
fn decoding_with_the_cache_equals_one_long_prefill() {
    let gguf = tiny_llama(true);
    let whole = ours(&gguf).feed(&TOKENS);
    let mut stepwise = ours(&gguf);
    let mut logits = stepwise.feed(&TOKENS[..6]);
    for &token in &TOKENS[6..] {
        logits.extend(stepwise.feed(&[token]));
    }
    let (worst, agreement) = compare(&logits, &whole);
    assert!(worst < 1e-4, "max |Δlogit| {worst}");
    assert_eq!(agreement, 1.0);
}
