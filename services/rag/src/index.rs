//! Where a collection's chunks are indexed: one interface ([`Index`]) for the vector
//! stores, and its embedded backend, one Qdrant Edge shard per collection under the
//! collections directory. Each chunk is a point with a dense vector (`dense`, cosine)
//! and a BM25 sparse vector (`bm25`, Qdrant's IDF modifier supplies the inverse
//! document frequencies at query time); hybrid search is Qdrant's prefetch of both
//! fused by reciprocal rank. Calls block: run them off the async workers.

use std::path::{Path, PathBuf};

use qdrant_edge::{
    Condition, Distance, EdgeConfigBuilder, EdgeShard, EdgeSparseVectorParamsBuilder,
    EdgeVectorParamsBuilder, FieldCondition, Filter, Fusion, Match, Modifier, NamedQuery, PointId,
    PointInsertOperations, PointOperations, PointStruct, Prefetch, QueryEnum, QueryRequest,
    ScoringQuery, UpdateOperation, ValueVariants, VectorInternal, Vectors, WithPayloadInterface,
    WithVector,
    bm25_embed::{EdgeBm25, EdgeBm25Config},
};
use serde_json::{Map, Value, json};
use slough_protocol::rag::{SearchHit, SearchMode};

const DENSE: &str = "dense";
const SPARSE: &str = "bm25";
/// Reciprocal rank fusion's constant, as in its paper and Qdrant's default.
const RRF_K: usize = 60;

/// What can go wrong in a vector store.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("vector store: {0}")]
    Store(String),
    #[error("filter field {0:?} is not a plain name (letters, digits, `_`, `-`)")]
    FilterField(String),
    #[error("filter field {0:?} must be a string, a number or a boolean")]
    FilterValue(String),
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

/// One collection's chunks in a vector store.
pub trait Index: Send + Sync {
    /// Adds or overwrites chunks (the same document, hash and index give the same
    /// point).
    fn upsert(&self, points: Vec<ChunkPoint>) -> Result<(), IndexError>;
    /// Removes a document's chunks, except those of `keep_hash` when given.
    fn delete_document(&self, document_id: &str, keep_hash: Option<&str>)
    -> Result<(), IndexError>;
    /// The best chunks for `query`, best first.
    fn search(&self, query: &IndexQuery) -> Result<Vec<SearchHit>, IndexError>;
    /// How many chunks it holds.
    fn count(&self) -> Result<u64, IndexError>;
}

/// The embedded backend: Qdrant Edge shards in `dir`, one per collection.
#[derive(Debug, Clone)]
pub struct EdgeBackend {
    dir: PathBuf,
}

impl EdgeBackend {
    pub fn new(dir: &Path) -> EdgeBackend {
        EdgeBackend {
            dir: dir.to_owned(),
        }
    }

    fn path(&self, collection: &str) -> PathBuf {
        self.dir.join(collection)
    }

    /// Creates collection `name`'s shard for vectors of `dimensions`.
    pub fn create(&self, name: &str, dimensions: usize) -> Result<EdgeIndex, IndexError> {
        let path = self.path(name);
        // A shard left by a collection whose creation did not finish.
        if path.exists() {
            std::fs::remove_dir_all(&path).map_err(store_error)?;
        }
        std::fs::create_dir_all(&path).map_err(store_error)?;
        let config = EdgeConfigBuilder::new()
            .on_disk_payload(true)
            .vector(
                DENSE,
                EdgeVectorParamsBuilder::new(dimensions, Distance::Cosine).build(),
            )
            .sparse_vector(
                SPARSE,
                EdgeSparseVectorParamsBuilder::new()
                    .modifier(Modifier::Idf)
                    .build(),
            )
            .build();
        let shard = EdgeShard::new(&path, config).map_err(store_error)?;
        EdgeIndex::new(shard)
    }

