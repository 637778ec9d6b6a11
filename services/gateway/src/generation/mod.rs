//! Generations on the inference service for the chat and completions routes: [`open`]
//! opens them and merges their streams, [`answer`] answers with them, either as
//! server-sent events ([`sse`]) or read to the end for the route to shape as one JSON
//! body.

pub mod open;
pub mod sse;

use actix_web::HttpResponse;
use futures::StreamExt as _;
use slough_protocol::inference::{FinishReason, TokenLogprob, Usage};

use self::open::Events;
pub use self::{
    open::{Event, Generation, open_all},
    sse::{ChunkFormat, event_data},
};
use crate::{error::ApiError, http::Connection, openai::StreamOptions, usage::Metered};

/// A generation route's answer.
pub enum Answer {
    /// Streamed: the response is on its way.
    Streamed(HttpResponse),
    /// Read to the end: the choices and their usage, for the route to shape.
    Collected(Vec<Choice>, Usage),
}

/// Answers with `generation`: streamed as `format` says when `stream` is given, or read
/// to the end unless the client on `connection` leaves first (which cancels it, as a
/// dropped stream does). `metered` records the request however it ends.
pub async fn answer<F: ChunkFormat>(
    generation: Generation,
    connection: Connection,
    mut metered: Metered,
    stream: Option<&StreamOptions>,
    format: F,
) -> Result<Answer, ApiError> {
    let Generation { events, choices } = generation;
    if let Some(options) = stream {
        let response = sse::sse(events, format, options.include_usage, metered);
        return Ok(Answer::Streamed(response));
    }
    tokio::select! {
        collected = collect(events, choices, &mut metered) => {
            let (choices, usage) = collected?;
            Ok(Answer::Collected(choices, usage))
        }
        // Returning drops the upstream receivers, which cancels the generations; the
        // unfinished `metered` records the request as 499 with what it received.
        () = connection.closed() => {
            tracing::info!("the client left before its answer was ready; generation cancelled");
            Err(ApiError::client_gone())
        }
    }
}

/// One choice of a finished generation.
#[derive(Debug, Default)]
pub struct Choice {
    pub text: String,
    pub logprobs: Vec<TokenLogprob>,
    pub finish_reason: Option<FinishReason>,
}

/// Reads `events` to the end: `choices` choices and the summed usage.
async fn collect(
    mut events: Events,
    choices: u32,
    metered: &mut Metered,
) -> Result<(Vec<Choice>, Usage), ApiError> {
    let mut collected: Vec<Choice> = (0..choices).map(|_| Choice::default()).collect();
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Chunk(chunk)) => {
                metered.chunk(chunk.prompt_tokens);
                if let Some(choice) = collected.get_mut(chunk.index as usize) {
                    choice.text.push_str(&chunk.text);
                    choice.logprobs.extend(chunk.logprobs);
                }
            }
            Ok(Event::Finished { index, reason }) => {
                if let Some(choice) = collected.get_mut(index as usize) {
                    choice.finish_reason = Some(reason);
                }
            }
            Ok(Event::Usage(more)) => metered.add(more),
            Err(err) => {
                let err = ApiError::from_bus(&err);
                metered.finish(err.status().as_u16());
                return Err(err);
            }
        }
    }
    metered.finish(200);
    Ok((collected, metered.usage()))
}
