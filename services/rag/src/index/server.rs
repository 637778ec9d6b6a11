//! The server backend: one Qdrant collection per RAG collection on a Qdrant server or
//! cluster, reached over gRPC with `qdrant-client`, for the distributed layout where
//! several RAG replicas share their collections. The schema, payload indexes, filters
//! and queries are those of the embedded backend; the BM25 vectors are computed here the
//! same way, and the server applies the IDF modifier and the fusion.

use std::{sync::Arc, time::Duration};

use qdrant_client::{
    Qdrant,
    qdrant::{
        Condition, CountPointsBuilder, CreateCollectionBuilder, CreateFieldIndexCollectionBuilder,
        DeletePointsBuilder, Distance, FieldType, Filter, Modifier, NamedVectors, PointStruct,
        PrefetchQueryBuilder, Query, QueryPointsBuilder, RrfBuilder, SparseVectorParamsBuilder,
        SparseVectorsConfigBuilder, UpsertPointsBuilder, VectorInput, VectorParamsBuilder,
        VectorsConfigBuilder,
    },
};
use qdrant_edge::bm25_embed::EdgeBm25;
use serde_json::{Map, Value};
use slough_protocol::rag::{SearchHit, SearchMode};

use super::{
    ChunkPoint, DENSE, IndexError, IndexQuery, RRF_K, SPARSE, Term, bm25, hit, store_error,
};

/// How to reach the Qdrant server (the `[rag.qdrant]` settings).
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// The server's gRPC address, e.g. `http://qdrant:6334`.
    pub url: String,
    pub api_key: Option<String>,
    /// The longest a request may take.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Put before every collection name, so that several platforms (or other
    /// applications) can share one server.
    pub collection_prefix: String,
}

/// Collections on a Qdrant server.
#[derive(Clone)]
pub struct ServerBackend {
    client: Arc<Qdrant>,
    settings: ServerSettings,
}

impl ServerBackend {
    /// A client for the server; it connects on first use.
    pub fn new(settings: ServerSettings) -> Result<ServerBackend, IndexError> {
        let client = Qdrant::from_url(&settings.url)
            .api_key(settings.api_key.clone())
            .timeout(settings.timeout)
            .connect_timeout(settings.connect_timeout)
            .skip_compatibility_check()
            .build()
            .map_err(store_error)?;
        Ok(ServerBackend {
            client: Arc::new(client),
            settings,
        })
    }

    pub fn url(&self) -> &str {
        &self.settings.url
    }

    fn collection(&self, name: &str) -> String {
        format!("{}{name}", self.settings.collection_prefix)
    }

    /// Creates collection `name` for vectors of `dimensions`, with keyword indexes on
    /// what deletes filter on.
    pub async fn create(&self, name: &str, dimensions: usize) -> Result<ServerIndex, IndexError> {
        let collection = self.collection(name);
        // A collection left by a creation that did not finish.
        self.delete(name).await?;
        let mut dense = VectorsConfigBuilder::default();
        dense.add_named_vector_params(
            DENSE,
            VectorParamsBuilder::new(dimensions as u64, Distance::Cosine),
        );
        let mut sparse = SparseVectorsConfigBuilder::default();
        sparse.add_named_vector_params(
            SPARSE,
            SparseVectorParamsBuilder::default().modifier(Modifier::Idf),
        );
        self.client
            .create_collection(
                CreateCollectionBuilder::new(&collection)
                    .vectors_config(dense)
                    .sparse_vectors_config(sparse)
                    .on_disk_payload(true),
            )
            .await
            .map_err(|err| server_error(&self.settings.url, err))?;
        for field in ["document_id", "content_hash"] {
            self.client
                .create_field_index(
                    CreateFieldIndexCollectionBuilder::new(&collection, field, FieldType::Keyword)
                        .wait(true),
                )
                .await
                .map_err(|err| server_error(&self.settings.url, err))?;
        }
        self.index(collection)
    }

    async fn exists(&self, collection: &str) -> Result<bool, IndexError> {
        self.client
            .collection_exists(collection)
            .await
            .map_err(|err| server_error(&self.settings.url, err))
    }

    /// Opens collection `name`, which must exist.
    pub async fn open(&self, name: &str) -> Result<ServerIndex, IndexError> {
        let collection = self.collection(name);
        if !self.exists(&collection).await? {
            return Err(IndexError::Store(format!(
                "collection `{collection}` is missing on the Qdrant server at {}",
                self.settings.url
            )));
        }
        self.index(collection)
    }

    /// Deletes collection `name`; one that is not there is already deleted.
    pub async fn delete(&self, name: &str) -> Result<(), IndexError> {
        let collection = self.collection(name);
        if self.exists(&collection).await? {
            self.client
                .delete_collection(&collection)
                .await
                .map_err(|err| server_error(&self.settings.url, err))?;
        }
        Ok(())
    }

    fn index(&self, collection: String) -> Result<ServerIndex, IndexError> {
        Ok(ServerIndex {
            client: Arc::clone(&self.client),
            url: self.settings.url.clone(),
            collection,
            bm25: Arc::new(bm25()?),
        })
    }
}

