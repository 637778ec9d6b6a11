//! Export and erasure, for admins, of what the platform holds about one API key
//! (`/v1/keys/{id}/export`, `/v1/keys/{id}/data`) or one end user, as requests name them
//! in `safety_identifier` or `user` (`/v1/end_users/{user}/export`, `/v1/end_users/{user}/data`).
//!
//! A key's data: its stored completions with their feedback, its files (their content
//! included in an export), its fine-tuning jobs and the models they made, the collections
//! it owns, the documents it wrote into other collections, and its usage. An end user's:
//! the stored completions and usage of requests that named them. Erasure removes the
//! content and keeps usage only as anonymous rows (the key and end user taken off, so
//! totals per model and day still add up). Both are audited (see [`crate::audit`]); the
//! audit log itself, which holds ids but no content, is kept. An erasure that fails part
//! way (a service down) answers the error; what it removed stays removed, and sending
//! it again finishes it.

use std::time::Duration;

use actix_web::{HttpResponse, delete, get, web};
use chrono::{DateTime, Utc};
use sea_orm::{
    ColumnTrait as _, EntityTrait as _, QueryFilter as _, QueryOrder as _, sea_query::Expr,
};
use serde::Serialize;
use serde_json::Value;
use slough_protocol::{
    rag::{self, CollectionRequest, DocumentRequest},
    training::{self, EraseOwner, Job, ListJobs},
};
use slough_store::entities::{
    api_key, collection, collection_document, file, stored_completion, usage,
};
use utoipa::ToSchema;
use uuid::Uuid;

use super::call;
use crate::{
    error::ApiError,
    http::Caller,
    keys::{ApiKey, Scope},
    state::AppState,
};

/// The most bytes of file content one export carries; the files past it are listed
/// without their content, to be fetched from `/v1/files/{id}/content`.
const EXPORT_FILE_BYTES: i64 = 64 << 20;

/// How long an erasure waits for a key's cancelled fine-tuning jobs to stop.
const JOBS_STOP: Duration = Duration::from_secs(60);

/// Everything the platform holds about one key.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyExport {
    /// Always `key.export`.
    pub object: String,
    pub exported_at: DateTime<Utc>,
    pub key: ApiKey,
    pub stored_completions: Vec<ExportedCompletion>,
    pub files: Vec<ExportedFile>,
    pub fine_tuning_jobs: Vec<Job>,
    /// The models its jobs made.
    pub fine_tuned_models: Vec<String>,
    /// The names of the collections it owns.
    pub collections: Vec<String>,
    /// The documents it last wrote, in any collection.
    pub documents: Vec<ExportedDocument>,
    pub usage: Vec<UsageRecord>,
}

/// Everything the platform holds about one end user.
#[derive(Debug, Serialize, ToSchema)]
pub struct EndUserExport {
    /// Always `end_user.export`.
    pub object: String,
    pub exported_at: DateTime<Utc>,
    pub user: String,
    pub stored_completions: Vec<ExportedCompletion>,
    pub usage: Vec<UsageRecord>,
}

/// A stored completion (`store: true`) with its feedback.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExportedCompletion {
    pub id: String,
    /// The key that made it.
    pub key_id: String,
    pub end_user: Option<String>,
    pub model: String,
    /// The conversation, as `[{"role", "content"}]`.
    #[schema(value_type = Vec<Object>)]
    pub messages: Value,
    pub answer: String,
    pub created_at: DateTime<Utc>,
    pub rating: Option<i32>,
    pub correction: Option<String>,
    pub rated_at: Option<DateTime<Utc>>,
}

/// A file, with its content as text.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExportedFile {
    pub id: String,
    pub filename: String,
    pub purpose: String,
    pub bytes: i64,
    pub created_at: DateTime<Utc>,
    /// The file's text; `null` once the export holds 64 MiB of file content (fetch the
    /// rest from `/v1/files/{id}/content`).
    pub content: Option<String>,
}

/// A document in a collection (its text is in the collection's chunks).
#[derive(Debug, Serialize, ToSchema)]
pub struct ExportedDocument {
    pub collection: String,
    pub id: String,
    pub bytes: i64,
    pub chunks: i64,
    pub updated_at: DateTime<Utc>,
}

/// One model request's usage.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageRecord {
    pub key_id: String,
    pub end_user: Option<String>,
    pub endpoint: String,
    pub model: String,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub latency_ms: i64,
    pub status: i16,
    pub created_at: DateTime<Utc>,
    /// Findings the key's PII policy masked, by type.
    #[schema(value_type = Option<Object>)]
    pub pii_masked: Option<Value>,
}

