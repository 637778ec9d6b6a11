//! `slough chaos <scenario>`: how the platform behaves under faults, measured. Each
//! scenario starts its own platform as separate processes (`nats-server`, and `slough
//! run <service>` per instance) on ports of 127.0.0.1 the system picks, with a throw-away data
//! directory and this data directory's models (linked, so that a model it fine-tunes
//! stays in the throw-away directory), drives streaming chats and embeddings
//! through the gateway, injects its fault, prints a table of figures, and fails when
//! the scenario's promise is broken:
//!
//! - `soak`: no request fails, and no process's resident memory grows by 5 % or more
//!   (and 2 MiB) between the end of the warm-up and the end of the run;
//! - `replica-loss`: one of two inference replicas is killed (SIGKILL) under load: the
//!   streams it held end with a clean error event within the heartbeat window, new
//!   requests all succeed within 1 s, and usage accounts for every request;
//! - `nats-restart`: nats-server is stopped and started again under load: every service
//!   is ready again within 5 s, requests in the gap end with a clean error (never a
//!   hang), and a fine-tuning job submitted before the restart runs exactly once;
//! - `store-outage`: the platform's PostgreSQL database refuses connections for a while
//!   under load (a throw-away database on the server `--postgres` names): requests fail
//!   with a clean 503 while it is gone, the gateway's `/readyz` names the store, and
//!   without a restart requests succeed again within 5 s of its return, with every
//!   answered request in the usage accounting;
//! - `node-loss`: on a cluster of three NATS servers, one is killed (SIGKILL) under load
//!   with a fine-tuning job queued and a file stored, and restarted 5 s later: requests
//!   in flight end with a clean error, new requests all succeed again within 10 s, the
//!   job runs exactly once, the file reads back whole and usage counts every request;
//! - `collection-delete`: collections are deleted while 300 documents are being
//!   ingested into each, under the load: every process lives on, each ingest ends
//!   with its documents stored or a clean 409 (or 404 when the deletion came first),
//!   the deleted collection is gone, and its name can be made, filled and searched
//!   again.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use comfy_table::Table;
use sea_orm::ConnectionTrait as _;
use serde_json::{Value, json};
use slough_service::NatsServer;
use tokio_util::sync::CancellationToken;

use slough::{Settings, gateway_client::GatewayClient, run_file::RunFile};

/// The scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    Soak,
    ReplicaLoss,
    NatsRestart,
    StoreOutage,
    CollectionDelete,
    NodeLoss,
}

/// How hard and how long.
#[derive(Debug, Clone, clap::Args)]
pub struct ChaosOptions {
    #[arg(value_enum)]
    pub scenario: Scenario,
    /// Concurrent streaming chats (one more client sends embeddings).
    #[arg(long, default_value_t = 8)]
    pub streams: usize,
    /// How long the load runs, in seconds (the soak's length; the others use it around
    /// the fault).
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Tokens each chat asks for.
    #[arg(long, default_value_t = 64)]
    pub max_tokens: u32,
    /// store-outage: a PostgreSQL database URL on a server where this user may create
    /// databases (the scenario makes and drops its own).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    pub postgres: String,
}

/// Runs one scenario and prints its figures; an error when its promise is broken.
pub fn run(settings: &Settings, options: &ChaosOptions) -> anyhow::Result<()> {
    let scratch = tempfile::Builder::new().prefix("slough-chaos-").tempdir()?;
    let mut server = settings.common.nats.server.clone();
    server.port = 0;
    server.nodes = if options.scenario == Scenario::NodeLoss {
        3
    } else {
        1
    };
    let mut nats = server.start(&scratch.path().join("nats"))?;
    let rt = slough::runtime()?;
    let mut cluster = Cluster::new(settings, scratch.path(), NatsServer::seed_urls(&nats))?;
    let outcome = match options.scenario {
        Scenario::Soak => rt.block_on(soak(&mut cluster, &nats[0], options)),
        Scenario::ReplicaLoss => rt.block_on(replica_loss(&mut cluster, settings, options)),
        Scenario::NatsRestart => nats_restart(&rt, &mut cluster, &mut nats[0], options),
        Scenario::StoreOutage => rt.block_on(store_outage(&mut cluster, options)),
        Scenario::CollectionDelete => rt.block_on(collection_delete(&mut cluster, options)),
        Scenario::NodeLoss => node_loss(&rt, &mut cluster, &mut nats, options),
    };
    cluster.stop();
    if outcome.is_err() {
        // Keep the processes' logs for a look.
        let kept = scratch.keep();
        eprintln!("the processes' logs are in {}", kept.join("logs").display());
    }
    outcome
}

// --- the platform as processes ------------------------------------------------------

/// `slough run <service>` processes against one NATS server.
struct Cluster {
    exe: PathBuf,
    dir: PathBuf,
    nats_url: String,
    admin_key: String,
    /// The gateway's base URL, once it listens.
    gateway: String,
    models: PathBuf,
    /// Settings every process gets: the models and runtime of this data directory.
    env: Vec<(String, String)>,
    processes: Vec<Process>,
}

struct Process {
    name: String,
    /// Its admin server's URL, once its run file says where it listens.
    admin: Option<String>,
    child: Child,
}

impl Process {
    /// Its admin server's URL (known once [`Cluster::wait_ready`] has seen it ready).
    fn admin(&self) -> anyhow::Result<&str> {
        self.admin
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("{} has not said where it listens", self.name))
    }
}

