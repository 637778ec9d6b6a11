//! LoRA fine-tuning of a llama decoder on CPU with candle: [`Trainer::step`] takes one
//! optimizer step (a batch split into micro-batches whose gradients accumulate, clipped
//! by global norm, AdamW at the scheduled learning rate); [`Trainer::save`] writes a
//! checkpoint atomically and [`Trainer::resume`] continues from one exactly where it
//! stopped (same batches, same dropout, same moments); [`Trainer::merged`] gives the
//! base weights with the adapters merged in, to export.
//!
//! Determinism: an epoch's order comes from (seed, epoch) and a step's dropout from
//! (seed, step), so a checkpoint needs no RNG state beyond the seed and its position.

pub mod data;
pub mod model;
pub mod optim;

use std::{collections::BTreeMap, fs, path::Path};

use candle_core::{DType, Tensor};
use rand_chacha::{ChaCha8Rng, rand_core::SeedableRng as _};
use serde::{Deserialize, Serialize};
use slough_modelkit::checkpoint::{self, LlamaCheckpoint};

use data::Example;
use model::{LoraConfig, LoraModel};
use optim::{AdamW, AdamWConfig, Schedule};

/// Why training could not go on.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::CheckpointError),
    #[error("checkpoint {path}: {reason}")]
    State { path: String, reason: String },
}

/// The run's settings, resolved (no `auto` left).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hyperparameters {
    pub epochs: u64,
    /// Examples per optimizer step.
    pub batch_size: usize,
    /// Most padded tokens (rows × longest row) per forward pass: a batch is split into
    /// micro-batches of consecutive examples within it (at least one example each),
    /// whose gradients accumulate. Activation memory grows with it.
    pub micro_batch_tokens: usize,
    /// The peak learning rate.
    pub learning_rate: f64,
    /// Share of the steps spent warming up.
    pub warmup_ratio: f64,
    pub max_grad_norm: f64,
    pub seed: u64,
}

/// What one step did.
#[derive(Debug, Clone, PartialEq)]
pub struct StepReport {
    /// Steps done, this one included (1-based).
    pub step: u64,
    pub total_steps: u64,
    /// The epoch this step belongs to (1-based).
    pub epoch: u64,
    /// Mean loss over the step's trained tokens.
    pub loss: f64,
    pub learning_rate: f64,
    /// The gradients' global norm before clipping.
    pub grad_norm: f64,
    /// Tokens the forward passes read (padding excluded).
    pub tokens: u64,
    /// Whether this step ended its epoch.
    pub epoch_end: bool,
}

/// Where a run stands; what `state.json` of a checkpoint holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// Optimizer steps done.
    pub step: u64,
    /// The epoch under way (0-based).
    pub epoch: u64,
    /// Examples of this epoch's order already trained.
    pub cursor: usize,
    /// Tokens read so far.
    pub tokens: u64,
    /// The seed everything random derives from.
    pub seed: u64,
}

/// A fine-tuning run.
pub struct Trainer {
    model: LoraModel,
    optimizer: AdamW,
    schedule: Schedule,
    hyper: Hyperparameters,
    train: Vec<Example>,
    valid: Vec<Example>,
    position: Position,
    steps_per_epoch: u64,
}

const ADAPTER: &str = "adapter.safetensors";
const OPTIMIZER: &str = "optimizer.safetensors";
const STATE: &str = "state.json";

impl Trainer {
    /// A run from the start: fresh adapters on `base` (f32; `dtype` f64 for exact
    /// checks).
    pub fn new(
        base: &LlamaCheckpoint,
        lora: LoraConfig,
        hyper: Hyperparameters,
        train: Vec<Example>,
        valid: Vec<Example>,
        dtype: DType,
    ) -> Result<Trainer, TrainError> {
        let mut rng = ChaCha8Rng::seed_from_u64(hyper.seed);
        let model = LoraModel::new(base, lora, dtype, &mut rng)?;
        let optimizer = AdamW::new(AdamWConfig::default(), &model.variables())?;
        let steps_per_epoch = train.len().div_ceil(hyper.batch_size.max(1)) as u64;
        let total = steps_per_epoch * hyper.epochs;
        let warmup = ((total as f64 * hyper.warmup_ratio).ceil() as u64).clamp(1, total.max(1));
        Ok(Trainer {
            model,
            optimizer,
            schedule: Schedule {
                peak: hyper.learning_rate,
                warmup,
                total,
            },
            position: Position {
                step: 0,
                epoch: 0,
                cursor: 0,
                tokens: 0,
                seed: hyper.seed,
            },
            hyper,
            train,
            valid,
            steps_per_epoch,
        })
    }

    /// Steps in the whole run.
    pub fn total_steps(&self) -> u64 {
        self.schedule.total
    }

    /// Where the run stands.
    pub fn position(&self) -> Position {
        self.position
    }

