//! The embedded backend: one Qdrant Edge shard per collection, in a directory of its
//! own under the collections directory, surviving restarts. Calls block (run them off
//! the async workers, as [`super::Index`] does).

use std::{
    path::{Path, PathBuf},
    sync::RwLock,
};

use qdrant_edge::{
    Condition, CountRequest, CreateIndex, Distance, EdgeConfigBuilder, EdgeOptimizersConfig,
    EdgeShard, EdgeSparseVectorParamsBuilder, EdgeVectorParamsBuilder, FieldCondition,
    FieldIndexOperations, Filter, Fusion, Match, Modifier, NamedQuery, PayloadFieldSchema,
    PayloadSchemaType, PointId, PointInsertOperations, PointOperations, PointStruct, Prefetch,
    QueryEnum, QueryRequest, ScoringQuery, UpdateOperation, ValueVariants, VectorInternal, Vectors,
    WithPayloadInterface, WithVector, bm25_embed::EdgeBm25,
};
use slough_protocol::rag::{SearchHit, SearchMode};

use super::{
    ChunkPoint, DENSE, IndexError, IndexQuery, RRF_K, SPARSE, Term, bm25, hit, store_error,
};

/// Qdrant Edge shards in `dir`, one per collection.
#[derive(Debug, Clone)]
pub struct EdgeBackend {
    dir: PathBuf,
    /// Segments above this size (KiB of vectors) get an HNSW index when optimized;
    /// Qdrant's default when unset.
    indexing_threshold_kb: Option<usize>,
}

impl EdgeBackend {
    pub fn new(dir: &Path) -> EdgeBackend {
        EdgeBackend {
            dir: dir.to_owned(),
            indexing_threshold_kb: None,
        }
    }

    /// The same, building HNSW indexes from `kb` KiB of vectors per segment.
    pub fn with_indexing_threshold_kb(self, kb: usize) -> EdgeBackend {
        EdgeBackend {
            indexing_threshold_kb: Some(kb),
            ..self
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
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
        // The shard's files (its write-ahead log holds document text) are its owner's.
        {
            use std::os::unix::fs::DirBuilderExt as _;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&path)
                .map_err(store_error)?;
        }
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
            .optimizers(EdgeOptimizersConfig {
                indexing_threshold: self.indexing_threshold_kb,
                ..EdgeOptimizersConfig::default()
            })
            .build();
        let shard = EdgeShard::new(&path, config).map_err(store_error)?;
        let index = EdgeIndex::new(shard)?;
        // What deletes filter on, indexed as on a Qdrant server.
        for field in ["document_id", "content_hash"] {
            index.write(UpdateOperation::FieldIndexOperation(
                FieldIndexOperations::CreateIndex(CreateIndex {
                    field_name: field.parse().map_err(|_| store_error(field))?,
                    field_schema: Some(PayloadFieldSchema::FieldType(PayloadSchemaType::Keyword)),
                }),
            ))?;
        }
        Ok(index)
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
    /// `None` once [`EdgeIndex::close`]d: a call that comes after it is refused rather
    /// than touch a shard whose files are being deleted (Qdrant Edge panics then, and
    /// again while unwinding, which aborts the process).
    shard: RwLock<Option<EdgeShard>>,
    bm25: EdgeBm25,
    /// One write (update, then flush) at a time: the shard's flush panics when another
    /// thread holds its write-ahead log.
    writes: std::sync::Mutex<()>,
    /// One optimization at a time; writes and searches go on meanwhile.
    optimizing: std::sync::Mutex<()>,
}

impl EdgeIndex {
    fn new(shard: EdgeShard) -> Result<EdgeIndex, IndexError> {
        Ok(EdgeIndex {
            shard: RwLock::new(Some(shard)),
            bm25: bm25()?,
            writes: std::sync::Mutex::new(()),
            optimizing: std::sync::Mutex::new(()),
        })
    }

    /// Runs `work` on the shard, unless it is closed; [`EdgeIndex::close`] waits for it.
    fn with_shard<T>(
        &self,
        work: impl FnOnce(&EdgeShard) -> Result<T, IndexError>,
    ) -> Result<T, IndexError> {
        let shard = self
            .shard
            .read()
            .map_err(|_| IndexError::Store("an earlier call on the shard panicked".to_owned()))?;
        work(shard.as_ref().ok_or(IndexError::Closed)?)
    }

