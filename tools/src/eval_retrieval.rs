//! `slough eval retrieval`: how well the RAG service finds relevant documents, measured
//! on a BEIR-format dataset (`corpus.jsonl` or `corpus.jsonl.gz` with `_id`, `title`,
//! `text`; `queries.jsonl` with `_id`, `text`; `qrels/test.tsv` with a header line and
//! `query-id corpus-id score`, graded scores allowed, 0 or less not relevant). The
//! corpus goes through a running platform's gateway into a throw-away collection; each
//! judged query is searched in every mode, hits folded to documents (a document ranks
//! where its best chunk does), and scored: recall@1/5/10, MRR@10 and nDCG@10 (linear
//! gains, as trec_eval and BEIR).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    io::{BufRead as _, BufReader, Read as _},
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use serde_json::json;

use slough::{
    Settings,
    gateway_client::{GatewayClient, api_key, gateway_url},
};

/// What to evaluate.
#[derive(Debug, Clone, clap::Args)]
pub struct RetrievalEvalOptions {
    /// The dataset's directory (corpus.jsonl[.gz], queries.jsonl, qrels/<split>.tsv).
    pub dataset: PathBuf,
    /// The judgements to score against.
    #[arg(long, default_value = "test")]
    pub split: String,
    /// The embedding model (default: the first one the gateway lists).
    #[arg(long)]
    pub embedding_model: Option<String>,
    /// Tokens per chunk (default: the collection default).
    #[arg(long)]
    pub chunk_size: Option<u32>,
    /// A quick look: only the first N judged queries, their judged documents and every
    /// tenth other document (see [`Dataset::sample`]).
    #[arg(long, value_name = "N")]
    pub sample: Option<usize>,
    /// The gateway's URL (default: http:// and the configured gateway.listen).
    #[arg(long)]
    pub url: Option<String>,
    /// The API key, with the rag scope (default: SLOUGH_API_KEY, then the admin key
    /// `slough up` made).
    #[arg(long)]
    pub key: Option<String>,
    /// Also write the figures as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// A BEIR dataset.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub name: String,
    /// `(id, text)`, the title (when there is one) before the text.
    pub corpus: Vec<(String, String)>,
    /// `(id, text)` of the judged queries, in file order.
    pub queries: Vec<(String, String)>,
    /// Query id → document id → graded relevance (> 0).
    pub qrels: HashMap<String, HashMap<String, f64>>,
}

#[derive(Deserialize)]
struct CorpusLine {
    #[serde(rename = "_id")]
    id: String,
    #[serde(default)]
    title: String,
    text: String,
}

#[derive(Deserialize)]
struct QueryLine {
    #[serde(rename = "_id")]
    id: String,
    text: String,
}

fn lines(path: &Path) -> anyhow::Result<Vec<String>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let reader: Box<dyn std::io::Read> = if path.extension().is_some_and(|ext| ext == "gz") {
        Box::new(flate2::read::GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let mut text = String::new();
    BufReader::new(reader)
        .read_to_string(&mut text)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(text.lines().map(str::to_owned).collect())
}

impl Dataset {
    /// Reads the dataset in `dir` with the judgements of `split`.
    pub fn read(dir: &Path, split: &str) -> anyhow::Result<Dataset> {
        let corpus_path = ["corpus.jsonl", "corpus.jsonl.gz"]
            .iter()
            .map(|name| dir.join(name))
            .find(|path| path.exists())
            .ok_or_else(|| anyhow::anyhow!("{} has no corpus.jsonl", dir.display()))?;
        let mut corpus = Vec::new();
        for (number, line) in lines(&corpus_path)?.iter().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let document: CorpusLine = serde_json::from_str(line)
                .with_context(|| format!("{}, line {}", corpus_path.display(), number + 1))?;
            let text = match document.title.trim() {
                "" => document.text,
                title => format!("{title}\n\n{}", document.text),
            };
            // Documents without text (Cranfield has two) cannot be found; skip them.
            if !text.trim().is_empty() {
                corpus.push((document.id, text));
            }
        }
        let qrels_path = dir.join("qrels").join(format!("{split}.tsv"));
        let mut qrels: HashMap<String, HashMap<String, f64>> = HashMap::new();
        let qrels_file = std::fs::File::open(&qrels_path)
            .with_context(|| format!("cannot open {}", qrels_path.display()))?;
        for (number, line) in BufReader::new(qrels_file).lines().enumerate().skip(1) {
            let line = line?;
            let fields: Vec<&str> = line.split('\t').collect();
            let [query, document, score] = fields[..] else {
                if line.trim().is_empty() {
                    continue;
                }
                anyhow::bail!(
                    "{}, line {}: expected 3 fields",
                    qrels_path.display(),
                    number + 1
                );
            };
            let score: f64 = score.trim().parse().with_context(|| {
                format!("{}, line {}: bad score", qrels_path.display(), number + 1)
            })?;
            if score > 0.0 {
                qrels
                    .entry(query.to_owned())
                    .or_default()
                    .insert(document.to_owned(), score);
            }
        }
        let mut queries = Vec::new();
        for (number, line) in lines(&dir.join("queries.jsonl"))?.iter().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let query: QueryLine = serde_json::from_str(line)
                .with_context(|| format!("queries.jsonl, line {}", number + 1))?;
            if qrels.contains_key(&query.id) {
                queries.push((query.id, query.text));
            }
        }
        let name = dir.file_name().map_or_else(
            || "dataset".to_owned(),
            |name| name.to_string_lossy().into_owned(),
        );
        Ok(Dataset {
            name,
            corpus,
            queries,
            qrels,
        })
    }
}

