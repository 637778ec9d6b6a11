//! Fine-tuning files: JSONL in OpenAI's chat format (`{"messages": [...]}` per line),
//! checked line by line, rendered with the base model's chat template and tokenized
//! with the positions that carry loss: the assistant's turns (their text and the
//! template's end-of-turn marker), never the prompt. Then shuffled, padded batches.

use rand::seq::SliceRandom as _;
use rand_chacha::{ChaCha8Rng, rand_core::SeedableRng as _};
use serde::Deserialize;
use slough_modelkit::chat::{ChatMessage, ChatTemplate};

use super::model::Batch;

/// One tokenized example.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub tokens: Vec<u32>,
    /// `trained[i]`: token `i` is a target (predicted from the tokens before it).
    pub trained: Vec<bool>,
}

impl Example {
    /// Tokens that carry loss.
    pub fn trained_tokens(&self) -> usize {
        self.trained.iter().filter(|&&t| t).count()
    }
}

/// A problem with one line of a file (1-based), or with the file as a whole (`line` 0).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", if *line > 0 { format!("line {line}: ") } else { String::new() })]
pub struct FileError {
    pub line: usize,
    pub message: String,
}

pub fn at(line: usize, message: impl Into<String>) -> FileError {
    FileError {
        line,
        message: message.into(),
    }
}

#[derive(Deserialize)]
struct Line {
    messages: Vec<Message>,
}

#[derive(Deserialize)]
struct Message {
    role: String,
    content: Option<String>,
    /// OpenAI's per-message switch: an assistant message with weight 0 is not trained.
    #[serde(default)]
    weight: Option<u8>,
}

/// What rendering needs from the base model.
pub struct Renderer<'a> {
    pub template: &'a ChatTemplate,
    pub tokenizer: &'a tokenizers::Tokenizer,
    /// The base model's context: no example may be longer.
    pub context_length: usize,
}

/// Parses and tokenizes every line of `text`; the first problem found is returned, naming
/// its line.
pub fn parse_file(text: &str, renderer: &Renderer<'_>) -> Result<Vec<Example>, FileError> {
    let mut examples = Vec::new();
    for_each_example(text, renderer, |_, example| {
        examples.push(example);
        Ok(())
    })?;
    Ok(examples)
}

/// Parses and tokenizes `text` line by line, handing each example to `each` with its
/// line number and keeping none of them, so that checking a large file takes the memory
/// of one line; the first problem found (or returned by `each`) ends it.
pub fn for_each_example(
    text: &str,
    renderer: &Renderer<'_>,
    mut each: impl FnMut(usize, Example) -> Result<(), FileError>,
) -> Result<(), FileError> {
    let mut any = false;
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        if line.trim().is_empty() {
            continue;
        }
        each(number, parse_line(line, number, renderer)?)?;
        any = true;
    }
    if !any {
        return Err(at(0, "the file holds no examples"));
    }
    Ok(())
}

fn parse_line(line: &str, number: usize, renderer: &Renderer<'_>) -> Result<Example, FileError> {
    let parsed: Line = serde_json::from_str(line).map_err(|err| {
        at(
            number,
            format!("not a JSON object with a `messages` array: {err}"),
        )
    })?;
    if parsed.messages.is_empty() {
        return Err(at(number, "`messages` is empty"));
    }
    let mut messages = Vec::with_capacity(parsed.messages.len());
    let mut trained_turns = Vec::new();
    for (i, message) in parsed.messages.iter().enumerate() {
        let role = match message.role.as_str() {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            other => {
                return Err(at(
                    number,
                    format!(
                        "messages[{i}].role `{other}` is not one of system, developer, user, assistant"
                    ),
                ));
            }
        };
        let Some(content) = &message.content else {
            return Err(at(number, format!("messages[{i}].content is missing")));
        };
        match message.weight {
            None | Some(0) | Some(1) => {}
            Some(w) => {
                return Err(at(
                    number,
                    format!("messages[{i}].weight is {w}; it must be 0 or 1"),
                ));
            }
        }
        if role == "assistant" && message.weight != Some(0) {
            trained_turns.push(i);
        }
        messages.push(ChatMessage::new(role, content));
    }
    if trained_turns.is_empty() {
        return Err(at(
            number,
            "no assistant message to learn from (each example needs at least one, with weight 1 or no weight)",
        ));
    }
    let render = |upto: usize, generation: bool| {
        renderer
            .template
            .render(&messages[..upto], generation)
            .map_err(|err| at(number, err.to_string()))
    };
    let text = render(messages.len(), false)?;
    let mut spans = Vec::with_capacity(trained_turns.len());
    for &i in &trained_turns {
        let before = render(i, true)?;
        let through = render(i + 1, false)?;
        if !through.starts_with(&before) || !text.starts_with(&through) {
            return Err(at(
                number,
                "the chat template does not render this conversation as a sequence of turns",
            ));
        }
        spans.push(before.len()..through.len());
    }
    let encoding = renderer
        .tokenizer
        .encode(text.as_str(), false)
        .map_err(|err| at(number, format!("cannot tokenize: {err}")))?;
    let tokens = encoding.get_ids().to_vec();
    if tokens.len() > renderer.context_length {
        return Err(at(
            number,
            format!(
                "the example is {} tokens long, over the model's context of {}",
                tokens.len(),
                renderer.context_length
            ),
        ));
    }
    let trained: Vec<bool> = encoding
        .get_offsets()
        .iter()
        .enumerate()
        .map(|(i, &(start, _))| i > 0 && spans.iter().any(|span| span.contains(&start)))
        .collect();
    Ok(Example { tokens, trained })
}

/// The order of the examples in epoch `epoch`: a shuffle seeded by the job's seed and
/// the epoch, so that a resumed job sees the same order.
pub fn epoch_order(count: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..count).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    order.shuffle(&mut rng);
    order
}

/// `examples` in order, cut into groups whose padded size (rows × longest row) stays
/// within `budget` tokens; an example longer than the budget is a group of its own.
pub fn micro_batches<'a>(examples: &[&'a Example], budget: usize) -> Vec<Vec<&'a Example>> {
    let mut groups: Vec<Vec<&Example>> = Vec::new();
    let mut longest = 0;
    for &example in examples {
        let len = example.tokens.len();
        match groups.last_mut() {
            Some(group) if (group.len() + 1) * longest.max(len) <= budget => {
                group.push(example);
                longest = longest.max(len);
            }
            _ => {
                groups.push(vec![example]);
                longest = len;
            }
        }
    }
    groups
}

/// A right-padded batch of `examples` (padding with token 0, masked out).
pub fn batch(examples: &[&Example]) -> Batch {
    let rows = examples.len();
    let len = examples.iter().map(|e| e.tokens.len()).max().unwrap_or(0);
    let mut ids = vec![0u32; rows * len];
    let mut lengths = Vec::with_capacity(rows);
    let mut positions = Vec::new();
    let mut targets = Vec::new();
    for (row, example) in examples.iter().enumerate() {
        ids[row * len..row * len + example.tokens.len()].copy_from_slice(&example.tokens);
        lengths.push(example.tokens.len());
        for (i, (&token, &trained)) in example.tokens.iter().zip(&example.trained).enumerate() {
            if trained && i > 0 {
                positions.push((row * len + i - 1) as u32);
                targets.push(token);
            }
        }
    }
    Batch {
        ids,
        rows,
        len,
        lengths,
        positions,
        targets,
    }
}
