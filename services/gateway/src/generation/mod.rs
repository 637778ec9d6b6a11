//! Generations on the inference service for the chat and completions routes: opening
//! the streams ([`open_all`], each on the replica with the most room), merging them into
//! one sequence of [`Event`]s, and answering ([`answer`]) either as server-sent events or
//! read to the end for the route to shape as one JSON body. What the two routes share of
//! OpenAI's request and response shapes lives here too.

use std::{pin::Pin, time::SystemTime};

use actix_web::{HttpResponse, web::Bytes};
use futures::{Stream, StreamExt as _, stream};
use serde::{Deserialize, Serialize};
use slough_bus::{Bus, BusError, StreamItem, StreamReceiver};
use slough_protocol::{
    bounds::Field,
    inference::{
        self, FinishReason, GenerateChunk, GenerateEnd, GenerateRequest, TokenLogprob, Usage,
    },
};
use utoipa::ToSchema;

use crate::{AppState, error::ApiError, http::Connection, replicas::Replicas, usage::Metered};

/// Token counts as OpenAI reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, ToSchema)]
pub struct TokenUsage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
}

impl From<Usage> for TokenUsage {
    fn from(usage: Usage) -> TokenUsage {
        TokenUsage {
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            total_tokens: usage.total_tokens,
        }
    }
}

/// Why a choice ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Finish {
    /// A stop token or one of the `stop` sequences.
    Stop,
    /// `max_tokens` or the end of the model's context.
    Length,
}

impl From<FinishReason> for Finish {
    fn from(reason: FinishReason) -> Finish {
        match reason {
            FinishReason::Stop => Finish::Stop,
            FinishReason::Length => Finish::Length,
        }
    }
}

/// The sampling fields an OpenAI request body shares with every other (`temperature`,
/// `top_p`, the penalties, `seed`, and the extensions `top_k`, `min_p`,
/// `repetition_penalty`), as the protocol's [`SamplingParams`]. A macro, because the
/// chat and completions bodies are separate structs that name these fields alike.
///
/// [`SamplingParams`]: slough_protocol::inference::SamplingParams
macro_rules! sampling_of {
    ($body:expr) => {
        slough_protocol::inference::SamplingParams {
            temperature: $body.temperature,
            top_p: $body.top_p,
            top_k: $body.top_k,
            min_p: $body.min_p,
            repetition_penalty: $body.repetition_penalty,
            presence_penalty: $body.presence_penalty,
            frequency_penalty: $body.frequency_penalty,
            seed: $body.seed.map(|seed| seed.cast_unsigned()),
        }
    };
}
pub(crate) use sampling_of;

/// `stop`: one string or a list of at most four, none empty.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

impl Stop {
    /// The stop strings as a list.
    pub fn into_list(stop: Option<Stop>) -> Vec<String> {
        match stop {
            None => Vec::new(),
            Some(Stop::One(one)) => vec![one],
            Some(Stop::Many(many)) => many,
        }
    }
}

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    /// Send one more chunk before `[DONE]`, with no choices and the request's usage.
    #[serde(default)]
    pub include_usage: bool,
}

/// `stream_options` only goes with `stream: true`.
pub fn check_stream_options(
    stream: Option<bool>,
    options: Option<&StreamOptions>,
) -> Result<(), ApiError> {
    if options.is_some() && stream != Some(true) {
        return Err(ApiError::invalid(
            "stream_options",
            "stream_options is only allowed when stream is true",
        ));
    }
    Ok(())
}

/// Checks a route's generation with the protocol's one validation, naming the field as
/// the route's request calls it (`max_tokens_param`: `max_tokens` or
/// `max_completion_tokens`).
pub fn validate(request: &GenerateRequest, max_tokens_param: &str) -> Result<(), ApiError> {
    request.validate().map_err(|invalid| {
        if invalid.field == Field::MaxTokens {
            let message = invalid.message.replacen("max_tokens", max_tokens_param, 1);
            ApiError::invalid(max_tokens_param, message)
        } else {
            ApiError::invalid(invalid.field.api_name(), invalid.message)
        }
    })
}

