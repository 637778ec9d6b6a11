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
    ErrorBody, inference,
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

impl Worker {
    /// The base model `id` as a chat package with its tokenizer and template, or why not.
    fn base(&self, id: &str) -> Result<Base, JobError> {
        let dir = self.paths.models.join(id);
        let missing = || {
            job_error(
                "model_not_found",
                format!("the base model `{id}` is not in the models directory"),
                Some("model"),
            )
        };
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
        Ok(Base {
            manifest,
            dir,
            template,
            tokenizer,
        })
    }

    /// Reads and parses one of the job's files.
    async fn examples(
        &self,
        base: &Base,
        file_id: &str,
        param: &str,
    ) -> Result<Vec<Example>, JobError> {
        let code = format!("invalid_{param}");
        let text = self.file_text(file_id, param).await?;
        let renderer = Renderer {
            template: &base.template,
            tokenizer: &base.tokenizer,
            context_length: base.manifest.context_length,
        };
        data::parse_file(&text, &renderer)
            .map_err(|err| job_error(&code, format!("file {file_id}: {err}"), Some(param)))
    }

    /// A file's content as text.
    async fn file_text(&self, file_id: &str, param: &str) -> Result<String, JobError> {
        let code = format!("invalid_{param}");
        let bytes = self
            .files
            .get(file_id)
            .await
            .map_err(|err| job_error(&code, err.to_string(), Some(param)))?;
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
        let text = self.file_text(&job.training_file, "training_file").await?;
        classifier::parse_file(&text).map_err(|err| {
            job_error(
                "invalid_training_file",
                format!("file {}: {err}", job.training_file),
                Some("training_file"),
            )
        })
    }

    /// What validating a job's files found, as its event says it.
    async fn check_files(&self, job: &fine_tuning_job::Model) -> Result<String, JobError> {
        if jobs::method(job) == MethodKind::Classifier {
            let labelled = self.labelled(job).await?;
            return Ok(format!(
                "Files validated: {} labelled examples, labels {}",
                labelled.texts.len(),
                labelled.labels.join(", ")
            ));
        }
        let base = self.base(&job.model)?;
        let train = self
            .examples(&base, &job.training_file, "training_file")
            .await?;
        let tokens: usize = train.iter().map(|e| e.tokens.len()).sum();
        let mut message = format!(
            "Files validated: {} training examples ({tokens} tokens)",
            train.len()
        );
        if let Some(file) = &job.validation_file {
            let valid = self.examples(&base, file, "validation_file").await?.len();
            message.push_str(&format!(", {valid} validation examples"));
        }
        Ok(message)
    }

    /// Checks a `validating_files` job's files; queues it or fails it naming the problem.
    pub async fn validate(&self, id: &str) {
        if let Err(err) = self.try_validate(id).await {
            tracing::warn!(job = id, "cannot validate the job now: {err}");
        }
    }

