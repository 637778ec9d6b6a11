//! The collections: their settings and documents in the store, their chunks in the
//! vector store, and everything done to them — create, describe, delete, ingest
//! documents, delete a document, search.
//!
//! Ingesting a document: hash its text, format and metadata; the same hash as stored
//! means nothing to do. Otherwise split it, embed the chunks (inference's `embed`),
//! write the new chunks, then delete the document's chunks of any other hash, then
//! record the new hash. Until the new chunks are written the old ones stand untouched,
//! so a failure midway leaves the document as it was; a crash between the last two
//! steps leaves chunks of an older hash, which the next ingest or delete removes. One
//! writer per collection at a time; searches never wait for it.
//!
//! Deleting a collection stops an ingest under way before its next document (the
//! ingest answers that the collection was deleted), waits for the index's calls in
//! flight, closes the index, and only then deletes its storage.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

use chrono::Utc;
use sea_orm::{
    ActiveModelTrait as _, ColumnTrait as _, EntityTrait as _, QueryFilter as _, Set,
    TransactionTrait as _,
};
use sha2::Digest as _;
use slough_bus::{Bus, BusError};
use slough_protocol::{
    ErrorBody, ErrorCode,
    inference::{self, EmbedRequest, ModelKind, ModelsRequest},
    names::check_name,
    rag::{
        Collection, CreateCollection, Document, DocumentDeleted, IngestRequest, IngestResponse,
        IngestStatus, IngestedDocument, MAX_DOCUMENT_BYTES, MAX_INGEST_DOCUMENTS, MAX_TOP_K,
        SearchMode, SearchRequest, SearchResponse,
    },
};
use slough_store::{
    Store,
    entities::{collection, collection_document},
};
use tokio::sync::{Mutex, OnceCell, RwLock};

use crate::{
    chunking::Chunker,
    index::{Backend, ChunkPoint, Index, IndexError, IndexQuery, blocking},
    metrics::Metrics,
};

const DEFAULT_CHUNK_SIZE: u32 = 200;
const DEFAULT_CHUNK_OVERLAP: u32 = 32;
const MAX_DOCUMENT_ID: usize = 256;
/// Tokens the embedding model adds around every text (`[CLS]`, `[SEP]`).
const SPECIAL_TOKENS: u32 = 2;

/// An open collection.
struct Open {
    row: collection::Model,
    index: Arc<Index>,
    /// Built on first use from the embedding model's tokenizer.
    chunker: OnceCell<Arc<Chunker>>,
    /// One ingest or delete at a time; what it guards is whether the collection has
    /// been deleted (a writer that waited for a deletion must not write).
    writer: Mutex<bool>,
    /// Set when a deletion starts: an ingest under way stops before its next document.
    deleting: AtomicBool,
    /// Held while the index is being optimized after an ingest.
    optimizing: Arc<Mutex<()>>,
}

impl Open {
    fn new(row: collection::Model, index: Index) -> Arc<Open> {
        Arc::new(Open {
            row,
            index: Arc::new(index),
            chunker: OnceCell::new(),
            writer: Mutex::new(false),
            deleting: AtomicBool::new(false),
            optimizing: Arc::new(Mutex::new(())),
        })
    }
}

/// Every collection of this service.
pub struct Collections {
    store: Store,
    backend: Backend,
    bus: Bus,
    models_dir: PathBuf,
    embed_batch: usize,
    metrics: Metrics,
    open: RwLock<HashMap<String, Arc<Open>>>,
}

/// Where the service keeps things, and what it talks to.
pub struct Setup {
    pub store: Store,
    pub bus: Bus,
    /// Where the chunks are indexed.
    pub backend: Backend,
    pub models_dir: PathBuf,
    pub embed_batch: usize,
    pub metrics: Metrics,
}

