//! `slough bench inference`: generation speed through the real NATS path (or, with
//! `--in-process`, straight into the model's scheduler, to show what the bus costs).
//! Single-stream decode, prefill at 32 and 128 prompt tokens, time to first token,
//! aggregate decode at several concurrencies, a shared prompt prefix, and running
//! streams' token gaps while a long prompt arrives; prints a table and writes JSON.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde::Serialize;
use slough_bus::{Bus, StreamItem};
use slough_inference::{
    chat::scheduler::Event,
    models::{Models, Served},
};
use slough_protocol::{
    ServiceKind,
    inference::{self as protocol, GenerateRequest, ModelsRequest, PromptInput},
};
use slough_service::NatsServer;
use tokio_util::sync::CancellationToken;

use slough::{Settings, platform::ServiceHandle, runtime};

/// What to measure.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchOptions {
    /// The chat model's package id.
    #[arg(long, default_value = "smollm2-135m-instruct-q4_1")]
    pub model: String,
    /// Tokens generated per stream in the decode runs.
    #[arg(long, default_value_t = 128)]
    pub tokens: u32,
    /// Concurrent streams for the aggregate runs.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    pub concurrency: Vec<usize>,
    /// Repetitions of each latency run (the median is reported).
    #[arg(long, default_value_t = 5, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub repeats: usize,
    /// Call the model's scheduler directly, without NATS.
    #[arg(long)]
    pub in_process: bool,
    /// Where to write the JSON figures (default bench-inference.json).
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// The figures, as printed and written.
#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub model: String,
    pub path: &'static str,
    pub single_stream_decode_tokens_per_s: f64,
    pub inter_token_latency_ms: f64,
    pub prefill: Vec<PrefillFigure>,
    pub aggregate: Vec<AggregateFigure>,
    pub shared_prefix: SharedPrefixFigure,
    pub long_prompt: LongPromptFigure,
}

/// Streams decoding while a long prompt arrives: the gaps between their tokens from
/// its arrival to its first token. With chunked prefill (a prompt longer than
/// `inference.prefill_budget` is prefilled a budget at a time between decode steps)
/// they keep going; prefilled in one piece, it stalls them for its whole prefill.
#[derive(Debug, Serialize)]
pub struct LongPromptFigure {
    pub streams: usize,
    pub prompt_tokens: usize,
    pub time_to_first_token_ms: f64,
    /// Tokens each running stream made meanwhile (median).
    pub tokens_meanwhile: f64,
    pub median_gap_ms: f64,
    pub worst_gap_ms: f64,
}

