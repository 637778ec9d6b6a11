//! `/v1/files`: uploaded files, shaped as OpenAI's (scope `fine-tune`). The content goes
//! to the bus's file store (a JetStream object store every service reads), the
//! metadata to the store. A key sees its own files; an admin key sees every file.
//! A `fine-tune` file is checked line by line on upload (JSON objects with a `messages`
//! list, or with `text` and `label` for a classifier); the training service checks the
//! rest when a job starts.

use actix_web::{HttpRequest, HttpResponse, http::header::CONTENT_TYPE, web};
use actix_web::{delete, get, post};
use chrono::Utc;
use sea_orm::{
    ActiveModelTrait as _, ColumnTrait as _, EntityTrait as _, QueryFilter as _, QueryOrder as _,
    QuerySelect as _, Set,
};
use serde::{Deserialize, Serialize};
use slough_bus::FileStore;
use slough_store::entities::file;
use utoipa::{IntoParams, ToSchema};

use crate::{
    error::ApiError,
    http::{Caller, read_body},
    keys::Scope,
    privacy::{self, PiiScan},
    quotas,
    state::AppState,
};

/// The largest file an upload may carry.
pub const MAX_FILE_BYTES: usize = 64 * 1024 * 1024;
/// The purposes a file may have.
const PURPOSES: [&str; 1] = ["fine-tune"];

/// A file (OpenAI's `file` object).
#[derive(Debug, Serialize, ToSchema)]
pub struct FileObject {
    /// `file-...`.
    pub id: String,
    /// Always `file`.
    pub object: String,
    pub bytes: u64,
    /// Unix seconds.
    pub created_at: i64,
    pub filename: String,
    pub purpose: String,
    /// Always `processed`: a file is checked before it is stored.
    pub status: String,
    pub expires_at: Option<i64>,
    pub status_details: Option<String>,
    /// Extension, with `?pii_scan=true` on upload: the personal data in the file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pii_scan: Option<PiiScan>,
}

/// How an upload is checked.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UploadQuery {
    /// Count the personal data in the file (by type, and by line) and answer with it
    /// in `pii_scan`; the file is stored either way.
    #[serde(default)]
    pub pii_scan: bool,
}

impl From<&file::Model> for FileObject {
    fn from(row: &file::Model) -> FileObject {
        FileObject {
            id: row.id.clone(),
            object: "file".to_owned(),
            bytes: row.bytes as u64,
            created_at: row.created_at.timestamp(),
            filename: row.filename.clone(),
            purpose: row.purpose.clone(),
            status: "processed".to_owned(),
            expires_at: None,
            status_details: None,
            pii_scan: None,
        }
    }
}

/// A page of files.
#[derive(Debug, Serialize, ToSchema)]
pub struct FileList {
    /// Always `list`.
    pub object: String,
    pub data: Vec<FileObject>,
    pub has_more: bool,
}

/// A deleted file.
#[derive(Debug, Serialize, ToSchema)]
pub struct FileDeleted {
    pub id: String,
    /// Always `file`.
    pub object: String,
    pub deleted: bool,
}

/// `GET /v1/files` filters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only files with this purpose.
    pub purpose: Option<String>,
    /// 1 to 10000 (default 10000).
    pub limit: Option<u64>,
    /// Files after this one (in `order`).
    pub after: Option<String>,
    /// `desc` (newest first, default) or `asc`.
    pub order: Option<String>,
}

/// The file store, opened on first use (the gateway runs without JetStream until a
/// file is uploaded).
pub(super) async fn file_store(state: &AppState) -> Result<&FileStore, ApiError> {
    state
        .files
        .get_or_try_init(|| FileStore::open(&state.bus))
        .await
        .map_err(|err| ApiError::from_bus(&err))
}

fn store_error(err: sea_orm::DbErr) -> ApiError {
    ApiError::store("file store", &err)
}