/// What erasing a key's data removed.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyErased {
    /// Always `key.erasure`.
    pub object: String,
    pub key_id: String,
    /// The key is revoked (and its name cleared) first, so nothing new arrives.
    pub revoked: bool,
    pub stored_completions: u64,
    pub files: u64,
    pub fine_tuning_jobs: u64,
    pub fine_tuned_models: Vec<String>,
    pub collections: u64,
    pub documents: u64,
    /// Usage rows kept without the key.
    pub usage_anonymized: u64,
}

/// What erasing an end user's data removed.
#[derive(Debug, Serialize, ToSchema)]
pub struct EndUserErased {
    /// Always `end_user.erasure`.
    pub object: String,
    pub user: String,
    pub stored_completions: u64,
    /// Usage rows kept without the end user.
    pub usage_anonymized: u64,
}

/// The key `id`, for an admin.
async fn target_key(state: &AppState, caller: &ApiKey, id: &str) -> Result<ApiKey, ApiError> {
    caller.require(Scope::Admin)?;
    let id = Uuid::parse_str(id)
        .map_err(|_| ApiError::not_found("key_not_found", format!("no API key {id}")))?;
    Ok(state.keys.get(id).await?)
}

fn store_error(err: sea_orm::DbErr) -> ApiError {
    ApiError::store("cannot read or change personal data", &err)
}

/// Exports what the platform holds about a key.
#[utoipa::path(
    tag = "Keys",
    params(("id" = String, Path, description = "The key's id")),
    responses((status = 200, description = "The key's data", body = KeyExport)),
    security(("api_key" = [])),
)]
#[get("/v1/keys/{id}/export")]
pub async fn export_key(
    state: web::Data<AppState>,
    Caller(caller): Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let key = target_key(&state, &caller, &id).await?;
    let owner = key.id.to_string();
    let stored_completions =
        completions(&state, stored_completion::Column::Owner.eq(&owner)).await?;
    let held = Holdings::of(&state, &owner).await?;
    let mut files = Vec::with_capacity(held.files.len());
    if !held.files.is_empty() {
        let file_store = super::files::file_store(&state).await?;
        let mut budget = EXPORT_FILE_BYTES;
        for row in held.files {
            let content = if row.bytes <= budget {
                budget -= row.bytes;
                let bytes = file_store
                    .get(&row.id)
                    .await
                    .map_err(|err| ApiError::from_bus(&err))?;
                Some(String::from_utf8_lossy(&bytes).into_owned())
            } else {
                None
            };
            files.push(ExportedFile {
                id: row.id,
                filename: row.filename,
                purpose: row.purpose,
                bytes: row.bytes,
                created_at: row.created_at,
                content,
            });
        }
    }
    let fine_tuning_jobs = jobs_of(&state, &owner).await?;
    let usage = usage_rows(&state, usage::Column::KeyId.eq(key.id)).await?;
    Ok(HttpResponse::Ok().json(KeyExport {
        object: "key.export".to_owned(),
        exported_at: Utc::now(),
        key,
        stored_completions,
        files,
        fine_tuned_models: fine_tuning_jobs
            .iter()
            .filter_map(|job| job.fine_tuned_model.clone())
            .collect(),
        fine_tuning_jobs,
        collections: held.collections.into_iter().map(|row| row.name).collect(),
        documents: held
            .documents
            .into_iter()
            .map(|row| ExportedDocument {
                collection: row.collection,
                id: row.document_id,
                bytes: row.bytes,
                chunks: row.chunks,
                updated_at: row.updated_at,
            })
            .collect(),
        usage,
    }))
}

/// What a key made that lives in collections and files, each oldest or first by name.
struct Holdings {
    /// The collections it owns.
    collections: Vec<collection::Model>,
    /// The documents it last wrote, in any collection.
    documents: Vec<collection_document::Model>,
    files: Vec<file::Model>,
}

impl Holdings {
    async fn of(state: &AppState, owner: &str) -> Result<Holdings, ApiError> {
        let db = state.store.connection();
        let collections = collection::Entity::find()
            .filter(collection::Column::Owner.eq(owner))
            .order_by_asc(collection::Column::Name)
            .all(db)
            .await
            .map_err(store_error)?;
        let documents = collection_document::Entity::find()
            .filter(collection_document::Column::AddedBy.eq(owner))
            .order_by_asc(collection_document::Column::Collection)
            .order_by_asc(collection_document::Column::DocumentId)
            .all(db)
            .await
            .map_err(store_error)?;
        let files = file::Entity::find()
            .filter(file::Column::Owner.eq(owner))
            .order_by_asc(file::Column::CreatedAt)
            .all(db)
            .await
            .map_err(store_error)?;
        Ok(Holdings {
            collections,
            documents,
            files,
        })
    }
}

