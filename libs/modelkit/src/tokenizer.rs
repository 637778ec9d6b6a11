//! Tokenizers for model packages. For GGUF models we build a Hugging Face `tokenizers`
//! tokenizer from the file's own vocabulary and merges (gpt2-style byte-level BPE);
//! BERT packages use the `tokenizer.json` they ship with.

use tokenizers::{
    AddedToken, SplitDelimiterBehavior, Tokenizer,
    decoders::byte_level::ByteLevel as ByteLevelDecoder,
    models::bpe::{BPE, Vocab},
    pre_tokenizers::{
        PreTokenizerWrapper, byte_level::ByteLevel, sequence::Sequence, split::Split,
    },
};

use crate::gguf::{GgufError, GgufFile};

/// Why a tokenizer could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// The GGUF file lacks or mistypes a tokenizer key.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// A tokenizer type or pre-tokenizer we do not build.
    #[error("unsupported tokenizer: {0}")]
    Unsupported(String),
    /// The vocabulary or merges are inconsistent.
    #[error("invalid tokenizer data: {0}")]
    Invalid(String),
}

/// GPT-2's split of text into words, numbers, punctuation and spaces.
const GPT2_PATTERN: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";

/// GGUF token types (`tokenizer.ggml.token_type`): normal and byte tokens are learned;
/// every other type (unknown, control, user-defined, unused) is special.
const TOKEN_TYPE_NORMAL: i64 = 1;
const TOKEN_TYPE_BYTE: i64 = 6;

/// Builds the tokenizer a GGUF file describes. Supported: `tokenizer.ggml.model = gpt2`
/// with the `smollm` (or unnamed default) pre-tokenizer.
pub fn from_gguf(file: &GgufFile) -> Result<Tokenizer, TokenizerError> {
    let model = file.get_str("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(TokenizerError::Unsupported(format!(
            "tokenizer.ggml.model = {model:?} (only \"gpt2\" byte-level BPE is built)"
        )));
    }
    let pre = match file.get("tokenizer.ggml.pre") {
        Ok(value) => value.as_str().unwrap_or("default").to_owned(),
        Err(_) => "default".to_owned(),
    };
    let split_digits = match pre.as_str() {
        "smollm" => true,
        "default" | "gpt2" => false,
        other => {
            return Err(TokenizerError::Unsupported(format!(
                "tokenizer.ggml.pre = {other:?} (supported: smollm, gpt2, default)"
            )));
        }
    };

    let tokens = file.get_str_array("tokenizer.ggml.tokens")?;
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(id, token)| ((*token).to_owned(), id as u32))
        .collect();
    if vocab.len() != tokens.len() {
        return Err(TokenizerError::Invalid(
            "tokenizer.ggml.tokens holds duplicates".to_owned(),
        ));
    }
    let merges = file
        .get_str_array("tokenizer.ggml.merges")?
        .into_iter()
        .map(|merge| {
            merge
                .split_once(' ')
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
                .ok_or_else(|| {
                    TokenizerError::Invalid(format!("merge {merge:?} is not two tokens"))
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|err| TokenizerError::Invalid(err.to_string()))?;

    let mut pre_tokenizers: Vec<PreTokenizerWrapper> = Vec::new();
    if split_digits {
        pre_tokenizers.push(split(r"\p{N}")?.into());
    }
    pre_tokenizers.push(split(GPT2_PATTERN)?.into());
    pre_tokenizers.push(ByteLevel::new(false, false, false).into());

    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer
        .with_pre_tokenizer(Some(Sequence::new(pre_tokenizers)))
        .with_decoder(Some(ByteLevelDecoder::default()));

    let types = match file.get("tokenizer.ggml.token_type") {
        Ok(value) => value
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .map(|item| item.as_i64().unwrap_or(TOKEN_TYPE_NORMAL))
                    .collect()
            })
            .unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    let special: Vec<AddedToken> = tokens
        .iter()
        .zip(types.iter())
        .filter(|(_, kind)| **kind != TOKEN_TYPE_NORMAL && **kind != TOKEN_TYPE_BYTE)
        .map(|(token, _)| AddedToken::from((*token).to_owned(), true))
        .collect();
    tokenizer
        .add_special_tokens(special)
        .map_err(|err| TokenizerError::Invalid(format!("special tokens: {err}")))?;
    Ok(tokenizer)
}

fn split(pattern: &str) -> Result<Split, TokenizerError> {
    Split::new(
        tokenizers::pre_tokenizers::split::SplitPattern::Regex(pattern.to_owned()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(|err| TokenizerError::Invalid(format!("pattern {pattern:?}: {err}")))
}