impl Collections {
    /// Opens every collection the store lists.
    pub async fn open(setup: Setup) -> Result<Collections, String> {
        let rows = collection::Entity::find()
            .all(setup.store.connection())
            .await
            .map_err(|err| format!("cannot list collections: {err}"))?;
        let collections = Collections {
            store: setup.store,
            backend: setup.backend,
            bus: setup.bus,
            models_dir: setup.models_dir,
            embed_batch: setup.embed_batch,
            metrics: setup.metrics,
            open: RwLock::new(HashMap::new()),
        };
        for row in rows {
            let index = collections
                .backend
                .open(&row.name)
                .await
                .map_err(|err| format!("cannot open collection {}: {err}", row.name))?;
            tracing::info!(collection = %row.name, "collection opened");
            collections.insert(row, index).await;
        }
        collections.report_sizes().await;
        Ok(collections)
    }

    async fn insert(&self, row: collection::Model, index: Index) {
        let name = row.name.clone();
        self.open.write().await.insert(name, Open::new(row, index));
    }

    /// Collection `name`, when `owner` reaches it: every collection for an admin
    /// (`None`), a key's own otherwise; another key's is not found, as a missing one.
    async fn get_open(
        &self,
        name: &str,
        owner: Option<&str>,
    ) -> Result<Arc<Open>, CollectionError> {
        self.open
            .read()
            .await
            .get(name)
            .filter(|open| reaches(owner, &open.row))
            .cloned()
            .ok_or_else(|| CollectionError::NotFound(name.to_owned()))
    }

    /// Creates a collection for the key `owner`.
    pub async fn create(
        &self,
        request: CreateCollection,
        owner: &str,
    ) -> Result<Collection, CollectionError> {
        check_name("name", &request.name).map_err(refused)?;
        let chunk_size = request.chunk_size.unwrap_or(DEFAULT_CHUNK_SIZE);
        let chunk_overlap = request.chunk_overlap.unwrap_or(DEFAULT_CHUNK_OVERLAP);
        let model = self.embedding_model(&request.embedding_model).await?;
        let longest = model.context_length.saturating_sub(SPECIAL_TOKENS);
        if chunk_size == 0 || chunk_size > longest {
            return Err(CollectionError::invalid(
                "chunk_size",
                format!(
                    "chunk_size must be 1 to {longest} tokens for {}, got {chunk_size}",
                    model.id
                ),
            ));
        }
        if chunk_overlap >= chunk_size {
            return Err(CollectionError::invalid(
                "chunk_overlap",
                format!(
                    "chunk_overlap must be less than chunk_size ({chunk_size}), got \
                     {chunk_overlap}"
                ),
            ));
        }
        let dimensions = model.dimensions.unwrap_or(0);
        let mut open = self.open.write().await;
        if open.contains_key(&request.name) {
            return Err(CollectionError::Exists(request.name));
        }
        let index = self
            .backend
            .create(&request.name, dimensions as usize)
            .await
            .map_err(CollectionError::Index)?;
        let row = collection::Model {
            name: request.name.clone(),
            embedding_model: model.id.clone(),
            dimensions: i32::try_from(dimensions).unwrap_or(i32::MAX),
            chunk_size: i32::try_from(chunk_size).unwrap_or(i32::MAX),
            chunk_overlap: i32::try_from(chunk_overlap).unwrap_or(i32::MAX),
            created_at: Utc::now(),
            owner: Some(owner.to_owned()),
        };
        let active: collection::ActiveModel = row.clone().into();
        if let Err(err) = collection::Entity::insert(active)
            .exec(self.store.connection())
            .await
        {
            drop(index);
            let _ = self.backend.delete(&request.name).await;
            return Err(CollectionError::Store(err));
        }
        let described = describe(&row, 0, 0);
        open.insert(row.name.clone(), Open::new(row, index));
        drop(open);
        tracing::info!(collection = %described.name, model = %described.embedding_model, "collection created");
        self.metrics.size(&described.name, 0, 0);
        Ok(described)
    }

    /// The served embedding model `id`, or why it cannot embed a collection.
    async fn embedding_model(&self, id: &str) -> Result<inference::ModelInfo, CollectionError> {
        let served = self
            .bus
            .call(&inference::MODELS, &ModelsRequest {})
            .await
            .map_err(CollectionError::Models)?;
        let model = served
            .models
            .into_iter()
            .find(|model| model.id == id)
            .ok_or_else(|| {
                CollectionError::invalid(
                    "embedding_model",
                    format!("embedding_model `{id}` is not served"),
                )
            })?;
        if model.kind != ModelKind::Embedding || model.dimensions.is_none() {
            return Err(CollectionError::invalid(
                "embedding_model",
                format!("`{id}` is a chat model; a collection needs an embedding model"),
            ));
        }
        Ok(model)
    }

