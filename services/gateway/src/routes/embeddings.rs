//! `POST /v1/embeddings`: vectors from an embedding model served by inference, as
//! floats or base64 (little-endian f32, which the OpenAI clients ask for by default).
//! Many texts go to inference in bounded batches, a few at a time (so every message
//! fits the bus and several replicas share the work), and come back in order.

use actix_web::post;
use actix_web::{HttpResponse, web};
use base64::Engine as _;
use futures::{StreamExt as _, TryStreamExt as _};
use serde::{Deserialize, Serialize};
use slough_protocol::inference::{self, EmbedRequest, EmbedResponse, Usage};
use utoipa::ToSchema;

use crate::{
    error::ApiError,
    http::{Caller, JsonBody},
    keys::Scope,
    ownership, privacy,
    state::AppState,
};

/// An embeddings request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingRequest {
    pub model: String,
    /// A text or a list of texts (token ids are refused: send text).
    pub input: EmbeddingInput,
    /// `float` (default) or `base64`.
    #[serde(default)]
    pub encoding_format: Option<EncodingFormat>,
    /// Only the model's own size is supported.
    #[serde(default)]
    pub dimensions: Option<u32>,
    /// The end user the request is for (1 to 256 characters): kept with its usage.
    #[serde(default)]
    pub user: Option<String>,
    /// Extension: cut texts longer than the model's limit instead of refusing them
    /// (the response's `truncated` lists which were cut).
    #[serde(default)]
    pub truncate: Option<bool>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum EmbeddingInput {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EncodingFormat {
    Float,
    Base64,
}

/// The vectors, in input order.
#[derive(Debug, Serialize, ToSchema)]
pub struct EmbeddingList {
    /// Always `list`.
    pub object: String,
    pub data: Vec<Embedding>,
    pub model: String,
    pub usage: EmbeddingUsage,
    /// Extension, with `truncate`: the indices of the inputs that were cut.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub truncated: Option<Vec<u32>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Embedding {
    /// Always `embedding`.
    pub object: String,
    pub index: u32,
    pub embedding: Vector,
}

/// Floats, or their little-endian f32 bytes in base64.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum Vector {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EmbeddingUsage {
    pub prompt_tokens: u32,
    pub total_tokens: u32,
}

impl EmbeddingRequest {
    fn texts(&self) -> Result<Vec<String>, ApiError> {
        let texts = match &self.input {
            EmbeddingInput::Text(text) => vec![text.clone()],
            EmbeddingInput::Texts(texts) => texts.clone(),
            EmbeddingInput::Tokens(_) | EmbeddingInput::TokenLists(_) => {
                return Err(ApiError::invalid(
                    "input",
                    "input as token ids is not supported; send the text",
                ));
            }
        };
        if texts.is_empty() {
            return Err(ApiError::invalid(
                "input",
                "input must hold at least one text",
            ));
        }
        if let Some(index) = texts.iter().position(String::is_empty) {
            return Err(ApiError::invalid(
                format!("input[{index}]"),
                "input texts must not be empty",
            ));
        }
        Ok(texts)
    }
}

/// Creates embeddings.
#[utoipa::path(
    tag = "OpenAI",
    request_body = EmbeddingRequest,
    responses((status = 200, description = "One vector per input", body = EmbeddingList)),
    security(("api_key" = [])),
)]
#[post("/v1/embeddings")]
pub async fn create(
    state: web::Data<AppState>,
    Caller(key): Caller,
    JsonBody(body): JsonBody<EmbeddingRequest>,
) -> Result<HttpResponse, ApiError> {
    key.require(Scope::Inference)?;
    let mut inputs = body.texts()?;
    if body.dimensions == Some(0) {
        return Err(ApiError::invalid(
            "dimensions",
            "dimensions must be at least 1",
        ));
    }
    ownership::check_model(&state, &key, &body.model).await?;
    let texts = inputs
        .iter_mut()
        .enumerate()
        .map(|(index, text)| (format!("input[{index}]"), text));
    let masked = privacy::screen(key.pii, &state.metrics, texts)?;
    if let Some(asked) = body.dimensions {
        // Refused before any embedding work when the model's size is known.
        let size = state
            .replicas
            .models(&state.bus)
            .await?
            .into_iter()
            .find(|model| model.id == body.model)
            .and_then(|model| model.dimensions);
        if let Some(size) = size
            && size != asked
        {
            return Err(cannot_shorten(&body.model, size as usize));
        }
    }
    let end_user = crate::openai::end_user(None, body.user.as_deref())?;
    let mut metered = state
        .admission
        .admit(&key, "embeddings", &body.model)
        .await?;
    metered.pii_masked(&masked);
    metered.end_user(end_user);
    let truncate = body.truncate.unwrap_or(false);
    let response = embed_in_batches(&state, &body.model, inputs, truncate)
        .await
        .map_err(|err| metered.failed(err))?;
    metered.add(response.usage);
    let size = response.embeddings.first().map_or(0, Vec::len);
    if let Some(dimensions) = body.dimensions
        && dimensions as usize != size
    {
        // A replica that does not report its model's size: found out by embedding.
        metered.finish(400);
        return Err(cannot_shorten(&body.model, size));
    }
    let base64 = body.encoding_format == Some(EncodingFormat::Base64);
    let data = response
        .embeddings
        .into_iter()
        .zip(0..)
        .map(|(vector, index)| Embedding {
            object: "embedding".to_owned(),
            index,
            embedding: if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                Vector::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                Vector::Float(vector)
            },
        })
        .collect();
    metered.finish(200);
    Ok(HttpResponse::Ok().json(EmbeddingList {
        object: "list".to_owned(),
        data,
        model: response.model,
        usage: EmbeddingUsage {
            prompt_tokens: response.usage.prompt_tokens,
            total_tokens: response.usage.total_tokens,
        },
        truncated: truncate.then_some(response.truncated),
    }))
}