/// The stored completions `condition` selects, oldest first.
async fn completions(
    state: &AppState,
    condition: sea_orm::sea_query::SimpleExpr,
) -> Result<Vec<ExportedCompletion>, ApiError> {
    let rows = stored_completion::Entity::find()
        .filter(condition)
        .order_by_asc(stored_completion::Column::CreatedAt)
        .all(state.store.connection())
        .await
        .map_err(store_error)?;
    Ok(rows.into_iter().map(exported).collect())
}

/// The usage rows `condition` selects, oldest first.
async fn usage_rows(
    state: &AppState,
    condition: sea_orm::sea_query::SimpleExpr,
) -> Result<Vec<UsageRecord>, ApiError> {
    let rows = usage::Entity::find()
        .filter(condition)
        .order_by_asc(usage::Column::CreatedAt)
        .all(state.store.connection())
        .await
        .map_err(store_error)?;
    Ok(rows.into_iter().map(usage_record).collect())
}

/// Every fine-tuning job of `owner`, oldest first.
async fn jobs_of(state: &AppState, owner: &str) -> Result<Vec<Job>, ApiError> {
    let mut jobs = Vec::new();
    loop {
        let request = ListJobs {
            owner: Some(owner.to_owned()),
            after: jobs.last().map(|job: &Job| job.id.clone()),
            limit: Some(training::MAX_LIMIT),
        };
        let page = call(state, &training::LIST_JOBS, &request).await?;
        jobs.extend(page.data);
        if !page.has_more {
            break;
        }
    }
    jobs.reverse();
    Ok(jobs)
}

/// Erases what the platform holds about a key, and revokes it.
#[utoipa::path(
    tag = "Keys",
    params(("id" = String, Path, description = "The key's id")),
    responses((status = 200, description = "What was erased", body = KeyErased)),
    security(("api_key" = [])),
)]
#[delete("/v1/keys/{id}/data")]
pub async fn erase_key(
    state: web::Data<AppState>,
    Caller(caller): Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let key = target_key(&state, &caller, &id).await?;
    if key.id == caller.id {
        return Err(ApiError::invalid(
            "id",
            "a key cannot erase its own data; use another admin key",
        ));
    }
    let owner = key.id.to_string();
    let db = state.store.connection();
    // Revoked first, so that nothing new arrives while the rest goes.
    state.keys.revoke(key.id).await?;
    api_key::Entity::update_many()
        .col_expr(api_key::Column::Name, Expr::value("(erased)"))
        .filter(api_key::Column::Id.eq(key.id))
        .exec(db)
        .await
        .map_err(store_error)?;

    let erased = erase_fine_tuning(&state, &owner).await?;

    let mut held = Holdings::of(&state, &owner).await?;
    // Documents in its own collections go with them.
    held.documents.retain(|document| {
        !held
            .collections
            .iter()
            .any(|owned| owned.name == document.collection)
    });
    for row in &held.collections {
        let request = CollectionRequest {
            name: row.name.clone(),
            owner: None,
        };
        gone_is_fine(call(&state, &rag::DELETE_COLLECTION, &request).await)?;
    }
    for row in &held.documents {
        let request = DocumentRequest {
            collection: row.collection.clone(),
            id: row.document_id.clone(),
            owner: None,
        };
        gone_is_fine(call(&state, &rag::DELETE_DOCUMENT, &request).await)?;
    }

    if !held.files.is_empty() {
        let file_store = super::files::file_store(&state).await?;
        for row in &held.files {
            file_store
                .delete(&row.id)
                .await
                .map_err(|err| ApiError::from_bus(&err))?;
            file::Entity::delete_by_id(row.id.clone())
                .exec(db)
                .await
                .map_err(store_error)?;
        }
    }
    let stored_completions = stored_completion::Entity::delete_many()
        .filter(stored_completion::Column::Owner.eq(&owner))
        .exec(db)
        .await
        .map_err(store_error)?
        .rows_affected;
    let usage_anonymized = usage::Entity::update_many()
        .col_expr(usage::Column::KeyId, Expr::value(Uuid::nil()))
        .col_expr(usage::Column::EndUser, Expr::value(Option::<String>::None))
        .col_expr(
            usage::Column::PiiMasked,
            Expr::value(Option::<String>::None),
        )
        .filter(usage::Column::KeyId.eq(key.id))
        .exec(db)
        .await
        .map_err(store_error)?
        .rows_affected;
    tracing::info!(key = %key.id, by = %caller.id, "a key's data erased");
    Ok(HttpResponse::Ok().json(KeyErased {
        object: "key.erasure".to_owned(),
        key_id: owner,
        revoked: true,
        stored_completions,
        files: held.files.len() as u64,
        fine_tuning_jobs: erased.jobs.len() as u64,
        fine_tuned_models: erased.models,
        collections: held.collections.len() as u64,
        documents: held.documents.len() as u64,
        usage_anonymized,
    }))
}