impl Dataset {
    /// A smaller dataset for a quick look: the first `queries` judged queries, every
    /// document judged for them, and every `spread`-th other document as distractors.
    pub fn sample(&self, queries: usize, spread: usize) -> Dataset {
        let queries: Vec<(String, String)> = self.queries.iter().take(queries).cloned().collect();
        let judged: HashSet<&str> = queries
            .iter()
            .flat_map(|(id, _)| self.qrels[id].keys().map(String::as_str))
            .collect();
        let corpus = self
            .corpus
            .iter()
            .enumerate()
            .filter(|(position, (id, _))| {
                judged.contains(id.as_str()) || position % spread.max(1) == 0
            })
            .map(|(_, document)| document.clone())
            .collect();
        let qrels = queries
            .iter()
            .map(|(id, _)| (id.clone(), self.qrels[id].clone()))
            .collect();
        Dataset {
            name: format!("{} (sample)", self.name),
            corpus,
            queries,
            qrels,
        }
    }
}

/// The scores of one ranking against one query's judgements.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Scores {
    pub recall_at_1: f64,
    pub recall_at_5: f64,
    pub recall_at_10: f64,
    pub mrr_at_10: f64,
    pub ndcg_at_10: f64,
}

/// Scores `ranked` (document ids, best first) against `relevant` (graded).
pub fn score(ranked: &[String], relevant: &HashMap<String, f64>) -> Scores {
    let total = relevant.len().max(1) as f64;
    let recall = |k: usize| {
        ranked
            .iter()
            .take(k)
            .filter(|id| relevant.contains_key(*id))
            .count() as f64
            / total
    };
    let mrr = ranked
        .iter()
        .take(10)
        .position(|id| relevant.contains_key(id))
        .map_or(0.0, |rank| 1.0 / (rank as f64 + 1.0));
    let discount = |rank: usize| 1.0 / (rank as f64 + 2.0).log2();
    let dcg: f64 = ranked
        .iter()
        .take(10)
        .enumerate()
        .map(|(rank, id)| relevant.get(id).copied().unwrap_or(0.0) * discount(rank))
        .sum();
    let mut ideal: Vec<f64> = relevant.values().copied().collect();
    ideal.sort_by(|a, b| b.total_cmp(a));
    let idcg: f64 = ideal
        .iter()
        .take(10)
        .enumerate()
        .map(|(rank, gain)| gain * discount(rank))
        .sum();
    Scores {
        recall_at_1: recall(1),
        recall_at_5: recall(5),
        recall_at_10: recall(10),
        mrr_at_10: mrr,
        ndcg_at_10: if idcg > 0.0 { dcg / idcg } else { 0.0 },
    }
}

