//! The real SmolLM2-135M-Instruct Q4_1 file, as `scripts/setup` fetches it: the header
//! and hyperparameters read as expected, every tensor's data lies inside the file and
//! decodes to finite values, its tokenizer matches the known vectors of
//! `shared/notes/onnx-llama.md`, and the decoder graph built from it agrees with candle's
//! quantized llama over real text and chats fluently.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails by panicking"
)]

mod support;

use std::{collections::BTreeMap, time::Instant};

use slough_modelkit::{
    chat::{ChatMessage, ChatTemplate},
    gguf::{GgmlType, GgufFile},
    llama, tokenizer,
};
use support::{Decoder, argmax, candle_logits, compare, smollm2};

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

/// Real English prose, written for this test (over 200 tokens).
const TEXT: &str = "The harbour town woke slowly that morning. Fishing boats rocked against the \
quay while gulls argued over scraps, and the baker on the corner pulled the first loaves from \
his oven before the sun had cleared the hills. Most people in the town had lived there all their \
lives, and they measured the seasons by the weather rather than the calendar: the first storm of \
autumn, the week the swallows left, the cold snap that froze the water troughs in the square. \
Children walked to school along the sea wall, counting the ships on the horizon and guessing where \
each one was bound. The schoolteacher, a patient woman with a loud laugh, had taught most of their \
parents as well, and she liked to remind them of it whenever they misbehaved. In the afternoons the \
old men played cards outside the café, complaining about the price of diesel and the noise of the \
tourists who arrived every summer with cameras and expensive shoes. Nobody could remember when the \
lighthouse had last been repaired, but everyone agreed that it still worked, more or less, which \
was good enough for a town that had never asked for very much.";

#[test]
fn decoder_agrees_with_candle_over_real_text() {
    let path = smollm2();
    let file = GgufFile::open(&path).unwrap();
    let tokens: Vec<u32> = tokenizer::from_gguf(&file)
        .unwrap()
        .encode(TEXT, false)
        .unwrap()
        .get_ids()
        .to_vec();
    assert!(tokens.len() >= 200, "{} tokens", tokens.len());

    let started = Instant::now();
    let model = llama::build_from_gguf(&file, support::scoring()).unwrap();
    eprintln!(
        "built the graph in {:?}: {:.1} MB",
        started.elapsed(),
        model.len() as f64 / 1e6
    );
    let started = Instant::now();
    let ours = Decoder::new(&model, 30, 3, 64, 49_152).feed(&tokens);
    eprintln!(
        "onnxruntime prefill of {} tokens: {:?}",
        tokens.len(),
        started.elapsed()
    );
    let started = Instant::now();
    let reference = candle_logits(&std::fs::read(&path).unwrap(), &tokens);
    eprintln!("candle, token by token: {:?}", started.elapsed());

    let (worst, agreement) = compare(&ours, &reference);
    let scale = reference.iter().flatten().fold(0f32, |m, v| m.max(v.abs()));
    eprintln!(
        "teacher-forced over {} positions: top-1 agreement {:.1} %, max |Δlogit| {worst:.4} (logits up to {scale:.1})",
        tokens.len(),
        agreement * 100.0
    );
    assert!(agreement >= 0.98, "top-1 agreement {agreement}");
    assert!(
        worst < support::tolerance(scale) * 10.0,
        "max |Δlogit| {worst}"
    );

    // The default graph quantizes activations to int8: close to the reference, not equal
    // (95.6 % measured here with our kernel, 92 % with MatMulNBits; its perplexity is
    // within llama.cpp's, see the README).
    let default = llama::build_from_gguf(
        &file,
        llama::BuildOptions {
            all_logits: true,
            ..llama::BuildOptions::default()
        },
    )
    .unwrap();
    let fast = Decoder::new(&default, 30, 3, 64, 49_152).feed(&tokens);
    let (_, agreement) = compare(&fast, &reference);
    eprintln!(
        "the default graph (accuracy level 4): top-1 agreement {:.1} %",
        agreement * 100.0
    );
    assert!(agreement >= 0.92, "top-1 agreement {agreement}");
}

#[test]
fn greedy_chat_is_fluent_and_stops_at_im_end() {
    let file = GgufFile::open(&smollm2()).unwrap();
    let tokenizer = tokenizer::from_gguf(&file).unwrap();
    let template = ChatTemplate::new(
        file.get_str("tokenizer.chat_template").unwrap(),
        "<|im_start|>",
        "<|im_end|>",
    )
    .unwrap();
    // The exact graph: the default one's int8 activations flip this first token, a near
    // tie, to "L'" and the answer runs off into French, as llama.cpp's does on this file
    // (its perplexity is measured instead, see the README).
    let model = llama::build_from_gguf(&file, support::scoring()).unwrap();
    let im_end = tokenizer.token_to_id("<|im_end|>").unwrap();
    for question in [
        "What is the capital of France?",
        "What colour is the sky on a clear day?",
        "Say hello to my friend Anna.",
    ] {
        let prompt = template
            .render(&[ChatMessage::new("user", question)], true)
            .unwrap();
        let mut decoder = Decoder::new(&model, 30, 3, 64, 49_152);
        let prompt_ids = tokenizer
            .encode(prompt.as_str(), false)
            .unwrap()
            .get_ids()
            .to_vec();
        let mut next = argmax(decoder.feed(&prompt_ids).last().unwrap()) as u32;
        let mut answer = Vec::new();
        while next != im_end && answer.len() < 100 {
            answer.push(next);
            next = argmax(&decoder.feed(&[next])[0]) as u32;
        }
        let text = tokenizer.decode(&answer, false).unwrap();
        eprintln!("{question} → {text:?}");
        assert_eq!(next, im_end, "the answer ends with <|im_end|>: {text:?}");
        assert!(
            text.split_whitespace().count() >= 3,
            "a real answer: {text:?}"
        );
        if question.contains("France") {
            assert!(text.contains("Paris"), "{text:?}");
        }
    }
}
