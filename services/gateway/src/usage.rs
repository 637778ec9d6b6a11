//! Usage accounting: one `usage` row per model request (key, model, tokens, latency,
//! status). Handlers never wait for the store: a [`Metered`] guard hands its row to a
//! bounded queue when the request ends (however it ends), and one writer task stores
//! rows in batches through the [`ledger`](crate::ledger), which also sums them. While
//! the database is unreachable the rows wait (the queue is bounded) and are stored when
//! it is back.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::Utc;
use sea_orm::Set;
use slough_protocol::inference::Usage;
use slough_store::{Store, entities::usage};
use tokio::{
    sync::{OwnedSemaphorePermit, mpsc},
    task::JoinHandle,
};
use uuid::Uuid;

use crate::{error::ApiError, ledger, limits::Limits, metrics::Metrics};

/// Rows written in one insert at most.
const BATCH: usize = 256;

/// Queues usage rows for the writer task. Cheap to clone.
#[derive(Clone)]
pub struct UsageRecorder {
    queue: mpsc::Sender<usage::ActiveModel>,
    metrics: Arc<Metrics>,
}

impl UsageRecorder {
    /// Starts the writer; it stops once every recorder is dropped and the queue is empty.
    pub fn start(
        store: Store,
        capacity: usize,
        metrics: Arc<Metrics>,
    ) -> (UsageRecorder, JoinHandle<()>) {
        let (queue, mut rows) = mpsc::channel(capacity.max(1));
        let writer = tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            while rows.recv_many(&mut batch, BATCH).await > 0 {
                store_batch(&store, &batch).await;
                batch.clear();
            }
        });
        (UsageRecorder { queue, metrics }, writer)
    }

    fn record(&self, row: usage::ActiveModel) {
        if self.queue.try_send(row).is_err() {
            self.metrics.usage_dropped.inc();
            tracing::warn!("usage queue full: a usage row was dropped");
        }
    }
}

