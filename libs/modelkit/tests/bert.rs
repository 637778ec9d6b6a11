//! The BERT encoder: a tiny synthetic checkpoint and the real all-MiniLM-L6-v2 give the
//! same sentence embeddings as candle's BERT (with the same mean pooling and
//! normalization), with and without padding; paraphrases land closer than unrelated
//! sentences.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails by panicking"
)]

mod support;

use std::{collections::HashMap, time::Instant};

use candle_core::{DType, Device, Tensor as CandleTensor};
use ort::value::Tensor;
use slough_modelkit::{
    bert::{self, BertConfig},
    safetensors::SafetensorsFile,
};

/// Our graph's embeddings for `batch` (right-padded with 0 to the longest).
fn ours(model: &[u8], batch: &[Vec<u32>]) -> Vec<Vec<f32>> {
    let mut session = support::session_from_memory(model);
    let width = batch.iter().map(Vec::len).max().unwrap();
    let mut ids = Vec::new();
    let mut mask = Vec::new();
    for row in batch {
        for j in 0..width {
            ids.push(row.get(j).map_or(0, |&t| i64::from(t)));
            mask.push(i64::from(j < row.len()));
        }
    }
    let outputs = session
        .run(ort::inputs![
            "input_ids" => Tensor::from_array(([batch.len(), width], ids)).unwrap(),
            "attention_mask" => Tensor::from_array(([batch.len(), width], mask)).unwrap(),
        ])
        .unwrap();
    let (shape, values) = outputs["embeddings"].try_extract_tensor::<f32>().unwrap();
    values
        .chunks(shape[1] as usize)
        .map(<[f32]>::to_vec)
        .collect()
}

/// candle's BERT on one unpadded sentence, mean-pooled and normalized here.
fn candle(checkpoint: &[u8], config_json: &str, tokens: &[u32]) -> Vec<f32> {
    let config: candle_transformers::models::bert::Config =
        serde_json::from_str(config_json).unwrap();
    let vb = candle_nn::VarBuilder::from_slice_safetensors(checkpoint, DType::F32, &Device::Cpu)
        .unwrap();
    let model = candle_transformers::models::bert::BertModel::load(vb, &config).unwrap();
    let ids = CandleTensor::new(tokens, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let types = ids.zeros_like().unwrap();
    let hidden = model.forward(&ids, &types, None).unwrap();
    let mean: Vec<f32> = hidden
        .mean(1)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec1()
        .unwrap();
    let norm = mean.iter().map(|v| v * v).sum::<f32>().sqrt();
    mean.iter().map(|v| v / norm).collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b))
}

#[test]
fn synthetic_bert_matches_candle() {
    let (vocab, h, ffn, layers, heads, positions) =
        (50usize, 32usize, 64usize, 2usize, 4usize, 16usize);
    let mut tensors: HashMap<String, (Vec<usize>, Vec<u8>)> = HashMap::new();
    let mut seed = 0u32;
    let mut add = |name: &str, shape: Vec<usize>, base: f32, spread: f32| {
        seed += 1;
        let count = shape.iter().product::<usize>();
        let bytes = (0..count as u32)
            .map(|i| {
                base + ((i.wrapping_mul(2_654_435_761) ^ seed.wrapping_mul(97)) % 1000) as f32
                    / 1000.0
                    * spread
                    - spread / 2.0
            })
            .flat_map(f32::to_le_bytes)
            .collect();
        tensors.insert(name.to_owned(), (shape, bytes));
    };
    add(
        "embeddings.word_embeddings.weight",
        vec![vocab, h],
        0.0,
        1.0,
    );
    add(
        "embeddings.position_embeddings.weight",
        vec![positions, h],
        0.0,
        0.5,
    );
    add(
        "embeddings.token_type_embeddings.weight",
        vec![2, h],
        0.0,
        0.5,
    );
    add("embeddings.LayerNorm.weight", vec![h], 1.0, 0.2);
    add("embeddings.LayerNorm.bias", vec![h], 0.0, 0.2);
    for i in 0..layers {
        let p = format!("encoder.layer.{i}");
        for (name, out, inp) in [
            ("attention.self.query", h, h),
            ("attention.self.key", h, h),
            ("attention.self.value", h, h),
            ("attention.output.dense", h, h),
            ("intermediate.dense", ffn, h),
            ("output.dense", h, ffn),
        ] {
            add(
                &format!("{p}.{name}.weight"),
                vec![out, inp],
                0.0,
                2.0 / (inp as f32).sqrt(),
            );
            add(&format!("{p}.{name}.bias"), vec![out], 0.0, 0.1);
        }
        for norm in ["attention.output.LayerNorm", "output.LayerNorm"] {
            add(&format!("{p}.{norm}.weight"), vec![h], 1.0, 0.2);
            add(&format!("{p}.{norm}.bias"), vec![h], 0.0, 0.2);
        }
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(name, (shape, bytes))| {
            (
                name.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                    .unwrap(),
            )
        })
        .collect();
    let checkpoint = safetensors::serialize(views, None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    std::fs::write(&path, &checkpoint).unwrap();
    let config_json = format!(
        r#"{{"vocab_size": {vocab}, "hidden_size": {h}, "num_hidden_layers": {layers}, "num_attention_heads": {heads},
            "intermediate_size": {ffn}, "max_position_embeddings": {positions}, "layer_norm_eps": 1e-12,
            "hidden_act": "gelu", "type_vocab_size": 2, "hidden_dropout_prob": 0.0, "pad_token_id": 0,
            "initializer_range": 0.02}}"#
    );
    let config = BertConfig::from_json(&config_json).unwrap();
    let model = bert::build(&config, &SafetensorsFile::open(&path).unwrap()).unwrap();

    let sentences = vec![
        vec![1, 7, 19, 3],
        vec![4, 4, 42, 8, 15, 2, 11, 30, 9],
        vec![5],
    ];
    let embeddings = ours(&model, &sentences);
    for (tokens, embedding) in sentences.iter().zip(&embeddings) {
        let reference = candle(&checkpoint, &config_json, tokens);
        let cos = cosine(embedding, &reference);
        assert!(cos > 0.99999, "cosine {cos} for {tokens:?}");
        let length = embedding.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((length - 1.0).abs() < 1e-5, "unit length, got {length}");
    }
}

