//! Generation end to end over a real nats-server with the real SmolLM2 package:
//! determinism, seeds, stop strings, limits, n, logprobs, cancellation, overload,
//! context overflow, concurrent streams equal to lone ones, and prefix-cache hits equal
//! to cold prefills.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails by panicking"
)]

mod support;

use std::time::{Duration, Instant};

use slough_bus::BusError;
use slough_inference::Config;
use slough_protocol::{
    ErrorCode,
    inference::{ChatMessage, FinishReason, PromptInput, Role},
};
use support::{CHAT, Generated, Inference, chat};

const GENERATED: &str = "slough_inference_generated_tokens_total{model=\"smollm2\"}";
const RUNNING: &str = "slough_inference_running_sequences{model=\"smollm2\"}";

fn code(err: &BusError) -> Option<ErrorCode> {
    match err {
        BusError::Service(body) => Some(body.code),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greedy_seeded_stops_limits_n_and_logprobs() {
    let inference = Inference::start(Config::default()).await;

    let question = chat("What is the capital of France?");
    let first = inference.generate(&question).await.unwrap();
    eprintln!("greedy: {:?}", first.text());
    assert!(first.text().contains("Paris"), "{:?}", first.text());
    assert_eq!(first.finish, [FinishReason::Stop]);
    let usage = first.end.as_ref().unwrap().usage;
    assert!(
        usage.prompt_tokens > 10 && usage.completion_tokens > 3,
        "{usage:?}"
    );
    assert_eq!(
        usage.total_tokens,
        usage.prompt_tokens + usage.completion_tokens
    );
    let again = inference.generate(&question).await.unwrap();
    assert_eq!(again.text(), first.text(), "greedy is deterministic");

    let mut seeded = chat("Write a short poem about the sea.");
    seeded.sampling.temperature = Some(0.9);
    seeded.sampling.seed = Some(42);
    let a = inference.generate(&seeded).await.unwrap();
    let b = inference.generate(&seeded).await.unwrap();
    assert_eq!(a.text(), b.text(), "the same seed gives the same text");
    seeded.sampling.seed = Some(43);
    let c = inference.generate(&seeded).await.unwrap();
    assert_ne!(a.text(), c.text(), "another seed gives another text");

    let mut stopped = question.clone();
    stopped.stop = vec!["Paris".to_owned()];
    let cut = inference.generate(&stopped).await.unwrap();
    assert_eq!(cut.finish, [FinishReason::Stop]);
    assert!(!cut.text().contains("Paris"), "{:?}", cut.text());
    assert!(first.text().starts_with(cut.text()), "{:?}", cut.text());

    let mut short = question.clone();
    short.max_tokens = Some(3);
    let three = inference.generate(&short).await.unwrap();
    assert_eq!(three.finish, [FinishReason::Length]);
    assert_eq!(three.end.unwrap().usage.completion_tokens, 3);

    let mut two = seeded.clone();
    two.n = 2;
    let both = inference.generate(&two).await.unwrap();
    assert_eq!(both.texts.len(), 2);
    assert_eq!(both.finish.len(), 2);
    assert_ne!(both.texts[0], both.texts[1], "two choices differ");

    let mut with_logprobs = question.clone();
    with_logprobs.logprobs = true;
    with_logprobs.top_logprobs = 3;
    let scored = inference.generate(&with_logprobs).await.unwrap();
    let entries: Vec<_> = scored
        .chunks
        .iter()
        .flat_map(|c| c.logprobs.clone())
        .collect();
    assert!(!entries.is_empty());
    for entry in &entries {
        assert!(entry.logprob <= 0.0);
        assert_eq!(entry.top_logprobs.len(), 3);
        assert_eq!(
            entry.top_logprobs[0].token, entry.token,
            "greedy picks the top token"
        );
        assert!(entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob);
    }
    let bytes: Vec<u8> = entries.iter().flat_map(|e| e.bytes.clone()).collect();
    assert_eq!(
        String::from_utf8(bytes).unwrap(),
        scored.text(),
        "the tokens' bytes spell the text"
    );

    // The admin server's metrics saw all of it (the gauges settle a step after the
    // last frame, so wait for them).
    while inference.metric(RUNNING).await != 0.0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(inference.metric(GENERATED).await > 20.0);
    assert!(
        inference
            .metric("slough_inference_time_to_first_token_seconds_count{model=\"smollm2\"}")
            .await
            >= 9.0
    );
    assert!(
        inference
            .metric("slough_inference_inter_token_latency_seconds_count{model=\"smollm2\"}")
            .await
            > 10.0
    );
    inference.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_frees_the_slot_and_a_full_queue_refuses() {
    let config = Config {
        max_batch: 1,
        max_queue: 1,
        ..Config::default()
    };
    let inference = Inference::start(config).await;
    let mut long = chat("Write a long story about a dragon.");
    long.max_tokens = Some(400);

    let mut running = inference.open(&long).await.unwrap();
    let _ = running.next().await.unwrap().unwrap();
    let queued = inference.open(&long).await.unwrap();
    let refused = inference
        .open(&long)
        .await
        .err()
        .expect("the queue is full");
    assert_eq!(code(&refused), Some(ErrorCode::Overloaded), "{refused}");
    let BusError::Service(body) = &refused else {
        unreachable!()
    };
    assert!(body.retry_after_ms.is_some());

    // Cancel both; the slot and the queue place free up at the next step: counted in
    // tokens, the running sequence makes at most the step in flight after the cancel.
    queued.cancel().await.unwrap();
    let before = inference.metric(GENERATED).await;
    let cancelled_at = Instant::now();
    running.cancel().await.unwrap();
    while inference.metric(RUNNING).await != 0.0 {
        assert!(
            cancelled_at.elapsed() < Duration::from_secs(5),
            "never freed"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let after_cancel = inference.metric(GENERATED).await - before;
    eprintln!("tokens generated after the cancel was sent: {after_cancel}");
    assert!(
        after_cancel <= 2.0,
        "{after_cancel} tokens after the cancel"
    );
    let mut quick = chat("Hi");
    quick.max_tokens = Some(2);
    loop {
        match inference.generate(&quick).await {
            Ok(done) => {
                assert_eq!(done.finish, [FinishReason::Length]);
                break;
            }
            Err(err) if code(&err) == Some(ErrorCode::Overloaded) => {
                assert!(
                    cancelled_at.elapsed() < Duration::from_secs(2),
                    "the slot was not freed"
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Err(err) => panic!("{err}"),
        }
    }
    eprintln!(
        "slot free and the next request done {:?} after cancelling",
        cancelled_at.elapsed()
    );
    inference.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_over_the_context_is_refused_naming_both_numbers() {
    let config = Config {
        max_context: 64,
        ..Config::default()
    };
    let inference = Inference::start(config).await;
    let mut long = chat(&"Tell me about the weather. ".repeat(20));
    long.max_tokens = Some(10);
    let err = inference.open(&long).await.err().expect("too long");
    assert_eq!(code(&err), Some(ErrorCode::ContextLengthExceeded), "{err}");
    assert!(err.to_string().contains("64 tokens"), "{err}");

    let mut fits = chat("Hi");
    fits.max_tokens = Some(500);
    let err = inference
        .open(&fits)
        .await
        .err()
        .expect("max_tokens too large");
    assert!(err.to_string().contains("500"), "{err}");

    let mut bad = chat("Hi");
    bad.sampling.temperature = Some(5.0);
    let err = inference
        .open(&bad)
        .await
        .err()
        .expect("temperature out of range");
    assert_eq!(code(&err), Some(ErrorCode::InvalidRequest));
    assert!(err.to_string().contains("temperature"), "{err}");
    bad.model = "nope".to_owned();
    let err = inference.open(&bad).await.err().expect("unknown model");
    assert_eq!(code(&err), Some(ErrorCode::ModelNotFound));
    inference.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_greedy_streams_equal_lone_ones() {
    let inference = Inference::start(Config::default()).await;
    let prompts = [
        "What is the capital of France?",
        "Name three colors.",
        "What is 2 + 2?",
        "Say hello in Spanish.",
        "What is the largest planet?",
        "Give me a fruit.",
        "What do bees make?",
        "Which animal barks?",
    ];
    let request = |prompt: &str| {
        let mut request = chat(prompt);
        request.logprobs = true;
        request.top_logprobs = 2;
        request
    };
    let mut alone = Vec::new();
    for prompt in prompts {
        alone.push(inference.generate(&request(prompt)).await.unwrap());
    }
    let together = futures::future::join_all(prompts.iter().map(|prompt| {
        let request = request(prompt);
        let inference = &inference;
        async move { inference.generate(&request).await }
    }))
    .await;
    for ((prompt, lone), joint) in prompts.iter().zip(&alone).zip(together) {
        // Batched and lone steps may round differently; only a near-tie may flip a token.
        same_or_near_tie(lone, &joint.unwrap(), &format!("{prompt:?} batched"));
    }
    inference.stop().await;
}

/// Greedy answers to prompts sharing a long system prompt: the same with the prefix
/// cache (every prompt after the first finds its leading blocks cached, a repeated one
/// all but its last token) as without it, up to a near-tie flipped by rounding; the hits
/// and saved tokens are counted, and the cache's bytes stay within its budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_cache_hits_answer_like_cold_prefills() {
    let system = "You are the assistant of a lighthouse museum on a rocky coast. Answer visitors' \
        questions about the lighthouse, its history, its keepers, the lamp and the lens, the \
        ships it guided and the storms it weathered. Keep answers short and friendly, use plain \
        words, and when you do not know something, say so and suggest asking the staff at the \
        front desk. Never invent dates or names. The museum opens at ten and closes at five, \
        every day except Mondays; the tower can be climbed on Saturdays; tickets cost five \
        pounds for adults and two for children; dogs on a lead are welcome in the gardens but \
        not in the tower. "
        .repeat(2);
    let questions = [
        "When can I climb the tower?",
        "How much is a ticket for a child?",
        "Can I bring my dog?",
        "What time does the museum close?",
    ];
    let request = |question: &str| {
        let mut request = chat(question);
        request.input = PromptInput::Messages(vec![
            ChatMessage::new(Role::System, system.as_str()),
            ChatMessage::new(Role::User, question),
        ]);
        request.max_tokens = Some(24);
        request.logprobs = true;
        request.top_logprobs = 2;
        request
    };

    let cold = Inference::start(Config {
        prefix_cache_mb: 0,
        ..Config::default()
    })
    .await;
    let mut reference = Vec::new();
    for question in questions {
        reference.push(cold.generate(&request(question)).await.unwrap());
    }
    let series = |name: &str| format!("slough_inference_{name}{{model=\"{CHAT}\"}}");
    assert_eq!(cold.metric(&series("prefix_cache_hits_total")).await, 0.0);
    cold.stop().await;

    let cached = Inference::start(Config::default()).await;
    let mut answers = Vec::new();
    let mut first_token = Vec::new();
    for question in questions.iter().chain(&questions[..1]) {
        let started = Instant::now();
        let mut one = request(question);
        one.max_tokens = Some(1);
        cached.generate(&one).await.unwrap();
        first_token.push(started.elapsed());
        answers.push(cached.generate(&request(question)).await.unwrap());
    }
    let prompt_tokens = answers[0].end.as_ref().unwrap().usage.prompt_tokens as f64;
    eprintln!(
        "prompt of {prompt_tokens} tokens: one-token answer cold {:?}, then with the system prompt cached {:?}",
        first_token[0],
        &first_token[1..]
    );
    let hits = cached.metric(&series("prefix_cache_hits_total")).await;
    let saved = cached
        .metric(&series("prefix_cache_saved_tokens_total"))
        .await;
    let bytes = cached.metric(&series("prefix_cache_bytes")).await;
    eprintln!("prefix cache: {hits} hits, {saved} tokens saved, {bytes} bytes");
    // Every request but the very first finds at least the system prompt's blocks, and
    // each full answer finds all but the last token of the prompt its one-token request
    // just ran (that token runs in a decode step, not a prefill).
    assert_eq!(hits, 9.0);
    let whole: f64 = answers
        .iter()
        .map(|a| f64::from(a.end.as_ref().unwrap().usage.prompt_tokens) - 1.0)
        .sum();
    assert!(saved >= whole + 4.0 * 256.0, "{saved} < {whole} + 4 × 256");
    assert!(bytes > 0.0 && bytes <= 256.0 * 1024.0 * 1024.0, "{bytes}");

    for ((question, cold), warm) in questions
        .iter()
        .chain(&questions[..1])
        .zip(reference.iter().chain(&reference[..1]))
        .zip(&answers)
    {
        same_or_near_tie(cold, warm, &format!("{question:?} with a cached prefix"));
    }
    cached.stop().await;
}

/// A long prompt arriving while a stream runs, with chunked prefill (chunks of 64) and
/// in one piece: the running stream keeps getting tokens while the long prompt is
/// prefilled in chunks (and hardly any without chunks), and the long prompt's greedy
/// answer is the same either way (up to a near-tie) and the same as when it runs alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_prefill_keeps_streams_going_and_answers_like_one_piece() {
    let long_text =
        "The lighthouse keeper climbed the spiral stairs each evening, trimmed the wick, \
        polished the great lens and wrote the weather in the log. "
            .repeat(20);
    let mut long = chat(&format!(
        "{long_text}\nWhat did the keeper do each evening?"
    ));
    long.max_tokens = Some(16);
    long.logprobs = true;
    long.top_logprobs = 2;
    let mut background = chat("Count from one to one hundred in words.");
    background.max_tokens = Some(400);
    background.ignore_eos = true;

    let mut answers = Vec::new();
    for (budget, label) in [
        (64, "chunked (64 tokens a turn)"),
        (100_000, "in one piece"),
    ] {
        let inference = Inference::start(Config {
            prefill_budget: budget,
            prefix_cache_mb: 0,
            ..Config::default()
        })
        .await;
        let alone = inference.generate(&long).await.unwrap();
        let prompt_tokens = alone.end.as_ref().unwrap().usage.prompt_tokens;

        // The background stream runs; its token times are recorded.
        let mut stream = inference.open(&background).await.unwrap();
        for _ in 0..3 {
            stream.next().await.unwrap().unwrap();
        }
        let times = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let recorder = {
            let times = times.clone();
            tokio::spawn(async move {
                while let Some(Ok(_)) = stream.next().await {
                    times.lock().unwrap().push(Instant::now());
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        let sent = Instant::now();
        let mut opened = inference.open(&long).await.unwrap();
        let mut first_token = None;
        let mut arrived = Generated::default();
        while let Some(item) = opened.next().await {
            match item.unwrap() {
                slough_bus::StreamItem::Chunk(chunk) => {
                    first_token.get_or_insert_with(Instant::now);
                    arrived.texts.resize(1, String::new());
                    arrived.texts[0].push_str(&chunk.text);
                    arrived.chunks.push(chunk);
                }
                slough_bus::StreamItem::End(end) => arrived.end = Some(end),
            }
        }
        let first_token = first_token.unwrap();
        let during: Vec<Instant> = times
            .lock()
            .unwrap()
            .iter()
            .copied()
            .filter(|t| *t > sent && *t < first_token)
            .collect();
        let longest_gap = during
            .windows(2)
            .map(|pair| pair[1] - pair[0])
            .chain(during.first().map(|t| *t - sent))
            .chain(during.last().map(|t| first_token - *t))
            .max()
            .unwrap_or(first_token - sent);
        eprintln!(
            "{label}: a {prompt_tokens}-token prompt's prefill took {:?}; meanwhile the running stream got {} tokens, its longest wait {:?}",
            first_token - sent,
            during.len(),
            longest_gap
        );
        if budget == 64 {
            assert!(
                during.len() >= 4,
                "the running stream stalled during the chunked prefill: {} tokens",
                during.len()
            );
        } else {
            assert!(during.len() <= 2, "{} tokens", during.len());
        }
        same_or_near_tie(
            &alone,
            &arrived,
            &format!("{label}: joined the batch vs alone"),
        );
        answers.push(arrived);
        recorder.abort();
        inference.stop().await;
    }
    same_or_near_tie(&answers[1], &answers[0], "chunked vs one piece");
}

/// Asserts that `other` generated what `reference` did, or differs first where the
/// reference's top two tokens were a near-tie (which rounding in another batch shape
/// or prefill order may flip). Both need `logprobs` with `top_logprobs` ≥ 2.
fn same_or_near_tie(reference: &Generated, other: &Generated, what: &str) {
    if reference.text() == other.text() {
        return;
    }
    let steps = |answer: &Generated| -> Vec<_> {
        answer
            .chunks
            .iter()
            .flat_map(|c| c.logprobs.clone())
            .collect()
    };
    let (a, b) = (steps(reference), steps(other));
    let at = a
        .iter()
        .zip(&b)
        .position(|(x, y)| x.token != y.token)
        .expect("texts differ, so some token does");
    let top = &a[at].top_logprobs;
    let gap = top[0].logprob - top[1].logprob;
    eprintln!("{what}: differs at token {at}, logit gap there {gap:.2e}");
    assert!(
        gap < 1e-2,
        "{what}: not a near-tie (gap {gap}): {:?} vs {:?}",
        reference.text(),
        other.text()
    );
}

/// A KV-cache limit of 24 MiB (room for two 256-position rows of SmolLM2): under a
/// burst, at most two sequences run at once, the KV buffer never passes the limit (its
/// gauge, read all along), requests beyond the queue are refused with `overloaded` and
/// a retry hint, the rest all finish; a request that could never fit is refused naming
/// the setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kv_cache_limit_holds_under_a_burst() {
    let inference = Inference::start(Config {
        kv_cache_mb: Some(24),
        max_batch: 4,
        max_queue: 2,
        prefix_cache_mb: 0,
        ..Config::default()
    })
    .await;
    let limit = 24.0 * 1024.0 * 1024.0;
    let series = |name: &str| format!("slough_inference_{name}{{model=\"{CHAT}\"}}");

    let mut too_long = chat("Tell me everything.");
    too_long.max_tokens = Some(600);
    let err = inference.open(&too_long).await.err().expect("never fits");
    assert_eq!(code(&err), Some(ErrorCode::ContextLengthExceeded), "{err}");
    assert!(err.to_string().contains("kv_cache_mb"), "{err}");

    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let done = done.clone();
        let admin = inference.admin.clone();
        let (bytes, running) = (series("kv_cache_bytes"), series("running_sequences"));
        tokio::spawn(async move {
            let (mut most_bytes, mut most_running) = (0.0f64, 0.0f64);
            while !done.load(std::sync::atomic::Ordering::Acquire) {
                let value = |name: &str| {
                    let (admin, name) = (admin.clone(), name.to_owned());
                    async move {
                        slough_testkit::scrape_metric(&admin, &name)
                            .await
                            .unwrap_or(0.0)
                    }
                };
                most_bytes = most_bytes.max(value(&bytes).await);
                most_running = most_running.max(value(&running).await);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (most_bytes, most_running)
        })
    };
    let burst = futures::future::join_all((0..10).map(|i| {
        let mut request = chat(&format!("Say something about the number {i}."));
        request.max_tokens = Some(32);
        let inference = &inference;
        async move { inference.generate(&request).await }
    }))
    .await;
    done.store(true, std::sync::atomic::Ordering::Release);
    let (most_bytes, most_running) = watcher.await.unwrap();
    let refused = burst
        .iter()
        .filter(|result| match result {
            Err(BusError::Service(body)) => {
                assert_eq!(body.code, ErrorCode::Overloaded, "{body:?}");
                assert!(body.retry_after_ms.is_some());
                true
            }
            Err(other) => panic!("{other}"),
            Ok(generated) => {
                assert_eq!(generated.finish.len(), 1);
                false
            }
        })
        .count();
    eprintln!(
        "burst of 10: {} finished, {refused} refused; at most {most_running} running, KV buffer at most {most_bytes} of {limit} bytes",
        10 - refused
    );
    assert_eq!(
        refused, 4,
        "4 running or queued slots are beyond max_batch + max_queue"
    );
    assert!(most_bytes > 0.0 && most_bytes <= limit, "{most_bytes}");
    assert!(most_running <= 2.0, "{most_running}");
    assert_eq!(
        inference.metric(&series("kv_cache_limit_bytes")).await,
        limit
    );
    inference.stop().await;
}
