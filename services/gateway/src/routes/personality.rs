//! `/v1/personas` and `/v1/personality/analyze`, answered by the personality service.
//! Any key may read personas, use them and analyze text; changing personas takes the
//! `admin` scope.

use actix_web::{HttpResponse, web};
use actix_web::{delete, get, post};
use serde::Serialize;
use slough_protocol::personality::{
    self, AnalyzeRequest, CreatePersona, ListPersonas, Persona, PersonaPatch, PersonaPreview,
    PersonaRequest, StyleMetrics, UpdatePersona,
};
use utoipa::ToSchema;

use super::call;
use crate::{
    error::ApiError,
    http::{Caller, JsonBody},
    keys::Scope,
    ownership,
    state::AppState,
};

/// Every persona, built-in ones first.
#[derive(Debug, Serialize, ToSchema)]
pub struct PersonaList {
    /// Always `list`.
    pub object: String,
    pub data: Vec<Persona>,
}

/// Lists the personas.
#[utoipa::path(
    tag = "Personas",
    responses((status = 200, description = "The personas", body = PersonaList)),
    security(("api_key" = [])),
)]
#[get("/v1/personas")]
pub async fn list(
    state: web::Data<AppState>,
    Caller(_caller): Caller,
) -> Result<HttpResponse, ApiError> {
    let list = call(&state, &personality::LIST_PERSONAS, &ListPersonas {}).await?;
    Ok(HttpResponse::Ok().json(PersonaList {
        object: "list".to_owned(),
        data: list.personas,
    }))
}

/// Describes one persona.
#[utoipa::path(
    tag = "Personas",
    params(("id" = String, Path, description = "The persona's id")),
    responses((status = 200, description = "The persona", body = Persona)),
    security(("api_key" = [])),
)]
#[get("/v1/personas/{id}")]
pub async fn get(
    state: web::Data<AppState>,
    Caller(_caller): Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let request = PersonaRequest {
        id: id.into_inner(),
    };
    let persona = call(&state, &personality::GET_PERSONA, &request).await?;
    Ok(HttpResponse::Ok().json(persona))
}

/// Creates a persona, a copy of `from` (default `assistant`) with the given fields.
#[utoipa::path(
    tag = "Personas",
    request_body = CreatePersona,
    responses((status = 201, description = "The new persona", body = Persona)),
    security(("api_key" = [])),
)]
#[post("/v1/personas")]
pub async fn create(
    state: web::Data<AppState>,
    Caller(caller): Caller,
    JsonBody(body): JsonBody<CreatePersona>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::Admin)?;
    let persona = call(&state, &personality::CREATE_PERSONA, &body).await?;
    tracing::info!(persona = %persona.id, by = %caller.id, "persona created");
    Ok(HttpResponse::Created().json(persona))
}

/// Changes the given fields of a stored persona (built-in ones cannot change).
#[utoipa::path(
    tag = "Personas",
    params(("id" = String, Path, description = "The persona's id")),
    request_body = PersonaPatch,
    responses((status = 200, description = "The persona as changed", body = Persona)),
    security(("api_key" = [])),
)]
#[post("/v1/personas/{id}")]
pub async fn update(
    state: web::Data<AppState>,
    Caller(caller): Caller,
    id: web::Path<String>,
    JsonBody(patch): JsonBody<PersonaPatch>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::Admin)?;
    let request = UpdatePersona {
        id: id.into_inner(),
        patch,
    };
    let persona = call(&state, &personality::UPDATE_PERSONA, &request).await?;
    tracing::info!(persona = %persona.id, by = %caller.id, "persona updated");
    Ok(HttpResponse::Ok().json(persona))
}

/// Renders the system prompt persona `id` would have with the given fields changed,
/// checked as a change is; nothing is stored, so any key may preview any persona.
#[utoipa::path(
    tag = "Personas",
    params(("id" = String, Path, description = "The persona's id")),
    request_body = PersonaPatch,
    responses((status = 200, description = "The system prompt it would have", body = PersonaPreview)),
    security(("api_key" = [])),
)]
#[post("/v1/personas/{id}/preview")]
pub async fn preview(
    state: web::Data<AppState>,
    Caller(_caller): Caller,
    id: web::Path<String>,
    JsonBody(patch): JsonBody<PersonaPatch>,
) -> Result<HttpResponse, ApiError> {
    let request = UpdatePersona {
        id: id.into_inner(),
        patch,
    };
    let preview = call(&state, &personality::PREVIEW_PERSONA, &request).await?;
    Ok(HttpResponse::Ok().json(preview))
}

/// Deletes a stored persona (built-in ones cannot be) and answers what it was.
#[utoipa::path(
    tag = "Personas",
    params(("id" = String, Path, description = "The persona's id")),
    responses((status = 200, description = "The deleted persona", body = Persona)),
    security(("api_key" = [])),
)]
#[delete("/v1/personas/{id}")]
pub async fn delete(
    state: web::Data<AppState>,
    Caller(caller): Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::Admin)?;
    let request = PersonaRequest {
        id: id.into_inner(),
    };
    let persona = call(&state, &personality::DELETE_PERSONA, &request).await?;
    tracing::info!(persona = %persona.id, by = %caller.id, "persona deleted");
    Ok(HttpResponse::Ok().json(persona))
}

/// Measures a text's style: VADER sentiment, Flesch reading ease and grade, formality,
/// emoji density, sentence length, lexical diversity, questions and exclamations.
#[utoipa::path(
    tag = "Personas",
    request_body = AnalyzeRequest,
    responses((status = 200, description = "The text's style metrics", body = StyleMetrics)),
    security(("api_key" = [])),
)]
#[post("/v1/personality/analyze")]
pub async fn analyze(
    state: web::Data<AppState>,
    Caller(caller): Caller,
    JsonBody(body): JsonBody<AnalyzeRequest>,
) -> Result<HttpResponse, ApiError> {
    // A classifier is a fine-tuned model: its trainer's (or given by name).
    if let Some(classifier) = &body.classifier {
        ownership::check_model(&state, &caller, classifier)
            .await
            .map_err(|err| err.with_param("classifier"))?;
    }
    let metrics = call(&state, &personality::ANALYZE, &body).await?;
    Ok(HttpResponse::Ok().json(metrics))
}
