//! The API's routes, one module per resource, and the table that binds them to paths.
//! Each route checks the caller's scope, its body, the model it may use and its limits,
//! in that order, before anything reaches another service.

pub mod chat;
pub mod collections;
pub mod completions;
pub mod embeddings;
pub mod feedback;
pub mod files;
pub mod fine_tuning;
pub mod keys;
pub mod models;
pub mod personality;
pub mod status;
pub mod usage;

use actix_web::{HttpResponse, Resource, web};

use crate::http::wrong_method;

/// Binds every route; other methods on these paths get a 405.
pub fn configure(config: &mut web::ServiceConfig) {
    config
        .service(resource("/v1/chat/completions").route(web::post().to(chat::create)))
        .service(
            resource("/v1/chat/completions/{id}/feedback").route(web::post().to(feedback::create)),
        )
        .service(resource("/v1/completions").route(web::post().to(completions::create)))
        .service(resource("/v1/embeddings").route(web::post().to(embeddings::create)))
        .service(resource("/v1/models").route(web::get().to(models::list)))
        .service(
            resource("/v1/models/{model}")
                .route(web::get().to(models::get))
                .route(web::delete().to(models::delete)),
        )
        .service(
            resource("/v1/files")
                .route(web::get().to(files::list))
                .route(web::post().to(files::upload)),
        )
        .service(
            resource("/v1/files/{id}")
                .route(web::get().to(files::get))
                .route(web::delete().to(files::delete)),
        )
        .service(resource("/v1/files/{id}/content").route(web::get().to(files::content)))
        .service(
            resource("/v1/fine_tuning/jobs")
                .route(web::get().to(fine_tuning::list))
                .route(web::post().to(fine_tuning::create)),
        )
        .service(resource("/v1/fine_tuning/jobs/{id}").route(web::get().to(fine_tuning::get)))
        .service(
            resource("/v1/fine_tuning/jobs/{id}/cancel").route(web::post().to(fine_tuning::cancel)),
        )
        .service(
            resource("/v1/fine_tuning/jobs/{id}/events").route(web::get().to(fine_tuning::events)),
        )
        .service(
            resource("/v1/fine_tuning/jobs/{id}/checkpoints")
                .route(web::get().to(fine_tuning::checkpoints)),
        )
        .service(
            resource("/v1/keys")
                .route(web::get().to(keys::list))
                .route(web::post().to(keys::create)),
        )
        .service(
            resource("/v1/keys/{id}")
                .route(web::get().to(keys::get))
                .route(web::patch().to(keys::update))
                .route(web::delete().to(keys::revoke)),
        )
        .service(resource("/v1/usage").route(web::get().to(usage::report)))
        .service(
            resource("/v1/personas")
                .route(web::get().to(personality::list))
                .route(web::post().to(personality::create)),
        )
        .service(
            resource("/v1/personas/{id}")
                .route(web::get().to(personality::get))
                .route(web::post().to(personality::update))
                .route(web::delete().to(personality::delete)),
        )
        .service(resource("/v1/personas/{id}/preview").route(web::post().to(personality::preview)))
        .service(resource("/v1/status").route(web::get().to(status::report)))
        .service(resource("/v1/personality/analyze").route(web::post().to(personality::analyze)))
        .service(
            resource("/v1/collections")
                .route(web::get().to(collections::list))
                .route(web::post().to(collections::create)),
        )
        .service(
            resource("/v1/collections/{name}")
                .route(web::get().to(collections::get))
                .route(web::delete().to(collections::delete)),
        )
        .service(
            resource("/v1/collections/{name}/documents").route(web::post().to(collections::ingest)),
        )
        .service(
            resource("/v1/collections/{name}/documents/{id}")
                .route(web::delete().to(collections::delete_document)),
        )
        .service(
            resource("/v1/collections/{name}/search").route(web::post().to(collections::search)),
        )
        .service(resource("/openapi.json").route(web::get().to(openapi)));
}

/// Calls a service's endpoint; its error becomes the matching HTTP answer.
async fn call<Req: serde::Serialize, Resp: serde::de::DeserializeOwned>(
    state: &crate::AppState,
    endpoint: &slough_protocol::Endpoint<Req, Resp>,
    request: &Req,
) -> Result<Resp, crate::error::ApiError> {
    state
        .bus
        .call(endpoint, request)
        .await
        .map_err(|err| crate::error::ApiError::from_bus(&err))
}

fn resource(path: &str) -> Resource {
    web::resource(path).default_service(web::to(wrong_method))
}

/// The OpenAPI document of this API.
async fn openapi(document: web::Data<crate::openapi::Document>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(document.json.clone())
}
