//! The inference service's metrics, labelled by model (ARCHITECTURE.md naming:
//! `slough_inference_<what>_<unit>`).

use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

/// Every inference metric, each a family labelled by `model`.
#[derive(Clone)]
pub struct Metrics {
    ttft: HistogramVec,
    itl: HistogramVec,
    e2e: HistogramVec,
    queue: HistogramVec,
    batch_size: HistogramVec,
    queue_depth: IntGaugeVec,
    running: IntGaugeVec,
    kv_cache_usage: GaugeVec,
    prompt_tokens: IntCounterVec,
    generated_tokens: IntCounterVec,
    cancelled: IntCounterVec,
    embedded_texts: IntCounterVec,
    embed_seconds: HistogramVec,
    loads: IntCounterVec,
    prefix_lookups: IntCounterVec,
    prefix_hits: IntCounterVec,
    prefix_saved_tokens: IntCounterVec,
    prefix_cache_bytes: IntGaugeVec,
    kv_cache_bytes: IntGaugeVec,
    kv_cache_limit_bytes: IntGaugeVec,
}

/// One model's series, handed to its scheduler.
#[derive(Clone)]
pub struct ModelMetrics {
    pub ttft_seconds: Histogram,
    pub itl_seconds: Histogram,
    pub e2e_seconds: Histogram,
    pub queue_seconds: Histogram,
    pub batch_size: Histogram,
    pub queue_depth: IntGauge,
    pub running: IntGauge,
    pub kv_cache_usage: Gauge,
    pub prompt_tokens: IntCounter,
    pub generated_tokens: IntCounter,
    pub cancelled: IntCounter,
    pub embedded_texts: IntCounter,
    pub embed_seconds: Histogram,
    /// Prompts looked up in the prefix cache, and those that found leading blocks.
    pub prefix_lookups: IntCounter,
    pub prefix_hits: IntCounter,
    /// Prompt tokens taken from the prefix cache instead of being prefilled.
    pub prefix_saved_tokens: IntCounter,
    pub prefix_cache_bytes: IntGauge,
    /// The KV buffer's bytes, and the limit it stays within.
    pub kv_cache_bytes: IntGauge,
    pub kv_cache_limit_bytes: IntGauge,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
const ITL_BUCKETS: &[f64] = &[
    0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0,
];
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

impl Metrics {
    pub fn register(registry: &Registry) -> Result<Metrics, prometheus::Error> {
        let histogram =
            |name: &str, help: &str, buckets: &[f64]| -> Result<HistogramVec, prometheus::Error> {
                let metric = HistogramVec::new(
                    HistogramOpts::new(format!("slough_inference_{name}"), help)
                        .buckets(buckets.to_vec()),
                    &["model"],
                )?;
                registry.register(Box::new(metric.clone()))?;
                Ok(metric)
            };
        let int_gauge = |name: &str, help: &str| -> Result<IntGaugeVec, prometheus::Error> {
            let metric = IntGaugeVec::new(
                Opts::new(format!("slough_inference_{name}"), help),
                &["model"],
            )?;
            registry.register(Box::new(metric.clone()))?;
            Ok(metric)
        };
        let counter = |name: &str, help: &str| -> Result<IntCounterVec, prometheus::Error> {
            let metric = IntCounterVec::new(
                Opts::new(format!("slough_inference_{name}"), help),
                &["model"],
            )?;
            registry.register(Box::new(metric.clone()))?;
            Ok(metric)
        };
        let kv_cache_usage = GaugeVec::new(
            Opts::new(
                "slough_inference_kv_cache_usage_ratio",
                "Positions held in the KV cache over the batch's capacity (max_batch × max_context)",
            ),
            &["model"],
        )?;
        registry.register(Box::new(kv_cache_usage.clone()))?;
        let loads = IntCounterVec::new(
            Opts::new(
                "slough_inference_model_loads_total",
                "Model packages loaded (at start or on demand), by outcome (loaded, failed)",
            ),
            &["model", "outcome"],
        )?;
        registry.register(Box::new(loads.clone()))?;
        Ok(Metrics {
            ttft: histogram(
                "time_to_first_token_seconds",
                "From a request's arrival to its first generated token",
                LATENCY_BUCKETS,
            )?,
            itl: histogram(
                "inter_token_latency_seconds",
                "Between consecutive tokens of a sequence",
                ITL_BUCKETS,
            )?,
            e2e: histogram(
                "request_duration_seconds",
                "From a generation request's arrival to its last token",
                LATENCY_BUCKETS,
            )?,
            queue: histogram(
                "queue_duration_seconds",
                "Time a generation request waited for a batch slot",
                LATENCY_BUCKETS,
            )?,
            batch_size: histogram(
                "batch_size",
                "Sequences decoded together per step",
                BATCH_BUCKETS,
            )?,
            queue_depth: int_gauge(
                "queue_depth",
                "Generation requests waiting for a batch slot",
            )?,
            running: int_gauge("running_sequences", "Sequences being decoded")?,
            kv_cache_usage,
            prompt_tokens: counter("prompt_tokens_total", "Prompt tokens prefilled")?,
            generated_tokens: counter("generated_tokens_total", "Tokens generated")?,
            cancelled: counter(
                "cancelled_requests_total",
                "Generation requests cancelled before they finished",
            )?,
            embedded_texts: counter("embedded_texts_total", "Texts embedded")?,
            embed_seconds: histogram(
                "embed_duration_seconds",
                "Time to embed one request's texts",
                LATENCY_BUCKETS,
            )?,
            loads,
            prefix_lookups: counter(
                "prefix_cache_lookups_total",
                "Prompts looked up in the prefix cache",
            )?,
            prefix_hits: counter(
                "prefix_cache_hits_total",
                "Prompts whose leading blocks were in the prefix cache",
            )?,
            prefix_saved_tokens: counter(
                "prefix_cache_saved_tokens_total",
                "Prompt tokens taken from the prefix cache instead of prefilled",
            )?,
            prefix_cache_bytes: int_gauge(
                "prefix_cache_bytes",
                "Bytes of keys and values held by the prefix cache",
            )?,
            kv_cache_bytes: int_gauge(
                "kv_cache_bytes",
                "Bytes of the KV buffer the running sequences live in",
            )?,
            kv_cache_limit_bytes: int_gauge(
                "kv_cache_limit_bytes",
                "The most bytes the KV buffer may take (inference.kv_cache_mb)",
            )?,
        })
    }

