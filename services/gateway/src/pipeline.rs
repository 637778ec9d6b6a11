//! The chat pipeline: what happens to a chat turn between the route and the answer, in
//! the order of ARCHITECTURE's data flow, each step a typed call on the bus. There is no
//! HTTP in here: the route authenticates, parses and validates, admits, runs the
//! pipeline, and shapes OpenAI's answer from what it returns.
//!
//! The steps, in order:
//! 1. compose the persona (personality's `compose`) when the turn names one: the
//!    persona's system prompt merged into the messages, its default sampling under the
//!    request's own parameters;
//! 2. retrieve (rag's `search`) when the turn names a collection: the best chunks for
//!    the last user message, numbered, in a system message just before it, as many as
//!    fit the model's context with room for the answer (the lowest-ranked go first);
//! 3. generate: open the generation on the inference replica with the most room.
//!
//! After the answer, streamed or collected alike, [`ChatPipeline::after_answer`] keeps
//! the completion when the turn asked for it and scores each choice against the turn's
//! persona.
//!
//! A step fails with a [`PipelineError`] naming the step; the route turns it into the
//! HTTP answer (`error.rs`, the one place). A new step is a field of [`ChatTurn`] saying
//! what it needs, and one call in [`ChatPipeline::run`] before generation.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use slough_bus::{Bus, BusError};
use slough_protocol::{
    inference::{self, ChatMessage, GenerateRequest, PromptInput, Role, TokenizeRequest},
    personality::{self, Adherence, AdherenceRequest, ComposeRequest},
    rag::{self, SearchHit, SearchMode, SearchRequest},
};
use slough_store::Store;
use utoipa::ToSchema;

use crate::{
    generation::open::{Generation, open_all},
    replicas::Replicas,
};

/// Why a chat turn could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The turn asks for something its input does not allow; `param` names the field.
    #[error("{message}")]
    Invalid {
        param: &'static str,
        message: String,
    },
    /// A step's call on the bus failed.
    #[error("{step}: {source}")]
    Step { step: Step, source: BusError },
}

/// The steps of a turn, as errors name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Compose,
    Retrieve,
    CountTokens,
    Generate,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Step::Compose => "composing the persona",
            Step::Retrieve => "retrieving from the collection",
            Step::CountTokens => "counting the prompt's tokens",
            Step::Generate => "opening the generation",
        })
    }
}

impl PipelineError {
    fn invalid(param: &'static str, message: impl Into<String>) -> PipelineError {
        PipelineError::Invalid {
            param,
            message: message.into(),
        }
    }

    fn at(step: Step) -> impl FnOnce(BusError) -> PipelineError {
        move |source| PipelineError::Step { step, source }
    }
}

/// One chat turn as the route hands it over: the conversation and its generation
/// settings, already validated, and the persona to apply, if any.
#[derive(Debug, Clone)]
pub struct ChatTurn {
    pub generation: GenerateRequest,
    pub persona: Option<String>,
    pub retrieval: Option<Retrieval>,
    /// Whose collections retrieval reaches: the key's id, or `None` for an admin.
    pub reader: Option<String>,
}

/// The chat extension `rag`: which collection to retrieve from, and how.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Retrieval {
    pub collection: String,
    /// Chunks to retrieve, 1 to 100 (default 4); fewer are used when the context is
    /// short.
    #[serde(default = "default_top_k")]
    pub top_k: u32,
    /// `dense`, `sparse` or `hybrid` (default).
    #[serde(default)]
    pub mode: SearchMode,
}

fn default_top_k() -> u32 {
    4
}

/// A source the answer was given, as numbered in the prompt.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Citation {
    /// The source's number in the prompt (`[1]`).
    pub number: u32,
    pub document_id: String,
    pub chunk_index: u32,
    /// Byte offsets of the chunk in its document.
    pub start: u64,
    pub end: u64,
    pub score: f32,
    pub text: String,
}