    /// Every collection `owner` reaches, with its size, by name.
    pub async fn list(&self, owner: Option<&str>) -> Result<Vec<Collection>, CollectionError> {
        let open: Vec<Arc<Open>> = self
            .open
            .read()
            .await
            .values()
            .filter(|open| reaches(owner, &open.row))
            .cloned()
            .collect();
        let mut described = Vec::with_capacity(open.len());
        for one in open {
            described.push(self.describe(&one).await?);
        }
        described.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(described)
    }

    /// One collection with its size.
    pub async fn get(
        &self,
        name: &str,
        owner: Option<&str>,
    ) -> Result<Collection, CollectionError> {
        let open = self.get_open(name, owner).await?;
        self.describe(&open).await
    }

    async fn describe(&self, open: &Open) -> Result<Collection, CollectionError> {
        let documents = collection_document::Entity::find()
            .filter(collection_document::Column::Collection.eq(open.row.name.as_str()))
            .all(self.store.connection())
            .await
            .map_err(CollectionError::Store)?;
        let chunks = documents.iter().map(|doc| doc.chunks.max(0) as u64).sum();
        Ok(describe(&open.row, documents.len() as u64, chunks))
    }

    /// Deletes a collection, its documents and its chunks; an ingest under way stops.
    pub async fn delete(
        &self,
        name: &str,
        owner: Option<&str>,
    ) -> Result<Collection, CollectionError> {
        let open = self.get_open(name, owner).await?;
        open.deleting.store(true, Ordering::SeqCst);
        let deleted = self.delete_open(&open).await;
        if deleted.is_err() {
            open.deleting.store(false, Ordering::SeqCst);
        }
        deleted
    }

    async fn delete_open(&self, open: &Open) -> Result<Collection, CollectionError> {
        let name = open.row.name.as_str();
        let mut writer = open.writer.lock().await;
        if *writer {
            return Err(CollectionError::NotFound(name.to_owned()));
        }
        let _optimizing = open.optimizing.lock().await;
        let described = self.describe(open).await?;
        let transaction = self
            .store
            .connection()
            .begin()
            .await
            .map_err(CollectionError::Store)?;
        collection_document::Entity::delete_many()
            .filter(collection_document::Column::Collection.eq(name))
            .exec(&transaction)
            .await
            .map_err(CollectionError::Store)?;
        collection::Entity::delete_by_id(name.to_owned())
            .exec(&transaction)
            .await
            .map_err(CollectionError::Store)?;
        transaction.commit().await.map_err(CollectionError::Store)?;
        *writer = true;
        self.open.write().await.remove(name);
        // Searches that got the collection before it left the list finish first.
        let closed = open.index.close().await;
        match closed.and(self.backend.delete(name).await) {
            Ok(()) => {}
            Err(err) => tracing::warn!(
                collection = name,
                "the deleted collection's shard stays: {err}"
            ),
        }
        self.metrics.forget(name);
        tracing::info!(collection = name, "collection deleted");
        Ok(described)
    }

    /// Adds or replaces `request`'s documents, one after the other.
    pub async fn ingest(&self, request: IngestRequest) -> Result<IngestResponse, CollectionError> {
        check_documents(&request.documents)?;
        let open = self
            .get_open(&request.collection, request.owner.as_deref())
            .await?;
        let chunker = self.chunker(&open).await?;
        let writer = open.writer.lock().await;
        let collection = request.collection;
        let added_by = request.added_by;
        let mut outcome = IngestResponse {
            documents: Vec::with_capacity(request.documents.len()),
            chunks: 0,
        };
        for (position, document) in request.documents.into_iter().enumerate() {
            let started = Instant::now();
            if *writer || open.deleting.load(Ordering::SeqCst) {
                return Err(CollectionError::Deleted(collection));
            }
            let ingested = match self
                .ingest_one(&open, &chunker, document, added_by.as_deref())
                .await
            {
                Ok(ingested) => ingested,
                Err(deleted @ CollectionError::Deleted(_)) => return Err(deleted),
                Err(err) => {
                    return Err(CollectionError::Partial {
                        position,
                        source: Box::new(err),
                    });
                }
            };
            self.metrics.ingested(&ingested, started.elapsed());
            outcome.chunks += if ingested.status == IngestStatus::Unchanged {
                0
            } else {
                ingested.chunks
            };
            outcome.documents.push(ingested);
        }
        drop(writer);
        self.report_size(&open).await;
        if outcome.chunks > 0 {
            optimize_in_background(&open);
        }
        Ok(outcome)
    }

