//! Where a collection's chunks are indexed. One interface — [`Backend`] makes, opens and
//! deletes a collection's index, [`Index`] writes and searches it — with two real
//! backends: [`edge`], one Qdrant Edge shard per collection in-process (the default),
//! and [`server`], a Qdrant server or cluster reached with `qdrant-client` (when
//! `rag.qdrant.url` is set, for the distributed layout).
//!
//! Both store a chunk the same way: a point with a dense vector (`dense`, cosine), a
//! BM25 sparse vector (`bm25`, computed here with Qdrant Edge's BM25 embedder; Qdrant's
//! IDF modifier supplies the inverse document frequencies at query time) and the chunk
//! as payload. Hybrid search is Qdrant's prefetch of both, fused by reciprocal rank.

pub mod edge;
pub mod server;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use qdrant_edge::bm25_embed::{EdgeBm25, EdgeBm25Config};
use serde_json::{Map, Value, json};
use slough_protocol::rag::{SearchHit, SearchMode};

pub use edge::{EdgeBackend, EdgeIndex};
pub use server::{ServerBackend, ServerIndex};

const DENSE: &str = "dense";
const SPARSE: &str = "bm25";
/// Reciprocal rank fusion's constant, as in its paper and Qdrant's default.
const RRF_K: u32 = 60;

/// What can go wrong in a vector store.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("vector store: {0}")]
    Store(String),
    #[error("filter field {0:?} is not a plain name (letters, digits, `_`, `-`)")]
    FilterField(String),
    #[error("filter field {0:?} must be a string, an integer or a boolean")]
    FilterValue(String),
    /// The collection was deleted while the call waited.
    #[error("the collection was deleted")]
    Closed,
}

pub(crate) fn store_error(err: impl std::fmt::Display) -> IndexError {
    IndexError::Store(err.to_string())
}

/// One chunk to index.
#[derive(Debug, Clone)]
pub struct ChunkPoint {
    pub document_id: String,
    pub content_hash: String,
    pub chunk_index: u32,
    pub start: u64,
    pub end: u64,
    pub text: String,
    pub metadata: Option<Map<String, Value>>,
    pub dense: Vec<f32>,
}

impl ChunkPoint {
    /// A stable point id: the first eight bytes of a SHA-256 of what names the chunk, so
    /// that writing the same chunk again overwrites it.
    fn point_id(&self) -> u64 {
        use sha2::Digest as _;
        let digest = sha2::Sha256::new()
            .chain_update(self.document_id.as_bytes())
            .chain_update([0])
            .chain_update(self.content_hash.as_bytes())
            .chain_update([0])
            .chain_update(self.chunk_index.to_le_bytes())
            .finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_le_bytes(first)
    }

    /// The payload stored with the chunk's vectors (vectors not included).
    fn payload(&self) -> Value {
        json!({
            "document_id": self.document_id,
            "content_hash": self.content_hash,
            "chunk_index": self.chunk_index,
            "start": self.start,
            "end": self.end,
            "text": self.text,
            "metadata": self.metadata,
        })
    }
}

/// A search hit from a stored payload and its score.
fn hit(payload: &Map<String, Value>, score: f32) -> Option<SearchHit> {
    let number = |name: &str| payload.get(name).and_then(Value::as_u64).unwrap_or(0);
    Some(SearchHit {
        document_id: payload.get("document_id")?.as_str()?.to_owned(),
        chunk_index: u32::try_from(number("chunk_index")).unwrap_or(u32::MAX),
        start: number("start"),
        end: number("end"),
        text: payload.get("text")?.as_str()?.to_owned(),
        score,
        metadata: payload.get("metadata").and_then(Value::as_object).cloned(),
    })
}

/// A search of one collection.
#[derive(Debug, Clone)]
pub struct IndexQuery {
    pub text: String,
    /// The query's embedding (not needed for sparse search).
    pub dense: Option<Vec<f32>>,
    pub mode: SearchMode,
    pub top_k: usize,
    pub filter: Option<Map<String, Value>>,
}

impl IndexQuery {
    /// How deep each list fused by hybrid search goes: deeper than the answer, so that a
    /// chunk ranked a little lower by one scorer can still rise.
    fn prefetch_depth(&self) -> usize {
        (self.top_k * 4).max(40)
    }

    /// The metadata filter as `metadata.<field>` = value terms, checked.
    fn filter_terms(&self) -> Result<Vec<(String, Term)>, IndexError> {
        let Some(filter) = &self.filter else {
            return Ok(Vec::new());
        };
        filter
            .iter()
            .map(|(field, value)| {
                let plain = !field.is_empty()
                    && field
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                if !plain {
                    return Err(IndexError::FilterField(field.clone()));
                }
                let term = match value {
                    Value::String(text) => Term::Text(text.clone()),
                    Value::Bool(flag) => Term::Flag(*flag),
                    Value::Number(number) => match number.as_i64() {
                        Some(integer) => Term::Integer(integer),
                        None => return Err(IndexError::FilterValue(field.clone())),
                    },
                    _ => return Err(IndexError::FilterValue(field.clone())),
                };
                Ok((format!("metadata.{field}"), term))
            })
            .collect()
    }
}

/// A value a metadata field must equal.
#[derive(Debug, Clone)]
enum Term {
    Text(String),
    Flag(bool),
    Integer(i64),
}

