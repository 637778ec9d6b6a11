//! Text in and out of a model: rendering chat messages with the model's template,
//! tokenizing, and turning generated tokens back into text as they come (whole UTF-8
//! characters only, stop strings held back until they can be ruled out).

use std::{collections::HashSet, path::Path};

use slough_modelkit::{
    chat::{ChatMessage as TemplateMessage, ChatTemplate},
    package::Manifest,
};
use slough_protocol::{ErrorBody, ErrorCode, inference::PromptInput};
use tokenizers::{DecoderWrapper, Tokenizer};

/// A model's tokenizer, chat template and stop tokens.
pub struct TextModel {
    tokenizer: Tokenizer,
    /// The same tokenizer reading special tokens' spellings as plain text, for the text
    /// of messages.
    plain_tokenizer: Tokenizer,
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
        Ok(TextModel::new(tokenizer, template, &manifest.stop_tokens))
    }

    /// A model's text side from its tokenizer, its compiled chat template, and the
    /// spellings of the tokens that end a generation.
    pub fn new(
        tokenizer: Tokenizer,
        template: Option<ChatTemplate>,
        stop_tokens: &[String],
    ) -> TextModel {
        let stop_ids = stop_tokens
            .iter()
            .filter_map(|token| tokenizer.token_to_id(token))
            .collect();
        let byte_level = tokenizer
            .get_decoder()
            .is_some_and(|d| matches!(d, DecoderWrapper::ByteLevel(_)))
            .then(byte_level_alphabet);
        let mut plain_tokenizer = tokenizer.clone();
        plain_tokenizer.set_encode_special_tokens(true);
        TextModel {
            tokenizer,
            plain_tokenizer,
            template,
            stop_ids,
            byte_level,
        }
    }

    /// The text the model reads and its token ids: messages through the chat template
    /// (ending where the assistant's answer begins), a raw prompt as it is (with the
    /// tokenizer's own special tokens added, e.g. a BOS), or token ids as they are.
    ///
    /// The text of a message is always tokenized as text: `<|im_end|>` typed by a user is
    /// the characters, never the end-of-turn token, so no one can close their turn and
    /// forge another. Only the template's own markers are special tokens.
    pub fn prompt(&self, input: &PromptInput) -> Result<Prompt, ErrorBody> {
        let invalid = |message: String| ErrorBody::new(ErrorCode::InvalidRequest, message);
        match input {
            PromptInput::Text(text) => {
                let encoding = self
                    .tokenizer
                    .encode_fast(text.as_str(), true)
                    .map_err(|err| invalid(err.to_string()))?;
                Ok(Prompt {
                    text: text.clone(),
                    tokens: encoding.get_ids().to_vec(),
                })
            }
            PromptInput::Tokens(ids) => {
                self.check_ids(ids, "input.tokens")?;
                Ok(Prompt {
                    text: self.tokenizer.decode(ids, false).unwrap_or_default(),
                    tokens: ids.clone(),
                })
            }
            PromptInput::Messages(messages) => {
                if messages.is_empty() {
                    return Err(ErrorBody::invalid(
                        "input.messages",
                        "input.messages is empty",
                    ));
                }
                let Some(template) = &self.template else {
                    return Err(invalid(
                        "this model has no chat template; send a text prompt".to_owned(),
                    ));
                };
                // Render with a placeholder for each message's text, so the template's
                // own text and the messages' texts can be told apart afterwards.
                let placeholders: Vec<TemplateMessage> = messages
                    .iter()
                    .enumerate()
                    .map(|(i, message)| {
                        TemplateMessage::new(message.role.as_str(), &placeholder(i))
                    })
                    .collect();
                let skeleton = template
                    .render(&placeholders, true)
                    .map_err(|err| invalid(err.to_string()))?;
                let mut prompt = Prompt::default();
                for piece in pieces(&skeleton, messages.len()) {
                    match piece {
                        Piece::Template(text) => self.push_encoded(&mut prompt, text, false)?,
                        Piece::Message { index, lead } => {
                            let text = format!("{lead}{}", messages[index].content);
                            self.push_encoded(&mut prompt, &text, true)?;
                        }
                    }
                }
                Ok(prompt)
            }
        }
    }

    /// Appends `text` and its tokens to `prompt`; `as_text` encodes special tokens'
    /// spellings as plain text.
    fn push_encoded(
        &self,
        prompt: &mut Prompt,
        text: &str,
        as_text: bool,
    ) -> Result<(), ErrorBody> {
        if text.is_empty() {
            return Ok(());
        }
        let tokenizer = if as_text {
            &self.plain_tokenizer
        } else {
            &self.tokenizer
        };
        let encoding = tokenizer
            .encode_fast(text, false)
            .map_err(|err| ErrorBody::new(ErrorCode::InvalidRequest, err.to_string()))?;
        prompt.text.push_str(text);
        prompt.tokens.extend_from_slice(encoding.get_ids());
        Ok(())
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
/// A rendered prompt: the text the model reads and its token ids.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Prompt {
    pub text: String,
    pub tokens: Vec<u32>,
}

