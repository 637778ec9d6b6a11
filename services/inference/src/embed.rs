//! Embedding models: a thread that owns the encoder session and embeds batches of texts
//! (grouped by length so padding stays small). A text over the model's limit is refused,
//! naming it and both lengths, unless the request asks for truncation.

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Instant,
};

use ort::{session::Session, value::Tensor};
use slough_modelkit::package::Manifest;
use slough_protocol::{
    ErrorBody, ErrorCode,
    inference::{EmbedResponse, ModelInfo, ModelKind, ModelLoad, Usage},
};
use tokenizers::{Tokenizer, TruncationParams};
use tokio::sync::{mpsc, oneshot};

use crate::{metrics::ModelMetrics, runtime::Runtime, text::TextModel};

/// Texts run through the encoder together.
const CHUNK: usize = 32;

struct EmbedJob {
    inputs: Vec<String>,
    truncate: bool,
    reply: oneshot::Sender<Result<EmbedResponse, ErrorBody>>,
}

/// A served embedding model.
pub struct EmbeddingModel {
    pub info: ModelInfo,
    pub text: Arc<TextModel>,
    jobs: mpsc::UnboundedSender<EmbedJob>,
    /// Requests being embedded or waiting for the thread.
    pending: Arc<AtomicUsize>,
}

impl std::fmt::Debug for EmbeddingModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddingModel")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl EmbeddingModel {
    /// Opens the package's session and starts its thread.
    pub fn start(
        dir: &Path,
        manifest: &Manifest,
        runtime: &Runtime,
        metrics: ModelMetrics,
    ) -> Result<EmbeddingModel, String> {
        let text = Arc::new(TextModel::load(dir, manifest)?);
        // The same tokenizer, cutting inputs at the model's limit.
        let mut tokenizer = text.tokenizer().clone();
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: manifest.context_length,
                ..TruncationParams::default()
            }))
            .map_err(|err| err.to_string())?;
        let (session, provider) = runtime
            .session(&dir.join("model.onnx"))
            .map_err(|err| err.to_string())?;
        let info = ModelInfo {
            id: manifest.id.clone(),
            kind: ModelKind::Embedding,
            architecture: manifest.architecture.clone(),
            context_length: manifest.context_length as u32,
            quantization: manifest.quantization.clone(),
            created_at: manifest.created_at.clone(),
            provider: provider.name().to_owned(),
            dimensions: u32::try_from(manifest.graph.hidden).ok(),
            parent: manifest.parent.clone(),
        };
        let (jobs, mut inbox) = mpsc::unbounded_channel::<EmbedJob>();
        let mut worker = Worker {
            session,
            tokenizer,
            full_tokenizer: text.tokenizer().clone(),
            info: info.clone(),
            metrics,
        };
        std::thread::Builder::new()
            .name(format!("embed-{}", manifest.id))
            .spawn(move || {
                while let Some(job) = inbox.blocking_recv() {
                    let _ = job.reply.send(worker.embed(&job.inputs, job.truncate));
                }
            })
            .map_err(|err| format!("cannot start the embedding thread: {err}"))?;
        Ok(EmbeddingModel {
            info,
            text,
            jobs,
            pending: Arc::default(),
        })
    }

    /// Its load now: requests being embedded or waiting (one runs at a time).
    pub fn load(&self) -> ModelLoad {
        ModelLoad {
            model: self.info.id.clone(),
            pending: u32::try_from(self.pending.load(Ordering::Acquire)).unwrap_or(u32::MAX),
            capacity: 1,
        }
    }

    /// Embeds `inputs` (already checked for count and emptiness); with `truncate`, texts
    /// over the model's limit are cut instead of refused.
    pub async fn embed(
        &self,
        inputs: Vec<String>,
        truncate: bool,
    ) -> Result<EmbedResponse, ErrorBody> {
        let (reply, answer) = oneshot::channel();
        self.pending.fetch_add(1, Ordering::AcqRel);
        let _done = Done(&self.pending);
        let gone = || {
            ErrorBody::new(
                ErrorCode::Unavailable,
                format!("{} is shutting down", self.info.id),
            )
        };
        self.jobs
            .send(EmbedJob {
                inputs,
                truncate,
                reply,
            })
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

/// Counts a request as finished when dropped, however it ends.
struct Done<'a>(&'a AtomicUsize);

