//! What happens to a job after it is created: [`Worker::validate`] checks its files
//! (status `validating_files`) and queues it; [`Worker::serve`] pulls queued jobs,
//! claims each with a lease, trains it on a blocking thread ([`crate::trainer`]),
//! checkpoints, and on success merges and exports the model as a package, announced
//! with `models.added` so inference loads it.
//!
//! A job message is acked only when the job reached a final state. A worker that stops
//! (shutdown) saves a checkpoint and hands the job back at once; one that dies is
//! noticed when its lease and JetStream's ack deadline run out, and whichever worker gets
//! the job next resumes from the newest checkpoint.
//!
//! The pieces: this module reads a job's inputs; [`validate`] checks its files;
//! [`lease`] pulls jobs off the queue and holds each with a lease while it runs;
//! [`lora`] fine-tunes a chat model (LoRA, checkpoints, the exported package);
//! [`head`] trains a classifier head over an embedding model.

mod head;
mod lease;
mod lora;
mod validate;

pub use self::head::CLASSIFIER_LEARNING_RATE;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use candle_core::DType;
use chrono::Utc;
use slough_bus::{Bus, FileStore};
use slough_modelkit::{
    chat::ChatTemplate,
    checkpoint::{self, ChatFacts, LlamaCheckpoint, StoredFloat},
    llama::{BuildOptions, FloatWeights},
    package::{self, ImportOptions, Manifest, ModelKind, Quiet},
};
use slough_protocol::{
    ErrorBody, ErrorCode, inference,
    training::{
        ClassifierResult, EventLevel, Hyperparameters, JobError, JobStatus, Lora, MethodKind,
        Setting,
    },
};
use slough_store::entities::fine_tuning_job;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::{
    classifier::{self, Labelled},
    jobs::{self, Claim, Jobs},
    metrics::Metrics,
    queue::{Delivery, Queue},
    trainer::{
        self, Trainer,
        data::{self, Example, Renderer},
        model::{LoraConfig, Target},
    },
};

/// The base learning rate `learning_rate_multiplier` scales.
pub const BASE_LEARNING_RATE: f64 = 2e-4;
/// Checkpoints kept on disk per job (older ones are removed; their rows stay).
const KEEP_CHECKPOINTS: usize = 3;

/// Where a worker reads and writes.
#[derive(Debug, Clone)]
pub struct Paths {
    pub models: PathBuf,
    pub sources: PathBuf,
    pub jobs: PathBuf,
}

/// How a worker trains.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub checkpoint_every: u64,
    pub micro_batch_tokens: usize,
    pub lease: Duration,
    pub export_weights: FloatWeights,
    /// The most tokens a job may train on (its file's tokens times its epochs).
    pub max_job_tokens: u64,
}

/// A training worker (one per instance; it runs `concurrency` jobs at once).
pub struct Worker {
    pub jobs: Jobs,
    pub files: FileStore,
    pub bus: Bus,
    pub queue: Queue,
    pub paths: Paths,
    pub settings: Settings,
    /// Who holds a lease: the instance id.
    pub id: String,
    pub metrics: Metrics,
}

/// How a run ended.
enum Outcome {
    Succeeded {
        model: String,
        tokens: u64,
        /// A classifier's figures.
        figures: Option<ClassifierResult>,
    },
    Failed(JobError),
    /// Cancelled, or the lease went to another worker: nothing more to do here.
    Stopped,
    /// This worker is shutting down: the job goes back to the queue.
    Interrupted,
}

/// The code of a job error that is no fault of the job: its files cannot be read from
/// the file store now (a NATS server lost, JetStream electing a new leader). Such a job
/// is tried again shortly, not failed.
const FILES_UNAVAILABLE: &str = "files_unavailable";

/// Whether `error` passes once the file store answers again.
fn can_wait(error: &JobError) -> bool {
    error.code == FILES_UNAVAILABLE
}

fn job_error(code: &str, message: impl Into<String>, param: Option<&str>) -> JobError {
    JobError {
        code: code.to_owned(),
        message: message.into(),
        param: param.map(str::to_owned),
    }
}

