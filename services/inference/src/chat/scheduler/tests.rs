//! The scheduler driven turn by turn over a fake model, so that admission, chunked
//! prefill, prefix-cache hits, cancellation and the KV buffer's moves are tested in
//! milliseconds without ONNX Runtime.
//!
//! The fake keeps, for each position of each row, the token written there and its
//! position, and checks both on every call: a cache placed in the wrong row, moved
//! wrongly between layouts or assembled wrongly by the prefix cache fails the step. Its
//! next token is a function of the whole sequence so far, so a request's text is right
//! only when every position the model read was.

use std::sync::{Arc, Mutex};

use prometheus::Registry;
use slough_protocol::ErrorCode;
use tokenizers::Tokenizer;

use super::*;
use crate::{chat::model::Shape, config::Config, metrics::Metrics};

const VOCAB: usize = 32;
/// 64 floats per key and per value: 512 bytes a position, so a 1 MiB KV-cache limit
/// holds 2048 positions in all.
const SHAPE: Shape = Shape {
    layers: 1,
    kv_heads: 1,
    head_dim: 64,
    vocab: VOCAB,
    max_context: 4096,
};

/// The token that follows `sequence`: never 0, which is the end-of-sequence token.
fn next_token(sequence: &[u32]) -> u32 {
    let mixed = sequence.iter().enumerate().fold(7u64, |acc, (i, &t)| {
        acc.wrapping_mul(31) ^ (u64::from(t) + i as u64)
    });
    1 + (mixed % (VOCAB as u64 - 1)) as u32
}

/// What a request should generate, token by token, computed without the scheduler.
fn reference(prompt: &[u32], max_tokens: usize) -> String {
    let mut sequence = prompt.to_vec();
    for _ in 0..max_tokens {
        sequence.push(next_token(&sequence));
    }
    words(&sequence[prompt.len()..])
}

