//! What the modelkit tests share: where setup put things, one onnxruntime environment
//! per test process, and runs of the decoder graph and of candle's reference.

#![allow(dead_code, reason = "each test file uses part of this")]

pub mod tiny;

use std::{path::PathBuf, sync::OnceLock};

use slough_operators::create_session;

use ort::{environment::Environment, session::Session, value::Tensor};

/// Build options for scoring a text: the exact graph, logits for every position.
pub fn scoring() -> slough_modelkit::llama::BuildOptions {
    slough_modelkit::llama::BuildOptions {
        all_logits: true,
        ..slough_modelkit::llama::BuildOptions::EXACT
    }
}

/// `SLOUGH_DATA_DIR`, else `~/.slough`.
pub fn data_dir() -> PathBuf {
    std::env::var_os("SLOUGH_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".slough"))
}

/// The SmolLM2 file `scripts/setup` unpacks.
pub fn smollm2() -> PathBuf {
    let path = data_dir().join("cache/sources/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.exists(),
        "{} is missing: run ./scripts/setup",
        path.display()
    );
    path
}

/// The process's onnxruntime environment (`ORT_DYLIB_PATH`, else setup's copy).
pub fn environment() -> &'static Environment {
    static ENV: OnceLock<Environment> = OnceLock::new();
    ENV.get_or_init(|| {
        let path = std::env::var_os("ORT_DYLIB_PATH")
            .map(PathBuf::from)
            .unwrap_or_else(|| data_dir().join("runtime/libonnxruntime.so"));
        assert!(
            path.exists(),
            "{} is missing: run ./scripts/setup",
            path.display()
        );
        ort::init_from(&path)
            .unwrap()
            .with_name("modelkit-tests")
            .build()
            .unwrap()
    })
}

/// A decoder graph in onnxruntime, with its KV cache carried between calls (batch 1).
pub struct Decoder {
    session: Session,
    layers: usize,
    kv_heads: usize,
    head_dim: usize,
    past: Vec<(Vec<usize>, Vec<f32>)>,
    length: usize,
    pub vocab: usize,
}

/// A session builder on the shared environment, with our operators registered (as
/// inference registers them).
fn builder() -> ort::session::builder::SessionBuilder {
    builder_on(slough_operators::Isa::detect())
}

/// The same with `BlockMatMul` on instruction set `isa`.
fn builder_on(isa: slough_operators::Isa) -> ort::session::builder::SessionBuilder {
    Session::builder(environment())
        .unwrap()
        .with_operators(slough_operators::domain_on(isa).unwrap())
        .unwrap()
}

/// A session of the graph `model`.
pub fn session_from_memory(model: &[u8]) -> Session {
    create_session(|| builder().commit_from_memory(model).unwrap())
}

/// A session of the graph `model` whose `BlockMatMul` runs on `isa` (the portable path
/// on a CPU that has faster ones, say).
pub fn session_on(model: &[u8], isa: slough_operators::Isa) -> Session {
    create_session(|| builder_on(isa).commit_from_memory(model).unwrap())
}

/// A session of the graph in `path`.
pub fn session_from_file(path: impl AsRef<std::path::Path>) -> Session {
    create_session(|| builder().commit_from_file(path).unwrap())
}

impl Decoder {
    pub fn new(
        model: &[u8],
        layers: usize,
        kv_heads: usize,
        head_dim: usize,
        vocab: usize,
    ) -> Decoder {
        let session = session_from_memory(model);
        let past = vec![(vec![1, kv_heads, 0, head_dim], Vec::new()); layers * 2];
        Decoder {
            session,
            layers,
            kv_heads,
            head_dim,
            past,
            length: 0,
            vocab,
        }
    }

    /// Feeds `tokens` after what came before; returns their logits, one row each.
    pub fn feed(&mut self, tokens: &[u32]) -> Vec<Vec<f32>> {
        let total = self.length + tokens.len();
        let ids: Vec<i64> = tokens.iter().map(|&t| i64::from(t)).collect();
        let mut inputs: Vec<(String, ort::session::SessionInputValue<'_>)> = vec![
            (
                "input_ids".into(),
                Tensor::from_array(([1usize, tokens.len()], ids))
                    .unwrap()
                    .into(),
            ),
            (
                "attention_mask".into(),
                Tensor::from_array(([1usize, total], vec![1i64; total]))
                    .unwrap()
                    .into(),
            ),
        ];
        for i in 0..self.layers {
            for (j, part) in ["key", "value"].iter().enumerate() {
                let (shape, data) = self.past[i * 2 + j].clone();
                inputs.push((
                    format!("past_key_values.{i}.{part}"),
                    Tensor::from_array((shape, data)).unwrap().into(),
                ));
            }
        }
        let outputs = self.session.run(inputs).unwrap();
        let (_, logits) = outputs["logits"].try_extract_tensor::<f32>().unwrap();
        let rows = logits.chunks(self.vocab).map(<[f32]>::to_vec).collect();
        let mut past = Vec::new();
        for i in 0..self.layers {
            for part in ["key", "value"] {
                let (shape, data) = outputs[format!("present.{i}.{part}").as_str()]
                    .try_extract_tensor::<f32>()
                    .unwrap();
                assert_eq!(
                    &**shape,
                    &[1, self.kv_heads as i64, total as i64, self.head_dim as i64]
                );
                past.push((shape.iter().map(|&d| d as usize).collect(), data.to_vec()));
            }
        }
        drop(outputs);
        self.past = past;
        self.length = total;
        rows
    }
}

/// candle's quantized llama on the same GGUF bytes: logits of each token fed one by one.
pub fn candle_logits(gguf: &[u8], tokens: &[u32]) -> Vec<Vec<f32>> {
    use candle_core::{Device, Tensor};
    let mut reader = std::io::Cursor::new(gguf);
    let content = candle_core::quantized::gguf_file::Content::read(&mut reader).unwrap();
    let mut model = candle_transformers::models::quantized_llama::ModelWeights::from_gguf(
        content,
        &mut reader,
        &Device::Cpu,
    )
    .unwrap();
    tokens
        .iter()
        .enumerate()
        .map(|(pos, &token)| {
            let input = Tensor::new(&[token], &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            model
                .forward(&input, pos)
                .unwrap()
                .squeeze(0)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        })
        .collect()
}

/// The largest |Δlogit| to accept against candle for logits up to `scale`: rounding
/// only when candle dequantizes its weights (`.cargo/config.toml` sets that), about
/// 2 % of the range when it quantizes activations to 8 bits as llama.cpp does.
pub fn tolerance(scale: f32) -> f32 {
    match std::env::var("CANDLE_DEQUANTIZE_ALL").as_deref() {
        Ok("1") => 1e-3 * scale.max(1.0),
        _ => 0.03 * scale,
    }
}

/// Index of the largest value.
pub fn argmax(values: &[f32]) -> usize {
    values
        .iter()
        .enumerate()
        .fold(0, |best, (i, &v)| if v > values[best] { i } else { best })
}

/// (max |Δ| over all values, share of rows whose argmax agrees).
pub fn compare(ours: &[Vec<f32>], reference: &[Vec<f32>]) -> (f32, f64) {
    assert_eq!(ours.len(), reference.len());
    let mut worst = 0f32;
    let mut agree = 0;
    for (a, b) in ours.iter().zip(reference) {
        assert_eq!(a.len(), b.len());
        worst = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(worst, f32::max);
        agree += usize::from(argmax(a) == argmax(b));
    }
    (worst, agree as f64 / ours.len() as f64)
}
