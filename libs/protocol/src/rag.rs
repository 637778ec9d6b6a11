//! Messages of the RAG service: collections of documents, split into chunks, embedded
//! and indexed for dense, sparse (BM25) and hybrid search.
//!
//! These types are also the gateway's `/v1/collections` bodies (the `openapi` feature
//! derives their OpenAPI schemas).

use serde::{Deserialize, Serialize};

use crate::{ServiceKind, endpoint::Endpoint};

/// Creates a collection.
pub const CREATE_COLLECTION: Endpoint<CreateCollectionRequest, Collection> =
    Endpoint::new(ServiceKind::Rag, "create_collection");
/// Every collection with its size.
pub const LIST_COLLECTIONS: Endpoint<ListCollections, CollectionList> =
    Endpoint::new(ServiceKind::Rag, "list_collections");
/// One collection.
pub const GET_COLLECTION: Endpoint<CollectionRequest, Collection> =
    Endpoint::new(ServiceKind::Rag, "get_collection");
/// Deletes a collection with its documents, and answers what it was.
pub const DELETE_COLLECTION: Endpoint<CollectionRequest, Collection> =
    Endpoint::new(ServiceKind::Rag, "delete_collection");
/// Adds or replaces documents.
pub const INGEST: Endpoint<IngestRequest, IngestResponse> =
    Endpoint::new(ServiceKind::Rag, "ingest");
/// Deletes one document's chunks.
pub const DELETE_DOCUMENT: Endpoint<DocumentRequest, DocumentDeleted> =
    Endpoint::new(ServiceKind::Rag, "delete_document");
/// Searches a collection.
pub const SEARCH: Endpoint<SearchRequest, SearchResponse> =
    Endpoint::new(ServiceKind::Rag, "search");

/// Most hits one search returns.
pub const MAX_TOP_K: u32 = 100;
/// The longest document `ingest` takes, in bytes of text.
pub const MAX_DOCUMENT_BYTES: usize = 1_000_000;
/// Most documents in one `ingest` request (larger uploads are sent in batches).
pub const MAX_INGEST_DOCUMENTS: usize = 256;

/// A new collection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateCollection {
    /// Lowercase letters, digits, `-` and `_` (at most 64), starting with a letter or
    /// digit.
    pub name: String,
    /// The embedding model (see `/v1/models`, kind `embedding`).
    pub embedding_model: String,
    /// Tokens per chunk, counted with the embedding model's tokenizer (default 200, at
    /// most the model's context).
    #[serde(default)]
    pub chunk_size: Option<u32>,
    /// Tokens shared by neighbouring chunks (default 32; less than `chunk_size`).
    #[serde(default)]
    pub chunk_overlap: Option<u32>,
}

/// A new collection for the key `owner` (set by the gateway, never by the client).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCollectionRequest {
    pub owner: String,
    pub collection: CreateCollection,
}

/// A collection and its size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Collection {
    pub name: String,
    pub embedding_model: String,
    /// The embedding model's vector size.
    pub dimensions: u32,
    pub chunk_size: u32,
    pub chunk_overlap: u32,
    pub documents: u64,
    pub chunks: u64,
    /// RFC 3339.
    pub created_at: String,
}

/// Lists every collection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListCollections {
    /// Whose collections the caller reaches: its API key's id, or none for an admin
    /// (every collection). Another key's collection is answered as not found.
    #[serde(default)]
    pub owner: Option<String>,
}

/// Every collection, by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CollectionList {
    pub collections: Vec<Collection>,
}

/// Names one collection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CollectionRequest {
    pub name: String,
    /// Whose collections the caller reaches: its API key's id, or none for an admin
    /// (every collection). Another key's collection is answered as not found.
    #[serde(default)]
    pub owner: Option<String>,
}

/// How a document's text is written, which decides where it is split first.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum DocumentFormat {
    /// Paragraphs, then sentences, then words.
    #[default]
    Text,
    /// Headings first, then blocks, then sentences.
    Markdown,
}

/// A document to add, or to replace when its id is already in the collection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Document {
    /// The document's id within its collection (1 to 256 characters).
    pub id: String,
    pub text: String,
    #[serde(default)]
    pub format: DocumentFormat,
    /// A JSON object kept with every chunk; search filters match its top-level fields.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Documents for a collection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IngestRequest {
    pub collection: String,
    pub documents: Vec<Document>,
    /// Whose collections the caller reaches: its API key's id, or none for an admin
    /// (every collection). Another key's collection is answered as not found.
    #[serde(default)]
    pub owner: Option<String>,
    /// The id of the API key adding the documents, kept with each one written so that
    /// the key's data can be exported or erased.
    #[serde(default)]
    pub added_by: Option<String>,
}

/// What happened to each document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct IngestResponse {
    pub documents: Vec<IngestedDocument>,
    /// Chunks written in all.
    pub chunks: u64,
}

/// One document's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct IngestedDocument {
    pub id: String,
    pub status: IngestStatus,
    pub chunks: u64,
}

/// `created`, `replaced` (its text changed), or `unchanged` (the same text again: nothing
/// written).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum IngestStatus {
    Created,
    Replaced,
    Unchanged,
}

/// Names one document of a collection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DocumentRequest {
    pub collection: String,
    pub id: String,
    /// Whose collections the caller reaches: its API key's id, or none for an admin
    /// (every collection). Another key's collection is answered as not found.
    #[serde(default)]
    pub owner: Option<String>,
}

/// A deleted document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DocumentDeleted {
    pub id: String,
    /// Chunks removed.
    pub chunks: u64,
}

/// How to score chunks against a query.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum SearchMode {
    /// Cosine similarity of the embedding model's vectors.
    Dense,
    /// BM25 over the chunks' words.
    Sparse,
    /// Both, fused by reciprocal rank.
    #[default]
    Hybrid,
}

/// A search of one collection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    /// The collection (set from the path on the gateway).
    #[serde(default)]
    pub collection: String,
    pub query: String,
    /// Hits to return, 1 to 100 (default 5).
    #[serde(default = "default_top_k")]
    pub top_k: u32,
    #[serde(default)]
    pub mode: SearchMode,
    /// Only chunks whose document metadata has each of these top-level fields equal to
    /// the given string, number or boolean.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub filter: Option<serde_json::Map<String, serde_json::Value>>,
    /// Whose collections the caller reaches (set by the gateway): its API key's id, or
    /// none for an admin.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(ignore))]
    pub owner: Option<String>,
}

fn default_top_k() -> u32 {
    5
}

/// The best chunks, best first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SearchResponse {
    pub mode: SearchMode,
    pub hits: Vec<SearchHit>,
}

/// One chunk and where it comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SearchHit {
    pub document_id: String,
    pub chunk_index: u32,
    /// Byte offsets of the chunk in the document's text.
    pub start: u64,
    pub end: u64,
    pub text: String,
    /// Cosine similarity (dense), BM25 (sparse) or the fused reciprocal-rank score
    /// (hybrid); higher is better.
    pub score: f32,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
}
