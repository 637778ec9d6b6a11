//! A LoRA fine-tuning job on a blocking thread: hyperparameters resolved, the base
//! weights read, steps with checkpoints (resumed from the newest), and on success the
//! merged model exported as a package.

use super::*;

impl Worker {
    pub(super) async fn run(
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

/// The passes over `examples` examples a job makes.
pub(super) fn epochs(requested: &Hyperparameters, examples: usize) -> u64 {
    match requested.n_epochs {
        Setting::Value(n) => u64::from(n),
        // Three passes, more for tiny sets (about 300 examples seen in all, at most 10).
        Setting::Auto(_) => (300 / examples.max(1)).clamp(3, 10) as u64,
    }
}

/// OpenAI's `auto`s made concrete for `examples` examples.
fn resolve(
    requested: &Hyperparameters,
    examples: usize,
    seed: u64,
    micro_batch_tokens: usize,
) -> trainer::Hyperparameters {
    let epochs = epochs(requested, examples);
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
    base: Arc<Base>,
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
            // The lease and the step's event together: a job cancelled during this step
            // records no step after its cancellation.
            let ours = self.runtime.block_on(self.worker.jobs.record_step(
                &self.job.id,
                &self.worker.id,
                lease,
                position.tokens,
                Some(finish),
                &format!(
                    "Step {}/{}: training loss={:.4}",
                    report.step, total, report.loss
                ),
                serde_json::json!({
                    "step": report.step,
                    "total_steps": total,
                    "epoch": report.epoch,
                    "train_loss": report.loss,
                    "learning_rate": report.learning_rate,
                    "grad_norm": report.grad_norm,
                    "tokens_per_second": report.tokens as f64 / took.as_secs_f64(),
                    "elapsed_seconds": elapsed,
                    "eta_seconds": eta,
                }),
            ));
            match ours {
                Ok(true) => {}
                Ok(false) => return Outcome::Stopped,
                Err(err) => tracing::warn!(job = %self.job.id, "cannot record the step: {err}"),
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
