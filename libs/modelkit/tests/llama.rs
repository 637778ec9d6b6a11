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
    gguf::GgufFile,
    llama::{self, BuildOptions, LlamaConfig},
};
use support::{Decoder, candle_logits, compare};

use support::tiny::{HEAD_DIM, KV_HEADS, LAYERS, VOCAB, tiny_llama};

const TOKENS: [u32; 14] = [3, 17, 42, 5, 88, 13, 0, 61, 61, 29, 71, 2, 95, 40];

fn ours(gguf: &[u8]) -> Decoder {
    let file = GgufFile::from_bytes(gguf.to_vec()).unwrap();
    let config = LlamaConfig::from_gguf(&file).unwrap();
    assert_eq!(
        (config.head_dim, config.kv_heads, config.vocab_size),
        (HEAD_DIM, KV_HEADS, VOCAB)
    );
    let model = llama::build_from_gguf(&file, support::scoring()).unwrap();
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

#[test]
fn a_generation_graph_gives_the_last_positions_logits_only() {
    let gguf = tiny_llama(false);
    let file = GgufFile::from_bytes(gguf.clone()).unwrap();
    let last_only = llama::build_from_gguf(&file, BuildOptions::EXACT).unwrap();
    let mut decoder = Decoder::new(&last_only, LAYERS, KV_HEADS, HEAD_DIM, VOCAB);
    let first = decoder.feed(&TOKENS[..6]);
    assert_eq!(first.len(), 1, "one row of logits for six tokens");
    let next = decoder.feed(&TOKENS[6..]);
    let whole = ours(&gguf).feed(&TOKENS);
    let (worst, _) = compare(
        &[first[0].clone(), next[0].clone()],
        &[whole[5].clone(), whole[13].clone()],
    );
    assert!(worst < 1e-4, "max |Δlogit| {worst}");
}

#[test]
fn right_padded_prompts_prefilled_together_equal_each_alone() {
    use ort::value::Tensor;

    let gguf = tiny_llama(true);
    let file = GgufFile::from_bytes(gguf).unwrap();
    let model = llama::build_from_gguf(&file, BuildOptions::EXACT).unwrap();
    let prompts: [&[u32]; 3] = [&TOKENS[..9], &TOKENS[3..6], &TOKENS[..14]];
    let alone: Vec<Vec<f32>> = prompts
        .iter()
        .map(|p| {
            Decoder::new(&model, LAYERS, KV_HEADS, HEAD_DIM, VOCAB)
                .feed(p)
                .remove(0)
        })
        .collect();

    let width = prompts.iter().map(|p| p.len()).max().unwrap();
    let mut ids = vec![0i64; prompts.len() * width];
    let mut mask = vec![0i64; prompts.len() * width];
    for (row, prompt) in prompts.iter().enumerate() {
        for (col, &token) in prompt.iter().enumerate() {
            ids[row * width + col] = i64::from(token);
            mask[row * width + col] = 1;
        }
    }
    let rows = prompts.len();
    let mut inputs: Vec<(String, ort::session::SessionInputValue<'_>)> = vec![
        (
            "input_ids".into(),
            Tensor::from_array(([rows, width], ids)).unwrap().into(),
        ),
        (
            "attention_mask".into(),
            Tensor::from_array(([rows, width], mask)).unwrap().into(),
        ),
    ];
    for layer in 0..LAYERS {
        for part in ["key", "value"] {
            inputs.push((
                format!("past_key_values.{layer}.{part}"),
                Tensor::from_array(([rows, KV_HEADS, 0, HEAD_DIM], Vec::<f32>::new()))
                    .unwrap()
                    .into(),
            ));
        }
    }
    let mut session = support::session_from_memory(&model);
    let outputs = session.run(inputs).unwrap();
    let (shape, logits) = outputs["logits"].try_extract_tensor::<f32>().unwrap();
    assert_eq!(&**shape, &[rows as i64, 1, VOCAB as i64]);
    let together: Vec<Vec<f32>> = logits.chunks(VOCAB).map(<[f32]>::to_vec).collect();
    let (worst, agreement) = compare(&together, &alone);
    assert!(worst < 1e-4, "max |Δlogit| {worst}");
    assert_eq!(agreement, 1.0);
}

#[test]
fn a_shortlisted_lm_head_rescores_its_best_drafts_exactly() {
    const SHORTLIST: usize = 8;
    let gguf = tiny_llama(true);
    let file = GgufFile::from_bytes(gguf.clone()).unwrap();
    let options = BuildOptions {
        lm_head_shortlist: SHORTLIST,
        ..support::scoring()
    };
    let model = llama::build_from_gguf(&file, options).unwrap();
    let shortlisted = Decoder::new(&model, LAYERS, KV_HEADS, HEAD_DIM, VOCAB).feed(&TOKENS);
    let exact = ours(&gguf).feed(&TOKENS);
    let (worst, agreement) = compare(&shortlisted, &exact);
    assert_eq!(agreement, 1.0, "top-1 agreement");
    let scale = exact.iter().flatten().fold(0f32, |m, v| m.max(v.abs()));
    assert!(worst < 0.1 * scale, "a draft is off by {worst} of {scale}");
    for (row, (ours, exact)) in shortlisted.iter().zip(&exact).enumerate() {
        let rescored: Vec<usize> = (0..VOCAB)
            .filter(|&t| (ours[t] - exact[t]).abs() < 1e-4)
            .collect();
        // The shortlist is rescored exactly; every other logit is the 4-bit draft's.
        assert!(
            rescored.len() >= SHORTLIST && rescored.len() < VOCAB,
            "position {row}: {} of {VOCAB} logits are exact",
            rescored.len()
        );
        assert!(rescored.contains(&support::argmax(exact)), "position {row}");
    }
}