    async fn ingest_one(
        &self,
        open: &Open,
        chunker: &Arc<Chunker>,
        document: Document,
        added_by: Option<&str>,
    ) -> Result<IngestedDocument, CollectionError> {
        let collection = open.row.name.as_str();
        let hash = content_hash(&document);
        let stored =
            collection_document::Entity::find_by_id((collection.to_owned(), document.id.clone()))
                .one(self.store.connection())
                .await
                .map_err(CollectionError::Store)?;
        if let Some(stored) = &stored
            && stored.content_hash == hash
        {
            return Ok(IngestedDocument {
                id: document.id,
                status: IngestStatus::Unchanged,
                chunks: stored.chunks.max(0) as u64,
            });
        }
        let chunks = blocking({
            let chunker = Arc::clone(chunker);
            let text = document.text.clone();
            let format = document.format;
            move || Ok::<_, IndexError>(chunker.split(&text, format))
        })
        .await
        .map_err(CollectionError::Index)?;
        let texts: Vec<String> = chunks.iter().map(|chunk| chunk.text.clone()).collect();
        let vectors = self.embed(&open.row.embedding_model, texts).await?;
        let points: Vec<ChunkPoint> = chunks
            .into_iter()
            .zip(vectors)
            .zip(0u32..)
            .map(|((chunk, dense), chunk_index)| ChunkPoint {
                document_id: document.id.clone(),
                content_hash: hash.clone(),
                chunk_index,
                start: chunk.range.start as u64,
                end: chunk.range.end as u64,
                text: chunk.text,
                metadata: document.metadata.clone(),
                dense,
            })
            .collect();
        let count = points.len() as u64;
        let index_error = |err: IndexError| CollectionError::from_index(collection, err);
        open.index.upsert(points).await.map_err(index_error)?;
        open.index
            .delete_document(&document.id, Some(&hash))
            .await
            .map_err(index_error)?;
        let row = collection_document::ActiveModel {
            collection: Set(collection.to_owned()),
            document_id: Set(document.id.clone()),
            content_hash: Set(hash),
            chunks: Set(i64::try_from(count).unwrap_or(i64::MAX)),
            bytes: Set(i64::try_from(document.text.len()).unwrap_or(i64::MAX)),
            updated_at: Set(Utc::now()),
            added_by: Set(added_by.map(str::to_owned)),
        };
        let written = if stored.is_some() {
            row.update(self.store.connection()).await.map(|_| ())
        } else {
            collection_document::Entity::insert(row)
                .exec(self.store.connection())
                .await
                .map(|_| ())
        };
        written.map_err(CollectionError::Store)?;
        Ok(IngestedDocument {
            id: document.id,
            status: if stored.is_some() {
                IngestStatus::Replaced
            } else {
                IngestStatus::Created
            },
            chunks: count,
        })
    }

    /// `texts`' embeddings, in batches of `embed_batch`.
    async fn embed(
        &self,
        model: &str,
        texts: Vec<String>,
    ) -> Result<Vec<Vec<f32>>, CollectionError> {
        let mut vectors = Vec::with_capacity(texts.len());
        for batch in texts.chunks(self.embed_batch) {
            self.metrics.embed_batch(batch.len());
            let request = EmbedRequest {
                model: model.to_owned(),
                inputs: batch.to_vec(),
                truncate: true,
            };
            let embedded = self
                .bus
                .call(&inference::EMBED, &request)
                .await
                .map_err(|source| CollectionError::Embed {
                    model: model.to_owned(),
                    source,
                })?;
            vectors.extend(embedded.embeddings);
        }
        Ok(vectors)
    }

