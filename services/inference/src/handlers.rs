//! The NATS endpoints: decode, check, hand to the model, reply.

use slough_bus::{BusError, ServiceHost, StreamStart};
use slough_protocol::{
    ErrorBody, ErrorCode,
    inference::{
        DetokenizeRequest, DetokenizeResponse, EmbedRequest, EmbedResponse, GenerateChunk,
        GenerateEnd, GenerateRequest, ModelRequest, ModelsRequest, ModelsResponse, TokenizeRequest,
        TokenizeResponse,
    },
    subjects::inference as endpoints,
};
use tracing::Instrument as _;

use crate::{
    chat::scheduler::Event,
    models::{Models, Served},
};

/// Adds every inference endpoint to `host`.
pub async fn add(
    host: &mut ServiceHost,
    models: Models,
    max_embed_inputs: usize,
) -> Result<(), BusError> {
    let m = models.clone();
    host.stream_endpoint(endpoints::GENERATE, move |request, start| {
        generate(m.clone(), request, start)
    })
    .await?;
    let m = models.clone();
    host.endpoint(endpoints::EMBED, move |request| {
        embed(m.clone(), request, max_embed_inputs)
    })
    .await?;
    let m = models.clone();
    host.endpoint(endpoints::MODELS, move |_: ModelsRequest| {
        let m = m.clone();
        async move {
            Ok(ModelsResponse {
                models: m.list().await,
            })
        }
    })
    .await?;
    let m = models.clone();
    host.endpoint(endpoints::LOAD, move |request: ModelRequest| {
        let m = m.clone();
        async move { m.load(&request.model).await }
    })
    .await?;
    let m = models.clone();
    host.endpoint(endpoints::UNLOAD, move |request: ModelRequest| {
        let m = m.clone();
        async move { m.unload(&request.model).await }
    })
    .await?;
    let m = models.clone();
    host.endpoint(endpoints::TOKENIZE, move |request| {
        tokenize(m.clone(), request)
    })
    .await?;
    host.endpoint(endpoints::DETOKENIZE, move |request| {
        detokenize(models.clone(), request)
    })
    .await?;
    Ok(())
}

/// Streams one generation: refused before the acknowledgement when it cannot run,
/// then chunks until the scheduler's end, an error, or the caller's cancel.
async fn generate(
    models: Models,
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
        loop {
            let event = tokio::select! {
                event = accepted.events.recv() => event,
                () = sender.cancelled() => {
                    accepted.cancel.cancel();
                    return Ok(());
                }
            };
            match event {
                Some(Event::Chunk(chunk)) => {
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

async fn embed(
    models: Models,
    request: EmbedRequest,
    max_inputs: usize,
) -> Result<EmbedResponse, ErrorBody> {
    let invalid = |message: String| ErrorBody::new(ErrorCode::InvalidRequest, message);
    if request.inputs.is_empty() {
        return Err(invalid("inputs is empty".to_owned()));
    }
    if request.inputs.len() > max_inputs {
        return Err(invalid(format!(
            "inputs has {} texts (at most {max_inputs})",
            request.inputs.len()
        )));
    }
    if let Some(i) = request.inputs.iter().position(String::is_empty) {
        return Err(invalid(format!("inputs[{i}] is empty")));
    }
    let Served::Embedding(model) = models.get(&request.model).await? else {
        return Err(invalid(format!(
            "model {:?} is a chat model; it cannot embed",
            request.model
        )));
    };
    let span = tracing::info_span!(
        "gen_ai.embeddings",
        gen_ai.operation.name = "embeddings",
        gen_ai.request.model = %request.model,
        gen_ai.usage.input_tokens = tracing::field::Empty,
    );
    async move {
        let response = model.embed(request.inputs).await?;
        tracing::Span::current().record("gen_ai.usage.input_tokens", response.usage.prompt_tokens);
        Ok(response)
    }
    .instrument(span)
    .await
}

async fn tokenize(models: Models, request: TokenizeRequest) -> Result<TokenizeResponse, ErrorBody> {
    let model = models.get(&request.model).await?;
    let prompt = model.text().render(&request.input)?;
    let tokens = model.text().encode(&request.input, &prompt)?;
    Ok(TokenizeResponse {
        prompt,
        tokens,
        context_length: model.info().context_length,
    })
}

async fn detokenize(
    models: Models,
    request: DetokenizeRequest,
) -> Result<DetokenizeResponse, ErrorBody> {
    let model = models.get(&request.model).await?;
    model.text().check_ids(&request.tokens, "tokens")?;
    Ok(DetokenizeResponse {
        text: model.text().decode(&request.tokens),
    })
}