/// The BM25 embedder both backends use, English stemming and stop words.
fn bm25() -> Result<EdgeBm25, IndexError> {
    EdgeBm25::new(EdgeBm25Config {
        language: Some("english".to_owned()),
        ..EdgeBm25Config::default()
    })
    .map_err(store_error)
}

/// Makes, opens and deletes collections' indexes in one vector store.
#[derive(Clone)]
pub enum Backend {
    Edge(EdgeBackend),
    Server(ServerBackend),
}

impl Backend {
    /// Where the indexes live, for the log.
    pub fn describe(&self) -> String {
        match self {
            Backend::Edge(edge) => format!("Qdrant Edge shards in {}", edge.dir().display()),
            Backend::Server(server) => format!("Qdrant server at {}", server.url()),
        }
    }

    /// Creates collection `name`'s index for vectors of `dimensions`, replacing any left
    /// by a creation that did not finish.
    pub async fn create(&self, name: &str, dimensions: usize) -> Result<Index, IndexError> {
        match self {
            Backend::Edge(edge) => {
                let (edge, name) = (edge.clone(), name.to_owned());
                let index = blocking(move || edge.create(&name, dimensions)).await?;
                Ok(Index::Edge(Arc::new(index)))
            }
            Backend::Server(server) => Ok(Index::Server(server.create(name, dimensions).await?)),
        }
    }

    /// Opens collection `name`'s index as it was left.
    pub async fn open(&self, name: &str) -> Result<Index, IndexError> {
        match self {
            Backend::Edge(edge) => {
                let (edge, name) = (edge.clone(), name.to_owned());
                let index = blocking(move || edge.open(&name)).await?;
                Ok(Index::Edge(Arc::new(index)))
            }
            Backend::Server(server) => Ok(Index::Server(server.open(name).await?)),
        }
    }

    /// Deletes collection `name`'s index (drop its [`Index`] first).
    pub async fn delete(&self, name: &str) -> Result<(), IndexError> {
        match self {
            Backend::Edge(edge) => {
                let (edge, name) = (edge.clone(), name.to_owned());
                blocking(move || edge.delete(&name)).await
            }
            Backend::Server(server) => server.delete(name).await,
        }
    }
}

/// One collection's chunks in a vector store.
pub enum Index {
    Edge(Arc<EdgeIndex>),
    Server(ServerIndex),
}

impl Index {
    /// Adds or overwrites chunks (the same document, hash and index give the same
    /// point).
    pub async fn upsert(&self, points: Vec<ChunkPoint>) -> Result<(), IndexError> {
        match self {
            Index::Edge(edge) => {
                let edge = Arc::clone(edge);
                blocking(move || edge.upsert(points)).await
            }
            Index::Server(server) => server.upsert(points).await,
        }
    }

    /// Removes a document's chunks, except those of `keep_hash` when given.
    pub async fn delete_document(
        &self,
        document_id: &str,
        keep_hash: Option<&str>,
    ) -> Result<(), IndexError> {
        match self {
            Index::Edge(edge) => {
                let edge = Arc::clone(edge);
                let (document, keep) = (document_id.to_owned(), keep_hash.map(str::to_owned));
                blocking(move || edge.delete_document(&document, keep.as_deref())).await
            }
            Index::Server(server) => server.delete_document(document_id, keep_hash).await,
        }
    }

    /// The best chunks for `query`, best first.
    pub async fn search(&self, query: IndexQuery) -> Result<Vec<SearchHit>, IndexError> {
        match self {
            Index::Edge(edge) => {
                let edge = Arc::clone(edge);
                blocking(move || edge.search(&query)).await
            }
            Index::Server(server) => server.search(&query).await,
        }
    }

    /// Lets the calls under way finish, then refuses any more, so that the index's
    /// storage can be deleted.
    pub async fn close(&self) -> Result<(), IndexError> {
        match self {
            Index::Edge(edge) => {
                let edge = Arc::clone(edge);
                blocking(move || {
                    edge.close();
                    Ok(())
                })
                .await
            }
            Index::Server(_) => Ok(()),
        }
    }

    /// How many chunks it holds.
    pub async fn count(&self) -> Result<u64, IndexError> {
        match self {
            Index::Edge(edge) => {
                let edge = Arc::clone(edge);
                blocking(move || edge.count()).await
            }
            Index::Server(server) => server.count().await,
        }
    }

    /// Builds search indexes (HNSW) for what was written since the last time, when there
    /// is enough of it; true when it did. A Qdrant server does this by itself.
    pub async fn optimize(&self) -> Result<bool, IndexError> {
        match self {
            Index::Edge(edge) => {
                let edge = Arc::clone(edge);
                blocking(move || edge.optimize()).await
            }
            Index::Server(_) => Ok(false),
        }
    }
}

/// Runs blocking work (a shard's calls, chunking) off the async workers. A panic in it
/// (the embedded engine has some) fails this call, not the service.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, IndexError> + Send + 'static,
) -> Result<T, IndexError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(err) if !err.is_panic() => Err(IndexError::Store(format!("stopped: {err}"))),
        Err(err) => {
            let panic = err.into_panic();
            let message = panic
                .downcast_ref::<&str>()
                .map(|text| (*text).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".to_owned());
            tracing::error!("the vector store panicked: {message}");
            Err(IndexError::Store(format!(
                "the vector store failed: {message}"
            )))
        }
    }
}