/// Erases `owner`'s fine-tuning, waiting (up to [`JOBS_STOP`]) for its cancelled jobs
/// to stop.
async fn erase_fine_tuning(
    state: &AppState,
    owner: &str,
) -> Result<training::OwnerErased, ApiError> {
    let request = EraseOwner {
        owner: owner.to_owned(),
    };
    let deadline = tokio::time::Instant::now() + JOBS_STOP;
    loop {
        match call(state, &training::ERASE_OWNER, &request).await {
            Err(err) if err.status().as_u16() == 409 && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            done => return done,
        }
    }
}

/// Something already gone when an erasure reaches it is what the erasure wanted.
fn gone_is_fine<T>(result: Result<T, ApiError>) -> Result<(), ApiError> {
    match result {
        Err(err) if err.status().as_u16() != 404 => Err(err),
        _ => Ok(()),
    }
}

/// Exports what the platform holds about an end user.
#[utoipa::path(
    tag = "Keys",
    params(("user" = String, Path, description = "The end user, as requests named them")),
    responses((status = 200, description = "The end user's data", body = EndUserExport)),
    security(("api_key" = [])),
)]
#[get("/v1/end_users/{user}/export")]
pub async fn export_end_user(
    state: web::Data<AppState>,
    Caller(caller): Caller,
    user: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::Admin)?;
    let user = user.into_inner();
    let stored_completions =
        completions(&state, stored_completion::Column::EndUser.eq(&user)).await?;
    let usage = usage_rows(&state, usage::Column::EndUser.eq(&user)).await?;
    Ok(HttpResponse::Ok().json(EndUserExport {
        object: "end_user.export".to_owned(),
        exported_at: Utc::now(),
        user,
        stored_completions,
        usage,
    }))
}

/// Erases what the platform holds about an end user.
#[utoipa::path(
    tag = "Keys",
    params(("user" = String, Path, description = "The end user, as requests named them")),
    responses((status = 200, description = "What was erased", body = EndUserErased)),
    security(("api_key" = [])),
)]
#[delete("/v1/end_users/{user}/data")]
pub async fn erase_end_user(
    state: web::Data<AppState>,
    Caller(caller): Caller,
    user: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::Admin)?;
    let user = user.into_inner();
    let db = state.store.connection();
    let stored_completions = stored_completion::Entity::delete_many()
        .filter(stored_completion::Column::EndUser.eq(&user))
        .exec(db)
        .await
        .map_err(store_error)?
        .rows_affected;
    let usage_anonymized = usage::Entity::update_many()
        .col_expr(usage::Column::EndUser, Expr::value(Option::<String>::None))
        .filter(usage::Column::EndUser.eq(&user))
        .exec(db)
        .await
        .map_err(store_error)?
        .rows_affected;
    tracing::info!(by = %caller.id, "an end user's data erased");
    Ok(HttpResponse::Ok().json(EndUserErased {
        object: "end_user.erasure".to_owned(),
        user,
        stored_completions,
        usage_anonymized,
    }))
}

fn exported(row: stored_completion::Model) -> ExportedCompletion {
    ExportedCompletion {
        messages: serde_json::from_str(&row.messages).unwrap_or(Value::String(row.messages)),
        id: row.id,
        key_id: row.owner,
        end_user: row.end_user,
        model: row.model,
        answer: row.answer,
        created_at: row.created_at,
        rating: row.rating,
        correction: row.correction,
        rated_at: row.rated_at,
    }
}

fn usage_record(row: usage::Model) -> UsageRecord {
    UsageRecord {
        key_id: row.key_id.to_string(),
        end_user: row.end_user,
        endpoint: row.endpoint,
        model: row.model,
        prompt_tokens: row.prompt_tokens,
        completion_tokens: row.completion_tokens,
        latency_ms: row.latency_ms,
        status: row.status,
        created_at: row.created_at,
        pii_masked: row
            .pii_masked
            .and_then(|text| serde_json::from_str(&text).ok()),
    }
}