fn mean(all: &[Scores]) -> Scores {
    let n = all.len().max(1) as f64;
    let sum = |field: fn(&Scores) -> f64| all.iter().map(field).sum::<f64>() / n;
    Scores {
        recall_at_1: sum(|s| s.recall_at_1),
        recall_at_5: sum(|s| s.recall_at_5),
        recall_at_10: sum(|s| s.recall_at_10),
        mrr_at_10: sum(|s| s.mrr_at_10),
        ndcg_at_10: sum(|s| s.ndcg_at_10),
    }
}

/// Every mode's mean scores on one dataset.
#[derive(Debug, Clone, Serialize)]
pub struct RetrievalReport {
    pub dataset: String,
    pub documents: usize,
    pub chunks: u64,
    pub queries: usize,
    pub embedding_model: String,
    pub ingest_seconds: f64,
    pub modes: BTreeMap<&'static str, Scores>,
}

/// Text per upload: well under the gateway's body limit (4 MiB by default).
const UPLOAD_BYTES: usize = 1024 * 1024;
/// Chunks fetched per query, folded to at least ten documents.
const SEARCH_DEPTH: u32 = 40;

/// Ingests `dataset` into collection `name` (created here, deleted after) and scores
/// every mode.
pub async fn evaluate(
    gateway: &GatewayClient,
    dataset: &Dataset,
    embedding_model: &str,
    chunk_size: Option<u32>,
    progress: &indicatif::ProgressBar,
) -> anyhow::Result<RetrievalReport> {
    let name = format!("eval-{}", std::process::id());
    let mut create = json!({"name": name, "embedding_model": embedding_model});
    if let Some(size) = chunk_size {
        create["chunk_size"] = json!(size);
    }
    gateway.post("/v1/collections", &create).await?;
    let outcome = measure(gateway, dataset, &name, progress).await;
    // The collection goes whatever happened.
    if let Err(err) = gateway.delete(&format!("/v1/collections/{name}")).await {
        tracing::warn!("the throw-away collection {name} stays: {err}");
    }
    let (chunks, ingest_seconds, modes) = outcome?;
    Ok(RetrievalReport {
        dataset: dataset.name.clone(),
        documents: dataset.corpus.len(),
        chunks,
        queries: dataset.queries.len(),
        embedding_model: embedding_model.to_owned(),
        ingest_seconds,
        modes,
    })
}

/// The corpus in uploads of about [`UPLOAD_BYTES`] of text each.
fn upload_batches(corpus: &[(String, String)]) -> Vec<&[(String, String)]> {
    let mut batches = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (position, (_, text)) in corpus.iter().enumerate() {
        if bytes + text.len() > UPLOAD_BYTES && position > start {
            batches.push(&corpus[start..position]);
            (start, bytes) = (position, 0);
        }
        bytes += text.len();
    }
    if start < corpus.len() {
        batches.push(&corpus[start..]);
    }
    batches
}

