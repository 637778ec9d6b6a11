//! `/v1/fine_tuning/jobs`: fine-tuning jobs, shaped as OpenAI's (scope `fine-tune`),
//! run by the training service. A key sees its own jobs; an admin key sees every job.

use actix_web::{HttpResponse, web};
use actix_web::{get, post};
use serde::Deserialize;
use slough_protocol::training::{
    self, CheckpointList, CreateJob, CreateJobRequest, EventList, Job, JobList, JobRequest,
    ListJobItems, ListJobs,
};
use utoipa::IntoParams;

use super::call;
use crate::{
    error::ApiError,
    http::{Caller, JsonBody},
    keys::Scope,
    state::AppState,
};

/// Paging of lists: items after `after`, at most `limit`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    pub after: Option<String>,
    /// 1 to 100.
    pub limit: Option<u32>,
    /// OpenAI's metadata filter (`metadata[key]=value`) is accepted and not applied.
    #[serde(flatten)]
    #[param(ignore)]
    pub rest: std::collections::HashMap<String, String>,
}

impl PageQuery {
    /// Refuses parameters other than `after`, `limit` and `metadata[...]`.
    fn check(&self) -> Result<(), ApiError> {
        match self.rest.keys().find(|k| !k.starts_with("metadata[")) {
            Some(unknown) => Err(ApiError::invalid(
                unknown.as_str(),
                format!("unknown query parameter `{unknown}`"),
            )),
            None => Ok(()),
        }
    }
}

/// Creates a job.
#[utoipa::path(
    tag = "OpenAI",
    request_body = CreateJob,
    responses((status = 200, description = "The job, validating its files", body = Job)),
    security(("api_key" = [])),
)]
#[post("/v1/fine_tuning/jobs")]
pub async fn create(
    state: web::Data<AppState>,
    Caller(caller): Caller,
    JsonBody(body): JsonBody<CreateJob>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::FineTune)?;
    let request = CreateJobRequest {
        owner: caller.id.to_string(),
        job: body,
    };
    let job = call(&state, &training::CREATE_JOB, &request).await?;
    tracing::info!(job = %job.id, model = %job.model, by = %caller.id, "fine-tuning job created");
    Ok(HttpResponse::Ok().json(job))
}

/// Lists jobs, newest first.
#[utoipa::path(
    tag = "OpenAI",
    params(PageQuery),
    responses((status = 200, description = "Jobs", body = JobList)),
    security(("api_key" = [])),
)]
#[get("/v1/fine_tuning/jobs")]
pub async fn list(
    state: web::Data<AppState>,
    Caller(caller): Caller,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::FineTune)?;
    query.check()?;
    let request = ListJobs {
        owner: caller.owner_filter(),
        after: query.after.clone(),
        limit: query.limit,
    };
    Ok(HttpResponse::Ok().json(call(&state, &training::LIST_JOBS, &request).await?))
}

fn job(caller: &crate::keys::ApiKey, id: String) -> JobRequest {
    JobRequest {
        id,
        owner: caller.owner_filter(),
    }
}

/// A page of one job's events or checkpoints, for a `fine-tune` key.
fn items(
    caller: &crate::keys::ApiKey,
    id: String,
    query: &PageQuery,
) -> Result<ListJobItems, ApiError> {
    caller.require(Scope::FineTune)?;
    query.check()?;
    Ok(ListJobItems {
        job: job(caller, id),
        after: query.after.clone(),
        limit: query.limit,
    })
}

/// One job.
#[utoipa::path(
    tag = "OpenAI",
    params(("job_id" = String, Path, description = "The job's id")),
    responses((status = 200, description = "The job", body = Job)),
    security(("api_key" = [])),
)]
#[get("/v1/fine_tuning/jobs/{job_id}")]
pub async fn get(
    state: web::Data<AppState>,
    Caller(caller): Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::FineTune)?;
    let request = job(&caller, id.into_inner());
    Ok(HttpResponse::Ok().json(call(&state, &training::GET_JOB, &request).await?))
}

/// Cancels a job that has not ended.
#[utoipa::path(
    tag = "OpenAI",
    params(("job_id" = String, Path, description = "The job's id")),
    responses((status = 200, description = "The cancelled job", body = Job)),
    security(("api_key" = [])),
)]
#[post("/v1/fine_tuning/jobs/{job_id}/cancel")]
pub async fn cancel(
    state: web::Data<AppState>,
    Caller(caller): Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::FineTune)?;
    let request = job(&caller, id.into_inner());
    let cancelled = call(&state, &training::CANCEL_JOB, &request).await?;
    tracing::info!(job = %cancelled.id, by = %caller.id, "fine-tuning job cancelled");
    Ok(HttpResponse::Ok().json(cancelled))
}

/// A job's events, newest first.
#[utoipa::path(
    tag = "OpenAI",
    params(("job_id" = String, Path, description = "The job's id"), PageQuery),
    responses((status = 200, description = "Events", body = EventList)),
    security(("api_key" = [])),
)]
#[get("/v1/fine_tuning/jobs/{job_id}/events")]
pub async fn events(
    state: web::Data<AppState>,
    Caller(caller): Caller,
    id: web::Path<String>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let request = items(&caller, id.into_inner(), &query)?;
    Ok(HttpResponse::Ok().json(call(&state, &training::LIST_EVENTS, &request).await?))
}

/// A job's checkpoints, newest first.
#[utoipa::path(
    tag = "OpenAI",
    params(("job_id" = String, Path, description = "The job's id"), PageQuery),
    responses((status = 200, description = "Checkpoints", body = CheckpointList)),
    security(("api_key" = [])),
)]
#[get("/v1/fine_tuning/jobs/{job_id}/checkpoints")]
pub async fn checkpoints(
    state: web::Data<AppState>,
    Caller(caller): Caller,
    id: web::Path<String>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let request = items(&caller, id.into_inner(), &query)?;
    Ok(HttpResponse::Ok().json(call(&state, &training::LIST_CHECKPOINTS, &request).await?))
}