    async fn try_validate(&self, id: &str) -> Result<(), ErrorBody> {
        let job = self.jobs.get(id, None).await?;
        if jobs::status(&job) != JobStatus::ValidatingFiles {
            return Ok(());
        }
        match self.check_files(&job).await {
            Err(error) => {
                self.jobs.fail(id, &error).await?;
            }
            Ok(message) => {
                let moved = self
                    .jobs
                    .transition(id, &[JobStatus::ValidatingFiles], JobStatus::Queued)
                    .await?;
                if moved {
                    self.jobs
                        .event(id, EventLevel::Info, &message, None)
                        .await?;
                    self.queue.publish(id).await.map_err(|err| err.to_body())?;
                    self.jobs
                        .event(id, EventLevel::Info, "Job queued", None)
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// Pulls and runs jobs, `concurrency` at once, until `shutdown`.
    pub async fn serve(self: Arc<Self>, concurrency: usize, shutdown: CancellationToken) {
        let slots = Arc::new(Semaphore::new(concurrency));
        let mut running = tokio::task::JoinSet::new();
        loop {
            let permit = tokio::select! {
                permit = slots.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
                () = shutdown.cancelled() => break,
            };
            let next = tokio::select! {
                next = self.queue.next(Duration::from_secs(5)) => next,
                () = shutdown.cancelled() => break,
            };
            match next {
                Ok(Some(delivery)) => {
                    let worker = self.clone();
                    let stop = shutdown.clone();
                    running.spawn(async move {
                        worker.handle(delivery, stop).await;
                        drop(permit);
                    });
                }
                Ok(None) => {}
                Err(err) => {
                    tracing::warn!("job queue: {err}");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        () = shutdown.cancelled() => break,
                    }
                }
            }
            while running.try_join_next().is_some() {}
        }
        // Running jobs see the shutdown at their next step, checkpoint and hand back.
        while running.join_next().await.is_some() {}
    }

    async fn handle(self: Arc<Self>, delivery: Delivery, stop: CancellationToken) {
        let id = delivery.job.id.clone();
        let lease = chrono::Duration::from_std(self.settings.lease).unwrap_or_default();
        let job = match self.jobs.claim(&id, &self.id, lease).await {
            Ok(Claim::Claimed(job)) => *job,
            Ok(Claim::Done) => return delivery.done().await,
            Ok(Claim::Busy) => return delivery.retry_after(self.settings.lease).await,
            Err(err) => {
                tracing::warn!(job = %id, "cannot claim the job: {err}");
                return delivery.retry_after(Duration::from_secs(5)).await;
            }
        };
        tracing::info!(job = %id, model = %job.model, "training");
        let delivery = Arc::new(delivery);
        // Keeps the lease and JetStream's ack deadline alive through long phases
        // (loading, validation, export); steps renew the lease themselves too.
        let heartbeat = {
            let worker = self.clone();
            let delivery = delivery.clone();
            let id = id.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(worker.settings.lease / 3);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    delivery.working().await;
                    let _ = worker.jobs.extend_lease(&id, &worker.id, lease).await;
                }
            })
        };
        let outcome = match jobs::method(&job) {
            MethodKind::Supervised => self.run(&job, &delivery, &stop).await,
            MethodKind::Classifier => self.run_classifier(&job).await,
        };
        heartbeat.abort();
        let status = match outcome {
            Outcome::Succeeded {
                model,
                tokens,
                figures,
            } => {
                match self
                    .jobs
                    .succeed(&id, &self.id, &model, tokens, figures.as_ref())
                    .await
                {
                    Ok(true) => {
                        // Inference serves chat models; classifiers are personality's.
                        let event = inference::ModelEvent {
                            model: model.clone(),
                        };
                        let served = figures.is_none();
                        if served
                            && let Err(err) = self.bus.emit(&inference::MODEL_ADDED, &event).await
                        {
                            tracing::warn!(job = %id, "cannot announce {model}: {err}");
                        }
                        let _ = self
                            .jobs
                            .event(
                                &id,
                                EventLevel::Info,
                                &format!("New fine-tuned model created: {model}"),
                                None,
                            )
                            .await;
                        let _ = self
                            .jobs
                            .event(
                                &id,
                                EventLevel::Info,
                                "The job has successfully completed",
                                None,
                            )
                            .await;
                        Some("succeeded")
                    }
                    // Cancelled while exporting: the package stays unannounced.
                    _ => Some("cancelled"),
                }
            }
            Outcome::Failed(error) => {
                tracing::warn!(job = %id, "failed: {}", error.message);
                let _ = self.jobs.fail(&id, &error).await;
                Some("failed")
            }
            Outcome::Stopped => Some("cancelled"),
            Outcome::Interrupted => None,
        };
        match status {
            Some(status) => {
                self.metrics.finished(&job.model, status);
                delivery.done().await;
            }
            None => {
                self.metrics.finished(&job.model, "interrupted");
                let _ = self.jobs.release(&id, &self.id).await;
                delivery.retry_after(Duration::ZERO).await;
            }
        }
    }