/// Uploads a file (`multipart/form-data` with `purpose` and `file`).
#[utoipa::path(
    tag = "OpenAI",
    params(UploadQuery),
    request_body(content_type = "multipart/form-data", content = String, description = "`purpose` (`fine-tune`) and `file` (JSONL of `{\"messages\": [...]}`)"),
    responses((status = 200, description = "The file", body = FileObject)),
    security(("api_key" = [])),
)]
#[post("/v1/files")]
pub async fn upload(
    state: web::Data<AppState>,
    Caller(caller): Caller,
    request: HttpRequest,
    query: web::Query<UploadQuery>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::FineTune)?;
    let content_type = request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    let boundary = multer::parse_boundary(content_type).map_err(|_| {
        ApiError::malformed("upload a file as multipart/form-data with `purpose` and `file`")
    })?;
    let body = read_body(
        payload.into_inner(),
        MAX_FILE_BYTES + 64 * 1024,
        state.body_timeout,
    )
    .await
    .map_err(|err| {
        if err.status().as_u16() == 413 {
            ApiError::too_large(MAX_FILE_BYTES)
        } else {
            err
        }
    })?;
    let stream = futures::stream::once(async move { Ok::<_, std::io::Error>(body) });
    let mut form = multer::Multipart::new(stream, boundary);
    let mut purpose = None;
    let mut upload = None;
    while let Some(field) = form
        .next_field()
        .await
        .map_err(|err| ApiError::malformed(format!("the multipart body is malformed: {err}")))?
    {
        match field.name() {
            Some("purpose") => {
                purpose =
                    Some(field.text().await.map_err(|err| {
                        ApiError::malformed(format!("cannot read `purpose`: {err}"))
                    })?);
            }
            Some("file") => {
                let name = field.file_name().unwrap_or("upload.jsonl").to_owned();
                let bytes = field.bytes().await.map_err(|err| {
                    ApiError::malformed(format!("cannot read the file {name}: {err}"))
                })?;
                upload = Some((name, bytes));
            }
            other => {
                let name = other.unwrap_or("(unnamed)").to_owned();
                return Err(ApiError::invalid(
                    &name,
                    format!("unknown form field `{name}`; send `purpose` and `file`"),
                ));
            }
        }
    }
    let purpose = purpose.ok_or_else(|| ApiError::invalid("purpose", "`purpose` is missing"))?;
    if !PURPOSES.contains(&purpose.as_str()) {
        return Err(ApiError::invalid(
            "purpose",
            format!(
                "purpose `{purpose}` is not supported; use one of: {}",
                PURPOSES.join(", ")
            ),
        ));
    }
    let (filename, bytes) = upload.ok_or_else(|| ApiError::invalid("file", "`file` is missing"))?;
    if bytes.len() > MAX_FILE_BYTES {
        return Err(ApiError::too_large(MAX_FILE_BYTES));
    }
    check_fine_tune_file(&filename, &bytes)?;
    quotas::check_files(&state, &caller, bytes.len() as u64).await?;
    let scanned = if query.pii_scan {
        let text = bytes.clone();
        let scan =
            web::block(move || privacy::scan_lines(std::str::from_utf8(&text).unwrap_or_default()))
                .await
                .map_err(|err| ApiError::internal("the PII scan stopped", err))?;
        Some(scan)
    } else {
        None
    };

    let id = format!("file-{}", &uuid::Uuid::new_v4().simple().to_string()[..24]);
    let size = file_store(&state)
        .await?
        .put(&id, &mut bytes.as_ref())
        .await
        .map_err(|err| ApiError::from_bus(&err))?;
    let row = file::ActiveModel {
        id: Set(id.clone()),
        owner: Set(caller.id.to_string()),
        filename: Set(filename),
        purpose: Set(purpose),
        bytes: Set(size as i64),
        created_at: Set(Utc::now()),
    };
    let row = match row.insert(state.store.connection()).await {
        Ok(row) => row,
        Err(err) => {
            // Nothing half-stored: the content goes when its row cannot be written.
            let _ = file_store(&state).await?.delete(&id).await;
            return Err(store_error(err));
        }
    };
    tracing::info!(file = %id, bytes = size, by = %caller.id, "file uploaded");
    let mut answer = FileObject::from(&row);
    answer.pii_scan = scanned;
    Ok(HttpResponse::Ok().json(answer))
}

/// Lines of a fine-tuning file that are neither chat examples nor labelled texts, named.
fn check_fine_tune_file(filename: &str, bytes: &[u8]) -> Result<(), ApiError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| ApiError::invalid("file", format!("{filename} is not UTF-8 text")))?;
    let mut examples = 0;
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(line).map_err(|err| {
            ApiError::invalid(
                "file",
                format!("{filename} line {}: not valid JSON: {err}", index + 1),
            )
        })?;
        let chat = value.get("messages").is_some_and(|m| m.is_array());
        let labelled = ["text", "label"]
            .iter()
            .all(|field| value.get(field).is_some_and(|v| v.is_string()));
        if !chat && !labelled {
            return Err(ApiError::invalid(
                "file",
                format!(
                    "{filename} line {}: each line must be an object with a `messages` list (a chat example) or a `text` and a `label` (a classifier's example)",
                    index + 1
                ),
            ));
        }
        examples += 1;
    }
    if examples == 0 {
        return Err(ApiError::invalid(
            "file",
            format!("{filename} holds no examples"),
        ));
    }
    Ok(())
}

