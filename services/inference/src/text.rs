//! Text in and out of a model: rendering chat messages with the model's template,
//! tokenizing, and turning generated tokens back into text as they come (whole UTF-8
//! characters only, stop strings held back until they can be ruled out).

use std::{collections::HashSet, path::Path};

use slough_modelkit::{
    chat::{ChatMessage as TemplateMessage, ChatTemplate},
    package::Manifest,
};
use slough_protocol::{
    ErrorBody, ErrorCode,
    inference::{ChatMessage, PromptInput},
};
use tokenizers::{DecoderWrapper, Tokenizer};

/// A model's tokenizer, chat template and stop tokens.
pub struct TextModel {
    tokenizer: Tokenizer,
    template: Option<ChatTemplate>,
    stop_ids: HashSet<u32>,
    /// GPT-2 byte-level alphabet, char → byte, when the vocabulary uses it.
    byte_level: Option<std::collections::HashMap<char, u8>>,
}

impl std::fmt::Debug for TextModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextModel")
            .field("stop_ids", &self.stop_ids)
            .finish_non_exhaustive()
    }
}

impl TextModel {
    /// Reads `tokenizer.json` from the package and compiles its chat template.
    pub fn load(dir: &Path, manifest: &Manifest) -> Result<TextModel, String> {
        let tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|err| format!("cannot read tokenizer.json: {err}"))?;
        let template = manifest
            .chat_template
            .as_deref()
            .map(|source| {
                let token = |t: &Option<String>| t.clone().unwrap_or_default();
                ChatTemplate::new(
                    source,
                    &token(&manifest.special_tokens.bos),
                    &token(&manifest.special_tokens.eos),
                )
            })
            .transpose()
            .map_err(|err| err.to_string())?;
        let stop_ids = manifest
            .stop_tokens
            .iter()
            .filter_map(|token| tokenizer.token_to_id(token))
            .collect();
        let byte_level = tokenizer
            .get_decoder()
            .is_some_and(|d| matches!(d, DecoderWrapper::ByteLevel(_)))
            .then(byte_level_alphabet);
        Ok(TextModel {
            tokenizer,
            template,
            stop_ids,
            byte_level,
        })
    }

    /// The text the model reads: messages through the chat template (ending where the
    /// assistant's answer begins), or a raw prompt as it is.
    pub fn render(&self, input: &PromptInput) -> Result<String, ErrorBody> {
        match input {
            PromptInput::Text(text) => Ok(text.clone()),
            PromptInput::Tokens(ids) => {
                self.check_ids(ids, "input.tokens")?;
                Ok(self.tokenizer.decode(ids, false).unwrap_or_default())
            }
            PromptInput::Messages(messages) => {
                if messages.is_empty() {
                    return Err(ErrorBody::new(
                        ErrorCode::InvalidRequest,
                        "input.messages is empty",
                    ));
                }
                let Some(template) = &self.template else {
                    return Err(ErrorBody::new(
                        ErrorCode::InvalidRequest,
                        "this model has no chat template; send a text prompt",
                    ));
                };
                let messages: Vec<TemplateMessage> = messages
                    .iter()
                    .map(|ChatMessage { role, content }| TemplateMessage::new(role, content))
                    .collect();
                template
                    .render(&messages, true)
                    .map_err(|err| ErrorBody::new(ErrorCode::InvalidRequest, err.to_string()))
            }
        }
    }

    /// Token ids of a prompt. A rendered chat prompt already holds its special tokens;
    /// a raw prompt gets the tokenizer's own (e.g. a BOS) added.
    pub fn encode(&self, input: &PromptInput, prompt: &str) -> Result<Vec<u32>, ErrorBody> {
        if let PromptInput::Tokens(ids) = input {
            self.check_ids(ids, "input.tokens")?;
            return Ok(ids.clone());
        }
        let add_special = matches!(input, PromptInput::Text(_));
        self.tokenizer
            .encode_fast(prompt, add_special)
            .map(|encoding| encoding.get_ids().to_vec())
            .map_err(|err| ErrorBody::new(ErrorCode::InvalidRequest, err.to_string()))
    }

    /// Refuses ids outside the vocabulary, naming the first one under `field`.
    pub fn check_ids(&self, ids: &[u32], field: &str) -> Result<(), ErrorBody> {
        let vocab = self.vocab_size();
        match ids
            .iter()
            .enumerate()
            .find(|&(_, &id)| id as usize >= vocab)
        {
            Some((i, id)) => Err(ErrorBody::new(
                ErrorCode::InvalidRequest,
                format!("{field}[{i}] = {id} is not in the vocabulary of {vocab} tokens"),
            )),
            None => Ok(()),
        }
    }

    /// The text of `ids`, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> String {
        self.tokenizer.decode(ids, true).unwrap_or_default()
    }

    /// Whether `id` ends a generation.
    pub fn is_stop(&self, id: u32) -> bool {
        self.stop_ids.contains(&id)
    }

    /// The tokenizer itself.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The vocabulary's size (ids at or above it are invalid).
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// A token's text and raw bytes, as logprobs report it.
    pub fn token_piece(&self, id: u32) -> (String, Vec<u8>) {
        let Some(raw) = self.tokenizer.id_to_token(id) else {
            return (String::new(), Vec::new());
        };
        let bytes = match &self.byte_level {
            Some(alphabet) => raw
                .chars()
                .map(|c| alphabet.get(&c).copied())
                .collect::<Option<Vec<u8>>>()
                .unwrap_or_else(|| raw.as_bytes().to_vec()),
            None => raw.as_bytes().to_vec(),
        };
        (String::from_utf8_lossy(&bytes).into_owned(), bytes)
    }
}

