//! Chat models: a handle that validates and tokenizes requests, and the scheduler
//! thread it feeds (continuous batching over a [`model::Model`], the ONNX Runtime
//! [`engine::Engine`] when served).

pub mod engine;
pub mod model;
pub mod plan;
pub mod prefix;
pub mod sampler;
pub mod scheduler;

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Instant,
};

use slough_modelkit::{llama::Int8Kernel, package::Manifest};
use slough_protocol::{
    ErrorBody, ErrorCode,
    inference::{GenerateRequest, ModelInfo, ModelKind, ModelLoad},
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use self::{
    engine::Engine,
    model::{Layout, Model as _, Shape},
    sampler::Settings,
    scheduler::{Event, Job, Scheduler},
};
use crate::{config::Config, metrics::ModelMetrics, runtime::Runtime, text::TextModel};

/// A served chat model.
pub struct ChatModel {
    pub info: ModelInfo,
    pub text: Arc<TextModel>,
    default_temperature: f32,
    default_top_p: f32,
    max_batch: usize,
    jobs: mpsc::UnboundedSender<Job>,
    /// Requests accepted and not yet finished.
    pending: Arc<AtomicUsize>,
    /// Most requests accepted at once (running and waiting).
    limit: usize,
    /// Bytes of keys and values per position of one sequence, and the most the KV
    /// buffer may take (`inference.kv_cache_mb`).
    position_bytes: usize,
    kv_limit: usize,
}

impl std::fmt::Debug for ChatModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatModel")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// An accepted generation: its events and the token that cancels it.
#[derive(Debug)]
pub struct Accepted {
    pub events: mpsc::UnboundedReceiver<Event>,
    pub cancel: CancellationToken,
    pub prompt_tokens: usize,
}

/// A chat package's tokenizer and engine on `runtime`, its context capped at
/// `max_context`: what a served model's scheduler runs, and what
/// `slough eval perplexity` scores text with.
pub fn open(
    dir: &Path,
    manifest: &Manifest,
    runtime: &Runtime,
    max_context: usize,
) -> Result<(TextModel, Engine, crate::config::Provider), String> {
    let text = TextModel::load(dir, manifest)?;
    let (Some(kv_heads), Some(head_dim)) = (manifest.graph.kv_heads, manifest.graph.head_dim)
    else {
        return Err("the manifest lacks graph.kv_heads / graph.head_dim".to_owned());
    };
    let (session, provider) = runtime
        .session(&dir.join("model.onnx"))
        .map_err(|err| err.to_string())?;
    let build = &manifest.build;
    let on_our_kernel = (build.accuracy_level == 4 || build.lm_head_accuracy_level == 4)
        && build.int8_kernel == Int8Kernel::Blocks;
    if provider != crate::config::Provider::Cpu && on_our_kernel {
        tracing::warn!(
            model = %manifest.id,
            provider = provider.name(),
            "this package's int8 matmuls run on our CPU kernel, copied to and from the device \
             around each; import it with --int8-kernel matmulnbits (or --exact) for a GPU"
        );
    }
    let shape = Shape {
        layers: manifest.graph.layers,
        kv_heads,
        head_dim,
        vocab: manifest.graph.vocab_size,
        max_context: manifest.context_length.min(max_context),
    };
    Ok((text, Engine::new(session, shape), provider))
}

impl ChatModel {
    /// Opens the package's session and starts its scheduler thread.
    pub fn start(
        dir: &Path,
        manifest: &Manifest,
        runtime: &Runtime,
        config: &Config,
        metrics: ModelMetrics,
    ) -> Result<ChatModel, String> {
        let max_context = manifest.context_length.min(config.max_context);
        let (text, engine, provider) = open(dir, manifest, runtime, max_context)?;
        let position_bytes = engine.shape().layout_bytes(Layout {
            rows: 1,
            capacity: 1,
        });
        let text = Arc::new(text);
        let (jobs, inbox) = mpsc::unbounded_channel();
        let pending = Arc::new(AtomicUsize::new(0));
        let scheduler = Scheduler::new(
            engine,
            text.clone(),
            metrics,
            config,
            inbox,
            pending.clone(),
        );
        std::thread::Builder::new()
            .name(format!("chat-{}", manifest.id))
            .spawn(move || scheduler.run())
            .map_err(|err| format!("cannot start the scheduler thread: {err}"))?;
        let sampling = manifest.default_sampling.as_ref();
        Ok(ChatModel {
            info: ModelInfo {
                id: manifest.id.clone(),
                kind: ModelKind::Chat,
                architecture: manifest.architecture.clone(),
                context_length: max_context as u32,
                quantization: manifest.quantization.clone(),
                created_at: manifest.created_at.clone(),
                provider: provider.name().to_owned(),
                dimensions: None,
                parent: manifest.parent.clone(),
            },
            text,
            default_temperature: sampling.map_or(1.0, |s| s.temperature),
            default_top_p: sampling.map_or(1.0, |s| s.top_p),
            max_batch: config.max_batch,
            jobs,
            pending,
            limit: config.max_batch + config.max_queue,
            position_bytes,
            kv_limit: config.kv_cache_bytes(),
        })
    }

    /// Its load now: generations running or queued, and the batch size.
    pub fn load(&self) -> ModelLoad {
        ModelLoad {
            model: self.info.id.clone(),
            pending: u32::try_from(self.pending.load(Ordering::Acquire)).unwrap_or(u32::MAX),
            capacity: u32::try_from(self.max_batch).unwrap_or(u32::MAX),
        }
    }

    /// The longest sequence `n` choices can reach: the context, or less where the
    /// KV-cache limit cannot hold `n` rows that long (the buffer's rows are a power of
    /// two, its positions a power of two from 256).
    fn kv_room(&self, n: usize) -> usize {
        let context = self.info.context_length as usize;
        let rows = n.max(1).next_power_of_two();
        let fits = |positions: usize| rows * positions * self.position_bytes <= self.kv_limit;
        if fits(context) {
            return context;
        }
        let mut capacity = context.next_power_of_two() / 2;
        while capacity >= 256 && !fits(capacity) {
            capacity /= 2;
        }
        if capacity >= 256 { capacity } else { 0 }
    }

    /// Checks, renders and tokenizes `request`, then queues it, or refuses it at once:
    /// `invalid_request` naming the field, `context_length_exceeded` naming both numbers,
    /// `overloaded` with a retry hint when the queue is full.
    pub fn submit(&self, request: &GenerateRequest) -> Result<Accepted, ErrorBody> {
        request.validate()?;
        if request.n as usize > self.max_batch {
            return Err(ErrorBody::invalid(
                "n",
                format!(
                    "n = {} is more than this model decodes at once ({})",
                    request.n, self.max_batch
                ),
            ));
        }
        let tokens = self.text.prompt(&request.input)?.tokens;
        if tokens.is_empty() {
            return Err(ErrorBody::invalid("input", "the prompt is empty"));
        }
        let context = self.kv_room(request.n as usize);
        let room = context.saturating_sub(tokens.len());
        let limited = if context < self.info.context_length as usize {
            " (as far as the KV-cache limit, inference.kv_cache_mb, allows)"
        } else {
            ""
        };
        let max_tokens = match request.max_tokens {
            Some(asked) if asked as usize > room => {
                return Err(ErrorBody::new(
                    ErrorCode::ContextLengthExceeded,
                    format!(
                        "the prompt is {} tokens and max_tokens asks for {asked} more, but the context of {} is {context} tokens{limited}",
                        tokens.len(),
                        self.info.id
                    ),
                ));
            }
            Some(asked) => asked as usize,
            None if room == 0 => {
                return Err(ErrorBody::new(
                    ErrorCode::ContextLengthExceeded,
                    format!(
                        "the prompt is {} tokens, which fills the context of {} ({context} tokens{limited})",
                        tokens.len(),
                        self.info.id
                    ),
                ));
            }
            None => room,
        };

        if self.pending.fetch_add(1, Ordering::AcqRel) >= self.limit {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            return Err(ErrorBody::overloaded(
                format!(
                    "{} has {} requests running or queued; try again shortly",
                    self.info.id, self.limit
                ),
                1000,
            ));
        }
        let (events, receiver) = mpsc::unbounded_channel();
        let cancel = CancellationToken::new();
        let prompt_tokens = tokens.len();
        let job = Job {
            prompt: tokens,
            n: request.n as usize,
            max_tokens,
            settings: Settings::resolve(
                &request.sampling,
                self.default_temperature,
                self.default_top_p,
            ),
            seed: request.sampling.seed.unwrap_or_else(rand::random),
            stop: request.stop.clone(),
            logprobs: request.logprobs,
            top_logprobs: request.top_logprobs as usize,
            ignore_eos: request.ignore_eos,
            events,
            cancel: cancel.clone(),
            enqueued: Instant::now(),
            span: tracing::Span::current(),
        };
        if self.jobs.send(job).is_err() {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            return Err(ErrorBody::new(
                ErrorCode::Unavailable,
                format!("{} is shutting down", self.info.id),
            ));
        }
        Ok(Accepted {
            events: receiver,
            cancel,
            prompt_tokens,
        })
    }
}
