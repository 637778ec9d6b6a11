//! The real SmolLM2-135M-Instruct Q4_1 file, as `scripts/setup` fetches it: the header
//! and hyperparameters read as expected, every tensor's data lies inside the file and
//! decodes to finite values, and its tokenizer matches the known vectors of
//! `shared/notes/onnx-llama.md`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails by panicking"
)]

mod support;

use std::{collections::BTreeMap, time::Instant};

use support::smollm2;

use slough_modelkit::{
    gguf::{GgmlType, GgufFile},
    tokenizer,
};

#[test]
fn reads_the_real_smollm2_file() {
    let started = Instant::now();
    let file = GgufFile::open(&smollm2()).unwrap();
    eprintln!("opened in {:?}: {file:?}", started.elapsed());

    assert_eq!(file.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(file.get_u64("llama.block_count").unwrap(), 30);
    assert_eq!(file.get_u64("llama.embedding_length").unwrap(), 576);
    assert_eq!(file.get_u64("llama.attention.head_count").unwrap(), 9);
    assert_eq!(file.get_u64("llama.attention.head_count_kv").unwrap(), 3);
    assert_eq!(file.get_str("tokenizer.ggml.model").unwrap(), "gpt2");
    let tokens = file.get_str_array("tokenizer.ggml.tokens").unwrap();
    assert_eq!(tokens.len(), 49_152);
    assert_eq!(
        &tokens[..3],
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    );
    assert!(
        file.get_str("tokenizer.chat_template")
            .unwrap()
            .contains("<|im_start|>")
    );

    let mut by_type: BTreeMap<String, usize> = BTreeMap::new();
    for tensor in file.tensors() {
        *by_type.entry(tensor.ggml_type.to_string()).or_default() += 1;
        let bytes = file.tensor_bytes(tensor).unwrap();
        assert_eq!(bytes.len() as u64, tensor.byte_size().unwrap());
    }
    eprintln!("tensors by type: {by_type:?}");
    assert_eq!(
        file.tensor("blk.0.attn_q.weight").unwrap().ggml_type,
        GgmlType::Q4_1
    );
    assert_eq!(file.tensor("blk.0.attn_q.weight").unwrap().dims, [576, 576]);

    let started = Instant::now();
    for name in [
        "token_embd.weight",
        "blk.29.ffn_down.weight",
        "output_norm.weight",
    ] {
        let tensor = file.tensor(name).unwrap();
        let values = file.dequantize(tensor).unwrap();
        assert_eq!(values.len() as u64, tensor.element_count());
        assert!(
            values.iter().all(|v| v.is_finite()),
            "{name} decodes to finite values"
        );
        let rms = (values.iter().map(|v| v * v).sum::<f32>() / values.len() as f32).sqrt();
        assert!(rms > 1e-3 && rms < 10.0, "{name}: implausible RMS {rms}");
    }
    eprintln!("dequantized three tensors in {:?}", started.elapsed());
}

#[test]
fn smollm2_matches_known_vectors() {
    let tokenizer = tokenizer::from_gguf(&GgufFile::open(&smollm2()).unwrap()).unwrap();
    let ids = tokenizer
        .encode("Hello world! 123", false)
        .unwrap()
        .get_ids()
        .to_vec();
    assert_eq!(ids, [19556, 905, 17, 216, 33, 34, 35]);
    let chat = "<|im_start|>user\nHi<|im_end|>\n";
    let ids = tokenizer.encode(chat, false).unwrap().get_ids().to_vec();
    assert_eq!(ids[0], 1, "<|im_start|> is one token");
    assert!(ids.contains(&2), "<|im_end|> is one token");
    for text in [
        "naïve café — 東京 🚀",
        "  leading spaces\tand\ttabs\n\nnewlines",
        "x = f(a, b) * 3.14159;",
    ] {
        let ids = tokenizer.encode(text, false).unwrap().get_ids().to_vec();
        assert_eq!(tokenizer.decode(&ids, false).unwrap(), text);
    }
}
