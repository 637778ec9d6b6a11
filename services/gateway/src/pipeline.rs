//! The chat pipeline: what happens to a chat turn between the route and the answer, in
//! the order of ARCHITECTURE's data flow, each step a typed call on the bus. There is no
//! HTTP in here: the route authenticates, parses and validates, admits, runs the
//! pipeline, and shapes OpenAI's answer from what it returns.
//!
//! The steps, in order:
//! 1. compose the persona (personality's `compose`) when the turn names one: the
//!    persona's system prompt merged into the messages, its default sampling under the
//!    request's own parameters;
//! 2. retrieve (rag's `search`) when the turn asks for a collection — arrives with the
//!    RAG service;
//! 3. generate: open the generation on the inference replica with the most room.
//!
//! After the answer, [`adherence`] scores each choice against the turn's persona.
//!
//! A new step is a field of [`ChatTurn`] saying what it needs, and one call in
//! [`ChatPipeline::run`] before generation.

use slough_bus::Bus;
use slough_protocol::{
    inference::{GenerateRequest, PromptInput},
    personality::{self, Adherence, AdherenceRequest, ComposeRequest},
};

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
    /// streams or collects.
    pub async fn run(&self, mut turn: ChatTurn) -> Result<Generation, ApiError> {
        if let Some(persona) = &turn.persona {
            self.compose(persona, &mut turn.generation).await?;
        }
        generation::open_all(self.state, std::slice::from_ref(&turn.generation)).await
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
