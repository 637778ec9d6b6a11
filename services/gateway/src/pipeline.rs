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
//! After the answer, [`adherence`] scores each choice against the turn's persona.
//!
//! A new step is a field of [`ChatTurn`] saying what it needs, and one call in
//! [`ChatPipeline::run`] before generation.

use serde::{Deserialize, Serialize};
use slough_bus::Bus;
use slough_protocol::{
    inference::{self, ChatMessage, GenerateRequest, PromptInput, Role, TokenizeRequest},
    personality::{self, Adherence, AdherenceRequest, ComposeRequest},
    rag::{self, SearchHit, SearchMode, SearchRequest},
};
use utoipa::ToSchema;

use crate::{
    AppState,
    error::ApiError,
    generation::{self, Generation},
};

/// One chat turn as the route hands it over: the conversation and its generation
/// settings, already validated, and the persona to apply, if any.
#[derive(Debug, Clone)]
pub struct ChatTurn {
    pub generation: GenerateRequest,
    pub persona: Option<String>,
    pub retrieval: Option<Retrieval>,
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

/// Runs chat turns on the platform's services.
pub struct ChatPipeline<'a> {
    state: &'a AppState,
}

impl<'a> ChatPipeline<'a> {
    pub fn new(state: &'a AppState) -> ChatPipeline<'a> {
        ChatPipeline { state }
    }

    /// Runs `turn` through every step; the generation's events are what the route
    /// streams or collects, with what retrieval used.
    pub async fn run(&self, mut turn: ChatTurn) -> Result<(Generation, Retrieved), ApiError> {
        if let Some(persona) = &turn.persona {
            self.compose(persona, &mut turn.generation).await?;
        }
        let retrieved = match &turn.retrieval {
            Some(retrieval) => self.retrieve(retrieval, &mut turn.generation).await?,
            None => Retrieved::default(),
        };
        let generation =
            generation::open_all(self.state, std::slice::from_ref(&turn.generation)).await?;
        Ok((generation, retrieved))
    }

    /// Step 1: the persona's messages and sampling replace the turn's.
    async fn compose(
        &self,
        persona: &str,
        generation: &mut GenerateRequest,
    ) -> Result<(), ApiError> {
        let PromptInput::Messages(messages) = &generation.input else {
            return Err(ApiError::invalid(
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
            .state
            .bus
            .call(&personality::COMPOSE, &request)
            .await
            .map_err(|err| ApiError::from_bus(&err))?;
        generation.input = PromptInput::Messages(composed.messages);
        generation.sampling = composed.sampling;
        Ok(())
    }
    /// Step 2: the best chunks of the turn's collection for its last user message, put
    /// before that message as numbered sources, as many as the context holds.
    async fn retrieve(
        &self,
        retrieval: &Retrieval,
        generation: &mut GenerateRequest,
    ) -> Result<Retrieved, ApiError> {
        let PromptInput::Messages(messages) = &mut generation.input else {
            return Err(ApiError::invalid(
                "rag",
                "retrieval applies to chat messages only",
            ));
        };
        let Some(last_user) = messages
            .iter()
            .rposition(|message| message.role == Role::User)
        else {
            return Err(ApiError::invalid(
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
        };
        let found = self
            .state
            .bus
            .call(&rag::SEARCH, &request)
            .await
            .map_err(|err| {
                let api = ApiError::from_bus(&err);
                match err.to_body().param {
                    Some(param) => api.with_param(format!("rag.{param}")),
                    None => api.with_param("rag.collection"),
                }
            })?;
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
                .state
                .bus
                .call(
                    &inference::TOKENIZE,
                    &TokenizeRequest {
                        model: generation.model.clone(),
                        input: PromptInput::Messages(candidate.clone()),
                    },
                )
                .await
                .map_err(|err| ApiError::from_bus(&err))?;
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

/// Scores each of `texts` (a turn's choices) against `persona`. The answer is already
/// generated, so a failure only leaves the score out (and is logged).
pub async fn adherence(bus: &Bus, persona: &str, texts: &[String]) -> Vec<Option<Adherence>> {
    let calls = texts.iter().map(|text| async move {
        let request = AdherenceRequest {
            persona: persona.to_owned(),
            text: text.clone(),
        };
        match bus.call(&personality::ADHERENCE, &request).await {
            Ok(adherence) => Some(adherence),
            Err(err) => {
                tracing::warn!(persona, "persona adherence not scored: {err}");
                None
            }
        }
    });
    futures::future::join_all(calls).await
}
