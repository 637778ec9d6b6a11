//! `/v1/collections`: the RAG service's collections, documents and search. A collection
//! belongs to the key that created it: that key (and any admin) lists, describes and
//! searches it, and with the `rag` scope ingests into it and deletes from it; to other
//! keys it does not exist. Creating takes the `rag` scope.

use actix_web::{HttpRequest, HttpResponse, http::header::CONTENT_TYPE, web};
use actix_web::{delete, get, post};
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use slough_protocol::rag::{
    self, Collection, CollectionRequest, CreateCollection, CreateCollectionRequest, Document,
    DocumentDeleted, DocumentRequest, IngestRequest, IngestResponse, ListCollections, SearchMode,
    SearchRequest, SearchResponse,
};
use utoipa::{IntoParams, ToSchema};

use super::call;
use crate::generation::event_data;
use crate::{
    error::{ApiError, ErrorResponse},
    http::{Body, Caller, Connection, JsonBody},
    keys::Scope,
    quotas,
    state::AppState,
    upload::{self, DocumentsBody},
};

/// Every collection.
#[derive(Debug, Serialize, ToSchema)]
pub struct CollectionList {
    /// Always `list`.
    pub object: String,
    pub data: Vec<Collection>,
}

/// A search of one collection.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchBody {
    pub query: String,
    /// Hits to return, 1 to 100 (default 5).
    #[serde(default)]
    pub top_k: Option<u32>,
    /// `dense`, `sparse` or `hybrid` (default).
    #[serde(default)]
    pub mode: Option<SearchMode>,
    /// Only chunks whose document metadata has each of these fields equal to the value
    /// (a string, an integer or a boolean).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub filter: Option<serde_json::Map<String, serde_json::Value>>,
}

/// The most text one ingest call carries on the bus; a larger upload is sent in
/// several, one after the other.
const BATCH_BYTES: usize = 256 * 1024;
/// The most documents one ingest call carries.
const BATCH_DOCUMENTS: usize = 32;
/// The most documents one upload holds (its text is bounded by `gateway.max_body_bytes`).
pub const MAX_UPLOAD_DOCUMENTS: usize = 10_000;
/// How long one ingest call may take: splitting and embedding are CPU-bound, and a
/// batch holds up to [`BATCH_BYTES`] of text.
const INGEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// Creates a collection.
#[utoipa::path(
    tag = "Collections",
    request_body = CreateCollection,
    responses((status = 201, description = "The new collection", body = Collection)),
    security(("api_key" = [])),
)]
#[post("/v1/collections")]
pub async fn create(
    state: web::Data<AppState>,
    Caller(caller): Caller,
    JsonBody(body): JsonBody<CreateCollection>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::Rag)?;
    let request = CreateCollectionRequest {
        owner: caller.id.to_string(),
        collection: body,
    };
    let collection = call(&state, &rag::CREATE_COLLECTION, &request).await?;
    tracing::info!(collection = %collection.name, by = %caller.id, "collection created");
    Ok(HttpResponse::Created().json(collection))
}

/// Lists the collections with their sizes.
#[utoipa::path(
    tag = "Collections",
    responses((status = 200, description = "The collections", body = CollectionList)),
    security(("api_key" = [])),
)]
#[get("/v1/collections")]
pub async fn list(
    state: web::Data<AppState>,
    Caller(caller): Caller,
) -> Result<HttpResponse, ApiError> {
    let request = ListCollections {
        owner: caller.owner_filter(),
    };
    let list = call(&state, &rag::LIST_COLLECTIONS, &request).await?;
    Ok(HttpResponse::Ok().json(CollectionList {
        object: "list".to_owned(),
        data: list.collections,
    }))
}

/// Describes one collection.
#[utoipa::path(
    tag = "Collections",
    params(("name" = String, Path, description = "The collection's name")),
    responses((status = 200, description = "The collection", body = Collection)),
    security(("api_key" = [])),
)]
#[get("/v1/collections/{name}")]
pub async fn get(
    state: web::Data<AppState>,
    Caller(caller): Caller,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let request = CollectionRequest {
        name: name.into_inner(),
        owner: caller.owner_filter(),
    };
    Ok(HttpResponse::Ok().json(call(&state, &rag::GET_COLLECTION, &request).await?))
}