    /// Waits for the calls under way, then flushes and closes the shard; every later
    /// call fails with [`IndexError::Closed`]. Its files may be deleted after this.
    pub fn close(&self) {
        let shard = match self.shard.write() {
            Ok(mut shard) => shard.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        drop(shard);
    }

    /// Applies `operation` and flushes it to disk, one writer at a time.
    fn write(&self, operation: UpdateOperation) -> Result<(), IndexError> {
        let _writing = self
            .writes
            .lock()
            .map_err(|_| IndexError::Store("an earlier write panicked".to_owned()))?;
        self.with_shard(|shard| {
            shard.update(operation).map_err(store_error)?;
            shard.flush();
            Ok(())
        })
    }

    pub fn upsert(&self, points: Vec<ChunkPoint>) -> Result<(), IndexError> {
        let points = points
            .into_iter()
            .map(|chunk| {
                let sparse = self.bm25.embed_document(&chunk.text);
                let id = PointId::NumId(chunk.point_id());
                let payload = chunk.payload();
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

    pub fn delete_document(
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

    pub fn search(&self, query: &IndexQuery) -> Result<Vec<SearchHit>, IndexError> {
        let filter = metadata_filter(query)?;
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
        let prefetch = |scoring: Option<ScoringQuery>| Prefetch {
            prefetches: Vec::new(),
            query: scoring,
            limit: query.prefetch_depth(),
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
                    k: RRF_K as usize,
                    weights: None,
                })),
            ),
        };
        let request = QueryRequest {
            prefetches,
            query: scoring,
            filter: filter.clone(),
            score_threshold: None,
            limit: query.top_k,
            offset: 0,
            params: None,
            with_vector: WithVector::Bool(false),
            with_payload: WithPayloadInterface::Bool(true),
        };
        let points = self.with_shard(|shard| shard.query(request).map_err(store_error))?;
        Ok(points
            .into_iter()
            .filter_map(|point| hit(&point.payload?.0, point.score))
            .collect())
    }

    pub fn count(&self) -> Result<u64, IndexError> {
        let request = CountRequest {
            filter: None,
            exact: true,
        };
        let counted = self.with_shard(|shard| shard.count(request).map_err(store_error))?;
        Ok(counted as u64)
    }

    /// Runs Qdrant's optimizers until they have nothing left to do: segments past the
    /// indexing threshold get HNSW indexes, small ones merge, deleted points go.
    pub fn optimize(&self) -> Result<bool, IndexError> {
        let _optimizing = self
            .optimizing
            .lock()
            .map_err(|_| IndexError::Store("an earlier optimization panicked".to_owned()))?;
        let optimized = self.with_shard(|shard| shard.optimize().map_err(store_error))?;
        if optimized {
            let _writing = self
                .writes
                .lock()
                .map_err(|_| IndexError::Store("an earlier write panicked".to_owned()))?;
            self.with_shard(|shard| {
                shard.flush();
                Ok(())
            })?;
        }
        Ok(optimized)
    }

    /// Segments, points and how many of them an HNSW index holds.
    pub fn info(&self) -> Result<qdrant_edge::ShardInfo, IndexError> {
        self.with_shard(|shard| Ok(shard.info()))
    }
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

/// The query's metadata filter as Qdrant Edge conditions.
fn metadata_filter(query: &IndexQuery) -> Result<Option<Filter>, IndexError> {
    let mut conditions = Vec::new();
    for (key, term) in query.filter_terms()? {
        let variant = match term {
            Term::Text(text) => ValueVariants::String(text),
            Term::Flag(flag) => ValueVariants::Bool(flag),
            Term::Integer(integer) => ValueVariants::Integer(integer),
        };
        let path = key
            .parse()
            .map_err(|_| IndexError::FilterField(key.clone()))?;
        conditions.push(Condition::Field(FieldCondition::new_match(
            path,
            Match::new_value(variant),
        )));
    }
    Ok((!conditions.is_empty()).then(|| Filter {
        must: Some(conditions),
        ..Filter::default()
    }))
}