/// Prompts that begin with the same 300 tokens (a persona's system prompt, RAG
/// instructions): the first one's time to first token, a later one's (its beginning
/// in the prefix cache), and 16 arriving together once it is cached.
#[derive(Debug, Serialize)]
pub struct SharedPrefixFigure {
    pub prefix_tokens: usize,
    pub suffix_tokens: usize,
    pub cold_time_to_first_token_ms: f64,
    pub warm_time_to_first_token_ms: f64,
    pub streams: usize,
    pub median_time_to_first_token_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct PrefillFigure {
    pub prompt_tokens: usize,
    pub time_to_first_token_ms: f64,
    pub prefill_tokens_per_s: f64,
}

#[derive(Debug, Serialize)]
pub struct AggregateFigure {
    pub streams: usize,
    pub generated_tokens: u64,
    pub seconds: f64,
    pub tokens_per_s: f64,
    /// Per stream: generated tokens over the time from its first token to its last.
    pub per_stream_decode_tokens_per_s: f64,
    /// Time to first token under this load: median and worst stream.
    pub median_time_to_first_token_ms: f64,
    pub max_time_to_first_token_ms: f64,
}

/// One generation's timing.
#[derive(Debug)]
struct Timing {
    first_token: Duration,
    total: Duration,
    tokens: u32,
    /// When each chunk arrived.
    arrivals: Vec<Instant>,
}

/// Where requests go.
enum Target {
    Bus(Box<Bus>),
    Direct(Models),
}

impl Target {
    async fn run(&self, request: GenerateRequest) -> anyhow::Result<Timing> {
        let started = Instant::now();
        let mut arrivals = Vec::new();
        let tokens;
        match self {
            Target::Bus(bus) => (arrivals, tokens) = generate_over_bus(bus, &request).await?,
            Target::Direct(models) => {
                let Served::Chat(model) = models.get(&request.model).await? else {
                    anyhow::bail!("{} is not a chat model", request.model);
                };
                let mut accepted = model.submit(&request)?;
                loop {
                    match accepted.events.recv().await {
                        Some(Event::Chunk(_)) => arrivals.push(Instant::now()),
                        Some(Event::End(end)) => {
                            tokens = end.usage.completion_tokens;
                            break;
                        }
                        Some(Event::Failed(err)) => return Err(err.into()),
                        None => anyhow::bail!("the scheduler dropped the request"),
                    }
                }
            }
        }
        let total = started.elapsed();
        Ok(Timing {
            first_token: arrivals.first().map_or(total, |first| *first - started),
            total,
            tokens,
            arrivals,
        })
    }
}

/// Runs one generation over the bus to its end: when each chunk came and how many
/// tokens it generated.
pub(crate) async fn generate_over_bus(
    bus: &Bus,
    request: &GenerateRequest,
) -> anyhow::Result<(Vec<Instant>, u32)> {
    let mut stream = bus.open(&protocol::GENERATE, request).await?;
    let mut arrivals = Vec::new();
    loop {
        match stream.next().await {
            Some(Ok(StreamItem::Chunk(_))) => arrivals.push(Instant::now()),
            Some(Ok(StreamItem::End(end))) => return Ok((arrivals, end.usage.completion_tokens)),
            Some(Err(err)) => return Err(err.into()),
            None => anyhow::bail!("the stream ended without a final frame"),
        }
    }
}

/// A request for `prompt` token ids that generates exactly `tokens` tokens, greedily.
fn request(model: &str, prompt: Vec<u32>, tokens: u32) -> GenerateRequest {
    let mut request = GenerateRequest::new(model, PromptInput::Tokens(prompt));
    request.max_tokens = Some(tokens);
    request.sampling.temperature = Some(0.0);
    request.ignore_eos = true;
    request
}

/// `count` token ids of ordinary English (ids of a word-level text, cycled).
fn prompt(count: usize, seed: usize) -> Vec<u32> {
    // A fixed spread of ids from the vocabulary's common range; enough for timing.
    (0..count)
        .map(|i| 300 + ((i * 7919 + seed * 104_729) % 20_000) as u32)
        .collect()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// Runs the benchmark against `target`.
async fn measure(target: &Target, options: &BenchOptions) -> anyhow::Result<BenchReport> {
    let model = &options.model;
    // Warm up: the first runs make the KV buffers (once per server) and warm caches.
    let widest = options.concurrency.iter().copied().max().unwrap_or(1);
    futures::future::join_all(
        (0..widest).map(|i| target.run(request(model, prompt(32, 90 + i), 4))),
    )
    .await
    .into_iter()
    .collect::<Result<Vec<_>, _>>()?;

    let mut decode = Vec::new();
    for repeat in 0..options.repeats {
        let timing = target
            .run(request(model, prompt(16, repeat), options.tokens))
            .await?;
        let decode_time = (timing.total - timing.first_token).as_secs_f64();
        decode.push(f64::from(timing.tokens.saturating_sub(1)) / decode_time);
    }
    let decode = median(decode);

    // Prompts of this run only, so that a server's prefix cache, warm from an earlier
    // run, does not shorten the prefill figures.
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.subsec_nanos() as usize);
    let mut prefill = Vec::new();
    for prompt_tokens in [32, 128] {
        let mut ttft = Vec::new();
        for repeat in 0..options.repeats {
            let timing = target
                .run(request(
                    model,
                    // Not the other length's prompt either: the shorter one is the
                    // longer one's beginning.
                    prompt(prompt_tokens, run + 1_000 * prompt_tokens + repeat + 1),
                    1,
                ))
                .await?;
            ttft.push(timing.first_token.as_secs_f64());
        }
        let ttft = median(ttft);
        prefill.push(PrefillFigure {
            prompt_tokens,
            time_to_first_token_ms: ttft * 1e3,
            prefill_tokens_per_s: prompt_tokens as f64 / ttft,
        });
    }

    let mut aggregate = Vec::new();
    for &streams in &options.concurrency {
        let started = Instant::now();
        let runs = futures::future::join_all(
            (0..streams).map(|i| target.run(request(model, prompt(16, 10 + i), options.tokens))),
        )
        .await;
        let seconds = started.elapsed().as_secs_f64();
        let timings: Vec<Timing> = runs.into_iter().collect::<Result<_, _>>()?;
        let generated: u64 = timings.iter().map(|t| u64::from(t.tokens)).sum();
        aggregate.push(AggregateFigure {
            streams,
            generated_tokens: generated,
            seconds,
            tokens_per_s: generated as f64 / seconds,
            per_stream_decode_tokens_per_s: median(
                timings
                    .iter()
                    .map(|t| {
                        f64::from(t.tokens.saturating_sub(1))
                            / (t.total - t.first_token).as_secs_f64()
                    })
                    .collect(),
            ),
            median_time_to_first_token_ms: median(
                timings
                    .iter()
                    .map(|t| t.first_token.as_secs_f64() * 1e3)
                    .collect(),
            ),
            max_time_to_first_token_ms: timings
                .iter()
                .map(|t| t.first_token.as_secs_f64() * 1e3)
                .fold(0.0, f64::max),
        });
    }
    let shared_prefix = measure_shared_prefix(target, model, run, options.repeats).await?;
    let long_prompt = measure_long_prompt(target, model, run).await?;
    Ok(BenchReport {
        model: model.clone(),
        path: match target {
            Target::Bus(_) => "nats",
            Target::Direct(_) => "in-process",
        },
        single_stream_decode_tokens_per_s: decode,
        inter_token_latency_ms: 1e3 / decode,
        prefill,
        aggregate,
        shared_prefix,
        long_prompt,
    })
}

/// The shared-prefix figures: 300 tokens in common, 16 of each prompt's own.
async fn measure_shared_prefix(
    target: &Target,
    model: &str,
    run: usize,
    repeats: usize,
) -> anyhow::Result<SharedPrefixFigure> {
    const PREFIX: usize = 300;
    const SUFFIX: usize = 16;
    const STREAMS: usize = 16;
    let shared = prompt(PREFIX, run + 5_000);
    let with_suffix = |seed: usize| {
        let mut tokens = shared.clone();
        tokens.extend(prompt(SUFFIX, run + 6_000 + seed));
        tokens
    };
    let cold = target.run(request(model, with_suffix(0), 1)).await?;
    let mut warm = Vec::new();
    for repeat in 0..repeats {
        let timing = target
            .run(request(model, with_suffix(repeat + 1), 1))
            .await?;
        warm.push(timing.first_token.as_secs_f64());
    }
    let together = futures::future::join_all(
        (0..STREAMS).map(|i| target.run(request(model, with_suffix(100 + i), 16))),
    )
    .await
    .into_iter()
    .collect::<Result<Vec<_>, _>>()?;
    Ok(SharedPrefixFigure {
        prefix_tokens: PREFIX,
        suffix_tokens: SUFFIX,
        cold_time_to_first_token_ms: cold.first_token.as_secs_f64() * 1e3,
        warm_time_to_first_token_ms: median(warm) * 1e3,
        streams: STREAMS,
        median_time_to_first_token_ms: median(
            together
                .iter()
                .map(|t| t.first_token.as_secs_f64() * 1e3)
                .collect(),
        ),
    })
}

/// Four streams decoding (long enough to outlast the prefill) and, once they run, a
/// 2 000-token prompt: their token gaps from its arrival to its first token.
async fn measure_long_prompt(
    target: &Target,
    model: &str,
    run: usize,
) -> anyhow::Result<LongPromptFigure> {
    const STREAMS: usize = 4;
    const PROMPT: usize = 2_000;
    const TOKENS: u32 = 400;
    let streams = futures::future::join_all(
        (0..STREAMS).map(|i| target.run(request(model, prompt(16, run + 7_000 + i), TOKENS))),
    );
    let long = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let arrived = Instant::now();
        let timing = target
            .run(request(model, prompt(PROMPT, run + 8_000), 1))
            .await?;
        anyhow::Ok((arrived, arrived + timing.first_token))
    };
    let (streams, long) = futures::join!(streams, long);
    let (arrived, answered) = long?;
    let streams: Vec<Timing> = streams.into_iter().collect::<Result<_, _>>()?;
    if streams
        .iter()
        .any(|s| s.arrivals.last().is_none_or(|last| *last < answered))
    {
        anyhow::bail!("a running stream ended before the long prompt's first token");
    }
    let during = |at: &&Instant| **at > arrived && **at <= answered;
    let mut gaps = Vec::new();
    let mut meanwhile = Vec::new();
    for stream in &streams {
        meanwhile.push(stream.arrivals.iter().filter(during).count() as f64);
        // Every gap that ends inside the window, and the one that spans its end.
        for pair in stream.arrivals.windows(2) {
            if pair[1] > arrived && pair[0] < answered {
                gaps.push((pair[1] - pair[0]).as_secs_f64() * 1e3);
            }
        }
    }
    Ok(LongPromptFigure {
        streams: STREAMS,
        prompt_tokens: PROMPT,
        time_to_first_token_ms: (answered - arrived).as_secs_f64() * 1e3,
        tokens_meanwhile: median(meanwhile),
        worst_gap_ms: gaps.iter().copied().fold(0.0, f64::max),
        median_gap_ms: median(gaps),
    })
}