/// GPT-2's byte-level alphabet: printable bytes stand for themselves, the others are
/// shifted to code points from 256 on.
fn byte_level_alphabet() -> std::collections::HashMap<char, u8> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut next = 256u32;
    (0..=255u8)
        .map(|b| {
            if printable(b) {
                (char::from(b), b)
            } else {
                let c = char::from_u32(next).unwrap_or('\u{FFFD}');
                next += 1;
                (c, b)
            }
        })
        .collect()
}

/// Turns tokens into text as they are generated: a token that ends inside a UTF-8
/// character yields nothing until the character is complete.
#[derive(Debug, Default)]
pub struct Detokenizer {
    ids: Vec<u32>,
    /// Where the text already emitted starts being decoded from (a little context keeps
    /// word-boundary spaces right).
    prefix: usize,
    /// Tokens up to here have been emitted.
    read: usize,
}

impl Detokenizer {
    /// Adds a token; returns the new text, if any is complete.
    pub fn push(&mut self, model: &TextModel, id: u32) -> String {
        self.ids.push(id);
        let before = model.decode(&self.ids[self.prefix..self.read]);
        let now = model.decode(&self.ids[self.prefix..]);
        if now.len() <= before.len() || now.ends_with('\u{FFFD}') {
            return String::new();
        }
        let Some(delta) = now.get(before.len()..) else {
            return String::new();
        };
        self.prefix = self.read;
        self.read = self.ids.len();
        delta.to_owned()
    }
}

/// Holds text back while it could be the start of a stop string; cuts it at the first
/// stop string found.
#[derive(Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> StopMatcher {
        StopMatcher {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            pending: String::new(),
        }
    }

    /// Adds text; returns what can be emitted and whether a stop string was reached
    /// (the stop string and anything after it are dropped).
    pub fn push(&mut self, text: &str) -> (String, bool) {
        self.pending.push_str(text);
        let first_stop = self
            .stops
            .iter()
            .filter_map(|stop| self.pending.find(stop.as_str()))
            .min();
        if let Some(at) = first_stop {
            let emitted = self.pending[..at].to_owned();
            self.pending.clear();
            return (emitted, true);
        }
        // Keep the longest tail that begins some stop string.
        let hold = self
            .stops
            .iter()
            .flat_map(|stop| {
                (1..stop.len())
                    .filter(|&n| stop.is_char_boundary(n))
                    .filter(|&n| self.pending.ends_with(&stop[..n]))
                    .max()
            })
            .max()
            .unwrap_or(0);
        let cut = self.pending.len() - hold;
        let emitted = self.pending[..cut].to_owned();
        self.pending.drain(..cut);
        (emitted, false)
    }

    /// What is still held back, once the generation has ended without a stop string.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_strings_are_found_across_pieces_and_never_emitted() {
        let mut matcher = StopMatcher::new(vec!["\n\nUser:".to_owned(), "END".to_owned()]);
        assert_eq!(matcher.push("Hello"), ("Hello".to_owned(), false));
        assert_eq!(matcher.push(" there\n"), (" there".to_owned(), false));
        assert_eq!(matcher.push("\nUs"), (String::new(), false));
        assert_eq!(matcher.push("er: hi"), (String::new(), true));

        let mut matcher = StopMatcher::new(vec!["END".to_owned()]);
        assert_eq!(matcher.push("the EN"), ("the ".to_owned(), false));
        assert_eq!(matcher.push("D? no, ENT"), (String::new(), true));
        let mut matcher = StopMatcher::new(vec!["END".to_owned()]);
        assert_eq!(matcher.push("ENTER"), ("ENTER".to_owned(), false));
        assert_eq!(matcher.push(" E"), (" ".to_owned(), false));
        assert_eq!(matcher.flush(), "E");
    }

    #[test]
    fn the_byte_level_alphabet_covers_every_byte_once() {
        let alphabet = byte_level_alphabet();
        assert_eq!(alphabet.len(), 256);
        assert_eq!(alphabet.get(&'Ġ'), Some(&b' '));
        assert_eq!(alphabet.get(&'a'), Some(&b'a'));
    }
}