impl Drop for Done<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

struct Worker {
    session: Session,
    /// Cuts texts at the model's limit.
    tokenizer: Tokenizer,
    /// Does not cut: measures a text that is over the limit, for the refusal.
    full_tokenizer: Tokenizer,
    info: ModelInfo,
    metrics: ModelMetrics,
}

impl Worker {
    fn embed(&mut self, inputs: &[String], truncate: bool) -> Result<EmbedResponse, ErrorBody> {
        let started = Instant::now();
        let internal = |err: String| ErrorBody::new(ErrorCode::Internal, err);
        let encodings = self
            .tokenizer
            .encode_batch(inputs.to_vec(), true)
            .map_err(|err| ErrorBody::new(ErrorCode::InvalidRequest, err.to_string()))?;
        let truncated: Vec<u32> = encodings
            .iter()
            .enumerate()
            .filter(|(_, e)| !e.get_overflowing().is_empty())
            .map(|(i, _)| i as u32)
            .collect();
        if let Some(&first) = truncated.first()
            && !truncate
        {
            let index = first as usize;
            let length = self
                .full_tokenizer
                .encode_fast(inputs[index].as_str(), true)
                .map_or(0, |encoding| encoding.get_ids().len());
            return Err(ErrorBody::invalid(
                format!("inputs[{index}]"),
                format!(
                    "inputs[{index}] is {length} tokens, over the {limit}-token limit of {model}; shorten it, \
                     or set truncate to have it cut",
                    limit = self.info.context_length,
                    model = self.info.id
                ),
            ));
        }
        let prompt_tokens: usize = encodings.iter().map(|e| e.get_ids().len()).sum();
        // Similar lengths together, so each chunk pads little.
        let mut order: Vec<usize> = (0..encodings.len()).collect();
        order.sort_by_key(|&i| encodings[i].get_ids().len());
        let mut embeddings = vec![Vec::new(); encodings.len()];
        for chunk in order.chunks(CHUNK) {
            let width = chunk
                .iter()
                .map(|&i| encodings[i].get_ids().len())
                .max()
                .unwrap_or(1)
                .max(1);
            let mut ids = vec![0i64; chunk.len() * width];
            let mut mask = vec![0i64; chunk.len() * width];
            for (row, &i) in chunk.iter().enumerate() {
                for (col, &id) in encodings[i].get_ids().iter().enumerate() {
                    ids[row * width + col] = i64::from(id);
                    mask[row * width + col] = 1;
                }
            }
            let run = || -> Result<Vec<f32>, ort::Error> {
                let outputs = self.session.run(ort::inputs![
                    "input_ids" => Tensor::from_array(([chunk.len(), width], ids))?,
                    "attention_mask" => Tensor::from_array(([chunk.len(), width], mask))?,
                ])?;
                let (_, values) = outputs["embeddings"].try_extract_tensor::<f32>()?;
                Ok(values.to_vec())
            };
            let values = run().map_err(|err| internal(format!("embedding failed: {err}")))?;
            let hidden = values.len() / chunk.len();
            for (row, &i) in chunk.iter().enumerate() {
                embeddings[i] = values[row * hidden..(row + 1) * hidden].to_vec();
            }
        }
        self.metrics.embedded_texts.inc_by(inputs.len() as u64);
        self.metrics
            .embed_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(EmbedResponse {
            model: self.info.id.clone(),
            embeddings,
            truncated,
            context_length: self.info.context_length,
            usage: Usage {
                prompt_tokens: prompt_tokens as u32,
                completion_tokens: 0,
                total_tokens: prompt_tokens as u32,
            },
        })
    }
}
