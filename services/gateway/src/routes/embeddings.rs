//! `POST /v1/embeddings`: vectors from an embedding model served by inference, as
//! floats or base64 (little-endian f32, which the OpenAI clients ask for by default).

use actix_web::{HttpResponse, web};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use slough_protocol::{
    ServiceKind,
    inference::{EmbedRequest, EmbedResponse},
    subjects,
};
use utoipa::ToSchema;

use crate::{
    AppState,
    error::ApiError,
    http::{Caller, JsonBody},
    keys::Scope,
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
    #[serde(default)]
    pub user: Option<String>,
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
    post,
    path = "/v1/embeddings",
    tag = "OpenAI",
    request_body = EmbeddingRequest,
    responses((status = 200, description = "One vector per input", body = EmbeddingList)),
    security(("api_key" = [])),
)]
pub async fn create(
    state: web::Data<AppState>,
    Caller(key): Caller,
    JsonBody(body): JsonBody<EmbeddingRequest>,
) -> Result<HttpResponse, ApiError> {
    key.require(Scope::Inference)?;
    let inputs = body.texts()?;
    if body.dimensions == Some(0) {
        return Err(ApiError::invalid(
            "dimensions",
            "dimensions must be at least 1",
        ));
    }
    key.allow_model(&body.model)?;
    let mut metered = state.admit(&key, "embeddings", &body.model).await?;
    let request = EmbedRequest {
        model: body.model.clone(),
        inputs,
    };
    let response: EmbedResponse = state
        .bus
        .request(
            &subjects::endpoint(ServiceKind::Inference, subjects::inference::EMBED),
            &request,
        )
        .await
        .map_err(|err| state.upstream_failed(&mut metered, err))?;
    metered.add(response.usage);
    let size = response.embeddings.first().map_or(0, Vec::len);
    if let Some(dimensions) = body.dimensions
        && dimensions as usize != size
    {
        metered.finish(400);
        return Err(ApiError::invalid(
            "dimensions",
            format!(
                "model `{}` makes vectors of {size} dimensions and cannot shorten them; \
                 leave dimensions out or set it to {size}",
                body.model
            ),
        ));
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
    }))
}