const SENTENCES: [&str; 20] = [
    "A man is playing a guitar.",
    "Someone is strumming a guitar.",
    "The stock market fell sharply today.",
    "Shares dropped steeply in today's trading.",
    "I love eating fresh strawberries in the summer.",
    "The train to Edinburgh leaves at nine.",
    "Photosynthesis turns light into chemical energy in plants.",
    "Plants convert sunlight into energy through photosynthesis.",
    "Cats.",
    "Where is the nearest pharmacy?",
    "Could you tell me where I can find a chemist nearby?",
    "The committee postponed its decision until next month, citing the need for further consultation with residents and local businesses.",
    "Quantum computers exploit superposition and entanglement.",
    "He forgot his umbrella and got soaked on the way home.",
    "Rust's borrow checker prevents data races at compile time.",
    "The recipe calls for two cups of flour and a pinch of salt.",
    "Our flight was delayed by three hours because of fog.",
    "Fog delayed our plane by three hours.",
    "Dogs are loyal companions.",
    "What a beautiful sunny morning it is!",
];

#[test]
fn minilm_matches_candle_and_knows_paraphrases() {
    let dir = support::data_dir().join("cache/sources/all-MiniLM-L6-v2");
    assert!(
        dir.exists(),
        "{} is missing: run ./scripts/setup",
        dir.display()
    );
    let config_json = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let config = BertConfig::from_json(&config_json).unwrap();
    let started = Instant::now();
    let model = bert::build(
        &config,
        &SafetensorsFile::open(&dir.join("model.safetensors")).unwrap(),
    )
    .unwrap();
    eprintln!(
        "built MiniLM in {:?}: {:.1} MB",
        started.elapsed(),
        model.len() as f64 / 1e6
    );
    let mut tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    // The shipped tokenizer pads every input to 128 tokens; the graph masks instead.
    tokenizer.with_padding(None);
    tokenizer.with_truncation(None).unwrap();
    let tokens: Vec<Vec<u32>> = SENTENCES
        .iter()
        .map(|s| tokenizer.encode(*s, true).unwrap().get_ids().to_vec())
        .collect();

    // All 20 in one padded batch, and each alone: padding must not change anything.
    let batched = ours(&model, &tokens);
    let checkpoint = std::fs::read(dir.join("model.safetensors")).unwrap();
    let mut worst = 1f32;
    for (i, sentence_tokens) in tokens.iter().enumerate() {
        let alone = &ours(&model, std::slice::from_ref(sentence_tokens))[0];
        assert!(
            cosine(alone, &batched[i]) > 0.99999,
            "padding changed sentence {i}"
        );
        worst = worst.min(cosine(
            alone,
            &candle(&checkpoint, &config_json, sentence_tokens),
        ));
    }
    eprintln!(
        "MiniLM vs candle over {} sentences: min cosine {worst:.6}",
        SENTENCES.len()
    );
    assert!(worst >= 0.999, "min cosine {worst}");

    let similarity = |a: usize, b: usize| cosine(&batched[a], &batched[b]);
    for (paraphrase, unrelated) in [
        ((0, 1), (0, 2)),
        ((2, 3), (2, 15)),
        ((6, 7), (6, 16)),
        ((9, 10), (9, 13)),
        ((16, 17), (16, 14)),
    ] {
        let (close, far) = (
            similarity(paraphrase.0, paraphrase.1),
            similarity(unrelated.0, unrelated.1),
        );
        eprintln!(
            "{:?}: paraphrase {close:.3}, unrelated {far:.3}",
            paraphrase
        );
        assert!(
            close > far + 0.2,
            "{paraphrase:?} {close} vs {unrelated:?} {far}"
        );
    }
}
