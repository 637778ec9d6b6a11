//! `POST /v1/chat/completions/{id}/feedback` (extension): a rating and optionally a
//! better answer for a completion made with `store: true`, by the key that made it (or
//! an admin key). `slough datasets from-feedback` turns them into a fine-tuning file.

use actix_web::post;
use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{
    error::ApiError,
    http::{Caller, JsonBody},
    keys::Scope,
    state::AppState,
    stored::{self, RATINGS},
};

/// Feedback on a stored completion.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FeedbackBody {
    /// 1 (bad) to 5 (good).
    #[schema(minimum = 1, maximum = 5)]
    pub rating: i32,
    /// A better answer; a corrected completion goes into datasets with it.
    #[serde(default)]
    pub correction: Option<String>,
}

/// The feedback as recorded.
#[derive(Debug, Serialize, ToSchema)]
pub struct Feedback {
    /// The completion's id.
    pub id: String,
    /// Always `chat.completion.feedback`.
    pub object: String,
    pub rating: i32,
    pub corrected: bool,
}

/// Rates a stored chat completion.
#[utoipa::path(
    tag = "Extensions",
    params(("completion_id" = String, Path, description = "The id of a completion made with `store: true`")),
    request_body = FeedbackBody,
    responses((status = 200, description = "The feedback is recorded", body = Feedback)),
    security(("api_key" = [])),
)]
#[post("/v1/chat/completions/{completion_id}/feedback")]
pub async fn create(
    state: web::Data<AppState>,
    Caller(key): Caller,
    id: web::Path<String>,
    JsonBody(body): JsonBody<FeedbackBody>,
) -> Result<HttpResponse, ApiError> {
    key.require(Scope::Inference)?;
    if !RATINGS.contains(&body.rating) {
        return Err(ApiError::invalid(
            "rating",
            format!("rating is {}; it must be 1 to 5", body.rating),
        ));
    }
    if body
        .correction
        .as_deref()
        .is_some_and(|c| c.trim().is_empty())
    {
        return Err(ApiError::invalid("correction", "correction is empty"));
    }
    let id = id.into_inner();
    let owner = key.owner_filter();
    let correction = match body.correction.as_deref() {
        Some(correction) if state.mask_stored_pii => Some(crate::privacy::masked(correction)),
        correction => correction.map(str::to_owned),
    };
    let rated = stored::rate(
        &state.store,
        &id,
        owner.as_deref(),
        body.rating,
        correction.as_deref(),
    )
    .await
    .map_err(|err| ApiError::store("stored completions", &err))?;
    if !rated {
        return Err(ApiError::not_found(
            "completion_not_found",
            format!("no stored completion `{id}` (only completions made with `store: true` take feedback)"),
        )
        .with_param("completion_id"));
    }
    Ok(HttpResponse::Ok().json(Feedback {
        id,
        object: "chat.completion.feedback".to_owned(),
        rating: body.rating,
        corrected: body.correction.is_some(),
    }))
}