type Measured = (u64, f64, BTreeMap<&'static str, Scores>);

async fn measure(
    gateway: &GatewayClient,
    dataset: &Dataset,
    name: &str,
    progress: &indicatif::ProgressBar,
) -> anyhow::Result<Measured> {
    progress.set_length((dataset.corpus.len() + 3 * dataset.queries.len()) as u64);
    progress.set_message(format!("{}: ingesting", dataset.name));
    let started = std::time::Instant::now();
    let mut chunks = 0;
    for batch in upload_batches(&dataset.corpus) {
        let documents: Vec<_> = batch
            .iter()
            .map(|(id, text)| json!({"id": id, "text": text}))
            .collect();
        // Streamed, so that the bar moves as the gateway's batches are done.
        let mut done = 0;
        gateway
            .post_events(
                &format!("/v1/collections/{name}/documents?stream=true"),
                &json!({"documents": documents}),
                |event| match event["object"].as_str() {
                    Some("ingest.progress") => {
                        let now = event["documents_done"].as_u64().unwrap_or(done);
                        progress.inc(now.saturating_sub(done));
                        done = now;
                    }
                    Some("ingest.completed") => {
                        chunks += event["chunks"].as_u64().unwrap_or(0);
                    }
                    _ => {}
                },
            )
            .await?;
    }
    let ingest_seconds = started.elapsed().as_secs_f64();
    let mut modes = BTreeMap::new();
    for mode in ["dense", "sparse", "hybrid"] {
        progress.set_message(format!("{}: {mode}", dataset.name));
        let mut all = Vec::with_capacity(dataset.queries.len());
        for (id, text) in &dataset.queries {
            let found = gateway
                .post(
                    &format!("/v1/collections/{name}/search"),
                    &json!({"query": text, "top_k": SEARCH_DEPTH, "mode": mode}),
                )
                .await?;
            let mut seen = HashSet::new();
            let ranked: Vec<String> = found["hits"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|hit| hit["document_id"].as_str())
                .filter(|document| seen.insert(document.to_owned()))
                .map(str::to_owned)
                .collect();
            all.push(score(&ranked, &dataset.qrels[id]));
            progress.inc(1);
        }
        modes.insert(mode, mean(&all));
    }
    Ok((chunks, ingest_seconds, modes))
}

/// `slough eval retrieval`.
pub fn run(settings: Settings, options: RetrievalEvalOptions) -> anyhow::Result<()> {
    let mut dataset = Dataset::read(&options.dataset, &options.split)?;
    if let Some(queries) = options.sample {
        dataset = dataset.sample(queries, 10);
    }
    let key = api_key(&settings, options.key.clone())?;
    let base = gateway_url(&settings, options.url.clone());
    slough::runtime()?.block_on(async {
        let gateway = GatewayClient::new(&base, &key)?;
        let model = match options.embedding_model.clone() {
            Some(model) => model,
            None => gateway.first_model("embedding").await?,
        };
        let progress = indicatif::ProgressBar::new(0).with_style(
            indicatif::ProgressStyle::with_template("{msg} {bar:30} {pos}/{len}, {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        let report = evaluate(&gateway, &dataset, &model, options.chunk_size, &progress).await?;
        progress.finish_and_clear();
        print_report(&report);
        if let Some(path) = &options.json {
            crate::write_figures(path, &report)?;
        }
        Ok(())
    })
}

fn print_report(report: &RetrievalReport) {
    println!(
        "{}: {} documents ({} chunks, ingested in {:.1} s), {} judged queries, {}",
        report.dataset,
        report.documents,
        report.chunks,
        report.ingest_seconds,
        report.queries,
        report.embedding_model
    );
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
    table.set_header([
        "mode",
        "recall@1",
        "recall@5",
        "recall@10",
        "MRR@10",
        "nDCG@10",
    ]);
    for (mode, scores) in &report.modes {
        table.add_row([
            (*mode).to_owned(),
            format!("{:.3}", scores.recall_at_1),
            format!("{:.3}", scores.recall_at_5),
            format!("{:.3}", scores.recall_at_10),
            format!("{:.3}", scores.mrr_at_10),
            format!("{:.3}", scores.ndcg_at_10),
        ]);
    }
    println!("{table}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranked(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|&id| id.to_owned()).collect()
    }

    #[test]
    fn scores_follow_their_definitions() {
        let relevant: HashMap<String, f64> = [("a".to_owned(), 2.0), ("b".to_owned(), 1.0)].into();
        let perfect = score(&ranked(&["a", "b", "c"]), &relevant);
        assert_eq!(perfect.ndcg_at_10, 1.0);
        assert_eq!(perfect.mrr_at_10, 1.0);
        assert_eq!(perfect.recall_at_1, 0.5);
        let late = score(&ranked(&["x", "y", "b"]), &relevant);
        assert!((late.mrr_at_10 - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(late.recall_at_5, 0.5);
        // DCG = 1/log2(4); IDCG = 2 + 1/log2(3).
        let expected = 0.5 / (2.0 + 1.0 / 3f64.log2());
        assert!((late.ndcg_at_10 - expected).abs() < 1e-12, "{late:?}");
        let none = score(&ranked(&["x"]), &relevant);
        assert_eq!(none, Scores::default());
    }

    #[test]
    fn reads_the_cranfield_dataset() {
        let Some(data) = slough_testkit::eval_data_dir("reads_the_cranfield_dataset") else {
            return;
        };
        let dir = data.join("retrieval/cranfield");
        let dataset = Dataset::read(&dir, "test").unwrap();
        assert_eq!(dataset.corpus.len(), 1398, "two documents have no text");
        assert_eq!(dataset.queries.len(), 225);
    }
}