/// The caller's file `id` (any file for an admin key), or 404.
async fn find(
    state: &AppState,
    caller: &crate::keys::ApiKey,
    id: &str,
) -> Result<file::Model, ApiError> {
    file::Entity::find_by_id(id.to_owned())
        .one(state.store.connection())
        .await
        .map_err(store_error)?
        .filter(|row| caller.owner_filter().is_none_or(|owner| row.owner == owner))
        .ok_or_else(|| {
            ApiError::not_found("file_not_found", format!("file `{id}` does not exist"))
                .with_param("file_id")
        })
}

/// Lists files.
#[utoipa::path(
    tag = "OpenAI",
    params(ListQuery),
    responses((status = 200, description = "Files", body = FileList)),
    security(("api_key" = [])),
)]
#[get("/v1/files")]
pub async fn list(
    state: web::Data<AppState>,
    Caller(caller): Caller,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::FineTune)?;
    let query = query.into_inner();
    let limit = query.limit.unwrap_or(10_000);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::invalid(
            "limit",
            format!("limit is {limit}; it must be 1 to 10000"),
        ));
    }
    let ascending = match query.order.as_deref() {
        None | Some("desc") => false,
        Some("asc") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                "order",
                format!("order `{other}` is not `asc` or `desc`"),
            ));
        }
    };
    let mut select = file::Entity::find();
    if let Some(owner) = caller.owner_filter() {
        select = select.filter(file::Column::Owner.eq(owner));
    }
    if let Some(purpose) = &query.purpose {
        select = select.filter(file::Column::Purpose.eq(purpose.as_str()));
    }
    if let Some(after) = &query.after {
        let cursor = find(&state, &caller, after)
            .await
            .map_err(|e| e.with_param("after"))?;
        select = if ascending {
            select.filter(file::Column::CreatedAt.gt(cursor.created_at))
        } else {
            select.filter(file::Column::CreatedAt.lt(cursor.created_at))
        };
    }
    select = if ascending {
        select
            .order_by_asc(file::Column::CreatedAt)
            .order_by_asc(file::Column::Id)
    } else {
        select
            .order_by_desc(file::Column::CreatedAt)
            .order_by_desc(file::Column::Id)
    };
    let mut rows = select
        .limit(limit + 1)
        .all(state.store.connection())
        .await
        .map_err(store_error)?;
    let has_more = rows.len() as u64 > limit;
    rows.truncate(limit as usize);
    Ok(HttpResponse::Ok().json(FileList {
        object: "list".to_owned(),
        data: rows.iter().map(FileObject::from).collect(),
        has_more,
    }))
}

/// One file.
#[utoipa::path(
    tag = "OpenAI",
    params(("file_id" = String, Path, description = "The file's id")),
    responses((status = 200, description = "The file", body = FileObject)),
    security(("api_key" = [])),
)]
#[get("/v1/files/{file_id}")]
pub async fn get(
    state: web::Data<AppState>,
    Caller(caller): Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::FineTune)?;
    let row = find(&state, &caller, &id).await?;
    Ok(HttpResponse::Ok().json(FileObject::from(&row)))
}

/// A file's content.
#[utoipa::path(
    tag = "OpenAI",
    params(("file_id" = String, Path, description = "The file's id")),
    responses((status = 200, description = "The file's bytes", content_type = "application/octet-stream", body = String)),
    security(("api_key" = [])),
)]
#[get("/v1/files/{file_id}/content")]
pub async fn content(
    state: web::Data<AppState>,
    Caller(caller): Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::FineTune)?;
    let row = find(&state, &caller, &id).await?;
    let bytes = file_store(&state)
        .await?
        .get(&row.id)
        .await
        .map_err(|err| ApiError::from_bus(&err))?;
    Ok(HttpResponse::Ok()
        .content_type("application/octet-stream")
        .body(bytes))
}

/// Deletes a file.
#[utoipa::path(
    tag = "OpenAI",
    params(("file_id" = String, Path, description = "The file's id")),
    responses((status = 200, description = "The file is gone", body = FileDeleted)),
    security(("api_key" = [])),
)]
#[delete("/v1/files/{file_id}")]
pub async fn delete(
    state: web::Data<AppState>,
    Caller(caller): Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::FineTune)?;
    let row = find(&state, &caller, &id).await?;
    file::Entity::delete_by_id(row.id.clone())
        .exec(state.store.connection())
        .await
        .map_err(store_error)?;
    file_store(&state)
        .await?
        .delete(&row.id)
        .await
        .map_err(|err| ApiError::from_bus(&err))?;
    tracing::info!(file = %row.id, by = %caller.id, "file deleted");
    Ok(HttpResponse::Ok().json(FileDeleted {
        id: row.id,
        object: "file".to_owned(),
        deleted: true,
    }))
}
