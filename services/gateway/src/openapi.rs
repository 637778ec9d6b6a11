//! The OpenAPI 3.1 document of the API, generated from the route and body types with
//! utoipa. `schemas/gateway/openapi.json` is this document; a test fails when they differ
//! (`SLOUGH_UPDATE_SCHEMAS=1` rewrites it).

use slough_protocol::bounds::{Bounds, Field};
use utoipa::{
    Modify, OpenApi,
    openapi::{
        self, Ref, RefOr, ResponseBuilder, Schema,
        extensions::Extensions,
        schema::{ObjectBuilder, OneOfBuilder, Type},
        security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
    },
};

use crate::{error::ErrorResponse, routes};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "SloughGPT API",
        description = "An OpenAI-compatible API (chat completions, completions, embeddings, \
            models) with API key management, usage reports, and personas: who the model is, \
            applied to chats and measured; collections for retrieval; files and fine-tuning jobs \
            whose models are served; personal data found and masked in text; the platform's status \
            for operators. Every error answers with \
            OpenAI's error object.",
    ),
    components(schemas(ErrorResponse, routes::usage::Interval))
)]
struct ApiDoc;

/// The document, rendered once at start (cheap to clone into each answer).
pub struct Document {
    pub json: actix_web::web::Bytes,
}

impl Document {
    pub fn new() -> Document {
        Document {
            json: render().into(),
        }
    }
}

impl Default for Document {
    fn default() -> Self {
        Document::new()
    }
}

/// The document as pretty JSON: the routes' paths (from the one list of them in
/// `routes`), then what applies to all of them.
pub fn render() -> String {
    let mut doc = ApiDoc::openapi();
    doc.merge(routes::Api::openapi());
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    let modifiers: [&dyn Modify; 4] = [&Security, &ErrorResponses, &FieldBounds, &EventStreams];
    for modifier in modifiers {
        modifier.modify(&mut doc);
    }
    doc.to_pretty_json().unwrap_or_default()
}

/// `GET /openapi.json`: the document.
pub async fn serve(document: actix_web::web::Data<Document>) -> actix_web::HttpResponse {
    actix_web::HttpResponse::Ok()
        .content_type("application/json")
        .body(document.json.clone())
}

/// `Authorization: Bearer sk-...` on every route.
struct Security;

impl Modify for Security {
    fn modify(&self, doc: &mut openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The bounds of the generation fields, from the protocol's one table
/// (`slough_protocol::bounds`), on every request body that has them: what the document
/// promises is what the gateway and inference check.
struct FieldBounds;

/// Request bodies carrying generation fields, and their properties named otherwise
/// than the protocol's API name.
const GENERATION_BODIES: &[&str] = &["ChatCompletionRequest", "CompletionRequest"];
const ALSO_MAX_TOKENS: &str = "max_completion_tokens";

impl Modify for FieldBounds {
    fn modify(&self, doc: &mut openapi::OpenApi) {
        let Some(components) = doc.components.as_mut() else {
            return;
        };
        for body in GENERATION_BODIES {
            let Some(RefOr::T(Schema::Object(object))) = components.schemas.get_mut(*body) else {
                continue;
            };
            for (name, property) in &mut object.properties {
                let field = Field::NUMERIC.into_iter().find(|field| {
                    field.api_name() == name
                        || (*field == Field::MaxTokens && name == ALSO_MAX_TOKENS)
                });
                if let (Some(field), RefOr::T(Schema::Object(property))) = (field, property) {
                    set_bounds(property, field.bounds());
                }
            }
        }
    }
}

fn set_bounds(property: &mut openapi::schema::Object, bounds: Bounds) {
    let number = |value: f64| {
        if value.fract() == 0.0 {
            utoipa::Number::Int(value as isize)
        } else {
            utoipa::Number::Float(value)
        }
    };
    if bounds.min_exclusive {
        property.exclusive_minimum = Some(number(bounds.min));
        property.minimum = None;
    } else {
        property.minimum = Some(number(bounds.min));
    }
    property.maximum = bounds.max.map(number);
}

/// A `text/event-stream` answer documented as what it is, a stream of server-sent
/// events: each event's `data` is a JSON text of the route's schema (its
/// `contentSchema`), or `[DONE]` at the end. Tools that check streams (schemathesis)
/// validate each event, not its decoded data.
struct EventStreams;

impl Modify for EventStreams {
    fn modify(&self, doc: &mut openapi::OpenApi) {
        for item in doc.paths.paths.values_mut() {
            for operation in [&mut item.get, &mut item.post].into_iter().flatten() {
                for response in operation.responses.responses.values_mut() {
                    let RefOr::T(response) = response else {
                        continue;
                    };
                    let Some(content) = response.content.get_mut("text/event-stream") else {
                        continue;
                    };
                    if let Some(data) = content.schema.take() {
                        content.schema = Some(event_schema(&data));
                    }
                }
            }
        }
    }
}

/// One server-sent event whose `data` holds a JSON text of `data`.
fn event_schema(data: &RefOr<Schema>) -> RefOr<Schema> {
    let mut text = ObjectBuilder::new()
        .schema_type(Type::String)
        .content_media_type("application/json")
        .description(Some("A JSON text of the schema in `contentSchema`"))
        .build();
    let mut extensions = Extensions::default();
    extensions.insert(
        "contentSchema".to_owned(),
        serde_json::to_value(data).unwrap_or_default(),
    );
    text.extensions = Some(extensions);
    let done = ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(["[DONE]"]))
        .description(Some("The end of the stream"));
    let data = OneOfBuilder::new().item(text).item(done);
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some("One server-sent event"))
        .property("data", data)
        .required("data")
        .property("event", ObjectBuilder::new().schema_type(Type::String))
        .property("id", ObjectBuilder::new().schema_type(Type::String))
        .build()
        .into()
}

