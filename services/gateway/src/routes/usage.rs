//! `GET /v1/usage`: what a key has used, in all and by model (admins may ask about any
//! key with `key_id`).

use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use crate::{
    AppState,
    error::ApiError,
    http::Caller,
    keys::Scope,
    usage::{self, UsageReport},
};

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UsageQuery {
    /// Count from this time on (RFC 3339); default: since the key was made.
    pub since: Option<DateTime<Utc>>,
    /// Another key's id (needs the `admin` scope).
    pub key_id: Option<Uuid>,
}

/// Reports a key's usage.
#[utoipa::path(
    get,
    path = "/v1/usage",
    tag = "Usage",
    params(UsageQuery),
    responses((status = 200, description = "The key's usage", body = UsageReport)),
    security(("api_key" = [])),
)]
pub async fn report(
    state: web::Data<AppState>,
    Caller(caller): Caller,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let query = web::Query::<UsageQuery>::from_query(request.query_string())
        .map_err(|err| ApiError::invalid("query", format!("bad query string: {err}")))?
        .into_inner();
    let budget = match query.key_id {
        Some(id) if id != caller.id => {
            caller.require(Scope::Admin)?;
            state.keys.get(id).await?.token_budget
        }
        _ => caller.token_budget,
    };
    let id = query.key_id.unwrap_or(caller.id);
    let report = usage::report(&state.store, id, query.since, budget)
        .await
        .map_err(|err| ApiError::internal("cannot read usage", err))?;
    Ok(HttpResponse::Ok().json(report))
}