/// Deletes a collection with its documents.
#[utoipa::path(
    tag = "Collections",
    params(("name" = String, Path, description = "The collection's name")),
    responses((status = 200, description = "The deleted collection", body = Collection)),
    security(("api_key" = [])),
)]
#[delete("/v1/collections/{name}")]
pub async fn delete(
    state: web::Data<AppState>,
    Caller(caller): Caller,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::Rag)?;
    let request = CollectionRequest {
        name: name.into_inner(),
        owner: caller.owner_filter(),
    };
    let deleted = call(&state, &rag::DELETE_COLLECTION, &request).await?;
    tracing::info!(collection = %deleted.name, by = %caller.id, "collection deleted");
    Ok(HttpResponse::Ok().json(deleted))
}

/// Adds documents, or replaces them by id: a JSON body `{"documents": [...]}` or a
/// multipart form of `file` parts (`.jsonl`: a document per line; `.md`: Markdown;
/// anything else: text; each of the last two one document named by its file name).
#[utoipa::path(
    tag = "Collections",
    params(("name" = String, Path, description = "The collection's name"), IngestOptions),
    request_body(content(
        (DocumentsBody = "application/json"),
        (String = "multipart/form-data"),
    )),
    responses((status = 200, description = "What happened to each document; with \
        `stream=true`, `IngestStreamEvent`s as server-sent events ending with `data: [DONE]` \
        (an upload refused in its first batch is an HTTP error instead)",
        content(
            (IngestResponse = "application/json"),
            (IngestStreamEvent = "text/event-stream"),
        ))),
    security(("api_key" = [])),
)]
#[post("/v1/collections/{name}/documents")]
pub async fn ingest(
    state: web::Data<AppState>,
    Caller(caller): Caller,
    request: HttpRequest,
    name: web::Path<String>,
    options: web::Query<IngestOptions>,
    connection: Connection,
    Body(body): Body,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::Rag)?;
    let content_type = request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("application/json")
        .to_owned();
    let documents = upload::documents(&content_type, body).await?;
    if documents.len() > MAX_UPLOAD_DOCUMENTS {
        return Err(ApiError::over_limit(
            "documents",
            format!(
                "an upload holds at most {MAX_UPLOAD_DOCUMENTS} documents, this one {}; \
                 send it in parts",
                documents.len()
            ),
        ));
    }
    let text: usize = documents.iter().map(|document| document.text.len()).sum();
    quotas::check_collections(&state, &caller, text as u64).await?;
    let mut ingestion = Ingestion::new(
        state.bus.clone(),
        name.into_inner(),
        caller.owner_filter(),
        caller.id.to_string(),
        documents,
    );
    if options.stream != Some(true) {
        // A client that leaves stops the upload after the batch being stored, as a
        // dropped stream does below.
        let left = tokio::select! {
            done = ingestion.finish() => done.map(|()| false)?,
            () = connection.closed() => true,
        };
        if left {
            tracing::info!(
                collection = %ingestion.collection,
                "the client left; upload stopped after {} of {} documents",
                ingestion.outcome.documents.len(),
                ingestion.total
            );
            return Err(ApiError::client_gone());
        }
        return Ok(HttpResponse::Ok().json(ingestion.outcome));
    }
    // Streamed: the first batch is stored before the answer starts, so that an upload
    // refused outright is an HTTP error. Then a progress event after each batch, the
    // outcome, `[DONE]`; a later failure is an error event that says how far it got.
    let first = ingestion.next_batch().await?;
    let (first, more) = stream_event(&mut ingestion, Ok(first));
    let rest = futures::stream::unfold(more.then_some(ingestion), |ingestion| async move {
        let mut ingestion = ingestion?;
        let batch = ingestion.next_batch().await;
        let (event, more) = stream_event(&mut ingestion, batch);
        Some((Ok(event), more.then_some(ingestion)))
    });
    let events = futures::stream::once(async move { Ok::<_, actix_web::Error>(first) }).chain(rest);
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(events))
}