fn words(tokens: &[u32]) -> String {
    tokens
        .iter()
        .map(|t| format!("w{t}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A call the scheduler made, as the tests read them back.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    /// Prompts prefilled together on an empty cache: their first tokens and lengths.
    Prefill(Vec<(u32, usize)>),
    /// A prompt's positions `from..to` prefilled after its first `from`.
    PrefillAfter {
        first: u32,
        from: usize,
        to: usize,
    },
    Decode {
        sequences: usize,
    },
    Relayout(Layout),
}

/// One position of the fake's cache: the token there and the position it says it is.
type Cell = Option<(f32, f32)>;

struct Fake {
    calls: Arc<Mutex<Vec<Call>>>,
    layout: Option<Layout>,
    /// rows × capacity cells.
    buffer: Vec<Cell>,
}

fn logits_for(sequence: &[u32]) -> Vec<f32> {
    let mut logits = vec![0.0; VOCAB];
    logits[next_token(sequence) as usize] = 10.0;
    logits
}

fn cache_of(tokens: &[u32]) -> PrefillCache {
    let d = SHAPE.head_dim;
    let keys = tokens
        .iter()
        .flat_map(|&t| std::iter::repeat_n(t as f32, d))
        .collect();
    let values = (0..tokens.len())
        .flat_map(|p| std::iter::repeat_n(p as f32, d))
        .collect();
    vec![[keys, values]]
}

/// The tokens a cache of `len` positions holds, checking each position's own record.
fn tokens_of(cache: &PrefillCache, len: usize) -> Result<Vec<u32>, ModelError> {
    let d = SHAPE.head_dim;
    let [keys, values] = &cache[0];
    if keys.len() != len * d || values.len() != len * d {
        return Err(ModelError(format!(
            "a cache of {} floats for {len} positions",
            keys.len()
        )));
    }
    (0..len)
        .map(|p| {
            if values[p * d] as usize == p {
                Ok(keys[p * d] as u32)
            } else {
                Err(ModelError(format!(
                    "position {p} holds position {}",
                    values[p * d]
                )))
            }
        })
        .collect()
}

impl Fake {
    fn log(&self, call: Call) {
        self.calls.lock().unwrap().push(call);
    }

    fn capacity(&self) -> Result<usize, ModelError> {
        self.layout
            .map(|layout| layout.capacity)
            .ok_or_else(|| ModelError("no buffer".to_owned()))
    }

    /// Row `row`'s first `len` tokens, each checked to be where it says it is.
    fn row(&self, row: usize, len: usize) -> Result<Vec<u32>, ModelError> {
        let capacity = self.capacity()?;
        (0..len)
            .map(|p| match self.buffer[row * capacity + p] {
                Some((token, position)) if position as usize == p => Ok(token as u32),
                other => Err(ModelError(format!(
                    "row {row} position {p} holds {other:?}"
                ))),
            })
            .collect()
    }
}

impl Model for Fake {
    fn shape(&self) -> Shape {
        SHAPE
    }

    fn prefill(&mut self, prompts: &[&[u32]]) -> Result<Vec<(Vec<f32>, PrefillCache)>, ModelError> {
        self.log(Call::Prefill(
            prompts.iter().map(|p| (p[0], p.len())).collect(),
        ));
        Ok(prompts
            .iter()
            .map(|prompt| (logits_for(prompt), cache_of(prompt)))
            .collect())
    }

    fn prefill_after(
        &mut self,
        prefix: &PrefillCache,
        prefix_len: usize,
        suffix: &[u32],
    ) -> Result<(Vec<f32>, PrefillCache), ModelError> {
        let mut sequence = tokens_of(prefix, prefix_len)?;
        self.log(Call::PrefillAfter {
            first: sequence[0],
            from: prefix_len,
            to: prefix_len + suffix.len(),
        });
        sequence.extend_from_slice(suffix);
        Ok((logits_for(&sequence), cache_of(&sequence)))
    }

    fn place(&mut self, row: usize, cache: &PrefillCache, len: usize) -> Result<(), ModelError> {
        let capacity = self.capacity()?;
        let tokens = tokens_of(cache, cache[0][0].len() / SHAPE.head_dim)?;
        for (p, &token) in tokens.iter().take(len).enumerate() {
            self.buffer[row * capacity + p] = Some((token as f32, p as f32));
        }
        Ok(())
    }

    fn relayout(
        &mut self,
        layout: Layout,
        moves: &[(usize, usize, usize)],
    ) -> Result<(), ModelError> {
        self.log(Call::Relayout(layout));
        let mut buffer = vec![None; layout.rows * layout.capacity];
        if let Some(old) = self.layout {
            for &(from, to, len) in moves {
                if len > layout.capacity || to >= layout.rows {
                    return Err(ModelError(format!(
                        "row {to} of {len} does not fit {layout:?}"
                    )));
                }
                buffer[to * layout.capacity..to * layout.capacity + len]
                    .copy_from_slice(&self.buffer[from * old.capacity..from * old.capacity + len]);
            }
        }
        self.layout = Some(layout);
        self.buffer = buffer;
        Ok(())
    }

    fn decode(&mut self, steps: &[Step]) -> Result<Vec<Vec<f32>>, ModelError> {
        self.log(Call::Decode {
            sequences: steps.len(),
        });
        let capacity = self.capacity()?;
        let mut logits = Vec::new();
        for step in steps {
            if step.position >= capacity {
                return Err(ModelError(format!(
                    "position {} past {capacity}",
                    step.position
                )));
            }
            let mut sequence = self.row(step.row, step.position)?;
            sequence.push(step.token);
            self.buffer[step.row * capacity + step.position] =
                Some((step.token as f32, step.position as f32));
            logits.push(logits_for(&sequence));
        }
        Ok(logits)
    }
}

/// A word-level tokenizer over `w1` … `w31`, with `<eos>` as token 0.
fn text_model() -> TextModel {
    let vocab: serde_json::Map<String, serde_json::Value> = std::iter::once("<eos>".to_owned())
        .chain((1..VOCAB).map(|t| format!("w{t}")))
        .enumerate()
        .map(|(id, word)| (word, id.into()))
        .collect();
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<eos>"}
    });
    let tokenizer: Tokenizer = json.to_string().parse().unwrap();
    TextModel::new(tokenizer, None, &["<eos>".to_owned()])
}

/// A scheduler over the fake, driven by hand.
struct Harness {
    scheduler: Scheduler<Fake>,
    jobs: mpsc::UnboundedSender<Job>,
    pending: Arc<AtomicUsize>,
    calls: Arc<Mutex<Vec<Call>>>,
}

