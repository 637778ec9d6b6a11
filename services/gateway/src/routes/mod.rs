//! The API's routes, one module per resource, and the one list of them ([`api!`]) that
//! binds them and documents them. Each route checks the caller's scope, its body, the
//! model it may use and its limits, in that order, before anything reaches another
//! service.

pub mod audit;
pub mod chat;
pub mod collections;
pub mod completions;
pub mod embeddings;
pub mod feedback;
pub mod files;
pub mod fine_tuning;
pub mod keys;
pub mod models;
pub mod personal_data;
pub mod personality;
pub mod pii;
pub mod status;
pub mod usage;

use actix_web::{dev::ResourceDef, http::Method, web};
use utoipa::OpenApi as _;

use crate::error::ApiError;

/// Declares the API once: each handler's method and path are its actix attribute
/// (`#[post("/v1/chat/completions")]`), its OpenAPI operation is its `#[utoipa::path]`
/// beside it, and this list binds them ([`configure`]) and documents them ([`Api`]).
macro_rules! api {
    ($($handler:path),* $(,)?) => {
        /// Binds every route of the list.
        pub fn configure(config: &mut web::ServiceConfig) {
            $(config.service($handler);)*
        }

        /// The OpenAPI paths of every route of the list.
        #[derive(utoipa::OpenApi)]
        #[openapi(paths($($handler),*))]
        pub struct Api;
    };
}

api! {
    chat::create,
    feedback::create,
    completions::create,
    embeddings::create,
    models::list,
    models::get,
    models::delete,
    files::upload,
    files::list,
    files::get,
    files::content,
    files::delete,
    fine_tuning::create,
    fine_tuning::list,
    fine_tuning::get,
    fine_tuning::cancel,
    fine_tuning::events,
    fine_tuning::checkpoints,
    keys::create,
    keys::list,
    keys::get,
    keys::update,
    keys::revoke,
    personal_data::export_key,
    personal_data::erase_key,
    personal_data::export_end_user,
    personal_data::erase_end_user,
    usage::report,
    audit::list,
    personality::list,
    personality::get,
    personality::create,
    personality::update,
    personality::delete,
    personality::preview,
    personality::analyze,
    pii::analyze,
    pii::anonymize,
    collections::create,
    collections::list,
    collections::get,
    collections::delete,
    collections::ingest,
    collections::delete_document,
    collections::search,
    status::report,
}

/// The routes' paths and the methods each takes, from [`Api`]: what tells a request
/// on a known path with another method (405) from one on no path at all (404).
pub struct Known {
    routes: Vec<(ResourceDef, Vec<Method>)>,
}

impl Known {
    pub fn new() -> Known {
        let paths = Api::openapi().paths.paths;
        let routes = paths
            .into_iter()
            .map(|(path, item)| {
                let methods = [
                    (Method::GET, item.get.is_some()),
                    (Method::POST, item.post.is_some()),
                    (Method::PUT, item.put.is_some()),
                    (Method::PATCH, item.patch.is_some()),
                    (Method::DELETE, item.delete.is_some()),
                ]
                .into_iter()
                .filter_map(|(method, taken)| taken.then_some(method))
                .collect();
                (ResourceDef::new(path), methods)
            })
            .collect();
        Known { routes }
    }

    /// The methods `path` takes, when it is a route's path.
    pub fn methods(&self, path: &str) -> Option<&[Method]> {
        self.routes
            .iter()
            .find(|(def, _)| def.is_match(path))
            .map(|(_, methods)| methods.as_slice())
    }
}

impl Default for Known {
    fn default() -> Self {
        Known::new()
    }
}

/// Any request no route takes: 405 on a route's path with another method, 404 on any
/// other path.
pub async fn no_route(
    request: actix_web::HttpRequest,
    known: web::Data<Known>,
) -> Result<actix_web::HttpResponse, ApiError> {
    let (method, path) = (request.method(), request.path());
    match known.methods(path) {
        Some(_) => Err(ApiError::method_not_allowed(format!(
            "{path} does not take {method}"
        ))),
        None => Err(ApiError::not_found(
            "unknown_route",
            format!("no route for {method} {path}"),
        )),
    }
}

/// Calls a service's endpoint; its error becomes the matching HTTP answer.
async fn call<Req: serde::Serialize, Resp: serde::de::DeserializeOwned>(
    state: &crate::state::AppState,
    endpoint: &slough_protocol::Endpoint<Req, Resp>,
    request: &Req,
) -> Result<Resp, ApiError> {
    state
        .bus
        .call(endpoint, request)
        .await
        .map_err(|err| ApiError::from_bus(&err))
}