/// The server-sent event that reports one batch's outcome (`Ok(true)`: stored, more to
/// come; `Ok(false)`: all done), and whether the stream goes on.
fn stream_event(ingestion: &mut Ingestion, batch: Result<bool, ApiError>) -> (web::Bytes, bool) {
    match batch {
        Ok(true) => (
            event_data(&IngestStreamEvent::Event(IngestEvent::Progress(
                ingestion.progress(),
            ))),
            true,
        ),
        Ok(false) => {
            let outcome = IngestEvent::Completed(ingestion.outcome.clone());
            let mut tail = event_data(&IngestStreamEvent::Event(outcome)).to_vec();
            tail.extend_from_slice(b"data: [DONE]\n\n");
            (web::Bytes::from(tail), false)
        }
        Err(err) => {
            let error = ErrorResponse {
                error: err.object().clone(),
            };
            (event_data(&IngestStreamEvent::Error(error)), false)
        }
    }
}

/// How an upload is answered.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct IngestOptions {
    /// Stream the progress as server-sent events: an `ingest.progress` event after each
    /// batch of documents, then `ingest.completed` with what happened to each, then
    /// `data: [DONE]` (default false).
    pub stream: Option<bool>,
}

/// How far a streamed upload has got.
#[derive(Debug, Serialize, ToSchema)]
pub struct IngestProgress {
    pub documents_done: usize,
    pub documents_total: usize,
    /// Chunks written so far.
    pub chunks: u64,
}

/// One event of a streamed upload, named by its `object`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(tag = "object")]
pub enum IngestEvent {
    #[serde(rename = "ingest.progress")]
    Progress(IngestProgress),
    #[serde(rename = "ingest.completed")]
    Completed(IngestResponse),
}

/// What a streamed upload sends: its events, or the error that ends it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum IngestStreamEvent {
    Event(IngestEvent),
    Error(ErrorResponse),
}

/// An upload on its way to the RAG service, one batch at a time.
struct Ingestion {
    bus: slough_bus::Bus,
    collection: String,
    /// Whose collections the caller reaches (`None`: an admin's, all).
    owner: Option<String>,
    /// The caller's key id, kept with each document written.
    added_by: String,
    total: usize,
    batches: std::vec::IntoIter<Vec<Document>>,
    outcome: IngestResponse,
}

impl Ingestion {
    fn new(
        bus: slough_bus::Bus,
        collection: String,
        owner: Option<String>,
        added_by: String,
        documents: Vec<Document>,
    ) -> Ingestion {
        let total = documents.len();
        Ingestion {
            bus,
            collection,
            owner,
            added_by,
            total,
            batches: batches(documents).into_iter(),
            outcome: IngestResponse {
                documents: Vec::with_capacity(total),
                chunks: 0,
            },
        }
    }

    /// Sends every batch left.
    async fn finish(&mut self) -> Result<(), ApiError> {
        while self.next_batch().await? {}
        Ok(())
    }

    /// Sends the next batch; false when there was none left.
    async fn next_batch(&mut self) -> Result<bool, ApiError> {
        let Some(batch) = self.batches.next() else {
            return Ok(false);
        };
        let request = IngestRequest {
            collection: self.collection.clone(),
            documents: batch,
            owner: self.owner.clone(),
            added_by: Some(self.added_by.clone()),
        };
        let done = self
            .bus
            .call_within(&rag::INGEST, &request, INGEST_TIMEOUT)
            .await
            .map_err(|err| {
                ApiError::from_bus(&err).with_message_suffix(&format!(
                    " ({} of {} documents were ingested before this batch)",
                    self.outcome.documents.len(),
                    self.total
                ))
            })?;
        self.outcome.chunks += done.chunks;
        self.outcome.documents.extend(done.documents);
        if self.total > BATCH_DOCUMENTS {
            tracing::info!(
                collection = %self.collection,
                "ingested {} of {} documents",
                self.outcome.documents.len(),
                self.total
            );
        }
        Ok(true)
    }