/// 400: `dimensions` other than the model's own size.
fn cannot_shorten(model: &str, size: usize) -> ApiError {
    ApiError::invalid(
        "dimensions",
        format!(
            "model `{model}` makes vectors of {size} dimensions and cannot shorten them; \
             leave dimensions out or set it to {size}"
        ),
    )
}

/// Texts in one embed request on the bus. With up to 256 tokens each, a batch takes
/// inference about two seconds on two cores, and its reply (about 4 KB of JSON per
/// 384-float vector) stays far below NATS's default 1 MiB `max_payload`.
const BATCH_TEXTS: usize = 16;
/// Batches of one API request on the bus at once: enough to keep a couple of replicas
/// busy, few enough that the last one queued is answered within the request timeout.
const BATCHES_IN_FLIGHT: usize = 4;

/// Embeds `inputs` in batches of [`BATCH_TEXTS`] (fewer when long texts would make the
/// request itself large), [`BATCHES_IN_FLIGHT`] at a time, and merges the answers in
/// input order. A refused input is named by its index in the API request.
async fn embed_in_batches(
    state: &AppState,
    model: &str,
    inputs: Vec<String>,
    truncate: bool,
) -> Result<EmbedResponse, ApiError> {
    let byte_budget = state.bus.max_payload() / 2;
    let calls = batches(&inputs, BATCH_TEXTS, byte_budget)
        .into_iter()
        .map(|range| {
            let request = EmbedRequest {
                model: model.to_owned(),
                inputs: inputs[range.clone()].to_vec(),
                truncate,
            };
            async move {
                let response = state
                    .replicas
                    .call(&state.bus, &inference::EMBED, model, &request)
                    .await;
                response.map_err(|err| in_request_terms(&err, range.start))
            }
        });
    let answers: Vec<EmbedResponse> = futures::stream::iter(calls)
        .buffered(BATCHES_IN_FLIGHT)
        .try_collect()
        .await?;
    let mut merged = EmbedResponse {
        model: model.to_owned(),
        embeddings: Vec::with_capacity(inputs.len()),
        truncated: Vec::new(),
        context_length: 0,
        usage: Usage::default(),
    };
    for answer in answers {
        let offset = merged.embeddings.len() as u32;
        merged.model = answer.model;
        merged.context_length = answer.context_length;
        merged
            .truncated
            .extend(answer.truncated.iter().map(|i| i + offset));
        merged.embeddings.extend(answer.embeddings);
        merged.usage += answer.usage;
    }
    Ok(merged)
}

/// Consecutive ranges of at most `most` texts and about `byte_budget` bytes (a text
/// larger than that goes alone, and the bus refuses it by size).
fn batches(inputs: &[String], most: usize, byte_budget: usize) -> Vec<std::ops::Range<usize>> {
    let mut ranges = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, text) in inputs.iter().enumerate() {
        let full = i - start == most || (i > start && bytes + text.len() > byte_budget);
        if full {
            ranges.push(start..i);
            start = i;
            bytes = 0;
        }
        bytes += text.len();
    }
    if start < inputs.len() {
        ranges.push(start..inputs.len());
    }
    ranges
}

/// A batch's error as the API request sees it: inference names `inputs[k]` of the
/// batch; the client sent it as `input[offset + k]`.
fn in_request_terms(error: &slough_bus::BusError, offset: usize) -> ApiError {
    let api = ApiError::from_bus(error);
    let body = error.to_body();
    let Some(k) = body
        .param
        .as_deref()
        .and_then(|param| param.strip_prefix("inputs["))
        .and_then(|rest| rest.strip_suffix(']'))
        .and_then(|k| k.parse::<usize>().ok())
    else {
        return api;
    };
    let index = offset + k;
    let detail = body
        .message
        .strip_prefix(&format!("inputs[{k}] "))
        .unwrap_or(&body.message);
    ApiError::invalid(
        format!("input[{index}]"),
        format!("input[{index}] {detail}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_bounded_by_count_and_bytes_and_keep_order() {
        let texts: Vec<String> = (0..40).map(|i| "x".repeat(10 + i)).collect();
        let ranges = batches(&texts, 16, usize::MAX);
        assert_eq!(ranges, [0..16, 16..32, 32..40]);
        let ranges = batches(&texts, 16, 100);
        assert!(ranges.iter().all(|r| r.len() <= 16));
        assert_eq!(ranges.first().map(|r| r.start), Some(0));
        assert_eq!(ranges.last().map(|r| r.end), Some(40));
        assert!(ranges.windows(2).all(|w| w[0].end == w[1].start));
        for range in &ranges {
            let bytes: usize = texts[range.clone()].iter().map(String::len).sum();
            assert!(bytes <= 100 || range.len() == 1, "{range:?}: {bytes}");
        }
        let huge = vec!["y".repeat(500), "z".to_owned()];
        assert_eq!(batches(&huge, 16, 100), [0..1, 1..2]);
    }
}