/// `slough bench inference`: against the inference service on NATS_URL when set,
/// otherwise against one started here (with its own nats-server), or in-process.
pub async fn inference(
    settings: &Settings,
    nats_url: Option<String>,
    options: BenchOptions,
) -> anyhow::Result<()> {
    let report = if options.in_process {
        let data_dir = &settings.common.data_dir;
        let config = settings.inference.clone();
        let runtime = slough_inference::runtime::Runtime::load(&config.runtime, data_dir)
            .map_err(|err| err.to_string());
        let registry = prometheus::Registry::new();
        let metrics = slough_inference::metrics::Metrics::register(&registry)?;
        let dir = settings.common.models_dir();
        let models = Models::start(dir, runtime, config, metrics).await;
        measure(&Target::Direct(models), &options).await?
    } else {
        let url = nats_url.ok_or_else(|| anyhow::anyhow!("no NATS URL"))?;
        let bus =
            slough_bus::connect(&url, "slough-bench", settings.common.nats.bus_options()).await?;
        wait_for_model(&bus, &options.model).await?;
        measure(&Target::Bus(Box::new(bus)), &options).await?
    };
    print(&report);
    let path = options
        .json
        .clone()
        .unwrap_or_else(|| Path::new("bench-inference.json").to_path_buf());
    crate::write_figures(&path, &report)
}