    fn progress(&self) -> IngestProgress {
        IngestProgress {
            documents_done: self.outcome.documents.len(),
            documents_total: self.total,
            chunks: self.outcome.chunks,
        }
    }
}

/// Documents in batches of at most [`BATCH_DOCUMENTS`] and about [`BATCH_BYTES`] of
/// text (a larger document travels alone), so that each call answers in reasonable
/// time and fits the bus.
fn batches(documents: Vec<Document>) -> Vec<Vec<Document>> {
    let mut batches: Vec<Vec<Document>> = Vec::new();
    let mut bytes = 0;
    for document in documents {
        let size = document.text.len();
        match batches.last_mut() {
            Some(batch) if batch.len() < BATCH_DOCUMENTS && bytes + size <= BATCH_BYTES => {
                bytes += size;
                batch.push(document);
            }
            _ => {
                bytes = size;
                batches.push(vec![document]);
            }
        }
    }
    batches
}

/// Deletes one document's chunks.
#[utoipa::path(
    tag = "Collections",
    params(
        ("name" = String, Path, description = "The collection's name"),
        ("id" = String, Path, description = "The document's id"),
    ),
    responses((status = 200, description = "The deleted document", body = DocumentDeleted)),
    security(("api_key" = [])),
)]
#[delete("/v1/collections/{name}/documents/{id}")]
pub async fn delete_document(
    state: web::Data<AppState>,
    Caller(caller): Caller,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::Rag)?;
    let (collection, id) = path.into_inner();
    let request = DocumentRequest {
        collection,
        id,
        owner: caller.owner_filter(),
    };
    Ok(HttpResponse::Ok().json(call(&state, &rag::DELETE_DOCUMENT, &request).await?))
}

/// Searches a collection: dense, sparse (BM25) or hybrid (both, fused by reciprocal
/// rank).
#[utoipa::path(
    tag = "Collections",
    params(("name" = String, Path, description = "The collection's name")),
    request_body = SearchBody,
    responses((status = 200, description = "The best chunks, best first", body = SearchResponse)),
    security(("api_key" = [])),
)]
#[post("/v1/collections/{name}/search")]
pub async fn search(
    state: web::Data<AppState>,
    Caller(caller): Caller,
    name: web::Path<String>,
    JsonBody(body): JsonBody<SearchBody>,
) -> Result<HttpResponse, ApiError> {
    let request = SearchRequest {
        collection: name.into_inner(),
        query: body.query,
        top_k: body.top_k.unwrap_or(5),
        mode: body.mode.unwrap_or_default(),
        filter: body.filter,
        owner: caller.owner_filter(),
    };
    Ok(HttpResponse::Ok().json(call(&state, &rag::SEARCH, &request).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn document(id: usize, bytes: usize) -> Document {
        Document {
            id: id.to_string(),
            text: "x".repeat(bytes),
            format: rag::DocumentFormat::Text,
            metadata: None,
        }
    }

    #[test]
    fn batches_hold_a_bounded_count_and_size() {
        let many: Vec<Document> = (0..600).map(|id| document(id, 10)).collect();
        let sizes: Vec<usize> = batches(many).iter().map(Vec::len).collect();
        let mut expected = vec![32; 18];
        expected.push(24);
        assert_eq!(sizes, expected);
        let large: Vec<Document> = (0..5).map(|id| document(id, 100_000)).collect();
        let sizes: Vec<usize> = batches(large).iter().map(Vec::len).collect();
        assert_eq!(sizes, [2, 2, 1]);
        let huge = vec![document(0, 10), document(1, 500_000), document(2, 10)];
        let sizes: Vec<usize> = batches(huge).iter().map(Vec::len).collect();
        assert_eq!(sizes, [1, 1, 1]);
    }
}