    /// The collection's chunker, built from its model's tokenizer on first use.
    async fn chunker(&self, open: &Open) -> Result<Arc<Chunker>, CollectionError> {
        let model = &open.row.embedding_model;
        let file = self.models_dir.join(model).join("tokenizer.json");
        let size = open.row.chunk_size.max(1) as usize;
        let overlap = open.row.chunk_overlap.max(0) as usize;
        let build = blocking(move || Chunker::new(&file, size, overlap).map_err(IndexError::Store));
        let chunker = open.chunker.get_or_try_init(|| async {
            build
                .await
                .map(Arc::new)
                .map_err(|source| CollectionError::Chunker {
                    model: model.clone(),
                    source,
                })
        });
        Ok(Arc::clone(chunker.await?))
    }

    /// Deletes one document's chunks.
    pub async fn delete_document(
        &self,
        collection: &str,
        id: &str,
        owner: Option<&str>,
    ) -> Result<DocumentDeleted, CollectionError> {
        let open = self.get_open(collection, owner).await?;
        let writer = open.writer.lock().await;
        if *writer {
            return Err(CollectionError::NotFound(collection.to_owned()));
        }
        let stored =
            collection_document::Entity::find_by_id((collection.to_owned(), id.to_owned()))
                .one(self.store.connection())
                .await
                .map_err(CollectionError::Store)?
                .ok_or_else(|| CollectionError::DocumentNotFound {
                    collection: collection.to_owned(),
                    id: id.to_owned(),
                })?;
        open.index
            .delete_document(id, None)
            .await
            .map_err(|err| CollectionError::from_index(collection, err))?;
        collection_document::Entity::delete_by_id((collection.to_owned(), id.to_owned()))
            .exec(self.store.connection())
            .await
            .map_err(CollectionError::Store)?;
        drop(writer);
        self.report_size(&open).await;
        Ok(DocumentDeleted {
            id: id.to_owned(),
            chunks: stored.chunks.max(0) as u64,
        })
    }

    /// The best chunks for the request's query.
    pub async fn search(&self, request: SearchRequest) -> Result<SearchResponse, CollectionError> {
        if request.top_k == 0 || request.top_k > MAX_TOP_K {
            return Err(CollectionError::invalid(
                "top_k",
                format!("top_k must be 1 to {MAX_TOP_K}, got {}", request.top_k),
            ));
        }
        if request.query.trim().is_empty() {
            return Err(CollectionError::invalid("query", "query must not be empty"));
        }
        let open = self
            .get_open(&request.collection, request.owner.as_deref())
            .await?;
        let started = Instant::now();
        let dense = match request.mode {
            SearchMode::Sparse => None,
            SearchMode::Dense | SearchMode::Hybrid => self
                .embed(&open.row.embedding_model, vec![request.query.clone()])
                .await?
                .pop(),
        };
        let query = IndexQuery {
            text: request.query,
            dense,
            mode: request.mode,
            top_k: request.top_k as usize,
            filter: request.filter,
        };
        let hits = open.index.search(query).await.map_err(|err| match err {
            IndexError::FilterField(_) | IndexError::FilterValue(_) => {
                CollectionError::invalid("filter", err.to_string())
            }
            IndexError::Closed => CollectionError::NotFound(request.collection.clone()),
            other => CollectionError::Index(other),
        })?;
        self.metrics.searched(request.mode, started.elapsed());
        Ok(SearchResponse {
            mode: request.mode,
            hits,
        })
    }

    /// Sets the size gauges from the store.
    async fn report_sizes(&self) {
        let open: Vec<Arc<Open>> = self.open.read().await.values().cloned().collect();
        for one in open {
            self.report_size(&one).await;
        }
    }

    /// Sets one collection's size gauges from the store.
    async fn report_size(&self, open: &Open) {
        if let Ok(described) = self.describe(open).await {
            self.metrics
                .size(&described.name, described.documents, described.chunks);
        }
    }
}

/// Whether `owner` (a key's id; `None` for an admin) reaches the collection `row`. One
/// made before collections had owners is the admins'.
fn reaches(owner: Option<&str>, row: &collection::Model) -> bool {
    owner.is_none_or(|owner| row.owner.as_deref() == Some(owner))
}