impl Cluster {
    fn new(settings: &Settings, dir: &Path, nats_url: String) -> anyhow::Result<Cluster> {
        let data = &settings.common.data_dir;
        let models = settings.common.models_dir();
        // The packages, linked into the scratch directory: what the run fine-tunes lands
        // there, not among the user's models.
        let linked = dir.join("models");
        std::fs::create_dir_all(&linked)?;
        for entry in std::fs::read_dir(&models)
            .with_context(|| format!("cannot read the models in {}", models.display()))?
        {
            let entry = entry?;
            std::os::unix::fs::symlink(entry.path(), linked.join(entry.file_name()))?;
        }
        let mut env = vec![
            ("SLOUGH_DATA_DIR".to_owned(), dir.join("data")),
            ("SLOUGH_MODELS_DIR".to_owned(), linked),
            (
                "SLOUGH_TRAINING__SOURCES_DIR".to_owned(),
                settings
                    .training
                    .sources_dir
                    .clone()
                    .unwrap_or_else(|| data.join("cache/sources")),
            ),
        ];
        if std::env::var_os("ORT_DYLIB_PATH").is_none() {
            env.push((
                "SLOUGH_INFERENCE__RUNTIME__LIBRARY".to_owned(),
                settings
                    .inference
                    .runtime
                    .library
                    .clone()
                    .unwrap_or_else(|| data.join("runtime/libonnxruntime.so")),
            ));
        }
        Ok(Cluster {
            exe: slough::launch::sibling("slough").ok_or_else(|| {
                anyhow::anyhow!(
                    "chaos runs the platform with the slough binary, which is neither beside \
                     this program nor on PATH; build it (cargo build -p slough) or install it \
                     (scripts/up)"
                )
            })?,
            dir: dir.to_owned(),
            nats_url,
            admin_key: format!("sk-chaos{}", "0".repeat(36)),
            gateway: String::new(),
            models,
            env: env
                .into_iter()
                .map(|(k, v)| (k, v.display().to_string()))
                .collect(),
            processes: Vec::new(),
        })
    }

    /// Starts `slough run <service>` as process `name`; its log goes to `logs/<name>.log`.
    fn spawn(&mut self, service: &str, name: &str) -> anyhow::Result<()> {
        let logs = self.dir.join("logs");
        std::fs::create_dir_all(&logs)?;
        let log = std::fs::File::create(logs.join(format!("{name}.log")))?;
        let upper = service.to_uppercase();
        let mut command = Command::new(&self.exe);
        command
            .args(["run", service])
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("NATS_URL", &self.nats_url)
            .env("SLOUGH_LOG__FORMAT", "pretty")
            // Every port is picked at start; the run file says which.
            .env(format!("SLOUGH_{upper}__ADMIN_LISTEN"), "127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if service == "gateway" {
            command
                .env("SLOUGH_ADMIN_KEY", &self.admin_key)
                .env("SLOUGH_GATEWAY__LISTEN", "127.0.0.1:0");
        }
        if service == "monitoring" {
            command.env("SLOUGH_MONITORING__LISTEN", "127.0.0.1:0");
        }
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {}", self.exe.display()))?;
        self.processes.push(Process {
            name: name.to_owned(),
            admin: None,
            child,
        });
        Ok(())
    }

    /// Fills in where the processes listen from their run files, as each writes one.
    fn find_addresses(&mut self) {
        let data = self.dir.join("data");
        for process in &mut self.processes {
            if process.admin.is_some() {
                continue;
            }
            let Some(run) = RunFile::read(&data, process.child.id()) else {
                continue;
            };
            if let Some(api) = run.server("gateway", "api") {
                self.gateway = format!("http://{api}");
            }
            process.admin = run.services.into_values().next().map(|s| s.admin);
        }
    }

    fn process(&mut self, name: &str) -> anyhow::Result<&mut Process> {
        self.processes
            .iter_mut()
            .find(|p| p.name == name)
            .ok_or_else(|| anyhow::anyhow!("no process {name}"))
    }

