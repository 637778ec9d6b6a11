//! A classifier job: the labelled texts embedded over the bus, a head trained and
//! measured, and written as a classifier package.

use super::*;

impl Worker {
    /// A classifier job: embeds the labelled texts with the job's embedding model (over
    /// the bus), trains a head on four fifths, measures it on the rest, and writes the
    /// head as a classifier package.
    pub(super) async fn run_classifier(self: &Arc<Self>, job: &fine_tuning_job::Model) -> Outcome {
        let failed = |code: &str, message: String| Outcome::Failed(job_error(code, message, None));
        let manifest = match package::find(&self.paths.models, &job.model) {
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
