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
/// (`config.json` + `model.safetensors`): tensors renamed, and the Q/K rows of each head
/// un-permuted from llama.cpp's interleaved rotary order back to halves.
pub fn write_hf_checkpoint(gguf: &[u8], dir: &std::path::Path) {
    use slough_modelkit::gguf::GgufFile;

    let file = GgufFile::from_bytes(gguf.to_vec()).unwrap();
    let tied = file.tensor("output.weight").is_err();
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": VOCAB,
        "hidden_size": HIDDEN,
        "intermediate_size": FFN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "max_position_embeddings": 256,
        "tie_word_embeddings": tied,
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();

    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut add = |hf: String, gguf_name: String, unpermute_heads: Option<usize>| {
        let info = file.tensor(&gguf_name).unwrap();
        let mut values = file.dequantize(info).unwrap();
        let shape: Vec<usize> = info.dims.iter().rev().map(|&d| d as usize).collect();
        if let Some(heads) = unpermute_heads {
            values = unpermute(&values, heads, shape[1]);
        }
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        tensors.push((hf, shape, bytes));
    };
    add(
        "model.embed_tokens.weight".into(),
        "token_embd.weight".into(),
        None,
    );
    add(
        "model.norm.weight".into(),
        "output_norm.weight".into(),
        None,
    );
    if !tied {
        add("lm_head.weight".into(), "output.weight".into(), None);
    }
    for i in 0..LAYERS {
        let layer = format!("model.layers.{i}");
        add(
            format!("{layer}.input_layernorm.weight"),
            format!("blk.{i}.attn_norm.weight"),
            None,
        );
        add(
            format!("{layer}.post_attention_layernorm.weight"),
            format!("blk.{i}.ffn_norm.weight"),
            None,
        );
        add(
            format!("{layer}.self_attn.q_proj.weight"),
            format!("blk.{i}.attn_q.weight"),
            Some(HEADS),
        );
        add(
            format!("{layer}.self_attn.k_proj.weight"),
            format!("blk.{i}.attn_k.weight"),
            Some(KV_HEADS),
        );
        add(
            format!("{layer}.self_attn.v_proj.weight"),
            format!("blk.{i}.attn_v.weight"),
            None,
        );
        add(
            format!("{layer}.self_attn.o_proj.weight"),
            format!("blk.{i}.attn_output.weight"),
            None,
        );
        add(
            format!("{layer}.mlp.gate_proj.weight"),
            format!("blk.{i}.ffn_gate.weight"),
            None,
        );
        add(
            format!("{layer}.mlp.up_proj.weight"),
            format!("blk.{i}.ffn_up.weight"),
            None,
        );
        add(
            format!("{layer}.mlp.down_proj.weight"),
            format!("blk.{i}.ffn_down.weight"),
            None,
        );
    }
    let views = tensors.iter().map(|(name, shape, bytes)| {
        let view =
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                .unwrap();
        (name.clone(), view)
    });
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
}

/// llama.cpp stores head row `2j + t` where Hugging Face has row `t·half + j`.
fn unpermute(values: &[f32], heads: usize, cols: usize) -> Vec<f32> {
    let rows = values.len() / cols;
    let head_dim = rows / heads;
    let half = head_dim / 2;
    let mut out = vec![0.0; values.len()];
    for h in 0..heads {
        for j in 0..half {
            for t in 0..2 {
                let from = h * head_dim + 2 * j + t;
                let to = h * head_dim + t * half + j;
                out[to * cols..(to + 1) * cols]
                    .copy_from_slice(&values[from * cols..(from + 1) * cols]);
            }
        }
    }
    out
}
