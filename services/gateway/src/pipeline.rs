//! The chat pipeline: what happens to a chat turn between the route and the answer, in
//! the order of ARCHITECTURE's data flow, each step a typed call on the bus. There is no
//! HTTP in here: the route authenticates, parses and validates, admits, runs the
//! pipeline, and shapes OpenAI's answer from what it returns.
//!
//! The steps, in order:
//! 1. compose the persona (personality's `compose`): the persona's system prompt and
//!    default sampling — arrives with the personality service;
//! 2. retrieve (rag's `search`) when the turn asks for a collection — arrives with the
//!    RAG service;
//! 3. generate: open the generation on the inference replica with the most room.
//!
//! A new step is a field of [`ChatTurn`] saying what it needs, and one call in
//! [`ChatPipeline::run`] before generation.

use slough_protocol::inference::GenerateRequest;

use crate::{
    AppState,
    error::ApiError,
    generation::{self, Generation},
};

/// One chat turn as the route hands it over: the conversation and its generation
/// settings, already validated.
#[derive(Debug, Clone)]
pub struct ChatTurn {
    pub generation: GenerateRequest,
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
    pub async fn run(&self, turn: ChatTurn) -> Result<Generation, ApiError> {
        generation::open_all(self.state, std::slice::from_ref(&turn.generation)).await
    }
}