    /// Waits until every process answers `/readyz` with 200; how long that took.
    async fn wait_ready(&mut self, limit: Duration) -> anyhow::Result<Duration> {
        let http = reqwest::Client::new();
        let started = Instant::now();
        loop {
            self.find_addresses();
            let mut waiting = Vec::new();
            for process in &mut self.processes {
                if let Ok(Some(status)) = process.child.try_wait() {
                    bail!("{} exited ({status})", process.name);
                }
                let ready = match &process.admin {
                    Some(admin) => http
                        .get(format!("{admin}/readyz"))
                        .timeout(Duration::from_secs(2))
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success()),
                    None => false,
                };
                if !ready {
                    waiting.push(process.name.clone());
                }
            }
            if waiting.is_empty() {
                return Ok(started.elapsed());
            }
            if started.elapsed() > limit {
                bail!("not ready after {limit:?}: {}", waiting.join(", "));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Resident memory of every process, nats-server's included, in MiB.
    fn memory(&self, nats: &NatsServer) -> Vec<(String, f64)> {
        let mut figures: Vec<(String, f64)> = self
            .processes
            .iter()
            .map(|p| (p.name.clone(), resident_mib(p.child.id())))
            .collect();
        figures.push(("nats-server".to_owned(), resident_mib(nats.pid())));
        figures
    }

    /// SIGTERM to every process, then SIGKILL to what is left after 10 s.
    fn stop(&mut self) {
        for process in &mut self.processes {
            if matches!(process.child.try_wait(), Ok(None)) {
                signal(process.child.id(), "TERM");
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for process in &mut self.processes {
            while matches!(process.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = process.child.kill();
            let _ = process.child.wait();
        }
    }
}

fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// `VmRSS` of process `pid` in MiB (0 when it is gone).
fn resident_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|value| value.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

// --- load ---------------------------------------------------------------------------

/// One request the load made.
#[derive(Debug, Clone)]
struct Outcome {
    what: &'static str,
    /// Since the load began.
    started: Duration,
    ended: Duration,
    first_token: Option<Duration>,
    /// `None` on success; else what the client saw (`503 upstream_failed`, `stream error
    /// upstream_failed`, `no answer within 60 s`, ...).
    error: Option<String>,
}

impl Outcome {
    /// A clean failure: an HTTP error status or a stream's error event with an error
    /// code, not a broken connection or a hang.
    fn is_clean(&self) -> bool {
        self.error.as_deref().is_none_or(|e| {
            e.starts_with("stream error ") || e.starts_with('4') || e.starts_with('5')
        })
    }
}

/// Streaming chats and embeddings, looping until stopped.
struct Load {
    began: Instant,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// The longest a request may take before it counts as hung.
const HUNG: Duration = Duration::from_secs(60);

impl Load {
    fn start(gateway: &GatewayClient, chat: &str, embed: &str, options: &ChaosOptions) -> Load {
        let mut load = Load {
            began: Instant::now(),
            outcomes: Arc::default(),
            stop: CancellationToken::new(),
            tasks: Vec::new(),
        };
        for n in 0..options.streams {
            let body = json!({
                "model": chat, "stream": true, "max_tokens": options.max_tokens,
                "messages": [{"role": "user", "content": format!("Tell me a story about the number {n}.")}],
            });
            load.tasks
                .push(load.worker(gateway, "chat", "/v1/chat/completions", body));
        }
        let body =
            json!({"model": embed, "input": ["a plane has wings", "the engine burns kerosene"]});
        load.tasks
            .push(load.worker(gateway, "embeddings", "/v1/embeddings", body));
        load
    }

    fn worker(
        &self,
        gateway: &GatewayClient,
        what: &'static str,
        path: &'static str,
        body: Value,
    ) -> tokio::task::JoinHandle<()> {
        let gateway = gateway.clone();
        let (began, outcomes, stop) = (self.began, self.outcomes.clone(), self.stop.clone());
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                let started = began.elapsed();
                let request = gateway.post_request(path).json(&body).send();
                let (first_token, error) =
                    match tokio::time::timeout(HUNG, answer(request, began)).await {
                        Ok(answer) => answer,
                        Err(_) => (None, Some(format!("no answer within {HUNG:?}"))),
                    };
                let failed = error.is_some();
                outcomes
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(Outcome {
                        what,
                        started,
                        ended: began.elapsed(),
                        first_token: first_token.map(|t| t.saturating_sub(started)),
                        error,
                    });
                if failed || what == "embeddings" {
                    // Embeddings at a few requests a second beside the chats, not as
                    // fast as they go; and no busy loop while the platform is down.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        })
    }

    fn now(&self) -> Duration {
        self.began.elapsed()
    }

    /// Stops starting requests and waits for those in flight.
    async fn finish(self) -> Vec<Outcome> {
        self.stop.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
        self.outcomes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Reads one answer to the end: when the first token came (since `began`), and the
/// error, if any.
async fn answer(
    request: impl Future<Output = reqwest::Result<reqwest::Response>>,
    began: Instant,
) -> (Option<Duration>, Option<String>) {
    let mut response = match request.await {
        Ok(response) => response,
        Err(err) => return (None, Some(format!("connection: {err}"))),
    };
    let status = response.status();
    if !status.is_success() {
        let body: Value = response.json().await.unwrap_or_default();
        let code = body["error"]["code"].as_str().unwrap_or("no error code");
        return (None, Some(format!("{} {code}", status.as_u16())));
    }
    let streamed = response
        .headers()
        .get("content-type")
        .is_some_and(|t| t.as_bytes().starts_with(b"text/event-stream"));
    let mut text = String::new();
    let mut first_token = None;
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                text.push_str(&String::from_utf8_lossy(&chunk));
                if first_token.is_none() && has_content(&text) {
                    first_token = Some(began.elapsed());
                }
            }
            Ok(None) => break,
            Err(err) => return (first_token, Some(format!("connection: {err}"))),
        }
    }
    if !streamed {
        return (None, None);
    }
    let last = text.trim_end().lines().last().unwrap_or_default();
    if last == "data: [DONE]" {
        return (first_token, None);
    }
    let event: Value = last
        .strip_prefix("data: ")
        .and_then(|data| serde_json::from_str(data).ok())
        .unwrap_or_default();
    match event["error"]["code"].as_str() {
        Some(code) => (first_token, Some(format!("stream error {code}"))),
        None => (
            first_token,
            Some(format!("stream ended without [DONE]: {last}")),
        ),
    }
}

/// Whether a complete event in `text` carries generated text (the first chunk carries
/// only the role).
fn has_content(text: &str) -> bool {
    text.lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .filter_map(|data| serde_json::from_str::<Value>(data).ok())
        .any(|event| {
            event["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|content| !content.is_empty())
        })
}

// --- figures ------------------------------------------------------------------------

fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * (values.len() - 1) as f64).round() as usize;
    values[rank]
}

/// Requests, errors and latencies of `outcomes`, by kind.
fn load_rows(table: &mut Table, outcomes: &[Outcome]) {
    for what in ["chat", "embeddings"] {
        let all: Vec<&Outcome> = outcomes.iter().filter(|o| o.what == what).collect();
        let errors = all.iter().filter(|o| o.error.is_some()).count();
        let mut latency: Vec<f64> = all
            .iter()
            .filter(|o| o.error.is_none())
            .map(|o| (o.ended - o.started).as_secs_f64() * 1000.0)
            .collect();
        table.add_row(vec![
            format!("{what}: requests, errors"),
            format!("{}, {errors}", all.len()),
        ]);
        table.add_row(vec![
            format!("{what}: latency p50 / p99"),
            format!(
                "{:.0} / {:.0} ms",
                percentile(&mut latency, 50.0),
                percentile(&mut latency, 99.0)
            ),
        ]);
        if what == "chat" {
            let mut ttft: Vec<f64> = all
                .iter()
                .filter_map(|o| o.first_token)
                .map(|t| t.as_secs_f64() * 1000.0)
                .collect();
            table.add_row(vec![
                "chat: first token p50 / p99".to_owned(),
                format!(
                    "{:.0} / {:.0} ms",
                    percentile(&mut ttft, 50.0),
                    percentile(&mut ttft, 99.0)
                ),
            ]);
        }
    }
}

/// What went wrong, counted by message.
fn error_summary<'a>(outcomes: impl Iterator<Item = &'a Outcome>) -> String {
    tally(outcomes.filter_map(|o| o.error.as_deref()))
}

/// Each distinct text with how often it came, in order of first sight: `2× 409; 1× 200`
/// (`none` when there is nothing).
fn tally<'a>(texts: impl Iterator<Item = &'a str>) -> String {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for text in texts {
        match counts.iter_mut().find(|(seen, _)| *seen == text) {
            Some((_, n)) => *n += 1,
            None => counts.push((text, 1)),
        }
    }
    if counts.is_empty() {
        return "none".to_owned();
    }
    counts.iter().fold(String::new(), |mut out, (text, n)| {
        let _ = write!(out, "{}{n}× {text}", if out.is_empty() { "" } else { "; " });
        out
    })
}

fn print_table(title: &str, table: &Table, broken: &[String]) -> anyhow::Result<()> {
    println!("{title}\n{table}");
    if broken.is_empty() {
        println!("every promise kept");
        return Ok(());
    }
    bail!("promises broken:\n  {}", broken.join("\n  "))
}

fn new_table() -> Table {
    let mut table = Table::new();
    table.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    table.set_header(vec!["figure", "value"]);
    table
}

// --- scenarios ----------------------------------------------------------------------

/// The requests the admin key's usage counts so far.
async fn requests_used(gateway: &GatewayClient) -> anyhow::Result<u64> {
    Ok(gateway.get("/v1/usage").await?["requests"]
        .as_u64()
        .unwrap_or(0))
}

/// The requests usage counts since `before`, once it reaches `expected` or after 10 s
/// (rows are stored in the background).
async fn accounted(gateway: &GatewayClient, before: u64, expected: u64) -> anyhow::Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let accounted = requests_used(gateway).await?.saturating_sub(before);
        if accounted >= expected || Instant::now() > deadline {
            return Ok(accounted);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts the processes of `services` (name = service, or `inference-2` for a second
/// replica) and waits until they are ready and the gateway serves both kinds of model.
async fn start(
    cluster: &mut Cluster,
    services: &[(&str, &str)],
) -> anyhow::Result<(GatewayClient, String, String)> {
    for (service, name) in services {
        cluster.spawn(service, name)?;
    }
    cluster.wait_ready(Duration::from_secs(180)).await?;
    let gateway = GatewayClient::new(&cluster.gateway, &cluster.admin_key)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let (Ok(chat), Ok(embed)) = (
            base_chat_model(&gateway).await,
            gateway.first_model("embedding").await,
        ) {
            return Ok((gateway, chat, embed));
        }
        if Instant::now() > deadline {
            bail!(
                "the gateway lists no chat and embedding model; does {} hold them? (`slough models list`)",
                cluster.models.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The first chat model that is not itself fine-tuned (the fine-tuning job's base).
async fn base_chat_model(gateway: &GatewayClient) -> anyhow::Result<String> {
    gateway
        .models("chat")
        .await?
        .into_iter()
        .find(|id| !id.starts_with("ft:"))
        .ok_or_else(|| anyhow::anyhow!("the gateway serves no base chat model"))
}

async fn soak(
    cluster: &mut Cluster,
    nats: &NatsServer,
    options: &ChaosOptions,
) -> anyhow::Result<()> {
    let (gateway, chat, embed) = start(
        cluster,
        &[("inference", "inference"), ("gateway", "gateway")],
    )
    .await?;
    let load = Load::start(&gateway, &chat, &embed, options);
    let total = Duration::from_secs(options.seconds);
    // Warm-up: a fifth of the run, at least 20 s (allocators and caches settle).
    let warm_up = (total / 5).max(Duration::from_secs(20)).min(total / 2);
    tokio::time::sleep(warm_up).await;
    let before = cluster.memory(nats);
    tokio::time::sleep(total.saturating_sub(warm_up)).await;
    let after = cluster.memory(nats);
    let outcomes = load.finish().await;

    let mut table = new_table();
    table.add_row(vec!["streams".to_owned(), options.streams.to_string()]);
    table.add_row(vec![
        "length (warm-up)".to_owned(),
        format!("{total:?} ({warm_up:?})"),
    ]);
    load_rows(&mut table, &outcomes);
    table.add_row(vec!["errors".to_owned(), error_summary(outcomes.iter())]);
    let mut broken = Vec::new();
    if outcomes.iter().any(|o| o.error.is_some()) {
        broken.push("requests failed".to_owned());
    }
    for ((name, start), (_, end)) in before.iter().zip(&after) {
        let growth = (end - start) / start * 100.0;
        table.add_row(vec![
            format!("{name}: resident memory"),
            format!("{start:.0} → {end:.0} MiB ({growth:+.1} %)"),
        ]);
        // Under 5 %; a process of a few MiB may move by one without leaking.
        if growth >= 5.0 && end - start > 2.0 {
            broken.push(format!("{name}'s memory grew by {growth:.1} %"));
        }
    }
    print_table("soak", &table, &broken)
}

async fn replica_loss(
    cluster: &mut Cluster,
    settings: &Settings,
    options: &ChaosOptions,
) -> anyhow::Result<()> {
    let (gateway, chat, embed) = start(
        cluster,
        &[
            ("inference", "inference-1"),
            ("inference", "inference-2"),
            ("gateway", "gateway"),
        ],
    )
    .await?;
    // Both replicas' load reports reach the gateway before the load starts.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let usage_before = requests_used(&gateway).await?;
    let load = Load::start(&gateway, &chat, &embed, options);
    let around = Duration::from_secs(options.seconds / 2).max(Duration::from_secs(5));
    tokio::time::sleep(around).await;
    let victim = cluster.process("inference-1")?;
    victim.child.kill()?;
    victim.child.wait()?;
    let killed = load.now();
    tokio::time::sleep(around).await;
    let outcomes = load.finish().await;

    let window = Duration::from_millis(3 * settings.common.nats.heartbeat_ms);
    let in_flight: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.started < killed && o.ended >= killed)
        .collect();
    let failed: Vec<&Outcome> = in_flight
        .iter()
        .copied()
        .filter(|o| o.error.is_some())
        .collect();
    let slowest_failure = failed
        .iter()
        .map(|o| o.ended - killed)
        .max()
        .unwrap_or_default();
    let after: Vec<&Outcome> = outcomes.iter().filter(|o| o.started >= killed).collect();
    let recovery = recovery(&after, killed);
    // Usage is stored in the background; give it a moment.
    let accounted = accounted(&gateway, usage_before, outcomes.len() as u64).await?;

    let mut table = new_table();
    table.add_row(vec![
        "streams (replicas)".to_owned(),
        format!("{} (2, one killed)", options.streams),
    ]);
    load_rows(&mut table, &outcomes);
    table.add_row(vec![
        "in flight at the kill: failed / all".to_owned(),
        format!("{} / {}", failed.len(), in_flight.len()),
    ]);
    table.add_row(vec![
        "their errors".to_owned(),
        error_summary(failed.iter().copied()),
    ]);
    table.add_row(vec![
        "last failed stream ended after the kill".to_owned(),
        format!(
            "{} ms (window {} ms)",
            slowest_failure.as_millis(),
            window.as_millis()
        ),
    ]);
    table.add_row(vec![
        "errors of requests sent after the kill".to_owned(),
        error_summary(after.iter().copied()),
    ]);
    table.add_row(vec![
        "new requests all succeed after".to_owned(),
        format!("{} ms", recovery.as_millis()),
    ]);
    table.add_row(vec![
        "usage: requests accounted / made".to_owned(),
        format!("{accounted} / {}", outcomes.len()),
    ]);
    let mut broken = Vec::new();
    if failed.iter().any(|o| !o.is_clean()) {
        broken.push("a held stream failed without a clean error".to_owned());
    }
    if slowest_failure > window + Duration::from_secs(1) {
        broken.push(format!("a held stream took {slowest_failure:?} to fail"));
    }
    if recovery >= Duration::from_secs(1) {
        broken.push(format!("new requests failed for {recovery:?}"));
    }
    if accounted != outcomes.len() as u64 {
        broken.push("usage lost requests".to_owned());
    }
    print_table("replica loss", &table, &broken)
}

/// How long after `fault` new requests all succeed: from the fault to the start of the
/// first request after the last failed one (`after`: the requests started since).
fn recovery(after: &[&Outcome], fault: Duration) -> Duration {
    after
        .iter()
        .filter(|o| o.error.is_some())
        .map(|o| o.started - fault)
        .max()
        .map_or(Duration::ZERO, |last| {
            after
                .iter()
                .map(|o| o.started - fault)
                .filter(|t| *t > last)
                .min()
                .unwrap_or(last)
        })
}

/// Six chat examples in OpenAI's format: a fine-tuning job of a few seconds.
fn tiny_training_file() -> Vec<u8> {
    (0..6)
        .map(|n| {
            json!({"messages": [
                {"role": "user", "content": format!("Say something about the number {n}.")},
                {"role": "assistant", "content": format!("Ahoy, matey! {n} be a fine number.")},
            ]})
            .to_string()
                + "\n"
        })
        .collect::<String>()
        .into_bytes()
}

fn nats_restart(
    rt: &tokio::runtime::Runtime,
    cluster: &mut Cluster,
    nats: &mut NatsServer,
    options: &ChaosOptions,
) -> anyhow::Result<()> {
    let services = [
        ("inference", "inference"),
        ("gateway", "gateway"),
        ("rag", "rag"),
        ("personality", "personality"),
        ("training", "training"),
        ("monitoring", "monitoring"),
    ];
    let (gateway, load, job) = rt.block_on(async {
        let (gateway, chat, embed) = start(cluster, &services).await?;
        let file = gateway
            .upload(
                "/v1/files",
                &[("purpose", "fine-tune")],
                "chaos.jsonl",
                tiny_training_file(),
            )
            .await?;
        let load = Load::start(&gateway, &chat, &embed, options);
        tokio::time::sleep(Duration::from_secs(options.seconds / 2).max(Duration::from_secs(5)))
            .await;
        let job = gateway
            .post(
                "/v1/fine_tuning/jobs",
                &json!({"model": chat, "training_file": file["id"],
                        "hyperparameters": {"n_epochs": 1, "batch_size": 1}, "lora": {"rank": 4}}),
            )
            .await?;
        anyhow::Ok((gateway, load, job))
    })?;
    // The fault: the server goes away for two seconds and comes back on the same port
    // with the same store (from this thread, which started it).
    let stopped = load.now();
    nats.stop();
    std::thread::sleep(Duration::from_secs(2));
    nats.restart()?;
    let restarted = load.now();
    rt.block_on(async {
        let ready = cluster.wait_ready(Duration::from_secs(60)).await?;
        let reconnected = load.now();
        tokio::time::sleep(Duration::from_secs(options.seconds / 2).max(Duration::from_secs(5)))
            .await;
        let outcomes = load.finish().await;
        // The job runs to its end.
        let id = job["id"].as_str().unwrap_or_default().to_owned();
        let (status, starts) = job_runs(&gateway, &id).await?;

        let gap: Vec<&Outcome> = outcomes
            .iter()
            .filter(|o| o.ended >= stopped && o.started <= reconnected)
            .collect();
        let mut table = new_table();
        table.add_row(vec!["streams".to_owned(), options.streams.to_string()]);
        load_rows(&mut table, &outcomes);
        table.add_row(vec![
            "NATS down".to_owned(),
            format!("{} ms", (restarted - stopped).as_millis()),
        ]);
        table.add_row(vec![
            "all 6 services ready again after NATS was back".to_owned(),
            format!("{} ms", ready.as_millis()),
        ]);
        table.add_row(vec![
            "requests touching the gap: failed / all".to_owned(),
            format!(
                "{} / {}",
                gap.iter().filter(|o| o.error.is_some()).count(),
                gap.len()
            ),
        ]);
        table.add_row(vec![
            "their errors".to_owned(),
            error_summary(gap.iter().copied()),
        ]);
        let slowest = gap
            .iter()
            .filter(|o| o.error.is_some())
            .map(|o| o.ended - o.started)
            .max()
            .unwrap_or_default();
        table.add_row(vec![
            "slowest failure".to_owned(),
            format!("{} ms", slowest.as_millis()),
        ]);
        table.add_row(vec![
            "fine-tuning job queued before: status, runs".to_owned(),
            format!("{status}, {starts}"),
        ]);
        let mut broken = Vec::new();
        if ready > Duration::from_secs(5) {
            broken.push(format!("services took {ready:?} to be ready again"));
        }
        if outcomes.iter().any(|o| !o.is_clean()) {
            broken.push("a request failed without a clean error (or hung)".to_owned());
        }
        if outcomes
            .iter()
            .any(|o| o.error.is_some() && o.ended < stopped)
        {
            broken.push("requests failed before the fault".to_owned());
        }
        if status != "succeeded" || starts != 1 {
            broken.push(format!(
                "the fine-tuning job ended {status} after {starts} runs"
            ));
        }
        print_table("NATS restart", &table, &broken)
    })
}

/// The fine-tuning job `id` followed to its end (at most 10 min): its last status, and how
/// often it started or resumed (once, when nothing ran it twice).
async fn job_runs(gateway: &GatewayClient, id: &str) -> anyhow::Result<(String, usize)> {
    let deadline = Instant::now() + Duration::from_secs(600);
    let status = loop {
        let state = gateway.get(&format!("/v1/fine_tuning/jobs/{id}")).await?;
        let status = state["status"].as_str().unwrap_or_default().to_owned();
        if ["succeeded", "failed", "cancelled"].contains(&status.as_str())
            || Instant::now() > deadline
        {
            break status;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let events = gateway
        .get(&format!("/v1/fine_tuning/jobs/{id}/events?limit=100"))
        .await?;
    let starts = events["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| {
            e["message"].as_str().is_some_and(|m| {
                m.starts_with("Fine-tuning started") || m.starts_with("Resumed from")
            })
        })
        .count();
    Ok((status, starts))
}

/// How long the NATS node is gone in `node-loss`.
const NODE_DOWN: Duration = Duration::from_secs(5);

fn node_loss(
    rt: &tokio::runtime::Runtime,
    cluster: &mut Cluster,
    nats: &mut [NatsServer],
    options: &ChaosOptions,
) -> anyhow::Result<()> {
    let services = [
        ("inference", "inference"),
        ("gateway", "gateway"),
        ("rag", "rag"),
        ("personality", "personality"),
        ("training", "training"),
        ("monitoring", "monitoring"),
    ];
    let training_file = tiny_training_file();
    let (gateway, load, job, file, usage_before) = rt.block_on(async {
        // The services make their streams once the cluster has formed, one copy a node.
        let (url, nodes) = (&cluster.nats_url, nats.len());
        slough_bus::wait_for_cluster(url, nodes, Default::default(), Duration::from_secs(30))
            .await?;
        let (gateway, chat, embed) = start(cluster, &services).await?;
        let file = gateway
            .upload(
                "/v1/files",
                &[("purpose", "fine-tune")],
                "chaos.jsonl",
                training_file.clone(),
            )
            .await?;
        let usage_before = requests_used(&gateway).await?;
        let load = Load::start(&gateway, &chat, &embed, options);
        tokio::time::sleep(Duration::from_secs(options.seconds / 2).max(Duration::from_secs(5)))
            .await;
        let job = gateway
            .post(
                "/v1/fine_tuning/jobs",
                &json!({"model": chat, "training_file": file["id"],
                        "hyperparameters": {"n_epochs": 1, "batch_size": 1}, "lora": {"rank": 4}}),
            )
            .await?;
        anyhow::Ok((gateway, load, job, file, usage_before))
    })?;
    // The fault: the first node dies (SIGKILL, as a machine would) with the job queued
    // and the load running, and comes back after a while with its store.
    let killed = load.now();
    signal(nats[0].pid(), "KILL");
    std::thread::sleep(NODE_DOWN);
    nats[0].restart()?;
    let restarted = load.now();
    rt.block_on(async {
        tokio::time::sleep(Duration::from_secs(options.seconds / 2).max(Duration::from_secs(5)))
            .await;
        let outcomes = load.finish().await;
        let id = job["id"].as_str().unwrap_or_default().to_owned();
        let (status, starts) = job_runs(&gateway, &id).await?;
        // The file stored before the loss reads back whole.
        let file_id = file["id"].as_str().unwrap_or_default();
        let content = reqwest::Client::new()
            .get(format!("{}/v1/files/{file_id}/content", cluster.gateway))
            .bearer_auth(&cluster.admin_key)
            .send()
            .await?
            .bytes()
            .await?;
        let accounted = accounted(&gateway, usage_before, outcomes.len() as u64).await?;

        let in_flight: Vec<&Outcome> = outcomes
            .iter()
            .filter(|o| o.started < killed && o.ended >= killed)
            .collect();
        let after: Vec<&Outcome> = outcomes.iter().filter(|o| o.started >= killed).collect();
        let recovery = recovery(&after, killed);
        let mut table = new_table();
        table.add_row(vec![
            "streams (NATS nodes)".to_owned(),
            format!("{} (3, one killed)", options.streams),
        ]);
        load_rows(&mut table, &outcomes);
        table.add_row(vec![
            "node down".to_owned(),
            format!("{} ms", (restarted - killed).as_millis()),
        ]);
        table.add_row(vec![
            "in flight at the kill: failed / all".to_owned(),
            format!(
                "{} / {}",
                in_flight.iter().filter(|o| o.error.is_some()).count(),
                in_flight.len()
            ),
        ]);
        table.add_row(vec![
            "their errors".to_owned(),
            error_summary(in_flight.iter().copied()),
        ]);
        table.add_row(vec![
            "errors of requests sent after the kill".to_owned(),
            error_summary(after.iter().copied()),
        ]);
        table.add_row(vec![
            "new requests all succeed after".to_owned(),
            format!("{} ms", recovery.as_millis()),
        ]);
        table.add_row(vec![
            "fine-tuning job queued before: status, runs".to_owned(),
            format!("{status}, {starts}"),
        ]);
        table.add_row(vec![
            "file stored before reads back whole".to_owned(),
            (content.as_ref() == training_file.as_slice()).to_string(),
        ]);
        table.add_row(vec![
            "usage: requests accounted / made".to_owned(),
            format!("{accounted} / {}", outcomes.len()),
        ]);
        let mut broken = Vec::new();
        if outcomes.iter().any(|o| !o.is_clean()) {
            broken.push("a request failed without a clean error (or hung)".to_owned());
        }
        if recovery > Duration::from_secs(10) {
            broken.push(format!("new requests failed for {recovery:?}"));
        }
        if status != "succeeded" || starts != 1 {
            broken.push(format!(
                "the fine-tuning job ended {status} after {starts} runs"
            ));
        }
        if content.as_ref() != training_file.as_slice() {
            broken.push("the file stored before the loss changed".to_owned());
        }
        if accounted != outcomes.len() as u64 {
            broken.push("usage lost requests".to_owned());
        }
        print_table("NATS node loss", &table, &broken)
    })
}

/// A throw-away database on the PostgreSQL server of `admin_url`, and the switch that
/// makes it refuse connections.
struct OutageDatabase {
    admin: sea_orm::DatabaseConnection,
    name: String,
    url: String,
}

impl OutageDatabase {
    async fn create(admin_url: &str) -> anyhow::Result<OutageDatabase> {
        let admin = sea_orm::Database::connect(admin_url)
            .await
            .with_context(|| format!("cannot connect to PostgreSQL at {admin_url}"))?;
        let name = format!("slough_chaos_{}", std::process::id());
        admin
            .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name}"))
            .await?;
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await?;
        let (base, _) = admin_url
            .rsplit_once('/')
            .ok_or_else(|| anyhow::anyhow!("{admin_url} names no database"))?;
        Ok(OutageDatabase {
            admin,
            url: format!("{base}/{name}"),
            name,
        })
    }

    /// Refuses new connections and ends the open ones (`allow`: false), or allows them.
    async fn allow(&self, allow: bool) -> anyhow::Result<()> {
        let name = &self.name;
        self.admin
            .execute_unprepared(&format!(
                "ALTER DATABASE {name} WITH ALLOW_CONNECTIONS {allow}"
            ))
            .await?;
        if !allow {
            self.admin
                .execute_unprepared(&format!(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE datname = '{name}' AND pid <> pg_backend_pid()"
                ))
                .await?;
        }
        Ok(())
    }

    async fn drop(self) {
        let _ = self
            .admin
            .execute_unprepared(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .await;
    }
}

async fn store_outage(cluster: &mut Cluster, options: &ChaosOptions) -> anyhow::Result<()> {
    let database = OutageDatabase::create(&options.postgres).await?;
    cluster
        .env
        .push(("SLOUGH_DATABASE_URL".to_owned(), database.url.clone()));
    let outcome = store_outage_on(cluster, &database, options).await;
    cluster.stop();
    database.drop().await;
    outcome
}

async fn store_outage_on(
    cluster: &mut Cluster,
    database: &OutageDatabase,
    options: &ChaosOptions,
) -> anyhow::Result<()> {
    let (gateway, chat, embed) = start(
        cluster,
        &[("inference", "inference"), ("gateway", "gateway")],
    )
    .await?;
    let readyz = format!("{}/readyz", cluster.process("gateway")?.admin()?);
    let usage_before = requests_used(&gateway).await?;
    let load = Load::start(&gateway, &chat, &embed, options);
    let phase = Duration::from_secs(options.seconds / 3).max(Duration::from_secs(10));
    tokio::time::sleep(phase).await;
    database.allow(false).await?;
    let gone = load.now();
    // What /readyz says while the store is gone (after the key cache has run out).
    tokio::time::sleep(phase.min(Duration::from_secs(8))).await;
    let said: Value = reqwest::get(&readyz)
        .await?
        .json()
        .await
        .unwrap_or_default();
    tokio::time::sleep(phase.saturating_sub(Duration::from_secs(8))).await;
    database.allow(true).await?;
    let back = load.now();
    tokio::time::sleep(phase).await;
    let outcomes = load.finish().await;

    let store_check = said["checks"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|check| check["name"] == "store")
        .cloned()
        .unwrap_or_default();
    let during: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.started >= gone && o.started < back)
        .collect();
    let after: Vec<&Outcome> = outcomes.iter().filter(|o| o.started >= back).collect();
    let recovery = after
        .iter()
        .filter(|o| o.error.is_some())
        .map(|o| o.ended - back)
        .max()
        .unwrap_or_default();
    // Requests the platform answered (not refused before reaching a model) are billed.
    let answered = outcomes
        .iter()
        .filter(|o| {
            o.error
                .as_deref()
                .is_none_or(|e| e.starts_with("stream error"))
        })
        .count() as u64;
    let accounted = accounted(&gateway, usage_before, answered).await?;

    let mut table = new_table();
    table.add_row(vec!["streams".to_owned(), options.streams.to_string()]);
    load_rows(&mut table, &outcomes);
    table.add_row(vec![
        "store gone".to_owned(),
        format!("{} ms", (back - gone).as_millis()),
    ]);
    table.add_row(vec![
        "requests sent while gone: failed / all".to_owned(),
        format!(
            "{} / {}",
            during.iter().filter(|o| o.error.is_some()).count(),
            during.len()
        ),
    ]);
    table.add_row(vec![
        "their errors".to_owned(),
        error_summary(during.iter().copied()),
    ]);
    table.add_row(vec![
        "gateway /readyz while gone".to_owned(),
        format!(
            "ready {}, store: {}",
            said["ready"],
            // The database's own words, without the layers of context before them.
            store_check["detail"]
                .as_str()
                .map_or("ok", |detail| detail.rsplit(": ").next().unwrap_or(detail))
        ),
    ]);
    table.add_row(vec![
        "requests succeed again after its return".to_owned(),
        format!("{} ms", recovery.as_millis()),
    ]);
    table.add_row(vec![
        "usage: requests accounted / answered".to_owned(),
        format!("{accounted} / {answered}"),
    ]);
    let mut broken = Vec::new();
    if outcomes.iter().any(|o| !o.is_clean()) {
        broken.push("a request failed without a clean error (or hung)".to_owned());
    }
    if during
        .iter()
        .filter_map(|o| o.error.as_deref())
        .any(|e| !e.starts_with("503"))
    {
        broken.push(
            "a request failed with something other than 503 while the store was gone".to_owned(),
        );
    }
    if said["ready"] != false || store_check["ok"] != false {
        broken.push(format!("/readyz did not name the store: {said}"));
    }
    if recovery > Duration::from_secs(5) {
        broken.push(format!(
            "requests failed {recovery:?} after the store returned"
        ));
    }
    if accounted != answered {
        broken.push("usage lost answered requests".to_owned());
    }
    print_table("store outage", &table, &broken)
}

/// How one collection's deletion under an ingest went.
struct Deletion {
    /// Documents the collection held when the deletion was asked for.
    held: u64,
    /// How long the deletion took to answer.
    took: Duration,
    /// The deletion's error, if it failed.
    delete_error: Option<String>,
    /// The ingest's answer: its status and error code.
    ingest: String,
}

/// The documents of one ingest: enough that it is still under way when the deletion
/// comes (the rag service stores them in batches of 32).
fn ingest_documents() -> Value {
    let documents: Vec<Value> = (0..300)
        .map(|n| {
            json!({
                "id": format!("doc-{n}"),
                "text": format!(
                    "Maintenance note {n}: the crew checked the tyres, the brakes and the \
                     fuel on aircraft {n} before the morning flight."
                ),
            })
        })
        .collect();
    json!({ "documents": documents })
}

async fn collection_delete(cluster: &mut Cluster, options: &ChaosOptions) -> anyhow::Result<()> {
    let (gateway, chat, embed) = start(
        cluster,
        &[
            ("inference", "inference"),
            ("rag", "rag"),
            ("gateway", "gateway"),
        ],
    )
    .await?;
    let load = Load::start(&gateway, &chat, &embed, options);
    let rounds = (options.seconds / 10).max(3);
    let body = ingest_documents();
    let mut deletions = Vec::new();
    for round in 0..rounds {
        // The rounds spread over the run, so the load runs around each of them.
        let due = Duration::from_secs(options.seconds) * round as u32 / rounds as u32;
        tokio::time::sleep(due.saturating_sub(load.now())).await;
        let name = format!("chaos-{round}");
        let path = format!("/v1/collections/{name}");
        gateway
            .post(
                "/v1/collections",
                &json!({"name": name, "embedding_model": embed}),
            )
            .await?;
        let ingest = gateway
            .post_request(&format!("{path}/documents"))
            .json(&body)
            .timeout(HUNG)
            .send();
        let ingest = tokio::spawn(async move {
            match ingest.await {
                Ok(response) => {
                    let status = response.status();
                    let answer: Value = response.json().await.unwrap_or_default();
                    match answer["error"]["code"].as_str() {
                        Some(code) => format!("{} {code}", status.as_u16()),
                        None => status.as_u16().to_string(),
                    }
                }
                Err(err) if err.is_timeout() => format!("no answer within {HUNG:?}"),
                Err(err) => format!("connection: {err}"),
            }
        });
        // Each round deletes at a later point of its ingest: after the first batch,
        // then a quarter of the way, and so on (or after 30 s).
        let target = 1 + 300 * round / (rounds + 1);
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut held = 0;
        while Instant::now() < deadline {
            held = gateway
                .get(&path)
                .await
                .map_or(0, |c| c["documents"].as_u64().unwrap_or(0));
            if held >= target {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let asked = Instant::now();
        let delete_error = gateway.delete(&path).await.err().map(|e| e.to_string());
        let took = asked.elapsed();
        let ingest = ingest.await?;
        deletions.push(Deletion {
            held,
            took,
            delete_error,
            ingest,
        });
    }

    // Afterwards: every process lives, the deleted collections are gone, and a name
    // can be used again from scratch.
    let exited: Vec<String> = cluster
        .processes
        .iter_mut()
        .filter_map(|p| (!matches!(p.child.try_wait(), Ok(None))).then(|| p.name.clone()))
        .collect();
    let listed = gateway.get("/v1/collections").await?;
    let left: Vec<String> = listed["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .filter(|name| name.starts_with("chaos-"))
        .map(str::to_owned)
        .collect();
    let again = collection_again(&gateway, &embed).await;
    let outcomes = load.finish().await;

    let mut table = new_table();
    table.add_row(vec!["streams".to_owned(), options.streams.to_string()]);
    load_rows(&mut table, &outcomes);
    table.add_row(vec![
        "load errors".to_owned(),
        error_summary(outcomes.iter()),
    ]);
    table.add_row(vec![
        "collections deleted under an ingest of 300 documents".to_owned(),
        deletions.len().to_string(),
    ]);
    table.add_row(vec![
        "documents stored when the deletion came".to_owned(),
        deletions
            .iter()
            .map(|d| d.held.to_string())
            .collect::<Vec<_>>()
            .join(", "),
    ]);
    let mut took: Vec<f64> = deletions
        .iter()
        .map(|d| d.took.as_secs_f64() * 1e3)
        .collect();
    table.add_row(vec![
        "deletion answered in p50 / max".to_owned(),
        format!(
            "{:.0} / {:.0} ms",
            percentile(&mut took, 50.0),
            percentile(&mut took, 100.0)
        ),
    ]);
    table.add_row(vec![
        "the ingests' answers".to_owned(),
        tally(deletions.iter().map(|d| d.ingest.as_str())),
    ]);
    table.add_row(vec![
        "processes that exited".to_owned(),
        if exited.is_empty() {
            "none".to_owned()
        } else {
            exited.join(", ")
        },
    ]);
    table.add_row(vec![
        "a name used again: created, filled, searched".to_owned(),
        match &again {
            Ok(()) => "yes".to_owned(),
            Err(err) => format!("no: {err:#}"),
        },
    ]);

    let mut broken = Vec::new();
    if !exited.is_empty() {
        broken.push(format!("{} exited", exited.join(", ")));
    }
    if outcomes.iter().any(|o| o.error.is_some()) {
        broken.push("requests of the load failed".to_owned());
    }
    for deletion in &deletions {
        if let Some(error) = &deletion.delete_error {
            broken.push(format!("a deletion failed: {error}"));
        }
        // Stored in full (the deletion came after), refused as deleted during the
        // ingest, or not found (the deletion came before it began).
        let answer = deletion.ingest.as_str();
        if !(answer == "200" || answer.starts_with("409 ") || answer.starts_with("404 ")) {
            broken.push(format!("an ingest answered {}", deletion.ingest));
        }
    }
    if !left.is_empty() {
        broken.push(format!("deleted collections are still listed: {left:?}"));
    }
    if let Err(err) = again {
        broken.push(format!(
            "a deleted collection's name cannot be used again: {err:#}"
        ));
    }
    print_table("collection deletion under ingest", &table, &broken)
}

/// `chaos-0` made again after its deletion: created, one document stored, found.
async fn collection_again(gateway: &GatewayClient, embed: &str) -> anyhow::Result<()> {
    gateway
        .post(
            "/v1/collections",
            &json!({"name": "chaos-0", "embedding_model": embed}),
        )
        .await?;
    let text = "The hangar doors open at dawn.";
    gateway
        .post(
            "/v1/collections/chaos-0/documents",
            &json!({"documents": [{"id": "again", "text": text}]}),
        )
        .await?;
    let found = gateway
        .post(
            "/v1/collections/chaos-0/search",
            &json!({"query": "When do the hangar doors open?"}),
        )
        .await?;
    let hits = found["hits"].as_array().map_or(0, Vec::len);
    let described = gateway.get("/v1/collections/chaos-0").await?;
    gateway.delete("/v1/collections/chaos-0").await?;
    if found["hits"][0]["document_id"] != "again" || described["documents"] != 1 {
        bail!(
            "it holds {} documents and search found {hits}",
            described["documents"]
        );
    }
    Ok(())
}
