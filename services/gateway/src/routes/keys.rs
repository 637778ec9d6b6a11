//! `/v1/keys`: API key management for keys with the `admin` scope. A new key's secret
//! is in the creation answer and nowhere else.

use actix_web::{HttpResponse, web};
use actix_web::{delete, get, patch, post};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{
    error::ApiError,
    http::{Caller, JsonBody},
    keys::{ApiKey, CreatedKey, KeySettings, KeyUpdate, Scope},
    state::AppState,
};

/// The keys, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyList {
    /// Always `list`.
    pub object: String,
    pub data: Vec<ApiKey>,
}

fn key_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id)
        .map_err(|_| ApiError::not_found("key_not_found", format!("no API key {id}")))
}

/// Creates a key.
#[utoipa::path(
    tag = "Keys",
    request_body = KeySettings,
    responses((status = 201, description = "The key, with its secret shown this once", body = CreatedKey)),
    security(("api_key" = [])),
)]
#[post("/v1/keys")]
pub async fn create(
    state: web::Data<AppState>,
    Caller(caller): Caller,
    JsonBody(settings): JsonBody<KeySettings>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::Admin)?;
    let created = state.keys.create(settings).await?;
    tracing::info!(key = %created.key.id, by = %caller.id, "API key created");
    Ok(HttpResponse::Created().json(created))
}

/// Lists every key, revoked ones included.
#[utoipa::path(
    tag = "Keys",
    responses((status = 200, description = "The keys", body = KeyList)),
    security(("api_key" = [])),
)]
#[get("/v1/keys")]
pub async fn list(
    state: web::Data<AppState>,
    Caller(caller): Caller,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::Admin)?;
    Ok(HttpResponse::Ok().json(KeyList {
        object: "list".to_owned(),
        data: state.keys.list().await?,
    }))
}

/// Describes one key.
#[utoipa::path(
    tag = "Keys",
    params(("id" = String, Path, description = "The key's id")),
    responses((status = 200, description = "The key", body = ApiKey)),
    security(("api_key" = [])),
)]
#[get("/v1/keys/{id}")]
pub async fn get(
    state: web::Data<AppState>,
    Caller(caller): Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::Admin)?;
    Ok(HttpResponse::Ok().json(state.keys.get(key_id(&id)?).await?))
}

/// Changes a key's name, scopes or limits.
#[utoipa::path(
    tag = "Keys",
    params(("id" = String, Path, description = "The key's id")),
    request_body = KeyUpdate,
    responses((status = 200, description = "The key as changed", body = ApiKey)),
    security(("api_key" = [])),
)]
#[patch("/v1/keys/{id}")]
pub async fn update(
    state: web::Data<AppState>,
    Caller(caller): Caller,
    id: web::Path<String>,
    JsonBody(update): JsonBody<KeyUpdate>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::Admin)?;
    Ok(HttpResponse::Ok().json(state.keys.update(key_id(&id)?, update).await?))
}

/// Revokes a key for good.
#[utoipa::path(
    tag = "Keys",
    params(("id" = String, Path, description = "The key's id")),
    responses((status = 200, description = "The revoked key", body = ApiKey)),
    security(("api_key" = [])),
)]
#[delete("/v1/keys/{id}")]
pub async fn revoke(
    state: web::Data<AppState>,
    Caller(caller): Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::Admin)?;
    let revoked = state.keys.revoke(key_id(&id)?).await?;
    tracing::info!(key = %revoked.id, by = %caller.id, "API key revoked");
    Ok(HttpResponse::Ok().json(revoked))
}
