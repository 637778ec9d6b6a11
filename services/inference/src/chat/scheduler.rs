//! The scheduler of one chat model: a thread that owns the [`Engine`] and runs
//! continuous batching. Each turn it drops cancelled work, admits waiting requests
//! (one, or more within a prompt-token budget, prefilled together; then each one's
//! first token), then runs one decode step for every running sequence. A prompt the
//! prefix cache holds all but the last token of skips prefill: that token runs in the
//! decode step, with everyone else's. Requests join and leave the batch between steps.

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
    admission::{self, Waiting},
    engine::{Engine, Layout, PrefillCache, Step},
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
pub struct Scheduler {
    engine: Engine,
    text: Arc<TextModel>,
    metrics: ModelMetrics,
    max_batch: usize,
    /// Prompt tokens prefilled per turn beyond the first request.
    prefill_budget: usize,
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
    /// The most bytes the KV buffer may take.
    kv_limit: usize,
    /// The front waiting request's prompt, prefilled so far (its id, its cache, how
    /// many positions), while a long prompt is prefilled a chunk per turn.
    partial: Option<(u64, PrefillCache, usize)>,
}

impl Scheduler {
    pub fn new(
        engine: Engine,
        text: Arc<TextModel>,
        metrics: ModelMetrics,
        config: &crate::config::Config,
        inbox: mpsc::UnboundedReceiver<Job>,
        pending: Arc<AtomicUsize>,
    ) -> Scheduler {
        let prefixes = PrefixCache::new(engine.shape(), config.prefix_cache_mb * 1024 * 1024);
        Scheduler {
            engine,
            text,
            metrics,
            max_batch: config.max_batch,
            prefill_budget: config.prefill_budget,
            inbox,
            pending,
            waiting: VecDeque::new(),
            jobs: HashMap::new(),
            next_job: 0,
            running: Vec::new(),
            layout: None,
            prefixes,
            kv_limit: config.kv_cache_bytes(),
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
            while let Ok(job) = self.inbox.try_recv() {
                self.enqueue(job);
            }
            self.drop_cancelled();
            self.admit();
            self.step();
            self.shrink();
            self.observe();
        }
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

    /// Admits waiting requests as [`admission::admit`] decides, and prefills them; a
    /// long prompt arriving while streams run is prefilled in chunks instead.
    fn admit(&mut self) {
        if self.prefill_chunk() {
            return;
        }
        // What each prompt leaves to prefill once its cached beginning is taken.
        let waiting = self.waiting.iter().map(|(_, job)| Waiting {
            prompt_tokens: job.prompt.len() - self.prefixes.cached_len(&job.prompt),
            choices: job.n,
        });
        let turn = admission::admit(
            waiting,
            self.running.len(),
            self.max_batch,
            self.prefill_budget,
        );
        // Within the KV-cache limit, counting each sequence at its longest.
        let mut count = turn.count;
        while count > 0 && !self.kv_fits(self.waiting.iter().take(count).map(|(_, job)| job)) {
            count -= 1;
        }
        if count == 0 {
            if turn.count > 0 && self.running.is_empty() {
                // Alone in an empty buffer and still too big: it never fits.
                if let Some((_, job)) = self.waiting.pop_front() {
                    self.refuse_with(
                        &job,
                        ErrorBody::new(
                            ErrorCode::ContextLengthExceeded,
                            format!(
                                "{} choices of up to {} tokens need more KV cache than \
                                 inference.kv_cache_mb allows ({} MiB)",
                                job.n,
                                job.prompt.len() + job.max_tokens,
                                self.kv_limit / (1024 * 1024)
                            ),
                        ),
                    );
                }
            }
            return;
        }
        let picked: Vec<(u64, Job)> = self.waiting.drain(..count).collect();
        let sequences = self.running.len() + picked.iter().map(|(_, job)| job.n).sum::<usize>();
        let longest_prompt = picked
            .iter()
            .map(|(_, job)| job.prompt.len())
            .max()
            .unwrap_or(0);
        for (_, job) in &picked {
            let queued = job.enqueued.elapsed();
            self.metrics.queue_seconds.observe(queued.as_secs_f64());
            job.span
                .record("slough.queue_ms", queued.as_secs_f64() * 1e3);
        }
        let needed = self
            .engine
            .layout_for(sequences, self.longest().max(longest_prompt + 1));
        if let Err(err) = self.move_to(self.grown(needed)) {
            let message = format!("cannot grow the batch: {err}");
            self.fail_all(&message);
            for (_, job) in picked {
                self.refuse(&job, &message);
            }
            return;
        }
        // Fewer than the policy picked (the KV limit): one by one.
        let groups: Vec<Vec<(u64, Job)>> = if turn.together && count == turn.count {
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

    /// Chunked prefill: while streams run, a prompt at the front of the queue whose
    /// uncached part is longer than the prefill budget is prefilled one budget-sized
    /// chunk per turn (each after the chunks before it, as a prefix-cache hit is), so
    /// that the running streams' next token waits for one chunk rather than the whole
    /// prompt. Answers whether it did this turn's prefill work.
    fn prefill_chunk(&mut self) -> bool {
        let chunk = self.prefill_budget.max(1);
        let Some((id, job)) = self.waiting.front() else {
            self.partial = None;
            return false;
        };
        let id = *id;
        if self
            .partial
            .as_ref()
            .is_some_and(|(owner, _, _)| *owner != id)
        {
            // Its request was cancelled; the next one starts afresh.
            self.partial = None;
        }
        let prompt_len = job.prompt.len();
        if self.partial.is_none() {
            let room =
                self.running.len() + job.n <= self.max_batch && self.kv_fits(std::iter::once(job));
            // Checked last: the prefix cache is walked only for a prompt long enough.
            if self.running.is_empty()
                || prompt_len <= chunk
                || !room
                || prompt_len - self.prefixes.cached_len(&job.prompt) <= chunk
            {
                return false;
            }
            let (cache, len) = lookup_prefix(&mut self.prefixes, &self.metrics, &job.prompt)
                .unwrap_or_else(|| (Vec::new(), 0));
            self.partial = Some((id, cache, len));
        }
        let Some((_, cache, done)) = self.partial.take() else {
            return false;
        };
        let end = (done + chunk).min(prompt_len);
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
                self.engine
                    .prefill(&[tokens])
                    .map(|mut all| all.pop().unwrap_or_default())
            } else {
                self.engine.prefill_after(&cache, done, tokens)
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
            return true;
        }
        // The last chunk: the request leaves the queue and starts.
        let Some((_, job)) = self.waiting.pop_front() else {
            return true;
        };
        let (logits, cache) = match prefilled {
            Ok(prefilled) => prefilled,
            Err(err) => {
                self.refuse(&job, &format!("prefill failed: {err}"));
                return true;
            }
        };
        let queued = job.enqueued.elapsed();
        self.metrics.queue_seconds.observe(queued.as_secs_f64());
        self.prefixes.insert(&job.prompt, &cache);
        self.metrics
            .prefix_cache_bytes
            .set(self.prefixes.bytes() as i64);
        let needed = self.engine.layout_for(
            self.running.len() + job.n,
            self.longest().max(prompt_len + 1),
        );
        let target = match self.layout {
            Some(current) => Layout {
                rows: current.rows.max(needed.rows),
                capacity: current.capacity.max(needed.capacity),
            },
            None => needed,
        };
        if let Err(err) = self.move_to(target) {
            let message = format!("cannot grow the batch: {err}");
            self.fail_all(&message);
            self.refuse(&job, &message);
            return true;
        }
        self.start(id, job, Prompt::Prefilled(&cache, &logits));
        true
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
                span.in_scope(|| self.engine.prefill_after(&past, len, &job.prompt[len..]));
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
        let prefilled = span.in_scope(|| self.engine.prefill(&prompts));
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

    /// Whether the running sequences and `jobs`' fit the KV-cache limit, each counted
    /// at its longest (prompt plus max_tokens), so that growing later never exceeds it.
    fn kv_fits<'a>(&self, jobs: impl Iterator<Item = &'a Job>) -> bool {
        let mut sequences = self.running.len();
        let mut longest = self
            .running
            .iter()
            .map(|seq| seq.len - seq.generated + seq.max_tokens)
            .max()
            .unwrap_or(0);
        for job in jobs {
            sequences += job.n;
            longest = longest.max(job.prompt.len() + job.max_tokens);
        }
        let layout = self.engine.layout_for(sequences, longest);
        self.engine.layout_bytes(layout) <= self.kv_limit
    }

    /// The buffer to move to for `needed`: the current one grown to cover it, or, when
    /// that would pass the KV-cache limit, `needed` itself (rows renumbered).
    fn grown(&self, needed: Layout) -> Layout {
        let merged = match self.layout {
            Some(current) => Layout {
                rows: current.rows.max(needed.rows),
                capacity: current.capacity.max(needed.capacity),
            },
            None => needed,
        };
        if self.engine.layout_bytes(merged) <= self.kv_limit {
            merged
        } else {
            needed
        }
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
            if let Err(err) = self.engine.place(row, cache, cached) {
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
        // Room for the position each sequence writes now.
        if let Some(current) = self.layout
            && self.longest() > current.capacity
        {
            let needed = self.engine.layout_for(self.running.len(), self.longest());
            if let Err(err) = self.move_to(self.grown(needed)) {
                self.fail_all(&format!("cannot grow the batch: {err}"));
                return;
            }
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
        let decoded = self.engine.decode(&steps);
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
        let context_full = seq.len + 1 >= self.engine.shape().max_context;
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
    fn move_to(&mut self, layout: Layout) -> Result<(), ort::Error> {
        if self.layout == Some(layout) {
            return Ok(());
        }
        let moves: Vec<(usize, usize, usize)> = self
            .running
            .iter()
            .enumerate()
            .map(|(to, seq)| (seq.row, to, seq.len))
            .collect();
        self.engine.relayout(layout, &moves)?;
        for (to, seq) in self.running.iter_mut().enumerate() {
            seq.row = to;
        }
        self.layout = Some(layout);
        Ok(())
    }

    /// Moves to a smaller buffer once the batch has thinned out or shortened (to a
    /// quarter or less of the rows or positions).
    fn shrink(&mut self) {
        let Some(current) = self.layout else {
            return;
        };
        if !self.waiting.is_empty() || self.running.is_empty() {
            return;
        }
        let needed = self.engine.layout_for(self.running.len(), self.longest());
        if (needed.rows * 4 <= current.rows || needed.capacity * 4 <= current.capacity)
            && let Err(err) = self.move_to(needed)
        {
            self.fail_all(&format!("cannot shrink the batch: {err}"));
        }
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
        let s = self.engine.shape();
        self.metrics.queue_depth.set(self.waiting.len() as i64);
        self.metrics.running.set(self.running.len() as i64);
        let used: usize = self.running.iter().map(|seq| seq.len).sum();
        self.metrics
            .kv_cache_usage
            .set(used as f64 / (self.max_batch * s.max_context) as f64);
        let allocated = self
            .layout
            .map_or(0, |layout| self.engine.layout_bytes(layout));
        self.metrics.kv_cache_bytes.set(allocated as i64);
        self.metrics.kv_cache_limit_bytes.set(self.kv_limit as i64);
    }
}
