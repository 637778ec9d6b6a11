//! `slough bench rag`: the vector store's share of ingestion and search, on synthetic
//! chunks (random unit vectors, text drawn from a fixed vocabulary) in a throw-away
//! Qdrant Edge shard: upsert throughput, search latency p50/p99 for dense, sparse and
//! hybrid queries on the shard as written (exact search), the time Qdrant's optimizers
//! take to build its HNSW index, and the same searches again on the optimized shard. Embedding is inference's work and not part of it (`slough eval
//! retrieval` reports end-to-end ingestion speed).

use std::time::Instant;

use rand::SeedableRng as _;
use serde::Serialize;
use slough_protocol::rag::SearchMode;
use slough_rag::index::{ChunkPoint, EdgeBackend, EdgeIndex, IndexQuery};

/// What to measure.
#[derive(Debug, Clone, clap::Args)]
pub struct RagBenchOptions {
    /// Chunks to index.
    #[arg(long, default_value_t = 100_000, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub chunks: usize,
    /// Dense vector size (all-MiniLM-L6-v2: 384).
    #[arg(long, default_value_t = 384, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub dimensions: usize,
    /// Searches per mode.
    #[arg(long, default_value_t = 200, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub queries: usize,
    /// Hits per search, 1 to 100.
    #[arg(long, default_value_t = 10, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=100))]
    pub top_k: usize,
    /// Also write the figures as JSON here.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

#[derive(Debug, Serialize)]
pub struct SearchFigure {
    pub mode: &'static str,
    /// Whether the shard had been optimized (HNSW) or was searched exactly.
    pub optimized: bool,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct RagBenchReport {
    pub chunks: usize,
    pub dimensions: usize,
    pub upsert_chunks_per_s: f64,
    pub optimize_s: f64,
    pub indexed_vectors: usize,
    pub searches: Vec<SearchFigure>,
}

const WORDS: &[&str] = &[
    "wing",
    "lift",
    "drag",
    "engine",
    "thrust",
    "fuel",
    "runway",
    "tower",
    "pilot",
    "flap",
    "rudder",
    "aileron",
    "cabin",
    "pressure",
    "altitude",
    "speed",
    "turbine",
    "propeller",
    "landing",
    "gear",
    "radar",
    "weather",
    "route",
    "cargo",
    "crew",
    "airport",
    "approach",
    "climb",
    "descent",
    "cruise",
    "stall",
    "airfoil",
    "boundary",
    "layer",
    "shock",
    "wave",
];

fn text(rng: &mut impl rand::Rng, words: usize) -> String {
    (0..words)
        .map(|_| WORDS[rng.random_range(0..WORDS.len())])
        .collect::<Vec<_>>()
        .join(" ")
}

fn unit_vector(rng: &mut impl rand::Rng, dimensions: usize) -> Vec<f32> {
    let mut values: Vec<f32> = (0..dimensions)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let norm = values.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-6);
    values.iter_mut().for_each(|v| *v /= norm);
    values
}

/// Search latencies for each mode.
fn measure_searches(
    index: &EdgeIndex,
    options: &RagBenchOptions,
    rng: &mut rand_chacha::ChaCha8Rng,
    optimized: bool,
) -> anyhow::Result<Vec<SearchFigure>> {
    let mut searches = Vec::new();
    for (mode, name) in [
        (SearchMode::Dense, "dense"),
        (SearchMode::Sparse, "sparse"),
        (SearchMode::Hybrid, "hybrid"),
    ] {
        let mut latencies = Vec::with_capacity(options.queries);
        for _ in 0..options.queries {
            let query = IndexQuery {
                text: text(&mut *rng, 6),
                dense: Some(unit_vector(&mut *rng, options.dimensions)),
                mode,
                top_k: options.top_k,
                filter: None,
            };
            let asked = Instant::now();
            index.search(&query)?;
            latencies.push(asked.elapsed().as_secs_f64() * 1000.0);
        }
        latencies.sort_by(f64::total_cmp);
        searches.push(SearchFigure {
            mode: name,
            optimized,
            p50_ms: percentile(&latencies, 0.5),
            p99_ms: percentile(&latencies, 0.99),
        });
    }
    Ok(searches)
}

fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted.get(index).copied().unwrap_or(0.0)
}

/// Runs the benchmark and prints its figures.
pub fn run(options: RagBenchOptions) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let index = EdgeBackend::new(dir.path()).create("bench", options.dimensions)?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let progress = indicatif::ProgressBar::new(options.chunks as u64);
    let started = Instant::now();
    let mut written = 0;
    while written < options.chunks {
        let batch = (options.chunks - written).min(1000);
        let points = (0..batch)
            .map(|i| {
                let number = written + i;
                ChunkPoint {
                    document_id: format!("doc-{}", number / 4),
                    content_hash: "bench".to_owned(),
                    chunk_index: (number % 4) as u32,
                    start: 0,
                    end: 0,
                    text: text(&mut rng, 120),
                    metadata: None,
                    dense: unit_vector(&mut rng, options.dimensions),
                }
            })
            .collect();
        index.upsert(points)?;
        written += batch;
        progress.set_position(written as u64);
    }
    let upsert_chunks_per_s = options.chunks as f64 / started.elapsed().as_secs_f64();
    progress.finish_and_clear();
    let mut searches = measure_searches(&index, &options, &mut rng, false)?;
    let optimizing = Instant::now();
    index.optimize()?;
    let optimize_s = optimizing.elapsed().as_secs_f64();
    let indexed_vectors = index.info()?.indexed_vectors_count;
    searches.extend(measure_searches(&index, &options, &mut rng, true)?);
    let report = RagBenchReport {
        chunks: options.chunks,
        dimensions: options.dimensions,
        upsert_chunks_per_s,
        optimize_s,
        indexed_vectors,
        searches,
    };
    println!(
        "{} chunks of {} dimensions (Qdrant Edge, one shard): upserted at {:.0} chunks/s",
        report.chunks, report.dimensions, report.upsert_chunks_per_s
    );
    println!(
        "optimized in {:.1} s ({} vectors in HNSW indexes)",
        report.optimize_s, report.indexed_vectors
    );
    for figure in &report.searches {
        println!(
            "  {:<6} search, top {}, {}: p50 {:.2} ms, p99 {:.2} ms",
            figure.mode,
            options.top_k,
            if figure.optimized {
                "optimized"
            } else {
                "exact"
            },
            figure.p50_ms,
            figure.p99_ms
        );
    }
    if let Some(path) = &options.json {
        crate::write_figures(path, &report)?;
    }
    Ok(())
}