    async fn run(
        self: &Arc<Self>,
        job: &fine_tuning_job::Model,
        delivery: &Arc<Delivery>,
        stop: &CancellationToken,
    ) -> Outcome {
        let base = match self.base(&job.model) {
            Ok(base) => base,
            Err(error) => return Outcome::Failed(error),
        };
        let train = match self
            .examples(&base, &job.training_file, "training_file")
            .await
        {
            Ok(train) => train,
            Err(error) => return Outcome::Failed(error),
        };
        let valid = match &job.validation_file {
            Some(file) => match self.examples(&base, file, "validation_file").await {
                Ok(valid) => valid,
                Err(error) => return Outcome::Failed(error),
            },
            None => Vec::new(),
        };
        let requested: Hyperparameters =
            serde_json::from_str(&job.hyperparameters).unwrap_or_default();
        let lora: Lora = serde_json::from_str(&job.lora).unwrap_or_default();
        let hyper = resolve(
            &requested,
            train.len(),
            job.seed as u64,
            self.settings.micro_batch_tokens,
        );
        let resolved = Hyperparameters {
            n_epochs: Setting::Value(hyper.epochs as u32),
            batch_size: Setting::Value(hyper.batch_size as u32),
            learning_rate_multiplier: Setting::Value(hyper.learning_rate / BASE_LEARNING_RATE),
        };
        if let Err(err) = self.jobs.set_hyperparameters(&job.id, &resolved).await {
            tracing::warn!(job = %job.id, "cannot record the hyperparameters: {err}");
        }
        let run = Run {
            worker: self.clone(),
            job: job.clone(),
            base,
            delivery: delivery.clone(),
            stop: stop.clone(),
            runtime: tokio::runtime::Handle::current(),
        };
        let lora = LoraConfig {
            rank: lora.rank as usize,
            alpha: lora.alpha,
            dropout: lora.dropout,
            targets: lora
                .target_modules
                .iter()
                .filter_map(|t| Target::parse(t))
                .collect(),
        };
        tokio::task::spawn_blocking(move || run.train(lora, hyper, train, valid))
            .await
            .unwrap_or_else(|err| {
                Outcome::Failed(job_error(
                    "training_failed",
                    format!("the trainer crashed: {err}"),
                    None,
                ))
            })
    }
}

impl Worker {
    /// A classifier job: embeds the labelled texts with the job's embedding model (over
    /// the bus), trains a head on four fifths, measures it on the rest, and writes the
    /// head as a classifier package.
    async fn run_classifier(self: &Arc<Self>, job: &fine_tuning_job::Model) -> Outcome {
        let failed = |code: &str, message: String| Outcome::Failed(job_error(code, message, None));
        let manifest = match package::read_manifest(&self.paths.models.join(&job.model)) {
            Ok(manifest) if manifest.kind == ModelKind::Embedding => manifest,
            _ => {
                return Outcome::Failed(job_error(
                    "model_not_found",
                    format!(
                        "the embedding model `{}` is not in the models directory",
                        job.model
                    ),
                    Some("model"),
                ));
            }
        };
        let labelled = match self.labelled(job).await {
            Ok(labelled) => labelled,
            Err(error) => return Outcome::Failed(error),
        };
        let mut features: Vec<Vec<f32>> = Vec::with_capacity(labelled.texts.len());
        let mut tokens = 0u64;
        for chunk in labelled.texts.chunks(32) {
            let request = inference::EmbedRequest {
                model: job.model.clone(),
                inputs: chunk.to_vec(),
                truncate: true,
            };
            match self
                .bus
                .call_within(&inference::EMBED, &request, Duration::from_secs(120))
                .await
            {
                Ok(response) => {
                    tokens += u64::from(response.usage.prompt_tokens);
                    features.extend(response.embeddings);
                }
                Err(err) => {
                    return failed(
                        "embedding_failed",
                        format!("cannot embed the texts with `{}`: {err}", job.model),
                    );
                }
            }
        }
        self.note(
            &job.id,
            &format!("Embedded {} texts with {}", features.len(), job.model),
            None,
        )
        .await;
        let requested: Hyperparameters =
            serde_json::from_str(&job.hyperparameters).unwrap_or_default();
        let settings = classifier::HeadSettings {
            epochs: match requested.n_epochs {
                Setting::Value(n) => u64::from(n),
                Setting::Auto(_) => 30,
            },
            batch_size: match requested.batch_size {
                Setting::Value(n) => n as usize,
                Setting::Auto(_) => 16,
            },
            learning_rate: CLASSIFIER_LEARNING_RATE
                * match requested.learning_rate_multiplier {
                    Setting::Value(m) => m,
                    Setting::Auto(_) => 1.0,
                },
            seed: job.seed as u64,
        };
        let resolved = Hyperparameters {
            n_epochs: Setting::Value(settings.epochs as u32),
            batch_size: Setting::Value(settings.batch_size as u32),
            learning_rate_multiplier: Setting::Value(
                settings.learning_rate / CLASSIFIER_LEARNING_RATE,
            ),
        };
        if let Err(err) = self.jobs.set_hyperparameters(&job.id, &resolved).await {
            tracing::warn!(job = %job.id, "cannot record the hyperparameters: {err}");
        }
        let labels = labelled.labels.len();
        let (train, held_out) = classifier::split(&labelled.classes, labels, settings.seed);
        let trained = tokio::task::spawn_blocking(move || {
            let pick = |idx: &[usize]| -> (Vec<&[f32]>, Vec<usize>) {
                (
                    idx.iter().map(|&i| features[i].as_slice()).collect(),
                    idx.iter().map(|&i| labelled.classes[i]).collect(),
                )
            };
            let (x, y) = pick(&train);
            let (head, losses) = classifier::train(&x, &y, labels, settings)?;
            let train_accuracy = head.accuracy(&x, &y)?;
            let (hx, hy) = pick(&held_out);
            let accuracy = head.accuracy(&hx, &hy)?;
            Ok::<_, candle_core::Error>((
                head.tensors()?,
                losses,
                ClassifierResult {
                    labels: labelled.labels,
                    accuracy,
                    held_out: held_out.len() as u32,
                    train_accuracy,
                },
            ))
        })
        .await;
        let (tensors, losses, figures) = match trained {
            Ok(Ok(trained)) => trained,
            Ok(Err(err)) => return failed("training_failed", err.to_string()),
            Err(err) => return failed("training_failed", format!("the trainer crashed: {err}")),
        };
        for (epoch, loss) in losses.iter().enumerate() {
            let metrics = serde_json::json!({
                "step": epoch + 1,
                "total_steps": losses.len(),
                "epoch": epoch + 1,
                "train_loss": loss,
            });
            let message = format!(
                "Epoch {}/{}: training loss={loss:.4}",
                epoch + 1,
                losses.len()
            );
            self.note(&job.id, &message, Some(metrics)).await;
        }
        let message = format!(
            "Held-out accuracy {:.3} on {} examples (training {:.3})",
            figures.accuracy, figures.held_out, figures.train_accuracy
        );
        self.note(&job.id, &message, None).await;
        let name = jobs::fine_tuned_name(job);
        let written = package::write_classifier(
            &self.paths.models,
            &name,
            &manifest,
            figures.labels.clone(),
            &tensors,
        );
        match written {
            Ok(_) => Outcome::Succeeded {
                model: name,
                tokens,
                figures: Some(figures),
            },
            Err(err) => failed("export_failed", err.to_string()),
        }
    }