/// A second count since the epoch, for `created`.
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// A fresh response id, e.g. `chatcmpl-…`.
pub fn response_id(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// A generation route's answer.
pub enum Answer {
    /// Streamed: the response is on its way.
    Streamed(HttpResponse),
    /// Read to the end: the choices and their usage, for the route to shape.
    Collected(Vec<Choice>, Usage),
}

/// Generations opened on inference: their events, merged, and how many choices they
/// make in all.
pub struct Generation {
    events: Events,
    choices: u32,
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
        let response = sse(events, format, options.include_usage, metered);
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

/// What the merged generations report, in order per choice.
#[derive(Debug)]
pub enum Event {
    /// New text of a choice (its index already offset for several prompts).
    Chunk(GenerateChunk),
    /// A choice ended.
    Finished { index: u32, reason: FinishReason },
    /// One upstream generation's token counts (there is one per prompt).
    Usage(Usage),
}

type Events = Pin<Box<dyn Stream<Item = Result<Event, ApiError>>>>;

/// Opens one generation per request, all before reading any, so that inference can
/// batch them; choice indices of request `i` follow those of the requests before it.
pub async fn open_all(
    state: &AppState,
    requests: &[GenerateRequest],
) -> Result<Generation, ApiError> {
    let opened = futures::future::join_all(
        requests
            .iter()
            .map(|request| open(&state.bus, &state.replicas, request)),
    )
    .await;
    let mut streams = Vec::with_capacity(opened.len());
    let mut offset = 0;
    for (receiver, request) in opened.into_iter().zip(requests) {
        // Dropping the receivers opened so far cancels them.
        let receiver = receiver.map_err(|err| ApiError::from_bus(&err))?;
        streams.push(events_of(receiver, offset));
        offset += request.n;
    }
    Ok(Generation {
        events: Box::pin(stream::select_all(streams)),
        choices: offset,
    })
}

/// Opens a generation on the replica with the most room for its model, or where the
/// queue group sends it when no replica's load is known. A chosen replica that has gone
/// (nobody answers on its subject) is forgotten and the queue group decides.
async fn open(
    bus: &Bus,
    replicas: &Replicas,
    request: &GenerateRequest,
) -> Result<StreamReceiver<GenerateChunk, GenerateEnd>, BusError> {
    let Some(instance) = replicas.pick(&request.model) else {
        return bus.open(&inference::GENERATE, request).await;
    };
    match bus.open_on(&inference::GENERATE, &instance, request).await {
        Err(BusError::NoResponders { .. }) => {
            replicas.forget(&instance);
            bus.open(&inference::GENERATE, request).await
        }
        opened => opened,
    }
}

fn events_of(
    receiver: StreamReceiver<GenerateChunk, GenerateEnd>,
    offset: u32,
) -> Pin<Box<dyn Stream<Item = Result<Event, ApiError>>>> {
    let items = stream::unfold(receiver, |mut receiver| async move {
        let item = receiver.next().await?;
        Some((item, receiver))
    });
    Box::pin(items.flat_map(move |item| {
        let events: Vec<Result<Event, ApiError>> = match item {
            Ok(StreamItem::Chunk(mut chunk)) => {
                chunk.index += offset;
                vec![Ok(Event::Chunk(chunk))]
            }
            Ok(StreamItem::End(end)) => {
                let mut events: Vec<_> = end
                    .finish_reasons
                    .iter()
                    .zip(0..)
                    .map(|(&reason, index)| {
                        Ok(Event::Finished {
                            index: index + offset,
                            reason,
                        })
                    })
                    .collect();
                events.push(Ok(Event::Usage(end.usage)));
                events
            }
            Err(err) => vec![Err(ApiError::from_bus(&err))],
        };
        stream::iter(events)
    }))
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
                metered.finish(err.status().as_u16());
                return Err(err);
            }
        }
    }
    metered.finish(200);
    Ok((collected, metered.usage()))
}

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
fn sse<F: ChunkFormat>(
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
                    state.done = true;
                    state.metered.finish(err.status().as_u16());
                    let error = crate::error::ErrorResponse {
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
