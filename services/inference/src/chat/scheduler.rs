//! The scheduler of one chat model: a thread that owns the [`Model`] and runs
//! continuous batching. Each turn it takes new requests in, drops cancelled work, asks
//! [`plan::plan`] what to do (admit and prefill waiting requests, prefill the next chunk
//! of a long prompt, or refuse one that can never fit; which buffer to lay out), does it,
//! then runs one decode step for every running sequence. A prompt the prefix cache holds
//! all but the last token of skips prefill: that token runs in the decode step, with
//! everyone else's. Requests join and leave the batch between steps.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Instant,
};

use slough_protocol::{
    ErrorBody, ErrorCode,
    inference::{FinishReason, GenerateChunk, GenerateEnd, TokenLogprob, TopLogprob, Usage},
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{
    model::{Layout, Model, ModelError, PrefillCache, Step},
    plan::{self, Limits, Plan, Prefill, Running, Waiting},
    prefix::PrefixCache,
    sampler::{self, Sampler, Settings},
};
use crate::{
    metrics::ModelMetrics,
    text::{Detokenizer, StopMatcher, TextModel},
};

/// A generation request as the scheduler takes it (validated, tokenized).
#[derive(Debug)]
pub struct Job {
    pub prompt: Vec<u32>,
    pub n: usize,
    pub max_tokens: usize,
    pub settings: Settings,
    /// Choice i draws from `seed + i`.
    pub seed: u64,
    pub stop: Vec<String>,
    pub logprobs: bool,
    pub top_logprobs: usize,
    pub ignore_eos: bool,
    pub events: mpsc::UnboundedSender<Event>,
    pub cancel: CancellationToken,
    pub enqueued: Instant,
    /// The request's span: the scheduler's work for it (queueing, prefill) is recorded
    /// in the request's trace.
    pub span: tracing::Span,
}

/// What the scheduler tells a request's handler.
#[derive(Debug)]
pub enum Event {
    Chunk(GenerateChunk),
    End(GenerateEnd),
    Failed(ErrorBody),
}

struct JobState {
    events: mpsc::UnboundedSender<Event>,
    cancel: CancellationToken,
    finish: Vec<Option<FinishReason>>,
    prompt_tokens: usize,
    completion_tokens: usize,
    enqueued: Instant,
    first_token: bool,
}

struct Sequence {
    job: u64,
    choice: u32,
    row: usize,
    /// Positions in the cache.
    len: usize,
    /// The token fed at the next step: the last one sampled, or the prompt's last one
    /// when the prefix cache held all the rest.
    next: u32,
    generated: usize,
    max_tokens: usize,
    sampler: Sampler,
    detokenizer: Detokenizer,
    stop: StopMatcher,
    logprobs: bool,
    top_logprobs: usize,
    ignore_eos: bool,
    last_token_at: Instant,
}

/// How a request's prompt enters the batch.
#[derive(Clone, Copy)]
enum Prompt<'a> {
    /// Run whole: its cache and its last position's logits.
    Prefilled(&'a PrefillCache, &'a [f32]),
    /// Cached but for its last token, which the next decode step feeds.
    AllButLast(&'a PrefillCache),
}

/// The cached beginning of `prompt` and its length, counted in `metrics` (a lookup when
/// the cache is on, a hit and the tokens it saves when found).
fn lookup_prefix(
    prefixes: &mut PrefixCache,
    metrics: &ModelMetrics,
    prompt: &[u32],
) -> Option<(PrefillCache, usize)> {
    if !prefixes.enabled() {
        return None;
    }
    metrics.prefix_lookups.inc();
    let found = prefixes.lookup(prompt)?;
    metrics.prefix_hits.inc();
    metrics.prefix_saved_tokens.inc_by(found.1 as u64);
    Some(found)
}

/// The scheduler thread's state.
pub struct Scheduler<M> {
    model: M,
    text: Arc<TextModel>,
    metrics: ModelMetrics,
    limits: Limits,
    inbox: mpsc::UnboundedReceiver<Job>,
    /// Requests admitted but not finished, shared with the handle for overload checks.
    pending: Arc<AtomicUsize>,
    waiting: VecDeque<(u64, Job)>,
    jobs: HashMap<u64, JobState>,
    next_job: u64,
    running: Vec<Sequence>,
    /// The KV buffer the running sequences live in, once one is made.
    layout: Option<Layout>,
    /// Recent prompts' leading blocks, so that a shared beginning is prefilled once.
    prefixes: PrefixCache,
    /// The front waiting request's prompt, prefilled so far (its id, its cache, how
    /// many positions), while a long prompt is prefilled a chunk per turn.
    partial: Option<(u64, PrefillCache, usize)>,
}

impl<M: Model> Scheduler<M> {
    pub fn new(
        model: M,
        text: Arc<TextModel>,
        metrics: ModelMetrics,
        config: &crate::config::Config,
        inbox: mpsc::UnboundedReceiver<Job>,
        pending: Arc<AtomicUsize>,
    ) -> Scheduler<M> {
        let prefixes = PrefixCache::new(model.shape(), config.prefix_cache_mb * 1024 * 1024);
        Scheduler {
            model,
            text,
            metrics,
            limits: Limits {
                max_batch: config.max_batch,
                prefill_budget: config.prefill_budget,
                kv_limit: config.kv_cache_bytes(),
            },
            inbox,
            pending,
            waiting: VecDeque::new(),
            jobs: HashMap::new(),
            next_job: 0,
            running: Vec::new(),
            layout: None,
            prefixes,
            partial: None,
        }
    }

    /// Runs until every handle is gone and the work is done.
    pub fn run(mut self) {
        loop {
            if self.running.is_empty() && self.waiting.is_empty() {
                // Idle: sleep until work comes (the buffer stays for the next request).
                match self.inbox.blocking_recv() {
                    Some(job) => self.enqueue(job),
                    None => return,
                }
            }
            self.turn();
        }
    }

    /// One turn: new requests in, cancelled work out, the plan's prefill work, then one
    /// decode step for every running sequence.
    pub fn turn(&mut self) {
        while let Ok(job) = self.inbox.try_recv() {
            self.enqueue(job);
        }
        self.drop_cancelled();
        let front = self.waiting.front().map(|(id, _)| *id);
        if self
            .partial
            .as_ref()
            .is_some_and(|(owner, _, _)| Some(*owner) != front)
        {
            // Its request was cancelled; the next one starts afresh.
            self.partial = None;
        }
        let plan = self.plan();
        if let Some(layout) = plan.layout
            && let Err(err) = self.move_to(layout)
        {
            let message = format!("cannot lay out the KV buffer: {err}");
            self.fail_all(&message);
            let starting = match plan.prefill {
                Prefill::Admit { count, .. } => count,
                Prefill::Chunk { to, .. } => usize::from(
                    self.waiting
                        .front()
                        .is_some_and(|(_, job)| job.prompt.len() == to),
                ),
                Prefill::Nothing | Prefill::Refuse => 0,
            };
            for (_, job) in self.waiting.drain(..starting).collect::<Vec<_>>() {
                self.refuse(&job, &message);
            }
            self.partial = None;
            return;
        }
        match plan.prefill {
            Prefill::Nothing => {}
            Prefill::Admit { count, together } => self.admit(count, together),
            Prefill::Chunk { from, to } => self.prefill_chunk(from, to),
            Prefill::Refuse => self.refuse_too_big(),
        }
        self.step();
        self.observe();
    }

    /// What [`plan::plan`] decides for this turn, given the running sequences and the
    /// front of the queue (as many requests as could join, their cached beginnings
    /// looked up).
    fn plan(&self) -> Plan {
        let running: Vec<Running> = self
            .running
            .iter()
            .map(|seq| Running {
                len: seq.len,
                longest: seq.len - seq.generated + seq.max_tokens,
            })
            .collect();
        let could_join = self.limits.max_batch.saturating_sub(self.running.len()) + 1;
        let waiting: Vec<Waiting> = self
            .waiting
            .iter()
            .take(could_join)
            .map(|(_, job)| Waiting {
                prompt_tokens: job.prompt.len(),
                cached_tokens: self.prefixes.cached_len(&job.prompt),
                choices: job.n,
                max_tokens: job.max_tokens,
            })
            .collect();
        plan::plan(&plan::State {
            shape: self.model.shape(),
            limits: self.limits,
            running: &running,
            waiting: &waiting,
            queued: self.waiting.len(),
            partial: self.partial.as_ref().map(|(_, _, done)| *done),
            layout: self.layout,
        })
    }

    fn enqueue(&mut self, job: Job) {
        let id = self.next_job;
        self.next_job += 1;
        self.waiting.push_back((id, job));
    }

    fn drop_cancelled(&mut self) {
        let gone = |cancel: &CancellationToken, events: &mpsc::UnboundedSender<Event>| {
            cancel.is_cancelled() || events.is_closed()
        };
        let before = self.waiting.len();
        self.waiting
            .retain(|(_, job)| !gone(&job.cancel, &job.events));
        for _ in self.waiting.len()..before {
            self.release_job();
        }
        let cancelled: Vec<u64> = self
            .jobs
            .iter()
            .filter(|(_, state)| gone(&state.cancel, &state.events))
            .map(|(&id, _)| id)
            .collect();
        for id in cancelled {
            self.running.retain(|seq| seq.job != id);
            self.jobs.remove(&id);
            self.metrics.cancelled.inc();
            self.release_job();
        }
    }

    fn release_job(&self) {
        self.pending.fetch_sub(1, Ordering::AcqRel);
    }

    /// Starts the `count` requests at the front of the queue, their prompts prefilled
    /// together when `together` and one by one otherwise (prefix-cache hits each on its
    /// own in any case).
    fn admit(&mut self, count: usize, together: bool) {
        let picked: Vec<(u64, Job)> = self.waiting.drain(..count).collect();
        for (_, job) in &picked {
            self.observe_queued(job);
        }
        let groups: Vec<Vec<(u64, Job)>> = if together {
            vec![picked]
        } else {
            picked.into_iter().map(|one| vec![one]).collect()
        };
        for group in groups {
            let cold = self.prefill_cached(group);
            if !cold.is_empty() {
                self.prefill_together(cold);
            }
        }
    }

    /// Counts how long a starting request waited, in its metrics and its trace.
    fn observe_queued(&self, job: &Job) {
        let queued = job.enqueued.elapsed();
        self.metrics.queue_seconds.observe(queued.as_secs_f64());
        job.span
            .record("slough.queue_ms", queued.as_secs_f64() * 1e3);
    }

    /// Chunked prefill: positions `from..to` of the front request's prompt, after the
    /// chunks before it (or its cached beginning); the request starts with its last
    /// chunk.
    fn prefill_chunk(&mut self, from: usize, to: usize) {
        let Some((id, job)) = self.waiting.front() else {
            return;
        };
        let id = *id;
        let (cache, done) = match self.partial.take() {
            Some((_, cache, done)) => (cache, done),
            None if from == 0 => (Vec::new(), 0),
            None => lookup_prefix(&mut self.prefixes, &self.metrics, &job.prompt)
                .unwrap_or_else(|| (Vec::new(), 0)),
        };
        let prompt_len = job.prompt.len();
        let end = to.max(done + 1).min(prompt_len);
        let tokens = &job.prompt[done..end];
        let span = tracing::info_span!(
            parent: job.span.id(),
            "gen_ai.prefill",
            prompts = 1,
            tokens = tokens.len(),
            cached_tokens = done,
        );
        let prefilled = span.in_scope(|| {
            if done == 0 {
                self.model
                    .prefill(&[tokens])
                    .map(|mut all| all.pop().unwrap_or_default())
            } else {
                self.model.prefill_after(&cache, done, tokens)
            }
        });
        if end < prompt_len {
            match prefilled {
                Ok((_, cache)) => self.partial = Some((id, cache, end)),
                Err(err) => {
                    if let Some((_, job)) = self.waiting.pop_front() {
                        self.refuse(&job, &format!("prefill failed: {err}"));
                    }
                }
            }
            return;
        }
        // The last chunk: the request leaves the queue and starts.
        let Some((_, job)) = self.waiting.pop_front() else {
            return;
        };
        let (logits, cache) = match prefilled {
            Ok(prefilled) => prefilled,
            Err(err) => {
                self.refuse(&job, &format!("prefill failed: {err}"));
                return;
            }
        };
        self.observe_queued(&job);
        self.prefixes.insert(&job.prompt, &cache);
        self.metrics
            .prefix_cache_bytes
            .set(self.prefixes.bytes() as i64);
        self.start(id, job, Prompt::Prefilled(&cache, &logits));
    }

    /// Refuses the front request: it cannot fit the KV-cache limit even alone.
    fn refuse_too_big(&mut self) {
        let Some((_, job)) = self.waiting.pop_front() else {
            return;
        };
        self.refuse_with(
            &job,
            ErrorBody::new(
                ErrorCode::ContextLengthExceeded,
                format!(
                    "{} choices of up to {} tokens need more KV cache than \
                     inference.kv_cache_mb allows ({} MiB)",
                    job.n,
                    job.prompt.len() + job.max_tokens,
                    self.limits.kv_limit / (1024 * 1024)
                ),
            ),
        );
    }

    /// Starts the requests of `group` whose prompts begin with cached blocks: prefilled
    /// each on its own after those blocks, or, when only the last token is left, with
    /// that token for the next decode step. Answers the others.
    fn prefill_cached(&mut self, group: Vec<(u64, Job)>) -> Vec<(u64, Job)> {
        if !self.prefixes.enabled() {
            return group;
        }
        let mut cold = Vec::new();
        for (id, job) in group {
            let Some((past, len)) = lookup_prefix(&mut self.prefixes, &self.metrics, &job.prompt)
            else {
                cold.push((id, job));
                continue;
            };
            if len + 1 == job.prompt.len() {
                // Only its last token is left: it runs in the next decode step, batched
                // with every other stream, instead of a prefill of its own.
                self.start(id, job, Prompt::AllButLast(&past));
                continue;
            }
            let span = tracing::info_span!(
                parent: job.span.id(),
                "gen_ai.prefill",
                prompts = 1,
                tokens = job.prompt.len() - len,
                cached_tokens = len,
            );
            let prefilled =
                span.in_scope(|| self.model.prefill_after(&past, len, &job.prompt[len..]));
            match prefilled {
                Ok((logits, cache)) => {
                    self.prefixes.insert(&job.prompt, &cache);
                    self.start(id, job, Prompt::Prefilled(&cache, &logits));
                }
                Err(err) => self.refuse(&job, &format!("prefill failed: {err}")),
            }
        }
        self.metrics
            .prefix_cache_bytes
            .set(self.prefixes.bytes() as i64);
        cold
    }

    /// Prefills `group` together (right-padded) from an empty cache and starts each.
    fn prefill_together(&mut self, group: Vec<(u64, Job)>) {
        let prompts: Vec<&[u32]> = group.iter().map(|(_, j)| j.prompt.as_slice()).collect();
        // A prefill span in the first request's trace, linked from the others'.
        let span = tracing::info_span!(
            parent: group.first().map(|(_, job)| job.span.id()).unwrap_or_default(),
            "gen_ai.prefill",
            prompts = group.len(),
            tokens = prompts.iter().map(|p| p.len()).sum::<usize>(),
        );
        for (_, job) in group.iter().skip(1) {
            span.follows_from(job.span.id());
        }
        let prefilled = span.in_scope(|| self.model.prefill(&prompts));
        match prefilled {
            Ok(prefilled) => {
                for ((id, job), (logits, cache)) in group.into_iter().zip(prefilled) {
                    self.prefixes.insert(&job.prompt, &cache);
                    self.start(id, job, Prompt::Prefilled(&cache, &logits));
                }
                self.metrics
                    .prefix_cache_bytes
                    .set(self.prefixes.bytes() as i64);
            }
            Err(err) => {
                for (_, job) in group {
                    self.refuse(&job, &format!("prefill failed: {err}"));
                }
            }
        }
    }

    /// Fails a request that never started.
    fn refuse(&self, job: &Job, message: &str) {
        self.refuse_with(job, ErrorBody::new(ErrorCode::Internal, message));
    }

    fn refuse_with(&self, job: &Job, error: ErrorBody) {
        let _ = job.events.send(Event::Failed(error));
        self.release_job();
    }

    /// Starts a request: its prompt's cache into free rows, then each choice's first
    /// token (now, or from the next decode step when its last token is still to run).
    fn start(&mut self, id: u64, job: Job, prompt: Prompt<'_>) {
        let Some(layout) = self.layout else {
            self.refuse(&job, "no KV buffer");
            return;
        };
        self.metrics.prompt_tokens.inc_by(job.prompt.len() as u64);
        let (cache, cached) = match prompt {
            Prompt::Prefilled(cache, _) => (cache, job.prompt.len()),
            Prompt::AllButLast(cache) => (cache, job.prompt.len() - 1),
        };
        let rows: Vec<usize> = (0..layout.rows)
            .filter(|row| self.running.iter().all(|s| s.row != *row))
            .take(job.n)
            .collect();
        for &row in &rows {
            if let Err(err) = self.model.place(row, cache, cached) {
                self.refuse(&job, &format!("cannot place the prompt's cache: {err}"));
                return;
            }
        }
        self.jobs.insert(
            id,
            JobState {
                events: job.events.clone(),
                cancel: job.cancel.clone(),
                finish: vec![None; job.n],
                prompt_tokens: job.prompt.len(),
                completion_tokens: 0,
                enqueued: job.enqueued,
                first_token: false,
            },
        );
        for (choice, row) in rows.into_iter().enumerate() {
            let mut seq = Sequence {
                job: id,
                choice: choice as u32,
                row,
                len: cached,
                next: job.prompt.last().copied().unwrap_or(0),
                generated: 0,
                max_tokens: job.max_tokens,
                sampler: Sampler::new(
                    job.settings,
                    job.seed.wrapping_add(choice as u64),
                    &job.prompt,
                ),
                detokenizer: Detokenizer::default(),
                stop: StopMatcher::new(job.stop.clone()),
                logprobs: job.logprobs,
                top_logprobs: job.top_logprobs,
                ignore_eos: job.ignore_eos,
                last_token_at: Instant::now(),
            };
            let reason = match prompt {
                Prompt::Prefilled(_, logits) => self.advance(&mut seq, &mut logits.to_vec()),
                Prompt::AllButLast(_) => None,
            };
            match reason {
                Some(reason) => self.finish(seq, reason),
                None => self.running.push(seq),
            }
        }
    }

    /// One decode step for every running sequence.
    fn step(&mut self) {
        if self.running.is_empty() {
            return;
        }
        if self
            .layout
            .is_none_or(|layout| self.longest() > layout.capacity)
        {
            // The plan makes room before every step: this is a bug, not a load.
            self.fail_all("the KV buffer has no room for the next position");
            return;
        }
        let steps: Vec<Step> = self
            .running
            .iter()
            .map(|seq| Step {
                row: seq.row,
                token: seq.next,
                position: seq.len,
            })
            .collect();
        self.metrics.batch_size.observe(steps.len() as f64);
        let started = Instant::now();
        let decoded = self.model.decode(&steps);
        tracing::trace!(
            sequences = steps.len(),
            rows = self.layout.map_or(0, |l| l.rows),
            ms = started.elapsed().as_secs_f64() * 1e3,
            "decode step"
        );
        let logits = match decoded {
            Ok(logits) => logits,
            Err(err) => {
                self.fail_all(&format!("decode step failed: {err}"));
                return;
            }
        };
        let running = std::mem::take(&mut self.running);
        for (mut seq, mut row_logits) in running.into_iter().zip(logits) {
            seq.len += 1;
            match self.advance(&mut seq, &mut row_logits) {
                Some(reason) => self.finish(seq, reason),
                None => self.running.push(seq),
            }
        }
    }

    /// Samples the sequence's next token from `logits` and emits it; says why the
    /// sequence is over, if it is.
    fn advance(&mut self, seq: &mut Sequence, logits: &mut [f32]) -> Option<FinishReason> {
        let raw = seq.logprobs.then(|| logits.to_vec());
        let token = seq.sampler.sample(logits);
        seq.generated += 1;
        self.metrics.generated_tokens.inc();
        let now = Instant::now();
        let state = self.jobs.get_mut(&seq.job)?;
        if !state.first_token {
            state.first_token = true;
            self.metrics
                .ttft_seconds
                .observe(state.enqueued.elapsed().as_secs_f64());
        } else {
            self.metrics
                .itl_seconds
                .observe(now.duration_since(seq.last_token_at).as_secs_f64());
        }
        seq.last_token_at = now;
        state.completion_tokens += 1;

        if !seq.ignore_eos && self.text.is_stop(token) {
            return Some(FinishReason::Stop);
        }
        let piece = seq.detokenizer.push(&self.text, token);
        let (text, stopped) = seq.stop.push(&piece);
        let logprobs = match raw {
            Some(raw) => {
                let (logprob, top) = sampler::logprobs(&raw, token, seq.top_logprobs);
                let (token_text, bytes) = self.text.token_piece(token);
                vec![TokenLogprob {
                    token: token_text,
                    logprob,
                    bytes,
                    top_logprobs: top
                        .into_iter()
                        .map(|(id, logprob)| {
                            let (token, bytes) = self.text.token_piece(id);
                            TopLogprob {
                                token,
                                logprob,
                                bytes,
                            }
                        })
                        .collect(),
                }]
            }
            None => Vec::new(),
        };
        if !text.is_empty() || !logprobs.is_empty() {
            let _ = state.events.send(Event::Chunk(GenerateChunk {
                index: seq.choice,
                text,
                logprobs,
                prompt_tokens: None,
            }));
        }
        if stopped {
            return Some(FinishReason::Stop);
        }
        seq.next = token;
        let context_full = seq.len + 1 >= self.model.shape().max_context;
        (seq.generated >= seq.max_tokens || context_full).then_some(FinishReason::Length)
    }

    /// Ends a choice; the request ends with its last choice.
    fn finish(&mut self, mut seq: Sequence, reason: FinishReason) {
        let Some(state) = self.jobs.get_mut(&seq.job) else {
            return;
        };
        let rest = seq.stop.flush();
        if !rest.is_empty() {
            let _ = state.events.send(Event::Chunk(GenerateChunk {
                index: seq.choice,
                text: rest,
                logprobs: Vec::new(),
                prompt_tokens: None,
            }));
        }
        if let Some(slot) = state.finish.get_mut(seq.choice as usize) {
            *slot = Some(reason);
        }
        if state.finish.iter().all(Option::is_some) {
            let usage = Usage {
                prompt_tokens: state.prompt_tokens as u32,
                completion_tokens: state.completion_tokens as u32,
                total_tokens: (state.prompt_tokens + state.completion_tokens) as u32,
            };
            let _ = state.events.send(Event::End(GenerateEnd {
                finish_reasons: state.finish.iter().flatten().copied().collect(),
                usage,
            }));
            self.metrics
                .e2e_seconds
                .observe(state.enqueued.elapsed().as_secs_f64());
            self.jobs.remove(&seq.job);
            self.release_job();
        }
    }

    /// Positions the longest running sequence needs in the buffer (its next one included).
    fn longest(&self) -> usize {
        self.running
            .iter()
            .map(|seq| seq.len + 1)
            .max()
            .unwrap_or(1)
    }

    /// Moves the running sequences into a buffer of `layout` (rows 0, 1, ...).
    fn move_to(&mut self, layout: Layout) -> Result<(), ModelError> {
        if self.layout == Some(layout) {
            return Ok(());
        }
        let moves: Vec<(usize, usize, usize)> = self
            .running
            .iter()
            .enumerate()
            .map(|(to, seq)| (seq.row, to, seq.len))
            .collect();
        self.model.relayout(layout, &moves)?;
        for (to, seq) in self.running.iter_mut().enumerate() {
            seq.row = to;
        }
        self.layout = Some(layout);
        Ok(())
    }

    /// Fails every running request (the engine is in trouble).
    fn fail_all(&mut self, message: &str) {
        tracing::error!("{message}");
        for (_, state) in self.jobs.drain() {
            let _ = state
                .events
                .send(Event::Failed(ErrorBody::new(ErrorCode::Internal, message)));
            self.pending.fetch_sub(1, Ordering::AcqRel);
        }
        self.running.clear();
    }

    fn observe(&self) {
        let s = self.model.shape();
        self.metrics.queue_depth.set(self.waiting.len() as i64);
        self.metrics.running.set(self.running.len() as i64);
        let used: usize = self.running.iter().map(|seq| seq.len).sum();
        self.metrics
            .kv_cache_usage
            .set(used as f64 / (self.limits.max_batch * s.max_context) as f64);
        let allocated = self.layout.map_or(0, |layout| s.layout_bytes(layout));
        self.metrics.kv_cache_bytes.set(allocated as i64);
        self.metrics
            .kv_cache_limit_bytes
            .set(self.limits.kv_limit as i64);
    }
}

#[cfg(test)]
mod tests;