/// The error answers every route may give, documented once here instead of on each.
struct ErrorResponses;

const ERRORS: &[(&str, &str)] = &[
    (
        "400",
        "A field is missing, malformed or out of range (`param` names it)",
    ),
    ("401", "No API key, or an invalid or revoked one"),
    ("403", "The key lacks the scope, or may not use the model"),
    ("404", "Unknown model, key, persona or route"),
    (
        "409",
        "The id is taken, or the thing may not be changed (a built-in persona)",
    ),
    ("413", "The body is over the gateway's size limit"),
    (
        "422",
        "Well-formed, but impossible (e.g. the prompt is longer than the context)",
    ),
    (
        "429",
        "A rate limit, the token budget, or capacity reached; see `Retry-After`",
    ),
    ("500", "A bug in SloughGPT"),
    (
        "503",
        "No inference replica is answering, or the database cannot be reached; see `Retry-After`",
    ),
    ("504", "Inference did not answer in time"),
];

impl Modify for ErrorResponses {
    fn modify(&self, doc: &mut openapi::OpenApi) {
        for item in doc.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.post,
                &mut item.patch,
                &mut item.delete,
            ];
            for operation in operations.into_iter().flatten() {
                for (status, description) in ERRORS {
                    let response = ResponseBuilder::new()
                        .description(*description)
                        .content(
                            "application/json",
                            openapi::ContentBuilder::new()
                                .schema(Some(Ref::from_schema_name("ErrorResponse")))
                                .build(),
                        )
                        .build();
                    operation
                        .responses
                        .responses
                        .entry((*status).to_owned())
                        .or_insert(response.into());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `schemas/gateway/openapi.json` is what the code generates.
    #[test]
    fn the_checked_in_document_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../schemas/gateway/openapi.json");
        let current = render() + "\n";
        if std::env::var_os("SLOUGH_UPDATE_SCHEMAS").is_some() {
            std::fs::write(&path, &current).unwrap();
            return;
        }
        let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            checked_in == current,
            "{} is stale: run SLOUGH_UPDATE_SCHEMAS=1 cargo test -p slough-gateway",
            path.display()
        );
    }

    #[test]
    fn the_document_is_openapi_3_1_with_every_route() {
        let doc: serde_json::Value = serde_json::from_str(&render()).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
        for path in [
            "/v1/chat/completions",
            "/v1/completions",
            "/v1/embeddings",
            "/v1/models",
            "/v1/models/{model}",
            "/v1/keys",
            "/v1/keys/{id}",
            "/v1/usage",
            "/v1/personas",
            "/v1/personas/{id}",
            "/v1/personality/analyze",
            "/v1/collections",
            "/v1/collections/{name}/documents",
            "/v1/collections/{name}/search",
        ] {
            assert!(doc["paths"][path].is_object(), "{path} missing");
        }
        assert!(doc["paths"]["/v1/chat/completions"]["post"]["responses"]["429"].is_object());
    }
}