fn describe(row: &collection::Model, documents: u64, chunks: u64) -> Collection {
    Collection {
        name: row.name.clone(),
        embedding_model: row.embedding_model.clone(),
        dimensions: row.dimensions.max(0) as u32,
        chunk_size: row.chunk_size.max(0) as u32,
        chunk_overlap: row.chunk_overlap.max(0) as u32,
        documents,
        chunks,
        created_at: row
            .created_at
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    }
}

/// Lets the index build its search structures for what was just written, unless it is
/// already at it; ingestion and searches go on meanwhile.
fn optimize_in_background(open: &Arc<Open>) {
    let Ok(optimizing) = Arc::clone(&open.optimizing).try_lock_owned() else {
        return;
    };
    let open = Arc::clone(open);
    tokio::spawn(async move {
        let started = Instant::now();
        match open.index.optimize().await {
            Ok(true) => tracing::info!(
                collection = %open.row.name,
                seconds = format_args!("{:.1}", started.elapsed().as_secs_f64()),
                "collection index optimized"
            ),
            Ok(false) => {}
            Err(err) => tracing::warn!(
                collection = %open.row.name,
                "optimizing the collection's index failed: {err}"
            ),
        }
        // The index goes before the guard: a collection deleted next must not find its
        // shard still held here.
        drop(open);
        drop(optimizing);
    });
}