    /// Records an info event, logging (not failing) when the store does not take it.
    async fn note(&self, id: &str, message: &str, metrics: Option<serde_json::Value>) {
        if let Err(err) = self
            .jobs
            .event(id, EventLevel::Info, message, metrics)
            .await
        {
            tracing::warn!(job = id, "cannot record an event: {err}");
        }
    }
}

/// The base learning rate of a classifier head (`learning_rate_multiplier` scales it).
pub const CLASSIFIER_LEARNING_RATE: f64 = 1e-2;

/// OpenAI's `auto`s made concrete for `examples` examples.
fn resolve(
    requested: &Hyperparameters,
    examples: usize,
    seed: u64,
    micro_batch_tokens: usize,
) -> trainer::Hyperparameters {
    let epochs = match requested.n_epochs {
        Setting::Value(n) => u64::from(n),
        // Three passes, more for tiny sets (about 300 examples seen in all, at most 10).
        Setting::Auto(_) => (300 / examples.max(1)).clamp(3, 10) as u64,
    };
    let batch_size = match requested.batch_size {
        Setting::Value(n) => n as usize,
        // About 2 % of the set, a power of two from 1 to 16.
        Setting::Auto(_) => (examples / 50).max(1).next_power_of_two().min(16),
    };
    let multiplier = match requested.learning_rate_multiplier {
        Setting::Value(m) => m,
        // 1e-3: LoRA on a small model learns a style in a few epochs (the pirate example
        // of the end-to-end test: 3 epochs, 20 of 20 held-out questions).
        Setting::Auto(_) => 5.0,
    };
    trainer::Hyperparameters {
        epochs,
        batch_size,
        micro_batch_tokens,
        learning_rate: BASE_LEARNING_RATE * multiplier,
        warmup_ratio: 0.05,
        max_grad_norm: 1.0,
        seed,
    }
}

/// One job's run on a blocking thread, reaching the async world through `runtime`.
struct Run {
    worker: Arc<Worker>,
    job: fine_tuning_job::Model,
    base: Base,
    delivery: Arc<Delivery>,
    stop: CancellationToken,
    runtime: tokio::runtime::Handle,
}