/// Everything a run needs from the base package.
struct Base {
    manifest: Manifest,
    dir: PathBuf,
    template: ChatTemplate,
    tokenizer: tokenizers::Tokenizer,
}

impl Base {
    /// What turns a training file's lines into examples for this model.
    fn renderer(&self) -> Renderer<'_> {
        Renderer {
            template: &self.template,
            tokenizer: &self.tokenizer,
            context_length: self.manifest.context_length,
        }
    }
}

impl Worker {
    /// The base model `id` as a chat package with its tokenizer and template, or why not.
    fn base(&self, id: &str) -> Result<Arc<Base>, JobError> {
        let missing = || {
            job_error(
                "model_not_found",
                format!("the base model `{id}` is not in the models directory"),
                Some("model"),
            )
        };
        let dir = package::package_dir(&self.paths.models, id).map_err(|_| missing())?;
        let manifest = package::read_manifest(&dir).map_err(|_| missing())?;
        if manifest.kind != ModelKind::Chat || manifest.architecture != "llama" {
            return Err(job_error(
                "invalid_model",
                format!(
                    "`{id}` is an {:?} model; only llama chat models can be fine-tuned",
                    manifest.kind
                ),
                Some("model"),
            ));
        }
        let template = ChatTemplate::new(
            manifest.chat_template.as_deref().unwrap_or_default(),
            manifest.special_tokens.bos.as_deref().unwrap_or_default(),
            manifest.special_tokens.eos.as_deref().unwrap_or_default(),
        )
        .map_err(|err| job_error("invalid_model", format!("`{id}`: {err}"), Some("model")))?;
        let tokenizer =
            tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).map_err(|err| {
                job_error(
                    "invalid_model",
                    format!("`{id}`: tokenizer: {err}"),
                    Some("model"),
                )
            })?;
        Ok(Arc::new(Base {
            manifest,
            dir,
            template,
            tokenizer,
        }))
    }

    /// Reads and parses one of the job's files.
    async fn examples(
        &self,
        base: &Arc<Base>,
        file_id: &str,
        param: &str,
    ) -> Result<Vec<Example>, JobError> {
        let base = Arc::clone(base);
        self.over_file(file_id, param, move |text| {
            data::parse_file(text, &base.renderer())
        })
        .await
    }

    /// Reads file `file_id` and runs `work` over its text on a blocking thread, so that
    /// a large file does not hold up the service's other requests; a problem `work`
    /// finds fails the job naming `param` and the file.
    async fn over_file<T: Send + 'static>(
        &self,
        file_id: &str,
        param: &str,
        work: impl FnOnce(&str) -> Result<T, data::FileError> + Send + 'static,
    ) -> Result<T, JobError> {
        let code = format!("invalid_{param}");
        let text = self.file_text(file_id, param).await?;
        let done = tokio::task::spawn_blocking(move || work(&text))
            .await
            .map_err(|err| data::at(0, format!("reading it failed: {err}")));
        done.and_then(|result| result)
            .map_err(|err| job_error(&code, format!("file {file_id}: {err}"), Some(param)))
    }

    /// A file's content as text.
    async fn file_text(&self, file_id: &str, param: &str) -> Result<String, JobError> {
        let code = format!("invalid_{param}");
        let bytes = self
            .files
            .get(file_id)
            .await
            .map_err(|err| match err.code() {
                ErrorCode::Unavailable => {
                    job_error(FILES_UNAVAILABLE, err.to_string(), Some(param))
                }
                _ => job_error(&code, err.to_string(), Some(param)),
            })?;
        String::from_utf8(bytes).map_err(|_| {
            job_error(
                &code,
                format!("file {file_id} is not UTF-8 text"),
                Some(param),
            )
        })
    }

    /// A classifier job's labelled training file.
    async fn labelled(&self, job: &fine_tuning_job::Model) -> Result<Labelled, JobError> {
        self.over_file(&job.training_file, "training_file", |text| {
            classifier::parse_file(text)
        })
        .await
    }
}
