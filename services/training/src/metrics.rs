//! The training service's metrics (`slough_training_<what>_<unit>`). Labels are job
//! states and base model ids (packages an operator imported), never job ids.

use std::time::Duration;

use prometheus::{
    GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
};

#[derive(Clone)]
pub struct Metrics {
    jobs: IntGaugeVec,
    finished: IntCounterVec,
    steps: IntCounter,
    tokens: IntCounter,
    step_seconds: Histogram,
    loss: GaugeVec,
}

const STEP_BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 120.0];

impl Metrics {
    pub fn register(registry: &Registry) -> Result<Metrics, prometheus::Error> {
        let metrics = Metrics {
            jobs: IntGaugeVec::new(
                Opts::new(
                    "slough_training_jobs",
                    "Fine-tuning jobs in the store by status (every instance reports the same counts)",
                ),
                &["status"],
            )?,
            finished: IntCounterVec::new(
                Opts::new(
                    "slough_training_jobs_finished_total",
                    "Jobs this instance ran to a final state, by that state",
                ),
                &["status"],
            )?,
            steps: IntCounter::new(
                "slough_training_steps_total",
                "Optimizer steps taken by this instance",
            )?,
            tokens: IntCounter::new(
                "slough_training_tokens_total",
                "Tokens read by training on this instance (padding excluded)",
            )?,
            step_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "slough_training_step_seconds",
                    "Time of one optimizer step (forward, backward and update of every micro-batch)",
                )
                .buckets(STEP_BUCKETS.to_vec()),
            )?,
            loss: GaugeVec::new(
                Opts::new(
                    "slough_training_loss",
                    "Training loss of the last step of the job running on this instance, by base model",
                ),
                &["model"],
            )?,
        };
        registry.register(Box::new(metrics.jobs.clone()))?;
        registry.register(Box::new(metrics.finished.clone()))?;
        registry.register(Box::new(metrics.steps.clone()))?;
        registry.register(Box::new(metrics.tokens.clone()))?;
        registry.register(Box::new(metrics.step_seconds.clone()))?;
        registry.register(Box::new(metrics.loss.clone()))?;
        Ok(metrics)
    }

    /// One step done.
    pub fn step(&self, model: &str, took: Duration, tokens: u64, loss: f64) {
        self.steps.inc();
        self.tokens.inc_by(tokens);
        self.step_seconds.observe(took.as_secs_f64());
        self.loss.with_label_values(&[model]).set(loss);
    }

    /// A job this instance ran ended with `status`; its model's loss is no longer current.
    pub fn finished(&self, model: &str, status: &str) {
        self.finished.with_label_values(&[status]).inc();
        let _ = self.loss.remove_label_values(&[model]);
    }

    /// The store's counts by status (statuses missing from `counts` are 0).
    pub fn set_jobs(&self, counts: &[(String, i64)]) {
        for status in slough_protocol::training::JobStatus::ALL {
            let count = counts
                .iter()
                .find(|(s, _)| s == status.as_str())
                .map_or(0, |(_, n)| *n);
            self.jobs.with_label_values(&[status.as_str()]).set(count);
        }
    }
}
