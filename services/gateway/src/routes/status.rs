//! `GET /v1/status` (admin keys): every running service instance as monitoring sees it,
//! the same report as `slough status` and monitoring's own status port, through the
//! public API so that the console can show it.

use actix_web::get;
use actix_web::{HttpResponse, web};
use slough_protocol::status::{self, StatusReport, StatusRequest};

use super::call;
use crate::{error::ApiError, http::Caller, keys::Scope, state::AppState};

/// Every service instance with its version, uptime, health and request counts.
#[utoipa::path(
    tag = "Operations",
    responses((status = 200, description = "The platform's instances", body = StatusReport)),
    security(("api_key" = [])),
)]
#[get("/v1/status")]
pub async fn report(
    state: web::Data<AppState>,
    Caller(caller): Caller,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::Admin)?;
    let report = call(&state, &status::STATUS, &StatusRequest {}).await?;
    Ok(HttpResponse::Ok().json(report))
}