/// A submitted request's events as they arrive.
struct Request {
    events: mpsc::UnboundedReceiver<Event>,
    cancel: CancellationToken,
    text: Vec<String>,
    end: Option<GenerateEnd>,
    error: Option<ErrorBody>,
}

impl Request {
    /// Reads what has arrived; answers whether the request is over.
    fn poll(&mut self) -> bool {
        while let Ok(event) = self.events.try_recv() {
            match event {
                Event::Chunk(chunk) => self.text[chunk.index as usize].push_str(&chunk.text),
                Event::End(end) => self.end = Some(end),
                Event::Failed(error) => self.error = Some(error),
            }
        }
        self.end.is_some() || self.error.is_some()
    }

    fn started(&mut self) -> bool {
        self.poll();
        self.text.iter().any(|text| !text.is_empty())
    }
}

impl Harness {
    fn new(configure: impl FnOnce(&mut Config)) -> Harness {
        let mut config = Config {
            max_batch: 8,
            prefill_budget: 64,
            prefix_cache_mb: 1,
            kv_cache_mb: Some(64),
            ..Config::default()
        };
        configure(&mut config);
        let calls = Arc::new(Mutex::new(Vec::new()));
        let fake = Fake {
            calls: calls.clone(),
            layout: None,
            buffer: Vec::new(),
        };
        let metrics = Metrics::register(&Registry::new()).unwrap().model("fake");
        let (jobs, inbox) = mpsc::unbounded_channel();
        let pending = Arc::new(AtomicUsize::new(0));
        let scheduler = Scheduler::new(
            fake,
            Arc::new(text_model()),
            metrics,
            &config,
            inbox,
            pending.clone(),
        );
        Harness {
            scheduler,
            jobs,
            pending,
            calls,
        }
    }

    /// Queues a greedy request, as the model's handle would.
    fn submit(&self, prompt: Vec<u32>, max_tokens: usize, n: usize) -> Request {
        let (events, receiver) = mpsc::unbounded_channel();
        let cancel = CancellationToken::new();
        self.pending.fetch_add(1, Ordering::AcqRel);
        let job = Job {
            prompt,
            n,
            max_tokens,
            settings: Settings {
                temperature: 0.0,
                top_p: 1.0,
                top_k: 0,
                min_p: 0.0,
                repetition_penalty: 1.0,
                presence_penalty: 0.0,
                frequency_penalty: 0.0,
            },
            seed: 0,
            stop: Vec::new(),
            logprobs: false,
            top_logprobs: 0,
            ignore_eos: false,
            events,
            cancel: cancel.clone(),
            enqueued: Instant::now(),
            span: tracing::Span::none(),
        };
        self.jobs.send(job).unwrap();
        Request {
            events: receiver,
            cancel,
            text: vec![String::new(); n],
            end: None,
            error: None,
        }
    }

    /// Runs turns until every request is over (at most `limit` turns).
    fn finish(&mut self, requests: &mut [&mut Request], limit: usize) {
        for _ in 0..limit {
            if requests.iter_mut().all(|request| request.poll()) {
                return;
            }
            self.scheduler.turn();
        }
        panic!("not over after {limit} turns");
    }

    /// The calls since the last look.
    fn calls(&self) -> Vec<Call> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }

    fn prefills(&self) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|call| matches!(call, Call::Prefill(_) | Call::PrefillAfter { .. }))
            .collect()
    }
}

/// A prompt of `len` tokens beginning with `first` (tokens 1 to 31, never the end).
fn prompt(first: u32, len: usize) -> Vec<u32> {
    (0..len as u32).map(|i| 1 + (first + i * 7) % 31).collect()
}

fn assert_generated(request: &Request, prompt: &[u32], max_tokens: usize) {
    assert!(request.error.is_none(), "failed: {:?}", request.error);
    for text in &request.text {
        assert_eq!(text, &reference(prompt, max_tokens));
    }
    let end = request.end.as_ref().expect("ended");
    assert!(
        end.finish_reasons
            .iter()
            .all(|r| *r == FinishReason::Length)
    );
    assert_eq!(end.usage.prompt_tokens as usize, prompt.len());
}