/// What a document's chunks depend on.
fn content_hash(document: &Document) -> String {
    let format = serde_json::to_string(&document.format).unwrap_or_default();
    let metadata = serde_json::to_string(&document.metadata).unwrap_or_default();
    let digest = sha2::Sha256::new()
        .chain_update(format.as_bytes())
        .chain_update([0])
        .chain_update(metadata.as_bytes())
        .chain_update([0])
        .chain_update(document.text.as_bytes())
        .finalize();
    digest.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn check_documents(documents: &[Document]) -> Result<(), CollectionError> {
    if documents.is_empty() {
        return Err(CollectionError::invalid(
            "documents",
            "documents must hold at least one document",
        ));
    }
    if documents.len() > MAX_INGEST_DOCUMENTS {
        return Err(CollectionError::invalid(
            "documents",
            format!(
                "at most {MAX_INGEST_DOCUMENTS} documents per request, got {}",
                documents.len()
            ),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for (position, document) in documents.iter().enumerate() {
        let field = |name: &str| format!("documents[{position}].{name}");
        if document.id.is_empty() || document.id.chars().count() > MAX_DOCUMENT_ID {
            return Err(CollectionError::invalid(
                field("id"),
                format!("a document id must be 1 to {MAX_DOCUMENT_ID} characters"),
            ));
        }
        if !seen.insert(document.id.as_str()) {
            return Err(CollectionError::invalid(
                field("id"),
                format!("document `{}` appears twice in one request", document.id),
            ));
        }
        if document.text.trim().is_empty() {
            return Err(CollectionError::invalid(
                field("text"),
                format!("document `{}` has no text", document.id),
            ));
        }
        if document.text.len() > MAX_DOCUMENT_BYTES {
            return Err(CollectionError::TooLarge {
                param: field("text"),
                message: format!(
                    "document `{}` is {} bytes; the most is {MAX_DOCUMENT_BYTES}",
                    document.id,
                    document.text.len()
                ),
            });
        }
    }
    Ok(())
}

/// Why a collection operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CollectionError {
    /// A field breaks its rule; `param` names it.
    #[error("{message}")]
    Invalid { param: String, message: String },
    #[error("collection `{0}` does not exist")]
    NotFound(String),
    #[error("document `{id}` is not in collection `{collection}`")]
    DocumentNotFound { collection: String, id: String },
    #[error("collection `{0}` already exists")]
    Exists(String),
    /// The collection was deleted while documents were being ingested into it.
    #[error("collection `{0}` was deleted during the ingest")]
    Deleted(String),
    /// A document is over the size limit; `param` names it.
    #[error("{message}")]
    TooLarge { param: String, message: String },
    #[error("cannot ask inference for its models: {0}")]
    Models(#[source] BusError),
    #[error("embedding with {model} failed: {source}")]
    Embed {
        model: String,
        #[source]
        source: BusError,
    },
    #[error(
        "cannot chunk for {model}: {source} (the RAG service reads tokenizers from models_dir)"
    )]
    Chunker {
        model: String,
        #[source]
        source: IndexError,
    },
    #[error("{0}")]
    Index(#[source] IndexError),
    #[error("the collection store is not available")]
    Store(#[source] sea_orm::DbErr),
    /// An ingest stopped at document `position`; the ones before it were ingested.
    #[error("{source} (documents before this one were ingested)")]
    Partial {
        position: usize,
        source: Box<CollectionError>,
    },
}

impl CollectionError {
    /// An index call's failure on `collection`; one refused because the collection was
    /// deleted meanwhile says so.
    fn from_index(collection: &str, error: IndexError) -> CollectionError {
        match error {
            IndexError::Closed => CollectionError::Deleted(collection.to_owned()),
            other => CollectionError::Index(other),
        }
    }

    fn invalid(param: impl Into<String>, message: impl Into<String>) -> CollectionError {
        CollectionError::Invalid {
            param: param.into(),
            message: message.into(),
        }
    }
}

/// The wire answer for a collection error: the one place its codes are chosen.
impl From<CollectionError> for ErrorBody {
    fn from(error: CollectionError) -> ErrorBody {
        let message = error.to_string();
        let with_param = |param: String, body: ErrorBody| ErrorBody {
            param: Some(param),
            ..body
        };
        match error {
            CollectionError::Invalid { param, message } => ErrorBody::invalid(param, message),
            CollectionError::NotFound(_) | CollectionError::DocumentNotFound { .. } => {
                ErrorBody::new(ErrorCode::NotFound, message)
            }
            CollectionError::Exists(_) => with_param(
                "name".to_owned(),
                ErrorBody::new(ErrorCode::Conflict, message),
            ),
            CollectionError::Deleted(_) => ErrorBody::new(ErrorCode::Conflict, message),
            CollectionError::TooLarge { param, .. } => {
                with_param(param, ErrorBody::new(ErrorCode::PayloadTooLarge, message))
            }
            CollectionError::Models(_) | CollectionError::Chunker { .. } => {
                ErrorBody::new(ErrorCode::Unavailable, message)
            }
            CollectionError::Embed { model, source } => {
                let body = source.to_body();
                // Our request, not the caller's, was at fault.
                let code = match body.code {
                    ErrorCode::InvalidRequest => ErrorCode::Internal,
                    code => code,
                };
                ErrorBody::new(
                    code,
                    format!("embedding with {model} failed: {}", body.message),
                )
            }
            CollectionError::Index(err) => {
                tracing::warn!("{err}");
                ErrorBody::new(ErrorCode::Internal, message)
            }
            CollectionError::Store(err) => {
                tracing::warn!("collection store: {err}");
                ErrorBody::new(ErrorCode::Unavailable, message)
            }
            CollectionError::Partial { position, source } => {
                let inner = ErrorBody::from(*source);
                ErrorBody {
                    message: format!(
                        "{} (documents before this one were ingested)",
                        inner.message
                    ),
                    param: inner
                        .param
                        .map(|param| format!("documents[{position}].{param}")),
                    ..inner
                }
            }
        }
    }
}

/// A protocol check's refusal, as a collection error naming the same field.
fn refused(body: ErrorBody) -> CollectionError {
    CollectionError::Invalid {
        param: body.param.unwrap_or_default(),
        message: body.message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_collection_is_its_owners_and_the_admins_and_an_old_one_the_admins_only() {
        let row = |owner: Option<&str>| collection::Model {
            name: "docs".to_owned(),
            embedding_model: "minilm".to_owned(),
            dimensions: 384,
            chunk_size: 200,
            chunk_overlap: 32,
            created_at: Utc::now(),
            owner: owner.map(str::to_owned),
        };
        assert!(reaches(Some("a"), &row(Some("a"))));
        assert!(!reaches(Some("b"), &row(Some("a"))));
        assert!(reaches(None, &row(Some("a"))), "an admin reaches every one");
        assert!(reaches(None, &row(None)));
        assert!(
            !reaches(Some("a"), &row(None)),
            "made before owners: the admins'"
        );
    }
}