    /// Takes the next optimizer step; `None` once every epoch is done.
    pub fn step(&mut self) -> Result<Option<StepReport>, TrainError> {
        if self.position.epoch >= self.hyper.epochs || self.train.is_empty() {
            return Ok(None);
        }
        let order = data::epoch_order(self.train.len(), self.hyper.seed, self.position.epoch);
        let start = self.position.cursor;
        let end = (start + self.hyper.batch_size).min(order.len());
        let examples: Vec<&Example> = order[start..end].iter().map(|&i| &self.train[i]).collect();
        let trained: usize = examples.iter().map(|e| e.trained_tokens()).sum();
        let mut dropout = ChaCha8Rng::seed_from_u64(
            self.hyper.seed ^ (self.position.step + 1).wrapping_mul(0xD1B5_4A32_D192_ED03),
        );
        let variables = self.model.variables();
        let mut grads: BTreeMap<String, Tensor> = BTreeMap::new();
        let mut loss = 0.0;
        let mut tokens = 0u64;
        for micro in data::micro_batches(&examples, self.hyper.micro_batch_tokens) {
            let batch = data::batch(&micro);
            tokens += batch.lengths.iter().sum::<usize>() as u64;
            if batch.targets.is_empty() {
                continue;
            }
            // Each micro-batch's mean, weighted by its share of the step's trained
            // tokens: the step's loss is the mean over all of them.
            let weight = batch.targets.len() as f64 / trained as f64;
            let micro_loss = self.model.loss(&batch, Some(&mut dropout))?;
            loss += micro_loss.to_dtype(DType::F64)?.to_scalar::<f64>()? * weight;
            let store = (micro_loss * weight)?.backward()?;
            for (name, var) in &variables {
                if let Some(grad) = store.get(var.as_tensor()) {
                    let sum = match grads.remove(name) {
                        Some(previous) => (previous + grad)?,
                        None => grad.clone(),
                    };
                    grads.insert(name.clone(), sum);
                }
            }
        }
        let grad_norm = optim::clip_by_global_norm(&mut grads, self.hyper.max_grad_norm)?;
        let learning_rate = self.schedule.lr(self.position.step);
        self.optimizer.step(&variables, &grads, learning_rate)?;

        self.position.step += 1;
        self.position.tokens += tokens;
        self.position.cursor = end;
        let epoch = self.position.epoch + 1;
        let epoch_end = end >= order.len();
        if epoch_end {
            self.position.epoch += 1;
            self.position.cursor = 0;
        }
        Ok(Some(StepReport {
            step: self.position.step,
            total_steps: self.schedule.total,
            epoch,
            loss,
            learning_rate,
            grad_norm,
            tokens,
            epoch_end,
        }))
    }

    /// The mean loss over the validation examples' trained tokens, if there are any.
    pub fn validation_loss(&self) -> Result<Option<f64>, TrainError> {
        if self.valid.is_empty() {
            return Ok(None);
        }
        let mut total = 0.0;
        let mut count = 0usize;
        let valid: Vec<&Example> = self.valid.iter().collect();
        for micro in data::micro_batches(&valid, self.hyper.micro_batch_tokens) {
            let batch = data::batch(&micro);
            if batch.targets.is_empty() {
                continue;
            }
            let loss = self.model.loss(&batch, None)?;
            total += loss.to_dtype(DType::F64)?.to_scalar::<f64>()? * batch.targets.len() as f64;
            count += batch.targets.len();
        }
        Ok((count > 0).then(|| total / count as f64))
    }

    /// Writes a checkpoint into `dir` (created; replaced whole if it exists): the
    /// adapters, the optimizer's moments and the position. It is written beside and
    /// renamed into place, so `dir` is either absent or complete.
    pub fn save(&self, dir: &Path) -> Result<(), TrainError> {
        let state_error = |reason: String| TrainError::State {
            path: dir.display().to_string(),
            reason,
        };
        let parent = dir
            .parent()
            .ok_or_else(|| state_error("has no parent directory".to_owned()))?;
        fs::create_dir_all(parent).map_err(|err| state_error(err.to_string()))?;
        let staging = tempfile::Builder::new()
            .prefix(".checkpoint-")
            .tempdir_in(parent)
            .map_err(|err| state_error(err.to_string()))?;
        checkpoint::write_tensors(
            &staging.path().join(ADAPTER),
            &self.model.adapter_tensors()?,
        )?;
        checkpoint::write_tensors(&staging.path().join(OPTIMIZER), &self.optimizer.state()?)?;
        let state = serde_json::to_vec_pretty(&self.position)
            .map_err(|err| state_error(err.to_string()))?;
        fs::write(staging.path().join(STATE), state).map_err(|err| state_error(err.to_string()))?;
        let staged = staging.keep();
        if dir.exists() {
            fs::remove_dir_all(dir).map_err(|err| state_error(err.to_string()))?;
        }
        fs::rename(&staged, dir).map_err(|err| state_error(err.to_string()))?;
        Ok(())
    }

    /// Continues from the checkpoint in `dir`.
    pub fn resume(&mut self, dir: &Path) -> Result<Position, TrainError> {
        let state_error = |reason: String| TrainError::State {
            path: dir.display().to_string(),
            reason,
        };
        let state = fs::read(dir.join(STATE)).map_err(|err| state_error(err.to_string()))?;
        let position: Position =
            serde_json::from_slice(&state).map_err(|err| state_error(err.to_string()))?;
        if position.seed != self.hyper.seed {
            return Err(state_error(format!(
                "was made with seed {}, this run has {}",
                position.seed, self.hyper.seed
            )));
        }
        self.model
            .load_adapters(&checkpoint::read_tensors(&dir.join(ADAPTER))?)?;
        self.optimizer.load(
            &checkpoint::read_tensors(&dir.join(OPTIMIZER))?,
            position.step,
        )?;
        self.position = position;
        Ok(position)
    }

    /// The base weights with the adapters merged in.
    pub fn merged(&self, base: &LlamaCheckpoint) -> Result<LlamaCheckpoint, TrainError> {
        Ok(self.model.merged(base)?)
    }

    /// The model being trained (tests compare its logits with the merged model's).
    pub fn model(&self) -> &LoraModel {
        &self.model
    }

    /// Steps per epoch.
    pub fn steps_per_epoch(&self) -> u64 {
        self.steps_per_epoch
    }
}
