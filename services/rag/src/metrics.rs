//! The RAG service's metrics (ARCHITECTURE.md naming: `slough_rag_<what>_<unit>`),
//! labelled by collection (created by keys with the `rag` scope, so the set stays small)
//! or search mode. Requests and their latency per endpoint come from the bus host.

use std::time::Duration;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
};
use slough_protocol::rag::{IngestStatus, IngestedDocument, SearchMode};

#[derive(Clone)]
pub struct Metrics {
    documents: IntCounterVec,
    chunks: IntCounterVec,
    ingest_seconds: Histogram,
    search_seconds: HistogramVec,
    embed_batch: Histogram,
    collection_documents: IntGaugeVec,
    collection_chunks: IntGaugeVec,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

impl Metrics {
    pub fn register(registry: &Registry) -> Result<Metrics, prometheus::Error> {
        let metrics = Metrics {
            documents: IntCounterVec::new(
                Opts::new(
                    "slough_rag_documents_ingested_total",
                    "Documents ingested, by outcome (created, replaced, unchanged)",
                ),
                &["status"],
            )?,
            chunks: IntCounterVec::new(
                Opts::new(
                    "slough_rag_chunks_ingested_total",
                    "Chunks written by ingestion",
                ),
                &["status"],
            )?,
            ingest_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "slough_rag_ingest_seconds",
                    "Time to ingest one document: split, embed, index",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
            )?,
            search_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "slough_rag_search_seconds",
                    "Time to answer a search, embedding the query included, by mode",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["mode"],
            )?,
            embed_batch: Histogram::with_opts(
                HistogramOpts::new(
                    "slough_rag_embed_batch_size",
                    "Texts per embed request sent to inference",
                )
                .buckets(BATCH_BUCKETS.to_vec()),
            )?,
            collection_documents: IntGaugeVec::new(
                Opts::new(
                    "slough_rag_collection_documents",
                    "Documents per collection",
                ),
                &["collection"],
            )?,
            collection_chunks: IntGaugeVec::new(
                Opts::new("slough_rag_collection_chunks", "Chunks per collection"),
                &["collection"],
            )?,
        };
        registry.register(Box::new(metrics.documents.clone()))?;
        registry.register(Box::new(metrics.chunks.clone()))?;
        registry.register(Box::new(metrics.ingest_seconds.clone()))?;
        registry.register(Box::new(metrics.search_seconds.clone()))?;
        registry.register(Box::new(metrics.embed_batch.clone()))?;
        registry.register(Box::new(metrics.collection_documents.clone()))?;
        registry.register(Box::new(metrics.collection_chunks.clone()))?;
        Ok(metrics)
    }

    pub fn ingested(&self, document: &IngestedDocument, took: Duration) {
        let status = match document.status {
            IngestStatus::Created => "created",
            IngestStatus::Replaced => "replaced",
            IngestStatus::Unchanged => "unchanged",
        };
        self.documents.with_label_values(&[status]).inc();
        if document.status != IngestStatus::Unchanged {
            self.chunks
                .with_label_values(&[status])
                .inc_by(document.chunks);
            self.ingest_seconds.observe(took.as_secs_f64());
        }
    }

    pub fn searched(&self, mode: SearchMode, took: Duration) {
        let mode = match mode {
            SearchMode::Dense => "dense",
            SearchMode::Sparse => "sparse",
            SearchMode::Hybrid => "hybrid",
        };
        self.search_seconds
            .with_label_values(&[mode])
            .observe(took.as_secs_f64());
    }

    pub fn embed_batch(&self, size: usize) {
        self.embed_batch.observe(size as f64);
    }

    pub fn size(&self, collection: &str, documents: u64, chunks: u64) {
        let gauge = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        self.collection_documents
            .with_label_values(&[collection])
            .set(gauge(documents));
        self.collection_chunks
            .with_label_values(&[collection])
            .set(gauge(chunks));
    }

    /// Drops a deleted collection's series.
    pub fn forget(&self, collection: &str) {
        let _ = self.collection_documents.remove_label_values(&[collection]);
        let _ = self.collection_chunks.remove_label_values(&[collection]);
    }
}