/// What retrieval found and used.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct Retrieved {
    /// The sources in the prompt, best first.
    pub citations: Vec<Citation>,
    /// Chunks found.
    pub found: usize,
    /// Found chunks left out so that the prompt and the answer fit the context.
    pub dropped: usize,
}

/// Tokens kept free for the answer when the request sets no `max_tokens`.
const DEFAULT_ANSWER_RESERVE: u32 = 256;

/// The system message that gives the model its sources.
fn sources_prompt(hits: &[SearchHit]) -> String {
    let mut prompt = String::from(
        "Answer with the numbered sources below, citing them like [1]. If they do not \
         hold the answer, say so.\n",
    );
    for (hit, number) in hits.iter().zip(1..) {
        prompt.push_str(&format!(
            "\n[{number}] ({}) {}\n",
            hit.document_id,
            hit.text.trim()
        ));
    }
    prompt
}

/// A completion to keep for its key (`store: true`): the conversation it answered.
#[derive(Debug, Clone)]
pub struct Keep {
    pub store: Store,
    /// The key's id, and the end user the request named.
    pub owner: String,
    pub end_user: Option<String>,
    /// The completion's id and the model as the request named it.
    pub id: String,
    pub model: String,
    /// Role and text of each message.
    pub messages: Vec<(String, String)>,
    /// Mask personal data in the messages and the answer before they are stored.
    pub mask_pii: bool,
}

/// Runs chat turns on the platform's services: over the bus, each generation on the
/// inference replica with the most room. Cheap to clone (a streamed answer keeps one
/// for the steps after it).
#[derive(Clone)]
pub struct ChatPipeline {
    bus: Bus,
    replicas: Arc<Replicas>,
}

impl ChatPipeline {
    pub fn new(bus: Bus, replicas: Arc<Replicas>) -> ChatPipeline {
        ChatPipeline { bus, replicas }
    }

    /// Runs `turn` through every step; the generation's events are what the route
    /// streams or collects, with what retrieval used.
    pub async fn run(&self, mut turn: ChatTurn) -> Result<(Generation, Retrieved), PipelineError> {
        if let Some(persona) = &turn.persona {
            self.compose(persona, &mut turn.generation).await?;
        }
        let retrieved = match &turn.retrieval {
            Some(retrieval) => {
                self.retrieve(retrieval, turn.reader, &mut turn.generation)
                    .await?
            }
            None => Retrieved::default(),
        };
        let generation = open_all(
            &self.bus,
            &self.replicas,
            std::slice::from_ref(&turn.generation),
        )
        .await
        .map_err(PipelineError::at(Step::Generate))?;
        Ok((generation, retrieved))
    }

    /// The steps after the answer, the same whether it was streamed or collected (`texts`:
    /// each choice's text): the completion kept with its first choice when the turn
    /// asked for it, and each choice scored against `persona`. The answer is already
    /// given, so a failure only leaves a step out (and is logged).
    pub async fn after_answer(
        &self,
        keep: Option<&Keep>,
        persona: Option<&str>,
        texts: &[String],
    ) -> Vec<Option<Adherence>> {
        if let Some(keep) = keep {
            let mut messages = keep.messages.clone();
            let mut answer = texts.first().cloned().unwrap_or_default();
            if keep.mask_pii {
                for (_, content) in &mut messages {
                    *content = crate::privacy::masked(content);
                }
                answer = crate::privacy::masked(&answer);
            }
            let saved = crate::stored::save(
                &keep.store,
                &keep.id,
                &keep.owner,
                keep.end_user.as_deref(),
                &keep.model,
                &messages,
                &answer,
            )
            .await;
            if let Err(err) = saved {
                tracing::warn!(completion = keep.id, "cannot store the completion: {err}");
            }
        }
        match persona {
            Some(persona) => self.adherence(persona, texts).await,
            None => Vec::new(),
        }
    }