impl Run {
    fn event(&self, level: EventLevel, message: &str, data: Option<serde_json::Value>) {
        if let Err(err) =
            self.runtime
                .block_on(self.worker.jobs.event(&self.job.id, level, message, data))
        {
            tracing::warn!(job = %self.job.id, "cannot record an event: {err}");
        }
    }

    fn checkpoints_dir(&self) -> PathBuf {
        self.worker
            .paths
            .jobs
            .join(&self.job.id)
            .join("checkpoints")
    }

    fn train(
        self,
        lora: LoraConfig,
        hyper: trainer::Hyperparameters,
        train: Vec<Example>,
        valid: Vec<Example>,
    ) -> Outcome {
        let failed = |message: String| Outcome::Failed(job_error("training_failed", message, None));
        let weights = match self.base_weights() {
            Ok(weights) => weights,
            Err(error) => return Outcome::Failed(error),
        };
        let mut trainer =
            match Trainer::new(&weights, lora, hyper.clone(), train, valid, DType::F32) {
                Ok(trainer) => trainer,
                Err(err) => return failed(err.to_string()),
            };
        if let Some((step, dir)) = newest_checkpoint(&self.checkpoints_dir()) {
            match trainer.resume(&dir) {
                Ok(_) => self.event(
                    EventLevel::Info,
                    &format!("Resumed from the checkpoint at step {step}"),
                    None,
                ),
                Err(err) => self.event(
                    EventLevel::Warn,
                    &format!("The checkpoint at step {step} cannot be read ({err}); starting over"),
                    None,
                ),
            }
        } else {
            self.event(
                EventLevel::Info,
                &format!(
                    "Fine-tuning started: {} epochs, batch size {}, learning rate {:.2e}, {} steps",
                    hyper.epochs,
                    hyper.batch_size,
                    hyper.learning_rate,
                    trainer.total_steps()
                ),
                None,
            );
        }
        let total = trainer.total_steps();
        let first_step = trainer.position().step;
        let started = Instant::now();
        let lease = chrono::Duration::from_std(self.worker.settings.lease).unwrap_or_default();
        loop {
            if self.stop.is_cancelled() {
                let position = trainer.position();
                if position.step > first_step {
                    let _ = trainer.save(
                        &self
                            .checkpoints_dir()
                            .join(format!("step-{}", position.step)),
                    );
                }
                self.event(
                    EventLevel::Info,
                    "The worker is stopping; the job goes back to the queue",
                    None,
                );
                return Outcome::Interrupted;
            }
            let began = Instant::now();
            let report = match trainer.step() {
                Ok(Some(report)) => report,
                Ok(None) => break,
                Err(err) => return failed(err.to_string()),
            };
            let took = began.elapsed();
            self.worker
                .metrics
                .step(&self.job.model, took, report.tokens, report.loss);
            let done = report.step - first_step;
            let elapsed = started.elapsed().as_secs_f64();
            let per_step = elapsed / done as f64;
            let eta = per_step * (total - report.step) as f64;
            let finish = Utc::now() + chrono::Duration::milliseconds((eta * 1000.0) as i64);
            let position = trainer.position();
            self.event(
                EventLevel::Info,
                &format!(
                    "Step {}/{}: training loss={:.4}",
                    report.step, total, report.loss
                ),
                Some(serde_json::json!({
                    "step": report.step,
                    "total_steps": total,
                    "epoch": report.epoch,
                    "train_loss": report.loss,
                    "learning_rate": report.learning_rate,
                    "grad_norm": report.grad_norm,
                    "tokens_per_second": report.tokens as f64 / took.as_secs_f64(),
                    "elapsed_seconds": elapsed,
                    "eta_seconds": eta,
                })),
            );
            let ours = self.runtime.block_on(self.worker.jobs.renew(
                &self.job.id,
                &self.worker.id,
                lease,
                position.tokens,
                Some(finish),
            ));
            match ours {
                Ok(true) => {}
                Ok(false) => return Outcome::Stopped,
                Err(err) => tracing::warn!(job = %self.job.id, "cannot renew the lease: {err}"),
            }
            self.runtime.block_on(self.delivery.working());
            let every = self.worker.settings.checkpoint_every;
            if report.step % every == 0 || report.epoch_end {
                let valid_loss = if report.epoch_end {
                    match trainer.validation_loss() {
                        Ok(loss) => loss,
                        Err(err) => return failed(err.to_string()),
                    }
                } else {
                    None
                };
                if let Some(loss) = valid_loss {
                    self.event(
                        EventLevel::Info,
                        &format!("Epoch {}: validation loss={loss:.4}", report.epoch),
                        None,
                    );
                }
                let dir = self.checkpoints_dir().join(format!("step-{}", report.step));
                if let Err(err) = trainer.save(&dir) {
                    return failed(err.to_string());
                }
                prune_checkpoints(&self.checkpoints_dir());
                if let Err(err) = self.runtime.block_on(self.worker.jobs.add_checkpoint(
                    &self.job.id,
                    report.step,
                    report.loss,
                    valid_loss,
                )) {
                    tracing::warn!(job = %self.job.id, "cannot record the checkpoint: {err}");
                }
            }
        }
        self.event(
            EventLevel::Info,
            "Training done; merging and exporting the model",
            None,
        );
        match self.export(&trainer, &weights) {
            Ok(model) => Outcome::Succeeded {
                model,
                tokens: trainer.position().tokens,
                figures: None,
            },
            Err(error) => Outcome::Failed(error),
        }
    }

