//! `GET /v1/models` and `GET /v1/models/{id}`: the models the inference replicas serve
//! (all of them, when several serve different models) that the caller's key may use.

use actix_web::{HttpResponse, web};
use serde::Serialize;
use slough_protocol::inference::{ModelInfo, ModelKind};
use utoipa::ToSchema;

use crate::{AppState, error::ApiError, http::Caller, keys::Scope};

/// The models list.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelList {
    /// Always `list`.
    pub object: String,
    pub data: Vec<Model>,
}

/// A served model.
#[derive(Debug, Serialize, ToSchema)]
pub struct Model {
    pub id: String,
    /// Always `model`.
    pub object: String,
    /// When the package was built, Unix seconds.
    pub created: i64,
    pub owned_by: String,
    /// Extension: `chat` or `embedding`.
    pub kind: String,
    /// Extension: the longest prompt plus completion, in tokens.
    pub context_length: u32,
}

impl From<ModelInfo> for Model {
    fn from(info: ModelInfo) -> Model {
        Model {
            created: chrono::DateTime::parse_from_rfc3339(&info.created_at)
                .map_or(0, |created| created.timestamp()),
            id: info.id,
            object: "model".to_owned(),
            owned_by: "sloughgpt".to_owned(),
            kind: match info.kind {
                ModelKind::Chat => "chat",
                ModelKind::Embedding => "embedding",
            }
            .to_owned(),
            context_length: info.context_length,
        }
    }
}

/// Every model the inference replicas serve (see [`crate::replicas::Replicas::models`]).
async fn served(state: &AppState) -> Result<Vec<ModelInfo>, ApiError> {
    state
        .replicas
        .models(&state.bus)
        .await
        .map_err(|err| ApiError::from_bus(&err))
}

/// Lists the models this key may use.
#[utoipa::path(
    get,
    path = "/v1/models",
    tag = "OpenAI",
    responses((status = 200, description = "The models", body = ModelList)),
    security(("api_key" = [])),
)]
pub async fn list(
    state: web::Data<AppState>,
    Caller(key): Caller,
) -> Result<HttpResponse, ApiError> {
    key.require(Scope::Inference)?;
    let data = served(&state)
        .await?
        .into_iter()
        .filter(|model| key.allow_model(&model.id).is_ok())
        .map(Model::from)
        .collect();
    Ok(HttpResponse::Ok().json(ModelList {
        object: "list".to_owned(),
        data,
    }))
}

/// Describes one model.
#[utoipa::path(
    get,
    path = "/v1/models/{model}",
    tag = "OpenAI",
    params(("model" = String, Path, description = "The model's id")),
    responses((status = 200, description = "The model", body = Model)),
    security(("api_key" = [])),
)]
pub async fn get(
    state: web::Data<AppState>,
    Caller(key): Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    key.require(Scope::Inference)?;
    let id = id.into_inner();
    let not_found = || {
        ApiError::not_found("model_not_found", format!("model `{id}` is not served"))
            .with_param("model")
    };
    if key.allow_model(&id).is_err() {
        return Err(not_found());
    }
    let model = served(&state)
        .await?
        .into_iter()
        .find(|model| model.id == id)
        .ok_or_else(not_found)?;
    Ok(HttpResponse::Ok().json(Model::from(model)))
}