/// Waits (up to a minute) until an inference instance serves `model`.
async fn wait_for_model(bus: &Bus, model: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let listed = bus.call(&protocol::MODELS, &ModelsRequest {}).await;
        match listed {
            Ok(listed) if listed.models.iter().any(|m| m.id == model) => return Ok(()),
            Ok(listed) if Instant::now() > deadline => anyhow::bail!(
                "inference does not serve {model:?}; it serves {:?} (see `slough models list`)",
                listed.models.iter().map(|m| &m.id).collect::<Vec<_>>()
            ),
            Err(err) if Instant::now() > deadline => {
                anyhow::bail!("inference does not answer: {err}")
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

fn print(report: &BenchReport) {
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    table.set_header(["measure", "value"]);
    table.add_row([
        "single-stream decode".to_owned(),
        format!(
            "{:.1} tokens/s ({:.2} ms/token)",
            report.single_stream_decode_tokens_per_s, report.inter_token_latency_ms
        ),
    ]);
    for p in &report.prefill {
        table.add_row([
            format!("prefill, {} prompt tokens", p.prompt_tokens),
            format!(
                "{:.1} tokens/s (time to first token {:.1} ms)",
                p.prefill_tokens_per_s, p.time_to_first_token_ms
            ),
        ]);
    }
    for a in &report.aggregate {
        table.add_row([
            format!("aggregate, {} streams", a.streams),
            format!(
                "{:.1} tokens/s ({} tokens in {:.2} s; {:.1} tokens/s per stream while decoding; first token {:.0} ms median, {:.0} ms worst)",
                a.tokens_per_s,
                a.generated_tokens,
                a.seconds,
                a.per_stream_decode_tokens_per_s,
                a.median_time_to_first_token_ms,
                a.max_time_to_first_token_ms
            ),
        ]);
    }
    let shared = &report.shared_prefix;
    table.add_row([
        format!(
            "{} + {} tokens, the first {} shared",
            shared.prefix_tokens, shared.suffix_tokens, shared.prefix_tokens
        ),
        format!(
            "first token {:.0} ms cold, {:.0} ms with the prefix cached; {} arriving together: {:.0} ms median",
            shared.cold_time_to_first_token_ms,
            shared.warm_time_to_first_token_ms,
            shared.streams,
            shared.median_time_to_first_token_ms
        ),
    ]);
    let long = &report.long_prompt;
    table.add_row([
        format!(
            "{} streams running, a {}-token prompt arrives",
            long.streams, long.prompt_tokens
        ),
        format!(
            "its first token after {:.0} ms; meanwhile {:.0} tokens per stream, gaps {:.0} ms median, {:.0} ms worst",
            long.time_to_first_token_ms, long.tokens_meanwhile, long.median_gap_ms, long.worst_gap_ms
        ),
    ]);
    println!("inference benchmark: {} via {}", report.model, report.path);
    println!("{table}");
}

/// `slough bench inference`. Without NATS_URL (and not in-process), nats-server and an
/// inference service are started here for the run.
pub fn run(mut settings: Settings, options: BenchOptions) -> anyhow::Result<()> {
    let mut nats = None;
    if settings.common.nats_url.is_none() && !options.in_process {
        let store = nats_store(&settings)?;
        let server = NatsServer::start(&settings.common.nats.server.options(0, store))?;
        settings.common.nats_url = Some(server.url());
        nats = Some(server);
    }
    let result = runtime().and_then(|rt| {
        rt.block_on(async {
            let url = settings.common.nats_url.clone();
            let service = match &nats {
                Some(server) => Some(
                    ServiceHandle::start(
                        ServiceKind::Inference,
                        &settings,
                        &server.url(),
                        CancellationToken::new(),
                    )
                    .await?,
                ),
                None => None,
            };
            let outcome = inference(&settings, url, options).await;
            if let Some(service) = service {
                service.stop(Duration::from_secs(15)).await?;
            }
            outcome
        })
    });
    if let Some(server) = &mut nats {
        server.stop();
    }
    result
}

/// A scratch JetStream directory for a benchmark's own nats-server.
pub(crate) fn nats_store(settings: &Settings) -> anyhow::Result<std::path::PathBuf> {
    let dir = settings.common.data_dir.join("nats").join("bench");
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
