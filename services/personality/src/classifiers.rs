//! Learned style classifiers: heads a classifier fine-tuning job wrote as packages
//! (`classifier.safetensors`: `weight` `[labels, dimensions]`, `bias` `[labels]`) over
//! an embedding model. A text is embedded by inference (over the bus) with the head's
//! embedding model, and the head's softmax gives each label's probability. Heads are
//! read once and kept.

use std::{collections::HashMap, path::PathBuf, sync::Arc};

use slough_bus::Bus;
use slough_modelkit::{
    checkpoint,
    package::{self, CLASSIFIER_WEIGHTS, ModelKind},
};
use slough_protocol::{
    ErrorBody, ErrorCode,
    inference::{self, EmbedRequest},
    personality::Classification,
};
use tokio::sync::Mutex;

/// A head, loaded.
struct Head {
    embedding_model: String,
    labels: Vec<String>,
    dimensions: usize,
    /// Row-major `[labels, dimensions]`.
    weight: Vec<f32>,
    bias: Vec<f32>,
}

/// The classifiers of a models directory.
#[derive(Clone)]
pub struct Classifiers {
    models_dir: PathBuf,
    bus: Bus,
    loaded: Arc<Mutex<HashMap<String, Arc<Head>>>>,
}

fn invalid(message: String) -> ErrorBody {
    ErrorBody {
        param: Some("classifier".to_owned()),
        ..ErrorBody::new(ErrorCode::NotFound, message)
    }
}

impl Classifiers {
    pub fn new(models_dir: PathBuf, bus: Bus) -> Classifiers {
        Classifiers {
            models_dir,
            bus,
            loaded: Arc::default(),
        }
    }

    async fn head(&self, id: &str) -> Result<Arc<Head>, ErrorBody> {
        if let Some(head) = self.loaded.lock().await.get(id) {
            return Ok(head.clone());
        }
        let dir = package::package_dir(&self.models_dir, id)
            .map_err(|_| invalid(format!("classifier `{id}` does not exist")))?;
        let manifest = package::read_manifest(&dir)
            .map_err(|_| invalid(format!("classifier `{id}` does not exist")))?;
        if manifest.kind != ModelKind::Classifier {
            return Err(ErrorBody::invalid(
                "classifier",
                format!(
                    "`{id}` is not a classifier (train one with a fine-tuning job of `method.type` `classifier`)"
                ),
            ));
        }
        let broken = |reason: String| {
            ErrorBody::new(
                ErrorCode::Internal,
                format!("classifier `{id}` cannot be read: {reason}"),
            )
        };
        let tensors = checkpoint::read_tensors(&dir.join(CLASSIFIER_WEIGHTS))
            .map_err(|err| broken(err.to_string()))?;
        let (Some(weight), Some(bias)) = (tensors.get("weight"), tensors.get("bias")) else {
            return Err(broken("no weight or bias".to_owned()));
        };
        let labels = manifest.labels.clone().unwrap_or_default();
        let dimensions = weight.shape.get(1).copied().unwrap_or(0);
        if weight.shape != [labels.len(), dimensions] || bias.values.len() != labels.len() {
            return Err(broken(format!(
                "weight {:?} and bias of {} do not fit {} labels",
                weight.shape,
                bias.values.len(),
                labels.len()
            )));
        }
        let head = Arc::new(Head {
            embedding_model: manifest.parent.clone().unwrap_or_default(),
            labels,
            dimensions,
            weight: weight.values.clone(),
            bias: bias.values.clone(),
        });
        self.loaded.lock().await.insert(id.to_owned(), head.clone());
        Ok(head)
    }

    /// The classifier `id`'s verdict on `text`.
    pub async fn classify(&self, id: &str, text: &str) -> Result<Classification, ErrorBody> {
        let head = self.head(id).await?;
        let request = EmbedRequest {
            model: head.embedding_model.clone(),
            inputs: vec![text.to_owned()],
            truncate: true,
        };
        let embedded = self
            .bus
            .call(&inference::EMBED, &request)
            .await
            .map_err(|err| err.to_body())?;
        let vector = embedded.embeddings.first().cloned().unwrap_or_default();
        if vector.len() != head.dimensions {
            return Err(ErrorBody::new(
                ErrorCode::Internal,
                format!(
                    "`{}` gave {} dimensions; classifier `{id}` expects {}",
                    head.embedding_model,
                    vector.len(),
                    head.dimensions
                ),
            ));
        }
        let logits: Vec<f64> = head
            .weight
            .chunks(head.dimensions)
            .zip(&head.bias)
            .map(|(row, b)| {
                f64::from(*b)
                    + row
                        .iter()
                        .zip(&vector)
                        .map(|(w, x)| f64::from(w * x))
                        .sum::<f64>()
            })
            .collect();
        let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let exps: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
        let total: f64 = exps.iter().sum();
        let probabilities: std::collections::BTreeMap<String, f64> = head
            .labels
            .iter()
            .cloned()
            .zip(exps.iter().map(|e| e / total))
            .collect();
        let label = probabilities
            .iter()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(label, _)| label.clone())
            .unwrap_or_default();
        Ok(Classification {
            model: id.to_owned(),
            label,
            probabilities,
        })
    }
}