/// One collection on a Qdrant server.
pub struct ServerIndex {
    client: Arc<Qdrant>,
    url: String,
    collection: String,
    bm25: Arc<EdgeBm25>,
}

impl ServerIndex {
    fn failed(&self, err: qdrant_client::QdrantError) -> IndexError {
        server_error(&self.url, err)
    }

    pub async fn upsert(&self, points: Vec<ChunkPoint>) -> Result<(), IndexError> {
        let points = points
            .into_iter()
            .map(|chunk| {
                let sparse = self.bm25.embed_document(&chunk.text);
                let vectors = NamedVectors::default()
                    .add_vector(DENSE, chunk.dense.clone())
                    .add_vector(
                        SPARSE,
                        qdrant_client::qdrant::Vector::new_sparse(sparse.indices, sparse.values),
                    );
                let payload = payload_map(chunk.payload());
                PointStruct::new(chunk.point_id(), vectors, payload)
            })
            .collect::<Vec<_>>();
        self.client
            .upsert_points(UpsertPointsBuilder::new(&self.collection, points).wait(true))
            .await
            .map_err(|err| self.failed(err))?;
        Ok(())
    }

    pub async fn delete_document(
        &self,
        document_id: &str,
        keep_hash: Option<&str>,
    ) -> Result<(), IndexError> {
        let mut filter = Filter::must([Condition::matches("document_id", document_id.to_owned())]);
        if let Some(hash) = keep_hash {
            filter.must_not = vec![Condition::matches("content_hash", hash.to_owned())];
        }
        self.client
            .delete_points(
                DeletePointsBuilder::new(&self.collection)
                    .points(filter)
                    .wait(true),
            )
            .await
            .map_err(|err| self.failed(err))?;
        Ok(())
    }

    pub async fn search(&self, query: &IndexQuery) -> Result<Vec<SearchHit>, IndexError> {
        let filter = metadata_filter(query)?;
        let dense = || {
            query
                .dense
                .clone()
                .map(|vector| Query::new_nearest(VectorInput::new_dense(vector)))
        };
        let sparse = || {
            let vector = self.bm25.embed_query(&query.text);
            Query::new_nearest(VectorInput::new_sparse(vector.indices, vector.values))
        };
        let mut request = QueryPointsBuilder::new(&self.collection)
            .limit(query.top_k as u64)
            .with_payload(true);
        if let Some(filter) = &filter {
            request = request.filter(filter.clone());
        }
        let prefetch = |scoring: Query, using: &str| {
            let mut prefetch = PrefetchQueryBuilder::default()
                .query(scoring)
                .using(using)
                .limit(query.prefetch_depth() as u64);
            if let Some(filter) = &filter {
                prefetch = prefetch.filter(filter.clone());
            }
            prefetch
        };
        request = match query.mode {
            SearchMode::Dense => match dense() {
                Some(scoring) => request.query(scoring).using(DENSE),
                None => return Ok(Vec::new()),
            },
            SearchMode::Sparse => request.query(sparse()).using(SPARSE),
            SearchMode::Hybrid => {
                if let Some(scoring) = dense() {
                    request = request.add_prefetch(prefetch(scoring, DENSE));
                }
                request
                    .add_prefetch(prefetch(sparse(), SPARSE))
                    .query(Query::new_rrf(RrfBuilder::with_k(RRF_K)))
            }
        };
        let answer = self
            .client
            .query(request)
            .await
            .map_err(|err| self.failed(err))?;
        Ok(answer
            .result
            .into_iter()
            .filter_map(|point| {
                let payload: Map<String, Value> = point
                    .payload
                    .into_iter()
                    .map(|(key, value)| (key, value.into_json()))
                    .collect();
                hit(&payload, point.score)
            })
            .collect())
    }

    pub async fn count(&self) -> Result<u64, IndexError> {
        let counted = self
            .client
            .count(CountPointsBuilder::new(&self.collection).exact(true))
            .await
            .map_err(|err| self.failed(err))?;
        Ok(counted.result.map_or(0, |result| result.count))
    }
}

/// A chunk's JSON payload as the client's payload.
fn payload_map(payload: Value) -> Map<String, Value> {
    match payload {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// The query's metadata filter as Qdrant conditions.
fn metadata_filter(query: &IndexQuery) -> Result<Option<Filter>, IndexError> {
    let conditions: Vec<Condition> = query
        .filter_terms()?
        .into_iter()
        .map(|(key, term)| match term {
            Term::Text(text) => Condition::matches(key, text),
            Term::Flag(flag) => Condition::matches(key, flag),
            Term::Integer(integer) => Condition::matches(key, integer),
        })
        .collect();
    Ok((!conditions.is_empty()).then(|| Filter::must(conditions)))
}

fn server_error(url: &str, err: qdrant_client::QdrantError) -> IndexError {
    IndexError::Store(format!("Qdrant server at {url}: {err}"))
}