    /// The base model's weights as f32, from the source its package records.
    fn base_weights(&self) -> Result<LlamaCheckpoint, JobError> {
        let manifest = &self.base.manifest;
        let unavailable = |reason: String| {
            job_error(
                "model_not_trainable",
                format!("the weights of `{}` cannot be read: {reason}", manifest.id),
                Some("model"),
            )
        };
        let source =
            package::source_path(manifest, &self.worker.paths.sources).ok_or_else(|| {
                unavailable(format!(
                    "its source {} is neither where it was imported from nor in {}",
                    manifest.source.file,
                    self.worker.paths.sources.display()
                ))
            })?;
        LlamaCheckpoint::from_source(&source).map_err(|err| unavailable(err.to_string()))
    }

    /// Merges the adapters, writes a Hugging Face directory under the job's directory
    /// and imports it as the package `ft:<base>:<suffix>:<job>`.
    fn export(&self, trainer: &Trainer, weights: &LlamaCheckpoint) -> Result<String, JobError> {
        let failed = |err: String| job_error("export_failed", err, None);
        let name = jobs::fine_tuned_name(&self.job);
        let dir = self.worker.paths.jobs.join(&self.job.id).join("model");
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|err| failed(err.to_string()))?;
        }
        let merged = trainer
            .merged(weights)
            .map_err(|err| failed(err.to_string()))?;
        // Float weights end up as int8/int4 blocks: f16 here halves the disk for no
        // difference that survives that.
        let stored = match self.worker.settings.export_weights {
            FloatWeights::Fp32 => StoredFloat::F32,
            FloatWeights::Int8 | FloatWeights::Int4 => StoredFloat::F16,
        };
        merged
            .write_hf_dir(&dir, stored)
            .map_err(|err| failed(err.to_string()))?;
        let manifest = &self.base.manifest;
        let chat = ChatFacts {
            chat_template: manifest.chat_template.clone(),
            bos: manifest.special_tokens.bos.clone(),
            eos: manifest.special_tokens.eos.clone(),
            pad: manifest.special_tokens.pad.clone(),
        };
        checkpoint::write_tokenizer_files(&dir, &self.base.dir.join("tokenizer.json"), &chat)
            .map_err(|err| failed(err.to_string()))?;
        let options = ImportOptions {
            id: Some(name.clone()),
            build: BuildOptions {
                float_weights: self.worker.settings.export_weights,
                ..manifest.build
            },
            parent: Some(manifest.id.clone()),
        };
        package::import(&dir, &self.worker.paths.models, &options, &Quiet)
            .map_err(|err| failed(err.to_string()))?;
        Ok(name)
    }
}

/// The newest complete checkpoint under `dir` (`step-<n>`), by step.
fn newest_checkpoint(dir: &Path) -> Option<(u64, PathBuf)> {
    checkpoints(dir).into_iter().next_back()
}

/// Every checkpoint under `dir`, oldest first.
fn checkpoints(dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut found: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let step = name.strip_prefix("step-")?.parse().ok()?;
            Some((step, entry.path()))
        })
        .collect();
    found.sort_by_key(|(step, _)| *step);
    found
}

/// Removes all but the newest [`KEEP_CHECKPOINTS`] checkpoints.
fn prune_checkpoints(dir: &Path) {
    let all = checkpoints(dir);
    let extra = all.len().saturating_sub(KEEP_CHECKPOINTS);
    for (_, path) in &all[..extra] {
        let _ = std::fs::remove_dir_all(path);
    }
}