#[test]
fn a_burst_starts_together_and_each_gets_its_own_text() {
    let mut h = Harness::new(|_| {});
    let prompts: Vec<Vec<u32>> = (1..=3).map(|first| prompt(first, 12)).collect();
    let mut requests: Vec<Request> = prompts.iter().map(|p| h.submit(p.clone(), 20, 1)).collect();
    h.scheduler.turn();
    assert_eq!(
        h.prefills(),
        [Call::Prefill(prompts.iter().map(|p| (p[0], 12)).collect())],
        "prefilled in one call"
    );
    h.finish(&mut requests.iter_mut().collect::<Vec<_>>(), 100);
    for (request, prompt) in requests.iter().zip(&prompts) {
        assert_generated(request, prompt, 20);
    }
    assert_eq!(h.pending.load(Ordering::Acquire), 0);
}

#[test]
fn admission_waits_for_kv_room_in_queue_order() {
    // 1 MiB holds 2048 positions: two rows of 1024, not four.
    let mut h = Harness::new(|config| config.kv_cache_mb = Some(1));
    let (a, b, c, d) = (prompt(1, 10), prompt(2, 10), prompt(3, 10), prompt(4, 10));
    let mut ra = h.submit(a.clone(), 20, 1);
    let mut rb = h.submit(b.clone(), 600, 1);
    let mut rc = h.submit(c.clone(), 600, 1);
    // Small, but it does not overtake the request before it.
    let mut rd = h.submit(d.clone(), 5, 1);
    h.scheduler.turn();
    assert!(ra.started() && rb.started());
    assert!(!rc.started() && !rd.started());
    h.finish(&mut [&mut ra], 30);
    h.scheduler.turn();
    assert!(rc.started(), "C starts once A's room is free");
    assert!(!rd.started(), "D waits for room behind C");
    h.finish(&mut [&mut rb, &mut rc, &mut rd], 2000);
    let starts: Vec<u32> = h
        .prefills()
        .into_iter()
        .flat_map(|call| match call {
            Call::Prefill(prompts) => prompts.into_iter().map(|(first, _)| first),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(starts, [a[0], b[0], c[0], d[0]]);
    assert_generated(&ra, &a, 20);
    assert_generated(&rb, &b, 600);
    assert_generated(&rc, &c, 600);
    assert_generated(&rd, &d, 5);
    assert_eq!(h.pending.load(Ordering::Acquire), 0);
}

#[test]
fn a_request_that_can_never_fit_is_refused_naming_the_setting() {
    let mut h = Harness::new(|config| config.kv_cache_mb = Some(1));
    // 10 + 3000 positions need a 4096-position row: 2 MiB.
    let mut too_big = h.submit(prompt(1, 10), 3000, 1);
    let mut fine = h.submit(prompt(2, 10), 10, 1);
    h.finish(&mut [&mut too_big, &mut fine], 20);
    let error = too_big.error.expect("refused");
    assert_eq!(error.code, ErrorCode::ContextLengthExceeded);
    assert!(
        error.message.contains("inference.kv_cache_mb"),
        "{}",
        error.message
    );
    assert_generated(&fine, &prompt(2, 10), 10);
    assert_eq!(h.pending.load(Ordering::Acquire), 0);
}

#[test]
fn a_long_prompt_is_prefilled_a_budget_per_turn_while_streams_run() {
    let mut h = Harness::new(|_| {});
    let short = prompt(1, 8);
    let mut running = h.submit(short.clone(), 40, 1);
    h.scheduler.turn();
    let long = prompt(2, 200);
    let mut arriving = h.submit(long.clone(), 10, 1);
    h.calls();
    let mut turns = 0;
    while !arriving.started() {
        running.poll();
        let before = running.text[0].split(' ').count();
        h.scheduler.turn();
        running.poll();
        assert_eq!(
            running.text[0].split(' ').count(),
            before + 1,
            "the running stream gets a token every turn"
        );
        turns += 1;
    }
    // 64 + 64 + 64 + 8 tokens.
    assert_eq!(turns, 4);
    let chunks: Vec<(usize, usize)> = h
        .prefills()
        .into_iter()
        .map(|call| match call {
            Call::Prefill(prompts) => (0, prompts[0].1),
            Call::PrefillAfter { from, to, .. } => (from, to),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(chunks, [(0, 64), (64, 128), (128, 192), (192, 200)]);
    h.finish(&mut [&mut running, &mut arriving], 100);
    assert_generated(&running, &short, 40);
    assert_generated(&arriving, &long, 10);
}

#[test]
fn a_request_cancelled_mid_prefill_frees_its_place() {
    let mut h = Harness::new(|_| {});
    let mut running = h.submit(prompt(1, 8), 30, 1);
    h.scheduler.turn();
    let mut cancelled = h.submit(prompt(2, 200), 10, 1);
    let next = prompt(3, 20);
    let mut after = h.submit(next.clone(), 10, 1);
    h.scheduler.turn();
    h.calls();
    cancelled.cancel.cancel();
    h.scheduler.turn();
    assert_eq!(
        h.prefills(),
        [Call::Prefill(vec![(next[0], 20)])],
        "the next request starts afresh, not after the cancelled one's chunk"
    );
    h.finish(&mut [&mut running, &mut after], 100);
    assert!(!cancelled.poll(), "a cancelled request hears nothing more");
    assert_generated(&after, &next, 10);
    assert_eq!(h.pending.load(Ordering::Acquire), 0);
}

#[test]
fn a_prompt_found_in_the_prefix_cache_prefills_only_the_rest() {
    let mut h = Harness::new(|_| {});
    let first = prompt(1, 40);
    let mut one = h.submit(first.clone(), 5, 1);
    h.finish(&mut [&mut one], 20);
    h.calls();
    // The same 32 tokens (two blocks), then something else.
    let mut second = first[..35].to_vec();
    second.extend([9, 9, 9, 9, 9]);
    let mut two = h.submit(second.clone(), 5, 1);
    h.finish(&mut [&mut two], 20);
    assert_eq!(
        h.prefills(),
        [Call::PrefillAfter {
            first: first[0],
            from: 32,
            to: 40
        }]
    );
    assert_generated(&two, &second, 5);
    // The same prompt again: all but its last token is cached, and that one runs in a
    // decode step, so there is no prefill at all.
    let mut again = h.submit(first.clone(), 5, 1);
    h.finish(&mut [&mut again], 20);
    assert_eq!(h.prefills(), []);
    assert_generated(&again, &first, 5);
    assert_eq!(one.text, again.text);
}

#[test]
fn a_sequence_that_finishes_leaves_the_others_running_and_the_buffer_shrinks() {
    let mut h = Harness::new(|_| {});
    let prompts: Vec<Vec<u32>> = (1..=4).map(|first| prompt(first, 10)).collect();
    let mut short: Vec<Request> = prompts[..3]
        .iter()
        .map(|p| h.submit(p.clone(), 3, 1))
        .collect();
    let mut long = h.submit(prompts[3].clone(), 50, 1);
    h.finish(&mut short.iter_mut().collect::<Vec<_>>(), 10);
    assert!(!long.poll(), "the long one is still running");
    h.finish(&mut [&mut long], 100);
    for (request, prompt) in short.iter().zip(&prompts) {
        assert_generated(request, prompt, 3);
    }
    assert_generated(&long, &prompts[3], 50);
    let layouts: Vec<Layout> = h
        .calls()
        .into_iter()
        .filter_map(|call| match call {
            Call::Relayout(layout) => Some(layout),
            _ => None,
        })
        .collect();
    assert_eq!(
        layouts,
        [
            Layout {
                rows: 4,
                capacity: 256
            },
            Layout {
                rows: 1,
                capacity: 256
            }
        ],
        "the last one moved to a one-row buffer when the others finished"
    );
}

#[test]
fn several_choices_of_one_request_decode_side_by_side() {
    let mut h = Harness::new(|_| {});
    let p = prompt(5, 12);
    let mut request = h.submit(p.clone(), 8, 3);
    h.finish(&mut [&mut request], 20);
    assert_generated(&request, &p, 8);
    assert_eq!(
        request.end.as_ref().map(|end| end.usage.completion_tokens),
        Some(24)
    );
}
