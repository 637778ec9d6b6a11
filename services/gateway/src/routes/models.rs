//! `GET /v1/models` and `GET /v1/models/{id}`: the models the inference replicas serve
//! (all of them, when several serve different models) that the caller's key may use,
//! and for each chat model one alias `<model>:<persona>` per persona.

use actix_web::{HttpResponse, web};
use actix_web::{delete, get};
use serde::Serialize;
use slough_protocol::{
    ErrorCode,
    inference::{ModelInfo, ModelKind},
    personality::{self, ListPersonas, PersonaRequest},
};
use utoipa::ToSchema;

use crate::{error::ApiError, http::Caller, keys::Scope, ownership, state::AppState};

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
    /// Extension, on an alias `<model>:<persona>`: the persona it answers as.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub persona: Option<String>,
    /// Extension, on a fine-tuned model: the model it was fine-tuned from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
}

impl Model {
    /// The alias of this chat model that answers as `persona`.
    fn alias(&self, persona: &str) -> Model {
        Model {
            id: format!("{}:{persona}", self.id),
            object: self.object.clone(),
            created: self.created,
            owned_by: self.owned_by.clone(),
            kind: self.kind.clone(),
            context_length: self.context_length,
            persona: Some(persona.to_owned()),
            parent: self.parent.clone(),
        }
    }
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
            persona: None,
            parent: info.parent,
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

/// The persona ids, for the aliases; without the personality service there are none.
async fn persona_ids(state: &AppState) -> Vec<String> {
    match state
        .bus
        .call(&personality::LIST_PERSONAS, &ListPersonas {})
        .await
    {
        Ok(found) => found
            .personas
            .into_iter()
            .map(|persona| persona.id)
            .collect(),
        Err(err) => {
            tracing::warn!("models listed without persona aliases: {err}");
            Vec::new()
        }
    }
}

/// Lists the models this key may use.
#[utoipa::path(
    tag = "OpenAI",
    responses((status = 200, description = "The models", body = ModelList)),
    security(("api_key" = [])),
)]
#[get("/v1/models")]
pub async fn list(
    state: web::Data<AppState>,
    Caller(key): Caller,
) -> Result<HttpResponse, ApiError> {
    key.require(Scope::Inference)?;
    let served = served(&state).await?;
    let models: Vec<Model> = ownership::usable(&state, &key, served, |model| &model.id)
        .await?
        .into_iter()
        .map(Model::from)
        .collect();
    let personas = if models.iter().any(|model| model.kind == "chat") {
        persona_ids(&state).await
    } else {
        Vec::new()
    };
    let mut data = Vec::with_capacity(models.len() * (1 + personas.len()));
    for model in models {
        let aliases: Vec<Model> = if model.kind == "chat" {
            personas
                .iter()
                .map(|persona| model.alias(persona))
                .collect()
        } else {
            Vec::new()
        };
        data.push(model);
        data.extend(aliases);
    }
    Ok(HttpResponse::Ok().json(ModelList {
        object: "list".to_owned(),
        data,
    }))
}

/// Describes one model.
#[utoipa::path(
    tag = "OpenAI",
    params(("model" = String, Path, description = "The model's id")),
    responses((status = 200, description = "The model", body = Model)),
    security(("api_key" = [])),
)]
#[get("/v1/models/{model}")]
pub async fn get(
    state: web::Data<AppState>,
    Caller(key): Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    key.require(Scope::Inference)?;
    let id = id.into_inner();
    let not_found = || ownership::not_found(&id);
    let (model_id, persona) = slough_protocol::names::split_model_alias(&id);
    if ownership::check_model(&state, &key, model_id)
        .await
        .is_err()
    {
        return Err(not_found());
    }
    let model = served(&state)
        .await?
        .into_iter()
        .find(|model| model.id == model_id)
        .map(Model::from)
        .ok_or_else(not_found)?;
    let Some(persona) = persona else {
        return Ok(HttpResponse::Ok().json(model));
    };
    let request = PersonaRequest {
        id: persona.to_owned(),
    };
    if model.kind != "chat" {
        return Err(not_found());
    }
    match state.bus.call(&personality::GET_PERSONA, &request).await {
        Ok(_) => Ok(HttpResponse::Ok().json(model.alias(persona))),
        Err(err) if err.to_body().code == ErrorCode::NotFound => Err(not_found()),
        Err(err) => Err(ApiError::from_bus(&err)),
    }
}

/// Deletes a fine-tuned model: an admin key any, a `fine-tune` key the ones its jobs
/// made. Base models are refused (409).
#[utoipa::path(
    tag = "OpenAI",
    params(("model" = String, Path, description = "The fine-tuned model's id")),
    responses((status = 200, description = "The model is gone", body = slough_protocol::training::ModelDeleted)),
    security(("api_key" = [])),
)]
#[delete("/v1/models/{model}")]
pub async fn delete(
    state: web::Data<AppState>,
    Caller(key): Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    if !key.is_admin() {
        key.require(Scope::FineTune)?;
    }
    let request = slough_protocol::training::DeleteModel {
        model: id.into_inner(),
        owner: key.owner_filter(),
    };
    let deleted = super::call(&state, &slough_protocol::training::DELETE_MODEL, &request).await?;
    tracing::info!(model = %deleted.id, by = %key.id, "model deleted");
    Ok(HttpResponse::Ok().json(deleted))
}
