//! Answering generations as server-sent events: a route's [`ChunkFormat`] writes each
//! event, [`sse`] streams them (the route's chunks, its closing ones, the usage chunk
//! when asked for, `data: [DONE]`), and [`event_data`] encodes one.

use actix_web::{HttpResponse, web::Bytes};
use futures::{StreamExt as _, stream};
use serde::Serialize;
use slough_protocol::inference::{FinishReason, GenerateChunk};

use super::open::{Event, Events};
use crate::{
    error::{ApiError, ErrorResponse},
    openai::TokenUsage,
    usage::Metered,
};

/// How a route writes its stream chunks.
pub trait ChunkFormat: 'static {
    /// Chunks sent before any text (chat: each choice's role).
    fn opening(&self) -> Vec<Bytes> {
        Vec::new()
    }
    /// New text of one choice.
    fn chunk(&mut self, chunk: GenerateChunk) -> Bytes;
    /// A choice ended.
    fn finished(&mut self, index: u32, reason: FinishReason) -> Bytes;
    /// The usage chunk (`stream_options.include_usage`).
    fn usage(&self, usage: TokenUsage) -> Bytes;
    /// Chunks sent after every choice finished and before the usage chunk (chat: each
    /// choice's persona adherence).
    fn closing(&mut self) -> impl std::future::Future<Output = Vec<Bytes>> {
        std::future::ready(Vec::new())
    }
}

/// One server-sent event carrying `value` as JSON.
pub fn event_data<T: Serialize>(value: &T) -> Bytes {
    let mut data = b"data: ".to_vec();
    // Our response types always serialize.
    let _ = serde_json::to_writer(&mut data, value);
    data.extend_from_slice(b"\n\n");
    Bytes::from(data)
}

/// Streams `events` as server-sent events: the route's chunks, the usage chunk when
/// asked for, then `data: [DONE]`. A failure midway is sent as an `error` event and
/// ends the stream. When the client goes away the body is dropped, which drops the
/// upstream receivers, which cancels the generations.
pub fn sse<F: ChunkFormat>(
    events: Events,
    format: F,
    include_usage: bool,
    mut metered: Metered,
) -> HttpResponse {
    metered.streaming();
    struct State<F> {
        events: Events,
        format: F,
        include_usage: bool,
        metered: Metered,
        done: bool,
    }
    let opening = stream::iter(format.opening().into_iter().map(Ok::<_, actix_web::Error>));
    let state = State {
        events,
        format,
        include_usage,
        metered,
        done: false,
    };
    let body = stream::unfold(state, |mut state| async move {
        if state.done {
            return None;
        }
        loop {
            match state.events.next().await {
                Some(Ok(Event::Chunk(chunk))) => {
                    state.metered.chunk(chunk.prompt_tokens);
                    return Some((Ok(state.format.chunk(chunk)), state));
                }
                Some(Ok(Event::Finished { index, reason })) => {
                    return Some((Ok(state.format.finished(index, reason)), state));
                }
                Some(Ok(Event::Usage(more))) => state.metered.add(more),
                Some(Err(err)) => {
                    let err = ApiError::from_bus(&err);
                    state.done = true;
                    state.metered.finish(err.status().as_u16());
                    let error = ErrorResponse {
                        error: err.object().clone(),
                    };
                    return Some((Ok(event_data(&error)), state));
                }
                None => {
                    state.done = true;
                    state.metered.finish(200);
                    let mut tail = Vec::new();
                    for chunk in state.format.closing().await {
                        tail.extend_from_slice(&chunk);
                    }
                    if state.include_usage {
                        tail.extend_from_slice(&state.format.usage(state.metered.usage().into()));
                    }
                    tail.extend_from_slice(b"data: [DONE]\n\n");
                    return Some((Ok(Bytes::from(tail)), state));
                }
            }
        }
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(opening.chain(body))
}