    /// Opens collection `name`'s shard as it was left.
    pub fn open(&self, name: &str) -> Result<EdgeIndex, IndexError> {
        let shard = EdgeShard::load(&self.path(name), None).map_err(store_error)?;
        EdgeIndex::new(shard)
    }

    /// Deletes collection `name`'s shard (its index must be dropped first).
    pub fn delete(&self, name: &str) -> Result<(), IndexError> {
        match std::fs::remove_dir_all(self.path(name)) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(store_error(err)),
            _ => Ok(()),
        }
    }
}

/// One collection's Qdrant Edge shard.
pub struct EdgeIndex {
    shard: EdgeShard,
    bm25: EdgeBm25,
    /// One write (update, then flush) at a time: the shard's flush panics when another
    /// thread holds its write-ahead log.
    writes: std::sync::Mutex<()>,
}

impl EdgeIndex {
    fn new(shard: EdgeShard) -> Result<EdgeIndex, IndexError> {
        let bm25 = EdgeBm25::new(EdgeBm25Config {
            language: Some("english".to_owned()),
            ..EdgeBm25Config::default()
        })
        .map_err(store_error)?;
        Ok(EdgeIndex {
            shard,
            bm25,
            writes: std::sync::Mutex::new(()),
        })
    }
}

/// A stable point id for a chunk: the first eight bytes of a SHA-256 of what names it.
fn point_id(document_id: &str, content_hash: &str, chunk_index: u32) -> PointId {
    use sha2::Digest as _;
    let digest = sha2::Sha256::new()
        .chain_update(document_id.as_bytes())
        .chain_update([0])
        .chain_update(content_hash.as_bytes())
        .chain_update([0])
        .chain_update(chunk_index.to_le_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    PointId::NumId(u64::from_le_bytes(first))
}

fn keyword(field: &str, value: &str) -> Result<Condition, IndexError> {
    let key = field
        .parse()
        .map_err(|_| IndexError::FilterField(field.to_owned()))?;
    Ok(Condition::Field(FieldCondition::new_match(
        key,
        Match::new_value(ValueVariants::String(value.to_owned())),
    )))
}

/// The metadata filter as Qdrant conditions on `metadata.<field>`.
fn metadata_filter(filter: &Map<String, Value>) -> Result<Option<Filter>, IndexError> {
    let mut conditions = Vec::new();
    for (field, value) in filter {
        let plain = !field.is_empty()
            && field
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !plain {
            return Err(IndexError::FilterField(field.clone()));
        }
        let variant = match value {
            Value::String(text) => ValueVariants::String(text.clone()),
            Value::Bool(flag) => ValueVariants::Bool(*flag),
            Value::Number(number) => match number.as_i64() {
                Some(integer) => ValueVariants::Integer(integer),
                None => return Err(IndexError::FilterValue(field.clone())),
            },
            _ => return Err(IndexError::FilterValue(field.clone())),
        };
        let key = format!("metadata.{field}")
            .parse()
            .map_err(|_| IndexError::FilterField(field.clone()))?;
        conditions.push(Condition::Field(FieldCondition::new_match(
            key,
            Match::new_value(variant),
        )));
    }
    Ok((!conditions.is_empty()).then(|| Filter {
        must: Some(conditions),
        ..Filter::default()
    }))
}

fn store_error(err: impl std::fmt::Display) -> IndexError {
    IndexError::Store(err.to_string())
}

impl EdgeIndex {
    /// Applies `operation` and flushes it to disk, one writer at a time.
    fn write(&self, operation: UpdateOperation) -> Result<(), IndexError> {
        let _writing = self
            .writes
            .lock()
            .map_err(|_| IndexError::Store("an earlier write panicked".to_owned()))?;
        self.shard.update(operation).map_err(store_error)?;
        self.shard.flush();
        Ok(())
    }
}

impl Index for EdgeIndex {
    fn upsert(&self, points: Vec<ChunkPoint>) -> Result<(), IndexError> {
        let points = points
            .into_iter()
            .map(|chunk| {
                let sparse = self.bm25.embed_document(&chunk.text);
                let payload = json!({
                    "document_id": chunk.document_id,
                    "content_hash": chunk.content_hash,
                    "chunk_index": chunk.chunk_index,
                    "start": chunk.start,
                    "end": chunk.end,
                    "text": chunk.text,
                    "metadata": chunk.metadata,
                });
                let id = point_id(&chunk.document_id, &chunk.content_hash, chunk.chunk_index);
                let vectors = Vectors::new_named([
                    (DENSE, qdrant_edge::Vector::from(chunk.dense)),
                    (SPARSE, qdrant_edge::Vector::from(sparse)),
                ]);
                PointStruct::new(id, vectors, payload).into()
            })
            .collect();
        self.write(UpdateOperation::PointOperation(
            PointOperations::UpsertPoints(PointInsertOperations::PointsList(points)),
        ))
    }

    fn delete_document(
        &self,
        document_id: &str,
        keep_hash: Option<&str>,
    ) -> Result<(), IndexError> {
        let mut filter = Filter::new_must(keyword("document_id", document_id)?);
        if let Some(hash) = keep_hash {
            filter.must_not = Some(vec![keyword("content_hash", hash)?]);
        }
        self.write(UpdateOperation::PointOperation(
            PointOperations::DeletePointsByFilter(filter),
        ))
    }

    fn search(&self, query: &IndexQuery) -> Result<Vec<SearchHit>, IndexError> {
        let filter = match &query.filter {
            Some(filter) => metadata_filter(filter)?,
            None => None,
        };
        let dense = || {
            query.dense.clone().map(|vector| {
                ScoringQuery::Vector(QueryEnum::Nearest(NamedQuery {
                    query: VectorInternal::from(vector),
                    using: Some(DENSE.to_owned()),
                }))
            })
        };
        let sparse = || {
            Some(ScoringQuery::Vector(QueryEnum::Nearest(NamedQuery {
                query: VectorInternal::from(self.bm25.embed_query(&query.text)),
                using: Some(SPARSE.to_owned()),
            })))
        };
        // Each list fused is deeper than the answer, so that a chunk ranked a little
        // lower by one scorer can still rise.
        let depth = (query.top_k * 4).max(40);
        let prefetch = |scoring: Option<ScoringQuery>| Prefetch {
            prefetches: Vec::new(),
            query: scoring,
            limit: depth,
            params: None,
            filter: filter.clone(),
            score_threshold: None,
        };
        let (prefetches, scoring) = match query.mode {
            SearchMode::Dense => (Vec::new(), dense()),
            SearchMode::Sparse => (Vec::new(), sparse()),
            SearchMode::Hybrid => (
                vec![prefetch(dense()), prefetch(sparse())],
                Some(ScoringQuery::Fusion(Fusion::Rrf {
                    k: RRF_K,
                    weights: None,
                })),
            ),
        };
        let points = self
            .shard
            .query(QueryRequest {
                prefetches,
                query: scoring,
                filter: filter.clone(),
                score_threshold: None,
                limit: query.top_k,
                offset: 0,
                params: None,
                with_vector: WithVector::Bool(false),
                with_payload: WithPayloadInterface::Bool(true),
            })
            .map_err(store_error)?;
        Ok(points
            .into_iter()
            .filter_map(|point| {
                let payload = point.payload?.0;
                let number = |name: &str| payload.get(name).and_then(Value::as_u64).unwrap_or(0);
                Some(SearchHit {
                    document_id: payload.get("document_id")?.as_str()?.to_owned(),
                    chunk_index: u32::try_from(number("chunk_index")).unwrap_or(u32::MAX),
                    start: number("start"),
                    end: number("end"),
                    text: payload.get("text")?.as_str()?.to_owned(),
                    score: point.score,
                    metadata: payload.get("metadata").and_then(Value::as_object).cloned(),
                })
            })
            .collect())
    }

    fn count(&self) -> Result<u64, IndexError> {
        let counted = self
            .shard
            .count(qdrant_edge::CountRequest {
                filter: None,
                exact: true,
            })
            .map_err(store_error)?;
        Ok(counted as u64)
    }
}

/// The backend suite: what every vector store must do, on the embedded backend here.
/// A Qdrant server backend is not built yet, so there is no server run to skip.
#[cfg(test)]
mod tests {
    use super::*;

    /// A unit vector along `axis` of 4 dimensions, nudged toward `toward`.
    fn vector(axis: usize, toward: usize) -> Vec<f32> {
        let mut values = vec![0.0; 4];
        values[axis] = 1.0;
        values[toward] += 0.3;
        values
    }

    fn chunk(document: &str, hash: &str, index: u32, text: &str, dense: Vec<f32>) -> ChunkPoint {
        ChunkPoint {
            document_id: document.to_owned(),
            content_hash: hash.to_owned(),
            chunk_index: index,
            start: u64::from(index) * 100,
            end: u64::from(index) * 100 + text.len() as u64,
            text: text.to_owned(),
            metadata: Some(
                json!({"topic": if document == "wings" { "lift" } else { "engines" }, "year": 1960})
                    .as_object()
                    .cloned()
                    .unwrap(),
            ),
            dense,
        }
    }

    fn query(text: &str, dense: Option<Vec<f32>>, mode: SearchMode) -> IndexQuery {
        IndexQuery {
            text: text.to_owned(),
            dense,
            mode,
            top_k: 3,
            filter: None,
        }
    }

    fn ids(hits: &[SearchHit]) -> Vec<(String, u32)> {
        hits.iter()
            .map(|hit| (hit.document_id.clone(), hit.chunk_index))
            .collect()
    }

    fn corpus() -> Vec<ChunkPoint> {
        vec![
            chunk(
                "wings",
                "h1",
                0,
                "The wing produces lift from the airflow.",
                vector(0, 1),
            ),
            chunk(
                "wings",
                "h1",
                1,
                "Flaps increase lift at low speed.",
                vector(1, 0),
            ),
            chunk(
                "engines",
                "h2",
                0,
                "Jet engines burn kerosene for thrust.",
                vector(2, 3),
            ),
            chunk(
                "engines",
                "h2",
                1,
                "Propellers convert torque into thrust.",
                vector(3, 2),
            ),
        ]
    }

    #[test]
    fn dense_sparse_and_hybrid_find_their_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let backend = EdgeBackend::new(dir.path());
        let index = backend.create("aero", 4).unwrap();
        index.upsert(corpus()).unwrap();
        assert_eq!(index.count().unwrap(), 4);

        let dense = index
            .search(&query("", Some(vector(2, 0)), SearchMode::Dense))
            .unwrap();
        assert_eq!(ids(&dense)[0], ("engines".to_owned(), 0));
        assert!(dense[0].score > dense[1].score);
        let sparse = index
            .search(&query("flaps lift", None, SearchMode::Sparse))
            .unwrap();
        assert_eq!(ids(&sparse)[0], ("wings".to_owned(), 1));
        // Hybrid: the words point at the propellers, the vector at the jet engines; both
        // come first, ahead of the wings.
        let hybrid = index
            .search(&query(
                "propellers torque",
                Some(vector(2, 3)),
                SearchMode::Hybrid,
            ))
            .unwrap();
        let top: Vec<_> = ids(&hybrid).into_iter().take(2).collect();
        assert!(top.contains(&("engines".to_owned(), 0)), "{hybrid:#?}");
        assert!(top.contains(&("engines".to_owned(), 1)), "{hybrid:#?}");
        let hit = &sparse[0];
        assert_eq!(hit.text, "Flaps increase lift at low speed.");
        assert_eq!((hit.start, hit.end), (100, 133));
        assert_eq!(hit.metadata.as_ref().unwrap()["topic"], "lift");
    }

    #[test]
    fn metadata_filters_narrow_and_bad_ones_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let index = EdgeBackend::new(dir.path()).create("aero", 4).unwrap();
        index.upsert(corpus()).unwrap();
        let mut filtered = query("", Some(vector(2, 0)), SearchMode::Dense);
        filtered.filter = json!({"topic": "lift", "year": 1960}).as_object().cloned();
        let hits = index.search(&filtered).unwrap();
        assert_eq!(hits.len(), 2);
        assert!(hits.iter().all(|hit| hit.document_id == "wings"));
        filtered.filter = json!({"topic": ["lift"]}).as_object().cloned();
        assert!(matches!(
            index.search(&filtered),
            Err(IndexError::FilterValue(_))
        ));
        filtered.filter = json!({"a.b": "x"}).as_object().cloned();
        assert!(matches!(
            index.search(&filtered),
            Err(IndexError::FilterField(_))
        ));
    }

    #[test]
    fn replacing_and_deleting_a_document_leaves_no_stale_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let index = EdgeBackend::new(dir.path()).create("aero", 4).unwrap();
        index.upsert(corpus()).unwrap();
        // The wings document again, new text, one chunk: upsert, then drop older hashes.
        index
            .upsert(vec![chunk(
                "wings",
                "h3",
                0,
                "Wings are airfoils.",
                vector(0, 2),
            )])
            .unwrap();
        index.delete_document("wings", Some("h3")).unwrap();
        assert_eq!(index.count().unwrap(), 3);
        let hits = index
            .search(&query(
                "wings airfoils lift flaps",
                None,
                SearchMode::Sparse,
            ))
            .unwrap();
        let wings: Vec<_> = hits
            .iter()
            .filter(|hit| hit.document_id == "wings")
            .collect();
        assert_eq!(wings.len(), 1);
        assert_eq!(wings[0].text, "Wings are airfoils.");
        index.delete_document("engines", None).unwrap();
        assert_eq!(index.count().unwrap(), 1);
    }

    #[test]
    fn a_reopened_shard_holds_what_was_written() {
        let dir = tempfile::tempdir().unwrap();
        let backend = EdgeBackend::new(dir.path());
        {
            let index = backend.create("aero", 4).unwrap();
            index.upsert(corpus()).unwrap();
            index.delete_document("engines", None).unwrap();
        }
        let reopened = backend.open("aero").unwrap();
        assert_eq!(reopened.count().unwrap(), 2);
        let hits = reopened
            .search(&query("flaps", Some(vector(1, 0)), SearchMode::Hybrid))
            .unwrap();
        assert_eq!(ids(&hits)[0], ("wings".to_owned(), 1));
        drop(reopened);
        backend.delete("aero").unwrap();
        assert!(!dir.path().join("aero").exists());
    }

    #[test]
    fn concurrent_writers_and_readers() {
        let dir = tempfile::tempdir().unwrap();
        let index = std::sync::Arc::new(EdgeBackend::new(dir.path()).create("aero", 4).unwrap());
        let writers: Vec<_> = (0..4)
            .map(|writer| {
                let index = std::sync::Arc::clone(&index);
                std::thread::spawn(move || {
                    for batch in 0..10u32 {
                        let points = (0..10u32)
                            .map(|i| {
                                chunk(
                                    &format!("doc-{writer}-{batch}"),
                                    "h",
                                    i,
                                    "thrust and lift",
                                    vector((i % 4) as usize, ((i + 1) % 4) as usize),
                                )
                            })
                            .collect();
                        index.upsert(points).unwrap();
                    }
                })
            })
            .collect();
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let index = std::sync::Arc::clone(&index);
                std::thread::spawn(move || {
                    for _ in 0..20 {
                        let hits = index
                            .search(&query("lift", Some(vector(0, 1)), SearchMode::Hybrid))
                            .unwrap();
                        assert!(hits.len() <= 3);
                    }
                })
            })
            .collect();
        for thread in writers.into_iter().chain(readers) {
            thread.join().unwrap();
        }
        assert_eq!(index.count().unwrap(), 400);
    }
}
