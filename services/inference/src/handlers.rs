//! The NATS endpoints: decode, check, hand to the model, reply.

use slough_bus::{BusError, ServiceHost, StreamStart};
use slough_protocol::{
    ErrorBody, ErrorCode,
    inference::{
        self, DetokenizeRequest, DetokenizeResponse, EmbedRequest, EmbedResponse, GenerateChunk,
        GenerateEnd, GenerateRequest, ModelInfo, ModelRequest, ModelsRequest, ModelsResponse,
        TokenizeRequest, TokenizeResponse,
    },
};
use tracing::Instrument as _;

use crate::{
    chat::scheduler::Event,
    models::{Models, Served},
};

/// What the handlers share.
#[derive(Clone)]
pub struct Inference {
    pub models: Models,
    /// The most texts one embed request may hold.
    pub max_embed_inputs: usize,
}

/// Adds every inference endpoint to `host`.
pub async fn add(host: &mut ServiceHost, state: Inference) -> Result<(), BusError> {
    host.serve_stream(&inference::GENERATE, state.clone(), generate)
        .await?;
    host.serve(&inference::EMBED, state.clone(), embed).await?;
    host.serve(&inference::LOAD, state.clone(), load).await?;
    host.serve(&inference::UNLOAD, state.clone(), unload)
        .await?;
    host.serve(&inference::TOKENIZE, state.clone(), tokenize)
        .await?;
    host.serve(&inference::DETOKENIZE, state.clone(), detokenize)
        .await?;
    // Last: callers (the gateway, tests) take an answer to `models` to mean that every
    // endpoint is there.
    host.serve(&inference::MODELS, state, models).await?;
    Ok(())
}

async fn models(state: Inference, _: ModelsRequest) -> Result<ModelsResponse, ErrorBody> {
    Ok(ModelsResponse {
        models: state.models.list().await,
    })
}

async fn load(state: Inference, request: ModelRequest) -> Result<ModelInfo, ErrorBody> {
    state.models.load(&request.model).await
}

async fn unload(state: Inference, request: ModelRequest) -> Result<ModelInfo, ErrorBody> {
    state.models.unload(&request.model).await
}

/// Streams one generation: refused before the acknowledgement when it cannot run,
/// then chunks until the scheduler's end, an error, or the caller's cancel.
async fn generate(
    Inference { models, .. }: Inference,
    request: GenerateRequest,
    start: StreamStart<GenerateChunk, GenerateEnd>,
) -> Result<(), ErrorBody> {
    let span = tracing::info_span!(
        "gen_ai.generate",
        gen_ai.operation.name = "chat",
        gen_ai.system = "slough",
        gen_ai.request.model = %request.model,
        gen_ai.request.max_tokens = request.max_tokens,
        gen_ai.request.temperature = request.sampling.temperature,
        gen_ai.request.top_p = request.sampling.top_p,
        gen_ai.usage.input_tokens = tracing::field::Empty,
        gen_ai.usage.output_tokens = tracing::field::Empty,
        gen_ai.response.finish_reasons = tracing::field::Empty,
        slough.queue_ms = tracing::field::Empty,
    );
    async move {
        let Served::Chat(model) = models.get(&request.model).await? else {
            return Err(ErrorBody::new(
                ErrorCode::InvalidRequest,
                format!(
                    "model {:?} is an embedding model; it cannot generate",
                    request.model
                ),
            ));
        };
        let mut accepted = model.submit(&request)?;
        // Dropping this future (shutdown) cancels the generation too.
        let _cancel_on_drop = accepted.cancel.clone().drop_guard();
        tracing::Span::current().record("gen_ai.usage.input_tokens", accepted.prompt_tokens);
        let sender = start.accept().await.map_err(|err| err.to_body())?;
        let mut prompt_tokens = u32::try_from(accepted.prompt_tokens).ok();
        loop {
            let event = tokio::select! {
                event = accepted.events.recv() => event,
                () = sender.cancelled() => {
                    accepted.cancel.cancel();
                    return Ok(());
                }
            };
            match event {
                Some(Event::Chunk(mut chunk)) => {
                    // The first chunk says how long the prompt was (see GenerateChunk).
                    chunk.prompt_tokens = prompt_tokens.take();
                    if let Err(err) = sender.chunk(chunk).await {
                        accepted.cancel.cancel();
                        return Err(err.to_body());
                    }
                }
                Some(Event::End(end)) => {
                    let span = tracing::Span::current();
                    span.record("gen_ai.usage.output_tokens", end.usage.completion_tokens);
                    span.record(
                        "gen_ai.response.finish_reasons",
                        format!("{:?}", end.finish_reasons),
                    );
                    return sender.end(end).await.map_err(|err| err.to_body());
                }
                Some(Event::Failed(error)) => return Err(error),
                None => {
                    return Err(ErrorBody::new(
                        ErrorCode::Internal,
                        "the scheduler dropped the request",
                    ));
                }
            }
        }
    }
    .instrument(span)
    .await
}

async fn embed(state: Inference, request: EmbedRequest) -> Result<EmbedResponse, ErrorBody> {
    let Inference {
        models,
        max_embed_inputs: max_inputs,
    } = state;
    if request.inputs.is_empty() {
        return Err(ErrorBody::invalid("inputs", "inputs is empty"));
    }
    if request.inputs.len() > max_inputs {
        return Err(ErrorBody::invalid(
            "inputs",
            format!(
                "inputs has {} texts (at most {max_inputs})",
                request.inputs.len()
            ),
        ));
    }
    if let Some(i) = request.inputs.iter().position(String::is_empty) {
        return Err(ErrorBody::invalid(
            format!("inputs[{i}]"),
            format!("inputs[{i}] is empty"),
        ));
    }
    let Served::Embedding(model) = models.get(&request.model).await? else {
        return Err(ErrorBody::invalid(
            "model",
            format!("model {:?} is a chat model; it cannot embed", request.model),
        ));
    };
    let span = tracing::info_span!(
        "gen_ai.embeddings",
        gen_ai.operation.name = "embeddings",
        gen_ai.request.model = %request.model,
        gen_ai.usage.input_tokens = tracing::field::Empty,
    );
    async move {
        let response = model.embed(request.inputs, request.truncate).await?;
        tracing::Span::current().record("gen_ai.usage.input_tokens", response.usage.prompt_tokens);
        Ok(response)
    }
    .instrument(span)
    .await
}

async fn tokenize(
    state: Inference,
    request: TokenizeRequest,
) -> Result<TokenizeResponse, ErrorBody> {
    let model = state.models.get(&request.model).await?;
    let prompt = model.text().prompt(&request.input)?;
    Ok(TokenizeResponse {
        prompt: prompt.text,
        tokens: prompt.tokens,
        context_length: model.info().context_length,
    })
}

async fn detokenize(
    state: Inference,
    request: DetokenizeRequest,
) -> Result<DetokenizeResponse, ErrorBody> {
    let model = state.models.get(&request.model).await?;
    model.text().check_ids(&request.tokens, "tokens")?;
    Ok(DetokenizeResponse {
        text: model.text().decode(&request.tokens),
    })
}