/// Characters around a message's index in the placeholder the template renders in the
/// message's place (Unicode private use: no template writes them).
const PLACEHOLDER_OPEN: char = '\u{E000}';
const PLACEHOLDER_CLOSE: char = '\u{E001}';

fn placeholder(index: usize) -> String {
    format!("{PLACEHOLDER_OPEN}{index}{PLACEHOLDER_CLOSE}")
}

/// A part of a rendered prompt: the template's own text, or message `index`'s text
/// after `lead`, the spaces that ended the template's text before it (so that
/// `[INST] ` + `Hi` splits into words as `[INST] Hi` would).
#[derive(Debug, PartialEq, Eq)]
enum Piece<'a> {
    Template(&'a str),
    Message { index: usize, lead: &'a str },
}

/// Splits a prompt rendered with placeholders into the template's text and the places
/// of the messages (a template may leave a message out or use it twice).
fn pieces(skeleton: &str, messages: usize) -> Vec<Piece<'_>> {
    let mut pieces = Vec::new();
    let mut rest = skeleton;
    let mut scanned = 0;
    while let Some(open) = rest[scanned..]
        .find(PLACEHOLDER_OPEN)
        .map(|at| at + scanned)
    {
        let after = open + PLACEHOLDER_OPEN.len_utf8();
        let found = rest[after..].find(PLACEHOLDER_CLOSE).and_then(|close| {
            let index: usize = rest[after..after + close].parse().ok()?;
            (index < messages).then_some((index, after + close + PLACEHOLDER_CLOSE.len_utf8()))
        });
        let Some((index, end)) = found else {
            scanned = after;
            continue;
        };
        let template = rest[..open].trim_end_matches(' ');
        pieces.push(Piece::Template(template));
        pieces.push(Piece::Message {
            index,
            lead: &rest[template.len()..open],
        });
        rest = &rest[end..];
        scanned = 0;
    }
    pieces.push(Piece::Template(rest));
    pieces
}

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
    fn a_rendered_prompt_splits_into_template_and_messages() {
        let skeleton = format!(
            "<s>[INST] {} [/INST]{}\u{E000}9\u{E001}{}",
            placeholder(0),
            placeholder(1),
            placeholder(0)
        );
        assert_eq!(
            pieces(&skeleton, 2),
            [
                Piece::Template("<s>[INST]"),
                Piece::Message {
                    index: 0,
                    lead: " "
                },
                Piece::Template(" [/INST]"),
                Piece::Message { index: 1, lead: "" },
                // An index beyond the messages is not a placeholder: kept as text.
                Piece::Template("\u{E000}9\u{E001}"),
                Piece::Message { index: 0, lead: "" },
                Piece::Template(""),
            ]
        );
        assert_eq!(pieces("no messages", 0), [Piece::Template("no messages")]);
    }

    #[test]
    fn the_byte_level_alphabet_covers_every_byte_once() {
        let alphabet = byte_level_alphabet();
        assert_eq!(alphabet.len(), 256);
        assert_eq!(alphabet.get(&'Ġ'), Some(&b' '));
        assert_eq!(alphabet.get(&'a'), Some(&b'a'));
    }
}
