//! The GGUF tokenizer on a small synthetic vocabulary: byte-level round trip, merges,
//! special tokens (the real vocabulary is checked in `smollm2.rs`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails by panicking"
)]

use proptest::prelude::*;
use slough_modelkit::{
    gguf::{GgufFile, Value, ValueType, writer::GgufWriter},
    tokenizer,
};

/// The 256 byte-level symbols, then "Ġw" (from the one merge), then a control token.
fn synthetic() -> tokenizers::Tokenizer {
    let mut alphabet: Vec<char> = tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet()
        .into_iter()
        .collect();
    alphabet.sort_unstable();
    let mut tokens: Vec<String> = alphabet.iter().map(|c| c.to_string()).collect();
    tokens.push("Ġw".to_owned());
    tokens.push("<|im_end|>".to_owned());
    let mut types = vec![Value::I32(6); 256];
    types.push(Value::I32(1));
    types.push(Value::I32(3));
    let strings = |items: Vec<String>| {
        Value::Array(
            ValueType::String,
            items.into_iter().map(Value::String).collect(),
        )
    };
    let bytes = GgufWriter::new()
        .metadata("tokenizer.ggml.model", Value::String("gpt2".into()))
        .metadata("tokenizer.ggml.pre", Value::String("smollm".into()))
        .metadata("tokenizer.ggml.tokens", strings(tokens))
        .metadata(
            "tokenizer.ggml.token_type",
            Value::Array(ValueType::I32, types),
        )
        .metadata("tokenizer.ggml.merges", strings(vec!["Ġ w".to_owned()]))
        .to_bytes();
    tokenizer::from_gguf(&GgufFile::from_bytes(bytes).unwrap()).unwrap()
}

#[test]
fn merges_and_special_tokens_apply() {
    let tokenizer = synthetic();
    let ids = tokenizer
        .encode(" w<|im_end|>", false)
        .unwrap()
        .get_ids()
        .to_vec();
    assert_eq!(
        ids,
        [256, 257],
        "\" w\" merges into one token, the control token stays whole"
    );
    assert_eq!(
        tokenizer.decode(&ids, true).unwrap(),
        " w",
        "special tokens can be skipped"
    );
    // Digits are split one by one (the smollm pre-tokenizer).
    assert_eq!(tokenizer.encode("123", false).unwrap().get_ids().len(), 3);
}

#[test]
fn unsupported_tokenizers_are_named() {
    let bytes = GgufWriter::new()
        .metadata("tokenizer.ggml.model", Value::String("llama".into()))
        .to_bytes();
    let err = tokenizer::from_gguf(&GgufFile::from_bytes(bytes).unwrap()).unwrap_err();
    assert!(err.to_string().contains("\"llama\""), "{err}");
}

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn any_text_round_trips(text in "\\PC{0,40}") {
        let tokenizer = synthetic();
        let ids = tokenizer.encode(text.as_str(), false).unwrap().get_ids().to_vec();
        prop_assert_eq!(tokenizer.decode(&ids, false).unwrap(), text);
    }
}