    /// Step 1: the persona's messages and sampling replace the turn's.
    async fn compose(
        &self,
        persona: &str,
        generation: &mut GenerateRequest,
    ) -> Result<(), PipelineError> {
        let PromptInput::Messages(messages) = &generation.input else {
            return Err(PipelineError::invalid(
                "persona",
                "a persona applies to chat messages only",
            ));
        };
        let request = ComposeRequest {
            persona: persona.to_owned(),
            messages: messages.clone(),
            sampling: generation.sampling.clone(),
        };
        let composed = self
            .bus
            .call(&personality::COMPOSE, &request)
            .await
            .map_err(PipelineError::at(Step::Compose))?;
        generation.input = PromptInput::Messages(composed.messages);
        generation.sampling = composed.sampling;
        Ok(())
    }
    /// Step 2: the best chunks of the turn's collection for its last user message, put
    /// before that message as numbered sources, as many as the context holds.
    async fn retrieve(
        &self,
        retrieval: &Retrieval,
        reader: Option<String>,
        generation: &mut GenerateRequest,
    ) -> Result<Retrieved, PipelineError> {
        let PromptInput::Messages(messages) = &mut generation.input else {
            return Err(PipelineError::invalid(
                "rag",
                "retrieval applies to chat messages only",
            ));
        };
        let Some(last_user) = messages
            .iter()
            .rposition(|message| message.role == Role::User)
        else {
            return Err(PipelineError::invalid(
                "rag",
                "retrieval searches with the last user message, and there is none",
            ));
        };
        let request = SearchRequest {
            collection: retrieval.collection.clone(),
            query: messages[last_user].content.clone(),
            top_k: retrieval.top_k,
            mode: retrieval.mode,
            filter: None,
            owner: reader,
        };
        let found = self
            .bus
            .call(&rag::SEARCH, &request)
            .await
            .map_err(PipelineError::at(Step::Retrieve))?;
        let mut hits = found.hits;
        let found_count = hits.len();
        let reserve = generation.max_tokens.unwrap_or(DEFAULT_ANSWER_RESERVE);
        loop {
            let mut candidate = messages.clone();
            if !hits.is_empty() {
                candidate.insert(
                    last_user,
                    ChatMessage::new(Role::System, sources_prompt(&hits)),
                );
            }
            let counted = self
                .bus
                .call(
                    &inference::TOKENIZE,
                    &TokenizeRequest {
                        model: generation.model.clone(),
                        input: PromptInput::Messages(candidate.clone()),
                    },
                )
                .await
                .map_err(PipelineError::at(Step::CountTokens))?;
            let fits = counted.tokens.len() as u64 + u64::from(reserve)
                <= u64::from(counted.context_length);
            if fits || hits.is_empty() {
                *messages = candidate;
                break;
            }
            hits.pop();
        }
        let dropped = found_count - hits.len();
        if dropped > 0 {
            tracing::info!(
                collection = %retrieval.collection,
                "{dropped} of {found_count} retrieved sources left out to fit the context"
            );
        }
        Ok(Retrieved {
            citations: hits
                .into_iter()
                .zip(1..)
                .map(|(hit, number)| Citation {
                    number,
                    document_id: hit.document_id,
                    chunk_index: hit.chunk_index,
                    start: hit.start,
                    end: hit.end,
                    score: hit.score,
                    text: hit.text,
                })
                .collect(),
            found: found_count,
            dropped,
        })
    }
}

impl ChatPipeline {
    /// Scores each of `texts` (a turn's choices) against `persona`; a failure leaves
    /// that score out (and is logged).
    async fn adherence(&self, persona: &str, texts: &[String]) -> Vec<Option<Adherence>> {
        let calls = texts.iter().map(|text| async move {
            let request = AdherenceRequest {
                persona: persona.to_owned(),
                text: text.clone(),
            };
            match self.bus.call(&personality::ADHERENCE, &request).await {
                Ok(adherence) => Some(adherence),
                Err(err) => {
                    tracing::warn!(persona, "persona adherence not scored: {err}");
                    None
                }
            }
        });
        futures::future::join_all(calls).await
    }
}