    /// Counts one attempt to load package `model`.
    pub fn model_load(&self, model: &str, loaded: bool) {
        let outcome = if loaded { "loaded" } else { "failed" };
        self.loads.with_label_values(&[model, outcome]).inc();
    }

    /// The series of `model` (created at zero).
    pub fn model(&self, model: &str) -> ModelMetrics {
        let l = &[model];
        ModelMetrics {
            ttft_seconds: self.ttft.with_label_values(l),
            itl_seconds: self.itl.with_label_values(l),
            e2e_seconds: self.e2e.with_label_values(l),
            queue_seconds: self.queue.with_label_values(l),
            batch_size: self.batch_size.with_label_values(l),
            queue_depth: self.queue_depth.with_label_values(l),
            running: self.running.with_label_values(l),
            kv_cache_usage: self.kv_cache_usage.with_label_values(l),
            prompt_tokens: self.prompt_tokens.with_label_values(l),
            generated_tokens: self.generated_tokens.with_label_values(l),
            cancelled: self.cancelled.with_label_values(l),
            embedded_texts: self.embedded_texts.with_label_values(l),
            embed_seconds: self.embed_seconds.with_label_values(l),
            prefix_lookups: self.prefix_lookups.with_label_values(l),
            prefix_hits: self.prefix_hits.with_label_values(l),
            prefix_saved_tokens: self.prefix_saved_tokens.with_label_values(l),
            prefix_cache_bytes: self.prefix_cache_bytes.with_label_values(l),
            kv_cache_bytes: self.kv_cache_bytes.with_label_values(l),
            kv_cache_limit_bytes: self.kv_cache_limit_bytes.with_label_values(l),
        }
    }
}
