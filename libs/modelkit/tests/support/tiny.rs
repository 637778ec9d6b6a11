//! A tiny synthetic llama (2 layers, random weights) written as GGUF, and the same
//! weights as a Hugging Face checkpoint.

use slough_modelkit::gguf::{GgmlType, Value, ValueType, quant, writer::GgufWriter};

pub const VOCAB: usize = 96;
pub const HIDDEN: usize = 64;
pub const HEADS: usize = 4;
pub const KV_HEADS: usize = 2;
pub const HEAD_DIM: usize = HIDDEN / HEADS;
pub const FFN: usize = 128;
pub const LAYERS: usize = 2;

/// Deterministic noise with a given scale.
fn noise(count: usize, seed: u32, scale: f32) -> Vec<f32> {
    (0..count as u32)
        .map(|i| {
            let x = (i ^ seed.wrapping_mul(0x9E37_79B9)).wrapping_mul(2_654_435_761) >> 7;
            ((x % 20_001) as f32 / 10_000.0 - 1.0) * scale
        })
        .collect()
}

/// The tiny llama with mixed Q4_0/Q4_1/Q8_0 matrices, as a quantized GGUF file is.
pub fn tiny_llama(tied: bool) -> Vec<u8> {
    tiny_llama_typed(tied, false)
}

/// The tiny llama with every matrix F32, as a float checkpoint converted to GGUF is.
pub fn tiny_llama_f32(tied: bool) -> Vec<u8> {
    tiny_llama_typed(tied, true)
}

fn tiny_llama_typed(tied: bool, float: bool) -> Vec<u8> {
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
        .metadata("tokenizer.ggml.model", Value::String("gpt2".into()))
        .metadata(
            "tokenizer.ggml.merges",
            Value::Array(ValueType::String, Vec::new()),
        )
        .metadata("tokenizer.ggml.eos_token_id", Value::U32(2))
        .metadata(
            "tokenizer.chat_template",
            Value::String("{% for m in messages %}{{ m.content }}{% endfor %}".into()),
        )
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
            let ggml_type = if float { GgmlType::F32 } else { ggml_type };
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

/// The weights of a float tiny llama GGUF as a Hugging Face checkpoint in `dir`
/// (`config.json` + `model.safetensors`), as the trainer exports them.
pub fn write_hf_checkpoint(gguf: &[u8], dir: &std::path::Path) {
    use slough_modelkit::{
        checkpoint::{LlamaCheckpoint, StoredFloat},
        gguf::GgufFile,
    };

    let file = GgufFile::from_bytes(gguf.to_vec()).unwrap();
    LlamaCheckpoint::from_gguf(&file)
        .unwrap()
        .write_hf_dir(dir, StoredFloat::F32)
        .unwrap();
}