/// Stores one batch of rows. While the database cannot be reached the batch waits and is
/// tried again (for up to [`OUTAGE`]), and later rows wait in the queue behind it;
/// another error loses the batch, logged.
async fn store_batch(store: &Store, batch: &[usage::ActiveModel]) {
    let started = Instant::now();
    let mut delay = Duration::from_millis(200);
    loop {
        match ledger::insert(store, batch.iter().cloned()).await {
            Ok(()) => return,
            Err(err) if slough_store::is_unavailable(&err) && started.elapsed() < OUTAGE => {
                tracing::warn!(error = %err, rows = batch.len(), "the store is unavailable; usage rows wait");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(err) => {
                tracing::error!(error = %err, rows = batch.len(), "cannot store usage rows");
                return;
            }
        }
    }
}

/// How long a batch of usage rows waits for an unavailable store.
const OUTAGE: Duration = Duration::from_secs(600);

/// Accounts for one admitted model request: holds its in-flight slot, and when dropped
/// stores its usage row, counts its tokens against the key's limits and in the metrics.
/// A request dropped before [`Metered::finish`] (the client went away) is stored as 499,
/// charged the prompts its generations announced (in their first chunk) and the chunks
/// it received as its completion tokens (inference reports the exact usage only at the
/// end).
pub struct Metered {
    recorder: UsageRecorder,
    limits: Arc<Limits>,
    key_id: Uuid,
    endpoint: &'static str,
    model: String,
    started: Instant,
    usage: Usage,
    /// Chunks received that no upstream usage report covers yet.
    unreported_chunks: u32,
    /// Prompt tokens announced by generations that have not reported their usage yet.
    unreported_prompt: u32,
    status: u16,
    stream: bool,
    /// Findings the key's PII policy masked, as the row's JSON.
    pii_masked: Option<String>,
    /// The end user the request named.
    end_user: Option<String>,
    _slot: OwnedSemaphorePermit,
}

impl Metered {
    pub fn new(
        recorder: UsageRecorder,
        limits: Arc<Limits>,
        slot: OwnedSemaphorePermit,
        key_id: Uuid,
        endpoint: &'static str,
        model: &str,
    ) -> Metered {
        recorder.metrics.in_flight.inc();
        Metered {
            recorder,
            limits,
            key_id,
            endpoint,
            model: model.to_owned(),
            started: Instant::now(),
            usage: Usage::default(),
            unreported_chunks: 0,
            unreported_prompt: 0,
            status: 499,
            stream: false,
            pii_masked: None,
            end_user: None,
            _slot: slot,
        }
    }

    /// Marks the request as streamed (counted in the active-streams gauge until dropped).
    pub fn streaming(&mut self) {
        if !self.stream {
            self.stream = true;
            self.recorder.metrics.active_streams.inc();
        }
    }

    /// Counts a chunk of generated text (and the prompt its generation announces on its
    /// first chunk), so that a request abandoned before inference reports its usage is
    /// still charged about what it used.
    pub fn chunk(&mut self, prompt_tokens: Option<u32>) {
        self.unreported_chunks += 1;
        self.unreported_prompt += prompt_tokens.unwrap_or(0);
    }

    /// Adds tokens used so far (several prompts add up).
    pub fn add(&mut self, usage: Usage) {
        self.unreported_chunks = self
            .unreported_chunks
            .saturating_sub(usage.completion_tokens);
        self.unreported_prompt = self.unreported_prompt.saturating_sub(usage.prompt_tokens);
        self.usage += usage;
    }

    /// The tokens reported so far.
    pub fn usage(&self) -> Usage {
        self.usage
    }

    /// Records the findings the key's PII policy masked in the request, by type.
    pub fn pii_masked(&mut self, masked: &std::collections::BTreeMap<slough_pii::PiiType, u64>) {
        if !masked.is_empty() {
            self.pii_masked = serde_json::to_string(masked).ok();
        }
    }

    /// Records the end user the request named (`safety_identifier` or `user`).
    pub fn end_user(&mut self, end_user: Option<String>) {
        self.end_user = end_user;
    }

    /// Records how the request ended.
    pub fn finish(&mut self, status: u16) {
        self.status = status;
    }

    /// Records that a call upstream failed with `error`, and returns the answer for it.
    pub fn failed(&mut self, error: impl Into<ApiError>) -> ApiError {
        let error = error.into();
        if error.status().as_u16() == 429 {
            self.recorder.metrics.reject("upstream_overloaded");
        }
        self.finish(error.status().as_u16());
        error
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        if self.status == 499 {
            // Inference reports usage at the end; a chunk is at least one token.
            self.usage += Usage {
                prompt_tokens: self.unreported_prompt,
                completion_tokens: self.unreported_chunks,
                total_tokens: self.unreported_prompt + self.unreported_chunks,
            };
        }
        let metrics = &self.recorder.metrics;
        metrics.in_flight.dec();
        if self.stream {
            metrics.active_streams.dec();
        }
        let prompt = u64::from(self.usage.prompt_tokens);
        let completion = u64::from(self.usage.completion_tokens);
        metrics.tokens(prompt, completion);
        self.limits.record(self.key_id, prompt + completion);
        self.recorder.record(usage::ActiveModel {
            id: Set(Uuid::new_v4()),
            key_id: Set(self.key_id),
            endpoint: Set(self.endpoint.to_owned()),
            model: Set(std::mem::take(&mut self.model)),
            prompt_tokens: Set(i64::from(self.usage.prompt_tokens)),
            completion_tokens: Set(i64::from(self.usage.completion_tokens)),
            latency_ms: Set(i64::try_from(self.started.elapsed().as_millis()).unwrap_or(i64::MAX)),
            status: Set(i16::try_from(self.status).unwrap_or(i16::MAX)),
            created_at: Set(Utc::now()),
            pii_masked: Set(self.pii_masked.take()),
            end_user: Set(self.end_user.take()),
        });
    }
}
